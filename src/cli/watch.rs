//! `walrust watch`: replicate databases continuously until SIGTERM/SIGINT.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::cli::exec;
use crate::cli::{parse_count, parse_duration, parse_size, set_log_format, usage, value_string, StorageArgs};
use crate::config;
use crate::error::{Error, Result};
use crate::keys;
use crate::log;
use crate::replicator::Replicator;
use crate::restore::{self, RestoreOptions, Target};
use crate::watch::{self, WatchOptions};

const USAGE: &str = "\
Usage: walrust watch DB... -b s3://BUCKET[/PREFIX] [options]
       walrust watch --config walrust.toml [options]

Ships every committed transaction of each database (WAL mode) to storage as chained changesets, takes
snapshots, and keeps the WAL bounded. SIGTERM or SIGINT ships what is committed and exits 0; a second signal
exits at once. Each database is stored under its name: the file stem (app.db -> app).

Options:
  -b, --bucket URL             s3://BUCKET[/PREFIX] or file:///ABS/DIR
      --config FILE            settings and [[databases]] from FILE (default: ./walrust.toml when no DB is
                               given); flags override the file
      --endpoint URL           S3 endpoint (also AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL)
      --name NAME              name in the bucket (one database only; default: the file stem)
      --interval D             at most one upload per D per database (default 1s)
      --check-interval D       how often the WAL is checked (default 100ms)
      --snapshot-interval D    snapshot when D has passed and something changed (default 1h)
      --wal-warn-size SIZE     warn (log, webhook wal_over_threshold) when a WAL grows over SIZE: uploads are
                               not keeping up (default 256MiB)
      --nice N                 run replication N nice levels below walrust's own priority, 0-19 (default 10):
                               a busy application keeps its CPU, walrust catches up after the burst
      --new-generation         start a new generation even if the bucket holds backups this database
                               has no record of writing (taking over a name)
      --restore-if-missing     restore a database that does not exist from its latest backup first, then
                               continue its chain (new machines, init containers)
      --metrics-addr ADDR      serve /metrics (Prometheus) and /health on ADDR, e.g. 127.0.0.1:9090 (default off)
      --webhook-url URL        POST events (database_stopped, fenced, corruption_detected, uploads_failing,
                               wal_over_threshold) as JSON, signed with HMAC-SHA256
                               of WALRUST_WEBHOOK_SECRET in X-Walrust-Signature (default off)
      --exec \"CMD ARGS\"        run the application as a child (split into words like a shell would, run
                               without one); SIGTERM/SIGINT reach it as SIGTERM; when it exits, walrust ships
                               what it committed and exits with the application's status
      --allow-unsafe-storage   run even if the storage ignores conditional writes (no fencing)
      --compact-interval D     run `walrust compact` (GFS retention) for each database every D (default off)
      --keep-hourly N, --keep-daily N, --keep-weekly N, --keep-monthly N
                               the retention policy for --compact-interval (default 24, 7, 12, 12)
      --log-format text|json   log line format (default text)
  -v, --verbose                debug logging

Examples:
  walrust watch app.db -b s3://backups/prod
  walrust watch /data/app.db -b file:///var/backups --interval 5s
  walrust watch --config /etc/walrust.toml
  walrust watch /data/app.db -b s3://backups/prod --restore-if-missing --exec \"/usr/local/bin/app --port 8080\"";

/// What `watch` runs, resolved from its flags and the config file (also what `explain` shows).
pub(crate) struct Resolved {
    pub storage: StorageArgs,
    pub config: config::Config,
    pub discovery: Discovery,
    pub config_file: Option<PathBuf>,
    /// Each `[[databases]]` path or glob (or command-line DB) and the files it matches now.
    pub matches: Vec<(String, Vec<PathBuf>)>,
    pub jobs: Vec<(PathBuf, WatchOptions)>,
    pub policy: crate::compact::Policy,
    pub compact_interval: Option<std::time::Duration>,
    pub restore_if_missing: bool,
    pub allow_unsafe_storage: bool,
    /// `--metrics-addr` or `[metrics] listen`.
    pub metrics_addr: Option<String>,
    /// `--webhook-url` or `[webhooks] url`.
    pub webhook_url: Option<String>,
    /// `--exec CMD`: the application to run as a child.
    pub exec: Option<String>,
    /// `--json` (explain only).
    pub json: bool,
}

