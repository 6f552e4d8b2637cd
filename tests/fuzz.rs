//! Property tests with random inputs (issue #7 "fuzz targets") for the three parsers that read bytes walrust did
//! not write itself or that storage could have damaged: the WAL reader (`wal.rs`), the HADBP decoder (`hadbp.rs`,
//! and the object reader in `object.rs`: SHA-256 + zstd + HADBP) and the object key parser (`keys.rs`).
//!
//! Properties:
//! - arbitrary bytes never panic;
//! - a mutated valid encoding (bit flips, truncation, splices, inserted/deleted bytes, changed length and count
//!   fields) either fails or decodes to exactly the original pages, never to other pages;
//! - a mutated real WAL (written by SQLite itself, both checksum byte orders) yields only whole committed
//!   transactions of the original, byte for byte, as a prefix of them;
//! - keys: `parse(format(k)) == k`, and a string that parses formats back to exactly itself.
//!
//! Bounded time: `WALRUST_FUZZ_ITERS` (default 6000) scales every loop; the whole file takes ~20 s in a debug
//! build. The PRNG seed is printed when a test fails (and at the start); `WALRUST_FUZZ_SEED=N` replays it.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Cursor, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use walrust::hadbp::{self, DecodeError, Header};
use walrust::keys::{self, Kind, ObjectKey};
use walrust::object::ObjectStream;
use walrust::wal::{self, WalCursor, WalHeader};

// ---------------------------------------------------------------------------------------------------------------
// Deterministic randomness, iteration budget, seed reporting.

/// splitmix64: tiny, fast, good enough to drive mutations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n` (n > 0).
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn chance(&mut self, one_in: usize) -> bool {
        self.below(one_in) == 0
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

fn iters(scale: f64) -> usize {
    let base: usize = std::env::var("WALRUST_FUZZ_ITERS").ok().and_then(|v| v.parse().ok()).unwrap_or(6000);
    ((base as f64 * scale) as usize).max(1)
}

/// Prints how to replay a failing case when the test panics.
struct SeedReport {
    test: &'static str,
    seed: u64,
    iteration: usize,
}

impl Drop for SeedReport {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "fuzz failure in {}: replay with WALRUST_FUZZ_SEED={} (failing iteration {})",
                self.test, self.seed, self.iteration
            );
        }
    }
}

fn master_seed(test: &'static str) -> SeedReport {
    let seed = std::env::var("WALRUST_FUZZ_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
    });
    eprintln!("{test}: WALRUST_FUZZ_SEED={seed}");
    SeedReport { test, seed, iteration: 0 }
}

/// The generator for iteration `i`: every iteration is reproducible on its own from the master seed.
fn case_rng(r: &mut SeedReport, i: usize) -> Rng {
    r.iteration = i;
    let mut g = Rng(r.seed ^ (i as u64).wrapping_mul(0xd1b5_4a32_d192_ed03));
    g.next();
    g
}

fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "walrust-fuzz-{tag}-{}-{}",
        std::process::id(),
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Replaces the content of `f` (kept open: the WAL reader works on a `File`).
fn rewrite(f: &File, bytes: &[u8]) {
    f.set_len(0).unwrap();
    f.write_all_at(bytes, 0).unwrap();
}

// ---------------------------------------------------------------------------------------------------------------
// Generic byte mutations.

