use std::path::PathBuf;

use opencv::imgcodecs;
use opencv::prelude::*;
use sidecar_proto::v1::{HandsTask, PipelineModels};
use worker_runtime::Code;

use super::*;

pub(super) fn root() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

pub(super) fn lib() -> PathBuf {
    root().join("runtime/litert/libLiteRt.so")
}

pub(super) fn model(name: &str) -> String {
    let p = root().join("models/mediapipe").join(name);
    assert!(
        p.is_file(),
        "{} is missing (run scripts/setup.sh)",
        p.display()
    );
    p.display().to_string()
}

pub(super) fn models(complexity: &str) -> Models {
    let p = PipelineModels {
        palm_detection: model(&format!("palm_detection_{complexity}.tflite")),
        hand_landmark: model(&format!("hand_landmark_{complexity}.tflite")),
        ..Default::default()
    };
    Models::load(&lib(), Some(&p), 1)
        .expect("the hands models load")
        .expect("named")
}

/// The photographs `scripts/setup.sh` extracts (`SIDECAR_TESTDATA`: another
/// folder holding the same files).
pub(super) fn photo(name: &str) -> Mat {
    let dir = std::env::var_os("SIDECAR_TESTDATA")
        .map_or_else(|| root().join("models/testdata"), PathBuf::from);
    let p = dir.join(name);
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

pub(super) fn fixture(name: &str) -> serde_json::Value {
    let p = root().join("tests/fixtures/mediapipe").join(name);
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    serde_json::from_str(&text).unwrap()
}

pub(super) fn points(v: &serde_json::Value) -> Vec<(f32, f32)> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|p| (p[0].as_f64().unwrap() as f32, p[1].as_f64().unwrap() as f32))
        .collect()
}

/// Mean and largest distance between two hands' landmarks, in pixels.
fn distance(ours: &Hand, theirs: &[(f32, f32)]) -> (f32, f32) {
    assert_eq!(ours.landmarks.len(), theirs.len());
    let d: Vec<f32> = ours
        .landmarks
        .iter()
        .zip(theirs)
        .map(|(a, b)| (a.x - b.0).hypot(a.y - b.1))
        .collect();
    (
        d.iter().sum::<f32>() / d.len() as f32,
        d.iter().copied().fold(0.0, f32::max),
    )
}

/// Pairs each of MediaPipe's hands with ours, nearest first; asserts the
/// counts, the handedness and the distance (≤ 1.5 % of the diagonal);
/// gives the largest mean and largest single distance seen, in pixels.
pub(super) fn compare(
    ours: &[Hand],
    theirs: &[serde_json::Value],
    diag: f32,
    at: &str,
) -> (f32, f32) {
    assert_eq!(ours.len(), theirs.len(), "{at}: hands found");
    let mut worst = (0.0f32, 0.0f32);
    let mut taken = vec![false; ours.len()];
    for (k, t) in theirs.iter().enumerate() {
        let lm = points(&t["landmarks"]);
        let (i, (mean, max)) = ours
            .iter()
            .enumerate()
            .filter(|(i, _)| !taken[*i])
            .map(|(i, h)| (i, distance(h, &lm)))
            .min_by(|a, b| a.1.0.total_cmp(&b.1.0))
            .unwrap();
        taken[i] = true;
        let label = t["handedness"]["label"]
            .as_str()
            .or(t["handedness"].as_str())
            .unwrap();
        eprintln!(
            "{at} hand {k} ({label}): mean {mean:.2} px ({:.3} % of the diagonal), max {max:.2} px; ours {} {:.3}, presence {:.3}",
            100.0 * mean / diag,
            ours[i].handedness,
            ours[i].handedness_score,
            ours[i].presence
        );
        assert_eq!(ours[i].handedness, label, "{at} hand {k}: handedness");
        assert!(
            mean <= 0.015 * diag,
            "{at} hand {k}: mean distance {mean} px over 1.5 % of the diagonal {diag}"
        );
        worst = (worst.0.max(mean), worst.1.max(max));
    }
    worst
}

const PHOTOS: [&str; 7] = [
    "astronaut.png",
    "grace_hopper.jpg",
    "bus.jpg",
    "zidane.jpg",
    "people_sofa.jpg",
    "people_stairs.jpg",
    "rocket.jpg",
];

