//! Object key layout: one format/parse pair. Keys are relative to the storage root (bucket + prefix).
//!
//! ```text
//! {name}/{generation:016x}/{seq:016x}-{commit_ms:012x}-{kind}-{sha256:64 hex}.hadbp.zst
//! ```
//!
//! - fixed-width lowercase hex, so a LIST returns a generation's objects in (seq, commit time) order;
//! - `kind`: `c` changeset, `s` mid-generation snapshot, `b` base snapshot (starts the generation);
//! - `commit_ms`: when the newest transaction in the object was committed (observed), ms since the Unix epoch:
//!   planning a point-in-time restore needs LISTs only;
//! - `sha256`: of the stored bytes, checked by every reader;
//! - suffix `.hadbp.zst` for zstd-compressed HADBP (the only form written), `.hadbp` for plain HADBP.

use std::path::Path;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Changeset,
    Snapshot,
    Base,
}

impl Kind {
    fn letter(self) -> char {
        match self {
            Kind::Changeset => 'c',
            Kind::Snapshot => 's',
            Kind::Base => 'b',
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectKey {
    pub generation: u64,
    pub seq: u64,
    pub commit_ms: u64,
    pub kind: Kind,
    pub sha256: [u8; 32],
    pub compressed: bool,
}

const SUFFIX_ZST: &str = ".hadbp.zst";
const SUFFIX_PLAIN: &str = ".hadbp";

impl ObjectKey {
    pub fn format(&self, name: &str) -> String {
        format!(
            "{}{:016x}-{:012x}-{}-{}{}",
            generation_prefix(name, self.generation),
            self.seq,
            self.commit_ms,
            self.kind.letter(),
            to_hex(&self.sha256),
            if self.compressed { SUFFIX_ZST } else { SUFFIX_PLAIN }
        )
    }

    /// Strict parse: exact widths, lowercase hex, known kind and suffix; anything else is None.
    pub fn parse(name: &str, key: &str) -> Option<ObjectKey> {
        let rest = key.strip_prefix(name)?.strip_prefix('/')?;
        let (gen_hex, rest) = rest.split_once('/')?;
        let generation = hex_u64(gen_hex, 16)?;
        let (body, compressed) = if let Some(b) = rest.strip_suffix(SUFFIX_ZST) {
            (b, true)
        } else {
            (rest.strip_suffix(SUFFIX_PLAIN)?, false)
        };
        let mut parts = body.split('-');
        let seq = hex_u64(parts.next()?, 16)?;
        let commit_ms = hex_u64(parts.next()?, 12)?;
        let kind = match parts.next()? {
            "c" => Kind::Changeset,
            "s" => Kind::Snapshot,
            "b" => Kind::Base,
            _ => return None,
        };
        let sha256 = from_hex32(parts.next()?)?;
        if parts.next().is_some() {
            return None;
        }
        Some(ObjectKey { generation, seq, commit_ms, kind, sha256, compressed })
    }
}

fn hex_u64(s: &str, width: usize) -> Option<u64> {
    if s.len() != width || !s.bytes().all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c)) {
        return None;
    }
    u64::from_str_radix(s, 16).ok()
}

/// `{name}/`
pub fn db_prefix(name: &str) -> String {
    format!("{name}/")
}

/// `{name}/{generation:016x}/`
pub fn generation_prefix(name: &str, generation: u64) -> String {
    format!("{name}/{generation:016x}/")
}

pub fn parse_generation_prefix(name: &str, p: &str) -> Option<u64> {
    let g = p.strip_prefix(name)?.strip_prefix('/')?.strip_suffix('/')?;
    hex_u64(g, 16)
}

/// 1..=200 characters of `[A-Za-z0-9._-]`, not starting with '.'.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 200
        && !name.starts_with('.')
        && name.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'.' || c == b'_' || c == b'-')
}

/// The default name of a database: its file stem (`app.db` -> `app`, `data.sqlite3` -> `data`).
pub fn name_from_path(path: &Path) -> Option<String> {
    let stem = path.file_stem()?.to_str()?;
    valid_name(stem).then(|| stem.to_string())
}

pub fn to_hex(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(HEX[(b >> 4) as usize] as char);
        s.push(HEX[(b & 15) as usize] as char);
    }
    s
}

pub fn from_hex32(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, chunk) in s.as_bytes().chunks_exact(2).enumerate() {
        let nib = |c: u8| match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None,
        };
        out[i] = nib(chunk[0])? << 4 | nib(chunk[1])?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(generation: u64, seq: u64, commit_ms: u64, kind: Kind) -> ObjectKey {
        ObjectKey { generation, seq, commit_ms, kind, sha256: [0xab; 32], compressed: true }
    }

    #[test]
    fn formats_and_parses() {
        let k = key(0x18c, 5, 0x1234, Kind::Changeset);
        let s = k.format("app");
        assert_eq!(
            s,
            "app/000000000000018c/0000000000000005-000000001234-c-abababababababababababababababababababababababababababababababab.hadbp.zst"
        );
        assert_eq!(ObjectKey::parse("app", &s), Some(k));
        assert_eq!(ObjectKey::parse("ap", &s), None);
        assert_eq!(parse_generation_prefix("app", "app/000000000000018c/"), Some(0x18c));
        assert_eq!(name_from_path(Path::new("/x/data.sqlite3")).as_deref(), Some("data"));
        assert_eq!(name_from_path(Path::new("noext")).as_deref(), Some("noext"));
        assert!(!valid_name(".hidden") && !valid_name("a/b") && !valid_name(""));
    }

    #[test]
    fn strict_parse_rejects_near_misses() {
        let good = key(1, 2, 3, Kind::Base).format("db");
        for bad in [
            good.replace("-b-", "-x-"),
            good.replace(".hadbp.zst", ".zst"),
            good.replace("0000000000000002", "000000000000002"),
            good.replace("0000000000000002", "000000000000000G"),
            good.to_uppercase(),
            format!("{good}x"),
            good.replace("abab", "ab-ab"),
        ] {
            assert_eq!(ObjectKey::parse("db", &bad), None, "{bad}");
        }
    }

    #[test]
    fn keys_sort_in_log_order() {
        let mut x: u64 = 0x2545f4914f6cdd1d;
        let mut keys = Vec::new();
        for _ in 0..500 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let k = key(x % 3, x % 1000, (x >> 20) % 0x00ff_ffff_ffff, Kind::Changeset);
            keys.push((k.format("n"), k));
        }
        keys.sort_by(|a, b| a.0.cmp(&b.0));
        for w in keys.windows(2) {
            let (a, b) = (&w[0].1, &w[1].1);
            assert!((a.generation, a.seq, a.commit_ms) <= (b.generation, b.seq, b.commit_ms));
        }
        // Random strings never panic.
        for i in 0..2000u32 {
            let s: String = (0..(i % 130)).map(|j| b"0a/-.cbsz"[((i * 7 + j * 13) % 9) as usize] as char).collect();
            let _ = ObjectKey::parse("n", &s);
        }
    }
}
