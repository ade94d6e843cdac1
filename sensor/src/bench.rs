//! `vigil-sensor bench-switch` (hidden; run by `cargo xtask bench sensor`):
//! what the sensor costs a context-switch-heavy host.
//!
//! A pipe ping-pong between two threads pinned to one CPU makes every
//! message a direct context switch, the worst case for a `sched_switch`
//! probe. The figures are per switch *of those two threads*, counted by the
//! kernel (`getrusage(RUSAGE_THREAD)`), not by the system-wide `ctxt`
//! counter, which on this shared 2-vCPU VM mostly counts the other CPU.
//!
//! Phase 1 loads the sensor's own object in this process and, in every
//! round, measures in rotating order: nothing attached; an empty tp_btf
//! program on `sched_switch` (the floor any program on that hook pays
//! here); the sensor's programs; and the sensor's programs with the two
//! threads watched (the slow path a qemu host takes for its qemu threads).
//! Each mode's added cost is the median over rounds of its difference to
//! the baseline *of the same round*, so drift on a noisy VM cancels.
//!
//! Phase 2 runs a real `vigil-sensor run` child, for the end-to-end figure
//! (started and stopped between paired rounds) and its RSS and CPU while
//! the host is idle and under the ping-pong. Kernel per-program statistics
//! (BPF_ENABLE_STATS) run last, apart, since timing each run costs time.

use std::{
    io::{BufRead as _, BufReader},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use aya::{
    maps::{Array, MapData, PerCpuArray, PerCpuHashMap, PerCpuValues},
    programs::{
        tp_btf::BtfTracePointLinkId, trace_point::TracePointLinkId, BtfTracePoint, TracePoint,
    },
    Btf, Ebpf,
};
use vigil_sensor_common::{names, OnCpu, WATCH_WORDS};

use crate::{clock, loader, offsets::KernelOffsets, procfs, tracefs};

#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Round trips per measurement (each is two context switches). Short
    /// measurements, many of them: a pair measured close together in time
    /// sees the same noise.
    #[arg(long, default_value_t = 20_000)]
    pub iterations: u64,
    /// Rounds of phase 1 (each measures every mode once).
    #[arg(long, default_value_t = 41)]
    pub rounds: u32,
    /// Cycles of phase 2 (5 measurements without, then 5 with a sensor child).
    #[arg(long, default_value_t = 3)]
    pub child_rounds: u32,
    /// How long to measure the sensor's CPU while the host is idle.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "5s")]
    pub idle: Duration,
    /// Print the figures as JSON.
    #[arg(long)]
    pub json: bool,
    /// Another vigil-sensor binary (e.g. an older build) to measure in
    /// phase 2 beside this one, in the same cycles.
    #[arg(long, value_name = "PATH")]
    pub compare_bin: Option<std::path::PathBuf>,
    /// Print every round's figures to stderr.
    #[arg(long)]
    pub verbose: bool,
}

/// Why the benchmark could not run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("bench-switch needs root (it loads eBPF and starts a sensor)")]
    NotRoot,
    #[error("this vigil-sensor was built without its eBPF object; run `cargo xtask build-ebpf` and rebuild")]
    NoObject,
    #[error("{what}")]
    Io {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("loading the sensor's eBPF object")]
    Load(#[source] loader::LoadError),
    #[error("{0}")]
    Ebpf(String),
    #[error("the sensor child did not attach its eBPF programs within 20 s (is it built with the eBPF object?)")]
    NoAttach,
}

fn io(what: &'static str) -> impl FnOnce(std::io::Error) -> BenchError {
    move |source| BenchError::Io { what, source }
}

fn ebpf_err(what: &str) -> impl FnOnce(aya::programs::ProgramError) -> BenchError + '_ {
    move |e| BenchError::Ebpf(format!("{what}: {e}"))
}

/// What is attached while a phase-1 measurement runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Nothing attached.
    Baseline,
    /// `vigil_bench_empty` alone on `sched_switch`.
    EmptyProgram,
    /// All the sensor's programs, nothing watched.
    Sensor,
    /// All the sensor's programs, the ping-pong's own process watched.
    SensorWatched,
}

const MODES: [Mode; 4] = [
    Mode::Baseline,
    Mode::EmptyProgram,
    Mode::Sensor,
    Mode::SensorWatched,
];

impl Mode {
    fn label(self) -> &'static str {
        match self {
            Mode::Baseline => "nothing attached (baseline)",
            Mode::EmptyProgram => "empty tp_btf on sched_switch",
            Mode::Sensor => "sensor programs",
            Mode::SensorWatched => "sensor programs, tasks watched",
        }
    }
}

