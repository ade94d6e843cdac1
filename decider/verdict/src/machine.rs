//! The per-node state machine: assessments over time → the verdict operators
//! see. It adds what a single assessment cannot know: how long the witnesses
//! have agreed (confirmation), whether a sick node has been well long enough
//! (hysteresis), whether it keeps flipping (flapping), and the recovery
//! workflow's own states, which evidence does not override.

use crate::decide::{Assessment, Opinion};
use crate::policy::Policy;
use crate::time::{fmt_secs, Moment};
use crate::verdict::Verdict;
use std::collections::VecDeque;
use thiserror::Error;

/// One node's verdict over time.
#[derive(Debug, Clone)]
pub struct NodeTracker {
    verdict: Verdict,
    /// When `verdict` was entered.
    since: Moment,
    reasons: Vec<String>,
    /// No assessment observed yet: the first one applies without hysteresis,
    /// so a decider that just started does not hold every node suspect.
    fresh: bool,
    /// When the assessments started saying dead without a break.
    dead_streak_since: Option<Moment>,
    /// When the assessments started saying dead or converging on it (only
    /// a witness's own wait still running) without a break: the ordinary
    /// confirmation window counts from here.
    agree_since: Option<Moment>,
    /// When the assessments started saying healthy without a break.
    healthy_streak_since: Option<Moment>,
    /// Whether the latest counted assessment was healthy, to detect flips.
    last_healthy: Option<bool>,
    /// Moments the assessment flipped between healthy and not, pruned to the
    /// policy's flap window.
    flips: VecDeque<Moment>,
    /// The latest assessment, kept while the workflow owns the verdict.
    latest: Option<Assessment>,
    /// Why the workflow set the current workflow verdict.
    workflow_reason: Option<String>,
    /// Set by the storm guard: the node may be dead but must not be acted on.
    hold: Option<String>,
}

/// A verdict change, for logs, metrics and `WatchVerdicts`.
#[derive(Debug, Clone, PartialEq)]
pub struct VerdictChange {
    pub from: Verdict,
    pub to: Verdict,
    pub at: Moment,
    pub reasons: Vec<String>,
}

/// What the recovery workflow tells the machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkflowStep {
    Fencing,
    Fenced,
    Evacuating,
    Recovered,
    NeedsAttention,
    /// The workflow hands the node back to the evidence.
    Release,
}

/// The workflow asked for a step that does not follow the current verdict.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("workflow step {step:?} is not allowed from verdict {from}")]
pub struct IllegalTransition {
    pub from: Verdict,
    pub step: WorkflowStep,
}

impl NodeTracker {
    /// A node nothing is known about yet: `suspect` until the first assessment.
    pub fn new(now: Moment) -> Self {
        NodeTracker {
            verdict: Verdict::Suspect,
            since: now,
            reasons: vec!["no evidence judged yet".to_string()],
            fresh: true,
            dead_streak_since: None,
            agree_since: None,
            healthy_streak_since: None,
            last_healthy: None,
            flips: VecDeque::new(),
            latest: None,
            workflow_reason: None,
            hold: None,
        }
    }

    pub fn verdict(&self) -> Verdict {
        self.verdict
    }

    pub fn since(&self) -> Moment {
        self.since
    }

    /// The reasons for the current verdict, most important first (a storm
    /// hold or the workflow's reason leads).
    pub fn reasons(&self) -> &[String] {
        &self.reasons
    }

    pub fn latest(&self) -> Option<&Assessment> {
        self.latest.as_ref()
    }

    /// The storm guard's hold, if any.
    pub fn hold(&self) -> Option<&str> {
        self.hold.as_deref()
    }

    /// True only for a confirmed `dead` node that no guard holds: the one
    /// state the recovery workflow may start from.
    pub fn actionable(&self) -> bool {
        self.verdict == Verdict::Dead && self.hold.is_none()
    }

    /// True while the assessments keep flipping (see the policy's
    /// `confirm.flap_*`).
    pub fn flapping(&self, policy: &Policy) -> bool {
        self.flips.len() >= policy.confirm.flap_changes as usize
    }

