//! The region table through the real serve loop: a real memfd, passed
//! over a real channel's socketpair (`AsyncChannel::send_fd` on a tokio
//! side, the worker's loop in a thread), read and written by a tiny
//! family whose Tokenize text says what to do with a ref.

use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::sync::{Arc, mpsc};
use std::time::Duration;

use ipc::{AsyncChannel, BlockingChannel, ChannelConfig, Kind};
use nix::sys::memfd::{MFdFlags, memfd_create};
use prost::Message;
use sidecar_proto::v1::{ModelFamily, SharedMemoryRef, TokenizeRequest, TokenizeResponse};
use sidecar_proto::worker::{
    Load, Loaded, RegionDetach, RegionUse, WorkerRequest, WorkerResponse, worker_request,
    worker_response,
};

use super::*;
use crate::family::{Call, Context, Family};
use crate::serve::serve_every;

/// Tokenize's text is a command on a ref: "read NAME OFFSET SIZE" answers
/// the bytes as tokens; "write NAME OFFSET SIZE TEXT" writes TEXT;
/// "hold" keeps the call's regions (a call still using them);
/// "held NAME OFFSET SIZE" reads through the kept ones.
#[derive(Debug, Default)]
struct Regional {
    held: Option<Resolved>,
}

fn parse_ref(words: &[&str]) -> SharedMemoryRef {
    SharedMemoryRef {
        region: words[0].into(),
        offset: words[1].parse().expect("offset"),
        byte_size: words[2].parse().expect("size"),
    }
}

impl Family for Regional {
    const FAMILY: ModelFamily = ModelFamily::Lite;
    const VERSION: &'static str = "0.0.1";
    const CAPABILITIES: &'static [&'static str] = &["regions"];

    fn load(&mut self, _load: &Load) -> Result<Loaded, WorkerError> {
        Ok(Loaded::default())
    }

    fn request(&mut self, cx: &mut Context, call: Call) -> Result<(), WorkerError> {
        let worker_request::Body::Tokenize(t) = call.body else {
            return Err(WorkerError::unimplemented("not here"));
        };
        let words: Vec<&str> = t.text.split(' ').collect();
        let bytes = match words[0] {
            "read" => call.regions.read(&parse_ref(&words[1..4]), "ref")?,
            "write" => {
                call.regions
                    .write(&parse_ref(&words[1..4]), "ref", words[4].as_bytes())?;
                Vec::new()
            }
            "hold" => {
                self.held = Some(call.regions.clone());
                Vec::new()
            }
            "held" => {
                let held = self.held.as_ref().expect("held");
                let mut dst = vec![0u8; words[3].parse().expect("size")];
                held.read_into(&parse_ref(&words[1..4]), "ref", &mut dst)?;
                dst
            }
            other => panic!("{other}"),
        };
        let r = TokenizeResponse {
            tokens: bytes.iter().map(|&b| i32::from(b)).collect(),
            pieces: Vec::new(),
        };
        cx.answer(call.id, worker_response::Body::Tokenize(r));
        Ok(())
    }
}

fn use_of(
    name: &str,
    id: u64,
    offset: u64,
    byte_size: u64,
    writable: bool,
    attach: bool,
) -> RegionUse {
    RegionUse {
        name: name.into(),
        id,
        offset,
        byte_size,
        writable,
        attach,
    }
}

fn command(text: &str, regions: Vec<RegionUse>) -> Vec<u8> {
    WorkerRequest {
        regions,
        body: Some(worker_request::Body::Tokenize(TokenizeRequest {
            text: text.into(),
            ..Default::default()
        })),
        ..Default::default()
    }
    .encode_to_vec()
}

/// A memfd of `len` bytes, byte i = i % 251.
fn object(len: usize) -> OwnedFd {
    let fd = memfd_create("region-test", MFdFlags::MFD_CLOEXEC).expect("memfd");
    let file = std::fs::File::from(fd);
    let bytes: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
    file.write_all_at(&bytes, 0).expect("fill");
    file.into()
}

fn size_of(fd: &OwnedFd) -> u64 {
    std::fs::File::from(fd.try_clone().expect("dup"))
        .metadata()
        .expect("fstat")
        .len()
}