fn photos_match_mediapipe(complexity: &str) {
    let mut m = models(complexity);
    let mut seen = 0;
    for name in PHOTOS {
        let stem = name.split('.').next().unwrap();
        let fx = fixture(&format!("{stem}.hands.{complexity}.json"));
        let frame = photo(name);
        assert_eq!(frame.cols() as u64, fx["width"].as_u64().unwrap());
        let theirs = fx["hands"].as_array().unwrap();
        assert_eq!(fx["detections"].as_u64().unwrap() as usize, theirs.len());
        let mut h = Hands::new(&HandsTask::default()).unwrap();
        let (hands, stages) = h.run(&mut m, &frame, 0).unwrap();
        // The detector ran; the landmark model only on hands.
        assert_eq!(stages[0].stage, "palm_detection");
        assert_eq!(stages.len(), if hands.is_empty() { 1 } else { 2 });
        let diag = (frame.cols() as f32).hypot(frame.rows() as f32);
        let (mean, max) = compare(&hands, theirs, diag, &format!("{complexity} {name}"));
        eprintln!(
            "{complexity} {name}: {} hands, worst mean {mean:.2} px, max {max:.2} px",
            hands.len()
        );
        for (ours, t) in hands.iter().zip(theirs) {
            assert_eq!(ours.landmarks.len(), 21);
            assert_eq!(ours.world_landmarks.len(), 21);
            assert!(ours.palm.is_some() && ours.region.is_some());
            // World landmarks within 1 cm of MediaPipe's on average, z
            // (pixels) within the landmarks' tolerance, the hands paired
            // in MediaPipe's order.
            let w = t["world_landmarks"].as_array().unwrap();
            let dw: f32 = ours
                .world_landmarks
                .iter()
                .zip(w)
                .map(|(a, b)| {
                    let b: Vec<f32> = (0..3).map(|i| b[i].as_f64().unwrap() as f32).collect();
                    ((a.x - b[0]).powi(2) + (a.y - b[1]).powi(2) + (a.z - b[2]).powi(2)).sqrt()
                })
                .sum::<f32>()
                / 21.0;
            let lm = t["landmarks"].as_array().unwrap();
            let dz: f32 = ours
                .landmarks
                .iter()
                .zip(lm)
                .map(|(a, b)| (a.z - b[2].as_f64().unwrap() as f32).abs())
                .sum::<f32>()
                / 21.0;
            eprintln!(
                "  world landmarks: mean {:.3} cm; z: mean {dz:.3} px",
                dw * 100.0
            );
            assert!(
                dw <= 0.01,
                "{name}: world landmarks {dw} m apart on average"
            );
            assert!(dz <= 0.015 * diag, "{name}: z {dz} px apart on average");
        }
        seen += hands.len();
    }
    assert!(seen >= 3, "the photographs hold hands: {seen} found");
}

#[test]
fn photos_match_mediapipe_full() {
    photos_match_mediapipe("full");
}

#[test]
fn photos_match_mediapipe_lite() {
    photos_match_mediapipe("lite");
}

/// Regions as `[x, y, w, h, rotation]` in pixels.
fn near(ours: &Region, theirs: &serde_json::Value, size: FrameSize, at: &str) {
    let t: Vec<f32> = (0..5).map(|i| theirs[i].as_f64().unwrap() as f32).collect();
    let (x, y, w, h) = ours.pixels(size);
    let d = [x - t[0], y - t[1], w - t[2], h - t[3]];
    assert!(
        d.iter().all(|d| d.abs() <= 1.0) && (ours.rotation - t[4]).abs() <= 0.005,
        "{at}: ours ({x}, {y}, {w}, {h}, {}), MediaPipe's {t:?}",
        ours.rotation
    );
}

