//! Shared helpers of the integration tests: the S3 test server's coordinates and unique names.
#![allow(dead_code)]

use std::sync::atomic::{AtomicU64, Ordering};

/// Where the test S3 server is, from the variables `scripts/s3-start` prints.
pub struct S3Env {
    pub endpoint: String,
    pub bucket: String,
    pub access_key: String,
    pub secret_key: String,
    pub region: String,
}

/// The S3 test server, or `None` (the test then skips) when none is configured and WALRUST_REQUIRE_S3 is not
/// set. CI sets WALRUST_REQUIRE_S3=1 so that a missing server fails instead of skipping.
pub fn s3_env() -> Option<S3Env> {
    let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    match (var("WALRUST_TEST_S3_ENDPOINT"), var("WALRUST_TEST_S3_BUCKET")) {
        (Some(endpoint), Some(bucket)) => Some(S3Env {
            endpoint,
            bucket,
            access_key: var("AWS_ACCESS_KEY_ID").expect("AWS_ACCESS_KEY_ID for the test S3 server"),
            secret_key: var("AWS_SECRET_ACCESS_KEY").expect("AWS_SECRET_ACCESS_KEY for the test S3 server"),
            region: var("AWS_REGION").unwrap_or_else(|| "us-east-1".into()),
        }),
        _ if var("WALRUST_REQUIRE_S3").as_deref() == Some("1") => {
            panic!("WALRUST_REQUIRE_S3=1 but WALRUST_TEST_S3_ENDPOINT/WALRUST_TEST_S3_BUCKET are not set: run eval \"$(scripts/s3-start)\"")
        }
        _ => {
            eprintln!("skipping: no S3 test server (eval \"$(scripts/s3-start)\" to run S3 tests)");
            None
        }
    }
}

/// A name no other test (or earlier run) uses.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    format!("{prefix}-{}-{}-{}", std::process::id(), nanos % 1_000_000_000_000, N.fetch_add(1, Ordering::Relaxed))
}
