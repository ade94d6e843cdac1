//! Loading the embedded eBPF object and attaching its programs, each step
//! with its own error; and `EbpfProbe`, the `Signals` backed by its maps.
//!
//! The programs are attached one by one and each outcome is recorded, so a
//! kernel that lacks one tracepoint still gets the others, and the
//! heartbeat lists exactly which probes are attached. Without the
//! `sched_switch` program there is no D-state tracking at all, so that one
//! failing fails the load (and the sensor falls back to procfs).

use std::collections::{HashMap as StdHashMap, HashSet};

use aya::{
    maps::{Array, HashMap, MapData, PerCpuArray, PerCpuHashMap, PerCpuValues, RingBuf},
    programs::{BtfTracePoint, TracePoint},
    Btf, Ebpf, EbpfLoader,
};
use vigil_sensor_common::{
    counter, names, DState, Event, InFlight, DHINT_SLOTS, DSTATE_COUNTED, EVENT_EXIT, EVENT_HANG,
    NO_FIELD, WATCH_WORDS,
};

use crate::{
    block::{self, DevId, DeviceNames, DeviceStall},
    clock,
    dstate::Sleeper,
    offsets::KernelOffsets,
    procfs,
    signals::{Mode, ProbeEvent, ProbeHealth, Signals},
};

/// Map sizes and scope, from the command line.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// `DSTATE` entries (tasks in D state tracked at once).
    pub max_blocked_tasks: u32,
    /// `INFLIGHT` entries (block requests in flight tracked at once).
    pub max_inflight: u32,
    /// `WATCH` entries (processes whose CPU time and exit are followed).
    pub max_watched: u32,
    /// `EVENTS` ring buffer size in bytes (a power of two, ≥ one page).
    pub events_bytes: u32,
    /// The cgroup to limit D-state tracking to (its id and depth go to
    /// the program; its pids limit the seeding of already-blocked tasks).
    pub scope: Option<crate::cgroup::Scope>,
}

