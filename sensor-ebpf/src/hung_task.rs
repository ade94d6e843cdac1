//! Hung tasks, two ways:
//!
//! - Tasks in uninterruptible sleep (D state), from `sched_switch`: an entry
//!   in `DSTATE` when a task switches out in `TASK_UNINTERRUPTIBLE`, removed
//!   when it switches back in. Far sooner than the kernel's 120 s detector,
//!   and it also sees `TASK_KILLABLE` waits (NFS, FUSE), which khungtaskd skips.
//! - The kernel's own reports, from `sched:sched_process_hang` (a classic
//!   tracepoint: it has no BTF-typed args worth having, and it is rare).

use core::intrinsics::{atomic_xadd, AtomicOrdering};

use aya_ebpf::{
    helpers::{
        bpf_get_current_ancestor_cgroup_id, bpf_get_current_cgroup_id, bpf_get_current_comm,
        bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_kernel_str_bytes,
    },
    macros::{map, tracepoint},
    maps::{Array, HashMap},
    programs::TracePointContext,
    EbpfContext,
};
use vigil_sensor_common::{
    counter, DState, Event, COMM_LEN, DHINT_SLOTS, DSTATE_COUNTED, EVENT_HANG, NO_FIELD,
};

use crate::{
    events::{count, emit},
    kernel::{global_u32, global_u64},
};

/// `TASK_UNINTERRUPTIBLE` in the raw `__state` that tp_btf passes.
const TASK_UNINTERRUPTIBLE: u32 = 0x2;
/// `TASK_NOLOAD`: with UNINTERRUPTIBLE it makes `TASK_IDLE`, which kernel
/// threads use to sleep without counting as load; not a hang.
const TASK_NOLOAD: u32 = 0x400;

/// Tasks now in D state, keyed by thread id. Sized by `--max-blocked-tasks`.
#[map(name = "DSTATE")]
static DSTATE: HashMap<u32, DState> = HashMap::with_max_entries(32768, 0);

/// Upper bounds of `DSTATE` entries per thread-id slot (see
/// `names::MAP_DHINT`): almost every switch-in finds 0 and skips the hash
/// lookup, which was most of this program's cost.
#[map(name = "DHINT")]
static DHINT: Array<u32> = Array::with_max_entries(2 * DHINT_SLOTS, 0);

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

/// Adds `delta` (wrapping, so `u32::MAX` subtracts one) to a `DHINT` slot
/// of the programs' half. Atomic: the entry is made on one CPU and removed
/// on another. (The bpf target has no `AtomicU32`; the intrinsic becomes
/// the BPF atomic add instruction.)
#[inline(always)]
fn dhint_add(index: u32, delta: u32) {
    if let Some(ptr) = DHINT.get_ptr_mut(index) {
        // SAFETY: a valid map value from a successful lookup; programs only
        // touch this half of the array atomically.
        unsafe { atomic_xadd::<u32, u32, { AtomicOrdering::Relaxed }>(ptr, delta) };
    }
}

/// `prev` (the current task) switches out in `state` (raw `__state`).
#[inline(always)]
pub fn on_switch_out(state: u32) {
    if state & TASK_UNINTERRUPTIBLE == 0 || state & TASK_NOLOAD != 0 {
        return;
    }
    if !current_in_scope() {
        return;
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    let pid = pid_tgid as u32;
    let entry = DState {
        // SAFETY: no preconditions.
        start_ns: unsafe { bpf_ktime_get_ns() },
        // SAFETY: no preconditions.
        cgroup_id: unsafe { bpf_get_current_cgroup_id() },
        tgid: (pid_tgid >> 32) as u32,
        flags: DSTATE_COUNTED,
        comm: bpf_get_current_comm().unwrap_or([0; COMM_LEN]),
    };
    if DSTATE.insert(pid, entry, 0).is_err() {
        count(counter::DSTATE_FULL);
        return;
    }
    // Counted even when the insert replaced an entry (a missed switch-in):
    // a count too high only costs a lookup, one too low would leave an
    // entry that no switch-in removes.
    dhint_add(pid & (DHINT_SLOTS - 1), 1);
}

/// The task with thread id `pid` switches in: it is no longer in D state.
#[inline(always)]
pub fn on_switch_in(pid: u32) {
    let slot = pid & (DHINT_SLOTS - 1);
    let counted = DHINT.get(slot).copied().unwrap_or(1);
    let seeded = DHINT.get(slot + DHINT_SLOTS).copied().unwrap_or(1);
    if counted == 0 && seeded == 0 {
        return;
    }
    let Some(entry) = DSTATE.get_ptr(pid) else {
        return;
    };
    // SAFETY: a pointer from a successful lookup, read at once.
    let flags = unsafe { (*entry).flags };
    if DSTATE.remove(pid).is_ok() && flags & DSTATE_COUNTED != 0 {
        dhint_add(slot, u32::MAX);
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
