//! What each witness said about one node, and when. Missing or stale evidence
//! is a value here (`NeverSeen`, `NotPolled`, `Unreachable`, a probe with no
//! answer yet), never an error: the judgment must decide with what it has.
//!
//! Every time is a [`Moment`] on the decider's monotonic clock, recorded by the
//! decider when it received the reading. Nothing here is a remote machine's
//! wall clock: Nova's `updated_at` is compared only with its own previous value
//! (by the caller), and the sensor's sample time is informational.

use crate::time::Moment;
use std::net::IpAddr;
use std::time::Duration;

/// Everything known about one node at one moment, plus the decider's view of
/// itself (to tell "the node died" from "the decider was cut off").
#[derive(Debug, Clone, PartialEq)]
pub struct Evidence {
    pub sensor: SensorWitness,
    pub nova: NovaWitness,
    /// One entry per probed address of this node: its management addresses
    /// and its instances' addresses.
    pub pings: Vec<PingWitness>,
    pub decider: DeciderView,
}

/// The sensor stream's witness.
#[derive(Debug, Clone, PartialEq)]
pub enum SensorWitness {
    /// No heartbeat from this node since the decider started watching it at
    /// `since` (decider start, or when the node was enrolled).
    NeverSeen { since: Moment },
    /// At least one heartbeat arrived; the latest is described here.
    Seen(Box<SensorReading>),
}

/// The latest heartbeat of a node and what its history showed.
#[derive(Debug, Clone, PartialEq)]
pub struct SensorReading {
    /// A stream from this node is open right now.
    pub connected: bool,
    /// When the decider received the latest heartbeat.
    pub last_heartbeat_at: Moment,
    /// The sensor's declared heartbeat interval (0 when it did not say).
    pub interval: Duration,
    pub boot_id: String,
    /// Sequence number of the latest heartbeat (per boot id).
    pub seq: u64,
    /// Heartbeats missing between consecutive ones, summed since the decider
    /// started (the sensor keeps counting while the decider is unreachable).
    pub seq_gaps: u64,
    /// How many times the boot id changed (a reboot each time).
    pub boot_changes: u32,
    /// When the boot id last changed, if it ever did.
    pub boot_changed_at: Option<Moment>,
    pub signals: Signals,
}

/// The signals of the latest heartbeat, in the decider's own terms.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Signals {
    pub mode: ProbeMode,
    pub nova_compute: NovaComputeProcess,
    /// Tasks that spent most of the recent window in uninterruptible sleep.
    pub blocked_tasks: Vec<BlockedTask>,
    /// Block devices with requests in flight for a long time.
    pub device_stalls: Vec<DeviceStall>,
    /// Every qemu process the sensor sees.
    pub instances: Vec<InstanceActivity>,
    /// Kernel hung-task reports since the sensor started.
    pub hung_task_events: u64,
    /// Probes the sensor could not attach (its signals are partial then).
    pub failed_probes: Vec<String>,
}

/// Where the sensor's signals come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ProbeMode {
    #[default]
    Unknown,
    Ebpf,
    /// eBPF could not load; coarser `/proc` polling.
    Procfs,
}

/// The nova-compute process as the sensor sees it on the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NovaComputeProcess {
    /// The sensor did not say.
    #[default]
    Unknown,
    Running,
    /// Its threads are (mostly) in uninterruptible sleep, for this long.
    Blocked {
        blocked_for: Duration,
    },
    /// No such process on the node.
    Gone,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockedTask {
    pub pid: u32,
    pub comm: String,
    pub blocked_for: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceStall {
    /// Kernel name when known ("loop0"), else "major:minor".
    pub device: String,
    pub in_flight: u32,
    /// Age of the oldest request still in flight.
    pub oldest: Duration,
}

/// One qemu process on the node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceActivity {
    /// Nova instance UUID.
    pub uuid: String,
    pub alive: bool,
    /// CPU time its threads got since the previous heartbeat; above zero
    /// means the VM is making progress (safety rule 3).
    pub cpu_delta: Duration,
    /// The process exited since the previous heartbeat.
    pub exited: bool,
}

