//! One instance: reconcile with Nova's live state, evacuate (again only if
//! Nova says the last try failed), and verify it runs elsewhere.

use std::time::Duration;

use serde_json::json;
use tracing::{info, instrument, warn};

use super::fence_step::ConfirmedFence;
use super::nova::{EvacuateRequest, Microversion, NovaCallError, ResetTo, ServerStatus};
use super::{Run, WorkflowError};
use crate::fence::error_chain;
use crate::journal::{InstanceRecord, InstanceState, StepKind, StepOutcome};
use crate::time::Timestamp;

/// What Nova says about the instance right now.
enum Live {
    /// Deleted.
    Gone,
    /// Moved or moving: watch it, never evacuate it again.
    Moving,
    /// On the dead host, not moving; `attempts` evacuations Nova recorded since
    /// the incident opened (all failed, or none made).
    Stuck {
        status: ServerStatus,
        fault: Option<String>,
        attempts: u32,
    },
}

/// How a verification ended.
enum Verified {
    Done(Box<InstanceRecord>),
    /// Nova says this attempt failed and the server is still on the dead
    /// host: a retry may help.
    Retry(String),
}

/// How long Nova's word that an evacuation failed must hold, the server's
/// record (`updated`) unchanged, before it is evacuated again. Nova rolls a
/// failed evacuation back in more than one write: after a failed destination
/// claim the server shows ACTIVE with no task state at once, and the compute
/// manager clears the task state once more about 2 s later (seen in the
/// lab); an evacuation made in between has its task state cleared by that
/// write and fails (UnexpectedTaskStateError), wasting an attempt. 5 s:
/// more than twice that gap, on a busy two-CPU lab.
const RETRY_SETTLE: Duration = Duration::from_secs(5);

/// What a server is reset to before it is evacuated again. `error` claims
/// nothing, so it is the rule. But Nova (2025.1, `_do_rebuild_instance`)
/// applies an evacuation's target state (`stopped` from microversion 2.95)
/// only to a server that is not in ERROR: a stopped server reset to `error`
/// would be started on its destination (seen in the lab). So one that must
/// land stopped, going with 2.95 or later, is reset to `active`; it is on a
/// fenced host, and the evacuation that follows at once stops it there.
fn reset_before_retry(expected: &str, microversion: Microversion) -> ResetTo {
    if expected == "SHUTOFF" && microversion >= Microversion::STOPPED_EVACUATE {
        ResetTo::Active
    } else {
        ResetTo::Error
    }
}

fn parse_status(s: &str) -> ServerStatus {
    serde_json::from_value(json!(s)).unwrap_or(ServerStatus::Other(s.to_string()))
}

