use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};

use super::*;

fn umask() -> String {
    std::fs::read_to_string("/proc/self/status")
        .expect("status")
        .lines()
        .find_map(|l| l.strip_prefix("Umask:"))
        .expect("Umask line")
        .trim()
        .to_owned()
}

/// A temporary directory as the socket's directory must be (0700).
fn private_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    dir
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).expect("stat").mode() & 0o7777
}

#[tokio::test]
async fn a_missing_directory_is_created_owner_only_and_the_umask_is_left_alone() {
    let base = tempfile::tempdir().unwrap();
    let path = base.path().join("run/sidecar/control.sock");
    let before = umask();
    let listener = bind(&path).expect("bound");
    assert_eq!(umask(), before, "the process-wide umask never changes");
    assert_eq!(mode(&base.path().join("run/sidecar")), 0o700);
    let meta = std::fs::symlink_metadata(&path).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.mode() & 0o777, 0o600);
    drop(listener);
}

#[tokio::test]
async fn a_regular_file_at_the_path_is_refused_and_kept() {
    let dir = private_dir();
    let path = dir.path().join("control.sock");
    std::fs::write(&path, b"precious").unwrap();
    let e = bind(&path).expect_err("refused").to_string();
    assert!(
        e.contains(&path.display().to_string()) && e.contains("is a regular file, not a socket"),
        "{e}"
    );
    assert_eq!(std::fs::read(&path).unwrap(), b"precious");
}

#[tokio::test]
async fn a_link_or_directory_at_the_path_is_refused_and_kept() {
    let dir = private_dir();
    let outside = tempfile::tempdir().unwrap();
    let target = outside.path().join("victim");
    std::fs::write(&target, b"victim").unwrap();
    let link = dir.path().join("control.sock");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let e = bind(&link).expect_err("refused").to_string();
    assert!(e.contains("is a symbolic link, not a socket"), "{e}");
    assert!(
        std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert_eq!(std::fs::read(&target).unwrap(), b"victim");

    let sub = dir.path().join("sub.sock");
    std::fs::create_dir(&sub).unwrap();
    let e = bind(&sub).expect_err("refused").to_string();
    assert!(e.contains("is a directory, not a socket"), "{e}");
    assert!(sub.is_dir());
}

#[tokio::test]
async fn a_stale_socket_is_replaced_and_a_live_one_refused() {
    let dir = private_dir();
    let path = dir.path().join("control.sock");
    // A previous run's socket: bound, then its process gone.
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    assert!(
        std::fs::symlink_metadata(&path)
            .unwrap()
            .file_type()
            .is_socket()
    );
    let live = bind(&path).expect("a stale socket is replaced");
    let e = bind(&path).expect_err("a live socket is kept").to_string();
    assert!(e.contains("another process is listening"), "{e}");
    assert!(
        std::os::unix::net::UnixStream::connect(&path).is_ok(),
        "still served"
    );
    drop(live);
}

#[tokio::test]
async fn a_directory_open_to_group_or_others_is_refused_naming_its_mode() {
    let dir = tempfile::tempdir().unwrap();
    let shared = dir.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    for m in [0o777, 0o750, 0o701] {
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(m)).unwrap();
        let e = bind(&shared.join("control.sock"))
            .expect_err("refused")
            .to_string();
        assert!(
            e.contains(&format!("has mode {m:04o}")) && e.contains("it must be 0700"),
            "{m:o}: {e}"
        );
        assert_eq!(mode(&shared), m, "the directory is left as it was");
        assert!(!shared.join("control.sock").exists());
    }
}

#[test]
fn a_directory_owned_by_another_user_is_refused() {
    let dir = Path::new("/run/x");
    let e = check_dir(dir, 1000, 0o40700, 10001).expect_err("refused");
    assert!(
        e.contains("owned by uid 1000, not by this process (uid 10001)"),
        "{e}"
    );
    assert!(check_dir(dir, 10001, 0o40700, 10001).is_ok());
    let e = check_dir(dir, 10001, 0o40770, 10001).expect_err("refused");
    assert!(e.contains("has mode 0770"), "{e}");
}

#[test]
fn shutdown_removes_only_a_socket() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("control.sock");
    std::fs::write(&file, b"x").unwrap();
    remove(&file);
    assert!(file.exists(), "a regular file is not ours to remove");
    let sock = dir.path().join("s.sock");
    drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
    remove(&sock);
    assert!(!sock.exists());
}

/// A shared directory (an emptyDir is 0777): the API socket's case.
fn shared_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    dir
}

const SHARED: Access = Access {
    dir_mode: 0o755,
    private_dir: false,
    mode: 0o666,
    owner: None,
    group: None,
};

