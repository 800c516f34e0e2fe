//! Loading a `.tflite` model: the runtime library (`litert::runtime_path`),
//! the accelerator asked for, compile, tensor checks and one warm-up run,
//! with LiteRT's log captured for the reasons of a refusal.

use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use litert::{Compiled, HW_CPU, HW_GPU, LiteError, Runtime};
use sidecar_proto::v1::{Accelerator, LiteOptions};
use sidecar_proto::worker::Load;
use worker_runtime::{Code, WorkerError};

use crate::tensor::check_servable;

/// The model being served.
#[derive(Debug)]
pub struct Served {
    /// The supervisor's name for it.
    pub model_id: String,
    /// Compiled, with its buffers.
    pub compiled: Compiled,
    /// "cpu" or "gpu".
    pub accelerator: &'static str,
}

/// A LiteRT failure as a call's error: a bad argument from our side is
/// INVALID_ARGUMENT, the runtime's refusal INTERNAL.
pub fn lite_error(e: LiteError) -> WorkerError {
    match e {
        LiteError::Runtime(m) => WorkerError::internal(m),
        LiteError::Invalid(m) => WorkerError::invalid(m),
    }
}

/// Runs `f` with the process's stderr captured (LiteRT reports why a load
/// failed only in its log), then copies what it wrote to the real stderr.
fn with_captured_stderr<T>(f: impl FnOnce() -> T) -> (T, String) {
    let capture = || -> nix::Result<(std::os::fd::OwnedFd, std::os::fd::OwnedFd)> {
        let saved = nix::unistd::dup(std::io::stderr())?;
        let mem =
            nix::sys::memfd::memfd_create(c"litert-log", nix::sys::memfd::MFdFlags::MFD_CLOEXEC)?;
        nix::unistd::dup2_stderr(&mem)?;
        Ok((saved, mem))
    };
    let Ok((saved, mem)) = capture() else {
        return (f(), String::new());
    };
    let out = f();
    let _ = nix::unistd::dup2_stderr(&saved);
    let mut file = std::fs::File::from(mem);
    let mut text = String::new();
    let _ = file.rewind().and_then(|()| file.read_to_string(&mut text));
    let _ = std::io::stderr().write_all(text.as_bytes());
    (out, text)
}

/// The runtime's error lines, for a failed load's message.
fn reason(log: &str) -> String {
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("ERROR"))
        .map(str::trim)
        .collect();
    if lines.is_empty() {
        String::new()
    } else {
        format!(" ({})", lines.join("; "))
    }
}

/// Loads, compiles and warms up the model `load` names.
pub fn load_model(load: &Load) -> Result<Served, WorkerError> {
    let options = match &load.options {
        Some(sidecar_proto::worker::load::Options::Lite(o)) => *o,
        _ => LiteOptions::default(),
    };
    let lib = litert::runtime_path();
    if !lib.is_file() {
        return Err(WorkerError::precondition(format!(
            "the LiteRT runtime {} is missing (run scripts/setup.sh)",
            lib.display()
        )));
    }
    let gpu = matches!(
        Accelerator::try_from(options.accelerator),
        Ok(Accelerator::Gpu)
    );
    let gpu_plugin = gpu_accelerator(&lib);
    let (hw, accelerator) = match (gpu, gpu_plugin.is_some(), options.allow_fallback) {
        (false, _, _) => (HW_CPU, "cpu"),
        (true, true, _) => (HW_GPU, "gpu"),
        (true, false, true) => {
            tracing::warn!("no LiteRT GPU accelerator on this host; running on the CPU as allowed");
            (HW_CPU, "cpu")
        }
        (true, false, false) => {
            return Err(WorkerError::precondition(format!(
                "accelerator GPU: no LiteRT GPU accelerator next to {} on this host; load with accelerator CPU, or set allow_fallback",
                lib.display()
            )));
        }
    };
    let threads = options.threads.max(1);
    let path = Path::new(&load.path);
    let name = worker_runtime::model_name(load);
    tracing::info!(model = %load.model_id, path = %name, opened = %load.path, threads, accelerator, "loading");
    // Everything LiteRT does at load time (read, compile, the first run
    // that allocates the tensors) reports its reasons only in its log.
    let (compiled, log) = with_captured_stderr(|| -> Result<Compiled, WorkerError> {
        let rt = Runtime::load(&lib).map_err(lite_error)?;
        let mut compiled = rt
            .model(path)
            .and_then(|m| m.compile(hw, threads))
            .map_err(lite_error)?;
        for d in &compiled.input_desc {
            check_servable(d, "input").map_err(WorkerError::invalid)?;
        }
        for d in &compiled.output_desc {
            check_servable(d, "output").map_err(WorkerError::invalid)?;
        }
        warm_up(&mut compiled)?;
        Ok(compiled)
    });
    let compiled = compiled.map_err(|e| {
        let code = match e.code {
            _ if gpu => Code::FailedPrecondition,
            Code::InvalidArgument => Code::InvalidArgument,
            _ => Code::Unavailable,
        };
        WorkerError::new(
            code,
            format!(
                "LiteRT could not load {}: {}{}",
                name,
                e.message,
                reason(&log)
            ),
        )
    })?;
    Ok(Served {
        model_id: load.model_id.clone(),
        compiled,
        accelerator,
    })
}

/// A GPU accelerator library shipped next to `libLiteRt.so`, if any.
fn gpu_accelerator(lib: &Path) -> Option<PathBuf> {
    let dir = lib.parent()?;
    [
        "libLiteRtGpuAccelerator.so",
        "libLiteRtWebGpuAccelerator.so",
    ]
    .iter()
    .map(|n| dir.join(n))
    .find(|p| p.is_file())
}

/// One inference on zeros, so that READY means the model has run once
/// (LiteRT allocates the tensors, and finds missing ops, on the first run).
fn warm_up(c: &mut Compiled) -> Result<(), WorkerError> {
    for i in 0..c.input_desc.len() {
        c.write_input(i, |b| b.fill(0)).map_err(lite_error)?;
    }
    c.run()
        .map_err(|e| WorkerError::unavailable(format!("the model failed its first run: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_names_the_runtime_error_lines() {
        let log = "INFO: reading\nERROR: bad op FOO\n  ERROR: node 3 failed  \n";
        assert_eq!(reason(log), " (ERROR: bad op FOO; ERROR: node 3 failed)");
        assert_eq!(reason("INFO: fine\n"), "");
    }

    #[test]
    fn wrapper_errors_keep_their_meaning() {
        let e = lite_error(LiteError::Invalid("model path contains a NUL byte".into()));
        assert_eq!(e.code, Code::InvalidArgument);
        assert_eq!(
            lite_error(LiteError::Runtime("run".into())).code,
            Code::Internal
        );
    }
}
