//! Real faults: the peer is SIGKILLed in the middle of writing a frame
//! (deterministically: it writes half a frame, says so, and is killed
//! there), from either side; the survivor gets `PeerGone`, never a hang or a
//! panic, and a new channel works.

mod common;

use std::time::Duration;

use common::{Peer, SOON, pattern};
use ipc::{AsyncChannel, BlockingChannel, ChannelConfig, Error, Flags, Kind};
use tokio::time::timeout;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn supervisor_side_sees_peer_gone_when_worker_dies_mid_frame() {
    let (a, b) = ipc::create(ChannelConfig::with_ring_bytes(4 << 20)).unwrap();
    let mut peer = Peer::spawn(b, &["partial"]);
    let chan = AsyncChannel::new(a).unwrap();
    let mut pending = chan.request(b"waiting for an answer").await.unwrap();
    let line = tokio::task::block_in_place(|| peer.line());
    assert_eq!(line, "PARTIAL");

    peer.kill9();

    let got = timeout(SOON, pending.next()).await.expect("no hang");
    assert!(matches!(got, Some(Err(Error::PeerGone))), "{got:?}");
    let ctl = timeout(SOON, chan.recv_control()).await.expect("no hang");
    assert!(matches!(ctl, Err(Error::PeerGone)), "{ctl:?}");
    let again = chan.request(b"x").await;
    assert!(matches!(again, Err(Error::PeerGone)), "{again:?}");
    assert_eq!(chan.failure().map(|e| e.kind()), Some("peer_gone"));
    drop(chan);

    // A new channel and a new peer work.
    let (a, b) = ipc::create(ChannelConfig::default()).unwrap();
    let _peer = Peer::spawn(b, &["echo"]);
    let chan = AsyncChannel::new(a).unwrap();
    let mut s = chan.request(&pattern(1000, 1)).await.unwrap();
    let f = timeout(SOON, s.next()).await.unwrap().unwrap().unwrap();
    assert_eq!(f.payload, pattern(1000, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sender_blocked_on_a_full_ring_gets_peer_gone() {
    let (a, b) = ipc::create(ChannelConfig::with_ring_bytes(4096)).unwrap();
    // The partial peer never reads its requests, so the ring fills.
    let mut peer = Peer::spawn(b, &["partial"]);
    let chan = std::sync::Arc::new(AsyncChannel::new(a).unwrap());
    let sender = {
        let chan = chan.clone();
        tokio::spawn(async move {
            let mut streams = Vec::new();
            loop {
                match chan.request(&[7u8; 1000]).await {
                    Ok(s) => streams.push(s),
                    Err(e) => return (streams.len(), e),
                }
            }
        })
    };
    tokio::task::block_in_place(|| peer.line());
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        !sender.is_finished(),
        "sender should be blocked on the full ring"
    );
    peer.kill9();
    let (sent, err) = timeout(SOON, sender).await.expect("no hang").unwrap();
    assert!(matches!(err, Error::PeerGone), "{err}");
    assert!((2..=4).contains(&sent), "{sent} requests fit a 4 KiB ring");
}

#[test]
fn worker_side_sees_peer_gone_when_supervisor_dies_mid_frame() {
    let (a, b) = ipc::create(ChannelConfig::with_ring_bytes(4 << 20)).unwrap();
    // The peer takes side A (the supervisor's) and dies writing a request.
    let mut peer = Peer::spawn(a, &["partial"]);
    let chan = BlockingChannel::new(b).unwrap();
    assert_eq!(peer.line(), "PARTIAL");
    peer.kill9();

    let started = std::time::Instant::now();
    let got = chan.recv_timeout(SOON);
    assert!(matches!(got, Err(Error::PeerGone)), "{got:?}");
    assert!(started.elapsed() < SOON, "noticed at once, not by timeout");
    let sent = chan.send(0, Kind::Heartbeat, Flags::NONE, b"");
    assert!(matches!(sent, Err(Error::PeerGone)), "{sent:?}");
    assert!(matches!(chan.try_recv(), Err(Error::PeerGone)));
}

#[test]
fn frames_written_before_death_are_still_delivered() {
    let (a, b) = ipc::create(ChannelConfig::default()).unwrap();
    let chan_b = BlockingChannel::new(b).unwrap();
    let chan_a = BlockingChannel::new(a).unwrap();
    chan_a
        .send(5, Kind::Request, Flags::END, b"last words")
        .unwrap();
    drop(chan_a); // closes side A's socket: the same as its process exiting
    let r = chan_b.recv_timeout(SOON).unwrap();
    assert_eq!((r.request_id(), r.payload()), (5, &b"last words"[..]));
    assert!(r.is_in_place());
    drop(r);
    assert!(matches!(chan_b.recv_timeout(SOON), Err(Error::PeerGone)));
}

#[test]
fn a_worker_started_without_a_channel_says_so() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ipc-peer"))
        .arg("echo")
        .env_remove(ipc::ENV_VAR)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("SIDECAR_IPC is not set"), "{err}");

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ipc-peer"))
        .arg("echo")
        .env(ipc::ENV_VAR, "b:0,1,2,3")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("standard stream"), "{err}");
}
