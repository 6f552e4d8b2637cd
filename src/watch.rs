//! One database's replication loop: read committed WAL frames, ship them as chained changesets, take
//! snapshots, keep the WAL bounded.
//!
//! The loop (one OS thread per database):
//! 1. `tick` (every `check_interval`): fstat the WAL. Unchanged -> nothing to do (an idle database costs one
//!    fstat, zero requests).
//! 2. `sync`: read the WAL header; read the whole committed transactions after the cursor; re-read the header
//!    (a read during which the WAL restarted is discarded and redone). Upload them as one changeset, at most
//!    one upload per `sync_interval` (an isolated commit goes at once; a busy database is coalesced).
//! 3. Only after the storage acknowledged the object: advance the cursor, the chain and the state file, then
//!    move the pin forward (see sqlite.rs) and checkpoint when the WAL is large.
//!
//! Continuity (invariant 8): the chain continues across a WAL restart only when the restart was observed by
//! this process while it held its pin since its last complete read (then exactly one restart happened and no
//! frame of the old cycle can have been unread, see sqlite.rs and `follow_restart`). Anything else (a restart
//! while walrust was down that the database file's stamp cannot vouch for, a missing WAL, a replaced database)
//! starts a new generation with a snapshot.

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::error::{Error, Result};
use crate::hadbp::{self, Header};
use crate::keys::{self, Kind};
use crate::log;
use crate::object::{self, ObjectMeta, RecordSource};
use crate::remote;
use crate::semaphore::Semaphore;
use crate::sqlite::Pins;
use crate::state::{state_path, FileStamp, LocalState, Pending, WalPosition, STATE_VERSION};
use crate::storage::StorageRef;
use crate::wal::{self, CommittedBatch, WalCursor, WalHeader};

/// Consecutive failed loop iterations (retried with backoff, about a minute) before an `uploads_failing` webhook.
const FAILURES_BEFORE_WEBHOOK: u32 = 5;

/// How often an idle, caught-up database moves its pin, so that an application's own checkpoint waiting for
/// readers (TRUNCATE, RESTART, FULL) is held up by walrust for at most about this long.
const REPIN_INTERVAL: Duration = Duration::from_millis(250);
/// How often an idle database checks that its file was not deleted or replaced, and looks for a snapshot request.
const IDLE_CHECK_INTERVAL: Duration = Duration::from_secs(1);
/// With file change notifications (crate::notify), a caught-up loop that saw nothing happen for HOT_PERIOD waits
/// up to IDLE_WAIT for one instead of the check interval. HOT_PERIOD covers what gives no notification: the
/// wal-index's nBackfill moves after a checkpoint's last write to the database file, and the application's
/// TRUNCATE then waits for walrust to re-pin.
const HOT_PERIOD: Duration = Duration::from_secs(3);
const IDLE_WAIT: Duration = Duration::from_secs(15);
/// A look that found the WAL written but nothing new published looks again this soon: the writer publishes
/// right after writing (one notification for both).
const PUBLISH_WAIT: Duration = Duration::from_millis(2);

/// Settings of one database's loop.
#[derive(Debug, Clone, PartialEq)]
pub struct WatchOptions {
    /// Name of the database in the bucket.
    pub name: String,
    /// How often the WAL is checked (an fstat).
    pub check_interval: Duration,
    /// At most one upload per this interval (the request budget); an isolated commit is shipped at once.
    pub sync_interval: Duration,
    /// Snapshot when this much time has passed since the last one and something changed.
    pub snapshot_interval: Duration,
    /// Run a PASSIVE checkpoint once the shipped WAL holds this many frames.
    pub checkpoint_frames: u32,
    /// Above this WAL size, force a restart point: take the write lock briefly (at most the time to ship what
    /// committed since the last sync and copy frames into the database), checkpoint, and re-pin on read mark 0
    /// so that the next writer restarts the WAL. Needed when the application writes without pause.
    pub checkpoint_full_bytes: u64,
    /// Split the shipping of a long WAL into changesets of about this many frames (at commit boundaries).
    pub batch_frames_max: u32,
    /// Start a new generation even when the bucket holds backups this database's state cannot account for.
    pub new_generation: bool,
    /// Above this WAL size (uploads not keeping up, usually storage down: the WAL is where unshipped commits
    /// wait) log a warning and send a `wal_over_threshold` webhook, once until the WAL is back under half.
    pub wal_warn_bytes: u64,
    /// When run by a [`Replicator`](crate::replicator::Replicator): its thread runs this many nice levels below
    /// the process (see `priority`), so that a busy application keeps its CPU.
    pub nice: u8,
}

impl WatchOptions {
    /// Defaults for the database `name`: check every 100 ms, at most one upload per second, a snapshot every
    /// hour, PASSIVE checkpoint at 1000 shipped frames, forced restart point above a 32 MiB WAL, changesets of
    /// at most about 4096 frames, no forced new generation, 10 nice levels below the process.
    pub fn new(name: impl Into<String>) -> Self {
        WatchOptions {
            name: name.into(),
            check_interval: Duration::from_millis(100),
            sync_interval: Duration::from_secs(1),
            snapshot_interval: Duration::from_secs(3600),
            checkpoint_frames: 1000,
            checkpoint_full_bytes: 32 * 1024 * 1024,
            batch_frames_max: 4096,
            new_generation: false,
            wal_warn_bytes: 256 * 1024 * 1024,
            nice: crate::priority::DEFAULT_NICE,
        }
    }
}

/// Counters a caller can read (tests, metrics).
#[derive(Debug, Clone, Copy, Default)]
pub struct WatchStats {
    /// Changesets uploaded.
    pub changesets: u64,
    /// Snapshots uploaded, base and mid-generation.
    pub snapshots: u64,
    /// New generations started (each with a base snapshot).
    pub generations_started: u64,
    /// Bytes of objects uploaded (as stored: compressed).
    pub bytes_uploaded: u64,
    /// Checkpoints run by the loop.
    pub checkpoints: u64,
}

/// One database's replication loop ([`Watcher::start`], then [`Watcher::run`] on a thread of its own; a
/// [`Replicator`](crate::Replicator) does both). Holds the database's lock file: one watcher per database on a
/// machine.
pub struct Watcher {
    opts: WatchOptions,
    storage: StorageRef,
    db_path: PathBuf,
    wal_path: PathBuf,
    state_path: PathBuf,
    /// `walrust snapshot` asks a running watch for a snapshot by creating this file.
    snapshot_request: PathBuf,
    last_request_check: Instant,
    last_idle_check: Instant,
    /// The wal-index (cycle, end, nBackfill) when an idle tick last looked (see `tick`).
    seen_index: Option<(u32, u32, u32, u32)>,
    last_publish: Option<Instant>,
    /// File change notifications reach this loop's flusher (crate::notify): idle, it can wait for them.
    notify: Option<Arc<crate::notify::Registration>>,
    /// Whether this loop asked for write notifications (`Registration::set_waiting`): only while it waits for them.
    waiting_for_writes: bool,
    /// When the WAL last changed or a notification came.
    last_activity: Instant,
    _lock: File,
    pins: Pins,
    page_size: u32,
    wal: File,
    db_inode: u64,
    /// The WAL cycle the cursor belongs to; None before the first header was seen (fresh WAL).
    cycle: Option<WalHeader>,
    cursor: WalCursor,
    /// True once a complete read happened under a pin taken by this process (restarts can then be followed).
    established: bool,
    generation: u64,
    seq: u64,
    chain: u64,
    head_key: String,
    last_snapshot_ms: u64,
    changed_since_snapshot: bool,
    last_upload: Option<Instant>,
    last_wal_stat: (u64, i64, i64),
    /// The wal-index's (mxFrame, salts) at the last look (see `wal_changed`).
    last_published: Option<(u32, u32, u32)>,
    /// The last look saw the WAL file change with nothing newly published (see `run_loop`).
    awaiting_publish: bool,
    /// When the pin last moved (an idle, caught-up database re-pins now and then; see `tick`).
    last_pin: Instant,
    /// Inside a forced checkpoint (the write lock is held).
    forcing: bool,
    /// Where the loop publishes its numbers (metrics/health), if anywhere.
    metrics: Option<Arc<crate::metrics::Registry>>,
    webhooks: Option<crate::webhook::Webhooks>,
    /// Last iteration that ended caught up (ms since the epoch), and since when something waits to be shipped.
    last_caught_up_ms: u64,
    dirty_since: Option<Instant>,
    errors: u64,
    /// A changeset whose upload failed: it is retried with the same frames and commit time, so that a PUT that
    /// landed although its answer was lost is found under the same key (never two objects for one seq).
    inflight: Option<Inflight>,
    /// Other threads asking this loop to ship now and waiting for it (`Replicator::flush`).
    flusher: Option<Arc<Flusher>>,
    /// The WAL is over `wal_warn_bytes` and that was reported.
    wal_warned: bool,
    /// Counters since this watcher started.
    pub stats: WatchStats,
}

