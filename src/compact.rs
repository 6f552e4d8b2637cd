//! Compaction: thin a database's backups to a grandfather-father-son (GFS) retention policy, from LISTs only.
//!
//! # Restore points and the policy
//!
//! A *restore point* is a changeset (`c`) or a base snapshot (`b`): each names, by its key's `commit_ms`, a state
//! a restore can reproduce exactly. Mid-generation snapshots (`s`) are not points, only places to start from.
//! Given `now` (ms) and a [`Policy`] `{hourly, daily, weekly, monthly}` (defaults 24, 7, 12, 12):
//!
//! 1. **Window**: every point with `commit_ms >= now - hourly h` (the window start) stays restorable exactly, so
//!    point-in-time restore stays continuous inside the window.
//! 2. **GFS** beyond the window: points older than the window start are bucketed by UTC day, by ISO week
//!    (Monday 00:00 UTC start) and by calendar month (UTC). Buckets are counted back on the calendar from the
//!    bucket that holds the window start, inclusive: `daily N` covers that day and the N-1 days before it,
//!    whether or not they hold points (an idle database keeps fewer points, never older ones). In each covered
//!    bucket the newest point older than the window start is kept ("newest" = highest (generation, seq), the
//!    order restore prefers). The three rules are a union; a point may be kept by several.
//! 3. The **newest point overall** (what a restore without `--point-in-time` reproduces: the highest seq of the
//!    newest generation holding a point) is always kept.
//!
//! # What is kept
//!
//! For each kept point P, in P's generation: the snapshot restore starts from (`restore::plan_in_generation`:
//! the newest `b`/`s` with seq <= P.seq, base preferred on a tie), every changeset after it up to P's seq, and P
//! itself (a point whose seq also has a mid snapshot is restored from that snapshot, but its own key is kept: it
//! is what a point-in-time LIST finds). If P has no snapshot at or before it, or the changesets after the
//! snapshot are not contiguous (the backup was already damaged), the whole generation prefix up to P is kept:
//! compaction never removes anything a promised point might need. For the window, additionally every object
//! after the oldest window point of each generation is kept. Generations newer than the newest point's generation
//! (e.g. one being started right now) are never touched. Everything else is deleted; a generation with no kept
//! point is deleted entirely. Objects written after the plan's LISTs are not in the plan, so never deleted.
//!
//! # Merging long chains
//!
//! Before deleting, every kept point beyond the window whose restore would apply more than
//! [`MERGE_MIN_CHANGESETS`] changesets gets a mid-generation snapshot of its own ([`materialize`]: restored into a
//! temp file with every object verified and integrity_check, then uploaded with `prev_checksum` = the chain
//! value after the point, exactly like a snapshot `watch` takes). The plan is then made again, so the chain
//! before the point can go: restoring an old kept point touches one object, however long the chain was.
//! Inside the window every point must stay restorable, so there restores rely on watch's interval snapshots.
//!
//! # Safety
//!
//! The plan is computed with LISTs only. Before the first delete, the decision object
//! `{name}/compact-{now_ms:012x}.json` (the keys to delete and the kept points) is written; it is a plain object
//! directly under `{name}/`, so the generation listing (common prefixes `{name}/{16 hex}/`) never sees it.
//! Deletions go one key per `delete_many` call (a batch may be applied in any order by S3, which could leave a
//! hole in front of a changeset), whole unneeded generations first, then the rest; within a generation from the
//! newest key to the oldest. So a crash at any point leaves, in every generation, its kept objects plus a prefix
//! of each run of deleted objects: every kept point restores, and `verify` passes (a gap is followed by a
//! snapshot, or by a kept point whose seq has a snapshot). Once every delete is done, older decision objects
//! are removed: only the latest decision stays.
//!
//! `walrust watch --compact-interval D` runs this for each watched database every D (with `--keep-hourly`,
//! `--keep-daily`, `--keep-weekly`, `--keep-monthly`); objects it uploads meanwhile are never in a plan.

use std::collections::{BTreeMap, BTreeSet};

use crate::error::Result;
use crate::keys::{Kind, ObjectKey};
use crate::log::json_string;
use crate::remote::{self, Entry};
use crate::restore::fmt_ms;
use crate::storage::Storage;

