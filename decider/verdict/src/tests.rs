//! The fault matrix as a table: one compact row per case of PRODUCT.md and
//! issue 5 (issue 7 runs the same cases end to end), each asserting the
//! verdict and its reasons through one `check` helper.

use crate::*;
use std::net::IpAddr;
use std::time::Duration;

const NOW: Moment = Moment::from_secs(1000);

fn ago(ms: u64) -> Moment {
    NOW.minus(Duration::from_millis(ms))
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("test address")
}

/// Evidence under construction, starting from a healthy node with three
/// running instances that answer ping.
#[derive(Clone)]
struct Ev(Evidence, Policy);

fn node() -> Ev {
    let instances = (1..=3)
        .map(|i| InstanceActivity {
            uuid: format!("uuid-{i}"),
            alive: true,
            cpu_delta: Duration::from_millis(20),
            exited: false,
        })
        .collect();
    let answering = |address: &str, role: PingRole| PingWitness {
        address: ip(address),
        role,
        last_probe_at: Some(ago(300)),
        last_sent_at: None,
        last_answer_at: Some(ago(300)),
        last_rtt: Some(Duration::from_micros(80)),
        consecutive_failures: 0,
        send_error: None,
    };
    let mut pings = vec![answering("198.51.100.11", PingRole::Host)];
    for i in 1..=3 {
        pings.push(answering(
            &format!("203.0.113.10{i}"),
            PingRole::Instance {
                uuid: format!("uuid-{i}"),
            },
        ));
    }
    Ev(
        Evidence {
            sensor: SensorWitness::Seen(Box::new(SensorReading {
                connected: true,
                last_heartbeat_at: ago(400),
                interval: Duration::from_secs(1),
                boot_id: "boot-a".into(),
                instance: "sensor-run-1".into(),
                system_uuid: String::new(),
                seq: 812,
                seq_gaps: 0,
                boot_changes: 0,
                boot_changed_at: None,
                signals: Signals {
                    mode: ProbeMode::Ebpf,
                    nova_compute: NovaComputeProcess::Running,
                    instances,
                    ..Signals::default()
                },
            })),
            nova: NovaWitness::Listed(NovaService {
                polled_at: ago(500),
                state: ServiceState::Up,
                enabled: true,
                disabled_reason: None,
                forced_down: false,
                updated_at_stalled: Duration::from_secs(4),
                instances: None,
            }),
            pings,
            decider: DeciderView {
                reference_pings: vec![answering("198.51.100.1", PingRole::Reference)],
                nodes_known: 3,
                sensors_silent: 0,
                nova_reachable: true,
            },
            bmc: BmcWitness::default(),
            kdump: KdumpWitness::default(),
        },
        Policy::default(),
    )
}

