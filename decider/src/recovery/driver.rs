//! The recovery driver: one task between the engine's verdicts and
//! `vigil-recovery`'s workflow.
//!
//! - An actionable `dead` node (announced by the engine with the evidence at
//!   decision time) passes the guards (storm, one incident per node,
//!   cooldown) and gets an incident, run in its own task.
//! - At start-up every open incident in the journal is resumed: the node's
//!   verdict is put back where the workflow was, and the workflow continues
//!   from its journal and Nova's live state (never a second fence of a node
//!   confirmed off, never a second evacuation). One that had not reached the
//!   fence waits until the node is judged dead again.
//! - A new boot id marks a fenced node's incident recovered and hands the node
//!   back to the evidence once its incident is closed.
//! - An operator's confirmation that a node is off (operator API) is journaled
//!   and continues its incident past the fence.
//!
//! Runs end in the journal; the driver only logs them, pages on a vetoed
//! fence, and retries runs that stopped because the journal failed.

use crate::metrics::{Metrics, StatusLabels};
pub use crate::recovery::inputs::{ConfirmError, RecoveryInput};
use crate::recovery::reporter::{EngineLink, Reporter};
use crate::recovery::self_check::DeciderSelfCheck;
use crate::recovery::setup::RecoveryParts;
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, PoisonError};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tracing::{error, info, warn};
use vigil_recovery::journal::{
    Event as JournalEvent, IncidentId, IncidentStatus, IncidentSummary, Journal, JournalError,
    NewIncident, Phase,
};
use vigil_recovery::notify::{Dispatcher, Message, RetryPolicy};
use vigil_recovery::workflow::{
    Admission, Edges, Guards, Mode, NovaActions, Outcome, Recovery, Settings, Trigger,
    WorkflowError,
};
use vigil_verdict::{Verdict, WorkflowStep};

/// What others hold to reach recovery: its inputs and its journal (read-only
/// use: incidents for the operator API).
#[derive(Clone)]
pub struct RecoveryHandle {
    pub inputs: mpsc::UnboundedSender<RecoveryInput>,
    pub journal: Arc<dyn Journal>,
}

impl RecoveryHandle {
    /// Journals the operator's confirmation and continues the node's
    /// incident; returns the incident's id.
    pub async fn confirm_off(
        &self,
        node: &str,
        who: &str,
        note: &str,
    ) -> Result<IncidentId, ConfirmError> {
        let (reply, rx) = oneshot::channel();
        self.inputs
            .send(RecoveryInput::ConfirmOff {
                node: node.to_string(),
                who: who.to_string(),
                note: note.to_string(),
                reply,
            })
            .map_err(|_| ConfirmError::Stopped)?;
        rx.await.map_err(|_| ConfirmError::Stopped)?
    }
}

/// How a run of one incident ended.
struct RunEnd {
    node: String,
    result: Result<Outcome, WorkflowError>,
}

enum RunKind {
    Start { trigger: Trigger, mode: Mode },
    Resume { id: IncidentId, dry_run: bool },
}

/// A run that stopped on a journal failure is resumed after this.
const JOURNAL_RETRY: Duration = Duration::from_secs(10);

pub struct Driver {
    parts: RecoveryParts,
    metrics: Arc<Metrics>,
    engine: EngineLink,
    guards: Guards,
    /// The workflow over the plain journal, for calls outside a run
    /// (reboots, operator confirmations).
    base: Recovery,
    dispatcher: Dispatcher,
    tasks: JoinSet<RunEnd>,
    /// Nodes with a run in progress.
    running: HashSet<String>,
    /// Nodes whose current dead episode already got an incident.
    handled: HashSet<String>,
    /// Open incidents that had not reached the fence when the decider
    /// stopped: resumed when their node is judged dead again.
    pending_resume: HashMap<String, IncidentSummary>,
    /// The last refusal logged per node (each distinct one is logged once).
    refusals: HashMap<String, String>,
    /// Operator confirmations that arrived while the node's run was going.
    resume_after_run: HashSet<String>,
    /// Runs stopped by a journal failure, resumed at the given time.
    retry_at: HashMap<String, tokio::time::Instant>,
    /// `[cluster]`: the term this decider leads in, once it has resumed
    /// the journal for it.
    term: Option<i64>,
    /// `[kdump]`: the engine's kdump messages, for the kdump path's
    /// power-off after the dump; `None`: no kdump port, no kdump path.
    kdump: Option<vigil_recovery::workflow::KdumpWatch>,
}

