//! `vigil_nova::NovaClient` as the engine's [`NovaSource`]: its types become
//! ours here, so the engine never sees Nova's JSON shapes.

use crate::config::NovaConfig;
use crate::witness::{ChangedServer, ComputeService, NovaSource, ServerOnHost, WitnessError};
use futures::future::BoxFuture;
use futures::FutureExt;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};
use tokio::sync::Mutex;
use tracing::warn;
use vigil_nova::{ClientOptions, CloudConfig, NovaClient, SearchPath};

/// Builds the client from `clouds.yaml`/`OS_*` (`vars` is the environment,
/// passed in so tests need no `set_var`). It does not contact Nova: an
/// unreachable Nova at start is evidence, not a reason to refuse to start.
pub fn client(cfg: &NovaConfig, mut vars: BTreeMap<String, String>) -> anyhow::Result<NovaClient> {
    use anyhow::Context;
    if let Some(cloud) = &cfg.cloud {
        vars.insert("OS_CLOUD".to_string(), cloud.clone());
    }
    let search = SearchPath::standard(&vars);
    let cloud = CloudConfig::load_from(&vars, &search)
        .context("loading OpenStack credentials for Nova (set nova.cloud / OS_CLOUD with a clouds.yaml, or OS_* variables; or nova.enabled = false)")?;
    let mut opts = ClientOptions {
        request_timeout: cfg.request_timeout,
        ..ClientOptions::default()
    };
    // The poller polls again within a second: one try per poll keeps the
    // staleness measurement on schedule instead of waiting in backoff.
    opts.retry.attempts = 1;
    NovaClient::new(cloud, opts).context("building the Nova client")
}

/// The recovery workflow's own client: the same credentials, but the client's
/// default bounded retries (a disable or evacuate should ride out one blip;
/// the client never repeats a non-idempotent call whose outcome is unknown)
/// and a longer request timeout (evacuate and os-services PUTs take seconds
/// on a busy control plane).
pub fn recovery_client(
    cfg: &NovaConfig,
    mut vars: BTreeMap<String, String>,
) -> anyhow::Result<NovaClient> {
    use anyhow::Context;
    if let Some(cloud) = &cfg.cloud {
        vars.insert("OS_CLOUD".to_string(), cloud.clone());
    }
    let search = SearchPath::standard(&vars);
    let cloud = CloudConfig::load_from(&vars, &search)
        .context("loading OpenStack credentials for recovery (nova.cloud / OS_CLOUD with a clouds.yaml, or OS_* variables)")?;
    let opts = ClientOptions {
        request_timeout: cfg.request_timeout.max(std::time::Duration::from_secs(30)),
        // Disabling a compute Nova still counts as up makes Nova save the
        // change, then wait on an RPC to the dead compute (60 s) before it
        // answers. The client reads the service back after this instead;
        // Nova saves first, so a short wait costs nothing, and a change not
        // saved yet is sent again. 500 ms instead of 2 s: it sits between a
        // node's `dead` and its fence.
        service_update_timeout: std::time::Duration::from_millis(500),
        ..ClientOptions::default()
    };
    NovaClient::new(cloud, opts).context("building the recovery Nova client")
}

/// How often the hypervisors' `host_ip`s are read again: they change only
/// when a host is re-addressed, while services are polled every second.
const HOST_IPS_REFRESH: Duration = Duration::from_secs(600);
/// A host missing from the last read is looked for again after this.
const HOST_IPS_RETRY: Duration = Duration::from_secs(60);
/// The hypervisor listing rides on a service poll; it must not hold up the
/// staleness measurement for long.
const HOST_IPS_TIMEOUT: Duration = Duration::from_secs(3);

/// The decider's Nova witness: the client, plus each host's `host_ip` from
/// `os-hypervisors` (the management address to ping when none is
/// configured), read now and then beside the service poll.
pub struct NovaWitnessClient {
    client: NovaClient,
    /// For `changes-since` only: its own connection pool and token, so
    /// that listing never holds a connection or the token lock the
    /// `os-services` poll is waiting for. `None` when it cannot be built;
    /// then changes are not asked (the sweep still lists every host).
    changes: Option<NovaClient>,
    host_ips: Mutex<HostIps>,
}

#[derive(Default)]
struct HostIps {
    by_host: BTreeMap<String, IpAddr>,
    read_at: Option<Instant>,
    /// The last failure, logged once until a read succeeds.
    failing: bool,
}

