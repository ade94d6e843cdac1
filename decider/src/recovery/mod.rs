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
//! - [`kdump_state`]: the engine's kdump messages, as the kdump path's
//!   power-off after the dump asks for them.
//! - [`nova`]: [`nova::NovaEdge`] implements `vigil_recovery::workflow::NovaActions`
//!   with any `vigil_nova::NovaActions` (the real `NovaClient` in production);
//!   [`nova::LazyNova`] connects on first use.
//! - [`commands`]: `vigil-decider fence-check`, `incidents [--json]`,
//!   `incident ID [--json]`.
//! - [`bmc_identity`]: `fence-check`'s and `serve --check`'s comparison of
//!   each BMC's system UUID with `[[node]] system_uuid`.
//! - [`setup`]: `[recovery]` config → fence levels, journal, notifiers.

pub mod alerts;
pub mod bmc_identity;
pub mod commands;
pub mod driver;
pub mod inputs;
pub mod kdump_state;
pub mod nova;
pub mod reporter;
pub mod self_check;
pub mod setup;

pub use driver::{RecoveryHandle, RecoveryInput};
pub use setup::RecoveryParts;