impl Driver {
    pub fn new(parts: RecoveryParts, engine: EngineLink, metrics: Arc<Metrics>) -> Self {
        let dispatcher = Dispatcher::new(
            parts.notifiers.clone(),
            RetryPolicy::from_config(&parts.config.notify),
            parts.clock.clone(),
            Some(parts.journal.clone()),
        );
        let base = Recovery::new(
            Edges {
                nova: parts.nova.clone(),
                journal: parts.journal.clone(),
                notify: dispatcher.clone(),
                clock: parts.clock.clone(),
                self_check: Arc::new(NeverSelfCheck),
            },
            Settings::from(&parts.config),
        );
        Driver {
            metrics,
            guards: Guards::new(parts.config.guards.clone()),
            parts,
            engine,
            base,
            dispatcher,
            tasks: JoinSet::new(),
            running: HashSet::new(),
            handled: HashSet::new(),
            pending_resume: HashMap::new(),
            refusals: HashMap::new(),
            resume_after_run: HashSet::new(),
            retry_at: HashMap::new(),
            term: None,
            kdump: None,
        }
    }

    /// Incidents decided on the kdump fast path are fenced by the crash
    /// kernel's announcement and powered off after the dump.
    pub fn with_kdump(mut self, watch: Option<vigil_recovery::workflow::KdumpWatch>) -> Self {
        self.kdump = watch;
        self
    }