/// What the loop does after an iteration.
enum Next {
    /// Wait this long for a change, a flush request or the stop.
    Wait(Duration),
    /// The iteration failed and will be retried after this long.
    Backoff(Duration),
}

#[derive(Debug, Clone, Copy)]
struct Inflight {
    end: WalCursor,
    commit_ms: u64,
}

/// Wall-clock time, ms since the epoch (commit times, snapshot ages).
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

fn wal_path_of(db: &Path) -> PathBuf {
    let mut s = db.as_os_str().to_os_string();
    s.push("-wal");
    PathBuf::from(s)
}

/// Why a new generation is started (logged).
enum Start {
    Resume { cycle: Option<WalHeader>, cursor: WalCursor, state: LocalState },
    NewGeneration { reason: String, after: Option<remote::Head> },
}

/// The WAL as SQLite has committed it (see [`Watcher::committed_view`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum WalView {
    /// No valid WAL header: nothing is committed past the database file.
    Empty,
    /// The cycle the header heads and how many of its frames are committed (the wal-index's mxFrame).
    Cycle(WalHeader, u32),
    /// The wal-index already describes the next cycle, with nothing committed in it yet, while the file still
    /// has the old header: a writer is restarting the WAL (it publishes the new cycle in the index before it
    /// writes the new header), or was killed doing so. Every frame of the old cycle is in the database file.
    Restarting(WalHeader),
}

/// How many loops of this process may be inside an iteration at once. An iteration that ships goes deep (it
/// reads the WAL, encodes and compresses a changeset, waits for an upload worker): with a thousand busy databases
/// and storage or CPU slower than their writes, every loop would otherwise wait for a worker with that stack and
/// its encoded changeset resident. Waiting for a slot before the iteration, a loop holds neither: its frames wait
/// in its WAL, and the next iteration ships them together. As many as the upload workers (1000 databases, 1 write/s
/// each, on 2 CPUs: peak RSS 26.1 -> 19.9 MiB, 0.53 -> 0.62 PUT/s per database; 32 slots kept more at 100).
const WORKING_LOOPS: usize = crate::uploads::WORKERS;
static WORKING: Semaphore = Semaphore::new(WORKING_LOOPS);

/// How long [`Watcher::committed_view`] waits for a writer that is restarting the WAL to write its new header.
const RESTART_SETTLE: Duration = Duration::from_millis(500);

impl Watcher {
    /// Opens the database, reads the remote head, and either resumes the chain (continuity proven) or starts a
    /// new generation with a base snapshot.
    pub fn start(db_path: &Path, storage: StorageRef, opts: WatchOptions) -> Result<Watcher> {
        let mut w = Watcher::open(db_path, storage, opts)?;
        w.begin()?;
        Ok(w)
    }

    /// The local half of [`Watcher::start`], without touching storage: checks the database (exists, SQLite,
    /// WAL mode), takes the per-database lock and the first pin. [`Watcher::begin`] must follow before `run`.
    pub fn open(db_path: &Path, storage: StorageRef, opts: WatchOptions) -> Result<Watcher> {
        if !keys::valid_name(&opts.name) {
            return Err(Error::Usage(format!("invalid database name '{}'", opts.name)));
        }
        let db_path = db_path.to_path_buf();
        let state_path = state_path(&db_path);
        let snapshot_request = snapshot_request_path(&db_path);
        // The database is checked first (exists, SQLite, WAL mode): a bad path leaves no lock file behind.
        let (pins, page_size) = Pins::open(&db_path)?;
        let lock = lock_file(&db_path)?;
        let wal_path = wal_path_of(&db_path);
        let wal = File::open(&wal_path).map_err(|e| Error::io(format!("opening {}", wal_path.display()), e))?;
        let db_inode = std::fs::metadata(&db_path).map_err(|e| Error::io(db_path.display().to_string(), e))?.ino();
        let w = Watcher {
            opts,
            storage,
            db_path,
            wal_path,
            snapshot_request,
            last_request_check: Instant::now(),
            last_idle_check: Instant::now(),
            seen_index: None,
            last_publish: None,
            notify: None,
            waiting_for_writes: false,
            last_activity: Instant::now(),
            state_path,
            _lock: lock,
            pins,
            page_size,
            wal,
            db_inode,
            cycle: None,
            cursor: WalCursor { frames: 0, checksum: [0, 0] },
            established: false,
            generation: 0,
            seq: 0,
            chain: 0,
            head_key: String::new(),
            last_snapshot_ms: 0,
            changed_since_snapshot: false,
            last_upload: None,
            last_wal_stat: (u64::MAX, 0, 0),
            last_published: None,
            awaiting_publish: false,
            last_pin: Instant::now(),
            forcing: false,
            metrics: None,
            webhooks: None,
            last_caught_up_ms: 0,
            dirty_since: None,
            errors: 0,
            inflight: None,
            flusher: None,
            wal_warned: false,
            stats: WatchStats::default(),
        };
        Ok(w)
    }

    /// The storage half of [`Watcher::start`]: resumes the chain (shipping what was committed while walrust
    /// was not running) or starts a new generation with a snapshot. After an error the watcher is dropped, not
    /// begun again: a new [`Watcher::open`] starts from what storage and the state file say.
    pub fn begin(&mut self) -> Result<()> {
        let w = self;
        match w.decide_start()? {
            Start::Resume { cycle, cursor, state } => {
                w.cycle = cycle;
                w.cursor = cursor;
                w.generation = state.generation;
                w.seq = state.seq;
                w.chain = state.chain;
                w.head_key = state.head_key;
                w.last_snapshot_ms = state.last_snapshot_ms;
                log::info(&format!(
                    "{}: resuming generation {:016x} at seq {} (wal frame {})",
                    w.opts.name, w.generation, w.seq, w.cursor.frames
                ));
                // Ship what was committed while walrust was down; this also establishes the pin protocol.
                w.sync(true)?;
            }
            Start::NewGeneration { reason, after } => {
                log::info(&format!("{}: {reason}; starting a new generation with a snapshot", w.opts.name));
                w.new_generation(after.as_ref())?;
            }
        }
        if let Some(f) = &w.flusher {
            f.shipped(0, w.durable());
        }
        Ok(())
    }

