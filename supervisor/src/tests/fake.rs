//! A fake worker for the actor's tests: a real child process (this test
//! binary, started again through a script named like a worker binary) that
//! speaks the real protocol over the real channel, and behaves as its
//! model id says:
//!
//! | model id starts with | on Load |
//! | --- | --- |
//! | `ok`      | answers Loaded, heartbeats every 100 ms |
//! | `silent`  | answers Loaded, never heartbeats |
//! | `refuse`  | answers INVALID_ARGUMENT (a load no restart can fix) |
//! | `crash`   | exits with status 1 (a failed start) |
//! | `slow`    | heartbeats, and never answers the load |
//!
//! A Tokenize call is answered with one token per byte of its text; the
//! text `abort` makes the worker abort (SIGABRT) instead, and `hang` is
//! never answered (the fake ignores cancels too), and `slow:<text>` is
//! answered for `<text>` after 500 ms while the fake reads on. Two texts break the
//! channel's rules as a hostile worker would: `flood` answers with 64 KiB
//! (valid) frames past the request's credit window until the channel closes, and
//! `flood-control` sends error frames on request id 0 the same way.

use std::sync::Arc;
use std::time::Duration;

use ipc::{BlockingChannel, Flags, Kind};
use prost::Message;
use sidecar_proto::v1::{ModelFamily, TokenizeResponse};
use sidecar_proto::worker::{
    Heartbeat, Hello, Loaded, WorkerError, WorkerRequest, WorkerResponse, worker_request,
    worker_response,
};

/// The environment variable that makes the entry point a worker.
pub(super) const ENV: &str = "SIDECAR_FAKE_WORKER";
/// The entry point's test name.
pub(super) const ENTRY: &str = "tests::fake::entry";

#[test]
#[ignore = "the fake worker's entry point: the actor tests start this binary with it as a child process"]
fn entry() {
    assert!(
        std::env::var_os(ENV).is_some(),
        "not a test: the actor tests run this as their fake worker ({ENV} set)"
    );
    let chan = Arc::new(BlockingChannel::from_env().expect("started by the supervisor"));
    serve(&chan);
    std::process::exit(0);
}

fn send(chan: &BlockingChannel, id: u64, kind: Kind, body: &[u8]) {
    if chan.send(id, kind, Flags::END, body).is_err() {
        std::process::exit(0);
    }
}

fn heartbeats(chan: Arc<BlockingChannel>) {
    std::thread::spawn(move || {
        for seq in 1u64.. {
            let beat = Heartbeat {
                seq,
                ..Default::default()
            };
            if chan
                .try_send(0, Kind::Heartbeat, Flags::NONE, &beat.encode_to_vec())
                .is_err_and(|e| !matches!(e, ipc::Error::WouldBlock(_)))
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    });
}

fn serve(chan: &Arc<BlockingChannel>) {
    let hello = Hello {
        protocol_version: sidecar_proto::WORKER_PROTOCOL_VERSION,
        family: ModelFamily::Text as i32,
        worker_version: "fake".into(),
        pid: std::process::id(),
        ..Default::default()
    };
    send(chan, 0, Kind::Hello, &hello.encode_to_vec());
    loop {
        let Ok(frame) = chan.recv() else {
            return;
        };
        if frame.kind() != Kind::Request {
            continue;
        }
        let id = frame.request_id();
        let req = WorkerRequest::decode(frame.payload()).expect("a request");
        drop(frame);
        match req.body {
            Some(worker_request::Body::Load(load)) => {
                let m = load.model_id.as_str();
                if m.starts_with("crash") {
                    std::process::exit(1);
                }
                if m.starts_with("refuse") {
                    let e = WorkerError {
                        code: 3,
                        message: "the fake refuses this model".into(),
                        fatal: false,
                    };
                    send(chan, id, Kind::Error, &e.encode_to_vec());
                    continue;
                }
                if !m.starts_with("silent") {
                    heartbeats(chan.clone());
                }
                if m.starts_with("slow") {
                    continue;
                }
                let r = WorkerResponse {
                    body: Some(worker_response::Body::Loaded(Loaded::default())),
                    ..Default::default()
                };
                send(chan, id, Kind::Response, &r.encode_to_vec());
            }
            Some(worker_request::Body::Tokenize(t)) => {
                if t.text == "abort" {
                    std::process::abort();
                }
                if t.text == "hang" {
                    continue;
                }
                // Answered after 500 ms, from a thread: the loop reads on.
                if let Some(rest) = t.text.strip_prefix("slow:") {
                    let r = WorkerResponse {
                        body: Some(worker_response::Body::Tokenize(TokenizeResponse {
                            tokens: rest.bytes().map(i32::from).collect(),
                            ..Default::default()
                        })),
                        ..Default::default()
                    };
                    let chan = chan.clone();
                    std::thread::spawn(move || {
                        std::thread::sleep(Duration::from_millis(500));
                        send(&chan, id, Kind::Response, &r.encode_to_vec());
                    });
                    continue;
                }
                if t.text.starts_with("flood") {
                    let (to, kind) = if t.text == "flood-control" {
                        (0, Kind::Error)
                    } else {
                        (id, Kind::Response)
                    };
                    let junk = WorkerResponse {
                        body: Some(worker_response::Body::Tokenize(TokenizeResponse {
                            tokens: vec![7; 16 << 10],
                            ..Default::default()
                        })),
                        ..Default::default()
                    }
                    .encode_to_vec();
                    while chan
                        .send_past_credit_for_test(to, kind, Flags::NONE, &junk)
                        .is_ok()
                    {}
                    std::process::exit(0);
                }
                let r = WorkerResponse {
                    body: Some(worker_response::Body::Tokenize(TokenizeResponse {
                        tokens: t.text.bytes().map(i32::from).collect(),
                        ..Default::default()
                    })),
                    ..Default::default()
                };
                send(chan, id, Kind::Response, &r.encode_to_vec());
            }
            _ => {
                let e = WorkerError {
                    code: 12,
                    message: "the fake serves Load and Tokenize".into(),
                    fatal: false,
                };
                send(chan, id, Kind::Error, &e.encode_to_vec());
            }
        }
    }
}
