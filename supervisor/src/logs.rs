//! The workers' log lines: read from their pipes, re-emitted, and kept in
//! memory: the last lines of each model
//! (for `StreamLogs` and for the event of a worker's death), and a
//! broadcast of new lines for followers.
//!
//! One `LogBook` per process, built at start and passed down as a handle
//! (`Shared::logs`); tests build their own.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};

use sidecar_proto::v1::{LogLine, LogSource};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::broadcast;
use tracing::Instrument;

/// Lines kept per model.
pub const HISTORY: usize = 500;
/// Lines of a dead worker attached to the event of its death.
pub const LAST_WORDS: usize = 20;

/// The log book.
#[derive(Debug)]
pub struct LogBook {
    lines: Mutex<Book>,
    tx: broadcast::Sender<(u64, LogLine)>,
}

#[derive(Debug, Default)]
struct Book {
    next: u64,
    by_model: BTreeMap<String, VecDeque<(u64, LogLine)>>,
}

impl Default for LogBook {
    fn default() -> Self {
        LogBook {
            lines: Mutex::default(),
            tx: broadcast::channel(4096).0,
        }
    }
}

/// The request id a worker's log line is about (`request_id=…`).
fn request_id_in(text: &str) -> String {
    text.split_whitespace()
        .find_map(|w| w.strip_prefix("request_id="))
        .map(|v| v.trim_matches('"').to_owned())
        .unwrap_or_default()
}

impl LogBook {
    /// Adds a line (numbered in arrival order) and tells followers.
    pub fn push(&self, model: &str, pid: u32, source: LogSource, text: &str) {
        let line = LogLine {
            unix_ms: crate::clock::now_ms(),
            model_id: model.to_owned(),
            pid,
            source: source as i32,
            text: text.to_owned(),
            request_id: request_id_in(text),
            dropped_before: 0,
        };
        let seq = {
            let mut b = self.lines.lock().unwrap_or_else(PoisonError::into_inner);
            let seq = b.next;
            b.next += 1;
            let q = b.by_model.entry(model.to_owned()).or_default();
            if q.len() == HISTORY {
                q.pop_front();
            }
            q.push_back((seq, line.clone()));
            seq
        };
        let _ = self.tx.send((seq, line));
    }

    /// The last `n` lines of one model (or of all, in arrival order), and
    /// the number of the last one.
    pub fn tail(&self, model: Option<&str>, n: usize) -> (Vec<LogLine>, u64) {
        let b = self.lines.lock().unwrap_or_else(PoisonError::into_inner);
        let mut all: Vec<&(u64, LogLine)> = b
            .by_model
            .iter()
            .filter(|(m, _)| model.is_none_or(|want| want == m.as_str()))
            .flat_map(|(_, q)| q.iter())
            .collect();
        all.sort_by_key(|(seq, _)| *seq);
        let start = all.len().saturating_sub(n);
        let lines = all[start..].iter().map(|(_, l)| l.clone()).collect();
        (lines, b.next)
    }

    /// New lines from now on, numbered.
    pub fn subscribe(&self) -> broadcast::Receiver<(u64, LogLine)> {
        self.tx.subscribe()
    }

    /// A dead worker's last lines, as one text for its event.
    pub fn last_words(&self, model: &str, pid: u32) -> String {
        let (lines, _) = self.tail(Some(model), HISTORY);
        let mine: Vec<&LogLine> = lines
            .iter()
            .filter(|l| l.pid == pid && l.source != LogSource::Supervisor as i32)
            .collect();
        let start = mine.len().saturating_sub(LAST_WORDS);
        mine[start..]
            .iter()
            .map(|l| l.text.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// Re-emits the worker's stdout and stderr line by line under a span
/// naming its model, family and pid (both pipes at once, so neither can
/// fill), and keeps them in the log book.
pub fn forward(
    book: &Arc<LogBook>,
    child: &mut std::process::Child,
    model: &str,
    family: crate::config::Family,
    pid: u32,
) {
    let span = tracing::info_span!("worker", model = %model, family = family.worker_binary(), pid);
    if let Some(out) = child.stdout.take() {
        spawn_lines(
            book.clone(),
            out.into(),
            model.to_owned(),
            pid,
            LogSource::Stdout,
            span.clone(),
        );
    }
    if let Some(err) = child.stderr.take() {
        spawn_lines(
            book.clone(),
            err.into(),
            model.to_owned(),
            pid,
            LogSource::Stderr,
            span,
        );
    }
}

fn spawn_lines(
    book: Arc<LogBook>,
    fd: std::os::fd::OwnedFd,
    model: String,
    pid: u32,
    source: LogSource,
    span: tracing::Span,
) {
    let file = std::fs::File::from(fd);
    let Ok(pipe) = tokio::net::unix::pipe::Receiver::from_file(file) else {
        return;
    };
    let stream = if source == LogSource::Stdout {
        "stdout"
    } else {
        "stderr"
    };
    tokio::spawn(
        async move {
            let mut lines = BufReader::new(pipe).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                tracing::info!(target: "worker", stream, "{line}");
                book.push(&model, pid, source, &line);
            }
        }
        .instrument(span),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_kept_per_model_in_order_and_bounded() {
        let b = LogBook {
            tx: broadcast::channel(16).0,
            ..LogBook::default()
        };
        let mut rx = b.subscribe();
        for i in 0..HISTORY + 5 {
            b.push("a", 1, LogSource::Stderr, &format!("a{i}"));
            if i % 100 == 0 {
                b.push("b", 2, LogSource::Stdout, &format!("b{i} request_id=r-{i}"));
            }
        }
        let (a, _) = b.tail(Some("a"), 3);
        let texts: Vec<&str> = a.iter().map(|l| l.text.as_str()).collect();
        assert_eq!(texts, ["a502", "a503", "a504"]);
        assert_eq!(b.tail(Some("a"), 10_000).0.len(), HISTORY, "bounded");
        let (both, next) = b.tail(None, 2);
        assert_eq!(both[1].text, "a504");
        assert_eq!(next as usize, HISTORY + 5 + 6);
        let (b_lines, _) = b.tail(Some("b"), 1);
        assert_eq!(b_lines[0].request_id, "r-500");
        // A follower that fell behind is told how many lines it missed,
        // then gets the newest.
        assert!(matches!(
            rx.try_recv(),
            Err(broadcast::error::TryRecvError::Lagged(n)) if n > 0
        ));
        assert!(rx.try_recv().is_ok());
        assert_eq!(b.last_words("a", 1).lines().count(), LAST_WORDS);
        assert!(b.last_words("a", 9).is_empty());
    }
}
