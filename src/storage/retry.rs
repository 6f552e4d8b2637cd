//! Retries of transient storage failures: capped exponential backoff with full jitter, a bounded number of
//! attempts. Auth and client errors are never retried.

use std::time::Duration;

use super::{Result, StorageError};

/// How transient failures are retried.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Total attempts including the first (>= 1).
    pub attempts_max: u32,
    pub backoff_base_ms: u64,
    pub backoff_cap_ms: u64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy { attempts_max: 6, backoff_base_ms: 100, backoff_cap_ms: 5_000 }
    }
}

impl RetryPolicy {
    /// No retries at all (tests, probes).
    pub fn none() -> Self {
        RetryPolicy { attempts_max: 1, ..Default::default() }
    }

    /// Sleep before attempt number `attempt` (1 = first retry): uniform in [0, min(cap, base * 2^attempt)].
    pub fn backoff(&self, attempt: u32) -> Duration {
        let exp = self.backoff_base_ms.saturating_mul(1u64 << attempt.min(20));
        let ceiling = exp.min(self.backoff_cap_ms);
        Duration::from_millis(jitter(ceiling))
    }

    /// Runs `op` until it succeeds, fails with a non-transient error, or attempts run out.
    pub fn run<T>(&self, mut op: impl FnMut() -> Result<T>) -> Result<T> {
        let mut attempt = 0;
        loop {
            match op() {
                Ok(v) => return Ok(v),
                Err(e) if e.is_transient() && attempt + 1 < self.attempts_max.max(1) => {
                    attempt += 1;
                    std::thread::sleep(self.backoff(attempt));
                }
                Err(e) => return Err(give_up(e, attempt + 1)),
            }
        }
    }
}

fn give_up(e: StorageError, attempts: u32) -> StorageError {
    match e {
        StorageError::Transport { message } if attempts > 1 => {
            StorageError::Transport { message: format!("{message} (after {attempts} attempts)") }
        }
        other => other,
    }
}

/// A random number in [0, max], from a small per-thread xorshift seeded by time and thread.
pub fn jitter(max: u64) -> u64 {
    use std::cell::Cell;
    thread_local! {
        static STATE: Cell<u64> = Cell::new(seed());
    }
    if max == 0 {
        return 0;
    }
    STATE.with(|s| {
        let mut x = s.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        s.set(x);
        x % (max + 1)
    })
}

fn seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos());
    h.finish() | 1
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    #[test]
    fn backoff_is_capped_and_jittered() {
        let p = RetryPolicy { attempts_max: 5, backoff_base_ms: 100, backoff_cap_ms: 1000 };
        for attempt in 1..30 {
            assert!(p.backoff(attempt) <= Duration::from_millis(1000));
        }
        let distinct: std::collections::HashSet<_> = (0..50).map(|_| p.backoff(5)).collect();
        assert!(distinct.len() > 5, "full jitter spreads sleeps");
    }

    #[test]
    fn retries_transient_only_and_bounded() {
        let p = RetryPolicy { attempts_max: 4, backoff_base_ms: 1, backoff_cap_ms: 2 };
        let calls = Cell::new(0);
        let r: Result<()> = p.run(|| {
            calls.set(calls.get() + 1);
            Err(StorageError::Transport { message: "reset".into() })
        });
        assert_eq!(calls.get(), 4);
        assert!(r.unwrap_err().to_string().contains("after 4 attempts"));

        calls.set(0);
        let r: Result<()> = p.run(|| {
            calls.set(calls.get() + 1);
            Err(StorageError::Auth { code: "AccessDenied".into(), message: String::new() })
        });
        assert_eq!(calls.get(), 1);
        assert!(r.is_err());

        calls.set(0);
        let r = p.run(|| {
            calls.set(calls.get() + 1);
            if calls.get() < 3 {
                Err(StorageError::Service {
                    status: 503,
                    code: "SlowDown".into(),
                    message: String::new(),
                    key: String::new(),
                })
            } else {
                Ok(7)
            }
        });
        assert_eq!(r.unwrap(), 7);
        assert_eq!(calls.get(), 3);
    }
}
