//! The decisions of the API port's and the control socket's layer, on
//! requests built here (no network).

use std::path::PathBuf;

use tonic::Code;

use super::*;
use crate::config::Config;

fn config(tokens: Option<&str>, dir: &tempfile::TempDir) -> Config {
    let mut c = Config {
        control_socket: PathBuf::from("/run/sidecar/control.sock"),
        ..Config::default()
    };
    if let Some(text) = tokens {
        let path = dir.path().join("tokens");
        std::fs::write(&path, text).expect("write tokens");
        c.auth.tokens_file = Some(path);
    }
    c.auth.client_ids = vec!["web".into()];
    c
}

fn request(path: &str, headers: &[(&'static str, &str)]) -> http::Request<()> {
    let mut req = http::Request::builder().uri(format!("http://x{path}"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.body(()).expect("request")
}

fn code(d: &layer::Decision) -> Option<(Code, String)> {
    d.refusal.as_ref().map(|e| {
        let status = tonic::Status::from(match e {
            Error::Unauthenticated(m) => Error::Unauthenticated(m.clone()),
            Error::PermissionDenied(m) => Error::PermissionDenied(m.clone()),
            Error::Unimplemented(m) => Error::Unimplemented(m.clone()),
            other => Error::Internal(other.to_string()),
        });
        (status.code(), status.message().to_owned())
    })
}

const GENERATE: &str = "/sidecar.v1.TextService/Generate";
const LOAD: &str = "/sidecar.v1.ModelService/LoadModel";
const LIST: &str = "/sidecar.v1.ModelService/ListModels";

#[test]
fn tokens_authenticate_and_scopes_authorize() {
    let dir = tempfile::tempdir().expect("dir");
    let text = format!(
        "app infer {}\nreader read {}\nops manage {}\n",
        hash_line(b"s-app"),
        hash_line(b"s-read"),
        hash_line(b"s-ops")
    );
    let auth = Auth::new(&config(Some(&text), &dir)).expect("auth");
    let api =
        |path: &str, h: &[(&'static str, &str)]| auth.decide(&request(path, h), Listener::Api);

    for h in [
        vec![],
        vec![("authorization", "Bearer nope")],
        vec![("authorization", "Bearer ")],
        vec![("authorization", "Basic s-app")],
        vec![("x-client-id", "web")],
    ] {
        let d = api(GENERATE, &h);
        assert_eq!(d.identity, Identity::Anonymous);
        let (c, m) = code(&d).expect("refused");
        assert_eq!(
            (c, m.as_str()),
            (Code::Unauthenticated, UNAUTHENTICATED),
            "{h:?}"
        );
        assert!(!m.contains("nope") && !m.contains("s-app"));
    }
    let ok = api(GENERATE, &[("authorization", "bearer s-app")]);
    assert_eq!((ok.identity.to_string(), code(&ok)), ("app".into(), None));
    let (c, m) = code(&api(LOAD, &[("authorization", "Bearer s-app")])).expect("refused");
    assert_eq!(c, Code::PermissionDenied);
    assert_eq!(
        m,
        "token \"app\" may not call ModelService/LoadModel: it needs the scope \"manage\" and has \"infer\""
    );
    assert_eq!(
        code(&api(LIST, &[("authorization", "Bearer s-read")])),
        None
    );
    let (c, m) = code(&api(GENERATE, &[("authorization", "Bearer s-read")])).expect("refused");
    assert!(
        c == Code::PermissionDenied
            && m.contains("\"infer\"")
            && m.contains("TextService/Generate"),
        "{m}"
    );
    assert_eq!(code(&api(LOAD, &[("authorization", "Bearer s-ops")])), None);
    // Unknown paths reach no service, whoever calls.
    let (c, _) = code(&api(
        "/sidecar.v1.AdminService/RestartWorker",
        &[("authorization", "Bearer s-ops")],
    ))
    .expect("refused");
    assert_eq!(c, Code::Unimplemented);
    // The control socket allows everything.
    let d = auth.decide(&request(LOAD, &[]), Listener::Control);
    assert_eq!(code(&d), None);
}

#[test]
fn without_tokens_manage_is_refused_naming_the_control_socket() {
    let dir = tempfile::tempdir().expect("dir");
    let auth = Auth::new(&config(None, &dir)).expect("auth");
    let api =
        |path: &str, h: &[(&'static str, &str)]| auth.decide(&request(path, h), Listener::Api);
    assert_eq!(code(&api(GENERATE, &[])), None);
    assert_eq!(code(&api(LIST, &[])), None);
    // A token is ignored without a tokens file.
    assert_eq!(
        code(&api(GENERATE, &[("authorization", "Bearer whatever")])),
        None
    );
    for (path, method, hint) in [
        (LOAD, "LoadModel", "sidecarctl load"),
        (
            "/sidecar.v1.ModelService/UnloadModel",
            "UnloadModel",
            "sidecarctl unload",
        ),
        (
            "/sidecar.v1.ModelService/PutFile",
            "PutFile",
            "ModelService client",
        ),
        (
            "/sidecar.v1.ModelService/DeleteFile",
            "DeleteFile",
            "ModelService client",
        ),
    ] {
        let (c, m) = code(&api(path, &[])).expect("refused");
        assert_eq!(c, Code::PermissionDenied);
        assert!(
            m.starts_with(&format!(
                "{method} is refused on the network API without [auth] tokens_file; use the control socket /run/sidecar/control.sock ("
            )) && m.contains(hint)
                && m.ends_with("or configure tokens"),
            "{m}"
        );
    }
    assert_eq!(
        api(GENERATE, &[("x-client-id", "web")]).identity,
        Identity::Client("web".into())
    );
    assert_eq!(
        api(GENERATE, &[("x-client-id", "evil")]).identity,
        Identity::Anonymous
    );
    assert_eq!(
        code(&auth.decide(&request(LOAD, &[]), Listener::Control)),
        None
    );
}

#[tokio::test]
async fn a_unix_peer_is_known_by_its_uid() {
    let (a, _b) = tokio::net::UnixStream::pair().expect("pair");
    let cred = a.peer_cred().expect("peer cred");
    let dir = tempfile::tempdir().expect("dir");
    let with_tokens = Auth::new(&config(
        Some(&format!("app infer {}\n", hash_line(b"k"))),
        &dir,
    ))
    .expect("auth");
    let mut req = request(GENERATE, &[("x-client-id", "web")]);
    req.extensions_mut()
        .insert(tonic::transport::server::UdsConnectInfo {
            peer_addr: None,
            peer_cred: Some(cred),
        });
    let d = with_tokens.decide(&req, Listener::Api);
    assert_eq!(
        (d.identity.clone(), code(&d)),
        (Identity::Uid(cred.uid()), None)
    );
    // A token still wins over the uid.
    req.headers_mut()
        .insert("authorization", "Bearer k".parse().expect("value"));
    assert_eq!(
        with_tokens.decide(&req, Listener::Api).identity,
        Identity::Token("app".into())
    );
    let d = with_tokens.decide(&req, Listener::Control);
    assert_eq!(d.identity, Identity::Uid(cred.uid()));
}

#[test]
fn a_bad_tokens_file_stops_the_start_naming_its_line() {
    let dir = tempfile::tempdir().expect("dir");
    let text = format!(
        "# ops\napp infer {}\napp2 infer sha256:00\n",
        hash_line(b"k")
    );
    let err = Auth::new(&config(Some(&text), &dir))
        .expect_err("bad")
        .to_string();
    assert!(
        err.starts_with("config: auth.tokens_file ")
            && err.contains("tokens line 3: token \"app2\": the hash must be"),
        "{err}"
    );
}

#[tokio::test]
async fn a_changed_file_is_read_again_and_a_bad_one_keeps_the_old_tokens() {
    let dir = tempfile::tempdir().expect("dir");
    let mut c = config(Some(&format!("app infer {}\n", hash_line(b"old"))), &dir);
    c.auth.reload_interval = std::time::Duration::from_millis(100);
    let path = c.auth.tokens_file.clone().expect("path");
    let auth = std::sync::Arc::new(Auth::new(&c).expect("auth"));
    tokio::spawn(auth.clone().watch());
    let wait_for = |secret: &'static [u8], want: bool| {
        let auth = auth.clone();
        async move {
            let start = std::time::Instant::now();
            while auth.tokens().find(secret).is_some() != want {
                assert!(
                    start.elapsed() < std::time::Duration::from_secs(5),
                    "{secret:?} {want}"
                );
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        }
    };
    wait_for(b"old", true).await;
    std::fs::write(&path, format!("app infer {}\n", hash_line(b"new"))).expect("rotate");
    wait_for(b"new", true).await;
    wait_for(b"old", false).await;
    std::fs::write(&path, "app infer sha256:garbage\n").expect("garbage");
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    assert!(auth.tokens().find(b"new").is_some(), "the old tokens stay");
}
