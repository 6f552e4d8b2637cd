//! `walrust explain`: what `watch` would do with the same flags and config file (resolved settings, the
//! databases each path or glob matches, where credentials come from) and what it would cost in S3 requests.
//! It sends no request and never prints a secret.

use std::time::Duration;

use crate::cli::watch::{resolve, Resolved};
use crate::error::{Error, Result};
use crate::log::json_string;
use crate::storage::{self, credentials, Location};

const USAGE: &str = "\
Usage: walrust explain [DB...] [-b URL] [--config FILE] [watch options] [--json]

Prints what `walrust watch` would do with the same arguments: the storage, where credentials come from (never
the secrets), the databases each [[databases]] path or glob matches now, each database's effective settings,
and an estimate of its monthly S3 requests and their cost (S3 Standard prices: $0.005 per 1000 PUT/LIST). No
request is sent.

Examples:
  walrust explain --config /etc/walrust.toml
  walrust explain app.db -b s3://backups/prod --interval 5s --json";

const MONTH_SECS: f64 = 30.0 * 86_400.0;
const PUT_LIST_USD_PER_1000: f64 = 0.005;

/// Requests one database costs per month.
struct Estimate {
    /// Uploads when a commit happens at least once per interval (the most walrust ever sends).
    busy_puts: f64,
    /// Interval snapshots when something changed (one PUT each below 8 MiB; more parts above).
    snapshot_puts: f64,
    /// LISTs of the background compaction.
    compact_lists: f64,
}

impl Estimate {
    fn of(interval: Duration, snapshot_interval: Duration, compact_interval: Option<Duration>) -> Estimate {
        let per_month = |d: Duration| MONTH_SECS / d.as_secs_f64().max(0.001);
        Estimate {
            busy_puts: per_month(interval),
            snapshot_puts: per_month(snapshot_interval),
            // A compaction lists the generations and each generation's objects: about two LISTs.
            compact_lists: compact_interval.map(|d| 2.0 * per_month(d)).unwrap_or(0.0),
        }
    }
    fn busy_usd(&self) -> f64 {
        (self.busy_puts + self.snapshot_puts + self.compact_lists) * PUT_LIST_USD_PER_1000 / 1000.0
    }
}

