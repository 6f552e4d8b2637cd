//! Memory benchmark of the storage layer: uploads SIZE_MIB (default 1024) of incompressible pseudo-random bytes
//! through `Storage::put`, downloads them again through `Storage::get`, checks the SHA-256 of both, deletes the
//! object, and prints the peak RSS, time and speed of each phase:
//!
//!   cargo run --release --example bench_storage -- LOCATION [SIZE_MIB]
//!   upload 1024 MiB (s3): peak RSS 23.4 MiB, 1.9 s, 540 MiB/s
//!
//! LOCATION is `s3://BUCKET/PREFIX/` or `file:///ABS/DIR`. The S3 endpoint is WALRUST_TEST_S3_ENDPOINT when set,
//! else AWS_ENDPOINT_URL(_S3); credentials and region come from the usual AWS_* variables.
//! The body is generated on the fly and never held in memory. Peak RSS is the process-wide VmHWM of
//! /proc/self/status, reset before each phase by writing "5" to /proc/self/clear_refs.
//! Exits 1 if the round trip is not equal (or on any error).

use std::io::{self, Read};
use std::process::exit;
use std::time::Instant;

use sha2::{Digest, Sha256};
use walrust::storage::{open, parse_location, OpenOptions, Storage};

/// Incompressible bytes from xorshift64*, `remaining` of them, hashed as they are read.
struct PrngReader {
    state: u64,
    remaining: u64,
    hasher: Sha256,
}

impl Read for PrngReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = buf.len().min(self.remaining as usize) & !7; // whole words (sizes are MiB multiples)
        for chunk in buf[..n].chunks_exact_mut(8) {
            self.state ^= self.state >> 12;
            self.state ^= self.state << 25;
            self.state ^= self.state >> 27;
            chunk.copy_from_slice(&self.state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
        }
        self.hasher.update(&buf[..n]);
        self.remaining -= n as u64;
        Ok(n)
    }
}

fn status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    let line = status.lines().find(|l| l.starts_with(field)).expect("field in /proc/self/status");
    line.split_whitespace().nth(1).and_then(|v| v.parse().ok()).expect("number in /proc/self/status")
}

/// Resets VmHWM to the current RSS, and checks that it did.
fn reset_peak() {
    std::fs::write("/proc/self/clear_refs", "5").expect("write /proc/self/clear_refs");
    let (hwm, rss) = (status_kib("VmHWM:"), status_kib("VmRSS:"));
    assert!(hwm <= rss + 1024, "VmHWM was not reset ({hwm} KiB > VmRSS {rss} KiB)");
}

fn report(phase: &str, mib: u64, backend: &str, start: Instant) {
    let secs = start.elapsed().as_secs_f64();
    let peak = status_kib("VmHWM:") as f64 / 1024.0;
    println!("{phase} {mib} MiB ({backend}): peak RSS {peak:.1} MiB, {secs:.1} s, {:.0} MiB/s", mib as f64 / secs);
}

fn fail(msg: String) -> ! {
    eprintln!("bench_storage: {msg}");
    exit(1)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.is_empty() || args.len() > 2 {
        fail("usage: bench_storage LOCATION [SIZE_MIB]".into());
    }
    let mib: u64 = args.get(1).map_or(1024, |s| s.parse().unwrap_or_else(|_| fail(format!("bad size {s}"))));
    let location = parse_location(&args[0]).unwrap_or_else(|e| fail(e.to_string()));
    let opts = OpenOptions {
        endpoint: std::env::var("WALRUST_TEST_S3_ENDPOINT").ok().filter(|s| !s.is_empty()),
        create: true,
        ..Default::default()
    };
    let storage = open(&location, &opts).unwrap_or_else(|e| fail(e.to_string()));
    let backend = if args[0].starts_with("s3://") { "s3" } else { "file" };
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let key = format!("bench-storage-{}-{nanos}", std::process::id());

    reset_peak();
    let start = Instant::now();
    let mut body = PrngReader { state: 0x9E37_79B9_7F4A_7C15, remaining: mib << 20, hasher: Sha256::new() };
    storage.put(&key, &mut body).unwrap_or_else(|e| fail(format!("put: {e}")));
    let sent = body.hasher.finalize();
    report("upload", mib, backend, start);

    reset_peak();
    let start = Instant::now();
    let got = download(storage.as_ref(), &key).unwrap_or_else(|e| fail(format!("get: {e}")));
    report("download", mib, backend, start);

    storage.delete_many(std::slice::from_ref(&key)).unwrap_or_else(|e| fail(format!("delete: {e}")));
    if got != (mib << 20, sent.to_vec()) {
        fail(format!("round trip differs: got {} bytes, sha256 mismatch: {}", got.0, got.1 != sent.to_vec()));
    }
    println!("round trip {mib} MiB ({backend}): equal (sha256 {})", hex(&sent));
}

/// Streams the object through SHA-256; returns (bytes, digest).
fn download(storage: &dyn Storage, key: &str) -> Result<(u64, Vec<u8>), String> {
    let mut reader = storage.get(key).map_err(|e| e.to_string())?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0u64;
    loop {
        match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                hasher.update(&buf[..n]);
                total += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.to_string()),
        }
    }
    Ok((total, hasher.finalize().to_vec()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
