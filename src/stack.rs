//! Giving back the stack pages a thread touched once and no longer uses.
//!
//! A database's thread goes deep only while it ships (encoding, compressing, an HTTP request) and then waits
//! for the next change with a shallow stack; the pages it touched stay resident until the thread ends. With a
//! thousand databases that is tens of MiB doing nothing. [`release_unused`] tells the kernel that the part of
//! the calling thread's stack below the current frame (minus a margin for the call itself) is free: its pages
//! are dropped now and come back zeroed if the thread goes deep again. Nothing live is below the stack pointer
//! (signal handlers, which do run below it, run after the call returns and fault in fresh pages).

/// Bytes below the caller's frame that are left alone: room for the rest of this function's frame and its one
/// call (madvise, a system call wrapper that pushes a return address). A page more would keep a thousand waiting
/// threads' third stack page resident.
const MARGIN: usize = 1024;

/// Releases the unused part of the calling thread's stack. Returns the bytes released (0 where unsupported).
#[cfg(all(target_os = "linux", any(target_env = "gnu", target_env = "musl")))]
pub fn release_unused() -> usize {
    use std::cell::Cell;
    thread_local! {
        /// The lowest usable address of this thread's stack (0: not known yet, usize::MAX: unknown).
        static LOW: Cell<usize> = const { Cell::new(0) };
    }
    let low = LOW.with(|c| {
        if c.get() == 0 {
            c.set(stack_low().unwrap_or(usize::MAX));
        }
        c.get()
    });
    if low == usize::MAX {
        return 0;
    }
    let here = 0u8;
    let sp = std::hint::black_box(&here) as *const u8 as usize;
    // SAFETY: sysconf has no preconditions.
    let page = match unsafe { libc::sysconf(libc::_SC_PAGESIZE) } {
        p if p > 0 => p as usize,
        _ => return 0,
    };
    let end = sp.saturating_sub(MARGIN) & !(page - 1);
    let start = (low + page - 1) & !(page - 1);
    if end <= start {
        return 0;
    }
    // SAFETY: [start, end) lies within this thread's own stack, strictly below the current frame and the
    // margin, where nothing live is stored; MADV_DONTNEED on private anonymous memory only discards pages,
    // which read back as zeros when touched again.
    let rc = unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED) };
    if rc == 0 {
        end - start
    } else {
        0
    }
}

/// See the Linux version: elsewhere nothing is released.
#[cfg(not(all(target_os = "linux", any(target_env = "gnu", target_env = "musl"))))]
pub fn release_unused() -> usize {
    0
}

/// The lowest usable address of the calling thread's stack.
#[cfg(all(target_os = "linux", any(target_env = "gnu", target_env = "musl")))]
fn stack_low() -> Option<usize> {
    // SAFETY: the attribute object is initialised by pthread_getattr_np and destroyed once read; the out
    // pointers are valid locals.
    unsafe {
        let mut attr: libc::pthread_attr_t = std::mem::zeroed();
        if libc::pthread_getattr_np(libc::pthread_self(), &mut attr) != 0 {
            return None;
        }
        let mut addr: *mut libc::c_void = std::ptr::null_mut();
        let mut size: libc::size_t = 0;
        let rc = libc::pthread_attr_getstack(&attr, &mut addr, &mut size);
        libc::pthread_attr_destroy(&mut attr);
        (rc == 0 && !addr.is_null() && size > 0).then_some(addr as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[inline(never)]
    fn go_deep(depth: usize) -> u8 {
        let buf = std::hint::black_box([depth as u8; 4096]);
        if depth == 0 {
            buf[17]
        } else {
            go_deep(depth - 1).wrapping_add(buf[100])
        }
    }

    fn rss_kib() -> u64 {
        let s = std::fs::read_to_string("/proc/self/status").unwrap();
        let line = s.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn a_thread_that_went_deep_gives_its_stack_back_and_can_go_deep_again() {
        std::thread::Builder::new()
            .stack_size(16 << 20)
            .spawn(|| {
                // 256 frames of 4 KiB: about 1 MiB of stack touched.
                assert_eq!(go_deep(256), go_deep(256));
                let before = rss_kib();
                assert!(release_unused() > 0);
                let after = rss_kib();
                assert!(after + 800 <= before, "VmRSS {before} KiB -> {after} KiB");
                // The released pages come back (zeroed) when used again; the computation is unchanged.
                assert_eq!(go_deep(256), go_deep(256));
            })
            .unwrap()
            .join()
            .unwrap();
    }
}
