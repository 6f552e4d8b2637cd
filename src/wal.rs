//! SQLite WAL reader. No I/O beyond positioned reads of a given file; no allocation proportional to the WAL.
//!
//! # Format (https://www.sqlite.org/fileformat2.html#walformat)
//!
//! WAL header, 32 bytes, all fields big-endian u32:
//!
//! | offset | field |
//! |---|---|
//! | 0  | magic: 0x377f0682 (checksum words little-endian) or 0x377f0683 (big-endian) |
//! | 4  | format version, 3007000 |
//! | 8  | page size (512..=65536, power of two; the value 1 means 65536) |
//! | 12 | checkpoint sequence number (incremented at each WAL restart) |
//! | 16 | salt-1 (incremented at each restart) |
//! | 20 | salt-2 (random at each restart) |
//! | 24 | checksum-1 over bytes 0..24 |
//! | 28 | checksum-2 |
//!
//! Each frame is a 24-byte header then one page:
//!
//! | offset | field |
//! |---|---|
//! | 0  | page number |
//! | 4  | for a commit frame, the database size in pages after the commit; otherwise 0 |
//! | 8  | salt-1, copied from the WAL header |
//! | 12 | salt-2 |
//! | 16 | checksum-1: cumulative over the first 8 bytes of this frame header and the page data |
//! | 20 | checksum-2 |
//!
//! Checksum: with (s0, s1) starting at the previous checksum (the header's for the first frame), for each pair
//! of 32-bit words (x0, x1) of the input, read in the byte order the magic selects:
//! `s0 += x0 + s1; s1 += x1 + s0` (wrapping).
//!
//! Validity rules: a frame is valid when its salts equal the header's, its page number is non-zero, and its
//! checksum equals the running checksum. The first invalid frame ends the WAL: everything after it is left over
//! from an earlier cycle. Only frames up to the last valid commit frame are committed.

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

pub const WAL_HEADER_LEN: usize = 32;
pub const FRAME_HEADER_LEN: usize = 24;
const MAGIC_LE: u32 = 0x377f0682;
const MAGIC_BE: u32 = 0x377f0683;
const VERSION: u32 = 3007000;

/// A parsed, checksum-verified WAL header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WalHeader {
    /// Magic 0x377f0683: checksum words are read big-endian.
    pub big_endian_checksum: bool,
    pub page_size: u32,
    pub ckpt_seq: u32,
    pub salt1: u32,
    pub salt2: u32,
    pub checksum: [u32; 2],
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// SQLite's WAL checksum over `data` (a multiple of 8 bytes), continuing from `s`.
pub fn checksum(big_endian: bool, data: &[u8], s: [u32; 2]) -> [u32; 2] {
    let (mut s0, mut s1) = (s[0], s[1]);
    for chunk in data.chunks_exact(8) {
        let (x0, x1) = if big_endian {
            (be32(chunk, 0), be32(chunk, 4))
        } else {
            (
                u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]),
                u32::from_le_bytes([chunk[4], chunk[5], chunk[6], chunk[7]]),
            )
        };
        s0 = s0.wrapping_add(x0).wrapping_add(s1);
        s1 = s1.wrapping_add(x1).wrapping_add(s0);
    }
    [s0, s1]
}

impl WalHeader {
    /// None for: short buffer, all zeros, bad magic, unknown version, bad page size, bad header checksum.
    pub fn parse(buf: &[u8]) -> Option<WalHeader> {
        if buf.len() < WAL_HEADER_LEN {
            return None;
        }
        let magic = be32(buf, 0);
        let big_endian_checksum = match magic {
            MAGIC_LE => false,
            MAGIC_BE => true,
            _ => return None,
        };
        if be32(buf, 4) != VERSION {
            return None;
        }
        let raw = be32(buf, 8);
        let page_size = if raw == 1 { 65536 } else { raw };
        if !(512..=65536).contains(&page_size) || !page_size.is_power_of_two() {
            return None;
        }
        let checksum = [be32(buf, 24), be32(buf, 28)];
        if self::checksum(big_endian_checksum, &buf[..24], [0, 0]) != checksum {
            return None;
        }
        Some(WalHeader {
            big_endian_checksum,
            page_size,
            ckpt_seq: be32(buf, 12),
            salt1: be32(buf, 16),
            salt2: be32(buf, 20),
            checksum,
        })
    }
}

