//! The journal: every incident, every step before and after it runs, every
//! instance's outcome, the timeline, and the evidence at decision time
//! (safety rule 7). It is what a restarted decider resumes from and what
//! operators read as the downtime record.
//!
//! [`Journal`] is the store's interface: [`sqlite::SqliteJournal`] is the
//! embedded default for one decider; `vigil-cluster`'s etcd journal holds it
//! for several, every write conditioned on the writer's leadership term.
//! Timestamps come from the caller's clock: the journal reads no clock.

pub mod sqlite;

use std::fmt;

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::time::Timestamp;

/// An incident's id (a UUID v4 as text).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct IncidentId(pub String);

impl IncidentId {
    pub fn generate() -> Self {
        IncidentId(uuid::Uuid::new_v4().to_string())
    }
}

impl fmt::Display for IncidentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where an incident stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum IncidentStatus {
    /// The workflow is running (or will resume).
    Open,
    /// The workflow stopped where it could not go on safely; a person was
    /// paged. Still open: it blocks new incidents for the node.
    NeedsAttention,
    /// Every selected instance was handled; closed.
    Completed,
    /// Refused before any action (maintenance, storm, self-check); closed.
    Aborted,
    /// A dry run finished; closed. Nothing was done.
    DryRun,
    /// An operator closed it.
    Resolved,
}

impl IncidentStatus {
    pub fn is_open(self) -> bool {
        matches!(self, IncidentStatus::Open | IncidentStatus::NeedsAttention)
    }
}

/// How far the workflow got; mirrors the node verdicts of PRODUCT.md.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    Opened,
    Fencing,
    Fenced,
    Evacuating,
    Notifying,
    Closed,
}

/// A step of the workflow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepKind {
    SelfCheck,
    DisableService,
    PowerOff,
    ConfirmOff,
    ForceDown,
    EnableSpare,
    JoinAggregate,
    SelectInstances,
    Evacuate,
    ResetState,
    Verify,
    Notify,
    ReenableService,
    /// The kdump path's wait for the crash dump before the power-off.
    AwaitDump,
}

/// How a step ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StepOutcome {
    Ok,
    Failed,
    /// Dry run: the call was not made.
    DryRun,
    /// Not needed (already so, found on resume).
    Skipped,
}

/// Id of a step record.
pub type StepId = i64;

/// Written before a step runs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepBegin {
    pub kind: StepKind,
    /// What it acts on: a host, a server id, a BMC.
    pub target: String,
    /// 1 for the first try.
    pub attempt: u32,
    pub at: Timestamp,
    /// The call it is about to make (arguments, microversion, destination).
    pub detail: Value,
}

/// A step record, as read back.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    pub id: StepId,
    pub kind: StepKind,
    pub target: String,
    pub attempt: u32,
    pub began_at: Timestamp,
    pub detail: Value,
    /// `None` while the step has begun and not ended (or the decider died in it).
    pub ended_at: Option<Timestamp>,
    pub outcome: Option<StepOutcome>,
    pub result: Value,
}

/// Where one instance stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum InstanceState {
    Selected,
    Evacuating,
    /// ACTIVE (or SHUTOFF, as expected) on another host.
    Evacuated,
    Failed,
    /// Deleted while we worked on it.
    Gone,
    DryRun,
}

impl InstanceState {
    pub fn is_final(self) -> bool {
        !matches!(self, InstanceState::Selected | InstanceState::Evacuating)
    }
}

