//! Open files handed to a child beside its channel
//! (`Ends::spawn_with_files`): the child reads them without any path, its
//! own children do not inherit them, and a descriptor that is not a file
//! in the file system is refused.

use std::os::fd::AsFd;
use std::process::{Command, Stdio};

use ipc::ChannelConfig;

fn peer(files: &[std::os::fd::BorrowedFd<'_>]) -> (bool, String, String) {
    let (_a, b) = ipc::create(ChannelConfig::default()).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ipc-peer"));
    cmd.arg("files")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let out = b
        .spawn_with_files(&mut cmd, None, files)
        .unwrap()
        .wait_with_output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_handed_file_reaches_the_child_and_not_its_children() {
    let path = std::env::temp_dir().join(format!("ipc-handed-{}", std::process::id()));
    std::fs::write(&path, "handed content").unwrap();
    let file = std::fs::File::open(&path).unwrap();
    // Gone from the file system before the child starts: it reads the open file.
    std::fs::remove_file(&path).unwrap();
    let (ok, out, err) = peer(&[file.as_fd()]);
    assert!(ok, "{out}{err}");
    assert!(out.contains("FILE handed content\n"), "{out}");
    let grandchild = out
        .lines()
        .find_map(|l| l.strip_prefix("GRANDCHILD "))
        .expect("grandchild line");
    assert!(!grandchild.contains("ipc-handed"), "{grandchild}");
}

#[test]
fn a_descriptor_that_is_not_a_file_is_refused() {
    let (read, _write) = nix::unistd::pipe().unwrap();
    let (ok, out, err) = peer(&[read.as_fd()]);
    assert!(!ok, "{out}");
    assert!(
        err.contains("SIDECAR_IPC_FILES: descriptor")
            && err.contains("pipe:")
            && err.contains("not a file"),
        "{err}"
    );
    assert!(!out.contains("FILE"), "{out}");
}
