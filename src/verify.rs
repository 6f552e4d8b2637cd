//! Verify: download and check every stored object of a database (SHA-256, decode, chain), rebuild the newest
//! state (or a point in time) in a temp file and run `PRAGMA integrity_check`. Nothing is written beside it.

use std::fs::{self, OpenOptions};
use std::path::PathBuf;

use crate::error::{Error, Result};
use crate::keys::Kind;
use crate::object::ObjectStream;
use crate::remote::{self, Entry};
use crate::restore::{self, Target};
use crate::storage::Storage;

/// What a verification covered.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Generations checked (every one stored for the name).
    pub generations: usize,
    /// Objects downloaded and checked, in all generations.
    pub objects: usize,
    /// Stored (compressed) size of those objects, in bytes.
    pub bytes: u64,
    /// The restore point rebuilt and integrity-checked.
    pub seq: u64,
    /// Commit time of that restore point, ms since the Unix epoch.
    pub commit_ms: u64,
}

/// Checks every object of `name`, then rebuilds `target` and integrity-checks it.
pub fn verify(storage: &dyn Storage, name: &str, target: Target) -> Result<Report> {
    let gens = remote::generations(storage, name)?;
    if gens.is_empty() {
        return Err(Error::NotFound(format!("no backups of '{name}' in {}", storage.describe())));
    }
    let mut report = Report { generations: gens.len(), ..Default::default() };
    for &g in &gens {
        let objs = remote::objects(storage, name, g, None)?;
        verify_generation(storage, &objs, &mut report)?;
    }
    // Rebuild the point and integrity-check it.
    let plan = restore::plan(storage, name, target)?;
    let dir = std::env::temp_dir();
    let tmp = dir.join(format!("walrust-verify-{}-{}.db", name, std::process::id()));
    let result = (|| -> Result<()> {
        let file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&tmp)
            .map_err(|e| Error::io(format!("creating {}", tmp.display()), e))?;
        let applied = restore::apply(storage, &plan, &file, &tmp)?;
        file.set_len(applied.db_pages as u64 * applied.page_size as u64)
            .map_err(|e| Error::io(format!("writing {}", tmp.display()), e))?;
        drop(file);
        restore::integrity_check(&tmp)
    })();
    for suffix in ["", "-wal", "-shm"] {
        let mut p = tmp.clone().into_os_string();
        p.push(suffix);
        let _ = fs::remove_file(PathBuf::from(p));
    }
    result?;
    report.seq = plan.seq;
    report.commit_ms = plan.commit_ms;
    Ok(report)
}

/// Whether the generation holds a mid-generation snapshot at `seq`.
fn snapshot_at(objs: &[Entry], seq: u64) -> bool {
    objs.iter().any(|o| o.key.kind == Kind::Snapshot && o.key.seq == seq)
}

/// Decodes every object of one generation, checking hashes, headers against keys, and the chain.
fn verify_generation(storage: &dyn Storage, objs: &[Entry], report: &mut Report) -> Result<()> {
    std::thread::scope(|scope| verify_objects(scope, storage, objs, report))
}

fn verify_objects<'scope, 'env>(
    scope: &'scope std::thread::Scope<'scope, 'env>,
    storage: &'env dyn Storage,
    objs: &[Entry],
    report: &mut Report,
) -> Result<()> {
    let mut buf = Vec::new();
    // Chain value after each changeset / base seq.
    let mut chain_at: std::collections::BTreeMap<u64, u64> = Default::default();
    let mut snapshots: Vec<(Entry, u64)> = Vec::new();
    let mut prev: Option<(u64, u64)> = None; // (seq, chain) of the last chain object
    for e in objs {
        // A body cut off in transit resumes where it broke, as in restore, and a read that still fails is done
        // again (objects are immutable); corruption fails every time.
        let (h, checksum) = crate::object::with_retries(&e.key_str, || {
            let mut obj = ObjectStream::open_resuming(scope, storage, e)?;
            let h = *obj.header();
            if h.seq != e.key.seq || h.created_ms != e.key.commit_ms {
                return Err(Error::Corrupt(format!(
                    "object {} is corrupt: its header (seq {}, time {}) does not match its key (copied from \
                     elsewhere?)",
                    e.key_str, h.seq, h.created_ms
                )));
            }
            while obj.next_record(&mut buf)?.is_some() {}
            let checksum = obj
                .checksum()
                .ok_or_else(|| Error::Corrupt(format!("object {} is corrupt: ended early", e.key_str)))?;
            Ok((h, checksum))
        })?;
        report.objects += 1;
        report.bytes += e.size;
        match e.key.kind {
            Kind::Snapshot => {
                // After compaction a generation may start at a mid snapshot: it carries the chain value.
                if prev.is_none_or(|(s, _)| s < e.key.seq) {
                    prev = Some((e.key.seq, h.prev_checksum));
                }
                snapshots.push((e.clone(), h.prev_checksum));
            }
            Kind::Base => {
                prev = Some((e.key.seq, checksum));
                chain_at.insert(e.key.seq, checksum);
            }
            Kind::Changeset => {
                if let Some((pseq, pchain)) = prev {
                    if e.key.seq == pseq + 1 && h.prev_checksum != pchain {
                        return Err(Error::Corrupt(format!(
                            "chain broken at {}: it continues {:016x} but seq {} ends at {:016x}",
                            e.key_str, h.prev_checksum, pseq, pchain
                        )));
                    }
                    if e.key.seq == pseq {
                        return Err(Error::Corrupt(format!("two changesets for seq {} (at {})", pseq, e.key_str)));
                    }
                    // After compaction a kept point may follow a gap when its own seq has a snapshot (restores of
                    // it start there; the snapshot check below ties the two together).
                    if e.key.seq > pseq + 1 && !snapshot_at(objs, e.key.seq) {
                        return Err(Error::Corrupt(format!(
                            "changeset seq {} is missing before {}",
                            pseq + 1,
                            e.key_str
                        )));
                    }
                }
                prev = Some((e.key.seq, checksum));
                chain_at.insert(e.key.seq, checksum);
            }
        }
    }
    // A mid-generation snapshot must image a state of this chain.
    for (e, prev_checksum) in snapshots {
        if let Some(c) = chain_at.get(&e.key.seq) {
            if *c != prev_checksum {
                return Err(Error::Corrupt(format!(
                    "snapshot {} does not belong to this chain (it follows {:016x}, seq {} ends at {:016x})",
                    e.key_str, prev_checksum, e.key.seq, c
                )));
            }
        }
    }
    Ok(())
}
