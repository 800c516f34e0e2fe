//! ModelService: loading, unloading and describing models; the model store.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use sidecar_proto::v1::model_service_server::ModelService;
use sidecar_proto::v1::{
    Accelerator, DeleteAliasRequest, DeleteAliasResponse, DeleteFileRequest, DeleteFileResponse,
    FileChunk, GetFileRequest, GetModelRequest, ListFilesRequest, ListFilesResponse,
    ListModelsRequest, ListModelsResponse, LoadModelRequest, LoadModelResponse, ModelFamily,
    ModelInfo, PutFileRequest, PutFileResponse, SetAliasRequest, SetAliasResponse,
    UnloadModelRequest, UnloadModelResponse, load_model_request,
};
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

use crate::auth::Identity;
use crate::config::{Config, Family, LiteAccelerator, LiteSpec, ModelSpec, TextSpec, VisionSpec};
use crate::error::Error;
use crate::lifecycle::{KillReason, State};
use crate::registry::Registry;

/// The ModelService implementation.
#[derive(Debug, Clone)]
pub struct ModelApi {
    /// Loaded models.
    pub registry: Arc<Registry>,
    /// Config (default deadlines).
    pub config: Arc<Config>,
}

impl ModelApi {
    /// Applies the cache's byte bound before its figures are read (the
    /// calls do it only past the bound); at most a second.
    async fn settle_cache(&self) {
        let cache = &self.registry.shared().cache;
        let _ = tokio::time::timeout(std::time::Duration::from_secs(1), cache.settle()).await;
    }
}

fn spec_from(req: LoadModelRequest) -> Result<ModelSpec, Error> {
    let family = match ModelFamily::try_from(req.family) {
        Ok(ModelFamily::Text) => Family::Text,
        Ok(ModelFamily::Lite) => Family::Lite,
        Ok(ModelFamily::Vision) => Family::Vision,
        _ => {
            return Err(Error::InvalidArgument(format!(
                "family {} is not a model family (TEXT, VISION or LITE)",
                req.family
            )));
        }
    };
    let mut lite = LiteSpec::default();
    let mut vision = VisionSpec::default();
    let text = match req.options {
        None => TextSpec::default(),
        Some(load_model_request::Options::Lite(l)) if family == Family::Lite => {
            lite = LiteSpec {
                threads: l.threads,
                accelerator: match Accelerator::try_from(l.accelerator) {
                    Ok(Accelerator::Unspecified | Accelerator::Cpu) => LiteAccelerator::Cpu,
                    Ok(Accelerator::Gpu) => LiteAccelerator::Gpu,
                    Err(_) => {
                        return Err(Error::InvalidArgument(format!(
                            "lite.accelerator {} is not an Accelerator value",
                            l.accelerator
                        )));
                    }
                },
                allow_fallback: l.allow_fallback,
            };
            if lite.threads > 64 {
                return Err(Error::InvalidArgument(format!(
                    "lite.threads {} exceeds the limit of 64",
                    lite.threads
                )));
            }
            TextSpec::default()
        }
        Some(load_model_request::Options::Vision(v)) if family == Family::Vision => {
            vision = VisionSpec {
                threads: v.threads,
                ssd: v.ssd,
                max_pixels: v.max_pixels,
                max_pictures_per_chunk: v.max_pictures_per_chunk,
                max_batch_images: v.max_batch_images,
                max_tracks: v.max_tracks,
                max_pending_bytes: v.max_pending_bytes,
                pipeline: crate::config::PipelineSpec::from_proto(v.pipeline),
            };
            TextSpec::default()
        }
        Some(load_model_request::Options::Text(t)) if family == Family::Text => {
            if t.prompt_cache == Some(true) && t.embeddings == Some(true) {
                return Err(Error::InvalidArgument(
                    "text.prompt_cache = true needs a generation model, but text.embeddings = true"
                        .into(),
                ));
            }
            if t.parallel > 64 {
                return Err(Error::InvalidArgument(format!(
                    "text.parallel {} exceeds the limit of 64",
                    t.parallel
                )));
            }
            TextSpec {
                context_size: t.context_size,
                parallel: t.parallel,
                threads: t.threads,
                gpu_layers: t.gpu_layers,
                batch_size: t.batch_size,
                chat_template: t.chat_template,
                embeddings: t.embeddings,
                prompt_cache: t.prompt_cache,
            }
        }
        Some(_) => {
            return Err(Error::InvalidArgument(
                "options must match the family (text options for a TEXT model, lite options for a LITE model)".into(),
            ));
        }
    };
    if req.max_in_flight > crate::config::MAX_IN_FLIGHT {
        return Err(Error::InvalidArgument(format!(
            "max_in_flight {} exceeds the limit of {}",
            req.max_in_flight,
            crate::config::MAX_IN_FLIGHT
        )));
    }
    Ok(ModelSpec {
        max_in_flight: (req.max_in_flight > 0).then_some(req.max_in_flight),
        id: req.model_id,
        family,
        path: req.path,
        preload: true,
        required: Some(req.required),
        pinned: req.pinned,
        memory_budget: req.memory_budget_bytes,
        memory_estimate: 0,
        keep_alive: None,
        text,
        lite,
        vision,
    })
}