/// Why the eBPF side could not be started.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The kernel refused the object (verifier, permissions, missing BTF).
    #[error("loading the eBPF object failed (needs root or CAP_BPF+CAP_PERFMON, and kernel BTF)")]
    Load(#[source] aya::EbpfError),
    /// The kernel's BTF could not be parsed by aya (needed for tp_btf).
    #[error("reading kernel BTF for tp_btf programs failed")]
    Btf(#[source] aya::BtfError),
    /// The object lacks a program or map this sensor expects.
    #[error("the eBPF object has no {what} named {name}; sensor and object are out of step, rebuild with `cargo xtask build-ebpf`")]
    Missing {
        what: &'static str,
        name: &'static str,
    },
    /// A map has another type than expected.
    #[error("map {name} has an unexpected type")]
    Map {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    /// The essential `sched_switch` program could not be attached.
    #[error("attaching {program} failed: {why}")]
    Essential { program: &'static str, why: String },
}

/// The loaded programs and their maps.
pub struct EbpfProbe {
    /// Owns the programs; dropping it detaches them.
    _ebpf: Ebpf,
    dstate: HashMap<MapData, u32, DState>,
    inflight: HashMap<MapData, u64, InFlight>,
    watch: PerCpuHashMap<MapData, u32, u64>,
    watch_bits: Array<MapData, u64>,
    dhint: Array<MapData, u32>,
    /// What this process last wrote to the seeded half of `DHINT`.
    seeded_hint: Vec<u32>,
    counters: PerCpuArray<MapData, u64>,
    events: RingBuf<MapData>,
    /// What is in `WATCH` now (tgid → starttime).
    watched: StdHashMap<u32, u64>,
    nr_cpus: usize,
    attached: Vec<String>,
    failed: Vec<String>,
    /// D-state entries found stale (a missed switch-in) and removed.
    stale: u64,
    /// In-flight entries whose request ended unseen, removed.
    inflight_gc: u64,
    /// Requests in flight before attach, which the programs never saw.
    prestart: block::PreStartInflight,
}

fn take<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, LoadError>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf
        .take_map(name)
        .ok_or(LoadError::Missing { what: "map", name })?;
    T::try_from(map).map_err(|source| LoadError::Map { name, source })
}

fn attach_btf(ebpf: &mut Ebpf, btf: &Btf, prog: &'static str, hook: &str) -> Result<(), String> {
    let p: &mut BtfTracePoint = ebpf
        .program_mut(prog)
        .ok_or("not in the object")?
        .try_into()
        .map_err(|e| format!("{e}"))?;
    p.load(hook, btf).map_err(|e| format!("load: {e}"))?;
    p.attach().map_err(|e| format!("attach: {e}"))?;
    Ok(())
}

fn attach_tp(
    ebpf: &mut Ebpf,
    prog: &'static str,
    category: &str,
    name: &str,
) -> Result<(), String> {
    let p: &mut TracePoint = ebpf
        .program_mut(prog)
        .ok_or("not in the object")?
        .try_into()
        .map_err(|e| format!("{e}"))?;
    p.load().map_err(|e| format!("load: {e}"))?;
    p.attach(category, name)
        .map_err(|e| format!("attach: {e}"))?;
    Ok(())
}

/// Loads `object` into the kernel with the offsets and map sizes injected,
/// attaching nothing (`EbpfProbe::load` and the benchmark attach).
pub fn open(object: &[u8], off: &KernelOffsets, opts: &LoadOptions) -> Result<Ebpf, LoadError> {
    let (scope_id, scope_level) = opts
        .scope
        .as_ref()
        .map_or((u64::MAX, NO_FIELD), |s| (s.id, s.level));
    let mut loader = EbpfLoader::new();
    loader
        .override_global(names::G_TASK_PID_OFF, &off.task_pid, true)
        .override_global(names::G_TASK_TGID_OFF, &off.task_tgid, true)
        .override_global(names::G_RQ_PART_OFF, &off.rq_part, true)
        .override_global(names::G_RQ_Q_OFF, &off.rq_q, true)
        .override_global(names::G_Q_DISK_OFF, &off.q_disk, true)
        .override_global(names::G_DISK_PART0_OFF, &off.disk_part0, true)
        .override_global(names::G_BDEV_DEV_OFF, &off.bdev_dev, true)
        .override_global(names::G_EXIT_PID_OFF, &off.exit_pid, true)
        .override_global(names::G_EXIT_GROUP_DEAD_OFF, &off.exit_group_dead, true)
        .override_global(names::G_HANG_PID_OFF, &off.hang_pid, true)
        .override_global(names::G_HANG_COMM_OFF, &off.hang_comm, true)
        .override_global(names::G_SCOPE_CGROUP_ID, &scope_id, true)
        .override_global(names::G_SCOPE_CGROUP_LEVEL, &scope_level, true)
        .map_max_entries(names::MAP_DSTATE, opts.max_blocked_tasks)
        .map_max_entries(names::MAP_INFLIGHT, opts.max_inflight)
        .map_max_entries(names::MAP_WATCH, opts.max_watched)
        .map_max_entries(names::MAP_EVENTS, opts.events_bytes);
    loader.load(object).map_err(LoadError::Load)
}

impl EbpfProbe {
    /// Loads `object` with the offsets and sizes injected, attaches every
    /// program it can, and seeds `DSTATE` with tasks already in D state.
    pub fn load(
        object: &[u8],
        off: &KernelOffsets,
        opts: &LoadOptions,
    ) -> Result<EbpfProbe, LoadError> {
        let mut ebpf = open(object, off, opts)?;
        let btf = Btf::from_sys_fs().map_err(LoadError::Btf)?;

        let mut attached = Vec::new();
        let mut failed = Vec::new();
        let mut record = |name: &str, r: Result<(), String>| match r {
            Ok(()) => attached.push(name.to_string()),
            Err(why) => {
                tracing::warn!(probe = name, %why, "probe not attached");
                failed.push(format!("{name}: {why}"));
            }
        };

        if off.task_pid == NO_FIELD || off.task_tgid == NO_FIELD {
            return Err(LoadError::Essential {
                program: "sched_switch",
                why: "task_struct.pid/tgid offsets unknown (no kernel BTF?)".into(),
            });
        }
        attach_btf(&mut ebpf, &btf, names::PROG_SCHED_SWITCH, "sched_switch").map_err(|why| {
            LoadError::Essential {
                program: "sched_switch",
                why,
            }
        })?;
        record("sched_switch", Ok(()));

        if off.block_ready() {
            for (prog, hook) in [
                (names::PROG_RQ_ISSUE, "block_rq_issue"),
                (names::PROG_RQ_COMPLETE, "block_rq_complete"),
                (names::PROG_RQ_REQUEUE, "block_rq_requeue"),
            ] {
                record(hook, attach_btf(&mut ebpf, &btf, prog, hook));
            }
        } else {
            record(
                "block_rq_issue",
                Err("request/block_device offsets unknown".into()),
            );
        }
        if off.exit_pid != NO_FIELD {
            record(
                "sched_process_exit",
                attach_tp(
                    &mut ebpf,
                    names::PROG_PROCESS_EXIT,
                    "sched",
                    "sched_process_exit",
                ),
            );
        } else {
            record("sched_process_exit", Err("format file unreadable".into()));
        }
        if off.hang_pid != NO_FIELD {
            record(
                "sched_process_hang",
                attach_tp(
                    &mut ebpf,
                    names::PROG_PROCESS_HANG,
                    "sched",
                    "sched_process_hang",
                ),
            );
        } else {
            record("sched_process_hang", Err("format file unreadable".into()));
        }
        drop(btf);

        let mut probe = EbpfProbe {
            dstate: take(&mut ebpf, names::MAP_DSTATE)?,
            inflight: take(&mut ebpf, names::MAP_INFLIGHT)?,
            watch: take(&mut ebpf, names::MAP_WATCH)?,
            watch_bits: take(&mut ebpf, names::MAP_WATCH_BITS)?,
            dhint: take(&mut ebpf, names::MAP_DHINT)?,
            seeded_hint: vec![0; DHINT_SLOTS as usize],
            counters: take(&mut ebpf, names::MAP_COUNTERS)?,
            events: take(&mut ebpf, names::MAP_EVENTS)?,
            _ebpf: ebpf,
            watched: StdHashMap::new(),
            nr_cpus: aya::util::nr_cpus().unwrap_or(1),
            attached,
            failed,
            stale: 0,
            inflight_gc: 0,
            prestart: block::PreStartInflight::from_sysfs(crate::clock::monotonic_ns()),
        };
        // The scope's members are read now, after attach: a task that joined
        // and blocked while we were loading is seeded too.
        let members = opts.scope.as_ref().map(crate::cgroup::Scope::pids);
        probe.seed_dstate(members.as_ref());
        Ok(probe)
    }

    /// Adds the requests that were in flight before attach and still are
    /// (by the kernel's count), aged from the sensor's start.
    fn add_prestart(&mut self, live: &mut Vec<(DevId, u64)>) {
        for dev in self.prestart.devices() {
            let tracked = live.iter().filter(|(d, _)| *d == dev).count();
            let tracked = u32::try_from(tracked).unwrap_or(u32::MAX);
            let kernel = block::sysfs_inflight(dev).unwrap_or(0);
            if let Some((n, since)) = self.prestart.untracked(dev, kernel, tracked) {
                live.extend(std::iter::repeat_n((dev, since), n as usize));
            }
        }
    }

    /// Tasks already in D state at attach time never switched out under our
    /// program, so they are entered now (age counted from now: a lower
    /// bound). `only` limits it to some pids (the scope).
    fn seed_dstate(&mut self, only: Option<&HashSet<u32>>) {
        let now = clock::monotonic_ns();
        let mut seeded = 0;
        for tgid in procfs::numeric_entries(std::path::Path::new("/proc")) {
            if only.is_some_and(|s| !s.contains(&tgid)) {
                continue;
            }
            for tid in procfs::numeric_entries(std::path::Path::new(&format!("/proc/{tgid}/task")))
            {
                let Some(st) = procfs::read_task_stat(tgid, tid) else {
                    continue;
                };
                if st.state != 'D' {
                    continue;
                }
                let mut comm = [0u8; 16];
                for (d, s) in comm.iter_mut().zip(st.comm.bytes().take(15)) {
                    *d = s;
                }
                let entry = DState {
                    start_ns: now,
                    cgroup_id: 0,
                    tgid,
                    // Not counted in the programs' half of DHINT: the
                    // seeded half below makes switch-in look it up.
                    flags: 0,
                    comm,
                };
                // BPF_NOEXIST: never overwrite what the program recorded.
                if self.dstate.insert(tid, entry, 1).is_ok() {
                    tracing::debug!(tid, tgid, comm = %st.comm, "seeded D-state entry");
                    seeded += 1;
                }
            }
        }
        self.sync_seeded_hint();
        if seeded > 0 {
            tracing::info!(
                seeded,
                "tasks already in D state at start are tracked from now"
            );
        }
    }

    /// Writes the seeded half of `DHINT` from the seeded entries still in
    /// `DSTATE`, so switch-in looks those thread ids up. Entries are only
    /// ever seeded at start, so a slot read here as 0 cannot gain an entry
    /// later; a count read too high only costs lookups until the next call.
    fn sync_seeded_hint(&mut self) {
        let mut want = vec![0u32; DHINT_SLOTS as usize];
        for (tid, d) in self.dstate.iter().filter_map(Result::ok) {
            if d.flags & DSTATE_COUNTED == 0 {
                if let Some(n) = want.get_mut((tid & (DHINT_SLOTS - 1)) as usize) {
                    *n += 1;
                }
            }
        }
        for (i, (&w, had)) in want.iter().zip(self.seeded_hint.iter_mut()).enumerate() {
            if w == *had {
                continue;
            }
            match self.dhint.set(DHINT_SLOTS + i as u32, w, 0) {
                Ok(()) => {
                    tracing::debug!(slot = i, from = *had, to = w, "seeded DHINT slot");
                    *had = w;
                }
                Err(e) => tracing::warn!(error = %e, "cannot update DHINT"),
            }
        }
    }

    /// Writes `WATCH_BITS` for the tgids in `watched`, only the words that
    /// change. A bit set before its `WATCH` entry exists, or left set a
    /// moment after it is gone, only costs a lookup.
    fn sync_watch_bits(&mut self, before: &[u64]) {
        let now = watch_bitmap(self.watched.keys().copied());
        for (i, (&w, &b)) in now.iter().zip(before).enumerate() {
            if w != b {
                if let Err(e) = self.watch_bits.set(i as u32, w, 0) {
                    tracing::warn!(error = %e, "cannot update WATCH_BITS");
                }
            }
        }
    }

    /// Makes `WATCH` hold exactly `procs` (tgid, starttime).
    fn watch_inner(&mut self, procs: &[(u32, u64)]) {
        let wanted: StdHashMap<u32, u64> = procs.iter().copied().collect();
        let gone: Vec<u32> = self
            .watched
            .iter()
            .filter(|(tgid, st)| wanted.get(tgid) != Some(st))
            .map(|(t, _)| *t)
            .collect();
        for tgid in gone {
            let _ = self.watch.remove(&tgid);
            self.watched.remove(&tgid);
        }
        for (&tgid, &st) in &wanted {
            if self.watched.contains_key(&tgid) {
                continue;
            }
            let zeros = match PerCpuValues::try_from(vec![0u64; self.nr_cpus]) {
                Ok(z) => z,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot size per-CPU values");
                    return;
                }
            };
            match self.watch.insert(tgid, zeros, 0) {
                Ok(()) => {
                    self.watched.insert(tgid, st);
                }
                Err(e) => {
                    tracing::warn!(tgid, error = %e, "cannot watch process (WATCH full? raise --max-watched)")
                }
            }
        }
    }

    fn counter(&self, index: u32) -> u64 {
        self.counters
            .get(&index, 0)
            .map(|v| v.iter().sum())
            .unwrap_or(0)
    }
}

/// The `WATCH_BITS` words for a set of tgids (see `WATCH_WORDS`).
pub fn watch_bitmap(tgids: impl IntoIterator<Item = u32>) -> Vec<u64> {
    let mut words = vec![0u64; WATCH_WORDS as usize];
    for tgid in tgids {
        let bit = tgid % (64 * WATCH_WORDS);
        if let Some(w) = words.get_mut((bit / 64) as usize) {
            *w |= 1 << (bit % 64);
        }
    }
    words
}

impl Signals for EbpfProbe {
    fn mode(&self) -> Mode {
        Mode::Ebpf
    }

    fn sleepers(&mut self, _scope: Option<&HashSet<u32>>, out: &mut Vec<Sleeper>) {
        self.sync_seeded_hint();
        // The program filters by cgroup itself; seeded entries were filtered
        // by pid at seeding time.
        for (tid, d) in self.dstate.iter().filter_map(Result::ok) {
            out.push(Sleeper {
                tid,
                tgid: d.tgid,
                comm: procfs::comm_str(&d.comm),
                cgroup_id: (d.cgroup_id != 0).then_some(d.cgroup_id),
                since_ns: Some(d.start_ns),
            });
        }
    }

    fn confirm_blocked(&mut self, tgid: u32, tid: u32) -> bool {
        let before = self.dstate.get(&tid, 0).ok();
        let Some(before) = before else {
            return false;
        };
        let state = procfs::read_task_stat(tgid, tid).map(|s| s.state);
        match state {
            Some('D') => true,
            // Woken and waiting for a CPU: the entry goes at switch-in.
            Some('R') => true,
            // Sleeping another way, or gone, while the entry says D since the
            // same instant: a switch-in was missed. Stale.
            _ => {
                if self.dstate.get(&tid, 0).ok() == Some(before) {
                    let _ = self.dstate.remove(&tid);
                    self.stale += 1;
                }
                false
            }
        }
    }

    fn devices(&mut self, now_ns: u64, names: &mut DeviceNames) -> Vec<DeviceStall> {
        let entries: Vec<(u64, InFlight)> = self.inflight.iter().filter_map(Result::ok).collect();
        let mut per_dev: StdHashMap<u32, Vec<(u64, u64)>> = StdHashMap::new();
        for (rq, e) in entries {
            per_dev.entry(e.dev).or_default().push((e.start_ns, rq));
        }
        let mut live = Vec::new();
        for (dev_t, mut reqs) in per_dev {
            let dev = DevId::from_kernel(dev_t);
            reqs.sort_unstable();
            // Some requests end without `block_rq_complete` (the flush
            // machinery's own request, for one), so entries can outlive their
            // request. The kernel's own count is the truth: when we hold more
            // entries than it has requests in flight, the surplus, oldest
            // first and only past a second, is stale. A real stall keeps the
            // kernel's count up, so it is never cleaned away.
            let kernel = block::sysfs_inflight(dev).unwrap_or(0) as usize;
            let mut surplus = reqs.len().saturating_sub(kernel);
            reqs.retain(|&(start, rq)| {
                if surplus > 0 && now_ns.saturating_sub(start) > 1_000_000_000 {
                    surplus -= 1;
                    let _ = self.inflight.remove(&rq);
                    self.inflight_gc += 1;
                    false
                } else {
                    true
                }
            });
            live.extend(reqs.into_iter().map(|(start, _)| (dev, start)));
        }
        self.add_prestart(&mut live);
        block::aggregate(live, now_ns)
            .into_iter()
            .map(|(dev, in_flight, oldest_ms)| DeviceStall {
                dev,
                name: names.name(dev),
                in_flight,
                oldest_ms,
            })
            .collect()
    }

    fn watch(&mut self, procs: &[(u32, u64)]) {
        let before = watch_bitmap(self.watched.keys().copied());
        self.watch_inner(procs);
        self.sync_watch_bits(&before);
    }

    fn cpu_ns(&mut self, tgid: u32) -> Option<u64> {
        self.watch.get(&tgid, 0).ok().map(|v| v.iter().sum())
    }

    fn events(&mut self, out: &mut Vec<ProbeEvent>) {
        while let Some(item) = self.events.next() {
            if item.len() < std::mem::size_of::<Event>() {
                continue;
            }
            // SAFETY: the record is at least size_of::<Event>() bytes, Event
            // is Pod (any bit pattern is valid) and read_unaligned copes with
            // the ring buffer's 8-byte alignment.
            let ev: Event = unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<Event>()) };
            match ev.kind {
                EVENT_EXIT => out.push(ProbeEvent::Exit {
                    tgid: ev.tgid,
                    comm: procfs::comm_str(&ev.comm),
                }),
                EVENT_HANG => out.push(ProbeEvent::Hang {
                    pid: ev.pid,
                    comm: procfs::comm_str(&ev.comm),
                }),
                _ => {}
            }
        }
    }

    fn health(&mut self) -> ProbeHealth {
        ProbeHealth {
            attached: self.attached.clone(),
            failed: self.failed.clone(),
            map_full: self.counter(counter::DSTATE_FULL) + self.counter(counter::INFLIGHT_FULL),
            events_lost: self.counter(counter::EVENTS_LOST) + self.counter(counter::READ_FAILED),
            hung_task_events: self.counter(counter::HUNG_TASKS),
            stale_entries: self.stale,
            inflight_gc: self.inflight_gc,
        }
    }
}
