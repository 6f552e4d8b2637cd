//! The read-mark-0 window (FIELD-NOTES.md): an application that checkpoints with TRUNCATE and restarts the WAL
//! between two of walrust's polls must not make walrust lose a transaction or start a new generation.
//!
//! The application runs in this process through its own connections (SQLite locks between connections of one
//! process behave as between processes for WAL read marks); walrust's loop is driven tick by tick so that the
//! application gets to act exactly in the window.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rusqlite::Connection;
use walrust::restore::{restore, RestoreOptions, Target};
use walrust::storage::{faulty::Faulty, local::LocalStorage, StorageRef};
use walrust::watch::{WatchOptions, Watcher};

fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("walrust-pin-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn app(db: &Path) -> Connection {
    let c = Connection::open(db).unwrap();
    c.execute_batch("PRAGMA journal_mode=WAL; PRAGMA wal_autocheckpoint=0; PRAGMA busy_timeout=100").unwrap();
    c
}

fn rows(db: &Path) -> Vec<(i64, String)> {
    let c = Connection::open(db).unwrap();
    let mut st = c.prepare("SELECT id, v FROM t ORDER BY id").unwrap();
    st.query_map([], |r| Ok((r.get(0)?, r.get(1)?))).unwrap().collect::<Result<_, _>>().unwrap()
}

fn opts() -> WatchOptions {
    let mut o = WatchOptions::new("app");
    o.sync_interval = std::time::Duration::ZERO;
    // Checkpoint after every shipped changeset, so that walrust's pin often lands on read mark 0 and the
    // application's next write restarts the WAL: the window is exercised on every round.
    o.checkpoint_frames = 1;
    o
}

/// What every test here starts from: a database with table `t` and one row, the application's connection to
/// it, and a local backup beside it.
struct Fixture {
    dir: PathBuf,
    db: PathBuf,
    app: Connection,
    storage: StorageRef,
}

impl Fixture {
    fn new(tag: &str) -> Fixture {
        Fixture::with_storage(tag, |backup| Arc::new(LocalStorage::open(backup, true).unwrap()))
    }

    fn with_storage(tag: &str, storage: impl FnOnce(&Path) -> StorageRef) -> Fixture {
        let dir = temp_dir(tag);
        let db = dir.join("app.db");
        let app = app(&db);
        app.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT); INSERT INTO t(v) VALUES ('seed');").unwrap();
        let storage = storage(&dir.join("backup"));
        Fixture { dir, db, app, storage }
    }

    /// The fixture over a local backup behind [`Faulty`], and that wrapper, to fail on command.
    fn faulty(tag: &str) -> (Fixture, Arc<Faulty<LocalStorage>>) {
        let mut faulty = None;
        let f = Fixture::with_storage(tag, |backup| {
            let s = Arc::new(Faulty::new(LocalStorage::open(backup, true).unwrap()));
            faulty = Some(s.clone());
            s as StorageRef
        });
        (f, faulty.unwrap())
    }

    fn watcher(&self, opts: WatchOptions) -> Watcher {
        Watcher::start(&self.db, self.storage.clone(), opts).unwrap()
    }

    /// A first watcher ships the row 'one' and shuts down cleanly.
    fn ship_one_and_shut_down(&self) {
        let mut w = self.watcher(opts());
        self.app.execute("INSERT INTO t(v) VALUES ('one')", []).unwrap();
        w.tick(true).unwrap();
        w.shutdown().unwrap();
    }

    /// While walrust is down the application writes `first`, checkpoints everything (TRUNCATE), and writes
    /// `then`, which restarts the WAL: continuity with what was shipped cannot be read from the WAL any more.
    fn restart_wal_while_down(&self, first: &str, then: &str) {
        self.app.execute("INSERT INTO t(v) VALUES (?1)", [first]).unwrap();
        self.app.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(())).unwrap();
        self.app.execute("INSERT INTO t(v) VALUES (?1)", [then]).unwrap();
    }

    /// The rows of the latest restore from the backup (into its own file, named by `tag`).
    fn restored(&self, tag: &str) -> Vec<(i64, String)> {
        let out = self.dir.join(format!("out-{tag}.db"));
        let o = RestoreOptions { output: out.clone(), force: false, target: Target::Latest, write_state: false };
        restore(self.storage.as_ref(), "app", &o).unwrap();
        rows(&out)
    }

    /// The latest restore equals the database; the test's files are removed.
    fn assert_restores_to_source(self) -> Vec<(i64, String)> {
        let got = self.restored("final");
        assert_eq!(got, rows(&self.db));
        std::fs::remove_dir_all(&self.dir).unwrap();
        got
    }
}

