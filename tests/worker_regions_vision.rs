//! Shared-memory regions in the real worker-vision (issue 19), started as
//! the supervisor starts it (full sandbox, seccomp enforcing) and driven
//! over a real channel by this test playing the supervisor: a raw
//! 1280x720 image from a region gives the inline result; a stream cycles
//! through three slots of one region and every result, a dropped one's
//! included, releases its frame's slot; bad refs and a shrunk object are
//! that request's clear error and the worker (same pid) serves on.

// Shared by both region test files; each uses part of it.
#[allow(dead_code)]
#[path = "worker_regions_support.rs"]
mod support;

use std::os::fd::AsFd;

use e2e::serial;
use ipc::Flags;
use sidecar_proto::v1::{
    FaceDetector, Frame, Image, ModelFamily, OverflowPolicy, PixelFormat, ProcessBatchRequest,
    ProcessResponse, RawImage, StreamConfig, VisionOptions, frame, image,
};
use sidecar_proto::worker::{load, worker_request, worker_response};

use support::{Worker, at, call, object, put, region};

fn faces_task() -> sidecar_proto::v1::VisionTask {
    e2e::vision::faces(FaceDetector::Unspecified)
}

fn raw(data: Vec<u8>, shm: Option<sidecar_proto::v1::SharedMemoryRef>) -> RawImage {
    RawImage {
        width: 1280,
        height: 720,
        format: PixelFormat::Rgb8 as i32,
        stride: 0,
        data: data.into(),
        shm,
    }
}

/// A result without its timings (they differ run to run).
fn untimed(mut r: ProcessResponse) -> ProcessResponse {
    r.timings = None;
    r
}

