//! VisionService: Process streams and ProcessBatch over the model's
//! worker.

use std::pin::Pin;
use std::sync::Arc;

use sidecar_proto::v1::vision_service_server::VisionService;
use sidecar_proto::v1::{
    Frame, OverflowPolicy, ProcessBatchRequest, ProcessBatchResponse, ProcessRequest,
    ProcessResponse, frame, process_request,
};
use sidecar_proto::worker::{WorkerRequest, worker_request, worker_response};
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

use crate::config::{Config, Family};
use crate::error::Error;
use crate::registry::Registry;

/// Most images of one ProcessBatch (the worker checks it too).
const MAX_IMAGES: usize = 256;

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

/// The frame messages of a stream its worker holds: sent, not yet answered
/// in full (one result, a `dropped` result, an empty answer for an H.264
/// chunk that completed no picture, or several results, all but the last
/// marked `more`), and the bytes they hold there ([`frame_bytes`]). Bounds
/// what a stream keeps in its worker, in frames and in bytes, with the
/// worker's own figures (`max_pending_frames`, `max_pending_bytes`).
#[derive(Debug)]
struct Held {
    /// Each unanswered message's bytes, oldest first (answers come in
    /// order).
    messages: std::collections::VecDeque<u64>,
    bytes: u64,
    most: usize,
    most_bytes: u64,
}

impl Held {
    /// With the default overflow policy the client is not read beyond
    /// `max_pending` (HTTP/2 flow control holds it back). With DROP_OLDEST
    /// it is read on, so the worker sees new frames and drops old ones,
    /// up to twice that: H.264 chunks are never dropped. The same for
    /// bytes: the client is read while the unanswered frames hold less
    /// than `max_pending_bytes` (twice that with DROP_OLDEST), as the
    /// worker takes a frame while its waiting ones hold less.
    fn new(max_pending: usize, max_pending_bytes: u64, drop_oldest: bool) -> Held {
        let (most, most_bytes) = if drop_oldest {
            (2 * max_pending, max_pending_bytes.saturating_mul(2))
        } else {
            (max_pending, max_pending_bytes)
        };
        Held {
            messages: std::collections::VecDeque::new(),
            bytes: 0,
            most,
            most_bytes,
        }
    }

    fn may_read(&self) -> bool {
        self.messages.len() < self.most && self.bytes < self.most_bytes
    }

    fn sent(&mut self, bytes: u64) {
        self.messages.push_back(bytes);
        self.bytes = self.bytes.saturating_add(bytes);
    }

