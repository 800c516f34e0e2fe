//! A POSIX shared-memory object of the client's own, as a colocated
//! application makes one (Triton's `tritonclient.utils.shared_memory`
//! does the same): `shm_open` + `ftruncate` + `mmap`, unmapped and
//! `shm_unlink`ed when dropped.

use std::ffi::c_void;
use std::num::NonZeroUsize;
use std::os::fd::OwnedFd;
use std::ptr::NonNull;

use nix::fcntl::OFlag;
use nix::sys::mman::{MapFlags, ProtFlags, mmap, munmap, shm_open, shm_unlink};
use nix::sys::stat::Mode;

use crate::Res;

/// One object, mapped read-write in full.
#[derive(Debug)]
pub(crate) struct Shm {
    key: String,
    ptr: NonNull<c_void>,
    len: usize,
    _fd: OwnedFd,
}

// SAFETY: the mapping belongs to this value alone and is process-wide
// memory with no tie to the thread that made it; every access goes
// through `&self`/`&mut self` with bounds checked.
unsafe impl Send for Shm {}

impl Shm {
    /// Creates the object `key` ("/name", mode 0600: the sidecar runs as
    /// the same user) of `len` bytes and maps it.
    pub(crate) fn create(key: &str, len: usize) -> Res<Shm> {
        let size = NonZeroUsize::new(len).ok_or("a shared-memory object of 0 bytes")?;
        // A stale object of an earlier run killed before its cleanup.
        let _ = shm_unlink(key);
        let fd = shm_open(
            key,
            OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_RDWR,
            Mode::S_IRUSR | Mode::S_IWUSR,
        )
        .map_err(|e| format!("shm_open {key}: {e}"))?;
        let unlink_on_error = |e: String| {
            let _ = shm_unlink(key);
            e
        };
        nix::unistd::ftruncate(&fd, len as i64)
            .map_err(|e| unlink_on_error(format!("ftruncate {key} to {len} bytes: {e}")))?;
        // SAFETY: a fresh shared mapping of an object this process just
        // sized; nothing else in this process aliases it.
        let ptr = unsafe {
            mmap(
                None,
                size,
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_SHARED,
                &fd,
                0,
            )
        }
        .map_err(|e| unlink_on_error(format!("mmap {key} ({len} bytes): {e}")))?;
        Ok(Shm {
            key: key.to_owned(),
            ptr,
            len,
            _fd: fd,
        })
    }

    /// The object's key, as given to `shm_open`.
    pub(crate) fn key(&self) -> &str {
        &self.key
    }

    /// Bytes mapped.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    fn check(&self, at: usize, n: usize) -> Res<()> {
        if at.checked_add(n).is_none_or(|end| end > self.len) {
            return Err(format!(
                "{} bytes at offset {at} pass the end of {} ({} bytes)",
                n, self.key, self.len
            )
            .into());
        }
        Ok(())
    }

    /// Copies `bytes` into the mapping at `at`.
    pub(crate) fn write(&mut self, at: usize, bytes: &[u8]) -> Res<()> {
        self.check(at, bytes.len())?;
        // SAFETY: `at + bytes.len()` is within the mapping (checked), the
        // source is a Rust slice that cannot overlap the mapping, and
        // `&mut self` makes this the only access from this process.
        unsafe {
            std::ptr::copy_nonoverlapping(
                bytes.as_ptr(),
                self.ptr.as_ptr().cast::<u8>().wrapping_add(at),
                bytes.len(),
            );
        }
        Ok(())
    }

    /// Copies `n` bytes at `at` out of the mapping (what the server wrote
    /// there).
    pub(crate) fn read(&self, at: usize, n: usize) -> Res<Vec<u8>> {
        self.check(at, n)?;
        let mut out = vec![0u8; n];
        // SAFETY: `at + n` is within the mapping (checked); the
        // destination is a fresh vector. The server writes these bytes
        // before its answer, which the caller has received.
        unsafe {
            std::ptr::copy_nonoverlapping(
                self.ptr.as_ptr().cast::<u8>().wrapping_add(at),
                out.as_mut_ptr(),
                n,
            );
        }
        Ok(out)
    }
}

impl Drop for Shm {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `create`, of this length, unmapped
        // once; no reference into it outlives `self`.
        let _ = unsafe { munmap(self.ptr, self.len) };
        let _ = shm_unlink(self.key.as_str());
    }
}
