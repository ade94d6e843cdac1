//! `cargo xtask demo [--keep] [--servers N] [--ha]`: the main job, end to end in the
//! lab. Setup if needed, eBPF object and binaries built, the lab up with 3
//! nodes and their sensors, servers booted on compute1, a real decider
//! started; then compute1 loses power and what Vigil does is shown as it
//! happens (verdicts with reasons, the fence, each evacuation), then the
//! timings. Without `--keep` everything it started is stopped and the lab
//! is left as found; with it the lab and the decider stay up to be tried.
//! `--ha`: three deciders on three lab controllers, the leader killed while
//! it evacuates (`demo/ha.rs`).

pub mod decider;
pub mod figures;
mod ha;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context, Result};
use clap::Parser;
use serde_json::Value;
use vigil_tests::lab::{Fault, Lab, Server};
use vigil_tests::local_net;

use crate::{cmd, ebpf, setup};
use decider::{Decider, Opts};
use figures::{secs, Figures};

/// The node that loses power.
const NODE: &str = "compute1";
const NODES: u32 = 3;

#[derive(Parser, Debug)]
#[command(name = "cargo xtask demo")]
struct Args {
    /// Leave the lab, the decider and the incident up afterwards, to try
    /// `grpcurl` and the CLI on them (`cargo xtask demo --teardown` ends it).
    #[arg(long)]
    keep: bool,
    /// ACTIVE servers booted on compute1 (one ERROR and one SHUTOFF server
    /// are booted besides them).
    #[arg(long, default_value_t = 4)]
    servers: usize,
    /// Stop a decider left by `--keep` and take the lab down.
    #[arg(long, conflicts_with_all = ["keep"])]
    teardown: bool,
    /// Three controllers, a decider in each (one leads, on etcd); the
    /// leader is SIGKILLed once it has begun evacuating, and another takes
    /// the incident over. Cannot be combined with `--keep`.
    #[arg(long, conflicts_with_all = ["teardown"])]
    ha: bool,
    /// Only check that the demo can start here (the decider's port free, and
    /// our lab up or no other lab holding its place), say so, and exit:
    /// 0 when it can, 1 with the reason when it cannot. Changes nothing.
    #[arg(long, conflicts_with_all = ["keep", "teardown"])]
    preflight: bool,
}

pub fn run(args: &[String]) -> Result<()> {
    let a = Args::try_parse_from(
        std::iter::once("cargo xtask demo".to_string()).chain(args.iter().cloned()),
    )
    .map_err(|e| anyhow!("{e}"))?;
    if !crate::is_root() {
        bail!("the demo runs the lab (network namespaces, cgroups, BMC emulators, a real Nova) and needs root: `sudo cargo xtask demo`");
    }
    if a.teardown {
        return teardown_kept();
    }
    if a.preflight {
        let was_up = preflight()?;
        println!(
            "preflight ok: {}; the decider's place {DECIDER_LISTEN} is free",
            if was_up {
                format!("the lab in {} is up", vigil_tests::lab::lab_dir().display())
            } else {
                "no lab is up and no other lab holds its place".to_string()
            }
        );
        return Ok(());
    }
    if a.servers == 0 || a.servers > 60 {
        bail!("--servers {}: between 1 and 60 (the lab hands out 151 instance addresses; Nova takes ≈3 s per server to boot)", a.servers);
    }
    if a.ha && a.keep {
        bail!("--ha --keep: not supported; the HA demo always takes its three controllers and deciders down (try the cluster by hand: `cargo xtask lab controllers up --count 3`, then one `vigil-decider serve` per controller, README \"Three controllers\")");
    }
    let started = Instant::now();
    let r = if a.ha { ha::demo(&a) } else { demo(&a) };
    println!(
        "\ndemo {} after {:.0} s",
        if r.is_ok() { "finished" } else { "FAILED" },
        started.elapsed().as_secs_f64()
    );
    r
}

fn banner(text: &str) {
    println!("\n━━ {text}");
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::root().join("target"))
}

fn demo_dir() -> PathBuf {
    target_dir().join("vigil-demo")
}

fn lab_script() -> PathBuf {
    crate::root().join("tests/lab/lab")
}

/// The binaries a run uses.
pub struct Bins {
    pub sensor: PathBuf,
    pub decider: PathBuf,
}

