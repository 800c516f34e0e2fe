//! The face mesh on the real models (`models/mediapipe/`) and the real
//! photographs (`models/testdata/`), against MediaPipe's own results
//! (`tests/fixtures/mediapipe/`, made by `scripts/mediapipe_fixtures.py`).

use opencv::core::{Mat, Rect};
use opencv::imgcodecs;
use opencv::prelude::*;
use sidecar_proto::v1::{
    FaceMeshTask, Image, Landmark, PipelineModels, ProcessBatchRequest, ProcessResponse,
    VisionOptions, VisionTask, image, vision_task,
};
use sidecar_proto::worker::{Load, load};
use worker_runtime::{Code, Resolved, WorkerError};

use crate::batch::Batch;
use crate::serve::load_with;
use crate::tasks::{self, Prepared, Served};

const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
/// The photographs `scripts/setup.sh` extracts.
pub(super) const TESTDATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../models/testdata");

pub(super) fn model(name: &str) -> String {
    format!("{ROOT}/models/mediapipe/{name}.tflite")
}

/// Loads a VISION model (`main`: its own detector) with these companions.
pub(super) fn load_served(main: &str, pipeline: PipelineModels) -> Result<Served, WorkerError> {
    let lib = format!("{ROOT}/runtime/litert/libLiteRt.so");
    assert!(
        std::path::Path::new(&lib).is_file(),
        "{lib} is missing (run scripts/setup.sh)"
    );
    load_with(
        &Load {
            path: main.to_string(),
            options: Some(load::Options::Vision(VisionOptions {
                threads: 1,
                pipeline: Some(pipeline),
                ..Default::default()
            })),
            ..Default::default()
        },
        std::path::Path::new(&lib),
    )
}

/// BlazeFace short range as the worker's model, the face landmark model
/// (and the iris model) as companions.
pub(super) fn served(iris: bool) -> Served {
    load_served(
        &model("face_detection_short_range"),
        PipelineModels {
            face_landmark: model("face_landmark"),
            iris_landmark: if iris {
                model("iris_landmark")
            } else {
                String::new()
            },
            ..Default::default()
        },
    )
    .expect("load the face mesh's models")
}

pub(super) fn photo(name: &str) -> Mat {
    let path = format!("{TESTDATA}/{name}");
    let m = imgcodecs::imread(&path, imgcodecs::IMREAD_COLOR).expect("imread");
    assert!(m.cols() > 0, "{path} is missing (run scripts/setup.sh)");
    m
}

/// A task's prepared state, after checking it.
pub(super) fn prepare(s: &Served, task: &FaceMeshTask) -> Result<Prepared, WorkerError> {
    let t = vision_task::Task::FaceMesh(*task);
    tasks::check(&t, s)?;
    Prepared::new(std::slice::from_ref(&t), &s.limits)
}

/// One frame through the task, as a stream runs it.
pub(super) fn run(
    s: &mut Served,
    task: &FaceMeshTask,
    prepared: &mut Prepared,
    frame: &Mat,
) -> ProcessResponse {
    let t = vision_task::Task::FaceMesh(*task);
    let mut r = ProcessResponse::default();
    tasks::run(
        s,
        std::slice::from_ref(&t),
        prepared,
        frame,
        &mut r,
        "test",
        0,
    )
    .expect("run");
    r
}

pub(super) fn ran(r: &ProcessResponse, stage: &str) -> bool {
    r.stages.iter().any(|s| s.stage == stage)
}

/// Mean and largest distance in pixels (x, y) between two lists of points.
pub(super) fn distances(ours: &[Landmark], truth: &[[f64; 2]]) -> (f64, f64) {
    assert_eq!(ours.len(), truth.len(), "landmark counts");
    let d: Vec<f64> = ours
        .iter()
        .zip(truth)
        .map(|(a, b)| ((a.x as f64 - b[0]).powi(2) + (a.y as f64 - b[1]).powi(2)).sqrt())
        .collect();
    (
        d.iter().sum::<f64>() / d.len() as f64,
        d.iter().copied().fold(0.0, f64::max),
    )
}

fn refused(e: WorkerError, needle: &str) {
    assert_eq!(e.code, Code::InvalidArgument, "{e:?}");
    assert!(
        e.message.contains(needle),
        "{:?} lacks {needle:?}",
        e.message
    );
}

