//! Lists again, soon, the hosts where Nova shows a server booted or moved,
//! so its address is probed (and vetoes fencing) within `changes_interval`
//! instead of at the next instance sweep (issue 17).
//!
//! Its own task on its own cadence, one `changes-since` request at a time
//! with its own timeout, and it only ever `try_send`s host names to the
//! listing queue: nothing here can delay the `os-services` poll, whose
//! freshness the staleness rule rests on. A first version asked on every
//! 1 s poll and listed each changed host at once (commit 4ce3ef8, reverted
//! in c33889e); see ARCHITECTURE.md "Instance addresses" for what that cost.

use crate::config::NovaConfig;
use crate::witness::{ChangedServer, NovaSource};
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

/// How far back each ask reaches before the previous one was sent: Nova
/// compares `changes-since` with its own clock, and a row's `updated_at` is
/// written when its transaction starts, possibly before our last ask.
pub const OVERLAP: Duration = Duration::from_secs(15);

/// The watcher's settings, from `[nova]`.
#[derive(Debug, Clone)]
pub struct ChangesConfig {
    pub interval: Duration,
    pub timeout: Duration,
    pub max_hosts: usize,
    /// The furthest back an ask reaches after failures: anything older was
    /// covered by an instance sweep.
    pub max_lookback: Duration,
}

impl ChangesConfig {
    /// `None` when `changes_interval` is zero (turned off).
    pub fn from_nova(cfg: &NovaConfig) -> Option<Self> {
        if cfg.changes_interval.is_zero() {
            return None;
        }
        Some(ChangesConfig {
            interval: cfg.changes_interval,
            timeout: cfg.changes_timeout,
            max_hosts: cfg.changes_max_hosts.max(1),
            max_lookback: cfg.instances_interval.saturating_add(OVERLAP),
        })
    }
}

/// What the watcher knows between rounds; no I/O.
#[derive(Debug, Default)]
pub struct Tracker {
    /// Each server's `updated` in the last answer. Replaced by every
    /// answer, so it never holds more than one answer's worth: a server
    /// that leaves the window can only come back with a new `updated`.
    seen: HashMap<String, String>,
    /// Hosts with a change not yet queued for listing.
    pending: BTreeSet<String>,
    /// When the last answered ask was sent.
    asked: Option<SystemTime>,
}

impl Tracker {
    /// The `changes-since` instant for an ask sent at `now`.
    /// Never before the epoch (RFC 3339 formatting cannot show it).
    pub fn since(&self, now: SystemTime, max_lookback: Duration) -> SystemTime {
        let from = self.asked.unwrap_or(now).checked_sub(OVERLAP);
        let floor = now.checked_sub(max_lookback);
        let at = match (from, floor) {
            (Some(f), Some(l)) => f.max(l),
            (Some(f), None) => f,
            _ => SystemTime::UNIX_EPOCH,
        };
        at.max(SystemTime::UNIX_EPOCH)
    }

    /// Takes an answer to the ask sent at `asked_at`: each server whose
    /// `updated` is new makes its host pending.
    pub fn answered(&mut self, asked_at: SystemTime, changed: Vec<ChangedServer>) {
        let mut seen = HashMap::with_capacity(changed.len());
        for c in changed {
            if self.seen.get(&c.id) != Some(&c.updated) {
                self.pending.insert(c.host);
            }
            seen.insert(c.id, c.updated);
        }
        self.seen = seen;
        self.asked = Some(asked_at);
    }

    /// Up to `max` pending hosts, in name order.
    pub fn take(&mut self, max: usize) -> Vec<String> {
        let mut out = Vec::new();
        while out.len() < max {
            match self.pending.pop_first() {
                Some(h) => out.push(h),
                None => break,
            }
        }
        out
    }

    /// A host that could not be queued stays pending.
    pub fn keep(&mut self, host: String) {
        self.pending.insert(host);
    }

    pub fn pending(&self) -> usize {
        self.pending.len()
    }
}

