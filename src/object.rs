//! Stored objects: HADBP records, zstd-compressed, uploaded create-if-absent under a key that carries the
//! SHA-256 of the stored bytes (see FORMAT.md).
//!
//! Uploading is two passes over a deterministic record source: the first computes the SHA-256 (needed for the
//! key) and keeps the bytes when they are small; large objects are encoded a second time straight into the
//! upload through a pipe, so memory stays bounded whatever the object size. The second pass is hashed too and
//! must match the first, or the upload is refused.
//!
//! Downloading streams through SHA-256, zstd and the HADBP decoder; the hash is checked when the stream ends.

use std::io::{self, BufReader, Read, Write};

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::hadbp::{self, Header};
use crate::keys::{Kind, ObjectKey};
use crate::storage::{PutOutcome, Storage, StorageRef};

/// Bytes kept in memory for the single-pass upload; larger objects take the two-pass streaming path.
pub const INLINE_OBJECT_BYTES_MAX: usize = 16 * 1024 * 1024;

/// zstd level: fast enough for tiny VMs, 3-10x smaller SQLite pages.
pub const ZSTD_LEVEL: i32 = 3;

/// Emits an object's records, in ascending page id order, the same way each time it is called.
pub type RecordSource<'a> = dyn FnMut(&mut dyn FnMut(u64, &[u8]) -> io::Result<()>) -> io::Result<()> + 'a;

/// What an upload produced.
#[derive(Debug, Clone)]
pub struct Uploaded {
    pub key: ObjectKey,
    pub key_str: String,
    /// The HADBP trailer checksum (the chain value for changesets and base snapshots).
    pub checksum: u64,
    pub bytes: u64,
    /// False when the same object (same bytes) was already there: an earlier attempt of ours succeeded.
    pub created: bool,
}

/// Identity of an object to upload, minus its hash.
#[derive(Debug, Clone, Copy)]
pub struct ObjectMeta {
    pub generation: u64,
    pub seq: u64,
    pub commit_ms: u64,
    pub kind: Kind,
}

/// Objects of at least this many bytes before compression (a snapshot of a small database, a large changeset)
/// have an encoder of hundreds of KiB, up to ~1 MiB (see `encode`); smaller ones, tens of KiB.
const GATED_INPUT: u64 = 64 * 1024;
/// Objects above this are encoded without waiting: that takes seconds, and one large database's snapshot must not
/// hold up the others'.
const GATED_INPUT_MAX: u64 = 16 * 1024 * 1024;
/// Mid-size objects are encoded one at a time per process (a few ms each): a watch starting over a hundred
/// small databases snapshots several at once, and their encoders would otherwise be its peak memory.
static MID_SIZE_ENCODES: crate::semaphore::Semaphore = crate::semaphore::Semaphore::new(1);

/// Encodes HADBP records through zstd into `out`; returns the trailer checksum.
pub fn encode(out: &mut dyn Write, header: &Header, records: &mut RecordSource<'_>) -> io::Result<u64> {
    let mut z = zstd::stream::write::Encoder::new(out, ZSTD_LEVEL)?;
    // zstd sizes its window and match tables for an unknown input (2 MiB window, ~3 MiB per encoder); most
    // changesets are a few pages. Size them by what the header says is coming, so that a hundred databases
    // shipping at once do not each hold megabytes. Deterministic in the header: both passes of a large object
    // and every retry produce the same bytes (the same key).
    let window_log = window_log_for(header.page_count as u64 * header.page_size as u64);
    use zstd::stream::raw::CParameter;
    z.set_parameter(CParameter::WindowLog(window_log))?;
    // Match tables a quarter and an eighth of the window (level 3's own 17 and 16 from a 512 KiB window up): a
    // 100 KB snapshot's encoder holds ~0.6 MiB instead of ~1.3 MiB (four first snapshots run at once when a
    // watch starts), for objects 0-3% larger below 512 KiB (measured on SQLite pages with the zstd CLI).
    z.set_parameter(CParameter::HashLog((window_log - 2).clamp(6, 17)))?;
    z.set_parameter(CParameter::ChainLog((window_log - 3).clamp(6, 16)))?;
    let mut enc = hadbp::Encoder::new(z, header)?;
    records(&mut |id, data| enc.record(id, data))?;
    let (z, checksum) = enc.finish()?;
    z.finish()?;
    Ok(checksum)
}

