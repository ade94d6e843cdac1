//! [`NovaEdge`]: the recovery workflow's view of Nova, over `vigil-nova`.
//! Nova's types stop here: everything the workflow sees is its own.
//! [`LazyNova`] connects on first use, so a decider that starts while Nova is
//! down still starts (and judges), and recovery connects when it must act.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::future::BoxFuture;
use vigil_nova::{MigrationQuery, NovaError};
use vigil_recovery::time::Timestamp;
use vigil_recovery::workflow as wf;

/// Adapts a `vigil_nova::NovaActions` (the real client, or a test double) to
/// the workflow's `NovaActions`.
pub struct NovaEdge<N> {
    nova: Arc<N>,
    /// The cloud's highest microversion, read once at start (it only changes
    /// with a Nova upgrade, and a decider restart picks that up).
    max: wf::Microversion,
}

impl<N: vigil_nova::NovaActions + 'static> NovaEdge<N> {
    /// The workflow's view of a server with its image's properties (opt-in
    /// and priority by image property). An image that is gone (404) has none
    /// to give, and the instance's metadata and flavor still decide; any other
    /// failure fails the call, since guessing could evacuate a server that
    /// opted out. `cache` holds the images already read in this call.
    async fn with_image(
        &self,
        s: vigil_nova::Server,
        cache: &mut BTreeMap<String, BTreeMap<String, String>>,
    ) -> Result<wf::Server, wf::NovaCallError> {
        let image = s.image_id.clone().filter(|i| !i.is_empty());
        let mut out = server(s);
        let Some(id) = image else { return Ok(out) };
        if let Some(p) = cache.get(&id) {
            out.image_properties = p.clone();
            return Ok(out);
        }
        let props = match self.nova.image_properties(&id).await {
            Ok(p) => p,
            Err(e) if e.is_not_found() => BTreeMap::new(),
            Err(e) => {
                return Err(call_err(
                    &format!("properties of image {id} (server {})", out.id),
                    e,
                ))
            }
        };
        cache.insert(id, props.clone());
        out.image_properties = props;
        Ok(out)
    }

    /// Reads the cloud's version range once.
    pub async fn new(nova: Arc<N>) -> Result<Self, NovaError> {
        let range = nova.versions().await?;
        let max = wf::Microversion::new(range.max.major, range.max.minor);
        Ok(NovaEdge { nova, max })
    }
}

fn call_err(what: &str, e: NovaError) -> wf::NovaCallError {
    if e.is_not_found() {
        wf::NovaCallError::NotFound {
            what: what.to_string(),
        }
    } else if matches!(
        e,
        NovaError::Unreachable {
            outcome_unknown: true,
            ..
        }
    ) {
        wf::NovaCallError::MaybeApplied {
            what: what.to_string(),
            source: Box::new(e),
        }
    } else if let Some(status) = e.status() {
        wf::NovaCallError::Rejected {
            what: what.to_string(),
            status,
            message: e.to_string(),
        }
    } else {
        wf::NovaCallError::Transport {
            what: what.to_string(),
            source: Box::new(e),
        }
    }
}

fn service(s: vigil_nova::ComputeService) -> wf::ComputeService {
    wf::ComputeService {
        enabled: s.status == vigil_nova::ServiceStatus::Enabled,
        up: s.state == vigil_nova::ServiceState::Up,
        id: s.id,
        host: s.host,
        disabled_reason: s.disabled_reason,
        forced_down: s.forced_down,
    }
}

/// Back to vigil-nova's form for PUT calls (which need id, host and binary).
fn nova_service(s: &wf::ComputeService) -> vigil_nova::ComputeService {
    vigil_nova::ComputeService {
        id: s.id.clone(),
        binary: "nova-compute".into(),
        host: s.host.clone(),
        state: if s.up {
            vigil_nova::ServiceState::Up
        } else {
            vigil_nova::ServiceState::Down
        },
        status: if s.enabled {
            vigil_nova::ServiceStatus::Enabled
        } else {
            vigil_nova::ServiceStatus::Disabled
        },
        forced_down: s.forced_down,
        updated_at: None,
        disabled_reason: s.disabled_reason.clone(),
        zone: None,
    }
}

