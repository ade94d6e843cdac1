//! Vigil's decider: collects every witness's evidence about each compute node,
//! judges it (with `vigil-verdict`), and serves the verdicts to people and to
//! the recovery workflow.
//!
//! - [`config`]: the TOML config (+ env + flags), validated before binding.
//! - [`engine`]: the main loop over one `enum Event`; owns evidence and verdicts.
//! - [`node_state`]: what is held per node, shared with the operator API.
//! - [`heartbeat_server`]: the `SensorStream` service (auth, limits, acks).
//! - [`operator_api`]: the `Operator` service (nodes, verdict changes).
//! - [`witness`]: the `NovaSource` and `Prober` traits;
//!   [`nova_adapter`] and [`ping_adapter`] implement them with `vigil-nova`
//!   and `vigil-ping`.
//! - [`nova_poll`], [`ping_sweep`]: the tasks feeding Nova and ping evidence.
//! - [`kdump`]: fence_kdump datagrams from crash kernels, parsed and
//!   attributed to a node by source address.
//! - [`recovery`]: the recovery workflow driven by actionable `dead`
//!   verdicts (fence, force down, evacuate, verify, notify; journaled), and
//!   the `fence-check` / `incidents` / `incident` commands.
//! - [`metrics`]: Prometheus `/metrics`, `/healthz`, `/readyz`;
//!   [`health`] is what the last two (and gRPC health) read, and
//!   [`health_probe`] the slow probes behind them.
//! - [`serve`]: wiring and shutdown; [`cli`] and [`table`]: the command line.
//! - [`loadgen`]: the benchmark's simulated sensors.

#![forbid(unsafe_code)]

pub mod auth_throttle;
pub mod bmc_watch;
pub mod cert_name;
pub mod check;
pub mod cli;
pub mod cli_confirm;
pub mod cli_exit;
pub mod cli_format;
pub mod cli_init;
pub mod cluster;
pub mod config;
pub mod degraded;
pub mod docs;
pub mod engine;
pub mod health;
pub mod health_probe;
pub mod heartbeat_server;
pub mod kdump;
pub mod loadgen;
pub mod logging;
pub mod metrics;
pub mod node_proto;
pub mod node_state;
pub mod nova_adapter;
pub mod nova_changes;
pub mod nova_poll;
pub mod operator_api;
pub mod ping_adapter;
pub mod ping_sweep;
pub mod recovery;
pub mod serve;
pub mod shutdown;
pub mod systemd;
pub mod table;
pub mod witness;

#[cfg(test)]
mod grpc_tests;
#[cfg(test)]
mod health_tests;
#[cfg(test)]
mod kdump_serve_tests;
#[cfg(test)]
mod recovery_tests;
#[cfg(test)]
mod tls_tests;
