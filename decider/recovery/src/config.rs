//! The recovery configuration: one serde tree, unknown keys rejected, every
//! default chosen by the safety rules of PRODUCT.md and commented where set.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::secret::SecretSource;
use crate::time::duration_text;
use crate::workflow::Microversion;

/// Everything recovery needs to know, as the `[recovery]` table of the
/// decider's config.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RecoveryConfig {
    pub fencing: FencingConfig,
    pub evacuation: EvacuationPolicy,
    pub guards: GuardConfig,
    pub notify: NotifyConfig,
    pub journal: JournalConfig,
    /// Re-enable a recovered node's service (and clear `forced_down`) once its
    /// evacuation has completed. Default `false`: a node that died once should
    /// be looked at by a person before it takes instances again.
    pub reenable_after_recovery: bool,
    /// Run every new incident as a dry run: the whole workflow runs and
    /// journals each call it would make, and makes none (safety rule 8).
    /// `vigil-decider serve --dry-run` sets it too. Default `false`.
    pub dry_run: bool,
}

/// How nodes are fenced.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FencingConfig {
    /// Fence levels per node name (as Nova names the host).
    pub nodes: BTreeMap<String, NodeFencing>,
    /// Fence levels shared by a group of nodes, each with its own BMC address.
    pub groups: Vec<GroupFencing>,
    /// Whether a storage fence (e.g. `ceph osd blocklist add` through the
    /// command fencer) confirmed on its own is enough to evacuate. Default
    /// `false`: safety rule 1 asks for the power read back as off; a storage
    /// fence alone stops disk writes but not a still-running guest's network.
    pub accept_storage_fence_alone: bool,
    /// How often the power state is read back after a power-off. Default 1 s:
    /// BMCs answer in tens of milliseconds and ForceOff is immediate, so the
    /// confirmation usually lands on the first or second read.
    #[serde(with = "duration_text")]
    pub confirm_poll_interval: Duration,
}

impl Default for FencingConfig {
    fn default() -> Self {
        FencingConfig {
            nodes: BTreeMap::new(),
            groups: Vec::new(),
            accept_storage_fence_alone: false,
            confirm_poll_interval: Duration::from_secs(1),
        }
    }
}

/// One node's fence levels. `{node}` and `{bmc}` in URLs, hosts and command
/// arguments are replaced by the node name and `bmc`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeFencing {
    #[serde(default)]
    pub bmc: Option<String>,
    /// Tried in order until one confirms the node is off.
    pub levels: Vec<LevelConfig>,
}

/// Fence levels for several nodes that differ only by BMC address.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupFencing {
    pub name: String,
    /// Node name → BMC address (substituted for `{bmc}`).
    pub nodes: BTreeMap<String, String>,
    pub levels: Vec<LevelConfig>,
}

/// One fence level.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum LevelConfig {
    Redfish(RedfishConfig),
    Ipmi(IpmiConfig),
    Command(CommandConfig),
    /// A ClusterLabs fence agent (`kind = "fence_agent"`; `"fence-agent"` is
    /// accepted too, the name Pacemaker users know).
    #[serde(alias = "fence-agent")]
    FenceAgent(FenceAgentConfig),
}

impl LevelConfig {
    pub fn deadline(&self) -> Duration {
        match self {
            LevelConfig::Redfish(c) => c.deadline,
            LevelConfig::Ipmi(c) => c.deadline,
            LevelConfig::Command(c) => c.deadline,
            LevelConfig::FenceAgent(c) => c.deadline,
        }
    }
}

fn default_level_deadline() -> Duration {
    // 60 s: a BMC that has not powered the node off and said so within a
    // minute is not going to; the next level (or a person) must take over.
    Duration::from_secs(60)
}

fn default_request_timeout() -> Duration {
    // One BMC HTTP request; BMCs are slow but not this slow.
    Duration::from_secs(10)
}

/// How to log in to a Redfish service.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RedfishAuth {
    /// HTTP basic auth on every request. Default: every Redfish service we
    /// know accepts it, and it needs no session clean-up.
    #[default]
    Basic,
    /// A `SessionService` session (`X-Auth-Token`), for BMCs that refuse basic.
    Session,
}

/// A Redfish BMC.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedfishConfig {
    /// Service root, e.g. `https://{bmc}` (the `/redfish/v1` part is added).
    pub url: String,
    /// `ComputerSystem` id; the first member of `/redfish/v1/Systems` when absent.
    #[serde(default)]
    pub system_id: Option<String>,
    pub username: String,
    pub password: SecretSource,
    #[serde(default)]
    pub auth: RedfishAuth,
    /// Accept a self-signed BMC certificate. Default `false`; BMCs commonly
    /// ship self-signed ones, so operators may need to opt in per level.
    #[serde(default)]
    pub insecure_tls: bool,
    #[serde(default = "default_level_deadline", with = "duration_text")]
    pub deadline: Duration,
    #[serde(default = "default_request_timeout", with = "duration_text")]
    pub request_timeout: Duration,
}

