//! The tokens file: one `NAME SCOPES sha256:HEX` per line. Only the
//! SHA-256 of each secret is kept; a presented secret is hashed and
//! compared with every entry in constant time. Errors name the file and
//! the line, never its text (a line may hold a secret pasted by mistake).

use std::path::Path;
use std::sync::Arc;

use sha2::{Digest, Sha256};

use super::scope::{Scope, Scopes};

/// Largest tokens file, bytes.
pub const MAX_FILE_BYTES: u64 = 1 << 20;
/// Most tokens in the file.
pub const MAX_TOKENS: usize = 10_000;
/// The prefix of a hash in the file.
pub const HASH_PREFIX: &str = "sha256:";

/// One token.
#[derive(Debug, Clone)]
pub struct Token {
    /// Its name: the caller's identity in logs, metrics and messages.
    pub name: Arc<str>,
    /// What it may do.
    pub scopes: Scopes,
    hash: [u8; 32],
}

/// The tokens of one reading of the file.
#[derive(Debug, Default)]
pub struct Tokens {
    tokens: Vec<Token>,
}

/// The SHA-256 of a secret.
pub fn digest(secret: &[u8]) -> [u8; 32] {
    Sha256::digest(secret).into()
}

/// A secret as the tokens file holds it: `sha256:` and 64 lowercase hex
/// digits.
pub fn hash_line(secret: &[u8]) -> String {
    let mut out = String::from(HASH_PREFIX);
    for b in digest(secret) {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// Whether two digests are equal, looking at every byte whatever they hold.
fn same(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    // `black_box` keeps the optimiser from turning the fold into an early
    // exit.
    std::hint::black_box(diff) == 0
}

impl Tokens {
    /// The token whose secret is `secret`. Every entry is compared, each in
    /// constant time, so the time taken tells nothing of which one (if
    /// any) matched.
    pub fn find(&self, secret: &[u8]) -> Option<&Token> {
        let d = digest(secret);
        let mut found = None;
        for t in &self.tokens {
            if same(&t.hash, &d) {
                found = Some(t);
            }
        }
        found
    }

    /// How many tokens there are.
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// Reads `path` (at most [`MAX_FILE_BYTES`]).
    pub fn read(path: &Path) -> Result<Tokens, String> {
        let text = crate::config::small_file::read(path, MAX_FILE_BYTES)
            .map_err(|e| format!("auth.tokens_file {}: {e}", path.display()))?;
        Tokens::parse(&text).map_err(|e| format!("auth.tokens_file {} {e}", path.display()))
    }

    /// Parses the file's bytes. The error names the line ("line 3: …").
    pub fn parse(text: &[u8]) -> Result<Tokens, String> {
        let mut tokens: Vec<Token> = Vec::new();
        for (i, raw) in text.split(|b| *b == b'\n').enumerate() {
            let n = i + 1;
            let line = std::str::from_utf8(raw)
                .map_err(|_| format!("line {n}: not UTF-8"))?
                .trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let token = parse_line(line).map_err(|e| format!("line {n}: {e}"))?;
            if tokens.len() == MAX_TOKENS {
                return Err(format!("line {n}: more than {MAX_TOKENS} tokens"));
            }
            if tokens.iter().any(|t| t.name == token.name) {
                return Err(format!(
                    "line {n}: the name {:?} appears twice",
                    &*token.name
                ));
            }
            if tokens.iter().any(|t| same(&t.hash, &token.hash)) {
                return Err(format!(
                    "line {n}: token {:?} has the same secret as another token",
                    &*token.name
                ));
            }
            tokens.push(token);
        }
        Ok(Tokens { tokens })
    }
}

fn parse_line(line: &str) -> Result<Token, String> {
    let fields: Vec<&str> = line.split_ascii_whitespace().collect();
    let [name, scopes, hash] = fields[..] else {
        return Err(format!(
            "{} fields, expected 3: NAME SCOPES {HASH_PREFIX}HEX",
            fields.len()
        ));
    };
    if !crate::ids::is_client_name(name) {
        // The name is not echoed: it may be a secret in the wrong place.
        return Err(format!(
            "the name must be 1..{} characters of [A-Za-z0-9._-] and not one of {:?}",
            crate::ids::MAX_CLIENT_NAME,
            crate::ids::RESERVED_CLIENT_NAMES
        ));
    }
    let mut set = Scopes::default();
    for word in scopes.split(',') {
        let scope = Scope::parse(word).ok_or_else(|| {
            let shown = if word.len() <= 16 && word.bytes().all(|b| b.is_ascii_lowercase()) {
                format!("{word:?}")
            } else {
                "a word that".into()
            };
            format!("token {name:?}: {shown} is not a scope (infer, read, manage)")
        })?;
        set = set.with(scope);
    }
    let hex = hash
        .strip_prefix(HASH_PREFIX)
        .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
        .ok_or_else(|| {
            format!("token {name:?}: the hash must be {HASH_PREFIX} followed by 64 hex digits")
        })?;
    let mut digest = [0u8; 32];
    for (i, byte) in digest.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16)
            .map_err(|_| format!("token {name:?}: the hash is not hex"))?;
    }
    Ok(Token {
        name: name.into(),
        scopes: set,
        hash: digest,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn line(name: &str, scopes: &str, secret: &str) -> String {
        format!("{name} {scopes} {}\n", hash_line(secret.as_bytes()))
    }

    #[test]
    fn a_file_reads_and_finds_tokens_by_secret() {
        let text = format!(
            "# comment\n\n  {}  \t\n{}",
            line("app", "infer,read", "s3cret").trim_end(),
            line("ops", "manage", "0ther").trim_end()
        );
        let t = Tokens::parse(text.as_bytes()).expect("parses");
        assert_eq!(t.len(), 2);
        let app = t.find(b"s3cret").expect("app");
        assert_eq!((&*app.name, app.scopes), ("app", Scopes::OPEN));
        assert_eq!(&*t.find(b"0ther").expect("ops").name, "ops");
        assert!(t.find(b"s3cre").is_none() && t.find(b"").is_none());
        assert_eq!(
            hash_line(b"abc"),
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        // Uppercase hex is the same digest.
        let upper = format!(
            "x infer {}",
            hash_line(b"k").to_uppercase().replace("SHA256:", "sha256:")
        );
        assert!(
            Tokens::parse(upper.as_bytes())
                .expect("upper")
                .find(b"k")
                .is_some()
        );
    }

    #[test]
    fn bad_lines_are_named_and_never_echoed() {
        let good = line("app", "infer", "a");
        let h = hash_line(b"b");
        for (text, want) in [
            (format!("{good}oops infer\n"), "line 2: 2 fields"),
            (
                format!("{good}app read {h}\n"),
                "line 2: the name \"app\" appears twice",
            ),
            (
                format!("{good}{}", line("b", "read", "a")),
                "line 2: token \"b\" has the same secret",
            ),
            (
                format!("x admin {h}\n"),
                "line 1: token \"x\": \"admin\" is not a scope",
            ),
            (
                format!("x infer, {h}\n"),
                "line 1: token \"x\": \"\" is not a scope",
            ),
            (
                "x infer sha256:zz\n".into(),
                "line 1: token \"x\": the hash must be",
            ),
            (format!("x infer {}\n", &h[7..]), "the hash must be sha256:"),
            (
                format!("my-Secret!xyz infer {h}\n"),
                "line 1: the name must be",
            ),
            (format!("anonymous infer {h}\n"), "line 1: the name must be"),
        ] {
            let err = Tokens::parse(text.as_bytes()).expect_err(&text);
            assert!(err.contains(want), "{text:?}: {err}");
            assert!(!err.contains("Secret!"), "{err}");
        }
        let mut latin1 = format!("{good}\n").into_bytes();
        latin1.extend_from_slice(b"\xff infer\n");
        let err = Tokens::parse(&latin1).expect_err("latin1");
        assert_eq!(err, "line 3: not UTF-8");
        let many: String = (0..=MAX_TOKENS)
            .map(|i| line(&format!("t{i}"), "infer", &i.to_string()))
            .collect();
        let err = Tokens::parse(many.as_bytes()).expect_err("too many");
        assert!(err.contains("line 10001: more than 10000 tokens"), "{err}");
    }

    #[test]
    fn a_file_past_the_cap_is_refused_before_it_is_parsed() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("tokens");
        std::fs::write(&path, vec![b'#'; (MAX_FILE_BYTES + 1) as usize]).expect("write");
        let err = Tokens::read(&path).expect_err("too large");
        assert!(
            err.contains("larger than 1048576 bytes") && err.contains("tokens"),
            "{err}"
        );
        let err = Tokens::read(&dir.path().join("none")).expect_err("missing");
        assert!(err.starts_with("auth.tokens_file "), "{err}");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Any bytes parse or fail with a line number, never panic, and an
        /// error never carries the input's text.
        #[test]
        fn any_file_parses_or_names_a_line(text in proptest::collection::vec(any::<u8>(), 0..512)) {
            match Tokens::parse(&text) {
                Ok(t) => prop_assert!(t.len() <= MAX_TOKENS),
                Err(e) => prop_assert!(e.starts_with("line "), "{}", e),
            }
        }

        /// A secret finds its own token and no other.
        #[test]
        fn secrets_find_their_token(secrets in proptest::collection::hash_set("[ -~]{1,40}", 1..8)) {
            let text: String = secrets.iter().enumerate().map(|(i, s)| line(&format!("t{i}"), "infer", s)).collect();
            let t = Tokens::parse(text.as_bytes()).expect("parses");
            for (i, s) in secrets.iter().enumerate() {
                let name = format!("t{i}");
                prop_assert_eq!(t.find(s.as_bytes()).map(|t| &*t.name), Some(name.as_str()));
            }
            prop_assert!(t.find(b"\0not-a-secret").is_none());
        }
    }
}
