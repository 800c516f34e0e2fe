//! What the MediaPipe tests share: the solutions' model files, a sidecar
//! with BlazeFace as the VISION model `mp` and the pipeline's companion
//! models, and MediaPipe's own results (tests/fixtures/mediapipe).

use serde_json::Value;
use sidecar_proto::v1::vision_service_client::VisionServiceClient;
use tonic::transport::Channel;

use crate::vision::BLAZEFACE;
use crate::{Sidecar, add_model, root, store};

pub const PALM: &str = "mediapipe/palm_detection_full.tflite";
pub const HAND: &str = "mediapipe/hand_landmark_full.tflite";
pub const POSE_DETECTION: &str = "mediapipe/pose_detection.tflite";
pub const POSE_LANDMARK: &str = "mediapipe/pose_landmark_full.tflite";
pub const FACE_LANDMARK: &str = "mediapipe/face_landmark.tflite";
pub const SELFIE: &str = "mediapipe/selfie_segmentation.tflite";

/// A sidecar whose model `mp` is BlazeFace with `pipeline`'s companions
/// (role, file), every file in its store, and a client for large messages.
pub async fn sidecar(
    pipeline: &[(&str, &str)],
    more_files: &[&str],
) -> (Sidecar, VisionServiceClient<Channel>) {
    let store = store();
    add_model(&store, BLAZEFACE);
    for (_, f) in pipeline {
        add_model(&store, f);
    }
    for f in more_files {
        add_model(&store, f);
    }
    let roles: String = pipeline
        .iter()
        .map(|(role, f)| format!("{role} = \"{f}\"\n"))
        .collect();
    let config = format!(
        "[[models]]\nid = \"mp\"\nfamily = \"vision\"\npath = \"{BLAZEFACE}\"\n[models.vision]\nthreads = 1\n[models.vision.pipeline]\n{roles}"
    );
    let sc = Sidecar::start(store, &config);
    sc.ready("mp").await;
    let client = VisionServiceClient::new(sc.channel().await)
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20);
    (sc, client)
}

/// MediaPipe's results in `tests/fixtures/mediapipe/<name>`.
pub fn fixture(name: &str) -> Value {
    let path = root().join("tests/fixtures/mediapipe").join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).expect("fixture JSON")
}
