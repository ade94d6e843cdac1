//! The single program on `sched_switch`.
//!
//! tp_btf rather than the classic tracepoint: classic tracepoint programs
//! share the kernel's global recursion guard and silently lose events when an
//! interrupt's program runs inside them (measured: notes/ebpf.md, gotcha 1),
//! and tp_btf passes the raw arguments so nothing has to be copied out of a
//! trace record. Arguments (Linux ≥ 5.18): `(bool preempt, struct
//! task_struct *prev, struct task_struct *next, unsigned int prev_state)`,
//! and `current == prev` here.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::btf_tracepoint,
    programs::BtfTracePointContext,
};

use crate::{hung_task, qemu_progress};

#[btf_tracepoint(function = "sched_switch")]
pub fn vigil_sched_switch(ctx: BtfTracePointContext) -> u32 {
    let next: u64 = ctx.arg(2);
    let prev_state: u64 = ctx.arg(3);
    // SAFETY: bpf_ktime_get_ns has no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    let pid_tgid = bpf_get_current_pid_tgid();
    // Thread id 0 is this CPU's idle task: never blocked, never watched.
    if pid_tgid as u32 != 0 {
        hung_task::on_switch_out(pid_tgid, prev_state as u32, now);
        qemu_progress::on_switch_out(pid_tgid, now);
    }
    hung_task::on_switch_in(next);
    qemu_progress::on_switch_in(now);
    0
}
