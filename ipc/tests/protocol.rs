//! A peer that breaks the channel's rules with well-formed frames: more
//! answers than its credit window, more control frames than the control
//! queue holds. The channel fails with `Error::Protocol` at once, holding
//! no more than the bound, and the pump never keeps its thread; heartbeats
//! never fill the control queue.

mod common;

use common::{Peer, SOON};
use ipc::{AsyncChannel, ChannelConfig, Error, Kind};
use tokio::time::timeout;

/// The channel's failure, waited for (bounded).
async fn failure(chan: &AsyncChannel) -> Error {
    timeout(SOON, async {
        loop {
            if let Some(e) = chan.failure() {
                return e;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the channel fails")
}

fn config() -> ChannelConfig {
    ChannelConfig {
        credit_window: 8,
        ..ChannelConfig::with_ring_bytes(1 << 20)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_past_the_credit_window_fail_the_channel_with_a_bounded_buffer() {
    let (a, b) = ipc::create(config()).unwrap();
    let _peer = Peer::spawn(b, &["flood"]);
    let chan = AsyncChannel::new(a).unwrap();
    let hello = timeout(SOON, chan.recv_control()).await.unwrap().unwrap();
    assert_eq!(hello.kind, Kind::Hello);
    let mut answers = chan.request(b"go").await.unwrap();
    // Read nothing: the peer's answers pile up, and the ninth breaks the
    // window of 8.
    let failed = failure(&chan).await;
    assert!(
        matches!(&failed, Error::Protocol(m) if m.contains("credit window of 8") && m.contains("allow 8")),
        "{failed}"
    );
    assert_eq!(failed.kind(), "protocol");
    assert!(
        chan.buffered(answers.id()) <= 8,
        "held {} frames past a window of 8",
        chan.buffered(answers.id())
    );
    // What was received within the window is still read, then the error.
    let mut read = 0;
    let end = loop {
        match answers.next().await {
            Some(Ok(_)) => read += 1,
            Some(Err(e)) => break e,
            None => panic!("the stream ended without the channel's error"),
        }
    };
    assert_eq!(read, 8);
    assert!(matches!(end, Error::Protocol(_)), "{end}");
    assert!(matches!(chan.recv_control().await, Err(Error::Protocol(_))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_frames_past_the_queue_fail_the_channel() {
    let (a, b) = ipc::create(config()).unwrap();
    let mut peer = Peer::spawn(b, &["control-flood", "300"]);
    let chan = AsyncChannel::new(a).unwrap();
    // Nobody reads the control queue while the peer sends 300 frames.
    let line = tokio::task::spawn_blocking(move || {
        let line = peer.line();
        (peer, line)
    });
    let (_peer, line) = timeout(SOON, line).await.unwrap().unwrap();
    assert_eq!(line, "SENT");
    let failed = failure(&chan).await;
    assert!(
        matches!(&failed, Error::Protocol(m) if m.contains("more than 256 unread control frames")),
        "{failed}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unread_heartbeats_keep_only_the_newest() {
    let (a, b) = ipc::create(config()).unwrap();
    let mut peer = Peer::spawn(b, &["heartbeats", "5000"]);
    let chan = AsyncChannel::new(a).unwrap();
    let line = tokio::task::spawn_blocking(move || {
        let line = peer.line();
        (peer, line)
    });
    let (_peer, line) = timeout(SOON, line).await.unwrap().unwrap();
    assert_eq!(line, "SENT");
    // Every heartbeat is in; the channel is healthy and holds the hello
    // and the newest heartbeat only.
    timeout(SOON, async {
        while chan.stats().frames_in < 5001 {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("all frames drained");
    assert!(chan.failure().is_none());
    let hello = chan.recv_control().await.unwrap();
    assert_eq!(hello.kind, Kind::Hello);
    let beat = chan.recv_control().await.unwrap();
    assert_eq!(beat.kind, Kind::Heartbeat);
    assert_eq!(&beat.payload[..], &4999u32.to_le_bytes());
    assert_eq!(chan.stats().heartbeats_replaced, 4999);
    assert!(
        chan.stats().drain_yields > 0,
        "5001 frames in batches of 256"
    );
    assert!(
        timeout(std::time::Duration::from_millis(100), chan.recv_control())
            .await
            .is_err(),
        "nothing else was queued"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_that_is_not_an_answer_on_a_request_fails_the_channel() {
    let (a, b) = ipc::create(config()).unwrap();
    let _peer = Peer::spawn(b, &["stray"]);
    let chan = AsyncChannel::new(a).unwrap();
    let hello = timeout(SOON, chan.recv_control()).await.unwrap().unwrap();
    assert_eq!(hello.kind, Kind::Hello);
    let mut answers = chan.request(b"go").await.unwrap();
    let end = timeout(SOON, answers.next())
        .await
        .expect("at once")
        .expect("the channel's error");
    assert!(
        matches!(&end, Err(Error::Protocol(m)) if m.contains("only answers belong to a request")),
        "{end:?}"
    );
}
