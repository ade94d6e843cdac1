//! The `SensorStream` gRPC service: authenticates each node's stream, rejects
//! malformed or oversized messages with `InvalidArgument` (counted, never a
//! panic), converts heartbeats to the decider's own types and hands them to
//! the engine, which acks them. A second stream for a node replaces the first
//! (the engine sends the old one a `Goodbye`).

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
        HeartbeatService {
            engine,
            auth,
            metrics,
            first_message_timeout,
            max_message_bytes,
            next_stream: AtomicU64::new(1),
            shutdown,
        }
    }

    /// The tonic server for this service, with the message size limit set.
    pub fn into_server(self) -> v1::sensor_stream_server::SensorStreamServer<Self> {
        let max = self.max_message_bytes;
        v1::sensor_stream_server::SensorStreamServer::new(self).max_decoding_message_size(max)
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
        let token =
            bearer(&req).inspect_err(|_| self.metrics.reject(RejectReason::Unauthenticated))?;
        // A token no node and no enrolment knows is refused at once. Which
        // node it must belong to is known only from the first heartbeat.
        if !self.auth.knows(&token) {
            self.metrics.reject(RejectReason::Unauthenticated);
            warn!(peer = ?peer, "sensor stream rejected: unknown token");
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
            peer,
            stream_id,
            auth: self.auth.clone(),
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
    peer: Option<std::net::IpAddr>,
    stream_id: u64,
    auth: Arc<Authenticator>,
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
            peer,
            stream_id,
            auth,
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
        let admission = match auth.admit(&node, &token) {
            Ok(a) => a,
            Err(s) => {
                let reason = if s.code() == Code::PermissionDenied {
                    RejectReason::UnknownNode
                } else {
                    RejectReason::Unauthenticated
                };
                metrics.reject(reason);
                warn!(node = %node, peer = ?peer, error = %s.message(), "sensor stream rejected");
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
        info!(node = %node, stream = stream_id, peer = ?peer, "sensor stream open");
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
    Ok(hb)
}
