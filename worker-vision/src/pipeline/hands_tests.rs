use std::path::PathBuf;

use opencv::imgcodecs;
use opencv::prelude::*;
use sidecar_proto::v1::{HandsTask, PipelineModels};
use worker_runtime::Code;

use super::*;

fn root() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

fn lib() -> PathBuf {
    root().join("runtime/litert/libLiteRt.so")
}

fn model(name: &str) -> String {
    let p = root().join("models/mediapipe").join(name);
    assert!(
        p.is_file(),
        "{} is missing (run scripts/setup.sh)",
        p.display()
    );
    p.display().to_string()
}

fn models(complexity: &str) -> Models {
    let p = PipelineModels {
        palm_detection: model(&format!("palm_detection_{complexity}.tflite")),
        hand_landmark: model(&format!("hand_landmark_{complexity}.tflite")),
        ..Default::default()
    };
    Models::load(&lib(), Some(&p), 1)
        .expect("the hands models load")
        .expect("named")
}

fn photo(name: &str) -> Mat {
    let p = root().join("models/testdata").join(name);
    let m = imgcodecs::imread(&p, imgcodecs::IMREAD_COLOR).unwrap();
    assert!(
        !m.empty(),
        "{} is missing (run scripts/setup.sh)",
        p.display()
    );
    m
}

#[test]
fn a_model_that_does_not_fit_its_role_is_refused_naming_it() {
    let load = |palm: &str, landmark: &str| {
        let p = PipelineModels {
            palm_detection: palm.into(),
            hand_landmark: landmark.into(),
            ..Default::default()
        };
        Models::load(&lib(), Some(&p), 1).map(|m| m.is_some())
    };
    let (palm, hand) = (
        model("palm_detection_full.tflite"),
        model("hand_landmark_full.tflite"),
    );
    assert_eq!(load(&palm, &hand), Ok(true));
    assert_eq!(load("", ""), Ok(false));
    // Swapped: each names its field and the shapes.
    let e = load(&hand, &hand).unwrap_err();
    assert_eq!(e.code, Code::InvalidArgument);
    assert_eq!(
        e.message,
        "pipeline.palm_detection: the model's inputs are [float32 [1, 224, 224, 3]]; a palm detector takes one float32 [1, 192, 192, 3]"
    );
    let e = load(&palm, &palm).unwrap_err();
    assert_eq!(e.code, Code::InvalidArgument);
    assert_eq!(
        e.message,
        "pipeline.hand_landmark: the model's inputs are [float32 [1, 192, 192, 3]]; a hand landmark model takes one float32 [1, 224, 224, 3]"
    );
    // Same input, other outputs: the face detector is no palm detector.
    let e = load(&model("face_detection_short_range.tflite"), &hand).unwrap_err();
    assert!(
        e.message.starts_with(
            "pipeline.palm_detection: the model's inputs are [float32 [1, 128, 128, 3]]"
        ),
        "{}",
        e.message
    );
    // Not a model at all.
    let e = load(&lib().display().to_string(), &hand).unwrap_err();
    assert_eq!(e.code, Code::InvalidArgument);
    assert!(
        e.message
            .starts_with("pipeline.palm_detection: LiteRT cannot load it as a palm detector"),
        "{}",
        e.message
    );
    let e = load(&palm, "").unwrap_err();
    assert_eq!(
        e.message,
        "pipeline.hand_landmark is required with pipeline.palm_detection"
    );
    let e = load("", &hand).unwrap_err();
    assert_eq!(
        e.message,
        "pipeline.palm_detection is required with pipeline.hand_landmark"
    );
}

#[test]
fn options_are_checked_naming_the_field_the_value_and_the_limit() {
    let m = models("lite");
    let bad = |t: HandsTask| Hands::check(&t, Some(&m)).unwrap_err();
    let e = bad(HandsTask {
        max_hands: 5,
        ..Default::default()
    });
    assert_eq!(e.code, Code::InvalidArgument);
    assert_eq!(e.message, "hands.max_hands 5 exceeds the limit of 4");
    let e = bad(HandsTask {
        min_detection_score: 1.5,
        ..Default::default()
    });
    assert_eq!(e.message, "hands.min_detection_score 1.5 is outside 0..1");
    let e = bad(HandsTask {
        min_tracking_score: f32::NAN,
        ..Default::default()
    });
    assert_eq!(e.message, "hands.min_tracking_score NaN is outside 0..1");
    // Defaults: MediaPipe's.
    let h = Hands::new(&HandsTask::default()).unwrap();
    assert_eq!(
        (h.max_hands, h.min_detection, h.min_tracking),
        (2, 0.5, 0.5)
    );
    // Without the models: INVALID_ARGUMENT naming the option to set.
    let e = Hands::check(&HandsTask::default(), None).unwrap_err();
    assert_eq!(e.code, Code::InvalidArgument);
    assert!(
        e.message.contains("pipeline.palm_detection"),
        "{}",
        e.message
    );
}

#[test]
fn probe_astronaut() {
    let mut m = models("full");
    let frame = photo("astronaut.png");
    let mut h = Hands::new(&HandsTask::default()).unwrap();
    let (hands, stages) = h.run(&mut m, &frame, 0).unwrap();
    eprintln!("{stages:?}");
    for hand in &hands {
        eprintln!(
            "{} {} {} {:?} {:?}",
            hand.handedness,
            hand.handedness_score,
            hand.presence,
            hand.palm,
            &hand.landmarks[..3]
        );
    }
}
