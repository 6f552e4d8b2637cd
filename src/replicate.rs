//! Read replicas: keep a local SQLite database current from a backup while applications hold it open.
//!
//! A [`Replica`] follows one database name in a storage location:
//!
//! - **Bootstrap**: when the local file does not exist it is restored from the newest restore point
//!   ([`restore::restore`]: streamed, every object verified, `integrity_check`, atomic rename).
//! - **Poll**: one LIST per poll, over the database's prefix `{name}/` with start-after = the last key of the
//!   current generation already considered. Keys are fixed-width hex (FORMAT.md §1), so that one LIST returns,
//!   in order, the new objects of the current generation and then every key of any newer generation: new
//!   changesets and a new generation both show up in a single request, and a poll that finds nothing costs
//!   exactly that one request and no GET.
//! - **Apply**: each changeset is streamed (SHA-256, zstd, HADBP trailer), its `prev_checksum` must continue the
//!   chain value of the position, and its pages are written through SQLite itself (the `sqlite_dbpage` virtual
//!   table, compiled in with `SQLITE_ENABLE_DBPAGE_VTAB`) in one `BEGIN IMMEDIATE` transaction, shrinking the
//!   file with `INSERT INTO sqlite_dbpage(pgno, data) VALUES (size + 1, NULL)` as its last statement. The
//!   replica is in WAL mode, so a reader on an open connection sees the state before or after the whole
//!   changeset, never a part of it, and never has to reopen the file. A corrupt object fails the transaction
//!   before COMMIT: the replica is left as it was.
//! - **Re-bootstrap**: a new generation on the primary, a chain break, or a gap in the changesets makes the
//!   replica restore the newest restore point into a temp file (verified as a restore is) and copy the pages
//!   that differ into the replica through `sqlite_dbpage`, again as one transaction, so open readers stay valid
//!   (renaming a new file into place would leave them reading the old inode). The reason is logged.
//! - **Position**: `REPLICA-walrust-replica` (JSON, written temp + fsync + rename + fsync dir after each commit;
//!   the replica is written with `synchronous=FULL`, so its commit is durable first). A restart resumes from
//!   it with no request at all. Crashing between the commit and the position write leaves the replica one
//!   changeset ahead; applying that changeset again gives the same pages, so resuming is still exact.
//!
//! - **Writes by others**: `PRAGMA data_version` is compared at every poll; a commit by another connection (an
//!   application writing to the replica, or a checkpoint that reset its WAL) makes the replica rebuild.
//!
//! Memory is one page buffer plus the decoders' windows; SQLite spills a large transaction to the WAL.

// nanoserde's derived JSON parser trips clippy::question_mark in its generated code.
#![allow(clippy::question_mark)]

use std::fs::{self, File};
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use nanoserde::{DeJson, SerJson};
use rusqlite::{params, Connection, OpenFlags, OptionalExtension};

use crate::error::{Error, Result};
use crate::keys::{self, Kind, ObjectKey};
use crate::log;
use crate::object::ObjectStream;
use crate::remote::Entry;
use crate::restore::{self, RestoreOptions, Target};
use crate::storage::StorageRef;

/// Version of the position file's layout.
pub const POSITION_VERSION: u32 = 1;

/// Default time between polls.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);

/// What a replica follows and where it writes.
#[derive(Debug, Clone)]
pub struct ReplicaOptions {
    /// The database's name in the storage (`app` for backups of `app.db`).
    pub name: String,
    /// The local replica file.
    pub local: PathBuf,
    /// Time between the starts of two polls (used by [`Replica::run`]).
    pub interval: Duration,
}

impl ReplicaOptions {
    /// Options for replicating `name` into `local`, polling every [`DEFAULT_INTERVAL`].
    pub fn new(name: impl Into<String>, local: impl Into<PathBuf>) -> Self {
        ReplicaOptions { name: name.into(), local: local.into(), interval: DEFAULT_INTERVAL }
    }
}

