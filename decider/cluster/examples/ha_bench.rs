//! `cargo xtask bench ha` (part 1): on a throwaway local etcd,
//! - the journal's cost per recovery step, etcd against SQLite, the same
//!   incident (real workflow, fake Nova and BMC) in the same run;
//! - leader lost (task killed, no resignation) → the new leader's first
//!   journal write accepted, over several rounds, against the lease TTL.
//!
//! Figures, not pass/fail.

#[path = "../tests/support/etcd_member.rs"]
mod etcd_member;
#[path = "../tests/support/world.rs"]
mod world;

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use vigil_cluster::{ClusterConfig, Etcd, EtcdJournal, Leadership};
use vigil_recovery::journal::sqlite::SqliteJournal;
use vigil_recovery::journal::{IncidentStatus, Journal, NewIncident};
use vigil_recovery::time::Timestamp;
use vigil_recovery::workflow::{Mode, Trigger};

fn cfg(name: &str, url: &str, ttl: u64) -> ClusterConfig {
    ClusterConfig {
        name: name.into(),
        endpoints: vec![url.into()],
        prefix: format!("/bench-{name}-{}", std::process::id()),
        lease_ttl: Duration::from_secs(ttl),
        step_down_margin: Duration::from_millis(500),
        request_timeout: Duration::from_secs(1),
        view_max_age: Duration::from_secs(5),
    }
}

/// One incident of `servers` servers through the workflow; (steps, time).
async fn incident(journal: Arc<dyn Journal>, servers: usize) -> (usize, Duration) {
    let w = world::World::new(servers);
    let levels = w.levels();
    let r = w.recovery(journal.clone());
    let t0 = Instant::now();
    let out = r
        .start(
            &levels,
            Trigger {
                node: "c1".into(),
                evidence: json!({}),
                boot_id: None,
            },
            Mode::Live,
        )
        .await
        .expect("the workflow runs");
    let took = t0.elapsed();
    assert_eq!(out.status, IncidentStatus::Completed, "{:?}", out.reason);
    let d = journal.get(&out.incident).await.expect("incident");
    (d.steps.len(), took)
}

async fn leading(l: &Leadership, limit: Duration) {
    let t0 = Instant::now();
    while l.permit().is_err() {
        assert!(t0.elapsed() < limit, "no leader within {limit:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::main]
async fn main() {
    let e = etcd_member::etcd();
    let rounds = 5;
    let servers = 10;

    println!("journal cost per recovery step ({servers} servers, {rounds} incidents each):");
    let (mut sq, mut et) = (vec![], vec![]);
    let dir = tempfile::tempdir().expect("tempdir");
    let c = cfg("j", &e.url, 5);
    let l = Leadership::new(c.clone());
    let (_stop, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(l.clone().run(async move {
        let _ = rx.await;
    }));
    leading(&l, Duration::from_secs(10)).await;
    for i in 0..rounds {
        // Alternate, so drift in the machine's load hits both alike.
        let sqlite: Arc<dyn Journal> = Arc::new(
            SqliteJournal::open(&dir.path().join(format!("j{i}.sqlite"))).expect("sqlite"),
        );
        let (n, t) = incident(sqlite, servers).await;
        sq.push(t / u32::try_from(n.max(1)).unwrap_or(1));
        let etcd: Arc<dyn Journal> = Arc::new(EtcdJournal::new(
            Etcd::connect(&c).await.expect("etcd"),
            l.clone(),
        ));
        let (n, t) = incident(etcd, servers).await;
        et.push(t / u32::try_from(n.max(1)).unwrap_or(1));
    }
    sq.sort();
    et.sort();
    let (s, t) = (sq[sq.len() / 2], et[et.len() / 2]);
    println!(
        "  sqlite (synchronous=FULL, file)   median {:>8.2} ms/step\n  etcd (txn on the term, 1 member)  median {:>8.2} ms/step\n  ratio etcd/sqlite                  {:>8.1}",
        s.as_secs_f64() * 1000.0,
        t.as_secs_f64() * 1000.0,
        t.as_secs_f64() / s.as_secs_f64().max(1e-9)
    );

    let ttl = 3;
    println!("leader lost (killed, no resignation) → new leader's first journal write (lease_ttl {ttl} s):");
    let mut takeovers = vec![];
    for round in 0..rounds {
        let a = Leadership::new(cfg("a", &e.url, ttl));
        let mut b_cfg = cfg("b", &e.url, ttl);
        b_cfg.prefix = a.config().prefix.clone();
        let b = Leadership::new(b_cfg.clone());
        let ta = tokio::spawn(a.clone().run(std::future::pending()));
        leading(&a, Duration::from_secs(10)).await;
        let tb = tokio::spawn(b.clone().run(std::future::pending()));
        let jb = EtcdJournal::new(Etcd::connect(&b_cfg).await.expect("etcd"), b.clone());
        // Spread the kill over the renewal cycle.
        tokio::time::sleep(Duration::from_millis(300 + 170 * round)).await;
        ta.abort();
        let t0 = Instant::now();
        loop {
            let r = jb
                .open_incident(NewIncident {
                    node: format!("n{round}"),
                    opened_at: Timestamp(0),
                    dry_run: true,
                    evidence: json!(null),
                    boot_id: None,
                })
                .await;
            if r.is_ok() {
                break;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(ttl * 3),
                "no takeover: {r:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        takeovers.push(t0.elapsed());
        tb.abort();
    }
    takeovers.sort();
    println!(
        "  min {:.2} s  median {:.2} s  max {:.2} s  (target ≤ lease_ttl + 2 s = {} s)",
        takeovers[0].as_secs_f64(),
        takeovers[takeovers.len() / 2].as_secs_f64(),
        takeovers[takeovers.len() - 1].as_secs_f64(),
        ttl + 2
    );
}
