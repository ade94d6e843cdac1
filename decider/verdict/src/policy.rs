//! The policy: which witnesses must agree before a node is dead, the windows,
//! the veto thresholds and the storm guard, as data (TOML). Every default sits
//! in a `Default` impl with a comment saying why it follows PRODUCT.md's
//! safety rules. Veto rules themselves cannot be switched off: the policy only
//! tunes how long silence must last before it counts.

use crate::time::serde_duration;
use serde::{Deserialize, Serialize};
use std::time::Duration;
use thiserror::Error;

/// The witnesses a policy can require for `dead`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WitnessKind {
    Sensor,
    Nova,
    Ping,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Policy {
    /// Witnesses that must all say "dead" before a node is `dead`.
    pub required_for_dead: Vec<WitnessKind>,
    pub sensor: SensorPolicy,
    pub nova: NovaPolicy,
    pub ping: PingPolicy,
    pub degraded: DegradedPolicy,
    pub confirm: ConfirmPolicy,
    pub storm: StormPolicy,
    pub isolation: IsolationPolicy,
    pub maintenance: MaintenancePolicy,
    pub bmc: BmcPolicy,
    pub kdump: KdumpPolicy,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            // PRODUCT: "only when every witness agrees that the node is dead".
            // All three, so no single blind spot (a killed sensor, a stuck
            // nova-compute, filtered ICMP) can make a node dead on its own.
            required_for_dead: vec![WitnessKind::Sensor, WitnessKind::Nova, WitnessKind::Ping],
            sensor: SensorPolicy::default(),
            nova: NovaPolicy::default(),
            ping: PingPolicy::default(),
            degraded: DegradedPolicy::default(),
            confirm: ConfirmPolicy::default(),
            storm: StormPolicy::default(),
            isolation: IsolationPolicy::default(),
            maintenance: MaintenancePolicy::default(),
            bmc: BmcPolicy::default(),
            kdump: KdumpPolicy::default(),
        }
    }
}

/// The BMC power witness (`crate::fast_path`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BmcPolicy {
    /// Whether a verified BMC reading `Off` may make a node dead without
    /// Nova's wait. Off: the BMC is still read for the table, never counted.
    pub enabled: bool,
    /// How old an `Off` may be and still count.
    #[serde(with = "serde_duration")]
    pub fresh_for: Duration,
    /// How often each BMC is read while no witness doubts its node.
    #[serde(with = "serde_duration")]
    pub poll_healthy: Duration,
    /// How often once any witness doubts the node (sensor silent, Nova
    /// stalling, addresses silent, or a verdict other than healthy).
    #[serde(with = "serde_duration")]
    pub poll_doubt: Duration,
}

impl Default for BmcPolicy {
    fn default() -> Self {
        BmcPolicy {
            enabled: true,
            // Two reads at the doubting cadence: an `Off` older than that
            // may describe a machine that has been powered on since.
            fresh_for: Duration::from_secs(2),
            // 5,000 BMCs at 15 s is ~330 reads/s cluster-wide, a load
            // BMC firmware tolerates; healthy nodes need no faster.
            poll_healthy: Duration::from_secs(15),
            poll_doubt: Duration::from_secs(1),
        }
    }
}

/// The kdump fast path (`crate::fast_path`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KdumpPolicy {
    pub enabled: bool,
    /// How long after the latest fence_kdump message the node still counts
    /// as in its crash kernel. Must exceed the nodes' `fence_kdump_send -i`
    /// interval (10 s by default) with room for a lost datagram.
    #[serde(with = "serde_duration")]
    pub fresh_for: Duration,
    /// The longest recovery waits for the messages to stop (the dump
    /// written) before it powers the node off anyway.
    #[serde(with = "serde_duration")]
    pub power_off_after: Duration,
}

