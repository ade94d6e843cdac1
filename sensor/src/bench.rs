//! `vigil-sensor bench-switch` (hidden; run by `cargo xtask bench sensor`):
//! what the sensor costs a context-switch-heavy host.
//!
//! A pipe ping-pong between two threads pinned to one CPU makes every
//! message a direct context switch, the worst case for a `sched_switch`
//! probe. Rounds alternate without and with a real `vigil-sensor run`
//! child attached, in the same run, so drift on a shared VM hits both
//! sides alike; the medians are compared. The kernel's own per-program
//! statistics (BPF_ENABLE_STATS) give the probes' cost per event. The
//! child's RSS and CPU are read from /proc while idle and under load.

use std::{
    io::{BufRead as _, BufReader},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::{clock, procfs};

#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Round trips per measurement (each is two context switches).
    #[arg(long, default_value_t = 200_000)]
    pub iterations: u64,
    /// Pairs of rounds (without sensor, with sensor).
    #[arg(long, default_value_t = 3)]
    pub rounds: u32,
    /// How long to measure the sensor's CPU while the host is idle.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "5s")]
    pub idle: Duration,
    /// Print the figures as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Why the benchmark could not run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("bench-switch needs root (it starts a sensor that loads eBPF)")]
    NotRoot,
    #[error("{what}")]
    Io {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("the sensor child did not attach its eBPF programs within 20 s (is it built with the eBPF object?)")]
    NoAttach,
}

fn io(what: &'static str) -> impl FnOnce(std::io::Error) -> BenchError {
    move |source| BenchError::Io { what, source }
}

/// Results, all per measurement round.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Figures {
    pub iterations: u64,
    pub rounds: u32,
    pub baseline_switches_per_s: Vec<f64>,
    pub sensor_switches_per_s: Vec<f64>,
    pub median_baseline_switches_per_s: f64,
    pub median_sensor_switches_per_s: f64,
    /// sensor / baseline throughput.
    pub throughput_ratio: f64,
    /// Added wall time per context switch, from the medians.
    pub added_ns_per_switch: f64,
    /// Kernel-measured average run time of each probe per event.
    pub probe_ns_per_event: Vec<(String, f64, u64)>,
    pub sensor_rss_kib: u64,
    pub sensor_cpu_idle_pct: f64,
    pub sensor_cpu_load_pct: f64,
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