/// An IPMI BMC, driven through `ipmitool -I lanplus`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IpmiConfig {
    pub host: String,
    #[serde(default = "default_ipmi_port")]
    pub port: u16,
    pub username: String,
    /// Passed to ipmitool in `IPMI_PASSWORD` (`-E`), never on its command line.
    pub password: SecretSource,
    /// `-C`: cipher suite. Unset, ipmitool first asks the BMC for its suites;
    /// BMCs that do not answer that (OpenIPMI's `ipmi_sim` among them) cost
    /// 10 s per call, so set 3 (or 17) for them: a fence deadline is short.
    #[serde(default)]
    pub cipher_suite: Option<u8>,
    /// The ipmitool binary.
    #[serde(default = "default_ipmitool")]
    pub ipmitool: PathBuf,
    #[serde(default = "default_level_deadline", with = "duration_text")]
    pub deadline: Duration,
    #[serde(default = "default_request_timeout", with = "duration_text")]
    pub request_timeout: Duration,
}

fn default_ipmi_port() -> u16 {
    623
}

fn default_ipmitool() -> PathBuf {
    PathBuf::from("ipmitool")
}

/// An operator's fence script. It gets `args` and a JSON document on stdin
/// (`{"action": "off"|"status", "node": …}`); exit status 0 means done, and
/// its last stdout line says the power state (`off`, `on`, `unknown`) or is a
/// JSON object `{"power": …, "storage_fenced": bool, "message": …}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandConfig {
    pub program: PathBuf,
    #[serde(default)]
    pub args: Vec<String>,
    /// This level fences storage (e.g. a Ceph blocklist), not power.
    #[serde(default)]
    pub storage_fence: bool,
    #[serde(default = "default_command_deadline", with = "duration_text")]
    pub deadline: Duration,
}

fn default_command_deadline() -> Duration {
    // Scripts may talk to a PDU or a storage cluster; give them two minutes.
    Duration::from_secs(120)
}

/// A ClusterLabs fence agent (Debian `fence-agents`: `fence_redfish`,
/// `fence_ipmilan`, `fence_ilo*`, `fence_idrac`, …) run with the fence-agents
/// stdin protocol: `key=value` lines, `action=off|status`. Power is read back
/// with `action=status` (exit 0 and `Status: ON`, exit 2 and `Status: OFF`;
/// anything else is an error, never "off").
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FenceAgentConfig {
    /// The agent: a name (looked up in /usr/sbin, /sbin, then PATH) or a path.
    pub agent: PathBuf,
    /// `ip=`: the device's address (`{node}` and `{bmc}` are filled in).
    #[serde(default)]
    pub ip: Option<String>,
    /// `ipport=`, when the device is not on the agent's default port.
    #[serde(default)]
    pub ipport: Option<u16>,
    /// `username=`.
    #[serde(default)]
    pub username: Option<String>,
    /// `password=`, written to the agent's stdin only: never on a command
    /// line, in a log line or in the journal.
    #[serde(default)]
    pub password: Option<SecretSource>,
    /// Any other agent parameter (`ssl_insecure = "1"`, `lanplus = "1"`,
    /// `systems_uri = "/redfish/v1/Systems/{node}"`, `password_script`, …),
    /// as listed by `fence_X -o metadata`. The keys above, `action`, and the
    /// debug/verbose keys (they would print the password) are refused.
    #[serde(default)]
    pub options: BTreeMap<String, String>,
    #[serde(default = "default_level_deadline", with = "duration_text")]
    pub deadline: Duration,
    /// One agent run (`off` or `status`). Default 40 s: an agent's `off`
    /// waits for the device to report off itself (`power_timeout`, 20 s by
    /// default) after logging in; the child is killed after it.
    #[serde(default = "default_agent_timeout", with = "duration_text")]
    pub action_timeout: Duration,
}

fn default_agent_timeout() -> Duration {
    Duration::from_secs(40)
}

/// What happens to SHUTOFF servers on a dead node.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ShutoffPolicy {
    /// Leave them. Default: they are not running, so nothing is down, and
    /// recovery does the least it must.
    #[default]
    Skip,
    /// Evacuate them so they can be started elsewhere; they land stopped.
    Evacuate,
}

