//! Command-line interface: one file per command. Each parses its flags with a plain lexopt loop (no I/O),
//! then resolves them into settings and calls the library.

mod compact;
mod exec;
mod explain;
mod list;
mod progress;
mod replicate;
mod restore;
mod snapshot;
mod verify;
mod watch;

use std::ffi::OsString;

use crate::error::{Error, Result};
use crate::storage::{self, OpenOptions, StorageRef};

pub const VERSION: &str = env!("CARGO_PKG_VERSION");

const USAGE: &str = "\
walrust: continuous replication of SQLite databases to S3-compatible storage

Usage:
  walrust watch DB... -b s3://BUCKET[/PREFIX] [--endpoint URL] [options]
  walrust watch --config walrust.toml
  walrust restore NAME -o OUT.db -b s3://BUCKET[/PREFIX] [--point-in-time RFC3339|SEQ] [--force]
  walrust snapshot DB -b s3://BUCKET[/PREFIX]
  walrust verify NAME -b s3://BUCKET[/PREFIX] [--point-in-time T] [--json]
  walrust list [NAME] -b s3://BUCKET[/PREFIX] [--json]
  walrust compact NAME -b s3://BUCKET[/PREFIX] [--hourly N --daily N --weekly N --monthly N] [--dry-run] [--json]
  walrust replicate NAME -b s3://BUCKET[/PREFIX] --local REPLICA.db [--interval 5s]
  walrust explain [DB...] [--config FILE] [watch options] [--json]

Storage (-b) is s3://BUCKET[/PREFIX] or file:///ABS/DIR. Run `walrust COMMAND --help` for a command's options.
Exit codes: 0 ok, 1 failure, 2 usage, 3 not found, 4 corrupt, 5 fenced (another writer), 6 output exists.";

/// Runs the command line; returns the exit code on success.
pub fn run(args: Vec<OsString>) -> Result<i32> {
    let mut parser = lexopt::Parser::from_args(args);
    let cmd = match parser.next().map_err(usage)? {
        Some(lexopt::Arg::Value(v)) => string(v)?,
        Some(lexopt::Arg::Long("version")) | Some(lexopt::Arg::Short('V')) => {
            println!("walrust {VERSION}");
            return Ok(0);
        }
        Some(lexopt::Arg::Long("help")) | Some(lexopt::Arg::Short('h')) | None => {
            println!("{USAGE}");
            return Ok(0);
        }
        Some(other) => return Err(usage(other.unexpected())),
    };
    match cmd.as_str() {
        "watch" => watch::run(parser),
        "restore" => restore::run(parser),
        "verify" => verify::run(parser),
        "list" => list::run(parser),
        "snapshot" => snapshot::run(parser),
        "explain" => explain::run(parser),
        "compact" => compact::run(parser),
        "replicate" => replicate::run(parser),
        "help" => {
            println!("{USAGE}");
            Ok(0)
        }
        other => Err(Error::Usage(format!("unknown command '{other}' (try walrust --help)"))),
    }
}

pub(crate) fn usage(e: lexopt::Error) -> Error {
    Error::Usage(e.to_string())
}

/// Flags shared by every command that touches storage (`-b/--bucket`, `--endpoint`).
#[derive(Debug, Default)]
pub(crate) struct StorageArgs {
    pub bucket: Option<String>,
    pub endpoint: Option<String>,
}

impl StorageArgs {
    /// Takes the bucket and endpoint from the config file where no flag gave them.
    pub fn fill_from(&mut self, cfg: &crate::config::Config) {
        self.bucket = self.bucket.take().or_else(|| cfg.bucket.clone());
        self.endpoint = self.endpoint.take().or_else(|| cfg.endpoint.clone());
    }

    /// Opens the storage for reading: a missing `file://` directory is an error.
    pub fn open(&self) -> Result<StorageRef> {
        self.open_with(false)
    }

    /// Opens the storage; `create` makes a missing `file://` directory (watch, snapshot).
    pub fn open_with(&self, create: bool) -> Result<StorageRef> {
        let url = self.bucket.as_deref().ok_or_else(|| Error::Usage("missing -b s3://BUCKET or file:///DIR".into()))?;
        let location = storage::parse_location(url)?;
        let opts = OpenOptions { endpoint: self.endpoint.clone(), create, ..Default::default() };
        Ok(storage::open(&location, &opts)?)
    }
}

/// `--log-format text|json`.
pub(crate) fn set_log_format(v: &str) -> Result<()> {
    match v {
        "json" => crate::log::set_json(true),
        "text" => crate::log::set_json(false),
        other => return Err(Error::Usage(format!("--log-format: expected text or json, not '{other}'"))),
    }
    Ok(())
}

/// Parses a count flag (`--daily 7`).
pub(crate) fn parse_count(flag: &str, v: &str) -> Result<u32> {
    v.parse().map_err(|_| Error::Usage(format!("{flag}: '{v}' is not a non-negative integer")))
}

/// Parses a size: bytes (`1048576`) or a number with a unit (`64KiB`, `256MiB`, `1GiB`, `500MB`, `2GB`).
pub(crate) fn parse_size(v: &str) -> std::result::Result<u64, String> {
    let t = v.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("'{v}' is not a size like 256MiB"))?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        _ => return Err(format!("'{v}': unknown unit (B, KiB, MiB, GiB, KB, MB, GB)")),
    };
    n.checked_mul(mult).ok_or_else(|| format!("'{v}' is too large"))
}

/// Parses a duration like `1s`, `250ms`, `1h30m`.
pub(crate) fn parse_duration(flag: &str, v: &str) -> Result<std::time::Duration> {
    humantime::parse_duration(v).map_err(|e| Error::Usage(format!("{flag}: invalid duration '{v}': {e}")))
}

pub(crate) fn value_string(parser: &mut lexopt::Parser) -> Result<String> {
    string(parser.value().map_err(usage)?)
}

pub(crate) fn string(v: OsString) -> Result<String> {
    v.into_string().map_err(|v| Error::Usage(format!("argument is not valid UTF-8: {}", v.to_string_lossy())))
}

#[cfg(test)]
mod tests {
    #[test]
    fn sizes() {
        assert_eq!(super::parse_size("1048576"), Ok(1 << 20));
        assert_eq!(super::parse_size("64KiB"), Ok(64 << 10));
        assert_eq!(super::parse_size("256MiB"), Ok(256 << 20));
        assert_eq!(super::parse_size("2GB"), Ok(2_000_000_000));
        for bad in ["", "MiB", "12 parsecs", "-1", "99999999999999GiB"] {
            assert!(super::parse_size(bad).is_err(), "{bad}");
        }
    }
}
