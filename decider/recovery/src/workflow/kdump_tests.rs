//! The kdump path through the fakes: c1's crash kernel announces itself
//! every 10 s from `first`; policy: quiet for 25 s, power off after 600 s.

use super::*;
use crate::workflow::kdump::{KdumpWatch, KDUMP_TARGET, POWERED_OFF_AFTER_DUMP};

const QUIET_FOR: Duration = Duration::from_secs(25);
const POWER_OFF_AFTER: Duration = Duration::from_secs(600);

/// The evidence `evidence_snapshot` stores for a kdump fast path: the
/// first message heard 20 s before the decision, three of them so far.
fn kdump_trigger(decided_at: Timestamp) -> Trigger {
    Trigger {
        node: "c1".into(),
        evidence: json!({
            "fast_path": "kdump",
            "kdump": {"from": "192.0.2.11", "messages": 3, "first_age_ms": 20_000, "last_age_ms": 0},
            "decided_at_unix_ms": decided_at.0,
        }),
        boot_id: Some("boot-1".into()),
    }
}

fn with_kdump(w: &World, journal: Arc<dyn Journal>, source: Arc<FakeKdump>) -> Recovery {
    w.recovery_with(journal).with_kdump(Some(KdumpWatch {
        source,
        quiet_for: QUIET_FOR,
        power_off_after: POWER_OFF_AFTER,
    }))
}

/// When the (single) fencer's power-off step began.
fn power_off_at(d: &IncidentDetail) -> Vec<Timestamp> {
    d.steps
        .iter()
        .filter(|s| s.kind == StepKind::PowerOff)
        .map(|s| s.began_at)
        .collect()
}

/// The messages' first is 20 s before "now"; they stop `stop_after` later
/// (never, with `None`).
fn sender(w: &World, stop_after: Option<Duration>) -> (Timestamp, Arc<FakeKdump>) {
    let decided = w.clock.now();
    let first = Timestamp(decided.0 - 20_000);
    let stop = stop_after.map(|d| first.plus(d));
    (decided, FakeKdump::new(w.clock.clone(), first, stop))
}

#[tokio::test]
async fn kdump_evacuates_at_once_and_powers_off_once_after_the_messages_stop() {
    let w = World::new(&[Bmc::Works]);
    let (decided, kd) = sender(&w, Some(Duration::from_secs(300)));
    let stop = kd.stop.expect("stops");
    let out = with_kdump(&w, w.journal.clone(), kd)
        .start(&w.levels(), kdump_trigger(decided), Mode::Live)
        .await
        .expect("workflow runs");
    let (out, _) = settle(out).await;
    assert_eq!(out.status, IncidentStatus::Completed, "{:?}", out.reason);
    let d = w.detail(&out).await;

    // Evacuated while the crash kernel was still writing, with no power-off.
    for id in ["a", "b", "e"] {
        assert_eq!(w.nova.evacuate_calls(id), 1, "{id}");
        assert_eq!(state_of(&out, id), InstanceState::Evacuated);
        let done = out
            .instances
            .iter()
            .find(|i| i.server_id == id)
            .and_then(|i| i.finished_at)
            .expect("finished");
        assert!(done < stop, "{id} evacuated while the messages continue");
    }
    assert!(w.position("evacuate") < w.position("power_off"));
    assert!(w.position("forced_down c1 true") < w.position("evacuate"));
    let kdump = d
        .steps_of(StepKind::ConfirmOff, KDUMP_TARGET)
        .next()
        .expect("kdump confirmation journaled");
    assert_eq!(kdump.outcome, Some(StepOutcome::Ok));
    assert!(
        kdump.result["how"].as_str().is_some_and(|h| h.contains(
            "fenced by kdump: the crash kernel announced itself from 192.0.2.11, 3 message(s)"
        )),
        "{:?}",
        kdump.result
    );

    // Powered off once, the first poll after 25 s of silence.
    assert_eq!(w.fencers[0].offs(), 1);
    let at = power_off_at(&d);
    assert_eq!(at.len(), 1, "one power-off step");
    let quiet = stop.plus(QUIET_FOR);
    assert!(
        at[0] >= quiet && at[0] <= quiet.plus(Duration::from_secs(2)),
        "powered off at {} (messages stopped at {stop})",
        at[0]
    );
    let fenced_off = d.steps.iter().any(|s| {
        s.kind == StepKind::ConfirmOff
            && s.target != KDUMP_TARGET
            && s.outcome == Some(StepOutcome::Ok)
    });
    assert!(fenced_off, "power read back off");
    let ev = d
        .events_of(POWERED_OFF_AFTER_DUMP)
        .next()
        .expect("the report says how it ended");
    assert!(
        ev.message
            .starts_with("fenced by kdump; powered off after the dump at "),
        "{}",
        ev.message
    );
    assert_eq!(
        w.notifier.kinds(),
        [
            "incident-opened",
            "node-fenced",
            "evacuation-finished",
            "powered-off-after-dump"
        ]
    );
}

