//! Request deadlines: absolute Unix milliseconds from the supervisor
//! (`WorkerRequest.deadline_unix_ms`, 0: none), checked between units of
//! work (tokens, decodes, inferences, images).

use std::time::{SystemTime, UNIX_EPOCH};

use crate::error::{Code, WorkerError};

/// Wall-clock now, Unix milliseconds.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Whether `deadline_ms` (0: none) has passed at `now_ms`.
pub fn passed(deadline_ms: i64, now_ms: i64) -> bool {
    deadline_ms > 0 && now_ms >= deadline_ms
}

/// DEADLINE_EXCEEDED "deadline passed in the worker".
pub fn exceeded() -> WorkerError {
    WorkerError::new(Code::DeadlineExceeded, "deadline passed in the worker")
}

/// `Err(`[`exceeded`]`)` once `deadline_ms` (0: none) has passed.
pub fn check(deadline_ms: i64) -> Result<(), WorkerError> {
    if passed(deadline_ms, now_ms()) {
        return Err(exceeded());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_is_no_deadline() {
        assert!(!passed(0, i64::MAX));
        assert!(check(0).is_ok());
    }

    #[test]
    fn a_deadline_passes_at_its_millisecond() {
        assert!(!passed(1_000, 999));
        assert!(passed(1_000, 1_000));
        assert!(passed(1_000, 1_001));
    }

    #[test]
    fn the_check_reads_the_clock() {
        let now = now_ms();
        assert!(now > 1_600_000_000_000, "{now}");
        assert!(check(now + 60_000).is_ok());
        let e = check(now - 1).expect_err("past");
        assert_eq!(e.code, Code::DeadlineExceeded);
        assert_eq!(e.message, "deadline passed in the worker");
    }
}
