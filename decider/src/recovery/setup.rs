//! `[recovery]` → the parts the driver runs with: fence levels per node (with
//! their credentials read now, so a missing one stops the decider at start,
//! not in the middle of a fence), the journal, the notifiers, the clock and
//! how to reach Nova.

use crate::config::Config;
use crate::recovery::nova::{LazyNova, NovaConnect, NovaEdge};
use crate::witness::Prober;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;
use tracing::warn;
use vigil_recovery::config::RecoveryConfig;
use vigil_recovery::fence::{configured_nodes, levels_for, FenceConfigError, FenceLevel};
use vigil_recovery::journal::sqlite::SqliteJournal;
use vigil_recovery::journal::{Journal, JournalError};
use vigil_recovery::notify::{notifiers_from_config, Notifier, NotifyConfigError};
use vigil_recovery::secret::SecretEnv;
use vigil_recovery::time::{Clock, SystemClock};
use vigil_recovery::workflow::Mode;
use vigil_verdict::policy::StormPolicy;

/// Everything the recovery driver needs besides the engine.
#[derive(Clone)]
pub struct RecoveryParts {
    pub config: RecoveryConfig,
    /// Mode of new incidents (a resumed one keeps its own).
    pub mode: Mode,
    /// Fence levels by node; a node without any cannot be fenced, so its
    /// incidents stop in `needs-attention` before any evacuation.
    pub levels: BTreeMap<String, Vec<FenceLevel>>,
    pub notifiers: Vec<Arc<dyn Notifier>>,
    pub journal: Arc<dyn Journal>,
    pub clock: Arc<dyn Clock>,
    pub nova: Arc<LazyNova>,
    /// For the self-check's reference pings (`None` with pings off).
    pub prober: Option<Arc<dyn Prober>>,
    pub reference_addresses: Vec<IpAddr>,
    pub probe_timeout: Duration,
    /// The self-check's Nova call is abandoned after this.
    pub nova_timeout: Duration,
    /// `[cluster]`: only the leader acts, the journal is in etcd, and the
    /// other deciders' views can veto a fence.
    pub cluster: Option<crate::cluster::ClusterParts>,
}