#[test]
fn the_attention_model_and_models_that_do_not_fit_their_role_are_refused() {
    let short = model("face_detection_short_range");
    let e = load_served(
        &short,
        PipelineModels {
            face_landmark: model("face_landmark_with_attention"),
            ..Default::default()
        },
    )
    .expect_err("the attention model");
    refused(e.clone(), "pipeline.face_landmark");
    refused(e.clone(), "face_landmark_with_attention.tflite");
    refused(e, "custom ops");

    let e = load_served(
        &short,
        PipelineModels {
            face_landmark: model("hand_landmark_full"),
            ..Default::default()
        },
    )
    .expect_err("a hand model as the face landmark model");
    refused(e.clone(), "pipeline.face_landmark");
    refused(
        e,
        "inputs are [float32 [1, 224, 224, 3]]; a face landmark model takes one float32 [1, 192, 192, 3]",
    );

    let e = load_served(
        &short,
        PipelineModels {
            face_landmark: model("face_landmark"),
            face_detection: model("palm_detection_full"),
            ..Default::default()
        },
    )
    .expect_err("palm detection as the face detector");
    refused(e.clone(), "pipeline.face_detection");
    refused(
        e,
        "[[1, 2016, 18], [1, 2016, 1]] are not [1, 2304, 16] boxes",
    );

    let e = load_served(
        &short,
        PipelineModels {
            face_landmark: model("face_landmark"),
            face_detection: model("selfie_segmentation"),
            ..Default::default()
        },
    )
    .expect_err("a segmentation model as the face detector");
    refused(e.clone(), "pipeline.face_detection");
    refused(
        e,
        "[[1, 256, 256, 3]]; a face detector takes [1, 128, 128, 3]",
    );

    let e = load_served(
        &short,
        PipelineModels {
            face_landmark: model("face_landmark"),
            iris_landmark: model("face_detection_short_range"),
            ..Default::default()
        },
    )
    .expect_err("a detector as the iris model");
    refused(e.clone(), "pipeline.iris_landmark");
    refused(e, "[1, 64, 64, 3]");

    let e = load_served(
        &short,
        PipelineModels {
            iris_landmark: model("iris_landmark"),
            ..Default::default()
        },
    )
    .expect_err("an iris model without the face mesh");
    refused(e, "pipeline.iris_landmark is set");

    let missing = format!("{ROOT}/models/mediapipe/no_such_model.tflite");
    let e = load_served(
        &short,
        PipelineModels {
            face_landmark: missing.clone(),
            ..Default::default()
        },
    )
    .expect_err("a missing file");
    refused(e.clone(), "pipeline.face_landmark");
    refused(e, &missing);

    // The full-range detector fits the role.
    let s = load_served(
        &short,
        PipelineModels {
            face_landmark: model("face_landmark"),
            face_detection: model("face_detection_full_range_sparse"),
            ..Default::default()
        },
    )
    .expect("full range as the face detector");
    assert!(s.face_mesh.as_ref().is_some_and(|m| m.detector.is_some()));
}

#[test]
fn bad_options_and_missing_models_are_refused_naming_them() {
    let s = served(false);
    let bad = |t: FaceMeshTask| prepare(&s, &t).expect_err("refused");
    let e = bad(FaceMeshTask {
        max_faces: 9,
        ..Default::default()
    });
    refused(e, "face_mesh.max_faces 9 exceeds the limit of 8");
    let e = bad(FaceMeshTask {
        min_detection_score: 1.5,
        ..Default::default()
    });
    refused(e, "face_mesh.min_detection_score 1.5 is outside 0..1");
    let e = bad(FaceMeshTask {
        min_tracking_score: f32::NAN,
        ..Default::default()
    });
    refused(e, "face_mesh.min_tracking_score NaN is outside 0..1");
    let e = bad(FaceMeshTask {
        refine_landmarks: true,
        ..Default::default()
    });
    refused(e, "face_mesh.refine_landmarks needs pipeline.iris_landmark");

    // No face landmark model.
    let bare = load_served(
        &model("face_detection_short_range"),
        PipelineModels::default(),
    )
    .expect("a detector alone");
    let e = prepare(&bare, &FaceMeshTask::default()).expect_err("no landmark model");
    refused(e, "face_mesh needs pipeline.face_landmark");

    // A worker whose own model is not a face detector (a cascade), without
    // pipeline.face_detection.
    let cascade = load_served(
        "/usr/share/opencv4/haarcascades/haarcascade_frontalface_default.xml",
        PipelineModels {
            face_landmark: model("face_landmark"),
            ..Default::default()
        },
    )
    .expect("a cascade (opencv-data) with the face landmark model");
    let e = prepare(&cascade, &FaceMeshTask::default()).expect_err("no face detector");
    refused(e, "pipeline.face_detection is not set");
}

