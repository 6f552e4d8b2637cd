//! Shared helpers of the integration tests: the S3 test server's coordinates and unique names.
#![allow(dead_code, unused_imports)]

use std::sync::atomic::{AtomicU64, Ordering};

/// Where the test S3 server is, from the variables `scripts/s3-start` prints.
pub struct S3Env {
    pub endpoint: String,
    pub bucket: String,
    pub access_key: String,
    pub secret_key: String,
    pub region: String,
}

/// The S3 test server, or `None` (the test then skips) when none is configured and WALRUST_REQUIRE_S3 is not
/// set. CI sets WALRUST_REQUIRE_S3=1 so that a missing server fails instead of skipping.
pub fn s3_env() -> Option<S3Env> {
    let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    match (var("WALRUST_TEST_S3_ENDPOINT"), var("WALRUST_TEST_S3_BUCKET")) {
        (Some(endpoint), Some(bucket)) => Some(S3Env {
            endpoint,
            bucket,
            access_key: var("AWS_ACCESS_KEY_ID").expect("AWS_ACCESS_KEY_ID for the test S3 server"),
            secret_key: var("AWS_SECRET_ACCESS_KEY").expect("AWS_SECRET_ACCESS_KEY for the test S3 server"),
            region: var("AWS_REGION").unwrap_or_else(|| "us-east-1".into()),
        }),
        _ if var("WALRUST_REQUIRE_S3").as_deref() == Some("1") => {
            panic!("WALRUST_REQUIRE_S3=1 but WALRUST_TEST_S3_ENDPOINT/WALRUST_TEST_S3_BUCKET are not set: run eval \"$(scripts/s3-start)\"")
        }
        _ => {
            eprintln!("skipping: no S3 test server (eval \"$(scripts/s3-start)\" to run S3 tests)");
            None
        }
    }
}

/// A name no other test (or earlier run) uses.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    format!("{prefix}-{}-{}-{}", std::process::id(), nanos % 1_000_000_000_000, N.fetch_add(1, Ordering::Relaxed))
}

// ---- end-to-end helpers: the walrust binary, the Python workload, backends ----

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

/// Where a test's backups go, as CLI arguments and as a library handle.
pub struct Backend {
    pub url: String,
    pub endpoint: Option<String>,
}

impl Backend {
    pub fn file(dir: &Path) -> Backend {
        Backend { url: format!("file://{}", dir.join("backups").display()), endpoint: None }
    }

    /// A fresh prefix on the test S3 server, or `None` when no server is configured (test skipped).
    pub fn s3() -> Option<Backend> {
        let env = s3_env()?;
        Some(Backend { url: format!("s3://{}/{}/", env.bucket, unique("e2e")), endpoint: Some(env.endpoint) })
    }

    pub fn args(&self) -> Vec<String> {
        let mut v = vec!["-b".to_string(), self.url.clone()];
        if let Some(e) = &self.endpoint {
            v.push("--endpoint".into());
            v.push(e.clone());
        }
        v
    }

    pub fn storage(&self) -> walrust::storage::StorageRef {
        let loc = walrust::storage::parse_location(&self.url).unwrap();
        let opts =
            walrust::storage::OpenOptions { endpoint: self.endpoint.clone(), create: true, ..Default::default() };
        walrust::storage::open(&loc, &opts).unwrap()
    }

    /// Every stored key under `name/`.
    pub fn keys(&self, name: &str) -> Vec<String> {
        let s = self.storage();
        walrust::storage::list_all(&*s, &format!("{name}/"), None).unwrap().into_iter().map(|o| o.key).collect()
    }
}

/// A fresh directory for one test.
pub fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(unique(&format!("walrust-{tag}")));
    std::fs::create_dir_all(&d).unwrap();
    d
}

pub fn walrust_bin() -> &'static str {
    env!("CARGO_BIN_EXE_walrust")
}

/// `Command::new(program)` whose process is killed (SIGKILL) when the thread that started it ends: a test that
/// fails (panics) leaves no `walrust watch` or writer behind, still running and writing (Linux PR_SET_PDEATHSIG;
/// every test here starts its processes from its own thread, which ends with the test).
pub fn command(program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut c = Command::new(program);
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::process::CommandExt;
        // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            c.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
    }
    c
}

/// Runs `walrust ARGS...` to completion.
pub fn walrust(args: &[&str]) -> Output {
    command(walrust_bin()).args(args).output().unwrap()
}