type Chunks = Pin<Box<dyn Stream<Item = Result<FileChunk, Status>> + Send>>;

impl ModelApi {
    /// A model's info with the registry's view of it (a swap in progress,
    /// aliases, versions).
    fn info(&self, h: &crate::worker::WorkerHandle) -> ModelInfo {
        super::aliases::info(&self.registry, h)
    }
}

/// LoadModel's swap options (`replace`): `None` without it.
fn swap_options(
    req: &LoadModelRequest,
    deadline: std::time::Instant,
) -> Result<Option<crate::registry::SwapOptions>, Error> {
    if !req.replace {
        if req.allow_cold_swap || req.drain_timeout_ms != 0 || req.keep_previous {
            return Err(Error::InvalidArgument(
                "allow_cold_swap, keep_previous and drain_timeout_ms apply to a swap: set replace = true".into(),
            ));
        }
        return Ok(None);
    }
    if req.allow_cold_swap && req.keep_previous {
        return Err(Error::InvalidArgument(
            "allow_cold_swap and keep_previous contradict: a cold swap unloads the old version first"
                .into(),
        ));
    }
    let drain = match req.drain_timeout_ms {
        0 => Duration::from_secs(30),
        ms => Duration::from_millis(u64::from(ms)),
    };
    if drain > crate::registry::MAX_DRAIN {
        return Err(Error::InvalidArgument(format!(
            "drain_timeout_ms {} exceeds the limit of {}",
            req.drain_timeout_ms,
            crate::registry::MAX_DRAIN.as_millis()
        )));
    }
    Ok(Some(crate::registry::SwapOptions {
        allow_cold: req.allow_cold_swap,
        keep_previous: req.keep_previous,
        drain,
        deadline,
    }))
}

#[tonic::async_trait]
impl ModelService for ModelApi {
    async fn load_model(
        &self,
        req: Request<LoadModelRequest>,
    ) -> Result<Response<LoadModelResponse>, Status> {
        let deadline = super::deadline(&req, self.config.deadlines.load, self.config.deadlines.max);
        let client = Identity::of_call(&req);
        let swap = swap_options(req.get_ref(), deadline)?;
        let spec = spec_from(req.into_inner())?;
        tracing::info!(%client, model = ?spec.id, path = ?spec.path, pinned = spec.pinned, replace = swap.is_some(), "LoadModel");
        let handle = match swap {
            Some(opts) => self.registry.swap(spec, opts).await?,
            None => self.registry.add(spec)?,
        };
        if handle.status().state == State::Failed {
            // Loading a FAILED model again is the explicit reload.
            handle.restart().await?;
            let mut rx = handle.clone();
            let _ = tokio::time::timeout_at(deadline.into(), async {
                while rx.status().state == State::Failed && rx.changed().await {}
            })
            .await;
        }
        let status = handle.wait_settled(deadline).await;
        match status.state {
            State::Ready => Ok(Response::new(LoadModelResponse {
                model: Some(self.info(&handle)),
            })),
            State::Failed => {
                let id = handle.spec.id.clone();
                let message = format!("model {id:?} failed to load: {}", status.last_error);
                // A model that cannot load is not kept loaded.
                let _ = self.registry.remove(&id, KillReason::Requested).await;
                // The worker's own refusal keeps its code (no GPU: FAILED_PRECONDITION).
                Err(match status.last_error_code {
                    3 => Error::InvalidArgument(message),
                    crate::worker::REFUSED_MEMORY => Error::ResourceExhausted(message),
                    9 => Error::FailedPrecondition(message),
                    _ => Error::Unavailable(message),
                }
                .into())
            }
            _ => Err(Error::DeadlineExceeded(format!(
                "model {:?} is still loading; watch it with GetModel",
                handle.spec.id
            ))
            .into()),
        }
    }

