//! `vigil_ping::Pinger` as the engine's [`Prober`].

use crate::config::PingConfig;
use crate::witness::{Prober, WitnessError};
use futures::future::BoxFuture;
use futures::FutureExt;
use std::net::IpAddr;
use std::time::Duration;
use vigil_ping::{Outcome, Pinger};

/// Opens the ICMP sockets (needs root or CAP_NET_RAW, or a ping group range
/// that includes the decider's group). Must run inside the tokio runtime.
pub fn pinger(cfg: &PingConfig) -> anyhow::Result<Pinger> {
    use anyhow::Context;
    Pinger::new(vigil_ping::PingConfig {
        timeout: cfg.timeout,
        concurrency: cfg.concurrency,
        ..vigil_ping::PingConfig::default()
    })
    .context("opening ICMP sockets for the ping witness (or set ping.enabled = false, and leave \"ping\" out of policy.required_for_dead)")
}

impl Prober for Pinger {
    fn probe(
        &self,
        address: IpAddr,
        _timeout: Duration,
    ) -> BoxFuture<'_, Result<Option<Duration>, WitnessError>> {
        // The pinger applies the timeout it was built with (ping.timeout).
        async move {
            let p = Pinger::probe(self, address).await;
            match p.outcome {
                Outcome::Answered { rtt } => Ok(Some(rtt)),
                // An ICMP error (host unreachable: neighbour discovery failed)
                // is as much "no answer" as a timeout.
                Outcome::Timeout | Outcome::IcmpError { .. } => Ok(None),
                Outcome::Failed { error } => Err(WitnessError::Failed {
                    what: format!("probing {address}"),
                    source: error.into(),
                }),
            }
        }
        .boxed()
    }
}
