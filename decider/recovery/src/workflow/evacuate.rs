//! One instance: find out what Nova did from one consistent picture, evacuate
//! only when Nova shows none started (or says the last one failed), and count
//! it recovered only once it holds where it must be.

use std::time::Duration;

use serde_json::json;
use tracing::{info, instrument, warn};

use super::fence_step::ConfirmedFence;
use super::nova::{EvacuateRequest, NovaCallError, ServerStatus};
use super::picture::{classify, Context, NovaState, Picture};
use super::reset_gate::{self, ResetAsk, ResetPermit, RETRY_SETTLE};
use super::{Run, WorkflowError};
use crate::fence::error_chain;
use crate::journal::{InstanceRecord, InstanceState, StepId, StepKind, StepOutcome};
use crate::time::Timestamp;

/// Most reads of one picture before giving up on agreement for one round (a
/// Nova that changes the server between every two reads is still working:
/// the round ends, the caller waits a poll interval and asks again).
const PICTURE_READS: u32 = 5;

fn parse_status(s: &str) -> ServerStatus {
    serde_json::from_value(json!(s)).unwrap_or(ServerStatus::Other(s.to_string()))
}

impl Run<'_> {
    /// One read of the server, its evacuation migrations and its evacuate
    /// actions since the incident opened.
    async fn read_picture(&self, id: &str) -> Result<Picture, NovaCallError> {
        let nova = &self.r.edges.nova;
        let server = match nova.server(id).await {
            Ok(s) => Some(s),
            Err(NovaCallError::NotFound { .. }) => None,
            Err(e) => return Err(e),
        };
        let migrations = nova.evacuation_migrations(id).await?;
        let actions = nova.evacuate_action_count(id, self.opened_at).await?;
        Ok(Picture::new(
            server.as_ref(),
            &migrations,
            actions,
            self.opened_at,
        ))
    }

    /// Reads pictures until two consecutive ones agree. `Err` says what went
    /// wrong with the last read (Nova unreachable, or still changing).
    async fn consistent_picture(&self, id: &str) -> Result<Picture, String> {
        let mut last: Option<Picture> = None;
        for _ in 0..PICTURE_READS {
            let p = self.read_picture(id).await.map_err(|e| error_chain(&e))?;
            if last.as_ref() == Some(&p) {
                return Ok(p);
            }
            last = Some(p);
        }
        Err(format!(
            "Nova's picture of the server changed between every two of {PICTURE_READS} reads"
        ))
    }

    /// Takes one instance to a final state, journaling each call.
    #[instrument(skip_all, fields(workflow = %self.id, node = %self.node, server_id = %rec.server_id))]
    pub(super) async fn handle_instance(
        &self,
        fence: Option<&ConfirmedFence>,
        mut rec: InstanceRecord,
    ) -> Result<InstanceRecord, WorkflowError> {
        if rec.state.is_final() {
            return Ok(rec);
        }
        let policy = &self.r.settings.evacuation;
        let request = EvacuateRequest {
            microversion: self.microversion_of(&rec),
            host: rec.destination.clone(),
        };
        let Some(fence) = fence.filter(|_| !self.dry_run) else {
            // Dry run: journal the call that would be made, make none.
            let s = self
                .begin(
                    StepKind::Evacuate,
                    &rec.server_id,
                    1,
                    json!({"request": request, "would": true}),
                )
                .await?;
            self.end(s, StepOutcome::DryRun, json!(null)).await?;
            rec.state = InstanceState::DryRun;
            self.put(&rec).await?;
            return Ok(rec);
        };
        self.count_from_journal(&mut rec).await?;
        let expected = parse_status(&rec.expected);
        // Everything unresolved pages at this deadline; each evacuate call
        // starts a new one.
        let mut deadline = self.clock().now().plus(policy.verify_deadline);
        // The picture and since when it has held unchanged.
        let mut held: Option<(Picture, Timestamp)> = None;
        // The Verify step of the last evacuate call, open until it ends.
        let mut verify: Option<StepId> = None;
        let mut last = String::from("not read yet");
        loop {
            let now = self.clock().now();
            if now >= deadline {
                let why = format!(
                    "Nova did not settle within {:?}; last seen: {last}. Vigil stops here \
                     without another evacuate or reset-state: check `openstack server show` \
                     and `openstack server event list` for it",
                    policy.verify_deadline
                );
                self.close(
                    &mut verify,
                    StepOutcome::Failed,
                    json!({"timeout": true, "last": last}),
                )
                .await?;
                return self.fail(rec, why).await;
            }
            let picture = match self.consistent_picture(&rec.server_id).await {
                Ok(p) => p,
                Err(e) => {
                    // Unreachable, frozen or still writing: never act blind.
                    last = e;
                    self.clock().sleep(policy.poll_interval).await;
                    continue;
                }
            };
            let sent = rec.attempts.saturating_sub(rec.refused);
            let state = classify(
                &picture,
                Context {
                    from_host: &rec.from_host,
                    expected: &expected,
                    sent,
                },
            );
            let now = self.clock().now();
            let held_for = match &held {
                Some((p, since)) if *p == picture => now.since(*since),
                _ => {
                    held = Some((picture.clone(), now));
                    Duration::ZERO
                }
            };
            rec.evacuate_actions = Some(picture.evacuate_actions);
            if let Some(s) = &picture.server {
                rec.status_after = Some(s.status.to_string());
            }
            last = describe(&picture, &state);
            match state {
                NovaState::Gone => {
                    self.close(&mut verify, StepOutcome::Skipped, json!({"deleted": true}))
                        .await?;
                    rec.state = InstanceState::Gone;
                    rec.finished_at = Some(self.clock().now());
                    rec.reason = Some("deleted during recovery".into());
                    self.put(&rec).await?;
                    return Ok(rec);
                }
                NovaState::ExtraActions { nova, sent } => {
                    self.close(
                        &mut verify,
                        StepOutcome::Failed,
                        json!({"nova_actions": nova, "sent": sent}),
                    )
                    .await?;
                    let why = format!(
                        "Nova shows {nova} evacuate action(s) for it since the incident opened \
                         but Vigil sent {sent}: someone else evacuated it, or a request was \
                         counted wrong. Vigil stops here; check `openstack server event list`"
                    );
                    return self.fail(rec, why).await;
                }
                NovaState::InFlight | NovaState::Unaccounted { .. } | NovaState::Unsettled(_) => {}
                NovaState::Landed { host } => {
                    rec.to_host = Some(host.clone());
                    if held_for >= policy.verify_settle {
                        self.close(
                            &mut verify,
                            StepOutcome::Ok,
                            json!({"host": host, "status": rec.status_after, "evacuate_actions": picture.evacuate_actions, "held_secs": held_for.as_secs_f64()}),
                        )
                        .await?;
                        rec.state = InstanceState::Evacuated;
                        rec.finished_at = Some(self.clock().now());
                        rec.reason = None;
                        self.put(&rec).await?;
                        info!(to = %host, "instance recovered");
                        return Ok(rec);
                    }
                    self.clock()
                        .sleep(policy.poll_interval.min(policy.verify_settle))
                        .await;
                    continue;
                }
                NovaState::LandedWrong {
                    host,
                    status,
                    migration,
                } => {
                    // It moved but is not as it must be (stopped by a 2.95
                    // evacuation, broke on the destination): a second
                    // evacuate is impossible and wrong; a person decides.
                    let fault = picture.server.as_ref().and_then(|s| s.fault.clone());
                    self.close(
                        &mut verify,
                        StepOutcome::Failed,
                        json!({"host": host, "status": status, "migration": migration, "fault": fault}),
                    )
                    .await?;
                    rec.to_host = Some(host.clone());
                    let why = format!(
                        "landed on {host} as {status} (expected {}), migration {}{}",
                        rec.expected,
                        migration.as_deref().unwrap_or("?"),
                        fault.map(|f| format!(": {f}")).unwrap_or_default()
                    );
                    return self.fail(rec, why).await;
                }
                NovaState::NotStarted | NovaState::Failed { .. } => {
                    let failed = matches!(state, NovaState::Failed { .. });
                    if failed && held_for < RETRY_SETTLE {
                        self.clock().sleep(policy.poll_interval).await;
                        continue;
                    }
                    if rec.attempts >= policy.max_attempts {
                        let fault = picture
                            .server
                            .as_ref()
                            .and_then(|s| s.fault.clone())
                            .unwrap_or_else(|| last.clone());
                        self.close(&mut verify, StepOutcome::Failed, json!({"fault": fault}))
                            .await?;
                        let why = format!(
                            "evacuation failed after {} attempt(s): {fault}",
                            rec.attempts
                        );
                        return self.fail(rec, why).await;
                    }
                    if failed {
                        // Nova's own fault message is what an operator
                        // searches nova-compute's log for.
                        let fault = picture.server.as_ref().and_then(|s| s.fault.clone());
                        self.close(
                            &mut verify,
                            StepOutcome::Failed,
                            json!({"retry": true, "last": last, "fault": fault}),
                        )
                        .await?;
                        let ask = ResetAsk {
                            fence,
                            state: &state,
                            held_for,
                            attempts: rec.attempts,
                            max_attempts: policy.max_attempts,
                            expected: &rec.expected,
                            microversion: request.microversion,
                        };
                        match reset_gate::permit(&ask) {
                            Ok(p) => self.reset_call(&rec, p).await?,
                            Err(why) => {
                                // Unreachable by construction; if it is ever
                                // reached, a person decides.
                                return self.fail(rec, why).await;
                            }
                        }
                    }
                    self.evacuate_once(fence, &mut rec, &request).await?;
                    held = None;
                    deadline = self.clock().now().plus(policy.verify_deadline);
                    verify = Some(
                        self.begin(
                            StepKind::Verify,
                            &rec.server_id,
                            rec.attempts,
                            json!({"expect": rec.expected}),
                        )
                        .await?,
                    );
                }
            }
            self.clock().sleep(policy.poll_interval).await;
        }
    }

    /// Counts this server's evacuate calls from the journal's steps, the
    /// record of what was really attempted: a crash between the instance
    /// record and the step (or the call) must neither hide a call that may
    /// have reached Nova nor invent one that never left. A step a crash cut
    /// off is closed here as "outcome unknown".
    async fn count_from_journal(&self, rec: &mut InstanceRecord) -> Result<(), WorkflowError> {
        let d = self.journal().get(&self.id).await?;
        let mut attempts = 0u32;
        let mut refused = 0u32;
        for st in d
            .steps
            .iter()
            .filter(|st| st.kind == StepKind::Evacuate && st.target == rec.server_id)
        {
            attempts = attempts.saturating_add(1);
            match st.outcome {
                None => {
                    self.end(
                        st.id,
                        StepOutcome::Failed,
                        json!({"interrupted": true, "outcome_unknown": true}),
                    )
                    .await?;
                }
                Some(StepOutcome::Failed)
                    if st.result.get("outcome_unknown") != Some(&json!(true)) =>
                {
                    refused = refused.saturating_add(1);
                }
                _ => {}
            }
        }
        if (rec.attempts, rec.refused) != (attempts, refused) {
            rec.attempts = attempts;
            rec.refused = refused;
            self.put(rec).await?;
        }
        Ok(())
    }

    /// Journals, then makes, one evacuate call. A refusal with an answer (or a
    /// request that never left) is counted as refused; a lost answer is not:
    /// Nova may still apply that request, and the next picture says whether.
    async fn evacuate_once(
        &self,
        fence: &ConfirmedFence,
        rec: &mut InstanceRecord,
        request: &EvacuateRequest,
    ) -> Result<(), WorkflowError> {
        rec.attempts = rec.attempts.saturating_add(1);
        rec.state = InstanceState::Evacuating;
        rec.started_at = Some(self.clock().now());
        self.put(rec).await?;
        let s = self
            .begin(
                StepKind::Evacuate,
                &rec.server_id,
                rec.attempts,
                json!({"request": request, "evacuate_actions_before": rec.evacuate_actions}),
            )
            .await?;
        info!(attempt = rec.attempts, microversion = %request.microversion, host = request.host.as_deref().unwrap_or("(scheduler picks)"), "evacuating");
        match self.evacuate_call(fence, &rec.server_id, request).await {
            Ok(()) => self.end(s, StepOutcome::Ok, json!(null)).await?,
            Err(e @ NovaCallError::MaybeApplied { .. }) => {
                let e = error_chain(&e);
                warn!(error = %e, "evacuate outcome unknown; reading Nova before anything else");
                self.end(
                    s,
                    StepOutcome::Failed,
                    json!({"error": e, "outcome_unknown": true}),
                )
                .await?;
                rec.reason = Some(e);
                self.put(rec).await?;
            }
            Err(e) => {
                let e = error_chain(&e);
                warn!(error = %e, "evacuate refused");
                self.end(s, StepOutcome::Failed, json!({"error": e}))
                    .await?;
                rec.refused = rec.refused.saturating_add(1);
                rec.reason = Some(e);
                self.put(rec).await?;
            }
        }
        Ok(())
    }

    /// The only place `os-resetState` is called; it needs the gate's permit.
    async fn reset_call(
        &self,
        rec: &InstanceRecord,
        permit: ResetPermit,
    ) -> Result<(), WorkflowError> {
        let to = permit.to();
        let s = self
            .begin(
                StepKind::ResetState,
                &rec.server_id,
                rec.attempts,
                json!({"to": to}),
            )
            .await?;
        match self.r.edges.nova.reset_state(&rec.server_id, to).await {
            Ok(()) => self.end(s, StepOutcome::Ok, json!(null)).await,
            Err(e) => {
                self.end(s, StepOutcome::Failed, json!({"error": error_chain(&e)}))
                    .await
            }
        }
    }

    /// Ends the open Verify step, if any.
    async fn close(
        &self,
        verify: &mut Option<StepId>,
        outcome: StepOutcome,
        result: serde_json::Value,
    ) -> Result<(), WorkflowError> {
        match verify.take() {
            Some(s) => self.end(s, outcome, result).await,
            None => Ok(()),
        }
    }

    /// The only place an evacuate call is made; it needs the fence proof.
    async fn evacuate_call(
        &self,
        _fence: &ConfirmedFence,
        id: &str,
        request: &EvacuateRequest,
    ) -> Result<(), NovaCallError> {
        self.r.edges.nova.evacuate(id, request).await
    }

    async fn fail(
        &self,
        mut rec: InstanceRecord,
        why: String,
    ) -> Result<InstanceRecord, WorkflowError> {
        warn!(server_id = %rec.server_id, reason = %why, "instance needs attention");
        rec.state = InstanceState::Failed;
        rec.finished_at = Some(self.clock().now());
        rec.reason = Some(why);
        self.put(&rec).await?;
        Ok(rec)
    }
}

/// One line for the journal and the page: what Nova showed last.
fn describe(p: &Picture, state: &NovaState) -> String {
    let server = p.server.as_ref().map_or("deleted".to_string(), |s| {
        format!(
            "status {} task_state {} host {}",
            s.status,
            s.task_state.as_deref().unwrap_or("-"),
            s.host.as_deref().unwrap_or("-")
        )
    });
    let migration = p.migrations.last().map_or("-", |(_, m)| m.as_str());
    format!(
        "{server}, newest migration {migration}, {} evacuate action(s): {state:?}",
        p.evacuate_actions
    )
}