#[test]
fn truncate_checkpoints_between_polls_lose_nothing() {
    let f = Fixture::new("truncate");
    let a = &f.app;
    // Fully backfilled WAL: walrust's first pin lands on read mark 0, the dangerous case.
    a.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(())).unwrap();

    let mut w = f.watcher(opts());
    assert_eq!(w.stats.generations_started, 1);

    for round in 0..40 {
        // The application: a transaction, a TRUNCATE checkpoint (which would restart the WAL), another
        // transaction, all before walrust looks again.
        a.execute("INSERT INTO t(v) VALUES (?1)", [format!("a{round}")]).unwrap();
        let _ = a.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
        a.execute("INSERT INTO t(v) VALUES (?1)", [format!("b{round}")]).unwrap();
        let _ = a.query_row("PRAGMA wal_checkpoint(RESTART)", [], |_| Ok(()));
        if round % 3 == 0 {
            a.execute("UPDATE t SET v = v || '!' WHERE id % 5 = ?1", [round % 5]).unwrap();
        }
        w.tick(true).unwrap();
    }
    w.tick(true).unwrap();
    assert_eq!(w.stats.generations_started, 1, "the chain must follow every restart, not start over");
    drop(w);

    assert_eq!(f.assert_restores_to_source().len(), 81);
}

/// SQLite writes the WAL header's checkpoint sequence from a per-connection counter (and a connection that never
/// restarted the WAL writes 0 and new random salts), so with several writer connections the header of a restarted
/// WAL carries no +1 sequence. walrust follows a restart on the strength of its pin alone: two writers taking turns
/// to restart the WAL must not start new generations, and nothing is lost.
#[test]
fn restarts_by_different_connections_are_followed() {
    let f = Fixture::new("two-writers");
    let a = &f.app;
    let mut w = f.watcher(opts());
    let mut headers = std::collections::BTreeSet::new();
    for round in 0..30 {
        // A fresh connection each round: it never restarted the WAL itself, so its counter is 0.
        let b = app(&f.db);
        let (first, second) = if round % 2 == 0 { (a, &b) } else { (&b, a) };
        first.execute("INSERT INTO t(v) VALUES (?1)", [format!("x{round}")]).unwrap();
        w.tick(true).unwrap();
        let _ = first.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
        second.execute("INSERT INTO t(v) VALUES (?1)", [format!("y{round}")]).unwrap();
        let wal = std::fs::read(f.dir.join("app.db-wal")).unwrap();
        headers.insert(wal[12..16].to_vec());
        w.tick(true).unwrap();
    }
    assert!(headers.len() > 1, "the restarts were made by different connections");
    assert_eq!(w.stats.generations_started, 1, "every restart was followed");
    drop(w);
    assert_eq!(f.assert_restores_to_source().len(), 61);
}

