//! TLS on the API port, end to end: a test CA made here (rcgen), the real
//! sidecar with SmolLM2, the tonic and the Python grpcio clients, mutual
//! TLS, a certificate rotated on disk while the sidecar serves, and
//! clients that send nothing, garbage or a megabyte of noise before any
//! handshake. Every test checks afterwards that the supervisor is the same
//! process, its admin port (plain HTTP) answers `/livez` and `/readyz`, and
//! the next call succeeds.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use e2e::{Sidecar, greedy, root, serial, smollm2_config, status_bytes, store};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use sidecar_proto::v1::ListModelsRequest;
use sidecar_proto::v1::model_service_client::ModelServiceClient;
use sidecar_proto::v1::text_service_client::TextServiceClient;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

/// A certificate authority made for one test.
struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A certificate (PEM and DER) and its key (PEM).
struct Leaf {
    cert_pem: String,
    key_pem: String,
    der: Vec<u8>,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().expect("CA key");
        Ca {
            issuer: CertifiedIssuer::self_signed(params, key).expect("CA certificate"),
        }
    }

    fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// A certificate for 127.0.0.1 and localhost named `subject`
    /// (server and client use alike).
    fn leaf(&self, subject: &str, serial: u64) -> Leaf {
        let mut params =
            CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
                .expect("params");
        params.distinguished_name.push(DnType::CommonName, subject);
        params.serial_number = Some(serial.into());
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.issuer).expect("sign");
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().to_vec(),
        }
    }
}

/// Writes `data` to `path` as cert-manager's volume does: whole, by a
/// rename.
fn replace(path: &Path, data: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, data).expect("write");
    std::fs::rename(&tmp, path).expect("rename");
}

/// The TLS files of one sidecar.
struct Files {
    _dir: tempfile::TempDir,
    cert: PathBuf,
    key: PathBuf,
    ca: PathBuf,
}

impl Files {
    fn new(server: &Leaf, ca: &Ca) -> Files {
        let dir = tempfile::tempdir().expect("tempdir");
        let files = Files {
            cert: dir.path().join("tls.crt"),
            key: dir.path().join("tls.key"),
            ca: dir.path().join("ca.crt"),
            _dir: dir,
        };
        std::fs::write(&files.cert, &server.cert_pem).expect("write");
        std::fs::write(&files.key, &server.key_pem).expect("write");
        std::fs::write(&files.ca, ca.pem()).expect("write");
        files
    }

    /// The `[tls]` section; `mtls`: clients need a certificate `ca` signed.
    fn section(&self, mtls: bool) -> String {
        let mut s = format!(
            "[tls]\ncert = \"{}\"\nkey = \"{}\"\nreload_interval = 0.1\nhandshake_timeout = 2\n",
            self.cert.display(),
            self.key.display()
        );
        if mtls {
            s.push_str(&format!("client_ca = \"{}\"\n", self.ca.display()));
        }
        s
    }
}

/// A sidecar with SmolLM2 behind TLS, ready.
async fn start(files: &Files, mtls: bool) -> Sidecar {
    // store() holds SmolLM2 already.
    let store = store();
    let sc = Sidecar::start(
        store,
        &format!("{}{}", files.section(mtls), smollm2_config("")),
    );
    // The API needs TLS: readiness comes from the plain admin port.
    let start = Instant::now();
    while sc.admin_get("/readyz").0 != 200 {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "not ready in 60 s: {:?}",
            sc.admin_get("/readyz")
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    sc
}

/// A tonic channel over TLS trusting `ca`, with a client certificate when
/// given.
async fn tonic_tls(
    api: SocketAddr,
    ca: &str,
    identity: Option<&Leaf>,
) -> Result<Channel, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .domain_name("localhost");
    if let Some(leaf) = identity {
        tls = tls.identity(Identity::from_pem(&leaf.cert_pem, &leaf.key_pem));
    }
    Channel::from_shared(format!("https://{api}"))
        .expect("uri")
        .tls_config(tls)?
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(60))
        .connect()
        .await
}

