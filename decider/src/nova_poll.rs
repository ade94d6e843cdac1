//! Polls Nova for the engine: `os-services` every `poll_interval` (the engine
//! measures how long each `updated_at` stands still between polls), and each
//! host's instances on request (suspicion), when Nova shows a server booted
//! or moved there (`changes-since`, every poll), and in a slow sweep. Failures and
//! timeouts become "Nova unreachable" evidence, never a node's death; the
//! next poll is the retry.

use crate::config::NovaConfig;
use crate::engine::{Clock, Event};
use crate::metrics::Metrics;
use crate::witness::NovaSource;
use futures::StreamExt;
use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
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
    let changes = watch_changes(
        nova.clone(),
        cfg.poll_interval,
        cfg.request_timeout,
        list_tx.clone(),
    );
    tokio::pin!(lister);
    tokio::pin!(changes);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            _ = &mut lister => return,
            _ = &mut changes => return,
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

/// How far back each `changes-since` reaches beyond the previous ask: Nova
/// compares against its own clock and its `updated` is written before the
/// move finishes.
const CHANGES_OVERLAP: Duration = Duration::from_secs(15);
/// Servers remembered to tell a new change from one already acted on.
const CHANGES_REMEMBERED: usize = 20_000;

/// Every `interval`, asks Nova which servers changed lately and queues a
/// listing of each host that holds one whose `updated` is new: a server
/// booted or evacuated there gets its address probed (and vetoing) within
/// seconds instead of at the next sweep (issue 17).
async fn watch_changes(
    nova: Arc<dyn crate::witness::NovaSource>,
    interval: Duration,
    timeout: Duration,
    list_tx: mpsc::Sender<String>,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seen: HashMap<String, String> = HashMap::new();
    let mut since: Option<SystemTime> = None;
    loop {
        tick.tick().await;
        let asked_at = SystemTime::now();
        let from = since
            .unwrap_or(asked_at)
            .checked_sub(CHANGES_OVERLAP)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        let stamp = humantime::format_rfc3339_seconds(from).to_string();
        let changed = match tokio::time::timeout(timeout, nova.changed_servers(&stamp)).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                debug!(error = %e, "listing servers changed in Nova failed; the sweep still runs");
                continue;
            }
            Err(_) => continue,
        };
        since = Some(asked_at);
        if seen.len() > CHANGES_REMEMBERED {
            seen.clear();
        }
        let mut hosts = BTreeSet::new();
        for c in changed {
            if seen.get(&c.id) != Some(&c.updated) {
                seen.insert(c.id, c.updated);
                hosts.insert(c.host);
            }
        }
        for h in hosts {
            debug!(host = %h, "a server changed there in Nova; listing its instances");
            if list_tx.send(h).await.is_err() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::witness::{ChangedServer, ComputeService, NovaSource, ServerOnHost, WitnessError};
    use futures::future::BoxFuture;
    use std::sync::Mutex;

    /// Nova with one host whose server list changes once: a server booted
    /// on compute2 after the decider started.
    struct Booting {
        changes_asked: Mutex<u32>,
    }

    impl NovaSource for Booting {
        fn list_compute_services(
            &self,
        ) -> BoxFuture<'_, Result<Vec<ComputeService>, WitnessError>> {
            Box::pin(async { Ok(Vec::new()) })
        }
        fn list_servers_on_host<'a>(
            &'a self,
            _host: &'a str,
        ) -> BoxFuture<'a, Result<Vec<ServerOnHost>, WitnessError>> {
            Box::pin(async {
                Ok(vec![ServerOnHost {
                    id: "srv-new".into(),
                    name: "new".into(),
                    status: "ACTIVE".into(),
                    addresses: vec!["198.18.0.120".parse().expect("ip")],
                }])
            })
        }
        fn changed_servers<'a>(
            &'a self,
            _since: &'a str,
        ) -> BoxFuture<'a, Result<Vec<ChangedServer>, WitnessError>> {
            let mut n = self.changes_asked.lock().expect("lock");
            *n += 1;
            // The same change is reported on every ask (the overlap): it
            // must be listed once, not every poll.
            let out = if *n >= 2 {
                vec![ChangedServer {
                    id: "srv-new".into(),
                    updated: "2026-12-07T00:00:05Z".into(),
                    host: "compute2".into(),
                }]
            } else {
                Vec::new()
            };
            Box::pin(async move { Ok(out) })
        }
    }

    /// Without the watcher a booted server's address waited for the sweep
    /// (an hour here); now its host is listed within the 2 s window, and
    /// only once per change.
    #[tokio::test]
    async fn a_booted_server_is_listed_at_once_not_at_the_sweep() {
        let nova: Arc<dyn NovaSource> = Arc::new(Booting {
            changes_asked: Mutex::new(0),
        });
        let cfg = NovaConfig {
            poll_interval: Duration::from_millis(50),
            instances_interval: Duration::from_secs(3600),
            ..NovaConfig::default()
        };
        let (events_tx, mut events) = mpsc::channel(64);
        let (_req_tx, req_rx) = mpsc::channel(4);
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(run(
            nova,
            cfg,
            Clock::start(),
            Arc::new(Metrics::new()),
            events_tx,
            req_rx,
            async move {
                let _ = stop_rx.await;
            },
        ));
        let started = tokio::time::Instant::now();
        let mut listings = Vec::new();
        // 40 polls: the change is reported on every one of them.
        let deadline = started + Duration::from_secs(2);
        while tokio::time::Instant::now() < deadline {
            match tokio::time::timeout_at(deadline, events.recv()).await {
                Ok(Some(Event::NovaInstances { host, result })) => {
                    listings.push((host, started.elapsed(), result.is_ok()));
                }
                Ok(Some(_)) => {}
                _ => break,
            }
        }
        let _ = stop_tx.send(());
        let _ = task.await;
        assert_eq!(
            listings.iter().filter(|(h, _, _)| h == "compute2").count(),
            1,
            "{listings:?}"
        );
    }
}