#[test]
fn a_photo_without_a_face_gives_an_empty_result() {
    let mut s = served(false);
    let task = FaceMeshTask::default();
    let mut p = prepare(&s, &task).expect("prepare");
    let full = photo("astronaut.png");
    // The lower right quarter: the suit and the flag, no face.
    let part = Mat::roi(&full, Rect::new(256, 256, 256, 256))
        .expect("roi")
        .try_clone()
        .expect("clone");
    let r = run(&mut s, &task, &mut p, &part);
    assert!(r.face_meshes.is_empty(), "{:?}", r.face_meshes.len());
    assert!(ran(&r, "face_detection"), "{:?}", r.stages);
    assert!(!ran(&r, "face_landmark"), "{:?}", r.stages);
}

#[test]
fn process_batch_detects_on_every_image() {
    let mut s = served(false);
    let bytes = std::fs::read(format!("{TESTDATA}/astronaut.png")).expect("photo");
    let img = || Image {
        data: Some(image::Data::Encoded(bytes.clone().into())),
    };
    let req = ProcessBatchRequest {
        images: vec![img(), img(), img()],
        task: Some(VisionTask {
            task: Some(vision_task::Task::FaceMesh(FaceMeshTask::default())),
        }),
        ..Default::default()
    };
    let mut b = Batch::start(1, 0, req, Resolved::default(), &s).expect("start");
    let answer = loop {
        if let Some(a) = b.step(&mut s, usize::MAX).expect("step") {
            break a;
        }
    };
    assert_eq!(answer.results.len(), 3);
    for r in &answer.results {
        assert_eq!(r.face_meshes.len(), 1);
        assert_eq!(r.face_meshes[0].landmarks.len(), 468);
        assert!(r.face_meshes[0].detection.is_some());
        assert!(ran(r, "face_detection"), "{:?}", r.stages);
    }
    assert_eq!(answer.results[0].face_meshes, answer.results[2].face_meshes);
}

#[test]
fn association_keeps_tracked_faces_over_their_detections_and_at_most_max_faces() {
    use crate::pipeline::face_mesh::associate;
    use crate::pipeline::roi::Region;
    use crate::ssd::Raw;
    let at = |x: f32| Region::from_box(x, 0.1, x + 0.2, 0.3);
    let det = |x: f32, score: f32| {
        (
            at(x),
            Some(Raw {
                xmin: x,
                ymin: 0.1,
                xmax: x + 0.2,
                ymax: 0.3,
                score,
                class_id: 0,
                keypoints: vec![],
            }),
        )
    };
    // A detection of the tracked face (shifted a little) gives way to it;
    // the new face comes first, then the tracked one (MediaPipe's order).
    let tracked = Region::from_box(0.01, 0.1, 0.21, 0.3);
    let out = associate(vec![det(0.0, 0.9), det(0.5, 0.8)], vec![tracked], 2);
    assert_eq!(out.len(), 2);
    assert_eq!(out[0].0, at(0.5));
    assert!(out[0].1.is_some());
    assert_eq!(out[1].0, tracked);
    assert!(out[1].1.is_none());
    // Two new faces beside one tracked, max 2: the weaker new one is left
    // out, the tracked one kept.
    let out = associate(vec![det(0.3, 0.9), det(0.6, 0.7)], vec![tracked], 2);
    assert_eq!(out.len(), 2);
    assert_eq!(out[0].0, at(0.3));
    assert_eq!(out[1].0, tracked);
    // Nothing overlapping, nothing over the limit: all kept.
    assert_eq!(associate(vec![det(0.3, 0.9)], vec![tracked], 2).len(), 2);
    assert!(associate(vec![], vec![], 1).is_empty());
}

#[test]
fn a_face_whose_presence_or_points_are_not_finite_numbers_is_dropped() {
    use crate::pipeline::face_mesh::kept;
    let points = vec![[0.5f32, 0.5, 3.0]; 468];
    assert!(kept(0.9, &points, 0.5));
    assert!(!kept(0.4, &points, 0.5), "under the tracking score");
    assert!(
        !kept(f32::NAN, &points, 0.5),
        "a presence that is not a number"
    );
    for (i, v) in [
        (0, f32::NAN),
        (467, f32::INFINITY),
        (200, f32::NEG_INFINITY),
    ] {
        let mut p = points.clone();
        p[i][i % 3] = v;
        assert!(!kept(0.9, &p, 0.5), "point {i}: {v}");
    }
    // Iris points appended (478) are checked the same way.
    let mut p = points.clone();
    p.extend([[f32::NAN, 0.5, 0.0]; 10]);
    assert!(!kept(0.9, &p, 0.5), "a NaN iris point");
}
