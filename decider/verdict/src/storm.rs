//! The storm guard (safety rule 6): when more nodes go down together than a
//! set number, or more than a set share of a segment, act on none of them,
//! say why and page. Nodes count from the first sign that they went down
//! ([`counts_as_down`]), not only once confirmed, so two nodes losing power
//! together are both counted before either can be fenced.

use crate::decide::{Assessment, Opinion};
use crate::evidence::{BmcIdentity, BmcPower, Evidence, SensorWitness};
use crate::policy::{Policy, StormPolicy};
use crate::time::{fmt_secs, Moment};
use crate::verdict::Verdict;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// Whether a node counts as down for the storm guard now. Wider than its
/// verdict on purpose: nodes that lose power together turn `dead` seconds
/// apart (each nova-compute's `updated_at` stops at its own phase of the
/// report cycle, and an address is silent only after several probes), and by
/// the time the first is `dead` the others must already count — the lab saw
/// a node fenced while its partner, cut 0.8 s later, still had an address
/// answering its last probes. So a node counts from the first sign that it
/// went down: its evidence says dead (`suspect`, `dead`), it is converging
/// on `dead`, its sensor, once heard, missed two heartbeats (late by two
/// intervals) or fell silent within the window, its addresses stopped
/// answering, or its BMC reads power off with no life from it since. The
/// fast paths make a node `dead` 2–3 s after a power cut, before a partner
/// cut a second later has missed three probes or 3 s of heartbeats: its
/// BMC reading off and its missed heartbeats are what count it in time.
/// Counting too much can only hold nodes and page; it never acts. A sensor
/// that has not connected since the decider started does not count (after a
/// decider restart every sensor is briefly unheard), and a node in
/// maintenance never does (safety rule 5: nothing is done to it either way).
pub fn counts_as_down(ev: &Evidence, a: &Assessment, policy: &Policy, now: Moment) -> bool {
    let o = &a.opinions;
    match a.verdict {
        Verdict::Maintenance => false,
        Verdict::Dead | Verdict::Suspect if [o.sensor, o.nova, o.ping].contains(&Opinion::Dead) => {
            true
        }
        _ if a.converging => true,
        _ => {
            let heard_lately = matches!(&ev.sensor, SensorWitness::Seen(r)
                if now.since(r.last_heartbeat_at) <= policy.storm.window);
            let sensor_fell_silent = o.sensor == Opinion::Dead && heard_lately;
            sensor_fell_silent
                || (heard_lately && heartbeat_missed(ev, policy, now))
                || o.ping == Opinion::Dead
                || bmc_reads_off_since_last_life(ev, policy, now)
        }
    }
}

/// Nodes that went down recently, with when and in which segment.
#[derive(Debug, Clone, Default)]
pub struct StormGuard {
    down: BTreeMap<String, Down>,
}

#[derive(Debug, Clone)]
struct Down {
    segment: String,
    at: Moment,
    /// Reached `dead`: it stays counted for the window even if it comes back
    /// (a fence already happened or was held).
    confirmed: bool,
}

/// The node's sensor, once heard, is late by more than two of its intervals
/// (bounded by the policy, like its silence): two heartbeats went missing.
/// Early and weak, so it only ever counts for the guard; two rather than
/// one, so a healthy sensor's hiccup beside a real death is not a storm.
fn heartbeat_missed(ev: &Evidence, policy: &Policy, now: Moment) -> bool {
    match &ev.sensor {
        SensorWitness::Seen(r) => {
            let every = r
                .interval
                .clamp(Duration::from_millis(100), policy.sensor.max_interval);
            now.since(r.last_heartbeat_at) > every.saturating_mul(2)
        }
        SensorWitness::NeverSeen { .. } => false,
    }
}

/// A fresh `Off` from the node's BMC (not another machine's) and no
/// heartbeat or answer since its run of `Off` reads began.
fn bmc_reads_off_since_last_life(ev: &Evidence, policy: &Policy, now: Moment) -> bool {
    let Some(since) = ev.bmc.off_since else {
        return false;
    };
    let fresh_off = ev
        .bmc
        .last
        .as_ref()
        .is_some_and(|r| r.power == BmcPower::Off && now.since(r.at) <= policy.bmc.fresh_for);
    fresh_off
        && policy.bmc.enabled
        && !matches!(ev.bmc.identity, BmcIdentity::Mismatch(_))
        && crate::decide::life_since(ev, since, now).is_none()
}

/// The guard's decision: which nodes are held, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StormHold {
    pub nodes: BTreeSet<String>,
    pub reason: String,
}

impl StormGuard {
    pub fn new() -> Self {
        StormGuard::default()
    }

