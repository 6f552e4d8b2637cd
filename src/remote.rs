//! What a bucket holds for one database, read with LISTs only: generations, their objects, the head.
//!
//! Only a definite answer may mean "absent": every storage error propagates (FIELD-NOTES 4).

use crate::error::{Error, Result};
use crate::keys::{self, Kind, ObjectKey};
use crate::storage::{self, Storage};

/// One stored object of a database, as named by its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub key: ObjectKey,
    pub key_str: String,
    pub size: u64,
}

/// The generations stored for `name`, ascending.
pub fn generations(storage: &dyn Storage, name: &str) -> Result<Vec<u64>> {
    let mut gens: Vec<u64> = storage::list_prefixes(storage, &keys::db_prefix(name))?
        .iter()
        .filter_map(|p| keys::parse_generation_prefix(name, p))
        .collect();
    gens.sort_unstable();
    Ok(gens)
}

/// The objects of one generation in key order (seq, then commit time), strictly after `start_after`.
/// Keys that are not walrust objects are skipped.
pub fn objects(storage: &dyn Storage, name: &str, generation: u64, start_after: Option<&str>) -> Result<Vec<Entry>> {
    let prefix = keys::generation_prefix(name, generation);
    let mut out: Vec<Entry> = storage::list_all(storage, &prefix, start_after)?
        .into_iter()
        .filter_map(|o| {
            let key = ObjectKey::parse(name, &o.key)?;
            (key.generation == generation).then_some(Entry { key, key_str: o.key, size: o.size })
        })
        .collect();
    out.sort_by_key(|a| (a.key.seq, a.key.commit_ms, a.key.kind));
    Ok(out)
}

/// The newest state of a database's backups.
#[derive(Debug, Clone)]
pub struct Head {
    pub generation: u64,
    /// The object with the highest seq that moves the chain (a changeset or the base snapshot).
    pub last: Entry,
    /// All objects of the newest generation, in order.
    pub objects: Vec<Entry>,
    /// Every generation present (ascending).
    pub generations: Vec<u64>,
}

impl Head {
    pub fn max_seq(&self) -> u64 {
        self.objects.iter().map(|e| e.key.seq).max().unwrap_or(self.last.key.seq)
    }
}

/// Reads the head of `name`: `Ok(None)` only when the storage definitely holds nothing for it.
pub fn head(storage: &dyn Storage, name: &str) -> Result<Option<Head>> {
    let gens = generations(storage, name)?;
    // Newest generation first; a generation without a usable object (e.g. an interrupted start) is skipped.
    for &g in gens.iter().rev() {
        let objs = objects(storage, name, g, None)?;
        if let Some(last) = chain_last(&objs) {
            return Ok(Some(Head { generation: g, last: last.clone(), objects: objs, generations: gens.clone() }));
        }
    }
    if gens.is_empty() {
        Ok(None)
    } else {
        Err(Error::Corrupt(format!("no usable generation for {name}")))
    }
}

/// The highest-seq object that moves the chain: changesets and the base snapshot (mid-generation snapshots
/// image a changeset and do not advance the chain).
pub fn chain_last(objs: &[Entry]) -> Option<&Entry> {
    objs.iter().filter(|e| e.key.kind != Kind::Snapshot).max_by_key(|e| (e.key.seq, e.key.kind == Kind::Changeset))
}
