//! Wakes database loops when their files change (Linux inotify), so that an idle database costs nothing between
//! changes and a commit is seen as soon as it is written. One thread and one inotify instance per process, one
//! watch per directory; an event on `DB`, `DB-wal` or `DB-shm` pokes that database's loop.
//!
//! Writes (`IN_MODIFY`) are watched only while a loop waits for them (`Registration::set_waiting`): every write
//! the application makes to a watched directory costs it an event in its own `write` call (perf of an application
//! writing flat out: with the events, its system time per commit was 1.9x that without). A loop that is busy
//! looks every check interval anyway and does not need them. Creations, deletions, renames, closes and attribute
//! changes are always watched (rare, and how a loop hears of a new WAL, a deleted database or a snapshot request).
//!
//! The reader reads at most once per `PACE`: an event queued for a reader blocked in `read` wakes it, and the
//! writing process pays for that wake-up inside its `write`. Between reads the kernel merges a file's repeated
//! events into the last one queued and wakes no one.
//!
//! Only a hint: a loop that is poked looks at its files as it would on a timer, and loops still look now and then
//! without events (`watch::IDLE_WAIT`), so a lost event (queue overflow, a filesystem without inotify) costs
//! latency, never data. Where inotify is unavailable, registration returns None and the loop polls as before.