impl Ev {
    fn reading(&mut self) -> &mut SensorReading {
        match &mut self.0.sensor {
            SensorWitness::Seen(r) => r,
            SensorWitness::NeverSeen { .. } => panic!("test evidence has no sensor reading"),
        }
    }
    fn service(&mut self) -> &mut NovaService {
        match &mut self.0.nova {
            NovaWitness::Listed(s) => s,
            _ => panic!("test evidence has no Nova service"),
        }
    }
    fn sensor_silent(mut self, secs: u64) -> Self {
        let r = self.reading();
        r.last_heartbeat_at = NOW.minus(Duration::from_secs(secs));
        r.connected = false;
        self.0.decider.sensors_silent += 1;
        self
    }
    fn sensor_never_seen(mut self) -> Self {
        self.0.sensor = SensorWitness::NeverSeen {
            since: NOW.minus(Duration::from_secs(60)),
        };
        self
    }
    fn nova_compute(mut self, p: NovaComputeProcess) -> Self {
        self.reading().signals.nova_compute = p;
        self
    }
    fn instances(mut self, progressing: usize, total: usize) -> Self {
        self.reading().signals.instances = (0..total)
            .map(|i| InstanceActivity {
                uuid: format!("uuid-{i}"),
                alive: true,
                cpu_delta: if i < progressing {
                    Duration::from_millis(9)
                } else {
                    Duration::ZERO
                },
                exited: false,
            })
            .collect();
        self
    }
    fn nova_stalled(mut self, secs: u64) -> Self {
        self.service().updated_at_stalled = Duration::from_secs(secs);
        self
    }
    fn nova_down(mut self) -> Self {
        self.service().state = ServiceState::Down;
        self.nova_stalled(70)
    }
    fn nova_disabled(mut self, reason: &str) -> Self {
        let s = self.service();
        s.enabled = false;
        s.disabled_reason = Some(reason.to_string());
        self
    }
    fn nova_unreachable(mut self) -> Self {
        let last_known = match &self.0.nova {
            NovaWitness::Listed(s) => Some(s.clone()),
            _ => None,
        };
        self.0.nova = NovaWitness::Unreachable {
            since: NOW.minus(Duration::from_secs(20)),
            error: "GET http://198.51.100.1:8774/v2.1/os-services: connection refused".into(),
            last_known,
        };
        self.0.decider.nova_reachable = false;
        self
    }
    fn nova_not_listed(mut self) -> Self {
        self.0.nova = NovaWitness::NotListed {
            polled_at: ago(500),
        };
        self
    }
    fn silence(p: &mut PingWitness) {
        p.last_probe_at = Some(ago(200));
        p.consecutive_failures = 5;
        // Five probes at least half a second apart went unanswered since.
        if p.last_answer_at.is_some() {
            p.last_answer_at = Some(ago(3_000));
        }
    }
    fn host_ping_silent(mut self) -> Self {
        self.0
            .pings
            .iter_mut()
            .filter(|p| p.role == PingRole::Host)
            .for_each(Self::silence);
        self
    }
    /// Every probe's send fails now (EPERM from a host firewall); the
    /// answers before that stay on record.
    fn pings_send_failed(mut self) -> Self {
        for p in self.0.pings.iter_mut() {
            p.send_error = Some("Operation not permitted (os error 1)".into());
        }
        self
    }
    fn instance_pings_silent(mut self) -> Self {
        self.0
            .pings
            .iter_mut()
            .filter(|p| matches!(p.role, PingRole::Instance { .. }))
            .for_each(Self::silence);
        self
    }
    fn instance_pings_never_answered(mut self) -> Self {
        for p in self
            .0
            .pings
            .iter_mut()
            .filter(|p| matches!(p.role, PingRole::Instance { .. }))
        {
            Self::silence(p);
            p.last_answer_at = None;
        }
        self
    }
    fn pings_stale(mut self) -> Self {
        for p in &mut self.0.pings {
            p.last_probe_at = Some(NOW.minus(Duration::from_secs(90)));
            p.consecutive_failures = 5;
        }
        self
    }
    fn no_host_address(mut self) -> Self {
        self.0.pings.retain(|p| p.role != PingRole::Host);
        self
    }
    /// Power loss: heartbeats stop, Nova's updated_at stops, nothing answers.
    fn power_loss(self) -> Self {
        self.sensor_silent(14)
            .nova_stalled(13)
            .host_ping_silent()
            .instance_pings_silent()
    }
    /// The decider's own network is cut: Nova, every sensor and every
    /// address, the reference ones included, go silent at once.
    fn decider_cut_off(mut self) -> Self {
        self = self
            .sensor_silent(20)
            .nova_unreachable()
            .host_ping_silent()
            .instance_pings_silent();
        self.0.decider.sensors_silent = self.0.decider.nodes_known;
        self.0
            .decider
            .reference_pings
            .iter_mut()
            .for_each(Self::silence);
        self
    }
    fn device_stall(mut self, device: &str, secs: u64) -> Self {
        self.reading().signals.device_stalls.push(DeviceStall {
            device: device.into(),
            in_flight: 4,
            oldest: Duration::from_secs(secs),
        });
        self
    }
    fn rebooted(mut self, secs_ago: u64) -> Self {
        let r = self.reading();
        r.boot_id = "boot-b".into();
        r.seq = 20;
        r.boot_changes = 1;
        r.boot_changed_at = Some(NOW.minus(Duration::from_secs(secs_ago)));
        self
    }
    fn procfs(mut self) -> Self {
        self.reading().signals.mode = ProbeMode::Procfs;
        self
    }
    fn require(mut self, w: &[WitnessKind]) -> Self {
        self.1.required_for_dead = w.to_vec();
        self
    }
    fn nothing_known(mut self) -> Self {
        self.0.sensor = SensorWitness::NeverSeen { since: ago(500) };
        self.0.nova = NovaWitness::NotPolled { since: ago(500) };
        for p in &mut self.0.pings {
            p.last_probe_at = None;
            p.last_answer_at = None;
        }
        self
    }
}

/// Evaluates `ev` and asserts the verdict, that the headline contains
/// `reasons[0]` and that each further fragment appears in some reason.
#[track_caller]
fn check(ev: Ev, expected: Verdict, reasons: &[&str]) -> Assessment {
    let a = evaluate(&ev.0, &ev.1, NOW);
    let dump = a.reasons.join("\n  ");
    assert_eq!(a.verdict, expected, "verdict; reasons:\n  {dump}");
    if let Some(head) = reasons.first() {
        assert!(
            a.reasons[0].contains(head),
            "headline lacks {head:?}; reasons:\n  {dump}"
        );
    }
    for r in reasons.iter().skip(1) {
        assert!(
            a.reasons.iter().any(|x| x.contains(r)),
            "no reason contains {r:?}; reasons:\n  {dump}"
        );
    }
    if expected == Verdict::Dead {
        assert!(a.vetoes.is_empty(), "dead with vetoes: {:?}", a.vetoes);
    } else if expected != Verdict::Healthy && expected != Verdict::Suspect {
        assert!(
            !a.vetoes.is_empty(),
            "{expected} must name what forbids fencing"
        );
    }
    a
}

#[rustfmt::skip]
mod matrix {
    use super::*;
    use NovaComputeProcess::*;
    use Verdict::*;
    use WitnessKind::*;

