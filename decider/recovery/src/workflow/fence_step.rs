//! The fence step: power the node off through its levels and read it back,
//! producing the [`ConfirmedFence`] every later step requires (safety rule 1).

use std::time::Duration;

use serde_json::json;
use tracing::{info, warn};

use super::{Run, WorkflowError};
use crate::fence::{error_chain, FenceLevel, PowerState};
use crate::journal::{IncidentDetail, StepKind, StepOutcome, OPERATOR_CONFIRMED_OFF};

/// Proof that the node is off. Only this module can build one: from a power
/// read-back of `Off`, a storage fence that policy accepts alone, a journaled
/// confirmation of either (on resume), or an operator's journaled
/// confirmation. `force_down` and `evacuate` take it, so "no evacuation
/// without a confirmed fence" is checked by the compiler.
#[derive(Clone, Debug)]
pub struct ConfirmedFence {
    how: String,
}

impl ConfirmedFence {
    /// How the fence was confirmed, for messages.
    pub fn how(&self) -> &str {
        &self.how
    }

    /// The proof a crash kernel's own announcement gives (fence_kdump's
    /// semantics): the node runs nothing but its crash kernel.
    pub(super) fn by_kdump(how: String) -> Self {
        ConfirmedFence { how }
    }

    /// A proof for unit tests of the gates that take one.
    #[cfg(test)]
    pub(crate) fn for_tests() -> Self {
        ConfirmedFence { how: "test".into() }
    }
}

/// What the fence step ended with.
pub(super) enum FenceResult {
    Confirmed(ConfirmedFence),
    /// Dry run: every call was journaled, none made.
    DryRun,
    /// Not confirmed; why, for the page.
    Failed(String),
}

/// Did a previous run of this incident already confirm the fence?
pub(super) fn confirmed_before(d: &IncidentDetail) -> Option<ConfirmedFence> {
    if let Some(s) = d
        .steps
        .iter()
        .find(|s| s.kind == StepKind::ConfirmOff && s.outcome == Some(StepOutcome::Ok))
    {
        return Some(ConfirmedFence {
            how: format!("{} (journaled confirmation)", s.target),
        });
    }
    d.events_of(OPERATOR_CONFIRMED_OFF)
        .next()
        .map(|e| ConfirmedFence {
            how: format!("operator confirmation: {}", e.message),
        })
}

