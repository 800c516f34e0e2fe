use std::os::unix::process::ExitStatusExt;

use super::*;

/// Runs `name` again in a child process of its own (this test binary
/// started again with `CHILD` set), so the filter never lands on the test
/// runner; the child's exit status.
fn in_child(name: &str) -> std::process::Output {
    std::process::Command::new(std::env::current_exe().expect("exe"))
        .args(["--exact", name, "--nocapture", "--test-threads=1"])
        .env(CHILD, "1")
        .output()
        .expect("child")
}

const CHILD: &str = "WORKER_RUNTIME_SECCOMP_CHILD";

fn child() -> bool {
    std::env::var_os(CHILD).is_some()
}

fn errno_of(r: std::io::Result<std::process::ExitStatus>) -> Option<i32> {
    r.err().and_then(|e| e.raw_os_error())
}

fn passed(out: &std::process::Output) {
    assert!(
        out.status.success(),
        "{:?}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("1 passed"));
}

#[test]
fn the_filter_refuses_exec_sockets_namespaces_and_foreign_signals_and_allows_work() {
    if !child() {
        // Before: the child may run programs and open sockets.
        assert!(
            std::process::Command::new("/bin/true")
                .status()
                .expect("/bin/true")
                .success()
        );
        passed(&in_child(
            "seccomp::tests::the_filter_refuses_exec_sockets_namespaces_and_foreign_signals_and_allows_work",
        ));
        return;
    }
    nix::sys::prctl::set_no_new_privs().expect("no_new_privs");
    assert_eq!(
        install(ModelFamily::Lite, Mode::Enforce),
        Vec::<String>::new()
    );
    let status = std::fs::read_to_string("/proc/self/status").expect("status");
    assert!(status.contains("Seccomp:\t2"), "{status}");
    // Refused with EPERM, the process goes on.
    let exec = std::process::Command::new("/bin/true").status();
    assert_eq!(errno_of(exec), Some(libc::EPERM));
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, socket};
    let tcp = socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::empty(),
        None,
    );
    assert_eq!(tcp.err(), Some(nix::errno::Errno::EPERM));
    let unix = socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::empty(),
        None,
    );
    assert_eq!(unix.err(), Some(nix::errno::Errno::EPERM));
    let ns = nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWUSER);
    assert_eq!(ns.err(), Some(nix::errno::Errno::EPERM));
    use nix::sys::signal::kill;
    use nix::unistd::Pid;
    assert_eq!(
        kill(Pid::from_raw(1), None).err(),
        Some(nix::errno::Errno::EPERM)
    );
    assert_eq!(
        kill(Pid::from_raw(0), None).err(),
        Some(nix::errno::Errno::EPERM)
    );
    assert_eq!(
        kill(Pid::from_raw(-1), None).err(),
        Some(nix::errno::Errno::EPERM)
    );
    assert_eq!(kill(Pid::this(), None), Ok(()));
    // Normal work: threads (clone, falling back from clone3), memory,
    // files, time.
    let sum = std::thread::spawn(|| (0..1_000_000u64).sum::<u64>())
        .join()
        .expect("thread");
    assert_eq!(sum, 499_999_500_000);
    let big = vec![7u8; 64 << 20];
    assert_eq!(
        big.iter().map(|&b| u64::from(b)).sum::<u64>(),
        7 * (64 << 20)
    );
    drop(big);
    assert!(std::fs::read("/proc/self/maps").expect("maps").len() > 100);
    assert!(std::time::Instant::now().elapsed() < std::time::Duration::from_secs(5));
}

#[test]
fn a_call_off_the_list_kills_the_process_with_sigsys_unless_logged() {
    if !child() {
        let out = in_child(
            "seccomp::tests::a_call_off_the_list_kills_the_process_with_sigsys_unless_logged",
        );
        assert_eq!(out.status.signal(), Some(libc::SIGSYS), "{out:?}");
        let logged = std::process::Command::new(std::env::current_exe().expect("exe"))
            .args([
                "--exact",
                "seccomp::tests::a_call_off_the_list_kills_the_process_with_sigsys_unless_logged",
                "--nocapture",
            ])
            .env(CHILD, "1")
            .env(ENV, "log")
            .output()
            .expect("child");
        passed(&logged);
        return;
    }
    nix::sys::prctl::set_no_new_privs().expect("no_new_privs");
    let (mode, complaint) = Mode::from_env();
    assert_eq!(complaint, None);
    let missing = install(ModelFamily::Text, mode);
    assert_eq!(missing.len(), usize::from(mode == Mode::Log), "{missing:?}");
    // chdir is on no list: SIGSYS in enforce, logged and done in log.
    nix::unistd::chdir("/").expect("chdir");
    assert_eq!(mode, Mode::Log, "enforce mode must not get here");
}

#[test]
fn modes_read_from_the_environment_fail_closed() {
    assert_eq!(Mode::parse("enforce"), Some(Mode::Enforce));
    assert_eq!(Mode::parse("log"), Some(Mode::Log));
    assert_eq!(Mode::parse("off"), Some(Mode::Off));
    assert_eq!(Mode::parse("Off"), None);
    assert_eq!(Mode::parse(""), None);
    let msg = unknown(&"x".repeat(100));
    assert!(msg.contains(ENV) && msg.contains("enforcing"), "{msg}");
    assert!(msg.len() < 140, "the value is cut: {msg}");
    assert_eq!(install(ModelFamily::Text, Mode::Off).len(), 1);
}

#[test]
fn every_family_has_a_filter_and_the_lists_do_not_overlap_the_refusals() {
    for f in [ModelFamily::Text, ModelFamily::Vision, ModelFamily::Lite] {
        let progs = programs(f, Mode::Enforce, 1).expect("programs");
        assert_eq!(progs.len(), 3);
        assert!(allow_list_len(f) > lists::BASE.len() / 2, "{f:?}");
    }
    for (name, nr) in lists::BASE
        .iter()
        .chain(lists::BASE_X86_64)
        .chain(lists::TEXT)
        .chain(lists::VISION)
        .chain(lists::LITE)
    {
        assert!(
            !lists::REFUSED.iter().any(|(_, r)| r == nr),
            "{name} is both allowed and refused"
        );
    }
}
