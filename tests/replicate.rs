//! Read replicas (`walrust replicate`, `walrust::replicate::Replica`): bootstrap, one LIST per idle poll, whole
//! transactions for readers on open connections, restart without the snapshot, re-bootstrap in place on a new
//! generation, and a corrupt object that stops the replica without touching it. Library tests run on both
//! backends; the end-to-end tests run the real `walrust watch` and `walrust replicate` binaries beside a real
//! Python writer.

#[macro_use]
mod support;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rusqlite::{Connection, OpenFlags};
use walrust::replicate::{position_path, Opened, PollOutcome, Position, Replica, ReplicaOptions};
use walrust::storage::{ListPage, ObjectReader, PutOutcome, Storage, StorageError, StorageRef};
use walrust::watch::{WatchOptions, Watcher};

use support::*;

on_both_backends!(
    idle_poll_is_one_list_and_a_restart_downloads_no_snapshot,
    a_new_generation_rebuilds_the_replica_in_place_under_an_open_reader,
    a_vacuum_on_the_primary_shrinks_the_replica,
    a_corrupt_changeset_stops_the_replica_and_leaves_it_untouched,
    a_chain_break_or_a_gap_rebuilds_the_replica,
    readers_on_open_connections_see_whole_transactions_while_the_primary_writes,
    the_binary_follows_a_new_generation_and_exits_4_on_a_corrupt_object,
    a_config_file_runs_several_replicas_in_one_process,
);

// ---- a storage that records every request ----

#[derive(Debug)]
struct Recording {
    inner: StorageRef,
    log: Mutex<Vec<(&'static str, String)>>,
}

impl Recording {
    fn new(inner: StorageRef) -> Arc<Recording> {
        Arc::new(Recording { inner, log: Mutex::new(Vec::new()) })
    }
    fn take(&self) -> Vec<(&'static str, String)> {
        std::mem::take(&mut *self.log.lock().unwrap())
    }
    fn note(&self, kind: &'static str, key: &str) {
        self.log.lock().unwrap().push((kind, key.to_string()));
    }
}

type SResult<T> = Result<T, StorageError>;

impl Storage for Recording {
    fn put(&self, key: &str, body: &mut dyn Read) -> SResult<()> {
        self.note("put", key);
        self.inner.put(key, body)
    }
    fn put_if_absent(&self, key: &str, body: &mut dyn Read) -> SResult<PutOutcome> {
        self.note("put", key);
        self.inner.put_if_absent(key, body)
    }
    fn get(&self, key: &str) -> SResult<ObjectReader> {
        self.note("get", key);
        self.inner.get(key)
    }
    fn get_range(&self, key: &str, offset: u64, len: u64) -> SResult<ObjectReader> {
        self.note("get", key);
        self.inner.get_range(key, offset, len)
    }
    fn list_page(&self, prefix: &str, start_after: Option<&str>, d: bool, t: Option<&str>) -> SResult<ListPage> {
        self.note("list", prefix);
        self.inner.list_page(prefix, start_after, d, t)
    }
    fn delete_many(&self, keys: &[String]) -> SResult<()> {
        self.note("delete", &keys.join(","));
        self.inner.delete_many(keys)
    }
    fn describe(&self) -> String {
        self.inner.describe()
    }
    fn request_counts(&self) -> walrust::storage::RequestCounts {
        self.inner.request_counts()
    }
}

// ---- a primary driven in process ----

struct Primary {
    db: PathBuf,
    app: Connection,
    watcher: Option<Watcher>,
    storage: StorageRef,
    n: u64,
}

impl Primary {
    fn new(dir: &Path, storage: StorageRef) -> Primary {
        let db = dir.join("app.db");
        let app = app(&db);
        app.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT); INSERT INTO t(v) VALUES ('seed');").unwrap();
        let mut p = Primary { db, app, watcher: None, storage, n: 0 };
        p.start(false);
        p
    }
    fn start(&mut self, new_generation: bool) {
        let mut o = WatchOptions::new("app");
        o.sync_interval = Duration::ZERO;
        o.new_generation = new_generation;
        self.watcher = Some(Watcher::start(&self.db, self.storage.clone(), o).unwrap());
    }
    fn stop(&mut self) {
        if let Some(mut w) = self.watcher.take() {
            w.shutdown().unwrap();
        }
    }
    /// One transaction, then one shipped changeset.
    fn write(&mut self) {
        self.n += 1;
        let n = self.n;
        self.app.execute("INSERT INTO t(v) VALUES (?1)", [format!("row{n}")]).unwrap();
        if n.is_multiple_of(3) {
            self.app.execute("UPDATE t SET v = v || '+' WHERE id % 3 = ?1", [(n % 3) as i64]).unwrap();
        }
        self.ship();
    }
    fn ship(&mut self) {
        self.watcher.as_mut().unwrap().tick(true).unwrap();
    }
    fn generation(&self) -> u64 {
        self.watcher.as_ref().unwrap().generation()
    }
}

