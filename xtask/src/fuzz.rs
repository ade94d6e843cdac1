//! `cargo xtask fuzz [--seconds N] [--target NAME]`: builds the fuzz targets
//! (fuzz/, cargo fuzz on the pinned nightly, address sanitizer, overflow
//! checks) and runs each one for N seconds from its seeds (fuzz/seeds/NAME).
//! New inputs go to target/fuzz-corpus/NAME (outside the repository); a
//! crash is saved in fuzz/artifacts/NAME and fails the run, naming it.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;

use crate::{cmd, ebpf::NIGHTLY};

/// Every target in fuzz/Cargo.toml.
pub const TARGETS: &[&str] = &[
    "heartbeat",
    "decider_config",
    "clouds_yaml",
    "nova_json",
    "redfish_json",
    "kdump_datagram",
];

#[derive(Debug, Parser)]
#[command(name = "cargo xtask fuzz")]
pub struct Args {
    /// How long each target runs.
    #[arg(long, default_value_t = 60)]
    pub seconds: u64,
    /// Run only this target (default: every one).
    #[arg(long)]
    pub target: Option<String>,
    /// Unoptimized build without the address sanitizer: builds in a fraction
    /// of the time, runs slower (what `cargo xtask test` uses). The targets
    /// are safe Rust; overflow and debug assertions are checked either way.
    #[arg(long)]
    pub quick: bool,
}

pub fn run(args: &[String]) -> Result<()> {
    let a = Args::try_parse_from(std::iter::once("fuzz".to_string()).chain(args.iter().cloned()))?;
    let targets: Vec<&str> = match &a.target {
        Some(t) if TARGETS.contains(&t.as_str()) => vec![t.as_str()],
        Some(t) => bail!(
            "no fuzz target {t:?}; the targets are {}",
            TARGETS.join(", ")
        ),
        None => TARGETS.to_vec(),
    };
    fuzz(
        &targets,
        Duration::from_secs(a.seconds.clamp(1, 24 * 3600)),
        a.quick,
    )
}

/// Builds every target once, then runs each for `each`.
pub fn fuzz(targets: &[&str], each: Duration, quick: bool) -> Result<()> {
    let profile: &[&str] = if quick {
        &["--dev", "--sanitizer", "none"]
    } else {
        &[]
    };
    if !cmd::succeeds(Command::new("cargo").args(["fuzz", "--version"])) {
        bail!("cargo-fuzz is not installed; run `cargo xtask setup`");
    }
    let root = crate::root();
    let t = Instant::now();
    cmd::step(
        &format!("building the fuzz targets (cargo +{NIGHTLY} fuzz build)"),
        Command::new("cargo")
            .current_dir(&root)
            .args([
                &format!("+{NIGHTLY}"),
                "fuzz",
                "build",
                "--fuzz-dir",
                "fuzz",
            ])
            .args(profile),
    )?;
    let build = t.elapsed();
    let mut ran = Vec::new();
    for target in targets {
        let t = Instant::now();
        let corpus = root.join("target/fuzz-corpus").join(target);
        std::fs::create_dir_all(&corpus)
            .with_context(|| format!("creating {}", corpus.display()))?;
        let seeds = root.join("fuzz/seeds").join(target);
        let artifacts = root.join("fuzz/artifacts").join(target);
        std::fs::create_dir_all(&artifacts)
            .with_context(|| format!("creating {}", artifacts.display()))?;
        let r = cmd::step(
            &format!("fuzzing {target} for {} s", each.as_secs()),
            Command::new("cargo")
                .current_dir(&root)
                .args([&format!("+{NIGHTLY}"), "fuzz", "run", "--fuzz-dir", "fuzz"])
                .args(profile)
                .args([target])
                .arg(&corpus)
                .arg(&seeds)
                .arg("--")
                .arg(format!("-max_total_time={}", each.as_secs()))
                .arg(format!("-artifact_prefix={}/", artifacts.display()))
                // Inputs stay small (a heartbeat is capped at 256 KiB on the
                // wire, configs are a few KiB) and the run stays quiet.
                .args([
                    "-max_len=65536",
                    "-rss_limit_mb=2048",
                    "-print_final_stats=1",
                ]),
        );
        if let Err(e) = r {
            bail!(
                "fuzz target {target} found a failure: {e:#}; the input is in {}; reproduce with `cargo +{NIGHTLY} fuzz run --fuzz-dir fuzz {target} FILE`",
                artifacts.display()
            );
        }
        ran.push((target, t.elapsed(), count(&corpus)));
    }
    println!("fuzz: build {:.0} s", build.as_secs_f64());
    for (target, took, corpus) in ran {
        println!(
            "fuzz: {target}: {:.0} s, nothing found, corpus {corpus} inputs",
            took.as_secs_f64()
        );
    }
    Ok(())
}

fn count(dir: &Path) -> usize {
    std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}
