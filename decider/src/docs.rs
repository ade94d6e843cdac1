//! Man pages and shell completions generated from the real clap definitions,
//! so what the package installs cannot drift from what the binary accepts.
//! `cargo xtask package` runs the hidden `vigil-decider generate-docs --out DIR`.
//! (The sensor has the same few lines: sharing them would mean a crate both
//! binaries depend on just for this.)

use anyhow::Context;
use clap_complete::Shell;
use std::path::Path;

/// Writes `DIR/man/*.1` (the command and each visible subcommand) and
/// `DIR/completions/` for bash, zsh and fish.
pub fn write(cmd: clap::Command, out: &Path) -> anyhow::Result<()> {
    let man = out.join("man");
    let completions = out.join("completions");
    for dir in [&man, &completions] {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    clap_mangen::generate_to(cmd.clone(), &man)
        .with_context(|| format!("writing man pages to {}", man.display()))?;
    let mut cmd = cmd;
    let name = cmd.get_name().to_string();
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        clap_complete::generate_to(shell, &mut cmd, &name, &completions)
            .with_context(|| format!("writing {shell} completions to {}", completions.display()))?;
    }
    Ok(())
}
