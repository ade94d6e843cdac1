//! The `SensorStream` gRPC service: authenticates each node's stream, rejects
//! malformed or oversized messages with `InvalidArgument` (counted, never a
//! panic), converts heartbeats to the decider's own types and hands them to
//! the engine, which acks them. A second stream for a node replaces the first
//! (the engine sends the old one a `Goodbye`).

use crate::auth_throttle::{AuthThrottle, Failure};
use crate::config::{Secret, Tokens};
use crate::engine::{EngineHandle, Event, SensorUpdate};
use crate::metrics::{Metrics, RejectReason};
use crate::shutdown::Shutdown;
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use subtle::ConstantTimeEq;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tonic::{Code, Request, Response, Status, Streaming};
use tracing::{debug, info, warn, Instrument};
use vigil_proto::v1;
use vigil_proto::v1::sensor_stream_server::SensorStream;
use vigil_verdict::{
    BlockedTask, DeviceStall, InstanceActivity, NovaComputeProcess, ProbeMode, Signals,
};

/// Who may stream: one token per configured node, plus the enrolment token.
#[derive(Debug, Clone, Default)]
pub struct Authenticator {
    nodes: HashMap<String, Secret>,
    enrolment: Option<Secret>,
    /// `server.tls.cert_names_node`: the client certificate must name the
    /// node as well.
    cert_names_node: bool,
}

/// What a presented token proves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// A configured node with its own token.
    Known,
    /// An unknown node admitted by the enrolment token.
    Enrol,
}

impl Authenticator {
    pub fn new(tokens: &Tokens) -> Self {
        Authenticator {
            nodes: tokens.nodes.iter().cloned().collect(),
            enrolment: tokens.enrolment.clone(),
            cert_names_node: false,
        }
    }

    /// Binds client certificates to nodes (`server.tls.cert_names_node`).
    pub fn with_cert_names_node(mut self, on: bool) -> Self {
        self.cert_names_node = on;
        self
    }

    /// With certificates bound to nodes: the stream's client certificate
    /// (the first of the chain rustls verified) must name `node`.
    pub fn check_cert(&self, node: &str, certs: Option<&[Vec<u8>]>) -> Result<(), Status> {
        if !self.cert_names_node {
            return Ok(());
        }
        let Some(leaf) = certs.and_then(|c| c.first()) else {
            return Err(Status::unauthenticated(format!(
                "node {node}: this decider binds client certificates to nodes and the stream presented none; give the sensor --cert-file/--key-file"
            )));
        };
        if crate::cert_name::names_node(leaf, node) {
            Ok(())
        } else {
            Err(Status::permission_denied(format!(
                "node {node}: the client certificate names {:?}, not {node}; issue the node a certificate with DNS name (SAN) or CN {node}",
                crate::cert_name::names(leaf)
            )))
        }
    }

    /// Whether `token` is any configured node's or the enrolment token
    /// (every one compared, in constant time for a given token length).
    pub fn knows(&self, token: &str) -> bool {
        let mut known = subtle::Choice::from(0u8);
        for s in self.nodes.values().chain(self.enrolment.iter()) {
            known |= s.expose().as_bytes().ct_eq(token.as_bytes());
        }
        bool::from(known)
    }

    /// Checks `token` for `node` in constant time (for a given token length).
    pub fn admit(&self, node: &str, token: &str) -> Result<Admission, Status> {
        let matches = |s: &Secret| bool::from(s.expose().as_bytes().ct_eq(token.as_bytes()));
        match self.nodes.get(node) {
            Some(s) if matches(s) => Ok(Admission::Known),
            Some(_) => Err(Status::unauthenticated(format!(
                "token does not match node {node}'s token file; check the sensor's --token-file"
            ))),
            None => match &self.enrolment {
                Some(s) if matches(s) => Ok(Admission::Enrol),
                Some(_) => Err(Status::unauthenticated(format!(
                    "node {node} is not configured and the token is not the enrolment token"
                ))),
                None => Err(Status::permission_denied(format!(
                    "node {node} is not in the decider's node list and enrolment is disabled; add a [[node]] entry for it"
                ))),
            },
        }
    }
}

/// Limits on a heartbeat's contents beyond the byte size.
const MAX_NAME: usize = 255;
const MAX_ITEMS: usize = 4096;

