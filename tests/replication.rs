//! End to end: a real application process (tests/support/workload.py) writes a SQLite database while the real
//! `walrust watch` binary replicates it; `walrust restore` must give back exactly the last committed state.
//! Every scenario runs against the local-directory backend and against the S3 test server.

#[macro_use]
mod support;

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use support::*;

on_both_backends!(
    random_workload_with_vacuum_and_blobs_restores_exactly,
    sigkill_of_watch_five_times_and_of_the_writer_mid_transaction_loses_nothing,
    application_checkpoints_itself_even_while_watch_is_down,
    short_lived_connections_replicate,
    a_flipped_byte_in_any_object_fails_restore_naming_it,
    a_second_watch_on_the_same_name_is_refused,
    restart_with_the_wal_intact_takes_no_new_snapshot,
    snapshot_command_alongside_a_running_watch_and_alone,
    restore_if_missing_then_watch_continues_the_chain,
    watch_compacts_on_an_interval_while_it_ships,
    full_text_and_rtree_tables_replicate_and_restore,
    a_commit_its_writer_never_published_is_shipped_when_sqlite_would_recover_it,
);

fn ok(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// Creates `app.db` with a little content (WAL mode) so that watch can start.
fn seed_db(dir: &Path) -> std::path::PathBuf {
    let db = dir.join("app.db");
    ok(&workload(&db, &["--txns", "20", "--seed", "99"]));
    db
}

/// Samples the WAL size until `done`; returns the largest seen.
fn wal_sampler<'a>(s: &'a std::thread::Scope<'a, '_>, db: &'a Path, done: &'a AtomicBool, max: &'a AtomicU64) {
    s.spawn(move || {
        let wal = db.with_extension("db-wal");
        while !done.load(Ordering::Relaxed) {
            if let Ok(m) = std::fs::metadata(&wal) {
                max.fetch_max(m.len(), Ordering::Relaxed);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    });
}

fn assert_restores_to(dir: &Path, b: &Backend, db: &Path, tag: &str) {
    let out = dir.join(format!("restored-{tag}.db"));
    restore_ok(b, "app", &out, &[]);
    assert_eq!(digest(&out), digest(db), "{tag}: the restore equals the source");
}

fn random_workload_with_vacuum_and_blobs_restores_exactly(dir: &Path, b: &Backend) {
    let db = seed_db(dir);
    let log = dir.join("watch.log");
    // At the application's own priority: what is checked here is that walrust's pin and checkpoints let the WAL
    // restart. At the default 10 nice levels below, a machine busy with other work starves replication and this
    // writer, which never pauses, writes its whole 130 MiB before walrust catches up (the WAL then holds what is
    // not yet shipped, by design).
    let watch = spawn_watch(&db, b, &["--nice", "0"], &log);
    let (done, max_wal) = (AtomicBool::new(false), AtomicU64::new(0));
    std::thread::scope(|s| {
        wal_sampler(s, &db, &done, &max_wal);
        // Default autocheckpoint (1000 pages); inserts, updates, deletes, blobs, schema changes, VACUUMs.
        ok(&workload(&db, &["--txns", "2500", "--seed", "1", "--vacuum-every", "600"]));
        done.store(true, Ordering::Relaxed);
    });
    assert_eq!(stop(watch, 30), 0, "watch exits 0 on SIGTERM\n{}", log_text(&log));
    assert_restores_to(dir, b, &db, "final");
    let wal_max = max_wal.load(Ordering::Relaxed);
    eprintln!("largest WAL seen while watch ran: {wal_max} bytes");
    // Bounded by the forced-checkpoint threshold (32 MiB) plus what commits during one sync (a VACUUM rewrites the
    // whole database into the WAL). Seen here: 40-51 MiB; a pin that defeats the application's checkpoints lets
    // this workload's WAL grow past 130 MiB.
    assert!(wal_max < 96 << 20, "the WAL stays bounded while watch runs: {wal_max} bytes");
}

fn sigkill_of_watch_five_times_and_of_the_writer_mid_transaction_loses_nothing(dir: &Path, b: &Backend) {
    let db = seed_db(dir);
    let log = dir.join("watch.log");
    let writer = spawn_workload(&db, &["--txns", "4000", "--seed", "2", "--pause-ms", "0.5"]);
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    for round in 0..5 {
        let watch = spawn_watch(&db, b, &[], &log);
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        std::thread::sleep(Duration::from_millis(300 + rng % 1200));
        kill9(watch);
        eprintln!("round {round}: killed watch");
    }
    let out = writer.wait_with_output().unwrap();
    ok(&out);
    // The writer dies by SIGKILL inside a transaction that wrote 500 rows.
    let died = workload(&db, &["--txns", "50", "--seed", "3", "--die-mid-txn-at", "40"]);
    assert!(!died.status.success(), "the writer was killed mid-transaction");
    let watch = spawn_watch(&db, b, &[], &log);
    ok(&workload(&db, &["--txns", "200", "--seed", "4"]));
    assert_eq!(stop(watch, 30), 0, "{}", log_text(&log));
    assert_restores_to(dir, b, &db, "after-kills");
    let o = walrust(&[&["verify", "app"][..], &b.args().iter().map(String::as_str).collect::<Vec<_>>()].concat());
    ok(&o);
}

fn application_checkpoints_itself_even_while_watch_is_down(dir: &Path, b: &Backend) {
    let db = seed_db(dir);
    let log = dir.join("watch.log");
    let args = ["--autocheckpoint", "100", "--truncate-every", "40", "--pause-ms", "1"];
    let watch = spawn_watch(&db, b, &[], &log);
    let (done, max_wal) = (AtomicBool::new(false), AtomicU64::new(0));
    std::thread::scope(|s| {
        wal_sampler(s, &db, &done, &max_wal);
        ok(&workload(&db, &[&args[..], &["--txns", "800", "--seed", "5"]].concat()));
        done.store(true, Ordering::Relaxed);
    });
    assert_eq!(stop(watch, 30), 0, "{}", log_text(&log));
    // watch is down: the application keeps writing and truncating the WAL.
    ok(&workload(&db, &[&args[..], &["--txns", "400", "--seed", "6"]].concat()));
    let watch = spawn_watch(&db, b, &[], &log);
    ok(&workload(&db, &[&args[..], &["--txns", "400", "--seed", "7"]].concat()));
    assert_eq!(stop(watch, 30), 0, "{}", log_text(&log));
    assert_restores_to(dir, b, &db, "after-checkpoints");
    let wal_max = max_wal.load(Ordering::Relaxed);
    eprintln!("largest WAL seen while watch ran: {wal_max} bytes");
    assert!(wal_max < 16 << 20, "WAL bounded with the application's own checkpoints: {wal_max} bytes");
}

fn short_lived_connections_replicate(dir: &Path, b: &Backend) {
    let db = seed_db(dir);
    let log = dir.join("watch.log");
    let watch = spawn_watch(&db, b, &[], &log);
    ok(&workload(&db, &["--txns", "600", "--seed", "8", "--short-lived"]));
    assert_eq!(stop(watch, 30), 0, "{}", log_text(&log));
    assert_restores_to(dir, b, &db, "short-lived");
}

fn flip_byte(b: &Backend, key: &str, at: usize) -> Vec<u8> {
    let s = b.storage();
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut s.get(key).unwrap(), &mut bytes).unwrap();
    let mut bad = bytes.clone();
    let i = at % bad.len();
    bad[i] ^= 0x40;
    s.put(key, &mut &bad[..]).unwrap();
    bytes
}

fn a_flipped_byte_in_any_object_fails_restore_naming_it(dir: &Path, b: &Backend) {
    let db = seed_db(dir);
    let log = dir.join("watch.log");
    let watch = spawn_watch(&db, b, &[], &log);
    for seed in 10..14 {
        ok(&workload(&db, &["--txns", "30", "--seed", &seed.to_string()]));
        std::thread::sleep(Duration::from_millis(250));
    }
    assert_eq!(stop(watch, 30), 0, "{}", log_text(&log));
    let keys = b.keys("app");
    assert!(keys.len() >= 3, "a snapshot and changesets: {keys:?}");
    let out = dir.join("never.db");
    for (n, key) in keys.iter().enumerate() {
        for at in [7usize, 1000 + n * 7919] {
            let good = flip_byte(b, key, at);
            let mut args = vec!["restore", "app", "-o", out.to_str().unwrap()];
            let bargs = b.args();
            args.extend(bargs.iter().map(String::as_str));
            let o = walrust(&args);
            let err = String::from_utf8_lossy(&o.stderr);
            assert_eq!(o.status.code(), Some(4), "corrupt object {key} (byte {at}) is exit 4: {err}");
            let name = key.rsplit('/').next().unwrap();
            assert!(err.contains(name), "the error names the object {name}: {err}");
            assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
            assert!(!out.exists(), "no database is produced");
            let leftovers: Vec<_> = std::fs::read_dir(dir)
                .unwrap()
                .filter_map(|e| e.ok())
                .filter(|e| e.file_name().to_string_lossy().contains("never"))
                .collect();
            assert!(leftovers.is_empty(), "no temp files left: {leftovers:?}");
            b.storage().put(key, &mut &good[..]).unwrap();
        }
    }
    assert_restores_to(dir, b, &db, "repaired");
}

fn a_second_watch_on_the_same_name_is_refused(dir: &Path, b: &Backend) {
    let db = seed_db(dir);
    let log = dir.join("watch.log");
    let first = spawn_watch(&db, b, &[], &log);
    std::thread::sleep(Duration::from_millis(800));

    // Another database (another machine, say) claiming the same name.
    let other_dir = dir.join("other");
    std::fs::create_dir_all(&other_dir).unwrap();
    let other = other_dir.join("app.db");
    ok(&workload(&other, &["--txns", "20", "--seed", "50"]));
    let started = Instant::now();
    let mut args = vec!["watch", other.to_str().unwrap()];
    let bargs = b.args();
    args.extend(bargs.iter().map(String::as_str));
    let o = walrust(&args);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(5), "fenced: {err}");
    assert!(err.contains("app") && err.to_lowercase().contains("new-generation"), "says why and what to do: {err}");
    assert!(started.elapsed() < Duration::from_secs(10));

    // A second watch of the same file is refused by the lock.
    let o = walrust(
        &[&["watch", db.to_str().unwrap()][..], &bargs.iter().map(String::as_str).collect::<Vec<_>>()].concat(),
    );
    assert!(!o.status.success(), "second watch of the same file refused");
    assert!(String::from_utf8_lossy(&o.stderr).contains("already"), "{}", String::from_utf8_lossy(&o.stderr));

    ok(&workload(&db, &["--txns", "100", "--seed", "51"]));
    assert_eq!(stop(first, 30), 0, "{}", log_text(&log));
    assert_restores_to(dir, b, &db, "not-mixed");
}