    /// Sets or clears the storm guard's hold (safety rule 6). Its reason leads
    /// the node's reasons while it lasts.
    pub fn set_hold(&mut self, hold: Option<String>) {
        if self.hold == hold {
            return;
        }
        if let Some(old) = &self.hold {
            if self.reasons.first() == Some(old) {
                self.reasons.remove(0);
            }
        }
        if let Some(new) = &hold {
            self.reasons.insert(0, new.clone());
        }
        self.hold = hold;
    }

    /// Takes one assessment; returns the change when the verdict changes.
    pub fn observe(
        &mut self,
        a: Assessment,
        policy: &Policy,
        now: Moment,
    ) -> Option<VerdictChange> {
        self.count_flip(&a, policy, now);
        let flapping = self.flapping(policy);
        if a.verdict == Verdict::Dead {
            self.dead_streak_since.get_or_insert(now);
        } else {
            self.dead_streak_since = None;
        }
        if a.verdict == Verdict::Dead || a.converging {
            self.agree_since.get_or_insert(now);
        } else {
            self.agree_since = None;
        }
        if a.verdict == Verdict::Healthy {
            self.healthy_streak_since.get_or_insert(now);
        } else {
            self.healthy_streak_since = None;
        }

        if self.verdict.is_workflow() {
            // The workflow owns the verdict; keep its reason first and show
            // the evidence after it.
            let mut reasons: Vec<String> = self.workflow_reason.iter().cloned().collect();
            reasons.extend(a.reasons.iter().map(|r| format!("evidence: {r}")));
            self.latest = Some(a);
            self.set_reasons(reasons);
            return None;
        }

        let flap_note = format!(
            "flapping: {} flips between healthy and not within {}",
            self.flips.len(),
            fmt_secs(policy.confirm.flap_window)
        );
        let (target, mut reasons) = match a.verdict {
            Verdict::Dead => {
                // A flapping node gets no credit for converging: its long
                // window counts only assessments that said dead outright.
                let (need, streak) = if flapping {
                    (policy.confirm.flapping_dead_for, self.dead_streak_since)
                } else {
                    (policy.confirm.dead_for, self.agree_since)
                };
                let held = now.since(streak.unwrap_or(now));
                if held >= need {
                    (Verdict::Dead, a.reasons.clone())
                } else {
                    let mut r = vec![format!(
                        "confirming dead: the witnesses have agreed for {} of {}",
                        fmt_secs(held),
                        fmt_secs(need)
                    )];
                    r.extend(a.reasons.iter().cloned());
                    (Verdict::Suspect, r)
                }
            }
            Verdict::Healthy if flapping => {
                let mut r = vec![format!("{flap_note}; held degraded until it settles")];
                r.extend(a.reasons.iter().cloned());
                (Verdict::Degraded, r)
            }
            Verdict::Healthy
                if !self.fresh
                    && matches!(
                        self.verdict,
                        Verdict::Degraded | Verdict::Suspect | Verdict::Dead
                    ) =>
            {
                let held = now.since(self.healthy_streak_since.unwrap_or(now));
                if held >= policy.confirm.healthy_for {
                    (Verdict::Healthy, a.reasons.clone())
                } else {
                    // Hysteresis: stay where we are, but never stay `dead`
                    // once the evidence no longer says so.
                    let stay = if self.verdict == Verdict::Dead {
                        Verdict::Suspect
                    } else {
                        self.verdict
                    };
                    let mut r = vec![format!(
                        "recovering: healthy for {} of {}",
                        fmt_secs(held),
                        fmt_secs(policy.confirm.healthy_for)
                    )];
                    r.extend(a.reasons.iter().cloned());
                    (stay, r)
                }
            }
            other => (other, a.reasons.clone()),
        };
        if flapping && target != Verdict::Degraded && target != Verdict::Healthy {
            reasons.push(flap_note);
        }
        // Until some witness has spoken, there is nothing to be hysteretic
        // about: the first real evidence applies at once.
        let spoke = [a.opinions.sensor, a.opinions.nova, a.opinions.ping]
            .iter()
            .any(|o| *o != Opinion::Unknown)
            || a.verdict == Verdict::Maintenance;
        if spoke {
            self.fresh = false;
        }
        self.latest = Some(a);
        if target != Verdict::Dead && self.hold.is_some() {
            // A hold only means something for a dead node.
            self.hold = None;
        }
        self.set_reasons(reasons);
        self.move_to(target, now)
    }

