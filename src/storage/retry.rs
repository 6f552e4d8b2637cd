//! Retries of transient storage failures: capped exponential backoff with full jitter, a bounded number of
//! attempts. Auth and client errors are never retried.
//!
//! A [`Breaker`] (circuit breaker) is shared by every request of one storage handle, i.e. by every database a
//! `watch` replicates. After [`Breaker::THRESHOLD`] consecutive failed attempts (transient errors, across
//! requests and threads) it opens: requests then fail at once, without being sent, for a cool-down that doubles
//! on every failed probe (5 s up to 20 s), so that an outage does not become a retry storm of hundreds of
//! databases times six attempts. When the cool-down has passed one request is let through as a probe (the
//! others keep failing fast while it is in flight); its success closes the breaker, its failure re-opens it.
//! Any answer that is not transient (success, not-found, a refusal) counts as the service being reachable.
//! Callers see the fail-fast error as a transient transport error: `watch` waits it out like any outage, with
//! its data safe in the pinned WAL.

use std::sync::Mutex;
use std::time::{Duration, Instant};

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
    pub fn run<T>(&self, op: impl FnMut() -> Result<T>) -> Result<T> {
        self.run_with(None, op)
    }

    /// [`RetryPolicy::run`] through a circuit breaker: every attempt asks `breaker` first and reports its
    /// outcome to it; while the breaker is open the call fails at once.
    pub fn run_with<T>(&self, breaker: Option<&Breaker>, mut op: impl FnMut() -> Result<T>) -> Result<T> {
        let mut attempt = 0;
        loop {
            let probe = match breaker.map(Breaker::admit).transpose() {
                Ok(p) => p.unwrap_or(false),
                Err(e) => return Err(e),
            };
            let r = op();
            if let Some(b) = breaker {
                b.record(probe, !matches!(&r, Err(e) if e.is_transient()));
            }
            match r {
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

/// Circuit breaker over one storage handle's requests (see the module documentation).
#[derive(Debug)]
pub struct Breaker {
    state: Mutex<BreakerState>,
    threshold: u32,
    cooldown_min: Duration,
    cooldown_max: Duration,
}

#[derive(Debug, Default)]
struct BreakerState {
    /// Failed attempts in a row, across requests.
    failures: u32,
    /// Open until then; `None` when closed.
    open_until: Option<Instant>,
    /// Cool-down of the current (or last) opening.
    cooldown: Duration,
    /// A probe is in flight: other requests keep failing fast.
    probing: bool,
}

impl Default for Breaker {
    fn default() -> Self {
        // A 20 s ceiling keeps catch-up after an outage within a minute: at most ~24 s of cool-down plus
        // watch's own 30 s loop backoff.
        Breaker::new(Breaker::THRESHOLD, Duration::from_secs(5), Duration::from_secs(20))
    }
}

impl Breaker {
    /// Consecutive failed attempts that open the breaker: more than one request's attempts
    /// ([`RetryPolicy::default`] makes 6), so one unlucky request alone never opens it.
    pub const THRESHOLD: u32 = 10;

    /// Opens after `threshold` consecutive failed attempts; the cool-down starts at `cooldown_min` and doubles
    /// on every failed probe up to `cooldown_max`.
    pub fn new(threshold: u32, cooldown_min: Duration, cooldown_max: Duration) -> Breaker {
        Breaker { state: Mutex::new(BreakerState::default()), threshold: threshold.max(1), cooldown_min, cooldown_max }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BreakerState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// May a request be sent now? `Ok(true)` when it is the probe after a cool-down.
    fn admit(&self) -> Result<bool> {
        let mut s = self.lock();
        let Some(until) = s.open_until else { return Ok(false) };
        let now = Instant::now();
        if now >= until && !s.probing {
            s.probing = true;
            return Ok(true);
        }
        let next = if s.probing {
            "a probe request is in flight".to_string()
        } else {
            format!("next probe in {}s", (until.saturating_duration_since(now).as_millis() as u64).div_ceil(1000))
        };
        Err(StorageError::Transport {
            message: format!("circuit breaker open after {} failed attempts in a row; {next}", s.failures),
        })
    }

    /// Reports an attempt: `reachable` when the service answered anything but a transient failure.
    fn record(&self, probe: bool, reachable: bool) {
        let mut s = self.lock();
        if probe {
            s.probing = false;
        }
        if reachable {
            *s = BreakerState::default();
            return;
        }
        s.failures = s.failures.saturating_add(1);
        if probe || (s.open_until.is_none() && s.failures >= self.threshold) {
            // A failed probe doubles the cool-down; a first opening starts at the minimum. Jittered by up to 20%
            // so that several walrust processes sharing an endpoint do not probe in step.
            let base = if probe { (s.cooldown * 2).min(self.cooldown_max) } else { self.cooldown_min };
            let extra = jitter(base.as_millis() as u64 / 5);
            s.cooldown = base;
            s.open_until = Some(Instant::now() + base + Duration::from_millis(extra));
        }
    }

    /// Whether requests are being refused right now (metrics, tests).
    pub fn is_open(&self) -> bool {
        self.lock().open_until.is_some()
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

    fn down() -> Result<()> {
        Err(StorageError::Transport { message: "connection refused".into() })
    }

    #[test]
    fn breaker_opens_after_consecutive_failures_fails_fast_then_probes() {
        let p = RetryPolicy { attempts_max: 4, backoff_base_ms: 1, backoff_cap_ms: 2 };
        let b = Breaker::new(6, Duration::from_millis(200), Duration::from_millis(1000));
        let calls = Cell::new(0);
        let failing = || {
            calls.set(calls.get() + 1);
            down()
        };
        // First request: 4 attempts, still closed (4 < 6).
        assert!(p.run_with(Some(&b), failing).is_err());
        assert_eq!(calls.get(), 4);
        assert!(!b.is_open());
        // Second request: opens after its 2nd attempt (6 in a row) and stops sending at once.
        let e = p.run_with(Some(&b), failing).unwrap_err();
        assert_eq!(calls.get(), 6, "no attempt is sent once the breaker is open");
        assert!(b.is_open());
        assert!(e.is_transient(), "callers wait a fail-fast error out like any outage");
        // While open: nothing is sent at all.
        let e = p.run_with(Some(&b), failing).unwrap_err();
        assert_eq!(calls.get(), 6);
        assert!(e.to_string().contains("circuit breaker open"), "{e}");
        // After the cool-down: exactly one probe; it fails, the breaker re-opens for longer.
        std::thread::sleep(Duration::from_millis(260));
        assert!(p.run_with(Some(&b), failing).is_err());
        assert_eq!(calls.get(), 7, "one probe, then fail fast again");
        std::thread::sleep(Duration::from_millis(260));
        assert!(p.run_with(Some(&b), failing).is_err());
        assert_eq!(calls.get(), 7, "the cool-down doubled after a failed probe");
        // The service is back: the probe succeeds and closes the breaker.
        std::thread::sleep(Duration::from_millis(260));
        assert_eq!(p.run_with(Some(&b), || Ok(5)).unwrap(), 5);
        assert!(!b.is_open());
        assert!(p.run_with(Some(&b), failing).is_err());
        assert_eq!(calls.get(), 11, "closed again: full retries");
    }

    #[test]
    fn breaker_counts_answers_as_reachable_and_lets_one_probe_at_a_time() {
        let p = RetryPolicy::none();
        let b = Breaker::new(3, Duration::from_millis(50), Duration::from_millis(50));
        for _ in 0..2 {
            assert!(p.run_with(Some(&b), down).is_err());
        }
        // A not-found (or any non-transient answer) means the service is up: the count starts again.
        let nf: Result<()> = p.run_with(Some(&b), || Err(StorageError::NotFound { key: "k".into() }));
        assert!(nf.unwrap_err().is_not_found());
        for _ in 0..2 {
            assert!(p.run_with(Some(&b), down).is_err());
        }
        assert!(!b.is_open(), "2 failures since the last answer");
        assert!(p.run_with(Some(&b), down).is_err());
        assert!(b.is_open());
        // One probe at a time: while a probe is in flight, another thread fails fast.
        std::thread::sleep(Duration::from_millis(80));
        let (started_tx, started_rx) = std::sync::mpsc::channel();
        let (finish_tx, finish_rx) = std::sync::mpsc::channel::<()>();
        std::thread::scope(|s| {
            let (pr, br) = (&p, &b);
            let probe = s.spawn(move || {
                pr.run_with(Some(br), || {
                    started_tx.send(()).unwrap();
                    finish_rx.recv().unwrap();
                    Ok(())
                })
            });
            started_rx.recv().unwrap();
            let sent = Cell::new(false);
            let other = p.run_with(Some(&b), || {
                sent.set(true);
                Ok(())
            });
            assert!(other.is_err() && !sent.get(), "a second request waits for the probe's verdict");
            finish_tx.send(()).unwrap();
            probe.join().unwrap().unwrap();
        });
        assert!(!b.is_open());
        assert!(p.run_with(Some(&b), || Ok(())).is_ok());
    }
}
