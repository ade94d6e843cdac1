//! `evaluate(&Evidence, &Policy, now) -> Assessment`: one node's evidence at one
//! moment judged against the policy. Pure: no I/O, no clock, cannot fail.
//!
//! How a verdict is reached, in order:
//! 1. A service disabled by an operator is `maintenance`, whatever else is
//!    known (safety rule 5).
//! 2. Each witness gives an opinion: alive, dead or unknown. Unknown (Nova
//!    unreachable, a stale probe, no heartbeat yet) never counts as dead.
//! 3. Vetoes are collected: an answering address (rule 2), a live sensor stream
//!    and its progressing qemu processes (rule 3), a `updated_at` still
//!    advancing (rule 4), the decider looking cut off itself.
//! 4. No witness says dead: `healthy`, or `degraded` when the live sensor
//!    reports sickness (nova-compute blocked or gone, stalled devices).
//!    Some say dead while the node is provably alive (fresh heartbeats or an
//!    answering address): `degraded`. Every required witness says dead and
//!    nothing vetoes: `dead`. Anything else: `suspect`, naming what is awaited.
//! 5. A `suspect` node is *converging* when nothing but a witness's own wait
//!    stands between it and `dead` (Nova's `updated_at` not yet still long
//!    enough; the sensor's silence and the probes still counting under a
//!    verified BMC that reads off) and nothing has shown life meanwhile. The
//!    tracker's confirmation window may run then, never the waits.
//!
//! Confirmation over time (windows, hysteresis, flapping) is the job of
//! [`crate::NodeTracker`], not of this function.

use crate::evidence::{
    DeciderView, Evidence, NovaComputeProcess, NovaService, NovaWitness, PingRole, PingWitness,
    ProbeMode, SensorReading, SensorWitness, ServiceState,
};
use crate::fast_path::{judge_bmc, judge_kdump, FastPath};
use crate::policy::{Policy, WitnessKind};
use crate::time::{fmt_secs, Moment};
use crate::verdict::Verdict;
use std::fmt;
use std::time::Duration;

/// The judgment of one node at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct Assessment {
    /// One of healthy, maintenance, degraded, suspect, dead.
    pub verdict: Verdict,
    /// Human-readable, most important first; every witness's reading follows
    /// the headline.
    pub reasons: Vec<String>,
    /// Everything that forbids fencing right now. Empty for `dead`.
    pub vetoes: Vec<Veto>,
    /// Each witness's opinion, for tables and metrics.
    pub opinions: Opinions,
    /// `dead` by a fast path (the BMC read power off, or kdump), not by
    /// Nova's wait; recovery fences a kdump differently.
    pub fast_path: Option<FastPath>,
    /// Not `dead` yet only because a witness's own wait is still running,
    /// and nothing has shown life meanwhile: Nova's `updated_at` has not
    /// stood still long enough while every other witness says dead, or the
    /// node's verified BMC reads power off and the sensor's silence and the
    /// probes are still counting. The confirmation window may run during it
    /// ([`crate::NodeTracker`]), so `dead` follows the last wait at once
    /// instead of one window later; the waits themselves are never shortened.
    pub converging: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Opinions {
    pub sensor: Opinion,
    pub nova: Opinion,
    pub ping: Opinion,
}

/// What one witness says about the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opinion {
    Alive,
    Dead,
    /// Not enough (or no fresh) evidence: never counts as dead.
    Unknown,
}

/// A reason fencing is forbidden now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Veto {
    pub rule: VetoRule,
    pub detail: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VetoRule {
    /// Safety rule 2: an instance or host address still answers.
    AddressAnswers,
    /// Safety rule 3: a live sensor stream (with qemu progress, when there are
    /// instances).
    SensorLive,
    /// Safety rule 4: Nova's `updated_at` is still advancing.
    NovaAdvancing,
    /// Safety rule 5: the service is disabled by an operator.
    Maintenance,
    /// The decider sees nothing at all: more likely its own network is cut.
    DeciderIsolated,
}

impl VetoRule {
    fn label(self) -> &'static str {
        match self {
            VetoRule::AddressAnswers => "safety rule 2",
            VetoRule::SensorLive => "safety rule 3",
            VetoRule::NovaAdvancing => "safety rule 4",
            VetoRule::Maintenance => "safety rule 5",
            VetoRule::DeciderIsolated => "decider self-check",
        }
    }
}