    /// Applies a step of the recovery workflow. `reason` leads the reasons
    /// while the workflow owns the node.
    pub fn workflow(
        &mut self,
        step: WorkflowStep,
        reason: String,
        policy: &Policy,
        now: Moment,
    ) -> Result<Option<VerdictChange>, IllegalTransition> {
        use Verdict::*;
        let from = self.verdict;
        let target = match (step, from) {
            (WorkflowStep::Release, f) if f.is_workflow() => None,
            (WorkflowStep::Fencing, Dead | NeedsAttention) => Some(Fencing),
            (WorkflowStep::Fenced, Fencing | NeedsAttention) => Some(Fenced),
            (WorkflowStep::Evacuating, Fenced | NeedsAttention) => Some(Evacuating),
            (WorkflowStep::Recovered, Fenced | Evacuating | NeedsAttention) => Some(Recovered),
            (WorkflowStep::NeedsAttention, Dead | Fencing | Fenced | Evacuating | Recovered) => {
                Some(NeedsAttention)
            }
            _ => return Err(IllegalTransition { from, step }),
        };
        match target {
            Some(t) => {
                self.workflow_reason = Some(reason.clone());
                let mut reasons = vec![reason];
                if let Some(a) = &self.latest {
                    reasons.extend(a.reasons.iter().map(|r| format!("evidence: {r}")));
                }
                self.hold = None;
                self.set_reasons(reasons);
                Ok(self.move_to(t, now))
            }
            None => Ok(self.release(reason, policy, now)),
        }
    }

    /// Puts the node straight into a workflow verdict, for a decider that
    /// restarts and replays its journal. Only workflow verdicts are accepted;
    /// anything else is ignored and returns `None`.
    pub fn resume(
        &mut self,
        verdict: Verdict,
        reason: String,
        now: Moment,
    ) -> Option<VerdictChange> {
        if !verdict.is_workflow() {
            return None;
        }
        self.workflow_reason = Some(reason.clone());
        self.fresh = false;
        self.set_reasons(vec![reason]);
        self.move_to(verdict, now)
    }

    /// Back to judging by evidence. Confirmation starts over: a node released
    /// while the evidence says dead must be confirmed dead again.
    fn release(&mut self, reason: String, policy: &Policy, now: Moment) -> Option<VerdictChange> {
        self.workflow_reason = None;
        self.dead_streak_since = None;
        self.agree_since = None;
        self.healthy_streak_since = None;
        self.fresh = true;
        let before = self.verdict;
        self.verdict = Verdict::Suspect;
        self.set_reasons(vec![format!("released by the workflow: {reason}")]);
        let change = match self.latest.clone() {
            Some(a) => self.observe(a, policy, now),
            None => None,
        };
        // Report the change from the workflow verdict, not from the
        // intermediate `suspect` used to restart the judgment.
        if self.verdict == before {
            return None;
        }
        let mut c = change.unwrap_or(VerdictChange {
            from: before,
            to: self.verdict,
            at: now,
            reasons: self.reasons.clone(),
        });
        c.from = before;
        if self.verdict == Verdict::Suspect && c.to == Verdict::Suspect {
            self.since = now;
        }
        Some(c)
    }

    fn count_flip(&mut self, a: &Assessment, policy: &Policy, now: Moment) {
        while self
            .flips
            .front()
            .is_some_and(|t| now.since(*t) > policy.confirm.flap_window)
        {
            self.flips.pop_front();
        }
        if a.verdict == Verdict::Maintenance {
            // An operator's maintenance is neither healthy nor sick.
            return;
        }
        let healthy = a.verdict == Verdict::Healthy;
        if let Some(prev) = self.last_healthy {
            if prev != healthy {
                self.flips.push_back(now);
            }
        }
        self.last_healthy = Some(healthy);
    }

    fn set_reasons(&mut self, mut reasons: Vec<String>) {
        if let Some(h) = &self.hold {
            reasons.insert(0, h.clone());
        }
        self.reasons = reasons;
    }

    fn move_to(&mut self, to: Verdict, now: Moment) -> Option<VerdictChange> {
        if to == self.verdict {
            return None;
        }
        let from = self.verdict;
        self.verdict = to;
        self.since = now;
        Some(VerdictChange {
            from,
            to,
            at: now,
            reasons: self.reasons.clone(),
        })
    }
}
