//! The `walrust` binary: parse, run, and turn the result into a stable exit code (see README.md).

fn main() {
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