/// Where a replica stands, persisted in `REPLICA-walrust-replica`.
#[derive(Debug, Clone, PartialEq, Eq, DeJson, SerJson)]
pub struct Position {
    /// [`POSITION_VERSION`]; a file with another version is treated as absent.
    pub version: u32,
    /// The database's name in the storage.
    pub name: String,
    /// The storage location (`describe()`): a position for another bucket is not used.
    pub location: String,
    /// The generation the replica follows.
    pub generation: u64,
    /// Seq of the state the replica holds.
    pub seq: u64,
    /// Chain value after `seq` (what the next changeset's `prev_checksum` must be).
    pub chain: u64,
    /// Key of the last object applied.
    pub key: String,
    /// The LIST start-after key: the last key of `generation` already considered.
    pub cursor: String,
    /// The database's page size.
    pub page_size: u32,
    /// Inode of the replica file: a file replaced behind our back is re-bootstrapped, not patched.
    pub inode: u64,
}

/// How [`Replica::open`] found the replica.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Opened {
    /// The local file did not exist: restored from the newest restore point.
    Bootstrapped,
    /// Resumed from the position file, without a request.
    Resumed,
    /// The file existed but its position could not be used; rebuilt in place. The reason is in the string.
    Rebootstrapped(String),
}

/// The result of one poll.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PollOutcome {
    /// Nothing new (one LIST, no GET).
    Idle,
    /// Changesets were applied, each as one transaction.
    Applied {
        /// How many.
        changesets: u64,
        /// The seq the replica is at now.
        seq: u64,
    },
    /// The replica was rebuilt in place from the newest restore point.
    Rebootstrapped {
        /// Why (a new generation, a chain break, a gap); also logged.
        reason: String,
        /// The generation the replica follows now.
        generation: u64,
        /// The seq the replica is at now.
        seq: u64,
    },
}

/// A local read replica of one backed-up database. See the module documentation.
pub struct Replica {
    storage: StorageRef,
    opts: ReplicaOptions,
    conn: Connection,
    pos: Position,
    pos_path: PathBuf,
    opened: Opened,
    /// Newer generations up to this one were found unusable by a re-bootstrap: not a reason to try again.
    unusable_through: u64,
    /// `PRAGMA data_version` after our last commit: it changes when another connection commits to the replica.
    data_version: i64,
    buf: Vec<u8>,
    _lock: File,
}

impl std::fmt::Debug for Replica {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replica").field("opts", &self.opts).field("pos", &self.pos).finish()
    }
}

/// `replica.db` -> `replica.db-walrust-replica`.
pub fn position_path(local: &Path) -> PathBuf {
    sibling(local, "-walrust-replica")
}

fn sibling(p: &Path, suffix: &str) -> PathBuf {
    let mut s = p.as_os_str().to_os_string();
    s.push(suffix);
    PathBuf::from(s)
}

impl Position {
    /// Reads a position file; `Ok(None)` when there is none or it does not parse (treated as absent).
    pub fn load(path: &Path) -> Result<Option<Position>> {
        Ok(crate::state::load_json::<Position>(path)?.filter(|p| p.version == POSITION_VERSION))
    }

    /// Writes durably: temp file, fsync, rename, fsync the directory.
    pub fn save(&self, path: &Path) -> Result<()> {
        crate::state::write_durably(path, self.serialize_json().as_bytes())
    }

    /// The position right after restoring `report`'s plan into a replica file with inode `inode`.
    fn after_restore(name: &str, location: String, report: &restore::Report, inode: u64) -> Position {
        let last = report.plan.objects.last().map(|e| e.key_str.clone()).unwrap_or_default();
        Position {
            version: POSITION_VERSION,
            name: name.to_string(),
            location,
            generation: report.plan.generation,
            seq: report.plan.seq,
            chain: report.chain,
            key: last.clone(),
            cursor: last,
            page_size: report.page_size,
            inode,
        }
    }
}

