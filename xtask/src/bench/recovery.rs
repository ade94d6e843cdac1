//! `cargo xtask bench recovery [--servers 10,50] [--runs N] [--spread]
//! [--faults power-off,kdump,hard-hang]`: how fast Vigil gets a dead node's
//! servers running elsewhere, in the lab, against the floor Nova itself
//! sets, per fault kind: power loss (the BMC witness), kernel crash with
//! kdump (fenced by kdump), hard hang (Nova's rule).
//!
//! For each server count and run, three scenarios on compute1, interleaved so
//! that drift in this shared machine's load hits them alike:
//! - floor: the servers booted, the node's power cut, then by hand what an
//!   operator who already knew would do (`cloud evacuate`: force-down,
//!   disable, evacuate each, wait until each is ACTIVE elsewhere), timed from
//!   force-down;
//! - Vigil with `destination = "scheduler"` (Nova picks), and with
//!   `--spread` also `destination = "spread"` (Vigil names a different
//!   healthy host per server): a real decider, the power cut, and the figures
//!   read from the incident's journal (power loss → dead → fence confirmed →
//!   first evacuate call → all ACTIVE elsewhere).
//!
//! Each scenario leaves the lab as it found it: node powered on and
//! reporting, services enabled, its servers deleted.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use clap::Parser;
use serde_json::{json, Value};
use vigil_tests::lab::{Fault, Lab};

use crate::demo::decider::{Decider, Opts};
use crate::demo::figures::Figures;
use crate::demo::{self as d};

const NODE: &str = "compute1";

#[derive(Parser, Debug)]
#[command(name = "cargo xtask bench recovery")]
struct Args {
    /// Server counts on the node that loses power.
    #[arg(long, value_delimiter = ',', default_values_t = [10usize, 50])]
    servers: Vec<usize>,
    /// Runs per server count and scenario; the table shows medians.
    /// Default 3. Each scenario boots its servers anew and waits for the
    /// powered-off node to report again: at 50 servers one scenario took
    /// ≈10 min here (boot ≈190 s, evacuation 140–195 s, restore ≈200 s), so
    /// `--servers 50 --runs 2 --spread` takes about an hour.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Also run Vigil with `destination = "spread"`.
    #[arg(long)]
    spread: bool,
    /// Skip the hand-evacuation floor (quicker, no ratio).
    #[arg(long)]
    no_floor: bool,
    /// How the node dies, for Vigil's scenarios: `power-off` (power loss;
    /// its BMC reads off), `kdump` (kernel crash, the crash kernel sending
    /// fence_kdump messages for 20 s after a 5 s boot), `hard-hang`
    /// (everything stops, the BMC reads on: Nova's rule).
    #[arg(long, value_delimiter = ',', default_values_t = [FaultKind::PowerOff.to_string()])]
    faults: Vec<String>,
}

/// The faults a scenario can make.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum FaultKind {
    PowerOff,
    Kdump,
    HardHang,
}

impl FaultKind {
    fn parse(s: &str) -> Result<Self> {
        match s {
            "power-off" => Ok(FaultKind::PowerOff),
            "kdump" => Ok(FaultKind::Kdump),
            "hard-hang" => Ok(FaultKind::HardHang),
            other => bail!("--faults {other:?}: one of power-off, kdump, hard-hang"),
        }
    }

    /// Makes the fault on NODE; when the lab began it (Unix ms).
    fn make(self, lab: &Lab) -> Result<i64> {
        Ok(match self {
            FaultKind::PowerOff => lab.fault(Fault::PowerOff, NODE)?.began_unix_ms,
            FaultKind::Kdump => lab.kdump(NODE, KDUMP_SECS)?.began_unix_ms,
            FaultKind::HardHang => lab.fault(Fault::HardHang, NODE)?.began_unix_ms,
        })
    }
}

impl std::fmt::Display for FaultKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            FaultKind::PowerOff => "power-off",
            FaultKind::Kdump => "kdump",
            FaultKind::HardHang => "hard-hang",
        })
    }
}

/// How long the lab's crash kernel sends in a `kdump` scenario.
const KDUMP_SECS: u32 = 20;

