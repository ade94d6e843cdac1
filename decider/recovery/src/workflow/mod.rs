//! The recovery workflow for one incident, as a journaled state machine:
//!
//! self-check → maintenance check → disable service (reason names the
//! incident) → fence levels → confirm off → `forced_down` → reserved spare
//! (enable, aggregates) → select instances → evacuate (priority order,
//! bounded concurrency) → verify each → notify → close.
//!
//! Every step is journaled before and after it runs (safety rule 7).
//! [`Recovery::resume`] continues an incident from the journal and Nova's live
//! state: a node confirmed off is never fenced again, an instance that moved or
//! is moving is never evacuated again. In dry-run every call that would change
//! something is journaled with outcome `dry-run` and not made (Nova reads
//! still happen: they decide what would be done). Anything unsafe or failed
//! ends in `needs-attention` with a page.
//!
//! The I/O edges are traits: [`NovaActions`], [`crate::fence::Fencer`],
//! [`crate::journal::Journal`], [`crate::notify::Notifier`],
//! [`crate::time::Clock`], [`SelfCheck`].

mod evacuate;
mod fence_step;
pub mod guards;
pub mod kdump;
pub mod nova;
pub mod picture;
pub mod reset_gate;
pub mod select;

/// In-memory fakes of the workflow's edges, for this crate's tests and, with
/// the `testing` feature, the decider's in-process tests.
#[cfg(any(test, feature = "testing"))]
pub mod fakes;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use serde_json::{json, Value};
use tokio::task::JoinHandle;
use tracing::{info, instrument, warn};

pub use fence_step::ConfirmedFence;
pub use guards::{Admission, Guards, SelfCheck};
pub use kdump::{KdumpSource, KdumpWatch};
pub use nova::*;

use crate::config::{EvacuationPolicy, RecoveryConfig};
use crate::fence::{error_chain, FenceLevel};
use crate::journal::{
    Event, IncidentDetail, IncidentId, IncidentStatus, InstanceRecord, InstanceState, Journal,
    JournalError, NewIncident, Phase, StepBegin, StepId, StepKind, StepOutcome,
    OPERATOR_CONFIRMED_OFF,
};
use crate::notify::{Delivery, Dispatcher, InstanceReport, Message};
use crate::time::{Clock, Timestamp};

/// The I/O edges of the workflow.
#[derive(Clone)]
pub struct Edges {
    pub nova: Arc<dyn NovaActions>,
    pub journal: Arc<dyn Journal>,
    pub notify: Dispatcher,
    pub clock: Arc<dyn Clock>,
    pub self_check: Arc<dyn SelfCheck>,
}

/// The policy parts of the config the workflow reads.
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    pub evacuation: EvacuationPolicy,
    pub accept_storage_fence_alone: bool,
    pub confirm_poll_interval: Duration,
    pub reenable_after_recovery: bool,
}

impl From<&RecoveryConfig> for Settings {
    fn from(c: &RecoveryConfig) -> Self {
        Settings {
            evacuation: c.evacuation.clone(),
            accept_storage_fence_alone: c.fencing.accept_storage_fence_alone,
            confirm_poll_interval: c.fencing.confirm_poll_interval,
            reenable_after_recovery: c.reenable_after_recovery,
        }
    }
}

/// Whether calls are made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Live,
    /// Journal every call that would be made; make none.
    DryRun,
}

/// What started the incident: the verdict and its evidence.
#[derive(Clone, Debug, PartialEq)]
pub struct Trigger {
    pub node: String,
    /// The evidence at decision time (stored as is).
    pub evidence: Value,
    /// The node's boot id as last seen.
    pub boot_id: Option<String>,
}

/// How a run of the workflow ended.
#[derive(Debug)]
pub struct Outcome {
    pub incident: IncidentId,
    pub status: IncidentStatus,
    pub reason: Option<String>,
    pub instances: Vec<InstanceRecord>,
    /// Notifications still being delivered in the background.
    pub notifications: Vec<JoinHandle<Delivery>>,
}