fn snapshots(keys: &[String]) -> usize {
    keys.iter().filter(|k| k.contains("-s-") || k.contains("-b-")).count()
}

fn restart_with_the_wal_intact_takes_no_new_snapshot(dir: &Path, b: &Backend) {
    let db = seed_db(dir);
    let log = dir.join("watch.log");
    // A writer that keeps its connection open, so the WAL is not checkpointed away on close.
    let watch = spawn_watch(&db, b, &[], &log);
    ok(&workload(&db, &["--txns", "100", "--seed", "20"]));
    assert_eq!(stop(watch, 30), 0, "{}", log_text(&log));
    let before = b.keys("app");
    assert_eq!(snapshots(&before), 1, "{before:?}");

    for round in 0..3 {
        let watch = spawn_watch(&db, b, &[], &log);
        ok(&workload(&db, &["--txns", "50", "--seed", &(21 + round).to_string()]));
        assert_eq!(stop(watch, 30), 0, "{}", log_text(&log));
    }
    // And after a SIGKILL with the WAL intact.
    let watch = spawn_watch(&db, b, &[], &log);
    ok(&workload(&db, &["--txns", "50", "--seed", "30"]));
    std::thread::sleep(Duration::from_millis(500));
    kill9(watch);
    let watch = spawn_watch(&db, b, &[], &log);
    ok(&workload(&db, &["--txns", "50", "--seed", "31"]));
    assert_eq!(stop(watch, 30), 0, "{}", log_text(&log));

    let after = b.keys("app");
    eprintln!("objects: {} before restarts, {} after", before.len(), after.len());
    assert_eq!(snapshots(&after), 1, "no new snapshot after restarts: {after:?}");
    let gens: std::collections::BTreeSet<&str> = after.iter().map(|k| k.split('/').nth(1).unwrap()).collect();
    assert_eq!(gens.len(), 1, "one generation");
    assert!(after.len() > before.len());
    assert_restores_to(dir, b, &db, "resumed");
}