use std::collections::HashMap;
use std::ffi::{CString, OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

/// Least time between two reads of the event queue: the latency a notification may add (a loop that is busy
/// looks every check interval anyway), against one wake-up of this thread per write of a busy application.
const PACE: Duration = Duration::from_millis(10);

/// Something to wake: a database loop's `Flusher`.
pub trait Poke: Send + Sync {
    fn poke(&self);
}

struct Shared {
    fd: i32,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Directory watches: wd -> (directory, databases registered in it).
    dirs: HashMap<i32, Dir>,
    by_path: HashMap<PathBuf, i32>,
    next_id: u64,
}

/// Registrations of one database: (id, what to poke, waiting for writes).
type Targets = Vec<(u64, Weak<dyn Poke>, bool)>;

struct Dir {
    /// Database file name -> its registrations.
    dbs: HashMap<OsString, Targets>,
}

impl Dir {
    /// Whether a registration here waits for writes: then the watch includes `IN_MODIFY`.
    fn waiting(&self) -> bool {
        self.dbs.values().flatten().any(|(_, _, waiting)| *waiting)
    }
}

/// What a directory's watch always reports; `IN_MODIFY` is added while a loop there waits (see the module doc).
const BASE_MASK: u32 = libc::IN_CREATE
    | libc::IN_DELETE
    | libc::IN_MOVED_FROM
    | libc::IN_MOVED_TO
    | libc::IN_CLOSE_WRITE
    | libc::IN_ATTRIB;

/// `inotify_add_watch`: the directory's watch descriptor, or None. The kernel keeps one watch per directory and
/// instance, so for a watched directory this replaces the mask and returns the same descriptor.
fn add_watch(fd: i32, dir: &Path, mask: u32) -> Option<i32> {
    let c = CString::new(dir.as_os_str().as_bytes()).ok()?;
    // SAFETY: valid NUL-terminated path, our own descriptor.
    let wd = unsafe { libc::inotify_add_watch(fd, c.as_ptr(), mask) };
    (wd >= 0).then_some(wd)
}

/// Sets the watch of `dir` (descriptor `wd`) to `mask`; a path that now names another directory (replaced since)
/// gets no new watch.
fn set_mask(fd: i32, dir: &Path, wd: i32, mask: u32) {
    if let Some(got) = add_watch(fd, dir, mask).filter(|got| *got != wd) {
        // SAFETY: plain syscall on a watch just created on our own descriptor.
        unsafe { libc::inotify_rm_watch(fd, got) };
    }
}

/// Keeps one database registered; dropping it unregisters (and removes the directory's watch when it was the
/// last one there).
pub struct Registration {
    shared: Arc<Shared>,
    dir: PathBuf,
    name: OsString,
    id: u64,
}

fn shared() -> Option<Arc<Shared>> {
    static SHARED: OnceLock<Option<Arc<Shared>>> = OnceLock::new();
    SHARED
        .get_or_init(|| {
            // SAFETY: plain syscall; the descriptor is owned by `Shared` for the life of the process.
            let fd = unsafe { libc::inotify_init1(libc::IN_CLOEXEC) };
            if fd < 0 {
                return None;
            }
            let shared = Arc::new(Shared { fd, state: Mutex::new(State::default()) });
            let reader = Arc::clone(&shared);
            std::thread::Builder::new()
                .name("walrust-notify".into())
                .stack_size(128 * 1024)
                .spawn(move || read_events(&reader))
                .ok()?;
            Some(shared)
        })
        .clone()
}

/// Registers `db` (its WAL is `DB-wal` in the same directory): `target` is poked when any of its files change.
/// None when inotify is not available for it (then its loop polls).
pub fn register(db: &Path, target: Weak<dyn Poke>) -> Option<Registration> {
    let shared = shared()?;
    let dir = match db.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = db.file_name()?.to_os_string();
    let mut st = shared.state.lock().unwrap_or_else(|p| p.into_inner());
    let wd = match st.by_path.get(&dir) {
        Some(wd) => *wd,
        None => {
            let wd = add_watch(shared.fd, &dir, BASE_MASK)?;
            st.by_path.insert(dir.clone(), wd);
            st.dirs.insert(wd, Dir { dbs: HashMap::new() });
            wd
        }
    };
    st.next_id += 1;
    let id = st.next_id;
    st.dirs.get_mut(&wd)?.dbs.entry(name.clone()).or_default().push((id, target, false));
    drop(st);
    Some(Registration { shared, dir, name, id })
}

impl Registration {
    /// Whether this database's loop is waiting for writes to its files: while any loop in the directory is, the
    /// directory's watch reports writes (and the applications writing there pay for the events). A loop sets this
    /// before its last look ahead of a wait, so that a write after that look is reported.
    pub fn set_waiting(&self, on: bool) {
        let mut st = self.shared.state.lock().unwrap_or_else(|p| p.into_inner());
        let Some(&wd) = st.by_path.get(&self.dir) else { return };
        let Some(d) = st.dirs.get_mut(&wd) else { return };
        let before = d.waiting();
        let Some(r) = d.dbs.get_mut(&self.name).and_then(|v| v.iter_mut().find(|(id, _, _)| *id == self.id)) else {
            return;
        };
        r.2 = on;
        if d.waiting() != before {
            let mask = if before { BASE_MASK } else { BASE_MASK | libc::IN_MODIFY };
            set_mask(self.shared.fd, &self.dir, wd, mask);
        }
    }

    /// The directory a registration watches (for tests and logs).
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.set_waiting(false);
        let mut st = self.shared.state.lock().unwrap_or_else(|p| p.into_inner());
        let Some(&wd) = st.by_path.get(&self.dir) else { return };
        let Some(d) = st.dirs.get_mut(&wd) else { return };
        if let Some(v) = d.dbs.get_mut(&self.name) {
            v.retain(|(id, _, _)| *id != self.id);
            if v.is_empty() {
                d.dbs.remove(&self.name);
            }
        }
        if d.dbs.is_empty() {
            st.dirs.remove(&wd);
            st.by_path.remove(&self.dir);
            // SAFETY: plain syscall on our own descriptor and watch.
            unsafe { libc::inotify_rm_watch(self.shared.fd, wd) };
        }
    }
}

/// The database file names an event's file may belong to: itself and every prefix before a `-` (`DB-wal`,
/// `DB-shm`, `DB-walrust-snapshot` -> `DB`); names nobody registered are ignored.
fn db_names_of(file: &[u8]) -> impl Iterator<Item = &[u8]> {
    std::iter::once(file).chain(file.iter().enumerate().filter(|(i, b)| **b == b'-' && *i > 0).map(|(i, _)| &file[..i]))
}

