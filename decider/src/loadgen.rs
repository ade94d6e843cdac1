//! The decider benchmark (`cargo xtask bench decider` runs `vigil-loadgen`):
//! starts a real `vigil-decider serve` as a child process, drives N simulated
//! sensors at one heartbeat per second each over real gRPC on loopback (one
//! connection per sensor, as in production), queries `GetNode` and `ListNodes`
//! meanwhile, and reports the decider's CPU and RSS, heartbeat lag (send →
//! ack, i.e. through the engine's loop) and query latency percentiles:
//! `ListNodes` per page and per walk through every page.

use anyhow::{bail, Context};
use clap::Parser;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tonic::metadata::MetadataValue;
use tonic::transport::{Channel, Endpoint};
use vigil_proto::v1;
use vigil_proto::v1::operator_client::OperatorClient;
use vigil_proto::v1::sensor_stream_client::SensorStreamClient;

#[derive(Debug, Parser)]
#[command(
    name = "vigil-loadgen",
    about = "Load test for vigil-decider: N simulated sensors + operator queries"
)]
pub struct Args {
    /// Sensor counts to run, one after the other.
    #[arg(long, value_delimiter = ',', default_value = "1000,5000")]
    pub nodes: Vec<usize>,
    /// Measurement time per run (after warm-up).
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Time for every sensor to connect and settle before measuring.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub warmup: Duration,
    /// GetNode calls per second (a walk through every ListNodes page runs
    /// once per second besides).
    #[arg(long, default_value_t = 50)]
    pub get_node_rate: u32,
    /// Instances reported in each heartbeat (realistic payload size).
    #[arg(long, default_value_t = 10)]
    pub instances: usize,
    /// The decider binary (default: next to this one).
    #[arg(long)]
    pub decider: Option<PathBuf>,
    /// Another vigil-decider (e.g. a build of the previous commit) to run
    /// right before this one at each size: before/after on the same machine
    /// state.
    #[arg(long)]
    pub baseline: Option<PathBuf>,
    /// Runs per size (and per decider): the machine is noisy, compare medians.
    #[arg(long, default_value_t = 1)]
    pub rounds: usize,
    /// Print results as JSON lines too.
    #[arg(long)]
    pub json: bool,
    /// TOML appended to the decider's config, for experiments
    /// (e.g. `[engine]` then `tick = "1s"` on the next line).
    #[arg(long, default_value = "")]
    pub extra_config: String,
    /// Skip ListNodes (to see GetNode alone).
    #[arg(long)]
    pub no_list: bool,
    /// ListNodes page size (0: the decider's default). A decider from
    /// before paging answers with every node at once whatever this says.
    #[arg(long, default_value_t = 0)]
    pub page_size: i32,
    /// Keep each run's directory (decider config and log) and print its path.
    #[arg(long)]
    pub keep: bool,
}

pub fn main() -> i32 {
    let args = Args::parse();
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("vigil-loadgen: cannot start the async runtime: {e}");
            return 1;
        }
    };
    match rt.block_on(run(args)) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("vigil-loadgen: {e:#}");
            1
        }
    }
}

