//! The command line as users and their tools meet it: `watch --exec` supervising an application, restore's
//! progress line on a terminal (and silence elsewhere), and every command's `--help` with examples.

mod support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::{app, command, restore_ok, rows, temp_dir, walrust, walrust_bin, Backend};

/// A small application for `--exec`: `app.py DB MODE`. MODE `exit3` commits 50 rows and exits with status 3;
/// `until-term` commits a row every 20 ms until SIGTERM, then commits 'bye' and exits 0.
const APP_PY: &str = r#"
import signal, sqlite3, sys, time
db, mode = sys.argv[1], sys.argv[2]
c = sqlite3.connect(db, isolation_level=None)
c.execute("PRAGMA busy_timeout=5000")
stop = []
signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
if mode == "exit3":
    for i in range(50):
        c.execute("INSERT INTO t(v) VALUES (?)", (f"row {i}",))
    sys.exit(3)
i = 0
while not stop:
    c.execute("INSERT INTO t(v) VALUES (?)", (f"row {i}",))
    i += 1
    time.sleep(0.02)
c.execute("INSERT INTO t(v) VALUES ('bye')")
"#;

fn setup(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let db = dir.join("app.db");
    app(&db).execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)").unwrap();
    let script = dir.join("app.py");
    std::fs::write(&script, APP_PY).unwrap();
    (db, script)
}

fn watch_exec(db: &Path, b: &Backend, exec: &str, log: &Path) -> std::process::Child {
    let log = std::fs::File::create(log).unwrap();
    command(walrust_bin())
        .arg("watch")
        .arg(db)
        .args(b.args())
        .args(["--interval", "100ms", "--exec", exec])
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap()
}

fn wait_exit(child: &mut std::process::Child, secs: u64) -> i32 {
    let t = Instant::now();
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return st.code().expect("walrust exits, it is not killed");
        }
        assert!(t.elapsed() < Duration::from_secs(secs), "walrust did not exit within {secs}s");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The application exits by itself: walrust ships its last commits and exits with the application's status.
fn exec_exit_status_and_final_sync(dir: &Path, b: &Backend) {
    let (db, script) = setup(dir);
    let log = dir.join("watch.log");
    let exec = format!("python3 '{}' '{}' exit3", script.display(), db.display());
    let mut w = watch_exec(&db, b, &exec, &log);
    let code = wait_exit(&mut w, 60);
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(code, 3, "the application's status: {text}");
    assert!(text.contains("exited with status 3"), "{text}");
    let out = dir.join("restored.db");
    restore_ok(b, "app", &out, &[]);
    assert_eq!(rows(&out).len(), 50);
    assert_eq!(rows(&out), rows(&db), "everything the application committed was shipped before exit");
}

/// SIGTERM to walrust reaches the application, which commits a last row and exits 0; walrust ships it and exits 0.
fn exec_forwards_sigterm(dir: &Path, b: &Backend) {
    let (db, script) = setup(dir);
    let log = dir.join("watch.log");
    let exec = format!("python3 {} {} until-term", script.display(), db.display());
    let mut w = watch_exec(&db, b, &exec, &log);
    let t = Instant::now();
    while rows(&db).len() < 20 {
        assert!(t.elapsed() < Duration::from_secs(30), "the application did not start writing");
        std::thread::sleep(Duration::from_millis(50));
    }
    support::signal(&w, "-TERM");
    let code = wait_exit(&mut w, 60);
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(code, 0, "{text}");
    let source = rows(&db);
    assert_eq!(source.last().unwrap().1, "bye", "the application got SIGTERM and finished cleanly");
    let out = dir.join("restored.db");
    restore_ok(b, "app", &out, &[]);
    assert_eq!(rows(&out), source, "the application's last commit after the signal was shipped");
}

on_both_backends!(exec_exit_status_and_final_sync, exec_forwards_sigterm);

/// Threads of a process: (name, nice value).
type Threads = [(String, i32)];

/// Nice value of each thread of process `pid`, with its name (from /proc/PID/task/TID/stat: the name is in
/// parentheses, nice is the 19th field).
fn thread_nice(pid: u32) -> Vec<(String, i32)> {
    let mut out = Vec::new();
    for t in std::fs::read_dir(format!("/proc/{pid}/task")).into_iter().flatten().flatten() {
        let Ok(stat) = std::fs::read_to_string(t.path().join("stat")) else { continue };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else { continue };
        let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        out.push((stat[open + 1..close].to_string(), fields[16].parse().unwrap()));
    }
    out
}

