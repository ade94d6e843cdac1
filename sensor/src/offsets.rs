//! The kernel facts the eBPF programs need, gathered at start: struct member
//! offsets from BTF and tracepoint record offsets from tracefs `format`
//! files. A fact that cannot be found is `NO_FIELD`, and the loader then
//! leaves the programs that need it unattached and says why.

use std::path::Path;

use vigil_sensor_common::NO_FIELD;

use crate::{btf::Btf, tracefs};

/// Offsets injected into the eBPF object as globals.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct KernelOffsets {
    pub task_pid: u32,
    pub task_tgid: u32,
    pub rq_part: u32,
    pub rq_q: u32,
    pub q_disk: u32,
    pub disk_part0: u32,
    pub bdev_dev: u32,
    pub exit_pid: u32,
    pub exit_group_dead: u32,
    pub hang_pid: u32,
    pub hang_comm: u32,
}

impl Default for KernelOffsets {
    fn default() -> Self {
        KernelOffsets {
            task_pid: NO_FIELD,
            task_tgid: NO_FIELD,
            rq_part: NO_FIELD,
            rq_q: NO_FIELD,
            q_disk: NO_FIELD,
            disk_part0: NO_FIELD,
            bdev_dev: NO_FIELD,
            exit_pid: NO_FIELD,
            exit_group_dead: NO_FIELD,
            hang_pid: NO_FIELD,
            hang_comm: NO_FIELD,
        }
    }
}

impl KernelOffsets {
    /// Looks everything up; returns the offsets and a note per missing fact.
    pub fn discover(
        btf: Option<&Btf>,
        tracefs_root: Option<&Path>,
    ) -> (KernelOffsets, Vec<String>) {
        let mut o = KernelOffsets::default();
        let mut notes = Vec::new();
        match btf {
            Some(btf) => {
                let mut member = |slot: &mut u32, s: &str, m: &str| match btf.member_offset(s, m) {
                    Ok(v) => *slot = v,
                    Err(e) => notes.push(format!("BTF: {e}")),
                };
                member(&mut o.task_pid, "task_struct", "pid");
                member(&mut o.task_tgid, "task_struct", "tgid");
                member(&mut o.rq_part, "request", "part");
                member(&mut o.rq_q, "request", "q");
                member(&mut o.q_disk, "request_queue", "disk");
                member(&mut o.disk_part0, "gendisk", "part0");
                member(&mut o.bdev_dev, "block_device", "bd_dev");
            }
            None => notes.push("no kernel BTF (/sys/kernel/btf/vmlinux)".into()),
        }
        match tracefs_root {
            Some(root) => {
                match tracefs::read_format(root, "sched", "sched_process_exit") {
                    Ok(f) => {
                        match f.offset("pid") {
                            Ok(v) => o.exit_pid = v,
                            Err(e) => notes.push(e.to_string()),
                        }
                        // Absent before 6.x: the program then uses pid == tgid.
                        if let Some(gd) = f.field("group_dead") {
                            o.exit_group_dead = gd.offset;
                        } else {
                            notes.push(
                                "sched_process_exit has no group_dead; using the leader's exit"
                                    .into(),
                            );
                        }
                    }
                    Err(e) => notes.push(e.to_string()),
                }
                match tracefs::read_format(root, "sched", "sched_process_hang") {
                    Ok(f) => {
                        match f.offset("pid") {
                            Ok(v) => o.hang_pid = v,
                            Err(e) => notes.push(e.to_string()),
                        }
                        if let Some(c) = f.field("comm") {
                            o.hang_comm = c.offset;
                        }
                    }
                    Err(e) => notes.push(e.to_string()),
                }
            }
            None => notes.push("tracefs unavailable: no tracepoint formats".into()),
        }
        (o, notes)
    }

    /// The block programs can find a request's device.
    pub fn block_ready(&self) -> bool {
        self.bdev_dev != NO_FIELD
            && (self.rq_part != NO_FIELD
                || (self.rq_q != NO_FIELD
                    && self.q_disk != NO_FIELD
                    && self.disk_part0 != NO_FIELD))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_known_means_nothing_ready() {
        let (o, notes) = KernelOffsets::discover(None, None);
        assert_eq!(o, KernelOffsets::default());
        assert!(!o.block_ready());
        assert_eq!(notes.len(), 2);
    }

    #[test]
    fn this_kernel_if_it_has_btf() {
        let Ok(btf) = Btf::from_sys_fs() else {
            return;
        };
        let (o, _) = KernelOffsets::discover(Some(&btf), None);
        assert_ne!(o.task_pid, NO_FIELD);
        assert_ne!(o.task_tgid, NO_FIELD);
        assert!(o.block_ready());
    }
}
