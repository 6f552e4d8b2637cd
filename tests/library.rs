//! The embedding API (`walrust::Replicator`, `walrust::restore`, `walrust::verify`) on both backends, including
//! the example application in `examples/embedded.rs`, compiled into this test and run as it is.

#[macro_use]
mod support;

#[allow(dead_code)]
#[path = "../examples/embedded.rs"]
mod embedded;

use std::path::Path;
use std::time::{Duration, Instant};

use support::{app, rows, Backend};
use walrust::{Replicator, RestoreOptions, Target, WatchOptions};

fn replicator(b: &Backend) -> Replicator {
    Replicator::new(b.storage())
}

fn restore_latest(r: &Replicator, name: &str, out: &Path) -> Vec<(i64, String)> {
    let opts = RestoreOptions { output: out.to_path_buf(), force: true, target: Target::Latest, write_state: false };
    walrust::restore(r.storage().as_ref(), name, &opts).unwrap();
    rows(out)
}

/// The example application, run through `Replicator::open` with the location string a user would pass.
fn example_application(dir: &Path, b: &Backend) {
    if let Some(endpoint) = &b.endpoint {
        // Replicator::open takes the endpoint from the environment, as the CLI does without --endpoint.
        std::env::set_var("AWS_ENDPOINT_URL_S3", endpoint);
    }
    let s = embedded::run(&b.url, &dir.join("app")).unwrap();
    assert_eq!(s.orders, 100);
    assert_eq!(s.flushes, 10);
    assert_eq!(s.restored_orders, 100, "every flushed order is restorable while replication runs");
    assert!(s.durable_seq >= 10, "one changeset per flushed batch at least: {s:?}");
    assert_eq!(s.verified_objects as u64, s.durable_seq, "a snapshot and one changeset per batch: {s:?}");
}

/// With an upload interval of an hour, only `flush` can ship a commit this soon; after it returns the commit is
/// restorable from storage while the database's loop keeps running.
fn flush_ships_at_once_and_waits_for_storage(dir: &Path, b: &Backend) {
    let db = dir.join("f.db");
    let c = app(&db);
    c.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)").unwrap();
    let r = replicator(b);
    let mut o = WatchOptions::new("f");
    o.sync_interval = Duration::from_secs(3600);
    r.add(&db, o).unwrap();
    let start = r.durable(&db).expect("a started database reports its position");
    // The first commit after start is shipped at once (no upload yet this interval); the next ones wait an hour.
    c.execute("INSERT INTO t(v) VALUES ('first')", []).unwrap();
    let first = r.flush(&db, Duration::from_secs(20)).unwrap();
    assert!(first.seq > start.seq);
    for i in 0..3 {
        c.execute("INSERT INTO t(v) VALUES (?1)", [format!("row {i}")]).unwrap();
        let t = Instant::now();
        let d = r.flush(&db, Duration::from_secs(20)).unwrap();
        assert_eq!(d.seq, first.seq + 1 + i, "one changeset per flush");
        assert!(t.elapsed() < Duration::from_secs(20));
        assert_eq!(restore_latest(&r, "f", &dir.join(format!("r{i}.db"))), rows(&db), "flushed state restorable");
    }
    // Nothing new: a flush returns the same position without uploading.
    let again = r.flush(&db, Duration::from_secs(20)).unwrap();
    assert_eq!(again.seq, first.seq + 3);
    r.shutdown().unwrap();
}

