//! Liveness and readiness as the decider sees them from inside: the engine's
//! own tick (not the runtime's: a stuck engine thread on an idle runtime
//! must read as dead), Nova's recent polls, the journal's directory, the
//! BMCs' power reads. `/healthz`, `/readyz` and the gRPC health service all
//! read this one state, so they never disagree.

use serde::Serialize;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The engine is alive while its latest tick is at most this old. Ticks
/// come every `engine.tick` (250 ms by default); a tick that takes seconds
/// is already an engine in trouble, ten is one that is stuck.
pub const ALIVE_WITHIN: Duration = Duration::from_secs(10);
/// Nova is reachable while one of its latest this-many polls answered: one
/// failed poll is a blip (a Keystone restart), five in a row (5 s at the
/// default 1 s `nova.poll_interval`) an outage worth reporting.
pub const NOVA_POLLS: usize = 5;

/// One check's latest result, as the probe that runs it left it.
#[derive(Debug, Clone)]
struct Probed {
    ok: bool,
    detail: String,
}

/// What the health endpoints read. Writers: the engine (ticks), the Nova
/// poller (poll results), [`crate::health_probe`] (journal, BMCs).
#[derive(Debug)]
pub struct Health {
    started: Instant,
    /// Milliseconds from `started` to the latest tick, plus one (0: never).
    last_tick: AtomicU64,
    /// `Some` once Nova is polled at all (`serve` with Nova on).
    nova: Mutex<Option<VecDeque<Result<(), String>>>>,
    journal: Mutex<Option<Option<Probed>>>,
    bmcs: Mutex<Option<Option<Probed>>>,
    /// `[cluster]`: a leader known (this decider or another).
    cluster: Mutex<Option<Option<Probed>>>,
}

impl Default for Health {
    fn default() -> Self {
        Health {
            started: Instant::now(),
            last_tick: AtomicU64::new(0),
            nova: Mutex::new(None),
            journal: Mutex::new(None),
            bmcs: Mutex::new(None),
            cluster: Mutex::new(None),
        }
    }
}

/// One named check in a health answer.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Check {
    pub name: &'static str,
    pub ok: bool,
    /// What was seen, and for a failing check what to look at.
    pub detail: String,
}

/// A `/healthz` or `/readyz` body.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Report {
    pub status: &'static str,
    pub checks: Vec<Check>,
}

impl Report {
    fn of(checks: Vec<Check>) -> Report {
        let ok = checks.iter().all(|c| c.ok);
        Report {
            status: if ok { "ok" } else { "failing" },
            checks,
        }
    }