    #[test] fn healthy_node() { check(node(), Healthy, &["up", "heartbeat 0.4 s ago (seq 812); 3/3 instances progressing", "1/1 host address(es) answer, 3/3 instance"]); }
    #[test] fn clean_power_loss() { check(node().power_loss(), Dead, &["all required witnesses say dead: sensor, Nova, pings", "silent 14 s", "updated_at stalled 13 s", "0/1 host address(es) answer"]); }
    #[test] fn power_loss_before_nova_goes_stale() { check(node().power_loss().nova_stalled(5), Suspect, &["sensor and pings say dead; waiting for Nova (service up, updated_at advancing (unchanged for 5.0 s of 12 s))", "veto: safety rule 4"]); }
    #[test] fn nova_compute_crashed_host_and_vms_fine() { check(node().nova_compute(Gone).nova_down(), Degraded, &["nova-compute process gone; 3/3 instances progressing", "Nova: service down, updated_at stalled 70 s", "veto: safety rule 3"]); }
    #[test] fn nova_compute_hung_vms_running() { check(node().nova_compute(Blocked { blocked_for: Duration::from_secs(312) }).instances(14, 14).nova_stalled(40), Degraded, &["nova-compute blocked 312 s in D state; 14/14 instances progressing", "veto: safety rule 3", "veto: safety rule 2"]); }
    #[test] fn nova_compute_blocked_briefly_is_not_yet_degraded() { check(node().nova_compute(Blocked { blocked_for: Duration::from_secs(2) }), Healthy, &["up"]); }
    #[test] fn management_link_down_vms_answering() { check(node().sensor_silent(30).nova_stalled(30).host_ping_silent(), Degraded, &["sensor and Nova say dead but 203.0.113.101 (instance uuid-1), 203.0.113.102 (instance uuid-2), 203.0.113.103 (instance uuid-3) answer ping", "veto: safety rule 2"]); }
    #[test] fn sensor_crashed_only() { check(node().sensor_silent(30), Degraded, &["sensor says dead but 198.51.100.11 (host)", "sensor: silent 30 s", "veto: safety rule 4"]); }
    #[test] fn nova_api_down_node_fine() { check(node().nova_unreachable(), Healthy, &["up", "never counts as dead"]); }
    #[test] fn nova_api_down_and_node_dead() { check(node().power_loss().nova_unreachable(), Suspect, &["waiting for Nova (unreachable for 20 s", "never counts as dead"]); }
    #[test] fn decider_network_cut() { check(node().decider_cut_off(), Suspect, &["decider may be cut off: no reference address answers (198.51.100.1); not judging any node dead"]); }
    #[test] fn decider_network_cut_without_reference_addresses() { let mut ev = node().decider_cut_off().require(&[Sensor, Ping]); ev.0.decider.reference_pings.clear(); check(ev, Suspect, &["decider may be cut off: all 3 sensors silent at once and Nova unreachable"]); }
    #[test] fn node_rebooted() { check(node().rebooted(20), Healthy, &["up", "rebooted: boot id changed 20 s ago"]); }
    #[test] fn maintenance_node() { check(node().nova_disabled("disk swap, ticket 4411"), Maintenance, &["nova-compute service disabled by an operator: \"disk swap, ticket 4411\"", "never acted on (safety rule 5)"]); }
    #[test] fn maintenance_node_loses_power() { check(node().nova_disabled("bios upgrade").power_loss(), Maintenance, &["disabled by an operator"]); }
    #[test] fn maintenance_survives_nova_outage() { check(node().nova_disabled("bios upgrade").power_loss().nova_unreachable(), Maintenance, &["(as last seen; Nova unreachable now)"]); }
    #[test] fn disabled_by_vigil_is_not_maintenance() { check(node().nova_disabled("vigil: incident 42, node dead").power_loss(), Dead, &["all required witnesses say dead"]); }
    #[test] fn live_sensor_with_progress_vetoes_even_when_icmp_is_filtered() { check(node().nova_stalled(30).host_ping_silent().instance_pings_silent(), Degraded, &["Nova and pings say dead but its sensor stream is live", "veto: safety rule 3: heartbeat 0.4 s ago (seq 812); 3/3 instances progressing"]); }
    #[test] fn nova_not_listing_the_host_never_confirms() { check(node().power_loss().nova_not_listed(), Suspect, &["waiting for Nova (lists no nova-compute service"]); }
    #[test] fn instances_filtering_icmp_do_not_block_dead() { check(node().power_loss().instance_pings_never_answered(), Dead, &["all required witnesses say dead", "0/1 host address(es) answer, 0/0 instance"]); }
    #[test] fn stale_probes_never_confirm() { check(node().sensor_silent(20).nova_stalled(20).pings_stale(), Suspect, &["waiting for pings"]); }
    #[test] fn no_management_address() { check(node().power_loss().no_host_address(), Suspect, &["waiting for pings (no management address to probe; configure one"]); }
    #[test] fn stalled_block_device() { check(node().device_stall("loop3", 45), Degraded, &["block device loop3: oldest request in flight 45 s (4 in flight)"]); }
    #[test] fn a_failed_icmp_send_is_no_answer() { check(node().sensor_silent(30).nova_stalled(30).pings_send_failed(), Suspect, &["waiting for pings", "0/1 host address(es) answer, 0/3 instance"]); }
    #[test] fn procfs_fallback_is_said() { check(node().procfs(), Healthy, &["up", "/proc fallback mode"]); }
    #[test] fn vms_not_progressing_are_reported() { check(node().instances(0, 3), Healthy, &["up", "0/3 instances progressing"]); }
    #[test] fn sensor_never_connected_and_node_dead() { check(node().sensor_never_seen().power_loss_without_sensor(), Dead, &["all required witnesses say dead", "no heartbeat since watching began 60 s ago"]); }
    #[test] fn nodes_without_sensors_with_nova_and_ping_required() { check(node().sensor_never_seen().require(&[Nova, Ping]).power_loss_without_sensor(), Dead, &["all required witnesses say dead", "Nova: service up, updated_at stalled 13 s"]); }
    #[test] fn frozen_kernel_with_stream_still_open() { let mut ev = node().power_loss(); ev.reading().connected = true; check(ev, Dead, &["all required witnesses say dead", "stream still open"]); }
    #[test] fn nothing_known_yet() { check(node().nothing_known(), Suspect, &["no witness has reported on this node yet"]); }
}

/// The fast paths (issue 16): the node's own BMC reading power off, kdump.
#[rustfmt::skip]
mod fast {
    use super::*;
    use Verdict::*;

