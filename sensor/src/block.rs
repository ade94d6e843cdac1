//! Block devices: requests in flight per device and the age of the oldest.
//!
//! In eBPF mode the requests come from `INFLIGHT`; in procfs mode from
//! `/proc/diskstats` (in-flight counts only, so the age is estimated as the
//! time since the device last completed any I/O while it had requests in
//! flight). Either way, `/sys/dev/block/M:m/inflight` is the kernel's own
//! count and is used to drop stale eBPF entries (missed completions).

use std::collections::HashMap;

/// A device as `dev_t` parts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub struct DevId {
    pub major: u32,
    pub minor: u32,
}

impl DevId {
    /// From the kernel's internal `dev_t` (`major << 20 | minor`), which is
    /// what `block_device.bd_dev` holds.
    pub fn from_kernel(dev: u32) -> DevId {
        DevId {
            major: dev >> 20,
            minor: dev & ((1 << 20) - 1),
        }
    }

    pub fn to_kernel(self) -> u32 {
        (self.major << 20) | self.minor
    }
}

impl std::fmt::Display for DevId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.major, self.minor)
    }
}

/// One device's in-flight state at a sample.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DeviceStall {
    pub dev: DevId,
    pub name: String,
    pub in_flight: u32,
    pub oldest_ms: u64,
}

/// Aggregates in-flight requests `(dev, issued_at_ns)` into per-device
/// counts and oldest ages, oldest first.
pub fn aggregate(
    requests: impl IntoIterator<Item = (DevId, u64)>,
    now_ns: u64,
) -> Vec<(DevId, u32, u64)> {
    let mut per: HashMap<DevId, (u32, u64)> = HashMap::new();
    for (dev, start) in requests {
        let e = per.entry(dev).or_insert((0, u64::MAX));
        e.0 += 1;
        e.1 = e.1.min(start);
    }
    let mut out: Vec<_> = per
        .into_iter()
        .map(|(dev, (n, oldest))| (dev, n, now_ns.saturating_sub(oldest) / 1_000_000))
        .collect();
    out.sort_by(|a, b| b.2.cmp(&a.2).then(a.0.cmp(&b.0)));
    out
}

/// One line of `/proc/diskstats` (the fields we use).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskStat {
    pub dev: DevId,
    pub name: String,
    /// Reads + writes + discards + flushes completed (advances on progress).
    pub completed: u64,
    /// I/Os currently in progress (field 12).
    pub in_flight: u32,
}

/// Parses `/proc/diskstats`.
pub fn parse_diskstats(text: &str) -> Vec<DiskStat> {
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let n = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok());
            let mut completed = n(3)? + n(7)?;
            // Discards (kernel 4.18+) and flushes (5.5+) when present.
            if let Some(d) = n(14) {
                completed += d;
            }
            if let Some(fl) = n(18) {
                completed += fl;
            }
            Some(DiskStat {
                dev: DevId {
                    major: n(0)? as u32,
                    minor: n(1)? as u32,
                },
                name: f.get(2)?.to_string(),
                completed,
                in_flight: n(11)? as u32,
            })
        })
        .collect()
}

/// `/sys/dev/block/M:m/inflight`: "reads writes" in flight, per the kernel.
/// `None` when the device is gone.
pub fn sysfs_inflight(dev: DevId) -> Option<u32> {
    let text = std::fs::read_to_string(format!("/sys/dev/block/{dev}/inflight")).ok()?;
    let mut it = text
        .split_whitespace()
        .filter_map(|v| v.parse::<u32>().ok());
    Some(it.next()? + it.next()?)
}

/// Kernel names of block devices (`loop0`, `vda1`), cached per device.
#[derive(Default)]
pub struct DeviceNames {
    names: HashMap<DevId, String>,
}