#[tokio::test]
async fn kdump_that_never_stops_is_powered_off_once_at_power_off_after() {
    let w = World::new(&[Bmc::Works]);
    let (decided, kd) = sender(&w, None);
    let first = kd.first;
    let out = with_kdump(&w, w.journal.clone(), kd)
        .start(&w.levels(), kdump_trigger(decided), Mode::Live)
        .await
        .expect("workflow runs");
    let (out, _) = settle(out).await;
    assert_eq!(out.status, IncidentStatus::Completed, "{:?}", out.reason);
    assert_eq!(w.fencers[0].offs(), 1);
    let at = power_off_at(&w.detail(&out).await);
    let deadline = first.plus(POWER_OFF_AFTER);
    assert_eq!(at.len(), 1);
    assert!(
        at[0] >= deadline && at[0] <= deadline.plus(Duration::from_secs(2)),
        "powered off at {}, {POWER_OFF_AFTER:?} after the first message ({first}) is {deadline}",
        at[0]
    );
}

#[tokio::test]
async fn kdump_crash_after_every_journal_write_then_resume_evacuates_once_and_powers_off_after_the_dump(
) {
    let mut n = 1;
    loop {
        let w = World::new(&[Bmc::Works]);
        let (decided, kd) = sender(&w, Some(Duration::from_secs(300)));
        let stop = kd.stop.expect("stops");
        let crashing = Arc::new(CrashingJournal {
            inner: w.journal.clone(),
            budget: AtomicI64::new(n),
        });
        let first = with_kdump(&w, crashing, kd.clone())
            .start(&w.levels(), kdump_trigger(decided), Mode::Live)
            .await;
        if first.is_ok() {
            assert!(n > 20, "the workflow writes more than 20 records");
            break;
        }
        // The decider is down for 100 s; the restarted engine hears only
        // what is sent after it starts.
        w.clock.sleep(Duration::from_secs(100)).await;
        let restart = w.clock.now();
        let r = with_kdump(&w, w.journal.clone(), kd.restarted(restart));
        let open = w.journal.open_incidents().await.expect("open incidents");
        let out = match open.first() {
            Some(inc) => r.resume(&w.levels(), &inc.id).await.expect("resume"),
            None => r
                .start(&w.levels(), kdump_trigger(restart), Mode::Live)
                .await
                .expect("restart"),
        };
        let d = w.detail(&out).await;
        assert_eq!(
            w.fencers[0].offs(),
            1,
            "crash after write {n}: one power-off"
        );
        let at = power_off_at(&d);
        let off = *at.last().expect("a power-off step");
        // Never before the dump ended; and a wait the restarted decider did
        // itself listened for the whole quiet time (it heard nothing from
        // before its start).
        assert!(
            off >= stop.plus(QUIET_FOR),
            "crash after write {n}: powered off at {off}, messages stopped at {stop}"
        );
        if d.steps_of(StepKind::AwaitDump, "c1")
            .any(|s| s.began_at >= restart)
        {
            assert!(
                off >= restart.plus(QUIET_FOR),
                "crash after write {n}: powered off at {off}, restart at {restart}"
            );
        }
        let unknown: Vec<&InstanceRecord> = out
            .instances
            .iter()
            .filter(|r| r.state == InstanceState::Failed)
            .collect();
        for id in ["a", "b", "e"] {
            let calls = w.nova.evacuate_calls(id);
            if let Some(r) = unknown.iter().find(|r| r.server_id == id) {
                // A crash around the call leaves its outcome unknown: it
                // pages rather than evacuate again.
                assert!(
                    calls <= 1,
                    "crash after write {n}: {id} evacuated twice: {r:?}"
                );
            } else {
                assert_eq!(calls, 1, "crash after write {n}: one evacuate of {id}");
            }
        }
        assert!(
            w.position("evacuate") < w.position("power_off") || unknown.len() == 3,
            "crash after write {n}: evacuations before the power-off: {:?}",
            w.calls()
        );
        if unknown.is_empty() {
            assert_eq!(
                out.status,
                IncidentStatus::Completed,
                "crash after write {n}: {:?}",
                out.reason
            );
        }
        n += 1;
    }
}

