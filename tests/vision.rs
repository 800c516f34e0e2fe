//! VISION models end to end: the real sidecar and worker-vision running
//! MediaPipe's BlazeFace through LiteRT (and OpenCV's cascades) on
//! scikit-image's astronaut photograph, with a face box labelled by hand.

use e2e::{Sidecar, add_model, serial, store};
use sidecar_proto::v1::vision_service_client::VisionServiceClient;
use sidecar_proto::v1::{
    Box as PixelBox, FaceDetectionTask, FaceDetector, Frame, Image, KillReason, ModelState,
    OverflowPolicy, PixelFormat, ProcessBatchRequest, ProcessRequest, RawImage, StreamConfig,
    TrackingTask, VisionTask, frame, image, process_request, vision_task,
};
use tonic::Code;
use tonic::transport::Channel;

const BLAZEFACE: &str = "mediapipe/face_detection_short_range.tflite";

/// Eileen Collins' face in astronaut.png (512x512), labelled by hand: from
/// the eyebrows to the chin, cheek to cheek.
const FACE: PixelBox = PixelBox {
    x: 172.0,
    y: 84.0,
    width: 100.0,
    height: 100.0,
};

fn iou(a: &PixelBox, b: &PixelBox) -> f32 {
    let ix = ((a.x + a.width).min(b.x + b.width) - a.x.max(b.x)).max(0.0);
    let iy = ((a.y + a.height).min(b.y + b.height) - a.y.max(b.y)).max(0.0);
    let inter = ix * iy;
    inter / (a.width * a.height + b.width * b.height - inter)
}

