//! Who may call what on the API port, against the real sidecar with
//! SmolLM2: bearer tokens from a file (reloaded when it changes), the
//! scopes `infer`, `read` and `manage`, `manage` refused on the network
//! without tokens (the control socket does it), the caller's identity in
//! metrics and logs, and hostile credentials. No secret or hash ever shows
//! in the supervisor's output.

use std::time::{Duration, Instant};

use e2e::{SMOLLM2, Sidecar, greedy, serial, sha256_hex, smollm2_config, store, upload};
use sidecar_proto::v1::model_service_client::ModelServiceClient;
use sidecar_proto::v1::text_service_client::TextServiceClient;
use sidecar_proto::v1::{
    GenerateRequest, ListModelsRequest, LoadModelRequest, ModelFamily, ModelState, TokenizeRequest,
};
use tonic::Code;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;

const APP: &str = "app-s3cret-7f3a9c21";
const READER: &str = "reader-s3cret-2b8e44";
const OPS: &str = "ops-s3cret-c41d9e";
const ROTATED: &str = "app-rotated-9d2f6a";

/// A secret as the tokens file holds it (by `sha256sum`, not by the
/// supervisor's own code).
fn hash(secret: &str) -> String {
    format!("sha256:{}", sha256_hex(secret.as_bytes()))
}

fn tokens_text(app: &str) -> String {
    format!(
        "# name scopes hash\napp infer {}\n\nreader read {}\nops manage,read {}\n",
        hash(app),
        hash(READER),
        hash(OPS)
    )
}

/// A sidecar serving SmolLM2 whose `[auth]` section is `auth`, logging to
/// a file; the tokens file (outside the model store) is in the returned
/// folder.
fn start(tokens: Option<&str>, auth: &str) -> (Sidecar, tempfile::TempDir) {
    let secrets = tempfile::tempdir().expect("tokens dir");
    // No `[auth]` at all when there is nothing to say: the default.
    let mut section = String::new();
    if let Some(text) = tokens {
        let path = secrets.path().join("tokens");
        std::fs::write(&path, text).expect("write tokens");
        section = format!(
            "[auth]\nreload_interval = 0.2\ntokens_file = \"{}\"\n{auth}\n",
            path.display()
        );
    } else if !auth.is_empty() {
        section = format!("[auth]\n{auth}\n");
    }
    let sc = Sidecar::start_logged(store(), &format!("{section}{}", smollm2_config("")));
    (sc, secrets)
}

fn with_token<T>(msg: T, secret: &str) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    req.metadata_mut().insert(
        "authorization",
        format!("Bearer {secret}").parse().expect("metadata"),
    );
    req
}

fn with_header<T>(msg: T, key: &'static str, value: &[u8]) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    req.metadata_mut().insert(
        key,
        MetadataValue::try_from(value).expect("a header value the client sends"),
    );
    req
}

async fn text(sc: &Sidecar) -> TextServiceClient<Channel> {
    TextServiceClient::new(sc.channel().await)
}

async fn models(sc: &Sidecar) -> ModelServiceClient<Channel> {
    ModelServiceClient::new(sc.channel().await).max_encoding_message_size(64 << 20)
}

fn metrics(sc: &Sidecar) -> String {
    let (code, body) = sc.admin_get("/metrics");
    assert_eq!(code, 200);
    body
}

/// The distinct `client` values of `sidecar_requests_total`.
fn clients(sc: &Sidecar) -> std::collections::BTreeSet<String> {
    metrics(sc)
        .lines()
        .filter(|l| l.starts_with("sidecar_requests_total{"))
        .filter_map(|l| l.split("client=\"").nth(1)?.split('"').next())
        .map(str::to_owned)
        .collect()
}

