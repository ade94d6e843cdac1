//! Prometheus metrics (prometheus-client) and the `/metrics` HTTP endpoint on
//! its own port: verdict per node, heartbeat age, ping RTT and loss, Nova poll
//! latency and errors, rejected sensor messages, the storm guard.

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;
use vigil_verdict::Verdict;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NodeLabels {
    pub node: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VerdictLabels {
    pub node: String,
    pub verdict: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PingLabels {
    pub node: String,
    pub address: String,
    pub role: String,
}

/// Why a sensor message or stream was turned away.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum RejectReason {
    Oversized,
    Malformed,
    Invalid,
    Unauthenticated,
    UnknownNode,
    /// The client certificate does not name the node (or is missing) while
    /// `server.tls.cert_names_node` is on.
    Certificate,
    /// Refused unchecked: the peer failed authentication too often lately.
    Throttled,
}

impl RejectReason {
    fn label(self) -> &'static str {
        match self {
            RejectReason::Oversized => "oversized",
            RejectReason::Malformed => "malformed",
            RejectReason::Invalid => "invalid",
            RejectReason::Unauthenticated => "unauthenticated",
            RejectReason::UnknownNode => "unknown_node",
            RejectReason::Certificate => "certificate",
            RejectReason::Throttled => "throttled",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabels {
    pub status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RejectLabels {
    pub reason: String,
}

/// Every metric the decider exports, registered once.
pub struct Metrics {
    registry: Registry,
    verdict: Family<VerdictLabels, Gauge>,
    heartbeat_age: Family<NodeLabels, Gauge<f64, AtomicU64>>,
    pub heartbeats: Counter,
    pub rejected: Family<RejectLabels, Counter>,
    ping_rtt: Family<PingLabels, Gauge<f64, AtomicU64>>,
    ping_probes: Family<PingLabels, Counter>,
    ping_lost: Family<PingLabels, Counter>,
    pub nova_poll_seconds: Histogram,
    pub nova_poll_errors: Counter,
    pub storm_guard_active: Gauge,
    /// How long one tick (every node re-judged) takes: it grows with the
    /// node count and delays every heartbeat's ack queued behind it.
    pub engine_tick_seconds: Histogram,
    /// Recovery runs that ended, by the incident's status then.
    pub recovery_runs: Family<StatusLabels, Counter>,
    pub recovery_active: Gauge,
    pub recovery_refused: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("vigil");
        let verdict = Family::<VerdictLabels, Gauge>::default();
        registry.register(
            "node_verdict",
            "1 for each node's current verdict",
            verdict.clone(),
        );
        let heartbeat_age = Family::<NodeLabels, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "heartbeat_age_seconds",
            "Time since the node's latest heartbeat (absent: never heard from)",
            heartbeat_age.clone(),
        );
        let heartbeats = Counter::default();
        registry.register("heartbeats", "Heartbeats processed", heartbeats.clone());
        let rejected = Family::<RejectLabels, Counter>::default();
        registry.register(
            "sensor_rejected",
            "Sensor streams or messages rejected, by reason",
            rejected.clone(),
        );
        let ping_rtt = Family::<PingLabels, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "ping_rtt_seconds",
            "Round-trip time of the latest answered probe",
            ping_rtt.clone(),
        );
        let ping_probes = Family::<PingLabels, Counter>::default();
        registry.register("ping_probes", "ICMP echo probes sent", ping_probes.clone());
        let ping_lost = Family::<PingLabels, Counter>::default();
        registry.register(
            "ping_lost",
            "ICMP echo probes without an answer in time",
            ping_lost.clone(),
        );
        let nova_poll_seconds = Histogram::new(exponential_buckets(0.005, 2.0, 12));
        registry.register(
            "nova_poll_seconds",
            "Latency of Nova os-services polls",
            nova_poll_seconds.clone(),
        );
        let nova_poll_errors = Counter::default();
        registry.register(
            "nova_poll_errors",
            "Nova polls that failed",
            nova_poll_errors.clone(),
        );
        let storm_guard_active = Gauge::default();
        registry.register(
            "storm_guard_active",
            "1 while the storm guard holds dead nodes",
            storm_guard_active.clone(),
        );
        let engine_tick_seconds = Histogram::new(exponential_buckets(0.000_5, 2.0, 12));
        registry.register(
            "engine_tick_seconds",
            "Time the engine takes to re-judge every node once",
            engine_tick_seconds.clone(),
        );
        let recovery_runs = Family::<StatusLabels, Counter>::default();
        registry.register(
            "recovery_runs",
            "Recovery workflow runs that ended, by incident status (completed, needs-attention, aborted, dry-run, open = stopped by the journal)",
            recovery_runs.clone(),
        );
        let recovery_active = Gauge::default();
        registry.register(
            "recovery_active",
            "Recovery workflow runs in progress",
            recovery_active.clone(),
        );
        let recovery_refused = Counter::default();
        registry.register(
            "recovery_refused",
            "Dead nodes the recovery guards refused (storm, cooldown)",
            recovery_refused.clone(),
        );
        Metrics {
            recovery_runs,
            recovery_active,
            recovery_refused,
            registry,
            verdict,
            heartbeat_age,
            heartbeats,
            rejected,
            ping_rtt,
            ping_probes,
            ping_lost,
            nova_poll_seconds,
            nova_poll_errors,
            storm_guard_active,
            engine_tick_seconds,
        }
    }

    /// One series per node: the old verdict's is removed so only the
    /// current one reads 1.
    pub fn set_verdict(&self, node: &str, from: Option<Verdict>, to: Verdict) {
        if let Some(f) = from {
            self.verdict.remove(&VerdictLabels {
                node: node.to_string(),
                verdict: f.as_str().to_string(),
            });
        }
        self.verdict
            .get_or_create(&VerdictLabels {
                node: node.to_string(),
                verdict: to.as_str().to_string(),
            })
            .set(1);
    }

    pub fn set_heartbeat_age(&self, node: &str, age: Option<Duration>) {
        let labels = NodeLabels {
            node: node.to_string(),
        };
        match age {
            Some(a) => {
                self.heartbeat_age
                    .get_or_create(&labels)
                    .set(a.as_secs_f64());
            }
            None => {
                self.heartbeat_age.remove(&labels);
            }
        }
    }

    pub fn record_ping(&self, node: &str, address: &IpAddr, role: &str, rtt: Option<Duration>) {
        let labels = PingLabels {
            node: node.to_string(),
            address: address.to_string(),
            role: role.to_string(),
        };
        self.ping_probes.get_or_create(&labels).inc();
        match rtt {
            Some(r) => {
                self.ping_rtt.get_or_create(&labels).set(r.as_secs_f64());
            }
            None => {
                self.ping_lost.get_or_create(&labels).inc();
            }
        }
    }

    pub fn reject(&self, reason: RejectReason) {
        self.rejected
            .get_or_create(&RejectLabels {
                reason: reason.label().to_string(),
            })
            .inc();
    }

    /// How many sensor messages or streams were rejected for `reason`.
    pub fn rejected(&self, reason: RejectReason) -> u64 {
        self.rejected
            .get_or_create(&RejectLabels {
                reason: reason.label().to_string(),
            })
            .get()
    }

    /// The OpenMetrics text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

/// Serves `GET /metrics` on `listener` until `shutdown`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use axum::routing::get;
    let app = axum::Router::new().route(
        "/metrics",
        get(move || {
            let m = metrics.clone();
            async move {
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    m.render(),
                )
            }
        }),
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

/// Binds the metrics port, saying which address failed.
pub async fn bind(addr: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    use anyhow::Context;
    tokio::net::TcpListener::bind(addr).await.with_context(|| {
        format!("binding the metrics port {addr} (set metrics.listen or --metrics-listen)")
    })
}
