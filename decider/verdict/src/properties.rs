//! Property tests of the verdict core, over evidence and event orders no
//! table of cases lists: never `dead` while any veto holds, in one
//! assessment or through the tracker over time; the storm guard never lets
//! more nodes through than configured, whatever the order of events.

use crate::policy::StormPolicy;
use crate::*;
use proptest::collection::vec;
use proptest::prelude::*;
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

/// Far enough from zero that every "ago" below stays positive.
const START: u64 = 10_000;

fn ms(max: u64) -> impl Strategy<Value = Duration> + Clone {
    (0..=max).prop_map(Duration::from_millis)
}

/// A moment up to `max_ago` ms before `now`.
fn before(now: Moment, max_ago: u64) -> impl Strategy<Value = Moment> + Clone {
    (0..=max_ago).prop_map(move |a| now.minus(Duration::from_millis(a)))
}

fn signals() -> impl Strategy<Value = Signals> {
    let nova = prop_oneof![
        Just(NovaComputeProcess::Unknown),
        Just(NovaComputeProcess::Running),
        Just(NovaComputeProcess::Gone),
        ms(120_000).prop_map(|b| NovaComputeProcess::Blocked { blocked_for: b }),
    ];
    let mode = prop_oneof![
        Just(ProbeMode::Unknown),
        Just(ProbeMode::Ebpf),
        Just(ProbeMode::Procfs)
    ];
    let instance =
        (0u8..4, any::<bool>(), ms(50), any::<bool>()).prop_map(|(u, alive, cpu, exited)| {
            InstanceActivity {
                uuid: format!("uuid-{u}"),
                alive,
                cpu_delta: cpu,
                exited,
            }
        });
    let blocked = (1u32..100, ms(120_000)).prop_map(|(pid, b)| BlockedTask {
        pid,
        comm: "task".into(),
        blocked_for: b,
    });
    let stall = (0u32..3, ms(120_000)).prop_map(|(n, oldest)| DeviceStall {
        device: "loop0".into(),
        in_flight: n,
        oldest,
    });
    (
        mode,
        nova,
        vec(blocked, 0..3),
        vec(stall, 0..2),
        vec(instance, 0..4),
        0u64..3,
    )
        .prop_map(
            |(mode, nova_compute, blocked_tasks, device_stalls, instances, hung)| Signals {
                mode,
                nova_compute,
                blocked_tasks,
                device_stalls,
                instances,
                hung_task_events: hung,
                failed_probes: vec![],
            },
        )
}

fn sensor(now: Moment) -> impl Strategy<Value = SensorWitness> {
    prop_oneof![
        before(now, 60_000).prop_map(|since| SensorWitness::NeverSeen { since }),
        (any::<bool>(), before(now, 30_000), ms(10_000), signals()).prop_map(
            |(connected, last, interval, signals)| {
                SensorWitness::Seen(Box::new(SensorReading {
                    connected,
                    last_heartbeat_at: last,
                    interval,
                    boot_id: "boot".into(),
                    instance: String::new(),
                    system_uuid: String::new(),
                    seq: 1,
                    seq_gaps: 0,
                    boot_changes: 0,
                    boot_changed_at: None,
                    signals,
                }))
            }
        ),
    ]
}

fn nova(now: Moment) -> impl Strategy<Value = NovaWitness> {
    let state = || {
        prop_oneof![
            Just(ServiceState::Up),
            Just(ServiceState::Down),
            Just(ServiceState::Unknown)
        ]
    };
    let reason = || {
        prop_oneof![
            Just(None),
            Just(Some("maintenance: disk swap".to_string())),
            Just(Some("vigil: fenced".to_string())),
        ]
    };
    let service = || {
        (
            before(now, 5_000),
            state(),
            any::<bool>(),
            reason(),
            any::<bool>(),
            ms(60_000),
        )
            .prop_map(
                |(polled_at, state, enabled, disabled_reason, forced_down, stalled)| NovaService {
                    polled_at,
                    state,
                    enabled,
                    disabled_reason,
                    forced_down,
                    updated_at_stalled: stalled,
                    instances: None,
                },
            )
    };
    prop_oneof![
        before(now, 60_000).prop_map(|since| NovaWitness::NotPolled { since }),
        (before(now, 60_000), proptest::option::of(service())).prop_map(|(since, last_known)| {
            NovaWitness::Unreachable {
                since,
                error: "connection refused".into(),
                last_known,
            }
        }),
        before(now, 5_000).prop_map(|polled_at| NovaWitness::NotListed { polled_at }),
        service().prop_map(NovaWitness::Listed),
    ]
}

