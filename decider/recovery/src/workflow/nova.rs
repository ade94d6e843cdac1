//! [`NovaActions`]: the narrow view of Nova the workflow needs, in our own
//! types. The decider implements it over `vigil-nova`; tests use a fake.
//!
//! **API Boundary:** no Nova JSON here. The adapter picks request bodies for
//! the microversion it negotiated (e.g. `host` + `force` at 2.29, `host` alone
//! from 2.68) and maps replies to these types.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};

use crate::time::Timestamp;

/// A Nova API microversion, `major.minor` (e.g. 2.94).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Microversion {
    pub major: u16,
    pub minor: u16,
}

impl Microversion {
    pub const fn new(major: u16, minor: u16) -> Self {
        Microversion { major, minor }
    }
    /// The last microversion whose evacuate leaves an ACTIVE server running.
    /// From 2.95 Nova leaves every evacuated server stopped (measured in the
    /// lab: `notes/minicloud.md`), so servers that must run go with ≤ 2.94.
    pub const LAST_RUNNING_EVACUATE: Microversion = Microversion::new(2, 94);
    /// The first microversion whose evacuate leaves the server stopped.
    pub const STOPPED_EVACUATE: Microversion = Microversion::new(2, 95);
    /// Since 2.29 a requested evacuate host is validated by the scheduler
    /// (without `force`), which `spread` and `reserved` rely on.
    pub const HOST_VALIDATED: Microversion = Microversion::new(2, 29);
}

impl fmt::Display for Microversion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// A microversion that is not `major.minor`.
#[derive(Debug, thiserror::Error)]
#[error("invalid microversion {0:?}; write it as MAJOR.MINOR, e.g. 2.94")]
pub struct MicroversionParseError(pub String);

impl FromStr for Microversion {
    type Err = MicroversionParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || MicroversionParseError(s.to_string());
        let (a, b) = s.split_once('.').ok_or_else(bad)?;
        Ok(Microversion::new(
            a.parse().map_err(|_| bad())?,
            b.parse().map_err(|_| bad())?,
        ))
    }
}

impl Serialize for Microversion {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Microversion {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// A `nova-compute` service as `os-services` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ComputeService {
    /// Service id (a UUID from microversion 2.53; the adapter keeps whatever
    /// identifies it for PUT calls at its microversion).
    pub id: String,
    pub host: String,
    /// `status == "enabled"`.
    pub enabled: bool,
    pub disabled_reason: Option<String>,
    pub forced_down: bool,
    /// `state == "up"`.
    pub up: bool,
}

/// The status of a server, as far as recovery cares.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ServerStatus {
    Active,
    Error,
    Shutoff,
    /// Anything else (BUILD, REBUILD, PAUSED, …), verbatim.
    #[serde(untagged)]
    Other(String),
}

impl fmt::Display for ServerStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServerStatus::Active => f.write_str("ACTIVE"),
            ServerStatus::Error => f.write_str("ERROR"),
            ServerStatus::Shutoff => f.write_str("SHUTOFF"),
            ServerStatus::Other(s) => f.write_str(s),
        }
    }
}

/// A server, with what selection reads (metadata, flavor extra specs, image
/// properties) and what verification reads (host, status, task state, fault).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Server {
    pub id: String,
    pub name: String,
    pub project_id: String,
    /// `OS-EXT-SRV-ATTR:host`; `None` when Nova has not placed it.
    pub host: Option<String>,
    pub status: ServerStatus,
    /// `OS-EXT-STS:task_state`; `Some("rebuilding")` while an evacuation runs.
    pub task_state: Option<String>,
    pub metadata: BTreeMap<String, String>,
    /// Embedded in the server from microversion 2.47.
    pub flavor_extra_specs: BTreeMap<String, String>,
    /// Glance image properties (empty for boot-from-volume or when unknown).
    pub image_properties: BTreeMap<String, String>,
    /// `fault.message`, when Nova recorded one.
    pub fault: Option<String>,
    /// `updated`: when Nova last wrote the server's record.
    pub updated: Option<String>,
}

/// An `os-migrations` record of type `evacuation` (microversion ≥ 2.59).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Migration {
    pub id: String,
    /// Nova's status text: accepted, pre-migrating, migrating, done, completed,
    /// failed, error, …
    pub status: String,
    pub source_compute: Option<String>,
    pub dest_compute: Option<String>,
    pub created_at: Option<Timestamp>,
}

impl Migration {
    /// Nova's terminal statuses; anything else means the evacuation is still
    /// under way (Nova sets `done` slightly after the server is ACTIVE, and the
    /// returning source host turns it into `completed`).
    pub fn finished(&self) -> bool {
        matches!(
            self.status.as_str(),
            "done" | "completed" | "failed" | "error" | "cancelled"
        )
    }

