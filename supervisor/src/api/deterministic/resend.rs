//! The one re-send of a deterministic call whose worker died mid-call:
//! after the actor dealt with the death and a new worker is READY, at
//! `x-priority: high`, not charged to the rate limit again.

use std::sync::Arc;
use std::time::{Duration, Instant};

use sidecar_proto::worker::worker_request;
use tonic::metadata::MetadataMap;
use tonic::{Extensions, Request};

use crate::cache::{Answer, Outcome};
use crate::config::Family;
use crate::error::Error;
use crate::registry::Registry;
use crate::worker::WorkerHandle;

/// One execution: what `api::call_worker` needs, and a copy of the body
/// for a re-send.
#[derive(Debug)]
pub(super) struct Exec {
    pub(super) registry: Arc<Registry>,
    pub(super) family: Family,
    pub(super) default: Duration,
    pub(super) metadata: MetadataMap,
    pub(super) extensions: Extensions,
    pub(super) model_id: String,
    pub(super) handle: Option<WorkerHandle>,
    pub(super) deadline: Instant,
    pub(super) body: worker_request::Body,
    pub(super) collect: bool,
}

/// Runs `exec`; a worker death mid-call re-sends it once, within the
/// deadline, to the new worker, at `x-priority: high` (first within its
/// class) and not charged to the rate limit again: after a self-raised
/// crash through the model's gate (one re-sent call at a time, held only
/// around the re-sent attempt), and a request the quarantine refuses
/// after its second crash is INVALID_ARGUMENT.
pub(super) async fn execute(exec: &Exec) -> Result<Outcome, Error> {
    let (pid, first) = match once(exec, false).await {
        Err(Error::WorkerDied { pid, error }) => (pid, Error::WorkerDied { pid, error }),
        other => return other,
    };
    let Some(handle) = exec.handle.clone() else {
        return Err(first);
    };
    let Some(self_raised) = handle.death_seen(pid, exec.deadline).await else {
        return Err(unseen(first, &exec.model_id, pid, exec.deadline));
    };
    handle.wait_replaced(pid, exec.deadline).await?;
    let _gate = if self_raised {
        let gate = handle.retry_gate(exec.deadline).await?;
        // Another re-send through the gate may have crashed that worker.
        handle.wait_replaced(pid, exec.deadline).await?;
        Some(gate)
    } else {
        None
    };
    handle.note_retry();
    tracing::info!(model = %exec.model_id, pid, self_raised, "re-sending a deterministic call after its worker died");
    match once(exec, true).await {
        Ok(mut outcome) => {
            outcome.retried = true;
            Ok(outcome)
        }
        Err(Error::WorkerDied { pid, error }) => {
            // Crashed twice: the quarantine may refuse it now.
            if handle.death_seen(pid, exec.deadline).await.is_some()
                && let Some(why) = handle.refusal(&exec.body)
            {
                return Err(Error::InvalidArgument(format!(
                    "model {:?}: {why}",
                    exec.model_id
                )));
            }
            Err(Error::WorkerDied { pid, error })
        }
        Err(e) => Err(e),
    }
}

/// What a call whose worker `pid` died gets when the death was not handled
/// in time for a re-send: DEADLINE_EXCEEDED naming the wait once its
/// deadline has passed, else the death itself.
fn unseen(first: Error, model_id: &str, pid: u32, deadline: Instant) -> Error {
    if Instant::now() >= deadline {
        Error::DeadlineExceeded(format!(
            "model {model_id:?}: deadline passed while waiting for the death of its worker (pid {pid}) to be handled, to re-send the call"
        ))
    } else {
        first
    }
}

/// The metadata of one attempt: the time left of the caller's deadline;
/// a re-send is `x-priority: high` (served first within its class).
fn attempt_metadata(metadata: &MetadataMap, deadline: Instant, resent: bool) -> MetadataMap {
    let mut metadata = metadata.clone();
    let left = deadline.saturating_duration_since(Instant::now());
    if let Ok(v) = format!("{}m", left.as_millis().clamp(1, 99_999_999)).parse() {
        metadata.insert("grpc-timeout", v);
    }
    if resent {
        metadata.insert(
            crate::traffic::PRIORITY,
            tonic::metadata::MetadataValue::from_static("high"),
        );
    }
    metadata
}

/// One attempt: the call through `api::call_worker` (the queue, the
/// limits) with the time left of the caller's deadline; a re-send
/// (`resent`) is not charged to the class's rate limit again.
async fn once(exec: &Exec, resent: bool) -> Result<Outcome, Error> {
    let metadata = attempt_metadata(&exec.metadata, exec.deadline, resent);
    let mut extensions = exec.extensions.clone();
    if resent {
        extensions.insert(crate::traffic::Charged);
    }
    let req = Request::from_parts(metadata, extensions, exec.body.clone());
    let model_id = exec.model_id.clone();
    let mut call = crate::api::call_worker(&exec.registry, exec.family, exec.default, req, |b| {
        (model_id, b)
    })
    .await?;
    let queued = call.queued;
    let answer = if exec.collect {
        Answer::Generated(crate::api::text::collect(call).await?)
    } else {
        Answer::Body(crate::api::one_answer(&mut call).await?)
    };
    Ok(Outcome {
        answer,
        queued,
        retried: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_re_send_that_waits_past_its_deadline_says_so() {
        let died = || Error::WorkerDied {
            pid: 9,
            error: Box::new(Error::Unavailable("worker died".into())),
        };
        let e = unseen(died(), "m", 9, Instant::now());
        assert!(
            matches!(&e, Error::DeadlineExceeded(m) if m.contains("death of its worker (pid 9)")),
            "{e:?}"
        );
        let later = Instant::now() + Duration::from_secs(5);
        assert!(matches!(
            unseen(died(), "m", 9, later),
            Error::WorkerDied { .. }
        ));
    }

    #[test]
    fn a_re_send_is_served_first_within_its_class() {
        let mut md = MetadataMap::new();
        md.insert("x-priority", "low".parse().expect("value"));
        let later = Instant::now() + Duration::from_secs(5);
        let first = attempt_metadata(&md, later, false);
        assert_eq!(
            crate::traffic::Priority::of(&first).expect("valid"),
            crate::traffic::Priority::Low
        );
        let resent = attempt_metadata(&md, later, true);
        assert_eq!(
            crate::traffic::Priority::of(&resent).expect("valid"),
            crate::traffic::Priority::High
        );
        assert!(resent.get("grpc-timeout").is_some());
    }
}
