//! Workers read their model through a descriptor the supervisor opened,
//! inside a Landlock sandbox, one family at a time on the real binaries:
//! the model serves; the worker holds the store's file open under
//! `/proc/<pid>/fd`; GetStatus and `sidecarctl status` show Landlock
//! enforced for that worker; a file replaced in the store after its header
//! was read is read again, never loaded blind; workers run as the
//! configured uid and gid.

use std::path::{Path, PathBuf};
use std::time::Duration;

use e2e::{
    Sidecar, add_model, float_pattern, greedy, impossible_gguf, lite_config, serial,
    smollm2_config, store,
};
use sidecar_proto::v1::lite_service_client::LiteServiceClient;
use sidecar_proto::v1::{
    DType, FaceDetector, GetStatusRequest, InferRequest, ModelState, ProcessBatchRequest,
    SandboxState, Tensor,
};

/// What every worker's sandbox holds on this kernel (Landlock ABI 7).
const LANDLOCK: &str = "landlock ABI V7: fully enforced";

/// Where each descriptor of process `pid` leads.
fn open_files(pid: u32) -> Vec<PathBuf> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("/proc/<pid>/fd")
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .collect()
}

/// The store's file `rel`, as the worker's descriptor names it.
fn store_file(sc: &Sidecar, rel: &str) -> PathBuf {
    sc.store
        .path()
        .join(rel)
        .canonicalize()
        .expect("the model file in the store")
}

/// A line of `/proc/<pid>/status` starting with `prefix`, split in fields.
fn status_fields(pid: u32, prefix: &str) -> Vec<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    text.lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no {prefix} in /proc/{pid}/status"))
        .split_whitespace()
        .skip(1)
        .map(str::to_owned)
        .collect()
}

/// Checks that model `id`'s worker `pid` holds `rel` open, and that
/// GetStatus and `sidecarctl status` report Landlock enforced for it with
/// nothing missing; returns the worker's sandbox.
async fn sandboxed(sc: &Sidecar, id: &str, pid: u32, rel: &str) -> SandboxState {
    assert!(pid != 0, "{id} has a worker");
    let model = store_file(sc, rel);
    let files = open_files(pid);
    assert!(
        files.contains(&model),
        "worker {pid} holds {} open: {files:?}",
        model.display()
    );
    // Of the store, the model only (LiteRT holds a second descriptor of
    // it, opened through `/proc/self/fd/N`).
    let store = sc.store.path().canonicalize().expect("store");
    let others: Vec<_> = files
        .iter()
        .filter(|f| f.starts_with(&store) && **f != model)
        .collect();
    assert!(others.is_empty(), "{others:?}");
    let status = sc
        .admin()
        .await
        .get_status(GetStatusRequest {})
        .await
        .expect("GetStatus")
        .into_inner();
    let supervisor = status.sandbox.expect("the supervisor's sandbox");
    assert!(
        supervisor.applied.iter().any(|a| a == "non-dumpable"),
        "{supervisor:?}"
    );
    let worker = status
        .worker_sandboxes
        .iter()
        .find(|w| w.model_id == id)
        .unwrap_or_else(|| panic!("no sandbox for {id}: {:?}", status.worker_sandboxes));
    assert_eq!(worker.pid, pid);
    let sandbox = worker.sandbox.clone().expect("reported");
    for item in [
        LANDLOCK,
        "no_new_privs",
        "RLIMIT_CORE 0",
        "RLIMIT_NOFILE 4096",
    ] {
        assert!(
            sandbox.applied.iter().any(|a| a == item),
            "{item} not in {sandbox:?}"
        );
    }
    assert!(sandbox.missing.is_empty(), "{sandbox:?}");
    let (code, out, err) = sc.ctl(&["status"]);
    assert_eq!(code, 0, "{err}");
    let row = out
        .lines()
        .find(|l| l.starts_with(id) && l.contains(&pid.to_string()) && l.contains(LANDLOCK))
        .unwrap_or_else(|| panic!("no sandbox row for {id} pid {pid} in\n{out}"));
    assert!(row.contains("no_new_privs"), "{row}");
    assert!(out.contains("supervisor sandbox: non-dumpable"), "{out}");
    sandbox
}

