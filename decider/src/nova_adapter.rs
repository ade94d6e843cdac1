//! `vigil_nova::NovaClient` as the engine's [`NovaSource`]: its types become
//! ours here, so the engine never sees Nova's JSON shapes.

use crate::config::NovaConfig;
use crate::witness::{ComputeService, NovaSource, ServerOnHost, WitnessError};
use futures::future::BoxFuture;
use futures::FutureExt;
use std::collections::BTreeMap;
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

impl NovaSource for NovaClient {
    fn list_compute_services(&self) -> BoxFuture<'_, Result<Vec<ComputeService>, WitnessError>> {
        async move {
            let list = NovaClient::list_compute_services(self).await.map_err(|e| {
                WitnessError::Failed {
                    what: "listing Nova's compute services".to_string(),
                    source: Box::new(e),
                }
            })?;
            Ok(list
                .into_iter()
                .map(|s| ComputeService {
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
            let list = NovaClient::list_servers_on_host(self, host)
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
}
