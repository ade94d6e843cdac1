//! `cargo xtask chaos --fault F [--at M] [--seconds N] [--servers N] [--repeat N]`:
//! issue 17's stalled-Nova scenarios, repeated, with per-run results and a
//! summary (servers, evacuate actions per server, false reports).
//!
//! Each run is one `stall_lab::chaos_run` test under `flock
//! /tmp/vigil-lab.lock`, so the lab is held per run, not for all of them, and
//! other users interleave.

use std::collections::BTreeMap;
use std::process::Command;

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::{cmd, ebpf};

const USAGE: &str = "usage: cargo xtask chaos \
                     --fault nova-api-freeze|nova-conductor-freeze|nova-api-500|db-stop \
                     [--at first-post|midway|verify (first-post)] [--seconds N (35)] \
                     [--servers N (6)] [--repeat N (1)]";

const FAULTS: [&str; 4] = [
    "nova-api-freeze",
    "nova-conductor-freeze",
    "nova-api-500",
    "db-stop",
];
const MOMENTS: [&str; 3] = ["first-post", "midway", "verify"];

struct Args {
    fault: String,
    at: String,
    seconds: u64,
    servers: usize,
    repeat: usize,
}

fn parse(args: &[String]) -> Result<Args> {
    let mut a = Args {
        fault: String::new(),
        at: "first-post".into(),
        seconds: 35,
        servers: 6,
        repeat: 1,
    };
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        if flag == "-h" || flag == "--help" {
            bail!("{USAGE}");
        }
        // The first form of the command named the scenario alone.
        if FAULTS.contains(&flag.as_str()) && a.fault.is_empty() {
            a.fault = flag.clone();
            continue;
        }
        let value = it
            .next()
            .with_context(|| format!("{flag} needs a value\n{USAGE}"))?;
        let bad = || format!("{flag} {value:?} is not a number\n{USAGE}");
        match flag.as_str() {
            "--fault" if FAULTS.contains(&value.as_str()) => a.fault = value.clone(),
            "--at" if MOMENTS.contains(&value.as_str()) => a.at = value.clone(),
            "--fault" | "--at" => bail!("{flag} {value:?} is not one of the choices\n{USAGE}"),
            "--seconds" => a.seconds = value.parse().with_context(bad)?,
            "--servers" => a.servers = value.parse().with_context(bad)?,
            "--repeat" => a.repeat = value.parse().with_context(bad)?,
            _ => bail!("unknown option {flag}\n{USAGE}"),
        }
    }
    if a.fault.is_empty() {
        bail!("--fault is needed\n{USAGE}");
    }
    if !(1..=600).contains(&a.seconds) || !(1..=30).contains(&a.servers) || a.repeat == 0 {
        bail!("--seconds 1..600, --servers 1..30, --repeat ≥ 1\n{USAGE}");
    }
    Ok(a)
}

pub fn run(args: &[String]) -> Result<()> {
    let a = parse(args)?;
    if !crate::is_root() {
        bail!("chaos drives the lab and needs root; run `sudo cargo xtask chaos …`");
    }
    ebpf::build()?;
    cmd::step(
        "building workspace binaries",
        Command::new("cargo").args(["build", "--workspace", "--bins"]),
    )?;
    cmd::step(
        "building the lab test",
        Command::new("cargo").args([
            "test",
            "-p",
            "vigil-tests",
            "--test",
            "stall_lab",
            "--no-run",
        ]),
    )?;
    let mut results: Vec<Value> = Vec::new();
    let mut broken = 0usize;
    for i in 1..=a.repeat {
        println!(
            "==> run {i}/{}: {} for {} s at {}, {} servers",
            a.repeat, a.fault, a.seconds, a.at, a.servers
        );
        let out = Command::new("flock")
            .args([
                "/tmp/vigil-lab.lock",
                "cargo",
                "test",
                "-q",
                "-p",
                "vigil-tests",
            ])
            .args([
                "--test",
                "stall_lab",
                "chaos_run",
                "--",
                "--ignored",
                "--exact",
            ])
            .args(["--nocapture", "--test-threads", "1"])
            .env("VIGIL_REQUIRE_ROOT", "1")
            .env("VIGIL_CHAOS_FAULT", &a.fault)
            .env("VIGIL_CHAOS_AT", &a.at)
            .env("VIGIL_CHAOS_SECONDS", a.seconds.to_string())
            .env("VIGIL_CHAOS_SERVERS", a.servers.to_string())
            .output()
            .context("running the chaos test under flock")?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let line = stdout.lines().find_map(|l| l.strip_prefix("CHAOS-RESULT "));
        match line.map(serde_json::from_str::<Value>) {
            Some(Ok(v)) => {
                print_run(i, &v);
                results.push(v);
            }
            _ => {
                broken += 1;
                let err = String::from_utf8_lossy(&out.stderr);
                let tail: Vec<&str> = err.lines().rev().take(30).collect();
                println!(
                    "    run {i}: no result ({}); the run's last lines:\n{}",
                    out.status,
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
        }
    }
    summary(&a, &results, broken)
}

fn print_run(i: usize, v: &Value) {
    println!(
        "    run {i}: fault at {} with {} landed, incident open then: {}; \
         incident {} after {:.0} s; double evacuations {}, false reports {}, unexplained {}",
        v["at"].as_str().unwrap_or("?"),
        v["landed_at_fault"],
        v["open_at_fault"],
        v["incident_status"].as_str().unwrap_or("?"),
        v["took_secs"].as_f64().unwrap_or(0.0),
        v["double_evacuations"],
        v["false_reports"],
        v["unexplained"]
    );
    for s in v["servers"].as_array().into_iter().flatten() {
        println!(
            "      {:<24} {:<8} on {:<10} evacuate actions {}  incident: {}",
            s["name"].as_str().unwrap_or(""),
            s["status"].as_str().unwrap_or(""),
            s["host"].as_str().unwrap_or(""),
            s["evacuate_actions"],
            s["incident_state"].as_str().unwrap_or("")
        );
    }
    if let Some(r) = v["incident_reason"].as_str().filter(|r| !r.is_empty()) {
        println!("      reason: {r}");
    }
}

fn summary(a: &Args, results: &[Value], broken: usize) -> Result<()> {
    let n = |k: &str| -> u64 { results.iter().filter_map(|v| v[k].as_u64()).sum() };
    let mut per_server: BTreeMap<u64, usize> = BTreeMap::new();
    let mut statuses: BTreeMap<String, usize> = BTreeMap::new();
    for v in results {
        *statuses
            .entry(v["incident_status"].as_str().unwrap_or("?").to_string())
            .or_default() += 1;
        for s in v["servers"].as_array().into_iter().flatten() {
            *per_server
                .entry(s["evacuate_actions"].as_u64().unwrap_or(0))
                .or_default() += 1;
        }
    }
    let servers: usize = per_server.values().sum();
    println!(
        "\nSUMMARY {} for {} s at {}, {} run(s) ({} without a result): {servers} servers; \
         evacuate actions per server {:?}; incidents {:?}; double evacuations {}, \
         false reports {}, unexplained {}",
        a.fault,
        a.seconds,
        a.at,
        results.len(),
        broken,
        per_server,
        statuses,
        n("double_evacuations"),
        n("false_reports"),
        n("unexplained")
    );
    if broken > 0 || n("double_evacuations") + n("false_reports") + n("unexplained") > 0 {
        bail!("the chaos scenario broke a rule in some run (see above)");
    }
    Ok(())
}
