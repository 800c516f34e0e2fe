//! Descriptors the peer passed over the death-watch socket (`SCM_RIGHTS`,
//! each with a tag), held until their taker claims them by tag.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// Descriptors held unclaimed at most; one more is closed at once (a peer
/// that sends descriptors nobody asks for cannot fill the table).
pub const MAX_PASSED: usize = 256;

/// How often a taker rechecks whether the peer is gone while it waits.
const RECHECK: Duration = Duration::from_millis(50);

/// The descriptors received and not yet claimed.
#[derive(Debug, Default)]
pub(crate) struct Passed {
    held: Mutex<HashMap<u64, OwnedFd>>,
    arrived: Condvar,
}

fn lock(m: &Mutex<HashMap<u64, OwnedFd>>) -> MutexGuard<'_, HashMap<u64, OwnedFd>> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Passed {
    /// Holds `fd` under `tag` (replacing, and closing, an unclaimed one of
    /// the same tag); closes it when [`MAX_PASSED`] are already held.
    pub(crate) fn put(&self, tag: u64, fd: OwnedFd) {
        let mut held = lock(&self.held);
        if held.len() >= MAX_PASSED && !held.contains_key(&tag) {
            return;
        }
        held.insert(tag, fd);
        drop(held);
        self.arrived.notify_all();
    }

    /// Wakes every taker (the peer is gone).
    pub(crate) fn wake(&self) {
        self.arrived.notify_all();
    }

    /// Unclaimed descriptors now.
    pub(crate) fn len(&self) -> usize {
        lock(&self.held).len()
    }

    /// Closes the unclaimed descriptors of `tags`; how many were held.
    pub(crate) fn forget(&self, tags: &[u64]) -> usize {
        let mut held = lock(&self.held);
        tags.iter().filter(|t| held.remove(t).is_some()).count()
    }

    /// Claims the descriptor tagged `tag`, waiting up to `wait` for it.
    pub(crate) fn take(&self, tag: u64, wait: Duration, gone: &AtomicBool) -> Result<OwnedFd> {
        let end = Instant::now() + wait;
        let mut held = lock(&self.held);
        loop {
            if let Some(fd) = held.remove(&tag) {
                return Ok(fd);
            }
            if gone.load(Ordering::SeqCst) {
                return Err(Error::PeerGone);
            }
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Error::Timeout);
            }
            held = self
                .arrived
                .wait_timeout(held, left.min(RECHECK))
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }
}