    fn decide_start(&mut self) -> Result<Start> {
        let location = self.storage.describe();
        let state = self.load_own_state()?;
        let mut head = remote::head(self.storage.as_ref(), &self.opts.name)?;
        if let (Some(p), Some(h)) = (state.as_ref().and_then(|s| s.pending.as_ref()), &head) {
            if p.key == h.last.key_str && p.bytes != 0 && h.last.size != p.bytes {
                // Our upload in flight at the kill, kept by the store cut off (an empty object after a PUT cut
                // right after its headers). Not ours landed: removed, so that the head is the last acknowledged
                // object again and the changeset is sent again from the WAL (or the base taken again).
                log::warn(&format!(
                    "{}: {} holds {} bytes, not the {} uploaded (cut off when walrust stopped); removing it and \
                     sending it again",
                    self.opts.name, p.key, h.last.size, p.bytes
                ));
                self.storage.delete_many(std::slice::from_ref(&p.key))?;
                head = remote::head(self.storage.as_ref(), &self.opts.name)?;
            }
        }
        let Some(head) = head else {
            return Ok(Start::NewGeneration { reason: "no backup yet".into(), after: None });
        };
        let Some(mut state) = state else {
            if self.opts.new_generation {
                return Ok(Start::NewGeneration { reason: "--new-generation given".into(), after: Some(head) });
            }
            return Err(Error::Fenced(format!(
                "{} already holds backups of '{}' (generation {:016x}, seq {}) that this database has no record of \
                 writing; another walrust may be writing them. If this database should replace them, run with --new-generation",
                location,
                self.opts.name,
                head.generation,
                head.last.key.seq
            )));
        };
        // An upload that was in flight when we stopped may have landed.
        if let Some(p) = state.pending.take() {
            if p.key == head.last.key_str {
                // A changeset of our generation, or the base snapshot of a new one (see try_new_generation).
                state.generation = head.last.key.generation;
                if head.last.key.kind == Kind::Base {
                    state.last_snapshot_ms = head.last.key.commit_ms;
                }
                state.seq = p.seq;
                state.chain = p.chain;
                state.head_key = p.key;
                state.wal = Some(p.wal);
                state.db_stamp = None;
                // On disk at once: a new generation's base records its pending key over the state file's
                // identity, and if that base never lands the next start must still find this head as ours.
                state.save(&self.state_path)?;
            }
        }
        if state.head_key != head.last.key_str {
            if self.opts.new_generation {
                return Ok(Start::NewGeneration { reason: "--new-generation given".into(), after: Some(head) });
            }
            return Err(Error::Fenced(format!(
                "the backups of '{}' in {} moved on without this database (remote head {}, this database last wrote {}); \
                 another writer? Refusing to write. To start over from this database, run with --new-generation",
                self.opts.name, location, head.last.key_str, state.head_key
            )));
        }
        // The remote head is ours. Can the WAL prove that nothing was missed since?
        let (header, end) = match self.committed_view()? {
            WalView::Cycle(h, end) => (Some(h), end),
            // A restart in progress comes after everything in the WAL was backfilled: as with a truncated WAL,
            // only the database file's stamp can vouch that nothing unshipped was among it.
            WalView::Empty | WalView::Restarting(_) => (None, 0),
        };
        match (&state.wal, &state.db_stamp, header) {
            (Some(pos), _, Some(h)) if pos.same_cycle(&h) => {
                // Frames past the wal-index's end are not committed (wal::WalIndex), even if valid.
                let at = match pos.frames <= end {
                    true => wal::cursor_at(&self.wal, &h, pos.frames)
                        .map_err(|e| Error::io(self.wal_path.display().to_string(), e))?,
                    false => None,
                };
                match at {
                    Some(c) if c == pos.cursor() => Ok(Start::Resume { cycle: Some(h), cursor: c, state }),
                    _ => Ok(Start::NewGeneration {
                        reason: "the WAL no longer holds the frames last shipped".into(),
                        after: Some(head),
                    }),
                }
            }
            (Some(pos), Some(stamp), h)
                if h.is_none_or(|h| {
                    h.ckpt_seq == pos.ckpt_seq.wrapping_add(1) && h.salt1 == pos.salt1.wrapping_add(1)
                }) =>
            {
                // Clean shutdown with everything shipped, then the WAL restarted (or was truncated). Restarting
                // needs every frame backfilled into the database file; frames we had not shipped could only have
                // got there by a checkpoint after we left, which changes the file.
                let now = FileStamp::of(&self.db_path).map_err(|e| Error::io(self.db_path.display().to_string(), e))?;
                if now == *stamp {
                    let cursor = h.as_ref().map(WalCursor::start).unwrap_or(WalCursor { frames: 0, checksum: [0, 0] });
                    Ok(Start::Resume { cycle: h, cursor, state })
                } else {
                    Ok(Start::NewGeneration {
                        reason: "the WAL restarted and the database was checkpointed while walrust was not running"
                            .into(),
                        after: Some(head),
                    })
                }
            }
            (None, Some(stamp), h) => {
                let now = FileStamp::of(&self.db_path).map_err(|e| Error::io(self.db_path.display().to_string(), e))?;
                if now == *stamp {
                    // Restored by walrust and not checkpointed since: every change since is in the current WAL.
                    let cursor = h.as_ref().map(WalCursor::start).unwrap_or(WalCursor { frames: 0, checksum: [0, 0] });
                    Ok(Start::Resume { cycle: h, cursor, state })
                } else {
                    Ok(Start::NewGeneration {
                        reason: "the database changed since it was restored and its WAL cannot account for it".into(),
                        after: Some(head),
                    })
                }
            }
            _ => Ok(Start::NewGeneration {
                reason: "the WAL restarted or disappeared while walrust was not running".into(),
                after: Some(head),
            }),
        }
    }

    /// Starts a new generation: base snapshot of the current committed state.
    fn new_generation(&mut self, after: Option<&remote::Head>) -> Result<()> {
        let saved = (self.generation, self.seq, self.chain);
        let r = self.try_new_generation(after);
        if r.is_err() {
            (self.generation, self.seq, self.chain) = saved;
        }
        r
    }

    fn try_new_generation(&mut self, after: Option<&remote::Head>) -> Result<()> {
        let prev_gen = after.map(|h| h.generations.iter().copied().max().unwrap_or(0)).unwrap_or(0);
        let time_gen = now_ms() << 16 | (crate::storage::retry::jitter(0xffff));
        let generation = time_gen.max(prev_gen.saturating_add(1));
        let seq = after.map(|h| h.max_seq() + 1).unwrap_or(1);
        self.pins.advance()?;
        let header = self.read_header()?;
        let snap = self.build_overlay(header.as_ref())?;
        let commit_ms = now_ms();
        let uploaded = self.upload_snapshot(&snap, Kind::Base, commit_ms, (generation, seq))?;
        (self.generation, self.seq) = (generation, seq);
        self.cycle = header;
        self.cursor = snap.end;
        self.chain = uploaded.checksum;
        self.head_key = uploaded.key_str;
        self.last_snapshot_ms = commit_ms;
        self.changed_since_snapshot = false;
        self.established = true;
        self.inflight = None;
        self.stats.generations_started += 1;
        self.save_state(None)?;
        log::info(&format!(
            "{}: generation {:016x} started at seq {} ({} pages)",
            self.opts.name, self.generation, self.seq, snap.db_size
        ));
        Ok(())
    }

    fn read_header(&self) -> Result<Option<WalHeader>> {
        wal::read_header(&self.wal).map_err(|e| Error::io(self.wal_path.display().to_string(), e))
    }

    /// How many frames of the WAL cycle `h` heads are committed: the wal-index's mxFrame (wal::WalIndex). 0 when
    /// the index already describes the next cycle (a writer is restarting the WAL: every frame of this one is
    /// in the database file).
    fn committed_end(&self, h: &WalHeader) -> Result<u32> {
        let ix = self.pins.wal_index()?;
        Ok(if ix.describes(h) { ix.mx_frame } else { 0 })
    }

