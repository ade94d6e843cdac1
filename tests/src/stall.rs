//! Issue 17's scenario, shared by the CI lab test (`tests/tests/stall_lab.rs`)
//! and `cargo xtask chaos`: a node loses power; right after Vigil's first
//! evacuate call a control-plane service (nova-api, nova-conductor) is
//! frozen (SIGSTOP of its whole process tree) for a while, then carries on.
//! What a user checks afterwards, in Nova itself: every server ACTIVE on
//! another host with exactly one evacuate action, or the incident
//! `needs-attention` naming it; never two evacuate actions; never a server
//! the incident calls recovered that Nova does not show recovered.

use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::Value;

use crate::decider::{evacuate_actions, prepare, server, Decider, Opts};
use crate::lab::{Fault, Lab};
use crate::wait;

/// One chaos scenario.
#[derive(Clone, Debug)]
pub struct Scenario {
    /// `nova-api` or `nova-conductor`.
    pub service: String,
    pub freeze: Duration,
    pub servers: usize,
    /// The node that loses power.
    pub node: String,
}

/// One server's end, as Nova and the incident show it.
#[derive(Clone, Debug, Serialize)]
pub struct ServerEnd {
    pub name: String,
    pub status: String,
    pub host: String,
    pub evacuate_actions: usize,
    /// The incident's word for it (`evacuated`, `failed`, …).
    pub incident_state: String,
}

/// What one run ended with.
#[derive(Clone, Debug, Serialize)]
pub struct RunResult {
    pub service: String,
    pub freeze_secs: f64,
    pub incident_status: String,
    pub incident_reason: String,
    pub servers: Vec<ServerEnd>,
    /// Servers with more than one evacuate action in Nova.
    pub double_evacuations: usize,
    /// Servers the incident calls evacuated that Nova does not show ACTIVE
    /// elsewhere with exactly one evacuate action.
    pub false_reports: usize,
    /// Servers neither recovered once nor named in a needs-attention reason.
    pub unexplained: usize,
    /// Power cut → incident closed.
    pub took_secs: f64,
}

impl RunResult {
    /// Every rule of issue 17 held.
    pub fn ok(&self) -> bool {
        self.double_evacuations == 0 && self.false_reports == 0 && self.unexplained == 0
    }
}

/// Thaws the service when dropped (a panicking test must not leave Nova
/// frozen for the next one; the lab's own helper thaws it too).
struct Thaw<'a>(&'a Lab, String);

impl Drop for Thaw<'_> {
    fn drop(&mut self) {
        if let Err(e) = self.0.thaw(&self.1) {
            eprintln!("thaw {}: {e:#}", self.1);
        }
    }
}

/// Runs one scenario on the lab (the caller holds the lab) and reports what
/// Nova and the incident show. Panics only when the lab itself fails.
pub fn run(lab: &Lab, sc: &Scenario) -> RunResult {
    let (_restore, servers) = prepare(lab, &sc.node, sc.servers);
    let d = Decider::start(
        lab,
        Opts {
            verify_deadline: Some("5m".into()),
            ..Opts::default()
        },
    );
    d.wait_all_healthy(lab);
    let cut = Instant::now();
    lab.fault(Fault::PowerOff, &sc.node).expect("power off");
    // Right after the first evacuate call: the workflow logs "evacuating"
    // just before it sends the POST.
    wait::until(
        "the decider's first evacuate call",
        Duration::from_secs(240),
        Duration::from_millis(20),
        || {
            if d.full_log().contains(" evacuating") {
                Ok(())
            } else {
                Err(format!("verdict {:?}", d.verdict(&sc.node)))
            }
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", d.log()));
    let report = lab
        .freeze(&sc.service, sc.freeze)
        .unwrap_or_else(|e| panic!("freeze {}: {e:#}", sc.service));
    let _thaw = Thaw(lab, sc.service.clone());
    eprintln!("{}", report.did.join("\n"));
    let (_, inc) = d.wait_incident_closed(&sc.node, Duration::from_secs(600));
    let took_secs = cut.elapsed().as_secs_f64();
    let summary = &inc["incident"]["summary"];
    let status = summary["status"].as_str().unwrap_or("").to_string();
    let reason = summary["reason"].as_str().unwrap_or("").to_string();
    let records = inc["incident"]["instances"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let mut ends = Vec::new();
    let (mut doubles, mut falses, mut unexplained) = (0, 0, 0);
    for s in &servers {
        let v = server(lab, &s.id);
        let n = evacuate_actions(lab, &s.id);
        let st = v["status"].as_str().unwrap_or("").to_string();
        let host = v["OS-EXT-SRV-ATTR:host"].as_str().unwrap_or("").to_string();
        let state = records
            .iter()
            .find(|r| r["server_id"] == s.id.as_str())
            .map(|r| r["state"].as_str().unwrap_or("").to_string())
            .unwrap_or_default();
        let recovered = st == "ACTIVE" && host != sc.node && n == 1;
        if n > 1 {
            doubles += 1;
        }
        if state == "evacuated" && !recovered {
            falses += 1;
        }
        let named = status == "needs-attention" && reason.contains(&s.name);
        let accounted = named || (recovered && state == "evacuated");
        if !accounted {
            unexplained += 1;
        }
        ends.push(ServerEnd {
            name: s.name.clone(),
            status: st,
            host,
            evacuate_actions: n,
            incident_state: state,
        });
    }
    if status != "completed" && status != "needs-attention" {
        unexplained += 1;
    }
    RunResult {
        service: sc.service.clone(),
        freeze_secs: sc.freeze.as_secs_f64(),
        incident_status: status,
        incident_reason: reason,
        servers: ends,
        double_evacuations: doubles,
        false_reports: falses,
        unexplained,
        took_secs,
    }
}

/// One line per server, for the test's output and the chaos runner.
pub fn describe(r: &RunResult) -> String {
    let mut s = format!(
        "{} frozen {:.0}s: incident {} after {:.0}s; double evacuations {}, false reports {}, unexplained {}\n",
        r.service,
        r.freeze_secs,
        r.incident_status,
        r.took_secs,
        r.double_evacuations,
        r.false_reports,
        r.unexplained
    );
    for e in &r.servers {
        s.push_str(&format!(
            "  {:<24} {:<8} on {:<10} evacuate actions {}  incident: {}\n",
            e.name, e.status, e.host, e.evacuate_actions, e.incident_state
        ));
    }
    if !r.incident_reason.is_empty() {
        s.push_str(&format!("  reason: {}\n", r.incident_reason));
    }
    s
}

/// The result as one JSON line the chaos runner parses.
pub fn result_line(r: &RunResult) -> String {
    format!(
        "CHAOS-RESULT {}",
        serde_json::to_value(r).unwrap_or(Value::Null)
    )
}
