//! Full and read-only disks (issue #7): a restore, a watch and a replica that cannot write give one clear error
//! line and a stable exit code, leave no partial files, and never damage what was already there. Uses small
//! tmpfs mounts (needs CAP_SYS_ADMIN, as in CI; skipped with a message where mounting is not allowed).

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use support::{app, digest, temp_dir, walrust, Backend};

/// A tmpfs of `size` mounted at a fresh directory, unmounted on drop.
struct Mount(PathBuf);

impl Mount {
    fn new(tag: &str, opts: &str) -> Option<Mount> {
        let dir = temp_dir(tag);
        let ok = Command::new("mount").args(["-t", "tmpfs", "-o", opts, "tmpfs"]).arg(&dir).status();
        match ok {
            Ok(s) if s.success() => Some(Mount(dir)),
            _ => {
                eprintln!("skipping: cannot mount a tmpfs here (needs CAP_SYS_ADMIN)");
                None
            }
        }
    }

    fn remount(&self, opts: &str) {
        let s = Command::new("mount").args(["-o", &format!("remount,{opts}")]).arg(&self.0).status().unwrap();
        assert!(s.success());
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    v.sort();
    v
}

/// One `walrust: ` line on stderr, no panic; returns it.
fn one_error_line(o: &std::process::Output) -> String {
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!err.contains("panicked"), "{err}");
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("walrust: ")).collect();
    assert_eq!(lines.len(), 1, "{err}");
    eprintln!("error line: {}", lines[0]);
    lines[0].to_string()
}

/// A backup of a database of about 3 MiB of incompressible rows.
fn backup(dir: &Path) -> (Backend, PathBuf) {
    let db = dir.join("big.db");
    let c = app(&db);
    c.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB)").unwrap();
    for _ in 0..30 {
        c.execute("INSERT INTO t(v) VALUES (randomblob(100000))", []).unwrap();
    }
    drop(c);
    let b = Backend::file(dir);
    let mut args = vec!["snapshot".to_string(), db.display().to_string()];
    args.extend(b.args());
    let o = walrust(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    (b, db)
}

fn restore_args(b: &Backend, out: &Path, extra: &[&str]) -> Vec<String> {
    let mut a = vec!["restore".to_string(), "big".into(), "-o".into(), out.display().to_string()];
    a.extend(b.args());
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

fn run(args: &[String]) -> std::process::Output {
    walrust(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

#[test]
fn restore_onto_a_full_disk_leaves_nothing_and_keeps_the_old_file() {
    let Some(m) = Mount::new("full", "size=1m") else { return };
    let dir = temp_dir("full-src");
    let (b, db) = backup(&dir);
    let out = m.0.join("big.db");
    let o = run(&restore_args(&b, &out, &[]));
    assert_eq!(o.status.code(), Some(1));
    let line = one_error_line(&o);
    assert!(line.contains("No space left on device"), "{line}");
    assert!(entries(&m.0).is_empty(), "no partial file: {:?}", entries(&m.0));

    // --force over an existing file on a full disk: the old file stays as it was.
    std::fs::write(&out, b"the previous database").unwrap();
    let o = run(&restore_args(&b, &out, &["--force"]));
    assert_eq!(o.status.code(), Some(1));
    one_error_line(&o);
    assert_eq!(entries(&m.0), ["big.db"]);
    assert_eq!(std::fs::read(&out).unwrap(), b"the previous database");

    // The same restore with room succeeds and is exact.
    let ok_out = dir.join("ok.db");
    assert!(run(&restore_args(&b, &ok_out, &[])).status.success());
    assert_eq!(digest(&ok_out), digest(&db));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn restore_into_a_read_only_directory() {
    let Some(m) = Mount::new("ro", "size=8m") else { return };
    m.remount("ro");
    let dir = temp_dir("ro-src");
    let (b, _) = backup(&dir);
    let o = run(&restore_args(&b, &m.0.join("big.db"), &[]));
    assert_eq!(o.status.code(), Some(1));
    let line = one_error_line(&o);
    assert!(line.contains("Read-only file system"), "{line}");
    assert!(entries(&m.0).is_empty());
    let _ = std::fs::remove_dir_all(&dir);
}

/// A database whose directory is full: watch cannot write its state file beside it. It says so in one line
/// and exits non-zero; the database is untouched.
#[test]
fn watch_beside_a_database_on_a_full_disk() {
    let Some(m) = Mount::new("dbfull", "size=512k") else { return };
    let db = m.0.join("app.db");
    let c = app(&db);
    c.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT); INSERT INTO t(v) VALUES ('x');").unwrap();
    // Fill the rest of the disk.
    let filler = m.0.join("filler");
    let mut f = std::fs::File::create(&filler).unwrap();
    let chunk = vec![7u8; 4096];
    while std::io::Write::write_all(&mut f, &chunk).is_ok() {}
    drop(f);
    let before = digest(&db);
    let backups = temp_dir("dbfull-backups");
    let o =
        walrust(&["watch", db.to_str().unwrap(), "-b", &format!("file://{}", backups.display()), "--interval", "50ms"]);
    assert_ne!(o.status.code(), Some(0));
    let line = one_error_line(&o);
    assert!(line.contains("No space left on device"), "{line}");
    drop(c);
    assert_eq!(digest(&db), before, "the database is untouched");
    let _ = std::fs::remove_dir_all(&backups);
}
