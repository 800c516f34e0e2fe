//! LiteService: LiteRT `.tflite` inference over the model's worker.

use std::sync::Arc;

use sidecar_proto::v1::lite_service_server::LiteService;
use sidecar_proto::v1::{
    GetModelInfoRequest, InferBatchRequest, InferBatchResponse, InferRequest, InferResponse,
    LiteModelInfo,
};
use tonic::{Request, Response, Status};

use crate::config::{Config, Family};
use crate::error::Error;
use crate::registry::Registry;

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
        let req = super::charge(&self.registry, Family::Lite, req, |r| (&r.model_id, 1))?;
        let default = self.config.deadlines.unary;
        super::deterministic::methods::infer(&self.registry, default, req).await
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
        let req = super::charge(&self.registry, Family::Lite, req, |r| {
            (&r.model_id, sets as u32)
        })?;
        let default = self.config.deadlines.unary;
        super::deterministic::methods::infer_batch(&self.registry, default, req).await
    }
}
