//! Restore: plan from LISTs, stream the snapshot and changesets, verify every object's SHA-256 and the chain,
//! apply pages into a temp file, run `PRAGMA integrity_check`, fsync, rename into place (invariant 5).
//!
//! Memory is one page buffer plus the decoders' windows, whatever the database size.

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::thread::{Scope, ScopedJoinHandle};

use crate::error::{Error, Result};
use crate::hadbp;
use crate::keys::Kind;
use crate::object::ObjectStream;
use crate::prefetch::Fetch;
use crate::remote::{self, Entry};
use crate::state::{state_path, FileStamp, LocalState, STATE_VERSION};
use crate::storage::Storage;

/// Which state to restore.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// The newest restore point: the last changeset (or the base snapshot) of the newest generation holding one.
    Latest,
    /// The last state committed at or before this instant (ms since the epoch).
    Time(u64),
    /// The state right after this seq.
    Seq(u64),
}

/// The objects to apply, in order: a snapshot, then the changesets after it.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The database name.
    pub name: String,
    /// The generation the restore point is in.
    pub generation: u64,
    /// The snapshot to start from, then every changeset after it up to `seq`, in apply order.
    pub objects: Vec<Entry>,
    /// Sequence number of the restore point: the restored state is the one right after it.
    pub seq: u64,
    /// Commit time of the restore point, ms since the Unix epoch.
    pub commit_ms: u64,
}

impl Plan {
    /// Total stored (compressed) size of the objects, in bytes.
    pub fn bytes(&self) -> u64 {
        self.objects.iter().map(|e| e.size).sum()
    }
}

/// Plans a restore with LISTs only.
pub fn plan(storage: &dyn Storage, name: &str, target: Target) -> Result<Plan> {
    let gens = remote::generations(storage, name)?;
    if gens.is_empty() {
        return Err(Error::NotFound(format!("no backups of '{name}' in {}", storage.describe())));
    }
    let mut oldest_ms: Option<u64> = None;
    let mut newest_ms: Option<u64> = None;
    for &g in gens.iter().rev() {
        let objs = remote::objects(storage, name, g, None)?;
        let points: Vec<&Entry> = objs.iter().filter(|e| e.key.kind != Kind::Snapshot).collect();
        let Some(last) = remote::chain_last(&objs) else { continue };
        newest_ms = Some(newest_ms.unwrap_or(0).max(last.key.commit_ms));
        let chosen = match target {
            Target::Latest => Some(last),
            Target::Seq(s) => points.iter().copied().find(|e| e.key.seq == s),
            Target::Time(t) => points.iter().copied().filter(|e| e.key.commit_ms <= t).max_by_key(|e| e.key.seq),
        };
        if let Some(first) = points.iter().map(|e| e.key.commit_ms).min() {
            oldest_ms = Some(oldest_ms.map_or(first, |o| o.min(first)));
        }
        if let Some(point) = chosen {
            if let Target::Time(t) = target {
                if t > newest_ms.unwrap_or(0) && g == *gens.last().unwrap_or(&g) && point.key.seq == last.key.seq {
                    // After the newest point of the newest generation.
                    return Err(Error::NotFound(format!(
                        "{} is after the newest restore point of '{name}' ({}); omit --point-in-time to restore the latest",
                        fmt_ms(t),
                        fmt_ms(last.key.commit_ms)
                    )));
                }
            }
            return plan_in_generation(name, g, &objs, point.key.seq, point.key.commit_ms);
        }
    }
    Err(Error::NotFound(match target {
        Target::Time(t) => format!(
            "{} is before the oldest restore point of '{name}' ({})",
            fmt_ms(t),
            oldest_ms.map(fmt_ms).unwrap_or_else(|| "none".into())
        ),
        Target::Seq(s) => format!("seq {s} is not a restore point of '{name}'"),
        Target::Latest => format!("no usable backups of '{name}' in {}", storage.describe()),
    }))
}

/// Formats `ms` (ms since the Unix epoch) as RFC 3339 UTC with milliseconds, e.g. `2024-02-29T12:00:00.000Z`.
pub fn fmt_ms(ms: u64) -> String {
    humantime::format_rfc3339_millis(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms)).to_string()
}

