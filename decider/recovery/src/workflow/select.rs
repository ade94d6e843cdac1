//! Which instances of a dead node are evacuated, in what order, with which
//! microversion and to which host. Pure: no I/O, no clock.

use crate::config::{DestinationPolicy, EvacuationPolicy, OptMode, ShutoffPolicy};
use crate::workflow::nova::{ComputeService, Microversion, Server, ServerStatus};

/// A server chosen for evacuation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    pub server: Server,
    /// The status it must reach elsewhere: `ACTIVE` or `SHUTOFF`.
    pub expected: ServerStatus,
    pub priority: i64,
    pub microversion: Microversion,
    pub destination: Option<String>,
}

/// A server left where it is, and why (for the journal).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Skipped {
    pub server_id: String,
    pub reason: String,
}

/// `key` in instance metadata, else flavor extra specs, else image properties:
/// the instance's own setting wins over its flavor's, the flavor's over its image's.
fn lookup<'a>(server: &'a Server, key: &str) -> Option<&'a str> {
    server
        .metadata
        .get(key)
        .or_else(|| server.flavor_extra_specs.get(key))
        .or_else(|| server.image_properties.get(key))
        .map(String::as_str)
}

fn truthy(v: &str) -> Option<bool> {
    match v.trim().to_ascii_lowercase().as_str() {
        "true" | "yes" | "1" | "on" => Some(true),
        "false" | "no" | "0" | "off" => Some(false),
        _ => None,
    }
}

/// The microversion for a server that must end in `expected`, given the
/// cloud's maximum.
pub fn microversion_for(
    expected: &ServerStatus,
    policy: &EvacuationPolicy,
    cloud_max: Microversion,
) -> Microversion {
    match expected {
        // From 2.95 Nova leaves evacuated servers stopped: servers that must
        // run go with ≤ 2.94.
        ServerStatus::Shutoff if cloud_max >= policy.stopped_microversion => {
            policy.stopped_microversion
        }
        // Below 2.95 Nova keeps a stopped server stopped anyway.
        _ => policy.run_microversion.min(cloud_max),
    }
}

