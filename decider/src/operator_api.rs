//! The `Operator` gRPC service: nodes with their verdicts and every witness's
//! latest reading, a stream of verdict changes, incidents. This is where the
//! decider's own types become protobuf; nothing inside the engine sees these.

use crate::config::Secret;
use crate::engine::{EngineHandle, VerdictChanged};
use crate::node_proto::{node_to_proto, verdict_to_proto, Detail};
use crate::node_state::NodeState;
use crate::recovery::driver::ConfirmError;
use crate::recovery::RecoveryHandle;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use subtle::ConstantTimeEq;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status};
use tracing::warn;
use vigil_proto::v1;
use vigil_proto::v1::operator_server::Operator;
use vigil_recovery::journal::{
    IncidentDetail, IncidentId, IncidentStatus, IncidentSummary, JournalError,
};

pub struct OperatorService {
    engine: EngineHandle,
    recovery: Option<RecoveryHandle>,
    /// `[cluster]`: leadership and views.
    cluster: Option<crate::cluster::ClusterParts>,
    /// Bearer token of the write calls; `None` refuses them.
    operator_token: Option<Secret>,
    /// Bearer token of the read calls; `None` leaves reads open.
    read_token: Option<Secret>,
}

impl OperatorService {
    pub fn new(
        engine: EngineHandle,
        recovery: Option<RecoveryHandle>,
        operator_token: Option<Secret>,
    ) -> Self {
        OperatorService {
            engine,
            recovery,
            operator_token,
            read_token: None,
            cluster: None,
        }
    }

    pub fn with_cluster(mut self, cluster: Option<crate::cluster::ClusterParts>) -> Self {
        self.cluster = cluster;
        self
    }

    /// Reads need this token (or the operator token) from now on.
    pub fn with_read_token(mut self, token: Option<Secret>) -> Self {
        self.read_token = token;
        self
    }

    /// Read calls need `authorization: Bearer <read or operator token>` when
    /// a read token is configured.
    fn authorize_read<T>(&self, req: &Request<T>) -> Result<(), Status> {
        let Some(read) = &self.read_token else {
            return Ok(());
        };
        let given = bearer(req).ok_or_else(|| {
            Status::unauthenticated(
                "reads need `authorization: Bearer <token>` on this decider (server.read_token_file); pass the CLI --token-file",
            )
        })?;
        let mut ok = read.expose().as_bytes().ct_eq(given.as_bytes());
        if let Some(op) = &self.operator_token {
            ok |= op.expose().as_bytes().ct_eq(given.as_bytes());
        }
        if bool::from(ok) {
            Ok(())
        } else {
            Err(Status::unauthenticated(
                "read token not accepted; check the CLI --token-file against server.read_token_file",
            ))
        }
    }

    /// Write calls need `authorization: Bearer <operator token>`.
    fn authorize<T>(&self, req: &Request<T>) -> Result<(), Status> {
        let Some(expected) = &self.operator_token else {
            return Err(Status::permission_denied(
                "write calls are disabled: this decider has no operator token (set server.operator_token_file)",
            ));
        };
        let given = bearer(req).ok_or_else(|| {
            Status::unauthenticated(
                "write calls need the header `authorization: Bearer <operator token>`",
            )
        })?;
        if bool::from(given.as_bytes().ct_eq(expected.expose().as_bytes())) {
            Ok(())
        } else {
            Err(Status::unauthenticated("operator token not accepted"))
        }
    }

    fn recovery(&self) -> Result<&RecoveryHandle, Status> {
        self.recovery.as_ref().ok_or_else(|| {
            Status::failed_precondition(
                "recovery is off on this decider ([recovery] is not configured): there are no incidents",
            )
        })
    }

    pub fn into_server(self) -> v1::operator_server::OperatorServer<Self> {
        v1::operator_server::OperatorServer::new(self)
    }
}

/// ListNodes page size when the client leaves it at 0. 200, not 500: at
/// 5,000 nodes a page of 500 measured p99 8.7–19 ms on the 2-CPU bench
/// machine, a page of 200 6.1–6.7 ms (issue 5's target: 10 ms).
pub const DEFAULT_PAGE_SIZE: usize = 200;
/// Larger requests get this many: bounds one answer's size and encoding time.
pub const MAX_PAGE_SIZE: usize = 1000;

