//! Fencing: making sure a dead node is really off before anything it ran is
//! started elsewhere (safety rule 1).
//!
//! A [`Fencer`] powers a node off and reads its power state back. Each node
//! has an ordered list of [`FenceLevel`]s (e.g. Redfish, then IPMI, then an
//! operator's script); the workflow tries them in order, each within its
//! deadline, until one is confirmed. Implementations: [`redfish`], [`ipmi`],
//! [`command`], [`fence_agent`] (any ClusterLabs fence agent).

pub mod command;
pub mod fence_agent;
pub mod ipmi;
pub mod redfish;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};

use crate::config::{FencingConfig, LevelConfig};
use crate::secret::{SecretEnv, SecretError};

/// A node's power state as its BMC (or fence script) reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PowerState {
    On,
    Off,
    /// Transitional or unreadable (Redfish `PoweringOff`, a script that said
    /// `unknown`): never counts as off.
    Unknown,
}

impl fmt::Display for PowerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PowerState::On => "on",
            PowerState::Off => "off",
            PowerState::Unknown => "unknown",
        })
    }
}

/// What a fencer said after its power-off.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FenceAck {
    /// The power state it reported with the answer, if it did.
    pub power: Option<PowerState>,
    /// A storage fence (e.g. a Ceph blocklist entry) is in place.
    pub storage_fenced: bool,
    /// Its own words, for the journal.
    pub message: String,
}

/// A fence action that failed.
#[derive(Debug, thiserror::Error)]
pub enum FenceError {
    /// The BMC could not be reached.
    #[error("{fencer}: cannot reach the BMC; check its address and network path from the decider")]
    Unreachable {
        fencer: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The BMC answered with an error.
    #[error("{fencer}: BMC refused {action}: {detail}")]
    Refused {
        fencer: String,
        action: String,
        detail: String,
    },
    /// The BMC's answer could not be understood.
    #[error("{fencer}: unexpected answer to {action}: {detail}")]
    BadAnswer {
        fencer: String,
        action: String,
        detail: String,
    },
    /// The fence program could not be run.
    #[error("{fencer}: cannot run {program}")]
    Spawn {
        fencer: String,
        program: String,
        #[source]
        source: std::io::Error,
    },
    /// The fence program ran and failed.
    #[error("{fencer}: exited with {status}: {detail}")]
    Failed {
        fencer: String,
        status: String,
        detail: String,
    },
    /// One request took longer than its timeout.
    #[error("{fencer}: {action} timed out after {after:?}")]
    Timeout {
        fencer: String,
        action: String,
        after: Duration,
    },
}

/// One way of fencing one node.
pub trait Fencer: Send + Sync {
    /// A short description for the journal and logs (kind and address, never
    /// a credential).
    fn describe(&self) -> String;
    /// Turns the node off (hard: ForceOff, `chassis power off`).
    fn power_off(&self) -> BoxFuture<'_, Result<FenceAck, FenceError>>;
    /// Reads the power state. Never changes it.
    fn power_status(&self) -> BoxFuture<'_, Result<PowerState, FenceError>>;
    /// The system UUID the BMC reports for the machine it controls
    /// (lowercase hyphenated), to check it is the node's own; `None` when
    /// this kind of fencer cannot tell.
    fn system_uuid(&self) -> BoxFuture<'_, Result<Option<String>, FenceError>> {
        Box::pin(async { Ok(None) })
    }
}

/// One level of a node's fencing: a fencer, how long it may take, and whether
/// it fences storage rather than power.
#[derive(Clone)]
pub struct FenceLevel {
    pub fencer: Arc<dyn Fencer>,
    /// Power-off plus read-back must finish within this.
    pub deadline: Duration,
    /// A storage fence: confirmed by the fencer's own answer, and enough on its
    /// own only where policy accepts it.
    pub storage_fence: bool,
}

impl fmt::Debug for FenceLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FenceLevel")
            .field("fencer", &self.fencer.describe())
            .field("deadline", &self.deadline)
            .field("storage_fence", &self.storage_fence)
            .finish()
    }
}

/// Fencing configuration that cannot be turned into fencers.
#[derive(Debug, thiserror::Error)]
pub enum FenceConfigError {
    /// No fence levels are configured for the node.
    #[error(
        "node {node} has no fence levels; add it to [recovery.fencing] before Vigil may act on it"
    )]
    NoLevels { node: String },
    /// A credential could not be read. The cause is part of the message
    /// (which file or variable, and what to do), not only a source: the
    /// decider prints this error on one line at start.
    #[error("node {node}, level {level}: credential: {cause}")]
    Secret {
        node: String,
        level: usize,
        cause: SecretError,
    },
    /// A fence-agent level is unusable as configured.
    #[error("node {node}, level {level}: {source}")]
    Agent {
        node: String,
        level: usize,
        #[source]
        source: fence_agent::AgentConfigError,
    },
    /// The HTTP client for a Redfish level could not be built.
    #[error("node {node}, level {level}: cannot build the HTTP client")]
    Http {
        node: String,
        level: usize,
        #[source]
        source: reqwest::Error,
    },
}

