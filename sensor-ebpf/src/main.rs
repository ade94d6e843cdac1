//! Vigil's kernel-side probes. One file per signal:
//!
//! - `sched_switch`: the one program on `sched_switch` (tp_btf), which feeds
//!   `hung_task` (tasks in D state) and `qemu_progress` (CPU time of watched
//!   processes), so the hottest hook in the kernel is paid for once.
//! - `io_stall`: block requests in flight (tp_btf `block_rq_*`).
//! - `exits`: exits of watched processes (`sched:sched_process_exit`).
//! - `hung_task`: also the kernel's own reports (`sched:sched_process_hang`).
//! - `events`: the ring buffer and counters every program reports through.
//! - `kernel`: struct offsets injected by userspace and safe-ish reads.
//!
//! Every map is bounded (userspace sizes them from its flags) and every
//! failure to record is counted, never silent. No code path can panic.
#![no_std]
#![no_main]
// For atomic_xadd: the bpf target has no core::sync::atomic integer types.
#![feature(core_intrinsics)]
#![allow(internal_features)]

mod events;
mod exits;
mod hung_task;
mod io_stall;
mod kernel;
mod qemu_progress;
mod sched_switch;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any reachable loop, so a reachable panic would not
    // even load; this handler only satisfies no_std.
    loop {}
}

/// The kernel checks the license string of programs that call GPL-only
/// helpers (e.g. `bpf_probe_read_kernel`, `bpf_get_current_ancestor_cgroup_id`).
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