const HOUR_MS: u64 = 3_600_000;
const DAY_MS: u64 = 24 * HOUR_MS;

/// How many restore points to keep (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Hours of continuous point-in-time before `now`.
    pub hourly: u32,
    /// UTC days (one point each) counted back from the window start.
    pub daily: u32,
    /// ISO weeks (one point each).
    pub weekly: u32,
    /// Calendar months (one point each).
    pub monthly: u32,
}

impl Default for Policy {
    fn default() -> Self {
        Policy { hourly: 24, daily: 7, weekly: 12, monthly: 12 }
    }
}

/// Why a point is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Reason {
    /// Committed inside the window (`commit_ms >= now - hourly` hours): kept exactly.
    Window,
    /// The newest point older than the window start in one of the `daily` UTC days kept.
    Daily,
    /// The newest point older than the window start in one of the `weekly` ISO weeks kept.
    Weekly,
    /// The newest point older than the window start in one of the `monthly` calendar months (UTC) kept.
    Monthly,
    /// The newest point overall (what a restore without a point in time reproduces); always kept.
    Newest,
}

impl Reason {
    /// The lowercase name used in JSON output (`"window"`, `"daily"`, `"weekly"`, `"monthly"`, `"newest"`).
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Window => "window",
            Reason::Daily => "daily",
            Reason::Weekly => "weekly",
            Reason::Monthly => "monthly",
            Reason::Newest => "newest",
        }
    }
}

/// A restore point the compaction keeps restorable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeptPoint {
    /// The generation the point belongs to.
    pub generation: u64,
    /// The point's sequence number within its generation.
    pub seq: u64,
    /// Commit time of the point's newest transaction, ms since the Unix epoch (from its key).
    pub commit_ms: u64,
    /// Every rule that keeps it, ascending and without duplicates; never empty.
    pub reasons: Vec<Reason>,
}

impl KeptPoint {
    /// `{"generation", "seq", "commit_time", "commit_ms", "reasons"}` (decision object and `compact --json`).
    pub fn to_json(&self) -> String {
        let r: Vec<String> = self.reasons.iter().map(|r| json_string(r.as_str())).collect();
        format!(
            "{{\"generation\":\"{:016x}\",\"seq\":{},\"commit_time\":{},\"commit_ms\":{},\"reasons\":[{}]}}",
            self.generation,
            self.seq,
            json_string(&fmt_ms(self.commit_ms)),
            self.commit_ms,
            r.join(",")
        )
    }
}

/// The pure result of the policy over a list of keys: `keep[i]` for `keys[i]`, and the kept points, oldest first.
#[derive(Debug, Clone)]
pub struct Selection {
    /// One flag per input key, same order: true when the object must be kept.
    pub keep: Vec<bool>,
    /// The kept points, sorted by (generation, seq, commit_ms).
    pub points: Vec<KeptPoint>,
}

/// UTC day number since the epoch.
fn day_of(ms: u64) -> i64 {
    (ms / DAY_MS) as i64
}

/// ISO week number since the epoch, weeks starting Monday (1970-01-01 was a Thursday).
fn week_of(ms: u64) -> i64 {
    (day_of(ms) + 3).div_euclid(7)
}

/// Calendar month number (year * 12 + month - 1), UTC.
fn month_of(ms: u64) -> i64 {
    // Howard Hinnant's civil_from_days.
    let z = day_of(ms) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    y * 12 + (m - 1)
}

/// Maps a commit time to its calendar bucket (day, week or month number).
type BucketOf = fn(u64) -> i64;

fn is_point(k: &ObjectKey) -> bool {
    k.kind != Kind::Snapshot
}