/// Why the workflow stopped without finishing. Only journal failures stop it:
/// everything else is an outcome recorded in the incident.
#[derive(Debug, thiserror::Error)]
pub enum WorkflowError {
    /// A step could not be journaled, so it was not taken; resume later.
    #[error("recovery stopped: cannot journal")]
    Journal(#[from] JournalError),
}

/// The recovery workflow with its edges and settings.
#[derive(Clone)]
pub struct Recovery {
    pub edges: Edges,
    pub settings: Settings,
    /// The live kdump messages; `None`: incidents decided on the kdump fast
    /// path are fenced by power-off like any other.
    pub kdump: Option<KdumpWatch>,
}

/// What every disable reason Vigil writes starts with. The decider's policy
/// (`policy.maintenance.vigil_reason_prefix`, default `"vigil:"`) reads a
/// disabled service with this prefix as Vigil's own doing, not an operator's
/// maintenance; without it a node Vigil disabled would turn `maintenance`.
pub const DISABLE_REASON_PREFIX: &str = "vigil:";

/// The disable reason Vigil writes for `incident`; a disabled service whose
/// reason is not this incident's is an operator's maintenance (safety rule 5).
pub fn disable_reason(incident: &IncidentId) -> String {
    format!("{DISABLE_REASON_PREFIX} incident {incident}: node judged dead, recovery in progress")
}

/// One run of one incident.
pub(crate) struct Run<'a> {
    r: &'a Recovery,
    id: IncidentId,
    node: String,
    dry_run: bool,
    opened_at: Timestamp,
    /// When this run (not the incident) started: what this decider heard
    /// before it is unknown to it.
    started_at: Timestamp,
    /// Messages queued in this run.
    notifications: std::sync::Mutex<Vec<JoinHandle<Delivery>>>,
}

impl Recovery {
    pub fn new(edges: Edges, settings: Settings) -> Self {
        Recovery {
            edges,
            settings,
            kdump: None,
        }
    }

    /// Takes the kdump path for incidents decided on it (see [`kdump`]).
    pub fn with_kdump(mut self, watch: Option<KdumpWatch>) -> Self {
        self.kdump = watch;
        self
    }

    /// Opens an incident for a dead node and runs it. The caller has asked
    /// [`Guards::admit`] first.
    pub async fn start(
        &self,
        levels: &[FenceLevel],
        trigger: Trigger,
        mode: Mode,
    ) -> Result<Outcome, WorkflowError> {
        let id = self
            .edges
            .journal
            .open_incident(NewIncident {
                node: trigger.node.clone(),
                opened_at: self.edges.clock.now(),
                dry_run: mode == Mode::DryRun,
                evidence: trigger.evidence.clone(),
                boot_id: trigger.boot_id.clone(),
            })
            .await?;
        info!(incident = %id, node = %trigger.node, dry_run = mode == Mode::DryRun, "incident opened");
        self.resume(levels, &id).await
    }

    /// Runs (or continues) an incident from its journal. Closed incidents are
    /// returned as they are; a needs-attention one continues only once an
    /// operator has confirmed the node off.
    pub async fn resume(
        &self,
        levels: &[FenceLevel],
        id: &IncidentId,
    ) -> Result<Outcome, WorkflowError> {
        let d = self.edges.journal.get(id).await?;
        let run = Run {
            r: self,
            id: id.clone(),
            node: d.summary.node.clone(),
            dry_run: d.summary.dry_run,
            opened_at: d.summary.opened_at,
            started_at: self.edges.clock.now(),
            notifications: std::sync::Mutex::new(Vec::new()),
        };
        let (status, reason) = run.drive(d, levels).await?;
        let instances = self.edges.journal.get(id).await?.instances;
        let notifications = run
            .notifications
            .lock()
            .map(|mut v| std::mem::take(&mut *v))
            .unwrap_or_default();
        Ok(Outcome {
            incident: id.clone(),
            status,
            reason,
            instances,
            notifications,
        })
    }

