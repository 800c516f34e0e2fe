//! Round trips through a real peer process: payload sizes from 0 B to
//! 64 MiB, thousands of frames across ring wrap-around, many requests in
//! flight answered out of order, and per-request flow control.

mod common;

use common::{Peer, SOON, pattern};
use ipc::{AsyncChannel, ChannelConfig, Error, Flags, Kind};
use tokio::time::timeout;

async fn echo_once(chan: &AsyncChannel, payload: &[u8]) -> Vec<u8> {
    let mut answers = chan.request(payload).await.expect("send request");
    let frame = timeout(SOON, answers.next())
        .await
        .expect("answer in time")
        .expect("one frame")
        .expect("no channel error");
    assert_eq!(frame.kind, Kind::Response);
    assert!(frame.flags.is_end());
    assert!(answers.next().await.is_none(), "nothing after END");
    frame.payload.to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payloads_from_0_bytes_to_64_mib_round_trip() {
    let cfg = ChannelConfig::with_ring_bytes((64 << 20) + 4096);
    let (a, b) = ipc::create(cfg).unwrap();
    let _peer = Peer::spawn(b, &["echo"]);
    let chan = AsyncChannel::new(a).unwrap();

    let hello = timeout(SOON, chan.recv_control()).await.unwrap().unwrap();
    assert_eq!(
        (hello.kind, &hello.payload[..]),
        (Kind::Hello, &b"hello"[..])
    );

    let sizes = [
        0,
        1,
        7,
        8,
        9,
        4095,
        4096,
        65_537,
        1 << 20,
        8 << 20,
        64 << 20,
    ];
    for (i, size) in sizes.into_iter().enumerate() {
        let payload = pattern(size, i as u8);
        let back = echo_once(&chan, &payload).await;
        assert!(
            back == payload,
            "payload of {size} bytes came back different"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payload_larger_than_the_ring_is_refused_naming_both_sizes() {
    let (a, b) = ipc::create(ChannelConfig::with_ring_bytes(64 << 10)).unwrap();
    let _peer = Peer::spawn(b, &["echo"]);
    let chan = AsyncChannel::new(a).unwrap();
    let max = chan.max_payload();
    let err = chan.request(&vec![0; max + 1]).await.unwrap_err();
    assert!(matches!(err, Error::TooLarge { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains(&(max + 1).to_string()) && msg.contains(&max.to_string()),
        "{msg}"
    );
    // The channel is still fine.
    assert_eq!(echo_once(&chan, &pattern(max, 3)).await, pattern(max, 3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_frames_wrap_a_small_ring_from_concurrent_callers() {
    let (a, b) = ipc::create(ChannelConfig::with_ring_bytes(8 << 10)).unwrap();
    let _peer = Peer::spawn(b, &["echo"]);
    let chan = std::sync::Arc::new(AsyncChannel::new(a).unwrap());
    let mut tasks = Vec::new();
    for t in 0..8u8 {
        let chan = chan.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..500usize {
                let payload = pattern((i * 53 + usize::from(t) * 7) % 3000, t ^ i as u8);
                assert_eq!(
                    echo_once(&chan, &payload).await,
                    payload,
                    "task {t} frame {i}"
                );
            }
        }));
    }
    for t in tasks {
        timeout(std::time::Duration::from_secs(120), t)
            .await
            .expect("in time")
            .expect("task ok");
    }
    let stats = chan.stats();
    assert!(
        stats.frames_in >= 4000 && stats.frames_out >= 4000,
        "{stats:?}"
    );
    assert_eq!(stats.unrouted, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_requests_in_flight_are_answered_out_of_order() {
    const N: usize = 32;
    let (a, b) = ipc::create(ChannelConfig::with_ring_bytes(256 << 10)).unwrap();
    let _peer = Peer::spawn(b, &["reverse", &N.to_string()]);
    let chan = AsyncChannel::new(a).unwrap();
    let mut streams = Vec::new();
    for i in 0..N {
        let payload = format!("request {i}").into_bytes();
        streams.push((chan.request(&payload).await.unwrap(), payload));
    }
    // The peer answers the newest first; read the oldest first.
    for (mut stream, payload) in streams {
        for part in 0u8..3 {
            let frame = timeout(SOON, stream.next())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            let mut want = payload.clone();
            want.push(part);
            assert_eq!(frame.payload, want);
            assert_eq!(frame.flags.is_end(), part == 2);
            assert_eq!(frame.request_id, stream.id());
        }
        assert!(stream.next().await.is_none());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_pauses_only_its_own_request() {
    const WINDOW: u32 = 4;
    const COUNT: u32 = 300;
    let cfg = ChannelConfig {
        credit_window: WINDOW,
        ..ChannelConfig::with_ring_bytes(64 << 10)
    };
    let (a, b) = ipc::create(cfg).unwrap();
    let _peer = Peer::spawn(b, &["stream"]);
    let chan = AsyncChannel::new(a).unwrap();
    let job = |count: u32, size: u32| [count.to_le_bytes(), size.to_le_bytes()].concat();

    let mut slow = chan.request(&job(COUNT, 1000)).await.unwrap();
    let mut fast = chan.request(&job(COUNT, 1000)).await.unwrap();
    // Read the fast request to its end while nobody reads the slow one.
    for i in 0..COUNT {
        let f = timeout(SOON, fast.next())
            .await
            .expect("fast request not stalled")
            .unwrap()
            .unwrap();
        assert_eq!(u32::from_le_bytes(f.payload[..4].try_into().unwrap()), i);
        assert_eq!(f.flags.is_end(), i == COUNT - 1);
        assert!(
            chan.buffered(slow.id()) <= WINDOW as usize,
            "slow request buffered {} frames, window is {WINDOW}",
            chan.buffered(slow.id())
        );
    }
    assert!(fast.next().await.is_none());
    assert_eq!(
        chan.buffered(slow.id()),
        WINDOW as usize,
        "slow request paused at its window"
    );
    // Now the slow reader catches up and gets everything, in order.
    for i in 0..COUNT {
        let f = timeout(SOON, slow.next()).await.unwrap().unwrap().unwrap();
        assert_eq!(u32::from_le_bytes(f.payload[..4].try_into().unwrap()), i);
    }
    assert!(slow.next().await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_a_stream_cancels_it_and_frees_its_credit() {
    let cfg = ChannelConfig {
        credit_window: 2,
        ..ChannelConfig::with_ring_bytes(64 << 10)
    };
    let (a, b) = ipc::create(cfg).unwrap();
    let _peer = Peer::spawn(b, &["stream"]);
    let chan = AsyncChannel::new(a).unwrap();
    let job = |count: u32| [count.to_le_bytes(), 16u32.to_le_bytes()].concat();
    let mut abandoned = chan.request(&job(1000)).await.unwrap();
    let first = timeout(SOON, abandoned.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(first.kind, Kind::Response);
    drop(abandoned);
    // The cancel lifts the window: the peer finishes the dropped request
    // (its frames are discarded) and serves new ones.
    let mut next = chan.request(&job(5)).await.unwrap();
    let mut n = 0;
    while let Some(f) = timeout(SOON, next.next()).await.unwrap() {
        f.unwrap();
        n += 1;
    }
    assert_eq!(n, 5);
    let _ = chan.send(0, Kind::Heartbeat, Flags::NONE, b"").await;
}