/// One instance of the incident.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceRecord {
    pub server_id: String,
    pub name: String,
    pub project_id: String,
    /// Its status when selected (ACTIVE, ERROR, SHUTOFF).
    pub status_before: String,
    /// The status it must reach elsewhere (ACTIVE or SHUTOFF).
    pub expected: String,
    pub priority: i64,
    pub from_host: String,
    /// The destination we named, if any (reserved or spread).
    pub destination: Option<String>,
    /// Where it ended up.
    pub to_host: Option<String>,
    pub state: InstanceState,
    /// Evacuate calls made.
    pub attempts: u32,
    pub started_at: Option<Timestamp>,
    pub finished_at: Option<Timestamp>,
    /// Why it failed, in Nova's words where Nova gave them.
    pub reason: Option<String>,
    /// Evacuate calls Nova refused with an answer (4xx) or that never left:
    /// `attempts - refused` may have reached Nova.
    #[serde(default)]
    pub refused: u32,
    /// Nova's `evacuate` instance actions for it since the incident opened,
    /// as last read from Nova (not counted here).
    #[serde(default)]
    pub evacuate_actions: Option<u32>,
    /// Its status in Nova as last read (ACTIVE on the destination, ERROR, …).
    #[serde(default)]
    pub status_after: Option<String>,
}

/// A timeline event that is not a step (a verdict, a guard, a notification
/// delivery, an operator's confirmation, the node coming back).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub at: Timestamp,
    pub kind: String,
    pub message: String,
    pub detail: Value,
}

/// Event kind of an operator's confirmation that the node is off, which
/// stands in for a power read-back (safety rule 1).
pub const OPERATOR_CONFIRMED_OFF: &str = "operator-confirmed-off";

/// What opening an incident records.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NewIncident {
    pub node: String,
    pub opened_at: Timestamp,
    pub dry_run: bool,
    /// The evidence the verdict was made on.
    pub evidence: Value,
    /// The node's boot id at decision time; a different one later means it
    /// came back.
    pub boot_id: Option<String>,
}

/// An incident in a list.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct IncidentSummary {
    pub id: IncidentId,
    pub node: String,
    pub status: IncidentStatus,
    pub phase: Phase,
    pub dry_run: bool,
    pub opened_at: Timestamp,
    pub closed_at: Option<Timestamp>,
    /// Why it needs attention or was aborted.
    pub reason: Option<String>,
    pub boot_id: Option<String>,
    /// Set when the node came back with a new boot id.
    pub recovered_at: Option<Timestamp>,
}

/// An incident with everything recorded about it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct IncidentDetail {
    pub summary: IncidentSummary,
    pub evidence: Value,
    pub steps: Vec<StepRecord>,
    pub instances: Vec<InstanceRecord>,
    pub events: Vec<Event>,
}

/// One line of an incident's timeline.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TimelineEntry {
    pub at: Timestamp,
    /// `step-begin`, `step-end` or the event kind.
    pub what: String,
    pub message: String,
}

impl IncidentDetail {
    /// Steps (begin and end) and events, in time order.
    pub fn timeline(&self) -> Vec<TimelineEntry> {
        let mut t = Vec::new();
        for s in &self.steps {
            t.push(TimelineEntry {
                at: s.began_at,
                what: "step-begin".into(),
                message: format!(
                    "{:?} {} (attempt {}) {}",
                    s.kind, s.target, s.attempt, s.detail
                ),
            });
            if let (Some(at), Some(o)) = (s.ended_at, s.outcome) {
                t.push(TimelineEntry {
                    at,
                    what: "step-end".into(),
                    message: format!("{:?} {}: {:?} {}", s.kind, s.target, o, s.result),
                });
            }
        }
        for e in &self.events {
            t.push(TimelineEntry {
                at: e.at,
                what: e.kind.clone(),
                message: e.message.clone(),
            });
        }
        // Stable: same-millisecond entries keep step-then-event order.
        t.sort_by_key(|e| e.at);
        t
    }

    /// Steps of `kind` on `target`.
    pub fn steps_of<'a>(
        &'a self,
        kind: StepKind,
        target: &'a str,
    ) -> impl Iterator<Item = &'a StepRecord> + 'a {
        self.steps
            .iter()
            .filter(move |s| s.kind == kind && s.target == target)
    }

    pub fn events_of<'a>(&'a self, kind: &'a str) -> impl Iterator<Item = &'a Event> + 'a {
        self.events.iter().filter(move |e| e.kind == kind)
    }
}

