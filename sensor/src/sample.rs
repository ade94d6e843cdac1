//! One sample of the node, in the sensor's own terms; the wire type
//! (`vigil.v1.Heartbeat`) is made from it at the edge, and `probe --json`
//! prints it as is.

use vigil_proto::v1;

use crate::{psi::Pressure, signals::Mode};

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Sample {
    pub node: String,
    pub boot_id: String,
    /// SMBIOS system UUID, lowercase hyphenated; empty when unknown.
    pub system_uuid: String,
    /// This sensor process's run (see `sampler::instance_id`).
    pub sensor_instance: String,
    pub seq: u64,
    pub sensor_version: String,
    pub mode: Mode,
    pub sampled_at_unix_ms: i64,
    pub interval_ms: u32,
    pub blocked_tasks: Vec<BlockedTask>,
    pub device_stalls: Vec<DeviceStall>,
    pub instances: Vec<Instance>,
    pub nova_compute: NovaCompute,
    pub pressure: Pressure,
    pub health: Health,
    /// Exits of explicitly watched pids (`probe --wait-exit`); not sent.
    pub exits: Vec<Exit>,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct BlockedTask {
    pub pid: u32,
    pub tgid: u32,
    pub comm: String,
    pub cgroup: String,
    pub blocked_ms: u64,
    pub d_share: f64,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DeviceStall {
    pub device: String,
    pub name: String,
    pub in_flight: u32,
    pub oldest_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Instance {
    pub uuid: String,
    pub name: String,
    pub pid: u32,
    pub alive: bool,
    pub cpu_ns_delta: u64,
    pub cpu_ns_total: u64,
    pub exited: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NovaState {
    Running,
    Blocked,
    Gone,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct NovaCompute {
    pub state: NovaState,
    pub pid: u32,
    pub blocked_ms: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Health {
    pub attached_probes: Vec<String>,
    pub failed_probes: Vec<String>,
    pub map_full: u64,
    pub events_lost: u64,
    pub hung_task_events: u64,
    pub dropped_heartbeats: u64,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Exit {
    pub pid: u32,
    pub comm: String,
}

impl Sample {
    /// The wire form. `dropped` is the sending link's own drop count.
    pub fn to_heartbeat(&self) -> v1::Heartbeat {
        let psi = |p: crate::psi::Psi| v1::Psi {
            some_avg10: p.some_avg10,
            full_avg10: p.full_avg10,
        };
        v1::Heartbeat {
            node: self.node.clone(),
            boot_id: self.boot_id.clone(),
            system_uuid: self.system_uuid.clone(),
            sensor_instance: self.sensor_instance.clone(),
            seq: self.seq,
            sensor_version: self.sensor_version.clone(),
            mode: match self.mode {
                Mode::Ebpf => v1::ProbeMode::Ebpf,
                Mode::Procfs => v1::ProbeMode::Procfs,
            } as i32,
            sampled_at_unix_ms: self.sampled_at_unix_ms,
            interval_ms: self.interval_ms,
            blocked_tasks: self
                .blocked_tasks
                .iter()
                .map(|b| v1::BlockedTask {
                    pid: b.pid,
                    tgid: b.tgid,
                    comm: b.comm.clone(),
                    cgroup: b.cgroup.clone(),
                    blocked_ms: b.blocked_ms,
                    d_share: b.d_share,
                })
                .collect(),
            device_stalls: self
                .device_stalls
                .iter()
                .map(|d| v1::DeviceStall {
                    device: d.device.clone(),
                    name: d.name.clone(),
                    in_flight: d.in_flight,
                    oldest_ms: d.oldest_ms,
                })
                .collect(),
            instances: self
                .instances
                .iter()
                .map(|i| v1::Instance {
                    uuid: i.uuid.clone(),
                    name: i.name.clone(),
                    pid: i.pid,
                    alive: i.alive,
                    cpu_ns_delta: i.cpu_ns_delta,
                    cpu_ns_total: i.cpu_ns_total,
                    exited: i.exited,
                })
                .collect(),
            nova_compute: Some(v1::NovaCompute {
                state: match self.nova_compute.state {
                    NovaState::Running => v1::nova_compute::State::Running,
                    NovaState::Blocked => v1::nova_compute::State::Blocked,
                    NovaState::Gone => v1::nova_compute::State::Gone,
                } as i32,
                pid: self.nova_compute.pid,
                blocked_ms: self.nova_compute.blocked_ms,
            }),
            pressure: Some(v1::Pressure {
                io: Some(psi(self.pressure.io)),
                memory: Some(psi(self.pressure.memory)),
                cpu: Some(psi(self.pressure.cpu)),
            }),
            health: Some(v1::SensorHealth {
                attached_probes: self.health.attached_probes.clone(),
                failed_probes: self.health.failed_probes.clone(),
                map_full: self.health.map_full,
                events_lost: self.health.events_lost,
                hung_task_events: self.health.hung_task_events,
                dropped_heartbeats: self.health.dropped_heartbeats,
                message: self.health.message.clone(),
            }),
        }
    }
}
