//! `sidecar`: parse the config, set up logging, run until SIGTERM/SIGINT.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;
use supervisor::{Cli, Config};

fn main() -> ExitCode {
    ipc::malloc::keep_freed_memory();
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_env("SIDECAR_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use std::io::IsTerminal;
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    if cli.log_json {
        fmt.json().init();
    } else {
        fmt.init();
    }
    let config = match Config::load(&cli) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("{e}");
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!("runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // The handlers are in place before the supervisor says it listens: a
    // SIGTERM right after that line stops it gracefully, not by default.
    let shutdown = {
        let _in = rt.enter();
        shutdown_signal()
    };
    match rt.block_on(supervisor::app::run(config, shutdown)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            ExitCode::FAILURE
        }
    }
}

/// Registers for SIGTERM and SIGINT now (inside the runtime) and returns
/// the future that completes on the first.
fn shutdown_signal() -> impl std::future::Future<Output = ()> + Send + 'static {
    use tokio::signal::unix::{SignalKind, signal};
    let handlers = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    );
    async move {
        let (Ok(mut term), Ok(mut int)) = handlers else {
            tracing::error!("cannot listen for signals; running until killed");
            return std::future::pending().await;
        };
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM"),
            _ = int.recv() => tracing::info!("SIGINT"),
        }
    }
}
