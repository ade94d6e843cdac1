//! How the CLI shows nodes to people (tables) and to tools (JSON).

use serde_json::{json, Value};
use std::fmt::Write;
use vigil_proto::v1;

/// "dead", "needs-attention", … as PRODUCT.md names verdicts.
pub fn verdict_name(v: i32) -> &'static str {
    match v1::Verdict::try_from(v).unwrap_or(v1::Verdict::Unspecified) {
        v1::Verdict::Unspecified => "unknown",
        v1::Verdict::Healthy => "healthy",
        v1::Verdict::Maintenance => "maintenance",
        v1::Verdict::Degraded => "degraded",
        v1::Verdict::Suspect => "suspect",
        v1::Verdict::Dead => "dead",
        v1::Verdict::Fencing => "fencing",
        v1::Verdict::Fenced => "fenced",
        v1::Verdict::Evacuating => "evacuating",
        v1::Verdict::Recovered => "recovered",
        v1::Verdict::NeedsAttention => "needs-attention",
    }
}

/// The verdict named as `verdict_name` names it.
pub fn verdict_from_name(name: &str) -> Option<v1::Verdict> {
    (1..)
        .map_while(|i| v1::Verdict::try_from(i).ok())
        .find(|v| verdict_name(*v as i32) == name)
}

fn secs(ms: u64) -> String {
    vigil_verdict::fmt_secs(std::time::Duration::from_millis(ms))
}

fn ago(since_ms: i64, now_ms: i64) -> String {
    let d = u64::try_from(now_ms.saturating_sub(since_ms)).unwrap_or(0);
    format!("{} ago", secs(d))
}

fn heartbeat(n: &v1::Node) -> String {
    match &n.sensor {
        Some(s) if s.has_heartbeat => secs(s.heartbeat_age_ms),
        _ => "never".to_string(),
    }
}

fn nova(n: &v1::Node) -> String {
    match &n.nova {
        Some(nv) if !nv.reachable => "unreachable".to_string(),
        Some(nv) if nv.state.is_empty() => "not listed".to_string(),
        Some(nv) => {
            let mut s = format!("{}/{}", nv.state, nv.status);
            if nv.forced_down {
                s.push_str(" forced");
            }
            if nv.updated_at_stalled_ms >= 5000 {
                let _ = write!(s, " (stalled {})", secs(nv.updated_at_stalled_ms));
            }
            s
        }
        None => "-".to_string(),
    }
}

fn pings(n: &v1::Node) -> String {
    let count = |host: bool| {
        let all: Vec<_> = n
            .pings
            .iter()
            .filter(|p| (p.role == "host") == host)
            .collect();
        (
            all.iter().filter(|p| p.answering).count(),
            all.len(),
            all.iter().filter(|p| !p.probe_error.is_empty()).count(),
        )
    };
    let (ha, ht, he) = count(true);
    let (ia, it, ie) = count(false);
    let mut s = format!("host {ha}/{ht} inst {ia}/{it}");
    if he + ie > 0 {
        s.push_str(&format!(" ({} not probed)", he + ie));
    }
    s
}

fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let mut t: String = s.chars().take(max.saturating_sub(1)).collect();
    t.push('…');
    t
}

/// The `nodes` table.
pub fn nodes_table(nodes: &[v1::Node], now_ms: i64) -> String {
    let header = [
        "NODE",
        "VERDICT",
        "SINCE",
        "HEARTBEAT",
        "NOVA",
        "PINGS",
        "REASON",
    ];
    let rows: Vec<[String; 7]> = nodes
        .iter()
        .map(|n| {
            [
                n.name.clone(),
                verdict_name(n.verdict).to_string(),
                ago(n.since_unix_ms, now_ms),
                heartbeat(n),
                nova(n),
                pings(n),
                truncate(n.reasons.first().map(String::as_str).unwrap_or(""), 90),
            ]
        })
        .collect();
    let mut widths = header.map(|h| h.chars().count());
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r.iter()) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    let line = |out: &mut String, cells: &[String]| {
        let mut l = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                l.push_str(c);
            } else {
                let _ = write!(l, "{c:<w$}  ", w = widths[i]);
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(&mut out, &header.map(str::to_string));
    for r in &rows {
        line(&mut out, r);
    }
    if nodes.is_empty() {
        out.push_str(
            "(no nodes: add [[node]] entries to the decider's config, or enable enrolment)\n",
        );
    }
    out
}