/// What one run measured.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
    pub nodes: usize,
    pub seconds: f64,
    pub heartbeats_acked_per_s: f64,
    pub cpu_percent_of_one_core: f64,
    /// The load generator's own CPU: on a 2-core machine, when it nears
    /// 100 % the latencies include its own scheduling delays.
    pub loadgen_cpu_percent: f64,
    pub rss_max_mb: f64,
    pub heartbeat_lag_p50_ms: f64,
    pub heartbeat_lag_p99_ms: f64,
    pub get_node_p50_ms: f64,
    pub get_node_p99_ms: f64,
    /// One ListNodes call: one page.
    pub list_page_p50_ms: f64,
    pub list_page_p99_ms: f64,
    /// Every page of one listing, one after the other.
    pub list_walk_p50_ms: f64,
    pub list_walk_p99_ms: f64,
    /// Most nodes in one answer: the page size, or every node from a
    /// decider that does not page.
    pub list_page_max_nodes: usize,
    pub stream_errors: u64,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let decider = match &args.decider {
        Some(p) => p.clone(),
        None => std::env::current_exe()
            .context("locating this executable")?
            .with_file_name("vigil-decider"),
    };
    if !decider.is_file() {
        bail!(
            "{} not found; build it (`cargo build --release -p vigil-decider`) or pass --decider",
            decider.display()
        );
    }
    let mut deciders = vec![("this", decider)];
    if let Some(b) = &args.baseline {
        if !b.is_file() {
            bail!("baseline {} not found", b.display());
        }
        deciders.insert(0, ("baseline", b.clone()));
    }
    println!(
        "{:>8}  {:>6}  {:>8}  {:>7}  {:>8}  {:>9}  {:>16}  {:>16}  {:>22}  {:>16}  {:>6}",
        "decider",
        "nodes",
        "hb/s",
        "cpu %",
        "rss MB",
        "gen cpu %",
        "hb lag p50/p99",
        "GetNode p50/p99",
        "ListNodes page p50/p99",
        "full walk p50/p99",
        "errors"
    );
    for &n in &args.nodes {
        for _ in 0..args.rounds.max(1) {
            // Baseline and candidate back to back at each size, so both see
            // the same machine (this one is shared and its load drifts).
            for (label, path) in &deciders {
                let r = one_run(path, n, &args)
                    .await
                    .with_context(|| format!("run with {n} sensors ({label})"))?;
                println!(
                    "{:>8}  {:>6}  {:>8.0}  {:>7.1}  {:>8.1}  {:>9.0}  {:>7.2}/{:<7.2}ms  {:>7.2}/{:<7.2}ms  {:>5} {:>6.2}/{:<7.2}ms  {:>7.2}/{:<7.2}ms  {:>6}",
                    label,
                    r.nodes,
                    r.heartbeats_acked_per_s,
                    r.cpu_percent_of_one_core,
                    r.rss_max_mb,
                    r.loadgen_cpu_percent,
                    r.heartbeat_lag_p50_ms,
                    r.heartbeat_lag_p99_ms,
                    r.get_node_p50_ms,
                    r.get_node_p99_ms,
                    format!("({})", r.list_page_max_nodes),
                    r.list_page_p50_ms,
                    r.list_page_p99_ms,
                    r.list_walk_p50_ms,
                    r.list_walk_p99_ms,
                    r.stream_errors
                );
                if args.json {
                    println!(
                        "{}",
                        serde_json::to_string(&r).context("encoding the report")?
                    );
                }
            }
        }
    }
    Ok(())
}

/// A failed sensor stream's pause before it connects again.
const RECONNECT: Duration = Duration::from_secs(1);

/// Kills the decider child when the run ends, however it ends.
struct Child(tokio::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.start_kill();
    }
}

fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free loopback port")?;
    Ok(l.local_addr().context("reading the free port")?.port())
}

fn write_config(dir: &Path, n: usize, port: u16, extra: &str) -> anyhow::Result<PathBuf> {
    use std::fmt::Write;
    let mut cfg = format!(
        "[server]\nlisten = \"127.0.0.1:{port}\"\n[metrics]\nenabled = false\n[nova]\nenabled = false\n\
         [ping]\nenabled = false\n[log]\nfilter = \"warn\"\n"
    );
    for i in 0..n {
        let token = dir.join(format!("node{i}.token"));
        std::fs::write(&token, token_of(i)).context("writing a token file")?;
        let _ = write!(
            cfg,
            "[[node]]\nname = \"{}\"\ntoken_file = \"{}\"\n",
            node_name(i),
            token.display()
        );
    }
    cfg.push_str(extra);
    cfg.push('\n');
    let path = dir.join("decider.toml");
    std::fs::write(&path, cfg).context("writing the decider config")?;
    Ok(path)
}

fn node_name(i: usize) -> String {
    format!("bench{i:05}")
}

