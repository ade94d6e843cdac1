//! Prometheus metrics and the `/metrics` HTTP endpoint on its own port:
//! verdict per node, heartbeat age, ping RTT and loss, Nova poll latency and
//! errors, rejected sensor messages, the storm guard.
//!
//! FIXME(registry): a minimal hand-written text exposition, because the
//! package registry was unreachable when this was written and
//! prometheus-client (the workspace's chosen exporter) was not in the local
//! cache. Swap back to prometheus-client; the public API here stays the same.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use vigil_verdict::Verdict;

/// Why a sensor message or stream was turned away.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, PartialOrd, Ord)]
pub enum RejectReason {
    Oversized,
    Malformed,
    Invalid,
    Unauthenticated,
    UnknownNode,
}

impl RejectReason {
    fn label(self) -> &'static str {
        match self {
            RejectReason::Oversized => "oversized",
            RejectReason::Malformed => "malformed",
            RejectReason::Invalid => "invalid",
            RejectReason::Unauthenticated => "unauthenticated",
            RejectReason::UnknownNode => "unknown_node",
        }
    }
}

#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

#[derive(Debug, Default)]
pub struct Gauge(AtomicI64);

impl Gauge {
    pub fn set(&self, v: i64) {
        self.0.store(v, Ordering::Relaxed);
    }
}