/// Whether instances must opt in to evacuation or may opt out.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OptMode {
    /// Evacuate unless marked `false`. Default: an instance left on a dead node
    /// is down until a person acts, which is what Vigil exists to prevent.
    #[default]
    OptOut,
    /// Evacuate only instances marked `true`.
    OptIn,
}

/// Where evacuated instances go.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DestinationPolicy {
    /// Nova's scheduler picks. Default: it knows capacity and affinity.
    #[default]
    Scheduler,
    /// The node's reserved spare host.
    Reserved,
    /// Vigil names a different healthy host for each instance in turn, so
    /// Nova's per-destination claim lock does not serialize them all.
    Spread,
}

/// A reserved spare host.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReservedSpare {
    /// The spare's host name in Nova (its service is normally disabled).
    pub host: String,
    /// Nodes it stands in for; empty means every node.
    #[serde(default)]
    pub for_nodes: Vec<String>,
    /// Add the spare to the failed host's aggregates before evacuating, so
    /// instances whose flavors pin an aggregate can land there.
    #[serde(default)]
    pub join_aggregates: bool,
}

/// How instances are chosen and evacuated.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EvacuationPolicy {
    pub shutoff: ShutoffPolicy,
    pub opt: OptMode,
    /// Key looked up in instance metadata, then flavor extra specs, then image
    /// properties; value `true` or `false`.
    pub opt_key: String,
    /// Key (same places) holding an integer priority; higher goes first.
    pub priority_key: String,
    /// Evacuations in flight at once. Default 4: Nova serializes claims per
    /// destination (~1.6 s each in the lab), so more only queues in Nova
    /// while making the API and conductor busier.
    pub concurrency: usize,
    /// Evacuate calls per instance, the first included. Default 3: the seed's
    /// operators saw large instances fail once and pass after reset-state.
    pub max_attempts: u32,
    /// How long one instance may take from its evacuate call to ACTIVE (or
    /// SHUTOFF) elsewhere. Default 5 min; in the lab one takes 10–15 s.
    #[serde(with = "duration_text")]
    pub verify_deadline: Duration,
    /// How often a moving instance is polled. Default 2 s.
    #[serde(with = "duration_text")]
    pub poll_interval: Duration,
    /// How long a landed instance must stay as it must be (same host and
    /// status, no task, its migration done, Nova's record unchanged) before it
    /// counts as recovered. A queued second evacuation once showed a short
    /// ACTIVE between two rebuilds (issue 17). Default 5 s.
    #[serde(with = "duration_text")]
    pub verify_settle: Duration,
    pub destination: DestinationPolicy,
    /// Microversion for servers that must come back running; capped at 2.94
    /// because from 2.95 Nova leaves evacuated servers stopped.
    pub run_microversion: Microversion,
    /// Microversion for servers that were stopped, when the cloud has it.
    pub stopped_microversion: Microversion,
    pub reserved: Vec<ReservedSpare>,
}

impl Default for EvacuationPolicy {
    fn default() -> Self {
        EvacuationPolicy {
            shutoff: ShutoffPolicy::Skip,
            opt: OptMode::OptOut,
            opt_key: "vigil:evacuate".into(),
            priority_key: "vigil:priority".into(),
            concurrency: 4,
            max_attempts: 3,
            verify_deadline: Duration::from_secs(300),
            poll_interval: Duration::from_secs(2),
            verify_settle: Duration::from_secs(5),
            destination: DestinationPolicy::Scheduler,
            run_microversion: Microversion::LAST_RUNNING_EVACUATE,
            stopped_microversion: Microversion::STOPPED_EVACUATE,
            reserved: Vec::new(),
        }
    }
}

/// Guards that stop recovery from making things worse (safety rule 6 and the
/// one-incident-per-node rule).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GuardConfig {
    /// Act on none when more than this many nodes went dead within `window`.
    /// Not read from `[recovery.guards]`: the decider sets the three storm
    /// numbers from `[policy.storm]`, so there is one storm guard with one
    /// configuration (the engine's hold and this refusal agree).
    #[serde(skip)]
    pub storm_max_dead: usize,
    /// Act on none when more than this share of known nodes went dead within
    /// `window` (from `[policy.storm] max_share`).
    #[serde(skip)]
    pub storm_max_share: f64,
    /// From `[policy.storm] window`.
    #[serde(skip)]
    pub storm_window: Duration,
    /// No new incident for a node this soon after its last one closed.
    /// Default 30 min: a node that flaps needs a person, not a second fence.
    #[serde(with = "duration_text")]
    pub cooldown: Duration,
    /// A node still dead after its incident was refused before any action
    /// (self-check failed, Nova unreadable) is tried again after this. Default
    /// 1 min: the decider's own blind spot is often brief, and each refusal
    /// is journaled (and, for a failed self-check, paged).
    #[serde(with = "duration_text")]
    pub retry_after_abort: Duration,
}

