//! A worker's frames waiting to be sent, per request, for a serve loop that
//! must never block on one slow reader: a request without credit keeps its
//! frames (and only it waits), a full ring ends the round.
//!
//! A frame larger than the ring can ever carry never ends the worker: it
//! becomes that request's last frame, a RESOURCE_EXHAUSTED error naming the
//! answer's size and the ring's frame limit ([`answer_too_large`]); what the
//! family queues for that request afterwards is dropped, up to and
//! including its own last frame.

use std::collections::{HashMap, HashSet, VecDeque};

use ipc::{Blocked, BlockingChannel, Error, Flags, Kind};
use prost::Message;

use crate::error::answer_too_large;

#[derive(Debug)]
struct Out {
    kind: Kind,
    flags: Flags,
    bytes: Vec<u8>,
}

/// Frames queued per request id, sent in order by [`Outbox::flush`].
#[derive(Debug)]
pub struct Outbox {
    queues: HashMap<u64, VecDeque<Out>>,
    /// Largest payload one frame may carry (the response ring's limit).
    max_payload: usize,
    /// Requests already ended by a too-large answer whose family has not
    /// queued its own last frame yet: their frames are dropped.
    ended: HashSet<u64>,
}

impl Default for Outbox {
    /// An outbox that learns the frame limit only from the channel's
    /// refusal at [`Outbox::flush`].
    fn default() -> Self {
        Outbox::new(usize::MAX)
    }
}

impl Outbox {
    /// An outbox for a channel whose frames carry at most `max_payload`
    /// bytes ([`BlockingChannel::max_payload`]).
    pub fn new(max_payload: usize) -> Self {
        Outbox {
            queues: HashMap::new(),
            max_payload,
            ended: HashSet::new(),
        }
    }

    /// Largest payload a frame may carry.
    pub fn max_payload(&self) -> usize {
        self.max_payload
    }

    /// Queues a frame for `id`. A frame over the limit is replaced by the
    /// request's error answer (see the module's note).
    pub fn push(&mut self, id: u64, kind: Kind, flags: Flags, bytes: Vec<u8>) {
        if self.dropped(id, flags) {
            return;
        }
        if bytes.len() > self.max_payload {
            self.refuse(id, bytes.len(), flags);
            return;
        }
        self.queues
            .entry(id)
            .or_default()
            .push_back(Out { kind, flags, bytes });
    }

    /// Queues a message for `id`, encoded only once it is known to fit.
    pub fn push_message(&mut self, id: u64, kind: Kind, flags: Flags, message: &impl Message) {
        let len = message.encoded_len();
        if len > self.max_payload {
            if !self.dropped(id, flags) {
                self.refuse(id, len, flags);
            }
            return;
        }
        self.push(id, kind, flags, message.encode_to_vec());
    }

    /// Whether a frame of `id` is dropped because the request has ended
    /// already (a too-large answer); its last frame (END) closes the
    /// account.
    fn dropped(&mut self, id: u64, flags: Flags) -> bool {
        if !self.ended.contains(&id) {
            return false;
        }
        if flags.is_end() {
            self.ended.remove(&id);
        }
        true
    }