/// One mode's figures over all rounds.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ModeFigures {
    pub mode: Mode,
    /// Medians over rounds.
    pub wall_ns_per_switch: f64,
    pub cpu_ns_per_switch: f64,
    /// Median over rounds of (this mode − the baseline of the same round),
    /// in CPU time of the two threads per switch: the headline figure.
    pub added_cpu_ns_per_switch: f64,
    /// The same in wall time (noisier: other tasks share the CPU).
    pub added_wall_ns_per_switch: f64,
    /// Median over rounds of (baseline wall time / this mode's).
    pub throughput_ratio: f64,
}

/// Everything the benchmark measured.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Figures {
    pub iterations: u64,
    pub rounds: u32,
    pub modes: Vec<ModeFigures>,
    /// `sensor` added minus `empty program` added (CPU ns per switch).
    pub program_ns_beyond_floor: f64,
    /// CPU time the watched mode accounted to the ping-pong process, as a
    /// share of the two threads' own CPU time (should be ≈ 100 %).
    pub watched_runtime_pct: f64,
    /// Kernel-measured average run time per event of each program (stats
    /// on; the timing itself adds to each figure).
    pub probe_ns_per_event: Vec<(String, f64, u64)>,
    /// Other processes' programs named like ours on `sched_switch`.
    pub foreign_switch_programs: usize,
    /// Size of the `sched_switch` program after the verifier's rewrites.
    pub sched_switch_xlated_insns: u32,
    pub sched_switch_jited_bytes: u32,
    /// Phase 2: a real `vigil-sensor run` child, paired with measurements
    /// without it taken just before it started.
    pub child_samples: usize,
    pub child_added_cpu_ns_per_switch: f64,
    pub child_added_wall_ns_per_switch: f64,
    pub child_throughput_ratio: f64,
    pub sensor_rss_idle_kib: u64,
    pub sensor_rss_load_kib: u64,
    pub sensor_cpu_idle_pct: f64,
    pub sensor_cpu_load_pct: f64,
    /// The probes' cost at 100k switches/s in % of one core, from the real
    /// child's added CPU ns (ns × 1e5 / 1e9 × 100).
    pub kernel_pct_at_100k: f64,
    /// The same for `--compare-bin`, measured in the same cycles.
    pub compare: Option<CompareFigures>,
}

/// Phase-2 figures of another sensor binary.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CompareFigures {
    pub bin: std::path::PathBuf,
    pub added_cpu_ns_per_switch: f64,
    pub added_wall_ns_per_switch: f64,
    pub throughput_ratio: f64,
    pub rss_idle_kib: u64,
    pub rss_load_kib: u64,
    pub cpu_idle_pct: f64,
    pub cpu_load_pct: f64,
}

fn pipe() -> Result<(OwnedFd, OwnedFd), BenchError> {
    let mut fds = [0i32; 2];
    // SAFETY: pipe writes two fds into our array.
    if unsafe { libc::pipe(fds.as_mut_ptr()) } != 0 {
        return Err(io("pipe")(std::io::Error::last_os_error()));
    }
    // SAFETY: both fds were just created and are owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

fn pin_to_cpu0() {
    // SAFETY: the cpu_set_t is ours and zeroed; CPU 0 always exists.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(0, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// Context switches of the calling thread so far (voluntary + not).
fn thread_switches() -> u64 {
    // SAFETY: getrusage fills the zeroed struct we own.
    unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        if libc::getrusage(libc::RUSAGE_THREAD, &mut ru) != 0 {
            return 0;
        }
        (ru.ru_nvcsw + ru.ru_nivcsw) as u64
    }
}

/// CPU time of the calling thread in ns.
fn thread_cpu_ns() -> u64 {
    // SAFETY: clock_gettime fills the zeroed timespec we own.
    unsafe {
        let mut ts: libc::timespec = std::mem::zeroed();
        if libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) != 0 {
            return 0;
        }
        ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
    }
}

/// One ping-pong measurement.
#[derive(Debug, Clone, Copy)]
struct Sample {
    wall: Duration,
    /// CPU time of both threads: a switch's cost (the probes' included)
    /// lands on one of them, while time the CPU gives to other tasks lands
    /// on neither, so this stays honest on a busy VM where wall time does
    /// not.
    cpu_ns: u64,
    switches: u64,
}

