//! walrust's hold on a live SQLite database: a connection holding a read transaction (the "pin"), handed over
//! to a new connection to move forward, checkpoints, and page reads through SQLite's own file handle.
//!
//! Why a hand-over: a read transaction holds a WAL read mark. While any reader holds a mark > 0 the WAL
//! cannot restart, so frames walrust has not read yet cannot be overwritten; while a reader holds mark 0 no
//! checkpoint can backfill, so at most one restart can happen and the frames written after it only append.
//! walrust always holds one pin: to move forward it opens a connection and begins a read transaction on it
//! *before* ending the old one (and closing its connection), so there is never a window in which the WAL can be
//! restarted twice or checkpointed past frames walrust has not read (the read-mark-0 window of FIELD-NOTES.md).
//! Between moves a database holds that one connection (~10 KiB of SQLite's heap), not a second idle one: the
//! move costs an open (tens of microseconds), paid once per shipped changeset. walrust never writes to the
//! database.
//!
//! Why SQLite's own file handle: opening and closing the database file with std::fs in a process that holds
//! SQLite locks on it drops those locks (POSIX semantics). Pages are read with the VFS `xRead` of the
//! connection's own `sqlite3_file` instead.
//!
//! The connections are opened with SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE so that closing them never checkpoints or
//! deletes the WAL: after a restart walrust finds the WAL it left and can prove continuity from it.

use std::ffi::{c_int, c_void};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{config::DbConfig, ffi, Connection, OpenFlags};

use crate::error::{Error, Result};

/// How long a checkpoint or a pin waits on SQLite's locks before giving up for this round.
pub const BUSY_TIMEOUT: Duration = Duration::from_millis(2_000);

/// How long walrust waits for the application's writers before taking the write lock for a forced checkpoint.
pub const WRITE_LOCK_TIMEOUT: Duration = Duration::from_millis(1_000);
const WRITE_LOCK_POLL: Duration = Duration::from_micros(200);

fn write_lock_busy(tries: i32) -> bool {
    if (tries as u128) * WRITE_LOCK_POLL.as_micros() >= WRITE_LOCK_TIMEOUT.as_micros() {
        return false;
    }
    std::thread::sleep(WRITE_LOCK_POLL);
    true
}

/// Result of a checkpoint: frames in the WAL, frames backfilled into the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckpointResult {
    pub busy: bool,
    pub log_frames: i64,
    pub checkpointed_frames: i64,
}

pub struct Pins {
    path: PathBuf,
    /// The connection holding the read transaction (from `open` until dropped).
    conn: Connection,
    /// Takes SQLite's write lock (BEGIN IMMEDIATE, never writes) for a forced checkpoint; opened only for
    /// that (rare) moment and closed after, so that an idle database holds one connection, not two.
    writer: Option<Connection>,
    write_locked: bool,
}

impl std::fmt::Debug for Pins {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pins").field("path", &self.path).finish()
    }
}

fn open_conn(path: &Path) -> Result<Connection> {
    let ctx = || format!("opening {}", path.display());
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX | OpenFlags::SQLITE_OPEN_URI,
    )
    .map_err(|e| Error::sqlite(ctx(), e))?;
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, true).map_err(|e| Error::sqlite(ctx(), e))?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(|e| Error::sqlite(ctx(), e))?;
    // No PRAGMA cache_size here: it would parse the schema (see begin_read). These connections read the header
    // page only, and SQLite's page cache grows on demand (SQLITE_DEFAULT_PCACHE_INITSZ=0), so it holds that page.
    Ok(conn)
}

/// Checks that `path` is a SQLite database in WAL mode without changing it. Returns its page size.
fn check_wal_mode(conn: &Connection, path: &Path) -> Result<u32> {
    // A file that is not a database fails here (exit 1, "file is not a database", as bad_input.rs pins).
    let mode: String = conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .map_err(|e| Error::sqlite(format!("opening {}", path.display()), e))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(Error::Usage(format!(
            "{} is not in WAL mode (journal_mode={mode}); walrust replicates WAL databases: run PRAGMA journal_mode=WAL",
            path.display()
        )));
    }
    let page_size: u32 = conn
        .query_row("PRAGMA page_size", [], |r| r.get(0))
        .map_err(|e| Error::sqlite(format!("reading {}", path.display()), e))?;
    Ok(page_size)
}