    /// Records an operator's confirmation that `incident`'s node is off; a
    /// later [`Recovery::resume`] then continues past the fence.
    pub async fn confirm_off_by_operator(
        &self,
        incident: &IncidentId,
        who: &str,
        note: &str,
    ) -> Result<(), JournalError> {
        self.edges
            .journal
            .record_event(
                incident,
                Event {
                    at: self.edges.clock.now(),
                    kind: OPERATOR_CONFIRMED_OFF.into(),
                    message: format!("{who}: {note}"),
                    detail: json!({"who": who, "note": note}),
                },
            )
            .await
    }

    /// The node reported a boot id. A different one than at decision time,
    /// after the fence, means it came back: mark the incident `recovered`. If
    /// the incident is already complete and policy says so, re-enable the
    /// service now; otherwise it stays disabled and forced down.
    pub async fn node_booted(
        &self,
        node: &str,
        boot_id: &str,
    ) -> Result<Option<IncidentId>, WorkflowError> {
        let j = &self.edges.journal;
        let Some(last) = j.latest_for_node(node).await? else {
            return Ok(None);
        };
        if last.dry_run || last.recovered_at.is_some() || last.boot_id.as_deref() == Some(boot_id) {
            return Ok(None);
        }
        let d = j.get(&last.id).await?;
        let fenced = d
            .steps
            .iter()
            .any(|s| s.kind == StepKind::ConfirmOff && s.outcome == Some(StepOutcome::Ok))
            || d.events_of(OPERATOR_CONFIRMED_OFF).next().is_some();
        if !fenced {
            return Ok(None);
        }
        let now = self.edges.clock.now();
        j.mark_recovered(&last.id, boot_id.to_string(), now).await?;
        j.record_event(
            &last.id,
            Event {
                at: now,
                kind: "node-recovered".into(),
                message: format!("{node} is back with boot id {boot_id}"),
                detail: json!({"boot_id": boot_id}),
            },
        )
        .await?;
        info!(incident = %last.id, node, boot_id, "node recovered");
        if last.status == IncidentStatus::Completed {
            let run = Run {
                r: self,
                id: last.id.clone(),
                node: node.to_string(),
                dry_run: false,
                opened_at: last.opened_at,
                started_at: now,
                notifications: std::sync::Mutex::new(Vec::new()),
            };
            run.reenable_if_policy(true).await?;
        }
        Ok(Some(last.id))
    }
}

impl<'a> Run<'a> {
    fn clock(&self) -> &dyn Clock {
        self.r.edges.clock.as_ref()
    }

    fn journal(&self) -> &dyn Journal {
        self.r.edges.journal.as_ref()
    }

    async fn begin(
        &self,
        kind: StepKind,
        target: &str,
        attempt: u32,
        detail: Value,
    ) -> Result<StepId, WorkflowError> {
        Ok(self
            .journal()
            .begin_step(
                &self.id,
                StepBegin {
                    kind,
                    target: target.to_string(),
                    attempt,
                    at: self.clock().now(),
                    detail,
                },
            )
            .await?)
    }

    async fn end(
        &self,
        step: StepId,
        outcome: StepOutcome,
        result: Value,
    ) -> Result<(), WorkflowError> {
        Ok(self
            .journal()
            .end_step(step, self.clock().now(), outcome, result)
            .await?)
    }

    async fn event(&self, kind: &str, message: String, detail: Value) -> Result<(), WorkflowError> {
        Ok(self
            .journal()
            .record_event(
                &self.id,
                Event {
                    at: self.clock().now(),
                    kind: kind.into(),
                    message,
                    detail,
                },
            )
            .await?)
    }

    async fn put(&self, rec: &InstanceRecord) -> Result<(), WorkflowError> {
        Ok(self.journal().put_instance(&self.id, rec.clone()).await?)
    }

    /// Runs `fut` until it finishes or `d` passes on the workflow's clock.
    async fn with_deadline<T>(
        &self,
        d: Duration,
        fut: impl std::future::Future<Output = T>,
    ) -> Option<T> {
        tokio::select! {
            biased;
            v = fut => Some(v),
            () = self.clock().sleep(d) => None,
        }
    }