impl Replica {
    /// Opens the replica at `opts.local`: bootstraps it when the file does not exist, resumes from its
    /// position file, or rebuilds it in place when the position cannot be used. One process per replica (an
    /// flock on `REPLICA-walrust-replica.lock`).
    pub fn open(storage: StorageRef, opts: ReplicaOptions) -> Result<Replica> {
        if !keys::valid_name(&opts.name) {
            return Err(Error::Usage(format!("invalid database name '{}'", opts.name)));
        }
        let local = opts.local.clone();
        let pos_path = position_path(&local);
        let lock = lock(&local)?;
        let location = storage.describe();
        let exists = match fs::symlink_metadata(&local) {
            Ok(_) => true,
            Err(e) if e.kind() == io::ErrorKind::NotFound => false,
            Err(e) => return Err(Error::io(local.display().to_string(), e)),
        };
        if !exists {
            // No file: nobody can have it open. A restore renames a verified file into place (and removes a
            // stale -wal/-shm first, which SQLite would otherwise apply to the new file).
            let ropts =
                RestoreOptions { output: local.clone(), force: true, target: Target::Latest, write_state: false };
            let report = restore::restore(storage.as_ref(), &opts.name, &ropts)?;
            let conn = open_conn(&local)?;
            let pos = Position::after_restore(&opts.name, location, &report, inode(&local)?);
            pos.save(&pos_path)?;
            log::info(&format!(
                "{}: bootstrapped {} from generation {:016x} seq {} ({} objects)",
                opts.name,
                local.display(),
                pos.generation,
                pos.seq,
                report.plan.objects.len()
            ));
            let mut r = Replica {
                storage,
                opts,
                conn,
                pos,
                pos_path,
                opened: Opened::Bootstrapped,
                unusable_through: 0,
                data_version: 0,
                buf: Vec::new(),
                _lock: lock,
            };
            r.data_version = data_version(&r.conn)?;
            return Ok(r);
        }
        let conn = open_conn(&local)?;
        let page_size: u32 = conn
            .query_row("PRAGMA replica.page_size", [], |r| r.get(0))
            .map_err(|e| Error::sqlite(format!("reading {}", local.display()), e))?;
        let ino = inode(&local)?;
        let loaded = Position::load(&pos_path)?;
        let why = match &loaded {
            None => Some("it has no usable position file".to_string()),
            Some(p) if p.name != opts.name || p.location != location => {
                Some(format!("its position file is for '{}' in {}", p.name, p.location))
            }
            Some(p) if p.inode != ino => Some("the file was replaced since its position was written".into()),
            Some(p) if p.page_size != page_size => Some("its page size differs from its position file's".into()),
            Some(_) => None,
        };
        let placeholder = Position {
            version: POSITION_VERSION,
            name: opts.name.clone(),
            location,
            generation: 0,
            seq: 0,
            chain: 0,
            key: String::new(),
            cursor: String::new(),
            page_size,
            inode: ino,
        };
        let mut r = Replica {
            storage,
            opts,
            conn,
            pos: loaded.clone().unwrap_or(placeholder),
            pos_path,
            opened: Opened::Resumed,
            unusable_through: 0,
            data_version: 0,
            buf: Vec::new(),
            _lock: lock,
        };
        match why {
            None => log::info(&format!(
                "{}: resuming {} at generation {:016x} seq {}",
                r.opts.name,
                r.opts.local.display(),
                r.pos.generation,
                r.pos.seq
            )),
            Some(reason) => {
                r.rebootstrap(&reason)?;
                r.opened = Opened::Rebootstrapped(reason);
            }
        }
        r.data_version = data_version(&r.conn)?;
        Ok(r)
    }

    /// How [`Replica::open`] found the replica.
    pub fn opened(&self) -> &Opened {
        &self.opened
    }

    /// The replica's current position.
    pub fn position(&self) -> &Position {
        &self.pos
    }

    /// The options it was opened with.
    pub fn options(&self) -> &ReplicaOptions {
        &self.opts
    }