fn page_size(requested: i32) -> Result<usize, Status> {
    match usize::try_from(requested) {
        Ok(0) => Ok(DEFAULT_PAGE_SIZE),
        Ok(n) => Ok(n.min(MAX_PAGE_SIZE)),
        Err(_) => Err(Status::invalid_argument(format!(
            "page_size {requested} is negative; pass 0 for the default ({DEFAULT_PAGE_SIZE}) or 1 to {MAX_PAGE_SIZE}"
        ))),
    }
}

fn verdict_filter(v: i32) -> Result<Option<i32>, Status> {
    match v1::Verdict::try_from(v) {
        Ok(v1::Verdict::Unspecified) => Ok(None),
        Ok(_) => Ok(Some(v)),
        Err(_) => Err(Status::invalid_argument(format!(
            "verdict {v} is not a Verdict this decider knows; leave it unset (0) for all nodes"
        ))),
    }
}

// The token carries the filter so that a page cannot silently continue a
// listing made with another filter (AIP-158 asks for an error), and the
// last name rather than an offset so that nodes added between pages neither
// repeat nor shift others out of the listing. Hex keeps it printable for any
// node name; the version prefix lets the format change later.
const TOKEN_PREFIX: &str = "n1.";

fn encode_page_token(verdict: i32, last_name: &str) -> String {
    use std::fmt::Write;
    let mut t = format!("{TOKEN_PREFIX}{verdict}.");
    for b in last_name.bytes() {
        let _ = write!(t, "{b:02x}");
    }
    t
}

/// The name the page starts after.
fn decode_page_token(token: &str, verdict: i32) -> Result<String, Status> {
    let bad = || {
        Status::invalid_argument(
            "page_token is not one this decider issued; pass the next_page_token of the previous ListNodes answer unchanged, or an empty page_token to start from the first page",
        )
    };
    let (v, hex) = token
        .strip_prefix(TOKEN_PREFIX)
        .and_then(|rest| rest.split_once('.'))
        .ok_or_else(bad)?;
    if v.parse::<i32>().map_err(|_| bad())? != verdict {
        return Err(Status::invalid_argument(
            "page_token belongs to a listing with another verdict filter; keep the filter the same on every page, or start again with an empty page_token",
        ));
    }
    if hex.is_empty() || hex.len() % 2 != 0 {
        return Err(bad());
    }
    let bytes = (0..hex.len())
        .step_by(2)
        .map(|i| {
            hex.get(i..i + 2)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        })
        .collect::<Option<Vec<u8>>>()
        .ok_or_else(bad)?;
    String::from_utf8(bytes).map_err(|_| bad())
}

