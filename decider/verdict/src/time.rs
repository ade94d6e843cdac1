//! Time as the judgment sees it: moments on the decider's monotonic clock,
//! handed in by the caller, so nothing in this crate reads a clock.

use std::time::Duration;

/// A point on the decider's monotonic clock, as the time elapsed since an
/// epoch the caller chose (the decider uses its own start). Two moments are
/// only comparable when they come from the same epoch; wall clocks of other
/// machines never become moments.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Moment(Duration);

impl Moment {
    /// The epoch itself.
    pub const ZERO: Moment = Moment(Duration::ZERO);

    pub const fn from_duration(since_epoch: Duration) -> Self {
        Moment(since_epoch)
    }

    pub const fn from_millis(ms: u64) -> Self {
        Moment(Duration::from_millis(ms))
    }

    pub const fn from_secs(s: u64) -> Self {
        Moment(Duration::from_secs(s))
    }

    pub const fn since_epoch(self) -> Duration {
        self.0
    }

    /// Time from `earlier` to `self`; zero when `earlier` is later (evidence
    /// recorded "after now" is imperfect input, not a reason to fail).
    pub fn since(self, earlier: Moment) -> Duration {
        self.0.saturating_sub(earlier.0)
    }

    pub fn plus(self, d: Duration) -> Moment {
        Moment(self.0.saturating_add(d))
    }

    pub fn minus(self, d: Duration) -> Moment {
        Moment(self.0.saturating_sub(d))
    }
}

/// Renders a duration the way reasons show it: one decimal under ten seconds
/// ("0.4 s", "3.0 s"), whole seconds up to ten minutes ("312 s"), then minutes.
pub fn fmt_secs(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s < 10.0 {
        format!("{s:.1} s")
    } else if s < 600.0 {
        format!("{} s", d.as_secs())
    } else {
        format!("{} min", d.as_secs() / 60)
    }
}

/// Serde for durations as humantime strings ("10s", "2m 30s", "500ms"), so
/// the policy reads like what an operator would write.
pub mod serde_duration {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text).map_err(|e| {
            serde::de::Error::custom(format!(
                "`{text}` is not a duration ({e}); write e.g. \"10s\", \"500ms\" or \"5m\""
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_saturates() {
        assert_eq!(
            Moment::from_secs(1).since(Moment::from_secs(3)),
            Duration::ZERO
        );
        assert_eq!(
            Moment::from_secs(3).since(Moment::from_secs(1)),
            Duration::from_secs(2)
        );
    }

    #[test]
    fn fmt_secs_reads_well() {
        assert_eq!(fmt_secs(Duration::from_millis(400)), "0.4 s");
        assert_eq!(fmt_secs(Duration::from_secs(312)), "312 s");
        assert_eq!(fmt_secs(Duration::from_secs(3600)), "60 min");
    }
}
