//! Block requests in flight, for "the oldest request on this device has been
//! waiting N s".
//!
//! tp_btf on `block_rq_issue/complete/requeue(struct request *rq, …)`:
//! classic tracepoints lost completions to recursion and left stale entries
//! (notes/ebpf.md, gotcha 1), and the request's address is a better key than
//! (dev, sector), which flushes and merges reuse (gotcha 2). The map is LRU,
//! so an entry whose completion was still missed is evicted eventually, and
//! userspace cross-checks with `/sys/block/*/inflight`.

use aya_ebpf::{
    helpers::bpf_ktime_get_ns, macros::btf_tracepoint, macros::map, maps::LruHashMap,
    programs::BtfTracePointContext,
};
use vigil_sensor_common::{counter, InFlight};

use crate::{events::count, kernel::request_dev};

/// Request address → when it was issued and to which device. Sized by
/// `--max-inflight`.
#[map(name = "INFLIGHT")]
static INFLIGHT: LruHashMap<u64, InFlight> = LruHashMap::with_max_entries(65536, 0);

#[btf_tracepoint(function = "block_rq_issue")]
pub fn vigil_rq_issue(ctx: BtfTracePointContext) -> u32 {
    let rq: u64 = ctx.arg(0);
    let Some(dev) = request_dev(rq) else {
        count(counter::READ_FAILED);
        return 0;
    };
    let entry = InFlight {
        // SAFETY: no preconditions.
        start_ns: unsafe { bpf_ktime_get_ns() },
        dev,
        _pad: 0,
    };
    if INFLIGHT.insert(rq, entry, 0).is_err() {
        count(counter::INFLIGHT_FULL);
    }
    0
}

/// A partial completion also ends the entry: the rest of that request is
/// then not tracked, which errs toward "not stalled" for one request only.
#[btf_tracepoint(function = "block_rq_complete")]
pub fn vigil_rq_complete(ctx: BtfTracePointContext) -> u32 {
    let rq: u64 = ctx.arg(0);
    let _ = INFLIGHT.remove(rq);
    0
}

#[btf_tracepoint(function = "block_rq_requeue")]
pub fn vigil_rq_requeue(ctx: BtfTracePointContext) -> u32 {
    let rq: u64 = ctx.arg(0);
    let _ = INFLIGHT.remove(rq);
    0
}
