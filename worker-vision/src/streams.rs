//! Process streams: per-stream state (tasks, waiting frames, overflow
//! policy, frame numbering), frames taken round-robin across streams so a
//! busy stream does not starve the others.

use std::collections::VecDeque;
use std::time::Instant;

use sidecar_proto::v1::{
    Frame, FrameTimings, Image, OverflowPolicy, ProcessResponse, StreamConfig, frame, image,
    vision_task,
};

use crate::error::VisionError;
use crate::image::to_bgr;
use crate::tasks::{self, Prepared, Served};

/// Most frames a stream may keep waiting.
const MAX_PENDING: u32 = 64;

/// One open stream.
#[derive(Debug)]
pub struct Stream {
    /// Its request id.
    pub id: u64,
    tasks: Vec<vision_task::Task>,
    prepared: Prepared,
    pending: VecDeque<(Frame, Instant)>,
    max_pending: usize,
    drop_oldest: bool,
    /// Arrival count, for frames that give no index.
    arrived: u64,
    /// The client sent its last frame.
    pub closed: bool,
}

impl Stream {
    /// Opens a stream after checking its config.
    pub fn open(id: u64, config: &StreamConfig, served: &Served) -> Result<Stream, VisionError> {
        if config.tasks.is_empty() {
            return Err(VisionError::Invalid(
                "tasks must hold at least one task".into(),
            ));
        }
        let mut tasks = Vec::new();
        for t in &config.tasks {
            let task = tasks::task_of(t)?.clone();
            tasks::check(&task, served)?;
            if tasks.iter().any(|k: &vision_task::Task| {
                std::mem::discriminant(k) == std::mem::discriminant(&task)
            }) {
                return Err(VisionError::Invalid(
                    "tasks holds the same kind of task twice".into(),
                ));
            }
            tasks.push(task);
        }
        let max_pending = match config.max_pending_frames {
            0 => 4,
            n if n > MAX_PENDING => {
                return Err(VisionError::Invalid(format!(
                    "max_pending_frames {n} exceeds the limit of {MAX_PENDING}"
                )));
            }
            n => n,
        } as usize;
        let drop_oldest = match OverflowPolicy::try_from(config.overflow) {
            Ok(OverflowPolicy::Unspecified) => false,
            Ok(OverflowPolicy::DropOldest) => true,
            Err(_) => {
                return Err(VisionError::Invalid(format!(
                    "overflow {} is not an OverflowPolicy value",
                    config.overflow
                )));
            }
        };
        Ok(Stream {
            id,
            prepared: Prepared::new(&tasks)?,
            tasks,
            pending: VecDeque::new(),
            max_pending,
            drop_oldest,
            arrived: 0,
            closed: false,
        })
    }

    /// Queues a frame; with DROP_OLDEST a full queue gives up its oldest
    /// frame, whose `dropped` result is returned.
    pub fn push(&mut self, mut f: Frame) -> Option<ProcessResponse> {
        if f.index == 0 {
            f.index = self.arrived;
        }
        self.arrived += 1;
        self.pending.push_back((f, Instant::now()));
        if self.pending.len() > self.max_pending && self.drop_oldest {
            let (old, _) = self.pending.pop_front()?;
            return Some(ProcessResponse {
                frame_index: old.index,
                timestamp_us: old.timestamp_us,
                dropped: true,
                ..Default::default()
            });
        }
        None
    }

    /// Frames waiting.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Processes the oldest waiting frame. An error ends the stream and
    /// names the frame.
    pub fn step(&mut self, served: &mut Served) -> Option<Result<ProcessResponse, VisionError>> {
        let (f, arrived) = self.pending.pop_front()?;
        let at = format!("frame {}", f.index);
        let image = match f.data {
            Some(frame::Data::Raw(raw)) => Image {
                data: Some(image::Data::Raw(raw)),
            },
            Some(frame::Data::Encoded(bytes)) => Image {
                data: Some(image::Data::Encoded(bytes)),
            },
            Some(frame::Data::H264(_)) => {
                return Some(Err(VisionError::Unimplemented(format!(
                    "{at}: H.264 frames are not served yet; send raw or JPEG/PNG frames"
                ))));
            }
            None => return Some(Err(VisionError::Invalid(format!("{at}: no frame data")))),
        };
        let started = Instant::now();
        let result = to_bgr(&image, &at).and_then(|mat| {
            let decoded = started.elapsed();
            let mut r = ProcessResponse {
                frame_index: f.index,
                timestamp_us: f.timestamp_us,
                ..Default::default()
            };
            tasks::run(served, &self.tasks, &mut self.prepared, &mat, &mut r, &at)?;
            r.timings = Some(FrameTimings {
                decode_us: decoded.as_micros() as u64,
                process_us: (started.elapsed() - decoded).as_micros() as u64,
                total_us: arrived.elapsed().as_micros() as u64,
            });
            Ok(r)
        });
        Some(result)
    }
}
