//! Kernel struct offsets and reads of kernel memory.
//!
//! Rust eBPF has no CO-RE relocations, so userspace reads the offsets from
//! `/sys/kernel/btf/vmlinux` (and tracepoint `format` files) at start and
//! injects them with `EbpfLoader::override_global`. The defaults are
//! `NO_FIELD`, so an object loaded without them skips reads rather than
//! reading garbage at a wrong offset.

use aya_ebpf::helpers::bpf_probe_read_kernel;
use vigil_sensor_common::NO_FIELD;

/// `task_struct.pid`.
#[unsafe(no_mangle)]
static TASK_PID_OFF: u32 = NO_FIELD;
/// `task_struct.tgid`.
#[unsafe(no_mangle)]
static TASK_TGID_OFF: u32 = NO_FIELD;
/// `request.part` (`struct block_device *`, the partition the I/O targets).
#[unsafe(no_mangle)]
static RQ_PART_OFF: u32 = NO_FIELD;
/// `request.q` (`struct request_queue *`).
#[unsafe(no_mangle)]
static RQ_Q_OFF: u32 = NO_FIELD;
/// `request_queue.disk` (`struct gendisk *`).
#[unsafe(no_mangle)]
static Q_DISK_OFF: u32 = NO_FIELD;
/// `gendisk.part0` (`struct block_device *`, the whole disk).
#[unsafe(no_mangle)]
static DISK_PART0_OFF: u32 = NO_FIELD;
/// `block_device.bd_dev` (`dev_t`).
#[unsafe(no_mangle)]
static BDEV_DEV_OFF: u32 = NO_FIELD;

/// Reads a global without letting the compiler fold in its default: the
/// real value is patched into `.rodata` by the loader.
#[inline(always)]
pub fn global_u32(v: &'static u32) -> u32 {
    // SAFETY: `v` is a valid reference to a static; volatile only stops
    // constant folding.
    unsafe { core::ptr::read_volatile(v) }
}

#[inline(always)]
pub fn global_u64(v: &'static u64) -> u64 {
    // SAFETY: as in `global_u32`.
    unsafe { core::ptr::read_volatile(v) }
}

/// Reads a `T` at `base + off` in kernel memory. `None` when the offset is
/// unset or the read faults (the helper fails cleanly; it never oopses).
#[inline(always)]
fn read_at<T>(base: u64, off: u32) -> Option<T> {
    if base == 0 || off == NO_FIELD {
        return None;
    }
    let ptr = (base + off as u64) as *const T;
    // SAFETY: bpf_probe_read_kernel copies through the kernel's fault-safe
    // path; a bad address yields an error, not a crash.
    unsafe { bpf_probe_read_kernel(ptr).ok() }
}

/// `(task->pid, task->tgid)` of a `struct task_struct *` that came typed
/// from a tp_btf argument, read with plain loads.
///
/// The verifier knows the pointer's BTF type and the offsets (they sit in
/// the frozen `.rodata`, so it sees constants), checks each load against
/// the struct and JITs it as a fault-safe `PROBE_MEM` load: a few ns, where
/// `bpf_probe_read_kernel` is a helper call costing tens of ns on the
/// hottest hook in the kernel. Only for typed pointers: on an untyped one
/// the verifier would reject the load.
#[inline(always)]
pub fn task_ids(task: u64) -> Option<(u32, u32)> {
    let pid_off = global_u32(&TASK_PID_OFF);
    let tgid_off = global_u32(&TASK_TGID_OFF);
    if task == 0 || pid_off == NO_FIELD || tgid_off == NO_FIELD {
        return None;
    }
    // SAFETY: see above; a bad address faults into the JIT's exception
    // table and reads as 0, it cannot crash the kernel.
    unsafe {
        let pid = core::ptr::read_volatile((task + pid_off as u64) as *const u32);
        let tgid = core::ptr::read_volatile((task + tgid_off as u64) as *const u32);
        Some((pid, tgid))
    }
}

/// The `dev_t` a `struct request *` targets: its partition's, or when the
/// request has no partition (flushes, passthrough) the whole disk's.
#[inline(always)]
pub fn request_dev(rq: u64) -> Option<u32> {
    let bdev_off = global_u32(&BDEV_DEV_OFF);
    if let Some(part) = read_at::<u64>(rq, global_u32(&RQ_PART_OFF)) {
        if part != 0 {
            return read_at::<u32>(part, bdev_off);
        }
    }
    let q = read_at::<u64>(rq, global_u32(&RQ_Q_OFF))?;
    let disk = read_at::<u64>(q, global_u32(&Q_DISK_OFF))?;
    let part0 = read_at::<u64>(disk, global_u32(&DISK_PART0_OFF))?;
    read_at::<u32>(part0, bdev_off)
}
