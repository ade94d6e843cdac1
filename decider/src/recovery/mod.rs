//! The decider's side of recovery: `vigil-recovery`'s workflow wired to the
//! engine and to the real edges, and the operator commands that read its
//! journal.
//!
//! - [`driver`]: the task that turns actionable `dead` verdicts into
//!   incidents (guards, start, resume at start-up, reboots, operator
//!   confirmations) and runs each incident's workflow.
//! - [`reporter`]: the journal as the workflow sees it, reporting each phase
//!   to the engine so verdicts follow (fencing → fenced → evacuating →
//!   recovered / needs-attention).
//! - [`alerts`]: a notification when a node turns `degraded` (never
//!   fenced, so no incident would tell anyone).
//! - [`self_check`]: the decider's check of itself before it acts.
//! - [`nova`]: [`nova::NovaEdge`] implements `vigil_recovery::workflow::NovaActions`
//!   with any `vigil_nova::NovaActions` (the real `NovaClient` in production);
//!   [`nova::LazyNova`] connects on first use.
//! - [`commands`]: `vigil-decider fence-check`, `incidents [--json]`,
//!   `incident ID [--json]`.
//! - [`setup`]: `[recovery]` config → fence levels, journal, notifiers.

pub mod alerts;
pub mod commands;
pub mod driver;
pub mod nova;
pub mod reporter;
pub mod self_check;
pub mod setup;

use crate::node_state::NodeState;
use crate::operator_api::{node_to_proto, Detail};
use serde_json::{json, Value};
use vigil_verdict::Moment;

pub use driver::{RecoveryHandle, RecoveryInput};
pub use setup::RecoveryParts;

/// The evidence a `dead` verdict stood on, as operators read it: the node as
/// `vigil-decider node NAME --json` shows it (verdict, reasons, every
/// witness's latest reading with its age, the latest heartbeat verbatim) plus
/// each witness's opinion. Stored with the incident at decision time.
pub fn evidence_snapshot(st: &NodeState, now: Moment) -> Value {
    let mut v = crate::table::node_json(&node_to_proto(st, now, Detail::Full));
    if let (Some(a), Some(obj)) = (st.tracker.latest(), v.as_object_mut()) {
        obj.insert(
            "opinions".into(),
            json!({
                "sensor": format!("{:?}", a.opinions.sensor).to_lowercase(),
                "nova": format!("{:?}", a.opinions.nova).to_lowercase(),
                "ping": format!("{:?}", a.opinions.ping).to_lowercase(),
            }),
        );
        obj.insert(
            "decided_at_unix_ms".into(),
            json!(crate::engine::unix_ms_now()),
        );
    }
    v
}
