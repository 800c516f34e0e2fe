//! VisionService: Process streams and ProcessBatch over the model's
//! worker.

use std::pin::Pin;
use std::sync::Arc;

use sidecar_proto::v1::vision_service_server::VisionService;
use sidecar_proto::v1::{
    Frame, OverflowPolicy, ProcessBatchRequest, ProcessBatchResponse, ProcessRequest,
    ProcessResponse, process_request,
};
use sidecar_proto::worker::{WorkerRequest, worker_request, worker_response};
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

use crate::config::{Config, Family};
use crate::error::Error;
use crate::registry::Registry;

/// Most images of one ProcessBatch (the worker checks it too).
const MAX_IMAGES: usize = 256;

mod flow;

use flow::{Held, dropped_result, frame_bytes, is_h264};

/// One stream's frame counts, added to the metrics when it ends.
struct FrameCounts {
    metrics: std::sync::Arc<crate::metrics::Metrics>,
    model: String,
    started: std::time::Instant,
    arrived: u64,
    processed: u64,
    dropped: u64,
}

impl FrameCounts {
    fn new(metrics: std::sync::Arc<crate::metrics::Metrics>, model: String) -> FrameCounts {
        FrameCounts {
            metrics,
            model,
            started: std::time::Instant::now(),
            arrived: 0,
            processed: 0,
            dropped: 0,
        }
    }
}