/// Applies `policy` at `now_ms` to every object key of one database (any order, any generations): which points
/// are kept and which objects they need. Pure: no I/O.
pub fn select(keys: &[ObjectKey], now_ms: u64, policy: &Policy) -> Selection {
    let mut keep = vec![false; keys.len()];
    // Each generation's objects in restore order: (seq, commit_ms, kind).
    let mut gens: BTreeMap<u64, Vec<usize>> = BTreeMap::new();
    for (i, k) in keys.iter().enumerate() {
        gens.entry(k.generation).or_default().push(i);
    }
    for v in gens.values_mut() {
        v.sort_by_key(|&i| (keys[i].seq, keys[i].commit_ms, keys[i].kind));
    }
    let order = |i: usize| (keys[i].generation, keys[i].seq, keys[i].commit_ms);
    let points: Vec<usize> = (0..keys.len()).filter(|&i| is_point(&keys[i])).collect();
    let mut reasons: BTreeMap<usize, BTreeSet<Reason>> = BTreeMap::new();

    // The newest point: the highest seq of the newest generation holding a point (restore's Latest).
    let newest = points.iter().copied().max_by_key(|&i| order(i));
    if let Some(n) = newest {
        reasons.entry(n).or_default().insert(Reason::Newest);
    }

    // 1. The window.
    let window_start = now_ms.saturating_sub(u64::from(policy.hourly) * HOUR_MS);
    for &i in &points {
        if keys[i].commit_ms >= window_start {
            reasons.entry(i).or_default().insert(Reason::Window);
        }
    }

    // 2. GFS buckets counted back from the bucket holding the window start.
    let rules: [(Reason, u32, BucketOf); 3] = [
        (Reason::Daily, policy.daily, day_of),
        (Reason::Weekly, policy.weekly, week_of),
        (Reason::Monthly, policy.monthly, month_of),
    ];
    for (reason, n, bucket_of) in rules {
        if n == 0 {
            continue;
        }
        let last = bucket_of(window_start);
        let first = last - i64::from(n) + 1;
        let mut best: BTreeMap<i64, usize> = BTreeMap::new();
        for &i in points.iter().filter(|&&i| keys[i].commit_ms < window_start) {
            let b = bucket_of(keys[i].commit_ms);
            if b < first || b > last {
                continue;
            }
            let e = best.entry(b).or_insert(i);
            if order(i) > order(*e) {
                *e = i;
            }
        }
        for i in best.into_values() {
            reasons.entry(i).or_default().insert(reason);
        }
    }

    // 3. What each kept point needs, in its generation.
    for &p in reasons.keys() {
        let g = &gens[&keys[p].generation];
        mark_needed(keys, g, p, &mut keep);
    }
    // The window: everything after the oldest window point of each generation.
    for g in gens.values() {
        let oldest = g
            .iter()
            .copied()
            .filter(|i| reasons.get(i).is_some_and(|r| r.contains(&Reason::Window)))
            .min_by_key(|&i| order(i));
        if let Some(w) = oldest {
            for &i in g.iter().filter(|&&i| keys[i].seq > keys[w].seq) {
                keep[i] = true;
            }
        }
    }
    // Generations newer than the newest point's are never touched.
    if let Some(n) = newest {
        for (_, g) in gens.range(keys[n].generation + 1..) {
            for &i in g {
                keep[i] = true;
            }
        }
    } else {
        // No point at all: nothing is provably unneeded.
        keep.iter_mut().for_each(|k| *k = true);
    }

    let mut kept: Vec<KeptPoint> = reasons
        .into_iter()
        .map(|(i, r)| KeptPoint {
            generation: keys[i].generation,
            seq: keys[i].seq,
            commit_ms: keys[i].commit_ms,
            reasons: r.into_iter().collect(),
        })
        .collect();
    kept.sort_by_key(|p| (p.generation, p.seq, p.commit_ms));
    Selection { keep, points: kept }
}

/// Marks what restoring point `p` needs in its generation `g` (indices sorted in restore order).
fn mark_needed(keys: &[ObjectKey], g: &[usize], p: usize, keep: &mut [bool]) {
    let ps = keys[p].seq;
    keep[p] = true;
    let start = g
        .iter()
        .copied()
        .filter(|&i| matches!(keys[i].kind, Kind::Base | Kind::Snapshot) && keys[i].seq <= ps)
        .max_by_key(|&i| (keys[i].seq, keys[i].kind == Kind::Base));
    let keep_prefix = |keep: &mut [bool]| {
        for &i in g.iter().filter(|&&i| keys[i].seq <= ps) {
            keep[i] = true;
        }
    };
    let Some(s) = start else { return keep_prefix(keep) };
    let ss = keys[s].seq;
    let changesets: Vec<usize> = g
        .iter()
        .copied()
        .filter(|&i| keys[i].kind == Kind::Changeset && keys[i].seq > ss && keys[i].seq <= ps)
        .collect();
    let seqs: BTreeSet<u64> = changesets.iter().map(|&i| keys[i].seq).collect();
    if seqs.len() as u64 != ps - ss || seqs.first().is_some_and(|&f| f != ss + 1) {
        // Not restorable as stored: keep everything it might need.
        return keep_prefix(keep);
    }
    keep[s] = true;
    for i in changesets {
        keep[i] = true;
    }
}

