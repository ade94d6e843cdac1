//! Turning probe signals and discovered processes into one `Sample` per
//! interval: blocked tasks judged over a window, stalled devices, each
//! instance's liveness and CPU progress, nova-compute's state, PSI and the
//! sensor's own health.
//!
//! The sampler reads only `stat`-style files and eBPF maps (see `procfs`
//! for why that matters on a sick host) and never waits on discovery.

use std::{
    collections::{BTreeMap, HashSet, VecDeque},
    sync::{
        atomic::{AtomicU32, Ordering},
        Arc,
    },
    time::Duration,
};

use crate::{
    block::DeviceNames,
    clock, device_scope,
    discovery::{self, NovaProc, QemuProc},
    dstate::{Sleeper, Tracker},
    procfs,
    psi::PressureReader,
    sample::{self, BlockedTask, Health, Instance, NovaCompute, NovaState, Sample},
    signals::{ProbeEvent, Signals},
};

/// Settings the decider may change while running (`Settings` message).
#[derive(Debug)]
pub struct Tunables {
    pub interval_ms: AtomicU32,
    pub blocked_threshold_ms: AtomicU32,
}

impl Tunables {
    pub fn new(interval: Duration, threshold: Duration) -> Arc<Tunables> {
        Arc::new(Tunables {
            interval_ms: AtomicU32::new(interval.as_millis().clamp(10, u32::MAX as u128) as u32),
            blocked_threshold_ms: AtomicU32::new(threshold.as_millis().min(u32::MAX as u128) as u32),
        })
    }

    pub fn interval(&self) -> Duration {
        Duration::from_millis(u64::from(self.interval_ms.load(Ordering::Relaxed)))
    }
}

/// A new random id for this sensor process's run: the kernel hands out a
/// fresh UUID on each read of `/proc/sys/kernel/random/uuid`; without it,
/// the pid and the start time, which two runs on one boot never share.
pub fn instance_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/uuid")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty() && s.len() <= 64)
        .unwrap_or_else(|| format!("{}-{}", std::process::id(), clock::monotonic_ns()))
}

/// Fixed for the sampler's life.
#[derive(Debug, Clone)]
pub struct SamplerConfig {
    pub node: String,
    pub boot_id: String,
    /// The host's SMBIOS system UUID (canonical form), empty when unknown.
    pub system_uuid: String,
    /// Identifies this process's run: seq restarts at 1 with each run, and
    /// the decider tells a restarted sensor from a resend by it.
    pub instance: String,
    /// Most blocked tasks listed per heartbeat (longest first), so a host
    /// with thousands of stuck tasks still sends bounded messages.
    pub max_reported: usize,
    /// Extra pids whose exit is reported in `Sample::exits` (probe only).
    pub extra_watch: Vec<u32>,
    /// Shown with blocked tasks when the probe does not know their cgroup.
    pub scope_path: Option<String>,
    /// Why eBPF is not in use, when it is not.
    pub fallback_reason: Option<String>,
}

struct InstanceTrack {
    proc: QemuProc,
    last_cpu_ns: Option<u64>,
    exited: bool,
}

pub struct Sampler {
    cfg: SamplerConfig,
    tunables: Arc<Tunables>,
    signals: Box<dyn Signals>,
    discovery: discovery::Shared,
    tracker: Tracker,
    names: DeviceNames,
    pressure: PressureReader,
    /// Last sequence number sent; the first sample is 1.
    seq: u64,
    instances: BTreeMap<u32, InstanceTrack>,
    /// Recently exited processes, so a discovery snapshot taken before the
    /// exit does not bring them back. Bounded.
    exited: VecDeque<(u32, u64)>,
    nova: Option<NovaProc>,
    nova_gone: bool,
    watching: Vec<(u32, u64)>,
    extra_starttimes: Vec<(u32, u64)>,
    exits_of_extra: Vec<sample::Exit>,
    sleepers: Vec<Sleeper>,
    events: Vec<ProbeEvent>,
}

impl Sampler {
    pub fn new(
        cfg: SamplerConfig,
        tunables: Arc<Tunables>,
        signals: Box<dyn Signals>,
        discovery: discovery::Shared,
        pressure: PressureReader,
    ) -> Sampler {
        let extra_starttimes = cfg
            .extra_watch
            .iter()
            .filter_map(|&pid| procfs::read_stat(pid).map(|s| (pid, s.starttime)))
            .collect();
        Sampler {
            cfg,
            tunables,
            signals,
            discovery,
            // 64 samples (a minute at 1 s) is the longest the bitmap holds.
            tracker: Tracker::new(64),
            names: DeviceNames::default(),
            pressure,
            seq: 0,
            instances: BTreeMap::new(),
            exited: VecDeque::new(),
            nova: None,
            nova_gone: false,
            watching: Vec::new(),
            extra_starttimes,
            exits_of_extra: Vec::new(),
            sleepers: Vec::new(),
            events: Vec::new(),
        }
    }

