//! The bad-input catalogue of issue #7: each case exits non-zero with one clear line on stderr, never panics, and
//! leaves the database byte-identical. Cases already covered elsewhere (not repeated here):
//! - an unknown key in walrust.toml (exit 2 naming file, line and key): `replication.rs`
//!   `config_file_with_globs_and_per_database_overrides`;
//! - a storage endpoint that does not answer, as "not a new lineage": `replication.rs`
//!   `unreachable_storage_at_start_is_an_error_not_a_new_lineage` (here: the one-line form and 127.0.0.1:1);
//! - wrong credentials at the library level: `storage_contract.rs` `s3_wrong_secret_is_a_clear_auth_error_...`.

#[macro_use]
mod support;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use support::*;

/// Runs walrust with extra environment variables.
fn run_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = command(walrust_bin());
    c.args(args);
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().unwrap()
}

/// Exit code `code`, exactly one non-empty line on stderr (`walrust: ...`) containing every `needles`, no panic.
fn one_clear_line(o: &Output, code: i32, needles: &[&str]) -> String {
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(!err.contains("panicked"), "panic: {err}");
    assert_eq!(o.status.code(), Some(code), "exit code; stderr: {err}");
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line on stderr, got: {err}");
    assert!(lines[0].starts_with("walrust: "), "{err}");
    for n in needles {
        assert!(lines[0].contains(n), "{n:?} missing from: {err}");
    }
    lines[0].to_string()
}

/// SHA-256 of the database file and of its WAL ("-" when absent or empty).
fn fingerprint(db: &Path) -> (String, String) {
    use sha2::{Digest, Sha256};
    let mut wal = db.as_os_str().to_owned();
    wal.push("-wal");
    let hash = |p: &Path| match std::fs::read(p) {
        Ok(b) if !b.is_empty() => walrust::keys::to_hex(&Sha256::digest(&b)),
        _ => "-".to_string(),
    };
    (hash(db), hash(&PathBuf::from(wal)))
}

fn file_backend(dir: &Path) -> Backend {
    let b = Backend::file(dir);
    std::fs::create_dir_all(dir.join("backups")).unwrap();
    b
}

fn args<'a>(head: &[&'a str], b: &'a [String]) -> Vec<&'a str> {
    let mut v = head.to_vec();
    v.extend(b.iter().map(String::as_str));
    v
}

