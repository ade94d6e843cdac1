//! The verdicts of PRODUCT.md: what Vigil believes about a node, and which of
//! them the recovery workflow (rather than the evidence) drives.

use serde::{Deserialize, Serialize};
use std::fmt;

/// One node's verdict. The first five come from the evidence ([`crate::evaluate`]
/// and [`crate::NodeTracker`]); the rest are set by the recovery workflow
/// through [`crate::WorkflowStep`] and are never produced by evidence alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    /// Every witness that has spoken says the node is up and well.
    Healthy,
    /// The nova-compute service is disabled by an operator: never touched
    /// (safety rule 5).
    Maintenance,
    /// Alive but sick, e.g. the management side hung while VMs run: alert, do
    /// not evacuate.
    Degraded,
    /// Some witnesses say dead, or nothing is known yet; waiting for
    /// confirmation.
    Suspect,
    /// Every required witness agrees the node is dead and nothing vetoes.
    Dead,
    /// The workflow is powering the node off.
    Fencing,
    /// The power read back as off (or an operator confirmed it).
    Fenced,
    /// Instances are being evacuated.
    Evacuating,
    /// The workflow finished, or the fenced node came back with a new boot id.
    Recovered,
    /// The workflow could not finish safely: a human is paged.
    NeedsAttention,
}

impl Verdict {
    /// Every verdict, in the order of the proto enum.
    pub const ALL: [Verdict; 10] = [
        Verdict::Healthy,
        Verdict::Maintenance,
        Verdict::Degraded,
        Verdict::Suspect,
        Verdict::Dead,
        Verdict::Fencing,
        Verdict::Fenced,
        Verdict::Evacuating,
        Verdict::Recovered,
        Verdict::NeedsAttention,
    ];

    /// The name operators read in tables, logs and metrics labels.
    pub const fn as_str(self) -> &'static str {
        match self {
            Verdict::Healthy => "healthy",
            Verdict::Maintenance => "maintenance",
            Verdict::Degraded => "degraded",
            Verdict::Suspect => "suspect",
            Verdict::Dead => "dead",
            Verdict::Fencing => "fencing",
            Verdict::Fenced => "fenced",
            Verdict::Evacuating => "evacuating",
            Verdict::Recovered => "recovered",
            Verdict::NeedsAttention => "needs-attention",
        }
    }

    /// True for the verdicts only the recovery workflow sets. While a node
    /// holds one of them, new evidence is recorded but does not change the
    /// verdict: the workflow owns the node until it releases it.
    pub const fn is_workflow(self) -> bool {
        matches!(
            self,
            Verdict::Fencing
                | Verdict::Fenced
                | Verdict::Evacuating
                | Verdict::Recovered
                | Verdict::NeedsAttention
        )
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
