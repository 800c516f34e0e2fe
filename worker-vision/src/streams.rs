//! Process streams: per-stream state (tasks, waiting frames, overflow
//! policy, frame numbering), frames taken round-robin across streams so a
//! busy stream does not starve the others. H.264 pictures are numbered
//! consecutively in output order from the first chunk's index, whatever
//! the chunking and flushes.
//!
//! What waiting frames hold is bounded twice: by `max_pending_frames` and
//! by the model's `max_pending_bytes` (converted pixels, encoded files
//! and H.264 chunks given inline): a frame is taken while the frames
//! waiting hold less, so they hold at most that plus one frame (which the
//! image limits bound). The supervisor stops reading a stream at the same
//! figures, so a client that keeps to flow control never meets the
//! refusal here; it is the backstop. Frames whose bytes lie in a client's region hold
//! nothing while they wait: they are read in their turn (the request's
//! region handles keep the object open, so an unregister in between does
//! not pull it away).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use opencv::core::{Mat, MatTraitConst};

use sidecar_proto::v1::{
    Frame, FrameTimings, Image, OverflowPolicy, ProcessResponse, RawImage, SharedMemoryRef,
    StreamConfig, frame, image, vision_task,
};
use worker_runtime::{Code, Resolved, WorkerError};

use crate::h264::H264;
use crate::image::{read_encoded, to_bgr};
use crate::limits::Limits;
use crate::tasks::{self, Prepared, Served};

/// Most frames a stream may keep waiting.
const MAX_PENDING: u32 = 64;

/// A frame waiting its turn, no longer tied to the message it came in
/// (whose bytes may lie in the channel's shared memory).
#[derive(Debug)]
struct Waiting {
    index: u64,
    timestamp_us: i64,
    data: Data,
    arrived: Instant,
    /// The frame's bytes in a region, as the frame named them: read in
    /// the frame's turn, so every result of it releases them.
    released: Option<SharedMemoryRef>,
    /// What the frame holds while it waits.
    bytes: usize,
}

#[derive(Debug)]
enum Data {
    /// Raw pixels, converted to BGR on arrival straight from the message
    /// (their one copy), or why they could not be; and how long it took.
    Pixels(Result<Mat, WorkerError>, Duration),
    /// A JPEG or PNG, decoded in its turn.
    Encoded(Vec<u8>),
    /// An H.264 chunk (and whether the stream ends after it).
    H264(Vec<u8>, bool),
    /// Raw pixels in a region, read and converted in their turn.
    RawRegion(RawImage, Resolved),
    /// An encoded file in a region, read and decoded in its turn.
    EncodedRegion(SharedMemoryRef, Resolved),
    /// No data: an error in its turn.
    Missing,
}

impl Waiting {
    fn is_h264(&self) -> bool {
        matches!(self.data, Data::H264(..))
    }

    /// The `dropped` result of a frame given up.
    fn dropped(self) -> ProcessResponse {
        ProcessResponse {
            frame_index: self.index,
            timestamp_us: self.timestamp_us,
            dropped: true,
            released: self.released,
            ..Default::default()
        }
    }
}

impl Data {
    /// The bytes this data holds while it waits.
    fn bytes(&self) -> usize {
        match self {
            Data::Pixels(Ok(mat), _) => mat.total() * mat.elem_size().unwrap_or(1),
            Data::Encoded(b) | Data::H264(b, _) => b.len(),
            Data::Pixels(Err(_), _)
            | Data::RawRegion(..)
            | Data::EncodedRegion(..)
            | Data::Missing => 0,
        }
    }
}

/// One open stream.
#[derive(Debug)]
pub struct Stream {
    /// Its request id.
    pub id: u64,
    tasks: Vec<vision_task::Task>,
    prepared: Prepared,
    pending: VecDeque<Waiting>,
    max_pending: usize,
    /// Bytes the waiting frames hold (`Waiting::bytes`).
    pending_bytes: usize,
    drop_oldest: bool,
    /// Arrival count, for frames that give no index.
    arrived: u64,
    /// The stream's H.264 decoder, made by its first H.264 chunk.
    h264: Option<H264>,
    /// The next H.264 picture's number: the first chunk's index, then one
    /// more per picture (None before the first chunk).
    pictures: Option<u64>,
    /// The stream call's deadline (Unix ms, 0: none), checked inside a
    /// frame's work.
    deadline_ms: i64,
    /// The client sent its last frame.
    pub closed: bool,
}

