//! The leader loses its term at every journal write of an incident in turn
//! (before the fence, between the power-off and its confirmation,
//! mid-evacuation, …); the next leader resumes. Whatever the step: one
//! power-off, no server evacuated twice, and the deposed leader's write is
//! refused by etcd itself (its own clock still says it leads: the term in
//! the transaction is what stops it).

#[path = "support/etcd_member.rs"]
mod etcd_member;
#[path = "support/world.rs"]
mod world;

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use serde_json::{json, Value};
use vigil_cluster::{ClusterConfig, Etcd, EtcdJournal, Leadership};
use vigil_recovery::journal::{
    Event, IncidentDetail, IncidentId, IncidentStatus, IncidentSummary, InstanceRecord,
    InstanceState, Journal, JournalError, NewIncident, Phase, StepBegin, StepId, StepOutcome,
};
use vigil_recovery::time::Timestamp;
use vigil_recovery::workflow::{Mode, Trigger, WorkflowError};

fn cfg(name: &str, url: &str, prefix: &str) -> ClusterConfig {
    ClusterConfig {
        name: name.into(),
        endpoints: vec![url.into()],
        prefix: prefix.into(),
        lease_ttl: Duration::from_secs(10),
        step_down_margin: Duration::from_secs(1),
        request_timeout: Duration::from_secs(2),
        view_max_age: Duration::from_secs(5),
    }
}

async fn leads(l: &Leadership) {
    let t0 = Instant::now();
    while l.permit().is_err() {
        assert!(t0.elapsed() < Duration::from_secs(10), "no leader");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Leader A's journal; its `budget`-th write first hands the term to B:
/// A's campaign loop stops (as if A froze: its own permit stays valid on
/// its clock), the leader key is deleted, and B takes the next term.
struct Deposing {
    inner: EtcdJournal,
    budget: AtomicI64,
    a_loop: Mutex<Option<tokio::task::JoinHandle<()>>>,
    etcd: Etcd,
    key: String,
    b: Arc<Leadership>,
}

impl Deposing {
    async fn write(&self) {
        if self.budget.fetch_sub(1, Ordering::SeqCst) != 1 {
            return;
        }
        if let Some(h) = self.a_loop.lock().expect("a").take() {
            h.abort();
        }
        let key = self.key.clone();
        self.etcd
            .call("deleting the leader key", |mut c| {
                let key = key.clone();
                async move { c.delete(key, None).await }
            })
            .await
            .expect("delete");
        leads(&self.b).await;
    }
}

impl Journal for Deposing {
    fn open_incident(&self, new: NewIncident) -> BoxFuture<'_, Result<IncidentId, JournalError>> {
        Box::pin(async move {
            self.write().await;
            self.inner.open_incident(new).await
        })
    }
    fn begin_step<'a>(
        &'a self,
        incident: &'a IncidentId,
        step: StepBegin,
    ) -> BoxFuture<'a, Result<StepId, JournalError>> {
        Box::pin(async move {
            self.write().await;
            self.inner.begin_step(incident, step).await
        })
    }
    fn end_step(
        &self,
        step: StepId,
        at: Timestamp,
        outcome: StepOutcome,
        result: Value,
    ) -> BoxFuture<'_, Result<(), JournalError>> {
        Box::pin(async move {
            self.write().await;
            self.inner.end_step(step, at, outcome, result).await
        })
    }
    fn record_event<'a>(
        &'a self,
        incident: &'a IncidentId,
        event: Event,
    ) -> BoxFuture<'a, Result<(), JournalError>> {
        Box::pin(async move {
            self.write().await;
            self.inner.record_event(incident, event).await
        })
    }
    fn put_instance<'a>(
        &'a self,
        incident: &'a IncidentId,
        instance: InstanceRecord,
    ) -> BoxFuture<'a, Result<(), JournalError>> {
        Box::pin(async move {
            self.write().await;
            self.inner.put_instance(incident, instance).await
        })
    }
    fn set_phase<'a>(
        &'a self,
        incident: &'a IncidentId,
        phase: Phase,
    ) -> BoxFuture<'a, Result<(), JournalError>> {
        Box::pin(async move {
            self.write().await;
            self.inner.set_phase(incident, phase).await
        })
    }
    fn set_status<'a>(
        &'a self,
        incident: &'a IncidentId,
        status: IncidentStatus,
        reason: Option<String>,
        at: Timestamp,
    ) -> BoxFuture<'a, Result<(), JournalError>> {
        Box::pin(async move {
            self.write().await;
            self.inner.set_status(incident, status, reason, at).await
        })
    }
    fn mark_recovered<'a>(
        &'a self,
        incident: &'a IncidentId,
        boot_id: String,
        at: Timestamp,
    ) -> BoxFuture<'a, Result<(), JournalError>> {
        Box::pin(async move {
            self.write().await;
            self.inner.mark_recovered(incident, boot_id, at).await
        })
    }
    fn open_incidents(&self) -> BoxFuture<'_, Result<Vec<IncidentSummary>, JournalError>> {
        self.inner.open_incidents()
    }
    fn list(&self, limit: usize) -> BoxFuture<'_, Result<Vec<IncidentSummary>, JournalError>> {
        self.inner.list(limit)
    }
    fn latest_for_node<'a>(
        &'a self,
        node: &'a str,
    ) -> BoxFuture<'a, Result<Option<IncidentSummary>, JournalError>> {
        self.inner.latest_for_node(node)
    }
    fn get<'a>(
        &'a self,
        incident: &'a IncidentId,
    ) -> BoxFuture<'a, Result<IncidentDetail, JournalError>> {
        self.inner.get(incident)
    }
}

