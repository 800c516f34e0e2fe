//! The Open Inference Protocol (`inference.GRPCInferenceService`) driven
//! by the official Triton client (`tests/python/triton_client.py`,
//! tritonclient[grpc]) against the real sidecar and the real face
//! detector, over the TCP port and over the Unix socket: health, model
//! readiness, metadata equal to `LiteService.GetModelInfo`, inference
//! equal bit for bit to `LiteService.Infer` (raw and typed contents), and
//! each refusal with its code and a message naming the thing.

use e2e::{SMOLLM2, Sidecar, add_model, float_pattern, lite_config, serial, store};
use sidecar_proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use sidecar_proto::inference::{ModelMetadataRequest, ModelReadyRequest};
use sidecar_proto::v1::lite_service_client::LiteServiceClient;
use sidecar_proto::v1::{
    DType, GetModelInfoRequest, InferRequest, InferResponse, LiteModelInfo, ModelState, Tensor,
};
use tonic::Code;

const FACE: &str = "mediapipe/face_detection_short_range.tflite";
const MODEL: &str = "face-detector";

async fn python(args: Vec<String>) -> serde_json::Value {
    e2e::python_json("triton_client.py", args).await
}

/// `[{name, datatype, shape}]` of `LiteModelInfo` tensors, as the
/// protocol writes them.
fn tensors(list: &[sidecar_proto::v1::TensorInfo]) -> serde_json::Value {
    let datatype = |d: i32| match DType::try_from(d).expect("dtype") {
        DType::DtypeFloat32 => "FP32",
        DType::DtypeFloat16 => "FP16",
        DType::DtypeInt8 => "INT8",
        DType::DtypeUint8 => "UINT8",
        DType::DtypeInt16 => "INT16",
        DType::DtypeInt32 => "INT32",
        DType::DtypeInt64 => "INT64",
        DType::DtypeBool => "BOOL",
        DType::DtypeUnspecified => "?",
    };
    serde_json::Value::Array(
        list.iter()
            .map(|t| serde_json::json!({"name": t.name, "datatype": datatype(t.dtype), "shape": t.shape}))
            .collect(),
    )
}

