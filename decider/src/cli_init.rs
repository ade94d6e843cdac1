//! `vigil-decider init --from-nova`: a config skeleton with one `[[node]]`
//! per nova-compute service, its management address from the hypervisor's
//! `host_ip`, so an operator does not type 200 node blocks by hand.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use vigil_nova::types::{ComputeService, Hypervisor, ServiceState, ServiceStatus};

use crate::cli_exit::Usage;

#[derive(Debug, Args)]
pub struct InitArgs {
    /// Read the nodes from Nova (the only source today; required so the
    /// command says where its nodes come from).
    #[arg(long, required = true)]
    pub from_nova: bool,
    /// The clouds.yaml cloud (else OS_CLOUD or the OS_* variables).
    #[arg(long)]
    pub cloud: Option<String>,
    /// Directory of the sensor token files (one per node, NAME.token).
    #[arg(long, default_value = "/etc/vigil/tokens")]
    pub token_dir: PathBuf,
    /// Write here instead of stdout; an existing file is never overwritten.
    #[arg(long, short)]
    pub output: Option<PathBuf>,
}

/// One node of the skeleton.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkeletonNode {
    pub name: String,
    pub address: Option<IpAddr>,
    /// Nova's view when it is worth a comment (disabled, down).
    pub note: Option<String>,
}

