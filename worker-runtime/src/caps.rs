//! A worker holds no capability: the bounding, ambient, inheritable,
//! permitted and effective sets are emptied before it reads a model file.
//! A worker started by a root supervisor (the tests, a container running as
//! root) would otherwise keep root's full set: raw sockets, `ptrace` of any
//! process, reading any file whatever its mode, loading kernel modules.
//! The bounding set goes first (dropping from it needs `CAP_SETPCAP`, which
//! the last step removes); an empty bounding set also means no later exec
//! could give any back (and exec is refused anyway: see [`crate::seccomp`]).
//! A worker started as another uid (`[workers] uid`) holds no capability
//! from its exec on, and so cannot drop its bounding set: that set is then
//! out of reach anyway (no_new_privs, no exec), and is left as it is.

use caps::{CapSet, Capability};

/// The `/proc/self/task/<tid>/status` lines that must read all zero.
const SETS: [&str; 5] = ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"];
/// The lines that must read zero when the bounding set cannot be dropped.
const SETS_HELD: [&str; 4] = ["CapInh", "CapPrm", "CapEff", "CapAmb"];

/// Empties every capability set of every thread of this process; returns
/// what is in force (for the `applied` list) and what could not be emptied
/// (for the `missing` list).
pub fn drop_all() -> (&'static str, Vec<String>) {
    // Without CAP_SETPCAP the bounding set cannot shrink; a process that
    // lacks it holds nothing the bounding set could hand back.
    let bounding = caps::has_cap(None, CapSet::Effective, Capability::CAP_SETPCAP).unwrap_or(true);
    let mut missing = Vec::new();
    for (set, name) in [
        (CapSet::Bounding, "bounding"),
        (CapSet::Ambient, "ambient"),
        (CapSet::Inheritable, "inheritable"),
        // Permitted takes effective with it.
        (CapSet::Permitted, "permitted"),
    ] {
        if matches!(set, CapSet::Bounding) && !bounding {
            continue;
        }
        if let Err(e) = caps::clear(None, set) {
            missing.push(format!("capabilities ({name} set): {e}"));
        }
    }
    let sets: &[&str] = if bounding { &SETS } else { &SETS_HELD };
    if missing.is_empty()
        && let Err(held) = held_anywhere(sets)
    {
        missing.push(held);
    }
    let applied = if bounding {
        "capabilities: none"
    } else {
        "capabilities: none held (bounding set out of reach: no CAP_SETPCAP, no_new_privs)"
    };
    (applied, missing)
}

/// `Ok` when every thread's capability sets read zero in `/proc`; the first
/// set that does not, or why `/proc` could not say.
fn held_anywhere(sets: &[&str]) -> Result<(), String> {
    let tasks = std::fs::read_dir("/proc/self/task")
        .map_err(|e| format!("capabilities: cannot list /proc/self/task: {e}"))?;
    for task in tasks.flatten() {
        let path = task.path().join("status");
        let Ok(status) = std::fs::read_to_string(&path) else {
            // The thread ended since the listing.
            continue;
        };
        if let Some(line) = nonzero(&status, sets) {
            return Err(format!(
                "capabilities: {} still reads {line:?}",
                path.display()
            ));
        }
    }
    Ok(())
}

/// The first capability line of a `status` text that is not all zero.
fn nonzero<'a>(status: &'a str, sets: &[&str]) -> Option<&'a str> {
    status.lines().find(|line| {
        line.split_once(':').is_some_and(|(key, value)| {
            sets.contains(&key) && value.trim().chars().any(|c| c != '0')
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
        assert_eq!(nonzero(zero, &SETS), None);
        let root = zero.replace("CapBnd:\t0000000000000000", "CapBnd:\t000001ffffffffff");
        assert_eq!(nonzero(&root, &SETS), Some("CapBnd:\t000001ffffffffff"));
        // A worker of another uid keeps a bounding set it cannot use.
        assert_eq!(nonzero(&root, &SETS_HELD), None);
        assert_eq!(
            nonzero("Seccomp:\t2\nSigCgt:\t0000000000004000\n", &SETS),
            None
        );
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
                nonzero(&own(), &SETS).is_some(),
                "run as root: no capability to drop"
            );
            // Threads started before the drop (this one, the test
            // harness's) keep their own sets: the check must say so.
            let (tx, rx) = std::sync::mpsc::channel::<()>();
            let before = std::thread::spawn(move || rx.recv());
            let (applied, missing) = drop_all();
            assert_eq!(applied, "capabilities: none");
            assert_eq!(nonzero(&own(), &SETS), None, "{}", own());
            assert_eq!(missing.len(), 1, "{missing:?}");
            assert!(missing[0].contains("still reads \"Cap"), "{missing:?}");
            drop(tx);
            let _ = before.join();
            return;
        }
        crate::child_test::passed(&crate::child_test::run(
            "caps::tests::every_set_is_emptied_and_a_thread_that_kept_its_own_is_seen",
            &[(CHILD, "1".as_ref())],
        ));
    }
}