    /// One poll: one LIST (more only when over 1000 new keys are pending), then the new changesets applied in
    /// order, each as one SQLite transaction; or a re-bootstrap when the stream cannot be continued.
    pub fn poll_once(&mut self) -> Result<PollOutcome> {
        if data_version(&self.conn)? != self.data_version {
            // Pages written by anyone else would be mixed with the primary's: start again from a clean copy.
            let reason = "the replica was changed by another connection (applications must only read it)";
            return self.rebootstrap_outcome(reason, 0);
        }
        let name = self.opts.name.clone();
        let prefix = keys::db_prefix(&name);
        let mut applied = 0u64;
        let mut moved = false;
        loop {
            let page = self.storage.list_page(&prefix, Some(&self.pos.cursor), false, None)?;
            let more = page.next.is_some();
            let mut advanced = false;
            for o in page.objects {
                // Other files under the prefix (compaction decisions) sort after every generation: never
                // move the cursor past them, or a later generation would be missed.
                let Some(key) = ObjectKey::parse(&name, &o.key) else { continue };
                if key.generation < self.pos.generation {
                    continue;
                }
                if key.generation > self.pos.generation {
                    if key.generation <= self.unusable_through {
                        continue;
                    }
                    let reason = format!("generation {:016x} appeared on the primary", key.generation);
                    return self.rebootstrap_outcome(&reason, key.generation);
                }
                let entry = Entry { key, key_str: o.key, size: o.size };
                let seq = entry.key.seq;
                match entry.key.kind {
                    Kind::Changeset if seq == self.pos.seq + 1 => {
                        if let Some(reason) = self.apply_changeset(&entry)? {
                            return self.rebootstrap_outcome(&reason, 0);
                        }
                        applied += 1;
                        moved = false; // saved with the changeset
                    }
                    Kind::Changeset if seq <= self.pos.seq => {
                        let reason = format!(
                            "a second changeset for seq {seq} ({}) after {} (another writer?)",
                            entry.key_str, self.pos.key
                        );
                        return self.rebootstrap_outcome(&reason, 0);
                    }
                    Kind::Snapshot | Kind::Base if seq <= self.pos.seq => {
                        // A snapshot of a state we already hold.
                        self.pos.cursor = entry.key_str;
                        moved = true;
                    }
                    _ => {
                        let reason = format!(
                            "changeset seq {} is missing before {} (compacted?)",
                            self.pos.seq + 1,
                            entry.key_str
                        );
                        return self.rebootstrap_outcome(&reason, 0);
                    }
                }
                advanced = true;
            }
            if !more || !advanced {
                break;
            }
        }
        if moved {
            // The cursor passed snapshots after the last save.
            self.pos.save(&self.pos_path)?;
        }
        Ok(if applied == 0 {
            PollOutcome::Idle
        } else {
            PollOutcome::Applied { changesets: applied, seq: self.pos.seq }
        })
    }

    /// Polls every `interval` until `stop` is set. Storage failures and SQLite lock contention are logged and
    /// retried at the next poll; anything else (corruption, an unusable replica) ends the loop with the error.
    pub fn run(&mut self, stop: &AtomicBool) -> Result<()> {
        let mut failing = false;
        while !stop.load(Ordering::Relaxed) {
            let started = Instant::now();
            match self.poll_once() {
                Ok(PollOutcome::Applied { changesets, seq }) => {
                    log::debug(&format!("{}: applied {changesets} changesets, now at seq {seq}", self.opts.name));
                    failing = false;
                }
                Ok(_) => failing = false,
                Err(e) if retryable(&e) => {
                    if !failing {
                        log::warn(&format!("{}: {e}; retrying every {:?}", self.opts.name, self.opts.interval));
                    }
                    failing = true;
                }
                Err(e) => return Err(e),
            }
            crate::watch::sleep_until(stop, self.opts.interval.saturating_sub(started.elapsed()));
        }
        Ok(())
    }

