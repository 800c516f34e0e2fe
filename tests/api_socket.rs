//! The gRPC API on a Unix socket (`[api_socket]`, `--listen unix:PATH`):
//! the same services and layers as the TCP port, the socket's mode and
//! owner as configured, the peer's uid as the caller's identity (log and
//! metrics), a live socket, the control socket's directory and any other
//! file at the path refused at start, and `--listen unix:` alone with no
//! TCP listener at all.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use e2e::{
    Sidecar, add_model, binary, float_pattern, lite_config, root, serial, smollm2_config, store,
};
use sidecar_proto::v1::lite_service_client::LiteServiceClient;
use sidecar_proto::v1::model_service_client::ModelServiceClient;
use sidecar_proto::v1::text_service_client::TextServiceClient;
use sidecar_proto::v1::{
    DType, InferRequest, LoadModelRequest, ModelState, Tensor, TokenizeRequest,
};
use tonic::Code;
use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

const FACE: &str = "mediapipe/face_detection_short_range.tflite";

async fn unix_channel(path: &Path) -> Channel {
    supervisor::ctl::connect(path)
        .await
        .unwrap_or_else(|e| panic!("connect to {}: {e}", path.display()))
}

fn face_request() -> InferRequest {
    InferRequest {
        model_id: "face".into(),
        inputs: vec![Tensor {
            name: "input".into(),
            dtype: DType::DtypeFloat32 as i32,
            shape: vec![1, 128, 128, 3],
            data: float_pattern(128 * 128 * 3).into(),
            shm: None,
        }],
        outputs: vec![],
        output_placements: vec![],
    }
}

/// A config for a sidecar started by hand here: `store` (mode 0700)
/// holds the control socket; `extra` is appended.
fn write_config(store: &Path, extra: &str) -> std::path::PathBuf {
    std::fs::set_permissions(store, std::os::unix::fs::PermissionsExt::from_mode(0o700))
        .expect("chmod the store");
    let file = store.join("sidecar.toml");
    std::fs::write(
        &file,
        format!(
            "admin_listen = \"127.0.0.1:0\"\nmodel_store = \"{}\"\ncontrol_socket = \"{}\"\nlite_runtime = \"{}\"\n{extra}\n[openai]\naddress = \"127.0.0.1:0\"\n",
            store.display(),
            store.join("control.sock").display(),
            root().join("runtime/litert/libLiteRt.so").display(),
        ),
    )
    .expect("write config");
    file
}

