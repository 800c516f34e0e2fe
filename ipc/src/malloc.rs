//! Keeping freed memory for the next large payload.
//!
//! glibc's malloc gives the top of its heap back to the kernel as soon as
//! twice the largest freed block lies free there. A process that handles
//! one multi-megabyte payload after another (a 1280x720 frame is 2.7 MB:
//! HTTP/2 buffers and decoded messages in the supervisor, decoded frames
//! and matrices in a worker) then faults in and zeroes fresh pages for
//! every one. Measured on a 1280x720 face-detection stream: 1.6 ms a frame
//! in the worker, more than the detector itself.

/// The free heap top a process keeps before trimming: 64 MiB.
pub const TRIM_THRESHOLD: usize = 64 << 20;
/// Blocks below this (a 4K BGR frame) come from the heap, not a fresh
/// mapping each: 32 MiB, glibc's largest.
pub const MMAP_THRESHOLD: usize = 32 << 20;

/// Makes this process keep up to [`TRIM_THRESHOLD`] of freed heap and
/// serve blocks under [`MMAP_THRESHOLD`] from it. Settings the operator
/// gave through glibc's environment (`MALLOC_TRIM_THRESHOLD_`,
/// `MALLOC_MMAP_THRESHOLD_`, `GLIBC_TUNABLES`) win. Returns whether the
/// defaults were applied.
pub fn keep_freed_memory() -> bool {
    let operator = [
        "MALLOC_TRIM_THRESHOLD_",
        "MALLOC_MMAP_THRESHOLD_",
        "GLIBC_TUNABLES",
    ]
    .iter()
    .any(|k| std::env::var_os(k).is_some());
    if operator {
        return false;
    }
    crate::sys::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD as libc::c_int)
        && crate::sys::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD as libc::c_int)
}

#[cfg(test)]
mod tests {
    #[test]
    fn glibc_takes_the_settings() {
        // The test runner's environment has none of glibc's settings.
        assert!(super::keep_freed_memory());
    }
}
