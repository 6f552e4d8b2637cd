//! Object storage: one small interface, two backends.
//!
//! Invariants of this module:
//! - Only `storage/` speaks HTTP or touches the backend's files.
//! - Not-found is a typed outcome ([`StorageError::NotFound`]), decided by the backend from a status code or
//!   an errno, never guessed from message text. Callers may treat only `NotFound` as "absent"; every other
//!   error means "unknown" (FIELD-NOTES 4: a transient error is never "no backup yet").
//! - A create-if-absent write that finds the key taken returns [`PutOutcome::AlreadyExists`], not an error.
//! - Bodies stream: `put` reads the body in bounded parts, `get` returns a reader.

#[doc(hidden)]
pub mod credentials;
#[doc(hidden)]
pub mod faulty;
pub mod local;
#[doc(hidden)]
pub mod retry;
pub mod s3;
pub mod url;

use std::fmt;
use std::io::{self, Read};
use std::sync::Arc;

pub use self::url::{parse_location, Location};

/// The largest number of keys a single listing page returns (S3's own limit).
pub const LIST_PAGE_KEYS_MAX: usize = 1000;
/// The largest number of keys one DeleteObjects request carries (S3's own limit).
pub const DELETE_BATCH_KEYS_MAX: usize = 1000;

/// A readable object body, streamed from the backend.
pub type ObjectReader = Box<dyn Read + Send>;

/// One entry of a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    /// The object's key, relative to the backend's root.
    pub key: String,
    /// The object's size, in bytes.
    pub size: u64,
}

/// One page of a listing, in ascending key order.
#[derive(Debug, Default, Clone)]
pub struct ListPage {
    /// The objects on this page, in ascending key order (with `delimiter`, only those not folded into
    /// `common_prefixes`).
    pub objects: Vec<ObjectInfo>,
    /// With `delimiter`, the distinct key prefixes up to and including the next `/` after `prefix`.
    pub common_prefixes: Vec<String>,
    /// Opaque token for the next page; `None` on the last page.
    pub next: Option<String>,
}

/// Result of a create-if-absent write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutOutcome {
    /// The object was written.
    Created,
    /// The key already existed; nothing was written.
    AlreadyExists,
}

/// Errors from a storage backend. Messages are lowercase and name the key or bucket involved;
/// they never contain credentials.
#[derive(Debug)]
pub enum StorageError {
    /// The key (or range) does not exist. The only error that means "absent".
    NotFound {
        /// The key asked for.
        key: String,
    },
    /// The bucket (for the file backend: the root directory) does not exist.
    NoSuchBucket {
        /// The bucket name, or the directory.
        bucket: String,
    },
    /// Credentials rejected or not allowed (AccessDenied, SignatureDoesNotMatch, InvalidAccessKeyId, ...).
    Auth {
        /// The service's error code.
        code: String,
        /// The service's message; may be empty.
        message: String,
    },
    /// Any other error answered by the service, with its S3 error code when it sent one.
    Service {
        /// The HTTP status.
        status: u16,
        /// The S3 error code; empty when the service sent none.
        code: String,
        /// The service's message; may be empty.
        message: String,
        /// The key involved; empty when none.
        key: String,
    },
    /// The request did not get an answer (connection refused/reset, timeout, truncated body).
    Transport {
        /// What failed.
        message: String,
    },
    /// Local file-system error of the file backend.
    Io {
        /// The file or directory involved.
        path: String,
        /// The underlying error.
        source: io::Error,
    },
    /// Bad configuration (URL, credentials file, endpoint).
    Config(String),
}

impl StorageError {
    /// Worth retrying: transport failures, 500/502/503/504, SlowDown and friends.
    pub fn is_transient(&self) -> bool {
        match self {
            StorageError::Transport { .. } => true,
            StorageError::Service { status, code, .. } => {
                matches!(status, 500 | 502 | 503 | 504)
                    || matches!(
                        code.as_str(),
                        "SlowDown"
                            | "RequestTimeout"
                            | "InternalError"
                            | "ServiceUnavailable"
                            | "RequestTimeTooSkewed"
                            | "ConditionalRequestConflict"
                    )
            }
            StorageError::Io { source, .. } => matches!(
                source.kind(),
                io::ErrorKind::Interrupted | io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
            ),
            _ => false,
        }
    }

    /// The object is absent ([`StorageError::NotFound`]); every other error means "unknown".
    pub fn is_not_found(&self) -> bool {
        matches!(self, StorageError::NotFound { .. })
    }

    pub(crate) fn io(path: impl fmt::Display, source: io::Error) -> Self {
        StorageError::Io { path: path.to_string(), source }
    }
}

