//! The embedding API: a [`Replicator`] replicates any number of databases from inside an application, one
//! thread each, exactly as `walrust watch` does (the CLI is built on it).
//!
//! ```no_run
//! use std::time::Duration;
//! use walrust::{Replicator, WatchOptions};
//!
//! # fn main() -> walrust::Result<()> {
//! let replicator = Replicator::open("file:///var/backups/walrust")?;
//! replicator.add("app.db", WatchOptions::new("app"))?;
//! // ... the application commits a transaction on app.db, then:
//! let durable = replicator.flush("app.db", Duration::from_secs(10))?;
//! println!("in storage up to seq {} of generation {}", durable.seq, durable.generation);
//! replicator.shutdown()?;
//! # Ok(())
//! # }
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::metrics::Registry;
use crate::semaphore::Semaphore;
use crate::storage::{self, OpenOptions, StorageRef};
use crate::watch::{Durable, Flusher, WatchOptions, Watcher};
use crate::webhook::Webhooks;

/// Replicates databases to one storage location; each added database runs its loop on its own thread until it
/// is removed, ends with an error, or the replicator shuts down. Share it between threads with an `Arc`.
pub struct Replicator {
    storage: StorageRef,
    metrics: Option<Arc<Registry>>,
    webhooks: Option<Webhooks>,
    running: Mutex<BTreeMap<PathBuf, Running>>,
    /// Bounds how many databases added with [`Replicator::add_background`] begin (read their remote head, ship
    /// their backlog or a first snapshot) at once.
    begin_gate: Arc<Semaphore>,
    /// Threads that have ended (each counts itself on the way out) and ended threads joined so far: while they
    /// are equal `reap` has nothing to look for (the CLI's supervisor calls it ten times a second).
    ended: Arc<AtomicU64>,
    joined: AtomicU64,
}

/// How many databases begin at once (see [`Replicator::add_background`]).
const CONCURRENT_BEGINS: usize = 4;

/// One database's thread.
struct Running {
    name: String,
    /// The settings the loop was started with (a reload compares them, see [`Replicator::options`]).
    opts: WatchOptions,
    stop: Arc<AtomicBool>,
    flusher: Arc<Flusher>,
    handle: JoinHandle<Result<()>>,
    /// File change notifications for the database, while it runs.
    _notify: Option<Arc<crate::notify::Registration>>,
}

/// A database whose loop ended on its own (see [`Replicator::reap`]).
#[derive(Debug)]
pub struct Ended {
    /// The database file, as given to [`Replicator::add`].
    pub path: PathBuf,
    /// The database's name in storage.
    pub name: String,
    /// `Ok` when it stopped cleanly; the error it stopped with otherwise.
    pub result: Result<()>,
}

impl Replicator {
    /// Opens `location` (`s3://BUCKET[/PREFIX]` or `file:///ABS/DIR`, created if missing) with credentials,
    /// region and endpoint from the environment as the CLI does, and checks that the storage honours
    /// create-if-absent writes (which fencing rests on).
    pub fn open(location: &str) -> Result<Replicator> {
        let location = storage::parse_location(location)?;
        let storage = storage::open(&location, &OpenOptions { create: true, ..Default::default() })?;
        check_storage(storage.as_ref(), false)?;
        Ok(Replicator::new(storage))
    }

    /// A replicator on an opened storage (no checks: see [`check_storage`]).
    pub fn new(storage: StorageRef) -> Replicator {
        Replicator {
            storage,
            metrics: None,
            webhooks: None,
            running: Mutex::new(BTreeMap::new()),
            begin_gate: Arc::new(Semaphore::new(CONCURRENT_BEGINS)),
            ended: Arc::new(AtomicU64::new(0)),
            joined: AtomicU64::new(0),
        }
    }

    /// Publishes every database's numbers to `registry` (serve it with `metrics::serve`). Set before `add`.
    pub fn with_metrics(mut self, registry: Arc<Registry>) -> Replicator {
        self.metrics = Some(registry);
        self
    }