pub struct HeartbeatService {
    engine: EngineHandle,
    auth: Arc<Authenticator>,
    metrics: Arc<Metrics>,
    first_message_timeout: Duration,
    max_message_bytes: usize,
    next_stream: AtomicU64,
    /// Failed authentication per peer address: refused past a budget,
    /// logged once per window.
    throttle: Arc<AuthThrottle>,
    /// Ends every stream's reader at shutdown, so open streams close.
    shutdown: Shutdown,
}

impl HeartbeatService {
    pub fn new(
        engine: EngineHandle,
        auth: Arc<Authenticator>,
        metrics: Arc<Metrics>,
        first_message_timeout: Duration,
        max_message_bytes: usize,
        shutdown: Shutdown,
    ) -> Self {
        let throttle = Arc::new(AuthThrottle::new());
        tokio::spawn(summarise_failures(throttle.clone(), shutdown.clone()));
        HeartbeatService {
            engine,
            auth,
            metrics,
            first_message_timeout,
            max_message_bytes,
            next_stream: AtomicU64::new(1),
            throttle,
            shutdown,
        }
    }

    /// The tonic server for this service, with the message size limit set.
    pub fn into_server(self) -> v1::sensor_stream_server::SensorStreamServer<Self> {
        let max = self.max_message_bytes;
        v1::sensor_stream_server::SensorStreamServer::new(self).max_decoding_message_size(max)
    }
}

/// Logs, once per throttle window, each peer that kept failing to
/// authenticate, in one line instead of one per attempt.
async fn summarise_failures(throttle: Arc<AuthThrottle>, shutdown: Shutdown) {
    let stop = shutdown.wait();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => return,
            _ = tokio::time::sleep(crate::auth_throttle::WINDOW) => {}
        }
        for s in throttle.sweep(std::time::Instant::now()) {
            warn!(
                peer = %crate::logging::or_unknown(s.peer),
                failures = s.failures,
                refused = s.refused,
                window = %humantime::format_duration(crate::auth_throttle::WINDOW),
                "sensor streams kept failing authentication from this address; refused ones were not checked"
            );
        }
    }
}

/// Records a failed authentication of `peer`: the first one in a window is
/// logged, the rest go into that window's summary.
fn auth_failed(
    throttle: &AuthThrottle,
    peer: Option<std::net::IpAddr>,
    node: Option<&str>,
    why: &str,
) {
    if throttle.failed(peer, std::time::Instant::now()) == Failure::Log {
        warn!(peer = %crate::logging::or_unknown(peer), node = node.unwrap_or("?"), error = %why, "sensor stream rejected (further failures from this address are summarised)");
    } else {
        debug!(peer = %crate::logging::or_unknown(peer), error = %why, "sensor stream rejected");
    }
}

/// `authorization: Bearer <token>`.
fn bearer(req: &Request<Streaming<v1::SensorMessage>>) -> Result<String, Status> {
    let value = req.metadata().get("authorization").ok_or_else(|| {
        Status::unauthenticated("missing `authorization: Bearer <token>` metadata")
    })?;
    let text = value
        .to_str()
        .map_err(|_| Status::unauthenticated("authorization metadata is not ASCII"))?;
    text.strip_prefix("Bearer ")
        .map(|t| t.trim().to_string())
        .ok_or_else(|| Status::unauthenticated("authorization metadata must be `Bearer <token>`"))
}