    fn rebootstrap_outcome(&mut self, reason: &str, trigger_generation: u64) -> Result<PollOutcome> {
        self.rebootstrap(reason)?;
        if trigger_generation > self.pos.generation {
            // The generation that made us look is not usable yet (or at all): do not rebuild on every poll.
            self.unusable_through = self.unusable_through.max(trigger_generation);
        }
        Ok(PollOutcome::Rebootstrapped {
            reason: reason.to_string(),
            generation: self.pos.generation,
            seq: self.pos.seq,
        })
    }

    /// Restores the newest restore point into a temp file (verified end to end), then copies every page that
    /// differs into the replica through `sqlite_dbpage` in one transaction and truncates it to size.
    fn rebootstrap(&mut self, reason: &str) -> Result<()> {
        let name = self.opts.name.clone();
        let local = self.opts.local.clone();
        log::info(&format!("{name}: re-bootstrapping {} from the newest restore point: {reason}", local.display()));
        let tmp = temp_path(&local);
        let ropts = RestoreOptions { output: tmp.clone(), force: true, target: Target::Latest, write_state: false };
        let result = restore::restore(self.storage.as_ref(), &name, &ropts)
            .and_then(|report| self.copy_in(&tmp, &report).map(|written| (report, written)));
        remove_with_sidecars(&tmp);
        let (report, written) = result?;
        self.pos = Position::after_restore(&name, self.storage.describe(), &report, inode(&local)?);
        self.pos.save(&self.pos_path)?;
        self.data_version = data_version(&self.conn)?;
        log::info(&format!(
            "{name}: re-bootstrapped {} to generation {:016x} seq {} ({} pages, {written} rewritten)",
            local.display(),
            self.pos.generation,
            self.pos.seq,
            report.db_pages
        ));
        Ok(())
    }

    /// Copies the restored file `src` into the replica as one transaction; returns the pages written.
    fn copy_in(&mut self, src: &Path, report: &restore::Report) -> Result<u64> {
        let local = self.opts.local.clone();
        let page_size: u32 = self
            .conn
            .query_row("PRAGMA replica.page_size", [], |r| r.get(0))
            .map_err(|e| Error::sqlite(format!("reading {}", local.display()), e))?;
        if page_size != report.page_size {
            return Err(Error::Other(format!(
                "the primary's page size is now {} but {} has {page_size}: a replica cannot change its page size under \
                 open readers; stop the readers, remove {} and start again",
                report.page_size,
                local.display(),
                local.display()
            )));
        }
        let f = File::open(src).map_err(|e| Error::io(format!("opening {}", src.display()), e))?;
        let ps = page_size as usize;
        let mut page = vec![0u8; ps];
        let ctx = format!("writing {}", local.display());
        // The current pages are read through a second connection holding a read transaction on the state before
        // ours: reading sqlite_dbpage verifies the schema cookie of every attached database, so reading through
        // the writing connection after page 1 was written would re-parse a half-written schema.
        let old =
            Connection::open_with_flags(&local, OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX)
                .map_err(|e| Error::sqlite(format!("opening {}", local.display()), e))?;
        old.busy_timeout(Duration::from_secs(5))
            .map_err(|e| Error::sqlite(format!("opening {}", local.display()), e))?;
        old.execute_batch("BEGIN; SELECT count(*) FROM sqlite_dbpage WHERE pgno = 1;")
            .map_err(|e| Error::sqlite(format!("reading {}", local.display()), e))?;
        begin(&self.conn, &ctx)?;
        let res = (|| -> Result<u64> {
            let sq = |e| Error::sqlite(ctx.clone(), e);
            let mut read = old.prepare("SELECT data FROM sqlite_dbpage WHERE pgno = ?1").map_err(sq)?;
            let mut write = self.conn.prepare_cached(INSERT_PAGE).map_err(sq)?;
            let mut written = 0u64;
            for pgno in 1..=report.db_pages as u64 {
                f.read_exact_at(&mut page, (pgno - 1) * ps as u64)
                    .map_err(|e| Error::io(format!("reading {}", src.display()), e))?;
                let same = read
                    .query_row(params![pgno as i64], |r| Ok(r.get_ref(0)?.as_blob().ok() == Some(&page[..])))
                    .optional()
                    .map_err(|e| Error::sqlite(format!("{ctx}: reading page {pgno}"), e))?
                    .unwrap_or(false);
                if !same {
                    write
                        .execute(params![pgno as i64, &page[..]])
                        .map_err(|e| Error::sqlite(format!("{ctx}: writing page {pgno}"), e))?;
                    written += 1;
                }
            }
            // Last statement of the transaction: a later page write would cancel the truncation.
            write
                .execute(params![report.db_pages as i64 + 1, rusqlite::types::Null])
                .map_err(|e| Error::sqlite(format!("{ctx}: truncating"), e))?;
            Ok(written)
        })();
        finish(&self.conn, res, &ctx)
    }

