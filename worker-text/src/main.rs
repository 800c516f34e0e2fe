//! `worker-text`: started by the sidecar supervisor with one end of an ipc
//! channel (`SIDECAR_IPC`). Logs go to stderr, which the supervisor reads.
//! With arguments (`--model m.gguf --prompt ...`) it runs standalone and
//! prints its answer (see `worker_text::standalone`).
#![forbid(unsafe_code)]

use worker_text::standalone;

fn main() -> std::process::ExitCode {
    worker_runtime::main(&worker_runtime::Binary {
        name: "worker-text",
        // llama.cpp's load chatter is kept at warnings unless asked for.
        log_filter: "info,llama-cpp-2=warn",
        setup: || llama_cpp_2::send_logs_to_tracing(llama_cpp_2::LogOptions::default()),
        usage: standalone::USAGE,
        parse: standalone::parse,
        standalone: standalone::run,
        family: worker_text::Text::default,
    })
}
