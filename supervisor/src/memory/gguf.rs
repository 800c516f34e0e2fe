//! The few GGUF header keys the memory guard needs to estimate a text
//! model's KV cache before any worker has loaded it (the supervisor does
//! not link llama.cpp).
//!
//! The file is a client's (PutFile): the reader is iterative (nested arrays
//! are walked with an explicit stack, at most [`MAX_DEPTH`] deep), every
//! size read from the file is checked before it is multiplied or
//! allocated, and the values an estimate multiplies must be plausible. What
//! it can see is hostile or impossible is an error (the model is refused);
//! anything else it cannot read is left to llama.cpp, as before.

use std::io::{BufReader, Read};
use std::path::Path;

/// Deepest nesting of arrays accepted (real models nest none).
pub const MAX_DEPTH: usize = 8;
/// Most key-value pairs read.
pub const MAX_KEYS: u64 = 1 << 16;
/// Longest string read (a key, or a text value).
pub const MAX_STRING: u64 = 1 << 20;

/// The largest plausible values of the keys an estimate multiplies.
const LIMITS: [(&str, u64); 5] = [
    ("block_count", 1 << 16),
    ("embedding_length", 1 << 20),
    ("attention.head_count", 1 << 16),
    ("attention.head_count_kv", 1 << 16),
    ("context_length", 1 << 26),
];
/// The largest plausible vocabulary.
const MAX_VOCAB: u64 = 1 << 24;

/// What sizes a text model's KV cache.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TextShape {
    /// `<arch>.block_count`.
    pub layers: u64,
    /// `<arch>.embedding_length`.
    pub embedding: u64,
    /// `<arch>.attention.head_count`.
    pub heads: u64,
    /// `<arch>.attention.head_count_kv` (default: `heads`).
    pub kv_heads: u64,
    /// `<arch>.context_length`.
    pub context_train: u64,
    /// Vocabulary size (the tokenizer's token list).
    pub vocab: u64,
}

impl TextShape {
    /// Bytes of K plus V per token per layer (f16), saturating.
    pub fn kv_bytes_per_token_layer(&self) -> u64 {
        let head_dim = self.embedding.checked_div(self.heads).unwrap_or(0);
        head_dim.saturating_mul(self.kv_heads).saturating_mul(4)
    }
}

/// Why a header was refused.
#[derive(Debug)]
enum Fault {
    /// The file cannot be read as GGUF (truncated, an unknown type):
    /// llama.cpp decides.
    Unreadable,
    /// Hostile or impossible: the model is refused with this reason.
    Refused(String),
}

impl From<std::io::Error> for Fault {
    fn from(_: std::io::Error) -> Self {
        Fault::Unreadable
    }
}

#[derive(Debug)]
enum Value {
    Int(u64),
    Other,
    Array(u64),
    Text(String),
}

/// Bytes of one item of a fixed-width type; `None` for strings, arrays and
/// unknown types.
fn width(typ: u32) -> Option<u64> {
    match typ {
        0 | 1 | 7 => Some(1),
        2 | 3 => Some(2),
        4..=6 => Some(4),
        10..=12 => Some(8),
        _ => None,
    }
}

struct Reader<R: Read> {
    r: R,
    /// Bytes read or skipped so far (for the property tests' bound).
    consumed: u64,
}

