//! `vigil-ping`: probe addresses the way Vigil's decider does.
//!
//! Prints one JSON document: the socket kinds in use and, per address,
//! whether it answered, the RTT and the outcome. Exit 0 when every address
//! answered, 1 when some did not, 2 when the pinger could not start (e.g.
//! no CAP_NET_RAW).

use std::net::IpAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use serde_json::json;
use vigil_ping::{Outcome, PingConfig, Pinger, SocketKind};

#[derive(Parser)]
#[command(
    name = "vigil-ping",
    version,
    about = "ICMP echo probes as Vigil's decider sends them"
)]
struct Cli {
    /// Per-probe timeout.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// Probes in flight at once.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Rounds (each probes every address once).
    #[arg(long, default_value_t = 1)]
    count: u32,
    #[arg(required = true)]
    addrs: Vec<IpAddr>,
}

fn kind(k: SocketKind) -> &'static str {
    match k {
        SocketKind::Raw => "raw",
        SocketKind::Datagram => "datagram",
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let pinger = match Pinger::new(PingConfig {
        timeout: cli.timeout,
        concurrency: cli.concurrency,
        ..PingConfig::default()
    }) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("vigil-ping: {e}");
            return ExitCode::from(2);
        }
    };
    let (v4, v6) = pinger.socket_kinds();
    let mut rounds = Vec::new();
    let mut all = true;
    for _ in 0..cli.count.max(1) {
        let probes = pinger.probe_all(cli.addrs.iter().copied()).await;
        all &= probes.iter().all(|p| p.answered());
        rounds.push(
            probes
                .iter()
                .map(|p| {
                    json!({
                        "addr": p.addr.to_string(),
                        "answered": p.answered(),
                        "rtt_ms": p.rtt().map(|r| r.as_secs_f64() * 1e3),
                        "elapsed_ms": p.elapsed.as_secs_f64() * 1e3,
                        "outcome": match &p.outcome {
                            Outcome::Answered { .. } => "answered",
                            Outcome::Timeout => "timeout",
                            Outcome::IcmpError { .. } => "icmp-error",
                            Outcome::Failed { .. } => "failed",
                        },
                        "detail": p.describe(),
                    })
                })
                .collect::<Vec<_>>(),
        );
    }
    let doc = json!({
        "socket": {"v4": kind(v4), "v6": v6.map(kind)},
        "timeout_ms": cli.timeout.as_secs_f64() * 1e3,
        "rounds": rounds,
    });
    println!(
        "{}",
        serde_json::to_string_pretty(&doc).unwrap_or_else(|_| doc.to_string())
    );
    if all {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