    fn answered(&mut self, more: bool) {
        if !more && let Some(b) = self.messages.pop_front() {
            // The sum saturates on absurd sizes (the worker refuses
            // those frames): never below zero.
            self.bytes = self.bytes.saturating_sub(b);
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
        let max_pending_bytes = match self.registry.get(&config.model_id) {
            Ok(h) if h.spec.vision.max_pending_bytes > 0 => h.spec.vision.max_pending_bytes,
            _ => sidecar_proto::VISION_MAX_PENDING_BYTES,
        };
        let mut held = Held::new(max_pending, max_pending_bytes, drop_oldest);
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let model = config.model_id.clone();
        let mut call = super::call_worker(
            &self.registry,
            Family::Vision,
            left,
            Request::from_parts(metadata, extensions, config),
            |c| (c.model_id.clone(), worker_request::Body::VisionOpen(c)),
        )
        .await?;
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

/// The result of a frame the supervisor drops itself (DROP_OLDEST over
/// the rate limit): `dropped`, and `released` naming the frame's region
/// bytes as the frame named them (never read: the client may reuse them).
fn dropped_result(f: &Frame) -> ProcessResponse {
    let released = match &f.data {
        Some(frame::Data::Raw(raw)) => raw.shm.clone(),
        Some(frame::Data::EncodedShm(r)) => Some(r.clone()),
        _ => None,
    };
    ProcessResponse {
        frame_index: f.index,
        timestamp_us: f.timestamp_us,
        dropped: true,
        released,
        ..Default::default()
    }
}

/// Whether a frame is a piece of the stream's H.264 (a chunk, or a flush
/// with no data): never dropped, as the pictures after it depend on it.
fn is_h264(f: &Frame) -> bool {
    matches!(f.data, Some(frame::Data::H264(_))) || (f.data.is_none() && f.flush)
}

/// What a frame holds in its worker while it waits: raw pixels given
/// inline as converted (3 bytes a pixel), an encoded file or H.264 chunk
/// given inline as its length; a frame in a region holds nothing there.
fn frame_bytes(f: &Frame) -> u64 {
    match &f.data {
        Some(frame::Data::Raw(raw)) if raw.shm.is_none() || !raw.data.is_empty() => {
            u64::from(raw.width)
                .saturating_mul(u64::from(raw.height))
                .saturating_mul(3)
        }
        Some(frame::Data::Encoded(b) | frame::Data::H264(b)) => b.len() as u64,
        _ => 0,
    }
}

/// Waits until `limit` lets a frame go (at once without a limit).
async fn take(limit: Option<&crate::traffic::FrameLimit>) {
    if let Some(l) = limit {
        l.take().await;
    }
}

#[cfg(test)]
mod tests {
    use super::{Frame, Held, dropped_result, frame, frame_bytes, is_h264};
    use sidecar_proto::v1::{RawImage, SharedMemoryRef};

    #[test]
    fn a_dropped_region_frame_releases_its_bytes() {
        let slot = |offset| SharedMemoryRef {
            region: "ring".into(),
            offset,
            byte_size: 2_764_800,
        };
        let raw = Frame {
            index: 7,
            timestamp_us: 70,
            data: Some(frame::Data::Raw(RawImage {
                shm: Some(slot(2_764_800)),
                ..Default::default()
            })),
            ..Default::default()
        };
        let got = dropped_result(&raw);
        assert!(got.dropped);
        assert_eq!((got.frame_index, got.timestamp_us), (7, 70));
        assert_eq!(got.released, Some(slot(2_764_800)));
        let encoded = Frame {
            index: 8,
            data: Some(frame::Data::EncodedShm(slot(0))),
            ..Default::default()
        };
        assert_eq!(dropped_result(&encoded).released, Some(slot(0)));
        let inline = Frame {
            index: 9,
            data: Some(frame::Data::Encoded(vec![0xff, 0xd8].into())),
            ..Default::default()
        };
        assert_eq!(dropped_result(&inline).released, None, "no region");
    }

    #[test]
    fn a_chunk_with_several_pictures_counts_once() {
        let mut held = Held::new(2, 1 << 20, false);
        held.sent(0);
        held.sent(0);
        assert!(!held.may_read(), "two messages held, two allowed");
        // A chunk that completed three pictures: two answers marked more.
        held.answered(true);
        held.answered(true);
        assert!(!held.may_read(), "the chunk is not done yet");
        held.answered(false);
        assert!(held.may_read());
        held.sent(0);
        assert!(!held.may_read());
    }

    #[test]
    fn drop_oldest_reads_on_but_not_without_bound() {
        let mut held = Held::new(2, 1 << 20, true);
        for _ in 0..4 {
            assert!(held.may_read());
            held.sent(0);
        }
        assert!(!held.may_read(), "H.264 chunks are never dropped");
        held.answered(false);
        assert!(held.may_read());
    }

    #[test]
    fn h264_chunks_and_flushes_are_never_dropped_over_the_rate() {
        let chunk = Frame {
            data: Some(frame::Data::H264(vec![0; 4].into())),
            ..Default::default()
        };
        let flush = Frame {
            flush: true,
            ..Default::default()
        };
        let picture = Frame {
            data: Some(frame::Data::Raw(RawImage::default())),
            ..Default::default()
        };
        assert!(is_h264(&chunk));
        assert!(
            is_h264(&flush),
            "a flush with no data ends the H.264 stream"
        );
        assert!(!is_h264(&picture));
        assert!(
            !is_h264(&Frame::default()),
            "no data, no flush: a bad frame"
        );
    }

    #[test]
    fn the_client_is_read_while_the_unanswered_frames_hold_less_than_the_limit() {
        let frame = |w: u32, h: u32| Frame {
            data: Some(frame::Data::Raw(RawImage {
                width: w,
                height: h,
                data: vec![0; 4].into(),
                ..Default::default()
            })),
            ..Default::default()
        };
        // Raw pixels count as converted (3 bytes a pixel), whatever the
        // message carries; a frame in a region counts nothing.
        assert_eq!(frame_bytes(&frame(1280, 720)), 2_764_800);
        assert_eq!(frame_bytes(&frame(u32::MAX, u32::MAX)), u64::MAX);
        let in_region = Frame {
            data: Some(frame::Data::Raw(RawImage {
                width: 1280,
                height: 720,
                shm: Some(SharedMemoryRef::default()),
                ..Default::default()
            })),
            ..Default::default()
        };
        assert_eq!(frame_bytes(&in_region), 0);
        let chunk = Frame {
            data: Some(frame::Data::H264(vec![0; 1000].into())),
            ..Default::default()
        };
        assert_eq!(frame_bytes(&chunk), 1000);

        let mut held = Held::new(64, 8 << 20, false);
        for _ in 0..3 {
            assert!(held.may_read());
            held.sent(2_764_800);
        }
        assert!(held.may_read(), "8 294 400 bytes held, under 8 MiB");
        held.sent(2_764_800);
        assert!(!held.may_read(), "11 059 200 bytes held");
        held.answered(true);
        assert!(!held.may_read(), "a chunk's first picture frees nothing");
        held.answered(false);
        assert!(held.may_read(), "one frame answered");
        // DROP_OLDEST reads on up to twice the bytes.
        let mut held = Held::new(64, 8 << 20, true);
        for _ in 0..7 {
            held.sent(2_764_800);
        }
        assert!(!held.may_read(), "19 353 600 bytes held, over 16 MiB");
        // An answer with nothing held left is harmless, and absurd sizes
        // saturate without wrapping.
        let mut held = Held::new(2, 1, false);
        held.answered(false);
        assert!(held.may_read());
        held.sent(u64::MAX);
        held.sent(5);
        held.answered(false);
        held.answered(false);
        assert!(held.may_read(), "nothing held");
    }
}
