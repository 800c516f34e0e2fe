//! What a Process stream's waiting frames may hold, in the real
//! worker-vision driven over a real channel by this test playing the
//! supervisor (credit windows of one frame, so a stream whose results are
//! not read stops and its frames wait): frames given inline are bounded by
//! the model's `max_pending_bytes`, under the default policy (the stream
//! ends with RESOURCE_EXHAUSTED naming the limit) and under DROP_OLDEST
//! (the oldest are dropped, every frame still answered); frames in a
//! region wait without their bytes, far past the limit, and each is read
//! in its turn. The worker (same pid) serves on.

// Shared by the region test files; each uses part of it.
#[allow(dead_code)]
#[path = "worker_regions_support.rs"]
mod support;

use std::os::fd::AsFd;

use e2e::serial;
use sidecar_proto::v1::{
    FaceDetector, Frame, Image, ModelFamily, OverflowPolicy, PixelFormat, ProcessBatchRequest,
    RawImage, SharedMemoryRef, StreamConfig, VisionOptions, frame, image,
};
use sidecar_proto::worker::{RegionDetach, WorkerRequest, load, worker_request, worker_response};

use support::{Worker, at, call, next_answer, object, put, region, send_more};

/// Three 1280x720 BGR frames (2 764 800 bytes each) hold less, four more.
const BUDGET: u64 = 8 << 20;
const FRAME: u64 = 1280 * 720 * 3;

fn raw(data: Vec<u8>, shm: Option<SharedMemoryRef>) -> RawImage {
    RawImage {
        width: 1280,
        height: 720,
        format: PixelFormat::Rgb8 as i32,
        stride: 0,
        data: data.into(),
        shm,
    }
}

fn open(policy: OverflowPolicy) -> WorkerRequest {
    call(
        worker_request::Body::VisionOpen(StreamConfig {
            model_id: "m".into(),
            tasks: vec![e2e::vision::faces(FaceDetector::Unspecified)],
            max_pending_frames: 64,
            overflow: policy as i32,
        }),
        vec![],
    )
}

