//! LiteService: LiteRT `.tflite` inference over the model's worker.

use std::sync::Arc;

use sidecar_proto::v1::lite_service_server::LiteService;
use sidecar_proto::v1::{
    GetModelInfoRequest, InferBatchRequest, InferBatchResponse, InferRequest, InferResponse,
    LiteModelInfo, LiteTimings,
};
use sidecar_proto::worker::{worker_request, worker_response};
use tonic::{Request, Response, Status};

use crate::config::{Config, Family};
use crate::error::Error;
use crate::registry::Registry;
use crate::worker::CallStream;

/// Most input sets of one InferBatch (the worker checks it too).
const MAX_SETS: usize = 256;

/// The LiteService implementation.
#[derive(Debug, Clone)]
pub struct LiteApi {
    /// Loaded models.
    pub registry: Arc<Registry>,
    /// Config (default deadlines).
    pub config: Arc<Config>,
}

impl LiteApi {
    async fn call<T>(
        &self,
        req: Request<T>,
        into_body: impl FnOnce(T) -> (String, worker_request::Body),
    ) -> Result<CallStream, Error> {
        super::call_worker(
            &self.registry,
            Family::Lite,
            self.config.deadlines.unary,
            req,
            into_body,
        )
        .await
    }
}

/// Adds the supervisor's queueing to the worker's timings.
fn add_queue(t: Option<&mut LiteTimings>, call: &CallStream) {
    if let Some(t) = t {
        let queued = call.queued.as_micros() as u64;
        t.queue_us += queued;
        t.total_us += queued;
    }
}

fn unexpected(other: worker_response::Body) -> Status {
    Error::Internal(format!("unexpected worker answer {other:?}")).into()
}

#[tonic::async_trait]
impl LiteService for LiteApi {
    async fn get_model_info(
        &self,
        req: Request<GetModelInfoRequest>,
    ) -> Result<Response<LiteModelInfo>, Status> {
        let id = req.into_inner().model_id;
        let handle = self.registry.get(&id)?;
        if handle.spec.family != Family::Lite {
            return Err(
                Error::FailedPrecondition(format!("model {id:?} is not a LITE model")).into(),
            );
        }
        // What the worker reported when it loaded the model.
        match handle.status().lite {
            Some(info) => Ok(Response::new(info)),
            None => Err(Error::Unavailable(format!(
                "model {id:?} is not loaded yet ({:?})",
                handle.status().state
            ))
            .into()),
        }
    }

    async fn infer(&self, req: Request<InferRequest>) -> Result<Response<InferResponse>, Status> {
        let mut call = self
            .call(req, |r| {
                (r.model_id.clone(), worker_request::Body::Infer(r))
            })
            .await?;
        match super::one_answer(&mut call).await? {
            worker_response::Body::Infer(mut r) => {
                add_queue(r.timings.as_mut(), &call);
                Ok(Response::new(r))
            }
            other => Err(unexpected(other)),
        }
    }

    async fn infer_batch(
        &self,
        req: Request<InferBatchRequest>,
    ) -> Result<Response<InferBatchResponse>, Status> {
        let sets = req.get_ref().sets.len();
        if sets == 0 || sets > MAX_SETS {
            return Err(Error::InvalidArgument(format!(
                "sets holds {sets} input sets; 1..{MAX_SETS} are allowed"
            ))
            .into());
        }
        let mut call = self
            .call(req, |r| {
                (r.model_id.clone(), worker_request::Body::InferBatch(r))
            })
            .await?;
        match super::one_answer(&mut call).await? {
            worker_response::Body::InferBatch(mut r) => {
                add_queue(r.timings.as_mut(), &call);
                Ok(Response::new(r))
            }
            other => Err(unexpected(other)),
        }
    }
}
