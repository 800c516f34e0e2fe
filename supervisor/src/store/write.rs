//! Writing into the store without trusting what is in it.
//!
//! The destination's directories are walked by file descriptor from the
//! store's root, one component at a time: each existing component is
//! checked to stay inside the store before anything is created beneath
//! it, and a missing one is created inside the directory just checked
//! (`mkdirat`), so no path is ever resolved twice. A symbolic link is
//! followed only where the directory it opens is inside the store.
//!
//! The bytes go to a temporary file with a random name, created
//! exclusively (`O_CREAT|O_EXCL|O_NOFOLLOW`) in the destination's
//! directory: a file or link planted at that name makes the create fail,
//! it is never followed or truncated. Publishing is one atomic step:
//! `renameat2(RENAME_NOREPLACE)` when the upload must not replace a file
//! (else `link` + `unlink`, which fails the same way with EEXIST), plain
//! `rename` when it may. The temporary file is removed on every other
//! path, by `Drop`.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{FileStat, Mode, SFlag};
use nix::unistd::UnlinkatFlags;

use super::quota::Reservation;
use crate::error::Error;

/// Names starting with this are uploads in progress (hidden from lists,
/// refused as destinations).
pub const TEMP_PREFIX: &str = ".upload-";

const DIR_FLAGS: OFlag = OFlag::O_RDONLY
    .union(OFlag::O_DIRECTORY)
    .union(OFlag::O_CLOEXEC);

/// A directory of the store, held open so it cannot be swapped between
/// the check and the write.
#[derive(Debug)]
pub struct Dir {
    file: File,
    /// Its real path (inside the store's canonical root).
    real: PathBuf,
}

/// The destination of an upload, split and checked.
#[derive(Debug)]
pub struct Target<'a> {
    /// Directory components below the root.
    pub dirs: Vec<&'a OsStr>,
    /// The file's name.
    pub name: &'a OsStr,
}

/// Splits `relative` into directories and a file name, refusing empty and
/// absolute paths, `..` and the temporary files' prefix.
pub fn target(relative: &str) -> Result<Target<'_>, Error> {
    if relative.is_empty() {
        return Err(Error::InvalidArgument("path must not be empty".into()));
    }
    let mut parts = Vec::new();
    for c in Path::new(relative).components() {
        match c {
            Component::Normal(p) => parts.push(p),
            Component::CurDir => {}
            Component::ParentDir => {
                return Err(Error::InvalidArgument(format!(
                    "path {relative:?} contains '..'; paths are relative to the model store"
                )));
            }
            Component::RootDir | Component::Prefix(_) => {
                return Err(Error::InvalidArgument(format!(
                    "path {relative:?} is absolute; paths are relative to the model store"
                )));
            }
        }
    }
    let Some(name) = parts.pop() else {
        return Err(Error::InvalidArgument(format!(
            "path {relative:?} names no file"
        )));
    };
    if parts
        .iter()
        .chain([&name])
        .any(|p| p.to_string_lossy().starts_with(TEMP_PREFIX))
    {
        return Err(Error::InvalidArgument(format!(
            "path {relative:?}: names starting with {TEMP_PREFIX:?} are reserved for uploads in progress"
        )));
    }
    Ok(Target { dirs: parts, name })
}

fn os(what: &str, e: Errno) -> Error {
    match e {
        Errno::ENOSPC | Errno::EDQUOT => Error::ResourceExhausted(format!("{what}: {e}")),
        _ => Error::Internal(format!("{what}: {e}")),
    }
}

fn file_type(st: &FileStat) -> SFlag {
    SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits())
}

fn kind(st: &FileStat) -> &'static str {
    match file_type(st) {
        SFlag::S_IFREG => "a regular file",
        SFlag::S_IFDIR => "a directory",
        SFlag::S_IFLNK => "a symbolic link",
        SFlag::S_IFSOCK => "a socket",
        SFlag::S_IFIFO => "a pipe",
        _ => "a device",
    }
}