/// Setup (if incomplete), the eBPF object, and the two binaries. The sensor
/// is always the debug build: it is the one the lab runs by default (and
/// `lab sensor start` records it for later starts), so a run leaves other
/// users' nodes on the sensor they expect. The decider is the release build
/// when `release_decider` (benchmarks).
pub fn build(release_decider: bool) -> Result<Bins> {
    if setup::complete() {
        println!("==> setup: everything present (`cargo xtask setup --check`)");
    } else {
        println!("==> setup: this machine lacks some tools; installing them");
        setup::run(false).context("setup failed; fix the item named above and rerun")?;
    }
    ebpf::build()?;
    cmd::step(
        "building vigil-sensor (eBPF embedded) and vigil-decider",
        Command::new("cargo").args([
            "build",
            "-p",
            "vigil-sensor",
            "-p",
            "vigil-decider",
            "--bins",
        ]),
    )?;
    let debug = target_dir().join("debug");
    let mut bins = Bins {
        sensor: debug.join("vigil-sensor"),
        decider: debug.join("vigil-decider"),
    };
    if release_decider {
        cmd::step(
            "building vigil-decider (release)",
            Command::new("cargo").args(["build", "--release", "-p", "vigil-decider", "--bins"]),
        )?;
        bins.decider = target_dir().join("release/vigil-decider");
    }
    for b in [&bins.sensor, &bins.decider] {
        if !b.exists() {
            bail!("cargo build succeeded but {} is missing", b.display());
        }
    }
    Ok(bins)
}

/// Nodes whose sensor runs now.
pub fn sensors_running(lab: &Lab) -> Result<BTreeSet<String>> {
    Ok(lab
        .status()?
        .nodes
        .iter()
        .filter(|n| n.pid("sensor").is_some())
        .map(|n| n.name.clone())
        .collect())
}

/// Stops the sensors a run started (those not in `before`).
pub fn restore_sensors(lab: &Lab, before: &BTreeSet<String>) -> Result<()> {
    for n in lab.node_names() {
        if !before.contains(&n) {
            lab.sensor_stop(&n)?;
        }
    }
    Ok(())
}

/// Whether a lab is up now (lab.json written and `lab status` says up).
pub fn lab_is_up() -> bool {
    if !vigil_tests::lab::lab_dir().join("state/lab.json").exists() {
        return false;
    }
    cmd::output(Command::new(lab_script()).args(["status", "--json"]))
        .and_then(|s| serde_json::from_str::<Value>(&s).ok())
        .is_some_and(|v| v["up"] == true)
}

/// Whether this run may use the lab: the decider's port is free and either
/// our lab is up or no other lab holds the place. Returns whether ours was
/// up. Everything it asks is this machine's own state (see `local_net`).
pub fn preflight() -> Result<bool> {
    decider::port_free(DECIDER_LISTEN)?;
    let was_up = lab_is_up();
    if !was_up {
        other_lab_check()?;
    }
    Ok(was_up)
}

/// Where the lab's decider listens (CONTRACT.md).
pub const DECIDER_LISTEN: &str = "198.51.100.1:50051";

/// Node and bridge names are global, so only one lab can run on a machine;
/// one from another `VIGIL_LAB_DIR` shows as a local listener on Keystone's
/// address while ours is down. Say so before `up` half-builds next to it.
///
/// Decided from this machine's own socket table, never from a connect: a
/// network with a transparent proxy accepts a connect to any address, and
/// 198.51.100.1 is on no interface while no lab is up.
pub fn other_lab_check() -> Result<()> {
    let keystone: SocketAddr = ([198, 51, 100, 1], 5000).into();
    let listening = local_net::listeners(keystone)
        .with_context(|| format!("reading this machine's TCP listeners for {keystone}"))?;
    if listening.is_empty() {
        return Ok(());
    }
    let pids = local_net::listening_pids(keystone);
    let who: Vec<String> = if pids.is_empty() {
        listening
            .iter()
            .map(|l| {
                format!(
                    "{} (socket inode {}, owner not visible to this user)",
                    l.addr, l.inode
                )
            })
            .collect()
    } else {
        pids.iter()
            .map(|p| format!("pid {p}: {}", local_net::cmdline(*p)))
            .collect()
    };
    let hint = match pids.iter().find_map(|p| other_lab_dir(*p)) {
        Some(dir) => format!("it is the lab in {dir}; to use that one: `VIGIL_LAB_DIR={dir} cargo xtask …`, or wait until its owner takes it down"),
        None => "wait until its owner takes it down".to_string(),
    };
    bail!(
        "no lab is up in {}, but something on this machine listens on {keystone}, where the lab's Keystone must: another lab runs here, and only one can; {hint}.\n{}",
        vigil_tests::lab::lab_dir().display(),
        who.join("\n")
    );
}