/// Replaces `{node}` and `{bmc}` in a configured string.
fn fill(template: &str, node: &str, bmc: Option<&str>) -> String {
    let s = template.replace("{node}", node);
    match bmc {
        Some(b) => s.replace("{bmc}", b),
        None => s,
    }
}

/// The nodes fencing is configured for, in name order.
pub fn configured_nodes(cfg: &FencingConfig) -> Vec<String> {
    let mut nodes: Vec<String> = cfg.nodes.keys().cloned().collect();
    for g in &cfg.groups {
        nodes.extend(g.nodes.keys().cloned());
    }
    nodes.sort();
    nodes.dedup();
    nodes
}

/// Builds `node`'s fence levels from config, reading their credentials now.
pub fn levels_for(
    cfg: &FencingConfig,
    node: &str,
    env: &dyn SecretEnv,
) -> Result<Vec<FenceLevel>, FenceConfigError> {
    let (levels, bmc) = if let Some(nf) = cfg.nodes.get(node) {
        (&nf.levels, nf.bmc.as_deref())
    } else if let Some(g) = cfg.groups.iter().find(|g| g.nodes.contains_key(node)) {
        (&g.levels, g.nodes.get(node).map(String::as_str))
    } else {
        return Err(FenceConfigError::NoLevels { node: node.into() });
    };
    if levels.is_empty() {
        return Err(FenceConfigError::NoLevels { node: node.into() });
    }
    let mut out = Vec::with_capacity(levels.len());
    for (i, level) in levels.iter().enumerate() {
        let secret_err = |cause| FenceConfigError::Secret {
            node: node.into(),
            level: i,
            cause,
        };
        let (fencer, storage_fence): (Arc<dyn Fencer>, bool) = match level {
            LevelConfig::Redfish(c) => {
                let password = c.password.load(env).map_err(secret_err)?;
                let f = redfish::RedfishFencer::new(redfish::RedfishTarget {
                    url: fill(&c.url, node, bmc),
                    system_id: c.system_id.as_deref().map(|s| fill(s, node, bmc)),
                    username: c.username.clone(),
                    password,
                    auth: c.auth,
                    insecure_tls: c.insecure_tls,
                    request_timeout: c.request_timeout,
                })
                .map_err(|source| FenceConfigError::Http {
                    node: node.into(),
                    level: i,
                    source,
                })?;
                (Arc::new(f), false)
            }
            LevelConfig::Ipmi(c) => {
                let password = c.password.load(env).map_err(secret_err)?;
                let f = ipmi::IpmiFencer::new(ipmi::IpmiTarget {
                    host: fill(&c.host, node, bmc),
                    port: c.port,
                    username: c.username.clone(),
                    password,
                    cipher_suite: c.cipher_suite,
                    ipmitool: c.ipmitool.clone(),
                    request_timeout: c.request_timeout,
                });
                (Arc::new(f), false)
            }
            LevelConfig::Command(c) => {
                let f = command::CommandFencer::new(command::CommandTarget {
                    node: node.into(),
                    program: c.program.clone(),
                    args: c.args.iter().map(|a| fill(a, node, bmc)).collect(),
                    timeout: c.deadline,
                });
                (Arc::new(f), c.storage_fence)
            }
            LevelConfig::FenceAgent(c) => {
                (Arc::new(fence_agent_level(c, node, bmc, i, env)?), false)
            }
        };
        out.push(FenceLevel {
            fencer,
            deadline: level.deadline(),
            storage_fence,
        });
    }
    Ok(out)
}

