//! VISION tasks end to end on the real sidecar: template matching, auto-crop,
//! tracking with trajectories. (H.264 streams: `tests/vision_h264.rs`.)

use e2e::vision::{FACE, astronaut, iou, raw_frame, sidecar};
use e2e::{add_model, serial};
use sidecar_proto::v1::vision_service_client::VisionServiceClient;
use sidecar_proto::v1::{
    Box as PixelBox, Image, LoadModelRequest, ModelFamily, ObjectDetectionTask, PixelFormat,
    ProcessBatchRequest, ProcessRequest, RawImage, SsdOptions, StreamConfig, TrackingTask,
    VisionOptions, VisionTask, image, load_model_request, process_request, vision_task,
};
use tonic::Code;
use tonic::transport::Channel;

const POSE: &str = "mediapipe/pose_detection.tflite";
const PALM: &str = "mediapipe/palm_detection_lite.tflite";

/// A deterministic texture, BGR, `w`x`h`, shifted right by `dx` and down by
/// `dy` (what scrolls in from the edge is texture too): smooth structure at
/// several scales that never repeats within the frame, plus pixel noise.
fn texture(w: usize, h: usize, dx: usize, dy: usize) -> Vec<u8> {
    let value = |x: f64, y: f64, c: f64| -> u8 {
        let smooth = 60.0 * (x / 9.3 + c).sin() * (y / 7.1).cos()
            + 45.0 * ((x + 2.0 * y) / 23.7 + c * 0.7).sin()
            + 30.0 * ((x * x + y * y).sqrt() / 17.9).sin();
        let hash =
            ((x as u64 * 73_856_093) ^ (y as u64 * 19_349_663) ^ (c as u64 * 83_492_791)) % 17;
        (128.0 + smooth + hash as f64).clamp(0.0, 255.0) as u8
    };
    let mut out = Vec::with_capacity(w * h * 3);
    for y in 0..h {
        for x in 0..w {
            for c in 0..3 {
                out.push(value(
                    (x + 1000 - dx) as f64,
                    (y + 1000 - dy) as f64,
                    c as f64,
                ));
            }
        }
    }
    out
}

fn raw_bgr(w: u32, h: u32, data: Vec<u8>) -> Image {
    Image {
        data: Some(image::Data::Raw(RawImage {
            shm: Default::default(),
            width: w,
            height: h,
            format: PixelFormat::Bgr8 as i32,
            stride: 0,
            data: data.into(),
        })),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_noisy_template_from_another_frame_is_found_within_two_pixels() {
    use sidecar_proto::v1::{MatchMethod, TemplateMatchingTask};
    let _serial = serial().await;
    let (_sc, mut client) = sidecar().await;
    let (w, h) = (320usize, 240usize);
    // The template: a 48x36 patch of frame A at (100, 80), with noise.
    let a = texture(w, h, 0, 0);
    let (tx, ty, tw, th) = (100usize, 80usize, 48usize, 36usize);
    let mut patch = Vec::with_capacity(tw * th * 3);
    for y in ty..ty + th {
        for x in tx..tx + tw {
            for c in 0..3 {
                let noise = ((x * 31 + y * 17 + c * 7) % 21) as i32 - 10;
                patch.push((i32::from(a[(y * w + x) * 3 + c]) + noise).clamp(0, 255) as u8);
            }
        }
    }
    // Searched in frame B, where everything moved 7 px right and 3 down.
    let b = raw_bgr(w as u32, h as u32, texture(w, h, 7, 3));
    let task = |grayscale: bool, scale: f32| VisionTask {
        task: Some(vision_task::Task::TemplateMatching(TemplateMatchingTask {
            template: Some(raw_bgr(tw as u32, th as u32, patch.clone())),
            method: MatchMethod::CcoeffNormed as i32,
            grayscale,
            scale,
            min_score: 0.5,
        })),
    };
    for (grey, scale) in [(false, 1.0), (true, 1.0), (true, 0.5)] {
        let r = client
            .process_batch(ProcessBatchRequest {
                model_id: "faces".into(),
                task: Some(task(grey, scale)),
                images: vec![b.clone()],
            })
            .await
            .expect("batch")
            .into_inner();
        let m = r.results[0].template_match.expect("a match");
        let found = m.r#box.expect("box");
        eprintln!("grey {grey} scale {scale}: {found:?} score {}", m.score);
        assert!(m.found, "{m:?}");
        assert!(
            (found.x - 107.0).abs() <= 2.0 && (found.y - 83.0).abs() <= 2.0,
            "grey {grey} scale {scale}: {found:?}, expected (107, 83)"
        );
        assert_eq!((found.width, found.height), (tw as f32, th as f32));
    }

    // In a stream, every frame gets its match.
    let stream = vec![
        ProcessRequest {
            msg: Some(process_request::Msg::Config(StreamConfig {
                model_id: "faces".into(),
                tasks: vec![task(true, 1.0)],
                ..Default::default()
            })),
        },
        raw_frame(1, w, h, PixelFormat::Bgr8, texture(w, h, 7, 3)),
    ];
    let mut s = client
        .process(tokio_stream::iter(stream))
        .await
        .expect("open")
        .into_inner();
    let r = s.message().await.expect("result").expect("one");
    let found = r.template_match.expect("match").r#box.expect("box");
    assert!(
        (found.x - 107.0).abs() <= 2.0 && (found.y - 83.0).abs() <= 2.0,
        "{found:?}"
    );

    // A template larger than the frame, and a scale out of range.
    let small = raw_bgr(20, 20, vec![0u8; 20 * 20 * 3]);
    let err = client
        .process_batch(ProcessBatchRequest {
            model_id: "faces".into(),
            task: Some(task(false, 1.0)),
            images: vec![small],
        })
        .await
        .expect_err("too small");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("images[0]") && err.message().contains("smaller than the template"),
        "{}",
        err.message()
    );
    let err = client
        .process_batch(ProcessBatchRequest {
            model_id: "faces".into(),
            task: Some(task(false, 1.5)),
            images: vec![b],
        })
        .await
        .expect_err("scale");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("scale 1.5"), "{}", err.message());
}

