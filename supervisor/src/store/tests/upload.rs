//! Uploads into the store: containment, exclusive temporary files, atomic
//! publishing, quotas, and no leftovers on any failure.

use std::path::Path;
use std::sync::{Arc, Barrier};

use super::*;
use crate::store::write::{Dir, create_exclusive};

const ROOMY: StoreLimits = StoreLimits {
    max_file_bytes: 1 << 30,
    max_total_bytes: 0,
};

fn spec(path: &str, size: usize, overwrite: bool) -> UploadSpec {
    UploadSpec {
        path: path.into(),
        size: size as u64,
        overwrite,
    }
}

fn put(store: &Store, path: &str, data: &[u8], overwrite: bool) -> Result<PathBuf, Error> {
    let mut up = store.begin_upload(&spec(path, data.len(), overwrite), &ROOMY)?;
    up.write(data)?;
    up.publish(path).map(|(p, _)| p)
}

/// Every name under `dir`, recursively, relative to it (links not followed).
fn tree(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            out.push(p.strip_prefix(dir).unwrap().display().to_string());
            if std::fs::symlink_metadata(&p).unwrap().is_dir() {
                dirs.push(p);
            }
        }
    }
    out.sort();
    out
}

fn temps(dir: &Path) -> Vec<String> {
    tree(dir)
        .into_iter()
        .filter(|n| n.rsplit('/').next().unwrap().starts_with(TEMP_PREFIX))
        .collect()
}

fn setup() -> (tempfile::TempDir, tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    (dir, outside, store)
}

#[test]
fn an_upload_lands_whole_and_leaves_no_temporary_file() {
    let (dir, _o, store) = setup();
    let dest = put(&store, "a/b/c.bin", b"hello", false).unwrap();
    assert_eq!(dest, store.root().join("a/b/c.bin"));
    assert_eq!(std::fs::read(&dest).unwrap(), b"hello");
    assert_eq!(tree(dir.path()), ["a", "a/b", "a/b/c.bin"]);
    // Replacing needs overwrite; with it the new bytes are in place.
    let e = put(&store, "a/b/c.bin", b"other", false).unwrap_err();
    assert!(matches!(e, Error::AlreadyExists(_)), "{e}");
    put(&store, "a/b/c.bin", b"replaced", true).unwrap();
    assert_eq!(std::fs::read(&dest).unwrap(), b"replaced");
    assert!(temps(dir.path()).is_empty());
}

#[test]
fn dot_dot_absolute_and_reserved_paths_are_refused_before_anything_is_created() {
    let (dir, _o, store) = setup();
    for bad in [
        "../x",
        "new/../../x",
        "new/../x",
        "/etc/passwd",
        "",
        ".",
        "new/.upload-1.part",
    ] {
        let e = store
            .begin_upload(&spec(bad, 1, false), &ROOMY)
            .unwrap_err();
        assert!(matches!(e, Error::InvalidArgument(_)), "{bad:?}: {e}");
    }
    assert!(tree(dir.path()).is_empty(), "{:?}", tree(dir.path()));
}

#[test]
fn a_symlinked_directory_leading_outside_is_refused_and_nothing_is_created_there() {
    let (dir, outside, store) = setup();
    std::os::unix::fs::symlink(outside.path(), dir.path().join("escape")).unwrap();
    std::fs::create_dir(dir.path().join("m")).unwrap();
    std::os::unix::fs::symlink(outside.path(), dir.path().join("m/deeper")).unwrap();
    std::os::unix::fs::symlink("/nonexistent/x", dir.path().join("dangling")).unwrap();
    for bad in [
        "escape/x.bin",
        "escape/new/dir/x.bin",
        "m/deeper/x.bin",
        "dangling/x.bin",
    ] {
        let e = store
            .begin_upload(&spec(bad, 3, false), &ROOMY)
            .unwrap_err();
        assert!(
            matches!(&e, Error::InvalidArgument(m) if m.contains("leaves the model store")),
            "{bad}: {e}"
        );
    }
    assert!(
        tree(outside.path()).is_empty(),
        "{:?}",
        tree(outside.path())
    );
    assert!(!Path::new("/nonexistent").exists());
    // A link that stays inside the store is followed to its real place.
    std::fs::create_dir(dir.path().join("real")).unwrap();
    std::os::unix::fs::symlink("real", dir.path().join("alias")).unwrap();
    let dest = put(&store, "alias/x.bin", b"abc", false).unwrap();
    assert_eq!(dest, store.root().join("real/x.bin"));
    assert_eq!(
        std::fs::read(dir.path().join("real/x.bin")).unwrap(),
        b"abc"
    );
}