impl fmt::Display for Veto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.rule.label(), self.detail)
    }
}

/// Judges one node's evidence. See the module doc for the order of rules.
pub fn evaluate(ev: &Evidence, policy: &Policy, now: Moment) -> Assessment {
    if let Some(m) = maintenance(&ev.nova, policy) {
        return Assessment {
            verdict: Verdict::Maintenance,
            reasons: vec![m.clone(), "never acted on (safety rule 5)".to_string()],
            vetoes: vec![Veto {
                rule: VetoRule::Maintenance,
                detail: m,
            }],
            opinions: Opinions {
                sensor: Opinion::Unknown,
                nova: Opinion::Unknown,
                ping: Opinion::Unknown,
            },
            fast_path: None,
            converging: false,
        };
    }

    let sensor = judge_sensor(&ev.sensor, policy, now);
    let nova = judge_nova(&ev.nova, policy, now);
    let ping = judge_pings(&ev.pings, policy, now);
    let isolation = judge_isolation(&ev.decider, policy, now);

    let mut vetoes = Vec::new();
    if !ping.answering.is_empty() {
        vetoes.push(Veto {
            rule: VetoRule::AddressAnswers,
            detail: answering_text(&ping.answering),
        });
    }
    if sensor.opinion == Opinion::Alive {
        vetoes.push(Veto {
            rule: VetoRule::SensorLive,
            detail: sensor.summary.clone(),
        });
    }
    if nova.opinion == Opinion::Alive {
        vetoes.push(Veto {
            rule: VetoRule::NovaAdvancing,
            detail: nova.summary.clone(),
        });
    }
    if let Some(text) = &isolation {
        vetoes.push(Veto {
            rule: VetoRule::DeciderIsolated,
            detail: text.clone(),
        });
    }

    let judged = [
        (WitnessKind::Sensor, &sensor.opinion, &sensor.summary),
        (WitnessKind::Nova, &nova.opinion, &nova.summary),
        (WitnessKind::Ping, &ping.opinion, &ping.summary),
    ];
    let saying_dead: Vec<WitnessKind> = judged
        .iter()
        .filter(|(_, o, _)| **o == Opinion::Dead)
        .map(|(k, _, _)| *k)
        .collect();
    let life_proof = sensor.opinion == Opinion::Alive || ping.opinion == Opinion::Alive;

    // Each witness's reading, the ones saying dead first: an operator reads
    // why before reading what else was seen.
    let mut readings: Vec<String> = Vec::new();
    for (kind, opinion, summary) in judged.iter() {
        if **opinion == Opinion::Dead {
            readings.push(format!("{}: {summary}", witness_name(*kind)));
        }
    }
    for (kind, opinion, summary) in judged.iter() {
        if **opinion != Opinion::Dead {
            readings.push(format!("{}: {summary}", witness_name(*kind)));
        }
    }

    let bmc = judge_bmc(&ev.bmc, policy, now);
    let kdump = judge_kdump(&ev.kdump, policy, now);
    if let Some(text) = &bmc.summary {
        readings.push(format!("BMC: {text}"));
    }
    if let Some(text) = &kdump.summary {
        readings.push(format!("kdump: {text}"));
    }
    // Life after the BMC's first `Off` read contradicts it: then it is
    // never evidence, and against a live node it is a misconfiguration.
    let life_after_off = bmc.off_since.and_then(|t| life_since(ev, t, now));
    if let (Some(life), false) = (&life_after_off, life_proof) {
        readings.push(format!(
            "BMC: not evidence: the node showed life ({life}) after the BMC first read power off"
        ));
    }
    let fast = fast_path(
        &sensor,
        &ping,
        isolation.is_some(),
        bmc.off && life_after_off.is_none(),
        kdump.current,
    );
    // The vetoes a fast path's evidence answers: Nova's report still in
    // flight from a machine without power or in its crash kernel, and (for
    // kdump) the crash kernel's own management address. Any other veto
    // still holds and stops the fast path.
    let (superseded, remaining): (Vec<Veto>, Vec<Veto>) =
        vetoes.iter().cloned().partition(|v| match (&fast, v.rule) {
            (Some(FastPath::BmcOff), VetoRule::NovaAdvancing) => true,
            // A datagram is easy to forge; a report from nova-compute is
            // not. Nova's report is answered only when it was already in
            // flight before the crash kernel spoke: an `updated_at` that
            // moved after the first kdump message contradicts it.
            (Some(FastPath::Kdump), VetoRule::NovaAdvancing) => {
                nova_still_since(&ev.nova, ev.kdump.first_at)
            }
            (Some(FastPath::Kdump), VetoRule::AddressAnswers) => ping.instances_answering == 0,
            _ => false,
        });
    let fast = fast.filter(|_| remaining.is_empty());
    let bmc_off_but_alive = bmc.read_off && life_proof && life_after_off.is_some();
    // A power loss as it unfolds: the BMC already reads off, the sensor's
    // silence and the probes have not counted out yet. Not healthy, not a
    // misconfiguration (nothing has shown life since the BMC said off).
    let awaited: Vec<&str> = [
        (sensor.opinion != Opinion::Dead).then_some("its sensor's silence"),
        (ping.opinion != Opinion::Dead).then_some("its addresses' probes"),
    ]
    .into_iter()
    .flatten()
    .collect();
    let bmc_off_unfolding =
        bmc.read_off && life_after_off.is_none() && isolation.is_none() && !awaited.is_empty();

    let (verdict, headline) = if let Some(path) = &fast {
        let headline = match path {
            FastPath::BmcOff => {
                "the node's own BMC reads power off, its sensor is silent and no address answers: \
                 dead without waiting for Nova"
                    .to_string()
            }
            FastPath::Kdump => {
                "the node's crash kernel is sending fence_kdump messages, its sensor \
                 is silent and no instance answers: dead (fenced by kdump)"
                    .to_string()
            }
        };
        (Verdict::Dead, headline)
    } else if bmc_off_but_alive && sensor.sickness.is_empty() {
        let proof = if sensor.opinion == Opinion::Alive {
            "its sensor stream is live".to_string()
        } else {
            answering_text(&ping.answering)
        };
        (
            Verdict::Degraded,
            format!(
                "its BMC reads power off but {proof}: that BMC is wrong or not this node's, \
                 and fencing through it would act on another machine; check recovery.fencing"
            ),
        )
    } else if bmc_off_unfolding {
        let since = bmc
            .off_since
            .map(|t| fmt_secs(now.since(t)))
            .unwrap_or_default();
        (
            Verdict::Suspect,
            format!(
                "its BMC has read power off for {since} and the node has shown no life since; \
                 waiting for {}",
                awaited.join(" and ")
            ),
        )
    } else if saying_dead.is_empty() {
        if let Some(first) = sensor.sickness.first() {
            (Verdict::Degraded, first.clone())
        } else if judged.iter().any(|(_, o, _)| **o == Opinion::Alive) {
            (Verdict::Healthy, "up: no witness says dead".to_string())
        } else {
            (
                Verdict::Suspect,
                "no witness has reported on this node yet".to_string(),
            )
        }
    } else if life_proof {
        let proof = if sensor.opinion == Opinion::Alive {
            "its sensor stream is live".to_string()
        } else {
            answering_text(&ping.answering)
        };
        let headline = match sensor.sickness.first() {
            Some(first) => first.clone(),
            None => format!("{} but {proof}", says_dead(&saying_dead)),
        };
        (Verdict::Degraded, headline)
    } else if let Some(text) = &isolation {
        (
            Verdict::Suspect,
            format!("{text}; not judging any node dead"),
        )
    } else {
        let pending: Vec<WitnessKind> = policy
            .required_for_dead
            .iter()
            .copied()
            .filter(|k| !saying_dead.contains(k))
            .collect();
        if pending.is_empty() && vetoes.is_empty() {
            (
                Verdict::Dead,
                format!("all required witnesses say dead: {}", names(&saying_dead)),
            )
        } else if pending.is_empty() {
            // Unreachable in practice (a veto comes with an alive opinion),
            // kept so a future veto cannot silently allow `dead`.
            (
                Verdict::Suspect,
                format!("{}; vetoed", says_dead(&saying_dead)),
            )
        } else {
            let waiting: Vec<String> = pending
                .iter()
                .map(|k| {
                    let summary = judged
                        .iter()
                        .find(|(kind, _, _)| kind == k)
                        .map(|(_, _, s)| s.as_str())
                        .unwrap_or("");
                    format!("{} ({summary})", witness_name(*k))
                })
                .collect();
            (
                Verdict::Suspect,
                format!(
                    "{}; waiting for {}",
                    says_dead(&saying_dead),
                    waiting.join(", ")
                ),
            )
        }
    };

    let mut reasons = vec![headline];
    reasons.extend(
        sensor
            .sickness
            .iter()
            .filter(|s| **s != reasons[0])
            .cloned()
            .collect::<Vec<_>>(),
    );
    reasons.extend(readings);
    if verdict != Verdict::Dead && verdict != Verdict::Healthy {
        reasons.extend(vetoes.iter().map(|v| format!("veto: {v}")));
    }
    let vetoes = if fast.is_some() {
        reasons.extend(
            superseded
                .iter()
                .map(|v| format!("superseded by the {} evidence: {v}", fast_path_name(&fast))),
        );
        remaining
    } else {
        vetoes
    };
    reasons.extend(sensor.notes);

    // Waits that are still running, with nothing alive meanwhile (see
    // `Assessment::converging`). Nova's wait: every other required witness
    // says dead and the only veto is its `updated_at`, not yet still long
    // enough. The BMC's: a verified `Off` with no life since it began.
    let awaiting_nova = !life_proof
        && nova.opinion == Opinion::Alive
        && matches!(ev.nova, NovaWitness::Listed(_))
        && policy
            .required_for_dead
            .iter()
            .all(|k| *k == WitnessKind::Nova || saying_dead.contains(k))
        && vetoes.iter().all(|v| v.rule == VetoRule::NovaAdvancing);
    let awaiting_bmc = bmc.off && bmc_off_unfolding;
    let converging =
        verdict == Verdict::Suspect && isolation.is_none() && (awaiting_nova || awaiting_bmc);

    Assessment {
        verdict,
        reasons,
        vetoes,
        opinions: Opinions {
            sensor: sensor.opinion,
            nova: nova.opinion,
            ping: ping.opinion,
        },
        fast_path: fast,
        converging,
    }
}

