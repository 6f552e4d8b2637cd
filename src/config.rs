//! `walrust.toml`: parsed and validated by hand into typed settings. Unknown keys and bad values are errors that
//! name the file, the line and the key.
//!
//! The file uses a small subset of TOML: `[section]`, `[[databases]]`, `key = value` with a double-quoted string,
//! an integer or `true`/`false`, and `#` comments. (nanoserde's TOML reader folds keys of a `[section]` that
//! follows a `[[array]]` into the array's last table, so walrust reads this subset itself.)
//!
//! ```toml
//! [s3]
//! bucket = "s3://my-backups/prod"      # or file:///var/backups
//! endpoint = "https://s3.example.com"  # optional
//!
//! [sync]
//! interval = "1s"
//! check_interval = "100ms"
//! snapshot_interval = "1h"
//! nice = 10                            # replication threads run this many levels below the process (0-19)
//!
//! [retention]
//! hourly = 24
//! daily = 7
//! weekly = 12
//! monthly = 12
//! compact_interval = "1h"              # optional: watch runs compact
//!
//! [metrics]
//! listen = "127.0.0.1:9090"            # optional: /metrics and /health
//!
//! [webhooks]
//! url = "https://hooks.example.com/x"  # optional; HMAC key from WALRUST_WEBHOOK_SECRET
//!
//! [[databases]]
//! path = "/data/tenants/*.db"          # a glob in the file name
//! interval = "5s"                      # per-database overrides of [sync]
//!
//! [[replicas]]                         # read by `walrust replicate --config` (one thread each)
//! name = "app"                         # the database's name in the bucket
//! local = "/srv/app-replica.db"        # the replica file
//! interval = "5s"                      # optional: time between polls (default 5s)
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::compact::Policy;
use crate::error::{Error, Result};

/// Sync settings; `None` means "not set here" (the next layer decides).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sync {
    pub interval: Option<Duration>,
    pub check_interval: Option<Duration>,
    pub snapshot_interval: Option<Duration>,
    /// `wal_warn_size`: warn (log, webhook) when a WAL grows over this many bytes.
    pub wal_warn_bytes: Option<u64>,
    /// `nice`: levels below the process that replication threads run at (0-19).
    pub nice: Option<u8>,
}