fn replica_opts(dir: &Path) -> ReplicaOptions {
    let mut o = ReplicaOptions::new("app", dir.join("replica.db"));
    o.interval = Duration::from_millis(100);
    o
}

fn reader(path: &Path) -> Connection {
    let c = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    c.busy_timeout(Duration::from_secs(5)).unwrap();
    c
}

fn rows_of(c: &Connection) -> Vec<(i64, String)> {
    let mut st = c.prepare("SELECT id, v FROM t ORDER BY id").unwrap();
    st.query_map([], |r| Ok((r.get(0)?, r.get(1)?))).unwrap().collect::<Result<_, _>>().unwrap()
}

fn integrity_of(c: &Connection) -> String {
    c.query_row("PRAGMA integrity_check", [], |r| r.get(0)).unwrap()
}

fn kinds(reqs: &[(&'static str, String)]) -> Vec<&'static str> {
    reqs.iter().map(|r| r.0).collect()
}

fn is_snapshot_key(key: &str) -> bool {
    key.contains("-b-") || key.contains("-s-")
}

// ---- library tests, both backends ----

fn idle_poll_is_one_list_and_a_restart_downloads_no_snapshot(dir: &Path, b: &Backend) {
    let backend = b.storage();
    let mut p = Primary::new(dir, backend.clone());
    for _ in 0..3 {
        p.write();
    }
    let rec = Recording::new(backend.clone());
    let mut r = Replica::open(rec.clone(), replica_opts(dir)).unwrap();
    assert_eq!(r.opened(), &Opened::Bootstrapped);
    let boot = rec.take();
    assert!(boot.iter().any(|(k, key)| *k == "get" && key.contains("-b-")), "bootstrap reads the base: {boot:?}");
    let local = dir.join("replica.db");
    assert_eq!(rows(&local), rows(&p.db));

    // Idle: exactly one request, a LIST, and the HTTP counters agree where the backend counts.
    for _ in 0..3 {
        let before = backend.request_counts();
        assert_eq!(r.poll_once().unwrap(), PollOutcome::Idle);
        assert_eq!(kinds(&rec.take()), vec!["list"], "an idle poll is one LIST");
        let after = backend.request_counts();
        if after.total() > 0 {
            assert_eq!(after.total() - before.total(), 1, "one HTTP request: {before:?} -> {after:?}");
            assert_eq!(after.list - before.list, 1);
        }
    }

    // New changesets: one LIST, one GET each, applied in order.
    for _ in 0..4 {
        p.write();
    }
    let seq = p.watcher.as_ref().unwrap().seq();
    assert_eq!(r.poll_once().unwrap(), PollOutcome::Applied { changesets: 4, seq });
    let reqs = rec.take();
    assert_eq!(kinds(&reqs), vec!["list", "get", "get", "get", "get"], "{reqs:?}");
    assert!(reqs.iter().skip(1).all(|(_, k)| k.contains("-c-")), "only changesets are read: {reqs:?}");
    assert_eq!(rows(&local), rows(&p.db));
    assert_eq!(r.poll_once().unwrap(), PollOutcome::Idle);
    rec.take();
    // A snapshot of the state the replica already holds is passed over without a GET, once.
    p.watcher.as_mut().unwrap().snapshot_now().unwrap();
    for _ in 0..2 {
        assert_eq!(r.poll_once().unwrap(), PollOutcome::Idle);
        assert_eq!(kinds(&rec.take()), vec!["list"]);
    }
    assert!(r.position().cursor.contains("-s-"), "the cursor moved past it: {}", r.position().cursor);

    // Restart: no request to open, then only the new changesets.
    drop(r);
    for _ in 0..2 {
        p.write();
    }
    let mut r = Replica::open(rec.clone(), replica_opts(dir)).unwrap();
    assert_eq!(r.opened(), &Opened::Resumed);
    assert!(rec.take().is_empty(), "resuming sends no request");
    assert!(matches!(r.poll_once().unwrap(), PollOutcome::Applied { changesets: 2, .. }));
    let reqs = rec.take();
    assert_eq!(kinds(&reqs), vec!["list", "get", "get"], "{reqs:?}");
    assert!(!reqs.iter().any(|(_, k)| is_snapshot_key(k)), "no snapshot downloaded again: {reqs:?}");
    assert_eq!(rows(&local), rows(&p.db));
    let pos = Position::load(&position_path(&local)).unwrap().unwrap();
    assert_eq!((pos.generation, pos.seq), (p.generation(), p.watcher.as_ref().unwrap().seq()));

    // A second replicate of the same file is refused (fencing), without touching it.
    let e = Replica::open(rec.clone(), replica_opts(dir)).unwrap_err();
    assert_eq!(e.exit_code(), 5, "{e}");
    drop(r);

    // An application writing to the replica: detected at the next poll, rebuilt.
    let mut r = Replica::open(rec.clone(), replica_opts(dir)).unwrap();
    assert_eq!(r.poll_once().unwrap(), PollOutcome::Idle);
    app(&local).execute("INSERT INTO t(v) VALUES ('written on the replica')", []).unwrap();
    match r.poll_once().unwrap() {
        PollOutcome::Rebootstrapped { reason, .. } => assert!(reason.contains("another connection"), "{reason}"),
        other => panic!("expected a re-bootstrap, got {other:?}"),
    }
    assert_eq!(rows(&local), rows(&p.db));
    assert_eq!(r.poll_once().unwrap(), PollOutcome::Idle);
    drop(r);

    // A lost position file: rebuilt in place, not trusted blindly.
    std::fs::remove_file(position_path(&local)).unwrap();
    p.write();
    let r = Replica::open(rec.clone(), replica_opts(dir)).unwrap();
    assert!(matches!(r.opened(), Opened::Rebootstrapped(why) if why.contains("position")), "{:?}", r.opened());
    assert_eq!(rows(&local), rows(&p.db));
    p.stop();
}

fn a_new_generation_rebuilds_the_replica_in_place_under_an_open_reader(dir: &Path, b: &Backend) {
    let s = b.storage();
    let mut p = Primary::new(dir, s.clone());
    for _ in 0..5 {
        p.write();
    }
    let mut r = Replica::open(s.clone(), replica_opts(dir)).unwrap();
    let local = dir.join("replica.db");
    let ino = std::fs::metadata(&local).map(|m| std::os::unix::fs::MetadataExt::ino(&m)).unwrap();
    let rd = reader(&local);
    assert_eq!(rows_of(&rd), rows(&p.db));
    let first = p.generation();

    // The application restarts the WAL while walrust is down: continuity cannot be proven, a new generation.
    p.stop();
    p.app.execute("INSERT INTO t(v) VALUES ('while-down')", []).unwrap();
    p.app.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(())).unwrap();
    p.app.execute_batch("CREATE TABLE extra(x); INSERT INTO extra VALUES (1);").unwrap();
    p.start(false);
    assert!(p.generation() > first, "the primary started a new generation");
    p.write();

    match r.poll_once().unwrap() {
        PollOutcome::Rebootstrapped { reason, generation, .. } => {
            assert!(reason.contains("generation"), "{reason}");
            assert_eq!(generation, p.generation());
        }
        other => panic!("expected a re-bootstrap, got {other:?}"),
    }
    // The same reader connection, never reopened, sees the new generation's content and schema.
    assert_eq!(rows_of(&rd), rows(&p.db));
    let x: i64 = rd.query_row("SELECT x FROM extra", [], |r| r.get(0)).unwrap();
    assert_eq!(x, 1);
    assert_eq!(integrity_of(&rd), "ok");
    let ino2 = std::fs::metadata(&local).map(|m| std::os::unix::fs::MetadataExt::ino(&m)).unwrap();
    assert_eq!(ino, ino2, "rebuilt in place, not renamed under the reader");
    // And it follows the new generation's changesets.
    p.write();
    assert!(matches!(r.poll_once().unwrap(), PollOutcome::Applied { changesets: 1, .. }));
    assert_eq!(rows_of(&rd), rows(&p.db));
    assert_eq!(r.poll_once().unwrap(), PollOutcome::Idle);
    p.stop();
}

fn a_vacuum_on_the_primary_shrinks_the_replica(dir: &Path, b: &Backend) {
    let s = b.storage();
    let mut p = Primary::new(dir, s.clone());
    p.app.execute_batch("CREATE TABLE big(b BLOB);").unwrap();
    for _ in 0..40 {
        p.app.execute("INSERT INTO big VALUES (randomblob(20000))", []).unwrap();
    }
    p.ship();
    let mut r = Replica::open(s.clone(), replica_opts(dir)).unwrap();
    let local = dir.join("replica.db");
    let rd = reader(&local);
    let pages = |c: &Connection| -> i64 { c.query_row("PRAGMA page_count", [], |r| r.get(0)).unwrap() };
    let big = pages(&rd);
    assert_eq!(big, pages(&p.app));
    p.app.execute_batch("DELETE FROM big; VACUUM;").unwrap();
    p.write();
    let small = pages(&p.app);
    assert!(small * 4 < big, "the primary shrank: {big} -> {small} pages");
    assert!(matches!(r.poll_once().unwrap(), PollOutcome::Applied { .. }));
    assert_eq!(pages(&rd), small, "the replica shrank too");
    // Also on disk: once checkpointed, the file holds exactly those pages (not the old tail beyond the header's size).
    let ck = Connection::open(&local).unwrap();
    let (busy, ..): (i64, i64, i64) =
        ck.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?))).unwrap();
    assert_eq!(busy, 0, "checkpointed");
    drop(ck);
    assert_eq!(std::fs::metadata(&local).unwrap().len(), small as u64 * 4096, "the file was truncated");
    // (A checkpoint that resets the WAL looks to the replica like another connection's write: reopen it.)
    drop(r);
    let mut r = Replica::open(s.clone(), replica_opts(dir)).unwrap();
    assert_eq!(r.opened(), &Opened::Resumed);
    assert_eq!(integrity_of(&rd), "ok");
    assert_eq!(rows_of(&rd), rows(&p.db));
    let n: i64 = rd.query_row("SELECT count(*) FROM big", [], |r| r.get(0)).unwrap();
    assert_eq!(n, 0);
    // Grows again.
    for _ in 0..10 {
        p.app.execute("INSERT INTO big VALUES (randomblob(20000))", []).unwrap();
    }
    p.ship();
    assert!(matches!(r.poll_once().unwrap(), PollOutcome::Applied { .. }));
    assert_eq!(pages(&rd), pages(&p.app));
    assert_eq!(integrity_of(&rd), "ok");
    p.stop();
}

