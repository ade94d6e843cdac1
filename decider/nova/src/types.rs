//! Typed views of Nova's answers. Fields Nova may omit (by microversion or
//! policy) are `Option`s; ids that are integers before 2.53 and UUIDs after
//! are `String`s either way.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::SystemTime;

use serde::{Deserialize, Deserializer, Serialize};

/// `state` of a compute service, as Nova computes it from `updated_at` and
/// `service_down_time` (and `forced_down`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ServiceState {
    Up,
    Down,
    #[serde(other)]
    Unknown,
}

/// `status` of a compute service: `disabled` is set by an operator (or by us).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ServiceStatus {
    Enabled,
    Disabled,
    #[serde(other)]
    Unknown,
}

/// One `nova-compute` service from `GET /os-services`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct ComputeService {
    /// UUID from microversion 2.53, an integer (as text) before.
    #[serde(deserialize_with = "string_or_number")]
    pub id: String,
    pub binary: String,
    pub host: String,
    pub state: ServiceState,
    pub status: ServiceStatus,
    /// Absent before 2.11 (then false).
    #[serde(default)]
    pub forced_down: bool,
    /// Nova's naive-UTC timestamp of the last service report, as sent; compare
    /// successive values rather than with the local clock.
    #[serde(default)]
    pub updated_at: Option<String>,
    #[serde(default)]
    pub disabled_reason: Option<String>,
    #[serde(default)]
    pub zone: Option<String>,
}

impl ServiceState {
    /// `up`, `down` or `unknown`.
    pub fn as_str(&self) -> &'static str {
        match self {
            ServiceState::Up => "up",
            ServiceState::Down => "down",
            ServiceState::Unknown => "unknown",
        }
    }
}

impl ServiceStatus {
    /// `enabled`, `disabled` or `unknown`.
    pub fn as_str(&self) -> &'static str {
        match self {
            ServiceStatus::Enabled => "enabled",
            ServiceStatus::Disabled => "disabled",
            ServiceStatus::Unknown => "unknown",
        }
    }
}

impl ComputeService {
    /// `updated_at` as a time (Nova sends UTC without a zone suffix).
    pub fn updated_at_time(&self) -> Option<SystemTime> {
        parse_nova_time(self.updated_at.as_deref()?)
    }
}

/// A hypervisor from `GET /os-hypervisors/detail`, for management addresses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Hypervisor {
    pub id: String,
    pub hypervisor_hostname: String,
    /// The compute service's host name (often equal to the hypervisor name).
    pub service_host: Option<String>,
    pub host_ip: Option<IpAddr>,
    pub state: Option<String>,
    pub status: Option<String>,
}

#[derive(Deserialize)]
pub(crate) struct RawHypervisor {
    #[serde(deserialize_with = "string_or_number")]
    id: String,
    hypervisor_hostname: String,
    #[serde(default)]
    host_ip: Option<String>,
    #[serde(default)]
    state: Option<String>,
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    service: Option<RawHypervisorService>,
}

#[derive(Deserialize)]
struct RawHypervisorService {
    #[serde(default)]
    host: Option<String>,
}

impl From<RawHypervisor> for Hypervisor {
    fn from(r: RawHypervisor) -> Self {
        Hypervisor {
            id: r.id,
            hypervisor_hostname: r.hypervisor_hostname,
            service_host: r.service.and_then(|s| s.host),
            host_ip: r.host_ip.as_deref().and_then(|ip| ip.trim().parse().ok()),
            state: r.state,
            status: r.status,
        }
    }
}

/// A server's `status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ServerStatus {
    Active,
    Build,
    Deleted,
    Error,
    HardReboot,
    Migrating,
    Password,
    Paused,
    Reboot,
    Rebuild,
    Rescue,
    Resize,
    RevertResize,
    Shelved,
    ShelvedOffloaded,
    Shutoff,
    SoftDeleted,
    Suspended,
    Unknown,
    VerifyResize,
    /// A status this crate does not know (a newer Nova).
    #[serde(other)]
    Other,
}

/// One address of a server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServerAddress {
    /// The network name (the key in Nova's `addresses`).
    pub network: String,
    pub ip: IpAddr,
    /// 4 or 6, as Nova says.
    pub version: u8,
    /// `fixed` or `floating` (`OS-EXT-IPS:type`), when Nova says.
    pub kind: Option<String>,
    pub mac: Option<String>,
}

