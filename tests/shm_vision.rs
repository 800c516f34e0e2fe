//! A VisionService stream whose raw 1280x720 frames live in the client's
//! shared-memory region, through the real sidecar (issue 19): the client
//! cycles through four slots of one region, writing a frame into a slot
//! only once a result has released it; every result releases exactly the
//! slot its frame named, and the detections equal those of the same frames
//! sent inline. A region unregistered mid-stream ends the stream with
//! NOT_FOUND, and the worker serves the next stream.

use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use e2e::vision::{config, raw_frame, sidecar};
use sidecar_proto::v1::shared_memory_service_client::SharedMemoryServiceClient;
use sidecar_proto::v1::{
    Frame, OverflowPolicy, PixelFormat, ProcessRequest, ProcessResponse, RawImage,
    RegisterRegionRequest, SharedMemoryRef, UnregisterRegionRequest, frame, process_request,
};
use tokio_stream::StreamExt;

const W: usize = 1280;
const H: usize = 720;
const FRAME: u64 = (W * H * 3) as u64;
const SLOTS: u64 = 4;
const FRAMES: usize = 10;

/// The astronaut at 1280x720 (RGB), moved right by 48 pixels a frame.
fn frames() -> Vec<Vec<u8>> {
    let png = e2e::root().join("models/testdata/astronaut.png");
    let out = Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-i"])
        .arg(&png)
        .args(["-vf", "scale=1280:1280,crop=1280:720:0:0", "-f", "rawvideo"])
        .args(["-pix_fmt", "rgb24", "-"])
        .output()
        .expect("ffmpeg (run scripts/setup.sh)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let base = out.stdout;
    assert_eq!(base.len() as u64, FRAME);
    (0..FRAMES)
        .map(|k| {
            let shift = k * 48 * 3;
            let mut f = vec![0u8; base.len()];
            for (src, dst) in base.chunks(W * 3).zip(f.chunks_mut(W * 3)) {
                dst[shift..].copy_from_slice(&src[..W * 3 - shift]);
            }
            f
        })
        .collect()
}

struct Object(std::path::PathBuf);

impl Drop for Object {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn slot_ref(slot: u64) -> SharedMemoryRef {
    SharedMemoryRef {
        region: "frames".into(),
        offset: slot * FRAME,
        byte_size: FRAME,
    }
}

fn shm_frame(index: u64, slot: u64) -> ProcessRequest {
    ProcessRequest {
        msg: Some(process_request::Msg::Frame(Frame {
            index,
            data: Some(frame::Data::Raw(RawImage {
                width: W as u32,
                height: H as u32,
                format: PixelFormat::Rgb8 as i32,
                stride: 0,
                data: Default::default(),
                shm: Some(slot_ref(slot)),
            })),
            ..Default::default()
        })),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_frames_in_a_ring_of_region_slots_match_inline_frames() {
    let _serial = e2e::serial().await;
    let frames = frames();
    let (sc, mut vision) = sidecar().await;
    let pid = sc.child.id();
    let worker = sc.model("faces").await.worker_pid;

    // Inline: every frame kept (the default policy pauses the stream).
    let mut inline = vec![config(OverflowPolicy::Unspecified, 4)];
    for (k, f) in frames.iter().enumerate() {
        inline.push(raw_frame(k as u64 + 1, W, H, PixelFormat::Rgb8, f.clone()));
    }
    let want: Vec<ProcessResponse> = vision
        .process(tokio_stream::iter(inline))
        .await
        .expect("inline stream")
        .into_inner()
        .collect::<Result<_, _>>()
        .await
        .expect("inline results");
    assert_eq!(want.len(), FRAMES);
    assert!(
        want.iter().all(|r| r.released.is_none()),
        "inline frames release nothing"
    );
    let with_face = want.iter().filter(|r| !r.faces.is_empty()).count();
    assert!(
        with_face >= FRAMES / 2,
        "the face is found in most frames: {want:?}"
    );
    let distinct: std::collections::HashSet<String> =
        want.iter().map(|r| format!("{:?}", r.faces)).collect();
    assert!(
        distinct.len() > FRAMES / 2,
        "the frames differ: {distinct:?}"
    );

    // The region: four slots of one object.
    let file = format!("sidecar-test-{}-frames", std::process::id());
    let path = std::path::PathBuf::from("/dev/shm").join(&file);
    let _object = Object(path.clone());
    let mut f = std::fs::File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .expect("create");
    f.set_len(SLOTS * FRAME).expect("size");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).expect("chmod");
    let mut regions = SharedMemoryServiceClient::new(sc.channel().await);
    regions
        .register_region(RegisterRegionRequest {
            name: "frames".into(),
            key: format!("/{file}"),
            offset: 0,
            byte_size: SLOTS * FRAME,
            writable: false,
        })
        .await
        .expect("register");

    // The client's ring: a frame goes into a slot only once it is free.
    let (tx, rx) = tokio::sync::mpsc::channel::<ProcessRequest>(16);
    tx.send(config(OverflowPolicy::Unspecified, 4))
        .await
        .expect("send");
    let mut results = vision
        .process(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect("shm stream")
        .into_inner();
    let mut free: Vec<u64> = (0..SLOTS).rev().collect();
    let mut slot_of = std::collections::HashMap::new();
    let mut next = 0usize;
    let mut got = Vec::new();
    while got.len() < FRAMES {
        while next < FRAMES
            && let Some(slot) = free.pop()
        {
            f.seek(SeekFrom::Start(slot * FRAME)).expect("seek");
            f.write_all(&frames[next]).expect("write frame");
            slot_of.insert(next as u64 + 1, slot);
            tx.send(shm_frame(next as u64 + 1, slot))
                .await
                .expect("send frame");
            next += 1;
        }
        let r = results
            .next()
            .await
            .expect("a result")
            .expect("frame result");
        let slot = slot_of
            .remove(&r.frame_index)
            .unwrap_or_else(|| panic!("a result for frame {} not in flight", r.frame_index));
        assert_eq!(
            r.released,
            Some(slot_ref(slot)),
            "frame {} releases its slot",
            r.frame_index
        );
        free.push(slot);
        got.push(r);
    }
    for (r, w) in got.iter().zip(&want) {
        assert_eq!(r.frame_index, w.frame_index, "in order");
        assert_eq!(
            r.faces, w.faces,
            "frame {}: the same detections as inline",
            r.frame_index
        );
        assert_eq!((r.width, r.height), (W as u32, H as u32));
    }

    // Unregistered mid-stream: the next frame naming it ends the stream.
    regions
        .unregister_region(UnregisterRegionRequest {
            name: "frames".into(),
        })
        .await
        .expect("unregister");
    tx.send(shm_frame(100, 0)).await.expect("send frame");
    let err = results
        .next()
        .await
        .expect("an answer")
        .expect_err("a frame in an unregistered region");
    assert_eq!(err.code(), tonic::Code::NotFound, "{err:?}");
    assert!(
        err.message().contains("frames") && err.message().contains("not registered"),
        "{err:?}"
    );
    drop(tx);

    // Whole: same supervisor, same worker, and the next stream works.
    let again: Vec<ProcessResponse> = vision
        .process(tokio_stream::iter(vec![
            config(OverflowPolicy::Unspecified, 4),
            raw_frame(1, W, H, PixelFormat::Rgb8, frames[0].clone()),
        ]))
        .await
        .expect("next stream")
        .into_inner()
        .collect::<Result<_, _>>()
        .await
        .expect("next results");
    assert_eq!(again[0].faces, want[0].faces);
    assert_eq!(sc.child.id(), pid);
    assert_eq!(
        sc.model("faces").await.worker_pid,
        worker,
        "the worker survived"
    );
    assert_eq!(sc.admin_get("/readyz").0, 200);
}
