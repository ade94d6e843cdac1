//! `cargo xtask lab …`: runs the lab's one entry point, `tests/lab/lab`.
//! (Placeholder until the lab lands; the lab's owner replaces this file.)

use anyhow::{bail, Result};

pub fn run(args: &[String]) -> Result<()> {
    let lab = crate::root().join("tests/lab/lab");
    if !lab.exists() {
        bail!("the lab is not built yet: {} does not exist", lab.display());
    }
    crate::cmd::run(std::process::Command::new(lab).args(args))
}
