//! Who is calling: the one resolver, in this order: the bearer token's
//! name; else the peer's uid on a Unix socket (`SO_PEERCRED`); else an
//! allowed `x-client-id` (only without tokens); else "anonymous".

use std::fmt;
use std::sync::Arc;

use tonic::transport::server::UdsConnectInfo;

use crate::net::ConnInfo;

/// The caller of one call, in the request's extensions
/// (`req.extensions().get::<Identity>()`) for every handler and layer
/// after [`super::AuthLayer`]. Its [`Display`](fmt::Display) form is
/// bounded and safe for logs and metric labels: a token's name (the
/// tokens file bounds them), `uid:N`, an allowed client id, or
/// `anonymous`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Identity {
    /// A bearer token, by its name in the tokens file.
    Token(Arc<str>),
    /// The peer process's uid on a Unix socket.
    Uid(u32),
    /// An `x-client-id` from `auth.client_ids` (only without tokens).
    Client(Arc<str>),
    /// Nothing the sidecar can tell apart.
    Anonymous,
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Identity::Token(name) | Identity::Client(name) => f.write_str(name),
            Identity::Uid(uid) => write!(f, "uid:{uid}"),
            Identity::Anonymous => f.write_str("anonymous"),
        }
    }
}

impl Identity {
    /// The identity of a call, "anonymous" when no layer set one.
    pub fn of<B>(req: &http::Request<B>) -> Identity {
        req.extensions()
            .get::<Identity>()
            .cloned()
            .unwrap_or(Identity::Anonymous)
    }

    /// The identity a tonic handler's request carries.
    pub fn of_call<T>(req: &tonic::Request<T>) -> Identity {
        req.extensions()
            .get::<Identity>()
            .cloned()
            .unwrap_or(Identity::Anonymous)
    }
}

/// The uid of the peer, when the call came over a Unix socket.
pub fn peer_uid<B>(req: &http::Request<B>) -> Option<u32> {
    let ext = req.extensions();
    ext.get::<ConnInfo<UdsConnectInfo>>()
        .and_then(|i| i.transport.peer_cred)
        .or_else(|| ext.get::<UdsConnectInfo>().and_then(|i| i.peer_cred))
        .map(|c| c.uid())
}

/// Longest `authorization` header read, bytes; a longer one is a wrong
/// token.
pub const MAX_AUTHORIZATION: usize = 4096;

/// What the `authorization` header holds.
#[derive(Debug, PartialEq, Eq)]
pub enum Bearer<'a> {
    /// No header.
    Absent,
    /// A header that is not `Bearer <secret>` within the bounds.
    Malformed,
    /// The secret.
    Secret(&'a [u8]),
}

/// Reads `authorization: Bearer <secret>` ("Bearer" in any case, one or
/// more spaces; the secret non-empty visible ASCII).
pub fn bearer(headers: &http::HeaderMap) -> Bearer<'_> {
    let mut values = headers.get_all(http::header::AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Bearer::Absent;
    };
    if values.next().is_some() {
        return Bearer::Malformed;
    }
    let v = value.as_bytes();
    if v.len() > MAX_AUTHORIZATION || v.len() < 7 || !v[..7].eq_ignore_ascii_case(b"bearer ") {
        return Bearer::Malformed;
    }
    let secret = v[7..].trim_ascii();
    if secret.is_empty() || !secret.iter().all(|b| b.is_ascii_graphic()) {
        return Bearer::Malformed;
    }
    Bearer::Secret(secret)
}

/// The `x-client-id` when it is one of `allowed`; "anonymous" otherwise
/// (any other value, too long, not ASCII).
pub fn client_id(headers: &http::HeaderMap, allowed: &[Arc<str>]) -> Identity {
    headers
        .get("x-client-id")
        .map(http::HeaderValue::as_bytes)
        .filter(|v| v.len() <= crate::ids::MAX_CLIENT_NAME)
        .and_then(|v| allowed.iter().find(|a| a.as_bytes() == v))
        .map_or(Identity::Anonymous, |a| Identity::Client(a.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &[u8])]) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, http::HeaderValue::from_bytes(v).expect("value"));
        }
        h
    }

    #[test]
    fn bearer_headers_are_read_strictly() {
        assert_eq!(bearer(&headers(&[])), Bearer::Absent);
        for (v, want) in [
            (&b"Bearer abc"[..], Bearer::Secret(b"abc")),
            (b"bearer abc", Bearer::Secret(b"abc")),
            (b"BEARER   abc  ", Bearer::Secret(b"abc")),
            (b"Bearer ", Bearer::Malformed),
            (b"Bearer    ", Bearer::Malformed),
            (b"Basic abc", Bearer::Malformed),
            (b"Bearerabc", Bearer::Malformed),
            (b"Bearer a b", Bearer::Malformed),
            ("Bearer \u{e9}t\u{e9}".as_bytes(), Bearer::Malformed),
        ] {
            assert_eq!(bearer(&headers(&[("authorization", v)])), want, "{v:?}");
        }
        let long = format!("Bearer {}", "a".repeat(MAX_AUTHORIZATION));
        assert_eq!(
            bearer(&headers(&[("authorization", long.as_bytes())])),
            Bearer::Malformed
        );
        let two = headers(&[
            ("authorization", b"Bearer a"),
            ("authorization", b"Bearer b"),
        ]);
        assert_eq!(bearer(&two), Bearer::Malformed);
    }

    #[test]
    fn client_ids_outside_the_list_are_anonymous() {
        let allowed: Vec<Arc<str>> = vec!["web".into(), "batch".into()];
        assert_eq!(
            client_id(&headers(&[("x-client-id", b"web")]), &allowed),
            Identity::Client("web".into())
        );
        for v in [&b"webx"[..], b"", b"WEB", "w\u{e9}b".as_bytes()] {
            assert_eq!(
                client_id(&headers(&[("x-client-id", v)]), &allowed),
                Identity::Anonymous
            );
        }
        assert_eq!(client_id(&headers(&[]), &allowed), Identity::Anonymous);
        assert_eq!(Identity::Uid(1000).to_string(), "uid:1000");
        assert_eq!(Identity::Token("app".into()).to_string(), "app");
        assert_eq!(Identity::Anonymous.to_string(), "anonymous");
    }
}
