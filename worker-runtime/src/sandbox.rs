//! The worker's sandbox, entered once at start: before the channel's
//! threads start (Landlock, like no_new_privs and seccomp, binds the
//! calling thread and the threads and processes it starts later) and
//! before any model file is read (a runtime treats a model file as code).
//!
//! Order: capabilities (`caps`), no_new_privs and resource limits
//! ([`crate::privilege`]), Landlock ([`landlock`]), seccomp last (it may
//! forbid the calls that set up the rest). The worker's uid and gid are
//! set by the supervisor at spawn (`[workers] uid`/`gid`). Each step adds
//! to one [`Report`], which the worker logs and sends in its HELLO.

pub mod landlock;
mod report;

use std::os::fd::OwnedFd;

use sidecar_proto::v1::ModelFamily;

pub use report::Report;

/// Set to `1` by the supervisor when the model asks for a GPU (text
/// `gpu_layers` ≠ 0, lite accelerator GPU): the GPU device nodes are then
/// opened read-write; otherwise they are out of reach.
pub const GPU_ENV: &str = "SIDECAR_SANDBOX_GPU";

/// What entering the sandbox leaves: the report, and the files the
/// supervisor opened for this worker (its model first), which stay open
/// for the life of the process (`/proc/self/fd/N` names them).
#[derive(Debug)]
pub struct Entered {
    /// What holds and what is missing.
    pub report: Report,
    /// The inherited files (`ipc::inherited_files`).
    pub files: Vec<OwnedFd>,
}

/// Enters the sandbox of a `family` worker; never fails: what this system
/// refuses is reported as missing, and the worker goes on.
pub fn enter(family: ModelFamily) -> Entered {
    let mut report = Report::default();
    report.applied(identity());
    let (caps, missing) = crate::caps::drop_all();
    step(&mut report, caps, missing);
    report.merge(crate::privilege::drop_privileges());
    let files = ipc::inherited_files().unwrap_or_else(|e| {
        report.missing(format!("model descriptor: {e}"));
        Vec::new()
    });
    let plan = landlock::Plan::from_env(&files);
    report.merge(landlock::restrict(&plan));
    step(
        &mut report,
        format!("seccomp: the {} allow-list", family.as_str_name()),
        crate::seccomp::install_configured(family),
    );
    Entered { report, files }
}

/// Notes `done` as applied when a step left nothing `missing`, else what it
/// left.
fn step(report: &mut Report, done: impl Into<String>, missing: Vec<String>) {
    if missing.is_empty() {
        report.applied(done);
    }
    for m in missing {
        report.missing(m);
    }
}

/// "uid 65534 gid 65534 groups []": who the worker runs as.
fn identity() -> String {
    let groups = nix::unistd::getgroups()
        .map(|g| g.iter().map(|g| g.as_raw().to_string()).collect::<Vec<_>>())
        .unwrap_or_default();
    format!(
        "uid {} gid {} groups [{}]",
        nix::unistd::getuid(),
        nix::unistd::getgid(),
        groups.join(",")
    )
}
