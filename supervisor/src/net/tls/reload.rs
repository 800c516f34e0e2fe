//! Certificate rotation without a restart: the files' stamps (inode,
//! size, modification and change times, after symlinks, so a Kubernetes
//! Secret's `..data` swap counts) are compared every
//! `tls.reload_interval`; a changed set that parses replaces the server
//! configuration, one that does not (a half-written file, a key that is
//! not the certificate's) is logged once and the previous one is served.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Weak;

use sha2::{Digest, Sha256};
use tokio::time::MissedTickBehavior;

use super::Acceptor;
use crate::config::Tls;

/// What identifies one version of a file; `None`: it cannot be read.
type Stamp = Option<(u64, u64, u64, i64, i64, i64, i64)>;

/// The stamps of every file of a `[tls]` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Stamps(Vec<Stamp>);

impl Stamps {
    pub(super) fn of(tls: &Tls) -> Stamps {
        Stamps(tls.files().into_iter().map(|(_, p)| stamp(p)).collect())
    }
}

fn stamp(path: &Path) -> Stamp {
    let m = std::fs::metadata(path).ok()?;
    Some((
        m.dev(),
        m.ino(),
        m.size(),
        m.mtime(),
        m.mtime_nsec(),
        m.ctime(),
        m.ctime_nsec(),
    ))
}

/// The SHA-256 of the first certificate of a PEM chain, 16 hex digits, for
/// logs ("which certificate is served"); "unreadable" when it is not one.
pub(super) fn fingerprint(cert: &Path) -> String {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let first = crate::config::small_file::read(cert, crate::config::MAX_PEM_BYTES)
        .ok()
        .and_then(|pem| CertificateDer::from_pem_slice(&pem).ok());
    match first.ok_or(()) {
        Ok(der) => Sha256::digest(der.as_ref())
            .iter()
            .take(8)
            .map(|b| format!("{b:02x}"))
            .collect(),
        Err(_) => "unreadable".into(),
    }
}

/// Checks the files every `reload_interval` until the acceptor is gone.
pub(super) async fn watch(acceptor: Weak<Acceptor>, mut seen: Stamps) {
    let Some(tls) = acceptor.upgrade().map(|a| a.tls.clone()) else {
        return;
    };
    let mut tick = tokio::time::interval(tls.reload_interval);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(acceptor) = acceptor.upgrade() else {
            return;
        };
        let now = {
            let tls = tls.clone();
            match tokio::task::spawn_blocking(move || Stamps::of(&tls)).await {
                Ok(now) => now,
                Err(_) => continue,
            }
        };
        if now == seen {
            continue;
        }
        // Whatever the outcome, this version is not read again: a file
        // still being written changes its stamp when it is finished.
        seen = now;
        let loaded = {
            let tls = tls.clone();
            tokio::task::spawn_blocking(move || {
                tls.server_config().map(|c| (c, fingerprint(&tls.cert)))
            })
            .await
        };
        match loaded {
            Ok(Ok((config, fingerprint))) => {
                acceptor.replace(config);
                tracing::info!(
                    cert = %tls.cert.display(),
                    %fingerprint,
                    "TLS certificate reloaded: new connections get it"
                );
            }
            Ok(Err(e)) => tracing::error!(
                "TLS files changed but cannot be used, still serving the previous certificate: {e}"
            ),
            Err(e) => tracing::error!("TLS reload: {e}"),
        }
    }
}
