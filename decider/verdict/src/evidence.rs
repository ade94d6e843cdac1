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
    /// The node's own BMC reading its power state (the fast path of
    /// [`crate::fast_path`]); `NoBmc` when nothing reads it.
    pub bmc: BmcWitness,
    /// fence_kdump messages from the node's crash kernel.
    pub kdump: KdumpWitness,
}

/// The node's BMC as a witness of its power.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct BmcWitness {
    pub identity: BmcIdentity,
    /// The latest power read, answered or not.
    pub last: Option<BmcRead>,
    /// When the current unbroken run of `Off` reads began. Life shown after
    /// it (a heartbeat, an answer) contradicts the BMC; life only before it
    /// is the node's last moments before the power went.
    pub off_since: Option<Moment>,
}

impl BmcWitness {
    /// Takes one power read. Any read that is not `Off` ends the run.
    pub fn record(&mut self, read: BmcRead) {
        self.off_since = match (&read.power, self.off_since) {
            (BmcPower::Off, Some(since)) => Some(since),
            (BmcPower::Off, None) => Some(read.at),
            _ => None,
        };
        self.last = Some(read);
    }
}

/// Whether the BMC being read is this node's own. Only `Verified` lets a
/// power reading count: a fencing config pointing at another machine's BMC
/// would otherwise judge this node by that machine's power.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum BmcIdentity {
    /// No BMC is read for this node (no Redfish or IPMI fencer).
    #[default]
    NoBmc,
    /// Not (yet) known: the sensor or the BMC has not said, or cannot.
    Unverified(String),
    /// The BMC's system UUID is not the node's: refused, and paged.
    Mismatch(String),
    Verified {
        uuid: String,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct BmcRead {
    /// When the decider received the answer (or gave up on it).
    pub at: Moment,
    pub power: BmcPower,
}

#[derive(Debug, Clone, PartialEq)]
pub enum BmcPower {
    On,
    Off,
    /// Unreachable, an error or a state we do not know: never evidence.
    Unknown(String),
}

/// fence_kdump datagrams attributed to this node.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct KdumpWitness {
    pub first_at: Option<Moment>,
    pub last_at: Option<Moment>,
    /// Datagrams heard since the first (saturating).
    pub messages: u64,
    /// The source address of the latest.
    pub from: Option<IpAddr>,
}

impl KdumpWitness {
    /// Takes one datagram heard at `at` from `from`. A gap longer than
    /// `episode_gap` starts a new episode (a later crash of the same node).
    pub fn heard(&mut self, from: IpAddr, at: Moment, episode_gap: Duration) {
        let new_episode = self.last_at.is_none_or(|l| at.since(l) > episode_gap);
        if new_episode {
            self.first_at = Some(at);
            self.messages = 0;
        }
        self.messages = self.messages.saturating_add(1);
        self.last_at = Some(at);
        self.from = Some(from);
    }
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
    /// The sensor process's instance id (empty from sensors that predate it):
    /// a new one on the same boot is a restarted sensor whose seq starts over.
    pub instance: String,
    /// The host's SMBIOS system UUID the sensor reported (canonical form),
    /// empty when it could not tell; compared with the BMC's before the
    /// BMC may count as this node's witness.
    pub system_uuid: String,
    /// Sequence number of the latest heartbeat (per boot id and instance).
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

/// One heartbeat's identity and contents, as [`SensorReading::absorb`] takes it.
#[derive(Debug, Clone, PartialEq)]
pub struct Heard {
    pub boot_id: String,
    pub instance: String,
    /// Canonical SMBIOS system UUID, or empty (unknown).
    pub system_uuid: String,
    pub seq: u64,
    pub interval: Duration,
    pub signals: Signals,
}

/// How a heartbeat related to the reading it was absorbed into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Absorbed {
    /// A new boot id: the node rebooted. Its signals are the newest.
    Rebooted,
    /// Same boot, another sensor instance: the sensor restarted, its seq
    /// starts over, and its signals are the newest whatever their seq.
    SensorRestarted,
    /// The next (or a later) heartbeat of the same sensor run.
    Newer,
    /// An older or repeated seq (a resend after a reconnect): it proves the
    /// sensor is alive now, but its signals are not newer.
    Older,
}

