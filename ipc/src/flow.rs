//! Per-request flow control for answers.
//!
//! Many requests share one ring, so a ring-level stop would let one slow
//! client stall every other. Instead each request id has a window of answer
//! frames (RESPONSE and ERROR): the answering side may send `window` frames
//! before it must wait, and the consuming side grants credit (a CREDIT frame
//! with a `u32` count) as its application takes frames. The consuming side
//! therefore never holds more than `window` unread frames of one request and
//! can drain the ring at once; a paused request waits for its own credit
//! while the others go on. A CANCEL lifts the limit so the final frame
//! always gets through.

use std::collections::HashMap;

use crate::error::{Error, Result};
use crate::frame::Kind;

/// Payload length of a CREDIT frame.
pub(crate) const CREDIT_LEN: usize = 4;

/// Whether frames of this kind count against a request's window.
pub(crate) fn counts(kind: Kind) -> bool {
    matches!(kind, Kind::Response | Kind::Error)
}

/// Refuses the kinds only the channel itself sends.
pub(crate) fn check_sendable(kind: Kind) -> Result<()> {
    if kind == Kind::Credit {
        return Err(Error::Config(
            "CREDIT frames are sent by the channel itself".into(),
        ));
    }
    Ok(())
}

pub(crate) fn encode_credit(n: u32) -> [u8; CREDIT_LEN] {
    n.to_le_bytes()
}

pub(crate) fn decode_credit(payload: &[u8]) -> Result<u32> {
    let bytes: [u8; CREDIT_LEN] = payload
        .try_into()
        .map_err(|_| Error::Corrupt(format!("credit frame of {} bytes", payload.len())))?;
    Ok(u32::from_le_bytes(bytes))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Credit {
    Frames(u32),
    Unlimited,
}

/// The answering side's view: how many frames each open request may send.
#[derive(Debug, Default)]
pub(crate) struct Credits {
    window: u32,
    open: HashMap<u64, Credit>,
}

impl Credits {
    pub(crate) fn new(window: u32) -> Self {
        Credits {
            window,
            open: HashMap::new(),
        }
    }

    /// A REQUEST frame arrived: its id gets a full window (once).
    pub(crate) fn on_request(&mut self, id: u64) {
        if id != 0 {
            self.open.entry(id).or_insert(Credit::Frames(self.window));
        }
    }

    /// A CREDIT frame arrived.
    pub(crate) fn on_credit(&mut self, id: u64, n: u32) {
        if let Some(Credit::Frames(c)) = self.open.get_mut(&id) {
            *c = c.saturating_add(n);
        }
    }

    /// A CANCEL arrived: the request may send what it needs to finish.
    pub(crate) fn on_cancel(&mut self, id: u64) {
        if let Some(c) = self.open.get_mut(&id) {
            *c = Credit::Unlimited;
        }
    }

    /// Whether a frame of `kind` for `id` may be sent now.
    pub(crate) fn may_send(&self, id: u64, kind: Kind) -> bool {
        !counts(kind) || !matches!(self.open.get(&id), Some(Credit::Frames(0)))
    }

    /// Frames `id` may still send; `None` when unlimited.
    pub(crate) fn available(&self, id: u64) -> Option<u32> {
        match self.open.get(&id) {
            Some(Credit::Frames(n)) => Some(*n),
            _ => None,
        }
    }

    /// A frame was sent.
    pub(crate) fn on_sent(&mut self, id: u64, kind: Kind, end: bool) {
        if !counts(kind) {
            return;
        }
        if end {
            self.open.remove(&id);
        } else if let Some(Credit::Frames(c)) = self.open.get_mut(&id) {
            *c = c.saturating_sub(1);
        }
    }

    #[cfg(test)]
    pub(crate) fn open_requests(&self) -> usize {
        self.open.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_pauses_at_its_window_and_resumes_on_credit() {
        let mut c = Credits::new(2);
        c.on_request(7);
        c.on_request(8);
        for _ in 0..2 {
            assert!(c.may_send(7, Kind::Response));
            c.on_sent(7, Kind::Response, false);
        }
        assert!(!c.may_send(7, Kind::Response), "7 paused");
        assert!(c.may_send(8, Kind::Response), "8 unaffected");
        assert!(c.may_send(0, Kind::Heartbeat), "control frames never wait");
        c.on_credit(7, 1);
        assert!(c.may_send(7, Kind::Response));
        c.on_sent(7, Kind::Response, false);
        c.on_cancel(7);
        assert!(c.may_send(7, Kind::Error), "cancel lifts the limit");
        c.on_sent(7, Kind::Error, true);
        assert_eq!(c.open_requests(), 1);
    }

    #[test]
    fn credit_payload_is_checked() {
        assert_eq!(decode_credit(&encode_credit(9)).unwrap(), 9);
        assert!(decode_credit(&[1, 2, 3]).is_err());
    }
}