pub fn run(parser: lexopt::Parser) -> Result<i32> {
    match resolve(parser, USAGE, false)? {
        Some(r) => watch(r),
        None => Ok(0),
    }
}

/// Parses watch's flags (`--help` prints `help` and returns `None`) and layers them over the config file.
pub(crate) fn resolve(mut parser: lexopt::Parser, help: &str, accept_json: bool) -> Result<Option<Resolved>> {
    let mut json = false;
    let mut storage = StorageArgs::default();
    let mut dbs: Vec<PathBuf> = Vec::new();
    let mut name: Option<String> = None;
    let mut config_path: Option<PathBuf> = None;
    // Flags, layered over the config file: `None` = not given.
    let mut cli_sync = config::Sync::default();
    let mut new_generation = false;
    let mut restore_if_missing = false;
    let mut allow_unsafe_storage = false;
    let mut metrics_addr: Option<String> = None;
    let mut webhook_url: Option<String> = None;
    let mut exec: Option<String> = None;
    let mut compact_interval: Option<std::time::Duration> = None;
    let mut keep = config::Retention::default();
    while let Some(arg) = parser.next().map_err(usage)? {
        match arg {
            lexopt::Arg::Short('b') | lexopt::Arg::Long("bucket") => storage.bucket = Some(value_string(&mut parser)?),
            lexopt::Arg::Long("endpoint") => storage.endpoint = Some(value_string(&mut parser)?),
            lexopt::Arg::Long("config") => config_path = Some(PathBuf::from(value_string(&mut parser)?)),
            lexopt::Arg::Long("name") => name = Some(value_string(&mut parser)?),
            lexopt::Arg::Long("interval") => {
                cli_sync.interval = Some(parse_duration("--interval", &value_string(&mut parser)?)?)
            }
            lexopt::Arg::Long("check-interval") => {
                cli_sync.check_interval = Some(parse_duration("--check-interval", &value_string(&mut parser)?)?)
            }
            lexopt::Arg::Long("snapshot-interval") => {
                cli_sync.snapshot_interval = Some(parse_duration("--snapshot-interval", &value_string(&mut parser)?)?)
            }
            lexopt::Arg::Long("wal-warn-size") => {
                let v = value_string(&mut parser)?;
                cli_sync.wal_warn_bytes =
                    Some(parse_size(&v).map_err(|e| Error::Usage(format!("--wal-warn-size: {e}")))?)
            }
            lexopt::Arg::Long("nice") => {
                let v = value_string(&mut parser)?;
                cli_sync.nice = match v.parse::<u8>() {
                    Ok(n) if n <= 19 => Some(n),
                    _ => return Err(Error::Usage(format!("--nice: '{v}' is not a whole number from 0 to 19"))),
                }
            }
            lexopt::Arg::Long("new-generation") => new_generation = true,
            lexopt::Arg::Long("restore-if-missing") => restore_if_missing = true,
            lexopt::Arg::Long("allow-unsafe-storage") => allow_unsafe_storage = true,
            lexopt::Arg::Long("metrics-addr") => metrics_addr = Some(value_string(&mut parser)?),
            lexopt::Arg::Long("webhook-url") => webhook_url = Some(value_string(&mut parser)?),
            lexopt::Arg::Long("exec") => exec = Some(value_string(&mut parser)?),
            lexopt::Arg::Long("compact-interval") => {
                compact_interval = Some(parse_duration("--compact-interval", &value_string(&mut parser)?)?)
            }
            lexopt::Arg::Long("keep-hourly") => {
                keep.hourly = Some(parse_count("--keep-hourly", &value_string(&mut parser)?)?)
            }
            lexopt::Arg::Long("keep-daily") => {
                keep.daily = Some(parse_count("--keep-daily", &value_string(&mut parser)?)?)
            }
            lexopt::Arg::Long("keep-weekly") => {
                keep.weekly = Some(parse_count("--keep-weekly", &value_string(&mut parser)?)?)
            }
            lexopt::Arg::Long("keep-monthly") => {
                keep.monthly = Some(parse_count("--keep-monthly", &value_string(&mut parser)?)?)
            }
            lexopt::Arg::Long("log-format") => set_log_format(&value_string(&mut parser)?)?,
            lexopt::Arg::Short('v') | lexopt::Arg::Long("verbose") => log::set_level(log::Level::Debug),
            lexopt::Arg::Short('h') | lexopt::Arg::Long("help") => {
                println!("{help}");
                return Ok(None);
            }
            lexopt::Arg::Long("json") if accept_json => json = true,
            lexopt::Arg::Value(v) => dbs.push(PathBuf::from(v)),
            other => return Err(usage(other.unexpected())),
        }
    }
    // The config file: --config, else ./walrust.toml when no database is named on the command line.
    let (config_file, cfg) = config::find(config_path, dbs.is_empty())?;
    storage.fill_from(&cfg);
    let compact_interval = compact_interval.or(cfg.retention.compact_interval);
    let policy = keep.policy_over(cfg.retention.policy_over(crate::compact::Policy::default()));

    if !dbs.is_empty() && name.is_some() && dbs.len() > 1 {
        return Err(Error::Usage("--name applies to a single database".into()));
    }
    let discovery = Discovery { cli_dbs: dbs, cli_name: name, cli_sync, new_generation };
    let (matches, jobs) = discovery.jobs(&cfg, true)?;
    if jobs.is_empty() {
        return Err(Error::Usage("missing DB (see walrust watch --help), or [[databases]] in walrust.toml".into()));
    }
    Ok(Some(Resolved {
        storage,
        config: cfg.clone(),
        discovery,
        config_file,
        matches,
        jobs,
        policy,
        compact_interval,
        restore_if_missing,
        allow_unsafe_storage,
        metrics_addr: metrics_addr.or(cfg.metrics_listen.clone()),
        webhook_url: webhook_url.or(cfg.webhook_url.clone()),
        exec,
        json,
    }))
}

