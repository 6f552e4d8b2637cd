//! The storage contract, run unchanged against both backends: the local directory and a real S3 server
//! (SeaweedFS from `scripts/s3-start`, or any S3 named by WALRUST_TEST_S3_ENDPOINT / WALRUST_TEST_S3_BUCKET).
//!
//! Every test works under its own random prefix, so tests run in parallel and leave each other alone.

mod support;

use std::io::Read;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use walrust::storage::credentials::{AwsCredentials, AwsSettings, Secret};
use walrust::storage::retry::RetryPolicy;
use walrust::storage::s3::S3Storage;
use walrust::storage::{self, PutOutcome, Storage, StorageError, StorageRef};

use support::{s3_env, unique};

/// Deterministic, incompressible-looking bytes.
struct Pattern {
    state: u64,
    left: u64,
}

impl Pattern {
    fn new(seed: u64, len: u64) -> Self {
        Pattern { state: seed | 1, left: len }
    }
}

impl Read for Pattern {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = (buf.len() as u64).min(self.left) as usize;
        for b in &mut buf[..n] {
            self.state ^= self.state << 13;
            self.state ^= self.state >> 7;
            self.state ^= self.state << 17;
            *b = self.state as u8;
        }
        self.left -= n as u64;
        Ok(n)
    }
}

fn sha_of(r: &mut dyn Read) -> (u64, [u8; 32]) {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0;
    loop {
        let n = r.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        total += n as u64;
        h.update(&buf[..n]);
    }
    (total, h.finalize().into())
}

fn read_all(s: &dyn Storage, key: &str) -> Vec<u8> {
    let mut out = Vec::new();
    s.get(key).unwrap().read_to_end(&mut out).unwrap();
    out
}

// ---- backends ----

fn local() -> StorageRef {
    let dir = std::env::temp_dir().join(unique("walrust-contract"));
    Arc::new(storage::local::LocalStorage::open(&dir, true).unwrap())
}

fn s3_with(prefix: &str, secret: Option<&str>, endpoint: Option<&str>, retry: RetryPolicy) -> Option<S3Storage> {
    let env = s3_env()?;
    let settings = AwsSettings {
        credentials: Some(AwsCredentials {
            access_key_id: env.access_key.clone(),
            secret_access_key: Secret::new(secret.unwrap_or(&env.secret_key)),
            session_token: None,
            source: "test".into(),
        }),
        provider: None,
        region: env.region.clone(),
    };
    Some(
        S3Storage::with_settings(&env.bucket, prefix, Some(endpoint.unwrap_or(&env.endpoint)), settings, retry)
            .unwrap(),
    )
}

fn s3() -> Option<StorageRef> {
    let prefix = format!("{}/", unique("contract"));
    s3_with(&prefix, None, None, RetryPolicy::default()).map(|s| Arc::new(s) as StorageRef)
}

