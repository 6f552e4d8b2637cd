//! Storage locations: `s3://bucket`, `s3://bucket/prefix/`, `file:///abs/dir`.

use std::fmt;
use std::path::PathBuf;

use super::StorageError;

/// Where backups live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// `s3://BUCKET[/PREFIX]`.
    S3 {
        /// The bucket name (3-63 characters of a-z, 0-9, `-` and `.`).
        bucket: String,
        /// Prepended to every key: empty or ends with `/`, no leading `/`, no `//`, no `..` segment.
        prefix: String,
    },
    /// `file:///ABS/DIR`: a local directory.
    File {
        /// The directory, an absolute path with no `..` segment.
        root: PathBuf,
    },
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::S3 { bucket, prefix } => write!(f, "s3://{bucket}/{prefix}"),
            Location::File { root } => write!(f, "file://{}", root.display()),
        }
    }
}

/// Parses a location (the CLI's `-b` value): `s3://BUCKET[/PREFIX]` or `file:///ABS/DIR`. Errors are
/// [`StorageError::Config`].
pub fn parse_location(s: &str) -> Result<Location, StorageError> {
    let bad = |why: &str| StorageError::Config(format!("invalid storage url '{s}': {why}"));
    if let Some(rest) = s.strip_prefix("s3://") {
        let (bucket, prefix) = match rest.split_once('/') {
            Some((b, p)) => (b, p),
            None => (rest, ""),
        };
        if bucket.is_empty() {
            return Err(bad("missing bucket name"));
        }
        let valid_bucket = bucket.len() >= 3
            && bucket.len() <= 63
            && bucket.bytes().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-' || c == b'.');
        if !valid_bucket {
            return Err(bad("bucket names are 3-63 characters of a-z, 0-9, '-' and '.'"));
        }
        let prefix = prefix.trim_start_matches('/');
        if prefix.split('/').any(|seg| seg == "..") {
            return Err(bad("'..' is not allowed in the prefix"));
        }
        let mut prefix = prefix.to_string();
        while prefix.contains("//") {
            prefix = prefix.replace("//", "/");
        }
        if !prefix.is_empty() && !prefix.ends_with('/') {
            prefix.push('/');
        }
        return Ok(Location::S3 { bucket: bucket.to_string(), prefix });
    }
    if let Some(rest) = s.strip_prefix("file://") {
        if !rest.starts_with('/') {
            return Err(bad("file urls need an absolute path, as in file:///var/backups"));
        }
        if rest.split('/').any(|seg| seg == "..") {
            return Err(bad("'..' is not allowed in the path"));
        }
        return Ok(Location::File { root: PathBuf::from(rest) });
    }
    Err(bad("expected s3://BUCKET[/PREFIX] or file:///ABS/DIR"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s3(b: &str, p: &str) -> Location {
        Location::S3 { bucket: b.into(), prefix: p.into() }
    }

    #[test]
    fn parses_locations() {
        assert_eq!(parse_location("s3://bucket").unwrap(), s3("bucket", ""));
        assert_eq!(parse_location("s3://bucket/").unwrap(), s3("bucket", ""));
        assert_eq!(parse_location("s3://bucket/pre").unwrap(), s3("bucket", "pre/"));
        assert_eq!(parse_location("s3://bucket/a/b/").unwrap(), s3("bucket", "a/b/"));
        assert_eq!(parse_location("s3://bucket//a//b").unwrap(), s3("bucket", "a/b/"));
        assert_eq!(parse_location("file:///tmp/x").unwrap(), Location::File { root: "/tmp/x".into() });
    }

    #[test]
    fn rejects_bad_locations() {
        for bad in ["", "bucket", "s3://", "s3:///x", "s3://B", "s3://a", "file://rel", "file:///a/../b", "http://x"] {
            let e = parse_location(bad).unwrap_err().to_string();
            assert!(e.starts_with("invalid storage url"), "{bad}: {e}");
        }
    }
}
