//! gRPC server reflection, `v1` and `v1alpha`, per listener: the API port
//! (TCP and its Unix socket) lists the services it serves and never
//! `AdminService`; the control socket lists `AdminService` and
//! `ModelService`. Asked with Python's `grpc_reflection` client (what
//! grpcurl, evans and most tools do) and with tonic's.

use prost::Message;
use serde_json::{Value, json};
use tokio_stream::StreamExt;
use tonic_reflection::pb::{v1, v1alpha};

use e2e::{Sidecar, python_json, serial, store};

const API: [&str; 9] = [
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
    "inference.GRPCInferenceService",
    "sidecar.v1.LiteService",
    "sidecar.v1.ModelService",
    "sidecar.v1.SharedMemoryService",
    "sidecar.v1.TextService",
    "sidecar.v1.VisionService",
];

const CONTROL: [&str; 4] = [
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
    "sidecar.v1.AdminService",
    "sidecar.v1.ModelService",
];

/// The methods of `service` as the proto compiled into the sidecar has
/// them: what reflection must answer.
fn methods_of(service: &str) -> Vec<Value> {
    let set = prost_types::FileDescriptorSet::decode(sidecar_proto::FILE_DESCRIPTOR_SET)
        .expect("descriptor set");
    let (package, name) = service.rsplit_once('.').expect("qualified");
    let s = set
        .file
        .iter()
        .filter(|f| f.package() == package)
        .flat_map(|f| &f.service)
        .find(|s| s.name() == name)
        .expect("service in the proto");
    s.method
        .iter()
        .map(|m| {
            json!([
                m.name(),
                m.input_type().trim_start_matches('.'),
                m.output_type().trim_start_matches('.')
            ])
        })
        .collect()
}

/// What the Python client says of `target` for `service`, after checking
/// what both versions must answer alike.
async fn ask(target: String, service: &str, file: &str, absent: &[&str]) -> Value {
    let mut args = vec![target, service.to_owned()];
    args.extend(absent.iter().map(|s| (*s).to_owned()));
    let out = python_json("reflection_client.py", args).await;
    eprintln!("{out}");
    for version in ["v1alpha", "v1"] {
        let v = &out[version];
        let names: Vec<Value> = methods_of(service)
            .into_iter()
            .map(|m| m[0].clone())
            .collect();
        let short = service.rsplit('.').next().expect("short");
        assert_eq!(
            v["symbol"],
            json!([{"name": file, "services": [short], "methods": names}]),
            "{version}: the file defining {service}"
        );
        assert_eq!(
            v["file"],
            json!([{"name": "sidecar/v1/model.proto", "services": ["ModelService"]}]),
            "{version}: a file by name"
        );
        let absent_seen: Vec<Value> = absent
            .iter()
            .map(|s| {
                json!({
                    "symbol": s,
                    "code": 5,
                    "message": format!("symbol '{s}' not found"),
                    "files": 0,
                })
            })
            .collect();
        assert_eq!(v["absent"], json!(absent_seen), "{version}: NOT_FOUND");
    }
    assert_eq!(out["v1alpha"], out["v1"], "both versions answer alike");
    assert_eq!(out["client"]["methods"], json!(methods_of(service)));
    assert_eq!(out["client"]["file"], file);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_reflection_lists_what_each_listener_serves_in_v1alpha_and_v1() {
    let _serial = serial().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("sidecar-api/api.sock");
    let sc = Sidecar::start(
        store(),
        &format!("[api_socket]\npath = \"{}\"\n", socket.display()),
    );

    // The API port, over TCP and over its Unix socket: the same router.
    for target in [sc.api.to_string(), format!("unix://{}", socket.display())] {
        let out = ask(
            target.clone(),
            "sidecar.v1.VisionService",
            "sidecar/v1/vision.proto",
            &[
                "sidecar.v1.AdminService",
                "sidecar.v1.AdminService.GetStatus",
                "sidecar.worker.v1.WorkerRequest",
            ],
        )
        .await;
        assert_eq!(out["v1alpha"]["services"], json!(API), "{target}");
        assert_eq!(out["client"]["services"], json!(API), "{target}");
        assert_eq!(
            out["client"]["imports"],
            json!(["sidecar/v1/common.proto", "sidecar/v1/model.proto"]),
            "{target}"
        );
    }

    // The control socket: AdminService and ModelService, no inference.
    let control = format!("unix://{}", sc.store.path().join("control.sock").display());
    let out = ask(
        control,
        "sidecar.v1.AdminService",
        "sidecar/v1/admin.proto",
        &[
            "inference.GRPCInferenceService",
            "grpc.health.v1.Health",
            "sidecar.worker.v1.WorkerRequest",
        ],
    )
    .await;
    assert_eq!(out["v1alpha"]["services"], json!(CONTROL));
    assert_eq!(out["client"]["services"], json!(CONTROL));
    assert_eq!(
        out["client"]["imports"],
        json!([
            "sidecar/v1/common.proto",
            "sidecar/v1/lite.proto",
            "sidecar/v1/model.proto",
            "sidecar/v1/text.proto",
            "sidecar/v1/vision.proto"
        ])
    );
}

/// tonic's own reflection clients, both versions, over TCP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tonic_reflection_clients_list_the_api_port_in_v1_and_v1alpha() {
    let _serial = serial().await;
    let sc = Sidecar::start(store(), "");
    let channel = sc.channel().await;

    let mut c = v1::server_reflection_client::ServerReflectionClient::new(channel.clone());
    let req = v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(v1::server_reflection_request::MessageRequest::ListServices(
            "*".into(),
        )),
    };
    let mut answers = c
        .server_reflection_info(tokio_stream::iter([req]))
        .await
        .expect("v1")
        .into_inner();
    let Some(Ok(v1::ServerReflectionResponse {
        message_response:
            Some(v1::server_reflection_response::MessageResponse::ListServicesResponse(list)),
        ..
    })) = answers.next().await
    else {
        panic!("v1: no list of services");
    };
    let mut names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    names.sort();
    assert_eq!(names, API);

    let mut c = v1alpha::server_reflection_client::ServerReflectionClient::new(channel);
    let req = v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            v1alpha::server_reflection_request::MessageRequest::FileContainingSymbol(
                "sidecar.v1.AdminService".into(),
            ),
        ),
    };
    let mut answers = c
        .server_reflection_info(tokio_stream::iter([req]))
        .await
        .expect("v1alpha")
        .into_inner();
    // tonic's reflection ends the stream with the status.
    let Some(Err(e)) = answers.next().await else {
        panic!("v1alpha: AdminService is not resolved on the API port");
    };
    assert_eq!(
        (e.code(), e.message()),
        (
            tonic::Code::NotFound,
            "symbol 'sidecar.v1.AdminService' not found"
        )
    );
}
