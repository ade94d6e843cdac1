//! One leader among several deciders: an etcd lease and a key.
//!
//! Each decider holds a lease of `lease_ttl` and keeps it alive. The leader
//! is whoever created `{prefix}/leader` (attached to its lease) while the key
//! was absent; the key's create revision is the leader's **term**, a number
//! that only grows. When the leader's lease expires (it died, froze, or lost
//! etcd), etcd deletes the key and the next decider to try creates it with a
//! higher term.
//!
//! ## When the leader stops acting, and why the margin
//! etcd counts a lease's TTL from when *it* received the grant or the last
//! keep-alive, which is after this decider sent it; and a new etcd leader
//! extends every lease rather than shorten it. So `sent + TTL` (this decider's
//! monotonic clock) is never later than the moment etcd could expire the
//! lease and a new leader could begin. [`Leadership::permit`] answers "yes"
//! only before `sent + TTL − step_down_margin`: the margin covers the rate
//! difference of two clocks over one TTL (parts per million) and, mostly, the
//! time between a permit and the request it guards leaving this machine (a
//! scheduling delay, not a pause: a paused decider finds its permit expired
//! when it wakes, because the check reads the monotonic clock then). Default
//! 1 s on a 5 s TTL.
//!
//! No permit is ever given from a remembered state: it is computed from the
//! clock at the moment it is asked for. The journal also conditions every
//! write on the term in etcd itself (`journal.rs`), so a decider whose permit
//! check raced a takeover still cannot record, and so cannot take, a step.

use crate::config::ClusterConfig;
use crate::etcd::{Etcd, EtcdError};
use etcd_client::{Compare, CompareOp, PutOptions, Txn, TxnOp, TxnOpResponse};
use serde::{Deserialize, Serialize};
use std::convert::Infallible;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use thiserror::Error;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{debug, info, warn};

/// What the leader key holds.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct LeaderRecord {
    pub name: String,
    /// When it took the term (its wall clock, for people).
    pub since_unix_ms: i64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// This decider leads and may act (while its permit holds).
    Leader,
    /// Another decider leads.
    Follower,
    /// etcd cannot be reached or has no quorum: nobody known to lead; this
    /// decider acts on nothing.
    NoQuorum,
}

/// Who leads, as this decider knows it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Status {
    /// This decider's name.
    pub me: String,
    pub role: Role,
    /// The leader's name, when known.
    pub leader: Option<String>,
    /// The leader's term (0: unknown).
    pub term: i64,
    /// When the leader took the term (unix ms; 0: unknown).
    pub since_unix_ms: i64,
    /// Why there is no quorum, or the last error.
    pub detail: String,
}

/// Proof, at the moment it was made, that this decider led in `term`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaderPermit {
    pub term: i64,
}

#[derive(Debug, Error, Clone, PartialEq)]
pub enum NotLeader {
    #[error("{leader} leads (term {term})")]
    Follower { leader: String, term: i64 },
    #[error("leadership in term {term} lapsed: the lease was last renewed too long ago to be sure it is still held")]
    Lapsed { term: i64 },
    #[error("etcd has no quorum or cannot be reached: {0}")]
    NoQuorum(String),
}

#[derive(Clone, Copy)]
struct Held {
    term: i64,
    /// Permits are given before this (monotonic).
    valid_until: Instant,
}

pub struct Leadership {
    cfg: ClusterConfig,
    status: watch::Sender<Status>,
    held: Mutex<Option<Held>>,
}

impl Leadership {
    pub fn new(cfg: ClusterConfig) -> Arc<Leadership> {
        let (status, _) = watch::channel(Status {
            me: cfg.name.clone(),
            role: Role::NoQuorum,
            leader: None,
            term: 0,
            since_unix_ms: 0,
            detail: "not connected to etcd yet".into(),
        });
        Arc::new(Leadership {
            cfg,
            status,
            held: Mutex::new(None),
        })
    }

    pub fn name(&self) -> &str {
        &self.cfg.name
    }

    pub fn config(&self) -> &ClusterConfig {
        &self.cfg
    }

    /// The leadership permit: `Ok` only if this decider leads and its lease
    /// is certainly still held now (see the module doc).
    pub fn permit(&self) -> Result<LeaderPermit, NotLeader> {
        let held = *self.held.lock().unwrap_or_else(PoisonError::into_inner);
        match held {
            Some(h) if Instant::now() < h.valid_until => Ok(LeaderPermit { term: h.term }),
            Some(h) => Err(NotLeader::Lapsed { term: h.term }),
            None => {
                let s = self.status.borrow();
                Err(match (&s.role, &s.leader) {
                    (Role::Follower, Some(l)) => NotLeader::Follower {
                        leader: l.clone(),
                        term: s.term,
                    },
                    _ => NotLeader::NoQuorum(s.detail.clone()),
                })
            }
        }
    }

