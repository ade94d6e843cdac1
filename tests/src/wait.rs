//! Waiting on conditions with deadlines.

use std::time::{Duration, Instant};

/// Polls `check` every `every` until it returns `Some`, or fails after
/// `deadline` with `what` and the last observation (so a failure says what was
/// seen, not just "timed out").
pub fn until<T, O: std::fmt::Debug>(
    what: &str,
    deadline: Duration,
    every: Duration,
    mut check: impl FnMut() -> Result<T, O>,
) -> Result<(T, Duration), String> {
    let start = Instant::now();
    loop {
        match check() {
            Ok(v) => return Ok((v, start.elapsed())),
            Err(last) => {
                if start.elapsed() >= deadline {
                    return Err(format!(
                        "timed out after {deadline:?} waiting for {what}; last seen: {last:?}"
                    ));
                }
            }
        }
        std::thread::sleep(every);
    }
}
