//! Hung tasks, two ways:
//!
//! - Tasks in uninterruptible sleep (D state), from `sched_switch`: an entry
//!   in `DSTATE` when a task switches out in `TASK_UNINTERRUPTIBLE`, removed
//!   when it switches back in. Far sooner than the kernel's 120 s detector,
//!   and it also sees `TASK_KILLABLE` waits (NFS, FUSE), which khungtaskd skips.
//! - The kernel's own reports, from `sched:sched_process_hang` (a classic
//!   tracepoint: it has no BTF-typed args worth having, and it is rare).

use aya_ebpf::{
    helpers::{
        bpf_get_current_ancestor_cgroup_id, bpf_get_current_cgroup_id, bpf_get_current_comm,
        bpf_ktime_get_ns, bpf_probe_read_kernel_str_bytes,
    },
    macros::{map, tracepoint},
    maps::HashMap,
    programs::TracePointContext,
    EbpfContext,
};
use vigil_sensor_common::{counter, DState, Event, COMM_LEN, EVENT_HANG, NO_FIELD};

use crate::{
    events::{count, emit},
    kernel::{global_u32, global_u64, task_pid},
};

/// `TASK_UNINTERRUPTIBLE` in the raw `__state` that tp_btf passes.
const TASK_UNINTERRUPTIBLE: u32 = 0x2;
/// `TASK_NOLOAD`: with UNINTERRUPTIBLE it makes `TASK_IDLE`, which kernel
/// threads use to sleep without counting as load; not a hang.
const TASK_NOLOAD: u32 = 0x400;

/// Tasks now in D state, keyed by thread id. Sized by `--max-blocked-tasks`.
#[map(name = "DSTATE")]
static DSTATE: HashMap<u32, DState> = HashMap::with_max_entries(32768, 0);

/// cgroup v2 id of the scope (`--cgroup`); see `SCOPE_CGROUP_LEVEL`.
#[unsafe(no_mangle)]
static SCOPE_CGROUP_ID: u64 = u64::MAX;
/// Depth of the scope group; `NO_FIELD` means no scope (every task).
#[unsafe(no_mangle)]
static SCOPE_CGROUP_LEVEL: u32 = NO_FIELD;

/// Offset of `pid` in the `sched_process_hang` record (format file).
#[unsafe(no_mangle)]
static HANG_PID_OFF: u32 = NO_FIELD;
/// Offset of the `__data_loc char[] comm` word in that record.
#[unsafe(no_mangle)]
static HANG_COMM_OFF: u32 = NO_FIELD;

/// True when the current task is inside the configured cgroup (or there is
/// no scope). Uses the ancestor id so tasks in child groups count too.
#[inline(always)]
fn current_in_scope() -> bool {
    let level = global_u32(&SCOPE_CGROUP_LEVEL);
    if level == NO_FIELD {
        return true;
    }
    // SAFETY: the helper only reads the current task's cgroup.
    let id = unsafe { bpf_get_current_ancestor_cgroup_id(level as i32) };
    id == global_u64(&SCOPE_CGROUP_ID)
}

#[inline(always)]
pub fn on_switch_out(pid_tgid: u64, state: u32, now: u64) {
    if state & TASK_UNINTERRUPTIBLE == 0 || state & TASK_NOLOAD != 0 {
        return;
    }
    if !current_in_scope() {
        return;
    }
    let entry = DState {
        start_ns: now,
        // SAFETY: no preconditions.
        cgroup_id: unsafe { bpf_get_current_cgroup_id() },
        tgid: (pid_tgid >> 32) as u32,
        _pad: 0,
        comm: bpf_get_current_comm().unwrap_or([0; COMM_LEN]),
    };
    if DSTATE.insert(pid_tgid as u32, entry, 0).is_err() {
        count(counter::DSTATE_FULL);
    }
}

#[inline(always)]
pub fn on_switch_in(next: u64) {
    let Some(pid) = task_pid(next) else {
        count(counter::READ_FAILED);
        return;
    };
    // A lookup first: most switches are of tasks that were not in D, and a
    // lookup is cheaper than a failing delete (notes/ebpf.md, gotcha 12).
    if pid != 0 && DSTATE.get_ptr(pid).is_some() {
        let _ = DSTATE.remove(pid);
    }
}

#[tracepoint(category = "sched", name = "sched_process_hang")]
pub fn vigil_process_hang(ctx: TracePointContext) -> u32 {
    count(counter::HUNG_TASKS);
    let pid_off = global_u32(&HANG_PID_OFF);
    if pid_off == NO_FIELD {
        return 0;
    }
    // SAFETY: read_at copies with bpf_probe_read at an offset inside the
    // trace record, which the format file says holds a pid_t.
    let Ok(pid) = (unsafe { ctx.read_at::<i32>(pid_off as usize) }) else {
        count(counter::READ_FAILED);
        return 0;
    };
    let mut event = Event {
        kind: EVENT_HANG,
        pid: pid as u32,
        tgid: 0,
        group_dead: 0,
        // SAFETY: no preconditions.
        ts_ns: unsafe { bpf_ktime_get_ns() },
        comm: [0; COMM_LEN],
    };
    let comm_off = global_u32(&HANG_COMM_OFF);
    if comm_off != NO_FIELD {
        // SAFETY: as above; the word is a __data_loc: (len << 16) | offset
        // of the string from the start of the record.
        if let Ok(loc) = unsafe { ctx.read_at::<u32>(comm_off as usize) } {
            let src = (ctx.as_ptr() as u64 + (loc & 0xffff) as u64) as *const u8;
            // SAFETY: a fault-safe copy bounded by the destination's size.
            let _ = unsafe { bpf_probe_read_kernel_str_bytes(src, &mut event.comm) };
        }
    }
    emit(&event);
    0
}
