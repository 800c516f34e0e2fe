//! Cache keys: SHA-256 over length-prefixed fields, so that no two
//! different field lists give the same bytes to hash.

use sha2::{Digest, Sha256};

/// A key: 32 bytes of SHA-256.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key(pub [u8; 32]);

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for b in &self.0[..8] {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// Bytes a key holds in the cache.
pub const KEY_BYTES: usize = 32;

/// Builds a key from fields in order.
#[derive(Debug, Clone)]
pub struct KeyBuilder(Sha256);

impl KeyBuilder {
    /// A key under `domain` (what kind of key: a model's context, an
    /// Embed text, a whole call...).
    pub fn new(domain: &str) -> KeyBuilder {
        let mut b = KeyBuilder(Sha256::new());
        b.field(b"sidecar-cache-v1");
        b.field(domain.as_bytes());
        b
    }

    /// Adds one field (its length first).
    pub fn field(&mut self, bytes: &[u8]) -> &mut KeyBuilder {
        self.0.update((bytes.len() as u64).to_le_bytes());
        self.0.update(bytes);
        self
    }

    /// The key.
    pub fn finish(&self) -> Key {
        Key(self.0.clone().finalize().into())
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn key(domain: &str, fields: &[Vec<u8>]) -> Key {
        let mut b = KeyBuilder::new(domain);
        for f in fields {
            b.field(f);
        }
        b.finish()
    }

    proptest! {
        #[test]
        fn keys_are_stable_and_see_every_byte(
            fields in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..40), 1..5),
            which in any::<proptest::sample::Index>(),
            flip in any::<proptest::sample::Index>(),
        ) {
            let k = key("embed", &fields);
            prop_assert_eq!(k, key("embed", &fields), "stable");
            prop_assert_ne!(k, key("tokenize", &fields), "the domain counts");
            let mut changed = fields.clone();
            let f = which.index(changed.len());
            if changed[f].is_empty() {
                changed[f].push(0);
            } else {
                let i = flip.index(changed[f].len());
                changed[f][i] ^= 1;
            }
            prop_assert_ne!(k, key("embed", &changed), "one byte changed");
            // Moving a byte from one field to the next is another key.
            if fields.len() >= 2 && !fields[0].is_empty() {
                let mut moved = fields.clone();
                let b = moved[0].pop().unwrap_or_default();
                moved[1].insert(0, b);
                prop_assert_ne!(k, key("embed", &moved), "field bounds count");
            }
        }
    }
}
