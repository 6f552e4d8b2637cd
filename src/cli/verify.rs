//! `walrust verify`: prove a backup is intact (for cron jobs and restore drills).

use crate::cli::{restore::parse_target, string, usage, value_string, StorageArgs};
use crate::error::{Error, Result};
use crate::log::json_string;
use crate::restore::{fmt_ms, Target};
use crate::verify;

const USAGE: &str = "\
Usage: walrust verify NAME -b s3://BUCKET[/PREFIX] [--point-in-time T] [--json]

Downloads and checks every stored object of NAME (SHA-256, decoding, the checksum chain), rebuilds the
newest state (or --point-in-time) in a temp file and runs PRAGMA integrity_check. Exit 0 only when
everything holds; 4 names the first broken object; 3 when there is no such backup.

Options:
  -b, --bucket URL         s3://BUCKET[/PREFIX] or file:///ABS/DIR
      --endpoint URL       S3 endpoint
      --point-in-time T    verify that point (RFC 3339 or seq) instead of the newest
      --json               one JSON object on stdout

Examples:
  walrust verify app -b s3://backups/prod || alert 'backup of app is broken'
  walrust verify app -b file:///var/backups --point-in-time 2026-03-01T12:00:00Z --json";

pub fn run(mut parser: lexopt::Parser) -> Result<i32> {
    let mut storage = StorageArgs::default();
    let mut name: Option<String> = None;
    let mut target = Target::Latest;
    let mut json = false;
    while let Some(arg) = parser.next().map_err(usage)? {
        match arg {
            lexopt::Arg::Short('b') | lexopt::Arg::Long("bucket") => storage.bucket = Some(value_string(&mut parser)?),
            lexopt::Arg::Long("endpoint") => storage.endpoint = Some(value_string(&mut parser)?),
            lexopt::Arg::Long("point-in-time") => target = parse_target(&value_string(&mut parser)?)?,
            lexopt::Arg::Long("json") => json = true,
            lexopt::Arg::Short('h') | lexopt::Arg::Long("help") => {
                println!("{USAGE}");
                return Ok(0);
            }
            lexopt::Arg::Value(v) if name.is_none() => name = Some(string(v)?),
            other => return Err(usage(other.unexpected())),
        }
    }
    let name = name.ok_or_else(|| Error::Usage("missing NAME (see walrust verify --help)".into()))?;
    let storage = storage.open()?;
    match verify::verify(storage.as_ref(), &name, target) {
        Ok(r) => {
            if json {
                println!(
                    "{{\"name\":{},\"ok\":true,\"generations\":{},\"objects\":{},\"bytes\":{},\"seq\":{},\"commit_time\":{}}}",
                    json_string(&name),
                    r.generations,
                    r.objects,
                    r.bytes,
                    r.seq,
                    json_string(&fmt_ms(r.commit_ms))
                );
            } else {
                println!(
                    "ok: '{name}': {} generation(s), {} objects, {} bytes verified; seq {} (committed {}) rebuilt, integrity_check ok",
                    r.generations,
                    r.objects,
                    r.bytes,
                    r.seq,
                    fmt_ms(r.commit_ms)
                );
            }
            Ok(0)
        }
        Err(e) => {
            if json {
                println!(
                    "{{\"name\":{},\"ok\":false,\"exit_code\":{},\"error\":{}}}",
                    json_string(&name),
                    e.exit_code(),
                    json_string(&e.to_string())
                );
            }
            Err(e)
        }
    }
}