impl Sample {
    fn wall_ns_per_switch(&self) -> f64 {
        self.wall.as_nanos() as f64 / self.switches.max(1) as f64
    }
    fn cpu_ns_per_switch(&self) -> f64 {
        self.cpu_ns as f64 / self.switches.max(1) as f64
    }
}

/// Runs the ping-pong.
fn ping_pong(iterations: u64) -> Result<Sample, BenchError> {
    let (a_r, a_w) = pipe()?;
    let (b_r, b_w) = pipe()?;
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let peer = std::thread::spawn(move || {
        pin_to_cpu0();
        let _ = ready_tx.send(());
        let before = thread_switches();
        let cpu0 = thread_cpu_ns();
        let mut byte = [0u8; 1];
        for _ in 0..iterations {
            // SAFETY: reading/writing one byte of our own buffer on our fds.
            unsafe {
                if libc::read(a_r.as_raw_fd(), byte.as_mut_ptr().cast(), 1) != 1 {
                    break;
                }
                if libc::write(b_w.as_raw_fd(), byte.as_ptr().cast(), 1) != 1 {
                    break;
                }
            }
        }
        (
            thread_switches().saturating_sub(before),
            thread_cpu_ns().saturating_sub(cpu0),
        )
    });
    pin_to_cpu0();
    let _ = ready_rx.recv();
    let before = thread_switches();
    let cpu0 = thread_cpu_ns();
    let start = Instant::now();
    let mut byte = [1u8; 1];
    for _ in 0..iterations {
        // SAFETY: as above.
        unsafe {
            if libc::write(a_w.as_raw_fd(), byte.as_ptr().cast(), 1) != 1 {
                break;
            }
            if libc::read(b_r.as_raw_fd(), byte.as_mut_ptr().cast(), 1) != 1 {
                break;
            }
        }
    }
    let wall = start.elapsed();
    let my_cpu = thread_cpu_ns().saturating_sub(cpu0);
    let mine = thread_switches().saturating_sub(before);
    drop(a_w);
    let (theirs, their_cpu) = peer.join().unwrap_or((0, 0));
    // The peer's figures include its last switch after our clock stopped:
    // one, against tens of thousands.
    Ok(Sample {
        wall,
        cpu_ns: my_cpu + their_cpu,
        switches: (mine + theirs).max(1),
    })
}

