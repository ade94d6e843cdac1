//! Telling systemd how the decider is doing (`Type=notify`, `WatchdogSec=`):
//! `READY=1` once every port is bound and every task started, `WATCHDOG=1`
//! from the engine's own tick, `STOPPING=1` when shutdown begins. Nothing is
//! sent when `NOTIFY_SOCKET` is unset (not started by systemd).
//!
//! Why the watchdog is fed from the engine thread and not from a task on the
//! server's runtime: the engine judges every node on its own thread (see
//! `Engine::spawn`). A timer task elsewhere would keep pinging while that
//! thread is stuck, and a runtime busy with gRPC would delay pings while the
//! engine is fine. Fed from the tick, the pings stop exactly when verdicts
//! stop being made, and systemd restarts the decider.

use std::time::{Duration, Instant};
use tracing::{debug, warn};

/// Sends `READY=1` (once serving). A send failure is logged, never fatal:
/// systemd would then time the start out and say so itself.
pub fn ready() {
    send(&[sd_notify::NotifyState::Ready], "READY=1");
}

/// Sends `STOPPING=1` (shutdown began).
pub fn stopping() {
    send(&[sd_notify::NotifyState::Stopping], "STOPPING=1");
}

fn send(state: &[sd_notify::NotifyState], what: &str) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    match sd_notify::notify(state) {
        Ok(()) => debug!(message = what, "told systemd"),
        Err(e) => warn!(error = %e, message = what, "cannot notify systemd (NOTIFY_SOCKET)"),
    }
}

/// The engine's watchdog: [`Watchdog::tick`] after each tick sends
/// `WATCHDOG=1` at most every half `WATCHDOG_USEC`, as sd_watchdog_enabled(3)
/// advises, so a tick (250 ms by default) costs no syscall most of the time.
pub struct Watchdog {
    every: Option<Duration>,
    last: Option<Instant>,
}

impl Watchdog {
    /// From the environment systemd sets: `NOTIFY_SOCKET` and `WATCHDOG_USEC`
    /// (and `WATCHDOG_PID`, which must be this process if set). Off when any
    /// is missing.
    pub fn from_env() -> Watchdog {
        let every = match std::env::var_os("NOTIFY_SOCKET") {
            Some(_) => sd_notify::watchdog_enabled().map(|d| d / 2),
            None => None,
        };
        if let Some(every) = every {
            debug!(every = ?every, "systemd watchdog on: pinging from the engine's tick");
        }
        Watchdog::every(every)
    }

    /// A watchdog pinging at most every `every`; `None`: off.
    pub fn every(every: Option<Duration>) -> Watchdog {
        Watchdog { every, last: None }
    }

    /// Whether a ping is due at `now`; records it as sent if so.
    fn due(&mut self, now: Instant) -> bool {
        let Some(every) = self.every else {
            return false;
        };
        let due = self
            .last
            .is_none_or(|last| now.saturating_duration_since(last) >= every);
        if due {
            self.last = Some(now);
        }
        due
    }

    /// Called after each completed engine tick.
    pub fn tick(&mut self, now: Instant) {
        if self.due(now) {
            if let Err(e) = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]) {
                warn!(error = %e, "cannot send WATCHDOG=1 to systemd (NOTIFY_SOCKET)");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_watchdog_pings_on_the_first_tick_then_at_most_every_period() {
        let mut w = Watchdog::every(Some(Duration::from_secs(1)));
        let t0 = Instant::now();
        assert!(w.due(t0), "the first tick pings");
        assert!(!w.due(t0 + Duration::from_millis(250)));
        assert!(!w.due(t0 + Duration::from_millis(999)));
        assert!(w.due(t0 + Duration::from_millis(1000)));
        assert!(!w.due(t0 + Duration::from_millis(1250)));
    }

    #[test]
    fn a_watchdog_that_is_off_never_pings() {
        let mut w = Watchdog::every(None);
        let t0 = Instant::now();
        assert!(!w.due(t0));
        assert!(!w.due(t0 + Duration::from_secs(3600)));
    }
}
