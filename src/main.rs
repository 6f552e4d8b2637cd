//! The `walrust` binary: parse, run, and turn the result into a stable exit code (see README.md).

fn main() {
    without_thread_caches();
    limit_malloc_arenas();
    let code = match walrust::cli::run(std::env::args_os().skip(1).collect()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("walrust: {e}");
            e.exit_code()
        }
    };
    std::process::exit(code);
}

/// glibc gives each thread that allocates concurrently its own malloc arena and keeps what was freed in it: with
/// one thread per database, a hundred databases held ~30 MB of freed memory in ~16 arenas (measured: 54 MB RSS
/// for 100 databases, 30 MB with one arena). walrust's threads mostly sleep; one arena costs nothing measurable.
/// The binary only: an application embedding the library keeps its own allocator settings.
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only adjusts allocator tuning; called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
        // Buffers of 1 MiB and more (multipart parts, large inline objects) are mapped and given back when freed.
        // glibc's default threshold rises after the first such free, and then every later one stays in the heap.
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
    }
}

/// glibc keeps up to 7 freed chunks of every small size in a cache per thread (tcache), outside the arena. `watch`
/// runs a thread per database, and those caches were half of its heap (measured, 100 databases: heap 11.2 MiB with
/// them, 5.3 MiB without; VmRSS 23.5 -> 17.2 MiB). glibc reads that setting only from `GLIBC_TUNABLES` when the
/// process starts, so `watch` executes itself once more with `glibc.malloc.tcache_count=0` added (same process id,
/// same arguments), then puts the variable back as it was, so that `--exec`'s application inherits the caller's
/// environment unchanged. A user's own tcache setting is kept; if the re-execution fails, walrust carries on with
/// glibc's defaults. The binary only: an application embedding the library keeps its own allocator settings.
fn without_thread_caches() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        use std::os::unix::process::CommandExt;
        const TUNABLES: &str = "GLIBC_TUNABLES";
        const SETTING: &str = "glibc.malloc.tcache_count";
        // The caller's value ("" when it had none), carried across the re-execution.
        const CALLERS: &str = "WALRUST_CALLERS_GLIBC_TUNABLES";

        if let Some(callers) = std::env::var_os(CALLERS) {
            // SAFETY: no other thread exists yet; glibc has already read the variable.
            unsafe {
                if callers.is_empty() {
                    std::env::remove_var(TUNABLES);
                } else {
                    std::env::set_var(TUNABLES, callers);
                }
                std::env::remove_var(CALLERS);
            }
            return;
        }
        let mut args = std::env::args_os();
        let arg0 = args.next();
        let rest: Vec<_> = args.collect();
        if rest.first().is_none_or(|a| a != "watch") {
            return;
        }
        let callers = std::env::var_os(TUNABLES).unwrap_or_default();
        if callers.to_string_lossy().contains(SETTING) {
            return;
        }
        let mut ours = callers.clone();
        if !ours.is_empty() {
            ours.push(":");
        }
        ours.push(format!("{SETTING}=0"));
        // The binary's own path (not /proc/self/exe, which would rename the process "exe" in ps and top).
        let Ok(exe) = std::env::current_exe() else { return };
        let mut cmd = std::process::Command::new(exe);
        if let Some(arg0) = arg0 {
            cmd.arg0(arg0);
        }
        // exec returns only when it failed: then walrust simply runs with glibc's caches.
        let _ = cmd.args(rest).env(TUNABLES, ours).env(CALLERS, callers).exec();
    }
}