fn read_events(shared: &Shared) {
    let mut buf = vec![0u8; 64 * 1024];
    let header = std::mem::size_of::<libc::inotify_event>();
    loop {
        // SAFETY: reading into our own buffer of the given length.
        let n = unsafe { libc::read(shared.fd, buf.as_mut_ptr() as *mut libc::c_void, buf.len()) };
        if n < 0 {
            if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return; // the loops keep polling on their timers
        }
        let n = n as usize;
        // One batch of events: every database named in it is poked once.
        let mut touched: Vec<(i32, OsString)> = Vec::new();
        let mut overflow = false;
        let mut at = 0;
        while at + header <= n {
            // SAFETY: the kernel wrote whole events; read_unaligned copes with the byte buffer's alignment.
            let ev: libc::inotify_event = unsafe { std::ptr::read_unaligned(buf.as_ptr().add(at) as *const _) };
            let name_len = ev.len as usize;
            let name_bytes = &buf[(at + header).min(n)..(at + header + name_len).min(n)];
            let name = name_bytes.split(|b| *b == 0).next().unwrap_or_default();
            at += header + name_len;
            if ev.mask & libc::IN_Q_OVERFLOW != 0 {
                overflow = true;
                continue;
            }
            if name.is_empty() {
                continue;
            }
            for db in db_names_of(name) {
                let db = OsStr::from_bytes(db);
                if !touched.iter().any(|(wd, d)| *wd == ev.wd && d == db) {
                    touched.push((ev.wd, db.to_os_string()));
                }
            }
        }
        let targets: Vec<Arc<dyn Poke>> = {
            let st = shared.state.lock().unwrap_or_else(|p| p.into_inner());
            if overflow {
                st.dirs.values().flat_map(|d| d.dbs.values().flatten()).filter_map(|(_, w, _)| w.upgrade()).collect()
            } else {
                touched
                    .iter()
                    .filter_map(|(wd, db)| st.dirs.get(wd).and_then(|d| d.dbs.get(db)))
                    .flatten()
                    .filter_map(|(_, w, _)| w.upgrade())
                    .collect()
            }
        };
        for t in targets {
            t.poke();
        }
        // Let the kernel merge the next events instead of waking this thread once per application write.
        std::thread::sleep(PACE);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::{Duration, Instant};

    struct Count(AtomicUsize);
    impl Poke for Count {
        fn poke(&self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// An empty directory of the system's temp dir for one test.
    fn fresh_dir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("walrust-notify-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn wait_for(c: &Count, at_least: usize) -> bool {
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(5) {
            if c.0.load(Ordering::SeqCst) >= at_least {
                return true;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        false
    }

    #[test]
    fn a_write_to_the_wal_pokes_its_database_only() {
        let dir = fresh_dir("pokes");
        let (a, b) = (Arc::new(Count(AtomicUsize::new(0))), Arc::new(Count(AtomicUsize::new(0))));
        let (wa, wb): (Arc<dyn Poke>, Arc<dyn Poke>) = (a.clone(), b.clone());
        let ra = register(&dir.join("a.db"), Arc::downgrade(&wa)).expect("inotify on Linux");
        let rb = register(&dir.join("b.db"), Arc::downgrade(&wb)).unwrap();
        assert_eq!(ra.dir(), dir.as_path());
        std::fs::write(dir.join("a.db-wal"), b"frames").unwrap();
        assert!(wait_for(&a, 1), "a poked");
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(b.0.load(Ordering::SeqCst), 0, "b not poked");
        std::fs::write(dir.join("b.db"), b"x").unwrap();
        assert!(wait_for(&b, 1), "b poked");
        // Unregistered: no more pokes; the directory's watch is gone with the last registration.
        drop(ra);
        let before = a.0.load(Ordering::SeqCst);
        std::fs::write(dir.join("a.db-wal"), b"more").unwrap();
        std::fs::write(dir.join("b.db-wal"), b"more").unwrap();
        assert!(wait_for(&b, 2));
        assert_eq!(a.0.load(Ordering::SeqCst), before);
        drop(rb);
        assert!(!shared().unwrap().state.lock().unwrap().by_path.contains_key(&dir));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Writes to a file that stays open (only the write itself can be reported) and counts the pokes: waits up to
    /// 5 s for one when `expected` is 1, 150 ms otherwise.
    fn pokes_after_a_write(c: &Count, f: &mut std::fs::File, expected: usize) -> usize {
        use std::io::Write;
        let before = c.0.load(Ordering::SeqCst);
        f.write_all(b"frame").unwrap();
        if expected > 0 {
            wait_for(c, before + expected);
        }
        std::thread::sleep(Duration::from_millis(150));
        c.0.load(Ordering::SeqCst) - before
    }

    #[test]
    fn writes_are_reported_only_while_a_loop_waits_for_them() {
        let dir = fresh_dir("wait");
        let (d, e) = (Arc::new(Count(AtomicUsize::new(0))), Arc::new(Count(AtomicUsize::new(0))));
        let (wd, we): (Arc<dyn Poke>, Arc<dyn Poke>) = (d.clone(), e.clone());
        let rd = register(&dir.join("d.db"), Arc::downgrade(&wd)).expect("inotify on Linux");
        let re = register(&dir.join("e.db"), Arc::downgrade(&we)).unwrap();
        let mut wal = std::fs::File::create(dir.join("d.db-wal")).unwrap();
        assert!(wait_for(&d, 1), "a new WAL is always reported");
        std::thread::sleep(PACE * 3);
        assert_eq!(pokes_after_a_write(&d, &mut wal, 0), 0, "no loop waits: writes cost the writer no event");
        rd.set_waiting(true);
        assert_eq!(pokes_after_a_write(&d, &mut wal, 1), 1, "its loop waits");
        // Another database's loop waiting in the same directory: d's writes are reported too (one watch).
        rd.set_waiting(false);
        re.set_waiting(true);
        assert_eq!(pokes_after_a_write(&d, &mut wal, 1), 1);
        re.set_waiting(false);
        assert_eq!(pokes_after_a_write(&d, &mut wal, 0), 0);
        // Dropped while waiting: the directory stops reporting writes.
        rd.set_waiting(true);
        drop(re);
        assert_eq!(pokes_after_a_write(&d, &mut wal, 1), 1);
        rd.set_waiting(false);
        assert_eq!(pokes_after_a_write(&d, &mut wal, 0), 0);
        // Deletions still are.
        let before = d.0.load(Ordering::SeqCst);
        drop(wal);
        std::fs::remove_file(dir.join("d.db-wal")).unwrap();
        assert!(wait_for(&d, before + 1), "a deleted WAL is reported");
        drop(rd);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_burst_of_writes_costs_a_few_wakeups_not_one_per_write() {
        use std::io::Write;
        let dir = fresh_dir("burst");
        let c = Arc::new(Count(AtomicUsize::new(0)));
        let w: Arc<dyn Poke> = c.clone();
        let r = register(&dir.join("c.db"), Arc::downgrade(&w)).expect("inotify on Linux");
        r.set_waiting(true);
        // An application appending frames to its WAL as fast as it can for 300 ms, one write per frame.
        let mut wal = std::fs::File::create(dir.join("c.db-wal")).unwrap();
        let frame = vec![7u8; 4120];
        let (t, mut writes) = (Instant::now(), 0u64);
        while t.elapsed() < Duration::from_millis(300) {
            wal.write_all(&frame).unwrap();
            writes += 1;
            if writes % 256 == 0 {
                wal.set_len(0).unwrap();
            }
        }
        assert!(wait_for(&c, 1), "poked");
        std::thread::sleep(PACE * 3);
        let pokes = c.0.load(Ordering::SeqCst);
        // At most one read per PACE (30 in 300 ms); unpaced, this thread woke for most of the writes.
        assert!(writes > 1000, "{writes} writes");
        assert!(pokes <= 40, "{pokes} pokes for {writes} writes");
        drop(r);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn event_names_map_to_their_database() {
        let names =
            |f: &str| db_names_of(f.as_bytes()).map(|b| String::from_utf8(b.to_vec()).unwrap()).collect::<Vec<_>>();
        assert_eq!(names("app.db-wal"), ["app.db-wal", "app.db"]);
        assert_eq!(
            names("my-app.db-walrust-snapshot"),
            ["my-app.db-walrust-snapshot", "my", "my-app.db", "my-app.db-walrust"]
        );
        assert_eq!(names("data"), ["data"]);
        assert_eq!(names("-x"), ["-x"]);
    }
}