/// Each `[[databases]]` path or glob (or command-line DB) with the files it matches now.
pub(crate) type Matches = Vec<(String, Vec<PathBuf>)>;
/// The databases to watch, with their settings.
pub(crate) type Jobs = Vec<(PathBuf, WatchOptions)>;

/// Turns the command line and the config file into the databases to watch; run again to pick up new files that
/// match a glob, and after a SIGHUP with the re-read file.
pub(crate) struct Discovery {
    cli_dbs: Vec<PathBuf>,
    cli_name: Option<String>,
    cli_sync: config::Sync,
    new_generation: bool,
}

impl Discovery {
    /// Databases named on the command line are fixed; `[[databases]]` entries are re-expanded each time.
    pub fn is_dynamic(&self) -> bool {
        self.cli_dbs.is_empty()
    }

    /// Each path or glob with what it matches now, and the jobs. `warn_empty` logs globs that match nothing.
    /// The upload workers' levels: `--nice` over `[sync] nice` (they serve every database, so per-database
    /// settings do not apply to them).
    fn set_pool_nice(&self, cfg: &config::Config) {
        let nice = self.cli_sync.over(&cfg.sync).nice;
        crate::priority::set_pool_nice(nice.unwrap_or(crate::priority::DEFAULT_NICE));
    }