impl fmt::Display for StorageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StorageError::NotFound { key } => write!(f, "object not found: {key}"),
            StorageError::NoSuchBucket { bucket } => write!(f, "bucket does not exist: {bucket} (NoSuchBucket)"),
            StorageError::Auth { code, message } => {
                write!(f, "storage refused the credentials: {code}")?;
                if !message.is_empty() {
                    write!(f, ": {message}")?;
                }
                Ok(())
            }
            StorageError::Service { status, code, message, key } => {
                write!(f, "storage error {status}")?;
                if !code.is_empty() {
                    write!(f, " {code}")?;
                }
                if !message.is_empty() {
                    write!(f, ": {message}")?;
                }
                if !key.is_empty() {
                    write!(f, " (key {key})")?;
                }
                Ok(())
            }
            StorageError::Transport { message } => write!(f, "storage unreachable: {message}"),
            StorageError::Io { path, source } => write!(f, "{path}: {source}"),
            StorageError::Config(m) => write!(f, "{m}"),
        }
    }
}

impl std::error::Error for StorageError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            StorageError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// The result of a storage operation.
pub type Result<T> = std::result::Result<T, StorageError>;

/// The storage contract. Keys are relative to the backend's root (bucket + prefix, or directory); they use
/// `/` as separator, never start with `/`, and never contain `..` segments.
pub trait Storage: Send + Sync + fmt::Debug {
    /// Writes `body` at `key`, replacing any existing object. Large bodies are sent in parts.
    fn put(&self, key: &str, body: &mut dyn Read) -> Result<()>;

    /// Writes `body` at `key` only if no object exists there (S3 `If-None-Match: *`).
    fn put_if_absent(&self, key: &str, body: &mut dyn Read) -> Result<PutOutcome>;

    /// Streams the whole object.
    fn get(&self, key: &str) -> Result<ObjectReader>;

    /// Streams `len` bytes starting at `offset` (fewer if the object ends first).
    fn get_range(&self, key: &str, offset: u64, len: u64) -> Result<ObjectReader>;

    /// One page of keys starting with `prefix`, in ascending order, strictly after `start_after` when given.
    /// With `delimiter`, keys containing a `/` after the prefix are folded into `common_prefixes`.
    /// `token` is the `next` of the previous page.
    fn list_page(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        delimiter: bool,
        token: Option<&str>,
    ) -> Result<ListPage>;

    /// Deletes the keys (missing keys are not an error). Batches of at most [`DELETE_BATCH_KEYS_MAX`].
    fn delete_many(&self, keys: &[String]) -> Result<()>;

    /// Where this storage points, for messages (`s3://bucket/prefix/`, `file:///dir`). No secrets.
    fn describe(&self) -> String;

    /// Requests sent so far, by kind (for tests, benchmarks and metrics).
    fn request_counts(&self) -> RequestCounts {
        RequestCounts::default()
    }
}

/// Requests sent to a backend, by kind. A multipart upload counts one `put` per part and one `other` each for
/// its create and complete requests.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RequestCounts {
    /// Get requests (whole objects and ranges).
    pub get: u64,
    /// Put requests (a multipart upload counts one per part).
    pub put: u64,
    /// List requests (one per page).
    pub list: u64,
    /// Delete requests (one key, or one DeleteObjects batch, each).
    pub delete: u64,
    /// Any other request (e.g. a multipart upload's create and complete).
    pub other: u64,
}

impl RequestCounts {
    /// All requests, of every kind.
    pub fn total(&self) -> u64 {
        self.get + self.put + self.list + self.delete + self.other
    }
}

/// Shared handle to a backend.
pub type StorageRef = Arc<dyn Storage>;

/// Lists every key under `prefix` (all pages), strictly after `start_after`.
pub fn list_all(storage: &dyn Storage, prefix: &str, start_after: Option<&str>) -> Result<Vec<ObjectInfo>> {
    let mut out = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let page = storage.list_page(prefix, start_after, false, token.as_deref())?;
        out.extend(page.objects);
        match page.next {
            Some(t) => token = Some(t),
            None => return Ok(out),
        }
    }
}

/// Lists the common prefixes (one level of "directories") under `prefix`.
pub fn list_prefixes(storage: &dyn Storage, prefix: &str) -> Result<Vec<String>> {
    let mut out = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let page = storage.list_page(prefix, None, true, token.as_deref())?;
        out.extend(page.common_prefixes);
        match page.next {
            Some(t) => token = Some(t),
            None => return Ok(out),
        }
    }
}

/// Options for opening a backend from a location.
#[derive(Debug, Clone, Default)]
pub struct OpenOptions {
    /// `--endpoint`; when `None`, AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL are consulted.
    pub endpoint: Option<String>,
    /// Retry policy for transient failures.
    pub retry: retry::RetryPolicy,
    /// For `file://`: create the directory when it does not exist (watch does; readers report it missing, so a
    /// mistyped path is an error rather than an empty backup).
    pub create: bool,
}

