//! `cargo xtask lab …`: runs the lab's one entry point, `tests/lab/lab`, with
//! the same arguments (see tests/lab/README.md).
//!
//! The lab is a program of its own (Python, root, long-running steps with
//! their own progress output), so this task replaces the xtask process with
//! it: its exit status, output and Ctrl-C behave as if it were run directly.

use std::os::unix::process::CommandExt;
use std::process::Command;

use anyhow::{bail, Result};

pub fn run(args: &[String]) -> Result<()> {
    let lab = crate::root().join("tests/lab/lab");
    if !lab.exists() {
        bail!(
            "{} does not exist; is this a Vigil checkout?",
            lab.display()
        );
    }
    if args.is_empty() {
        bail!("usage: cargo xtask lab up|down|purge|status|fault|boot|servers|sensor|info … (`cargo xtask lab --help`)");
    }
    // exec only returns on failure.
    let err = Command::new(&lab).args(args).exec();
    bail!("could not run {}: {err}", lab.display())
}
