//! Scenario tests of the workflow through the in-memory fakes: one `World`
//! per scenario (three hosts, c1 dies), one assertion block per row of the
//! issue's list.

use std::sync::atomic::AtomicI64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;

use super::fakes::*;
use super::*;
use crate::config::{DestinationPolicy, GuardConfig, ReservedSpare, ShutoffPolicy};
use crate::journal::sqlite::SqliteJournal;
use crate::notify::RetryPolicy;

struct World {
    clock: Arc<FakeClock>,
    calls: CallLog,
    nova: Arc<FakeNova>,
    fencers: Vec<Arc<FakeFencer>>,
    journal: Arc<SqliteJournal>,
    notifier: Arc<FakeNotifier>,
    settings: Settings,
    self_check: Result<(), String>,
}

impl World {
    /// c1 (dies) with servers a, b (ACTIVE), e (ERROR), s (SHUTOFF); c2, c3 healthy.
    fn new(bmcs: &[Bmc]) -> World {
        let clock = FakeClock::new();
        let calls: CallLog = Arc::new(Mutex::new(Vec::new()));
        let nova = FakeNova::new(&["c1", "c2", "c3"], clock.clone(), calls.clone());
        nova.add_server(server("a", "c1", ServerStatus::Active));
        nova.add_server(server("b", "c1", ServerStatus::Active));
        nova.add_server(server("e", "c1", ServerStatus::Error));
        nova.add_server(server("s", "c1", ServerStatus::Shutoff));
        nova.add_server(server("z", "c2", ServerStatus::Active));
        let fencers = bmcs
            .iter()
            .enumerate()
            .map(|(i, b)| FakeFencer::new(&format!("bmc{i}"), *b, calls.clone()))
            .collect();
        let settings = Settings::from(&RecoveryConfig::default());
        World {
            clock,
            calls,
            nova,
            fencers,
            journal: Arc::new(SqliteJournal::in_memory().expect("journal")),
            notifier: FakeNotifier::new(0),
            settings,
            self_check: Ok(()),
        }
    }

    fn levels(&self) -> Vec<FenceLevel> {
        self.fencers
            .iter()
            .map(|f| FenceLevel {
                fencer: f.clone(),
                deadline: Duration::from_secs(30),
                storage_fence: f.bmc == Bmc::StorageFence,
            })
            .collect()
    }

    fn recovery_with(&self, journal: Arc<dyn Journal>) -> Recovery {
        let notify = Dispatcher::new(
            vec![self.notifier.clone()],
            RetryPolicy {
                attempts: 3,
                initial_backoff: Duration::from_secs(1),
                max_backoff: Duration::from_secs(4),
            },
            self.clock.clone(),
            Some(self.journal.clone()),
        );
        Recovery::new(
            Edges {
                nova: self.nova.clone(),
                journal,
                notify,
                clock: self.clock.clone(),
                self_check: Arc::new(FakeSelfCheck(self.self_check.clone())),
            },
            self.settings.clone(),
        )
    }

    fn recovery(&self) -> Recovery {
        self.recovery_with(self.journal.clone())
    }

    fn trigger() -> Trigger {
        Trigger {
            node: "c1".into(),
            evidence: json!({"nova": "down", "ping": "silent", "sensor": "gone"}),
            boot_id: Some("boot-1".into()),
        }
    }

    async fn run(&self, mode: Mode) -> Outcome {
        let out = self
            .recovery()
            .start(&self.levels(), Self::trigger(), mode)
            .await
            .expect("workflow runs");
        for h in out.notifications.iter() {
            let _ = h;
        }
        out
    }

    fn calls(&self) -> Vec<String> {
        self.calls.lock().expect("calls").clone()
    }

    fn position(&self, prefix: &str) -> usize {
        self.calls()
            .iter()
            .position(|c| c.starts_with(prefix))
            .unwrap_or_else(|| panic!("no call {prefix}: {:?}", self.calls()))
    }

    async fn detail(&self, out: &Outcome) -> IncidentDetail {
        self.journal.get(&out.incident).await.expect("incident")
    }
}