    /// The WAL header together with how many of its frames are committed, read so that the two agree. A writer
    /// restarting the WAL publishes the next cycle in the wal-index first and writes the new header to the file
    /// with its first frame; a header read in between is the old cycle's, whose committed end the index no longer
    /// tells. Read that way, a resuming start would find the frames it shipped gone and a running loop would find
    /// its cursor past the committed end, and both would start a new generation for nothing. So a disagreement
    /// is read again (for up to [`RESTART_SETTLE`]) before it is reported as [`WalView::Restarting`].
    fn committed_view(&self) -> Result<WalView> {
        let since = Instant::now();
        loop {
            let Some(h) = self.read_header()? else { return Ok(WalView::Empty) };
            let ix = self.pins.wal_index()?;
            if ix.describes(&h) {
                return Ok(WalView::Cycle(h, ix.mx_frame));
            }
            // Changed meanwhile: the new header was written, read both again.
            let settled = self.read_header()? == Some(h);
            if since.elapsed() >= RESTART_SETTLE {
                // An index of another cycle with frames committed under a header the file does not have is not
                // a restart (the file replaced underneath?): nothing of this header's cycle is vouched for.
                return Ok(match settled && ix.mx_frame == 0 {
                    true => WalView::Restarting(h),
                    false => WalView::Cycle(h, 0),
                });
            }
            if settled {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }

    /// The committed state at the end of the current WAL cycle: which pages come from the WAL.
    fn build_overlay(&self, header: Option<&WalHeader>) -> Result<Overlay> {
        let ioerr = |e: io::Error| Error::io(self.wal_path.display().to_string(), e);
        let batch = match header {
            Some(h) => {
                let end = self.committed_end(h)?;
                wal::read_batch(&self.wal, h, WalCursor::start(h), u32::MAX, end).map_err(ioerr)?
            }
            None => None,
        };
        let end = match (header, &batch) {
            (_, Some(b)) => b.end,
            (Some(h), None) => WalCursor::start(h),
            (None, None) => WalCursor { frames: 0, checksum: [0, 0] },
        };
        let db_size = match &batch {
            Some(b) => b.db_size_pages,
            None => {
                let len = std::fs::metadata(&self.db_path)
                    .map_err(|e| Error::io(self.db_path.display().to_string(), e))?
                    .len();
                (len / self.page_size as u64) as u32
            }
        };
        let pages = batch.map(|b| b.pages).unwrap_or_default();
        Ok(Overlay { header: header.copied(), pages, end, db_size })
    }

    /// Uploads a snapshot of `snap` as object `(generation, seq)`: a base (new generation) or a mid-generation
    /// snapshot at the current seq.
    fn upload_snapshot(
        &mut self,
        snap: &Overlay,
        kind: Kind,
        commit_ms: u64,
        (generation, seq): (u64, u64),
    ) -> Result<object::Uploaded> {
        let flags = match kind {
            Kind::Base => hadbp::FLAG_SNAPSHOT | hadbp::FLAG_BASE,
            _ => hadbp::FLAG_SNAPSHOT,
        };
        let header = Header {
            version: hadbp::VERSION,
            flags,
            page_id_size: 4,
            page_size: self.page_size,
            seq,
            prev_checksum: if kind == Kind::Base { 0 } else { self.chain },
            page_count: snap.db_size + 1,
            created_ms: commit_ms,
        };
        let meta = ObjectMeta { generation, seq, commit_ms, kind };
        let pins = &self.pins;
        let wal = &self.wal;
        let page_size = self.page_size as usize;
        let mut records = move |emit: &mut dyn FnMut(u64, &[u8]) -> io::Result<()>| -> io::Result<()> {
            emit(hadbp::META_PAGE_ID, &hadbp::commit_record(snap.db_size))?;
            let mut buf = vec![0u8; page_size];
            for pgno in 1..=snap.db_size {
                match snap.pages.get(&pgno) {
                    Some(&off) => wal.read_exact_at(&mut buf, off)?,
                    None => {
                        let ok = pins
                            .read_db((pgno as u64 - 1) * page_size as u64, &mut buf)
                            .map_err(|e| io::Error::other(e.to_string()))?;
                        if !ok {
                            return Err(io::Error::other(format!(
                                "page {pgno} is beyond the end of the database file"
                            )));
                        }
                    }
                }
                emit(pgno as u64, &buf)?;
            }
            Ok(())
        };
        let src: &mut RecordSource<'_> = &mut records;
        // Pages come from the WAL at the offsets the overlay found, and from the database file. The pin keeps
        // both stable except in one case: a pin on read mark 0 (the WAL fully checkpointed) lets a writer
        // restart the WAL and overwrite those offsets while the snapshot is read. A restart always rewrites the
        // header (new salts), so the header unchanged after encoding proves every page read was the committed
        // one. Large objects are encoded a second time while uploading; that pass is checked against the first
        // pass's SHA-256 (object.rs), and a difference removes the object.
        let prepared = object::prepare(&self.opts.name, meta, &header, src)?;
        if self.read_header()? != snap.header {
            return Err(Error::Interrupted(format!(
                "{}: the WAL restarted while the snapshot was read; nothing kept, taking it again",
                self.opts.name
            )));
        }
        if kind == Kind::Base {
            // Killed after the base lands but before the state says so, the next start must recognise the new
            // generation as ours (decide_start adopts a pending key that is the remote head) rather than refuse
            // it as another writer's. Recorded under the identity the state had so far: if the upload does not
            // land, the old head is still the remote head.
            let wal = match &snap.header {
                Some(h) => WalPosition::new(h, &snap.end),
                // No WAL: no position; an adopted start then finds nothing to resume from and begins again.
                None => WalPosition { salt1: 0, salt2: 0, ckpt_seq: 0, frames: 0, checksum0: 0, checksum1: 0 },
            };
            let pending =
                Pending { key: prepared.key_str.clone(), seq, chain: prepared.checksum, wal, bytes: prepared.bytes };
            // The identity is the one on disk (at startup this watcher's own fields are still blank), so that a
            // base that does not land leaves the previous head recognisable.
            match self.load_own_state()? {
                Some(mut on_disk) => {
                    on_disk.pending = Some(pending);
                    on_disk.save(&self.state_path)?;
                }
                None => self.save_state(Some(pending))?,
            }
        }
        let uploaded = prepared.put_shared(&self.storage, &header, src)?;
        self.stats.snapshots += 1;
        self.stats.bytes_uploaded += uploaded.bytes;
        self.last_upload = Some(Instant::now());
        Ok(uploaded)
    }

    /// One cheap check: is there anything new in the WAL?
    fn wal_changed(&mut self) -> Result<bool> {
        let m = self.wal.metadata().map_err(|e| Error::io(self.wal_path.display().to_string(), e))?;
        let stat = (m.len(), m.mtime(), m.mtime_nsec());
        // The WAL file and what the wal-index publishes of it: a writer writes its frames (the file changes),
        // then publishes them (only shared memory changes); a look in between reads nothing new, so the
        // publication must count as a change too.
        let published = self.pins.wal_index().ok().map(|ix| (ix.mx_frame, ix.salt1, ix.salt2));
        let changed = stat != self.last_wal_stat || published != self.last_published;
        // The file changed but nothing new is published: most likely a writer between the two steps.
        // (Not after a forced look: `last_wal_stat` is reset to make the next tick look, e.g. while the upload
        // budget is not free, and that must not turn into a fast loop.)
        self.awaiting_publish =
            self.last_wal_stat.0 != u64::MAX && stat != self.last_wal_stat && published == self.last_published;
        self.last_wal_stat = stat;
        self.last_published = published;
        if changed {
            self.last_activity = Instant::now();
        }
        Ok(changed)
    }

    /// Checks the database file is still the one we opened (not replaced under us).
    fn check_not_replaced(&self) -> Result<()> {
        match std::fs::metadata(&self.db_path) {
            Ok(m) if m.ino() == self.db_inode => Ok(()),
            Ok(_) => Err(Error::Other(format!(
                "{} was replaced by another file while walrust watched it; stopping (restart walrust to back up the new file)",
                self.db_path.display()
            ))),
            Err(e) => Err(Error::io(format!("{} disappeared while walrust watched it", self.db_path.display()), e)),
        }
    }

    /// One iteration of the loop. `force` ignores the request budget (shutdown, startup).
    pub fn tick(&mut self, force: bool) -> Result<()> {
        let changed = self.wal_changed()?;
        if changed || force {
            self.check_not_replaced()?;
            let budget_ok = force || self.last_upload.is_none_or(|t| t.elapsed() >= self.opts.sync_interval);
            if !budget_ok {
                // Come back when the budget allows; make sure the next tick looks again.
                self.last_wal_stat = (u64::MAX, 0, 0);
                return Ok(());
            }
            self.sync(force)?;
        } else if self.inflight.is_none() && self.last_pin.elapsed() >= REPIN_INTERVAL {
            // An idle database is also checked for deletion or replacement now and then (its WAL never changes).
            if self.last_idle_check.elapsed() >= IDLE_CHECK_INTERVAL {
                self.check_not_replaced()?;
                self.last_idle_check = Instant::now();
            }
            // Caught up and nothing changed: when a checkpoint has copied frames since the last look (the
            // wal-index says so, read from memory), move the pin to the current end. If the application has
            // backfilled everything (its own checkpoint, perhaps a TRUNCATE now waiting for readers), the new pin
            // lands on read mark 0 and lets that checkpoint restart the WAL. Safe because nothing unshipped is in
            // the WAL. Nothing changed: nothing to do (a thousand idle databases cost no SQLite work).
            let ix = self.pins.wal_index()?;
            let seen = Some((ix.salt1, ix.salt2, ix.mx_frame, ix.backfilled));
            if seen != self.seen_index {
                self.pins.advance()?;
                self.seen_index = seen;
            }
            self.last_pin = Instant::now();
        }
        self.serve_snapshot_request()?;
        self.maybe_snapshot()?;
        if self.last_wal_stat.0 != u64::MAX && self.inflight.is_none() {
            self.last_caught_up_ms = now_ms();
            self.dirty_since = None;
        } else {
            self.dirty_since.get_or_insert_with(Instant::now);
        }
        Ok(())
    }

    /// Sends an `uploads_failing` event when the loop has failed this many times in a row.
    pub fn set_webhooks(&mut self, w: crate::webhook::Webhooks) {
        self.webhooks = Some(w);
    }

    /// Publishes this database's numbers to `registry` after every loop iteration.
    pub fn set_metrics(&mut self, registry: Arc<crate::metrics::Registry>) {
        self.metrics = Some(registry);
        self.publish();
    }

    /// Warns (log and webhook) when the WAL grew over `wal_warn_bytes`; re-arms once it is back under half.
    fn check_wal_size(&mut self, wal_bytes: u64) {
        let limit = self.opts.wal_warn_bytes;
        if !self.wal_warned && wal_bytes > limit {
            self.wal_warned = true;
            let msg = format!(
                "the WAL is {wal_bytes} bytes, over the {limit}-byte warning size: uploads are not keeping up (is the \
                 storage reachable?); the application keeps writing and walrust ships it all once they succeed"
            );
            log::warn(&format!("{}: {msg}", self.opts.name));
            if let Some(w) = &self.webhooks {
                w.notify("wal_over_threshold", &self.opts.name, &msg);
            }
        } else if self.wal_warned && wal_bytes < limit / 2 {
            self.wal_warned = false;
            log::info(&format!("{}: the WAL is back under half the warning size ({wal_bytes} bytes)", self.opts.name));
        }
    }

    /// What, when it changes, is published at once (see `run_loop`).
    fn publish_key(&self) -> (u64, u64, u64, bool, bool) {
        (self.generation, self.seq, self.stats.snapshots, self.dirty_since.is_some(), self.last_caught_up_ms != 0)
    }

    fn publish(&mut self) {
        let wal_bytes = self.wal.metadata().map(|m| m.len()).unwrap_or(0);
        self.check_wal_size(wal_bytes);
        let Some(r) = &self.metrics else { return };
        r.publish(
            &self.opts.name,
            crate::metrics::DbMetrics {
                last_sync_ms: self.last_caught_up_ms,
                lag_seconds: self.dirty_since.map(|d| d.elapsed().as_secs_f64()).unwrap_or(0.0),
                wal_bytes,
                seq: self.seq,
                changesets: self.stats.changesets,
                snapshots: self.stats.snapshots,
                bytes_uploaded: self.stats.bytes_uploaded,
                checkpoints: self.stats.checkpoints,
                errors: self.errors,
                failed: None,
            },
        );
    }

    /// Reads and ships everything committed after the cursor.
    pub fn sync(&mut self, _force: bool) -> Result<()> {
        loop {
            let (h, end) = match self.committed_view()? {
                WalView::Empty => {
                    // Empty or zeroed WAL (e.g. truncated by a checkpoint): nothing to read until a writer writes.
                    self.established = true;
                    return Ok(());
                }
                WalView::Cycle(h, end) => (h, end),
                // Held since the last complete read, the pin let the restart happen only with everything in the
                // WAL shipped (follow_restart): the writer's new header is followed when it is written.
                WalView::Restarting(h) if self.established && self.cycle == Some(h) => return Ok(()),
                // Otherwise nothing vouches for the old cycle's frames after the cursor (a new generation below).
                WalView::Restarting(h) => (h, 0),
            };
            if self.cycle != Some(h) && !self.follow_restart(&h)? {
                return Ok(()); // a new generation was started
            }
            let max_frames = match self.inflight {
                Some(f) => f.end.frames.saturating_sub(self.cursor.frames).max(1),
                None => self.opts.batch_frames_max,
            };
            let batch = wal::read_batch(&self.wal, &h, self.cursor, max_frames, end)
                .map_err(|e| Error::io(self.wal_path.display().to_string(), e))?;
            let after = self.read_header()?;
            if after != Some(h) {
                continue; // the WAL restarted during the read: read again under the new header
            }
            if (batch.is_none() && end > self.cursor.frames) || end < self.cursor.frames {
                // Committed frames follow that do not continue the chain from the cursor, or the cursor is past
                // what is committed: what was shipped is not what SQLite committed (frames of a writer killed
                // before publishing them, shipped by a version that read past the wal-index). Start over from
                // the committed state rather than stall or build on it.
                log::warn(&format!(
                    "{}: the WAL's committed frames (to {end}) do not continue what was shipped (to frame {}); \
                     starting a new generation",
                    self.opts.name, self.cursor.frames
                ));
                let head = remote::head(self.storage.as_ref(), &self.opts.name)?;
                self.new_generation(head.as_ref())?;
                return Ok(());
            }
            let Some(batch) = batch else {
                self.established = true;
                return Ok(());
            };
            self.ship(&h, &batch)?;
            self.established = true;
            if batch.end.frames - batch.start.frames >= max_frames && self.more_after_cursor(&h)? {
                // The batch was cut at batch_frames_max: a long WAL ships as several changesets. The pin stays
                // where it is until the end is shipped (a pin moved now could land on read mark 0 while frames
                // it no longer protects are unshipped).
                continue;
            }
            // Everything up to where this read began is shipped, and the old pin predates that read: the new pin
            // either protects the frames committed since (read mark > 0) or finds the WAL fully backfilled,
            // which means nothing unshipped is in it.
            self.pins.advance()?;
            self.last_pin = Instant::now();
            if !self.forcing {
                self.maybe_checkpoint()?;
            }
            return Ok(());
        }
    }

    fn more_after_cursor(&self, h: &WalHeader) -> Result<bool> {
        let len = self.wal.metadata().map_err(|e| Error::io(self.wal_path.display().to_string(), e))?.len();
        Ok(len > wal::frame_offset(h.page_size, self.cursor.frames))
    }

    /// The WAL header changed. Returns true when the chain can follow the new cycle.
    ///
    /// Following rests on the pin alone (sqlite.rs): while this process has held a pin since its last complete
    /// read (`established`), a restart can only have happened while the pin sat on read mark 0, which it only
    /// takes when everything in the WAL is shipped, and which blocks the backfill a second restart would need.
    /// So exactly one restart happened and nothing of the old cycle was unshipped. The header's checkpoint
    /// sequence proves nothing here: SQLite writes it from a per-connection counter (0, with new random salts,
    /// from a connection that never restarted the WAL itself), so with several writer connections it does not
    /// count restarts (tests/pin_protocol.rs).
    fn follow_restart(&mut self, h: &WalHeader) -> Result<bool> {
        let follows = match self.cycle {
            // First header after a restore or on a fresh WAL: everything in it is new.
            None => self.established || self.cursor.frames == 0,
            Some(_) => self.established,
        };
        if follows {
            self.cycle = Some(*h);
            self.cursor = WalCursor::start(h);
            return Ok(true);
        }
        log::warn(&format!(
            "{}: the WAL restarted in a way walrust could not follow; starting a new generation",
            self.opts.name
        ));
        let head = remote::head(self.storage.as_ref(), &self.opts.name)?;
        self.new_generation(head.as_ref())?;
        Ok(false)
    }

    /// Uploads one batch as a changeset and advances (only after the storage acknowledged it).
    fn ship(&mut self, h: &WalHeader, batch: &CommittedBatch) -> Result<()> {
        let commit_ms = match self.inflight {
            Some(f) if f.end == batch.end => f.commit_ms,
            Some(f) => {
                return Err(Error::Other(format!(
                    "{}: the WAL no longer matches the changeset being retried (frame {} vs {})",
                    self.opts.name, batch.end.frames, f.end.frames
                )));
            }
            None => now_ms(),
        };
        self.inflight = Some(Inflight { end: batch.end, commit_ms });
        // The -shm pages go back before the changeset is encoded and uploaded (from the WAL file, not the
        // wal-index): with a thousand busy databases on a busy machine, hundreds of loops are somewhere in here
        // at any moment, waiting for a CPU or an upload worker (up to 32 KiB each otherwise).
        self.pins.release_shared_memory();
        let seq = self.seq + 1;
        let pages: Vec<(u32, u64)> =
            batch.pages.iter().filter(|(p, _)| **p <= batch.db_size_pages).map(|(p, o)| (*p, *o)).collect();
        let header = Header {
            version: hadbp::VERSION,
            flags: 0,
            page_id_size: 4,
            page_size: self.page_size,
            seq,
            prev_checksum: self.chain,
            page_count: pages.len() as u32 + 1,
            created_ms: commit_ms,
        };
        let meta = ObjectMeta { generation: self.generation, seq, commit_ms, kind: Kind::Changeset };
        let wal = &self.wal;
        let page_size = self.page_size as usize;
        let db_size = batch.db_size_pages;
        let mut records = |emit: &mut dyn FnMut(u64, &[u8]) -> io::Result<()>| -> io::Result<()> {
            emit(hadbp::META_PAGE_ID, &hadbp::commit_record(db_size))?;
            let mut buf = vec![0u8; page_size];
            for &(pgno, off) in &pages {
                wal.read_exact_at(&mut buf, off)?;
                emit(pgno as u64, &buf)?;
            }
            Ok(())
        };
        let prepared = object::prepare(&self.opts.name, meta, &header, &mut records)?;
        let pos = WalPosition::new(h, &batch.end);
        self.save_state(Some(Pending {
            key: prepared.key_str.clone(),
            seq,
            chain: prepared.checksum,
            wal: pos,
            bytes: prepared.bytes,
        }))?;
        let uploaded = prepared.put_shared(&self.storage, &header, &mut records)?;
        // Acknowledged: advance.
        self.inflight = None;
        self.seq = seq;
        self.chain = uploaded.checksum;
        self.head_key = uploaded.key_str;
        self.cursor = batch.end;
        self.cycle = Some(*h);
        self.changed_since_snapshot = true;
        self.last_upload = Some(Instant::now());
        self.stats.changesets += 1;
        self.stats.bytes_uploaded += uploaded.bytes;
        self.save_state(None)?;
        Ok(())
    }

    /// PASSIVE checkpoint once the WAL is long, a forced restart point when it is very large.
    fn maybe_checkpoint(&mut self) -> Result<()> {
        if self.cursor.frames < self.opts.checkpoint_frames {
            return Ok(());
        }
        let wal_bytes = self.wal.metadata().map(|m| m.len()).unwrap_or(0);
        if wal_bytes >= self.opts.checkpoint_full_bytes {
            return self.forced_checkpoint();
        }
        self.checkpoint_and_repin()
    }

    /// PASSIVE checkpoint; when it backfilled the whole WAL and the whole WAL is shipped, move the pin so that it
    /// lands on read mark 0 and the next writer restarts the WAL.
    fn checkpoint_and_repin(&mut self) -> Result<()> {
        let r = self.pins.checkpoint()?;
        self.stats.checkpoints += 1;
        if !r.busy && r.log_frames == r.checkpointed_frames && r.log_frames as u64 == self.cursor.frames as u64 {
            self.pins.advance()?;
            self.last_pin = Instant::now();
        }
        Ok(())
    }

    /// Makes a WAL restart possible under a writer that never pauses: with the write lock held (no commits can
    /// happen), ship the little that committed since the last sync, checkpoint everything, and re-pin, which
    /// now lands on read mark 0. The application's next commit restarts the WAL. If its writers hold the lock
    /// for longer than WRITE_LOCK_TIMEOUT, try again after the next sync.
    fn forced_checkpoint(&mut self) -> Result<()> {
        if !self.pins.lock_writes()? {
            self.pins.unlock_writes(); // closes the lock connection until the next attempt
            return Ok(());
        }
        self.forcing = true;
        let r = self.forced_checkpoint_locked();
        self.forcing = false;
        self.pins.unlock_writes();
        r
    }

    fn forced_checkpoint_locked(&mut self) -> Result<()> {
        self.sync(true)?;
        // The pin moves to the end first, so the checkpoint may copy every frame.
        self.pins.advance()?;
        self.last_pin = Instant::now();
        self.checkpoint_and_repin()
    }

    /// A snapshot asked for by `walrust snapshot` (a stat every second). The request file is removed only once the
    /// snapshot is stored; until then it tries again every second.
    fn serve_snapshot_request(&mut self) -> Result<()> {
        // At most one stat per IDLE_CHECK_INTERVAL: with many databases the loop runs often and this is rarely true.
        if self.last_request_check.elapsed() < IDLE_CHECK_INTERVAL {
            return Ok(());
        }
        self.last_request_check = Instant::now();
        if !self.snapshot_request.exists() {
            return Ok(());
        }
        let before = self.last_snapshot_ms;
        self.snapshot_now()?;
        if self.last_snapshot_ms != before {
            log::info(&format!("{}: snapshot taken on request at seq {}", self.opts.name, self.seq));
            if let Err(e) = std::fs::remove_file(&self.snapshot_request) {
                if e.kind() != io::ErrorKind::NotFound {
                    return Err(Error::io(format!("removing {}", self.snapshot_request.display()), e));
                }
            }
        }
        Ok(())
    }

    /// When the last snapshot (or base snapshot) was taken, ms since the epoch.
    pub fn last_snapshot_ms(&self) -> u64 {
        self.last_snapshot_ms
    }

    /// Interval snapshot: when due, something changed, and everything read is shipped.
    fn maybe_snapshot(&mut self) -> Result<()> {
        if !self.changed_since_snapshot
            || now_ms().saturating_sub(self.last_snapshot_ms) < self.opts.snapshot_interval.as_millis() as u64
        {
            return Ok(());
        }
        self.snapshot_now()
    }

    /// Takes a mid-generation snapshot of the state at the current seq (everything committed is shipped first).
    pub fn snapshot_now(&mut self) -> Result<()> {
        self.sync(true)?;
        let header = self.read_header()?;
        let snap = self.build_overlay(header.as_ref())?;
        if header != self.cycle || snap.end != self.cursor {
            return Ok(()); // new frames arrived meanwhile: ship them first, snapshot on a later tick
        }
        // Fencing check: nothing may follow our head in this generation.
        let newer = remote::objects(self.storage.as_ref(), &self.opts.name, self.generation, Some(&self.head_key))?;
        if let Some(e) = newer.iter().find(|e| e.key.kind != Kind::Snapshot || e.key.seq > self.seq) {
            return Err(Error::Fenced(format!(
                "another writer added {} after this database's last object {}; stopping",
                e.key_str, self.head_key
            )));
        }
        let commit_ms = now_ms();
        self.upload_snapshot(&snap, Kind::Snapshot, commit_ms, (self.generation, self.seq))?;
        self.last_snapshot_ms = commit_ms;
        self.changed_since_snapshot = false;
        self.save_state(None)
    }

    /// The state file, when it is this database's for this name, storage and page size.
    fn load_own_state(&self) -> Result<Option<LocalState>> {
        let location = self.storage.describe();
        Ok(LocalState::load(&self.state_path)?
            .filter(|s| s.name == self.opts.name && s.location == location && s.page_size == self.page_size))
    }

    fn save_state(&self, pending: Option<Pending>) -> Result<()> {
        self.save_state_with(pending, None)
    }

    fn save_state_with(&self, pending: Option<Pending>, db_stamp: Option<FileStamp>) -> Result<()> {
        let s = LocalState {
            version: STATE_VERSION,
            name: self.opts.name.clone(),
            location: self.storage.describe(),
            generation: self.generation,
            seq: self.seq,
            chain: self.chain,
            head_key: self.head_key.clone(),
            wal: self.cycle.map(|h| WalPosition::new(&h, &self.cursor)),
            db_stamp,
            page_size: self.page_size,
            last_snapshot_ms: self.last_snapshot_ms,
            pending,
        };
        s.save(&self.state_path)
    }

    /// Runs until `stop` is set, then ships what is committed and returns.
    pub fn run(&mut self, stop: &AtomicBool) -> Result<()> {
        let r = self.run_loop(stop);
        if let Some(f) = &self.flusher {
            f.stopped(r.as_ref().err().map(|e| e.to_string()));
        }
        r
    }

    fn run_loop(&mut self, stop: &AtomicBool) -> Result<()> {
        let mut failures: u32 = 0;
        while !stop.load(Ordering::Relaxed) {
            let next = {
                let _working = WORKING.acquire();
                self.iteration(&mut failures)?
            };
            // It waits with a shallow stack (the iteration's frames are below this one): the pages a tick touched
            // (an upload, or a connection opened for a checkpoint, ~8 KiB deep) go back (a thousand databases'
            // threads would otherwise each keep ~30 KiB of them). One madvise, about a microsecond when nothing
            // is resident below.
            crate::stack::release_unused();
            // The -shm pages go back too while it waits (32 KiB or more per database; the next look maps them
            // again, ~3 µs).
            self.pins.release_shared_memory();
            match next {
                Next::Backoff(d) => sleep_until(stop, d),
                Next::Wait(wait) => match &self.flusher {
                    Some(f) => {
                        if f.wait_for_request(stop, wait) {
                            self.last_activity = Instant::now();
                        }
                    }
                    None => sleep_until(stop, self.opts.check_interval),
                },
            }
        }
        self.last_tick()
    }

    /// Stopping: ships what is committed, then shuts down. Not inlined, for the same reason as `iteration`.
    #[inline(never)]
    fn last_tick(&mut self) -> Result<()> {
        let ticket = self.flusher.as_ref().map(|f| f.requested()).unwrap_or(0);
        {
            let _working = WORKING.acquire();
            self.tick(true)?;
        }
        if let Some(f) = &self.flusher {
            f.shipped(ticket, self.durable());
        }
        self.shutdown()
    }

    /// One tick of the loop with its bookkeeping (numbers, flush answers, retries); says how long to wait next.
    /// Never inlined into `run_loop`, so that the frame the loop waits in stays small: a thread's resident
    /// stack is everything above the deepest frame it sleeps in.
    #[inline(never)]
    fn iteration(&mut self, failures: &mut u32) -> Result<Next> {
        // A flush asked for before this tick began is answered by it: the tick reads the WAL to its end.
        let ticket = self.flusher.as_ref().map(|f| f.requested()).unwrap_or(0);
        let flushing = self.flusher.as_ref().is_some_and(|f| f.done() < ticket);
        let before = self.publish_key();
        let r = self.tick(flushing);
        if r.is_err() {
            self.errors += 1;
            self.dirty_since.get_or_insert_with(Instant::now);
        }
        // Numbers go out when something happened, and at least every second (the health check's "synced
        // recently", the WAL size warning); an idle tick costs no more than a stat.
        if r.is_err()
            || before != self.publish_key()
            || self.last_publish.is_none_or(|t| t.elapsed() >= IDLE_CHECK_INTERVAL)
        {
            self.publish();
            self.last_publish = Some(Instant::now());
        }
        match r {
            Ok(()) => {
                *failures = 0;
                if let Some(f) = &self.flusher {
                    f.shipped(ticket, self.durable());
                }
            }
            Err(e) if retryable(&e) => {
                *failures += 1;
                log::warn(&format!("{}: {e} (will retry)", self.opts.name));
                if let Some(f) = &self.flusher {
                    f.failed(&e.to_string());
                }
                if *failures == FAILURES_BEFORE_WEBHOOK {
                    if let Some(w) = &self.webhooks {
                        w.notify("uploads_failing", &self.opts.name, &format!("{failures} attempts in a row: {e}"));
                    }
                }
                self.last_wal_stat = (u64::MAX, 0, 0);
                return Ok(Next::Backoff(Duration::from_millis((500u64 << (*failures).min(6)).min(30_000))));
            }
            Err(e) => return Err(e),
        }
        // Caught up and nothing happened for a while: with file change notifications, wait for one (or
        // IDLE_WAIT); otherwise look again after the check interval.
        let caught_up = self.last_wal_stat.0 != u64::MAX && self.inflight.is_none();
        let idle = caught_up && !self.awaiting_publish && self.last_activity.elapsed() >= HOT_PERIOD;
        if let Some(n) = self.notify.as_ref().filter(|_| idle != self.waiting_for_writes) {
            // Writes are reported only while the loop waits for them (each costs the writing application an
            // event). Asked for now, they are reported from here on: one more look after the check interval
            // sees whatever was written before, then the loop can wait.
            n.set_waiting(idle);
            self.waiting_for_writes = idle;
            if idle {
                return Ok(Next::Wait(self.opts.check_interval));
            }
        }
        Ok(Next::Wait(if self.awaiting_publish {
            PUBLISH_WAIT.min(self.opts.check_interval)
        } else if self.waiting_for_writes {
            IDLE_WAIT.max(self.opts.check_interval)
        } else {
            self.opts.check_interval
        }))
    }

    /// Lets other threads ask this loop (once `run` runs) to ship now and wait until it has (see `Flusher`).
    pub fn flusher(&mut self) -> Arc<Flusher> {
        let durable = self.durable();
        let begun = self.generation != 0;
        let f = self.flusher.get_or_insert_with(|| Arc::new(Flusher::default()));
        if begun {
            f.shipped(0, durable);
        }
        Arc::clone(f)
    }

    /// Tells the loop that changes of the database's files wake it (crate::notify), so that an idle database
    /// need not look every check interval.
    pub fn set_notified(&mut self, r: Option<Arc<crate::notify::Registration>>) {
        if let Some(old) = self.notify.as_ref().filter(|_| self.waiting_for_writes) {
            old.set_waiting(false);
        }
        self.waiting_for_writes = false;
        self.notify = r;
    }

    /// See [`Watcher::set_notified`].
    pub fn notified(&self) -> Option<Arc<crate::notify::Registration>> {
        self.notify.clone()
    }

    /// Uses `f` (from an earlier watcher of the same database) for [`Watcher::flusher`], so that flushes asked
    /// for before this watcher began are answered by it.
    pub fn set_flusher(&mut self, f: Arc<Flusher>) {
        if self.generation != 0 {
            f.shipped(0, self.durable());
        }
        self.flusher = Some(f);
    }

    /// The newest object in storage that this database's shipped state is in.
    pub fn durable(&self) -> Durable {
        Durable { generation: self.generation, seq: self.seq }
    }

    /// After the final sync: when the WAL holds nothing unshipped, record the database file's stamp so that the
    /// next start can follow one WAL restart that happens while walrust is not running (see decide_start).
    pub fn shutdown(&mut self) -> Result<()> {
        self.ship_unpublished_commit()?;
        let r = self.pins.checkpoint()?;
        let header = self.read_header()?;
        if header == self.cycle && r.log_frames >= 0 && r.log_frames as u64 == self.cursor.frames as u64 {
            // Still pinned: nothing past the cursor can be backfilled before we exit.
            let stamp = FileStamp::of(&self.db_path).map_err(|e| Error::io(self.db_path.display().to_string(), e))?;
            self.save_state_with(None, Some(stamp))?;
        }
        Ok(())
    }

    /// A writer killed inside COMMIT, after its frames reached the WAL but before it published them in the
    /// wal-index, leaves a transaction no live connection sees: the next writer overwrites it, unless every
    /// connection closes first, in which case the next process to open the database recovers it from the WAL and
    /// it is committed after all. walrust follows the wal-index, so when it is about to exit with such frames
    /// after its cursor, it closes its connections and opens a fresh one: if no other process has the database
    /// open, that connection runs SQLite's recovery, and the transaction is shipped; if one does, its next write
    /// discards the frames, and shipping them would be wrong.
    fn ship_unpublished_commit(&mut self) -> Result<()> {
        let Some(h) = self.read_header()? else { return Ok(()) };
        if self.cycle != Some(h) || self.committed_end(&h)? != self.cursor.frames {
            return Ok(());
        }
        let after = wal::read_batch(&self.wal, &h, self.cursor, 1, u32::MAX)
            .map_err(|e| Error::io(self.wal_path.display().to_string(), e))?;
        if after.is_none() {
            return Ok(());
        }
        log::info(&format!(
            "{}: the WAL holds a transaction after frame {} that its writer never published (killed inside \
             COMMIT); reopening the database, which recovers it if no other process has the database open",
            self.opts.name, self.cursor.frames
        ));
        let shipped = (self.generation, self.seq);
        self.pins.reopen()?;
        // Nothing held the WAL for a moment: a restart in that gap is not followed (a new generation instead).
        self.established = false;
        self.sync(true)?;
        // (A new generation logged its own reason.)
        if self.generation == shipped.0 && self.seq != shipped.1 {
            log::info(&format!("{}: recovered and shipped to seq {}", self.opts.name, self.seq));
        } else if self.generation == shipped.0 {
            log::info(&format!(
                "{}: not recovered (another process has the database open; its next write discards it)",
                self.opts.name
            ));
        }
        Ok(())
    }

    /// The generation being written.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Sequence number of the last changeset or base snapshot shipped in the current generation.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// The database file's path, as given to [`Watcher::start`].
    pub fn db_path(&self) -> &Path {
        &self.db_path
    }

    /// The minimum time between uploads ([`WatchOptions::sync_interval`]).
    pub fn sync_interval(&self) -> Duration {
        self.opts.sync_interval
    }

    /// Nice levels below the process for the thread that runs this loop ([`WatchOptions::nice`]).
    pub fn nice(&self) -> u8 {
        self.opts.nice
    }

    /// The database's name in the bucket.
    pub fn name(&self) -> &str {
        &self.opts.name
    }

    /// The settings this loop runs with.
    pub fn options(&self) -> &WatchOptions {
        &self.opts
    }
}

/// Where a database's replicated state stands in storage: everything it committed up to the last sync is in
/// the objects of `generation` up to `seq`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Durable {
    /// The generation the database's shipped state is in.
    pub generation: u64,
    /// Sequence number of the newest object of `generation` holding shipped state.
    pub seq: u64,
}

/// A flush handshake between a running loop and other threads: `flush` takes a ticket; the loop's next
/// iteration reads the WAL to its end, ships it ignoring the request budget, and marks the ticket done. Every
/// transaction committed before `flush` was called is then in storage.
#[derive(Debug, Default)]
pub struct Flusher {
    state: std::sync::Mutex<FlushState>,
    changed: std::sync::Condvar,
}

#[derive(Debug, Default)]
struct FlushState {
    requested: u64,
    done: u64,
    durable: Option<Durable>,
    last_error: Option<String>,
    /// The loop ended: `Some(None)` cleanly, `Some(Some(e))` with an error.
    stopped: Option<Option<String>>,
    /// The database's files changed since the loop last waited (crate::notify).
    poked: bool,
    /// Threads in `flush`, waiting for `done` to reach their ticket: only then does a shipped loop iteration
    /// wake anyone (a thousand idle loops would otherwise make a futex call each per iteration).
    flushing: u32,
}

impl crate::notify::Poke for Flusher {
    fn poke(&self) {
        self.lock().poked = true;
        self.changed.notify_all();
    }
}

impl Flusher {
    fn lock(&self) -> std::sync::MutexGuard<'_, FlushState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn requested(&self) -> u64 {
        self.lock().requested
    }

