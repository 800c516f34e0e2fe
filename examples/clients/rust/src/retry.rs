//! Which codes to retry and how long to wait (the table is in
//! `examples/clients/README.md`), and the `errors` example that meets each
//! row live.

use std::future::Future;
use std::time::Duration;

use sidecar_proto::v1::text_service_client::TextServiceClient;
use sidecar_proto::v1::{GenerateRequest, TokenizeRequest};
use tokio::time::Instant;
use tonic::{Code, Status};

use crate::conn::{Call, code_name, connect, show};

/// The response metadata of a rate-limited call: whole milliseconds to
/// wait (at least 1).
pub(crate) const RETRY_AFTER_MS: &str = "retry-after-ms";

/// UNAVAILABLE (loading, restarting, draining, a worker died mid-call, the
/// connection dropped) is worth another try; RESOURCE_EXHAUSTED only when
/// waiting cures it: a rate limit (`retry-after-ms`) or a full queue (the
/// supervisor's message says so), not a memory budget, an answer too
/// large or a store quota, which fail the same way every time.
pub(crate) fn retryable(s: &Status) -> bool {
    match s.code() {
        Code::Unavailable => true,
        Code::ResourceExhausted => {
            retry_after(s).is_some()
                || ["queue full", "calls waiting"]
                    .iter()
                    .any(|q| s.message().contains(q))
        }
        _ => false,
    }
}

/// The server's `retry-after-ms`, when the call was rate limited.
pub(crate) fn retry_after(s: &Status) -> Option<Duration> {
    let ms: u64 = s
        .metadata()
        .get(RETRY_AFTER_MS)?
        .to_str()
        .ok()?
        .parse()
        .ok()?;
    (ms > 0).then(|| Duration::from_millis(ms))
}

/// Exponential backoff with full jitter; `retry-after-ms` is waited exactly.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Policy {
    pub(crate) attempts: u32,
    pub(crate) base: Duration,
    pub(crate) cap: Duration,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            attempts: 5,
            base: Duration::from_millis(100),
            cap: Duration::from_secs(5),
        }
    }
}

/// What is reported before each wait.
#[derive(Debug)]
pub(crate) struct Attempt {
    pub(crate) number: u32,
    pub(crate) code: Code,
    pub(crate) message: String,
    pub(crate) wait: Duration,
    pub(crate) retry_after: Option<Duration>,
}

/// Calls `f` until it succeeds, fails with a code not worth retrying, runs
/// out of attempts, or the wait would outlive `end`.
pub(crate) async fn with_retry<T, F, Fut>(
    policy: Policy,
    end: Instant,
    mut f: F,
    mut on_retry: impl FnMut(&Attempt),
) -> Result<T, Status>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Status>>,
{
    let mut number = 0;
    loop {
        let err = match f().await {
            Ok(v) => return Ok(v),
            Err(e) => e,
        };
        number += 1;
        if !retryable(&err) || number >= policy.attempts {
            return Err(err);
        }
        let after = retry_after(&err);
        let wait = after.unwrap_or_else(|| {
            let ceiling = policy
                .base
                .saturating_mul(1 << (number - 1).min(16))
                .min(policy.cap);
            ceiling.mul_f64(fastrand::f64())
        });
        if Instant::now() + wait >= end {
            return Err(err); // waiting would outlive the deadline
        }
        on_retry(&Attempt {
            number,
            code: err.code(),
            message: err.message().to_owned(),
            wait,
            retry_after: after,
        });
        tokio::time::sleep(wait).await;
    }
}

#[derive(Debug, clap::Args)]
pub(crate) struct ErrorsArgs {
    /// A TEXT generation model.
    #[arg(long, default_value = "smollm2")]
    model: String,
    /// Tokenize calls sent back to back to meet the rate limit.
    #[arg(long, default_value_t = 4)]
    burst: u32,
    /// An address nothing listens on (UNAVAILABLE).
    #[arg(long, default_value = "127.0.0.1:1")]
    closed: String,
}