impl Dir {
    /// The store's root (`root` is canonical).
    pub fn root(root: &Path) -> Result<Dir, Error> {
        let fd = nix::fcntl::open(root, DIR_FLAGS | OFlag::O_NOFOLLOW, Mode::empty())
            .map_err(|e| os(&format!("open the model store {}", root.display()), e))?;
        Ok(Dir {
            file: File::from(fd),
            real: root.to_path_buf(),
        })
    }

    /// Its real path.
    pub fn real(&self) -> &Path {
        &self.real
    }

    /// The subdirectory `name`, created (mode 0755) if missing; a symbolic
    /// link is followed only when it leads to a directory inside `root`.
    pub fn enter(&self, name: &OsStr, root: &Path, relative: &str) -> Result<Dir, Error> {
        let shown = name.to_string_lossy();
        // A racing writer can remove or replace the name between our steps:
        // a few tries, then give up.
        for _ in 0..4 {
            match nix::fcntl::openat(
                &self.file,
                name,
                DIR_FLAGS | OFlag::O_NOFOLLOW,
                Mode::empty(),
            ) {
                Ok(fd) => {
                    return Ok(Dir {
                        file: File::from(fd),
                        real: self.real.join(name),
                    });
                }
                Err(Errno::ENOENT) => {
                    match nix::sys::stat::mkdirat(&self.file, name, Mode::from_bits_truncate(0o755))
                    {
                        Ok(()) | Err(Errno::EEXIST) => continue,
                        Err(e) => return Err(os(&format!("create directory {shown:?}"), e)),
                    }
                }
                Err(Errno::ELOOP | Errno::ENOTDIR) => {
                    let st = match nix::sys::stat::fstatat(
                        &self.file,
                        name,
                        AtFlags::AT_SYMLINK_NOFOLLOW,
                    ) {
                        Ok(st) => st,
                        Err(Errno::ENOENT) => continue,
                        Err(e) => return Err(os(&format!("stat {shown:?}"), e)),
                    };
                    if file_type(&st) != SFlag::S_IFLNK {
                        return Err(Error::InvalidArgument(format!(
                            "path {relative:?}: {shown:?} is {}, not a directory",
                            kind(&st)
                        )));
                    }
                    return self.follow(name, root, relative);
                }
                Err(e) => return Err(os(&format!("open directory {shown:?}"), e)),
            }
        }
        Err(Error::Unavailable(format!(
            "path {relative:?}: {shown:?} keeps changing while it is opened; try again"
        )))
    }

    /// Opens the symbolic link `name` as a directory and keeps it only if
    /// what it opened (its real path, read from the open descriptor, so
    /// nothing can change between the check and the use) is in the store.
    fn follow(&self, name: &OsStr, root: &Path, relative: &str) -> Result<Dir, Error> {
        let shown = name.to_string_lossy();
        let leaves = || {
            Error::InvalidArgument(format!(
                "path {relative:?} leaves the model store: {shown:?} is a symbolic link that does not lead to a directory inside it"
            ))
        };
        let fd =
            nix::fcntl::openat(&self.file, name, DIR_FLAGS, Mode::empty()).map_err(|_| leaves())?;
        let real = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
            .map_err(|e| Error::Internal(format!("where {shown:?} leads: {e}")))?;
        if !real.starts_with(root) {
            return Err(leaves());
        }
        Ok(Dir {
            file: File::from(fd),
            real,
        })
    }

    /// What is at `name` in this directory, links not followed; None when
    /// nothing is.
    pub fn stat(&self, name: &OsStr) -> Result<Option<FileStat>, Error> {
        match nix::sys::stat::fstatat(&self.file, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) => Ok(Some(st)),
            Err(Errno::ENOENT) => Ok(None),
            Err(e) => Err(os(&format!("stat {:?}", name.to_string_lossy()), e)),
        }
    }
}