/// ListModels and a greedy Generate on `channel`.
async fn calls(channel: Channel) -> Result<String, tonic::Status> {
    let ids: Vec<String> = ModelServiceClient::new(channel.clone())
        .list_models(ListModelsRequest::default())
        .await?
        .into_inner()
        .models
        .into_iter()
        .map(|m| m.model_id)
        .collect();
    assert_eq!(ids, ["smollm2"]);
    let answer = TextServiceClient::new(channel)
        .generate(greedy("The capital of France is", 4))
        .await?
        .into_inner();
    assert!(answer.usage.expect("usage").completion_tokens > 0);
    Ok(answer.text)
}

/// Connects with `ca` (and `identity`) and makes the calls; the error's
/// text when the connection or a call fails.
async fn tonic_calls(api: SocketAddr, ca: &str, identity: Option<&Leaf>) -> Result<String, String> {
    let channel = tonic_tls(api, ca, identity)
        .await
        .map_err(|e| format!("connect: {e:?}"))?;
    // The status with its source: the TLS alert is in the source.
    calls(channel).await.map_err(|s| format!("{s:?}"))
}

/// The Python grpcio client (`tests/python/tls_client.py`): its stdout.
async fn python(
    api: SocketAddr,
    ca: &Path,
    expect: &str,
    identity: Option<(&Path, &Path)>,
) -> String {
    let python = root().join(".venv/bin/python");
    assert!(
        python.is_file(),
        "{} is missing: run scripts/setup.sh",
        python.display()
    );
    let out_dir = tempfile::tempdir().expect("tempdir");
    let mut cmd = Command::new(python);
    cmd.arg(root().join("tests/python/tls_client.py"))
        .arg(api.to_string())
        .arg(root().join("proto"))
        .arg(out_dir.path())
        .arg(ca)
        .arg(expect);
    if let Some((cert, key)) = identity {
        cmd.arg(cert).arg(key);
    }
    let out = tokio::task::spawn_blocking(move || cmd.output().expect("run python"))
        .await
        .expect("join");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "python client ({expect}) failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The certificate the API presents to a new connection (a raw rustls
/// client trusting `ca`).
async fn served_certificate(api: SocketAddr, ca: &str) -> std::io::Result<Vec<u8>> {
    use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject};
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca.as_bytes()).expect("CA PEM"))
        .expect("CA");
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(api).await?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").expect("name"), tcp)
        .await?;
    let (_, session) = tls.get_ref();
    assert_eq!(session.alpn_protocol(), Some(&b"h2"[..]), "ALPN h2");
    Ok(session.peer_certificates().expect("a certificate")[0].to_vec())
}

/// The supervisor is the same process, its admin port answers, and a new
/// TLS connection serves calls.
async fn still_serving(sc: &Sidecar, pid: u32, ca: &str, identity: Option<&Leaf>) {
    assert_eq!(sc.child.id(), pid);
    assert!(e2e::alive(pid), "the supervisor runs");
    for path in ["/livez", "/readyz"] {
        let (status, body) = sc.admin_get(path);
        assert_eq!(status, 200, "{path}: {body}");
    }
    let text = tonic_calls(sc.api, ca, identity)
        .await
        .expect("the next call succeeds");
    assert!(!text.is_empty());
}

/// Whether the server closed `s` within `within` (a read gets the end or
/// an error).
async fn closed_within(s: &mut tokio::net::TcpStream, within: Duration) -> bool {
    let mut b = [0u8; 4096];
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, s.read(&mut b)).await {
            Err(_) => return false,
            Ok(Ok(0) | Err(_)) => return true,
            // An alert: the close follows.
            Ok(Ok(_)) => continue,
        }
    }
}