/// The zstd window for an object of about `bytes`: the next power of two, between 1 KiB and zstd level 3's
/// usual 2 MiB.
fn window_log_for(bytes: u64) -> u32 {
    let ceil_log2 = 64 - bytes.saturating_sub(1).leading_zeros();
    ceil_log2.clamp(10, 21)
}

/// A writer that hashes and counts, keeping the bytes while they fit under a cap.
struct HashSink {
    sha: Sha256,
    len: u64,
    buf: Option<Vec<u8>>,
    cap: usize,
}

impl Write for HashSink {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.sha.update(data);
        self.len += data.len() as u64;
        if let Some(b) = &mut self.buf {
            if b.len() + data.len() > self.cap {
                self.buf = None;
            } else {
                b.extend_from_slice(data);
            }
        }
        Ok(data.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A writer that hashes what passes through to `inner`.
struct HashingWriter<W> {
    inner: W,
    sha: Sha256,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(data)?;
        self.sha.update(&data[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// An object encoded once (first pass): its key is known, its bytes are kept when small.
pub struct Prepared {
    pub key: ObjectKey,
    pub key_str: String,
    /// The HADBP trailer checksum (the chain value for changesets and base snapshots).
    pub checksum: u64,
    pub bytes: u64,
    inline: Option<Vec<u8>>,
}

/// First pass: encodes the records to learn the object's SHA-256 (and so its key) and its trailer checksum.
pub fn prepare(name: &str, meta: ObjectMeta, header: &Header, records: &mut RecordSource<'_>) -> Result<Prepared> {
    let mut sink = HashSink { sha: Sha256::new(), len: 0, buf: Some(Vec::new()), cap: INLINE_OBJECT_BYTES_MAX };
    let input = header.page_count as u64 * header.page_size as u64;
    let one_at_a_time = (GATED_INPUT..=GATED_INPUT_MAX).contains(&input).then(|| MID_SIZE_ENCODES.acquire());
    let checksum = encode(&mut sink, header, records).map_err(|e| Error::io("encoding object", e))?;
    drop(one_at_a_time);
    let sha256: [u8; 32] = sink.sha.finalize().into();
    let key = ObjectKey {
        generation: meta.generation,
        seq: meta.seq,
        commit_ms: meta.commit_ms,
        kind: meta.kind,
        sha256,
        compressed: true,
    };
    let key_str = key.format(name);
    Ok(Prepared { key, key_str, checksum, bytes: sink.len, inline: sink.buf })
}

impl Prepared {
    /// Second step: writes the object create-if-absent. Large objects are encoded again from `records`, which
    /// must produce the same bytes. An existing object under the same key holds the same bytes (the key carries
    /// their SHA-256): an earlier attempt of ours landed, which counts as success.
    pub fn put(&self, storage: &dyn Storage, header: &Header, records: &mut RecordSource<'_>) -> Result<Uploaded> {
        let outcome = match &self.inline {
            Some(buf) => put_bytes(storage, &self.key_str, buf)?,
            None => upload_streaming(storage, &self.key_str, &self.key.sha256, header, records)?,
        };
        Ok(self.uploaded(outcome))
    }

    /// [`Prepared::put`] for a database's loop: an object kept in memory is sent by the process's upload
    /// workers (`crate::uploads`) while this thread waits; a large one streams from this thread as in `put`.
    pub fn put_shared(
        mut self,
        storage: &StorageRef,
        header: &Header,
        records: &mut RecordSource<'_>,
    ) -> Result<Uploaded> {
        let Some(buf) = self.inline.take() else { return self.put(storage.as_ref(), header, records) };
        let (storage, key) = (std::sync::Arc::clone(storage), self.key_str.clone());
        let outcome = crate::uploads::run(move || put_bytes(storage.as_ref(), &key, &buf))
            .ok_or_else(|| Error::Other(format!("uploading {}: the upload worker failed", self.key_str)))??;
        Ok(self.uploaded(outcome))
    }

    fn uploaded(&self, outcome: PutOutcome) -> Uploaded {
        Uploaded {
            key: self.key.clone(),
            key_str: self.key_str.clone(),
            checksum: self.checksum,
            bytes: self.bytes,
            created: outcome == PutOutcome::Created,
        }
    }
}

/// Writes `bytes` create-if-absent under `key` (which carries their SHA-256). An object already there normally
/// holds these very bytes (an earlier attempt of ours landed), but a store may have kept a PUT that was cut off:
/// SeaweedFS stores an empty object when the client dies after sending the headers. So an existing object of
/// another size is damaged: it is replaced (the bytes are the same by construction), never counted as shipped.
fn put_bytes(storage: &dyn Storage, key: &str, bytes: &[u8]) -> crate::storage::Result<PutOutcome> {
    let outcome = storage.put_if_absent(key, &mut &bytes[..])?;
    if outcome == PutOutcome::AlreadyExists {
        let listed = crate::storage::list_all(storage, key, None)?;
        let size = listed.iter().find(|o| o.key == key).map(|o| o.size);
        if size != Some(bytes.len() as u64) {
            let found = size.map_or("nothing".to_string(), |n| format!("{n} bytes"));
            crate::log::warn(&format!(
                "object {key} was already stored with {found}, not {} bytes (an upload cut off earlier); replacing it",
                bytes.len()
            ));
            storage.put(key, &mut &bytes[..])?;
            return Ok(PutOutcome::Created);
        }
    }
    Ok(outcome)
}

/// Encodes and uploads one object create-if-absent under `name` (prepare, then put).
pub fn upload(
    storage: &dyn Storage,
    name: &str,
    meta: ObjectMeta,
    header: &Header,
    records: &mut RecordSource<'_>,
) -> Result<Uploaded> {
    prepare(name, meta, header, records)?.put(storage, header, records)
}

/// Second pass: encode into a pipe that an uploader thread reads from, hashing on the way. The encoder runs
/// on the calling thread (record sources may borrow thread-bound handles such as SQLite connections).
fn upload_streaming(
    storage: &dyn Storage,
    key_str: &str,
    sha256: &[u8; 32],
    header: &Header,
    records: &mut RecordSource<'_>,
) -> Result<PutOutcome> {
    let (mut reader, writer) = io::pipe().map_err(|e| Error::io("creating upload pipe", e))?;
    let (outcome, produced) = std::thread::scope(|s| {
        let uploader = std::thread::Builder::new()
            .name("walrust-upload".into())
            .spawn_scoped(s, move || storage.put_if_absent(key_str, &mut reader));
        let uploader = match uploader {
            Ok(u) => u,
            Err(e) => {
                return (
                    Err(crate::storage::StorageError::io("upload thread", e)),
                    Err(io::Error::other("no uploader")),
                )
            }
        };
        let produced = (|| -> io::Result<[u8; 32]> {
            let mut w = HashingWriter { inner: io::BufWriter::with_capacity(256 * 1024, writer), sha: Sha256::new() };
            encode(&mut w, header, records)?;
            w.flush()?;
            let HashingWriter { inner, sha } = w;
            drop(inner.into_inner().map_err(|e| e.into_error())?); // closes the pipe: end of body
            Ok(sha.finalize().into())
        })();
        // If encoding failed, the pipe's writer is dropped here, so the uploader sees a truncated body and fails.
        let outcome = uploader.join().unwrap_or_else(|_| {
            Err(crate::storage::StorageError::Transport { message: "upload thread panicked".into() })
        });
        (outcome, produced)
    });
    match (outcome, produced) {
        (Ok(o), Ok(sha)) if &sha == sha256 => Ok(o),
        (Ok(PutOutcome::Created), _) => {
            // The second pass differed from the first (the source changed) or failed: the key would lie.
            let _ = storage.delete_many(&[key_str.to_string()]);
            Err(Error::Interrupted(format!("object {key_str} changed while it was uploaded; not kept")))
        }
        (Ok(o), Ok(_)) => Ok(o),
        (Ok(_), Err(e)) => Err(Error::io(format!("encoding {key_str}"), e)),
        (Err(e), _) => Err(e.into()),
    }
}

/// A reader that hashes everything read through it.
pub struct HashingReader<R> {
    inner: R,
    sha: Sha256,
    len: u64,
    /// The object's size from the listing, when known: a body that ends sooner was cut off in transit.
    expected: Option<u64>,
    /// Set when reading the body failed in transit (an I/O error, or an early end): the object may be fine,
    /// the read was not. Decode errors after this are not corruption. Shared with the `ObjectStream`.
    transport_error: TransportCell,
}

/// Where a body reader records a failure in transit.
type TransportCell = std::sync::Arc<std::sync::Mutex<Option<String>>>;

fn take(cell: &TransportCell) -> Option<String> {
    cell.lock().unwrap_or_else(|p| p.into_inner()).take()
}

fn record(cell: &TransportCell, msg: String) {
    cell.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert(msg);
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = match self.inner.read(buf) {
            Ok(n) => n,
            Err(e) => {
                record(&self.transport_error, e.to_string());
                return Err(e);
            }
        };
        if n == 0 && !buf.is_empty() {
            if let Some(expected) = self.expected.filter(|&x| self.len < x) {
                let msg = format!("the body ended after {} of {expected} bytes", self.len);
                record(&self.transport_error, msg.clone());
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, msg));
            }
        }
        self.sha.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }
}

/// A GET of a listed object that failed: gone since the listing is corruption (a hole in the chain), anything
/// else is the storage's error.
fn get_error(key_str: &str, e: crate::storage::StorageError) -> Error {
    match e {
        crate::storage::StorageError::NotFound { .. } => {
            Error::Corrupt(format!("object {key_str} disappeared while it was read"))
        }
        other => Error::from(other).context(format!("reading {key_str}")),
    }
}

/// A read of `key_str` that failed in transit: transient, worth another GET (objects are immutable).
fn transport(key_str: &str, message: String) -> Error {
    Error::Storage {
        context: format!("reading {key_str}"),
        source: crate::storage::StorageError::Transport { message },
    }
}

/// Runs `f` (a whole read of one object) again, up to 3 times in all, while it fails in transit; the last error
/// otherwise. A corrupt object fails the same way every time and is reported at once.
pub fn with_retries<T>(key_str: &str, mut f: impl FnMut() -> Result<T>) -> Result<T> {
    let mut attempt = 0;
    loop {
        match f() {
            Err(e) if e.is_transient() && attempt < 2 => {
                attempt += 1;
                crate::log::warn(&format!("{e}; reading {key_str} again"));
                std::thread::sleep(std::time::Duration::from_millis(500 * attempt));
            }
            r => return r,
        }
    }
}

type Inner = zstd::stream::read::Decoder<'static, BufReader<HashingReader<Box<dyn Read + Send>>>>;

/// A verified, streaming view of one stored object.
pub struct ObjectStream {
    pub key: ObjectKey,
    pub key_str: String,
    dec: hadbp::Decoder<Inner>,
    finished: bool,
    transport: TransportCell,
    /// The database size in pages from the commit record, once read (see `next_page`).
    db_pages: Option<u32>,
}

impl ObjectStream {
    /// Opens the object at `key_str` (already parsed as `key`).
    pub fn open(storage: &dyn Storage, key: &ObjectKey, key_str: &str) -> Result<ObjectStream> {
        ObjectStream::open_sized(storage, key, key_str, None)
    }

    /// Opens a listed object: a body shorter than the listed size is a failed read (a transient storage error,
    /// see [`with_retries`]), not a corrupt object.
    pub fn open_entry(storage: &dyn Storage, entry: &crate::remote::Entry) -> Result<ObjectStream> {
        ObjectStream::open_sized(storage, &entry.key, &entry.key_str, Some(entry.size))
    }

    fn open_sized(storage: &dyn Storage, key: &ObjectKey, key_str: &str, size: Option<u64>) -> Result<ObjectStream> {
        let body = storage.get(key_str).map_err(|e| get_error(key_str, e))?;
        ObjectStream::from_reader_sized(key, key_str, body, size)
    }

    /// Opens a listed object that a read-ahead thread is downloading (`crate::prefetch`); checked exactly like
    /// [`ObjectStream::open_entry`].
    /// Opens `entry` through a fetch on a thread of `scope`, so that a body cut off in transit resumes with a
    /// ranged GET (crate::prefetch); directly when no thread can be started.
    pub fn open_resuming<'scope, 'env>(
        scope: &'scope std::thread::Scope<'scope, 'env>,
        storage: &'env dyn Storage,
        entry: &crate::remote::Entry,
    ) -> Result<ObjectStream> {
        match crate::prefetch::Fetch::start(scope, storage, &entry.key_str, entry.size) {
            Ok(f) => ObjectStream::from_fetch(entry, f),
            Err(_) => ObjectStream::open_entry(storage, entry),
        }
    }

    pub fn from_fetch(entry: &crate::remote::Entry, fetch: crate::prefetch::Fetch<'_>) -> Result<ObjectStream> {
        let body = fetch.open().map_err(|e| get_error(&entry.key_str, e))?;
        ObjectStream::from_reader_sized(&entry.key, &entry.key_str, Box::new(body), Some(entry.size))
    }

    /// A stream over `body`, the bytes of the object `key_str`.
    pub fn from_reader(key: &ObjectKey, key_str: &str, body: Box<dyn Read + Send>) -> Result<ObjectStream> {
        ObjectStream::from_reader_sized(key, key_str, body, None)
    }

    fn from_reader_sized(
        key: &ObjectKey,
        key_str: &str,
        body: Box<dyn Read + Send>,
        size: Option<u64>,
    ) -> Result<ObjectStream> {
        let cell = TransportCell::default();
        let hashing = HashingReader {
            inner: body,
            sha: Sha256::new(),
            len: 0,
            expected: size,
            transport_error: std::sync::Arc::clone(&cell),
        };
        if !key.compressed {
            return Err(Error::Corrupt(format!(
                "object {key_str} is corrupt: uncompressed objects are not written by this version"
            )));
        }
        let failed = |what: String| match take(&cell) {
            Some(t) => transport(key_str, t),
            None => Error::Corrupt(format!("object {key_str} is corrupt: {what}")),
        };
        let z = zstd::stream::read::Decoder::with_buffer(BufReader::with_capacity(64 * 1024, hashing))
            .map_err(|e| failed(e.to_string()))?;
        let dec = hadbp::Decoder::new(z).map_err(|e| failed(e.to_string()))?;
        Ok(ObjectStream {
            key: key.clone(),
            key_str: key_str.to_string(),
            dec,
            finished: false,
            transport: cell,
            db_pages: None,
        })
    }

    /// The transit failure seen while reading, if any (taken).
    fn transport_failure(&mut self) -> Option<Error> {
        take(&self.transport).map(|t| transport(&self.key_str, t))
    }

    pub fn header(&self) -> &Header {
        self.dec.header()
    }

    /// Stored (compressed) bytes of the object read so far (progress reporting).
    pub fn bytes_read(&mut self) -> u64 {
        self.dec.get_mut().get_mut().get_ref().len
    }

    /// The next record's page id, its data in `buf`; `None` after the last one, once the trailer checksum and
    /// the whole object's SHA-256 have been verified.
    pub fn next_record(&mut self, buf: &mut Vec<u8>) -> Result<Option<u64>> {
        if self.finished {
            return Ok(None);
        }
        match self.dec.next_record(buf) {
            Ok(Some(id)) => Ok(Some(id)),
            Ok(None) => {
                self.finished = true;
                self.verify_hash()?;
                Ok(None)
            }
            Err(e) => Err(self
                .transport_failure()
                .unwrap_or_else(|| Error::Corrupt(format!("object {} is corrupt: {e}", self.key_str)))),
        }
    }

    /// The next page of the object, checked: its number is returned and its `page_size` bytes are in `buf`.
    /// The commit record (the database size, [`ObjectStream::db_pages`]) must come before any page.
    pub fn next_page(&mut self, buf: &mut Vec<u8>, page_size: u32) -> Result<Option<u32>> {
        let corrupt = |key: &str, what: String| Error::Corrupt(format!("object {key} is corrupt: {what}"));
        loop {
            let Some(id) = self.next_record(buf)? else { return Ok(None) };
            if id == hadbp::META_PAGE_ID {
                self.db_pages =
                    Some(hadbp::parse_commit_record(buf).map_err(|e| corrupt(&self.key_str, e.to_string()))?);
                continue;
            }
            if self.db_pages.is_none() {
                return Err(corrupt(&self.key_str, "no commit record".into()));
            }
            let pgno = u32::try_from(id).map_err(|_| corrupt(&self.key_str, format!("page id {id} out of range")))?;
            if buf.len() != page_size as usize {
                return Err(corrupt(&self.key_str, format!("page {pgno} has {} bytes", buf.len())));
            }
            return Ok(Some(pgno));
        }
    }

    /// The database size in pages after this object (its commit record), once read.
    pub fn db_pages(&self) -> Option<u32> {
        self.db_pages
    }

    /// The trailer checksum, once the stream has ended.
    pub fn checksum(&self) -> Option<u64> {
        self.dec.checksum()
    }

    fn verify_hash(&mut self) -> Result<()> {
        let key_str = self.key_str.clone();
        let corrupt = |what: String| Error::Corrupt(format!("object {key_str} is corrupt: {what}"));
        let z = self.dec.get_mut();
        // The zstd frame has ended: anything after it in the object is an error, and the rest must be hashed.
        let mut rest = [0u8; 1];
        match z.read(&mut rest) {
            Ok(0) => {}
            Ok(_) => return Err(corrupt("bytes after the end of the compressed stream".into())),
            Err(e) => {
                return Err(match take(&self.transport) {
                    Some(t) => transport(&key_str, t),
                    None => corrupt(e.to_string()),
                })
            }
        }
        let buffered = z.get_mut();
        let mut tail = Vec::new();
        if let Err(e) = buffered.read_to_end(&mut tail) {
            return Err(match take(&self.transport) {
                Some(t) => transport(&key_str, t),
                None => corrupt(e.to_string()),
            });
        }
        if !tail.is_empty() {
            return Err(corrupt("bytes after the end of the compressed stream".into()));
        }
        let hashing = buffered.get_mut();
        let actual: [u8; 32] = std::mem::take(&mut hashing.sha).finalize().into();
        if actual != self.key.sha256 {
            return Err(corrupt(format!(
                "sha-256 {} does not match the key's {}",
                crate::keys::to_hex(&actual),
                crate::keys::to_hex(&self.key.sha256)
            )));
        }
        Ok(())
    }
}