    async fn unload_model(
        &self,
        req: Request<UnloadModelRequest>,
    ) -> Result<Response<UnloadModelResponse>, Status> {
        let client = Identity::of_call(&req);
        let req = req.into_inner();
        tracing::info!(%client, model = ?req.model_id.chars().take(80).collect::<String>(), force = req.force, "UnloadModel");
        super::aliases::unload(&self.registry, req).await?;
        Ok(Response::new(UnloadModelResponse {}))
    }

    async fn list_models(
        &self,
        req: Request<ListModelsRequest>,
    ) -> Result<Response<ListModelsResponse>, Status> {
        let family = req.into_inner().family;
        self.settle_cache().await;
        let models: Vec<ModelInfo> = super::aliases::every_version(&self.registry)
            .into_iter()
            .map(|h| self.info(&h))
            .filter(|m| family == 0 || m.family == family)
            .collect();
        let aliases = self
            .registry
            .aliases()
            .into_iter()
            .map(|(a, t)| super::aliases::alias(a, t))
            .collect();
        Ok(Response::new(ListModelsResponse { models, aliases }))
    }

    async fn get_model(
        &self,
        req: Request<GetModelRequest>,
    ) -> Result<Response<ModelInfo>, Status> {
        let handle = self.registry.get(&req.into_inner().model_id)?;
        self.settle_cache().await;
        Ok(Response::new(self.info(&handle)))
    }

    async fn list_files(
        &self,
        req: Request<ListFilesRequest>,
    ) -> Result<Response<ListFilesResponse>, Status> {
        let files = super::files::list(&self.registry, &req.into_inner()).await?;
        Ok(Response::new(ListFilesResponse { files }))
    }

    type GetFileStream = Chunks;

    async fn get_file(
        &self,
        req: Request<GetFileRequest>,
    ) -> Result<Response<Self::GetFileStream>, Status> {
        let stream = super::files::get(&self.registry, req.into_inner()).await?;
        Ok(Response::new(stream))
    }

    async fn put_file(
        &self,
        req: Request<Streaming<PutFileRequest>>,
    ) -> Result<Response<PutFileResponse>, Status> {
        let client = Identity::of_call(&req);
        let file = super::files::put(&self.registry, req.into_inner()).await?;
        tracing::info!(%client, path = %file.path, bytes = file.size_bytes, "PutFile");
        Ok(Response::new(PutFileResponse { file: Some(file) }))
    }

    async fn delete_file(
        &self,
        req: Request<DeleteFileRequest>,
    ) -> Result<Response<DeleteFileResponse>, Status> {
        let client = Identity::of_call(&req);
        let path = req.into_inner().path;
        super::files::delete(&self.registry, &path).await?;
        tracing::info!(%client, path = ?path.chars().take(256).collect::<String>(), "DeleteFile");
        Ok(Response::new(DeleteFileResponse {}))
    }

    async fn set_alias(
        &self,
        req: Request<SetAliasRequest>,
    ) -> Result<Response<SetAliasResponse>, Status> {
        Ok(Response::new(super::aliases::set(
            &self.registry,
            req.into_inner(),
        )?))
    }

    async fn delete_alias(
        &self,
        req: Request<DeleteAliasRequest>,
    ) -> Result<Response<DeleteAliasResponse>, Status> {
        super::aliases::delete(&self.registry, req.into_inner())?;
        Ok(Response::new(DeleteAliasResponse {}))
    }
}