/// One scenario's figures, in seconds.
#[derive(Clone, Debug, Default)]
struct Sample {
    /// From the power cut.
    dead: Option<f64>,
    fenced: Option<f64>,
    first_evacuate: Option<f64>,
    all_active: Option<f64>,
    /// From Nova's force-down to all ACTIVE elsewhere: the part a hand
    /// evacuation also has, so the one comparable with the floor.
    evacuation: Option<f64>,
    /// From the node's last Nova report the decider saw to the power cut
    /// (negative: that report was in flight at the cut and reached Nova
    /// after it): where in Nova's report cycle the cut fell. `dead` waits
    /// report interval + margin + `dead_for` after that report, so this
    /// explains most of the spread of `dead` between runs. Read from the
    /// incident's evidence at decision time, not before the cut: a decider
    /// that has not yet seen `updated_at` move cannot know the phase.
    since_report: Option<f64>,
    /// The evidence's `fast_path` at decision time (`bmc-off`, `kdump`), or
    /// none: Nova's rule.
    fast_path: Option<String>,
}

pub fn run(args: &[String]) -> Result<()> {
    let a = Args::try_parse_from(
        std::iter::once("cargo xtask bench recovery".to_string()).chain(args.iter().cloned()),
    )
    // clap's own exit: help and --version on stdout with status 0, usage
    // errors on stderr with status 2.
    .unwrap_or_else(|e| e.exit());
    if !crate::is_root() {
        bail!("bench recovery runs the lab (namespaces, cgroups, BMCs, a real Nova) and needs root: `sudo cargo xtask bench recovery`");
    }
    if a.runs == 0 || a.servers.is_empty() || a.servers.iter().any(|n| *n == 0 || *n > 100) {
        bail!("--runs must be ≥ 1 and --servers between 1 and 100 each");
    }
    let faults: Vec<FaultKind> = a
        .faults
        .iter()
        .map(|f| FaultKind::parse(f))
        .collect::<Result<_>>()?;
    if faults.is_empty() {
        bail!("--faults: name at least one of power-off, kdump, hard-hang");
    }
    let mut policies = vec!["scheduler"];
    if a.spread {
        policies.push("spread");
    }
    // A scenario per (destination policy, fault kind), named "policy" for
    // power loss as before and "policy/fault" otherwise.
    let scenarios: Vec<(String, &str, FaultKind)> = policies
        .iter()
        .flat_map(|p| {
            faults.iter().map(move |f| {
                let name = if *f == FaultKind::PowerOff {
                    (*p).to_string()
                } else {
                    format!("{p}/{f}")
                };
                (name, *p, *f)
            })
        })
        .collect();
    let scenario_names: Vec<&str> = scenarios.iter().map(|(n, _, _)| n.as_str()).collect();
    let started = Instant::now();
    println!(
        "bench recovery: servers {:?}, {} run(s) each of: {}{} (medians; about 1 min per 10 servers per scenario)",
        a.servers,
        a.runs,
        if a.no_floor { "" } else { "hand floor, " },
        scenario_names
            .iter()
            .map(|p| format!("Vigil/{p}"))
            .collect::<Vec<_>>()
            .join(", ")
    );

    let bins = d::build(true)?;
    let (sensor_bin, decider_bin) = (bins.sensor, bins.decider);
    let sensors_before = if d::preflight()? {
        d::sensors_running(Lab::shared()?)?
    } else {
        Default::default()
    };
    let lab = d::lab_up(&sensor_bin)?;
    d::lab_ready(lab, &sensor_bin)?;
    let strays: Vec<String> = lab.servers()?.into_iter().map(|s| s.name).collect();
    if !strays.is_empty() {
        println!(
            "warning: the lab already has {} server(s) ({}); they stay where they are unless on {NODE}",
            strays.len(),
            strays.join(", ")
        );
    }
    let out_dir = d::target_dir().join("vigil-bench");
    std::fs::create_dir_all(&out_dir).with_context(|| format!("creating {}", out_dir.display()))?;

    // (servers, scenario) -> samples
    let mut results: BTreeMap<(usize, String), Vec<Sample>> = BTreeMap::new();
    let mut floors: BTreeMap<usize, Vec<f64>> = BTreeMap::new();
    let mut raw = Vec::new();
    let path = out_dir.join("results.json");
    // Written after every sample: a bench that fails in its second hour
    // keeps what it measured.
    let save = |raw: &Vec<Value>| -> Result<()> {
        std::fs::write(
            &path,
            serde_json::to_string_pretty(raw).context("encoding results")?,
        )
        .with_context(|| format!("writing {}", path.display()))
    };
    for run in 1..=a.runs {
        for &n in &a.servers {
            if !a.no_floor {
                let t = Instant::now();
                let floor = hand_floor(lab, n)
                    .with_context(|| format!("hand floor, {n} servers, run {run}"))?;
                println!(
                    "run {run}/{}  {n:>3} servers  floor (by hand)   force-down → all ACTIVE {:6.1} s   [{:.0} s]",
                    a.runs,
                    floor,
                    t.elapsed().as_secs_f64()
                );
                floors.entry(n).or_default().push(floor);
                raw.push(json!({"run": run, "servers": n, "scenario": "floor", "force_down_to_all_active_s": floor}));
                save(&raw)?;
            }
            for (p, policy, fault) in &scenarios {
                let t = Instant::now();
                let dir = out_dir.join(format!("{n}-{}-run{run}", p.replace('/', "-")));
                let s = vigil(lab, &decider_bin, &dir, n, policy, *fault).with_context(|| {
                    format!(
                        "Vigil/{p}, {n} servers, run {run} (decider log {})",
                        dir.join("decider.log").display()
                    )
                })?;
                println!(
                    "run {run}/{}  {n:>3} servers  Vigil/{p:<9}  dead {} ({})  fenced {}  1st evacuate {}  all ACTIVE {}  (force-down → all {}; cut {} after a report)   [{:.0} s]",
                    a.runs,
                    f(s.dead),
                    s.fast_path.as_deref().unwrap_or("Nova's rule"),
                    f(s.fenced),
                    f(s.first_evacuate),
                    f(s.all_active),
                    f(s.evacuation),
                    f(s.since_report),
                    t.elapsed().as_secs_f64()
                );
                raw.push(json!({"run": run, "servers": n, "scenario": p, "fault": fault.to_string(), "fast_path": s.fast_path, "dead_s": s.dead, "fenced_s": s.fenced,
                    "first_evacuate_s": s.first_evacuate, "all_active_s": s.all_active, "force_down_to_all_active_s": s.evacuation,
                    "cut_after_report_s": s.since_report}));
                save(&raw)?;
                results.entry((n, p.clone())).or_default().push(s);
            }
        }
    }
    // Leave the lab as found: sensors as they were; a lab we brought up
    // stays up (taking it down is `cargo xtask lab down`).
    d::restore_sensors(lab, &sensors_before)?;

    println!(
        "\n{}",
        table(&a.servers, &scenario_names, &results, &floors, a.runs, lab)
    );
    println!("every sample: {}", path.display());
    println!(
        "bench recovery took {:.0} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn f(v: Option<f64>) -> String {
    v.map_or_else(|| "  —  ".into(), |s| format!("{s:5.1}s"))
}

/// The median (mean of the middle two for an even count); None if empty.
fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    Some(if v.len().is_multiple_of(2) {
        (v[m - 1] + v[m]) / 2.0
    } else {
        v[m]
    })
}