/// Histogram with fixed exponential buckets (5 ms … ~10 s).
#[derive(Debug)]
pub struct Histogram {
    bounds: Vec<f64>,
    counts: Vec<AtomicU64>,
    sum_micros: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    fn exponential(start: f64, factor: f64, n: usize) -> Self {
        let bounds: Vec<f64> = (0..n).map(|i| start * factor.powi(i as i32)).collect();
        let counts = (0..n).map(|_| AtomicU64::new(0)).collect();
        Histogram {
            bounds,
            counts,
            sum_micros: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }
    pub fn observe(&self, v: f64) {
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            if v <= *b {
                c.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.sum_micros
            .fetch_add((v * 1e6) as u64, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }
}

type Labels = Vec<(&'static str, String)>;

/// (node, address, role).
type PingKey = (String, String, String);
/// (probes, lost, latest RTT in seconds).
type PingCounts = (u64, u64, Option<f64>);

#[derive(Debug)]
pub struct Metrics {
    verdict: Mutex<BTreeMap<String, Verdict>>,
    heartbeat_age: Mutex<BTreeMap<String, f64>>,
    pub heartbeats: Counter,
    rejected: Mutex<BTreeMap<RejectReason, u64>>,
    pings: Mutex<BTreeMap<PingKey, PingCounts>>,
    pub nova_poll_seconds: Histogram,
    pub nova_poll_errors: Counter,
    pub storm_guard_active: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn labels(l: &Labels) -> String {
    let inner: Vec<String> = l
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
        .collect();
    format!("{{{}}}", inner.join(","))
}

impl Metrics {
    pub fn new() -> Self {
        Metrics {
            verdict: Mutex::default(),
            heartbeat_age: Mutex::default(),
            heartbeats: Counter::default(),
            rejected: Mutex::default(),
            pings: Mutex::default(),
            nova_poll_seconds: Histogram::exponential(0.005, 2.0, 12),
            nova_poll_errors: Counter::default(),
            storm_guard_active: Gauge::default(),
        }
    }

    /// One series per node: only the current verdict reads 1.
    pub fn set_verdict(&self, node: &str, _from: Option<Verdict>, to: Verdict) {
        lock(&self.verdict).insert(node.to_string(), to);
    }

    pub fn set_heartbeat_age(&self, node: &str, age: Option<Duration>) {
        let mut m = lock(&self.heartbeat_age);
        match age {
            Some(a) => {
                m.insert(node.to_string(), a.as_secs_f64());
            }
            None => {
                m.remove(node);
            }
        }
    }

    pub fn record_ping(&self, node: &str, address: &IpAddr, role: &str, rtt: Option<Duration>) {
        let mut m = lock(&self.pings);
        let e = m
            .entry((node.to_string(), address.to_string(), role.to_string()))
            .or_insert((0, 0, None));
        e.0 += 1;
        match rtt {
            Some(r) => e.2 = Some(r.as_secs_f64()),
            None => e.1 += 1,
        }
    }

    pub fn reject(&self, reason: RejectReason) {
        *lock(&self.rejected).entry(reason).or_default() += 1;
    }

    pub fn rejected(&self, reason: RejectReason) -> u64 {
        lock(&self.rejected).get(&reason).copied().unwrap_or(0)
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut o = String::new();
        let _ = writeln!(o, "# HELP vigil_node_verdict 1 for each node's current verdict\n# TYPE vigil_node_verdict gauge");
        for (node, v) in lock(&self.verdict).iter() {
            let _ = writeln!(
                o,
                "vigil_node_verdict{} 1",
                labels(&vec![
                    ("node", node.clone()),
                    ("verdict", v.as_str().to_string())
                ])
            );
        }
        let _ = writeln!(o, "# HELP vigil_heartbeat_age_seconds Time since the node's latest heartbeat\n# TYPE vigil_heartbeat_age_seconds gauge");
        for (node, a) in lock(&self.heartbeat_age).iter() {
            let _ = writeln!(
                o,
                "vigil_heartbeat_age_seconds{} {a}",
                labels(&vec![("node", node.clone())])
            );
        }
        let _ = writeln!(o, "# HELP vigil_heartbeats_total Heartbeats processed\n# TYPE vigil_heartbeats_total counter");
        let _ = writeln!(o, "vigil_heartbeats_total {}", self.heartbeats.get());
        let _ = writeln!(o, "# HELP vigil_sensor_rejected_total Sensor streams or messages rejected, by reason\n# TYPE vigil_sensor_rejected_total counter");
        for (r, n) in lock(&self.rejected).iter() {
            let _ = writeln!(
                o,
                "vigil_sensor_rejected_total{} {n}",
                labels(&vec![("reason", r.label().to_string())])
            );
        }
        let _ = writeln!(o, "# HELP vigil_ping_probes_total ICMP echo probes sent\n# TYPE vigil_ping_probes_total counter");
        let pings = lock(&self.pings);
        for ((node, addr, role), (probes, _, _)) in pings.iter() {
            let l = labels(&vec![
                ("node", node.clone()),
                ("address", addr.clone()),
                ("role", role.clone()),
            ]);
            let _ = writeln!(o, "vigil_ping_probes_total{l} {probes}");
        }
        let _ = writeln!(o, "# HELP vigil_ping_lost_total ICMP echo probes without an answer in time\n# TYPE vigil_ping_lost_total counter");
        for ((node, addr, role), (_, lost, _)) in pings.iter() {
            let l = labels(&vec![
                ("node", node.clone()),
                ("address", addr.clone()),
                ("role", role.clone()),
            ]);
            let _ = writeln!(o, "vigil_ping_lost_total{l} {lost}");
        }
        let _ = writeln!(o, "# HELP vigil_ping_rtt_seconds Round-trip time of the latest answered probe\n# TYPE vigil_ping_rtt_seconds gauge");
        for ((node, addr, role), (_, _, rtt)) in pings.iter() {
            if let Some(r) = rtt {
                let l = labels(&vec![
                    ("node", node.clone()),
                    ("address", addr.clone()),
                    ("role", role.clone()),
                ]);
                let _ = writeln!(o, "vigil_ping_rtt_seconds{l} {r}");
            }
        }
        drop(pings);
        let h = &self.nova_poll_seconds;
        let _ = writeln!(o, "# HELP vigil_nova_poll_seconds Latency of Nova os-services polls\n# TYPE vigil_nova_poll_seconds histogram");
        for (b, c) in h.bounds.iter().zip(&h.counts) {
            let _ = writeln!(
                o,
                "vigil_nova_poll_seconds_bucket{{le=\"{b}\"}} {}",
                c.load(Ordering::Relaxed)
            );
        }
        let count = h.count.load(Ordering::Relaxed);
        let _ = writeln!(o, "vigil_nova_poll_seconds_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(
            o,
            "vigil_nova_poll_seconds_sum {}",
            h.sum_micros.load(Ordering::Relaxed) as f64 / 1e6
        );
        let _ = writeln!(o, "vigil_nova_poll_seconds_count {count}");
        let _ = writeln!(o, "# HELP vigil_nova_poll_errors_total Nova polls that failed\n# TYPE vigil_nova_poll_errors_total counter");
        let _ = writeln!(
            o,
            "vigil_nova_poll_errors_total {}",
            self.nova_poll_errors.get()
        );
        let _ = writeln!(o, "# HELP vigil_storm_guard_active 1 while the storm guard holds dead nodes\n# TYPE vigil_storm_guard_active gauge");
        let _ = writeln!(
            o,
            "vigil_storm_guard_active {}",
            self.storm_guard_active.0.load(Ordering::Relaxed)
        );
        o
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
                        "text/plain; version=0.0.4; charset=utf-8",
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
