//! The sandbox probe: a request compiled in only with the cargo feature
//! `sandbox-probe` (test builds: `scripts/test.sh`), which makes the worker
//! try what its sandbox must refuse — run a program, open a TCP
//! connection, write a file — and answer with each outcome. Without the
//! feature (every production build) it is refused with UNIMPLEMENTED, so a
//! production worker can never be asked to try.

use sidecar_proto::v1::{SandboxProbeRequest, SandboxProbeResponse};

use crate::error::WorkerError;

/// Answers a probe request (UNIMPLEMENTED without the feature).
#[cfg(not(feature = "sandbox-probe"))]
pub(crate) fn answer(_: &SandboxProbeRequest) -> Result<SandboxProbeResponse, WorkerError> {
    Err(WorkerError::unimplemented(
        "sandbox_probe exists only in test builds (cargo feature sandbox-probe)",
    ))
}

/// Answers a probe request: each attempt's outcome.
#[cfg(feature = "sandbox-probe")]
pub(crate) fn answer(req: &SandboxProbeRequest) -> Result<SandboxProbeResponse, WorkerError> {
    let port = u16::try_from(req.connect_port)
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| {
            WorkerError::invalid(format!(
                "connect_port is {}, must be 1-65535",
                req.connect_port
            ))
        })?;
    if req.write_path.is_empty() {
        return Err(WorkerError::invalid(
            "write_path is empty, must name a file",
        ));
    }
    let (socket, connect) = tcp(port);
    Ok(SandboxProbeResponse {
        pid: std::process::id(),
        exec: exec(),
        socket,
        connect,
        write: write(&req.write_path),
        off_list: if req.off_list {
            off_list()
        } else {
            "not tried".into()
        },
    })
}

/// The outcome word of a successful attempt.
#[cfg(feature = "sandbox-probe")]
const SUCCEEDED: &str = "succeeded";

/// An errno's name ("EPERM").
#[cfg(feature = "sandbox-probe")]
fn errno(code: i32) -> String {
    format!("{:?}", nix::errno::Errno::from_raw(code))
}

#[cfg(feature = "sandbox-probe")]
fn io_outcome(e: &std::io::Error) -> String {
    e.raw_os_error().map_or_else(|| e.to_string(), errno)
}

/// `execve("/bin/true")` in a child (posix_spawn), so that a success does
/// not replace the worker. Under the filter the child is refused first
/// (`clone` without `CLONE_THREAD`); the exec itself is then tried in this
/// process: refused, it returns EPERM; let through, `/bin/true` would
/// replace the worker and the probe would never answer (the test fails).
#[cfg(feature = "sandbox-probe")]
fn exec() -> String {
    use std::process::{Command, Stdio};
    // Inherited descriptors: `Stdio::null()` would open /dev/null for
    // writing first, which Landlock refuses before the exec is tried.
    match Command::new("/bin/true")
        .stdin(Stdio::inherit())
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .status()
    {
        Ok(s) if s.success() => SUCCEEDED.into(),
        Ok(s) => format!("ran: {s}"),
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
            match nix::unistd::execv(c"/bin/true", &[c"/bin/true"]) {
                Err(errno) => format!("{errno:?}"),
            }
        }
        Err(e) => io_outcome(&e),
    }
}

/// `socket(AF_INET, SOCK_STREAM)`, then `connect` to 127.0.0.1:`port`.
#[cfg(feature = "sandbox-probe")]
fn tcp(port: u16) -> (String, String) {
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, SockaddrIn, connect, socket};
    use std::os::fd::AsRawFd;
    let fd = match socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    ) {
        Ok(fd) => fd,
        Err(e) => return (format!("{e:?}"), "not tried".into()),
    };
    let connected = connect(fd.as_raw_fd(), &SockaddrIn::new(127, 0, 0, 1, port));
    (
        SUCCEEDED.into(),
        connected.map_or_else(|e| format!("{e:?}"), |()| SUCCEEDED.into()),
    )
}

/// `open(path, O_WRONLY | O_CREAT)`.
#[cfg(feature = "sandbox-probe")]
fn write(path: &str) -> String {
    match std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
    {
        Ok(_) => SUCCEEDED.into(),
        Err(e) => io_outcome(&e),
    }
}

/// A call on no allow-list: `chdir("/")`.
#[cfg(feature = "sandbox-probe")]
fn off_list() -> String {
    nix::unistd::chdir("/").map_or_else(|e| format!("{e:?}"), |()| SUCCEEDED.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(not(feature = "sandbox-probe"))]
    #[test]
    fn without_the_feature_the_probe_is_unimplemented() {
        let e = answer(&SandboxProbeRequest::default()).expect_err("refused");
        assert_eq!(e.code, crate::Code::Unimplemented);
        assert!(e.message.contains("sandbox-probe"), "{}", e.message);
    }

    #[cfg(feature = "sandbox-probe")]
    #[test]
    fn the_probe_checks_its_port_and_path_and_reports_each_attempt() {
        let bad = |port, path: &str| {
            answer(&SandboxProbeRequest {
                connect_port: port,
                write_path: path.into(),
                off_list: false,
            })
            .expect_err("refused")
            .message
        };
        assert!(bad(0, "/x").contains("connect_port is 0, must be 1-65535"));
        assert!(bad(70000, "/x").contains("connect_port is 70000"));
        assert!(bad(80, "").contains("write_path is empty"));
        // Unsandboxed (this test process): each attempt goes through.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("listen");
        let dir = std::env::temp_dir().join(format!("probe-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let file = dir.join("written");
        let r = answer(&SandboxProbeRequest {
            connect_port: u32::from(listener.local_addr().expect("addr").port()),
            write_path: file.display().to_string(),
            off_list: false,
        })
        .expect("probe");
        assert_eq!(
            (
                r.exec.as_str(),
                r.socket.as_str(),
                r.connect.as_str(),
                r.write.as_str()
            ),
            (SUCCEEDED, SUCCEEDED, SUCCEEDED, SUCCEEDED)
        );
        assert_eq!(
            (r.pid, r.off_list.as_str()),
            (std::process::id(), "not tried")
        );
        assert!(file.is_file());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