fn med(samples: &[Sample], pick: impl Fn(&Sample) -> Option<f64>) -> Option<f64> {
    // A sample missing a figure fails the run, so every one has it.
    median(samples.iter().filter_map(pick).collect())
}

/// The Markdown table README's Performance section shows.
fn table(
    servers: &[usize],
    policies: &[&str],
    results: &BTreeMap<(usize, String), Vec<Sample>>,
    floors: &BTreeMap<usize, Vec<f64>>,
    runs: usize,
    lab: &Lab,
) -> String {
    let report = lab.info().controller.report_interval.unwrap_or(10);
    let mut t = format!(
        "Medians of {runs} run(s); seconds from the fault (power cut, crash, hang) unless noted. Nova report interval {report} s.\n\n\
         | servers | how | → dead | → fence confirmed | → first evacuate | → all ACTIVE elsewhere | − floor | force-down → all ACTIVE | ÷ floor |\n\
         |---:|---|---:|---:|---:|---:|---:|---:|---:|\n"
    );
    let cell = |v: Option<f64>| v.map_or_else(|| "—".to_string(), |s| format!("{s:.1}"));
    for &n in servers {
        let floor = floors.get(&n).and_then(|v| median(v.clone()));
        if let Some(fl) = floor {
            t.push_str(&format!(
                "| {n} | floor: by hand (`cloud evacuate`) | — | — | — | — | — | {fl:.1} | 1.00 |\n"
            ));
        }
        for p in policies {
            let Some(s) = results.get(&(n, (*p).to_string())) else {
                continue;
            };
            let evac = med(s, |x| x.evacuation);
            let all = med(s, |x| x.all_active);
            let ratio = match (evac, floor) {
                (Some(e), Some(fl)) if fl > 0.0 => format!("{:.2}", e / fl),
                _ => "—".into(),
            };
            let over = match (all, floor) {
                (Some(a), Some(fl)) => format!("{:+.1}", a - fl),
                _ => "—".into(),
            };
            t.push_str(&format!(
                "| {n} | Vigil, `{p}` | {} | {} | {} | {} | {over} | {} | {ratio} |\n",
                cell(med(s, |x| x.dead)),
                cell(med(s, |x| x.fenced)),
                cell(med(s, |x| x.first_evacuate)),
                cell(all),
                cell(evac),
            ));
        }
    }
    // `dead` is report interval + margin + agreement after the last report
    // the decider saw, so where the cut fell in the report cycle is what
    // makes `dead` differ between runs; show it next to the table.
    let phases: Vec<String> = results
        .iter()
        .filter_map(|((n, p), s)| {
            let v: Vec<String> = s
                .iter()
                .map(|x| x.since_report.map_or("?".into(), |v| format!("{v:.1}")))
                .collect();
            (!v.is_empty()).then(|| format!("{n}/{p}: {}", v.join(", ")))
        })
        .collect();
    if !phases.is_empty() {
        t.push_str(&format!(
            "\nThe cut fell this many seconds after the node's last Nova report the decider saw (per run; negative: that report was in flight at the cut and reached Nova after it): {}.\n",
            phases.join("; ")
        ));
    }
    t
}