/// `walrust watch DB` in the background, logging to `log`.
pub fn spawn_watch(db: &Path, backend: &Backend, extra: &[&str], log: &Path) -> Child {
    let log = std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap();
    command(walrust_bin())
        .arg("watch")
        .arg(db)
        .args(backend.args())
        .args(["--interval", "100ms", "--check-interval", "20ms"])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap()
}

pub fn signal(child: &Child, sig: &str) {
    let st = Command::new("kill").args([sig, &child.id().to_string()]).status().unwrap();
    assert!(st.success(), "kill {sig}");
}

/// SIGTERM, then the exit code (panics if it takes longer than `secs`).
pub fn stop(mut child: Child, secs: u64) -> i32 {
    signal(&child, "-TERM");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return st.code().unwrap_or(-1);
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("watch did not exit within {secs}s of SIGTERM");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

pub fn kill9(mut child: Child) {
    signal(&child, "-KILL");
    let _ = child.wait();
}

fn workload_py() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/workload.py")
}

/// The Python application writer (see workload.py); waits for it.
pub fn workload(db: &Path, args: &[&str]) -> Output {
    Command::new("python3").arg(workload_py()).arg("write").arg(db).args(args).output().unwrap()
}

pub fn spawn_workload(db: &Path, args: &[&str]) -> Child {
    command("python3")
        .arg(workload_py())
        .arg("write")
        .arg(db)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Logical content of a database (schema and every row), as a hash.
pub fn digest(db: &Path) -> String {
    let out = Command::new("python3").arg(workload_py()).arg("digest").arg(db).output().unwrap();
    assert!(out.status.success(), "digest {}: {}", db.display(), String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

pub fn integrity(db: &Path) -> String {
    let out = Command::new("python3").arg(workload_py()).arg("integrity").arg(db).output().unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// `walrust restore NAME -o OUT`, asserting success, then checks integrity.
pub fn restore_ok(backend: &Backend, name: &str, out: &Path, extra: &[&str]) {
    let mut args = vec!["restore", name, "-o", out.to_str().unwrap()];
    let b = backend.args();
    args.extend(b.iter().map(String::as_str));
    args.extend(extra);
    let o = walrust(&args);
    assert!(o.status.success(), "restore failed: {}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(integrity(out), "ok");
}

pub fn log_text(log: &Path) -> String {
    std::fs::read_to_string(log).unwrap_or_default()
}

// ---- in-process backups with a recorded history (restore_points.rs, compact.rs) ----

/// Runs `$case(dir, backend)` once per backend: `mod file_backend` and `mod s3_backend` (skipped without S3).
#[macro_export]
macro_rules! on_both_backends {
    ($($case:ident),* $(,)?) => {
        mod file_backend {
            $( #[test] fn $case() {
                let dir = $crate::support::temp_dir(stringify!($case));
                let b = $crate::support::Backend::file(&dir);
                super::$case(&dir, &b);
                let _ = std::fs::remove_dir_all(&dir);
            } )*
        }
        mod s3_backend {
            $( #[test] fn $case() {
                let Some(b) = $crate::support::Backend::s3() else { return };
                let dir = $crate::support::temp_dir(stringify!($case));
                super::$case(&dir, &b);
                let _ = std::fs::remove_dir_all(&dir);
            } )*
        }
    };
}

/// An application connection (WAL mode).
pub fn app(db: &Path) -> rusqlite::Connection {
    let c = rusqlite::Connection::open(db).unwrap();
    c.execute_batch("PRAGMA journal_mode=WAL; PRAGMA busy_timeout=5000").unwrap();
    c
}

/// The rows of table `t`.
pub fn rows(db: &Path) -> Vec<(i64, String)> {
    let c = rusqlite::Connection::open(db).unwrap();
    let mut st = c.prepare("SELECT id, v FROM t ORDER BY id").unwrap();
    st.query_map([], |r| Ok((r.get(0)?, r.get(1)?))).unwrap().collect::<Result<_, _>>().unwrap()
}

pub use walrust::storage::StorageRef;

pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
}

/// (instant ms right after a batch, generation, seq, rows of `t`)
pub type Recorded = (u64, u64, u64, Vec<(i64, String)>);

/// Drives `app.db` through `generations` generations of `batches` batches (3 transactions each: inserts,
/// updates, deletes), a mid-generation snapshot after every `snapshot_every`-th batch, and records the state
/// after each batch and right after each generation starts. The generation changes because the application
/// restarts the WAL while walrust is down, so continuity cannot be proven.
pub fn record_history(
    dir: &Path,
    s: &walrust::storage::StorageRef,
    generations: usize,
    batches: usize,
    snapshot_every: usize,
) -> Vec<Recorded> {
    use std::time::Duration;
    let db = dir.join("app.db");
    let a = app(&db);
    a.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT); INSERT INTO t(v) VALUES ('seed');").unwrap();
    let mut history = Vec::new();
    let mut n = 0;
    for generation in 0..generations {
        if generation > 0 {
            a.execute("INSERT INTO t(v) VALUES ('while-down')", []).unwrap();
            a.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(())).unwrap();
            a.execute("INSERT INTO t(v) VALUES ('after-restart')", []).unwrap();
        }
        let mut o = walrust::watch::WatchOptions::new("app");
        o.sync_interval = Duration::ZERO;
        let mut w = walrust::watch::Watcher::start(&db, s.clone(), o).unwrap();
        // Right after the generation change: the base snapshot alone.
        std::thread::sleep(Duration::from_millis(3));
        history.push((now_ms(), w.generation(), w.seq(), rows(&db)));
        std::thread::sleep(Duration::from_millis(3));
        for batch in 0..batches {
            for _ in 0..3 {
                n += 1;
                match n % 4 {
                    0 => a.execute("DELETE FROM t WHERE id = (SELECT min(id) FROM t)", []).unwrap(),
                    1 => a.execute("UPDATE t SET v = v || '+' WHERE id % 3 = ?1", [n % 3]).unwrap(),
                    _ => a.execute("INSERT INTO t(v) VALUES (?1)", [format!("row{n}")]).unwrap(),
                };
            }
            w.tick(true).unwrap();
            if batch % snapshot_every == snapshot_every - 1 {
                w.snapshot_now().unwrap();
            }
            std::thread::sleep(Duration::from_millis(3));
            history.push((now_ms(), w.generation(), w.seq(), rows(&db)));
            std::thread::sleep(Duration::from_millis(3));
        }
        w.shutdown().unwrap();
    }
    history
}

