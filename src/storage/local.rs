//! Local-directory backend (`file:///abs/dir`): the same contract as S3, on a file system.
//!
//! Each key is a file under the root (`/` in a key is a directory separator). Writes go to a temp file in
//! the target's directory, are fsynced, then renamed (`put`) or hard-linked (`put_if_absent`: `link(2)`
//! fails with EEXIST atomically, so two processes racing for a key get exactly one winner); the directory
//! is fsynced after. Temp files are named `.tmp-*` and are never listed.

use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::{
    ListPage, ObjectInfo, ObjectReader, PutOutcome, Result, Storage, StorageError, DELETE_BATCH_KEYS_MAX,
    LIST_PAGE_KEYS_MAX,
};

const TMP_PREFIX: &str = ".tmp-";

/// The local-directory backend: each key is a file under the root directory (see the module documentation).
#[derive(Debug)]
pub struct LocalStorage {
    root: PathBuf,
}

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

impl LocalStorage {
    /// Opens the directory `root`; with `create`, makes it (and its parents) when missing. Without, a missing
    /// directory is [`StorageError::NoSuchBucket`], like a missing S3 bucket.
    pub fn open(root: &Path, create: bool) -> Result<Self> {
        match fs::metadata(root) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => return Err(StorageError::Config(format!("{} is not a directory", root.display()))),
            Err(e) if e.kind() == io::ErrorKind::NotFound && create => {
                fs::create_dir_all(root).map_err(|e| StorageError::io(root.display(), e))?
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(StorageError::NoSuchBucket { bucket: root.display().to_string() })
            }
            Err(e) => return Err(StorageError::io(root.display(), e)),
        }
        Ok(LocalStorage { root: root.to_path_buf() })
    }

    fn path_of(&self, key: &str) -> Result<PathBuf> {
        check_key(key)?;
        Ok(self.root.join(key))
    }

    /// Writes the body to a fresh, fsynced temp file beside `dest`.
    fn write_temp(&self, dest: &Path, body: &mut dyn Read) -> Result<PathBuf> {
        let dir = dest.parent().unwrap_or(&self.root);
        fs::create_dir_all(dir).map_err(|e| StorageError::io(dir.display(), e))?;
        let tmp =
            dir.join(format!("{TMP_PREFIX}{}-{}", std::process::id(), TMP_COUNTER.fetch_add(1, Ordering::Relaxed)));
        let result = (|| -> io::Result<()> {
            let mut f = File::create(&tmp)?;
            io::copy(body, &mut f)?;
            f.flush()?;
            f.sync_all()
        })();
        if let Err(e) = result {
            let _ = fs::remove_file(&tmp);
            return Err(StorageError::io(dest.display(), e));
        }
        Ok(tmp)
    }
}

fn check_key(key: &str) -> Result<()> {
    let ok = !key.is_empty()
        && !key.starts_with('/')
        && !key.ends_with('/')
        && key.split('/').all(|s| !s.is_empty() && s != "." && s != ".." && !s.starts_with(TMP_PREFIX));
    if ok {
        Ok(())
    } else {
        Err(StorageError::Config(format!("invalid object key '{key}'")))
    }
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(|e| StorageError::io(dir.display(), e))
}

fn not_found_or(key: &str, path: &Path, e: io::Error) -> StorageError {
    if e.kind() == io::ErrorKind::NotFound {
        StorageError::NotFound { key: key.to_string() }
    } else {
        StorageError::io(path.display(), e)
    }
}

impl Storage for LocalStorage {
    fn put(&self, key: &str, body: &mut dyn Read) -> Result<()> {
        let dest = self.path_of(key)?;
        let tmp = self.write_temp(&dest, body)?;
        if let Err(e) = fs::rename(&tmp, &dest) {
            let _ = fs::remove_file(&tmp);
            return Err(StorageError::io(dest.display(), e));
        }
        sync_dir(dest.parent().unwrap_or(&self.root))
    }