    #[test] fn power_loss_bmc_off_is_dead_before_nova_goes_stale() { let a = check(node().power_loss().nova_stalled(3).bmc(BmcPower::Off, 500, true), Dead, &["the node's own BMC reads power off", "BMC: power off, read 0.5 s ago", "superseded by the BMC's power-off evidence: safety rule 4"]); assert_eq!(a.fast_path, Some(FastPath::BmcOff)); }
    #[test] fn bmc_off_after_nova_stale_still_names_the_fast_path() { let a = check(node().power_loss().bmc(BmcPower::Off, 500, true), Dead, &["the node's own BMC reads power off"]); assert_eq!(a.fast_path, Some(FastPath::BmcOff)); }
    #[test] fn bmc_on_changes_nothing() { let a = check(node().power_loss().nova_stalled(3).bmc(BmcPower::On, 500, true), Suspect, &["waiting for Nova", "BMC: power on"]); assert_eq!(a.fast_path, None); }
    #[test] fn bmc_unreachable_is_never_evidence() { check(node().power_loss().nova_stalled(3).bmc(BmcPower::Unknown("connection refused".into()), 200, true), Suspect, &["waiting for Nova", "power unknown (connection refused)"]); }
    #[test] fn stale_bmc_off_does_not_count() { check(node().power_loss().nova_stalled(3).bmc(BmcPower::Off, 2_500, true), Suspect, &["waiting for Nova", "older than 2.0 s, not evidence"]); }
    #[test] fn unverified_bmc_off_does_not_count() { check(node().power_loss().nova_stalled(3).bmc(BmcPower::Off, 500, false), Suspect, &["waiting for Nova", "not evidence: identity not verified"]); }
    #[test] fn mismatched_bmc_off_does_not_count() { let mut ev = node().power_loss().nova_stalled(3).bmc(BmcPower::Off, 500, true); ev.0.bmc.identity = BmcIdentity::Mismatch("BMC says 33…, sensor says 11…".into()); check(ev, Suspect, &["waiting for Nova", "IDENTITY MISMATCH"]); }
    #[test] fn bmc_off_while_the_host_answers_is_a_misconfiguration_never_a_fence() { check(node().sensor_silent(20).nova_stalled(3).instance_pings_silent().bmc(BmcPower::Off, 500, true), Degraded, &["its BMC reads power off but 198.51.100.11 (host) answers ping", "veto: safety rule 2"]); }
    #[test] fn another_machines_bmc_reading_off_says_nothing_about_a_live_node() { let mut ev = node().bmc(BmcPower::Off, 500, true); ev.0.bmc.identity = BmcIdentity::Mismatch("BMC says 33…, sensor says 11…".into()); check(ev, Healthy, &["up", "IDENTITY MISMATCH"]); }
    #[test] fn bmc_off_while_the_sensor_streams_is_a_misconfiguration_never_a_fence() { check(node().host_ping_silent().instance_pings_silent().nova_stalled(3).bmc(BmcPower::Off, 500, true), Degraded, &["its BMC reads power off but its sensor stream is live", "veto: safety rule 3"]); }
    #[test] fn bmc_off_while_pings_are_still_probing_waits() { let mut ev = node().power_loss().nova_stalled(3).bmc(BmcPower::Off, 500, true); ev.0.pings.iter_mut().for_each(|p| p.consecutive_failures = 1); let a = check(ev, Suspect, &["its BMC has read power off for 0.5 s and the node has shown no life since; waiting for its addresses' probes", "veto: safety rule 2"]); assert!(a.converging); }
    #[test] fn power_loss_unfolding_is_neither_healthy_nor_a_misconfiguration() { let a = check(node().answered(2_000).last_heartbeat(1_800).bmc(BmcPower::Off, 500, true).bmc_off_since(1_500), Suspect, &["its BMC has read power off for 1.5 s and the node has shown no life since; waiting for its sensor's silence and its addresses' probes"]); assert!(a.converging, "the confirmation window runs while the sensor and probes count out"); assert_eq!(a.fast_path, None); }
    #[test] fn a_heartbeat_after_the_first_off_read_makes_the_bmc_wrong() { let a = check(node().answered(2_000).last_heartbeat(300).bmc(BmcPower::Off, 200, true).bmc_off_since(1_500), Degraded, &["its BMC reads power off but its sensor stream is live"]); assert!(!a.converging); }
    #[test] fn life_after_the_first_off_read_is_never_overridden_when_the_node_later_goes_silent() { let a = check(node().power_loss().nova_stalled(3).bmc(BmcPower::Off, 200, true).bmc_off_since(5_000), Suspect, &["waiting for Nova", "answered 3.0 s ago) after the BMC first read power off"]); assert_eq!(a.fast_path, None); assert!(a.converging, "Nova's wait is the only one left"); }
    #[test] fn unverified_bmc_off_during_a_power_loss_is_suspicion_not_convergence() { let a = check(node().answered(2_000).last_heartbeat(1_800).bmc(BmcPower::Off, 500, false).bmc_off_since(1_500), Suspect, &["its BMC has read power off"]); assert!(!a.converging, "an unverified BMC never runs the window"); }
    #[test] fn bmc_off_never_overrides_the_decider_isolation_check() { check(node().decider_cut_off().bmc(BmcPower::Off, 500, true), Suspect, &["decider may be cut off"]); }
    #[test] fn bmc_off_never_overrides_maintenance() { check(node().nova_disabled("bios").power_loss().bmc(BmcPower::Off, 500, true), Maintenance, &["disabled by an operator"]); }
    #[test] fn bmc_witness_switched_off_by_policy() { let mut ev = node().power_loss().nova_stalled(3).bmc(BmcPower::Off, 500, true); ev.1.bmc.enabled = false; check(ev, Suspect, &["waiting for Nova"]); }