/// Asserts what the script saw at `url` against LiteService's `info`
/// and `reference` answer; the raw outputs it wrote are in `out`.
fn check(
    url: &str,
    got: &serde_json::Value,
    info: &LiteModelInfo,
    reference: &InferResponse,
    out: &std::path::Path,
) {
    let ctx = format!("{url}: {got}");
    assert_eq!(got["live"], true, "{ctx}");
    assert_eq!(got["ready"], true, "{ctx}");
    assert_eq!(got["model_ready"], true, "{ctx}");
    assert_eq!(got["model_ready_v1"], true, "{ctx}");
    assert_eq!(got["model_ready_v2"], false, "{ctx}");
    assert_eq!(
        got["unknown_ready"], false,
        "Triton: an unknown model is not ready, no error: {ctx}"
    );
    assert_eq!(got["server"]["name"], "sidecar");
    assert_eq!(got["server"]["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(
        got["server"]["extensions"],
        serde_json::json!(["system_shared_memory"])
    );
    let meta = &got["metadata"];
    assert_eq!(meta["name"], MODEL);
    assert_eq!(meta["versions"], serde_json::json!(["1"]));
    assert_eq!(meta["platform"], "litert_tflite");
    assert_eq!(meta["inputs"], tensors(&info.inputs), "{ctx}");
    assert_eq!(meta["outputs"], tensors(&info.outputs), "{ctx}");

    let infer = &got["infer"];
    assert_eq!(infer["id"], "req-1");
    assert_eq!(infer["model_name"], MODEL);
    assert_eq!(infer["model_version"], "1");
    let outputs = infer["outputs"].as_array().expect("outputs");
    assert_eq!(outputs.len(), reference.outputs.len(), "{ctx}");
    assert!(!reference.outputs.is_empty());
    for (o, want) in outputs.iter().zip(&reference.outputs) {
        assert_eq!(o["name"], want.name.as_str(), "same order");
        assert_eq!(o["shape"], serde_json::json!(want.shape));
        assert_eq!(o["numpy_shape"], serde_json::json!(want.shape));
        assert_eq!(o["datatype"], "FP32");
        for kind in ["raw", "typed"] {
            let bytes = std::fs::read(out.join(format!("{kind}-{}", want.name)))
                .unwrap_or_else(|e| panic!("{kind} output {}: {e}", want.name));
            assert_eq!(bytes.len(), want.data.len(), "{kind} {}", want.name);
            assert!(
                bytes == want.data.as_ref(),
                "{url}: {kind} output {} differs from LiteService.Infer's",
                want.name
            );
        }
    }
    assert_eq!(
        got["one_output"],
        serde_json::json!([reference.outputs[0].name])
    );

    let e = &got["errors"];
    let expect = |case: &str, status: &str, words: &[&str]| {
        assert_eq!(e[case]["status"], status, "{case}: {}", e[case]);
        let msg = e[case]["message"].as_str().expect("message");
        for w in words {
            assert!(msg.contains(w), "{case}: {w:?} not in {msg:?}");
        }
    };
    let input = info.inputs[0].name.as_str();
    let quoted = format!("{input:?}");
    expect(
        "wrong_datatype",
        "StatusCode.INVALID_ARGUMENT",
        &[&quoted, "float32", "int32"],
    );
    expect(
        "wrong_shape",
        "StatusCode.INVALID_ARGUMENT",
        &[&quoted, "[1, 128, 128, 3]", "[1, 64, 64, 3]"],
    );
    expect(
        "unknown_input",
        "StatusCode.INVALID_ARGUMENT",
        &["\"nope\""],
    );
    expect(
        "unknown_model",
        "StatusCode.NOT_FOUND",
        &["\"no-such-model\""],
    );
    expect("version_2", "StatusCode.NOT_FOUND", &["\"2\"", MODEL]);
    expect(
        "metadata_unknown_model",
        "StatusCode.NOT_FOUND",
        &["\"no-such-model\""],
    );
    expect("metadata_version_2", "StatusCode.NOT_FOUND", &["\"2\""]);
    expect(
        "mixed_contents",
        "StatusCode.INVALID_ARGUMENT",
        &["raw_input_contents", "typed contents"],
    );
    expect(
        "shm_status",
        "StatusCode.NOT_FOUND",
        &["no-such-region", "not registered"],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_triton_client_works_over_tcp_and_the_unix_socket() {
    let _serial = serial().await;
    let store = store();
    add_model(&store, FACE);
    let socket_dir = tempfile::tempdir().expect("tempdir");
    let socket = socket_dir.path().join("api/api.sock");
    let config = format!(
        "[api_socket]\npath = \"{}\"\n{}[[models]]\nid = \"smollm2\"\nfamily = \"text\"\npath = \"{SMOLLM2}\"\n",
        socket.display(),
        lite_config(MODEL, FACE, "")
    );
    let sc = Sidecar::start(store, &config);
    let pid = sc.child.id();
    let worker = sc.ready(MODEL).await.worker_pid;
    // READY for TextService (and for /readyz), not for this protocol.
    sc.ready("smollm2").await;

    // The reference: LiteService over tonic, on the same input.
    let mut lite = LiteServiceClient::new(sc.channel().await).max_decoding_message_size(64 << 20);
    let info = lite
        .get_model_info(GetModelInfoRequest {
            model_id: MODEL.into(),
        })
        .await
        .expect("GetModelInfo")
        .into_inner();
    assert_eq!(info.inputs.len(), 1, "{info:?}");
    assert_eq!(info.inputs[0].shape, vec![1, 128, 128, 3]);
    let image = float_pattern(128 * 128 * 3);
    let reference = lite
        .infer(InferRequest {
            model_id: MODEL.into(),
            inputs: vec![Tensor {
                name: info.inputs[0].name.clone(),
                dtype: DType::DtypeFloat32 as i32,
                shape: vec![1, 128, 128, 3],
                data: image.clone().into(),
                shm: None,
            }],
            outputs: vec![],
            output_placements: vec![],
        })
        .await
        .expect("LiteService.Infer")
        .into_inner();
    let work = tempfile::tempdir().expect("tempdir");
    let input_file = work.path().join("input.f32");
    std::fs::write(&input_file, &image).expect("write input");

    for url in [sc.api.to_string(), format!("unix://{}", socket.display())] {
        let out = tempfile::tempdir_in(work.path()).expect("out dir");
        let got = python(vec![
            url.clone(),
            MODEL.into(),
            input_file.display().to_string(),
            out.path().display().to_string(),
        ])
        .await;
        check(&url, &got, &info, &reference, out.path());
    }

    // A TEXT model: FAILED_PRECONDITION naming the service to use, and
    // not ready here though READY for TextService (Triton: a model that
    // cannot infer is not ready).
    let mut oip = GrpcInferenceServiceClient::new(sc.channel().await);
    for version in ["", "1"] {
        let ready = oip
            .model_ready(ModelReadyRequest {
                name: "smollm2".into(),
                version: version.into(),
            })
            .await
            .expect("ModelReady")
            .into_inner()
            .ready;
        assert!(
            !ready,
            "a TEXT model is not ready for OIP (version {version:?})"
        );
    }
    let lite_ready = oip
        .model_ready(ModelReadyRequest {
            name: MODEL.into(),
            version: String::new(),
        })
        .await
        .expect("ModelReady")
        .into_inner()
        .ready;
    assert!(lite_ready, "the READY LITE model is ready");
    let err = oip
        .model_metadata(ModelMetadataRequest {
            name: "smollm2".into(),
            version: String::new(),
        })
        .await
        .expect_err("a TEXT model has no OIP metadata");
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(
        err.message().contains("TEXT model") && err.message().contains("TextService"),
        "{err:?}"
    );

    // Whole after every refusal: same supervisor, same worker.
    assert_eq!(sc.child.id(), pid);
    assert!(e2e::alive(pid));
    assert_eq!(sc.admin_get("/livez").0, 200);
    assert_eq!(
        sc.admin_get("/readyz").0,
        200,
        "{}",
        sc.admin_get("/readyz").1
    );
    let now = sc.model(MODEL).await;
    assert_eq!(now.state, ModelState::Ready as i32);
    assert_eq!(now.worker_pid, worker, "the worker survived every refusal");
    assert!(e2e::alive(worker));
}
