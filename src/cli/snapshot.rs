//! `walrust snapshot DB`: take a snapshot now. When a `watch` of DB is running on this machine, it is asked to
//! take it (so its chain is never forked by a second writer); otherwise this process resumes the chain, takes
//! the snapshot and stops.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::cli::{parse_duration, usage, value_string, StorageArgs};
use crate::error::{Error, Result};
use crate::keys;
use crate::state::{state_path, LocalState};
use crate::watch::{self, WatchOptions, Watcher};

const USAGE: &str = "\
Usage: walrust snapshot DB -b s3://BUCKET[/PREFIX] [options]

Stores a full snapshot of DB now, so that restores of later points need fewer changesets. If a `walrust watch`
of DB is running on this machine, it takes the snapshot within its next poll and its chain continues
unbroken; otherwise this command resumes the chain itself (or starts a generation when none can be resumed).

Options:
  -b, --bucket URL      s3://BUCKET[/PREFIX] or file:///ABS/DIR (must be where the running watch writes)
      --endpoint URL    S3 endpoint (also AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL)
      --name NAME       name in the bucket (default: the file stem)
      --timeout D       how long to wait for a running watch (default 5m)

Examples:
  walrust snapshot app.db -b s3://backups/prod";

pub fn run(mut parser: lexopt::Parser) -> Result<i32> {
    let mut storage = StorageArgs::default();
    let mut db: Option<PathBuf> = None;
    let mut name: Option<String> = None;
    let mut timeout = Duration::from_secs(300);
    while let Some(arg) = parser.next().map_err(usage)? {
        match arg {
            lexopt::Arg::Short('b') | lexopt::Arg::Long("bucket") => storage.bucket = Some(value_string(&mut parser)?),
            lexopt::Arg::Long("endpoint") => storage.endpoint = Some(value_string(&mut parser)?),
            lexopt::Arg::Long("name") => name = Some(value_string(&mut parser)?),
            lexopt::Arg::Long("timeout") => timeout = parse_duration("--timeout", &value_string(&mut parser)?)?,
            lexopt::Arg::Short('h') | lexopt::Arg::Long("help") => {
                println!("{USAGE}");
                return Ok(0);
            }
            lexopt::Arg::Value(v) if db.is_none() => db = Some(PathBuf::from(v)),
            other => return Err(usage(other.unexpected())),
        }
    }
    let db = db.ok_or_else(|| Error::Usage("missing DB (see walrust snapshot --help)".into()))?;
    let name = match name {
        Some(n) => n,
        None => keys::name_from_path(&db)
            .ok_or_else(|| Error::Usage(format!("{}: cannot derive a name; use --name", db.display())))?,
    };
    let storage = storage.open_with(true)?;

    if watch::is_watched(&db)? {
        // The running watch owns the chain: ask it.
        let state = LocalState::load(&state_path(&db))?;
        if let Some(s) = &state {
            if s.location != storage.describe() || s.name != name {
                return Err(Error::Usage(format!(
                    "the running watch of {} replicates '{}' to {}, not '{name}' to {}",
                    db.display(),
                    s.name,
                    s.location,
                    storage.describe()
                )));
            }
        }
        let before = state.map(|s| s.last_snapshot_ms).unwrap_or(0);
        let request = watch::snapshot_request_path(&db);
        std::fs::write(&request, b"snapshot\n").map_err(|e| Error::io(format!("writing {}", request.display()), e))?;
        let started = Instant::now();
        loop {
            if !request.exists() {
                if let Some(s) = LocalState::load(&state_path(&db))? {
                    if s.last_snapshot_ms > before {
                        println!("snapshot of '{name}' taken by the running watch at seq {}", s.seq);
                        return Ok(0);
                    }
                }
            }
            if started.elapsed() > timeout {
                return Err(Error::Other(format!(
                    "the running watch of {} did not take the snapshot within {}; the request stays in {}",
                    db.display(),
                    humantime::format_duration(timeout),
                    request.display()
                )));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    let mut w = Watcher::start(&db, Arc::clone(&storage), WatchOptions::new(name.clone()))?;
    if w.stats.generations_started == 0 {
        let before = w.last_snapshot_ms();
        let started = Instant::now();
        // A commit between reading the WAL and reading the pages postpones the snapshot; ship and try again.
        while w.last_snapshot_ms() == before {
            if started.elapsed() > timeout {
                return Err(Error::Other(format!(
                    "{}: the database never paused long enough to snapshot",
                    db.display()
                )));
            }
            w.snapshot_now()?;
        }
    }
    w.shutdown()?;
    println!("snapshot of '{name}' stored at seq {} (generation {:016x})", w.seq(), w.generation());
    Ok(0)
}