fn random_bytes(n: usize) -> Vec<u8> {
    let mut b = vec![0u8; n];
    std::io::Read::read_exact(
        &mut std::fs::File::open("/dev/urandom").expect("urandom"),
        &mut b,
    )
    .expect("random");
    b
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tonic_and_grpcio_clients_call_over_tls_and_plaintext_is_refused() {
    let _serial = serial().await;
    let ca = Ca::new("e2e CA");
    let server = ca.leaf("sidecar", 1);
    let files = Files::new(&server, &ca);
    let sc = start(&files, false).await;
    let pid = sc.child.id();

    let text = tonic_calls(sc.api, &ca.pem(), None)
        .await
        .expect("tonic over TLS");
    assert!(!text.is_empty());
    assert_eq!(
        served_certificate(sc.api, &ca.pem())
            .await
            .expect("handshake"),
        server.der
    );
    let out = python(sc.api, &files.ca, "ok", None).await;
    assert!(
        out.contains("OK list ['smollm2']") && out.contains("OK generate"),
        "{out}"
    );

    // A client that trusts another CA refuses the server.
    let other = Ca::new("other CA");
    let e = tonic_calls(sc.api, &other.pem(), None)
        .await
        .expect_err("unknown issuer");
    assert!(
        e.contains("UnknownIssuer") || e.contains("invalid peer certificate"),
        "{e}"
    );

    // Plaintext HTTP/2 against the TLS port: refused, the server serves on.
    let plain = Channel::from_shared(format!("http://{}", sc.api))
        .expect("uri")
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(10));
    let started = Instant::now();
    let refused = match plain.connect().await {
        Err(e) => format!("connect: {e:?}"),
        Ok(ch) => {
            let s = ModelServiceClient::new(ch)
                .list_models(ListModelsRequest::default())
                .await
                .expect_err("a plaintext call is refused");
            // The server answers its first bytes with a TLS alert and
            // closes: the client reads the alert as a bad HTTP/2 frame, or
            // sees the close, a broken pipe or a connection dropped before
            // it was ready, as the timing falls.
            assert!(
                matches!(
                    s.code(),
                    tonic::Code::Unknown
                        | tonic::Code::Cancelled
                        | tonic::Code::Unavailable
                        | tonic::Code::Internal
                ),
                "{s:?}"
            );
            let s = format!("{s:?}");
            assert!(
                s.contains("tonic::transport::Error"),
                "a transport failure: {s}"
            );
            assert!(
                [
                    "connection closed",
                    "broken pipe",
                    "reset",
                    "FRAME_SIZE_ERROR",
                    "connection was not ready"
                ]
                .iter()
                .any(|w| s.contains(w)),
                "{s}"
            );
            s
        }
    };
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "refused at once: {:?}",
        started.elapsed()
    );
    eprintln!("plaintext client: {refused}");

    // The admin port stays plain HTTP, /metrics included.
    let (status, metrics) = sc.admin_get("/metrics");
    assert_eq!(status, 200);
    assert!(
        metrics.contains("sidecar_"),
        "{}",
        &metrics[..metrics.len().min(300)]
    );
    still_serving(&sc, pid, &ca.pem(), None).await;
}

