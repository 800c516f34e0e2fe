//! AdminService on the control socket: status, workers, restarts,
//! draining, log streaming and direct worker calls.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use prost::Message;
use sidecar_proto::v1::admin_service_server::AdminService;
use sidecar_proto::v1::{
    CallTimings, CallWorkerRequest, CallWorkerResponse, ChatRequest, DrainModelRequest,
    DrainModelResponse, EmbedRequest, GenerateRequest, GetStatusRequest, InferRequest,
    ListWorkersRequest, ListWorkersResponse, LogLine, ProcessBatchRequest, ReloadConfigRequest,
    ReloadConfigResponse, RestartWorkerRequest, RestartWorkerResponse, SandboxState,
    StatusResponse, StreamLogsRequest, TokenizeRequest, WorkerInfo, WorkerSandbox,
    call_worker_request, call_worker_response,
};
use sidecar_proto::worker::{
    WorkerError, WorkerRequest, WorkerResponse, worker_request, worker_response,
};
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crate::clock::now_ms;
use crate::config::Config;
use crate::error::Error;
use crate::lifecycle::State;
use crate::registry::Registry;

/// The AdminService implementation.
#[derive(Debug, Clone)]
pub struct AdminApi {
    /// Loaded models.
    pub registry: Arc<Registry>,
    /// Config.
    pub config: Arc<Config>,
    /// When the supervisor started.
    pub started: Instant,
    /// The config reloads (ReloadConfig, GetStatus's last reload).
    pub reloader: Arc<crate::reload::Reloader>,
}

/// The wire form of a worker's sandbox report.
fn sandbox_state(s: sidecar_proto::worker::Sandbox) -> SandboxState {
    SandboxState {
        applied: s.applied,
        missing: s.missing,
    }
}

/// The supervisor's own sandbox, read now: non-dumpable (so a process of
/// its uid cannot open its descriptors through `/proc`), and whom the
/// workers run as.
fn supervisor_sandbox(config: &Config) -> SandboxState {
    let mut s = SandboxState::default();
    match nix::sys::prctl::get_dumpable() {
        Ok(false) => s.applied.push("non-dumpable".into()),
        Ok(true) => s
            .missing
            .push("non-dumpable: PR_SET_DUMPABLE 0 did not hold".into()),
        Err(e) => s.missing.push(format!("non-dumpable: {e}")),
    }
    match config.workers.identity() {
        Some((uid, gid)) => s
            .applied
            .push(format!("workers run as uid {uid} gid {gid}")),
        None if nix::unistd::geteuid().is_root() => s.missing.push(
            "workers run as root, the supervisor's uid: set workers.uid and workers.gid".into(),
        ),
        None => s.applied.push(format!(
            "workers run as the supervisor's uid {} (not root)",
            nix::unistd::geteuid()
        )),
    }
    s
}

type Logs = Pin<Box<dyn Stream<Item = Result<LogLine, Status>> + Send>>;
type Calls = Pin<Box<dyn Stream<Item = Result<CallWorkerResponse, Status>> + Send>>;

#[tonic::async_trait]
impl AdminService for AdminApi {
    async fn get_status(
        &self,
        _: Request<GetStatusRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
        Ok(Response::new(StatusResponse {
            version: env!("CARGO_PKG_VERSION").into(),
            pid: std::process::id(),
            uptime_s: self.started.elapsed().as_secs(),
            ready: self.registry.not_ready().is_empty(),
            host: Some(self.registry.guard.host_proto()),
            gpu_monitoring: self.registry.guard.gpu_monitoring(),
            gpus: self.registry.guard.gpus_proto(),
            models: self.registry.list().iter().map(|h| h.info()).collect(),
            sandbox: Some(supervisor_sandbox(&self.config)),
            worker_sandboxes: self
                .registry
                .list()
                .iter()
                .filter_map(|h| {
                    let s = h.status();
                    (s.pid != 0).then(|| WorkerSandbox {
                        model_id: h.info().model_id,
                        pid: s.pid,
                        sandbox: s.sandbox.map(sandbox_state),
                    })
                })
                .collect(),
            last_reload: self.reloader.last(),
        }))
    }

    async fn reload_config(
        &self,
        req: Request<ReloadConfigRequest>,
    ) -> Result<Response<ReloadConfigResponse>, Status> {
        let client = crate::auth::Identity::of_call(&req);
        tracing::info!(%client, "ReloadConfig");
        let outcome = self
            .reloader
            .reload(&format!("ReloadConfig by {client}"))
            .await?;
        Ok(Response::new(ReloadConfigResponse {
            outcome: Some(outcome),
        }))
    }

