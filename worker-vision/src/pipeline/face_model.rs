//! The face mesh's models, loaded once per worker (`load_model`) and
//! shared by every stream: the face landmark model (`face_landmark.tflite`,
//! 468 points on a 192x192 crop), the optional face detector of its own
//! (`pipeline.face_detection`, BlazeFace short or full range) and the
//! optional iris model. Each is checked against its role when it loads: a
//! file that does not fit is INVALID_ARGUMENT naming the field.

use std::path::Path;
use std::sync::Arc;

use litert::{Runtime, TensorDesc};
use opencv::core::Mat;
use sidecar_proto::v1::PipelineModels;
use worker_runtime::WorkerError;

use crate::detect::Ssd;
use crate::error::lite_error;
use crate::pipeline::iris::IrisModel;
use crate::pipeline::model::Model;
use crate::pipeline::roi::{Border, Region, TensorSpec};
use crate::ssd;

/// Points of the face mesh.
pub const MESH_POINTS: usize = 468;

/// The face mesh's models.
#[derive(Debug)]
pub struct FaceModels {
    /// `pipeline.face_landmark`.
    pub landmark: FaceLandmark,
    /// `pipeline.face_detection`, when set (else the model's own BlazeFace).
    pub detector: Option<Box<Ssd>>,
    /// `pipeline.iris_landmark`, when set.
    pub iris: Option<IrisModel>,
}

impl FaceModels {
    /// Loads the face mesh's models named in `pipeline`; None when it names
    /// no face landmark model (a face detector or iris model alone is
    /// refused: they serve only the face mesh).
    pub fn load(
        lib: &Path,
        pipeline: Option<&PipelineModels>,
        threads: u32,
    ) -> Result<Option<FaceModels>, WorkerError> {
        let Some(p) = pipeline else {
            return Ok(None);
        };
        if p.face_landmark.is_empty() {
            for (field, v) in [
                ("face_detection", &p.face_detection),
                ("iris_landmark", &p.iris_landmark),
            ] {
                if !v.is_empty() {
                    return Err(WorkerError::invalid(format!(
                        "pipeline.{field} is set ({v}) but pipeline.face_landmark is not: \
                         it serves only the face mesh"
                    )));
                }
            }
            return Ok(None);
        }
        let rt = Runtime::load(lib).map_err(lite_error)?;
        let landmark = FaceLandmark::load(&rt, Path::new(&p.face_landmark), threads)?;
        let detector = if p.face_detection.is_empty() {
            None
        } else {
            Some(Box::new(load_face_detector(
                &rt,
                lib,
                Path::new(&p.face_detection),
                threads,
            )?))
        };
        let iris = if p.iris_landmark.is_empty() {
            None
        } else {
            Some(IrisModel::load(&rt, Path::new(&p.iris_landmark), threads)?)
        };
        Ok(Some(FaceModels {
            landmark,
            detector,
            iris,
        }))
    }
}

/// Reads a model's signature (before compiling it), naming the pipeline
/// field on failure.
fn signature(
    rt: &Arc<Runtime>,
    path: &Path,
    field: &str,
) -> Result<(Vec<TensorDesc>, Vec<TensorDesc>), WorkerError> {
    let model = rt.model(path).map_err(|e| {
        WorkerError::invalid(format!(
            "pipeline.{field}: {} is not a model LiteRT can read: {e}",
            path.display()
        ))
    })?;
    let (_, inputs, outputs) = model.signature().map_err(|e| {
        WorkerError::invalid(format!(
            "pipeline.{field}: {} has no signature LiteRT can read: {e}",
            path.display()
        ))
    })?;
    Ok((inputs, outputs))
}

