//! The re-send of deterministic calls after a worker death
//! (`api::deterministic`) with the quarantine: a request that crashes its
//! worker is re-sent once, alone (the gate), crashes the second worker and
//! is then refused with INVALID_ARGUMENT; a bystander in flight at the
//! first crash is re-sent and answered, and is not refused.

use std::sync::Arc;
use std::time::Duration;

use sidecar_proto::v1::TokenizeRequest;

use super::{MAX_RESTARTS, Rig, alive, rig, spec, wait_for};
use crate::api::deterministic::{RETRIED, methods};
use crate::lifecycle::State;

async fn tokenize(
    registry: &Arc<crate::registry::Registry>,
    id: &str,
    text: &str,
) -> Result<tonic::Response<sidecar_proto::v1::TokenizeResponse>, tonic::Status> {
    let req = tonic::Request::new(TokenizeRequest {
        model_id: id.into(),
        text: text.into(),
        ..Default::default()
    });
    methods::tokenize(registry, Duration::from_secs(20), req).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_request_costs_two_workers_and_its_bystander_is_re_sent_and_served() {
    let Rig { _dir, registry } = rig(1000);
    let registry = Arc::new(registry);
    let h = registry.add(spec("ok-retry", 10, true)).expect("add");
    let first = wait_for(&h, "READY", |s| s.state == State::Ready).await.pid;
    // The bystander is in flight when the poison arrives.
    let bystander = {
        let registry = registry.clone();
        tokio::spawn(async move { tokenize(&registry, "ok-retry", "slow:ok").await })
    };
    tokio::time::sleep(Duration::from_millis(150)).await;
    let err = tokenize(&registry, "ok-retry", "abort")
        .await
        .expect_err("the poison");
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(
        err.message().contains("in flight in 2 worker crashes")
            && err.message().contains("workers.quarantine_ttl"),
        "{err:?}"
    );
    let answer = bystander
        .await
        .expect("joined")
        .expect("the bystander is served by a new worker");
    assert_eq!(
        answer.metadata().get(RETRIED).and_then(|v| v.to_str().ok()),
        Some("1")
    );
    assert_eq!(answer.into_inner().tokens, [111, 107]);
    // Two workers, not more: the poison is refused before it is sent.
    let s = wait_for(&h, "READY", |s| s.state == State::Ready).await;
    assert_eq!(s.restarts, 2);
    assert!(s.restarts <= MAX_RESTARTS, "not FAILED");
    assert!(!alive(first));
    let err = tokenize(&registry, "ok-retry", "abort")
        .await
        .expect_err("quarantined");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert_eq!(h.status().restarts, 2, "no third crash");
    assert_eq!(h.status().pid, s.pid);
    // The bystander alone is not refused.
    let ok = tokenize(&registry, "ok-retry", "slow:ok")
        .await
        .expect("served");
    assert!(ok.metadata().get(RETRIED).is_none());
    assert_eq!(
        h.info().retries,
        2,
        "the poison and the bystander, once each"
    );
    let text = registry.shared().metrics.render(&[]);
    assert!(
        text.contains("sidecar_retries_total{model=\"ok-retry\"} 2"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identical_tokenize_calls_in_flight_run_once_and_then_come_from_the_cache() {
    let Rig { _dir, registry } = rig(1000);
    let registry = Arc::new(registry);
    let h = registry.add(spec("ok-dedup", 10, true)).expect("add");
    wait_for(&h, "READY", |s| s.state == State::Ready).await;
    // The first call starts the file's digest; wait until calls are cached.
    let start = std::time::Instant::now();
    loop {
        let r = tokenize(&registry, "ok-dedup", "warm")
            .await
            .expect("served");
        if r.metadata()
            .get("x-sidecar-cache-hits")
            .and_then(|v| v.to_str().ok())
            == Some("1")
        {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "never cached");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let before = h.info().cache.expect("stats");
    let mut calls = Vec::new();
    for _ in 0..8 {
        let registry = registry.clone();
        calls.push(tokio::spawn(async move {
            tokenize(&registry, "ok-dedup", "slow:same").await
        }));
    }
    for c in calls {
        let r = c.await.expect("joined").expect("served");
        assert_eq!(r.into_inner().tokens, b"same".map(i32::from));
    }
    let after = h.info().cache.expect("stats");
    assert_eq!(after.misses - before.misses, 8, "{after:?}");
    assert_eq!(after.shared - before.shared, 7, "one execution: {after:?}");
    let r = tokenize(&registry, "ok-dedup", "slow:same")
        .await
        .expect("cached");
    assert_eq!(
        r.metadata()
            .get("x-sidecar-cache-hits")
            .and_then(|v| v.to_str().ok()),
        Some("1")
    );
    // Unloaded: its entries and counters go.
    registry
        .remove("ok-dedup", crate::lifecycle::KillReason::Requested)
        .await
        .expect("remove");
    let stats = registry.shared().cache.stats("ok-dedup");
    assert_eq!((stats.entries, stats.bytes), (0, 0));
}

/// A Tokenize with `metadata` (name, value) pairs.
async fn tokenize_with(
    registry: &Arc<crate::registry::Registry>,
    id: &str,
    text: &str,
    metadata: &[(&'static str, &str)],
) -> Result<tonic::Response<sidecar_proto::v1::TokenizeResponse>, tonic::Status> {
    let mut req = tonic::Request::new(TokenizeRequest {
        model_id: id.into(),
        text: text.into(),
        ..Default::default()
    });
    for (k, v) in metadata {
        req.metadata_mut().insert(*k, v.parse().expect("value"));
    }
    methods::tokenize(registry, Duration::from_secs(20), req).await
}

fn hits<T>(r: &tonic::Response<T>) -> Option<&str> {
    r.metadata()
        .get("x-sidecar-cache-hits")
        .and_then(|v| v.to_str().ok())
}

/// Calls until the model's digest is known and its answers are cached.
async fn warm(registry: &Arc<crate::registry::Registry>, id: &str) {
    let start = std::time::Instant::now();
    loop {
        let r = tokenize(registry, id, "warm").await.expect("served");
        if hits(&r) == Some("1") {
            return;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "never cached");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_outlives_its_leaders_short_deadline_and_sees_no_other_request_id() {
    let Rig { _dir, registry } = rig(1000);
    let registry = Arc::new(registry);
    let h = registry.add(spec("ok-lead", 10, true)).expect("add");
    let pid = wait_for(&h, "READY", |s| s.state == State::Ready).await.pid;
    warm(&registry, "ok-lead").await;
    // The leader gives itself 100 ms; the fake answers after 500.
    let leader = {
        let registry = registry.clone();
        tokio::spawn(async move {
            tokenize_with(
                &registry,
                "ok-lead",
                "slow:same",
                &[("grpc-timeout", "100m"), ("x-request-id", "leader-1")],
            )
            .await
        })
    };
    let start = std::time::Instant::now();
    while registry.shared().cache.flights.is_empty() {
        assert!(start.elapsed() < Duration::from_secs(5), "the leader flies");
        tokio::task::yield_now().await;
    }
    let shared_before = h.info().cache.expect("stats").shared;
    let follower = tokenize_with(
        &registry,
        "ok-lead",
        "slow:same",
        &[("x-request-id", "follower-2")],
    )
    .await
    .expect("the follower runs the call itself after the leader's deadline");
    assert_eq!(follower.into_inner().tokens, b"same".map(i32::from));
    let err = leader.await.expect("joined").expect_err("its own deadline");
    assert_eq!(err.code(), tonic::Code::DeadlineExceeded, "{err:?}");
    assert!(err.message().contains("leader-1"), "{err:?}");
    assert!(
        h.info().cache.expect("stats").shared > shared_before,
        "it followed first"
    );
    assert_eq!(h.status().pid, pid, "no crash");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_no_store_answer_is_not_kept() {
    let Rig { _dir, registry } = rig(1000);
    let registry = Arc::new(registry);
    let h = registry.add(spec("ok-nostore", 10, true)).expect("add");
    wait_for(&h, "READY", |s| s.state == State::Ready).await;
    warm(&registry, "ok-nostore").await;
    let r = tokenize_with(
        &registry,
        "ok-nostore",
        "fresh",
        &[("cache-control", "private, No-Store")],
    )
    .await
    .expect("served");
    assert_eq!(hits(&r), Some("0"));
    let r = tokenize(&registry, "ok-nostore", "fresh")
        .await
        .expect("served");
    assert_eq!(hits(&r), Some("0"), "nothing was kept");
    let r = tokenize(&registry, "ok-nostore", "fresh")
        .await
        .expect("served");
    assert_eq!(hits(&r), Some("1"), "a normal call's answer is kept");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identical_calls_of_two_client_classes_do_not_share_a_flight() {
    let Rig { _dir, registry } = super::rig_with(1000, |c| {
        c.traffic = toml::from_str("[classes.etl]\nmatch = [\"token:etl\"]\n").expect("traffic");
    });
    let registry = Arc::new(registry);
    let h = registry.add(spec("ok-class", 10, true)).expect("add");
    wait_for(&h, "READY", |s| s.state == State::Ready).await;
    warm(&registry, "ok-class").await;
    let before = h.info().cache.expect("stats").shared;
    let call = |who: crate::auth::Identity| {
        let registry = registry.clone();
        tokio::spawn(async move {
            let mut req = tonic::Request::new(TokenizeRequest {
                model_id: "ok-class".into(),
                text: "slow:both".into(),
                ..Default::default()
            });
            req.extensions_mut().insert(who);
            methods::tokenize(&registry, Duration::from_secs(20), req).await
        })
    };
    let etl = call(crate::auth::Identity::Token("etl".into()));
    let start = std::time::Instant::now();
    while registry.shared().cache.flights.is_empty() {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "the first call flies"
        );
        tokio::task::yield_now().await;
    }
    let other = call(crate::auth::Identity::Anonymous);
    let same_class = call(crate::auth::Identity::Token("etl".into()));
    for c in [etl, other, same_class] {
        let r = c.await.expect("joined").expect("served");
        assert_eq!(r.into_inner().tokens, b"both".map(i32::from));
    }
    assert_eq!(
        h.info().cache.expect("stats").shared - before,
        1,
        "only the call of the same class followed"
    );
}