impl Drop for FrameCounts {
    fn drop(&mut self) {
        let m = &self.metrics;
        m.frame(&self.model, "in", self.arrived);
        m.frame(&self.model, "processed", self.processed);
        m.frame(&self.model, "dropped", self.dropped);
        let secs = self.started.elapsed().as_secs_f64();
        if self.processed > 0 && secs > 0.0 {
            m.stream_fps
                .get_or_create(&crate::metrics::ModelLabel {
                    model: self.model.clone(),
                })
                .observe(self.processed as f64 / secs);
        }
    }
}

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
        req: Request<Streaming<ProcessRequest>>,
    ) -> Result<Response<Self::ProcessStream>, Status> {
        let deadline = super::deadline(
            &req,
            self.config.deadlines.stream,
            self.config.deadlines.max,
        );
        // The caller's metadata and extensions (its identity, x-priority,
        // x-request-id) go with the stream's opening, so the stream and its
        // frames are queued and charged to the caller's class.
        let identity = crate::auth::Identity::of_call(&req);
        let regions = self.registry.shared().shm.clone();
        let (mut metadata, extensions, mut input) = req.into_parts();
        // The deadline is the one measured above, from the call's arrival.
        metadata.remove("grpc-timeout");
        let config = match input.message().await?.and_then(|m| m.msg) {
            Some(process_request::Msg::Config(c)) => c,
            _ => {
                return Err(Error::InvalidArgument(
                    "the first message of a Process stream must be a StreamConfig".into(),
                )
                .into());
            }
        };
        let max_pending = match config.max_pending_frames {
            0 => 4,
            n => n as usize,
        };
        let drop_oldest = config.overflow == OverflowPolicy::DropOldest as i32;
        // The model's figure (an unknown model fails just below).
        let resolved = self.registry.get(&config.model_id).ok();
        let max_pending_bytes = match &resolved {
            Some(h) if h.spec.vision.max_pending_bytes > 0 => h.spec.vision.max_pending_bytes,
            _ => sidecar_proto::VISION_MAX_PENDING_BYTES,
        };
        // The stream runs on the version found here, to its end.
        let mut extensions = extensions;
        if let Some(h) = resolved {
            extensions.insert(super::Resolved(h));
        }
        let mut held = Held::new(max_pending, max_pending_bytes, drop_oldest);
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let mut call = super::call_worker(
            &self.registry,
            Family::Vision,
            left,
            Request::from_parts(metadata, extensions, config),
            |c| (c.model_id.clone(), worker_request::Body::VisionOpen(c)),
        )
        .await?;
        // By the model's id (not an alias or "id@version" the client named).
        let model = call.model_id().to_owned();
        let (mut tx, rx) = super::outflow::channel(8, self.config.connections.stream_stall);
        let metrics = call.metrics().clone();
        // The class's rate limit, one unit a frame: DROP_OLDEST drops a
        // frame over it (H.264 chunks excepted), the default holds it and
        // reads nothing more until it may go.
        let limit = call.frame_limit();
        tokio::spawn(async move {
            let mut counts = FrameCounts::new(metrics, model);
            let mut input_open = true;
            let mut holding: Option<Frame> = None;
            // Per frame sent (its answer with `more` unset ends it): the
            // shared-memory regions it names, held in use until then.
            let mut in_use: std::collections::VecDeque<crate::shm::Held> =
                std::collections::VecDeque::new();
            loop {
                let read = input_open && held.may_read() && holding.is_none();
                let mut frame = None;
                tokio::select! {
                    () = take(limit.as_ref()), if holding.is_some() => frame = holding.take(),
                    msg = input.message(), if read => match msg {
                        Ok(Some(ProcessRequest { msg: Some(process_request::Msg::Frame(f)) })) => {
                            match limit.as_ref().map(|l| l.try_take()) {
                                Some(false) if drop_oldest && !is_h264(&f) => {
                                    counts.arrived += 1;
                                    counts.dropped += 1;
                                    counts.metrics.reject(&counts.model, "rate_limited");
                                    let dropped = dropped_result(&f);
                                    if !tx.send(Ok(dropped)).await {
                                        return;
                                    }
                                }
                                Some(false) => holding = Some(f),
                                _ => frame = Some(f),
                            }
                        }
                        Ok(Some(_)) => {
                            let e = Error::InvalidArgument(
                                "only the first message of a Process stream is a StreamConfig; the rest are frames".into(),
                            );
                            let _ = tx.send(Err(e.into())).await;
                            return;
                        }
                        Ok(None) => {
                            input_open = false;
                            let close = WorkerRequest {
                                body: Some(worker_request::Body::VisionClose(true)),
                                ..Default::default()
                            };
                            if let Err(e) = call.send_more(&close).await {
                                let _ = tx.send(Err(e.into())).await;
                                return;
                            }
                        }
                        // The client went away: dropping the call cancels
                        // the stream in the worker.
                        Err(_) => return,
                    },
                    answer = call.next() => match answer {
                        None => return,
                        Some(Ok(r)) => match r.body {
                            Some(worker_response::Body::Vision(result)) => {
                                held.answered(r.more);
                                if !r.more {
                                    in_use.pop_front();
                                }
                                if result.dropped {
                                    counts.dropped += 1;
                                } else {
                                    counts.processed += 1;
                                }
                                if !tx.send(Ok(result)).await {
                                    return;
                                }
                            }
                            // An H.264 chunk that completed no picture (and the
                            // end of the stream) carry no result.
                            None => {
                                held.answered(r.more);
                                if !r.more {
                                    in_use.pop_front();
                                }
                            }
                            Some(other) => {
                                let e = Error::Internal(format!("unexpected worker answer {other:?}"));
                                let _ = tx.send(Err(e.into())).await;
                                return;
                            }
                        },
                        Some(Err(e)) => {
                            let _ = tx.send(Err(e.into())).await;
                            return;
                        }
                    },
                    () = tx.closed() => return,
                }
                if let Some(f) = frame {
                    let bytes = frame_bytes(&f);
                    let body = worker_request::Body::VisionFrame(f);
                    // A frame naming a region the caller does not hold (or
                    // a window past it) ends the stream with that error.
                    let frame_held = match regions.resolve(&identity, &body) {
                        Ok(h) => h,
                        Err(e) => {
                            let _ = tx.send(Err(e.into())).await;
                            return;
                        }
                    };
                    let more = WorkerRequest {
                        regions: frame_held.uses(),
                        body: Some(body),
                        ..Default::default()
                    };
                    let sent = call.send_more_held(more, &frame_held).await;
                    in_use.push_back(frame_held);
                    if let Err(e) = sent {
                        let _ = tx.send(Err(e.into())).await;
                        return;
                    }
                    counts.arrived += 1;
                    held.sent(bytes);
                }
            }
        });
        Ok(Response::new(Box::pin(rx)))
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
        let req = super::charge(&self.registry, Family::Vision, req, |r| {
            (&r.model_id, n as u32)
        })?;
        let default = self.config.deadlines.unary;
        super::deterministic::methods::process_batch(&self.registry, default, req).await
    }
}

/// Waits until `limit` lets a frame go (at once without a limit).
async fn take(limit: Option<&crate::traffic::FrameLimit>) {
    if let Some(l) = limit {
        l.take().await;
    }
}