impl Stream {
    /// Opens a stream after checking its config.
    pub fn open(
        id: u64,
        deadline_ms: i64,
        config: &StreamConfig,
        served: &Served,
    ) -> Result<Stream, WorkerError> {
        if config.tasks.is_empty() {
            return Err(WorkerError::invalid("tasks must hold at least one task"));
        }
        let mut tasks = Vec::new();
        for t in &config.tasks {
            let task = tasks::task_of(t)?.clone();
            tasks::check(&task, served)?;
            if tasks.iter().any(|k: &vision_task::Task| {
                std::mem::discriminant(k) == std::mem::discriminant(&task)
            }) {
                return Err(WorkerError::invalid(
                    "tasks holds the same kind of task twice",
                ));
            }
            tasks.push(task);
        }
        let max_pending = match config.max_pending_frames {
            0 => 4,
            n if n > MAX_PENDING => {
                return Err(WorkerError::invalid(format!(
                    "max_pending_frames {n} exceeds the limit of {MAX_PENDING}"
                )));
            }
            n => n,
        } as usize;
        let drop_oldest = match OverflowPolicy::try_from(config.overflow) {
            Ok(OverflowPolicy::Unspecified) => false,
            Ok(OverflowPolicy::DropOldest) => true,
            Err(_) => {
                return Err(WorkerError::invalid(format!(
                    "overflow {} is not an OverflowPolicy value",
                    config.overflow
                )));
            }
        };
        Ok(Stream {
            id,
            prepared: Prepared::new(&tasks, &served.limits)?,
            tasks,
            pending: VecDeque::new(),
            max_pending,
            pending_bytes: 0,
            drop_oldest,
            arrived: 0,
            h264: None,
            pictures: None,
            deadline_ms,
            closed: false,
        })
    }

