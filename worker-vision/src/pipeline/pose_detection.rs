//! MediaPipe's pose detector (`PoseDetectionCpu`): the frame letterboxed
//! into 224x224 exactly as `ImageToTensorCalculator` does it (`roi`'s
//! affine crop of the padded frame, zero border, −1..1), 2254 SSD anchors,
//! boxes with 4 keypoints (hip centre, full-body scale point, shoulder
//! centre, upper-body scale point), weighted NMS at 0.3, the letterbox
//! removed (`DetectionLetterboxRemovalCalculator`). Unlike `detect::Ssd`
//! (a resize, then padding) the input is the graph's to the pixel: the
//! landmark region hangs on two keypoints, and keypoints a few pixels off
//! turn a region of 2.5 frame widths enough to miss MediaPipe's landmarks
//! by 1.5 % of the diagonal.

use std::path::Path;
use std::sync::Arc;

use litert::Runtime;
use opencv::core::Mat;
use sidecar_proto::v1::SsdOptions;
use worker_runtime::WorkerError;

use super::model::Model;
use super::roi::{Border, Region, TensorSpec};
use crate::ssd::{self, Anchor, Raw};

/// The detector's input.
pub const INPUT: TensorSpec = TensorSpec {
    width: 224,
    height: 224,
    range: (-1.0, 1.0),
    border: Border::Zero,
    keep_aspect: true,
};

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

/// The pose detector, compiled.
#[derive(Debug)]
pub struct Detector {
    model: Model,
    options: SsdOptions,
    anchors: Vec<Anchor>,
}

impl Detector {
    /// Loads `path` as `pipeline.pose_detection`: float32 input
    /// [1, 224, 224, 3], outputs [1, 2254, 12] boxes and [1, 2254, 1]
    /// scores.
    pub fn load(rt: &Arc<Runtime>, path: &Path, threads: u32) -> Result<Detector, WorkerError> {
        let options = options();
        let anchors = ssd::anchors(&options);
        let n = anchors.len() as i32;
        let model = Model::load(
            rt,
            path,
            threads,
            "pipeline.pose_detection",
            "a pose detector",
            (&[1, 224, 224, 3], &[&[1, n, 12], &[1, n, 1]]),
        )?;
        Ok(Detector {
            model,
            options,
            anchors,
        })
    }

    /// The people in a BGR frame scoring at least `min_score`, best
    /// first, normalised to the frame; keypoints may lie outside it.
    pub fn detect(&mut self, frame: &Mat, min_score: f32) -> Result<Vec<Raw>, WorkerError> {
        let crop = self.model.input(frame, &Region::whole(), &INPUT)?;
        self.model.run()?;
        let boxes = self.model.output(0)?;
        let scores = self.model.output(1)?;
        let raw = ssd::decode(&self.options, &self.anchors, &boxes, &scores, min_score);
        let lb = crop.letterbox;
        let p = |x: f32, y: f32| lb.remove(x, y);
        Ok(ssd::weighted_nms(raw, 0.3)
            .into_iter()
            .map(|d| {
                let (xmin, ymin) = p(d.xmin, d.ymin);
                let (xmax, ymax) = p(d.xmax, d.ymax);
                Raw {
                    xmin,
                    ymin,
                    xmax,
                    ymax,
                    keypoints: d.keypoints.iter().map(|&(x, y)| p(x, y)).collect(),
                    ..d
                }
            })
            .collect())
    }
}
