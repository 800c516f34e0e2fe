//! The model file a worker loads, opened here: read-only, close-on-exec,
//! never following a link at its last component, checked to be a regular
//! file at the path the store resolved. The header is read from this open
//! file and the worker is handed this same descriptor at spawn, so the
//! file that was checked is the file that is loaded: a rename or a
//! replacement in the store after the open changes nothing for this start.

use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

/// Which file an open descriptor is: device, inode, size and change time.
/// Two opens that give the same identity read the same bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Identity {
    dev: u64,
    ino: u64,
    size: u64,
    ctime: (i64, i64),
}

/// An opened model file.
#[derive(Debug)]
pub struct ModelFile {
    file: File,
    identity: Identity,
}

impl ModelFile {
    /// Opens `path` (absolute, resolved inside the store). Errors name the
    /// path and what is wrong.
    pub fn open(path: &Path) -> Result<ModelFile, String> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            // O_CLOEXEC is std's default; a FIFO swapped in must not block.
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(path)
            .map_err(|e| format!("{}: cannot open the model file: {e}", path.display()))?;
        let meta = file
            .metadata()
            .map_err(|e| format!("{}: fstat: {e}", path.display()))?;
        if !meta.file_type().is_file() {
            return Err(format!(
                "{}: not a regular file (mode {:o})",
                path.display(),
                meta.mode()
            ));
        }
        // The directories on the way are the store's as resolved: what was
        // opened is the file at that path, not one a link led to since.
        let opened = std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd()))
            .map_err(|e| format!("{}: cannot read back the open file: {e}", path.display()))?;
        if opened != path {
            return Err(format!(
                "{}: the path now leads to {} (a link in the store changed): refused",
                path.display(),
                opened.display()
            ));
        }
        let identity = Identity {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            ctime: (meta.ctime(), meta.ctime_nsec()),
        };
        Ok(ModelFile { file, identity })
    }

    /// The open file (read it with positional reads: the offset is shared
    /// with the worker's copy of the descriptor).
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Which file this is.
    pub fn identity(&self) -> Identity {
        self.identity
    }

    /// Its size when opened.
    pub fn size(&self) -> u64 {
        self.identity.size
    }

    /// The descriptor's number here, which the worker sees too (it is
    /// inherited at the same number).
    pub fn raw_fd(&self) -> i32 {
        self.file.as_raw_fd()
    }

    /// The path the worker opens it by.
    pub fn worker_path(&self) -> String {
        format!("/proc/self/fd/{}", self.raw_fd())
    }

    /// The descriptor, to hand to the worker.
    pub fn into_fd(self) -> OwnedFd {
        self.file.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_a_regular_file_and_refuses_links_fifos_and_directories() {
        let dir = tempfile::tempdir().expect("dir");
        let root = dir.path().canonicalize().expect("canonical");
        let model = root.join("m.gguf");
        std::fs::write(&model, b"GGUF....").expect("write");
        let opened = ModelFile::open(&model).expect("a regular file opens");
        assert_eq!(opened.size(), 8);
        assert!(opened.worker_path().starts_with("/proc/self/fd/"));
        let link = root.join("link.gguf");
        std::os::unix::fs::symlink(&model, &link).expect("symlink");
        let e = ModelFile::open(&link).expect_err("a link is not followed");
        assert!(e.contains("link.gguf") && e.contains("cannot open"), "{e}");
        let e = ModelFile::open(&root).expect_err("a directory");
        assert!(e.contains("not a regular file"), "{e}");
        let fifo = root.join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).expect("mkfifo");
        let e = ModelFile::open(&fifo).expect_err("a FIFO");
        assert!(e.contains("not a regular file"), "{e}");
        // Replaced after the open: the open file keeps its bytes and identity.
        std::fs::rename(root.join("m.gguf"), root.join("old.gguf")).expect("rename");
        std::fs::write(&model, b"other").expect("replace");
        let mut head = [0u8; 4];
        std::os::unix::fs::FileExt::read_exact_at(opened.file(), &mut head, 0).expect("read");
        assert_eq!(&head, b"GGUF");
        let again = ModelFile::open(&model).expect("the new file");
        assert_ne!(again.identity(), opened.identity());
    }
}
