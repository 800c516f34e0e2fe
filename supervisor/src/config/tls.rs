//! `[tls]`: the API port's certificate chain, private key and, for mutual
//! TLS, the CA bundle that signs the clients' certificates; and what those
//! files hold, read and checked as a rustls server configuration.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::sign::CertifiedKey;
use rustls::{InconsistentKeys, RootCertStore, ServerConfig};
use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;

use super::units::secs;
use crate::error::Error;

/// The largest PEM file read (a chain, a key or a CA bundle).
pub const MAX_PEM_BYTES: u64 = 1 << 20;

/// TLS on the API port (absent: plaintext).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Tls {
    /// PEM certificate chain, the server's own certificate first.
    pub cert: PathBuf,
    /// PEM private key of that certificate (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// PEM bundle of the CAs that sign client certificates. Set: every
    /// client must present a certificate one of them signed (mTLS).
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
    /// How often the files are checked for a change (mtime, size, inode);
    /// a changed set that parses is served to new connections.
    #[serde(default = "reload_interval", with = "secs")]
    pub reload_interval: Duration,
    /// A connection whose handshake has not finished this long after its
    /// TCP accept is closed.
    #[serde(default = "handshake_timeout", with = "secs")]
    pub handshake_timeout: Duration,
}

fn reload_interval() -> Duration {
    Duration::from_secs(5)
}

fn handshake_timeout() -> Duration {
    Duration::from_secs(10)
}

impl Tls {
    /// The files this section names, each with its key in the file.
    pub fn files(&self) -> Vec<(&'static str, &Path)> {
        let mut files = vec![
            ("tls.cert", self.cert.as_path()),
            ("tls.key", self.key.as_path()),
        ];
        if let Some(ca) = &self.client_ca {
            files.push(("tls.client_ca", ca.as_path()));
        }
        files
    }

    /// Checks the settings and that the files hold a usable certificate
    /// and key (and CA bundle).
    pub(super) fn validate(&self) -> Result<(), Error> {
        for (name, value) in [
            ("tls.reload_interval", self.reload_interval),
            ("tls.handshake_timeout", self.handshake_timeout),
        ] {
            if value.is_zero() {
                return Err(Error::Config(format!("{name} must be more than 0 s")));
            }
        }
        self.server_config().map(drop)
    }

    /// Reads the files and builds the server's configuration: TLS 1.3 and
    /// 1.2 only, ALPN `h2`, client certificates required when
    /// `client_ca` is set. Every error names the file and its key; none
    /// quotes the private key.
    pub fn server_config(&self) -> Result<ServerConfig, Error> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let chain = certificates("tls.cert", &self.cert)?;
        let key = private_key(&self.key)?;
        check_pair(&chain, &key, &self.cert, &self.key, &provider)?;
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| Error::Config(format!("tls: {e}")))?;
        let builder = match &self.client_ca {
            None => builder.with_no_client_auth(),
            Some(path) => {
                let mut roots = RootCertStore::empty();
                for (i, ca) in certificates("tls.client_ca", path)?.into_iter().enumerate() {
                    roots.add(ca).map_err(|e| {
                        Error::Config(format!(
                            "tls.client_ca {}: certificate {} is not a usable CA: {e}",
                            path.display(),
                            i + 1
                        ))
                    })?;
                }
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                        .build()
                        .map_err(|e| {
                            Error::Config(format!("tls.client_ca {}: {e}", path.display()))
                        })?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut config = builder.with_single_cert(chain, key).map_err(|e| {
            Error::Config(format!(
                "tls.key {} with tls.cert {}: {e}",
                self.key.display(),
                self.cert.display()
            ))
        })?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(config)
    }
}

/// The file `path` (key `name`), at most [`MAX_PEM_BYTES`].
fn read(name: &str, path: &Path) -> Result<Vec<u8>, Error> {
    super::small_file::read(path, MAX_PEM_BYTES).map_err(|e| {
        Error::Config(format!(
            "{name} {}: {e} (a PEM file holds at most {MAX_PEM_BYTES} bytes)",
            path.display()
        ))
    })
}

/// Every CERTIFICATE block of a PEM file; at least one.
fn certificates(name: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, Error> {
    let bytes = read(name, path)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            Error::Config(format!(
                "{name} {}: not a PEM certificate file: {}",
                path.display(),
                pem_problem(&e)
            ))
        })?;
    if certs.is_empty() {
        return Err(Error::Config(format!(
            "{name} {}: no CERTIFICATE block",
            path.display()
        )));
    }
    Ok(certs)
}