/// The nice value of `pid`'s children (the `--exec` application).
fn children_nice(pid: u32) -> Vec<i32> {
    let kids = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    kids.split_whitespace().flat_map(|c| thread_nice(c.parse().unwrap())).map(|(_, n)| n).collect()
}

/// Replication work (each database's thread, the upload workers) runs `--nice` levels below walrust's own
/// priority, 10 by default; walrust's main thread and the `--exec` application stay where they were.
#[test]
fn replication_threads_run_below_the_application() {
    let dir = temp_dir("nice");
    let (db, script) = setup(&dir);
    let b = Backend::file(&dir);
    for (flags, below) in [(&[][..], 10), (&["--nice", "3"][..], 3), (&["--nice", "0"][..], 0)] {
        let exec = format!("python3 {} {} until-term", script.display(), db.display());
        let mut w = command(walrust_bin())
            .arg("watch")
            .arg(&db)
            .args(b.args())
            .args(["--interval", "100ms", "--exec", &exec])
            .args(flags)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let (t, before) = (Instant::now(), rows(&db).len());
        let threads = loop {
            let threads = thread_nice(w.id());
            let has = |p: &str| threads.iter().any(|(n, _)| n.starts_with(p));
            // The application writing (its SIGTERM handler is set) and walrust's threads started.
            if has("walrust-db-app") && has("walrust-upload") && rows(&db).len() > before + 5 {
                break threads;
            }
            assert!(t.elapsed() < Duration::from_secs(30), "threads did not start: {threads:?}");
            std::thread::sleep(Duration::from_millis(50));
        };
        let main = threads.iter().find(|(n, _)| n == "walrust").expect("the main thread").1;
        let want = (main + below).min(19);
        for (name, nice) in &threads {
            if name.starts_with("walrust-db-") || name.starts_with("walrust-upload") {
                assert_eq!(*nice, want, "{flags:?}: thread {name} in {threads:?}");
            }
        }
        assert!(children_nice(w.id()).iter().all(|n| *n == main), "{flags:?}: the application keeps its priority");
        support::signal(&w, "-TERM");
        assert_eq!(wait_exit(&mut w, 60), 0);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn exec_errors_are_one_line() {
    let dir = temp_dir("exec-errors");
    let (db, _) = setup(&dir);
    let b = Backend::file(&dir);
    let bargs = b.args();
    let mut args = vec!["watch", db.to_str().unwrap()];
    args.extend(bargs.iter().map(String::as_str));
    for (exec, code, needle) in [
        ("python3 'unterminated", 2, "unterminated single quote"),
        ("   ", 2, "empty command"),
        ("/nonexistent/app --flag", 1, "cannot start '/nonexistent/app'"),
    ] {
        let mut a = args.clone();
        a.extend(["--exec", exec]);
        let o = walrust(&a);
        let err = String::from_utf8_lossy(&o.stderr);
        let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("walrust: ")).collect();
        assert_eq!(o.status.code(), Some(code), "{exec}: {err}");
        assert_eq!(errors.len(), 1, "{exec}: {err}");
        assert!(errors[0].contains(needle), "{exec}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    // An application killed by a signal: 128 + the signal, as a shell reports it.
    let mut a = args.clone();
    a.extend(["--exec", "sh -c 'kill -9 $$'"]);
    assert_eq!(walrust(&a).status.code(), Some(137));
    let _ = std::fs::remove_dir_all(&dir);
}

/// Runs `walrust ARGS` on a pseudo-terminal (Python's pty module) and returns everything it printed.
fn on_tty(args: &[&str], env: &[(&str, &str)]) -> (i32, String) {
    const PTY_PY: &str = r#"
import os, pty, sys
pid, fd = pty.fork()
if pid == 0:
    os.execv(sys.argv[1], sys.argv[1:])
out = b""
while True:
    try:
        chunk = os.read(fd, 65536)
    except OSError:
        break
    if not chunk:
        break
    out += chunk
_, status = os.waitpid(pid, 0)
sys.stdout.write(out.decode("utf-8", "replace"))
sys.exit(os.waitstatus_to_exitcode(status))
"#;
    let o = Command::new("python3")
        .arg("-c")
        .arg(PTY_PY)
        .arg(walrust_bin())
        .args(args)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    (o.status.code().unwrap_or(-1), String::from_utf8_lossy(&o.stdout).into_owned())
}

#[test]
fn restore_progress_on_a_terminal_only() {
    let dir = temp_dir("progress");
    let b = Backend::file(&dir);
    let db = dir.join("big.db");
    let c = app(&db);
    c.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB)").unwrap();
    for _ in 0..40 {
        c.execute("INSERT INTO t(v) VALUES (randomblob(100000))", []).unwrap();
    }
    let bargs = b.args();
    let mut snap = vec!["snapshot", db.to_str().unwrap()];
    snap.extend(bargs.iter().map(String::as_str));
    assert!(walrust(&snap).status.success());
    let restore = |out: &str, extra: &[&'static str]| {
        let mut a = vec!["restore", "big", "-o"];
        a.push(out);
        a.extend(bargs.iter().map(String::as_str));
        a.extend(extra);
        a.into_iter().map(String::from).collect::<Vec<String>>()
    };
    let now = [("WALRUST_PROGRESS_AFTER_MS", "0")];

    // A terminal: a progress line with bytes, rate, and a final 100%.
    let out1 = dir.join("r1.db");
    let a = restore(out1.to_str().unwrap(), &[]);
    let (code, text) = on_tty(&a.iter().map(String::as_str).collect::<Vec<_>>(), &now);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("restoring big: ") && text.contains("(100%)") && text.contains("/s"), "{text}");
    assert!(text.contains("restored 'big'"), "{text}");

    // --quiet on a terminal: nothing at all.
    let out2 = dir.join("r2.db");
    let a = restore(out2.to_str().unwrap(), &["--quiet"]);
    let (code, text) = on_tty(&a.iter().map(String::as_str).collect::<Vec<_>>(), &now);
    assert_eq!(code, 0, "{text}");
    assert_eq!(text.trim(), "", "--quiet prints nothing");

    // Not a terminal (a pipe, a log file): no progress line, the one-line summary only.
    let out3 = dir.join("r3.db");
    let a = restore(out3.to_str().unwrap(), &[]);
    let o = command(walrust_bin()).args(&a).envs(now).output().unwrap();
    assert!(o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!err.contains("restoring big: ") && !err.contains('\r'), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    for out in [&out1, &out2, &out3] {
        assert_eq!(support::digest(out), support::digest(&db));
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn every_command_help_has_examples() {
    for cmd in ["watch", "restore", "snapshot", "verify", "list", "compact", "explain", "replicate"] {
        let o = walrust(&[cmd, "--help"]);
        assert!(o.status.success(), "{cmd} --help");
        let text = String::from_utf8_lossy(&o.stdout);
        assert!(text.starts_with("Usage: walrust "), "{cmd}: {text}");
        let examples = text.split("Examples:").nth(1).unwrap_or_else(|| panic!("{cmd} --help has no Examples"));
        assert!(examples.lines().any(|l| l.trim_start().starts_with(&format!("walrust {cmd}"))), "{cmd}: {text}");
    }
}

/// A SIGHUP applies changed settings to databases already being replicated, not only to added ones: the
/// database's loop drains and starts again with them, continuing its chain (no new snapshot); the upload workers
/// take the new levels before their next job. A reload that changes nothing restarts nothing.
#[test]
fn sighup_applies_changed_settings_to_running_databases() {
    let dir = temp_dir("reload-settings");
    let (db, _) = setup(&dir);
    let b = Backend::file(&dir);
    let cfg = dir.join("walrust.toml");
    let write_cfg = |nice: u8, interval: &str| {
        let text =
            format!("[sync]\ninterval = \"{interval}\"\nnice = {nice}\n\n[[databases]]\npath = \"{}\"\n", db.display());
        std::fs::write(&cfg, text).unwrap();
    };
    write_cfg(3, "100ms");
    let log = dir.join("watch.log");
    let mut w = command(walrust_bin())
        .args(["watch", "--config", cfg.to_str().unwrap()])
        .args(b.args())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let conn = app(&db);
    let mut n = 0;
    let mut write_until = |what: &str, done: &dyn Fn(&Threads) -> bool| {
        let t = Instant::now();
        loop {
            conn.execute("INSERT INTO t(v) VALUES (?1)", [format!("row {n}")]).unwrap();
            n += 1;
            let threads = thread_nice(w.id());
            if done(&threads) {
                return threads;
            }
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            assert!(t.elapsed() < Duration::from_secs(30), "{what}: {threads:?}\n{text}");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let main = |threads: &Threads| threads.iter().find(|(n, _)| n == "walrust").map(|t| t.1);
    // The database's thread is running at `below` levels (not between a stop and a start) and an upload worker
    // has moved there.
    let at = |threads: &Threads, below: i32| {
        let want = main(threads).unwrap_or(-100) + below;
        let nices =
            |prefix: &str| threads.iter().filter(|(n, _)| n.starts_with(prefix)).map(|t| t.1).collect::<Vec<_>>();
        let db = nices("walrust-db-");
        !db.is_empty() && db.iter().all(|n| *n == want) && nices("walrust-upload").contains(&want)
    };
    write_until("started at nice 3", &|t| at(t, 3));

    let restarts = || std::fs::read_to_string(&log).unwrap().matches("settings changed").count();
    support::signal(&w, "-HUP"); // nothing changed
    write_until("reloaded", &|_| std::fs::read_to_string(&log).unwrap().contains("configuration reloaded"));
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(restarts(), 0, "a reload that changes nothing restarts nothing");

    write_cfg(7, "200ms");
    support::signal(&w, "-HUP");
    write_until("moved to nice 7", &|t| restarts() == 1 && at(t, 7));

    support::signal(&w, "-TERM");
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(wait_exit(&mut w, 60), 0, "{text}");
    let out = dir.join("restored.db");
    restore_ok(&b, "app", &out, &[]);
    assert_eq!(rows(&out), rows(&db), "nothing lost across the restart");
    let snapshots = b.keys("app").iter().filter(|k| k.contains("-b-") || k.contains("-s-")).count();
    assert_eq!(snapshots, 1, "the restart continued the chain: {:?}", b.keys("app"));
    let _ = std::fs::remove_dir_all(&dir);
}

/// `watch` runs without glibc's per-thread malloc caches: it executes itself once more (same process id) with
/// `glibc.malloc.tcache_count=0` added to `GLIBC_TUNABLES`. The `--exec` application still gets the caller's
/// environment exactly as it was, and a caller's own tcache setting is left alone.
#[test]
fn watch_runs_without_malloc_thread_caches_and_the_application_keeps_the_callers_environment() {
    let dir = temp_dir("tunables");
    let (db, _) = setup(&dir);
    let b = Backend::file(&dir);
    let seen = dir.join("seen.txt");
    let exec = format!(
        "sh -c 'echo \"[${{GLIBC_TUNABLES-unset}}] [${{WALRUST_CALLERS_GLIBC_TUNABLES-unset}}]\" > {}.tmp && mv {0}.tmp {0} && exec sleep 60'",
        seen.display()
    );
    let ours = "glibc.malloc.tcache_count=0";
    for (callers, reexecuted) in
        [(None, true), (Some("glibc.malloc.check=0"), true), (Some("glibc.malloc.tcache_count=3"), false)]
    {
        let _ = std::fs::remove_file(&seen);
        let mut cmd = command(walrust_bin());
        cmd.arg("watch").arg(&db).args(b.args()).args(["--interval", "100ms", "--exec", &exec]);
        cmd.env_remove("WALRUST_CALLERS_GLIBC_TUNABLES");
        match callers {
            Some(v) => cmd.env("GLIBC_TUNABLES", v),
            None => cmd.env_remove("GLIBC_TUNABLES"),
        };
        let mut w = cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
        let t = Instant::now();
        while !seen.exists() {
            assert!(t.elapsed() < Duration::from_secs(30), "{callers:?}: the application did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        // The application's environment is the caller's, without walrust's marker.
        let want = format!("[{}] [unset]\n", callers.unwrap_or("unset"));
        assert_eq!(std::fs::read_to_string(&seen).unwrap(), want, "{callers:?}");
        // walrust's own environment block, as the (re-)execution received it, under the same process id.
        let environ = std::fs::read(format!("/proc/{}/environ", w.id())).unwrap();
        let environ: Vec<String> =
            environ.split(|b| *b == 0).map(|v| String::from_utf8_lossy(v).into_owned()).collect();
        let marker = format!("WALRUST_CALLERS_GLIBC_TUNABLES={}", callers.unwrap_or(""));
        assert_eq!(environ.contains(&marker), reexecuted, "{callers:?}: {environ:?}");
        if callers.is_none() {
            assert!(environ.contains(&format!("GLIBC_TUNABLES={ours}")), "{environ:?}");
        }
        // ps, top and pgrep still see "walrust".
        let comm = std::fs::read_to_string(format!("/proc/{}/comm", w.id())).unwrap();
        assert_eq!(comm.trim(), "walrust");
        support::signal(&w, "-TERM");
        wait_exit(&mut w, 60);
    }
    let _ = std::fs::remove_dir_all(&dir);
}