/// Restores `app` at `target` into `out` (replacing it) and returns its rows.
pub fn restore_rows(
    s: &walrust::storage::StorageRef,
    out: &Path,
    target: walrust::restore::Target,
) -> Vec<(i64, String)> {
    let _ = std::fs::remove_file(out);
    let o = walrust::restore::RestoreOptions { output: out.to_path_buf(), force: false, target, write_state: false };
    walrust::restore::restore(s.as_ref(), "app", &o).unwrap_or_else(|e| panic!("restore {target:?}: {e}"));
    rows(out)
}

// ---- the fault-injecting proxy (scripts/fault-proxy) in front of the S3 test server ----

/// `scripts/fault-proxy` running in front of `upstream`; killed on drop.
pub struct FaultProxy {
    child: Child,
    pub port: u16,
}

impl FaultProxy {
    pub fn start(upstream: &str) -> FaultProxy {
        use std::io::BufRead;
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/fault-proxy");
        let mut child = Command::new("python3")
            .arg(script)
            .args(["--upstream", upstream, "--seed", &(now_ms() % 1_000_000).to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let port = line.trim().parse().unwrap_or_else(|_| panic!("fault-proxy printed {line:?}, not a port"));
        FaultProxy { child, port }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn control(&self, method: &str, body: &str) -> String {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        write!(
            s,
            "{method} /__fault__ HTTP/1.1\r\nHost: control\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        assert!(out.starts_with("HTTP/1.1 200"), "fault-proxy control: {out}");
        out.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default()
    }

    /// Merges JSON settings (see the script's documentation), e.g. `{"error_rate": 0.15}`.
    pub fn set(&self, json: &str) -> String {
        self.control("POST", json)
    }

    /// Settings and counters as JSON.
    pub fn stats(&self) -> String {
        self.control("GET", "")
    }

    /// One numeric counter or setting.
    pub fn stat(&self, key: &str) -> f64 {
        let s = self.stats();
        let at = s.find(&format!("\"{key}\": ")).unwrap_or_else(|| panic!("no {key} in {s}"));
        let rest = &s[at + key.len() + 4..];
        rest[..rest.find([',', '}']).unwrap()].trim().parse().unwrap()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Peak resident memory (VmHWM) of a process, in KiB.
pub fn vm_hwm_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = s.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}
