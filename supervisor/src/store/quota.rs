//! Upload quotas: one file's size, the store's total, and the volume's
//! free space, all checked against the size an upload declares before
//! a byte of it is written.
//!
//! Uploads in progress hold a [`Reservation`] for the part of their
//! declared size not yet on disk (the part already written is in their
//! temporary file, which the store's usage counts), so concurrent uploads
//! cannot each take the same room. Reserving is serialised by one mutex,
//! held across the measurement, so the check and the claim are one step.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use crate::config::StoreLimits;
use crate::error::Error;

/// The uploads in progress in one store, by reservation id.
#[derive(Debug, Default)]
pub struct Inflight {
    next: AtomicU64,
    uploads: Mutex<HashMap<u64, Arc<Progress>>>,
}

#[derive(Debug)]
struct Progress {
    declared: u64,
    written: AtomicU64,
}

impl Progress {
    fn pending(&self) -> u64 {
        self.declared
            .saturating_sub(self.written.load(Ordering::Relaxed))
    }
}

/// An upload's claim on the store's room; released when dropped.
#[derive(Debug)]
pub struct Reservation {
    inflight: Arc<Inflight>,
    id: u64,
    progress: Arc<Progress>,
}

impl Reservation {
    /// `n` more bytes are on disk (in the temporary file).
    pub fn wrote(&self, n: u64) {
        self.progress.written.fetch_add(n, Ordering::Relaxed);
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.inflight
            .uploads
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.id);
    }
}

impl Inflight {
    /// Bytes promised to uploads in progress and not yet written.
    pub fn pending(&self) -> u64 {
        self.uploads
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .fold(0u64, |sum, p| sum.saturating_add(p.pending()))
    }
}

/// Claims room for an upload of `size` bytes into the store at `root`,
/// or says which limit it exceeds (RESOURCE_EXHAUSTED naming the size and
/// the limit). Blocking: it measures the store.
pub fn reserve(
    inflight: &Arc<Inflight>,
    root: &Path,
    size: u64,
    limits: &StoreLimits,
) -> Result<Reservation, Error> {
    if size > limits.max_file_bytes {
        return Err(Error::ResourceExhausted(format!(
            "size_bytes {size} exceeds store.max_file_bytes {} (the largest file an upload may store)",
            limits.max_file_bytes
        )));
    }
    let mut uploads = inflight
        .uploads
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    let pending = uploads
        .values()
        .fold(0u64, |sum, p| sum.saturating_add(p.pending()));
    if limits.max_total_bytes > 0 {
        let used = usage(root)?;
        let left = limits
            .max_total_bytes
            .saturating_sub(used.saturating_add(pending));
        if size > left {
            return Err(Error::ResourceExhausted(format!(
                "size_bytes {size} exceeds the room left under store.max_total_bytes {}: \
                 {used} bytes are stored and {pending} more are promised to uploads in progress, \
                 leaving {left}",
                limits.max_total_bytes
            )));
        }
    }
    let free = available(root)?;
    let left = free.saturating_sub(pending);
    if size > left {
        return Err(Error::ResourceExhausted(format!(
            "size_bytes {size} exceeds the free space of the model store's volume: \
             {free} bytes free, {pending} of them promised to uploads in progress, leaving {left}"
        )));
    }
    let id = inflight.next.fetch_add(1, Ordering::Relaxed);
    let progress = Arc::new(Progress {
        declared: size,
        written: AtomicU64::new(0),
    });
    uploads.insert(id, progress.clone());
    Ok(Reservation {
        inflight: inflight.clone(),
        id,
        progress,
    })
}

/// Bytes of the regular files under `root`, symbolic links not followed
/// (a link's target is either outside the store or counted where it is).
pub fn usage(root: &Path) -> Result<u64, Error> {
    let mut total = 0u64;
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            // Removed while we walked: nothing of it to count.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => {
                return Err(Error::Internal(format!(
                    "measuring the model store: {}: {e}",
                    dir.display()
                )));
            }
        };
        for entry in entries.flatten() {
            let Ok(meta) = std::fs::symlink_metadata(entry.path()) else {
                continue;
            };
            if meta.is_dir() {
                dirs.push(entry.path());
            } else if meta.is_file() {
                total = total.saturating_add(meta.len());
            }
        }
    }
    Ok(total)
}

/// Bytes an unprivileged writer may still put on `root`'s volume.
fn available(root: &Path) -> Result<u64, Error> {
    let st = nix::sys::statvfs::statvfs(root).map_err(|e| {
        Error::Internal(format!(
            "free space of the model store {}: {e}",
            root.display()
        ))
    })?;
    #[allow(clippy::useless_conversion)] // The widths differ between targets.
    Ok(u64::from(st.blocks_available()).saturating_mul(u64::from(st.fragment_size())))
}
