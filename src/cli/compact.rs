//! `walrust compact`: thin a database's backups to a GFS retention policy (see `compact.rs` for the semantics).

use crate::cli::{parse_count, string, usage, value_string, StorageArgs};
use crate::compact::{self, Policy};
use crate::error::{Error, Result};
use crate::log::json_string;
use crate::restore::fmt_ms;

const USAGE: &str = "\
Usage: walrust compact NAME -b s3://BUCKET[/PREFIX] [--hourly N] [--daily N] [--weekly N] [--monthly N]
                       [--config FILE] [--dry-run] [--json]

Deletes the backups of NAME that no retained restore point needs. Kept: every point of the last --hourly
hours (exact point-in-time), then the newest point of each of the last --daily UTC days, --weekly ISO
weeks and --monthly calendar months before that, and always the newest point. The plan uses LISTs only;
the decision (kept points, keys to delete) is written to NAME/compact-<time>.json before the first
delete, and deletions go in an order that keeps every retained point restorable if interrupted.

Options:
  -b, --bucket URL     s3://BUCKET[/PREFIX] or file:///ABS/DIR
      --endpoint URL   S3 endpoint
      --hourly N       hours of continuous point-in-time to keep (default 24)
      --daily N        daily points to keep (default 7)
      --weekly N       weekly points to keep (default 12)
      --monthly N      monthly points to keep (default 12)
      --config FILE    [s3] and [retention] from FILE (default ./walrust.toml when -b is not given)
      --dry-run        show what would be deleted and the kept points; delete nothing
      --json           one JSON object on stdout

Examples:
  walrust compact app -b s3://backups/prod --daily 14
  walrust compact app -b file:///var/backups --dry-run";

pub fn run(mut parser: lexopt::Parser) -> Result<i32> {
    let mut storage = StorageArgs::default();
    let mut name: Option<String> = None;
    let mut keep = crate::config::Retention::default();
    let mut config_path: Option<std::path::PathBuf> = None;
    let mut dry_run = false;
    let mut json = false;
    let mut now: Option<u64> = None;
    while let Some(arg) = parser.next().map_err(usage)? {
        match arg {
            lexopt::Arg::Short('b') | lexopt::Arg::Long("bucket") => storage.bucket = Some(value_string(&mut parser)?),
            lexopt::Arg::Long("endpoint") => storage.endpoint = Some(value_string(&mut parser)?),
            lexopt::Arg::Long("hourly") => keep.hourly = Some(parse_count("--hourly", &value_string(&mut parser)?)?),
            lexopt::Arg::Long("daily") => keep.daily = Some(parse_count("--daily", &value_string(&mut parser)?)?),
            lexopt::Arg::Long("weekly") => keep.weekly = Some(parse_count("--weekly", &value_string(&mut parser)?)?),
            lexopt::Arg::Long("monthly") => keep.monthly = Some(parse_count("--monthly", &value_string(&mut parser)?)?),
            lexopt::Arg::Long("config") => config_path = Some(value_string(&mut parser)?.into()),
            lexopt::Arg::Long("dry-run") => dry_run = true,
            lexopt::Arg::Long("json") => json = true,
            // Hidden (tests, drills): evaluate the policy as if it were this instant.
            lexopt::Arg::Long("now") => {
                let v = value_string(&mut parser)?;
                let t = humantime::parse_rfc3339_weak(&v)
                    .map_err(|e| Error::Usage(format!("--now: '{v}' is not an RFC 3339 instant: {e}")))?;
                let ms = t
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_err(|_| Error::Usage(format!("--now: '{v}' is before 1970")))?
                    .as_millis() as u64;
                now = Some(ms);
            }
            lexopt::Arg::Short('h') | lexopt::Arg::Long("help") => {
                println!("{USAGE}");
                return Ok(0);
            }
            lexopt::Arg::Value(v) if name.is_none() => name = Some(string(v)?),
            other => return Err(usage(other.unexpected())),
        }
    }
    let name = name.ok_or_else(|| Error::Usage("missing NAME (see walrust compact --help)".into()))?;
    // Retention and storage from --config (or ./walrust.toml when -b is not given); flags override the file.
    let (_, cfg) = crate::config::find(config_path, storage.bucket.is_none())?;
    storage.fill_from(&cfg);
    let policy = keep.policy_over(cfg.retention.policy_over(Policy::default()));
    let now = now.unwrap_or_else(crate::watch::now_ms);
    let storage = storage.open()?;
    let plan = compact::compact(storage.as_ref(), &name, now, &policy, dry_run)?;
    if json {
        let points: Vec<String> = plan.points.iter().map(compact::KeptPoint::to_json).collect();
        let decision =
            if dry_run || plan.delete.is_empty() { "null".to_string() } else { json_string(&plan.decision_key()) };
        println!(
            "{{\"name\":{},\"dry_run\":{dry_run},\"now\":{},\"deleted\":{},\"deleted_bytes\":{},\"generations_deleted\":{},\"kept_objects\":{},\"kept_bytes\":{},\"decision\":{decision},\"kept_points\":[{}]}}",
            json_string(&name),
            json_string(&fmt_ms(now)),
            plan.delete.len(),
            plan.delete_bytes(),
            plan.generations_deleted,
            plan.kept_objects,
            plan.kept_bytes,
            points.join(",")
        );
    } else if dry_run {
        println!(
            "dry run: '{name}': would delete {} objects ({} bytes, {} whole generation(s)); would keep {} objects ({} bytes) and {} restore points:",
            plan.delete.len(),
            plan.delete_bytes(),
            plan.generations_deleted,
            plan.kept_objects,
            plan.kept_bytes,
            plan.points.len()
        );
        for p in &plan.points {
            let r: Vec<&str> = p.reasons.iter().map(|r| r.as_str()).collect();
            println!("  {}  generation {:016x} seq {}  ({})", fmt_ms(p.commit_ms), p.generation, p.seq, r.join(", "));
        }
    } else {
        println!(
            "compacted '{name}': deleted {} objects ({} bytes, {} whole generation(s)); kept {} restore points in {} objects ({} bytes){}",
            plan.delete.len(),
            plan.delete_bytes(),
            plan.generations_deleted,
            plan.points.len(),
            plan.kept_objects,
            plan.kept_bytes,
            if plan.delete.is_empty() { String::new() } else { format!("; decision {}", plan.decision_key()) }
        );
    }
    Ok(0)
}
