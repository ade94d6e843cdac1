//! What a probe can tell the sampler, whichever way it gets it: the eBPF
//! programs (`loader::EbpfProbe`) or the `/proc` fallback
//! (`fallback::ProcfsProbe`). The sampler only sees this trait, so the two
//! modes produce the same heartbeat and differ only in precision.

use std::collections::HashSet;

use crate::{
    block::{DeviceNames, DeviceStall},
    dstate::Sleeper,
};

/// Where the signals come from; reported in every heartbeat, never faked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Ebpf,
    Procfs,
}

impl Mode {
    /// As heartbeats and logs spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Ebpf => "ebpf",
            Mode::Procfs => "procfs",
        }
    }
}

/// Something the probe saw happen (rather than a state it samples).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeEvent {
    /// A watched process exited (its last thread).
    Exit { tgid: u32, comm: String },
    /// The kernel's hung-task detector reported a task.
    Hang { pid: u32, comm: String },
}

/// The probe's own health, for `SensorHealth`.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ProbeHealth {
    pub attached: Vec<String>,
    /// `name: why` for each probe that could not be attached.
    pub failed: Vec<String>,
    /// Times a bounded map was full.
    pub map_full: u64,
    /// Events lost (ring buffer full, failed kernel reads).
    pub events_lost: u64,
    /// Kernel hung-task reports seen since start.
    pub hung_task_events: u64,
    /// D-state entries found stale (a missed switch-in) and removed.
    pub stale_entries: u64,
    /// Block in-flight entries whose request ended unseen (e.g. flushes),
    /// removed; expected on busy hosts, so only logged.
    pub inflight_gc: u64,
}

/// A source of liveness signals.
pub trait Signals: Send {
    fn mode(&self) -> Mode;

    /// Appends every task in uninterruptible sleep now. `scope` (pids of the
    /// `--cgroup` group) limits the set when the probe cannot filter itself.
    fn sleepers(&mut self, scope: Option<&HashSet<u32>>, out: &mut Vec<Sleeper>);

    /// Confirms a task judged blocked is really still in D state, removing
    /// it from the probe's records when it is not. Returns false if stale.
    fn confirm_blocked(&mut self, tgid: u32, tid: u32) -> bool;

    /// Block devices with requests in flight, oldest first.
    fn devices(&mut self, now_ns: u64, names: &mut DeviceNames) -> Vec<DeviceStall>;

    /// Sets the processes to watch for CPU progress and exits, as
    /// `(tgid, starttime)` pairs.
    fn watch(&mut self, procs: &[(u32, u64)]);

    /// CPU time (ns) a watched process's threads received since watched.
    fn cpu_ns(&mut self, tgid: u32) -> Option<u64>;

    /// Appends the events seen since the last call.
    fn events(&mut self, out: &mut Vec<ProbeEvent>);

    fn health(&mut self) -> ProbeHealth;
}

/// How to open the probe.
#[derive(Debug, Clone)]
pub struct OpenOptions {
    /// `--procfs`: do not even try eBPF.
    pub force_procfs: bool,
    pub load: crate::loader::LoadOptions,
}

/// Opens the eBPF probe, or the procfs fallback when that is forced or
/// eBPF cannot start. Never fails: the fallback always works, and the
/// reason is returned (and logged as an error) so no one mistakes it for
/// eBPF. The second value is `Some(reason)` in procfs mode.
pub fn open(opts: &OpenOptions) -> (Box<dyn Signals>, Option<String>) {
    use crate::{
        btf::Btf, fallback::ProcfsProbe, loader::EbpfProbe, offsets::KernelOffsets, tracefs,
    };
    let fallback = |reason: String| -> (Box<dyn Signals>, Option<String>) {
        (Box::new(ProcfsProbe::new(reason.clone())), Some(reason))
    };
    if opts.force_procfs {
        tracing::warn!("procfs mode forced by --procfs: coarser signals, no eBPF");
        return fallback("forced by --procfs".into());
    }
    let Some(object) = crate::embedded::ebpf_object() else {
        let reason = "this vigil-sensor was built without its eBPF object (run `cargo xtask build-ebpf`, then rebuild)";
        tracing::error!("{reason}; RUNNING THE PROCFS FALLBACK");
        return fallback(reason.into());
    };
    let tracefs_root = match tracefs::ensure_mounted() {
        Ok(p) => Some(p),
        Err(e) => {
            tracing::warn!(error = %e, "no tracefs: classic tracepoints will not attach");
            None
        }
    };
    let btf = match Btf::from_sys_fs() {
        Ok(b) => Some(b),
        Err(e) => {
            tracing::warn!(error = %e, "no kernel BTF");
            None
        }
    };
    let (offsets, notes) = KernelOffsets::discover(btf.as_ref(), tracefs_root.as_deref());
    drop(btf);
    for n in &notes {
        tracing::warn!(note = %n, "kernel fact missing");
    }
    tracing::debug!(?offsets, "kernel offsets");
    match EbpfProbe::load(object, &offsets, &opts.load) {
        Ok(p) => (Box::new(p), None),
        Err(e) => {
            let mut reason = e.to_string();
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                reason.push_str(": ");
                reason.push_str(&s.to_string());
                src = s.source();
            }
            tracing::error!(%reason, "eBPF could not start; RUNNING THE PROCFS FALLBACK");
            fallback(reason)
        }
    }
}
