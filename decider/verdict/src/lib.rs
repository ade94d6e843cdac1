//! Vigil's judgment: what every witness said about a node → a verdict with the
//! reasons behind it. Pure: no I/O, no async, no clock reads; the caller hands
//! in `now` as a [`Moment`] on its monotonic clock.
//!
//! - [`evidence`]: what the sensor stream, Nova and the pings said, and when.
//! - [`policy`]: the TOML policy: required witnesses, windows, vetoes, storm guard.
//! - [`fast_path`]: the BMC-off and kdump paths to `dead` that need not wait
//!   for Nova.
//! - [`decide`]: [`evaluate`] one node's evidence at one moment → [`Assessment`].
//! - [`machine`]: [`NodeTracker`], assessments over time → the verdict shown,
//!   with confirmation, hysteresis, flapping and the workflow's states.
//! - [`storm`]: [`StormGuard`], safety rule 6 across nodes.
//! - [`verdict`]: the [`Verdict`] enum of PRODUCT.md.
//! - [`time`]: [`Moment`] and duration formatting.

#![forbid(unsafe_code)]

pub mod decide;
pub mod evidence;
pub mod fast_path;
pub mod machine;
pub mod policy;
pub mod storm;
pub mod time;
pub mod verdict;

pub use decide::{evaluate, Assessment, Opinion, Opinions, Veto, VetoRule};
pub use evidence::{
    Absorbed, BlockedTask, BmcIdentity, BmcPower, BmcRead, BmcWitness, DeciderView, DeviceStall,
    Evidence, Heard, InstanceActivity, KdumpWitness, NovaComputeProcess, NovaInstance, NovaService,
    NovaWitness, PingRole, PingWitness, ProbeMode, SensorReading, SensorWitness, ServiceState,
    Signals,
};
pub use fast_path::FastPath;
pub use machine::{IllegalTransition, NodeTracker, VerdictChange, WorkflowStep};
pub use policy::{Policy, PolicyError, WitnessKind};
pub use storm::{counts_as_down, StormGuard, StormHold};
pub use time::{fmt_secs, Moment};
pub use verdict::Verdict;

#[cfg(test)]
mod properties;
#[cfg(test)]
mod tests;