async fn settle(out: Outcome) -> (Outcome, Vec<Delivery>) {
    let mut out = out;
    let mut ds = Vec::new();
    for h in std::mem::take(&mut out.notifications) {
        ds.push(h.await.expect("delivery task"));
    }
    (out, ds)
}

fn state_of(out: &Outcome, id: &str) -> InstanceState {
    out.instances
        .iter()
        .find(|i| i.server_id == id)
        .map(|i| i.state)
        .unwrap_or_else(|| panic!("{id} not in incident"))
}

#[tokio::test]
async fn happy_path_fences_then_evacuates_active_and_error_once_each() {
    let w = World::new(&[Bmc::Works]);
    let (out, _) = settle(w.run(Mode::Live).await).await;
    assert_eq!(out.status, IncidentStatus::Completed, "{:?}", out.reason);
    assert_eq!(w.fencers[0].offs(), 1);
    for id in ["a", "b", "e"] {
        assert_eq!(w.nova.evacuate_calls(id), 1, "{id}");
        let s = w.nova.get(id);
        assert_eq!(
            (s.status, s.host.as_deref() != Some("c1")),
            (ServerStatus::Active, true),
            "{id} ACTIVE elsewhere"
        );
        assert_eq!(state_of(&out, id), InstanceState::Evacuated);
    }
    assert_eq!(w.nova.evacuate_calls("s"), 0, "SHUTOFF skipped by default");
    assert_eq!(w.nova.evacuate_calls("z"), 0);
    // Order: disable → power off → forced down → evacuate.
    assert!(
        w.position("disable c1") < w.position("power_off")
            && w.position("power_off") < w.position("forced_down c1 true")
    );
    assert!(w.position("forced_down c1 true") < w.position("evacuate"));
    assert!(
        w.calls()
            .iter()
            .filter(|c| c.starts_with("evacuate"))
            .all(|c| c.contains(" 2.94 ")),
        "must-run servers go with 2.94"
    );
    let svc = w.nova.service_of("c1");
    assert!(
        !svc.enabled
            && svc.forced_down
            && svc
                .disabled_reason
                .as_deref()
                .is_some_and(|r| r.contains(&out.incident.0))
    );
    assert_eq!(
        w.notifier.kinds(),
        ["incident-opened", "node-fenced", "evacuation-finished"]
    );
    let d = w.detail(&out).await;
    assert_eq!(d.evidence["ping"], "silent");
    assert!(
        d.steps.iter().all(|s| s.ended_at.is_some()),
        "every step has its end record"
    );
    assert!(d.timeline().len() > 10);
}

#[tokio::test]
async fn fence_failures_stop_before_any_evacuation() {
    for (bmc, case) in [
        (Bmc::Refuses, "BMC refuses"),
        (Bmc::StaysOn, "power never reads off"),
        (Bmc::Hangs, "BMC never answers"),
    ] {
        let w = World::new(&[bmc]);
        let (out, _) = settle(w.run(Mode::Live).await).await;
        assert_eq!(out.status, IncidentStatus::NeedsAttention, "{case}");
        assert_eq!(
            w.nova.calls_starting("evacuate"),
            0,
            "{case}: zero evacuate calls"
        );
        assert_eq!(
            w.nova.calls_starting("forced_down"),
            0,
            "{case}: not forced down"
        );
        assert!(
            w.notifier.kinds().contains(&"needs-attention"),
            "{case}: paged"
        );
        assert!(!w.notifier.kinds().contains(&"node-fenced"), "{case}");
        assert!(
            out.reason
                .as_deref()
                .is_some_and(|r| r.contains("fence not confirmed")),
            "{case}: {:?}",
            out.reason
        );
    }
}

#[tokio::test]
async fn a_second_level_confirms_when_the_first_fails() {
    let w = World::new(&[Bmc::Refuses, Bmc::Works]);
    let (out, _) = settle(w.run(Mode::Live).await).await;
    assert_eq!(out.status, IncidentStatus::Completed);
    assert_eq!((w.fencers[0].offs(), w.fencers[1].offs()), (1, 1));
}

