//! The supervisor's side of the control socket: where it may be bound.
//!
//! The socket serves AdminService and LoadModel/UnloadModel, so who can
//! reach it can change what the pod runs. It is protected by its
//! directory: owned by us with mode 0700 (created so when missing; an
//! existing one with another owner or any group/other permission is
//! refused, naming its mode), so no other user can reach the socket or
//! swap what sits at its path. The socket file is also set to 0600 right
//! after bind; the process-wide umask is never changed (other threads
//! create files meanwhile).
//!
//! What already sits at the path is never removed unless it is a socket
//! nobody listens on (a previous run's); a regular file, a directory, a
//! link or a live socket is an error naming the path.

use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt};
use std::path::Path;

use crate::error::Error;

fn fail(key: &str, path: &Path, what: impl std::fmt::Display) -> Error {
    Error::Config(format!("{key} {}: {what}", path.display()))
}

/// Whether a directory with this owner and mode may hold the socket of a
/// process running as `me`; the reason when not.
pub fn check_dir(dir: &Path, owner: u32, mode: u32, me: u32) -> Result<(), String> {
    if owner != me {
        return Err(format!(
            "its directory {} is owned by uid {owner}, not by this process (uid {me}); \
             it must be owned by uid {me} with mode 0700",
            dir.display()
        ));
    }
    if mode & 0o077 != 0 {
        return Err(format!(
            "its directory {} has mode {:04o}, which lets group or others reach the socket; \
             it must be 0700 (chmod 0700 {0}, or name a directory the sidecar creates)",
            dir.display(),
            mode & 0o7777
        ));
    }
    Ok(())
}

/// Binds the control socket at `path` after the checks above.
pub fn bind(path: &Path) -> Result<tokio::net::UnixListener, Error> {
    bind_as(path, "control_socket")
}

/// Binds a socket at `path` after the checks above, errors naming the
/// setting `key` (the HTTP API's `openai.address` takes the same care).
pub fn bind_as(path: &Path, key: &str) -> Result<tokio::net::UnixListener, Error> {
    bind_with(path, key, &Access::PRIVATE)
}

/// Who may reach a socket: its directory's and its own permissions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Access {
    /// Mode of the directory when it is created.
    pub dir_mode: u32,
    /// Whether an existing directory must be ours with mode 0700
    /// ([`check_dir`]); false for a directory shared with another
    /// container, whose socket's own mode and owner guard it.
    pub private_dir: bool,
    /// The socket's mode, set right after bind.
    pub mode: u32,
    /// uid and gid the socket (and a directory created here) is given.
    pub owner: Option<u32>,
    /// See `owner`.
    pub group: Option<u32>,
}

impl Access {
    /// The control socket's: a 0700 directory of ours, the socket 0600.
    pub const PRIVATE: Access = Access {
        dir_mode: 0o700,
        private_dir: true,
        mode: 0o600,
        owner: None,
        group: None,
    };
}

/// [`bind_as`] with `access`: the directory created with its mode when
/// missing (and given its owner), the socket given its mode and owner.
pub fn bind_with(
    path: &Path,
    key: &str,
    access: &Access,
) -> Result<tokio::net::UnixListener, Error> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if path.file_name().is_none() {
        return Err(fail(key, path, "names no socket file"));
    }
    match std::fs::symlink_metadata(dir) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(access.dir_mode)
                .create(dir)
                .map_err(|e| {
                    fail(
                        key,
                        path,
                        format_args!("create directory {}: {e}", dir.display()),
                    )
                })?;
            settle_created(dir, access).map_err(|e| fail(key, path, e))?;
        }
        Err(e) => {
            return Err(fail(
                key,
                path,
                format_args!("directory {}: {e}", dir.display()),
            ));
        }
    }
    let meta = std::fs::metadata(dir)
        .map_err(|e| fail(key, path, format_args!("directory {}: {e}", dir.display())))?;
    if !meta.is_dir() {
        return Err(fail(
            key,
            path,
            format_args!("{} is not a directory", dir.display()),
        ));
    }
    if access.private_dir {
        let me = nix::unistd::geteuid().as_raw();
        check_dir(dir, meta.uid(), meta.mode(), me).map_err(|e| fail(key, path, e))?;
    }
    remove_stale(path, key)?;
    place::bind_placed(path, dir, key, access)
}

/// Gives a directory just created at `dir` its mode (the umask may have
/// taken bits) and owner through a descriptor opened without following a
/// link, after checking it is still the one made: a directory of ours. So
/// whoever can write to its parent and swaps it, between the `mkdir` and
/// now, for a link to `/etc/...` or a directory of theirs, gets a refusal,
/// never a chmod or chown of what they chose.
fn settle_created(dir: &Path, access: &Access) -> Result<(), String> {
    use nix::fcntl::OFlag;
    let fd = nix::fcntl::open(
        dir,
        OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(|e| {
        format!(
            "directory {} just created: open without following a link: {e} (was it replaced?)",
            dir.display()
        )
    })?;
    let st = nix::sys::stat::fstat(&fd).map_err(|e| format!("fstat {}: {e}", dir.display()))?;
    let me = nix::unistd::geteuid().as_raw();
    if st.st_uid != me {
        return Err(format!(
            "directory {} just created is owned by uid {}, not this process's {me}: it was replaced; refusing to change it",
            dir.display(),
            st.st_uid
        ));
    }
    nix::sys::stat::fchmod(
        &fd,
        nix::sys::stat::Mode::from_bits_truncate(access.dir_mode),
    )
    .map_err(|e| format!("chmod {:04o} {}: {e}", access.dir_mode, dir.display()))?;
    if access.owner.is_some() || access.group.is_some() {
        nix::unistd::fchown(
            &fd,
            access.owner.map(nix::unistd::Uid::from_raw),
            access.group.map(nix::unistd::Gid::from_raw),
        )
        .map_err(|e| {
            format!(
                "chown {} to owner {} group {}: {e} (changing the owner needs CAP_CHOWN; a group, membership of it)",
                dir.display(),
                access.owner.map_or("unchanged".into(), |u| u.to_string()),
                access.group.map_or("unchanged".into(), |g| g.to_string()),
            )
        })?;
    }
    Ok(())
}

/// Removes what is at `path` only if it is a socket nobody listens on.
fn remove_stale(path: &Path, key: &str) -> Result<(), Error> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(fail(key, path, e)),
    };
    let kind = meta.file_type();
    if !kind.is_socket() {
        let what = if kind.is_file() {
            "a regular file"
        } else if kind.is_dir() {
            "a directory"
        } else if kind.is_symlink() {
            "a symbolic link"
        } else {
            "not a socket"
        };
        return Err(fail(
            key,
            path,
            format_args!(
                "the path exists and is {what}, not a socket; refusing to replace it \
                 (remove it, or choose another path)"
            ),
        ));
    }
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => Err(fail(
            key,
            path,
            "another process is listening on this socket (is another sidecar running?)",
        )),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => std::fs::remove_file(path)
            .map_err(|e| fail(key, path, format_args!("remove stale socket: {e}"))),
        Err(e) => Err(fail(
            key,
            path,
            format_args!("probing the existing socket: {e}"),
        )),
    }
}

/// Removes the socket at shutdown (only a socket; nothing else there is
/// ours to remove).
pub fn remove(path: &Path) {
    if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket()) {
        let _ = std::fs::remove_file(path);
    }
}

mod place;

#[cfg(test)]
mod tests;