/// The answer: Ok(bytes) or Err((code, message)).
async fn ask(chan: &AsyncChannel, payload: &[u8]) -> Result<Vec<u8>, (u32, String)> {
    let mut s = chan.request(payload).await.expect("send");
    let f = s.next().await.expect("a frame").expect("ok");
    assert!(f.flags.is_end(), "one frame");
    match f.kind {
        Kind::Response => match WorkerResponse::decode(&f.payload[..])
            .expect("response")
            .body
        {
            Some(worker_response::Body::Tokenize(t)) => {
                Ok(t.tokens.iter().map(|&b| b as u8).collect())
            }
            Some(worker_response::Body::RegionsDetached(n)) => Ok(vec![n as u8]),
            other => panic!("{other:?}"),
        },
        Kind::Error => {
            let e = sidecar_proto::worker::WorkerError::decode(&f.payload[..]).expect("error");
            Err((e.code, e.message))
        }
        k => panic!("{k:?}"),
    }
}

fn detach(ids: Vec<u64>) -> Vec<u8> {
    WorkerRequest {
        body: Some(worker_request::Body::RegionDetach(RegionDetach { ids })),
        ..Default::default()
    }
    .encode_to_vec()
}

/// Serves [`Regional`] and runs `test` as its supervisor; the worker's loop
/// must still run at the end (no request ended it) and end with it.
fn with_worker<Fut: std::future::Future<Output = ()>>(test: impl FnOnce(AsyncChannel) -> Fut) {
    let (supervisor_end, worker_end) =
        ipc::create(ChannelConfig::with_ring_bytes(1 << 20)).expect("channel");
    let worker = Arc::new(BlockingChannel::new(worker_end).expect("worker end"));
    let (done_tx, done) = mpsc::channel();
    std::thread::spawn(move || {
        let ended = serve_every(worker, Regional::default(), Duration::from_secs(60));
        let _ = done_tx.send(ended);
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let chan = AsyncChannel::new(supervisor_end).expect("supervisor end");
        assert_eq!(chan.recv_control().await.expect("hello").kind, Kind::Hello);
        test(chan).await;
    });
    assert!(done.try_recv().is_err(), "the worker's loop ended early");
    drop(rt);
    let ended = done
        .recv_timeout(Duration::from_secs(10))
        .expect("the worker's loop ends with its supervisor");
    assert!(ended.is_ok(), "{ended:?}");
}