/// `curl` against the HTTP API: its `-i` output (status line, headers,
/// body) and whether it succeeded.
async fn curl(args: Vec<String>) -> (bool, String) {
    let out = tokio::task::spawn_blocking(move || {
        Command::new("curl")
            .args(["-sS", "--max-time", "20", "-i"])
            .args(&args)
            .output()
            .expect("run curl")
    })
    .await
    .expect("join");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openai_api_is_served_over_tls_alone_with_http1_and_http2() {
    let _serial = serial().await;
    let ca = Ca::new("e2e CA");
    let server = ca.leaf("sidecar", 1);
    let files = Files::new(&server, &ca);
    let sc = start(&files, true).await;
    let pid = sc.child.id();
    let openai = sc.openai.expect("the HTTP API listens on TCP");
    let url = format!("https://{openai}/v1/models");
    let cacert = files.ca.display().to_string();
    let client = ca.leaf("app", 2);
    let dir = tempfile::tempdir().expect("dir");
    let (cert, key) = (dir.path().join("app.crt"), dir.path().join("app.key"));
    std::fs::write(&cert, &client.cert_pem).expect("write");
    std::fs::write(&key, &client.key_pem).expect("write");
    let with_cert = |extra: &[&str]| {
        let mut a: Vec<String> = vec![
            "--cacert".into(),
            cacert.clone(),
            "--cert".into(),
            cert.display().to_string(),
            "--key".into(),
            key.display().to_string(),
        ];
        a.extend(extra.iter().map(|s| s.to_string()));
        a.push(url.clone());
        a
    };

    // HTTP/1.1 and HTTP/2 (ALPN) over TLS, with a client certificate.
    for (flag, status) in [("--http1.1", "HTTP/1.1 200"), ("--http2", "HTTP/2 200")] {
        let (ok, out) = curl(with_cert(&[flag])).await;
        assert!(ok && out.starts_with(status), "{flag}: {out}");
        assert!(out.contains("\"smollm2\""), "{flag}: {out}");
    }
    // Without a client certificate (mutual TLS): no answer.
    let (ok, out) = curl(vec!["--cacert".into(), cacert.clone(), url.clone()]).await;
    assert!(!ok && !out.contains(" 200"), "{out}");
    // Plain HTTP on the TLS port: no answer either.
    let (ok, out) = curl(vec![format!("http://{openai}/v1/models")]).await;
    assert!(!ok || !out.contains(" 200"), "{out}");
    // A client trusting another CA refuses the server.
    let other = Ca::new("other CA");
    let other_pem = dir.path().join("other.pem");
    std::fs::write(&other_pem, other.pem()).expect("write");
    let (ok, out) = curl(vec![
        "--cacert".into(),
        other_pem.display().to_string(),
        url.clone(),
    ])
    .await;
    assert!(!ok && !out.contains(" 200"), "{out}");

    let (ok, out) = curl(with_cert(&[])).await;
    assert!(ok && out.contains(" 200"), "serves on: {out}");
    assert_eq!(sc.child.id(), pid);
    assert_eq!(sc.admin_get("/livez").0, 200);
    assert_eq!(sc.admin_get("/readyz").0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_mtls_only_clients_with_a_certificate_the_ca_signed_are_served() {
    let _serial = serial().await;
    let ca = Ca::new("e2e CA");
    let server = ca.leaf("sidecar", 1);
    let files = Files::new(&server, &ca);
    let sc = start(&files, true).await;
    let pid = sc.child.id();
    let client = ca.leaf("app", 2);
    let other_ca = Ca::new("rogue CA");
    let rogue = other_ca.leaf("app", 2);

    assert!(
        tonic_calls(sc.api, &ca.pem(), Some(&client)).await.is_ok(),
        "a good certificate"
    );
    let none = tonic_calls(sc.api, &ca.pem(), None)
        .await
        .expect_err("no certificate");
    let bad = tonic_calls(sc.api, &ca.pem(), Some(&rogue))
        .await
        .expect_err("another CA's certificate");
    eprintln!("no certificate: {none}\nrogue certificate: {bad}");
    // The server's alert names the reason; a client still writing when
    // the server closes sees a broken pipe or the close instead.
    let refused = |e: &str, alert: &str| {
        e.contains("tonic::transport::Error")
            && [alert, "broken pipe", "connection closed", "reset"]
                .iter()
                .any(|w| e.contains(w))
    };
    assert!(refused(&none, "CertificateRequired"), "{none}");
    assert!(refused(&bad, "UnknownCA"), "{bad}");

    let dir = tempfile::tempdir().expect("tempdir");
    let write = |name: &str, data: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, data).expect("write");
        p
    };
    let (cert, key) = (
        write("app.crt", &client.cert_pem),
        write("app.key", &client.key_pem),
    );
    let (rcert, rkey) = (
        write("rogue.crt", &rogue.cert_pem),
        write("rogue.key", &rogue.key_pem),
    );
    let out = python(sc.api, &files.ca, "ok", Some((&cert, &key))).await;
    assert!(
        out.contains("OK list ['smollm2']") && out.contains("OK generate"),
        "{out}"
    );
    let out = python(sc.api, &files.ca, "refused", None).await;
    assert!(out.contains("REFUSED UNAVAILABLE"), "{out}");
    let out = python(sc.api, &files.ca, "refused", Some((&rcert, &rkey))).await;
    assert!(out.contains("REFUSED UNAVAILABLE"), "{out}");
    still_serving(&sc, pid, &ca.pem(), Some(&client)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_certificate_is_served_to_new_connections_without_a_restart() {
    let _serial = serial().await;
    let first_ca = Ca::new("first CA");
    let first = first_ca.leaf("sidecar-1", 1);
    let files = Files::new(&first, &first_ca);
    let sc = start(&files, false).await;
    let pid = sc.child.id();
    assert_eq!(
        served_certificate(sc.api, &first_ca.pem())
            .await
            .expect("handshake"),
        first.der
    );

    // An HTTP/2 connection opened before the swap; it trusts only the
    // first CA, so a call that works after the swap went over it.
    let before = tonic_tls(sc.api, &first_ca.pem(), None)
        .await
        .expect("connect");
    calls(before.clone()).await.expect("a call before the swap");

    // The new certificate (another CA, subject and serial), as
    // cert-manager writes it.
    let second_ca = Ca::new("second CA");
    let second = second_ca.leaf("sidecar-2", 2);
    replace(&files.key, &second.key_pem);
    replace(&files.cert, &second.cert_pem);
    let swapped = Instant::now();
    loop {
        if let Ok(der) = served_certificate(sc.api, &second_ca.pem()).await {
            assert_eq!(der, second.der);
            break;
        }
        assert!(
            swapped.elapsed() < Duration::from_secs(10),
            "the new certificate is not served 10 s after the swap"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!(
        "new certificate served {:?} after the swap",
        swapped.elapsed()
    );
    let e = served_certificate(sc.api, &first_ca.pem())
        .await
        .expect_err("the old one is gone");
    assert!(e.to_string().contains("UnknownIssuer"), "{e}");
    let text = calls(before)
        .await
        .expect("the connection from before the swap still calls");
    assert!(!text.is_empty());
    still_serving(&sc, pid, &second_ca.pem(), None).await;

    // A half-written certificate, then a key that is not the
    // certificate's: the second certificate stays served.
    std::fs::write(&files.cert, &second.cert_pem[..second.cert_pem.len() / 2]).expect("write");
    let third = second_ca.leaf("sidecar-3", 3);
    // Several reload intervals (0.1 s) pass with each broken set.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        served_certificate(sc.api, &second_ca.pem())
            .await
            .expect("handshake"),
        second.der
    );
    replace(&files.cert, &third.cert_pem);
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        served_certificate(sc.api, &second_ca.pem())
            .await
            .expect("handshake"),
        second.der,
        "a certificate whose key is not on disk is not served"
    );
    // Its key arrives: it is served.
    replace(&files.key, &third.key_pem);
    let start = Instant::now();
    while served_certificate(sc.api, &second_ca.pem())
        .await
        .expect("handshake")
        != third.der
    {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the third is not served"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    still_serving(&sc, pid, &second_ca.pem(), None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_garbage_and_huge_first_packets_cost_a_bounded_time() {
    let _serial = serial().await;
    let ca = Ca::new("e2e CA");
    let server = ca.leaf("sidecar", 1);
    let files = Files::new(&server, &ca);
    let sc = start(&files, false).await;
    let pid = sc.child.id();
    let rss_before = status_bytes(pid, "VmRSS");

    // 200 connections that send nothing after the TCP connect.
    let mut silent = Vec::new();
    for _ in 0..200 {
        silent.push(
            tokio::net::TcpStream::connect(sc.api)
                .await
                .expect("connect"),
        );
    }
    let opened = Instant::now();
    // Meanwhile a normal client is served at once.
    let text = tonic_calls(sc.api, &ca.pem(), None)
        .await
        .expect("served beside 200 silent connections");
    assert!(!text.is_empty());
    assert!(
        opened.elapsed() < Duration::from_secs(2),
        "served before the silent ones timed out: {:?}",
        opened.elapsed()
    );
    // The handshake timeout (2 s) closes every one of them.
    for (i, s) in silent.iter_mut().enumerate() {
        let left = Duration::from_secs(6).saturating_sub(opened.elapsed());
        assert!(
            closed_within(s, left).await,
            "silent connection {i} still open {:?} after opening",
            opened.elapsed()
        );
    }
    let all_closed = opened.elapsed();
    assert!(
        all_closed >= Duration::from_millis(1500),
        "closed by the timeout, not before: {all_closed:?}"
    );
    eprintln!("200 silent connections closed {all_closed:?} after opening");
    drop(silent);

    // A record and a handshake header that announce a ClientHello of 508
    // bytes, then 508 random bytes: the whole message is there, so it is
    // refused as it is parsed, not by the timeout.
    let mut s = tokio::net::TcpStream::connect(sc.api)
        .await
        .expect("connect");
    let mut hello = vec![0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc];
    hello.extend(random_bytes(508));
    s.write_all(&hello).await.expect("write");
    let started = Instant::now();
    assert!(
        closed_within(&mut s, Duration::from_secs(5)).await,
        "a garbage ClientHello is closed"
    );
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "closed on the garbage, not by the timeout: {:?}",
        started.elapsed()
    );

    // A 1 MiB first packet of noise: closed on its first bytes.
    let mut s = tokio::net::TcpStream::connect(sc.api)
        .await
        .expect("connect");
    let mut noise = random_bytes(1 << 20);
    // Not a TLS record type: refused on the first byte whatever follows.
    noise[0] = 0xff;
    let started = Instant::now();
    // The server may close before all of it is written: a reset is fine.
    let _ = tokio::time::timeout(Duration::from_secs(5), s.write_all(&noise)).await;
    assert!(
        closed_within(&mut s, Duration::from_secs(5)).await,
        "1 MiB of noise is closed"
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );

    let rss_after = status_bytes(pid, "VmRSS");
    eprintln!(
        "supervisor VmRSS {} MiB -> {} MiB",
        rss_before >> 20,
        rss_after >> 20
    );
    assert!(
        rss_after < rss_before + (64 << 20),
        "the supervisor's memory grew by {} MiB",
        (rss_after.saturating_sub(rss_before)) >> 20
    );
    still_serving(&sc, pid, &ca.pem(), None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_files_that_cannot_be_used_stop_the_start_naming_the_file() {
    let _serial = serial().await;
    let ca = Ca::new("e2e CA");
    let server = ca.leaf("sidecar", 1);
    let other = ca.leaf("other", 2);
    let files = Files::new(&server, &ca);
    let dir = tempfile::tempdir().expect("tempdir");
    let cases = [
        (
            "mismatch",
            other.key_pem.clone(),
            server.cert_pem.clone(),
            "is not the key of the first certificate in tls.cert",
        ),
        (
            "garbage",
            server.key_pem.clone(),
            "-----BEGIN CERTIFICATE-----\nnot base64\n".to_owned(),
            "tls.cert",
        ),
    ];
    for (name, key, cert, expected) in cases {
        replace(&files.key, &key);
        replace(&files.cert, &cert);
        let config = dir.path().join(format!("{name}.toml"));
        std::fs::write(
            &config,
            format!(
                "listen = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\nmodel_store = \"{}\"\ncontrol_socket = \"{}\"\n{}",
                dir.path().display(),
                dir.path().join("control.sock").display(),
                files.section(false)
            ),
        )
        .expect("write");
        let out = Command::new(e2e::binary("sidecar"))
            .arg("--config")
            .arg(&config)
            .env("SIDECAR_LOG", "info")
            .output()
            .expect("run sidecar");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{name}: a config error: {stderr}"
        );
        assert!(stderr.contains(expected), "{name}: {stderr}");
        let named = if name == "mismatch" {
            &files.key
        } else {
            &files.cert
        };
        assert!(
            stderr.contains(&named.display().to_string()),
            "{name}: names the file: {stderr}"
        );
        assert!(
            !stderr.contains(key.lines().nth(1).expect("key body")),
            "the key is never logged"
        );
        assert!(
            String::from_utf8_lossy(&out.stdout).is_empty(),
            "never listened"
        );
    }
}
