//! `cargo xtask build-ebpf`: the eBPF object, on the pinned nightly.
//!
//! The nightly's LLVM major must equal bpf-linker's (22 here, Debian's
//! llvm-22-dev); a newer nightly fails in bpf-linker with "Invalid record".
//! See ARCHITECTURE.md for the upgrade path.

use std::process::Command;

use anyhow::{Context, Result};

use crate::cmd;

pub const NIGHTLY: &str = "nightly-2026-06-20";
pub const BPF_TARGET: &str = "bpfel-unknown-none";

pub fn object_path() -> std::path::PathBuf {
    crate::root()
        .join("sensor-ebpf/target")
        .join(BPF_TARGET)
        .join("release/vigil-sensor-ebpf")
}

pub fn build() -> Result<()> {
    let dir = crate::root().join("sensor-ebpf");
    let mut c = Command::new("cargo");
    c.current_dir(&dir)
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("CARGO")
        .env_remove("RUSTC")
        .env("RUSTFLAGS", "-C debuginfo=2 -C link-arg=--btf")
        .args([
            &format!("+{NIGHTLY}"),
            "build",
            "-Z",
            "build-std=core",
            "--target",
            BPF_TARGET,
            "--release",
        ]);
    cmd::step("building the eBPF object (sensor-ebpf, nightly + bpf-linker)", &mut c).with_context(|| {
        format!(
            "eBPF build failed in {}; if a tool is missing run `cargo xtask setup` (needs {NIGHTLY} with rust-src and bpf-linker built for LLVM 22)",
            dir.display()
        )
    })?;
    let obj = object_path();
    let len = std::fs::metadata(&obj)
        .with_context(|| {
            format!(
                "eBPF build reported success but {} is missing",
                obj.display()
            )
        })?
        .len();
    println!("    eBPF object: {} ({} KiB)", obj.display(), len / 1024);
    Ok(())
}