/// The `node NAME` view.
pub fn node_detail(n: &v1::Node, now_ms: i64) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "node      {}", n.name);
    let _ = writeln!(
        o,
        "verdict   {} (since {})",
        verdict_name(n.verdict),
        ago(n.since_unix_ms, now_ms)
    );
    if !n.incident_id.is_empty() {
        let _ = writeln!(o, "incident  {}", n.incident_id);
    }
    let _ = writeln!(o, "reasons");
    for r in &n.reasons {
        let _ = writeln!(o, "  - {r}");
    }
    if let Some(s) = &n.sensor {
        let _ = writeln!(o, "sensor");
        if s.has_heartbeat {
            let _ = writeln!(
                o,
                "  stream     {}",
                if s.connected { "connected" } else { "closed" }
            );
            let _ = writeln!(
                o,
                "  heartbeat  {} ago, seq {}, boot {}",
                secs(s.heartbeat_age_ms),
                s.seq,
                s.boot_id
            );
            let _ = writeln!(
                o,
                "  gaps       {} missed, {} reboot(s)",
                s.seq_gaps, s.boot_changes
            );
            let _ = writeln!(
                o,
                "  system uuid {}",
                if s.system_uuid.is_empty() {
                    "unknown (BMC identity cannot be verified)"
                } else {
                    &s.system_uuid
                }
            );
            if let Some(hb) = &s.latest {
                let _ = writeln!(o, "  mode       {}", hb.mode().as_str_name());
                if let Some(nc) = &hb.nova_compute {
                    let _ = writeln!(
                        o,
                        "  nova-compute {} (pid {}, blocked {})",
                        nc.state().as_str_name(),
                        nc.pid,
                        secs(nc.blocked_ms)
                    );
                }
                for i in &hb.instances {
                    let _ = writeln!(
                        o,
                        "  instance   {} pid {} {} cpu +{} ms",
                        i.uuid,
                        i.pid,
                        if i.alive { "alive" } else { "gone" },
                        i.cpu_ns_delta / 1_000_000
                    );
                }
                for t in &hb.blocked_tasks {
                    let _ = writeln!(
                        o,
                        "  blocked    {} (pid {}) {}",
                        t.comm,
                        t.pid,
                        secs(t.blocked_ms)
                    );
                }
                for d in &hb.device_stalls {
                    let _ = writeln!(
                        o,
                        "  stall      {} {} in flight, oldest {}",
                        if d.name.is_empty() {
                            &d.device
                        } else {
                            &d.name
                        },
                        d.in_flight,
                        secs(d.oldest_ms)
                    );
                }
            }
        } else {
            let _ = writeln!(o, "  never heard from");
        }
    }
    if let Some(nv) = &n.nova {
        let _ = writeln!(o, "nova");
        if nv.reachable {
            let _ = writeln!(
                o,
                "  service    {} {} (id {})",
                nv.state, nv.status, nv.service_id
            );
            let _ = writeln!(
                o,
                "  updated_at {} (unchanged for {})",
                nv.updated_at,
                secs(nv.updated_at_stalled_ms)
            );
            if nv.forced_down {
                let _ = writeln!(o, "  forced down");
            }
            if !nv.disabled_reason.is_empty() {
                let _ = writeln!(o, "  disabled   {}", nv.disabled_reason);
            }
            let _ = writeln!(o, "  instances  {}", nv.instance_count);
        }
        if !nv.error.is_empty() {
            let _ = writeln!(o, "  error      {}", nv.error);
        }
    }
    let _ = writeln!(o, "pings");
    if n.pings.is_empty() {
        let _ = writeln!(o, "  (no addresses)");
    }
    for p in &n.pings {
        let state = if !p.probe_error.is_empty() {
            format!("cannot probe: {}", p.probe_error)
        } else if p.answering {
            format!("answering, {:.2} ms", p.rtt_ms)
        } else if p.has_answered {
            format!("silent, last answer {} ago", secs(p.last_answer_age_ms))
        } else {
            "never answered".to_string()
        };
        let _ = writeln!(o, "  {:<16} {:<12} {state}", p.address, p.role);
    }
    o
}