impl SensorReading {
    /// Takes a heartbeat received at `at` into this reading. Sequence
    /// numbers come from outside the process, so every step saturates.
    pub fn absorb(&mut self, h: Heard, at: Moment) -> Absorbed {
        let kind = if self.boot_id != h.boot_id {
            Absorbed::Rebooted
        } else if !h.instance.is_empty() && h.instance != self.instance {
            // An empty instance is a sensor that predates the field: it is
            // ordered by seq alone, as before.
            Absorbed::SensorRestarted
        } else if h.seq > self.seq {
            Absorbed::Newer
        } else {
            Absorbed::Older
        };
        match kind {
            Absorbed::Rebooted => {
                self.boot_changes = self.boot_changes.saturating_add(1);
                self.boot_changed_at = Some(at);
            }
            Absorbed::Newer => {
                let missed = h.seq.saturating_sub(self.seq).saturating_sub(1);
                self.seq_gaps = self.seq_gaps.saturating_add(missed);
            }
            Absorbed::SensorRestarted | Absorbed::Older => {}
        }
        if kind != Absorbed::Older {
            self.boot_id = h.boot_id;
            self.instance = h.instance;
            // The newest heartbeat's word, empty included: a sensor that
            // can no longer read it leaves the identity unverified.
            self.system_uuid = h.system_uuid;
            self.seq = h.seq;
            self.signals = h.signals;
        }
        self.last_heartbeat_at = at;
        self.interval = h.interval;
        self.connected = true;
        kind
    }
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
    /// When the latest counted probe was sent. Probes of one address
    /// overlap (a new one every half second, each waiting up to its
    /// timeout), so an older probe can finish after a newer one: it is not
    /// counted, or a late timeout would follow a newer answer as if the
    /// address had fallen silent after it.
    pub last_sent_at: Option<Moment>,
    pub last_answer_at: Option<Moment>,
    pub last_rtt: Option<Duration>,
    /// Probes in a row that got no answer, up to the latest.
    pub consecutive_failures: u32,
    /// The latest probe could not be sent (EPERM from a host firewall, no
    /// route): nothing is known about the address, which is neither
    /// answering nor silent until a probe goes out again.
    pub send_error: Option<String>,
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
    /// declared interval, at most `max_interval`, whichever is longer),
    /// counted from the last
    /// heartbeat or, if there never was one, from when watching began.
    pub fn is_silent(&self, policy: &crate::Policy, now: Moment) -> bool {
        self.silence(policy, now).is_some()
    }