const FRAME: u64 = 1280 * 720 * 3;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vision_reads_images_and_stream_frames_from_a_region() {
    let _serial = serial().await;
    let options = load::Options::Vision(VisionOptions {
        threads: 1,
        ..Default::default()
    });
    // Credit windows of one frame: a stream whose results are not read
    // stops after two.
    let mut w = Worker::start(
        "worker-vision",
        ModelFamily::Vision,
        e2e::vision::BLAZEFACE,
        options,
        1,
    )
    .await;
    let pid = w.pid;
    let pixels = support::astronaut_1280x720_rgb();
    let batch_of = |data: image::Data, regions| {
        call(
            worker_request::Body::VisionBatch(ProcessBatchRequest {
                model_id: "m".into(),
                task: Some(faces_task()),
                images: vec![Image { data: Some(data) }],
            }),
            regions,
        )
    };
    let batch = |img: RawImage, regions| batch_of(image::Data::Raw(img), regions);
    let results = |b: Result<worker_response::Body, support::Failure>| match b {
        Ok(worker_response::Body::VisionBatch(r)) => {
            r.results.into_iter().map(untimed).collect::<Vec<_>>()
        }
        other => panic!("{other:?}"),
    };
    let inline = results(w.ask(&batch(raw(pixels.clone(), None), vec![])).await);
    assert_eq!(inline[0].faces.len(), 1, "the astronaut's face: {inline:?}");

    // Three frame slots in one region.
    let frames = object(3 * FRAME);
    put(&frames, FRAME, &pixels);
    let uses = |attach| vec![region("frames", 7, 3 * FRAME, false, attach)];
    w.chan.send_fd(7, frames.as_fd()).await.expect("send fd");
    let from_region = results(
        w.ask(&batch(
            raw(vec![], Some(at("frames", FRAME, FRAME))),
            uses(true),
        ))
        .await,
    );
    assert_eq!(from_region, inline, "the same result from the region");

    // Other layouts (rows padded to a stride, I420) and an encoded file:
    // each the same from the region as inline.
    let stride = 1280 * 3 + 64;
    let mut bgr_padded = vec![0u8; stride * 720];
    for (y, row) in pixels.chunks(1280 * 3).enumerate() {
        for (x, px) in row.chunks(3).enumerate() {
            bgr_padded[y * stride + 3 * x..y * stride + 3 * x + 3]
                .copy_from_slice(&[px[2], px[1], px[0]]);
        }
    }
    let i420 = support::astronaut_1280x720("yuv420p");
    let png = std::fs::read(e2e::root().join("models/testdata/astronaut.png")).expect("png");
    let layouts = [
        (PixelFormat::Bgr8, stride as u32, bgr_padded),
        (PixelFormat::I420, 0, i420),
    ];
    for (format, stride, bytes) in layouts {
        let len = bytes.len() as u64;
        let img = |data: Vec<u8>, shm| RawImage {
            format: format as i32,
            stride,
            ..raw(data, shm)
        };
        put(&frames, 0, &bytes);
        let inline_too = results(w.ask(&batch(img(bytes, None), vec![])).await);
        assert_eq!(inline_too[0].faces.len(), 1, "{format:?}: {inline_too:?}");
        let got = results(
            w.ask(&batch(img(vec![], Some(at("frames", 0, len))), uses(false)))
                .await,
        );
        assert_eq!(got, inline_too, "{format:?} from the region");
    }
    put(&frames, 0, &png);
    let encoded = results(
        w.ask(&batch_of(image::Data::Encoded(png.clone().into()), vec![]))
            .await,
    );
    assert_eq!(encoded[0].faces.len(), 1, "{encoded:?}");
    let shm = at("frames", 0, png.len() as u64);
    let got = results(
        w.ask(&batch_of(image::Data::EncodedShm(shm), uses(false)))
            .await,
    );
    assert_eq!(got, encoded, "the encoded file from the region");

    // Bad cases.
    let cases = [
        (
            raw(vec![], Some(at("frames", 0, FRAME - 1))),
            3,
            format!(
                "1280x720 PIXEL_FORMAT_RGB8 with stride 3840 is {FRAME} bytes, shm.byte_size is {}",
                FRAME - 1
            ),
        ),
        (
            raw(vec![], Some(at("frames", 2 * FRAME + 1, FRAME))),
            3,
            "passes the end of region \"frames\"".into(),
        ),
        (
            raw(vec![1, 2, 3], Some(at("frames", 0, FRAME))),
            3,
            "both data (3 bytes) and shm are set".into(),
        ),
        (
            raw(vec![], Some(at("nope", 0, FRAME))),
            3,
            "images[0].shm.region: \"nope\" is not a region this request may use".into(),
        ),
    ];
    for (img, code, want) in cases {
        let (got, msg) = w.ask(&batch(img, uses(false))).await.expect_err("refused");
        assert_eq!(got, code, "{msg}");
        assert!(msg.contains(&want), "{msg:?} lacks {want:?}");
        w.alive();
        let next = results(w.ask(&batch(raw(pixels.clone(), None), vec![])).await);
        assert_eq!(next, inline, "the next request works");
    }

    // A stream cycling through the three slots: results are not read
    // until three frames are in, then each result read frees its slot for
    // the next frame. Every result, a dropped one's included, releases its
    // frame's slot as the frame named it.
    let open = call(
        worker_request::Body::VisionOpen(StreamConfig {
            model_id: "m".into(),
            tasks: vec![faces_task()],
            max_pending_frames: 1,
            overflow: OverflowPolicy::DropOldest as i32,
        }),
        vec![],
    );
    let mut stream = w.open(&open).await;
    let slot = |i: u64| at("frames", (i % 3) * FRAME, FRAME);
    let frame_req = |i: u64| {
        call(
            worker_request::Body::VisionFrame(Frame {
                index: i + 1,
                timestamp_us: i as i64,
                data: Some(frame::Data::Raw(raw(vec![], Some(slot(i))))),
                ..Default::default()
            }),
            uses(false),
        )
    };
    const FRAMES: u64 = 12;
    let mut sent = 0u64;
    let mut free = [true; 3];
    let mut seen = Vec::new();
    let (mut dropped, mut done) = (0, 0);
    // Three frames sent with their results unread (the worker stops after
    // two results: frames then wait, and overflow when they come faster
    // than the worker takes them).
    while sent < 3 {
        put(&frames, (sent % 3) * FRAME, &pixels);
        free[(sent % 3) as usize] = false;
        support::send_more(&stream, &frame_req(sent)).await;
        sent += 1;
    }
    while seen.len() < FRAMES as usize {
        let (flags, r) = support::next_answer(&mut stream).await.expect("a result");
        assert!(!flags.is_end(), "the stream is open");
        let r = r.unwrap_or_else(|e| panic!("{e:?}"));
        let Some(worker_response::Body::Vision(p)) = r.body else {
            panic!("{r:?}")
        };
        let i = p.frame_index - 1;
        assert_eq!(
            p.released,
            Some(slot(i)),
            "frame {i} releases its slot: {p:?}"
        );
        assert!(!free[(i % 3) as usize], "slot {} was in use", i % 3);
        free[(i % 3) as usize] = true;
        if p.dropped {
            dropped += 1;
        } else {
            done += 1;
            assert_eq!(p.faces, inline[0].faces, "frame {i}: the astronaut's face");
            assert_eq!((p.width, p.height), (1280, 720));
        }
        seen.push(i);
        // Its slot is free: the next frame goes there.
        if sent < FRAMES {
            let s = (sent % 3) as usize;
            if free[s] {
                put(&frames, s as u64 * FRAME, &pixels);
                free[s] = false;
                support::send_more(&stream, &frame_req(sent)).await;
                sent += 1;
            }
        }
    }
    let mut sorted = seen.clone();
    sorted.sort_unstable();
    assert_eq!(
        sorted,
        (0..FRAMES).collect::<Vec<_>>(),
        "one result per frame: {seen:?}"
    );
    eprintln!("stream: {done} frames processed, {dropped} dropped");
    assert!(done >= 1, "frames were processed");
    stream
        .send(
            ipc::Kind::Request,
            Flags::NONE,
            &prost::Message::encode_to_vec(&call(worker_request::Body::VisionClose(true), vec![])),
        )
        .await
        .expect("close");
    let (flags, _) = support::next_answer(&mut stream).await.expect("the end");
    assert!(flags.is_end());

    // A stream frame whose slot shrank: that stream's error, no signal.
    nix::unistd::ftruncate(&frames, FRAME as i64).expect("truncate");
    let mut stream = w.open(&open).await;
    support::send_more(&stream, &frame_req(1)).await;
    let (flags, r) = support::next_answer(&mut stream).await.expect("an answer");
    assert!(flags.is_end());
    let (code, msg) = r.expect_err("shrank");
    assert_eq!(code, 9, "{msg}");
    assert!(
        msg.contains(&format!("region \"frames\" shrank to {FRAME} bytes")),
        "{msg}"
    );
    w.alive();
    assert_eq!(
        results(w.ask(&batch(raw(pixels, None), vec![])).await),
        inline,
        "the next request works"
    );
    assert_eq!(w.pid, pid);
}