#[tokio::test]
async fn a_storage_fence_alone_counts_only_where_policy_accepts_it() {
    let w = World::new(&[Bmc::StorageFence]);
    let (out, _) = settle(w.run(Mode::Live).await).await;
    assert_eq!(out.status, IncidentStatus::NeedsAttention);
    assert_eq!(w.nova.calls_starting("evacuate"), 0);

    let mut w = World::new(&[Bmc::StorageFence]);
    w.settings.accept_storage_fence_alone = true;
    let (out, _) = settle(w.run(Mode::Live).await).await;
    assert_eq!(out.status, IncidentStatus::Completed);
}

#[tokio::test]
async fn operator_confirmation_lets_a_needs_attention_incident_go_on() {
    let w = World::new(&[Bmc::Refuses]);
    let (out, _) = settle(w.run(Mode::Live).await).await;
    assert_eq!(out.status, IncidentStatus::NeedsAttention);
    let r = w.recovery();
    // Without a confirmation, resume changes nothing.
    assert_eq!(
        r.resume(&w.levels(), &out.incident)
            .await
            .expect("resume")
            .status,
        IncidentStatus::NeedsAttention
    );
    r.confirm_off_by_operator(&out.incident, "alice", "pulled the power cords")
        .await
        .expect("confirm");
    let (out2, _) = settle(r.resume(&w.levels(), &out.incident).await.expect("resume")).await;
    assert_eq!(out2.status, IncidentStatus::Completed, "{:?}", out2.reason);
    assert_eq!(
        w.fencers[0].offs(),
        1,
        "no second power-off after the operator confirmed"
    );
    assert_eq!(w.nova.evacuate_calls("a"), 1);
}

#[tokio::test]
async fn crash_after_every_journal_write_then_resume_fences_and_evacuates_once() {
    let mut n = 1;
    loop {
        let w = World::new(&[Bmc::Works]);
        let crashing = Arc::new(CrashingJournal {
            inner: w.journal.clone(),
            budget: AtomicI64::new(n),
        });
        let first = w
            .recovery_with(crashing)
            .start(&w.levels(), World::trigger(), Mode::Live)
            .await;
        if first.is_ok() {
            assert!(n > 20, "the workflow writes more than 20 records");
            break;
        }
        // "Restart": resume every open incident, or start again when the
        // crash came before the incident was recorded.
        let r = w.recovery();
        let open = w.journal.open_incidents().await.expect("open incidents");
        let out = match open.first() {
            Some(inc) => r.resume(&w.levels(), &inc.id).await.expect("resume"),
            None => r
                .start(&w.levels(), World::trigger(), Mode::Live)
                .await
                .expect("restart"),
        };
        assert_eq!(
            w.fencers[0].offs(),
            1,
            "crash after write {n}: exactly one fence"
        );
        // A crash between journaling an evacuate call and its answer leaves
        // the call's outcome unknown (it may sit in a stalled nova-api and
        // land later): that server is never evacuated again, it pages.
        let unknown: Vec<&InstanceRecord> = out
            .instances
            .iter()
            .filter(|r| r.state == InstanceState::Failed)
            .collect();
        for r in &unknown {
            assert!(
                r.reason
                    .as_deref()
                    .is_some_and(|x| x.contains("Unaccounted")),
                "crash after write {n}: {r:?}"
            );
            assert_eq!(w.nova.evacuate_calls(&r.server_id), 0);
        }
        if unknown.is_empty() {
            assert_eq!(
                out.status,
                IncidentStatus::Completed,
                "crash after write {n}: {:?}",
                out.reason
            );
        } else {
            assert_eq!(out.status, IncidentStatus::NeedsAttention);
            for r in &unknown {
                assert!(out.reason.as_deref().is_some_and(|x| x.contains(&r.name)));
            }
        }
        for id in ["a", "b", "e"] {
            if unknown.iter().any(|r| r.server_id == id) {
                continue;
            }
            assert_eq!(
                w.nova.evacuate_calls(id),
                1,
                "crash after write {n}: one evacuate of {id}"
            );
            assert_ne!(w.nova.get(id).host.as_deref(), Some("c1"));
        }
        n += 1;
    }
}

