//! Finding the processes to watch: qemu instances (with their Nova UUID)
//! and nova-compute, within the `--cgroup` scope; and naming cgroup ids.
//!
//! Runs on its own thread because identifying a process needs its command
//! line, and reading `/proc/PID/cmdline` takes the target's `mmap_lock`:
//! it can block behind a task stuck in a page fault on a dead disk. If that
//! happens, only discovery stalls (and the heartbeat says so); the sampler
//! keeps reporting the processes it already knows. To make it rarer, the
//! command line of a process in D state is read on a helper thread that is
//! abandoned after a short timeout (a few at most, each stuck only until its
//! target wakes), and each process's is read once (cached by pid, start
//! time and comm; "not interesting" answers expire so a late `exec` is
//! noticed). A nova-compute that hangs before discovery first saw it is
//! still found this way: a task waiting on a bio does not hold `mmap_lock`.

use std::{
    collections::{HashMap, HashSet},
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use regex::Regex;

use crate::{cgroup, clock, instances, nova_compute, procfs};

/// A qemu process and the instance it runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QemuProc {
    pub tgid: u32,
    pub starttime: u64,
    pub uuid: String,
    pub name: String,
}

/// The nova-compute process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NovaProc {
    pub pid: u32,
    pub starttime: u64,
}

/// What one scan found.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Increases with every scan.
    pub generation: u64,
    pub instances: Vec<QemuProc>,
    pub nova: Option<NovaProc>,
    /// Pids in the scope (None: no scope, every process).
    pub scope_pids: Option<Arc<HashSet<u32>>>,
    /// cgroup id → path, for naming blocked tasks' groups.
    pub cgroup_paths: Arc<HashMap<u64, String>>,
}

/// What discovery needs to know.
#[derive(Debug, Clone)]
pub struct DiscoveryConfig {
    pub scope: Option<cgroup::Scope>,
    pub nova_match: Regex,
    /// Our own pid, never a candidate.
    pub self_pid: u32,
}

#[derive(Debug, Clone)]
enum Kind {
    Qemu(instances::QemuIdentity),
    Nova,
    Other,
}

/// Command-line classifications, by (pid, starttime, comm).
#[derive(Default)]
pub struct Cache {
    /// Helper threads still stuck in a cmdline read.
    stuck_readers: Arc<AtomicUsize>,
    kinds: HashMap<(u32, u64, String), (Kind, u64)>,
    scans: u64,
    cgroup_paths: Arc<HashMap<u64, String>>,
    mount: Option<PathBuf>,
}

/// "Other" answers are re-checked after this long (an exec keeps pid and
/// start time, and may keep comm).
const OTHER_TTL_NS: u64 = 30_000_000_000;

/// Helper threads allowed to be stuck in cmdline reads at once.
const MAX_STUCK_READERS: usize = 4;
/// How long a cmdline read of a D-state process may take.
const CMDLINE_TIMEOUT: Duration = Duration::from_millis(200);

/// Reads a D-state process's cmdline on a helper thread, giving up after
/// [`CMDLINE_TIMEOUT`]; the helper then stays blocked until the target
/// wakes. None when it timed out or too many helpers are stuck.
fn read_cmdline_bounded(pid: u32, stuck: &Arc<AtomicUsize>) -> Option<Vec<String>> {
    if stuck.load(Ordering::Relaxed) >= MAX_STUCK_READERS {
        return None;
    }
    let (tx, rx) = std::sync::mpsc::channel();
    stuck.fetch_add(1, Ordering::Relaxed);
    let counter = stuck.clone();
    let spawned = std::thread::Builder::new()
        .name("cmdline".into())
        .stack_size(64 * 1024)
        .spawn(move || {
            let _ = tx.send(procfs::read_cmdline(pid));
            counter.fetch_sub(1, Ordering::Relaxed);
        });
    if spawned.is_err() {
        stuck.fetch_sub(1, Ordering::Relaxed);
        return None;
    }
    rx.recv_timeout(CMDLINE_TIMEOUT).ok().flatten()
}

