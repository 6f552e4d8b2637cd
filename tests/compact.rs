//! `walrust compact`: the GFS selection over 90 simulated days (pure, keys only), then on real backups on both
//! backends: objects are deleted, every kept point restores exactly and `verify` passes, also after a deletion
//! cut short at any prefix of its order (a crash).

#[macro_use]
mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use walrust::compact::{self, KeptPoint, Policy, Reason};
use walrust::keys::{Kind, ObjectKey};
use walrust::restore::Target;
use walrust::storage::StorageRef;
use walrust::verify::verify;
use walrust::watch::{WatchOptions, Watcher};

use support::{app, record_history, restore_rows, rows, Backend, Recorded};

on_both_backends!(
    compaction_keeps_promised_points_restorable,
    interrupted_compaction_stays_verifiable,
    cli_compact,
    long_chains_get_a_snapshot_so_old_points_restore_from_one_object,
);

const MIN: u64 = 60_000;
const HOUR: u64 = 60 * MIN;
const DAY: u64 = 24 * HOUR;

// ---------------------------------------------------------------------------------------------------------
// Pure: 90 simulated days of keys.

fn key(generation: u64, seq: u64, commit_ms: u64, kind: Kind) -> ObjectKey {
    ObjectKey { generation, seq, commit_ms, kind, sha256: [0x5a; 32], compressed: true }
}

/// 2025-01-01T00:00:00Z (a Wednesday) and 90 days after it: a new generation every 30 days (base), a changeset
/// every 30 minutes, a mid snapshot every 6 hours (imaging the changeset just shipped).
fn ninety_days() -> Vec<ObjectKey> {
    let t0 = 1_735_689_600_000u64;
    let mut keys = Vec::new();
    let mut seq = 0;
    for g in 0..3u64 {
        let generation = (t0 + g * 30 * DAY) << 16;
        let start = t0 + g * 30 * DAY + 10 * MIN;
        seq += 1;
        keys.push(key(generation, seq, start, Kind::Base));
        let mut t = start;
        while t + 30 * MIN < t0 + (g + 1) * 30 * DAY {
            t += 30 * MIN;
            seq += 1;
            keys.push(key(generation, seq, t, Kind::Changeset));
            if (t - t0) % (6 * HOUR) == 10 * MIN {
                keys.push(key(generation, seq, t + 1000, Kind::Snapshot));
            }
        }
    }
    // A deterministic shuffle: select must not depend on the input order.
    let n = keys.len();
    for i in 0..n {
        keys.swap(i, (i * 7919 + 13) % n);
    }
    keys
}

/// The newest point (by generation, seq) with `lo <= commit_ms < hi`.
fn newest_in(keys: &[ObjectKey], lo: u64, hi: u64) -> Option<(u64, u64)> {
    keys.iter()
        .filter(|k| k.kind != Kind::Snapshot && k.commit_ms >= lo && k.commit_ms < hi)
        .map(|k| (k.generation, k.seq))
        .max()
}

/// The newest snapshot at or before `seq` in `generation` among `kept`, and whether every changeset after it up to
/// `seq` is there: what a restore of that point needs.
fn restorable(kept: &[&ObjectKey], generation: u64, seq: u64) -> bool {
    let g: Vec<&&ObjectKey> = kept.iter().filter(|k| k.generation == generation).collect();
    let Some(s) =
        g.iter().filter(|k| k.kind != Kind::Changeset && k.seq <= seq).max_by_key(|k| (k.seq, k.kind == Kind::Base))
    else {
        return false;
    };
    (s.seq + 1..=seq).all(|q| g.iter().any(|k| k.kind == Kind::Changeset && k.seq == q))
        && g.iter().any(|k| k.kind != Kind::Snapshot && k.seq == seq)
}

