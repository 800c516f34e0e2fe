//! Pose and selfie segmentation on the real models and photographs,
//! against MediaPipe's own results (`tests/fixtures/mediapipe/`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use opencv::core::{Mat, Vector};
use opencv::imgcodecs;
use opencv::prelude::*;
use sidecar_proto::v1::{
    PipelineModels, PoseTask, SegmentationMaskFormat, SelfieSegmentationTask, StageTiming,
    VisionOptions,
};
use worker_runtime::Code;

use super::pose::{self, Models, State};
use super::segmentation::{MaskSpec, Selfie, check as check_selfie};

fn root() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

fn runtime() -> Arc<litert::Runtime> {
    litert::Runtime::load(&root().join("runtime/litert/libLiteRt.so"))
        .expect("the LiteRT runtime loads (run scripts/setup.sh)")
}

fn model(name: &str) -> PathBuf {
    let p = root().join("models/mediapipe").join(name);
    assert!(
        p.is_file(),
        "{} is missing (run scripts/setup.sh)",
        p.display()
    );
    p
}

fn load_pose() -> Models {
    Models::load(
        &runtime(),
        &model("pose_detection.tflite"),
        &model("pose_landmark_full.tflite"),
        1,
    )
    .expect("the pose models load")
}

fn load_selfie(name: &str) -> Selfie {
    Selfie::load(&runtime(), &model(name), 1).expect("the selfie model loads")
}

pub(crate) fn photo(path: &Path) -> Mat {
    let m = imgcodecs::imread(path.to_str().unwrap(), imgcodecs::IMREAD_COLOR).unwrap();
    assert!(
        !m.empty(),
        "{} is missing (run scripts/setup.sh)",
        path.display()
    );
    m
}

fn refused(r: Result<impl std::fmt::Debug, worker_runtime::WorkerError>) -> String {
    let e = r.expect_err("refused");
    assert_eq!(e.code, Code::InvalidArgument, "{}", e.message);
    e.message
}

#[test]
fn a_model_that_does_not_fit_its_role_is_refused_naming_it() {
    let rt = runtime();
    let m = refused(Models::load(
        &rt,
        &model("palm_detection_full.tflite"),
        &model("pose_landmark_full.tflite"),
        1,
    ));
    assert!(m.starts_with("pipeline.pose_detection: the model's inputs are [float32 [1, 192, 192, 3]]; a pose detector takes one float32 [1, 224, 224, 3]"), "{m}");
    let m = refused(Models::load(
        &rt,
        &model("pose_detection.tflite"),
        &model("hand_landmark_full.tflite"),
        1,
    ));
    assert!(m.starts_with("pipeline.pose_landmark: the model's inputs are [float32 [1, 224, 224, 3]]; a pose landmark model (pose_landmark_full) takes one float32 [1, 256, 256, 3]"), "{m}");
    let m = refused(Selfie::load(&rt, &model("pose_detection.tflite"), 1));
    assert!(
        m.starts_with(
            "pipeline.selfie_segmentation: the model's input is Some(([1, 224, 224, 3], 1))"
        ),
        "{m}"
    );
    let m = refused(Selfie::load(
        &rt,
        &root().join("models/testdata/astronaut.png"),
        1,
    ));
    assert!(
        m.starts_with("pipeline.selfie_segmentation: LiteRT could not load it"),
        "{m}"
    );
    // One of the pair without the other, through the worker's load.
    let mut served = crate::tasks::Served::new(
        crate::tasks::Detector::Cascade(
            crate::detect::Cascade::system("haarcascade_frontalface_default.xml").unwrap(),
        ),
        Default::default(),
    );
    let options = |p: PipelineModels| VisionOptions {
        pipeline: Some(p),
        ..Default::default()
    };
    let lib = root().join("runtime/litert/libLiteRt.so");
    let m = refused(super::load(
        &mut served,
        &lib,
        &options(PipelineModels {
            pose_landmark: model("pose_landmark_full.tflite").display().to_string(),
            ..Default::default()
        }),
    ));
    assert_eq!(
        m,
        "pipeline.pose_detection is empty; pose needs it with pipeline.pose_landmark"
    );
    // Without the models, the tasks are refused naming what they need.
    let m = refused(pose::check(&PoseTask::default(), false));
    assert!(
        m.starts_with("pose needs pipeline.pose_detection and pipeline.pose_landmark"),
        "{m}"
    );
    let m = refused(check_selfie(&SelfieSegmentationTask::default(), false));
    assert!(
        m.starts_with("selfie_segmentation needs pipeline.selfie_segmentation"),
        "{m}"
    );
    // Both loaded by name through the worker's load.
    super::load(
        &mut served,
        &lib,
        &options(PipelineModels {
            pose_detection: model("pose_detection.tflite").display().to_string(),
            pose_landmark: model("pose_landmark_full.tflite").display().to_string(),
            selfie_segmentation: model("selfie_segmentation_landscape.tflite")
                .display()
                .to_string(),
            ..Default::default()
        }),
    )
    .expect("the pipeline loads");
    assert!(served.pose.is_some() && served.selfie.is_some());
}

