//! Heartbeats from a thread of their own (the supervisor replaces a worker
//! that misses them), and the figures they carry: memory, requests in
//! flight, uptime, tokens generated.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ipc::{BlockingChannel, Error, Flags, Kind};
use prost::Message;
use sidecar_proto::worker::Heartbeat;

use crate::memory;

/// Heartbeat period (the supervisor's default timeout is five of them).
pub const PERIOD: Duration = Duration::from_secs(1);

/// What the serve loop tells the heartbeat thread.
#[derive(Debug, Default)]
pub struct Counters {
    /// Requests running or waiting.
    pub in_flight: AtomicU32,
    /// Tokens sampled for requests since the worker started.
    pub tokens_generated: AtomicU64,
    /// REQUEST frames that opened a request since the worker started.
    pub requests: AtomicU64,
    /// The highest request id seen opened (only the serve loop writes it).
    pub(crate) last_opened: AtomicU64,
}

impl Counters {
    /// A REQUEST frame with request id `id` arrived: counted when it opens
    /// a request (the supervisor numbers requests upwards; a stream's later
    /// frames reuse its id).
    pub fn request_frame(&self, id: u64) {
        if id > self.last_opened.load(Ordering::Relaxed) {
            self.last_opened.store(id, Ordering::Relaxed);
            self.requests.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// One heartbeat's message: `seq` counts from 1, `started` is when the
    /// worker started.
    pub fn beat(&self, seq: u64, started: Instant) -> Heartbeat {
        Heartbeat {
            seq,
            memory: Some(memory::report()),
            in_flight: self.in_flight.load(Ordering::Relaxed),
            uptime_ms: started.elapsed().as_millis() as u64,
            tokens_generated: self.tokens_generated.load(Ordering::Relaxed),
            requests: self.requests.load(Ordering::Relaxed),
        }
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

/// Starts the worker's heartbeat thread every [`PERIOD`], reporting
/// `counters`; a thread that cannot start is logged (the supervisor will
/// replace the worker as unhealthy).
pub fn start(chan: Arc<BlockingChannel>, period: Duration, counters: Arc<Counters>) {
    let started = Instant::now();
    let beats = spawn_heartbeats(chan, period, move |seq| {
        counters.beat(seq, started).encode_to_vec()
    });
    if let Err(e) = beats {
        tracing::error!("cannot start the heartbeat thread: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_beat_carries_the_counters_and_this_process_memory() {
        let c = Counters::default();
        c.in_flight.store(3, Ordering::Relaxed);
        c.tokens_generated.store(42, Ordering::Relaxed);
        let b = c.beat(7, Instant::now() - Duration::from_secs(2));
        assert_eq!((b.seq, b.in_flight, b.tokens_generated), (7, 3, 42));
        assert_eq!(b.requests, 0);
        for id in [1, 2, 2, 2, 5, 3, 6] {
            c.request_frame(id);
        }
        assert_eq!(
            c.beat(8, Instant::now()).requests,
            4,
            "ids 1, 2, 5 and 6 open requests; the rest are later frames"
        );
        assert!(b.uptime_ms >= 2000, "{}", b.uptime_ms);
        assert!(b.memory.is_some_and(|m| m.rss_bytes > 0));
    }

    #[test]
    fn beats_are_numbered_and_stop_with_the_channel() {
        let (a, b) = ipc::create(ipc::ChannelConfig::with_ring_bytes(64 << 10)).expect("channel");
        let sup = BlockingChannel::new(a).expect("side A");
        let worker = Arc::new(BlockingChannel::new(b).expect("side B"));
        spawn_heartbeats(worker.clone(), Duration::from_millis(5), |seq| {
            seq.to_le_bytes().to_vec()
        })
        .expect("thread");
        for want in 1u64..=3 {
            let f = sup.recv_timeout(Duration::from_secs(5)).expect("beat");
            assert_eq!((f.kind(), f.request_id()), (Kind::Heartbeat, 0));
            assert_eq!(f.payload(), want.to_le_bytes());
        }
        drop(sup);
        // The thread ends once a send fails; it holds the last Arc but this.
        let deadline = Instant::now() + Duration::from_secs(5);
        while Arc::strong_count(&worker) > 1 {
            assert!(
                Instant::now() < deadline,
                "the heartbeat thread did not stop"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}
