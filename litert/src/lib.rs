//! `litert`: the LiteRT C API of `libLiteRt.so` (PyPI `ai-edge-litert`
//! 2.3.0), loaded at run time with `libloading`, and safe owning handles
//! over it: [`Runtime`] (the environment), [`Model`] (a `.tflite` file
//! read), [`Compiled`] (compiled for CPU/XNNPACK with a thread count, one
//! managed input and output buffer per tensor, reused by every run).
//!
//! Owns: the FFI (`api`, `runtime`, `compiled`: the only unsafe code
//! outside `ipc`, each block with its `// SAFETY:` comment, each struct
//! layout the one the LiteRT headers assert) and where the runtime library
//! is found ([`RUNTIME_ENV`], [`runtime_path`]). `worker-lite` and
//! `worker-vision` use it as equals.
//!
//! Must not: know about the sidecar's protocol, gRPC or workers: it takes
//! paths and bytes and answers with [`LiteError`]; mapping tensors onto
//! the API's types and errors onto status codes is each worker's business.

mod api;
mod compiled;
mod runtime;

use std::path::PathBuf;

pub use api::MAX_RANK;
pub use compiled::{Compiled, HW_CPU, HW_GPU};
pub use runtime::{ElementType, Model, Quant, Runtime, TensorDesc};

/// Environment variable naming `libLiteRt.so` (the supervisor sets it from
/// its `lite_runtime` setting).
pub const RUNTIME_ENV: &str = "SIDECAR_LITERT_LIB";

/// Where `libLiteRt.so` is when [`RUNTIME_ENV`] is not set: the
/// `runtime/litert/` folder `scripts/setup.sh` fills, relative to the
/// working directory.
pub const DEFAULT_RUNTIME: &str = "runtime/litert/libLiteRt.so";

/// What can go wrong in the LiteRT wrapper.
#[derive(Debug, thiserror::Error)]
pub enum LiteError {
    /// The runtime refused (its status and what we asked).
    #[error("{0}")]
    Runtime(String),
    /// A bad argument from our side.
    #[error("{0}")]
    Invalid(String),
}

/// Where `libLiteRt.so` is: [`RUNTIME_ENV`] when set, else
/// [`DEFAULT_RUNTIME`].
pub fn runtime_path() -> PathBuf {
    runtime_path_from(std::env::var_os(RUNTIME_ENV))
}

fn runtime_path_from(setting: Option<std::ffi::OsString>) -> PathBuf {
    setting.map_or_else(|| PathBuf::from(DEFAULT_RUNTIME), PathBuf::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_runtime_is_the_setting_or_the_setup_folder() {
        assert_eq!(
            runtime_path_from(Some("/opt/lite/libLiteRt.so".into())),
            PathBuf::from("/opt/lite/libLiteRt.so")
        );
        assert_eq!(runtime_path_from(None), PathBuf::from(DEFAULT_RUNTIME));
    }
}