/// The private key of a PEM file. Its errors say what is wrong, never what
/// the file holds.
fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, Error> {
    let bytes = read("tls.key", path)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| {
        let what = match e {
            pem::Error::NoItemsFound => "no PRIVATE KEY block (PKCS#8, PKCS#1 or SEC1)",
            e => pem_problem(&e),
        };
        Error::Config(format!("tls.key {}: {what}", path.display()))
    })
}

/// What is wrong with a PEM file, in words that quote none of it.
fn pem_problem(e: &pem::Error) -> &'static str {
    match e {
        pem::Error::NoItemsFound => "no PEM block",
        pem::Error::MissingSectionEnd { .. } => "a PEM block without its END line (cut short?)",
        pem::Error::IllegalSectionStart { .. } => "a malformed BEGIN line",
        pem::Error::Base64Decode(_) => "a PEM block that is not valid base64",
        _ => "not readable as PEM",
    }
}

/// The key is one the provider can sign with, and it is the key of the
/// chain's first certificate.
fn check_pair(
    chain: &[CertificateDer<'static>],
    key: &PrivateKeyDer<'static>,
    cert_path: &Path,
    key_path: &Path,
    provider: &CryptoProvider,
) -> Result<(), Error> {
    let signing = provider
        .key_provider
        .load_private_key(key.clone_key())
        .map_err(|e| Error::Config(format!("tls.key {}: {e}", key_path.display())))?;
    match CertifiedKey::new(chain.to_vec(), signing).keys_match() {
        Ok(()) => Ok(()),
        Err(rustls::Error::InconsistentKeys(InconsistentKeys::KeyMismatch)) => {
            Err(Error::Config(format!(
                "tls.key {} is not the key of the first certificate in tls.cert {}",
                key_path.display(),
                cert_path.display()
            )))
        }
        Err(e) => Err(Error::Config(format!(
            "tls.cert {}: the first certificate: {e}",
            cert_path.display()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::super::Config;
    use super::*;

    #[test]
    fn the_section_has_defaults_and_refuses_unknown_keys() {
        let c: Config = toml::from_str("[tls]\ncert = \"a.crt\"\nkey = \"a.key\"\n").unwrap();
        let tls = c.tls.expect("a [tls] section");
        assert_eq!(
            (
                tls.reload_interval,
                tls.handshake_timeout,
                tls.client_ca.clone()
            ),
            (Duration::from_secs(5), Duration::from_secs(10), None)
        );
        let typo = "[tls]\ncert = \"a.crt\"\nkey = \"a.key\"\nclient_cert = \"ca.crt\"\n";
        let e = toml::from_str::<Config>(typo).unwrap_err().to_string();
        assert!(e.contains("client_cert"), "{e}");
        assert!(
            toml::from_str::<Config>("[tls]\ncert = \"a.crt\"\n").is_err(),
            "key is required"
        );
        let zero = Tls {
            handshake_timeout: Duration::ZERO,
            ..tls
        };
        let e = zero.validate().unwrap_err().to_string();
        assert!(
            e.contains("tls.handshake_timeout must be more than 0 s"),
            "{e}"
        );
    }

    #[test]
    fn a_public_api_with_tls_but_no_client_certificates_is_still_open() {
        let mut c = Config {
            listen: "0.0.0.0:50051".parse().unwrap(),
            ..Config::default()
        };
        let plain = c.exposure().expect("a warning");
        assert!(plain.contains("without TLS or tokens"), "{plain}");
        let tls = Tls {
            cert: "a.crt".into(),
            key: "a.key".into(),
            client_ca: None,
            reload_interval: reload_interval(),
            handshake_timeout: handshake_timeout(),
        };
        c.tls = Some(tls.clone());
        let w = c.exposure().expect("TLS alone does not authenticate");
        assert!(
            w.contains("THE API IS OPEN")
                && w.contains("with TLS but without client certificates")
                && w.contains("tls.client_ca"),
            "{w}"
        );
        c.tls = Some(Tls {
            client_ca: Some("ca.crt".into()),
            ..tls
        });
        assert_eq!(c.exposure(), None, "mTLS tells callers apart");
    }
}
