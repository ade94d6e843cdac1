//! `#[repr(C)]` types and names shared by Vigil's eBPF programs
//! (`vigil-sensor-ebpf`) and the userspace sensor (`vigil-sensor`).
//!
//! - Map values: [`DState`], [`InFlight`]; ring buffer records: [`Event`].
//! - [`counter`]: indices of the `COUNTERS` per-CPU array (full maps, lost
//!   events, hung-task reports), so "never silently wrong" has numbers.
//! - [`names`]: map, program and global names, so both sides agree on them
//!   at compile time rather than by matching strings by hand.
//!
//! With the `user` feature the types implement `aya::Pod` for userspace; the
//! kernel side never pulls in aya.
#![no_std]

/// Length of a task's `comm` in the kernel (`TASK_COMM_LEN`).
pub const COMM_LEN: usize = 16;

/// One task currently in uninterruptible sleep (value of the `DSTATE` map,
/// keyed by the task's pid, i.e. the kernel's thread id).
///
/// Written by `sched_switch` when the task switches out in
/// `TASK_UNINTERRUPTIBLE`, removed when it next switches in. Userspace may
/// also seed entries for tasks that were already in D state at attach time.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DState {
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) when the sleep began.
    pub start_ns: u64,
    /// cgroup v2 id (the group directory's inode number) of the task.
    pub cgroup_id: u64,
    /// Thread group id (the process id as userspace knows it).
    pub tgid: u32,
    /// [`DSTATE_COUNTED`] when the program made the entry (and counted it in
    /// `DHINT`); 0 for entries userspace seeded.
    pub flags: u32,
    /// The task's `comm`, NUL-padded.
    pub comm: [u8; COMM_LEN],
}

/// `DState::flags`: the program made this entry and added one to its
/// `DHINT` slot, so removing it takes that one away again.
pub const DSTATE_COUNTED: u32 = 1;

/// Slots per half of the `DHINT` array. A power of two: the slot of a
/// thread id is `tid & (DHINT_SLOTS - 1)`.
pub const DHINT_SLOTS: u32 = 1024;

/// Words of the `WATCH_BITS` bitmap (64 bits each). Bit `tgid % (64 *
/// WATCH_WORDS)` is set for each watched tgid; a set bit may be a collision,
/// so `WATCH` is still asked, but a clear bit means "not watched" for sure.
pub const WATCH_WORDS: u32 = 512;

/// When the task now running on a CPU switched in, if it is watched (value
/// of the `ONCPU` per-CPU array).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OnCpu {
    /// Thread id that switched in; 0 when the slot is empty.
    pub pid: u32,
    /// Padding so the layout has no implicit holes.
    pub _pad: u32,
    /// `bpf_ktime_get_ns()` at that switch-in.
    pub ts_ns: u64,
}

/// One block request in flight (value of the `INFLIGHT` map, keyed by the
/// kernel address of its `struct request`, which is unique while in flight).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InFlight {
    /// `bpf_ktime_get_ns()` when the request was issued to the driver.
    pub start_ns: u64,
    /// Kernel `dev_t` of the (partition) device: `major << 20 | minor`.
    pub dev: u32,
    /// Padding so the layout has no implicit holes.
    pub _pad: u32,
}

/// `Event::kind` of a watched process's exit (the last thread, `group_dead`).
pub const EVENT_EXIT: u32 = 1;
/// `Event::kind` of a kernel hung-task report (`sched:sched_process_hang`).
pub const EVENT_HANG: u32 = 2;

/// A record in the `EVENTS` ring buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Event {
    /// [`EVENT_EXIT`] or [`EVENT_HANG`].
    pub kind: u32,
    /// Thread id the event is about.
    pub pid: u32,
    /// Thread group id (0 for hang reports: the tracepoint does not carry it).
    pub tgid: u32,
    /// For exits: 1 when the whole thread group is gone.
    pub group_dead: u32,
    /// `bpf_ktime_get_ns()` when the event fired.
    pub ts_ns: u64,
    /// The task's `comm`, NUL-padded.
    pub comm: [u8; COMM_LEN],
}

/// Indices into the `COUNTERS` per-CPU array; userspace sums over CPUs.
pub mod counter {
    /// `DSTATE` was full: a task went into D state and could not be tracked.
    pub const DSTATE_FULL: u32 = 0;
    /// An `INFLIGHT` insert failed (the LRU map normally evicts instead).
    pub const INFLIGHT_FULL: u32 = 1;
    /// The `EVENTS` ring buffer was full: an event was lost.
    pub const EVENTS_LOST: u32 = 2;
    /// `sched_process_hang` fired (counted even if its event was lost).
    pub const HUNG_TASKS: u32 = 3;
    /// A watched process exited (counted even if its event was lost).
    pub const WATCHED_EXITS: u32 = 4;
    /// A kernel read (`bpf_probe_read_kernel`) failed; the datum was skipped.
    pub const READ_FAILED: u32 = 5;
    /// Number of counters (the array's size).
    pub const COUNT: u32 = 8;
}