#[test]
fn restart_with_intact_wal_resumes_without_snapshot() {
    let f = Fixture::new("resume");
    let a = &f.app;
    f.ship_one_and_shut_down();
    // Written while walrust is down: walrust had checkpointed, so this write restarts the WAL.
    a.execute("INSERT INTO t(v) VALUES ('two')", []).unwrap();
    let objects_before = walrust::storage::list_all(f.storage.as_ref(), "", None).unwrap();
    let mut w = f.watcher(opts());
    assert_eq!(w.stats.generations_started, 0, "resumed, no new generation");
    assert_eq!(w.stats.snapshots, 0, "resumed, no snapshot");
    w.tick(true).unwrap();
    let objects_after = walrust::storage::list_all(f.storage.as_ref(), "", None).unwrap();
    assert_eq!(objects_after.len(), objects_before.len() + 1, "the startup sync shipped 'two' as one changeset");
    assert!(objects_after.iter().filter(|o| o.key.contains("-b-") || o.key.contains("-s-")).count() == 1);
    drop(w);
    f.assert_restores_to_source();
}

#[test]
fn wal_restart_while_down_starts_a_new_generation() {
    let f = Fixture::new("down");
    let a = &f.app;
    {
        let mut w = f.watcher(opts());
        a.execute("INSERT INTO t(v) VALUES ('one')", []).unwrap();
        w.tick(true).unwrap();
    }
    f.restart_wal_while_down("lost-from-wal", "after");
    let mut w = f.watcher(opts());
    assert_eq!(w.stats.generations_started, 1, "continuity cannot be proven: new generation");
    w.tick(true).unwrap();
    drop(w);
    f.assert_restores_to_source();
}

/// walrust killed after a new generation's base snapshot landed but before its state file said so: the next
/// start must take that generation as its own (the state recorded the base as pending before uploading it), not
/// refuse it as another writer's (exit 5: what the CI soak hit) nor continue the old generation's chain.
#[test]
fn a_base_snapshot_that_landed_before_a_kill_is_adopted() {
    use walrust::state::{state_path, LocalState, Pending};
    let f = Fixture::new("base-pending");
    let a = &f.app;
    f.ship_one_and_shut_down();
    let before = LocalState::load(&state_path(&f.db)).unwrap().unwrap();
    // While walrust is down the WAL restarts: the next start begins generation B with a base snapshot.
    f.restart_wal_while_down("two", "three");
    let b = {
        let w = f.watcher(opts());
        assert_eq!(w.stats.generations_started, 1);
        w.generation()
    };
    let after = LocalState::load(&state_path(&f.db)).unwrap().unwrap();
    assert_eq!(after.generation, b);
    assert_ne!(before.generation, b);
    // The state file as the kill left it: generation A's identity, generation B's base pending.
    let crashed = LocalState {
        pending: Some(Pending {
            key: after.head_key.clone(),
            seq: after.seq,
            chain: after.chain,
            wal: after.wal.unwrap(),
            bytes: 0,
        }),
        ..before
    };
    crashed.save(&state_path(&f.db)).unwrap();
    let mut w =
        Watcher::start(&f.db, f.storage.clone(), opts()).expect("the landed base is ours, not another writer's");
    assert_eq!(w.stats.generations_started, 0, "resumed generation B");
    assert_eq!(w.generation(), b);
    a.execute("INSERT INTO t(v) VALUES ('four')", []).unwrap();
    w.tick(true).unwrap();
    drop(w);
    f.assert_restores_to_source();
}

/// Two kills in a row (what the CI soak hit, exit 5): the first lands a changeset but not the state write; while
/// walrust is down the WAL restarts; the next start adopts the landed changeset (pending == remote head), needs a
/// new generation, and is killed before the base lands. The start after that must still recognise the remote
/// head as its own: the adoption has to reach the state file before the base's pending record replaces it.
#[test]
fn an_adopted_changeset_is_remembered_when_the_next_base_never_lands() {
    use walrust::state::{state_path, LocalState, Pending};
    let (f, faulty) = Fixture::faulty("adopted-then-lost");
    f.ship_one_and_shut_down();
    let before = LocalState::load(&state_path(&f.db)).unwrap().unwrap();
    {
        let mut w = f.watcher(opts());
        f.app.execute("INSERT INTO t(v) VALUES ('two')", []).unwrap();
        w.tick(true).unwrap();
    }
    let after = LocalState::load(&state_path(&f.db)).unwrap().unwrap();
    assert_ne!(after.head_key, before.head_key, "'two' was shipped");
    // The state file as a kill after the upload leaves it: the old head, 'two' pending.
    let pending =
        Pending { key: after.head_key, seq: after.seq, chain: after.chain, wal: after.wal.unwrap(), bytes: 0 };
    LocalState { pending: Some(pending), ..before }.save(&state_path(&f.db)).unwrap();
    f.restart_wal_while_down("three", "four");
    faulty.refuse_writes.store(true, std::sync::atomic::Ordering::SeqCst);
    assert!(Watcher::start(&f.db, f.storage.clone(), opts()).is_err(), "the new generation's base is refused");
    faulty.refuse_writes.store(false, std::sync::atomic::Ordering::SeqCst);
    let mut w = Watcher::start(&f.db, f.storage.clone(), opts()).expect("the remote head is still ours");
    assert_eq!(w.stats.generations_started, 1);
    w.tick(true).unwrap();
    drop(w);
    f.assert_restores_to_source();
}