/// verify's gap rule over what remains: in each generation, a changeset must follow its predecessor seq unless
/// its own seq has a snapshot; the first object may be anything.
fn gaps_ok(remaining: &[&ObjectKey]) -> Result<(), String> {
    let mut by_gen: BTreeMap<u64, Vec<&ObjectKey>> = BTreeMap::new();
    for k in remaining {
        by_gen.entry(k.generation).or_default().push(k);
    }
    for objs in by_gen.values_mut() {
        objs.sort_by_key(|k| (k.seq, k.commit_ms, k.kind));
        let mut prev: Option<u64> = None;
        for k in objs.iter() {
            match k.kind {
                Kind::Snapshot => {
                    if prev.is_none_or(|p| p < k.seq) {
                        prev = Some(k.seq);
                    }
                }
                Kind::Base => prev = Some(k.seq),
                Kind::Changeset => {
                    if let Some(p) = prev {
                        let snap = objs.iter().any(|o| o.kind == Kind::Snapshot && o.seq == k.seq);
                        if k.seq > p + 1 && !snap {
                            return Err(format!("gap before changeset {} of {:x}", k.seq, k.generation));
                        }
                    }
                    prev = Some(k.seq);
                }
            }
        }
    }
    Ok(())
}

#[test]
fn gfs_selection_over_ninety_days() {
    let keys = ninety_days();
    let t0 = 1_735_689_600_000u64;
    let last = keys.iter().map(|k| k.commit_ms).max().unwrap();
    let now = last + 17 * MIN;
    let policy = Policy::default();
    let sel = compact::select(&keys, now, &policy);
    let ws = now - 24 * HOUR;

    // The expected points, from explicit calendar boundaries.
    let mut expected: BTreeMap<(u64, u64), BTreeSet<Reason>> = BTreeMap::new();
    for k in keys.iter().filter(|k| k.kind != Kind::Snapshot && k.commit_ms >= ws) {
        expected.entry((k.generation, k.seq)).or_default().insert(Reason::Window);
    }
    let newest = keys.iter().filter(|k| k.kind != Kind::Snapshot).map(|k| (k.generation, k.seq)).max().unwrap();
    expected.entry(newest).or_default().insert(Reason::Newest);
    let ws_day = t0 + (ws - t0) / DAY * DAY;
    for d in 0..7 {
        let lo = ws_day - d * DAY;
        if let Some(p) = newest_in(&keys, lo, (lo + DAY).min(ws)) {
            expected.entry(p).or_default().insert(Reason::Daily);
        }
    }
    // ISO weeks: 2024-12-30 is a Monday.
    let monday0 = t0 - 2 * DAY;
    let ws_week = monday0 + (ws - monday0) / (7 * DAY) * 7 * DAY;
    for w in 0..12u64 {
        let Some(lo) = ws_week.checked_sub(w * 7 * DAY) else { break };
        if let Some(p) = newest_in(&keys, lo, (lo + 7 * DAY).min(ws)) {
            expected.entry(p).or_default().insert(Reason::Weekly);
        }
    }
    // Months: January, February, March 2025 (and 9 earlier, empty, months).
    let months = [t0, t0 + 31 * DAY, t0 + 59 * DAY, t0 + 90 * DAY];
    assert!(ws >= months[2] && ws < months[3], "the window starts in March");
    for m in months.windows(2) {
        if let Some(p) = newest_in(&keys, m[0], m[1].min(ws)) {
            expected.entry(p).or_default().insert(Reason::Monthly);
        }
    }
    let got: BTreeMap<(u64, u64), BTreeSet<Reason>> =
        sel.points.iter().map(|p: &KeptPoint| ((p.generation, p.seq), p.reasons.iter().copied().collect())).collect();
    assert_eq!(got, expected);
    let gfs: Vec<_> = got.values().filter(|r| !r.contains(&Reason::Window)).collect();
    // 7 days (the window's first day among them) + 12 weeks + 3 months, overlapping.
    assert!(gfs.len() >= 12 && gfs.len() <= 22, "{} GFS points", gfs.len());
    assert_eq!(got.values().filter(|r| r.contains(&Reason::Window)).count(), 48, "a day of changesets every 30 min");

    // Every kept point (and every changeset left) restores from what is kept.
    let kept: Vec<&ObjectKey> = keys.iter().zip(&sel.keep).filter(|(_, &k)| k).map(|(k, _)| k).collect();
    for p in &sel.points {
        assert!(restorable(&kept, p.generation, p.seq), "kept point {:x}/{} restorable", p.generation, p.seq);
    }
    for k in kept.iter().filter(|k| k.kind == Kind::Changeset) {
        assert!(restorable(&kept, k.generation, k.seq), "changeset left {:x}/{} restorable", k.generation, k.seq);
    }
    // Much was deleted: the first generation holds only its monthly/weekly points' needs.
    assert!(kept.len() * 5 < keys.len(), "kept {} of {}", kept.len(), keys.len());

    // Every prefix of the deletion order leaves the kept points restorable and verify's gap rule holding.
    let order = compact::deletion_order(&keys, &sel.keep);
    assert_eq!(order.len(), keys.len() - kept.len());
    let mut gone = vec![false; keys.len()];
    for (n, &i) in order.iter().enumerate() {
        assert!(!sel.keep[i]);
        gone[i] = true;
        if n % 7 != 0 && n + 1 != order.len() {
            continue;
        }
        let remaining: Vec<&ObjectKey> = keys.iter().zip(&gone).filter(|(_, &g)| !g).map(|(k, _)| k).collect();
        gaps_ok(&remaining).unwrap_or_else(|e| panic!("after {} deletions: {e}", n + 1));
        for p in &sel.points {
            assert!(restorable(&remaining, p.generation, p.seq), "after {} deletions", n + 1);
        }
    }
}

