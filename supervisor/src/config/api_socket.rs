//! The gRPC API on a Unix socket: `[api_socket]` in the config file,
//! `--listen unix:PATH` on the command line.
//!
//! The socket serves exactly what the TCP port serves, with the same
//! layers; a caller without a bearer token is known by its uid. A pod
//! whose app container reaches the sidecar through a shared directory
//! sets `tcp = false` (or passes `--listen unix:PATH` alone) so that
//! nothing listens on the network.

use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Deserializer};

use crate::error::Error;

/// The default mode of the socket: owner and group read and write.
pub(super) const DEFAULT_MODE: u32 = 0o660;

/// `[api_socket]`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct ApiSocket {
    /// Absolute path of the socket; absent: no Unix listener. Its
    /// directory is created when missing (see [`ApiSocket::dir_mode`]).
    pub path: Option<PathBuf>,
    /// The socket's mode, an octal string ("0660"); it must let its owner
    /// read and write, and nothing past 0777.
    #[serde(deserialize_with = "octal")]
    pub mode: u32,
    /// uid the socket is given after bind (chown); absent: ours.
    pub owner: Option<u32>,
    /// gid the socket is given after bind (chown); absent: ours.
    pub group: Option<u32>,
    /// Whether the TCP listener (`listen`) runs too.
    pub tcp: bool,
}

impl Default for ApiSocket {
    fn default() -> Self {
        ApiSocket {
            path: None,
            mode: DEFAULT_MODE,
            owner: None,
            group: None,
            tcp: true,
        }
    }
}

fn octal<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    let text = String::deserialize(d)?;
    parse_mode(&text).map_err(serde::de::Error::custom)
}

/// Reads a mode written in octal ("0660", "660", "0o660").
pub(super) fn parse_mode(text: &str) -> Result<u32, String> {
    let digits = text.strip_prefix("0o").unwrap_or(text);
    let mode = if digits.is_empty() || digits.len() > 4 {
        None
    } else {
        u32::from_str_radix(digits, 8).ok()
    };
    match mode {
        Some(m) if m <= 0o777 && m & 0o600 == 0o600 => Ok(m),
        Some(m) => Err(format!(
            "api_socket.mode {text:?} ({m:04o}): it must let the owner read and write (0600) \
             and set nothing past 0777"
        )),
        None => Err(format!(
            "api_socket.mode {text:?} is not an octal mode such as \"0660\""
        )),
    }
}

/// `path` with `.` removed and `..` applied, for comparing paths as
/// written.
fn lexical(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

impl ApiSocket {
    /// The mode of the socket's directory when the sidecar creates it:
    /// 0700, plus search and read for the group and others the socket's
    /// mode lets in, so their processes (the app container's uid) reach
    /// the socket.
    pub fn dir_mode(&self) -> u32 {
        let mut m = 0o700;
        if self.mode & 0o060 != 0 {
            m |= 0o050;
        }
        if self.mode & 0o006 != 0 {
            m |= 0o005;
        }
        m
    }

    /// Checks the section against `control_socket`: an absolute path,
    /// never in the control socket's directory (0700, ours alone) or
    /// below it, and some listener left.
    pub fn validate(&self, control_socket: &Path) -> Result<(), Error> {
        let Some(path) = &self.path else {
            if !self.tcp {
                return Err(Error::Config(
                    "api_socket.tcp is false and api_socket.path is not set: the gRPC API \
                     would listen nowhere"
                        .into(),
                ));
            }
            return Ok(());
        };
        if !path.is_absolute() || path.file_name().is_none() {
            return Err(Error::Config(format!(
                "api_socket.path {:?} must be an absolute path to a socket file \
                 (/run/sidecar-api/api.sock)",
                path.display().to_string()
            )));
        }
        let dir = lexical(path.parent().unwrap_or(Path::new("/")));
        let control =
            std::path::absolute(control_socket).unwrap_or_else(|_| control_socket.to_path_buf());
        let control_dir = lexical(control.parent().unwrap_or(Path::new("/")));
        if dir.starts_with(&control_dir) {
            return Err(Error::Config(format!(
                "api_socket.path {} is in the control socket's directory {} (control_socket {}), \
                 which only the sidecar's uid may enter; put the API socket in a directory \
                 of its own (/run/sidecar-api/api.sock)",
                path.display(),
                control_dir.display(),
                control_socket.display()
            )));
        }
        Ok(())
    }
}

/// One `--listen` value: a TCP address or `unix:PATH`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    /// "HOST:PORT".
    Tcp(std::net::SocketAddr),
    /// "unix:/absolute/path".
    Unix(PathBuf),
}

impl std::str::FromStr for Listen {
    type Err = String;