#[test]
fn bad_task_options_are_refused_naming_the_field_and_the_value() {
    let selfie = |threshold: f32, format: i32| {
        check_selfie(&SelfieSegmentationTask { threshold, format }, true)
    };
    assert_eq!(
        refused(selfie(f32::NAN, 0)),
        "selfie_segmentation.threshold NaN is not within 0..1"
    );
    assert_eq!(
        refused(selfie(1.5, 0)),
        "selfie_segmentation.threshold 1.5 is not within 0..1"
    );
    assert_eq!(
        refused(selfie(0.5, 7)),
        "selfie_segmentation.format 7 is not a SegmentationMaskFormat value (0 raw, 1 PNG)"
    );
    selfie(1.0, 1).expect("threshold 1 and PNG are fine");
    let pose = |t: PoseTask| pose::check(&t, true);
    assert_eq!(
        refused(pose(PoseTask {
            min_detection_score: f32::NAN,
            ..Default::default()
        })),
        "pose.min_detection_score NaN is not within 0..1"
    );
    assert_eq!(
        refused(pose(PoseTask {
            min_tracking_score: -0.1,
            ..Default::default()
        })),
        "pose.min_tracking_score -0.1 is not within 0..1"
    );
    assert_eq!(
        refused(pose(PoseTask {
            segmentation: true,
            segmentation_threshold: 2.0,
            ..Default::default()
        })),
        "pose.segmentation_threshold 2 is not within 0..1"
    );
    assert_eq!(
        refused(pose(PoseTask {
            segmentation: true,
            segmentation_format: -1,
            ..Default::default()
        })),
        "pose.segmentation_format -1 is not a SegmentationMaskFormat value (0 raw, 1 PNG)"
    );
}

#[test]
fn masks_encode_as_alpha_thresholded_or_png() {
    let probs: Vec<f32> = vec![0.0, 0.2, 0.5, 0.49, 1.0, 0.75];
    let mask = Mat::new_rows_cols_with_data(2, 3, &probs)
        .unwrap()
        .try_clone()
        .unwrap();
    let raw = MaskSpec::new(0.0, 0, "t.").unwrap().encode(&mask).unwrap();
    assert_eq!((raw.width, raw.height), (3, 2));
    assert_eq!(&raw.data[..], &[0, 51, 128, 125, 255, 191]);
    let cut = MaskSpec::new(0.5, 0, "t.").unwrap().encode(&mask).unwrap();
    assert_eq!(&cut.data[..], &[0, 0, 255, 0, 255, 255]);
    let png = MaskSpec::new(0.0, 1, "t.").unwrap().encode(&mask).unwrap();
    assert_eq!(png.format, SegmentationMaskFormat::Png as i32);
    let decoded = imgcodecs::imdecode(
        &Vector::<u8>::from_slice(&png.data),
        imgcodecs::IMREAD_GRAYSCALE,
    )
    .unwrap();
    assert_eq!((decoded.cols(), decoded.rows()), (3, 2));
    assert_eq!(decoded.data_bytes().unwrap(), &raw.data[..]);
}

/// Runs pose on one frame; the stages it ran.
pub(crate) fn pose_frame(
    m: &mut Models,
    st: &mut State,
    frame: &Mat,
    t_us: i64,
) -> (Option<sidecar_proto::v1::Pose>, Vec<String>) {
    let mut stages: Vec<StageTiming> = vec![];
    let p = pose::run(m, st, frame, t_us, 0, &mut stages).expect("pose runs");
    (p, stages.into_iter().map(|s| s.stage).collect())
}

