//! What a call re-sent after its worker's death needs from the model: to
//! know the actor has dealt with the death (the quarantine told, and
//! whether the crash was self-raised), a new worker, the gate that sends
//! re-sent calls one at a time after a self-raised crash, and whether the
//! quarantine now refuses the request.

use std::sync::atomic::Ordering;
use std::time::Instant;

use prost::Message;
use sidecar_proto::worker::{WorkerRequest, worker_request};
use tokio::sync::OwnedSemaphorePermit;

use super::WorkerHandle;
use crate::error::Error;
use crate::lifecycle::State;

impl WorkerHandle {
    /// Waits (until `deadline`) for the actor to deal with worker `pid`'s
    /// death: `Some(self_raised)`; `None` when the model is going away
    /// (unloaded, FAILED) or the deadline passed first. A worker stopped
    /// to free memory (the model back to IDLE) is not a crash.
    pub async fn death_seen(&self, pid: u32, deadline: Instant) -> Option<bool> {
        let mut rx = self.status.clone();
        let seen = tokio::time::timeout_at(
            deadline.into(),
            rx.wait_for(|s| {
                s.last_death.is_some_and(|d| d.0 == pid)
                    || matches!(
                        s.state,
                        State::Idle | State::Failed | State::Stopped | State::Unloading
                    )
            }),
        )
        .await;
        let s = match seen {
            Ok(Ok(s)) => s.clone(),
            _ => return None,
        };
        match s.last_death {
            Some((p, self_raised)) if p == pid => Some(self_raised),
            _ if s.state == State::Idle => Some(false),
            _ => None,
        }
    }

    /// Waits until a worker other than `pid` is READY (or the model is
    /// IDLE: the call loads it), within `deadline`.
    pub async fn wait_replaced(&self, pid: u32, deadline: Instant) -> Result<(), Error> {
        let id = &self.spec.id;
        let mut rx = self.status.clone();
        let s = tokio::time::timeout_at(
            deadline.into(),
            rx.wait_for(|s| {
                // READY with a worker whose death the actor has not seen
                // (another re-sent call may have crashed the next one).
                (s.state == State::Ready
                    && s.pid != pid
                    && s.last_death.is_none_or(|d| d.0 != s.pid))
                    || matches!(
                        s.state,
                        State::Idle | State::Failed | State::Stopped | State::Unloading
                    )
            }),
        )
        .await
        .map_err(|_| {
            Error::DeadlineExceeded(format!(
                "model {id:?}: deadline passed while its worker (pid {pid}) was being replaced"
            ))
        })?
        .map_err(|_| Error::Unavailable(format!("model {id:?} is unloading")))?
        .clone();
        match s.state {
            State::Ready | State::Idle => Ok(()),
            State::Failed => Err(Error::FailedPrecondition(format!(
                "model {id:?} is FAILED: {}",
                s.last_error
            ))),
            _ => Err(Error::Unavailable(format!("model {id:?} is unloading"))),
        }
    }

    /// The gate re-sent calls pass one at a time after a self-raised
    /// crash, so that a bystander is never in flight beside the culprit
    /// when it crashes the next worker.
    pub async fn retry_gate(&self, deadline: Instant) -> Result<OwnedSemaphorePermit, Error> {
        let id = &self.spec.id;
        tokio::time::timeout_at(deadline.into(), self.retry_gate.clone().acquire_owned())
            .await
            .map_err(|_| {
                Error::DeadlineExceeded(format!(
                    "model {id:?}: deadline passed while waiting to re-send the call after its worker crashed"
                ))
            })?
            .map_err(|_| Error::Unavailable(format!("model {id:?} is unloading")))
    }

    /// The quarantine's reason when it refuses a request with this body.
    /// A body naming regions is never refused (`quarantine::applies`).
    pub fn refusal(&self, body: &worker_request::Body) -> Option<String> {
        if crate::shm::resolve::uses_regions(body) {
            return None;
        }
        let encoded = WorkerRequest {
            body: Some(body.clone()),
            ..Default::default()
        }
        .encode_to_vec();
        self.quarantine.check(self.quarantine.hash(&encoded)).err()
    }

    /// The client class of `who` on this model (`crate::traffic`).
    pub fn class_of(&self, who: &crate::auth::Identity) -> usize {
        self.traffic.classes.of(who)
    }

    /// A call is re-sent after its worker died.
    pub fn note_retry(&self) {
        self.retries.fetch_add(1, Ordering::Relaxed);
        self.shared
            .metrics
            .retries
            .get_or_create(&crate::metrics::ModelLabel {
                model: self.spec.id.clone(),
            })
            .inc();
    }
}