#[tokio::test]
async fn dry_run_journals_every_call_and_makes_none() {
    let w = World::new(&[Bmc::Works]);
    let (out, _) = settle(w.run(Mode::DryRun).await).await;
    assert_eq!(out.status, IncidentStatus::DryRun, "{:?}", out.reason);
    assert!(
        w.calls().is_empty(),
        "no call changed anything: {:?}",
        w.calls()
    );
    assert_eq!(w.fencers[0].offs(), 0);
    assert!(w.notifier.kinds().is_empty(), "dry runs notify nobody");
    let d = w.detail(&out).await;
    let dry: Vec<(StepKind, String)> = d
        .steps
        .iter()
        .filter(|s| s.outcome == Some(StepOutcome::DryRun))
        .map(|s| (s.kind, s.target.clone()))
        .collect();
    for want in [
        StepKind::DisableService,
        StepKind::PowerOff,
        StepKind::ConfirmOff,
        StepKind::ForceDown,
    ] {
        assert!(
            dry.iter().any(|(k, _)| *k == want),
            "{want:?} journaled as dry-run: {dry:?}"
        );
    }
    for id in ["a", "b", "e"] {
        assert!(
            dry.contains(&(StepKind::Evacuate, id.to_string())),
            "evacuate {id} journaled"
        );
        assert_eq!(state_of(&out, id), InstanceState::DryRun);
    }
}

#[tokio::test]
async fn maintenance_node_is_never_touched() {
    let w = World::new(&[Bmc::Works]);
    w.nova.set_service("c1", |s| {
        s.enabled = false;
        s.disabled_reason = Some("kernel upgrade (bob)".into());
    });
    let (out, _) = settle(w.run(Mode::Live).await).await;
    assert_eq!(out.status, IncidentStatus::Aborted);
    assert!(out
        .reason
        .as_deref()
        .is_some_and(|r| r.contains("maintenance")));
    assert!(w.calls().is_empty(), "{:?}", w.calls());
}

#[tokio::test]
async fn failed_self_check_acts_on_nothing_and_pages() {
    let mut w = World::new(&[Bmc::Works]);
    w.self_check = Err("reference address 198.51.100.1 silent".into());
    let (out, _) = settle(w.run(Mode::Live).await).await;
    assert_eq!(out.status, IncidentStatus::Aborted);
    assert!(w.calls().is_empty());
    assert_eq!(w.notifier.kinds(), ["needs-attention"]);
}

#[tokio::test]
async fn reserved_host_is_enabled_joined_and_targeted() {
    let mut w = World::new(&[Bmc::Works]);
    w.nova.set_service("c3", |s| {
        s.enabled = false;
        s.disabled_reason = Some("reserved spare".into());
    });
    w.nova.add_aggregate("ssd", &["c1", "c2"]);
    w.settings.evacuation.destination = DestinationPolicy::Reserved;
    w.settings.evacuation.reserved = vec![ReservedSpare {
        host: "c3".into(),
        for_nodes: vec![],
        join_aggregates: true,
    }];
    let (out, _) = settle(w.run(Mode::Live).await).await;
    assert_eq!(out.status, IncidentStatus::Completed, "{:?}", out.reason);
    assert!(w.nova.service_of("c3").enabled);
    assert!(w.nova.aggregate_hosts("ssd").contains(&"c3".to_string()));
    for id in ["a", "b", "e"] {
        assert_eq!(w.nova.get(id).host.as_deref(), Some("c3"));
    }
    assert!(w.position("enable c3") < w.position("evacuate"));
}

#[tokio::test]
async fn spread_names_a_different_host_in_turn() {
    let mut w = World::new(&[Bmc::Works]);
    w.settings.evacuation.destination = DestinationPolicy::Spread;
    let (out, _) = settle(w.run(Mode::Live).await).await;
    assert_eq!(out.status, IncidentStatus::Completed);
    let hosts: Vec<String> = ["e", "a", "b"]
        .iter()
        .filter_map(|id| w.nova.get(id).host)
        .collect();
    assert!(
        hosts.contains(&"c2".to_string()) && hosts.contains(&"c3".to_string()),
        "{hosts:?}"
    );
}

