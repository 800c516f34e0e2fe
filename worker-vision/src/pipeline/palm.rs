//! MediaPipe's palm detector (`palm_detection_{lite,full}.tflite`) as its
//! graph (`palm_detection_cpu`) runs it: the whole frame letterboxed into
//! 192x192 (black border, RGB 0..1), 2016 SSD anchors, boxes and 7
//! keypoints decoded, weighted NMS at IoU 0.3, the letterbox removed.
//! Anchors, decoding and NMS are `ssd`'s.

use std::path::Path;
use std::sync::Arc;

use litert::Runtime;
use opencv::core::Mat;
use sidecar_proto::v1::SsdOptions;
use worker_runtime::WorkerError;

use super::model::Model;
use super::roi::{Border, Region, TensorSpec};
use crate::ssd::{self, Anchor};

/// The detector's input (`ImageToTensorCalculator` of the palm graph).
pub const INPUT: TensorSpec = TensorSpec {
    width: 192,
    height: 192,
    range: (0.0, 1.0),
    border: Border::Zero,
    keep_aspect: true,
};

/// IoU above which weighted NMS merges two palms.
const NMS_IOU: f32 = 0.3;

/// Anchors and decoding of the palm graph (`SsdAnchorsCalculator`,
/// `TensorsToDetectionsCalculator`): boxes x/y/w/h then 7 keypoints.
pub fn options() -> SsdOptions {
    SsdOptions {
        input_width: 192,
        input_height: 192,
        min_scale: 0.148_437_5,
        max_scale: 0.75,
        anchor_offset_x: 0.5,
        anchor_offset_y: 0.5,
        strides: vec![8, 16, 16, 16],
        aspect_ratios: vec![1.0],
        fixed_anchor_size: true,
        interpolated_scale_aspect_ratio: 1.0,
        num_classes: 1,
        num_keypoints: 7,
        x_scale: 192.0,
        y_scale: 192.0,
        w_scale: 192.0,
        h_scale: 192.0,
        score_clipping_thresh: 100.0,
        labels: vec![],
    }
}

/// A palm, normalised to the frame.
#[derive(Debug, Clone, PartialEq)]
pub struct PalmDetection {
    /// Left, top, right, bottom.
    pub bounds: (f32, f32, f32, f32),
    /// Score, 0..1.
    pub score: f32,
    /// The 7 keypoints (0: wrist centre, 2: middle finger MCP).
    pub keypoints: Vec<(f32, f32)>,
}

/// The palm detector, compiled.
#[derive(Debug)]
pub struct Palm {
    model: Model,
    options: SsdOptions,
    anchors: Vec<Anchor>,
}

impl Palm {
    /// Loads `path` (`pipeline.palm_detection`) and checks its tensors.
    pub fn load(rt: &Arc<Runtime>, path: &Path, threads: u32) -> Result<Palm, WorkerError> {
        let options = options();
        let anchors = ssd::anchors(&options);
        let n = anchors.len() as i32;
        let model = Model::load(
            rt,
            path,
            threads,
            "pipeline.palm_detection",
            "a palm detector",
            (&[1, 192, 192, 3], &[&[1, n, 18], &[1, n, 1]]),
        )?;
        Ok(Palm {
            model,
            options,
            anchors,
        })
    }

    /// The palms in a BGR frame scoring at least `min_score`, best first.
    pub fn detect(
        &mut self,
        frame: &Mat,
        min_score: f32,
    ) -> Result<Vec<PalmDetection>, WorkerError> {
        let crop = self.model.input(frame, &Region::whole(), &INPUT)?;
        self.model.run()?;
        let boxes = self.model.output(0)?;
        let scores = self.model.output(1)?;
        let raw = ssd::decode(&self.options, &self.anchors, &boxes, &scores, min_score);
        Ok(ssd::weighted_nms(raw, NMS_IOU)
            .into_iter()
            .map(|d| {
                let (x0, y0) = crop.to_frame(d.xmin, d.ymin);
                let (x1, y1) = crop.to_frame(d.xmax, d.ymax);
                PalmDetection {
                    bounds: (x0, y0, x1, y1),
                    score: d.score,
                    keypoints: d
                        .keypoints
                        .iter()
                        .map(|&(x, y)| crop.to_frame(x, y))
                        .collect(),
                }
            })
            .collect())
    }
}