fn a_chain_break_or_a_gap_rebuilds_the_replica(dir: &Path, b: &Backend) {
    let s = b.storage();
    let mut p = Primary::new(dir, s.clone());
    p.write();
    let local = dir.join("replica.db");
    drop(Replica::open(s.clone(), replica_opts(dir)).unwrap());
    // The position's chain value no longer matches what the next changeset continues.
    let pp = position_path(&local);
    let mut pos = Position::load(&pp).unwrap().unwrap();
    pos.chain ^= 1;
    pos.save(&pp).unwrap();
    let mut r = Replica::open(s.clone(), replica_opts(dir)).unwrap();
    assert_eq!(r.opened(), &Opened::Resumed);
    p.write();
    match r.poll_once().unwrap() {
        PollOutcome::Rebootstrapped { reason, .. } => assert!(reason.contains("chain broken"), "{reason}"),
        other => panic!("expected a re-bootstrap, got {other:?}"),
    }
    assert_eq!(rows(&local), rows(&p.db));
    assert_eq!(r.poll_once().unwrap(), PollOutcome::Idle);
    // A changeset missing from the middle of the stream (say, deleted by hand).
    p.write();
    p.write();
    p.write();
    let mut cs: Vec<String> = b.keys("app").into_iter().filter(|k| k.contains("-c-")).collect();
    cs.sort();
    let gone = cs[cs.len() - 2].clone();
    s.delete_many(std::slice::from_ref(&gone)).unwrap();
    let before = r.position().seq;
    // Nothing restores past the gap: the replica applies what it can and stops as corrupt (exit 4).
    let e = r.poll_once().unwrap_err();
    assert_eq!(e.exit_code(), 4, "{e}");
    assert!(e.to_string().contains("missing"), "{e}");
    assert_eq!(r.position().seq, before + 1, "the changeset before the gap was applied");
    // A snapshot after the gap (as compaction leaves it): the replica rebuilds from it.
    p.watcher.as_mut().unwrap().snapshot_now().unwrap();
    match r.poll_once().unwrap() {
        PollOutcome::Rebootstrapped { reason, .. } => {
            assert!(reason.contains(&format!("seq {} is missing", before + 2)), "{reason}")
        }
        other => panic!("expected a re-bootstrap, got {other:?}"),
    }
    assert_eq!(rows(&local), rows(&p.db));
    p.stop();
}