#[test]
fn the_detector_runs_only_when_the_pose_is_not_tracked() {
    let mut m = load_pose();
    let frame = photo(&root().join("models/testdata/astronaut.png"));
    let mut st = State::new(&PoseTask::default()).unwrap();
    let (first, stages) = pose_frame(&mut m, &mut st, &frame, 0);
    assert_eq!(stages, ["pose_detection", "pose_landmark"]);
    let first = first.expect("a person on astronaut.png");
    assert_eq!(first.landmarks.len(), 33);
    assert_eq!(first.world_landmarks.len(), 33);
    assert!(first.detection.is_some());
    let (second, stages) = pose_frame(&mut m, &mut st, &frame, 33_333);
    assert_eq!(stages, ["pose_landmark"], "tracked from the first frame");
    assert!(st.tracked().is_some());
    let second = second.expect("still there");
    assert!(second.detection.is_none());
    // The same picture: the tracked region finds the same body (the
    // visible landmarks; the legs are outside the picture).
    let moved: Vec<f32> = first
        .landmarks
        .iter()
        .zip(&second.landmarks)
        .filter(|(a, _)| a.visibility >= 0.5)
        .map(|(a, b)| ((a.x - b.x).powi(2) + (a.y - b.y).powi(2)).sqrt())
        .collect();
    let mean = moved.iter().sum::<f32>() / moved.len() as f32;
    eprintln!(
        "tracked vs detected on the same picture: {} visible landmarks, mean {mean} px, max {} px",
        moved.len(),
        moved.iter().fold(0.0f32, |a, &b| a.max(b))
    );
    assert!(
        moved.len() >= 10 && mean < 0.015 * 724.0,
        "tracked landmarks moved {mean} px on the same picture"
    );
    // A black frame: tracking is lost, the next frame runs the detector.
    let black = Mat::zeros(512, 512, opencv::core::CV_8UC3)
        .unwrap()
        .to_mat()
        .unwrap();
    let (none, stages) = pose_frame(&mut m, &mut st, &black, 66_666);
    assert!(none.is_none());
    assert_eq!(stages, ["pose_landmark"]);
    assert_eq!(st.tracked(), None, "lost: nothing tracked");
    let (none, stages) = pose_frame(&mut m, &mut st, &black, 99_999);
    assert!(none.is_none());
    assert_eq!(stages, ["pose_detection"], "no person: no landmark stage");
    let (back, stages) = pose_frame(&mut m, &mut st, &frame, 133_332);
    assert!(back.is_some());
    assert_eq!(stages, ["pose_detection", "pose_landmark"]);
}

/// The share of a mask's pixels at or above 0.5.
fn person_share(mask: &Mat) -> f64 {
    let on: usize = (0..mask.rows())
        .map(|y| {
            mask.at_row::<f32>(y)
                .unwrap()
                .iter()
                .filter(|&&p| p >= 0.5)
                .count()
        })
        .sum();
    on as f64 / (mask.rows() * mask.cols()) as f64
}

#[test]
fn selfie_masks_have_the_frame_size_and_nobody_on_a_black_frame() {
    let frame = photo(&root().join("models/testdata/astronaut.png"));
    let black = Mat::zeros(240, 320, opencv::core::CV_8UC3)
        .unwrap()
        .to_mat()
        .unwrap();
    for name in [
        "selfie_segmentation.tflite",
        "selfie_segmentation_landscape.tflite",
    ] {
        let mut s = load_selfie(name);
        let mask = s.run(&frame).unwrap();
        assert_eq!((mask.cols(), mask.rows()), (frame.cols(), frame.rows()));
        let share = person_share(&mask);
        eprintln!("{name}: astronaut.png {share:.4} of the pixels are the person");
        assert!(share > 0.3, "{name}: {share}");
        let mask = s.run(&black).unwrap();
        assert_eq!((mask.cols(), mask.rows()), (320, 240));
        assert_eq!(
            person_share(&mask),
            0.0,
            "{name}: a person on a black frame"
        );
    }
}