    /// Queues a frame; with DROP_OLDEST a full queue gives up its oldest
    /// frames, whose `dropped` results are returned. H.264 chunks are never
    /// dropped: the pictures after them depend on them. Raw pixels given
    /// inline are converted now and other inline data copied, so nothing of
    /// the channel's memory is kept; a frame in a region keeps its
    /// request's region handles (the objects stay open) and is read in its
    /// turn. Each result of a region frame, a dropped one's included,
    /// releases its bytes.
    ///
    /// The frame is taken while the waiting frames hold less than
    /// `max_pending_bytes`. Under DROP_OLDEST the oldest frames ahead of
    /// any H.264 chunk are first dropped until the new one fits, when
    /// dropping them can make room at all (otherwise none is dropped), and
    /// the frame is taken while they hold less than twice the limit (as
    /// the supervisor reads such a stream on to twice it). Refused:
    /// RESOURCE_EXHAUSTED, which ends the stream.
    pub fn push(
        &mut self,
        f: Frame,
        limits: &Limits,
        regions: &Resolved,
    ) -> Result<Vec<ProcessResponse>, WorkerError> {
        let arrived = Instant::now();
        let h264 = matches!(f.data, Some(frame::Data::H264(_))) || (f.data.is_none() && f.flush);
        // A picture without an index is numbered by arrival; a chunk's
        // pictures by the decoder.
        let index = if f.index == 0 && !h264 {
            self.arrived
        } else {
            f.index
        };
        let mut released = None;
        let data = match f.data {
            Some(frame::Data::H264(chunk)) => Data::H264(chunk.to_vec(), f.flush),
            None if f.flush => Data::H264(Vec::new(), true),
            Some(frame::Data::Raw(raw)) if raw.shm.is_some() && raw.data.is_empty() => {
                released = raw.shm.clone();
                Data::RawRegion(raw, regions.clone())
            }
            Some(frame::Data::Raw(raw)) => {
                released = raw.shm.clone();
                let image = Image {
                    data: Some(image::Data::Raw(raw)),
                };
                let bgr = to_bgr(&image, &format!("frame {index}"), limits, regions);
                Data::Pixels(bgr, arrived.elapsed())
            }
            Some(frame::Data::Encoded(bytes)) => Data::Encoded(bytes.to_vec()),
            Some(frame::Data::EncodedShm(r)) => {
                released = Some(r.clone());
                Data::EncodedRegion(r, regions.clone())
            }
            None => Data::Missing,
        };
        self.arrived += 1;
        let bytes = data.bytes();
        let budget = limits.max_pending_bytes;
        let mut dropped = Vec::new();
        if self.drop_oldest && self.over(bytes, budget) {
            // What dropping every frame ahead of the first H.264 chunk
            // would free: drop only when that makes room.
            let droppable: usize = self
                .pending
                .iter()
                .take_while(|w| !w.is_h264())
                .map(|w| w.bytes)
                .sum();
            if ((self.pending_bytes - droppable) as u64) < budget {
                while self.over(bytes, budget)
                    && !self.pending.front().is_some_and(Waiting::is_h264)
                {
                    dropped.extend(self.pop().map(Waiting::dropped));
                }
            }
        }
        // The supervisor reads a DROP_OLDEST stream on up to twice the
        // limit (what cannot be dropped, H.264 chunks and what waits
        // behind them, may fill that): refused only past what it sends.
        let refuse_at = if self.drop_oldest {
            budget.saturating_mul(2)
        } else {
            budget
        };
        if self.pending_bytes as u64 >= refuse_at {
            return Err(WorkerError::new(
                Code::ResourceExhausted,
                format!(
                    "frame {index}: the {} frames waiting hold {} bytes, the stream's limit ({refuse_at} bytes: vision.max_pending_bytes {budget}{}); send smaller frames or fewer at once (max_pending_frames {}), put them in a shared-memory region (they then wait without their bytes), or use overflow DROP_OLDEST",
                    self.pending.len(),
                    self.pending_bytes,
                    if self.drop_oldest {
                        ", twice that under DROP_OLDEST, as H.264 chunks are never dropped"
                    } else {
                        ""
                    },
                    self.max_pending
                ),
            ));
        }
        self.pending_bytes += bytes;
        self.pending.push_back(Waiting {
            index,
            timestamp_us: f.timestamp_us,
            data,
            arrived,
            released,
            bytes,
        });
        let oldest_is_h264 = self.pending.front().is_some_and(Waiting::is_h264);
        if self.pending.len() > self.max_pending && self.drop_oldest && !oldest_is_h264 {
            dropped.extend(self.pop().map(Waiting::dropped));
        }
        Ok(dropped)
    }

    /// Whether a frame of `bytes` does not fit beside the waiting ones.
    fn over(&self, bytes: usize, budget: u64) -> bool {
        !self.pending.is_empty() && (self.pending_bytes.saturating_add(bytes) as u64) > budget
    }

    /// Takes the oldest waiting frame.
    fn pop(&mut self) -> Option<Waiting> {
        let w = self.pending.pop_front()?;
        self.pending_bytes -= w.bytes;
        Some(w)
    }

