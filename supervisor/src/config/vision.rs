//! A VISION model's options in the config file and in LoadModel, with the
//! companion models of its MediaPipe solutions.

use serde::Deserialize;
use sidecar_proto::v1::{PipelineModels, SsdOptions, VisionOptions};

/// VISION options in the config file.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct VisionSpec {
    /// Threads for the detector; 0 = 1.
    pub threads: u32,
    /// Anchors and decoding of an SSD `.tflite` detector (MediaPipe's
    /// options, e.g. for its palm or pose detector); absent: BlazeFace
    /// short range. The worker checks them against the model's tensors.
    pub ssd: Option<SsdOptions>,
    /// Most pixels (width x height) of one image or picture (batch images,
    /// templates, stream frames, H.264 pictures), read from the header
    /// before decoding; 0 = 33 177 600 (7680x4320, 8K UHD), at most
    /// 268 435 456. Each side is at most 16384 whatever this says.
    pub max_pixels: u64,
    /// Most pictures one H.264 chunk may complete; 0 = 64, at most 4096.
    pub max_pictures_per_chunk: u32,
    /// Most images of one ProcessBatch; 0 = 256, at most 1024.
    pub max_batch_images: u32,
    /// Most tracks of one tracking task (initial boxes, and tracks
    /// detections add); 0 = 256, at most 4096.
    pub max_tracks: u32,
    /// Most bytes the waiting frames of one stream may hold (inline
    /// frames; frames in a region wait without their bytes); 0 = 128 MiB,
    /// at most 16 GiB.
    pub max_pending_bytes: u64,
    /// Companion models of the MediaPipe solutions (store paths).
    pub pipeline: PipelineSpec,
}

impl VisionSpec {
    /// The wire form (0: the worker's default; over a cap, the worker
    /// refuses the load with INVALID_ARGUMENT naming the option).
    pub fn to_proto(&self) -> VisionOptions {
        VisionOptions {
            threads: self.threads.max(1),
            ssd: self.ssd.clone(),
            max_pixels: self.max_pixels,
            max_pictures_per_chunk: self.max_pictures_per_chunk,
            max_batch_images: self.max_batch_images,
            max_tracks: self.max_tracks,
            max_pending_bytes: self.max_pending_bytes,
            pipeline: self.pipeline.to_proto(),
            ..Default::default()
        }
    }
}

/// `[models.vision.pipeline]`: store paths of the companion models the
/// MediaPipe solutions need (hands: palm detection + hand landmarks; pose;
/// face mesh; selfie segmentation). Each is resolved in the store, opened
/// at every start and handed to the worker like the model file. Empty: not
/// loaded.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct PipelineSpec {
    /// Palm detection.
    pub palm_detection: String,
    /// Hand landmarks.
    pub hand_landmark: String,
    /// Pose detection.
    pub pose_detection: String,
    /// Pose landmarks.
    pub pose_landmark: String,
    /// Face detection for the face mesh.
    pub face_detection: String,
    /// Face landmarks.
    pub face_landmark: String,
    /// Iris landmarks.
    pub iris_landmark: String,
    /// Selfie segmentation.
    pub selfie_segmentation: String,
}

impl PipelineSpec {
    /// Every role with its store path (empty: none), in the proto's order.
    pub fn roles(&self) -> [(&'static str, &str); 8] {
        [
            ("palm_detection", &self.palm_detection),
            ("hand_landmark", &self.hand_landmark),
            ("pose_detection", &self.pose_detection),
            ("pose_landmark", &self.pose_landmark),
            ("face_detection", &self.face_detection),
            ("face_landmark", &self.face_landmark),
            ("iris_landmark", &self.iris_landmark),
            ("selfie_segmentation", &self.selfie_segmentation),
        ]
    }

    /// From LoadModel's options.
    pub fn from_proto(p: Option<PipelineModels>) -> PipelineSpec {
        let p = p.unwrap_or_default();
        PipelineSpec {
            palm_detection: p.palm_detection,
            hand_landmark: p.hand_landmark,
            pose_detection: p.pose_detection,
            pose_landmark: p.pose_landmark,
            face_detection: p.face_detection,
            face_landmark: p.face_landmark,
            iris_landmark: p.iris_landmark,
            selfie_segmentation: p.selfie_segmentation,
        }
    }

    /// The wire form; `None` when no role is set.
    pub fn to_proto(&self) -> Option<PipelineModels> {
        let mut p = PipelineModels::default();
        let mut any = false;
        for (role, path) in self.roles() {
            if !path.is_empty() {
                set_role(&mut p, role, path.to_string());
                any = true;
            }
        }
        any.then_some(p)
    }
}

/// Sets one role of a `PipelineModels` by its field name; a name that is
/// not a role changes nothing.
pub fn set_role(p: &mut PipelineModels, role: &str, value: String) {
    let field = match role {
        "palm_detection" => &mut p.palm_detection,
        "hand_landmark" => &mut p.hand_landmark,
        "pose_detection" => &mut p.pose_detection,
        "pose_landmark" => &mut p.pose_landmark,
        "face_detection" => &mut p.face_detection,
        "face_landmark" => &mut p.face_landmark,
        "iris_landmark" => &mut p.iris_landmark,
        "selfie_segmentation" => &mut p.selfie_segmentation,
        _ => return,
    };
    *field = value;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_go_to_the_wire_and_back() {
        let spec = PipelineSpec {
            palm_detection: "mediapipe/palm_detection_full.tflite".into(),
            selfie_segmentation: "mediapipe/selfie_segmentation.tflite".into(),
            ..Default::default()
        };
        let wire = spec.to_proto().expect("two roles set");
        assert_eq!(wire.palm_detection, spec.palm_detection);
        assert_eq!(wire.selfie_segmentation, spec.selfie_segmentation);
        assert_eq!(wire.hand_landmark, "");
        assert_eq!(PipelineSpec::from_proto(Some(wire)), spec);
        assert_eq!(PipelineSpec::default().to_proto(), None);
        let set: Vec<_> = spec
            .roles()
            .into_iter()
            .filter(|(_, p)| !p.is_empty())
            .map(|(r, _)| r)
            .collect();
        assert_eq!(set, ["palm_detection", "selfie_segmentation"]);
    }

    #[test]
    fn an_unknown_key_in_the_pipeline_table_is_refused() {
        let e = toml::from_str::<VisionSpec>("[pipeline]\npalm = \"x.tflite\"\n").unwrap_err();
        assert!(e.to_string().contains("unknown field `palm`"), "{e}");
        let ok: VisionSpec =
            toml::from_str("[pipeline]\nhand_landmark = \"mediapipe/hand_landmark_full.tflite\"\n")
                .expect("parses");
        assert_eq!(
            ok.pipeline.hand_landmark,
            "mediapipe/hand_landmark_full.tflite"
        );
    }
}