fn trigger() -> Trigger {
    Trigger {
        node: "c1".into(),
        evidence: json!({"sensor": "gone"}),
        boot_id: Some("b1".into()),
    }
}

#[tokio::test]
async fn a_leader_deposed_at_any_journal_write_is_replaced_without_a_second_fence_or_evacuation() {
    let e = etcd_member::etcd();
    let mut n = 1;
    loop {
        let prefix = format!("/deposed-{n}");
        let w = world::World::new(2);
        let a = Leadership::new(cfg("a", &e.url, &prefix));
        let a_loop = tokio::spawn(a.clone().run(std::future::pending()));
        leads(&a).await;
        let b = Leadership::new(cfg("b", &e.url, &prefix));
        let b_loop = tokio::spawn(b.clone().run(std::future::pending()));
        let etcd = Etcd::connect(a.config()).await.expect("etcd");
        let deposing = Arc::new(Deposing {
            inner: EtcdJournal::new(etcd.clone(), a.clone()),
            budget: AtomicI64::new(n),
            a_loop: Mutex::new(Some(a_loop)),
            etcd: etcd.clone(),
            key: a.config().leader_key(),
            b: b.clone(),
        });
        let first = w
            .recovery(deposing.clone())
            .start(&w.levels(), trigger(), Mode::Live)
            .await;
        match first {
            Ok(out) => {
                assert!(n > 20, "the workflow writes more than 20 records");
                assert_eq!(out.status, IncidentStatus::Completed);
                b_loop.abort();
                break;
            }
            Err(WorkflowError::Journal(JournalError::NotLeader { why })) => {
                assert!(
                    why.contains("is over"),
                    "deposed at write {n}: refused by etcd's compare on the term, not by A's own clock: {why}"
                );
            }
            Err(other) => panic!("deposed at write {n}: {other}"),
        }
        // B resumes what A left, as a new leader does, once it leads (a
        // concurrent write of A's may have been refused while the hand-over
        // was still under way).
        leads(&b).await;
        let jb: Arc<dyn Journal> = Arc::new(EtcdJournal::new(etcd.clone(), b.clone()));
        let r = w.recovery(jb.clone());
        let open = jb.open_incidents().await.expect("open incidents");
        let out = match open.first() {
            Some(inc) => r.resume(&w.levels(), &inc.id).await.expect("resume"),
            None => r
                .start(&w.levels(), trigger(), Mode::Live)
                .await
                .expect("start"),
        };
        assert_eq!(w.fencer.offs(), 1, "deposed at write {n}: one power-off");
        for s in ["s0", "s1"] {
            let rec = out.instances.iter().find(|i| i.server_id == s);
            let calls = w.nova.evacuate_calls(s);
            match rec.map(|r| r.state) {
                // A call journaled by A whose outcome B cannot know: B
                // never sends another (it pages).
                Some(InstanceState::Failed) => assert!(calls <= 1, "write {n}: {s}: {calls}"),
                _ => assert_eq!(calls, 1, "deposed at write {n}: one evacuate of {s}"),
            }
        }
        b_loop.abort();
        n += 1;
    }
}
