//! The Open Inference Protocol (KServe v2, Triton's gRPC API:
//! `inference.GRPCInferenceService`) over LITE models, so `tritonclient`
//! and other v2 clients work unchanged. Health answers from the same
//! functions as `/livez` and `/readyz`; `ModelInfer` is translated into a
//! `sidecar.v1.InferRequest` and run through `LiteService.Infer` itself
//! (the same admission, identity, rate limits, deadlines and cache),
//! the caller's metadata and extensions carried over. TEXT and VISION
//! models are refused (FAILED_PRECONDITION naming the service to use):
//! the protocol's tensors have no place for a token stream or an image's
//! detections.

pub mod tensors;

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use sidecar_proto::inference::grpc_inference_service_server::GrpcInferenceService;
use sidecar_proto::inference::model_metadata_response::TensorMetadata;
use sidecar_proto::inference::{
    ModelInferRequest, ModelInferResponse, ModelMetadataRequest, ModelMetadataResponse,
    ModelReadyRequest, ModelReadyResponse, ServerLiveRequest, ServerLiveResponse,
    ServerMetadataRequest, ServerMetadataResponse, ServerReadyRequest, ServerReadyResponse,
    SystemSharedMemoryRegisterRequest, SystemSharedMemoryRegisterResponse,
    SystemSharedMemoryStatusRequest, SystemSharedMemoryStatusResponse,
    SystemSharedMemoryUnregisterRequest, SystemSharedMemoryUnregisterResponse,
};
use sidecar_proto::v1::lite_service_server::LiteService;
use sidecar_proto::v1::{GetModelInfoRequest, TensorInfo};
use tonic::{Request, Response, Status};

use super::lite::LiteApi;
use crate::config::Family;
use crate::error::Error;
use crate::lifecycle::State;
use crate::pulse::Pulse;
use crate::registry::Registry;
use crate::shm::{Caller, Regions};
use crate::worker::WorkerHandle;

/// The platform `ModelMetadata` reports for a LITE model.
pub const PLATFORM: &str = "litert_tflite";
/// The protocol extensions served.
pub const EXTENSIONS: &[&str] = &["system_shared_memory"];

/// The `inference.GRPCInferenceService` implementation.
#[derive(Debug, Clone)]
pub struct OipApi {
    /// LiteService, which runs every `ModelInfer`.
    pub lite: LiteApi,
    /// False once shutdown began (`/readyz`'s flag).
    pub accepting: Arc<AtomicBool>,
    /// The main runtime's pulse (`/livez`'s).
    pub pulse: Pulse,
}

impl OipApi {
    fn registry(&self) -> &Registry {
        &self.lite.registry
    }

    /// The callers' shared-memory regions (`crate::shm`), which
    /// `SharedMemoryService` serves too.
    fn regions(&self) -> &Regions {
        &self.registry().shared().shm
    }

    /// Resolves `name` (a model id, an alias) and `version` (empty: the
    /// current one; else one loaded version, `LoadModelRequest.keep_previous`)
    /// to the name a LiteService call gives and the version it reaches,
    /// which must be LITE.
    fn lite_model(&self, name: &str, version: &str) -> Result<(String, WorkerHandle), Error> {
        let handle = self.registry().get(name)?;
        let (call, handle) = if version.is_empty() {
            (name.to_owned(), handle)
        } else {
            let no_version = || {
                Error::NotFound(format!(
                    "model {name:?} has no version {:?} loaded; its versions: {:?} \
                     (or leave the version empty for the current one)",
                    version.chars().take(40).collect::<String>(),
                    self.registry().versions(&handle.spec.id)
                ))
            };
            let v = version
                .parse::<u32>()
                .ok()
                .filter(|v| *v > 0 && !version.starts_with(['0', '+']))
                .ok_or_else(no_version)?;
            let pinned = format!("{}@{v}", handle.spec.id);
            match self.registry().get(&pinned) {
                Ok(h) => (pinned, h),
                Err(Error::NotFound(_)) => return Err(no_version()),
                Err(e) => return Err(e),
            }
        };
        match handle.spec.family {
            Family::Lite => Ok((call, handle)),
            other => {
                let (family, service) = match other {
                    Family::Text => ("TEXT", "sidecar.v1.TextService (or the OpenAI HTTP API)"),
                    _ => ("VISION", "sidecar.v1.VisionService"),
                };
                Err(Error::FailedPrecondition(format!(
                    "model {name:?} is a {family} model; the Open Inference Protocol serves \
                     LITE models here: use {service}"
                )))
            }
        }
    }

    /// `req`, its model resolved to `handle` for every later step.
    fn pin<T>(mut req: Request<T>, handle: &WorkerHandle) -> Request<T> {
        req.extensions_mut().insert(super::Resolved(handle.clone()));
        req
    }

    /// Carries a request's metadata and extensions (identity, charge
    /// marks, connection info) over to `message`.
    fn rewrap<T, U>(
        req: Request<T>,
        message: impl FnOnce(T) -> Result<U, Error>,
    ) -> Result<Request<U>, Error> {
        let (metadata, extensions, inner) = req.into_parts();
        Ok(Request::from_parts(metadata, extensions, message(inner)?))
    }
}

