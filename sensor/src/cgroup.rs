//! cgroup v2: where the hierarchy is mounted, the `--cgroup` scope (its id
//! and depth for the eBPF filter, its member pids for discovery), and the
//! id → path names shown with blocked tasks.
//!
//! `bpf_get_current_cgroup_id()` reports the cgroup v2 hierarchy, and a
//! group's id is the inode number of its directory. On hybrid hosts cgroup2
//! is mounted at `/sys/fs/cgroup/unified`, so the mount is looked up in
//! `/proc/self/mountinfo` rather than assumed.

use std::{
    collections::{HashMap, HashSet},
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

/// Why the scope could not be resolved.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// No cgroup2 file system is mounted.
    #[error("no cgroup2 hierarchy is mounted (see /proc/self/mountinfo); --cgroup needs one")]
    NoCgroup2,
    /// The scope group does not exist.
    #[error(
        "cgroup {path} does not exist under the cgroup2 mount {mount}; create it or fix --cgroup"
    )]
    NoGroup {
        path: String,
        mount: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Mount point of the cgroup2 hierarchy, from mountinfo text.
pub fn cgroup2_mount_in(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        let (pre, post) = line.split_once(" - ")?;
        let fstype = post.split_whitespace().next()?;
        if fstype != "cgroup2" {
            return None;
        }
        let mount = pre.split_whitespace().nth(4)?;
        // mountinfo escapes spaces etc. as octal (\040).
        Some(PathBuf::from(mount.replace("\\040", " ")))
    })
}

/// Mount point of this host's cgroup2 hierarchy.
pub fn cgroup2_mount() -> Option<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    cgroup2_mount_in(&text)
}

/// A resolved `--cgroup` scope.
#[derive(Debug, Clone)]
pub struct Scope {
    /// As given, e.g. `/vigil-lab/compute1`.
    pub path: String,
    /// Its directory under the cgroup2 mount.
    pub dir: PathBuf,
    /// cgroup id (the directory's inode number).
    pub id: u64,
    /// Depth below the root: `/a/b` is 2 (the `ancestor_level` eBPF uses).
    pub level: u32,
}

impl Scope {
    pub fn resolve(path: &str) -> Result<Scope, CgroupError> {
        let mount = cgroup2_mount().ok_or(CgroupError::NoCgroup2)?;
        Self::resolve_under(&mount, path)
    }

    pub fn resolve_under(mount: &Path, path: &str) -> Result<Scope, CgroupError> {
        let rel = path.trim_matches('/');
        let dir = mount.join(rel);
        let meta = std::fs::metadata(&dir).map_err(|source| CgroupError::NoGroup {
            path: path.to_string(),
            mount: mount.to_path_buf(),
            source,
        })?;
        Ok(Scope {
            path: format!("/{rel}"),
            dir,
            id: meta.ino(),
            level: rel.split('/').filter(|c| !c.is_empty()).count() as u32,
        })
    }

    /// Every pid in the group and its descendants (`cgroup.procs`).
    pub fn pids(&self) -> HashSet<u32> {
        let mut pids = HashSet::new();
        let mut stack = vec![self.dir.clone()];
        // Bounded walk: a pathological tree must not stall discovery.
        let mut budget = 10_000;
        while let Some(dir) = stack.pop() {
            budget -= 1;
            if budget == 0 {
                break;
            }
            if let Ok(text) = std::fs::read_to_string(dir.join("cgroup.procs")) {
                pids.extend(text.lines().filter_map(|l| l.trim().parse::<u32>().ok()));
            }
            if let Ok(rd) = std::fs::read_dir(&dir) {
                stack.extend(
                    rd.filter_map(Result::ok)
                        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                        .map(|e| e.path()),
                );
            }
        }
        pids
    }
}

/// cgroup ids → paths (relative to the cgroup2 root), for the groups under
/// `root` (the scope, or the whole hierarchy), at most `limit` of them.
pub fn id_paths(mount: &Path, root: &Path, limit: usize) -> HashMap<u64, String> {
    let mut out = HashMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        if out.len() >= limit {
            break;
        }
        let Ok(meta) = std::fs::metadata(&dir) else {
            continue;
        };
        let rel = dir
            .strip_prefix(mount)
            .map(|r| format!("/{}", r.display()))
            .unwrap_or_default();
        out.insert(meta.ino(), rel);
        if let Ok(rd) = std::fs::read_dir(&dir) {
            stack.extend(
                rd.filter_map(Result::ok)
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.path()),
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "25 1 0:22 / /sys rw,nosuid - sysfs sysfs rw
30 25 0:26 / /sys/fs/cgroup ro - tmpfs tmpfs ro,mode=755
31 30 0:27 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:10 - cgroup2 cgroup2 rw,nsdelegate
32 30 0:28 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu
";

    #[test]
    fn finds_cgroup2_on_hybrid_hosts() {
        assert_eq!(
            cgroup2_mount_in(HYBRID),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        assert_eq!(
            cgroup2_mount_in("1 0 0:1 / / rw - ext4 /dev/vda rw\n"),
            None
        );
    }

    #[test]
    fn resolves_a_scope_in_a_directory_tree() {
        let root = tempfile_dir();
        std::fs::create_dir_all(root.join("lab/node1")).expect("mkdir");
        let s = Scope::resolve_under(&root, "/lab/node1/").expect("resolve");
        assert_eq!(s.level, 2);
        assert_eq!(s.path, "/lab/node1");
        let ids = id_paths(&root, &root, 100);
        assert_eq!(ids.get(&s.id).map(String::as_str), Some("/lab/node1"));
        assert!(matches!(
            Scope::resolve_under(&root, "/nope"),
            Err(CgroupError::NoGroup { .. })
        ));
        let _ = std::fs::remove_dir_all(&root);
    }

    fn tempfile_dir() -> PathBuf {
        let p = std::env::temp_dir().join(format!(
            "vigil-cgroup-test-{}-{}",
            std::process::id(),
            crate::clock::monotonic_ns()
        ));
        std::fs::create_dir_all(&p).expect("temp dir");
        p
    }
}