impl Pins {
    /// Opens the database (which must exist and be in WAL mode) and takes the first pin.
    pub fn open(path: &Path) -> Result<(Pins, u32)> {
        if !path.is_file() {
            return Err(Error::Usage(format!("{}: no such database file", path.display())));
        }
        // PRAGMA journal_mode parses the schema, which a connection then keeps (kilobytes per table): the check
        // runs on a connection of its own, and the pins never parse it (see begin_read).
        let page_size = check_wal_mode(&open_conn(path)?, path)?;
        let pins = Pins { path: path.to_path_buf(), conn: pinned_conn(path)?, writer: None, write_locked: false };
        // A watch opens every database before their loops begin, a few at a time: without this, each would
        // keep the 32 KiB its first read mapped until then (32 MiB at a thousand databases, all at startup).
        pins.release_shared_memory();
        Ok((pins, page_size))
    }

    /// Moves the pin to the WAL's current end: a new connection begins a read transaction, then the old one
    /// ends its own and closes. (SQLite keeps this process's locks on the database file while any of its
    /// connections to it is open: closing the old connection drops none of the new one's.)
    pub fn advance(&mut self) -> Result<()> {
        let next = pinned_conn(&self.path)?;
        let old = std::mem::replace(&mut self.conn, next);
        end_read(&old);
        drop(old);
        Ok(())
    }

    /// Closes every connection this process has on the database, then pins again on a fresh one. When no other
    /// process has the database open either, the fresh connection is the first to map the wal-index, and SQLite
    /// rebuilds it from the WAL file (recovery), exactly as for whoever opens the database next: a transaction
    /// whose frames are complete in the WAL but were never published (its writer killed inside COMMIT) becomes
    /// committed. Nothing holds the WAL between the close and the new pin: the caller must not assume continuity
    /// across this call.
    pub fn reopen(&mut self) -> Result<()> {
        self.unlock_writes();
        let none = Connection::open_in_memory().map_err(|e| Error::sqlite("opening an in-memory database", e))?;
        let old = std::mem::replace(&mut self.conn, none);
        end_read(&old);
        drop(old);
        self.conn = pinned_conn(&self.path)?;
        Ok(())
    }

    /// Takes SQLite's write lock so that no transaction commits until [`Pins::unlock_writes`]. Returns false
    /// when the application's writers kept it busy for [`WRITE_LOCK_TIMEOUT`] (try again later). Nothing is
    /// ever written through this connection.
    pub fn lock_writes(&mut self) -> Result<bool> {
        let writer = match &mut self.writer {
            Some(w) => w,
            None => {
                let w = open_conn(&self.path)?;
                // SQLite's default busy handler sleeps up to 100 ms between tries and can starve against an
                // application that commits back to back; this one looks every 200 µs, so it takes the first gap
                // between two commits.
                w.busy_handler(Some(write_lock_busy))
                    .map_err(|e| Error::sqlite(format!("opening {}", self.path.display()), e))?;
                self.writer.insert(w)
            }
        };
        match writer.execute_batch("BEGIN IMMEDIATE") {
            Ok(()) => {
                self.write_locked = true;
                Ok(true)
            }
            Err(rusqlite::Error::SqliteFailure(f, _))
                if matches!(f.code, rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked) =>
            {
                Ok(false)
            }
            Err(e) => Err(Error::sqlite(format!("locking {}", self.path.display()), e)),
        }
    }

    /// Releases the write lock taken by [`Pins::lock_writes`] and closes that connection.
    pub fn unlock_writes(&mut self) {
        if let Some(w) = self.writer.take() {
            if self.write_locked {
                let _ = w.execute_batch("ROLLBACK");
            }
        }
        self.write_locked = false;
    }