#[test]
fn a_file_where_a_directory_should_be_is_refused() {
    let (dir, _o, store) = setup();
    std::fs::write(dir.path().join("plain"), b"x").unwrap();
    let e = store
        .begin_upload(&spec("plain/x.bin", 1, false), &ROOMY)
        .unwrap_err();
    assert!(
        matches!(&e, Error::InvalidArgument(m) if m.contains("is a regular file, not a directory")),
        "{e}"
    );
    std::fs::create_dir(dir.path().join("d")).unwrap();
    let e = store.begin_upload(&spec("d", 1, true), &ROOMY).unwrap_err();
    assert!(
        matches!(&e, Error::InvalidArgument(m) if m.contains("is a directory, not a regular file")),
        "{e}"
    );
}

#[test]
fn a_symlink_at_the_destination_is_never_written_through() {
    let (dir, outside, store) = setup();
    let victim = outside.path().join("victim");
    std::fs::write(&victim, b"victim").unwrap();
    std::os::unix::fs::symlink(&victim, dir.path().join("link.bin")).unwrap();
    for overwrite in [false, true] {
        let e = store
            .begin_upload(&spec("link.bin", 3, overwrite), &ROOMY)
            .unwrap_err();
        assert!(
            matches!(&e, Error::InvalidArgument(m) if m.contains("is a symbolic link, not a regular file")),
            "{e}"
        );
    }
    // Planted while the bytes arrive: without overwrite the link stays
    // and the upload is ALREADY_EXISTS; with it, the link itself is
    // replaced. The target is never touched.
    let mut up = store
        .begin_upload(&spec("late.bin", 3, false), &ROOMY)
        .unwrap();
    up.write(b"new").unwrap();
    std::os::unix::fs::symlink(&victim, dir.path().join("late.bin")).unwrap();
    let e = up.publish("late.bin").unwrap_err();
    assert!(matches!(e, Error::AlreadyExists(_)), "{e}");
    assert!(dir.path().join("late.bin").is_symlink());
    let mut up = store
        .begin_upload(&spec("late2.bin", 3, true), &ROOMY)
        .unwrap();
    up.write(b"new").unwrap();
    std::os::unix::fs::symlink(&victim, dir.path().join("late2.bin")).unwrap();
    up.publish("late2.bin").unwrap();
    assert!(!dir.path().join("late2.bin").is_symlink());
    assert_eq!(std::fs::read(dir.path().join("late2.bin")).unwrap(), b"new");
    assert_eq!(std::fs::read(&victim).unwrap(), b"victim");
    assert!(temps(dir.path()).is_empty());
}

#[test]
fn a_symlink_planted_at_a_temporary_name_is_neither_followed_nor_truncated() {
    let (dir, outside, store) = setup();
    let victim = outside.path().join("victim");
    std::fs::write(&victim, b"victim").unwrap();
    let root = Dir::root(store.root()).unwrap();
    let name = std::ffi::OsStr::new(".upload-planted.part");
    std::os::unix::fs::symlink(&victim, dir.path().join(name)).unwrap();
    assert!(create_exclusive(&root, name).unwrap().is_none());
    std::os::unix::fs::symlink("/nonexistent/new", dir.path().join(".upload-dangling.part"))
        .unwrap();
    assert!(
        create_exclusive(&root, std::ffi::OsStr::new(".upload-dangling.part"))
            .unwrap()
            .is_none()
    );
    assert_eq!(std::fs::read(&victim).unwrap(), b"victim");
    assert!(!Path::new("/nonexistent").exists());

    // The temporary file swapped for a link mid-upload: not published.
    let mut up = store
        .begin_upload(&spec("swap.bin", 3, false), &ROOMY)
        .unwrap();
    up.write(b"new").unwrap();
    let temp = dir.path().join(up.temp_name());
    std::fs::remove_file(&temp).unwrap();
    std::os::unix::fs::symlink(&victim, &temp).unwrap();
    let e = up.publish("swap.bin").unwrap_err();
    assert!(
        matches!(&e, Error::Internal(m) if m.contains("was replaced")),
        "{e}"
    );
    assert!(!dir.path().join("swap.bin").exists());
    assert_eq!(std::fs::read(&victim).unwrap(), b"victim");
}

