//! What the decider holds about each node: the evidence as it stands, the
//! verdict state machine, and the raw readings shown to operators. Shared
//! between the engine (the only writer of evidence and verdicts) and the
//! operator API (readers), one mutex per node so a query never waits for more
//! than one node's update.

use crate::witness::ComputeService;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use vigil_proto::v1;
use vigil_verdict::{
    DeciderView, Evidence, Moment, NodeTracker, NovaWitness, PingRole, PingWitness, SensorWitness,
};

/// Every node, by name (sorted, so listings are stable).
///
/// std locks, not tokio's: no lock is ever held across an `.await`.
pub type Nodes = Arc<RwLock<BTreeMap<String, Arc<Mutex<NodeState>>>>>;

/// The node named `name`, if any; the map's lock is held only to clone the
/// entry, so callers lock the node without blocking the map.
pub fn lookup(nodes: &Nodes, name: &str) -> Option<Arc<Mutex<NodeState>>> {
    nodes
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .get(name)
        .cloned()
}

#[derive(Debug)]
pub struct NodeState {
    pub name: String,
    /// Storm-guard segment.
    pub segment: String,
    /// Management addresses probed by ping (configured, the enrolled
    /// sensor's source address, or else the hypervisor's `host_ip` in Nova).
    pub management: Vec<IpAddr>,
    /// Joined through enrolment rather than the config file.
    pub enrolled: bool,
    /// The evidence as it stands; `decider` is refreshed before each judgment.
    pub evidence: Evidence,
    pub tracker: NodeTracker,
    /// Wall-clock time of the latest verdict change, for operators only.
    pub since_unix_ms: i64,
    /// The latest heartbeat exactly as received. Kept only to show operators
    /// every field (pressure, probe health); the judgment reads `evidence`.
    pub latest_heartbeat: Option<Arc<v1::Heartbeat>>,
    /// The latest `os-services` entry for this host, for display.
    pub nova_service: Option<ComputeService>,
    /// Nova's `updated_at` value and the moment a poll first saw it: how long
    /// it has not advanced is measured from there (never against Nova's clock).
    pub updated_at_seen: Option<(Option<String>, Moment)>,
    /// Open incident, set by the recovery workflow.
    pub incident_id: Option<String>,
    /// The worst this node has been since it turned `degraded` (None when
    /// it is not): a worse level is published again.
    pub degraded_peak: Option<crate::degraded::DegradedLevel>,
    /// `[[node]] system_uuid`, when configured: the BMC must report it.
    pub configured_uuid: Option<String>,
    /// The latest read of the BMC's system UUID (see `bmc_watch::identity`).
    pub bmc_uuid: Option<Result<Option<String>, String>>,
}

/// Whether any witness doubts the node: its verdict is not healthy, its
/// sensor missed a heartbeat (before the silence the judgment waits for),
/// an address it answered on missed a probe, or Nova's `updated_at` is late.
/// Doubted nodes are probed urgently and their BMCs read every
/// `policy.bmc.poll_doubt`, so the evidence a fast path needs is fresh when
/// the judgment asks for it.
pub fn doubted(st: &NodeState, policy: &vigil_verdict::Policy, now: Moment) -> bool {
    use vigil_verdict::Verdict;
    if !matches!(
        st.tracker.verdict(),
        Verdict::Healthy | Verdict::Maintenance
    ) {
        return true;
    }
    let heartbeat_late = match &st.evidence.sensor {
        SensorWitness::Seen(r) => {
            let every = r
                .interval
                .clamp(Duration::from_millis(100), policy.sensor.max_interval);
            now.since(r.last_heartbeat_at) > every.saturating_add(every / 2)
        }
        SensorWitness::NeverSeen { .. } => false,
    };
    let probe_missed = st.evidence.pings.iter().any(|p| {
        p.role != PingRole::Reference && p.last_answer_at.is_some() && p.consecutive_failures > 0
    });
    let nova_late = matches!(&st.evidence.nova, NovaWitness::Listed(s) if s.updated_at_stalled > policy.nova.report_interval);
    heartbeat_late || probe_missed || nova_late
}

/// The system UUID the node's sensor reports, if any.
pub fn sensor_system_uuid(st: &NodeState) -> Option<String> {
    match &st.evidence.sensor {
        SensorWitness::Seen(r) if !r.system_uuid.is_empty() => Some(r.system_uuid.clone()),
        _ => None,
    }
}

impl NodeState {
    /// Adds a management address and its host ping, once.
    pub fn add_management(&mut self, address: IpAddr) {
        if self.management.contains(&address) {
            return;
        }
        self.management.push(address);
        self.evidence.pings.push(host_ping(address));
    }

    pub fn new(
        name: &str,
        segment: &str,
        management: Vec<IpAddr>,
        enrolled: bool,
        now: Moment,
        now_unix_ms: i64,
    ) -> Self {
        let pings = management.iter().copied().map(host_ping).collect();
        NodeState {
            name: name.to_string(),
            segment: segment.to_string(),
            management,
            enrolled,
            evidence: Evidence {
                sensor: SensorWitness::NeverSeen { since: now },
                nova: NovaWitness::NotPolled { since: now },
                pings,
                decider: DeciderView::default(),
                bmc: Default::default(),
                kdump: Default::default(),
            },
            tracker: NodeTracker::new(now),
            since_unix_ms: now_unix_ms,
            latest_heartbeat: None,
            nova_service: None,
            updated_at_seen: None,
            incident_id: None,
            degraded_peak: None,
            configured_uuid: None,
            bmc_uuid: None,
        }
    }
}

fn host_ping(address: IpAddr) -> PingWitness {
    PingWitness {
        address,
        role: PingRole::Host,
        last_probe_at: None,
        last_sent_at: None,
        last_answer_at: None,
        last_rtt: None,
        consecutive_failures: 0,
        send_error: None,
    }
}

/// Wall-clock now in Unix milliseconds, for operators' timestamps only.
pub fn unix_ms_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
