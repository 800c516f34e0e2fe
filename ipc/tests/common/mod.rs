//! Helpers shared by the channel's integration tests: the conformance peer
//! process, and a bounded wait.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::Duration;

use ipc::Ends;

/// A peer process that is killed when the test lets go of it.
pub(crate) struct Peer {
    pub(crate) child: Child,
    pub(crate) stdout: Option<BufReader<ChildStdout>>,
}

impl Peer {
    pub(crate) fn spawn(ends: Ends, args: &[&str]) -> Peer {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ipc-peer"));
        cmd.args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = ends
            .spawn(&mut cmd, Some(libc::SIGKILL))
            .expect("spawn ipc-peer");
        let stdout = child.stdout.take().map(BufReader::new);
        Peer { child, stdout }
    }

    /// Next line the peer prints (blocking).
    pub(crate) fn line(&mut self) -> String {
        let mut line = String::new();
        self.stdout
            .as_mut()
            .expect("stdout piped")
            .read_line(&mut line)
            .expect("read peer stdout");
        line.trim_end().to_owned()
    }

    pub(crate) fn kill9(&mut self) {
        self.child.kill().expect("SIGKILL peer");
        self.child.wait().expect("reap peer");
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Upper bound for anything that should happen "at once".
pub(crate) const SOON: Duration = Duration::from_secs(10);

/// Deterministic bytes for a payload of `len` bytes.
pub(crate) fn pattern(len: usize, seed: u8) -> Vec<u8> {
    let mut v = vec![0u8; len];
    let mut x = u32::from(seed) | 1;
    for chunk in v.chunks_mut(4) {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        let b = x.to_le_bytes();
        chunk.copy_from_slice(&b[..chunk.len()]);
    }
    v
}
