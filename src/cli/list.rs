//! `walrust list`: what the bucket holds, per database (LISTs only).

use crate::cli::{string, usage, value_string, StorageArgs};
use crate::error::{Error, Result};
use crate::keys::{self, Kind};
use crate::log::json_string;
use crate::remote;
use crate::restore::fmt_ms;
use crate::storage::{self, Storage};

const USAGE: &str = "\
Usage: walrust list [NAME] -b s3://BUCKET[/PREFIX] [--json]

Shows each database stored in the bucket: generations, oldest and newest restorable time, object count and
bytes. With NAME, one line per generation of that database.

Options:
  -b, --bucket URL     s3://BUCKET[/PREFIX] or file:///ABS/DIR
      --endpoint URL   S3 endpoint
      --json           JSON on stdout

Examples:
  walrust list -b s3://backups/prod
  walrust list app -b file:///var/backups --json";

/// Summary of one generation.
struct GenSummary {
    generation: u64,
    objects: usize,
    bytes: u64,
    snapshots: usize,
    oldest_ms: u64,
    newest_ms: u64,
    newest_seq: u64,
}

fn summarize(storage: &dyn Storage, name: &str) -> Result<Vec<GenSummary>> {
    let mut out = Vec::new();
    for g in remote::generations(storage, name)? {
        let objs = remote::objects(storage, name, g, None)?;
        let points: Vec<_> = objs.iter().filter(|e| e.key.kind != Kind::Snapshot).collect();
        let first_start = objs.iter().find(|e| matches!(e.key.kind, Kind::Base | Kind::Snapshot));
        let Some(last) = remote::chain_last(&objs) else { continue };
        out.push(GenSummary {
            generation: g,
            objects: objs.len(),
            bytes: objs.iter().map(|e| e.size).sum(),
            snapshots: objs.iter().filter(|e| e.key.kind != Kind::Changeset).count(),
            oldest_ms: first_start
                .map(|e| e.key.commit_ms)
                .unwrap_or(points.first().map(|e| e.key.commit_ms).unwrap_or(0)),
            newest_ms: last.key.commit_ms,
            newest_seq: last.key.seq,
        });
    }
    Ok(out)
}

pub fn run(mut parser: lexopt::Parser) -> Result<i32> {
    let mut storage = StorageArgs::default();
    let mut name: Option<String> = None;
    let mut json = false;
    while let Some(arg) = parser.next().map_err(usage)? {
        match arg {
            lexopt::Arg::Short('b') | lexopt::Arg::Long("bucket") => storage.bucket = Some(value_string(&mut parser)?),
            lexopt::Arg::Long("endpoint") => storage.endpoint = Some(value_string(&mut parser)?),
            lexopt::Arg::Long("json") => json = true,
            lexopt::Arg::Short('h') | lexopt::Arg::Long("help") => {
                println!("{USAGE}");
                return Ok(0);
            }
            lexopt::Arg::Value(v) if name.is_none() => name = Some(string(v)?),
            other => return Err(usage(other.unexpected())),
        }
    }
    let storage = storage.open()?;
    let names: Vec<String> = match &name {
        Some(n) => vec![n.clone()],
        None => storage::list_prefixes(storage.as_ref(), "")?
            .into_iter()
            .filter_map(|p| p.strip_suffix('/').map(str::to_string))
            .filter(|n| keys::valid_name(n))
            .collect(),
    };
    let mut rows = Vec::new();
    for n in &names {
        let gens = summarize(storage.as_ref(), n)?;
        if gens.is_empty() && name.is_some() {
            return Err(Error::NotFound(format!("no backups of '{n}' in {}", storage.describe())));
        }
        if !gens.is_empty() {
            rows.push((n.clone(), gens));
        }
    }
    if json {
        let dbs: Vec<String> = rows
            .iter()
            .map(|(n, gens)| {
                let g: Vec<String> = gens
                    .iter()
                    .map(|g| {
                        format!(
                            "{{\"generation\":\"{:016x}\",\"objects\":{},\"bytes\":{},\"snapshots\":{},\"oldest\":{},\"newest\":{},\"newest_seq\":{}}}",
                            g.generation,
                            g.objects,
                            g.bytes,
                            g.snapshots,
                            json_string(&fmt_ms(g.oldest_ms)),
                            json_string(&fmt_ms(g.newest_ms)),
                            g.newest_seq
                        )
                    })
                    .collect();
                format!("{{\"name\":{},\"generations\":[{}]}}", json_string(n), g.join(","))
            })
            .collect();
        println!("{{\"databases\":[{}]}}", dbs.join(","));
        return Ok(0);
    }
    if name.is_some() {
        println!(
            "{:<18} {:>8} {:>12} {:>9} {:<24} {:<24} {:>10}",
            "GENERATION", "OBJECTS", "BYTES", "SNAPSHOTS", "OLDEST", "NEWEST", "SEQ"
        );
        for (_, gens) in &rows {
            for g in gens {
                println!(
                    "{:016x}   {:>8} {:>12} {:>9} {:<24} {:<24} {:>10}",
                    g.generation,
                    g.objects,
                    g.bytes,
                    g.snapshots,
                    fmt_ms(g.oldest_ms),
                    fmt_ms(g.newest_ms),
                    g.newest_seq
                );
            }
        }
    } else {
        println!(
            "{:<24} {:>11} {:>8} {:>12} {:<24} {:<24}",
            "NAME", "GENERATIONS", "OBJECTS", "BYTES", "OLDEST", "NEWEST"
        );
        for (n, gens) in &rows {
            let oldest = gens.iter().map(|g| g.oldest_ms).min().unwrap_or(0);
            let newest = gens.iter().map(|g| g.newest_ms).max().unwrap_or(0);
            println!(
                "{:<24} {:>11} {:>8} {:>12} {:<24} {:<24}",
                n,
                gens.len(),
                gens.iter().map(|g| g.objects).sum::<usize>(),
                gens.iter().map(|g| g.bytes).sum::<u64>(),
                fmt_ms(oldest),
                fmt_ms(newest)
            );
        }
    }
    Ok(0)
}