fn row(label: &str, s: &Status) {
    let extra = retry_after(s)
        .map(|d| format!(" retry-after-ms={}", d.as_millis()))
        .unwrap_or_default();
    let retry = if retryable(s) { "yes" } else { "no" };
    println!(
        "{label}: {} retry={retry}{extra}: {}",
        code_name(s.code()),
        s.message()
    );
}

pub(crate) async fn errors(target: &str, call: &Call, a: ErrorsArgs) -> Result<(), String> {
    let mut text = TextServiceClient::new(connect(target).await?);
    let too_long = GenerateRequest {
        model_id: a.model.clone(),
        prompt: "Hi".into(),
        max_tokens: 1_000_000,
        ..Default::default()
    };
    let unknown = TokenizeRequest {
        model_id: "no-such-model".into(),
        text: "x".into(),
        ..Default::default()
    };
    let slow = GenerateRequest {
        model_id: a.model.clone(),
        prompt: "Count to one hundred:".into(),
        max_tokens: 200,
        ..Default::default()
    };
    let short = Some(Duration::from_millis(50));
    // These rows as any caller; only the burst below as `--client-id`, the
    // rate-limited class (a 200-token Generate costs more than its burst).
    let anyone = call.anonymous();
    let r1 = anyone
        .within(text.generate(anyone.request(too_long).map_err(|e| show(&e))?))
        .await;
    let r2 = anyone
        .within(text.tokenize(anyone.request(unknown).map_err(|e| show(&e))?))
        .await;
    let r3 = anyone
        .within(text.generate(anyone.request_within(slow, short).map_err(|e| show(&e))?))
        .await;
    for (label, r) in [
        ("invalid argument", r1.err()),
        ("unknown model", r2.err()),
        ("deadline", r3.err()),
    ] {
        match r {
            Some(s) => row(label, &s),
            None => return Err(format!("{label}: the call succeeded")),
        }
    }

    let mut retries = 0u32;
    let mut honoured = 0u32;
    for n in 0..a.burst {
        let req = TokenizeRequest {
            model_id: a.model.clone(),
            text: format!("call {n}"),
            ..Default::default()
        };
        let policy = Policy {
            attempts: 8,
            ..Policy::default()
        };
        with_retry(
            policy,
            call.end(),
            || {
                let mut c = text.clone();
                let r = call.request(req.clone());
                call.within(async move { c.tokenize(r?).await })
            },
            |at| {
                retries += 1;
                if at.retry_after.is_some_and(|d| at.wait >= d) {
                    honoured += 1;
                }
                println!(
                    "  retry {} after {}: retry-after-ms={}, waiting {} ms",
                    at.number,
                    code_name(at.code),
                    at.retry_after
                        .map_or("none".into(), |d| d.as_millis().to_string()),
                    at.wait.as_millis()
                );
            },
        )
        .await
        .map_err(|e| show(&e))?;
    }
    println!(
        "rate limit: {0}/{0} calls succeeded, {retries} retries, {honoured} after waiting the server's retry-after-ms",
        a.burst
    );

    // Nothing listens: connecting is lazy so that each attempt fails
    // UNAVAILABLE and the backoff grows.
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", a.closed))
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_secs(2))
        .connect_lazy();
    let closed = TextServiceClient::new(channel);
    let started = Instant::now();
    let mut waits = Vec::new();
    let policy = Policy {
        attempts: 4,
        base: Duration::from_millis(50),
        ..Policy::default()
    };
    let r = with_retry(
        policy,
        Instant::now() + Duration::from_secs(10),
        || {
            let mut c = closed.clone();
            let r = call.request_within(TokenizeRequest::default(), Some(Duration::from_secs(2)));
            call.within(async move { c.tokenize(r?).await })
        },
        |at| waits.push(at.wait.as_millis().to_string()),
    )
    .await;
    match r {
        Err(s) if s.code() == Code::Unavailable => println!(
            "unavailable: {} after {} attempts, backoff {} ms, {:.1} s",
            code_name(s.code()),
            waits.len() + 1,
            waits.join(", "),
            started.elapsed().as_secs_f64()
        ),
        other => return Err(format!("a closed port answered {other:?}")),
    }
    Ok(())
}
