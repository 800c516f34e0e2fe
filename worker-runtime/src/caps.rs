//! A worker holds no capability: the bounding, ambient, inheritable,
//! permitted and effective sets are emptied before it reads a model file.
//! A worker started by a root supervisor (the tests, a container running as
//! root) would otherwise keep root's full set: raw sockets, `ptrace` of any
//! process, reading any file whatever its mode, loading kernel modules.
//! The bounding set goes first (dropping from it needs `CAP_SETPCAP`, which
//! the last step removes); an empty bounding set also means no later exec
//! could give any back (and exec is refused anyway: see [`crate::seccomp`]).

use caps::CapSet;

/// The `/proc/self/task/<tid>/status` lines that must read all zero.
const SETS: [&str; 5] = ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"];

/// Empties every capability set of every thread of this process; returns
/// what could not be emptied (for the `missing` list).
pub fn drop_all() -> Vec<String> {
    let mut missing = Vec::new();
    for (set, name) in [
        (CapSet::Bounding, "bounding"),
        (CapSet::Ambient, "ambient"),
        (CapSet::Inheritable, "inheritable"),
        // Permitted takes effective with it.
        (CapSet::Permitted, "permitted"),
    ] {
        if let Err(e) = caps::clear(None, set) {
            missing.push(format!("capabilities ({name} set): {e}"));
        }
    }
    if missing.is_empty()
        && let Err(held) = held_anywhere()
    {
        missing.push(held);
    }
    missing
}

/// `Ok` when every thread's capability sets read zero in `/proc`; the first
/// set that does not, or why `/proc` could not say.
fn held_anywhere() -> Result<(), String> {
    let tasks = std::fs::read_dir("/proc/self/task")
        .map_err(|e| format!("capabilities: cannot list /proc/self/task: {e}"))?;
    for task in tasks.flatten() {
        let path = task.path().join("status");
        let Ok(status) = std::fs::read_to_string(&path) else {
            // The thread ended since the listing.
            continue;
        };
        if let Some(line) = nonzero(&status) {
            return Err(format!(
                "capabilities: {} still reads {line:?}",
                path.display()
            ));
        }
    }
    Ok(())
}

/// The first capability line of a `status` text that is not all zero.
fn nonzero(status: &str) -> Option<&str> {
    status.lines().find(|line| {
        line.split_once(':').is_some_and(|(key, value)| {
            SETS.contains(&key) && value.trim().chars().any(|c| c != '0')
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_capability_lines_with_a_bit_set_count() {
        let zero = "Name:\tw\nCapInh:\t0000000000000000\nCapPrm:\t0000000000000000\n\
                    CapEff:\t0000000000000000\nCapBnd:\t0000000000000000\nCapAmb:\t0000000000000000\n\
                    NoNewPrivs:\t1\n";
        assert_eq!(nonzero(zero), None);
        let root = zero.replace("CapBnd:\t0000000000000000", "CapBnd:\t000001ffffffffff");
        assert_eq!(nonzero(&root), Some("CapBnd:\t000001ffffffffff"));
        assert_eq!(nonzero("Seccomp:\t2\nSigCgt:\t0000000000004000\n"), None);
    }

    /// Runs in a child process of its own (this test binary started
    /// again), so the test runner keeps its capabilities. Needs root (the
    /// test suite runs as root): with nothing to drop it proves nothing.
    #[test]
    fn every_set_is_emptied_and_a_thread_that_kept_its_own_is_seen() {
        const CHILD: &str = "WORKER_RUNTIME_CAPS_CHILD";
        if std::env::var_os(CHILD).is_some() {
            let own = || std::fs::read_to_string("/proc/thread-self/status").expect("status");
            assert!(
                nonzero(&own()).is_some(),
                "run as root: no capability to drop"
            );
            // Threads started before the drop (this one, the test
            // harness's) keep their own sets: the check must say so.
            let (tx, rx) = std::sync::mpsc::channel::<()>();
            let before = std::thread::spawn(move || rx.recv());
            let missing = drop_all();
            assert_eq!(nonzero(&own()), None, "{}", own());
            assert_eq!(missing.len(), 1, "{missing:?}");
            assert!(missing[0].contains("still reads \"Cap"), "{missing:?}");
            drop(tx);
            let _ = before.join();
            return;
        }
        let out = std::process::Command::new(std::env::current_exe().expect("exe"))
            .args([
                "--exact",
                "caps::tests::every_set_is_emptied_and_a_thread_that_kept_its_own_is_seen",
                "--nocapture",
            ])
            .env(CHILD, "1")
            .output()
            .expect("child");
        assert!(
            out.status.success(),
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains("1 passed"));
    }
}