    async fn list_workers(
        &self,
        _: Request<ListWorkersRequest>,
    ) -> Result<Response<ListWorkersResponse>, Status> {
        let workers = self
            .registry
            .list()
            .into_iter()
            .map(|h| {
                let info = h.info();
                let s = h.status();
                WorkerInfo {
                    model_id: info.model_id,
                    family: info.family,
                    pid: s.pid,
                    state: info.state,
                    started_unix_ms: s.started_unix_ms,
                    restarts: s.restarts,
                    last_kill_reason: info.last_kill_reason,
                    last_exit: s.last_exit,
                    memory: info.memory,
                    in_flight: info.in_flight,
                    queue_depth: info.queue_depth,
                    heartbeat_age_ms: if s.state == State::Ready {
                        (now_ms() - s.heartbeat_unix_ms).max(0) as u64
                    } else {
                        0
                    },
                    worker_version: s.worker_version,
                    sandbox: s.sandbox.map(sandbox_state),
                }
            })
            .collect();
        Ok(Response::new(ListWorkersResponse { workers }))
    }

    async fn restart_worker(
        &self,
        req: Request<RestartWorkerRequest>,
    ) -> Result<Response<RestartWorkerResponse>, Status> {
        let deadline = super::deadline(&req, self.config.deadlines.load, self.config.deadlines.max);
        let handle = self.registry.get(&req.into_inner().model_id)?;
        let before = handle.status().pid;
        handle.restart().await?;
        let mut rx = handle.clone();
        let _ = tokio::time::timeout_at(deadline.into(), async {
            loop {
                let s = rx.status();
                if matches!(s.state, State::Ready | State::Failed) && s.pid != before {
                    return;
                }
                if !rx.changed().await {
                    return;
                }
            }
        })
        .await;
        Ok(Response::new(RestartWorkerResponse {
            model: Some(handle.info()),
        }))
    }

    async fn drain_model(
        &self,
        req: Request<DrainModelRequest>,
    ) -> Result<Response<DrainModelResponse>, Status> {
        let deadline = super::deadline(&req, self.config.shutdown_grace, self.config.deadlines.max);
        let req = req.into_inner();
        let handle = self.registry.get(&req.model_id)?;
        if req.resume {
            handle.resume();
        } else {
            let state = handle.status().state;
            if state != State::Ready {
                return Err(Error::FailedPrecondition(format!(
                    "model {:?} is {state:?}: only a READY model drains",
                    req.model_id
                ))
                .into());
            }
            if req.wait {
                let left = deadline.saturating_duration_since(Instant::now());
                if !handle.drain(left).await {
                    return Err(Error::DeadlineExceeded(format!(
                        "model {:?} is DRAINING but calls were still in flight at the deadline",
                        req.model_id
                    ))
                    .into());
                }
            } else {
                handle.set_draining();
            }
        }
        Ok(Response::new(DrainModelResponse {
            model: Some(handle.info()),
        }))
    }

    type StreamLogsStream = Logs;