    pub fn mode(&self) -> crate::signals::Mode {
        self.signals.mode()
    }

    fn remember_exit(&mut self, tgid: u32, starttime: u64) {
        if self.exited.len() >= 1024 {
            self.exited.pop_front();
        }
        self.exited.push_back((tgid, starttime));
    }

    fn handle_events(&mut self) {
        self.events.clear();
        self.signals.events(&mut self.events);
        for ev in std::mem::take(&mut self.events) {
            match ev {
                ProbeEvent::Exit { tgid, comm } => {
                    if let Some(t) = self.instances.get_mut(&tgid) {
                        if !t.exited {
                            tracing::info!(pid = tgid, uuid = %t.proc.uuid, "instance process exited");
                        }
                        t.exited = true;
                    }
                    if self.nova.is_some_and(|n| n.pid == tgid) {
                        tracing::warn!(pid = tgid, "nova-compute exited");
                        self.nova_gone = true;
                    }
                    if self.extra_starttimes.iter().any(|(p, _)| *p == tgid) {
                        self.exits_of_extra.push(sample::Exit { pid: tgid, comm });
                        self.extra_starttimes.retain(|(p, _)| *p != tgid);
                    }
                }
                ProbeEvent::Hang { pid, comm } => {
                    tracing::warn!(pid, %comm, "kernel hung-task detector reported a task");
                }
            }
        }
    }

    fn reconcile(&mut self, snap: &discovery::Snapshot) {
        for q in &snap.instances {
            if self.exited.contains(&(q.tgid, q.starttime)) {
                continue;
            }
            let known = self
                .instances
                .get(&q.tgid)
                .is_some_and(|t| t.proc.starttime == q.starttime);
            if !known {
                tracing::info!(pid = q.tgid, uuid = %q.uuid, name = %q.name, "instance process found");
                self.instances.insert(
                    q.tgid,
                    InstanceTrack {
                        proc: q.clone(),
                        last_cpu_ns: None,
                        exited: false,
                    },
                );
            }
        }
        // Liveness by /proc too, so a missed exit event cannot leave a
        // dead instance "alive".
        for t in self.instances.values_mut() {
            let alive = procfs::read_stat(t.proc.tgid).is_some_and(|s| {
                s.starttime == t.proc.starttime && s.state != 'Z' && s.state != 'X'
            });
            if !alive {
                t.exited = true;
            }
        }
        match (self.nova, snap.nova) {
            (_, Some(found))
                if self.nova != Some(found)
                    && !self.exited.contains(&(found.pid, found.starttime)) =>
            {
                tracing::info!(pid = found.pid, "nova-compute found");
                self.nova = Some(found);
                self.nova_gone = false;
            }
            _ => {}
        }
        if let Some(n) = self.nova {
            let alive = procfs::read_stat(n.pid)
                .is_some_and(|s| s.starttime == n.starttime && s.state != 'Z');
            if !alive || self.nova_gone {
                self.remember_exit(n.pid, n.starttime);
                self.nova = None;
                self.nova_gone = false;
            }
        }
    }

    fn update_watch(&mut self) {
        let mut want: Vec<(u32, u64)> = self
            .instances
            .values()
            .filter(|t| !t.exited)
            .map(|t| (t.proc.tgid, t.proc.starttime))
            .chain(self.nova.map(|n| (n.pid, n.starttime)))
            .chain(self.extra_starttimes.iter().copied())
            .collect();
        want.sort_unstable();
        want.dedup();
        if want != self.watching {
            self.signals.watch(&want);
            self.watching = want;
        }
    }