    pub fn jobs(&self, cfg: &config::Config, warn_empty: bool) -> Result<(Matches, Jobs)> {
        // (path, name, per-database sync settings from the file)
        let mut targets: Vec<(PathBuf, Option<String>, config::Sync)> = Vec::new();
        let mut matches = Vec::new();
        if self.cli_dbs.is_empty() {
            for d in &cfg.databases {
                let files = config::expand(d)?;
                if files.is_empty() && warn_empty {
                    log::warn(&format!("{}: matches no database yet", d.path));
                }
                matches.push((d.path.clone(), files.clone()));
                targets.extend(files.into_iter().map(|f| (f, d.name.clone(), d.sync.clone())));
            }
        } else {
            matches.extend(self.cli_dbs.iter().map(|d| (d.display().to_string(), vec![d.clone()])));
            targets.extend(self.cli_dbs.iter().map(|d| (d.clone(), self.cli_name.clone(), config::Sync::default())));
        }
        let mut jobs = Vec::new();
        let mut names = std::collections::HashSet::new();
        for (db, db_name, db_sync) in &targets {
            let n = match db_name {
                Some(n) => n.clone(),
                None => keys::name_from_path(db)
                    .ok_or_else(|| Error::Usage(format!("{}: cannot derive a name; use --name", db.display())))?,
            };
            if !keys::valid_name(&n) {
                return Err(Error::Usage(format!("invalid name '{n}' (letters, digits, '.', '_', '-')")));
            }
            if !names.insert(n.clone()) {
                return Err(Error::Usage(format!("two databases would be stored under the name '{n}'")));
            }
            // Flags override the database's own settings, which override [sync], which override the defaults.
            let sync = self.cli_sync.over(&db_sync.over(&cfg.sync));
            let mut o = WatchOptions::new(n);
            o.sync_interval = sync.interval.unwrap_or(o.sync_interval);
            o.check_interval = sync.check_interval.unwrap_or(o.check_interval);
            o.snapshot_interval = sync.snapshot_interval.unwrap_or(o.snapshot_interval);
            o.wal_warn_bytes = sync.wal_warn_bytes.unwrap_or(o.wal_warn_bytes);
            o.nice = sync.nice.unwrap_or(o.nice);
            o.new_generation = self.new_generation;
            jobs.push((db.clone(), o));
        }
        Ok((matches, jobs))
    }
}

/// How often the directories of `[[databases]]` entries are checked for new or removed files (a stat each); they
/// are listed again (globs expanded) only when one changed, and at least every RESCAN_INTERVAL.
const DISCOVERY_INTERVAL: std::time::Duration = std::time::Duration::from_secs(2);
const RESCAN_INTERVAL: std::time::Duration = std::time::Duration::from_secs(30);

/// The modification times of the directories holding the config's databases (globs are in file names only):
/// a file created, deleted or renamed there changes its directory's.
fn dir_stamps(cfg: &config::Config) -> Vec<Option<(i64, i64)>> {
    use std::os::unix::fs::MetadataExt;
    cfg.databases
        .iter()
        .map(|d| {
            let dir = match Path::new(&d.path).parent() {
                Some(p) if !p.as_os_str().is_empty() => p,
                _ => Path::new("."),
            };
            std::fs::metadata(dir).ok().map(|m| (m.mtime(), m.mtime_nsec()))
        })
        .collect()
}

/// A database that could not start (not WAL yet, fenced, storage refusing) is tried again after this long.
const RETRY_FAILED: std::time::Duration = std::time::Duration::from_secs(30);

