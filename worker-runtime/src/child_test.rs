//! Tests that change the process itself (capabilities, no_new_privs,
//! seccomp, Landlock) run in a child: this test binary started again with
//! one test selected and a variable set, so the test runner keeps what it
//! holds.

use std::ffi::OsStr;
use std::process::Output;

/// Runs the test `name` (its full path, e.g. `caps::tests::x`) alone in a
/// child of this test binary with `env` set; its output.
pub(crate) fn run(name: &str, env: &[(&str, &OsStr)]) -> Output {
    std::process::Command::new(std::env::current_exe().expect("test executable"))
        .args(["--exact", name, "--nocapture", "--test-threads=1"])
        .envs(env.iter().copied())
        .output()
        .expect("child test process")
}

/// Asserts that the child's one test passed, showing its output when not.
pub(crate) fn passed(out: &Output) {
    assert!(
        out.status.success(),
        "{:?}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("1 passed"));
}