fn snapshot_command_alongside_a_running_watch_and_alone(dir: &Path, b: &Backend) {
    let db = seed_db(dir);
    let log = dir.join("watch.log");
    let bargs = b.args();
    let snapshot_args: Vec<&str> =
        [&["snapshot", db.to_str().unwrap()][..], &bargs.iter().map(String::as_str).collect::<Vec<_>>()].concat();

    let watch = spawn_watch(&db, b, &[], &log);
    let writer = spawn_workload(&db, &["--txns", "400", "--seed", "40", "--pause-ms", "2"]);
    std::thread::sleep(Duration::from_millis(400));
    // While the application writes and watch ships: the running watch takes it, its chain goes on.
    let out = ok(&walrust(&snapshot_args));
    assert!(out.contains("taken by the running watch"), "{out}");
    assert_eq!(snapshots(&b.keys("app")), 2, "base + requested snapshot");
    ok(&writer.wait_with_output().unwrap());
    assert_eq!(stop(watch, 30), 0, "{}", log_text(&log));
    assert!(!watch_request_left(&db), "the request file is removed once served");

    // No watch running (and the WAL as watch left it): the command resumes the chain itself.
    let out = ok(&walrust(&snapshot_args));
    assert!(out.contains("stored at seq"), "{out}");
    let keys = b.keys("app");
    assert_eq!(snapshots(&keys), 3, "{keys:?}");
    let gens: std::collections::BTreeSet<&str> = keys.iter().map(|k| k.split('/').nth(1).unwrap()).collect();
    assert_eq!(gens.len(), 1, "one generation: the chain was never broken");

    let watch = spawn_watch(&db, b, &[], &log);
    ok(&workload(&db, &["--txns", "50", "--seed", "42"]));
    assert_eq!(stop(watch, 30), 0, "{}", log_text(&log));
    assert_restores_to(dir, b, &db, "after-snapshots");
    ok(&walrust(&[&["verify", "app"][..], &bargs.iter().map(String::as_str).collect::<Vec<_>>()].concat()));
}

fn watch_request_left(db: &Path) -> bool {
    let mut p = db.as_os_str().to_os_string();
    p.push("-walrust-snapshot");
    Path::new(&p).exists()
}

/// FIELD-NOTES 4: a storage error while reading the remote head is never "no backup yet".
#[test]
fn unreachable_storage_at_start_is_an_error_not_a_new_lineage() {
    let Some(b) = Backend::s3() else { return };
    let dir = temp_dir("unreachable");
    let db = seed_db(&dir);
    let log = dir.join("watch.log");
    let w = spawn_watch(&db, &b, &[], &log);
    ok(&workload(&db, &["--txns", "20", "--seed", "60"]));
    assert_eq!(stop(w, 30), 0, "{}", log_text(&log));
    let before = b.keys("app");

    // The same bucket through an endpoint that does not answer.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let down = Backend { url: b.url.clone(), endpoint: Some(format!("http://127.0.0.1:{port}")) };
    let mut args = vec!["watch".to_string(), db.to_str().unwrap().to_string()];
    args.extend(down.args());
    let o = walrust(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("storage unreachable"), "{err}");
    assert_eq!(b.keys("app"), before, "nothing written, no new generation");

    // Back up: the chain resumes.
    let w = spawn_watch(&db, &b, &[], &log);
    ok(&workload(&db, &["--txns", "20", "--seed", "61"]));
    assert_eq!(stop(w, 30), 0, "{}", log_text(&log));
    let after = b.keys("app");
    assert_eq!(snapshots(&after), 1, "resumed: {after:?}");
    assert_restores_to(&dir, &b, &db, "after-outage");
    let _ = std::fs::remove_dir_all(&dir);
}

fn restore_if_missing_then_watch_continues_the_chain(dir: &Path, b: &Backend) {
    let db = seed_db(dir);
    let log = dir.join("watch.log");
    let w = spawn_watch(&db, b, &[], &log);
    ok(&workload(&db, &["--txns", "100", "--seed", "70"]));
    assert_eq!(stop(w, 30), 0, "{}", log_text(&log));
    let source = digest(&db);

    // A new machine: the database is not there yet.
    let node = dir.join("node2");
    std::fs::create_dir_all(&node).unwrap();
    let db2 = node.join("app.db");
    let bargs = b.args();
    let bargs: Vec<&str> = bargs.iter().map(String::as_str).collect();

    // restore --if-not-exists --json: restores once, then is a no-op.
    let out = ok(&walrust(
        &[&["restore", "app", "-o", db2.to_str().unwrap(), "--if-not-exists", "--json"][..], &bargs].concat(),
    ));
    assert!(out.contains("\"restored\":true") && out.contains("\"seq\":"), "{out}");
    assert_eq!(digest(&db2), source);
    let out = ok(&walrust(
        &[&["restore", "app", "-o", db2.to_str().unwrap(), "--if-not-exists", "--json"][..], &bargs].concat(),
    ));
    assert!(out.contains("\"restored\":false"), "{out}");
    let out =
        ok(&walrust(&[&["restore", "app", "-o", "/nonexistent-dir/x.db", "--dry-run", "--json"][..], &bargs].concat()));
    assert!(out.contains("\"objects\":[{\"key\":"), "{out}");
    std::fs::remove_file(&db2).unwrap();
    for suffix in ["-walrust", "-wal", "-shm"] {
        let mut p = db2.as_os_str().to_os_string();
        p.push(suffix);
        let _ = std::fs::remove_file(p);
    }

    // watch --restore-if-missing: restores, then ships the new machine's writes on the same chain.
    let w = spawn_watch(&db2, b, &["--restore-if-missing"], &log);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !db2.exists() || log_text(&log).matches("restored 'app'").count() == 0 {
        assert!(Instant::now() < deadline, "restore before watching: {}", log_text(&log));
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));
    ok(&workload(&db2, &["--txns", "100", "--seed", "71"]));
    assert_eq!(stop(w, 30), 0, "{}", log_text(&log));
    let keys = b.keys("app");
    assert_eq!(snapshots(&keys), 1, "the chain continued, no new snapshot: {keys:?}");
    assert_restores_to(dir, b, &db2, "continued");

    // Nothing to restore from: a clear not-found.
    let empty = dir.join("node3/app.db");
    std::fs::create_dir_all(empty.parent().unwrap()).unwrap();
    let o = walrust(
        &[&["watch", empty.to_str().unwrap(), "--restore-if-missing", "--name", "nobody"][..], &bargs].concat(),
    );
    assert_eq!(o.status.code(), Some(3), "{}", String::from_utf8_lossy(&o.stderr));
}

fn watch_compacts_on_an_interval_while_it_ships(dir: &Path, b: &Backend) {
    let db = seed_db(dir);
    let log = dir.join("watch.log");
    // Keep only the newest point; snapshot often so that older changesets become deletable.
    let extra = [
        "--compact-interval",
        "400ms",
        "--snapshot-interval",
        "300ms",
        "--keep-hourly",
        "0",
        "--keep-daily",
        "0",
        "--keep-weekly",
        "0",
        "--keep-monthly",
        "0",
    ];
    let w = spawn_watch(&db, b, &extra, &log);
    ok(&workload(&db, &["--txns", "300", "--seed", "80", "--pause-ms", "8"]));
    std::thread::sleep(Duration::from_millis(1200));
    assert_eq!(stop(w, 30), 0, "{}", log_text(&log));
    let text = log_text(&log);
    assert!(text.contains("compacted:"), "compaction ran: {text}");
    let keys = b.keys("app");
    let decisions = keys.iter().filter(|k| k.contains("/compact-")).count();
    assert!(decisions <= 1, "only the latest decision object stays: {keys:?}");
    let changesets = keys.iter().filter(|k| k.contains("-c-")).count();
    eprintln!("after compaction: {} objects, {changesets} changesets", keys.len());
    assert!(changesets < 20, "old changesets were deleted: {keys:?}");
    assert_restores_to(dir, b, &db, "compacted");
    let bargs = b.args();
    ok(&walrust(&[&["verify", "app"][..], &bargs.iter().map(String::as_str).collect::<Vec<_>>()].concat()));
}

