//! The Open Inference Protocol's system shared memory driven by the
//! official Triton client (`tests/python/triton_shm.py`:
//! `tritonclient.utils.shared_memory` regions, `register_system_shared_memory`,
//! `set_shared_memory` on inputs and outputs) against the real sidecar and
//! the real face detector, over the TCP port and the Unix socket: outputs
//! read back from a region equal `LiteService.Infer`'s bit for bit, a
//! region's new content is what the next call reads, and an unknown
//! region, a region too small, an offset past the end, an output region
//! too small, an object that shrank and a region unregistered between two
//! calls each get a clear error while the worker serves on.

use e2e::{Sidecar, add_model, float_pattern, lite_config, serial, store};
use sidecar_proto::v1::lite_service_client::LiteServiceClient;
use sidecar_proto::v1::{
    DType, GetModelInfoRequest, InferRequest, InferResponse, ModelState, Tensor,
};

const FACE: &str = "mediapipe/face_detection_short_range.tflite";
const MODEL: &str = "face-detector";

async fn python(args: Vec<String>) -> serde_json::Value {
    e2e::python_json("triton_shm.py", args).await
}

async fn infer(
    lite: &mut LiteServiceClient<tonic::transport::Channel>,
    input: &str,
    data: Vec<u8>,
) -> InferResponse {
    let mut req = tonic::Request::new(InferRequest {
        model_id: MODEL.into(),
        inputs: vec![Tensor {
            name: input.into(),
            dtype: DType::DtypeFloat32 as i32,
            shape: vec![1, 128, 128, 3],
            data: data.into(),
            shm: None,
        }],
        outputs: vec![],
        output_placements: vec![],
    });
    req.metadata_mut()
        .insert("cache-control", "no-cache".parse().expect("header"));
    lite.infer(req)
        .await
        .expect("LiteService.Infer")
        .into_inner()
}

/// Each output's bytes in `dir/<name><suffix>` equal `want`'s.
fn same_outputs(dir: &std::path::Path, suffix: &str, want: &InferResponse, ctx: &str) {
    assert!(!want.outputs.is_empty());
    for t in &want.outputs {
        let path = dir.join(format!("{}{suffix}", t.name));
        let got = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(
            got == t.data.as_ref(),
            "{ctx}: {} differs from LiteService.Infer ({} vs {} bytes)",
            path.display(),
            got.len(),
            t.data.len()
        );
    }
}

fn refused(got: &serde_json::Value, case: &str, status: &str, words: &[&str]) {
    let e = &got["errors"][case];
    assert_eq!(e["status"], status, "{case}: {e}");
    let message = e["message"].as_str().unwrap_or_default();
    for w in words {
        assert!(message.contains(w), "{case}: {message:?} lacks {w:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn triton_system_shared_memory_regions_feed_and_receive_tensors() {
    let _serial = serial().await;
    let store = store();
    add_model(&store, FACE);
    let socket_dir = tempfile::tempdir().expect("tempdir");
    let socket = socket_dir.path().join("api/api.sock");
    let config = format!(
        "[api_socket]\npath = \"{}\"\n{}",
        socket.display(),
        lite_config(MODEL, FACE, "")
    );
    let sc = Sidecar::start(store, &config);
    let pid = sc.child.id();
    let worker = sc.ready(MODEL).await.worker_pid;

    let mut lite = LiteServiceClient::new(sc.channel().await).max_decoding_message_size(64 << 20);
    let info = lite
        .get_model_info(GetModelInfoRequest {
            model_id: MODEL.into(),
        })
        .await
        .expect("GetModelInfo")
        .into_inner();
    let input = info.inputs[0].name.clone();
    let image = float_pattern(128 * 128 * 3);
    let reference = infer(&mut lite, &input, image.clone()).await;
    let zeros = infer(&mut lite, &input, vec![0; image.len()]).await;
    assert_ne!(reference.outputs, zeros.outputs, "two inputs, two answers");
    let work = tempfile::tempdir().expect("tempdir");
    let input_file = work.path().join("input.f32");
    std::fs::write(&input_file, &image).expect("write input");

    for (n, url) in [sc.api.to_string(), format!("unix://{}", socket.display())]
        .into_iter()
        .enumerate()
    {
        let out = tempfile::tempdir_in(work.path()).expect("out dir");
        let got = python(vec![
            url.clone(),
            MODEL.into(),
            input_file.display().to_string(),
            out.path().display().to_string(),
            format!("{}-{n}", std::process::id()),
        ])
        .await;
        let ctx = format!("{url}: {got}");
        let status = &got["status"];
        assert_eq!(status["input_data"]["byte_size"], image.len(), "{ctx}");
        assert_eq!(status["input_data"]["offset"], 0, "{ctx}");
        assert!(
            status["output_data"]["key"]
                .as_str()
                .unwrap_or_default()
                .ends_with("-out"),
            "{ctx}"
        );
        // Outputs written into the region come back without inline bytes:
        // one empty raw entry each, the shared-memory parameters echoed.
        let outs = got["shm_outputs"].as_array().expect("shm_outputs");
        assert_eq!(outs.len(), reference.outputs.len(), "{ctx}");
        for (o, want) in outs.iter().zip(&reference.outputs) {
            assert_eq!(o["name"], want.name.as_str(), "{ctx}");
            assert_eq!(o["shape"], serde_json::json!(want.shape), "{ctx}");
            assert!(
                o["params"]
                    .as_array()
                    .expect("params")
                    .iter()
                    .any(|p| p == "shared_memory_region"),
                "{ctx}"
            );
        }
        assert!(
            got["raw_output_contents"]
                .as_array()
                .expect("raw")
                .iter()
                .all(|n| n == 0),
            "{ctx}"
        );
        same_outputs(out.path(), ".shm.bin", &reference, &ctx);
        same_outputs(out.path(), ".mixed.bin", &reference, &ctx);
        same_outputs(out.path(), ".zeros.bin", &zeros, &ctx);
        same_outputs(out.path(), ".after_shrink.bin", &reference, &ctx);
        same_outputs(out.path(), ".again.bin", &reference, &ctx);

        refused(
            &got,
            "unknown_region",
            "StatusCode.NOT_FOUND",
            &["no-such-region", "not registered"],
        );
        refused(
            &got,
            "region_too_small",
            "StatusCode.INVALID_ARGUMENT",
            &["small"],
        );
        refused(
            &got,
            "offset_past_end",
            "StatusCode.INVALID_ARGUMENT",
            &["input_data"],
        );
        refused(
            &got,
            "output_region_too_small",
            "StatusCode.INVALID_ARGUMENT",
            &["output"],
        );
        refused(
            &got,
            "register_past_object",
            "StatusCode.INVALID_ARGUMENT",
            &["holds 196608 bytes", "196609"],
        );
        refused(
            &got,
            "object_shrank",
            "StatusCode.FAILED_PRECONDITION",
            &["shrank", "1024"],
        );
        refused(
            &got,
            "unregistered",
            "StatusCode.NOT_FOUND",
            &["input_data", "not registered"],
        );
        refused(
            &got,
            "status_unregistered",
            "StatusCode.NOT_FOUND",
            &["input_data"],
        );
        assert_eq!(got["status_after"], 0, "{ctx}");
    }

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