/// Picks and orders the servers to evacuate from `node`. `healthy` is every
/// compute service (used by `spread`), `spare` the reserved host if any.
pub fn choose(
    servers: &[Server],
    node: &str,
    policy: &EvacuationPolicy,
    cloud_max: Microversion,
    services: &[ComputeService],
    spare: Option<&str>,
) -> (Vec<Candidate>, Vec<Skipped>) {
    let mut chosen = Vec::new();
    let mut skipped = Vec::new();
    for s in servers {
        let skip = |reason: String| Skipped {
            server_id: s.id.clone(),
            reason,
        };
        if s.host.as_deref() != Some(node) {
            skipped.push(skip(format!("not on {node} (host {:?})", s.host)));
            continue;
        }
        let expected = match &s.status {
            ServerStatus::Active | ServerStatus::Error => ServerStatus::Active,
            ServerStatus::Shutoff if policy.shutoff == ShutoffPolicy::Evacuate => {
                ServerStatus::Shutoff
            }
            ServerStatus::Shutoff => {
                skipped.push(skip("SHUTOFF and policy shutoff = skip".into()));
                continue;
            }
            other => {
                skipped.push(skip(format!("status {other} is not evacuated")));
                continue;
            }
        };
        let opted = lookup(s, &policy.opt_key).and_then(truthy);
        let take = match policy.opt {
            OptMode::OptOut => opted != Some(false),
            OptMode::OptIn => opted == Some(true),
        };
        if !take {
            skipped.push(skip(format!(
                "{} = {:?} ({:?})",
                policy.opt_key,
                lookup(s, &policy.opt_key),
                policy.opt
            )));
            continue;
        }
        let priority = lookup(s, &policy.priority_key)
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        let microversion = microversion_for(&expected, policy, cloud_max);
        chosen.push(Candidate {
            server: s.clone(),
            expected,
            priority,
            microversion,
            destination: None,
        });
    }
    // Higher priority first; ties by name then id so the order is stable
    // across a resume.
    chosen.sort_by(|a, b| {
        b.priority
            .cmp(&a.priority)
            .then_with(|| a.server.name.cmp(&b.server.name))
            .then_with(|| a.server.id.cmp(&b.server.id))
    });

    match policy.destination {
        DestinationPolicy::Scheduler => {}
        DestinationPolicy::Reserved => {
            for c in &mut chosen {
                c.destination = spare.map(str::to_string);
            }
        }
        DestinationPolicy::Spread => {
            let mut hosts: Vec<&str> = services
                .iter()
                .filter(|sv| sv.enabled && sv.up && !sv.forced_down && sv.host != node)
                .map(|sv| sv.host.as_str())
                .collect();
            if let Some(sp) = spare {
                if sp != node && !hosts.contains(&sp) {
                    hosts.push(sp);
                }
            }
            hosts.sort_unstable();
            hosts.dedup();
            // Round robin in priority order: the first instances land on
            // different hosts, so Nova's per-host claim lock does not queue them.
            if !hosts.is_empty() {
                for (i, c) in chosen.iter_mut().enumerate() {
                    c.destination = Some(hosts[i % hosts.len()].to_string());
                }
            }
        }
    }
    (chosen, skipped)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn server(id: &str, status: ServerStatus, meta: &[(&str, &str)]) -> Server {
        Server {
            id: id.into(),
            name: id.into(),
            project_id: "p".into(),
            host: Some("c1".into()),
            status,
            task_state: None,
            metadata: meta
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            flavor_extra_specs: BTreeMap::new(),
            image_properties: BTreeMap::new(),
            fault: None,
            updated: None,
        }
    }

    fn svc(host: &str, enabled: bool, up: bool) -> ComputeService {
        ComputeService {
            id: host.into(),
            host: host.into(),
            enabled,
            disabled_reason: None,
            forced_down: false,
            up,
        }
    }

    fn ids(c: &[Candidate]) -> Vec<&str> {
        c.iter().map(|c| c.server.id.as_str()).collect()
    }

    const MAX: Microversion = Microversion::new(2, 100);

    #[test]
    fn selection_table() {
        let p = EvacuationPolicy::default();
        let servers = vec![
            server("a", ServerStatus::Active, &[]),
            server("b", ServerStatus::Error, &[("vigil:priority", "10")]),
            server("c", ServerStatus::Shutoff, &[]),
            server("d", ServerStatus::Active, &[("vigil:evacuate", "false")]),
            server("e", ServerStatus::Other("BUILD".into()), &[]),
        ];
        let (c, s) = choose(&servers, "c1", &p, MAX, &[], None);
        assert_eq!(
            ids(&c),
            ["b", "a"],
            "priority first; SHUTOFF skipped by default; opt-out honoured"
        );
        assert_eq!(s.len(), 3);
        assert!(c
            .iter()
            .all(|c| c.expected == ServerStatus::Active
                && c.microversion == Microversion::new(2, 94)));

        let p = EvacuationPolicy {
            shutoff: ShutoffPolicy::Evacuate,
            ..EvacuationPolicy::default()
        };
        let (c, _) = choose(&servers, "c1", &p, MAX, &[], None);
        let shutoff = c.iter().find(|c| c.server.id == "c").expect("c chosen");
        assert_eq!(
            (shutoff.expected.clone(), shutoff.microversion),
            (ServerStatus::Shutoff, Microversion::new(2, 95))
        );
        let (c, _) = choose(&servers, "c1", &p, Microversion::new(2, 60), &[], None);
        assert!(
            c.iter().all(|c| c.microversion == Microversion::new(2, 60)),
            "capped at the cloud's maximum"
        );

        let p = EvacuationPolicy {
            opt: OptMode::OptIn,
            ..EvacuationPolicy::default()
        };
        let mut opted = server("f", ServerStatus::Active, &[]);
        opted
            .flavor_extra_specs
            .insert("vigil:evacuate".into(), "true".into());
        let mut image_only = server("g", ServerStatus::Active, &[("vigil:evacuate", "false")]);
        image_only
            .image_properties
            .insert("vigil:evacuate".into(), "true".into());
        let (c, _) = choose(
            &[opted, image_only, server("h", ServerStatus::Active, &[])],
            "c1",
            &p,
            MAX,
            &[],
            None,
        );
        assert_eq!(
            ids(&c),
            ["f"],
            "opt-in by flavor; instance metadata beats image"
        );
    }

    #[test]
    fn spread_names_a_different_healthy_host_in_turn() {
        let p = EvacuationPolicy {
            destination: DestinationPolicy::Spread,
            ..EvacuationPolicy::default()
        };
        let servers: Vec<Server> = ["a", "b", "c"]
            .iter()
            .map(|id| server(id, ServerStatus::Active, &[]))
            .collect();
        let services = [
            svc("c1", true, false),
            svc("c2", true, true),
            svc("c3", true, true),
            svc("c4", false, true),
        ];
        let (c, _) = choose(&servers, "c1", &p, MAX, &services, None);
        let dests: Vec<_> = c.iter().map(|c| c.destination.as_deref()).collect();
        assert_eq!(dests, [Some("c2"), Some("c3"), Some("c2")]);
    }
}