impl DeviceNames {
    /// The device's kernel name from sysfs `uevent` (`DEVNAME=`), read once
    /// per device; empty when unknown.
    pub fn name(&mut self, dev: DevId) -> String {
        if let Some(n) = self.names.get(&dev) {
            return n.clone();
        }
        let name = std::fs::read_to_string(format!("/sys/dev/block/{dev}/uevent"))
            .ok()
            .and_then(|t| {
                t.lines()
                    .find_map(|l| l.strip_prefix("DEVNAME=").map(str::to_string))
            })
            .unwrap_or_default();
        // Bounded: devices come and go, names are small; forget them all
        // rather than grow without limit.
        if self.names.len() > 4096 {
            self.names.clear();
        }
        self.names.insert(dev, name.clone());
        name
    }
}

/// procfs-mode stall estimate: per device, since when it has had I/O in
/// flight without completing any.
#[derive(Default)]
pub struct DiskstatsTracker {
    last: HashMap<DevId, (u64, u64)>, // completed count, stuck since ns
}

impl DiskstatsTracker {
    /// Feeds one `/proc/diskstats` sample; returns devices with I/O in
    /// flight, each with the estimated age of its oldest request.
    pub fn observe(&mut self, stats: &[DiskStat], now_ns: u64) -> Vec<DeviceStall> {
        let mut out = Vec::new();
        let mut next = HashMap::new();
        for s in stats {
            if s.in_flight == 0 {
                continue;
            }
            let since = match self.last.get(&s.dev) {
                Some(&(completed, since)) if completed == s.completed => since,
                _ => now_ns,
            };
            next.insert(s.dev, (s.completed, since));
            out.push(DeviceStall {
                dev: s.dev,
                name: s.name.clone(),
                in_flight: s.in_flight,
                oldest_ms: now_ns.saturating_sub(since) / 1_000_000,
            });
        }
        self.last = next;
        out.sort_by_key(|d| std::cmp::Reverse(d.oldest_ms));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DISKSTATS: &str = "   7       0 loop0 10 0 80 5 2 0 16 1 1 30 6 0 0 0 0 0 0
 254       0 vda 5000 10 300000 900 2000 50 90000 400 0 1200 1300 0 0 0 0 100 20
";

    #[test]
    fn parses_diskstats_lines() {
        let s = parse_diskstats(DISKSTATS);
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].dev, DevId { major: 7, minor: 0 });
        assert_eq!(s[0].name, "loop0");
        assert_eq!(s[0].in_flight, 1);
        assert_eq!(s[0].completed, 12);
        assert_eq!(s[1].completed, 7100);
        assert_eq!(s[1].in_flight, 0);
    }

    #[test]
    fn kernel_dev_t_round_trips() {
        let d = DevId::from_kernel((7 << 20) | 3);
        assert_eq!(d, DevId { major: 7, minor: 3 });
        assert_eq!(d.to_kernel(), (7 << 20) | 3);
        assert_eq!(d.to_string(), "7:3");
    }

    #[test]
    fn aggregates_oldest_per_device() {
        let a = DevId { major: 7, minor: 0 };
        let b = DevId {
            major: 254,
            minor: 0,
        };
        let s = 1_000_000_000;
        let out = aggregate([(a, 10 * s), (a, 2 * s), (b, 11 * s)], 12 * s);
        assert_eq!(out, vec![(a, 2, 10_000), (b, 1, 1_000)]);
    }

    #[test]
    fn diskstats_age_grows_only_without_progress() {
        let mut t = DiskstatsTracker::default();
        let dev = DevId { major: 7, minor: 0 };
        let stat = |completed, in_flight| DiskStat {
            dev,
            name: "loop0".into(),
            completed,
            in_flight,
        };
        let s = 1_000_000_000;
        assert_eq!(t.observe(&[stat(5, 1)], s)[0].oldest_ms, 0);
        assert_eq!(t.observe(&[stat(5, 1)], 4 * s)[0].oldest_ms, 3000);
        // Progress resets the estimate; an idle device is not listed.
        assert_eq!(t.observe(&[stat(6, 1)], 5 * s)[0].oldest_ms, 0);
        assert!(t.observe(&[stat(6, 0)], 6 * s).is_empty());
    }
}
