//! The MediaPipe solutions through the real supervisor and worker: one
//! VISION model whose companion models (`vision.pipeline`) the supervisor
//! opens and hands over; hands, pose, face mesh and selfie segmentation in
//! ProcessBatch against MediaPipe's own results on the same photographs
//! (`tests/fixtures/mediapipe/`), a tracked face-mesh stream, and the
//! refusals.

use std::time::Duration;

use e2e::mediapipe::{FACE_LANDMARK, HAND, PALM, POSE_DETECTION, POSE_LANDMARK, SELFIE, fixture};
use e2e::vision::{BLAZEFACE, raw_frame};
use e2e::{Sidecar, add_model, root, serial, store};
use serde_json::Value;
use sidecar_proto::v1::vision_service_client::VisionServiceClient;
use sidecar_proto::v1::{
    DeleteFileRequest, FaceMeshTask, HandsTask, Image, LoadModelRequest, ModelFamily,
    PipelineModels, PixelFormat, PoseTask, ProcessBatchRequest, ProcessRequest, ProcessResponse,
    SegmentationMaskFormat, SelfieSegmentationTask, StreamConfig, VisionOptions, VisionTask, image,
    load_model_request, process_request, vision_task,
};
use tonic::Code;
use tonic::transport::Channel;

const ATTENTION: &str = "mediapipe/face_landmark_with_attention.tflite";

/// `mp` with every solution's companions (the attention mesh model in the
/// store too).
async fn sidecar() -> (Sidecar, VisionServiceClient<Channel>) {
    e2e::mediapipe::sidecar(
        &[
            ("palm_detection", PALM),
            ("hand_landmark", HAND),
            ("pose_detection", POSE_DETECTION),
            ("pose_landmark", POSE_LANDMARK),
            ("face_landmark", FACE_LANDMARK),
            ("selfie_segmentation", SELFIE),
        ],
        &[ATTENTION],
    )
    .await
}