fn read_bytes(p: &Path) -> Option<Vec<u8>> {
    std::fs::read(p).ok()
}

fn sidecar(p: &Path, suffix: &str) -> PathBuf {
    let mut s = p.as_os_str().to_os_string();
    s.push(suffix);
    PathBuf::from(s)
}

fn flip_byte(s: &StorageRef, key: &str, at: usize) -> Vec<u8> {
    let mut bytes = Vec::new();
    s.get(key).unwrap().read_to_end(&mut bytes).unwrap();
    let mut bad = bytes.clone();
    let i = at % bad.len();
    bad[i] ^= 0x40;
    s.put(key, &mut &bad[..]).unwrap();
    bytes
}

fn newest_changeset(b: &Backend) -> String {
    b.keys("app").into_iter().filter(|k| k.contains("-c-")).max().unwrap()
}

fn a_corrupt_changeset_stops_the_replica_and_leaves_it_untouched(dir: &Path, b: &Backend) {
    let s = b.storage();
    let mut p = Primary::new(dir, s.clone());
    p.write();
    let mut r = Replica::open(s.clone(), replica_opts(dir)).unwrap();
    let local = dir.join("replica.db");
    p.app.execute_batch("CREATE TABLE more(b BLOB);").unwrap();
    p.ship();
    assert!(matches!(r.poll_once().unwrap(), PollOutcome::Applied { .. }));
    // A byte flipped near the start (zstd header), in the middle, and near the end (the hash only fails at the end
    // of the stream, after every page was written into the open transaction).
    for (round, at) in [7usize, 2000, usize::MAX - 1].into_iter().enumerate() {
        let before_rows = rows(&local);
        let before_pos = r.position().clone();
        for _ in 0..3 {
            p.app.execute("INSERT INTO more VALUES (randomblob(3000))", []).unwrap();
        }
        p.ship();
        let key = newest_changeset(b);
        let files = [read_bytes(&local), read_bytes(&sidecar(&local, "-wal"))];
        let good = flip_byte(&s, &key, if at == usize::MAX - 1 { good_len(&s, &key) - 3 } else { at });
        let e = r.poll_once().unwrap_err();
        assert_eq!(e.exit_code(), 4, "round {round}: {e}");
        assert!(e.to_string().contains(key.rsplit('/').next().unwrap()), "the error names the object: {e}");
        assert_eq!(
            [read_bytes(&local), read_bytes(&sidecar(&local, "-wal"))],
            files,
            "round {round}: the replica's files are byte for byte unchanged"
        );
        assert_eq!(r.position(), &before_pos, "the position did not move");
        assert_eq!(rows(&local), before_rows);
        // Repaired: it catches up.
        s.put(&key, &mut &good[..]).unwrap();
        assert!(matches!(r.poll_once().unwrap(), PollOutcome::Applied { changesets: 1, .. }));
        assert_eq!(rows(&local), rows(&p.db));
    }
    p.stop();
}