impl OperatorService {
    /// Up to `size` nodes after `after` in name order, and the name the next
    /// page starts after when more follow.
    fn page(
        &self,
        size: usize,
        verdict: Option<i32>,
        after: Option<String>,
    ) -> (Vec<v1::Node>, Option<String>) {
        use std::ops::Bound;
        let now = self.engine.clock.now();
        let mut out = Vec::with_capacity(size);
        let mut cursor = after;
        let mut last = None;
        // Node locks are taken only after the map's read lock is released,
        // as elsewhere: a listing never holds the map while it waits for a
        // node the engine is judging. One more than a page in each chunk:
        // without a filter that tells at once whether another page follows.
        let chunk = size + 1;
        loop {
            let batch: Vec<(String, Arc<Mutex<NodeState>>)> = {
                let map = self
                    .engine
                    .nodes
                    .read()
                    .unwrap_or_else(PoisonError::into_inner);
                let start = match &cursor {
                    Some(name) => Bound::Excluded(name.as_str()),
                    None => Bound::Unbounded,
                };
                map.range::<str, _>((start, Bound::Unbounded))
                    .take(chunk)
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect()
            };
            let exhausted = batch.len() < chunk;
            for (name, node) in &batch {
                let st = node.lock().unwrap_or_else(PoisonError::into_inner);
                if verdict.is_some_and(|v| verdict_to_proto(st.tracker.verdict()) as i32 != v) {
                    continue;
                }
                if out.len() == size {
                    return (out, last);
                }
                out.push(node_to_proto(&st, now, Detail::Summary));
                last = Some(name.clone());
            }
            if exhausted {
                return (out, None);
            }
            cursor = batch.last().map(|(k, _)| k.clone());
        }
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

/// The token of `authorization: Bearer <token>`, trimmed.
fn bearer<T>(req: &Request<T>) -> Option<&str> {
    req.metadata()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<v1::VerdictChange, Status>> + Send>>;

#[tonic::async_trait]
impl Operator for OperatorService {
    async fn list_nodes(
        &self,
        req: Request<v1::ListNodesRequest>,
    ) -> Result<Response<v1::ListNodesResponse>, Status> {
        self.authorize_read(&req)?;
        let req = req.into_inner();
        let size = page_size(req.page_size)?;
        let verdict = verdict_filter(req.verdict)?;
        let after = if req.page_token.is_empty() {
            None
        } else {
            Some(decode_page_token(&req.page_token, req.verdict)?)
        };
        let (nodes, next) = self.page(size, verdict, after);
        let next_page_token =
            next.map_or_else(String::new, |last| encode_page_token(req.verdict, &last));
        Ok(Response::new(v1::ListNodesResponse {
            nodes,
            next_page_token,
        }))
    }

    async fn get_node(
        &self,
        req: Request<v1::GetNodeRequest>,
    ) -> Result<Response<v1::Node>, Status> {
        self.authorize_read(&req)?;
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
        self.authorize_read(&req)?;
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
        req: Request<v1::ListIncidentsRequest>,
    ) -> Result<Response<v1::ListIncidentsResponse>, Status> {
        self.authorize_read(&req)?;
        let r = self.recovery()?;
        let list = if req.into_inner().open_only {
            r.journal.open_incidents().await
        } else {
            r.journal.list(LIST_LIMIT).await
        }
        .map_err(journal_status)?;
        Ok(Response::new(v1::ListIncidentsResponse {
            incidents: list.iter().map(summary_to_proto).collect(),
        }))
    }

    async fn get_cluster(
        &self,
        req: Request<v1::GetClusterRequest>,
    ) -> Result<Response<v1::Cluster>, Status> {
        self.authorize_read(&req)?;
        let Some(c) = &self.cluster else {
            return Ok(Response::new(v1::Cluster::default()));
        };
        let s = c.leadership.status();
        // The views are a convenience for operators: unreadable (etcd down)
        // they are left out and `detail` says so.
        let (views, view_error) = match c.views.all_fresh().await {
            Ok(v) => (v, None),
            Err(e) => (vec![], Some(e.to_string())),
        };
        let mut detail = s.detail.clone();
        if let Some(e) = view_error {
            detail = [detail, format!("views unreadable: {e}")]
                .into_iter()
                .filter(|d| !d.is_empty())
                .collect::<Vec<_>>()
                .join("; ");
        }
        Ok(Response::new(v1::Cluster {
            enabled: true,
            me: s.me,
            role: text(&s.role),
            leader: s.leader.unwrap_or_default(),
            term: s.term,
            since_unix_ms: s.since_unix_ms,
            detail,
            views: views
                .into_iter()
                .map(|v| v1::DeciderView {
                    decider: v.decider,
                    at_unix_ms: v.at_unix_ms,
                    nodes: v
                        .nodes
                        .into_iter()
                        .map(|(node, n)| v1::NodeSighting {
                            node,
                            verdict: n.verdict,
                            sensor_fresh: n.sensor_fresh,
                            ping_answers: n.ping_answers,
                        })
                        .collect(),
                })
                .collect(),
        }))
    }

    async fn get_incident(
        &self,
        req: Request<v1::GetIncidentRequest>,
    ) -> Result<Response<v1::Incident>, Status> {
        self.authorize_read(&req)?;
        let r = self.recovery()?;
        let id = req.into_inner().id;
        let d = r
            .journal
            .get(&IncidentId(id.clone()))
            .await
            .map_err(journal_status)?;
        Ok(Response::new(incident_to_proto(&d)))
    }

    async fn confirm_power_off(
        &self,
        req: Request<v1::ConfirmPowerOffRequest>,
    ) -> Result<Response<v1::ConfirmPowerOffResponse>, Status> {
        self.authorize(&req)?;
        let r = self.recovery()?;
        let q = req.into_inner();
        if q.node.trim().is_empty() || q.operator.trim().is_empty() {
            return Err(Status::invalid_argument(
                "node and operator are required (operator: who confirms; it is journaled)",
            ));
        }
        if self
            .engine
            .nodes
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&q.node)
            .is_none()
        {
            return Err(Status::not_found(format!(
                "no node named {:?}; ListNodes shows the nodes this decider watches",
                q.node
            )));
        }
        match r.confirm_off(&q.node, &q.operator, &q.reason).await {
            Ok(id) => Ok(Response::new(v1::ConfirmPowerOffResponse {
                incident_id: id.0,
            })),
            Err(ConfirmError::NoOpenIncident(n)) => Err(Status::failed_precondition(
                ConfirmError::NoOpenIncident(n).to_string(),
            )),
            Err(ConfirmError::Journal(e)) => Err(journal_status(e)),
            Err(e @ ConfirmError::Stopped) => Err(Status::unavailable(e.to_string())),
            Err(e @ ConfirmError::NotLeader(_)) => Err(Status::failed_precondition(e.to_string())),
        }
    }
}

/// Newest incidents returned by `ListIncidents`.
const LIST_LIMIT: usize = 500;

fn journal_status(e: JournalError) -> Status {
    match e {
        JournalError::NotFound(id) => Status::not_found(format!(
            "no incident {id}; ListIncidents shows the incidents"
        )),
        e => Status::internal(vigil_recovery::fence::error_chain(&e)),
    }
}

fn text<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

/// `open` incidents show how far they got (`fencing`, `evacuating`, …);
/// others their status (`completed`, `needs-attention`, `aborted`, …).
fn state_of(s: &IncidentSummary) -> String {
    if s.status == IncidentStatus::Open {
        text(&s.phase)
    } else {
        text(&s.status)
    }
}

fn summary_to_proto(s: &IncidentSummary) -> v1::Incident {
    v1::Incident {
        id: s.id.0.clone(),
        node: s.node.clone(),
        state: state_of(s),
        opened_unix_ms: s.opened_at.millis(),
        closed_unix_ms: s.closed_at.map_or(0, |t| t.millis()),
        dry_run: s.dry_run,
        ..Default::default()
    }
}

/// The incident with its timeline (every step's begin and end, every event),
/// instance outcomes and the evidence at decision time.
pub fn incident_to_proto(d: &IncidentDetail) -> v1::Incident {
    let mut timeline = Vec::new();
    for st in &d.steps {
        let step = format!("{}:{}", text(&st.kind), st.target);
        timeline.push(v1::TimelineEntry {
            at_unix_ms: st.began_at.millis(),
            step: step.clone(),
            phase: "begin".into(),
            outcome: String::new(),
            detail: json_line(&st.detail, st.attempt),
        });
        if let (Some(at), Some(o)) = (st.ended_at, st.outcome) {
            timeline.push(v1::TimelineEntry {
                at_unix_ms: at.millis(),
                step,
                phase: "end".into(),
                outcome: text(&o),
                detail: st.result.to_string(),
            });
        }
    }
    for e in &d.events {
        timeline.push(v1::TimelineEntry {
            at_unix_ms: e.at.millis(),
            step: e.kind.clone(),
            phase: "event".into(),
            outcome: String::new(),
            detail: e.message.clone(),
        });
    }
    // Stable: same-millisecond entries keep begin/end/event order.
    timeline.sort_by_key(|t| t.at_unix_ms);
    let mut inc = summary_to_proto(&d.summary);
    if let Some(r) = &d.summary.reason {
        timeline.push(v1::TimelineEntry {
            at_unix_ms: d.summary.closed_at.map_or(0, |t| t.millis()),
            step: "reason".into(),
            phase: "event".into(),
            outcome: text(&d.summary.status),
            detail: r.clone(),
        });
    }
    inc.timeline = timeline;
    inc.instances = d
        .instances
        .iter()
        .map(|i| v1::InstanceOutcome {
            uuid: i.server_id.clone(),
            name: i.name.clone(),
            from_host: i.from_host.clone(),
            to_host: i.to_host.clone().unwrap_or_default(),
            status: text(&i.state),
            attempts: i.attempts,
            took_ms: match (i.started_at, i.finished_at) {
                (Some(a), Some(b)) => u64::try_from(b.since(a).as_millis()).unwrap_or(u64::MAX),
                _ => 0,
            },
            error: i.reason.clone().unwrap_or_default(),
            nova_status: i.status_after.clone().unwrap_or_default(),
            evacuate_actions: i.evacuate_actions,
        })
        .collect();
    inc.evidence_json = d.evidence.to_string();
    inc
}

fn json_line(detail: &serde_json::Value, attempt: u32) -> String {
    if attempt > 1 {
        format!("attempt {attempt}: {detail}")
    } else {
        detail.to_string()
    }
}
