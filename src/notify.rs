//! Wakes database loops when their files change (Linux inotify), so that an idle database costs nothing between
//! changes and a commit is seen as soon as it is written. One thread and one inotify instance per process, one
//! watch per directory; an event on `DB`, `DB-wal` or `DB-shm` pokes that database's loop.
//!
//! Only a hint: a loop that is poked looks at its files as it would on a timer, and loops still look now and then
//! without events (`watch::IDLE_WAIT`), so a lost event (queue overflow, a filesystem without inotify) costs
//! latency, never data. Where inotify is unavailable, registration returns None and the loop polls as before.

use std::collections::HashMap;
use std::ffi::{CString, OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, Weak};

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

/// Registrations of one database: (id, what to poke).
type Targets = Vec<(u64, Weak<dyn Poke>)>;

struct Dir {
    /// Database file name -> its registrations.
    dbs: HashMap<OsString, Targets>,
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
            let c = CString::new(dir.as_os_str().as_bytes()).ok()?;
            let mask = libc::IN_MODIFY
                | libc::IN_CREATE
                | libc::IN_DELETE
                | libc::IN_MOVED_FROM
                | libc::IN_MOVED_TO
                | libc::IN_CLOSE_WRITE
                | libc::IN_ATTRIB;
            // SAFETY: valid NUL-terminated path, fd owned by `shared`.
            let wd = unsafe { libc::inotify_add_watch(shared.fd, c.as_ptr(), mask) };
            if wd < 0 {
                return None;
            }
            st.by_path.insert(dir.clone(), wd);
            st.dirs.insert(wd, Dir { dbs: HashMap::new() });
            wd
        }
    };
    st.next_id += 1;
    let id = st.next_id;
    st.dirs.get_mut(&wd)?.dbs.entry(name.clone()).or_default().push((id, target));
    drop(st);
    Some(Registration { shared, dir, name, id })
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut st = self.shared.state.lock().unwrap_or_else(|p| p.into_inner());
        let Some(&wd) = st.by_path.get(&self.dir) else { return };
        let Some(d) = st.dirs.get_mut(&wd) else { return };
        if let Some(v) = d.dbs.get_mut(&self.name) {
            v.retain(|(id, _)| *id != self.id);
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
                st.dirs.values().flat_map(|d| d.dbs.values().flatten()).filter_map(|(_, w)| w.upgrade()).collect()
            } else {
                touched
                    .iter()
                    .filter_map(|(wd, db)| st.dirs.get(wd).and_then(|d| d.dbs.get(db)))
                    .flatten()
                    .filter_map(|(_, w)| w.upgrade())
                    .collect()
            }
        };
        for t in targets {
            t.poke();
        }
    }
}

/// The directory a registration watches (for tests and logs).
impl Registration {
    pub fn dir(&self) -> &Path {
        &self.dir
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
        let dir = std::env::temp_dir().join(format!("walrust-notify-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
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
        assert!(shared().unwrap().state.lock().unwrap().dirs.is_empty());
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
