//! CPU time received by watched processes (qemu, nova-compute), so "this
//! VM's vCPUs still run" is a measured fact, not a guess from liveness.
//!
//! Userspace puts the tgids it watches into `WATCH` and their bits into
//! `WATCH_BITS`. When a watched thread switches in, the time goes into this
//! CPU's `ONCPU` slot; when it switches out, the time since is added to its
//! process's per-CPU counter. Unwatched tasks, nearly every switch on a
//! host, cost one inlined array load and a bit test per side: no hash
//! lookup, no clock read.

use aya_ebpf::{
    helpers::bpf_ktime_get_ns,
    macros::map,
    maps::{Array, PerCpuArray, PerCpuHashMap},
};
use vigil_sensor_common::{OnCpu, WATCH_WORDS};

/// Watched tgids → CPU ns received on this CPU. Userspace inserts and
/// removes keys; sized by `--max-watched`.
#[map(name = "WATCH")]
static WATCH: PerCpuHashMap<u32, u64> = PerCpuHashMap::with_max_entries(4096, 0);

/// Bitmap over tgids: a clear bit means "not in `WATCH`".
#[map(name = "WATCH_BITS")]
static WATCH_BITS: Array<u64> = Array::with_max_entries(WATCH_WORDS, 0);

/// The watched task now running on this CPU and when it switched in.
#[map(name = "ONCPU")]
static ONCPU: PerCpuArray<OnCpu> = PerCpuArray::with_max_entries(1, 0);

/// False when `tgid` is surely not watched; true when it may be.
#[inline(always)]
fn maybe_watched(tgid: u32) -> bool {
    let bit = tgid % (64 * WATCH_WORDS);
    match WATCH_BITS.get(bit / 64) {
        Some(word) => *word & (1u64 << (bit % 64)) != 0,
        None => false,
    }
}

/// True when `tgid` is watched (used by `exits` too).
#[inline(always)]
pub fn is_watched(tgid: u32) -> bool {
    maybe_watched(tgid) && WATCH.get_ptr(tgid).is_some()
}

/// One switch on this CPU: `prev` (thread id, tgid) out, `next` in.
///
/// The `ONCPU` slot holds the running task's switch-in time only while that
/// task is watched and is emptied at any other switch, so a slice is only
/// ever counted from its own start: a thread that became watched mid-slice
/// is not counted for that slice, never counted from a stale time.
#[inline(always)]
pub fn on_switch(prev: (u32, u32), next: (u32, u32)) {
    let Some(slot) = ONCPU.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: a pointer from a successful lookup of this CPU's slot, which
    // only this CPU touches, and a program runs with migration off.
    let slot = unsafe { &mut *slot };
    let prev_watched = slot.pid != 0 && slot.pid == prev.0 && maybe_watched(prev.1);
    let next_watched = maybe_watched(next.1);
    if !prev_watched && !next_watched {
        if slot.pid != 0 {
            slot.pid = 0;
        }
        return;
    }
    // SAFETY: no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    if prev_watched {
        if let Some(total) = WATCH.get_ptr_mut(prev.1) {
            if now > slot.ts_ns {
                // SAFETY: this CPU's value of a successful lookup.
                unsafe { *total += now - slot.ts_ns };
            }
        }
    }
    if next_watched && next.0 != 0 {
        slot.pid = next.0;
        slot.ts_ns = now;
    } else {
        slot.pid = 0;
    }
}