/// SIGKILL of `walrust compact` midway (S3, where deleting takes long enough to be interrupted): verify accepts
/// the bucket and the latest state restores exactly, after every kill; a later compaction finishes the job.
#[test]
fn sigkill_during_compact_leaves_a_verifiable_bucket() {
    let Some(b) = Backend::s3() else { return };
    let dir = temp_dir("kill-compact");
    let db = seed_db(&dir);
    let log = dir.join("watch.log");
    let w = spawn_watch(&db, &b, &["--interval", "10ms", "--snapshot-interval", "150ms"], &log);
    ok(&workload(&db, &["--txns", "500", "--seed", "90", "--pause-ms", "6"]));
    assert_eq!(stop(w, 30), 0, "{}", log_text(&log));
    let bargs = b.args();
    let bargs: Vec<&str> = bargs.iter().map(String::as_str).collect();
    let policy = ["--hourly", "0", "--daily", "0", "--weekly", "0", "--monthly", "0"];
    let mut interrupted = 0;
    for delay_ms in [40u64, 80, 120, 200, 300] {
        let before = b.keys("app").len();
        let child = command(walrust_bin())
            .args([&["compact", "app"][..], &policy, &bargs].concat())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        kill9(child);
        let after = b.keys("app").len();
        let o = walrust(&[&["compact", "app", "--dry-run", "--json"][..], &policy, &bargs].concat());
        let left = ok(&o);
        let still_to_delete = !left.contains("\"deleted\":0,");
        if after < before && still_to_delete {
            interrupted += 1;
        }
        ok(&walrust(&[&["verify", "app"][..], &bargs].concat()));
        assert_restores_to(&dir, &b, &db, &format!("killed-after-{delay_ms}ms"));
    }
    eprintln!("compactions interrupted midway: {interrupted}");
    assert!(interrupted >= 1, "at least one kill landed mid-deletion");
    ok(&walrust(&[&["compact", "app"][..], &policy, &bargs].concat()));
    ok(&walrust(&[&["verify", "app"][..], &bargs].concat()));
    assert_restores_to(&dir, &b, &db, "finished");
    let _ = std::fs::remove_dir_all(&dir);
}