/// The node's most recent sign of life at or after `t`, if any: a heartbeat
/// received, or an answer from one of its addresses.
pub(crate) fn life_since(ev: &Evidence, t: Moment, now: Moment) -> Option<String> {
    let heartbeat = match &ev.sensor {
        SensorWitness::Seen(r) if r.last_heartbeat_at >= t => Some(r.last_heartbeat_at),
        _ => None,
    };
    let answer = ev
        .pings
        .iter()
        .filter(|p| p.role != PingRole::Reference)
        .filter_map(|p| p.last_answer_at.filter(|a| *a >= t).map(|a| (a, p.address)))
        .max_by_key(|(a, _)| *a);
    match (heartbeat, answer) {
        (Some(h), Some((a, _))) if h >= a => {
            Some(format!("a heartbeat {} ago", fmt_secs(now.since(h))))
        }
        (_, Some((a, addr))) => Some(format!("{addr} answered {} ago", fmt_secs(now.since(a)))),
        (Some(h), None) => Some(format!("a heartbeat {} ago", fmt_secs(now.since(h)))),
        (None, None) => None,
    }
}

fn fast_path_name(p: &Option<FastPath>) -> &'static str {
    match p {
        Some(FastPath::BmcOff) => "BMC's power-off",
        Some(FastPath::Kdump) => "kdump",
        None => "no",
    }
}