impl Default for GuardConfig {
    fn default() -> Self {
        GuardConfig {
            // `[policy.storm]`'s defaults; the decider overwrites them.
            storm_max_dead: 3,
            storm_max_share: 0.5,
            storm_window: Duration::from_secs(600),
            cooldown: Duration::from_secs(1800),
            retry_after_abort: Duration::from_secs(60),
        }
    }
}

/// Where the journal lives.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JournalConfig {
    pub path: PathBuf,
}

impl Default for JournalConfig {
    fn default() -> Self {
        JournalConfig {
            path: PathBuf::from("/var/lib/vigil/journal.sqlite"),
        }
    }
}

/// Notifications.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NotifyConfig {
    pub webhook: Option<WebhookConfig>,
    /// More webhook receivers (`[[recovery.notify.webhooks]]`), each with
    /// its own key; every message goes to `webhook` and to each of these.
    pub webhooks: Vec<WebhookConfig>,
    pub email: Option<EmailConfig>,
    /// Delivery attempts per message and notifier. Default 6 (about a minute
    /// of backoff): long enough to ride out a receiver restart.
    pub attempts: u32,
    #[serde(with = "duration_text")]
    pub initial_backoff: Duration,
    #[serde(with = "duration_text")]
    pub max_backoff: Duration,
}

impl Default for NotifyConfig {
    fn default() -> Self {
        NotifyConfig {
            webhook: None,
            webhooks: Vec::new(),
            email: None,
            attempts: 6,
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(30),
        }
    }
}

/// A webhook receiver.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    pub url: String,
    /// Key of the `X-Vigil-Signature: sha256=<hex>` HMAC over the body.
    pub secret: SecretSource,
    #[serde(default = "default_request_timeout", with = "duration_text")]
    pub timeout: Duration,
}

/// How the SMTP connection is secured.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SmtpSecurity {
    /// STARTTLS required. Default: credentials and incident details never
    /// cross the network in clear.
    #[default]
    Starttls,
    /// TLS from the first byte (port 465).
    Tls,
    /// No TLS; only for a relay on the same host or a lab.
    None,
}

/// E-mail through SMTP.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmailConfig {
    pub smtp_host: String,
    #[serde(default = "default_smtp_port")]
    pub smtp_port: u16,
    #[serde(default)]
    pub security: SmtpSecurity,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<SecretSource>,
    pub from: String,
    /// Get every message.
    pub admins: Vec<String>,
    /// Project id → contacts, who get messages about their instances.
    #[serde(default)]
    pub project_contacts: BTreeMap<String, Vec<String>>,
    #[serde(default = "default_request_timeout", with = "duration_text")]
    pub timeout: Duration,
}

fn default_smtp_port() -> u16 {
    587
}

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A setting is out of range.
    #[error("recovery config: {field}: {problem}")]
    Invalid { field: String, problem: String },
}