impl NovaWitnessClient {
    pub fn new(client: NovaClient) -> Self {
        let changes = NovaClient::new(client.config().clone(), client.options().clone())
            .map_err(|e| warn!(error = %e, "cannot build the Nova client for changes-since; new servers' addresses wait for the instance sweep"))
            .ok();
        NovaWitnessClient {
            client,
            changes,
            host_ips: Mutex::new(HostIps::default()),
        }
    }

    /// `host_ip` per compute host, read again when stale or when `hosts`
    /// names one not seen. A failed read keeps the last map and is logged:
    /// pings of configured addresses and every other witness go on.
    async fn host_ips(&self, hosts: &[&str]) -> BTreeMap<String, IpAddr> {
        let mut h = self.host_ips.lock().await;
        let age = h.read_at.map(|t| t.elapsed());
        let missing = hosts.iter().any(|n| !h.by_host.contains_key(*n));
        let due = match age {
            None => true,
            Some(a) => a >= HOST_IPS_REFRESH || (missing && a >= HOST_IPS_RETRY),
        };
        if due {
            h.read_at = Some(Instant::now());
            match tokio::time::timeout(HOST_IPS_TIMEOUT, self.client.list_hypervisors()).await {
                Ok(Ok(list)) => {
                    h.by_host = list
                        .into_iter()
                        .filter_map(|v| {
                            Some((v.service_host.unwrap_or(v.hypervisor_hostname), v.host_ip?))
                        })
                        .collect();
                    h.failing = false;
                }
                Ok(Err(e)) if !h.failing => {
                    h.failing = true;
                    warn!(error = %e, "cannot read the hypervisors' host_ip from Nova; hosts without configured management addresses are not pinged until it works");
                }
                Err(_) if !h.failing => {
                    h.failing = true;
                    warn!(after = %humantime::format_duration(HOST_IPS_TIMEOUT), "no answer listing Nova's hypervisors (host_ip); retrying later");
                }
                _ => {}
            }
        }
        h.by_host.clone()
    }
}

impl NovaSource for NovaWitnessClient {
    fn list_compute_services(&self) -> BoxFuture<'_, Result<Vec<ComputeService>, WitnessError>> {
        async move {
            let list =
                self.client
                    .list_compute_services()
                    .await
                    .map_err(|e| WitnessError::Failed {
                        what: "listing Nova's compute services".to_string(),
                        source: Box::new(e),
                    })?;
            let hosts: Vec<&str> = list.iter().map(|s| s.host.as_str()).collect();
            let ips = self.host_ips(&hosts).await;
            Ok(list
                .into_iter()
                .map(|s| ComputeService {
                    host_ip: ips.get(&s.host).copied(),
                    id: s.id,
                    host: s.host,
                    state: format!("{:?}", s.state).to_lowercase(),
                    status: format!("{:?}", s.status).to_lowercase(),
                    forced_down: s.forced_down,
                    disabled_reason: s.disabled_reason,
                    updated_at: s.updated_at,
                })
                .collect())
        }
        .boxed()
    }

    fn list_servers_on_host<'a>(
        &'a self,
        host: &'a str,
    ) -> BoxFuture<'a, Result<Vec<ServerOnHost>, WitnessError>> {
        async move {
            let list =
                self.client
                    .list_servers_on_host(host)
                    .await
                    .map_err(|e| WitnessError::Failed {
                        what: format!("listing servers on host {host}"),
                        source: Box::new(e),
                    })?;
            Ok(list
                .into_iter()
                .map(|s| ServerOnHost {
                    id: s.id,
                    name: s.name,
                    status: s.status_text,
                    addresses: s.addresses.iter().map(|a| a.ip).collect(),
                })
                .collect())
        }
        .boxed()
    }

    fn changed_servers<'a>(
        &'a self,
        since: &'a str,
    ) -> BoxFuture<'a, Result<Vec<ChangedServer>, WitnessError>> {
        async move {
            let Some(client) = &self.changes else {
                return Ok(Vec::new());
            };
            let list = client
                .list_servers(&vigil_nova::ServerQuery {
                    extra: vec![("changes-since".into(), since.to_string())],
                    ..vigil_nova::ServerQuery::default()
                })
                .await
                .map_err(|e| WitnessError::Failed {
                    what: format!("listing servers changed since {since}"),
                    source: Box::new(e),
                })?;
            // A server not placed yet has no host: its placement is a new
            // `updated`, seen by a later ask.
            Ok(list
                .into_iter()
                .filter_map(|s| {
                    Some(ChangedServer {
                        host: s.host?,
                        updated: s.updated.unwrap_or_default(),
                        id: s.id,
                    })
                })
                .collect())
        }
        .boxed()
    }
}
