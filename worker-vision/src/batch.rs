//! ProcessBatch as work the serve loop steps through one image at a time,
//! so that between two images the loop reads the channel: a CANCEL stops
//! the batch at once (the client went away, or the supervisor gave up at
//! the deadline), and the deadline is checked before each image and each
//! detector run. A batch holds at most `max_batch_images` images.

use std::time::Instant;

use prost::Message;
use sidecar_proto::v1::{
    FrameTimings, Image, ProcessBatchRequest, ProcessBatchResponse, ProcessResponse, vision_task,
};
use worker_runtime::{Code, Resolved, WorkerError, deadline};

use crate::image::to_bgr;
use crate::tasks::{self, Prepared, Served};

/// A ProcessBatch call under way.
#[derive(Debug)]
pub struct Batch {
    /// Its request id.
    pub id: u64,
    deadline_ms: i64,
    task: vision_task::Task,
    prepared: Prepared,
    images: Vec<Image>,
    /// The request's shared-memory regions (kept open until it ends).
    regions: Resolved,
    results: Vec<ProcessResponse>,
    /// The encoded size of the answer so far.
    answer_bytes: usize,
}

impl Batch {
    /// Checks a ProcessBatch request against the model and its limits.
    pub fn start(
        id: u64,
        deadline_ms: i64,
        req: ProcessBatchRequest,
        regions: Resolved,
        s: &Served,
    ) -> Result<Batch, WorkerError> {
        let n = req.images.len();
        let max = s.limits.max_batch_images;
        if n == 0 || n > max as usize {
            return Err(WorkerError::invalid(format!(
                "images holds {n} images; 1..{max} are allowed (max_batch_images)"
            )));
        }
        let task = req
            .task
            .as_ref()
            .ok_or_else(|| WorkerError::invalid("task is required"))
            .and_then(tasks::task_of)?
            .clone();
        if let vision_task::Task::Tracking(_) = task {
            return Err(WorkerError::invalid(
                "tracking is a stream task; it is not allowed in ProcessBatch",
            ));
        }
        tasks::check(&task, s)?;
        let prepared = Prepared::new(std::slice::from_ref(&task), &s.limits)?;
        Ok(Batch {
            id,
            deadline_ms,
            task,
            prepared,
            images: req.images,
            regions,
            results: Vec::with_capacity(n),
            answer_bytes: 0,
        })
    }

    /// Runs the task on the next image; the answer once the last is done.
    /// An answer past `max_answer` bytes (what one answer frame of the
    /// channel carries) fails at the image that passes it, not after the
    /// whole batch was computed and held.
    pub fn step(
        &mut self,
        s: &mut Served,
        max_answer: usize,
    ) -> Result<Option<ProcessBatchResponse>, WorkerError> {
        let i = self.results.len();
        let Some(img) = self.images.get(i) else {
            return Ok(Some(self.answer()));
        };
        deadline::check(self.deadline_ms)?;
        let at = format!("images[{i}]");
        let started = Instant::now();
        let frame = to_bgr(img, &at, &s.limits, &self.regions)?;
        let decoded = started.elapsed();
        let mut r = ProcessResponse {
            frame_index: i as u64,
            ..Default::default()
        };
        // Images of a batch are independent (static-image mode): no
        // smoothing or tracking across them, the detectors on every image.
        self.prepared.still();
        tasks::run(
            s,
            std::slice::from_ref(&self.task),
            &mut self.prepared,
            &frame,
            &mut r,
            &at,
            self.deadline_ms,
        )?;
        r.timings = Some(FrameTimings {
            decode_us: decoded.as_micros() as u64,
            process_us: (started.elapsed() - decoded).as_micros() as u64,
            total_us: started.elapsed().as_micros() as u64,
        });
        // Its share of the answer: the result and its field's tag and length.
        self.answer_bytes += r.encoded_len() + 11;
        if self.answer_bytes > max_answer {
            return Err(WorkerError::new(
                Code::ResourceExhausted,
                format!(
                    "{} (it passed that at {at} of {})",
                    crate::serve::too_large(self.answer_bytes, max_answer),
                    self.images.len()
                ),
            ));
        }
        self.results.push(r);
        // The image's bytes are not needed again.
        self.images[i] = Image::default();
        if self.results.len() == self.images.len() {
            return Ok(Some(self.answer()));
        }
        Ok(None)
    }

    fn answer(&mut self) -> ProcessBatchResponse {
        ProcessBatchResponse {
            results: std::mem::take(&mut self.results),
        }
    }
}
