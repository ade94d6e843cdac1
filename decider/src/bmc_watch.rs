//! The BMC power witness: reads each fenced node's power state from the BMC
//! its first power-fencing level uses, slowly while nothing doubts the node
//! (`policy.bmc.poll_healthy`) and every `policy.bmc.poll_doubt` once
//! anything does (the engine's ping plan names those nodes). The BMC's
//! system UUID is read at start and every [`UUID_EVERY`], so the engine can
//! check that this BMC is the node's own before a reading counts.
//!
//! Reads go through the fencer's `power_status` and never change anything.
//! Every read has a deadline of Vigil's choosing: a BMC that does not
//! answer is `unknown`, never evidence, and never delays another node's read.

use crate::engine::{Clock, Event, PingPlan};
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::JoinSet;
use tracing::debug;
use vigil_recovery::fence::{error_chain, FenceLevel, Fencer, PowerState};
use vigil_verdict::{BmcIdentity, BmcPower, Moment, Policy};

/// How often a BMC's system UUID is read again: a board swap keeps the BMC
/// address and changes the machine behind it.
pub const UUID_EVERY: Duration = Duration::from_secs(600);

/// The longest one read may take, whatever the level's fence deadline: a
/// reading older than `bmc.fresh_for` no longer counts anyway.
const READ_TIMEOUT: Duration = Duration::from_secs(3);

/// Reads in flight at once across all BMCs: 5,000 BMCs at the healthy
/// cadence need ~30 at ~100 ms each; a slow network must not open thousands.
const MAX_IN_FLIGHT: usize = 64;

/// How often the loop looks for reads that are due.
const LOOK_EVERY: Duration = Duration::from_millis(250);

/// One node's BMC, as its fencing reaches it.
#[derive(Clone)]
pub struct BmcTarget {
    pub node: String,
    pub fencer: Arc<dyn Fencer>,
}

/// The BMC of each node: the first level that fences power (a storage fence
/// says nothing about power).
pub fn targets(levels: &BTreeMap<String, Vec<FenceLevel>>) -> Vec<BmcTarget> {
    levels
        .iter()
        .filter_map(|(node, ls)| {
            ls.iter().find(|l| !l.storage_fence).map(|l| BmcTarget {
                node: node.clone(),
                fencer: l.fencer.clone(),
            })
        })
        .collect()
}

/// One read, as the engine takes it.
#[derive(Debug)]
pub struct BmcReading {
    pub node: String,
    pub at: Moment,
    pub power: BmcPower,
    /// `None`: not read this time. `Some(Ok(None))`: this fencer cannot say.
    pub uuid: Option<Result<Option<String>, String>>,
}

#[derive(Default)]
struct TargetState {
    started: Option<Moment>,
    in_flight: bool,
    uuid_read: Option<Moment>,
}

pub async fn run(
    targets: Vec<BmcTarget>,
    policy: Arc<Policy>,
    clock: Clock,
    plan: watch::Receiver<Arc<PingPlan>>,
    events: mpsc::Sender<Event>,
    shutdown: impl Future<Output = ()>,
) {
    if targets.is_empty() {
        return;
    }
    let permits = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let mut state: Vec<TargetState> = targets.iter().map(|_| TargetState::default()).collect();
    let mut reads: JoinSet<(usize, BmcReading)> = JoinSet::new();
    let mut look = tokio::time::interval(LOOK_EVERY);
    look.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            Some(done) = reads.join_next() => {
                let Ok((i, reading)) = done else { continue };
                if let Some(s) = state.get_mut(i) {
                    s.in_flight = false;
                    if matches!(reading.uuid, Some(Ok(_))) {
                        s.uuid_read = Some(reading.at);
                    }
                }
                if events.send(Event::BmcRead(Box::new(reading))).await.is_err() {
                    return;
                }
            }
            _ = look.tick() => {
                let now = clock.now();
                let doubted = plan.borrow().doubted.clone();
                for (i, t) in targets.iter().enumerate() {
                    let s = &mut state[i];
                    let every = if doubted.contains(&t.node) {
                        policy.bmc.poll_doubt
                    } else {
                        policy.bmc.poll_healthy
                    };
                    if s.in_flight || s.started.is_some_and(|at| now.since(at) < every) {
                        continue;
                    }
                    let Ok(permit) = permits.clone().try_acquire_owned() else {
                        debug!("BMC reads: {MAX_IN_FLIGHT} in flight; the rest wait a round");
                        break;
                    };
                    s.in_flight = true;
                    s.started = Some(now);
                    let want_uuid = s.uuid_read.is_none_or(|at| now.since(at) >= UUID_EVERY);
                    let (t, clock) = (t.clone(), clock);
                    reads.spawn(async move {
                        let reading = read_one(&t, want_uuid, clock).await;
                        drop(permit);
                        (i, reading)
                    });
                }
            }
        }
    }
}