/// Names both sides use for maps, programs and globals.
pub mod names {
    /// `HashMap<u32 tid, DState>`: tasks now in uninterruptible sleep.
    pub const MAP_DSTATE: &str = "DSTATE";
    /// `LruHashMap<u64 request address, InFlight>`: block requests in flight.
    pub const MAP_INFLIGHT: &str = "INFLIGHT";
    /// `PerCpuHashMap<u32 tgid, u64 ns>`: watched processes and the CPU time
    /// their threads received. Userspace inserts and removes keys.
    pub const MAP_WATCH: &str = "WATCH";
    /// `PerCpuArray<OnCpu>` of size 1: when the current (watched) task
    /// switched in.
    pub const MAP_ONCPU: &str = "ONCPU";
    /// `Array<u64>` of [`super::WATCH_WORDS`]: a bitmap over tgids that lets
    /// `sched_switch` skip the `WATCH` hash lookup for unwatched tasks.
    /// Written by userspace only.
    pub const MAP_WATCH_BITS: &str = "WATCH_BITS";
    /// `Array<u32>` of 2 × [`super::DHINT_SLOTS`]: how many `DSTATE` entries
    /// may exist per slot `tid & (DHINT_SLOTS - 1)`, so `sched_switch` skips
    /// the `DSTATE` lookup on switch-in when a slot is 0. The first half is
    /// counted by the program (atomically), the second written by userspace
    /// for the entries it seeded.
    pub const MAP_DHINT: &str = "DHINT";
    /// `PerCpuArray<u64>` of [`super::counter::COUNT`] counters.
    pub const MAP_COUNTERS: &str = "COUNTERS";
    /// `RingBuf` of [`super::Event`].
    pub const MAP_EVENTS: &str = "EVENTS";

    /// tp_btf on `sched_switch`: D-state tracking and CPU runtime.
    pub const PROG_SCHED_SWITCH: &str = "vigil_sched_switch";
    /// tp_btf on `sched_switch` that does nothing: `bench-switch` attaches
    /// it alone to measure what any program on that hook costs. The sensor
    /// never loads it.
    pub const PROG_BENCH_EMPTY: &str = "vigil_bench_empty";
    /// tp_btf on `block_rq_issue`.
    pub const PROG_RQ_ISSUE: &str = "vigil_rq_issue";
    /// tp_btf on `block_rq_complete`.
    pub const PROG_RQ_COMPLETE: &str = "vigil_rq_complete";
    /// tp_btf on `block_rq_requeue` (a requeued request is no longer issued).
    pub const PROG_RQ_REQUEUE: &str = "vigil_rq_requeue";
    /// Classic tracepoint `sched:sched_process_exit`.
    pub const PROG_PROCESS_EXIT: &str = "vigil_process_exit";
    /// Classic tracepoint `sched:sched_process_hang`.
    pub const PROG_PROCESS_HANG: &str = "vigil_process_hang";

    /// Offset of `task_struct.pid` (from the kernel's BTF).
    pub const G_TASK_PID_OFF: &str = "TASK_PID_OFF";
    /// Offset of `task_struct.tgid` (from the kernel's BTF).
    pub const G_TASK_TGID_OFF: &str = "TASK_TGID_OFF";
    /// Offset of `request.part` (a `struct block_device *`).
    pub const G_RQ_PART_OFF: &str = "RQ_PART_OFF";
    /// Offset of `request.q` (a `struct request_queue *`).
    pub const G_RQ_Q_OFF: &str = "RQ_Q_OFF";
    /// Offset of `request_queue.disk` (a `struct gendisk *`).
    pub const G_Q_DISK_OFF: &str = "Q_DISK_OFF";
    /// Offset of `gendisk.part0` (a `struct block_device *`).
    pub const G_DISK_PART0_OFF: &str = "DISK_PART0_OFF";
    /// Offset of `block_device.bd_dev` (a `dev_t`).
    pub const G_BDEV_DEV_OFF: &str = "BDEV_DEV_OFF";
    /// Offset of `pid` in the `sched_process_exit` record (format file).
    pub const G_EXIT_PID_OFF: &str = "EXIT_PID_OFF";
    /// Offset of `group_dead` in that record, or `u32::MAX` when the kernel
    /// has no such field (then a thread-group leader's exit counts).
    pub const G_EXIT_GROUP_DEAD_OFF: &str = "EXIT_GROUP_DEAD_OFF";
    /// Offset of `pid` in the `sched_process_hang` record.
    pub const G_HANG_PID_OFF: &str = "HANG_PID_OFF";
    /// Offset of the `__data_loc` word of `comm` in that record.
    pub const G_HANG_COMM_OFF: &str = "HANG_COMM_OFF";
    /// cgroup v2 id to watch (its directory's inode number).
    pub const G_SCOPE_CGROUP_ID: &str = "SCOPE_CGROUP_ID";
    /// Depth of that group below the cgroup2 root (1 for `/a`);
    /// [`super::NO_FIELD`] watches every task.
    pub const G_SCOPE_CGROUP_LEVEL: &str = "SCOPE_CGROUP_LEVEL";
}

/// Value of a `u32` global that is unset or names a field this kernel lacks.
/// The programs' defaults are this value, so an object loaded without its
/// offsets skips the reads instead of reading at a wrong offset.
pub const NO_FIELD: u32 = u32::MAX;

#[cfg(feature = "user")]
mod pod {
    // SAFETY: each type is #[repr(C)], Copy, made only of integers and byte
    // arrays with explicit padding fields, so every bit pattern is valid and
    // there are no implicit holes.
    unsafe impl aya::Pod for super::DState {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::InFlight {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Event {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::OnCpu {}
}