/// The sum of `sidecar_requests_total` lines holding every part of `parts`.
fn requests(sc: &Sidecar, parts: &[&str]) -> u64 {
    metrics(sc)
        .lines()
        .filter(|l| l.starts_with("sidecar_requests_total{") && parts.iter().all(|p| l.contains(p)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// The supervisor is the same process, its probes answer 200, SmolLM2 is
/// READY, and a call with `secret` (or none) generates.
async fn still_serving(sc: &Sidecar, pid: u32, secret: Option<&str>) {
    assert_eq!(sc.child.id(), pid);
    assert!(e2e::alive(pid), "the supervisor is alive");
    assert_eq!(sc.admin_get("/livez").0, 200);
    assert_eq!(sc.admin_get("/readyz").0, 200);
    let req = match secret {
        Some(s) => with_token(greedy("Hello", 2), s),
        None => tonic::Request::new(greedy("Hello", 2)),
    };
    let out = text(sc).await.generate(req).await.expect("the next call");
    assert!(out.into_inner().usage.expect("usage").completion_tokens > 0);
}

/// No secret, no hash of a secret, ever reaches the supervisor's output.
fn no_secret_in(log: &str) {
    for secret in [APP, READER, OPS, ROTATED] {
        assert!(!log.contains(secret), "the log holds a secret");
        assert!(
            !log.contains(&sha256_hex(secret.as_bytes())),
            "the log holds a hash"
        );
    }
}

fn load(id: &str, path: &str) -> LoadModelRequest {
    LoadModelRequest {
        model_id: id.into(),
        family: ModelFamily::Text as i32,
        path: path.into(),
        options: Some(sidecar_proto::v1::load_model_request::Options::Text(
            sidecar_proto::v1::TextOptions {
                context_size: 512,
                threads: 1,
                ..Default::default()
            },
        )),
        ..Default::default()
    }
}

/// Acceptance: no token → UNAUTHENTICATED; an `infer` token generates but
/// LoadModel is PERMISSION_DENIED naming `manage`; a `read` token lists
/// but cannot generate; a `manage` token uploads and loads over TCP; the
/// metrics name the token; the log holds no secret.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_and_scopes_decide_every_call() {
    let _serial = serial().await;
    let (sc, _secrets) = start(Some(&tokens_text(APP)), "");
    sc.ready("smollm2").await;
    let pid = sc.child.id();

    for req in [
        tonic::Request::new(greedy("Hi", 2)),
        with_token(greedy("Hi", 2), "not-a-token"),
        with_header(greedy("Hi", 2), "authorization", b"Basic YXBwOnBhc3M="),
        with_header(greedy("Hi", 2), "x-client-id", b"app"),
    ] {
        let err = text(&sc).await.generate(req).await.expect_err("no token");
        assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
        assert!(
            err.message().starts_with(
                "missing or unknown bearer token (metadata authorization: Bearer <token>)"
            ),
            "{}",
            err.message()
        );
        assert!(!err.message().contains("not-a-token") && !err.message().contains("YXBw"));
    }

    // infer: Generate yes; LoadModel and ListModels no.
    let out = text(&sc)
        .await
        .generate(with_token(greedy("Hello", 3), APP))
        .await
        .expect("infer token generates");
    assert!(out.into_inner().usage.expect("usage").completion_tokens > 0);
    let err = models(&sc)
        .await
        .load_model(with_token(load("other", SMOLLM2), APP))
        .await
        .expect_err("infer cannot load");
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(
        err.message().starts_with(
            "token \"app\" may not call ModelService/LoadModel: it needs the scope \"manage\" and has \"infer\""
        ),
        "{}",
        err.message()
    );
    let err = models(&sc)
        .await
        .list_models(with_token(ListModelsRequest::default(), APP))
        .await
        .expect_err("infer cannot list");
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(
        err.message().contains("the scope \"read\""),
        "{}",
        err.message()
    );

    // read: ListModels yes; Generate no.
    let listed = models(&sc)
        .await
        .list_models(with_token(ListModelsRequest::default(), READER))
        .await
        .expect("read token lists")
        .into_inner();
    assert_eq!(listed.models.len(), 1);
    let err = text(&sc)
        .await
        .tokenize(with_token(
            TokenizeRequest {
                model_id: "smollm2".into(),
                text: "x".into(),
                ..Default::default()
            },
            READER,
        ))
        .await
        .expect_err("read cannot infer");
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(
        err.message().starts_with(
            "token \"reader\" may not call TextService/Tokenize: it needs the scope \"infer\""
        ),
        "{}",
        err.message()
    );

    // manage: upload SmolLM2 under a new name and load it, over TCP.
    let data = std::fs::read(sc.store.path().join(SMOLLM2)).expect("read the model");
    let sha = sha256_hex(&data);
    let put = models(&sc)
        .await
        .put_file(with_token(
            tokio_stream::iter(upload("uploaded/smol.gguf", &data, &sha, false, None)),
            OPS,
        ))
        .await
        .expect("manage token uploads")
        .into_inner();
    assert_eq!(put.file.expect("file").size_bytes, data.len() as u64);
    drop(data);
    let loaded = models(&sc)
        .await
        .load_model(with_token(load("uploaded", "uploaded/smol.gguf"), OPS))
        .await
        .expect("manage token loads")
        .into_inner()
        .model
        .expect("model");
    assert_eq!(loaded.state, ModelState::Ready as i32, "{loaded:?}");
    let out = text(&sc)
        .await
        .generate(with_token(
            GenerateRequest {
                model_id: "uploaded".into(),
                ..greedy("Hello", 2)
            },
            APP,
        ))
        .await
        .expect("the uploaded model serves");
    assert!(out.into_inner().usage.expect("usage").completion_tokens > 0);

    // The metrics tell the callers apart by token name.
    assert!(
        requests(
            &sc,
            &["TextService/Generate", "code=\"OK\"", "client=\"app\""]
        ) >= 2,
        "{}",
        metrics(&sc)
    );
    assert_eq!(
        requests(
            &sc,
            &[
                "TextService/Generate",
                "code=\"UNAUTHENTICATED\"",
                "client=\"anonymous\""
            ]
        ),
        4
    );
    assert_eq!(
        requests(
            &sc,
            &["ModelService/LoadModel", "code=\"OK\"", "client=\"ops\""]
        ),
        1
    );
    assert_eq!(
        requests(
            &sc,
            &[
                "ModelService/LoadModel",
                "code=\"PERMISSION_DENIED\"",
                "client=\"app\""
            ]
        ),
        1
    );
    still_serving(&sc, pid, Some(APP)).await;
    let log = sc.log_text();
    no_secret_in(&log);
    assert!(
        log.lines()
            .any(|l| l.contains("LoadModel") && l.contains("client=ops")),
        "the load is logged with its caller: {log}"
    );
}

/// Acceptance: without a tokens file, PutFile and LoadModel over TCP are
/// PERMISSION_DENIED naming the control socket and sidecarctl, and both
/// work over the control socket (the caller known by its uid); inference
/// and reads stay open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_tokens_manage_goes_through_the_control_socket() {
    let _serial = serial().await;
    let (sc, _secrets) = start(None, "");
    sc.ready("smollm2").await;
    let pid = sc.child.id();
    let socket = sc.store.path().join("control.sock");
    let data = b"a file the network may not write".to_vec();
    let sha = sha256_hex(&data);

    let err = models(&sc)
        .await
        .put_file(tokio_stream::iter(upload(
            "notes/a.bin",
            &data,
            &sha,
            false,
            None,
        )))
        .await
        .expect_err("no PutFile over TCP");
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(
        err.message().starts_with(&format!(
            "PutFile is refused on the network API without [auth] tokens_file; use the control socket {} (",
            socket.display()
        )) && err.message().contains("or configure tokens"),
        "{}",
        err.message()
    );
    assert!(
        !sc.store.path().join("notes/a.bin").exists(),
        "nothing written"
    );
    let err = models(&sc)
        .await
        .load_model(load("other", SMOLLM2))
        .await
        .expect_err("no LoadModel over TCP");
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(
        err.message().starts_with(&format!(
            "LoadModel is refused on the network API without [auth] tokens_file; use the control socket {} (sidecarctl load MODEL FAMILY PATH) or configure tokens",
            socket.display()
        )),
        "{}",
        err.message()
    );
    // A token changes nothing without a tokens file.
    let err = models(&sc)
        .await
        .load_model(with_token(load("other", SMOLLM2), OPS))
        .await
        .expect_err("no tokens, no manage");
    assert_eq!(err.code(), Code::PermissionDenied);

    // Reads and inference stay open.
    let listed = models(&sc)
        .await
        .list_models(ListModelsRequest::default())
        .await
        .expect("ListModels is open")
        .into_inner();
    assert_eq!(listed.models.len(), 1);

    // Both work over the control socket.
    let put = sc
        .manage()
        .await
        .put_file(tokio_stream::iter(upload(
            "notes/a.bin",
            &data,
            &sha,
            false,
            None,
        )))
        .await
        .expect("PutFile over the control socket")
        .into_inner();
    assert_eq!(put.file.expect("file").sha256, sha);
    let loaded = sc
        .manage()
        .await
        .load_model(load("other", SMOLLM2))
        .await
        .expect("LoadModel over the control socket")
        .into_inner()
        .model
        .expect("model");
    assert_eq!(loaded.state, ModelState::Ready as i32);
    // And what the message says works: sidecarctl.
    let (code, out, err) = sc.ctl(&["unload", "other"]);
    assert_eq!((code, out.trim()), (0, "unloaded other"), "{err}");
    let uid = nix::unistd::getuid().as_raw();
    let log = sc.log_text();
    assert!(
        log.lines()
            .any(|l| l.contains("LoadModel") && l.contains(&format!("client=uid:{uid}"))),
        "the control socket's caller is its uid: {log}"
    );
    assert!(
        log.lines().any(|l| l.contains("call refused")
            && l.contains("client=anonymous")
            && l.contains("PutFile")),
        "the refusal is logged with its caller: {log}"
    );
    still_serving(&sc, pid, None).await;
}

/// Acceptance: a rotated tokens file takes effect without a restart; a
/// file past the size cap or with a garbage line is refused with one error
/// naming the file (and line) and the tokens in force stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_tokens_file_takes_effect_without_a_restart() {
    let _serial = serial().await;
    let (sc, secrets) = start(Some(&tokens_text(APP)), "");
    sc.ready("smollm2").await;
    let pid = sc.child.id();
    let path = secrets.path().join("tokens");
    still_serving(&sc, pid, Some(APP)).await;

    // Rotate app's secret the way an operator (or a Secret volume) does:
    // a new file renamed over the old one.
    let next = secrets.path().join("tokens.new");
    std::fs::write(&next, tokens_text(ROTATED)).expect("write");
    std::fs::rename(&next, &path).expect("rename");
    let start = Instant::now();
    loop {
        let old = text(&sc)
            .await
            .generate(with_token(greedy("Hi", 1), APP))
            .await;
        if old
            .as_ref()
            .is_err_and(|e| e.code() == Code::Unauthenticated)
        {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "the old secret still works: {old:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("rotation took effect after {:?}", start.elapsed());
    still_serving(&sc, pid, Some(ROTATED)).await;

    // A 2 MiB line: over the cap; the rotated tokens stay.
    let mut huge = tokens_text(ROTATED).into_bytes();
    huge.extend(std::iter::repeat_n(b'x', 2 << 20));
    std::fs::write(&path, &huge).expect("write");
    let too_large = format!(
        "auth.tokens_file {}: is larger than 1048576 bytes",
        path.display()
    );
    wait_for_log(&sc, &too_large).await;
    // Garbage: a line that is not a token.
    std::fs::write(
        &path,
        format!("{}\n\u{1b}[31m garbage\n", tokens_text(ROTATED)),
    )
    .expect("write");
    let garbage = format!(
        "auth.tokens_file {} line 7: 2 fields, expected 3",
        path.display()
    );
    wait_for_log(&sc, &garbage).await;
    // Each change logged one error, and then nothing more.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let log = sc.log_text();
    assert_eq!(log.matches(&too_large).count(), 1, "{log}");
    assert_eq!(log.matches(&garbage).count(), 1, "{log}");
    assert!(
        !log.contains("garbage"),
        "the bad line's text is not logged"
    );
    still_serving(&sc, pid, Some(ROTATED)).await;
    let err = text(&sc)
        .await
        .generate(with_token(greedy("Hi", 1), APP))
        .await
        .expect_err("the old secret stays revoked");
    assert_eq!(err.code(), Code::Unauthenticated);
    no_secret_in(&sc.log_text());
}

async fn wait_for_log(sc: &Sidecar, what: &str) {
    let start = Instant::now();
    while !sc.log_text().contains(what) {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "no {what:?} in {}",
            sc.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Hostile credentials: a 64 KiB authorization header, an empty secret, a
/// non-ASCII one; each is refused, costs nothing, and the next call works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_credentials_are_refused_and_cost_nothing() {
    let _serial = serial().await;
    let (sc, _secrets) = start(Some(&tokens_text(APP)), "client_ids = [\"web\"]");
    sc.ready("smollm2").await;
    let pid = sc.child.id();
    let rss_before = e2e::status_bytes(pid, "VmRSS");

    let mut long = b"Bearer ".to_vec();
    long.extend(std::iter::repeat_n(b'a', 64 << 10));
    let err = text(&sc)
        .await
        .generate(with_header(greedy("Hi", 1), "authorization", &long))
        .await
        .expect_err("64 KiB header");
    // HTTP/2 itself refuses a header list this large (hyper: GOAWAY
    // ENHANCE_YOUR_CALM), before any service sees it.
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(
        format!("{err:?}").contains("header_list_way_too_large"),
        "{err:?}"
    );
    // 8 KiB passes HTTP/2 and is refused by the sidecar's own bound.
    let mut long = b"Bearer ".to_vec();
    long.extend(std::iter::repeat_n(b'a', 8 << 10));
    let err = text(&sc)
        .await
        .generate(with_header(greedy("Hi", 1), "authorization", &long))
        .await
        .expect_err("8 KiB header");
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    assert!(!err.message().contains("aaaa"), "{}", err.message());
    for value in [
        &b"Bearer "[..],
        b"Bearer",
        b"bearer  \t",
        "Bearer \u{e9}t\u{e9}".as_bytes(),
    ] {
        let req = with_header(greedy("Hi", 1), "authorization", value);
        let err = text(&sc).await.generate(req).await.expect_err("refused");
        assert_eq!(err.code(), Code::Unauthenticated, "{value:?}: {err:?}");
    }
    // The right secret after "bearer" in another case, with x-client-id
    // (ignored with tokens): the token's name.
    let mut req = with_header(
        greedy("Hi", 1),
        "authorization",
        format!("BEARER {APP}").as_bytes(),
    );
    req.metadata_mut()
        .insert("x-client-id", "web".parse().expect("value"));
    text(&sc)
        .await
        .generate(req)
        .await
        .expect("case-insensitive Bearer");
    assert_eq!(clients(&sc), ["anonymous", "app"].map(str::to_owned).into());
    still_serving(&sc, pid, Some(APP)).await;
    let rss_after = e2e::status_bytes(pid, "VmRSS");
    assert!(
        rss_after < rss_before + (32 << 20),
        "VmRSS {rss_before} → {rss_after}"
    );
    no_secret_in(&sc.log_text());
}

/// 10 000 distinct `x-client-id` values (no tokens; one allowed id) leave
/// the `client` label set at two values.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn made_up_client_ids_add_no_series() {
    let _serial = serial().await;
    let (sc, _secrets) = start(None, "client_ids = [\"web\"]");
    sc.ready("smollm2").await;
    let pid = sc.child.id();
    let channel = sc.channel().await;
    let mut tasks = Vec::new();
    for t in 0..8 {
        let channel = channel.clone();
        tasks.push(tokio::spawn(async move {
            let mut client = ModelServiceClient::new(channel);
            for i in (t..10_000).step_by(8) {
                let req = with_header(
                    ListModelsRequest::default(),
                    "x-client-id",
                    format!("client-{i}").as_bytes(),
                );
                client.list_models(req).await.expect("ListModels");
            }
        }));
    }
    for t in tasks {
        t.await.expect("join");
    }
    let req = with_header(ListModelsRequest::default(), "x-client-id", b"web");
    models(&sc).await.list_models(req).await.expect("web");
    assert_eq!(clients(&sc), ["anonymous", "web"].map(str::to_owned).into());
    assert_eq!(
        requests(&sc, &["ModelService/ListModels", "client=\"anonymous\""]),
        10_000
    );
    assert!(
        !sc.log_text().contains("client-9999"),
        "made-up ids are not logged"
    );
    still_serving(&sc, pid, None).await;
}

/// `sidecarctl hash-token` prints what the tokens file holds for a secret
/// read from stdin, and refuses what a client could not send.
#[test]
fn sidecarctl_hashes_a_secret_for_the_tokens_file() {
    use std::io::Write;
    let run = |input: &[u8]| {
        let mut child = std::process::Command::new(e2e::binary("sidecarctl"))
            .arg("hash-token")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("sidecarctl");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input)
            .expect("write");
        let out = child.wait_with_output().expect("output");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, out, _) = run(format!("{APP}\n").as_bytes());
    assert_eq!((code, out.trim()), (0, hash(APP).as_str()));
    for bad in [&b""[..], b"\n", b"two words\n", "caf\u{e9}\n".as_bytes()] {
        let (code, out, err) = run(bad);
        assert_eq!(code, 2, "{bad:?}");
        assert!(out.is_empty() && err.contains("hash-token"), "{err}");
    }
}