async fn read_one(t: &BmcTarget, want_uuid: bool, clock: Clock) -> BmcReading {
    let power = match tokio::time::timeout(READ_TIMEOUT, t.fencer.power_status()).await {
        Ok(Ok(PowerState::On)) => BmcPower::On,
        Ok(Ok(PowerState::Off)) => BmcPower::Off,
        Ok(Ok(PowerState::Unknown)) => {
            BmcPower::Unknown("the BMC reports a transitional or unknown state".into())
        }
        Ok(Err(e)) => BmcPower::Unknown(error_chain(&e)),
        Err(_) => BmcPower::Unknown(format!("no answer within {READ_TIMEOUT:?}")),
    };
    // Taken when the power answer came: the freshness of an `Off` counts
    // from when Vigil learned it, not from when the UUID read ends.
    let at = clock.now();
    let uuid = if want_uuid {
        Some(
            match tokio::time::timeout(READ_TIMEOUT, t.fencer.system_uuid()).await {
                Ok(Ok(u)) => Ok(u),
                Ok(Err(e)) => Err(error_chain(&e)),
                Err(_) => Err(format!("no answer within {READ_TIMEOUT:?}")),
            },
        )
    } else {
        None
    };
    BmcReading {
        node: t.node.clone(),
        at,
        power,
        uuid,
    }
}

/// Whether the BMC read for a node is the node's own: its system UUID must
/// equal the one the node's sensor reports (and the configured one, when
/// `[[node]] system_uuid` is set). Anything short of that is not evidence.
pub fn identity(
    configured: Option<&str>,
    sensor: Option<&str>,
    bmc: Option<&Result<Option<String>, String>>,
) -> BmcIdentity {
    let bmc = match bmc {
        None => return BmcIdentity::Unverified("the BMC's system UUID is not read yet".into()),
        Some(Err(e)) => {
            return BmcIdentity::Unverified(format!("reading the BMC's system UUID failed: {e}"))
        }
        Some(Ok(None)) => {
            return BmcIdentity::Unverified(
                "this fencer cannot report the machine's system UUID (Redfish and IPMI can)".into(),
            )
        }
        Some(Ok(Some(u))) => u.to_ascii_lowercase(),
    };
    if let Some(c) = configured.filter(|c| !c.eq_ignore_ascii_case(&bmc)) {
        return BmcIdentity::Mismatch(format!(
            "the BMC reports system UUID {bmc}, the config says {c}"
        ));
    }
    match sensor.filter(|s| !s.is_empty()) {
        None => BmcIdentity::Unverified(
            "the node's sensor has not reported its system UUID (an older sensor, or an unreadable /sys/class/dmi/id/product_uuid)".into(),
        ),
        Some(s) if !s.eq_ignore_ascii_case(&bmc) => BmcIdentity::Mismatch(format!(
            "the BMC reports system UUID {bmc}, the node's sensor {s}"
        )),
        Some(_) => BmcIdentity::Verified { uuid: bmc },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "5f1c0a6e-1111-4000-8000-000000000001";
    const B: &str = "5f1c0a6e-3333-4000-8000-000000000003";

    #[test]
    fn only_a_matching_bmc_and_sensor_uuid_verify() {
        let ok = |u: &str| Some(Ok(Some(u.to_string())));
        assert_eq!(
            identity(None, Some(A), ok(A).as_ref()),
            BmcIdentity::Verified { uuid: A.into() }
        );
        assert!(matches!(
            identity(None, Some(A), ok(&A.to_uppercase()).as_ref()),
            BmcIdentity::Verified { .. }
        ));
        assert!(
            matches!(identity(None, Some(A), ok(B).as_ref()), BmcIdentity::Mismatch(m) if m.contains(B) && m.contains(A))
        );
        assert!(
            matches!(identity(Some(B), Some(A), ok(A).as_ref()), BmcIdentity::Mismatch(m) if m.contains("config"))
        );
        assert!(
            matches!(identity(None, None, ok(A).as_ref()), BmcIdentity::Unverified(w) if w.contains("sensor"))
        );
        assert!(matches!(
            identity(None, Some(""), ok(A).as_ref()),
            BmcIdentity::Unverified(_)
        ));
        assert!(
            matches!(identity(None, Some(A), Some(Ok(None)).as_ref()), BmcIdentity::Unverified(w) if w.contains("cannot report"))
        );
        assert!(
            matches!(identity(None, Some(A), Some(Err("timeout".into())).as_ref()), BmcIdentity::Unverified(w) if w.contains("timeout"))
        );
        assert!(matches!(
            identity(None, Some(A), None),
            BmcIdentity::Unverified(_)
        ));
    }
}
