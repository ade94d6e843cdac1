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

/// Requests already in flight when the eBPF programs attached: they were
/// issued unseen, so the programs never learn of them, yet a sensor
/// restarted during a disk stall (or `probe` run on a sick host) must report
/// that disk. Seeded from `/sys/block/*/inflight` at start with age "at least
/// since start", like tasks already in D state; a device's seed lasts while
/// the kernel counts more requests than the programs track, and is dropped
/// for good once it does not (those requests then completed).
#[derive(Debug, Default)]
pub struct PreStartInflight {
    devs: HashMap<DevId, (u32, u64)>,
}

/// Seeded requests reported per device at most (the kernel's queue depth is
/// far below; bounds what a bogus sysfs count could cost).
const MAX_SEEDED: u32 = 4096;

impl PreStartInflight {
    /// Reads every `/sys/block/NAME/{dev,inflight}` now (`now_ns` on the
    /// programs' clock).
    pub fn from_sysfs(now_ns: u64) -> Self {
        let Ok(dir) = std::fs::read_dir("/sys/block") else {
            return Self::default();
        };
        let counts = dir.filter_map(Result::ok).filter_map(|e| {
            let p = e.path();
            let dev = std::fs::read_to_string(p.join("dev")).ok()?;
            let inflight = std::fs::read_to_string(p.join("inflight")).ok()?;
            Some((parse_dev(&dev)?, parse_inflight(&inflight)?))
        });
        Self::seed(counts, now_ns)
    }

    /// Seeds from `(device, requests in flight)` pairs.
    pub fn seed(counts: impl IntoIterator<Item = (DevId, u32)>, now_ns: u64) -> Self {
        let devs = counts
            .into_iter()
            .filter(|&(_, n)| n > 0)
            .map(|(dev, n)| (dev, (n.min(MAX_SEEDED), now_ns)))
            .collect();
        PreStartInflight { devs }
    }

    pub fn devices(&self) -> Vec<DevId> {
        self.devs.keys().copied().collect()
    }

    /// The seeded requests of `dev` still in flight, given the kernel's
    /// count and how many the programs track: `(count, since_ns)`.
    pub fn untracked(&mut self, dev: DevId, kernel: u32, tracked: u32) -> Option<(u32, u64)> {
        let &(seeded, since) = self.devs.get(&dev)?;
        let unseen = kernel.saturating_sub(tracked).min(seeded);
        if unseen == 0 {
            self.devs.remove(&dev);
            return None;
        }
        // Fewer unseen now than seeded: some of them completed.
        self.devs.insert(dev, (unseen, since));
        Some((unseen, since))
    }
}

/// `/sys/block/NAME/dev`: "major:minor".
fn parse_dev(text: &str) -> Option<DevId> {
    let (major, minor) = text.trim().split_once(':')?;
    Some(DevId {
        major: major.parse().ok()?,
        minor: minor.parse().ok()?,
    })
}

/// `/sys/block/NAME/inflight`: "reads writes".
fn parse_inflight(text: &str) -> Option<u32> {
    let mut it = text.split_whitespace().map(|v| v.parse::<u32>().ok());
    Some(it.next()??.saturating_add(it.next()??))
}

#[cfg(test)]
mod prestart_tests {
    use super::*;

    const LOOP2: DevId = DevId { major: 7, minor: 2 };

    #[test]
    fn a_request_in_flight_before_start_is_reported_until_it_completes() {
        let sda = DevId { major: 8, minor: 0 };
        // /sys/block/loop2/inflight said "1 0" when the sensor started.
        let seeded = [(LOOP2, parse_inflight("1 0\n").unwrap_or(0)), (sda, 0)];
        let mut p = PreStartInflight::seed(seeded, 5_000);
        assert_eq!(p.devices(), vec![LOOP2], "idle devices are not seeded");
        // Still stuck, the programs track nothing on it: reported from start.
        assert_eq!(p.untracked(LOOP2, 1, 0), Some((1, 5_000)));
        // A new request the programs saw arrives beside it: still 1 unseen.
        assert_eq!(p.untracked(LOOP2, 2, 1), Some((1, 5_000)));
        // The kernel count drops to what the programs track: done, for good.
        assert_eq!(p.untracked(LOOP2, 1, 1), None);
        assert_eq!(
            p.untracked(LOOP2, 5, 0),
            None,
            "a later stall is the programs'"
        );
        assert!(p.devices().is_empty());
    }

    #[test]
    fn sysfs_texts_parse() {
        assert_eq!(parse_dev("7:2\n"), Some(LOOP2));
        assert_eq!(parse_dev("garbage"), None);
        assert_eq!(parse_inflight("       1        0\n"), Some(1));
        assert_eq!(parse_inflight("4294967295 4294967295"), Some(u32::MAX));
        assert_eq!(parse_inflight(""), None);
    }
}