    fn microversion_of(&self, rec: &InstanceRecord) -> Microversion {
        let expected = if rec.expected == "SHUTOFF" {
            ServerStatus::Shutoff
        } else {
            ServerStatus::Active
        };
        select::microversion_for(
            &expected,
            &self.r.settings.evacuation,
            self.r.edges.nova.max_microversion(),
        )
    }

    /// Sends a message in the background, once per incident and kind: the
    /// journaled Notify step makes a resumed run skip what was already sent.
    async fn notify(&self, d: &IncidentDetail, message: Message) -> Result<(), WorkflowError> {
        let kind = message.kind();
        if d.steps_of(StepKind::Notify, kind)
            .any(|s| s.outcome.is_some())
        {
            return Ok(());
        }
        let s = self
            .begin(StepKind::Notify, kind, 1, json!({"message": message}))
            .await?;
        if self.dry_run && !matches!(message, Message::NeedsAttention { .. }) {
            return self.end(s, StepOutcome::DryRun, json!(null)).await;
        }
        let handles = self.r.edges.notify.dispatch(message);
        if let Ok(mut v) = self.notifications.lock() {
            v.extend(handles);
        }
        // "Queued": delivery is recorded by the dispatcher when it ends.
        self.end(s, StepOutcome::Ok, json!({"queued": true})).await
    }

    async fn needs_attention(
        &self,
        reason: String,
    ) -> Result<(IncidentStatus, Option<String>), WorkflowError> {
        warn!(incident = %self.id, node = %self.node, reason = %reason, "needs attention");
        let instances = self
            .journal()
            .get(&self.id)
            .await?
            .instances
            .iter()
            .map(report)
            .collect();
        self.journal()
            .set_status(
                &self.id,
                IncidentStatus::NeedsAttention,
                Some(reason.clone()),
                self.clock().now(),
            )
            .await?;
        let msg = Message::NeedsAttention {
            incident: self.id.clone(),
            node: self.node.clone(),
            reason: reason.clone(),
            instances,
        };
        // A page for every needs-attention, even when an earlier run paged for
        // a different reason: read the journal fresh, not the snapshot.
        let fresh = self.journal().get(&self.id).await?;
        if fresh
            .steps_of(StepKind::Notify, "needs-attention")
            .any(|s| {
                s.detail.pointer("/message/reason").and_then(Value::as_str) == Some(reason.as_str())
            })
        {
            return Ok((IncidentStatus::NeedsAttention, Some(reason)));
        }
        let s = self
            .begin(
                StepKind::Notify,
                "needs-attention",
                1,
                json!({"message": msg}),
            )
            .await?;
        let handles = self.r.edges.notify.dispatch(msg);
        if let Ok(mut v) = self.notifications.lock() {
            v.extend(handles);
        }
        self.end(s, StepOutcome::Ok, json!({"queued": true}))
            .await?;
        Ok((IncidentStatus::NeedsAttention, Some(reason)))
    }

    async fn abort(
        &self,
        reason: String,
    ) -> Result<(IncidentStatus, Option<String>), WorkflowError> {
        warn!(incident = %self.id, node = %self.node, reason = %reason, "recovery refused");
        self.event("aborted", reason.clone(), json!(null)).await?;
        self.journal().set_phase(&self.id, Phase::Closed).await?;
        self.journal()
            .set_status(
                &self.id,
                IncidentStatus::Aborted,
                Some(reason.clone()),
                self.clock().now(),
            )
            .await?;
        Ok((IncidentStatus::Aborted, Some(reason)))
    }

    fn did(d: &IncidentDetail, kind: StepKind) -> bool {
        d.steps.iter().any(|s| {
            s.kind == kind && matches!(s.outcome, Some(StepOutcome::Ok) | Some(StepOutcome::DryRun))
        })
    }