/// The flavor as embedded in the server (2.47+), or just its id before.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct ServerFlavor {
    /// Before 2.47 only the id is given.
    pub id: Option<String>,
    pub original_name: Option<String>,
    pub vcpus: Option<u64>,
    pub ram_mb: Option<u64>,
    pub disk_gb: Option<u64>,
    /// Only shown when the policy lets the caller see them (admins do).
    pub extra_specs: BTreeMap<String, String>,
}

/// A fault recorded on a server (ERROR state).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct ServerFault {
    #[serde(default)]
    pub code: Option<u16>,
    #[serde(default)]
    pub message: Option<String>,
    #[serde(default)]
    pub created: Option<String>,
}

/// A server from `GET /servers/detail` or `GET /servers/{id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Server {
    pub id: String,
    pub name: String,
    pub status: ServerStatus,
    /// The raw status text (useful when `status` is `Other`).
    pub status_text: String,
    pub task_state: Option<String>,
    pub vm_state: Option<String>,
    pub power_state: Option<u8>,
    /// `OS-EXT-SRV-ATTR:host`: the compute service host the server is on.
    pub host: Option<String>,
    pub hypervisor_hostname: Option<String>,
    pub instance_name: Option<String>,
    pub tenant_id: Option<String>,
    pub user_id: Option<String>,
    pub availability_zone: Option<String>,
    pub addresses: Vec<ServerAddress>,
    pub metadata: BTreeMap<String, String>,
    pub flavor: ServerFlavor,
    /// None when booted from volume.
    pub image_id: Option<String>,
    pub fault: Option<ServerFault>,
    pub locked: Option<bool>,
    pub created: Option<String>,
    pub updated: Option<String>,
}

#[derive(Deserialize)]
pub(crate) struct RawServer {
    id: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    status: String,
    #[serde(rename = "OS-EXT-STS:task_state", default)]
    task_state: Option<String>,
    #[serde(rename = "OS-EXT-STS:vm_state", default)]
    vm_state: Option<String>,
    #[serde(rename = "OS-EXT-STS:power_state", default)]
    power_state: Option<u8>,
    #[serde(rename = "OS-EXT-SRV-ATTR:host", default)]
    host: Option<String>,
    #[serde(rename = "OS-EXT-SRV-ATTR:hypervisor_hostname", default)]
    hypervisor_hostname: Option<String>,
    #[serde(rename = "OS-EXT-SRV-ATTR:instance_name", default)]
    instance_name: Option<String>,
    #[serde(rename = "OS-EXT-AZ:availability_zone", default)]
    availability_zone: Option<String>,
    #[serde(default)]
    tenant_id: Option<String>,
    #[serde(default)]
    user_id: Option<String>,
    #[serde(default)]
    addresses: BTreeMap<String, Vec<RawAddress>>,
    #[serde(default, deserialize_with = "string_map")]
    metadata: BTreeMap<String, String>,
    #[serde(default)]
    flavor: Option<RawFlavor>,
    /// `""` when booted from volume, else `{"id": .., "links": ..}`.
    #[serde(default)]
    image: serde_json::Value,
    #[serde(default)]
    fault: Option<ServerFault>,
    #[serde(default)]
    locked: Option<bool>,
    #[serde(default)]
    created: Option<String>,
    #[serde(default)]
    updated: Option<String>,
}

#[derive(Deserialize)]
struct RawAddress {
    addr: String,
    #[serde(default)]
    version: Option<u8>,
    #[serde(rename = "OS-EXT-IPS:type", default)]
    kind: Option<String>,
    #[serde(rename = "OS-EXT-IPS-MAC:mac_addr", default)]
    mac: Option<String>,
}

#[derive(Deserialize)]
struct RawFlavor {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    original_name: Option<String>,
    #[serde(default)]
    vcpus: Option<u64>,
    #[serde(default)]
    ram: Option<u64>,
    #[serde(default)]
    disk: Option<u64>,
    #[serde(default, deserialize_with = "string_map")]
    extra_specs: BTreeMap<String, String>,
}

impl Server {
    /// A server from Nova's JSON (the object under `server` in `GET
    /// /servers/{id}`), as the client parses it: recorded answers in tests.
    pub fn from_json(v: serde_json::Value) -> Result<Server, serde_json::Error> {
        serde_json::from_value::<RawServer>(v).map(Server::from)
    }
}