fn ping(now: Moment, role: PingRole) -> impl Strategy<Value = PingWitness> {
    (
        0u8..250,
        proptest::option::of(before(now, 20_000)),
        proptest::option::of(before(now, 60_000)),
        0u32..10,
    )
        .prop_map(move |(last_octet, probe, answer, failures)| PingWitness {
            address: IpAddr::V4(Ipv4Addr::new(198, 51, 100, last_octet)),
            role: role.clone(),
            last_probe_at: probe,
            last_sent_at: None,
            last_answer_at: answer,
            last_rtt: None,
            consecutive_failures: failures,
            send_error: None,
        })
}

fn pings(now: Moment) -> impl Strategy<Value = Vec<PingWitness>> {
    let one = prop_oneof![
        ping(now, PingRole::Host),
        ping(
            now,
            PingRole::Instance {
                uuid: "uuid-1".into()
            }
        ),
    ];
    vec(one, 0..4)
}

fn decider(now: Moment) -> impl Strategy<Value = DeciderView> {
    (
        vec(ping(now, PingRole::Reference), 0..3),
        1usize..10,
        0usize..10,
        any::<bool>(),
    )
        .prop_map(
            |(reference_pings, known, silent, nova_reachable)| DeciderView {
                reference_pings,
                nodes_known: known,
                sensors_silent: silent.min(known),
                nova_reachable,
            },
        )
}

/// Evidence close to a dead node (silent sensor, stalled Nova, failing
/// pings, a decider that sees the rest of the world), still varied in every
/// field that decides: uniform evidence is almost never `dead`.
fn near_dead(now: Moment) -> impl Strategy<Value = Evidence> {
    let ago =
        move |lo: u64, hi: u64| (lo..=hi).prop_map(move |a| now.minus(Duration::from_millis(a)));
    let sensor = (any::<bool>(), ago(2_000, 30_000), ms(2_000), signals()).prop_map(
        |(connected, last, interval, signals)| {
            SensorWitness::Seen(Box::new(SensorReading {
                connected,
                last_heartbeat_at: last,
                interval,
                boot_id: "boot".into(),
                instance: String::new(),
                system_uuid: String::new(),
                seq: 1,
                seq_gaps: 0,
                boot_changes: 0,
                boot_changed_at: None,
                signals,
            }))
        },
    );
    let state = prop_oneof![
        3 => Just(ServiceState::Down),
        1 => Just(ServiceState::Up),
        1 => Just(ServiceState::Unknown)
    ];
    let nova = (
        ago(0, 2_000),
        state,
        any::<bool>(),
        any::<bool>(),
        ms(60_000),
    )
        .prop_map(|(polled_at, state, enabled, forced_down, stalled)| {
            NovaWitness::Listed(NovaService {
                polled_at,
                state,
                enabled,
                disabled_reason: None,
                forced_down,
                updated_at_stalled: stalled,
                instances: None,
            })
        });
    let host = (
        0u8..250,
        ago(0, 3_000),
        proptest::option::of(ago(0, 30_000)),
        1u32..6,
    )
        .prop_map(|(o, probe, answer, failures)| PingWitness {
            address: IpAddr::V4(Ipv4Addr::new(198, 51, 100, o)),
            role: PingRole::Host,
            last_probe_at: Some(probe),
            last_sent_at: None,
            last_answer_at: answer,
            last_rtt: None,
            consecutive_failures: failures,
            send_error: None,
        });
    let reference = (ago(0, 3_000), 0u32..2).prop_map(|(at, failures)| PingWitness {
        address: IpAddr::V4(Ipv4Addr::new(198, 51, 100, 1)),
        role: PingRole::Reference,
        last_probe_at: Some(at),
        last_sent_at: None,
        last_answer_at: Some(at),
        last_rtt: None,
        consecutive_failures: failures,
        send_error: None,
    });
    let decider = (vec(reference, 1..3), 3usize..10, 0usize..3).prop_map(
        |(reference_pings, known, silent)| DeciderView {
            reference_pings,
            nodes_known: known,
            sensors_silent: silent,
            nova_reachable: true,
        },
    );
    (sensor, nova, vec(host, 1..3), decider)
        .prop_map(|(sensor, nova, pings, decider)| Evidence {
            sensor,
            nova,
            pings,
            decider,
            bmc: Default::default(),
            kdump: Default::default(),
        })
        .prop_flat_map(move |ev| (Just(ev), bmc(now), kdump(now)))
        .prop_map(|(ev, bmc, kdump)| Evidence { bmc, kdump, ..ev })
}

