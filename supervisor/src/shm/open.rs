//! Opening a client's object: relative to the shared-memory directory
//! only, never through a symbolic link, never blocking (a FIFO), and only
//! what the caller could open itself.
//!
//! The ownership rule (the supervisor may run as root, so its own rights
//! say nothing about the caller's):
//! - a caller whose uid is known (peer credentials on a Unix socket):
//!   the object must be owned by that uid (uid 0 may name any object);
//!   it is readable and writable as its owner bits say;
//! - a caller whose uid is not known (TCP, with or without a token): only
//!   what the object's "other" bits grant everyone (`S_IROTH`, `S_IWOTH`),
//!   whoever owns it. The supervisor's own uid lends nothing: a TCP
//!   client (another container, or the network) never borrows the
//!   sidecar's rights over its own or the application's private objects.
//!
//! Refused: PERMISSION_DENIED naming the object's owner and the caller.

use std::os::fd::OwnedFd;
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{OFlag, openat};
use nix::sys::stat::{FileStat, Mode, SFlag, fstat};

use super::names::shown;
use crate::error::Error;

/// Who asks, as the ownership rule sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Asker {
    /// The caller's uid when the transport tells it.
    pub uid: Option<u32>,
    /// The supervisor's effective uid (reported, never lent: module docs).
    pub own_uid: u32,
}

/// What the rule lets the caller do with an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Access {
    /// May read it.
    pub read: bool,
    /// May write it.
    pub write: bool,
}

/// The ownership rule (module docs) for an object of `owner` with `mode`
/// bits.
pub fn access(asker: Asker, owner: u32, mode: u32, key: &str) -> Result<Access, Error> {
    let bits = |r: u32, w: u32| Access {
        read: mode & r != 0,
        write: mode & w != 0,
    };
    let (usr_r, usr_w) = (Mode::S_IRUSR.bits(), Mode::S_IWUSR.bits());
    let (oth_r, oth_w) = (Mode::S_IROTH.bits(), Mode::S_IWOTH.bits());
    let got = match asker.uid {
        Some(0) => Access {
            read: true,
            write: true,
        },
        Some(uid) if uid == owner => bits(usr_r, usr_w),
        Some(uid) => {
            return Err(Error::PermissionDenied(format!(
                "shared-memory object {} belongs to uid {owner}, not to the caller's uid {uid}",
                shown(key)
            )));
        }
        None => bits(oth_r, oth_w),
    };
    if !got.read {
        return Err(Error::PermissionDenied(format!(
            "shared-memory object {} (owner uid {owner}, mode {:o}) may not be read by this caller{}",
            shown(key),
            mode & 0o7777,
            if asker.uid.is_none() {
                " (a caller without peer credentials may use only objects readable by all: mode o+r)"
            } else {
                ""
            }
        )));
    }
    Ok(got)
}

/// An opened object.
#[derive(Debug)]
pub struct Opened {
    /// Its descriptor (read-write when `writable`).
    pub fd: OwnedFd,
    /// Its size when opened, bytes.
    pub size: u64,
    /// Open read-write.
    pub writable: bool,
}

fn open_at(dir: &OwnedFd, file: &str, write: bool) -> Result<OwnedFd, Errno> {
    let mode = if write {
        OFlag::O_RDWR
    } else {
        OFlag::O_RDONLY
    };
    openat(
        dir,
        file,
        mode | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK | OFlag::O_NOCTTY,
        Mode::empty(),
    )
}

fn refused(key: &str, e: Errno) -> Error {
    let k = shown(key);
    match e {
        Errno::ENOENT => Error::NotFound(format!("shared-memory object {k} does not exist")),
        Errno::ELOOP => Error::InvalidArgument(format!(
            "shared-memory object {k} is a symbolic link; links are not followed"
        )),
        Errno::EISDIR | Errno::ENOTDIR => {
            Error::InvalidArgument(format!("shared-memory object {k} is not a regular file"))
        }
        Errno::EACCES | Errno::EPERM => {
            Error::PermissionDenied(format!("shared-memory object {k}: {e}"))
        }
        e => Error::InvalidArgument(format!("shared-memory object {k} cannot be opened: {e}")),
    }
}

fn regular(key: &str, st: &FileStat) -> Result<(), Error> {
    if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT != SFlag::S_IFREG {
        return Err(Error::InvalidArgument(format!(
            "shared-memory object {} is not a regular file",
            shown(key)
        )));
    }
    Ok(())
}