    fn done(&self) -> u64 {
        self.lock().done
    }

    fn shipped(&self, ticket: u64, durable: Durable) {
        let mut s = self.lock();
        s.done = s.done.max(ticket);
        s.durable = Some(durable);
        s.last_error = None;
        if s.flushing > 0 {
            self.changed.notify_all();
        }
    }

    fn failed(&self, e: &str) {
        self.lock().last_error = Some(e.to_string());
    }

    /// Wakes the loop waiting in `wait_for_request` (after its stop flag was set).
    pub(crate) fn wake(&self) {
        let _s = self.lock();
        self.changed.notify_all();
    }

    pub(crate) fn stopped(&self, e: Option<String>) {
        self.lock().stopped = Some(e);
        self.changed.notify_all();
    }

    /// Sleeps up to `d`, waking early for a flush request, a change of the database's files (returns true) or
    /// `stop`.
    fn wait_for_request(&self, stop: &AtomicBool, d: Duration) -> bool {
        let end = Instant::now() + d;
        let mut s = self.lock();
        while s.requested <= s.done && !s.poked && !stop.load(Ordering::Relaxed) {
            let now = Instant::now();
            if now >= end {
                break;
            }
            // Woken early by a flush request or by `wake` (whoever sets `stop` calls it).
            s = match self.changed.wait_timeout(s, end - now) {
                Ok((g, _)) => g,
                Err(p) => p.into_inner().0,
            };
        }
        std::mem::take(&mut s.poked)
    }

