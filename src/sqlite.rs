//! walrust's hold on a live SQLite database: a WAL read lock (the "pin") taken without a connection, moved
//! forward, checkpoints, and page reads through SQLite's own file handle.
//!
//! Why a pin: a read transaction holds a WAL read mark. While any reader holds a mark > 0 the WAL cannot
//! restart, so frames walrust has not read yet cannot be overwritten; while a reader holds mark 0 no checkpoint
//! can backfill, so at most one restart can happen and the frames written after it only append. walrust always
//! holds one pin: to move forward it locks the read mark for the new end *before* releasing the old one, so
//! there is never a window in which the WAL can be restarted twice or checkpointed past frames walrust has not
//! read (the read-mark-0 window of FIELD-NOTES.md). walrust never writes to the database.
//!
//! Why without a connection: a connection holding a read transaction keeps ~15 KiB of SQLite's heap (page 1,
//! the pager's scratch page, the page cache), per database, for as long as walrust watches it. The pin is the
//! two locks that read transaction holds, taken by walrust through SQLite's VFS on a `sqlite3_file` of its own
//! ([`ReadLock`]: a SHARED lock on the database file and a shared lock on one read-mark slot, chosen with the
//! steps of SQLite's `walTryBeginRead`). Because it goes through the VFS, SQLite's per-process lock and
//! wal-index bookkeeping is shared with the connections walrust opens for checkpoints, recovery and the forced
//! checkpoint's write lock. A wal-index that needs rebuilding (no process had the database open) is rebuilt by
//! a connection's read before the lock is taken: walrust never writes the wal-index except for a read mark,
//! under SQLite's own exclusive lock on that slot, as every reader does.
//!
//! Why SQLite's own file handle: opening and closing the database file with std::fs in a process that holds
//! SQLite locks on it drops those locks (POSIX semantics). Pages are read with the VFS `xRead` of the lock's
//! `sqlite3_file` instead.
//!
//! The connections are opened with SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE so that closing them never checkpoints or
//! deletes the WAL: after a restart walrust finds the WAL it left and can prove continuity from it.

use std::ffi::{c_char, c_int, c_void};
use std::path::{Path, PathBuf};
use std::sync::atomic::{fence, AtomicU32, Ordering};
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
    /// The read lock (from `open` until dropped): walrust's own, taken through SQLite's VFS, no connection.
    lock: ReadLock,
    /// Takes SQLite's write lock (BEGIN IMMEDIATE, never writes) for a forced checkpoint; opened only for
    /// that (rare) moment and closed after.
    writer: Option<Connection>,
    write_locked: bool,
}

