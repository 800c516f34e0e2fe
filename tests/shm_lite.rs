//! LITE inference through shared-memory regions end to end (issue 19):
//! inputs read from a region and an output written into one give what
//! inline bytes give, a region's changed content is never answered from
//! the result cache, and a respawned worker gets the descriptor again.
//! Needs the workers' region table and the supervisor's registry together.

use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::time::Duration;

use e2e::{Sidecar, add_model, float_pattern, lite_config, serial, signal};
use nix::sys::signal::Signal;
use sidecar_proto::v1::lite_service_client::LiteServiceClient;
use sidecar_proto::v1::shared_memory_service_client::SharedMemoryServiceClient;
use sidecar_proto::v1::{
    DType, InferRequest, InferResponse, ModelState, OutputPlacement, RegisterRegionRequest,
    SharedMemoryRef, Tensor,
};
use tonic::Request;

const FACE: &str = "mediapipe/face_detection_short_range.tflite";
const INPUT: u64 = 128 * 128 * 3 * 4;
const REGRESSORS: u64 = 896 * 16 * 4;

struct Object(PathBuf);

impl Drop for Object {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn object(n: &str) -> (String, Object, std::fs::File) {
    let file = format!("sidecar-test-{}-lite-{n}", std::process::id());
    let path = PathBuf::from("/dev/shm").join(&file);
    let f = std::fs::File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .expect("create");
    f.set_len(INPUT + REGRESSORS).expect("size");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).expect("chmod");
    (format!("/{file}"), Object(path), f)
}

fn write_at(f: &mut std::fs::File, at: u64, bytes: &[u8]) {
    f.seek(SeekFrom::Start(at)).expect("seek");
    f.write_all(bytes).expect("write");
}

fn read_at(f: &mut std::fs::File, at: u64, n: u64) -> Vec<u8> {
    f.seek(SeekFrom::Start(at)).expect("seek");
    let mut v = vec![0; n as usize];
    f.read_exact(&mut v).expect("read");
    v
}

fn inline(data: Vec<u8>) -> InferRequest {
    InferRequest {
        model_id: "face".into(),
        inputs: vec![Tensor {
            name: "input".into(),
            dtype: DType::DtypeFloat32 as i32,
            shape: vec![1, 128, 128, 3],
            data: data.into(),
            shm: None,
        }],
        outputs: vec!["regressors".into()],
        output_placements: Vec::new(),
    }
}

fn through(region: &str) -> InferRequest {
    let mut r = inline(Vec::new());
    r.inputs[0].shm = Some(SharedMemoryRef {
        region: region.into(),
        offset: 0,
        byte_size: INPUT,
    });
    r.output_placements.push(OutputPlacement {
        name: "regressors".into(),
        shm: Some(SharedMemoryRef {
            region: region.into(),
            offset: INPUT,
            byte_size: REGRESSORS,
        }),
    });
    r
}

fn hits(r: &tonic::Response<InferResponse>) -> String {
    r.metadata()
        .get("x-sidecar-cache-hits")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("absent")
        .to_owned()
}

async fn start() -> (Sidecar, LiteServiceClient<tonic::transport::Channel>) {
    let store = e2e::store();
    add_model(&store, FACE);
    let sc = Sidecar::start(
        store,
        &format!("{}{}", e2e::QUICK_RESTARTS, lite_config("face", FACE, "")),
    );
    sc.ready("face").await;
    let lite = LiteServiceClient::new(sc.channel().await);
    (sc, lite)
}

async fn register(sc: &Sidecar, key: &str) {
    SharedMemoryServiceClient::new(sc.channel().await)
        .register_region(RegisterRegionRequest {
            name: "io".into(),
            key: key.into(),
            offset: 0,
            byte_size: INPUT + REGRESSORS,
            writable: true,
        })
        .await
        .expect("register");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regions_give_what_inline_bytes_give_and_are_never_cached() {
    let _serial = serial().await;
    let (sc, mut lite) = start().await;
    let (key, _obj, mut f) = object("a");
    register(&sc, &key).await;
    let first = float_pattern((INPUT / 4) as usize);
    let want = lite
        .infer(inline(first.clone()))
        .await
        .expect("inline")
        .into_inner();
    let want = want.outputs[0].data.to_vec();
    assert_eq!(want.len() as u64, REGRESSORS);

    write_at(&mut f, 0, &first);
    let got = lite.infer(through("io")).await.expect("through the region");
    assert_eq!(hits(&got), "0");
    let out = &got.get_ref().outputs[0];
    assert!(out.data.is_empty(), "placed in the region, not inline");
    assert_eq!(out.shm.as_ref().map(|s| s.offset), Some(INPUT));
    assert_eq!(read_at(&mut f, INPUT, REGRESSORS), want);

    // The same request bytes, other region content: computed again.
    let other: Vec<u8> = first.iter().map(|b| b.wrapping_add(1)).collect();
    write_at(&mut f, 0, &other);
    let again = lite.infer(through("io")).await.expect("again");
    assert_eq!(
        hits(&again),
        "0",
        "a call with refs is never served from the cache"
    );
    let other_want = lite
        .infer(inline(other))
        .await
        .expect("inline")
        .into_inner();
    assert_eq!(
        read_at(&mut f, INPUT, REGRESSORS),
        other_want.outputs[0].data.to_vec()
    );
    assert_ne!(
        other_want.outputs[0].data.to_vec(),
        want,
        "the content changed the answer"
    );
    let pid = sc.model("face").await.worker_pid;

    // A respawned worker never saw the descriptor: it is attached again.
    signal(pid, Signal::SIGKILL);
    sc.eventually("face", Duration::from_secs(30), |m| {
        m.state == ModelState::Ready as i32 && m.worker_pid != pid
    })
    .await;
    write_at(&mut f, 0, &first);
    let mut req = Request::new(through("io"));
    req.metadata_mut()
        .insert("cache-control", "no-cache".parse().expect("value"));
    lite.infer(req).await.expect("after the respawn");
    assert_eq!(read_at(&mut f, INPUT, REGRESSORS), want);
    assert_eq!(sc.admin_get("/readyz").0, 200);
}