/// Picks the newest snapshot at or before `seq` and the changesets after it, checking for gaps and forks.
pub(crate) fn plan_in_generation(
    name: &str,
    generation: u64,
    objs: &[Entry],
    seq: u64,
    commit_ms: u64,
) -> Result<Plan> {
    let start = objs
        .iter()
        .filter(|e| matches!(e.key.kind, Kind::Base | Kind::Snapshot) && e.key.seq <= seq)
        .max_by_key(|e| (e.key.seq, e.key.kind == Kind::Base))
        .ok_or_else(|| {
            Error::Corrupt(format!("generation {generation:016x} of '{name}' has no snapshot at or before seq {seq}"))
        })?;
    let mut plan = vec![start.clone()];
    let mut expect = start.key.seq + 1;
    for e in objs.iter().filter(|e| e.key.kind == Kind::Changeset && e.key.seq > start.key.seq && e.key.seq <= seq) {
        if e.key.seq < expect {
            return Err(Error::Corrupt(format!(
                "two changesets for seq {} in generation {generation:016x}: {} and {} (two writers?)",
                e.key.seq,
                plan.last().map(|p| p.key_str.as_str()).unwrap_or(""),
                e.key_str
            )));
        }
        if e.key.seq > expect {
            return Err(Error::Corrupt(format!(
                "changeset seq {expect} is missing from generation {generation:016x} of '{name}' (next is {})",
                e.key_str
            )));
        }
        plan.push(e.clone());
        expect += 1;
    }
    if expect != seq + 1 {
        return Err(Error::Corrupt(format!(
            "changeset seq {expect} is missing from generation {generation:016x} of '{name}'"
        )));
    }
    Ok(Plan { name: name.to_string(), generation, objects: plan, seq, commit_ms })
}

/// What a restore did.
#[derive(Debug, Clone)]
pub struct Report {
    /// The plan carried out.
    pub plan: Plan,
    /// Pages written into the file (a page written by several objects counts each time).
    pub pages_written: u64,
    /// Size of the restored database, in pages.
    pub db_pages: u32,
    /// Page size of the restored database, in bytes.
    pub page_size: u32,
    /// Chain value after the last object.
    pub chain: u64,
}

/// Where and what [`restore`] writes.
#[derive(Debug, Clone)]
pub struct RestoreOptions {
    /// The database file to create. The restore is written to a temp file beside it, checked, then renamed
    /// into place.
    pub output: PathBuf,
    /// Replace `output` (removing its `-wal` and `-shm` files) if it exists; otherwise that is
    /// [`Error::Exists`].
    pub force: bool,
    /// Which state to restore.
    pub target: Target,
    /// Write `OUT-walrust` so that a `watch` of the restored database continues this generation.
    pub write_state: bool,
}

/// Restores `name` into `opts.output`.
pub fn restore(storage: &dyn Storage, name: &str, opts: &RestoreOptions) -> Result<Report> {
    restore_with_progress(storage, name, opts, &mut |_| {})
}

/// How far a restore has come: stored bytes downloaded and verified of the plan's total.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    /// Stored bytes downloaded and verified so far.
    pub done_bytes: u64,
    /// Stored bytes of the whole plan ([`Plan::bytes`]).
    pub total_bytes: u64,
}

/// `restore`, calling `progress` often (after every page) while objects are downloaded.
pub fn restore_with_progress(
    storage: &dyn Storage,
    name: &str,
    opts: &RestoreOptions,
    progress: &mut dyn FnMut(Progress),
) -> Result<Report> {
    let out = &opts.output;
    if !opts.force && fs::symlink_metadata(out).is_ok() {
        return Err(Error::Exists(format!("{} already exists (use --force to replace it)", out.display())));
    }
    let plan = plan(storage, name, opts.target)?;
    let tmp = temp_path(out);
    let result = restore_into(storage, &plan, &tmp, progress);
    let report = match result {
        Ok(r) => r,
        Err(e) => {
            remove_with_sidecars(&tmp);
            return Err(e);
        }
    };
    // The old database's WAL and shm would be applied to the new file by SQLite: remove them first.
    if opts.force {
        for suffix in ["-wal", "-shm"] {
            let p = sidecar(out, suffix);
            if let Err(e) = fs::remove_file(&p) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    remove_with_sidecars(&tmp);
                    return Err(Error::io(format!("removing {}", p.display()), e));
                }
            }
        }
    }
    if let Err(e) = fs::rename(&tmp, out) {
        remove_with_sidecars(&tmp);
        return Err(Error::io(format!("renaming into {}", out.display()), e));
    }
    sync_parent(out)?;
    if opts.write_state {
        let last = plan.objects.last().map(|e| e.key_str.clone()).unwrap_or_default();
        let stamp = FileStamp::of(out).map_err(|e| Error::io(out.display().to_string(), e))?;
        let state = LocalState {
            version: STATE_VERSION,
            name: name.to_string(),
            location: storage.describe(),
            generation: plan.generation,
            seq: plan.seq,
            chain: report.chain,
            head_key: last,
            wal: None,
            db_stamp: Some(stamp),
            page_size: report.page_size,
            last_snapshot_ms: plan.objects.first().map(|e| e.key.commit_ms).unwrap_or(0),
            pending: None,
        };
        state.save(&state_path(out))?;
    }
    Ok(report)
}

