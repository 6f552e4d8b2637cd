//! `walrust restore`: rebuild a database from storage, verified end to end.

use std::path::PathBuf;

use crate::cli::progress::Meter;
use crate::cli::{string, usage, value_string, StorageArgs};
use crate::error::{Error, Result};
use crate::log::{self, json_string};
use crate::restore::{self, RestoreOptions, Target};

const USAGE: &str = "\
Usage: walrust restore NAME -o OUT.db -b s3://BUCKET[/PREFIX] [options]

Rebuilds database NAME (the file stem it was watched under: app.db -> app) into OUT.db: the latest state, or
the last state committed at or before --point-in-time. Every object's SHA-256 and the checksum chain are
verified, PRAGMA integrity_check must pass, and OUT.db appears atomically. An existing OUT.db is never
replaced without --force.

Options:
  -o, --output OUT.db        where to write the database (required)
  -b, --bucket URL           s3://BUCKET[/PREFIX] or file:///ABS/DIR
      --endpoint URL         S3 endpoint (also AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL)
      --point-in-time T      RFC 3339 instant (2026-03-01T12:00:00Z) or a seq number
      --force                replace OUT.db if it exists
      --if-not-exists        do nothing (exit 0) when OUT.db already exists (init containers, boot scripts)
      --dry-run              print the plan (objects, bytes) without downloading
      --json                 print the plan or the result as one JSON object on stdout
  -q, --quiet                print nothing but errors (no progress line, no summary)

On a terminal, a restore that takes more than a second shows its progress (bytes, rate, ETA) on stderr.

Examples:
  walrust restore app -o /tmp/app.db -b s3://backups/prod
  walrust restore app -o app.db -b file:///var/backups --point-in-time 2026-03-01T12:03:00Z
  walrust restore app -o /data/app.db -b s3://backups/prod --if-not-exists";

pub fn run(mut parser: lexopt::Parser) -> Result<i32> {
    let mut storage = StorageArgs::default();
    let mut name: Option<String> = None;
    let mut output: Option<PathBuf> = None;
    let mut force = false;
    let mut dry_run = false;
    let mut if_not_exists = false;
    let mut json = false;
    let mut quiet = false;
    let mut target = Target::Latest;
    while let Some(arg) = parser.next().map_err(usage)? {
        match arg {
            lexopt::Arg::Short('b') | lexopt::Arg::Long("bucket") => storage.bucket = Some(value_string(&mut parser)?),
            lexopt::Arg::Long("endpoint") => storage.endpoint = Some(value_string(&mut parser)?),
            lexopt::Arg::Short('o') | lexopt::Arg::Long("output") => {
                output = Some(PathBuf::from(parser.value().map_err(usage)?))
            }
            lexopt::Arg::Long("force") => force = true,
            lexopt::Arg::Long("dry-run") => dry_run = true,
            lexopt::Arg::Long("if-not-exists") => if_not_exists = true,
            lexopt::Arg::Long("json") => json = true,
            lexopt::Arg::Short('q') | lexopt::Arg::Long("quiet") => quiet = true,
            lexopt::Arg::Long("point-in-time") => target = parse_target(&value_string(&mut parser)?)?,
            lexopt::Arg::Short('h') | lexopt::Arg::Long("help") => {
                println!("{USAGE}");
                return Ok(0);
            }
            lexopt::Arg::Value(v) if name.is_none() => name = Some(string(v)?),
            other => return Err(usage(other.unexpected())),
        }
    }
    let name = name.ok_or_else(|| Error::Usage("missing NAME (see walrust restore --help)".into()))?;
    if quiet {
        log::set_level(log::Level::Warn);
    }
    let output = output.ok_or_else(|| Error::Usage("missing -o OUT.db".into()))?;
    if if_not_exists && force {
        return Err(Error::Usage("--if-not-exists and --force contradict each other".into()));
    }
    if if_not_exists && output.exists() {
        if json {
            println!(
                "{{\"name\":{},\"output\":{},\"restored\":false}}",
                json_string(&name),
                json_string(&output.display().to_string())
            );
        } else {
            log::info(&format!("{} exists; nothing restored (--if-not-exists)", output.display()));
        }
        return Ok(0);
    }
    let storage = storage.open()?;
    if dry_run {
        let plan = restore::plan(storage.as_ref(), &name, target)?;
        if json {
            let objects: Vec<String> = plan
                .objects
                .iter()
                .map(|e| format!("{{\"key\":{},\"bytes\":{}}}", json_string(&e.key_str), e.size))
                .collect();
            println!(
                "{{\"name\":{},\"generation\":\"{:016x}\",\"seq\":{},\"committed\":{},\"bytes\":{},\"objects\":[{}]}}",
                json_string(&name),
                plan.generation,
                plan.seq,
                json_string(&restore::fmt_ms(plan.commit_ms)),
                plan.bytes(),
                objects.join(",")
            );
            return Ok(0);
        }
        println!(
            "restore '{}' to seq {} (committed {}) from generation {:016x}: {} objects, {} bytes",
            name,
            plan.seq,
            restore::fmt_ms(plan.commit_ms),
            plan.generation,
            plan.objects.len(),
            plan.bytes()
        );
        for e in &plan.objects {
            println!("  {} {}", e.key_str, e.size);
        }
        return Ok(0);
    }
    let opts = RestoreOptions { output: output.clone(), force, target, write_state: target == Target::Latest };
    let mut meter = Meter::new(&format!("restoring {name}"), quiet || json);
    let mut last = (0, 0);
    let report = restore::restore_with_progress(storage.as_ref(), &name, &opts, &mut |p| {
        last = (p.done_bytes, p.total_bytes);
        meter.update(p.done_bytes, p.total_bytes)
    });
    meter.finish(last.0, last.1);
    let report = report?;
    if json {
        println!(
            "{{\"name\":{},\"output\":{},\"restored\":true,\"generation\":\"{:016x}\",\"seq\":{},\"committed\":{},\"objects\":{},\"bytes\":{},\"pages\":{},\"page_size\":{}}}",
            json_string(&name),
            json_string(&output.display().to_string()),
            report.plan.generation,
            report.plan.seq,
            json_string(&restore::fmt_ms(report.plan.commit_ms)),
            report.plan.objects.len(),
            report.plan.bytes(),
            report.db_pages,
            report.page_size
        );
        return Ok(0);
    }
    log::info(&format!(
        "restored '{}' seq {} (committed {}) into {}: {} objects, {} pages, integrity_check ok",
        name,
        report.plan.seq,
        restore::fmt_ms(report.plan.commit_ms),
        output.display(),
        report.plan.objects.len(),
        report.db_pages
    ));
    Ok(0)
}

/// `--point-in-time`: an RFC 3339 instant, or a plain number (a seq).
pub(crate) fn parse_target(v: &str) -> Result<Target> {
    if let Ok(seq) = v.parse::<u64>() {
        return Ok(Target::Seq(seq));
    }
    let t = humantime::parse_rfc3339_weak(v)
        .map_err(|e| Error::Usage(format!("--point-in-time: '{v}' is not an RFC 3339 instant or a seq: {e}")))?;
    let ms = t
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|_| Error::Usage(format!("--point-in-time: '{v}' is before 1970")))?
        .as_millis() as u64;
    Ok(Target::Time(ms))
}
