//! Runs the engine's ping plan: every address in a slow background sweep,
//! addresses of nodes that are not healthy far more often, with bounded
//! concurrency and a per-probe timeout. Results go back to the engine in one
//! batch per round.
//!
//! Rounds overlap: a round whose probes wait out their timeout does not hold
//! back the next one. Otherwise a silent address was probed once per
//! timeout (1 s) rather than once per `urgent_interval` (0.5 s), and its
//! third missed probe (safety rule 2's count) came a second later than it
//! had to. Overlapping probes of one address are told apart by their send
//! time when the engine records them (`PingWitness::last_sent_at`).

use crate::config::PingConfig;
use crate::engine::{Clock, Event, PingPlan, PingResult, PingTarget};
use crate::witness::Prober;
use futures::StreamExt;
use std::collections::HashSet;
use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

/// Rounds in flight at once. With the default 1 s timeout and 0.5 s urgent
/// interval two or three urgent rounds overlap; one more leaves room for a
/// background sweep. Past this the prober is saturated and a tick is
/// skipped rather than piling rounds up.
const MAX_ROUNDS_IN_FLIGHT: usize = 4;

pub async fn run(
    prober: Arc<dyn Prober>,
    cfg: PingConfig,
    clock: Clock,
    mut plan: watch::Receiver<Arc<PingPlan>>,
    events: mpsc::Sender<Event>,
    shutdown: impl Future<Output = ()>,
) {
    let mut sweep = tokio::time::interval(cfg.interval);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut urgent = tokio::time::interval(cfg.urgent_interval);
    urgent.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut rounds = JoinSet::new();
    // Addresses already probed urgently: one that joins the set (its node
    // just became doubted) is probed at once, not at the next urgent tick.
    let mut urgent_before: HashSet<IpAddr> = HashSet::new();
    tokio::pin!(shutdown);
    loop {
        let pick = tokio::select! {
            _ = &mut shutdown => break,
            Some(_) = rounds.join_next(), if !rounds.is_empty() => continue,
            _ = sweep.tick() => Pick::All,
            _ = urgent.tick() => Pick::Urgent,
            changed = plan.changed() => match changed {
                Ok(()) => Pick::NewlyUrgent,
                // The engine is gone.
                Err(_) => break,
            },
        };
        if events.is_closed() {
            break;
        }
        if rounds.len() >= MAX_ROUNDS_IN_FLIGHT {
            tracing::debug!(
                in_flight = rounds.len(),
                "ping round skipped: earlier rounds still waiting on their probes"
            );
            continue;
        }
        let current = plan.borrow_and_update().clone();
        let targets: Vec<PingTarget> = current
            .targets
            .iter()
            .filter(|t| match pick {
                Pick::All => true,
                Pick::Urgent => current.urgent.contains(&t.address) || t.node.is_none(),
                Pick::NewlyUrgent => {
                    current.urgent.contains(&t.address) && !urgent_before.contains(&t.address)
                }
            })
            .cloned()
            .collect();
        urgent_before.clone_from(&current.urgent);
        if targets.is_empty() {
            continue;
        }
        rounds.spawn(round(
            prober.clone(),
            cfg.clone(),
            clock,
            targets,
            events.clone(),
        ));
    }
    rounds.abort_all();
}

/// Which addresses a round probes.
#[derive(Clone, Copy)]
enum Pick {
    /// The background sweep: every address.
    All,
    /// Doubted nodes' addresses and the reference addresses.
    Urgent,
    /// Addresses of nodes doubted since the last look.
    NewlyUrgent,
}