    /// How long the sensor has been quiet, when that is past the threshold.
    pub fn silence(&self, policy: &crate::Policy, now: Moment) -> Option<Duration> {
        let (quiet, declared) = match self {
            SensorWitness::NeverSeen { since } => (now.since(*since), Duration::ZERO),
            SensorWitness::Seen(r) => (now.since(r.last_heartbeat_at), r.interval),
        };
        // The sensor only declares its interval; how long silence may last
        // is the policy's to say, so a sensor cannot switch off its own
        // silence detection by declaring a huge one.
        let interval = declared.min(policy.sensor.max_interval);
        let threshold = policy
            .sensor
            .silent_after
            .max(interval.saturating_mul(policy.sensor.missed_heartbeats));
        (quiet > threshold).then_some(quiet)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Policy;

    fn reading(interval: Duration, last: Moment) -> SensorWitness {
        SensorWitness::Seen(Box::new(SensorReading {
            connected: false,
            last_heartbeat_at: last,
            interval,
            boot_id: "b".into(),
            instance: String::new(),
            system_uuid: String::new(),
            seq: 1,
            seq_gaps: 0,
            boot_changes: 0,
            boot_changed_at: None,
            signals: Signals::default(),
        }))
    }

    #[test]
    fn a_huge_declared_interval_does_not_switch_off_silence_detection() {
        let p = Policy::default();
        let huge = reading(Duration::from_millis(u64::from(u32::MAX)), Moment::ZERO);
        let normal = reading(Duration::from_secs(1), Moment::ZERO);
        let at = |s: u64| Moment::from_secs(s);
        // 8.6 s after the stream closed the sensor was still healthy.
        assert!(normal.is_silent(&p, at(4)));
        assert!(
            !huge.is_silent(&p, at(14)),
            "5 s cap × 3 heartbeats is 15 s"
        );
        assert!(huge.is_silent(&p, at(16)), "silent past 3 × max_interval");
    }

    fn heard(boot: &str, instance: &str, seq: u64, nova: NovaComputeProcess) -> Heard {
        Heard {
            boot_id: boot.into(),
            instance: instance.into(),
            system_uuid: String::new(),
            seq,
            interval: Duration::from_secs(1),
            signals: Signals {
                nova_compute: nova,
                ..Signals::default()
            },
        }
    }

    fn seen(w: &SensorWitness) -> &SensorReading {
        match w {
            SensorWitness::Seen(r) => r,
            SensorWitness::NeverSeen { .. } => unreachable!("test readings are seen"),
        }
    }

    #[test]
    fn extreme_seqs_across_boots_never_overflow_the_gap_count() {
        // The stream: seq 1 and 2^64-1 on boot A, then 1 and 100 on
        // boot B. Before, `seq_gaps += …` overflowed (a panic in debug).
        let mut w = reading(Duration::from_secs(1), Moment::ZERO);
        let SensorWitness::Seen(r) = &mut w else {
            unreachable!()
        };
        r.boot_id = "A".into();
        let run = NovaComputeProcess::Running;
        r.absorb(heard("A", "", u64::MAX, run), Moment::from_secs(1));
        assert_eq!(
            r.absorb(heard("B", "", 1, run), Moment::from_secs(2)),
            Absorbed::Rebooted
        );
        assert_eq!(
            r.absorb(heard("B", "", 100, run), Moment::from_secs(3)),
            Absorbed::Newer
        );
        assert_eq!(r.seq_gaps, u64::MAX, "saturated, not wrapped");
        assert_eq!(
            r.absorb(heard("B", "", u64::MAX, run), Moment::from_secs(4)),
            Absorbed::Newer
        );
        assert_eq!(r.seq_gaps, u64::MAX);
    }

    #[test]
    fn the_system_uuid_is_the_newest_heartbeats_and_a_resend_does_not_change_it() {
        let mut w = reading(Duration::from_secs(1), Moment::ZERO);
        let SensorWitness::Seen(r) = &mut w else {
            unreachable!()
        };
        r.boot_id = "A".into();
        let run = NovaComputeProcess::Running;
        let with = |seq: u64, uuid: &str| Heard {
            system_uuid: uuid.into(),
            ..heard("A", "run-1", seq, run)
        };
        let one = "4c4c4544-0042-3510-8052-b4c04f4b4e32";
        let two = "9d2c8a61-5b0e-4f5a-9b8e-6f1d2c3b4a59";
        r.absorb(with(2, one), Moment::from_secs(1));
        assert_eq!(seen(&w).system_uuid, one);
        let SensorWitness::Seen(r) = &mut w else {
            unreachable!()
        };
        assert_eq!(
            r.absorb(with(1, two), Moment::from_secs(2)),
            Absorbed::Older
        );
        assert_eq!(r.system_uuid, one, "an old resend does not change it");
        r.absorb(with(3, ""), Moment::from_secs(3));
        assert_eq!(r.system_uuid, "", "the newest says it cannot tell");
        r.absorb(with(4, two), Moment::from_secs(4));
        assert_eq!(r.system_uuid, two);
    }

    #[test]
    fn a_restarted_sensor_on_the_same_boot_is_heard_at_once() {
        let mut w = reading(Duration::from_secs(1), Moment::ZERO);
        let SensorWitness::Seen(r) = &mut w else {
            unreachable!()
        };
        r.boot_id = "A".into();
        let run = NovaComputeProcess::Running;
        let hung = NovaComputeProcess::Blocked {
            blocked_for: Duration::from_secs(5),
        };
        r.absorb(heard("A", "run-1", u64::MAX, run), Moment::from_secs(1));
        let k = r.absorb(heard("A", "run-2", 1, hung), Moment::from_secs(2));
        assert_eq!(k, Absorbed::SensorRestarted);
        assert_eq!(
            seen(&w).signals.nova_compute,
            hung,
            "the new run's signals are taken"
        );
        assert_eq!(seen(&w).seq, 1);
        assert_eq!(seen(&w).boot_changes, 0, "a sensor restart is not a reboot");
    }

    #[test]
    fn without_an_instance_id_an_older_seq_keeps_the_newer_signals() {
        let mut w = reading(Duration::from_secs(1), Moment::ZERO);
        let SensorWitness::Seen(r) = &mut w else {
            unreachable!()
        };
        r.boot_id = "A".into();
        let run = NovaComputeProcess::Running;
        let gone = NovaComputeProcess::Gone;
        r.absorb(heard("A", "", 10, run), Moment::from_secs(1));
        assert_eq!(
            r.absorb(heard("A", "", 5, gone), Moment::from_secs(2)),
            Absorbed::Older
        );
        assert_eq!(r.signals.nova_compute, run);
        assert_eq!(
            r.last_heartbeat_at,
            Moment::from_secs(2),
            "still proves it is alive"
        );
        // The same instance resending after a reconnect is ordered by seq too.
        r.absorb(heard("A", "run-1", 11, run), Moment::from_secs(3));
        assert_eq!(
            r.absorb(heard("A", "run-1", 7, gone), Moment::from_secs(4)),
            Absorbed::Older
        );
        assert_eq!(r.signals.nova_compute, run);
    }

    #[test]
    fn a_declared_interval_under_the_cap_still_counts() {
        let p = Policy::default();
        let slow = reading(Duration::from_secs(2), Moment::ZERO);
        assert!(!slow.is_silent(&p, Moment::from_secs(5)));
        assert!(slow.is_silent(&p, Moment::from_secs(7)));
    }
}