/// A node as JSON (stable field names, verdicts by name).
pub fn node_json(n: &v1::Node) -> Value {
    let sensor = n.sensor.as_ref().map(|s| {
        json!({
            "connected": s.connected,
            "has_heartbeat": s.has_heartbeat,
            "heartbeat_age_ms": s.heartbeat_age_ms,
            "seq": s.seq,
            "boot_id": s.boot_id,
            "seq_gaps": s.seq_gaps,
            "boot_changes": s.boot_changes,
            "system_uuid": s.system_uuid,
            "latest": s.latest.as_ref().map(|hb| json!({
                "mode": hb.mode().as_str_name(),
                "interval_ms": hb.interval_ms,
                "sensor_version": hb.sensor_version,
                "nova_compute": hb.nova_compute.as_ref().map(|nc| json!({"state": nc.state().as_str_name(), "pid": nc.pid, "blocked_ms": nc.blocked_ms})),
                "instances": hb.instances.iter().map(|i| json!({"uuid": i.uuid, "name": i.name, "pid": i.pid, "alive": i.alive, "cpu_ns_delta": i.cpu_ns_delta, "exited": i.exited})).collect::<Vec<_>>(),
                "blocked_tasks": hb.blocked_tasks.iter().map(|t| json!({"pid": t.pid, "comm": t.comm, "blocked_ms": t.blocked_ms, "d_share": t.d_share})).collect::<Vec<_>>(),
                "device_stalls": hb.device_stalls.iter().map(|d| json!({"device": d.device, "name": d.name, "in_flight": d.in_flight, "oldest_ms": d.oldest_ms})).collect::<Vec<_>>(),
                "failed_probes": hb.health.as_ref().map(|h| h.failed_probes.clone()).unwrap_or_default(),
            })),
        })
    });
    let nova = n.nova.as_ref().map(|nv| {
        json!({
            "reachable": nv.reachable, "state": nv.state, "status": nv.status, "forced_down": nv.forced_down,
            "disabled_reason": nv.disabled_reason, "updated_at": nv.updated_at,
            "updated_at_stalled_ms": nv.updated_at_stalled_ms, "instance_count": nv.instance_count,
            "error": nv.error, "service_id": nv.service_id,
        })
    });
    json!({
        "name": n.name,
        "verdict": verdict_name(n.verdict),
        "since_unix_ms": n.since_unix_ms,
        "reasons": n.reasons,
        "sensor": sensor,
        "nova": nova,
        "pings": n.pings.iter().map(|p| json!({
            "address": p.address, "role": p.role, "answering": p.answering, "rtt_ms": p.rtt_ms,
            "has_answered": p.has_answered, "last_answer_age_ms": p.last_answer_age_ms,
            "probe_error": p.probe_error,
        })).collect::<Vec<_>>(),
        "incident_id": n.incident_id,
    })
}

pub fn change_json(c: &v1::VerdictChange) -> Value {
    json!({"node": c.node, "from": verdict_name(c.from), "to": verdict_name(c.to), "reasons": c.reasons, "at_unix_ms": c.at_unix_ms})
}

pub fn change_line(c: &v1::VerdictChange) -> String {
    format!(
        "{}  {} → {}  {}",
        c.node,
        verdict_name(c.from),
        verdict_name(c.to),
        c.reasons.first().map(String::as_str).unwrap_or("")
    )
}