    /// Frames waiting.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Processes the oldest waiting frame: one result, or for an H.264
    /// chunk one per picture it completed (maybe none). An error ends the
    /// stream and names the frame.
    pub fn step(
        &mut self,
        served: &mut Served,
    ) -> Option<Result<Vec<ProcessResponse>, WorkerError>> {
        let w = self.pop()?;
        let started = Instant::now();
        let frame =
            |index: u64, mat: Result<Mat, WorkerError>, decoded: Duration| (mat, index, decoded);
        let (mat, index, decoded) = match w.data {
            Data::Pixels(bgr, took) => frame(w.index, bgr, took),
            Data::Encoded(bytes) => {
                let image = Image {
                    data: Some(image::Data::Encoded(bytes.into())),
                };
                let mat = to_bgr(
                    &image,
                    &format!("frame {}", w.index),
                    &served.limits,
                    &Resolved::default(),
                );
                frame(w.index, mat, started.elapsed())
            }
            Data::RawRegion(ref raw, ref regions) => {
                let image = Image {
                    data: Some(image::Data::Raw(raw.clone())),
                };
                let at = format!("frame {}", w.index);
                frame(
                    w.index,
                    to_bgr(&image, &at, &served.limits, regions),
                    started.elapsed(),
                )
            }
            Data::EncodedRegion(ref r, ref regions) => {
                let field = format!("frame {}.encoded_shm", w.index);
                let mat = read_encoded(r, &field, &served.limits, regions).and_then(|bytes| {
                    let image = Image {
                        data: Some(image::Data::Encoded(bytes.into())),
                    };
                    to_bgr(
                        &image,
                        &format!("frame {}", w.index),
                        &served.limits,
                        &Resolved::default(),
                    )
                });
                frame(w.index, mat, started.elapsed())
            }
            Data::H264(ref chunk, flush) => {
                return Some(self.decode_h264(served, chunk, flush, &w));
            }
            Data::Missing => {
                let at = format!("frame {}", w.index);
                frame(
                    w.index,
                    Err(WorkerError::invalid(format!("{at}: no frame data"))),
                    Duration::ZERO,
                )
            }
        };
        Some(mat.and_then(|mat| {
            let mut one = One {
                served,
                tasks: &self.tasks,
                prepared: &mut self.prepared,
                deadline_ms: self.deadline_ms,
                timestamp_us: w.timestamp_us,
                arrived: w.arrived,
            };
            one.run(index, &mat, decoded).map(|mut r| {
                r.released = w.released;
                vec![r]
            })
        }))
    }

    /// Feeds an H.264 chunk to the stream's decoder and runs the tasks on
    /// each picture it completes as it comes (so at most one decoded
    /// picture is alive), numbered on from the stream's last picture.
    fn decode_h264(
        &mut self,
        served: &mut Served,
        chunk: &[u8],
        flush: bool,
        w: &Waiting,
    ) -> Result<Vec<ProcessResponse>, WorkerError> {
        let next = *self.pictures.get_or_insert(w.index);
        let at = format!("frame {next} (H.264 chunk)");
        if self.h264.is_none() {
            self.h264 = Some(H264::new(served.limits)?);
        }
        let Some(decoder) = self.h264.as_mut() else {
            return Err(WorkerError::internal("H.264 decoder"));
        };
        let mut one = One {
            served,
            tasks: &self.tasks,
            prepared: &mut self.prepared,
            deadline_ms: self.deadline_ms,
            timestamp_us: w.timestamp_us,
            arrived: w.arrived,
        };
        let mut out = Vec::new();
        let mut index = next;
        let mut last = Instant::now();
        decoder.feed(chunk, flush, &at, |mat| {
            let r = one.run(index, &mat, last.elapsed())?;
            index += 1;
            out.push(r);
            last = Instant::now();
            Ok(())
        })?;
        self.pictures = Some(index);
        Ok(out)
    }
}

/// What running a stream's tasks on one picture needs.
struct One<'a> {
    served: &'a mut Served,
    tasks: &'a [vision_task::Task],
    prepared: &'a mut Prepared,
    deadline_ms: i64,
    timestamp_us: i64,
    arrived: Instant,
}

impl One<'_> {
    /// The picture's result; `decoded`: how long getting its pixels took.
    fn run(
        &mut self,
        index: u64,
        mat: &Mat,
        decoded: Duration,
    ) -> Result<ProcessResponse, WorkerError> {
        let t0 = Instant::now();
        let mut r = ProcessResponse {
            frame_index: index,
            timestamp_us: self.timestamp_us,
            ..Default::default()
        };
        tasks::run(
            self.served,
            self.tasks,
            self.prepared,
            mat,
            &mut r,
            &format!("frame {index}"),
            self.deadline_ms,
        )?;
        r.timings = Some(FrameTimings {
            decode_us: decoded.as_micros() as u64,
            process_us: t0.elapsed().as_micros() as u64,
            total_us: self.arrived.elapsed().as_micros() as u64,
        });
        Ok(r)
    }
}
