//! Binding a socket without following a link: the directory holding it
//! may be shared and writable by others (an emptyDir is 0777), who could
//! swap the path for a link to `/etc/...` between `bind` and a chmod or
//! chown by path, and a root supervisor would change the link's target.
//!
//! So the socket is bound in a fresh private directory next to the path
//! (mode 0700, ours, on the same file system), its mode and owner are
//! set there through that directory's descriptor (nobody else can put
//! anything in it), and it is then moved to the path with a rename that
//! never replaces anything (`RENAME_NOREPLACE`; a hard link where the
//! file system lacks it): whatever appeared at the path since the stale
//! check, a link included, is left alone and the bind refused.

use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, RenameFlags};
use nix::sys::stat::{FchmodatFlags, Mode, SFlag};
use nix::unistd::UnlinkatFlags;

use super::{Access, fail};
use crate::error::Error;

/// The socket's name in the private directory: short, so that a path
/// that fits `sun_path` still fits while staged.
const STAGED: &str = "s";

/// How many private directory names are tried before giving up (each
/// one taken means someone made it first).
const TRIES: u32 = 16;

/// Binds `path` (in `dir`, already checked) with `access`'s mode and
/// owner, as the module says.
pub(super) fn bind_placed(
    path: &Path,
    dir: &Path,
    key: &str,
    access: &Access,
) -> Result<tokio::net::UnixListener, Error> {
    let Some(name) = path.file_name() else {
        return Err(fail(key, path, "names no socket file"));
    };
    let parent = nix::fcntl::open(
        dir,
        OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| {
        fail(
            key,
            path,
            format_args!("open directory {}: {e}", dir.display()),
        )
    })?;
    let (private_name, private) = private_dir(&parent, dir, key, path)?;
    let bound = bind_inside(
        &parent,
        &private_name,
        &private,
        name,
        dir,
        key,
        path,
        access,
    );
    // The private directory goes whatever happened; the socket, once
    // moved, lives on at `path`.
    let _ = nix::unistd::unlinkat(&private, STAGED, UnlinkatFlags::NoRemoveDir);
    let _ = nix::unistd::unlinkat(&parent, private_name.as_str(), UnlinkatFlags::RemoveDir);
    bound
}

/// Makes a directory of our own, mode 0700, in `parent`: its name and a
/// descriptor of it, opened without following a link.
fn private_dir(
    parent: &OwnedFd,
    dir: &Path,
    key: &str,
    path: &Path,
) -> Result<(String, OwnedFd), Error> {
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    for n in 0..TRIES {
        let private_name = format!(".bind{stamp:08x}{n:x}");
        match nix::sys::stat::mkdirat(parent, private_name.as_str(), Mode::S_IRWXU) {
            Ok(()) => {}
            Err(Errno::EEXIST) => continue,
            Err(e) => {
                return Err(fail(
                    key,
                    path,
                    format_args!("create a private directory in {}: {e}", dir.display()),
                ));
            }
        }
        let opened = nix::fcntl::openat(
            parent,
            private_name.as_str(),
            OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_RDONLY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| e.to_string())
        .and_then(|fd| {
            // Ours and 0700, or someone swapped it after mkdirat.
            let st = nix::sys::stat::fstat(&fd).map_err(|e| e.to_string())?;
            let me = nix::unistd::geteuid().as_raw();
            if st.st_uid != me || st.st_mode & 0o077 != 0 {
                return Err(format!(
                    "it is owned by uid {} with mode {:04o}, not uid {me} with 0700",
                    st.st_uid,
                    st.st_mode & 0o7777
                ));
            }
            Ok(fd)
        });
        return match opened {
            Ok(fd) => Ok((private_name, fd)),
            Err(e) => Err(fail(
                key,
                path,
                format_args!(
                    "the private directory {} changed under us: {e}",
                    dir.join(&private_name).display()
                ),
            )),
        };
    }
    Err(fail(
        key,
        path,
        format_args!(
            "{TRIES} private directory names in {} were all taken",
            dir.display()
        ),
    ))
}

/// Binds in the private directory, sets the mode and owner there, moves
/// the socket to `path`.
#[allow(clippy::too_many_arguments)]
fn bind_inside(
    parent: &OwnedFd,
    private_name: &str,
    private: &OwnedFd,
    name: &std::ffi::OsStr,
    dir: &Path,
    key: &str,
    path: &Path,
    access: &Access,
) -> Result<tokio::net::UnixListener, Error> {
    let staged = dir.join(private_name).join(STAGED);
    let listener = tokio::net::UnixListener::bind(&staged)
        .map_err(|e| fail(key, path, format_args!("bind {}: {e}", staged.display())))?;
    // What `bind` made must be in the directory we hold (had the name
    // been swapped, it went elsewhere and nothing is here).
    let st =
        nix::sys::stat::fstatat(private, STAGED, AtFlags::AT_SYMLINK_NOFOLLOW).map_err(|e| {
            fail(
                key,
                path,
                format_args!("the bound socket is not where bound: {e}"),
            )
        })?;
    if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT != SFlag::S_IFSOCK {
        return Err(fail(key, path, "what was bound is not a socket"));
    }
    // Nobody else can add to `private`: no link to follow here.
    nix::sys::stat::fchmodat(
        private,
        STAGED,
        Mode::from_bits_truncate(access.mode as nix::libc::mode_t),
        FchmodatFlags::FollowSymlink,
    )
    .map_err(|e| fail(key, path, format_args!("chmod {:04o}: {e}", access.mode)))?;
    if access.owner.is_some() || access.group.is_some() {
        nix::unistd::fchownat(
            private,
            STAGED,
            access.owner.map(nix::unistd::Uid::from_raw),
            access.group.map(nix::unistd::Gid::from_raw),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .map_err(|e| {
            fail(
                key,
                path,
                format_args!(
                    "chown to owner {} group {}: {e} (changing the owner needs CAP_CHOWN; \
                     a group, membership of it)",
                    access.owner.map_or("unchanged".into(), |u| u.to_string()),
                    access.group.map_or("unchanged".into(), |g| g.to_string()),
                ),
            )
        })?;
    }
    let moved = nix::fcntl::renameat2(
        private,
        STAGED,
        parent.as_fd(),
        name,
        RenameFlags::RENAME_NOREPLACE,
    );
    let moved = match moved {
        // A file system without RENAME_NOREPLACE: a hard link never
        // replaces either (the private entry goes with the directory).
        Err(Errno::EINVAL | Errno::ENOSYS) => {
            nix::unistd::linkat(private, STAGED, parent, name, AtFlags::empty())
        }
        other => other,
    };
    match moved {
        Ok(()) => Ok(listener),
        Err(Errno::EEXIST) => Err(fail(
            key,
            path,
            "something appeared at the path while the socket was being bound; \
             refusing to replace it (remove it, or choose another path)",
        )),
        Err(e) => Err(fail(
            key,
            path,
            format_args!("move the socket from {} into place: {e}", staged.display()),
        )),
    }
}
