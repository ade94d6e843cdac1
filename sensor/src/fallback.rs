//! The `/proc` fallback: the same signals as the eBPF probe, coarser, for
//! hosts where eBPF cannot load (no BTF, no permission, a sensor built
//! without the object) or when `--procfs` forces it. Every heartbeat says
//! `procfs`, so the decider knows what it is reading.
//!
//! - D state: `/proc/*/task/*/stat` state `D` at each sample (no sleep
//!   start, so the window logic counts samples).
//! - Block: `/proc/diskstats` in-flight counts, with the age estimated as
//!   the time since the device last completed anything.
//! - CPU progress: utime+stime of `/proc/PID/stat`; exits: the pid is gone
//!   or its start time changed.
//!
//! All of these are `stat`-style reads, safe while tasks hang.

use std::{
    collections::{HashMap, HashSet},
    fs::File,
    os::unix::fs::FileExt,
    path::Path,
};

use crate::{
    block::{self, DeviceNames, DeviceStall, DiskstatsTracker},
    clock,
    dstate::Sleeper,
    procfs,
    signals::{Mode, ProbeEvent, ProbeHealth, Signals},
};

pub struct ProcfsProbe {
    /// Why eBPF is not used, for the health message.
    reason: String,
    diskstats: Option<File>,
    disks: DiskstatsTracker,
    watched: HashMap<u32, u64>,
    ticks_per_sec: u64,
    /// Exits found when a watched process vanished.
    pending: Vec<ProbeEvent>,
}

impl ProcfsProbe {
    pub fn new(reason: String) -> ProcfsProbe {
        ProcfsProbe {
            reason,
            diskstats: File::open("/proc/diskstats").ok(),
            disks: DiskstatsTracker::default(),
            watched: HashMap::new(),
            ticks_per_sec: clock::clock_ticks_per_sec(),
            pending: Vec::new(),
        }
    }

    pub fn reason(&self) -> &str {
        &self.reason
    }
}

impl Signals for ProcfsProbe {
    fn mode(&self) -> Mode {
        Mode::Procfs
    }

    fn sleepers(&mut self, scope: Option<&HashSet<u32>>, out: &mut Vec<Sleeper>) {
        let pids: Vec<u32> = match scope {
            Some(s) => s.iter().copied().collect(),
            None => procfs::numeric_entries(Path::new("/proc")),
        };
        for tgid in pids {
            for tid in procfs::numeric_entries(Path::new(&format!("/proc/{tgid}/task"))) {
                let Some(st) = procfs::read_task_stat(tgid, tid) else {
                    continue;
                };
                if st.state == 'D' {
                    out.push(Sleeper {
                        tid,
                        tgid,
                        comm: st.comm,
                        cgroup_id: None,
                        since_ns: None,
                    });
                }
            }
        }
    }

    fn confirm_blocked(&mut self, _tgid: u32, _tid: u32) -> bool {
        // The sample itself read the state from /proc just now.
        true
    }

    fn devices(&mut self, now_ns: u64, _names: &mut DeviceNames) -> Vec<DeviceStall> {
        let Some(f) = &self.diskstats else {
            return Vec::new();
        };
        let mut buf = vec![0u8; 64 * 1024];
        let n = f.read_at(&mut buf, 0).unwrap_or(0);
        let stats = block::parse_diskstats(&String::from_utf8_lossy(&buf[..n]));
        self.disks.observe(&stats, now_ns)
    }

    fn watch(&mut self, procs: &[(u32, u64)]) {
        self.watched = procs.iter().copied().collect();
    }

    fn cpu_ns(&mut self, tgid: u32) -> Option<u64> {
        let &start = self.watched.get(&tgid)?;
        match procfs::read_stat(tgid) {
            Some(st) if st.starttime == start => {
                Some(st.cpu_ticks.saturating_mul(1_000_000_000) / self.ticks_per_sec.max(1))
            }
            other => {
                self.watched.remove(&tgid);
                self.pending.push(ProbeEvent::Exit {
                    tgid,
                    comm: other.map(|s| s.comm).unwrap_or_default(),
                });
                None
            }
        }
    }

    fn events(&mut self, out: &mut Vec<ProbeEvent>) {
        // Check every watched pid, so exits are found even when no one asked
        // for its CPU time this sample.
        let tgids: Vec<u32> = self.watched.keys().copied().collect();
        for tgid in tgids {
            let _ = self.cpu_ns(tgid);
        }
        out.append(&mut self.pending);
    }

    fn health(&mut self) -> ProbeHealth {
        ProbeHealth {
            attached: vec!["procfs".into()],
            ..ProbeHealth::default()
        }
    }
}
