//! The OpenAI-compatible HTTP API, driven by the official `openai` Python
//! client (`tests/python/openai_client.py`) against the real sidecar,
//! SmolLM2 and MiniLM: models, chat (unary, streamed, usage chunk,
//! JSON schema), completions, embeddings (float and base64, equal to the
//! gRPC Embed's), and each error as the client's own exception.

use std::time::Duration;

use e2e::{MINILM, Sidecar, add_model, minilm_config, serial, sha256_hex, smollm2_config, store};
use sidecar_proto::v1::{EmbedRequest, ModelState};

async fn python(args: Vec<String>) -> String {
    e2e::python_script("openai_client.py", args).await
}

/// The sidecar is whole at the end: same pid, probes 200, `model` not
/// FAILED.
async fn still_whole(sc: &Sidecar, pid: u32, model: &str) {
    assert_eq!(sc.child.id(), pid);
    assert!(e2e::alive(pid), "the supervisor is alive");
    assert_eq!(sc.admin_get("/livez").0, 200);
    assert_eq!(
        sc.admin_get("/readyz").0,
        200,
        "{}",
        sc.admin_get("/readyz").1
    );
    assert_eq!(sc.model(model).await.state, ModelState::Ready as i32);
}

/// A GGUF header and garbage: llama.cpp refuses it at every start.
fn corrupt_gguf() -> Vec<u8> {
    let mut bad = b"GGUF".to_vec();
    bad.extend(3u32.to_le_bytes());
    bad.extend(1u64.to_le_bytes());
    bad.extend(0u64.to_le_bytes());
    bad.extend((0..4096u32).map(|i| (i * 7919 % 251) as u8));
    bad
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openai_python_client_works_unchanged() {
    let _serial = serial().await;
    let store = store();
    add_model(&store, MINILM);
    std::fs::write(store.path().join("corrupt.gguf"), corrupt_gguf()).expect("write");
    let config = format!(
        "[workers]\nmax_restarts = 2\nbackoff_initial = 0.05\nbackoff_max = 0.2\n{}{}\n[[models]]\nid = \"broken\"\nfamily = \"text\"\npath = \"corrupt.gguf\"\nrequired = false\n",
        smollm2_config(""),
        minilm_config("")
    );
    let sc = Sidecar::start(store, &config);
    let pid = sc.child.id();
    sc.ready("smollm2").await;
    sc.ready("minilm").await;
    sc.eventually("broken", Duration::from_secs(60), |m| {
        m.state == ModelState::Failed as i32
    })
    .await;
    let openai = sc.openai.expect("the HTTP API listens on TCP");

    // What the gRPC API's Embed gives, for the client to compare.
    let inputs = ["hello world", "the cat sat on the mat", "sidecar"];
    let grpc = sc
        .text()
        .await
        .embed(EmbedRequest {
            model_id: "minilm".into(),
            inputs: inputs.iter().map(|s| (*s).to_owned()).collect(),
            ..Default::default()
        })
        .await
        .expect("gRPC embed")
        .into_inner();
    let vectors: Vec<&Vec<f32>> = grpc.embeddings.iter().map(|e| &e.values).collect();
    assert_eq!(vectors.len(), 3);
    let dir = tempfile::tempdir().expect("dir");
    let expected = dir.path().join("expected.json");
    std::fs::write(
        &expected,
        serde_json::to_vec(&serde_json::json!({"inputs": inputs, "vectors": vectors}))
            .expect("json"),
    )
    .expect("write expected");

    let out = python(vec![
        "basic".into(),
        format!("http://{openai}/v1"),
        expected.display().to_string(),
    ])
    .await;
    eprintln!("{out}");
    for line in [
        "OK models ['minilm', 'smollm2']",
        "OK chat unary",
        "OK chat stream",
        "OK chat stream without usage",
        "OK completions",
        "OK embeddings (3, 384)",
        "OK json_schema",
        "OK errors 400 404 503 504",
    ] {
        assert!(out.contains(line), "{line:?} missing from:\n{out}");
    }

    // The calls are in the same metric families, labelled protocol="http"
    // and by route name.
    let (code, metrics) = sc.admin_get("/metrics");
    assert_eq!(code, 200);
    let count = |needle: &str| -> f64 {
        metrics
            .lines()
            .filter(|l| l.starts_with(needle))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    let chat_ok = count(
        "sidecar_requests_total{method=\"openai/chat.completions\",model=\"smollm2\",code=\"OK\",client=\"anonymous\",protocol=\"http\"}",
    );
    assert!(chat_ok >= 4.0, "chat calls counted: {chat_ok}\n{metrics}");
    assert!(
        count(
            "sidecar_requests_total{method=\"openai/chat.completions\",model=\"unknown\",code=\"NOT_FOUND\",client=\"anonymous\",protocol=\"http\"}"
        ) >= 1.0,
        "{metrics}"
    );
    assert!(
        count(
            "sidecar_requests_total{method=\"openai/chat.completions\",model=\"smollm2\",code=\"DEADLINE_EXCEEDED\",client=\"anonymous\",protocol=\"http\"}"
        ) >= 1.0,
        "{metrics}"
    );
    assert!(
        count(
            "sidecar_requests_total{method=\"openai/embeddings\",model=\"minilm\",code=\"OK\",client=\"anonymous\",protocol=\"http\"}"
        ) >= 3.0,
        "{metrics}"
    );
    assert!(
        count(
            "sidecar_request_duration_seconds_count{method=\"openai/completions\",model=\"smollm2\",protocol=\"http\"}"
        ) >= 2.0,
        "{metrics}"
    );
    assert!(
        count(
            "sidecar_queue_wait_seconds_count{method=\"openai/completions\",model=\"smollm2\",protocol=\"http\"}"
        ) >= 1.0,
        "{metrics}"
    );
    assert!(
        count(
            "sidecar_requests_total{method=\"TextService/Embed\",model=\"minilm\",code=\"OK\",client=\"anonymous\",protocol=\"grpc\"}"
        ) >= 1.0,
        "{metrics}"
    );
    still_whole(&sc, pid, "smollm2").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_scopes_and_rate_limits_raise_the_clients_exceptions() {
    let _serial = serial().await;
    const APP: &str = "app-s3cret-openai-7f3a";
    const READER: &str = "reader-s3cret-openai-2b8e";
    let secrets = tempfile::tempdir().expect("tokens dir");
    let tokens = secrets.path().join("tokens");
    std::fs::write(
        &tokens,
        format!(
            "app infer sha256:{}\nreader read sha256:{}\n",
            sha256_hex(APP.as_bytes()),
            sha256_hex(READER.as_bytes())
        ),
    )
    .expect("write tokens");
    let config = format!(
        "[auth]\ntokens_file = \"{}\"\n[traffic.classes.app]\nmatch = [\"token:app\"]\nrate = 0.01\nburst = 30\n{}",
        tokens.display(),
        smollm2_config("")
    );
    let sc = Sidecar::start(store(), &config);
    let pid = sc.child.id();
    sc.ready("smollm2").await;
    let openai = sc.openai.expect("the HTTP API listens on TCP");
    let out = python(vec![
        "auth".into(),
        format!("http://{openai}/v1"),
        APP.into(),
        READER.into(),
    ])
    .await;
    eprintln!("{out}");
    assert!(out.contains("OK auth 401 403"), "{out}");
    assert!(out.contains("OK rate limit 429 after 2 calls"), "{out}");
    still_whole(&sc, pid, "smollm2").await;
}
