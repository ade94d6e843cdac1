//! This decider's part in decider HA (`[cluster]`, `vigil-cluster`): the
//! leadership loop, the journal in etcd, publishing this decider's view of
//! the nodes and reading the others' (the leader's vantage-point veto), and
//! what the operator API, `/readyz` and `/metrics` say about who leads.

use crate::health::Health;
use crate::metrics::Metrics;
use crate::node_state::Nodes;
use std::future::Future;
use std::sync::{Arc, PoisonError};
use std::time::Duration;
use tracing::warn;
use vigil_cluster::views::{NodeView, View, Views};
use vigil_cluster::{ClusterConfig, Etcd, EtcdError, EtcdJournal, Leadership, Role};
use vigil_recovery::journal::Journal;
use vigil_recovery::notify::{Dispatcher, Message};
use vigil_verdict::Opinion;

/// Everything `[cluster]` gives the decider.
#[derive(Clone)]
pub struct ClusterParts {
    pub leadership: Arc<Leadership>,
    pub views: Arc<Views>,
    pub etcd: Etcd,
}

impl ClusterParts {
    /// Connects lazily: a decider whose etcd is down starts, judges and
    /// serves, and acts on nothing until it leads.
    pub async fn connect(cfg: &ClusterConfig) -> Result<ClusterParts, EtcdError> {
        let etcd = Etcd::connect(cfg).await?;
        Ok(ClusterParts {
            leadership: Leadership::new(cfg.clone()),
            views: Arc::new(Views::new(etcd.clone(), cfg)),
            etcd,
        })
    }

    pub fn journal(&self) -> Arc<dyn Journal> {
        Arc::new(EtcdJournal::new(self.etcd.clone(), self.leadership.clone()))
    }
}

/// How often this decider's view is published (and `/readyz`, metrics
/// refreshed).
const VIEW_EVERY: Duration = Duration::from_secs(1);

/// No leader for 3 × lease_ttl (at least this) pages: a takeover takes one
/// TTL; three mean etcd itself is gone.
const PAGE_AFTER_AT_LEAST: Duration = Duration::from_secs(10);

/// This decider's view, from its own evidence.
pub fn view_of(nodes: &Nodes) -> View {
    let nodes = nodes.read().unwrap_or_else(PoisonError::into_inner).clone();
    let mut v = View::default();
    for (name, n) in nodes {
        let st = n.lock().unwrap_or_else(PoisonError::into_inner);
        let (sensor, ping) = st
            .tracker
            .latest()
            .map(|a| (a.opinions.sensor, a.opinions.ping))
            .unwrap_or((Opinion::Unknown, Opinion::Unknown));
        v.nodes.insert(
            name,
            NodeView {
                verdict: st.tracker.verdict().to_string(),
                sensor_fresh: sensor == Opinion::Alive,
                ping_answers: ping == Opinion::Alive,
            },
        );
    }
    v
}

/// Publishes the view every second and mirrors leadership into `/readyz`
/// and `/metrics`; warns once per episode when etcd cannot be written.
pub async fn run_views(
    parts: ClusterParts,
    nodes: Nodes,
    health: Arc<Health>,
    metrics: Arc<Metrics>,
    pager: Option<Dispatcher>,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let mut every = tokio::time::interval(VIEW_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    let page_after = (parts.leadership.config().lease_ttl * 3).max(PAGE_AFTER_AT_LEAST);
    // Since when no leader is known, and whether that episode was paged.
    let mut no_leader: Option<(tokio::time::Instant, bool)> = None;
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            _ = every.tick() => {}
        }
        let s = parts.leadership.status();
        match (s.role, no_leader.as_mut()) {
            (Role::NoQuorum, None) => no_leader = Some((tokio::time::Instant::now(), false)),
            (Role::NoQuorum, Some((since, paged))) => {
                if !*paged && since.elapsed() >= page_after {
                    *paged = true;
                    warn!(after = ?page_after, reason = %s.detail, "no decider leads: paging");
                    if let Some(p) = &pager {
                        p.dispatch(Message::NoLeader {
                            decider: s.me.clone(),
                            detail: format!(
                                "decider {} has known no leader for {} s: {}",
                                s.me,
                                since.elapsed().as_secs(),
                                s.detail
                            ),
                        });
                    }
                }
            }
            (_, Some(_)) => no_leader = None,
            (_, None) => {}
        }
        metrics
            .cluster_leader
            .set(i64::from(s.role == Role::Leader));
        metrics.cluster_term.set(s.term);
        health.cluster_seen(match (s.role, &s.leader) {
            (Role::Leader, _) => Ok(format!("this decider ({}) leads, term {}", s.me, s.term)),
            (Role::Follower, Some(l)) => Ok(format!("{l} leads, term {}", s.term)),
            _ => Err(format!(
                "no leader known: {}; with etcd unavailable no decider acts (check cluster.endpoints and `etcdctl endpoint health`)",
                s.detail
            )),
        });
        match parts.views.publish(view_of(&nodes)).await {
            Ok(()) => failing = false,
            Err(e) if !failing => {
                failing = true;
                warn!(error = %e, "cannot publish this decider's view to etcd; the leader then judges without it");
            }
            Err(_) => {}
        }
    }
}
