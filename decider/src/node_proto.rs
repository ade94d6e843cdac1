//! A node as operators read it: the operator API's `Node` message and the
//! JSON evidence snapshot stored with an incident. Pure conversions from the
//! node's state, used by the engine, the operator API and recovery alike
//! (so none of them imports another for it).

use crate::node_state::NodeState;
use serde_json::{json, Value};
use vigil_proto::v1;
use vigil_verdict::{Moment, NovaWitness, SensorWitness, ServiceState, Verdict};

pub fn verdict_to_proto(v: Verdict) -> v1::Verdict {
    match v {
        Verdict::Healthy => v1::Verdict::Healthy,
        Verdict::Maintenance => v1::Verdict::Maintenance,
        Verdict::Degraded => v1::Verdict::Degraded,
        Verdict::Suspect => v1::Verdict::Suspect,
        Verdict::Dead => v1::Verdict::Dead,
        Verdict::Fencing => v1::Verdict::Fencing,
        Verdict::Fenced => v1::Verdict::Fenced,
        Verdict::Evacuating => v1::Verdict::Evacuating,
        Verdict::Recovered => v1::Verdict::Recovered,
        Verdict::NeedsAttention => v1::Verdict::NeedsAttention,
    }
}

fn ms(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// How much of a node to show.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detail {
    /// Everything, including the latest heartbeat verbatim (GetNode).
    Full,
    /// Without the latest heartbeat (ListNodes): with thousands of nodes the
    /// full heartbeats would make the answer megabytes long, and a listing
    /// needs only the verdicts and the witnesses' summaries.
    Summary,
}

/// One node as the operator API shows it, ages measured at `now`.
pub fn node_to_proto(st: &NodeState, now: Moment, detail: Detail) -> v1::Node {
    let ev = &st.evidence;
    let sensor = match &ev.sensor {
        SensorWitness::NeverSeen { .. } => v1::SensorWitness::default(),
        SensorWitness::Seen(r) => v1::SensorWitness {
            connected: r.connected,
            has_heartbeat: true,
            heartbeat_age_ms: ms(now.since(r.last_heartbeat_at)),
            seq: r.seq,
            boot_id: r.boot_id.clone(),
            seq_gaps: r.seq_gaps,
            boot_changes: r.boot_changes,
            system_uuid: r.system_uuid.clone(),
            latest: match detail {
                Detail::Full => st.latest_heartbeat.as_deref().cloned(),
                Detail::Summary => None,
            },
        },
    };
    let raw = st.nova_service.as_ref();
    let mut nova = v1::NovaWitness {
        service_id: raw.map(|s| s.id.clone()).unwrap_or_default(),
        updated_at: raw.and_then(|s| s.updated_at.clone()).unwrap_or_default(),
        ..Default::default()
    };
    let service = match &ev.nova {
        NovaWitness::NotPolled { .. } => {
            nova.error = "not polled yet".to_string();
            None
        }
        NovaWitness::Unreachable {
            error, last_known, ..
        } => {
            nova.error = error.clone();
            last_known.as_ref()
        }
        NovaWitness::NotListed { .. } => {
            nova.reachable = true;
            nova.error = "Nova lists no nova-compute service for this host".to_string();
            None
        }
        NovaWitness::Listed(s) => {
            nova.reachable = true;
            Some(s)
        }
    };
    if let Some(s) = service {
        nova.state = match s.state {
            ServiceState::Up => "up",
            ServiceState::Down => "down",
            ServiceState::Unknown => "unknown",
        }
        .to_string();
        nova.status = if s.enabled { "enabled" } else { "disabled" }.to_string();
        nova.forced_down = s.forced_down;
        nova.disabled_reason = s.disabled_reason.clone().unwrap_or_default();
        nova.updated_at_stalled_ms = ms(s.updated_at_stalled);
        nova.instance_count = s
            .instances
            .as_ref()
            .map_or(0, |i| u32::try_from(i.len()).unwrap_or(u32::MAX));
    }
    let pings = ev
        .pings
        .iter()
        .map(|p| v1::PingTarget {
            address: p.address.to_string(),
            role: p.role.label(),
            answering: p.consecutive_failures == 0
                && p.last_answer_at.is_some()
                && p.send_error.is_none(),
            rtt_ms: p.last_rtt.map_or(0.0, |d| d.as_secs_f64() * 1000.0),
            has_answered: p.last_answer_at.is_some(),
            last_answer_age_ms: p.last_answer_at.map_or(0, |t| ms(now.since(t))),
            probe_error: p.send_error.clone().unwrap_or_default(),
        })
        .collect();
    v1::Node {
        name: st.name.clone(),
        verdict: verdict_to_proto(st.tracker.verdict()) as i32,
        since_unix_ms: st.since_unix_ms,
        reasons: st.tracker.reasons().to_vec(),
        sensor: Some(sensor),
        nova: Some(nova),
        pings,
        incident_id: st.incident_id.clone().unwrap_or_default(),
    }
}