fn good_len(s: &StorageRef, key: &str) -> usize {
    let mut bytes = Vec::new();
    s.get(key).unwrap().read_to_end(&mut bytes).unwrap();
    bytes.len()
}

// ---- end to end: the real binaries ----

fn spawn_replicate(b: &Backend, local: &Path, interval: &str, log: &Path) -> Child {
    let log = std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap();
    command(walrust_bin())
        .args(["replicate", "app"])
        .args(b.args())
        .arg("--local")
        .arg(local)
        .args(["--interval", interval])
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap()
}

fn wait_for(what: &str, secs: u64, mut f: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < Duration::from_secs(secs), "timed out after {secs}s waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
    start.elapsed()
}

/// (generation, seq) of the newest restore point in the bucket.
fn remote_head(b: &Backend) -> (u64, u64) {
    let h = walrust::remote::head(b.storage().as_ref(), "app").unwrap().unwrap();
    (h.generation, h.last.key.seq)
}

fn replica_at(local: &Path) -> Option<(u64, u64)> {
    Position::load(&position_path(local)).ok().flatten().map(|p| (p.generation, p.seq))
}

fn seed(dir: &Path) -> PathBuf {
    let db = dir.join("app.db");
    let o = workload(&db, &["--txns", "20", "--seed", "99"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    db
}

fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _)
        if matches!(f.code, rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked))
}

