//! The two fast paths to `dead` that do not wait for Nova's `updated_at` to
//! stand still: the node's own BMC reading its power off, and the node's
//! crash kernel announcing a kdump (the fence_kdump protocol). Each is
//! stronger evidence than Nova's silence for the one failure it describes,
//! and useless for every other, so each has narrow conditions:
//!
//! - **BMC off**: the BMC's identity is verified (its system UUID is the one
//!   the node's own sensor reported), its latest read says `Off` and is at most
//!   `bmc.fresh_for` old, the sensor is silent and every probed address is
//!   silent. A machine its own BMC reads as off runs no VM, so Nova's report
//!   still in flight (safety rule 4's veto) is superseded. A BMC that reads `On`
//!   or cannot be read changes nothing.
//! - **kdump**: fence_kdump datagrams from one of the node's management
//!   addresses, the latest at most `kdump.fresh_for` old, the sensor silent,
//!   and no instance address answering. The management address may answer
//!   (the crash kernel's network is up to send the datagrams); Nova's veto is
//!   superseded. The datagrams are unauthenticated: ARCHITECTURE.md's trust
//!   model says what else a spoofer must fake.
//!
//! A node that showed life (a heartbeat, an answer) after its BMC first read
//! `Off` contradicts that BMC: it is never evidence then, and against a live
//! node it is a misconfiguration (`degraded`). Life only *before* the first
//! `Off` read is the node's last moments before the power went: while the
//! sensor's silence and the probes still count out, the node is `suspect`
//! and converging (the confirmation window runs meanwhile).
//!
//! Everything else (the maintenance rule, the decider's isolation check,
//! the storm guard, the confirmation window) applies as on the Nova path.

use crate::evidence::{BmcIdentity, BmcPower, BmcWitness, KdumpWitness};
use crate::policy::Policy;
use crate::time::{fmt_secs, Moment};
use std::fmt;

/// Which fast path made a node `dead`; `None` in an assessment means the
/// ordinary rule (every required witness, Nova's wait included).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FastPath {
    /// The node's own BMC read power off.
    BmcOff,
    /// The node's crash kernel is writing a dump: fenced by kdump. Recovery
    /// evacuates at once and powers the node off only after the dump.
    Kdump,
}

impl FastPath {
    pub fn label(&self) -> &'static str {
        match self {
            FastPath::BmcOff => "bmc-off",
            FastPath::Kdump => "kdump",
        }
    }
}

impl fmt::Display for FastPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// What the BMC witness says, for the reasons, and whether it reads a fresh
/// `Off` that may count.
pub(crate) struct BmcJudgment {
    /// A fresh `Off` from a verified BMC: counts.
    pub off: bool,
    /// A fresh `Off`, verified or not: against a live node, a misconfigured
    /// or lying BMC worth an alert.
    pub read_off: bool,
    /// When the run of `Off` reads behind `read_off` began.
    pub off_since: Option<Moment>,
    pub summary: Option<String>,
}

pub(crate) fn judge_bmc(w: &BmcWitness, policy: &Policy, now: Moment) -> BmcJudgment {
    let none = BmcJudgment {
        off: false,
        read_off: false,
        off_since: None,
        summary: None,
    };
    if !policy.bmc.enabled {
        return none;
    }
    let read = match &w.last {
        Some(r) => r,
        None => match &w.identity {
            BmcIdentity::NoBmc => return none,
            other => {
                return BmcJudgment {
                    off: false,
                    read_off: false,
                    off_since: None,
                    summary: Some(format!("not read yet; {}", identity_text(other))),
                }
            }
        },
    };
    let age = now.since(read.at);
    let power = match &read.power {
        BmcPower::On => "power on".to_string(),
        BmcPower::Off => "power off".to_string(),
        BmcPower::Unknown(why) => format!("power unknown ({why})"),
    };
    let verified = matches!(w.identity, BmcIdentity::Verified { .. });
    let fresh = age <= policy.bmc.fresh_for;
    let off = verified && fresh && read.power == BmcPower::Off;
    let mut summary = format!("{power}, read {} ago", fmt_secs(age));
    if !verified {
        summary.push_str(&format!("; not evidence: {}", identity_text(&w.identity)));
    } else if !fresh && read.power == BmcPower::Off {
        summary.push_str(&format!(
            "; older than {}, not evidence",
            fmt_secs(policy.bmc.fresh_for)
        ));
    }
    // Another machine's BMC reading Off says nothing about this node (the
    // mismatch is reported on its own).
    let read_off =
        fresh && read.power == BmcPower::Off && !matches!(w.identity, BmcIdentity::Mismatch(_));
    BmcJudgment {
        off,
        read_off,
        // A run with no recorded start began at this read at the latest.
        off_since: read_off.then(|| w.off_since.unwrap_or(read.at).min(read.at)),
        summary: Some(summary),
    }
}

fn identity_text(i: &BmcIdentity) -> String {
    match i {
        BmcIdentity::NoBmc => "no BMC to read".to_string(),
        BmcIdentity::Unverified(why) => format!("identity not verified ({why})"),
        BmcIdentity::Mismatch(what) => format!("IDENTITY MISMATCH ({what})"),
        BmcIdentity::Verified { uuid } => format!("identity verified ({uuid})"),
    }
}

/// The kdump witness: `Some(summary)` while the messages are current.
pub(crate) struct KdumpJudgment {
    pub current: bool,
    pub summary: Option<String>,
}

pub(crate) fn judge_kdump(w: &KdumpWitness, policy: &Policy, now: Moment) -> KdumpJudgment {
    let Some(last) = w.last_at else {
        return KdumpJudgment {
            current: false,
            summary: None,
        };
    };
    if !policy.kdump.enabled {
        return KdumpJudgment {
            current: false,
            summary: None,
        };
    }
    let age = now.since(last);
    let current = age <= policy.kdump.fresh_for;
    let from = w.from.map(|a| format!(" from {a}")).unwrap_or_default();
    let summary = if current {
        format!(
            "crash kernel sending fence_kdump messages{from}: {} so far, latest {} ago",
            w.messages,
            fmt_secs(age)
        )
    } else {
        format!(
            "fence_kdump messages{from} stopped {} ago ({} in all)",
            fmt_secs(age),
            w.messages
        )
    };
    KdumpJudgment {
        current,
        summary: Some(summary),
    }
}