fn server(s: vigil_nova::Server) -> wf::Server {
    let status = match s.status {
        vigil_nova::ServerStatus::Active => wf::ServerStatus::Active,
        vigil_nova::ServerStatus::Error => wf::ServerStatus::Error,
        vigil_nova::ServerStatus::Shutoff => wf::ServerStatus::Shutoff,
        _ => wf::ServerStatus::Other(s.status_text.clone()),
    };
    wf::Server {
        id: s.id,
        name: s.name,
        project_id: s.tenant_id.unwrap_or_default(),
        host: s.host,
        status,
        task_state: s.task_state,
        metadata: s.metadata,
        flavor_extra_specs: s.flavor.extra_specs,
        // Filled by `NovaEdge::with_image` when the host's servers are
        // listed for selection (one call per image).
        image_properties: BTreeMap::new(),
        fault: s.fault.and_then(|f| f.message),
        updated: s.updated,
    }
}

fn migration(m: vigil_nova::Migration) -> wf::Migration {
    wf::Migration {
        id: m.uuid.or(m.id).unwrap_or_default(),
        status: m.status.unwrap_or_default(),
        source_compute: m.source_compute,
        dest_compute: m.dest_compute,
        created_at: timestamp(m.created_at.as_deref()),
    }
}

/// `evacuate` actions started at or after `since`. An action without a
/// readable start time counts: over-counting only costs a retry,
/// under-counting could evacuate twice.
fn evacuate_actions_since(actions: &[vigil_nova::InstanceAction], since: Timestamp) -> u32 {
    let n = actions
        .iter()
        .filter(|a| {
            a.action == "evacuate" && timestamp(a.start_time.as_deref()).is_none_or(|t| t >= since)
        })
        .count();
    u32::try_from(n).unwrap_or(u32::MAX)
}

fn timestamp(s: Option<&str>) -> Option<Timestamp> {
    vigil_nova::types::parse_nova_time(s?).map(Timestamp::from_system)
}