impl std::fmt::Debug for Pins {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pins").field("path", &self.path).field("slot", &self.lock.slot).finish()
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
        // The check's connection (it parses the schema) also opens the wal-index: it stays open, in a read
        // transaction, until the lock is taken, so that a wal-index SQLite must rebuild is rebuilt once, by it.
        let conn = open_conn(path)?;
        let page_size = check_wal_mode(&conn, path)?;
        begin_pin_read(&conn, path)?;
        let lock = lock_beside(conn, path)?;
        let pins = Pins { path: path.to_path_buf(), lock, writer: None, write_locked: false };
        // A watch opens every database before their loops begin, a few at a time: without this, each would
        // keep the 32 KiB its first read mapped until then (32 MiB at a thousand databases, all at startup).
        pins.release_shared_memory();
        Ok((pins, page_size))
    }

    /// Moves the pin to the WAL's current end: the read mark for the new end is locked before the old one is
    /// released, so the WAL is held throughout.
    pub fn advance(&mut self) -> Result<()> {
        self.lock.pin(&self.path)
    }

    /// Releases every hold this process has on the database (the lock, its descriptors, the wal-index mapping),
    /// then pins again. When no other process has the database open either, the connection that takes the
    /// new pin is the first to map the wal-index, and SQLite rebuilds it from the WAL file (recovery), exactly as
    /// for whoever opens the database next: a transaction whose frames are complete in the WAL but were never
    /// published (its writer killed inside COMMIT) becomes committed. Nothing holds the WAL between the release
    /// and the new pin: the caller must not assume continuity across this call.
    pub fn reopen(&mut self) -> Result<()> {
        self.unlock_writes();
        self.lock.close();
        self.lock = lock_beside(pinned_conn(&self.path)?, &self.path)?;
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

    /// Reads `buf.len()` bytes of the database file at `offset`, through the lock's own file handle (see the
    /// module comment). Returns false for a short read (beyond the end of the file).
    pub fn read_db(&self, offset: u64, buf: &mut [u8]) -> Result<bool> {
        let err = |what: &str| Error::Other(format!("reading {}: {what}", self.path.display()));
        let file = self.lock.file;
        let Some(x_read) = self.lock.methods().and_then(|m| m.xRead) else { return Err(err("not open")) };
        // SAFETY: the file is the lock's, open (methods() said so) while `self` lives, borrowed for the call; xRead
        // is given a buffer of exactly the length it is told.
        unsafe {
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
        // SAFETY: sysconf has no preconditions.
        let page = match unsafe { libc::sysconf(libc::_SC_PAGESIZE) } {
            p if p > 0 => p as usize,
            _ => return 0,
        };
        let mut released = 0;
        for i in 0..c_int::MAX {
            let Some(region) = self.lock.region(i) else { break };
            // With pages over 32 KiB SQLite maps several regions at once; only page-aligned starts are
            // released (the page rounding covers the others).
            // SAFETY: the region is SQLite's mapping of the -shm file, mapped while the lock's file is open.
            // MADV_DONTNEED on a shared file mapping drops page table entries only (dirty pages stay in the page
            // cache); a concurrent access by a connection of this process simply faults the page back in.
            if (region as usize).is_multiple_of(page)
                && unsafe { libc::madvise(region as *mut c_void, SHM_REGION, libc::MADV_DONTNEED) } == 0
            {
                released += SHM_REGION;
            }
        }
        released
    }

    /// The wal-index header as SQLite's writers last published it (see [`crate::wal::WalIndex`]), read from
    /// the `-shm` mapping SQLite holds for the lock's file: the file itself is never opened with std::fs,
    /// since closing a descriptor of it would drop this process's locks on it (the read marks).
    pub fn wal_index(&self) -> Result<crate::wal::WalIndex> {
        let err = |what: &str| Error::Other(format!("reading the WAL index of {}: {what}", self.path.display()));
        for _ in 0..1000 {
            let Some(base) = self.lock.region(0) else {
                return Err(err("not mapped; is the database in exclusive locking mode?"));
            };
            // SAFETY: region 0 is mapped while the lock's file is open (borrowed for the call).
            if let Some((ix, _)) = unsafe { read_index(base) } {
                return Ok(ix);
            }
            std::thread::yield_now();
        }
        Err(Error::Interrupted(format!("the WAL index of {} kept changing while read", self.path.display())))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The size of one region of SQLite's wal-index (WALINDEX_PGSZ); the header and read marks are in the first.
const SHM_REGION: usize = 32 * 1024;
/// SQLite's wal-index lock slots (sqlite3.c, WAL_READ_LOCK(i) = 3 + i) and the checkpoint information after
/// the two header copies (WalCkptInfo: nBackfill, then aReadMark[5]).
const WAL_READ_LOCK0: c_int = 3;
const WAL_NREADER: usize = 5;
const CKPT_BACKFILL: usize = 2 * crate::wal::WAL_INDEX_HEADER_LEN;
const CKPT_READ_MARKS: usize = CKPT_BACKFILL + 4;

/// Reads the wal-index header at `base` the way SQLite's readers do (copy 0, barrier, copy 1; both equal and
/// valid), with the frames backfilled. Returns the parsed header and the raw copy 0 (to compare later), or None
/// when a writer is changing it or it is not initialised.
///
/// # Safety
/// `base` must point at a mapped wal-index region 0 (32 KiB).
unsafe fn read_index(base: *mut u8) -> Option<(crate::wal::WalIndex, [u8; crate::wal::WAL_INDEX_HEADER_LEN])> {
    use crate::wal::{WalIndex, WAL_INDEX_HEADER_LEN};
    let mut copies = [[0u8; WAL_INDEX_HEADER_LEN]; 2];
    for (i, copy) in copies.iter_mut().enumerate() {
        for (j, b) in copy.iter_mut().enumerate() {
            *b = std::ptr::read_volatile(base.add(i * WAL_INDEX_HEADER_LEN + j));
        }
        fence(Ordering::SeqCst);
    }
    if copies[0] != copies[1] {
        return None;
    }
    let ix = WalIndex::parse(&copies[0])?;
    Some((WalIndex { backfilled: shm_word(base, CKPT_BACKFILL).load(Ordering::SeqCst), ..ix }, copies[0]))
}

/// The 32-bit word of the wal-index at byte `at` (SQLite reads and writes these atomically).
///
/// # Safety
/// `base` must point at a mapped wal-index region 0; `at` is 4-aligned and inside it.
unsafe fn shm_word<'a>(base: *mut u8, at: usize) -> &'a AtomicU32 {
    &*(base.add(at) as *const AtomicU32)
}

/// What a read transaction holds, without a connection: a `sqlite3_file` opened through SQLite's own VFS
/// (so SQLite's per-process bookkeeping of locks and of the `-shm` mapping is shared with every connection of
/// this process), holding a SHARED lock on the database file (as every connection in WAL mode does: no
/// application connection can then checkpoint and delete the WAL on close) and a shared lock on one WAL read-mark
/// slot, taken with the steps of SQLite's `walTryBeginRead`. ~1 KiB, where a connection holding a read
/// transaction keeps ~15 KiB (its page cache with page 1 in it, the pager's scratch page).
struct ReadLock {
    /// The name given to xOpen (`sqlite3_create_filename`): the VFS keeps a pointer to it while the file is open.
    name: *const c_char,
    /// `szOsFile` bytes from sqlite3_malloc; `pMethods` is non-null while the file is open.
    file: *mut ffi::sqlite3_file,
    /// The read-mark slot (0..5) locked, if any.
    slot: Option<c_int>,
}

// SAFETY: the VFS file has no thread affinity (SQLite is built thread-safe and guards the per-process lock and
// wal-index bookkeeping with its own mutexes); a ReadLock is used by one thread at a time (`&mut` / owner).
unsafe impl Send for ReadLock {}

/// What [`ReadLock::try_pin`] found.
enum PinTry {
    Held,
    /// Taken or changed by someone else meanwhile: try again.
    Retry,
    /// The wal-index is not mapped or not initialised: a connection's read must rebuild it first.
    NeedsIndex,
}

impl ReadLock {
    fn open(path: &Path) -> Result<ReadLock> {
        use std::os::unix::ffi::OsStrExt;
        let fail = |what: &str, rc: c_int| {
            Error::sqlite(
                format!("pinning {}: {what}", path.display()),
                rusqlite::Error::SqliteFailure(ffi::Error::new(rc), None),
            )
        };
        let cpath = std::ffi::CString::new(path.as_os_str().as_bytes())
            .map_err(|_| Error::Usage(format!("{}: a path with a NUL byte", path.display())))?;
        // SAFETY: plain SQLite API calls; every pointer handed over is valid for the call, the buffers are of the
        // size told, and what SQLite returns is checked for null before use.
        unsafe {
            let rc = ffi::sqlite3_initialize();
            if rc != ffi::SQLITE_OK {
                return Err(fail("initialising SQLite", rc));
            }
            let vfs = ffi::sqlite3_vfs_find(std::ptr::null());
            if vfs.is_null() {
                return Err(fail("no default VFS", ffi::SQLITE_ERROR));
            }
            let (Some(x_full), Some(x_open)) = ((*vfs).xFullPathname, (*vfs).xOpen) else {
                return Err(fail("VFS without xOpen", ffi::SQLITE_ERROR));
            };
            let mut full = vec![0 as c_char; (*vfs).mxPathname.max(1) as usize + 1];
            let rc = x_full(vfs, cpath.as_ptr(), full.len() as c_int, full.as_mut_ptr());
            if rc != ffi::SQLITE_OK {
                return Err(fail("resolving the path", rc));
            }
            let name = ffi::sqlite3_create_filename(full.as_ptr(), c"".as_ptr(), c"".as_ptr(), 0, std::ptr::null_mut());
            let file = ffi::sqlite3_malloc((*vfs).szOsFile) as *mut ffi::sqlite3_file;
            if name.is_null() || file.is_null() {
                ffi::sqlite3_free_filename(name);
                ffi::sqlite3_free(file as *mut c_void);
                return Err(fail("out of memory", ffi::SQLITE_NOMEM));
            }
            std::ptr::write_bytes(file as *mut u8, 0, (*vfs).szOsFile as usize);
            let lock = ReadLock { name, file, slot: None };
            let mut out_flags: c_int = 0;
            let rc = x_open(vfs, name, file, ffi::SQLITE_OPEN_MAIN_DB | ffi::SQLITE_OPEN_READWRITE, &mut out_flags);
            if rc != ffi::SQLITE_OK {
                return Err(fail("opening the database file", rc));
            }
            // The SHARED lock every WAL-mode connection holds while open; busy only for a moment while another
            // process tries for an exclusive lock.
            let Some(x_lock) = (*(*file).pMethods).xLock else {
                return Err(fail("VFS without xLock", ffi::SQLITE_ERROR));
            };
            let deadline = std::time::Instant::now() + BUSY_TIMEOUT;
            loop {
                match x_lock(file, ffi::SQLITE_LOCK_SHARED) {
                    ffi::SQLITE_OK => break,
                    ffi::SQLITE_BUSY if std::time::Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(1))
                    }
                    rc => return Err(fail("locking the database file", rc)),
                }
            }
            Ok(lock)
        }
    }

    /// The wal-index region `i` as mapped by SQLite, or None if the `-shm` file does not hold it (it is never
    /// extended from here).
    fn region(&self, i: c_int) -> Option<*mut u8> {
        let x_shm_map = self.methods()?.xShmMap?;
        // SAFETY: the file is open (methods() said so); xShmMap with bExtend=0 only maps what the -shm file holds,
        // and SQLite keeps the mapping until xShmUnmap (in close).
        unsafe {
            let mut region: *mut c_void = std::ptr::null_mut();
            if x_shm_map(self.file, i, SHM_REGION as c_int, 0, &mut region) != ffi::SQLITE_OK || region.is_null() {
                return None;
            }
            Some(region as *mut u8)
        }
    }

    /// xShmLock on read-mark slot `slot`; `flags` as SQLite's SQLITE_SHM_*.
    fn shm_lock(&self, slot: c_int, flags: c_int) -> c_int {
        match self.methods().and_then(|m| m.xShmLock) {
            // SAFETY: the file is open (methods() said so); SQLite refuses a lock on a file not attached to the
            // wal-index (region() attaches it).
            Some(x) => unsafe { x(self.file, WAL_READ_LOCK0 + slot, 1, flags) },
            None => ffi::SQLITE_IOERR_SHMLOCK,
        }
    }

    /// Locks the read mark for the WAL's current end (as a new read transaction would), then releases the one
    /// held before, if it was another. When the wal-index is not usable, a connection's read rebuilds it first.
    fn pin(&mut self, path: &Path) -> Result<()> {
        if self.methods().is_none() {
            // Closed by a reopen that failed: nothing held the WAL since, so this is no move of a held pin.
            return Err(Error::Other(format!("pinning {}: the file was closed", path.display())));
        }
        let deadline = std::time::Instant::now() + BUSY_TIMEOUT;
        let mut helper = None;
        let mut tries = 0u32;
        loop {
            let fail = |rc: c_int| {
                Error::sqlite(
                    format!("pinning {}", path.display()),
                    rusqlite::Error::SqliteFailure(ffi::Error::new(rc), None),
                )
            };
            match self.try_pin().map_err(fail)? {
                PinTry::Held => return Ok(()),
                PinTry::NeedsIndex if helper.is_none() && tries > 100 => {
                    // A connection's read transaction maps the wal-index and rebuilds it (recovery) if needed;
                    // it stays open until the lock is taken.
                    helper = Some(pinned_conn(path)?);
                }
                _ if std::time::Instant::now() >= deadline => return Err(fail(ffi::SQLITE_BUSY)),
                _ => {}
            }
            tries += 1;
            if tries > 100 {
                std::thread::sleep(Duration::from_micros(500));
            } else {
                std::thread::yield_now();
            }
        }
    }

    /// One attempt of SQLite's `walTryBeginRead` (sqlite3.c), for a reader that wants the whole WAL.
    fn try_pin(&mut self) -> std::result::Result<PinTry, c_int> {
        const SHARED: c_int = ffi::SQLITE_SHM_LOCK | ffi::SQLITE_SHM_SHARED;
        const EXCLUSIVE: c_int = ffi::SQLITE_SHM_LOCK | ffi::SQLITE_SHM_EXCLUSIVE;
        let Some(base) = self.region(0) else { return Ok(PinTry::NeedsIndex) };
        // SAFETY: region 0 is mapped while the file is open.
        let Some((ix, hdr)) = (unsafe { read_index(base) }) else { return Ok(PinTry::NeedsIndex) };
        // SAFETY: the read marks are 4-aligned words of region 0.
        let mark = |i: usize| unsafe { shm_word(base, CKPT_READ_MARKS + 4 * i) };
        // SAFETY: as above.
        let unchanged = || unsafe { read_index(base) }.is_some_and(|(_, now)| now == hdr);
        let mx = ix.mx_frame;
        // Everything is backfilled: read mark 0 (the database file alone), which lets the next writer restart
        // the WAL once and no checkpoint backfill meanwhile.
        if ix.backfilled == mx {
            let held = self.slot == Some(0);
            match self.shm_lock(0, SHARED) {
                ffi::SQLITE_OK => {
                    fence(Ordering::SeqCst);
                    if !unchanged() {
                        if !held {
                            self.shm_lock(0, ffi::SQLITE_SHM_UNLOCK | ffi::SQLITE_SHM_SHARED);
                        }
                        return Ok(PinTry::Retry);
                    }
                    return Ok(self.switch_to(0));
                }
                ffi::SQLITE_BUSY => {}
                rc => return Err(rc),
            }
        }
        // The largest mark at or below the end; set one to the end if none is there and a slot is free.
        let (mut best, mut slot) = (0u32, 0usize);
        for i in 1..WAL_NREADER {
            let m = mark(i).load(Ordering::SeqCst);
            if best <= m && m <= mx {
                (best, slot) = (m, i);
            }
        }
        if best < mx || slot == 0 {
            for i in 1..WAL_NREADER {
                if self.slot == Some(i as c_int) {
                    continue; // never taken exclusively by its own holder (SQLite's rule too)
                }
                match self.shm_lock(i as c_int, EXCLUSIVE) {
                    ffi::SQLITE_OK => {
                        mark(i).store(mx, Ordering::SeqCst);
                        (best, slot) = (mx, i);
                        self.shm_lock(i as c_int, ffi::SQLITE_SHM_UNLOCK | ffi::SQLITE_SHM_EXCLUSIVE);
                        break;
                    }
                    ffi::SQLITE_BUSY => {}
                    rc => return Err(rc),
                }
            }
        }
        if slot == 0 {
            return Ok(PinTry::Retry);
        }
        let held = self.slot == Some(slot as c_int);
        match self.shm_lock(slot as c_int, SHARED) {
            ffi::SQLITE_OK => {}
            ffi::SQLITE_BUSY => return Ok(PinTry::Retry),
            rc => return Err(rc),
        }
        fence(Ordering::SeqCst);
        if mark(slot).load(Ordering::SeqCst) != best || !unchanged() {
            if !held {
                self.shm_lock(slot as c_int, ffi::SQLITE_SHM_UNLOCK | ffi::SQLITE_SHM_SHARED);
            }
            return Ok(PinTry::Retry);
        }
        Ok(self.switch_to(slot as c_int))
    }

    /// Records `slot` as held, releasing the one held before if it was another.
    fn switch_to(&mut self, slot: c_int) -> PinTry {
        if let Some(old) = self.slot.replace(slot) {
            if old != slot {
                self.shm_lock(old, ffi::SQLITE_SHM_UNLOCK | ffi::SQLITE_SHM_SHARED);
            }
        }
        PinTry::Held
    }

    /// The file's methods while it is open; None once closed (or never opened), so that nothing is called on it.
    fn methods(&self) -> Option<&ffi::sqlite3_io_methods> {
        // SAFETY: `file` is null or szOsFile bytes of ours, zeroed before xOpen; pMethods is set by a successful
        // xOpen and cleared by close.
        unsafe { self.file.as_ref().and_then(|f| f.pMethods.as_ref()) }
    }

    /// Releases the read mark, the wal-index mapping, the database file lock and the file, in that order. After
    /// this every use of the lock fails (and a second close does nothing).
    fn close(&mut self) {
        if let Some(old) = self.slot.take() {
            self.shm_lock(old, ffi::SQLITE_SHM_UNLOCK | ffi::SQLITE_SHM_SHARED);
        }
        let Some(m) = self.methods() else { return };
        let m = *m;
        // SAFETY: the file is open (methods() said so); pMethods is cleared right after xClose.
        unsafe {
            if let Some(x) = m.xShmUnmap {
                x(self.file, 0);
            }
            if let Some(x) = m.xUnlock {
                x(self.file, ffi::SQLITE_LOCK_NONE);
            }
            if let Some(x) = m.xClose {
                x(self.file);
            }
            (*self.file).pMethods = std::ptr::null();
        }
    }
}

impl Drop for ReadLock {
    fn drop(&mut self) {
        self.close();
        // SAFETY: both were allocated by SQLite in open (free accepts null) and are not used after this.
        unsafe {
            ffi::sqlite3_free(self.file as *mut c_void);
            ffi::sqlite3_free_filename(self.name);
        }
    }
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

fn begin_pin_read(conn: &Connection, path: &Path) -> Result<()> {
    begin_read(conn).map_err(|e| Error::sqlite(format!("pinning {}", path.display()), e))
}

/// A new connection holding a read transaction.
fn pinned_conn(path: &Path) -> Result<Connection> {
    let conn = open_conn(path)?;
    begin_pin_read(&conn, path)?;
    Ok(conn)
}

/// A new read lock, taken while `conn` holds a read transaction: its read made SQLite map the wal-index (and
/// rebuild it if no process had it open), so the lock finds it valid. The transaction ends once the lock holds.
fn lock_beside(conn: Connection, path: &Path) -> Result<ReadLock> {
    let mut lock = ReadLock::open(path)?;
    lock.pin(path)?;
    end_read(&conn);
    Ok(lock)
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

    /// SQLite's heap in use in this process (bytes).
    fn sqlite_heap() -> i64 {
        // SAFETY: no preconditions.
        unsafe { ffi::sqlite3_memory_used() }
    }

    #[test]
    fn a_pin_keeps_no_connection_and_about_a_kilobyte_of_sqlite_memory() {
        let (dir, db, app) = app_db("small");
        app.execute_batch("CREATE TABLE t(a INTEGER PRIMARY KEY, b TEXT); INSERT INTO t VALUES (1, 'x')").unwrap();
        // SQLite's heap is per process: another test's connection (`cargo test` runs them in threads) may count
        // too, so the smallest of three rounds is taken.
        let mut per_pin = i64::MAX;
        for _ in 0..3 {
            let before = sqlite_heap();
            let mut pins: Vec<Pins> = (0..20).map(|_| Pins::open(&db).unwrap().0).collect();
            for p in &mut pins {
                p.advance().unwrap();
                p.checkpoint().unwrap();
                p.wal_index().unwrap();
            }
            per_pin = per_pin.min((sqlite_heap() - before) / 20);
        }
        // A connection holding a read transaction keeps > 10 KiB (page 1, the pager's scratch page, the cache).
        assert!(per_pin < 2048, "{per_pin} bytes of SQLite heap per pin");
        let pins = Pins::open(&db).unwrap();
        // No connection of walrust's has the WAL open: only the application's.
        assert_eq!(open_fds(&dir.join("a.db-wal")), 1);
        drop(pins);
        drop(app);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// The application's checkpoint in `mode`: (busy, frames in the WAL, frames checkpointed).
    fn app_checkpoint(app: &Connection, mode: &str) -> (i64, i64, i64) {
        app.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?))).unwrap()
    }

    /// Whether the application's TRUNCATE checkpoint is refused as busy (as when a pin holds the WAL).
    fn truncate_is_refused(app: &Connection) -> bool {
        app_checkpoint(app, "TRUNCATE").0 == 1
    }

    #[test]
    fn a_pin_holds_when_the_applications_readers_take_every_read_mark() {
        let (dir, db, app) = app_db("marks");
        app.execute_batch("PRAGMA wal_autocheckpoint=0; CREATE TABLE t(a INTEGER PRIMARY KEY, b TEXT)").unwrap();
        app.busy_timeout(Duration::ZERO).unwrap();
        let (mut pins, _) = Pins::open(&db).unwrap();
        // Four readers of the application, each in a read transaction at a different end of the WAL: every
        // read-mark slot > 0 is held at a mark below the end.
        let mut readers = Vec::new();
        for i in 0..4 {
            app.execute(&format!("INSERT INTO t VALUES (NULL, '{i}')"), []).unwrap();
            let r = Connection::open(&db).unwrap();
            r.execute_batch("BEGIN").unwrap();
            let _: i64 = r.query_row("SELECT count(*) FROM t", [], |r| r.get(0)).unwrap();
            readers.push(r);
        }
        app.execute("INSERT INTO t VALUES (NULL, 'last')", []).unwrap();
        pins.advance().unwrap();
        // The readers finish; the pin alone still keeps the WAL from restarting.
        for r in readers.drain(..) {
            r.execute_batch("COMMIT").unwrap();
        }
        assert!(truncate_is_refused(&app));
        assert!(std::fs::metadata(dir.join("a.db-wal")).unwrap().len() > 0);
        // Released: nothing holds the WAL any more.
        drop(pins);
        assert!(!truncate_is_refused(&app));
        assert_eq!(std::fs::metadata(dir.join("a.db-wal")).unwrap().len(), 0);
        drop(app);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_pin_on_a_fully_checkpointed_wal_allows_one_restart_and_no_backfill() {
        let (dir, db, app) = app_db("mark0");
        app.execute_batch("PRAGMA wal_autocheckpoint=0; CREATE TABLE t(a INTEGER PRIMARY KEY, b TEXT)").unwrap();
        app.execute_batch("INSERT INTO t VALUES (NULL, 'a'); PRAGMA wal_checkpoint(PASSIVE);").unwrap();
        app.busy_timeout(Duration::ZERO).unwrap();
        let (pins, _) = Pins::open(&db).unwrap();
        assert_eq!(pins.lock.slot, Some(0));
        let first = pins.wal_index().unwrap();
        // The next commit restarts the WAL (new salts)...
        app.execute("INSERT INTO t VALUES (NULL, 'b')", []).unwrap();
        let second = pins.wal_index().unwrap();
        assert_ne!((first.salt1, first.salt2), (second.salt1, second.salt2));
        assert_eq!(second.mx_frame, 1);
        // ... and no checkpoint can copy its frames into the database while the pin holds mark 0.
        let (busy, log, done) = app_checkpoint(&app, "PASSIVE");
        assert_eq!((busy, log, done), (0, 1, 0));
        assert_eq!(pins.wal_index().unwrap().backfilled, 0);
        drop(pins);
        drop(app);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_pin_on_a_wal_left_by_a_killed_writer_sees_its_committed_frames() {
        let (dir, db, app) = app_db("recover");
        app.execute_batch("PRAGMA wal_autocheckpoint=0; CREATE TABLE t(a INTEGER PRIMARY KEY, b TEXT)").unwrap();
        for i in 0..10 {
            app.execute(&format!("INSERT INTO t VALUES (NULL, '{i}')"), []).unwrap();
        }
        let frames = Pins::open(&db).unwrap().0.wal_index().unwrap().mx_frame;
        assert!(frames >= 11, "{frames}");
        // The files as a writer killed now leaves them, with a wal-index no process has open (stale zeros).
        let copy = dir.join("copy");
        std::fs::create_dir_all(&copy).unwrap();
        std::fs::copy(&db, copy.join("a.db")).unwrap();
        std::fs::copy(dir.join("a.db-wal"), copy.join("a.db-wal")).unwrap();
        std::fs::write(copy.join("a.db-shm"), vec![0u8; 32 * 1024]).unwrap();
        let (mut pins, _) = Pins::open(&copy.join("a.db")).unwrap();
        assert_eq!(pins.wal_index().unwrap().mx_frame, frames);
        pins.reopen().unwrap();
        assert_eq!(pins.wal_index().unwrap().mx_frame, frames);
        drop(pins);
        drop(app);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_released_lock_refuses_every_use_instead_of_pretending_to_hold() {
        let (dir, db, app) = app_db("closed");
        app.execute_batch("CREATE TABLE t(a INTEGER PRIMARY KEY)").unwrap();
        let (mut pins, _) = Pins::open(&db).unwrap();
        // What a reopen whose new pin failed leaves behind.
        pins.lock.close();
        assert!(pins.advance().is_err());
        assert!(pins.wal_index().is_err());
        assert!(pins.read_db(0, &mut [0u8; 100]).is_err());
        assert_eq!(pins.release_shared_memory(), 0);
        pins.lock.close();
        // Released for real: a TRUNCATE checkpoint is not held up by it.
        app.busy_timeout(Duration::ZERO).unwrap();
        assert!(!truncate_is_refused(&app));
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
    fn a_pin_moved_forward_still_holds_and_keeps_no_descriptor_of_the_wal() {
        let (dir, db, app) = app_db("handover");
        app.execute_batch("PRAGMA wal_autocheckpoint=0; CREATE TABLE t(a INTEGER PRIMARY KEY, b TEXT)").unwrap();
        app.busy_timeout(Duration::ZERO).unwrap();
        let wal = dir.join("a.db-wal");
        let (mut pins, _) = Pins::open(&db).unwrap();
        for round in 0..4 {
            app.execute_batch(&format!("INSERT INTO t VALUES (NULL, '{}')", "x".repeat(3000))).unwrap();
            pins.advance().unwrap();
            pins.checkpoint().unwrap();
            // Only the application has the WAL open: the pin has no connection, the checkpoint's is closed.
            assert_eq!(open_fds(&wal), 1, "round {round}");
            // Moving the pin dropped none of its locks: frames committed after the pin
            // cannot be checkpointed away (a TRUNCATE checkpoint is refused as busy, the WAL keeps them).
            app.execute_batch("INSERT INTO t VALUES (NULL, 'after the pin')").unwrap();
            let (busy, log, done) = app_checkpoint(&app, "TRUNCATE");
            assert_eq!(busy, 1, "round {round}: log {log}, checkpointed {done}");
            assert!(std::fs::metadata(&wal).unwrap().len() > 0, "round {round}");
        }
        // The pin moved with each advance: the frames before the last one may now be checkpointed, not the last.
        let (busy, log, done) = app_checkpoint(&app, "PASSIVE");
        assert_eq!(busy, 0);
        assert!(done > 0 && done < log, "log {log}, checkpointed {done}");
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
        let (busy, log, done) = app_checkpoint(&app, "TRUNCATE");
        assert_eq!(busy, 1, "log {log}, checkpointed {done}");
        assert!(std::fs::metadata(dir.join("a.db-wal")).unwrap().len() > 0);
        drop(pins);
        drop(app);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