/// A dark 320x180 BGR frame with a bright textured 30x30 square centred at
/// (`cx`, 90).
fn square_frame(cx: usize) -> Vec<u8> {
    let (w, h) = (320usize, 180usize);
    let mut out = vec![20u8; w * h * 3];
    for y in 75..105 {
        for x in cx - 15..cx + 15 {
            for c in 0..3 {
                out[(y * w + x) * 3 + c] = 160 + ((x * 7 + y * 13 + c * 5) % 90) as u8;
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_crop_follows_faces_and_salient_motion_smoothly() {
    use sidecar_proto::v1::{AutoCropTask, CropFocus};
    let _serial = serial().await;
    let (_sc, mut client) = sidecar().await;
    let crop = |focus: CropFocus| VisionTask {
        task: Some(vision_task::Task::AutoCrop(AutoCropTask {
            aspect_ratio: 9.0 / 16.0,
            focus: focus as i32,
            smoothing: 0.0,
            max_shift: 0.0,
        })),
    };

    // Faces: a 9:16 window over the square photograph, around the face.
    let r = client
        .process_batch(ProcessBatchRequest {
            model_id: "faces".into(),
            task: Some(crop(CropFocus::Unspecified)),
            images: vec![astronaut()],
        })
        .await
        .expect("crop")
        .into_inner();
    let window = r.results[0].crop.clone().expect("a window");
    let b = window.r#box.expect("box");
    eprintln!("faces: {b:?}");
    assert_eq!(window.focus, "faces");
    assert!(
        (b.height - 512.0).abs() < 0.5 && (b.width - 288.0).abs() < 0.5,
        "{b:?}"
    );
    assert!(
        b.x <= FACE.x && b.x + b.width >= FACE.x + FACE.width,
        "the face is inside {b:?}"
    );

    // Saliency: a bright square moving right 12 px a frame.
    let mut frames = vec![ProcessRequest {
        msg: Some(process_request::Msg::Config(StreamConfig {
            model_id: "faces".into(),
            tasks: vec![crop(CropFocus::Saliency)],
            ..Default::default()
        })),
    }];
    let positions: Vec<usize> = (0..20).map(|i| 40 + 12 * i).collect();
    for (i, &cx) in positions.iter().enumerate() {
        frames.push(raw_frame(
            i as u64,
            320,
            180,
            PixelFormat::Bgr8,
            square_frame(cx),
        ));
    }
    let mut s = client
        .process(tokio_stream::iter(frames))
        .await
        .expect("open")
        .into_inner();
    let mut centres = Vec::new();
    while let Some(r) = s.message().await.expect("ends cleanly") {
        let w = r.crop.expect("a window");
        assert_eq!(w.focus, "saliency");
        let b = w.r#box.expect("box");
        assert!(
            (b.height - 180.0).abs() < 0.5 && (b.width - 101.25).abs() < 0.5,
            "{b:?}"
        );
        assert!(
            b.x >= -0.01 && b.x + b.width <= 320.01,
            "inside the frame: {b:?}"
        );
        centres.push(b.x + b.width / 2.0);
    }
    eprintln!("saliency centres: {centres:?}");
    assert_eq!(centres.len(), 20);
    // The first window is on the square; then it follows, smoothly: no
    // step beyond the default 5% of the width, never backwards.
    assert!(
        (centres[0] - 50.6).abs() < 25.0,
        "first window at {}",
        centres[0]
    );
    for pair in centres.windows(2) {
        let step = pair[1] - pair[0];
        assert!((-0.5..=16.01).contains(&step), "step {step} in {centres:?}");
    }
    assert!(
        centres[19] > centres[0] + 100.0,
        "it followed the square: {centres:?}"
    );
}

/// A 320x240 BGR frame: a smooth background and a distinct textured 40x40
/// object with its top-left corner at (`x`, `y`).
fn object_frame(x: usize, y: usize) -> Vec<u8> {
    let mut out = texture(320, 240, 0, 0);
    for v in out.iter_mut() {
        *v /= 3;
    }
    for yy in y..y + 40 {
        for xx in x..x + 40 {
            for c in 0..3 {
                let (dx, dy) = (xx - x, yy - y);
                out[(yy * 320 + xx) * 3 + c] = if (dx / 8 + dy / 8 + c) % 2 == 0 {
                    250
                } else {
                    90
                };
            }
        }
    }
    out
}

async fn track(
    client: &mut VisionServiceClient<Channel>,
    tracker: sidecar_proto::v1::TrackerType,
) -> Vec<sidecar_proto::v1::ProcessResponse> {
    let start = PixelBox {
        x: 40.0,
        y: 60.0,
        width: 40.0,
        height: 40.0,
    };
    let mut frames = vec![ProcessRequest {
        msg: Some(process_request::Msg::Config(StreamConfig {
            model_id: "faces".into(),
            tasks: vec![VisionTask {
                task: Some(vision_task::Task::Tracking(TrackingTask {
                    tracker: tracker as i32,
                    initial_boxes: vec![start],
                    trajectory_length: 8,
                    ..Default::default()
                })),
            }],
            ..Default::default()
        })),
    }];
    for i in 0..20usize {
        let moved = object_frame(40 + 5 * i, 60 + 2 * i);
        frames.push(raw_frame(i as u64, 320, 240, PixelFormat::Bgr8, moved));
    }
    let mut s = client
        .process(tokio_stream::iter(frames))
        .await
        .expect("open")
        .into_inner();
    let mut results = Vec::new();
    while let Some(r) = s.message().await.expect("ends cleanly") {
        results.push(r);
    }
    results
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tracked_object_keeps_its_id_and_its_trajectory() {
    use sidecar_proto::v1::TrackerType;
    let _serial = serial().await;
    let (_sc, mut client) = sidecar().await;
    for tracker in [TrackerType::Csrt, TrackerType::Kcf, TrackerType::Medianflow] {
        let results = track(&mut client, tracker).await;
        assert_eq!(results.len(), 20, "{tracker:?}");
        let mut worst = 1.0f32;
        for (i, r) in results.iter().enumerate() {
            assert_eq!(r.tracks.len(), 1, "{tracker:?} frame {i}: {:?}", r.tracks);
            let t = &r.tracks[0];
            assert_eq!(t.track_id, 1, "{tracker:?}: the id is stable");
            let truth = PixelBox {
                x: (40 + 5 * i) as f32,
                y: (60 + 2 * i) as f32,
                width: 40.0,
                height: 40.0,
            };
            let v = iou(&t.r#box.expect("box"), &truth);
            worst = worst.min(v);
            assert!(
                t.visible && v >= 0.5,
                "{tracker:?} frame {i}: IoU {v}, {:?}",
                t.r#box
            );
            assert_eq!(t.trajectory.len(), (i + 1).min(8), "bounded trajectory");
            assert_eq!(t.trajectory.last().expect("point").frame_index, i as u64);
        }
        eprintln!("{tracker:?}: lowest IoU {worst:.2} over 20 frames");
    }
}

/// MediaPipe's anchors and decoding for its pose detector (224x224, five
/// layers, 2254 anchors, 4 keypoints), from its graph's options.
fn pose_ssd() -> SsdOptions {
    SsdOptions {
        input_width: 224,
        input_height: 224,
        min_scale: 0.148_437_5,
        max_scale: 0.75,
        anchor_offset_x: 0.5,
        anchor_offset_y: 0.5,
        strides: vec![8, 16, 32, 32, 32],
        aspect_ratios: vec![1.0],
        fixed_anchor_size: true,
        interpolated_scale_aspect_ratio: 1.0,
        num_classes: 1,
        num_keypoints: 4,
        x_scale: 224.0,
        y_scale: 224.0,
        w_scale: 224.0,
        h_scale: 224.0,
        score_clipping_thresh: 100.0,
        labels: vec!["person".into()],
    }
}

/// The same for its palm detector (192x192, four layers, 2016 anchors, 7
/// keypoints).
fn palm_ssd() -> SsdOptions {
    SsdOptions {
        input_width: 192,
        input_height: 192,
        strides: vec![8, 16, 16, 16],
        num_keypoints: 7,
        x_scale: 192.0,
        y_scale: 192.0,
        w_scale: 192.0,
        h_scale: 192.0,
        labels: vec!["palm".into()],
        ..pose_ssd()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_ssd_detectors_run_with_their_own_anchors() {
    let _serial = serial().await;
    let (sc, mut client) = sidecar().await;
    let mut models = sc.manage().await;
    let load = |id: &str, path: &str, ssd: SsdOptions| LoadModelRequest {
        model_id: id.into(),
        family: ModelFamily::Vision as i32,
        path: path.into(),
        options: Some(load_model_request::Options::Vision(VisionOptions {
            threads: 1,
            ssd: Some(ssd),
            ..Default::default()
        })),
        ..Default::default()
    };
    let objects = |id: &str| ProcessBatchRequest {
        model_id: id.into(),
        task: Some(VisionTask {
            task: Some(vision_task::Task::Objects(ObjectDetectionTask {
                min_score: 0.5,
                ..Default::default()
            })),
        }),
        images: vec![astronaut()],
    };
    add_model(&sc.store, POSE);
    add_model(&sc.store, PALM);

    // MediaPipe's pose detector finds the astronaut: a box over her face
    // and its first keypoint, the hips' centre, below it.
    models
        .load_model(load("pose", POSE, pose_ssd()))
        .await
        .expect("pose");
    let r = client
        .process_batch(objects("pose"))
        .await
        .expect("objects")
        .into_inner();
    let found = &r.results[0].objects;
    eprintln!("pose: {found:?}");
    assert_eq!(found.len(), 1, "{found:?}");
    let person = &found[0];
    assert_eq!(person.label, "person");
    let b = person.r#box.expect("box");
    assert!(iou(&b, &FACE) >= 0.2, "{b:?}");
    assert!(person.keypoints.len() == 4 && person.keypoints[0].y > FACE.y + FACE.height);

    // The palm detector loads with its own anchors (2016, 7 keypoints) and
    // labels what it finds.
    models
        .load_model(load("palm", PALM, palm_ssd()))
        .await
        .expect("palm");
    let r = client
        .process_batch(objects("palm"))
        .await
        .expect("objects")
        .into_inner();
    let found = &r.results[0].objects;
    eprintln!("palm: {} found", found.len());
    // The astronaut's hand on her helmet: at least one palm, each
    // labelled, with its 7 keypoints and a score over the threshold.
    assert!(!found.is_empty(), "the palm detector found nothing");
    assert!(
        found
            .iter()
            .all(|d| d.label == "palm" && d.keypoints.len() == 7 && d.score >= 0.5),
        "{found:?}"
    );

    // Options that do not fit the model, or no detector has, are refused.
    let err = models
        .load_model(load("wrong", PALM, pose_ssd()))
        .await
        .expect_err("pose anchors on the palm model");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(
        err.message().contains("takes float32 [1, 224, 224, 3]"),
        "{}",
        err.message()
    );
    let mut tiny = palm_ssd();
    tiny.strides = vec![1];
    let err = models
        .load_model(load("tiny", PALM, tiny))
        .await
        .expect_err("stride 1");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(
        err.message().contains("a stride is at least 4"),
        "{}",
        err.message()
    );
    assert_eq!(sc.model("faces").await.restarts, 0);
}
