//! The few GGUF header keys the memory guard needs to estimate a text
//! model's KV cache before any worker has loaded it (the supervisor does
//! not link llama.cpp).

use std::io::{BufReader, Read};
use std::path::Path;

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
    /// Bytes of K plus V per token per layer (f16).
    pub fn kv_bytes_per_token_layer(&self) -> u64 {
        let head_dim = self.embedding.checked_div(self.heads).unwrap_or(0);
        2 * head_dim * self.kv_heads * 2
    }
}

#[derive(Debug)]
enum Value {
    Int(u64),
    Other,
    Array(u64),
    Text(String),
}

struct Reader<R: Read>(R);

impl<R: Read> Reader<R> {
    fn bytes<const N: usize>(&mut self) -> std::io::Result<[u8; N]> {
        let mut b = [0u8; N];
        self.0.read_exact(&mut b)?;
        Ok(b)
    }
    fn u32(&mut self) -> std::io::Result<u32> {
        Ok(u32::from_le_bytes(self.bytes()?))
    }
    fn u64(&mut self) -> std::io::Result<u64> {
        Ok(u64::from_le_bytes(self.bytes()?))
    }
    fn string(&mut self) -> std::io::Result<String> {
        let n = self.u64()?;
        if n > 1 << 20 {
            return Err(std::io::Error::other("string longer than 1 MiB"));
        }
        let mut b = vec![0u8; n as usize];
        self.0.read_exact(&mut b)?;
        Ok(String::from_utf8_lossy(&b).into_owned())
    }
    fn skip(&mut self, n: u64) -> std::io::Result<()> {
        std::io::copy(&mut (&mut self.0).take(n), &mut std::io::sink())?;
        Ok(())
    }
    fn value(&mut self, typ: u32) -> std::io::Result<Value> {
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
            9 => {
                let item = self.u32()?;
                let n = self.u64()?;
                let width = match item {
                    0 | 1 | 7 => Some(1),
                    2 | 3 => Some(2),
                    4..=6 => Some(4),
                    10..=12 => Some(8),
                    _ => None,
                };
                match width {
                    Some(w) => self.skip(n * w)?,
                    None => {
                        for _ in 0..n {
                            self.value(item)?;
                        }
                    }
                }
                Value::Array(n)
            }
            t => {
                return Err(std::io::Error::other(format!(
                    "unknown GGUF value type {t}"
                )));
            }
        })
    }
}

/// Reads the shape from a GGUF file's header; `None` for files that are
/// not GGUF or lack the keys.
pub fn text_shape(path: &Path) -> Option<TextShape> {
    let file = std::fs::File::open(path).ok()?;
    read_shape(BufReader::with_capacity(1 << 16, file)).ok()?
}

fn read_shape(r: impl Read) -> std::io::Result<Option<TextShape>> {
    let mut r = Reader(r);
    if &r.bytes::<4>()? != b"GGUF" {
        return Ok(None);
    }
    let _version = r.u32()?;
    let _tensors = r.u64()?;
    let kvs = r.u64()?;
    let mut arch = String::new();
    let mut ints = std::collections::HashMap::new();
    let mut vocab = 0;
    for _ in 0..kvs.min(1 << 16) {
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
    use super::*;

    fn kv_int(out: &mut Vec<u8>, key: &str, v: u32) {
        out.extend((key.len() as u64).to_le_bytes());
        out.extend(key.as_bytes());
        out.extend(4u32.to_le_bytes());
        out.extend(v.to_le_bytes());
    }

    #[test]
    fn a_small_header_is_read() {
        let mut f = b"GGUF".to_vec();
        f.extend(3u32.to_le_bytes());
        f.extend(0u64.to_le_bytes());
        f.extend(7u64.to_le_bytes());
        let arch = "general.architecture";
        f.extend((arch.len() as u64).to_le_bytes());
        f.extend(arch.as_bytes());
        f.extend(8u32.to_le_bytes());
        f.extend(5u64.to_le_bytes());
        f.extend(b"llama");
        kv_int(&mut f, "llama.block_count", 30);
        kv_int(&mut f, "llama.embedding_length", 576);
        kv_int(&mut f, "llama.attention.head_count", 9);
        kv_int(&mut f, "llama.attention.head_count_kv", 3);
        kv_int(&mut f, "llama.context_length", 8192);
        let toks = "tokenizer.ggml.tokens";
        f.extend((toks.len() as u64).to_le_bytes());
        f.extend(toks.as_bytes());
        f.extend(9u32.to_le_bytes());
        f.extend(8u32.to_le_bytes());
        f.extend(2u64.to_le_bytes());
        for t in ["<s>", "hi"] {
            f.extend((t.len() as u64).to_le_bytes());
            f.extend(t.as_bytes());
        }
        let shape = read_shape(&f[..]).unwrap().unwrap();
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
        assert_eq!(read_shape(&b"NOPE...."[..]).unwrap(), None);
    }
}