/// The header of SQLite's wal-index (the `-shm` file), as the writers publish it: which frames of the WAL are
/// committed. A frame can be valid in the WAL file (right salts, checksum chain, commit flag) and still not be
/// committed: a writer writes its frames, then publishes the new end in the wal-index; killed in between, its
/// transaction never happened, and the next writer overwrites those frames in place under the same salts.
/// SQLite trusts the WAL file alone only in recovery, when no connection has the wal-index open; walrust keeps
/// it open (its pin), so the wal-index is the truth and frames past `mx_frame` are never shipped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WalIndex {
    /// Number of committed frames in the WAL (SQLite's mxFrame).
    pub mx_frame: u32,
    /// The WAL header's salts this index describes (as the header has them: big-endian words).
    pub salt1: u32,
    pub salt2: u32,
    /// Running checksum after frame `mx_frame`.
    pub frame_checksum: [u32; 2],
    /// Frames already copied into the database file (the checkpoint info's nBackfill, which follows the two
    /// header copies; read without a lock, so only a hint of checkpoint progress).
    pub backfilled: u32,
}

/// Offset of nBackfill in the wal-index (the checkpoint info after the two header copies).
pub const WAL_INDEX_BACKFILL_OFFSET: usize = 2 * WAL_INDEX_HEADER_LEN;

/// Length of one copy of the wal-index header; SQLite keeps two copies back to back at the start of `-shm`.
pub const WAL_INDEX_HEADER_LEN: usize = 48;

impl WalIndex {
    /// Parses one copy of the wal-index header (native byte order, as SQLite maps it). None when it is not
    /// initialised, of an unknown version, or its checksum does not match (a write in progress).
    pub fn parse(b: &[u8]) -> Option<WalIndex> {
        if b.len() < WAL_INDEX_HEADER_LEN {
            return None;
        }
        let ne = |at: usize| u32::from_ne_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
        if ne(0) != VERSION || b[12] != 1 {
            return None;
        }
        if checksum(cfg!(target_endian = "big"), &b[..40], [0, 0]) != [ne(40), ne(44)] {
            return None;
        }
        Some(WalIndex {
            mx_frame: ne(16),
            salt1: be32(b, 32),
            salt2: be32(b, 36),
            frame_checksum: [ne(24), ne(28)],
            backfilled: 0,
        })
    }

    /// Whether this index describes the WAL cycle that `h` heads.
    pub fn describes(&self, h: &WalHeader) -> bool {
        self.salt1 == h.salt1 && self.salt2 == h.salt2
    }
}

/// Position after a whole number of valid frames of one WAL cycle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WalCursor {
    pub frames: u32,
    pub checksum: [u32; 2],
}

impl WalCursor {
    /// Before the first frame: the header's checksum.
    pub fn start(h: &WalHeader) -> WalCursor {
        WalCursor { frames: 0, checksum: h.checksum }
    }
}

/// Byte offset of frame `frame_index` (0-based).
pub fn frame_offset(page_size: u32, frame_index: u32) -> u64 {
    WAL_HEADER_LEN as u64 + frame_index as u64 * (FRAME_HEADER_LEN as u64 + page_size as u64)
}

/// The whole committed transactions found after a cursor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommittedBatch {
    pub start: WalCursor,
    /// Just after the last commit frame included.
    pub end: WalCursor,
    /// "Database size after commit" of that last commit frame.
    pub db_size_pages: u32,
    /// Page number -> file offset of the page data of its latest frame in the batch.
    pub pages: BTreeMap<u32, u64>,
    /// Number of transactions (commit frames).
    pub commits: u32,
}

/// Reads the 32-byte header: `Ok(None)` when the file is shorter or the header is invalid or zeroed.
pub fn read_header(file: &File) -> io::Result<Option<WalHeader>> {
    let mut buf = [0u8; WAL_HEADER_LEN];
    match file.read_exact_at(&mut buf, 0) {
        Ok(()) => Ok(WalHeader::parse(&buf)),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(None),
        Err(e) => Err(e),
    }
}