/// The order to delete the objects not kept (`keep[i]` false): whole generations first (no object kept), then
/// the others; within each generation from the newest key to the oldest, so that whatever prefix of this order
/// was carried out, each generation holds its kept objects plus a prefix of every run of deleted ones.
pub fn deletion_order(keys: &[ObjectKey], keep: &[bool]) -> Vec<usize> {
    let kept_gens: BTreeSet<u64> = keys.iter().zip(keep).filter(|(_, &k)| k).map(|(k, _)| k.generation).collect();
    let mut order: Vec<usize> = (0..keys.len()).filter(|&i| !keep[i]).collect();
    order.sort_by_key(|&i| {
        let k = &keys[i];
        (kept_gens.contains(&k.generation), k.generation, std::cmp::Reverse((k.seq, k.commit_ms, k.kind)))
    });
    order
}

/// What a compaction decided, from LISTs only.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The database name the plan is for.
    pub name: String,
    /// The time the policy was applied at, ms since the Unix epoch.
    pub now_ms: u64,
    /// The retention policy applied.
    pub policy: Policy,
    /// The points kept restorable, sorted by (generation, seq, commit_ms).
    pub points: Vec<KeptPoint>,
    /// The objects to delete, in deletion order.
    pub delete: Vec<Entry>,
    /// Generations deleted entirely.
    pub generations_deleted: usize,
    /// Number of objects kept.
    pub kept_objects: usize,
    /// Total size of the kept objects, in bytes (as listed).
    pub kept_bytes: u64,
}

impl Plan {
    /// Total size of the objects to delete, in bytes (as listed).
    pub fn delete_bytes(&self) -> u64 {
        self.delete.iter().map(|e| e.size).sum()
    }

    /// `{name}/compact-{now_ms:012x}.json`
    pub fn decision_key(&self) -> String {
        decision_key(&self.name, self.now_ms)
    }

    /// The decision object's JSON: policy, kept points and the keys to delete.
    pub fn to_json(&self) -> String {
        let points: Vec<String> = self.points.iter().map(KeptPoint::to_json).collect();
        let delete: Vec<String> = self.delete.iter().map(|e| json_string(&e.key_str)).collect();
        format!(
            "{{\"name\":{},\"now\":{},\"now_ms\":{},\"policy\":{{\"hourly\":{},\"daily\":{},\"weekly\":{},\"monthly\":{}}},\"kept_points\":[{}],\"kept_objects\":{},\"kept_bytes\":{},\"delete_count\":{},\"delete_bytes\":{},\"generations_deleted\":{},\"delete\":[{}]}}",
            json_string(&self.name),
            json_string(&fmt_ms(self.now_ms)),
            self.now_ms,
            self.policy.hourly,
            self.policy.daily,
            self.policy.weekly,
            self.policy.monthly,
            points.join(","),
            self.kept_objects,
            self.kept_bytes,
            self.delete.len(),
            self.delete_bytes(),
            self.generations_deleted,
            delete.join(",")
        )
    }
}

/// `{name}/compact-{now_ms:012x}.json`: directly under `{name}/`, never mistaken for a generation directory.
pub fn decision_key(name: &str, now_ms: u64) -> String {
    format!("{name}/compact-{now_ms:012x}.json")
}

