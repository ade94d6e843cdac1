//! `cargo xtask demo --ha`: the demo with three deciders. The lab's three
//! controllers (`lab controllers up --count 3`: netns `vlab-ctlN`, an etcd
//! member each, every sensor streaming to all three) each run a
//! `vigil-decider serve` with a `[cluster]` section; one leads. compute1
//! loses power; as soon as the leader's journal (in etcd) shows an
//! `evacuate` step, the leader is SIGKILLed; the takeover is shown as the
//! survivors report it, the incident is followed to its end on the new
//! leader, and the summary adds Nova's evacuate actions per server (one
//! each, or the demo fails) and the incident's `leader-resumed` events.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;
use vigil_tests::lab::{Controller, Lab};

use super::decider::{Decider, Ha, Opts};
use super::figures::Figures;
use super::{
    at, banner, boot_demo_servers, cut_power, follow_until, leave_lab, now_ms, print_changes,
    start_lab, summary, target_dir, Args, Started, Tracking, NODE,
};

/// `cluster.lease_ttl`: a dead leader is replaced within this (+ ≈0.5 s).
const LEASE_TTL_SECS: u64 = 3;
const CONTROLLERS: u32 = 3;

fn ha_dir() -> PathBuf {
    target_dir().join("vigil-demo-ha")
}

/// `lab controllers down` when dropped (also on an error): the lab is
/// left with its one decider address, as other users expect it.
struct ControllersDown<'a> {
    lab: &'a Lab,
    done: bool,
}

impl ControllersDown<'_> {
    fn now(&mut self) -> Result<()> {
        self.done = true;
        self.lab
            .controllers_down()
            .map_err(|e| anyhow!("lab controllers down: {e}"))
    }
}

impl Drop for ControllersDown<'_> {
    fn drop(&mut self) {
        if !self.done {
            if let Err(e) = self.lab.controllers_down() {
                eprintln!("warning: lab controllers down failed: {e}");
            }
        }
    }
}

/// (leader, term) as a decider reports it, or why it knows none.
fn leader_of(d: &Decider) -> std::result::Result<(String, i64), String> {
    let c = d.cluster().map_err(|e| format!("{e:#}"))?;
    match c["leader"].as_str() {
        Some(l) if !l.is_empty() => Ok((l.to_string(), c["term"].as_i64().unwrap_or(0))),
        _ => Err(format!(
            "no leader known ({})",
            c["detail"].as_str().unwrap_or("")
        )),
    }
}

/// The leader every decider in `live` names, once they agree on one that
/// is not `not` and whose term is above `above`.
fn agreed(ds: &[Decider], live: &[usize], not: Option<&str>, above: i64) -> Option<(String, i64)> {
    let mut seen: Option<(String, i64)> = None;
    for &i in live {
        let lt = leader_of(&ds[i]).ok()?;
        match &seen {
            None => seen = Some(lt),
            Some(s) if *s == lt => {}
            Some(_) => return None,
        }
    }
    seen.filter(|(l, t)| Some(l.as_str()) != not && *t > above)
}

fn name_of(d: &Decider) -> &str {
    d.ha.as_ref().map_or("?", |h| h.controller.as_str())
}