    pub fn status(&self) -> Status {
        let mut s = self.status.borrow().clone();
        // A lapsed lease is not leadership, whatever the loop last saw.
        if s.role == Role::Leader && self.permit().is_err() {
            s.role = Role::NoQuorum;
            s.detail = "the lease could not be renewed in time".into();
        }
        s
    }

    pub fn subscribe(&self) -> watch::Receiver<Status> {
        self.status.subscribe()
    }

    fn set(&self, f: impl FnOnce(&mut Status)) {
        self.status.send_if_modified(|s| {
            let before = s.clone();
            f(s);
            *s != before
        });
    }

    fn lose(&self, detail: String) {
        let was = self
            .held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(h) = was {
            warn!(term = h.term, reason = %detail, "leadership lost: acting on nothing from now");
        }
        self.set(|s| {
            s.role = Role::NoQuorum;
            s.leader = None;
            s.detail = detail;
        });
    }

    /// Campaigns and holds the lease until `shutdown`; then resigns (the
    /// lease is revoked so a peer takes over at once, not a TTL later).
    pub async fn run(self: Arc<Self>, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut lease: Option<i64> = None;
        let mut etcd: Option<Etcd> = None;
        loop {
            let term = async {
                let e = match &etcd {
                    Some(e) => e.clone(),
                    None => {
                        let e = Etcd::connect(&self.cfg).await?;
                        etcd = Some(e.clone());
                        e
                    }
                };
                self.hold(&e, &mut lease).await
            };
            tokio::select! {
                _ = &mut shutdown => break,
                r = term => {
                    let Err(e) = r;
                    self.lose(e.to_string());
                    // A fresh lease next time: this one may have expired.
                    lease = None;
                }
            }
            tokio::select! {
                _ = &mut shutdown => break,
                _ = tokio::time::sleep(self.round()) => {}
            }
        }
        self.held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let (Some(id), Some(e)) = (lease, etcd) {
            let r = e
                .call("revoking the leader lease", |mut c| async move {
                    c.lease_revoke(id).await
                })
                .await;
            match r {
                Ok(_) => info!("resigned: lease revoked, a peer can lead at once"),
                Err(e) => {
                    warn!(error = %e, "could not revoke the lease; a peer leads after it expires")
                }
            }
        }
        self.set(|s| {
            s.role = Role::NoQuorum;
            s.leader = None;
            s.detail = "stopped".into();
        });
    }

    fn round(&self) -> Duration {
        (self.cfg.lease_ttl / 4).min(Duration::from_millis(500))
    }

    /// Holds one lease: grants it, then every round renews it and campaigns
    /// (or confirms the term). Returns only on an error.
    async fn hold(&self, etcd: &Etcd, lease: &mut Option<i64>) -> Result<Infallible, EtcdError> {
        let ttl = self.cfg.lease_ttl;
        let ttl_secs = i64::try_from(ttl.as_secs()).unwrap_or(60);
        let sent = Instant::now();
        let id = etcd
            .call("granting the leader lease", |mut c| async move {
                c.lease_grant(ttl_secs, None).await
            })
            .await?
            .id();
        *lease = Some(id);
        // Until `renewed + ttl` etcd cannot have expired the lease, so a
        // failed request (one member down, a slow election) is tried again
        // in the next round rather than giving the term up; the permit
        // lapses on its own if no renewal succeeds in time.
        let mut renewed = sent;
        let mut alive = None;
        let mut last: Option<EtcdError> = None;
        let key = self.cfg.leader_key();
        loop {
            if Instant::now() >= renewed + ttl {
                return Err(last.unwrap_or(EtcdError::Timeout {
                    what: "renewing the leader lease".into(),
                    timeout: ttl,
                }));
            }
            if let Err(e) = self.campaign(etcd, &key, id, renewed).await {
                debug!(error = %e, "a campaign round failed; trying again next round");
            }
            tokio::time::sleep(self.round()).await;
            let sent = Instant::now();
            match self.renew(etcd, id, &mut alive).await {
                Ok(left) if left > 0 => {
                    renewed = sent;
                    last = None;
                }
                Ok(_) => {
                    return Err(EtcdError::Failed {
                        what: "renewing the leader lease".into(),
                        source: etcd_client::Error::LeaseKeepAliveError(
                            "the lease expired (this decider was paused or cut off for longer than lease_ttl)".into(),
                        ),
                    })
                }
                Err(e) => {
                    // A broken keep-alive stream is opened anew next round.
                    alive = None;
                    last = Some(e);
                }
            }
        }
    }