    /// Resumes the journal's open incidents, then handles inputs until
    /// `shutdown`. Runs still going at shutdown are dropped mid-step, which
    /// the journal and resume are built for (safety rule 7).
    pub async fn run(
        mut self,
        mut inputs: mpsc::UnboundedReceiver<RecoveryInput>,
        shutdown: impl Future<Output = ()>,
    ) {
        tokio::pin!(shutdown);
        // Connect to Nova now (Keystone token, microversions), so the first
        // incident does not pay for it between `dead` and its first action.
        // A Nova that is down now is tried again when an incident needs it.
        {
            let nova = self.parts.nova.clone();
            tokio::spawn(async move {
                if let Err(e) = nova.ready().await {
                    warn!(error = %vigil_recovery::fence::error_chain(&e), "recovery cannot reach Nova yet; it connects again when an incident needs it");
                }
            });
        }
        // The only decider resumes at once; one of several when it leads.
        let mut leadership = self
            .parts
            .cluster
            .as_ref()
            .map(|c| c.leadership.subscribe());
        if leadership.is_none() {
            self.resume_open().await;
        }
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                _ = &mut shutdown => break,
                Ok(()) = async { match leadership.as_mut() {
                    Some(rx) => rx.changed().await,
                    None => std::future::pending().await,
                } } => {
                    let status = leadership.as_ref().map(|rx| rx.borrow().clone());
                    if let Some(s) = status {
                        self.on_leadership(s).await;
                    }
                }
                Some(done) = self.tasks.join_next(), if !self.tasks.is_empty() => match done {
                    Ok(end) => self.on_run_end(end).await,
                    Err(e) if e.is_cancelled() => {
                        // Stopped on purpose (leadership lost): the journal
                        // holds where it was.
                    }
                    Err(e) => {
                        // The node is unknown here; a panicking run leaves its
                        // incident open, which the next start-up resumes.
                        error!(error = %e, "a recovery run panicked; its incident stays open");
                    }
                },
                input = inputs.recv() => match input {
                    Some(i) => self.on_input(i).await,
                    None => break,
                },
                _ = tick.tick() => self.retry_due().await,
            }
        }
        if !self.running.is_empty() {
            warn!(nodes = %crate::logging::list(&self.running), count = self.running.len(), "stopping with recovery runs in progress; they resume at the next start");
        }
    }

    /// `[cluster]`: a new term of this decider's resumes every open
    /// incident, as a restarted decider does; a lost one stops every run at
    /// once (their next journal write would be refused anyway).
    async fn on_leadership(&mut self, s: vigil_cluster::Status) {
        let leads = s.role == vigil_cluster::Role::Leader;
        match (leads, self.term) {
            (true, Some(t)) if t == s.term => {}
            (true, _) => {
                info!(
                    term = s.term,
                    "leading: resuming the journal's open incidents"
                );
                self.stop_all();
                self.term = Some(s.term);
                self.resume_open().await;
            }
            (false, Some(t)) => {
                warn!(term = t, leader = s.leader.as_deref().unwrap_or("none known"), "no longer leading: every recovery run stops here; the leader resumes them from the journal");
                self.stop_all();
                self.term = None;
            }
            (false, None) => {}
        }
    }

    fn stop_all(&mut self) {
        self.tasks.abort_all();
        self.running.clear();
        self.handled.clear();
        self.pending_resume.clear();
        self.retry_at.clear();
        self.resume_after_run.clear();
        self.metrics.recovery_active.set(0);
    }

    /// Whether this decider may start or continue anything now: always
    /// alone; with `[cluster]`, only with a valid leadership permit.
    fn may_act(&self) -> Result<(), String> {
        match &self.parts.cluster {
            None => Ok(()),
            Some(c) => c.leadership.permit().map(drop).map_err(|e| e.to_string()),
        }
    }

    async fn on_input(&mut self, input: RecoveryInput) {
        let acting = matches!(
            input,
            RecoveryInput::Dead { .. }
                | RecoveryInput::Held { .. }
                | RecoveryInput::Booted { .. }
                | RecoveryInput::ConfirmOff { .. }
        );
        if acting {
            if let Err(why) = self.may_act() {
                // Followers judge and serve; the leader acts.
                if let RecoveryInput::ConfirmOff { reply, .. } = input {
                    let _ = reply.send(Err(ConfirmError::NotLeader(why)));
                }
                return;
            }
        }
        match input {
            RecoveryInput::Dead {
                node,
                evidence,
                boot_id,
            } => self.on_dead(node, evidence, boot_id).await,
            RecoveryInput::Held {
                node,
                evidence,
                boot_id,
                reason,
            } => {
                if self.running.contains(&node) || self.refusals.get(&node) == Some(&reason) {
                    return;
                }
                self.metrics.recovery_refused.inc();
                warn!(node = %node, reason = %reason, "recovery refused: the storm guard holds the node");
                self.refusals.insert(node.clone(), reason.clone());
                self.record_refusal(&node, evidence, boot_id, reason).await;
            }
            RecoveryInput::Alive { node } => {
                self.guards.node_alive(&node);
                self.handled.remove(&node);
                self.refusals.remove(&node);
                if let Some(s) = self.pending_resume.get(&node) {
                    warn!(node = %node, incident = %s.id, "node judged alive while its incident is open short of the fence; it resumes only if the node is judged dead again");
                }
            }
            RecoveryInput::Booted { node, boot_id } => self.on_booted(&node, &boot_id).await,
            RecoveryInput::ConfirmOff {
                node,
                who,
                note,
                reply,
            } => {
                let r = self.on_confirm(&node, &who, &note).await;
                let _ = reply.send(r);
            }
        }
    }

    async fn on_dead(&mut self, node: String, evidence: Value, boot_id: Option<String>) {
        if self.running.contains(&node) {
            return;
        }
        if let Some(s) = self.pending_resume.remove(&node) {
            info!(node = %node, incident = %s.id, "node judged dead again: resuming its incident");
            self.handled.insert(node.clone());
            self.spawn(
                node,
                RunKind::Resume {
                    id: s.id,
                    dry_run: s.dry_run,
                },
            );
            return;
        }
        if let Some(why) = self.seen_alive_elsewhere(&node).await {
            if self.refusals.get(&node) != Some(&why) {
                warn!(node = %node, reason = %why, "not acting on a dead verdict another decider does not share");
                self.refusals.insert(node.clone(), why);
            }
            return;
        }
        let journal = self.parts.journal.clone();
        let last = match journal.latest_for_node(&node).await {
            Ok(l) => l,
            Err(e) => {
                error!(node = %node, error = %e, "cannot read the journal; not acting on a dead node without it");
                return;
            }
        };
        if let Some(l) = &last {
            if l.status == IncidentStatus::Open {
                // Open but not running: its run stopped on a journal failure.
                self.handled.insert(node.clone());
                self.spawn(
                    node,
                    RunKind::Resume {
                        id: l.id.clone(),
                        dry_run: l.dry_run,
                    },
                );
                return;
            }
            if l.status.is_open() {
                // needs-attention: a person has it.
                return;
            }
        }
        let now = self.parts.clock.now();
        if self.handled.contains(&node) {
            // One incident per dead episode; only one refused before any
            // action is tried again, after a pause.
            let due = matches!(&last, Some(l) if l.status == IncidentStatus::Aborted
                && l.closed_at.is_some_and(|c| now >= c.plus(self.parts.config.guards.retry_after_abort)));
            if !due || !self.self_check_failed(last.as_ref()).await {
                return;
            }
            info!(node = %node, "node still dead after its incident was refused by the self-check: trying again");
        }
        let known = self
            .engine
            .nodes
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .len();
        match self.guards.admit(journal.as_ref(), &node, known, now).await {
            Ok(Admission::Admit) => {
                self.handled.insert(node.clone());
                self.refusals.remove(&node);
                let trigger = Trigger {
                    node: node.clone(),
                    evidence,
                    boot_id,
                };
                self.spawn(
                    node,
                    RunKind::Start {
                        trigger,
                        mode: self.parts.mode,
                    },
                );
            }
            Ok(Admission::Refuse { reason, page }) => {
                self.metrics.recovery_refused.inc();
                if self.refusals.get(&node) != Some(&reason) {
                    warn!(node = %node, reason = %reason, "recovery refused");
                    self.refusals.insert(node.clone(), reason.clone());
                }
                if page {
                    self.record_refusal(&node, evidence, boot_id, reason).await;
                }
            }
            Err(e) => {
                error!(node = %node, error = %e, "cannot read the journal; not acting on a dead node without it")
            }
        }
    }

    /// `[cluster]`: why another live decider still sees `node` alive, if
    /// one does. A view that cannot be read is treated as a veto: acting
    /// needs etcd anyway.
    async fn seen_alive_elsewhere(&self, node: &str) -> Option<String> {
        let c = self.parts.cluster.as_ref()?;
        match c.views.alive_elsewhere(node).await {
            Ok(v) => v,
            Err(e) => Some(format!("the other deciders' views cannot be read: {e}")),
        }
    }

    /// Whether `last` was refused because the decider's self-check failed:
    /// the one refusal worth trying again (the decider's own blind spot
    /// passes). A maintenance refusal stays refused until the node lives.
    async fn self_check_failed(&self, last: Option<&IncidentSummary>) -> bool {
        let Some(last) = last else { return false };
        match self.parts.journal.get(&last.id).await {
            Ok(d) => d.steps.iter().any(|s| {
                s.kind == vigil_recovery::journal::StepKind::SelfCheck
                    && s.outcome == Some(vigil_recovery::journal::StepOutcome::Failed)
            }),
            Err(_) => false,
        }
    }

    /// A storm refusal is recorded as an aborted incident (so `incidents`
    /// shows it with its evidence) and pages once.
    async fn record_refusal(
        &self,
        node: &str,
        evidence: Value,
        boot_id: Option<String>,
        reason: String,
    ) {
        let j = &self.parts.journal;
        let now = self.parts.clock.now();
        let r = async {
            let id = j
                .open_incident(NewIncident {
                    node: node.to_string(),
                    opened_at: now,
                    dry_run: self.parts.mode == Mode::DryRun,
                    evidence,
                    boot_id,
                })
                .await?;
            j.record_event(
                &id,
                JournalEvent {
                    at: now,
                    kind: "refused".into(),
                    message: reason.clone(),
                    detail: json!(null),
                },
            )
            .await?;
            j.set_phase(&id, Phase::Closed).await?;
            j.set_status(&id, IncidentStatus::Aborted, Some(reason.clone()), now)
                .await?;
            Ok::<_, JournalError>(id)
        }
        .await;
        match r {
            Ok(id) => {
                self.dispatcher.dispatch(Message::NeedsAttention {
                    incident: id,
                    node: node.to_string(),
                    reason,
                    instances: Vec::new(),
                });
            }
            Err(e) => error!(node = %node, error = %e, "cannot journal a refused recovery"),
        }
    }

    async fn on_booted(&mut self, node: &str, boot_id: &str) {
        match self.base.node_booted(node, boot_id).await {
            Ok(Some(id)) => {
                info!(node = %node, incident = %id, boot_id = %boot_id, "fenced node is back")
            }
            Ok(None) => {}
            Err(e) => warn!(node = %node, error = %e, "cannot record the node's return"),
        }
        // Hand a finished workflow verdict back to the evidence once the node
        // is back: its incident is closed and it has booted anew.
        if let Some((Verdict::Recovered, _)) = self.engine.verdict(node) {
            let closed = matches!(
                self.parts.journal.latest_for_node(node).await,
                Ok(Some(l)) if !l.status.is_open()
            );
            if closed {
                let reason =
                    format!("{node} is back (boot id {boot_id}); judged by evidence again");
                if let Err(e) = self.engine.step(node, WorkflowStep::Release, reason).await {
                    warn!(node = %node, error = %e, "cannot release the node to the evidence");
                }
            }
        }
    }

    async fn on_confirm(
        &mut self,
        node: &str,
        who: &str,
        note: &str,
    ) -> Result<IncidentId, ConfirmError> {
        let last = self.parts.journal.latest_for_node(node).await?;
        let Some(last) = last.filter(|l| l.status.is_open()) else {
            return Err(ConfirmError::NoOpenIncident(node.to_string()));
        };
        self.base
            .confirm_off_by_operator(&last.id, who, note)
            .await?;
        warn!(node = %node, incident = %last.id, operator = %who, "operator confirmed the node powered off");
        self.pending_resume.remove(node);
        if self.running.contains(node) {
            self.resume_after_run.insert(node.to_string());
        } else {
            self.spawn(
                node.to_string(),
                RunKind::Resume {
                    id: last.id.clone(),
                    dry_run: last.dry_run,
                },
            );
        }
        Ok(last.id)
    }

    async fn on_run_end(&mut self, end: RunEnd) {
        let node = end.node;
        self.running.remove(&node);
        self.metrics.recovery_active.set(self.running.len() as i64);
        let status = match &end.result {
            Ok(o) => serde_json::to_value(o.status)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default(),
            Err(_) => "open".to_string(),
        };
        self.metrics
            .recovery_runs
            .get_or_create(&StatusLabels { status })
            .inc();
        let confirmed_meanwhile = self.resume_after_run.remove(&node);
        match end.result {
            Ok(o) => {
                info!(node = %node, incident = %o.incident, status = %crate::logging::kebab(&o.status), reason = o.reason.as_deref().unwrap_or(""), instances = o.instances.len(), "recovery run ended");
                // A node that came back before its evacuation finished is
                // handed back to the evidence now that the incident is closed.
                if o.status == IncidentStatus::Completed {
                    let back = matches!(
                        self.parts.journal.latest_for_node(&node).await,
                        Ok(Some(l)) if l.id == o.incident && l.recovered_at.is_some()
                    );
                    if back {
                        let reason = format!(
                            "{node} came back during incident {}; judged by evidence again",
                            o.incident
                        );
                        if let Err(e) = self.engine.step(&node, WorkflowStep::Release, reason).await
                        {
                            warn!(node = %node, error = %e, "cannot release the node to the evidence");
                        }
                    }
                }
                if o.status.is_open() && confirmed_meanwhile {
                    self.spawn(
                        node,
                        RunKind::Resume {
                            id: o.incident,
                            dry_run: false,
                        },
                    );
                }
            }
            Err(WorkflowError::Journal(JournalError::FenceRefused { why })) => {
                self.fence_vetoed(&node, &why).await
            }
            Err(WorkflowError::Journal(JournalError::NotLeader { why })) => {
                // Deposed mid-run: the new leader resumes the incident from
                // the journal. If this decider's term only lapsed for a
                // moment and it still leads, it resumes it itself (the
                // retry waits for a valid permit).
                warn!(node = %node, reason = %why, "recovery run stopped: this decider cannot prove it leads");
                self.handled.remove(&node);
                self.retry_at
                    .insert(node, tokio::time::Instant::now() + JOURNAL_RETRY);
            }
            Err(e) => {
                error!(node = %node, error = %format!("{e:#}"), retry_in = ?JOURNAL_RETRY, "recovery stopped: cannot journal; it resumes from the journal");
                self.handled.remove(&node);
                self.retry_at
                    .insert(node, tokio::time::Instant::now() + JOURNAL_RETRY);
            }
        }
    }

    /// The engine refused the fence: the node is no longer judged dead. No
    /// power-off happened; Vigil may have disabled the node's service. A
    /// person decides: needs-attention, paged.
    async fn fence_vetoed(&mut self, node: &str, why: &str) {
        let j = self.parts.journal.clone();
        let Ok(Some(last)) = j.latest_for_node(node).await else {
            warn!(node = %node, reason = %why, "fence vetoed before the incident was journaled");
            return;
        };
        if !last.status.is_open() {
            return;
        }
        let reason = format!(
            "fence vetoed: {why}. Nothing was powered off or evacuated; the node's nova-compute service may be left disabled by Vigil (reason starts with \"vigil:\"): re-enable it once it is healthy"
        );
        let now = self.parts.clock.now();
        let r = async {
            j.record_event(
                &last.id,
                JournalEvent {
                    at: now,
                    kind: "fence-vetoed".into(),
                    message: why.to_string(),
                    detail: json!(null),
                },
            )
            .await?;
            j.set_status(
                &last.id,
                IncidentStatus::NeedsAttention,
                Some(reason.clone()),
                now,
            )
            .await
        }
        .await;
        if let Err(e) = r {
            error!(node = %node, error = %e, "cannot journal the vetoed fence");
            return;
        }
        if !last.dry_run {
            if let Err(e) = self
                .engine
                .force(
                    node,
                    Verdict::NeedsAttention,
                    format!("needs attention: {reason} (incident {})", last.id),
                )
                .await
            {
                warn!(node = %node, error = %e, "cannot show needs-attention in the verdict");
            }
        }
        self.dispatcher.dispatch(Message::NeedsAttention {
            incident: last.id,
            node: node.to_string(),
            reason,
            instances: Vec::new(),
        });
    }

    /// Resumes runs that stopped on a journal failure, once their pause is
    /// over. One that stopped before its incident was opened has nothing to
    /// resume: the node's next dead announcement starts afresh.
    async fn retry_due(&mut self) {
        if self.may_act().is_err() {
            return;
        }
        let now = tokio::time::Instant::now();
        let due: Vec<String> = self
            .retry_at
            .iter()
            .filter(|(n, at)| **at <= now && !self.running.contains(*n))
            .map(|(n, _)| n.clone())
            .collect();
        for node in due {
            self.retry_at.remove(&node);
            match self.parts.journal.latest_for_node(&node).await {
                Ok(Some(l)) if l.status == IncidentStatus::Open => {
                    info!(node = %node, incident = %l.id, "resuming a recovery the journal stopped");
                    self.spawn(
                        node,
                        RunKind::Resume {
                            id: l.id,
                            dry_run: l.dry_run,
                        },
                    );
                }
                Ok(_) => {}
                Err(e) => {
                    error!(node = %node, error = %e, "the journal still fails; retrying later");
                    self.retry_at.insert(node, now + JOURNAL_RETRY);
                }
            }
        }
    }

    /// Resumes every open incident of the journal (decider start-up).
    async fn resume_open(&mut self) {
        let open = match self.parts.journal.open_incidents().await {
            Ok(v) => v,
            Err(e) => {
                error!(error = %e, "cannot read open incidents from the journal; none resumed");
                return;
            }
        };
        // Nodes whose last incident completed while they stay off: back to
        // `recovered` (not a fresh `dead`, which would open a second incident
        // for a node already fenced and emptied).
        let names: Vec<String> = self
            .engine
            .nodes
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .keys()
            .cloned()
            .collect();
        for node in names {
            let Ok(Some(l)) = self.parts.journal.latest_for_node(&node).await else {
                continue;
            };
            if l.status == IncidentStatus::Completed && l.recovered_at.is_none() && !l.dry_run {
                let reason = format!(
                    "recovered: incident {} completed; the node has not come back since",
                    l.id
                );
                if let Err(e) = self.engine.force(&node, Verdict::Recovered, reason).await {
                    warn!(node = %node, error = %e, "cannot restore the node's recovered verdict");
                }
                self.handled.insert(node);
            }
        }
        if let (Some(c), Some(term)) = (&self.parts.cluster, self.term) {
            // Which decider carried each incident on, in its own timeline.
            let me = c.leadership.name().to_string();
            for s in &open {
                let r = self
                    .parts
                    .journal
                    .record_event(
                        &s.id,
                        JournalEvent {
                            at: self.parts.clock.now(),
                            kind: "leader-resumed".into(),
                            message: format!(
                                "decider {me} leads (term {term}) and resumes this incident"
                            ),
                            detail: json!({"decider": me, "term": term}),
                        },
                    )
                    .await;
                if let Err(e) = r {
                    warn!(incident = %s.id, error = %e, "cannot journal the takeover");
                }
            }
        }
        for s in open {
            let node = s.node.clone();
            if self.engine.verdict(&node).is_none() {
                warn!(node = %node, incident = %s.id, "open incident for a node this decider does not watch; left as is");
                continue;
            }
            self.engine.set_incident(&node, Some(&s.id));
            self.handled.insert(node.clone());
            let verdict = match (s.status, s.phase) {
                (IncidentStatus::NeedsAttention, _) => Some(Verdict::NeedsAttention),
                (_, Phase::Opened) => None,
                (_, Phase::Fencing) => Some(Verdict::Fencing),
                (_, Phase::Fenced) => Some(Verdict::Fenced),
                (_, Phase::Evacuating | Phase::Notifying | Phase::Closed) => {
                    Some(Verdict::Evacuating)
                }
            };
            match verdict {
                None => {
                    info!(node = %node, incident = %s.id, "open incident short of the fence: resumes when the node is judged dead again");
                    self.pending_resume.insert(node, s);
                }
                Some(v) => {
                    info!(node = %node, incident = %s.id, phase = %crate::logging::kebab(&s.phase), status = %crate::logging::kebab(&s.status), "resuming open incident");
                    if !s.dry_run {
                        let reason = match s.status {
                            IncidentStatus::NeedsAttention => format!(
                                "needs attention: {} (incident {})",
                                s.reason.as_deref().unwrap_or("see the incident"),
                                s.id
                            ),
                            _ => format!("{v}: incident {} resumed after a decider restart", s.id),
                        };
                        if let Err(e) = self.engine.force(&node, v, reason).await {
                            warn!(node = %node, error = %e, "cannot restore the node's workflow verdict");
                        }
                    }
                    self.spawn(
                        node,
                        RunKind::Resume {
                            id: s.id,
                            dry_run: s.dry_run,
                        },
                    );
                }
            }
        }
    }

    fn spawn(&mut self, node: String, kind: RunKind) {
        let dry_run = match &kind {
            RunKind::Start { mode, .. } => *mode == Mode::DryRun,
            RunKind::Resume { dry_run, .. } => *dry_run,
        };
        let reporter = Reporter::new(
            self.parts.journal.clone(),
            &node,
            dry_run,
            self.engine.clone(),
        )
        .with_views(self.parts.cluster.as_ref().map(|c| c.views.clone()))
        .with_kdump(self.kdump.is_some());
        let nova: Arc<dyn NovaActions> = self.parts.nova.clone();
        let edges = Edges {
            nova: nova.clone(),
            journal: Arc::new(reporter),
            notify: self.dispatcher.clone(),
            clock: self.parts.clock.clone(),
            self_check: Arc::new(DeciderSelfCheck {
                node: node.clone(),
                engine: self.engine.clone(),
                nova,
                nova_timeout: self.parts.nova_timeout,
                prober: self.parts.prober.clone(),
                reference_addresses: self.parts.reference_addresses.clone(),
                probe_timeout: self.parts.probe_timeout,
            }),
        };
        let recovery =
            Recovery::new(edges, Settings::from(&self.parts.config)).with_kdump(self.kdump.clone());
        let levels = self.parts.levels.get(&node).cloned().unwrap_or_default();
        self.running.insert(node.clone());
        self.metrics.recovery_active.set(self.running.len() as i64);
        self.retry_at.remove(&node);
        self.tasks.spawn(async move {
            let result = match kind {
                RunKind::Start { trigger, mode } => recovery.start(&levels, trigger, mode).await,
                RunKind::Resume { id, .. } => recovery.resume(&levels, &id).await,
            };
            RunEnd { node, result }
        });
    }
}

/// The base workflow never starts a run, so it never self-checks.
struct NeverSelfCheck;

impl vigil_recovery::workflow::SelfCheck for NeverSelfCheck {
    fn check(&self) -> futures::future::BoxFuture<'_, Result<(), String>> {
        Box::pin(async { Err("not a run".to_string()) })
    }
}
