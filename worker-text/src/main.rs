//! `worker-text`: started by the sidecar supervisor with one end of an ipc
//! channel (`SIDECAR_IPC`). Logs go to stderr, which the supervisor reads.
//! With arguments (`--model m.gguf --prompt ...`) it runs standalone and
//! prints its answer (see `worker_text::standalone`).
#![forbid(unsafe_code)]

use std::process::ExitCode;
use std::sync::Arc;

fn main() -> ExitCode {
    ipc::malloc::keep_freed_memory();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .without_time()
        .with_target(false)
        .with_env_filter(
            // llama.cpp's load chatter is kept at warnings unless asked for.
            tracing_subscriber::EnvFilter::try_from_env("SIDECAR_WORKER_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,llama-cpp-2=warn")),
        )
        .init();
    llama_cpp_2::send_logs_to_tracing(llama_cpp_2::LogOptions::default());
    let args: Vec<String> = std::env::args().skip(1).collect();
    if !args.is_empty() || std::env::var_os(ipc::ENV_VAR).is_none() {
        let parsed = match worker_text::standalone::parse(&args) {
            Ok(a) => a,
            Err(e) => {
                eprintln!("worker-text: {e}\n{}", worker_text::standalone::USAGE);
                return ExitCode::from(2);
            }
        };
        return match worker_text::standalone::run(&parsed) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("worker-text: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let chan = match ipc::BlockingChannel::from_env() {
        Ok(c) => Arc::new(c),
        Err(e) => {
            tracing::error!("worker-text must be started by the sidecar supervisor: {e}");
            return ExitCode::from(2);
        }
    };
    match worker_text::serve::serve(chan) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("worker-text stopped: {e}");
            ExitCode::FAILURE
        }
    }
}