#[tokio::test]
async fn shutoff_policy_evacuates_stopped_servers_stopped() {
    let mut w = World::new(&[Bmc::Works]);
    w.settings.evacuation.shutoff = ShutoffPolicy::Evacuate;
    let (out, _) = settle(w.run(Mode::Live).await).await;
    assert_eq!(out.status, IncidentStatus::Completed, "{:?}", out.reason);
    let s = w.nova.get("s");
    assert_eq!(s.status, ServerStatus::Shutoff);
    assert_ne!(s.host.as_deref(), Some("c1"));
    assert!(
        w.calls().iter().any(|c| c.starts_with("evacuate s 2.95")),
        "{:?}",
        w.calls()
    );
    assert_eq!(
        w.nova.get("a").status,
        ServerStatus::Active,
        "running ones still come back running"
    );
}

#[tokio::test]
async fn a_failed_evacuation_is_reset_and_retried_then_gives_up_when_bounded() {
    let w = World::new(&[Bmc::Works]);
    w.nova.fail_next_evacuations("a", 1);
    let (out, _) = settle(w.run(Mode::Live).await).await;
    assert_eq!(out.status, IncidentStatus::Completed, "{:?}", out.reason);
    assert_eq!(w.nova.evacuate_calls("a"), 2);
    assert_eq!(w.nova.calls_starting("reset_state a"), 1);
    assert_eq!(
        out.instances
            .iter()
            .find(|i| i.server_id == "a")
            .map(|i| i.attempts),
        Some(2)
    );
    // The failed attempt's verify step carries Nova's own fault message:
    // what an operator searches nova-compute's log for.
    let d = w.detail(&out).await;
    let failed: Vec<_> = d
        .steps
        .iter()
        .filter(|s| {
            s.kind == StepKind::Verify && s.target == "a" && s.outcome == Some(StepOutcome::Failed)
        })
        .collect();
    assert_eq!(failed.len(), 1, "{failed:?}");
    let result = &failed[0].result;
    assert_eq!(result["retry"], true, "{result}");
    assert!(
        result["fault"]
            .as_str()
            .is_some_and(|f| f.contains("(fake)")),
        "Nova's fault in the failed verify: {result}"
    );

    let w = World::new(&[Bmc::Works]);
    w.nova.fail_next_evacuations("b", 10);
    let (out, _) = settle(w.run(Mode::Live).await).await;
    assert_eq!(out.status, IncidentStatus::NeedsAttention);
    assert_eq!(w.nova.evacuate_calls("b"), 3, "max_attempts = 3");
    assert_eq!(state_of(&out, "b"), InstanceState::Failed);
    assert_eq!(
        state_of(&out, "a"),
        InstanceState::Evacuated,
        "the others still recover"
    );
    assert!(
        out.reason
            .as_deref()
            .is_some_and(|r| r.contains("No valid host")),
        "nova's reason: {:?}",
        out.reason
    );
    assert!(w.notifier.kinds().contains(&"needs-attention"));
}

#[tokio::test]
async fn a_stopped_server_whose_evacuation_failed_is_reset_to_active_and_lands_stopped() {
    let mut w = World::new(&[Bmc::Works]);
    w.settings.evacuation.shutoff = ShutoffPolicy::Evacuate;
    w.nova.fail_next_evacuations("s", 1);
    w.nova.fail_next_evacuations("a", 1);
    let (out, _) = settle(w.run(Mode::Live).await).await;
    assert_eq!(out.status, IncidentStatus::Completed, "{:?}", out.reason);
    let s = w.nova.get("s");
    assert_eq!(s.status, ServerStatus::Shutoff, "{:?}", w.calls());
    assert_ne!(s.host.as_deref(), Some("c1"));
    assert_eq!(w.nova.evacuate_calls("s"), 2);
    // Reset to ERROR, Nova would ignore the 2.95 target state and start it.
    assert_eq!(w.nova.calls_starting("reset_state s Active"), 1);
    assert_eq!(w.nova.calls_starting("reset_state s Error"), 0);
    // A server that must run is still reset to ERROR (claims nothing).
    assert_eq!(w.nova.calls_starting("reset_state a Error"), 1);
    assert_eq!(w.nova.get("a").status, ServerStatus::Active);
}