fn system_switches() -> u64 {
    std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("ctxt ")?.trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Runs the ping-pong; returns (elapsed, context switches seen system-wide).
fn ping_pong(iterations: u64) -> Result<(Duration, u64), BenchError> {
    let (a_r, a_w) = pipe()?;
    let (b_r, b_w) = pipe()?;
    let peer = std::thread::spawn(move || {
        pin_to_cpu0();
        let mut byte = [0u8; 1];
        for _ in 0..iterations {
            // SAFETY: reading/writing one byte of our own buffer on our fds.
            unsafe {
                if libc::read(a_r.as_raw_fd(), byte.as_mut_ptr().cast(), 1) != 1 {
                    return;
                }
                if libc::write(b_w.as_raw_fd(), byte.as_ptr().cast(), 1) != 1 {
                    return;
                }
            }
        }
    });
    pin_to_cpu0();
    let before = system_switches();
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
    let elapsed = start.elapsed();
    let switches = system_switches().saturating_sub(before);
    let _ = peer.join();
    Ok((elapsed, switches.max(1)))
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

fn start_sensor() -> Result<SensorChild, BenchError> {
    let exe = std::env::current_exe().map_err(io("finding our own binary"))?;
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

fn probe_stats() -> Vec<(String, Duration, u64)> {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .filter_map(|p| {
            let name = p.name_as_str()?.to_string();
            name.starts_with("vigil_")
                .then(|| (name, p.run_time(), p.run_count()))
        })
        .collect()
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    s.get(s.len() / 2).copied().unwrap_or(0.0)
}

pub fn run(args: &BenchArgs) -> Result<(), BenchError> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(BenchError::NotRoot);
    }
    // Warm up caches and the CPU frequency before measuring anything.
    ping_pong(args.iterations / 10)?;
    let mut base = Vec::new();
    let mut with = Vec::new();
    let mut base_ns = Vec::new();
    let mut with_ns = Vec::new();
    let mut rss = 0;
    let mut idle_pct = 0.0;
    let mut load_pct = Vec::new();
    let mut per_probe: std::collections::BTreeMap<String, (Duration, u64)> = Default::default();
    for round in 0..args.rounds {
        let (t, n) = ping_pong(args.iterations)?;
        base.push(n as f64 / t.as_secs_f64());
        base_ns.push(t.as_nanos() as f64 / n as f64);

        let sensor = start_sensor()?;
        let pid = sensor.0.id();
        std::thread::sleep(Duration::from_secs(1));
        if round == 0 {
            let c0 = cpu_ns(pid);
            std::thread::sleep(args.idle);
            idle_pct = (cpu_ns(pid) - c0) as f64 / args.idle.as_nanos() as f64 * 100.0;
        }
        let c0 = cpu_ns(pid);
        let (t, n) = ping_pong(args.iterations)?;
        let c1 = cpu_ns(pid);
        rss = rss.max(rss_kib(pid));
        with.push(n as f64 / t.as_secs_f64());
        with_ns.push(t.as_nanos() as f64 / n as f64);
        load_pct.push(c1.saturating_sub(c0) as f64 / t.as_nanos() as f64 * 100.0);
        if round + 1 == args.rounds {
            // One more run with the kernel's per-program statistics on,
            // kept out of the throughput figures because timing every run
            // adds its own cost.
            if let Ok(_stats) = aya::sys::enable_stats(aya::sys::Stats::RunTime) {
                let before = probe_stats();
                ping_pong(args.iterations)?;
                for (name, rt, cnt) in probe_stats() {
                    if let Some((_, rt0, cnt0)) = before.iter().find(|(n0, _, _)| *n0 == name) {
                        per_probe
                            .insert(name, (rt.saturating_sub(*rt0), cnt.saturating_sub(*cnt0)));
                    }
                }
            }
        }
        drop(sensor);
        eprintln!(
            "round {}: baseline {:.0} switches/s, with sensor {:.0} switches/s",
            round + 1,
            base[base.len() - 1],
            with[with.len() - 1]
        );
    }
    let figures = Figures {
        iterations: args.iterations,
        rounds: args.rounds,
        median_baseline_switches_per_s: median(&base),
        median_sensor_switches_per_s: median(&with),
        throughput_ratio: median(&with) / median(&base).max(1.0),
        added_ns_per_switch: median(&with_ns) - median(&base_ns),
        baseline_switches_per_s: base,
        sensor_switches_per_s: with,
        probe_ns_per_event: per_probe
            .into_iter()
            .map(|(n, (rt, cnt))| (n, rt.as_nanos() as f64 / cnt.max(1) as f64, cnt))
            .collect(),
        sensor_rss_kib: rss,
        sensor_cpu_idle_pct: idle_pct,
        sensor_cpu_load_pct: median(&load_pct),
    };
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&figures).unwrap_or_default()
        );
    } else {
        println!(
            "pipe ping-pong, {} round trips per round, {} paired rounds, one CPU",
            figures.iterations, figures.rounds
        );
        println!(
            "  baseline      {:>10.0} switches/s (median)",
            figures.median_baseline_switches_per_s
        );
        println!(
            "  with sensor   {:>10.0} switches/s (median)",
            figures.median_sensor_switches_per_s
        );
        println!(
            "  throughput ratio {:.3}, added {:.0} ns per context switch",
            figures.throughput_ratio, figures.added_ns_per_switch
        );
        for (name, ns, cnt) in &figures.probe_ns_per_event {
            println!("  probe {name:<16} {ns:>7.0} ns/event over {cnt} events (kernel stats)");
        }
        println!(
            "  sensor RSS {} KiB; CPU idle {:.2} % of a core, under load {:.2} % of a core",
            figures.sensor_rss_kib, figures.sensor_cpu_idle_pct, figures.sensor_cpu_load_pct
        );
    }
    Ok(())
}