/// The BMC witness: absent, or any identity reading any power, 0–5 s ago.
fn bmc(now: Moment) -> impl Strategy<Value = BmcWitness> {
    let identity = prop_oneof![
        1 => Just(BmcIdentity::NoBmc),
        1 => Just(BmcIdentity::Unverified("no sensor UUID".into())),
        1 => Just(BmcIdentity::Mismatch("other machine".into())),
        3 => Just(BmcIdentity::Verified { uuid: "u".into() }),
    ];
    let power = prop_oneof![
        3 => Just(BmcPower::Off),
        1 => Just(BmcPower::On),
        1 => Just(BmcPower::Unknown("timeout".into())),
    ];
    let read = (power, before(now, 3_000)).prop_map(|(power, at)| BmcRead { at, power });
    prop_oneof![
        1 => Just(BmcWitness::default()),
        3 => (identity, proptest::option::of(read), ms(4_000))
            .prop_map(|(identity, last, run)| BmcWitness {
                identity,
                // A run of `Off` reads that began up to 4 s before the latest.
                off_since: last
                    .as_ref()
                    .filter(|r| r.power == BmcPower::Off)
                    .map(|r| r.at.minus(run)),
                last,
            }),
    ]
}

/// fence_kdump datagrams: none, or some, the latest 0–40 s ago.
fn kdump(now: Moment) -> impl Strategy<Value = KdumpWitness> {
    prop_oneof![
        4 => Just(KdumpWitness::default()),
        1 => (1u64..20, before(now, 40_000), 0u8..250).prop_map(|(messages, last, o)| {
            KdumpWitness {
                first_at: Some(last),
                last_at: Some(last),
                messages,
                from: Some(IpAddr::V4(Ipv4Addr::new(198, 51, 100, o))),
            }
        }),
    ]
}

fn evidence(now: Moment) -> impl Strategy<Value = Evidence> {
    let any_evidence = (
        (sensor(now), nova(now), pings(now), decider(now)),
        bmc(now),
        kdump(now),
    )
        .prop_map(|((sensor, nova, pings, decider), bmc, kdump)| Evidence {
            sensor,
            nova,
            pings,
            decider,
            bmc,
            kdump,
        });
    prop_oneof![any_evidence, near_dead(now)]
}

/// Evidence at each of several moments 0–3 s apart.
fn timeline() -> impl Strategy<Value = Vec<(u64, Evidence)>> {
    vec(0u64..3_000, 1..40).prop_flat_map(|steps| {
        let mut at = START;
        let moments: Vec<u64> = steps
            .iter()
            .map(|s| {
                at += s;
                at
            })
            .collect();
        moments
            .into_iter()
            .map(|m| evidence(Moment::from_millis(m)).prop_map(move |e| (m, e)))
            .collect::<Vec<_>>()
    })
}

/// Independent of `evaluate`'s own veto list: an address that answered and
/// has not failed enough probes since is safety rule 2 as PRODUCT.md says it.
fn an_address_answers(ev: &Evidence, policy: &Policy, now: Moment) -> bool {
    answers(ev, policy, now, |r| !matches!(r, PingRole::Reference))
}

/// The same for instance addresses only: no fast path supersedes these.
fn an_instance_answers(ev: &Evidence, policy: &Policy, now: Moment) -> bool {
    answers(ev, policy, now, |r| matches!(r, PingRole::Instance { .. }))
}

