//! Loading a GGUF file into llama.cpp, and what is read from the model
//! alone (tokenizing, what kind of model it is).
//!
//! The worker serves one model for its whole life, so the model is leaked
//! to a `'static` borrow that a context can hold.

use std::path::Path;
use std::sync::OnceLock;

use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::model::params::LlamaModelParams;
use sidecar_proto::v1::{TextOptions, TokenizeRequest, TokenizeResponse};

use worker_runtime::{Code, WorkerError};

static BACKEND: OnceLock<LlamaBackend> = OnceLock::new();

/// The llama.cpp backend, initialised once per process.
pub fn backend() -> Result<&'static LlamaBackend, WorkerError> {
    if let Some(b) = BACKEND.get() {
        return Ok(b);
    }
    let b = LlamaBackend::init()
        .map_err(|e| WorkerError::new(Code::Internal, format!("llama.cpp backend: {e}")))?;
    Ok(BACKEND.get_or_init(|| b))
}

/// Threads to use when the model's options name none: the cores this
/// process may run on.
pub fn default_threads() -> u32 {
    std::thread::available_parallelism().map_or(1, |n| n.get() as u32)
}

/// The thread count for these options.
pub fn threads(options: &TextOptions) -> i32 {
    let n = match options.threads {
        0 => default_threads(),
        n => n,
    };
    n as i32
}

/// Checks the GGUF magic so that a wrong file gets a clear reason.
fn check_gguf(path: &Path, name: &str) -> Result<(), WorkerError> {
    use std::io::Read;
    let mut magic = [0u8; 4];
    let read = std::fs::File::open(path).and_then(|mut f| f.read_exact(&mut magic));
    match read {
        Err(e) => Err(WorkerError::new(
            Code::Unavailable,
            format!("cannot read model file {name}: {e}"),
        )),
        Ok(()) if &magic != b"GGUF" => Err(WorkerError::new(
            Code::Unavailable,
            format!(
                "{name} is not a GGUF model file (starts with {:02x?}, expected \"GGUF\")",
                magic
            ),
        )),
        Ok(()) => Ok(()),
    }
}

/// A model loaded for the life of the process.
#[derive(Debug, Clone, Copy)]
pub struct Model {
    /// The llama.cpp model.
    pub llama: &'static LlamaModel,
    /// Layers asked to run on the GPU (`u32::MAX`: all).
    pub gpu_layers: u32,
}

impl Model {
    /// Reads the file at `path` (`/proc/self/fd/N`: the descriptor the
    /// supervisor handed over); `name` is what messages call it.
    pub fn load(path: &Path, name: &str, options: &TextOptions) -> Result<Model, WorkerError> {
        check_gguf(path, name)?;
        let backend = backend()?;
        let gpu_layers = match options.gpu_layers {
            Some(n) if n < 0 => u32::MAX,
            Some(n) => n as u32,
            None => 0,
        };
        let params = LlamaModelParams::default().with_n_gpu_layers(gpu_layers);
        let model = LlamaModel::load_from_file(backend, path, &params).map_err(|e| {
            WorkerError::new(
                Code::Unavailable,
                format!("llama.cpp could not load {name}: {e}"),
            )
        })?;
        Ok(Model {
            llama: Box::leak(Box::new(model)),
            gpu_layers,
        })
    }

    /// The architecture named in the file ("llama", "bert", ...).
    pub fn architecture(&self) -> String {
        self.llama
            .meta_val_str("general.architecture")
            .unwrap_or_default()
    }

    /// A metadata value of this architecture ("{arch}.{key}").
    fn arch_value(&self, key: &str) -> Option<String> {
        self.llama
            .meta_val_str(&format!("{}.{key}", self.architecture()))
            .ok()
    }

    /// The file describes an embedding model: it declares a pooling type,
    /// or bidirectional (non-causal) attention.
    pub fn is_embedding(&self) -> bool {
        self.arch_value("pooling_type").is_some()
            || self.arch_value("attention.causal").as_deref() == Some("false")
    }

    /// The longest input the model was trained to embed, in tokens: the
    /// converter's `sentence_transformers.max_seq_length` when present
    /// (256 for all-MiniLM-L6-v2), else the training context.
    pub fn max_input_tokens(&self) -> u32 {
        self.llama
            .meta_val_str("sentence_transformers.max_seq_length")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| self.llama.n_ctx_train())
    }

    /// Tokenizes text with the model's vocabulary.
    pub fn tokenize(&self, req: &TokenizeRequest) -> TokenizeResponse {
        let vocab = self.llama.vocab();
        let tokens = vocab.tokenize(req.text.as_bytes(), req.add_special.unwrap_or(true), true);
        let pieces = if req.with_pieces {
            tokens
                .iter()
                .map(|t| {
                    String::from_utf8_lossy(&vocab.token_to_piece(*t, true, None)).into_owned()
                })
                .collect()
        } else {
            Vec::new()
        };
        TokenizeResponse {
            tokens: tokens.iter().map(|t| t.0).collect(),
            pieces,
        }
    }
}