/// Servers booted on NODE and ACTIVE there; their ids.
fn boot(n: usize, tag: &str) -> Result<Vec<String>> {
    let t = Instant::now();
    let servers = d::boot(NODE, n, 0, 0, tag)?;
    println!(
        "    booted {n} on {NODE} in {:.0} s",
        t.elapsed().as_secs_f64()
    );
    Ok(servers.into_iter().map(|s| s.id).collect())
}

/// Node back on and reporting, services enabled, these servers deleted and
/// gone (so that deleting them does not overlap the next measurement).
fn restore(lab: &Lab, ids: &[String]) -> Result<()> {
    if let Err(e) = lab.heal(&[NODE]) {
        // After many evacuations nova-compute's start-up first deletes each
        // evacuated instance it still has (`_destroy_evacuated_instances`):
        // with 50 that took more than heal's 180 s here (2026-11-27). Give
        // it time in proportion before calling the lab broken.
        let wait = Duration::from_secs(180 + 6 * ids.len() as u64);
        println!(
            "    {NODE} not reporting yet after power-on ({e:#}); waiting up to {wait:?} more"
        );
        lab.wait_compute(&[NODE], wait)
            .context("powering the node back on: nova-compute never reported again")?;
    }
    d::reset_services(lab)?;
    lab.delete_servers(ids)
}

/// Runs `body`, then restores the lab whatever happened.
fn scenario<T>(lab: &Lab, ids: &[String], body: impl FnOnce() -> Result<T>) -> Result<T> {
    let r = body();
    let restored = restore(lab, ids);
    match (r, restored) {
        (Ok(v), Ok(())) => Ok(v),
        (Err(e), _) => Err(e),
        (Ok(_), Err(e)) => Err(e.context("restoring the lab after the scenario")),
    }
}

