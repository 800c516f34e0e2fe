//! Who may call what on the API: `[auth]` in the config file.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::units::secs;
use crate::error::Error;

/// Most entries of `auth.client_ids`.
pub const MAX_CLIENT_IDS: usize = 1024;

/// Bearer tokens and client names. See `supervisor::auth`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// The tokens file: one `NAME SCOPES sha256:HEX` per line. Absent:
    /// inference and reads are open on the API port and every `manage`
    /// call is refused there (the control socket serves them).
    pub tokens_file: Option<PathBuf>,
    /// The `x-client-id` values a caller may name itself by (for logs,
    /// metrics and, later, traffic rules) when there is no tokens file;
    /// any other value is "anonymous". Ignored when tokens are configured.
    pub client_ids: Vec<String>,
    /// How often the tokens file is checked for a change (mtime, size,
    /// inode); a changed file is read again without a restart.
    #[serde(with = "secs")]
    pub reload_interval: Duration,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            tokens_file: None,
            client_ids: Vec::new(),
            reload_interval: Duration::from_secs(2),
        }
    }
}

impl AuthConfig {
    /// Checks the section; the message names the key, the value and the
    /// limit.
    pub fn validate(&self) -> Result<(), Error> {
        if self.reload_interval < Duration::from_millis(100) {
            return Err(Error::Config(format!(
                "auth.reload_interval {:?} is less than 0.1 s",
                self.reload_interval
            )));
        }
        if self.client_ids.len() > MAX_CLIENT_IDS {
            return Err(Error::Config(format!(
                "auth.client_ids has {} entries, more than {MAX_CLIENT_IDS}",
                self.client_ids.len()
            )));
        }
        let mut seen = std::collections::HashSet::new();
        for id in &self.client_ids {
            if !crate::ids::is_client_name(id) {
                return Err(Error::Config(format!(
                    "auth.client_ids entry {:?} must be 1..{} characters of [A-Za-z0-9._-] and not one of {:?}",
                    id.chars().take(80).collect::<String>(),
                    crate::ids::MAX_CLIENT_NAME,
                    crate::ids::RESERVED_CLIENT_NAMES
                )));
            }
            if !seen.insert(id) {
                return Err(Error::Config(format!(
                    "auth.client_ids entry {id:?} appears twice"
                )));
            }
        }
        if let Some(p) = &self.tokens_file
            && p.as_os_str().is_empty()
        {
            return Err(Error::Config(
                "auth.tokens_file is empty: name a file, or leave the key out".into(),
            ));
        }
        Ok(())
    }
}