/// Waits until watch has written the first objects of `app` (its signal handlers are installed by then).
fn wait_for_backup(b: &Backend, log: &Path) {
    let t = Instant::now();
    while b.keys("app").is_empty() {
        assert!(t.elapsed() < Duration::from_secs(30), "watch started: {}", log_text(log));
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn watch_refuses_a_database_not_in_wal_mode() {
    let dir = temp_dir("nonwal");
    let db = dir.join("app.db");
    let c = rusqlite::Connection::open(&db).unwrap();
    c.execute_batch("PRAGMA journal_mode=DELETE; CREATE TABLE t(x); INSERT INTO t VALUES (1);").unwrap();
    drop(c);
    let before = fingerprint(&db);
    let b = file_backend(&dir);
    let ba = b.args();
    let o = walrust(&args(&["watch", db.to_str().unwrap()], &ba));
    one_clear_line(&o, 2, &["app.db", "not in WAL mode", "journal_mode=WAL"]);
    assert_eq!(fingerprint(&db), before, "the database is untouched (still journal_mode=delete)");
    assert!(b.keys("app").is_empty(), "nothing uploaded");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn watch_refuses_a_missing_path() {
    let dir = temp_dir("missing");
    let b = file_backend(&dir);
    let ba = b.args();
    // A missing file in an existing directory.
    let db = dir.join("app.db");
    let o = walrust(&args(&["watch", db.to_str().unwrap()], &ba));
    one_clear_line(&o, 2, &["app.db", "no such database file"]);
    assert!(!db.exists(), "no database created");
    let left: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("app.db"))
        .collect();
    assert!(left.is_empty(), "no lock or state file left beside it: {left:?}");
    // A missing directory: the same error and exit code.
    let o = walrust(&args(&["watch", "/nonexistent-walrust-dir/app.db"], &ba));
    one_clear_line(&o, 2, &["/nonexistent-walrust-dir/app.db", "no such database file"]);
    assert!(!Path::new("/nonexistent-walrust-dir").exists());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn watch_refuses_a_file_that_is_not_sqlite() {
    let dir = temp_dir("notsqlite");
    let db = dir.join("app.db");
    // Longer than a SQLite header, so that SQLite reads it rather than treating it as an empty database.
    std::fs::write(&db, "this is a text file, not a database\n".repeat(200)).unwrap();
    let before = fingerprint(&db);
    let b = file_backend(&dir);
    let ba = b.args();
    let o = walrust(&args(&["watch", db.to_str().unwrap()], &ba));
    one_clear_line(&o, 1, &["app.db", "not a database"]);
    assert_eq!(fingerprint(&db), before, "the file is untouched");
    assert!(b.keys("app").is_empty(), "nothing uploaded");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_database_replaced_under_a_running_watch_is_reported_and_left_alone() {
    let dir = temp_dir("replaced");
    let db = dir.join("app.db");
    let other = dir.join("other.db");
    assert!(workload(&db, &["--txns", "20", "--seed", "1"]).status.success());
    assert!(workload(&other, &["--txns", "30", "--seed", "2"]).status.success());
    let b = file_backend(&dir);
    let log = dir.join("watch.log");
    let watch = spawn_watch(&db, &b, &[], &log);
    wait_for_backup(&b, &log);
    let replacing = fingerprint(&other);
    // A different database renamed over the watched one (as a careless deploy or restore script would).
    std::fs::rename(&other, &db).unwrap();
    let t = Instant::now();
    while !log_text(&log).contains("replaced") {
        assert!(t.elapsed() < Duration::from_secs(30), "the replacement was noticed: {}", log_text(&log));
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(500));
    let text = log_text(&log);
    let errors: Vec<&str> = text.lines().filter(|l| l.contains(" error ")).collect();
    assert_eq!(errors.len(), 1, "one error line: {text}");
    assert!(errors[0].contains("app.db") && errors[0].contains("replaced by another file"), "{text}");
    assert_eq!(fingerprint(&db), replacing, "the new file is left byte-identical");
    // Its only database stopped: watch exits by itself, non-zero, with the same message as its last line.
    let mut watch = watch;
    let t = Instant::now();
    let code = loop {
        if let Some(st) = watch.try_wait().unwrap() {
            break st.code().unwrap_or(-1);
        }
        assert!(t.elapsed() < Duration::from_secs(30), "watch exits when nothing is left: {}", log_text(&log));
        std::thread::sleep(Duration::from_millis(50));
    };
    let text = log_text(&log);
    assert_eq!(code, 1, "{text}");
    assert_ne!(code, 0, "{text}");
    assert!(!text.contains("panicked"), "{text}");
    assert!(text.lines().last().unwrap_or("").contains("replaced by another file"), "{text}");
    assert_eq!(fingerprint(&db), replacing, "the new file is left byte-identical");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn restore_of_a_name_that_does_not_exist_is_exit_3() {
    let dir = temp_dir("restore-missing");
    let b = file_backend(&dir);
    let ba = b.args();
    let out = dir.join("out.db");
    let o = walrust(&args(&["restore", "nobody", "-o", out.to_str().unwrap()], &ba));
    one_clear_line(&o, 3, &["no backups of 'nobody'"]);
    assert!(!out.exists(), "no output file");
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1, "nothing left behind but the backup directory");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn restore_onto_an_existing_file_without_force_is_exit_6() {
    let dir = temp_dir("restore-exists");
    let db = dir.join("app.db");
    assert!(workload(&db, &["--txns", "20", "--seed", "3"]).status.success());
    let b = file_backend(&dir);
    let log = dir.join("watch.log");
    let w = spawn_watch(&db, &b, &[], &log);
    wait_for_backup(&b, &log);
    assert_eq!(stop(w, 30), 0, "{}", log_text(&log));
    let target = dir.join("precious.db");
    assert!(workload(&target, &["--txns", "5", "--seed", "4"]).status.success());
    let before = fingerprint(&target);
    let ba = b.args();
    let o = walrust(&args(&["restore", "app", "-o", target.to_str().unwrap()], &ba));
    one_clear_line(&o, 6, &["precious.db", "already exists", "--force"]);
    assert_eq!(fingerprint(&target), before, "the existing file is untouched");
    let leftovers: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .filter(|n| n.starts_with("precious") && n != "precious.db")
        .collect();
    assert!(leftovers.is_empty(), "no partial files: {leftovers:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn malformed_config_files_are_exit_2_naming_the_line() {
    let dir = temp_dir("badtoml");
    let cfg = dir.join("walrust.toml");
    for (text, line, what) in [
        ("[sync\ninterval = \"1s\"\n", 1, "[sync"),
        ("[sync]\ninterval = 1s\n", 2, "interval"),
        ("[s3]\nbucket = \"s3://bkt/\"\n[sync]\ninterval = \"1s\n", 4, ""),
        ("[s3]\nbucket = \"s3://bkt/\"\n\n[[databases]]\npath\n", 5, ""),
        ("[s3]\nbucket = \"s3://bkt/\"\nbucket = \"s3://ckt/\"\n", 3, "bucket"),
        ("[s3]\nbucket = \"s3://bkt/\"\n[sink]\n", 3, "[sink]"),
        ("[sync]\ninterval = \"soon\"\n", 2, "soon"),
        ("[sync]\nnice = 20\n", 2, "nice"),
    ] {
        std::fs::write(&cfg, text).unwrap();
        for cmd in ["watch", "explain"] {
            let o = walrust(&[cmd, "--config", cfg.to_str().unwrap()]);
            let l = one_clear_line(&o, 2, &[&format!("walrust.toml:{line}:"), what]);
            assert!(!l.contains('\n'));
        }
    }
    // The same bad value as a flag.
    let o = walrust(&["watch", "x.db", "-b", "file:///tmp/x", "--nice", "20"]);
    one_clear_line(&o, 2, &["--nice", "'20'", "0 to 19"]);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn wrong_credentials_are_one_line_without_the_secret() {
    let Some(env) = s3_env() else { return };
    let dir = temp_dir("badcreds");
    let db = dir.join("app.db");
    assert!(workload(&db, &["--txns", "10", "--seed", "5"]).status.success());
    let before = fingerprint(&db);
    let secret = format!("not-the-secret-{}", unique("x"));
    let url = format!("s3://{}/{}/", env.bucket, unique("badcreds"));
    let creds = [("AWS_ACCESS_KEY_ID", env.access_key.as_str()), ("AWS_SECRET_ACCESS_KEY", secret.as_str())];
    let out = dir.join("out.db");
    for a in [
        vec!["watch", db.to_str().unwrap(), "-b", &url, "--endpoint", &env.endpoint],
        vec!["restore", "app", "-o", out.to_str().unwrap(), "-b", &url, "--endpoint", &env.endpoint],
        vec!["list", "-b", &url, "--endpoint", &env.endpoint],
    ] {
        let t = Instant::now();
        let o = run_env(&a, &creds);
        let l = one_clear_line(&o, 1, &["storage refused the credentials"]);
        assert!(!l.contains(&secret) && !String::from_utf8_lossy(&o.stdout).contains(&secret), "{l}");
        assert!(t.elapsed() < Duration::from_secs(10), "auth errors are not retried: {:?}", t.elapsed());
    }
    assert_eq!(fingerprint(&db), before);
    assert!(!out.exists());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_unreachable_endpoint_is_one_line() {
    let dir = temp_dir("unreachable1");
    let db = dir.join("app.db");
    assert!(workload(&db, &["--txns", "10", "--seed", "6"]).status.success());
    let before = fingerprint(&db);
    let creds = [("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE"), ("AWS_SECRET_ACCESS_KEY", "secret-never-printed")];
    let out = dir.join("out.db");
    for a in [
        vec!["watch", db.to_str().unwrap(), "-b", "s3://bucket/p/", "--endpoint", "http://127.0.0.1:1"],
        vec!["restore", "app", "-o", out.to_str().unwrap(), "-b", "s3://bucket/p/", "--endpoint", "http://127.0.0.1:1"],
    ] {
        let t = Instant::now();
        let o = run_env(&a, &creds);
        let l = one_clear_line(&o, 1, &["storage unreachable", "127.0.0.1:1", "after 6 attempts"]);
        assert!(!l.contains("secret-never-printed"));
        assert!(t.elapsed() < Duration::from_secs(60), "bounded retries: {:?}", t.elapsed());
    }
    assert_eq!(fingerprint(&db), before);
    assert!(!out.exists());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_store_that_ignores_conditional_writes_is_refused_at_start() {
    let Some(direct) = Backend::s3() else { return };
    let proxy = FaultProxy::start(direct.endpoint.as_deref().unwrap());
    // The proxy answers 200 to a create-if-absent PUT of a key it has seen created, without forwarding it: a
    // store that ignores If-None-Match (Garage, FIELD-NOTES 11).
    proxy.set(r#"{"ignore_if_none_match": true}"#);
    let b = Backend { url: direct.url.clone(), endpoint: Some(proxy.endpoint()) };
    let dir = temp_dir("unsafe-store");
    let db = dir.join("app.db");
    assert!(workload(&db, &["--txns", "10", "--seed", "7"]).status.success());
    let before = fingerprint(&db);
    let ba = b.args();
    let o = walrust(&args(&["watch", db.to_str().unwrap()], &ba));
    let l = one_clear_line(&o, 2, &["If-None-Match", "--allow-unsafe-storage"]);
    assert!(l.contains(&direct.url), "names the store: {l}");
    assert_eq!(proxy.stat("ignored_conditional"), 1.0, "the probe's second write was the ignored one");
    assert_eq!(fingerprint(&db), before);
    assert!(direct.keys("app").is_empty(), "nothing uploaded");
    assert!(walrust::storage::list_all(&*direct.storage(), "", None).unwrap().is_empty(), "the probe cleaned up");
    let _ = std::fs::remove_dir_all(&dir);
}