/// Journal failures. The workflow stops on any of them: a step it cannot
/// record is a step it must not take.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// The store failed.
    #[error("journal: {what}")]
    Store {
        what: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A record in the store cannot be read back.
    #[error("journal: corrupt record ({what}): {detail}")]
    Corrupt { what: String, detail: String },
    /// The node already has an open incident.
    #[error("node {node} already has open incident {incident}; resolve it first")]
    AlreadyOpen { node: String, incident: IncidentId },
    /// No such incident.
    #[error("no incident {0}")]
    NotFound(IncidentId),
    /// The fence permit was refused: evidence that arrived after the
    /// decision says the node is not dead (safety rules 2-4). Raised where
    /// the workflow records `Phase::Fencing`, before any power-off.
    #[error("fence refused: {why}")]
    FenceRefused { why: String },
    /// This decider no longer holds the term the write was conditioned on
    /// (HA): another decider leads, or leadership could not be confirmed in
    /// time. The workflow stops at once; the leader resumes it.
    #[error("journal: not the leader ({why}); this decider acts on nothing until it leads again")]
    NotLeader { why: String },
    /// The journal was written by a newer release (a downgrade).
    #[error("journal schema version {found} is newer than this release's {supported}: it was written by a newer vigil-decider; run that release again, or restore the journal backup taken before the upgrade")]
    NewerSchema { found: u32, supported: u32 },
}

/// The store behind the journal. Every write is durable when its future
/// resolves (the SQLite store commits with `synchronous=FULL`).
pub trait Journal: Send + Sync + 'static {
    /// Opens an incident; fails with `AlreadyOpen` if the node has one.
    fn open_incident(&self, new: NewIncident) -> BoxFuture<'_, Result<IncidentId, JournalError>>;
    fn begin_step<'a>(
        &'a self,
        incident: &'a IncidentId,
        step: StepBegin,
    ) -> BoxFuture<'a, Result<StepId, JournalError>>;
    fn end_step(
        &self,
        step: StepId,
        at: Timestamp,
        outcome: StepOutcome,
        result: Value,
    ) -> BoxFuture<'_, Result<(), JournalError>>;
    fn record_event<'a>(
        &'a self,
        incident: &'a IncidentId,
        event: Event,
    ) -> BoxFuture<'a, Result<(), JournalError>>;
    /// Inserts or replaces the instance's record.
    fn put_instance<'a>(
        &'a self,
        incident: &'a IncidentId,
        instance: InstanceRecord,
    ) -> BoxFuture<'a, Result<(), JournalError>>;
    fn set_phase<'a>(
        &'a self,
        incident: &'a IncidentId,
        phase: Phase,
    ) -> BoxFuture<'a, Result<(), JournalError>>;
    /// Sets the status; a closed status also sets `closed_at`.
    fn set_status<'a>(
        &'a self,
        incident: &'a IncidentId,
        status: IncidentStatus,
        reason: Option<String>,
        at: Timestamp,
    ) -> BoxFuture<'a, Result<(), JournalError>>;
    fn mark_recovered<'a>(
        &'a self,
        incident: &'a IncidentId,
        boot_id: String,
        at: Timestamp,
    ) -> BoxFuture<'a, Result<(), JournalError>>;
    /// Open and needs-attention incidents, oldest first.
    fn open_incidents(&self) -> BoxFuture<'_, Result<Vec<IncidentSummary>, JournalError>>;
    /// The newest `limit` incidents, newest first.
    fn list(&self, limit: usize) -> BoxFuture<'_, Result<Vec<IncidentSummary>, JournalError>>;
    /// The node's newest incident.
    fn latest_for_node<'a>(
        &'a self,
        node: &'a str,
    ) -> BoxFuture<'a, Result<Option<IncidentSummary>, JournalError>>;
    fn get<'a>(
        &'a self,
        incident: &'a IncidentId,
    ) -> BoxFuture<'a, Result<IncidentDetail, JournalError>>;
}
