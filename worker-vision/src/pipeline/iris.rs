//! Iris landmarks for the face mesh (`refine_landmarks`), as MediaPipe's
//! iris graphs do them (`iris_landmark_left_and_right_cpu`): each eye's
//! region is the line between its corners (mesh points 33 → 133 for the
//! eye on the image's left, 362 → 263 for the other), square on its long
//! side, scaled 2.3; `iris_landmark.tflite` runs on the 64x64 crop (the
//! second eye mirrored, as the model knows one eye only) and gives 71 eye
//! contour points and 5 iris points (centre, then 4 on the rim). The iris
//! points are appended to the mesh in MediaPipe's refined order: 468..472
//! for the eye at 33/133, 473..477 for the eye at 362/263. Their z is the
//! mean of the eye corners' z (the iris model's depth is relative to its
//! crop; MediaPipe's refinement also takes an average of the eye's
//! points).

use std::path::Path;
use std::sync::Arc;

use litert::{Compiled, Runtime};
use opencv::core::Mat;
use opencv::prelude::*;
use worker_runtime::WorkerError;

use crate::error::lite_error;
use crate::pipeline::face_model::load_checked;
use crate::pipeline::face_roi::{self as roi, Roi};

/// Side of the iris model's square input.
pub const IRIS_INPUT: i32 = 64;
/// Eye contour points the model gives.
const CONTOUR: usize = 71;
/// Iris points.
const IRIS: usize = 5;
/// Region scale around an eye's corners.
const EYE_SCALE: f32 = 2.3;
/// The eyes' corners in the mesh: the eye on the image's left (not
/// mirrored), then the other (mirrored).
const EYES: [(usize, usize, bool); 2] = [(33, 133, false), (362, 263, true)];
/// The value range of the model's input (MediaPipe's ImageToTensor for the
/// iris model: 0..1).
const RANGE: (f32, f32) = (0.0, 1.0);

/// `iris_landmark.tflite`: input [1, 64, 64, 3]; outputs 213 (contour) and
/// 15 (iris) values.
pub struct IrisModel {
    compiled: Compiled,
    iris: usize,
}

impl std::fmt::Debug for IrisModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IrisModel").finish_non_exhaustive()
    }
}

impl IrisModel {
    /// Loads and checks `pipeline.iris_landmark`.
    pub fn load(rt: &Arc<Runtime>, path: &Path, threads: u32) -> Result<IrisModel, WorkerError> {
        let (compiled, found) = load_checked(
            rt,
            path,
            "iris_landmark",
            threads,
            [1, IRIS_INPUT, IRIS_INPUT, 3],
            &[CONTOUR * 3, IRIS * 3],
        )?;
        Ok(IrisModel {
            compiled,
            iris: found[1],
        })
    }

    /// The iris points of the eye in `region` (normalised to the frame),
    /// x and y only.
    fn run(
        &mut self,
        frame: &Mat,
        region: &Roi,
        mirrored: bool,
    ) -> Result<Vec<(f32, f32)>, WorkerError> {
        let crop = roi::crop(frame, region, IRIS_INPUT, IRIS_INPUT, mirrored)?;
        roi::write_rgb(&mut self.compiled, 0, &crop, RANGE.0, RANGE.1)?;
        self.compiled.run().map_err(lite_error)?;
        let raw = roi::read_floats(&self.compiled, self.iris)?;
        let side = IRIS_INPUT as f32;
        let mut points: Vec<(f32, f32)> = raw
            .chunks_exact(3)
            .map(|p| {
                let x = p[0] / side;
                let x = if mirrored { 1.0 - x } else { x };
                roi::project(region, x, p[1] / side)
            })
            .collect();
        // The rim points go round the iris from the side nearer the
        // image's right; mirrored, they came out going the other way.
        if mirrored && points.len() == IRIS {
            points.swap(1, 3);
        }
        Ok(points)
    }
}

/// An eye's region from its corners (normalised points of a `w`x`h`
/// frame).
pub fn eye_region(a: (f32, f32), b: (f32, f32), w: f32, h: f32) -> Roi {
    let rotation = roi::rotation(a, b, w, h, 0.0);
    let bbox = (a.0.min(b.0), a.1.min(b.1), a.0.max(b.0), a.1.max(b.1));
    roi::square_long(bbox, rotation, w, h, EYE_SCALE)
}

/// Appends the 10 iris points to a face's 468 mesh points (normalised to
/// the frame, z to its width).
pub fn refine(
    model: &mut IrisModel,
    frame: &Mat,
    points: &mut Vec<[f32; 3]>,
) -> Result<(), WorkerError> {
    let (w, h) = (frame.cols() as f32, frame.rows() as f32);
    let mut added = Vec::with_capacity(2 * IRIS);
    for (a, b, mirrored) in EYES {
        let (Some(pa), Some(pb)) = (points.get(a), points.get(b)) else {
            return Err(WorkerError::internal(
                "iris: the mesh has fewer than 468 points",
            ));
        };
        let z = (pa[2] + pb[2]) / 2.0;
        let region = eye_region((pa[0], pa[1]), (pb[0], pb[1]), w, h);
        for (x, y) in model.run(frame, &region, mirrored)? {
            added.push([x, y, z]);
        }
    }
    points.extend(added);
    Ok(())
}
