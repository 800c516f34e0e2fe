//! AdminService on the control socket: status, workers, restarts.
//! Draining, log streaming and direct worker calls are not served yet
//! (UNIMPLEMENTED, said so in the message).

use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use sidecar_proto::v1::admin_service_server::AdminService;
use sidecar_proto::v1::{
    CallWorkerRequest, CallWorkerResponse, DrainModelRequest, DrainModelResponse, GetStatusRequest,
    ListWorkersRequest, ListWorkersResponse, LogLine, RestartWorkerRequest, RestartWorkerResponse,
    StatusResponse, StreamLogsRequest, WorkerInfo,
};
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crate::config::Config;
use crate::error::Error;
use crate::registry::Registry;
use crate::worker::{State, now_ms};

/// The AdminService implementation.
#[derive(Debug, Clone)]
pub struct AdminApi {
    /// Loaded models.
    pub registry: Arc<Registry>,
    /// Config.
    pub config: Arc<Config>,
    /// When the supervisor started.
    pub started: Instant,
}

fn unimplemented(what: &str) -> Status {
    Error::Unimplemented(format!("{what} is not served yet on the control socket")).into()
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
                }
            })
            .collect();
        Ok(Response::new(ListWorkersResponse { workers }))
    }

    async fn restart_worker(
        &self,
        req: Request<RestartWorkerRequest>,
    ) -> Result<Response<RestartWorkerResponse>, Status> {
        let deadline = super::deadline(&req, self.config.deadlines.load);
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
        _: Request<DrainModelRequest>,
    ) -> Result<Response<DrainModelResponse>, Status> {
        Err(unimplemented("DrainModel"))
    }

    type StreamLogsStream = Logs;

    async fn stream_logs(
        &self,
        _: Request<StreamLogsRequest>,
    ) -> Result<Response<Self::StreamLogsStream>, Status> {
        Err(unimplemented("StreamLogs"))
    }

    type CallWorkerStream = Calls;

    async fn call_worker(
        &self,
        _: Request<CallWorkerRequest>,
    ) -> Result<Response<Self::CallWorkerStream>, Status> {
        Err(unimplemented("CallWorker"))
    }
}