/// Walks valid frames after `from`, calling `f(frame_index, page_no, commit_size, data_offset, cursor_after)`;
/// `f` returns false to stop. Stops at the first invalid frame or the end of the file.
fn walk(
    file: &File,
    h: &WalHeader,
    from: WalCursor,
    mut f: impl FnMut(u32, u32, u32, u64, WalCursor) -> bool,
) -> io::Result<()> {
    let ps = h.page_size as usize;
    let mut frame = vec![0u8; FRAME_HEADER_LEN + ps];
    let mut cur = from;
    loop {
        let off = frame_offset(h.page_size, cur.frames);
        match file.read_exact_at(&mut frame, off) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e),
        }
        let pgno = be32(&frame, 0);
        let commit = be32(&frame, 4);
        if pgno == 0 || be32(&frame, 8) != h.salt1 || be32(&frame, 12) != h.salt2 {
            return Ok(());
        }
        let s = checksum(h.big_endian_checksum, &frame[..8], cur.checksum);
        let s = checksum(h.big_endian_checksum, &frame[FRAME_HEADER_LEN..], s);
        if s != [be32(&frame, 16), be32(&frame, 20)] {
            return Ok(());
        }
        let index = cur.frames;
        cur = WalCursor { frames: cur.frames + 1, checksum: s };
        if !f(index, pgno, commit, off + FRAME_HEADER_LEN as u64, cur) {
            return Ok(());
        }
    }
}

/// Reads the whole committed transactions after `from` (which must belong to this header's cycle) and before
/// frame `committed` (the wal-index's mxFrame, [`WalIndex`]: frames past it are not committed even when they are valid,
/// see there). Returns None when none follows. Stops at the first commit boundary once at least `max_frames`
/// frames were consumed (one larger transaction is still returned whole). Memory is O(distinct pages in the
/// batch).
pub fn read_batch(
    file: &File,
    h: &WalHeader,
    from: WalCursor,
    max_frames: u32,
    committed: u32,
) -> io::Result<Option<CommittedBatch>> {
    let mut pending: Vec<(u32, u64)> = Vec::new(); // frames of the transaction being read
    let mut pages: BTreeMap<u32, u64> = BTreeMap::new();
    let mut end = from;
    let mut db_size = 0u32;
    let mut commits = 0u32;
    walk(file, h, from, |index, pgno, commit, data_off, after| {
        if index >= committed {
            return false;
        }
        pending.push((pgno, data_off));
        if commit != 0 {
            for (p, o) in pending.drain(..) {
                pages.insert(p, o);
            }
            end = after;
            db_size = commit;
            commits += 1;
            if end.frames - from.frames >= max_frames {
                return false;
            }
        }
        true
    })?;
    if commits == 0 {
        return Ok(None);
    }
    Ok(Some(CommittedBatch { start: from, end, db_size_pages: db_size, pages, commits }))
}