/// A new generation whose base never lands (refused, or walrust killed first) leaves the state naming the last
/// acknowledged head: the next start carries on from it instead of refusing the bucket as another writer's.
#[test]
fn a_base_snapshot_that_never_landed_leaves_the_previous_head_recognised() {
    let (f, refusing) = Fixture::faulty("base-lost");
    f.ship_one_and_shut_down();
    // While walrust is down the WAL restarts: the next start needs a new generation, whose base is refused.
    f.restart_wal_while_down("two", "three");
    refusing.refuse_writes.store(true, std::sync::atomic::Ordering::SeqCst);
    assert!(Watcher::start(&f.db, f.storage.clone(), opts()).is_err());
    refusing.refuse_writes.store(false, std::sync::atomic::Ordering::SeqCst);
    let mut w =
        Watcher::start(&f.db, f.storage.clone(), opts()).expect("the previous head is still recognised as ours");
    assert_eq!(w.stats.generations_started, 1);
    w.tick(true).unwrap();
    drop(w);
    f.assert_restores_to_source();
}

/// walrust killed while a changeset's PUT was cut off right after its headers, on a store that keeps such a PUT as
/// an empty object (SeaweedFS does, without the checksum header). The state names the changeset as pending and
/// the remote head is that key: the next start must see from its size that it is not the upload landed, remove
/// it, and send the changeset again, rather than adopt a corrupt link (restore would fail on it).
#[test]
fn a_pending_upload_the_store_kept_cut_off_is_sent_again() {
    let (f, faulty) = Fixture::faulty("cut-pending");
    f.ship_one_and_shut_down();
    let mut w = f.watcher(opts());
    f.app.execute("INSERT INTO t(v) VALUES ('two')", []).unwrap();
    faulty.keep_cut_puts.store(1, std::sync::atomic::Ordering::SeqCst);
    assert!(w.tick(true).is_err(), "the upload of 'two' was cut off");
    drop(w); // killed there: no retry in this process
    let head = walrust::remote::head(f.storage.as_ref(), "app").unwrap().unwrap();
    assert_eq!(head.last.size, 0, "the store kept the cut-off changeset as the head");
    let mut w = f.watcher(opts());
    assert_eq!(w.stats.generations_started, 0, "the chain continues: the WAL still holds 'two'");
    w.tick(true).unwrap();
    drop(w);
    let got = f.assert_restores_to_source();
    assert_eq!(got.last().map(|r| r.1.as_str()), Some("two"));
}