/// The evidence a `dead` verdict stood on, as operators read it: the node as
/// `vigil-decider node NAME --json` shows it (verdict, reasons, every
/// witness's latest reading with its age, the latest heartbeat verbatim) plus
/// each witness's opinion. Stored with the incident at decision time.
pub fn evidence_snapshot(st: &NodeState, now: Moment) -> Value {
    let mut v = crate::table::node_json(&node_to_proto(st, now, Detail::Full));
    if let (Some(a), Some(obj)) = (st.tracker.latest(), v.as_object_mut()) {
        obj.insert(
            "opinions".into(),
            json!({
                "sensor": format!("{:?}", a.opinions.sensor).to_lowercase(),
                "nova": format!("{:?}", a.opinions.nova).to_lowercase(),
                "ping": format!("{:?}", a.opinions.ping).to_lowercase(),
            }),
        );
        // Which path made it dead: recovery fences a kdump differently
        // (evacuate first, power off after the dump), also on resume.
        obj.insert(
            "fast_path".into(),
            json!(a.fast_path.as_ref().map(|p| p.label())),
        );
        obj.insert("bmc".into(), bmc_json(&st.evidence.bmc, now));
        obj.insert("kdump".into(), kdump_json(&st.evidence.kdump, now));
        obj.insert(
            "decided_at_unix_ms".into(),
            json!(crate::node_state::unix_ms_now()),
        );
    }
    v
}

fn bmc_json(b: &vigil_verdict::BmcWitness, now: Moment) -> Value {
    use vigil_verdict::{BmcIdentity, BmcPower};
    let identity = match &b.identity {
        BmcIdentity::NoBmc => json!({"state": "no-bmc"}),
        BmcIdentity::Unverified(why) => json!({"state": "unverified", "why": why}),
        BmcIdentity::Mismatch(what) => json!({"state": "mismatch", "what": what}),
        BmcIdentity::Verified { uuid } => json!({"state": "verified", "uuid": uuid}),
    };
    let read = b.last.as_ref().map(|r| {
        let power = match &r.power {
            BmcPower::On => "on".to_string(),
            BmcPower::Off => "off".to_string(),
            BmcPower::Unknown(why) => format!("unknown: {why}"),
        };
        json!({"power": power, "age_ms": u64::try_from(now.since(r.at).as_millis()).unwrap_or(u64::MAX)})
    });
    json!({"identity": identity, "read": read})
}

fn kdump_json(k: &vigil_verdict::KdumpWitness, now: Moment) -> Value {
    match k.last_at {
        None => Value::Null,
        Some(last) => json!({
            "messages": k.messages,
            "from": k.from.map(|a| a.to_string()),
            // Recovery's power_off_after counts from the first message.
            "first_age_ms": k.first_at.map(|f| u64::try_from(now.since(f).as_millis()).unwrap_or(u64::MAX)),
            "last_age_ms": u64::try_from(now.since(last).as_millis()).unwrap_or(u64::MAX),
        }),
    }
}
