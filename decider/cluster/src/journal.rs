//! The journal in etcd, for several deciders.
//!
//! One key per incident holds the whole incident (summary, evidence, steps,
//! instances, events) as JSON, so an incident is always read as one
//! consistent record; `step/<id>` maps a step id to its incident;
//! `next-step` allocates step ids.
//!
//! **Every write is a transaction conditioned on the writer's term**: the
//! leader key's create revision must still equal the term this decider's
//! [`LeaderPermit`] names. A deposed leader (paused, partitioned, or simply
//! slower than a takeover) therefore cannot record a step, and the workflow
//! takes no step it could not record. The permit is also checked locally
//! before the request and again after the commit, so a write that committed
//! just before the lease lapsed is not followed by an action after it.
//! Reads need no term: followers serve the operator API from the same data.
//!
//! Sizes: an incident of a 100-server node is ~200 KiB, inside etcd's
//! default 1.5 MiB request limit; lists read every incident key (a cloud's
//! incidents are counted in hundreds, not millions).

use crate::etcd::{Etcd, EtcdError};
use crate::leader::{LeaderPermit, Leadership};
use etcd_client::{Compare, CompareOp, GetOptions, Txn, TxnOp, TxnOpResponse};
use futures::future::BoxFuture;
use serde_json::Value;
use std::sync::Arc;
use vigil_recovery::journal::{
    Event, IncidentDetail, IncidentId, IncidentStatus, IncidentSummary, InstanceRecord, Journal,
    JournalError, NewIncident, Phase, StepBegin, StepId, StepOutcome, StepRecord,
};
use vigil_recovery::time::Timestamp;

/// A write that raced another write of the same incident (two instance
/// tasks of one run) is tried again this many times.
const MAX_CONFLICTS: usize = 32;

pub struct EtcdJournal {
    etcd: Etcd,
    leadership: Arc<Leadership>,
    prefix: String,
    leader_key: String,
}

impl EtcdJournal {
    pub fn new(etcd: Etcd, leadership: Arc<Leadership>) -> EtcdJournal {
        let prefix = format!("{}/journal", leadership.config().prefix);
        let leader_key = leadership.config().leader_key();
        EtcdJournal {
            etcd,
            leadership,
            prefix,
            leader_key,
        }
    }

    fn incident_key(&self, id: &IncidentId) -> String {
        format!("{}/incident/{}", self.prefix, id.0)
    }
    fn step_key(&self, id: StepId) -> String {
        format!("{}/step/{id}", self.prefix)
    }
    fn counter_key(&self) -> String {
        format!("{}/next-step", self.prefix)
    }

    fn permit(&self) -> Result<LeaderPermit, JournalError> {
        self.leadership
            .permit()
            .map_err(|e| JournalError::NotLeader { why: e.to_string() })
    }

    /// Reads one key: its value and mod revision (0: absent).
    async fn read(&self, key: String) -> Result<(Option<Vec<u8>>, i64), JournalError> {
        let what = format!("reading {key}");
        let mut r = self
            .etcd
            .call(what, |mut c| {
                let key = key.clone();
                async move { c.get(key, None).await }
            })
            .await
            .map_err(store)?;
        Ok(match r.take_kvs().into_iter().next() {
            Some(kv) => {
                let rev = kv.mod_revision();
                (Some(kv.into_key_value().1), rev)
            }
            None => (None, 0),
        })
    }

    async fn read_doc(&self, id: &IncidentId) -> Result<(IncidentDetail, i64), JournalError> {
        match self.read(self.incident_key(id)).await? {
            (Some(v), rev) => Ok((decode(&v, id)?, rev)),
            (None, _) => Err(JournalError::NotFound(id.clone())),
        }
    }

    /// Commits `ops` if this decider still holds `permit`'s term and every
    /// `(key, mod_revision)` is unchanged. `Ok(false)`: a revision changed
    /// (retry); `Err(NotLeader)`: the term is gone.
    async fn commit(
        &self,
        permit: LeaderPermit,
        unchanged: Vec<(String, i64)>,
        ops: Vec<TxnOp>,
    ) -> Result<bool, JournalError> {
        let mut when = vec![Compare::create_revision(
            self.leader_key.clone(),
            CompareOp::Equal,
            permit.term,
        )];
        for (k, rev) in unchanged {
            when.push(Compare::mod_revision(k, CompareOp::Equal, rev));
        }
        let txn = Txn::new()
            .when(when)
            .and_then(ops)
            .or_else([TxnOp::get(self.leader_key.clone(), None)]);
        let r = self
            .etcd
            .call("writing the journal", |mut c| {
                let txn = txn.clone();
                async move { c.txn(txn).await }
            })
            .await
            .map_err(store)?;
        if r.succeeded() {
            // Committed; but a step is taken after this returns, so the
            // permit must still hold now, not only when the request left.
            self.permit()?;
            return Ok(true);
        }
        let leader_rev = r
            .op_responses()
            .into_iter()
            .find_map(|o| match o {
                TxnOpResponse::Get(g) => g.kvs().first().map(|kv| kv.create_revision()),
                _ => None,
            })
            .unwrap_or(0);
        if leader_rev != permit.term {
            return Err(JournalError::NotLeader {
                why: format!(
                    "the journal write was refused: term {} is over (the leader key's term is {})",
                    permit.term,
                    if leader_rev == 0 {
                        "none: nobody leads".to_string()
                    } else {
                        leader_rev.to_string()
                    }
                ),
            });
        }
        Ok(false)
    }