/// Opens `file` (a checked key without its slash) in `dir`: read-only
/// first (a FIFO opens without waiting and is refused as not regular),
/// then read-write where the rule allows it and the object opens so.
/// `need_write`: read-only is PERMISSION_DENIED.
pub fn open(
    dir: &Path,
    key: &str,
    file: &str,
    asker: Asker,
    need_write: bool,
) -> Result<Opened, Error> {
    let dir_fd = nix::fcntl::open(
        dir,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| Error::Unavailable(format!("shared-memory directory {dir:?}: {e}")))?;
    let ro = open_at(&dir_fd, file, false).map_err(|e| refused(key, e))?;
    let st = fstat(&ro).map_err(|e| Error::Internal(format!("fstat {}: {e}", shown(key))))?;
    regular(key, &st)?;
    let allowed = access(asker, st.st_uid, st.st_mode, key)?;
    let mut opened = Opened {
        fd: ro,
        size: u64::try_from(st.st_size).unwrap_or(0),
        writable: false,
    };
    if allowed.write
        && let Ok(rw) = open_at(&dir_fd, file, true)
        && let Ok(st2) = fstat(&rw)
        && (st2.st_dev, st2.st_ino) == (st.st_dev, st.st_ino)
    {
        opened.fd = rw;
        opened.size = u64::try_from(st2.st_size).unwrap_or(0);
        opened.writable = true;
    }
    if need_write && !opened.writable {
        return Err(Error::PermissionDenied(format!(
            "shared-memory object {} cannot be opened for writing by this caller (writable was required)",
            shown(key)
        )));
    }
    Ok(opened)
}

/// The current size of an open object, bytes.
pub fn size_now(fd: &OwnedFd) -> Result<u64, Error> {
    let st = fstat(fd).map_err(|e| Error::Internal(format!("fstat of a region: {e}")))?;
    Ok(u64::try_from(st.st_size).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ME: u32 = 1000;

    #[test]
    fn a_known_uid_must_own_the_object() {
        let asker = Asker {
            uid: Some(ME),
            own_uid: 0,
        };
        let rw = access(asker, ME, 0o600, "/k").expect("own");
        assert_eq!((rw.read, rw.write), (true, true));
        let ro = access(asker, ME, 0o400, "/k").expect("own, read-only");
        assert_eq!((ro.read, ro.write), (true, false));
        let Err(Error::PermissionDenied(m)) = access(asker, 0, 0o666, "/k") else {
            panic!("another owner accepted");
        };
        assert!(m.contains("uid 0") && m.contains("uid 1000"), "{m}");
        assert!(access(asker, ME, 0o200, "/k").is_err(), "write-only");
        let root = Asker {
            uid: Some(0),
            own_uid: 0,
        };
        assert!(access(root, ME, 0o000, "/k").expect("root").write);
    }

    #[test]
    fn an_unknown_uid_gets_only_what_all_may() {
        let tcp = Asker {
            uid: None,
            own_uid: ME,
        };
        // The sidecar's own non-root uid lends nothing to a TCP caller.
        let Err(Error::PermissionDenied(m)) = access(tcp, ME, 0o600, "/k") else {
            panic!("a TCP caller borrowed the sidecar's owner bits");
        };
        assert!(
            m.contains("owner uid 1000") && m.contains("mode 600"),
            "{m}"
        );
        assert!(m.contains("o+r"), "{m}");
        let own_ro = access(tcp, ME, 0o644, "/k").expect("own, readable by all");
        assert_eq!((own_ro.read, own_ro.write), (true, false), "o+r only");
        assert!(access(tcp, 2000, 0o600, "/k").is_err(), "another user's");
        let all = access(tcp, 2000, 0o644, "/k").expect("readable by all");
        assert_eq!((all.read, all.write), (true, false));
        let rw = access(tcp, 2000, 0o606, "/k").expect("o+rw");
        assert_eq!((rw.read, rw.write), (true, true));
        let root_sidecar = Asker {
            uid: None,
            own_uid: 0,
        };
        let Err(Error::PermissionDenied(m)) = access(root_sidecar, 0, 0o600, "/k") else {
            panic!("a root supervisor lent root's private object");
        };
        assert!(m.contains("owner uid 0") && m.contains("mode 600"), "{m}");
        assert!(access(root_sidecar, 0, 0o666, "/k").expect("all").write);
    }
}
