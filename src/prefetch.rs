//! Reading stored objects ahead of their use: restore asks for the next few objects while it applies the
//! current one, so that a chain of many small changesets costs one round trip's latency in all rather than one
//! per object, and a large object's download overlaps its decompression.
//!
//! Each fetch is one thread (scoped: it cannot outlive the storage it borrows) that sends a GET and reads the
//! body into a bounded queue of chunks. Memory stays bounded: at most `CHUNKS_QUEUED` chunks of `CHUNK` bytes
//! per fetch, and the caller bounds how many fetches run at once. Nothing is verified here: the bytes go
//! through the same `ObjectStream` checks (SHA-256 against the key, size against the listing) as a direct
//! read. A body cut off in transit is resumed with a ranged GET from where it broke (objects are immutable and
//! the SHA-256 covers the stitched bytes); a fetch that still fails is read again from its start
//! (`object::with_retries`). `verify` reads each object through a fetch too, for the resumes.

use std::io::{self, Read};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::thread::{Scope, ScopedJoinHandle};
use std::time::Duration;

use crate::storage::{Storage, StorageError};

/// Bytes per chunk read from a body.
const CHUNK: usize = 256 * 1024;
/// Chunks a fetch reads ahead of its consumer (1 MiB per fetch).
const CHUNKS_QUEUED: usize = 4;
/// Times a body cut off in transit is resumed (a ranged GET from where it broke) before the reader sees the
/// failure (and `object::with_retries` reads the whole object again).
const RESUMES_MAX: u32 = 5;

enum Msg {
    /// The GET was answered: its body follows (or the error that stopped it).
    Opened(Result<(), StorageError>),
    Data(Vec<u8>),
    /// The body failed in transit.
    Failed(io::Error),
    End,
}

/// An object being read ahead by its own thread.
pub struct Fetch<'scope> {
    rx: Receiver<Msg>,
    _thread: ScopedJoinHandle<'scope, ()>,
}

impl<'scope> Fetch<'scope> {
    /// Starts reading `key` (`size` bytes, from the listing) from `storage` on a thread of `scope`.
    pub fn start<'env>(
        scope: &'scope Scope<'scope, 'env>,
        storage: &'env dyn Storage,
        key: &str,
        size: u64,
    ) -> io::Result<Fetch<'scope>> {
        let (tx, rx) = sync_channel(CHUNKS_QUEUED);
        let key = key.to_string();
        let thread = std::thread::Builder::new()
            .name("walrust-fetch".into())
            .stack_size(256 * 1024)
            .spawn_scoped(scope, move || fetch(storage, &key, size, &tx))?;
        Ok(Fetch { rx, _thread: thread })
    }

    /// Waits for the answer to the GET: the body as a reader, or the storage's error.
    pub fn open(self) -> Result<Body, StorageError> {
        match self.rx.recv() {
            Ok(Msg::Opened(Ok(()))) => Ok(Body { rx: Some(self.rx), chunk: Vec::new(), at: 0 }),
            Ok(Msg::Opened(Err(e))) => Err(e),
            _ => Err(StorageError::Transport { message: "the read-ahead thread ended without an answer".into() }),
        }
    }
}

