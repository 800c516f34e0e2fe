//! The pump's side of routing: each frame the peer wrote is checked
//! against the protocol (an answer within what its request was granted,
//! nothing but answers on a request, control frames small and few) and
//! copied out to its reader.

use std::os::fd::AsFd;

use super::{CONTROL_MAX_PAYLOAD, CONTROL_QUEUE, DRAIN_BATCH, Frame, Inner, lock};
use crate::error::{Error, Result};
use crate::flow;
use crate::frame::Kind;
use crate::ring::Found;
use crate::sys;

impl Inner {
    /// Copies out up to [`DRAIN_BATCH`] frames; true when it stopped
    /// with frames left (the pump yields, then drains again).
    pub(super) fn drain(&self) -> Result<bool> {
        let mut rx = lock(&self.rx);
        let mut taken = 0;
        let mut more = false;
        while let Some(found) = rx.next()? {
            self.route(&found)?;
            taken += 1;
            if taken == DRAIN_BATCH {
                more = true;
                break;
            }
        }
        if rx.release() {
            sys::ring(self.peer_bell.as_fd())?;
        }
        if more {
            lock(&self.stats).drain_yields += 1;
        }
        Ok(more)
    }

    /// Puts one frame where its reader takes it. A peer past its credit
    /// window or the control queue's bound breaks the protocol: the
    /// channel fails with [`Error::Protocol`] and holds no more of its
    /// frames.
    fn route(&self, found: &Found) -> Result<()> {
        let meta = found.meta;
        lock(&self.stats).frames_in += 1;
        if meta.kind == Kind::Credit {
            // This side does not limit what it sends per request.
            return Ok(());
        }
        if meta.request_id == 0 {
            if meta.len > CONTROL_MAX_PAYLOAD {
                return Err(Error::Protocol(format!(
                    "a {:?} control frame of {} bytes (at most {CONTROL_MAX_PAYLOAD})",
                    meta.kind, meta.len
                )));
            }
            let frame = self.copy_out(found);
            let mut control = lock(&self.control);
            if meta.kind == Kind::Heartbeat
                && let Some(at) = control.iter().position(|f| f.kind == Kind::Heartbeat)
            {
                control.remove(at);
                lock(&self.stats).heartbeats_replaced += 1;
            } else if control.len() >= CONTROL_QUEUE {
                return Err(Error::Protocol(format!(
                    "more than {CONTROL_QUEUE} unread control frames (last: {:?})",
                    meta.kind
                )));
            }
            control.push_back(frame);
            self.control_notify.notify_one();
            return Ok(());
        }
        // A request's frames from the peer are its answers, nothing else:
        // any other kind would be held outside the credit window.
        if !flow::counts(meta.kind) {
            return Err(Error::Protocol(format!(
                "a {:?} frame on request {}: only answers belong to a request",
                meta.kind, meta.request_id
            )));
        }
        let routed = {
            let mut streams = lock(&self.streams);
            streams.get_mut(&meta.request_id).map(|slot| {
                slot.received += 1;
                (slot.abandoned, slot.received, slot.granted)
            })
        };
        let Some((abandoned, received, granted)) = routed else {
            lock(&self.stats).unrouted += 1;
            return Ok(());
        };
        if abandoned {
            if meta.flags.is_end() {
                lock(&self.streams).remove(&meta.request_id);
            }
            return Ok(());
        }
        if received > granted {
            return Err(Error::Protocol(format!(
                "request {} sent {received} answer frames; its credit window of {} and the credit granted allow {granted}",
                meta.request_id, self.window
            )));
        }
        // Copied out with no lock held; only this pump adds to a queue.
        let frame = self.copy_out(found);
        if let Some(slot) = lock(&self.streams).get_mut(&meta.request_id) {
            slot.queue.push_back(frame);
            slot.notify.notify_one();
        }
        Ok(())
    }

    fn copy_out(&self, found: &Found) -> Frame {
        let meta = found.meta;
        Frame {
            request_id: meta.request_id,
            kind: meta.kind,
            flags: meta.flags,
            payload: self
                .pool
                .copy(self.region.bytes(found.payload_at, meta.len)),
        }
    }
}