/// A face detector for `pipeline.face_detection`: BlazeFace short range
/// (128x128) or full range (192x192), told apart by the input size.
fn load_face_detector(
    rt: &Arc<Runtime>,
    lib: &Path,
    path: &Path,
    threads: u32,
) -> Result<Ssd, WorkerError> {
    let (ins, _) = signature(rt, path, "face_detection")?;
    let options = match ins.first().map(|t| t.shape.as_slice()) {
        Some([1, 128, 128, 3]) => ssd::blazeface_short_range(),
        Some([1, 192, 192, 3]) => ssd::blazeface_full_range(),
        _ => {
            return Err(WorkerError::invalid(format!(
                "pipeline.face_detection: {}'s inputs are {:?}; a face detector takes [1, 128, 128, 3] \
                 (BlazeFace short range) or [1, 192, 192, 3] (full range)",
                path.display(),
                ins.iter().map(|t| &t.shape).collect::<Vec<_>>()
            )));
        }
    };
    Ssd::load(lib, path, threads, Some(options))
        .map_err(|e| WorkerError::new(e.code, format!("pipeline.face_detection: {}", e.message)))
}

/// The face landmark model's input (`ImageToTensorCalculator` of
/// `face_landmark_cpu`: the rotated crop stretched to 192x192, RGB 0..1,
/// edges replicated).
pub const MESH_INPUT: TensorSpec = TensorSpec {
    width: 192,
    height: 192,
    range: (0.0, 1.0),
    border: Border::Replicate,
    keep_aspect: false,
};

/// The face landmark model: 468 points (x, y, z in input pixels) and a
/// face flag (a logit).
#[derive(Debug)]
pub struct FaceLandmark {
    model: Model,
}

/// The landmark model's answer for one region.
#[derive(Debug, Clone)]
pub struct MeshOutput {
    /// Points normalised to the frame (x, y); z in the frame's pixels,
    /// scaled like x (MediaPipe's z times the frame width).
    pub points: Vec<[f32; 3]>,
    /// Sigmoid of the face flag.
    pub presence: f32,
}

impl FaceLandmark {
    /// Loads `face_landmark.tflite` (input [1, 192, 192, 3], outputs 1404
    /// and 1 values). The attention variant is refused by name, before
    /// LiteRT tries it: it needs MediaPipe's custom ops, which LiteRT
    /// lacks.
    pub fn load(rt: &Arc<Runtime>, path: &Path, threads: u32) -> Result<FaceLandmark, WorkerError> {
        let (_, outs) = signature(rt, path, "face_landmark")?;
        if outs.len() > 2
            && outs
                .iter()
                .any(|t| t.name.contains("iris") || t.name.contains("mesh_identity"))
        {
            return Err(WorkerError::invalid(format!(
                "pipeline.face_landmark: {} is the attention face mesh \
                 (face_landmark_with_attention.tflite: outputs {:?}); it needs MediaPipe's custom ops \
                 (Landmarks2TransformMatrix, TransformTensorBilinear, TransformLandmarks) that LiteRT \
                 lacks: load face_landmark.tflite, and pipeline.iris_landmark for refined eyes",
                path.display(),
                outs.iter().map(|t| t.name.as_str()).collect::<Vec<_>>()
            )));
        }
        let side = MESH_INPUT.width;
        let model = Model::load(
            rt,
            path,
            threads,
            "pipeline.face_landmark",
            "a face landmark model",
            (
                &[1, side, side, 3],
                &[&[1, 1, 1, MESH_POINTS as i32 * 3], &[1, 1, 1, 1]],
            ),
        )?;
        Ok(FaceLandmark { model })
    }

    /// Runs the model on `region` of a BGR frame and projects its points
    /// back into the frame (LandmarkProjection).
    pub fn run(&mut self, frame: &Mat, region: &Region) -> Result<MeshOutput, WorkerError> {
        let crop = self.model.input(frame, region, &MESH_INPUT)?;
        self.model.run()?;
        let raw = self.model.output(0)?;
        let flag = self.model.output(1)?;
        let side = MESH_INPUT.width as f32;
        let points = raw
            .chunks_exact(3)
            .map(|p| {
                let (x, y) = crop.to_frame(p[0] / side, p[1] / side);
                [x, y, crop.z_to_pixels(p[2] / side)]
            })
            .collect();
        let logit = flag.first().copied().unwrap_or(f32::MIN);
        Ok(MeshOutput {
            points,
            presence: 1.0 / (1.0 + (-logit).exp()),
        })
    }
}
