//! A counting semaphore: bounds how many threads do something at once (databases beginning, requests in flight
//! to S3). Waiters block, which is the back-pressure: a database waiting for a slot keeps its unshipped frames
//! in its WAL, not in memory.

use std::sync::{Condvar, Mutex};

pub struct Semaphore {
    free: Mutex<usize>,
    freed: Condvar,
}

/// A held slot, given back when dropped.
pub struct Permit<'a>(&'a Semaphore);

impl Semaphore {
    pub const fn new(slots: usize) -> Semaphore {
        Semaphore { free: Mutex::new(if slots == 0 { 1 } else { slots }), freed: Condvar::new() }
    }

    /// Waits for a free slot.
    pub fn acquire(&self) -> Permit<'_> {
        let mut free = self.free.lock().unwrap_or_else(|p| p.into_inner());
        while *free == 0 {
            free = self.freed.wait(free).unwrap_or_else(|p| p.into_inner());
        }
        *free -= 1;
        Permit(self)
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        *self.0.free.lock().unwrap_or_else(|p| p.into_inner()) += 1;
        self.0.freed.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    #[test]
    fn never_more_holders_than_slots() {
        let s = Arc::new(Semaphore::new(3));
        let (now, max) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let threads: Vec<_> = (0..12)
            .map(|_| {
                let (s, now, max) = (Arc::clone(&s), Arc::clone(&now), Arc::clone(&max));
                std::thread::spawn(move || {
                    for _ in 0..50 {
                        let _p = s.acquire();
                        let n = now.fetch_add(1, Ordering::SeqCst) + 1;
                        max.fetch_max(n, Ordering::SeqCst);
                        std::thread::yield_now();
                        now.fetch_sub(1, Ordering::SeqCst);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(max.load(Ordering::SeqCst), 3);
        assert_eq!(now.load(Ordering::SeqCst), 0);
    }
}