impl<N: vigil_nova::NovaActions + 'static> wf::NovaActions for NovaEdge<N> {
    fn max_microversion(&self) -> wf::Microversion {
        self.max
    }

    fn compute_service(
        &self,
        host: &str,
    ) -> BoxFuture<'_, Result<wf::ComputeService, wf::NovaCallError>> {
        let host = host.to_string();
        Box::pin(async move {
            let what = format!("nova-compute service of {host}");
            let all = self
                .nova
                .list_compute_services()
                .await
                .map_err(|e| call_err(&what, e))?;
            all.into_iter()
                .find(|s| s.host == host && s.binary == "nova-compute")
                .map(service)
                .ok_or(wf::NovaCallError::NotFound { what })
        })
    }

    fn compute_services(
        &self,
    ) -> BoxFuture<'_, Result<Vec<wf::ComputeService>, wf::NovaCallError>> {
        Box::pin(async move {
            let all = self
                .nova
                .list_compute_services()
                .await
                .map_err(|e| call_err("compute services", e))?;
            Ok(all
                .into_iter()
                .filter(|s| s.binary == "nova-compute")
                .map(service)
                .collect())
        })
    }

    fn disable_service<'a>(
        &'a self,
        s: &'a wf::ComputeService,
        reason: &'a str,
    ) -> BoxFuture<'a, Result<(), wf::NovaCallError>> {
        Box::pin(async move {
            self.nova
                .disable_service(&nova_service(s), reason)
                .await
                .map_err(|e| call_err("disable service", e))
        })
    }

    fn enable_service<'a>(
        &'a self,
        s: &'a wf::ComputeService,
    ) -> BoxFuture<'a, Result<(), wf::NovaCallError>> {
        Box::pin(async move {
            self.nova
                .enable_service(&nova_service(s))
                .await
                .map_err(|e| call_err("enable service", e))
        })
    }

    fn set_forced_down<'a>(
        &'a self,
        s: &'a wf::ComputeService,
        down: bool,
    ) -> BoxFuture<'a, Result<(), wf::NovaCallError>> {
        Box::pin(async move {
            self.nova
                .set_forced_down(&nova_service(s), down)
                .await
                .map_err(|e| call_err("set forced_down", e))
        })
    }

    fn servers_on_host<'a>(
        &'a self,
        host: &'a str,
    ) -> BoxFuture<'a, Result<Vec<wf::Server>, wf::NovaCallError>> {
        Box::pin(async move {
            let v = self
                .nova
                .list_servers_on_host(host)
                .await
                .map_err(|e| call_err("servers on host", e))?;
            let mut images = BTreeMap::new();
            let mut out = Vec::with_capacity(v.len());
            for s in v {
                out.push(self.with_image(s, &mut images).await?);
            }
            Ok(out)
        })
    }

    fn server<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<wf::Server, wf::NovaCallError>> {
        Box::pin(async move {
            // No image properties here: this is the verify poll's call
            // (every few seconds per moving server), and only selection,
            // which lists the host's servers, reads them.
            self.nova
                .get_server(id)
                .await
                .map(server)
                .map_err(|e| call_err(&format!("server {id}"), e))
        })
    }

    fn evacuate<'a>(
        &'a self,
        id: &'a str,
        request: &'a wf::EvacuateRequest,
    ) -> BoxFuture<'a, Result<(), wf::NovaCallError>> {
        Box::pin(async move {
            let mv = vigil_nova::Microversion::new(
                request.microversion.major,
                request.microversion.minor,
            );
            // force stays false: Nova's scheduler validates a named host.
            let req = vigil_nova::EvacuateRequest {
                host: request.host.clone(),
                ..Default::default()
            };
            self.nova
                .evacuate(id, &req, mv)
                .await
                .map(|_| ())
                .map_err(|e| call_err(&format!("evacuate {id}"), e))
        })
    }

    fn evacuation_migrations<'a>(
        &'a self,
        id: &'a str,
    ) -> BoxFuture<'a, Result<Vec<wf::Migration>, wf::NovaCallError>> {
        Box::pin(async move {
            let v = self
                .nova
                .list_migrations(&MigrationQuery::evacuations_of(id))
                .await
                .map_err(|e| call_err("evacuation migrations", e))?;
            let mut out: Vec<wf::Migration> = v.into_iter().map(migration).collect();
            out.sort_by_key(|m| m.created_at);
            Ok(out)
        })
    }

    fn evacuate_action_count<'a>(
        &'a self,
        id: &'a str,
        since: Timestamp,
    ) -> BoxFuture<'a, Result<u32, wf::NovaCallError>> {
        Box::pin(async move {
            let v = self
                .nova
                .list_instance_actions(id)
                .await
                .map_err(|e| call_err("instance actions", e))?;
            Ok(evacuate_actions_since(&v, since))
        })
    }

    fn reset_state<'a>(
        &'a self,
        id: &'a str,
        to: wf::ResetTo,
    ) -> BoxFuture<'a, Result<(), wf::NovaCallError>> {
        Box::pin(async move {
            let state = match to {
                wf::ResetTo::Error => vigil_nova::ResetState::Error,
                wf::ResetTo::Active => vigil_nova::ResetState::Active,
            };
            self.nova
                .reset_state(id, state)
                .await
                .map_err(|e| call_err("reset state", e))
        })
    }

    fn host_aggregates<'a>(
        &'a self,
        host: &'a str,
    ) -> BoxFuture<'a, Result<Vec<wf::Aggregate>, wf::NovaCallError>> {
        Box::pin(async move {
            let v = self
                .nova
                .list_aggregates()
                .await
                .map_err(|e| call_err("aggregates", e))?;
            Ok(v.into_iter()
                .filter(|a| a.hosts.iter().any(|h| h == host))
                .map(|a| wf::Aggregate {
                    id: a.id,
                    name: a.name,
                    hosts: a.hosts,
                })
                .collect())
        })
    }

    fn add_host_to_aggregate<'a>(
        &'a self,
        aggregate: &'a wf::Aggregate,
        host: &'a str,
    ) -> BoxFuture<'a, Result<(), wf::NovaCallError>> {
        Box::pin(async move {
            match self.nova.aggregate_add_host(&aggregate.id, host).await {
                Ok(_) => Ok(()),
                // 409: already a member, which is what we wanted.
                Err(e) if e.is_conflict() => Ok(()),
                Err(e) => Err(call_err("add host to aggregate", e)),
            }
        })
    }
}

