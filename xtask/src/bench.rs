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
        Some("ha") => ha(rest),
        _ => bail!(
            "usage: cargo xtask bench sensor|decider|recovery|ha [ARGS…]\n  \
             sensor:   context-switch cost and sensor RSS/CPU (root; e.g. --rounds 41 --compare-bin OLD_BINARY --json)\n  \
             decider:  simulated sensors over gRPC; GetNode, ListNodes page and all-pages latency (e.g. --nodes 1000,5000 --baseline OLD-vigil-decider --rounds 3 --page-size 200)\n  \
             recovery: power loss to all servers ACTIVE elsewhere, against the hand floor (root, lab)\n  \
             ha:       etcd journal vs SQLite per step, leader lost → new leader's first write, a decider at 5,000 nodes alone vs in a cluster (local etcd; e.g. --nodes 5000)"
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

/// Decider HA's costs, each against its single-decider baseline in the
/// same run.
fn ha(args: &[String]) -> Result<()> {
    cmd::step(
        "journal cost and takeover time (local etcd)",
        Command::new("cargo").args([
            "run",
            "--release",
            "-q",
            "-p",
            "vigil-cluster",
            "--example",
            "ha_bench",
        ]),
    )?;
    release_build("vigil-decider")?;
    let dir = std::env::temp_dir().join(format!("vigil-bench-etcd-{}", std::process::id()));
    let port = |_| -> Result<u16> {
        Ok(std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port())
    };
    let (client, peer) = (port(())?, port(())?);
    let url = format!("http://127.0.0.1:{client}");
    let peer_url = format!("http://127.0.0.1:{peer}");
    let mut etcd = Command::new("etcd")
        .args(["--name", "bench", "--data-dir"])
        .arg(&dir)
        .args([
            "--listen-client-urls",
            &url,
            "--advertise-client-urls",
            &url,
            "--listen-peer-urls",
            &peer_url,
            "--initial-advertise-peer-urls",
            &peer_url,
            "--initial-cluster",
            &format!("bench={peer_url}"),
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(|e| anyhow::anyhow!("starting etcd (run `cargo xtask setup`): {e}"))?;
    let bin = crate::root().join("target/release/vigil-loadgen");
    let nodes = if args.is_empty() {
        vec!["--nodes".to_string(), "5000".to_string()]
    } else {
        args.to_vec()
    };
    let cluster =
        format!("[cluster]\nname = \"bench\"\nendpoints = [\"{url}\"]\nlease_ttl = \"5s\"");
    println!("a decider alone, then the same decider as a member of a cluster (leading, publishing its view of every node each second):");
    println!("-- alone:");
    let r = cmd::run(Command::new(&bin).args(&nodes)).and_then(|_| {
        println!("-- in a cluster ([cluster] on the local etcd):");
        cmd::run(
            Command::new(&bin)
                .args(&nodes)
                .args(["--extra-config", &cluster]),
        )
    });
    let _ = etcd.kill();
    let _ = etcd.wait();
    let _ = std::fs::remove_dir_all(&dir);
    r
}
