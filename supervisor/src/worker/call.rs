//! One call to a worker: admission (bounded queue), waiting for READY
//! within the deadline, the request over the channel, and its answers;
//! on the deadline, cancel and, if the worker does not stop, kill.

use std::time::{Duration, Instant};

use super::{Command, Conn, WorkerHandle};
use crate::error::Error;
use crate::lifecycle::{KillReason, State};
use crate::traffic::{FrameLimit, Permit, Ticket};
use ipc::{Flags, Kind};
use prost::Message;
use sidecar_proto::worker::{Cancel, WorkerError, WorkerRequest, WorkerResponse};

/// Answers of one call, in order; ends after the worker's last frame.
#[derive(Debug)]
pub struct CallStream {
    stream: Option<ipc::ResponseStream>,
    conn: Conn,
    handle: WorkerHandle,
    deadline: Instant,
    done: bool,
    /// Time the call spent in the supervisor before reaching the worker.
    pub queued: Duration,
    /// The caller's request id.
    pub request_id: String,
    /// The caller (`auth::Identity`), for error messages' request line.
    pub client: String,
    /// The request's hash while it is in flight for the quarantine.
    flight: Option<u64>,
    /// The caller's client class.
    class: usize,
    _permit: Permit,
    /// The shared-memory regions the call uses, held until it ends.
    _regions: crate::shm::Held,
}

impl Drop for CallStream {
    fn drop(&mut self) {
        // Not answered yet (the client left, or its deadline passed): the
        // worker may still be working on it, and crash on it. It stays
        // recorded for `cancel_grace`, the time the worker has to stop; a
        // call whose worker died stays until the actor has seen the death
        // (`Quarantine::died` takes the worker's calls).
        let Some(hash) = self.flight.take() else {
            return;
        };
        if self.conn.exit.borrow().is_some() || self.conn.chan.failure().is_some() {
            return;
        }
        let (quarantine, pid) = (self.handle.quarantine.clone(), self.conn.pid);
        let grace = self.handle.shared.config.deadlines.cancel_grace;
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(async move {
                    tokio::time::sleep(grace).await;
                    quarantine.leave(pid, hash);
                });
            }
            Err(_) => quarantine.leave(pid, hash),
        }
    }
}

impl WorkerHandle {
    /// [`WorkerHandle::call_as`] for an anonymous caller at normal
    /// priority, charged the body's cost.
    pub async fn call(&self, req: WorkerRequest, deadline: Instant) -> Result<CallStream, Error> {
        let ticket = Ticket {
            identity: crate::auth::Identity::Anonymous,
            priority: crate::traffic::Priority::Normal,
            cost: req.body.as_ref().map_or(1, crate::traffic::cost),
        };
        self.call_as(req, deadline, ticket, crate::shm::Held::default())
            .await
    }

    /// Charges `identity`'s class `cost` against its rate limit on this
    /// model (0: nothing); over it, refused at once and counted. Returns
    /// the class.
    pub fn charge(&self, identity: &crate::auth::Identity, cost: u32) -> Result<usize, Error> {
        let class = self.traffic.classes.of(identity);
        self.traffic.spend(class, cost).inspect_err(|e| {
            self.shared.metrics.reject(
                &self.spec.id,
                match e {
                    Error::RateLimited { .. } => "rate_limited",
                    _ => "over_burst",
                },
            );
        })?;
        Ok(class)
    }

