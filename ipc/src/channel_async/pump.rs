//! The pump task: drains the receiving ring, flushes queued credits and
//! cancels, wakes senders waiting for space, and sleeps on the doorbell
//! (after a bounded spin) or the death-watch socket.

use std::os::fd::AsFd;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::{Inner, lock};
use crate::error::{Error, Result};
use crate::sys;

pub(super) async fn run(inner: Arc<Inner>) {
    if let Err(e) = pump_loop(&inner).await {
        inner.fail(e);
    }
}

/// Watches the ring for up to the spin time before the pump
/// sleeps (the peer does not ring meanwhile), yielding between looks so
/// that the tasks it just woke run first; then asks for a wake-up and
/// checks once more. True when data arrived.
async fn spin_for_data(inner: &Inner) -> Result<bool> {
    let spin = std::time::Duration::from_nanos(inner.spin_ns.load(Ordering::Relaxed));
    if !spin.is_zero() {
        lock(&inner.rx).clear_want_data();
        let start = std::time::Instant::now();
        loop {
            if lock(&inner.rx).has_data()? {
                return Ok(true);
            }
            if start.elapsed() >= spin {
                break;
            }
            tokio::task::yield_now().await;
        }
    }
    let rx = lock(&inner.rx);
    rx.want_data();
    rx.has_data()
}

async fn pump_loop(inner: &Inner) -> Result<()> {
    let mut peer_gone = false;
    loop {
        let more = inner.drain()?;
        if more {
            inner.flush_outbox()?;
            inner.space.notify_waiters();
            tokio::task::yield_now().await;
            continue;
        }
        if peer_gone {
            return Err(Error::PeerGone);
        }
        inner.flush_outbox()?;
        inner.space.notify_waiters();
        {
            if spin_for_data(inner).await? {
                continue;
            }
        }
        tokio::select! {
            guard = inner.bell.readable() => {
                let mut guard = guard.map_err(|e| Error::io("wait doorbell", e))?;
                sys::reset(inner.bell.get_ref().as_fd())?;
                // Each ring of an eventfd is a new edge: clearing here loses none.
                guard.clear_ready();
            }
            guard = inner.sock.readable() => {
                let mut guard = guard.map_err(|e| Error::io("wait death-watch socket", e))?;
                if sys::peer_closed(inner.sock.get_ref().as_fd())? {
                    peer_gone = true;
                } else {
                    guard.clear_ready();
                }
            }
            () = inner.kick.notified() => {}
        }
    }
}
