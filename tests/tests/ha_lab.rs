//! Decider HA end to end (root, the lab): three controllers, each with an
//! etcd member and a `vigil-decider serve` in its own network namespace and
//! cgroup (`lab controllers up`); the lab's sensors stream to all three.
//!
//! First the partition: the leader's controller cut off from the other two
//! (it still reaches Nova and the BMCs) loses its term and says so
//! (`/readyz`), and another leads. Then one incident carries three faults
//! of the deciders themselves: compute1 loses power; once the leader has
//! begun evacuating, its whole controller loses power (decider and etcd
//! member, no resignation); the decider that takes over is frozen (SIGSTOP)
//! for longer than its lease as soon as it leads, and thawed after the third
//! has taken over. What must hold whatever the timing: exactly one
//! incident, one power-off, exactly one evacuate action per server in Nova,
//! every server ACTIVE elsewhere, the incident completed, each takeover in
//! the incident's timeline with a higher term, and the thawed decider
//! acting on nothing (its log says it lost leadership; the BMC sees one
//! power call in all).
//!
//! Last the quorum: with two of three etcd members down no decider leads,
//! `/readyz` says why and a page goes out; with them back, one leads again.

use std::time::Duration;
use vigil_tests::decider::{
    assert_evacuated_once, now_ms, prepare, redfish_log_mark, redfish_resets_since, steps, Decider,
    HaOpts, Opts,
};
use vigil_tests::lab::{Controller, Fault, Lab};
use vigil_tests::{tier, wait};

const NODE: &str = "compute1";
const TTL: u64 = 3;

/// `lab controllers down` when the test ends (also on failure), so the
/// other tests meet the lab with one decider address.
struct Down<'a>(&'a Lab);

impl Drop for Down<'_> {
    fn drop(&mut self) {
        if let Err(e) = self.0.controllers_down() {
            eprintln!("lab controllers down failed: {e}");
        }
    }
}

fn start(lab: &Lab, ctls: &[Controller]) -> Vec<Decider> {
    let endpoints: Vec<String> = ctls.iter().map(|c| c.etcd_url.clone()).collect();
    let prefix = format!("/vigil-ha-lab-{}", now_ms());
    ctls.iter()
        .map(|c| {
            Decider::start(
                lab,
                Opts {
                    ha: Some(HaOpts {
                        controller: c.name.clone(),
                        ip: c.ip.clone(),
                        etcd_endpoints: endpoints.clone(),
                        lease_ttl_secs: TTL,
                        prefix: prefix.clone(),
                    }),
                    ..Opts::default()
                },
            )
        })
        .collect()
}

/// (leader name, term) as decider `d` reports it, when it knows one.
fn leader_of(d: &Decider) -> Result<(String, i64), String> {
    let c = d.cluster()?;
    let leader = c["leader"].as_str().unwrap_or("").to_string();
    if leader.is_empty() {
        return Err(format!("no leader known: {}", c["detail"]));
    }
    Ok((leader, c["term"].as_i64().unwrap_or(0)))
}