enum Link {
    Btf(&'static str, BtfTracePointLinkId),
    Tp(&'static str, TracePointLinkId),
}

/// The sensor's object loaded in this process, to attach and detach the
/// programs between measurements.
struct InProcess {
    ebpf: Ebpf,
    watch: PerCpuHashMap<MapData, u32, u64>,
    watch_bits: Array<MapData, u64>,
    oncpu: PerCpuArray<MapData, OnCpu>,
    tgid: u32,
    nr_cpus: usize,
    /// Kernel ids of the programs loaded here, with their names.
    ids: Vec<(u32, &'static str)>,
}

const SWITCH_PROGS: [&str; 4] = [
    names::PROG_SCHED_SWITCH,
    names::PROG_RQ_ISSUE,
    names::PROG_RQ_COMPLETE,
    names::PROG_RQ_REQUEUE,
];
const BTF_HOOKS: [&str; 4] = [
    "sched_switch",
    "block_rq_issue",
    "block_rq_complete",
    "block_rq_requeue",
];
const TP_PROGS: [(&str, &str); 2] = [
    (names::PROG_PROCESS_EXIT, "sched_process_exit"),
    (names::PROG_PROCESS_HANG, "sched_process_hang"),
];

impl InProcess {
    fn open() -> Result<InProcess, BenchError> {
        let object = crate::embedded::ebpf_object().ok_or(BenchError::NoObject)?;
        let tracefs_root = tracefs::ensure_mounted().ok();
        let btf_own = crate::btf::Btf::from_sys_fs().ok();
        let (off, _) = KernelOffsets::discover(btf_own.as_ref(), tracefs_root.as_deref());
        let opts = loader::LoadOptions {
            max_blocked_tasks: 32768,
            max_inflight: 65536,
            max_watched: 4096,
            events_bytes: 256 * 1024,
            scope: None,
        };
        let mut ebpf = loader::open(object, &off, &opts).map_err(BenchError::Load)?;
        let btf = Btf::from_sys_fs().map_err(|e| BenchError::Ebpf(format!("kernel BTF: {e}")))?;
        let mut ids = Vec::new();
        for (&prog, hook) in SWITCH_PROGS
            .iter()
            .zip(BTF_HOOKS)
            .chain([(&names::PROG_BENCH_EMPTY, "sched_switch")])
        {
            let p: &mut BtfTracePoint = program(&mut ebpf, prog)?
                .try_into()
                .map_err(ebpf_err(prog))?;
            p.load(hook, &btf).map_err(ebpf_err(prog))?;
            if let Ok(info) = p.info() {
                ids.push((info.id(), prog));
            }
        }
        for (prog, _) in TP_PROGS {
            let p: &mut TracePoint = program(&mut ebpf, prog)?
                .try_into()
                .map_err(ebpf_err(prog))?;
            p.load().map_err(ebpf_err(prog))?;
            if let Ok(info) = p.info() {
                ids.push((info.id(), prog));
            }
        }
        let watch = take_map(&mut ebpf, names::MAP_WATCH)?;
        let watch_bits = take_map(&mut ebpf, names::MAP_WATCH_BITS)?;
        let oncpu = take_map(&mut ebpf, names::MAP_ONCPU)?;
        Ok(InProcess {
            ebpf,
            watch,
            watch_bits,
            oncpu,
            ids,
            tgid: std::process::id(),
            nr_cpus: aya::util::nr_cpus().unwrap_or(1),
        })
    }

    fn attach(&mut self, mode: Mode) -> Result<Vec<Link>, BenchError> {
        self.reset_oncpu()?;
        let mut links = Vec::new();
        let btf_progs: &[&'static str] = match mode {
            Mode::Baseline => &[],
            Mode::EmptyProgram => &[names::PROG_BENCH_EMPTY],
            Mode::Sensor | Mode::SensorWatched => &SWITCH_PROGS,
        };
        for &prog in btf_progs {
            let p: &mut BtfTracePoint = program(&mut self.ebpf, prog)?
                .try_into()
                .map_err(ebpf_err(prog))?;
            links.push(Link::Btf(prog, p.attach().map_err(ebpf_err(prog))?));
        }
        if matches!(mode, Mode::Sensor | Mode::SensorWatched) {
            for (prog, hook) in TP_PROGS {
                let p: &mut TracePoint = program(&mut self.ebpf, prog)?
                    .try_into()
                    .map_err(ebpf_err(prog))?;
                links.push(Link::Tp(
                    prog,
                    p.attach("sched", hook).map_err(ebpf_err(prog))?,
                ));
            }
        }
        if mode == Mode::SensorWatched {
            self.set_watched(true)?;
        }
        Ok(links)
    }

    /// Empties every CPU's `ONCPU` slot. The sensor never detaches, but
    /// this benchmark does, and a slot left from before a detach would
    /// count the time between measurements.
    fn reset_oncpu(&mut self) -> Result<(), BenchError> {
        let zeros = PerCpuValues::try_from(vec![OnCpu::default(); self.nr_cpus])
            .map_err(|e| BenchError::Ebpf(format!("per-CPU values: {e}")))?;
        self.oncpu
            .set(0, zeros, 0)
            .map_err(|e| BenchError::Ebpf(format!("ONCPU: {e}")))
    }

    fn detach(&mut self, links: Vec<Link>) -> Result<(), BenchError> {
        for link in links {
            match link {
                Link::Btf(prog, id) => {
                    let p: &mut BtfTracePoint = program(&mut self.ebpf, prog)?
                        .try_into()
                        .map_err(ebpf_err(prog))?;
                    p.detach(id).map_err(ebpf_err(prog))?;
                }
                Link::Tp(prog, id) => {
                    let p: &mut TracePoint = program(&mut self.ebpf, prog)?
                        .try_into()
                        .map_err(ebpf_err(prog))?;
                    p.detach(id).map_err(ebpf_err(prog))?;
                }
            }
        }
        self.set_watched(false)
    }

    /// Puts this process into (or out of) `WATCH` and `WATCH_BITS`, as the
    /// sensor does for a qemu process.
    fn set_watched(&mut self, on: bool) -> Result<(), BenchError> {
        let bits = loader::watch_bitmap(on.then_some(self.tgid));
        let word = (self.tgid % (64 * WATCH_WORDS)) / 64;
        let map_err = |e: aya::maps::MapError| BenchError::Ebpf(format!("WATCH: {e}"));
        if on {
            let zeros = PerCpuValues::try_from(vec![0u64; self.nr_cpus])
                .map_err(|e| BenchError::Ebpf(format!("per-CPU values: {e}")))?;
            self.watch.insert(self.tgid, zeros, 0).map_err(map_err)?;
        } else {
            let _ = self.watch.remove(&self.tgid);
        }
        let w = bits.get(word as usize).copied().unwrap_or(0);
        self.watch_bits.set(word, w, 0).map_err(map_err)
    }

    /// CPU ns accounted to this process while watched.
    fn watched_ns(&self) -> u64 {
        self.watch
            .get(&self.tgid, 0)
            .map(|v| v.iter().sum())
            .unwrap_or(0)
    }
}

fn program<'a>(
    ebpf: &'a mut Ebpf,
    name: &str,
) -> Result<&'a mut aya::programs::Program, BenchError> {
    ebpf.program_mut(name).ok_or_else(|| {
        BenchError::Ebpf(format!("the eBPF object has no program {name}; rebuild it"))
    })
}

fn take_map<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, BenchError>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf
        .take_map(name)
        .ok_or_else(|| BenchError::Ebpf(format!("the eBPF object has no map {name}")))?;
    T::try_from(map).map_err(|e| BenchError::Ebpf(format!("map {name}: {e}")))
}

