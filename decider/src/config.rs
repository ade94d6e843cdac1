//! The decider's configuration: one TOML file, then environment variables,
//! then flags (each overriding the one before). Unknown keys and bad values are
//! rejected before anything binds, with the key's name and what is valid.
//! Secrets (sensor tokens) are read from files here and never printed.

use serde::Deserialize;
use std::collections::BTreeSet;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;
use thiserror::Error;
use vigil_verdict::time::serde_duration;
use vigil_verdict::Policy;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub server: ServerConfig,
    #[serde(default)]
    pub metrics: MetricsConfig,
    #[serde(default)]
    pub enrolment: EnrolmentConfig,
    #[serde(default)]
    pub nova: NovaConfig,
    #[serde(default)]
    pub ping: PingConfig,
    #[serde(default)]
    pub engine: EngineConfig,
    #[serde(default)]
    pub log: LogConfig,
    /// `[[node]]` tables: the compute nodes this decider watches.
    #[serde(default, rename = "node")]
    pub nodes: Vec<NodeConfig>,
    #[serde(default)]
    pub policy: Policy,
    /// `[recovery]`: fencing, evacuation, guards, notifications, journal. Absent,
    /// the decider judges and never acts (no fence, no Nova change).
    #[serde(default)]
    pub recovery: Option<vigil_recovery::config::RecoveryConfig>,
    /// `[cluster]`: several deciders on etcd, one leader acts; the journal
    /// lives in etcd. Absent: this decider is the only one (SQLite journal).
    #[serde(default)]
    pub cluster: Option<vigil_cluster::ClusterConfig>,
    /// `[kdump]`: listen for fence_kdump messages from crash kernels.
    /// Absent: no kdump port is opened.
    #[serde(default)]
    pub kdump: Option<KdumpConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// gRPC address for the sensor stream and the operator API.
    pub listen: SocketAddr,
    /// Largest sensor message accepted; larger ones are rejected with
    /// `InvalidArgument` and counted.
    pub max_message_bytes: usize,
    /// A stream must send its first heartbeat within this time.
    #[serde(with = "serde_duration")]
    pub first_message_timeout: Duration,
    /// TLS for the gRPC port; with `client_ca`, every client (sensors and
    /// operators) must present a certificate signed by it (mutual TLS), and
    /// sensors their token as well.
    pub tls: Option<TlsConfig>,
    /// File holding the operator token: the operator API's write calls
    /// (`ConfirmPowerOff`) need `authorization: Bearer <token>`. Unset, write
    /// calls are refused.
    pub operator_token_file: Option<PathBuf>,
    /// File holding the token of the operator API's read calls (nodes,
    /// verdicts, incidents: they show process names, cgroups, instance UUIDs
    /// and Nova's errors). Set, reads need `authorization: Bearer <token>`
    /// with this token or the operator token; unset, anyone who reaches the
    /// port can read.
    pub read_token_file: Option<PathBuf>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            // All interfaces: sensors reach the decider over the management
            // network (the lab uses 198.51.100.1:50051).
            listen: SocketAddr::from(([0, 0, 0, 0], 50051)),
            // A heartbeat with hundreds of instances and blocked tasks is a
            // few tens of KiB; 256 KiB leaves room and bounds memory per stream.
            max_message_bytes: 256 * 1024,
            first_message_timeout: Duration::from_secs(10),
            tls: None,
            operator_token_file: None,
            read_token_file: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: Option<PathBuf>,
    /// With `client_ca`: a sensor's certificate must name the node it streams
    /// for, as a DNS name in its subject alternative names or as its CN; a
    /// stolen token then needs the node's key as well.
    #[serde(default)]
    pub cert_names_node: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Prometheus `/metrics` over plain HTTP; `enabled = false` turns it off.
    pub enabled: bool,
    pub listen: SocketAddr,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        // 9464: the port OpenTelemetry/Prometheus exporters conventionally use.
        MetricsConfig {
            enabled: true,
            listen: SocketAddr::from(([0, 0, 0, 0], 9464)),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EnrolmentConfig {
    /// Accept sensors of nodes not listed under `[[node]]` when they present
    /// the enrolment token. Off by default: an unknown node is rejected.
    pub enabled: bool,
    pub token_file: Option<PathBuf>,
    /// Storm-guard segment of enrolled nodes.
    pub segment: String,
}

impl Default for EnrolmentConfig {
    fn default() -> Self {
        EnrolmentConfig {
            enabled: false,
            token_file: None,
            segment: "default".to_string(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NovaConfig {
    /// Poll Nova at all. Without Nova, nodes can never be `dead` unless the
    /// policy leaves Nova out of `required_for_dead`.
    pub enabled: bool,
    /// `clouds.yaml` cloud name; when unset, `OS_CLOUD` or `OS_*` apply.
    pub cloud: Option<String>,
    /// How often `os-services` is listed. Short, because staleness of
    /// `updated_at` is measured between successive polls.
    #[serde(with = "serde_duration")]
    pub poll_interval: Duration,
    /// Each Nova call is abandoned after this.
    #[serde(with = "serde_duration")]
    pub request_timeout: Duration,
    /// Slow sweep listing every host's instances (their addresses are pinged).
    #[serde(with = "serde_duration")]
    pub instances_interval: Duration,
    /// Concurrent per-host instance listings.
    pub instances_concurrency: usize,
    /// How often Nova is asked which servers changed lately
    /// (`changes-since`), to list again at once the hosts where one was
    /// booted or moved: its address vetoes within this (plus a listing)
    /// instead of at the next sweep. Its own task, one request at a time,
    /// never inside the `os-services` poll. `0s` turns it off.
    #[serde(with = "serde_duration")]
    pub changes_interval: Duration,
    /// A `changes-since` request is abandoned after this.
    #[serde(with = "serde_duration")]
    pub changes_timeout: Duration,
    /// Hosts queued for listing per `changes_interval` at most; the rest
    /// wait for the next round, so a burst of changes cannot flood Nova.
    pub changes_max_hosts: usize,
}

impl Default for NovaConfig {
    fn default() -> Self {
        NovaConfig {
            enabled: true,
            cloud: None,
            // 1 s: a stalled updated_at is noticed within a second of the
            // policy's report interval + margin (10 s + 2 s).
            poll_interval: Duration::from_secs(1),
            request_timeout: Duration::from_secs(5),
            instances_interval: Duration::from_secs(60),
            instances_concurrency: 4,
            changes_interval: Duration::from_secs(5),
            changes_timeout: Duration::from_secs(4),
            changes_max_hosts: 8,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PingConfig {
    pub enabled: bool,
    /// Background sweep of every address.
    #[serde(with = "serde_duration")]
    pub interval: Duration,
    /// Addresses of nodes that are not healthy are probed this often.
    #[serde(with = "serde_duration")]
    pub urgent_interval: Duration,
    /// A probe with no reply within this is a failure.
    #[serde(with = "serde_duration")]
    pub timeout: Duration,
    /// Probes in flight at once.
    pub concurrency: usize,
    /// Addresses outside the compute nodes that should always answer (a
    /// gateway, the controller). If none answers, the decider assumes it is
    /// cut off itself and judges no node dead.
    pub reference_addresses: Vec<IpAddr>,
}

impl Default for PingConfig {
    fn default() -> Self {
        PingConfig {
            enabled: true,
            interval: Duration::from_secs(5),
            // Three failures (the policy's default) within ~1.5 s of suspicion.
            urgent_interval: Duration::from_millis(500),
            timeout: Duration::from_secs(1),
            concurrency: 256,
            reference_addresses: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KdumpConfig {
    /// UDP address fence_kdump_send sends to (`fence_kdump_send -p PORT
    /// DECIDER`). Datagrams are attributed by their source address, so the
    /// nodes' management addresses (`[[node]] management_addresses`, or
    /// Nova's `host_ip`) must be the ones their crash kernels send from.
    pub listen: SocketAddr,
}

impl Default for KdumpConfig {
    fn default() -> Self {
        // fence_kdump's own port, on every interface: the crash kernel sends
        // from the management network, whatever address the decider has there.
        KdumpConfig {
            listen: SocketAddr::from(([0, 0, 0, 0], crate::kdump::DEFAULT_PORT)),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EngineConfig {
    /// Every node is re-judged at least this often (ages grow without events).
    #[serde(with = "serde_duration")]
    pub tick: Duration,
    /// Events queued for the main loop before senders wait.
    pub queue: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        // 250 ms: verdicts lag the evidence by at most a quarter second.
        EngineConfig {
            tick: Duration::from_millis(250),
            queue: 65536,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `text` for people, `json` for log pipelines.
    pub format: LogFormat,
    /// tracing-subscriber filter, e.g. `info` or `vigil_decider=debug`.
    pub filter: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Text,
            filter: "info".to_string(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
    /// Native journald fields (over its socket), for a systemd unit.
    Journald,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// The host name as Nova knows it (`os-services` `host`).
    pub name: String,
    /// File holding this node's sensor token (bearer token).
    pub token_file: PathBuf,
    /// Management addresses probed by ping.
    #[serde(default)]
    pub management_addresses: Vec<IpAddr>,
    /// Storm-guard segment (e.g. a rack or power feed).
    #[serde(default = "default_segment")]
    pub segment: String,
    /// The machine's SMBIOS system UUID (`cat /sys/class/dmi/id/product_uuid`
    /// on it; `dmidecode -s system-uuid`), normalized to lowercase at load.
    /// When set, the node's BMC must report this UUID before Vigil fences
    /// through it or believes its power readings, and the sensor must too.
    /// Unset: the sensor's report is compared with the BMC's.
    #[serde(default)]
    pub system_uuid: Option<String>,
}

fn default_segment() -> String {
    "default".to_string()
}

/// A secret read from a file. Its `Debug` and `Display` never show it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// A configuration that cannot be used. Each names the key and what is valid.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}; pass an existing file with --config")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// TOML syntax, an unknown key or a value of the wrong type.
    #[error("config file {path}: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },
    /// A value that parses but is not allowed.
    #[error("config key {key}: {problem}")]
    Invalid { key: String, problem: String },
    /// A secret file that cannot be used.
    #[error("config key {key}: cannot read {path}: {why}")]
    SecretFile {
        key: String,
        path: PathBuf,
        why: String,
    },
    /// The policy section is not valid.
    #[error("config: {0}")]
    Policy(#[from] vigil_verdict::PolicyError),
}

impl From<vigil_recovery::config::ConfigError> for ConfigError {
    fn from(e: vigil_recovery::config::ConfigError) -> Self {
        match e {
            vigil_recovery::config::ConfigError::Invalid { field, problem } => {
                ConfigError::Invalid {
                    key: format!("recovery.{field}"),
                    problem,
                }
            }
        }
    }
}

/// Overrides from the environment and flags, applied over the file.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub listen: Option<SocketAddr>,
    pub metrics_listen: Option<SocketAddr>,
    pub log_format: Option<LogFormat>,
    pub log_filter: Option<String>,
}

/// Sensor tokens, loaded and checked at start.
#[derive(Debug, Clone, Default)]
pub struct Tokens {
    /// (node, token) for each configured node.
    pub nodes: Vec<(String, Secret)>,
    pub enrolment: Option<Secret>,
    /// Bearer token of the operator API's write calls.
    pub operator: Option<Secret>,
    /// Bearer token of the operator API's read calls (`None`: reads are open).
    pub read: Option<Secret>,
}

impl Config {
    /// Parses a TOML document (`path` only names it in errors).
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        toml::from_str(text).map_err(|source| ConfigError::Parse {
            path: path.to_path_buf(),
            source,
        })
    }

    /// Reads and parses `path`; `None` gives the defaults (no nodes).
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        match path {
            None => Ok(Config::default()),
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                    path: p.to_path_buf(),
                    source,
                })?;
                Config::parse(&text, p)
            }
        }
    }

    pub fn apply(&mut self, o: &Overrides) {
        if let Some(l) = o.listen {
            self.server.listen = l;
        }
        if let Some(l) = o.metrics_listen {
            self.metrics.listen = l;
        }
        if let Some(f) = o.log_format {
            self.log.format = f;
        }
        if let Some(f) = &o.log_filter {
            self.log.filter = f.clone();
        }
    }

    /// Checks every value serde cannot, reads the token files, and returns the
    /// tokens. Runs before any socket is bound.
    pub fn validate(&self) -> Result<Tokens, ConfigError> {
        self.policy.validate()?;
        if let Some(c) = &self.cluster {
            c.validate().map_err(|e| ConfigError::Invalid {
                key: format!("cluster.{}", e.key),
                problem: e.problem,
            })?;
        }
        let invalid = |key: &str, problem: &str| ConfigError::Invalid {
            key: key.to_string(),
            problem: problem.to_string(),
        };
        let positive = [
            (
                "server.first_message_timeout",
                self.server.first_message_timeout,
            ),
            ("nova.poll_interval", self.nova.poll_interval),
            ("nova.request_timeout", self.nova.request_timeout),
            ("nova.instances_interval", self.nova.instances_interval),
            ("nova.changes_timeout", self.nova.changes_timeout),
            ("ping.interval", self.ping.interval),
            ("ping.urgent_interval", self.ping.urgent_interval),
            ("ping.timeout", self.ping.timeout),
            ("engine.tick", self.engine.tick),
        ];
        for (key, d) in positive {
            if d.is_zero() {
                return Err(invalid(key, "must be greater than zero, e.g. \"1s\""));
            }
        }
        if self.server.max_message_bytes < 1024 || self.server.max_message_bytes > 16 << 20 {
            return Err(invalid(
                "server.max_message_bytes",
                "must be between 1024 and 16777216 (16 MiB)",
            ));
        }
        for (key, n) in [
            ("ping.concurrency", self.ping.concurrency),
            (
                "nova.instances_concurrency",
                self.nova.instances_concurrency,
            ),
            ("nova.changes_max_hosts", self.nova.changes_max_hosts),
            ("engine.queue", self.engine.queue),
        ] {
            if n == 0 {
                return Err(invalid(key, "must be at least 1"));
            }
        }
        // The listing queue holds 1024 hosts; more per round could only
        // overflow it.
        if self.nova.changes_max_hosts > crate::nova_poll::LISTING_QUEUE {
            return Err(invalid(
                "nova.changes_max_hosts",
                &format!("must be at most {}", crate::nova_poll::LISTING_QUEUE),
            ));
        }
        if let Some(tls) = &self.server.tls {
            for (key, p) in [
                ("server.tls.cert", Some(&tls.cert)),
                ("server.tls.key", Some(&tls.key)),
                ("server.tls.client_ca", tls.client_ca.as_ref()),
            ] {
                if let Some(p) = p {
                    if !p.is_file() {
                        return Err(invalid(
                            key,
                            &format!("{} is not a readable file", p.display()),
                        ));
                    }
                }
            }
        }
        let mut names = BTreeSet::new();
        let mut uuids = std::collections::BTreeMap::new();
        let mut tokens = Tokens::default();
        for (i, n) in self.nodes.iter().enumerate() {
            let key = format!("node[{i}]");
            if n.name.trim().is_empty() || n.name.len() > 255 {
                return Err(invalid(
                    &format!("{key}.name"),
                    "must be the node's Nova host name (1..255 characters)",
                ));
            }
            if !names.insert(n.name.clone()) {
                return Err(invalid(
                    &format!("{key}.name"),
                    &format!("node \"{}\" is listed twice", n.name),
                ));
            }
            if n.segment.trim().is_empty() {
                return Err(invalid(
                    &format!("{key}.segment"),
                    "must not be empty (default \"default\")",
                ));
            }
            if let Some(u) = &n.system_uuid {
                let Some(canon) = vigil_proto::system_uuid::normalize(u) else {
                    return Err(invalid(
                        &format!("{key}.system_uuid"),
                        &format!(
                            "{:?} is not a system UUID (8-4-4-4-12 hex, not all zeros or Fs): copy it from `cat /sys/class/dmi/id/product_uuid` on the node, or leave it out",
                            u.chars().take(40).collect::<String>()
                        ),
                    ));
                };
                if let Some(other) = uuids.insert(canon, n.name.clone()) {
                    return Err(invalid(
                        &format!("{key}.system_uuid"),
                        &format!("is also node \"{other}\"'s: each machine has its own; copy each from its own node"),
                    ));
                }
            }
            let token = read_secret(&format!("{key}.token_file"), &n.token_file)?;
            tokens.nodes.push((n.name.clone(), token));
        }
        if self.enrolment.enabled {
            let path = self.enrolment.token_file.as_ref().ok_or_else(|| {
                invalid("enrolment.token_file", "is required when enrolment.enabled = true: unknown nodes must still authenticate")
            })?;
            tokens.enrolment = Some(read_secret("enrolment.token_file", path)?);
        }
        if let Some(path) = &self.server.operator_token_file {
            tokens.operator = Some(read_secret("server.operator_token_file", path)?);
        }
        if let Some(path) = &self.server.read_token_file {
            tokens.read = Some(read_secret("server.read_token_file", path)?);
        }
        if let Some(t) = &self.server.tls {
            if t.cert_names_node && t.client_ca.is_none() {
                return Err(invalid(
                    "server.tls.cert_names_node",
                    "needs server.tls.client_ca: without client certificates there is no name to check",
                ));
            }
        }
        check_tokens_distinct(self, &tokens)?;
        if let Some(k) = &self.kdump {
            check_kdump(self, k)?;
        }
        if let Some(r) = &self.recovery {
            r.validate()?;
            // A fence for a name that is no [[node]] is a typo that leaves
            // the real node unfenced, and nobody would be told.
            for fenced in vigil_recovery::fence::configured_nodes(&r.fencing) {
                if !names.contains(&fenced) {
                    return Err(invalid(
                        "recovery.fencing",
                        &format!(
                            "fence levels for \"{fenced}\", which is not a [[node]] name ({}); fix the name or add a [[node]] for it",
                            names.iter().cloned().collect::<Vec<_>>().join(", ")
                        ),
                    ));
                }
            }
            if !self.nova.enabled {
                return Err(invalid(
                    "nova.enabled",
                    "must be true with [recovery]: recovery acts through Nova (disable, force down, evacuate)",
                ));
            }
            if r.evacuation.verify_deadline < r.evacuation.poll_interval {
                return Err(invalid(
                    "recovery.evacuation.verify_deadline",
                    "must be at least evacuation.poll_interval",
                ));
            }
            // Vigil's own disable reason must read as Vigil's, or a node it
            // disabled turns `maintenance` in its own eyes (safety rule 5).
            let prefix = &self.policy.maintenance.vigil_reason_prefix;
            if !vigil_recovery::workflow::DISABLE_REASON_PREFIX.starts_with(prefix.as_str())
                || prefix.is_empty()
            {
                return Err(invalid(
                    "policy.maintenance.vigil_reason_prefix",
                    &format!(
                        "must be a non-empty prefix of \"{}\", the start of every disable reason the recovery workflow writes",
                        vigil_recovery::workflow::DISABLE_REASON_PREFIX
                    ),
                ));
            }
        }
        Ok(tokens)
    }
}

/// Refuses one secret serving two roles: a token file shared by two nodes
/// lets either stream as the other, a node token equal to the enrolment
/// token lets that node enrol any name, and the operator token equal to a
/// sensor token lets a compute node confirm power-offs.
fn check_tokens_distinct(cfg: &Config, tokens: &Tokens) -> Result<(), ConfigError> {
    let mut holders: Vec<(String, &Secret, Option<PathBuf>)> = Vec::new();
    for (i, ((_, secret), n)) in tokens.nodes.iter().zip(&cfg.nodes).enumerate() {
        holders.push((
            format!("node[{i}].token_file"),
            secret,
            Some(n.token_file.clone()),
        ));
    }
    if let Some(e) = &tokens.enrolment {
        holders.push((
            "enrolment.token_file".to_string(),
            e,
            cfg.enrolment.token_file.clone(),
        ));
    }
    if let Some(o) = &tokens.operator {
        holders.push((
            "server.operator_token_file".to_string(),
            o,
            cfg.server.operator_token_file.clone(),
        ));
    }
    if let Some(r) = &tokens.read {
        holders.push((
            "server.read_token_file".to_string(),
            r,
            cfg.server.read_token_file.clone(),
        ));
    }
    for (i, (key, secret, path)) in holders.iter().enumerate() {
        for (earlier, other, other_path) in &holders[..i] {
            let same_file = matches!((path, other_path), (Some(a), Some(b)) if same_file(a, b));
            if same_file || secret.expose() == other.expose() {
                let what = if same_file { "file" } else { "token" };
                return Err(ConfigError::Invalid {
                    key: key.clone(),
                    problem: format!(
                        "the same {what} as {earlier}: each node, enrolment and the operator need their own token, or one can act as the other; generate one per role (e.g. `openssl rand -hex 32`)"
                    ),
                });
            }
        }
    }
    Ok(())
}

/// `[kdump]` attributes a datagram to the node whose management address
/// sent it: an address listed for two nodes would let one node's crash
/// kernel speak for the other, and a port nobody can aim at hears nothing.
fn check_kdump(cfg: &Config, k: &KdumpConfig) -> Result<(), ConfigError> {
    let invalid = |key: String, problem: String| ConfigError::Invalid { key, problem };
    if k.listen.port() == 0 {
        return Err(invalid(
            "kdump.listen".into(),
            format!(
                "port 0 picks a random port no crash kernel knows; use fence_kdump's {} (or the port given to fence_kdump_send -p)",
                crate::kdump::DEFAULT_PORT
            ),
        ));
    }
    if k.listen.ip().is_multicast() {
        return Err(invalid(
            "kdump.listen".into(),
            format!(
                "{} is a multicast address; use the decider's management address or 0.0.0.0",
                k.listen.ip()
            ),
        ));
    }
    let mut owners: std::collections::HashMap<IpAddr, &str> = std::collections::HashMap::new();
    for (i, n) in cfg.nodes.iter().enumerate() {
        for a in &n.management_addresses {
            let a = a.to_canonical();
            match owners.insert(a, &n.name) {
                Some(other) if other != n.name => {
                    return Err(invalid(
                        format!("node[{i}].management_addresses"),
                        format!(
                            "{a} is also \"{other}\"'s: with [kdump] a crash kernel's message is attributed by its source address, so each address must belong to one node"
                        ),
                    ));
                }
                _ => {}
            }
        }
    }
    Ok(())
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

/// Largest token file read; a token is one line of tens of bytes.
const MAX_SECRET_FILE: u64 = 4096;

/// Tokens shorter than this are refused: they could be guessed.
const MIN_TOKEN_LEN: usize = 16;

fn read_secret(key: &str, path: &Path) -> Result<Secret, ConfigError> {
    let err = |why: String| ConfigError::SecretFile {
        key: key.to_string(),
        path: path.to_path_buf(),
        why,
    };
    // Bounded: a token_file naming /dev/zero or a log file must not make the
    // decider read forever at start.
    let mut text = String::new();
    std::fs::File::open(path)
        .and_then(|f| {
            std::io::Read::read_to_string(
                &mut std::io::Read::take(f, MAX_SECRET_FILE + 1),
                &mut text,
            )
        })
        .map_err(|e| err(e.to_string()))?;
    if text.len() as u64 > MAX_SECRET_FILE {
        return Err(err(format!(
            "more than {MAX_SECRET_FILE} bytes: a token file holds one line"
        )));
    }
    let token = text.trim();
    if token.len() < MIN_TOKEN_LEN {
        return Err(err(format!(
            "the token must be at least {MIN_TOKEN_LEN} characters (e.g. `openssl rand -hex 32`)"
        )));
    }
    if token.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(err("the token must be one line without spaces".to_string()));
    }
    Ok(Secret::new(token))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token_file(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).expect("write token");
        p
    }

    #[test]
    fn full_example_parses_and_validates() {
        let dir = tempfile::tempdir().expect("tempdir");
        let t = token_file(dir.path(), "c1.token", "0123456789abcdef0123\n");
        let text = format!(
            r#"
[server]
listen = "198.51.100.1:50051"
[ping]
reference_addresses = ["198.51.100.1"]
[[node]]
name = "compute1"
token_file = "{}"
management_addresses = ["198.51.100.11"]
[policy.nova]
report_interval = "10s"
"#,
            t.display()
        );
        let c = Config::parse(&text, Path::new("decider.toml")).expect("parse");
        let tokens = c.validate().expect("valid");
        assert_eq!(tokens.nodes[0].1.expose(), "0123456789abcdef0123");
        assert_eq!(format!("{:?}", tokens.nodes[0].1), "Secret(***)");
        assert_eq!(c.server.listen.to_string(), "198.51.100.1:50051");
    }

    #[test]
    fn the_example_cluster_section_parses_and_its_mistakes_are_named() {
        // The example's commented [cluster], uncommented, is valid.
        let example = include_str!("../decider.example.toml");
        let start = example.find("# [cluster]").expect("example has [cluster]");
        let section: String = example[start..]
            .lines()
            .take_while(|l| l.starts_with('#'))
            .map(|l| format!("{}\n", l.trim_start_matches("# ")))
            .collect();
        let c = Config::parse(&section, Path::new("d.toml")).expect("parses");
        let cl = c.cluster.as_ref().expect("cluster");
        assert_eq!((cl.name.as_str(), cl.endpoints.len()), ("ctl1", 3));
        assert_eq!(cl.lease_ttl, Duration::from_secs(5));
        c.validate().expect("valid");
        for (bad, key) in [
            ("lease_ttl = \"1s\"", "cluster.lease_ttl"),
            ("step_down_margin = \"4s\"", "cluster.step_down_margin"),
        ] {
            let text = format!(
                "[cluster]\nname = \"ctl1\"\nendpoints = [\"http://10.0.0.1:2379\"]\n{bad}\n"
            );
            let e = Config::parse(&text, Path::new("d.toml"))
                .expect("parses")
                .validate()
                .expect_err("refused");
            assert!(e.to_string().contains(key), "{e}");
        }
        let e = Config::parse(
            "[cluster]\nname = \"a\"\nendpoint = []\n",
            Path::new("d.toml"),
        )
        .expect_err("unknown key");
        assert!(e.to_string().contains("endpoint"), "{e}");
    }

    #[test]
    fn unknown_key_is_named() {
        let e = Config::parse(
            "[server]\nlisten_addr = \"0.0.0.0:1\"\n",
            Path::new("d.toml"),
        )
        .expect_err("unknown key");
        let msg = e.to_string();
        assert!(
            msg.contains("listen_addr") && msg.contains("d.toml"),
            "{msg}"
        );
    }

    #[test]
    fn bad_values_name_the_key_and_what_is_valid() {
        let e =
            Config::parse("[ping]\ntimeout = \"fast\"\n", Path::new("d.toml")).expect_err("bad");
        assert!(e.to_string().contains("not a duration"), "{e}");
        let mut c = Config::default();
        c.ping.concurrency = 0;
        let e = c.validate().expect_err("zero concurrency");
        assert_eq!(
            e.to_string(),
            "config key ping.concurrency: must be at least 1"
        );
        let mut c = Config::default();
        c.policy.storm.max_share = 2.0;
        assert!(c
            .validate()
            .expect_err("bad share")
            .to_string()
            .contains("policy.storm.max_share"));
    }

    #[test]
    fn a_system_uuid_must_be_one_and_each_nodes_own() {
        let dir = tempfile::tempdir().expect("tempdir");
        let node = |name: &str, uuid: &str| NodeConfig {
            name: name.into(),
            token_file: token_file(dir.path(), name, &format!("{name}-token-0123456789abcdef")),
            management_addresses: vec![],
            segment: "default".into(),
            system_uuid: Some(uuid.into()),
        };
        let mut c = Config::default();
        c.nodes
            .push(node("compute1", "4C4C4544-0042-3510-8052-B4C04F4B4E32"));
        c.validate().expect("dmidecode's upper case is accepted");
        c.nodes.push(node("compute2", "not-a-uuid"));
        let e = c.validate().expect_err("garbage").to_string();
        assert!(
            e.contains("node[1].system_uuid") && e.contains("product_uuid"),
            "{e}"
        );
        c.nodes[1] = node("compute2", "00000000-0000-0000-0000-000000000000");
        let e = c.validate().expect_err("placeholder").to_string();
        assert!(e.contains("node[1].system_uuid"), "{e}");
        c.nodes[1] = node("compute2", "4c4c4544-0042-3510-8052-b4c04f4b4e32");
        let e = c.validate().expect_err("copied").to_string();
        assert!(
            e.contains("node[1].system_uuid") && e.contains("compute1"),
            "{e}"
        );
    }

    #[test]
    fn short_or_missing_tokens_are_refused_without_printing_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        let t = token_file(dir.path(), "short", "hunter2");
        let mut c = Config::default();
        c.nodes.push(NodeConfig {
            name: "compute1".into(),
            token_file: t,
            management_addresses: vec![],
            segment: "default".into(),
            system_uuid: None,
        });
        let msg = c.validate().expect_err("short token").to_string();
        assert!(
            msg.contains("node[0].token_file") && !msg.contains("hunter2"),
            "{msg}"
        );
        c.nodes[0].token_file = dir.path().join("missing");
        assert!(c
            .validate()
            .expect_err("missing")
            .to_string()
            .contains("node[0].token_file"));
    }

    #[test]
    fn recovery_section_parses_and_is_checked() {
        let dir = tempfile::tempdir().expect("tempdir");
        let op = token_file(dir.path(), "operator", "operator-token-0123456789\n");
        let c1 = token_file(dir.path(), "c1", "compute1-token-0123456789\n");
        let text = format!(
            r#"
[server]
operator_token_file = "{}"
[[node]]
name = "compute1"
token_file = "{}"
[recovery]
dry_run = true
[recovery.journal]
path = "/tmp/vigil-journal.sqlite"
[recovery.fencing.nodes.compute1]
levels = [
  {{ kind = "redfish", url = "http://198.51.100.1:8001", system_id = "compute1", username = "admin", password = {{ file = "/etc/vigil/bmc" }} }},
  {{ kind = "ipmi", host = "198.51.100.1", port = 9001, username = "admin", password = {{ env = "BMC_PW" }}, cipher_suite = 3 }},
]
[recovery.notify.webhook]
url = "http://198.51.100.1:8099/"
secret = {{ file = "/etc/vigil/hook.key" }}
"#,
            op.display(),
            c1.display()
        );
        let c = Config::parse(&text, Path::new("d.toml")).expect("parse");
        let tokens = c.validate().expect("valid");
        assert_eq!(
            tokens.operator.as_ref().map(Secret::expose),
            Some("operator-token-0123456789")
        );
        let r = c.recovery.as_ref().expect("recovery");
        assert!(r.dry_run);
        assert_eq!(r.fencing.nodes["compute1"].levels.len(), 2);

        // Unknown keys inside [recovery] are named.
        let e = Config::parse(
            "[recovery.evacuation]\nconcurency = 2\n",
            Path::new("d.toml"),
        )
        .expect_err("unknown key");
        assert!(e.to_string().contains("concurency"), "{e}");
        // Values serde cannot check carry the recovery. prefix.
        let mut c = Config::default();
        let mut r = vigil_recovery::config::RecoveryConfig::default();
        r.evacuation.concurrency = 0;
        c.recovery = Some(r);
        assert_eq!(
            c.validate().expect_err("zero").to_string(),
            "config key recovery.evacuation.concurrency: must be at least 1"
        );
        // Recovery acts through Nova.
        let mut c = Config {
            recovery: Some(Default::default()),
            ..Default::default()
        };
        c.nova.enabled = false;
        assert!(c
            .validate()
            .expect_err("no nova")
            .to_string()
            .contains("nova.enabled"));
        // The policy must read Vigil's own disable reason as Vigil's.
        let mut c = Config {
            recovery: Some(Default::default()),
            ..Default::default()
        };
        c.policy.maintenance.vigil_reason_prefix = "auto:".into();
        assert!(c
            .validate()
            .expect_err("prefix")
            .to_string()
            .contains("vigil_reason_prefix"));
    }

    #[test]
    fn the_example_config_parses() {
        let text = include_str!("../decider.example.toml");
        let c = Config::parse(text, Path::new("decider.example.toml")).expect("example parses");
        let r = c.recovery.as_ref().expect("recovery");
        r.validate().expect("recovery section valid");
        assert_eq!(
            vigil_recovery::fence::configured_nodes(&r.fencing),
            vec!["compute1".to_string(), "compute2".to_string()]
        );
    }

    #[test]
    fn vigils_own_disable_reason_is_not_maintenance_by_default() {
        let reason = vigil_recovery::workflow::disable_reason(
            &vigil_recovery::journal::IncidentId("42".into()),
        );
        assert!(reason.starts_with(&Policy::default().maintenance.vigil_reason_prefix));
    }

    /// A token file that never ends (/dev/zero) is refused, not read forever.
    #[test]
    fn an_endless_token_file_is_refused() {
        let e = read_secret("node[0].token_file", Path::new("/dev/zero"))
            .expect_err("/dev/zero is no token file")
            .to_string();
        assert!(e.contains("4096 bytes") && e.contains("/dev/zero"), "{e}");
    }

    /// The issue's three silent starts, each refused naming the key.
    #[test]
    fn one_secret_in_two_roles_and_fences_for_unknown_nodes_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let node = |name: &str, file: &Path| NodeConfig {
            name: name.into(),
            token_file: file.to_path_buf(),
            management_addresses: vec![],
            segment: "default".into(),
            system_uuid: None,
        };
        let t1 = token_file(dir.path(), "c1", "compute1-token-0123456789");
        let t2 = token_file(dir.path(), "c2", "compute2-token-0123456789");
        let copy = token_file(dir.path(), "c1-copy", "compute1-token-0123456789");
        let ok = Config {
            nodes: vec![node("compute1", &t1), node("compute2", &t2)],
            ..Config::default()
        };
        ok.validate().expect("distinct tokens are fine");

        let mut c = ok.clone();
        c.nodes[1].token_file = t1.clone();
        let e = c.validate().expect_err("shared file").to_string();
        assert!(
            e.contains("node[1].token_file") && e.contains("node[0].token_file"),
            "{e}"
        );
        assert!(!e.contains("compute1-token"), "never the secret: {e}");

        let mut c = ok.clone();
        c.nodes[1].token_file = copy.clone();
        let e = c.validate().expect_err("same token, two files").to_string();
        assert!(
            e.contains("node[1].token_file") && e.contains("same token"),
            "{e}"
        );

        let mut c = ok.clone();
        c.server.operator_token_file = Some(copy.clone());
        let e = c.validate().expect_err("operator = sensor").to_string();
        assert!(e.contains("server.operator_token_file"), "{e}");

        // A compute node's token must not read every node's processes.
        let mut c = ok.clone();
        c.server.read_token_file = Some(copy.clone());
        let e = c.validate().expect_err("read = sensor").to_string();
        assert!(e.contains("server.read_token_file"), "{e}");

        let mut c = ok.clone();
        c.server.tls = Some(TlsConfig {
            // Readable files; their content is not looked at by validate.
            cert: t1.clone(),
            key: t2.clone(),
            client_ca: None,
            cert_names_node: true,
        });
        let e = c.validate().expect_err("names without mTLS").to_string();
        assert!(e.contains("server.tls.cert_names_node"), "{e}");

        let mut c = ok.clone();
        c.enrolment.enabled = true;
        c.enrolment.token_file = Some(t2.clone());
        let e = c.validate().expect_err("enrolment = sensor").to_string();
        assert!(e.contains("enrolment.token_file"), "{e}");

        // A fence for "compute11" (a typo of compute1) leaves compute1 unfenced.
        let mut c = ok.clone();
        let r: vigil_recovery::config::RecoveryConfig = toml::from_str(
            "[fencing.nodes.compute11]\nlevels = [{ kind = \"command\", program = \"/bin/true\", args = [] }]\n",
        )
        .expect("recovery");
        c.recovery = Some(r);
        let e = c
            .validate()
            .expect_err("fence for unknown node")
            .to_string();
        assert!(
            e.contains("recovery.fencing") && e.contains("compute11"),
            "{e}"
        );
    }

    #[test]
    fn enrolment_needs_a_token() {
        let mut c = Config::default();
        c.enrolment.enabled = true;
        assert!(c
            .validate()
            .expect_err("no token")
            .to_string()
            .contains("enrolment.token_file"));
    }
}