/// Plans a compaction of `name` at `now_ms` with LISTs only.
pub fn plan(storage: &dyn Storage, name: &str, now_ms: u64, policy: &Policy) -> Result<Plan> {
    let mut entries: Vec<Entry> = Vec::new();
    for g in remote::generations(storage, name)? {
        entries.extend(remote::objects(storage, name, g, None)?);
    }
    let keys: Vec<ObjectKey> = entries.iter().map(|e| e.key.clone()).collect();
    let sel = select(&keys, now_ms, policy);
    let kept_gens: BTreeSet<u64> = keys.iter().zip(&sel.keep).filter(|(_, &k)| k).map(|(k, _)| k.generation).collect();
    let generations_deleted: BTreeSet<u64> =
        keys.iter().map(|k| k.generation).filter(|g| !kept_gens.contains(g)).collect();
    let kept_objects = sel.keep.iter().filter(|&&k| k).count();
    let kept_bytes = entries.iter().zip(&sel.keep).filter(|(_, &k)| k).map(|(e, _)| e.size).sum();
    let delete = deletion_order(&keys, &sel.keep).into_iter().map(|i| entries[i].clone()).collect();
    Ok(Plan {
        name: name.to_string(),
        now_ms,
        policy: *policy,
        points: sel.points,
        delete,
        generations_deleted: generations_deleted.len(),
        kept_objects,
        kept_bytes,
    })
}

/// Writes the decision object (before any delete). Returns its key.
pub fn write_decision(storage: &dyn Storage, plan: &Plan) -> Result<String> {
    let key = plan.decision_key();
    let body = plan.to_json();
    storage
        .put(&key, &mut body.as_bytes())
        .map_err(|e| crate::Error::Storage { context: format!("writing {key}"), source: e })?;
    Ok(key)
}

/// Deletes the plan's objects in order, one key per request; at most `limit` of them (a crash simulation for
/// tests; `None` for all). Returns how many were deleted.
pub fn delete(storage: &dyn Storage, plan: &Plan, limit: Option<usize>) -> Result<usize> {
    let n = limit.unwrap_or(usize::MAX).min(plan.delete.len());
    for e in &plan.delete[..n] {
        storage
            .delete_many(std::slice::from_ref(&e.key_str))
            .map_err(|err| crate::Error::Storage { context: format!("deleting {}", e.key_str), source: err })?;
    }
    Ok(n)
}

/// A kept point beyond the window whose restore would apply more changesets than this gets a snapshot of its
/// own (`materialize`), so that its restore touches one object and the chain before it can go.
pub const MERGE_MIN_CHANGESETS: usize = 8;

/// Kept points beyond the window whose restore applies more than [`MERGE_MIN_CHANGESETS`] changesets.
fn long_chains(storage: &dyn Storage, name: &str, plan: &Plan) -> Result<Vec<KeptPoint>> {
    let window_start = plan.now_ms.saturating_sub(plan.policy.hourly as u64 * HOUR_MS);
    let mut out = Vec::new();
    let mut by_gen: BTreeMap<u64, Vec<Entry>> = BTreeMap::new();
    for p in plan.points.iter().filter(|p| p.commit_ms < window_start) {
        let objs = match by_gen.entry(p.generation) {
            std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::btree_map::Entry::Vacant(v) => {
                v.insert(remote::objects(storage, name, p.generation, None)?)
            }
        };
        let start = objs
            .iter()
            .filter(|e| matches!(e.key.kind, Kind::Base | Kind::Snapshot) && e.key.seq <= p.seq)
            .map(|e| e.key.seq)
            .max();
        if let Some(start) = start {
            let chain =
                objs.iter().filter(|e| e.key.kind == Kind::Changeset && e.key.seq > start && e.key.seq <= p.seq);
            if chain.count() > MERGE_MIN_CHANGESETS {
                out.push(p.clone());
            }
        }
    }
    Ok(out)
}