    pub fn failed(&self) -> bool {
        matches!(self.status.as_str(), "failed" | "error")
    }
}

/// One evacuate request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EvacuateRequest {
    /// The microversion to send it with (≤ 2.94 for servers that must run).
    pub microversion: Microversion,
    /// A destination host, or `None` for Nova's scheduler.
    pub host: Option<String>,
}

/// What `os-resetState` sets. Recovery resets to `error` (it clears a stuck
/// task state without claiming the server runs), except a server that must
/// land stopped with microversion ≥ 2.95: Nova ignores the evacuation's
/// target state for a server in ERROR, so that one is reset to `active`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResetTo {
    Error,
    Active,
}

/// A host aggregate the failed host belongs to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Aggregate {
    pub id: String,
    pub name: String,
    pub hosts: Vec<String>,
}

/// A Nova call that failed.
#[derive(Debug, thiserror::Error)]
pub enum NovaCallError {
    /// The object does not exist (HTTP 404).
    #[error("{what}: not found")]
    NotFound { what: String },
    /// Nova answered with an error status.
    #[error("{what}: nova answered {status}: {message}")]
    Rejected {
        what: String,
        status: u16,
        message: String,
    },
    /// A request that changes something may have reached Nova and its answer
    /// was lost (timeout, connection cut, 5xx): Nova may have applied it, now
    /// or later. Find out from Nova before anything else; never resend blind.
    #[error("{what}: no answer from nova; the request may have been applied")]
    MaybeApplied {
        what: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// Nova could not be reached or its answer could not be read.
    #[error("{what}: nova unreachable")]
    Transport {
        what: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// Every Nova call the recovery workflow makes. Mutating calls must be safe to
/// repeat after a crash: the adapter treats "already so" answers (e.g. 409 for
/// a host already in an aggregate) as success.
pub trait NovaActions: Send + Sync + 'static {
    /// The highest microversion the cloud offers (the adapter's negotiation).
    fn max_microversion(&self) -> Microversion;
    /// The `nova-compute` service on `host`.
    fn compute_service(&self, host: &str) -> BoxFuture<'_, Result<ComputeService, NovaCallError>>;
    /// Every `nova-compute` service (for `spread` destinations and self-checks).
    fn compute_services(&self) -> BoxFuture<'_, Result<Vec<ComputeService>, NovaCallError>>;
    fn disable_service<'a>(
        &'a self,
        service: &'a ComputeService,
        reason: &'a str,
    ) -> BoxFuture<'a, Result<(), NovaCallError>>;
    fn enable_service<'a>(
        &'a self,
        service: &'a ComputeService,
    ) -> BoxFuture<'a, Result<(), NovaCallError>>;
    /// `forced_down` (by service id from microversion 2.53).
    fn set_forced_down<'a>(
        &'a self,
        service: &'a ComputeService,
        down: bool,
    ) -> BoxFuture<'a, Result<(), NovaCallError>>;
    /// Servers on `host`, all projects.
    fn servers_on_host<'a>(
        &'a self,
        host: &'a str,
    ) -> BoxFuture<'a, Result<Vec<Server>, NovaCallError>>;
    /// One server; `NotFound` when it was deleted.
    fn server<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Server, NovaCallError>>;
    fn evacuate<'a>(
        &'a self,
        id: &'a str,
        request: &'a EvacuateRequest,
    ) -> BoxFuture<'a, Result<(), NovaCallError>>;
    /// The server's `evacuation` migrations, newest last.
    fn evacuation_migrations<'a>(
        &'a self,
        id: &'a str,
    ) -> BoxFuture<'a, Result<Vec<Migration>, NovaCallError>>;
    /// How many `evacuate` instance actions the server has that started at or
    /// after `since` (`os-instance-actions`).
    fn evacuate_action_count<'a>(
        &'a self,
        id: &'a str,
        since: Timestamp,
    ) -> BoxFuture<'a, Result<u32, NovaCallError>>;
    fn reset_state<'a>(
        &'a self,
        id: &'a str,
        to: ResetTo,
    ) -> BoxFuture<'a, Result<(), NovaCallError>>;
    /// Aggregates that contain `host`.
    fn host_aggregates<'a>(
        &'a self,
        host: &'a str,
    ) -> BoxFuture<'a, Result<Vec<Aggregate>, NovaCallError>>;
    fn add_host_to_aggregate<'a>(
        &'a self,
        aggregate: &'a Aggregate,
        host: &'a str,
    ) -> BoxFuture<'a, Result<(), NovaCallError>>;
}
