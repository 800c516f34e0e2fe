//! `worker-lite`: started by the sidecar supervisor with one end of an ipc
//! channel (`SIDECAR_IPC`) and the LiteRT runtime's path
//! (`SIDECAR_LITERT_LIB`). Logs go to stderr, which the supervisor reads.
//! With arguments (`--model m.tflite`) it runs standalone and prints its
//! answer (see `worker_lite::standalone`).
#![forbid(unsafe_code)]

use worker_lite::standalone;

fn main() -> std::process::ExitCode {
    worker_runtime::main(&worker_runtime::Binary {
        name: "worker-lite",
        log_filter: "info",
        setup: || {},
        usage: standalone::USAGE,
        parse: standalone::parse,
        standalone: standalone::run,
        family: worker_lite::Lite::default,
    })
}