/// Builds the workflow's Nova on demand (reads the cloud's versions, so it
/// needs Nova to answer). `Err` says why it could not.
pub type NovaConnect =
    Arc<dyn Fn() -> BoxFuture<'static, Result<Arc<dyn wf::NovaActions>, String>> + Send + Sync>;

/// The workflow's Nova, connected on first use and kept.
pub struct LazyNova {
    connect: NovaConnect,
    inner: tokio::sync::OnceCell<Arc<dyn wf::NovaActions>>,
}

impl LazyNova {
    pub fn new(connect: NovaConnect) -> Self {
        LazyNova {
            connect,
            inner: tokio::sync::OnceCell::new(),
        }
    }

    /// Already connected: the same edge, never a second connection.
    pub fn connected(nova: Arc<dyn wf::NovaActions>) -> Self {
        let connect: NovaConnect = {
            let nova = nova.clone();
            Arc::new(move || {
                let nova = nova.clone();
                Box::pin(async move { Ok(nova) })
            })
        };
        LazyNova {
            connect,
            inner: tokio::sync::OnceCell::new_with(Some(nova)),
        }
    }

    /// Connects now if not yet connected.
    pub async fn ready(&self) -> Result<&Arc<dyn wf::NovaActions>, wf::NovaCallError> {
        self.inner
            .get_or_try_init(|| (self.connect)())
            .await
            .map_err(|e| wf::NovaCallError::Transport {
                what: "connecting to Nova for recovery".to_string(),
                source: e.into(),
            })
    }
}

impl wf::NovaActions for LazyNova {
    fn max_microversion(&self) -> wf::Microversion {
        // Every workflow run reads the node's service before anything asks
        // for the microversion, which connects. Unconnected, the lowest
        // version that still validates a named host is the safe answer: it
        // never makes an evacuated server land stopped (2.95+).
        self.inner
            .get()
            .map_or(wf::Microversion::HOST_VALIDATED, |n| n.max_microversion())
    }

    fn compute_service(
        &self,
        host: &str,
    ) -> BoxFuture<'_, Result<wf::ComputeService, wf::NovaCallError>> {
        let host = host.to_string();
        Box::pin(async move { self.ready().await?.compute_service(&host).await })
    }

    fn compute_services(
        &self,
    ) -> BoxFuture<'_, Result<Vec<wf::ComputeService>, wf::NovaCallError>> {
        Box::pin(async move { self.ready().await?.compute_services().await })
    }

    fn disable_service<'a>(
        &'a self,
        s: &'a wf::ComputeService,
        reason: &'a str,
    ) -> BoxFuture<'a, Result<(), wf::NovaCallError>> {
        Box::pin(async move { self.ready().await?.disable_service(s, reason).await })
    }

    fn enable_service<'a>(
        &'a self,
        s: &'a wf::ComputeService,
    ) -> BoxFuture<'a, Result<(), wf::NovaCallError>> {
        Box::pin(async move { self.ready().await?.enable_service(s).await })
    }

    fn set_forced_down<'a>(
        &'a self,
        s: &'a wf::ComputeService,
        down: bool,
    ) -> BoxFuture<'a, Result<(), wf::NovaCallError>> {
        Box::pin(async move { self.ready().await?.set_forced_down(s, down).await })
    }

    fn servers_on_host<'a>(
        &'a self,
        host: &'a str,
    ) -> BoxFuture<'a, Result<Vec<wf::Server>, wf::NovaCallError>> {
        Box::pin(async move { self.ready().await?.servers_on_host(host).await })
    }

    fn server<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<wf::Server, wf::NovaCallError>> {
        Box::pin(async move { self.ready().await?.server(id).await })
    }

    fn evacuate<'a>(
        &'a self,
        id: &'a str,
        request: &'a wf::EvacuateRequest,
    ) -> BoxFuture<'a, Result<(), wf::NovaCallError>> {
        Box::pin(async move { self.ready().await?.evacuate(id, request).await })
    }

    fn evacuation_migrations<'a>(
        &'a self,
        id: &'a str,
    ) -> BoxFuture<'a, Result<Vec<wf::Migration>, wf::NovaCallError>> {
        Box::pin(async move { self.ready().await?.evacuation_migrations(id).await })
    }

    fn evacuate_action_count<'a>(
        &'a self,
        id: &'a str,
        since: Timestamp,
    ) -> BoxFuture<'a, Result<u32, wf::NovaCallError>> {
        Box::pin(async move { self.ready().await?.evacuate_action_count(id, since).await })
    }

    fn reset_state<'a>(
        &'a self,
        id: &'a str,
        to: wf::ResetTo,
    ) -> BoxFuture<'a, Result<(), wf::NovaCallError>> {
        Box::pin(async move { self.ready().await?.reset_state(id, to).await })
    }

    fn host_aggregates<'a>(
        &'a self,
        host: &'a str,
    ) -> BoxFuture<'a, Result<Vec<wf::Aggregate>, wf::NovaCallError>> {
        Box::pin(async move { self.ready().await?.host_aggregates(host).await })
    }

    fn add_host_to_aggregate<'a>(
        &'a self,
        aggregate: &'a wf::Aggregate,
        host: &'a str,
    ) -> BoxFuture<'a, Result<(), wf::NovaCallError>> {
        Box::pin(async move {
            self.ready()
                .await?
                .add_host_to_aggregate(aggregate, host)
                .await
        })
    }
}

