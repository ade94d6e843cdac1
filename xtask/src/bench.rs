//! `cargo xtask bench sensor|decider|recovery`: benchmarks that print figures.

use anyhow::{bail, Result};

pub fn run(args: &[String]) -> Result<()> {
    match args.first().map(String::as_str) {
        Some(which @ ("sensor" | "decider" | "recovery")) => {
            bail!("bench {which}: not yet implemented")
        }
        _ => bail!("usage: cargo xtask bench sensor|decider|recovery"),
    }
}