    #[test] fn kdump_with_sensor_silent_and_instances_silent_is_dead_though_the_host_answers() { let a = check(node().sensor_silent(4).nova_stalled(3).instance_pings_silent().kdump(2, 400), Dead, &["crash kernel is sending fence_kdump messages", "kdump: crash kernel sending fence_kdump messages from 198.51.100.11: 2 so far, latest 0.4 s ago", "superseded by the kdump evidence: safety rule 2: 198.51.100.11 (host) answers ping", "superseded by the kdump evidence: safety rule 4"]); assert_eq!(a.fast_path, Some(FastPath::Kdump)); }
    #[test] fn kdump_that_nova_saw_report_after_is_contradicted_and_waits_for_nova() { let a = check(node().sensor_silent(4).nova_stalled(3).instance_pings_silent().kdump(5, 400), Degraded, &["sensor says dead but 198.51.100.11 (host) answers ping", "veto: safety rule 4: service up, updated_at advancing"]); assert_eq!(a.fast_path, None); }
    #[test] fn spoofed_kdump_for_a_live_node_is_no_evidence() { check(node().kdump(30, 400), Healthy, &["up", "kdump: crash kernel sending"]); }
    #[test] fn spoofed_kdump_while_the_sensor_streams_and_nova_stalls_never_fences() { check(node().nova_stalled(30).host_ping_silent().instance_pings_silent().kdump(30, 400), Degraded, &["Nova and pings say dead but its sensor stream is live", "veto: safety rule 3"]); }
    #[test] fn kdump_while_an_instance_answers_never_fences() { check(node().sensor_silent(4).nova_stalled(3).kdump(3, 400), Degraded, &["instance uuid-1", "veto: safety rule 2"]); }
    #[test] fn kdump_messages_that_stopped_are_no_longer_evidence() { check(node().sensor_silent(40).nova_stalled(3).instance_pings_silent().kdump(9, 30_000), Degraded, &["198.51.100.11 (host) answers ping", "fence_kdump messages from 198.51.100.11 stopped 30 s ago"]); }
    #[test] fn kdump_never_overrides_the_decider_isolation_check() { check(node().decider_cut_off().kdump(3, 400), Suspect, &["decider may be cut off"]); }
    #[test] fn kdump_never_overrides_maintenance() { check(node().nova_disabled("bios").sensor_silent(4).instance_pings_silent().kdump(3, 400), Maintenance, &["disabled by an operator"]); }
}

impl Ev {
    fn bmc(mut self, power: BmcPower, read_ms_ago: u64, verified: bool) -> Self {
        self.0.bmc = BmcWitness {
            identity: if verified {
                BmcIdentity::Verified {
                    uuid: "5f1c0a6e-0000-4000-8000-000000000001".into(),
                }
            } else {
                BmcIdentity::Unverified("the sensor has not reported a system UUID".into())
            },
            last: None,
            off_since: None,
        };
        self.0.bmc.record(BmcRead {
            at: ago(read_ms_ago),
            power,
        });
        self
    }
    /// The BMC's run of `Off` reads began this long ago.
    fn bmc_off_since(mut self, ms_ago: u64) -> Self {
        self.0.bmc.off_since = Some(ago(ms_ago));
        self
    }
    fn last_heartbeat(mut self, ms_ago: u64) -> Self {
        self.reading().last_heartbeat_at = ago(ms_ago);
        self
    }
    /// Every address last answered this long ago.
    fn answered(mut self, ms_ago: u64) -> Self {
        for p in self.0.pings.iter_mut() {
            p.last_answer_at = Some(ago(ms_ago));
        }
        self
    }
    fn kdump(mut self, messages: u64, last_ms_ago: u64) -> Self {
        self.0.kdump = KdumpWitness {
            first_at: Some(ago(last_ms_ago + 1000 * messages)),
            last_at: Some(ago(last_ms_ago)),
            messages,
            from: Some("198.51.100.11".parse().expect("literal address")),
        };
        self
    }
}

impl Ev {
    fn power_loss_without_sensor(self) -> Self {
        self.nova_stalled(13)
            .host_ping_silent()
            .instance_pings_silent()
    }
}

/// A timeline of assessments through the state machine.
mod machine {
    use super::*;

    fn at(ms: u64) -> Moment {
        NOW.plus(Duration::from_millis(ms))
    }

    fn assess(ev: &Ev, when: Moment) -> Assessment {
        // The evidence is fixed at NOW; the tracker sees it at `when`.
        let mut a = evaluate(&ev.0, &ev.1, NOW);
        a.reasons
            .push(format!("observed at {:?}", when.since_epoch()));
        a
    }

    #[test]
    fn first_assessment_applies_at_once() {
        let p = Policy::default();
        let mut t = NodeTracker::new(at(0));
        let c = t
            .observe(assess(&node(), at(0)), &p, at(0))
            .expect("change");
        assert_eq!((c.from, c.to), (Verdict::Suspect, Verdict::Healthy));
    }

    #[test]
    fn evidence_after_a_silent_start_applies_at_once() {
        let p = Policy::default();
        let mut t = NodeTracker::new(at(0));
        t.observe(assess(&node().nothing_known(), at(0)), &p, at(0));
        t.observe(assess(&node().nothing_known(), at(300)), &p, at(300));
        assert_eq!(t.verdict(), Verdict::Suspect);
        let c = t
            .observe(assess(&node(), at(600)), &p, at(600))
            .expect("change");
        assert_eq!(c.to, Verdict::Healthy);
    }

    #[test]
    fn dead_is_confirmed_only_after_the_window() {
        let p = Policy::default();
        let mut t = NodeTracker::new(at(0));
        t.observe(assess(&node(), at(0)), &p, at(0));
        let dead = node().power_loss();
        t.observe(assess(&dead, at(100)), &p, at(100));
        assert_eq!(t.verdict(), Verdict::Suspect);
        assert!(
            t.reasons()[0].starts_with("confirming dead"),
            "{:?}",
            t.reasons()
        );
        t.observe(assess(&dead, at(600)), &p, at(600));
        assert_eq!(t.verdict(), Verdict::Suspect);
        let c = t
            .observe(assess(&dead, at(1100)), &p, at(1100))
            .expect("dead");
        assert_eq!(c.to, Verdict::Dead);
        assert!(t.actionable());
    }