fn answers(ev: &Evidence, policy: &Policy, now: Moment, role: impl Fn(&PingRole) -> bool) -> bool {
    ev.pings.iter().any(|p| {
        role(&p.role)
            && p.last_answer_at.is_some()
            && p.consecutive_failures < policy.ping.failures_for_silent
            && p.last_probe_at
                .is_some_and(|at| now.since(at) <= policy.ping.probe_stale_after)
    })
}

proptest! {
    // Timelines of up to 40 assessments each: 1,000 cases take ~10 s in a
    // debug build.
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    #[test]
    fn never_dead_while_a_veto_holds(ev in evidence(Moment::from_millis(START))) {
        let policy = Policy::default();
        let now = Moment::from_millis(START);
        let a = evaluate(&ev, &policy, now);
        if a.verdict == Verdict::Dead {
            prop_assert!(a.vetoes.is_empty(), "dead with vetoes {:?}", a.vetoes);
            prop_assert!(!an_instance_answers(&ev, &policy, now), "dead while an instance answers: {:?}", ev.pings);
            // Only the crash kernel's own management address may answer.
            if a.fast_path != Some(FastPath::Kdump) {
                prop_assert!(!an_address_answers(&ev, &policy, now), "dead while an address answers: {:?}", ev.pings);
            }
        }
    }

    #[test]
    fn a_fast_path_needs_a_silent_sensor_and_its_own_fresh_evidence(ev in evidence(Moment::from_millis(START))) {
        let policy = Policy::default();
        let now = Moment::from_millis(START);
        let a = evaluate(&ev, &policy, now);
        match a.fast_path {
            None => {}
            Some(path) => {
                prop_assert_eq!(a.verdict, Verdict::Dead);
                prop_assert!(ev.sensor.is_silent(&policy, now), "fast path with a live sensor");
                match path {
                    FastPath::BmcOff => {
                        prop_assert!(matches!(ev.bmc.identity, BmcIdentity::Verified { .. }), "unverified BMC counted");
                        let read = ev.bmc.last.as_ref().expect("a read");
                        prop_assert_eq!(&read.power, &BmcPower::Off);
                        prop_assert!(now.since(read.at) <= policy.bmc.fresh_for, "stale read counted");
                        let since = ev.bmc.off_since.expect("a run of Off reads");
                        if let SensorWitness::Seen(r) = &ev.sensor {
                            prop_assert!(r.last_heartbeat_at < since, "a heartbeat after the BMC read off");
                        }
                        prop_assert!(
                            ev.pings.iter().all(|p| p.last_answer_at.is_none_or(|a| a < since)),
                            "an answer after the BMC read off"
                        );
                    }
                    FastPath::Kdump => {
                        let last = ev.kdump.last_at.expect("a datagram");
                        prop_assert!(now.since(last) <= policy.kdump.fresh_for, "old datagrams counted");
                    }
                }
            }
        }
    }

    /// Converging lets the confirmation window run early; it is only ever
    /// a `suspect` node's, and never while the decider may be cut off.
    #[test]
    fn converging_is_only_a_suspect_nodes_and_never_an_isolated_deciders(ev in evidence(Moment::from_millis(START))) {
        let policy = Policy::default();
        let now = Moment::from_millis(START);
        let a = evaluate(&ev, &policy, now);
        if a.converging {
            prop_assert_eq!(a.verdict, Verdict::Suspect);
            prop_assert!(
                !a.vetoes.iter().any(|v| v.rule == VetoRule::DeciderIsolated || v.rule == VetoRule::Maintenance),
                "converging under {:?}", a.vetoes
            );
        }
    }

    #[test]
    fn the_tracker_never_shows_dead_while_a_veto_holds(steps in timeline()) {
        let policy = Policy::default();
        let mut t = NodeTracker::new(Moment::from_millis(START));
        for (at, ev) in steps {
            let now = Moment::from_millis(at);
            let a = evaluate(&ev, &policy, now);
            let vetoed = !a.vetoes.is_empty()
                || an_instance_answers(&ev, &policy, now)
                || (a.fast_path != Some(FastPath::Kdump) && an_address_answers(&ev, &policy, now));
            t.observe(a, &policy, now);
            if vetoed {
                prop_assert_ne!(t.verdict(), Verdict::Dead, "reasons {:?}", t.reasons());
            }
        }
    }
}

