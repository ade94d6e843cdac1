//! The journal as one incident's workflow sees it: every write goes to the
//! real journal, and the phases and outcomes are also told to the engine, so
//! the node's verdict follows the workflow (fencing → fenced → evacuating →
//! recovered / needs-attention) and `WatchVerdicts` shows it. The journal is
//! where the workflow records each phase anyway, so reporting from here keeps
//! the verdict and the journal in step without a second hook in the workflow.
//!
//! The fence permit lives here too: the engine must still accept `fencing`
//! (the node still judged dead, or an operator confirmed it off) when the
//! workflow reaches the fence. If it does not, the phase write fails with
//! `JournalError::FenceRefused` and the workflow stops before any power-off
//! (safety rules 2-4: evidence that arrived after the decision still vetoes
//! the fence); the driver reads that error and pages.

use crate::engine::{Event, WorkflowError as EngineError};
use crate::node_state::Nodes;
use futures::future::BoxFuture;
use serde_json::Value;
use std::sync::{Arc, PoisonError};
use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};
use vigil_recovery::journal::{
    Event as JournalEvent, IncidentDetail, IncidentId, IncidentStatus, IncidentSummary,
    InstanceRecord, Journal, JournalError, NewIncident, Phase, StepBegin, StepId, StepOutcome,
};
use vigil_recovery::time::Timestamp;
use vigil_verdict::{Verdict, WorkflowStep};

/// Tells the engine about one incident's progress.
#[derive(Clone)]
pub struct EngineLink {
    pub events: mpsc::Sender<Event>,
    pub nodes: Nodes,
}

impl EngineLink {
    /// One legal workflow step; `Err` says why the engine refused it.
    pub async fn step(&self, node: &str, step: WorkflowStep, reason: String) -> Result<(), String> {
        let (reply, rx) = oneshot::channel();
        self.events
            .send(Event::Workflow {
                node: node.to_string(),
                step,
                reason,
                reply,
            })
            .await
            .map_err(|_| "the decider's engine has stopped".to_string())?;
        rx.await
            .map_err(|_| "the decider's engine has stopped".to_string())?
            .map_err(|e: EngineError| e.to_string())
    }

    /// Straight into a workflow verdict (journal replay, pages).
    pub async fn force(&self, node: &str, verdict: Verdict, reason: String) -> Result<(), String> {
        let (reply, rx) = oneshot::channel();
        self.events
            .send(Event::WorkflowResume {
                node: node.to_string(),
                verdict,
                reason,
                reply,
            })
            .await
            .map_err(|_| "the decider's engine has stopped".to_string())?;
        rx.await
            .map_err(|_| "the decider's engine has stopped".to_string())?
            .map_err(|e: EngineError| e.to_string())
    }

    /// The node's verdict and whether recovery may start from it.
    pub fn verdict(&self, node: &str) -> Option<(Verdict, bool)> {
        let n = crate::node_state::lookup(&self.nodes, node)?;
        let st = n.lock().unwrap_or_else(PoisonError::into_inner);
        Some((st.tracker.verdict(), st.tracker.actionable()))
    }

    /// Shows (or clears) the node's open incident in `GetNode`/`ListNodes`.
    pub fn set_incident(&self, node: &str, incident: Option<&IncidentId>) {
        let n = crate::node_state::lookup(&self.nodes, node);
        if let Some(n) = n {
            n.lock().unwrap_or_else(PoisonError::into_inner).incident_id =
                incident.map(|i| i.0.clone());
        }
    }
}

/// The journal of one incident's run (see the module doc).
pub struct Reporter {
    inner: Arc<dyn Journal>,
    node: String,
    /// Dry runs change no verdict: nothing was fenced or moved.
    dry_run: bool,
    engine: EngineLink,
    /// `[cluster]`: the other deciders' views, read at the fence.
    views: Option<Arc<vigil_cluster::views::Views>>,
    /// The workflow takes the kdump path (`[kdump]` is on).
    kdump: bool,
}

impl Reporter {
    pub fn new(inner: Arc<dyn Journal>, node: &str, dry_run: bool, engine: EngineLink) -> Reporter {
        Reporter {
            inner,
            node: node.to_string(),
            dry_run,
            engine,
            views: None,
            kdump: false,
        }
    }

    /// Words the verdict's reasons for the kdump path.
    pub fn with_kdump(mut self, kdump: bool) -> Reporter {
        self.kdump = kdump;
        self
    }

    /// The fence permit also asks the other deciders (`[cluster]`).
    pub fn with_views(mut self, views: Option<Arc<vigil_cluster::views::Views>>) -> Reporter {
        self.views = views;
        self
    }

    /// Whether the incident was decided on the kdump fast path (and this
    /// decider takes the kdump path): only for the verdict's words.
    async fn by_kdump(&self, incident: &IncidentId) -> bool {
        self.kdump
            && self
                .inner
                .get(incident)
                .await
                .is_ok_and(|d| d.evidence.get("fast_path").and_then(Value::as_str) == Some("kdump"))
    }

    async fn tell(&self, step: WorkflowStep, reason: String) {
        if let Err(e) = self.engine.step(&self.node, step, reason).await {
            warn!(node = %self.node, ?step, error = %e, "the engine did not take the workflow step; the verdict may lag the journal");
        }
    }
}