    /// Sends `req` to the model's worker: charges the caller's class its
    /// cost (over its rate: refused at once), waits for a slot in the
    /// model's fair queue, then for READY, all within `deadline`. `held`:
    /// the shared-memory regions `req.regions` names (held in use for the
    /// call); their descriptors go to this worker process the first time
    /// it meets them (`shm::attach`).
    pub async fn call_as(
        &self,
        mut req: WorkerRequest,
        deadline: Instant,
        ticket: Ticket,
        held: crate::shm::Held,
    ) -> Result<CallStream, Error> {
        let arrived = Instant::now();
        let id = &self.spec.id;
        let metrics = &self.shared.metrics;
        if self.is_draining() {
            metrics.reject(id, "draining");
            return Err(Error::Unavailable(format!(
                "model {id:?} is draining: it admits no new calls"
            )));
        }
        let class = self.charge(&ticket.identity, ticket.cost)?;
        let permit = self
            .traffic
            .enter(class, ticket.priority, deadline)
            .await
            .map_err(|(e, reason)| {
                metrics.reject(id, reason);
                e
            })?;
        let conn = self.ready_conn(deadline).await.inspect_err(|e| {
            metrics.reject(
                id,
                match e {
                    Error::ResourceExhausted(_) => "memory",
                    Error::DeadlineExceeded(_) => "deadline",
                    Error::FailedPrecondition(_) => "failed",
                    _ => "unavailable",
                },
            );
        })?;
        if let Ok(mut used) = self.last_used.lock() {
            *used = Some(crate::clock::now_ms());
        }
        req.deadline_unix_ms = crate::clock::now_ms()
            + deadline
                .saturating_duration_since(Instant::now())
                .as_millis() as i64;
        // A request refused for crashing workers is refused before it is
        // sent. Only then is the body hashed on its own (a copy); otherwise
        // its hash is taken from the ring below, where it is written anyway.
        // Not quarantined (`quarantine::applies`): a vision stream's
        // opening (its poison is in its frames, not in the opening every
        // camera with the same settings shares), nor a request naming
        // regions (the bytes are not in the request: its hash would cover
        // names, offsets and sizes only, blame other callers of the same
        // window and let the culprit escape by shifting its offset).
        let quarantined = super::quarantine::applies(&req);
        if quarantined && self.quarantine.any_refused() {
            let body = WorkerRequest {
                body: req.body.clone(),
                ..Default::default()
            };
            if let Err(why) = self
                .quarantine
                .check(self.quarantine.hash(&body.encode_to_vec()))
            {
                metrics.reject(id, "quarantined");
                return Err(Error::InvalidArgument(format!("model {id:?}: {why}")));
            }
        }
        // Descriptors first, then the request naming them, in order on this
        // worker's channel. A call without regions takes no lock.
        let attached = conn.regions.clone();
        let order = if held.is_empty() {
            None
        } else {
            Some(attached.prepare(&held, &mut req.regions).await?)
        };
        // The request id and deadline come first in the encoding; the body
        // (the method and its fields) is the rest.
        let head = WorkerRequest {
            request_tag: req.request_tag.clone(),
            cache_partition: req.cache_partition.clone(),
            regions: req.regions.clone(),
            deadline_unix_ms: req.deadline_unix_ms,
            body: None,
        }
        .encoded_len();
        let mut hash = 0;
        // Encoded straight into the ring: request tensors are copied once
        // into the channel.
        let stream = conn
            .chan
            .request_with(req.encoded_len(), |buf| {
                // The buffer has exactly the encoded length.
                let _ = req.encode(&mut &mut *buf);
                hash = self.quarantine.hash(&buf[head.min(buf.len())..]);
            })
            .await
            .map_err(|e| self.channel_error(&conn, e))?;
        // The REQUEST frame carrying `attach = true` is written: the worker
        // holds those regions from now on.
        if let Some(order) = order {
            order.commit();
        }
        if quarantined {
            self.quarantine.enter(conn.pid, hash);
        }
        Ok(CallStream {
            stream: Some(stream),
            conn,
            handle: self.clone(),
            deadline,
            done: false,
            queued: arrived.elapsed(),
            request_id: req.request_tag,
            client: String::new(),
            flight: quarantined.then_some(hash),
            class,
            _permit: permit,
            _regions: held,
        })
    }

    /// The READY worker, waiting within the deadline for a load (lazy or
    /// first) or for a restart (the backoff after a death, then the new
    /// worker's load), as a production server holds a call while its
    /// backend comes back instead of failing it.
    async fn ready_conn(&self, deadline: Instant) -> Result<Conn, Error> {
        let id = &self.spec.id;
        let mut status = self.status.clone();
        let mut conn = self.conn.clone();
        let mut asked = false;
        // The model was coming back from a worker's death while this call
        // waited: a deadline that passes says so.
        let mut restarting = false;
        loop {
            let state = status.borrow().state;
            match state {
                State::Ready => {
                    // A worker already dead (reaped, or its channel closed)
                    // that the actor has not withdrawn yet is not used: the
                    // call would fail at once although it never reached a
                    // worker. READY without a live connection: RESTARTING
                    // follows.
                    if let Some(c) = conn.borrow().clone()
                        && c.exit.borrow().is_none()
                        && c.chan.failure().is_none()
                    {
                        return Ok(c);
                    }
                    restarting = true;
                }
                // The load this call asked for was refused for memory.
                State::Idle
                    if asked && status.borrow().last_error_code == super::REFUSED_MEMORY =>
                {
                    return Err(Error::ResourceExhausted(status.borrow().last_error.clone()));
                }
                State::Idle => {
                    asked = true;
                    let _ = self.cmds.send(Command::EnsureLoaded).await;
                }
                State::Loading => {}
                State::Restarting => restarting = true,
                State::Draining => {
                    return Err(Error::Unavailable(format!("model {id:?} is draining")));
                }
                State::Failed => {
                    let last = status.borrow().last_error.clone();
                    return Err(Error::FailedPrecondition(format!(
                        "model {id:?} is FAILED: {last}"
                    )));
                }
                State::Unloading | State::Stopped => {
                    return Err(Error::Unavailable(format!("model {id:?} is unloading")));
                }
            }
            let changed = tokio::time::timeout_at(deadline.into(), async {
                tokio::select! {
                    r = status.changed() => r.is_ok(),
                    r = conn.changed() => r.is_ok(),
                }
            })
            .await;
            match changed {
                Err(_) if restarting => {
                    let s = status.borrow();
                    return Err(Error::DeadlineExceeded(format!(
                        "model {id:?}: deadline passed while the model was restarting (now {}, {} restarts) after its worker ended: {}",
                        s.state.as_str(),
                        s.restarts,
                        s.last_error
                    )));
                }
                Err(_) => {
                    return Err(Error::DeadlineExceeded(format!(
                        "model {id:?}: deadline passed while the model was loading"
                    )));
                }
                Ok(false) => return Err(Error::Unavailable(format!("model {id:?} is unloading"))),
                Ok(true) => {}
            }
        }
    }