/// The wire heartbeat in the decider's own terms.
pub fn to_update(hb: &v1::Heartbeat) -> SensorUpdate {
    let ms = Duration::from_millis;
    let nova_compute = match hb.nova_compute.as_ref().map(|n| (n.state(), n.blocked_ms)) {
        Some((v1::nova_compute::State::Running, _)) => NovaComputeProcess::Running,
        Some((v1::nova_compute::State::Blocked, b)) => {
            NovaComputeProcess::Blocked { blocked_for: ms(b) }
        }
        Some((v1::nova_compute::State::Gone, _)) => NovaComputeProcess::Gone,
        _ => NovaComputeProcess::Unknown,
    };
    let health = hb.health.as_ref();
    SensorUpdate {
        boot_id: hb.boot_id.clone(),
        instance: hb.sensor_instance.clone(),
        seq: hb.seq,
        interval: ms(u64::from(hb.interval_ms)),
        signals: Signals {
            mode: match hb.mode() {
                v1::ProbeMode::Ebpf => ProbeMode::Ebpf,
                v1::ProbeMode::Procfs => ProbeMode::Procfs,
                v1::ProbeMode::Unspecified => ProbeMode::Unknown,
            },
            nova_compute,
            blocked_tasks: hb
                .blocked_tasks
                .iter()
                .map(|t| BlockedTask {
                    pid: t.pid,
                    comm: t.comm.clone(),
                    blocked_for: ms(t.blocked_ms),
                })
                .collect(),
            device_stalls: hb
                .device_stalls
                .iter()
                .map(|d| DeviceStall {
                    device: if d.name.is_empty() {
                        d.device.clone()
                    } else {
                        d.name.clone()
                    },
                    in_flight: d.in_flight,
                    oldest: ms(d.oldest_ms),
                })
                .collect(),
            instances: hb
                .instances
                .iter()
                .map(|i| InstanceActivity {
                    uuid: i.uuid.clone(),
                    alive: i.alive,
                    cpu_delta: Duration::from_nanos(i.cpu_ns_delta),
                    exited: i.exited,
                })
                .collect(),
            hung_task_events: health.map_or(0, |h| h.hung_task_events),
            failed_probes: health.map(|h| h.failed_probes.clone()).unwrap_or_default(),
        },
    }
}

type OutStream = Pin<Box<dyn Stream<Item = Result<v1::DeciderMessage, Status>> + Send>>;

#[tonic::async_trait]
impl SensorStream for HeartbeatService {
    type StreamStream = OutStream;

    async fn stream(
        &self,
        req: Request<Streaming<v1::SensorMessage>>,
    ) -> Result<Response<Self::StreamStream>, Status> {
        let peer = req.remote_addr().map(|a| a.ip());
        if let Err(wait) = self.throttle.admit(peer, std::time::Instant::now()) {
            self.metrics.reject(RejectReason::Throttled);
            return Err(Status::resource_exhausted(format!(
                "too many failed authentications from this address; retry in {} with the right token",
                humantime::format_duration(Duration::from_secs(wait.as_secs().saturating_add(1)))
            )));
        }
        // The certificate chain rustls verified, if the client sent one; its
        // name is checked against the node once the first heartbeat names it.
        let certs: Option<Vec<Vec<u8>>> = req
            .peer_certs()
            .map(|c| c.iter().map(|d| d.as_ref().to_vec()).collect());
        let token = bearer(&req).inspect_err(|s| {
            self.metrics.reject(RejectReason::Unauthenticated);
            auth_failed(&self.throttle, peer, None, s.message());
        })?;
        // A token no node and no enrolment knows is refused at once. Which
        // node it must belong to is known only from the first heartbeat.
        if !self.auth.knows(&token) {
            self.metrics.reject(RejectReason::Unauthenticated);
            auth_failed(&self.throttle, peer, None, "unknown token");
            return Err(Status::unauthenticated(
                "the token is no configured node's and not the enrolment token; check the sensor's --token-file",
            ));
        }
        // Answer now and read the first heartbeat afterwards: a client may
        // (and the sensor does) wait for the response headers before sending
        // anything, so waiting for its first message here would stall both
        // sides until the first-message timeout. Refusals after this point
        // end the stream with their status.
        let (out_tx, out_rx) = mpsc::channel(64);
        let stream_id = self.next_stream.fetch_add(1, Ordering::Relaxed);
        let task = StreamTask {
            inbound: req.into_inner(),
            out_tx,
            token,
            certs,
            peer,
            stream_id,
            auth: self.auth.clone(),
            throttle: self.throttle.clone(),
            metrics: self.metrics.clone(),
            engine: self.engine.clone(),
            first_message_timeout: self.first_message_timeout,
            shutdown: self.shutdown.clone(),
        };
        tokio::spawn(task.run());
        Ok(Response::new(Box::pin(ReceiverStream::new(out_rx))))
    }
}

/// One sensor stream, from its first heartbeat to its end.
struct StreamTask {
    inbound: Streaming<v1::SensorMessage>,
    out_tx: mpsc::Sender<Result<v1::DeciderMessage, Status>>,
    token: String,
    certs: Option<Vec<Vec<u8>>>,
    peer: Option<std::net::IpAddr>,
    stream_id: u64,
    auth: Arc<Authenticator>,
    throttle: Arc<AuthThrottle>,
    metrics: Arc<Metrics>,
    engine: EngineHandle,
    first_message_timeout: Duration,
    shutdown: Shutdown,
}

