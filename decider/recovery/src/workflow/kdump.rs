//! The kdump path (fence_kdump's semantics). A node judged dead because its
//! crash kernel announced itself runs nothing but that crash kernel: the
//! announcement is the fence, so evacuation starts at once with no power-off
//! call. The power-off comes after the evacuations, once the messages stop
//! (the dump is written) or `power_off_after` has passed since the first
//! one, so the vmcore survives.
//!
//! What was decided comes from the incident's evidence (`fast_path` =
//! `"kdump"`), so a resumed run takes the same path. The live messages come
//! from the decider's engine through [`KdumpSource`]; a resumed run listens
//! for `quiet_for` itself before it calls the dump written, because the
//! restarted engine heard nothing before it started.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tracing::{info, warn};

use super::fence_step::{ConfirmedFence, FenceResult};
use super::{Run, WorkflowError};
use crate::fence::FenceLevel;
use crate::journal::{IncidentDetail, StepKind, StepOutcome};
use crate::notify::Message;
use crate::time::Timestamp;

/// The `target` of the ConfirmOff step a crash kernel's announcement
/// confirms; every other ConfirmOff target is a fencer.
pub const KDUMP_TARGET: &str = "kdump";

/// The journal event written once the node is off after its dump.
pub const POWERED_OFF_AFTER_DUMP: &str = "powered-off-after-dump";

/// Without a [`KdumpWatch`] (a decider restarted without `[kdump]`), the
/// messages cannot be heard, so the power-off waits this long after the
/// first one: the policy's default.
const UNWATCHED_POWER_OFF_AFTER: Duration = Duration::from_secs(600);

/// How often the wait looks at the messages again.
const POLL: Duration = Duration::from_secs(1);

/// The live kdump state, as the decider's engine hears it. Answers from
/// memory: it is asked once a second while a dump is being written.
pub trait KdumpSource: Send + Sync {
    /// How long ago the latest fence_kdump message from `node` was heard;
    /// `None` when none was heard since this decider started.
    fn last_heard_ago(&self, node: &str) -> Option<Duration>;
}

/// The live messages and the policy that reads them.
#[derive(Clone)]
pub struct KdumpWatch {
    pub source: Arc<dyn KdumpSource>,
    /// `policy.kdump.fresh_for`: this long without a message and the dump is
    /// written (fence_kdump_send repeats every 10 s while it runs).
    pub quiet_for: Duration,
    /// `policy.kdump.power_off_after`: the longest wait after the first
    /// message before the node is powered off anyway.
    pub power_off_after: Duration,
}

/// The crash kernel's announcement as the incident's evidence recorded it.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct KdumpClaim {
    pub from: String,
    pub messages: u64,
    /// When the first message of the episode was heard, if the evidence
    /// says.
    pub first_at: Option<Timestamp>,
}

/// Reads the evidence `evidence_snapshot` stores: `fast_path`, `kdump`
/// (`from`, `messages`, `first_age_ms`) and `decided_at_unix_ms`.
pub(super) fn claim(evidence: &Value) -> Option<KdumpClaim> {
    if evidence.get("fast_path").and_then(Value::as_str) != Some("kdump") {
        return None;
    }
    let k = evidence.get("kdump");
    let field = |name: &str| k.and_then(|k| k.get(name));
    let decided = evidence.get("decided_at_unix_ms").and_then(Value::as_i64);
    let first_age = field("first_age_ms")
        .and_then(Value::as_u64)
        .and_then(|a| i64::try_from(a).ok());
    Some(KdumpClaim {
        from: field("from")
            .and_then(Value::as_str)
            .unwrap_or("an unrecorded address")
            .to_string(),
        messages: field("messages").and_then(Value::as_u64).unwrap_or(0),
        first_at: decided
            .zip(first_age)
            .map(|(d, a)| Timestamp(d.saturating_sub(a))),
    })
}