    #[instrument(skip_all, fields(workflow = %self.id, node = %self.node))]
    async fn drive(
        &self,
        d: IncidentDetail,
        levels: &[FenceLevel],
    ) -> Result<(IncidentStatus, Option<String>), WorkflowError> {
        let nova = self.r.edges.nova.clone();
        match d.summary.status {
            IncidentStatus::Open => {}
            IncidentStatus::NeedsAttention
                if d.events_of(OPERATOR_CONFIRMED_OFF).next().is_some()
                    && !Self::did(&d, StepKind::ConfirmOff)
                    && !d.instances.iter().any(|i| i.state == InstanceState::Failed) =>
            {
                // The operator confirmed the node off: go on from the fence.
                self.journal()
                    .set_status(&self.id, IncidentStatus::Open, None, self.clock().now())
                    .await?;
            }
            s => return Ok((s, d.summary.reason.clone())),
        }
        let acted = Self::did(&d, StepKind::DisableService);

        // Self-check before the first action: a decider that cannot see Nova
        // or its reference addresses must not trust its own verdicts.
        if !acted {
            let s = self
                .begin(StepKind::SelfCheck, "decider", 1, json!(null))
                .await?;
            if let Err(why) = self.r.edges.self_check.check().await {
                self.end(s, StepOutcome::Failed, json!({"error": why}))
                    .await?;
                let reason = format!("self-check failed: {why}; not acting on {}", self.node);
                let (st, r) = self.abort(reason.clone()).await?;
                self.page_only(reason).await?;
                return Ok((st, r));
            }
            self.end(s, StepOutcome::Ok, json!(null)).await?;
            self.notify(
                &d,
                Message::IncidentOpened {
                    incident: self.id.clone(),
                    node: self.node.clone(),
                    dry_run: self.dry_run,
                    evidence: d.evidence.clone(),
                },
            )
            .await?;
        }

        // Safety rule 5: a service disabled by someone else is maintenance.
        let service = match nova.compute_service(&self.node).await {
            Ok(s) => s,
            Err(e) if !acted => {
                return self
                    .abort(format!(
                        "cannot read {}'s nova-compute service: {}",
                        self.node,
                        error_chain(&e)
                    ))
                    .await
            }
            Err(e) => {
                return self
                    .needs_attention(format!(
                        "cannot read {}'s nova-compute service: {}",
                        self.node,
                        error_chain(&e)
                    ))
                    .await
            }
        };
        let ours = disable_reason(&self.id);
        if !service.enabled && service.disabled_reason.as_deref() != Some(ours.as_str()) {
            if acted {
                return self
                    .needs_attention(format!(
                        "{}'s service was disabled by someone else during recovery ({:?})",
                        self.node, service.disabled_reason
                    ))
                    .await;
            }
            return self
                .abort(format!(
                    "{} is in maintenance (service disabled: {:?}); never acted on",
                    self.node,
                    service.disabled_reason.unwrap_or_default()
                ))
                .await;
        }

        // Disable first, so the scheduler stops placing on the node.
        if !acted || service.enabled {
            let s = self
                .begin(
                    StepKind::DisableService,
                    &self.node,
                    1,
                    json!({"service_id": service.id, "reason": ours}),
                )
                .await?;
            if self.dry_run {
                self.end(s, StepOutcome::DryRun, json!(null)).await?;
            } else if let Err(e) = nova.disable_service(&service, &ours).await {
                let e = error_chain(&e);
                self.end(s, StepOutcome::Failed, json!({"error": e}))
                    .await?;
                return self
                    .needs_attention(format!("cannot disable {}'s service: {e}", self.node))
                    .await;
            } else {
                self.end(s, StepOutcome::Ok, json!(null)).await?;
            }
        }

        // Fence, then confirm (safety rule 1).
        self.journal().set_phase(&self.id, Phase::Fencing).await?;
        let fence = match self.fence(&d, levels).await? {
            fence_step::FenceResult::Confirmed(c) => Some(c),
            fence_step::FenceResult::DryRun => None,
            fence_step::FenceResult::Failed(why) => {
                return self
                    .needs_attention(format!("{why}. No instance was evacuated. Check the BMC, or power the node off by hand and confirm with the operator API"))
                    .await;
            }
        };
        self.journal().set_phase(&self.id, Phase::Fenced).await?;
        if let Some(c) = &fence {
            self.notify(
                &d,
                Message::NodeFenced {
                    incident: self.id.clone(),
                    node: self.node.clone(),
                    how: c.how().to_string(),
                },
            )
            .await?;
        }

        // forced_down: Nova then lets evacuations start at once instead of
        // after service_down_time (lab: 400 "still in use" otherwise).
        if !Self::did(&d, StepKind::ForceDown) || !service.forced_down {
            let s = self
                .begin(
                    StepKind::ForceDown,
                    &self.node,
                    1,
                    json!({"service_id": service.id, "forced_down": true}),
                )
                .await?;
            match &fence {
                None => self.end(s, StepOutcome::DryRun, json!(null)).await?,
                Some(c) => match self.force_down(c, &service).await {
                    Ok(()) => self.end(s, StepOutcome::Ok, json!(null)).await?,
                    Err(e) => {
                        let e = error_chain(&e);
                        self.end(s, StepOutcome::Failed, json!({"error": e}))
                            .await?;
                        return self
                            .needs_attention(format!(
                                "cannot force {}'s service down: {e}",
                                self.node
                            ))
                            .await;
                    }
                },
            }
        }

        let spare = self.spare_for();
        if let Some(sp) = &spare {
            if let Err(why) = self.prepare_spare(&d, sp).await? {
                // A spare that cannot be readied is not fatal with the
                // scheduler; with `reserved` it is.
                if self.r.settings.evacuation.destination
                    == crate::config::DestinationPolicy::Reserved
                {
                    return self.needs_attention(why).await;
                }
                self.event("spare-unavailable", why, json!(null)).await?;
            }
        }

        // Selection, once: a resumed run works on the journaled list, because
        // moved instances are no longer on the node.
        let selected = if Self::did(&d, StepKind::SelectInstances) {
            d.instances.clone()
        } else {
            match self.select(spare.as_ref().map(|s| s.host.as_str())).await? {
                Ok(v) => v,
                Err(why) => return self.needs_attention(why).await,
            }
        };

        self.journal()
            .set_phase(&self.id, Phase::Evacuating)
            .await?;
        let concurrency = self.r.settings.evacuation.concurrency.max(1);
        let fence_ref = fence.as_ref();
        // Unordered: a slot frees the moment its instance ends, so one slow
        // server never holds the others back (`buffered` kept finished slots
        // idle behind the first). Reports keep the selection order.
        let mut results: Vec<(usize, InstanceRecord)> =
            futures::stream::iter(selected.into_iter().enumerate().map(|(i, rec)| async move {
                self.handle_instance(fence_ref, rec).await.map(|r| (i, r))
            }))
            .buffer_unordered(concurrency)
            .try_collect()
            .await?;
        results.sort_by_key(|(i, _)| *i);
        let results: Vec<InstanceRecord> = results.into_iter().map(|(_, r)| r).collect();

        self.journal().set_phase(&self.id, Phase::Notifying).await?;
        let failed: Vec<&InstanceRecord> = results
            .iter()
            .filter(|r| r.state == InstanceState::Failed)
            .collect();
        let d = self.journal().get(&self.id).await?;
        self.notify(
            &d,
            Message::EvacuationFinished {
                incident: self.id.clone(),
                node: self.node.clone(),
                instances: results.iter().map(report).collect(),
            },
        )
        .await?;
        // The kdump path's power-off, owed once the dump is written; after
        // the evacuations, which never wait for it.
        if self.owes_power_off_after_dump(&d) {
            if let Err(why) = self.power_off_after_dump(levels).await? {
                return self.needs_attention(format!("{why}. Check the BMC, or power the node off by hand once its dump is written")).await;
            }
        }
        if !failed.is_empty() {
            let names: Vec<String> = failed
                .iter()
                .map(|r| format!("{} ({})", r.name, r.reason.as_deref().unwrap_or("?")))
                .collect();
            return self
                .needs_attention(format!(
                    "{} of {} instances not recovered: {}",
                    failed.len(),
                    results.len(),
                    names.join("; ")
                ))
                .await;
        }
        let status = if self.dry_run {
            IncidentStatus::DryRun
        } else {
            IncidentStatus::Completed
        };
        if !self.dry_run {
            self.reenable_if_policy(d.summary.recovered_at.is_some())
                .await?;
        }
        self.journal().set_phase(&self.id, Phase::Closed).await?;
        self.journal()
            .set_status(&self.id, status, None, self.clock().now())
            .await?;
        info!(instances = results.len(), ?status, "incident closed");
        Ok((status, None))
    }