#[tokio::test]
async fn a_failed_evacuation_that_leaves_the_server_active_is_retried() {
    // The fake writes the rollback twice, as Nova does: a retry made between
    // the writes would be undone and fail (a third evacuate call).
    let w = World::new(&[Bmc::Works]);
    w.nova.fail_next_evacuations_keeping_status("a", 1);
    let (out, _) = settle(w.run(Mode::Live).await).await;
    assert_eq!(out.status, IncidentStatus::Completed, "{:?}", out.reason);
    assert_eq!(w.nova.evacuate_calls("a"), 2, "{:?}", w.calls());
    assert_eq!(w.nova.calls_starting("reset_state a"), 1);
    let a = w.nova.get("a");
    assert_eq!(a.status, ServerStatus::Active);
    assert_ne!(a.host.as_deref(), Some("c1"));

    // And when it keeps failing: bounded, with Nova's reason, no waiting
    // out the verify deadline.
    let w = World::new(&[Bmc::Works]);
    w.nova.fail_next_evacuations_keeping_status("a", 10);
    let started = w.clock.now();
    let (out, _) = settle(w.run(Mode::Live).await).await;
    assert_eq!(out.status, IncidentStatus::NeedsAttention);
    assert_eq!(w.nova.evacuate_calls("a"), 3, "max_attempts = 3");
    assert!(
        out.reason
            .as_deref()
            .is_some_and(|r| r.contains("Insufficient compute resources")),
        "nova's reason: {:?}",
        out.reason
    );
    assert!(
        w.clock.now().since(started) < w.settings.evacuation.verify_deadline,
        "gave up only after the verify deadline"
    );
}

#[tokio::test]
async fn an_instance_that_never_lands_is_not_evacuated_twice() {
    let w = World::new(&[Bmc::Works]);
    w.nova.never_lands("a");
    let (out, _) = settle(w.run(Mode::Live).await).await;
    assert_eq!(out.status, IncidentStatus::NeedsAttention);
    assert_eq!(
        w.nova.evacuate_calls("a"),
        1,
        "still moving: a timeout never triggers a second evacuate"
    );
    assert_eq!(state_of(&out, "a"), InstanceState::Failed);
}

#[tokio::test]
async fn flaky_nova_reads_are_retried() {
    let w = World::new(&[Bmc::Works]);
    w.nova.state.lock().expect("nova").flaky_reads = 2;
    let (out, _) = settle(w.run(Mode::Live).await).await;
    assert_eq!(out.status, IncidentStatus::Completed, "{:?}", out.reason);
}

#[tokio::test]
async fn failing_notifications_never_block_recovery() {
    let mut w = World::new(&[Bmc::Works]);
    w.notifier = FakeNotifier::new(u32::MAX);
    let (out, deliveries) = settle(w.run(Mode::Live).await).await;
    assert_eq!(out.status, IncidentStatus::Completed);
    assert_eq!(deliveries.len(), 3);
    assert!(deliveries.iter().all(|d| !d.delivered && d.attempts == 3));
    let d = w.detail(&out).await;
    assert_eq!(
        d.events_of("notify-failed").count(),
        3,
        "failed deliveries are in the timeline"
    );

    let mut w = World::new(&[Bmc::Works]);
    w.notifier = FakeNotifier::new(2);
    let (_, deliveries) = settle(w.run(Mode::Live).await).await;
    // Two failures spread over the three messages: all delivered, some retried.
    assert!(deliveries.iter().all(|d| d.delivered), "{deliveries:?}");
    assert_eq!(
        deliveries.iter().map(|d| d.attempts).sum::<u32>(),
        5,
        "{deliveries:?}"
    );
}

#[tokio::test]
async fn node_return_marks_recovered_and_reenables_only_by_policy() {
    let w = World::new(&[Bmc::Works]);
    let (out, _) = settle(w.run(Mode::Live).await).await;
    let r = w.recovery();
    assert_eq!(
        r.node_booted("c1", "boot-1").await.expect("same boot"),
        None,
        "same boot id: not back"
    );
    assert_eq!(
        r.node_booted("c1", "boot-2").await.expect("new boot"),
        Some(out.incident.clone())
    );
    assert!(w.detail(&out).await.summary.recovered_at.is_some());
    let svc = w.nova.service_of("c1");
    assert!(
        !svc.enabled && svc.forced_down,
        "default policy leaves it disabled and forced down"
    );

    let mut w = World::new(&[Bmc::Works]);
    w.settings.reenable_after_recovery = true;
    let _ = settle(w.run(Mode::Live).await).await;
    w.recovery()
        .node_booted("c1", "boot-2")
        .await
        .expect("new boot");
    let svc = w.nova.service_of("c1");
    assert!(svc.enabled && !svc.forced_down, "policy re-enables it");
}

