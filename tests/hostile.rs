//! Hostile clients: model files uploaded with PutFile and then loaded,
//! and calls that choose their model ids and method paths. Each gets a
//! clear error with the right code; the supervisor keeps its pid, its
//! probes and its memory, and the other models serve.

use e2e::{Sidecar, greedy, serial, sha256_hex, smollm2_config, store, upload};
use sidecar_proto::v1::{
    GenerateRequest, GenerateResponse, GetModelRequest, LoadModelRequest, ModelFamily,
};
use tonic::Code;

fn header(kvs: u64) -> Vec<u8> {
    let mut f = b"GGUF".to_vec();
    f.extend(3u32.to_le_bytes());
    f.extend(0u64.to_le_bytes());
    f.extend(kvs.to_le_bytes());
    f
}

fn key(out: &mut Vec<u8>, key: &str, typ: u32) {
    out.extend((key.len() as u64).to_le_bytes());
    out.extend(key.as_bytes());
    out.extend(typ.to_le_bytes());
}

fn kv_u64(out: &mut Vec<u8>, k: &str, v: u64) {
    key(out, k, 10);
    out.extend(v.to_le_bytes());
}

/// A GGUF header whose `llama.*` keys are `shape`.
fn shaped(shape: &[(&str, u64)]) -> Vec<u8> {
    let mut f = header(1 + shape.len() as u64);
    key(&mut f, "general.architecture", 8);
    f.extend(5u64.to_le_bytes());
    f.extend(b"llama");
    for (k, v) in shape {
        kv_u64(&mut f, &format!("llama.{k}"), *v);
    }
    f
}

/// Uploads `data` as `path`, loads it as TEXT model `id`, and returns the
/// load's error.
async fn upload_and_load(sc: &Sidecar, path: &str, id: &str, data: &[u8]) -> tonic::Status {
    let mut models = sc.manage().await;
    let sha = sha256_hex(data);
    models
        .put_file(tokio_stream::iter(upload(path, data, &sha, false, None)))
        .await
        .expect("upload");
    let err = models
        .load_model(LoadModelRequest {
            model_id: id.into(),
            family: ModelFamily::Text as i32,
            path: path.into(),
            ..Default::default()
        })
        .await
        .expect_err("refused");
    let gone = models
        .get_model(GetModelRequest {
            model_id: id.into(),
        })
        .await
        .expect_err("a refused model is not kept");
    assert_eq!(gone.code(), Code::NotFound, "{gone:?}");
    err
}

