//! Exits of watched processes, from `sched:sched_process_exit`.
//!
//! A classic tracepoint: exits are rare and the record carries
//! `group_dead` (Linux ≥ 6.x), which tells the last thread of a process
//! from the others; killing qemu fires once per thread.

use aya_ebpf::{
    helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::tracepoint,
    programs::TracePointContext,
};
use vigil_sensor_common::{counter, Event, COMM_LEN, EVENT_EXIT, NO_FIELD};

use crate::{
    events::{count, emit},
    kernel::global_u32,
    qemu_progress::is_watched,
};

/// Offset of `pid` in the record (format file).
#[unsafe(no_mangle)]
static EXIT_PID_OFF: u32 = NO_FIELD;
/// Offset of `bool group_dead`, or `NO_FIELD` on kernels without it.
#[unsafe(no_mangle)]
static EXIT_GROUP_DEAD_OFF: u32 = NO_FIELD;

#[tracepoint(category = "sched", name = "sched_process_exit")]
pub fn vigil_process_exit(ctx: TracePointContext) -> u32 {
    // current is the exiting task.
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    let pid = pid_tgid as u32;
    if !is_watched(tgid) {
        return 0;
    }
    let gd_off = global_u32(&EXIT_GROUP_DEAD_OFF);
    let group_dead = if gd_off == NO_FIELD {
        // Older kernels: the leader's exit is the best available sign.
        pid == tgid
    } else {
        // SAFETY: a fault-safe copy at an offset the format file names.
        match unsafe { ctx.read_at::<u8>(gd_off as usize) } {
            Ok(v) => v != 0,
            Err(_) => {
                count(counter::READ_FAILED);
                pid == tgid
            }
        }
    };
    if !group_dead {
        return 0;
    }
    // EXIT_PID_OFF is kept for kernels where current may differ from the
    // record's task; on today's kernels they agree, so it is only checked.
    let _ = global_u32(&EXIT_PID_OFF);
    count(counter::WATCHED_EXITS);
    emit(&Event {
        kind: EVENT_EXIT,
        pid,
        tgid,
        group_dead: 1,
        // SAFETY: no preconditions.
        ts_ns: unsafe { bpf_ktime_get_ns() },
        comm: bpf_get_current_comm().unwrap_or([0; COMM_LEN]),
    });
    0
}
