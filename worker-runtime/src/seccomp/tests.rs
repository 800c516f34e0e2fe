use std::os::unix::process::ExitStatusExt;

use super::*;

/// Runs `name` again in a child process of its own (with `CHILD` set),
/// so the filter never lands on the test runner.
fn in_child(name: &str) -> std::process::Output {
    crate::child_test::run(name, &[(CHILD, "1".as_ref())])
}

const CHILD: &str = "WORKER_RUNTIME_SECCOMP_CHILD";

fn child() -> bool {
    std::env::var_os(CHILD).is_some()
}

fn errno_of(r: std::io::Result<std::process::ExitStatus>) -> Option<i32> {
    r.err().and_then(|e| e.raw_os_error())
}

use crate::child_test::passed;

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
    // Nor a new process (fork, vfork, posix_spawn): threads only. The
    // exec above already failed at its clone; a thread still starts below.
    // Nor open anything for writing (a second wall behind Landlock).
    let dir = std::env::temp_dir();
    for (what, r) in [
        (
            "create",
            std::fs::File::create(dir.join("seccomp-create")).map(|_| ()),
        ),
        (
            "read-write",
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open("/proc/self/status")
                .map(|_| ()),
        ),
        (
            "append",
            std::fs::OpenOptions::new()
                .append(true)
                .open("/dev/null")
                .map(|_| ()),
        ),
    ] {
        assert_eq!(
            r.map_err(|e| e.raw_os_error()),
            Err(Some(libc::EPERM)),
            "{what}"
        );
    }
    assert!(
        std::fs::read("/proc/self/status").is_ok(),
        "reading still works"
    );
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
        passed(&crate::child_test::run(
            "seccomp::tests::a_call_off_the_list_kills_the_process_with_sigsys_unless_logged",
            &[(CHILD, "1".as_ref()), (ENV, "log".as_ref())],
        ));
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
        let progs = programs(f, Mode::Enforce, 1, false).expect("programs");
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

/// The refusals no safe Rust call here can reach (`fcntl` naming a signal
/// owner, a raw `fork`), tried by a Python process that loads the very
/// programs the worker installs (the allow-list in log mode, so the
/// interpreter's own calls pass; the refusals answer the same in every
/// mode).
#[test]
fn a_descriptor_cannot_name_a_signal_owner_and_no_process_can_be_forked() {
    let progs =
        programs(ModelFamily::Lite, Mode::Log, std::process::id(), false).expect("programs");
    let mut bytes = Vec::new();
    for p in &progs {
        bytes.extend_from_slice(&u32::try_from(p.len()).expect("len").to_le_bytes());
        for i in p {
            bytes.extend_from_slice(&i.code.to_le_bytes());
            bytes.extend_from_slice(&[i.jt, i.jf]);
            bytes.extend_from_slice(&i.k.to_le_bytes());
        }
    }
    let file = std::env::temp_dir().join(format!("seccomp-filters-{}.bin", std::process::id()));
    std::fs::write(&file, &bytes).expect("write");
    const SCRIPT: &str = r#"
import ctypes, fcntl, os, struct, sys
data = open(sys.argv[1], "rb").read()
libc = ctypes.CDLL(None, use_errno=True)
class Prog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]
assert libc.prctl(38, 1, 0, 0, 0) == 0  # PR_SET_NO_NEW_PRIVS
at, keep = 0, []
while at < len(data):
    (n,) = struct.unpack_from("<I", data, at)
    at += 4
    buf = ctypes.create_string_buffer(data[at:at + 8 * n], 8 * n)
    at += 8 * n
    keep.append(buf)
    prog = Prog(n, ctypes.cast(buf, ctypes.c_void_p))
    assert libc.prctl(22, 2, ctypes.byref(prog), 0, 0) == 0, ctypes.get_errno()  # PR_SET_SECCOMP
r, w = os.pipe()
out = []
for cmd in (8, 10, 15):  # F_SETOWN, F_SETSIG, F_SETOWN_EX
    try:
        fcntl.fcntl(r, cmd, os.getppid())
        out.append("%d:ok" % cmd)
    except OSError as e:
        out.append("%d:%d" % (cmd, e.errno))
fcntl.fcntl(r, fcntl.F_GETFD)
try:
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    out.append("fork:ok")
except OSError as e:
    out.append("fork:%d" % e.errno)
print(" ".join(out))
"#;
    let out = std::process::Command::new("python3")
        .arg("-c")
        .arg(SCRIPT)
        .arg(&file)
        .output()
        .expect("python3");
    let _ = std::fs::remove_file(&file);
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let eperm = libc::EPERM;
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("8:{eperm} 10:{eperm} 15:{eperm} fork:{eperm}")
    );
}