/// What is left in `dir` besides `keep`: no private directory stays.
fn leftovers(dir: &Path, keep: &str) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != keep)
        .collect()
}

#[tokio::test]
async fn the_socket_appears_with_its_mode_and_owner_and_no_private_directory_stays() {
    let dir = shared_dir();
    let path = dir.path().join("api.sock");
    let me = nix::unistd::getegid().as_raw();
    let access = Access {
        group: Some(me),
        ..SHARED
    };
    let listener = bind_with(&path, "api_socket.path", &access).expect("bound");
    let meta = std::fs::symlink_metadata(&path).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(
        meta.mode() & 0o7777,
        0o666,
        "the mode asked, whatever the umask"
    );
    assert_eq!(meta.gid(), me);
    assert_eq!(leftovers(dir.path(), "api.sock"), Vec::<String>::new());
    // Reachable at its final path: the listener is the moved socket's.
    let client = tokio::net::UnixStream::connect(&path)
        .await
        .expect("connect");
    let (server, _) = listener.accept().await.expect("accept");
    assert_eq!(
        server.peer_cred().unwrap().uid(),
        client.peer_cred().unwrap().uid()
    );
}

#[tokio::test]
async fn a_link_planted_after_the_stale_check_is_never_followed_nor_replaced() {
    // The window between the stale check and the socket's appearance:
    // `place` is what runs after the check, so a link planted before it
    // is one planted in the window.
    let dir = shared_dir();
    let outside = tempfile::tempdir().unwrap();
    let target = outside.path().join("passwd");
    std::fs::write(&target, b"root:x:0:0").unwrap();
    std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o640)).unwrap();
    let path = dir.path().join("api.sock");
    std::os::unix::fs::symlink(&target, &path).unwrap();
    let e = place::bind_placed(&path, dir.path(), "api_socket.path", &SHARED)
        .expect_err("refused")
        .to_string();
    assert!(
        e.contains(&path.display().to_string()) && e.contains("refusing to replace it"),
        "{e}"
    );
    assert_eq!(mode(&target), 0o640, "the link's target keeps its mode");
    assert_eq!(std::fs::read(&target).unwrap(), b"root:x:0:0");
    assert!(
        std::fs::symlink_metadata(&path)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert_eq!(
        std::fs::read_link(&path).unwrap(),
        target,
        "the link is left"
    );
    assert_eq!(leftovers(dir.path(), "api.sock"), Vec::<String>::new());
}

#[test]
fn a_created_directory_swapped_before_its_chmod_is_refused_and_left_alone() {
    let base = tempfile::tempdir().unwrap();
    let access = Access {
        dir_mode: 0o750,
        private_dir: false,
        mode: 0o660,
        owner: None,
        group: None,
    };
    // Ours: its mode is set through the descriptor, the umask undone.
    let ours = base.path().join("ours");
    std::fs::create_dir(&ours).unwrap();
    std::fs::set_permissions(&ours, std::fs::Permissions::from_mode(0o700)).unwrap();
    settle_created(&ours, &access).expect("ours");
    assert_eq!(mode(&ours), 0o750);

    // Swapped for a link to a file elsewhere: refused, the target untouched.
    let target = base.path().join("target");
    std::fs::write(&target, b"x").unwrap();
    std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o600)).unwrap();
    let link = base.path().join("link");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let e = settle_created(&link, &access).expect_err("a link");
    assert!(e.contains("open without following a link"), "{e}");
    assert_eq!(mode(&target), 0o600, "the link's target is untouched");
}

#[test]
fn a_created_directory_swapped_for_another_users_is_refused_and_left_alone() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test needs root, to make a directory of another uid"
    );
    let base = tempfile::tempdir().unwrap();
    let access = Access {
        dir_mode: 0o750,
        private_dir: false,
        mode: 0o660,
        owner: Some(0),
        group: Some(0),
    };
    let theirs = base.path().join("theirs");
    std::fs::create_dir(&theirs).unwrap();
    std::fs::set_permissions(&theirs, std::fs::Permissions::from_mode(0o777)).unwrap();
    nix::unistd::chown(&theirs, Some(nix::unistd::Uid::from_raw(65534)), None).unwrap();
    let e = settle_created(&theirs, &access).expect_err("theirs");
    assert!(
        e.contains("is owned by uid 65534, not this process's 0: it was replaced"),
        "{e}"
    );
    let meta = std::fs::metadata(&theirs).unwrap();
    assert_eq!(
        (meta.mode() & 0o7777, meta.uid()),
        (0o777, 65534),
        "left as it was"
    );
}