fn watch(r: Resolved) -> Result<i32> {
    let Resolved {
        storage,
        config,
        discovery,
        config_file,
        jobs,
        policy,
        compact_interval,
        restore_if_missing,
        allow_unsafe_storage,
        metrics_addr,
        webhook_url,
        exec,
        ..
    } = r;
    let exec = exec.map(|cmd| exec::parse(&cmd)).transpose()?;
    // The process's priority, read here before any worker thread lowers its own; the upload workers run at the
    // flag's or [sync]'s levels (they serve every database).
    crate::priority::base();
    discovery.set_pool_nice(&config);
    let webhooks = match webhook_url {
        Some(url) => {
            let secret = std::env::var("WALRUST_WEBHOOK_SECRET").ok().filter(|s| !s.is_empty());
            if secret.is_none() {
                log::warn("webhooks are sent unsigned: set WALRUST_WEBHOOK_SECRET to sign them");
            }
            let cfg = crate::webhook::WebhookConfig { url, secret };
            Some(crate::webhook::Webhooks::start(cfg).map_err(|e| Error::io("starting the webhook thread", e))?)
        }
        None => None,
    };
    let storage = storage.open_with(true)?;
    crate::replicator::check_storage(storage.as_ref(), allow_unsafe_storage)?;
    if restore_if_missing {
        for (db, opts) in &jobs {
            if db.exists() {
                continue;
            }
            let ropts = RestoreOptions { output: db.clone(), force: false, target: Target::Latest, write_state: true };
            let report = restore::restore(storage.as_ref(), &opts.name, &ropts).map_err(|e| match e {
                Error::NotFound(m) => Error::NotFound(format!(
                    "{} does not exist and there is nothing to restore it from: {m}",
                    db.display()
                )),
                e => e.context(db.display()),
            })?;
            log::info(&format!(
                "{}: restored '{}' at seq {} before watching",
                db.display(),
                opts.name,
                report.plan.seq
            ));
        }
    }
    let stop = watch::install_signal_handlers()?;
    let mut replicator = Replicator::new(Arc::clone(&storage));
    let registry = match &metrics_addr {
        Some(_) => {
            // Unhealthy when a database has not been caught up for 10 sync intervals (at least a minute).
            let slowest = jobs.iter().map(|(_, o)| o.sync_interval).max().unwrap_or_default();
            let registry = crate::metrics::Registry::new(
                Arc::clone(&storage),
                (slowest * 10).max(std::time::Duration::from_secs(60)),
            );
            replicator = replicator.with_metrics(Arc::clone(&registry));
            Some(registry)
        }
        None => None,
    };
    if let Some(h) = &webhooks {
        replicator = replicator.with_webhooks(h.clone());
    }
    // Every database is checked locally first: one that is not a WAL database (or is watched by another walrust)
    // is an error before anything runs (those already added are drained when `replicator` is dropped). The
    // rest of each start (remote head, backlog, first snapshot) runs on the databases' own threads, side by
    // side; a database that cannot start there ends like one that stopped (see the loop below).
    // Databases that failed to start or stopped with an error: tried again after RETRY_FAILED.
    let mut given_up: std::collections::BTreeMap<PathBuf, std::time::Instant> = std::collections::BTreeMap::new();
    let started = jobs.len();
    for (db, opts) in jobs {
        match replicator.add_background(&db, opts) {
            Ok(()) => {}
            Err(e) if e.is_transient() => {
                log::warn(&format!("{e} (trying again in {}s)", RETRY_FAILED.as_secs()));
                given_up.insert(db, std::time::Instant::now());
            }
            Err(e) => return Err(e),
        }
    }
    log::info(&format!("watching {started} database(s) into {}", storage.describe()));
    if let (Some(addr), Some(registry)) = (&metrics_addr, &registry) {
        let bound = crate::metrics::serve(addr, Arc::clone(registry))?;
        log::info(&format!("serving /metrics and /health on http://{bound}"));
    }
    let replicator = Arc::new(replicator);
    let compactor = compact_interval.map(|every| start_compactor(every, &stop, &storage, &replicator, policy));
    let mut child = match exec {
        Some(argv) => Some(exec::spawn(&argv)?),
        None => None,
    };

    // The supervisor: this thread watches the databases' threads, picks up new files matching a glob, reloads
    // the config on SIGHUP (restarting the databases whose settings changed), drops databases that were deleted
    // or removed from the config, and with --exec follows the application it started.
    let reload = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGHUP, Arc::clone(&reload))
        .map_err(|e| Error::io("installing the SIGHUP handler", e))?;
    let mut cfg = config;
    let mut first_err: Option<Error> = None;
    let mut last_discovery = std::time::Instant::now();
    let mut last_rescan = std::time::Instant::now();
    let mut stamps = dir_stamps(&cfg);
    let mut child_status: Option<i32> = None;
    loop {
        if let Some(c) = &mut child {
            if let Some(code) = c.exited()? {
                log::info(&format!("the application exited with status {code}; shipping what it committed"));
                child_status = Some(code);
                break;
            }
            if stop.load(Ordering::Relaxed) {
                // First SIGTERM/SIGINT: passed on once; walrust drains when the application has exited.
                c.terminate();
            }
        } else if stop.load(Ordering::Relaxed) {
            break;
        }
        watch::sleep_until(&stop, std::time::Duration::from_millis(100));
        if child.is_some() && stop.load(Ordering::Relaxed) {
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        // Databases whose thread ended on their own: a deleted database is dropped; anything else is a failure.
        for ended in replicator.reap() {
            match ended.result {
                Ok(()) => {}
                Err(_) if !ended.path.exists() => {
                    log::info(&format!("{}: the database was deleted; no longer watching it", ended.path.display()));
                    if let Some(reg) = &registry {
                        reg.remove(&ended.name);
                    }
                }
                Err(e) => {
                    log::error(&format!("{e}"));
                    if let Some(reg) = &registry {
                        reg.update(&ended.name, |m| m.failed = Some(e.to_string()));
                    }
                    if let Some(h) = &webhooks {
                        let event = match e {
                            Error::Fenced(_) => "fenced",
                            Error::Corrupt(_) => "corruption_detected",
                            _ => "database_stopped",
                        };
                        h.notify(event, &ended.name, &e.to_string());
                    }
                    // A database from the config is looked at again after a while (it may be fixed or
                    // replaced); one named on the command line has stopped for good.
                    if discovery.is_dynamic() {
                        given_up.insert(ended.path, std::time::Instant::now());
                    }
                    first_err.get_or_insert(e);
                }
            }
        }
        // Databases named on the command line are fixed: only those that could not start are tried again, and
        // when none is left (all stopped or deleted) and no application runs under --exec, watch exits.
        let fixed = !discovery.is_dynamic();
        if fixed && child.is_none() && given_up.is_empty() && replicator.databases().is_empty() {
            log::info("no database left to watch; exiting");
            break;
        }
        let reloading = reload.swap(false, Ordering::Relaxed);
        if !reloading && ((fixed && given_up.is_empty()) || last_discovery.elapsed() < DISCOVERY_INTERVAL) {
            continue;
        }
        last_discovery = std::time::Instant::now();
        // Nothing was added to or removed from the databases' directories: no need to list them (a thousand
        // databases listed every 2 s was most of an idle watch's CPU).
        let now_stamps = if fixed { Vec::new() } else { dir_stamps(&cfg) };
        if !fixed && !reloading && now_stamps == stamps && last_rescan.elapsed() < RESCAN_INTERVAL {
            continue;
        }
        stamps = now_stamps;
        last_rescan = std::time::Instant::now();
        if reloading {
            match config_file.as_deref().map(config::load) {
                Some(Ok(c)) => {
                    if c.bucket != cfg.bucket || c.endpoint != cfg.endpoint {
                        log::warn("the storage settings changed in the config file; they apply after a restart");
                    }
                    cfg = c;
                    given_up.clear();
                    discovery.set_pool_nice(&cfg);
                    log::info("configuration reloaded (SIGHUP)");
                }
                Some(Err(e)) => log::warn(&format!("configuration not reloaded: {e}")),
                None => {}
            }
        }
        let jobs = match discovery.jobs(&cfg, false) {
            Ok((_, jobs)) => jobs,
            Err(e) => {
                log::warn(&format!("cannot list the configured databases: {e}"));
                continue;
            }
        };
        // Removed from the config: drain and stop.
        let wanted: std::collections::BTreeSet<&PathBuf> = jobs.iter().map(|(p, _)| p).collect();
        for (path, name) in replicator.databases() {
            if wanted.contains(&path) {
                continue;
            }
            if let Some(reg) = &registry {
                reg.remove(&name);
            }
            match replicator.remove(&path) {
                Some(Ok(())) => log::info(&format!("{}: no longer configured; stopped after shipping", path.display())),
                Some(Err(e)) => log::warn(&format!("{e}")),
                None => {}
            }
        }
        // Settings changed by a reload: the database's loop drains and starts again with them (it resumes its
        // chain: a clean stop leaves the WAL position in the state file).
        let mut restarted = std::collections::HashSet::new();
        for (path, opts) in jobs.iter().filter(|_| reloading) {
            let Some(running) = replicator.options(path) else { continue };
            let mut wanted = opts.clone();
            wanted.new_generation = running.new_generation; // a start-up flag, not a setting of the loop
            if running == wanted {
                continue;
            }
            // A loop that ended in an error while draining starts again all the same (and fails again visibly).
            if let Some(ended) = replicator.remove(path) {
                if let Err(e) = ended {
                    log::warn(&format!("{e}"));
                }
                log::info(&format!("{}: settings changed; replication restarts with them", path.display()));
                restarted.insert(path.clone());
            }
        }
        // New files matching a glob (or entries added to the config).
        let names: std::collections::HashSet<String> = replicator.databases().into_iter().map(|(_, n)| n).collect();
        for (path, mut opts) in jobs {
            if replicator.contains(&path) || given_up.get(&path).is_some_and(|t| t.elapsed() < RETRY_FAILED) {
                continue;
            }
            if restarted.remove(&path) {
                opts.new_generation = false; // it was running: its chain is the one to continue
            } else if fixed && given_up.remove(&path).is_none() {
                continue; // a fixed database that ended on its own (deleted) is not looked for again
            }
            if names.contains(&opts.name) {
                continue; // the name is taken by a database being replaced; retry on the next round
            }
            let name = opts.name.clone();
            match replicator.add_background(&path, opts) {
                Ok(()) => log::info(&format!("{}: new database, now watching it as '{name}'", path.display())),
                Err(e) => {
                    log::warn(&format!(
                        "{}: cannot watch it yet (trying again in {}s): {e}",
                        path.display(),
                        RETRY_FAILED.as_secs()
                    ));
                    given_up.insert(path, std::time::Instant::now());
                }
            }
        }
    }
    // Drain: every database ships what is committed.
    stop.store(true, Ordering::Relaxed);
    if let Some(Some(handle)) = compactor {
        let _ = handle.join();
    }
    let replicator = Arc::into_inner(replicator).ok_or_else(|| Error::Other("replicator still shared".into()))?;
    for ended in replicator.shutdown_each() {
        if let Err(e) = ended.result {
            log::error(&format!("{e}"));
            if let Some(reg) = &registry {
                reg.update(&ended.name, |m| m.failed = Some(e.to_string()));
            }
            first_err.get_or_insert(e);
        }
    }
    // The events explaining an exit (a database stopped, fenced, corrupt) go out before the process ends.
    if let Some(h) = &webhooks {
        h.wait_sent(std::time::Duration::from_secs(10));
    }
    match (first_err, child_status) {
        (Some(e), _) => Err(e),
        (None, Some(code)) => {
            log::info("all committed transactions shipped; exiting with the application's status");
            Ok(code)
        }
        (None, None) => {
            log::info("all committed transactions shipped; exiting");
            Ok(0)
        }
    }
}

