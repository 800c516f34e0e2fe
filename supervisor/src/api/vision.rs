//! VisionService: ProcessBatch over the model's worker. Streaming
//! `Process` is not served yet (UNIMPLEMENTED, said so).

use std::pin::Pin;
use std::sync::Arc;

use sidecar_proto::v1::vision_service_server::VisionService;
use sidecar_proto::v1::{
    ProcessBatchRequest, ProcessBatchResponse, ProcessRequest, ProcessResponse,
};
use sidecar_proto::worker::{worker_request, worker_response};
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

use crate::config::{Config, Family};
use crate::error::Error;
use crate::registry::Registry;

/// Most images of one ProcessBatch (the worker checks it too).
const MAX_IMAGES: usize = 256;

/// The VisionService implementation.
#[derive(Debug, Clone)]
pub struct VisionApi {
    /// Loaded models.
    pub registry: Arc<Registry>,
    /// Config (default deadlines).
    pub config: Arc<Config>,
}

type Results = Pin<Box<dyn Stream<Item = Result<ProcessResponse, Status>> + Send>>;

#[tonic::async_trait]
impl VisionService for VisionApi {
    type ProcessStream = Results;

    async fn process(
        &self,
        _: Request<Streaming<ProcessRequest>>,
    ) -> Result<Response<Self::ProcessStream>, Status> {
        Err(Error::Unimplemented(
            "streaming Process is not served yet (H.264, tracking, template matching and auto-crop arrive with it); ProcessBatch is".into(),
        )
        .into())
    }

    async fn process_batch(
        &self,
        req: Request<ProcessBatchRequest>,
    ) -> Result<Response<ProcessBatchResponse>, Status> {
        let n = req.get_ref().images.len();
        if n == 0 || n > MAX_IMAGES {
            return Err(Error::InvalidArgument(format!(
                "images holds {n} images; 1..{MAX_IMAGES} are allowed"
            ))
            .into());
        }
        let mut call = super::call_worker(
            &self.registry,
            Family::Vision,
            self.config.deadlines.unary,
            req,
            |r| (r.model_id.clone(), worker_request::Body::VisionBatch(r)),
        )
        .await?;
        match super::one_answer(&mut call).await? {
            worker_response::Body::VisionBatch(r) => Ok(Response::new(r)),
            other => Err(Error::Internal(format!("unexpected worker answer {other:?}")).into()),
        }
    }
}