impl<R: Read> Reader<R> {
    fn bytes<const N: usize>(&mut self) -> Result<[u8; N], Fault> {
        let mut b = [0u8; N];
        self.r.read_exact(&mut b)?;
        self.consumed += N as u64;
        Ok(b)
    }
    fn u32(&mut self) -> Result<u32, Fault> {
        Ok(u32::from_le_bytes(self.bytes()?))
    }
    fn u64(&mut self) -> Result<u64, Fault> {
        Ok(u64::from_le_bytes(self.bytes()?))
    }
    fn string(&mut self) -> Result<String, Fault> {
        let n = self.u64()?;
        if n > MAX_STRING {
            return Err(Fault::Refused(format!(
                "a string of {n} bytes (the limit is {MAX_STRING})"
            )));
        }
        let mut b = Vec::new();
        (&mut self.r).take(n).read_to_end(&mut b)?;
        if b.len() as u64 != n {
            return Err(Fault::Unreadable);
        }
        self.consumed += n;
        Ok(String::from_utf8_lossy(&b).into_owned())
    }
    fn skip(&mut self, n: u64) -> Result<(), Fault> {
        let skipped = std::io::copy(&mut (&mut self.r).take(n), &mut std::io::sink())?;
        self.consumed += skipped;
        if skipped != n {
            return Err(Fault::Unreadable);
        }
        Ok(())
    }
    fn skip_string(&mut self) -> Result<(), Fault> {
        let n = self.u64()?;
        self.skip(n)
    }
    fn value(&mut self, typ: u32) -> Result<Value, Fault> {
        Ok(match typ {
            0 | 1 | 7 => Value::Int(u64::from(self.bytes::<1>()?[0])),
            2 | 3 => Value::Int(u64::from(u16::from_le_bytes(self.bytes()?))),
            4 | 5 => Value::Int(u64::from(self.u32()?)),
            6 => {
                self.skip(4)?;
                Value::Other
            }
            10 | 11 => Value::Int(self.u64()?),
            12 => {
                self.skip(8)?;
                Value::Other
            }
            8 => Value::Text(self.string()?),
            9 => Value::Array(self.array()?),
            _ => return Err(Fault::Unreadable),
        })
    }

    /// Walks an array (its items skipped) with an explicit stack of
    /// (item type, items left): no recursion, whatever the nesting.
    /// Returns its length.
    fn array(&mut self) -> Result<u64, Fault> {
        let (item, n) = (self.u32()?, self.u64()?);
        let mut stack = vec![(item, n)];
        while let Some(top) = stack.last_mut() {
            let (item, left) = *top;
            if left == 0 {
                stack.pop();
                continue;
            }
            match (width(item), item) {
                (Some(w), _) => {
                    let bytes = left.checked_mul(w).ok_or_else(|| {
                        Fault::Refused(format!("an array of {left} items of {w} bytes"))
                    })?;
                    self.skip(bytes)?;
                    top.1 = 0;
                }
                (None, 8) => {
                    top.1 -= 1;
                    self.skip_string()?;
                }
                (None, 9) => {
                    top.1 -= 1;
                    if stack.len() == MAX_DEPTH {
                        return Err(Fault::Refused(format!(
                            "arrays nested deeper than {MAX_DEPTH}"
                        )));
                    }
                    let inner = (self.u32()?, self.u64()?);
                    stack.push(inner);
                }
                _ => return Err(Fault::Unreadable),
            }
        }
        Ok(n)
    }
}

/// Reads the shape from a GGUF file's header. `Ok(None)`: not GGUF, or
/// not readable as GGUF, or without the keys (llama.cpp decides);
/// `Err`: hostile or impossible, with the reason (the model is refused).
pub fn text_shape(path: &Path) -> Result<Option<TextShape>, String> {
    let Ok(file) = std::fs::File::open(path) else {
        return Ok(None);
    };
    text_shape_of(&file)
}

/// [`text_shape`] of a file already open, read with positional reads
/// (the descriptor's offset, shared with the worker it is handed to, is
/// left alone).
pub fn text_shape_of(file: &std::fs::File) -> Result<Option<TextShape>, String> {
    let mut r = Reader {
        r: BufReader::with_capacity(1 << 16, Positional { file, at: 0 }),
        consumed: 0,
    };
    match read_shape(&mut r) {
        Ok(shape) => Ok(shape),
        Err(Fault::Unreadable) => Ok(None),
        Err(Fault::Refused(why)) => Err(format!("GGUF header: {why}")),
    }
}

/// Reads a file from its start with `pread`, leaving its offset alone.
struct Positional<'a> {
    file: &'a std::fs::File,
    at: u64,
}

impl Read for Positional<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = std::os::unix::fs::FileExt::read_at(self.file, buf, self.at)?;
        self.at += n as u64;
        Ok(n)
    }
}

