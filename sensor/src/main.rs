//! The `vigil-sensor` binary: parse arguments, set up logging, call the library.

use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser as _;
use vigil_sensor::{
    cli::{Cli, Command},
    probe, run,
};

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Logs go to stderr (or journald) only: the sensor does no file I/O
    // of its own.
    vigil_sensor::logging::init(cli.log_format, &cli.log);
    match real_main(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("vigil-sensor: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn real_main(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Run(args) => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                // Small stacks: with mlockall every stack page is resident.
                .thread_stack_size(256 * 1024)
                .max_blocking_threads(2)
                .build()
                .context("starting the async runtime")?;
            rt.block_on(run::run(*args, shutdown_signal()))
                .context("vigil-sensor run")?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Probe(args) => {
            let json = args.json;
            let sample = probe::probe(&args).context("vigil-sensor probe")?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&sample).context("encoding JSON")?
                );
            } else {
                print!("{}", probe::render_table(&sample));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::GenerateDocs { out } => {
            vigil_sensor::docs::write(<Cli as clap::CommandFactory>::command(), &out)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::BenchSwitch(args) => {
            vigil_sensor::bench::run(&args).context("vigil-sensor bench-switch")?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Completes on SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            // Without signal handlers, Ctrl-C via tokio's helper is all we have.
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