#[test]
fn selection_edge_cases() {
    let now = 1_800_000_000_000u64;
    // A point without any snapshot before it keeps the generation's whole prefix.
    let keys = vec![
        key(1, 5, now - 10 * DAY, Kind::Changeset),
        key(1, 6, now - 10 * DAY + MIN, Kind::Changeset),
        key(1, 7, now - 9 * DAY, Kind::Changeset),
    ];
    let sel = compact::select(&keys, now, &Policy::default());
    assert_eq!(sel.keep, vec![true, true, true]);
    // Zero everything: only the newest point and what it needs.
    let p0 = Policy { hourly: 0, daily: 0, weekly: 0, monthly: 0 };
    let keys = vec![
        key(1, 1, now - 3 * DAY, Kind::Base),
        key(1, 2, now - 3 * DAY + MIN, Kind::Changeset),
        key(2, 3, now - 2 * DAY, Kind::Base),
        key(2, 4, now - 2 * DAY + MIN, Kind::Changeset),
        key(2, 4, now - 2 * DAY + 2 * MIN, Kind::Snapshot),
        key(2, 5, now - DAY, Kind::Changeset),
    ];
    let sel = compact::select(&keys, now, &p0);
    assert_eq!(sel.keep, vec![false, false, false, false, true, true]);
    assert_eq!(sel.points.len(), 1);
    assert_eq!(compact::deletion_order(&keys, &sel.keep), vec![1, 0, 3, 2], "whole generation first, newest first");
    // A point whose seq has a snapshot keeps itself and that snapshot only.
    let sel = compact::select(&keys[..5], now, &p0);
    assert_eq!(sel.keep, vec![false, false, false, true, true]);
    // A generation newer than the newest point's (being started) is never touched.
    let mut k2 = keys.clone();
    k2.push(key(3, 6, now, Kind::Snapshot));
    assert!(*compact::select(&k2, now, &p0).keep.last().unwrap());
}

// ---------------------------------------------------------------------------------------------------------
// Real backups.

/// The recorded state of the point (generation, seq).
fn expected_rows(history: &[Recorded], generation: u64, seq: u64) -> &Vec<(i64, String)> {
    &history.iter().rev().find(|h| h.1 == generation && h.2 == seq).expect("recorded point").3
}

/// Every kept point restores exactly (by time, and by seq in the newest generation), and verify passes.
fn check_kept(s: &StorageRef, dir: &Path, history: &[Recorded], points: &[KeptPoint], what: &str) {
    let out = dir.join("kept.db");
    let newest_gen = history.last().unwrap().1;
    for p in points {
        let expected = expected_rows(history, p.generation, p.seq);
        assert_eq!(&restore_rows(s, &out, Target::Time(p.commit_ms)), expected, "{what}: point {p:?} by time");
        if p.generation == newest_gen {
            assert_eq!(&restore_rows(s, &out, Target::Seq(p.seq)), expected, "{what}: point {p:?} by seq");
        }
    }
    assert_eq!(&restore_rows(s, &out, Target::Latest), &history.last().unwrap().3, "{what}: latest");
    verify(s.as_ref(), "app", Target::Latest).unwrap_or_else(|e| panic!("{what}: verify: {e}"));
}