impl Default for KdumpPolicy {
    fn default() -> Self {
        KdumpPolicy {
            enabled: true,
            // Two default send intervals plus one: a single lost datagram
            // does not end the dump early.
            fresh_for: Duration::from_secs(25),
            // Pacemaker's fence_kdump waits 60 s by default; a large host's
            // dump takes minutes. Its VMs are already evacuated by then, so
            // waiting costs nothing but the vmcore is worth a lot.
            power_off_after: Duration::from_secs(600),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SensorPolicy {
    /// Silence longer than this (and than `missed_heartbeats` intervals)
    /// makes the sensor say "dead".
    #[serde(with = "serde_duration")]
    pub silent_after: Duration,
    pub missed_heartbeats: u32,
    /// The longest heartbeat interval a sensor may declare and have it
    /// count: a longer declared interval is judged as this one, so silence
    /// is noticed after at most `missed_heartbeats` × this.
    #[serde(with = "serde_duration")]
    pub max_interval: Duration,
}

impl Default for SensorPolicy {
    fn default() -> Self {
        SensorPolicy {
            // Three missed heartbeats at the sensor's 1 s default: one lost
            // packet or a GC pause is not silence, and it is still far inside
            // the Nova window (12 s) that gates `dead` anyway.
            silent_after: Duration::from_secs(3),
            missed_heartbeats: 3,
            // 5 s: five times the sensor's default, so a slower configured
            // sensor still works; silence is then seen within 15 s at worst.
            max_interval: Duration::from_secs(5),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NovaPolicy {
    /// nova-compute's `report_interval` in the cloud's nova.conf.
    #[serde(with = "serde_duration")]
    pub report_interval: Duration,
    /// Added to `report_interval` before a not-advancing `updated_at` counts
    /// as stale (one report may be late).
    #[serde(with = "serde_duration")]
    pub stale_margin: Duration,
    /// A successful poll older than this no longer counts: the poller itself
    /// may be stuck, so Nova's witness becomes unknown.
    #[serde(with = "serde_duration")]
    pub poll_stale_after: Duration,
}

impl Default for NovaPolicy {
    fn default() -> Self {
        NovaPolicy {
            // Nova's own default report_interval.
            report_interval: Duration::from_secs(10),
            // Safety rule 4: `updated_at` that still advances vetoes fencing;
            // 2 s of margin so one late report is not mistaken for a stop.
            stale_margin: Duration::from_secs(2),
            // Several missed polls at the decider's 1 s poll interval.
            poll_stale_after: Duration::from_secs(10),
        }
    }
}

impl NovaPolicy {
    /// How long `updated_at` must stand still before Nova's witness says dead.
    pub fn stale_after(&self) -> Duration {
        self.report_interval.saturating_add(self.stale_margin)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PingPolicy {
    /// Probes in a row without an answer before an address counts as silent.
    /// Until then it still counts as answering (safety rule 2).
    pub failures_for_silent: u32,
    /// Probe results older than this are unknown: they neither veto nor say
    /// dead.
    #[serde(with = "serde_duration")]
    pub probe_stale_after: Duration,
}

impl Default for PingPolicy {
    fn default() -> Self {
        PingPolicy {
            // Safety rule 2: an address that answered keeps vetoing until three
            // probes in a row have gone unanswered; one dropped echo is noise.
            failures_for_silent: 3,
            // Six background sweeps at 5 s; suspect nodes are probed far more
            // often, so this only matters if the pinger stalls.
            probe_stale_after: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DegradedPolicy {
    /// nova-compute blocked in D state this long makes the node degraded.
    #[serde(with = "serde_duration")]
    pub nova_compute_blocked_for: Duration,
    /// Any task blocked this long makes the node degraded.
    #[serde(with = "serde_duration")]
    pub task_blocked_for: Duration,
    /// A block device whose oldest request is this old makes it degraded.
    #[serde(with = "serde_duration")]
    pub device_stall_for: Duration,
}

impl Default for DegradedPolicy {
    fn default() -> Self {
        DegradedPolicy {
            // Long enough that a slow but healthy I/O burst is not an alert,
            // short enough to say why before Nova's 12 s staleness makes the
            // node look half dead (the seed's backplane case).
            nova_compute_blocked_for: Duration::from_secs(5),
            // The kernel's hung-task detector waits 120 s; we alert well
            // before, but not for every short D-state sleep.
            task_blocked_for: Duration::from_secs(30),
            device_stall_for: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConfirmPolicy {
    /// Every required witness must keep saying dead this long before `dead`.
    /// It counts from when the node began converging on `dead` (only a
    /// witness's own wait left, nothing alive meanwhile), so it usually
    /// runs out during Nova's or the sensor's wait rather than after it.
    #[serde(with = "serde_duration")]
    pub dead_for: Duration,
    /// A sick or suspect node must look healthy this long before `healthy`.
    #[serde(with = "serde_duration")]
    pub healthy_for: Duration,
    /// Window in which flips between healthy and not are counted.
    #[serde(with = "serde_duration")]
    pub flap_window: Duration,
    /// This many flips within `flap_window` make the node flapping.
    pub flap_changes: u32,
    /// While flapping, `dead` needs this long of agreement instead of `dead_for`.
    #[serde(with = "serde_duration")]
    pub flapping_dead_for: Duration,
}

impl Default for ConfirmPolicy {
    fn default() -> Self {
        ConfirmPolicy {
            // The witnesses already wait (3 s of sensor silence, three lost
            // pings, 12 s of Nova staleness); one more second of agreement
            // rejects a single odd evaluation without missing the target of
            // `dead` within one Nova report interval + 2 s.
            dead_for: Duration::from_secs(1),
            // Leaving suspect/degraded is not urgent: a node must prove
            // itself well for 5 s so the table does not flicker.
            healthy_for: Duration::from_secs(5),
            // A node that flips six times in ten minutes is unstable; it stays
            // degraded (an alert) and needs much longer agreement to be dead,
            // so a flaky link cannot trigger a fence.
            flap_window: Duration::from_secs(600),
            flap_changes: 6,
            flapping_dead_for: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StormPolicy {
    /// More than this many nodes dead within `window` holds every one of them.
    pub max_dead: u32,
    /// More than this share (0..1] of a segment's nodes dead within `window`
    /// holds every dead node of that segment.
    pub max_share: f64,
    #[serde(with = "serde_duration")]
    pub window: Duration,
}

impl Default for StormPolicy {
    fn default() -> Self {
        StormPolicy {
            // Safety rule 6. Several hosts dying together is far more often a
            // network, power-feed or decider fault than independent deaths;
            // fencing them all would turn an outage into a disaster.
            max_dead: 3,
            // More than half a segment at once: act on none, page a human.
            max_share: 0.5,
            // Deaths this close together count as one event.
            window: Duration::from_secs(600),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IsolationPolicy {
    /// With at least this many nodes, all sensors silent at once means the
    /// decider is more likely cut off than every node dead.
    pub all_sensors_silent_min_nodes: usize,
}

impl Default for IsolationPolicy {
    fn default() -> Self {
        IsolationPolicy {
            // Two nodes is the smallest fleet where "everyone went quiet" says
            // more about the observer than about the nodes.
            all_sensors_silent_min_nodes: 2,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MaintenancePolicy {
    /// A disabled service whose reason starts with this was disabled by Vigil's
    /// own workflow, not by an operator, so it is not maintenance.
    pub vigil_reason_prefix: String,
}

impl Default for MaintenancePolicy {
    fn default() -> Self {
        MaintenancePolicy {
            // Safety rule 5 protects operators' maintenance. The recovery
            // workflow disables a dead node's service itself, naming the
            // incident behind this prefix, and must not mistake that for one.
            vigil_reason_prefix: "vigil:".to_string(),
        }
    }
}

/// A policy value that cannot be used, naming the key and what is valid.
#[derive(Debug, Error, PartialEq)]
pub enum PolicyError {
    /// `required_for_dead` names fewer than two witnesses.
    #[error(
        "policy.required_for_dead = {given:?}: at least two different witnesses are required \
         (of \"sensor\", \"nova\", \"ping\"), so no single witness can declare a node dead"
    )]
    TooFewWitnesses { given: Vec<WitnessKind> },
    /// A duration that must be positive is zero.
    #[error("policy.{key} = 0: must be greater than zero")]
    ZeroDuration { key: &'static str },
    /// A count that must be at least one is zero.
    #[error("policy.{key} = 0: must be at least 1")]
    ZeroCount { key: &'static str },
    /// `storm.max_share` outside (0, 1].
    #[error("policy.storm.max_share = {given}: must be greater than 0 and at most 1")]
    ShareOutOfRange { given: f64 },
    /// A window longer than the judgment can safely trust.
    #[error("policy.{key}: too long; at most {max}")]
    TooLong {
        key: &'static str,
        max: &'static str,
    },
}

impl Policy {
    /// Checks what serde cannot: ranges and the rules' minimums.
    pub fn validate(&self) -> Result<(), PolicyError> {
        let mut distinct = self.required_for_dead.clone();
        distinct.sort_by_key(|w| *w as u8);
        distinct.dedup();
        if distinct.len() < 2 {
            return Err(PolicyError::TooFewWitnesses {
                given: self.required_for_dead.clone(),
            });
        }
        let durations = [
            ("sensor.silent_after", self.sensor.silent_after),
            ("sensor.max_interval", self.sensor.max_interval),
            ("nova.report_interval", self.nova.report_interval),
            ("nova.poll_stale_after", self.nova.poll_stale_after),
            ("ping.probe_stale_after", self.ping.probe_stale_after),
            ("confirm.flap_window", self.confirm.flap_window),
            ("storm.window", self.storm.window),
            ("bmc.fresh_for", self.bmc.fresh_for),
            ("bmc.poll_healthy", self.bmc.poll_healthy),
            ("bmc.poll_doubt", self.bmc.poll_doubt),
            ("kdump.fresh_for", self.kdump.fresh_for),
            ("kdump.power_off_after", self.kdump.power_off_after),
        ];
        if let Some((key, _)) = durations.iter().find(|(_, d)| d.is_zero()) {
            return Err(PolicyError::ZeroDuration { key });
        }
        let counts = [
            ("sensor.missed_heartbeats", self.sensor.missed_heartbeats),
            ("ping.failures_for_silent", self.ping.failures_for_silent),
            ("confirm.flap_changes", self.confirm.flap_changes),
        ];
        if let Some((key, _)) = counts.iter().find(|(_, c)| *c == 0) {
            return Err(PolicyError::ZeroCount { key });
        }
        // A fresh window longer than the doubting cadence plus a read's
        // timeout would let an `Off` outlive a power-on; shorter than the
        // cadence would never count. Bounded, not guessed.
        if self.bmc.fresh_for > Duration::from_secs(10) {
            return Err(PolicyError::TooLong {
                key: "bmc.fresh_for",
                max: "10s",
            });
        }
        if self.bmc.poll_doubt > self.bmc.fresh_for {
            return Err(PolicyError::TooLong {
                key: "bmc.poll_doubt (longer than bmc.fresh_for: no read would ever count)",
                max: "bmc.fresh_for",
            });
        }
        if self.kdump.fresh_for > Duration::from_secs(120) {
            return Err(PolicyError::TooLong {
                key: "kdump.fresh_for",
                max: "120s",
            });
        }
        if !(self.storm.max_share > 0.0 && self.storm.max_share <= 1.0) {
            return Err(PolicyError::ShareOutOfRange {
                given: self.storm.max_share,
            });
        }
        Ok(())
    }

    pub fn requires(&self, w: WitnessKind) -> bool {
        self.required_for_dead.contains(&w)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate_and_round_trip_through_toml() {
        let p = Policy::default();
        p.validate().expect("defaults are valid");
        let text = toml::to_string(&p).expect("serialize");
        let back: Policy = toml::from_str(&text).expect("parse what we wrote");
        assert_eq!(back, p);
    }

    #[test]
    fn partial_toml_keeps_other_defaults() {
        let p: Policy = toml::from_str("[nova]\nreport_interval = \"20s\"\n").expect("parse");
        assert_eq!(p.nova.report_interval, Duration::from_secs(20));
        assert_eq!(p.nova.stale_margin, Duration::from_secs(2));
        assert_eq!(p.sensor, SensorPolicy::default());
    }

    #[test]
    fn unknown_keys_are_rejected_with_their_name() {
        let e = toml::from_str::<Policy>("[nova]\nreport_intervall = \"20s\"\n")
            .expect_err("typo must fail");
        assert!(e.to_string().contains("report_intervall"), "{e}");
    }

    #[test]
    fn bad_duration_says_what_is_valid() {
        let e =
            toml::from_str::<Policy>("[sensor]\nsilent_after = \"soon\"\n").expect_err("must fail");
        assert!(e.to_string().contains("not a duration"), "{e}");
    }

    #[test]
    fn validation_names_the_key() {
        let mut p = Policy {
            required_for_dead: vec![WitnessKind::Ping],
            ..Policy::default()
        };
        assert!(matches!(
            p.validate(),
            Err(PolicyError::TooFewWitnesses { .. })
        ));
        p.required_for_dead = vec![WitnessKind::Nova, WitnessKind::Ping];
        p.storm.max_share = 1.5;
        let e = p.validate().expect_err("share out of range");
        assert!(e.to_string().contains("storm.max_share"), "{e}");
    }
}