fn photo(name: &str) -> Image {
    let path = root().join("models/testdata").join(name);
    let bytes = std::fs::read(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (run scripts/setup.sh)", path.display()));
    Image {
        data: Some(image::Data::Encoded(bytes.into())),
    }
}

async fn batch(
    client: &mut VisionServiceClient<Channel>,
    task: vision_task::Task,
    photos: &[&str],
) -> Vec<ProcessResponse> {
    client
        .process_batch(ProcessBatchRequest {
            model_id: "mp".into(),
            task: Some(VisionTask { task: Some(task) }),
            images: photos.iter().map(|p| photo(p)).collect(),
        })
        .await
        .expect("batch")
        .into_inner()
        .results
}

/// Points `[x, y, ...]` of a fixture's landmark list.
fn points(v: &Value) -> Vec<(f32, f32)> {
    v.as_array()
        .expect("landmarks")
        .iter()
        .map(|p| {
            (
                p[0].as_f64().expect("x") as f32,
                p[1].as_f64().expect("y") as f32,
            )
        })
        .collect()
}

/// Mean and max distance between two landmark lists of equal length.
fn distance(ours: &[(f32, f32)], theirs: &[(f32, f32)]) -> (f32, f32) {
    assert_eq!(ours.len(), theirs.len(), "landmark counts");
    let d: Vec<f32> = ours
        .iter()
        .zip(theirs)
        .map(|(a, b)| ((a.0 - b.0).powi(2) + (a.1 - b.1).powi(2)).sqrt())
        .collect();
    (
        d.iter().sum::<f32>() / d.len() as f32,
        d.iter().cloned().fold(0.0, f32::max),
    )
}

fn diagonal(f: &Value) -> f32 {
    let (w, h) = (
        f["width"].as_f64().expect("w"),
        f["height"].as_f64().expect("h"),
    );
    (w * w + h * h).sqrt() as f32
}

/// Checks each of `ours` against the fixture's list (`theirs`), matched by
/// the nearest first landmark; returns the worst mean in % of the diagonal.
fn compare(what: &str, ours: Vec<Vec<(f32, f32)>>, theirs: Vec<Vec<(f32, f32)>>, diag: f32) -> f32 {
    assert_eq!(ours.len(), theirs.len(), "{what}: counts");
    let mut worst = 0f32;
    for t in &theirs {
        let o = ours
            .iter()
            .min_by(|a, b| {
                let da = (a[0].0 - t[0].0).hypot(a[0].1 - t[0].1);
                let db = (b[0].0 - t[0].0).hypot(b[0].1 - t[0].1);
                da.total_cmp(&db)
            })
            .expect("one");
        let (mean, max) = distance(o, t);
        eprintln!(
            "{what}: mean {mean:.2} px ({:.3} %), max {max:.2} px",
            100.0 * mean / diag
        );
        worst = worst.max(100.0 * mean / diag);
    }
    assert!(
        worst <= 1.5,
        "{what}: mean distance {worst:.3} % of the diagonal > 1.5 %"
    );
    worst
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_solution_matches_mediapipe_on_the_photographs_through_the_sidecar() {
    let _serial = serial().await;
    let (sc, mut client) = sidecar().await;
    let pid = sc.model("mp").await.worker_pid;

    // Hands (full models) on two people with hands, and a photo without.
    let hands = vision_task::Task::Hands(HandsTask {
        max_hands: 2,
        ..Default::default()
    });
    let r = batch(
        &mut client,
        hands,
        &["people_sofa.jpg", "people_stairs.jpg", "rocket.jpg"],
    )
    .await;
    for (res, name) in r.iter().zip(["people_sofa", "people_stairs"]) {
        let f = fixture(&format!("{name}.hands.full.json"));
        let theirs: Vec<_> = f["hands"]
            .as_array()
            .expect("hands")
            .iter()
            .map(|h| points(&h["landmarks"]))
            .collect();
        let ours: Vec<_> = res
            .hands
            .iter()
            .map(|h| h.landmarks.iter().map(|l| (l.x, l.y)).collect())
            .collect();
        compare(&format!("hands {name}"), ours, theirs, diagonal(&f));
        let mut want: Vec<&str> = f["hands"]
            .as_array()
            .expect("hands")
            .iter()
            .map(|h| h["handedness"]["label"].as_str().expect("label"))
            .collect();
        let mut got: Vec<&str> = res.hands.iter().map(|h| h.handedness.as_str()).collect();
        want.sort_unstable();
        got.sort_unstable();
        assert_eq!(got, want, "handedness on {name}");
        assert!(res.hands.iter().all(|h| h.world_landmarks.len() == 21));
        assert!(
            res.stages.iter().any(|s| s.stage == "palm_detection"),
            "{:?}",
            res.stages
        );
    }
    assert!(r[2].hands.is_empty(), "no hands on the rocket");

    // Pose on the bus photo (one man), none on the rocket.
    let pose = vision_task::Task::Pose(PoseTask {
        segmentation: true,
        ..Default::default()
    });
    let r = batch(&mut client, pose, &["bus.jpg", "rocket.jpg"]).await;
    let f = fixture("bus.pose.json");
    let theirs: Vec<_> = f["poses"]
        .as_array()
        .expect("poses")
        .iter()
        .map(|p| points(&p["landmarks"]))
        .collect();
    let ours: Vec<_> = r[0]
        .pose
        .iter()
        .map(|p| p.landmarks.iter().map(|l| (l.x, l.y)).collect())
        .collect();
    compare("pose bus", ours, theirs, diagonal(&f));
    let p = r[0].pose.as_ref().expect("a pose");
    assert_eq!(p.world_landmarks.len(), 33);
    let mask = p.segmentation.as_ref().expect("the pose mask");
    assert_eq!(
        (mask.width, mask.height),
        (
            f["width"].as_u64().expect("w") as u32,
            f["height"].as_u64().expect("h") as u32
        )
    );
    assert!(r[1].pose.is_none(), "no pose on the rocket");

    // Face mesh on two faces, none on the rocket.
    let mesh = vision_task::Task::FaceMesh(FaceMeshTask {
        max_faces: 2,
        ..Default::default()
    });
    let r = batch(&mut client, mesh, &["people_stairs.jpg", "rocket.jpg"]).await;
    let f = fixture("people_stairs.face_mesh.mesh.json");
    let theirs: Vec<_> = f["faces"]
        .as_array()
        .expect("faces")
        .iter()
        .map(|m| points(&m["landmarks"]))
        .collect();
    let ours: Vec<_> = r[0]
        .face_meshes
        .iter()
        .map(|m| m.landmarks.iter().map(|l| (l.x, l.y)).collect())
        .collect();
    compare("face mesh people_stairs", ours, theirs, diagonal(&f));
    assert!(r[1].face_meshes.is_empty());

    // Selfie segmentation: the mask at 0.5 against MediaPipe's.
    let selfie = vision_task::Task::SelfieSegmentation(SelfieSegmentationTask {
        threshold: 0.5,
        format: SegmentationMaskFormat::Raw as i32,
        ..Default::default()
    });
    let r = batch(&mut client, selfie, &["grace_hopper.jpg"]).await;
    let f = fixture("grace_hopper.selfie_segmentation.general.json");
    let mask = r[0].segmentation.as_ref().expect("a mask");
    let (w, h) = (mask.width as usize, mask.height as usize);
    assert_eq!(mask.data.len(), w * h);
    let rows = f["segmentation"]["rle_rows"].as_array().expect("rows");
    assert_eq!(rows.len(), h);
    let (mut inter, mut union) = (0u64, 0u64);
    for (y, row) in rows.iter().enumerate() {
        let (mut x, mut fg) = (0usize, false);
        for run in row.as_array().expect("runs") {
            let n = run.as_u64().expect("run") as usize;
            for xi in x..x + n {
                let ours = mask.data[y * w + xi] >= 128;
                inter += u64::from(ours && fg);
                union += u64::from(ours || fg);
            }
            x += n;
            fg = !fg;
        }
        assert_eq!(x, w);
    }
    let iou = inter as f64 / union.max(1) as f64;
    eprintln!("selfie grace_hopper: IoU {iou:.4}");
    assert!(iou >= 0.95, "IoU {iou}");

    let after = sc.model("mp").await;
    assert_eq!(after.worker_pid, pid, "the worker served every task");
    // A companion in use is protected like the model file.
    let err = sc
        .manage()
        .await
        .delete_file(DeleteFileRequest { path: HAND.into() })
        .await
        .expect_err("a companion in use");
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(
        err.message().contains("used by loaded model(s) mp"),
        "{}",
        err.message()
    );
    assert_eq!(sc.admin_get("/readyz").0, 200);
}

/// Decodes a PNG to BGR pixels with ffmpeg (lossless: the same pixels as
/// OpenCV's).
fn bgr_of(png: &std::path::Path) -> (Vec<u8>, usize, usize) {
    let probe = std::process::Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-i"])
        .arg(png)
        .args(["-f", "rawvideo", "-pix_fmt", "bgr24", "-"])
        .output()
        .expect("ffmpeg (run scripts/setup.sh)");
    assert!(
        probe.status.success(),
        "{}",
        String::from_utf8_lossy(&probe.stderr)
    );
    let (w, h) = (512, 512);
    assert_eq!(probe.stdout.len(), w * h * 3, "astronaut.png is 512x512");
    (probe.stdout, w, h)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_face_mesh_stream_tracks_the_face_and_runs_the_detector_rarely() {
    let _serial = serial().await;
    let (sc, mut client) = sidecar().await;
    let video = fixture("video.json");
    let spec = &video["solutions"]["face_mesh"];
    assert_eq!(spec["photo"], "astronaut.png");
    let truth = fixture("video.face_mesh.json");
    let step = truth["landmark_indices_step"].as_u64().expect("step") as usize;
    let (pixels, pw, _) = bgr_of(&root().join("models/testdata/astronaut.png"));
    let frames: Vec<(usize, usize, usize, usize)> = spec["frames"]
        .as_array()
        .expect("frames")
        .iter()
        .map(|f| {
            let g = |k: &str| f[k].as_u64().expect("crop") as usize;
            (g("x"), g("y"), g("w"), g("h"))
        })
        .collect();
    let mut msgs = vec![ProcessRequest {
        msg: Some(process_request::Msg::Config(StreamConfig {
            model_id: "mp".into(),
            tasks: vec![VisionTask {
                task: Some(vision_task::Task::FaceMesh(FaceMeshTask {
                    max_faces: 1,
                    ..Default::default()
                })),
            }],
            max_pending_frames: 4,
            ..Default::default()
        })),
    }];
    for (i, &(x, y, w, h)) in frames.iter().enumerate() {
        let mut crop = Vec::with_capacity(w * h * 3);
        for row in y..y + h {
            crop.extend_from_slice(&pixels[(row * pw + x) * 3..(row * pw + x + w) * 3]);
        }
        msgs.push(raw_frame(i as u64, w, h, PixelFormat::Bgr8, crop));
    }
    let mut out = client
        .process(tokio_stream::iter(msgs))
        .await
        .expect("stream")
        .into_inner();
    let mut results = Vec::new();
    while let Some(r) = tokio::time::timeout(Duration::from_secs(120), out.message())
        .await
        .expect("results in time")
        .expect("no error")
    {
        results.push(r);
    }
    assert_eq!(results.len(), frames.len());
    let detector: Vec<usize> = results
        .iter()
        .enumerate()
        .filter(|(_, r)| r.stages.iter().any(|s| s.stage == "face_detection"))
        .map(|(i, _)| i)
        .collect();
    let in_view: Vec<usize> = (0..60).chain(72..96).collect();
    let ran_in_view = in_view.iter().filter(|i| detector.contains(i)).count();
    eprintln!("face mesh stream: the detector ran on frames {detector:?}");
    assert!(
        (ran_in_view as f64) < 0.2 * in_view.len() as f64,
        "the detector ran on {ran_in_view} of {} frames with the face in view",
        in_view.len()
    );
    assert!(
        detector.contains(&0) && detector.contains(&72),
        "it runs first and again at re-entry: {detector:?}"
    );
    let diag = (256f32 * 256.0 * 2.0).sqrt();
    let mut worst = 0f32;
    for (i, r) in results.iter().enumerate() {
        let want = &truth["frames"][i]["faces"];
        let want = want.as_array().expect("faces");
        assert_eq!(r.face_meshes.len(), want.len(), "faces on frame {i}");
        if let (Some(ours), Some(theirs)) = (r.face_meshes.first(), want.first()) {
            let ours: Vec<(f32, f32)> = ours
                .landmarks
                .iter()
                .step_by(step)
                .map(|l| (l.x, l.y))
                .collect();
            let (mean, _) = distance(&ours, &points(&theirs["landmarks"]));
            worst = worst.max(100.0 * mean / diag);
        }
    }
    eprintln!("face mesh stream: worst frame's mean distance {worst:.3} % of the diagonal");
    assert!(worst <= 1.5, "{worst} %");
    assert_eq!(sc.model("mp").await.restarts, 0);
    assert_eq!(sc.admin_get("/readyz").0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn companions_that_are_missing_or_do_not_fit_are_refused_naming_them() {
    let _serial = serial().await;
    let store = store();
    for f in [BLAZEFACE, PALM, SELFIE, ATTENTION] {
        add_model(&store, f);
    }
    let sc = Sidecar::start(store, "");
    let supervisor = sc.child.id();
    let mut manage = sc.manage().await;
    let load = |pipeline: PipelineModels| LoadModelRequest {
        model_id: "mp".into(),
        family: ModelFamily::Vision as i32,
        path: BLAZEFACE.into(),
        options: Some(load_model_request::Options::Vision(VisionOptions {
            threads: 1,
            pipeline: Some(pipeline),
            ..Default::default()
        })),
        ..Default::default()
    };
    for (pipeline, says) in [
        (
            PipelineModels {
                hand_landmark: "mediapipe/nothing.tflite".into(),
                ..Default::default()
            },
            "vision.pipeline.hand_landmark: path \"mediapipe/nothing.tflite\": no such file in the model store",
        ),
        (
            PipelineModels {
                selfie_segmentation: "../../etc/passwd".into(),
                ..Default::default()
            },
            "vision.pipeline.selfie_segmentation: path \"../../etc/passwd\" contains '..'",
        ),
        (
            PipelineModels {
                palm_detection: SELFIE.into(),
                hand_landmark: SELFIE.into(),
                ..Default::default()
            },
            "pipeline.palm_detection",
        ),
        (
            PipelineModels {
                face_landmark: ATTENTION.into(),
                ..Default::default()
            },
            "pipeline.face_landmark",
        ),
    ] {
        let err = manage
            .load_model(load(pipeline.clone()))
            .await
            .expect_err("refused");
        assert_eq!(err.code(), Code::InvalidArgument, "{pipeline:?}: {err:?}");
        assert!(
            err.message().contains(says),
            "{pipeline:?}: {}",
            err.message()
        );
    }
    // Without companions the model loads; a task that needs one is refused
    // naming it, and the worker serves on.
    manage
        .load_model(load(PipelineModels::default()))
        .await
        .expect("loads");
    let pid = sc.model("mp").await.worker_pid;
    let mut client = VisionServiceClient::new(sc.channel().await);
    let err = client
        .process_batch(ProcessBatchRequest {
            model_id: "mp".into(),
            task: Some(VisionTask {
                task: Some(vision_task::Task::Hands(HandsTask::default())),
            }),
            images: vec![photo("astronaut.png")],
        })
        .await
        .expect_err("no hand models");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("pipeline.palm_detection"),
        "{}",
        err.message()
    );
    let err = client
        .process_batch(ProcessBatchRequest {
            model_id: "mp".into(),
            task: Some(VisionTask {
                task: Some(vision_task::Task::Hands(HandsTask {
                    max_hands: 1000,
                    ..Default::default()
                })),
            }),
            images: vec![photo("astronaut.png")],
        })
        .await
        .expect_err("too many hands");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(sc.model("mp").await.worker_pid, pid);
    assert_eq!(sc.child.id(), supervisor);
    assert_eq!(sc.admin_get("/readyz").0, 200);
}
