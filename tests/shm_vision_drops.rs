//! Region frames the supervisor itself drops (DROP_OLDEST over the
//! caller's class rate, issue 17) still release their bytes: the real
//! sidecar and worker-vision, a camera client (`x-client-id: cam`, 5
//! frames a second, burst 2) sending twenty frames that all name one
//! slot of its region. Every frame is answered once; each answer,
//! processed or dropped, names the slot in `released`; the dropped ones
//! are counted as rate-limited; the next stream works.

use std::os::unix::fs::PermissionsExt;

use e2e::vision::{BLAZEFACE, config};
use e2e::{Sidecar, add_model, serial, store};
use sidecar_proto::v1::shared_memory_service_client::SharedMemoryServiceClient;
use sidecar_proto::v1::vision_service_client::VisionServiceClient;
use sidecar_proto::v1::{
    Frame, OverflowPolicy, PixelFormat, ProcessRequest, RawImage, RegisterRegionRequest,
    SharedMemoryRef, frame, process_request,
};

const SLOT: u64 = 64 * 64 * 3;

fn slot() -> SharedMemoryRef {
    SharedMemoryRef {
        region: "cam-frames".into(),
        offset: 0,
        byte_size: SLOT,
    }
}

fn as_cam<T>(msg: T) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    req.metadata_mut()
        .insert("x-client-id", "cam".parse().expect("client id"));
    req
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn region_frames_dropped_over_the_rate_release_their_slot() {
    let _serial = serial().await;
    let store = store();
    add_model(&store, BLAZEFACE);
    let config_file = format!(
        "[auth]\nclient_ids = [\"cam\"]\n[traffic.classes.cams]\nmatch = [\"client:cam\"]\nrate = 5.0\nburst = 2\n[[models]]\nid = \"faces\"\nfamily = \"vision\"\npath = \"{BLAZEFACE}\"\nvision = {{ threads = 1 }}\n"
    );
    let sc = Sidecar::start(store, &config_file);
    sc.ready("faces").await;
    let pid = sc.child.id();

    let name = format!("sidecar-test-{}-cam", std::process::id());
    let path = std::path::PathBuf::from("/dev/shm").join(&name);
    std::fs::write(&path, vec![128u8; SLOT as usize]).expect("object");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let mut regions = SharedMemoryServiceClient::new(sc.channel().await);
    regions
        .register_region(as_cam(RegisterRegionRequest {
            name: "cam-frames".into(),
            key: format!("/{name}"),
            offset: 0,
            byte_size: SLOT,
            writable: false,
        }))
        .await
        .expect("register as cam");

    let head = "sidecar_rejected_total{model=\"faces\",reason=\"rate_limited\"}";
    let before = sc.metric(head);
    let frames: Vec<ProcessRequest> = std::iter::once(config(OverflowPolicy::DropOldest, 64))
        .chain((1..=20u64).map(|i| ProcessRequest {
            msg: Some(process_request::Msg::Frame(Frame {
                index: i,
                data: Some(frame::Data::Raw(RawImage {
                    width: 64,
                    height: 64,
                    format: PixelFormat::Rgb8 as i32,
                    shm: Some(slot()),
                    ..Default::default()
                })),
                ..Default::default()
            })),
        }))
        .collect();
    let mut vision = VisionServiceClient::new(sc.channel().await);
    let mut s = vision
        .process(as_cam(tokio_stream::iter(frames)))
        .await
        .expect("open")
        .into_inner();
    let (mut seen, mut dropped) = (Vec::new(), 0u64);
    while let Some(r) = s.message().await.expect("ends cleanly") {
        assert_eq!(
            r.released,
            Some(slot()),
            "frame {} releases its slot: {r:?}",
            r.frame_index
        );
        dropped += u64::from(r.dropped);
        seen.push(r.frame_index);
    }
    seen.sort_unstable();
    assert_eq!(
        seen,
        (1..=20).collect::<Vec<_>>(),
        "every frame answered once"
    );
    assert!(dropped >= 1, "frames over the rate were dropped");
    assert_eq!(sc.metric(head) - before, dropped, "each drop counted");

    // The next stream (a frame inline) works.
    let inline = vec![
        config(OverflowPolicy::Unspecified, 4),
        e2e::vision::raw_frame(1, 64, 64, PixelFormat::Rgb8, vec![128; SLOT as usize]),
    ];
    let mut s = vision
        .process(tokio_stream::iter(inline))
        .await
        .expect("open")
        .into_inner();
    let r = s.message().await.expect("a result").expect("one");
    assert!(!r.dropped);
    assert_eq!(sc.child.id(), pid);
    let _ = std::fs::remove_file(&path);
}