/// Creates `name` in `dir` as a new file, never following or truncating
/// what is there: None when anything (a file, a link, dangling or not)
/// already has the name.
pub(super) fn create_exclusive(dir: &Dir, name: &OsStr) -> Result<Option<File>, Error> {
    let flags =
        OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    match nix::fcntl::openat(&dir.file, name, flags, Mode::from_bits_truncate(0o644)) {
        Ok(fd) => Ok(Some(File::from(fd))),
        Err(Errno::EEXIST) => Ok(None),
        Err(e) => Err(os("create temporary file", e)),
    }
}

/// 128 random bits in hex, from the kernel.
fn random_name() -> Result<OsString, Error> {
    let mut bytes = [0u8; 16];
    File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(|e| Error::Internal(format!("random temporary name: {e}")))?;
    Ok(format!("{TEMP_PREFIX}{}.part", super::hex(&bytes)).into())
}

/// An upload being written: a temporary file beside its destination,
/// removed when dropped unless published.
#[derive(Debug)]
pub struct Upload {
    dir: Dir,
    name: OsString,
    temp: OsString,
    file: File,
    size: u64,
    written: u64,
    overwrite: bool,
    replaces: bool,
    published: bool,
    reservation: Reservation,
}

/// What an upload is, once its room is reserved.
#[derive(Debug)]
pub struct Begin<'a> {
    /// The destination's directory (checked, opened).
    pub dir: Dir,
    /// The file's name in it.
    pub name: &'a OsStr,
    /// The store-relative path, for messages.
    pub relative: &'a str,
    /// Declared size.
    pub size: u64,
    /// Replace an existing file.
    pub overwrite: bool,
    /// Its claim on the store's room.
    pub reservation: Reservation,
}

impl Upload {
    /// Checks what is at the destination now and creates the temporary
    /// file. An existing file without `overwrite` is ALREADY_EXISTS; a
    /// directory, link or anything else is INVALID_ARGUMENT.
    pub fn start(b: Begin<'_>) -> Result<Upload, Error> {
        let replaces = match b.dir.stat(b.name)? {
            None => false,
            Some(st) if file_type(&st) == SFlag::S_IFREG => {
                if !b.overwrite {
                    return Err(Error::AlreadyExists(format!(
                        "{:?} exists; set overwrite to replace it",
                        b.relative
                    )));
                }
                true
            }
            Some(st) => {
                return Err(Error::InvalidArgument(format!(
                    "path {:?} is {}, not a regular file",
                    b.relative,
                    kind(&st)
                )));
            }
        };
        for _ in 0..8 {
            let temp = random_name()?;
            // Something sits at the name: never touched, another name.
            let Some(file) = create_exclusive(&b.dir, &temp)? else {
                continue;
            };
            return Ok(Upload {
                dir: b.dir,
                name: b.name.to_owned(),
                temp,
                file,
                size: b.size,
                written: 0,
                overwrite: b.overwrite,
                replaces,
                published: false,
                reservation: b.reservation,
            });
        }
        Err(Error::Internal(
            "no free temporary name after 8 random tries".into(),
        ))
    }

    /// The destination's real path.
    pub fn dest(&self) -> PathBuf {
        self.dir.real.join(&self.name)
    }