/// The supervisor is the same process, its probes answer 200, the required
/// model serves, and its memory grew by less than 64 MiB.
async fn unharmed(sc: &Sidecar, pid: u32, rss_before: u64) {
    assert_eq!(sc.child.id(), pid);
    assert!(e2e::alive(pid), "the supervisor is alive");
    assert_eq!(sc.admin_get("/livez").0, 200);
    let (code, body) = sc.admin_get("/readyz");
    assert_eq!(code, 200, "{body}");
    sc.text()
        .await
        .generate(greedy("Hello", 2))
        .await
        .expect("the other model serves");
    let grown = e2e::status_bytes(pid, "VmRSS").saturating_sub(rss_before);
    assert!(
        grown < 64 << 20,
        "the supervisor's memory grew by {} MiB",
        grown >> 20
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gguf_of_arrays_nested_300_000_deep_is_refused_without_harm() {
    let _serial = serial().await;
    let sc = Sidecar::start(store(), &smollm2_config(""));
    sc.ready("smollm2").await;
    let pid = sc.child.id();
    let before = e2e::status_bytes(pid, "VmRSS");
    // The file that overflowed the supervisor's stack: 3.6 MB of arrays
    // nested 300 000 deep.
    let mut f = header(1);
    key(&mut f, "evil", 9);
    for _ in 0..300_000 {
        f.extend(9u32.to_le_bytes());
        f.extend(1u64.to_le_bytes());
    }
    f.extend(4u32.to_le_bytes());
    f.extend(0u64.to_le_bytes());
    assert!(f.len() > 3_500_000);
    let err = upload_and_load(&sc, "evil/nested.gguf", "nested", &f).await;
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(
        err.message()
            .contains("evil/nested.gguf: GGUF header: arrays nested deeper than 8"),
        "{}",
        err.message()
    );
    unharmed(&sc, pid, before).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gguf_sizes_that_overflow_the_admission_arithmetic_are_refused_with_the_figures() {
    let _serial = serial().await;
    let sc = Sidecar::start(store(), &smollm2_config(""));
    sc.ready("smollm2").await;
    let pid = sc.child.id();
    let before = e2e::status_bytes(pid, "VmRSS");
    // Values no model has: refused naming the key, the value and the limit.
    let impossible = shaped(&[
        ("block_count", u64::MAX),
        ("embedding_length", 1 << 62),
        ("attention.head_count", 1),
    ]);
    let err = upload_and_load(&sc, "evil/impossible.gguf", "impossible", &impossible).await;
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(
        err.message()
            .contains(&format!("llama.block_count {} exceeds 65536", u64::MAX)),
        "{}",
        err.message()
    );
    // Each value plausible, their product past any memory: the need
    // saturates (it never wraps to a small number) and admission refuses
    // it with the numbers.
    let huge = shaped(&[
        ("block_count", 1 << 16),
        ("embedding_length", 1 << 20),
        ("attention.head_count", 1),
        ("attention.head_count_kv", 1 << 16),
        ("context_length", 1 << 26),
    ]);
    let err = upload_and_load(&sc, "evil/huge.gguf", "huge", &huge).await;
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(
        err.message()
            .contains("needs 17592186044416.0 MiB of host memory"),
        "{}",
        err.message()
    );
    unharmed(&sc, pid, before).await;
}

/// `/metrics`, checked to be well-formed: no line a client wrote.
fn metrics(sc: &Sidecar) -> Vec<String> {
    let (code, body) = sc.admin_get("/metrics");
    assert_eq!(code, 200);
    body.lines().map(str::to_owned).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn made_up_model_ids_and_method_paths_add_no_series_and_no_lines() {
    let _serial = serial().await;
    let sc = Sidecar::start(store(), &smollm2_config(""));
    sc.ready("smollm2").await;
    let pid = sc.child.id();
    let before_rss = e2e::status_bytes(pid, "VmRSS");
    // The series alerts are written on exist before the first event.
    let fresh = metrics(&sc);
    for line in [
        "sidecar_worker_restarts_total{model=\"smollm2\",reason=\"crash\"} 0",
        "sidecar_rejected_total{model=\"smollm2\",reason=\"queue_full\"} 0",
    ] {
        assert!(fresh.iter().any(|l| l == line), "{line} missing");
    }
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", sc.api))
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    // One call of each kind first: the `unknown` series exist from here.
    let api = sc.api;
    let call = move |n: u32| {
        let channel = channel.clone();
        async move {
            if n.is_multiple_of(2) {
                // A model id of the client's choosing (one that tried to
                // write lines into /metrics among them).
                let model_id = if n == 0 {
                    "x\"} 1\nfake_metric 1\n#".to_owned()
                } else {
                    format!("made-up-{n}")
                };
                let err = sidecar_proto::v1::text_service_client::TextServiceClient::new(channel)
                    .generate(GenerateRequest {
                        model_id,
                        ..greedy("x", 1)
                    })
                    .await
                    .expect_err("no such model");
                assert_eq!(err.code(), Code::NotFound, "{err:?}");
            } else {
                // A method path of the client's choosing, each on a
                // connection of its own: the server answers an unknown
                // method before reading the body and resets the stream,
                // and a connection that piles up such resets is sent a
                // GOAWAY (`connections.max_error_resets`).
                let channel = tonic::transport::Channel::from_shared(format!("http://{api}"))
                    .expect("uri")
                    .connect()
                    .await
                    .expect("connect");
                let mut grpc = tonic::client::Grpc::new(channel);
                grpc.ready().await.expect("ready");
                let path = tonic::codegen::http::uri::PathAndQuery::try_from(format!(
                    "/sidecar.v1.TextService/Made{n}"
                ))
                .expect("path");
                let codec = tonic_prost::ProstCodec::<GenerateRequest, GenerateResponse>::default();
                let err = grpc
                    .unary(tonic::Request::new(greedy("x", 1)), path, codec)
                    .await
                    .expect_err("no such method");
                assert_eq!(err.code(), Code::Unimplemented, "{err:?}");
            }
        }
    };
    call(0).await;
    call(1).await;
    let warm = metrics(&sc);
    let mut tasks = Vec::new();
    for t in 0..8u32 {
        let call = call.clone();
        tasks.push(tokio::spawn(async move {
            for k in 0..1250u32 {
                call(2 + t * 1250 + k).await;
            }
        }));
    }
    for t in tasks {
        t.await.expect("calls");
    }
    let after = metrics(&sc);
    // 10 000 calls later: the same series (the same lines but for their
    // figures), none of them naming a made-up id or path, no injected line.
    let names = |lines: &[String]| -> Vec<String> {
        lines
            .iter()
            .map(|l| l.rsplit_once(' ').map_or(l.as_str(), |(k, _)| k).to_owned())
            .collect()
    };
    let (warm, after_names) = (names(&warm), names(&after));
    let new: Vec<&String> = after_names
        .iter()
        .filter(|n| !warm.contains(n))
        .take(5)
        .collect();
    assert!(
        warm == after_names,
        "the series changed: {} lines before, {} after; new ones: {new:?}",
        warm.len(),
        after_names.len()
    );
    assert!(!after.iter().any(|l| l.starts_with("fake_metric")));
    assert!(
        !after
            .iter()
            .any(|l| l.contains("made-up") || l.contains("Made"))
    );
    assert!(
        after.iter().any(|l| l.starts_with(
            "sidecar_requests_total{method=\"unknown\",model=\"\",code=\"UNIMPLEMENTED\",client=\"anonymous\",protocol=\"grpc\"} "
        )),
        "made-up paths count under method unknown"
    );
    assert!(
        after.iter().any(|l| l.starts_with(
            "sidecar_requests_total{method=\"TextService/Generate\",model=\"unknown\",code=\"NOT_FOUND\",client=\"anonymous\",protocol=\"grpc\"} "
        )),
        "made-up ids count under model unknown"
    );
    unharmed(&sc, pid, before_rss).await;
}