/// Which fast path the evidence opens, before vetoes are weighed. Both
/// need the sensor silent (a live stream is safety rule 3's veto, and no
/// datagram or BMC supersedes it) and the decider not cut off itself.
fn fast_path(
    sensor: &SensorJudgment,
    ping: &PingJudgment,
    isolated: bool,
    bmc_off: bool,
    kdump_current: bool,
) -> Option<FastPath> {
    if sensor.opinion != Opinion::Dead || isolated {
        return None;
    }
    if bmc_off && ping.opinion == Opinion::Dead && ping.answering.is_empty() {
        return Some(FastPath::BmcOff);
    }
    if kdump_current && ping.instances_answering == 0 {
        return Some(FastPath::Kdump);
    }
    None
}

/// "Nova" rather than "nova" in sentences.
fn witness_name(k: WitnessKind) -> &'static str {
    match k {
        WitnessKind::Sensor => "sensor",
        WitnessKind::Nova => "Nova",
        WitnessKind::Ping => "pings",
    }
}

fn names(ks: &[WitnessKind]) -> String {
    ks.iter()
        .map(|k| witness_name(*k))
        .collect::<Vec<_>>()
        .join(", ")
}

fn says_dead(ks: &[WitnessKind]) -> String {
    let verb = if ks.len() == 1 { "says" } else { "say" };
    format!("{} {verb} dead", names(ks).replace(", ", " and "))
}

