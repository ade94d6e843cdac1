//! Vigil's recovery: what happens after the decider's verdict says a node is
//! `dead`, and nothing before it.
//!
//! - [`workflow`]: the journaled state machine of one incident (disable → fence →
//!   confirm → force down → spare → select → evacuate → verify → notify → close),
//!   its guards (storm, cooldown, one incident per node, self-check) and the
//!   narrow traits for its I/O edges ([`workflow::NovaActions`], [`time::Clock`]).
//! - [`fence`]: the [`fence::Fencer`] trait and its Redfish, IPMI and command
//!   implementations, fence levels and `fence_check`.
//! - [`journal`]: the [`journal::Journal`] trait (incidents, steps, instance
//!   outcomes, timeline, evidence) and its SQLite store.
//! - [`notify`]: webhook (HMAC-signed) and e-mail notifiers, delivered in the
//!   background so a failed notification never blocks a recovery.
//! - [`config`]: the serde configuration of all of the above, defaults chosen
//!   by the safety rules of PRODUCT.md.
//! - [`secret`]: credentials read from files or env into a [`secret::Secret`]
//!   that never prints.
//!
//! **Architecture Invariant:** no evacuate call can be made without a
//! [`workflow::ConfirmedFence`], and only a power read-back of `Off`, an accepted
//! storage fence or a journaled operator confirmation can build one
//! (safety rule 1).
//!
//! **API Boundary:** this crate knows no Nova wire format and does not depend on
//! `vigil-nova`; the decider adapts its Nova client to [`workflow::NovaActions`].
#![forbid(unsafe_code)]

pub mod config;
pub mod fence;
pub mod journal;
pub mod notify;
pub mod secret;
pub mod time;
pub mod workflow;
