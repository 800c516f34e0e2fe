//! The OpenAI-compatible HTTP API: `[openai]` in the config file.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use super::units::{bytes, opt_secs};
use crate::error::Error;

/// Smallest `openai.max_body_bytes`.
pub(crate) const MIN_BODY_BYTES: u64 = 1 << 10;
/// Largest `openai.max_body_bytes`.
pub(crate) const MAX_BODY_BYTES: u64 = 256 << 20;

/// Where the HTTP API listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HttpAddress {
    /// A TCP address ("127.0.0.1:8080"; port 0: any free port).
    Tcp(SocketAddr),
    /// A Unix socket path ("unix:/run/sidecar/openai.sock").
    Unix(PathBuf),
}

impl std::fmt::Display for HttpAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HttpAddress::Tcp(a) => write!(f, "{a}"),
            HttpAddress::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

impl HttpAddress {
    /// Reads "HOST:PORT" or "unix:PATH" (an absolute path).
    pub fn parse(text: &str) -> Result<HttpAddress, String> {
        if let Some(path) = text.strip_prefix("unix:") {
            let path = PathBuf::from(path);
            if !path.is_absolute() {
                return Err(format!(
                    "openai.address {text:?}: a Unix socket path must be absolute (unix:/run/sidecar/openai.sock)"
                ));
            }
            return Ok(HttpAddress::Unix(path));
        }
        text.parse().map(HttpAddress::Tcp).map_err(|_| {
            format!(
                "openai.address {text:?} is neither HOST:PORT (127.0.0.1:8080) nor unix:/absolute/path"
            )
        })
    }
}

impl<'de> Deserialize<'de> for HttpAddress {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        HttpAddress::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// The HTTP listener serving `/v1/models`, `/v1/chat/completions`,
/// `/v1/completions` and `/v1/embeddings` (see `supervisor::openai`).
/// `[connections]`, `[tls]` and `[auth]` apply to it as to the gRPC API.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct OpenAiConfig {
    /// Whether the listener runs.
    pub enabled: bool,
    /// "HOST:PORT" or "unix:/absolute/path".
    pub address: HttpAddress,
    /// Largest request body; a larger one is answered 413.
    #[serde(with = "bytes")]
    pub max_body_bytes: u64,
    /// Default deadline of `/v1/chat/completions` (absent:
    /// `deadlines.unary`, or `deadlines.stream` for `stream: true`).
    #[serde(with = "opt_secs")]
    pub chat_timeout: Option<Duration>,
    /// Default deadline of `/v1/completions` (absent: as for chat).
    #[serde(with = "opt_secs")]
    pub completions_timeout: Option<Duration>,
    /// Default deadline of `/v1/embeddings` (absent: `deadlines.unary`).
    #[serde(with = "opt_secs")]
    pub embeddings_timeout: Option<Duration>,
}

impl Default for OpenAiConfig {
    fn default() -> Self {
        OpenAiConfig {
            enabled: true,
            address: HttpAddress::Tcp(([127, 0, 0, 1], 8080).into()),
            max_body_bytes: 8 << 20,
            chat_timeout: None,
            completions_timeout: None,
            embeddings_timeout: None,
        }
    }
}

impl OpenAiConfig {
    /// Checks the section; the message names the key, the value and the
    /// limit.
    pub fn validate(&self) -> Result<(), Error> {
        if !(MIN_BODY_BYTES..=MAX_BODY_BYTES).contains(&self.max_body_bytes) {
            return Err(Error::Config(format!(
                "openai.max_body_bytes {} is outside {MIN_BODY_BYTES}..={MAX_BODY_BYTES}",
                self.max_body_bytes
            )));
        }
        for (name, value) in [
            ("openai.chat_timeout", self.chat_timeout),
            ("openai.completions_timeout", self.completions_timeout),
            ("openai.embeddings_timeout", self.embeddings_timeout),
        ] {
            if value.is_some_and(|v| v.is_zero()) {
                return Err(Error::Config(format!("{name} must be more than 0 s")));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_and_limits_are_checked() {
        assert_eq!(
            HttpAddress::parse("127.0.0.1:0"),
            Ok(HttpAddress::Tcp(([127, 0, 0, 1], 0).into()))
        );
        assert_eq!(
            HttpAddress::parse("unix:/tmp/o.sock"),
            Ok(HttpAddress::Unix("/tmp/o.sock".into()))
        );
        let e = HttpAddress::parse("unix:rel.sock").unwrap_err();
        assert!(e.contains("must be absolute"), "{e}");
        let e = HttpAddress::parse("localhost").unwrap_err();
        assert!(e.contains("\"localhost\""), "{e}");
        let c: OpenAiConfig = toml::from_str("max_body_bytes = \"1GiB\"").expect("parses");
        let e = c.validate().unwrap_err().to_string();
        assert!(
            e.contains("openai.max_body_bytes 1073741824 is outside 1024..=268435456"),
            "{e}"
        );
        let c: OpenAiConfig = toml::from_str("chat_timeout = 0").expect("parses");
        let e = c.validate().unwrap_err().to_string();
        assert!(
            e.contains("openai.chat_timeout must be more than 0 s"),
            "{e}"
        );
        let e = toml::from_str::<OpenAiConfig>("adress = \"x\"").unwrap_err();
        assert!(e.to_string().contains("unknown field `adress`"), "{e}");
        assert!(OpenAiConfig::default().validate().is_ok());
    }
}