impl StreamTask {
    /// Reads and checks the first heartbeat (the node names itself there;
    /// the token must be that node's), registers the stream with the engine,
    /// then forwards heartbeats until the stream ends.
    async fn run(self) {
        let StreamTask {
            mut inbound,
            out_tx,
            token,
            certs,
            peer,
            stream_id,
            auth,
            throttle,
            metrics,
            engine,
            first_message_timeout,
            shutdown,
        } = self;
        let refuse = |s: Status| {
            let out_tx = out_tx.clone();
            async move {
                let _ = out_tx.send(Err(s)).await;
            }
        };
        let first = match tokio::time::timeout(first_message_timeout, inbound.message()).await {
            Err(_) => {
                return refuse(Status::deadline_exceeded(format!(
                    "no heartbeat within {} of opening the stream",
                    humantime::format_duration(first_message_timeout)
                )))
                .await
            }
            Ok(Err(s)) => return refuse(receive_error(&metrics, s)).await,
            Ok(Ok(None)) => {
                metrics.reject(RejectReason::Invalid);
                return refuse(Status::invalid_argument(
                    "stream closed before its first heartbeat",
                ))
                .await;
            }
            Ok(Ok(Some(m))) => match check_heartbeat(&metrics, m) {
                Ok(hb) => hb,
                Err(s) => return refuse(s).await,
            },
        };
        let node = first.node.clone();
        let admitted = match auth.admit(&node, &token) {
            Ok(a) => Ok(a),
            Err(s) if s.code() == Code::PermissionDenied => Err((s, RejectReason::UnknownNode)),
            Err(s) => Err((s, RejectReason::Unauthenticated)),
        }
        .and_then(|a| {
            auth.check_cert(&node, certs.as_deref())
                .map(|()| a)
                .map_err(|s| (s, RejectReason::Certificate))
        });
        let admission = match admitted {
            Ok(a) => a,
            Err((s, reason)) => {
                metrics.reject(reason);
                auth_failed(&throttle, peer, Some(&node), s.message());
                return refuse(s).await;
            }
        };
        let (replaced_tx, mut replaced_rx) = oneshot::channel();
        let events = engine.events.clone();
        let open = Event::StreamOpened {
            node: node.clone(),
            stream_id,
            peer,
            enrol: admission == Admission::Enrol,
            outbound: out_tx.clone(),
            replaced: replaced_tx,
        };
        if events.send(open).await.is_err() {
            return refuse(Status::unavailable("decider is shutting down")).await;
        }
        info!(node = %node, stream = stream_id, peer = %crate::logging::or_unknown(peer), "sensor stream open");
        let clock = engine.clock;
        let send_hb = move |hb: v1::Heartbeat| Event::Heartbeat {
            node: hb.node.clone(),
            stream_id,
            received_at: clock.now(),
            update: Box::new(to_update(&hb)),
            raw: Arc::new(hb),
        };
        if events.send(send_hb(first)).await.is_err() {
            return refuse(Status::unavailable("decider is shutting down")).await;
        }

        let shutdown = shutdown.wait();
        let span = tracing::info_span!("sensor_stream", node = %node, stream = stream_id);
        async move {
            tokio::pin!(shutdown);
            loop {
                let next = tokio::select! {
                    _ = &mut shutdown => {
                        let _ = out_tx.send(Ok(v1::DeciderMessage {
                            kind: Some(v1::decider_message::Kind::Goodbye(v1::Goodbye {
                                reason: "decider shutting down".to_string(),
                            })),
                        })).await;
                        break;
                    }
                    _ = &mut replaced_rx => {
                        debug!("replaced by a newer stream; closing this one");
                        break;
                    }
                    m = inbound.message() => m,
                };
                match next {
                    // A kind this decider does not know (a newer sensor's):
                    // skipped, so sensors can add message kinds without
                    // breaking deciders one release older. The first message
                    // is always a heartbeat (it names the node).
                    Ok(Some(m)) if m.kind.is_none() => {
                        debug!("skipping a sensor message of a kind this decider does not know");
                    }
                    Ok(Some(m)) => match check_heartbeat(&metrics, m) {
                        Ok(hb) if hb.node != node => {
                            metrics.reject(RejectReason::Invalid);
                            let _ = out_tx
                                .send(Err(Status::invalid_argument(format!(
                                    "this stream belongs to node {node}; a heartbeat named {}",
                                    hb.node
                                ))))
                                .await;
                            break;
                        }
                        Ok(hb) => {
                            if events.send(send_hb(hb)).await.is_err() {
                                break;
                            }
                        }
                        Err(s) => {
                            let _ = out_tx.send(Err(s)).await;
                            break;
                        }
                    },
                    Ok(None) => break,
                    Err(s) => {
                        let s = receive_error(&metrics, s);
                        if s.code() == Code::InvalidArgument {
                            let _ = out_tx.send(Err(s)).await;
                        }
                        break;
                    }
                }
            }
            let _ = events
                .send(Event::StreamClosed {
                    node: node.clone(),
                    stream_id,
                })
                .await;
        }
        .instrument(span)
        .await
    }
}