    /// Applies one changeset (`seq == position.seq + 1`) as one transaction. `Ok(Some(reason))` when it does not
    /// continue the chain (nothing was written): the caller re-bootstraps.
    fn apply_changeset(&mut self, e: &Entry) -> Result<Option<String>> {
        let key = &e.key_str;
        let corrupt = |what: String| Error::Corrupt(format!("object {key} is corrupt: {what}"));
        let mut obj = ObjectStream::open_entry(self.storage.as_ref(), e)?;
        let h = *obj.header();
        if h.seq != e.key.seq || h.created_ms != e.key.commit_ms {
            return Err(corrupt(format!(
                "its header says seq {} at {} but its key says seq {} at {} (copied from elsewhere?)",
                h.seq, h.created_ms, e.key.seq, e.key.commit_ms
            )));
        }
        if h.flags != 0 {
            return Err(corrupt(format!("its flags {:#04x} do not match its kind", h.flags)));
        }
        if h.prev_checksum != self.pos.chain {
            return Ok(Some(format!(
                "chain broken at {key}: it continues {:016x} but the replica is at {:016x}",
                h.prev_checksum, self.pos.chain
            )));
        }
        if h.page_size != self.pos.page_size {
            return Ok(Some(format!("page size changed to {} at {key}", h.page_size)));
        }
        let ctx = format!("writing {}", self.opts.local.display());
        begin(&self.conn, &ctx)?;
        let res = write_object(&self.conn, &mut obj, h.page_size, &mut self.buf, key, &ctx);
        let checksum = finish(&self.conn, res, &ctx)?;
        self.data_version = data_version(&self.conn)?;
        self.pos.seq = e.key.seq;
        self.pos.chain = checksum;
        self.pos.key = key.clone();
        self.pos.cursor = key.clone();
        self.pos.save(&self.pos_path)?;
        Ok(None)
    }
}

/// The replica is attached as `replica` to an in-memory main database (see `open_conn`). Only ever write with
/// it: a read of sqlite_dbpage checks every attached schema (see `copy_in`).
const INSERT_PAGE: &str = "INSERT INTO sqlite_dbpage(pgno, data, schema) VALUES (?1, ?2, 'replica')";

/// Streams a changeset's records into the open transaction; returns its trailer checksum once the object's
/// SHA-256 and trailer have verified.
fn write_object(
    conn: &Connection,
    obj: &mut ObjectStream,
    page_size: u32,
    buf: &mut Vec<u8>,
    key: &str,
    ctx: &str,
) -> Result<u64> {
    let corrupt = |what: String| Error::Corrupt(format!("object {key} is corrupt: {what}"));
    let sq = |e| Error::sqlite(ctx.to_string(), e);
    let mut write = conn.prepare_cached(INSERT_PAGE).map_err(sq)?;
    while let Some(pgno) = obj.next_page(buf, page_size)? {
        write.execute(params![pgno as i64, &buf[..]]).map_err(sq)?;
    }
    let checksum = obj.checksum().ok_or_else(|| corrupt("stream ended early".into()))?;
    let size = obj.db_pages().filter(|&n| n > 0).ok_or_else(|| corrupt("no commit record".into()))?;
    // Last statement: shrinks the database when the changeset made it smaller (a later page write would
    // cancel it); a no-op otherwise.
    write.execute(params![size as i64 + 1, rusqlite::types::Null]).map_err(sq)?;
    Ok(checksum)
}