    #[test]
    fn a_veto_ends_dead_at_once() {
        let p = Policy::default();
        let mut t = NodeTracker::new(at(0));
        let dead = node().power_loss();
        t.observe(assess(&dead, at(0)), &p, at(0));
        t.observe(assess(&dead, at(2000)), &p, at(2000));
        assert_eq!(t.verdict(), Verdict::Dead);
        let answering = node().sensor_silent(14).nova_stalled(13);
        let c = t
            .observe(assess(&answering, at(2100)), &p, at(2100))
            .expect("change");
        assert_eq!(c.to, Verdict::Degraded);
        assert!(!t.actionable());
    }

    #[test]
    fn hysteresis_holds_degraded_until_healthy_long_enough() {
        let p = Policy::default();
        let mut t = NodeTracker::new(at(0));
        t.observe(
            assess(&node().nova_compute(NovaComputeProcess::Gone), at(0)),
            &p,
            at(0),
        );
        assert_eq!(t.verdict(), Verdict::Degraded);
        t.observe(assess(&node(), at(1000)), &p, at(1000));
        assert_eq!(t.verdict(), Verdict::Degraded);
        assert!(
            t.reasons()[0].starts_with("recovering: healthy for 0.0 s of 5.0 s"),
            "{:?}",
            t.reasons()
        );
        t.observe(assess(&node(), at(4000)), &p, at(4000));
        assert_eq!(t.verdict(), Verdict::Degraded);
        let c = t
            .observe(assess(&node(), at(6000)), &p, at(6000))
            .expect("healthy");
        assert_eq!(c.to, Verdict::Healthy);
    }

    #[test]
    fn flapping_node_is_held_degraded_and_slow_to_be_dead() {
        let p = Policy::default();
        let mut t = NodeTracker::new(at(0));
        let sick = node().sensor_silent(30);
        let mut ms = 0;
        for _ in 0..3 {
            t.observe(assess(&node(), at(ms)), &p, at(ms));
            ms += 10_000;
            t.observe(assess(&sick, at(ms)), &p, at(ms));
            ms += 10_000;
        }
        t.observe(assess(&node(), at(ms)), &p, at(ms));
        ms += 10_000;
        t.observe(assess(&node(), at(ms)), &p, at(ms));
        assert!(t.flapping(&p));
        assert_eq!(t.verdict(), Verdict::Degraded);
        assert!(
            t.reasons()[0].starts_with("flapping: 6 flips"),
            "{:?}",
            t.reasons()
        );
        // Dead now needs the flapping window (30 s), not 1 s.
        let dead = node().power_loss();
        let start = ms + 1000;
        t.observe(assess(&dead, at(start)), &p, at(start));
        t.observe(assess(&dead, at(start + 5000)), &p, at(start + 5000));
        assert_eq!(t.verdict(), Verdict::Suspect);
        assert!(t.reasons()[0].contains("of 30 s"), "{:?}", t.reasons());
        t.observe(assess(&dead, at(start + 31_000)), &p, at(start + 31_000));
        assert_eq!(t.verdict(), Verdict::Dead);
    }

    /// Issue 16: the window runs while Nova's wait does (a hard hang), so
    /// `dead` comes at the first assessment where Nova's rule allows it.
    #[test]
    fn the_window_runs_while_novas_wait_does() {
        let p = Policy::default();
        let mut t = NodeTracker::new(at(0));
        t.observe(assess(&node(), at(0)), &p, at(0));
        let waiting = node().power_loss().nova_stalled(9);
        assert!(evaluate(&waiting.0, &p, NOW).converging);
        t.observe(assess(&waiting, at(100)), &p, at(100));
        t.observe(assess(&waiting, at(2_000)), &p, at(2_000));
        assert_eq!(t.verdict(), Verdict::Suspect);
        assert!(
            t.reasons()[0].contains("waiting for Nova"),
            "{:?}",
            t.reasons()
        );
        let c = t
            .observe(assess(&node().power_loss(), at(2_100)), &p, at(2_100))
            .expect("dead at once");
        assert_eq!(c.to, Verdict::Dead);
    }

    /// The same wait with a live witness in it is not agreement: an address
    /// that still answers (rule 2) restarts the window.
    #[test]
    fn life_during_novas_wait_restarts_the_window() {
        let p = Policy::default();
        let mut t = NodeTracker::new(at(0));
        t.observe(assess(&node(), at(0)), &p, at(0));
        let waiting = node().power_loss().nova_stalled(9);
        t.observe(assess(&waiting, at(100)), &p, at(100));
        let answering = node().sensor_silent(14).nova_stalled(10);
        assert!(!evaluate(&answering.0, &p, NOW).converging);
        t.observe(assess(&answering, at(1_500)), &p, at(1_500));
        t.observe(assess(&node().power_loss(), at(2_000)), &p, at(2_000));
        assert_eq!(t.verdict(), Verdict::Suspect, "{:?}", t.reasons());
        assert!(
            t.reasons()[0].starts_with("confirming dead"),
            "{:?}",
            t.reasons()
        );
        t.observe(assess(&node().power_loss(), at(3_000)), &p, at(3_000));
        assert_eq!(t.verdict(), Verdict::Dead);
    }