/// Maps a receive error to what the sensor is told, counting rejections:
/// oversized and undecodable messages become `InvalidArgument`.
fn receive_error(metrics: &Metrics, s: Status) -> Status {
    let (reason, msg) = match s.code() {
        // tonic reports a message over max_decoding_message_size as OutOfRange.
        Code::OutOfRange => (
            RejectReason::Oversized,
            format!("message too large: {}", s.message()),
        ),
        Code::Internal | Code::InvalidArgument | Code::DataLoss | Code::Unimplemented => (
            RejectReason::Malformed,
            format!("malformed message: {}", s.message()),
        ),
        _ => return s,
    };
    metrics.reject(reason);
    Status::invalid_argument(msg)
}

/// Checks a message and takes its heartbeat out; rejections are counted.
pub fn check_heartbeat(metrics: &Metrics, m: v1::SensorMessage) -> Result<v1::Heartbeat, Status> {
    let invalid = |msg: String| {
        metrics.reject(RejectReason::Invalid);
        Status::invalid_argument(msg)
    };
    let hb = match m.kind {
        Some(v1::sensor_message::Kind::Heartbeat(hb)) => hb,
        None => return Err(invalid("message carries no heartbeat".to_string())),
    };
    if hb.node.is_empty() || hb.node.len() > MAX_NAME {
        return Err(invalid(format!(
            "heartbeat node name must be 1..{MAX_NAME} bytes"
        )));
    }
    if hb.boot_id.is_empty() || hb.boot_id.len() > MAX_NAME {
        return Err(invalid(format!(
            "heartbeat boot_id must be 1..{MAX_NAME} bytes"
        )));
    }
    if hb.seq == 0 {
        return Err(invalid("heartbeat seq starts at 1".to_string()));
    }
    if hb.instances.len() > MAX_ITEMS
        || hb.blocked_tasks.len() > MAX_ITEMS
        || hb.device_stalls.len() > MAX_ITEMS
    {
        return Err(invalid(format!(
            "heartbeat lists more than {MAX_ITEMS} items of one kind"
        )));
    }
    check_bounds(&hb).map_err(|e| invalid(format!("heartbeat field {e}")))?;
    Ok(hb)
}

/// The highest believable seq: one heartbeat a millisecond for 8,900 years.
/// A larger one is a broken or hostile sensor, not a long uptime.
const MAX_SEQ: u64 = 1 << 48;
/// The longest duration a sensor can have observed: a year (a longer
/// `blocked_ms` would predate any uptime this sensor could have seen).
const MAX_OBSERVED_MS: u64 = 366 * 24 * 3600 * 1000;
/// Declared intervals above a minute are not a heartbeat.
const MAX_INTERVAL_MS: u32 = 60_000;
/// Longest free text (sensor version, comm, cgroup path, health message).
const MAX_TEXT: usize = 4096;