/// `remove` ships what is committed before it returns; `shutdown` does the same for every database.
fn remove_and_shutdown_drain(dir: &Path, b: &Backend) {
    let r = replicator(b);
    let (db1, db2) = (dir.join("one.db"), dir.join("two.db"));
    for db in [&db1, &db2] {
        app(db).execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)").unwrap();
        let mut o = WatchOptions::new(db.file_stem().unwrap().to_str().unwrap());
        o.sync_interval = Duration::from_secs(3600);
        r.add(db, o).unwrap();
    }
    assert_eq!(r.databases().len(), 2);
    assert!(r.add(&db1, WatchOptions::new("other")).is_err(), "a database is added once");
    assert!(r.add(dir.join("x.db"), WatchOptions::new("one")).is_err(), "a name is used once");
    for db in [&db1, &db2] {
        let c = app(db);
        c.execute("INSERT INTO t(v) VALUES ('a')", []).unwrap();
        c.execute("INSERT INTO t(v) VALUES ('b')", []).unwrap();
    }
    r.remove(&db1).unwrap().unwrap();
    assert!(!r.contains(&db1));
    assert_eq!(restore_latest(&r, "one", &dir.join("one-r.db")).len(), 2, "remove drained one.db");
    let storage = std::sync::Arc::clone(r.storage());
    r.shutdown().unwrap();
    let opts = RestoreOptions { output: dir.join("two-r.db"), force: true, target: Target::Latest, write_state: false };
    walrust::restore(storage.as_ref(), "two", &opts).unwrap();
    assert_eq!(rows(&dir.join("two-r.db")).len(), 2, "shutdown drained two.db");
    walrust::verify(storage.as_ref(), "two", Target::Latest).unwrap();
}

/// A flush never hangs: an unknown database is NotFound, and a database whose loop stopped (file deleted) makes
/// a waiting flush fail with the reason; `reap` reports it.
fn flush_fails_fast_when_replication_stopped(dir: &Path, b: &Backend) {
    let r = replicator(b);
    let err = r.flush(dir.join("nope.db"), Duration::from_secs(1)).unwrap_err();
    assert_eq!(err.exit_code(), walrust::error::exit::NOT_FOUND, "{err}");
    let db = dir.join("gone.db");
    app(&db).execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)").unwrap();
    r.add(&db, WatchOptions::new("gone")).unwrap();
    std::fs::remove_file(&db).unwrap();
    let t = Instant::now();
    let mut stopped = None;
    while t.elapsed() < Duration::from_secs(10) {
        match r.flush(&db, Duration::from_secs(10)) {
            Err(e) => {
                stopped = Some(e);
                break;
            }
            Ok(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
    let e = stopped.expect("flush reports the stopped loop");
    assert!(e.to_string().contains("stopped"), "{e}");
    assert!(t.elapsed() < Duration::from_secs(10));
    // The thread ends right after it reported the stop.
    let mut ended = r.reap();
    while ended.is_empty() && t.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(20));
        ended = r.reap();
    }
    assert_eq!(ended.len(), 1);
    assert!(ended[0].result.is_err());
    assert!(r.databases().is_empty());
}

/// An idle database's loop sleeps until its files change (inotify) instead of looking every check interval; a
/// commit after a quiet period is still shipped at once, not at the next idle look (15 s later).
fn a_commit_after_a_quiet_period_is_shipped_at_once(dir: &Path, b: &Backend) {
    let db = dir.join("q.db");
    let c = app(&db);
    c.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)").unwrap();
    let r = replicator(b);
    r.add(&db, WatchOptions::new("q")).unwrap();
    for round in 0..3 {
        std::thread::sleep(Duration::from_secs(4)); // past the 3 s in which the loop keeps looking often
        let before = r.durable(&db).unwrap().seq;
        c.execute("INSERT INTO t(v) VALUES (?1)", [format!("after quiet {round}")]).unwrap();
        let t = Instant::now();
        while r.durable(&db).unwrap().seq == before {
            assert!(
                t.elapsed() < Duration::from_secs(3),
                "round {round}: not shipped {:?} after the commit",
                t.elapsed()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        eprintln!("round {round}: shipped {:?} after the commit", t.elapsed());
        assert!(t.elapsed() < Duration::from_millis(1500), "round {round}: {:?}", t.elapsed());
    }
    assert_eq!(restore_latest(&r, "q", &dir.join("q-out.db")), rows(&db));
    r.shutdown().unwrap();
}

on_both_backends!(
    example_application,
    flush_ships_at_once_and_waits_for_storage,
    remove_and_shutdown_drain,
    flush_fails_fast_when_replication_stopped,
    a_commit_after_a_quiet_period_is_shipped_at_once
);
