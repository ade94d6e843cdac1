//! The outside witnesses the decider polls, behind traits: Nova's view of the
//! compute services and their instances, and an ICMP prober. The engine and
//! its tests depend on these traits only; `vigil-nova` and `vigil-ping`
//! provide the real ones (see `serve.rs`), tests provide scripted ones.

use futures::future::BoxFuture;
use std::net::IpAddr;
use std::time::Duration;
use thiserror::Error;

/// One nova-compute service as `os-services` lists it, in our own terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComputeService {
    pub id: String,
    pub host: String,
    /// `up`, `down`, or something else Nova may say.
    pub state: String,
    /// `enabled` or `disabled`.
    pub status: String,
    pub forced_down: bool,
    pub disabled_reason: Option<String>,
    /// Nova's `updated_at` string, compared only with its own earlier values.
    pub updated_at: Option<String>,
    /// The hypervisor's `host_ip` (`os-hypervisors`): the management address
    /// pinged for a node that has none configured or enrolled.
    pub host_ip: Option<IpAddr>,
}

/// One server on a host (all tenants).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerOnHost {
    pub id: String,
    pub name: String,
    pub status: String,
    pub addresses: Vec<IpAddr>,
}

/// A server Nova changed lately (`changes-since`), and where it is now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangedServer {
    pub id: String,
    /// Nova's `updated`: a new value is a new change.
    pub updated: String,
    pub host: String,
}

/// A witness could not answer. Never evidence of a node's death.
#[derive(Debug, Error)]
pub enum WitnessError {
    /// The call failed; `what` names the call and its target.
    #[error("{what}: {source}")]
    Failed {
        what: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The call did not finish within its deadline.
    #[error("{what}: no answer within {}", humantime::format_duration(*.after))]
    Timeout { what: String, after: Duration },
}

/// Nova, as far as the decider's judgment needs it.
pub trait NovaSource: Send + Sync + 'static {
    /// Every nova-compute service (`GET /os-services?binary=nova-compute`).
    fn list_compute_services(&self) -> BoxFuture<'_, Result<Vec<ComputeService>, WitnessError>>;
    /// The servers on one host, across all projects, every page.
    fn list_servers_on_host<'a>(
        &'a self,
        host: &'a str,
    ) -> BoxFuture<'a, Result<Vec<ServerOnHost>, WitnessError>>;
    /// Servers Nova changed (booted, moved, status) since `since` (RFC 3339,
    /// `changes-since`), across all projects, with their host. Asked by
    /// `nova_changes` on its own cadence, never by the `os-services` poll.
    /// A source that cannot tell answers nothing.
    fn changed_servers<'a>(
        &'a self,
        _since: &'a str,
    ) -> BoxFuture<'a, Result<Vec<ChangedServer>, WitnessError>> {
        Box::pin(async { Ok(Vec::new()) })
    }
}

/// ICMP echo, as far as the decider needs it.
pub trait Prober: Send + Sync + 'static {
    /// One echo request; `Ok(Some(rtt))` when answered within `timeout`,
    /// `Ok(None)` when not, `Err` when the probe could not be sent at all
    /// (no raw socket, no route): that is unknown, not silence.
    fn probe(
        &self,
        address: IpAddr,
        timeout: Duration,
    ) -> BoxFuture<'_, Result<Option<Duration>, WitnessError>>;
}
