//! The `Operator` gRPC service: nodes with their verdicts and every witness's
//! latest reading, a stream of verdict changes, incidents. This is where the
//! decider's own types become protobuf; nothing inside the engine sees these.

use crate::engine::{EngineHandle, VerdictChanged};
use crate::node_state::NodeState;
use std::pin::Pin;
use std::sync::PoisonError;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status};
use tracing::warn;
use vigil_proto::v1;
use vigil_proto::v1::operator_server::Operator;
use vigil_verdict::{Moment, NovaWitness, SensorWitness, ServiceState, Verdict};

pub struct OperatorService {
    engine: EngineHandle,
}

impl OperatorService {
    pub fn new(engine: EngineHandle) -> Self {
        OperatorService { engine }
    }

    pub fn into_server(self) -> v1::operator_server::OperatorServer<Self> {
        v1::operator_server::OperatorServer::new(self)
    }
}

pub fn verdict_to_proto(v: Verdict) -> v1::Verdict {
    match v {
        Verdict::Healthy => v1::Verdict::Healthy,
        Verdict::Maintenance => v1::Verdict::Maintenance,
        Verdict::Degraded => v1::Verdict::Degraded,
        Verdict::Suspect => v1::Verdict::Suspect,
        Verdict::Dead => v1::Verdict::Dead,
        Verdict::Fencing => v1::Verdict::Fencing,
        Verdict::Fenced => v1::Verdict::Fenced,
        Verdict::Evacuating => v1::Verdict::Evacuating,
        Verdict::Recovered => v1::Verdict::Recovered,
        Verdict::NeedsAttention => v1::Verdict::NeedsAttention,
    }
}

fn ms(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// How much of a node to show.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detail {
    /// Everything, including the latest heartbeat verbatim (GetNode).
    Full,
    /// Without the latest heartbeat (ListNodes): with thousands of nodes the
    /// full heartbeats would make the answer megabytes long, and a listing
    /// needs only the verdicts and the witnesses' summaries.
    Summary,
}

/// One node as the operator API shows it, ages measured at `now`.
pub fn node_to_proto(st: &NodeState, now: Moment, detail: Detail) -> v1::Node {
    let ev = &st.evidence;
    let sensor = match &ev.sensor {
        SensorWitness::NeverSeen { .. } => v1::SensorWitness::default(),
        SensorWitness::Seen(r) => v1::SensorWitness {
            connected: r.connected,
            has_heartbeat: true,
            heartbeat_age_ms: ms(now.since(r.last_heartbeat_at)),
            seq: r.seq,
            boot_id: r.boot_id.clone(),
            seq_gaps: r.seq_gaps,
            boot_changes: r.boot_changes,
            latest: match detail {
                Detail::Full => st.latest_heartbeat.as_deref().cloned(),
                Detail::Summary => None,
            },
        },
    };
    let raw = st.nova_service.as_ref();
    let mut nova = v1::NovaWitness {
        service_id: raw.map(|s| s.id.clone()).unwrap_or_default(),
        updated_at: raw.and_then(|s| s.updated_at.clone()).unwrap_or_default(),
        ..Default::default()
    };
    let service = match &ev.nova {
        NovaWitness::NotPolled { .. } => {
            nova.error = "not polled yet".to_string();
            None
        }
        NovaWitness::Unreachable {
            error, last_known, ..
        } => {
            nova.error = error.clone();
            last_known.as_ref()
        }
        NovaWitness::NotListed { .. } => {
            nova.reachable = true;
            nova.error = "Nova lists no nova-compute service for this host".to_string();
            None
        }
        NovaWitness::Listed(s) => {
            nova.reachable = true;
            Some(s)
        }
    };
    if let Some(s) = service {
        nova.state = match s.state {
            ServiceState::Up => "up",
            ServiceState::Down => "down",
            ServiceState::Unknown => "unknown",
        }
        .to_string();
        nova.status = if s.enabled { "enabled" } else { "disabled" }.to_string();
        nova.forced_down = s.forced_down;
        nova.disabled_reason = s.disabled_reason.clone().unwrap_or_default();
        nova.updated_at_stalled_ms = ms(s.updated_at_stalled);
        nova.instance_count = s
            .instances
            .as_ref()
            .map_or(0, |i| u32::try_from(i.len()).unwrap_or(u32::MAX));
    }
    let pings = ev
        .pings
        .iter()
        .map(|p| v1::PingTarget {
            address: p.address.to_string(),
            role: p.role.label(),
            answering: p.consecutive_failures == 0 && p.last_answer_at.is_some(),
            rtt_ms: p.last_rtt.map_or(0.0, |d| d.as_secs_f64() * 1000.0),
            has_answered: p.last_answer_at.is_some(),
            last_answer_age_ms: p.last_answer_at.map_or(0, |t| ms(now.since(t))),
        })
        .collect();
    v1::Node {
        name: st.name.clone(),
        verdict: verdict_to_proto(st.tracker.verdict()) as i32,
        since_unix_ms: st.since_unix_ms,
        reasons: st.tracker.reasons().to_vec(),
        sensor: Some(sensor),
        nova: Some(nova),
        pings,
        incident_id: st.incident_id.clone().unwrap_or_default(),
    }
}