impl From<RawServer> for Server {
    fn from(r: RawServer) -> Self {
        let status = serde_json::from_value(serde_json::Value::String(r.status.clone()))
            .unwrap_or(ServerStatus::Other);
        let mut addresses = Vec::new();
        for (network, addrs) in r.addresses {
            for a in addrs {
                // An address Nova reports that is not an IP literal cannot be
                // pinged; skip it rather than fail the whole listing.
                let Ok(ip) = a.addr.trim().parse::<IpAddr>() else {
                    tracing::debug!(server = %r.id, addr = %a.addr, "skipping unparsable address");
                    continue;
                };
                let version = a.version.unwrap_or(if ip.is_ipv4() { 4 } else { 6 });
                addresses.push(ServerAddress {
                    network: network.clone(),
                    ip,
                    version,
                    kind: a.kind,
                    mac: a.mac,
                });
            }
        }
        let flavor = r
            .flavor
            .map(|f| ServerFlavor {
                id: f.id,
                original_name: f.original_name,
                vcpus: f.vcpus,
                ram_mb: f.ram,
                disk_gb: f.disk,
                extra_specs: f.extra_specs,
            })
            .unwrap_or_default();
        let image_id = r
            .image
            .get("id")
            .and_then(|i| i.as_str())
            .map(str::to_owned);
        Server {
            id: r.id,
            name: r.name,
            status,
            status_text: r.status,
            task_state: r.task_state,
            vm_state: r.vm_state,
            power_state: r.power_state,
            host: r.host,
            hypervisor_hostname: r.hypervisor_hostname,
            instance_name: r.instance_name,
            tenant_id: r.tenant_id,
            user_id: r.user_id,
            availability_zone: r.availability_zone,
            addresses,
            metadata: r.metadata,
            flavor,
            image_id,
            fault: r.fault,
            locked: r.locked,
            created: r.created,
            updated: r.updated,
        }
    }
}

/// A migration record from `GET /os-migrations`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct Migration {
    #[serde(default, deserialize_with = "opt_string_or_number")]
    pub id: Option<String>,
    /// From 2.59.
    #[serde(default)]
    pub uuid: Option<String>,
    #[serde(default)]
    pub instance_uuid: Option<String>,
    /// `evacuation`, `live-migration`, `migration`, `resize` (2.23+).
    #[serde(default)]
    pub migration_type: Option<String>,
    /// For evacuations: `accepted`, `pre-migrating`, `done`, `failed`,
    /// `error`, later `completed` once the source host cleaned up.
    #[serde(default)]
    pub status: Option<String>,
    #[serde(default)]
    pub source_compute: Option<String>,
    #[serde(default)]
    pub source_node: Option<String>,
    #[serde(default)]
    pub dest_compute: Option<String>,
    #[serde(default)]
    pub dest_node: Option<String>,
    #[serde(default)]
    pub dest_host: Option<String>,
    #[serde(default)]
    pub created_at: Option<String>,
    #[serde(default)]
    pub updated_at: Option<String>,
}

/// One entry of `GET /servers/{id}/os-instance-actions`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct InstanceAction {
    /// e.g. `create`, `evacuate`, `start`, `stop`.
    pub action: String,
    #[serde(default)]
    pub request_id: Option<String>,
    #[serde(default)]
    pub start_time: Option<String>,
    /// From 2.58.
    #[serde(default)]
    pub updated_at: Option<String>,
    #[serde(default)]
    pub message: Option<String>,
    #[serde(default)]
    pub user_id: Option<String>,
    #[serde(default)]
    pub project_id: Option<String>,
}

/// A host aggregate.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct Aggregate {
    #[serde(deserialize_with = "string_or_number")]
    pub id: String,
    #[serde(default)]
    pub uuid: Option<String>,
    pub name: String,
    #[serde(default)]
    pub availability_zone: Option<String>,
    #[serde(default)]
    pub hosts: Vec<String>,
    #[serde(default, deserialize_with = "string_map")]
    pub metadata: BTreeMap<String, String>,
}

pub(crate) fn raw_hypervisor_id(h: &RawHypervisor) -> String {
    h.id.clone()
}

pub(crate) fn raw_server_id(s: &RawServer) -> String {
    s.id.clone()
}

