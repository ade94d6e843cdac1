//! Issue 17's scenarios, shared by the CI lab test (`tests/tests/stall_lab.rs`)
//! and `cargo xtask chaos`: a node loses power; at a chosen moment of the
//! recovery (right after Vigil's first evacuate call, mid-way once some
//! servers landed, or during verify once all landed) a control-plane fault
//! starts and lasts a while: nova-api or nova-conductor frozen (SIGSTOP of
//! its whole process tree), nova-api answering 500, or the database frozen.
//! What a user checks afterwards, in Nova itself: every server ACTIVE on
//! another host with exactly one evacuate action, or the incident
//! `needs-attention` naming it; never two evacuate actions; never a server
//! the incident calls recovered that Nova does not show recovered.

use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::Value;

use crate::decider::{evacuate_actions, prepare, server, Decider, Opts};
use crate::lab::{Fault, Lab, Server};
use crate::wait;

/// The control-plane fault of a scenario.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NovaFault {
    /// SIGSTOP of a service's process tree: `nova-api`, `nova-conductor`,
    /// `mariadb` (the database stalls).
    Freeze(String),
    /// nova-api answers 500: reads refused, writes applied then answered 500.
    Api500,
}

impl NovaFault {
    pub fn name(&self) -> String {
        match self {
            NovaFault::Freeze(s) if s == "mariadb" => "db-stop".into(),
            NovaFault::Freeze(s) => format!("{s}-freeze"),
            NovaFault::Api500 => "nova-api-500".into(),
        }
    }
}

/// When the fault starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Moment {
    /// Right after the decider logs its first evacuate call.
    FirstPost,
    /// Once at least one server is ACTIVE on another host in Nova (all of
    /// them may have by then when Nova is quick).
    Midway,
    /// Once every server is ACTIVE on another host, while the incident is
    /// still open (verify's settle period).
    Verify,
}

impl Moment {
    pub fn parse(s: &str) -> Option<Moment> {
        match s {
            "first-post" => Some(Moment::FirstPost),
            "midway" => Some(Moment::Midway),
            "verify" => Some(Moment::Verify),
            _ => None,
        }
    }
}

/// One chaos scenario.
#[derive(Clone, Debug)]
pub struct Scenario {
    pub fault: NovaFault,
    pub at: Moment,
    pub freeze: Duration,
    pub servers: usize,
    /// The node that loses power.
    pub node: String,
    /// Where to save Nova's raw answers for each server (server, its
    /// evacuation migrations, its instance actions) each time they change
    /// during the run: the unit tests' recorded cases
    /// (decider/recovery/tests/data/).
    pub record: Option<std::path::PathBuf>,
}

/// Saves Nova's raw picture of each server whenever it changes, until
/// stopped; at most `MAX_RECORDS` files. Runs in its own thread so a frozen
/// nova-api only delays it.
struct Recorder {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<usize>>,
}

const MAX_RECORDS: usize = 60;

impl Recorder {
    fn start(lab: &Lab, servers: &[Server], dir: &std::path::Path, tag: &str) -> Option<Recorder> {
        use std::sync::atomic::{AtomicBool, Ordering};
        let nova = lab.nova().ok()?;
        std::fs::create_dir_all(dir).ok()?;
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let ids: Vec<(String, String)> = servers
            .iter()
            .map(|s| (s.id.clone(), s.name.clone()))
            .collect();
        let dir = dir.to_path_buf();
        let tag = tag.to_string();
        let thread = std::thread::spawn(move || {
            let mut seen = std::collections::BTreeSet::new();
            let mut n = 0usize;
            while !flag.load(Ordering::SeqCst) && n < MAX_RECORDS {
                for (id, name) in &ids {
                    let read = || -> anyhow::Result<Value> {
                        Ok(serde_json::json!({
                            "server": nova.get(&format!("/servers/{id}"), "2.96")?,
                            "migrations": nova.get(
                                &format!("/os-migrations?instance_uuid={id}&migration_type=evacuation"),
                                "2.96")?,
                            "instance_actions": nova.get(
                                &format!("/servers/{id}/os-instance-actions"), "2.96")?,
                        }))
                    };
                    let Ok(v) = read() else { continue };
                    let srv = &v["server"]["server"];
                    let key = format!(
                        "{}|{}|{}|{}|{}",
                        srv["status"],
                        srv["OS-EXT-STS:task_state"],
                        srv["OS-EXT-SRV-ATTR:host"] == ids_host(&v),
                        v["migrations"]["migrations"]
                            .as_array()
                            .map(|a| a
                                .iter()
                                .map(|m| m["status"].to_string())
                                .collect::<Vec<_>>()
                                .join(","))
                            .unwrap_or_default(),
                        v["instance_actions"]["instanceActions"]
                            .as_array()
                            .map(|a| a.iter().filter(|x| x["action"] == "evacuate").count())
                            .unwrap_or(0)
                    );
                    if seen.insert(key) {
                        n += 1;
                        let f = dir.join(format!("{tag}-{n:02}-{name}.json"));
                        let _ =
                            std::fs::write(f, serde_json::to_string_pretty(&v).unwrap_or_default());
                    }
                }
                std::thread::sleep(Duration::from_millis(700));
            }
            n
        });
        Some(Recorder {
            stop,
            thread: Some(thread),
        })
    }

    fn finish(mut self) -> usize {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        self.thread.take().and_then(|t| t.join().ok()).unwrap_or(0)
    }
}

