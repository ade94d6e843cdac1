//! Polls Nova for the engine: `os-services` every `poll_interval` (the engine
//! measures how long each `updated_at` stands still between polls), and each
//! host's instances on request (suspicion) and in a slow sweep. Failures and
//! timeouts become "Nova unreachable" evidence, never a node's death; the
//! next poll is the retry.

use crate::config::NovaConfig;
use crate::engine::{Clock, Event};
use crate::metrics::Metrics;
use crate::witness::NovaSource;
use futures::StreamExt;
use std::collections::BTreeSet;
use std::future::Future;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::mpsc;
use tracing::{debug, warn};

pub async fn run(
    nova: Arc<dyn NovaSource>,
    cfg: NovaConfig,
    clock: Clock,
    metrics: Arc<Metrics>,
    events: mpsc::Sender<Event>,
    mut host_requests: mpsc::Receiver<String>,
    shutdown: impl Future<Output = ()>,
) {
    let mut poll = tokio::time::interval(cfg.poll_interval);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sweep = tokio::time::interval(cfg.instances_interval);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut hosts: BTreeSet<String> = BTreeSet::new();
    // Instance listings run beside the service poll so a slow listing never
    // delays the staleness measurement.
    let (list_tx, list_rx) = mpsc::channel::<String>(1024);
    let lister = {
        let nova = nova.clone();
        let events = events.clone();
        let timeout = cfg.request_timeout;
        tokio_stream::wrappers::ReceiverStream::new(list_rx)
            .map(move |host| {
                let nova = nova.clone();
                async move {
                    let result =
                        match tokio::time::timeout(timeout, nova.list_servers_on_host(&host)).await
                        {
                            Ok(Ok(servers)) => Ok(servers),
                            Ok(Err(e)) => Err(e.to_string()),
                            Err(_) => Err(format!(
                                "listing servers on {host}: no answer within {timeout:?}"
                            )),
                        };
                    (host, result)
                }
            })
            .buffer_unordered(cfg.instances_concurrency)
            .for_each(move |(host, result)| {
                let events = events.clone();
                async move {
                    let _ = events.send(Event::NovaInstances { host, result }).await;
                }
            })
    };
    tokio::pin!(lister);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            _ = &mut lister => return,
            _ = poll.tick() => {
                let started = Instant::now();
                let result = match tokio::time::timeout(cfg.request_timeout, nova.list_compute_services()).await {
                    Ok(Ok(list)) => Ok(list),
                    Ok(Err(e)) => Err(format!("{e}; check Nova and the decider's OpenStack credentials")),
                    Err(_) => Err(format!(
                        "listing os-services: no answer within {}",
                        humantime::format_duration(cfg.request_timeout)
                    )),
                };
                metrics.nova_poll_seconds.observe(started.elapsed().as_secs_f64());
                match &result {
                    Ok(list) => {
                        metrics.nova_reachable.set(1);
                        metrics.health.nova_polled(Ok(()));
                        let new: BTreeSet<String> = list.iter().map(|s| s.host.clone()).collect();
                        for h in new.difference(&hosts) {
                            debug!(host = %h, "new compute host in Nova; listing its instances");
                            let _ = list_tx.try_send(h.clone());
                        }
                        hosts = new;
                    }
                    Err(e) => {
                        metrics.nova_poll_errors.inc();
                        metrics.nova_reachable.set(0);
                        metrics.health.nova_polled(Err(e.clone()));
                        debug!(error = %e, "Nova poll failed");
                    }
                }
                if events.send(Event::NovaServices { polled_at: clock.now(), result }).await.is_err() {
                    return;
                }
            }
            _ = sweep.tick() => {
                for h in &hosts {
                    if list_tx.try_send(h.clone()).is_err() {
                        warn!("instance listing queue full; the sweep resumes next interval");
                        break;
                    }
                }
            }
            Some(h) = host_requests.recv() => {
                let _ = list_tx.try_send(h);
            }
        }
    }
}