    /// One keep-alive round trip; the lease's remaining TTL (0: expired).
    async fn renew(
        &self,
        etcd: &Etcd,
        id: i64,
        alive: &mut Option<(etcd_client::LeaseKeeper, etcd_client::LeaseKeepAliveStream)>,
    ) -> Result<i64, EtcdError> {
        let (keeper, stream) = match alive {
            Some(a) => a,
            None => alive.insert(
                etcd.call("opening the lease keep-alive", |mut c| async move {
                    c.lease_keep_alive(id).await
                })
                .await?,
            ),
        };
        let what = "renewing the leader lease";
        tokio::time::timeout(etcd.timeout, async {
            keeper.keep_alive().await?;
            stream.message().await
        })
        .await
        .map_err(|_| EtcdError::Timeout {
            what: what.into(),
            timeout: etcd.timeout,
        })?
        .map_err(|source| EtcdError::Failed {
            what: what.into(),
            source,
        })
        .map(|r| r.map(|r| r.ttl()).unwrap_or(0))
    }

    /// Creates the leader key if absent; otherwise reads who holds it.
    async fn campaign(
        &self,
        etcd: &Etcd,
        key: &str,
        lease: i64,
        renewed: Instant,
    ) -> Result<(), EtcdError> {
        let record = LeaderRecord {
            name: self.cfg.name.clone(),
            since_unix_ms: unix_ms_now(),
        };
        let value = serde_json::to_vec(&record).unwrap_or_default();
        let txn = Txn::new()
            .when([Compare::create_revision(key, CompareOp::Equal, 0)])
            .and_then([TxnOp::put(
                key,
                value,
                Some(PutOptions::new().with_lease(lease)),
            )])
            .or_else([TxnOp::get(key, None)]);
        let resp = etcd
            .call("campaigning for leader", |mut c| {
                let txn = txn.clone();
                async move { c.txn(txn).await }
            })
            .await?;
        let valid_until = renewed + self.cfg.lease_ttl - self.cfg.step_down_margin;
        if resp.succeeded() {
            let term = resp.header().map(|h| h.revision()).unwrap_or(0);
            self.lead(term, record.since_unix_ms, valid_until);
            return Ok(());
        }
        let kv = resp.op_responses().into_iter().find_map(|r| match r {
            TxnOpResponse::Get(g) => g.kvs().first().cloned(),
            _ => None,
        });
        let Some(kv) = kv else {
            // Deleted between the compare and the get: campaign next round.
            return Ok(());
        };
        let term = kv.create_revision();
        // Bounded: a key Vigil writes is ~60 bytes; garbage is not a leader.
        let holder: Option<LeaderRecord> = (kv.value().len() <= 4096)
            .then(|| serde_json::from_slice(kv.value()).ok())
            .flatten();
        if kv.lease() == lease {
            let since = holder.map(|h| h.since_unix_ms).unwrap_or(0);
            self.lead(term, since, valid_until);
        } else if holder.as_ref().is_some_and(|h| h.name == self.cfg.name) {
            // Our own earlier term, on a lease this process no longer
            // holds (it lost etcd, or it is a restart of this decider): it
            // acts under no permit, so the key is released at once rather
            // than a TTL later. Guarded: only that exact key version.
            let txn = Txn::new()
                .when([Compare::mod_revision(
                    key,
                    CompareOp::Equal,
                    kv.mod_revision(),
                )])
                .and_then([TxnOp::delete(key, None)]);
            etcd.call("releasing this decider's earlier term", |mut c| {
                let txn = txn.clone();
                async move { c.txn(txn).await }
            })
            .await?;
            info!(
                term,
                "released this decider's earlier term; campaigning again"
            );
        } else {
            let was = self
                .held
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take();
            if let Some(h) = was {
                warn!(
                    term = h.term,
                    new_term = term,
                    "leadership lost to another decider"
                );
            }
            let (name, since) = match holder {
                Some(h) => (h.name, h.since_unix_ms),
                None => ("(unreadable leader record)".to_string(), 0),
            };
            self.set(|s| {
                if s.role != Role::Follower || s.term != term {
                    info!(leader = %name, term, "following");
                }
                s.role = Role::Follower;
                s.leader = Some(name);
                s.term = term;
                s.since_unix_ms = since;
                s.detail = String::new();
            });
        }
        Ok(())
    }

    fn lead(&self, term: i64, since: i64, valid_until: Instant) {
        {
            let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
            let new = held.map(|h| h.term) != Some(term);
            *held = Some(Held { term, valid_until });
            if new {
                info!(term, "leading: this decider acts from now");
            }
        }
        let me = self.cfg.name.clone();
        self.set(|s| {
            s.role = Role::Leader;
            s.leader = Some(me);
            s.term = term;
            s.since_unix_ms = since;
            s.detail = String::new();
        });
    }
}

pub fn unix_ms_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