impl Run<'_> {
    /// Reads the server and its evacuations; transient read failures are
    /// retried within the instance's deadline by the caller.
    async fn live(&self, rec: &InstanceRecord) -> Result<Live, NovaCallError> {
        let nova = &self.r.edges.nova;
        let server = match nova.server(&rec.server_id).await {
            Ok(s) => s,
            Err(NovaCallError::NotFound { .. }) => return Ok(Live::Gone),
            Err(e) => return Err(e),
        };
        let migrations = nova.evacuation_migrations(&rec.server_id).await?;
        let moving = migrations
            .iter()
            .any(|m| !m.finished() && m.created_at.is_none_or(|t| t >= self.opened_at));
        let moved = server.host.as_deref().is_some_and(|h| h != rec.from_host);
        if moved || moving || server.task_state.as_deref() == Some("rebuilding") {
            return Ok(Live::Moving);
        }
        let attempts = nova
            .evacuate_action_count(&rec.server_id, self.opened_at)
            .await?;
        Ok(Live::Stuck {
            status: server.status,
            fault: server.fault,
            attempts,
        })
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
        let mut read_failures = 0u32;
        loop {
            let live = match self.live(&rec).await {
                Ok(l) => l,
                Err(e) => {
                    // Nova blinked; try again a few times before giving up on
                    // this instance (never evacuate blind).
                    read_failures += 1;
                    if read_failures >= 3 {
                        return self
                            .fail(
                                rec,
                                format!("cannot read the server from nova: {}", error_chain(&e)),
                            )
                            .await;
                    }
                    self.clock().sleep(policy.poll_interval).await;
                    continue;
                }
            };
            match live {
                Live::Gone => {
                    rec.state = InstanceState::Gone;
                    rec.finished_at = Some(self.clock().now());
                    rec.reason = Some("deleted during recovery".into());
                    self.put(&rec).await?;
                    return Ok(rec);
                }
                Live::Moving => {}
                Live::Stuck {
                    status,
                    fault,
                    attempts,
                } => {
                    // Safety rule 7: count what Nova recorded as well as what
                    // we journaled, so a crash between the call and its record
                    // cannot buy an extra attempt.
                    let nova_attempts = attempts;
                    let attempts = attempts.max(rec.attempts);
                    if attempts >= policy.max_attempts {
                        let why = fault
                            .unwrap_or_else(|| format!("status {status} on {}", rec.from_host));
                        return self
                            .fail(
                                rec,
                                format!("evacuation failed after {attempts} attempt(s): {why}"),
                            )
                            .await;
                    }
                    if nova_attempts > 0 {
                        // Nova recorded a failed evacuation; it can leave a task state behind
                        // that blocks the next; reset (clears it).
                        let to = reset_before_retry(&rec.expected, request.microversion);
                        let s = self
                            .begin(
                                StepKind::ResetState,
                                &rec.server_id,
                                attempts,
                                json!({"to": to}),
                            )
                            .await?;
                        match self.r.edges.nova.reset_state(&rec.server_id, to).await {
                            Ok(()) => self.end(s, StepOutcome::Ok, json!(null)).await?,
                            Err(e) => {
                                self.end(s, StepOutcome::Failed, json!({"error": error_chain(&e)}))
                                    .await?
                            }
                        }
                    }
                    rec.attempts = attempts + 1;
                    rec.state = InstanceState::Evacuating;
                    rec.started_at = Some(self.clock().now());
                    self.put(&rec).await?;
                    let s = self
                        .begin(
                            StepKind::Evacuate,
                            &rec.server_id,
                            rec.attempts,
                            json!({"request": request}),
                        )
                        .await?;
                    info!(attempt = rec.attempts, microversion = %request.microversion, host = request.host.as_deref().unwrap_or("(scheduler picks)"), "evacuating");
                    match self.evacuate_call(fence, &rec.server_id, &request).await {
                        Ok(()) => self.end(s, StepOutcome::Ok, json!(null)).await?,
                        Err(e) => {
                            let e = error_chain(&e);
                            warn!(error = %e, "evacuate refused");
                            self.end(s, StepOutcome::Failed, json!({"error": e}))
                                .await?;
                            rec.reason = Some(e);
                            self.put(&rec).await?;
                            continue;
                        }
                    }
                }
            }
            match self.verify(&mut rec).await? {
                Verified::Done(r) => return Ok(*r),
                Verified::Retry(why) => {
                    rec.reason = Some(why);
                    self.put(&rec).await?;
                }
            }
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

    /// Polls until the server is in its expected state on another host, Nova
    /// says the attempt failed, or the instance's deadline passes.
    async fn verify(&self, rec: &mut InstanceRecord) -> Result<Verified, WorkflowError> {
        let policy = &self.r.settings.evacuation;
        let expected = parse_status(&rec.expected);
        let s = self
            .begin(
                StepKind::Verify,
                &rec.server_id,
                rec.attempts,
                json!({"expect": rec.expected}),
            )
            .await?;
        let deadline = self.clock().now().plus(policy.verify_deadline);
        let mut last = String::from("not read yet");
        // Nova's word that this attempt failed, with the server's `updated`
        // and when it was first seen so.
        let mut failed_seen: Option<(Option<String>, Timestamp)> = None;
        while self.clock().now() < deadline {
            match self.r.edges.nova.server(&rec.server_id).await {
                Ok(server) => {
                    let elsewhere = server.host.as_deref().is_some_and(|h| h != rec.from_host);
                    let settled = server.task_state.is_none();
                    if !settled || elsewhere {
                        failed_seen = None;
                    }
                    last = format!(
                        "status {} task_state {:?} host {:?}",
                        server.status, server.task_state, server.host
                    );
                    if settled && elsewhere && server.status == expected {
                        rec.state = InstanceState::Evacuated;
                        rec.to_host = server.host.clone();
                        rec.finished_at = Some(self.clock().now());
                        rec.reason = None;
                        self.put(rec).await?;
                        self.end(
                            s,
                            StepOutcome::Ok,
                            json!({"host": server.host, "status": server.status}),
                        )
                        .await?;
                        info!(
                            to = server.host.as_deref().unwrap_or("unknown"),
                            "instance recovered"
                        );
                        return Ok(Verified::Done(Box::new(rec.clone())));
                    }
                    if settled
                        && elsewhere
                        && matches!(
                            server.status,
                            ServerStatus::Active | ServerStatus::Shutoff | ServerStatus::Error
                        )
                    {
                        // It moved but is not as it must be (e.g. stopped by a
                        // 2.95 evacuation, or broke on the destination): a
                        // second evacuate is impossible and wrong; a person decides.
                        self.end(s, StepOutcome::Failed, json!({"host": server.host, "status": server.status, "fault": server.fault})).await?;
                        rec.to_host = server.host.clone();
                        let why = format!(
                            "landed on {} as {} (expected {}){}",
                            server.host.as_deref().unwrap_or("?"),
                            server.status,
                            rec.expected,
                            server.fault.map(|f| format!(": {f}")).unwrap_or_default()
                        );
                        return self
                            .fail(rec.clone(), why)
                            .await
                            .map(|r| Verified::Done(Box::new(r)));
                    }
                    if settled && !elsewhere {
                        // Nova says this attempt failed: the server is ERROR on
                        // the dead host, or its newest evacuation failed and
                        // Nova rolled it back as it was (a destination's claim
                        // or late server-group check fails so; seen in the
                        // lab: still ACTIVE, migration `failed`). Nothing is
                        // moving: a retry may help.
                        let (moving, failed) = match self
                            .r
                            .edges
                            .nova
                            .evacuation_migrations(&rec.server_id)
                            .await
                        {
                            Ok(m) => (
                                m.iter().any(|m| !m.finished()),
                                m.last().is_some_and(|m| {
                                    m.failed() && m.created_at.is_none_or(|t| t >= self.opened_at)
                                }),
                            ),
                            Err(_) => (true, false),
                        };
                        let now = self.clock().now();
                        let failed_now =
                            !moving && (server.status == ServerStatus::Error || failed);
                        let settled_for = match &failed_seen {
                            Some((u, since)) if failed_now && *u == server.updated => {
                                now.since(*since)
                            }
                            _ => {
                                failed_seen = failed_now.then(|| (server.updated.clone(), now));
                                Duration::ZERO
                            }
                        };
                        if failed_now && settled_for >= RETRY_SETTLE {
                            let why = server.fault.unwrap_or_else(|| {
                                format!(
                                    "{} on the dead host after evacuate, its evacuation failed",
                                    server.status
                                )
                            });
                            self.end(s, StepOutcome::Failed, json!({"retry": true, "fault": why}))
                                .await?;
                            return Ok(Verified::Retry(why));
                        }
                    }
                }
                Err(NovaCallError::NotFound { .. }) => {
                    self.end(s, StepOutcome::Skipped, json!({"deleted": true}))
                        .await?;
                    rec.state = InstanceState::Gone;
                    rec.finished_at = Some(self.clock().now());
                    self.put(rec).await?;
                    return Ok(Verified::Done(Box::new(rec.clone())));
                }
                Err(e) => last = error_chain(&e),
            }
            self.clock().sleep(policy.poll_interval).await;
        }
        self.end(
            s,
            StepOutcome::Failed,
            json!({"timeout": true, "last": last}),
        )
        .await?;
        // Maybe still moving: never evacuate again on a timeout.
        let why = format!(
            "not {} on another host within {:?}; last seen: {last}",
            rec.expected, policy.verify_deadline
        );
        self.fail(rec.clone(), why)
            .await
            .map(|r| Verified::Done(Box::new(r)))
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
