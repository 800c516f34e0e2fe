//! A worker's frames waiting to be sent, per request, for a serve loop that
//! must never block on one slow reader: a request without credit keeps its
//! frames (and only it waits), a full ring ends the round.

use std::collections::{HashMap, VecDeque};

use ipc::{Blocked, BlockingChannel, Error, Flags, Kind};

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
    pub fn flush(&mut self, chan: &BlockingChannel) -> ipc::Result<()> {
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use ipc::{ChannelConfig, MIN_RING_BYTES};

    use super::*;

    /// Both ends of a new channel, in this process: (supervisor, worker).
    fn pair(ring_bytes: usize, window: u32) -> (BlockingChannel, BlockingChannel) {
        let (a, b) = ipc::create(ChannelConfig {
            credit_window: window,
            ..ChannelConfig::with_ring_bytes(ring_bytes)
        })
        .expect("channel");
        (
            BlockingChannel::new(a).expect("side A"),
            BlockingChannel::new(b).expect("side B"),
        )
    }

    /// Opens request `id` on the worker's side (its credit window starts).
    fn open(sup: &BlockingChannel, worker: &BlockingChannel, id: u64) {
        sup.send(id, Kind::Request, Flags::NONE, b"req")
            .expect("request");
        let got = worker.recv_timeout(Duration::from_secs(5)).expect("recv");
        assert_eq!(got.request_id(), id);
    }

    /// The answer frames waiting on the supervisor's side: (id, payload).
    fn drain(sup: &BlockingChannel) -> Vec<(u64, Vec<u8>)> {
        let mut got = Vec::new();
        while let Some(f) = sup.try_recv().expect("recv") {
            got.push((f.request_id(), f.payload().to_vec()));
        }
        got
    }

    #[test]
    fn a_request_without_credit_waits_alone() {
        let (sup, worker) = pair(64 << 10, 2);
        open(&sup, &worker, 5);
        open(&sup, &worker, 6);
        let mut out = Outbox::default();
        for n in 0..3u8 {
            let flags = if n == 2 { Flags::END } else { Flags::NONE };
            out.push(5, Kind::Response, flags, vec![n]);
        }
        out.push(6, Kind::Response, Flags::END, vec![9]);
        assert!(out.holds(5) && out.holds(6) && !out.is_empty());
        out.flush(&worker).expect("flush");
        assert!(out.holds(5), "5 used its window of 2 and waits");
        assert!(!out.holds(6), "6 went out");
        let mut got = drain(&sup);
        got.sort();
        assert_eq!(got, [(5, vec![0]), (5, vec![1]), (6, vec![9])]);
        out.forget(5);
        assert!(out.is_empty());
        out.flush(&worker).expect("flush");
        assert_eq!(drain(&sup), [], "forgotten frames are not sent");
    }

    #[test]
    fn a_full_ring_ends_the_round_and_the_rest_follows() {
        let (sup, worker) = pair(MIN_RING_BYTES, 64);
        open(&sup, &worker, 7);
        let mut out = Outbox::default();
        for n in 0..8u8 {
            out.push(7, Kind::Response, Flags::NONE, vec![n; 1000]);
        }
        out.push(7, Kind::Response, Flags::END, vec![]);
        out.flush(&worker).expect("flush");
        assert!(out.holds(7), "the ring holds fewer than 8 KB");
        let mut got = drain(&sup);
        assert!(!got.is_empty() && got.len() < 9, "{}", got.len());
        while out.holds(7) {
            out.flush(&worker).expect("flush");
            got.extend(drain(&sup));
        }
        let firsts: Vec<u8> = got
            .iter()
            .map(|(_, p)| p.first().copied().unwrap_or(99))
            .collect();
        assert_eq!(
            firsts,
            [0, 1, 2, 3, 4, 5, 6, 7, 99],
            "in order, all of them"
        );
    }

    #[test]
    fn a_broken_channel_is_an_error() {
        let (sup, worker) = pair(64 << 10, 64);
        open(&sup, &worker, 3);
        drop(sup);
        let mut out = Outbox::default();
        out.push(3, Kind::Response, Flags::END, vec![1]);
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let err = loop {
            match out.flush(&worker) {
                Err(e) => break e,
                Ok(()) if std::time::Instant::now() < deadline => {
                    out.push(3, Kind::Response, Flags::END, vec![1]);
                    std::thread::sleep(Duration::from_millis(10));
                }
                Ok(()) => panic!("the peer's death was never seen"),
            }
        };
        assert!(matches!(err, Error::PeerGone), "{err}");
    }
}