fn fetch(storage: &dyn Storage, key: &str, size: u64, tx: &SyncSender<Msg>) {
    let mut body = match storage.get(key) {
        Ok(b) => b,
        Err(e) => {
            let _ = tx.send(Msg::Opened(Err(e)));
            return;
        }
    };
    if tx.send(Msg::Opened(Ok(()))).is_err() {
        return;
    }
    let mut got = 0u64; // bytes of the object received so far (sent, or in `chunk`)
    let mut resumes = 0u32;
    let mut chunk = vec![0u8; CHUNK];
    let mut filled = 0;
    loop {
        let cut = match body.read(&mut chunk[filled..]) {
            Ok(0) if got >= size => {
                chunk.truncate(filled);
                if filled > 0 && tx.send(Msg::Data(chunk)).is_err() {
                    return;
                }
                let _ = tx.send(Msg::End);
                return;
            }
            Ok(0) => {
                io::Error::new(io::ErrorKind::UnexpectedEof, format!("the body ended after {got} of {size} bytes"))
            }
            Ok(n) => {
                filled += n;
                got += n as u64;
                if filled == CHUNK {
                    if tx.send(Msg::Data(std::mem::replace(&mut chunk, vec![0u8; CHUNK]))).is_err() {
                        return; // the consumer is gone
                    }
                    filled = 0;
                }
                continue;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => e,
        };
        // Cut off in transit: the object is immutable, so the rest is asked for from where it broke (its
        // SHA-256, checked by the reader, covers the stitched body). After RESUMES_MAX the reader sees the error.
        let resumed = if resumes < RESUMES_MAX {
            resumes += 1;
            std::thread::sleep(Duration::from_millis(100 << resumes.min(5)));
            storage.get_range(key, got, size - got).ok()
        } else {
            None
        };
        match resumed {
            Some(b) => body = b,
            None => {
                chunk.truncate(filled);
                if filled > 0 {
                    let _ = tx.send(Msg::Data(chunk));
                }
                let _ = tx.send(Msg::Failed(cut));
                return;
            }
        }
    }
}

/// The body of a fetched object, read from the queue its thread fills (the thread itself belongs to the scope,
/// which joins it).
pub struct Body {
    rx: Option<Receiver<Msg>>,
    chunk: Vec<u8>,
    at: usize,
}

impl Read for Body {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.at == self.chunk.len() {
            let Some(rx) = &self.rx else { return Ok(0) };
            match rx.recv() {
                Ok(Msg::Data(c)) => {
                    self.chunk = c;
                    self.at = 0;
                }
                Ok(Msg::End) => {
                    self.rx = None;
                    return Ok(0);
                }
                Ok(Msg::Failed(e)) => {
                    self.rx = None;
                    return Err(e);
                }
                Ok(Msg::Opened(_)) | Err(_) => {
                    self.rx = None;
                    return Err(io::Error::other("the read-ahead thread ended early"));
                }
            }
        }
        let n = buf.len().min(self.chunk.len() - self.at);
        buf[..n].copy_from_slice(&self.chunk[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{faulty::Faulty, local::LocalStorage};

    #[test]
    fn a_fetched_body_is_the_stored_object_and_a_missing_key_is_not_found() {
        let dir = std::env::temp_dir().join(format!("walrust-prefetch-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let storage = LocalStorage::open(&dir, true).unwrap();
        // Several chunks and a partial one, so that chunk boundaries are crossed.
        let data: Vec<u8> = (0..(CHUNK * 5 + 1234)).map(|i| (i * 7 % 251) as u8).collect();
        storage.put("a/obj", &mut &data[..]).unwrap();
        std::thread::scope(|s| {
            let f = Fetch::start(s, &storage, "a/obj", data.len() as u64).unwrap();
            let mut got = Vec::new();
            let mut body = f.open().unwrap();
            let mut small = [0u8; 1000];
            loop {
                let n = body.read(&mut small).unwrap();
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&small[..n]);
            }
            assert_eq!(got, data);
            let missing = Fetch::start(s, &storage, "a/none", 10).unwrap();
            assert!(matches!(missing.open(), Err(StorageError::NotFound { .. })));
            // A consumer that stops early does not block the thread (the scope ends).
            let f = Fetch::start(s, &storage, "a/obj", data.len() as u64).unwrap();
            let mut body = f.open().unwrap();
            assert!(body.read(&mut small).unwrap() > 0);
        });
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_body_cut_off_in_transit_is_resumed_from_where_it_broke_and_fails_after_too_many_cuts() {
        let dir = std::env::temp_dir().join(format!("walrust-prefetch-cut-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let data: Vec<u8> = (0..1_000_000u32).map(|i| (i * 13 % 253) as u8).collect();
        let inner = LocalStorage::open(&dir, true).unwrap();
        inner.put("o", &mut &data[..]).unwrap();
        let read_all = |cut: u64| {
            let storage = Faulty::new(LocalStorage::open(&dir, true).unwrap());
            storage.cut_bodies_after.store(cut, std::sync::atomic::Ordering::SeqCst);
            let r = std::thread::scope(|s| {
                let mut body = Fetch::start(s, &storage, "o", data.len() as u64).unwrap().open().unwrap();
                let mut got = Vec::new();
                body.read_to_end(&mut got).map(|_| got)
            });
            (r, storage.gets.load(std::sync::atomic::Ordering::SeqCst))
        };
        // Cut every 300 000 bytes: three resumes, the exact bytes.
        let (got, gets) = read_all(300_000);
        assert_eq!(got.unwrap(), data);
        assert_eq!(gets, 4);
        // Cut every 100 000 bytes: more cuts than resumes allowed; the reader sees the failure.
        let (got, gets) = read_all(100_000);
        assert!(got.is_err());
        assert_eq!(gets, 1 + RESUMES_MAX as usize);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