pub fn run(parser: lexopt::Parser) -> Result<i32> {
    let Some(r) = resolve(parser, USAGE, true)? else { return Ok(0) };
    let Resolved { storage, config_file, matches, jobs, policy, compact_interval, json, .. } = r;
    let url = storage.bucket.clone().ok_or_else(|| Error::Usage("missing -b s3://BUCKET or file:///DIR".into()))?;
    let location = storage::parse_location(&url)?;
    let (endpoint, region, creds) = match &location {
        Location::File { .. } => ("(local directory)".to_string(), "-".to_string(), "none needed".to_string()),
        Location::S3 { .. } => {
            let s = credentials::resolve()?;
            let endpoint = storage::s3::endpoint_or_env(storage.endpoint.clone())
                .unwrap_or_else(|| format!("https://s3.{}.amazonaws.com", s.region));
            let creds = match (&s.credentials, &s.provider) {
                (Some(c), _) => format!("{} (access key {})", c.source, c.access_key_id),
                (None, Some(credentials::Provider::WebIdentity { role_arn, .. })) => {
                    format!("web identity, role {role_arn}")
                }
                (None, Some(credentials::Provider::Container { .. })) => "ECS/EKS container endpoint".into(),
                (None, Some(credentials::Provider::Imds { endpoint })) => {
                    format!("EC2 instance metadata ({endpoint}), if it answers")
                }
                (None, None) => "none: requests go unsigned (AWS_EC2_METADATA_DISABLED)".into(),
            };
            (endpoint, s.region, creds)
        }
    };
    let config = config_file.map(|p| p.display().to_string()).unwrap_or_else(|| "(none)".into());
    let compact = compact_interval.map(|d| humantime::format_duration(d).to_string());
    let estimates: Vec<Estimate> =
        jobs.iter().map(|(_, o)| Estimate::of(o.sync_interval, o.snapshot_interval, compact_interval)).collect();
    let total_usd: f64 = estimates.iter().map(Estimate::busy_usd).sum();

    if json {
        let dbs: Vec<String> = jobs
            .iter()
            .zip(&estimates)
            .map(|((path, o), e)| {
                format!(
                    "{{\"path\":{},\"name\":{},\"interval_ms\":{},\"check_interval_ms\":{},\"snapshot_interval_ms\":{},\"wal_warn_bytes\":{},\"nice\":{},\"busy_puts_per_month\":{:.0},\"snapshot_puts_per_month\":{:.0},\"compact_lists_per_month\":{:.0},\"idle_requests_per_month\":0,\"busy_usd_per_month\":{:.2}}}",
                    json_string(&path.display().to_string()),
                    json_string(&o.name),
                    o.sync_interval.as_millis(),
                    o.check_interval.as_millis(),
                    o.snapshot_interval.as_millis(),
                    o.wal_warn_bytes,
                    o.nice,
                    e.busy_puts,
                    e.snapshot_puts,
                    e.compact_lists,
                    e.busy_usd()
                )
            })
            .collect();
        let globs: Vec<String> = matches
            .iter()
            .map(|(p, files)| {
                let f: Vec<String> = files.iter().map(|f| json_string(&f.display().to_string())).collect();
                format!("{{\"path\":{},\"matches\":[{}]}}", json_string(p), f.join(","))
            })
            .collect();
        println!(
            "{{\"config\":{},\"storage\":{},\"endpoint\":{},\"region\":{},\"credentials\":{},\"retention\":{{\"hourly\":{},\"daily\":{},\"weekly\":{},\"monthly\":{},\"compact_interval\":{}}},\"paths\":[{}],\"databases\":[{}],\"busy_usd_per_month\":{:.2}}}",
            json_string(&config),
            json_string(&location.to_string()),
            json_string(&endpoint),
            json_string(&region),
            json_string(&creds),
            policy.hourly,
            policy.daily,
            policy.weekly,
            policy.monthly,
            compact.as_deref().map(json_string).unwrap_or_else(|| "null".into()),
            globs.join(","),
            dbs.join(","),
            total_usd
        );
        return Ok(0);
    }

    println!("config:       {config}");
    println!("storage:      {location}");
    println!("endpoint:     {endpoint}");
    println!("region:       {region}");
    println!("credentials:  {creds}");
    println!(
        "retention:    hourly {}, daily {}, weekly {}, monthly {}; compaction {}",
        policy.hourly,
        policy.daily,
        policy.weekly,
        policy.monthly,
        compact.as_deref().map(|c| format!("every {c}")).unwrap_or_else(|| "off (run walrust compact)".into())
    );
    println!();
    for (p, files) in &matches {
        println!("{p}: {} database(s)", files.len());
    }
    println!();
    println!(
        "{:<24} {:>9} {:>9} {:>9} {:>10} {:>4} {:>14} {:>12} {:>10}",
        "NAME", "INTERVAL", "CHECK", "SNAPSHOT", "WAL WARN", "NICE", "BUSY PUT/MONTH", "SNAP/MONTH", "USD/MONTH"
    );
    for ((_, o), e) in jobs.iter().zip(&estimates) {
        println!(
            "{:<24} {:>9} {:>9} {:>9} {:>10} {:>4} {:>14.0} {:>12.0} {:>10.2}",
            o.name,
            humantime::format_duration(o.sync_interval).to_string(),
            humantime::format_duration(o.check_interval).to_string(),
            humantime::format_duration(o.snapshot_interval).to_string(),
            crate::cli::progress::bytes(o.wal_warn_bytes),
            o.nice,
            e.busy_puts,
            e.snapshot_puts,
            e.busy_usd()
        );
    }
    println!();
    println!(
        "Busy = a commit at least once per interval (the most walrust sends: one PUT per interval). An idle database \
         costs 0 requests. Total if every database is busy: ${total_usd:.2}/month in requests (storage not included)."
    );
    Ok(0)
}