impl Journal for Reporter {
    fn open_incident(&self, new: NewIncident) -> BoxFuture<'_, Result<IncidentId, JournalError>> {
        Box::pin(async move {
            let id = self.inner.open_incident(new).await?;
            self.engine.set_incident(&self.node, Some(&id));
            Ok(id)
        })
    }

    fn begin_step<'a>(
        &'a self,
        incident: &'a IncidentId,
        step: StepBegin,
    ) -> BoxFuture<'a, Result<StepId, JournalError>> {
        self.inner.begin_step(incident, step)
    }

    fn end_step(
        &self,
        step: StepId,
        at: Timestamp,
        outcome: StepOutcome,
        result: Value,
    ) -> BoxFuture<'_, Result<(), JournalError>> {
        self.inner.end_step(step, at, outcome, result)
    }

    fn record_event<'a>(
        &'a self,
        incident: &'a IncidentId,
        event: JournalEvent,
    ) -> BoxFuture<'a, Result<(), JournalError>> {
        self.inner.record_event(incident, event)
    }

    fn put_instance<'a>(
        &'a self,
        incident: &'a IncidentId,
        instance: InstanceRecord,
    ) -> BoxFuture<'a, Result<(), JournalError>> {
        self.inner.put_instance(incident, instance)
    }

    fn set_phase<'a>(
        &'a self,
        incident: &'a IncidentId,
        phase: Phase,
    ) -> BoxFuture<'a, Result<(), JournalError>> {
        Box::pin(async move {
            let by_kdump =
                matches!(phase, Phase::Fencing | Phase::Fenced) && self.by_kdump(incident).await;
            if !self.dry_run && phase == Phase::Fencing {
                // Asked before the phase is written: a refusal leaves the
                // incident short of the fence, and nothing is powered off.
                let reason = if by_kdump {
                    format!(
                        "fencing: confirming {} fenced by its crash kernel's fence_kdump messages (incident {incident})",
                        self.node
                    )
                } else {
                    format!(
                        "fencing: powering {} off through its BMC (incident {incident})",
                        self.node
                    )
                };
                if let Err(why) = self
                    .engine
                    .step(&self.node, WorkflowStep::Fencing, reason)
                    .await
                {
                    warn!(node = %self.node, incident = %incident, reason = %why, "fence vetoed: the decider no longer judges the node dead");
                    return Err(JournalError::FenceRefused { why });
                }
                if let Some(v) = &self.views {
                    // Three vantage points: a node another live decider
                    // still sees alive is not powered off.
                    match v.alive_elsewhere(&self.node).await {
                        Ok(None) => {}
                        Ok(Some(why)) => {
                            warn!(node = %self.node, incident = %incident, reason = %why, "fence vetoed by another decider's view");
                            return Err(JournalError::FenceRefused { why });
                        }
                        Err(e) => {
                            return Err(JournalError::Store {
                                what: "reading the other deciders' views before the fence".into(),
                                source: Box::new(e),
                            })
                        }
                    }
                }
            }
            self.inner.set_phase(incident, phase).await?;
            if !self.dry_run {
                match phase {
                    Phase::Fenced => {
                        let reason = if by_kdump {
                            format!("fenced by kdump: {} runs its crash kernel; powered off once the dump is written (incident {incident})", self.node)
                        } else {
                            format!("fenced: {} confirmed off (incident {incident})", self.node)
                        };
                        self.tell(WorkflowStep::Fenced, reason).await
                    }
                    Phase::Evacuating => {
                        self.tell(
                            WorkflowStep::Evacuating,
                            format!("evacuating {}'s instances (incident {incident})", self.node),
                        )
                        .await
                    }
                    _ => {}
                }
            }
            Ok(())
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
            self.inner
                .set_status(incident, status, reason.clone(), at)
                .await?;
            if !status.is_open() {
                self.engine.set_incident(&self.node, None);
            }
            if self.dry_run {
                return Ok(());
            }
            match status {
                IncidentStatus::Completed => {
                    info!(node = %self.node, incident = %incident, "recovery completed");
                    self.tell(
                        WorkflowStep::Recovered,
                        format!(
                            "recovered: {}'s instances run elsewhere (incident {incident}); the node stays disabled and forced down until it is back",
                            self.node
                        ),
                    )
                    .await
                }
                IncidentStatus::NeedsAttention => {
                    // Forced: a page must show whatever the verdict did meanwhile.
                    let why = reason.unwrap_or_default();
                    if let Err(e) = self
                        .engine
                        .force(
                            &self.node,
                            Verdict::NeedsAttention,
                            format!("needs attention: {why} (incident {incident})"),
                        )
                        .await
                    {
                        warn!(node = %self.node, error = %e, "cannot show needs-attention in the verdict");
                    }
                }
                _ => {}
            }
            Ok(())
        })
    }

    fn mark_recovered<'a>(
        &'a self,
        incident: &'a IncidentId,
        boot_id: String,
        at: Timestamp,
    ) -> BoxFuture<'a, Result<(), JournalError>> {
        self.inner.mark_recovered(incident, boot_id, at)
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