    /// The position shipped so far, if the loop has reported one.
    pub fn durable(&self) -> Option<Durable> {
        self.lock().durable
    }

    /// Asks the loop to ship everything committed now and waits until it is in storage (or `timeout`).
    pub fn flush(&self, timeout: Duration) -> Result<Durable> {
        let end = Instant::now() + timeout;
        let mut s = self.lock();
        s.requested += 1;
        let ticket = s.requested;
        self.changed.notify_all();
        s.flushing += 1;
        let r = self.wait_done(s, ticket, end, timeout);
        self.lock().flushing -= 1;
        r
    }

    fn wait_done(
        &self,
        mut s: std::sync::MutexGuard<'_, FlushState>,
        ticket: u64,
        end: Instant,
        timeout: Duration,
    ) -> Result<Durable> {
        loop {
            if s.done >= ticket {
                if let Some(d) = s.durable {
                    return Ok(d);
                }
            }
            if let Some(stopped) = &s.stopped {
                return Err(Error::Other(match stopped {
                    Some(e) => format!("replication stopped before the flush completed: {e}"),
                    None => "replication stopped before the flush completed".into(),
                }));
            }
            let now = Instant::now();
            if now >= end {
                return Err(Error::Other(match &s.last_error {
                    Some(e) => format!("not in storage after {timeout:?}: {e}"),
                    None => format!("not in storage after {timeout:?}"),
                }));
            }
            s = match self.changed.wait_timeout(s, end - now) {
                Ok((g, _)) => g,
                Err(p) => p.into_inner().0,
            };
        }
    }
}