/// Applies the plan into `tmp`, verifies it, fsyncs it.
fn restore_into(storage: &dyn Storage, plan: &Plan, tmp: &Path, progress: &mut dyn FnMut(Progress)) -> Result<Report> {
    let file = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .read(true)
        .open(tmp)
        .map_err(|e| Error::io(format!("creating {}", tmp.display()), e))?;
    let applied = apply_with_progress(storage, plan, &file, tmp, progress)?;
    file.set_len(applied.db_pages as u64 * applied.page_size as u64)
        .map_err(|e| Error::io(format!("writing {}", tmp.display()), e))?;
    file.sync_all().map_err(|e| Error::io(format!("syncing {}", tmp.display()), e))?;
    drop(file);
    integrity_check(tmp)?;
    let f = File::open(tmp).map_err(|e| Error::io(tmp.display().to_string(), e))?;
    f.sync_all().map_err(|e| Error::io(format!("syncing {}", tmp.display()), e))?;
    Ok(Report {
        plan: plan.clone(),
        pages_written: applied.pages_written,
        db_pages: applied.db_pages,
        page_size: applied.page_size,
        chain: applied.chain,
    })
}

/// The result of applying a plan's objects to a file.
#[derive(Debug, Clone, Copy)]
pub struct Applied {
    /// Page size, in bytes (from the snapshot).
    pub page_size: u32,
    /// Size of the database after the last object, in pages (from its commit record); the file may be longer
    /// and is to be truncated to `db_pages * page_size`.
    pub db_pages: u32,
    /// Pages written into the file (a page written by several objects counts each time).
    pub pages_written: u64,
    /// Chain value after the last object.
    pub chain: u64,
}

/// Streams each object of the plan, verifying hashes and the chain, and writes its pages into `file`.
pub fn apply(storage: &dyn Storage, plan: &Plan, file: &File, path: &Path) -> Result<Applied> {
    apply_with_progress(storage, plan, file, path, &mut |_| {})
}

/// Objects read ahead of the one being applied (see crate::prefetch): enough to hide a round trip per small
/// changeset; each buffers at most 1 MiB.
const READ_AHEAD: usize = 8;

/// `apply`, reporting progress after every page. The next objects are downloaded while one is applied.
pub fn apply_with_progress(
    storage: &dyn Storage,
    plan: &Plan,
    file: &File,
    path: &Path,
    progress: &mut dyn FnMut(Progress),
) -> Result<Applied> {
    let total_bytes = plan.bytes();
    let mut done_before = 0u64;
    let mut buf = Vec::new();
    let mut page_size = 0u32;
    let mut db_pages: Option<u32> = None;
    let mut chain: Option<u64> = None;
    let mut pages_written = 0u64;
    std::thread::scope(|scope| {
        let mut writer = PageWriter::start(scope, file).map_err(|e| Error::io("starting the writer thread", e))?;
        let mut ahead: std::collections::VecDeque<Option<Fetch<'_>>> = std::collections::VecDeque::new();
        for (i, entry) in plan.objects.iter().enumerate() {
            // Keep the next READ_AHEAD objects (this one included) downloading. A fetch that cannot start (no
            // thread) is simply read directly.
            while ahead.len() < READ_AHEAD && i + ahead.len() < plan.objects.len() {
                let next = &plan.objects[i + ahead.len()];
                ahead.push_back(Fetch::start(scope, storage, &next.key_str, next.size).ok());
            }
            let mut fetched = ahead.pop_front().flatten();
            // An object whose read fails in transit (after its resumes) is read again from its start, resuming
            // again (it is immutable, and its pages land where they did the first time).
            let one = crate::object::with_retries(&entry.key_str, || {
                let prev = if i == 0 { None } else { Some((page_size, chain)) };
                let mut report = |done: u64| progress(Progress { done_bytes: done_before + done, total_bytes });
                let obj = match fetched.take() {
                    Some(f) => ObjectStream::from_fetch(entry, f)?,
                    None => ObjectStream::open_resuming(scope, storage, entry)?,
                };
                apply_object(obj, entry, prev, &mut writer, path, &mut buf, &mut report)
            })?;
            page_size = one.page_size;
            if one.db_pages.is_some() {
                db_pages = one.db_pages;
            }
            pages_written += one.pages_written;
            chain = Some(one.chain);
            done_before += entry.size;
            progress(Progress { done_bytes: done_before, total_bytes });
        }
        writer.finish().map_err(|e| Error::io(format!("writing {}", path.display()), e))
    })?;
    Ok(Applied { page_size, db_pages: db_pages.unwrap_or(0), pages_written, chain: chain.unwrap_or(0) })
}

