//! A storage wrapper that fails on command, for tests: writes refused (as if walrust were killed before an upload
//! landed, or the bucket denied it), uploads kept cut off, and bodies cut off in transit. Everything else passes
//! through to the inner storage. The fault-proxy (`scripts/fault-proxy`) does the same over HTTP for S3; this is
//! the in-process form, for tests that need a fault at an exact step.

use std::io::{self, Read};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use super::{ListPage, ObjectReader, PutOutcome, Result, Storage, StorageError};

#[derive(Debug)]
pub struct Faulty<S> {
    inner: S,
    /// While set, `put` and `put_if_absent` fail with `AccessDenied` and store nothing.
    pub refuse_writes: AtomicBool,
    /// While non-zero, a `put_if_absent` stores an empty object under its key and fails in transit, counting
    /// this down: a store that kept a PUT cut off right after its headers (what SeaweedFS does when the client
    /// dies there).
    pub keep_cut_puts: AtomicUsize,
    /// When non-zero, every body (`get` and `get_range`) breaks with a connection reset after this many bytes.
    pub cut_bodies_after: AtomicU64,
    /// GETs made so far, ranged or not.
    pub gets: AtomicUsize,
}

impl<S: Storage> Faulty<S> {
    pub fn new(inner: S) -> Self {
        Faulty {
            inner,
            refuse_writes: AtomicBool::new(false),
            keep_cut_puts: AtomicUsize::new(0),
            cut_bodies_after: AtomicU64::new(0),
            gets: AtomicUsize::new(0),
        }
    }

    fn check_write(&self) -> Result<()> {
        match self.refuse_writes.load(Ordering::SeqCst) {
            true => Err(StorageError::Auth { code: "AccessDenied".into(), message: "refused by the test".into() }),
            false => Ok(()),
        }
    }

    fn body(&self, r: ObjectReader) -> ObjectReader {
        self.gets.fetch_add(1, Ordering::SeqCst);
        match self.cut_bodies_after.load(Ordering::SeqCst) {
            0 => r,
            cut => Box::new(CutReader(r.take(cut))),
        }
    }
}

/// A body that ends in a connection reset where its limit falls, not in a clean end of file.
struct CutReader(io::Take<ObjectReader>);

impl Read for CutReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.0.read(buf)? {
            0 if self.0.limit() == 0 => Err(io::Error::new(io::ErrorKind::ConnectionReset, "cut by the test")),
            n => Ok(n),
        }
    }
}

impl<S: Storage> Storage for Faulty<S> {
    fn put(&self, key: &str, body: &mut dyn Read) -> Result<()> {
        self.check_write()?;
        self.inner.put(key, body)
    }
    fn put_if_absent(&self, key: &str, body: &mut dyn Read) -> Result<PutOutcome> {
        self.check_write()?;
        if self.keep_cut_puts.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok() {
            self.inner.put_if_absent(key, &mut io::empty())?;
            return Err(StorageError::Transport { message: "cut by the test after the headers".into() });
        }
        self.inner.put_if_absent(key, body)
    }
    fn get(&self, key: &str) -> Result<ObjectReader> {
        Ok(self.body(self.inner.get(key)?))
    }
    fn get_range(&self, key: &str, offset: u64, len: u64) -> Result<ObjectReader> {
        Ok(self.body(self.inner.get_range(key, offset, len)?))
    }
    fn list_page(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        delimiter: bool,
        token: Option<&str>,
    ) -> Result<ListPage> {
        self.inner.list_page(prefix, start_after, delimiter, token)
    }
    fn delete_many(&self, keys: &[String]) -> Result<()> {
        self.inner.delete_many(keys)
    }
    fn describe(&self) -> String {
        self.inner.describe()
    }
}
