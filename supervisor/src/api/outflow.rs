//! A streaming answer's way out, bounded in time as well as in messages:
//! a client that reads nothing for `connections.stream_stall` gets its
//! stream ended with RESOURCE_EXHAUSTED, and the task feeding it stops (the
//! call is dropped, which cancels it in the worker and frees its slot).

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio_stream::Stream;
use tonic::Status;

/// The sending half: [`Outflow::send`] in a task.
#[derive(Debug)]
pub struct Outflow<T> {
    tx: mpsc::Sender<Result<T, Status>>,
    last: Option<oneshot::Sender<Status>>,
    stall: Duration,
}

/// The receiving half, handed to tonic as the response stream.
#[derive(Debug)]
pub struct Answers<T> {
    rx: mpsc::Receiver<Result<T, Status>>,
    last: Option<oneshot::Receiver<Status>>,
}

/// A way out holding up to `capacity` messages, whose client may read
/// nothing for at most `stall`.
pub fn channel<T>(capacity: usize, stall: Duration) -> (Outflow<T>, Answers<T>) {
    let (tx, rx) = mpsc::channel(capacity);
    let (last_tx, last_rx) = oneshot::channel();
    (
        Outflow {
            tx,
            last: Some(last_tx),
            stall,
        },
        Answers {
            rx,
            last: Some(last_rx),
        },
    )
}

impl<T> Outflow<T> {
    /// Sends one message; false when the stream is over for the sender:
    /// the client went away, or read nothing for the stall time (then its
    /// stream ends, after what it holds, with RESOURCE_EXHAUSTED).
    pub async fn send(&mut self, msg: Result<T, Status>) -> bool {
        match tokio::time::timeout(self.stall, self.tx.send(msg)).await {
            Ok(sent) => sent.is_ok(),
            Err(_) => {
                let stall = self.stall;
                tracing::info!("ending a stream whose client read nothing for {stall:?}");
                if let Some(last) = self.last.take() {
                    let _ = last.send(Status::resource_exhausted(format!(
                        "the client read nothing for {stall:?} (connections.stream_stall): the stream was ended to free its slot"
                    )));
                }
                false
            }
        }
    }

    /// Completes when the client has gone away.
    pub async fn closed(&self) {
        self.tx.closed().await;
    }
}

impl<T> Stream for Answers<T> {
    type Item = Result<T, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if let Some(msg) = std::task::ready!(self.rx.poll_recv(cx)) {
            return Poll::Ready(Some(msg));
        }
        // Every sender is gone: the stall's status, if there was one.
        let Some(last) = self.last.as_mut() else {
            return Poll::Ready(None);
        };
        let status = std::task::ready!(Pin::new(last).poll(cx));
        self.last = None;
        Poll::Ready(status.ok().map(Err))
    }
}

#[cfg(test)]
mod tests {
    use tokio_stream::StreamExt;

    use super::*;

    #[tokio::test]
    async fn a_client_that_reads_nothing_gets_its_stream_ended_after_what_it_holds() {
        let (mut out, mut answers) = channel::<u32>(2, Duration::from_millis(50));
        assert!(out.send(Ok(1)).await);
        assert!(out.send(Ok(2)).await);
        let started = std::time::Instant::now();
        assert!(!out.send(Ok(3)).await, "the third waits for the stall time");
        assert!(started.elapsed() >= Duration::from_millis(50));
        drop(out);
        assert_eq!(answers.next().await.unwrap().unwrap(), 1);
        assert_eq!(answers.next().await.unwrap().unwrap(), 2);
        let end = answers.next().await.unwrap().unwrap_err();
        assert_eq!(end.code(), tonic::Code::ResourceExhausted);
        assert!(
            end.message().contains("connections.stream_stall"),
            "{}",
            end.message()
        );
        assert!(answers.next().await.is_none());
    }

    #[tokio::test]
    async fn a_stream_that_ends_normally_ends_without_an_error() {
        let (mut out, mut answers) = channel::<u32>(2, Duration::from_millis(50));
        assert!(out.send(Ok(7)).await);
        drop(out);
        assert_eq!(answers.next().await.unwrap().unwrap(), 7);
        assert!(answers.next().await.is_none());
    }

    #[tokio::test]
    async fn a_client_gone_stops_the_sender_at_once() {
        let (mut out, answers) = channel::<u32>(2, Duration::from_secs(60));
        drop(answers);
        out.closed().await;
        assert!(!out.send(Ok(1)).await);
    }
}