    fn put_if_absent(&self, key: &str, body: &mut dyn Read) -> Result<PutOutcome> {
        let dest = self.path_of(key)?;
        if dest.exists() {
            return Ok(PutOutcome::AlreadyExists);
        }
        let tmp = self.write_temp(&dest, body)?;
        let linked = fs::hard_link(&tmp, &dest);
        let _ = fs::remove_file(&tmp);
        match linked {
            Ok(()) => {
                sync_dir(dest.parent().unwrap_or(&self.root))?;
                Ok(PutOutcome::Created)
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(PutOutcome::AlreadyExists),
            Err(e) => Err(StorageError::io(dest.display(), e)),
        }
    }

    fn get(&self, key: &str) -> Result<ObjectReader> {
        let path = self.path_of(key)?;
        let f = File::open(&path).map_err(|e| not_found_or(key, &path, e))?;
        Ok(Box::new(io::BufReader::with_capacity(64 * 1024, f)))
    }

    fn get_range(&self, key: &str, offset: u64, len: u64) -> Result<ObjectReader> {
        let path = self.path_of(key)?;
        let mut f = File::open(&path).map_err(|e| not_found_or(key, &path, e))?;
        let size = f.metadata().map_err(|e| StorageError::io(path.display(), e))?.len();
        if offset >= size && !(offset == 0 && size == 0) {
            // S3 answers 416 InvalidRange here.
            return Err(StorageError::Service {
                status: 416,
                code: "InvalidRange".into(),
                message: format!("offset {offset} is beyond the object's {size} bytes"),
                key: key.to_string(),
            });
        }
        f.seek(SeekFrom::Start(offset)).map_err(|e| StorageError::io(path.display(), e))?;
        Ok(Box::new(io::BufReader::with_capacity(64 * 1024, f.take(len))))
    }

    fn list_page(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        delimiter: bool,
        token: Option<&str>,
    ) -> Result<ListPage> {
        // The deepest directory that holds every key with this prefix.
        let dir_part = match prefix.rfind('/') {
            Some(i) => &prefix[..i],
            None => "",
        };
        if dir_part.split('/').any(|s| s == "..") {
            return Err(StorageError::Config(format!("invalid prefix '{prefix}'")));
        }
        let base = if dir_part.is_empty() { self.root.clone() } else { self.root.join(dir_part) };
        let mut keys: Vec<ObjectInfo> = Vec::new();
        let mut prefixes: Vec<String> = Vec::new();
        // The effective lower bound: the continuation token is the last key (or prefix) already returned.
        let after = match (token, start_after) {
            (Some(t), _) => Some(t),
            (None, s) => s,
        };
        walk(&base, dir_part, &mut |key: String, size: u64| {
            if !key.starts_with(prefix) {
                return;
            }
            if delimiter {
                if let Some(i) = key[prefix.len()..].find('/') {
                    let p = key[..prefix.len() + i + 1].to_string();
                    if after.is_none_or(|a| p.as_str() > a) && !prefixes.contains(&p) {
                        prefixes.push(p);
                    }
                    return;
                }
            }
            if after.is_none_or(|a| key.as_str() > a) {
                keys.push(ObjectInfo { key, size });
            }
        })?;
        // Merge keys and prefixes in one key order and cut the page.
        let mut entries: Vec<(String, Option<u64>)> =
            keys.into_iter().map(|o| (o.key, Some(o.size))).chain(prefixes.into_iter().map(|p| (p, None))).collect();
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        let more = entries.len() > LIST_PAGE_KEYS_MAX;
        entries.truncate(LIST_PAGE_KEYS_MAX);
        let next = if more { entries.last().map(|e| e.0.clone()) } else { None };
        let mut page = ListPage { next, ..Default::default() };
        for (k, size) in entries {
            match size {
                Some(size) => page.objects.push(ObjectInfo { key: k, size }),
                None => page.common_prefixes.push(k),
            }
        }
        Ok(page)
    }

    fn delete_many(&self, keys: &[String]) -> Result<()> {
        for chunk in keys.chunks(DELETE_BATCH_KEYS_MAX) {
            let mut dirs: Vec<PathBuf> = Vec::new();
            for key in chunk {
                let path = self.path_of(key)?;
                match fs::remove_file(&path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(StorageError::io(path.display(), e)),
                }
                if let Some(d) = path.parent() {
                    if !dirs.iter().any(|x| x == d) {
                        dirs.push(d.to_path_buf());
                    }
                }
            }
            for d in dirs {
                sync_dir(&d)?;
                // Remove directories emptied by the delete, up to the root (ignore races and non-empty).
                let mut cur = d;
                while cur != self.root && fs::remove_dir(&cur).is_ok() {
                    match cur.parent() {
                        Some(p) => cur = p.to_path_buf(),
                        None => break,
                    }
                }
            }
        }
        Ok(())
    }

    fn describe(&self) -> String {
        format!("file://{}", self.root.display())
    }
}

/// Calls `f(key, size)` for every file below `dir` (whose key prefix is `rel`), skipping temp files.
fn walk(dir: &Path, rel: &str, f: &mut dyn FnMut(String, u64)) -> Result<()> {
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(StorageError::io(dir.display(), e)),
    };
    for entry in rd {
        let entry = entry.map_err(|e| StorageError::io(dir.display(), e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.starts_with(TMP_PREFIX) {
            continue;
        }
        let key = if rel.is_empty() { name.to_string() } else { format!("{rel}/{name}") };
        let ft = entry.file_type().map_err(|e| StorageError::io(entry.path().display(), e))?;
        if ft.is_dir() {
            walk(&entry.path(), &key, f)?;
        } else if ft.is_file() {
            let size = entry.metadata().map_err(|e| StorageError::io(entry.path().display(), e))?.len();
            f(key, size);
        }
    }
    Ok(())
}
