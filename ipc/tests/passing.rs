//! Descriptors passed from side A to side B over the channel's socketpair
//! (`AsyncChannel::send_fd`, `BlockingChannel::take_fd`): the receiver
//! gets the same open file by tag, ring traffic is untouched, a tag never
//! sent times out, unclaimed descriptors are bounded, and a gone peer is
//! told apart from a late descriptor.

use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsFd;
use std::time::Duration;

use ipc::{AsyncChannel, BlockingChannel, ChannelConfig, Error, Flags, Kind};

fn file_with(text: &str) -> std::fs::File {
    let path = std::env::temp_dir().join(format!("ipc-pass-{}-{}", std::process::id(), text.len()));
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .unwrap();
    std::fs::remove_file(&path).unwrap();
    f.write_all(text.as_bytes()).unwrap();
    f
}

fn read_all(fd: std::os::fd::OwnedFd) -> String {
    let mut f = std::fs::File::from(fd);
    f.seek(SeekFrom::Start(0)).unwrap();
    let mut s = String::new();
    f.read_to_string(&mut s).unwrap();
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_passed_descriptor_is_claimed_by_its_tag_beside_ring_traffic() {
    let (a, b) = ipc::create(ChannelConfig::default()).unwrap();
    let side_a = AsyncChannel::new(a).unwrap();
    let side_b = BlockingChannel::new(b).unwrap();
    let first = file_with("first region");
    let second = file_with("second region, longer");
    side_a.send_fd(7, first.as_fd()).await.unwrap();
    side_a.send_fd(9, second.as_fd()).await.unwrap();
    // Closing ours does not close theirs.
    drop(first);
    let mut answers = side_a.request(b"uses region 9").await.unwrap();

    let worker = std::thread::spawn(move || {
        let req = side_b.recv_timeout(Duration::from_secs(5)).unwrap();
        let id = req.request_id();
        drop(req);
        let nine = side_b.take_fd(9, Duration::from_secs(5)).unwrap();
        let seven = side_b.take_fd(7, Duration::from_secs(5)).unwrap();
        let text = format!("{}|{}", read_all(nine), read_all(seven));
        side_b
            .send(id, Kind::Response, Flags::END, text.as_bytes())
            .unwrap();
        // Claimed once: the same tag again has nothing.
        let again = side_b.take_fd(9, Duration::from_millis(100));
        assert!(matches!(again, Err(Error::Timeout)), "{again:?}");
        assert_eq!(side_b.passed_fds(), 0);
        side_b
    });
    let frame = answers.next().await.unwrap().unwrap();
    assert_eq!(
        std::str::from_utf8(&frame.payload).unwrap(),
        "second region, longer|first region"
    );
    drop(worker.join().unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unclaimed_descriptors_are_bounded_and_a_gone_peer_is_said() {
    let (a, b) = ipc::create(ChannelConfig::default()).unwrap();
    let side_a = AsyncChannel::new(a).unwrap();
    let side_b = BlockingChannel::new(b).unwrap();
    let f = file_with("x");
    let extra = ipc::MAX_PASSED + 44;
    for tag in 0..extra as u64 {
        side_a.send_fd(tag, f.as_fd()).await.unwrap();
    }
    // Wait (bounded) until the receiver has read them all.
    let last = side_b.take_fd(ipc::MAX_PASSED as u64 - 1, Duration::from_secs(5));
    assert!(last.is_ok(), "{last:?}");
    let start = std::time::Instant::now();
    while side_b.passed_fds() < ipc::MAX_PASSED - 1 && start.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(100));
    assert!(
        side_b.passed_fds() <= ipc::MAX_PASSED,
        "{} held",
        side_b.passed_fds()
    );
    // Past the bound: closed on arrival, never held.
    let dropped = side_b.take_fd(extra as u64 - 1, Duration::from_millis(100));
    assert!(matches!(dropped, Err(Error::Timeout)), "{dropped:?}");
    drop(side_a);
    let gone = side_b.take_fd(123_456, Duration::from_secs(5));
    assert!(matches!(gone, Err(Error::PeerGone)), "{gone:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forgotten_descriptors_are_closed_by_tag() {
    let (a, b) = ipc::create(ChannelConfig::default()).unwrap();
    let side_a = AsyncChannel::new(a).unwrap();
    let side_b = BlockingChannel::new(b).unwrap();
    let f = file_with("forget me");
    for tag in [1u64, 2, 3] {
        side_a.send_fd(tag, f.as_fd()).await.unwrap();
    }
    // A request after them: once it is read, so are the descriptors.
    let _answers = side_a.request(b"after the descriptors").await.unwrap();
    let req = side_b.recv_timeout(Duration::from_secs(5)).unwrap();
    drop(req);
    let start = std::time::Instant::now();
    while side_b.passed_fds() < 3 && start.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(side_b.passed_fds(), 3);
    // Tags 1 and 3 (and 99, never sent): two were held, both closed.
    assert_eq!(side_b.forget_fd(&[1, 3, 99]), 2);
    assert_eq!(side_b.passed_fds(), 1);
    assert_eq!(side_b.forget_fd(&[1]), 0, "forgotten once");
    let gone = side_b.take_fd(1, Duration::from_millis(50));
    assert!(matches!(gone, Err(Error::Timeout)), "{gone:?}");
    let two = side_b.take_fd(2, Duration::from_secs(5)).unwrap();
    assert_eq!(read_all(two), "forget me");
    assert_eq!(side_b.passed_fds(), 0);
}