    /// A power loss as the decider sees it: the BMC reads off before the
    /// sensor's silence and the third missed probe; `dead` follows the last
    /// of them at once.
    #[test]
    fn the_window_runs_while_a_power_loss_unfolds() {
        let p = Policy::default();
        let mut t = NodeTracker::new(at(0));
        t.observe(assess(&node(), at(0)), &p, at(0));
        let unfolding = node()
            .answered(2_000)
            .last_heartbeat(1_800)
            .bmc(BmcPower::Off, 500, true)
            .bmc_off_since(1_500);
        t.observe(assess(&unfolding, at(100)), &p, at(100));
        t.observe(assess(&unfolding, at(1_000)), &p, at(1_000));
        assert_eq!(t.verdict(), Verdict::Suspect);
        let off = node()
            .power_loss()
            .nova_stalled(3)
            .bmc(BmcPower::Off, 500, true)
            .bmc_off_since(1_500);
        let c = t
            .observe(assess(&off, at(1_200)), &p, at(1_200))
            .expect("dead");
        assert_eq!(c.to, Verdict::Dead);
        assert_eq!(
            t.latest().and_then(|a| a.fast_path.clone()),
            Some(FastPath::BmcOff)
        );
    }

    /// A flapping node gets no credit for converging: its 30 s counts only
    /// assessments that said dead outright.
    #[test]
    fn a_flapping_node_gets_no_credit_for_converging() {
        let p = Policy::default();
        let mut t = NodeTracker::new(at(0));
        let sick = node().sensor_silent(30);
        let mut ms = 0;
        for _ in 0..3 {
            t.observe(assess(&node(), at(ms)), &p, at(ms));
            ms += 10_000;
            t.observe(assess(&sick, at(ms)), &p, at(ms));
            ms += 10_000;
        }
        t.observe(assess(&node(), at(ms)), &p, at(ms));
        let waiting = node().power_loss().nova_stalled(9);
        for _ in 0..40 {
            ms += 1_000;
            t.observe(assess(&waiting, at(ms)), &p, at(ms));
        }
        assert!(t.flapping(&p));
        ms += 1_000;
        t.observe(assess(&node().power_loss(), at(ms)), &p, at(ms));
        assert_eq!(t.verdict(), Verdict::Suspect, "{:?}", t.reasons());
        assert!(t.reasons()[0].contains("of 30 s"), "{:?}", t.reasons());
    }

    #[test]
    fn workflow_owns_the_verdict_until_release() {
        let p = Policy::default();
        let mut t = NodeTracker::new(at(0));
        let dead = node().power_loss();
        t.observe(assess(&dead, at(0)), &p, at(0));
        t.observe(assess(&dead, at(1500)), &p, at(1500));
        assert_eq!(t.verdict(), Verdict::Dead);
        let step = |t: &mut NodeTracker, s, ms| t.workflow(s, format!("{s:?}"), &p, at(ms));
        assert_eq!(
            step(&mut t, WorkflowStep::Fencing, 2000)
                .expect("fencing")
                .map(|c| c.to),
            Some(Verdict::Fencing)
        );
        // Evidence does not move a node the workflow owns, even healthy evidence.
        assert_eq!(t.observe(assess(&node(), at(2500)), &p, at(2500)), None);
        assert_eq!(t.verdict(), Verdict::Fencing);
        assert_eq!(t.reasons()[0], "Fencing");
        step(&mut t, WorkflowStep::Fenced, 3000).expect("fenced");
        step(&mut t, WorkflowStep::Evacuating, 3500).expect("evacuating");
        step(&mut t, WorkflowStep::Recovered, 9000).expect("recovered");
        assert_eq!(t.verdict(), Verdict::Recovered);
        let c = step(&mut t, WorkflowStep::Release, 9500)
            .expect("release")
            .expect("change");
        assert_eq!((c.from, c.to), (Verdict::Recovered, Verdict::Healthy));
    }

    #[test]
    fn illegal_workflow_steps_are_refused() {
        let p = Policy::default();
        let mut t = NodeTracker::new(at(0));
        t.observe(assess(&node(), at(0)), &p, at(0));
        let e = t
            .workflow(WorkflowStep::Fencing, "x".into(), &p, at(1))
            .expect_err("healthy node");
        assert_eq!(
            e,
            IllegalTransition {
                from: Verdict::Healthy,
                step: WorkflowStep::Fencing
            }
        );
        assert!(t
            .workflow(WorkflowStep::Evacuating, "x".into(), &p, at(1))
            .is_err());
        assert!(t
            .workflow(WorkflowStep::Release, "x".into(), &p, at(1))
            .is_err());
    }

    #[test]
    fn needs_attention_after_failed_fence_and_operator_confirmation() {
        let p = Policy::default();
        let mut t = NodeTracker::new(at(0));
        t.resume(
            Verdict::Fencing,
            "resumed from journal: incident 7".into(),
            at(0),
        );
        t.workflow(
            WorkflowStep::NeedsAttention,
            "BMC did not answer".into(),
            &p,
            at(1),
        )
        .expect("page");
        t.workflow(
            WorkflowStep::Fenced,
            "operator confirmed power off".into(),
            &p,
            at(2),
        )
        .expect("confirmed");
        assert_eq!(t.verdict(), Verdict::Fenced);
    }

    #[test]
    fn storm_hold_blocks_action_and_leads_the_reasons() {
        let p = Policy::default();
        let mut t = NodeTracker::new(at(0));
        let dead = node().power_loss();
        t.observe(assess(&dead, at(0)), &p, at(0));
        t.observe(assess(&dead, at(1500)), &p, at(1500));
        t.set_hold(Some("storm guard: 2 of 3 nodes".into()));
        assert!(!t.actionable());
        assert_eq!(t.reasons()[0], "storm guard: 2 of 3 nodes");
        t.observe(assess(&dead, at(2000)), &p, at(2000));
        assert_eq!(t.reasons()[0], "storm guard: 2 of 3 nodes");
        t.set_hold(None);
        assert!(t.actionable());
        assert_ne!(t.reasons()[0], "storm guard: 2 of 3 nodes");
    }
}