#[tokio::test]
async fn guards_storm_cooldown_and_one_incident_per_node() {
    let j = SqliteJournal::in_memory().expect("journal");
    let mut g = Guards::new(GuardConfig {
        storm_max_dead: 2,
        storm_max_share: 0.5,
        storm_window: Duration::from_secs(600),
        cooldown: Duration::from_secs(1800),
        ..GuardConfig::default()
    });
    let t = Timestamp(1_000_000);
    assert_eq!(
        g.admit(&j, "c1", 10, t).await.expect("admit"),
        Admission::Admit
    );
    assert_eq!(
        g.admit(&j, "c2", 10, t).await.expect("admit"),
        Admission::Admit
    );
    match g.admit(&j, "c3", 10, t).await.expect("admit") {
        Admission::Refuse { reason, page } => {
            assert!(page && reason.contains("storm guard"), "{reason}")
        }
        a => panic!("third dead node admitted: {a:?}"),
    }
    assert!(
        matches!(
            g.admit(&j, "c3", 10, t).await.expect("admit"),
            Admission::Refuse { page: false, .. }
        ),
        "pages once"
    );
    assert!(
        matches!(
            g.admit(&j, "c1", 10, t).await.expect("admit"),
            Admission::Refuse { .. }
        ),
        "act on none during a storm"
    );

    // Share: 2 of 3 nodes is more than half.
    let mut g = Guards::new(GuardConfig::default());
    assert_eq!(
        g.admit(&j, "n1", 3, t).await.expect("admit"),
        Admission::Admit
    );
    assert!(matches!(
        g.admit(&j, "n2", 3, t).await.expect("admit"),
        Admission::Refuse { .. }
    ));
    // Window passes: a later single death is fine again.
    let later = t.plus(Duration::from_secs(601));
    g.node_alive("n2");
    assert_eq!(
        g.admit(&j, "n3", 3, later).await.expect("admit"),
        Admission::Admit
    );

    // One open incident per node, and a cooldown after one that acted.
    let mut g = Guards::new(GuardConfig::default());
    let id = j
        .open_incident(NewIncident {
            node: "c9".into(),
            opened_at: t,
            dry_run: false,
            evidence: json!(null),
            boot_id: None,
        })
        .await
        .expect("open");
    assert!(
        matches!(g.admit(&j, "c9", 100, t).await.expect("admit"), Admission::Refuse { ref reason, .. } if reason.contains("already open"))
    );
    j.set_status(&id, IncidentStatus::Completed, None, t)
        .await
        .expect("close");
    assert!(
        matches!(g.admit(&j, "c9", 100, t.plus(Duration::from_secs(60))).await.expect("admit"), Admission::Refuse { ref reason, .. } if reason.contains("cooldown"))
    );
    assert_eq!(
        g.admit(&j, "c9", 100, t.plus(Duration::from_secs(1801)))
            .await
            .expect("admit"),
        Admission::Admit
    );
}

/// Issue 17: nova-api stalls right after the first evacuate POST and applies
/// it when it wakes up. The lost answer is not a failure: Vigil waits for
/// Nova's picture, never sends a second evacuate or a reset, and reports one
/// evacuate action per server.
#[tokio::test]
async fn a_stalled_evacuate_that_lands_later_is_never_sent_twice() {
    let w = World::new(&[Bmc::Works]);
    w.nova.stall_next_evacuate("a", Some(20));
    w.nova.stall_next_evacuate("b", Some(3));
    let (out, _) = settle(w.run(Mode::Live).await).await;
    assert_eq!(out.status, IncidentStatus::Completed, "{:?}", out.reason);
    for id in ["a", "b", "e"] {
        assert_eq!(w.nova.evacuate_calls(id), 1, "one evacuate call for {id}");
        assert_eq!(
            w.nova.evacuate_actions(id),
            1,
            "one evacuate action for {id}"
        );
        let r = out
            .instances
            .iter()
            .find(|r| r.server_id == id)
            .expect("record");
        assert_eq!(r.state, InstanceState::Evacuated);
        assert_eq!(r.evacuate_actions, Some(1));
        assert_eq!(r.status_after.as_deref(), Some("ACTIVE"));
    }
    assert_eq!(w.nova.calls_starting("reset_state"), 0);
}