pub(super) fn demo(a: &Args) -> Result<()> {
    let Started {
        decider_bin,
        was_up,
        sensors_before,
        lab,
    } = start_lab("2. lab, with three controllers")?;
    let t = Instant::now();
    println!("==> lab controllers up --count {CONTROLLERS}: netns vlab-ctlN, an etcd member each; every sensor restarted to stream to all three");
    let ctls: Vec<Controller> = lab
        .controllers_up(CONTROLLERS)
        .map_err(|e| anyhow!("lab controllers up: {e}"))?;
    let mut down = ControllersDown { lab, done: false };
    for c in &ctls {
        println!("    {} at {} (etcd {})", c.name, c.ip, c.etcd_url);
    }
    println!("    done in {:.1} s", t.elapsed().as_secs_f64());

    let (servers, on_node_before) = boot_demo_servers(lab, a.servers)?;
    let ids: Vec<String> = servers.iter().map(|s| s.id.clone()).collect();

    banner("3. three deciders, one per controller");
    let endpoints: Vec<String> = ctls.iter().map(|c| c.etcd_url.clone()).collect();
    let mut ds: Vec<Decider> = Vec::new();
    for c in &ctls {
        let ha = Ha {
            controller: c.name.clone(),
            ip: c.ip.clone(),
            etcd_endpoints: endpoints.clone(),
            lease_ttl_secs: LEASE_TTL_SECS,
        };
        let d = Decider::start_ha(
            &decider_bin,
            lab,
            &ha_dir().join(&c.name),
            &Opts {
                destination: "scheduler".into(),
                detach: false,
            },
            &ha,
        )?;
        println!(
            "    {}: lab controller exec {} -- vigil-decider serve, on {} (config {}, log {})",
            c.name,
            c.name,
            d.listen,
            d.config.display(),
            d.log.display()
        );
        ds.push(d);
    }
    let t = Instant::now();
    for d in &ds {
        d.wait_healthy(&lab.node_names(), Duration::from_secs(90))?;
    }
    println!(
        "    every node healthy in all three deciders' eyes ({:.1} s)",
        t.elapsed().as_secs_f64()
    );
    let all: Vec<usize> = (0..ds.len()).collect();
    let end = Instant::now() + Duration::from_secs(30);
    let (leader_name, term1) = loop {
        if let Some(lt) = agreed(&ds, &all, None, 0) {
            break lt;
        }
        if Instant::now() > end {
            let seen: Vec<String> = ds
                .iter()
                .map(|d| match leader_of(d) {
                    Ok((l, t)) => format!("{}: {l} (term {t})", name_of(d)),
                    Err(e) => format!("{}: {e}", name_of(d)),
                })
                .collect();
            bail!(
                "the three deciders agreed on no leader within 30 s: {}",
                seen.join("; ")
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let first = ds
        .iter()
        .position(|d| name_of(d) == leader_name)
        .ok_or_else(|| anyhow!("the leader {leader_name} is none of ours"))?;
    // Let every decider's view reach etcd so `cluster` shows all three.
    let end = Instant::now() + Duration::from_secs(15);
    while Instant::now() < end {
        let views = ds[first]
            .cluster()
            .ok()
            .and_then(|c| c["views"].as_array().map(Vec::len))
            .unwrap_or(0);
        if views >= ds.len() {
            break;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    println!("\n$ vigil-decider cluster --server {}", ds[first].url);
    ds[first].print_cluster()?;

    banner(&format!(
        "4. {NODE} loses power; the leader {leader_name} is killed once it evacuates"
    ));
    let watch = ds[first].watch()?;
    std::thread::sleep(Duration::from_millis(300));
    let (cut_ms, report) = cut_power(lab)?;
    let mut track = Tracking::default();
    let has_evacuate = |inc: &Value| {
        inc["incident"]["steps"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|s| s["kind"] == "evacuate")
    };
    let inc = follow_until(
        &ds[first],
        &watch,
        cut_ms,
        Duration::from_secs(300),
        &mut track,
        has_evacuate,
    )
    .map_err(|e| ds[first].explain(e))?;
    if !has_evacuate(&inc) {
        bail!("incident ended without an evacuate step the demo could kill the leader after");
    }
    print_changes(&watch, cut_ms);
    drop(watch);

    // SIGKILL the leader: no shutdown, its lease left to lapse.
    let pid = ds[first].pid().unwrap_or(0);
    ds[first].kill9();
    let killed = Instant::now();
    let kill_ms = now_ms();
    println!(
        "  {}  SIGKILL {leader_name} (pid {pid}, leader in term {term1}) while it evacuates",
        at(kill_ms, cut_ms)
    );
    let live: Vec<usize> = all.iter().copied().filter(|i| *i != first).collect();
    let mut last: BTreeMap<usize, String> = BTreeMap::new();
    let limit = Duration::from_secs(LEASE_TTL_SECS * 5);
    let (new_name, term2) = loop {
        for &i in &live {
            let seen = match leader_of(&ds[i]) {
                Ok((l, t)) => format!("leader {l} (term {t})"),
                Err(e) => e,
            };
            if last.get(&i) != Some(&seen) {
                println!(
                    "  {}  {:>4.1} s after the kill, {} sees: {seen}",
                    at(now_ms(), cut_ms),
                    killed.elapsed().as_secs_f64(),
                    name_of(&ds[i])
                );
                last.insert(i, seen);
            }
        }
        if let Some(lt) = agreed(&ds, &live, Some(&leader_name), term1) {
            break lt;
        }
        if killed.elapsed() > limit {
            let e = anyhow!(
                "no survivor took over within {limit:?} of the leader's SIGKILL (lease_ttl {LEASE_TTL_SECS} s)"
            );
            return Err(ds[live[0]].explain(e));
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let takeover_s = killed.elapsed().as_secs_f64();
    let second = ds
        .iter()
        .position(|d| name_of(d) == new_name)
        .ok_or_else(|| anyhow!("the new leader {new_name} is none of ours"))?;
    println!(
        "  {}  TAKEOVER: {new_name} leads (term {term2}), {takeover_s:.1} s after {leader_name} was killed (lease_ttl {LEASE_TTL_SECS} s)",
        at(now_ms(), cut_ms)
    );

    let watch = ds[second].watch()?;
    let inc = follow_until(
        &ds[second],
        &watch,
        cut_ms,
        Duration::from_secs(300),
        &mut track,
        |_| false,
    )
    .map_err(|e| ds[second].explain(e))?;
    std::thread::sleep(Duration::from_millis(700));
    print_changes(&watch, cut_ms);
    drop(watch);

    banner("5. summary");
    let fig = Figures::from_incident(&inc, cut_ms);
    summary(lab, &fig, &inc, &on_node_before, &ids, report)?;
    let ok = ha_summary(
        lab,
        &inc,
        &on_node_before,
        cut_ms,
        (&leader_name, term1, kill_ms),
        (&new_name, term2, takeover_s),
    )?;

    banner("6. afterwards");
    for d in ds.iter_mut() {
        d.stop();
    }
    println!("    deciders stopped");
    down.now()?;
    println!("    lab controllers down (their etcd, and the journal in it, gone); sensors back to one decider address");
    leave_lab(lab, was_up, &sensors_before, &ids)?;
    println!(
        "    decider logs kept in {}/ctlN/decider.log",
        ha_dir().display()
    );
    if !ok {
        bail!("a server was evacuated other than exactly once (see the summary)");
    }
    Ok(())
}

/// Nova's evacuate actions per server (one each for the selected, none for
/// the others) and the incident's takeovers. Returns whether the counts
/// are right.
fn ha_summary(
    lab: &Lab,
    inc: &Value,
    before: &BTreeMap<String, vigil_tests::lab::Server>,
    cut_ms: i64,
    killed: (&str, i64, i64),
    took_over: (&str, i64, f64),
) -> Result<bool> {
    let (old, term1, kill_ms) = killed;
    let (new, term2, takeover_s) = took_over;
    let first_evacuate = inc["incident"]["steps"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|s| s["kind"] == "evacuate")
        .filter_map(|s| s["began_at"].as_i64())
        .min();
    println!(
        "\n  takeover: {old} (term {term1}) SIGKILLed at {}{}; {new} led (term {term2}) {takeover_s:.1} s later (lease_ttl {LEASE_TTL_SECS} s)",
        at(kill_ms, cut_ms),
        first_evacuate.map_or_else(String::new, |f| format!(
            ", {:.1} s after its first evacuate call",
            (kill_ms - f) as f64 / 1000.0
        )),
    );
    let selected: BTreeSet<&str> = inc["incident"]["instances"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["server_id"].as_str())
        .collect();
    let nova = lab.nova()?;
    let mut ok = true;
    println!("\n  Nova's evacuate actions (os-instance-actions), per server:");
    let mut order: Vec<&vigil_tests::lab::Server> = before.values().collect();
    order.sort_by_key(|s| s.name.clone());
    for s in order {
        let v = nova
            .get(&format!("/servers/{}/os-instance-actions", s.id), "2.53")
            .with_context(|| format!("instance actions of {}", s.name))?;
        let n = v["instanceActions"].as_array().map_or(0, |a| {
            a.iter().filter(|x| x["action"] == "evacuate").count()
        });
        let want = usize::from(selected.contains(s.id.as_str()));
        let verdict = if n == want {
            "ok"
        } else {
            ok = false;
            "WRONG"
        };
        println!(
            "    {:<28} {:<8} evacuate ×{n}   (expected {want}: {verdict})",
            s.name, s.status
        );
    }
    let powers = inc["incident"]["steps"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|s| s["kind"] == "power_off")
        .count();
    println!("  power-off steps in the incident: {powers}");
    println!("\n  leader-resumed events in the incident:");
    let mut n = 0;
    for e in inc["incident"]["events"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["kind"] == "leader-resumed")
    {
        n += 1;
        println!(
            "    {}  {} (term {}): {}",
            at(e["at"].as_i64().unwrap_or(cut_ms), cut_ms),
            e["detail"]["decider"].as_str().unwrap_or("?"),
            e["detail"]["term"],
            e["message"].as_str().unwrap_or("")
        );
    }
    if n == 0 {
        println!("    none");
    }
    Ok(ok)
}
