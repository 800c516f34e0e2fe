//! Re-reading the tokens file when it changes, so a rotated secret needs
//! no restart.

use std::path::Path;
use std::sync::Arc;

use super::{Auth, Tokens};

/// What tells one version of the file from the next: modification time,
/// size, inode and device (a Kubernetes Secret volume swaps a symlink, so
/// the inode changes even when the size and time do not).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Stamp {
    modified: Option<std::time::SystemTime>,
    len: u64,
    ino: u64,
    dev: u64,
}

pub(super) fn stamp(path: &Path) -> Option<Stamp> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some(Stamp {
        modified: m.modified().ok(),
        len: m.len(),
        ino: m.ino(),
        dev: m.dev(),
    })
}

impl Auth {
    /// Checks the tokens file every `auth.reload_interval` and reads it
    /// again when it changed. A file that does not read or parse keeps the
    /// previous tokens and logs one error (file and line; never its text)
    /// per change. Returns at once without a tokens file.
    pub async fn watch(self: Arc<Self>) {
        let Some(path) = self.file.clone() else {
            return;
        };
        // The file as it was before its first reading (`Auth::new`): a
        // change since then is read again.
        let mut seen = self.read_stamp.clone();
        let mut tick = tokio::time::interval(self.reload_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            let now = stamp(&path);
            if now == seen {
                continue;
            }
            seen = now;
            let read = {
                let path = path.clone();
                tokio::task::spawn_blocking(move || Tokens::read(&path)).await
            };
            match read {
                Ok(Ok(tokens)) => {
                    tracing::info!(file = %path.display(), tokens = tokens.len(), "bearer tokens read again");
                    self.replace(tokens);
                }
                Ok(Err(e)) => tracing::error!(
                    "{e}; the previous {} tokens stay in force",
                    self.tokens().len()
                ),
                Err(e) => tracing::error!("reading the tokens file: {e}"),
            }
        }
    }
}