    /// Read-modify-write of one incident under the term.
    async fn update<R>(
        &self,
        id: &IncidentId,
        mut f: impl FnMut(&mut IncidentDetail) -> Result<R, JournalError>,
    ) -> Result<R, JournalError> {
        for _ in 0..MAX_CONFLICTS {
            let permit = self.permit()?;
            let (mut doc, rev) = self.read_doc(id).await?;
            let r = f(&mut doc)?;
            let key = self.incident_key(id);
            let ops = vec![TxnOp::put(key.clone(), encode(&doc)?, None)];
            if self.commit(permit, vec![(key, rev)], ops).await? {
                return Ok(r);
            }
        }
        Err(conflicts(id))
    }

    async fn all(&self) -> Result<Vec<IncidentDetail>, JournalError> {
        let prefix = format!("{}/incident/", self.prefix);
        let mut r = self
            .etcd
            .call("listing incidents", |mut c| {
                let prefix = prefix.clone();
                async move { c.get(prefix, Some(GetOptions::new().with_prefix())).await }
            })
            .await
            .map_err(store)?;
        r.take_kvs()
            .into_iter()
            .map(|kv| {
                let (k, v) = kv.into_key_value();
                let id = IncidentId(String::from_utf8_lossy(&k).into_owned());
                decode(&v, &id)
            })
            .collect()
    }

    async fn summaries(&self) -> Result<Vec<IncidentSummary>, JournalError> {
        let mut s: Vec<IncidentSummary> =
            self.all().await?.into_iter().map(|d| d.summary).collect();
        s.sort_by(|a, b| a.opened_at.cmp(&b.opened_at).then(a.id.cmp(&b.id)));
        Ok(s)
    }
}

fn store(e: EtcdError) -> JournalError {
    JournalError::Store {
        what: "etcd".into(),
        source: Box::new(e),
    }
}

fn conflicts(id: &IncidentId) -> JournalError {
    JournalError::Store {
        what: format!("incident {id}"),
        source: format!("{MAX_CONFLICTS} conflicting writes in a row").into(),
    }
}

fn encode(d: &IncidentDetail) -> Result<Vec<u8>, JournalError> {
    serde_json::to_vec(d).map_err(|e| JournalError::Corrupt {
        what: format!("incident {}", d.summary.id),
        detail: e.to_string(),
    })
}

fn decode(v: &[u8], id: &IncidentId) -> Result<IncidentDetail, JournalError> {
    serde_json::from_slice(v).map_err(|e| JournalError::Corrupt {
        what: format!("incident {id}"),
        detail: e.to_string(),
    })
}