    /// A page without changing the status (for aborts that must be seen).
    async fn page_only(&self, reason: String) -> Result<(), WorkflowError> {
        let msg = Message::NeedsAttention {
            incident: self.id.clone(),
            node: self.node.clone(),
            reason,
            instances: Vec::new(),
        };
        let s = self
            .begin(
                StepKind::Notify,
                "needs-attention",
                1,
                json!({"message": msg}),
            )
            .await?;
        let handles = self.r.edges.notify.dispatch(msg);
        if let Ok(mut v) = self.notifications.lock() {
            v.extend(handles);
        }
        self.end(s, StepOutcome::Ok, json!({"queued": true})).await
    }

    async fn force_down(
        &self,
        _fence: &ConfirmedFence,
        service: &ComputeService,
    ) -> Result<(), NovaCallError> {
        self.r.edges.nova.set_forced_down(service, true).await
    }

    fn spare_for(&self) -> Option<crate::config::ReservedSpare> {
        self.r
            .settings
            .evacuation
            .reserved
            .iter()
            .find(|s| {
                s.host != self.node
                    && (s.for_nodes.is_empty() || s.for_nodes.iter().any(|n| n == &self.node))
            })
            .cloned()
    }

    /// Enables the spare's service and, if asked, adds it to the dead host's
    /// aggregates. Idempotent, so a resumed run simply does it again.
    async fn prepare_spare(
        &self,
        d: &IncidentDetail,
        sp: &crate::config::ReservedSpare,
    ) -> Result<Result<(), String>, WorkflowError> {
        let nova = &self.r.edges.nova;
        if !Self::did(d, StepKind::EnableSpare) {
            let s = self
                .begin(StepKind::EnableSpare, &sp.host, 1, json!(null))
                .await?;
            if self.dry_run {
                self.end(s, StepOutcome::DryRun, json!(null)).await?;
            } else {
                let r = async {
                    let svc = nova.compute_service(&sp.host).await?;
                    if !svc.enabled {
                        nova.enable_service(&svc).await?;
                    }
                    Ok::<_, NovaCallError>(())
                }
                .await;
                if let Err(e) = r {
                    let e = error_chain(&e);
                    self.end(s, StepOutcome::Failed, json!({"error": e}))
                        .await?;
                    return Ok(Err(format!("cannot enable reserved host {}: {e}", sp.host)));
                }
                self.end(s, StepOutcome::Ok, json!(null)).await?;
            }
        }
        if sp.join_aggregates && !Self::did(d, StepKind::JoinAggregate) {
            let aggs = match nova.host_aggregates(&self.node).await {
                Ok(a) => a,
                Err(e) => {
                    return Ok(Err(format!(
                        "cannot list {}'s aggregates: {}",
                        self.node,
                        error_chain(&e)
                    )))
                }
            };
            for a in aggs.iter().filter(|a| !a.hosts.contains(&sp.host)) {
                let s = self
                    .begin(
                        StepKind::JoinAggregate,
                        &sp.host,
                        1,
                        json!({"aggregate": a.name, "aggregate_id": a.id}),
                    )
                    .await?;
                if self.dry_run {
                    self.end(s, StepOutcome::DryRun, json!(null)).await?;
                } else if let Err(e) = nova.add_host_to_aggregate(a, &sp.host).await {
                    let e = error_chain(&e);
                    self.end(s, StepOutcome::Failed, json!({"error": e}))
                        .await?;
                    return Ok(Err(format!(
                        "cannot add {} to aggregate {}: {e}",
                        sp.host, a.name
                    )));
                } else {
                    self.end(s, StepOutcome::Ok, json!(null)).await?;
                }
            }
        }
        Ok(Ok(()))
    }

