//! The OpenAI API on the wire: the SSE framing byte for byte (`curl -N`),
//! a streamed chat whose client goes away after 5 chunks stops within one
//! decode step (the worker's token count, as the gRPC cut-stream test
//! counts it), and hostile requests answered in OpenAI's error shape
//! while the sidecar keeps serving.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use e2e::{Sidecar, serial, smollm2_config, store};
use serde_json::{Value, json};
use sidecar_proto::v1::{ChatMessage, ChatRequest, ModelState, SamplingParams};

/// One HTTP/1.1 exchange on a new connection: (status, headers in lower
/// case, body with any chunked encoding removed).
fn http(addr: SocketAddr, method: &str, path: &str, body: &[u8]) -> (u16, String, Vec<u8>) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(60)))
        .expect("timeout");
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).expect("write head");
    // A server may answer (413) before it read the whole body.
    let _ = s.write_all(body);
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    parse(&raw)
}

fn parse(raw: &[u8]) -> (u16, String, Vec<u8>) {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no header end in {:?}", String::from_utf8_lossy(raw)));
    let head = String::from_utf8_lossy(&raw[..split]).to_lowercase();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status");
    let mut body = raw[split + 4..].to_vec();
    if head.contains("transfer-encoding: chunked") {
        let mut out = Vec::new();
        let mut rest = &body[..];
        while let Some(eol) = rest.windows(2).position(|w| w == b"\r\n") {
            let size = usize::from_str_radix(std::str::from_utf8(&rest[..eol]).expect("size"), 16)
                .expect("hex size");
            if size == 0 {
                break;
            }
            out.extend_from_slice(&rest[eol + 2..eol + 2 + size]);
            rest = &rest[eol + 2 + size + 2..];
        }
        body = out;
    }
    (status, head, body)
}

/// An OpenAI error body: (message, type, param).
fn error(body: &[u8]) -> (String, String, Value) {
    let v: Value = serde_json::from_slice(body)
        .unwrap_or_else(|e| panic!("{e}: {:?}", String::from_utf8_lossy(body)));
    let e = &v["error"];
    (
        e["message"].as_str().expect("message").to_owned(),
        e["type"].as_str().expect("type").to_owned(),
        e["param"].clone(),
    )
}

