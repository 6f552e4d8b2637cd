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
use crate::storage::{PutOutcome, Storage};

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

/// Encodes HADBP records through zstd into `out`; returns the trailer checksum.
pub fn encode(out: &mut dyn Write, header: &Header, records: &mut RecordSource<'_>) -> io::Result<u64> {
    let z = zstd::stream::write::Encoder::new(out, ZSTD_LEVEL)?;
    let mut enc = hadbp::Encoder::new(z, header)?;
    records(&mut |id, data| enc.record(id, data))?;
    let (z, checksum) = enc.finish()?;
    z.finish()?;
    Ok(checksum)
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
    let checksum = encode(&mut sink, header, records).map_err(|e| Error::io("encoding object", e))?;
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
            Some(buf) => storage.put_if_absent(&self.key_str, &mut &buf[..])?,
            None => upload_streaming(storage, &self.key_str, &self.key.sha256, header, records)?,
        };
        Ok(Uploaded {
            key: self.key.clone(),
            key_str: self.key_str.clone(),
            checksum: self.checksum,
            bytes: self.bytes,
            created: outcome == PutOutcome::Created,
        })
    }
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
            Err(Error::Other(format!("object {key_str} changed while it was uploaded; not kept")))
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
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.sha.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }
}

type Inner = zstd::stream::read::Decoder<'static, BufReader<HashingReader<Box<dyn Read + Send>>>>;

/// A verified, streaming view of one stored object.
pub struct ObjectStream {
    pub key: ObjectKey,
    pub key_str: String,
    dec: hadbp::Decoder<Inner>,
    finished: bool,
}

impl ObjectStream {
    /// Opens the object at `key_str` (already parsed as `key`).
    pub fn open(storage: &dyn Storage, key: &ObjectKey, key_str: &str) -> Result<ObjectStream> {
        let body = storage.get(key_str).map_err(|e| match e {
            crate::storage::StorageError::NotFound { .. } => {
                Error::Corrupt(format!("object {key_str} disappeared while it was read"))
            }
            other => Error::from(other).context(format!("reading {key_str}")),
        })?;
        ObjectStream::from_reader(key, key_str, body)
    }

    pub fn from_reader(key: &ObjectKey, key_str: &str, body: Box<dyn Read + Send>) -> Result<ObjectStream> {
        let corrupt = |what: String| Error::Corrupt(format!("object {key_str} is corrupt: {what}"));
        let hashing = HashingReader { inner: body, sha: Sha256::new(), len: 0 };
        if !key.compressed {
            return Err(corrupt("uncompressed objects are not written by this version".into()));
        }
        let z = zstd::stream::read::Decoder::with_buffer(BufReader::with_capacity(64 * 1024, hashing))
            .map_err(|e| corrupt(e.to_string()))?;
        let dec = hadbp::Decoder::new(z).map_err(|e| corrupt(e.to_string()))?;
        Ok(ObjectStream { key: key.clone(), key_str: key_str.to_string(), dec, finished: false })
    }

    pub fn header(&self) -> &Header {
        self.dec.header()
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
            Err(e) => Err(Error::Corrupt(format!("object {} is corrupt: {e}", self.key_str))),
        }
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
            Err(e) => return Err(corrupt(e.to_string())),
        }
        let buffered = z.get_mut();
        let mut tail = Vec::new();
        buffered.read_to_end(&mut tail).map_err(|e| corrupt(e.to_string()))?;
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