/// Every field's physical bound and defined meaning. The error names the
/// field (with its index in a list) and what is valid.
fn check_bounds(hb: &v1::Heartbeat) -> Result<(), String> {
    let text = |field: &str, s: &str, max: usize| {
        if s.len() > max {
            Err(format!("{field}: {} bytes, at most {max}", s.len()))
        } else {
            Ok(())
        }
    };
    let duration = |field: &str, ms: u64| {
        if ms > MAX_OBSERVED_MS {
            Err(format!(
                "{field} = {ms}: at most {MAX_OBSERVED_MS} (a year)"
            ))
        } else {
            Ok(())
        }
    };
    let share = |field: &str, v: f64, max: f64| {
        if v.is_finite() && (0.0..=max).contains(&v) {
            Ok(())
        } else {
            Err(format!("{field} = {v}: must be a number from 0 to {max}"))
        }
    };
    if hb.seq > MAX_SEQ {
        return Err(format!("seq = {}: at most {MAX_SEQ}", hb.seq));
    }
    if hb.interval_ms > MAX_INTERVAL_MS {
        return Err(format!(
            "interval_ms = {}: at most {MAX_INTERVAL_MS} (0 = not said)",
            hb.interval_ms
        ));
    }
    if v1::ProbeMode::try_from(hb.mode).is_err() {
        return Err(format!("mode = {}: not a known ProbeMode", hb.mode));
    }
    text("sensor_version", &hb.sensor_version, MAX_NAME)?;
    text("sensor_instance", &hb.sensor_instance, 64)?;
    if !hb.system_uuid.is_empty() && !vigil_proto::system_uuid::is_canonical(&hb.system_uuid) {
        return Err(format!(
            "system_uuid = {:?}: must be empty or a lowercase hyphenated UUID \
             (8-4-4-4-12 hex, not all zeros or all Fs)",
            hb.system_uuid.chars().take(40).collect::<String>()
        ));
    }
    for (i, t) in hb.blocked_tasks.iter().enumerate() {
        text(&format!("blocked_tasks[{i}].comm"), &t.comm, MAX_NAME)?;
        text(&format!("blocked_tasks[{i}].cgroup"), &t.cgroup, MAX_TEXT)?;
        duration(&format!("blocked_tasks[{i}].blocked_ms"), t.blocked_ms)?;
        share(&format!("blocked_tasks[{i}].d_share"), t.d_share, 1.0)?;
    }
    for (i, d) in hb.device_stalls.iter().enumerate() {
        text(&format!("device_stalls[{i}].device"), &d.device, MAX_NAME)?;
        text(&format!("device_stalls[{i}].name"), &d.name, MAX_NAME)?;
        duration(&format!("device_stalls[{i}].oldest_ms"), d.oldest_ms)?;
    }
    for (i, inst) in hb.instances.iter().enumerate() {
        text(&format!("instances[{i}].uuid"), &inst.uuid, MAX_NAME)?;
        text(&format!("instances[{i}].name"), &inst.name, MAX_NAME)?;
    }
    if let Some(n) = &hb.nova_compute {
        if v1::nova_compute::State::try_from(n.state).is_err() {
            return Err(format!(
                "nova_compute.state = {}: not a known NovaCompute.State",
                n.state
            ));
        }
        duration("nova_compute.blocked_ms", n.blocked_ms)?;
    }
    if let Some(p) = &hb.pressure {
        for (name, psi) in [("io", &p.io), ("memory", &p.memory), ("cpu", &p.cpu)] {
            if let Some(psi) = psi {
                // PSI averages are percentages.
                share(
                    &format!("pressure.{name}.some_avg10"),
                    psi.some_avg10,
                    100.0,
                )?;
                share(
                    &format!("pressure.{name}.full_avg10"),
                    psi.full_avg10,
                    100.0,
                )?;
            }
        }
    }
    if let Some(h) = &hb.health {
        for (field, list) in [
            ("attached_probes", &h.attached_probes),
            ("failed_probes", &h.failed_probes),
        ] {
            if list.len() > MAX_ITEMS {
                return Err(format!("health.{field}: more than {MAX_ITEMS} entries"));
            }
            for (i, p) in list.iter().enumerate() {
                text(&format!("health.{field}[{i}]"), p, MAX_NAME)?;
            }
        }
        text("health.message", &h.message, MAX_TEXT)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn good() -> v1::Heartbeat {
        v1::Heartbeat {
            node: "compute1".into(),
            boot_id: "boot".into(),
            seq: 7,
            interval_ms: 1000,
            mode: v1::ProbeMode::Ebpf as i32,
            sensor_instance: "run-1".into(),
            system_uuid: "4c4c4544-0042-3510-8052-b4c04f4b4e32".into(),
            blocked_tasks: vec![v1::BlockedTask {
                comm: "nova-compute".into(),
                blocked_ms: 4000,
                d_share: 0.9,
                ..Default::default()
            }],
            device_stalls: vec![v1::DeviceStall {
                device: "7:2".into(),
                name: "loop2".into(),
                in_flight: 1,
                oldest_ms: 10_000,
            }],
            nova_compute: Some(v1::NovaCompute {
                state: v1::nova_compute::State::Blocked as i32,
                pid: 42,
                blocked_ms: 4000,
            }),
            pressure: Some(v1::Pressure {
                io: Some(v1::Psi {
                    some_avg10: 12.5,
                    full_avg10: 100.0,
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn check(hb: v1::Heartbeat) -> (Result<v1::Heartbeat, Status>, u64) {
        let m = Metrics::new();
        let r = check_heartbeat(
            &m,
            v1::SensorMessage {
                kind: Some(v1::sensor_message::Kind::Heartbeat(hb)),
            },
        );
        (r, m.rejected(RejectReason::Invalid))
    }

    #[test]
    fn a_sound_heartbeat_passes() {
        let (r, rejected) = check(good());
        r.expect("valid");
        assert_eq!(rejected, 0);
        let unknown = v1::Heartbeat {
            system_uuid: String::new(),
            ..good()
        };
        check(unknown)
            .0
            .expect("an empty system_uuid means unknown");
    }

    /// Each absurd value of the issue is refused as `InvalidArgument` naming
    /// its field, and counted.
    #[test]
    fn absurd_values_are_refused_naming_the_field() {
        type Spoil = fn(&mut v1::Heartbeat);
        let cases: &[(&str, Spoil)] = &[
            ("blocked_tasks[0].blocked_ms", |h| {
                h.blocked_tasks[0].blocked_ms = u64::MAX
            }),
            ("nova_compute.blocked_ms", |h| {
                if let Some(n) = h.nova_compute.as_mut() {
                    n.blocked_ms = u64::MAX
                }
            }),
            ("device_stalls[0].oldest_ms", |h| {
                h.device_stalls[0].oldest_ms = u64::MAX
            }),
            ("blocked_tasks[0].d_share", |h| {
                h.blocked_tasks[0].d_share = f64::NAN
            }),
            ("blocked_tasks[0].d_share", |h| {
                h.blocked_tasks[0].d_share = f64::INFINITY
            }),
            ("blocked_tasks[0].d_share", |h| {
                h.blocked_tasks[0].d_share = -0.5
            }),
            ("pressure.io.some_avg10", |h| {
                if let Some(io) = h.pressure.as_mut().and_then(|p| p.io.as_mut()) {
                    io.some_avg10 = f64::NEG_INFINITY
                }
            }),
            ("pressure.io.full_avg10", |h| {
                if let Some(io) = h.pressure.as_mut().and_then(|p| p.io.as_mut()) {
                    io.full_avg10 = f64::NAN
                }
            }),
            ("mode = 99", |h| h.mode = 99),
            ("nova_compute.state = 99", |h| {
                if let Some(n) = h.nova_compute.as_mut() {
                    n.state = 99
                }
            }),
            ("interval_ms = 4294967295", |h| h.interval_ms = u32::MAX),
            ("seq = 18446744073709551615", |h| h.seq = u64::MAX),
            ("sensor_instance", |h| h.sensor_instance = "x".repeat(65)),
            ("system_uuid", |h| {
                h.system_uuid = "4C4C4544-0042-3510-8052-B4C04F4B4E32".into()
            }),
            ("system_uuid", |h| h.system_uuid = "not-a-uuid".into()),
            ("system_uuid", |h| h.system_uuid = "u".repeat(100_000)),
            ("system_uuid", |h| {
                h.system_uuid = "00000000-0000-0000-0000-000000000000".into()
            }),
            ("blocked_tasks[0].cgroup", |h| {
                h.blocked_tasks[0].cgroup = "c".repeat(MAX_TEXT + 1)
            }),
            ("health.message", |h| {
                h.health = Some(v1::SensorHealth {
                    message: "m".repeat(MAX_TEXT + 1),
                    ..Default::default()
                })
            }),
        ];
        for (field, spoil) in cases {
            let mut hb = good();
            spoil(&mut hb);
            let (r, rejected) = check(hb);
            let e = r.expect_err(field);
            assert_eq!(e.code(), Code::InvalidArgument, "{field}");
            assert!(e.message().contains(field), "{field}: {}", e.message());
            assert_eq!(rejected, 1, "{field}: counted");
        }
    }
}