/// The VIGIL_LAB_DIR in process `pid`'s environment.
fn other_lab_dir(pid: u32) -> Option<String> {
    let env = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    env.split(|b| *b == 0)
        .filter_map(|kv| std::str::from_utf8(kv).ok())
        .find_map(|kv| kv.strip_prefix("VIGIL_LAB_DIR=").map(str::to_string))
}

/// `lab up` with 3 nodes and sensors (progress shown), then the Rust handle.
/// `sensor_bin` is the sensor the nodes must run.
pub fn lab_up(sensor_bin: &Path) -> Result<&'static Lab> {
    cmd::step(
        &format!("lab up: {NODES} compute nodes with sensors, Nova, BMCs (≈100 s when down, <1 s when up and healthy, a boot's time per node to repair)"),
        Command::new(lab_script())
            .args(["up", "--nodes", &NODES.to_string(), "--sensors"])
            .env("VIGIL_SENSOR_BIN", sensor_bin),
    )
    .with_context(|| {
        format!(
            "the lab did not come up; its logs are in {}",
            vigil_tests::lab::lab_dir().join("logs").display()
        )
    })?;
    let lab = Lab::shared()?;
    Ok(lab)
}

/// Every node on, reporting, its sensor running (`up` on a lab that was
/// already up leaves sensors as they were), services enabled.
pub fn lab_ready(lab: &Lab, sensor_bin: &Path) -> Result<()> {
    let names = lab.node_names();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    lab.heal(&refs).context("healing the lab's nodes")?;
    let status = lab.status()?;
    for n in &status.nodes {
        if n.pid("sensor").is_none() {
            println!("    starting the sensor on {}", n.name);
            cmd::run(
                Command::new(lab_script())
                    .args(["sensor", "start", &n.name])
                    .env("VIGIL_SENSOR_BIN", sensor_bin),
            )?;
        }
    }
    reset_services(lab)
}

/// Nova un-forces-down an evacuated host only after its nova-compute has run
/// again (lab README), so this retries for a while.
pub fn reset_services(lab: &Lab) -> Result<()> {
    let end = Instant::now() + Duration::from_secs(180);
    loop {
        match lab.reset_services() {
            Ok(()) => return Ok(()),
            Err(e) if Instant::now() > end => {
                return Err(e.context("re-enabling the lab's nova-compute services"))
            }
            Err(_) => std::thread::sleep(Duration::from_secs(3)),
        }
    }
}

