//! The face mesh's models, loaded once per worker (`load_model`) and
//! shared by every stream: the face landmark model (`face_landmark.tflite`,
//! 468 points on a 192x192 crop), the optional face detector of its own
//! (`pipeline.face_detection`, BlazeFace short or full range) and the
//! optional iris model. Each is checked against its role when it loads: a
//! file that does not fit is INVALID_ARGUMENT naming the field.

use std::path::Path;
use std::sync::Arc;

use litert::{Compiled, HW_CPU, Runtime, TensorDesc};
use opencv::core::Mat;
use sidecar_proto::v1::PipelineModels;
use worker_runtime::WorkerError;

use crate::detect::Ssd;
use crate::error::lite_error;
use crate::pipeline::face_roi::{self as roi, Roi};
use crate::pipeline::iris::IrisModel;
use crate::ssd;

/// Points of the face mesh.
pub const MESH_POINTS: usize = 468;
/// Side of the landmark model's square input.
pub const MESH_INPUT: i32 = 192;
/// LiteRT's float32 element type.
const FLOAT32: i32 = 1;

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

/// Reads a model's signature, naming the pipeline field on failure.
fn signature(
    rt: &Arc<Runtime>,
    path: &Path,
    field: &str,
) -> Result<(litert::Model, Vec<TensorDesc>, Vec<TensorDesc>), WorkerError> {
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
    Ok((model, inputs, outputs))
}

/// Compiles a checked model for the CPU.
pub(crate) fn compile(
    model: litert::Model,
    path: &Path,
    field: &str,
    threads: u32,
) -> Result<Compiled, WorkerError> {
    model.compile(HW_CPU, threads).map_err(|e| {
        WorkerError::invalid(format!(
            "pipeline.{field}: LiteRT could not compile {}: {e}",
            path.display()
        ))
    })
}

/// Loads a checked model: its one float32 input is `input`, and each of
/// `outputs` (element counts) is one of its outputs; the indices of those
/// outputs.
pub(crate) fn load_checked(
    rt: &Arc<Runtime>,
    path: &Path,
    field: &str,
    threads: u32,
    input: [i32; 4],
    outputs: &[usize],
) -> Result<(Compiled, Vec<usize>), WorkerError> {
    let (model, ins, outs) = signature(rt, path, field)?;
    let shapes = |d: &[TensorDesc]| d.iter().map(|t| t.shape.clone()).collect::<Vec<_>>();
    if ins.len() != 1 || ins[0].shape != input || ins[0].element_type != FLOAT32 {
        return Err(WorkerError::invalid(format!(
            "pipeline.{field}: {}'s inputs are {:?}; this role takes one float32 {input:?}",
            path.display(),
            shapes(&ins)
        )));
    }
    let count = |t: &TensorDesc| {
        t.shape
            .iter()
            .map(|&d| d.max(0) as usize)
            .product::<usize>()
    };
    let mut found = Vec::new();
    for &n in outputs {
        match outs
            .iter()
            .position(|t| count(t) == n && t.element_type == FLOAT32)
        {
            Some(i) => found.push(i),
            None => {
                return Err(WorkerError::invalid(format!(
                    "pipeline.{field}: {}'s outputs are {:?}; this role needs float32 outputs of {outputs:?} values",
                    path.display(),
                    shapes(&outs)
                )));
            }
        }
    }
    if outs.len() != outputs.len() {
        return Err(WorkerError::invalid(format!(
            "pipeline.{field}: {} has {} outputs {:?}; this role has {} ({outputs:?} values)",
            path.display(),
            outs.len(),
            shapes(&outs),
            outputs.len()
        )));
    }
    Ok((compile(model, path, field, threads)?, found))
}

/// A face detector for `pipeline.face_detection`: BlazeFace short range
/// (128x128) or full range (192x192), told apart by the input size.
fn load_face_detector(
    rt: &Arc<Runtime>,
    lib: &Path,
    path: &Path,
    threads: u32,
) -> Result<Ssd, WorkerError> {
    let (_, ins, _) = signature(rt, path, "face_detection")?;
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

/// The face landmark model: 468 points (x, y, z in input pixels) and a
/// face flag (a logit).
pub struct FaceLandmark {
    compiled: Compiled,
    mesh: usize,
    flag: usize,
}

impl std::fmt::Debug for FaceLandmark {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaceLandmark").finish_non_exhaustive()
    }
}

/// The landmark model's answer for one region.
#[derive(Debug, Clone)]
pub struct MeshOutput {
    /// Points normalised to the crop (x, y in 0..1 across it; z divided by
    /// the input width, as MediaPipe's TensorsToLandmarks does).
    pub points: Vec<[f32; 3]>,
    /// Sigmoid of the face flag.
    pub presence: f32,
}

impl FaceLandmark {
    /// Loads `face_landmark.tflite` (input [1, 192, 192, 3], outputs 1404
    /// and 1 values). The attention variant is refused by name: it needs
    /// MediaPipe's custom ops, which LiteRT lacks.
    pub fn load(rt: &Arc<Runtime>, path: &Path, threads: u32) -> Result<FaceLandmark, WorkerError> {
        let (_, _, outs) = signature(rt, path, "face_landmark")?;
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
        let (compiled, found) = load_checked(
            rt,
            path,
            "face_landmark",
            threads,
            [1, MESH_INPUT, MESH_INPUT, 3],
            &[MESH_POINTS * 3, 1],
        )?;
        Ok(FaceLandmark {
            compiled,
            mesh: found[0],
            flag: found[1],
        })
    }

    /// Runs the model on `region` of a BGR frame (MediaPipe's
    /// ImageToTensor: the rotated crop, border replicated, RGB in 0..1).
    pub fn run(&mut self, frame: &Mat, region: &Roi) -> Result<MeshOutput, WorkerError> {
        let crop = roi::crop(frame, region, MESH_INPUT, MESH_INPUT, false)?;
        roi::write_rgb(&mut self.compiled, 0, &crop, 0.0, 1.0)?;
        self.compiled.run().map_err(lite_error)?;
        let raw = roi::read_floats(&self.compiled, self.mesh)?;
        let flag = roi::read_floats(&self.compiled, self.flag)?;
        let side = MESH_INPUT as f32;
        let points = raw
            .chunks_exact(3)
            .map(|p| [p[0] / side, p[1] / side, p[2] / side])
            .collect();
        let logit = flag.first().copied().unwrap_or(f32::MIN);
        Ok(MeshOutput {
            points,
            presence: 1.0 / (1.0 + (-logit).exp()),
        })
    }
}