#[test]
fn every_failure_removes_the_temporary_file() {
    let (dir, _o, store) = setup();
    // Dropped mid-way (a cut stream, a sha mismatch: the caller drops it).
    let mut up = store
        .begin_upload(&spec("x/cut.bin", 10, false), &ROOMY)
        .unwrap();
    up.write(b"12345").unwrap();
    assert_eq!(temps(dir.path()).len(), 1);
    drop(up);
    assert!(temps(dir.path()).is_empty());
    // More than declared.
    let mut up = store
        .begin_upload(&spec("x/long.bin", 4, false), &ROOMY)
        .unwrap();
    let e = up.write(b"12345").unwrap_err();
    assert!(
        matches!(&e, Error::InvalidArgument(m) if m.contains("size_bytes 4")),
        "{e}"
    );
    drop(up);
    // Fewer than declared.
    let mut up = store
        .begin_upload(&spec("x/short.bin", 4, false), &ROOMY)
        .unwrap();
    up.write(b"12").unwrap();
    let e = up.publish("x/short.bin").unwrap_err();
    assert!(
        matches!(&e, Error::InvalidArgument(m) if m.contains("2 bytes arrived")),
        "{e}"
    );
    assert_eq!(tree(dir.path()), ["x"]);
    assert_eq!(store.inflight.pending(), 0, "every reservation released");
}

#[test]
fn of_twenty_concurrent_uploads_to_one_name_exactly_one_wins() {
    let (dir, _o, store) = setup();
    let n = 20;
    let ready = Arc::new(Barrier::new(n));
    let threads: Vec<_> = (0..n)
        .map(|i| {
            let (store, ready) = (store.clone(), ready.clone());
            std::thread::spawn(move || {
                let data = vec![i as u8; 1000 + i];
                let mut up = store
                    .begin_upload(&spec("race/one.bin", data.len(), false), &ROOMY)
                    .expect("begun: the name is free when every upload starts");
                up.write(&data).unwrap();
                ready.wait();
                (data, up.publish("race/one.bin"))
            })
        })
        .collect();
    let results: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let winners: Vec<_> = results.iter().filter(|(_, r)| r.is_ok()).collect();
    assert_eq!(winners.len(), 1);
    for (_, r) in &results {
        if let Err(e) = r {
            assert!(matches!(e, Error::AlreadyExists(_)), "{e}");
        }
    }
    assert_eq!(
        std::fs::read(dir.path().join("race/one.bin")).unwrap(),
        winners[0].0
    );
    assert_eq!(tree(dir.path()), ["race", "race/one.bin"]);
}

#[test]
fn quotas_refuse_before_anything_is_created_naming_size_and_limit() {
    let (dir, _o, store) = setup();
    std::fs::write(dir.path().join("held.bin"), vec![0u8; 1000]).unwrap();
    let limits = StoreLimits {
        max_file_bytes: 700,
        max_total_bytes: 1500,
    };
    let e = store
        .begin_upload(&spec("new/dir/big.bin", 701, false), &limits)
        .unwrap_err();
    assert!(
        matches!(&e, Error::ResourceExhausted(m)
            if m.contains("size_bytes 701") && m.contains("store.max_file_bytes 700")),
        "{e}"
    );
    let e = store
        .begin_upload(&spec("new/dir/mid.bin", 600, false), &limits)
        .unwrap_err();
    assert!(
        matches!(&e, Error::ResourceExhausted(m)
            if m.contains("size_bytes 600") && m.contains("store.max_total_bytes 1500")
                && m.contains("1000 bytes are stored") && m.contains("leaving 500")),
        "{e}"
    );
    assert_eq!(tree(dir.path()), ["held.bin"], "nothing created");

    // Room held by an upload in progress is not given twice; it comes
    // back when the upload ends.
    let mut a = store
        .begin_upload(&spec("a.bin", 400, false), &limits)
        .unwrap();
    a.write(&[1u8; 100]).unwrap();
    let e = store
        .begin_upload(&spec("b.bin", 200, false), &limits)
        .unwrap_err();
    assert!(
        matches!(&e, Error::ResourceExhausted(m) if m.contains("300 more are promised")),
        "{e}"
    );
    drop(a);
    assert_eq!(store.inflight.pending(), 0);
    let mut b = store
        .begin_upload(&spec("b.bin", 500, false), &limits)
        .unwrap();
    b.write(&[2u8; 500]).unwrap();
    b.publish("b.bin").unwrap();
    assert_eq!(quota::usage(store.root()).unwrap(), 1500);
    // The volume's free space bounds every upload, quota or not.
    let e = store
        .begin_upload(&spec("huge.bin", usize::MAX / 2, false), &ROOMY)
        .unwrap_err();
    assert!(
        matches!(&e, Error::ResourceExhausted(m) if m.contains("store.max_file_bytes")),
        "{e}"
    );
    let no_file_limit = StoreLimits {
        max_file_bytes: u64::MAX,
        max_total_bytes: 0,
    };
    let e = store
        .begin_upload(&spec("huge.bin", usize::MAX / 2, false), &no_file_limit)
        .unwrap_err();
    assert!(
        matches!(&e, Error::ResourceExhausted(m) if m.contains("free space of the model store's volume")),
        "{e}"
    );
}