/// Parses Nova's timestamps: `2025-11-01T09:20:15.000000` (naive UTC), with
/// or without a `Z`/`+00:00` suffix.
pub fn parse_nova_time(s: &str) -> Option<SystemTime> {
    humantime::parse_rfc3339_weak(s.trim()).ok()
}

fn string_or_number<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    match serde_json::Value::deserialize(d)? {
        serde_json::Value::String(s) => Ok(s),
        serde_json::Value::Number(n) => Ok(n.to_string()),
        other => Err(serde::de::Error::custom(format!(
            "expected a string or number id, got {other}"
        ))),
    }
}

fn opt_string_or_number<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    match serde_json::Value::deserialize(d)? {
        serde_json::Value::Null => Ok(None),
        serde_json::Value::String(s) => Ok(Some(s)),
        serde_json::Value::Number(n) => Ok(Some(n.to_string())),
        other => Err(serde::de::Error::custom(format!(
            "expected a string or number id, got {other}"
        ))),
    }
}

/// Metadata and extra specs are string maps; tolerate null and non-string
/// values (rendered as JSON) instead of failing a whole listing.
fn string_map<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, String>, D::Error> {
    let v: Option<BTreeMap<String, serde_json::Value>> = Option::deserialize(d)?;
    Ok(v.unwrap_or_default()
        .into_iter()
        .map(|(k, v)| {
            let s = match v {
                serde_json::Value::String(s) => s,
                other => other.to_string(),
            };
            (k, s)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn service_both_id_kinds() -> Result<(), serde_json::Error> {
        let old: ComputeService = serde_json::from_value(json!({
            "id": 7, "binary": "nova-compute", "host": "compute1", "state": "up",
            "status": "enabled", "updated_at": "2025-11-01T09:20:15.000000",
            "disabled_reason": null, "zone": "nova"}))?;
        assert_eq!(old.id, "7");
        assert!(!old.forced_down);
        assert!(old.updated_at_time().is_some());
        let new: ComputeService = serde_json::from_value(json!({
            "id": "8f0a7c1e-6a3b-4b8e-9d53-6f8b1a2c3d4e", "binary": "nova-compute",
            "host": "compute2", "state": "down", "status": "disabled", "forced_down": true,
            "updated_at": null, "disabled_reason": "vigil: incident 42", "zone": "nova"}))?;
        assert_eq!(new.state, ServiceState::Down);
        assert_eq!(new.status, ServiceStatus::Disabled);
        assert!(new.forced_down);
        assert_eq!(new.updated_at_time(), None);
        Ok(())
    }

    #[test]
    fn server_fields() -> Result<(), serde_json::Error> {
        let raw: RawServer = serde_json::from_value(json!({
            "id": "s1", "name": "vm", "status": "ACTIVE",
            "OS-EXT-STS:task_state": null, "OS-EXT-STS:vm_state": "active",
            "OS-EXT-STS:power_state": 1, "OS-EXT-SRV-ATTR:host": "compute1",
            "tenant_id": "p1", "user_id": "u1",
            "addresses": {"vlab-inst": [
                {"addr": "203.0.113.100", "version": 4, "OS-EXT-IPS:type": "fixed"},
                {"addr": "2001:db8::5", "version": 6}]},
            "metadata": {"vigil:evacuate": "false"},
            "flavor": {"original_name": "m1", "vcpus": 1, "ram": 512, "disk": 1,
                       "extra_specs": {"vigil:priority": "10"}},
            "image": {"id": "img1", "links": []}}))?;
        let s = Server::from(raw);
        assert_eq!(s.status, ServerStatus::Active);
        assert_eq!(s.host.as_deref(), Some("compute1"));
        assert_eq!(s.addresses.len(), 2);
        assert_eq!(s.addresses[1].version, 6);
        assert_eq!(
            s.flavor
                .extra_specs
                .get("vigil:priority")
                .map(String::as_str),
            Some("10")
        );
        assert_eq!(s.image_id.as_deref(), Some("img1"));
        let bfv: RawServer = serde_json::from_value(json!({
            "id": "s2", "status": "SOMETHING_NEW", "image": "", "flavor": {"id": "1", "links": []}}))?;
        let s = Server::from(bfv);
        assert_eq!(s.status, ServerStatus::Other);
        assert_eq!(s.status_text, "SOMETHING_NEW");
        assert_eq!(s.image_id, None);
        assert_eq!(s.flavor.id.as_deref(), Some("1"));
        Ok(())
    }
}
