//! VISION models end to end: the real sidecar and worker-vision running
//! MediaPipe's BlazeFace through LiteRT (and OpenCV's cascades) on
//! scikit-image's astronaut photograph, with a face box labelled by hand:
//! detection, bad input, streams, a killed worker. (Template matching,
//! auto-crop, tracking: `tests/vision_tasks.rs`; H.264: `tests/vision_h264.rs`.)

use e2e::serial;
use e2e::vision::{FACE, astronaut, config, faces, iou, raw_frame, sidecar};
use sidecar_proto::v1::{
    Box as PixelBox, FaceDetector, Frame, Image, KillReason, ModelState, OverflowPolicy,
    PixelFormat, ProcessBatchRequest, ProcessRequest, RawImage, StreamConfig, TrackingTask,
    VisionTask, frame, image, process_request, vision_task,
};
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blazeface_and_the_cascades_find_the_face_where_it_is() {
    let _serial = serial().await;
    let (_sc, mut client) = sidecar().await;
    let blank = Image {
        data: Some(image::Data::Raw(RawImage {
            shm: Default::default(),
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
            shm: Default::default(),
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
            shm: Default::default(),
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
            shm: Default::default(),
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

/// A `w`x`h` raw frame of `channels` bytes per pixel (a gradient).
fn big_frame(
    index: u64,
    w: usize,
    h: usize,
    format: PixelFormat,
    channels: usize,
) -> ProcessRequest {
    let data = (0..w * h * channels)
        .map(|i| (i / channels % 251) as u8)
        .collect();
    raw_frame(index, w, h, format, data)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_hd_and_4k_raw_frames_and_a_large_batch_go_through() {
    let _serial = serial().await;
    let (sc, mut client) = sidecar().await;
    // 6.2 MB, 24.9 MB and 3.7 MB messages, then more full-HD frames back
    // to back: larger than the default 4 MiB ring of a text worker.
    let mut frames = vec![
        config(OverflowPolicy::Unspecified, 4),
        big_frame(1, 1920, 1080, PixelFormat::Bgr8, 3),
        big_frame(2, 3840, 2160, PixelFormat::Bgr8, 3),
        big_frame(3, 1280, 720, PixelFormat::Rgba8, 4),
    ];
    frames.extend((4..10).map(|i| big_frame(i, 1920, 1080, PixelFormat::Bgr8, 3)));
    let mut s = client
        .process(tokio_stream::iter(frames))
        .await
        .expect("open")
        .into_inner();
    let mut sizes = Vec::new();
    while let Some(r) = s.message().await.expect("large frames are served") {
        assert!(!r.dropped);
        sizes.push((r.frame_index, r.width, r.height));
    }
    let mut want = vec![(1, 1920, 1080), (2, 3840, 2160), (3, 1280, 720)];
    want.extend((4..10).map(|i| (i, 1920, 1080)));
    assert_eq!(sizes, want);

    let images: Vec<Image> = (0..6)
        .map(|k| Image {
            data: Some(image::Data::Raw(RawImage {
                shm: Default::default(),
                width: 1920,
                height: 1080,
                format: PixelFormat::Bgr8 as i32,
                stride: 0,
                data: vec![k as u8 * 40; 1920 * 1080 * 3].into(),
            })),
        })
        .collect();
    let r = client
        .process_batch(ProcessBatchRequest {
            model_id: "faces".into(),
            task: Some(faces(FaceDetector::Unspecified)),
            images,
        })
        .await
        .expect("a 37 MB batch")
        .into_inner();
    assert_eq!(r.results.len(), 6);
    assert!(
        r.results
            .iter()
            .all(|x| (x.width, x.height) == (1920, 1080))
    );
    assert_eq!(sc.model("faces").await.restarts, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_goes_away_ends_its_streams_work_at_once() {
    let _serial = serial().await;
    let (sc, mut client) = sidecar().await;
    let before = sc.model("faces").await;
    let png = png_bytes();
    // 64 frames of PNG decoding, face detection and CSRT tracking: about a
    // second of the worker's time once they are all in its queue.
    let tracked = StreamConfig {
        model_id: "faces".into(),
        tasks: vec![
            faces(FaceDetector::Unspecified),
            VisionTask {
                task: Some(vision_task::Task::Tracking(TrackingTask {
                    tracker: sidecar_proto::v1::TrackerType::Csrt as i32,
                    initial_boxes: vec![FACE],
                    ..Default::default()
                })),
            },
        ],
        max_pending_frames: 64,
        ..Default::default()
    };
    let mut msgs = vec![ProcessRequest {
        msg: Some(process_request::Msg::Config(tracked)),
    }];
    msgs.extend((0..64).map(|i| png_frame(i, &png)));
    let mut s = client
        .process(tokio_stream::iter(msgs))
        .await
        .expect("open")
        .into_inner();
    s.message().await.expect("first result").expect("a result");
    // The backlog exists: without this client reading, the worker keeps
    // working through the queued frames (its CPU time grows by 0.3 s, a
    // third of the 64 frames' work, within 10 s).
    let cpu = || e2e::cpu_seconds(before.worker_pid).expect("worker alive");
    let (t0, start) = (cpu(), std::time::Instant::now());
    while cpu() - t0 < 0.3 {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(10),
            "no backlog: the worker used {:.2} s of CPU in 10 s",
            cpu() - t0
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // It still has frames: answers wait unread.
    let in_flight = sc.model("faces").await.in_flight;
    assert!(in_flight >= 1, "the stream is in flight: {in_flight}");
    drop(s);
    let at_drop = cpu();
    // Then it stops: idle (under 20 ms of CPU in 300 ms) within 3 s, and
    // it spent little after the client left.
    let start = std::time::Instant::now();
    let mut last = at_drop;
    loop {
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        let now = cpu();
        if now - last < 0.02 {
            break;
        }
        assert!(
            start.elapsed() < std::time::Duration::from_secs(3),
            "the worker was still busy 3 s after the client left"
        );
        last = now;
    }
    let busy = cpu() - at_drop;
    eprintln!("worker CPU after the client left: {busy:.2} s");
    assert!(busy < 0.3, "the worker went on for {busy:.2} s of CPU");
    // Same worker, and it serves the next stream.
    let frames = vec![config(OverflowPolicy::Unspecified, 2), png_frame(0, &png)];
    let mut s = client
        .process(tokio_stream::iter(frames))
        .await
        .expect("open")
        .into_inner();
    let r = s.message().await.expect("works").expect("a result");
    assert_eq!(r.faces.len(), 1);
    let after = sc.model("faces").await;
    assert_eq!((after.worker_pid, after.restarts), (before.worker_pid, 0));
}
