//! Who may call what on the API port.
//!
//! One [`Auth`] per process (built in `app::run` from `[auth]`), one
//! [`AuthLayer`] per listener, in front of the services. For each call the
//! layer resolves the caller's [`Identity`] (token name, else the peer's
//! uid on a Unix socket, else an allowed `x-client-id` when there are no
//! tokens, else "anonymous"), puts it in the request's extensions, names it
//! to the metrics, and checks the method's [`Scope`] (the table in
//! [`scope`]; a path the table lacks reaches no service):
//!
//! - with a tokens file, a call without a known token is UNAUTHENTICATED,
//!   and a token without the method's scope PERMISSION_DENIED;
//! - without one, `infer` and `read` are open and every `manage` call is
//!   PERMISSION_DENIED, naming the control socket, where `sidecarctl` (or
//!   any ModelService client) does it;
//! - the control socket (owner-only directory) allows everything; its
//!   callers are known by their uid.
//!
//! The tokens file is re-read when it changes ([`Auth::watch`]); a file
//! that does not parse leaves the previous tokens in force. No secret is
//! kept (only SHA-256 digests) or logged.

mod identity;
mod layer;
mod reload;
pub mod scope;
pub mod tokens;

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use crate::config::Config;
use crate::error::Error;

pub use identity::{Bearer, Identity, MAX_AUTHORIZATION, bearer, client_id, peer_uid};
pub use layer::{AuthLayer, AuthService, Listener};
pub use scope::{Method, MethodScopes, Scope, Scopes};
pub use tokens::{Tokens, hash_line};

/// The message of every UNAUTHENTICATED answer. It never holds what the
/// caller sent.
pub const UNAUTHENTICATED: &str =
    "missing or unknown bearer token (metadata authorization: Bearer <token>)";

/// The process's authentication state: the tokens (swapped whole on a
/// reload), the allowed client ids, the method table.
#[derive(Debug)]
pub struct Auth {
    file: Option<PathBuf>,
    read_stamp: Option<reload::Stamp>,
    tokens: RwLock<Arc<Tokens>>,
    clients: Vec<Arc<str>>,
    methods: MethodScopes,
    control_socket: PathBuf,
    reload_interval: Duration,
}

impl Auth {
    /// Reads the tokens file, if one is configured. A file that cannot be
    /// read or parsed stops the start (`Error::Config` naming the file and
    /// the line).
    pub fn new(config: &Config) -> Result<Auth, Error> {
        let file = config.auth.tokens_file.clone();
        let read_stamp = file.as_deref().and_then(reload::stamp);
        let tokens = match &file {
            Some(path) => Tokens::read(path).map_err(Error::Config)?,
            None => Tokens::default(),
        };
        if let Some(path) = &file {
            tracing::info!(file = %path.display(), tokens = tokens.len(), "bearer tokens read");
        }
        Ok(Auth {
            file,
            read_stamp,
            tokens: RwLock::new(Arc::new(tokens)),
            clients: config
                .auth
                .client_ids
                .iter()
                .map(|c| Arc::from(c.as_str()))
                .collect(),
            methods: MethodScopes::default(),
            control_socket: config.control_socket.clone(),
            reload_interval: config.auth.reload_interval,
        })
    }

    /// Whether a tokens file is configured.
    pub fn has_tokens(&self) -> bool {
        self.file.is_some()
    }

    /// The tokens in force.
    pub fn tokens(&self) -> Arc<Tokens> {
        self.tokens
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn replace(&self, tokens: Tokens) {
        *self
            .tokens
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(tokens);
    }
}

#[cfg(test)]
mod tests;