fn frame_of(
    index: u64,
    raw: RawImage,
    regions: Vec<sidecar_proto::worker::RegionUse>,
) -> WorkerRequest {
    call(
        worker_request::Body::VisionFrame(Frame {
            index,
            data: Some(frame::Data::Raw(raw)),
            ..Default::default()
        }),
        regions,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streams_waiting_frames_are_bounded_in_bytes_and_region_frames_hold_none() {
    let _serial = serial().await;
    let options = load::Options::Vision(VisionOptions {
        threads: 1,
        max_pending_bytes: BUDGET,
        ..Default::default()
    });
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

    // The default policy: ten frames sent, none of their results read.
    // At most two run before the window closes (none when the worker reads
    // the frames before it runs one); a frame is taken while the waiting
    // ones hold less than the limit, so four wait (11 059 200 bytes), and
    // the next ends the stream, naming the limit.
    let mut stream = w.open(&open(OverflowPolicy::Unspecified)).await;
    for i in 1..=10 {
        send_more(&stream, &frame_of(i, raw(pixels.clone(), None), vec![])).await;
    }
    let mut done = 0;
    let failure = loop {
        let (flags, r) = next_answer(&mut stream).await.expect("an answer");
        match r {
            Ok(r) => {
                assert!(!flags.is_end(), "results, then the error: {r:?}");
                done += 1;
            }
            Err(e) => {
                assert!(flags.is_end(), "the error ends the stream");
                break e;
            }
        }
    };
    let (code, msg) = failure;
    assert_eq!(code, 8, "RESOURCE_EXHAUSTED: {msg}");
    for want in [
        "the 4 frames waiting hold 11059200 bytes, the stream's limit (8388608 bytes: vision.max_pending_bytes 8388608)",
        "shared-memory region",
        "DROP_OLDEST",
    ] {
        assert!(msg.contains(want), "{msg:?} lacks {want:?}");
    }
    assert!(done <= 2, "{done} results before the error");
    w.alive();

    // DROP_OLDEST: the same ten frames; the oldest waiting are dropped to
    // make room (three fit), and every frame is answered once.
    let mut stream = w.open(&open(OverflowPolicy::DropOldest)).await;
    for i in 1..=10 {
        send_more(&stream, &frame_of(i, raw(pixels.clone(), None), vec![])).await;
    }
    let (mut seen, mut dropped) = (Vec::new(), 0);
    while seen.len() < 10 {
        let (flags, r) = next_answer(&mut stream).await.expect("an answer");
        assert!(!flags.is_end(), "the stream is open");
        let r = r.unwrap_or_else(|e| panic!("{e:?}"));
        let Some(worker_response::Body::Vision(p)) = r.body else {
            panic!("{r:?}")
        };
        dropped += usize::from(p.dropped);
        if !p.dropped {
            assert_eq!(p.faces.len(), 1, "frame {}: {p:?}", p.frame_index);
        }
        seen.push(p.frame_index);
    }
    seen.sort_unstable();
    assert_eq!(seen, (1..=10).collect::<Vec<_>>(), "one answer per frame");
    assert!(
        dropped >= 5,
        "{dropped} dropped: at most two run, three wait"
    );
    w.alive();

    // DROP_OLDEST and H.264 chunks, which are never dropped: frames 1 and
    // 2 run (their results unread, the worker then stops), two 9 MiB
    // chunks wait (18 MiB: under DROP_OLDEST the limit is twice 8 MiB, as
    // the supervisor reads on to twice it), and frame 5 ends the stream;
    // nothing was dropped in vain, and frames 1 and 2 were answered.
    let mut stream = w.open(&open(OverflowPolicy::DropOldest)).await;
    for i in 1..=2 {
        send_more(&stream, &frame_of(i, raw(pixels.clone(), None), vec![])).await;
    }
    // Both run well within this (a few ms each), so the window is shut.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    for index in [3, 4] {
        let chunk = call(
            worker_request::Body::VisionFrame(Frame {
                index,
                data: Some(frame::Data::H264(vec![0u8; 9 << 20].into())),
                ..Default::default()
            }),
            vec![],
        );
        send_more(&stream, &chunk).await;
    }
    send_more(&stream, &frame_of(5, raw(pixels.clone(), None), vec![])).await;
    let mut answered = Vec::new();
    let (code, msg) = loop {
        let (flags, r) = next_answer(&mut stream).await.expect("an answer");
        match r {
            Ok(r) => {
                let Some(worker_response::Body::Vision(p)) = r.body else {
                    panic!("{r:?}")
                };
                assert!(p.frame_index <= 2, "only frames 1 and 2 answer: {p:?}");
                assert!(!p.dropped, "nothing dropped: {p:?}");
                answered.push(p.frame_index);
            }
            Err(e) => {
                assert!(flags.is_end());
                break e;
            }
        }
    };
    assert_eq!(code, 8, "{msg}");
    assert!(
        msg.starts_with("frame 5: the 2 frames waiting hold 18874368 bytes, the stream's limit (16777216 bytes: vision.max_pending_bytes 8388608, twice that under DROP_OLDEST"),
        "{msg}"
    );
    assert_eq!(answered, [1, 2], "each answered once, in order");
    w.alive();

    // Frames in a region wait without their bytes: forty frames of one
    // slot (110 MB named, thirteen times the limit) are all taken with
    // their results unread. The region is then unregistered (detached)
    // while they wait: the frames keep it open, and every one is
    // processed and released in its turn.
    let slot = object(FRAME);
    put(&slot, 0, &pixels);
    w.chan.send_fd(11, slot.as_fd()).await.expect("send fd");
    let uses = |attach| vec![region("frames", 11, FRAME, false, attach)];
    let mut stream = w.open(&open(OverflowPolicy::Unspecified)).await;
    for i in 1..=40 {
        let f = frame_of(i, raw(vec![], Some(at("frames", 0, FRAME))), uses(i == 1));
        send_more(&stream, &f).await;
    }
    let detach = WorkerRequest {
        body: Some(worker_request::Body::RegionDetach(RegionDetach {
            ids: vec![11],
        })),
        ..Default::default()
    };
    match w.ask(&detach).await {
        Ok(worker_response::Body::RegionsDetached(n)) => assert_eq!(n, 1, "it was attached"),
        other => panic!("{other:?}"),
    }
    let mut seen = Vec::new();
    while seen.len() < 40 {
        let (flags, r) = next_answer(&mut stream).await.expect("an answer");
        assert!(!flags.is_end(), "the stream is open");
        let r = r.unwrap_or_else(|e| panic!("{e:?}"));
        let Some(worker_response::Body::Vision(p)) = r.body else {
            panic!("{r:?}")
        };
        assert!(!p.dropped, "nothing dropped: {p:?}");
        assert_eq!(p.faces.len(), 1, "frame {}: {p:?}", p.frame_index);
        assert_eq!(p.released, Some(at("frames", 0, FRAME)));
        seen.push(p.frame_index);
    }
    assert_eq!(seen, (1..=40).collect::<Vec<_>>(), "in order, each once");
    w.alive();

    // The worker serves on.
    let batch = call(
        worker_request::Body::VisionBatch(ProcessBatchRequest {
            model_id: "m".into(),
            task: Some(e2e::vision::faces(FaceDetector::Unspecified)),
            images: vec![Image {
                data: Some(image::Data::Raw(raw(pixels, None))),
            }],
        }),
        vec![],
    );
    match w.ask(&batch).await {
        Ok(worker_response::Body::VisionBatch(r)) => assert_eq!(r.results[0].faces.len(), 1),
        other => panic!("{other:?}"),
    }
    assert_eq!(w.pid, pid);
}
