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
use std::net::SocketAddr;
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

/// Per node and address role (`host`, `instance`), never per address: a
/// cloud's tenant addresses come and go, and a series per address would
/// grow without bound and outlive the address.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PingLabels {
    pub node: String,
    pub role: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BuildLabels {
    pub version: String,
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

/// What became of one datagram on the kdump port.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum KdumpOutcome {
    /// A fence_kdump message from a node's management address, handed on.
    Accepted,
    /// A fence_kdump message from an address that is no node's.
    UnknownSource,
    /// Not a fence_kdump message (length, magic or version).
    Malformed,
    /// Longer than any fence_kdump message; not even read.
    Oversize,
    /// Accepted but not handed on: the queue to the engine was full.
    Dropped,
}

impl KdumpOutcome {
    pub const ALL: [KdumpOutcome; 5] = [
        KdumpOutcome::Accepted,
        KdumpOutcome::UnknownSource,
        KdumpOutcome::Malformed,
        KdumpOutcome::Oversize,
        KdumpOutcome::Dropped,
    ];

    fn label(self) -> &'static str {
        match self {
            KdumpOutcome::Accepted => "accepted",
            KdumpOutcome::UnknownSource => "unknown_source",
            KdumpOutcome::Malformed => "malformed",
            KdumpOutcome::Oversize => "oversize",
            KdumpOutcome::Dropped => "dropped",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: String,
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
    /// 1 after a Nova poll that answered, 0 after one that failed: what an
    /// alert on "the decider cannot see Nova" reads.
    pub nova_reachable: Gauge,
    /// `[cluster]`: 1 while this decider leads (and may act), else 0.
    pub cluster_leader: Gauge,
    /// `[cluster]`: the current leader's term (0: unknown).
    pub cluster_term: Gauge,
    /// 1 per node whose sensor runs its `/proc` fallback (no eBPF).
    sensor_procfs: Family<NodeLabels, Gauge>,
    /// BMC power reads of the BMC witness, answered or not.
    pub bmc_reads: Counter,
    bmc_identity_mismatch: Family<NodeLabels, Gauge>,
    pub storm_guard_active: Gauge,
    /// How long one tick (every node re-judged) takes: it grows with the
    /// node count and delays every heartbeat's ack queued behind it.
    pub engine_tick_seconds: Histogram,
    /// Recovery runs that ended, by the incident's status then.
    pub recovery_runs: Family<StatusLabels, Counter>,
    pub recovery_active: Gauge,
    pub recovery_refused: Counter,
    /// Datagrams on the kdump port, by outcome.
    kdump_datagrams: Family<OutcomeLabels, Counter>,
    /// Liveness and readiness, served beside the metrics.
    pub health: Arc<crate::health::Health>,
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
        let nova_reachable = Gauge::default();
        registry.register(
            "nova_reachable",
            "1 if the latest Nova os-services poll answered, 0 if it failed",
            nova_reachable.clone(),
        );
        let cluster_leader = Gauge::default();
        registry.register(
            "cluster_leader",
            "1 while this decider leads the cluster and may act, 0 otherwise ([cluster] only)",
            cluster_leader.clone(),
        );
        let cluster_term = Gauge::default();
        registry.register(
            "cluster_term",
            "The current leader's term as this decider knows it; 0 when no leader is known ([cluster] only)",
            cluster_term.clone(),
        );
        let sensor_procfs = Family::<NodeLabels, Gauge>::default();
        registry.register(
            "sensor_procfs",
            "1 while the node's sensor runs its /proc fallback instead of eBPF (coarser signals)",
            sensor_procfs.clone(),
        );
        let bmc_reads = Counter::default();
        registry.register(
            "bmc_power_reads",
            "Power-state reads of the nodes' BMCs by the BMC witness, answered or not",
            bmc_reads.clone(),
        );
        let bmc_identity_mismatch = Family::<NodeLabels, Gauge>::default();
        registry.register(
            "bmc_identity_mismatch",
            "1 while the BMC configured for the node reports another machine's system UUID: its readings are ignored and no fence goes through it",
            bmc_identity_mismatch.clone(),
        );
        let build_info = Family::<BuildLabels, Gauge>::default();
        registry.register(
            "build_info",
            "Always 1; the decider's version (crate version and git describe) in the label",
            build_info.clone(),
        );
        build_info
            .get_or_create(&BuildLabels {
                version: env!("VIGIL_BUILD_VERSION").to_string(),
            })
            .set(1);
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
        let kdump_datagrams = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "kdump_datagrams",
            "Datagrams received on the kdump port ([kdump]), by outcome: accepted, unknown_source, malformed, oversize, dropped (queue full)",
            kdump_datagrams.clone(),
        );
        Metrics {
            health: Arc::default(),
            kdump_datagrams,
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
            nova_reachable,
            cluster_leader,
            cluster_term,
            sensor_procfs,
            bmc_reads,
            bmc_identity_mismatch,
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

    /// Whether the node's sensor runs in procfs mode (None: not heard
    /// from, no series).
    /// Only nodes with a BMC read have a series; 0 unless mismatched.
    pub fn set_bmc_identity(&self, node: &str, identity: &vigil_verdict::BmcIdentity) {
        let labels = NodeLabels {
            node: node.to_string(),
        };
        let mismatch = matches!(identity, vigil_verdict::BmcIdentity::Mismatch(_));
        self.bmc_identity_mismatch
            .get_or_create(&labels)
            .set(i64::from(mismatch));
    }

    pub fn set_sensor_procfs(&self, node: &str, procfs: Option<bool>) {
        let labels = NodeLabels {
            node: node.to_string(),
        };
        match procfs {
            Some(p) => {
                self.sensor_procfs.get_or_create(&labels).set(i64::from(p));
            }
            None => {
                self.sensor_procfs.remove(&labels);
            }
        }
    }

    pub fn record_ping(&self, node: &str, role: &str, rtt: Option<Duration>) {
        let labels = PingLabels {
            node: node.to_string(),
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

    /// The kdump listener runs: its five series exist from now on, so a
    /// rate reads 0 rather than "no data" (and a decider without `[kdump]`
    /// exports none).
    pub fn expect_kdump(&self) {
        for o in KdumpOutcome::ALL {
            let _ = self.kdump_datagrams.get_or_create(&OutcomeLabels {
                outcome: o.label().to_string(),
            });
        }
    }

    pub fn record_kdump(&self, outcome: KdumpOutcome) {
        self.kdump_datagrams
            .get_or_create(&OutcomeLabels {
                outcome: outcome.label().to_string(),
            })
            .inc();
    }

    /// How many datagrams on the kdump port ended in `outcome`.
    pub fn kdump_datagrams(&self, outcome: KdumpOutcome) -> u64 {
        self.kdump_datagrams
            .get_or_create(&OutcomeLabels {
                outcome: outcome.label().to_string(),
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

    /// The Prometheus text format 0.0.4, for scrapers that do not ask for
    /// OpenMetrics (promtool, older Prometheus, most agents).
    pub fn render_text(&self) -> String {
        openmetrics_to_text(&self.render())
    }
}

/// OpenMetrics names a counter family `x` and its sample `x_total`; the
/// 0.0.4 text format wants `x_total` in HELP and TYPE too (else "no help
/// text"), and has no `# UNIT` or `# EOF`.
fn openmetrics_to_text(om: &str) -> String {
    let counters: std::collections::HashSet<&str> = om
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(om.len());
    for line in om.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(name)
                .then(|| format!("{prefix}{name}_total {tail}"))
        });
        out.push_str(renamed.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}

/// Serves `GET /metrics` on `listener` until `shutdown`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use axum::routing::get;
    let (live, ready) = (metrics.health.clone(), metrics.health.clone());
    let app = axum::Router::new()
        .route(
            "/healthz",
            get(move || async move { health_answer(live.liveness()) }),
        )
        .route(
            "/readyz",
            get(move || async move { health_answer(ready.readiness()) }),
        )
        .route(
            "/metrics",
            get(move |headers: axum::http::HeaderMap| {
                let m = metrics.clone();
                async move {
                    // Content negotiation as Prometheus does it: OpenMetrics when
                    // asked for, the 0.0.4 text format otherwise.
                    let wants_om = headers
                        .get(axum::http::header::ACCEPT)
                        .and_then(|v| v.to_str().ok())
                        .is_some_and(|v| v.contains("application/openmetrics-text"));
                    if wants_om {
                        (
                            [(
                                axum::http::header::CONTENT_TYPE,
                                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                            )],
                            m.render(),
                        )
                    } else {
                        (
                            [(
                                axum::http::header::CONTENT_TYPE,
                                "text/plain; version=0.0.4; charset=utf-8",
                            )],
                            m.render_text(),
                        )
                    }
                }
            }),
        );
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

/// 200 when every check passes, 503 otherwise (what load balancers and
/// Kubernetes probes read); the JSON body names every check and why it
/// fails.
fn health_answer(report: crate::health::Report) -> impl axum::response::IntoResponse {
    let code = if report.ok() {
        axum::http::StatusCode::OK
    } else {
        axum::http::StatusCode::SERVICE_UNAVAILABLE
    };
    let body = serde_json::to_string(&report)
        .unwrap_or_else(|e| format!("{{\"status\":\"failing\",\"error\":\"encoding: {e}\"}}"));
    (
        code,
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        body,
    )
}

/// Binds the metrics port, saying which address failed.
pub async fn bind(addr: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    use anyhow::Context;
    tokio::net::TcpListener::bind(addr).await.with_context(|| {
        format!("binding the metrics port {addr} (set metrics.listen or --metrics-listen)")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_format_names_counters_with_their_total_suffix() {
        let m = Metrics::new();
        m.heartbeats.inc();
        let t = m.render_text();
        assert!(t.contains("# HELP vigil_heartbeats_total "), "{t}");
        assert!(t.contains("# TYPE vigil_heartbeats_total counter"), "{t}");
        assert!(t.contains("\nvigil_heartbeats_total 1\n"), "{t}");
        assert!(t.contains("# TYPE vigil_recovery_active gauge"), "{t}");
        assert!(!t.contains("# EOF"), "{t}");
        assert!(m.render().ends_with("# EOF\n"));
    }
}