/// Runs `compact` for every replicated database every `every`, off the replication path: a slow or failing
/// compaction never delays shipping. Ends when `stop` is set.
fn start_compactor(
    every: std::time::Duration,
    stop: &Arc<AtomicBool>,
    storage: &crate::storage::StorageRef,
    replicator: &Arc<Replicator>,
    policy: crate::compact::Policy,
) -> Option<std::thread::JoinHandle<()>> {
    let (stop, storage, replicator) = (Arc::clone(stop), Arc::clone(storage), Arc::clone(replicator));
    let spawned = std::thread::Builder::new().name("walrust-compact".into()).stack_size(256 * 1024).spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            watch::sleep_until(&stop, every);
            if stop.load(Ordering::Relaxed) {
                break;
            }
            for (_, name) in replicator.databases() {
                match crate::compact::compact(storage.as_ref(), &name, watch::now_ms(), &policy, false) {
                    Ok(plan) if !plan.delete.is_empty() => log::info(&format!(
                        "{name}: compacted: {} objects deleted, {} kept",
                        plan.delete.len(),
                        plan.kept_objects
                    )),
                    Ok(_) => {}
                    Err(e) => log::warn(&format!("{name}: compaction failed (will retry): {e}")),
                }
            }
        }
    });
    match spawned {
        Ok(h) => Some(h),
        Err(e) => {
            log::warn(&format!("cannot start the compaction thread: {e}"));
            None
        }
    }
}