/// Leaves the WAL as a writer killed between writing its transaction's frames and publishing them in the
/// wal-index does: frames that are valid in the file (salts, checksum chain, a commit frame) but not committed.
/// They are made by a second process on a copy of the database (so that nothing in this process opens or
/// closes the real files, which would drop its SQLite locks) and appended to the real WAL.
fn append_unpublished_transaction(db: &Path, dir: &Path, value: &str) {
    let script = r#"
import os, shutil, sqlite3, sys
db, tmp, value = sys.argv[1], sys.argv[2], sys.argv[3]
os.makedirs(tmp, exist_ok=True)
shutil.copyfile(db, tmp + "/c.db")
shutil.copyfile(db + "-wal", tmp + "/c.db-wal")
n = os.path.getsize(db + "-wal")
c = sqlite3.connect(tmp + "/c.db", isolation_level=None)
c.execute("PRAGMA wal_autocheckpoint=0")
c.execute("INSERT INTO t(v) VALUES (?)", (value,))
extra = open(tmp + "/c.db-wal", "rb").read()[n:]
assert len(extra) > 0, "the copy's transaction went to its WAL"
with open(db + "-wal", "r+b") as f:
    f.seek(n)
    f.write(extra)
os._exit(0)  # no close: the copy's last connection would checkpoint it
"#;
    let out = std::process::Command::new("python3")
        .args(["-c", script, db.to_str().unwrap(), dir.join("copy").to_str().unwrap(), value])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// Found by the soak: a writer SIGKILLed after writing its commit frame but before publishing it. SQLite's next
/// writer overwrites those frames under the same salts; walrust used to ship them (a transaction that never
/// committed, in the backup) and then found nothing it could read after them, so it shipped nothing more while
/// saying it was caught up.
#[test]
fn frames_a_killed_writer_never_published_are_not_shipped() {
    let f = Fixture::new("unpublished");
    let a = &f.app;
    let mut w = f.watcher(opts());
    a.execute("INSERT INTO t(v) VALUES ('one')", []).unwrap();
    w.tick(true).unwrap();

    append_unpublished_transaction(&f.db, &f.dir, "phantom");
    w.tick(true).unwrap();
    let got = f.restored("a");
    assert!(!got.iter().any(|(_, v)| v == "phantom"), "an uncommitted transaction was shipped: {got:?}");
    assert_eq!(got, rows(&f.db));

    // The application's next transaction overwrites those frames; it is shipped, with the chain intact.
    a.execute("INSERT INTO t(v) VALUES ('two')", []).unwrap();
    w.tick(true).unwrap();
    assert_eq!(w.stats.generations_started, 1);
    drop(w);
    let got = f.assert_restores_to_source();
    assert_eq!(got.iter().map(|(_, v)| v.as_str()).collect::<Vec<_>>(), ["seed", "one", "two"]);
}

/// An idle, caught-up walrust does no SQLite work on its ticks, but when the application's checkpoint has
/// copied the WAL into the database (the wal-index's nBackfill moved), walrust moves its pin within a repin
/// interval, so the application's TRUNCATE checkpoint (waiting in its busy handler) completes.
#[test]
fn an_idle_watcher_lets_the_applications_truncate_checkpoint_through() {
    let f = Fixture::new("idle-truncate");
    let a = &f.app;
    // walrust never checkpoints here itself: its pin stays on the last frame it shipped (read mark > 0).
    let mut o = opts();
    o.checkpoint_frames = 1_000_000;
    let mut w = f.watcher(o);
    for round in 0..3 {
        a.execute("INSERT INTO t(v) VALUES (?1)", [format!("r{round}")]).unwrap();
        w.tick(true).unwrap();
        let wal = std::path::PathBuf::from(format!("{}-wal", f.db.display()));
        assert!(std::fs::metadata(&wal).unwrap().len() > 0);
        let done = std::sync::atomic::AtomicBool::new(false);
        let (busy, took) = std::thread::scope(|s| {
            let app = s.spawn(|| {
                let c = Connection::open(&f.db).unwrap();
                c.busy_timeout(std::time::Duration::from_secs(5)).unwrap();
                let t = std::time::Instant::now();
                let busy: i64 = c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get(0)).unwrap();
                done.store(true, std::sync::atomic::Ordering::SeqCst);
                (busy, t.elapsed())
            });
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                w.tick(false).unwrap();
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            app.join().unwrap()
        });
        assert_eq!(busy, 0, "round {round}: the TRUNCATE checkpoint was held up for {took:?}");
        assert!(took < std::time::Duration::from_secs(2), "round {round}: took {took:?}");
        assert_eq!(std::fs::metadata(&wal).unwrap().len(), 0, "round {round}: the WAL was truncated");
    }
    a.execute("INSERT INTO t(v) VALUES ('after')", []).unwrap();
    w.tick(true).unwrap();
    assert_eq!(w.stats.generations_started, 1);
    drop(w);
    f.assert_restores_to_source();
}