/// Applies one object of a plan (opened as `obj`) to `file`, checking it against `prev` (page size and chain
/// value after the previous object; `None` for the first, which must be a snapshot). `db_pages` is the
/// object's commit record; `chain` the chain value after it.
fn apply_object(
    mut obj: ObjectStream,
    entry: &Entry,
    prev: Option<(u32, Option<u64>)>,
    writer: &mut PageWriter<'_>,
    path: &Path,
    buf: &mut Vec<u8>,
    progress: &mut dyn FnMut(u64),
) -> Result<ObjectApplied> {
    let key = &entry.key_str;
    let corrupt = |what: String| Error::Corrupt(format!("object {key} is corrupt: {what}"));
    let h = *obj.header();
    if h.seq != entry.key.seq || h.created_ms != entry.key.commit_ms {
        return Err(corrupt(format!(
            "its header says seq {} at {} but its key says seq {} at {} (copied from elsewhere?)",
            h.seq, h.created_ms, entry.key.seq, entry.key.commit_ms
        )));
    }
    let is_snapshot = h.flags & hadbp::FLAG_SNAPSHOT != 0;
    let is_base = h.flags & hadbp::FLAG_BASE != 0;
    let kind_ok = match entry.key.kind {
        Kind::Base => is_snapshot && is_base,
        Kind::Snapshot => is_snapshot && !is_base,
        Kind::Changeset => !is_snapshot && !is_base,
    };
    if !kind_ok {
        return Err(corrupt(format!("its flags {:#04x} do not match its kind", h.flags)));
    }
    let page_size = match prev {
        None if !is_snapshot => return Err(corrupt("a restore must start from a snapshot".into())),
        None => h.page_size,
        Some((page_size, chain)) => {
            if h.page_size != page_size {
                return Err(corrupt(format!("page size {} differs from the snapshot's {page_size}", h.page_size)));
            }
            if Some(h.prev_checksum) != chain {
                return Err(Error::Corrupt(format!(
                    "chain broken at {key}: it continues {:016x} but the previous object ends at {:016x}",
                    h.prev_checksum,
                    chain.unwrap_or(0)
                )));
            }
            page_size
        }
    };
    let mut pages_written = 0u64;
    while let Some(pgno) = obj.next_page(buf, page_size)? {
        writer
            .page((pgno as u64 - 1) * page_size as u64, buf)
            .map_err(|e| Error::io(format!("writing {}", path.display()), e))?;
        pages_written += 1;
        progress(obj.bytes_read().min(entry.size));
    }
    let checksum = obj.checksum().ok_or_else(|| corrupt("stream ended early".into()))?;
    let chain = match entry.key.kind {
        Kind::Snapshot => h.prev_checksum,
        Kind::Base | Kind::Changeset => checksum,
    };
    Ok(ObjectApplied { page_size, db_pages: obj.db_pages(), pages_written, chain })
}

/// Writes restored pages into the file on a thread of its own, in order, batched: a batch is up to
/// `BATCH_BYTES` of pages, consecutive pages merged into one write. The copy into the page cache then overlaps
/// decompression and hashing, and a snapshot costs one write per MiB instead of one per page. At most
/// `BATCHES_QUEUED` batches wait for the thread, so memory stays bounded (a few MiB).
struct PageWriter<'scope> {
    tx: Option<SyncSender<Batch>>,
    /// Batches the thread has written, for reuse.
    recycled: Receiver<Batch>,
    batch: Batch,
    thread: Option<ScopedJoinHandle<'scope, std::io::Result<()>>>,
}

/// Bytes of pages and where each run of them goes: (file offset, length), the runs back to back in `data`.
#[derive(Default)]
struct Batch {
    data: Vec<u8>,
    runs: Vec<(u64, usize)>,
}

const BATCH_BYTES: usize = 1 << 20;
const BATCHES_QUEUED: usize = 2;

