//! `worker-vision`: started by the sidecar supervisor with one end of an
//! ipc channel (`SIDECAR_IPC`). Logs go to stderr, which the supervisor
//! reads. With arguments (`--model m.tflite --image f.png`) it runs
//! standalone and prints its answer (see `worker_vision::standalone`).
#![forbid(unsafe_code)]

use worker_vision::standalone;

fn main() -> std::process::ExitCode {
    worker_runtime::main(&worker_runtime::Binary {
        name: "worker-vision",
        log_filter: "info",
        setup: || {},
        usage: standalone::USAGE,
        parse: standalone::parse,
        standalone: standalone::run,
        family: worker_vision::Vision::default,
    })
}