/// Changes when another connection commits to the replica (not with our own commits).
fn data_version(conn: &Connection) -> Result<i64> {
    conn.query_row("PRAGMA replica.data_version", [], |r| r.get(0))
        .map_err(|e| Error::sqlite("reading the replica's data_version", e))
}

fn begin(conn: &Connection, ctx: &str) -> Result<()> {
    conn.execute_batch("BEGIN IMMEDIATE").map_err(|e| Error::sqlite(format!("{ctx}: starting the transaction"), e))
}

/// COMMIT on success, ROLLBACK (leaving the replica as it was) on any error.
fn finish<T>(conn: &Connection, res: Result<T>, ctx: &str) -> Result<T> {
    match res {
        Ok(v) => match conn.execute_batch("COMMIT") {
            Ok(()) => Ok(v),
            Err(e) => {
                let _ = conn.execute_batch("ROLLBACK");
                Err(Error::sqlite(format!("{ctx}: committing"), e))
            }
        },
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK");
            Err(e)
        }
    }
}

/// The replica's writing connection: WAL mode (readers see whole transactions), `synchronous=FULL` (a commit is
/// durable before the position that names it), and `sqlite_dbpage` present.
///
/// The replica is ATTACHed (as `replica`) to an in-memory main database rather than opened as main. Statements
/// on `sqlite_dbpage` verify the schema cookie of the database the table lives in, which is main; were that the
/// replica, a changeset that writes page 1 (a new schema cookie) would make SQLite re-read the schema in the
/// middle of the transaction, from half-written pages, and fail ("malformed database schema"). The attached
/// replica's schema is never consulted while pages are written.
fn open_conn(path: &Path) -> Result<Connection> {
    let ctx = || format!("opening {}", path.display());
    let sq = |e| Error::sqlite(ctx(), e);
    let conn = Connection::open_in_memory_with_flags(
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(sq)?;
    conn.busy_timeout(Duration::from_secs(5)).map_err(sq)?;
    let file = path.to_str().ok_or_else(|| Error::Usage(format!("{}: the path is not UTF-8", path.display())))?;
    conn.execute("ATTACH DATABASE ?1 AS replica", [file]).map_err(sq)?;
    let mode: String = conn.query_row("PRAGMA replica.journal_mode=WAL", [], |r| r.get(0)).map_err(sq)?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(Error::Other(format!("{}: cannot switch the replica to WAL mode (got {mode})", path.display())));
    }
    conn.execute_batch("PRAGMA replica.synchronous=FULL").map_err(sq)?;
    conn.prepare(INSERT_PAGE).map_err(|e| {
        Error::Other(format!("this SQLite has no sqlite_dbpage (built without SQLITE_ENABLE_DBPAGE_VTAB): {e}"))
    })?;
    Ok(conn)
}

/// Lock/contention errors and storage failures are waited out; the rest stop the replica.
fn retryable(e: &Error) -> bool {
    match e {
        Error::Storage { .. } => true,
        Error::Sqlite { source: rusqlite::Error::SqliteFailure(f, _), .. } => {
            matches!(f.code, rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
        }
        _ => false,
    }
}

fn inode(p: &Path) -> Result<u64> {
    fs::metadata(p).map(|m| m.ino()).map_err(|e| Error::io(p.display().to_string(), e))
}

fn temp_path(local: &Path) -> PathBuf {
    let name = local.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "replica".into());
    local.with_file_name(format!(".{name}.walrust-replica-{}", std::process::id()))
}