    pub fn ok(&self) -> bool {
        self.status == "ok"
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A writer that panicked left a whole value behind: still readable.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Health {
    /// The engine finished a tick.
    pub fn engine_ticked(&self) {
        let ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_tick
            .store(ms.saturating_add(1), Ordering::Relaxed);
    }

    /// A Nova `os-services` poll ended (`Err`: why it failed).
    pub fn nova_polled(&self, result: Result<(), String>) {
        let mut g = lock(&self.nova);
        let polls = g.get_or_insert_with(VecDeque::new);
        if polls.len() >= NOVA_POLLS {
            polls.pop_front();
        }
        polls.push_back(result);
    }

    /// Readiness waits on Nova polls from now on (`serve` with Nova on).
    pub fn expect_nova(&self) {
        lock(&self.nova).get_or_insert_with(VecDeque::new);
    }

    /// Readiness waits on the journal and BMC probes from now on.
    pub fn expect_recovery(&self, bmcs: bool) {
        lock(&self.journal).get_or_insert(None);
        if bmcs {
            lock(&self.bmcs).get_or_insert(None);
        }
    }

    pub fn journal_probed(&self, result: Result<String, String>) {
        *lock(&self.journal) = Some(Some(probed(result)));
    }

    pub fn bmcs_probed(&self, result: Result<String, String>) {
        *lock(&self.bmcs) = Some(Some(probed(result)));
    }

    /// Readiness waits on a known leader from now on (`[cluster]`).
    pub fn expect_cluster(&self) {
        lock(&self.cluster).get_or_insert(None);
    }

    /// Who leads, as last seen (`Err`: nobody known, and why).
    pub fn cluster_seen(&self, result: Result<String, String>) {
        *lock(&self.cluster) = Some(Some(probed(result)));
    }

    fn engine_check(&self) -> Check {
        let last = self.last_tick.load(Ordering::Relaxed);
        let (ok, detail) = match last.checked_sub(1) {
            None => (
                false,
                "the engine has not ticked yet (starting, or its thread is stuck)".to_string(),
            ),
            Some(ms) => {
                let now = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
                let age = Duration::from_millis(now.saturating_sub(ms));
                if age <= ALIVE_WITHIN {
                    (true, format!("ticked {} ms ago", age.as_millis()))
                } else {
                    (
                        false,
                        format!(
                            "the engine last ticked {} s ago (limit {} s): its thread is stuck or starved; restart the decider and report it",
                            age.as_secs(),
                            ALIVE_WITHIN.as_secs()
                        ),
                    )
                }
            }
        };
        Check {
            name: "engine",
            ok,
            detail,
        }
    }

    /// `/healthz`: the process is alive when its engine ticks.
    pub fn liveness(&self) -> Report {
        Report::of(vec![self.engine_check()])
    }

    /// `/readyz` and gRPC health: alive, and every witness and tool the
    /// decider acts with answers.
    pub fn readiness(&self) -> Report {
        let mut checks = vec![self.engine_check()];
        if let Some(polls) = lock(&self.nova).as_ref() {
            let answered = polls.iter().any(|r| r.is_ok());
            let detail = match (answered, polls.back()) {
                (_, None) => "Nova has not been polled yet".to_string(),
                (true, Some(Ok(()))) => "the latest os-services poll answered".to_string(),
                (true, Some(Err(e))) => format!(
                    "the latest os-services poll failed ({e}), an earlier one of the last {NOVA_POLLS} answered"
                ),
                (false, Some(Err(e))) => format!(
                    "none of the last {} os-services poll(s) answered; latest: {e}",
                    polls.len()
                ),
                (false, Some(Ok(()))) => unreachable!("an Ok poll counts as answered"),
            };
            checks.push(Check {
                name: "nova",
                ok: answered,
                detail,
            });
        }
        for (name, slot, what) in [
            ("journal", &self.journal, "the journal's directory"),
            ("bmcs", &self.bmcs, "the BMCs"),
            ("leader", &self.cluster, "the cluster's leader"),
        ] {
            if let Some(state) = lock(slot).as_ref() {
                checks.push(match state {
                    None => Check {
                        name,
                        ok: false,
                        detail: format!("{what} not checked yet"),
                    },
                    Some(p) => Check {
                        name,
                        ok: p.ok,
                        detail: p.detail.clone(),
                    },
                });
            }
        }
        Report::of(checks)
    }
}

fn probed(result: Result<String, String>) -> Probed {
    match result {
        Ok(detail) => Probed { ok: true, detail },
        Err(detail) => Probed { ok: false, detail },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check<'a>(r: &'a Report, name: &str) -> &'a Check {
        r.checks
            .iter()
            .find(|c| c.name == name)
            .unwrap_or_else(|| panic!("no {name} check in {r:?}"))
    }

    #[test]
    fn not_alive_before_the_first_tick_and_alive_after() {
        let h = Health::default();
        assert!(!h.liveness().ok());
        h.engine_ticked();
        assert!(h.liveness().ok(), "{:?}", h.liveness());
    }

    #[test]
    fn nova_is_ready_while_one_of_the_last_polls_answered() {
        let h = Health::default();
        h.engine_ticked();
        h.expect_nova();
        assert!(!h.readiness().ok(), "not polled yet");
        h.nova_polled(Err("refused".into()));
        let r = h.readiness();
        assert!(!r.ok());
        assert!(check(&r, "nova").detail.contains("refused"), "{r:?}");
        h.nova_polled(Ok(()));
        assert!(h.readiness().ok());
        for _ in 0..NOVA_POLLS - 1 {
            h.nova_polled(Err("refused".into()));
            assert!(h.readiness().ok(), "one answer in the window is enough");
        }
        h.nova_polled(Err("refused".into()));
        assert!(!h.readiness().ok(), "{NOVA_POLLS} failures in a row");
    }

    #[test]
    fn recovery_checks_fail_until_probed_and_name_why() {
        let h = Health::default();
        h.engine_ticked();
        h.expect_recovery(true);
        let r = h.readiness();
        assert!(!check(&r, "journal").ok && !check(&r, "bmcs").ok, "{r:?}");
        h.journal_probed(Ok("writable".into()));
        h.bmcs_probed(Err("compute1 level 0: no answer".into()));
        let r = h.readiness();
        assert!(check(&r, "journal").ok);
        assert_eq!(check(&r, "bmcs").detail, "compute1 level 0: no answer");
        assert!(!r.ok());
    }
}
