//! Alerts about nodes Vigil leaves alone on purpose. `degraded` (the
//! management side hung or gone while the VMs run: the seed's case) is
//! exactly when a person should look, yet no incident opens and nothing
//! would page them. This task tells the same receivers as recovery does.

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use tokio::sync::broadcast::{self, error::RecvError};
use tokio::time::Instant;
use tracing::{info, warn};
use vigil_recovery::notify::{Dispatcher, Message};
use vigil_verdict::Verdict;

pub use crate::degraded::DegradedLevel;

use crate::engine::VerdictChanged;

/// A node alerted about is not alerted about again for this long: one mail
/// per episode, not one per flicker.
pub const REALERT_AFTER: Duration = Duration::from_secs(30 * 60);

/// A node must stay `degraded` this long before anyone is told: a decider
/// that just started sees every node `degraded` for the seconds until its
/// sensor connects (seen in the lab), and a mail per restart would teach
/// people to ignore these.
pub const ALERT_AFTER: Duration = Duration::from_secs(15);

/// Sends a `node-degraded` notification when a node has stayed `degraded`
/// for [`ALERT_AFTER`], until `shutdown`.
pub async fn degraded_alerts(
    mut changes: broadcast::Receiver<VerdictChanged>,
    dispatcher: Dispatcher,
    shutdown: impl Future<Output = ()>,
) {
    let mut alerts = Alerts::default();
    tokio::pin!(shutdown);
    loop {
        let next = alerts.next_due();
        tokio::select! {
            _ = &mut shutdown => return,
            _ = async {
                match next {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            } => {
                for m in alerts.due(Instant::now()) {
                    info!(node = %m.node(), "node degraded for {ALERT_AFTER:?}: alerting (it will not be fenced)");
                    dispatcher.dispatch(m);
                }
            }
            r = changes.recv() => match r {
                Ok(c) => alerts.on_change(&c, Instant::now()),
                Err(RecvError::Lagged(n)) => {
                    warn!(missed = n, "the degraded-alert task fell behind the verdict changes; some alerts may be missing");
                }
                Err(RecvError::Closed) => return,
            },
        }
    }
}

/// Which nodes are waiting out [`ALERT_AFTER`], and when each was last
/// alerted about and how bad it was then.
#[derive(Default)]
struct Alerts {
    /// Node → when its alert is due, the reasons and level to alert with.
    pending: HashMap<String, (Instant, Vec<String>, DegradedLevel)>,
    last: HashMap<String, (Instant, DegradedLevel)>,
}

impl Alerts {
    fn on_change(&mut self, c: &VerdictChanged, now: Instant) {
        if c.to != Verdict::Degraded {
            self.pending.remove(&c.node);
        } else if c.from != Verdict::Degraded {
            self.pending.insert(
                c.node.clone(),
                (now + ALERT_AFTER, c.reasons.clone(), c.degraded),
            );
        } else if let Some(p) = self.pending.get_mut(&c.node) {
            // Worse while waiting: the alert says the worse.
            p.1.clone_from(&c.reasons);
            p.2 = p.2.max(&c.degraded);
        } else if self
            .last
            .get(&c.node)
            .is_some_and(|(_, alerted)| c.degraded.exceeds(alerted))
        {
            // Worse than what was alerted: tell again, after the same
            // ALERT_AFTER so a flicker does not mail.
            self.pending.insert(
                c.node.clone(),
                (now + ALERT_AFTER, c.reasons.clone(), c.degraded),
            );
        }
    }

    fn next_due(&self) -> Option<Instant> {
        self.pending.values().map(|(at, _, _)| *at).min()
    }

    /// The alerts due at `now`: once per node per [`REALERT_AFTER`], unless
    /// the node got worse than when it was last alerted about.
    fn due(&mut self, now: Instant) -> Vec<Message> {
        let ready: Vec<String> = self
            .pending
            .iter()
            .filter(|(_, (at, _, _))| *at <= now)
            .map(|(n, _)| n.clone())
            .collect();
        let mut out = Vec::new();
        for node in ready {
            let Some((_, reasons, level)) = self.pending.remove(&node) else {
                continue;
            };
            if self.last.get(&node).is_some_and(|(t, alerted)| {
                now.duration_since(*t) < REALERT_AFTER && !level.exceeds(alerted)
            }) {
                continue;
            }
            self.last.insert(node.clone(), (now, level));
            out.push(Message::NodeDegraded { node, reasons });
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(node: &str, from: Verdict, to: Verdict) -> VerdictChanged {
        VerdictChanged {
            node: node.into(),
            from,
            to,
            reasons: vec!["nova-compute blocked 9 s in D state; 2/2 instances progressing".into()],
            at_unix_ms: 0,
            actionable: false,
            degraded: DegradedLevel {
                nova_compute: 1,
                ..DegradedLevel::default()
            },
        }
    }

    /// Issue 17: nova-compute hung (alerted), then every VM froze too; that
    /// was muted for 30 minutes. Worse alerts again; the same or better
    /// does not.
    #[test]
    fn a_node_that_gets_worse_alerts_again() {
        let mut a = Alerts::default();
        let t0 = Instant::now();
        a.on_change(&change("compute1", Verdict::Healthy, Verdict::Degraded), t0);
        assert_eq!(a.due(t0 + ALERT_AFTER).len(), 1);
        let worse = |at: Instant, frozen: usize, a: &mut Alerts| {
            let mut c = change("compute1", Verdict::Degraded, Verdict::Degraded);
            c.degraded.frozen_instances = frozen;
            c.reasons = vec![format!(
                "nova-compute blocked 60 s in D state; {}/2 instances progressing",
                2 - frozen
            )];
            a.on_change(&c, at);
        };
        // The same level again (a reason's seconds changed): nothing.
        let t1 = t0 + Duration::from_secs(60);
        worse(t1, 0, &mut a);
        assert!(a.due(t1 + ALERT_AFTER).is_empty());
        // Every VM frozen: alerted again, saying so.
        let t2 = t0 + Duration::from_secs(120);
        worse(t2, 2, &mut a);
        let m = a.due(t2 + ALERT_AFTER);
        assert_eq!(m.len(), 1, "a worse node must alert again");
        assert!(m[0].subject().contains("0/2"), "{}", m[0].subject());
        // Not worse than that: muted again.
        let t3 = t0 + Duration::from_secs(300);
        worse(t3, 1, &mut a);
        worse(t3, 2, &mut a);
        assert!(a.due(t3 + ALERT_AFTER).is_empty());
    }

    #[test]
    fn staying_degraded_alerts_once_per_episode_window() {
        let mut a = Alerts::default();
        let t0 = Instant::now();
        a.on_change(&change("compute1", Verdict::Healthy, Verdict::Degraded), t0);
        assert!(
            a.due(t0 + ALERT_AFTER / 2).is_empty(),
            "not before ALERT_AFTER"
        );
        assert_eq!(a.next_due(), Some(t0 + ALERT_AFTER));
        let m = a.due(t0 + ALERT_AFTER);
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].kind(), "node-degraded");
        assert!(
            m[0].subject().contains("nova-compute blocked"),
            "{}",
            m[0].subject()
        );
        assert!(m[0].text().contains("will not fence"), "{}", m[0].text());
        assert_eq!(m[0].incident(), None);
        // Out and back in within the re-alert window: no second mail.
        let t1 = t0 + Duration::from_secs(60);
        a.on_change(&change("compute1", Verdict::Degraded, Verdict::Healthy), t1);
        a.on_change(&change("compute1", Verdict::Healthy, Verdict::Degraded), t1);
        assert!(a.due(t1 + ALERT_AFTER).is_empty());
        // After the window, alerted again.
        let t2 = t0 + REALERT_AFTER + Duration::from_secs(1);
        a.on_change(&change("compute1", Verdict::Degraded, Verdict::Healthy), t2);
        a.on_change(&change("compute1", Verdict::Healthy, Verdict::Degraded), t2);
        assert_eq!(a.due(t2 + ALERT_AFTER).len(), 1);
    }

    #[test]
    fn a_short_degraded_spell_is_not_alerted() {
        // The decider's start-up: degraded for the seconds before the
        // sensor connects, then healthy.
        let mut a = Alerts::default();
        let t0 = Instant::now();
        a.on_change(&change("compute1", Verdict::Healthy, Verdict::Degraded), t0);
        a.on_change(
            &change("compute1", Verdict::Degraded, Verdict::Healthy),
            t0 + Duration::from_secs(3),
        );
        assert!(a.due(t0 + ALERT_AFTER).is_empty());
        assert_eq!(a.next_due(), None);
    }

    #[test]
    fn other_changes_do_not_alert() {
        let mut a = Alerts::default();
        let now = Instant::now();
        for (from, to) in [
            (Verdict::Healthy, Verdict::Suspect),
            (Verdict::Suspect, Verdict::Dead),
            (Verdict::Degraded, Verdict::Degraded),
            (Verdict::Degraded, Verdict::Healthy),
        ] {
            a.on_change(&change("compute1", from, to), now);
        }
        assert!(a.due(now + ALERT_AFTER).is_empty());
    }
}
