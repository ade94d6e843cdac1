//! Which block devices the tasks of a `--cgroup` scope use.
//!
//! The block-layer probe sees every request of the kernel, whoever issued
//! it (completions and plugged I/O run in other tasks' context, so the
//! issuing task cannot be read off the request). On a real host that is
//! what we want: one machine, one set of disks. Where several "nodes"
//! share one kernel (the lab, or containers), a stalled device of one node
//! would turn every node `degraded`. So with a scope, a device is reported
//! only when a task of the scope uses it: holds the device node open
//! (`/dev/loop2`, a raw read) or holds open a file on a filesystem mounted
//! from it.
//!
//! Only `readlink` on `/proc/PID/fd/*` and reads of `/proc/PID/mountinfo`:
//! neither touches the (possibly stalled) filesystem the file lives on, so
//! this never blocks behind the device it is asked about.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;

use crate::block::DevId;

/// Tasks examined at most per call, and fds per task: a scope with more
/// is a misconfiguration, and the sampler's interval is bounded.
const MAX_PIDS: usize = 4096;
const MAX_FDS: usize = 4096;

/// The devices among `candidates` (by `dev` and kernel name, e.g. `loop2`)
/// that a task in `pids` uses.
pub fn used_by(
    pids: &HashSet<u32>,
    candidates: &[(DevId, String)],
    proc_root: &Path,
) -> HashSet<DevId> {
    let mut used = HashSet::new();
    if candidates.is_empty() {
        return used;
    }
    let by_name: BTreeMap<&str, DevId> = candidates.iter().map(|(d, n)| (n.as_str(), *d)).collect();
    let wanted: HashSet<DevId> = candidates.iter().map(|(d, _)| *d).collect();
    let mut sorted: Vec<u32> = pids.iter().copied().collect();
    sorted.sort_unstable();
    for pid in sorted.into_iter().take(MAX_PIDS) {
        let dir = proc_root.join(pid.to_string());
        let targets = fd_targets(&dir.join("fd"));
        if targets.is_empty() {
            continue;
        }
        let mounts = std::fs::read_to_string(dir.join("mountinfo"))
            .map(|t| parse_mountinfo(&t))
            .unwrap_or_default();
        for t in &targets {
            if let Some(dev) = t.strip_prefix("/dev/").and_then(|n| by_name.get(n)) {
                used.insert(*dev);
            } else if let Some(dev) = mount_device_of(&mounts, t) {
                if wanted.contains(&dev) {
                    used.insert(dev);
                }
            }
        }
        if used.len() == wanted.len() {
            break;
        }
    }
    used
}

fn fd_targets(fd_dir: &Path) -> Vec<String> {
    let Ok(rd) = std::fs::read_dir(fd_dir) else {
        return Vec::new();
    };
    rd.take(MAX_FDS)
        .filter_map(|e| {
            let t = std::fs::read_link(e.ok()?.path()).ok()?;
            let s = t.to_str()?;
            // Sockets, pipes, anon inodes: no device behind them.
            s.starts_with('/').then(|| s.to_string())
        })
        .collect()
}

/// `(mount point, device)` pairs from `/proc/PID/mountinfo`.
pub fn parse_mountinfo(text: &str) -> Vec<(String, DevId)> {
    text.lines()
        .filter_map(|l| {
            let mut f = l.split(' ');
            let (_id, _parent) = (f.next()?, f.next()?);
            let (major, minor) = f.next()?.split_once(':')?;
            let _root = f.next()?;
            let point = unescape(f.next()?);
            Some((
                point,
                DevId {
                    major: major.parse().ok()?,
                    minor: minor.parse().ok()?,
                },
            ))
        })
        .collect()
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b
            .get(i + 1..i + 4)
            .filter(|d| b[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)))
            .map(|d| {
                d.iter()
                    .fold(0u8, |v, c| v.wrapping_mul(8).wrapping_add(c - b'0'))
            });
        match octal {
            Some(v) => {
                out.push(v);
                i += 4;
            }
            None => {
                out.push(b[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The device of the longest mount point containing `path`.
fn mount_device_of(mounts: &[(String, DevId)], path: &str) -> Option<DevId> {
    mounts
        .iter()
        .filter(|(point, _)| {
            point == "/"
                || path == point
                || path
                    .strip_prefix(point.as_str())
                    .is_some_and(|rest| rest.starts_with('/'))
        })
        .max_by_key(|(point, _)| point.len())
        .map(|(_, d)| *d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev(major: u32, minor: u32) -> DevId {
        DevId { major, minor }
    }

    const MOUNTINFO: &str = "\
22 1 254:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw
30 22 7:2 / /srv/disk rw,relatime shared:9 - ext4 /dev/loop2 rw
31 22 7:3 / /srv/disk\\040two rw,relatime shared:10 - ext4 /dev/loop3 rw
";

    #[test]
    fn a_file_is_on_the_longest_mount_containing_it() {
        let m = parse_mountinfo(MOUNTINFO);
        assert_eq!(mount_device_of(&m, "/srv/disk/a.img"), Some(dev(7, 2)));
        assert_eq!(mount_device_of(&m, "/srv/disk two/x"), Some(dev(7, 3)));
        assert_eq!(mount_device_of(&m, "/srv/diskette"), Some(dev(254, 1)));
        assert_eq!(mount_device_of(&m, "/etc/passwd"), Some(dev(254, 1)));
    }

    #[test]
    fn devices_held_open_by_the_scope_count_and_others_do_not() {
        // A fake /proc: pid 10 holds /dev/loop2 open (a raw read, as the
        // lab's hang rig does), pid 11 a file on loop3's filesystem; loop4
        // is used by nobody in the scope.
        let root = tempfile::tempdir().expect("temp dir");
        for (pid, target) in [(10, "/dev/loop2"), (11, "/srv/disk two/f")] {
            let fd = root.path().join(format!("{pid}/fd"));
            std::fs::create_dir_all(&fd).expect("mkdir");
            std::os::unix::fs::symlink(target, fd.join("3")).expect("symlink");
            std::fs::write(root.path().join(format!("{pid}/mountinfo")), MOUNTINFO).expect("write");
        }
        let cands = vec![
            (dev(7, 2), "loop2".to_string()),
            (dev(7, 3), "loop3".to_string()),
            (dev(7, 4), "loop4".to_string()),
        ];
        let used = used_by(&HashSet::from([10, 11]), &cands, root.path());
        assert_eq!(used, HashSet::from([dev(7, 2), dev(7, 3)]));
        let used = used_by(&HashSet::from([10]), &cands, root.path());
        assert_eq!(used, HashSet::from([dev(7, 2)]));
        assert!(used_by(&HashSet::from([12]), &cands, root.path()).is_empty());
    }
}
