//! `vigil-decider serve`: binds the gRPC and metrics ports, starts the engine,
//! the Nova poller and the pinger, and runs until shutdown, then drains within
//! a grace period.

use crate::config::{Config, Tokens};
use crate::engine::{Engine, EngineHandle, EngineSettings, NodeSeed};
use crate::heartbeat_server::{Authenticator, HeartbeatService};
use crate::metrics::{self, Metrics};
use crate::operator_api::OperatorService;
use crate::recovery::driver::Driver;
use crate::recovery::reporter::EngineLink;
use crate::recovery::{RecoveryHandle, RecoveryParts};
use crate::shutdown::{self, ShutdownTrigger};
use crate::witness::{NovaSource, Prober};
use anyhow::Context;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tracing::{info, warn};

/// The outside witnesses to use; `None` leaves that witness silent (unknown),
/// which can never make a node dead.
#[derive(Clone, Default)]
pub struct Witnesses {
    pub nova: Option<Arc<dyn NovaSource>>,
    pub prober: Option<Arc<dyn Prober>>,
    /// The recovery workflow's parts; `None`: the decider judges and never
    /// acts.
    pub recovery: Option<RecoveryParts>,
    /// `[cluster]`: leadership, views; `None`: the only decider.
    pub cluster: Option<crate::cluster::ClusterParts>,
}

/// A running decider.
pub struct Server {
    pub grpc_addr: SocketAddr,
    pub metrics_addr: Option<SocketAddr>,
    pub engine: EngineHandle,
    pub metrics: Arc<Metrics>,
    /// Recovery's inputs and journal, when recovery runs.
    pub recovery: Option<RecoveryHandle>,
    trigger: ShutdownTrigger,
    tasks: JoinSet<anyhow::Result<()>>,
}

/// How long tasks get to finish after shutdown begins.
const GRACE: Duration = Duration::from_secs(5);