impl Run<'_> {
    pub(super) async fn fence(
        &self,
        d: &IncidentDetail,
        levels: &[FenceLevel],
    ) -> Result<FenceResult, WorkflowError> {
        // Safety rule 7: a node confirmed off is never fenced again.
        if let Some(c) = confirmed_before(d) {
            info!(node = %self.node, how = c.how(), "fence already confirmed");
            return Ok(FenceResult::Confirmed(c));
        }
        if let Some(claim) = self.kdump_claim(d) {
            return self.fence_by_kdump(&claim).await;
        }
        self.power_off_levels(d, levels).await
    }

    /// Powers the node off through its levels and reads it back; on resume
    /// after a power-off began, reads the power state first.
    pub(super) async fn power_off_levels(
        &self,
        d: &IncidentDetail,
        levels: &[FenceLevel],
    ) -> Result<FenceResult, WorkflowError> {
        if levels.is_empty() {
            return Ok(FenceResult::Failed(format!(
                "no fence levels configured for {}",
                self.node
            )));
        }
        if self.dry_run {
            for l in levels {
                let f = l.fencer.describe();
                let s = self
                    .begin(
                        StepKind::PowerOff,
                        &f,
                        1,
                        json!({"would": "power off", "storage_fence": l.storage_fence}),
                    )
                    .await?;
                self.end(s, StepOutcome::DryRun, json!(null)).await?;
            }
            let s = self
                .begin(
                    StepKind::ConfirmOff,
                    &levels[0].fencer.describe(),
                    1,
                    json!({"would": "read power state until off"}),
                )
                .await?;
            self.end(s, StepOutcome::DryRun, json!(null)).await?;
            return Ok(FenceResult::DryRun);
        }

        // A previous run began a power-off and died before confirming: read
        // the power state first; if it is off, confirm without a second
        // power-off.
        if d.steps.iter().any(|s| s.kind == StepKind::PowerOff) {
            for l in levels.iter().filter(|l| !l.storage_fence) {
                let f = l.fencer.describe();
                let s = self
                    .begin(
                        StepKind::ConfirmOff,
                        &f,
                        1,
                        json!({"read": "power state", "on_resume": true}),
                    )
                    .await?;
                let read = self
                    .with_deadline(l.deadline, l.fencer.power_status())
                    .await;
                match read {
                    Some(Ok(PowerState::Off)) => {
                        self.end(
                            s,
                            StepOutcome::Ok,
                            json!({"power": "off", "on_resume": true}),
                        )
                        .await?;
                        return Ok(FenceResult::Confirmed(ConfirmedFence {
                            how: format!("{f}: power read back off"),
                        }));
                    }
                    Some(Ok(p)) => {
                        self.end(s, StepOutcome::Failed, json!({"power": p}))
                            .await?;
                        break;
                    }
                    Some(Err(e)) => {
                        self.end(s, StepOutcome::Failed, json!({"error": error_chain(&e)}))
                            .await?
                    }
                    None => {
                        self.end(
                            s,
                            StepOutcome::Failed,
                            json!({"error": "no answer within the level deadline"}),
                        )
                        .await?
                    }
                }
            }
        }

        let mut failures = Vec::new();
        for (i, l) in levels.iter().enumerate() {
            match self.fence_level(i, l).await? {
                Ok(c) => return Ok(FenceResult::Confirmed(c)),
                Err(why) => {
                    warn!(node = %self.node, level = i, reason = %why, "fence level did not confirm");
                    failures.push(format!("level {i} ({}): {why}", l.fencer.describe()));
                }
            }
        }
        Ok(FenceResult::Failed(format!(
            "fence not confirmed: {}",
            failures.join("; ")
        )))
    }

    /// One level: power off, then read back until off, all within its deadline.
    async fn fence_level(
        &self,
        i: usize,
        l: &FenceLevel,
    ) -> Result<Result<ConfirmedFence, String>, WorkflowError> {
        let f = l.fencer.describe();
        let started = self.clock().now();
        let deadline = started.plus(l.deadline);
        let s = self.begin(StepKind::PowerOff, &f, 1, json!({"level": i, "storage_fence": l.storage_fence, "deadline_ms": l.deadline.as_millis() as u64})).await?;
        info!(node = %self.node, fencer = %f, level = i, "fencing");
        let ack = match self.with_deadline(l.deadline, l.fencer.power_off()).await {
            Some(Ok(ack)) => {
                self.end(s, StepOutcome::Ok, json!(ack)).await?;
                ack
            }
            Some(Err(e)) => {
                let e = error_chain(&e);
                self.end(s, StepOutcome::Failed, json!({"error": e}))
                    .await?;
                return Ok(Err(e));
            }
            None => {
                self.end(s, StepOutcome::Failed, json!({"error": "deadline passed"}))
                    .await?;
                return Ok(Err(format!("no answer within {:?}", l.deadline)));
            }
        };

        if l.storage_fence {
            if !ack.storage_fenced {
                return Ok(Err(format!(
                    "storage fence not reported in place: {}",
                    ack.message
                )));
            }
            if !self.r.settings.accept_storage_fence_alone {
                self.event(
                    "storage-fenced",
                    format!("{f}: storage fenced; policy wants power confirmed too"),
                    json!(ack),
                )
                .await?;
                return Ok(Err(
                    "storage fenced, but policy does not accept a storage fence alone".into(),
                ));
            }
            let s = self
                .begin(StepKind::ConfirmOff, &f, 1, json!({"storage_fence": true}))
                .await?;
            self.end(
                s,
                StepOutcome::Ok,
                json!({"storage_fenced": true, "message": ack.message}),
            )
            .await?;
            return Ok(Ok(ConfirmedFence {
                how: format!("{f}: storage fence confirmed"),
            }));
        }

        // Power read-back until Off or the level's deadline.
        let s = self
            .begin(
                StepKind::ConfirmOff,
                &f,
                1,
                json!({"level": i, "read": "power state until off"}),
            )
            .await?;
        let mut reads = 0u32;
        let mut last = String::from("no read yet");
        loop {
            let left = deadline.since(self.clock().now());
            if left.is_zero() {
                break;
            }
            reads += 1;
            match self.with_deadline(left, l.fencer.power_status()).await {
                Some(Ok(PowerState::Off)) => {
                    self.end(s, StepOutcome::Ok, json!({"power": "off", "reads": reads, "took_ms": self.clock().now().since(started).as_millis() as u64})).await?;
                    info!(node = %self.node, fencer = %f, reads, "power confirmed off");
                    return Ok(Ok(ConfirmedFence {
                        how: format!("{f}: power read back off"),
                    }));
                }
                Some(Ok(p)) => last = format!("power {p}"),
                Some(Err(e)) => last = error_chain(&e),
                None => last = "no answer to the status read".into(),
            }
            let pause = self
                .r
                .settings
                .confirm_poll_interval
                .min(deadline.since(self.clock().now()));
            if pause > Duration::ZERO {
                self.clock().sleep(pause).await;
            }
        }
        self.end(
            s,
            StepOutcome::Failed,
            json!({"reads": reads, "last": last}),
        )
        .await?;
        Ok(Err(format!(
            "power not read back off within {:?} (last: {last})",
            l.deadline
        )))
    }
}
