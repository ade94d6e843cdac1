//! Keeping the sensor resident: a sensor that page-faults on a host whose
//! disk hangs would hang with it, and report nothing.

/// Limits glibc to few malloc arenas (each thread's arena would otherwise be
/// locked and resident too) and locks all current and future pages.
pub fn lock_all() -> std::io::Result<()> {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only changes allocator tuning (M_ARENA_MAX is valid);
    // malloc_trim returns freed heap memory to the kernel. Loading parsed
    // the kernel's BTF (megabytes, freed since) and locking would otherwise
    // keep those free pages resident for the sensor's whole life.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
        libc::malloc_trim(0);
    }
    // SAFETY: mlockall has no memory-safety preconditions.
    let rc = unsafe { libc::mlockall(libc::MCL_CURRENT | libc::MCL_FUTURE) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}