    /// Sends webhook events (a database's uploads keep failing) through `webhooks`. Set before `add`.
    pub fn with_webhooks(mut self, webhooks: Webhooks) -> Replicator {
        self.webhooks = Some(webhooks);
        self
    }

    /// The storage databases are replicated to.
    pub fn storage(&self) -> &StorageRef {
        &self.storage
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<PathBuf, Running>> {
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts replicating the database at `db` (WAL mode) under `opts.name`: resumes its chain or starts a new
    /// generation with a snapshot (as `walrust watch` does), then runs its loop on a new thread. Errors when it
    /// cannot start (not a WAL database, fenced, storage unreachable) or is already added.
    pub fn add(&self, db: impl AsRef<Path>, opts: WatchOptions) -> Result<()> {
        let db = db.as_ref().to_path_buf();
        self.check_new(&db, &opts)?;
        // Errors from start name the database's path themselves.
        let w = Watcher::start(&db, Arc::clone(&self.storage), opts)?;
        self.spawn(w)
    }

    /// Like [`Replicator::add`], but only the local checks (the file is a SQLite database in WAL mode, no other
    /// walrust watches it) happen before this returns; the rest of the start (reading the remote head, shipping
    /// what was committed while nothing replicated it, or a first snapshot) runs on the database's thread, a
    /// few databases at a time, so that many databases start side by side and one slow start delays no other.
    /// A start that fails on storage is tried again with backoff; when the replicator stops meanwhile it is
    /// tried once more, since stopping means shipping everything committed, and its error is the database's
    /// result ([`Replicator::reap`], [`Replicator::shutdown_each`]). Any other start error ends the database.
    pub fn add_background(&self, db: impl AsRef<Path>, opts: WatchOptions) -> Result<()> {
        let db = db.as_ref().to_path_buf();
        self.check_new(&db, &opts)?;
        let w = Watcher::open(&db, Arc::clone(&self.storage), opts.clone())?;
        let storage = Arc::clone(&self.storage);
        let gate = Arc::clone(&self.begin_gate);
        let (metrics, webhooks) = (self.metrics.clone(), self.webhooks.clone());
        self.spawn_with(w, move |mut w, stop| {
            let mut failures: u32 = 0;
            loop {
                let begun = {
                    let _permit = gate.acquire();
                    w.begin()
                };
                // The start went deep (a snapshot, its upload); the loop waits with a shallow stack. Many
                // databases starting together would otherwise each keep those pages until their first upload.
                crate::stack::release_unused();
                match begun {
                    Ok(()) => return Ok(w),
                    Err(e) if e.is_transient() && !stop.load(Ordering::Relaxed) => {
                        failures += 1;
                        let wait = Duration::from_millis((1000u64 << failures.min(5)).min(30_000));
                        crate::log::warn(&format!(
                            "{}: cannot start yet: {e} (trying again in {}s)",
                            db.display(),
                            wait.as_secs()
                        ));
                        crate::watch::sleep_until(stop, wait);
                        // A failed begin may have left the watcher halfway: start again from what storage and
                        // the state file say, as a restarted process would (the old one lets go of the lock
                        // first).
                        let (flusher, notified) = (w.flusher(), w.notified());
                        drop(w);
                        w = Box::new(Watcher::open(&db, Arc::clone(&storage), opts.clone())?);
                        w.set_flusher(flusher);
                        w.set_notified(notified);
                        if let Some(r) = &metrics {
                            w.set_metrics(Arc::clone(r));
                        }
                        if let Some(h) = &webhooks {
                            w.set_webhooks(h.clone());
                        }
                    }
                    Err(e) => return Err(e),
                }
            }
        })
    }

    fn check_new(&self, db: &Path, opts: &WatchOptions) -> Result<()> {
        let running = self.lock();
        if running.contains_key(db) {
            return Err(Error::Usage(format!("{} is already being replicated", db.display())));
        }
        if running.values().any(|r| r.name == opts.name) {
            return Err(Error::Usage(format!("the name '{}' is already in use", opts.name)));
        }
        Ok(())
    }

    /// Runs an already started watcher on its own thread.
    pub fn spawn(&self, w: Watcher) -> Result<()> {
        self.spawn_with(w, |w, _| Ok(w))
    }

    /// Runs `first` (the rest of the start), then the watcher's loop, on a new thread.
    fn spawn_with(
        &self,
        mut w: Watcher,
        first: impl FnOnce(Box<Watcher>, &AtomicBool) -> Result<Box<Watcher>> + Send + 'static,
    ) -> Result<()> {
        if let Some(r) = &self.metrics {
            w.set_metrics(Arc::clone(r));
        }
        if let Some(h) = &self.webhooks {
            w.set_webhooks(h.clone());
        }
        let flusher = w.flusher();
        let poke: Arc<dyn crate::notify::Poke> = flusher.clone();
        let notify = crate::notify::register(w.db_path(), Arc::downgrade(&poke)).map(Arc::new);
        w.set_notified(notify.clone());
        let stop = Arc::new(AtomicBool::new(false));
        let name = w.name().to_string();
        let opts = w.options().clone();
        let path = w.db_path().to_path_buf();
        let thread_stop = Arc::clone(&stop);
        let (thread_flusher, thread_path, ended) = (Arc::clone(&flusher), path.clone(), Arc::clone(&self.ended));
        let nice = w.nice();
        // The thread waits in `run` for as long as the database is watched, with everything above that frame
        // resident: the watcher is boxed (std moves a thread's closure a few times on its way in) and the start
        // runs in a frame of its own, so the frames above the wait stay small (see crate::stack).
        let w = Box::new(w);
        let handle = std::thread::Builder::new()
            .name(format!("walrust-db-{name}"))
            .stack_size(256 * 1024)
            .spawn(move || {
                crate::priority::lower_this_thread(nice);
                let r = match start(first, w, &thread_stop) {
                    Ok(mut w) => w.run(&thread_stop).map_err(|e| e.context(w.db_path().display())),
                    Err(e) => {
                        thread_flusher.stopped(Some(e.to_string()));
                        Err(e.context(thread_path.display()))
                    }
                };
                ended.fetch_add(1, Ordering::SeqCst);
                r
            })
            .map_err(|e| Error::io("starting a replication thread", e))?;
        self.lock().insert(path, Running { name, opts, stop, flusher, handle, _notify: notify });
        Ok(())
    }

    /// Stops replicating `db` after shipping everything committed. `None` when it was not being replicated.
    pub fn remove(&self, db: impl AsRef<Path>) -> Option<Result<()>> {
        let r = self.lock().remove(db.as_ref())?;
        r.stop.store(true, Ordering::Relaxed);
        r.flusher.wake();
        let result = join(r);
        self.joined.fetch_add(1, Ordering::SeqCst);
        Some(result)
    }

    /// Ships everything `db` has committed so far, ignoring the upload interval, and waits until it is in
    /// storage: when this returns `Ok`, every transaction committed before the call survives the loss of this
    /// machine. Errors after `timeout` (with the last storage error) or when the database's loop stopped.
    pub fn flush(&self, db: impl AsRef<Path>, timeout: Duration) -> Result<Durable> {
        let flusher = self.flusher_of(db.as_ref())?;
        flusher.flush(timeout)
    }

    /// Where `db`'s replicated state stands now (without waiting), if it is being replicated.
    pub fn durable(&self, db: impl AsRef<Path>) -> Option<Durable> {
        self.flusher_of(db.as_ref()).ok()?.durable()
    }

    fn flusher_of(&self, db: &Path) -> Result<Arc<Flusher>> {
        match self.lock().get(db) {
            Some(r) => Ok(Arc::clone(&r.flusher)),
            None => Err(Error::NotFound(format!("{} is not being replicated", db.display()))),
        }
    }

    /// The databases being replicated: (path, name).
    pub fn databases(&self) -> Vec<(PathBuf, String)> {
        self.lock().iter().map(|(p, r)| (p.clone(), r.name.clone())).collect()
    }

    /// The settings `db` is replicated with, if it is being replicated.
    pub fn options(&self, db: impl AsRef<Path>) -> Option<WatchOptions> {
        self.lock().get(db.as_ref()).map(|r| r.opts.clone())
    }

    /// Whether `db` is being replicated.
    pub fn contains(&self, db: impl AsRef<Path>) -> bool {
        self.lock().contains_key(db.as_ref())
    }

    /// Collects the databases whose loop ended on its own (an error, or the file was deleted or replaced);
    /// they are no longer replicated and can be added again.
    pub fn reap(&self) -> Vec<Ended> {
        if self.ended.load(Ordering::SeqCst) == self.joined.load(Ordering::SeqCst) {
            return Vec::new(); // no thread ended since the last look
        }
        let ended: Vec<(PathBuf, Running)> = {
            let mut running = self.lock();
            let paths: Vec<PathBuf> =
                running.iter().filter(|(_, r)| r.handle.is_finished()).map(|(p, _)| p.clone()).collect();
            paths.into_iter().filter_map(|p| running.remove(&p).map(|r| (p, r))).collect()
        };
        self.joined.fetch_add(ended.len() as u64, Ordering::SeqCst);
        ended.into_iter().map(|(path, r)| Ended { path, name: r.name.clone(), result: join(r) }).collect()
    }

    /// Stops every database after shipping what each has committed, and waits for them. Returns the first
    /// error any of them stopped with; every database is drained either way.
    pub fn shutdown(self) -> Result<()> {
        self.shutdown_each().into_iter().find_map(|e| e.result.err()).map_or(Ok(()), Err)
    }

    /// Like `shutdown`, reporting each database's outcome.
    pub fn shutdown_each(self) -> Vec<Ended> {
        let running = std::mem::take(&mut *self.lock());
        for r in running.values() {
            r.stop.store(true, Ordering::Relaxed);
            r.flusher.wake();
        }
        running.into_iter().map(|(path, r)| Ended { path, name: r.name.clone(), result: join(r) }).collect()
    }
}

impl Drop for Replicator {
    /// Dropping a replicator drains its databases like `shutdown` (errors are logged).
    fn drop(&mut self) {
        let running = std::mem::take(&mut *self.lock());
        for r in running.values() {
            r.stop.store(true, Ordering::Relaxed);
            r.flusher.wake();
        }
        for (_, r) in running {
            if let Err(e) = join(r) {
                crate::log::error(&e.to_string());
            }
        }
    }
}

/// Runs the rest of a watcher's start on its thread, in a frame that is gone by the time the loop waits.
#[inline(never)]
fn start(
    first: impl FnOnce(Box<Watcher>, &AtomicBool) -> Result<Box<Watcher>>,
    w: Box<Watcher>,
    stop: &AtomicBool,
) -> Result<Box<Watcher>> {
    first(w, stop)
}

fn join(r: Running) -> Result<()> {
    r.handle.join().unwrap_or_else(|_| Err(Error::Other(format!("{}: replication thread panicked", r.name))))
}

/// Checks that `storage` refuses a second create-if-absent write of one key (some S3 implementations ignore
/// `If-None-Match: *`, FIELD-NOTES 11); without it a second writer could overwrite backups unnoticed. With
/// `allow_unsafe` such a store is only warned about.
pub fn check_storage(storage: &dyn storage::Storage, allow_unsafe: bool) -> Result<()> {
    if storage::honours_create_if_absent(storage).map_err(|e| Error::from(e).context("probing the storage"))? {
        return Ok(());
    }
    let msg = format!(
        "{} accepted a second create-if-absent write of the same key (If-None-Match: * is ignored): a second \
         writer could overwrite backups unnoticed",
        storage.describe()
    );
    if !allow_unsafe {
        return Err(Error::Usage(format!(
            "{msg}; use a store that honours conditional writes, or --allow-unsafe-storage"
        )));
    }
    crate::log::warn(&format!("{msg}; continuing because of --allow-unsafe-storage"));
    Ok(())
}
