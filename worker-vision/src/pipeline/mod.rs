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
pub mod roi;

#[cfg(test)]
mod face_mesh_fixtures;
#[cfg(test)]
mod face_mesh_tests;