/// Joins services and hypervisors: a hypervisor belongs to a service when
/// its `service.host` (or, before that field, its hostname or the
/// hostname's first label) is the service's host.
pub fn nodes_from_nova(
    services: &[ComputeService],
    hypervisors: &[Hypervisor],
) -> Vec<SkeletonNode> {
    let mut by_host: BTreeMap<&str, IpAddr> = BTreeMap::new();
    for h in hypervisors {
        let Some(ip) = h.host_ip else { continue };
        let host = h.service_host.as_deref().unwrap_or(&h.hypervisor_hostname);
        by_host.entry(host).or_insert(ip);
        let short = h.hypervisor_hostname.split('.').next().unwrap_or_default();
        by_host.entry(short).or_insert(ip);
    }
    let mut out: Vec<SkeletonNode> = services
        .iter()
        .map(|s| {
            let mut notes = Vec::new();
            if s.status == ServiceStatus::Disabled {
                notes.push("disabled in Nova".to_string());
            }
            if s.state == ServiceState::Down {
                notes.push("down in Nova now".to_string());
            }
            let address = by_host.get(s.host.as_str()).copied();
            if address.is_none() {
                notes.push("no hypervisor host_ip: add its management address".to_string());
            }
            SkeletonNode {
                name: s.host.clone(),
                address,
                note: (!notes.is_empty()).then(|| notes.join("; ")),
            }
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out.dedup_by(|a, b| a.name == b.name);
    out
}

/// A TOML string value, quoted and escaped.
fn quoted(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// The config text.
pub fn skeleton(
    nodes: &[SkeletonNode],
    token_dir: &std::path::Path,
    cloud: Option<&str>,
) -> String {
    let mut s = String::new();
    s.push_str(
        "# Written by `vigil-decider init --from-nova`: one [[node]] per nova-compute\n\
         # service, its address from the hypervisor's host_ip. Review it: set each\n\
         # node's `segment` (the rack or power feed it shares), create the token\n\
         # files, add [recovery] (see decider.example.toml), then\n\
         # `vigil-decider serve --config FILE --check`.\n\n",
    );
    s.push_str("[nova]\n");
    match cloud {
        Some(c) => {
            let _ = writeln!(s, "cloud = {}", quoted(c));
        }
        None => s.push_str("# cloud = \"mycloud\"   # else OS_CLOUD / OS_* of the service\n"),
    }
    for n in nodes {
        s.push('\n');
        if let Some(note) = &n.note {
            let _ = writeln!(s, "# {}: {note}", n.name);
        }
        s.push_str("[[node]]\n");
        let _ = writeln!(s, "name = {}", quoted(&n.name));
        let token = token_dir.join(format!("{}.token", n.name));
        let _ = writeln!(s, "token_file = {}", quoted(&token.display().to_string()));
        match n.address {
            Some(ip) => {
                let _ = writeln!(s, "management_addresses = [{}]", quoted(&ip.to_string()));
            }
            None => s.push_str("management_addresses = []\n"),
        }
        s.push_str("segment = \"default\"\n");
    }
    s
}

/// Reads Nova and writes the skeleton; returns how many nodes it wrote.
pub async fn init(a: &InitArgs) -> anyhow::Result<usize> {
    if let Some(out) = &a.output {
        if out.exists() {
            return Err(Usage(format!(
                "{} exists; init never overwrites a config (remove it or pick another --output)",
                out.display()
            ))
            .into());
        }
    }
    let vars = std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .collect();
    let cfg = crate::config::NovaConfig {
        cloud: a.cloud.clone(),
        ..crate::config::NovaConfig::default()
    };
    let client = crate::nova_adapter::client(&cfg, vars)?;
    let services = client
        .list_compute_services()
        .await
        .context("listing Nova's compute services")?;
    let hypervisors = client
        .list_hypervisors()
        .await
        .context("listing Nova's hypervisors")?;
    let nodes = nodes_from_nova(&services, &hypervisors);
    if nodes.is_empty() {
        anyhow::bail!("Nova lists no nova-compute service: nothing to write");
    }
    let text = skeleton(&nodes, &a.token_dir, a.cloud.as_deref());
    match &a.output {
        Some(out) => {
            // create_new: refuses a file that appeared since the check.
            use std::io::Write as _;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(out)
                .with_context(|| format!("creating {}", out.display()))?;
            f.write_all(text.as_bytes())
                .with_context(|| format!("writing {}", out.display()))?;
        }
        None => print!("{text}"),
    }
    Ok(nodes.len())
}

pub async fn run(a: &InitArgs) -> i32 {
    match init(a).await {
        Ok(n) => {
            eprintln!("vigil-decider: {n} node(s) from Nova");
            crate::cli_exit::OK
        }
        Err(e) => {
            eprintln!("vigil-decider: {e:#}");
            crate::cli_exit::code_for(&e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(host: &str, status: &str, state: &str) -> ComputeService {
        serde_json::from_value(serde_json::json!({
            "id": host, "binary": "nova-compute", "host": host,
            "status": status, "state": state, "forced_down": false,
        }))
        .expect("service")
    }

    fn hypervisor(name: &str, service_host: Option<&str>, ip: Option<&str>) -> Hypervisor {
        Hypervisor {
            id: name.into(),
            hypervisor_hostname: name.into(),
            service_host: service_host.map(str::to_string),
            host_ip: ip.map(|i| i.parse().expect("ip")),
            state: None,
            status: None,
        }
    }

    #[test]
    fn joins_services_with_hypervisor_addresses_and_parses_as_config() {
        let services = [
            service("c2", "enabled", "up"),
            service("c1", "disabled", "up"),
            service("c3", "enabled", "down"),
        ];
        let hypervisors = [
            hypervisor("c1.example.net", None, Some("192.0.2.1")),
            hypervisor("hv-2", Some("c2"), Some("192.0.2.2")),
        ];
        let nodes = nodes_from_nova(&services, &hypervisors);
        let names: Vec<_> = nodes.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["c1", "c2", "c3"]);
        assert_eq!(nodes[0].address, Some("192.0.2.1".parse().expect("ip")));
        assert_eq!(nodes[1].address, Some("192.0.2.2".parse().expect("ip")));
        assert!(nodes[0]
            .note
            .as_deref()
            .is_some_and(|n| n.contains("disabled")));
        assert!(nodes[2]
            .note
            .as_deref()
            .is_some_and(|n| n.contains("down") && n.contains("host_ip")));
        let text = skeleton(
            &nodes,
            std::path::Path::new("/etc/vigil/tokens"),
            Some("prod"),
        );
        let cfg = crate::config::Config::parse(&text, std::path::Path::new("init.toml"))
            .expect("the skeleton is a config");
        assert_eq!(cfg.nodes.len(), 3);
        assert_eq!(cfg.nova.cloud.as_deref(), Some("prod"));
        assert_eq!(
            cfg.nodes[0].token_file,
            PathBuf::from("/etc/vigil/tokens/c1.token")
        );
    }
}
