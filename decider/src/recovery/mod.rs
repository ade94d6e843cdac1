//! The decider's side of recovery: `vigil-recovery`'s workflow wired to the
//! real edges, and the operator commands that read its journal.
//!
//! - [`nova`]: [`nova::NovaEdge`] implements `vigil_recovery::workflow::NovaActions`
//!   with any `vigil_nova::NovaActions` (the real `NovaClient` in production).
//! - [`commands`]: `vigil-decider fence-check`, `incidents [--json]`,
//!   `incident ID [--json]`.

pub mod commands;
pub mod nova;
