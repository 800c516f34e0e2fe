//! Pose and selfie segmentation on the real models and photographs,
//! against MediaPipe's own results (`tests/fixtures/mediapipe/`).

use opencv::core::{Mat, Vector};
use opencv::imgcodecs;
use opencv::prelude::*;
use sidecar_proto::v1::{
    PipelineModels, PoseTask, SegmentationMaskFormat, SelfieSegmentationTask, StageTiming,
    VisionOptions,
};
use worker_runtime::Code;

use super::pose::{self, Models, State};
use super::pose_test_support::{
    distances, f, fixture_mask, fixtures, iou, model, photo, root, runtime, testdata,
};
use super::segmentation::{Selfie, check as check_selfie};

pub(crate) fn load_pose() -> Models {
    Models::load(
        &runtime(),
        &model("pose_detection.tflite"),
        &model("pose_landmark_full.tflite"),
        1,
    )
    .expect("the pose models load")
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
    let m = refused(Selfie::load(&rt, &testdata("astronaut.png"), 1));
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
        check_selfie(
            &SelfieSegmentationTask {
                threshold,
                format,
                ..Default::default()
            },
            true,
        )
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

/// Runs pose on one frame; the stages it ran.
pub(crate) fn pose_frame(
    m: &mut Models,
    st: &mut State,
    frame: &Mat,
    t_us: i64,
) -> (Option<sidecar_proto::v1::Pose>, Vec<String>) {
    let (p, stages) = pose_timed(m, st, frame, t_us);
    (p, stages.into_iter().map(|s| s.stage).collect())
}

/// Runs pose on one frame; the stages it ran with their times.
pub(crate) fn pose_timed(
    m: &mut Models,
    st: &mut State,
    frame: &Mat,
    t_us: i64,
) -> (Option<sidecar_proto::v1::Pose>, Vec<StageTiming>) {
    let mut stages: Vec<StageTiming> = vec![];
    let p = pose::run(m, st, frame, t_us, 0, &mut stages).expect("pose runs");
    (p, stages)
}

#[test]
fn the_detector_runs_only_when_the_pose_is_not_tracked() {
    let mut m = load_pose();
    let frame = photo(&testdata("astronaut.png"));
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

#[test]
fn pose_matches_mediapipe_on_the_fixture_photos() {
    let mut m = load_pose();
    let (mut with, mut without) = (0, 0);
    for (path, fx) in fixtures(".pose.json") {
        let name = fx["image"].as_str().unwrap();
        let frame = photo(&testdata(name));
        let (w, h) = (frame.cols() as f32, frame.rows() as f32);
        assert_eq!((w, h), (f(&fx["width"]), f(&fx["height"])), "{name}");
        // Static-image mode: a fresh state, as ProcessBatch gives each image.
        // The mask at the photo's size (people_stairs.jpg is over the
        // default bound of 2,097,152 pixels).
        let mut st = State::new(&PoseTask {
            segmentation: true,
            segmentation_max_pixels: super::segmentation::MAX_MASK_PIXELS,
            ..Default::default()
        })
        .unwrap();
        let (pose, stages) = pose_frame(&mut m, &mut st, &frame, 0);
        let expected = fx["poses"].as_array().unwrap();
        assert_eq!(
            usize::from(pose.is_some()),
            expected.len(),
            "{}: pose count",
            path.display()
        );
        assert_eq!(stages[0], "pose_detection", "static-image mode");
        let Some(pose) = pose else {
            without += 1;
            continue;
        };
        with += 1;
        let diag = (w * w + h * h).sqrt();
        let (mean, max, seen) = distances(&pose.landmarks, &expected[0]["landmarks"]);
        let mine = pose.segmentation.as_ref().expect("the mask asked for");
        let ours: Vec<bool> = mine.data.iter().map(|&b| b >= 128).collect();
        let iou = iou(&ours, &fixture_mask(&fx["segmentation"]));
        eprintln!(
            "pose {name}: mean {mean:.2} px ({:.3} % of the diagonal), max {max:.2} px, visible mean {seen:.2} px; mask IoU {iou:.4}",
            100.0 * mean / diag
        );
        assert!(mean <= 0.015 * diag, "{name}: mean {mean} px");
        assert!(iou >= 0.95, "{name}: mask IoU {iou}");
        assert_eq!(pose.world_landmarks.len(), 33);
        let (wm, _, _) = distances(
            &pose
                .world_landmarks
                .iter()
                .map(|l| sidecar_proto::v1::Landmark {
                    x: l.x,
                    y: l.y,
                    ..Default::default()
                })
                .collect::<Vec<_>>(),
            &expected[0]["world_landmarks"],
        );
        eprintln!("pose {name}: world landmarks mean x/y distance {wm:.4} m");
        assert!(wm < 0.05, "{name}: world landmarks {wm} m off");
    }
    assert!(
        with > 0 && without > 0,
        "the fixtures need photos with and without a person ({with}, {without})"
    );
}

#[test]
fn a_batch_runs_the_detector_on_every_image_a_stream_tracks() {
    use crate::tasks::{self, Prepared};
    use sidecar_proto::v1::{ProcessResponse, vision_task::Task};
    let mut served = crate::tasks::Served::new(
        crate::tasks::Detector::Cascade(
            crate::detect::Cascade::system("haarcascade_frontalface_default.xml").unwrap(),
        ),
        Default::default(),
    );
    super::load(
        &mut served,
        &root().join("runtime/litert/libLiteRt.so"),
        &VisionOptions {
            pipeline: Some(PipelineModels {
                pose_detection: model("pose_detection.tflite").display().to_string(),
                pose_landmark: model("pose_landmark_full.tflite").display().to_string(),
                selfie_segmentation: model("selfie_segmentation.tflite").display().to_string(),
                ..Default::default()
            }),
            ..Default::default()
        },
    )
    .unwrap();
    let tasks = [
        Task::Pose(PoseTask {
            segmentation: true,
            ..Default::default()
        }),
        Task::SelfieSegmentation(SelfieSegmentationTask {
            threshold: 0.5,
            format: SegmentationMaskFormat::Png as i32,
            ..Default::default()
        }),
    ];
    for t in &tasks {
        tasks::check(t, &served).unwrap();
    }
    let mut prepared = Prepared::new(&tasks, &served.limits).unwrap();
    let frame = photo(&testdata("astronaut.png"));
    let mut frame_stages = |prepared: &mut Prepared| {
        let mut r = ProcessResponse::default();
        tasks::run(&mut served, &tasks, prepared, &frame, &mut r, "t", 0).unwrap();
        let stages: Vec<String> = r.stages.iter().map(|s| s.stage.clone()).collect();
        (r, stages)
    };
    // ProcessBatch: each image alone.
    for _ in 0..2 {
        prepared.still();
        let (r, stages) = frame_stages(&mut prepared);
        assert_eq!(
            stages,
            ["pose_detection", "pose_landmark", "selfie_segmentation"]
        );
        let pose = r.pose.expect("a person");
        let mask = pose.segmentation.expect("the pose mask");
        assert_eq!(
            (mask.width, mask.height, mask.data.len()),
            (512, 512, 512 * 512)
        );
        let selfie = r.segmentation.expect("the selfie mask");
        assert_eq!(selfie.format, SegmentationMaskFormat::Png as i32);
        let png = imgcodecs::imdecode(
            &Vector::<u8>::from_slice(&selfie.data),
            imgcodecs::IMREAD_GRAYSCALE,
        )
        .unwrap();
        assert_eq!((png.cols(), png.rows()), (512, 512));
        let values: std::collections::BTreeSet<u8> =
            png.data_bytes().unwrap().iter().copied().collect();
        assert_eq!(values, [0u8, 255].into(), "thresholded");
    }
    // A stream: the next frame is tracked.
    let (r, stages) = frame_stages(&mut prepared);
    assert_eq!(stages, ["pose_landmark", "selfie_segmentation"]);
    assert!(r.pose.is_some_and(|p| p.detection.is_none()));
}
