//! Runs the engine's ping plan: every address in a slow background sweep,
//! addresses of nodes that are not healthy far more often, with bounded
//! concurrency and a per-probe timeout. Results go back to the engine in one
//! batch per round.

use crate::config::PingConfig;
use crate::engine::{Clock, Event, PingPlan, PingResult};
use crate::witness::Prober;
use futures::StreamExt;
use std::future::Future;
use std::sync::Arc;
use tokio::sync::{mpsc, watch};

pub async fn run(
    prober: Arc<dyn Prober>,
    cfg: PingConfig,
    clock: Clock,
    plan: watch::Receiver<Arc<PingPlan>>,
    events: mpsc::Sender<Event>,
    shutdown: impl Future<Output = ()>,
) {
    let mut sweep = tokio::time::interval(cfg.interval);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut urgent = tokio::time::interval(cfg.urgent_interval);
    urgent.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(shutdown);
    loop {
        let all = tokio::select! {
            _ = &mut shutdown => return,
            _ = sweep.tick() => true,
            _ = urgent.tick() => false,
        };
        let current = plan.borrow().clone();
        let targets: Vec<_> = current
            .targets
            .iter()
            .filter(|t| all || current.urgent.contains(&t.address) || t.node.is_none())
            .cloned()
            .collect();
        if targets.is_empty() {
            continue;
        }
        let results: Vec<PingResult> = futures::stream::iter(targets)
            .map(|t| {
                let prober = prober.clone();
                async move {
                    let r = prober.probe(t.address, cfg.timeout).await;
                    let at = clock.now();
                    match r {
                        Ok(rtt) => PingResult {
                            node: t.node,
                            address: t.address,
                            at,
                            rtt,
                            error: None,
                        },
                        Err(e) => PingResult {
                            node: t.node,
                            address: t.address,
                            at,
                            rtt: None,
                            error: Some(e.to_string()),
                        },
                    }
                }
            })
            .buffer_unordered(cfg.concurrency)
            .collect()
            .await;
        if events.send(Event::PingResults(results)).await.is_err() {
            return;
        }
    }
}