/// One event the storm guard sees: (node, kind, confirmed, ms since the
/// previous event). Kinds: 0 down, 1 up, 2 check.
type StormEvent = (usize, u8, bool, u64);

const NODES: usize = 8;

fn segment(node: usize) -> String {
    format!("rack{}", node % 2)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn the_storm_guard_never_lets_more_nodes_through_than_configured(
        max_dead in 0u32..5,
        share_pct in 5u32..=100,
        events in vec((0..NODES, 0u8..3, any::<bool>(), 0u64..4_000), 1..200),
    ) {
        let policy = StormPolicy {
            max_dead,
            max_share: f64::from(share_pct) / 100.0,
            window: Duration::from_secs(10),
        };
        let sizes: BTreeMap<String, usize> =
            (0..2).map(|r| (format!("rack{r}"), NODES / 2)).collect();
        let mut guard = StormGuard::new();
        // The model: node -> (first sign of down, confirmed), kept the way
        // safety rule 6 words it, to compare the guard's count with.
        let mut model: BTreeMap<usize, (u64, bool)> = BTreeMap::new();
        let mut now = START;
        let events: Vec<StormEvent> = events;
        for (node, kind, confirmed, dt) in events {
            now += dt;
            let at = Moment::from_millis(now);
            match kind {
                0 => {
                    guard.note_down(&format!("n{node}"), &segment(node), confirmed, at);
                    model.entry(node).or_insert((now, confirmed)).1 |= confirmed;
                }
                1 => {
                    guard.note_up(&format!("n{node}"));
                    if model.get(&node).is_some_and(|(_, c)| !c) {
                        model.remove(&node);
                    }
                }
                _ => {
                    let hold = guard.check(&policy, &sizes, at);
                    model.retain(|_, (t, _)| now - *t <= 10_000);
                    prop_assert_eq!(guard.counted(), model.len());
                    let held: BTreeSet<String> = hold.map(|h| h.nodes).unwrap_or_default();
                    let through: Vec<usize> = model
                        .keys()
                        .copied()
                        .filter(|n| !held.contains(&format!("n{n}")))
                        .collect();
                    prop_assert!(
                        through.len() <= max_dead as usize,
                        "{} nodes let through, max_dead {max_dead}: {through:?}",
                        through.len()
                    );
                    for rack in 0..2 {
                        let down = model.keys().filter(|n| *n % 2 == rack).count();
                        let share = down as f64 / (NODES / 2) as f64;
                        if share > policy.max_share {
                            prop_assert!(
                                through.iter().all(|n| n % 2 != rack),
                                "rack{rack}: {down} of {} down (> {}), yet {through:?} let through",
                                NODES / 2,
                                policy.max_share
                            );
                        }
                    }
                }
            }
        }
    }
}

/// The generators reach `dead` (and vetoed non-dead) often enough for the
/// properties above to mean something.
#[test]
fn the_evidence_generator_reaches_dead_and_vetoes() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let policy = Policy::default();
    let now = Moment::from_millis(START);
    let mut runner = TestRunner::deterministic();
    let strategy = evidence(now);
    let (mut dead, mut vetoed, mut bmc, mut kdump, mut converging) = (0, 0, 0, 0, 0);
    for _ in 0..4000 {
        let ev = strategy.new_tree(&mut runner).expect("evidence").current();
        let a = evaluate(&ev, &policy, now);
        dead += usize::from(a.verdict == Verdict::Dead);
        vetoed += usize::from(!a.vetoes.is_empty());
        bmc += usize::from(a.fast_path == Some(FastPath::BmcOff));
        kdump += usize::from(a.fast_path == Some(FastPath::Kdump));
        converging += usize::from(a.converging);
    }
    eprintln!(
        "of 4000: {dead} dead ({bmc} by the BMC, {kdump} by kdump), {vetoed} vetoed, {converging} converging"
    );
    assert!(converging >= 20, "converging barely reached: {converging}");
    assert!(
        bmc >= 20 && kdump >= 20,
        "fast paths barely reached: {bmc} BMC, {kdump} kdump"
    );
    assert!(
        dead >= 200,
        "only {dead} of 4000 generated nodes judged dead"
    );
    assert!(vetoed >= 400, "only {vetoed} of 4000 vetoed");
}
