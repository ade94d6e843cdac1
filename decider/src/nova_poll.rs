//! Polls Nova for the engine: `os-services` every `poll_interval` (the engine
//! measures how long each `updated_at` stands still between polls), and each
//! host's instances on request (suspicion), when Nova shows a server booted
//! or moved there (`nova_changes`, its own task), and in a slow sweep.
//! Failures and timeouts become "Nova unreachable" evidence, never a node's
//! death; the next poll is the retry.

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

/// Hosts waiting for an instance listing at most.
pub const LISTING_QUEUE: usize = 1024;

/// Aborts the changes watcher when the poller returns.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

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
    // Instance listings and the changes watcher run as tasks of their own,
    // never as branches of the loop below: a branch's future is polled only
    // while the loop waits, so one suspended while holding the Nova client's
    // token or version lock stalled the poll that waited for it until its
    // timeout (the reverted changes-since design, see
    // a_lock_held_by_a_changes_ask_or_a_listing_never_stalls_the_poll).
    let (list_tx, list_rx) = mpsc::channel::<String>(LISTING_QUEUE);
    let _lister = AbortOnDrop(tokio::spawn({
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
    }));
    // It only try_sends to the listing queue.
    let _changes = crate::nova_changes::ChangesConfig::from_nova(&cfg).map(|c| {
        AbortOnDrop(tokio::spawn(crate::nova_changes::run(
            nova.clone(),
            c,
            list_tx.clone(),
        )))
    });
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::witness::{ChangedServer, ComputeService, ServerOnHost, WitnessError};
    use futures::future::BoxFuture;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::Duration;

    /// A Nova whose `changes-since` is slow (`changes_delay`) and reports,
    /// from its second answer on, a server booted on compute2.
    struct Booting {
        changes_delay: Duration,
        changes_asked: AtomicU32,
        changes_in_flight: AtomicU32,
        most_in_flight: AtomicU32,
    }

    impl Booting {
        fn new(changes_delay: Duration) -> Arc<Self> {
            Arc::new(Booting {
                changes_delay,
                changes_asked: AtomicU32::new(0),
                changes_in_flight: AtomicU32::new(0),
                most_in_flight: AtomicU32::new(0),
            })
        }
    }

    impl NovaSource for Booting {
        fn list_compute_services(
            &self,
        ) -> BoxFuture<'_, Result<Vec<ComputeService>, WitnessError>> {
            Box::pin(async {
                Ok(vec![ComputeService {
                    id: "1".into(),
                    host: "compute2".into(),
                    state: "up".into(),
                    status: "enabled".into(),
                    forced_down: false,
                    disabled_reason: None,
                    updated_at: None,
                    host_ip: None,
                }])
            })
        }
        fn list_servers_on_host<'a>(
            &'a self,
            _host: &'a str,
        ) -> BoxFuture<'a, Result<Vec<ServerOnHost>, WitnessError>> {
            Box::pin(async { Ok(Vec::new()) })
        }
        fn changed_servers<'a>(
            &'a self,
            _since: &'a str,
        ) -> BoxFuture<'a, Result<Vec<ChangedServer>, WitnessError>> {
            Box::pin(async move {
                let n = self.changes_asked.fetch_add(1, Ordering::SeqCst) + 1;
                let now = self.changes_in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                self.most_in_flight.fetch_max(now, Ordering::SeqCst);
                // Out of flight when answered or abandoned (dropped).
                let _done = InFlight(&self.changes_in_flight);
                tokio::time::sleep(self.changes_delay).await;
                Ok(if n >= 2 {
                    vec![ChangedServer {
                        id: "srv-new".into(),
                        updated: "2026-12-07T00:00:05Z".into(),
                        host: "compute2".into(),
                    }]
                } else {
                    Vec::new()
                })
            })
        }
    }

    struct InFlight<'a>(&'a AtomicU32);

    impl Drop for InFlight<'_> {
        fn drop(&mut self) {
            self.0.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// Listings after the start-up ones (the new host's, the sweep's first).
    fn after_start(listings: &[Duration]) -> Vec<Duration> {
        listings
            .iter()
            .copied()
            .filter(|t| *t >= Duration::from_secs(1))
            .collect()
    }

    /// Runs the poller on the paused clock for `for_`, returning when each
    /// `os-services` poll and each instance listing of compute2 arrived.
    async fn drive(
        nova: Arc<Booting>,
        cfg: NovaConfig,
        for_: Duration,
    ) -> (Vec<Duration>, Vec<Duration>) {
        let (events_tx, mut events) = mpsc::channel(1024);
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
        let deadline = started + for_;
        let (mut polls, mut listings) = (Vec::new(), Vec::new());
        loop {
            match tokio::time::timeout_at(deadline, events.recv()).await {
                Ok(Some(Event::NovaServices { .. })) => polls.push(started.elapsed()),
                Ok(Some(Event::NovaInstances { host, .. })) if host == "compute2" => {
                    listings.push(started.elapsed())
                }
                Ok(Some(_)) => {}
                _ => break,
            }
        }
        let _ = stop_tx.send(());
        let _ = task.await;
        (polls, listings)
    }

    fn cfg() -> NovaConfig {
        NovaConfig {
            poll_interval: Duration::from_secs(1),
            instances_interval: Duration::from_secs(3600),
            changes_interval: Duration::from_secs(5),
            changes_timeout: Duration::from_secs(4),
            ..NovaConfig::default()
        }
    }

    /// The reverted design asked `changes-since` on every os-services poll;
    /// whatever slows that ask must never slow Nova's witness. Here every
    /// ask takes 30 s (past its timeout): the poll still runs every second.
    #[tokio::test(start_paused = true)]
    async fn a_slow_changes_since_never_delays_an_os_services_poll() {
        let nova = Booting::new(Duration::from_secs(30));
        let (polls, _) = drive(nova.clone(), cfg(), Duration::from_secs(60)).await;
        let gaps: Vec<Duration> = polls.windows(2).map(|w| w[1] - w[0]).collect();
        assert!(
            polls.len() >= 59,
            "{} polls in 60 s: {polls:?}",
            polls.len()
        );
        assert!(
            gaps.iter().all(|g| *g <= Duration::from_millis(1100)),
            "a poll waited: {gaps:?}"
        );
        // One ask at a time, each abandoned at its timeout, every 5 s at most.
        assert_eq!(nova.most_in_flight.load(Ordering::SeqCst), 1);
        let asked = nova.changes_asked.load(Ordering::SeqCst);
        assert!((6..=13).contains(&asked), "{asked} asks in 60 s");
    }

    /// Without the watcher a booted server's address waited for the sweep
    /// (an hour here); now its host is listed within one changes interval
    /// of Nova reporting it, and once per change though every overlapping
    /// ask reports it again.
    #[tokio::test(start_paused = true)]
    async fn a_booted_server_is_listed_within_the_changes_interval_and_once() {
        let nova = Booting::new(Duration::from_millis(100));
        let (polls, listings) = drive(nova.clone(), cfg(), Duration::from_secs(60)).await;
        assert!(polls.len() >= 59);
        // The change is reported by the second ask (at 5 s) and by every
        // one after it.
        let later = after_start(&listings);
        assert_eq!(later.len(), 1, "{listings:?}");
        assert!(later[0] <= Duration::from_secs(6), "listed at {later:?}");
    }

    /// A Nova client whose calls share one lock that a call may hold across
    /// an await: the real client's token lock while it logs in again, or
    /// its version discovery. Each changes-since ask and each listing holds
    /// it for `hold`; the os-services poll needs it for a moment.
    struct SharedLock {
        lock: tokio::sync::Mutex<()>,
        hold: Duration,
        asks: AtomicU32,
    }

    impl NovaSource for SharedLock {
        fn list_compute_services(
            &self,
        ) -> BoxFuture<'_, Result<Vec<ComputeService>, WitnessError>> {
            Box::pin(async move {
                let _l = self.lock.lock().await;
                Ok(Vec::new())
            })
        }
        fn list_servers_on_host<'a>(
            &'a self,
            _host: &'a str,
        ) -> BoxFuture<'a, Result<Vec<ServerOnHost>, WitnessError>> {
            Box::pin(async move {
                let _l = self.lock.lock().await;
                tokio::time::sleep(self.hold).await;
                Ok(Vec::new())
            })
        }
        fn changed_servers<'a>(
            &'a self,
            _since: &'a str,
        ) -> BoxFuture<'a, Result<Vec<ChangedServer>, WitnessError>> {
            Box::pin(async move {
                let n = self.asks.fetch_add(1, Ordering::SeqCst);
                let _l = self.lock.lock().await;
                tokio::time::sleep(self.hold).await;
                // A new change every ask: compute2 is listed every round.
                Ok(vec![ChangedServer {
                    id: "srv".into(),
                    updated: format!("t{n}"),
                    host: "compute2".into(),
                }])
            })
        }
    }

    /// What starved the poll in the reverted design (decider_lab and
    /// fault_matrix, "listing os-services: no answer within 5s" from the
    /// decider's start on): the changes-since ask and the listings were
    /// futures of the poll's own task, polled only between its branches. One
    /// suspended while holding the client's token or version lock stalled
    /// the poll branch waiting for that lock until its timeout, and by then
    /// its own request had passed its deadline, so it failed and took the
    /// lock again at once. Here every holder runs as a task of its own and
    /// lets go after `hold`: every poll answers.
    #[tokio::test(start_paused = true)]
    async fn a_lock_held_by_a_changes_ask_or_a_listing_never_stalls_the_poll() {
        let nova = Arc::new(SharedLock {
            lock: tokio::sync::Mutex::new(()),
            hold: Duration::from_millis(1500),
            asks: AtomicU32::new(0),
        });
        let cfg = NovaConfig {
            request_timeout: Duration::from_secs(5),
            changes_timeout: Duration::from_secs(4),
            ..cfg()
        };
        let (events_tx, mut events) = mpsc::channel(1024);
        let (_req_tx, req_rx) = mpsc::channel(4);
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(run(
            nova.clone(),
            cfg,
            Clock::start(),
            Arc::new(Metrics::new()),
            events_tx,
            req_rx,
            async move {
                let _ = stop_rx.await;
            },
        ));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        let (mut polls, mut failed, mut listings) = (0, Vec::new(), 0);
        loop {
            match tokio::time::timeout_at(deadline, events.recv()).await {
                Ok(Some(Event::NovaServices { result, .. })) => {
                    polls += 1;
                    if let Err(e) = result {
                        failed.push(e);
                    }
                }
                Ok(Some(Event::NovaInstances { result, .. })) => {
                    listings += 1;
                    if let Err(e) = result {
                        failed.push(e);
                    }
                }
                Ok(Some(_)) => {}
                _ => break,
            }
        }
        let _ = stop_tx.send(());
        let _ = task.await;
        assert!(
            failed.is_empty(),
            "{} of {polls} polls and {listings} listings failed: {failed:?}",
            failed.len()
        );
        assert!(polls >= 30, "{polls} polls in 60 s");
        assert!(nova.asks.load(Ordering::SeqCst) >= 10);
        assert!(listings >= 10, "{listings} listings");
    }

    /// `changes_interval = "0s"`: nothing is asked.
    #[tokio::test(start_paused = true)]
    async fn no_changes_asked_when_turned_off() {
        let nova = Booting::new(Duration::from_millis(100));
        let cfg = NovaConfig {
            changes_interval: Duration::ZERO,
            ..cfg()
        };
        let (_, listings) = drive(nova.clone(), cfg, Duration::from_secs(20)).await;
        assert_eq!(nova.changes_asked.load(Ordering::SeqCst), 0);
        assert!(after_start(&listings).is_empty(), "{listings:?}");
    }
}