/// A writer writes its frames to the WAL, then publishes them in the wal-index (shared memory only). A look in
/// between sees the file change and nothing committed; the publication must still count as news, or the
/// transaction waits for the application's next write. Reproduced exactly: a WAL restart leaves the file's size
/// as it was, and the file's mtime is set back, so that only the wal-index shows the new transaction.
#[test]
fn a_transaction_seen_only_in_the_wal_index_is_shipped() {
    let f = Fixture::new("published");
    let a = &f.app;
    let mut w = f.watcher(opts());
    // A long WAL, shipped and backfilled (opts() checkpoints after every changeset), the pin on read mark 0.
    a.execute_batch(
        "BEGIN; INSERT INTO t(v) SELECT hex(randomblob(2000)) FROM t; INSERT INTO t(v) SELECT v FROM t; COMMIT;",
    )
    .unwrap();
    w.tick(true).unwrap();
    let _ = a.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()));
    w.tick(true).unwrap();
    let wal = std::path::PathBuf::from(format!("{}-wal", f.db.display()));
    let before = std::fs::metadata(&wal).unwrap();
    // The next transaction restarts the WAL: written over its first frames, the file as long as before.
    a.execute("INSERT INTO t(v) VALUES ('after restart')", []).unwrap();
    let after = std::fs::metadata(&wal).unwrap();
    assert_eq!(after.len(), before.len(), "the restart reused the file");
    std::fs::File::options()
        .write(true)
        .open(&wal)
        .unwrap()
        .set_times(std::fs::FileTimes::new().set_modified(before.modified().unwrap()))
        .unwrap();
    assert_eq!(std::fs::metadata(&wal).unwrap().modified().unwrap(), before.modified().unwrap());
    // Not forced: only what the loop notices is shipped.
    for _ in 0..3 {
        w.tick(false).unwrap();
    }
    drop(w);
    // The transaction the wal-index published was shipped.
    f.assert_restores_to_source();
}

/// The state a writer restarting the WAL passes through: SQLite publishes the new cycle in the wal-index
/// (nothing committed in it yet) before it writes the new header to the WAL file. Built exactly: the restarting
/// write is done, then the old header is put back in the file and the index's end set to 0, and a thread puts
/// the real bytes back after `settle`, as the writer would once it ran again.
struct RestartInProgress {
    wal: PathBuf,
    shm: PathBuf,
    header: Vec<u8>,
    index: Vec<u8>,
}

/// The WAL file's header (its first 32 bytes).
fn wal_header(db: &Path) -> Vec<u8> {
    std::fs::read(format!("{}-wal", db.display())).unwrap()[..32].to_vec()
}

impl RestartInProgress {
    /// `old_header`: [`wal_header`] before the restarting write.
    fn forge(db: &Path, old_header: &[u8]) -> RestartInProgress {
        use std::os::unix::fs::FileExt;
        let wal = PathBuf::from(format!("{}-wal", db.display()));
        let shm = PathBuf::from(format!("{}-shm", db.display()));
        let header = wal_header(db);
        let index = std::fs::read(&shm).unwrap()[..96].to_vec();
        assert_ne!(header[16..24], old_header[16..24], "the write restarted the WAL (new salts)");
        // The index's two header copies with mxFrame = 0, checksums recomputed (native byte order, as mapped).
        let mut copy = index[..48].to_vec();
        copy[16..20].copy_from_slice(&0u32.to_ne_bytes());
        let sum = walrust::wal::checksum(cfg!(target_endian = "big"), &copy[..40], [0, 0]);
        copy[40..44].copy_from_slice(&sum[0].to_ne_bytes());
        copy[44..48].copy_from_slice(&sum[1].to_ne_bytes());
        let shm_file = std::fs::File::options().write(true).open(&shm).unwrap();
        shm_file.write_all_at(&[copy.clone(), copy].concat(), 0).unwrap();
        std::fs::File::options().write(true).open(&wal).unwrap().write_all_at(old_header, 0).unwrap();
        RestartInProgress { wal, shm, header, index }
    }