fn point_keys(b: &Backend) -> usize {
    b.keys("app").iter().filter(|k| k.ends_with(".hadbp.zst")).count()
}

fn compaction_keeps_promised_points_restorable(dir: &Path, b: &Backend) {
    let s = b.storage();
    let history = record_history(dir, &s, 2, 10, 4);
    let before = point_keys(b);

    // 1. No window (hourly 0) and `now` in the middle of the second generation, right after a recorded batch:
    // every later point stays exact, the daily rule keeps the newest point before it, the rest goes (the whole
    // first generation among it).
    let k = history.len() - 5;
    let now = history[k].0;
    let policy = Policy { hourly: 0, daily: 7, weekly: 0, monthly: 0 };
    let plan = compact::compact(s.as_ref(), "app", now, &policy, false).unwrap();
    assert!(!plan.delete.is_empty());
    assert_eq!(plan.generations_deleted, 1, "the first generation");
    let window: Vec<&KeptPoint> = plan.points.iter().filter(|p| p.reasons.contains(&Reason::Window)).collect();
    assert_eq!(window.len(), 4, "the four batches after now: {:?}", plan.points);
    let daily: Vec<&KeptPoint> = plan.points.iter().filter(|p| p.reasons.contains(&Reason::Daily)).collect();
    assert_eq!(daily.len(), 1);
    assert_eq!((daily[0].generation, daily[0].seq), (history[k].1, history[k].2), "the point before now");
    assert_eq!(point_keys(b), before - plan.delete.len());
    assert!(b.keys("app").contains(&plan.decision_key()), "decision object written");
    check_kept(&s, dir, &history, &plan.points, "after compaction 1");
    // Every instant from `now` on still restores exactly.
    let out = dir.join("pit.db");
    for h in &history[k..history.len() - 1] {
        assert_eq!(&restore_rows(&s, &out, Target::Time(h.0)), &h.3, "instant {} after compaction", h.0);
    }

    // 2. Two days after the last commit with the default policy: the window is empty and one day holds every
    // point, so only the newest point and what it needs remain.
    let last = history.iter().map(|h| h.0).max().unwrap();
    let before = point_keys(b);
    let plan = compact::compact(s.as_ref(), "app", last + 2 * 24 * 3_600_000, &Policy::default(), false).unwrap();
    assert_eq!(plan.points.len(), 1, "{:?}", plan.points);
    assert!(plan.points[0].reasons.contains(&Reason::Newest) && plan.points[0].reasons.contains(&Reason::Daily));
    assert!(!plan.delete.is_empty());
    assert_eq!(point_keys(b), before - plan.delete.len());
    check_kept(&s, dir, &history, &plan.points, "after compaction 2");

    // 3. Again: nothing left to delete.
    let plan = compact::compact(s.as_ref(), "app", last + 2 * 24 * 3_600_000, &Policy::default(), false).unwrap();
    assert!(plan.delete.is_empty());
}

fn interrupted_compaction_stays_verifiable(dir: &Path, b: &Backend) {
    let s = b.storage();
    let history = record_history(dir, &s, 2, 10, 4);
    // The point before `now` is batch 7, whose seq also has a mid snapshot: it stays behind a gap.
    let k = history.len() - 3;
    let policy = Policy { hourly: 0, daily: 7, weekly: 0, monthly: 0 };
    let plan = compact::plan(s.as_ref(), "app", history[k].0, &policy).unwrap();
    let n = plan.delete.len();
    assert!(n > 10, "{n} deletions");
    compact::write_decision(s.as_ref(), &plan).unwrap();
    // Deletions carried out up to these prefixes (each call redoes the already-deleted ones: idempotent).
    let mut cuts: Vec<usize> = vec![1, 2, 3, n / 3, n / 2, n - 2, n - 1, n];
    // And right after the last whole-generation deletion.
    let first_gen = plan.delete[0].key.generation;
    cuts.push(plan.delete.iter().take_while(|e| e.key.generation == first_gen).count() + 1);
    cuts.sort_unstable();
    cuts.dedup();
    for cut in cuts {
        assert_eq!(compact::delete(s.as_ref(), &plan, Some(cut)).unwrap(), cut);
        check_kept(&s, dir, &history, &plan.points, &format!("after {cut} of {n} deletions"));
    }
}

