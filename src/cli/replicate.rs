//! `walrust replicate`: keep a local read replica current from storage until SIGTERM/SIGINT.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::cli::{parse_duration, set_log_format, string, usage, value_string, StorageArgs};
use crate::config;
use crate::error::{Error, Result};
use crate::log;
use crate::replicate::{Replica, ReplicaOptions, DEFAULT_INTERVAL};
use crate::storage::StorageRef;
use crate::watch;

const USAGE: &str = "\
Usage: walrust replicate NAME -b s3://BUCKET[/PREFIX] --local REPLICA.db [options]
       walrust replicate s3://BUCKET[/PREFIX]/NAME --local REPLICA.db [options]
       walrust replicate --config walrust.toml

Keeps REPLICA.db a current, read-only copy of database NAME's backups. The first run restores the newest state
(verified, atomically; it waits while there is no backup yet or the storage is unreachable); then every --interval one LIST finds new changesets, and each is verified and applied
as one SQLite transaction, so applications may keep REPLICA.db open and see whole transactions. A new
generation or a broken chain rebuilds the replica in place (readers stay valid); a corrupt object stops it
with exit 4, leaving REPLICA.db as it was. The position is kept in REPLICA.db-walrust-replica, so a restart
resumes without downloading the snapshot again. Do not write to REPLICA.db. SIGTERM or SIGINT exits 0.

With --config, every [[replicas]] entry (name, local, interval) runs in this process, one thread each.

Options:
  -b, --bucket URL           s3://BUCKET[/PREFIX] or file:///ABS/DIR
      --endpoint URL         S3 endpoint (also AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL)
      --local REPLICA.db     the replica file (required without --config)
      --interval D           time between polls (default 5s); each idle poll is one LIST request
      --config FILE          run the [[replicas]] of FILE (and take [s3] from it)
      --log-format text|json log line format (default text)
  -v, --verbose              debug logging

Examples:
  walrust replicate app -b s3://backups/prod --local /srv/app-replica.db --interval 5s
  walrust replicate s3://backups/prod/app --local replica.db
  walrust replicate --config /etc/walrust.toml";

pub fn run(mut parser: lexopt::Parser) -> Result<i32> {
    let mut storage = StorageArgs::default();
    let mut target: Option<String> = None;
    let mut local: Option<PathBuf> = None;
    let mut interval: Option<Duration> = None;
    let mut config_path: Option<PathBuf> = None;
    while let Some(arg) = parser.next().map_err(usage)? {
        match arg {
            lexopt::Arg::Short('b') | lexopt::Arg::Long("bucket") => storage.bucket = Some(value_string(&mut parser)?),
            lexopt::Arg::Long("endpoint") => storage.endpoint = Some(value_string(&mut parser)?),
            lexopt::Arg::Long("local") => local = Some(PathBuf::from(parser.value().map_err(usage)?)),
            lexopt::Arg::Long("interval") => {
                interval = Some(parse_duration("--interval", &value_string(&mut parser)?)?);
            }
            lexopt::Arg::Long("config") => config_path = Some(PathBuf::from(value_string(&mut parser)?)),
            lexopt::Arg::Long("log-format") => set_log_format(&value_string(&mut parser)?)?,
            lexopt::Arg::Short('v') | lexopt::Arg::Long("verbose") => log::set_level(log::Level::Debug),
            lexopt::Arg::Short('h') | lexopt::Arg::Long("help") => {
                println!("{USAGE}");
                return Ok(0);
            }
            lexopt::Arg::Value(v) if target.is_none() => target = Some(string(v)?),
            other => return Err(usage(other.unexpected())),
        }
    }
    if let Some(i) = interval {
        if i.is_zero() {
            return Err(Error::Usage("--interval must be more than 0".into()));
        }
    }
    let jobs = match target {
        Some(t) => {
            let name = if storage.bucket.is_none() && t.contains("://") {
                // s3://BUCKET[/PREFIX]/NAME: the last segment is the name.
                let trimmed = t.trim_end_matches('/');
                let (base, name) = trimmed
                    .rsplit_once('/')
                    .filter(|(b, n)| !n.is_empty() && b.split_once("://").is_some_and(|(_, root)| !root.is_empty()))
                    .ok_or_else(|| {
                        Error::Usage(format!("'{t}' does not end with a database name (s3://BUCKET/NAME)"))
                    })?;
                storage.bucket = Some(format!("{base}/"));
                name.to_string()
            } else {
                t
            };
            if let Some(p) = &config_path {
                storage.fill_from(&config::load(p)?);
            }
            let local = local.ok_or_else(|| Error::Usage("missing --local REPLICA.db".into()))?;
            vec![ReplicaOptions { name, local, interval: interval.unwrap_or(DEFAULT_INTERVAL) }]
        }
        None => {
            let (path, cfg) = config::find(config_path, true)?;
            let path = path.ok_or_else(|| {
                Error::Usage(
                    "missing NAME and --local (or --config FILE with [[replicas]]); see walrust replicate --help"
                        .into(),
                )
            })?;
            if local.is_some() {
                return Err(Error::Usage("--local needs a NAME".into()));
            }
            storage.fill_from(&cfg);
            if cfg.replicas.is_empty() {
                return Err(Error::Usage(format!("{} has no [[replicas]]", path.display())));
            }
            cfg.replicas
                .iter()
                .map(|r| ReplicaOptions {
                    name: r.name.clone(),
                    local: PathBuf::from(&r.local),
                    interval: interval.or(r.interval).unwrap_or(DEFAULT_INTERVAL),
                })
                .collect()
        }
    };
    let storage = storage.open()?;
    let stop = watch::install_signal_handlers()?;
    run_all(storage, jobs, stop)
}

