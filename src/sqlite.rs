//! walrust's hold on a live SQLite database: two connections that take turns holding a read transaction
//! ("pins"), checkpoints, and page reads through SQLite's own file handle.
//!
//! Why two connections: a read transaction holds a WAL read mark. While any reader holds a mark > 0 the WAL
//! cannot restart, so frames walrust has not read yet cannot be overwritten; while a reader holds mark 0 no
//! checkpoint can backfill, so at most one restart can happen and the frames written after it only append.
//! walrust always holds one pin: to move forward it begins a read transaction on the idle connection *before*
//! ending the one on the other, so there is never a window in which the WAL can be restarted twice or
//! checkpointed past frames walrust has not read (the read-mark-0 window of FIELD-NOTES.md). walrust never
//! writes to the database.
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
    conns: [Connection; 2],
    /// Takes SQLite's write lock (BEGIN IMMEDIATE, never writes) for a forced checkpoint; opened only for
    /// that (rare) moment and closed after, so that an idle database holds two connections, not three.
    writer: Option<Connection>,
    write_locked: bool,
    /// Index of the connection holding the read transaction, if any.
    held: Option<usize>,
}

impl std::fmt::Debug for Pins {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pins").field("path", &self.path).field("held", &self.held).finish()
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
    // Keep our footprint small: we read almost nothing through SQLite.
    conn.execute_batch("PRAGMA cache_size=-64").map_err(|e| Error::sqlite(ctx(), e))?;
    Ok(conn)
}

/// Checks that `path` is a SQLite database in WAL mode without changing it. Returns its page size.
fn check_wal_mode(conn: &Connection, path: &Path) -> Result<u32> {
    let mode: String = conn.query_row("PRAGMA journal_mode", [], |r| r.get(0)).map_err(|e| match e {
        rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::NotADatabase => {
            Error::Usage(format!("{} is not a SQLite database", path.display()))
        }
        e => Error::sqlite(format!("reading {}", path.display()), e),
    })?;
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
        let a = open_conn(path)?;
        let page_size = check_wal_mode(&a, path)?;
        let b = open_conn(path)?;
        let mut pins = Pins { path: path.to_path_buf(), conns: [a, b], writer: None, write_locked: false, held: None };
        pins.advance()?;
        Ok((pins, page_size))
    }

    /// Begins a read transaction on the idle connection, then ends the one on the other.
    pub fn advance(&mut self) -> Result<()> {
        let next = match self.held {
            Some(i) => 1 - i,
            None => 0,
        };
        begin_read(&self.conns[next]).map_err(|e| Error::sqlite(format!("pinning {}", self.path.display()), e))?;
        if let Some(i) = self.held {
            end_read(&self.conns[i]);
        }
        self.held = Some(next);
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

    /// Runs a PASSIVE checkpoint on the idle connection (the pin stays held, so it cannot pass frames not yet
    /// read); it never waits for the application's readers or writers.
    pub fn checkpoint(&self) -> Result<CheckpointResult> {
        let idle = match self.held {
            Some(i) => 1 - i,
            None => 0,
        };
        self.conns[idle]
            .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
                Ok(CheckpointResult {
                    busy: r.get::<_, i64>(0)? != 0,
                    log_frames: r.get(1)?,
                    checkpointed_frames: r.get(2)?,
                })
            })
            .map_err(|e| Error::sqlite(format!("checkpointing {}", self.path.display()), e))
    }

    /// Reads `buf.len()` bytes of the database file at `offset`, through the pinned connection's own file
    /// handle. Returns false for a short read (beyond the end of the file).
    pub fn read_db(&self, offset: u64, buf: &mut [u8]) -> Result<bool> {
        let conn = &self.conns[self.held.unwrap_or(0)];
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

    /// The wal-index header as SQLite's writers last published it (see [`crate::wal::WalIndex`]), read from
    /// the `-shm` mapping SQLite already holds for the pinned connection: the file itself is never opened here,
    /// since closing a descriptor of it would drop this process's locks on it (the pins' read marks).
    pub fn wal_index(&self) -> Result<crate::wal::WalIndex> {
        use crate::wal::{WalIndex, WAL_INDEX_HEADER_LEN};
        let conn = &self.conns[self.held.unwrap_or(0)];
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
        if let Some(i) = self.held.take() {
            end_read(&self.conns[i]);
        }
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
    // Any read starts the read transaction and takes the read mark.
    if let Err(e) = conn.query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get::<_, i64>(0)) {
        let _ = conn.execute_batch("ROLLBACK");
        return Err(e);
    }
    Ok(())
}

fn end_read(conn: &Connection) {
    let _ = conn.execute_batch("COMMIT");
}