fn astronaut() -> Image {
    let path = e2e::root().join("models/testdata/astronaut.png");
    let bytes = std::fs::read(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (run scripts/setup.sh)", path.display()));
    Image {
        data: Some(image::Data::Encoded(bytes.into())),
    }
}

fn faces(detector: FaceDetector) -> VisionTask {
    VisionTask {
        task: Some(vision_task::Task::Faces(FaceDetectionTask {
            detector: detector as i32,
            min_score: 0.5,
            max_faces: 0,
        })),
    }
}

async fn sidecar() -> (Sidecar, VisionServiceClient<Channel>) {
    let store = store();
    add_model(&store, BLAZEFACE);
    let config = format!(
        "[[models]]\nid = \"faces\"\nfamily = \"vision\"\npath = \"{BLAZEFACE}\"\nvision = {{ threads = 1 }}\n"
    );
    let sc = Sidecar::start(store, &config);
    sc.ready("faces").await;
    let client = VisionServiceClient::connect(format!("http://{}", sc.api))
        .await
        .expect("connect")
        .max_decoding_message_size(64 << 20);
    (sc, client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blazeface_and_the_cascades_find_the_face_where_it_is() {
    let _serial = serial().await;
    let (_sc, mut client) = sidecar().await;
    let blank = Image {
        data: Some(image::Data::Raw(RawImage {
            width: 320,
            height: 240,
            format: PixelFormat::Rgb8 as i32,
            stride: 0,
            data: vec![128u8; 320 * 240 * 3].into(),
        })),
    };
    // Mid-grey in I420: luma and both chroma planes at 128.
    let yuv = Image {
        data: Some(image::Data::Raw(RawImage {
            width: 64,
            height: 48,
            format: PixelFormat::I420 as i32,
            stride: 0,
            data: vec![128u8; 64 * 48 * 3 / 2].into(),
        })),
    };
    let r = client
        .process_batch(ProcessBatchRequest {
            model_id: "faces".into(),
            task: Some(faces(FaceDetector::Unspecified)),
            images: vec![astronaut(), blank, yuv],
        })
        .await
        .expect("batch")
        .into_inner();
    assert_eq!(r.results.len(), 3);
    assert_eq!((r.results[2].width, r.results[2].height), (64, 48));
    assert!(r.results[2].faces.is_empty());
    let photo = &r.results[0];
    assert_eq!((photo.width, photo.height), (512, 512));
    assert_eq!(photo.faces.len(), 1, "{:?}", photo.faces);
    let face = &photo.faces[0];
    let found = face.r#box.expect("box");
    eprintln!(
        "BlazeFace: {found:?} score {} IoU {}",
        face.score,
        iou(&found, &FACE)
    );
    assert!(iou(&found, &FACE) >= 0.5, "{found:?} against {FACE:?}");
    assert!(face.score >= 0.5);
    assert_eq!(face.keypoints.len(), 6, "eyes, nose, mouth, ears");
    for k in &face.keypoints {
        assert!(
            k.x >= found.x - 30.0
                && k.x <= found.x + found.width + 30.0
                && k.y >= found.y
                && k.y <= found.y + found.height,
            "keypoint {k:?} outside {found:?}"
        );
    }
    assert_eq!((r.results[1].width, r.results[1].height), (320, 240));
    assert!(r.results[1].faces.is_empty(), "a blank image has no face");
    assert!(r.results[0].timings.expect("timings").process_us > 0);

    for detector in [FaceDetector::Haar, FaceDetector::Lbp] {
        let r = client
            .process_batch(ProcessBatchRequest {
                model_id: "faces".into(),
                task: Some(faces(detector)),
                images: vec![astronaut()],
            })
            .await
            .expect("cascade")
            .into_inner();
        let boxes: Vec<PixelBox> = r.results[0].faces.iter().filter_map(|f| f.r#box).collect();
        eprintln!("{detector:?}: {boxes:?}");
        assert!(
            boxes.iter().any(|b| iou(b, &FACE) >= 0.5),
            "{detector:?} missed the face: {boxes:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_images_and_tasks_get_clear_errors() {
    let _serial = serial().await;
    let (sc, mut client) = sidecar().await;
    let before = sc.model("faces").await;
    let batch = |images: Vec<Image>, task: VisionTask| ProcessBatchRequest {
        model_id: "faces".into(),
        task: Some(task),
        images,
    };
    let mut truncated = astronaut();
    if let Some(image::Data::Encoded(b)) = &mut truncated.data {
        *b = b.slice(..200);
    }
    let short_raw = Image {
        data: Some(image::Data::Raw(RawImage {
            width: 10,
            height: 10,
            format: PixelFormat::Rgb8 as i32,
            stride: 0,
            data: vec![0u8; 299].into(),
        })),
    };
    let zero = Image {
        data: Some(image::Data::Raw(RawImage {
            width: 0,
            height: 10,
            format: PixelFormat::Gray8 as i32,
            ..Default::default()
        })),
    };
    let odd_nv12 = Image {
        data: Some(image::Data::Raw(RawImage {
            width: 64,
            height: 48,
            format: PixelFormat::Nv12 as i32,
            stride: 0,
            data: vec![0u8; 64 * 48].into(),
        })),
    };
    let tracking = VisionTask {
        task: Some(vision_task::Task::Tracking(TrackingTask::default())),
    };
    let cases: Vec<(ProcessBatchRequest, Code, Vec<&str>)> = vec![
        (
            batch(
                vec![astronaut(), truncated],
                faces(FaceDetector::Unspecified),
            ),
            Code::InvalidArgument,
            vec!["images[1]", "200 bytes"],
        ),
        (
            batch(vec![short_raw], faces(FaceDetector::Unspecified)),
            Code::InvalidArgument,
            vec!["images[0]", "300 bytes", "got 299"],
        ),
        (
            batch(vec![zero], faces(FaceDetector::Unspecified)),
            Code::InvalidArgument,
            vec!["images[0]", "0x10"],
        ),
        (
            batch(vec![], faces(FaceDetector::Unspecified)),
            Code::InvalidArgument,
            vec!["1..256"],
        ),
        (
            batch(vec![astronaut()], tracking),
            Code::InvalidArgument,
            vec!["tracking"],
        ),
        (
            batch(vec![odd_nv12], faces(FaceDetector::Unspecified)),
            Code::InvalidArgument,
            vec!["images[0]", "4608 bytes", "got 3072"],
        ),
    ];
    for (req, code, words) in cases {
        let err = client.process_batch(req).await.expect_err("refused");
        assert_eq!(err.code(), code, "{err:?}");
        for w in words {
            assert!(
                err.message().contains(w),
                "{w:?} not in {:?}",
                err.message()
            );
        }
    }
    // A stream must start with its config, and its tasks must make sense.
    let frame_first = ProcessRequest {
        msg: Some(process_request::Msg::Frame(Frame::default())),
    };
    let err = client
        .process(tokio_stream::iter(vec![frame_first]))
        .await
        .expect_err("config first");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    let tracking_stream = ProcessRequest {
        msg: Some(process_request::Msg::Config(StreamConfig {
            model_id: "faces".into(),
            tasks: vec![VisionTask {
                task: Some(vision_task::Task::Tracking(TrackingTask::default())),
            }],
            ..Default::default()
        })),
    };
    let mut s = client
        .process(tokio_stream::iter(vec![tracking_stream]))
        .await
        .expect("stream opens")
        .into_inner();
    let err = s
        .message()
        .await
        .expect_err("a tracking task with nothing to track");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(
        err.message().contains("initial_boxes or from_detections"),
        "{}",
        err.message()
    );

    // The worker is the same one and still serves.
    client
        .process_batch(batch(vec![astronaut()], faces(FaceDetector::Unspecified)))
        .await
        .expect("still serves");
    let after = sc.model("faces").await;
    assert_eq!((after.worker_pid, after.restarts), (before.worker_pid, 0));
}

fn config(overflow: OverflowPolicy, max_pending: u32) -> ProcessRequest {
    ProcessRequest {
        msg: Some(process_request::Msg::Config(StreamConfig {
            model_id: "faces".into(),
            tasks: vec![faces(FaceDetector::Unspecified)],
            max_pending_frames: max_pending,
            overflow: overflow as i32,
        })),
    }
}

fn png_frame(index: u64, bytes: &tonic::codegen::Bytes) -> ProcessRequest {
    ProcessRequest {
        msg: Some(process_request::Msg::Frame(Frame {
            index,
            timestamp_us: index as i64 * 1000,
            data: Some(frame::Data::Encoded(bytes.clone())),
            flush: false,
        })),
    }
}

fn png_bytes() -> tonic::codegen::Bytes {
    match astronaut().data {
        Some(image::Data::Encoded(b)) => b,
        _ => unreachable!("astronaut() is encoded"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_get_a_result_per_frame_and_a_bad_frame_ends_only_its_stream() {
    let _serial = serial().await;
    let (sc, client) = sidecar().await;
    let png = png_bytes();
    let good: Vec<ProcessRequest> = std::iter::once(config(OverflowPolicy::Unspecified, 2))
        .chain((10..16).map(|i| png_frame(i, &png)))
        .collect();
    let mut bad: Vec<ProcessRequest> = vec![
        config(OverflowPolicy::Unspecified, 2),
        png_frame(0, &png),
        png_frame(1, &png),
    ];
    bad.push(png_frame(2, &png.slice(..300)));
    bad.push(png_frame(3, &png));
    let (mut c1, mut c2) = (client.clone(), client.clone());
    let good = tokio::spawn(async move {
        let mut s = c1
            .process(tokio_stream::iter(good))
            .await
            .expect("open")
            .into_inner();
        let mut results = Vec::new();
        while let Some(r) = s.message().await.expect("the good stream ends cleanly") {
            results.push(r);
        }
        results
    });
    let bad = tokio::spawn(async move {
        let mut s = c2
            .process(tokio_stream::iter(bad))
            .await
            .expect("open")
            .into_inner();
        let mut seen = 0;
        loop {
            match s.message().await {
                Ok(Some(_)) => seen += 1,
                Ok(None) => panic!("the bad stream ended without an error"),
                Err(e) => return (seen, e),
            }
        }
    });
    let results = good.await.expect("good stream");
    assert_eq!(results.len(), 6, "one result per frame");
    for (r, i) in results.iter().zip(10u64..) {
        assert_eq!(r.frame_index, i, "in order");
        assert_eq!(r.timestamp_us, i as i64 * 1000, "timestamp echoed");
        assert!(!r.dropped);
        assert_eq!(r.faces.len(), 1, "frame {i}");
        let found = r.faces[0].r#box.expect("box");
        assert!(iou(&found, &FACE) >= 0.5, "frame {i}: {found:?}");
        assert!(r.timings.expect("timings").total_us > 0);
    }
    let (seen, err) = bad.await.expect("bad stream");
    assert_eq!(seen, 2, "the frames before the bad one were answered");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("frame 2"), "{}", err.message());
    assert_eq!(sc.model("faces").await.restarts, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_falls_behind_drops_its_oldest_frames_when_asked() {
    let _serial = serial().await;
    let (_sc, mut client) = sidecar().await;
    let png = png_bytes();
    let frames: Vec<ProcessRequest> = std::iter::once(config(OverflowPolicy::DropOldest, 1))
        .chain((0..30).map(|i| png_frame(i, &png)))
        .collect();
    let mut s = client
        .process(tokio_stream::iter(frames))
        .await
        .expect("open")
        .into_inner();
    let mut indices = Vec::new();
    let mut dropped = 0;
    while let Some(r) = s.message().await.expect("ends cleanly") {
        if r.dropped {
            dropped += 1;
            assert!(r.faces.is_empty(), "a dropped frame has no results");
        }
        indices.push(r.frame_index);
    }
    indices.sort_unstable();
    assert_eq!(
        indices,
        (0..30).collect::<Vec<u64>>(),
        "every frame answered once, processed or dropped"
    );
    eprintln!("{dropped} of 30 frames dropped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_stream_ends_it_with_unavailable_and_a_new_stream_works() {
    let _serial = serial().await;
    let (sc, mut client) = sidecar().await;
    let before = sc.model("faces").await;
    let png = png_bytes();
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(config(OverflowPolicy::Unspecified, 2))
        .await
        .expect("send");
    tx.send(png_frame(0, &png)).await.expect("send");
    let mut s = client
        .process(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect("open")
        .into_inner();
    s.message().await.expect("first result").expect("a result");
    e2e::signal(before.worker_pid, nix::sys::signal::Signal::SIGKILL);
    let _ = tx.send(png_frame(1, &png)).await;
    let err = loop {
        match s.message().await {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("the stream ended without an error"),
            Err(e) => break e,
        }
    };
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    drop(tx);
    let after = sc
        .eventually("faces", std::time::Duration::from_secs(30), |m| {
            m.state == ModelState::Ready as i32 && m.worker_pid != before.worker_pid
        })
        .await;
    assert_eq!(after.last_kill_reason, KillReason::Crash as i32);
    let frames = vec![config(OverflowPolicy::Unspecified, 2), png_frame(0, &png)];
    let mut s = client
        .process(tokio_stream::iter(frames))
        .await
        .expect("open")
        .into_inner();
    let r = s.message().await.expect("works again").expect("a result");
    assert_eq!(r.faces.len(), 1);
}

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
        ProcessRequest {
            msg: Some(process_request::Msg::Frame(Frame {
                index: 1,
                data: Some(frame::Data::Raw(RawImage {
                    width: w as u32,
                    height: h as u32,
                    format: PixelFormat::Bgr8 as i32,
                    stride: 0,
                    data: texture(w, h, 7, 3).into(),
                })),
                ..Default::default()
            })),
        },
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
        frames.push(ProcessRequest {
            msg: Some(process_request::Msg::Frame(Frame {
                index: i as u64,
                data: Some(frame::Data::Raw(RawImage {
                    width: 320,
                    height: 180,
                    format: PixelFormat::Bgr8 as i32,
                    stride: 0,
                    data: square_frame(cx).into(),
                })),
                ..Default::default()
            })),
        });
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
        frames.push(ProcessRequest {
            msg: Some(process_request::Msg::Frame(Frame {
                index: i as u64,
                data: Some(frame::Data::Raw(RawImage {
                    width: 320,
                    height: 240,
                    format: PixelFormat::Bgr8 as i32,
                    stride: 0,
                    data: object_frame(40 + 5 * i, 60 + 2 * i).into(),
                })),
                ..Default::default()
            })),
        });
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

/// An H.264 Annex-B stream made by ffmpeg (x264, High profile, up to 3
/// B-frames), and its frame count as ffprobe reads it.
fn ffmpeg_h264(w: u32, h: u32, frames: u32) -> (Vec<u8>, u64) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("stream.264");
    let out = std::process::Command::new("ffmpeg")
        .args([
            "-hide_banner",
            "-loglevel",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
        ])
        .arg(format!("testsrc2=size={w}x{h}:rate=25"))
        .args(["-frames:v", &frames.to_string()])
        .args([
            "-c:v",
            "libx264",
            "-profile:v",
            "high",
            "-bf",
            "3",
            "-g",
            "24",
        ])
        .args(["-pix_fmt", "yuv420p", "-f", "h264"])
        .arg(&path)
        .output()
        .expect("ffmpeg (run scripts/setup.sh)");
    assert!(
        out.status.success(),
        "ffmpeg: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let probe = std::process::Command::new("ffprobe")
        .args(["-v", "error", "-count_frames", "-select_streams", "v:0"])
        .args(["-show_entries", "stream=nb_read_frames,has_b_frames"])
        .args(["-of", "default=noprint_wrappers=1"])
        .arg(&path)
        .output()
        .expect("ffprobe");
    let text = String::from_utf8_lossy(&probe.stdout).to_string();
    let field = |k: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(k)?.strip_prefix('=')?.parse().ok())
            .unwrap_or_else(|| panic!("{k} not in ffprobe's {text:?}"))
    };
    assert!(field("has_b_frames") > 0, "a stream with B-frames: {text}");
    (
        std::fs::read(&path).expect("stream"),
        field("nb_read_frames"),
    )
}

fn h264_chunk(chunk: &[u8]) -> ProcessRequest {
    ProcessRequest {
        msg: Some(process_request::Msg::Frame(Frame {
            data: Some(frame::Data::H264(chunk.to_vec().into())),
            ..Default::default()
        })),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h264_stream_split_anywhere_decodes_every_frame() {
    let _serial = serial().await;
    let (_sc, mut client) = sidecar().await;
    let (stream, probed) = ffmpeg_h264(320, 240, 60);
    let mut msgs = vec![config(OverflowPolicy::Unspecified, 4)];
    // Chunks of 1..2000 bytes: NAL units split across messages anywhere.
    let (mut at, mut k) = (0usize, 0usize);
    while at < stream.len() {
        let len = (k * 7919 % 2000 + 1).min(stream.len() - at);
        msgs.push(h264_chunk(&stream[at..at + len]));
        (at, k) = (at + len, k + 1);
    }
    msgs.push(ProcessRequest {
        msg: Some(process_request::Msg::Frame(Frame {
            flush: true,
            ..Default::default()
        })),
    });
    let mut s = client
        .process(tokio_stream::iter(msgs))
        .await
        .expect("open")
        .into_inner();
    let mut indices = Vec::new();
    while let Some(r) = s.message().await.expect("ends cleanly") {
        assert_eq!((r.width, r.height), (320, 240));
        indices.push(r.frame_index);
    }
    eprintln!(
        "{} pictures from {k} chunks; ffprobe counts {probed}",
        indices.len()
    );
    assert_eq!(probed, 60);
    assert_eq!(
        indices,
        (0..probed).collect::<Vec<u64>>(),
        "every frame ffprobe counts, in order"
    );

    // Garbage after a good start ends that stream with INVALID_ARGUMENT
    // naming the frame it would have been; a new stream decodes again.
    let mut garbage = vec![0u8, 0, 0, 1];
    garbage.extend((0..4000u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8));
    garbage.extend([0, 0, 1]);
    let head = stream.len() / 2;
    let msgs = vec![
        config(OverflowPolicy::Unspecified, 4),
        h264_chunk(&stream[..head]),
        h264_chunk(&garbage),
    ];
    let mut s = client
        .process(tokio_stream::iter(msgs))
        .await
        .expect("open")
        .into_inner();
    let mut good = 0u64;
    let err = loop {
        match s.message().await {
            Ok(Some(_)) => good += 1,
            Ok(None) => panic!("garbage accepted"),
            Err(e) => break e,
        }
    };
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(
        err.message()
            .contains(&format!("frame {good} (H.264 chunk)"))
            && err.message().contains("H.264 data the decoder refuses"),
        "{}",
        err.message()
    );
    eprintln!("garbage after {good} pictures: {}", err.message());
    let not_h264 = vec![
        config(OverflowPolicy::Unspecified, 4),
        h264_chunk(b"GIF89a garbage"),
    ];
    let mut s = client
        .process(tokio_stream::iter(not_h264))
        .await
        .expect("open")
        .into_inner();
    let err = s.message().await.expect_err("not Annex-B");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(
        err.message()
            .contains("frame 0 (H.264 chunk): not an H.264 Annex-B stream"),
        "{}",
        err.message()
    );
    let (short, _) = ffmpeg_h264(160, 120, 5);
    let msgs = vec![
        config(OverflowPolicy::Unspecified, 4),
        h264_chunk(&short),
        ProcessRequest {
            msg: Some(process_request::Msg::Frame(Frame {
                flush: true,
                ..Default::default()
            })),
        },
    ];
    let mut s = client
        .process(tokio_stream::iter(msgs))
        .await
        .expect("open")
        .into_inner();
    let mut n = 0;
    while s.message().await.expect("decodes").is_some() {
        n += 1;
    }
    assert_eq!(n, 5, "the worker still decodes");
}
