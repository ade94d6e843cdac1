//! CPU time received by watched processes (qemu, nova-compute), so "this
//! VM's vCPUs still run" is a measured fact, not a guess from liveness.
//!
//! Userspace puts the tgids it watches into `WATCH`; on every switch-out of
//! one of their threads the time since that thread switched in is added to
//! the process's per-CPU counter. Per-CPU, so no atomics on the hot path.

use aya_ebpf::{
    macros::map,
    maps::{PerCpuArray, PerCpuHashMap},
};

/// Watched tgids → CPU ns received on this CPU. Userspace inserts and
/// removes keys; sized by `--max-watched`.
#[map(name = "WATCH")]
static WATCH: PerCpuHashMap<u32, u64> = PerCpuHashMap::with_max_entries(4096, 0);

/// When the task now running on this CPU switched in (ktime ns).
#[map(name = "ONCPU")]
static ONCPU: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// True when `tgid` is watched (used by `exits` too).
#[inline(always)]
pub fn is_watched(tgid: u32) -> bool {
    WATCH.get_ptr(tgid).is_some()
}

#[inline(always)]
pub fn on_switch_out(pid_tgid: u64, now: u64) {
    let Some(total) = WATCH.get_ptr_mut((pid_tgid >> 32) as u32) else {
        return;
    };
    let Some(since) = ONCPU.get_ptr(0) else {
        return;
    };
    // SAFETY: both pointers come from successful lookups of per-CPU slots
    // that only this CPU writes, with preemption off.
    unsafe {
        let since = *since;
        // 0 means "no switch-in seen yet on this CPU since attach".
        if since != 0 && now > since {
            *total += now - since;
        }
    }
}

#[inline(always)]
pub fn on_switch_in(now: u64) {
    if let Some(slot) = ONCPU.get_ptr_mut(0) {
        // SAFETY: as in `on_switch_out`.
        unsafe { *slot = now };
    }
}