/// Stores a mid-generation snapshot of the state at kept point `p`: restores it into a temp file (every object
/// verified, integrity_check), then uploads its pages with `prev_checksum` = the chain value after `p`, exactly
/// like a snapshot `watch` takes. The chain is unchanged; restores of `p` and later points start there.
pub fn materialize(storage: &dyn Storage, name: &str, p: &KeptPoint) -> Result<()> {
    use std::os::unix::fs::FileExt;
    let objs = remote::objects(storage, name, p.generation, None)?;
    let rplan = crate::restore::plan_in_generation(name, p.generation, &objs, p.seq, p.commit_ms)?;
    let tmp = std::env::temp_dir().join(format!("walrust-compact-{}-{}-{}.db", std::process::id(), name, p.seq));
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&tmp)
        .map_err(|e| crate::Error::io(format!("creating {}", tmp.display()), e))?;
    let result = (|| -> Result<()> {
        let applied = crate::restore::apply(storage, &rplan, &file, &tmp)?;
        file.set_len(applied.db_pages as u64 * applied.page_size as u64)
            .map_err(|e| crate::Error::io(tmp.display().to_string(), e))?;
        crate::restore::integrity_check(&tmp)?;
        let header = crate::hadbp::Header {
            version: crate::hadbp::VERSION,
            flags: crate::hadbp::FLAG_SNAPSHOT,
            page_id_size: 4,
            page_size: applied.page_size,
            seq: p.seq,
            prev_checksum: applied.chain,
            page_count: applied.db_pages + 1,
            created_ms: p.commit_ms,
        };
        let meta = crate::object::ObjectMeta {
            generation: p.generation,
            seq: p.seq,
            commit_ms: p.commit_ms,
            kind: Kind::Snapshot,
        };
        let page_size = applied.page_size as usize;
        let db_pages = applied.db_pages;
        let file = &file;
        let mut records = move |emit: &mut dyn FnMut(u64, &[u8]) -> std::io::Result<()>| -> std::io::Result<()> {
            emit(crate::hadbp::META_PAGE_ID, &crate::hadbp::commit_record(db_pages))?;
            let mut buf = vec![0u8; page_size];
            for pgno in 1..=db_pages {
                file.read_exact_at(&mut buf, (pgno as u64 - 1) * page_size as u64)?;
                emit(pgno as u64, &buf)?;
            }
            Ok(())
        };
        crate::object::upload(storage, name, meta, &header, &mut records)?;
        Ok(())
    })();
    let _ = std::fs::remove_file(&tmp);
    result
}

/// Plans, writes the decision object and deletes (unless `dry_run`). Returns the plan. Before planning the
/// deletions, kept points beyond the window with long chains get their own snapshot (not in a dry run).
pub fn compact(storage: &dyn Storage, name: &str, now_ms: u64, policy: &Policy, dry_run: bool) -> Result<Plan> {
    let mut plan = plan(storage, name, now_ms, policy)?;
    if !dry_run {
        let long = long_chains(storage, name, &plan)?;
        if !long.is_empty() {
            for p in &long {
                materialize(storage, name, p)?;
            }
            plan = self::plan(storage, name, now_ms, policy)?;
        }
    }
    if plan.points.is_empty() {
        return Err(crate::Error::NotFound(format!("no backups of '{name}' in {}", storage.describe())));
    }
    if !dry_run && !plan.delete.is_empty() {
        let written = write_decision(storage, &plan)?;
        delete(storage, &plan, None)?;
        // Done: earlier decisions are history; keep only the latest so they do not pile up.
        let older: Vec<String> = crate::storage::list_all(storage, &format!("{name}/compact-"), None)
            .map_err(|e| crate::Error::Storage { context: format!("listing {name}/compact-"), source: e })?
            .into_iter()
            .map(|o| o.key)
            .filter(|k| *k != written)
            .collect();
        storage
            .delete_many(&older)
            .map_err(|e| crate::Error::Storage { context: "deleting old compaction decisions".into(), source: e })?;
    }
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calendar_buckets() {
        // 2024-02-29T12:00:00Z, a Thursday.
        let t = 1_709_208_000_000u64;
        assert_eq!(month_of(t), 2024 * 12 + 1);
        assert_eq!(month_of(t + DAY_MS), 2024 * 12 + 2);
        assert_eq!(month_of(0), 1970 * 12);
        // Monday 2024-02-26 and Sunday 2024-03-03 are one ISO week; Monday 2024-03-04 is the next.
        assert_eq!(week_of(t - 3 * DAY_MS), week_of(t + 3 * DAY_MS));
        assert_eq!(week_of(t + 4 * DAY_MS), week_of(t) + 1);
        assert_eq!(week_of(t - 4 * DAY_MS), week_of(t) - 1);
    }
}