/// Builds a fence-agent level: the agent found, the options checked, the
/// password read, so a bad level is refused at start and by `fence-check`.
fn fence_agent_level(
    c: &crate::config::FenceAgentConfig,
    node: &str,
    bmc: Option<&str>,
    level: usize,
    env: &dyn SecretEnv,
) -> Result<fence_agent::FenceAgentFencer, FenceConfigError> {
    let agent_err = |source| FenceConfigError::Agent {
        node: node.into(),
        level,
        source,
    };
    let agent =
        fence_agent::resolve_agent(&c.agent, env.var("PATH").as_deref()).map_err(agent_err)?;
    fence_agent::check_options(&c.options).map_err(agent_err)?;
    let ip = c.ip.as_deref().map(|s| fill(s, node, bmc));
    let mut options = Vec::new();
    if let Some(ip) = &ip {
        options.push(("ip".to_string(), ip.clone()));
    }
    if let Some(port) = c.ipport {
        options.push(("ipport".to_string(), port.to_string()));
    }
    if let Some(u) = &c.username {
        options.push(("username".to_string(), u.clone()));
    }
    for (k, v) in &c.options {
        options.push((k.clone(), fill(v, node, bmc)));
    }
    // Filled values come from the config and the node name: check again.
    for (k, v) in &options {
        if v.contains(['\n', '\r']) {
            return Err(agent_err(fence_agent::AgentConfigError::BadValue {
                key: k.clone(),
            }));
        }
    }
    let password = match &c.password {
        Some(p) => Some(p.load(env).map_err(|cause| FenceConfigError::Secret {
            node: node.into(),
            level,
            cause,
        })?),
        None => None,
    };
    let address = ip.map(|ip| match c.ipport {
        Some(p) => format!("{ip}:{p}"),
        None => ip,
    });
    Ok(fence_agent::FenceAgentFencer::new(
        fence_agent::AgentTarget {
            agent,
            options,
            password,
            timeout: c.action_timeout,
            address,
        },
    ))
}

/// One row of `vigil-decider fence-check`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FenceCheckRow {
    pub node: String,
    /// Level index, 0 first.
    pub level: usize,
    pub fencer: String,
    /// The power state read, or why it could not be read.
    pub result: Result<PowerState, String>,
    /// The machine's system UUID as the level reports it, when it was asked
    /// ([`fence_check_identity`]): `Ok(None)` when this kind of fencer
    /// cannot tell or the BMC reports none, `Err` why it could not be read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_uuid: Option<Result<Option<String>, String>>,
}

/// Asks every configured BMC for its node's power state (status only, never a
/// power action), all at once. A node whose config cannot be built gets one
/// row with the config error.
pub async fn fence_check(cfg: &FencingConfig, env: &dyn SecretEnv) -> Vec<FenceCheckRow> {
    check_levels(cfg, env, false).await
}

/// [`fence_check`], and each level that answered is also asked for the
/// machine's system UUID, so the caller can check it is the node's own.
pub async fn fence_check_identity(cfg: &FencingConfig, env: &dyn SecretEnv) -> Vec<FenceCheckRow> {
    check_levels(cfg, env, true).await
}

async fn check_levels(
    cfg: &FencingConfig,
    env: &dyn SecretEnv,
    with_uuid: bool,
) -> Vec<FenceCheckRow> {
    let mut rows = Vec::new();
    let mut checks = Vec::new();
    for node in configured_nodes(cfg) {
        match levels_for(cfg, &node, env) {
            Ok(levels) => {
                for (i, level) in levels.into_iter().enumerate() {
                    let node = node.clone();
                    checks.push(async move {
                        let fencer = level.fencer.describe();
                        // Each read is bounded by the level deadline.
                        let result =
                            match tokio::time::timeout(level.deadline, level.fencer.power_status())
                                .await
                            {
                                Ok(Ok(p)) => Ok(p),
                                Ok(Err(e)) => Err(error_chain(&e)),
                                Err(_) => Err(format!("no answer within {:?}", level.deadline)),
                            };
                        // After the power read, not beside it: some BMCs
                        // allow few sessions at once. A BMC that did not
                        // answer that read is not waited for twice.
                        let system_uuid = match (with_uuid, &result) {
                            (false, _) => None,
                            (true, Err(_)) => {
                                Some(Err("not read: the power read failed".to_string()))
                            }
                            (true, Ok(_)) => Some(
                                match tokio::time::timeout(
                                    level.deadline,
                                    level.fencer.system_uuid(),
                                )
                                .await
                                {
                                    Ok(Ok(u)) => Ok(u),
                                    Ok(Err(e)) => Err(error_chain(&e)),
                                    Err(_) => Err(format!("no answer within {:?}", level.deadline)),
                                },
                            ),
                        };
                        FenceCheckRow {
                            node,
                            level: i,
                            fencer,
                            result,
                            system_uuid,
                        }
                    });
                }
            }
            Err(e) => rows.push(FenceCheckRow {
                node,
                level: 0,
                fencer: "-".into(),
                result: Err(error_chain(&e)),
                system_uuid: None,
            }),
        }
    }
    rows.extend(futures::future::join_all(checks).await);
    rows.sort_by(|a, b| (&a.node, a.level).cmp(&(&b.node, b.level)));
    rows
}

/// An error and its causes on one line, for the journal and the CLI.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