/// Safety rule 5: the text that makes this node `maintenance`, if any. Nova's
/// last known answer counts while Nova is unreachable, so maintenance does not
/// lapse because the API is down.
fn maintenance(nova: &NovaWitness, policy: &Policy) -> Option<String> {
    let service = match nova {
        NovaWitness::Listed(s) => s,
        NovaWitness::Unreachable {
            last_known: Some(s),
            ..
        } => s,
        _ => return None,
    };
    if service.enabled {
        return None;
    }
    let reason = service.disabled_reason.as_deref().unwrap_or("");
    if !policy.maintenance.vigil_reason_prefix.is_empty()
        && reason.starts_with(&policy.maintenance.vigil_reason_prefix)
    {
        // Disabled by Vigil's own workflow: not an operator's maintenance.
        return None;
    }
    let stale = matches!(nova, NovaWitness::Unreachable { .. });
    Some(format!(
        "nova-compute service disabled by an operator{}{}",
        if reason.is_empty() {
            String::new()
        } else {
            format!(": \"{reason}\"")
        },
        if stale {
            " (as last seen; Nova unreachable now)"
        } else {
            ""
        }
    ))
}

struct SensorJudgment {
    opinion: Opinion,
    summary: String,
    /// Why a live node is sick, most serious first.
    sickness: Vec<String>,
    /// Informational lines (fallback mode, failed probes, a recent reboot).
    notes: Vec<String>,
}

/// Reboots more recent than this are mentioned in the reasons.
const RECENT_REBOOT: Duration = Duration::from_secs(600);

fn judge_sensor(w: &SensorWitness, policy: &Policy, now: Moment) -> SensorJudgment {
    let silence = w.silence(policy, now);
    let r = match w {
        SensorWitness::NeverSeen { since } => {
            let watched = now.since(*since);
            return match silence {
                Some(_) => SensorJudgment {
                    opinion: Opinion::Dead,
                    summary: format!(
                        "no heartbeat since watching began {} ago",
                        fmt_secs(watched)
                    ),
                    sickness: vec![],
                    notes: vec![],
                },
                None => SensorJudgment {
                    opinion: Opinion::Unknown,
                    summary: "waiting for the first heartbeat".to_string(),
                    sickness: vec![],
                    notes: vec![],
                },
            };
        }
        SensorWitness::Seen(r) => r,
    };
    let mut notes = Vec::new();
    if let Some(at) = r.boot_changed_at {
        let ago = now.since(at);
        if ago <= RECENT_REBOOT {
            notes.push(format!("rebooted: boot id changed {} ago", fmt_secs(ago)));
        }
    }
    if let Some(quiet) = silence {
        return SensorJudgment {
            opinion: Opinion::Dead,
            summary: format!(
                "silent {} (last heartbeat seq {}, stream {})",
                fmt_secs(quiet),
                r.seq,
                if r.connected { "still open" } else { "closed" }
            ),
            sickness: vec![],
            notes,
        };
    }

    let progress = progress_text(r);
    let mut sickness = Vec::new();
    let s = &r.signals;
    match s.nova_compute {
        NovaComputeProcess::Blocked { blocked_for }
            if blocked_for >= policy.degraded.nova_compute_blocked_for =>
        {
            sickness.push(format!(
                "nova-compute blocked {} in D state; {progress}",
                fmt_secs(blocked_for)
            ));
        }
        NovaComputeProcess::Gone => {
            sickness.push(format!("nova-compute process gone; {progress}"));
        }
        _ => {}
    }
    let mut long_blocked: Vec<_> = s
        .blocked_tasks
        .iter()
        .filter(|t| t.blocked_for >= policy.degraded.task_blocked_for)
        .collect();
    long_blocked.sort_by_key(|t| std::cmp::Reverse(t.blocked_for));
    if let Some(worst) = long_blocked.first() {
        sickness.push(format!(
            "{} task(s) blocked in D state, longest {} (pid {}) for {}",
            long_blocked.len(),
            worst.comm,
            worst.pid,
            fmt_secs(worst.blocked_for)
        ));
    }
    let mut stalls: Vec<_> = s
        .device_stalls
        .iter()
        .filter(|d| d.oldest >= policy.degraded.device_stall_for)
        .collect();
    stalls.sort_by_key(|d| std::cmp::Reverse(d.oldest));
    for d in stalls {
        sickness.push(format!(
            "block device {}: oldest request in flight {} ({} in flight)",
            d.device,
            fmt_secs(d.oldest),
            d.in_flight
        ));
    }
    if s.mode == ProbeMode::Procfs {
        notes.push("sensor in /proc fallback mode (eBPF not loaded): coarser signals".to_string());
    }
    if !s.failed_probes.is_empty() {
        notes.push(format!(
            "sensor probes not attached: {}",
            s.failed_probes.join(", ")
        ));
    }
    if r.seq_gaps > 0 {
        notes.push(format!(
            "{} heartbeat(s) missed in sequence since the decider started",
            r.seq_gaps
        ));
    }
    SensorJudgment {
        opinion: Opinion::Alive,
        summary: format!(
            "heartbeat {} ago (seq {}); {progress}",
            fmt_secs(now.since(r.last_heartbeat_at)),
            r.seq
        ),
        sickness,
        notes,
    }
}