/// Probes `targets` once each and sends the batch to the engine.
async fn round(
    prober: Arc<dyn Prober>,
    cfg: PingConfig,
    clock: Clock,
    targets: Vec<PingTarget>,
    events: mpsc::Sender<Event>,
) {
    let results: Vec<PingResult> = futures::stream::iter(targets)
        .map(|t| {
            let prober = prober.clone();
            async move {
                let sent_at = clock.now();
                let r = prober.probe(t.address, cfg.timeout).await;
                let at = clock.now();
                let (rtt, error) = match r {
                    Ok(rtt) => (rtt, None),
                    Err(e) => (None, Some(e.to_string())),
                };
                PingResult {
                    node: t.node,
                    address: t.address,
                    sent_at,
                    at,
                    rtt,
                    error,
                }
            }
        })
        .buffer_unordered(cfg.concurrency)
        .collect()
        .await;
    // A closed engine ends the run loop at its next tick.
    let _ = events.send(Event::PingResults(results)).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::witness::WitnessError;
    use futures::future::BoxFuture;
    use std::net::IpAddr;
    use std::time::Duration;
    use vigil_verdict::{Moment, PingRole};

    /// An address that never answers: every probe waits out its timeout.
    struct Silent;

    impl Prober for Silent {
        fn probe(
            &self,
            _address: IpAddr,
            timeout: Duration,
        ) -> BoxFuture<'_, Result<Option<Duration>, WitnessError>> {
            Box::pin(async move {
                tokio::time::sleep(timeout).await;
                Ok(None)
            })
        }
    }

    /// Issue 16: the third missed probe of a silent address of a doubted
    /// node comes two seconds after suspicion (probes at 0, 0.5 and 1.0 s,
    /// each timing out 1 s later), not three: a round waiting on its
    /// timeouts no longer holds back the next.
    #[tokio::test(start_paused = true)]
    async fn urgent_probes_of_a_silent_address_do_not_wait_for_each_other() {
        let address: IpAddr = "198.51.100.11".parse().expect("address");
        let plan = PingPlan {
            targets: vec![PingTarget {
                node: Some("compute1".into()),
                address,
                role: PingRole::Host,
            }],
            urgent: [address].into_iter().collect(),
            doubted: ["compute1".to_string()].into_iter().collect(),
        };
        let (_plan_tx, plan_rx) = watch::channel(Arc::new(plan));
        let (tx, mut rx) = mpsc::channel(64);
        let clock = Clock::start();
        let cfg = PingConfig {
            interval: Duration::from_secs(5),
            urgent_interval: Duration::from_millis(500),
            timeout: Duration::from_secs(1),
            ..PingConfig::default()
        };
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(run(Arc::new(Silent), cfg, clock, plan_rx, tx, async {
            let _ = stop_rx.await;
        }));
        let mut failures = Vec::new();
        while failures.len() < 3 {
            let Some(Event::PingResults(batch)) = rx.recv().await else {
                panic!("the sweep stopped");
            };
            failures.extend(batch.into_iter().map(|r| (r.sent_at, r.at)));
        }
        failures.sort();
        let third = failures[2].1.since(Moment::from_secs(0));
        assert!(
            third <= Duration::from_millis(2_100),
            "third missed probe after {third:?}: {failures:?}"
        );
        // Sent half a second apart, not a timeout apart.
        let gap = failures[1].0.since(failures[0].0);
        assert!(gap <= Duration::from_millis(600), "{failures:?}");
        let _ = stop_tx.send(());
        task.await.expect("sweep task");
    }

    /// A node that becomes doubted has its addresses probed at once, not at
    /// the next urgent tick (up to half a second later).
    #[tokio::test(start_paused = true)]
    async fn a_newly_doubted_node_is_probed_at_once() {
        let address: IpAddr = "198.51.100.11".parse().expect("address");
        let target = PingTarget {
            node: Some("compute1".into()),
            address,
            role: PingRole::Host,
        };
        let calm = PingPlan {
            targets: vec![target.clone()],
            ..PingPlan::default()
        };
        let (plan_tx, plan_rx) = watch::channel(Arc::new(calm));
        let (tx, mut rx) = mpsc::channel(64);
        let clock = Clock::start();
        let cfg = PingConfig {
            interval: Duration::from_secs(60),
            urgent_interval: Duration::from_millis(500),
            timeout: Duration::from_secs(1),
            ..PingConfig::default()
        };
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(run(Arc::new(Silent), cfg, clock, plan_rx, tx, async {
            let _ = stop_rx.await;
        }));
        // The first sweep goes out at 0 s and times out at 1 s; the node
        // becomes doubted 0.2 s later, between two urgent ticks.
        let Some(Event::PingResults(_)) = rx.recv().await else {
            panic!("no first sweep");
        };
        tokio::time::sleep(Duration::from_millis(200)).await;
        let doubted_at = clock.now();
        plan_tx.send_replace(Arc::new(PingPlan {
            targets: vec![target],
            urgent: [address].into_iter().collect(),
            doubted: ["compute1".to_string()].into_iter().collect(),
        }));
        let Some(Event::PingResults(batch)) = rx.recv().await else {
            panic!("the sweep stopped");
        };
        let first = batch.first().expect("one probe");
        assert_eq!(first.sent_at, doubted_at, "{batch:?}");
        let _ = stop_tx.send(());
        task.await.expect("sweep task");
    }
}
