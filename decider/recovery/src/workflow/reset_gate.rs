//! The one gate for `os-resetState`, the most dangerous call Vigil makes: it
//! rewrites a server's state in Nova's database, and done while an evacuation
//! runs or may still arrive it clears `task_state = rebuilding` and lets a
//! second rebuild start on shared storage (issue 17). The workflow can make
//! the call only with a [`ResetPermit`], and only [`permit`] makes one.
//!
//! A reset is allowed only when ALL of these hold (ARCHITECTURE.md repeats
//! them):
//! 1. the node is fenced and the fence confirmed (a [`ConfirmedFence`]);
//! 2. Nova says the server's last evacuation failed, from one consistent
//!    picture: [`NovaState::Failed`] — still on the failed host, no task
//!    state, the newest evacuation migration of this incident `failed` or
//!    `error`, one migration per `evacuate` action, and every evacuate request
//!    Vigil sent accounted for in Nova (none whose outcome is unknown);
//! 3. that picture held unchanged (Nova's `updated` included) for
//!    [`RETRY_SETTLE`];
//! 4. another evacuate is allowed (`attempts < max_attempts`) and follows at
//!    once: a reset is never made for its own sake.

use std::time::Duration;

use super::fence_step::ConfirmedFence;
use super::nova::{Microversion, ResetTo};
use super::picture::NovaState;

/// How long Nova's word that an evacuation failed must hold before the server
/// is reset and evacuated again. Nova rolls a failed evacuation back in more
/// than one write: after a failed destination claim the server shows ACTIVE
/// with no task state at once, and the compute manager clears the task state
/// once more about 2 s later (seen in the lab); an evacuation made in between
/// has its task state cleared by that write and fails. 5 s: more than twice
/// that gap, on a busy two-CPU lab.
pub const RETRY_SETTLE: Duration = Duration::from_secs(5);

/// Proof that a reset is allowed now; private fields, so only [`permit`]
/// makes one.
#[derive(Debug)]
pub struct ResetPermit {
    to: ResetTo,
}

impl ResetPermit {
    pub fn to(&self) -> ResetTo {
        self.to
    }
}

/// What the gate looks at.
#[derive(Debug)]
pub struct ResetAsk<'a> {
    pub fence: &'a ConfirmedFence,
    pub state: &'a NovaState,
    /// How long the same picture has held.
    pub held_for: Duration,
    pub attempts: u32,
    pub max_attempts: u32,
    /// The status the server must land in (ACTIVE or SHUTOFF).
    pub expected: &'a str,
    pub microversion: Microversion,
}

/// The gate: a permit, or why not.
pub fn permit(ask: &ResetAsk<'_>) -> Result<ResetPermit, String> {
    let _proof: &ConfirmedFence = ask.fence;
    if !matches!(ask.state, NovaState::Failed { .. }) {
        return Err(format!(
            "reset-state refused: Nova does not say the last evacuation failed ({:?})",
            ask.state
        ));
    }
    if ask.held_for < RETRY_SETTLE {
        return Err(format!(
            "reset-state refused: Nova's answer held {:?}, less than {RETRY_SETTLE:?}",
            ask.held_for
        ));
    }
    if ask.attempts >= ask.max_attempts {
        return Err(format!(
            "reset-state refused: no evacuate attempt left ({} of {})",
            ask.attempts, ask.max_attempts
        ));
    }
    Ok(ResetPermit {
        to: reset_to(ask.expected, ask.microversion),
    })
}

/// What a server is reset to. `error` claims nothing, so it is the rule. But
/// Nova (2025.1, `_do_rebuild_instance`) applies an evacuation's target state
/// (`stopped` from 2.95) only to a server that is not in ERROR: a stopped
/// server reset to `error` would be started on its destination (seen in the
/// lab). So one that must land stopped, going with 2.95 or later, is reset to
/// `active`; it is on a fenced host, and the evacuation that follows at once
/// stops it there.
fn reset_to(expected: &str, microversion: Microversion) -> ResetTo {
    if expected == "SHUTOFF" && microversion >= Microversion::STOPPED_EVACUATE {
        ResetTo::Active
    } else {
        ResetTo::Error
    }
}

#[cfg(test)]
mod tests {
    use super::super::nova::ServerStatus;
    use super::*;

    #[test]
    fn only_a_settled_failure_with_attempts_left_is_reset() {
        let fence = ConfirmedFence::for_tests();
        let failed = NovaState::Failed {
            status: ServerStatus::Error,
        };
        let ask = |state: &NovaState, held: u64, attempts: u32| {
            permit(&ResetAsk {
                fence: &fence,
                state,
                held_for: Duration::from_secs(held),
                attempts,
                max_attempts: 3,
                expected: "ACTIVE",
                microversion: Microversion::new(2, 94),
            })
            .map(|p| p.to())
        };
        assert_eq!(ask(&failed, 5, 1), Ok(ResetTo::Error));
        assert!(ask(&failed, 4, 1).is_err(), "not settled");
        assert!(ask(&failed, 60, 3).is_err(), "no attempt left");
        for s in [
            NovaState::InFlight,
            NovaState::Unaccounted { nova: 0, sent: 1 },
            NovaState::Unsettled("action without migration".into()),
            NovaState::NotStarted,
            NovaState::ExtraActions { nova: 2, sent: 1 },
            NovaState::Landed {
                host: "compute3".into(),
            },
            NovaState::LandedWrong {
                host: "compute3".into(),
                status: ServerStatus::Error,
                migration: Some("failed".into()),
            },
            NovaState::Gone,
        ] {
            assert!(ask(&s, 600, 1).is_err(), "{s:?} must never be reset");
        }
    }

    #[test]
    fn stopped_servers_on_new_microversions_reset_to_active() {
        assert_eq!(
            reset_to("SHUTOFF", Microversion::new(2, 95)),
            ResetTo::Active
        );
        assert_eq!(
            reset_to("SHUTOFF", Microversion::new(2, 94)),
            ResetTo::Error
        );
        assert_eq!(reset_to("ACTIVE", Microversion::new(2, 96)), ResetTo::Error);
    }
}
