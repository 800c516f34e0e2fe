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
use tokio::io::{AsyncBufRead, AsyncBufReadExt, BufReader};
use tokio::sync::broadcast;
use tracing::Instrument;

/// Lines kept per model.
pub const HISTORY: usize = 500;
/// Longest line kept, bytes: a longer one is cut (and says so); the rest
/// of it, up to its newline, is read and dropped without being held.
pub const MAX_LINE: usize = 8 << 10;
/// Bytes of text kept in all, over every model (the workers of unloaded
/// models included): past it the oldest lines go first.
pub const MAX_BYTES: usize = 8 << 20;
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
    bytes: usize,
    by_model: BTreeMap<String, VecDeque<(u64, LogLine)>>,
}

impl Book {
    /// Drops the oldest line of all models (and a model left with none).
    fn drop_oldest(&mut self) {
        let oldest = self
            .by_model
            .iter()
            .filter_map(|(m, q)| Some((q.front()?.0, m)))
            .min()
            .map(|(_, m)| m.clone());
        let Some(model) = oldest else {
            return;
        };
        if let Some(q) = self.by_model.get_mut(&model) {
            if let Some((_, line)) = q.pop_front() {
                self.bytes = self.bytes.saturating_sub(line.text.len());
            }
            if q.is_empty() {
                self.by_model.remove(&model);
            }
        }
    }
}

impl Default for LogBook {
    fn default() -> Self {
        LogBook {
            lines: Mutex::default(),
            tx: broadcast::channel(4096).0,
        }
    }
}

/// `text`, or its first [`MAX_LINE`] bytes (on a character boundary) and
/// how much was cut.
fn cut(text: &str, already: usize) -> String {
    let mut end = text.len().min(MAX_LINE);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let cut = already.saturating_add(text.len() - end);
    if cut == 0 {
        return text.to_owned();
    }
    format!("{}… ({cut} bytes cut)", &text[..end])
}

/// The request id a worker's log line is about (`request_id=…`).
fn request_id_in(text: &str) -> String {
    text.split_whitespace()
        .find_map(|w| w.strip_prefix("request_id="))
        .map(|v| v.trim_matches('"').to_owned())
        .unwrap_or_default()
}

impl LogBook {
    /// Adds a line (numbered in arrival order; cut to [`MAX_LINE`]) and
    /// tells followers.
    pub fn push(&self, model: &str, pid: u32, source: LogSource, text: &str) {
        self.push_cut(model, pid, source, text, 0);
    }

    /// [`LogBook::push`] for a line of which `already` bytes were cut as
    /// it was read.
    fn push_cut(&self, model: &str, pid: u32, source: LogSource, text: &str, already: usize) {
        let text = cut(text, already);
        let line = LogLine {
            unix_ms: crate::clock::now_ms(),
            model_id: model.to_owned(),
            pid,
            source: source as i32,
            request_id: request_id_in(&text),
            text,
            dropped_before: 0,
        };
        let seq = {
            let mut b = self.lines.lock().unwrap_or_else(PoisonError::into_inner);
            let seq = b.next;
            b.next += 1;
            let q = b.by_model.entry(model.to_owned()).or_default();
            let dropped = if q.len() == HISTORY {
                q.pop_front().map_or(0, |(_, l)| l.text.len())
            } else {
                0
            };
            q.push_back((seq, line.clone()));
            b.bytes = b.bytes.saturating_sub(dropped) + line.text.len();
            while b.bytes > MAX_BYTES {
                b.drop_oldest();
            }
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
            let mut pipe = BufReader::new(pipe);
            let mut buf = Vec::new();
            while let Ok(Some(cut)) = read_line(&mut pipe, &mut buf).await {
                let text = String::from_utf8_lossy(&buf);
                tracing::info!(target: "worker", stream, cut, "{text}");
                book.push_cut(&model, pid, source, &text, cut);
            }
        }
        .instrument(span),
    );
}

/// Reads one line into `buf` (without its newline), keeping at most
/// [`MAX_LINE`] bytes: returns how many bytes were cut, `None` at the end.
/// A worker that writes a gigabyte without a newline costs the supervisor
/// one buffer, not a gigabyte.
async fn read_line<R: AsyncBufRead + Unpin>(
    r: &mut R,
    buf: &mut Vec<u8>,
) -> std::io::Result<Option<usize>> {
    buf.clear();
    let mut cut = 0usize;
    let mut read_any = false;
    loop {
        let chunk = r.fill_buf().await?;
        if chunk.is_empty() {
            return Ok(read_any.then_some(cut));
        }
        read_any = true;
        let (part, done) = match chunk.iter().position(|&b| b == b'\n') {
            Some(at) => (&chunk[..at], at + 1),
            None => (chunk, chunk.len()),
        };
        let room = MAX_LINE.saturating_sub(buf.len());
        let keep = part.len().min(room);
        buf.extend_from_slice(&part[..keep]);
        cut = cut.saturating_add(part.len() - keep);
        let newline = done > part.len();
        r.consume(done);
        if newline {
            return Ok(Some(cut));
        }
    }
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

    /// A line of any length costs at most `MAX_LINE` bytes, and the lines
    /// of every model together at most `MAX_BYTES`: a worker that logs
    /// without end, or thousands of models come and gone, cannot grow the
    /// supervisor.
    #[test]
    fn lines_are_cut_and_the_book_is_bounded_in_bytes() {
        let b = LogBook::default();
        b.push("a", 1, LogSource::Stderr, &"é".repeat(MAX_LINE));
        let (a, _) = b.tail(Some("a"), 1);
        assert!(a[0].text.len() < MAX_LINE + 40, "{}", a[0].text.len());
        assert!(
            a[0].text.ends_with(&format!("({} bytes cut)", MAX_LINE)),
            "cut on a character boundary"
        );
        let line = "x".repeat(MAX_LINE);
        for m in 0..2 * MAX_BYTES / MAX_LINE {
            b.push(&format!("model-{m}"), 2, LogSource::Stdout, &line);
        }
        let kept = b.lines.lock().unwrap();
        assert!(kept.bytes <= MAX_BYTES, "{}", kept.bytes);
        let total: usize = kept
            .by_model
            .values()
            .flat_map(|q| q.iter().map(|(_, l)| l.text.len()))
            .sum();
        assert_eq!(total, kept.bytes);
        assert!(
            kept.by_model.len() <= MAX_BYTES / MAX_LINE,
            "{}",
            kept.by_model.len()
        );
        assert!(!kept.by_model.contains_key("a"), "the oldest went first");
        assert!(
            kept.by_model
                .contains_key(&format!("model-{}", 2 * MAX_BYTES / MAX_LINE - 1))
        );
    }

    #[tokio::test]
    async fn a_gigantic_line_is_read_in_bounded_memory() {
        let mut input = vec![b'y'; 5 << 20];
        input.extend_from_slice(b"\nnext\nlast without newline");
        let mut r = BufReader::new(&input[..]);
        let mut buf = Vec::new();
        assert_eq!(
            read_line(&mut r, &mut buf).await.unwrap(),
            Some((5 << 20) - MAX_LINE)
        );
        assert_eq!(buf.len(), MAX_LINE);
        assert!(buf.capacity() < 2 * MAX_LINE + 8192, "{}", buf.capacity());
        assert_eq!(read_line(&mut r, &mut buf).await.unwrap(), Some(0));
        assert_eq!(buf, b"next");
        assert_eq!(read_line(&mut r, &mut buf).await.unwrap(), Some(0));
        assert_eq!(buf, b"last without newline");
        assert_eq!(read_line(&mut r, &mut buf).await.unwrap(), None);
    }
}
