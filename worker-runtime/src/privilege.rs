//! What a worker gives up before it reads a model file (which its native
//! runtime treats as code): the right to gain privileges (no_new_privs: no
//! exec can raise them, and a seccomp filter may be added later without
//! privilege), core dumps (a crash does not write the model's and the
//! requests' memory to disk), and descriptors past a bound.

use nix::sys::resource::{Resource, getrlimit, setrlimit};

use crate::sandbox::Report;

/// Descriptors a worker may hold open: its channel, its model and what its
/// runtime opens, with room to spare.
pub const MAX_FILES: u64 = 4096;

/// Drops what the worker does not need; the report says what holds and
/// what could not be dropped (an old kernel, a container that forbids it).
pub fn drop_privileges() -> Report {
    let mut report = Report::default();
    match nix::sys::prctl::set_no_new_privs() {
        Ok(()) => report.applied("no_new_privs"),
        Err(e) => report.missing(format!("no_new_privs: {e}")),
    }
    match setrlimit(Resource::RLIMIT_CORE, 0, 0) {
        Ok(()) => report.applied("RLIMIT_CORE 0"),
        Err(e) => report.missing(format!("RLIMIT_CORE 0: {e}")),
    }
    let files = getrlimit(Resource::RLIMIT_NOFILE)
        .map(|(_, hard)| hard.min(MAX_FILES))
        .and_then(|n| setrlimit(Resource::RLIMIT_NOFILE, n, n).map(|()| n));
    match files {
        Ok(n) => report.applied(format!("RLIMIT_NOFILE {n}")),
        Err(e) => report.missing(format!("RLIMIT_NOFILE {MAX_FILES}: {e}")),
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs in a child process of its own (this test binary started again),
    /// so the test runner keeps its privileges.
    #[test]
    fn a_worker_gives_up_new_privileges_core_dumps_and_descriptors() {
        const CHILD: &str = "WORKER_RUNTIME_PRIVILEGE_CHILD";
        if std::env::var_os(CHILD).is_some() {
            let report = drop_privileges();
            assert!(report.missing.is_empty(), "{report:?}");
            assert_eq!(
                report.applied,
                ["no_new_privs", "RLIMIT_CORE 0", "RLIMIT_NOFILE 4096"]
            );
            assert!(nix::sys::prctl::get_no_new_privs().expect("prctl"));
            assert_eq!(getrlimit(Resource::RLIMIT_CORE).expect("core"), (0, 0));
            let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("nofile");
            assert!(soft <= MAX_FILES && hard <= MAX_FILES, "{soft} {hard}");
            return;
        }
        crate::child_test::passed(&crate::child_test::run(
            "privilege::tests::a_worker_gives_up_new_privileges_core_dumps_and_descriptors",
            &[(CHILD, "1".as_ref())],
        ));
    }
}
