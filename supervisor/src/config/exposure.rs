//! Checks of a whole config that concern who can reach what: the warning
//! owed at start for an API other hosts reach, and the LiteRT runtime's
//! directory (which workers may read whole).

use std::path::Path;

use super::Config;
use crate::error::Error;

impl Config {
    /// Workers may read (and execute) everything under the directory of
    /// `lite_runtime` (Landlock grants it whole: LiteRT loads its delegates
    /// from there). Refuses a directory that is `/` or holds the model
    /// store, the tokens file or a TLS file.
    pub(super) fn check_runtime_dir(&self) -> Result<(), Error> {
        let abs = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
        let lib = abs(&self.lite_runtime);
        let Some(dir) = lib.parent() else {
            return Ok(());
        };
        let mut secrets: Vec<(&str, &Path)> = vec![("model_store", &self.model_store)];
        if let Some(t) = &self.auth.tokens_file {
            secrets.push(("auth.tokens_file", t));
        }
        if let Some(tls) = &self.tls {
            secrets.push(("tls.cert", &tls.cert));
            secrets.push(("tls.key", &tls.key));
            if let Some(ca) = &tls.client_ca {
                secrets.push(("tls.client_ca", ca));
            }
        }
        let held = if dir.parent().is_none() {
            Some("everything")
        } else {
            secrets
                .iter()
                .find(|(_, p)| abs(p).starts_with(dir))
                .map(|(key, _)| *key)
        };
        match held {
            None => Ok(()),
            Some(what) => Err(Error::Config(format!(
                "lite_runtime {}: workers may read everything in its directory {}, which holds \
                 {what}; put libLiteRt.so in a directory of its own",
                self.lite_runtime.display(),
                dir.display()
            ))),
        }
    }

    /// The warning owed at start when the API listens where other hosts
    /// can reach it (not loopback) with nothing to tell its callers apart:
    /// without a tokens file, anyone who reaches the port may run models
    /// and read the catalog (`manage` calls are refused on the network
    /// either way). TLS alone encrypts the traffic but does not tell
    /// callers apart; mutual TLS (`tls.client_ca`) does. Tokens without
    /// TLS on such an address get a warning of their own (the secrets
    /// travel in clear). `None` on loopback, under mTLS, with tokens and
    /// TLS, or when the operator accepted it
    /// (`insecure_public`).
    pub fn exposure(&self) -> Option<String> {
        self.exposure_at("API", self.listen)
    }

    /// [`Config::exposure`] for the listener `name` (`API`, `HTTP API`)
    /// bound at `addr`: both listeners take the same tokens and TLS.
    pub fn exposure_at(&self, name: &str, addr: std::net::SocketAddr) -> Option<String> {
        if addr.ip().is_loopback() || self.insecure_public {
            return None;
        }
        let tokens = self.auth.tokens_file.is_some();
        match (&self.tls, tokens) {
            (Some(tls), _) if tls.client_ca.is_some() => return None,
            (Some(_), true) => return None,
            (None, true) => {
                return Some(format!(
                    "THE {name}'S TOKENS TRAVEL IN CLEAR: it listens on {addr}, which other hosts can \
                     reach, with bearer tokens but without TLS: anyone on the path can read a \
                     secret and replay it. Configure [tls], listen on loopback, or pass \
                     --insecure-public (insecure_public = true) to accept this and silence this \
                     warning"
                ));
            }
            _ => {}
        }
        let transport = if self.tls.is_some() {
            "with TLS but without client certificates or tokens (TLS encrypts, it does not \
             authenticate: set tls.client_ca for mutual TLS)"
        } else {
            "without TLS or tokens"
        };
        Some(format!(
            "THE {name} IS OPEN: it listens on {addr}, which other hosts can reach, {transport}: \
             anyone who reaches it may run models and read the model catalog and store. \
             Listen on loopback (127.0.0.1) behind a proxy that authenticates, configure bearer \
             tokens ([auth] tokens_file) or mutual TLS (tls.client_ca), or pass \
             --insecure-public (insecure_public = true) to accept this and silence this warning"
        ))
    }
}