#[tokio::test]
async fn kdump_dry_run_journals_the_confirmation_wait_and_power_off_and_calls_nothing() {
    let w = World::new(&[Bmc::Works]);
    let (decided, kd) = sender(&w, None);
    let out = with_kdump(&w, w.journal.clone(), kd)
        .start(&w.levels(), kdump_trigger(decided), Mode::DryRun)
        .await
        .expect("workflow runs");
    let (out, _) = settle(out).await;
    assert_eq!(out.status, IncidentStatus::DryRun, "{:?}", out.reason);
    assert!(w.calls().is_empty(), "no call: {:?}", w.calls());
    let d = w.detail(&out).await;
    let dry: Vec<(StepKind, String)> = d
        .steps
        .iter()
        .filter(|s| s.outcome == Some(StepOutcome::DryRun))
        .map(|s| (s.kind, s.target.clone()))
        .collect();
    assert!(
        dry.contains(&(StepKind::ConfirmOff, KDUMP_TARGET.to_string())),
        "{dry:?}"
    );
    let confirm = dry.iter().position(|(k, _)| *k == StepKind::ConfirmOff);
    let wait = dry.iter().position(|(k, _)| *k == StepKind::AwaitDump);
    let off = dry.iter().position(|(k, _)| *k == StepKind::PowerOff);
    let evac = dry.iter().position(|(k, _)| *k == StepKind::Evacuate);
    assert!(
        confirm < evac && evac < wait && wait < off && confirm.is_some(),
        "confirm, evacuate, wait, power off: {dry:?}"
    );
}

#[tokio::test]
async fn without_the_kdump_watch_a_kdump_verdict_is_fenced_by_power_off_first() {
    let w = World::new(&[Bmc::Works]);
    let out = w
        .recovery()
        .start(&w.levels(), kdump_trigger(w.clock.now()), Mode::Live)
        .await
        .expect("workflow runs");
    let (out, _) = settle(out).await;
    assert_eq!(out.status, IncidentStatus::Completed, "{:?}", out.reason);
    assert_eq!(w.fencers[0].offs(), 1);
    assert!(w.position("power_off") < w.position("evacuate"));
    assert!(w
        .detail(&out)
        .await
        .steps_of(StepKind::ConfirmOff, KDUMP_TARGET)
        .next()
        .is_none());
}

#[tokio::test]
async fn a_node_that_came_back_on_its_own_after_the_dump_is_not_powered_off() {
    // Stop the decider inside the wait for the dump (the first crash point
    // where an await_dump step has begun), let the node boot anew, resume.
    for n in 1.. {
        assert!(n < 200, "no crash point inside the wait for the dump");
        let w = World::new(&[Bmc::Works]);
        let (decided, kd) = sender(&w, Some(Duration::from_secs(300)));
        let crashing = Arc::new(CrashingJournal {
            inner: w.journal.clone(),
            budget: AtomicI64::new(n),
        });
        let first = with_kdump(&w, crashing, kd.clone())
            .start(&w.levels(), kdump_trigger(decided), Mode::Live)
            .await;
        assert!(first.is_err(), "the run ended before its wait for the dump");
        let Some(inc) = w.journal.open_incidents().await.expect("open").pop() else {
            continue;
        };
        let d = w.journal.get(&inc.id).await.expect("incident");
        if d.steps_of(StepKind::AwaitDump, "c1").next().is_none() {
            continue;
        }
        let r = with_kdump(&w, w.journal.clone(), kd.restarted(w.clock.now()));
        let back = r.node_booted("c1", "boot-2").await.expect("boot recorded");
        assert_eq!(
            back.as_ref(),
            Some(&inc.id),
            "kdump's confirmation counts as fenced"
        );
        let (out, _) = settle(r.resume(&w.levels(), &inc.id).await.expect("resume")).await;
        assert_eq!(out.status, IncidentStatus::Completed, "{:?}", out.reason);
        assert_eq!(
            w.fencers[0].offs(),
            0,
            "a running node is never powered off"
        );
        let ev = w
            .detail(&out)
            .await
            .events_of(POWERED_OFF_AFTER_DUMP)
            .next()
            .map(|e| e.message.clone())
            .expect("the report says why");
        assert!(ev.contains("not powered off"), "{ev}");
        return;
    }
}