/// The probes answer 200 and the model is READY, not FAILED.
async fn healthy(sc: &Sidecar, id: &str) {
    assert_eq!(sc.admin_get("/livez").0, 200);
    let (code, body) = sc.admin_get("/readyz");
    assert_eq!(code, 200, "{body}");
    assert_eq!(sc.model(id).await.state, ModelState::Ready as i32);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_text_model_is_served_through_its_descriptor_under_landlock() {
    let _serial = serial().await;
    let sc = Sidecar::start(store(), &smollm2_config(""));
    let supervisor = sc.child.id();
    let m = sc.ready("smollm2").await;
    let pid = m.worker_pid;
    sandboxed(&sc, "smollm2", pid, e2e::SMOLLM2).await;
    let mut text = sc.text().await;
    let first = text
        .generate(greedy("The capital of France is", 4))
        .await
        .expect("served")
        .into_inner()
        .text;
    assert!(first.contains("Paris"), "{first:?}");
    // The store's file renamed and another put in its place: the worker
    // holds the file it was handed and answers as before.
    let path = sc.store.path().join(e2e::SMOLLM2);
    let renamed = path.with_file_name("renamed.gguf");
    std::fs::rename(&path, &renamed).expect("rename");
    std::fs::write(&path, b"GGUF but not a model").expect("replace");
    assert!(
        open_files(pid).contains(&renamed.canonicalize().expect("renamed")),
        "{:?}",
        open_files(pid)
    );
    let again = text
        .generate(greedy("The capital of France is", 4))
        .await
        .expect("served")
        .into_inner()
        .text;
    assert_eq!(again, first);
    assert_eq!(sc.model("smollm2").await.worker_pid, pid);
    assert_eq!(sc.child.id(), supervisor);
    healthy(&sc, "smollm2").await;
    let rss = e2e::status_bytes(pid, "VmRSS");
    assert!(rss < 1 << 30, "worker VmRSS {} MiB", rss >> 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_replaced_after_its_header_was_read_is_checked_again_not_loaded_blind() {
    let _serial = serial().await;
    let store = store();
    let lazy = store.path().join("lazy/m.gguf");
    std::fs::create_dir_all(lazy.parent().expect("dir")).expect("mkdir");
    std::fs::copy(e2e::root().join("models").join(e2e::SMOLLM2), &lazy).expect("copy");
    let config = format!(
        "{}[[models]]\nid = \"lazy\"\nfamily = \"text\"\npath = \"lazy/m.gguf\"\npreload = false\ntext = {{ context_size = 512, threads = 1 }}\n",
        smollm2_config("")
    );
    let sc = Sidecar::start(store, &config);
    let supervisor = sc.child.id();
    sc.ready("smollm2").await;
    // Its header is read at start, lazy as it is.
    sc.eventually("lazy", Duration::from_secs(30), |m| {
        m.memory.as_ref().is_some_and(|u| u.estimate_bytes > 0)
    })
    .await;
    // Replaced before its first load by a file whose header the
    // supervisor refuses.
    let evil = lazy.with_file_name("evil.tmp");
    std::fs::write(&evil, impossible_gguf()).expect("write");
    std::fs::rename(&evil, &lazy).expect("replace");
    let err = sc
        .text()
        .await
        .generate(sidecar_proto::v1::GenerateRequest {
            model_id: "lazy".into(),
            ..greedy("Hello", 2)
        })
        .await
        .expect_err("the replaced file is refused");
    let why = format!("llama.block_count {} exceeds 65536", u64::MAX);
    assert!(err.message().contains(&why), "{err:?}");
    let m = sc
        .eventually("lazy", Duration::from_secs(30), |m| {
            m.state == ModelState::Failed as i32
        })
        .await;
    assert!(
        m.last_error.contains("lazy/m.gguf: GGUF header:") && m.last_error.contains(&why),
        "{m:?}"
    );
    assert_eq!(m.restarts, 0, "no worker read the file: {m:?}");
    assert_eq!(sc.child.id(), supervisor);
    healthy(&sc, "smollm2").await;
    eprintln!("call refused with {:?}: {}", err.code(), err.message());
}

/// One ProcessBatch of the astronaut through `model` with `detector`:
/// exactly one face, overlapping the known one (IoU ≥ 0.5).
async fn finds_the_face(
    client: &mut sidecar_proto::v1::vision_service_client::VisionServiceClient<
        tonic::transport::Channel,
    >,
    model: &str,
    detector: FaceDetector,
) {
    let r = client
        .process_batch(ProcessBatchRequest {
            model_id: model.into(),
            task: Some(e2e::vision::faces(detector)),
            images: vec![e2e::vision::astronaut()],
        })
        .await
        .expect("batch")
        .into_inner();
    assert_eq!(
        r.results[0].faces.len(),
        1,
        "{model} {detector:?}: {:?}",
        r.results
    );
    let found = r.results[0].faces[0].r#box.expect("box");
    let iou = e2e::vision::iou(&found, &e2e::vision::FACE);
    assert!(iou >= 0.5, "{model} {detector:?}: {found:?} IoU {iou}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vision_detector_is_served_through_its_descriptor_under_landlock() {
    let _serial = serial().await;
    let (sc, mut client) = e2e::vision::sidecar().await;
    let pid = sc.model("faces").await.worker_pid;
    sandboxed(&sc, "faces", pid, e2e::vision::BLAZEFACE).await;
    // BlazeFace through LiteRT, then OpenCV's cascades (read from /usr).
    for detector in [FaceDetector::Unspecified, FaceDetector::Haar] {
        finds_the_face(&mut client, "faces", detector).await;
    }
    assert_eq!(sc.model("faces").await.worker_pid, pid);
    healthy(&sc, "faces").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vision_cascade_is_read_by_opencv_through_its_descriptor_under_landlock() {
    let _serial = serial().await;
    const CASCADE: &str = "cascades/frontalface.xml";
    let store = store();
    let path = store.path().join(CASCADE);
    std::fs::create_dir_all(path.parent().expect("dir")).expect("mkdir");
    std::fs::copy(
        "/usr/share/opencv4/haarcascades/haarcascade_frontalface_default.xml",
        &path,
    )
    .expect("the OpenCV cascade (opencv-data) is installed");
    let sc = Sidecar::start(
        store,
        &format!(
            "[[models]]\nid = \"cascade\"\nfamily = \"vision\"\npath = \"{CASCADE}\"\nvision = {{ threads = 1 }}\n"
        ),
    );
    let pid = sc.ready("cascade").await.worker_pid;
    sandboxed(&sc, "cascade", pid, CASCADE).await;
    let mut client = sidecar_proto::v1::vision_service_client::VisionServiceClient::connect(
        format!("http://{}", sc.api),
    )
    .await
    .expect("connect");
    finds_the_face(&mut client, "cascade", FaceDetector::Unspecified).await;
    assert_eq!(sc.model("cascade").await.worker_pid, pid);
    healthy(&sc, "cascade").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lite_model_is_served_through_its_descriptor_under_landlock() {
    let _serial = serial().await;
    const FACE: &str = "mediapipe/face_detection_short_range.tflite";
    let store = store();
    add_model(&store, FACE);
    let sc = Sidecar::start(store, &lite_config("face", FACE, ""));
    let pid = sc.ready("face").await.worker_pid;
    let sandbox = sandboxed(&sc, "face", pid, FACE).await;
    eprintln!("worker-lite sandbox: {sandbox:?}");
    let mut lite = LiteServiceClient::connect(format!("http://{}", sc.api))
        .await
        .expect("connect")
        .max_decoding_message_size(64 << 20);
    let r = lite
        .infer(InferRequest {
            output_placements: Default::default(),
            model_id: "face".into(),
            inputs: vec![Tensor {
                shm: Default::default(),
                name: "input".into(),
                dtype: DType::DtypeFloat32 as i32,
                shape: vec![1, 128, 128, 3],
                data: float_pattern(128 * 128 * 3).into(),
            }],
            outputs: Vec::new(),
        })
        .await
        .expect("infer")
        .into_inner();
    let scores = r
        .outputs
        .iter()
        .find(|t| t.name == "classificators")
        .expect("classificators");
    assert_eq!(scores.shape, [1, 896, 1]);
    assert_eq!(scores.data.len(), 896 * 4);
    assert_eq!(sc.model("face").await.worker_pid, pid);
    healthy(&sc, "face").await;
}

/// A folder anyone may enter holding worker-text (the target
/// directory lies under /root, which uid 65534 cannot enter).
fn public_workers() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("dir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let from = e2e::binary("worker-text");
    let to = dir.path().join("worker-text");
    if std::fs::hard_link(&from, &to).is_err() {
        std::fs::copy(&from, &to).expect("copy the worker");
    }
    std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_run_as_the_configured_uid_and_gid_and_serve() {
    let _serial = serial().await;
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test starts the supervisor as root, which workers.uid needs"
    );
    let workers = public_workers();
    let config = format!(
        "worker_dir = \"{}\"\n[workers]\nuid = 65534\ngid = 65534\n{}",
        workers.path().display(),
        smollm2_config("")
    );
    let sc = Sidecar::start(store(), &config);
    let pid = sc.ready("smollm2").await.worker_pid;
    assert_eq!(status_fields(pid, "Uid:"), ["65534"; 4]);
    assert_eq!(status_fields(pid, "Gid:"), ["65534"; 4]);
    for set in ["CapInh:", "CapPrm:", "CapEff:", "CapAmb:"] {
        assert_eq!(status_fields(pid, set), ["0000000000000000"], "{set}");
    }
    assert!(
        status_fields(pid, "Groups:").is_empty(),
        "no supplementary groups"
    );
    let sandbox = sandboxed(&sc, "smollm2", pid, e2e::SMOLLM2).await;
    assert!(
        sandbox
            .applied
            .iter()
            .any(|a| a == "uid 65534 gid 65534 groups []"),
        "{sandbox:?}"
    );
    // The store is the supervisor's (0700, root): the worker reads the
    // descriptor it was handed.
    let store_mode =
        std::os::unix::fs::MetadataExt::mode(&std::fs::metadata(sc.store.path()).expect("store"));
    assert_eq!(store_mode & 0o777, 0o700);
    let out = sc
        .text()
        .await
        .generate(greedy("The capital of France is", 4))
        .await
        .expect("served")
        .into_inner()
        .text;
    assert!(out.contains("Paris"), "{out:?}");
    let status = sc
        .admin()
        .await
        .get_status(GetStatusRequest {})
        .await
        .expect("GetStatus")
        .into_inner();
    let supervisor = status.sandbox.expect("sandbox");
    assert!(
        supervisor
            .applied
            .iter()
            .any(|a| a == "workers run as uid 65534 gid 65534"),
        "{supervisor:?}"
    );
    healthy(&sc, "smollm2").await;
    assert!(Path::new(&format!("/proc/{pid}")).exists());
}