/// Whether the server is back on its original host: the key only needs
/// "moved or not", which the source host of its first migration tells.
fn ids_host(v: &Value) -> Value {
    v["migrations"]["migrations"]
        .as_array()
        .and_then(|a| a.first())
        .map(|m| m["source_compute"].clone())
        .unwrap_or(Value::Null)
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
    /// `nova-api-freeze`, `nova-conductor-freeze`, `nova-api-500`, `db-stop`.
    pub service: String,
    pub at: Moment,
    pub freeze_secs: f64,
    /// Servers ACTIVE elsewhere in Nova when the fault started.
    pub landed_at_fault: usize,
    /// The incident was still open when the fault started (false: the fault
    /// came too late to test what it was meant to).
    pub open_at_fault: bool,
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

/// Ends the fault when dropped (a panicking test must not leave Nova
/// broken for the next one; the lab ends it by itself too).
struct Undo<'a>(&'a Lab, NovaFault);

impl Drop for Undo<'_> {
    fn drop(&mut self) {
        let r = match &self.1 {
            NovaFault::Freeze(s) => self.0.thaw(s),
            NovaFault::Api500 => self.0.api_ok(),
        };
        if let Err(e) = r {
            eprintln!("ending {}: {e:#}", self.1.name());
        }
    }
}

/// How many of `servers` Nova shows ACTIVE on a host other than `node`.
fn landed(lab: &Lab, servers: &[Server], node: &str) -> Result<usize, String> {
    let nova = lab.nova().map_err(|e| format!("{e:#}"))?;
    let mut n = 0;
    for s in servers {
        let v = nova
            .get(&format!("/servers/{}", s.id), "2.53")
            .map_err(|e| format!("{e:#}"))?;
        let v = &v["server"];
        if v["status"] == "ACTIVE" && v["OS-EXT-SRV-ATTR:host"] != node {
            n += 1;
        }
    }
    Ok(n)
}

/// Runs one scenario on the lab (the caller holds the lab) and reports what
/// Nova and the incident show. Panics only when the lab itself fails.
pub fn run(lab: &Lab, sc: &Scenario) -> RunResult {
    let (_restore, servers) = prepare(lab, &sc.node, sc.servers);
    if sc.fault == NovaFault::Api500 {
        // The first use restarts nova-api with the filter: before the
        // decider starts, so the restart is not part of the scenario.
        lab.api_500(Duration::from_millis(1))
            .expect("install the api-500 filter");
    }
    let d = Decider::start(
        lab,
        Opts {
            verify_deadline: Some("5m".into()),
            ..Opts::default()
        },
    );
    d.wait_all_healthy(lab);
    let recorder = sc.record.as_deref().and_then(|dir| {
        let tag = format!(
            "{}-{:?}-{}",
            sc.fault.name(),
            sc.at,
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0)
        );
        Recorder::start(lab, &servers, dir, &tag)
    });
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
    if sc.at != Moment::FirstPost {
        let want = if sc.at == Moment::Midway {
            1
        } else {
            servers.len()
        };
        wait::until(
            &format!("{want} server(s) ACTIVE off {}", sc.node),
            Duration::from_secs(300),
            Duration::from_millis(200),
            || match landed(lab, &servers, &sc.node)? {
                n if n >= want => Ok(()),
                n => Err(format!("{n} landed")),
            },
        )
        .unwrap_or_else(|e| panic!("{e}\n{}", d.log()));
    }
    let open_at_fault = d
        .incidents_of(&sc.node)
        .ok()
        .and_then(|l| l.first().map(|i| i["status"] == "open"))
        .unwrap_or(false);
    let landed_at_fault = landed(lab, &servers, &sc.node).unwrap_or(0);
    let report = match &sc.fault {
        NovaFault::Freeze(service) => lab.freeze(service, sc.freeze),
        NovaFault::Api500 => lab.api_500(sc.freeze),
    }
    .unwrap_or_else(|e| panic!("{}: {e:#}", sc.fault.name()));
    let undo = Undo(lab, sc.fault.clone());
    eprintln!("{}", report.did.join("\n"));
    let (_, inc) = d.wait_incident_closed(&sc.node, Duration::from_secs(600));
    let took_secs = cut.elapsed().as_secs_f64();
    // Read Nova's end once the fault is over (a 500 is no answer) and
    // whatever Nova had queued has run: a queued second evacuation after
    // the incident closed is exactly what must be caught.
    drop(undo);
    if let Some(r) = recorder {
        eprintln!("recorded {} distinct Nova picture(s)", r.finish());
    }
    wait::until(
        "Nova idle for the servers (no task state) after the fault",
        Duration::from_secs(180),
        Duration::from_millis(500),
        || {
            let nova = lab.nova().map_err(|e| format!("{e:#}"))?;
            for s in &servers {
                let v = nova
                    .get(&format!("/servers/{}", s.id), "2.53")
                    .map_err(|e| format!("{e:#}"))?;
                if !v["server"]["OS-EXT-STS:task_state"].is_null() {
                    return Err(format!(
                        "{} task {}",
                        s.name, v["server"]["OS-EXT-STS:task_state"]
                    ));
                }
            }
            Ok(())
        },
    )
    .unwrap_or_else(|e| panic!("{e}"));
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
        service: sc.fault.name(),
        at: sc.at,
        freeze_secs: sc.freeze.as_secs_f64(),
        landed_at_fault,
        open_at_fault,
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
        "{} {:.0}s at {:?} ({} landed, incident open: {}): incident {} after {:.0}s; double evacuations {}, false reports {}, unexplained {}\n",
        r.service,
        r.freeze_secs,
        r.at,
        r.landed_at_fault,
        r.open_at_fault,
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
