//! Shared helpers for Vigil's end-to-end tests.
//!
//! - [`tier`]: tests that need root (eBPF, namespaces, the lab) say so instead
//!   of failing obscurely; under `CI=true` or `VIGIL_REQUIRE_ROOT=1` a missing
//!   prerequisite fails the test rather than skipping it.
//! - [`bins`]: paths of the workspace's binaries (built by `cargo xtask test`
//!   before the tests run).
//! - [`packaged`]: the .deb files' binaries and units instead of the build
//!   tree, when `VIGIL_PACKAGED` is set (`cargo xtask test` sets it).
//! - [`certs`]: a throwaway CA and certificates for the TLS tests.
//! - [`wait`]: wait on a condition with a deadline, never sleep-and-hope.
//! - [`local_net`]: what this machine's socket table says (never a connect).
//! - [`stall`]: issue 17's stalled-Nova scenario (lab test and `xtask chaos`).

pub mod bins;
pub mod certs;
pub mod decider;
pub mod lab;
pub mod local_net;
pub mod packaged;
pub mod stall;
pub mod tier;
pub mod wait;