fn cli_compact(dir: &Path, b: &Backend) {
    let s = b.storage();
    let history = record_history(dir, &s, 2, 10, 4);
    let now = humantime::format_rfc3339_millis(
        std::time::UNIX_EPOCH + Duration::from_millis(history.last().unwrap().0 + 2 * 24 * 3_600_000),
    )
    .to_string();
    let args = |extra: &[&str]| {
        let mut v: Vec<String> = vec!["compact".into(), "app".into()];
        v.extend(b.args());
        v.extend(["--now".to_string(), now.clone()]);
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    let run = |a: Vec<String>| {
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        let o = support::walrust(&a);
        assert!(o.status.success(), "{a:?}: {}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8(o.stdout).unwrap()
    };
    let before = point_keys(b);
    let dry = run(args(&["--dry-run"]));
    assert!(dry.starts_with("dry run: 'app': would delete "), "{dry}");
    assert!(dry.contains("newest)") && dry.contains(" restore points:\n  "), "{dry}");
    assert_eq!(point_keys(b), before, "dry run deletes nothing");
    let json = run(args(&["--dry-run", "--json"]));
    assert!(json.contains("\"dry_run\":true") && json.contains("\"kept_points\":[{"), "{json}");
    let out = run(args(&[]));
    assert!(out.starts_with("compacted 'app': deleted "), "{out}");
    assert!(point_keys(b) < before);
    // The decision object does not disturb list or verify.
    let mut v = vec!["verify".to_string(), "app".into()];
    v.extend(b.args());
    run(v);
    let mut l = vec!["list".to_string()];
    l.extend(b.args());
    let listed = run(l);
    assert!(listed.contains("app"), "{listed}");
    assert_eq!(&restore_rows(&s, &dir.join("cli.db"), Target::Latest), &history.last().unwrap().3);
}

/// A kept point beyond the window at the end of a long chain (a base snapshot and 30 changesets) gets its own
/// snapshot: afterwards its restore plan is one object and the chain before it is gone.
fn long_chains_get_a_snapshot_so_old_points_restore_from_one_object(dir: &Path, b: &Backend) {
    let s = b.storage();
    let db = dir.join("app.db");
    let a = app(&db);
    a.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT); INSERT INTO t(v) VALUES ('seed');").unwrap();
    let mut o = WatchOptions::new("app");
    o.sync_interval = Duration::ZERO;
    let mut w = Watcher::start(&db, s.clone(), o).unwrap();
    for i in 0..30 {
        a.execute("INSERT INTO t(v) VALUES (?1)", [format!("long{i}")]).unwrap();
        w.tick(true).unwrap();
    }
    w.shutdown().unwrap();
    drop(w);
    let expected = rows(&db);
    let last_commit = walrust::restore::plan(s.as_ref(), "app", Target::Latest).unwrap().commit_ms;
    assert_eq!(walrust::restore::plan(s.as_ref(), "app", Target::Latest).unwrap().objects.len(), 31);

    // Two days later, with the default policy: the newest point is kept, beyond the 24-hour window.
    let plan = compact::compact(s.as_ref(), "app", last_commit + 2 * DAY, &Policy::default(), false).unwrap();
    assert!(plan.delete.len() >= 30, "the base and the chain before the point go: {}", plan.delete.len());
    let after = walrust::restore::plan(s.as_ref(), "app", Target::Latest).unwrap();
    assert_eq!(after.objects.len(), 1, "restore of the kept point touches one object: {:?}", after.objects);
    assert_eq!(after.objects[0].key.kind, Kind::Snapshot);
    let out = dir.join("long.db");
    assert_eq!(restore_rows(&s, &out, Target::Latest), expected);
    assert_eq!(restore_rows(&s, &out, Target::Time(last_commit)), expected);
    verify(s.as_ref(), "app", Target::Latest).unwrap();
    // Idempotent: a second run neither snapshots again nor deletes anything.
    let again = compact::compact(s.as_ref(), "app", last_commit + 2 * DAY, &Policy::default(), false).unwrap();
    assert!(again.delete.is_empty());
    assert_eq!(b.keys("app").iter().filter(|k| k.contains("-s-")).count(), 1);
}
