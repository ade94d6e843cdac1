//! The single program on `sched_switch`, and an empty one for the benchmark.
//!
//! tp_btf rather than the classic tracepoint: classic tracepoint programs
//! share the kernel's global recursion guard and silently lose events when an
//! interrupt's program runs inside them (measured: notes/ebpf.md, gotcha 1),
//! and tp_btf passes the raw arguments so nothing has to be copied out of a
//! trace record. Arguments (Linux ≥ 5.18): `(bool preempt, struct
//! task_struct *prev, struct task_struct *next, unsigned int prev_state)`,
//! and `current == prev` here.
//!
//! This runs on every context switch, so the common case (no task going
//! into D state, no watched task, no tracked task switching in) touches
//! only the arguments, two typed loads per task and three inlined array
//! loads; helpers and hash maps are for the rare cases.

use aya_ebpf::{macros::btf_tracepoint, programs::BtfTracePointContext};

use crate::{events::count, hung_task, kernel::task_ids, qemu_progress};
use vigil_sensor_common::counter;

#[btf_tracepoint(function = "sched_switch")]
pub fn vigil_sched_switch(ctx: BtfTracePointContext) -> u32 {
    let prev: u64 = ctx.arg(1);
    let next: u64 = ctx.arg(2);
    let prev_state: u64 = ctx.arg(3);
    let (Some(prev_ids), Some(next_ids)) = (task_ids(prev), task_ids(next)) else {
        count(counter::READ_FAILED);
        return 0;
    };
    // Thread id 0 is this CPU's idle task: never blocked, never watched.
    if prev_ids.0 != 0 {
        hung_task::on_switch_out(prev_state as u32);
    }
    if next_ids.0 != 0 {
        hung_task::on_switch_in(next_ids.0);
    }
    qemu_progress::on_switch(prev_ids, next_ids);
    0
}

/// Costs only the hook's own dispatch: `bench-switch` attaches it alone to
/// measure the floor any program on `sched_switch` pays on this machine.
#[btf_tracepoint(function = "sched_switch")]
pub fn vigil_bench_empty(_ctx: BtfTracePointContext) -> u32 {
    0
}
