//! How bad a `degraded` node is (the engine tracks its peak; the alerts
//! re-alert when it grows).

use vigil_verdict::{Evidence, NovaComputeProcess, SensorWitness};

/// How bad a degraded node is, from its sensor's signals: what a person
/// reading the first alert would want to hear about again when it grows
/// (nova-compute hung → also every VM frozen).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DegradedLevel {
    /// 0 running or unknown, 1 blocked, 2 gone.
    pub nova_compute: u8,
    /// Running instances that got no CPU time since the previous heartbeat.
    pub frozen_instances: usize,
    /// Tasks blocked in D state.
    pub blocked_tasks: usize,
    /// Block devices with a stalled request.
    pub stalled_devices: usize,
}

impl DegradedLevel {
    pub fn of(ev: &Evidence) -> DegradedLevel {
        let SensorWitness::Seen(r) = &ev.sensor else {
            return DegradedLevel::default();
        };
        let s = &r.signals;
        DegradedLevel {
            nova_compute: match s.nova_compute {
                NovaComputeProcess::Blocked { .. } => 1,
                NovaComputeProcess::Gone => 2,
                _ => 0,
            },
            frozen_instances: s
                .instances
                .iter()
                .filter(|i| i.alive && !i.exited && i.cpu_delta.is_zero())
                .count(),
            blocked_tasks: s.blocked_tasks.len(),
            stalled_devices: s.device_stalls.len(),
        }
    }

    /// Worse than `other` in some respect (not merely different).
    pub fn exceeds(&self, other: &DegradedLevel) -> bool {
        self.nova_compute > other.nova_compute
            || self.frozen_instances > other.frozen_instances
            || self.blocked_tasks > other.blocked_tasks
            || self.stalled_devices > other.stalled_devices
    }

    /// The worse of the two in each respect.
    pub fn max(&self, other: &DegradedLevel) -> DegradedLevel {
        DegradedLevel {
            nova_compute: self.nova_compute.max(other.nova_compute),
            frozen_instances: self.frozen_instances.max(other.frozen_instances),
            blocked_tasks: self.blocked_tasks.max(other.blocked_tasks),
            stalled_devices: self.stalled_devices.max(other.stalled_devices),
        }
    }
}