fn remove_with_sidecars(p: &Path) {
    let _ = fs::remove_file(p);
    for s in ["-wal", "-shm", "-journal"] {
        let _ = fs::remove_file(sibling(p, s));
    }
}

/// One replicate per replica file: an exclusive lock on `REPLICA-walrust-replica.lock`.
fn lock(local: &Path) -> Result<File> {
    let p = sibling(&position_path(local), ".lock");
    crate::state::lock_exclusive(&p, || {
        format!("another walrust is already replicating into {} (lock {} is held)", local.display(), p.display())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page_count(c: &Connection) -> i64 {
        c.query_row("PRAGMA page_count", [], |r| r.get(0)).unwrap()
    }

    /// The bundled SQLite has sqlite_dbpage, writes through it are transactional, a NULL insert as the last
    /// statement truncates, and schema changes written page by page (page 1 first) do not make the writing
    /// connection parse a half-written schema.
    #[test]
    fn sqlite_dbpage_writes_and_truncates() {
        let dir = std::env::temp_dir().join(format!("walrust-dbpage-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let (a, b) = (dir.join("a.db"), dir.join("b.db"));
        let src = Connection::open(&a).unwrap();
        src.execute_batch("PRAGMA journal_mode=WAL; CREATE TABLE t(x);").unwrap();
        for _ in 0..20 {
            src.execute("INSERT INTO t VALUES (randomblob(3000))", []).unwrap();
        }
        {
            let init = Connection::open(&b).unwrap();
            init.execute_batch(
                "PRAGMA journal_mode=WAL; CREATE TABLE junk(x); INSERT INTO junk VALUES (randomblob(200000));",
            )
            .unwrap();
        }
        let dst = open_conn(&b).unwrap();
        assert!(page_count(&Connection::open(&b).unwrap()) > page_count(&src));
        let copy = |src: &Connection, dst: &Connection| {
            let n = page_count(src);
            dst.execute_batch("BEGIN IMMEDIATE").unwrap();
            for p in 1..=n {
                let data: Vec<u8> =
                    src.query_row("SELECT data FROM sqlite_dbpage WHERE pgno = ?1", [p], |r| r.get(0)).unwrap();
                dst.execute(INSERT_PAGE, params![p, data]).unwrap();
            }
            dst.execute(INSERT_PAGE, params![n + 1, rusqlite::types::Null]).unwrap();
            dst.execute_batch("COMMIT").unwrap();
        };
        let reader = Connection::open_with_flags(&b, OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
        copy(&src, &dst);
        assert_eq!(page_count(&reader), page_count(&src), "shrunk to the source's size");
        let n: i64 = reader.query_row("SELECT count(*) FROM t", [], |r| r.get(0)).unwrap();
        assert_eq!(n, 20, "an open reader sees the new content and schema");
        let ok: String = reader.query_row("PRAGMA integrity_check", [], |r| r.get(0)).unwrap();
        assert_eq!(ok, "ok");
        // Growth with new tables whose root pages lie beyond the old end, several times.
        for round in 0..5 {
            src.execute_batch(&format!(
                "CREATE TABLE n{round}(x); INSERT INTO n{round} VALUES (randomblob(50000)); CREATE INDEX i{round} ON n{round}(x);"
            ))
            .unwrap();
            src.execute("INSERT INTO t VALUES (randomblob(10000))", []).unwrap();
            copy(&src, &dst);
            let n: i64 = reader.query_row("SELECT count(*) FROM t", [], |r| r.get(0)).unwrap();
            assert_eq!(n, 21 + round);
            assert_eq!(page_count(&reader), page_count(&src));
            let ok: String = reader.query_row("PRAGMA integrity_check", [], |r| r.get(0)).unwrap();
            assert_eq!(ok, "ok");
        }
        drop((src, dst, reader));
        fs::remove_dir_all(&dir).unwrap();
    }
}
