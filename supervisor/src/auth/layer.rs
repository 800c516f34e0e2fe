//! The tower layer in front of a listener's services: resolves the
//! caller, checks the method's scope, refuses or passes the call on.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use super::identity::{Bearer, bearer, client_id, peer_uid};
use super::scope::Method;
use super::{Auth, Identity, Scope, Scopes, UNAUTHENTICATED};
use crate::error::Error;

/// Which listener a layer guards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    /// The network API port: tokens and scopes apply.
    Api,
    /// The control socket: owner-only, every call allowed, callers known
    /// by their uid.
    Control,
}

/// See the module.
#[derive(Debug, Clone)]
pub struct AuthLayer {
    auth: Arc<Auth>,
    listener: Listener,
    refused: Arc<AtomicU64>,
}

impl AuthLayer {
    /// The layer of `listener`.
    pub fn new(auth: Arc<Auth>, listener: Listener) -> AuthLayer {
        AuthLayer {
            auth,
            listener,
            refused: Arc::new(AtomicU64::new(0)),
        }
    }
}

impl<S> tower::Layer<S> for AuthLayer {
    type Service = AuthService<S>;
    fn layer(&self, inner: S) -> AuthService<S> {
        AuthService {
            inner,
            layer: self.clone(),
        }
    }
}

/// See [`AuthLayer`].
#[derive(Debug, Clone)]
pub struct AuthService<S> {
    inner: S,
    layer: AuthLayer,
}

/// The outcome for one call: who, and the refusal if any.
#[derive(Debug)]
pub struct Decision {
    /// The caller.
    pub identity: Identity,
    /// `None`: the call goes on.
    pub refusal: Option<Error>,
}

impl Auth {
    /// Who calls, and whether they may call `req`'s method on `listener`.
    pub fn decide<B>(&self, req: &http::Request<B>, listener: Listener) -> Decision {
        if listener == Listener::Control {
            return Decision {
                identity: peer_uid(req).map_or(Identity::Anonymous, Identity::Uid),
                refusal: None,
            };
        }
        let (identity, scopes) = match self.caller(req) {
            Ok(caller) => caller,
            Err(refused) => return refused,
        };
        let path = req.uri().path();
        let Some(method) = self.methods.get(path) else {
            // Fail closed: a path the table does not know reaches no
            // service (the code tonic gives a method it does not serve).
            let shown: String = path.chars().take(128).collect();
            return Decision {
                identity,
                refusal: Some(Error::Unimplemented(format!(
                    "method {shown:?} is not served on this port"
                ))),
            };
        };
        self.check(identity, scopes, method)
    }

    /// Who calls, and whether they may call `method` (a route of the HTTP
    /// API, `openai`): the same tokens, scopes and anonymous rules as the
    /// gRPC API port's.
    pub fn decide_for<B>(&self, req: &http::Request<B>, method: &Method) -> Decision {
        match self.caller(req) {
            Ok((identity, scopes)) => self.check(identity, scopes, method),
            Err(refused) => refused,
        }
    }

    /// The caller on the network API and its scopes; a refusal when a
    /// tokens file is configured and the call has no known token.
    fn caller<B>(&self, req: &http::Request<B>) -> Result<(Identity, Scopes), Decision> {
        let uid = peer_uid(req);
        let headers = req.headers();
        let (identity, scopes) = if self.has_tokens() {
            match bearer(headers) {
                Bearer::Secret(secret) => match self.tokens().find(secret) {
                    Some(t) => (Identity::Token(t.name.clone()), t.scopes),
                    None => return Err(unauthenticated()),
                },
                Bearer::Malformed => return Err(unauthenticated()),
                // A local process is known by its uid (the Unix listener
                // of the colocated-clients issue): what an open API gives.
                Bearer::Absent => match uid {
                    Some(uid) => (Identity::Uid(uid), Scopes::OPEN),
                    None => return Err(unauthenticated()),
                },
            }
        } else {
            let identity = match uid {
                Some(uid) => Identity::Uid(uid),
                None => client_id(headers, &self.clients),
            };
            (identity, Scopes::OPEN)
        };
        Ok((identity, scopes))
    }

    /// Whether `identity` with `scopes` may call `method`.
    fn check(&self, identity: Identity, scopes: Scopes, method: &Method) -> Decision {
        let refusal = if scopes.has(method.scope) {
            None
        } else if !self.has_tokens() && method.scope == Scope::Manage {
            Some(Error::PermissionDenied(format!(
                "{} is refused on the network API without [auth] tokens_file; use the control socket {} ({}) or configure tokens",
                method.label.rsplit('/').next().unwrap_or(&method.label),
                self.control_socket.display(),
                hint(&method.label, &self.control_socket),
            )))
        } else {
            let who = match &identity {
                Identity::Token(name) => format!("token {name:?}"),
                other => other.to_string(),
            };
            Some(Error::PermissionDenied(format!(
                "{who} may not call {}: it needs the scope \"{}\" and has {}",
                method.label,
                method.scope,
                if scopes.is_empty() {
                    "none".to_owned()
                } else {
                    format!("\"{scopes}\"")
                },
            )))
        };
        Decision { identity, refusal }
    }
}

fn unauthenticated() -> Decision {
    Decision {
        identity: Identity::Anonymous,
        refusal: Some(Error::Unauthenticated(UNAUTHENTICATED.into())),
    }
}

/// How to do a `manage` call over the control socket.
fn hint(label: &str, socket: &std::path::Path) -> String {
    match label {
        "ModelService/LoadModel" => "sidecarctl load MODEL FAMILY PATH".into(),
        "ModelService/UnloadModel" => "sidecarctl unload MODEL".into(),
        _ => format!(
            "any ModelService client over that socket, e.g. grpc over unix://{}",
            socket.display()
        ),
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B, R> tower::Service<http::Request<B>> for AuthService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
    R: Default + Send + 'static,
{
    type Response = http::Response<R>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        let Decision { identity, refusal } = self.layer.auth.decide(&req, self.layer.listener);
        let client = identity.to_string();
        let Some(refusal) = refusal else {
            req.extensions_mut().insert(identity);
            let fut = self.inner.call(req);
            return Box::pin(async move {
                // Polled inside the metrics layer's call: it labels the
                // call with its client.
                crate::metrics::note_client(&client);
                fut.await
            });
        };
        // Refusals are logged at 1, 2, 4, 8, ... per layer (a flood of bad
        // tokens cannot flood the log); the rest at debug.
        let n = self.layer.refused.fetch_add(1, Ordering::Relaxed) + 1;
        let method: String = req.uri().path().chars().take(128).collect();
        if n.is_power_of_two() {
            tracing::info!(client = %client, method, refused = n, "call refused: {refusal}");
        } else {
            tracing::debug!(client = %client, method, refused = n, "call refused: {refusal}");
        }
        let request_id = req
            .headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty() && v.len() <= 128)
            .unwrap_or_default()
            .to_owned();
        let status = tonic::Status::from(refusal.with_request_id(&request_id, &client));
        Box::pin(async move {
            crate::metrics::note_client(&client);
            Ok(status.into_http())
        })
    }
}