/// The floor: power cut, then `cloud evacuate NODE --json`; seconds from
/// force-down to every server ACTIVE elsewhere.
fn hand_floor(lab: &Lab, n: usize) -> Result<f64> {
    let ids = boot(n, "floor")?;
    scenario(lab, &ids, || {
        lab.fault(Fault::PowerOff, NODE)?;
        let cloud = crate::root().join("tests/lab/cloud/cloud");
        let out = Command::new(&cloud)
            .args([
                "evacuate",
                NODE,
                "--json",
                "--timeout",
                &(120 + 10 * n).to_string(),
            ])
            .env("VIGIL_LAB_DIR", vigil_tests::lab::lab_dir())
            .output()
            .with_context(|| format!("running {}", cloud.display()))?;
        if !out.status.success() {
            bail!(
                "`cloud evacuate {NODE}` failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let v: Value =
            serde_json::from_slice(&out.stdout).context("parsing `cloud evacuate --json`")?;
        let moved = v["servers"].as_array().map_or(0, Vec::len);
        if moved != n {
            bail!("`cloud evacuate` moved {moved} server(s), not {n}: {v}");
        }
        v["total_s"]
            .as_f64()
            .ok_or_else(|| anyhow!("`cloud evacuate --json` has no total_s: {v}"))
    })
}

/// Vigil with this destination policy: a fresh decider (own journal), the
/// power cut, the incident completed; figures from its journal.
fn vigil(
    lab: &Lab,
    bin: &Path,
    dir: &Path,
    n: usize,
    policy: &str,
    fault: FaultKind,
) -> Result<Sample> {
    let ids = boot(n, policy)?;
    scenario(lab, &ids, || {
        let mut dec = Decider::start(
            bin,
            lab,
            dir,
            &Opts {
                destination: policy.to_string(),
                detach: false,
            },
        )?;
        let r = measure(lab, &dec, n, fault).map_err(|e| dec.explain(e));
        dec.stop();
        r
    })
}

fn measure(lab: &Lab, dec: &Decider, n: usize, fault: FaultKind) -> Result<Sample> {
    dec.wait_healthy(&lab.node_names(), Duration::from_secs(90))?;
    let cut = fault.make(lab)?;
    let deadline = Duration::from_secs(120 + 10 * n as u64);
    let end = Instant::now() + deadline;
    let inc = loop {
        dec.check_alive()?;
        let id = dec
            .incidents()?
            .iter()
            .find(|i| i["node"] == NODE)
            .and_then(|i| i["id"].as_str())
            .map(str::to_string);
        if let Some(id) = id {
            let inc = dec.incident(&id)?;
            match inc["incident"]["summary"]["status"].as_str().unwrap_or("") {
                "open" => {}
                "completed" => break inc,
                other => bail!(
                    "incident {id} ended {other}: {}",
                    inc["incident"]["summary"]["reason"]
                        .as_str()
                        .unwrap_or("no reason given")
                ),
            }
        }
        if Instant::now() > end {
            bail!("no completed recovery within {deadline:?} of the power cut");
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    let fig = Figures::from_incident(&inc, cut);
    if fig.moved != n {
        bail!(
            "{} of {n} servers moved: {}",
            fig.moved,
            inc["incident"]["instances"]
        );
    }
    let evacuation = match (fig.forced_down_ms, fig.all_moved_ms) {
        (Some(a), Some(b)) => Some((b - a) as f64 / 1000.0),
        _ => None,
    };
    Ok(Sample {
        dead: fig.after_cut(fig.dead_ms),
        fenced: fig.after_cut(fig.fenced_ms),
        first_evacuate: fig.after_cut(fig.first_evacuate_ms),
        all_active: fig.after_cut(fig.all_moved_ms),
        evacuation,
        since_report: fig.last_report_seen_ms.map(|t| (cut - t) as f64 / 1000.0),
        fast_path: inc["incident"]["evidence"]["fast_path"]
            .as_str()
            .map(str::to_string),
    })
}

#[cfg(test)]
mod tests {
    use super::median;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(vec![]), None);
    }
}
