//! Guards that decide whether a `dead` verdict may start a recovery at all:
//! the storm guard (safety rule 6), one open incident per node, and a per-node
//! cooldown. The self-check (the decider's own view of the world is sound)
//! runs inside the workflow, before its first action.

use std::collections::{BTreeMap, BTreeSet};

use futures::future::BoxFuture;

use crate::config::GuardConfig;
use crate::journal::{IncidentStatus, Journal, JournalError};
use crate::time::Timestamp;

/// The decider's check of itself before acting: Nova answers, the reference
/// addresses answer. `Err` says what failed.
pub trait SelfCheck: Send + Sync {
    fn check(&self) -> BoxFuture<'_, Result<(), String>>;
}

/// Whether a recovery may start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Admission {
    Admit,
    /// Do nothing for this node now. `page` is true the first time a storm
    /// refuses it, so a storm pages once per node, not every tick.
    Refuse {
        reason: String,
        page: bool,
    },
}

/// Guard state across verdicts; one per decider.
#[derive(Debug)]
pub struct Guards {
    cfg: GuardConfig,
    /// Node → when it was last reported dead (within the window).
    dead: BTreeMap<String, Timestamp>,
    /// Nodes already refused (and paged) in the current storm.
    storm_refused: BTreeSet<String>,
}

impl Guards {
    pub fn new(cfg: GuardConfig) -> Self {
        Guards {
            cfg,
            dead: BTreeMap::new(),
            storm_refused: BTreeSet::new(),
        }
    }

    /// Called each time `node`'s verdict is `dead`; `known_nodes` is how many
    /// compute nodes the decider knows.
    pub async fn admit(
        &mut self,
        journal: &dyn Journal,
        node: &str,
        known_nodes: usize,
        now: Timestamp,
    ) -> Result<Admission, JournalError> {
        let window_start =
            Timestamp(now.0.saturating_sub(
                i64::try_from(self.cfg.storm_window.as_millis()).unwrap_or(i64::MAX),
            ));
        self.dead.retain(|_, at| *at >= window_start);
        self.dead.insert(node.to_string(), now);
        let dead = self.dead.len();
        let share = dead as f64 / known_nodes.max(1) as f64;
        // Safety rule 6: many nodes dead at once is more likely a problem on
        // our side (network, Nova) than theirs: act on none.
        if dead > self.cfg.storm_max_dead || share > self.cfg.storm_max_share {
            let first = self.storm_refused.insert(node.to_string());
            let names: Vec<&str> = self.dead.keys().map(String::as_str).collect();
            return Ok(Admission::Refuse {
                reason: format!(
                    "storm guard: {dead} of {known_nodes} nodes dead within {} ({}), limits {} nodes / {:.0}%; acting on none, check the network and Nova",
                    humantime::format_duration(self.cfg.storm_window),
                    names.join(", "),
                    self.cfg.storm_max_dead,
                    self.cfg.storm_max_share * 100.0
                ),
                page: first,
            });
        }
        self.storm_refused.clear();
        if let Some(last) = journal.latest_for_node(node).await? {
            if last.status.is_open() {
                return Ok(Admission::Refuse {
                    reason: format!("incident {} is already open for {node}", last.id),
                    page: false,
                });
            }
            // Cooldown counts from incidents that acted; an aborted or
            // dry-run one did nothing to the node.
            let acted = matches!(
                last.status,
                IncidentStatus::Completed | IncidentStatus::Resolved
            );
            if let (true, Some(closed)) = (acted, last.closed_at) {
                let until = closed.plus(self.cfg.cooldown);
                if now < until {
                    return Ok(Admission::Refuse {
                        reason: format!("{node} is in cooldown until {until} after incident {}; a node that dies again this soon needs a person", last.id),
                        page: false,
                    });
                }
            }
        }
        Ok(Admission::Admit)
    }

    /// Forgets a node that is no longer dead (its verdict changed).
    pub fn node_alive(&mut self, node: &str) {
        self.dead.remove(node);
        self.storm_refused.remove(node);
    }
}