/// `[recovery]` that cannot be turned into working parts.
#[derive(Debug, Error)]
pub enum SetupError {
    #[error("recovery.fencing: {0}")]
    Fence(#[from] FenceConfigError),
    #[error("recovery.notify: {0}")]
    Notify(#[from] NotifyConfigError),
    #[error("recovery.journal.path {path}: cannot create its directory: {source}")]
    JournalDir {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("recovery.journal.path: {0}")]
    Journal(#[from] JournalError),
}

impl RecoveryParts {
    /// Builds the parts from the decider's config. `dry_run` (the
    /// `serve --dry-run` flag) makes every new incident a dry run on top of
    /// `recovery.dry_run`.
    pub fn from_config(
        cfg: &Config,
        recovery: &RecoveryConfig,
        dry_run: bool,
        env: &dyn SecretEnv,
        connect: NovaConnect,
        prober: Option<Arc<dyn Prober>>,
        cluster: Option<crate::cluster::ClusterParts>,
    ) -> Result<RecoveryParts, SetupError> {
        let (levels, notifiers) = fencers_and_notifiers(recovery, env)?;
        for n in &cfg.nodes {
            if !levels.contains_key(&n.name) {
                warn!(node = %n.name, "no fence levels configured: if this node dies, its incident stops in needs-attention before any evacuation (add it to [recovery.fencing])");
            }
        }
        if notifiers.is_empty() {
            warn!("no notifier configured ([recovery.notify] webhook or email): nobody is paged when recovery needs a person");
        }
        let journal: Arc<dyn Journal> = match &cluster {
            // Every write conditioned on this decider's term.
            Some(c) => c.journal(),
            None => {
                let path = &recovery.journal.path;
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir).map_err(|source| SetupError::JournalDir {
                        path: path.display().to_string(),
                        source,
                    })?;
                }
                Arc::new(SqliteJournal::open(path)?)
            }
        };
        Ok(RecoveryParts {
            config: with_policy_storm_guard(recovery, &cfg.policy.storm),
            mode: if dry_run || recovery.dry_run {
                Mode::DryRun
            } else {
                Mode::Live
            },
            levels,
            notifiers,
            journal,
            clock: Arc::new(SystemClock),
            nova: Arc::new(LazyNova::new(connect)),
            prober,
            reference_addresses: if cfg.ping.enabled {
                cfg.ping.reference_addresses.clone()
            } else {
                Vec::new()
            },
            probe_timeout: cfg.ping.timeout,
            nova_timeout: cfg.nova.request_timeout,
            cluster,
        })
    }
}

/// Reads every credential `[recovery]` names (BMC passwords, webhook and
/// SMTP secrets) without opening the journal: what `serve --check` runs so
/// that it refuses whatever `serve` would.
pub fn check(recovery: &RecoveryConfig, env: &dyn SecretEnv) -> Result<(), SetupError> {
    fencers_and_notifiers(recovery, env).map(drop)
}

type Fencers = BTreeMap<String, Vec<FenceLevel>>;

fn fencers_and_notifiers(
    recovery: &RecoveryConfig,
    env: &dyn SecretEnv,
) -> Result<(Fencers, Vec<Arc<dyn Notifier>>), SetupError> {
    let mut levels = BTreeMap::new();
    for node in configured_nodes(&recovery.fencing) {
        let l = levels_for(&recovery.fencing, &node, env)?;
        levels.insert(node, l);
    }
    Ok((levels, notifiers_from_config(&recovery.notify, env)?))
}

/// Recovery's storm guard takes its numbers from `[policy.storm]`: one guard
/// configured in one place, so the engine's hold and recovery's refusal can
/// never disagree about how many nodes is a storm.
pub fn with_policy_storm_guard(recovery: &RecoveryConfig, storm: &StormPolicy) -> RecoveryConfig {
    let mut r = recovery.clone();
    r.guards.storm_max_dead = usize::try_from(storm.max_dead).unwrap_or(usize::MAX);
    r.guards.storm_max_share = storm.max_share;
    r.guards.storm_window = storm.window;
    r
}

/// How the real decider reaches Nova for recovery: a `NovaClient` of its own
/// (with the client's bounded retries, unlike the poller's single try) from
/// the same credentials, wrapped in [`NovaEdge`].
pub fn nova_connect(cfg: &crate::config::NovaConfig) -> NovaConnect {
    let cfg = cfg.clone();
    Arc::new(move || {
        let cfg = cfg.clone();
        Box::pin(async move {
            let vars = std::env::vars_os()
                .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
                .collect();
            let client =
                crate::nova_adapter::recovery_client(&cfg, vars).map_err(|e| format!("{e:#}"))?;
            let edge = NovaEdge::new(Arc::new(client))
                .await
                .map_err(|e| format!("reading Nova's microversions: {e}"))?;
            Ok(Arc::new(edge) as Arc<dyn vigil_recovery::workflow::NovaActions>)
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example config set `[policy.storm] max_dead = 3` and
    /// `[recovery.guards] storm_max_dead = 2`: two guards, two numbers.
    #[test]
    fn recovery_storm_guard_takes_the_policys_numbers() {
        let text = include_str!("../../decider.example.toml");
        let mut cfg = Config::parse(text, std::path::Path::new("example")).expect("parses");
        cfg.policy.storm.max_dead = 5;
        cfg.policy.storm.max_share = 0.25;
        cfg.policy.storm.window = Duration::from_secs(42);
        let r =
            with_policy_storm_guard(cfg.recovery.as_ref().expect("recovery"), &cfg.policy.storm);
        assert_eq!(r.guards.storm_max_dead, 5);
        assert_eq!(r.guards.storm_max_share, 0.25);
        assert_eq!(r.guards.storm_window, Duration::from_secs(42));
        let e = Config::parse(
            "[recovery.guards]\nstorm_max_dead = 2\n",
            std::path::Path::new("d.toml"),
        )
        .expect_err("a second place for the storm numbers is refused");
        assert!(e.to_string().contains("storm_max_dead"), "{e}");
    }
}
