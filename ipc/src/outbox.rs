//! A worker's frames waiting to be sent, per request, for a serve loop that
//! must never block on one slow reader: a request without credit keeps its
//! frames (and only it waits), a full ring ends the round.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use crate::blocking::BlockingChannel;
use crate::error::{Blocked, Error, Result};
use crate::frame::{Flags, Kind};

#[derive(Debug)]
struct Out {
    kind: Kind,
    flags: Flags,
    bytes: Vec<u8>,
}

/// Frames queued per request id, sent in order by [`Outbox::flush`].
#[derive(Debug, Default)]
pub struct Outbox {
    queues: HashMap<u64, VecDeque<Out>>,
}

impl Outbox {
    /// Queues a frame for `id`.
    pub fn push(&mut self, id: u64, kind: Kind, flags: Flags, bytes: Vec<u8>) {
        self.queues
            .entry(id)
            .or_default()
            .push_back(Out { kind, flags, bytes });
    }

    /// Whether frames of `id` are waiting (its reader is behind).
    pub fn holds(&self, id: u64) -> bool {
        self.queues.contains_key(&id)
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.queues.is_empty()
    }

    /// Drops whatever waits for `id` (the request was cancelled).
    pub fn forget(&mut self, id: u64) {
        self.queues.remove(&id);
    }

    /// Sends what it can now, request by request, without blocking.
    /// Errors other than "would block" (the peer gone, a broken channel)
    /// are returned.
    pub fn flush(&mut self, chan: &BlockingChannel) -> Result<()> {
        let ids: Vec<u64> = self.queues.keys().copied().collect();
        'ids: for id in ids {
            let Some(queue) = self.queues.get_mut(&id) else {
                continue;
            };
            while let Some(out) = queue.front() {
                match chan.try_send(id, out.kind, out.flags, &out.bytes) {
                    Ok(()) => {
                        queue.pop_front();
                    }
                    Err(Error::WouldBlock(Blocked::NoCredit)) => continue 'ids,
                    Err(Error::WouldBlock(Blocked::RingFull)) => break 'ids,
                    Err(e) => return Err(e),
                }
            }
            self.queues.remove(&id);
        }
        Ok(())
    }
}

/// Starts a thread that sends a heartbeat every `period` (payload from
/// `beat(seq)`, seq counting from 1) until the channel breaks. A beat that
/// finds the ring full is skipped, not queued.
pub fn spawn_heartbeats(
    chan: Arc<BlockingChannel>,
    period: Duration,
    beat: impl Fn(u64) -> Vec<u8> + Send + 'static,
) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("heartbeat".into())
        .spawn(move || {
            for seq in 1u64.. {
                std::thread::sleep(period);
                match chan.try_send(0, Kind::Heartbeat, Flags::NONE, &beat(seq)) {
                    Ok(()) | Err(Error::WouldBlock(_)) => {}
                    Err(_) => return,
                }
            }
        })
        .map(|_| ())
}