impl Journal for EtcdJournal {
    fn open_incident(&self, new: NewIncident) -> BoxFuture<'_, Result<IncidentId, JournalError>> {
        Box::pin(async move {
            for _ in 0..MAX_CONFLICTS {
                let permit = self.permit()?;
                if let Some(open) = self
                    .summaries()
                    .await?
                    .into_iter()
                    .find(|s| s.node == new.node && s.closed_at.is_none())
                {
                    return Err(JournalError::AlreadyOpen {
                        node: new.node,
                        incident: open.id,
                    });
                }
                let id = IncidentId::generate();
                let doc = IncidentDetail {
                    summary: IncidentSummary {
                        id: id.clone(),
                        node: new.node.clone(),
                        status: IncidentStatus::Open,
                        phase: Phase::Opened,
                        dry_run: new.dry_run,
                        opened_at: new.opened_at,
                        closed_at: None,
                        reason: None,
                        boot_id: new.boot_id.clone(),
                        recovered_at: None,
                    },
                    evidence: new.evidence.clone(),
                    steps: vec![],
                    instances: vec![],
                    events: vec![],
                };
                let key = self.incident_key(&id);
                let ops = vec![TxnOp::put(key.clone(), encode(&doc)?, None)];
                // Absent (mod revision 0): a fresh id never collides.
                if self.commit(permit, vec![(key, 0)], ops).await? {
                    return Ok(id);
                }
            }
            Err(JournalError::Store {
                what: format!("opening an incident for {}", new.node),
                source: "conflicting writes".into(),
            })
        })
    }

    fn begin_step<'a>(
        &'a self,
        incident: &'a IncidentId,
        step: StepBegin,
    ) -> BoxFuture<'a, Result<StepId, JournalError>> {
        Box::pin(async move {
            for _ in 0..MAX_CONFLICTS {
                let permit = self.permit()?;
                let (counter, counter_rev) = self.read(self.counter_key()).await?;
                let next: StepId = counter
                    .as_deref()
                    .and_then(|v| std::str::from_utf8(v).ok())
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(1);
                let (mut doc, rev) = self.read_doc(incident).await?;
                doc.steps.push(StepRecord {
                    id: next,
                    kind: step.kind,
                    target: step.target.clone(),
                    attempt: step.attempt,
                    began_at: step.at,
                    detail: step.detail.clone(),
                    ended_at: None,
                    outcome: None,
                    result: Value::Null,
                });
                let key = self.incident_key(incident);
                let ops = vec![
                    TxnOp::put(self.counter_key(), next.saturating_add(1).to_string(), None),
                    TxnOp::put(self.step_key(next), incident.0.clone(), None),
                    TxnOp::put(key.clone(), encode(&doc)?, None),
                ];
                let unchanged = vec![(self.counter_key(), counter_rev), (key, rev)];
                if self.commit(permit, unchanged, ops).await? {
                    return Ok(next);
                }
            }
            Err(conflicts(incident))
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
            let (inc, _) = self.read(self.step_key(step)).await?;
            let Some(inc) = inc else {
                return Err(JournalError::Corrupt {
                    what: format!("step {step}"),
                    detail: "no incident records it".into(),
                });
            };
            let id = IncidentId(String::from_utf8_lossy(&inc).into_owned());
            self.update(&id, |d| {
                let s = d.steps.iter_mut().find(|s| s.id == step).ok_or_else(|| {
                    JournalError::Corrupt {
                        what: format!("step {step}"),
                        detail: format!("not in incident {id}"),
                    }
                })?;
                s.ended_at = Some(at);
                s.outcome = Some(outcome);
                s.result = result.clone();
                Ok(())
            })
            .await
        })
    }

    fn record_event<'a>(
        &'a self,
        incident: &'a IncidentId,
        event: Event,
    ) -> BoxFuture<'a, Result<(), JournalError>> {
        Box::pin(async move {
            self.update(incident, |d| {
                d.events.push(event.clone());
                Ok(())
            })
            .await
        })
    }

    fn put_instance<'a>(
        &'a self,
        incident: &'a IncidentId,
        instance: InstanceRecord,
    ) -> BoxFuture<'a, Result<(), JournalError>> {
        Box::pin(async move {
            self.update(incident, |d| {
                match d
                    .instances
                    .iter_mut()
                    .find(|i| i.server_id == instance.server_id)
                {
                    Some(i) => *i = instance.clone(),
                    None => d.instances.push(instance.clone()),
                }
                Ok(())
            })
            .await
        })
    }

    fn set_phase<'a>(
        &'a self,
        incident: &'a IncidentId,
        phase: Phase,
    ) -> BoxFuture<'a, Result<(), JournalError>> {
        Box::pin(async move {
            self.update(incident, |d| {
                d.summary.phase = phase;
                Ok(())
            })
            .await
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
            self.update(incident, |d| {
                d.summary.status = status;
                if let Some(r) = &reason {
                    d.summary.reason = Some(r.clone());
                }
                d.summary.closed_at = if status.is_open() { None } else { Some(at) };
                Ok(())
            })
            .await
        })
    }

    fn mark_recovered<'a>(
        &'a self,
        incident: &'a IncidentId,
        boot_id: String,
        at: Timestamp,
    ) -> BoxFuture<'a, Result<(), JournalError>> {
        Box::pin(async move {
            // The new boot id is in the workflow's own "node-back" event.
            drop(boot_id);
            self.update(incident, |d| {
                if d.summary.recovered_at.is_none() {
                    d.summary.recovered_at = Some(at);
                }
                Ok(())
            })
            .await
        })
    }

    fn open_incidents(&self) -> BoxFuture<'_, Result<Vec<IncidentSummary>, JournalError>> {
        Box::pin(async move {
            Ok(self
                .summaries()
                .await?
                .into_iter()
                .filter(|s| s.closed_at.is_none())
                .collect())
        })
    }

    fn list(&self, limit: usize) -> BoxFuture<'_, Result<Vec<IncidentSummary>, JournalError>> {
        Box::pin(async move {
            let mut s = self.summaries().await?;
            s.reverse();
            s.truncate(limit);
            Ok(s)
        })
    }

    fn latest_for_node<'a>(
        &'a self,
        node: &'a str,
    ) -> BoxFuture<'a, Result<Option<IncidentSummary>, JournalError>> {
        Box::pin(async move {
            Ok(self
                .summaries()
                .await?
                .into_iter()
                .rfind(|s| s.node == node))
        })
    }

    fn get<'a>(
        &'a self,
        incident: &'a IncidentId,
    ) -> BoxFuture<'a, Result<IncidentDetail, JournalError>> {
        Box::pin(async move { Ok(self.read_doc(incident).await?.0) })
    }
}
