//! `cargo xtask test`: every test in the workspace, in two tiers.
//!
//! - unit tier: every crate's unit and in-process tests; runs as anyone.
//! - root tier: tests in `tests/` that load eBPF, make network namespaces or
//!   drive the lab (real Nova, BMC emulators). As root they all run and none
//!   may skip (`VIGIL_REQUIRE_ROOT=1`); as non-root they report SKIPPED, except
//!   under `CI=true`, where a missing prerequisite fails the run.
//! - packages, before the root tier: `package --dev --no-build` of the debug
//!   build just made (target/debian/dev); the root tier runs them
//!   (`VIGIL_PACKAGED`, see tests/src/packaged.rs), so what ships is what is
//!   tested.
//! - fuzz, between the two: every cargo fuzz target for `FUZZ_SECONDS` each
//!   (`cargo xtask fuzz`); without cargo-fuzz it is skipped, except in CI.

use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};

use crate::{cmd, ebpf, fuzz, package, setup};

/// Seconds each fuzz target runs in `cargo xtask test` (`VIGIL_FUZZ_SECONDS`
/// overrides): five targets, under a minute with the build cached.
const FUZZ_SECONDS: u64 = 10;

fn ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

pub fn run(args: &[String]) -> Result<()> {
    let start = Instant::now();
    let root = crate::is_root();
    if root {
        println!("tiers: unit + root (eBPF load, network namespaces, lab) — running as root, nothing may skip");
    } else if ci() {
        bail!("CI=true but not running as root: the root tier (eBPF load, network namespaces, lab) cannot run and CI must not skip it; run as root");
    } else {
        println!(
            "tiers: unit runs now; the root tier (eBPF load, network namespaces, lab) needs root and its tests will report SKIPPED — run `sudo cargo xtask test` for all of them"
        );
    }

    if !setup::complete() {
        if root {
            setup::run(false).context("setup failed; fix the item named above and rerun")?;
        } else {
            println!("warning: setup is incomplete (see above) and installing needs root; continuing with what is present");
        }
    }

    let t = Instant::now();
    match ebpf::build() {
        Ok(()) => {}
        Err(e) if !root && !ci() => println!("warning: {e:#}; eBPF tests will be skipped"),
        Err(e) => return Err(e),
    }
    cmd::step(
        "building workspace binaries",
        Command::new("cargo").args(["build", "--workspace", "--bins"]),
    )?;
    let build_took = t.elapsed();

    // What ships is what is tested: the end-to-end tier runs the packaged
    // files (the lab's sensors with the unit's ExecStart, the harness's
    // deciders likewise), from the debug build just made (cargo-deb
    // --no-build: no second build).
    let t = Instant::now();
    let debs_dir = crate::root().join("target/debian/dev");
    let packaged = match package::make(true, true, Some(debs_dir.clone())) {
        Ok(debs) => {
            println!(
                "end-to-end tier runs the packages (VIGIL_PACKAGED={}): {}",
                debs_dir.display(),
                debs.iter()
                    .map(|d| d.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            Some(debs_dir)
        }
        Err(e) if !root && !ci() => {
            println!("warning: packaging failed ({e:#}); the end-to-end tier runs the build tree");
            None
        }
        Err(e) => return Err(e.context("packaging the debug build for the end-to-end tier")),
    };
    let package_took = t.elapsed();

    let t = Instant::now();
    let mut unit = Command::new("cargo");
    // --no-fail-fast, and the root tier runs even when the unit tier failed:
    // one CI run (up to 45 min here) then reports every failing test, not
    // only the first binary's.
    unit.args([
        "test",
        "--no-fail-fast",
        "--workspace",
        "--exclude",
        "vigil-tests",
    ])
    .args(args);
    let unit_result = cmd::step(
        "unit tier: cargo test --workspace --exclude vigil-tests",
        &mut unit,
    );
    let unit_took = t.elapsed();

    // Fuzzing, bounded: each target a short while from its seeds (CI must
    // stay under an hour; `cargo xtask fuzz --seconds 600` digs deeper).
    let t = Instant::now();
    let seconds: u64 = std::env::var("VIGIL_FUZZ_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(FUZZ_SECONDS);
    let fuzz_result = if !cmd::succeeds(Command::new("cargo").args(["fuzz", "--version"])) && !ci()
    {
        println!("warning: cargo-fuzz is missing (`cargo xtask setup` installs it); fuzz targets skipped");
        Ok(())
    } else {
        fuzz::fuzz(fuzz::TARGETS, std::time::Duration::from_secs(seconds), true)
    };
    let fuzz_took = t.elapsed();

    let t = Instant::now();
    let mut e2e = Command::new("cargo");
    // One test at a time: the end-to-end tests share one lab and inject faults
    // into its nodes, so running them concurrently would make them interfere.
    e2e.args(["test", "--no-fail-fast", "-p", "vigil-tests"])
        .args(args)
        .args(["--", "--test-threads=1"]);
    if root {
        e2e.env("VIGIL_REQUIRE_ROOT", "1");
    }
    match &packaged {
        Some(dir) => e2e.env("VIGIL_PACKAGED", dir),
        None => e2e.env_remove("VIGIL_PACKAGED"),
    };
    let e2e_result = cmd::step(
        "root tier: cargo test -p vigil-tests (end-to-end)",
        &mut e2e,
    );
    let e2e_took = t.elapsed();
    let failed: Vec<String> = [
        ("unit tier", unit_result),
        ("fuzz", fuzz_result),
        ("root tier", e2e_result),
    ]
    .into_iter()
    .filter_map(|(what, r)| r.err().map(|e| format!("{what}: {e:#}")))
    .collect();
    if !failed.is_empty() {
        bail!("failed: {}", failed.join("; "));
    }

    println!(
        "all tests passed: build {:.0}s, package {:.0}s, unit {:.0}s, fuzz {:.0}s, end-to-end {:.0}s, total {:.0}s",
        build_took.as_secs_f64(),
        package_took.as_secs_f64(),
        unit_took.as_secs_f64(),
        fuzz_took.as_secs_f64(),
        e2e_took.as_secs_f64(),
        start.elapsed().as_secs_f64()
    );
    Ok(())
}