/// walrust.toml end to end: a glob picks up three tenant databases plus a named one; a per-database override
/// (snapshot_interval) takes effect for that database only; every database restores; a typo is a line-numbered error.
#[test]
fn config_file_with_globs_and_per_database_overrides() {
    let dir = temp_dir("config");
    let tenants = dir.join("tenants");
    std::fs::create_dir_all(&tenants).unwrap();
    for t in ["t1", "t2", "t3"] {
        ok(&workload(&tenants.join(format!("{t}.db")), &["--txns", "10", "--seed", "1"]));
    }
    let main = dir.join("main.db");
    ok(&workload(&main, &["--txns", "10", "--seed", "2"]));
    let backups = dir.join("backups");
    let cfg = dir.join("walrust.toml");
    std::fs::write(
        &cfg,
        format!(
            "[s3]\nbucket = \"file://{}\"\n\n[sync]\ninterval = \"100ms\"\ncheck_interval = \"20ms\"\nsnapshot_interval = \"1h\"\n\n\
             [[databases]]\npath = \"{}/*.db\"\n\n[[databases]]\npath = \"{}\"\nname = \"primary\"\nsnapshot_interval = \"200ms\"\n",
            backups.display(),
            tenants.display(),
            main.display()
        ),
    )
    .unwrap();
    let log = dir.join("watch.log");
    let logf = std::fs::File::create(&log).unwrap();
    let child = command(walrust_bin())
        .args(["watch", "--config", cfg.to_str().unwrap(), "--check-interval", "10ms"])
        .stderr(logf)
        .spawn()
        .unwrap();
    for round in 0..6 {
        for db in ["tenants/t1.db", "tenants/t2.db", "tenants/t3.db", "main.db"] {
            ok(&workload(&dir.join(db), &["--txns", "5", "--seed", &(10 + round).to_string()]));
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    assert_eq!(stop(child, 30), 0, "{}", log_text(&log));
    let text = log_text(&log);
    assert!(text.contains("watching 4 database(s)"), "{text}");
    let b = Backend { url: format!("file://{}", backups.display()), endpoint: None };
    let primary = b.keys("primary");
    assert!(snapshots(&primary) >= 3, "the per-database snapshot_interval applies: {primary:?}");
    for t in ["t1", "t2", "t3"] {
        assert_eq!(snapshots(&b.keys(t)), 1, "[sync] snapshot_interval = 1h applies to {t}");
        let out = dir.join(format!("{t}-restored.db"));
        restore_ok(&b, t, &out, &[]);
        assert_eq!(digest(&out), digest(&tenants.join(format!("{t}.db"))));
    }
    let out = dir.join("primary-restored.db");
    restore_ok(&b, "primary", &out, &[]);
    assert_eq!(digest(&out), digest(&main));

    // Errors name the file, the line and the key; nothing starts.
    std::fs::write(&cfg, "[sync]\ninterval = \"1s\"\nintervall = \"2s\"\n").unwrap();
    let o = walrust(&["watch", "--config", cfg.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("walrust.toml:3: unknown key 'intervall' in [sync]"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// FIELD-NOTES 16: a database not named `*.db` has its WAL (path + `-wal`) replicated like any other.
#[test]
fn a_database_not_named_db_replicates() {
    let dir = temp_dir("not-db");
    let db = dir.join("inventory.sqlite3");
    ok(&workload(&db, &["--txns", "20", "--seed", "95"]));
    let b = Backend::file(&dir);
    let log = dir.join("watch.log");
    let w = spawn_watch(&db, &b, &[], &log);
    ok(&workload(&db, &["--txns", "100", "--seed", "96"]));
    assert_eq!(stop(w, 30), 0, "{}", log_text(&log));
    assert!(b.keys("inventory").iter().any(|k| k.contains("-c-")), "changesets shipped from inventory.sqlite3-wal");
    let out = dir.join("restored.sqlite3");
    restore_ok(&b, "inventory", &out, &[]);
    assert_eq!(digest(&out), digest(&db));
    let _ = std::fs::remove_dir_all(&dir);
}

/// explain: resolved settings, glob matches, credential source and request estimates; no request sent (the
/// endpoint does not answer), no secret printed.
#[test]
fn explain_shows_the_resolved_plan_without_secrets_or_requests() {
    let dir = temp_dir("explain");
    let tenants = dir.join("tenants");
    std::fs::create_dir_all(&tenants).unwrap();
    for t in ["a", "b"] {
        ok(&workload(&tenants.join(format!("{t}.db")), &["--txns", "1"]));
    }
    let cfg = dir.join("walrust.toml");
    std::fs::write(
        &cfg,
        format!(
            "[s3]\nbucket = \"s3://some-bucket/prod/\"\nendpoint = \"http://127.0.0.1:9\"\n[sync]\ninterval = \"2s\"\n\
             [retention]\ndaily = 3\ncompact_interval = \"1h\"\n[[databases]]\npath = \"{}/*.db\"\ninterval = \"10s\"\n",
            tenants.display()
        ),
    )
    .unwrap();
    let run = |extra: &[&str]| {
        command(walrust_bin())
            .args([&["explain", "--config", cfg.to_str().unwrap()][..], extra].concat())
            .env("AWS_ACCESS_KEY_ID", "AKIAEXPLAINTEST")
            .env("AWS_SECRET_ACCESS_KEY", "super-secret-value")
            .env("AWS_SESSION_TOKEN", "session-token-value")
            .output()
            .unwrap()
    };
    let o = run(&[]);
    let out = String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{out}");
    assert!(out.contains("s3://some-bucket/prod/") && out.contains("http://127.0.0.1:9"), "{out}");
    assert!(out.contains("environment (access key AKIAEXPLAINTEST)"), "{out}");
    assert!(out.contains("/*.db: 2 database(s)") && out.contains("daily 3") && out.contains("every 1h"), "{out}");
    // The database's own interval (10s) wins over [sync] (2s): 259200 busy PUTs a month.
    let row = out.lines().find(|l| l.starts_with("a ")).unwrap_or_else(|| panic!("{out}"));
    assert!(row.contains("10s") && row.contains("259200"), "{row}");
    assert!(!out.contains("super-secret-value") && !out.contains("session-token-value"), "no secrets: {out}");
    // A flag overrides the file.
    let o = run(&["--interval", "1m", "--json"]);
    let json = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(o.status.success(), "{json}");
    assert!(json.contains("\"interval_ms\":60000") && json.contains("\"busy_puts_per_month\":43200"), "{json}");
    assert!(json.contains("\"idle_requests_per_month\":0") && !json.contains("super-secret-value"), "{json}");
    let _ = std::fs::remove_dir_all(&dir);
}

fn http_get(addr: &str, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, out.split("\r\n\r\n").nth(1).unwrap_or("").to_string())
}

/// Metrics and health; a database replaced by another file under watch stops (health 503 naming it) while the
/// other keeps replicating; exit code 1 at the end.
#[test]
fn metrics_health_and_one_failing_database_does_not_stall_the_other() {
    let dir = temp_dir("metrics");
    let (a, bdb) = (dir.join("a.db"), dir.join("b.db"));
    ok(&workload(&a, &["--txns", "10", "--seed", "1"]));
    ok(&workload(&bdb, &["--txns", "10", "--seed", "2"]));
    let backend = Backend::file(&dir);
    let log = dir.join("watch.log");
    let logf = std::fs::File::create(&log).unwrap();
    let child = command(walrust_bin())
        .args(["watch", a.to_str().unwrap(), bdb.to_str().unwrap(), "--metrics-addr", "127.0.0.1:0"])
        .args(backend.args())
        .args(["--interval", "50ms", "--check-interval", "20ms"])
        .stderr(logf)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let addr = loop {
        if let Some(l) = log_text(&log).lines().find(|l| l.contains("serving /metrics")) {
            break l.rsplit("http://").next().unwrap().trim().to_string();
        }
        assert!(Instant::now() < deadline, "{}", log_text(&log));
        std::thread::sleep(Duration::from_millis(20));
    };
    ok(&workload(&a, &["--txns", "30", "--seed", "3"]));
    std::thread::sleep(Duration::from_millis(400));
    let (status, metrics) = http_get(&addr, "/metrics");
    assert_eq!(status, 200);
    for needle in [
        "walrust_changesets_total{db=\"a\"}",
        "walrust_last_sync_timestamp_seconds{db=\"b\"}",
        "walrust_replication_lag_seconds{db=\"a\"} 0",
        "walrust_wal_bytes{db=\"a\"}",
        "walrust_storage_requests_total{kind=\"put\"}",
        "walrust_failed{db=\"b\"} 0",
    ] {
        assert!(metrics.contains(needle), "{needle} in {metrics}");
    }
    // SQLite's heap: some (the process's connections come and go), and well under a connection per database
    // held open with its cache (the pins hold none).
    let sqlite_bytes: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("walrust_sqlite_memory_bytes "))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("walrust_sqlite_memory_bytes in {metrics}"));
    assert!(sqlite_bytes > 0.0 && sqlite_bytes < 1e6, "{sqlite_bytes}");
    assert_eq!(http_get(&addr, "/health"), (200, "ok\n".to_string()));

    // b is replaced by another file under watch: it stops (health 503 naming it), a goes on.
    let other = dir.join("other.db");
    ok(&workload(&other, &["--txns", "5", "--seed", "9"]));
    std::fs::rename(&other, &bdb).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = http_get(&addr, "/health");
        if status == 503 {
            assert!(body.contains("b: stopped") && body.contains("replaced"), "{body}");
            break;
        }
        assert!(Instant::now() < deadline, "health never failed: {}", log_text(&log));
        std::thread::sleep(Duration::from_millis(50));
    }
    let before = a_changesets(&http_get(&addr, "/metrics").1);
    ok(&workload(&a, &["--txns", "30", "--seed", "4", "--pause-ms", "5"]));
    std::thread::sleep(Duration::from_millis(400));
    assert!(a_changesets(&http_get(&addr, "/metrics").1) > before, "a keeps replicating");
    assert_eq!(stop(child, 30), 1, "one database failed: {}", log_text(&log));
    let out = dir.join("a-restored.db");
    restore_ok(&backend, "a", &out, &[]);
    assert_eq!(digest(&out), digest(&a));
    let _ = std::fs::remove_dir_all(&dir);
}

fn a_changesets(metrics: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("walrust_changesets_total{db=\"a\"} "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// Databases come and go: a new file matching a glob is picked up without a restart, a deleted one is dropped
/// cleanly, SIGHUP reloads the config (an entry added starts, an entry removed drains and stops), and the
/// others never stop replicating.
#[test]
fn globs_pick_up_new_files_and_sighup_reloads_the_config() {
    let dir = temp_dir("discovery");
    let tenants = dir.join("tenants");
    std::fs::create_dir_all(&tenants).unwrap();
    for t in ["t1", "t2"] {
        ok(&workload(&tenants.join(format!("{t}.db")), &["--txns", "10", "--seed", "1"]));
    }
    let solo = dir.join("solo.db");
    ok(&workload(&solo, &["--txns", "10", "--seed", "2"]));
    let backups = dir.join("backups");
    let cfg = dir.join("walrust.toml");
    let head = format!(
        "[s3]\nbucket = \"file://{}\"\n[sync]\ninterval = \"50ms\"\ncheck_interval = \"20ms\"\n",
        backups.display()
    );
    let glob = format!("[[databases]]\npath = \"{}/*.db\"\n", tenants.display());
    std::fs::write(&cfg, format!("{head}{glob}")).unwrap();
    let log = dir.join("watch.log");
    let logf = std::fs::File::create(&log).unwrap();
    let child = command(walrust_bin()).args(["watch", "--config", cfg.to_str().unwrap()]).stderr(logf).spawn().unwrap();
    let wait_for = |needle: &str| {
        let deadline = Instant::now() + Duration::from_secs(15);
        while !log_text(&log).contains(needle) {
            assert!(Instant::now() < deadline, "waiting for '{needle}': {}", log_text(&log));
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    wait_for("watching 2 database(s)");
    let b = Backend { url: format!("file://{}", backups.display()), endpoint: None };

    // A new tenant appears.
    let t3 = tenants.join("t3.db");
    ok(&workload(&t3, &["--txns", "20", "--seed", "3"]));
    wait_for("t3.db: new database, now watching it as 't3'");
    ok(&workload(&t3, &["--txns", "20", "--seed", "4"]));
    // A tenant is deleted.
    for suffix in ["", "-wal", "-shm"] {
        let mut p = tenants.join("t2.db").into_os_string();
        p.push(suffix);
        let _ = std::fs::remove_file(p);
    }
    wait_for("t2.db: the database was deleted; no longer watching it");
    ok(&workload(&tenants.join("t1.db"), &["--txns", "20", "--seed", "5"]));

    // SIGHUP: solo.db is added, the tenants' glob is removed.
    std::fs::write(&cfg, format!("{head}[[databases]]\npath = \"{}\"\n", solo.display())).unwrap();
    signal(&child, "-HUP");
    wait_for("configuration reloaded (SIGHUP)");
    wait_for("solo.db: new database, now watching it as 'solo'");
    wait_for("t1.db: no longer configured; stopped after shipping");
    ok(&workload(&solo, &["--txns", "20", "--seed", "6"]));
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(stop(child, 30), 0, "{}", log_text(&log));

    for (name, db) in [("t1", tenants.join("t1.db")), ("t3", t3.clone()), ("solo", solo.clone())] {
        let out = dir.join(format!("{name}-restored.db"));
        restore_ok(&b, name, &out, &[]);
        assert_eq!(digest(&out), digest(&db), "{name}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A webhook receiver on 127.0.0.1: every request's headers and body, in order.
fn webhook_receiver() -> (String, std::sync::mpsc::Receiver<(String, String)>) {
    use std::io::{BufRead, BufReader, Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { break };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let (mut headers, mut len) = (String::new(), 0usize);
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap_or(0);
                }
                headers.push_str(&line);
            }
            let mut body = vec![0u8; len];
            reader.read_exact(&mut body).unwrap();
            let _ = write!(stream, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
            if tx.send((headers, String::from_utf8_lossy(&body).to_string())).is_err() {
                break;
            }
        }
    });
    (url, rx)
}

/// A database that stops (replaced under watch) sends a `database_stopped` webhook whose HMAC-SHA256 signature
/// verifies with the shared secret (checked by Python's hmac module, an independent implementation).
#[test]
fn a_stopped_database_sends_a_signed_webhook() {
    let dir = temp_dir("webhook");
    let (a, bdb) = (dir.join("a.db"), dir.join("b.db"));
    ok(&workload(&a, &["--txns", "10", "--seed", "1"]));
    ok(&workload(&bdb, &["--txns", "10", "--seed", "2"]));
    let (url, events) = webhook_receiver();
    let backend = Backend::file(&dir);
    let log = dir.join("watch.log");
    let child = command(walrust_bin())
        .args(["watch", a.to_str().unwrap(), bdb.to_str().unwrap(), "--webhook-url", &url])
        .args(backend.args())
        .args(["--interval", "50ms", "--check-interval", "20ms"])
        .env("WALRUST_WEBHOOK_SECRET", "hook-secret")
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let other = dir.join("other.db");
    ok(&workload(&other, &["--txns", "5", "--seed", "9"]));
    std::fs::rename(&other, &bdb).unwrap();
    let (headers, body) = events.recv_timeout(Duration::from_secs(15)).unwrap_or_else(|_| panic!("{}", log_text(&log)));
    assert!(body.contains("\"event\":\"database_stopped\"") && body.contains("\"database\":\"b\""), "{body}");
    assert!(body.contains("replaced"), "{body}");
    let sig = headers
        .lines()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("x-walrust-signature: sha256=").map(|s| s.trim().to_string()))
        .unwrap_or_else(|| panic!("signed: {headers}"));
    let py = std::process::Command::new("python3")
        .args(["-c", "import hmac,hashlib,sys; print(hmac.new(b'hook-secret', sys.stdin.buffer.read(), hashlib.sha256).hexdigest())"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut py.stdin.as_ref().unwrap(), body.as_bytes()).unwrap();
    let out = py.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), sig, "the signature verifies");
    assert!(!log_text(&log).contains("hook-secret"));
    assert_eq!(stop(child, 30), 1, "{}", log_text(&log));
    let _ = std::fs::remove_dir_all(&dir);
}

/// Waits (up to `secs`) for a webhook whose body contains `event`, skipping others.
fn wait_event_for(events: &std::sync::mpsc::Receiver<(String, String)>, event: &str, log: &Path, secs: u64) -> String {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match events.recv_timeout(left) {
            Ok((_, body)) if body.contains(&format!("\"event\":\"{event}\"")) => return body,
            Ok(_) => continue,
            Err(_) => break,
        }
    }
    panic!("no {event} webhook: {}", log_text(log));
}

fn wait_event(events: &std::sync::mpsc::Receiver<(String, String)>, event: &str, log: &Path) -> String {
    wait_event_for(events, event, log, 20)
}

/// A WAL over --wal-warn-size is reported once (log line and `wal_over_threshold` webhook); a second writer
/// appearing in the database's generation stops it with a `fenced` webhook and exit 5's reason in the log.
#[test]
fn wal_threshold_and_fencing_send_webhooks() {
    let dir = temp_dir("webhook-events");
    let db = dir.join("w.db");
    let c = app(&db);
    c.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB)").unwrap();
    let (url, events) = webhook_receiver();
    let backend = Backend::file(&dir);
    let log = dir.join("watch.log");
    let child = command(walrust_bin())
        .args(["watch", db.to_str().unwrap(), "--webhook-url", &url, "--wal-warn-size", "64KiB"])
        .args(backend.args())
        .args(["--interval", "50ms", "--check-interval", "20ms", "--snapshot-interval", "1s"])
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    c.execute("INSERT INTO t(v) VALUES (randomblob(300000))", []).unwrap();
    let body = wait_event(&events, "wal_over_threshold", &log);
    assert!(body.contains("\"database\":\"w\"") && body.contains("65536-byte warning size"), "{body}");
    assert!(log_text(&log).contains("over the 65536-byte warning size"), "{}", log_text(&log));

    // Another writer's object right after this database's head, in its generation.
    let storage = backend.storage();
    let head = walrust::remote::head(&*storage, "w").unwrap().unwrap();
    let mut foreign = head.last.key.clone();
    foreign.seq += 1;
    foreign.kind = walrust::keys::Kind::Changeset;
    storage.put_if_absent(&foreign.format("w"), &mut &b"not ours"[..]).unwrap();
    std::thread::sleep(Duration::from_millis(1100));
    c.execute("INSERT INTO t(v) VALUES (x'00')", []).unwrap();
    let body = wait_event(&events, "fenced", &log);
    assert!(body.contains("another writer"), "{body}");
    // Its only database stopped: watch exits by itself with the fencing exit code.
    let mut child = child;
    let t = Instant::now();
    let code = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st.code();
        }
        assert!(t.elapsed() < Duration::from_secs(30), "{}", log_text(&log));
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(code, Some(5), "{}", log_text(&log));
    let _ = std::fs::remove_dir_all(&dir);
}

/// Every upload failing (the S3 answers 500 to everything, through scripts/fault-proxy): after 5 failed attempts
/// in a row an `uploads_failing` webhook goes out, the application keeps writing, and once the storage answers
/// again everything committed meanwhile is shipped.
#[test]
fn failing_uploads_send_a_webhook_then_catch_up() {
    let Some(env) = s3_env() else { return };
    let proxy = FaultProxy::start(&env.endpoint);
    let dir = temp_dir("uploads-failing");
    let db = dir.join("f.db");
    let c = app(&db);
    c.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)").unwrap();
    let (url, events) = webhook_receiver();
    let through_proxy =
        Backend { url: format!("s3://{}/{}/", env.bucket, unique("failing")), endpoint: Some(proxy.endpoint()) };
    let direct = Backend { url: through_proxy.url.clone(), endpoint: Some(env.endpoint.clone()) };
    let log = dir.join("watch.log");
    let child = command(walrust_bin())
        .args(["watch", db.to_str().unwrap(), "--webhook-url", &url])
        .args(through_proxy.args())
        .args(["--interval", "50ms", "--check-interval", "20ms"])
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let t = Instant::now();
    while direct.keys("f").is_empty() {
        assert!(t.elapsed() < Duration::from_secs(20), "no base snapshot: {}", log_text(&log));
        std::thread::sleep(Duration::from_millis(100));
    }
    proxy.set(r#"{"error_rate": 1.0}"#);
    for i in 0..20 {
        c.execute("INSERT INTO t(v) VALUES (?1)", [format!("during the outage {i}")]).unwrap();
    }
    let body = wait_event_for(&events, "uploads_failing", &log, 90);
    assert!(body.contains("\"database\":\"f\"") && body.contains("attempts in a row"), "{body}");
    c.execute("INSERT INTO t(v) VALUES ('after the webhook')", []).unwrap();
    proxy.set(r#"{"error_rate": 0.0}"#);
    let t = Instant::now();
    loop {
        let out = dir.join(format!("r{}.db", t.elapsed().as_millis()));
        let o = walrust(
            &[
                &["restore", "f", "-o", out.to_str().unwrap()][..],
                &direct.args().iter().map(String::as_str).collect::<Vec<_>>()[..],
            ]
            .concat(),
        );
        if o.status.success() && rows(&out) == rows(&db) {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(60), "did not catch up: {}", log_text(&log));
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(stop(child, 30), 0, "{}", log_text(&log));
    let _ = std::fs::remove_dir_all(&dir);
}

/// `python3 -c CODE DB...`, asserting success; returns stdout.
fn python(code: &str, args: &[&Path]) -> String {
    ok(&std::process::Command::new("python3").arg("-c").arg(code).args(args).output().unwrap())
}

/// walrust's own SQLite is built without FTS3/4/5 and R-Tree (a smaller binary and lighter connections; see
/// .cargo/config.toml). Databases that use them replicate and restore exactly, walrust's integrity check passes
/// on them, and the application's SQLite searches the restored copy.
fn full_text_and_rtree_tables_replicate_and_restore(dir: &Path, b: &Backend) {
    let db = dir.join("app.db");
    const WRITE: &str = r#"
import sqlite3, sys
c = sqlite3.connect(sys.argv[1], isolation_level=None)
c.execute("PRAGMA journal_mode=WAL")
c.execute("CREATE VIRTUAL TABLE IF NOT EXISTS docs USING fts5(title, body)")
c.execute("CREATE VIRTUAL TABLE IF NOT EXISTS notes USING fts4(body)")
c.execute("CREATE VIRTUAL TABLE IF NOT EXISTS boxes USING rtree(id, x0, x1, y0, y1)")
start = c.execute("SELECT count(*) FROM boxes").fetchone()[0]
for i in range(start, start + 300):
    c.execute("BEGIN")
    c.execute("INSERT INTO docs VALUES (?, ?)", (f"doc {i}", f"the walrus number {i} " + "ocean " * (i % 40)))
    c.execute("INSERT INTO notes VALUES (?)", (f"note {i} about tusks",))
    c.execute("INSERT INTO boxes VALUES (?, ?, ?, ?, ?)", (i, i, i + 1.5, -i, -i + 2.0))
    if i % 50 == 49:
        c.execute("DELETE FROM docs WHERE rowid IN (SELECT rowid FROM docs LIMIT 5)")
    c.execute("COMMIT")
"#;
    python(WRITE, &[&db]);
    let log = dir.join("watch.log");
    let watch = spawn_watch(&db, b, &[], &log);
    python(WRITE, &[&db]);
    python(WRITE, &[&db]);
    assert_eq!(stop(watch, 30), 0, "{}", log_text(&log));
    let out = dir.join("restored-fts.db");
    restore_ok(b, "app", &out, &[]);
    assert_eq!(digest(&out), digest(&db), "the restore equals the source");
    const SEARCH: &str = r#"
import sqlite3, sys
c = sqlite3.connect(sys.argv[1])
c.execute("INSERT INTO docs(docs) VALUES ('integrity-check')")
c.execute("INSERT INTO notes(notes) VALUES ('integrity-check')")
print(c.execute("SELECT count(*) FROM docs WHERE docs MATCH 'walrus AND ocean'").fetchone()[0],
      c.execute("SELECT count(*) FROM notes WHERE notes MATCH 'tusks'").fetchone()[0],
      c.execute("SELECT count(*) FROM boxes WHERE x0 >= 100 AND x1 <= 200.5").fetchone()[0])
"#;
    let want = python(SEARCH, &[&db]);
    assert_eq!(python(SEARCH, &[&out]), want);
    assert!(want.starts_with(|c: char| c.is_ascii_digit() && c != '0'), "{want}");
}

/// The seq walrust's state file says is shipped.
fn shipped_seq(db: &Path) -> u64 {
    let state = std::fs::read_to_string(db.with_extension("db-walrust")).unwrap_or_default();
    let Some(at) = state.find("\"seq\":") else { return 0 };
    state[at + 6..].chars().take_while(char::is_ascii_digit).collect::<String>().parse().unwrap_or(0)
}

fn wait_shipped_past(db: &Path, seq: u64, log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while shipped_seq(db) <= seq {
        assert!(Instant::now() < deadline, "nothing shipped past seq {seq}: {}", log_text(log));
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Leaves in `db`'s WAL, after what SQLite has published, one more transaction that is complete in the WAL file
/// but unknown to the wal-index: the state a writer SIGKILLed inside COMMIT leaves (after writing its frames,
/// before publishing them). Made deterministically: a copy of the database, opened alone (so SQLite recovers
/// its WAL), commits the transaction; its new frames are then written into `db`'s WAL at the same offset.
/// Returns the rows the transaction inserts.
fn leave_an_unpublished_commit(dir: &Path, db: &Path) -> i64 {
    let twin_dir = dir.join("twin");
    let _ = std::fs::remove_dir_all(&twin_dir);
    std::fs::create_dir_all(&twin_dir).unwrap();
    let twin = twin_dir.join("app.db");
    std::fs::copy(db, &twin).unwrap();
    std::fs::copy(db.with_extension("db-wal"), twin.with_extension("db-wal")).unwrap();
    let before = std::fs::read(twin.with_extension("db-wal")).unwrap();
    let c = rusqlite::Connection::open(&twin).unwrap();
    c.execute_batch("BEGIN; CREATE TABLE IF NOT EXISTS ghost(id INTEGER PRIMARY KEY, b BLOB)").unwrap();
    for i in 0..15 {
        c.execute("INSERT INTO ghost(b) VALUES (randomblob(?1))", [if i % 5 == 0 { 40_000 } else { 100 }]).unwrap();
    }
    c.execute_batch("COMMIT").unwrap();
    let after = std::fs::read(twin.with_extension("db-wal")).unwrap();
    drop(c);
    assert_eq!(before[..32], after[..32], "the copy appended to the same WAL cycle");
    let page_size = u32::from_be_bytes(after[8..12].try_into().unwrap()) as usize;
    let first_diff = before.iter().zip(&after).position(|(a, b)| a != b).unwrap_or(before.len());
    let at = 32 + (first_diff - 32) / (page_size + 24) * (page_size + 24);
    use std::os::unix::fs::FileExt;
    let wal = std::fs::OpenOptions::new().write(true).open(db.with_extension("db-wal")).unwrap();
    wal.write_all_at(&after[at..], at as u64).unwrap();
    15
}

fn ghost_rows(db: &Path) -> Option<i64> {
    let c = rusqlite::Connection::open(db).unwrap();
    c.query_row("SELECT count(*) FROM ghost", [], |r| r.get(0)).ok()
}

/// Found by the soak (seed 1796324496): its final SIGKILL caught a writer inside COMMIT, the drain shipped all
/// SQLite had published, and the first process to open the database afterwards recovered 15 more rows from the
/// WAL. The drain must leave the backup equal to what that next opener sees, and must not ship the frames while
/// another process has the database open (its next write overwrites them).
fn a_commit_its_writer_never_published_is_shipped_when_sqlite_would_recover_it(dir: &Path, b: &Backend) {
    let db = seed_db(dir);
    let log = dir.join("watch.log");

    // 1. The application is gone: the drain's fresh connection recovers the transaction and ships it.
    let watch = spawn_watch(&db, b, &[], &log);
    wait_shipped_past(&db, 0, &log);
    let seq = shipped_seq(&db);
    app(&db).execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT); INSERT INTO t(v) VALUES ('a')").unwrap();
    wait_shipped_past(&db, seq, &log);
    let n = leave_an_unpublished_commit(dir, &db);
    assert_eq!(stop(watch, 30), 0, "{}", log_text(&log));
    assert!(log_text(&log).contains("recovered and shipped"), "{}", log_text(&log));
    assert_eq!(ghost_rows(&db), Some(n), "the next opener recovers the transaction");
    assert_restores_to(dir, b, &db, "recovered");

    // 2. The application still has the database open: the transaction is not committed for it, and not shipped.
    let watch = spawn_watch(&db, b, &[], &log);
    wait_shipped_past(&db, 0, &log);
    let seq = shipped_seq(&db);
    let application = app(&db);
    application.execute_batch("DROP TABLE ghost; INSERT INTO t(v) VALUES ('b')").unwrap();
    wait_shipped_past(&db, seq, &log);
    leave_an_unpublished_commit(dir, &db);
    assert_eq!(stop(watch, 30), 0, "{}", log_text(&log));
    assert!(log_text(&log).contains("not recovered"), "{}", log_text(&log));
    let ghost: i64 =
        application.query_row("SELECT count(*) FROM sqlite_master WHERE name = 'ghost'", [], |r| r.get(0)).unwrap();
    assert_eq!(ghost, 0, "the application never sees the unpublished transaction");
    let out = dir.join("restored-open.db");
    restore_ok(b, "app", &out, &[]);
    assert_eq!(ghost_rows(&out), None, "nor does the backup");
    assert_eq!(rows(&out), vec![(1, "a".to_string()), (2, "b".to_string())]);
    // Its next write overwrites those frames; a new watch ships it on the same chain.
    application.execute_batch("INSERT INTO t(v) VALUES ('c')").unwrap();
    let seq = shipped_seq(&db);
    let watch = spawn_watch(&db, b, &[], &log);
    wait_shipped_past(&db, seq, &log);
    assert_eq!(stop(watch, 30), 0, "{}", log_text(&log));
    drop(application);
    assert_restores_to(dir, b, &db, "overwritten");
}
