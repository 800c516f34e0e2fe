//! Iris landmarks for the face mesh (`refine_landmarks`), as MediaPipe's
//! iris graphs do them (`iris_landmark_left_and_right_cpu`): each eye's
//! region is the line between its corners (mesh points 33 → 133 for the
//! eye on the image's left, 362 → 263 for the other), square on its long
//! side, scaled 2.3; `iris_landmark.tflite` runs on the 64x64 crop (the
//! second eye mirrored: the model knows one eye only) and gives 71 eye
//! contour points and 5 iris points (centre, then 4 on the rim). The iris
//! points are appended to the mesh in the order of MediaPipe's refined
//! mesh: 468..472 for the eye at 33/133, 473..477 for the eye at 362/263,
//! each the centre and then the rim starting on the image's right side.
//! Their z is the mean of the eye corners' z: the iris model's depth is
//! relative to its crop (MediaPipe's refinement also averages the eye's
//! depth). The eye contour points are not used: the mesh keeps its own.

use std::path::Path;
use std::sync::Arc;

use litert::Runtime;
use opencv::core::Mat;
use worker_runtime::WorkerError;

use crate::error::lite_error;
use crate::pipeline::model::Model;
use crate::pipeline::roi::{
    Border, Crop, FrameSize, RectTransform, Region, TensorSpec, rotation, to_tensor,
};

/// The iris model's input: the eye's crop stretched to 64x64, RGB 0..1,
/// edges replicated.
pub const IRIS_INPUT: TensorSpec = TensorSpec {
    width: 64,
    height: 64,
    range: (0.0, 1.0),
    border: Border::Replicate,
    keep_aspect: false,
};
/// Eye contour points the model gives.
const CONTOUR: usize = 71;
/// Iris points.
const IRIS: usize = 5;
/// Eye corners → region (`IrisLandmarkLandmarksToRoi`).
const FROM_CORNERS: RectTransform = RectTransform {
    scale_x: 2.3,
    scale_y: 2.3,
    shift_x: 0.0,
    shift_y: 0.0,
    square_long: true,
};
/// The eyes' corners in the mesh: the eye on the image's left (not
/// mirrored), then the other (mirrored).
const EYES: [(usize, usize, bool); 2] = [(33, 133, false), (362, 263, true)];

/// `iris_landmark.tflite`: input [1, 64, 64, 3]; outputs 213 (contour) and
/// 15 (iris) values.
#[derive(Debug)]
pub struct IrisModel {
    model: Model,
}

/// Mirrors a float32 RGB tensor left to right, in place.
fn mirror(buf: &mut [u8], width: usize) {
    let px = 12;
    for row in buf.chunks_exact_mut(width * px) {
        for i in 0..width / 2 {
            let j = width - 1 - i;
            let (a, b) = row.split_at_mut(j * px);
            a[i * px..(i + 1) * px].swap_with_slice(&mut b[..px]);
        }
    }
}

impl IrisModel {
    /// Loads and checks `pipeline.iris_landmark`.
    pub fn load(rt: &Arc<Runtime>, path: &Path, threads: u32) -> Result<IrisModel, WorkerError> {
        let side = IRIS_INPUT.width;
        let model = Model::load(
            rt,
            path,
            threads,
            "pipeline.iris_landmark",
            "an iris landmark model",
            (
                &[1, side, side, 3],
                &[&[1, CONTOUR as i32 * 3], &[1, IRIS as i32 * 3]],
            ),
        )?;
        Ok(IrisModel { model })
    }

    /// The iris points of the eye in `region`, normalised to the frame.
    fn run(
        &mut self,
        frame: &Mat,
        region: &Region,
        mirrored: bool,
    ) -> Result<Vec<(f32, f32)>, WorkerError> {
        let mut crop: Result<Crop, WorkerError> =
            Err(WorkerError::internal("the iris input was not written"));
        self.model
            .compiled
            .write_input(0, |buf| {
                crop = to_tensor(frame, region, &IRIS_INPUT, buf);
                if mirrored {
                    mirror(buf, IRIS_INPUT.width as usize);
                }
            })
            .map_err(lite_error)?;
        let crop = crop?;
        self.model.run()?;
        let raw = self.model.output(1)?;
        let side = IRIS_INPUT.width as f32;
        let mut points: Vec<(f32, f32)> = raw
            .chunks_exact(3)
            .map(|p| {
                let u = p[0] / side;
                let u = if mirrored { 1.0 - u } else { u };
                crop.to_frame(u, p[1] / side)
            })
            .collect();
        // The rim points go round the iris starting on the image's right;
        // mirrored, they came out starting on its left.
        if mirrored && points.len() == IRIS {
            points.swap(1, 3);
        }
        Ok(points)
    }
}

/// An eye's region from its corners (normalised points of the frame).
pub fn eye_region(a: (f32, f32), b: (f32, f32), size: FrameSize) -> Region {
    let turn = rotation(a, b, 0.0, size);
    Region::from_box(a.0.min(b.0), a.1.min(b.1), a.0.max(b.0), a.1.max(b.1))
        .rotated(turn)
        .transform(&FROM_CORNERS, size)
}

/// Appends the 10 iris points to a face's 468 mesh points (x, y
/// normalised to the frame, z in its pixels).
pub fn refine(
    model: &mut IrisModel,
    frame: &Mat,
    points: &mut Vec<[f32; 3]>,
) -> Result<(), WorkerError> {
    let size = FrameSize::of(frame);
    let mut added = Vec::with_capacity(2 * IRIS);
    for (a, b, mirrored) in EYES {
        let (Some(pa), Some(pb)) = (points.get(a), points.get(b)) else {
            return Err(WorkerError::internal(
                "iris: the mesh has fewer than 468 points",
            ));
        };
        let z = (pa[2] + pb[2]) / 2.0;
        let region = eye_region((pa[0], pa[1]), (pb[0], pb[1]), size);
        for (x, y) in model.run(frame, &region, mirrored)? {
            added.push([x, y, z]);
        }
    }
    points.extend(added);
    Ok(())
}
