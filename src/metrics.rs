//! Metrics and health: each watcher publishes its numbers into a [`Registry`] after every loop iteration; an
//! optional HTTP listener (off unless configured; meant for 127.0.0.1) serves `/metrics` in Prometheus text
//! format and `/health` (200 when every database synced recently, 503 with the reasons otherwise).
//! Nothing here is on the replication path: publishing is a short mutex hold, serving runs on its own thread.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::error::{Error, Result};
use crate::storage::StorageRef;

/// One database's numbers (counters are totals since the process started).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DbMetrics {
    /// Last loop iteration that ended with everything committed shipped (ms since the epoch).
    pub last_sync_ms: u64,
    /// Seconds the oldest unshipped commit has waited (0 when caught up).
    pub lag_seconds: f64,
    /// Size of the WAL file, in bytes.
    pub wal_bytes: u64,
    /// Sequence number of the last changeset or base snapshot shipped in the current generation.
    pub seq: u64,
    /// Changesets uploaded.
    pub changesets: u64,
    /// Snapshots uploaded, base and mid-generation.
    pub snapshots: u64,
    /// Bytes of objects uploaded (as stored: compressed).
    pub bytes_uploaded: u64,
    /// Checkpoints run by walrust.
    pub checkpoints: u64,
    /// Loop iterations that failed (and were retried).
    pub errors: u64,
    /// Stopped for good (fenced, corrupt, file gone): health fails until restarted.
    pub failed: Option<String>,
}

/// Shared by the watchers (writers) and the HTTP listener (reader).
pub struct Registry {
    dbs: Mutex<BTreeMap<String, DbMetrics>>,
    storage: StorageRef,
    /// A database whose last sync is older than this is unhealthy.
    stale_after: Duration,
}

impl Registry {
    /// An empty registry. `storage` is the one the databases replicate to (its request counts are exported);
    /// a database whose last sync is older than `stale_after` makes `/health` fail.
    pub fn new(storage: StorageRef, stale_after: Duration) -> Arc<Registry> {
        Arc::new(Registry { dbs: Mutex::new(BTreeMap::new()), storage, stale_after })
    }

    /// Replaces `name`'s numbers with `m` (each watcher calls it after every loop iteration).
    pub fn publish(&self, name: &str, m: DbMetrics) {
        self.dbs.lock().unwrap_or_else(|p| p.into_inner()).insert(name.to_string(), m);
    }

    /// Forgets a database that is no longer watched.
    pub fn remove(&self, name: &str) {
        self.dbs.lock().unwrap_or_else(|p| p.into_inner()).remove(name);
    }

    /// Changes one database's entry in place (e.g. to count an error or mark it failed).
    pub fn update(&self, name: &str, f: impl FnOnce(&mut DbMetrics)) {
        f(self.dbs.lock().unwrap_or_else(|p| p.into_inner()).entry(name.to_string()).or_default());
    }

