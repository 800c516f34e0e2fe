//! MediaPipe's solutions as pipelines of `.tflite` models: a detector finds
//! a region, a landmark model refines it, and in a stream the next frame's
//! region comes from this frame's landmarks.

pub mod face_mesh;
pub mod face_model;
pub mod face_roi;
pub mod iris;

#[cfg(test)]
mod face_mesh_tests;