/// Nova's real answers, recorded in the lab mid-evacuation by `cargo xtask
/// chaos` (decider/recovery/tests/data/), through this adapter's parsing
/// into `Picture::new` and `classify`: what Vigil makes of what Nova really
/// shows, not of pictures written by hand.
#[cfg(test)]
mod recorded {
    use super::*;
    use vigil_recovery::workflow::picture::{classify, Context, NovaState, Picture};

    fn state_name(s: &NovaState) -> &'static str {
        match s {
            NovaState::Gone => "Gone",
            NovaState::ExtraActions { .. } => "ExtraActions",
            NovaState::NotStarted => "NotStarted",
            NovaState::InFlight => "InFlight",
            NovaState::Unaccounted { .. } => "Unaccounted",
            NovaState::Failed { .. } => "Failed",
            NovaState::Landed { .. } => "Landed",
            NovaState::LandedWrong { .. } => "LandedWrong",
            NovaState::Unsettled(_) => "Unsettled",
        }
    }

    #[test]
    fn recorded_nova_answers_classify_as_expected() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("recovery/tests/data");
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .collect();
        files.sort();
        assert!(!files.is_empty(), "no recorded cases in {}", dir.display());
        let mut seen = std::collections::BTreeSet::new();
        for f in &files {
            let text =
                std::fs::read_to_string(f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
            let v: serde_json::Value =
                serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
            let name = f.display();
            let server = vigil_nova::Server::from_json(v["server"]["server"].clone())
                .unwrap_or_else(|e| panic!("{name}: server: {e}"));
            let migrations: Vec<vigil_nova::Migration> =
                serde_json::from_value(v["migrations"]["migrations"].clone())
                    .unwrap_or_else(|e| panic!("{name}: migrations: {e}"));
            let actions: Vec<vigil_nova::InstanceAction> =
                serde_json::from_value(v["instance_actions"]["instanceActions"].clone())
                    .unwrap_or_else(|e| panic!("{name}: actions: {e}"));
            let cx = &v["context"];
            let opened_at = Timestamp(cx["opened_at_unix_ms"].as_i64().unwrap_or(0));
            let sent = u32::try_from(cx["sent"].as_u64().unwrap_or(0)).unwrap_or(u32::MAX);
            let from_host = cx["from_host"].as_str().unwrap_or("");
            let ws = super::server(server);
            let ms: Vec<wf::Migration> = migrations.into_iter().map(migration).collect();
            let p = Picture::new(
                Some(&ws),
                &ms,
                evacuate_actions_since(&actions, opened_at),
                opened_at,
            );
            let got = classify(
                &p,
                Context {
                    from_host,
                    expected: &wf::ServerStatus::Active,
                    sent,
                },
            );
            let want = cx["expect"].as_str().unwrap_or("");
            assert_eq!(state_name(&got), want, "{name}: {p:?} → {got:?}");
            seen.insert(want.to_string());
        }
        eprintln!("{} recorded case(s), states {seen:?}", files.len());
    }
}
