//! TLS on a real socket with certificates made here: the handshake, its
//! timeout freeing the place, the files' errors, and rotation.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::{CertificateDer, ServerName};
use rustls_pki_types::pem::PemObject;
use tokio::io::AsyncReadExt;
use tokio_stream::wrappers::TcpListenerStream;

use super::*;
use crate::config::MAX_PEM_BYTES;

/// A CA and a server certificate it signed for 127.0.0.1 and localhost.
struct Pki {
    ca_pem: String,
    cert_pem: String,
    key_pem: String,
    cert_der: Vec<u8>,
}

fn pki(name: &str) -> Pki {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, format!("{name} CA"));
    let ca = rcgen::CertifiedIssuer::self_signed(ca, ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params =
        rcgen::CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()]).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    let cert = params.signed_by(&key, &ca).unwrap();
    Pki {
        ca_pem: ca.pem(),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        cert_der: cert.der().to_vec(),
    }
}

fn write(dir: &Path, p: &Pki) -> Tls {
    std::fs::write(dir.join("tls.crt"), &p.cert_pem).unwrap();
    std::fs::write(dir.join("tls.key"), &p.key_pem).unwrap();
    tls_section(dir)
}

fn tls_section(dir: &Path) -> Tls {
    Tls {
        cert: dir.join("tls.crt"),
        key: dir.join("tls.key"),
        client_ca: None,
        reload_interval: Duration::from_millis(50),
        handshake_timeout: Duration::from_millis(300),
    }
}

/// The certificate the server presents to a new connection.
async fn served(addr: std::net::SocketAddr, ca_pem: &str) -> std::io::Result<Vec<u8>> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap())
        .unwrap();
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await?;
    let (_, session) = tls.get_ref();
    assert_eq!(session.alpn_protocol(), Some(&b"h2"[..]));
    Ok(session.peer_certificates().unwrap()[0].to_vec())
}

/// A listener with TLS whose accepted connections are kept open.
async fn serve(
    tls: &Tls,
    max_connections: usize,
) -> (
    std::net::SocketAddr,
    Arc<Acceptor>,
    tokio::task::JoinHandle<()>,
) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let acceptor = Acceptor::start(tls).unwrap();
    let c = Connections {
        max_connections,
        ..Connections::default()
    };
    let conns = incoming(TcpListenerStream::new(l), &c, "test", acceptor.clone());
    let task = tokio::spawn(async move {
        let mut conns = std::pin::pin!(conns);
        let mut held = Vec::new();
        while let Some(conn) = conns.next().await {
            held.push(conn);
        }
    });
    (addr, acceptor, task)
}

fn dir() -> (tempfile::TempDir, PathBuf) {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().to_path_buf();
    (d, p)
}

#[tokio::test]
async fn a_client_gets_the_certificate_and_a_silent_connection_loses_its_place() {
    let (_d, dir) = dir();
    let p = pki("one");
    let tls = write(&dir, &p);
    let (addr, _acceptor, task) = serve(&tls, 1).await;
    // A connection that sends nothing holds the only place...
    let mut silent = tokio::net::TcpStream::connect(addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let started = std::time::Instant::now();
    // ...until the handshake timeout closes it; then a client is served.
    let mut b = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(5), silent.read(&mut b))
        .await
        .expect("closed within 5 s")
        .unwrap_or(0);
    assert_eq!(n, 0, "the silent connection was closed");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(served(addr, &p.ca_pem).await.unwrap(), p.cert_der);
    task.abort();
}

#[tokio::test]
async fn a_rotated_certificate_is_served_to_new_connections_and_a_broken_one_is_not() {
    let (_d, dir) = dir();
    let first = pki("first");
    let tls = write(&dir, &first);
    let (addr, _acceptor, task) = serve(&tls, 16).await;
    assert_eq!(served(addr, &first.ca_pem).await.unwrap(), first.cert_der);

    let second = pki("second");
    write(&dir, &second);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        if served(addr, &second.ca_pem).await.ok() == Some(second.cert_der.clone()) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never rotated");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Half a certificate, then a key that is not the certificate's: the
    // second stays served.
    let half = &second.cert_pem[..second.cert_pem.len() / 2];
    std::fs::write(dir.join("tls.crt"), half).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(served(addr, &second.ca_pem).await.unwrap(), second.cert_der);
    std::fs::write(dir.join("tls.crt"), &second.cert_pem).unwrap();
    std::fs::write(dir.join("tls.key"), pki("third").key_pem).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(served(addr, &second.ca_pem).await.unwrap(), second.cert_der);
    task.abort();
}

#[test]
fn the_files_errors_name_the_file_and_never_quote_the_key() {
    let (_d, dir) = dir();
    let p = pki("x");
    let tls = write(&dir, &p);
    assert!(tls.server_config().is_ok());

    let missing = Tls {
        cert: dir.join("nope.crt"),
        ..tls.clone()
    };
    let e = missing.server_config().unwrap_err().to_string();
    assert!(
        e.contains("tls.cert") && e.contains("nope.crt") && e.contains("cannot read"),
        "{e}"
    );

    std::fs::write(dir.join("garbage.crt"), "hello\n").unwrap();
    let garbage = Tls {
        cert: dir.join("garbage.crt"),
        ..tls.clone()
    };
    let e = garbage.server_config().unwrap_err().to_string();
    assert!(
        e.contains("tls.cert") && e.contains("no CERTIFICATE block"),
        "{e}"
    );

    // A key whose base64 is broken: the message says so and quotes none of it.
    let body: String = p.key_pem.lines().nth(1).unwrap().to_owned();
    let broken = p.key_pem.replace(&body, &format!("{body}!!"));
    std::fs::write(dir.join("broken.key"), &broken).unwrap();
    let e = Tls {
        key: dir.join("broken.key"),
        ..tls.clone()
    }
    .server_config()
    .unwrap_err()
    .to_string();
    assert!(e.contains("tls.key") && e.contains("broken.key"), "{e}");
    assert!(!e.contains(&body[..16]), "the key is not quoted: {e}");

    std::fs::write(dir.join("other.key"), pki("y").key_pem).unwrap();
    let e = Tls {
        key: dir.join("other.key"),
        ..tls.clone()
    }
    .server_config()
    .unwrap_err()
    .to_string();
    assert!(e.contains("is not the key of the first certificate"), "{e}");

    std::fs::write(
        dir.join("big.crt"),
        vec![b'a'; (MAX_PEM_BYTES + 1) as usize],
    )
    .unwrap();
    let e = Tls {
        cert: dir.join("big.crt"),
        ..tls.clone()
    }
    .server_config()
    .unwrap_err()
    .to_string();
    assert!(e.contains("larger than 1048576 bytes"), "{e}");

    let e = Tls {
        client_ca: Some(dir.join("garbage.crt")),
        ..tls
    }
    .server_config()
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("tls.client_ca") && e.contains("garbage.crt"),
        "{e}"
    );
}
