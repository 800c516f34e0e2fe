//! `sidecarctl`: operate a running sidecar through its control socket
//! (see `supervisor::ctl`).
#![forbid(unsafe_code)]
#![allow(clippy::print_stdout)] // Its output is the point.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = supervisor::ctl::Cli::parse();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sidecarctl: runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(supervisor::ctl::run(cli))
}