    async fn select(
        &self,
        spare: Option<&str>,
    ) -> Result<Result<Vec<InstanceRecord>, String>, WorkflowError> {
        let nova = &self.r.edges.nova;
        let policy = &self.r.settings.evacuation;
        let s = self
            .begin(
                StepKind::SelectInstances,
                &self.node,
                1,
                json!({"policy": policy}),
            )
            .await?;
        let servers = match nova.servers_on_host(&self.node).await {
            Ok(v) => v,
            Err(e) => {
                let e = error_chain(&e);
                self.end(s, StepOutcome::Failed, json!({"error": e}))
                    .await?;
                return Ok(Err(format!(
                    "cannot list the servers on {}: {e}",
                    self.node
                )));
            }
        };
        let services = if policy.destination == crate::config::DestinationPolicy::Spread {
            match nova.compute_services().await {
                Ok(v) => v,
                Err(e) => {
                    let e = error_chain(&e);
                    self.end(s, StepOutcome::Failed, json!({"error": e}))
                        .await?;
                    return Ok(Err(format!("cannot list compute services for spread: {e}")));
                }
            }
        } else {
            Vec::new()
        };
        let (chosen, skipped) = select::choose(
            &servers,
            &self.node,
            policy,
            nova.max_microversion(),
            &services,
            spare,
        );
        let mut recs = Vec::with_capacity(chosen.len());
        for c in &chosen {
            let rec = InstanceRecord {
                server_id: c.server.id.clone(),
                name: c.server.name.clone(),
                project_id: c.server.project_id.clone(),
                status_before: c.server.status.to_string(),
                expected: c.expected.to_string(),
                priority: c.priority,
                from_host: self.node.clone(),
                destination: c.destination.clone(),
                to_host: None,
                state: InstanceState::Selected,
                attempts: 0,
                started_at: None,
                finished_at: None,
                reason: None,
                refused: 0,
                evacuate_actions: None,
                status_after: None,
            };
            self.put(&rec).await?;
            recs.push(rec);
        }
        let skipped: Vec<Value> = skipped
            .iter()
            .map(|k| json!({"server_id": k.server_id, "reason": k.reason}))
            .collect();
        self.end(s, StepOutcome::Ok, json!({"selected": recs.iter().map(|r| &r.server_id).collect::<Vec<_>>(), "skipped": skipped})).await?;
        Ok(Ok(recs))
    }