    async fn stream_logs(
        &self,
        req: Request<StreamLogsRequest>,
    ) -> Result<Response<Self::StreamLogsStream>, Status> {
        let req = req.into_inner();
        // Lines are kept by model id: an alias or "id@N" names its id.
        let model = match (!req.model_id.is_empty()).then_some(req.model_id) {
            Some(m) => Some(self.registry.get(&m)?.spec.id.clone()),
            None => None,
        };
        let book = &self.registry.shared().logs;
        // Subscribed before the history is read: no line falls between.
        let mut rx = book.subscribe();
        let tail = match req.tail {
            0 => 100,
            n => (n as usize).min(crate::logs::HISTORY),
        };
        let (history, next) = book.tail(model.as_deref(), tail);
        let (tx, out) = tokio::sync::mpsc::channel(256);
        tokio::spawn(async move {
            for line in history {
                if tx.send(Ok(line)).await.is_err() {
                    return;
                }
            }
            if !req.follow {
                return;
            }
            let mut dropped = 0u64;
            loop {
                tokio::select! {
                    got = rx.recv() => match got {
                        Ok((seq, mut line)) => {
                            if seq < next || model.as_deref().is_some_and(|m| m != line.model_id) {
                                continue;
                            }
                            line.dropped_before = std::mem::take(&mut dropped);
                            if tx.send(Ok(line)).await.is_err() {
                                return;
                            }
                        }
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => dropped += n,
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                    },
                    () = tx.closed() => return,
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(out),
        )))
    }

    type CallWorkerStream = Calls;

    async fn call_worker(
        &self,
        req: Request<CallWorkerRequest>,
    ) -> Result<Response<Self::CallWorkerStream>, Status> {
        let deadline =
            super::deadline(&req, self.config.deadlines.unary, self.config.deadlines.max);
        let request_id = super::request_id(&req, &self.registry.shared().request_ids);
        let client = crate::auth::Identity::of_call(&req).to_string();
        let req = req.into_inner();
        let handle = self.registry.get(&req.model_id)?;
        let model = req.model_id.clone();
        let body = match req.call {
            Some(call_worker_request::Call::Generate(g)) => {
                worker_request::Body::Generate(GenerateRequest {
                    model_id: model,
                    ..g
                })
            }
            Some(call_worker_request::Call::Chat(c)) => worker_request::Body::Chat(ChatRequest {
                model_id: model,
                ..c
            }),
            Some(call_worker_request::Call::Embed(e)) => {
                worker_request::Body::Embed(EmbedRequest {
                    model_id: model,
                    ..e
                })
            }
            Some(call_worker_request::Call::Tokenize(t)) => {
                worker_request::Body::Tokenize(TokenizeRequest {
                    model_id: model,
                    ..t
                })
            }
            Some(call_worker_request::Call::Vision(v)) => {
                worker_request::Body::VisionBatch(ProcessBatchRequest {
                    model_id: model,
                    ..v
                })
            }
            Some(call_worker_request::Call::Infer(i)) => {
                worker_request::Body::Infer(InferRequest {
                    model_id: model,
                    ..i
                })
            }
            // Answered only by workers built for tests (UNIMPLEMENTED
            // otherwise): passed through as it is.
            Some(call_worker_request::Call::SandboxProbe(p)) => {
                worker_request::Body::SandboxProbe(p)
            }
            None => return Err(Error::InvalidArgument("call must hold one request".into()).into()),
        };
        let wreq = WorkerRequest {
            request_tag: request_id.clone(),
            cache_partition: String::new(),
            regions: Vec::new(),
            deadline_unix_ms: now_ms()
                + deadline
                    .saturating_duration_since(Instant::now())
                    .as_millis() as i64,
            body: Some(body),
        };
        let sent = Instant::now();
        let mut stream = handle
            .call_direct(&wreq)
            .await
            .map_err(|e| e.with_request_id(&request_id, &client))?;
        let (tx, out) = tokio::sync::mpsc::channel(64);
        tokio::spawn(async move {
            let mut first = None;
            let mut frames = 0u32;
            loop {
                let next = tokio::time::timeout_at(deadline.into(), stream.next()).await;
                let frame = match next {
                    Err(_) => {
                        let e = Error::DeadlineExceeded(
                            "the worker did not finish before the deadline".into(),
                        );
                        let _ = tx
                            .send(Err(e.with_request_id(&request_id, &client).into()))
                            .await;
                        return;
                    }
                    Ok(None) => break,
                    Ok(Some(Err(e))) => {
                        let e = Error::Unavailable(format!("the worker's channel: {e}"));
                        let _ = tx
                            .send(Err(e.with_request_id(&request_id, &client).into()))
                            .await;
                        return;
                    }
                    Ok(Some(Ok(f))) => f,
                };
                frames += 1;
                first.get_or_insert_with(|| sent.elapsed());
                let end = frame.flags.is_end();
                let msg = match frame.kind {
                    ipc::Kind::Response => match WorkerResponse::decode(frame.payload) {
                        Ok(r) => direct_answer(r),
                        Err(e) => Err(Error::Internal(format!("undecodable worker answer: {e}"))),
                    },
                    ipc::Kind::Error => match WorkerError::decode(frame.payload) {
                        Ok(e) => Err(Error::from_worker(e.code, e.message)),
                        Err(e) => Err(Error::Internal(format!("undecodable worker error: {e}"))),
                    },
                    _ => continue,
                };
                let failed = msg.is_err();
                let msg = msg.map_err(|e| Status::from(e.with_request_id(&request_id, &client)));
                if let Ok(None) = msg {
                } else if tx.send(msg.map(|m| m.unwrap_or_default())).await.is_err() {
                    return;
                }
                if end || failed {
                    break;
                }
            }
            let done = CallWorkerResponse {
                msg: Some(call_worker_response::Msg::Done(CallTimings {
                    first_response_us: first.unwrap_or_default().as_micros() as u64,
                    total_us: sent.elapsed().as_micros() as u64,
                    frames,
                })),
            };
            let _ = tx.send(Ok(done)).await;
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(out),
        )))
    }
}

/// A worker's answer as a CallWorker message (`None`: an empty answer).
fn direct_answer(r: WorkerResponse) -> Result<Option<CallWorkerResponse>, Error> {
    use call_worker_response::Msg;
    let msg = match r.body {
        None => return Ok(None),
        Some(worker_response::Body::Text(t)) => Msg::Text(t),
        Some(worker_response::Body::Embed(e)) => Msg::Embed(e),
        Some(worker_response::Body::Tokenize(t)) => Msg::Tokenize(t),
        Some(worker_response::Body::VisionBatch(v)) => Msg::Vision(v),
        Some(worker_response::Body::Infer(i)) => Msg::Infer(i),
        Some(worker_response::Body::SandboxProbe(p)) => Msg::SandboxProbe(p),
        Some(other) => {
            return Err(Error::Internal(format!(
                "unexpected worker answer {other:?}"
            )));
        }
    };
    Ok(Some(CallWorkerResponse { msg: Some(msg) }))
}
