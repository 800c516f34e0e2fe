//! The MediaPipe solutions (hands, pose, face mesh, selfie segmentation):
//! a detector finds a region, a landmark model refines it on a rotated
//! crop, and in a stream the next frame's region comes from this frame's
//! landmarks. `roi` holds the geometry they share.

pub mod face_mesh;
pub mod face_model;
pub mod hands;
pub mod iris;
pub mod model;
pub mod palm;
pub mod pose;
pub mod pose_detection;
pub mod pose_landmark;
pub mod roi;
pub mod segmentation;
pub mod smoothing;

use std::path::Path;

use sidecar_proto::v1::VisionOptions;
use worker_runtime::WorkerError;

use crate::tasks::Served;

/// Loads the companion models `options.pipeline` names (paths the worker
/// can open) into `served`, with the LiteRT runtime at `lib`; a model that does not fit its role is
/// INVALID_ARGUMENT naming its field.
pub fn load(served: &mut Served, lib: &Path, options: &VisionOptions) -> Result<(), WorkerError> {
    let Some(p) = &options.pipeline else {
        return Ok(());
    };
    if p.pose_detection.is_empty() && p.pose_landmark.is_empty() && p.selfie_segmentation.is_empty()
    {
        return Ok(());
    }
    let rt = litert::Runtime::load(lib).map_err(|e| WorkerError::unavailable(e.to_string()))?;
    let threads = options.threads.max(1);
    match (p.pose_detection.is_empty(), p.pose_landmark.is_empty()) {
        (true, true) => {}
        (false, false) => {
            served.pose = Some(pose::Models::load(
                &rt,
                Path::new(&p.pose_detection),
                Path::new(&p.pose_landmark),
                threads,
            )?);
        }
        (true, false) => {
            return Err(WorkerError::invalid(
                "pipeline.pose_detection is empty; pose needs it with pipeline.pose_landmark",
            ));
        }
        (false, true) => {
            return Err(WorkerError::invalid(
                "pipeline.pose_landmark is empty; pose needs it with pipeline.pose_detection",
            ));
        }
    }
    if !p.selfie_segmentation.is_empty() {
        served.selfie = Some(segmentation::Selfie::load(
            &rt,
            Path::new(&p.selfie_segmentation),
            threads,
        )?);
    }
    Ok(())
}

#[cfg(test)]
mod face_mesh_fixtures;
#[cfg(test)]
mod face_mesh_tests;
#[cfg(test)]
mod pose_guard_tests;
#[cfg(test)]
mod pose_test_support;
#[cfg(test)]
mod pose_tests;
#[cfg(test)]
mod pose_video_tests;
#[cfg(test)]
mod segmentation_tests;