fn tensor_metadata(t: TensorInfo) -> TensorMetadata {
    TensorMetadata {
        datatype: tensors::datatype_of_wire(t.dtype),
        name: t.name,
        shape: t.shape,
    }
}

#[tonic::async_trait]
impl GrpcInferenceService for OipApi {
    async fn server_live(
        &self,
        _req: Request<ServerLiveRequest>,
    ) -> Result<Response<ServerLiveResponse>, Status> {
        let stall = self.registry().shared().config.livez_stall;
        Ok(Response::new(ServerLiveResponse {
            live: self.pulse.check(stall).is_ok(),
        }))
    }

    async fn server_ready(
        &self,
        _req: Request<ServerReadyRequest>,
    ) -> Result<Response<ServerReadyResponse>, Status> {
        Ok(Response::new(ServerReadyResponse {
            ready: crate::admin::readiness(&self.accepting, self.registry()).is_ok(),
        }))
    }

    /// As Triton: an unknown model, or a version it lacks, is `ready:
    /// false`, not an error (`tritonclient`'s `is_model_ready` returns
    /// False); so is a TEXT or VISION model, which `ModelInfer` refuses
    /// (a model that cannot infer here is not ready here).
    async fn model_ready(
        &self,
        req: Request<ModelReadyRequest>,
    ) -> Result<Response<ModelReadyResponse>, Status> {
        let r = req.into_inner();
        let ready = self
            .lite_model(&r.name, &r.version)
            .is_ok_and(|(_, h)| h.status().state == State::Ready);
        Ok(Response::new(ModelReadyResponse { ready }))
    }

    async fn server_metadata(
        &self,
        _req: Request<ServerMetadataRequest>,
    ) -> Result<Response<ServerMetadataResponse>, Status> {
        Ok(Response::new(ServerMetadataResponse {
            name: "sidecar".to_owned(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            extensions: EXTENSIONS.iter().map(|e| (*e).to_owned()).collect(),
        }))
    }

    async fn model_metadata(
        &self,
        req: Request<ModelMetadataRequest>,
    ) -> Result<Response<ModelMetadataResponse>, Status> {
        let (name, version) = (req.get_ref().name.clone(), req.get_ref().version.clone());
        let (call, handle) = self.lite_model(&name, &version)?;
        let req = Self::pin(req, &handle);
        let info = self
            .lite
            .get_model_info(Self::rewrap(req, |_| {
                Ok(GetModelInfoRequest { model_id: call })
            })?)
            .await?
            .into_inner();
        Ok(Response::new(ModelMetadataResponse {
            name,
            versions: self
                .registry()
                .versions(&handle.spec.id)
                .iter()
                .map(u32::to_string)
                .collect(),
            platform: PLATFORM.to_owned(),
            inputs: info.inputs.into_iter().map(tensor_metadata).collect(),
            outputs: info.outputs.into_iter().map(tensor_metadata).collect(),
        }))
    }

    async fn model_infer(
        &self,
        req: Request<ModelInferRequest>,
    ) -> Result<Response<ModelInferResponse>, Status> {
        let (name, version, id) = {
            let r = req.get_ref();
            (r.model_name.clone(), r.model_version.clone(), r.id.clone())
        };
        // The version reported is the one resolved here, which runs it.
        let (target, handle) = self.lite_model(&name, &version)?;
        let req = Self::pin(req, &handle);
        let call = Self::rewrap(req, |r| {
            let mut call = tensors::infer_request(r)?;
            call.model_id = target;
            Ok(call)
        })?;
        let answer = self.lite.infer(call).await?.into_inner();
        Ok(Response::new(tensors::infer_response(
            name,
            handle.version().to_string(),
            id,
            answer,
        )))
    }

    async fn system_shared_memory_status(
        &self,
        req: Request<SystemSharedMemoryStatusRequest>,
    ) -> Result<Response<SystemSharedMemoryStatusResponse>, Status> {
        let caller = Caller::of_call(&req);
        let answer = crate::shm::oip::status(self.regions(), &caller, req.into_inner())?;
        Ok(Response::new(answer))
    }

    async fn system_shared_memory_register(
        &self,
        req: Request<SystemSharedMemoryRegisterRequest>,
    ) -> Result<Response<SystemSharedMemoryRegisterResponse>, Status> {
        let caller = Caller::of_call(&req);
        let regions = Arc::clone(&self.registry().shared().shm);
        let r = req.into_inner();
        // Opening and fstat touch the file system: off the async workers
        // (as `SharedMemoryService.RegisterRegion`).
        let answer =
            tokio::task::spawn_blocking(move || crate::shm::oip::register(&regions, &caller, r))
                .await
                .map_err(|e| Error::Internal(format!("register task: {e}")))??;
        Ok(Response::new(answer))
    }

    async fn system_shared_memory_unregister(
        &self,
        req: Request<SystemSharedMemoryUnregisterRequest>,
    ) -> Result<Response<SystemSharedMemoryUnregisterResponse>, Status> {
        let caller = Caller::of_call(&req);
        let answer = crate::shm::oip::unregister(self.regions(), &caller, req.into_inner())?;
        Ok(Response::new(answer))
    }
}

#[cfg(test)]
mod tests;
