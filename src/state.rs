//! The local state file `DB-walrust` beside each database: what walrust last shipped and where that was in
//! the WAL, so that a restart can prove continuity and resume the chain instead of taking a new snapshot.
//!
//! It is a cache, never the source of truth: it can never make walrust ship wrong data, because resuming also
//! requires the remote head to be exactly the object named here and the WAL to still hold the frames named here.
//! A state that cannot be used while the bucket holds this name's backups is a fencing question, not a cache
//! miss: watch refuses (exit 5) unless `--new-generation`, because another machine may own those backups.
//!
//! Writes are atomic and durable (temp file, fsync, rename, fsync directory): the `pending` record is on disk
//! before the upload it names starts, so a power loss can never leave a state older than the remote head.
// nanoserde's derived JSON parser trips clippy::question_mark in its generated code.
#![allow(clippy::question_mark)]

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use nanoserde::{DeJson, SerJson};

use crate::error::{Error, Result};
use crate::wal::{WalCursor, WalHeader};

pub const STATE_VERSION: u32 = 1;

/// Where the WAL stood after the last shipped object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, DeJson, SerJson)]
pub struct WalPosition {
    pub salt1: u32,
    pub salt2: u32,
    pub ckpt_seq: u32,
    pub frames: u32,
    pub checksum0: u32,
    pub checksum1: u32,
}

impl WalPosition {
    pub fn new(h: &WalHeader, c: &WalCursor) -> Self {
        WalPosition {
            salt1: h.salt1,
            salt2: h.salt2,
            ckpt_seq: h.ckpt_seq,
            frames: c.frames,
            checksum0: c.checksum[0],
            checksum1: c.checksum[1],
        }
    }

    pub fn cursor(&self) -> WalCursor {
        WalCursor { frames: self.frames, checksum: [self.checksum0, self.checksum1] }
    }

    pub fn same_cycle(&self, h: &WalHeader) -> bool {
        self.salt1 == h.salt1 && self.salt2 == h.salt2 && self.ckpt_seq == h.ckpt_seq
    }
}

/// Identity of the database file at a moment (used after a restore, when there is no WAL yet).
#[derive(Debug, Clone, Copy, PartialEq, Eq, DeJson, SerJson)]
pub struct FileStamp {
    pub size: u64,
    pub mtime_ns: u64,
    pub inode: u64,
}

impl FileStamp {
    pub fn of(path: &Path) -> io::Result<FileStamp> {
        use std::os::unix::fs::MetadataExt;
        let m = fs::metadata(path)?;
        let mtime_ns = (m.mtime() as u64).wrapping_mul(1_000_000_000).wrapping_add(m.mtime_nsec() as u64);
        Ok(FileStamp { size: m.len(), mtime_ns, inode: m.ino() })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, DeJson, SerJson)]
pub struct LocalState {
    pub version: u32,
    pub name: String,
    /// The storage location (`describe()`), so that a state for another bucket is not taken for this one.
    pub location: String,
    pub generation: u64,
    pub seq: u64,
    /// Chain value after `seq`.
    pub chain: u64,
    /// Key of the newest object of the chain (the remote head when nothing else wrote).
    pub head_key: String,
    /// WAL position after `seq`; None right after a restore (no WAL yet).
    pub wal: Option<WalPosition>,
    /// With `wal` None: the database file as the restore left it.
    pub db_stamp: Option<FileStamp>,
    pub page_size: u32,
    /// Commit time of the newest snapshot of this generation, ms since the epoch.
    pub last_snapshot_ms: u64,
    /// An upload that was started but not confirmed: if the remote head is this key, it landed.
    pub pending: Option<Pending>,
}

#[derive(Debug, Clone, PartialEq, Eq, DeJson, SerJson)]
pub struct Pending {
    pub key: String,
    pub seq: u64,
    pub chain: u64,
    pub wal: WalPosition,
    /// The object's size: a head of another size under this key is a cut-off upload a store kept, not ours
    /// landed. 0 when unknown (state files written before this field).
    #[nserde(default)]
    pub bytes: u64,
}

