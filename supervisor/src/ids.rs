//! Identifiers: the rule for model ids, and the request ids the supervisor
//! gives calls that bring none. A leaf module (it knows only the error type).

use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::Error;

/// The longest model id.
pub const MAX_MODEL_ID: usize = 64;

/// Checks a model id: 1..64 of [a-z0-9._-], starting with a letter or
/// digit.
pub fn check_model_id(id: &str) -> Result<(), Error> {
    let ok = !id.is_empty()
        && id.len() <= MAX_MODEL_ID
        && id
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && id
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!(
            "model_id {:?} must be 1..64 characters of [a-z0-9._-] starting with a letter or digit",
            id.chars().take(80).collect::<String>()
        )))
    }
}

/// Most aliases at once.
pub const MAX_ALIASES: usize = 256;

/// What an alias (or a call) names: a model id, and one version of it
/// (`None`: its current version, following swaps).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The model id.
    pub id: String,
    /// One version of it.
    pub version: Option<u32>,
}

impl Target {
    /// "id" or "id@version", checked: a valid id and a version 1 or more.
    pub fn parse(name: &str) -> Result<Target, Error> {
        let Some((id, version)) = name.split_once('@') else {
            check_model_id(name)?;
            return Ok(Target {
                id: name.to_owned(),
                version: None,
            });
        };
        check_model_id(id)?;
        match version.parse::<u32>() {
            Ok(v) if v > 0 && !version.starts_with('+') && !version.starts_with('0') => {
                Ok(Target {
                    id: id.to_owned(),
                    version: Some(v),
                })
            }
            _ => Err(Error::InvalidArgument(format!(
                "model_id {:?}: the version after '@' must be a number from 1 to {}",
                name.chars().take(80).collect::<String>(),
                u32::MAX
            ))),
        }
    }

    /// As a call would name it.
    pub fn name(&self) -> String {
        match self.version {
            Some(v) => format!("{}@{v}", self.id),
            None => self.id.clone(),
        }
    }
}

/// The longest client name (a token's name, an allowed `x-client-id`).
pub const MAX_CLIENT_NAME: usize = 64;

/// Names that the identity resolver gives itself: no token or client id
/// may take them.
pub const RESERVED_CLIENT_NAMES: [&str; 2] = ["anonymous", "other"];

/// Whether `name` may name a client: 1..=64 characters of
/// `[A-Za-z0-9._-]`, not a reserved name. Client names become metric labels
/// and log fields, so their set of characters and length are bounded.
pub fn is_client_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_CLIENT_NAME
        && name
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'))
        && !RESERVED_CLIENT_NAMES.contains(&name)
}

/// Request ids for calls without an `x-request-id`: `sc-<pid>-<n>`, `n`
/// counting from 1. One per process, built at start and passed down.
#[derive(Debug)]
pub struct RequestIds {
    pid: u32,
    next: AtomicU64,
}

impl Default for RequestIds {
    fn default() -> Self {
        RequestIds {
            pid: std::process::id(),
            next: AtomicU64::new(1),
        }
    }
}

impl RequestIds {
    /// The next id.
    pub fn next(&self) -> String {
        format!(
            "sc-{}-{}",
            self.pid,
            self.next.fetch_add(1, Ordering::Relaxed)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_ids_follow_the_rule() {
        for ok in ["a", "smollm2", "m-1.q4_0", &"x".repeat(64)] {
            assert!(check_model_id(ok).is_ok(), "{ok}");
        }
        for bad in ["", "-a", "A", "a b", "a/b", "x\"} 1\n", &"x".repeat(65)] {
            assert!(check_model_id(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn client_names_follow_the_rule() {
        for ok in ["app", "App-1.prod_2", &"x".repeat(64)] {
            assert!(is_client_name(ok), "{ok}");
        }
        for bad in [
            "",
            "a b",
            "a:b",
            "anonymous",
            "other",
            "é",
            "x\"} 1",
            &"x".repeat(65),
        ] {
            assert!(!is_client_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn request_ids_count_up() {
        let ids = RequestIds::default();
        let pid = std::process::id();
        assert_eq!(ids.next(), format!("sc-{pid}-1"));
        assert_eq!(ids.next(), format!("sc-{pid}-2"));
    }

    #[test]
    fn names_parse_into_an_id_and_an_optional_version() {
        assert_eq!(
            Target::parse("minilm").expect("id"),
            Target {
                id: "minilm".into(),
                version: None
            }
        );
        let t = Target::parse("minilm@12").expect("version");
        assert_eq!(
            (t.id.as_str(), t.version, t.name()),
            ("minilm", Some(12), "minilm@12".into())
        );
        for bad in [
            "minilm@",
            "minilm@0",
            "minilm@01",
            "minilm@+3",
            "minilm@-1",
            "minilm@x",
            "minilm@4294967296",
            "@2",
            "Minilm@2",
            "a@1@2",
            "minilm@ 2",
        ] {
            let e = Target::parse(bad).expect_err(bad);
            assert!(matches!(e, Error::InvalidArgument(_)), "{bad}: {e:?}");
        }
        let long = format!("m@{}", "9".repeat(100_000));
        let e = Target::parse(&long).expect_err("long");
        assert!(e.to_string().len() < 300, "the message is bounded: {e}");
    }
}
