//! `serve --check`'s live half: after the config, token and credential
//! files are read (`cli::preflight`), ask what `serve` will depend on,
//! changing nothing: a Keystone token and Nova's `os-services` (the role
//! the decider needs), and every BMC's power state and system UUID (a BMC
//! that reports another machine than `[[node]] system_uuid` fails it).

use crate::config::Config;
use std::fmt::Write as _;

/// One line per check for the operator, and whether all passed.
pub struct Outcome {
    pub lines: Vec<String>,
    pub ok: bool,
}

/// Refuses a config that watches nothing: no `[[node]]` and no enrolment.
pub fn nodes_configured(cfg: &Config) -> Result<(), String> {
    if cfg.nodes.is_empty() && !cfg.enrolment.enabled {
        return Err(
            "no [[node]] is configured and enrolment is off: the decider would watch nothing; add a [[node]] block per compute node (name, token_file, management_addresses) or turn [enrolment] on"
                .to_string(),
        );
    }
    Ok(())
}

/// Asks Keystone, Nova and the BMCs; never a write, never a power action.
pub async fn live(cfg: &Config, nova: Option<&vigil_nova::NovaClient>) -> Outcome {
    let mut lines = Vec::new();
    let mut ok = true;
    if let Some(nova) = nova {
        let auth_url = nova.config().identity_v3_url();
        match nova.auth_info().await {
            Ok(a) => {
                lines.push(format!(
                    "keystone: ok, token for user {} in project {} (roles {}) from {auth_url}; compute endpoint {}",
                    a.user_id.as_deref().unwrap_or("?"),
                    a.project_name.as_deref().or(a.project_id.as_deref()).unwrap_or("?"),
                    a.roles.join(","),
                    a.compute_endpoint
                ));
                match nova.list_compute_services().await {
                    Ok(services) => {
                        let mut line = format!(
                            "nova: ok, os-services lists {} nova-compute service(s)",
                            services.len()
                        );
                        let missing: Vec<&str> = cfg
                            .nodes
                            .iter()
                            .map(|n| n.name.as_str())
                            .filter(|n| !services.iter().any(|s| s.host == *n))
                            .collect();
                        if !missing.is_empty() {
                            let _ = write!(
                                line,
                                "; warning: no nova-compute for configured node(s) {} (a [[node]] name must be Nova's host name)",
                                missing.join(",")
                            );
                        }
                        lines.push(line);
                    }
                    Err(e) => {
                        ok = false;
                        lines.push(format!(
                            "nova: FAILED listing os-services: {e} (the decider's user needs the admin role, or a policy allowing os-services)"
                        ));
                    }
                }
            }
            Err(e) => {
                ok = false;
                lines.push(format!(
                    "keystone: FAILED getting a token from {auth_url}: {e}"
                ));
            }
        }
    } else {
        lines.push("nova: off (nova.enabled = false), not checked".to_string());
    }
    if let Some(r) = &cfg.recovery {
        // `validate` ran before: every configured UUID is canonical.
        let configured = crate::recovery::bmc_identity::configured(&cfg.nodes).unwrap_or_default();
        let rows = crate::recovery::bmc_identity::checked(
            vigil_recovery::fence::fence_check_identity(
                &r.fencing,
                &vigil_recovery::secret::ProcessEnv,
            )
            .await,
            &configured,
        );
        if rows.is_empty() {
            lines.push("bmc: none configured ([recovery.fencing] names no node)".to_string());
        }
        for row in &rows {
            let (node, level, fencer) = (&row.row.node, row.row.level, &row.row.fencer);
            match &row.row.result {
                Ok(p) => lines.push(format!(
                    "bmc {node} level {level} ({fencer}): ok, power {p}, system UUID {}",
                    row.uuid
                )),
                Err(e) => {
                    ok = false;
                    lines.push(format!(
                        "bmc {node} level {level} ({fencer}): FAILED reading power: {e}"
                    ));
                }
            }
        }
        for w in crate::recovery::bmc_identity::shared(&rows, &configured) {
            lines.push(format!("bmc: {w}"));
        }
        for m in crate::recovery::bmc_identity::mismatches(&rows, &configured) {
            ok = false;
            lines.push(format!("bmc: FAILED: {m}"));
        }
    }
    if let Some(k) = &cfg.kdump {
        let (line, good) = kdump_line(k.listen).await;
        ok &= good;
        lines.push(line);
    }
    if let Some(c) = &cfg.cluster {
        match cluster_line(c).await {
            Ok(l) => lines.push(l),
            Err(e) => {
                ok = false;
                lines.push(format!("etcd: FAILED: {e}"));
            }
        }
    }
    Outcome { lines, ok }
}

/// `[kdump]`: the UDP port can be bound (then let go at once). In use is
/// a warning, not a failure: a running decider holds it.
async fn kdump_line(listen: std::net::SocketAddr) -> (String, bool) {
    match tokio::net::UdpSocket::bind(listen).await {
        Ok(_) => (format!("kdump: ok, UDP {listen} can be bound"), true),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => (
            format!("kdump: warning, UDP {listen} is in use (a running decider? `ss -ulpn` shows who holds it); serve cannot start while it is"),
            true,
        ),
        Err(e) => (
            format!("kdump: FAILED binding UDP {listen}: {e}; free the port or set kdump.listen"),
            false,
        ),
    }
}

/// `[cluster]`: etcd answers (a read of the leader key, which needs a
/// quorum) and who leads now.
async fn cluster_line(c: &vigil_cluster::ClusterConfig) -> Result<String, String> {
    let etcd = vigil_cluster::Etcd::connect(c)
        .await
        .map_err(|e| e.to_string())?;
    let key = c.leader_key();
    let r = etcd
        .call(format!("reading {}", c.leader_key()), |mut cl| {
            let key = key.clone();
            async move { cl.get(key, None).await }
        })
        .await
        .map_err(|e| e.to_string())?;
    let leader = r
        .kvs()
        .first()
        .map(|kv| {
            let who = serde_json::from_slice::<vigil_cluster::leader::LeaderRecord>(kv.value())
                .map(|l| l.name)
                .unwrap_or_else(|_| "(unreadable record)".into());
            format!("{who} leads (term {})", kv.create_revision())
        })
        .unwrap_or_else(|| "nobody leads yet".into());
    Ok(format!(
        "etcd: ok, {} endpoint(s) answer with a quorum; {leader}; this decider is {:?}",
        c.endpoints.len(),
        c.name
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_config_with_no_node_and_no_enrolment_is_refused() {
        let mut cfg = Config::default();
        let e = nodes_configured(&cfg).expect_err("watches nothing");
        assert!(e.contains("[[node]]"), "{e}");
        cfg.enrolment.enabled = true;
        assert!(nodes_configured(&cfg).is_ok(), "nodes may enrol");
    }

    #[tokio::test]
    async fn the_kdump_port_is_tried_and_one_in_use_is_named() {
        let held = std::net::UdpSocket::bind("127.0.0.1:0").expect("hold a UDP port");
        let addr = held.local_addr().expect("its address");
        let (line, ok) = kdump_line(addr).await;
        assert!(
            ok && line.contains("in use") && line.contains(&addr.to_string()),
            "{line}"
        );
        drop(held);
        let (line, ok) = kdump_line(addr).await;
        assert!(ok && line.starts_with("kdump: ok"), "{line}");
        // A foreign address cannot be bound: the line says so and the fix.
        let (line, ok) = kdump_line("192.0.2.1:7410".parse().expect("addr")).await;
        assert!(
            !ok && line.contains("FAILED") && line.contains("kdump.listen"),
            "{line}"
        );
    }
}