fn change_to_proto(c: &VerdictChanged) -> v1::VerdictChange {
    v1::VerdictChange {
        node: c.node.clone(),
        from: verdict_to_proto(c.from) as i32,
        to: verdict_to_proto(c.to) as i32,
        reasons: c.reasons.clone(),
        at_unix_ms: c.at_unix_ms,
    }
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<v1::VerdictChange, Status>> + Send>>;

#[tonic::async_trait]
impl Operator for OperatorService {
    async fn list_nodes(
        &self,
        _: Request<v1::ListNodesRequest>,
    ) -> Result<Response<v1::ListNodesResponse>, Status> {
        let now = self.engine.clock.now();
        let nodes: Vec<_> = self
            .engine
            .nodes
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .cloned()
            .collect();
        let nodes = nodes
            .iter()
            .map(|n| {
                node_to_proto(
                    &n.lock().unwrap_or_else(PoisonError::into_inner),
                    now,
                    Detail::Summary,
                )
            })
            .collect();
        Ok(Response::new(v1::ListNodesResponse { nodes }))
    }

    async fn get_node(
        &self,
        req: Request<v1::GetNodeRequest>,
    ) -> Result<Response<v1::Node>, Status> {
        let name = req.into_inner().name;
        let now = self.engine.clock.now();
        let node = self
            .engine
            .nodes
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&name)
            .cloned();
        match node {
            Some(n) => Ok(Response::new(node_to_proto(
                &n.lock().unwrap_or_else(PoisonError::into_inner),
                now,
                Detail::Full,
            ))),
            None => Err(Status::not_found(format!(
                "no node named {name:?}; ListNodes shows the nodes this decider watches"
            ))),
        }
    }

    type WatchVerdictsStream = WatchStream;

    async fn watch_verdicts(
        &self,
        req: Request<v1::WatchVerdictsRequest>,
    ) -> Result<Response<Self::WatchVerdictsStream>, Status> {
        let filter = req.into_inner().node;
        let rx = self.engine.changes.subscribe();
        let stream = BroadcastStream::new(rx).filter_map(move |item| match item {
            // Same-verdict notices (a storm hold set or lifted) are for the
            // recovery workflow, not for people watching changes.
            Ok(c) if c.from == c.to => None,
            Ok(c) if filter.is_empty() || c.node == filter => Some(Ok(change_to_proto(&c))),
            Ok(_) => None,
            Err(BroadcastStreamRecvError::Lagged(n)) => {
                warn!(missed = n, "a verdict watcher fell behind; it missed changes");
                Some(Err(Status::data_loss(format!(
                    "this watcher fell {n} changes behind and missed them; call ListNodes and watch again"
                ))))
            }
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn list_incidents(
        &self,
        _: Request<v1::ListIncidentsRequest>,
    ) -> Result<Response<v1::ListIncidentsResponse>, Status> {
        // The recovery workflow and its journal are not wired in yet: no
        // incident can exist, so the honest answer is an empty list.
        Ok(Response::new(v1::ListIncidentsResponse {
            incidents: vec![],
        }))
    }

    async fn get_incident(
        &self,
        req: Request<v1::GetIncidentRequest>,
    ) -> Result<Response<v1::Incident>, Status> {
        Err(Status::not_found(format!(
            "no incident {:?}: this decider has no recovery journal yet",
            req.into_inner().id
        )))
    }

    async fn confirm_power_off(
        &self,
        _: Request<v1::ConfirmPowerOffRequest>,
    ) -> Result<Response<v1::ConfirmPowerOffResponse>, Status> {
        Err(Status::unimplemented(
            "ConfirmPowerOff needs the recovery workflow, which this decider does not run yet",
        ))
    }
}