    /// What a channel failure means for the caller: a worker the guard
    /// (or the kernel's OOM killer) killed for memory is RESOURCE_EXHAUSTED
    /// with the figures; any other death UNAVAILABLE.
    pub(super) fn channel_error(&self, conn: &Conn, e: ipc::Error) -> Error {
        let died = matches!(
            e,
            ipc::Error::PeerGone | ipc::Error::Protocol(_) | ipc::Error::Corrupt(_)
        );
        let error = self.channel_error_message(conn, e);
        if died {
            Error::WorkerDied {
                pid: conn.pid,
                error: Box::new(error),
            }
        } else {
            error
        }
    }

    fn channel_error_message(&self, conn: &Conn, e: ipc::Error) -> Error {
        match e {
            ipc::Error::PeerGone => {
                let id = &self.spec.id;
                let pid = conn.pid;
                let exit = *conn.exit.borrow();
                let how = exit.map(|x| format!(": {x}")).unwrap_or_default();
                let status = self.status();
                if let Some((p, reason, note)) = status.kill_note
                    && p == pid
                    && matches!(reason, KillReason::Oom | KillReason::Vram)
                {
                    return Error::ResourceExhausted(format!(
                        "model {id:?}: its worker (pid {pid}) was killed (reason {}): {note}",
                        reason.as_str()
                    ));
                }
                let oom_kills = crate::memory::host::sample().cgroup_oom_kills;
                if exit.is_some_and(|x| x.signal == Some(libc::SIGKILL))
                    && oom_kills > status.oom_kills_at_start
                {
                    return Error::ResourceExhausted(format!(
                        "model {id:?}: its worker (pid {pid}) was killed by the kernel's OOM killer{how}"
                    ));
                }
                Error::Unavailable(format!(
                    "model {id:?}: its worker (pid {pid}) died mid-call{how}"
                ))
            }
            ipc::Error::TooLarge { payload, max, .. } => Error::InvalidArgument(format!(
                "model {:?}: the request is {payload} bytes; its worker's channel carries at most {max} (workers.channel_bytes, max_message_bytes)",
                self.spec.id
            )),
            ipc::Error::Protocol(m) | ipc::Error::Corrupt(m) => Error::Unavailable(format!(
                "model {:?}: its worker (pid {}) broke the channel protocol and is being replaced: {m}",
                self.spec.id, conn.pid
            )),
            other => Error::Internal(format!("model {:?}: channel: {other}", self.spec.id)),
        }
    }
}

impl CallStream {
    /// The model this call went to.
    pub fn model_id(&self) -> &str {
        &self.handle.spec.id
    }

    /// The frame limit of this call's client class (a vision stream's
    /// frames cost 1 each); `None`: not rate limited.
    pub fn frame_limit(&self) -> Option<FrameLimit> {
        self.handle.traffic.frames(self.class)
    }

    /// The metrics this call records into.
    pub fn metrics(&self) -> &std::sync::Arc<crate::metrics::Metrics> {
        &self.handle.shared.metrics
    }

    /// Sends another request frame on this call (a streaming call's next
    /// input), encoded straight into the ring.
    pub async fn send_more(&self, req: &WorkerRequest) -> Result<(), Error> {
        let Some(stream) = self.stream.as_ref() else {
            return Err(Error::Internal("the call has ended".into()));
        };
        stream
            .send_with(Kind::Request, Flags::NONE, req.encoded_len(), |mut buf| {
                // The buffer has exactly the encoded length.
                let _ = req.encode(&mut buf);
            })
            .await
            .map_err(|e| self.handle.channel_error(&self.conn, e))
    }