struct SensorChild(Child);

impl Drop for SensorChild {
    fn drop(&mut self) {
        // SAFETY: kill on our own child's pid.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_sensor(exe: &std::path::Path) -> Result<SensorChild, BenchError> {
    let mut child = Command::new(exe)
        .args([
            "run",
            "--node",
            "bench",
            "--log",
            "info",
            // Nothing listens there: the link backs off quietly, as a sensor
            // whose decider is away does.
            "--decider",
            "http://127.0.0.1:9",
            "--reconnect-min",
            "1s",
            "--reconnect-max",
            "5s",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(io("starting the sensor"))?;
    let stderr = child.stderr.take();
    let guard = SensorChild(child);
    let (tx, rx) = std::sync::mpsc::channel();
    if let Some(stderr) = stderr {
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("sensor running") {
                    let _ = tx.send(line.contains("Ebpf"));
                }
            }
        });
    }
    match rx.recv_timeout(Duration::from_secs(20)) {
        Ok(true) => Ok(guard),
        _ => Err(BenchError::NoAttach),
    }
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|t| {
            t.lines().find_map(|l| {
                l.strip_prefix("VmRSS:")?
                    .split_whitespace()
                    .next()?
                    .parse()
                    .ok()
            })
        })
        .unwrap_or(0)
}