/// "14/14 instances progressing" (safety rule 3's evidence).
fn progress_text(r: &SensorReading) -> String {
    let alive: Vec<_> = r
        .signals
        .instances
        .iter()
        .filter(|i| i.alive && !i.exited)
        .collect();
    let progressing = alive.iter().filter(|i| !i.cpu_delta.is_zero()).count();
    format!("{progressing}/{} instances progressing", alive.len())
}

struct NovaJudgment {
    opinion: Opinion,
    summary: String,
}

fn judge_nova(w: &NovaWitness, policy: &Policy, now: Moment) -> NovaJudgment {
    let unknown = |summary: String| NovaJudgment {
        opinion: Opinion::Unknown,
        summary,
    };
    let s: &NovaService = match w {
        NovaWitness::NotPolled { .. } => return unknown("not polled yet".to_string()),
        NovaWitness::Unreachable { since, error, .. } => {
            return unknown(format!(
                "unreachable for {} ({error}); never counts as dead",
                fmt_secs(now.since(*since))
            ))
        }
        NovaWitness::NotListed { .. } => {
            return unknown("lists no nova-compute service for this host".to_string())
        }
        NovaWitness::Listed(s) => s,
    };
    let age = now.since(s.polled_at);
    if age > policy.nova.poll_stale_after {
        return unknown(format!("latest answer is {} old; not used", fmt_secs(age)));
    }
    let state = match s.state {
        ServiceState::Up => "up",
        ServiceState::Down => "down",
        ServiceState::Unknown => "in an unknown state",
    };
    let forced = if s.forced_down { " (forced down)" } else { "" };
    let limit = policy.nova.stale_after();
    if s.updated_at_stalled >= limit {
        NovaJudgment {
            opinion: Opinion::Dead,
            summary: format!(
                "service {state}{forced}, updated_at stalled {} (stale after {})",
                fmt_secs(s.updated_at_stalled),
                fmt_secs(limit)
            ),
        }
    } else {
        NovaJudgment {
            opinion: Opinion::Alive,
            summary: format!(
                "service {state}{forced}, updated_at advancing (unchanged for {} of {})",
                fmt_secs(s.updated_at_stalled),
                fmt_secs(limit)
            ),
        }
    }
}

/// What the probes of one address show.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AddressState {
    Answering,
    Silent,
    /// Not probed recently, or not enough failures yet to call it silent.
    Unknown,
}

fn address_state(p: &PingWitness, policy: &Policy, now: Moment) -> AddressState {
    if p.send_error.is_some() {
        // Not sent is not silence, and an old answer is no answer now.
        return AddressState::Unknown;
    }
    let fresh = p
        .last_probe_at
        .is_some_and(|at| now.since(at) <= policy.ping.probe_stale_after);
    if !fresh {
        return AddressState::Unknown;
    }
    if p.consecutive_failures >= policy.ping.failures_for_silent {
        AddressState::Silent
    } else if p.last_answer_at.is_some() {
        // Safety rule 2: an address keeps counting as answering until enough
        // probes in a row have failed.
        AddressState::Answering
    } else {
        AddressState::Unknown
    }
}