#[test]
fn regions_from_palms_and_from_landmarks_are_mediapipes() {
    let fx = fixture("hands.regions.json");
    let mut checked = 0;
    for (name, runs) in fx["photos"].as_object().unwrap() {
        let frame = photo(name);
        let size = FrameSize::of(&frame);
        for (complexity, frames) in runs.as_object().unwrap() {
            let mut m = models(complexity);
            let mut h = Hands::new(&HandsTask::default()).unwrap();
            for (i, f) in frames.as_array().unwrap().iter().enumerate() {
                let at = format!("{name} {complexity} frame {i}");
                let (_, stages) = h.run(&mut m, &frame, 0).unwrap();
                // The palm detector runs while fewer than 2 hands are
                // tracked; its palms' regions are MediaPipe's.
                let palms = f["from_palms"].as_array().unwrap();
                let detected = stages.iter().any(|s| s.stage == "palm_detection");
                assert_eq!(detected, !palms.is_empty(), "{at}: {stages:?}");
                if detected {
                    let mut found = m.palm.detect(&frame, 0.5).unwrap();
                    found.truncate(2);
                    assert_eq!(found.len(), palms.len(), "{at}");
                    for (p, t) in found.iter().zip(palms) {
                        near(
                            &palm_region(p, size),
                            t,
                            size,
                            &format!("{at} from the palm"),
                        );
                        checked += 1;
                    }
                }
                // The next frame's regions, from this frame's landmarks.
                let next = f["from_landmarks"].as_array().unwrap();
                assert_eq!(h.tracked.len(), next.len(), "{at}");
                for (ours, t) in h.tracked.iter().zip(next) {
                    near(ours, t, size, &format!("{at} from the landmarks"));
                    checked += 1;
                }
            }
        }
    }
    assert!(checked >= 20, "{checked} regions compared");
}

/// A crop of a 640x480 frame as the hand landmark model's input takes it.
fn landmark_crop() -> (super::super::roi::Crop, Region) {
    use super::super::roi::{FrameSize, to_tensor};
    let frame = Mat::zeros(480, 640, opencv::core::CV_8UC3)
        .unwrap()
        .to_mat()
        .unwrap();
    let region = Region::from_pixels(320.0, 240.0, 200.0, 200.0, 0.3, FrameSize::of(&frame));
    let mut buf = vec![0u8; 224 * 224 * 3 * 4];
    (
        to_tensor(&frame, &region, &INPUT, &mut buf).unwrap(),
        region,
    )
}

/// What spoils one output, and how.
type Spoil = (&'static str, fn(&mut Outputs));

#[test]
fn a_hand_whose_outputs_are_not_finite_numbers_is_dropped() {
    let (crop, region) = landmark_crop();
    let good = Outputs {
        landmarks: (0..63).map(|i| 60.0 + i as f32).collect(),
        presence: 0.9,
        left: 0.8,
        world: vec![0.01; 63],
    };
    let (hand, next) = decode(&good, &crop, &region, None, 0.5).expect("a finite hand");
    assert_eq!(hand.landmarks.len(), 21);
    assert_eq!(hand.world_landmarks.len(), 21);
    assert_eq!(hand.handedness, "Left");
    assert!(next.is_usable());
    let bad: [Spoil; 6] = [
        ("a NaN landmark", |o| o.landmarks[7] = f32::NAN),
        ("an infinite depth", |o| o.landmarks[2] = f32::INFINITY),
        ("a NaN world landmark", |o| o.world[10] = f32::NAN),
        ("an infinite world landmark", |o| {
            o.world[62] = f32::NEG_INFINITY
        }),
        ("a NaN presence", |o| o.presence = f32::NAN),
        ("a NaN handedness", |o| o.left = f32::NAN),
    ];
    for (what, spoil) in bad {
        let mut o = good.clone();
        spoil(&mut o);
        assert!(
            decode(&o, &crop, &region, None, 0.5).is_none(),
            "{what}: the hand goes to the client"
        );
    }
    // Under the tracking score: dropped as before.
    let low = Outputs {
        presence: 0.4,
        ..good.clone()
    };
    assert!(decode(&low, &crop, &region, None, 0.5).is_none());
    // A degenerate crop (a region too large to map) sends the points to
    // infinity: dropped.
    let huge = super::super::roi::Crop {
        region: Region {
            width: f32::MAX,
            height: f32::MAX,
            ..region
        },
        ..crop
    };
    assert!(decode(&good, &huge, &region, None, 0.5).is_none());
}