fn kdump_confirmed(d: &IncidentDetail) -> Option<Timestamp> {
    d.steps_of(StepKind::ConfirmOff, KDUMP_TARGET)
        .find(|s| s.outcome == Some(StepOutcome::Ok))
        .map(|s| s.began_at)
}

/// A fencer read the node back off (or a storage fence held) after the
/// kdump confirmation.
fn powered_off(d: &IncidentDetail) -> bool {
    d.steps.iter().any(|s| {
        s.kind == StepKind::ConfirmOff
            && s.target != KDUMP_TARGET
            && s.outcome == Some(StepOutcome::Ok)
    })
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Why the wait for the dump ended.
enum DumpEnd {
    Quiet { last_heard: Option<Timestamp> },
    TimedOut,
}

impl Run<'_> {
    /// The incident was decided on the kdump fast path and this decider
    /// hears kdump messages.
    pub(super) fn kdump_claim(&self, d: &IncidentDetail) -> Option<KdumpClaim> {
        self.r.kdump.as_ref()?;
        claim(&d.evidence)
    }

    /// The fence step of the kdump path: journaled as a ConfirmOff with
    /// target `kdump`, no call made.
    pub(super) async fn fence_by_kdump(
        &self,
        c: &KdumpClaim,
    ) -> Result<FenceResult, WorkflowError> {
        let how = format!(
            "fenced by kdump: the crash kernel announced itself from {}, {} message(s)",
            c.from, c.messages
        );
        let s = self
            .begin(
                StepKind::ConfirmOff,
                KDUMP_TARGET,
                1,
                json!({"from": c.from, "messages": c.messages, "first_at": c.first_at}),
            )
            .await?;
        if self.dry_run {
            self.end(s, StepOutcome::DryRun, json!({"would": how}))
                .await?;
            return Ok(FenceResult::DryRun);
        }
        self.end(s, StepOutcome::Ok, json!({"how": how})).await?;
        warn!(node = %self.node, from = %c.from, messages = c.messages, "fenced by kdump: evacuating now, powering off after the dump");
        // Read after "fenced by: " in the node-fenced message.
        Ok(FenceResult::Confirmed(ConfirmedFence::by_kdump(format!(
            "kdump: the crash kernel announced itself from {}, {} message(s); the power-off follows once the dump is written",
            c.from, c.messages
        ))))
    }

    /// Whether this incident went the kdump path (so a power-off after the
    /// dump is owed).
    pub(super) fn owes_power_off_after_dump(&self, d: &IncidentDetail) -> bool {
        if self.dry_run {
            return self.kdump_claim(d).is_some();
        }
        kdump_confirmed(d).is_some()
    }

    /// After the evacuations: waits for the dump, then powers the node off
    /// through its levels and reads it back. `Err` says why it is not off.
    pub(super) async fn power_off_after_dump(
        &self,
        levels: &[FenceLevel],
    ) -> Result<Result<(), String>, WorkflowError> {
        let d = self.journal().get(&self.id).await?;
        if powered_off(&d) {
            return Ok(Ok(()));
        }
        if self.dry_run {
            let s = self
                .begin(StepKind::AwaitDump, &self.node, 1, json!({"would": "wait until the kdump messages stop (or power_off_after passes), then power off"}))
                .await?;
            self.end(s, StepOutcome::DryRun, json!(null)).await?;
            return match self.power_off_levels(&d, levels).await? {
                FenceResult::Failed(why) => Ok(Err(why)),
                _ => Ok(Ok(())),
            };
        }
        let confirmed_at = kdump_confirmed(&d).unwrap_or(self.started_at);
        let first_at = claim(&d.evidence)
            .and_then(|c| c.first_at)
            .unwrap_or(confirmed_at);
        let (quiet_for, power_off_after) = match &self.r.kdump {
            Some(w) => (w.quiet_for, w.power_off_after),
            None => (UNWATCHED_POWER_OFF_AFTER, UNWATCHED_POWER_OFF_AFTER),
        };
        let deadline = first_at.plus(power_off_after);
        // Only messages this run could hear count as silence: the engine
        // heard none before this run started.
        let listening_since = confirmed_at.max(self.started_at);

        if !d
            .steps_of(StepKind::AwaitDump, &self.node)
            .any(|s| s.outcome == Some(StepOutcome::Ok))
        {
            let attempt = u32::try_from(d.steps_of(StepKind::AwaitDump, &self.node).count())
                .unwrap_or(u32::MAX)
                .saturating_add(1);
            let s = self
                .begin(
                    StepKind::AwaitDump,
                    &self.node,
                    attempt,
                    json!({
                        "quiet_for_ms": ms(quiet_for),
                        "power_off_after_ms": ms(power_off_after),
                        "first_message_at": first_at,
                        "deadline": deadline,
                        "listening_since": listening_since,
                    }),
                )
                .await?;
            info!(node = %self.node, deadline = %deadline, "waiting for the crash dump before powering off");
            let end = self.await_dump(listening_since, quiet_for, deadline).await;
            let result = match end {
                DumpEnd::Quiet { last_heard } => json!({
                    "ended": "messages stopped: the dump is written",
                    "last_heard": last_heard,
                }),
                DumpEnd::TimedOut => json!({
                    "ended": format!("messages still arriving {} after the first: powering off anyway", humantime::format_duration(power_off_after)),
                }),
            };
            self.end(s, StepOutcome::Ok, result).await?;
        }

        let d = self.journal().get(&self.id).await?;
        if let Some(at) = d.summary.recovered_at {
            // It rebooted on its own after the dump (kdump's final action)
            // and came back with a new boot id: a running node is never
            // powered off.
            self.event(
                POWERED_OFF_AFTER_DUMP,
                format!("fenced by kdump; not powered off after the dump: the node came back on its own at {at}"),
                json!({"powered_off": false}),
            )
            .await?;
            return Ok(Ok(()));
        }
        match self.power_off_levels(&d, levels).await? {
            FenceResult::Confirmed(c) => {
                let at = self.clock().now();
                let message = format!(
                    "fenced by kdump; powered off after the dump at {at} ({})",
                    c.how()
                );
                info!(node = %self.node, %at, "powered off after the dump");
                self.event(
                    POWERED_OFF_AFTER_DUMP,
                    message.clone(),
                    json!({"powered_off": true, "at": at}),
                )
                .await?;
                self.notify(
                    &d,
                    Message::PoweredOffAfterDump {
                        incident: self.id.clone(),
                        node: self.node.clone(),
                        how: message,
                    },
                )
                .await?;
                Ok(Ok(()))
            }
            FenceResult::DryRun => Ok(Ok(())),
            FenceResult::Failed(why) => Ok(Err(format!(
                "fenced by kdump and evacuated, but not powered off after the dump: {why}"
            ))),
        }
    }

    /// Waits until no message was heard for `quiet_for` (counting from
    /// `listening_since` at the earliest) or `deadline` passes.
    async fn await_dump(
        &self,
        listening_since: Timestamp,
        quiet_for: Duration,
        deadline: Timestamp,
    ) -> DumpEnd {
        let source = self.r.kdump.as_ref().map(|w| w.source.clone());
        loop {
            let now = self.clock().now();
            if now >= deadline {
                return DumpEnd::TimedOut;
            }
            let last_heard = source
                .as_ref()
                .and_then(|s| s.last_heard_ago(&self.node))
                .map(|ago| {
                    Timestamp(
                        now.0
                            .saturating_sub(i64::try_from(ago.as_millis()).unwrap_or(i64::MAX)),
                    )
                });
            if source.is_some() {
                let quiet_since = last_heard.map_or(listening_since, |l| l.max(listening_since));
                if now.since(quiet_since) >= quiet_for {
                    return DumpEnd::Quiet { last_heard };
                }
            }
            self.clock().sleep(POLL.min(deadline.since(now))).await;
        }
    }
}