    /// Runs a PASSIVE checkpoint on a connection of its own (the pin stays held, so it cannot pass frames not
    /// yet read); it never waits for the application's readers or writers.
    pub fn checkpoint(&self) -> Result<CheckpointResult> {
        // A checkpoint needs a connection without a transaction that has opened the WAL: one that read once
        // (a checkpoint on a connection that never read would read the schema to open it).
        let conn = pinned_conn(&self.path)?;
        end_read(&conn);
        let (mut log, mut done): (c_int, c_int) = (-1, -1);
        // SAFETY: the handle is the open connection's; the out-pointers are valid for the call. The C call, unlike
        // PRAGMA wal_checkpoint, does not parse the schema.
        let rc = unsafe {
            ffi::sqlite3_wal_checkpoint_v2(
                conn.handle(),
                c"main".as_ptr(),
                ffi::SQLITE_CHECKPOINT_PASSIVE,
                &mut log,
                &mut done,
            )
        };
        match rc {
            ffi::SQLITE_OK | ffi::SQLITE_BUSY => Ok(CheckpointResult {
                busy: rc == ffi::SQLITE_BUSY,
                log_frames: log.into(),
                checkpointed_frames: done.into(),
            }),
            rc => Err(Error::sqlite(
                format!("checkpointing {}", self.path.display()),
                rusqlite::Error::SqliteFailure(ffi::Error::new(rc), None),
            )),
        }
    }

    /// Reads `buf.len()` bytes of the database file at `offset`, through the pinned connection's own file
    /// handle. Returns false for a short read (beyond the end of the file).
    pub fn read_db(&self, offset: u64, buf: &mut [u8]) -> Result<bool> {
        let conn = &self.conn;
        let err = |what: &str| Error::Other(format!("reading {}: {what}", self.path.display()));
        // SAFETY: the file pointer belongs to `conn`, which stays open (borrowed) for the whole call; xRead is
        // given a buffer of exactly the length it is told.
        let file = main_file(conn).ok_or_else(|| err("no file handle"))?;
        unsafe {
            let Some(x_read) = (*(*file).pMethods).xRead else { return Err(err("no xRead")) };
            let len = c_int::try_from(buf.len()).map_err(|_| err("read too large"))?;
            let off = i64::try_from(offset).map_err(|_| err("offset too large"))?;
            match x_read(file, buf.as_mut_ptr() as *mut c_void, len, off) {
                ffi::SQLITE_OK => Ok(true),
                ffi::SQLITE_IOERR_SHORT_READ => Ok(false),
                rc => Err(err(&format!("I/O error {rc}"))),
            }
        }
    }

    /// Gives back this process's page mappings of SQLite's shared memory (the `-shm` wal-index), not its
    /// contents. SQLite maps that file MAP_SHARED, so every byte written through the mapping is in the page cache
    /// (shared with the application) and the next access maps the same pages again; the read marks are file
    /// locks, untouched. Without this, each database keeps at least the 32 KiB the kernel maps around a fault in
    /// the first region (more with a long WAL) while it waits. Returns the bytes of mappings released.
    pub fn release_shared_memory(&self) -> usize {
        const REGION: usize = 32 * 1024;
        let conn = &self.conn;
        let Some(file) = main_file(conn) else { return 0 };
        // SAFETY: sysconf has no preconditions.
        let page = match unsafe { libc::sysconf(libc::_SC_PAGESIZE) } {
            p if p > 0 => p as usize,
            _ => return 0,
        };
        let mut released = 0;
        // SAFETY: as in wal_index: the file belongs to `conn`, borrowed for the call; xShmMap with bExtend=0 only
        // returns regions the -shm file already holds, mapped by SQLite for as long as the connection is open.
        // MADV_DONTNEED on a shared file mapping drops page table entries only (dirty pages stay in the page
        // cache); a concurrent access by another connection of this process simply faults the page back in.
        unsafe {
            let Some(x_shm_map) = (*(*file).pMethods).xShmMap else { return 0 };
            for i in 0..c_int::MAX {
                let mut region: *mut c_void = std::ptr::null_mut();
                if x_shm_map(file, i, REGION as c_int, 0, &mut region) != ffi::SQLITE_OK || region.is_null() {
                    break;
                }
                // With pages over 32 KiB SQLite maps several regions at once; only page-aligned starts are
                // released (the page rounding covers the others).
                if (region as usize).is_multiple_of(page) && libc::madvise(region, REGION, libc::MADV_DONTNEED) == 0 {
                    released += REGION;
                }
            }
        }
        released
    }

