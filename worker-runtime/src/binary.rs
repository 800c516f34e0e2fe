//! What every worker binary's `main` does: keep freed memory for large
//! payloads, log to stderr (which the supervisor reads), then serve the
//! channel the supervisor gave it, or run standalone when started by hand.

use std::process::ExitCode;
use std::sync::Arc;

use crate::family::Family;
use crate::serve::serve_sandboxed;

/// The environment variable holding the workers' log filter
/// (`tracing_subscriber`'s `EnvFilter` syntax).
pub const LOG_ENV: &str = "SIDECAR_WORKER_LOG";

/// What a worker binary tells [`main`]; `A` is its standalone arguments.
#[derive(Debug)]
pub struct Binary<F, A> {
    /// The binary's name, in messages ("worker-text").
    pub name: &'static str,
    /// The log filter when [`LOG_ENV`] is unset or unreadable.
    pub log_filter: &'static str,
    /// Runs once logging is set up (e.g. route a native library's log
    /// into `tracing`).
    pub setup: fn(),
    /// The usage text printed after a command-line error.
    pub usage: &'static str,
    /// Parses the standalone command line (without the program name).
    pub parse: fn(&[String]) -> Result<A, String>,
    /// Runs standalone; `Err` says what failed.
    pub standalone: fn(&A) -> Result<(), String>,
    /// The family, before any model is loaded.
    pub family: fn() -> F,
}

/// How a process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Started by the supervisor: serve its channel.
    Serve,
    /// Started by hand (arguments, or no channel in the environment).
    Standalone,
}

fn mode(args: &[String], has_channel: bool) -> Mode {
    if args.is_empty() && has_channel {
        Mode::Serve
    } else {
        Mode::Standalone
    }
}

/// The whole of a worker's `main`. Exit status: 0 when the supervisor went
/// away (or a standalone run succeeded), 1 when serving or the standalone
/// run failed, 2 for a usage error or a process not started by the
/// supervisor.
pub fn main<F: Family, A>(b: &Binary<F, A>) -> ExitCode {
    ipc::malloc::keep_freed_memory();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .without_time()
        .with_target(false)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env(LOG_ENV)
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(b.log_filter)),
        )
        .init();
    (b.setup)();
    let args: Vec<String> = std::env::args().skip(1).collect();
    if mode(&args, std::env::var_os(ipc::ENV_VAR).is_some()) == Mode::Standalone {
        return ExitCode::from(standalone(b, &args));
    }
    // Before the channel's threads start (each thread keeps its own
    // capabilities, no_new_privs and Landlock domain) and before any model
    // file is read; `sandbox.files` (the model's descriptor) stays open
    // until exit. Seccomp is the last step (on every thread).
    let sandbox = crate::sandbox::enter(F::FAMILY);
    if !sandbox.report.missing.is_empty() {
        tracing::warn!(
            "sandbox: kept what this system would not let go: {}",
            sandbox.report.missing.join("; ")
        );
    }
    let chan = match ipc::BlockingChannel::from_env() {
        Ok(c) => Arc::new(c),
        Err(e) => {
            tracing::error!("{} must be started by the sidecar supervisor: {e}", b.name);
            return ExitCode::from(2);
        }
    };
    match serve_sandboxed(chan, (b.family)(), &sandbox.report) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{} stopped: {e}", b.name);
            ExitCode::FAILURE
        }
    }
}

/// Runs standalone; the exit status.
fn standalone<F, A>(b: &Binary<F, A>, args: &[String]) -> u8 {
    let parsed = match (b.parse)(args) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{}: {e}\n{}", b.name, b.usage);
            return 2;
        }
    };
    match (b.standalone)(&parsed) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("{}: {e}", b.name);
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use sidecar_proto::v1::ModelFamily;
    use sidecar_proto::worker::{Load, Loaded};

    use super::*;
    use crate::error::WorkerError;
    use crate::family::{Call, Context};

    /// A family that is never served here.
    struct Nothing;

    impl Family for Nothing {
        const FAMILY: ModelFamily = ModelFamily::Lite;
        const VERSION: &'static str = "0";
        const CAPABILITIES: &'static [&'static str] = &[];
        fn load(&mut self, _: &Load) -> Result<Loaded, WorkerError> {
            Err(WorkerError::unimplemented("no models"))
        }
        fn request(&mut self, _: &mut Context, _: Call) -> Result<(), WorkerError> {
            Err(WorkerError::unimplemented("no calls"))
        }
    }

    fn binary() -> Binary<Nothing, String> {
        Binary {
            name: "worker-test",
            log_filter: "info",
            setup: || {},
            usage: "usage: worker-test --ok|--fail",
            parse: |args| match args {
                [flag] if flag == "--ok" || flag == "--fail" => Ok(flag.clone()),
                _ => Err("one flag".into()),
            },
            standalone: |flag| {
                if flag == "--ok" {
                    Ok(())
                } else {
                    Err("asked to fail".into())
                }
            },
            family: || Nothing,
        }
    }

    fn args(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn arguments_or_no_channel_mean_standalone() {
        assert_eq!(mode(&[], true), Mode::Serve);
        assert_eq!(mode(&[], false), Mode::Standalone);
        assert_eq!(mode(&args(&["--model", "m"]), true), Mode::Standalone);
    }

    #[test]
    fn standalone_exit_codes() {
        let b = binary();
        assert_eq!(standalone(&b, &args(&["--ok"])), 0);
        assert_eq!(standalone(&b, &args(&["--fail"])), 1);
        assert_eq!(standalone(&b, &args(&[])), 2, "usage error");
        assert_eq!(standalone(&b, &args(&["--ok", "--fail"])), 2);
    }
}