/// Waits until every decider in `live` names the same leader, other than
/// `not` and with a term above `above`; returns its index and term.
fn agreed_leader(
    ds: &[Decider],
    names: &[String],
    live: &[usize],
    above: i64,
    not: &[usize],
    limit: Duration,
) -> (usize, i64) {
    wait::until(
        "one leader all live deciders agree on",
        limit,
        Duration::from_millis(100),
        || {
            let mut seen = None;
            for &i in live {
                let (l, t) = leader_of(&ds[i])?;
                match &seen {
                    None => seen = Some((l, t)),
                    Some(s) if *s == (l.clone(), t) => {}
                    Some(s) => {
                        return Err(format!("{} says {l} (term {t}), another {s:?}", names[i]))
                    }
                }
            }
            let (l, t) = seen.ok_or("no live decider")?;
            let idx = names
                .iter()
                .position(|n| *n == l)
                .ok_or(format!("unknown leader {l}"))?;
            if t <= above || not.contains(&idx) {
                return Err(format!("still {l} (term {t})"));
            }
            Ok((idx, t))
        },
    )
    .map(|(v, _)| v)
    .unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn three_deciders_one_acts_and_a_killed_then_a_frozen_leader_change_nothing() {
    if !tier::root(
        "three_deciders_one_acts_and_a_killed_then_a_frozen_leader_change_nothing",
        "the lab runs controllers, Nova, BMCs and nodes in network namespaces",
    ) {
        return;
    }
    let lab = Lab::shared().expect("lab up");
    let _x = lab.exclusive();
    let (_restore, servers) = prepare(lab, NODE, 3);
    let t0 = std::time::Instant::now();
    let ctls = lab.controllers_up(3).expect("lab controllers up");
    let _down = Down(lab);
    eprintln!("FIGURES controllers up in {:.1?}", t0.elapsed());
    let names: Vec<String> = ctls.iter().map(|c| c.name.clone()).collect();
    let mut ds = start(lab, &ctls);
    for d in &ds {
        d.wait_all_healthy(lab);
    }
    let (first, term1) = agreed_leader(&ds, &names, &[0, 1, 2], 0, &[], Duration::from_secs(30));
    eprintln!("{} leads (term {term1})", names[first]);

    // `serve --check` reads etcd with a quorum and names the leader.
    let o = std::process::Command::new(vigil_tests::bins::bin("vigil-decider"))
        .args(["serve", "--check", "--config"])
        .arg(ds[0].config_path())
        .env("OS_CLIENT_CONFIG_FILE", &lab.info().clouds_yaml)
        .output()
        .expect("serve --check");
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success()
            && out.contains("etcd: ok")
            && out.contains(&format!("{} leads", names[first])),
        "serve --check: {out}{}",
        String::from_utf8_lossy(&o.stderr)
    );

    // Every decider sees compute1 from its own controller, and shows all three.
    let follower = (first + 1) % 3;
    let (views, _) = wait::until(
        "three views of compute1",
        Duration::from_secs(15),
        Duration::from_millis(200),
        || {
            let n = ds[follower].node(NODE)?;
            let v = n["views"].as_object().cloned().unwrap_or_default();
            if v.len() == 3 && v.values().all(|s| s["sensor_fresh"] == true) {
                Ok(v)
            } else {
                Err(format!("views {v:?}"))
            }
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", ds[follower].log()));
    assert!(names.iter().all(|n| views.contains_key(n)), "{views:?}");

    // Partition: the leader's controller loses the other two (etcd's
    // majority and the other deciders), keeps Nova and the BMCs.
    lab.fault(Fault::Partition, &names[first])
        .expect("partition");
    let others: Vec<usize> = (0..3).filter(|i| *i != first).collect();
    let (first, term1) = {
        let (l, t) = agreed_leader(
            &ds,
            &names,
            &others,
            term1,
            &[first],
            Duration::from_secs(TTL * 4),
        );
        wait::until(
            "the partitioned decider knows it does not lead",
            Duration::from_secs(TTL * 4),
            Duration::from_millis(200),
            || match ds[first].readyz() {
                Ok((503, body)) if body.to_string().contains("no leader known") => Ok(()),
                r => Err(format!("readyz {r:?}")),
            },
        )
        .unwrap_or_else(|e| panic!("{e}\n{}", ds[first].log()));
        lab.fault(Fault::Unpartition, &names[first])
            .expect("unpartition");
        agreed_leader(
            &ds,
            &names,
            &[0, 1, 2],
            0,
            &[],
            Duration::from_secs(TTL * 4),
        );
        eprintln!(
            "partitioned {} lost its term; {} leads (term {t})",
            names[first], names[l]
        );
        (l, t)
    };

    let cut = now_ms();
    let bmc_mark = redfish_log_mark(lab);
    lab.fault(Fault::PowerOff, NODE)
        .expect("power off compute1");

    // The leader begins evacuating; then it is killed.
    let (id, _) = wait::until(
        "the leader's first evacuate call",
        Duration::from_secs(120),
        Duration::from_millis(50),
        || {
            let l = ds[first].incidents()?;
            let id = l
                .first()
                .and_then(|i| i["id"].as_str())
                .ok_or("no incident yet")?
                .to_string();
            let inc = ds[first].incident(&id)?;
            if steps(&inc, "evacuate").count() > 0 {
                Ok(id)
            } else {
                Err(format!("phase {}", inc["incident"]["summary"]["phase"]))
            }
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", ds[first].log()));
    if let Some(dead) = ds[first].became(NODE, "dead") {
        eprintln!(
            "FIGURES power loss → dead {:.1} s",
            (dead - cut) as f64 / 1000.0
        );
    }
    let killed = std::time::Instant::now();
    // The leader's whole controller loses power: decider and etcd member.
    lab.fault(Fault::PowerOff, &names[first])
        .expect("power off the leader's controller");
    ds[first].kill9();
    let live: Vec<usize> = (0..3).filter(|i| *i != first).collect();
    let (second, term2) = agreed_leader(
        &ds,
        &names,
        &live,
        term1,
        &[first],
        Duration::from_secs(TTL * 3),
    );
    eprintln!(
        "FIGURES leader's controller powered off → {} leads (term {term2}) after {:.1?} (lease_ttl {TTL} s)",
        names[second],
        killed.elapsed()
    );

    // The new leader freezes as soon as it leads, for longer than its lease.
    ds[second].freeze(true);
    let frozen = std::time::Instant::now();
    let third = live
        .iter()
        .copied()
        .find(|i| *i != second)
        .expect("a third");
    let (now_leads, term3) = agreed_leader(
        &ds,
        &names,
        &[third],
        term2,
        &[first, second],
        Duration::from_secs(TTL * 3),
    );
    assert_eq!(now_leads, third);
    eprintln!(
        "FIGURES leader frozen → {} leads (term {term3}) after {:.1?}",
        names[third],
        frozen.elapsed()
    );
    std::thread::sleep(Duration::from_secs(1));
    ds[second].freeze(false);
    let thawed_at = now_ms();

    ds[third].wait_verdict(
        NODE,
        "recovered",
        &["needs-attention"],
        Duration::from_secs(300),
    );
    let inc = ds[third].incident(&id).expect("incident");
    assert_eq!(inc["incident"]["summary"]["status"], "completed", "{inc}");
    assert_eq!(
        ds[third].incidents().expect("incidents").len(),
        1,
        "one incident"
    );
    assert_eq!(steps(&inc, "power_off").count(), 1, "one power-off: {inc}");
    assert_evacuated_once(lab, &servers, NODE);
    let resets = redfish_resets_since(lab, NODE, bmc_mark);
    assert_eq!(resets.len(), 1, "one power call at the BMC: {resets:?}");

    // The takeovers, in the incident's own timeline, in term order; the
    // frozen decider may have resumed before it froze, never after the third.
    let takeovers: Vec<(String, i64, i64)> = inc["incident"]["events"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter(|e| e["kind"] == "leader-resumed")
        .map(|e| {
            (
                e["detail"]["decider"].as_str().unwrap_or("").to_string(),
                e["detail"]["term"].as_i64().unwrap_or(0),
                e["at"].as_i64().unwrap_or(0),
            )
        })
        .collect();
    assert!(
        takeovers
            .iter()
            .any(|(d, t, _)| *d == names[third] && *t == term3),
        "{} resumed the incident in term {term3}: {takeovers:?}",
        names[third]
    );
    assert!(
        takeovers.windows(2).all(|w| w[0].1 < w[1].1),
        "terms only grow: {takeovers:?}"
    );
    // Nothing in the journal was written in a term that had ended: every
    // event after the thaw belongs to the third decider's term (the journal
    // refuses the thawed one's writes; this checks it did).
    let log = ds[second].full_log();
    assert!(
        log.contains("leadership lost") || log.contains("no longer leading"),
        "the thawed decider noticed it lost its term:\n{}",
        ds[second].log()
    );
    // The thawed decider may lead again later, in a new term of its own;
    // never again in the term it held when it froze.
    for e in inc["incident"]["events"]
        .as_array()
        .cloned()
        .unwrap_or_default()
    {
        if e["at"].as_i64().unwrap_or(0) > thawed_at
            && e["kind"] == "leader-resumed"
            && e["detail"]["decider"] == names[second].as_str()
        {
            assert!(
                e["detail"]["term"].as_i64().unwrap_or(0) > term3,
                "after the thaw {} acted in a term that had ended: {e}",
                names[second]
            );
        }
    }

    // Each decider's leadership story, for the record.
    for (i, d) in ds.iter().enumerate() {
        for l in d.full_log().lines().filter(|l| {
            l.contains("leading") || l.contains("leadership") || l.contains("following")
        }) {
            eprintln!("{}: {}", names[i], l.chars().take(240).collect::<String>());
        }
    }

    // No quorum, no leader: the powered-off controller's member and one
    // more down.
    let no_leader_pages = || {
        lab.webhook_requests()
            .unwrap_or_default()
            .into_iter()
            .filter(|r| r.header("X-Vigil-Event") == Some("no-leader"))
            .count()
    };
    let pages_before = no_leader_pages();
    lab.fault(Fault::EtcdStop, &names[second])
        .expect("etcd stop");
    let (gone, _) = wait::until(
        "no decider leads without an etcd quorum",
        Duration::from_secs(TTL * 4),
        Duration::from_millis(200),
        || match ds[third].readyz() {
            Ok((503, body)) if body.to_string().contains("no leader known") => Ok(body),
            Ok(r) => Err(format!("readyz {r:?}")),
            Err(e) => Err(e),
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", ds[third].log()));
    eprintln!("without quorum: {gone}");
    // And someone is paged: nothing would be recovered now.
    wait::until(
        "a no-leader page at the webhook",
        Duration::from_secs(40),
        Duration::from_millis(500),
        || {
            if no_leader_pages() > pages_before {
                Ok(())
            } else {
                Err("no page yet".to_string())
            }
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", ds[third].log()));
    lab.fault(Fault::EtcdStart, &names[second])
        .expect("etcd start");
    ds[second].kill9();
    let (_, term4) = agreed_leader(
        &ds,
        &names,
        &[third],
        term3,
        &[first, second],
        Duration::from_secs(30),
    );
    assert!(term4 > term3);
}