/// One scan of /proc (and the scope's cgroup tree).
pub fn scan(cfg: &DiscoveryConfig, cache: &mut Cache) -> Snapshot {
    cache.scans += 1;
    let now = clock::monotonic_ns();
    let scope_pids = cfg.scope.as_ref().map(|s| Arc::new(s.pids()));
    let mut instances_found = Vec::new();
    let mut nova_candidates = Vec::new();
    let mut seen = HashSet::new();
    for pid in procfs::numeric_entries(Path::new("/proc")) {
        if pid == cfg.self_pid || scope_pids.as_ref().is_some_and(|s| !s.contains(&pid)) {
            continue;
        }
        let Some(st) = procfs::read_stat(pid) else {
            continue;
        };
        if st.is_kernel_thread() {
            continue;
        }
        let key = (pid, st.starttime, st.comm.clone());
        seen.insert(key.clone());
        let fresh = match cache.kinds.get(&key) {
            Some((Kind::Other, at)) => now.saturating_sub(*at) < OTHER_TTL_NS,
            Some(_) => true,
            None => false,
        };
        if !fresh {
            let args = if st.state == 'D' {
                read_cmdline_bounded(pid, &cache.stuck_readers)
            } else {
                procfs::read_cmdline(pid)
            };
            let Some(args) = args else {
                continue;
            };
            let kind = if instances::is_qemu_comm(&st.comm) {
                Kind::Qemu(instances::parse_cmdline(&args))
            } else if nova_compute::matches(&cfg.nova_match, &args) {
                Kind::Nova
            } else {
                Kind::Other
            };
            cache.kinds.insert(key.clone(), (kind, now));
        }
        match cache.kinds.get(&key).map(|(k, _)| k) {
            Some(Kind::Qemu(id)) => instances_found.push(QemuProc {
                tgid: pid,
                starttime: st.starttime,
                uuid: id.uuid.clone().unwrap_or_default(),
                name: id.name.clone().unwrap_or_default(),
            }),
            Some(Kind::Nova) => nova_candidates.push(nova_compute::Candidate {
                pid,
                ppid: st.ppid,
                starttime: st.starttime,
            }),
            _ => {}
        }
    }
    cache.kinds.retain(|k, _| seen.contains(k));
    // cgroup names change rarely; refresh every tenth scan.
    if cache.scans % 10 == 1 {
        if cache.mount.is_none() {
            cache.mount = cgroup::cgroup2_mount();
        }
        if let Some(mount) = &cache.mount {
            let root = cfg
                .scope
                .as_ref()
                .map(|s| s.dir.clone())
                .unwrap_or_else(|| mount.clone());
            cache.cgroup_paths = Arc::new(cgroup::id_paths(mount, &root, 5000));
        }
    }
    let nova = nova_compute::pick(&nova_candidates).map(|c| NovaProc {
        pid: c.pid,
        starttime: c.starttime,
    });
    instances_found.sort_by_key(|q| q.tgid);
    Snapshot {
        generation: cache.scans,
        instances: instances_found,
        nova,
        scope_pids,
        cgroup_paths: cache.cgroup_paths.clone(),
    }
}

/// The latest snapshot, shared with the sampler, and whether a scan is
/// stuck.
#[derive(Clone, Default)]
pub struct Shared {
    latest: Arc<Mutex<Arc<Snapshot>>>,
    /// CLOCK_MONOTONIC ns when the running scan began; 0 when idle.
    scan_started_ns: Arc<AtomicU64>,
}

impl Shared {
    pub fn latest(&self) -> Arc<Snapshot> {
        match self.latest.lock() {
            Ok(g) => g.clone(),
            // A panicked writer left a valid Arc behind; use it.
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    pub fn publish(&self, snap: Snapshot) {
        let snap = Arc::new(snap);
        match self.latest.lock() {
            Ok(mut g) => *g = snap,
            Err(poisoned) => *poisoned.into_inner() = snap,
        }
    }

    /// How long the current scan has run, if one is running.
    pub fn scan_running_for(&self, now_ns: u64) -> Option<Duration> {
        let started = self.scan_started_ns.load(Ordering::Relaxed);
        (started != 0).then(|| Duration::from_nanos(now_ns.saturating_sub(started)))
    }
}

/// Runs scans every `every` on a thread until `stop` is set.
pub fn spawn(
    cfg: DiscoveryConfig,
    every: Duration,
    shared: Shared,
    stop: Arc<AtomicBool>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("discovery".into())
        // Small stack: with mlockall every stack page is resident.
        .stack_size(256 * 1024)
        .spawn(move || {
            let mut cache = Cache::default();
            while !stop.load(Ordering::Relaxed) {
                shared
                    .scan_started_ns
                    .store(clock::monotonic_ns().max(1), Ordering::Relaxed);
                let snap = scan(&cfg, &mut cache);
                shared.scan_started_ns.store(0, Ordering::Relaxed);
                shared.publish(snap);
                // Sleep in short steps so shutdown is prompt.
                let mut left = every;
                while !left.is_zero() && !stop.load(Ordering::Relaxed) {
                    let step = left.min(Duration::from_millis(100));
                    std::thread::sleep(step);
                    left -= step;
                }
            }
        })
}