/// A lost answer that Nova never applies is not retried either: at the
/// deadline the incident pages, naming the server.
#[tokio::test]
async fn a_lost_evacuate_that_never_lands_pages_instead_of_retrying() {
    let w = World::new(&[Bmc::Works]);
    w.nova.stall_next_evacuate("a", None);
    let (out, _) = settle(w.run(Mode::Live).await).await;
    assert_eq!(out.status, IncidentStatus::NeedsAttention);
    let reason = out.reason.clone().unwrap_or_default();
    assert!(reason.contains("vm-a"), "{reason}");
    assert_eq!(w.nova.evacuate_calls("a"), 1);
    assert_eq!(w.nova.evacuate_actions("a"), 0);
    assert_eq!(w.nova.calls_starting("reset_state"), 0);
    assert_eq!(state_of_id(&out, "b"), InstanceState::Evacuated);
}

/// Count in Nova: an evacuate action Vigil did not send stops that server.
#[tokio::test]
async fn an_evacuate_vigil_did_not_send_stops_the_server_and_pages() {
    let w = World::new(&[Bmc::Works]);
    w.nova.foreign_evacuate_action("b");
    let (out, _) = settle(w.run(Mode::Live).await).await;
    assert_eq!(out.status, IncidentStatus::NeedsAttention);
    let reason = out.reason.clone().unwrap_or_default();
    assert!(
        reason.contains("vm-b") && reason.contains("Vigil sent 0"),
        "{reason}"
    );
    assert_eq!(w.nova.evacuate_calls("b"), 0);
    assert_eq!(w.nova.evacuate_calls("a"), 1);
}

fn state_of_id(out: &Outcome, id: &str) -> InstanceState {
    out.instances
        .iter()
        .find(|r| r.server_id == id)
        .map(|r| r.state)
        .expect("record")
}

/// A slow server does not hold evacuation slots: with two slots and `a`
/// never landing, `b`, `e` (and the rest) start long before `a` gives up.
#[tokio::test]
async fn a_free_slot_is_used_at_once_behind_a_slow_server() {
    let mut w = World::new(&[Bmc::Works]);
    w.settings.evacuation.concurrency = 2;
    w.settings.evacuation.verify_deadline = Duration::from_secs(60);
    w.nova.never_lands("a");
    // Real time per read of `a`, so its polling loop cannot run virtual time
    // out before the others' (real) journal writes.
    w.nova.state.lock().expect("nova").slow_reads = Some(("a".into(), Duration::from_millis(5)));
    let (out, _) = settle(w.run(Mode::Live).await).await;
    let rec = |id: &str| {
        out.instances
            .iter()
            .find(|r| r.server_id == id)
            .cloned()
            .expect("record")
    };
    let a_done = rec("a").finished_at.expect("a finished");
    let e_start = rec("e").started_at.expect("e started");
    assert!(
        e_start < a_done,
        "e started at {e_start:?}, only after a gave up at {a_done:?}"
    );
    assert_eq!(rec("e").state, InstanceState::Evacuated);
    assert_eq!(rec("a").state, InstanceState::Failed);
    // Reports keep the selection order.
    let ids: Vec<&str> = out.instances.iter().map(|r| r.server_id.as_str()).collect();
    let mut sorted = ids.clone();
    sorted.sort_unstable();
    assert_eq!(ids, sorted);
}

/// The kdump path: fenced by the crash kernel's announcement, powered off
/// after the dump.
#[path = "kdump_tests.rs"]
mod kdump_tests;