/// Applies 1..=3 random structural mutations. `fields` are (offset, width) of length/count/size fields worth
/// targeting specifically.
fn mutate(g: &mut Rng, bytes: &mut Vec<u8>, fields: &[(usize, usize)], donor: &[u8]) {
    for _ in 0..1 + g.below(3) {
        let n = bytes.len();
        match g.below(10) {
            // Flip 1..=4 bits anywhere.
            0 | 1 if n > 0 => {
                for _ in 0..1 + g.below(4) {
                    let at = g.below(n);
                    bytes[at] ^= 1 << g.below(8);
                }
            }
            // Overwrite one byte.
            2 if n > 0 => {
                let at = g.below(n);
                bytes[at] = g.next() as u8;
            }
            // Truncate.
            3 => bytes.truncate(g.below(n + 1)),
            // Splice: copy a chunk of this input, or of a donor, over another place.
            4 if n > 0 => {
                let src: &[u8] = if g.chance(2) && !donor.is_empty() { donor } else { &bytes.clone() };
                let len = 1 + g.below(src.len().min(4096));
                let from = g.below(src.len() - len + 1);
                let to = g.below(n);
                let chunk = src[from..from + len].to_vec();
                let end = (to + len).min(n);
                bytes[to..end].copy_from_slice(&chunk[..end - to]);
            }
            // Insert random bytes (shifts everything after).
            5 => {
                let at = g.below(n + 1);
                let ins = {
                    let n = 1 + g.below(16);
                    g.bytes(n)
                };
                bytes.splice(at..at, ins);
            }
            // Delete a range.
            6 if n > 0 => {
                let at = g.below(n);
                let len = 1 + g.below((n - at).min(64));
                bytes.drain(at..at + len);
            }
            // Change a length / count / size field to a nearby or random value.
            7 | 8 if !fields.is_empty() => {
                let (at, w) = fields[g.below(fields.len())];
                if at + w <= n {
                    let mut v = 0u64;
                    for b in &bytes[at..at + w] {
                        v = v << 8 | *b as u64;
                    }
                    let v = match g.below(5) {
                        0 => v.wrapping_add(1),
                        1 => v.wrapping_sub(1),
                        2 => 0,
                        3 => v ^ (1 << g.below(w * 8)),
                        _ => g.next(),
                    };
                    for (k, b) in bytes[at..at + w].iter_mut().enumerate() {
                        *b = (v >> (8 * (w - 1 - k))) as u8;
                    }
                }
            }
            // Append garbage.
            _ => {
                let tail = {
                    let n = g.below(64);
                    g.bytes(n)
                };
                bytes.extend_from_slice(&tail);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// WAL: an independent reference reader (kept deliberately naive) and real WALs written by SQLite.

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().unwrap())
}

fn ref_checksum(big_endian: bool, data: &[u8], s: [u32; 2]) -> [u32; 2] {
    let (mut s0, mut s1) = (s[0], s[1]);
    for w in data.chunks_exact(8) {
        let word = |i: usize| {
            let b: [u8; 4] = w[i..i + 4].try_into().unwrap();
            if big_endian {
                u32::from_be_bytes(b)
            } else {
                u32::from_le_bytes(b)
            }
        };
        s0 = s0.wrapping_add(word(0)).wrapping_add(s1);
        s1 = s1.wrapping_add(word(4)).wrapping_add(s0);
    }
    [s0, s1]
}

/// What the original WAL holds: every valid frame, the running checksum after each, and the transactions.
struct RefWal {
    bytes: Vec<u8>,
    big_endian: bool,
    page_size: usize,
    /// checksums[i] = running checksum after i valid frames (checksums[0] = header's).
    checksums: Vec<[u32; 2]>,
    /// Page data of every valid frame.
    frames: Vec<Vec<u8>>,
    /// Frame count at the end of each committed transaction.
    txn_ends: Vec<usize>,
}

impl RefWal {
    fn parse(bytes: Vec<u8>) -> RefWal {
        let magic = be32(&bytes, 0);
        assert!(magic == 0x377f0682 || magic == 0x377f0683);
        let big_endian = magic == 0x377f0683;
        let page_size = match be32(&bytes, 8) {
            1 => 65536,
            p => p as usize,
        };
        let hs = [be32(&bytes, 24), be32(&bytes, 28)];
        assert_eq!(ref_checksum(big_endian, &bytes[..24], [0, 0]), hs);
        let salts = (be32(&bytes, 16), be32(&bytes, 20));
        let (mut checksums, mut frames, mut txn_ends) = (vec![hs], Vec::new(), Vec::new());
        let mut off = 32;
        while off + 24 + page_size <= bytes.len() {
            let fh = &bytes[off..off + 24];
            let data = &bytes[off + 24..off + 24 + page_size];
            let s = ref_checksum(big_endian, &fh[..8], *checksums.last().unwrap());
            let s = ref_checksum(big_endian, data, s);
            if be32(fh, 0) == 0 || (be32(fh, 8), be32(fh, 12)) != salts || s != [be32(fh, 16), be32(fh, 20)] {
                break;
            }
            checksums.push(s);
            frames.push(data.to_vec());
            if be32(fh, 4) != 0 {
                txn_ends.push(frames.len());
            }
            off += 24 + page_size;
        }
        RefWal { bytes, big_endian, page_size, checksums, frames, txn_ends }
    }

    /// The same WAL with the given checksum byte order (magic) and salts, every checksum recomputed. Bytes after
    /// the valid frames (an older cycle) are kept, with their salts replaced by the previous cycle's. SQLite
    /// picks salt-2 at random: fixing the salts makes a failing seed replay byte for byte.
    fn transcode(&self, big_endian: bool, salts: (u32, u32)) -> RefWal {
        let magic: u32 = if big_endian { 0x377f0683 } else { 0x377f0682 };
        let mut out = self.bytes[..24].to_vec();
        out[..4].copy_from_slice(&magic.to_be_bytes());
        out[16..20].copy_from_slice(&salts.0.to_be_bytes());
        out[20..24].copy_from_slice(&salts.1.to_be_bytes());
        let mut s = ref_checksum(big_endian, &out, [0, 0]);
        out.extend_from_slice(&s[0].to_be_bytes());
        out.extend_from_slice(&s[1].to_be_bytes());
        for (i, f) in self.frames.iter().enumerate() {
            let off = 32 + i * (24 + self.page_size);
            let mut fh = self.bytes[off..off + 8].to_vec();
            fh.extend_from_slice(&salts.0.to_be_bytes());
            fh.extend_from_slice(&salts.1.to_be_bytes());
            s = ref_checksum(big_endian, &fh[..8], s);
            s = ref_checksum(big_endian, f, s);
            fh.extend_from_slice(&s[0].to_be_bytes());
            fh.extend_from_slice(&s[1].to_be_bytes());
            out.extend_from_slice(&fh);
            out.extend_from_slice(f);
        }
        let mut off = out.len();
        out.extend_from_slice(&self.bytes[off..]);
        while off + 24 <= out.len() {
            out[off + 8..off + 12].copy_from_slice(&salts.0.wrapping_sub(1).to_be_bytes());
            out[off + 12..off + 16].copy_from_slice(&salts.1.rotate_left(7).to_be_bytes());
            off += 24 + self.page_size;
        }
        let r = RefWal::parse(out);
        assert_eq!((r.frames.len(), r.txn_ends.len()), (self.frames.len(), self.txn_ends.len()));
        r
    }

    /// Offsets of the header fields and of every frame's page number and commit size.
    fn fields(&self) -> Vec<(usize, usize)> {
        let mut v = vec![(8, 4), (12, 4), (16, 4), (20, 4)];
        for i in 0..self.frames.len() + 1 {
            let off = 32 + i * (24 + self.page_size);
            v.extend([(off, 4), (off + 4, 4), (off + 8, 4)]);
        }
        v
    }
}

/// A real WAL written by SQLite: `txns` transactions of inserts, updates, deletes and blobs; optionally after a
/// RESTART checkpoint so that frames of the previous cycle remain after the new ones. Copied while the
/// connection is still open (closing it would checkpoint and delete the WAL).
fn real_wal(dir: &Path, page_size: u32, txns: usize, restart: bool, seed: u64) -> Vec<u8> {
    let db = dir.join(format!("w{page_size}-{restart}-{seed}.db"));
    let c = rusqlite::Connection::open(&db).unwrap();
    c.execute_batch(&format!(
        "PRAGMA page_size={page_size}; PRAGMA journal_mode=WAL; PRAGMA wal_autocheckpoint=0;
         CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB);"
    ))
    .unwrap();
    let mut g = Rng(seed);
    let mut run = |c: &rusqlite::Connection, n: usize| {
        for _ in 0..n {
            c.execute_batch("BEGIN").unwrap();
            // Every transaction inserts, so that each one writes frames.
            for j in 0..1 + g.below(4) {
                match if j == 0 { 3 } else { g.below(4) } {
                    0 => c.execute("UPDATE t SET v = ?1 WHERE id % 5 = ?2", (g.bytes(50), g.below(5) as i64)),
                    1 => c.execute("DELETE FROM t WHERE id % 7 = ?1", [g.below(7) as i64]),
                    _ => c.execute(
                        "INSERT INTO t(v) VALUES (?1)",
                        [{
                            let n = g.below(3 * page_size as usize);
                            g.bytes(n)
                        }],
                    ),
                }
                .unwrap();
            }
            c.execute_batch("COMMIT").unwrap();
        }
    };
    run(&c, txns);
    if restart {
        c.query_row("PRAGMA wal_checkpoint(RESTART)", [], |_| Ok(())).unwrap();
        run(&c, 1 + txns / 3);
    }
    let mut wal = db.into_os_string();
    wal.push("-wal");
    let bytes = std::fs::read(&wal).unwrap();
    drop(c);
    bytes
}

/// The WAL header rules (magic, version, page size, checksum), written out independently of `wal.rs`.
fn reference_header(b: &[u8]) -> Option<WalHeader> {
    if b.len() < 32 || be32(b, 4) != 3007000 {
        return None;
    }
    let big_endian_checksum = match be32(b, 0) {
        0x377f0682 => false,
        0x377f0683 => true,
        _ => return None,
    };
    let page_size = if be32(b, 8) == 1 { 65536 } else { be32(b, 8) };
    let checksum = [be32(b, 24), be32(b, 28)];
    let ok = (512..=65536).contains(&page_size)
        && page_size.is_power_of_two()
        && ref_checksum(big_endian_checksum, &b[..24], [0, 0]) == checksum;
    ok.then(|| WalHeader {
        big_endian_checksum,
        page_size,
        ckpt_seq: be32(b, 12),
        salt1: be32(b, 16),
        salt2: be32(b, 20),
        checksum,
    })
}

/// What a committed batch must hold: (end frame, commits, database size, end checksum, page -> data).
type Expected = (usize, u32, u32, [u32; 2], BTreeMap<u32, Vec<u8>>);

/// SQLite's own validity rule, written out independently of `wal.rs`, applied to `bytes` after `from`: the
/// whole committed transactions `read_batch(from, max_frames, committed)` must return (frames from index
/// `committed` on are not committed, whatever they hold: the wal-index's mxFrame).
fn reference_batch(bytes: &[u8], h: &WalHeader, from: WalCursor, max_frames: u32, committed: u32) -> Option<Expected> {
    let ps = h.page_size as usize;
    let (mut s, mut idx) = (from.checksum, from.frames as usize);
    let mut pending: Vec<(u32, Vec<u8>)> = Vec::new();
    let mut pages = BTreeMap::new();
    let mut last = None;
    loop {
        let off = 32 + idx * (24 + ps);
        if off + 24 + ps > bytes.len() || idx >= committed as usize {
            break;
        }
        let (fh, data) = (&bytes[off..off + 24], &bytes[off + 24..off + 24 + ps]);
        let s2 = ref_checksum(h.big_endian_checksum, data, ref_checksum(h.big_endian_checksum, &fh[..8], s));
        if be32(fh, 0) == 0 || (be32(fh, 8), be32(fh, 12)) != (h.salt1, h.salt2) || s2 != [be32(fh, 16), be32(fh, 20)] {
            break;
        }
        s = s2;
        idx += 1;
        pending.push((be32(fh, 0), data.to_vec()));
        if be32(fh, 4) != 0 {
            pages.extend(pending.drain(..));
            let commits = last.map_or(0, |l: Expected| l.1) + 1;
            last = Some((idx, commits, be32(fh, 4), s, pages.clone()));
            if idx - from.frames as usize >= max_frames as usize {
                break;
            }
        }
    }
    last
}

/// Checks one `read_batch` answer against the reference reading of the same (mutated) bytes, page data read
/// back from the file as watch would read it. Returns whether the batch is a prefix of the original's
/// committed transactions (false: the mutation collided with SQLite's checksum, see the test).
fn check_batch(orig: &RefWal, bytes: &[u8], file: &File, b: &wal::CommittedBatch, want: &Expected) -> bool {
    let (end, commits, db_size, checksum, pages) = want;
    assert_eq!(
        (b.end.frames as usize, b.commits, b.db_size_pages, b.end.checksum),
        (*end, *commits, *db_size, *checksum)
    );
    assert_eq!(b.pages.keys().collect::<Vec<_>>(), pages.keys().collect::<Vec<_>>(), "page set");
    let mut buf = vec![0u8; orig.page_size];
    for (p, off) in &b.pages {
        file.read_exact_at(&mut buf, *off).unwrap();
        assert!(buf == pages[p], "page {p}: read_batch points at bytes that are not the page's newest frame");
    }
    // Against the original: the same bytes at the same place, ending at one of its commits.
    let from = 32 + b.start.frames as usize * (24 + orig.page_size);
    let to = 32 + *end * (24 + orig.page_size);
    orig.txn_ends.contains(end) && to <= orig.bytes.len() && bytes[from..to] == orig.bytes[from..to]
}

#[test]
fn wal_arbitrary_bytes_never_panic() {
    let mut rep = master_seed("wal_arbitrary_bytes_never_panic");
    let dir = temp_dir("walbytes");
    let f = std::fs::OpenOptions::new().create(true).truncate(true).read(true).write(true).open(dir.join("w")).unwrap();
    for i in 0..iters(2.0) {
        let mut g = case_rng(&mut rep, i);
        let mut bytes = {
            let n = g.below(6000);
            g.bytes(n)
        };
        if g.chance(2) && bytes.len() >= 32 {
            // A valid header over random frames: the reader must go past the header.
            let be = g.chance(2);
            let magic: u32 = if be { 0x377f0683 } else { 0x377f0682 };
            let ps = [512u32, 1024, 1, 3000, 0][g.below(5)];
            bytes[..4].copy_from_slice(&magic.to_be_bytes());
            bytes[4..8].copy_from_slice(&3007000u32.to_be_bytes());
            bytes[8..12].copy_from_slice(&ps.to_be_bytes());
            let s = ref_checksum(be, &bytes[..24], [0, 0]);
            bytes[24..28].copy_from_slice(&s[0].to_be_bytes());
            bytes[28..32].copy_from_slice(&s[1].to_be_bytes());
        }
        let _ = WalHeader::parse(&bytes);
        rewrite(&f, &bytes);
        if let Ok(Some(h)) = wal::read_header(&f) {
            let from = if g.chance(2) {
                WalCursor::start(&h)
            } else {
                WalCursor { frames: g.next() as u32 % 8, checksum: [g.next() as u32, g.next() as u32] }
            };
            let _ = wal::read_batch(&f, &h, from, [0, 1, u32::MAX][g.below(3)], g.next() as u32 % 16);
            let _ = wal::cursor_at(&f, &h, g.next() as u32 % 16);
            let _ = wal::cursor_at(&f, &h, u32::MAX);
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn wal_mutations_of_real_sqlite_wals_yield_only_committed_prefixes() {
    let mut rep = master_seed("wal_mutations_of_real_sqlite_wals_yield_only_committed_prefixes");
    let dir = temp_dir("walmut");
    let mut wals = Vec::new();
    for (ps, restart) in [(512u32, false), (1024, true), (4096, false)] {
        let le = RefWal::parse(real_wal(&dir, ps, 12, restart, rep.seed ^ ps as u64));
        let expected = if restart { 5 } else { 12 };
        assert!(
            le.txn_ends.len() >= expected,
            "SQLite wrote the transactions ({ps}): {} of {expected}, {} frames, {} bytes",
            le.txn_ends.len(),
            le.frames.len(),
            le.bytes.len()
        );
        if restart {
            assert!(le.bytes.len() > 32 + le.frames.len() * (24 + ps as usize), "frames of the older cycle follow");
        }
        assert!(!le.big_endian, "this machine's SQLite writes little-endian checksums");
        let salts = (rep.seed as u32 ^ ps, (rep.seed >> 32) as u32);
        wals.push(le.transcode(false, salts));
        wals.push(le.transcode(true, salts));
    }
    let f = std::fs::OpenOptions::new().create(true).truncate(true).read(true).write(true).open(dir.join("w")).unwrap();

    // Unmutated: the reader returns every committed transaction, in both byte orders.
    for w in &wals {
        rewrite(&f, &w.bytes);
        let h = wal::read_header(&f).unwrap().expect("real header parses");
        assert_eq!(h.big_endian_checksum, w.big_endian);
        let b = wal::read_batch(&f, &h, WalCursor::start(&h), u32::MAX, u32::MAX).unwrap().unwrap();
        assert_eq!(b.end.frames as usize, *w.txn_ends.last().unwrap());
        assert_eq!(b.end.checksum, w.checksums[b.end.frames as usize]);
        let want = reference_batch(&w.bytes, &h, WalCursor::start(&h), u32::MAX, u32::MAX).unwrap();
        assert!(check_batch(w, &w.bytes, &f, &b, &want));
    }

    let (mut batches, mut shortened, mut collisions) = (0usize, 0usize, 0usize);
    let n_iters = iters(1.5);
    for i in 0..n_iters {
        let mut g = case_rng(&mut rep, i);
        let orig = &wals[g.below(wals.len())];
        let donor = &wals[g.below(wals.len())].bytes;
        let mut bytes = orig.bytes.clone();
        // A third of the cases change exactly one byte (which the WAL checksum always detects).
        let single = g.chance(3);
        if single {
            let at = g.below(bytes.len());
            bytes[at] ^= 1 + g.below(255) as u8;
        } else {
            mutate(&mut g, &mut bytes, &orig.fields(), donor);
        }
        if !single && g.chance(8) && bytes.len() >= 32 {
            // A header field changed with its checksum fixed up: frames must still not validate against it.
            let at = [8usize, 12, 16, 20][g.below(4)];
            let v = be32(&bytes, at) ^ (1 << g.below(32));
            bytes[at..at + 4].copy_from_slice(&v.to_be_bytes());
            let s = ref_checksum(orig.big_endian, &bytes[..24], [0, 0]);
            bytes[24..28].copy_from_slice(&s[0].to_be_bytes());
            bytes[28..32].copy_from_slice(&s[1].to_be_bytes());
        }
        rewrite(&f, &bytes);
        let h = wal::read_header(&f).unwrap();
        assert_eq!(h, reference_header(&bytes), "header validation");
        let Some(h) = h else { continue };
        // Start after a random number of original transactions, with a random batch limit.
        let m = g.below(orig.txn_ends.len() + 1);
        let from = if m == 0 {
            WalCursor::start(&h)
        } else {
            let fr = orig.txn_ends[m - 1];
            WalCursor { frames: fr as u32, checksum: orig.checksums[fr] }
        };
        let max_frames = [1u32, 3, 10, u32::MAX][g.below(4)];
        // Sometimes the wal-index publishes fewer frames than the file holds (a writer killed before publishing).
        let committed = if g.below(3) == 0 { g.below(orig.frames.len() + 2) as u32 } else { u32::MAX };
        let want = reference_batch(&bytes, &h, from, max_frames, committed);
        match wal::read_batch(&f, &h, from, max_frames, committed).unwrap() {
            None => assert!(want.is_none(), "read_batch found nothing, SQLite's rule finds committed frames"),
            Some(b) => {
                let want = want.expect("read_batch returned frames SQLite's rule rejects");
                if check_batch(orig, &bytes, &f, &b, &want) {
                    batches += 1;
                    shortened += usize::from((b.end.frames as usize) < *orig.txn_ends.last().unwrap());
                } else {
                    // The damaged frames still satisfy SQLite's checksum (it is a sum, not a hash: e.g. two
                    // flips of bit 30 three word pairs apart cancel), so SQLite itself would apply them too.
                    // Impossible with a single changed region; rare otherwise.
                    assert!(!single, "one changed byte must always be caught by the WAL checksum");
                    collisions += 1;
                }
            }
        }
        let n = g.below(orig.frames.len() + 3) as u32;
        if let Some(c) = wal::cursor_at(&f, &h, n).unwrap() {
            assert!(n as usize <= orig.frames.len(), "cursor after {n} frames, the original has fewer");
            let want = if n == 0 {
                WalCursor::start(&h)
            } else {
                WalCursor { frames: n, checksum: orig.checksums[n as usize] }
            };
            assert_eq!(c, want);
        }
    }
    eprintln!(
        "mutated WALs: {batches} batches returned and checked, {shortened} cut short by the mutation, \
         {collisions} multi-byte changes that SQLite's checksum accepts"
    );
    assert!(batches > 0 && shortened > 0, "the mutations exercised both outcomes");
    assert!(collisions * 200 <= n_iters, "checksum collisions are rare");
    std::fs::remove_dir_all(&dir).unwrap();
}

// ---------------------------------------------------------------------------------------------------------------
// HADBP and stored objects.

type Records = Vec<(u64, Vec<u8>)>;

/// A random valid object: header + commit record + ascending pages.
fn random_object(g: &mut Rng) -> (Header, Records, Vec<u8>) {
    let page_size = [512u32, 1024, 4096][g.below(3)];
    let flags = [0u8, hadbp::FLAG_SNAPSHOT, hadbp::FLAG_SNAPSHOT | hadbp::FLAG_BASE][g.below(3)];
    let page_id_size = if g.chance(4) { 8 } else { 4 };
    let mut ids: Vec<u64> = (0..g.below(6)).map(|_| 1 + g.below(100) as u64).collect();
    if page_id_size == 8 && g.chance(2) {
        ids.push(u32::MAX as u64 + 1 + g.below(10) as u64);
    }
    ids.sort_unstable();
    ids.dedup();
    let mut recs = vec![(0u64, hadbp::commit_record(g.next() as u32).to_vec())];
    for id in ids {
        // Compressible pages, like SQLite's: runs of a few values.
        let fill = g.bytes(8);
        recs.push((id, (0..page_size as usize).map(|j| fill[(j / 64) % 8]).collect()));
    }
    let h = Header {
        version: hadbp::VERSION,
        flags,
        page_id_size,
        page_size,
        seq: g.next() >> g.below(64),
        prev_checksum: g.next(),
        page_count: recs.len() as u32,
        created_ms: g.next() >> 20,
    };
    let mut e = hadbp::Encoder::new(Vec::new(), &h).unwrap();
    for (id, d) in &recs {
        e.record(*id, d).unwrap();
    }
    let (bytes, _) = e.finish().unwrap();
    (h, recs, bytes)
}

/// Offsets of the header's size/count fields and of every record's id and length.
fn hadbp_fields(h: &Header, recs: &Records) -> Vec<(usize, usize)> {
    let mut v = vec![(5, 1), (6, 1), (7, 1), (8, 4), (12, 8), (20, 8), (28, 4), (32, 8)];
    let mut off = hadbp::HEADER_LEN;
    let n = h.page_id_size as usize;
    for (_, d) in recs {
        v.extend([(off, n), (off + n, 4)]);
        off += n + 4 + d.len();
    }
    v.push((off, 8));
    v
}

fn decode_all(bytes: &[u8]) -> Result<(Header, Records, u64), DecodeError> {
    let mut d = hadbp::Decoder::new(bytes)?;
    let mut out = Vec::new();
    let mut buf = Vec::new();
    while let Some(id) = d.next_record(&mut buf)? {
        out.push((id, buf.clone()));
    }
    Ok((*d.header(), out, d.checksum().unwrap()))
}

fn compress(hadbp: &[u8]) -> Vec<u8> {
    let mut z = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
    z.write_all(hadbp).unwrap();
    z.finish().unwrap()
}

fn key_for(h: &Header, stored: &[u8]) -> ObjectKey {
    ObjectKey {
        generation: 1,
        seq: h.seq,
        commit_ms: h.created_ms & 0xffff_ffff_ffff,
        kind: Kind::Changeset,
        sha256: Sha256::digest(stored).into(),
        compressed: true,
    }
}

/// Reads a stored object to its end through the real reader; the header and records when every check passed.
fn read_object(key: &ObjectKey, stored: Vec<u8>) -> walrust::Result<(Header, Records)> {
    let mut s = ObjectStream::from_reader(key, "k", Box::new(Cursor::new(stored)))?;
    let h = *s.header();
    let mut out = Vec::new();
    let mut buf = Vec::new();
    while let Some(id) = s.next_record(&mut buf)? {
        out.push((id, buf.clone()));
    }
    Ok((h, out))
}

#[test]
fn hadbp_arbitrary_bytes_never_panic() {
    let mut rep = master_seed("hadbp_arbitrary_bytes_never_panic");
    for i in 0..iters(3.0) {
        let mut g = case_rng(&mut rep, i);
        let mut bytes = {
            let n = g.below(3000);
            g.bytes(n)
        };
        if g.chance(2) && bytes.len() >= hadbp::HEADER_LEN {
            // A plausible header, so that record parsing is reached.
            bytes[..5].copy_from_slice(&hadbp::MAGIC);
            bytes[5] = 1;
            bytes[6] = [0, 1, 3, 2, 0xff][g.below(5)];
            bytes[7] = [4, 8, 0, 255][g.below(4)];
            bytes[8..12].copy_from_slice(&[512u32, 1024, 0, 513, u32::MAX][g.below(5)].to_be_bytes());
            bytes[28..32].copy_from_slice(&[0u32, 1, 3, u32::MAX][g.below(4)].to_be_bytes());
        }
        let _ = decode_all(&bytes);
        let _ = Header::decode(&bytes);
        // The object reader: random bytes as the stored body, raw and as a real zstd frame.
        let stored = if g.chance(2) { bytes.clone() } else { compress(&bytes) };
        let key = ObjectKey {
            generation: 0,
            seq: 0,
            commit_ms: 0,
            kind: Kind::Base,
            sha256: Sha256::digest(&stored).into(),
            compressed: true,
        };
        let _ = read_object(&key, stored);
    }
}

#[test]
fn hadbp_mutations_fail_or_decode_to_the_original_pages() {
    let mut rep = master_seed("hadbp_mutations_fail_or_decode_to_the_original_pages");
    let (mut caught, mut header_only, mut spliced) = (0usize, 0usize, 0usize);
    let donor = random_object(&mut Rng(rep.seed)).2;
    for i in 0..iters(10.0) {
        let mut g = case_rng(&mut rep, i);
        let (h, recs, bytes) = random_object(&mut g);
        let check = decode_all(&bytes).expect("a valid encoding decodes");
        assert_eq!((check.0, &check.1), (h, &recs));
        let mut m = bytes.clone();
        mutate(&mut g, &mut m, &hadbp_fields(&h, &recs), &donor);
        if m == bytes {
            continue;
        }
        match decode_all(&m) {
            Err(_) => caught += 1,
            // A splice of the donor from its prev_checksum (offset 20) to its end: everything the trailer covers,
            // and the trailer, of another valid object. That decodes, to the donor's pages; in a real read the
            // key's SHA-256 of the stored bytes tells the two apart. Anything else must not change the pages.
            Ok((_, r2, _)) if r2 != recs && m.len() == donor.len() && m[20..] == donor[20..] => spliced += 1,
            Ok((h2, r2, _)) => {
                // Only a header field outside the trailer's coverage may change unnoticed (the key's SHA-256 and
                // the reader's key/header cross-checks catch those); the pages never.
                assert_eq!(r2, recs, "a mutated object decoded to different pages");
                assert_eq!(h2.prev_checksum, h.prev_checksum, "prev_checksum is covered by the trailer");
                header_only += 1;
            }
        }
    }
    eprintln!(
        "hadbp mutations: {caught} refused, {header_only} header-only changes with identical pages, {spliced} \
         spliced whole from the donor"
    );
    assert!(caught > iters(5.0));
}

#[test]
fn stored_object_mutations_fail_or_read_the_original_pages() {
    let mut rep = master_seed("stored_object_mutations_fail_or_read_the_original_pages");
    let (mut caught, mut clean) = (0usize, 0usize);
    for i in 0..iters(3.0) {
        let mut g = case_rng(&mut rep, i);
        let (h, recs, bytes) = random_object(&mut g);
        let stored = compress(&bytes);
        let key = key_for(&h, &stored);
        let (h1, r1) = read_object(&key, stored.clone()).expect("a valid object reads back");
        assert_eq!((h1, &r1), (h, &recs));
        let donor = compress(&random_object(&mut g).2);
        if g.chance(2) {
            // Damage in storage: the stored bytes change, the key (and its SHA-256) does not.
            let mut m = stored.clone();
            mutate(&mut g, &mut m, &[], &donor);
            match read_object(&key, m.clone()) {
                Err(_) => caught += 1,
                Ok((h2, r2)) => {
                    assert_eq!(m, stored, "changed stored bytes passed the SHA-256 check");
                    assert_eq!((h2, r2), (h, recs.clone()));
                    clean += 1;
                }
            }
        } else {
            // A wrong HADBP body under a self-consistent key (as if written wrong): the trailer must catch it.
            let mut m = bytes.clone();
            mutate(&mut g, &mut m, &hadbp_fields(&h, &recs), &[]);
            let stored2 = compress(&m);
            match read_object(&key_for(&h, &stored2), stored2) {
                Err(_) => caught += 1,
                Ok((_, r2)) => {
                    assert_eq!(r2, recs, "a mutated HADBP body read back as different pages");
                    clean += 1;
                }
            }
        }
    }
    eprintln!("stored objects: {caught} refused, {clean} read back identical pages");
    assert!(caught > 0);
}

// ---------------------------------------------------------------------------------------------------------------
// Keys.

const NAME_CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-";

fn random_name(g: &mut Rng) -> String {
    loop {
        let len = 1 + [g.below(12), g.below(200)][g.below(2)];
        let s: String = (0..len).map(|_| NAME_CHARS[g.below(NAME_CHARS.len())] as char).collect();
        if keys::valid_name(&s) {
            return s;
        }
    }
}

fn random_key(g: &mut Rng) -> ObjectKey {
    let mut sha = [0u8; 32];
    sha.iter_mut().for_each(|b| *b = g.next() as u8);
    ObjectKey {
        generation: g.next() >> g.below(64),
        seq: g.next() >> g.below(64),
        commit_ms: (g.next() >> g.below(64)) & 0xffff_ffff_ffff, // 12 hex digits: ms until the year 10889
        kind: [Kind::Changeset, Kind::Snapshot, Kind::Base][g.below(3)],
        sha256: sha,
        compressed: !g.chance(4),
    }
}

#[test]
fn keys_round_trip_and_never_parse_into_another_key() {
    let mut rep = master_seed("keys_round_trip_and_never_parse_into_another_key");
    let alphabet: &[u8] = b"0123456789abcdefABCDEFcsbxz/-._\xc3\xa9 ";
    let (mut parsed_mutants, mut total) = (0usize, 0usize);
    for i in 0..iters(25.0) {
        let mut g = case_rng(&mut rep, i);
        let name = random_name(&mut g);
        let k = random_key(&mut g);
        let s = k.format(&name);
        assert_eq!(ObjectKey::parse(&name, &s), Some(k.clone()), "{s}");
        assert_eq!(
            keys::parse_generation_prefix(&name, &keys::generation_prefix(&name, k.generation)),
            Some(k.generation)
        );
        // Mutants of a valid key, and random strings.
        let mut m = s.clone().into_bytes();
        match g.below(4) {
            0 => {
                let at = g.below(m.len());
                m[at] = alphabet[g.below(alphabet.len())];
            }
            1 => {
                let at = g.below(m.len() + 1);
                m.insert(at, alphabet[g.below(alphabet.len())]);
            }
            2 => {
                m.remove(g.below(m.len()));
            }
            _ => m = (0..g.below(140)).map(|_| alphabet[g.below(alphabet.len())]).collect(),
        }
        let Ok(m) = String::from_utf8(m) else { continue };
        total += 1;
        if let Some(k2) = ObjectKey::parse(&name, &m) {
            assert_eq!(k2.format(&name), m, "{m:?} parsed into a key that formats differently");
            parsed_mutants += 1;
        }
        let _ = keys::parse_generation_prefix(&name, &m);
        let _ = keys::valid_name(&m);
        let _ = keys::name_from_path(Path::new(&m));
        let _ = keys::from_hex32(&m);
    }
    // A timestamp past 12 hex digits cannot round-trip: it must not parse at all rather than parse differently.
    let mut g = Rng(rep.seed);
    let mut k = random_key(&mut g);
    k.commit_ms = 1 << 48;
    assert_eq!(ObjectKey::parse("n", &k.format("n")), None);
    eprintln!("keys: {total} mutants, {parsed_mutants} still valid keys (all formatting back identically)");
}

/// Reading through `ObjectStream` must not depend on how the storage chunks the body.
#[test]
fn object_reader_is_independent_of_read_sizes() {
    struct Trickle<R>(R, Rng);
    impl<R: Read> Read for Trickle<R> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = (1 + self.1.below(buf.len().clamp(1, 7))).min(buf.len());
            self.0.read(&mut buf[..n])
        }
    }
    let mut rep = master_seed("object_reader_is_independent_of_read_sizes");
    for i in 0..iters(0.25) {
        let mut g = case_rng(&mut rep, i);
        let (h, recs, bytes) = random_object(&mut g);
        let stored = compress(&bytes);
        let key = key_for(&h, &stored);
        let body = Trickle(Cursor::new(stored), Rng(g.next()));
        let mut s = ObjectStream::from_reader(&key, "k", Box::new(body)).unwrap();
        let mut out = Vec::new();
        let mut buf = Vec::new();
        while let Some(id) = s.next_record(&mut buf).unwrap() {
            out.push((id, buf.clone()));
        }
        assert_eq!(out, recs);
    }
}