impl Sync {
    /// `self` where set, else `base`.
    pub fn over(&self, base: &Sync) -> Sync {
        Sync {
            interval: self.interval.or(base.interval),
            check_interval: self.check_interval.or(base.check_interval),
            snapshot_interval: self.snapshot_interval.or(base.snapshot_interval),
            wal_warn_bytes: self.wal_warn_bytes.or(base.wal_warn_bytes),
            nice: self.nice.or(base.nice),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Database {
    /// A path, or a glob in its file name (`*`, `?`).
    pub path: String,
    pub name: Option<String>,
    pub sync: Sync,
    /// Line of its `[[databases]]` header, for messages.
    pub line: usize,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Retention {
    pub hourly: Option<u32>,
    pub daily: Option<u32>,
    pub weekly: Option<u32>,
    pub monthly: Option<u32>,
    pub compact_interval: Option<Duration>,
}

impl Retention {
    /// The policy, with unset counts from `base`.
    pub fn policy_over(&self, base: Policy) -> Policy {
        Policy {
            hourly: self.hourly.unwrap_or(base.hourly),
            daily: self.daily.unwrap_or(base.daily),
            weekly: self.weekly.unwrap_or(base.weekly),
            monthly: self.monthly.unwrap_or(base.monthly),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Config {
    pub bucket: Option<String>,
    pub endpoint: Option<String>,
    pub sync: Sync,
    pub retention: Retention,
    pub databases: Vec<Database>,
    /// `[metrics] listen`: address of the /metrics and /health listener (off when unset).
    pub metrics_listen: Option<String>,
    /// `[webhooks] url`: where events are POSTed (off when unset; the HMAC key comes from the environment).
    pub webhook_url: Option<String>,
    /// `[[replicas]]`: read replicas `walrust replicate --config` keeps current, one thread each.
    pub replicas: Vec<ReplicaEntry>,
}

/// One `[[replicas]]` table: `name` (in the bucket), `local` (the replica file), optional `interval`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaEntry {
    pub name: String,
    pub local: String,
    pub interval: Option<Duration>,
    /// Line of its `[[replicas]]` header, for messages.
    pub line: usize,
}

#[derive(Debug, Clone, PartialEq)]
enum Value {
    Str(String),
    Int(i64),
    Bool(bool),
}

/// Reads and validates a config file.
pub fn load(path: &Path) -> Result<Config> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
    parse(&text, &path.display().to_string())
}

/// The config file a command uses: `explicit` (`--config`), else `./walrust.toml` when `implicit_ok` and it
/// exists, else none (an empty config). Returns the path read, if any.
pub fn find(explicit: Option<PathBuf>, implicit_ok: bool) -> Result<(Option<PathBuf>, Config)> {
    let path = match explicit {
        Some(p) => Some(p),
        None if implicit_ok && Path::new("walrust.toml").is_file() => Some(PathBuf::from("walrust.toml")),
        None => None,
    };
    let cfg = match &path {
        Some(p) => load(p)?,
        None => Config::default(),
    };
    Ok((path, cfg))
}

/// Parses config text; `origin` names it in errors.
pub fn parse(text: &str, origin: &str) -> Result<Config> {
    let err = |line: usize, msg: String| Error::Usage(format!("{origin}:{line}: {msg}"));
    let mut cfg = Config::default();
    let mut section = String::new();
    let mut seen: BTreeMap<(String, usize, String), usize> = BTreeMap::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let l = strip_comment(raw).trim();
        if l.is_empty() {
            continue;
        }
        if let Some(name) = l.strip_prefix("[[").and_then(|r| r.strip_suffix("]]")) {
            let name = name.trim();
            if name == "replicas" {
                cfg.replicas.push(ReplicaEntry { name: String::new(), local: String::new(), interval: None, line });
                section = "replicas".into();
                continue;
            }
            if name != "databases" {
                return Err(err(
                    line,
                    format!("unknown table array [[{name}]] (expected [[databases]] or [[replicas]])"),
                ));
            }
            cfg.databases.push(Database { path: String::new(), name: None, sync: Sync::default(), line });
            section = "databases".into();
            continue;
        }
        if let Some(name) = l.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
            let name = name.trim();
            if !matches!(name, "s3" | "sync" | "retention" | "metrics" | "webhooks") {
                return Err(err(
                    line,
                    format!("unknown section [{name}] (expected [s3], [sync], [retention], [metrics], [webhooks], [[databases]])"),
                ));
            }
            section = name.to_string();
            continue;
        }
        let Some((key, value)) = l.split_once('=') else {
            return Err(err(line, format!("expected key = value, found '{l}'")));
        };
        let key = key.trim();
        let value = parse_value(value.trim()).map_err(|m| err(line, format!("{key}: {m}")))?;
        let index = match section.as_str() {
            "databases" => cfg.databases.len(),
            "replicas" => cfg.replicas.len(),
            _ => 0,
        };
        if let Some(first) = seen.insert((section.clone(), index, key.to_string()), line) {
            return Err(err(line, format!("{key} is set twice (first on line {first})")));
        }
        let bad = |what: &str| err(line, format!("{key}: expected {what}"));
        let duration = |v: &Value| -> Result<Duration> {
            match v {
                Value::Str(s) => humantime::parse_duration(s)
                    .map_err(|e| err(line, format!("{key}: '{s}' is not a duration like 1s, 250ms, 1h: {e}"))),
                _ => Err(bad("a duration in quotes, like \"1s\"")),
            }
        };
        let count = |v: &Value| -> Result<u32> {
            match v {
                Value::Int(n) if *n >= 0 && *n <= u32::MAX as i64 => Ok(*n as u32),
                _ => Err(bad("a non-negative whole number")),
            }
        };
        let string = |v: &Value| -> Result<String> {
            match v {
                Value::Str(s) if !s.is_empty() => Ok(s.clone()),
                _ => Err(bad("a non-empty string in quotes")),
            }
        };
        // A database's name in the bucket (`[[databases]]` and `[[replicas]]`).
        let db_name = |v: &Value| -> Result<String> {
            let n = string(v)?;
            if !crate::keys::valid_name(&n) {
                return Err(err(line, format!("name: invalid name '{n}' (letters, digits, '.', '_', '-')")));
            }
            Ok(n)
        };
        let sync_key = |sync: &mut Sync, v: &Value| -> Result<bool> {
            match key {
                "interval" => sync.interval = Some(duration(v)?),
                "check_interval" => sync.check_interval = Some(duration(v)?),
                "snapshot_interval" => sync.snapshot_interval = Some(duration(v)?),
                "wal_warn_size" => {
                    let size = crate::cli::parse_size(&string(v)?);
                    sync.wal_warn_bytes = Some(size.map_err(|_| bad("a size in quotes, like \"256MiB\""))?)
                }
                "nice" => match v {
                    Value::Int(n) if (0..=19).contains(n) => sync.nice = Some(*n as u8),
                    _ => return Err(bad("a whole number from 0 to 19")),
                },
                _ => return Ok(false),
            }
            Ok(true)
        };
        let known = match section.as_str() {
            "" => false,
            "s3" => match key {
                "bucket" => {
                    let b = string(&value)?;
                    crate::storage::parse_location(&b).map_err(|e| err(line, format!("bucket: {e}")))?;
                    cfg.bucket = Some(b);
                    true
                }
                "endpoint" => {
                    cfg.endpoint = Some(string(&value)?);
                    true
                }
                _ => false,
            },
            "sync" => sync_key(&mut cfg.sync, &value)?,
            "webhooks" => match key {
                "url" => {
                    let u = string(&value)?;
                    if !(u.starts_with("http://") || u.starts_with("https://")) {
                        return Err(err(line, format!("url: '{u}' is not an http:// or https:// URL")));
                    }
                    cfg.webhook_url = Some(u);
                    true
                }
                _ => false,
            },
            "metrics" => match key {
                "listen" => {
                    let a = string(&value)?;
                    if a.parse::<std::net::SocketAddr>().is_err() {
                        return Err(err(line, format!("listen: '{a}' is not an address like 127.0.0.1:9090")));
                    }
                    cfg.metrics_listen = Some(a);
                    true
                }
                _ => false,
            },
            "retention" => match key {
                "hourly" => {
                    cfg.retention.hourly = Some(count(&value)?);
                    true
                }
                "daily" => {
                    cfg.retention.daily = Some(count(&value)?);
                    true
                }
                "weekly" => {
                    cfg.retention.weekly = Some(count(&value)?);
                    true
                }
                "monthly" => {
                    cfg.retention.monthly = Some(count(&value)?);
                    true
                }
                "compact_interval" => {
                    cfg.retention.compact_interval = Some(duration(&value)?);
                    true
                }
                _ => false,
            },
            "replicas" => {
                let r = cfg.replicas.last_mut().ok_or_else(|| err(line, "key outside a section".into()))?;
                match key {
                    "name" => {
                        r.name = db_name(&value)?;
                        true
                    }
                    "local" => {
                        r.local = string(&value)?;
                        true
                    }
                    "interval" => {
                        let d = duration(&value)?;
                        if d.is_zero() {
                            return Err(err(line, "interval: must be more than 0".into()));
                        }
                        r.interval = Some(d);
                        true
                    }
                    _ => false,
                }
            }
            _ => {
                let db = cfg.databases.last_mut().ok_or_else(|| err(line, "key outside a section".into()))?;
                match key {
                    "path" => {
                        db.path = string(&value)?;
                        true
                    }
                    "name" => {
                        db.name = Some(db_name(&value)?);
                        true
                    }
                    _ => sync_key(&mut db.sync, &value)?,
                }
            }
        };
        if !known {
            let place = if section.is_empty() { "at the top level".to_string() } else { format!("in [{section}]") };
            return Err(err(line, format!("unknown key '{key}' {place}")));
        }
    }
    for db in &cfg.databases {
        if db.path.is_empty() {
            return Err(err(db.line, "[[databases]] needs a path".into()));
        }
        if db.name.is_some() && has_glob(&db.path) {
            return Err(err(db.line, format!("name cannot be set for a glob ({})", db.path)));
        }
    }
    for (i, r) in cfg.replicas.iter().enumerate() {
        if r.name.is_empty() || r.local.is_empty() {
            return Err(err(r.line, "[[replicas]] needs a name and a local path".into()));
        }
        if let Some(o) = cfg.replicas[..i].iter().find(|o| o.local == r.local) {
            return Err(err(r.line, format!("local {} is already the replica of line {}", r.local, o.line)));
        }
    }
    Ok(cfg)
}

fn strip_comment(l: &str) -> &str {
    let mut in_str = false;
    for (i, c) in l.char_indices() {
        match c {
            '"' => in_str = !in_str,
            '#' if !in_str => return &l[..i],
            _ => {}
        }
    }
    l
}

fn parse_value(v: &str) -> std::result::Result<Value, String> {
    if let Some(inner) = v.strip_prefix('"').and_then(|r| r.strip_suffix('"')) {
        if inner.contains('"') || inner.contains('\\') {
            return Err("quotes and backslashes inside strings are not supported".into());
        }
        return Ok(Value::Str(inner.to_string()));
    }
    match v {
        "true" => return Ok(Value::Bool(true)),
        "false" => return Ok(Value::Bool(false)),
        _ => {}
    }
    v.replace('_', "")
        .parse::<i64>()
        .map(Value::Int)
        .map_err(|_| format!("'{v}' is not a quoted string, a number or a boolean"))
}

fn has_glob(p: &str) -> bool {
    p.contains('*') || p.contains('?')
}

/// Expands `[[databases]]` into files: a plain path as is; a glob (in the file name only) to the matching files
/// that exist now, sorted.
pub fn expand(db: &Database) -> Result<Vec<PathBuf>> {
    if !has_glob(&db.path) {
        return Ok(vec![PathBuf::from(&db.path)]);
    }
    let path = Path::new(&db.path);
    let (dir, pattern) = match (path.parent(), path.file_name().and_then(|f| f.to_str())) {
        (Some(d), Some(f)) if !has_glob(&d.to_string_lossy()) => (d, f),
        _ => return Err(Error::Usage(format!("{}: globs are supported in the file name only", db.path))),
    };
    let dir = if dir.as_os_str().is_empty() { Path::new(".") } else { dir };
    let mut out = Vec::new();
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io(format!("listing {}", dir.display()), e))?;
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(format!("listing {}", dir.display()), e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if glob_match(pattern.as_bytes(), name.as_bytes()) && entry.path().is_file() {
            out.push(dir.join(name));
        }
    }
    out.sort();
    Ok(out)
}

/// `*` matches any run of characters, `?` one character.
fn glob_match(p: &[u8], s: &[u8]) -> bool {
    match (p.first(), s.first()) {
        (None, None) => true,
        (Some(b'*'), _) => glob_match(&p[1..], s) || (!s.is_empty() && glob_match(p, &s[1..])),
        (Some(b'?'), Some(_)) => glob_match(&p[1..], &s[1..]),
        (Some(a), Some(b)) if a == b => glob_match(&p[1..], &s[1..]),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FULL: &str = r#"
# every key
[s3]
bucket = "s3://my-backups/prod"   # trailing comment
endpoint = "http://127.0.0.1:9000"

[sync]
interval = "2s"
check_interval = "50ms"
snapshot_interval = "30m"
wal_warn_size = "128MiB"
nice = 5

[[databases]]
path = "/data/tenants/*.db"
interval = "5s"
wal_warn_size = "1GB"
nice = 0

[retention]
hourly = 48
daily = 14
weekly = 8
monthly = 6
compact_interval = "1h"

[metrics]
listen = "127.0.0.1:9091"

[webhooks]
url = "https://hooks.example.com/walrust"

[[databases]]
path = "/data/app.db"
name = "main-app"
check_interval = "10ms"
snapshot_interval = "2h"
"#;

    #[test]
    fn every_key_is_read() {
        let c = parse(FULL, "walrust.toml").unwrap();
        assert_eq!(c.bucket.as_deref(), Some("s3://my-backups/prod"));
        assert_eq!(c.endpoint.as_deref(), Some("http://127.0.0.1:9000"));
        assert_eq!(
            c.sync,
            Sync {
                interval: Some(Duration::from_secs(2)),
                check_interval: Some(Duration::from_millis(50)),
                snapshot_interval: Some(Duration::from_secs(1800)),
                wal_warn_bytes: Some(128 << 20),
                nice: Some(5),
            }
        );
        assert_eq!(c.retention.policy_over(Policy::default()), Policy { hourly: 48, daily: 14, weekly: 8, monthly: 6 });
        assert_eq!(c.retention.compact_interval, Some(Duration::from_secs(3600)));
        assert_eq!(c.metrics_listen.as_deref(), Some("127.0.0.1:9091"));
        assert_eq!(c.webhook_url.as_deref(), Some("https://hooks.example.com/walrust"));
        assert_eq!(c.databases.len(), 2, "a [section] after [[databases]] does not swallow the next table");
        assert_eq!(c.databases[0].path, "/data/tenants/*.db");
        assert_eq!(c.databases[0].sync.interval, Some(Duration::from_secs(5)));
        assert_eq!(c.databases[0].sync.over(&c.sync).wal_warn_bytes, Some(1_000_000_000));
        assert_eq!(c.databases[0].sync.over(&c.sync).nice, Some(0));
        let d = &c.databases[1];
        assert_eq!((d.path.as_str(), d.name.as_deref()), ("/data/app.db", Some("main-app")));
        // Per-database overrides win over [sync], the rest comes from [sync].
        let eff = d.sync.over(&c.sync);
        assert_eq!(eff.interval, Some(Duration::from_secs(2)));
        assert_eq!(eff.check_interval, Some(Duration::from_millis(10)));
        assert_eq!(eff.snapshot_interval, Some(Duration::from_secs(7200)));
        assert_eq!(eff.nice, Some(5));
    }

    #[test]
    fn errors_name_the_line_and_key() {
        let cases = [
            ("[sync]\ninterval = \"2s\"\nintervall = \"3s\"\n", "t.toml:3: unknown key 'intervall' in [sync]"),
            ("[sink]\n", "t.toml:1: unknown section [sink]"),
            ("[sync]\ninterval = \"soon\"\n", "t.toml:2: interval: 'soon' is not a duration"),
            ("[sync]\ninterval = 5\n", "t.toml:2: interval: expected a duration in quotes"),
            ("[retention]\ndaily = -1\n", "t.toml:2: daily: expected a non-negative whole number"),
            ("[sync]\nnice = 20\n", "t.toml:2: nice: expected a whole number from 0 to 19"),
            (
                "[sync]\nwal_warn_size = \"lots\"\n",
                "t.toml:2: wal_warn_size: expected a size in quotes, like \"256MiB\"",
            ),
            ("[sync]\nwal_warn_size = 5\n", "t.toml:2: wal_warn_size: expected a non-empty string in quotes"),
            ("[retention]\ndaily = \"7\"\n", "t.toml:2: daily: expected a non-negative whole number"),
            ("[s3]\nbucket = \"http://x\"\n", "t.toml:2: bucket: invalid storage url"),
            ("bucket = \"s3://b\"\n", "t.toml:1: unknown key 'bucket' at the top level"),
            ("[[databases]]\nname = \"x\"\n", "t.toml:1: [[databases]] needs a path"),
            ("[[databases]]\npath = \"/a/*.db\"\nname = \"x\"\n", "t.toml:1: name cannot be set for a glob"),
            ("[[databases]]\npath = \"/a.db\"\nretain = 1\n", "t.toml:3: unknown key 'retain' in [databases]"),
            ("[sync]\ninterval = \"1s\"\ninterval = \"2s\"\n", "t.toml:3: interval is set twice (first on line 2)"),
            ("[sync]\ninterval\n", "t.toml:2: expected key = value"),
            ("[[tenants]]\n", "t.toml:1: unknown table array [[tenants]]"),
            ("[metrics]\nlisten = \"localhost\"\n", "t.toml:2: listen: 'localhost' is not an address"),
            ("[webhooks]\nurl = \"ftp://x\"\n", "t.toml:2: url: 'ftp://x' is not an http"),
        ];
        for (text, want) in cases {
            let e = parse(text, "t.toml").unwrap_err().to_string();
            assert!(e.contains(want), "{text:?}: got {e}, want {want}");
            assert!(matches!(parse(text, "t.toml"), Err(Error::Usage(_))));
        }
    }

    #[test]
    fn replicas_are_read_and_checked() {
        let text =
            "[s3]\nbucket = \"s3://bkt/p\"\n[[replicas]]\nname = \"app\"\nlocal = \"/r/app.db\"\ninterval = \"2s\"\n\
                    [sync]\ninterval = \"1s\"\n[[replicas]]\nname = \"users\"\nlocal = \"/r/users.db\"\n";
        let c = parse(text, "t.toml").unwrap();
        assert_eq!(c.replicas.len(), 2, "a [section] after [[replicas]] does not swallow the next table");
        assert_eq!(
            c.replicas[0],
            ReplicaEntry {
                name: "app".into(),
                local: "/r/app.db".into(),
                interval: Some(Duration::from_secs(2)),
                line: 3
            }
        );
        assert_eq!((c.replicas[1].name.as_str(), c.replicas[1].interval), ("users", None));
        assert_eq!(c.sync.interval, Some(Duration::from_secs(1)));
        for (text, want) in [
            ("[[replicas]]\nname = \"a\"\n", "t.toml:1: [[replicas]] needs a name and a local path"),
            ("[[replicas]]\nname = \"a/b\"\n", "t.toml:2: name: invalid name"),
            (
                "[[replicas]]\nname = \"a\"\nlocal = \"/x\"\npath = \"/y\"\n",
                "t.toml:4: unknown key 'path' in [replicas]",
            ),
            ("[[replicas]]\nname = \"a\"\nlocal = \"/x\"\ninterval = \"0s\"\n", "t.toml:4: interval: must be more"),
            (
                "[[replicas]]\nname = \"a\"\nlocal = \"/x\"\n[[replicas]]\nname = \"b\"\nlocal = \"/x\"\n",
                "t.toml:4: local /x is already the replica of line 1",
            ),
        ] {
            let e = parse(text, "t.toml").unwrap_err().to_string();
            assert!(e.contains(want), "{text:?}: got {e}, want {want}");
        }
    }

    #[test]
    fn the_example_file_is_valid() {
        let c = parse(include_str!("../walrust.toml"), "walrust.toml").unwrap();
        assert_eq!(c.databases.len(), 2);
        assert_eq!(c.retention.policy_over(Policy { hourly: 0, daily: 0, weekly: 0, monthly: 0 }), Policy::default());
    }

    #[test]
    fn globs_expand_to_existing_files() {
        let dir = std::env::temp_dir().join(format!("walrust-glob-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for f in ["a.db", "b.db", "c.db-wal", "notes.txt", "x1.db"] {
            std::fs::write(dir.join(f), b"").unwrap();
        }
        let db =
            |p: &str| Database { path: format!("{}/{p}", dir.display()), name: None, sync: Sync::default(), line: 1 };
        let names = |v: Vec<PathBuf>| -> Vec<String> {
            v.iter().map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect()
        };
        assert_eq!(names(expand(&db("*.db")).unwrap()), vec!["a.db", "b.db", "x1.db"]);
        assert_eq!(names(expand(&db("?.db")).unwrap()), vec!["a.db", "b.db"]);
        assert_eq!(names(expand(&db("x*")).unwrap()), vec!["x1.db"]);
        assert_eq!(names(expand(&db("plain.db")).unwrap()), vec!["plain.db"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