    /// Ends `id` with the error for an answer frame of `len` bytes; unless
    /// the refused frame was the request's last, its later frames are
    /// dropped.
    fn refuse(&mut self, id: u64, len: usize, flags: Flags) {
        let e = answer_too_large(len, self.max_payload);
        tracing::warn!(request = id, "{}", e.message);
        if !flags.is_end() {
            self.ended.insert(id);
        }
        self.queues.entry(id).or_default().push_back(Out {
            kind: Kind::Error,
            flags: Flags::END,
            bytes: e.to_proto(false).encode_to_vec(),
        });
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

    /// Sends what it can now, request by request, without blocking. A
    /// frame the channel refuses as too large ends its request with an
    /// error instead (the rest of that request's queue is dropped). Errors
    /// other than "would block" and "too large" (the peer gone, a broken
    /// channel) are returned.
    pub fn flush(&mut self, chan: &BlockingChannel) -> ipc::Result<()> {
        let ids: Vec<u64> = self.queues.keys().copied().collect();
        'ids: for id in ids {
            while let Some(out) = self.queues.get(&id).and_then(VecDeque::front) {
                match chan.try_send(id, out.kind, out.flags, &out.bytes) {
                    Ok(()) => {
                        self.queues.get_mut(&id).map(VecDeque::pop_front);
                    }
                    Err(Error::WouldBlock(Blocked::NoCredit)) => continue 'ids,
                    Err(Error::WouldBlock(Blocked::RingFull)) => break 'ids,
                    Err(Error::TooLarge { payload, max, .. }) => {
                        let rest = self.queues.remove(&id).unwrap_or_default();
                        let ended = rest.iter().any(|o| o.flags.is_end());
                        self.max_payload = self.max_payload.min(max);
                        let flags = if ended { Flags::END } else { Flags::NONE };
                        // The error answer is next in this request's queue.
                        self.refuse(id, payload, flags);
                    }
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
    use prost::Message;

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

    /// The error answer a too-large frame became.
    fn too_large_error(payload: &[u8]) -> sidecar_proto::worker::WorkerError {
        let e = sidecar_proto::worker::WorkerError::decode(payload).expect("an error answer");
        assert_eq!(e.code, crate::Code::ResourceExhausted as u32, "{e:?}");
        e
    }

    #[test]
    fn a_frame_over_the_limit_ends_its_request_with_an_error_and_the_rest_goes_on() {
        let (sup, worker) = pair(MIN_RING_BYTES, 64);
        let max = worker.max_payload();
        open(&sup, &worker, 1);
        open(&sup, &worker, 2);
        let mut out = Outbox::new(max);
        // Request 1: a frame that fits, one that cannot, then what the
        // family still queues for it (dropped, up to its own last frame).
        out.push(1, Kind::Response, Flags::NONE, vec![1; 10]);
        out.push(1, Kind::Response, Flags::NONE, vec![2; max + 1]);
        out.push(1, Kind::Response, Flags::NONE, vec![3; 10]);
        out.push(1, Kind::Response, Flags::END, vec![4; 10]);
        // Request 2 is not touched.
        out.push(2, Kind::Response, Flags::END, vec![5; max]);
        // The ring holds one frame of the limit at a time: drain as it goes.
        let mut got = Vec::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !out.is_empty() && std::time::Instant::now() < deadline {
            out.flush(&worker)
                .expect("flush: a request's size never ends the worker");
            got.extend(drain(&sup));
        }
        assert!(out.is_empty(), "everything went out within 5 s");
        let one: Vec<&Vec<u8>> = got.iter().filter(|g| g.0 == 1).map(|g| &g.1).collect();
        assert_eq!(
            one.len(),
            2,
            "the frame before, then the error: {}",
            one.len()
        );
        assert_eq!(one[0], &vec![1u8; 10]);
        let e = too_large_error(one[1]);
        assert_eq!(
            e.message,
            format!(
                "answer of {} bytes exceeds the response ring's frame limit of {max} bytes; ask for less in one call (fewer inputs, pieces or outputs)",
                max + 1
            )
        );
        let two: Vec<&(u64, Vec<u8>)> = got.iter().filter(|g| g.0 == 2).collect();
        assert_eq!(two.len(), 1);
        assert_eq!(two[0].1.len(), max, "a frame of exactly the limit goes out");
        assert!(
            out.ended.is_empty(),
            "request 1's last frame closed its account"
        );
        // A later request with the same id (never reused, but) is served.
        out.push(1, Kind::Response, Flags::END, vec![6]);
        assert!(out.holds(1));
    }

    #[test]
    fn a_message_over_the_limit_is_never_encoded_and_its_end_is_kept() {
        let mut out = Outbox::new(100);
        let big = sidecar_proto::worker::WorkerError {
            code: 3,
            message: "x".repeat(500),
            fatal: false,
        };
        out.push_message(9, Kind::Error, Flags::END, &big);
        let q = &out.queues[&9];
        assert_eq!(q.len(), 1);
        assert_eq!((q[0].kind, q[0].flags.is_end()), (Kind::Error, true));
        let e = too_large_error(&q[0].bytes);
        let expected = format!(
            "answer of {} bytes exceeds the response ring's frame limit of 100 bytes",
            big.encoded_len()
        );
        assert!(e.message.starts_with(&expected), "{}", e.message);
        assert!(
            out.ended.is_empty(),
            "the refused frame was the last: nothing to drop"
        );
    }

    #[test]
    fn a_frame_the_channel_refuses_as_too_large_becomes_the_error_answer() {
        // An outbox that does not know the limit learns it from the channel.
        let (sup, worker) = pair(MIN_RING_BYTES, 64);
        open(&sup, &worker, 4);
        let mut out = Outbox::default();
        out.push(4, Kind::Response, Flags::NONE, vec![0; MIN_RING_BYTES * 2]);
        out.push(4, Kind::Response, Flags::END, vec![1]);
        out.flush(&worker)
            .expect("flush: not an error of the channel");
        assert_eq!(out.max_payload(), worker.max_payload());
        let got = drain(&sup);
        assert_eq!(got.len(), 1, "only the error answer");
        let e = too_large_error(&got[0].1);
        assert!(
            e.message
                .contains(&format!("answer of {} bytes", MIN_RING_BYTES * 2)),
            "{}",
            e.message
        );
        assert!(out.is_empty() && out.ended.is_empty());
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