/// CPU time of all the process's threads in ns, from `schedstat` (ns
/// precision; /proc/PID/stat counts 10 ms ticks, too coarse for an idle
/// sensor).
fn cpu_ns(pid: u32) -> u64 {
    let tids = procfs::numeric_entries(std::path::Path::new(&format!("/proc/{pid}/task")));
    let total: u64 = tids
        .iter()
        .filter_map(|tid| {
            std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/schedstat"))
                .ok()?
                .split_whitespace()
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum();
    if total > 0 {
        total
    } else {
        procfs::read_stat(pid)
            .map(|s| s.cpu_ticks * 1_000_000_000 / clock::clock_ticks_per_sec())
            .unwrap_or(0)
    }
}

/// (name, run time, run count) of the programs this process loaded.
fn probe_stats(ids: &[(u32, &'static str)]) -> Vec<(String, Duration, u64)> {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .filter_map(|p| {
            let (_, name) = ids.iter().find(|(id, _)| *id == p.id())?;
            Some((name.to_string(), p.run_time(), p.run_count()))
        })
        .collect()
}

/// Programs named like the sensor's `sched_switch` one that another
/// process loaded (e.g. a lab's sensors): they run in every mode, the
/// baseline included, and make each switch slower for everyone.
fn foreign_switch_programs(ids: &[(u32, &'static str)]) -> usize {
    // The kernel keeps 15 characters of a program's name.
    let short: String = names::PROG_SCHED_SWITCH.chars().take(15).collect();
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .filter(|p| p.name_as_str() == Some(short.as_str()))
        .filter(|p| !ids.iter().any(|(id, _)| *id == p.id()))
        .count()
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    match s.len() {
        0 => 0.0,
        n if n % 2 == 1 => s[n / 2],
        n => (s[n / 2 - 1] + s[n / 2]) / 2.0,
    }
}

/// Phase 1; returns per-mode samples per round, and the watched share.
fn phase1(args: &BenchArgs, inproc: &mut InProcess) -> Result<(Vec<Vec<Sample>>, f64), BenchError> {
    let mut per_mode = vec![Vec::new(); MODES.len()];
    let mut watched_ns = 0u64;
    let mut watched_cpu = 0u64;
    for round in 0..args.rounds as usize {
        // Rotating order: no mode always runs first, or right after another.
        for k in 0..MODES.len() {
            let i = (round + k) % MODES.len();
            let mode = MODES[i];
            let links = inproc.attach(mode)?;
            let before = inproc.watched_ns();
            let sample = ping_pong(args.iterations)?;
            if mode == Mode::SensorWatched {
                watched_ns += inproc.watched_ns().saturating_sub(before);
                watched_cpu += sample.cpu_ns;
            }
            inproc.detach(links)?;
            per_mode[i].push(sample);
        }
        if args.verbose {
            eprintln!(
                "round {:>3}: CPU ns/switch {}",
                round + 1,
                MODES
                    .iter()
                    .zip(&per_mode)
                    .map(|(m, v)| format!(
                        "{:?} {:.0}",
                        m,
                        v.last().map_or(0.0, Sample::cpu_ns_per_switch)
                    ))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
    }
    let pct = watched_ns as f64 / watched_cpu.max(1) as f64 * 100.0;
    Ok((per_mode, pct))
}

/// Kernel statistics per program: one ping-pong per mode with stats on.
fn stats_pass(
    args: &BenchArgs,
    inproc: &mut InProcess,
) -> Result<Vec<(String, f64, u64)>, BenchError> {
    let mut out = Vec::new();
    let Ok(_stats) = aya::sys::enable_stats(aya::sys::Stats::RunTime) else {
        return Ok(out);
    };
    for mode in [Mode::EmptyProgram, Mode::Sensor, Mode::SensorWatched] {
        let links = inproc.attach(mode)?;
        let before = probe_stats(&inproc.ids);
        ping_pong(args.iterations)?;
        let after = probe_stats(&inproc.ids);
        inproc.detach(links)?;
        for (name, rt, cnt) in after {
            let Some((_, rt0, cnt0)) = before.iter().find(|(n0, _, _)| *n0 == name) else {
                continue;
            };
            let n = cnt.saturating_sub(*cnt0);
            if n < 100 {
                // Block and exit programs fire a few times by chance; a
                // handful of runs makes no average.
                continue;
            }
            let ns = rt.saturating_sub(*rt0).as_nanos() as f64 / n as f64;
            out.push((format!("{name} ({})", mode.label()), ns, n));
        }
    }
    Ok(out)
}

#[derive(Default)]
struct ChildFigures {
    base: Vec<Sample>,
    with: Vec<Sample>,
    rss_idle: u64,
    rss_load: u64,
    cpu_idle: f64,
    cpu_load: Vec<f64>,
}

/// Measurements per block in phase 2.
const CHILD_BLOCK: usize = 5;

/// Phase 2: real sensor processes, one per binary. Each cycle measures a
/// block with nothing started, then for each binary starts it, measures a
/// block, and stops it; every block is paired with the cycle's first.
fn phase2(args: &BenchArgs, bins: &[std::path::PathBuf]) -> Result<Vec<ChildFigures>, BenchError> {
    let mut figs: Vec<ChildFigures> = bins.iter().map(|_| ChildFigures::default()).collect();
    for cycle in 0..args.child_rounds {
        let mut base = Vec::new();
        for _ in 0..CHILD_BLOCK {
            base.push(ping_pong(args.iterations)?);
        }
        for (bin, f) in bins.iter().zip(figs.iter_mut()) {
            f.base.extend_from_slice(&base);
            let sensor = start_sensor(bin)?;
            let pid = sensor.0.id();
            // Let start-up (first discovery, seeding) settle.
            std::thread::sleep(Duration::from_secs(1));
            if cycle == 0 {
                let c0 = cpu_ns(pid);
                std::thread::sleep(args.idle);
                f.cpu_idle =
                    cpu_ns(pid).saturating_sub(c0) as f64 / args.idle.as_nanos() as f64 * 100.0;
                f.rss_idle = rss_kib(pid);
            }
            let c0 = cpu_ns(pid);
            let t0 = Instant::now();
            for _ in 0..CHILD_BLOCK {
                f.with.push(ping_pong(args.iterations)?);
            }
            let c1 = cpu_ns(pid);
            f.cpu_load
                .push(c1.saturating_sub(c0) as f64 / t0.elapsed().as_nanos().max(1) as f64 * 100.0);
            f.rss_load = f.rss_load.max(rss_kib(pid));
            drop(sensor);
            if args.verbose {
                let n = f.base.len();
                eprintln!(
                    "child cycle {}: CPU ns/switch without {:.0}, with {} {:.0}",
                    cycle + 1,
                    median(
                        &f.base[n - CHILD_BLOCK..]
                            .iter()
                            .map(Sample::cpu_ns_per_switch)
                            .collect::<Vec<_>>()
                    ),
                    bin.display(),
                    median(
                        &f.with[n - CHILD_BLOCK..]
                            .iter()
                            .map(Sample::cpu_ns_per_switch)
                            .collect::<Vec<_>>()
                    ),
                );
            }
        }
    }
    Ok(figs)
}

/// (added CPU ns, added wall ns, throughput ratio): medians over pairs.
fn paired(with: &[Sample], base: &[Sample]) -> (f64, f64, f64) {
    let cpu: Vec<f64> = with
        .iter()
        .zip(base)
        .map(|(w, b)| w.cpu_ns_per_switch() - b.cpu_ns_per_switch())
        .collect();
    let wall: Vec<f64> = with
        .iter()
        .zip(base)
        .map(|(w, b)| w.wall_ns_per_switch() - b.wall_ns_per_switch())
        .collect();
    let ratio: Vec<f64> = with
        .iter()
        .zip(base)
        .map(|(w, b)| b.wall_ns_per_switch() / w.wall_ns_per_switch().max(1.0))
        .collect();
    (median(&cpu), median(&wall), median(&ratio))
}

pub fn run(args: &BenchArgs) -> Result<(), BenchError> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(BenchError::NotRoot);
    }
    let mut inproc = InProcess::open()?;
    // Warm up caches and the CPU frequency before measuring anything.
    for _ in 0..5 {
        ping_pong(args.iterations)?;
    }
    let (per_mode, watched_runtime_pct) = phase1(args, &mut inproc)?;
    let base = &per_mode[0];
    let modes: Vec<ModeFigures> = MODES
        .iter()
        .zip(&per_mode)
        .map(|(&mode, v)| {
            let (added_cpu, added_wall, ratio) = paired(v, base);
            ModeFigures {
                mode,
                wall_ns_per_switch: median(
                    &v.iter().map(Sample::wall_ns_per_switch).collect::<Vec<_>>(),
                ),
                cpu_ns_per_switch: median(
                    &v.iter().map(Sample::cpu_ns_per_switch).collect::<Vec<_>>(),
                ),
                added_cpu_ns_per_switch: added_cpu,
                added_wall_ns_per_switch: added_wall,
                throughput_ratio: ratio,
            }
        })
        .collect();
    let program_ns_beyond_floor =
        modes[2].added_cpu_ns_per_switch - modes[1].added_cpu_ns_per_switch;
    let probe_ns_per_event = stats_pass(args, &mut inproc)?;
    let foreign = foreign_switch_programs(&inproc.ids);
    let switch_insns = aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .find(|p| {
            inproc
                .ids
                .iter()
                .any(|(id, n)| *id == p.id() && *n == names::PROG_SCHED_SWITCH)
        })
        .map(|p| (p.size_translated().unwrap_or(0) / 8, p.size_jitted()));
    drop(inproc);

    let mut bins = vec![std::env::current_exe().map_err(io("finding our own binary"))?];
    bins.extend(args.compare_bin.clone());
    let mut children = phase2(args, &bins)?.into_iter();
    let child = children.next().unwrap_or_default();
    let (child_cpu, child_wall, child_ratio) = paired(&child.with, &child.base);
    let compare = children.next().map(|c| {
        let (cpu, wall, ratio) = paired(&c.with, &c.base);
        CompareFigures {
            bin: args.compare_bin.clone().unwrap_or_default(),
            added_cpu_ns_per_switch: cpu,
            added_wall_ns_per_switch: wall,
            throughput_ratio: ratio,
            rss_idle_kib: c.rss_idle,
            rss_load_kib: c.rss_load,
            cpu_idle_pct: c.cpu_idle,
            cpu_load_pct: median(&c.cpu_load),
        }
    });
    let figures = Figures {
        iterations: args.iterations,
        rounds: args.rounds,
        modes,
        program_ns_beyond_floor,
        watched_runtime_pct,
        probe_ns_per_event,
        foreign_switch_programs: foreign,
        sched_switch_xlated_insns: switch_insns.map_or(0, |v| v.0),
        sched_switch_jited_bytes: switch_insns.map_or(0, |v| v.1),
        child_samples: child.with.len(),
        child_added_cpu_ns_per_switch: child_cpu,
        child_added_wall_ns_per_switch: child_wall,
        child_throughput_ratio: child_ratio,
        sensor_rss_idle_kib: child.rss_idle,
        sensor_rss_load_kib: child.rss_load,
        sensor_cpu_idle_pct: child.cpu_idle,
        sensor_cpu_load_pct: median(&child.cpu_load),
        kernel_pct_at_100k: child_cpu.max(0.0) * 1e5 / 1e9 * 100.0,
        compare,
    };
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&figures).unwrap_or_default()
        );
    } else {
        print!("{}", render(&figures));
    }
    Ok(())
}

fn render(f: &Figures) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "pipe ping-pong between 2 threads pinned to CPU 0, {} round trips per measurement.\n\
         Per context switch of those threads (counted by getrusage); CPU = both threads' CPU time,\n\
         which excludes time other tasks take on this shared VM; added = median of same-round differences.",
        f.iterations
    );
    let _ = writeln!(
        s,
        "phase 1, this process attaches the sensor's own object; {} rounds, modes in rotating order:",
        f.rounds
    );
    let _ = writeln!(
        s,
        "  {:<32} {:>9} {:>9} {:>10} {:>10} {:>7}",
        "mode", "wall ns", "CPU ns", "added CPU", "added wall", "ratio"
    );
    for m in &f.modes {
        let _ = writeln!(
            s,
            "  {:<32} {:>9.0} {:>9.0} {:>+10.1} {:>+10.1} {:>7.3}",
            m.mode.label(),
            m.wall_ns_per_switch,
            m.cpu_ns_per_switch,
            m.added_cpu_ns_per_switch,
            m.added_wall_ns_per_switch,
            m.throughput_ratio
        );
    }
    let _ = writeln!(
        s,
        "  sensor program beyond the empty-program floor: {:+.1} CPU ns/switch",
        f.program_ns_beyond_floor
    );
    let _ = writeln!(
        s,
        "  runtime accounting check: the watched mode credited {:.1} % of the threads' CPU time to their process",
        f.watched_runtime_pct
    );
    let _ = writeln!(
        s,
        "  vigil_sched_switch: {} instructions after the verifier, {} bytes JITed",
        f.sched_switch_xlated_insns, f.sched_switch_jited_bytes
    );
    if f.foreign_switch_programs > 0 {
        let _ = writeln!(
            s,
            "  NOTE: {} other vigil_sched_switch program(s) loaded by other processes (a lab's sensors?) run in every mode, baseline included",
            f.foreign_switch_programs
        );
    }
    for (name, ns, cnt) in &f.probe_ns_per_event {
        let _ = writeln!(
            s,
            "  kernel stats (timing adds its own cost): {name:<50} {ns:>5.0} ns/run over {cnt} runs"
        );
    }
    let _ = writeln!(
        s,
        "phase 2, a real `vigil-sensor run` child, {} measurements paired with ones just before it started:",
        f.child_samples
    );
    let _ = writeln!(
        s,
        "  added {:+.1} CPU ns/switch ({:+.1} wall), throughput ratio {:.3}",
        f.child_added_cpu_ns_per_switch, f.child_added_wall_ns_per_switch, f.child_throughput_ratio
    );
    let _ = writeln!(
        s,
        "  sensor RSS idle {:.1} MiB, under load {:.1} MiB; sensor CPU idle {:.2} %, under load {:.2} % of a core",
        f.sensor_rss_idle_kib as f64 / 1024.0,
        f.sensor_rss_load_kib as f64 / 1024.0,
        f.sensor_cpu_idle_pct,
        f.sensor_cpu_load_pct
    );
    let _ = writeln!(
        s,
        "  at 100k switches/s the probes cost {:.2} % of a core, plus the sensor process's own CPU",
        f.kernel_pct_at_100k
    );
    if let Some(c) = &f.compare {
        let _ = writeln!(
            s,
            "  compared, same cycles: {}: added {:+.1} CPU ns/switch ({:+.1} wall), ratio {:.3}; \
             RSS {:.1}/{:.1} MiB, CPU {:.2}/{:.2} % idle/load",
            c.bin.display(),
            c.added_cpu_ns_per_switch,
            c.added_wall_ns_per_switch,
            c.throughput_ratio,
            c.rss_idle_kib as f64 / 1024.0,
            c.rss_load_kib as f64 / 1024.0,
            c.cpu_idle_pct,
            c.cpu_load_pct
        );
    }
    s
}