/// Starts a sidecar that must refuse to start; its stderr.
fn refused_start(config: &Path) -> String {
    let mut child = Command::new(binary("sidecar"))
        .arg("--config")
        .arg(config)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start sidecar");
    let until = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if Instant::now() > until {
            let _ = child.kill();
            panic!("the sidecar did not refuse to start within 30 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut err)
        .expect("read stderr");
    assert!(!status.success(), "it started: {err}");
    err
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_serves_on_a_unix_socket_with_its_mode_owner_and_identity() {
    let _serial = serial().await;
    let store = store();
    add_model(&store, FACE);
    let root_dir = tempfile::tempdir().expect("tempdir");
    let socket = root_dir.path().join("sidecar-api/api.sock");
    let me = nix::unistd::geteuid().as_raw();
    // Root gives the socket to another uid and gid (what a pod's app
    // container runs as); another user can only keep its own.
    let (owner, group) = if me == 0 {
        (65534, 65534)
    } else {
        (me, nix::unistd::getegid().as_raw())
    };
    let config = format!(
        "[api_socket]\npath = \"{}\"\nmode = \"0660\"\nowner = {owner}\ngroup = {group}\n{}{}",
        socket.display(),
        smollm2_config(""),
        lite_config("face", FACE, ""),
    );
    let sc = Sidecar::start_logged(store, &config);
    let pid = sc.child.id();
    sc.ready("smollm2").await;
    let face_worker = sc.ready("face").await.worker_pid;

    let meta = std::fs::symlink_metadata(&socket).expect("the socket exists");
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.mode() & 0o7777, 0o660, "{:o}", meta.mode());
    assert_eq!((meta.uid(), meta.gid()), (owner, group));
    let dir = std::fs::metadata(socket.parent().expect("dir")).expect("dir");
    assert_eq!(
        dir.mode() & 0o7777,
        0o750,
        "created for the socket's group: {:o}",
        dir.mode()
    );
    assert_eq!((dir.uid(), dir.gid()), (owner, group));

    // The same services over the socket as over TCP.
    let channel = unix_channel(&socket).await;
    let health = HealthClient::new(channel.clone())
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("health over the socket")
        .into_inner();
    assert_eq!(health.status, ServingStatus::Serving as i32);
    let tokens = TextServiceClient::new(channel.clone())
        .tokenize(TokenizeRequest {
            model_id: "smollm2".into(),
            text: "over the unix socket".into(),
            ..Default::default()
        })
        .await
        .expect("Tokenize over the socket")
        .into_inner();
    let tcp_tokens = sc
        .text()
        .await
        .tokenize(TokenizeRequest {
            model_id: "smollm2".into(),
            text: "over the unix socket".into(),
            ..Default::default()
        })
        .await
        .expect("Tokenize over TCP")
        .into_inner();
    assert!(!tokens.tokens.is_empty());
    assert_eq!(tokens.tokens, tcp_tokens.tokens);
    let mut lite = LiteServiceClient::new(channel.clone()).max_decoding_message_size(64 << 20);
    let over_socket = lite
        .infer(face_request())
        .await
        .expect("Infer over the socket")
        .into_inner();
    let over_tcp = LiteServiceClient::new(sc.channel().await)
        .max_decoding_message_size(64 << 20)
        .infer(face_request())
        .await
        .expect("Infer over TCP")
        .into_inner();
    assert!(!over_socket.outputs.is_empty());
    assert_eq!(over_socket.outputs, over_tcp.outputs);

    // The caller is its uid: refused LoadModel (no tokens file) names
    // it in the log, and the metrics count its calls under it.
    let err = ModelServiceClient::new(channel)
        .load_model(LoadModelRequest {
            model_id: "other".into(),
            ..Default::default()
        })
        .await
        .expect_err("LoadModel is not served to the network API without tokens");
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    let uid = nix::unistd::getuid().as_raw();
    let log = sc.log_text();
    assert!(
        log.lines().any(|l| l.contains("call refused")
            && l.contains("LoadModel")
            && l.contains(&format!("client=uid:{uid}"))),
        "the socket's caller is its uid: {log}"
    );
    let (code, metrics) = sc.admin_get("/metrics");
    assert_eq!(code, 200);
    let client = format!("client=\"uid:{uid}\"");
    for method in [
        "TextService/Tokenize",
        "LiteService/Infer",
        "ModelService/LoadModel",
    ] {
        assert!(
            metrics
                .lines()
                .any(|l| l.starts_with("sidecar_requests_total{")
                    && l.contains(&format!("method=\"{method}\""))
                    && l.contains(&client)),
            "{method} counted for {client}: {metrics}"
        );
    }

    // A second sidecar on the same path is refused: the socket is live.
    let other = tempfile::tempdir().expect("tempdir");
    let file = write_config(
        other.path(),
        &format!(
            "listen = \"127.0.0.1:0\"\n[api_socket]\npath = \"{}\"\n",
            socket.display()
        ),
    );
    let err = refused_start(&file);
    assert!(
        err.contains("another process is listening") && err.contains(&socket.display().to_string()),
        "{err}"
    );
    // The control socket's directory is refused, naming both paths.
    let inside = other.path().join("api.sock");
    let file = write_config(
        other.path(),
        &format!(
            "listen = \"127.0.0.1:0\"\n[api_socket]\npath = \"{}\"\n",
            inside.display()
        ),
    );
    let err = refused_start(&file);
    assert!(
        err.contains("control socket's directory")
            && err.contains(&inside.display().to_string())
            && err.contains(&other.path().join("control.sock").display().to_string()),
        "{err}"
    );
    // Through a link to the control socket's directory and a
    // subdirectory not made yet: refused the same, nothing created.
    let links = tempfile::tempdir().expect("tempdir");
    let alias = links.path().join("alias");
    std::os::unix::fs::symlink(other.path(), &alias).expect("symlink");
    let through = alias.join("new/api.sock");
    let file = write_config(
        other.path(),
        &format!(
            "listen = \"127.0.0.1:0\"\n[api_socket]\npath = \"{}\"\n",
            through.display()
        ),
    );
    let err = refused_start(&file);
    assert!(
        err.contains("control socket's directory")
            && err.contains(&through.display().to_string())
            && err.contains(&other.path().join("control.sock").display().to_string()),
        "{err}"
    );
    assert!(
        !other.path().join("new").exists(),
        "no directory made inside the control socket's"
    );
    // A link planted at the path (to a file whose mode and owner a root
    // supervisor could change) is refused; its target is unchanged.
    let planted_dir = tempfile::tempdir().expect("tempdir");
    let target = planted_dir.path().join("target");
    std::fs::write(&target, b"keep").expect("write");
    std::fs::set_permissions(&target, std::os::unix::fs::PermissionsExt::from_mode(0o640))
        .expect("chmod");
    let planted = planted_dir.path().join("api.sock");
    std::os::unix::fs::symlink(&target, &planted).expect("symlink");
    let file = write_config(
        other.path(),
        &format!(
            "listen = \"127.0.0.1:0\"\n[api_socket]\npath = \"{}\"\nmode = \"0666\"\n",
            planted.display()
        ),
    );
    let err = refused_start(&file);
    assert!(
        err.contains("a symbolic link") && err.contains(&planted.display().to_string()),
        "{err}"
    );
    let meta = std::fs::symlink_metadata(&target).expect("target");
    assert_eq!(meta.mode() & 0o7777, 0o640, "the target keeps its mode");
    assert_eq!(std::fs::read(&target).expect("read"), b"keep");
    assert!(
        std::fs::symlink_metadata(&planted)
            .expect("link")
            .file_type()
            .is_symlink()
    );
    // Any other file at the path is left alone and refused.
    let elsewhere = tempfile::tempdir().expect("tempdir");
    let plain = elsewhere.path().join("api.sock");
    std::fs::write(&plain, b"not a socket").expect("write");
    let file = write_config(
        other.path(),
        &format!(
            "listen = \"127.0.0.1:0\"\n[api_socket]\npath = \"{}\"\n",
            plain.display()
        ),
    );
    let err = refused_start(&file);
    assert!(err.contains("a regular file"), "{err}");
    assert_eq!(std::fs::read(&plain).expect("still there"), b"not a socket");

    // Whole, and still serving over the socket.
    assert_eq!(sc.child.id(), pid);
    assert!(e2e::alive(pid));
    assert_eq!(sc.admin_get("/livez").0, 200);
    assert_eq!(sc.admin_get("/readyz").0, 200);
    let face = sc.model("face").await;
    assert_eq!(face.state, ModelState::Ready as i32);
    assert_eq!(face.worker_pid, face_worker);
    let again = LiteServiceClient::new(unix_channel(&socket).await)
        .max_decoding_message_size(64 << 20)
        .infer(face_request())
        .await
        .expect("the first sidecar's socket still serves")
        .into_inner();
    assert_eq!(again.outputs, over_tcp.outputs);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_unix_alone_turns_the_tcp_listener_off() {
    let _serial = serial().await;
    let store = tempfile::tempdir().expect("store");
    // A free port, named in the file: the flag must keep it closed.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let file = write_config(store.path(), &format!("listen = \"127.0.0.1:{port}\"\n"));
    let sockets = tempfile::tempdir().expect("tempdir");
    let socket = sockets.path().join("api/api.sock");
    let mut child: Child = Command::new(binary("sidecar"))
        .arg("--config")
        .arg(&file)
        .arg("--listen")
        .arg(format!("unix:{}", socket.display()))
        .current_dir(root())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start sidecar");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        if let Some(Ok(line)) = lines.next() {
            let _ = tx.send(line);
        }
        for _ in lines {}
    });
    let line = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("sidecar printed its addresses");
    assert!(line.contains(" api=off "), "{line}");
    assert!(
        line.ends_with(&format!("api_socket=unix:{}", socket.display())),
        "{line}"
    );
    let refused = std::net::TcpStream::connect(("127.0.0.1", port)).expect_err("nothing on TCP");
    assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);
    let health = HealthClient::new(unix_channel(&socket).await)
        .check(tonic_health::pb::HealthCheckRequest {
            service: "inference.GRPCInferenceService".into(),
        })
        .await
        .expect("health over the socket")
        .into_inner();
    assert_eq!(health.status, ServingStatus::Serving as i32);
    // SIGTERM: the socket goes with the sidecar.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("SIGTERM");
    let until = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        assert!(Instant::now() < until, "the sidecar did not stop");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "{status:?}");
    assert!(!socket.exists(), "the socket is removed at shutdown");
}