#[test]
fn a_region_is_attached_read_written_and_checked() {
    let fd = object(8192);
    with_worker(|chan| async move {
        let a = |attach| use_of("a", 1, 4096, 4096, true, attach);
        chan.send_fd(1, fd.as_fd()).await.expect("send fd");
        let got = ask(&chan, &command("read a 10 5", vec![a(true)])).await;
        let want: Vec<u8> = (4106..4111).map(|i| (i % 251) as u8).collect();
        assert_eq!(got, Ok(want), "region offset + ref offset");

        // Kept: later requests name it without the descriptor.
        assert_eq!(
            ask(&chan, &command("write a 100 5 hello", vec![a(false)])).await,
            Ok(vec![])
        );
        let mut back = [0u8; 5];
        std::fs::File::from(fd.try_clone().expect("dup"))
            .read_exact_at(&mut back, 4196)
            .expect("read back");
        assert_eq!(&back, b"hello");
        assert_eq!(
            ask(&chan, &command("read a 100 5", vec![a(false)])).await,
            Ok(b"hello".to_vec())
        );

        // A ref past the region, and offset + size past 2^64.
        let (code, msg) = ask(&chan, &command("read a 4000 200", vec![a(false)]))
            .await
            .expect_err("past");
        assert_eq!(code, 3, "{msg}");
        assert_eq!(
            msg,
            "ref: offset 4000 + byte_size 200 passes the end of region \"a\" (4096 bytes)"
        );
        let (code, msg) = ask(
            &chan,
            &command(&format!("read a {} 2", u64::MAX), vec![a(false)]),
        )
        .await
        .expect_err("overflow");
        assert_eq!(code, 3, "{msg}");
        assert!(
            msg.contains(&format!("offset {} + byte_size 2 passes the end", u64::MAX)),
            "{msg}"
        );
        // A RegionUse whose own window overflows.
        let (code, msg) = ask(
            &chan,
            &command(
                "read a 0 1",
                vec![use_of("a", 1, u64::MAX, 2, false, false)],
            ),
        )
        .await
        .expect_err("overflow");
        assert_eq!((code, msg.contains("past 2^64")), (3, true), "{msg}");

        // A name the request does not list is refused, even though the
        // worker holds a region of that name.
        let (code, msg) = ask(&chan, &command("read a 0 1", vec![]))
            .await
            .expect_err("unlisted");
        assert_eq!(code, 3);
        assert_eq!(
            msg,
            "ref.region: \"a\" is not a region this request may use"
        );
        let (code, msg) = ask(
            &chan,
            &command("read b 0 1", vec![use_of("b", 77, 0, 10, false, false)]),
        )
        .await
        .expect_err("never attached");
        assert_eq!(code, 9);
        assert_eq!(msg, "region \"b\" (id 77) is not attached to this worker");

        // Read-only: no write.
        let (code, msg) = ask(
            &chan,
            &command("write a 0 1 x", vec![use_of("a", 1, 0, 10, false, false)]),
        )
        .await
        .expect_err("read-only");
        assert_eq!(code, 3);
        assert_eq!(msg, "ref.region: region \"a\" was not registered writable");
        // A descriptor that never comes: this request fails, the next works.
        let (code, msg) = ask(
            &chan,
            &command("read c 0 1", vec![use_of("c", 5, 0, 10, false, true)]),
        )
        .await
        .expect_err("no descriptor");
        assert_eq!(code, 14);
        assert_eq!(
            msg,
            "region \"c\" (id 5): its descriptor did not arrive within 2000 ms"
        );
        assert_eq!(
            ask(&chan, &command("read a 0 1", vec![a(false)])).await,
            Ok(vec![(4096 % 251) as u8])
        );
    });
}

#[test]
fn a_truncated_object_is_an_error_never_a_signal_and_never_grown() {
    let fd = object(4096);
    with_worker(|chan| async move {
        let a = |attach| use_of("a", 3, 0, 4096, true, attach);
        chan.send_fd(3, fd.as_fd()).await.expect("send fd");
        assert_eq!(
            ask(&chan, &command("read a 0 2", vec![a(true)])).await,
            Ok(vec![0, 1])
        );
        nix::unistd::ftruncate(&fd, 0).expect("truncate");
        let (code, msg) = ask(&chan, &command("read a 0 2", vec![a(false)]))
            .await
            .expect_err("shrank");
        assert_eq!(code, 9);
        assert_eq!(
            msg,
            "region \"a\" shrank to 0 bytes; the request needs its bytes up to 2"
        );
        let (code, msg) = ask(&chan, &command("write a 10 4 abcd", vec![a(false)]))
            .await
            .expect_err("shrank");
        assert_eq!(code, 9);
        assert_eq!(
            msg,
            "region \"a\" shrank to 0 bytes; the request needs its bytes up to 14"
        );
        assert_eq!(size_of(&fd), 0, "a write never grows the client's object");
        // Partly shrunk: the bytes up to the new end are still there.
        nix::unistd::ftruncate(&fd, 100).expect("grow back");
        assert_eq!(
            ask(&chan, &command("read a 98 2", vec![a(false)])).await,
            Ok(vec![0, 0])
        );
        let (code, msg) = ask(&chan, &command("read a 99 2", vec![a(false)]))
            .await
            .expect_err("shrank");
        assert_eq!(
            (code, msg.as_str()),
            (
                9,
                "region \"a\" shrank to 100 bytes; the request needs its bytes up to 101"
            )
        );
    });
}