macro_rules! contract {
    ($($case:ident),* $(,)?) => {
        mod local_backend {
            $( #[test] fn $case() { super::$case(&*super::local()); } )*
        }
        mod s3_backend {
            $( #[test] fn $case() { if let Some(s) = super::s3() { super::$case(&*s); } } )*
        }
    };
}

contract!(
    round_trips_empty_small_and_64_mib,
    ranged_reads,
    missing_key_is_typed_not_found,
    put_replaces_and_put_if_absent_does_not,
    listing_paginates_past_1000_keys_and_deletes_1500,
    listing_with_delimiter_and_start_after,
    racing_create_if_absent_has_exactly_one_winner,
    racing_create_if_absent_multipart,
);

// ---- the cases ----

fn round_trips_empty_small_and_64_mib(s: &dyn Storage) {
    s.put("empty", &mut &b""[..]).unwrap();
    assert_eq!(read_all(s, "empty"), b"");
    s.put("a/small", &mut &b"hello walrus"[..]).unwrap();
    assert_eq!(read_all(s, "a/small"), b"hello walrus");

    let len = 64 * 1024 * 1024 + 12_345;
    let expected = sha_of(&mut Pattern::new(7, len));
    assert_eq!(s.put_if_absent("big", &mut Pattern::new(7, len)).unwrap(), PutOutcome::Created);
    assert_eq!(sha_of(&mut s.get("big").unwrap()), expected);
    let listed = storage::list_all(s, "", None).unwrap();
    let sizes: Vec<(&str, u64)> = listed.iter().map(|o| (o.key.as_str(), o.size)).collect();
    assert_eq!(sizes, vec![("a/small", 12), ("big", len), ("empty", 0)]);
}

fn ranged_reads(s: &dyn Storage) {
    s.put("r", &mut &b"0123456789"[..]).unwrap();
    let mut got = String::new();
    s.get_range("r", 2, 4).unwrap().read_to_string(&mut got).unwrap();
    assert_eq!(got, "2345");
    got.clear();
    s.get_range("r", 8, 100).unwrap().read_to_string(&mut got).unwrap();
    assert_eq!(got, "89", "a range past the end is cut at the end");
    match s.get_range("r", 10, 5) {
        Err(StorageError::Service { status: 416, .. }) => {}
        Err(e) => panic!("expected InvalidRange, got {e}"),
        Ok(_) => panic!("expected InvalidRange"),
    }
    // A range inside a multipart-sized object.
    let len = 9 * 1024 * 1024;
    s.put("rbig", &mut Pattern::new(3, len)).unwrap();
    let mut whole = Vec::new();
    Pattern::new(3, len).read_to_end(&mut whole).unwrap();
    let mut part = Vec::new();
    s.get_range("rbig", 8 * 1024 * 1024 - 10, 20).unwrap().read_to_end(&mut part).unwrap();
    assert_eq!(part, &whole[8 * 1024 * 1024 - 10..8 * 1024 * 1024 + 10]);
}

fn missing_key_is_typed_not_found(s: &dyn Storage) {
    match s.get("no/such/key") {
        Err(StorageError::NotFound { key }) => assert_eq!(key, "no/such/key"),
        Err(e) => panic!("expected NotFound, got {e}"),
        Ok(_) => panic!("expected NotFound"),
    }
    assert!(matches!(s.get_range("nope", 0, 1), Err(StorageError::NotFound { .. })));
    // Deleting missing keys is not an error.
    s.delete_many(&["nope".to_string(), "also/nope".to_string()]).unwrap();
    assert!(storage::list_all(s, "", None).unwrap().is_empty());
}

fn put_replaces_and_put_if_absent_does_not(s: &dyn Storage) {
    assert_eq!(s.put_if_absent("k", &mut &b"first"[..]).unwrap(), PutOutcome::Created);
    assert_eq!(s.put_if_absent("k", &mut &b"second"[..]).unwrap(), PutOutcome::AlreadyExists);
    assert_eq!(read_all(s, "k"), b"first");
    s.put("k", &mut &b"third"[..]).unwrap();
    assert_eq!(read_all(s, "k"), b"third");
    s.delete_many(&["k".to_string()]).unwrap();
    assert_eq!(s.put_if_absent("k", &mut &b"fourth"[..]).unwrap(), PutOutcome::Created);
    assert_eq!(read_all(s, "k"), b"fourth");
}

fn put_many(s: &dyn Storage, keys: &[String]) {
    std::thread::scope(|scope| {
        for chunk in keys.chunks(keys.len().div_ceil(8)) {
            scope.spawn(move || {
                for k in chunk {
                    s.put(k, &mut k.as_bytes()).unwrap();
                }
            });
        }
    });
}

fn listing_paginates_past_1000_keys_and_deletes_1500(s: &dyn Storage) {
    let keys: Vec<String> = (0..1500).map(|i| format!("many/{i:05}")).collect();
    put_many(s, &keys);
    s.put("other/x", &mut &b"x"[..]).unwrap();

    let first = s.list_page("many/", None, false, None).unwrap();
    assert!(first.objects.len() <= 1000 && first.next.is_some(), "first page: {}", first.objects.len());
    let all = storage::list_all(s, "many/", None).unwrap();
    let got: Vec<String> = all.iter().map(|o| o.key.clone()).collect();
    assert_eq!(got, keys, "every key once, in order");
    assert!(all.iter().all(|o| o.size == 10));

    s.delete_many(&keys).unwrap();
    assert!(storage::list_all(s, "many/", None).unwrap().is_empty());
    assert_eq!(storage::list_all(s, "", None).unwrap().len(), 1, "only other/x is left");
}

fn listing_with_delimiter_and_start_after(s: &dyn Storage) {
    for k in ["db1/g1/a", "db1/g1/b", "db1/g2/a", "db2/g1/a", "top"] {
        s.put(k, &mut &b"v"[..]).unwrap();
    }
    assert_eq!(storage::list_prefixes(s, "").unwrap(), vec!["db1/", "db2/"]);
    assert_eq!(storage::list_prefixes(s, "db1/").unwrap(), vec!["db1/g1/", "db1/g2/"]);
    let after: Vec<String> =
        storage::list_all(s, "db1/", Some("db1/g1/a")).unwrap().into_iter().map(|o| o.key).collect();
    assert_eq!(after, vec!["db1/g1/b", "db1/g2/a"]);
    let page = s.list_page("db1/g", None, true, None).unwrap();
    assert!(page.objects.is_empty());
    assert_eq!(page.common_prefixes, vec!["db1/g1/", "db1/g2/"]);
}

fn race(s: &dyn Storage, key: &str, len: u64, rounds: usize) {
    for round in 0..rounds {
        let key = format!("{key}-{round}");
        let barrier = Barrier::new(2);
        let outcomes: Vec<(u64, PutOutcome)> = std::thread::scope(|scope| {
            let handles: Vec<_> = (1..=2u64)
                .map(|seed| {
                    let (barrier, key) = (&barrier, &key);
                    scope.spawn(move || {
                        barrier.wait();
                        (seed, s.put_if_absent(key, &mut Pattern::new(seed, len)).unwrap())
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let winners: Vec<u64> =
            outcomes.iter().filter(|(_, o)| *o == PutOutcome::Created).map(|(seed, _)| *seed).collect();
        assert_eq!(winners.len(), 1, "round {round}: exactly one writer wins: {outcomes:?}");
        assert_eq!(
            sha_of(&mut s.get(&key).unwrap()),
            sha_of(&mut Pattern::new(winners[0], len)),
            "the stored object is the winner's, whole"
        );
    }
}

fn racing_create_if_absent_has_exactly_one_winner(s: &dyn Storage) {
    race(s, "race-small", 1000, 10);
}

fn racing_create_if_absent_multipart(s: &dyn Storage) {
    race(s, "race-big", 9 * 1024 * 1024, 2);
}

// ---- S3-only failure modes ----

#[test]
fn s3_wrong_secret_is_a_clear_auth_error_without_retries() {
    let Some(s) = s3_with(&format!("{}/", unique("auth")), Some("not-the-secret"), None, RetryPolicy::default()) else {
        return;
    };
    let started = Instant::now();
    let err = s.list_page("", None, false, None).unwrap_err();
    assert!(matches!(&err, StorageError::Auth { code, .. } if code == "SignatureDoesNotMatch"), "{err}");
    assert!(err.to_string().contains("SignatureDoesNotMatch"), "{err}");
    assert!(!err.to_string().contains("not-the-secret"));
    let err = s.put("k", &mut &b"v"[..]).unwrap_err();
    assert!(matches!(err, StorageError::Auth { .. }), "{err}");
    assert_eq!(s.counts().total(), 2, "auth errors are not retried");
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[test]
fn s3_missing_bucket_is_named() {
    let Some(env) = s3_env() else { return };
    let settings = AwsSettings {
        credentials: Some(AwsCredentials {
            access_key_id: env.access_key.clone(),
            secret_access_key: Secret::new(&env.secret_key),
            session_token: None,
            source: "test".into(),
        }),
        provider: None,
        region: env.region.clone(),
    };
    let s =
        S3Storage::with_settings("walrust-no-such-bucket", "", Some(&env.endpoint), settings, RetryPolicy::default())
            .unwrap();
    match s.get("k") {
        Err(StorageError::NoSuchBucket { bucket }) => assert_eq!(bucket, "walrust-no-such-bucket"),
        Err(e) => panic!("expected NoSuchBucket, got {e}"),
        Ok(_) => panic!("expected NoSuchBucket"),
    }
    let err = s.list_page("", None, false, None).unwrap_err();
    assert!(err.to_string().contains("walrust-no-such-bucket"), "{err}");
}

#[test]
fn s3_server_down_fails_after_bounded_retries() {
    // A port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let endpoint = format!("http://127.0.0.1:{port}");
    let retry = RetryPolicy { attempts_max: 4, backoff_base_ms: 10, backoff_cap_ms: 50 };
    let Some(s) = s3_with("", None, Some(&endpoint), retry) else { return };
    let started = Instant::now();
    let err = s.list_page("", None, false, None).unwrap_err();
    assert!(matches!(err, StorageError::Transport { .. }), "{err}");
    assert!(err.to_string().contains("after 4 attempts"), "{err}");
    assert_eq!(s.counts().total(), 4);
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[test]
fn local_missing_directory_is_no_such_bucket_unless_created() {
    let dir = std::env::temp_dir().join(unique("walrust-missing"));
    match storage::local::LocalStorage::open(&dir, false) {
        Err(StorageError::NoSuchBucket { bucket }) => assert!(bucket.contains("walrust-missing")),
        other => panic!("expected NoSuchBucket, got {other:?}"),
    }
    let s = storage::local::LocalStorage::open(&dir, true).unwrap();
    s.put("k", &mut &b"v"[..]).unwrap();
    assert!(storage::local::LocalStorage::open(&dir, false).is_ok());
}

#[test]
fn local_create_if_absent_is_atomic_across_processes() {
    // Two processes (this test binary re-run as a child) race on the same keys; exactly one wins each.
    if let Ok(dir) = std::env::var("WALRUST_RACE_CHILD_DIR") {
        let s = storage::local::LocalStorage::open(std::path::Path::new(&dir), true).unwrap();
        let mut won = 0;
        for i in 0..200 {
            if s.put_if_absent(&format!("k{i}"), &mut &b"child"[..]).unwrap() == PutOutcome::Created {
                won += 1;
            }
        }
        println!("WON {won}");
        return;
    }
    let dir = std::env::temp_dir().join(unique("walrust-xproc"));
    let s = storage::local::LocalStorage::open(&dir, true).unwrap();
    let exe = std::env::current_exe().unwrap();
    let child = std::process::Command::new(exe)
        .args(["--exact", "local_create_if_absent_is_atomic_across_processes", "--nocapture"])
        .env("WALRUST_RACE_CHILD_DIR", &dir)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut won = 0;
    for i in 0..200 {
        if s.put_if_absent(&format!("k{i}"), &mut &b"parent"[..]).unwrap() == PutOutcome::Created {
            won += 1;
        }
    }
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let child_won: usize =
        text.lines().find_map(|l| l.strip_prefix("WON ")).expect("child ran").trim().parse().unwrap();
    assert_eq!(won + child_won, 200, "every key has exactly one winner");
    for i in 0..200 {
        let v = read_all(&s, &format!("k{i}"));
        assert!(v == b"parent" || v == b"child", "whole objects only");
    }
}