/// Errors the loop waits out: storage failures of any kind (the WAL keeps the data meanwhile) and SQLite
/// lock contention.
fn retryable(e: &Error) -> bool {
    match e {
        Error::Storage { .. } | Error::Interrupted(_) => true,
        Error::Sqlite { source: rusqlite::Error::SqliteFailure(f, _), .. } => {
            matches!(f.code, rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
        }
        _ => false,
    }
}

/// Sleeps for `d`, waking early when `stop` is set.
pub fn sleep_until(stop: &AtomicBool, d: Duration) {
    let end = Instant::now() + d;
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        if now >= end {
            return;
        }
        std::thread::sleep((end - now).min(Duration::from_millis(50)));
    }
}

/// The pages of the committed state at the end of the current WAL cycle that come from the WAL.
struct Overlay {
    /// The WAL header the overlay was read under (`None`: no WAL).
    header: Option<WalHeader>,
    pages: BTreeMap<u32, u64>,
    end: WalCursor,
    db_size: u32,
}

/// `app.db` -> `app.db-walrust-snapshot`: created by `walrust snapshot`, removed by the watch that took it.
pub fn snapshot_request_path(db: &Path) -> PathBuf {
    let mut p = state_path(db).into_os_string();
    p.push("-snapshot");
    PathBuf::from(p)
}