async fn still_whole(sc: &Sidecar, pid: u32) {
    assert_eq!(sc.child.id(), pid);
    assert!(e2e::alive(pid), "the supervisor is alive");
    assert_eq!(sc.admin_get("/livez").0, 200);
    assert_eq!(sc.admin_get("/readyz").0, 200);
    assert_eq!(sc.model("smollm2").await.state, ModelState::Ready as i32);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_sees_openais_sse_framing_byte_for_byte() {
    let _serial = serial().await;
    let sc = Sidecar::start(store(), &smollm2_config(""));
    let pid = sc.child.id();
    sc.ready("smollm2").await;
    let openai = sc.openai.expect("HTTP API");
    let prompt = "Write one short sentence about the sea.";
    let body = json!({
        "model": "smollm2",
        "messages": [{"role": "user", "content": prompt}],
        "temperature": 0,
        "max_tokens": 12,
        "stream": true,
        "stream_options": {"include_usage": true},
    });
    let dir = tempfile::tempdir().expect("dir");
    let headers = dir.path().join("headers");
    let out = tokio::task::spawn_blocking({
        let headers = headers.clone();
        move || {
            Command::new("curl")
                .args(["-N", "-sS", "--max-time", "60", "-D"])
                .arg(&headers)
                .args([
                    "-H",
                    "Content-Type: application/json",
                    "-H",
                    "x-request-id: sse-1",
                ])
                .args(["-d", &body.to_string()])
                .arg(format!("http://{openai}/v1/chat/completions"))
                .output()
                .expect("run curl")
        }
    })
    .await
    .expect("join");
    assert!(out.status.success(), "{:?}", out);
    let head = std::fs::read_to_string(&headers)
        .expect("headers")
        .to_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(
        head.contains("content-type: text/event-stream\r\n"),
        "{head}"
    );
    assert!(head.contains("x-request-id: sse-1\r\n"), "{head}");
    let raw = String::from_utf8(out.stdout).expect("utf-8");

    // Events: `data: JSON` then a blank line, `data: [DONE]` last, nothing
    // else. Rebuilt from the parsed events, the bytes are the same.
    assert!(raw.ends_with("\n\ndata: [DONE]\n\n"), "{raw:?}");
    let events: Vec<&str> = raw.trim_end_matches("\n\n").split("\n\n").collect();
    let (done, chunks) = events.split_last().expect("events");
    assert_eq!(*done, "data: [DONE]");
    let parsed: Vec<Value> = chunks
        .iter()
        .map(|e| {
            let data = e.strip_prefix("data: ").unwrap_or_else(|| panic!("{e:?}"));
            assert!(!data.contains('\n'), "one line per event: {e:?}");
            serde_json::from_str(data).unwrap_or_else(|err| panic!("{err}: {data}"))
        })
        .collect();
    let rebuilt: String = parsed
        .iter()
        .map(|v| format!("data: {v}\n\n"))
        .chain(["data: [DONE]\n\n".to_owned()])
        .collect();
    assert_eq!(rebuilt, raw, "byte for byte");

    assert!(parsed.len() >= 4, "role, content, finish, usage: {raw}");
    for v in &parsed {
        assert_eq!(v["id"], "chatcmpl-sse-1");
        assert_eq!(v["object"], "chat.completion.chunk");
        assert_eq!(v["model"], "smollm2");
        assert_eq!(v["created"], parsed[0]["created"]);
        assert!(
            v["system_fingerprint"]
                .as_str()
                .is_some_and(|f| f.starts_with("sidecar-")),
            "{v}"
        );
    }
    assert_eq!(
        parsed[0]["choices"][0]["delta"],
        json!({"role": "assistant", "content": ""})
    );
    let usage = parsed.last().expect("usage chunk");
    assert_eq!(usage["choices"], json!([]));
    let finish = &parsed[parsed.len() - 2]["choices"][0];
    assert_eq!(finish["delta"], json!({}));
    assert!(
        ["stop", "length"].contains(&finish["finish_reason"].as_str().unwrap_or("")),
        "{finish}"
    );
    let content: String = parsed[1..parsed.len() - 2]
        .iter()
        .map(|v| {
            assert_eq!(v["choices"][0]["finish_reason"], Value::Null);
            v["choices"][0]["delta"]["content"]
                .as_str()
                .expect("content delta")
                .to_owned()
        })
        .collect();
    let completion = usage["usage"]["completion_tokens"].as_u64().expect("usage");
    assert!(completion > 0 && completion <= 12, "{usage}");
    assert_eq!(
        usage["usage"]["total_tokens"].as_u64(),
        Some(completion + usage["usage"]["prompt_tokens"].as_u64().expect("prompt"))
    );

    // The same chat over gRPC: the same text.
    let grpc = sc
        .text()
        .await
        .chat(ChatRequest {
            model_id: "smollm2".into(),
            messages: vec![ChatMessage {
                role: "user".into(),
                content: prompt.into(),
            }],
            sampling: Some(SamplingParams {
                temperature: Some(0.0),
                ..Default::default()
            }),
            max_tokens: 12,
            ..Default::default()
        })
        .await
        .expect("gRPC chat")
        .into_inner();
    assert_eq!(content, grpc.text);

    // The same listener speaks HTTP/2 without TLS (h2c, prior knowledge).
    let h2 = tokio::task::spawn_blocking(move || {
        Command::new("curl")
            .args(["-sS", "--max-time", "30", "-i", "--http2-prior-knowledge"])
            .arg(format!("http://{openai}/v1/models"))
            .output()
            .expect("run curl")
    })
    .await
    .expect("join");
    let text = String::from_utf8_lossy(&h2.stdout);
    assert!(text.starts_with("HTTP/2 200"), "{h2:?}");
    assert!(text.contains("\"smollm2\""), "{text}");
    still_whole(&sc, pid).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_gone_after_5_chunks_stops_generation_within_one_step() {
    let _serial = serial().await;
    let sc = Sidecar::start(store(), &smollm2_config(""));
    let pid = sc.child.id();
    sc.ready("smollm2").await;
    let openai = sc.openai.expect("HTTP API");
    let before = sc.model("smollm2").await.tokens_generated;
    let body = json!({
        "model": "smollm2",
        "messages": [{"role": "user", "content": "Count from 1 to 1000: 1, 2, 3, 4,"}],
        "temperature": 0,
        "max_tokens": 200,
        "ignore_eos": true,
        "stream": true,
    })
    .to_string();
    let seen = 5u64;
    tokio::task::spawn_blocking(move || {
        let mut s = TcpStream::connect(openai).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(60)))
            .expect("timeout");
        write!(
            s,
            "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .expect("write");
        // The role chunk, then 5 content chunks; then the client is gone.
        let mut raw = Vec::new();
        let mut buf = [0u8; 4096];
        while String::from_utf8_lossy(&raw).matches("data: ").count() < 1 + seen as usize {
            let n = s.read(&mut buf).expect("read");
            assert!(n > 0, "the stream ended early: {}", String::from_utf8_lossy(&raw));
            raw.extend_from_slice(&buf[..n]);
        }
        drop(s);
    })
    .await
    .expect("join");

    // The worker's own count of sampled tokens, once settled (heartbeats
    // report it every second): at most 20 s for it to stay put 1.5 s.
    let limit = Instant::now() + Duration::from_secs(20);
    let (mut last, mut since) = (u64::MAX, Instant::now());
    let generated = loop {
        let now = sc.model("smollm2").await.tokens_generated - before;
        if now != last {
            (last, since) = (now, Instant::now());
        } else if now >= seen && since.elapsed() >= Duration::from_millis(1500) {
            break now;
        }
        assert!(
            Instant::now() < limit,
            "the worker's token count did not settle: {now}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    eprintln!("{seen} chunks read, {generated} tokens generated");
    // As over gRPC: the token on its way when the client went away and
    // the step running when the cancel arrived, one more for a loaded
    // machine; without the cancel, 200.
    assert!(
        generated <= seen + 3,
        "{generated} tokens generated after the client read {seen} chunks and went away"
    );
    still_whole(&sc, pid).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_requests_get_openai_errors_and_the_sidecar_serves_on() {
    let _serial = serial().await;
    let config = format!(
        "[connections]\nidle_timeout = 1\n[openai]\naddress = \"127.0.0.1:0\"\nmax_body_bytes = \"1MiB\"\n{}",
        smollm2_config("")
    );
    let sc = Sidecar::start(store(), &config);
    let pid = sc.child.id();
    sc.ready("smollm2").await;
    let a = sc.openai.expect("HTTP API");
    let chat = "/v1/chat/completions";

    // Over the body limit: 413, declared or not.
    let big =
        json!({"model": "smollm2", "messages": [{"role": "user", "content": "x".repeat(2 << 20)}]})
            .to_string();
    let (status, head, body) = http(a, "POST", chat, big.as_bytes());
    assert_eq!(status, 413, "{}", String::from_utf8_lossy(&body));
    assert!(head.contains("x-request-id: "), "{head}");
    let (m, kind, _) = error(&body);
    assert!(
        m.contains("more than the limit of 1048576 (openai.max_body_bytes)"),
        "{m}"
    );
    assert_eq!(kind, "invalid_request_error");

    let bad: &[(&str, Value, &str, &str)] = &[
        (
            "10 000 messages",
            json!({"model": "smollm2", "messages": vec![json!({"role": "user", "content": "hi"}); 10_000]}),
            "messages has 10000 entries, must be 1..=1024",
            "messages",
        ),
        (
            "a huge stop list",
            json!({"model": "smollm2", "messages": [{"role": "user", "content": "hi"}], "stop": vec!["x"; 5000]}),
            "stop has 5000 strings, at most 16 are allowed",
            "stop",
        ),
        (
            "a wrong type",
            json!({"model": "smollm2", "messages": [{"role": "user", "content": "hi"}], "max_tokens": "ten"}),
            "max_tokens",
            "max_tokens",
        ),
        (
            "an image part",
            json!({"model": "smollm2", "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://x"}}]}]}),
            "messages[0].content[0].type \"image_url\" is not supported",
            "messages[0].content[0].type",
        ),
        (
            "tools",
            json!({"model": "smollm2", "messages": [{"role": "user", "content": "hi"}], "tools": [{"type": "function"}]}),
            "tools (tool calling) is not supported",
            "tools",
        ),
    ];
    for (what, v, says, param) in bad {
        let (status, _, body) = http(a, "POST", chat, v.to_string().as_bytes());
        assert_eq!(status, 400, "{what}: {}", String::from_utf8_lossy(&body));
        let (m, kind, p) = error(&body);
        assert!(m.contains(says), "{what}: {m}");
        assert!(m.contains("[request "), "{what}: the request line: {m}");
        assert_eq!(kind, "invalid_request_error", "{what}");
        assert_eq!(p, json!(param), "{what}");
    }
    for (what, raw, says) in [
        (
            "malformed JSON",
            "{\"model\": \"smollm2\", \"messages\": [".to_owned(),
            "malformed JSON in the request body: EOF while parsing",
        ),
        (
            "deeply nested JSON",
            format!(
                "{{\"model\":\"smollm2\",\"messages\":[],\"tools\":{}{}}}",
                "[".repeat(1000),
                "]".repeat(1000)
            ),
            "recursion limit exceeded",
        ),
        (
            // 300 000 values in 600 KB, within the byte limit: each would
            // take a `serde_json::Value` of tens of bytes.
            "many small values",
            format!(
                "{{\"model\":\"smollm2\",\"messages\":[],\"tools\":[{}0]}}",
                "0,".repeat(300_000)
            ),
            "JSON values or more, more than the limit of 65536",
        ),
        (
            "a model id of 1 MB",
            format!(
                "{{\"model\":\"{}\",\"messages\":[{{\"role\":\"user\",\"content\":\"hi\"}}]}}",
                "\\u0001".repeat(100_000)
            ),
            "no model has an id of 100000 bytes",
        ),
    ] {
        let (status, _, body) = http(a, "POST", chat, raw.as_bytes());
        let want = if says.starts_with("no model") {
            404
        } else {
            400
        };
        assert_eq!(status, want, "{what}: {}", String::from_utf8_lossy(&body));
        assert!(
            body.len() < 4096,
            "{what}: an answer of {} bytes",
            body.len()
        );
        let (m, _, _) = error(&body);
        assert!(m.contains(says), "{what}: {m}");
    }

    // A body that stops arriving: 408 once the connection's patience
    // (the smaller of idle_timeout and 30 s) is spent, instead of a
    // handler held for ever.
    let started = Instant::now();
    let mut slow = TcpStream::connect(a).expect("connect");
    slow.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    slow.write_all(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"model\": ",
    )
    .expect("write");
    let mut raw = Vec::new();
    let _ = slow.read_to_end(&mut raw);
    let (status, _, body) = parse(&raw);
    assert_eq!(status, 408, "{}", String::from_utf8_lossy(&body));
    let (m, _, p) = error(&body);
    assert!(m.contains("did not arrive within 1s"), "{m}");
    assert_eq!(p, json!("body"));
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );

    // A path parameter that is not UTF-8: 400 in the same shape.
    let (status, head, body) = http(a, "GET", "/v1/models/%FF", b"");
    assert_eq!(status, 400, "{}", String::from_utf8_lossy(&body));
    assert!(head.contains("content-type: application/json"), "{head}");
    let (m, _, p) = error(&body);
    assert!(m.contains("the model id in the path"), "{m}");
    assert_eq!(p, json!("model"));

    // A known route with the wrong method: 405 in the same shape.
    let (status, head, body) = http(a, "GET", chat, b"");
    assert_eq!(status, 405, "{}", String::from_utf8_lossy(&body));
    assert!(head.contains("content-type: application/json"), "{head}");
    let (m, kind, _) = error(&body);
    assert!(
        m.contains("wrong method for GET \"/v1/chat/completions\""),
        "{m}"
    );
    assert_eq!(kind, "invalid_request_error");

    // An unknown route: 404 in the same shape.
    let (status, head, body) = http(a, "GET", "/v1/nothing-here", b"");
    assert_eq!(status, 404);
    assert!(head.contains("content-type: application/json"), "{head}");
    assert!(head.contains("x-request-id: "), "{head}");
    let (m, _, _) = error(&body);
    assert!(m.contains("no route GET \"/v1/nothing-here\""), "{m}");
    let v: Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(
        v["error"]["code"], "unknown_url",
        "not a missing model: {v}"
    );

    // Slowloris: headers that never end; the connection is closed.
    let started = Instant::now();
    let mut slow = TcpStream::connect(a).expect("connect");
    slow.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    slow.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .expect("write");
    let mut rest = Vec::new();
    let closed = slow.read_to_end(&mut rest);
    assert!(
        closed.is_ok(),
        "closed by the server, not timed out: {closed:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "closed after {:?}",
        started.elapsed()
    );

    // And it serves on.
    let ok = json!({"model": "smollm2", "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 4, "temperature": 0});
    let (status, _, body) = http(a, "POST", chat, ok.to_string().as_bytes());
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let v: Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(v["object"], "chat.completion");
    still_whole(&sc, pid).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_serves_on_a_unix_socket_too() {
    let _serial = serial().await;
    let store = store();
    let socket = store.path().join("openai.sock");
    let config = format!(
        "[openai]\naddress = \"unix:{}\"\n{}",
        socket.display(),
        smollm2_config("preload = false")
    );
    let sc = Sidecar::start(store, &config);
    let pid = sc.child.id();
    assert_eq!(sc.openai, None, "not on TCP");
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&socket)
            .expect("socket")
            .permissions()
            .mode();
        assert_eq!(
            mode & 0o777,
            0o600,
            "only this uid reaches the socket: {mode:o}"
        );
    }
    let out = tokio::task::spawn_blocking(move || {
        Command::new("curl")
            .args(["-sS", "--max-time", "30", "-i", "--unix-socket"])
            .arg(&socket)
            .arg("http://localhost/v1/models")
            .output()
            .expect("run curl")
    })
    .await
    .expect("join");
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    let body = text.split("\r\n\r\n").nth(1).expect("body");
    let v: Value = serde_json::from_str(body).expect("json");
    assert_eq!(v["data"][0]["id"], "smollm2", "a lazy model is listed: {v}");
    assert_eq!(sc.child.id(), pid);
    assert_eq!(sc.admin_get("/livez").0, 200);
    assert_eq!(sc.admin_get("/readyz").0, 200);
}
