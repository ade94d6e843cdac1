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

use crate::engine::VerdictChanged;

/// A node that keeps going in and out of `degraded` is alerted about at
/// most this often: one mail per episode, not one per flicker.
pub const REALERT_AFTER: Duration = Duration::from_secs(30 * 60);

/// Sends a `node-degraded` notification when a node turns `degraded`,
/// until `shutdown`.
pub async fn degraded_alerts(
    mut changes: broadcast::Receiver<VerdictChanged>,
    dispatcher: Dispatcher,
    shutdown: impl Future<Output = ()>,
) {
    let mut last: HashMap<String, Instant> = HashMap::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            r = changes.recv() => match r {
                Ok(c) => {
                    if let Some(m) = alert_for(&c, &mut last, Instant::now()) {
                        info!(node = %c.node, "node degraded: alerting (it will not be fenced)");
                        dispatcher.dispatch(m);
                    }
                }
                Err(RecvError::Lagged(n)) => {
                    warn!(missed = n, "the degraded-alert task fell behind the verdict changes; some alerts may be missing");
                }
                Err(RecvError::Closed) => return,
            },
        }
    }
}

/// The alert a change calls for, if any; records when it was sent.
fn alert_for(
    c: &VerdictChanged,
    last: &mut HashMap<String, Instant>,
    now: Instant,
) -> Option<Message> {
    if c.to != Verdict::Degraded || c.from == Verdict::Degraded {
        return None;
    }
    if last
        .get(&c.node)
        .is_some_and(|t| now.duration_since(*t) < REALERT_AFTER)
    {
        return None;
    }
    last.insert(c.node.clone(), now);
    Some(Message::NodeDegraded {
        node: c.node.clone(),
        reasons: c.reasons.clone(),
    })
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
        }
    }

    #[test]
    fn turning_degraded_alerts_once_per_episode_window() {
        let mut last = HashMap::new();
        let t0 = Instant::now();
        let m = alert_for(
            &change("compute1", Verdict::Healthy, Verdict::Degraded),
            &mut last,
            t0,
        )
        .expect("an alert");
        assert_eq!(m.kind(), "node-degraded");
        assert!(
            m.subject().contains("nova-compute blocked"),
            "{}",
            m.subject()
        );
        assert!(m.text().contains("will not fence"), "{}", m.text());
        assert_eq!(m.incident(), None);
        // Back and forth within the window: no second mail.
        let again = change("compute1", Verdict::Suspect, Verdict::Degraded);
        assert!(alert_for(&again, &mut last, t0 + Duration::from_secs(60)).is_none());
        // Another node is its own episode.
        assert!(alert_for(
            &change("compute2", Verdict::Healthy, Verdict::Degraded),
            &mut last,
            t0
        )
        .is_some());
        // After the window, alerted again.
        assert!(alert_for(&again, &mut last, t0 + REALERT_AFTER).is_some());
    }

    #[test]
    fn other_changes_do_not_alert() {
        let mut last = HashMap::new();
        let now = Instant::now();
        for (from, to) in [
            (Verdict::Healthy, Verdict::Suspect),
            (Verdict::Suspect, Verdict::Dead),
            (Verdict::Degraded, Verdict::Degraded),
            (Verdict::Degraded, Verdict::Healthy),
        ] {
            assert!(
                alert_for(&change("compute1", from, to), &mut last, now).is_none(),
                "{from} -> {to}"
            );
        }
    }
}