    /// The writer goes on after `settle`: the new header reaches the file, then its commit the index.
    fn finish_after(self, settle: std::time::Duration) -> std::thread::JoinHandle<()> {
        use std::os::unix::fs::FileExt;
        std::thread::spawn(move || {
            std::thread::sleep(settle);
            std::fs::File::options().write(true).open(&self.wal).unwrap().write_all_at(&self.header, 0).unwrap();
            std::fs::File::options().write(true).open(&self.shm).unwrap().write_all_at(&self.index, 0).unwrap();
        })
    }
}

/// A start that reads the WAL while the application is restarting it (the index already on the new cycle, the
/// file's header still the old one) resumes the chain: the clean shutdown's stamp vouches for the restart. Read
/// as a WAL that lost the frames last shipped, it started a new generation for nothing (a CI failure of
/// `sighup_applies_changed_settings_to_running_databases` under load).
#[test]
fn a_start_during_the_applications_wal_restart_resumes_the_chain() {
    let f = Fixture::new("restarting-start");
    f.ship_one_and_shut_down();
    let old = wal_header(&f.db);
    f.app.execute("INSERT INTO t(v) VALUES ('two')", []).unwrap(); // restarts the WAL
    let writer = RestartInProgress::forge(&f.db, &old).finish_after(std::time::Duration::from_millis(150));
    let mut w = f.watcher(opts());
    writer.join().unwrap();
    assert_eq!(w.stats.generations_started, 0, "resumed, no new generation");
    w.tick(true).unwrap();
    assert_eq!(w.stats.generations_started, 0);
    drop(w);
    f.assert_restores_to_source();
}

/// The same moment seen by a running loop whose pin let the restart happen: the old cycle was all shipped, so
/// the loop waits for the new header and follows it, rather than take its cursor for past the committed end.
#[test]
fn a_loop_that_looks_during_a_wal_restart_follows_it() {
    let f = Fixture::new("restarting-loop");
    let a = &f.app;
    let mut w = f.watcher(opts());
    for round in 0..5 {
        a.execute("INSERT INTO t(v) VALUES (?1)", [format!("r{round}")]).unwrap();
        w.tick(true).unwrap(); // shipped and checkpointed: the pin sits on read mark 0
        let old = wal_header(&f.db);
        a.execute("INSERT INTO t(v) VALUES (?1)", [format!("s{round}")]).unwrap(); // restarts the WAL
        let writer = RestartInProgress::forge(&f.db, &old).finish_after(std::time::Duration::from_millis(100));
        w.tick(true).unwrap();
        writer.join().unwrap();
        w.tick(true).unwrap();
    }
    // A writer killed in that moment never finishes the restart: its transaction did not happen, and the next
    // write (which writes the new header) is followed.
    a.execute("INSERT INTO t(v) VALUES ('r5')", []).unwrap();
    w.tick(true).unwrap();
    let old = wal_header(&f.db);
    a.execute("INSERT INTO t(v) VALUES ('never committed')", []).unwrap();
    drop(RestartInProgress::forge(&f.db, &old));
    w.tick(true).unwrap();
    a.execute("INSERT INTO t(v) VALUES ('after the killed writer')", []).unwrap();
    w.tick(true).unwrap();
    assert_eq!(w.stats.generations_started, 1, "every restart was followed");
    drop(w);
    let restored = f.assert_restores_to_source();
    assert_eq!(restored.len(), 13);
    assert!(restored.iter().all(|r| r.1 != "never committed"));
}