fn read_shape<R: Read>(r: &mut Reader<R>) -> Result<Option<TextShape>, Fault> {
    if &r.bytes::<4>()? != b"GGUF" {
        return Ok(None);
    }
    let _version = r.u32()?;
    let _tensors = r.u64()?;
    let kvs = r.u64()?;
    if kvs > MAX_KEYS {
        return Err(Fault::Refused(format!(
            "{kvs} key-value pairs (the limit is {MAX_KEYS})"
        )));
    }
    let mut arch = String::new();
    let mut ints = std::collections::HashMap::new();
    let mut vocab = 0;
    for _ in 0..kvs {
        let key = r.string()?;
        let typ = r.u32()?;
        match (key.as_str(), r.value(typ)?) {
            ("general.architecture", Value::Text(a)) => arch = a,
            ("tokenizer.ggml.tokens", Value::Array(n)) => vocab = n,
            (_, Value::Int(v)) => {
                ints.insert(key, v);
            }
            _ => {}
        }
    }
    let get = |k: &str| ints.get(&format!("{arch}.{k}")).copied();
    for (k, most) in LIMITS {
        if let Some(v) = get(k).filter(|v| *v > most) {
            return Err(Fault::Refused(format!("{arch}.{k} {v} exceeds {most}")));
        }
    }
    if vocab > MAX_VOCAB {
        return Err(Fault::Refused(format!(
            "tokenizer.ggml.tokens holds {vocab} tokens (the limit is {MAX_VOCAB})"
        )));
    }
    let (Some(layers), Some(embedding), Some(heads)) = (
        get("block_count"),
        get("embedding_length"),
        get("attention.head_count"),
    ) else {
        return Ok(None);
    };
    Ok(Some(TextShape {
        layers,
        embedding,
        heads,
        kv_heads: get("attention.head_count_kv").unwrap_or(heads),
        context_train: get("context_length").unwrap_or(0),
        vocab,
    }))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn parse(bytes: &[u8]) -> (Result<Option<TextShape>, Fault>, u64) {
        let mut r = Reader {
            r: bytes,
            consumed: 0,
        };
        let out = read_shape(&mut r);
        (out, r.consumed)
    }

    fn refused(bytes: &[u8]) -> String {
        match parse(bytes).0 {
            Err(Fault::Refused(why)) => why,
            other => panic!("not refused: {other:?}"),
        }
    }

    fn header(kvs: u64) -> Vec<u8> {
        let mut f = b"GGUF".to_vec();
        f.extend(3u32.to_le_bytes());
        f.extend(0u64.to_le_bytes());
        f.extend(kvs.to_le_bytes());
        f
    }

    fn key(out: &mut Vec<u8>, key: &str, typ: u32) {
        out.extend((key.len() as u64).to_le_bytes());
        out.extend(key.as_bytes());
        out.extend(typ.to_le_bytes());
    }

    fn kv_int(out: &mut Vec<u8>, k: &str, v: u32) {
        key(out, k, 4);
        out.extend(v.to_le_bytes());
    }

    fn kv_u64(out: &mut Vec<u8>, k: &str, v: u64) {
        key(out, k, 10);
        out.extend(v.to_le_bytes());
    }

    fn arch(out: &mut Vec<u8>) {
        key(out, "general.architecture", 8);
        out.extend(5u64.to_le_bytes());
        out.extend(b"llama");
    }

    #[test]
    fn a_small_header_is_read() {
        let mut f = header(7);
        arch(&mut f);
        kv_int(&mut f, "llama.block_count", 30);
        kv_int(&mut f, "llama.embedding_length", 576);
        kv_int(&mut f, "llama.attention.head_count", 9);
        kv_int(&mut f, "llama.attention.head_count_kv", 3);
        kv_int(&mut f, "llama.context_length", 8192);
        key(&mut f, "tokenizer.ggml.tokens", 9);
        f.extend(8u32.to_le_bytes());
        f.extend(2u64.to_le_bytes());
        for t in ["<s>", "hi"] {
            f.extend((t.len() as u64).to_le_bytes());
            f.extend(t.as_bytes());
        }
        let shape = parse(&f).0.unwrap().unwrap();
        assert_eq!(
            shape,
            TextShape {
                layers: 30,
                embedding: 576,
                heads: 9,
                kv_heads: 3,
                context_train: 8192,
                vocab: 2
            }
        );
        // head_dim 64 × 3 KV heads × (K and V) × 2 bytes.
        assert_eq!(shape.kv_bytes_per_token_layer(), 768);
        assert!(matches!(parse(b"NOPE....").0, Ok(None)));
        // Cut anywhere: not readable, left to llama.cpp (never a panic).
        for cut in 0..f.len() {
            assert!(matches!(
                parse(&f[..cut]).0,
                Ok(None) | Err(Fault::Unreadable)
            ));
        }
    }

    /// The attack that overflowed the supervisor's stack: arrays nested
    /// 300 000 deep (a 3.6 MB header).
    fn nested(depth: usize) -> Vec<u8> {
        let mut f = header(1);
        key(&mut f, "evil", 9);
        for _ in 0..depth {
            f.extend(9u32.to_le_bytes());
            f.extend(1u64.to_le_bytes());
        }
        f.extend(4u32.to_le_bytes());
        f.extend(0u64.to_le_bytes());
        f
    }

    #[test]
    fn deeply_nested_arrays_are_refused_without_recursion() {
        let f = nested(300_000);
        assert!(f.len() > 3_500_000);
        let (out, consumed) = parse(&f);
        assert!(
            matches!(&out, Err(Fault::Refused(w)) if w == "arrays nested deeper than 8"),
            "{out:?}"
        );
        assert!(consumed < 200, "stops at the limit: read {consumed} bytes");
        // As deep as allowed still reads (and finds no shape).
        assert!(matches!(parse(&nested(MAX_DEPTH - 1)).0, Ok(None)));
    }

    #[test]
    fn sizes_that_overflow_or_cannot_be_are_refused() {
        // An array of u64 whose byte size overflows.
        let mut f = header(1);
        key(&mut f, "big", 9);
        f.extend(10u32.to_le_bytes());
        f.extend((u64::MAX / 4).to_le_bytes());
        assert_eq!(
            refused(&f),
            format!("an array of {} items of 8 bytes", u64::MAX / 4)
        );
        // Shape values an estimate would multiply past any memory.
        let mut f = header(4);
        arch(&mut f);
        kv_u64(&mut f, "llama.block_count", u64::MAX);
        kv_u64(&mut f, "llama.embedding_length", 1 << 62);
        kv_int(&mut f, "llama.attention.head_count", 1);
        assert_eq!(
            refused(&f),
            format!("llama.block_count {} exceeds 65536", u64::MAX)
        );
        assert_eq!(
            refused(&header(u64::MAX)),
            format!("{} key-value pairs (the limit is 65536)", u64::MAX)
        );
        let mut f = header(1);
        key(&mut f, "s", 8);
        f.extend(u64::MAX.to_le_bytes());
        assert_eq!(
            refused(&f),
            format!("a string of {} bytes (the limit is 1048576)", u64::MAX)
        );
        // The per-layer size saturates instead of wrapping.
        let wide = TextShape {
            embedding: u64::MAX,
            heads: 1,
            kv_heads: u64::MAX,
            ..Default::default()
        };
        assert_eq!(wide.kv_bytes_per_token_layer(), u64::MAX);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Any bytes: an answer (never a panic), and never more read than
        /// there is.
        #[test]
        fn any_bytes_are_answered_and_read_at_most_once(
            tail in proptest::collection::vec(any::<u8>(), 0..4096),
            kvs in 0u64..64,
        ) {
            let mut f = header(kvs);
            f.extend(&tail);
            let (_, consumed) = parse(&f);
            prop_assert!(consumed <= f.len() as u64);
        }

        /// Headers made of well-formed pairs with random types and sizes:
        /// an answer, bounded by the input.
        #[test]
        fn random_pairs_are_answered(
            pairs in proptest::collection::vec((0u32..14, any::<u64>(), any::<u32>()), 0..16),
        ) {
            let mut f = header(pairs.len() as u64);
            for (i, (typ, n, v)) in pairs.iter().enumerate() {
                key(&mut f, &format!("k{i}"), *typ);
                f.extend(typ.to_le_bytes());
                f.extend((n % 5).to_le_bytes());
                f.extend(v.to_le_bytes());
            }
            let (_, consumed) = parse(&f);
            prop_assert!(consumed <= f.len() as u64);
        }
    }
}
