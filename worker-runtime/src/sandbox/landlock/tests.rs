use std::io::{ErrorKind, Read};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::FileExt;

use super::*;

const CHILD: &str = "WORKER_RUNTIME_LANDLOCK_CHILD";

/// The checks, in a process of their own (Landlock cannot be undone):
/// a temporary "store" with the model and another file; the model opened
/// before the rules, as the supervisor does.
fn child(store: &std::path::Path) {
    let model_path = store.join("model.gguf");
    let model = std::fs::File::open(&model_path).expect("open the model before the rules");
    let fd = model.as_fd();
    let report = restrict(&Plan {
        files: vec![fd],
        libraries: Vec::new(),
        gpu: false,
    });
    assert!(report.missing.is_empty(), "{report:?}");
    assert_eq!(
        report.applied,
        vec!["landlock ABI V7: fully enforced".to_string()]
    );
    // Another file of the store, and its listing: denied.
    let other =
        std::fs::File::open(store.join("other.gguf")).expect_err("the store is out of reach");
    assert_eq!(other.kind(), ErrorKind::PermissionDenied, "{other}");
    let listing = std::fs::read_dir(store).expect_err("the store's listing is out of reach");
    assert_eq!(listing.kind(), ErrorKind::PermissionDenied, "{listing}");
    // Writing anywhere: denied (a new file, an existing one, /tmp).
    for path in [
        store.join("new"),
        store.join("other.gguf"),
        std::env::temp_dir().join("landlock-write"),
    ] {
        let e = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .expect_err("nothing is writable");
        assert_eq!(
            e.kind(),
            ErrorKind::PermissionDenied,
            "{}: {e}",
            path.display()
        );
    }
    // The handed descriptor reads, and /proc/self/fd/N opens.
    let mut head = [0u8; 4];
    model
        .read_exact_at(&mut head, 0)
        .expect("read the descriptor");
    assert_eq!(&head, b"GGUF");
    let mut again = String::new();
    std::fs::File::open(format!("/proc/self/fd/{}", fd.as_raw_fd()))
        .expect("/proc/self/fd/N opens")
        .read_to_string(&mut again)
        .expect("read through /proc/self/fd/N");
    assert_eq!(again, "GGUF model");
    // What the runtime needs at start still reads.
    std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    std::fs::read("/etc/ld.so.cache").expect("/etc/ld.so.cache");
    let passwd = std::fs::read("/etc/passwd").expect_err("/etc at large is out of reach");
    assert_eq!(passwd.kind(), ErrorKind::PermissionDenied);
    // No TCP connect (ABI 4): a listener made before is refused.
    let connect = std::net::TcpStream::connect(std::env::var("LANDLOCK_TEST_PORT").expect("port"))
        .expect_err("no TCP connect");
    assert_eq!(connect.raw_os_error(), Some(libc::EACCES), "{connect}");
}

#[test]
fn a_sandboxed_worker_reads_its_descriptor_and_nothing_of_the_store() {
    if let Some(store) = std::env::var_os(CHILD) {
        child(std::path::Path::new(&store));
        return;
    }
    let store = std::env::temp_dir().join(format!("landlock-store-{}", std::process::id()));
    std::fs::create_dir_all(&store).expect("store");
    std::fs::write(store.join("model.gguf"), "GGUF model").expect("model");
    std::fs::write(store.join("other.gguf"), "GGUF other").expect("other");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("listener");
    let port = listener.local_addr().expect("addr").to_string();
    let out = crate::child_test::run(
        "sandbox::landlock::tests::a_sandboxed_worker_reads_its_descriptor_and_nothing_of_the_store",
        &[
            (CHILD, store.as_ref()),
            ("LANDLOCK_TEST_PORT", port.as_ref()),
        ],
    );
    let _ = std::fs::remove_dir_all(&store);
    crate::child_test::passed(&out);
    // Nothing was created by the sandboxed child.
    assert!(!std::env::temp_dir().join("landlock-write").exists());
}

#[test]
fn what_the_kernel_lacks_is_reported_missing() {
    let none = describe(Ok((
        RulesetStatus::NotEnforced,
        LandlockStatus::NotImplemented,
    )));
    assert!(none.applied.is_empty());
    assert_eq!(
        none.missing,
        ["landlock: not enforced: not built into this kernel"]
    );
    let off = describe(Ok((RulesetStatus::NotEnforced, LandlockStatus::NotEnabled)));
    assert_eq!(
        off.missing,
        ["landlock: not enforced: disabled at boot (lsm=)"]
    );
    let old = describe(Ok((
        RulesetStatus::PartiallyEnforced,
        LandlockStatus::Available {
            effective_abi: ABI::V3,
            kernel_abi: None,
        },
    )));
    assert_eq!(old.applied, ["landlock ABI V3: partially enforced"]);
    assert!(
        old.missing[0]
            .starts_with("landlock: partially enforced: the kernel's ABI V3 lacks rights of V7"),
        "{old:?}"
    );
    let full = describe(Ok((
        RulesetStatus::FullyEnforced,
        LandlockStatus::Available {
            effective_abi: ABI::V7,
            kernel_abi: None,
        },
    )));
    assert_eq!(full.applied, ["landlock ABI V7: fully enforced"]);
    assert!(full.missing.is_empty());
}