    fn from_str(text: &str) -> Result<Listen, String> {
        if let Some(path) = text.strip_prefix("unix:") {
            return Ok(Listen::Unix(PathBuf::from(path)));
        }
        text.parse()
            .map(Listen::Tcp)
            .map_err(|_| format!("--listen {text:?} is neither HOST:PORT nor unix:/absolute/path"))
    }
}

/// Applies the `--listen` flags: at most one TCP address and one socket;
/// a socket without a TCP address turns the TCP listener off.
pub(super) fn apply(
    flags: &[Listen],
    listen: &mut std::net::SocketAddr,
    socket: &mut ApiSocket,
) -> Result<(), Error> {
    if flags.is_empty() {
        return Ok(());
    }
    let tcp: Vec<_> = flags
        .iter()
        .filter_map(|l| match l {
            Listen::Tcp(a) => Some(*a),
            Listen::Unix(_) => None,
        })
        .collect();
    let unix: Vec<_> = flags
        .iter()
        .filter_map(|l| match l {
            Listen::Unix(p) => Some(p.clone()),
            Listen::Tcp(_) => None,
        })
        .collect();
    if tcp.len() > 1 || unix.len() > 1 {
        return Err(Error::Config(format!(
            "--listen is given {} TCP addresses and {} Unix sockets; at most one of each",
            tcp.len(),
            unix.len()
        )));
    }
    if let Some(a) = tcp.first() {
        *listen = *a;
    }
    if let Some(p) = unix.first() {
        socket.path = Some(p.clone());
        socket.tcp = !tcp.is_empty();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse_in_octal_and_are_bounded() {
        assert_eq!(parse_mode("0660"), Ok(0o660));
        assert_eq!(parse_mode("600"), Ok(0o600));
        assert_eq!(parse_mode("0o666"), Ok(0o666));
        assert!(parse_mode("0440").unwrap_err().contains("0600"));
        assert!(parse_mode("4660").unwrap_err().contains("0777"));
        assert!(parse_mode("0x1b0").unwrap_err().contains("octal"));
        assert!(parse_mode("").is_err());
        let s: ApiSocket = toml::from_str("path = \"/run/a/api.sock\"\nmode = \"0666\"").unwrap();
        assert_eq!((s.mode, s.dir_mode()), (0o666, 0o755));
        assert_eq!(ApiSocket::default().dir_mode(), 0o750);
        let e = toml::from_str::<ApiSocket>("mode = 660").unwrap_err();
        assert!(e.to_string().contains("string"), "{e}");
        assert!(toml::from_str::<ApiSocket>("paht = \"/x\"").is_err());
    }

    #[test]
    fn the_control_sockets_directory_is_refused() {
        let ctl = Path::new("/run/sidecar/control.sock");
        let at = |p: &str| ApiSocket {
            path: Some(p.into()),
            ..ApiSocket::default()
        };
        for bad in [
            "/run/sidecar/api.sock",
            "/run/sidecar/sub/api.sock",
            "/run/x/../sidecar/a.sock",
        ] {
            let e = at(bad).validate(ctl).unwrap_err().to_string();
            assert!(
                e.contains("/run/sidecar") && e.contains("control.sock"),
                "{e}"
            );
        }
        at("/run/sidecar-api/api.sock")
            .validate(ctl)
            .expect("own directory");
        assert!(
            at("api.sock")
                .validate(ctl)
                .unwrap_err()
                .to_string()
                .contains("absolute")
        );
        let off = ApiSocket {
            tcp: false,
            ..ApiSocket::default()
        };
        assert!(
            off.validate(ctl)
                .unwrap_err()
                .to_string()
                .contains("nowhere")
        );
    }

    #[test]
    fn listen_flags_choose_the_listeners() {
        let mut listen: std::net::SocketAddr = "127.0.0.1:50051".parse().unwrap();
        let mut s = ApiSocket::default();
        apply(
            &["unix:/run/a/api.sock".parse().unwrap()],
            &mut listen,
            &mut s,
        )
        .unwrap();
        assert_eq!(
            (s.path.as_deref(), s.tcp),
            (Some(Path::new("/run/a/api.sock")), false)
        );
        let mut s = ApiSocket::default();
        let both = [
            "127.0.0.1:1".parse().unwrap(),
            "unix:/run/a/b.sock".parse().unwrap(),
        ];
        apply(&both, &mut listen, &mut s).unwrap();
        assert_eq!((listen.port(), s.tcp), (1, true));
        let two = [
            "127.0.0.1:1".parse().unwrap(),
            "127.0.0.1:2".parse().unwrap(),
        ];
        assert!(
            apply(&two, &mut listen, &mut s)
                .unwrap_err()
                .to_string()
                .contains("at most one")
        );
        assert!("nonsense".parse::<Listen>().is_err());
    }
}