impl RecoveryConfig {
    /// Checks what serde cannot; run before the decider acts on anything.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |field: &str, problem: &str| {
            Err(ConfigError::Invalid {
                field: field.into(),
                problem: problem.into(),
            })
        };
        let ev = &self.evacuation;
        if ev.concurrency == 0 {
            return bad("evacuation.concurrency", "must be at least 1");
        }
        if ev.max_attempts == 0 {
            return bad("evacuation.max_attempts", "must be at least 1");
        }
        if ev.run_microversion > Microversion::LAST_RUNNING_EVACUATE {
            return bad(
                "evacuation.run_microversion",
                "must be 2.94 or lower: from 2.95 nova leaves evacuated servers stopped",
            );
        }
        if ev.destination != DestinationPolicy::Scheduler
            && ev.run_microversion < Microversion::HOST_VALIDATED
        {
            return bad(
                "evacuation.run_microversion",
                "must be 2.29 or higher when naming destination hosts, so nova's scheduler still validates them",
            );
        }
        if ev.destination == DestinationPolicy::Reserved && ev.reserved.is_empty() {
            return bad(
                "evacuation.reserved",
                "destination = \"reserved\" needs at least one reserved host",
            );
        }
        let g = &self.guards;
        if !(g.storm_max_share > 0.0 && g.storm_max_share <= 1.0) {
            return bad("guards.storm_max_share", "must be in (0, 1]");
        }
        if g.retry_after_abort.is_zero() {
            return bad(
                "guards.retry_after_abort",
                "must be greater than zero, e.g. \"1m\"",
            );
        }
        if self.fencing.confirm_poll_interval.is_zero() {
            return bad(
                "fencing.confirm_poll_interval",
                "must be greater than zero, e.g. \"1s\"",
            );
        }
        if ev.poll_interval.is_zero() || ev.verify_deadline.is_zero() {
            return bad(
                "evacuation.poll_interval / evacuation.verify_deadline",
                "must be greater than zero",
            );
        }
        for (node, nf) in &self.fencing.nodes {
            if nf.levels.is_empty() {
                return bad(&format!("fencing.nodes.{node}"), "has no fence levels");
            }
            if self
                .fencing
                .groups
                .iter()
                .any(|grp| grp.nodes.contains_key(node))
            {
                return bad(
                    &format!("fencing.nodes.{node}"),
                    "is also in a fencing group; keep one",
                );
            }
        }
        for grp in &self.fencing.groups {
            if grp.levels.is_empty() {
                return bad(
                    &format!("fencing.groups.{}", grp.name),
                    "has no fence levels",
                );
            }
        }
        if self.notify.attempts == 0 {
            return bad("notify.attempts", "must be at least 1");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_follow_the_safety_rules() {
        let c = RecoveryConfig::default();
        c.validate().expect("defaults are valid");
        assert!(!c.fencing.accept_storage_fence_alone);
        assert!(!c.reenable_after_recovery);
        assert_eq!(c.evacuation.run_microversion, Microversion::new(2, 94));
        assert_eq!(c.evacuation.concurrency, 4);
    }

    #[test]
    fn parses_a_full_example_and_rejects_unknown_keys() {
        let text = r#"
            reenable_after_recovery = true
            [fencing]
            confirm_poll_interval = "500ms"
            [fencing.nodes.compute1]
            bmc = "198.51.100.1"
            levels = [
              { kind = "redfish", url = "http://{bmc}:8001", system_id = "{node}", username = "admin", password = { file = "/etc/vigil/bmc" }, deadline = "30s" },
              { kind = "ipmi", host = "{bmc}", port = 9001, username = "admin", password = { env = "BMC_PW" } },
              { kind = "command", program = "/usr/local/bin/fence", args = ["{node}"], storage_fence = true },
              { kind = "fence_agent", agent = "fence_ipmilan", ip = "{bmc}", username = "admin", password = { file = "/etc/vigil/bmc" }, options = { lanplus = "1" } },
              { kind = "fence-agent", agent = "/usr/sbin/fence_redfish", ip = "{bmc}", ipport = 8000, username = "admin", password = { env = "BMC_PW" }, action_timeout = "20s" },
            ]
            [evacuation]
            destination = "spread"
            shutoff = "evacuate"
            [guards]
            cooldown = "10m"
            [notify.webhook]
            url = "http://127.0.0.1:8099/hook"
            secret = { env = "HOOK_KEY" }
            [[notify.webhooks]]
            url = "https://chat.example/hook"
            secret = { file = "/etc/vigil/chat.key" }
            [[notify.webhooks]]
            url = "https://tickets.example/hook"
            secret = { file = "/etc/vigil/tickets.key" }
        "#;
        let c: RecoveryConfig = toml::from_str(text).expect("parses");
        c.validate().expect("valid");
        assert_eq!(c.notify.webhooks.len(), 2);
        assert_eq!(c.fencing.nodes["compute1"].levels.len(), 5);
        assert!(matches!(
            &c.fencing.nodes["compute1"].levels[4],
            LevelConfig::FenceAgent(a) if a.ipport == Some(8000) && a.action_timeout == Duration::from_secs(20)
        ));
        assert_eq!(
            c.fencing.nodes["compute1"].levels[0].deadline(),
            Duration::from_secs(30)
        );
        assert!(toml::from_str::<RecoveryConfig>("[evacuation]\nconcurency = 3\n").is_err());
        // One storm guard: its numbers live in [policy.storm] only.
        assert!(toml::from_str::<RecoveryConfig>("[guards]\nstorm_max_dead = 2\n").is_err());
        assert!(toml::from_str::<RecoveryConfig>(
            "[fencing.nodes.a]\nlevels = [{ kind = \"ipmi\", host = \"h\", username = \"u\", password = { env = \"P\" }, pasword = 1 }]\n"
        )
        .is_err());
    }

    #[test]
    fn rejects_a_running_microversion_that_stops_servers() {
        let mut c = RecoveryConfig::default();
        c.evacuation.run_microversion = Microversion::new(2, 95);
        assert!(c.validate().is_err());
    }
}