    fn snapshot(&self) -> BTreeMap<String, DbMetrics> {
        self.dbs.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let dbs = self.snapshot();
        let mut out = String::new();
        let gauge = |out: &mut String, name: &str, help: &str, kind: &str, value: &dyn Fn(&DbMetrics) -> f64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (db, m) in &dbs {
                let _ = writeln!(out, "{name}{{db=\"{}\"}} {}", escape(db), value(m));
            }
        };
        gauge(
            &mut out,
            "walrust_last_sync_timestamp_seconds",
            "Last time everything committed was shipped.",
            "gauge",
            &|m| m.last_sync_ms as f64 / 1000.0,
        );
        gauge(&mut out, "walrust_replication_lag_seconds", "Age of the oldest unshipped commit.", "gauge", &|m| {
            m.lag_seconds
        });
        gauge(&mut out, "walrust_wal_bytes", "Size of the WAL file.", "gauge", &|m| m.wal_bytes as f64);
        gauge(&mut out, "walrust_seq", "Sequence number of the last shipped object.", "gauge", &|m| m.seq as f64);
        gauge(&mut out, "walrust_changesets_total", "Changesets uploaded.", "counter", &|m| m.changesets as f64);
        gauge(&mut out, "walrust_snapshots_total", "Snapshots uploaded.", "counter", &|m| m.snapshots as f64);
        gauge(&mut out, "walrust_uploaded_bytes_total", "Bytes uploaded.", "counter", &|m| m.bytes_uploaded as f64);
        gauge(&mut out, "walrust_checkpoints_total", "Checkpoints run by walrust.", "counter", &|m| {
            m.checkpoints as f64
        });
        gauge(&mut out, "walrust_errors_total", "Loop iterations that failed (retried).", "counter", &|m| {
            m.errors as f64
        });
        gauge(&mut out, "walrust_failed", "1 when the database stopped replicating for good.", "gauge", &|m| {
            if m.failed.is_some() {
                1.0
            } else {
                0.0
            }
        });
        let c = self.storage.request_counts();
        let _ = writeln!(
            out,
            "# HELP walrust_storage_requests_total Requests sent to the storage, all databases.\n\
             # TYPE walrust_storage_requests_total counter"
        );
        for (kind, n) in [("get", c.get), ("put", c.put), ("list", c.list), ("delete", c.delete), ("other", c.other)] {
            let _ = writeln!(out, "walrust_storage_requests_total{{kind=\"{kind}\"}} {n}");
        }
        let _ = writeln!(
            out,
            "# HELP walrust_sqlite_memory_bytes SQLite's heap in use in this process, all databases.\n\
             # TYPE walrust_sqlite_memory_bytes gauge\nwalrust_sqlite_memory_bytes {}",
            // SAFETY: no preconditions; SQLite keeps this count itself.
            unsafe { rusqlite::ffi::sqlite3_memory_used() }
        );
        out
    }

    /// Healthy when every database synced within `stale_after` and none failed; otherwise the reasons.
    pub fn health(&self, now_ms: u64) -> std::result::Result<(), Vec<String>> {
        let stale_ms = self.stale_after.as_millis() as u64;
        let problems: Vec<String> = self
            .snapshot()
            .iter()
            .filter_map(|(db, m)| match &m.failed {
                Some(why) => Some(format!("{db}: stopped: {why}")),
                None if m.last_sync_ms == 0 => Some(format!("{db}: starting (not caught up yet)")),
                None if now_ms.saturating_sub(m.last_sync_ms) > stale_ms => {
                    Some(format!("{db}: last sync {} s ago", now_ms.saturating_sub(m.last_sync_ms) / 1000))
                }
                None => None,
            })
            .collect();
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// Binds `addr` and serves `/metrics` and `/health` on a background thread for the life of the process.
pub fn serve(addr: &str, registry: Arc<Registry>) -> Result<std::net::SocketAddr> {
    let listener = TcpListener::bind(addr).map_err(|e| Error::io(format!("binding the metrics listener {addr}"), e))?;
    let local = listener.local_addr().map_err(|e| Error::io("metrics listener", e))?;
    std::thread::Builder::new()
        .name("walrust-metrics".into())
        .stack_size(128 * 1024)
        .spawn(move || {
            for stream in listener.incoming().flatten() {
                let _ = answer(stream, &registry);
            }
        })
        .map_err(|e| Error::io("starting the metrics thread", e))?;
    Ok(local)
}

fn answer(mut stream: TcpStream, registry: &Registry) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.set_write_timeout(Some(Duration::from_secs(2)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request = String::new();
    reader.read_line(&mut request)?;
    // Drain the headers.
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" || line == "\n" {
            break;
        }
    }
    let path = request.split_whitespace().nth(1).unwrap_or("");
    let (status, body) = match path {
        "/metrics" => ("200 OK", registry.render()),
        "/health" => match registry.health(crate::watch::now_ms()) {
            Ok(()) => ("200 OK", "ok\n".to_string()),
            Err(problems) => ("503 Service Unavailable", problems.join("\n") + "\n"),
        },
        _ => ("404 Not Found", "try /metrics or /health\n".to_string()),
    };
    write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}