fn readers_on_open_connections_see_whole_transactions_while_the_primary_writes(dir: &Path, b: &Backend) {
    const INTERVAL_MS: u64 = 500;
    let db = seed(dir);
    // Transfers between two accounts (the sum never changes) and an append-only tick per transaction, written
    // beside the random workload (whose schema changes touch tables named t*): a reader seeing half a
    // transaction, or going back in time, is caught.
    let a = app(&db);
    a.execute_batch(
        "CREATE TABLE clock(id INTEGER PRIMARY KEY AUTOINCREMENT, at INTEGER);
         CREATE TABLE acct(id INTEGER PRIMARY KEY, bal INTEGER);
         INSERT INTO acct VALUES (1, 1000), (2, 0);",
    )
    .unwrap();
    let wlog = dir.join("watch.log");
    let rlog = dir.join("replicate.log");
    let mut watch = Proc(Some(spawn_watch(&db, b, &[], &wlog)));
    wait_for("the base snapshot", 30, || b.keys("app").iter().any(|k| k.contains("-b-")));
    let local = dir.join("replica.db");
    let mut replicate = Proc(Some(spawn_replicate(b, &local, &format!("{INTERVAL_MS}ms"), &rlog)));
    wait_for("the bootstrap", 30, || replica_at(&local).is_some());

    let writing = AtomicBool::new(true);
    let reading = AtomicBool::new(true);
    let ticks = AtomicU64::new(0);
    let seen = AtomicU64::new(0);
    let (queries, busy, max_seen) = std::thread::scope(|s| {
        // A failed assertion below must not leave the threads looping (the scope would never end).
        let _stop = StopOnDrop(&[&writing, &reading]);
        let reader = s.spawn(|| {
            let c = reader(&local); // opened once, never reopened
            let (mut queries, mut busy, mut last) = (0u64, 0u64, 0i64);
            while reading.load(Ordering::Relaxed) {
                let r = (|| -> rusqlite::Result<(i64, i64, String)> {
                    c.execute_batch("BEGIN")?;
                    let n: i64 = c.query_row("SELECT count(*) FROM clock", [], |r| r.get(0))?;
                    let sum: i64 = c.query_row("SELECT sum(bal) FROM acct", [], |r| r.get(0))?;
                    let ok: String = c.query_row("PRAGMA integrity_check", [], |r| r.get(0))?;
                    c.execute_batch("COMMIT")?;
                    Ok((n, sum, ok))
                })();
                match r {
                    Ok((n, sum, ok)) => {
                        assert_eq!(ok, "ok", "integrity_check on the replica after {queries} queries");
                        assert_eq!(sum, 1000, "a transfer is seen whole or not at all (ticks {n})");
                        assert!(n >= last, "row counts never go backwards: {last} -> {n}");
                        last = n;
                        seen.store(n as u64, Ordering::Relaxed);
                        queries += 1;
                    }
                    Err(e) if is_busy(&e) => {
                        let _ = c.execute_batch("ROLLBACK");
                        busy += 1;
                    }
                    Err(e) => panic!("a reader query failed: {e}"),
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            (queries, busy, last)
        });
        let ticker = s.spawn(|| {
            let c = app(&db);
            while writing.load(Ordering::Relaxed) {
                c.execute_batch(
                    "BEGIN IMMEDIATE;
                     INSERT INTO clock(at) VALUES (unixepoch('subsec') * 1000);
                     UPDATE acct SET bal = bal - 1 WHERE id = 1;
                     UPDATE acct SET bal = bal + 1 WHERE id = 2;
                     COMMIT;",
                )
                .unwrap();
                ticks.fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(3));
            }
        });
        let w = spawn_workload(&db, &["--txns", "3000", "--seed", "21", "--vacuum-every", "1000", "--pause-ms", "1"]);
        let out = w.wait_with_output().unwrap();
        assert!(out.status.success(), "workload: {}", String::from_utf8_lossy(&out.stderr));
        writing.store(false, Ordering::Relaxed);
        ticker.join().unwrap(); // its last transaction is committed before watch is asked to drain
        assert_eq!(watch.stop(), 0, "watch exits 0\n{}", log_text(&wlog));
        // Everything committed is in the bucket now: the replica must hold it within two poll intervals.
        let head = remote_head(b);
        let took = wait_for("the replica to catch up", 30, || replica_at(&local) == Some(head));
        eprintln!("caught up {took:?} after the primary's last upload (interval {INTERVAL_MS} ms)");
        assert!(
            took <= Duration::from_millis(2 * INTERVAL_MS + 300),
            "caught up in {took:?}, more than two poll intervals\n{}",
            log_text(&rlog)
        );
        // The reader (one query every 200 ms plus an integrity_check) sees the last transaction soon after.
        let total = ticks.load(Ordering::Relaxed);
        wait_for("the open reader to see every transaction", 20, || seen.load(Ordering::Relaxed) == total);
        reading.store(false, Ordering::Relaxed);
        reader.join().unwrap()
    });
    let total = ticks.load(Ordering::Relaxed);
    eprintln!("reader: {queries} queries, {busy} busy, last saw {max_seen} of {total} ticks");
    assert!(total > 20, "the ticker ran: {total}");
    assert!(queries >= 10, "the reader queried throughout: {queries}");
    assert_eq!(max_seen as u64, total, "the open reader ends up seeing every transaction");
    assert_eq!(digest(&local), digest(&db), "the replica equals the primary");
    assert_eq!(replicate.stop(), 0, "replicate exits 0 on SIGTERM\n{}", log_text(&rlog));
    // (watch sometimes starts a new generation under this load; the replica then rebuilt in place under the
    // reader, which the checks above covered as well.)
    let rebuilds = log_text(&rlog).matches("re-bootstrapping").count();
    eprintln!("re-bootstraps during the run: {rebuilds}");
}

fn the_binary_follows_a_new_generation_and_exits_4_on_a_corrupt_object(dir: &Path, b: &Backend) {
    let db = seed(dir);
    let wlog = dir.join("watch.log");
    let rlog = dir.join("replicate.log");
    let mut watch = Proc(Some(spawn_watch(&db, b, &[], &wlog)));
    wait_for("the base snapshot", 30, || b.keys("app").iter().any(|k| k.contains("-b-")));
    let local = dir.join("replica.db");
    let mut replicate = Proc(Some(spawn_replicate(b, &local, "200ms", &rlog)));
    wait_for("the bootstrap", 30, || replica_at(&local).is_some());
    let rd = reader(&local);
    let count = |c: &Connection| -> i64 { c.query_row("SELECT count(*) FROM main_rows", [], |r| r.get(0)).unwrap() };
    let o = workload(&db, &["--txns", "100", "--seed", "31"]);
    assert!(o.status.success());
    assert_eq!(watch.stop(), 0, "{}", log_text(&wlog));
    let first = remote_head(b);
    wait_for("the replica to catch up", 30, || replica_at(&local) == Some(first));
    assert_eq!(count(&rd), count(&app(&db)));

    // The application truncates its WAL while watch is down: the next watch starts a new generation.
    let o = workload(&db, &["--txns", "60", "--seed", "32", "--truncate-every", "20"]);
    assert!(o.status.success());
    let mut watch = Proc(Some(spawn_watch(&db, b, &[], &wlog)));
    let o = workload(&db, &["--txns", "40", "--seed", "33"]);
    assert!(o.status.success());
    assert_eq!(watch.stop(), 0, "{}", log_text(&wlog));
    let second = remote_head(b);
    assert!(second.0 > first.0, "a new generation: {first:?} -> {second:?}\n{}", log_text(&wlog));
    wait_for("the replica to follow the new generation", 30, || replica_at(&local) == Some(second));
    let text = log_text(&rlog);
    assert!(
        text.contains("re-bootstrapping") && text.contains(&format!("generation {:016x} appeared", second.0)),
        "the rebuild is logged with its reason:\n{text}"
    );
    assert_eq!(count(&rd), count(&app(&db)), "the reader, still open, sees the new generation");
    assert_eq!(digest(&local), digest(&db));
    assert_eq!(replicate.stop(), 0, "{}", log_text(&rlog));

    // A corrupt changeset: exit 4 naming it, the replica's files byte for byte as they were.
    let files = [read_bytes(&local), read_bytes(&sidecar(&local, "-wal"))];
    let pos = std::fs::read(position_path(&local)).unwrap();
    let mut watch = Proc(Some(spawn_watch(&db, b, &[], &wlog)));
    let o = workload(&db, &["--txns", "10", "--seed", "34"]);
    assert!(o.status.success());
    assert_eq!(watch.stop(), 0, "{}", log_text(&wlog));
    let key = newest_changeset(b);
    let s = b.storage();
    flip_byte(&s, &key, 1234);
    let mut args = vec!["replicate", "app", "--local", local.to_str().unwrap(), "--interval", "100ms"];
    let bargs = b.args();
    args.extend(bargs.iter().map(String::as_str));
    let out = walrust(&args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "a corrupt object is exit 4: {err}");
    let last = err.trim().lines().last().unwrap_or_default();
    assert!(last.contains(key.rsplit('/').next().unwrap()), "the error names the object: {err}");
    assert_eq!([read_bytes(&local), read_bytes(&sidecar(&local, "-wal"))], files, "the replica is untouched");
    assert_eq!(std::fs::read(position_path(&local)).unwrap(), pos, "the position is untouched");
    drop(rd);
}

/// Clears the flags when dropped (also while unwinding from a failed assertion).
struct StopOnDrop<'a>(&'a [&'a AtomicBool]);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        for f in self.0 {
            f.store(false, Ordering::Relaxed);
        }
    }
}

