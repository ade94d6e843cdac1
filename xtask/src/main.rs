//! `cargo xtask …`: the project's own commands (setup, eBPF build, tests,
//! lab, demo, benchmarks). Each subcommand lives in its own module.

mod bench;
mod chaos;
mod cmd;
mod container;
mod demo;
mod ebpf;
mod fuzz;
mod lab;
mod package;
mod setup;
mod test;

use std::path::{Path, PathBuf};

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    about = "Vigil's project tasks: setup, build-ebpf, test, fuzz, lab, demo, bench, chaos, package"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install what this machine lacks to build and test Vigil (idempotent;
    /// says what it installs and what it skips). Needs root for apt.
    Setup {
        /// Only report what is missing; install nothing; exit 1 if something is.
        #[arg(long)]
        check: bool,
    },
    /// Build the eBPF object (sensor-ebpf) with the pinned nightly and
    /// bpf-linker; `cargo build` of vigil-sensor then embeds it.
    BuildEbpf {
        /// Accepted for symmetry: the eBPF object is always built optimized,
        /// because the kernel verifier rejects unoptimized BPF code.
        #[arg(long)]
        release: bool,
    },
    /// Run every test: setup if needed, eBPF build, unit tests, and the tests
    /// that need root (eBPF load, network namespaces, the lab).
    Test {
        /// Extra arguments passed to `cargo test` (e.g. a test name filter).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// The lab: real Nova/Keystone, compute nodes in network namespaces, BMCs
    /// (`cargo xtask lab up|down|status|fault|boot|…`; `cargo xtask lab help`).
    Lab {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// The main job: lab up, servers booted, sensors + decider running, one
    /// node loses power, and Vigil fences it and evacuates its servers.
    Demo {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// The Debian packages of both binaries (cargo-deb; release build), with
    /// their systemd units, example config, man pages and completions.
    Package(package::PackageArgs),
    /// The decider as a FROM-scratch container image (podman), from its
    /// .deb: the binary, the libraries ldd lists, the loader, a vigil user.
    Container(container::ContainerArgs),
    /// Fuzz what Vigil reads from outside (heartbeats, the decider config,
    /// clouds.yaml, Nova's and Redfish's JSON): each target for
    /// `--seconds N` (default 60) from the seeds in fuzz/seeds.
    Fuzz {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Benchmarks that print figures: `sensor`, `decider`, `recovery`.
    Bench {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Stalled-Nova scenarios, repeated (root, lab): `nova-api-freeze` or
    /// `nova-conductor-freeze`, `--seconds N --servers N --repeat N`.
    Chaos {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // Errors are printed with their whole cause chain and no backtrace: they
    // are messages for the person at the terminal, not for a debugger.
    match dispatch(cli.command) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn dispatch(command: Command) -> Result<()> {
    match command {
        Command::Setup { check } => setup::run(check),
        Command::BuildEbpf { release: _ } => ebpf::build(),
        Command::Test { args } => test::run(&args),
        Command::Lab { args } => lab::run(&args),
        Command::Demo { args } => demo::run(&args),
        Command::Fuzz { args } => fuzz::run(&args),
        Command::Bench { args } => bench::run(&args),
        Command::Chaos { args } => chaos::run(&args),
        Command::Package(args) => package::run(&args),
        Command::Container(args) => container::run(&args),
    }
}

/// The workspace root: xtask lives one level below it.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}