    /// Re-enables the node after a completed evacuation, when it is back and
    /// policy allows; otherwise leaves it disabled and forced down.
    async fn reenable_if_policy(&self, recovered: bool) -> Result<(), WorkflowError> {
        if !(recovered && self.r.settings.reenable_after_recovery) {
            return Ok(());
        }
        let nova = &self.r.edges.nova;
        let s = self
            .begin(
                StepKind::ReenableService,
                &self.node,
                1,
                json!({"forced_down": false, "status": "enabled"}),
            )
            .await?;
        let r = async {
            let svc = nova.compute_service(&self.node).await?;
            nova.set_forced_down(&svc, false).await?;
            nova.enable_service(&svc).await
        }
        .await;
        match r {
            Ok(()) => self.end(s, StepOutcome::Ok, json!(null)).await,
            Err(e) => {
                self.end(s, StepOutcome::Failed, json!({"error": error_chain(&e)}))
                    .await
            }
        }
    }
}

fn report(r: &InstanceRecord) -> InstanceReport {
    InstanceReport {
        server_id: r.server_id.clone(),
        name: r.name.clone(),
        project_id: r.project_id.clone(),
        from_host: r.from_host.clone(),
        to_host: r.to_host.clone(),
        took_secs: match (r.started_at, r.finished_at) {
            (Some(a), Some(b)) if r.state == InstanceState::Evacuated => {
                Some(b.since(a).as_secs_f64())
            }
            _ => None,
        },
        state: serde_json::to_value(r.state)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default(),
        reason: r.reason.clone(),
        status: r.status_after.clone(),
        evacuate_actions: r.evacuate_actions,
    }
}