    /// Takes one sample. Call once per interval.
    pub fn sample(&mut self) -> Sample {
        let now = clock::monotonic_ns();
        let interval = self.tunables.interval();
        let threshold_ns =
            u64::from(self.tunables.blocked_threshold_ms.load(Ordering::Relaxed)) * 1_000_000;
        let snap = self.discovery.latest();

        self.handle_events();
        self.reconcile(&snap);
        self.update_watch();

        // Blocked tasks, judged over the window, confirmed before reporting.
        self.sleepers.clear();
        self.signals
            .sleepers(snap.scope_pids.as_deref(), &mut self.sleepers);
        self.tracker
            .observe(now, interval.as_nanos() as u64, &self.sleepers);
        let mut blocked = Vec::new();
        for b in self.tracker.blocked(now, threshold_ns) {
            if blocked.len() >= self.cfg.max_reported {
                break;
            }
            if !self.signals.confirm_blocked(b.tgid, b.tid) {
                self.tracker.forget(b.tid);
                continue;
            }
            blocked.push(b);
        }

        let mut devices = self.signals.devices(now, &mut self.names);
        if let Some(scope) = snap.scope_pids.as_deref() {
            // Several nodes may share this kernel: report only the devices
            // this node's tasks use (see `device_scope`).
            let cands: Vec<_> = devices.iter().map(|d| (d.dev, d.name.clone())).collect();
            let used = device_scope::used_by(scope, &cands, std::path::Path::new("/proc"));
            devices.retain(|d| used.contains(&d.dev));
        }

        let mut instances = Vec::with_capacity(self.instances.len());
        let ids: Vec<u32> = self.instances.keys().copied().collect();
        for tgid in ids {
            let total = self.signals.cpu_ns(tgid);
            let Some(t) = self.instances.get_mut(&tgid) else {
                continue;
            };
            let total = total.or(t.last_cpu_ns).unwrap_or(0);
            let delta = t.last_cpu_ns.map_or(0, |last| total.saturating_sub(last));
            t.last_cpu_ns = Some(total);
            instances.push(Instance {
                uuid: t.proc.uuid.clone(),
                name: t.proc.name.clone(),
                pid: tgid,
                alive: !t.exited,
                cpu_ns_delta: delta,
                cpu_ns_total: total,
                exited: t.exited,
            });
        }
        // An exit is reported once, then the instance is forgotten.
        let gone: Vec<(u32, u64)> = self
            .instances
            .values()
            .filter(|t| t.exited)
            .map(|t| (t.proc.tgid, t.proc.starttime))
            .collect();
        for (tgid, st) in gone {
            self.instances.remove(&tgid);
            self.remember_exit(tgid, st);
        }

        let nova_compute = match self.nova {
            None => NovaCompute {
                state: NovaState::Gone,
                pid: 0,
                blocked_ms: 0,
            },
            Some(n) => {
                let worst = blocked
                    .iter()
                    .filter(|b| b.tgid == n.pid)
                    .map(|b| b.blocked_ms)
                    .max();
                NovaCompute {
                    state: if worst.is_some() {
                        NovaState::Blocked
                    } else {
                        NovaState::Running
                    },
                    pid: n.pid,
                    blocked_ms: worst.unwrap_or(0),
                }
            }
        };

        let probe_health = self.signals.health();
        let mut notes = Vec::new();
        if let Some(reason) = &self.cfg.fallback_reason {
            notes.push(format!("procfs fallback: {reason}"));
        }
        if let Some(stuck) = self
            .discovery
            .scan_running_for(now)
            .filter(|d| *d > Duration::from_secs(10))
        {
            notes.push(format!(
                "process discovery stalled for {} s (a /proc read is blocked); known processes are still sampled",
                stuck.as_secs()
            ));
        }
        if probe_health.stale_entries > 0 {
            notes.push(format!(
                "{} stale probe entries removed",
                probe_health.stale_entries
            ));
        }

        let paths = &snap.cgroup_paths;
        self.seq += 1;
        Sample {
            node: self.cfg.node.clone(),
            boot_id: self.cfg.boot_id.clone(),
            system_uuid: self.cfg.system_uuid.clone(),
            sensor_instance: self.cfg.instance.clone(),
            seq: self.seq,
            sensor_version: env!("CARGO_PKG_VERSION").to_string(),
            mode: self.signals.mode(),
            sampled_at_unix_ms: clock::unix_ms(),
            interval_ms: interval.as_millis() as u32,
            blocked_tasks: blocked
                .into_iter()
                .map(|b| BlockedTask {
                    pid: b.tid,
                    tgid: b.tgid,
                    comm: b.comm,
                    cgroup: match b.cgroup_id {
                        Some(id) => paths.get(&id).cloned().unwrap_or_else(|| id.to_string()),
                        None => self.cfg.scope_path.clone().unwrap_or_default(),
                    },
                    blocked_ms: b.blocked_ms,
                    d_share: b.d_share,
                })
                .collect(),
            device_stalls: devices
                .into_iter()
                .take(self.cfg.max_reported)
                .map(|d| sample::DeviceStall {
                    device: d.dev.to_string(),
                    name: d.name,
                    in_flight: d.in_flight,
                    oldest_ms: d.oldest_ms,
                })
                .collect(),
            instances,
            nova_compute,
            pressure: self.pressure.read(),
            health: Health {
                attached_probes: probe_health.attached,
                failed_probes: probe_health.failed,
                map_full: probe_health.map_full,
                events_lost: probe_health.events_lost,
                hung_task_events: probe_health.hung_task_events,
                dropped_heartbeats: 0,
                message: notes.join("; "),
            },
            exits: std::mem::take(&mut self.exits_of_extra),
        }
    }

    /// Pids whose exit `probe --wait-exit` is still waiting for.
    pub fn waiting_for_exit(&self) -> HashSet<u32> {
        self.extra_starttimes.iter().map(|(p, _)| *p).collect()
    }
}
