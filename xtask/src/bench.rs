//! `cargo xtask bench sensor|decider|recovery`: benchmarks that print figures.
//!
//! Figures, not pass/fail: this machine is noisy, so each benchmark measures
//! its baseline in the same run and reports ratios beside absolute numbers.

mod recovery;

use std::process::Command;

use anyhow::{bail, Result};

use crate::{cmd, ebpf};

pub fn run(args: &[String]) -> Result<()> {
    let rest = args.get(1..).unwrap_or_default();
    match args.first().map(String::as_str) {
        Some("sensor") => sensor(rest),
        Some("decider") => decider(rest),
        Some("recovery") => recovery(rest),
        _ => bail!(
            "usage: cargo xtask bench sensor|decider|recovery [ARGS…]\n  \
             sensor:   context-switch cost and sensor RSS/CPU (root; e.g. --rounds 41 --compare-bin OLD_BINARY --json)\n  \
             decider:  simulated sensors over gRPC; GetNode, ListNodes page and all-pages latency (e.g. --nodes 1000,5000 --baseline OLD-vigil-decider --rounds 3 --page-size 200)\n  \
             recovery: power loss to all servers ACTIVE elsewhere, against the hand floor (root, lab)"
        ),
    }
}

fn release_build(package: &str) -> Result<()> {
    cmd::step(
        &format!("building {package} (release)"),
        Command::new("cargo").args(["build", "--release", "-p", package, "--bins"]),
    )
}

fn sensor(args: &[String]) -> Result<()> {
    if !crate::is_root() {
        bail!(
            "bench sensor loads eBPF programs and needs root; run `sudo cargo xtask bench sensor`"
        );
    }
    ebpf::build()?;
    release_build("vigil-sensor")?;
    let bin = crate::root().join("target/release/vigil-sensor");
    cmd::run(Command::new(bin).arg("bench-switch").args(args))
}

fn decider(args: &[String]) -> Result<()> {
    release_build("vigil-decider")?;
    let bin = crate::root().join("target/release/vigil-loadgen");
    let mut c = Command::new(bin);
    if args.is_empty() {
        c.args(["--nodes", "1000,5000"]);
    }
    cmd::run(c.args(args))
}

fn recovery(args: &[String]) -> Result<()> {
    recovery::run(args)
}