/// Who the storm guard counts as down (safety rule 6): wider than `dead`, so
/// nodes failing together are all counted before the first can be fenced.
mod storm_count {
    use super::*;

    fn counts(ev: &Ev) -> bool {
        counts_as_down(&ev.0, &evaluate(&ev.0, &ev.1, NOW), &ev.1, NOW)
    }

    #[rustfmt::skip]
    #[test]
    fn who_counts_as_down() {
        let rows: Vec<(&str, Ev, bool)> = vec![
            ("healthy node", node(), false),
            ("power loss (dead)", node().power_loss(), true),
            ("power loss, Nova not yet stale (suspect)", node().power_loss().nova_stalled(5), true),
            ("sensor fell silent, host still answers its last probes", node().sensor_silent(4), true),
            ("host address silent, sensor live", node().host_ping_silent().instance_pings_silent(), true),
            ("management link down, instances answer", node().sensor_silent(30).nova_stalled(30).host_ping_silent(), true),
            ("nova-compute killed, host and VMs fine", node().nova_compute(NovaComputeProcess::Gone).nova_down(), false),
            ("nova-compute hung in D state", node().nova_compute(NovaComputeProcess::Blocked { blocked_for: Duration::from_secs(312) }).nova_stalled(40), false),
            ("sensor never heard since the decider started", node().sensor_never_seen(), false),
            ("sensor silent longer than the storm window", node().sensor_silent(601), false),
            ("maintenance node loses power", node().nova_disabled("bios upgrade").power_loss(), false),
            ("Nova API down, node fine", node().nova_unreachable(), false),
            ("two heartbeats missed (2.1 s since the last, interval 1 s)", node().last_heartbeat(2_100), true),
            ("one heartbeat late (1.6 s): a hiccup, not a sign", node().last_heartbeat(1_600), false),
            ("an unverified BMC reads off, no life since", node().answered(2_000).last_heartbeat(1_200).bmc(BmcPower::Off, 300, false).bmc_off_since(1_000), true),
            ("a BMC reads off under a live node", node().bmc(BmcPower::Off, 500, true).bmc_off_since(1_500), false),
            ("another machine's BMC reads off", { let mut ev = node().answered(2_000).last_heartbeat(1_200).bmc(BmcPower::Off, 300, true).bmc_off_since(1_000); ev.0.bmc.identity = BmcIdentity::Mismatch("other".into()); ev }, false),
            ("power loss unfolding (converging)", node().answered(2_000).last_heartbeat(1_800).bmc(BmcPower::Off, 500, true).bmc_off_since(1_500), true),
        ];
        let wrong: Vec<_> = rows
            .iter()
            .filter(|(_, ev, want)| counts(ev) != *want)
            .map(|(name, _, want)| format!("{name}: expected {want}"))
            .collect();
        assert!(wrong.is_empty(), "{wrong:#?}");
    }

    /// The lab's case 6 as it failed once: compute1 turned dead while
    /// compute2, cut 0.8 s later, was still `degraded` (its host had not yet
    /// missed three probes). compute2 must already count, and compute1 be held.
    #[test]
    fn a_partner_still_answering_its_last_probes_holds_the_first_dead_node() {
        let policy = Policy::default();
        let first = node().power_loss();
        let partner = node().sensor_silent(4);
        assert_eq!(
            evaluate(&partner.0, &partner.1, NOW).verdict,
            Verdict::Degraded
        );
        let mut g = StormGuard::new();
        for (name, ev) in [("compute2", &partner), ("compute1", &first)] {
            assert!(counts(ev), "{name} must count");
            g.note_down(name, "default", false, NOW);
        }
        let sizes = std::collections::BTreeMap::from([("default".to_string(), 3)]);
        let hold = g.check(&policy.storm, &sizes, NOW).expect("a storm");
        assert!(hold.nodes.contains("compute1"), "{hold:?}");
        assert!(hold.reason.contains("2 of 3 nodes"), "{}", hold.reason);
    }

    /// The lab's case 6 after the fast paths (issue 16): compute1 is `dead`
    /// by its BMC 2.6 s after the cut, when compute2, cut 0.5 s later, has
    /// only missed two heartbeats: its BMC not yet read, its addresses still
    /// answering their last probes, its sensor not yet silent. It counts.
    #[test]
    fn a_partner_that_has_only_missed_a_heartbeat_holds_a_node_dead_by_its_bmc() {
        let policy = Policy::default();
        let first = node()
            .power_loss()
            .nova_stalled(3)
            .bmc(BmcPower::Off, 400, true)
            .bmc_off_since(1_400);
        assert_eq!(
            evaluate(&first.0, &first.1, NOW).fast_path,
            Some(FastPath::BmcOff)
        );
        let partner = node().last_heartbeat(2_100);
        assert_ne!(evaluate(&partner.0, &partner.1, NOW).verdict, Verdict::Dead);
        let mut g = StormGuard::new();
        for (name, ev) in [("compute2", &partner), ("compute1", &first)] {
            assert!(counts(ev), "{name} must count");
            g.note_down(name, "default", false, NOW);
        }
        let sizes = std::collections::BTreeMap::from([("default".to_string(), 3)]);
        let hold = g.check(&policy.storm, &sizes, NOW).expect("a storm");
        assert!(hold.nodes.contains("compute1"), "{hold:?}");
    }
}
