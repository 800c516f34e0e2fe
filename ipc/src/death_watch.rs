//! The worker side's death watch: a thread blocked on the socketpair.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::error::{Error, Result};
use crate::passed::Passed;
use crate::sys;

/// A thread blocked on the death-watch socket: it keeps the descriptors
/// the peer passes (in `passed`), and when the peer's end closes it sets
/// `peer_gone` and rings this side's own doorbell, so a sleeper wakes at
/// once.
#[derive(Debug)]
pub(crate) struct DeathWatch {
    stop: OwnedFd,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl DeathWatch {
    pub(crate) fn start(
        sock: Arc<OwnedFd>,
        bell: Arc<OwnedFd>,
        gone: Arc<AtomicBool>,
        passed: Arc<Passed>,
    ) -> Result<Self> {
        let stop = sys::doorbell()?;
        let stop_here = sys::dup(stop.as_fd())?;
        let thread = std::thread::Builder::new()
            .name("ipc-death-watch".into())
            .spawn(move || {
                // An error here leaves the channel without death detection
                // only for sleepers; senders still fail on a closed peer.
                let mut keep = |tag, fd| passed.put(tag, fd);
                if let Ok(true) = sys::watch_for_close(sock.as_fd(), stop_here.as_fd(), &mut keep) {
                    gone.store(true, Ordering::SeqCst);
                    passed.wake();
                    let _ = sys::ring(bell.as_fd());
                }
            })
            .map_err(|e| Error::io("spawn death-watch thread", e))?;
        Ok(DeathWatch {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for DeathWatch {
    fn drop(&mut self) {
        let _ = sys::ring(self.stop.as_fd());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