fn token_of(i: usize) -> String {
    format!("bench-token-{i:08}-0123456789abcdef")
}

async fn one_run(decider: &Path, n: usize, args: &Args) -> anyhow::Result<Report> {
    let dir = tempfile::Builder::new()
        .prefix("vigil-loadgen-")
        .disable_cleanup(args.keep)
        .tempdir()
        .context("creating a temporary directory")?;
    if args.keep {
        eprintln!(
            "vigil-loadgen: {n} nodes: decider log in {}",
            dir.path().join("decider.log").display()
        );
    }
    let port = free_port()?;
    let config = write_config(dir.path(), n, port, &args.extra_config)?;
    let log = std::fs::File::create(dir.path().join("decider.log"))
        .context("creating the decider log")?;
    let child = tokio::process::Command::new(decider)
        .arg("serve")
        .arg("--config")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting {}", decider.display()))?;
    let child = Child(child);
    let pid = child.0.id().context("the decider exited at once")?;
    let url = format!("http://127.0.0.1:{port}");

    // Wait until the decider answers.
    let started = Instant::now();
    let mut op = loop {
        if let Ok(ch) = Endpoint::from_shared(url.clone())?.connect().await {
            let mut c = OperatorClient::new(ch).max_decoding_message_size(64 << 20);
            let first = v1::ListNodesRequest {
                page_size: 1,
                ..Default::default()
            };
            if c.list_nodes(first).await.is_ok() {
                break c;
            }
        }
        if started.elapsed() > Duration::from_secs(30) {
            bail!(
                "the decider did not answer on {url} within 30 s; see {}",
                dir.path().join("decider.log").display()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    let stats = Arc::new(Stats::default());
    let mut sensors = tokio::task::JoinSet::new();
    // Spread connection setup and heartbeat phases over one interval.
    for i in 0..n {
        let (url, stats, instances) = (url.clone(), stats.clone(), args.instances);
        let phase = Duration::from_micros((i as u64 * 1_000_000) / n as u64);
        sensors.spawn(async move {
            tokio::time::sleep(phase).await;
            // Reconnect after a failure, as the real sensor does: thousands
            // of connects within a second can overflow the decider's accept
            // queue on a busy machine (connection reset), and a sensor that
            // gave up would leave the run with fewer nodes than it names.
            while let Err(e) = sensor(i, &url, instances, stats.clone()).await {
                stats
                    .errors
                    .lock()
                    .map(|mut v| v.push(format!("{e:#}")))
                    .ok();
                tokio::time::sleep(RECONNECT + phase).await;
            }
        });
    }
    tokio::time::sleep(args.warmup).await;

    // Measure.
    stats
        .measuring
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let acked_before = stats.acked.load(std::sync::atomic::Ordering::SeqCst);
    let cpu_before = cpu_ticks(pid)?;
    let self_before = cpu_ticks(std::process::id())?;
    let t0 = Instant::now();
    let mut get_lat = Vec::new();
    let mut page_lat = Vec::new();
    let mut walk_lat = Vec::new();
    let mut page_max = 0;
    let mut rss_max = rss_kb(pid)?;
    let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
    let get_every = Duration::from_secs_f64(1.0 / f64::from(args.get_node_rate.max(1)));
    let mut next_list = Instant::now();
    let mut next_rss = Instant::now();
    while t0.elapsed() < args.duration {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let name = node_name((seed % n as u64) as usize);
        let q = Instant::now();
        op.get_node(v1::GetNodeRequest { name })
            .await
            .context("GetNode during the run")?;
        get_lat.push(q.elapsed());
        if !args.no_list && Instant::now() >= next_list {
            // A walk a second moves as much data as the single 5,000-node
            // answer a second did before paging: the load stays comparable.
            let walk = Instant::now();
            let mut page_token = String::new();
            loop {
                let q = Instant::now();
                let page = op
                    .list_nodes(v1::ListNodesRequest {
                        page_size: args.page_size,
                        page_token,
                        verdict: 0,
                    })
                    .await
                    .context("ListNodes during the run")?
                    .into_inner();
                page_lat.push(q.elapsed());
                page_max = page_max.max(page.nodes.len());
                if page.next_page_token.is_empty() {
                    break;
                }
                page_token = page.next_page_token;
            }
            walk_lat.push(walk.elapsed());
            next_list += Duration::from_secs(1);
        }
        if Instant::now() >= next_rss {
            rss_max = rss_max.max(rss_kb(pid)?);
            next_rss += Duration::from_secs(1);
        }
        tokio::time::sleep(get_every.saturating_sub(q.elapsed())).await;
    }
    let secs = t0.elapsed().as_secs_f64();
    let cpu_after = cpu_ticks(pid)?;
    let self_after = cpu_ticks(std::process::id())?;
    rss_max = rss_max.max(rss_kb(pid)?);
    let acked = stats.acked.load(std::sync::atomic::Ordering::SeqCst) - acked_before;
    sensors.abort_all();
    drop(child);

    // SAFETY-free: sysconf is a libc call without memory effects.
    let hz = clock_ticks_per_second();
    let mut lag = stats.lag.lock().map(|v| v.clone()).unwrap_or_default();
    let errors = stats.errors.lock().map(|v| v.len() as u64).unwrap_or(0);
    if let Ok(v) = stats.errors.lock() {
        if let Some(first) = v.first() {
            eprintln!(
                "vigil-loadgen: {} sensor stream(s) failed and reconnected; first: {first}",
                v.len()
            );
        }
    }
    Ok(Report {
        nodes: n,
        seconds: secs,
        heartbeats_acked_per_s: acked as f64 / secs,
        cpu_percent_of_one_core: (cpu_after - cpu_before) as f64 / hz / secs * 100.0,
        loadgen_cpu_percent: (self_after - self_before) as f64 / hz / secs * 100.0,
        rss_max_mb: rss_max as f64 / 1024.0,
        heartbeat_lag_p50_ms: pct(&mut lag, 0.50),
        heartbeat_lag_p99_ms: pct(&mut lag, 0.99),
        get_node_p50_ms: pct(&mut get_lat, 0.50),
        get_node_p99_ms: pct(&mut get_lat, 0.99),
        list_page_p50_ms: pct(&mut page_lat, 0.50),
        list_page_p99_ms: pct(&mut page_lat, 0.99),
        list_walk_p50_ms: pct(&mut walk_lat, 0.50),
        list_walk_p99_ms: pct(&mut walk_lat, 0.99),
        list_page_max_nodes: page_max,
        stream_errors: errors,
    })
}

#[derive(Default)]
struct Stats {
    measuring: std::sync::atomic::AtomicBool,
    acked: std::sync::atomic::AtomicU64,
    lag: Mutex<Vec<Duration>>,
    errors: Mutex<Vec<String>>,
}

fn heartbeat(i: usize, seq: u64, instances: usize) -> v1::SensorMessage {
    v1::SensorMessage {
        kind: Some(v1::sensor_message::Kind::Heartbeat(v1::Heartbeat {
            node: node_name(i),
            boot_id: format!("boot-{i}"),
            seq,
            sensor_version: "loadgen".to_string(),
            mode: v1::ProbeMode::Ebpf as i32,
            interval_ms: 1000,
            instances: (0..instances)
                .map(|k| v1::Instance {
                    uuid: format!("{i:08}-0000-4000-8000-{k:012}"),
                    name: format!("instance-{k:08x}"),
                    pid: 1000 + k as u32,
                    alive: true,
                    cpu_ns_delta: 3_000_000,
                    cpu_ns_total: seq * 3_000_000,
                    exited: false,
                })
                .collect(),
            nova_compute: Some(v1::NovaCompute {
                state: v1::nova_compute::State::Running as i32,
                pid: 900,
                blocked_ms: 0,
            }),
            health: Some(v1::SensorHealth {
                attached_probes: vec![
                    "sched_switch".into(),
                    "block_rq_issue".into(),
                    "block_rq_complete".into(),
                ],
                ..Default::default()
            }),
            ..Default::default()
        })),
    }
}

/// One simulated sensor: its own connection and stream, a heartbeat per
/// second, lag measured from send to the ack of that sequence.
async fn sensor(i: usize, url: &str, instances: usize, stats: Arc<Stats>) -> anyhow::Result<()> {
    let channel: Channel = Endpoint::from_shared(url.to_string())?
        .connect()
        .await
        .context("connecting")?;
    let mut client = SensorStreamClient::new(channel);
    let (tx, rx) = mpsc::channel(8);
    let sent: Arc<Mutex<std::collections::VecDeque<(u64, Instant)>>> = Arc::default();
    let mut seq = 1;
    sent.lock()
        .map(|mut s| s.push_back((seq, Instant::now())))
        .ok();
    tx.send(heartbeat(i, seq, instances))
        .await
        .context("queueing the first heartbeat")?;
    let mut req = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    let bearer: MetadataValue<_> = format!("Bearer {}", token_of(i))
        .parse()
        .context("token as metadata")?;
    req.metadata_mut().insert("authorization", bearer);
    let mut inbound = client
        .stream(req)
        .await
        .context("opening the stream")?
        .into_inner();
    let reader = {
        let (sent, stats) = (sent.clone(), stats.clone());
        async move {
            while let Some(m) = inbound.message().await? {
                if let Some(v1::decider_message::Kind::Ack(a)) = m.kind {
                    let now = Instant::now();
                    let mut q = sent
                        .lock()
                        .map_err(|_| tonic::Status::internal("poisoned"))?;
                    while let Some(&(s, at)) = q.front() {
                        if s > a.seq {
                            break;
                        }
                        q.pop_front();
                        if s == a.seq && stats.measuring.load(std::sync::atomic::Ordering::Relaxed)
                        {
                            stats
                                .acked
                                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            if let Ok(mut l) = stats.lag.lock() {
                                l.push(now - at);
                            }
                        }
                    }
                }
            }
            Ok::<(), tonic::Status>(())
        }
    };
    let writer = async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.tick().await;
        loop {
            tick.tick().await;
            seq += 1;
            sent.lock()
                .map(|mut s| s.push_back((seq, Instant::now())))
                .ok();
            if tx.send(heartbeat(i, seq, instances)).await.is_err() {
                return Ok::<(), tonic::Status>(());
            }
        }
    };
    tokio::select! {
        r = reader => r.context("reading acks")?,
        r = writer => r.context("sending heartbeats")?,
    }
    Ok(())
}

fn pct(v: &mut [Duration], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_unstable();
    let idx = ((v.len() as f64 - 1.0) * q).round() as usize;
    v[idx.min(v.len() - 1)].as_secs_f64() * 1000.0
}

/// utime + stime of a process, in clock ticks (/proc/PID/stat fields 14, 15).
fn cpu_ticks(pid: u32) -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .context("reading the decider's /proc stat")?;
    // The command name (field 2) may contain spaces; fields after ')' are fixed.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("parsing /proc stat")?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = f
        .get(11)
        .and_then(|s| s.parse().ok())
        .context("utime in /proc stat")?;
    let stime: u64 = f
        .get(12)
        .and_then(|s| s.parse().ok())
        .context("stime in /proc stat")?;
    Ok(utime + stime)
}

fn rss_kb(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .context("reading the decider's /proc status")?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("VmRSS in /proc status")
}

fn clock_ticks_per_second() -> f64 {
    // sysconf(_SC_CLK_TCK) is 100 on every Linux we run on; read it anyway.
    let hz = nix_free_sysconf_clk_tck();
    if hz > 0 {
        hz as f64
    } else {
        100.0
    }
}

fn nix_free_sysconf_clk_tck() -> i64 {
    // `libc::sysconf` is a safe-to-call FFI function but still `unsafe` in
    // Rust; this crate forbids unsafe, so take the value from getconf instead.
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100)
}
