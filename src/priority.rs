//! CPU priority of replication work. The threads that read, compress and upload WAL frames run `nice` levels
//! below the process (default 10): when the application keeps every core busy, it keeps its CPU and walrust
//! falls behind for the length of the burst, then catches up. On 2 cores shared with the S3 server, a flat-out
//! writer lost 20.9% of its commits/s to walrust at its own priority and 13.6% at 10 below (BENCHMARKS.md).
//!
//! The cost is lag under CPU contention, never data: frames wait in the WAL until they are shipped. Linux keeps a
//! nice value per thread, so the process's other threads (the `--exec` application's parent, signals, metrics)
//! and the application itself are unaffected. Nice orders threads within one CPU cgroup: where the application
//! runs in another (another systemd service, another container), that cgroup's weight decides instead.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::OnceLock;

/// Levels below the process that replication threads run at unless configured.
pub const DEFAULT_NICE: u8 = 10;

/// The upload workers' levels (shared by every database): `[sync] nice` or `--nice`, set by `watch`.
static POOL_NICE: AtomicU8 = AtomicU8::new(DEFAULT_NICE);

/// The process's nice value, read once. `watch` reads it on its main thread before starting any worker, so
/// that a worker started by another worker does not count the levels twice.
pub fn base() -> i32 {
    static BASE: OnceLock<i32> = OnceLock::new();
    *BASE.get_or_init(|| {
        // getpriority returns the value itself, so -1 is an error only when errno says so.
        // SAFETY: errno is thread-local; getpriority only reads.
        unsafe {
            *libc::__errno_location() = 0;
            let v = libc::getpriority(libc::PRIO_PROCESS, 0);
            if v == -1 && *libc::__errno_location() != 0 {
                0
            } else {
                v
            }
        }
    })
}

/// Runs the calling thread `by` levels below the process (0: at the process's priority). Best effort: a limit
/// that refuses it (raising a priority needs CAP_SYS_NICE or RLIMIT_NICE) leaves the thread where it was.
pub fn lower_this_thread(by: u8) {
    let target = (base() + by as i32).min(19);
    // SAFETY: setpriority on the calling thread (who = 0) changes nothing but its scheduling weight.
    if unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, target) } != 0 {
        crate::log::debug(&format!("could not lower this thread's priority: {}", std::io::Error::last_os_error()));
    }
}

/// Sets the upload workers' levels: workers started later begin there, running ones move before their next job
/// (moving up, to fewer levels, needs the privilege to raise a priority; without it they stay where they are).
pub fn set_pool_nice(by: u8) {
    POOL_NICE.store(by, Ordering::Relaxed);
}

pub fn pool_nice() -> u8 {
    POOL_NICE.load(Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn own_nice() -> i32 {
        // SAFETY: as in base().
        unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) }
    }

    #[test]
    fn a_lowered_thread_runs_below_the_process_and_others_do_not() {
        let base = base();
        let (lowered, other) = std::thread::scope(|s| {
            let lowered = s.spawn(|| {
                lower_this_thread(7);
                // Lowering again does not count twice: the levels are from the process's value.
                lower_this_thread(7);
                own_nice()
            });
            let other = s.spawn(own_nice);
            (lowered.join().unwrap(), other.join().unwrap())
        });
        assert_eq!(lowered, (base + 7).min(19));
        assert_eq!(other, base);
        assert_eq!(own_nice(), base);
    }
}
