//! MediaPipe's pose detector (`PoseDetectionCpu`): the frame letterboxed
//! into 224x224 exactly as `ImageToTensorCalculator` does it (a
//! perspective warp of the padded frame, zero border, −1..1), 2254 SSD
//! anchors, boxes with 4 keypoints (hip centre, full-body scale point,
//! shoulder centre, upper-body scale point), weighted NMS at 0.3, the
//! letterbox removed (`DetectionLetterboxRemovalCalculator`). Unlike
//! `detect::Ssd` (a resize, then padding) its input is the graph's to the
//! pixel, because the landmark region hangs on two keypoints and a
//! keypoint that is off by a few pixels turns the region.

use std::path::Path;

use litert::{Compiled, HW_CPU, Runtime};
use opencv::core::{self, Mat};
use opencv::prelude::*;
use sidecar_proto::v1::SsdOptions;
use worker_runtime::WorkerError;

use crate::error::lite_error;
use crate::pipeline::pose::{Crop, NormRect, crop_rgb, floats};
use crate::ssd::{self, Anchor, Raw};

const FIELD: &str = "pipeline.pose_detection";

/// MediaPipe's pose detector configuration (`PoseDetectionCpu`).
pub fn options() -> SsdOptions {
    SsdOptions {
        input_width: 224,
        input_height: 224,
        min_scale: 0.148_437_5,
        max_scale: 0.75,
        anchor_offset_x: 0.5,
        anchor_offset_y: 0.5,
        strides: vec![8, 16, 32, 32, 32],
        aspect_ratios: vec![1.0],
        fixed_anchor_size: true,
        interpolated_scale_aspect_ratio: 1.0,
        num_classes: 1,
        num_keypoints: 4,
        x_scale: 224.0,
        y_scale: 224.0,
        w_scale: 224.0,
        h_scale: 224.0,
        score_clipping_thresh: 100.0,
        labels: vec!["person".into()],
    }
}

/// The pose detector, compiled for the CPU.
pub struct Detector {
    compiled: Compiled,
    options: SsdOptions,
    anchors: Vec<Anchor>,
    boxes: usize,
    scores: usize,
}

impl std::fmt::Debug for Detector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("pose_detection::Detector")
            .field("anchors", &self.anchors.len())
            .finish_non_exhaustive()
    }
}

impl Detector {
    /// Loads `path` as `pipeline.pose_detection`: float32 input
    /// [1, 224, 224, 3], outputs [1, 2254, 12] boxes and [1, 2254, 1]
    /// scores.
    pub fn load(lib: &Path, path: &Path, threads: u32) -> Result<Detector, WorkerError> {
        let compiled = Runtime::load(lib)
            .map_err(|e| WorkerError::unavailable(e.to_string()))?
            .model(path)
            .and_then(|m| m.compile(HW_CPU, threads))
            .map_err(|e| WorkerError::invalid(format!("{FIELD}: LiteRT could not load it: {e}")))?;
        let options = options();
        let anchors = ssd::anchors(&options);
        let n = anchors.len() as i32;
        let input = compiled
            .input_desc
            .first()
            .map(|d| (&d.shape, d.element_type));
        let shapes: Vec<&Vec<i32>> = compiled.output_desc.iter().map(|d| &d.shape).collect();
        let find = |last: i32| shapes.iter().position(|s| s.as_slice() == [1, n, last]);
        let (Some((shape, 1)), Some(boxes), Some(scores)) = (input, find(12), find(1)) else {
            return Err(WorkerError::invalid(format!(
                "{FIELD}: the model takes {input:?} (shape, type) and gives {shapes:?}; a pose detector takes float32 [1, 224, 224, 3] and gives [1, {n}, 12] boxes and [1, {n}, 1] scores"
            )));
        };
        if shape.as_slice() != [1, 224, 224, 3] {
            return Err(WorkerError::invalid(format!(
                "{FIELD}: the model's input is {shape:?}; a pose detector takes [1, 224, 224, 3]"
            )));
        }
        Ok(Detector {
            compiled,
            options,
            anchors,
            boxes,
            scores,
        })
    }

    /// The people in a BGR frame scoring at least `min_score`, best
    /// first, normalised to the frame; keypoints may lie outside it.
    pub fn detect(&mut self, frame: &Mat, min_score: f32) -> Result<Vec<Raw>, WorkerError> {
        let size = (frame.cols() as f32, frame.rows() as f32);
        let whole = NormRect {
            x: 0.5,
            y: 0.5,
            w: 1.0,
            h: 1.0,
            rotation: 0.0,
        };
        let spec = Crop {
            width: 224,
            height: 224,
            keep_aspect: true,
            border: core::BORDER_CONSTANT,
            range: (-1.0, 1.0),
        };
        let mut cropped = Err(WorkerError::internal("the detector's input was not written"));
        self.compiled
            .write_input(0, |buf| cropped = crop_rgb(frame, &whole, size, &spec, buf))
            .map_err(lite_error)?;
        let [left, top, right, bottom] = cropped?.pad;
        self.compiled.run().map_err(lite_error)?;
        let boxes = self
            .compiled
            .read_output(self.boxes, floats)
            .map_err(lite_error)?;
        let scores = self
            .compiled
            .read_output(self.scores, floats)
            .map_err(lite_error)?;
        let raw = ssd::decode(&self.options, &self.anchors, &boxes, &scores, min_score);
        let (sx, sy) = (1.0 - left - right, 1.0 - top - bottom);
        let x = |v: f32| (v - left) / sx;
        let y = |v: f32| (v - top) / sy;
        Ok(ssd::weighted_nms(raw, 0.3)
            .into_iter()
            .map(|d| Raw {
                xmin: x(d.xmin),
                ymin: y(d.ymin),
                xmax: x(d.xmax),
                ymax: y(d.ymax),
                keypoints: d.keypoints.iter().map(|&(kx, ky)| (x(kx), y(ky))).collect(),
                ..d
            })
            .collect())
    }
}
