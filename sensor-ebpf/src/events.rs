//! The ring buffer of rare events (exits, hung-task reports) and the
//! counters that make every loss visible to userspace.

use aya_ebpf::{
    macros::map,
    maps::{PerCpuArray, RingBuf},
};
use vigil_sensor_common::{counter, Event};

/// Rare events for userspace. Sized by the sensor's `--events-bytes`.
#[map(name = "EVENTS")]
static EVENTS: RingBuf = RingBuf::with_byte_size(256 * 1024, 0);

/// See `vigil_sensor_common::counter` for the meaning of each slot.
#[map(name = "COUNTERS")]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

/// Adds one to a counter. Per-CPU, so no atomics are needed.
#[inline(always)]
pub fn count(index: u32) {
    if let Some(slot) = COUNTERS.get_ptr_mut(index) {
        // SAFETY: the pointer comes from a successful lookup in a per-CPU
        // array; only this CPU writes it and preemption is off in a program.
        unsafe { *slot += 1 };
    }
}

/// Sends an event, counting it as lost when the ring buffer is full.
#[inline(always)]
pub fn emit(event: &Event) {
    if EVENTS.output::<Event>(event, 0).is_err() {
        count(counter::EVENTS_LOST);
    }
}