#[test]
fn a_detach_while_a_call_holds_the_region_keeps_it_for_that_call() {
    let fd = object(1024);
    with_worker(|chan| async move {
        let a = |attach| use_of("a", 11, 0, 1024, false, attach);
        chan.send_fd(11, fd.as_fd()).await.expect("send fd");
        assert_eq!(
            ask(&chan, &command("hold", vec![a(true)])).await,
            Ok(vec![])
        );
        assert_eq!(
            ask(&chan, &detach(vec![11, 12])).await,
            Ok(vec![1]),
            "one of the two was open"
        );
        assert_eq!(
            ask(&chan, &detach(vec![11])).await,
            Ok(vec![0]),
            "gone already"
        );
        // The holder reads on; a new request cannot name it.
        assert_eq!(
            ask(&chan, &command("held a 5 3", vec![])).await,
            Ok(vec![5, 6, 7])
        );
        let (code, msg) = ask(&chan, &command("read a 0 1", vec![a(false)]))
            .await
            .expect_err("detached");
        assert_eq!(
            (code, msg.as_str()),
            (9, "region \"a\" (id 11) is not attached to this worker")
        );
    });
}

#[test]
fn at_most_256_regions_are_held() {
    let fd = object(64);
    with_worker(|chan| async move {
        let uses: Vec<RegionUse> = (1..=MAX_REGIONS as u64)
            .map(|id| use_of(&format!("r{id}"), id, 0, 64, false, true))
            .collect();
        for u in &uses {
            chan.send_fd(u.id, fd.as_fd()).await.expect("send fd");
        }
        assert_eq!(
            ask(&chan, &command("read r256 3 1", uses)).await,
            Ok(vec![3])
        );
        let extra = || use_of("r257", 257, 0, 64, false, true);
        chan.send_fd(257, fd.as_fd()).await.expect("send fd");
        let (code, msg) = ask(&chan, &command("read r257 0 1", vec![extra()]))
            .await
            .expect_err("full");
        assert_eq!(code, 8);
        assert_eq!(
            msg,
            "region \"r257\": this worker holds 256 regions, the most it keeps (256); unregister some"
        );
        assert_eq!(ask(&chan, &detach(vec![1])).await, Ok(vec![1]));
        chan.send_fd(257, fd.as_fd()).await.expect("send fd");
        assert_eq!(
            ask(&chan, &command("read r257 7 1", vec![extra()])).await,
            Ok(vec![7])
        );
        // A region unregistered while a call (or a waiting stream frame)
        // still holds it keeps its descriptor open; it no longer takes a
        // place among the 256 the supervisor counts on.
        let r257 = || use_of("r257", 257, 0, 64, false, false);
        assert_eq!(ask(&chan, &command("hold", vec![r257()])).await, Ok(vec![]));
        assert_eq!(ask(&chan, &detach(vec![257])).await, Ok(vec![1]));
        assert_eq!(
            ask(&chan, &command("held r257 5 1", vec![])).await,
            Ok(vec![5]),
            "the holder reads on"
        );
        let r258 = || use_of("r258", 258, 0, 64, false, true);
        chan.send_fd(258, fd.as_fd()).await.expect("send fd");
        assert_eq!(
            ask(&chan, &command("read r258 9 1", vec![r258()])).await,
            Ok(vec![9])
        );
    });
}

#[test]
fn a_descriptor_whose_request_never_came_is_claimed_or_forgotten() {
    let fd = object(1024);
    with_worker(|chan| async move {
        // The supervisor sent region 21's descriptor, then its call was
        // cancelled before the request with `attach = true` was written;
        // the next request names it with `attach = false`.
        chan.send_fd(21, fd.as_fd()).await.expect("send fd");
        let a = |attach| use_of("a", 21, 0, 1024, false, attach);
        assert_eq!(
            ask(&chan, &command("read a 9 2", vec![a(false)])).await,
            Ok(vec![9, 10]),
            "claimed without waiting"
        );
        assert_eq!(
            ask(&chan, &command("read a 3 1", vec![a(false)])).await,
            Ok(vec![3]),
            "kept from then on"
        );
        // Region 22's descriptor came, its request never did, then it was
        // detached: the descriptor is closed, not held forever.
        chan.send_fd(22, fd.as_fd()).await.expect("send fd");
        assert_eq!(ask(&chan, &detach(vec![22])).await, Ok(vec![0]));
        let b = use_of("b", 22, 0, 1024, false, false);
        let (code, msg) = ask(&chan, &command("read b 0 1", vec![b]))
            .await
            .expect_err("forgotten");
        assert_eq!(
            (code, msg.as_str()),
            (9, "region \"b\" (id 22) is not attached to this worker")
        );
    });
}