    /// A node's evidence says dead (verdict suspect or dead). The first call
    /// in a streak sets its moment; later calls only mark it confirmed.
    pub fn note_down(&mut self, node: &str, segment: &str, confirmed: bool, now: Moment) {
        let d = self.down.entry(node.to_string()).or_insert_with(|| Down {
            segment: segment.to_string(),
            at: now,
            confirmed,
        });
        d.confirmed |= confirmed;
    }

    /// A node's evidence no longer says dead. A node that never reached
    /// `dead` was a flicker and stops counting; a confirmed one keeps
    /// counting until the window passes.
    pub fn note_up(&mut self, node: &str) {
        if self.down.get(node).is_some_and(|d| !d.confirmed) {
            self.down.remove(node);
        }
    }

    /// Nodes counted now.
    pub fn counted(&self) -> usize {
        self.down.len()
    }

    /// Forgets downs older than the window, then decides. `segment_sizes`
    /// gives the number of known nodes per segment.
    pub fn check(
        &mut self,
        policy: &StormPolicy,
        segment_sizes: &BTreeMap<String, usize>,
        now: Moment,
    ) -> Option<StormHold> {
        self.down.retain(|_, d| now.since(d.at) <= policy.window);
        let window = fmt_secs(policy.window);
        let total = self.down.len();
        if total > policy.max_dead as usize {
            return Some(StormHold {
                nodes: self.down.keys().cloned().collect(),
                reason: format!(
                    "storm guard: {total} nodes down within {window} (more than {}): acting on none; \
                     a human must decide (safety rule 6)",
                    policy.max_dead
                ),
            });
        }
        let mut per_segment: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for (node, d) in &self.down {
            per_segment
                .entry(d.segment.as_str())
                .or_default()
                .push(node.as_str());
        }
        let mut held = BTreeSet::new();
        let mut why = Vec::new();
        for (segment, nodes) in per_segment {
            let size = segment_sizes
                .get(segment)
                .copied()
                .unwrap_or(nodes.len())
                .max(nodes.len());
            let share = nodes.len() as f64 / size as f64;
            if share > policy.max_share {
                why.push(format!(
                    "{} of {size} nodes ({:.0} %) of segment \"{segment}\" down within {window} \
                     (more than {:.0} %)",
                    nodes.len(),
                    share * 100.0,
                    policy.max_share * 100.0
                ));
                held.extend(nodes.into_iter().map(str::to_string));
            }
        }
        if held.is_empty() {
            return None;
        }
        Some(StormHold {
            nodes: held,
            reason: format!(
                "storm guard: {}: acting on none of them; a human must decide (safety rule 6)",
                why.join("; ")
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn sizes(n: usize) -> BTreeMap<String, usize> {
        BTreeMap::from([("default".to_string(), n)])
    }

    #[test]
    fn one_of_three_is_not_a_storm() {
        let mut g = StormGuard::new();
        g.note_down("compute1", "default", false, Moment::from_secs(1));
        assert_eq!(
            g.check(&StormPolicy::default(), &sizes(3), Moment::from_secs(2)),
            None
        );
    }

    #[test]
    fn two_of_three_holds_both_with_the_reason() {
        let mut g = StormGuard::new();
        g.note_down("compute1", "default", false, Moment::from_secs(1));
        g.note_down("compute2", "default", false, Moment::from_secs(2));
        let hold = g
            .check(&StormPolicy::default(), &sizes(3), Moment::from_secs(3))
            .expect("storm");
        assert_eq!(hold.nodes.len(), 2);
        assert!(
            hold.reason.contains("2 of 3 nodes (67 %)"),
            "{}",
            hold.reason
        );
    }

    #[test]
    fn more_than_max_dead_holds_everyone() {
        let mut g = StormGuard::new();
        for i in 0..4 {
            g.note_down(&format!("c{i}"), "default", true, Moment::from_secs(i));
        }
        let hold = g
            .check(&StormPolicy::default(), &sizes(100), Moment::from_secs(5))
            .expect("storm");
        assert!(hold.reason.contains("4 nodes down"), "{}", hold.reason);
    }

    #[test]
    fn flickers_do_not_count_but_confirmed_deaths_do_until_the_window_passes() {
        let p = StormPolicy::default();
        let mut g = StormGuard::new();
        g.note_down("compute1", "default", false, Moment::from_secs(1));
        g.note_up("compute1");
        g.note_down("compute2", "default", true, Moment::from_secs(1));
        g.note_up("compute2");
        assert_eq!(g.counted(), 1);
        let later = Moment::from_secs(1).plus(p.window + Duration::from_secs(1));
        assert_eq!(g.check(&p, &sizes(3), later), None);
        assert_eq!(g.counted(), 0);
    }
}