/// Every `interval`, asks Nova which servers changed and queues a listing
/// of up to `max_hosts` hosts holding a new change. Returns when the
/// listing queue is closed (the poller stopped).
pub async fn run(nova: Arc<dyn NovaSource>, cfg: ChangesConfig, list_tx: mpsc::Sender<String>) {
    let mut tick = tokio::time::interval(cfg.interval);
    // A slow answer pushes the next ask back instead of firing a burst.
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut tracker = Tracker::default();
    let mut failing = false;
    loop {
        tick.tick().await;
        let asked_at = SystemTime::now();
        let since = humantime::format_rfc3339_seconds(tracker.since(asked_at, cfg.max_lookback))
            .to_string();
        let failure = match tokio::time::timeout(cfg.timeout, nova.changed_servers(&since)).await {
            Ok(Ok(changed)) => {
                tracker.answered(asked_at, changed);
                None
            }
            Ok(Err(e)) => Some(e.to_string()),
            Err(_) => Some(format!(
                "listing servers changed since {since}: no answer within {}",
                humantime::format_duration(cfg.timeout)
            )),
        };
        match failure {
            // The window is kept: the next answered ask covers this one.
            Some(e) if !failing => {
                failing = true;
                warn!(error = %e, "cannot ask Nova which servers changed; new servers' addresses wait for the instance sweep until it works");
            }
            Some(e) => debug!(error = %e, "asking Nova which servers changed failed again"),
            None if failing => {
                failing = false;
                info!("asking Nova which servers changed works again");
            }
            None => {}
        }
        for host in tracker.take(cfg.max_hosts) {
            match list_tx.try_send(host) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(h)) => {
                    tracker.keep(h);
                    break;
                }
                Err(mpsc::error::TrySendError::Closed(_)) => return,
            }
        }
        if tracker.pending() > 0 {
            debug!(
                pending = tracker.pending(),
                "hosts with changed servers left for the next round"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(id: &str, updated: &str, host: &str) -> ChangedServer {
        ChangedServer {
            id: id.into(),
            updated: updated.into(),
            host: host.into(),
        }
    }

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn a_change_is_listed_once_though_every_overlapping_ask_reports_it() {
        let mut t = Tracker::default();
        t.answered(at(100), vec![change("a", "t1", "compute1")]);
        assert_eq!(t.take(8), vec!["compute1"]);
        t.answered(at(105), vec![change("a", "t1", "compute1")]);
        assert!(t.take(8).is_empty());
        // Evacuated: a new `updated` on another host.
        t.answered(at(110), vec![change("a", "t2", "compute2")]);
        assert_eq!(t.take(8), vec!["compute2"]);
    }

    #[test]
    fn a_burst_is_listed_a_bounded_number_of_hosts_per_round() {
        let mut t = Tracker::default();
        let burst: Vec<_> = (0..20)
            .map(|i| change(&format!("s{i}"), "t1", &format!("compute{i:02}")))
            .collect();
        t.answered(at(100), burst);
        assert_eq!(t.take(8).len(), 8);
        assert_eq!(t.take(8).len(), 8);
        assert_eq!(t.take(8).len(), 4);
        assert!(t.take(8).is_empty());
    }

    #[test]
    fn a_host_not_queued_is_kept_for_the_next_round() {
        let mut t = Tracker::default();
        t.answered(at(100), vec![change("a", "t1", "compute1")]);
        let h = t.take(1).remove(0);
        t.keep(h);
        assert_eq!(t.take(1), vec!["compute1"]);
    }

    #[test]
    fn the_window_overlaps_the_last_answered_ask_and_is_bounded_after_failures() {
        let max = Duration::from_secs(75);
        let mut t = Tracker::default();
        // First ask: the overlap only.
        assert_eq!(t.since(at(1000), max), at(985));
        t.answered(at(1000), Vec::new());
        assert_eq!(t.since(at(1005), max), at(985));
        // Failures do not move `asked`; the window grows up to the sweep's.
        assert_eq!(t.since(at(1030), max), at(985));
        assert_eq!(t.since(at(2000), max), at(1925));
        assert_eq!(
            Tracker::default().since(at(10), max),
            SystemTime::UNIX_EPOCH
        );
    }

    #[test]
    fn seen_holds_one_answer_only() {
        let mut t = Tracker::default();
        let many: Vec<_> = (0..1000)
            .map(|i| change(&format!("s{i}"), "t1", "compute1"))
            .collect();
        t.answered(at(100), many);
        t.answered(at(200), vec![change("x", "t1", "compute2")]);
        assert_eq!(t.seen.len(), 1);
        // A server that left the window comes back only with a new change,
        // which lists its host again: nothing is missed by forgetting.
        t.take(8);
        t.answered(at(300), vec![change("s1", "t9", "compute1")]);
        assert_eq!(t.take(8), vec!["compute1"]);
    }

    #[test]
    fn off_when_the_interval_is_zero() {
        let cfg = NovaConfig {
            changes_interval: Duration::ZERO,
            ..NovaConfig::default()
        };
        assert!(ChangesConfig::from_nova(&cfg).is_none());
        let on = ChangesConfig::from_nova(&NovaConfig::default()).expect("on by default");
        assert_eq!(on.max_lookback, Duration::from_secs(75));
    }
}