impl Server {
    /// Binds every port (port 0 picks a free one), then starts every task.
    pub async fn start(
        cfg: Config,
        tokens: Tokens,
        witnesses: Witnesses,
    ) -> anyhow::Result<Server> {
        let grpc = TcpListener::bind(cfg.server.listen)
            .await
            .with_context(|| {
                format!(
                    "binding the gRPC port {} (set server.listen or --listen)",
                    cfg.server.listen
                )
            })?;
        let grpc_addr = grpc
            .local_addr()
            .context("reading the gRPC port's address")?;
        let mutual_tls = cfg
            .server
            .tls
            .as_ref()
            .is_some_and(|t| t.client_ca.is_some());
        if grpc_addr.ip().is_unspecified() && tokens.read.is_none() && !mutual_tls {
            // Reads show process names, cgroups, instance UUIDs and Nova's
            // errors; say so rather than serve them to every network quietly.
            warn!(
                listen = %grpc_addr,
                "the operator API's reads are open to every address that reaches this port: set server.read_token_file (or server.tls.client_ca), or server.listen to the management address"
            );
        }
        let metrics_listener = match cfg.metrics.enabled {
            true => Some(metrics::bind(cfg.metrics.listen).await?),
            false => None,
        };
        let metrics_addr = match &metrics_listener {
            Some(l) => Some(
                l.local_addr()
                    .context("reading the metrics port's address")?,
            ),
            None => None,
        };
        let tls = match &cfg.server.tls {
            Some(t) => Some(tls_config(t)?),
            None => None,
        };

        let metrics = Arc::new(Metrics::new());
        let (trigger, shutdown) = shutdown::channel();
        let (host_tx, host_rx) = tokio::sync::mpsc::channel(1024);
        let seeds = cfg
            .nodes
            .iter()
            .map(|n| NodeSeed {
                name: n.name.clone(),
                segment: n.segment.clone(),
                management: n.management_addresses.clone(),
                system_uuid: n
                    .system_uuid
                    .as_deref()
                    .and_then(vigil_proto::system_uuid::normalize),
            })
            .collect();
        let (recovery_tx, recovery_rx) = match &witnesses.recovery {
            Some(_) => {
                let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
                (Some(tx), Some(rx))
            }
            None => (None, None),
        };
        let settings = EngineSettings {
            recovery: recovery_tx.clone(),
            tick: cfg.engine.tick,
            queue: cfg.engine.queue,
            reference_addresses: if cfg.ping.enabled {
                cfg.ping.reference_addresses.clone()
            } else {
                vec![]
            },
            enrol_segment: cfg.enrolment.segment.clone(),
        };
        let (engine, handle, events) = Engine::new(
            settings,
            seeds,
            cfg.policy.clone(),
            metrics.clone(),
            Some(host_tx),
        );
        // Bound before anything is served: a port another process holds is
        // a start error, not a witness that silently never speaks.
        let kdump = match &cfg.kdump {
            Some(k) => Some(bind_kdump(&cfg, k, &handle, &metrics).await?),
            None => None,
        };
        let mut tasks = JoinSet::new();
        {
            let s = shutdown.clone();
            tasks.spawn(engine.spawn(events, s.wait()));
        }
        if let Some((listener, book, mut heard)) = kdump {
            let (plan, s) = (handle.ping_plan.clone(), shutdown.clone());
            tasks.spawn(async move {
                book.follow(plan, s.wait()).await;
                Ok(())
            });
            let s = shutdown.clone();
            tasks.spawn(async move {
                listener.run(s.wait()).await;
                Ok(())
            });
            let (events, s) = (handle.events.clone(), shutdown.clone());
            tasks.spawn(async move {
                let mut log = crate::kdump::HeardLog::default();
                let stop = s.wait();
                tokio::pin!(stop);
                loop {
                    let h = tokio::select! {
                        _ = &mut stop => return Ok(()),
                        h = heard.recv() => match h {
                            Some(h) => h,
                            None => return Ok(()),
                        },
                    };
                    crate::kdump::log_heard(&h, &mut log);
                    let ev = crate::engine::Event::Kdump {
                        node: h.node,
                        from: h.from,
                        at: h.at,
                    };
                    if events.send(ev).await.is_err() {
                        // The engine stopped: shutting down.
                        return Ok(());
                    }
                }
            });
        }
        {
            // The BMC witness reads the BMCs fencing uses; without fencing
            // there is no BMC to read.
            let targets = witnesses
                .recovery
                .as_ref()
                .map(|p| crate::bmc_watch::targets(&p.levels))
                .unwrap_or_default();
            if !targets.is_empty() {
                info!(
                    bmcs = targets.len(),
                    enabled = cfg.policy.bmc.enabled,
                    every_healthy = ?cfg.policy.bmc.poll_healthy,
                    every_doubted = ?cfg.policy.bmc.poll_doubt,
                    "BMC power witness on"
                );
                let (policy, clock, plan, ev, s) = (
                    handle.policy.clone(),
                    handle.clock,
                    handle.ping_plan.clone(),
                    handle.events.clone(),
                    shutdown.clone(),
                );
                tasks.spawn(async move {
                    crate::bmc_watch::run(targets, policy, clock, plan, ev, s.wait()).await;
                    Ok(())
                });
            }
        }
        let recovery = match (witnesses.recovery.clone(), recovery_rx, recovery_tx) {
            (Some(parts), Some(rx), Some(tx)) => {
                let handle_r = RecoveryHandle {
                    inputs: tx,
                    journal: parts.journal.clone(),
                };
                info!(
                    dry_run = parts.mode == vigil_recovery::workflow::Mode::DryRun,
                    fenced_nodes = parts.levels.len(),
                    journal = %parts.config.journal.path.display(),
                    "recovery on: actionable dead verdicts start incidents"
                );
                {
                    // Same receivers and retries as recovery's own messages.
                    let dispatcher = vigil_recovery::notify::Dispatcher::new(
                        parts.notifiers.clone(),
                        vigil_recovery::notify::RetryPolicy::from_config(&parts.config.notify),
                        parts.clock.clone(),
                        None,
                    );
                    let changes = handle.changes.subscribe();
                    let s = shutdown.clone();
                    tasks.spawn(async move {
                        crate::recovery::alerts::degraded_alerts(changes, dispatcher, s.wait())
                            .await;
                        Ok(())
                    });
                }
                {
                    let fencing = (!parts.levels.is_empty()).then(|| parts.config.fencing.clone());
                    metrics.health.expect_recovery(fencing.is_some());
                    let (h, path, s) = (
                        metrics.health.clone(),
                        parts.config.journal.path.clone(),
                        shutdown.clone(),
                    );
                    tasks.spawn(async move {
                        crate::health_probe::run(h, path, fencing, s.wait()).await;
                        Ok(())
                    });
                }
                let kdump_watch =
                    cfg.kdump
                        .as_ref()
                        .map(|_| vigil_recovery::workflow::KdumpWatch {
                            source: Arc::new(crate::recovery::kdump_state::EngineKdump {
                                nodes: handle.nodes.clone(),
                                clock: handle.clock,
                            }),
                            quiet_for: cfg.policy.kdump.fresh_for,
                            power_off_after: cfg.policy.kdump.power_off_after,
                        });
                let driver = Driver::new(
                    parts,
                    EngineLink {
                        events: handle.events.clone(),
                        nodes: handle.nodes.clone(),
                    },
                    metrics.clone(),
                )
                .with_kdump(kdump_watch);
                let s = shutdown.clone();
                tasks.spawn(async move {
                    driver.run(rx, s.wait()).await;
                    Ok(())
                });
                Some(handle_r)
            }
            _ => {
                info!("recovery off ([recovery] absent): verdicts are judged, nothing is acted on");
                None
            }
        };
        if let Some(c) = witnesses.cluster.clone() {
            metrics.health.expect_cluster();
            let s = shutdown.clone();
            let l = c.leadership.clone();
            tasks.spawn(async move {
                l.run(s.wait()).await;
                Ok(())
            });
            let (nodes, h, m, s) = (
                handle.nodes.clone(),
                metrics.health.clone(),
                metrics.clone(),
                shutdown.clone(),
            );
            // "No leader" pages the receivers recovery pages.
            let pager = witnesses.recovery.as_ref().map(|parts| {
                vigil_recovery::notify::Dispatcher::new(
                    parts.notifiers.clone(),
                    vigil_recovery::notify::RetryPolicy::from_config(&parts.config.notify),
                    parts.clock.clone(),
                    None,
                )
            });
            tasks.spawn(async move {
                crate::cluster::run_views(c, nodes, h, m, pager, s.wait()).await;
                Ok(())
            });
        }
        match (&witnesses.nova, cfg.nova.enabled) {
            (Some(nova), true) => {
                metrics.health.expect_nova();
                let (nova, ncfg, clock, m, ev, s) =
                    (nova.clone(), cfg.nova.clone(), handle.clock, metrics.clone(), handle.events.clone(), shutdown.clone());
                tasks.spawn(async move {
                    crate::nova_poll::run(nova, ncfg, clock, m, ev, host_rx, s.wait()).await;
                    Ok(())
                });
            }
            _ => warn!("Nova is not polled: its witness stays unknown, so no node can be judged dead while Nova is required"),
        }
        match (&witnesses.prober, cfg.ping.enabled) {
            (Some(p), true) => {
                let (p, pcfg, clock, plan, ev, s) =
                    (p.clone(), cfg.ping.clone(), handle.clock, handle.ping_plan.clone(), handle.events.clone(), shutdown.clone());
                tasks.spawn(async move {
                    crate::ping_sweep::run(p, pcfg, clock, plan, ev, s.wait()).await;
                    Ok(())
                });
            }
            _ => warn!("pings are off: the ping witness stays unknown, so no node can be judged dead while pings are required"),
        }
        if let Some(l) = metrics_listener {
            let (m, s) = (metrics.clone(), shutdown.clone());
            tasks.spawn(async move {
                metrics::serve(l, m, s.wait())
                    .await
                    .context("serving /metrics")
            });
        }

        let auth = Arc::new(
            Authenticator::new(&tokens)
                .with_cert_names_node(cfg.server.tls.as_ref().is_some_and(|t| t.cert_names_node)),
        );
        let hb = HeartbeatService::new(
            handle.clone(),
            auth,
            metrics.clone(),
            cfg.server.first_message_timeout,
            cfg.server.max_message_bytes,
            shutdown.clone(),
        );
        let op = OperatorService::new(handle.clone(), recovery.clone(), tokens.operator.clone())
            .with_read_token(tokens.read.clone())
            .with_cluster(witnesses.cluster.clone());
        // Reflection (v1 and v1alpha, so every grpcurl version works) and the
        // standard health service: `grpcurl -plaintext HOST:PORT list` needs
        // no .proto file.
        let reflection_v1 = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(vigil_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()
            .context("building the gRPC reflection service (v1)")?;
        let reflection_v1alpha = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(vigil_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1alpha()
            .context("building the gRPC reflection service (v1alpha)")?;
        // NOT_SERVING until readiness passes (Nova answered, the journal
        // writable, BMCs answering), as `/readyz` says.
        let (health_reporter, health) = tonic_health::server::health_reporter();
        {
            use tonic::server::NamedService;
            let services = vec![
                vigil_proto::v1::operator_server::OperatorServer::<OperatorService>::NAME
                    .to_string(),
                vigil_proto::v1::sensor_stream_server::SensorStreamServer::<HeartbeatService>::NAME
                    .to_string(),
            ];
            for name in &services {
                health_reporter
                    .set_service_status(name, tonic_health::ServingStatus::NotServing)
                    .await;
            }
            health_reporter
                .set_service_status("", tonic_health::ServingStatus::NotServing)
                .await;
            let (h, s) = (metrics.health.clone(), shutdown.clone());
            tasks.spawn(async move {
                crate::health_probe::mirror_grpc(h, health_reporter, services, s.wait()).await;
                Ok(())
            });
        }
        let mut builder = tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(Duration::from_secs(10)))
            .http2_keepalive_timeout(Some(Duration::from_secs(5)));
        if let Some(tls) = tls {
            builder = builder
                .tls_config(tls)
                .context("configuring TLS on the gRPC port")?;
        }
        let router = builder
            .add_service(health)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(hb.into_server())
            .add_service(op.into_server());
        {
            let s = shutdown.clone();
            tasks.spawn(async move {
                // Without TCP_NODELAY, small answers wait on delayed ACKs
                // (~40 ms per query); keepalive finds dead sensor links.
                let incoming = tonic::transport::server::TcpIncoming::from(grpc)
                    .with_nodelay(Some(true))
                    .with_keepalive(Some(Duration::from_secs(30)));
                router
                    .serve_with_incoming_shutdown(incoming, s.wait())
                    .await
                    .context("serving gRPC")
            });
        }
        info!(grpc = %grpc_addr, metrics = %crate::logging::or_unknown(metrics_addr), nodes = cfg.nodes.len(), "decider serving");
        crate::systemd::ready();
        Ok(Server {
            grpc_addr,
            metrics_addr,
            engine: handle,
            metrics,
            recovery,
            trigger,
            tasks,
        })
    }

    /// Runs until `stop` resolves or a task fails, then shuts down.
    pub async fn run_until(
        mut self,
        stop: impl std::future::Future<Output = ()>,
    ) -> anyhow::Result<()> {
        let failed = tokio::select! {
            _ = stop => None,
            Some(r) = self.tasks.join_next() => Some(r),
        };
        let result = match failed {
            Some(Ok(Err(e))) => Err(e),
            Some(Err(e)) => Err(anyhow::anyhow!("a decider task panicked: {e}")),
            _ => Ok(()),
        };
        self.shutdown().await;
        result
    }

    /// Tells every task to stop and waits for them within the grace period.
    pub async fn shutdown(mut self) {
        info!("shutting down");
        crate::systemd::stopping();
        self.trigger.trigger();
        let drained = tokio::time::timeout(GRACE, async {
            while let Some(r) = self.tasks.join_next().await {
                if let Ok(Err(e)) = r {
                    warn!(error = %format!("{e:#}"), "task ended with an error during shutdown");
                }
            }
        })
        .await;
        if drained.is_err() {
            warn!(grace = %humantime::format_duration(GRACE), "tasks still running after the grace period; aborting them");
            self.tasks.abort_all();
        }
    }
}

/// The kdump port, bound, with the address book it attributes datagrams by
/// and the channel its messages come out of.
async fn bind_kdump(
    cfg: &Config,
    k: &crate::config::KdumpConfig,
    handle: &EngineHandle,
    metrics: &Arc<Metrics>,
) -> anyhow::Result<(
    crate::kdump::KdumpListener,
    Arc<crate::kdump::AddressBook>,
    tokio::sync::mpsc::Receiver<crate::kdump::KdumpHeard>,
)> {
    let book =
        Arc::new(crate::kdump::AddressBook::new(cfg.nodes.iter().flat_map(
            |n| n.management_addresses.iter().map(|a| (n.name.clone(), *a)),
        )));
    let (tx, rx) = tokio::sync::mpsc::channel(crate::kdump::QUEUE);
    let listener = crate::kdump::KdumpListener::bind(
        k.listen,
        book.clone(),
        handle.clock,
        tx,
        metrics.clone(),
    )
    .await?;
    let addr = listener.local_addr()?;
    info!(listen = %addr, policy_enabled = cfg.policy.kdump.enabled, "kdump witness on: fence_kdump messages from the nodes' management addresses count");
    Ok((listener, book, rx))
}

fn tls_config(t: &crate::config::TlsConfig) -> anyhow::Result<tonic::transport::ServerTlsConfig> {
    use tonic::transport::{Certificate, Identity, ServerTlsConfig};
    // Bounded: a PEM file is a few KiB; a path to /dev/zero must not hang
    // the start.
    const MAX_PEM: u64 = 1 << 20;
    let read = |p: &std::path::Path, what: &str| -> anyhow::Result<Vec<u8>> {
        let mut bytes = Vec::new();
        std::fs::File::open(p)
            .and_then(|f| {
                std::io::Read::read_to_end(&mut std::io::Read::take(f, MAX_PEM + 1), &mut bytes)
            })
            .with_context(|| format!("reading the {what} {} (server.tls)", p.display()))?;
        if bytes.len() as u64 > MAX_PEM {
            anyhow::bail!(
                "the {what} {} (server.tls) is over {MAX_PEM} bytes: not a PEM file",
                p.display()
            );
        }
        Ok(bytes)
    };
    let identity = Identity::from_pem(read(&t.cert, "certificate")?, read(&t.key, "private key")?);
    let mut tls = ServerTlsConfig::new().identity(identity);
    if let Some(ca) = &t.client_ca {
        // Mutual TLS: every client must present a certificate signed by this
        // CA; sensors their per-node token as well.
        tls = tls.client_ca_root(Certificate::from_pem(read(ca, "client CA")?));
    }
    Ok(tls)
}