    /// Whether a file was at the destination when the upload started.
    pub fn replaces(&self) -> bool {
        self.replaces
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// The temporary file's name (tests plant things at it).
    pub fn temp_name(&self) -> &OsStr {
        &self.temp
    }

    /// Appends `chunk`; more than the declared size is INVALID_ARGUMENT.
    pub fn write(&mut self, chunk: &[u8]) -> Result<(), Error> {
        let after = self.written.saturating_add(chunk.len() as u64);
        if after > self.size {
            return Err(Error::InvalidArgument(format!(
                "more than the announced {} bytes arrived (size_bytes {})",
                self.size, self.size
            )));
        }
        self.file.write_all(chunk).map_err(|e| match e.kind() {
            std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded => {
                Error::ResourceExhausted(format!("write: {e}"))
            }
            _ => Error::Internal(format!("write: {e}")),
        })?;
        self.written = after;
        self.reservation.wrote(chunk.len() as u64);
        Ok(())
    }

    /// Syncs the file and puts it in place atomically: without
    /// `overwrite`, an existing destination (even one that appeared while
    /// the bytes arrived) is ALREADY_EXISTS and stays as it was. Returns
    /// the destination's real path and the file's metadata.
    pub fn publish(mut self, relative: &str) -> Result<(PathBuf, std::fs::Metadata), Error> {
        if self.written != self.size {
            return Err(Error::InvalidArgument(format!(
                "{} bytes arrived, the header announced {} (size_bytes)",
                self.written, self.size
            )));
        }
        self.file
            .sync_all()
            .map_err(|e| Error::Internal(format!("fsync: {e}")))?;
        let meta = self
            .file
            .metadata()
            .map_err(|e| Error::Internal(format!("stat: {e}")))?;
        let dir = self.dir.file.as_fd();
        let (temp, name) = (self.temp.as_os_str(), self.name.as_os_str());
        // What is published is the file we wrote, not something put at its
        // name meanwhile.
        let ours = nix::sys::stat::fstatat(dir, temp, AtFlags::AT_SYMLINK_NOFOLLOW)
            .is_ok_and(|st| st.st_dev == meta.dev() && st.st_ino == meta.ino());
        if !ours {
            return Err(Error::Internal(format!(
                "the temporary file of {relative:?} was replaced while the upload ran"
            )));
        }
        let result = if self.overwrite {
            nix::fcntl::renameat(dir, temp, dir, name).map(|()| Published::Renamed)
        } else {
            publish_new(dir, temp, name)
        };
        match result {
            Ok(Published::Renamed) => self.published = true,
            Ok(Published::Linked) => {
                self.published = true;
                let _ = nix::unistd::unlinkat(dir, temp, UnlinkatFlags::NoRemoveDir);
            }
            Err(Errno::EEXIST | Errno::ENOTEMPTY) if !self.overwrite => {
                return Err(Error::AlreadyExists(format!(
                    "{relative:?} exists; set overwrite to replace it"
                )));
            }
            Err(Errno::EISDIR | Errno::ENOTEMPTY | Errno::EEXIST) => {
                return Err(Error::InvalidArgument(format!(
                    "path {relative:?} is a directory, not a regular file"
                )));
            }
            Err(e) => return Err(os("rename into place", e)),
        }
        // The rename itself is durable once the directory is.
        let _ = self.dir.file.sync_all();
        Ok((self.dest(), meta))
    }
}

enum Published {
    Renamed,
    Linked,
}

/// Puts `temp` at `name` unless something is there (EEXIST), atomically.
fn publish_new(
    dir: std::os::fd::BorrowedFd<'_>,
    temp: &OsStr,
    name: &OsStr,
) -> Result<Published, Errno> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    match nix::fcntl::renameat2(
        dir,
        temp,
        dir,
        name,
        nix::fcntl::RenameFlags::RENAME_NOREPLACE,
    ) {
        Ok(()) => return Ok(Published::Renamed),
        // The filesystem cannot: a hard link fails the same way.
        Err(Errno::EINVAL | Errno::ENOSYS | Errno::EOPNOTSUPP) => {}
        Err(e) => return Err(e),
    }
    nix::unistd::linkat(dir, temp, dir, name, AtFlags::empty()).map(|()| Published::Linked)
}

impl Drop for Upload {
    fn drop(&mut self) {
        if !self.published {
            let _ = nix::unistd::unlinkat(
                &self.dir.file,
                self.temp.as_os_str(),
                UnlinkatFlags::NoRemoveDir,
            );
        }
    }
}
