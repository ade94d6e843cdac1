//! Leadership and the etcd journal against a real etcd (Debian's 3.4,
//! installed by `cargo xtask setup`), one throwaway member per test.

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::sync::oneshot;
use vigil_cluster::{ClusterConfig, Etcd, EtcdJournal, Leadership, Role};
use vigil_recovery::journal::{
    IncidentStatus, Journal, JournalError, NewIncident, StepBegin, StepKind,
};
use vigil_recovery::time::Timestamp;
use vigil_recovery::workflow::{Mode, Trigger};

#[path = "support/etcd_member.rs"]
mod etcd_member;
#[path = "support/world.rs"]
mod world;
use etcd_member::etcd;

fn cfg(name: &str, url: &str) -> ClusterConfig {
    ClusterConfig {
        name: name.into(),
        endpoints: vec![url.into()],
        prefix: "/vigil-test".into(),
        lease_ttl: Duration::from_secs(2),
        step_down_margin: Duration::from_millis(500),
        request_timeout: Duration::from_secs(1),
        view_max_age: Duration::from_secs(5),
    }
}

struct Running {
    l: Arc<Leadership>,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

fn run(c: ClusterConfig) -> Running {
    let l = Leadership::new(c);
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(l.clone().run(async move {
        let _ = rx.await;
    }));
    Running {
        l,
        stop: Some(tx),
        task,
    }
}

async fn wait_for(what: &str, limit: Duration, mut f: impl FnMut() -> bool) -> Duration {
    let t0 = Instant::now();
    while !f() {
        assert!(t0.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    t0.elapsed()
}

fn leading(r: &Running) -> bool {
    r.l.permit().is_ok()
}

#[tokio::test]
async fn one_leader_at_a_time_and_a_dead_leader_is_replaced_within_its_ttl() {
    let e = etcd();
    let a = run(cfg("ctl1", &e.url));
    wait_for("ctl1 leads", Duration::from_secs(10), || leading(&a)).await;
    let b = run(cfg("ctl2", &e.url));
    wait_for("ctl2 follows ctl1", Duration::from_secs(5), || {
        let s = b.l.status();
        s.role == Role::Follower && s.leader.as_deref() == Some("ctl1")
    })
    .await;
    assert!(!leading(&b), "two leaders");
    let term_a = a.l.status().term;
    assert!(term_a > 0);

    // A crash: the task stops without resigning; the lease must expire.
    a.task.abort();
    let took = wait_for("ctl2 takes over", Duration::from_secs(5), || leading(&b)).await;
    let ttl = Duration::from_secs(2);
    eprintln!("FIGURES crashed leader → new leader in {took:?} (lease_ttl {ttl:?})");
    assert!(took <= ttl + Duration::from_millis(1500), "{took:?}");
    let term_b = b.l.status().term;
    assert!(term_b > term_a, "terms only grow: {term_a} then {term_b}");
    // The crashed leader's permit lapsed on its own clock.
    assert!(a.l.permit().is_err());

    // A clean stop resigns: the other takes over at once, not a TTL later.
    let c = run(cfg("ctl3", &e.url));
    wait_for("ctl3 follows", Duration::from_secs(5), || {
        c.l.status().role == Role::Follower
    })
    .await;
    let mut b = b;
    let _ = b.stop.take().map(|s| s.send(()));
    let _ = b.task.await;
    let took = wait_for("ctl3 takes over", Duration::from_secs(5), || leading(&c)).await;
    eprintln!("FIGURES resigned leader → new leader in {took:?}");
    assert!(took < Duration::from_secs(1), "{took:?}");
}

#[tokio::test]
async fn a_deposed_leader_cannot_journal_and_so_cannot_act() {
    let e = etcd();
    let a = run(cfg("ctl1", &e.url));
    wait_for("ctl1 leads", Duration::from_secs(10), || leading(&a)).await;
    let etcd_a = Etcd::connect(a.l.config()).await.expect("etcd");
    let ja = EtcdJournal::new(etcd_a, a.l.clone());
    let id = ja
        .open_incident(NewIncident {
            node: "c1".into(),
            opened_at: Timestamp(1),
            dry_run: false,
            evidence: json!({"why": "test"}),
            boot_id: None,
        })
        .await
        .expect("the leader journals");
    let dup = ja
        .open_incident(NewIncident {
            node: "c1".into(),
            opened_at: Timestamp(2),
            dry_run: false,
            evidence: json!(null),
            boot_id: None,
        })
        .await;
    assert!(
        matches!(dup, Err(JournalError::AlreadyOpen { .. })),
        "{dup:?}"
    );

    // Someone else takes the term behind ctl1's back (its lease is still
    // alive, so only etcd's compare can stop it): delete the key and
    // create it anew, as a new leader would.
    let key = a.l.config().leader_key();
    let out = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args(["--endpoints", &e.url, "del", &key])
        .output()
        .expect("etcdctl");
    assert!(out.status.success());
    let out = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args([
            "--endpoints",
            &e.url,
            "put",
            &key,
            r#"{"name":"intruder","since_unix_ms":1}"#,
        ])
        .output()
        .expect("etcdctl");
    assert!(out.status.success());
    let r = ja
        .begin_step(
            &id,
            StepBegin {
                kind: StepKind::PowerOff,
                target: "bmc".into(),
                attempt: 1,
                at: Timestamp(3),
                detail: json!(null),
            },
        )
        .await;
    assert!(
        matches!(&r, Err(JournalError::NotLeader { .. })),
        "a deposed leader's write: {r:?}"
    );
    let d = ja.get(&id).await.expect("reads need no term");
    assert!(d.steps.is_empty(), "nothing was recorded: {:?}", d.steps);
    wait_for("ctl1 follows the intruder", Duration::from_secs(3), || {
        a.l.status().leader.as_deref() == Some("intruder")
    })
    .await;
}

/// A whole incident through the real workflow (fake Nova and BMC) on the
/// etcd journal; then the leader dies and the next one resumes it: no second
/// power-off, no second evacuation.
#[tokio::test]
async fn a_new_leader_resumes_an_incident_without_doing_anything_twice() {
    let e = etcd();
    let a = run(cfg("ctl1", &e.url));
    wait_for("ctl1 leads", Duration::from_secs(10), || leading(&a)).await;

    let w = world::World::new(2);
    let (levels, fencer, nova) = (w.levels(), w.fencer.clone(), w.nova.clone());
    let recovery = |j: Arc<dyn Journal>| w.recovery(j);
    let ja: Arc<dyn Journal> = Arc::new(EtcdJournal::new(
        Etcd::connect(a.l.config()).await.expect("etcd"),
        a.l.clone(),
    ));
    let t0 = Instant::now();
    let out = recovery(ja.clone())
        .start(
            &levels,
            Trigger {
                node: "c1".into(),
                evidence: json!({"sensor": "gone"}),
                boot_id: Some("b1".into()),
            },
            Mode::Live,
        )
        .await
        .expect("runs");
    let took = t0.elapsed();
    assert_eq!(out.status, IncidentStatus::Completed, "{:?}", out.reason);
    let d = ja.get(&out.incident).await.expect("incident");
    eprintln!(
        "FIGURES etcd journal: {} steps, {} instance records in {took:?} ({:?}/step)",
        d.steps.len(),
        d.instances.len(),
        took / u32::try_from(d.steps.len().max(1)).unwrap_or(1)
    );
    assert_eq!(fencer.offs(), 1);
    assert_eq!(nova.evacuate_calls("s0"), 1);
    assert_eq!(nova.evacuate_calls("s1"), 1);

    // ctl1 dies; ctl2 leads and resumes the (completed) incident as a
    // restarted decider would: nothing more is done.
    let b = run(cfg("ctl2", &e.url));
    a.task.abort();
    wait_for("ctl2 takes over", Duration::from_secs(6), || leading(&b)).await;
    let jb: Arc<dyn Journal> = Arc::new(EtcdJournal::new(
        Etcd::connect(b.l.config()).await.expect("etcd"),
        b.l.clone(),
    ));
    let again = recovery(jb.clone())
        .resume(&levels, &out.incident)
        .await
        .expect("resumes");
    assert_eq!(again.status, IncidentStatus::Completed);
    assert_eq!(fencer.offs(), 1, "no second power-off");
    assert_eq!(nova.evacuate_calls("s0"), 1, "no second evacuation");
    assert_eq!(nova.evacuate_calls("s1"), 1, "no second evacuation");
    // And ctl1's journal, whose term is over, refuses to write.
    let r = ja
        .set_phase(&out.incident, vigil_recovery::journal::Phase::Fencing)
        .await;
    assert!(matches!(r, Err(JournalError::NotLeader { .. })), "{r:?}");
}