impl<'scope> PageWriter<'scope> {
    fn start<'env>(scope: &'scope Scope<'scope, 'env>, file: &'env File) -> std::io::Result<PageWriter<'scope>> {
        let (tx, rx) = sync_channel::<Batch>(BATCHES_QUEUED);
        let (back, recycled) = sync_channel::<Batch>(BATCHES_QUEUED + 2);
        let thread = std::thread::Builder::new().name("walrust-write".into()).stack_size(128 * 1024).spawn_scoped(
            scope,
            move || {
                for batch in rx {
                    let mut at = 0;
                    for &(offset, len) in &batch.runs {
                        file.write_all_at(&batch.data[at..at + len], offset)?;
                        at += len;
                    }
                    let _ = back.try_send(batch);
                }
                Ok(())
            },
        )?;
        Ok(PageWriter { tx: Some(tx), recycled, batch: Batch::default(), thread: Some(thread) })
    }

    /// Queues `data` to be written at `offset` (after everything queued before it).
    fn page(&mut self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        if self.batch.data.len() + data.len() > BATCH_BYTES {
            self.send()?;
        }
        let b = &mut self.batch;
        match b.runs.last_mut() {
            Some((o, len)) if *o + *len as u64 == offset => *len += data.len(),
            _ => b.runs.push((offset, data.len())),
        }
        b.data.extend_from_slice(data);
        Ok(())
    }

    fn send(&mut self) -> std::io::Result<()> {
        if self.batch.runs.is_empty() {
            return Ok(());
        }
        let mut next = self.recycled.try_recv().unwrap_or_default();
        next.data.clear();
        next.runs.clear();
        let full = std::mem::replace(&mut self.batch, next);
        match &self.tx {
            Some(tx) if tx.send(full).is_ok() => Ok(()),
            // The thread stopped: its error.
            _ => Err(self.finish().err().unwrap_or_else(|| std::io::Error::other("the writer thread stopped"))),
        }
    }

    /// Writes what is queued and waits for the thread: the first write error, if any.
    fn finish(&mut self) -> std::io::Result<()> {
        if self.tx.is_some() && !self.batch.runs.is_empty() {
            let full = std::mem::take(&mut self.batch);
            let _ = self.tx.as_ref().map(|tx| tx.send(full));
        }
        self.tx = None;
        match self.thread.take() {
            Some(h) => match h.join() {
                Ok(r) => r,
                Err(_) => Err(std::io::Error::other("the writer thread panicked")),
            },
            None => Err(std::io::Error::other("the writer thread had stopped")),
        }
    }
}

/// What one object contributed (see `apply_object`).
struct ObjectApplied {
    page_size: u32,
    db_pages: Option<u32>,
    pages_written: u64,
    chain: u64,
}

/// Runs `PRAGMA integrity_check` on a restored file; anything but "ok" is corruption.
pub fn integrity_check(path: &Path) -> Result<()> {
    let conn = rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE)
        .map_err(|e| Error::sqlite(format!("opening {}", path.display()), e))?;
    let rows: Vec<String> = (|| -> rusqlite::Result<Vec<String>> {
        let mut st = conn.prepare("PRAGMA integrity_check")?;
        let rows = st.query_map([], |r| r.get::<_, String>(0))?;
        rows.collect()
    })()
    .map_err(|e| Error::Corrupt(format!("restored database failed integrity_check: {e}")))?;
    drop(conn);
    if rows.len() == 1 && rows[0] == "ok" {
        Ok(())
    } else {
        Err(Error::Corrupt(format!(
            "restored database failed integrity_check: {}",
            rows.iter().take(3).cloned().collect::<Vec<_>>().join("; ")
        )))
    }
}

fn temp_path(out: &Path) -> PathBuf {
    let name = out.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "restore".into());
    out.with_file_name(format!(".{name}.walrust-tmp-{}", std::process::id()))
}

fn sidecar(p: &Path, suffix: &str) -> PathBuf {
    let mut s = p.as_os_str().to_os_string();
    s.push(suffix);
    PathBuf::from(s)
}

fn remove_with_sidecars(p: &Path) {
    let _ = fs::remove_file(p);
    let _ = fs::remove_file(sidecar(p, "-wal"));
    let _ = fs::remove_file(sidecar(p, "-shm"));
    let _ = fs::remove_file(sidecar(p, "-journal"));
}

fn sync_parent(p: &Path) -> Result<()> {
    let dir = match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    File::open(&dir).and_then(|d| d.sync_all()).map_err(|e| Error::io(format!("syncing {}", dir.display()), e))
}