/// A child process that is killed if the test fails before stopping it.
struct Proc(Option<Child>);

impl Proc {
    /// SIGTERM, then the exit code.
    fn stop(&mut self) -> i32 {
        stop(self.0.take().expect("running"), 30)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// `[[replicas]]`: two databases followed by one process; the URL form `BUCKET/NAME` too.
fn a_config_file_runs_several_replicas_in_one_process(dir: &Path, b: &Backend) {
    let s = b.storage();
    let names = ["one", "two"];
    let cfg = dir.join("walrust.toml");
    let mut text = format!("[s3]\nbucket = \"{}\"\n", b.url);
    if let Some(e) = &b.endpoint {
        text.push_str(&format!("endpoint = \"{e}\"\n"));
    }
    for name in names {
        let local = dir.join(format!("{name}-replica.db"));
        text.push_str(&format!(
            "\n[[replicas]]\nname = \"{name}\"\nlocal = \"{}\"\ninterval = \"100ms\"\n",
            local.display()
        ));
    }
    std::fs::write(&cfg, text).unwrap();
    // Started before the primaries have any backup: the replicas wait for one.
    let log = dir.join("replicate.log");
    let logf = std::fs::File::create(&log).unwrap();
    let mut p = Proc(Some(
        command(walrust_bin())
            .args(["replicate", "--config"])
            .arg(&cfg)
            .stdout(Stdio::null())
            .stderr(logf)
            .spawn()
            .unwrap(),
    ));
    std::thread::sleep(Duration::from_millis(300));
    assert!(p.0.as_mut().unwrap().try_wait().unwrap().is_none(), "still waiting: {}", log_text(&log));
    let mut dbs = Vec::new();
    for name in names {
        let db = dir.join(format!("{name}.db"));
        let a = app(&db);
        a.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT); INSERT INTO t(v) VALUES ('seed');").unwrap();
        let mut o = WatchOptions::new(name);
        o.sync_interval = Duration::ZERO;
        let w = Watcher::start(&db, s.clone(), o).unwrap();
        dbs.push((name, db, a, w));
    }
    for round in 0..3 {
        for (_, _, a, w) in dbs.iter_mut() {
            a.execute("INSERT INTO t(v) VALUES (?1)", [format!("round {round}")]).unwrap();
            w.tick(true).unwrap();
        }
        for (name, db, _, w) in &dbs {
            let local = dir.join(format!("{name}-replica.db"));
            let want = (w.generation(), w.seq());
            wait_for(&format!("replica {name} at {want:?}"), 30, || replica_at(&local) == Some(want));
            assert_eq!(rows(&local), rows(db), "{name}");
        }
    }
    assert_eq!(p.stop(), 0, "{}", log_text(&log));
    // One database by URL: s3://BUCKET/PREFIX/NAME (here the same location plus /one).
    let url = format!("{}/one", b.url.trim_end_matches('/'));
    let local = dir.join("by-url.db");
    let mut args = vec!["replicate".to_string(), url, "--local".into(), local.display().to_string()];
    if let Some(e) = &b.endpoint {
        args.extend(["--endpoint".to_string(), e.clone()]);
    }
    let logf = std::fs::File::create(&log).unwrap();
    let mut p = Proc(Some(command(walrust_bin()).args(&args).stdout(Stdio::null()).stderr(logf).spawn().unwrap()));
    wait_for("the replica by URL", 30, || replica_at(&local).is_some());
    assert_eq!(rows(&local), rows(&dbs[0].1));
    assert_eq!(p.stop(), 0, "{}", log_text(&log));
    for (_, _, _, mut w) in dbs {
        w.shutdown().unwrap();
    }
}