    /// The wal-index header as SQLite's writers last published it (see [`crate::wal::WalIndex`]), read from
    /// the `-shm` mapping SQLite already holds for the pinned connection: the file itself is never opened here,
    /// since closing a descriptor of it would drop this process's locks on it (the pins' read marks).
    pub fn wal_index(&self) -> Result<crate::wal::WalIndex> {
        use crate::wal::{WalIndex, WAL_INDEX_HEADER_LEN};
        let conn = &self.conn;
        let err = |what: &str| Error::Other(format!("reading the WAL index of {}: {what}", self.path.display()));
        let mut copies = [[0u8; WAL_INDEX_HEADER_LEN]; 2];
        let mut backfilled = [0u8; 4];
        for _ in 0..1000 {
            // SAFETY: as in read_db, the file belongs to `conn`, borrowed for the call. xShmMap with bExtend=0
            // returns SQLite's existing mapping of the first 32 KiB region (mapped while a read transaction is
            // held), which stays mapped while the connection is open; it is read with volatile reads, in the
            // order SQLite's own readers use (copy 0, barrier, copy 1), since writers in other processes change it.
            let file = main_file(conn).ok_or_else(|| err("no file handle"))?;
            unsafe {
                let Some(x_shm_map) = (*(*file).pMethods).xShmMap else { return Err(err("no shared memory")) };
                let mut region: *mut c_void = std::ptr::null_mut();
                let rc = x_shm_map(file, 0, 32 * 1024, 0, &mut region);
                if rc != ffi::SQLITE_OK || region.is_null() {
                    return Err(err(&format!(
                        "not mapped (SQLite code {rc}); is the database in exclusive locking mode?"
                    )));
                }
                let base = region as *const u8;
                for (i, copy) in copies.iter_mut().enumerate() {
                    for (j, b) in copy.iter_mut().enumerate() {
                        *b = std::ptr::read_volatile(base.add(i * WAL_INDEX_HEADER_LEN + j));
                    }
                    std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
                }
                for (j, b) in backfilled.iter_mut().enumerate() {
                    *b = std::ptr::read_volatile(base.add(crate::wal::WAL_INDEX_BACKFILL_OFFSET + j));
                }
            }
            if copies[0] == copies[1] {
                if let Some(ix) = WalIndex::parse(&copies[0]) {
                    return Ok(WalIndex { backfilled: u32::from_ne_bytes(backfilled), ..ix });
                }
            }
            std::thread::yield_now();
        }
        Err(Error::Interrupted(format!("the WAL index of {} kept changing while read", self.path.display())))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Pins {
    fn drop(&mut self) {
        end_read(&self.conn);
    }
}

/// The connection's own `sqlite3_file` for its main database (with its methods), valid while `conn` is open.
fn main_file(conn: &Connection) -> Option<*mut ffi::sqlite3_file> {
    let mut file: *mut ffi::sqlite3_file = std::ptr::null_mut();
    // SAFETY: SQLITE_FCNTL_FILE_POINTER writes one pointer to the location given; the handle is `conn`'s.
    let rc = unsafe {
        ffi::sqlite3_file_control(
            conn.handle(),
            c"main".as_ptr(),
            ffi::SQLITE_FCNTL_FILE_POINTER,
            &mut file as *mut *mut ffi::sqlite3_file as *mut c_void,
        )
    };
    // SAFETY: a non-null file pointer from SQLite points at an open sqlite3_file.
    (rc == ffi::SQLITE_OK && !file.is_null() && unsafe { !(*file).pMethods.is_null() }).then_some(file)
}

fn begin_read(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch("BEGIN DEFERRED")?;
    // Any read starts the read transaction and takes the read mark. This one reads the database header only:
    // unlike a query of a table it does not parse the schema, which the connection would then keep.
    if let Err(e) = conn.query_row("PRAGMA schema_version", [], |r| r.get::<_, i64>(0)) {
        let _ = conn.execute_batch("ROLLBACK");
        return Err(e);
    }
    Ok(())
}

/// A new connection holding a read transaction.
fn pinned_conn(path: &Path) -> Result<Connection> {
    let conn = open_conn(path)?;
    begin_read(&conn).map_err(|e| Error::sqlite(format!("pinning {}", path.display()), e))?;
    Ok(conn)
}

fn end_read(conn: &Connection) {
    let _ = conn.execute_batch("COMMIT");
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Resident KiB of this process's mappings of `file` (from /proc/self/smaps).
    fn resident_kib(file: &Path) -> u64 {
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let name = file.to_str().unwrap();
        let mut total = 0;
        let mut inside = false;
        for line in smaps.lines() {
            if line.contains('-') && line.split_whitespace().nth(1).is_some_and(|p| p.len() == 4) {
                inside = line.ends_with(name);
            } else if inside && line.starts_with("Rss:") {
                total += line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap();
            }
        }
        total
    }

    /// One of a connection's SQLITE_DBSTATUS_* figures (bytes).
    fn db_status(conn: &Connection, what: c_int) -> i32 {
        let (mut cur, mut hi) = (0, 0);
        // SAFETY: an open connection's handle; two valid out-pointers.
        let rc = unsafe { ffi::sqlite3_db_status(conn.handle(), what, &mut cur, &mut hi, 0) };
        assert_eq!(rc, ffi::SQLITE_OK);
        cur
    }

    /// Bytes of parsed schema a connection holds.
    fn schema_bytes(conn: &Connection) -> i32 {
        db_status(conn, ffi::SQLITE_DBSTATUS_SCHEMA_USED)
    }

    /// A fresh directory with an application's connection to `a.db` in it, in WAL mode.
    fn app_db(tag: &str) -> (PathBuf, PathBuf, Connection) {
        let dir = std::env::temp_dir().join(format!("walrust-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let db = dir.join("a.db");
        let app = Connection::open(&db).unwrap();
        app.execute_batch("PRAGMA journal_mode=WAL").unwrap();
        (dir, db, app)
    }

    #[test]
    fn pins_and_checkpoints_never_parse_the_schema() {
        let (dir, db, app) = app_db("schema");
        for i in 0..40 {
            app.execute_batch(&format!(
                "CREATE TABLE t{i}(a INTEGER PRIMARY KEY, b TEXT UNIQUE, c BLOB); CREATE INDEX i{i} ON t{i}(c);"
            ))
            .unwrap();
        }
        let (mut pins, _) = Pins::open(&db).unwrap();
        for round in 0..3 {
            app.execute_batch(&format!("INSERT INTO t{round} VALUES (NULL, 'x', x'00')")).unwrap();
            pins.advance().unwrap();
            pins.checkpoint().unwrap();
            pins.wal_index().unwrap();
            assert_eq!(schema_bytes(&pins.conn), 0, "round {round}");
        }
        // What a query of a table would have kept.
        let _: i64 = pins.conn.query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0)).unwrap();
        assert!(schema_bytes(&pins.conn) > 20_000, "{}", schema_bytes(&pins.conn));
        drop(pins);
        drop(app);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Descriptors this process has open on `file`.
    fn open_fds(file: &Path) -> usize {
        std::fs::read_dir("/proc/self/fd")
            .unwrap()
            .filter(|e| e.as_ref().is_ok_and(|e| std::fs::read_link(e.path()).is_ok_and(|t| t == file)))
            .count()
    }

    #[test]
    fn a_pin_handed_over_to_a_new_connection_still_holds_and_the_old_one_is_closed() {
        let (dir, db, app) = app_db("handover");
        app.execute_batch("PRAGMA wal_autocheckpoint=0; CREATE TABLE t(a INTEGER PRIMARY KEY, b TEXT)").unwrap();
        app.busy_timeout(Duration::ZERO).unwrap();
        let wal = dir.join("a.db-wal");
        let (mut pins, _) = Pins::open(&db).unwrap();
        for round in 0..4 {
            app.execute_batch(&format!("INSERT INTO t VALUES (NULL, '{}')", "x".repeat(3000))).unwrap();
            pins.advance().unwrap();
            pins.checkpoint().unwrap();
            // One connection of walrust's (and the application's own) has the WAL open: the old pin's connection
            // and the checkpoint's are closed.
            assert_eq!(open_fds(&wal), 2, "round {round}");
            // Closing the old connection dropped none of the new one's locks: frames committed after the pin
            // cannot be checkpointed away (a TRUNCATE checkpoint is refused as busy, the WAL keeps them).
            app.execute_batch("INSERT INTO t VALUES (NULL, 'after the pin')").unwrap();
            let (busy, log, done): (i64, i64, i64) = app
                .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                .unwrap();
            assert_eq!(busy, 1, "round {round}: log {log}, checkpointed {done}");
            assert!(std::fs::metadata(&wal).unwrap().len() > 0, "round {round}");
        }
        // The pin reads the database as it was when it was taken; the next one sees everything.
        let n: i64 = pins.conn.query_row("SELECT count(*) FROM t", [], |r| r.get(0)).unwrap();
        assert_eq!(n, 7);
        pins.advance().unwrap();
        let n: i64 = pins.conn.query_row("SELECT count(*) FROM t", [], |r| r.get(0)).unwrap();
        assert_eq!(n, 8);
        drop(pins);
        drop(app);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn released_shared_memory_comes_back_unchanged_and_the_pin_still_holds() {
        let (dir, db, app) = app_db("shm");
        app.execute_batch("PRAGMA wal_autocheckpoint=0; CREATE TABLE t(x);").unwrap();
        // ~5000 frames: the wal-index spans two 32 KiB regions.
        app.execute_batch("BEGIN").unwrap();
        for i in 0..5000 {
            app.execute("INSERT INTO t VALUES (randomblob(3000 + ?1 % 7))", [i]).unwrap();
        }
        app.execute_batch("COMMIT").unwrap();
        let (pins, _) = Pins::open(&db).unwrap();
        let shm = dir.join("a.db-shm");
        // A new pin gives back what its first read mapped (a watch opens all its databases at startup).
        assert_eq!(resident_kib(&shm), 0);
        let before = pins.wal_index().unwrap();
        assert!(resident_kib(&shm) >= 32, "mapped: {} KiB", resident_kib(&shm));
        assert!(pins.release_shared_memory() >= 64 * 1024);
        assert_eq!(resident_kib(&shm), 0);
        // The same wal-index comes back on the next access, and the application sees its writes.
        let after = pins.wal_index().unwrap();
        assert_eq!((after.mx_frame, after.salt1, after.salt2), (before.mx_frame, before.salt1, before.salt2));
        assert!(resident_kib(&shm) > 0);
        let n: i64 = app.query_row("SELECT count(*) FROM t", [], |r| r.get(0)).unwrap();
        assert_eq!(n, 5000);
        // The pin's read mark is a file lock, not a mapping: a TRUNCATE checkpoint still cannot restart the WAL.
        pins.release_shared_memory();
        app.busy_timeout(Duration::ZERO).unwrap();
        let (busy, log, done): (i64, i64, i64) =
            app.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?))).unwrap();
        assert_eq!(busy, 1, "log {log}, checkpointed {done}");
        assert!(std::fs::metadata(dir.join("a.db-wal")).unwrap().len() > 0);
        drop(pins);
        drop(app);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