/// `lab boot`: `active` ACTIVE servers on NODE plus `error` in ERROR and
/// `shutoff` SHUTOFF.
pub fn boot(
    node: &str,
    active: usize,
    error: usize,
    shutoff: usize,
    name: &str,
) -> Result<Vec<Server>> {
    let n = active + error + shutoff;
    let mut c = Command::new(lab_script());
    c.args(["boot", &n.to_string(), node, "--json", "--name", name]);
    if error > 0 {
        c.args(["--status", &format!("error={error}")]);
    }
    if shutoff > 0 {
        c.args(["--status", &format!("shutoff={shutoff}")]);
    }
    let out = c.output().context("running tests/lab/lab boot")?;
    if !out.status.success() {
        bail!(
            "`{}` failed ({}): {}",
            cmd::show(&c),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    serde_json::from_slice(&out.stdout).context("parsing `lab boot --json`")
}

/// Deletes these servers and waits until Nova lists them gone (best
/// effort: says what it could not delete, and goes on).
pub fn delete_servers(lab: &Lab, ids: &[String]) {
    if let Err(e) = lab.delete_servers(ids) {
        eprintln!("warning: deleting the demo's servers: {e:#}");
    }
}

/// Steps 1 and 2 of both demos: the binaries built, the lab up and ready.
struct Started {
    decider_bin: PathBuf,
    /// The lab was up before the demo (someone else's: leave it as found).
    was_up: bool,
    sensors_before: BTreeSet<String>,
    lab: &'static Lab,
}

fn start_lab(lab_banner: &str) -> Result<Started> {
    banner("1. build");
    let Bins {
        sensor: sensor_bin,
        decider: decider_bin,
    } = build(false)?;

    banner(lab_banner);
    let was_up = preflight()?;
    let sensors_before: BTreeSet<String> = if was_up {
        sensors_running(Lab::shared()?)?
    } else {
        BTreeSet::new()
    };
    let lab = lab_up(&sensor_bin)?;
    let t = Instant::now();
    lab_ready(lab, &sensor_bin)?;
    println!(
        "    every node on, reporting to Nova, sensor running ({:.1} s)",
        t.elapsed().as_secs_f64()
    );
    Ok(Started {
        decider_bin,
        was_up,
        sensors_before,
        lab,
    })
}

fn demo(a: &Args) -> Result<()> {
    let Started {
        decider_bin,
        was_up,
        sensors_before,
        lab,
    } = start_lab("2. lab")?;

    let (servers, on_node_before) = boot_demo_servers(lab, a.servers)?;
    let ids: Vec<String> = servers.iter().map(|s| s.id.clone()).collect();

    banner("3. Vigil's decider");
    let mut d = Decider::start(
        &decider_bin,
        lab,
        &demo_dir(),
        &Opts {
            destination: "scheduler".into(),
            detach: a.keep,
        },
    )?;
    println!(
        "    vigil-decider serve on {} (config {}, log {})",
        d.listen,
        d.config.display(),
        d.log.display()
    );
    let t = Instant::now();
    d.wait_healthy(&lab.node_names(), Duration::from_secs(90))?;
    println!(
        "    every node healthy, sensors streaming ({:.1} s)\n",
        t.elapsed().as_secs_f64()
    );
    println!("$ vigil-decider nodes --server {}", d.url);
    d.print_nodes()?;

    banner(&format!("4. {NODE} loses power"));
    let watch = d.watch()?;
    // Let the watch subscribe before the cut, so no change is missed.
    std::thread::sleep(Duration::from_millis(300));
    let (cut_ms, report) = cut_power(lab)?;

    let inc = follow(&d, &watch, cut_ms, Duration::from_secs(300)).map_err(|e| d.explain(e))?;
    // The last verdict change (recovered) may trail the journal by a moment.
    std::thread::sleep(Duration::from_millis(700));
    print_changes(&watch, cut_ms);

    banner("5. summary");
    let fig = Figures::from_incident(&inc, cut_ms);
    summary(lab, &fig, &inc, &on_node_before, &ids, report)?;
    let id = inc["incident"]["summary"]["id"]
        .as_str()
        .unwrap_or("?")
        .to_string();
    drop(watch);

    banner("6. afterwards");
    if a.keep {
        // What --teardown needs to leave the lab as the demo found it.
        let kept = serde_json::json!({"lab_was_up": was_up, "sensors_before": sensors_before, "servers": ids});
        std::fs::write(d.dir.join("kept.json"), kept.to_string()).context("writing kept.json")?;
        keep_instructions(&d, &id);
        let pid = d.leave_running();
        println!("    (decider pid {pid})");
        return Ok(());
    }
    d.stop();
    println!("    decider stopped");
    leave_lab(lab, was_up, &sensors_before, &ids)?;
    println!(
        "    journal and decider log kept in {} (`vigil-decider incident {id} --journal {}`)",
        d.dir.display(),
        d.journal.display()
    );
    Ok(())
}

/// Boots the demo's servers on NODE and shows them; returns them and every
/// server on NODE then (the demo's and any a test left there).
fn boot_demo_servers(lab: &Lab, active: usize) -> Result<(Vec<Server>, BTreeMap<String, Server>)> {
    let t = Instant::now();
    println!(
        "==> booting {} ACTIVE + 1 ERROR + 1 SHUTOFF servers on {NODE} (≈3 s each: Nova serializes claims)",
        active
    );
    let servers = boot(NODE, active, 1, 1, "demo")?;
    println!("    done in {:.1} s", t.elapsed().as_secs_f64());
    for s in &servers {
        println!(
            "    {:<28} {:<8} on {}  {}",
            s.name,
            s.status,
            s.host.as_deref().unwrap_or("-"),
            s.ips.join(",")
        );
    }
    let on_node_before: BTreeMap<String, Server> = lab
        .servers()?
        .into_iter()
        .filter(|s| s.host.as_deref() == Some(NODE))
        .map(|s| (s.id.clone(), s))
        .collect();

    Ok((servers, on_node_before))
}

/// Cuts NODE's power and says so; returns when (Unix ms) and Nova's report
/// interval.
fn cut_power(lab: &Lab) -> Result<(i64, u64)> {
    let report = lab.info().controller.report_interval.unwrap_or(10);
    let f = lab
        .fault(Fault::PowerOff, NODE)
        .context("cutting the power")?;
    let cut_ms = f.began_unix_ms;
    println!(
        "  +{:5.1}s  lab: {NODE} power cut ({}); BMCs read {}",
        (now_ms() - cut_ms) as f64 / 1000.0,
        f.did.first().map(String::as_str).unwrap_or("power loss"),
        f.power
    );
    println!("           (Nova reports every {report} s; Vigil waits to see nova-compute's heartbeat stop, and for every witness to agree)");
    Ok((cut_ms, report))
}

/// After the demo: a lab the demo brought up goes down; one that was up
/// before (someone else's) is left as found: compute1 on and reporting,
/// services enabled, the demo's servers deleted, sensors as they were.
fn leave_lab(
    lab: &Lab,
    was_up: bool,
    sensors_before: &BTreeSet<String>,
    ids: &[String],
) -> Result<()> {
    if !was_up {
        return cmd::step(
            "lab down (the demo brought it up)",
            Command::new(lab_script()).arg("down"),
        );
    }
    let t = Instant::now();
    lab.heal(&[NODE]).context("powering compute1 back on")?;
    reset_services(lab)?;
    delete_servers(lab, ids);
    restore_sensors(lab, sensors_before)?;
    println!(
        "    the lab was up before the demo: {NODE} powered on and reporting, services re-enabled, demo servers deleted ({:.0} s); the lab stays up",
        t.elapsed().as_secs_f64()
    );
    Ok(())
}

/// What has been printed of the incident so far.
#[derive(Default)]
struct Shown {
    step_begins: BTreeSet<i64>,
    step_ends: BTreeSet<i64>,
    instances: BTreeMap<String, String>,
    events: usize,
}

/// Prints verdict changes and the incident's progress as they happen, until
/// the incident is closed or needs attention; returns its last JSON.
fn follow(d: &Decider, watch: &decider::Watch, cut_ms: i64, deadline: Duration) -> Result<Value> {
    let mut t = Tracking::default();
    follow_until(d, watch, cut_ms, deadline, &mut t, |_| false)
}

/// The incident being followed and what of it has been printed.
#[derive(Default)]
struct Tracking {
    id: Option<String>,
    shown: Shown,
}

/// [`follow`], which also returns as soon as `stop` holds of the incident
/// (then open); `t` carries what was printed over to the next call.
fn follow_until(
    d: &Decider,
    watch: &decider::Watch,
    cut_ms: i64,
    deadline: Duration,
    t: &mut Tracking,
    stop: impl Fn(&Value) -> bool,
) -> Result<Value> {
    let end = Instant::now() + deadline;
    loop {
        print_changes(watch, cut_ms);
        d.check_alive()?;
        if t.id.is_none() {
            t.id = d
                .incidents()?
                .iter()
                .find(|i| i["node"] == NODE)
                .and_then(|i| i["id"].as_str())
                .map(str::to_string);
            if let Some(id) = &t.id {
                println!("  {}  incident {id} opened", at(now_ms(), cut_ms));
            }
        }
        if let Some(id) = &t.id {
            let inc = d.incident(id)?;
            print_progress(&inc, cut_ms, &mut t.shown);
            let status = inc["incident"]["summary"]["status"].as_str().unwrap_or("");
            match status {
                "open" if stop(&inc) => return Ok(inc),
                "open" => {}
                "completed" => return Ok(inc),
                other => bail!(
                    "incident {id} ended {other}: {}",
                    inc["incident"]["summary"]["reason"]
                        .as_str()
                        .unwrap_or("no reason given")
                ),
            }
        }
        if Instant::now() > end {
            bail!(
                "no completed recovery of {NODE} within {deadline:?} of the power loss (incident: {})",
                t.id.as_deref().unwrap_or("none opened")
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn at(t: i64, cut_ms: i64) -> String {
    format!("+{:5.1}s", (t - cut_ms) as f64 / 1000.0)
}

fn print_changes(watch: &decider::Watch, cut_ms: i64) {
    while let Ok(c) = watch.rx.try_recv() {
        let reasons: Vec<&str> = c["reasons"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        println!(
            "  {}  verdict {}: {} → {}",
            at(c["at_unix_ms"].as_i64().unwrap_or(cut_ms), cut_ms),
            c["node"].as_str().unwrap_or("?"),
            c["from"].as_str().unwrap_or("?"),
            c["to"].as_str().unwrap_or("?"),
        );
        // Once the workflow runs, each change repeats the evidence it acted
        // on; its own first reason says what changed.
        let own: Vec<&&str> = reasons
            .iter()
            .filter(|r| !r.starts_with("evidence:"))
            .collect();
        let shown: Vec<&&str> = if own.is_empty() {
            reasons.iter().take(1).collect()
        } else {
            own
        };
        for r in shown.into_iter().take(4) {
            println!("             · {r}");
        }
    }
}

fn short(v: &Value, max: usize) -> String {
    let s = match v {
        Value::Null => return String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    if s.chars().count() > max {
        format!("{}…", s.chars().take(max).collect::<String>())
    } else {
        s
    }
}

fn print_progress(inc: &Value, cut_ms: i64, shown: &mut Shown) {
    let i = &inc["incident"];
    let names: BTreeMap<&str, &str> = i["instances"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| Some((r["server_id"].as_str()?, r["name"].as_str()?)))
        .collect();
    let mut lines: Vec<(i64, String)> = Vec::new();
    for s in i["steps"].as_array().into_iter().flatten() {
        let (Some(sid), Some(kind)) = (s["id"].as_i64(), s["kind"].as_str()) else {
            continue;
        };
        let target = s["target"].as_str().unwrap_or("");
        let who = names
            .get(target)
            .map_or(target.to_string(), |n| n.to_string());
        if shown.step_begins.insert(sid) {
            let began = s["began_at"].as_i64().unwrap_or(cut_ms);
            match kind {
                "power_off" => lines.push((began, format!("fence: power off through {target}"))),
                "evacuate" => lines.push((
                    began,
                    format!(
                        "evacuate {who} (attempt {}) {}",
                        s["attempt"],
                        short(&s["detail"]["request"], 80)
                    ),
                )),
                _ => {}
            }
        }
        if let (Some(ended), Some(outcome)) = (s["ended_at"].as_i64(), s["outcome"].as_str()) {
            if shown.step_ends.insert(sid) {
                let took = (ended - s["began_at"].as_i64().unwrap_or(ended)) as f64 / 1000.0;
                let text = match kind {
                    "self_check" => format!("self-check {outcome} {}", short(&s["result"], 90)),
                    "disable_service" => format!("Nova: {target} disabled ({outcome})"),
                    "power_off" => format!(
                        "fence: power-off call {outcome} in {took:.1} s {}",
                        short(&s["result"], 70)
                    ),
                    "confirm_off" => format!(
                        "fence CONFIRMED: {target} reads power off ({outcome}, {took:.1} s)"
                    ),
                    "force_down" => format!("Nova: {target} forced down ({outcome})"),
                    "select_instances" => {
                        format!("selected for evacuation: {}", short(&s["result"], 100))
                    }
                    "evacuate" => {
                        if outcome == "ok" {
                            continue;
                        }
                        format!("evacuate {who}: {outcome} {}", short(&s["result"], 90))
                    }
                    "verify" => continue,
                    "notify" => format!("notified {target} ({outcome})"),
                    other => format!("{other} {target}: {outcome} {}", short(&s["result"], 80)),
                };
                lines.push((ended, text));
            }
        }
    }
    for r in i["instances"].as_array().into_iter().flatten() {
        let (Some(sid), Some(state)) = (r["server_id"].as_str(), r["state"].as_str()) else {
            continue;
        };
        if shown.instances.get(sid).map(String::as_str) == Some(state) {
            continue;
        }
        shown.instances.insert(sid.to_string(), state.to_string());
        let t = r["finished_at"].as_i64().unwrap_or_else(now_ms);
        let took = match (r["started_at"].as_i64(), r["finished_at"].as_i64()) {
            (Some(a), Some(b)) => format!("took {:.1} s", (b - a) as f64 / 1000.0),
            _ => String::new(),
        };
        match state {
            "evacuated" => lines.push((
                t,
                format!(
                    "{} {} on {} → {} ({}), {took}",
                    r["name"].as_str().unwrap_or(sid),
                    r["expected"].as_str().unwrap_or("ACTIVE"),
                    r["from_host"].as_str().unwrap_or("?"),
                    r["to_host"].as_str().unwrap_or("?"),
                    r["status_before"].as_str().unwrap_or("?"),
                ),
            )),
            "failed" => lines.push((
                t,
                format!(
                    "{} FAILED: {}",
                    r["name"].as_str().unwrap_or(sid),
                    r["reason"].as_str().unwrap_or("")
                ),
            )),
            _ => {}
        }
    }
    for e in i["events"]
        .as_array()
        .into_iter()
        .flatten()
        .skip(shown.events)
    {
        shown.events += 1;
        lines.push((
            e["at"].as_i64().unwrap_or(cut_ms),
            format!(
                "{}: {}",
                e["kind"].as_str().unwrap_or("event"),
                short(&e["message"], 100)
            ),
        ));
    }
    lines.sort_by_key(|(t, _)| *t);
    for (t, l) in lines {
        println!("  {}  {l}", at(t, cut_ms));
    }
}

fn summary(
    lab: &Lab,
    f: &Figures,
    inc: &Value,
    before: &BTreeMap<String, Server>,
    demo_ids: &[String],
    report: u64,
) -> Result<()> {
    // Which evidence made it `dead`: the BMC witness (its own BMC read the
    // power off) needs no Nova wait; Nova's rule waits report + 2 s.
    let how = match inc["incident"]["evidence"]["fast_path"].as_str() {
        Some("bmc-off") => format!(
            "its own BMC read the power off: no wait for Nova's report interval + 2 s ({} s)",
            report + 2
        ),
        Some("kdump") => "its crash kernel announced itself (fence_kdump)".to_string(),
        _ => format!("Nova's rule: report interval + 2 s = {} s", report + 2),
    };
    let rows = [
        ("power loss → dead", f.dead_ms, how),
        (
            "power loss → fence confirmed",
            f.fenced_ms,
            format!("dead → confirmed {}", secs(f.after_dead(f.fenced_ms))),
        ),
        (
            "power loss → first evacuate call",
            f.first_evacuate_ms,
            format!(
                "dead → first evacuate {}, target ≤ 3 s",
                secs(f.after_dead(f.first_evacuate_ms))
            ),
        ),
        (
            "power loss → all ACTIVE elsewhere",
            f.all_moved_ms,
            format!(
                "{} of {} selected servers moved; dead → all {}",
                f.moved,
                f.selected,
                secs(f.after_dead(f.all_moved_ms))
            ),
        ),
    ];
    for (what, t, note) in rows {
        println!("  {what:<34} {:>8}   ({note})", secs(f.after_cut(t)));
    }

    let now: BTreeMap<String, Server> = lab
        .servers()?
        .into_iter()
        .map(|s| (s.id.clone(), s))
        .collect();
    let records: BTreeMap<&str, &Value> = inc["incident"]["instances"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| Some((r["server_id"].as_str()?, r)))
        .collect();
    println!(
        "\n  {:<28} {:<8} {:<9} {:<9} {:<8} {:>6}  what Vigil did",
        "server", "before", "from", "now on", "status", "took"
    );
    // The demo's servers first, by name; others a test left on the node
    // were evacuated too (they were on it) and are marked.
    let mut order: Vec<&Server> = before.values().collect();
    order.sort_by_key(|s| (!demo_ids.contains(&s.id), s.name.clone()));
    for b in order {
        let id = &b.id;
        let n = now.get(id);
        let rec = records.get(id.as_str());
        let took = rec
            .and_then(|r| {
                Some((r["finished_at"].as_i64()? - r["started_at"].as_i64()?) as f64 / 1000.0)
            })
            .map_or_else(String::new, |t| format!("{t:.1}s"));
        let did = match rec {
            Some(r) => format!(
                "evacuated ({} call{})",
                r["attempts"],
                if r["attempts"] == 1 { "" } else { "s" }
            ),
            None if b.status == "SHUTOFF" => {
                "left alone: SHUTOFF servers stay (policy `shutoff = skip`)".to_string()
            }
            None => "not selected".to_string(),
        };
        println!(
            "  {:<28} {:<8} {:<9} {:<9} {:<8} {:>6}  {did}",
            if demo_ids.contains(id) {
                b.name.clone()
            } else {
                format!("{} (not ours)", b.name)
            },
            b.status,
            NODE,
            n.and_then(|s| s.host.as_deref()).unwrap_or("-"),
            n.map_or("gone", |s| s.status.as_str()),
            took,
        );
    }
    let hooks = lab
        .webhook_requests()
        .unwrap_or_default()
        .iter()
        .filter(|w| {
            w.body
                .contains(inc["incident"]["summary"]["id"].as_str().unwrap_or("?"))
        })
        .count();
    println!(
        "\n  notifications: {hooks} signed webhook(s) for this incident at {}",
        lab.info().receivers.webhook.url
    );
    println!("  incident status: {}", f.status);
    Ok(())
}

fn keep_instructions(d: &Decider, id: &str) {
    let cfg = d.config.display();
    println!("    left running: the lab (compute1 still off, its servers on compute2/3) and vigil-decider (log {})", d.log.display());
    println!("    try:");
    println!("      grpcurl -plaintext {} list", d.listen);
    println!(
        "      grpcurl -plaintext -d '{{\"name\": \"{NODE}\"}}' {} vigil.v1.Operator/GetNode",
        d.listen
    );
    println!("      target/debug/vigil-decider nodes --server {}", d.url);
    println!(
        "      target/debug/vigil-decider node {NODE} --server {}",
        d.url
    );
    println!("      target/debug/vigil-decider watch --server {}", d.url);
    println!("      target/debug/vigil-decider incident {id} --config {cfg}");
    println!("      cargo xtask lab status; cargo xtask lab fault power-on {NODE}");
    println!("    tear down: `cargo xtask demo --teardown` (stops this decider, then `cargo xtask lab down`, or, if the lab was up before the demo, puts it back as it was)");
}

/// Stops the decider a `demo --keep` left (by its recorded pid, after
/// checking that the pid is still that decider), then `lab down`.
fn teardown_kept() -> Result<()> {
    let dir = demo_dir();
    let pid_file = dir.join("decider.pid");
    match std::fs::read_to_string(&pid_file) {
        Ok(text) => {
            let pid: i32 = text
                .trim()
                .parse()
                .with_context(|| format!("{} holds no pid", pid_file.display()))?;
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            let config = dir.join("decider.toml");
            if cmdline.contains("vigil-decider") && cmdline.contains(&*config.to_string_lossy()) {
                // SAFETY: plain kill(2) on a pid we verified is the demo's decider.
                unsafe {
                    libc::kill(pid, libc::SIGTERM);
                }
                let end = Instant::now() + Duration::from_secs(10);
                while Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < end {
                    std::thread::sleep(Duration::from_millis(100));
                }
                println!("==> the demo's decider (pid {pid}) stopped");
            } else {
                println!("==> the demo's decider (pid {pid}) is no longer running");
            }
            let _ = std::fs::remove_file(&pid_file);
        }
        Err(_) => println!(
            "==> no decider left by the demo ({} absent)",
            pid_file.display()
        ),
    }
    let kept: Value = std::fs::read_to_string(dir.join("kept.json"))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or(Value::Null);
    if kept["lab_was_up"] != true || !lab_is_up() {
        return cmd::step("lab down", Command::new(lab_script()).arg("down"));
    }
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .into_iter()
            .flatten()
            .filter_map(|x| x.as_str().map(str::to_string))
            .collect()
    };
    let sensors: BTreeSet<String> = strings(&kept["sensors_before"]).into_iter().collect();
    leave_lab(Lab::shared()?, true, &sensors, &strings(&kept["servers"]))?;
    let _ = std::fs::remove_file(dir.join("kept.json"));
    Ok(())
}