/// `vigil-decider cluster --format json`.
pub fn cluster_json(c: &v1::Cluster) -> Value {
    json!({
        "enabled": c.enabled,
        "me": c.me,
        "role": c.role,
        "leader": c.leader,
        "term": c.term,
        "since_unix_ms": c.since_unix_ms,
        "detail": c.detail,
        "views": c.views.iter().map(|v| json!({
            "decider": v.decider,
            "at_unix_ms": v.at_unix_ms,
            "nodes": v.nodes.iter().map(|n| json!({
                "node": n.node,
                "verdict": n.verdict,
                "sensor_fresh": n.sensor_fresh,
                "ping_answers": n.ping_answers,
            })).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    })
}

fn sighting(n: &v1::NodeSighting) -> String {
    let mut seen = vec![];
    if n.sensor_fresh {
        seen.push("sensor fresh");
    }
    if n.ping_answers {
        seen.push("answers ping");
    }
    if seen.is_empty() {
        seen.push("no sign of life");
    }
    format!("{} ({})", n.verdict, seen.join(", "))
}

/// `vigil-decider cluster`.
pub fn cluster_text(c: &v1::Cluster, now_ms: i64) -> String {
    if !c.enabled {
        return "this decider runs alone (no [cluster] in its config)\n".into();
    }
    let mut s = String::new();
    if c.leader.is_empty() {
        s.push_str(&format!("leader:  none known ({})\n", c.detail));
    } else {
        s.push_str(&format!(
            "leader:  {} (term {}, since {} ago)\n",
            c.leader,
            c.term,
            age_ms(now_ms.saturating_sub(c.since_unix_ms))
        ));
    }
    s.push_str(&format!("this:    {} ({})\n", c.me, c.role));
    if !c.detail.is_empty() && !c.leader.is_empty() {
        s.push_str(&format!("detail:  {}\n", c.detail));
    }
    for v in &c.views {
        s.push_str(&format!(
            "view of {} ({} ago):\n",
            v.decider,
            age_ms(now_ms.saturating_sub(v.at_unix_ms))
        ));
        for n in &v.nodes {
            s.push_str(&format!("  {:<16} {}\n", n.node, sighting(n)));
        }
    }
    s
}

/// Each decider's sighting of one node, for `node NAME --format json`.
pub fn node_views_json(c: &v1::Cluster, node: &str) -> Value {
    Value::Object(
        c.views
            .iter()
            .filter_map(|v| {
                let n = v.nodes.iter().find(|n| n.node == node)?;
                Some((
                    v.decider.clone(),
                    json!({"verdict": n.verdict, "sensor_fresh": n.sensor_fresh, "ping_answers": n.ping_answers, "at_unix_ms": v.at_unix_ms}),
                ))
            })
            .collect(),
    )
}

/// Each decider's sighting of one node, for `node NAME`.
pub fn node_views_text(c: &v1::Cluster, node: &str, now_ms: i64) -> String {
    let mut s = format!(
        "Seen by each decider (leader {}, term {}):\n",
        if c.leader.is_empty() {
            "none known"
        } else {
            &c.leader
        },
        c.term
    );
    for v in &c.views {
        if let Some(n) = v.nodes.iter().find(|n| n.node == node) {
            s.push_str(&format!(
                "  {:<12} {} ({} ago)\n",
                v.decider,
                sighting(n),
                age_ms(now_ms.saturating_sub(v.at_unix_ms))
            ));
        }
    }
    s
}

fn age_ms(ms: i64) -> String {
    let ms = u64::try_from(ms).unwrap_or(0);
    if ms < 10_000 {
        format!("{:.1} s", ms as f64 / 1000.0)
    } else {
        humantime::format_duration(std::time::Duration::from_secs(ms / 1000)).to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_shows_every_column() {
        let n = v1::Node {
            name: "compute1".into(),
            verdict: v1::Verdict::Degraded as i32,
            since_unix_ms: 1_000,
            reasons: vec![
                "nova-compute blocked 312 s in D state; 14/14 instances progressing".into(),
            ],
            sensor: Some(v1::SensorWitness {
                has_heartbeat: true,
                heartbeat_age_ms: 400,
                ..Default::default()
            }),
            nova: Some(v1::NovaWitness {
                reachable: true,
                state: "down".into(),
                status: "enabled".into(),
                updated_at_stalled_ms: 40_000,
                ..Default::default()
            }),
            pings: vec![v1::PingTarget {
                address: "198.51.100.11".into(),
                role: "host".into(),
                answering: true,
                ..Default::default()
            }],
            incident_id: String::new(),
        };
        let t = nodes_table(&[n], 13_000);
        assert!(t.starts_with("NODE"), "{t}");
        for want in [
            "compute1",
            "degraded",
            "12 s ago",
            "0.4 s",
            "down/enabled (stalled 40 s)",
            "host 1/1 inst 0/0",
            "nova-compute blocked 312 s",
        ] {
            assert!(t.contains(want), "missing {want:?} in\n{t}");
        }
    }

    #[test]
    fn the_cluster_says_who_leads_since_when_and_each_view() {
        let c = v1::Cluster {
            enabled: true,
            me: "ctl2".into(),
            role: "follower".into(),
            leader: "ctl1".into(),
            term: 42,
            since_unix_ms: 1_000,
            detail: String::new(),
            views: vec![v1::DeciderView {
                decider: "ctl3".into(),
                at_unix_ms: 60_500,
                nodes: vec![v1::NodeSighting {
                    node: "compute1".into(),
                    verdict: "dead".into(),
                    sensor_fresh: false,
                    ping_answers: false,
                }],
            }],
        };
        let t = cluster_text(&c, 61_000);
        assert!(t.contains("leader:  ctl1 (term 42, since 1m ago)"), "{t}");
        assert!(t.contains("this:    ctl2 (follower)"), "{t}");
        assert!(t.contains("view of ctl3 (0.5 s ago)"), "{t}");
        assert!(
            t.contains("compute1") && t.contains("dead (no sign of life)"),
            "{t}"
        );
        let n = node_views_json(&c, "compute1");
        assert_eq!(n["ctl3"]["verdict"], "dead");
        let alone = cluster_text(&v1::Cluster::default(), 0);
        assert!(alone.contains("runs alone"), "{alone}");
    }
}