/// The cursor after the first `frames` valid frames of the cycle, or None if fewer valid frames exist.
pub fn cursor_at(file: &File, h: &WalHeader, frames: u32) -> io::Result<Option<WalCursor>> {
    let start = WalCursor::start(h);
    if frames == 0 {
        return Ok(Some(start));
    }
    let mut found = None;
    walk(file, h, start, |index, _, _, _, after| {
        if index + 1 == frames {
            found = Some(after);
            return false;
        }
        true
    })?;
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a WAL image by hand: header + frames (pgno, commit, fill byte).
    pub(crate) fn build(big_endian: bool, page_size: u32, salts: (u32, u32), frames: &[(u32, u32, u8)]) -> Vec<u8> {
        let mut out = Vec::new();
        let magic = if big_endian { MAGIC_BE } else { MAGIC_LE };
        for v in [magic, VERSION, page_size, 7, salts.0, salts.1] {
            out.extend_from_slice(&v.to_be_bytes());
        }
        let s = checksum(big_endian, &out, [0, 0]);
        out.extend_from_slice(&s[0].to_be_bytes());
        out.extend_from_slice(&s[1].to_be_bytes());
        let mut run = s;
        for &(pgno, commit, fill) in frames {
            let mut fh = Vec::new();
            for v in [pgno, commit, salts.0, salts.1] {
                fh.extend_from_slice(&v.to_be_bytes());
            }
            let page = vec![fill; page_size as usize];
            run = checksum(big_endian, &fh[..8], run);
            run = checksum(big_endian, &page, run);
            fh.extend_from_slice(&run[0].to_be_bytes());
            fh.extend_from_slice(&run[1].to_be_bytes());
            out.extend_from_slice(&fh);
            out.extend_from_slice(&page);
        }
        out
    }

    fn file_with(bytes: &[u8]) -> File {
        let p = std::env::temp_dir().join(format!(
            "walrust-wal-unit-{}-{}",
            std::process::id(),
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
        ));
        std::fs::write(&p, bytes).unwrap();
        let f = File::open(&p).unwrap();
        std::fs::remove_file(&p).unwrap();
        f
    }

    #[test]
    fn reads_committed_transactions_in_both_byte_orders() {
        for be in [false, true] {
            let img = build(be, 512, (11, 22), &[(1, 0, 1), (2, 2, 2), (2, 0, 3), (3, 3, 4), (1, 0, 5)]);
            let f = file_with(&img);
            let h = read_header(&f).unwrap().unwrap();
            assert_eq!(h.big_endian_checksum, be);
            let b = read_batch(&f, &h, WalCursor::start(&h), u32::MAX, u32::MAX).unwrap().unwrap();
            assert_eq!(b.commits, 2);
            assert_eq!(b.end.frames, 4, "the uncommitted last frame is not included");
            assert_eq!(b.db_size_pages, 3);
            assert_eq!(b.pages.len(), 3);
            assert_eq!(b.pages[&2], frame_offset(512, 2) + 24, "latest version of page 2 wins");
            assert_eq!(cursor_at(&f, &h, 4).unwrap(), Some(b.end));
            assert_eq!(cursor_at(&f, &h, 6).unwrap(), None);
            // max_frames splits at commit boundaries.
            let b1 = read_batch(&f, &h, WalCursor::start(&h), 1, u32::MAX).unwrap().unwrap();
            assert_eq!((b1.commits, b1.end.frames), (1, 2));
            let b2 = read_batch(&f, &h, b1.end, 1, u32::MAX).unwrap().unwrap();
            assert_eq!((b2.commits, b2.end.frames), (1, 4));
            assert_eq!(read_batch(&f, &h, b2.end, 1, u32::MAX).unwrap(), None);
        }
    }

    #[test]
    fn a_flipped_byte_ends_the_wal_at_that_frame() {
        let mut img = build(false, 512, (1, 2), &[(1, 1, 1), (2, 2, 2), (3, 3, 3)]);
        let off = frame_offset(512, 1) as usize + 24 + 100;
        img[off] ^= 0x40;
        let f = file_with(&img);
        let h = read_header(&f).unwrap().unwrap();
        let b = read_batch(&f, &h, WalCursor::start(&h), u32::MAX, u32::MAX).unwrap().unwrap();
        assert_eq!((b.commits, b.end.frames), (1, 1));
    }

    #[test]
    fn frames_from_an_older_cycle_are_not_read() {
        let old = build(false, 512, (5, 9), &[(1, 1, 1), (2, 2, 2), (3, 3, 3)]);
        let new = build(false, 512, (6, 77), &[(1, 1, 9)]);
        let mut img = old.clone();
        img[..new.len()].copy_from_slice(&new);
        let f = file_with(&img);
        let h = read_header(&f).unwrap().unwrap();
        assert_eq!(h.salt1, 6);
        let b = read_batch(&f, &h, WalCursor::start(&h), u32::MAX, u32::MAX).unwrap().unwrap();
        assert_eq!((b.commits, b.end.frames), (1, 1));
    }

    #[test]
    fn missing_empty_and_zero_headers_are_not_errors() {
        assert_eq!(read_header(&file_with(&[])).unwrap(), None);
        assert_eq!(read_header(&file_with(&[0u8; 4096])).unwrap(), None);
        let mut img = build(false, 512, (1, 2), &[]);
        img[25] ^= 1;
        assert_eq!(read_header(&file_with(&img)).unwrap(), None, "bad header checksum");
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        let mut x: u64 = 0x9e3779b97f4a7c15;
        for _ in 0..300 {
            let mut bytes = build(x & 1 == 0, 512, (x as u32, (x >> 32) as u32), &[(1, 1, 1), (2, 2, 2)]);
            let n = bytes.len();
            for _ in 0..(x % 8) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                bytes[(x as usize) % n] = x as u8;
            }
            bytes.truncate(n - (x as usize % 700));
            let f = file_with(&bytes);
            if let Ok(Some(h)) = read_header(&f) {
                let _ = read_batch(&f, &h, WalCursor::start(&h), u32::MAX, u32::MAX);
                let _ = cursor_at(&f, &h, 2);
            }
        }
    }
}