    /// [`CallStream::send_more`] for a frame naming shared-memory regions
    /// (`held`, resolved by the caller, `req.regions` their uses): the
    /// descriptors this worker process has not met go first.
    pub async fn send_more_held(
        &self,
        mut req: WorkerRequest,
        held: &crate::shm::Held,
    ) -> Result<(), Error> {
        if held.is_empty() {
            return self.send_more(&req).await;
        }
        let attached = self.conn.regions.clone();
        let order = attached.prepare(held, &mut req.regions).await?;
        self.send_more(&req).await?;
        // Written: the worker holds the regions it attached from now on.
        order.commit();
        Ok(())
    }

    /// The next answer; `None` after the last. Errors end with the
    /// request id.
    pub async fn next(&mut self) -> Option<Result<WorkerResponse, Error>> {
        let answer = self.next_untagged().await?;
        Some(answer.map_err(|e| e.with_request_id(&self.request_id, &self.client)))
    }

    async fn next_untagged(&mut self) -> Option<Result<WorkerResponse, Error>> {
        if self.done {
            return None;
        }
        let stream = self.stream.as_mut()?;
        // Checked first: a fast worker keeps frames waiting, and a ready
        // frame would otherwise win over a deadline already past.
        let next = if Instant::now() >= self.deadline {
            Err(())
        } else {
            tokio::time::timeout_at(self.deadline.into(), stream.next())
                .await
                .map_err(|_| ())
        };
        let frame = match next {
            Err(()) => {
                self.done = true;
                self.cancel_after_deadline();
                return Some(Err(Error::DeadlineExceeded(format!(
                    "model {:?}: deadline passed during the call",
                    self.handle.spec.id
                ))));
            }
            Ok(None) => {
                self.done = true;
                return None;
            }
            Ok(Some(Err(e))) => {
                self.done = true;
                // Give the reaper a moment so the message can say how it died.
                let mut exit = self.conn.exit.clone();
                let _ =
                    tokio::time::timeout(Duration::from_secs(1), exit.wait_for(|e| e.is_some()))
                        .await;
                return Some(Err(self.handle.channel_error(&self.conn, e)));
            }
            Ok(Some(Ok(f))) => f,
        };
        if frame.flags.is_end() || frame.kind == Kind::Error {
            // The worker is done with it: not in flight in a later crash.
            self.done = true;
            if let Some(hash) = self.flight.take() {
                self.handle.quarantine.leave(self.conn.pid, hash);
            }
        }
        Some(match frame.kind {
            Kind::Response => WorkerResponse::decode(frame.payload)
                .map_err(|e| Error::Internal(format!("undecodable worker answer: {e}"))),
            Kind::Error => {
                self.done = true;
                match WorkerError::decode(frame.payload) {
                    Ok(e) => Err(Error::from_worker(e.code, e.message)),
                    Err(e) => Err(Error::Internal(format!("undecodable worker error: {e}"))),
                }
            }
            other => Err(Error::Internal(format!(
                "unexpected {other:?} frame from the worker"
            ))),
        })
    }

    /// Tells the worker to stop this request; if it has not answered within
    /// the grace period, kills it (reason `timeout`). Runs in the
    /// background: the caller gets DEADLINE_EXCEEDED at once.
    fn cancel_after_deadline(&mut self) {
        let handle = self.handle.clone();
        let pid = self.conn.pid;
        let grace = handle.shared.config.deadlines.cancel_grace;
        let cancel = Cancel {
            reason: "deadline".into(),
        }
        .encode_to_vec();
        // Finish the exchange in the background.
        let Some(mut stream) = self.stream.take() else {
            return;
        };
        tokio::spawn(async move {
            let _ = stream.send(Kind::Cancel, Flags::NONE, &cancel).await;
            // Stopped: its last frame came, or the worker is gone anyway
            // (its death is the actor's to report, not a timeout).
            let stopped = tokio::time::timeout(grace, async {
                while let Some(frame) = stream.next().await {
                    match frame {
                        Ok(f) if f.flags.is_end() => return true,
                        Ok(_) => {}
                        Err(_) => return true,
                    }
                }
                true
            })
            .await;
            if !matches!(stopped, Ok(true)) {
                tracing::warn!(model = %handle.spec.id, pid, "worker did not stop within {grace:?} of a cancel");
                let _ = handle
                    .cmds
                    .send(Command::Kill {
                        pid,
                        reason: KillReason::Timeout,
                        note: format!("did not stop within {grace:?} of a cancel"),
                    })
                    .await;
            }
        });
    }
}
