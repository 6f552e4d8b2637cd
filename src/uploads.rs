//! The upload workers: one pool of threads per process that sends the (small, already encoded) objects of every
//! database's loop. A loop hands its object over and waits for the answer, so the order of its uploads and its
//! retry rules are unchanged; what changes is where the request runs. The HTTP request, its signing and their
//! many small allocations happen on a few shared threads instead of on a thousand databases' threads, each of
//! which would otherwise keep its own stack pages and allocator caches from them (issue #4: memory flat in the
//! number of databases). The pool is bounded: with all workers busy (a slow storage), loops wait here and their
//! frames wait in their WALs, which is back-pressure, not memory.

use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Mutex, OnceLock};

/// Workers in the pool: as many as requests a storage handle lets in flight.
pub const WORKERS: usize = 16;

type Job = Box<dyn FnOnce() + Send + 'static>;

struct Pool {
    tx: Mutex<Option<SyncSender<Job>>>,
}

fn pool() -> &'static Pool {
    static POOL: OnceLock<Pool> = OnceLock::new();
    POOL.get_or_init(|| {
        let (tx, rx) = sync_channel::<Job>(0);
        let rx = Arc::new(Mutex::new(rx));
        let mut started = 0;
        for i in 0..WORKERS {
            let rx = Arc::clone(&rx);
            let spawned = std::thread::Builder::new()
                .name(format!("walrust-upload-{i}"))
                .stack_size(256 * 1024)
                .spawn(move || work(&rx));
            if spawned.is_ok() {
                started += 1;
            }
        }
        // No worker could start (thread limit): jobs run on the caller's thread (see `run`).
        Pool { tx: Mutex::new((started > 0).then_some(tx)) }
    })
}

fn work(rx: &Mutex<Receiver<Job>>) {
    let mut nice = crate::priority::pool_nice();
    crate::priority::lower_this_thread(nice);
    loop {
        let job = {
            let rx = rx.lock().unwrap_or_else(|p| p.into_inner());
            rx.recv()
        };
        match job {
            Ok(job) => {
                // A reload (SIGHUP) may have changed the levels since the last job.
                if crate::priority::pool_nice() != nice {
                    nice = crate::priority::pool_nice();
                    crate::priority::lower_this_thread(nice);
                }
                job();
                // The request's stack pages go back before waiting for the next one.
                crate::stack::release_unused();
            }
            Err(_) => return,
        }
    }
}

/// Runs `job` on a pool worker and returns its result; blocks while every worker is busy. Runs it on the
/// calling thread when the pool has no worker (threads could not be started). None if it panicked.
pub fn run<T: Send + 'static>(job: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    let sender = pool().tx.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let Some(sender) = sender else { return Some(job()) };
    let (done_tx, done_rx) = sync_channel::<T>(1);
    // The job comes back if no worker takes it (they all ended): it then runs here.
    let slot = Arc::new(Mutex::new(Some(job)));
    let theirs = Arc::clone(&slot);
    let sent = sender.send(Box::new(move || {
        let job = theirs.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(job) = job {
            let _ = done_tx.send(job());
        }
    }));
    if sent.is_ok() {
        if let Ok(v) = done_rx.recv() {
            return Some(v);
        }
    }
    // Not taken (the workers ended): run it here. Taken but no answer: it panicked.
    let job = slot.lock().unwrap_or_else(|p| p.into_inner()).take();
    job.map(|job| job())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobs_run_on_the_pool_with_at_most_workers_at_once_and_return_their_results() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static NOW: AtomicUsize = AtomicUsize::new(0);
        static MAX: AtomicUsize = AtomicUsize::new(0);
        let callers: Vec<_> = (0..40)
            .map(|i| {
                std::thread::spawn(move || {
                    run(move || {
                        let n = NOW.fetch_add(1, Ordering::SeqCst) + 1;
                        MAX.fetch_max(n, Ordering::SeqCst);
                        std::thread::sleep(std::time::Duration::from_millis(20));
                        NOW.fetch_sub(1, Ordering::SeqCst);
                        (i, std::thread::current().name().unwrap_or_default().to_string())
                    })
                    .unwrap()
                })
            })
            .collect();
        for (i, c) in callers.into_iter().enumerate() {
            let (got, thread) = c.join().unwrap();
            assert_eq!(got, i);
            assert!(thread.starts_with("walrust-upload-"), "ran on {thread}");
        }
        let max = MAX.load(Ordering::SeqCst);
        assert!(max > 1 && max <= WORKERS, "{max} jobs at once");
    }
}