fn lock_path(db: &Path) -> PathBuf {
    let mut p = state_path(db).into_os_string();
    p.push(".lock");
    PathBuf::from(p)
}

/// Whether a walrust on this machine is watching `db` right now (holds its lock).
pub fn is_watched(db: &Path) -> Result<bool> {
    let p = lock_path(db);
    let f = match File::open(&p) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(Error::io(format!("opening {}", p.display()), e)),
    };
    match f.try_lock_shared() {
        Ok(()) => Ok(false),
        Err(std::fs::TryLockError::WouldBlock) => Ok(true),
        Err(std::fs::TryLockError::Error(e)) => Err(Error::io(format!("locking {}", p.display()), e)),
    }
}

/// One walrust per database on this machine: an exclusive lock on `DB-walrust.lock`.
fn lock_file(db: &Path) -> Result<File> {
    let p = lock_path(db);
    crate::state::lock_exclusive(&p, || {
        format!("another walrust is already watching {} (lock {} is held)", db.display(), p.display())
    })
}

/// Signals that stop a watch: the first asks for a drain, the second exits at once.
pub fn install_signal_handlers() -> Result<Arc<AtomicBool>> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [SIGTERM, SIGINT] {
        signal_hook::flag::register_conditional_shutdown(sig, 130, Arc::clone(&stop))
            .map_err(|e| Error::io("installing signal handlers", e))?;
        signal_hook::flag::register(sig, Arc::clone(&stop)).map_err(|e| Error::io("installing signal handlers", e))?;
    }
    Ok(stop)
}
