//! What the engine and the operator API tell recovery: the one type the
//! engine needs from recovery, kept apart so the engine imports nothing
//! else of it (the engine judges; recovery acts on its verdicts).

use serde_json::Value;
use thiserror::Error;
use tokio::sync::oneshot;
use vigil_recovery::journal::{IncidentId, JournalError};

/// What the engine and the operator API tell the driver.
#[derive(Debug)]
pub enum RecoveryInput {
    /// The node is `dead` and no guard holds it; re-sent while it stays so.
    Dead {
        node: String,
        /// The evidence at decision time, as operators read it.
        evidence: Value,
        boot_id: Option<String>,
    },
    /// The node is `dead` but the engine's storm guard holds it (safety
    /// rule 6): recorded as a refused incident and paged once per episode.
    Held {
        node: String,
        evidence: Value,
        boot_id: Option<String>,
        reason: String,
    },
    /// The node's verdict says it is alive (healthy, degraded, maintenance).
    Alive { node: String },
    /// A heartbeat with a boot id not seen before (or the first one since
    /// this decider started).
    Booted { node: String, boot_id: String },
    /// An operator confirms the node is powered off (safety rule 1's explicit
    /// confirmation).
    ConfirmOff {
        node: String,
        who: String,
        note: String,
        reply: oneshot::Sender<Result<IncidentId, ConfirmError>>,
    },
}

/// Why an operator's confirmation was not taken.
#[derive(Debug, Error)]
pub enum ConfirmError {
    #[error("node {0} has no open incident; ConfirmPowerOff continues an incident that could not confirm its fence (ListIncidents shows them)")]
    NoOpenIncident(String),
    #[error("{0}")]
    Journal(#[from] JournalError),
    #[error("the recovery driver has stopped")]
    Stopped,
    /// `[cluster]`: only the leader continues incidents.
    #[error("this decider does not lead ({0}): send ConfirmPowerOff to the leader (`vigil-decider cluster` shows it)")]
    NotLeader(String),
}
