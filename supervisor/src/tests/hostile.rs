//! Workers and requests that attack the supervisor: a worker that floods
//! its channel, a request that crashes its worker again and again, kills
//! from outside.

use std::time::Instant;

use sidecar_proto::v1::TokenizeRequest;
use sidecar_proto::worker::{WorkerRequest, worker_request};

use super::{MAX_RESTARTS, MIB, PATIENCE, alive, rig, spec, tokenize, wait_for};
use crate::error::Error;
use crate::lifecycle::{KillReason, State};

/// This process's peak resident memory (`VmHWM`), bytes.
fn peak_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("status");
    procmem::proc_kb_field(&status, "VmHWM").expect("VmHWM")
}

/// A worker that sends answers past its credit window, or control frames
/// past the control queue's bound, is killed with reason `protocol` at
/// once: the supervisor holds at most a window of its frames unread (a
/// window is 64 frames of 64 KiB here: 4 MiB, not the gigabytes the flood
/// sends),
/// the caller gets UNAVAILABLE naming the violation, and the respawned
/// worker serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_flooding_past_its_window_is_killed_for_protocol() {
    let rig = rig(1000);
    let h = rig.registry.add(spec("ok-flood", 10, true)).expect("add");
    let mut pid = wait_for(&h, "READY", |s| s.state == State::Ready).await.pid;
    let before = peak_rss();
    for (n, text) in ["flood", "flood-control"].into_iter().enumerate() {
        let req = WorkerRequest {
            regions: Default::default(),
            request_tag: "test".into(),
            cache_partition: String::new(),
            deadline_unix_ms: 0,
            body: Some(worker_request::Body::Tokenize(TokenizeRequest {
                model_id: h.spec.id.clone(),
                text: text.into(),
                ..Default::default()
            })),
        };
        let mut call = h.call(req, Instant::now() + PATIENCE).await.expect("sent");
        // Nothing is read until the worker is gone: reading returns credit,
        // and a reader that keeps up lets any number of answers through
        // within the window. Unread, the supervisor holds at most 64.
        wait_for(&h, "the flooding worker killed", |s| {
            s.restarts as usize == n + 1 && s.last_kill_reason == Some(KillReason::Protocol)
        })
        .await;
        let mut answers = 0;
        let err = loop {
            match call.next().await {
                Some(Ok(_)) => answers += 1,
                Some(Err(e)) => break e,
                None => panic!("{text}: the call ended without the channel's error"),
            }
        };
        let violation = if text == "flood" {
            "credit window of 64"
        } else {
            "more than 256 unread control frames"
        };
        assert!(
            matches!(&err, Error::WorkerDied { error, .. } if matches!(&**error, Error::Unavailable(m) if m.contains("broke the channel protocol") && m.contains(violation))),
            "{text}: {err:?}"
        );
        assert!(
            answers <= 64,
            "{text}: {answers} answers past a window of 64"
        );
        let s = wait_for(&h, "READY with a new worker", |s| {
            s.state == State::Ready && s.pid != pid
        })
        .await;
        assert_eq!(s.last_kill_reason, Some(KillReason::Protocol), "{text}");
        assert_eq!(s.restarts as usize, n + 1);
        assert!(!alive(pid), "{text}: the flooding worker is gone");
        pid = s.pid;
    }
    let grown = peak_rss().saturating_sub(before);
    assert!(
        grown < 64 * MIB,
        "the supervisor's peak memory grew {} MiB during the floods",
        grown / MIB
    );
    let text = rig.registry.shared().metrics.render(&[]);
    assert!(
        text.contains("sidecar_worker_restarts_total{model=\"ok-flood\",reason=\"protocol\"} 2"),
        "{text}"
    );
    assert_eq!(tokenize(&h, "ok").await.expect("served"), [111, 107]);
}

/// `DESIGN.md`'s quarantine: a request in flight in two self-raised
/// crashes is refused with INVALID_ARGUMENT naming them, instead of
/// crashing a third worker; the model is not FAILED and other requests are
/// served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_crashed_two_workers_is_refused_instead_of_crashing_a_third() {
    let rig = rig(1000);
    let h = rig.registry.add(spec("ok-q", 10, true)).expect("add");
    let mut pid = wait_for(&h, "READY", |s| s.state == State::Ready).await.pid;
    for n in 1..=2 {
        let err = tokenize(&h, "abort").await.expect_err("the worker aborted");
        assert!(
            matches!(&err, Error::WorkerDied { error, .. } if matches!(**error, Error::Unavailable(_))),
            "{err:?}"
        );
        pid = wait_for(&h, "READY again", |s| {
            s.state == State::Ready && s.pid != pid
        })
        .await
        .pid;
        assert_eq!(h.status().restarts, n);
    }
    let err = tokenize(&h, "abort").await.expect_err("quarantined");
    assert!(
        matches!(&err, Error::InvalidArgument(m) if m.contains("in flight in 2 worker crashes") && m.contains("workers.quarantine_ttl")),
        "{err:?}"
    );
    let s = h.status();
    assert_eq!(
        (s.state, s.pid, s.restarts),
        (State::Ready, pid, 2),
        "no third crash"
    );
    assert!(alive(pid));
    assert_eq!(
        tokenize(&h, "ok").await.expect("others are served"),
        [111, 107]
    );
    let text = rig.registry.shared().metrics.render(&[]);
    assert!(
        text.contains("sidecar_rejected_total{model=\"ok-q\",reason=\"quarantined\"} 1"),
        "{text}"
    );
}

/// A SIGKILL from outside the supervisor is counted as a restart but not
/// towards FAILED (only if the next start fails): an operator's or a
/// tool's kills do not take a healthy model offline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkills_from_outside_do_not_fail_a_model() {
    let rig = rig(1000);
    let h = rig.registry.add(spec("ok-k", 10, true)).expect("add");
    let mut pid = wait_for(&h, "READY", |s| s.state == State::Ready).await.pid;
    let kills = MAX_RESTARTS + 2;
    for _ in 0..kills {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .expect("kill -9");
        pid = wait_for(&h, "READY with a new worker", |s| {
            s.state == State::Ready && s.pid != pid
        })
        .await
        .pid;
    }
    let s = h.status();
    assert_eq!(s.state, State::Ready);
    assert_eq!(s.restarts, kills);
    assert_eq!(s.last_kill_reason, Some(KillReason::Crash));
    assert!(s.last_error.contains("from outside"), "{}", s.last_error);
    assert_eq!(tokenize(&h, "ok").await.expect("served"), [111, 107]);
}