/// Opens the backend a location names.
pub fn open(location: &Location, opts: &OpenOptions) -> Result<StorageRef> {
    match location {
        Location::File { root } => Ok(Arc::new(local::LocalStorage::open(root, opts.create)?)),
        Location::S3 { bucket, prefix } => Ok(Arc::new(s3::S3Storage::open(bucket, prefix, opts)?)),
    }
}

/// Checks that the storage honours create-if-absent (FIELD-NOTES 11: some S3 implementations ignore
/// `If-None-Match: *`, which would let two writers silently overwrite each other's objects). Writes a probe key
/// twice under `.walrust-probe/` and deletes it: 2 PUTs and 1 DELETE. Returns false when the second write was
/// accepted. The first write may itself answer `AlreadyExists`: the key is unique to this call, so that means
/// an earlier attempt of that same write landed and only its answer was lost (a retry found the key taken);
/// only the second write decides.
pub fn honours_create_if_absent(storage: &dyn Storage) -> Result<bool> {
    let key = format!(".walrust-probe/{}-{:016x}", std::process::id(), retry::jitter(u64::MAX - 1));
    storage.put_if_absent(&key, &mut &b"first"[..])?;
    let second = storage.put_if_absent(&key, &mut &b"second"[..]);
    let cleanup = storage.delete_many(std::slice::from_ref(&key));
    let second = second?;
    cleanup?;
    Ok(second == PutOutcome::AlreadyExists)
}

/// Reads up to `buf.len()` bytes, stopping early only at end of input. Returns the number read.
pub fn read_full(r: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A store that ignores `If-None-Match: *` (as Garage does, per FIELD-NOTES 11): every write lands.
    #[derive(Debug)]
    struct IgnoresCondition(local::LocalStorage);

    impl Storage for IgnoresCondition {
        fn put(&self, key: &str, body: &mut dyn Read) -> Result<()> {
            self.0.put(key, body)
        }
        fn put_if_absent(&self, key: &str, body: &mut dyn Read) -> Result<PutOutcome> {
            self.0.put(key, body).map(|_| PutOutcome::Created)
        }
        fn get(&self, key: &str) -> Result<ObjectReader> {
            self.0.get(key)
        }
        fn get_range(&self, key: &str, offset: u64, len: u64) -> Result<ObjectReader> {
            self.0.get_range(key, offset, len)
        }
        fn list_page(&self, p: &str, s: Option<&str>, d: bool, t: Option<&str>) -> Result<ListPage> {
            self.0.list_page(p, s, d, t)
        }
        fn delete_many(&self, keys: &[String]) -> Result<()> {
            self.0.delete_many(keys)
        }
        fn describe(&self) -> String {
            self.0.describe()
        }
    }

    /// A store whose first create-if-absent lands but loses its answer, so the retry finds the key taken.
    #[derive(Debug)]
    struct LostFirstAnswer(local::LocalStorage, std::sync::atomic::AtomicBool);

    impl Storage for LostFirstAnswer {
        fn put(&self, key: &str, body: &mut dyn Read) -> Result<()> {
            self.0.put(key, body)
        }
        fn put_if_absent(&self, key: &str, body: &mut dyn Read) -> Result<PutOutcome> {
            let mut data = Vec::new();
            body.read_to_end(&mut data).unwrap();
            if !self.1.swap(true, std::sync::atomic::Ordering::Relaxed) {
                self.0.put_if_absent(key, &mut &data[..])?; // landed; the answer is lost, the retry follows
            }
            self.0.put_if_absent(key, &mut &data[..])
        }
        fn get(&self, key: &str) -> Result<ObjectReader> {
            self.0.get(key)
        }
        fn get_range(&self, key: &str, offset: u64, len: u64) -> Result<ObjectReader> {
            self.0.get_range(key, offset, len)
        }
        fn list_page(&self, p: &str, s: Option<&str>, d: bool, t: Option<&str>) -> Result<ListPage> {
            self.0.list_page(p, s, d, t)
        }
        fn delete_many(&self, keys: &[String]) -> Result<()> {
            self.0.delete_many(keys)
        }
        fn describe(&self) -> String {
            self.0.describe()
        }
    }

    #[test]
    fn a_lost_answer_to_the_first_probe_write_is_not_taken_for_an_unsafe_store() {
        let dir = std::env::temp_dir().join(format!("walrust-probe-lost-{}", std::process::id()));
        let s = LostFirstAnswer(local::LocalStorage::open(&dir, true).unwrap(), Default::default());
        assert!(honours_create_if_absent(&s).unwrap());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_probe_tells_a_store_that_ignores_conditions() {
        let dir = std::env::temp_dir().join(format!("walrust-probe-{}", std::process::id()));
        let good = local::LocalStorage::open(&dir, true).unwrap();
        assert!(honours_create_if_absent(&good).unwrap());
        let bad = IgnoresCondition(local::LocalStorage::open(&dir, true).unwrap());
        assert!(!honours_create_if_absent(&bad).unwrap());
        assert!(list_all(&good, "", None).unwrap().is_empty(), "the probe cleans up");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