struct PingJudgment {
    opinion: Opinion,
    summary: String,
    /// "198.51.100.11 (host)" for each answering address.
    answering: Vec<String>,
    /// Instance addresses answering now (the kdump path's veto).
    instances_answering: usize,
}

fn judge_pings(pings: &[PingWitness], policy: &Policy, now: Moment) -> PingJudgment {
    let mut answering = Vec::new();
    let (mut hosts, mut hosts_silent, mut hosts_answering) = (0, 0, 0);
    let (mut inst, mut inst_answering) = (0, 0);
    for p in pings {
        let st = address_state(p, policy, now);
        match &p.role {
            PingRole::Host => {
                hosts += 1;
                match st {
                    AddressState::Silent => hosts_silent += 1,
                    AddressState::Answering => hosts_answering += 1,
                    AddressState::Unknown => {}
                }
            }
            PingRole::Instance { .. } => {
                // An instance that never answered may simply filter ICMP: its
                // silence says nothing, so it is left out of the count.
                if p.last_answer_at.is_none() {
                    continue;
                }
                inst += 1;
                if st == AddressState::Answering {
                    inst_answering += 1;
                }
            }
            PingRole::Reference => continue,
        }
        if st == AddressState::Answering {
            answering.push(format!("{} ({})", p.address, short_role(&p.role)));
        }
    }
    let counts = format!(
        "{hosts_answering}/{hosts} host address(es) answer, {inst_answering}/{inst} instance address(es) answer"
    );
    let (opinion, summary) = if !answering.is_empty() {
        (Opinion::Alive, counts)
    } else if hosts == 0 {
        (
            Opinion::Unknown,
            "no management address to probe; configure one for this node".to_string(),
        )
    } else if hosts_silent == hosts {
        (
            Opinion::Dead,
            format!(
                "{counts}; every host address missed {}+ probes in a row",
                policy.ping.failures_for_silent
            ),
        )
    } else {
        (Opinion::Unknown, format!("{counts}; probing"))
    };
    PingJudgment {
        opinion,
        summary,
        answering,
        instances_answering: inst_answering,
    }
}

fn short_role(r: &PingRole) -> String {
    match r {
        PingRole::Instance { uuid } => format!("instance {uuid}"),
        other => other.label(),
    }
}

/// "198.51.100.11 (host) answers ping", at most three addresses named.
fn answering_text(answering: &[String]) -> String {
    const SHOWN: usize = 3;
    let mut text = answering
        .iter()
        .take(SHOWN)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if answering.len() > SHOWN {
        text.push_str(&format!(" and {} more", answering.len() - SHOWN));
    }
    let verb = if answering.len() == 1 {
        "answers"
    } else {
        "answer"
    };
    format!("{text} {verb} ping")
}

/// The decider's self-check: when it sees nothing at all, it must not judge
/// anyone dead (its own network may be cut).
fn judge_isolation(d: &DeciderView, policy: &Policy, now: Moment) -> Option<String> {
    if !d.reference_pings.is_empty()
        && d.reference_pings
            .iter()
            .all(|p| address_state(p, policy, now) == AddressState::Silent)
    {
        let addrs: Vec<String> = d
            .reference_pings
            .iter()
            .map(|p| p.address.to_string())
            .collect();
        return Some(format!(
            "decider may be cut off: no reference address answers ({})",
            addrs.join(", ")
        ));
    }
    if d.nodes_known >= policy.isolation.all_sensors_silent_min_nodes
        && d.sensors_silent >= d.nodes_known
    {
        return Some(format!(
            "decider may be cut off: all {} sensors silent at once{}",
            d.nodes_known,
            if d.nova_reachable {
                ""
            } else {
                " and Nova unreachable"
            }
        ));
    }
    None
}

/// Whether Nova's `updated_at` was last seen to move no later than `since`
/// (as the decider's own polls saw it: the first poll that read its current
/// value). Unknown `since` is no answer.
fn nova_still_since(nova: &NovaWitness, since: Option<Moment>) -> bool {
    match (nova, since) {
        (NovaWitness::Listed(s), Some(first)) => s.polled_at.minus(s.updated_at_stalled) <= first,
        _ => false,
    }
}