/// Nova's witness: the host's nova-compute service in `os-services`.
#[derive(Debug, Clone, PartialEq)]
pub enum NovaWitness {
    /// No poll has finished since the decider started watching at `since`.
    NotPolled {
        since: Moment,
    },
    /// The latest poll failed. Never evidence of the node's death.
    Unreachable {
        /// When polls started failing.
        since: Moment,
        /// What failed, as the operator should read it.
        error: String,
        /// The service as Nova last described it, so a node in maintenance
        /// stays in maintenance while Nova is away (safety rule 5).
        last_known: Option<NovaService>,
    },
    /// Nova answered but has no nova-compute service for this host.
    NotListed {
        polled_at: Moment,
    },
    Listed(NovaService),
}

/// The nova-compute service of one host, as of the latest successful poll.
#[derive(Debug, Clone, PartialEq)]
pub struct NovaService {
    /// When the decider received this answer.
    pub polled_at: Moment,
    pub state: ServiceState,
    /// `status == "enabled"`.
    pub enabled: bool,
    pub disabled_reason: Option<String>,
    pub forced_down: bool,
    /// How long `updated_at` has not advanced: from the first poll that saw
    /// its current value to `polled_at`. The caller compares successive
    /// values only, so Nova's clock and the decider's never meet.
    pub updated_at_stalled: Duration,
    /// Nova's instances on this host, when they have been listed.
    pub instances: Option<Vec<NovaInstance>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServiceState {
    Up,
    Down,
    /// A state string this crate does not know.
    Unknown,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NovaInstance {
    pub uuid: String,
    pub name: String,
    /// Nova's status: ACTIVE, ERROR, SHUTOFF, …
    pub status: String,
    pub addresses: Vec<IpAddr>,
}

/// One probed address and what its probes showed.
#[derive(Debug, Clone, PartialEq)]
pub struct PingWitness {
    pub address: IpAddr,
    pub role: PingRole,
    /// When the latest probe finished (answered or timed out).
    pub last_probe_at: Option<Moment>,
    pub last_answer_at: Option<Moment>,
    pub last_rtt: Option<Duration>,
    /// Probes in a row that got no answer, up to the latest.
    pub consecutive_failures: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PingRole {
    /// A management address of the host.
    Host,
    /// An address of one of the host's instances.
    Instance { uuid: String },
    /// An address the decider checks to know it is not cut off itself.
    Reference,
}

impl PingRole {
    /// "host", "instance:<uuid>" or "reference", as the proto spells roles.
    pub fn label(&self) -> String {
        match self {
            PingRole::Host => "host".to_string(),
            PingRole::Instance { uuid } => format!("instance:{uuid}"),
            PingRole::Reference => "reference".to_string(),
        }
    }
}

/// The decider's view of itself, shared by every node's evidence: if it
/// cannot see anything at all, the fault is more likely its own.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct DeciderView {
    /// Probes of the configured reference addresses (may be empty).
    pub reference_pings: Vec<PingWitness>,
    /// Nodes the decider watches.
    pub nodes_known: usize,
    /// Of those, nodes whose sensor is silent (see [`SensorWitness::is_silent`]).
    pub sensors_silent: usize,
    /// The latest Nova poll succeeded.
    pub nova_reachable: bool,
}

impl SensorWitness {
    /// True when the sensor has been silent longer than the policy allows:
    /// nothing heard for `silent_after` (or `missed_heartbeats` of its
    /// declared interval, whichever is longer), counted from the last
    /// heartbeat or, if there never was one, from when watching began.
    pub fn is_silent(&self, policy: &crate::Policy, now: Moment) -> bool {
        self.silence(policy, now).is_some()
    }

    /// How long the sensor has been quiet, when that is past the threshold.
    pub fn silence(&self, policy: &crate::Policy, now: Moment) -> Option<Duration> {
        let (quiet, interval) = match self {
            SensorWitness::NeverSeen { since } => (now.since(*since), Duration::ZERO),
            SensorWitness::Seen(r) => (now.since(r.last_heartbeat_at), r.interval),
        };
        let threshold = policy
            .sensor
            .silent_after
            .max(interval.saturating_mul(policy.sensor.missed_heartbeats));
        (quiet > threshold).then_some(quiet)
    }
}