/// Runs each replica on its own thread until `stop`; the exit code is the worst failure's (0 when all stopped
/// cleanly). A replica that fails stops alone; the others go on.
fn run_all(storage: StorageRef, jobs: Vec<ReplicaOptions>, stop: Arc<AtomicBool>) -> Result<i32> {
    if jobs.len() == 1 {
        let opts = jobs.into_iter().next().ok_or_else(|| Error::Other("no replica".into()))?;
        return run_one(storage, opts, &stop).map(|()| 0);
    }
    let results: Vec<(String, Result<()>)> = std::thread::scope(|s| {
        let handles: Vec<_> = jobs
            .into_iter()
            .map(|opts| {
                let name = opts.name.clone();
                let storage = storage.clone();
                let stop = &stop;
                let h = std::thread::Builder::new()
                    .name(format!("replica-{name}"))
                    .spawn_scoped(s, move || run_one(storage, opts, stop));
                (name, h)
            })
            .collect();
        handles
            .into_iter()
            .map(|(name, h)| {
                let r = match h {
                    Ok(h) => h.join().unwrap_or_else(|_| Err(Error::Other("replica thread panicked".into()))),
                    Err(e) => Err(Error::io("starting a replica thread", e)),
                };
                (name, r)
            })
            .collect()
    });
    let mut code = 0;
    for (name, r) in results {
        if let Err(e) = r {
            log::error(&format!("{name}: {e}"));
            code = code.max(e.exit_code());
        }
    }
    Ok(code)
}

fn run_one(storage: StorageRef, opts: ReplicaOptions, stop: &AtomicBool) -> Result<()> {
    let name = opts.name.clone();
    // Nothing to follow yet (the primary has not shipped its first snapshot) or storage unreachable: wait.
    let mut waiting = false;
    let mut replica = loop {
        match Replica::open(storage.clone(), opts.clone()) {
            Ok(r) => break r,
            Err(e @ (Error::NotFound(_) | Error::Storage { .. })) => {
                if !waiting {
                    log::warn(&format!("{name}: {e}; trying again every {:?}", opts.interval));
                    waiting = true;
                }
                watch::sleep_until(stop, opts.interval);
                if stop.load(Ordering::Relaxed) {
                    return Ok(());
                }
            }
            Err(e) => return Err(e.context(&name)),
        }
    };
    let r = replica.run(stop).map_err(|e| e.context(&name));
    if r.is_ok() && stop.load(Ordering::Relaxed) {
        log::info(&format!("{name}: stopped at seq {}", replica.position().seq));
    }
    r
}