/// `app.db` -> `app.db-walrust`.
pub fn state_path(db: &Path) -> PathBuf {
    let mut s = db.as_os_str().to_os_string();
    s.push("-walrust");
    PathBuf::from(s)
}

impl LocalState {
    /// Reads the state; `Ok(None)` when there is none or it cannot be used (corrupt, other version).
    pub fn load(path: &Path) -> Result<Option<LocalState>> {
        Ok(load_json::<LocalState>(path)?.filter(|s| s.version == STATE_VERSION))
    }

    /// Writes the state durably (see [`write_durably`]): the rename must be durable before the upload it
    /// announces (see `pending`).
    pub fn save(&self, path: &Path) -> Result<()> {
        write_durably(path, self.serialize_json().as_bytes())
    }
}

/// Reads a small JSON file; `Ok(None)` when it does not exist or does not parse (a cache to rebuild, not an
/// error). Other read errors are errors.
pub fn load_json<T: nanoserde::DeJson>(path: &Path) -> Result<Option<T>> {
    match fs::read_to_string(path) {
        Ok(text) => Ok(T::deserialize_json(&text).ok()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(format!("reading {}", path.display()), e)),
    }
}

/// Replaces `path` with `bytes` durably: a temp file beside it, fsync, rename over it, fsync the directory. A
/// crash leaves the old file or the new one, never a mix.
pub fn write_durably(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut tmp = path.as_os_str().to_os_string();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let write = || -> io::Result<()> {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, path)?;
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        fs::File::open(dir)?.sync_all()
    };
    write().map_err(|e| {
        let _ = fs::remove_file(&tmp);
        Error::io(format!("writing {}", path.display()), e)
    })
}

/// Takes an exclusive flock on `path` (created if missing), held while the returned file is open.
/// `held_by_another` words the error (exit 5) when another process holds it.
pub fn lock_exclusive(path: &Path, held_by_another: impl FnOnce() -> String) -> Result<fs::File> {
    let f = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(|e| Error::io(format!("creating {}", path.display()), e))?;
    match f.try_lock() {
        Ok(()) => Ok(f),
        Err(fs::TryLockError::WouldBlock) => Err(Error::Fenced(held_by_another())),
        Err(fs::TryLockError::Error(e)) => Err(Error::io(format!("locking {}", path.display()), e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_ignores_garbage() {
        let dir = std::env::temp_dir().join(format!("walrust-state-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let p = dir.join("x.db-walrust");
        assert_eq!(LocalState::load(&p).unwrap(), None);
        let s = LocalState {
            version: STATE_VERSION,
            name: "x".into(),
            location: "file:///b".into(),
            generation: u64::MAX - 3,
            seq: 42,
            chain: 0xdead_beef_cafe_f00d,
            head_key: "x/0/1".into(),
            wal: Some(WalPosition { salt1: 1, salt2: u32::MAX, ckpt_seq: 3, frames: 9, checksum0: 7, checksum1: 8 }),
            db_stamp: None,
            page_size: 4096,
            last_snapshot_ms: 1,
            pending: None,
        };
        s.save(&p).unwrap();
        assert_eq!(LocalState::load(&p).unwrap(), Some(s));
        fs::write(&p, "{not json").unwrap();
        assert_eq!(LocalState::load(&p).unwrap(), None);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_pending_record_without_bytes_still_loads() {
        let wal = WalPosition { salt1: 1, salt2: 2, ckpt_seq: 3, frames: 4, checksum0: 5, checksum1: 6 };
        let with = Pending { key: "x/k".into(), seq: 9, chain: 10, wal, bytes: 77 };
        let json = with.serialize_json();
        assert_eq!(Pending::deserialize_json(&json).unwrap(), with);
        // As written before the field existed: loads, with the size unknown (0: not checked).
        let old = json.replace(",\"bytes\":77", "");
        assert!(!old.contains("bytes"), "{old}");
        assert_eq!(Pending::deserialize_json(&old).unwrap(), Pending { bytes: 0, ..with });
    }
}
