//! The main runtime's pulse, for `/livez`: a task on the runtime that
//! serves the API and supervises the workers notes the time every
//! [`PERIOD`]; the admin thread (a runtime of its own) reads how long ago
//! that was. A runtime wedged by a blocking call, a busy loop or a
//! deadlock of its threads stops the pulse, and `/livez` answers 503 once
//! it has been still for `livez_stall`, so the orchestrator restarts the
//! pod: proving the admin thread alive is not proving the sidecar alive.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How often the main runtime beats.
pub const PERIOD: Duration = Duration::from_millis(500);

/// The last beat, as milliseconds since the pulse was made.
#[derive(Debug, Clone)]
pub struct Pulse {
    origin: Instant,
    last_ms: Arc<AtomicU64>,
}

impl Default for Pulse {
    fn default() -> Self {
        Pulse {
            origin: Instant::now(),
            last_ms: Arc::default(),
        }
    }
}

impl Pulse {
    /// Notes that the runtime ran now.
    pub fn beat(&self) {
        let ms = self.origin.elapsed().as_millis() as u64;
        self.last_ms.fetch_max(ms, Ordering::Relaxed);
    }

    /// Beats every [`PERIOD`]: spawn it on the runtime to watch.
    pub async fn run(self) {
        let mut every = tokio::time::interval(PERIOD);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            self.beat();
        }
    }

    /// How long since the last beat.
    pub fn age(&self) -> Duration {
        let now = self.origin.elapsed().as_millis() as u64;
        Duration::from_millis(now.saturating_sub(self.last_ms.load(Ordering::Relaxed)))
    }

    /// `Err` with the reason when the runtime has been still for `stall`.
    pub fn check(&self, stall: Duration) -> Result<(), String> {
        let age = self.age();
        if age >= stall {
            Err(format!(
                "the main runtime has not run for {:.1} s (livez_stall {:.0} s)",
                age.as_secs_f64(),
                stall.as_secs_f64()
            ))
        } else {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A runtime whose only thread is blocked stops beating: the check
    /// fails after the stall time, and passes again once it runs.
    #[test]
    fn a_blocked_runtime_fails_the_check_and_a_running_one_passes() {
        let pulse = Pulse::default();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let watched = pulse.clone();
        let thread = std::thread::spawn(move || {
            rt.block_on(async move {
                tokio::spawn(watched.run());
                // Runs for a while, then blocks its thread for 1.5 s (as a
                // blocking call on an async thread would), then runs again.
                tokio::time::sleep(Duration::from_millis(700)).await;
                std::thread::sleep(Duration::from_millis(1500));
                tokio::time::sleep(Duration::from_millis(1200)).await;
            });
        });
        let stall = Duration::from_secs(1);
        std::thread::sleep(Duration::from_millis(500));
        assert!(pulse.check(stall).is_ok(), "running: {:?}", pulse.age());
        // Past 700 ms + the stall time, inside the blocked 1.5 s.
        std::thread::sleep(Duration::from_millis(1500));
        let stalled = pulse.check(stall).expect_err("blocked for over a second");
        assert!(stalled.contains("livez_stall 1 s"), "{stalled}");
        // The runtime runs again after 2.2 s: beats resume.
        std::thread::sleep(Duration::from_millis(900));
        assert!(
            pulse.check(stall).is_ok(),
            "running again: {:?}",
            pulse.age()
        );
        thread.join().unwrap();
    }
}
