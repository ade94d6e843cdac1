//! Tests of the lab itself: its nodes, BMCs and faults do what they claim,
//! seen the way an operator (or Vigil) would see them. Root only: the lab
//! uses network namespaces, cgroups and loop devices.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::json;
use vigil_tests::lab::{proc_state, Fault, Lab, Server};
use vigil_tests::{tier, wait};

const DEADLINE: Duration = Duration::from_secs(60);
const EVERY: Duration = Duration::from_millis(200);

fn lab() -> &'static Lab {
    Lab::shared().expect("bring the lab up (`tests/lab/lab up`)")
}

fn host_pings(addr: &str) -> bool {
    Command::new("ping")
        .args(["-c1", "-W1", "-q", addr])
        .output()
        .is_ok_and(|o| o.status.success())
}

fn qemu_uuids(lab: &Lab, node: &str) -> Result<Vec<String>, String> {
    lab.qemu_processes(node)
        .map(|m| m.into_values().collect())
        .map_err(|e| format!("{e:#}"))
}

fn first_ip(s: &Server) -> String {
    s.addresses
        .get("vlab-inst")
        .and_then(|a| a.first())
        .cloned()
        .unwrap_or_else(|| {
            panic!(
                "server {} has no address on network vlab-inst: {:?}",
                s.id, s.addresses
            )
        })
}

/// Until the node's processes are all gone and both BMCs read power off.
fn wait_powered_off(lab: &Lab, node: &str) {
    wait::until(
        &format!("{node}'s cgroup to be empty"),
        DEADLINE,
        EVERY,
        || {
            let pids = lab.node_pids(node).map_err(|e| format!("{e:#}"))?;
            if pids.is_empty() {
                Ok(())
            } else {
                Err(format!("still in the cgroup: {pids:?}"))
            }
        },
    )
    .expect("power off kills every process of the node");
    let redfish = lab.redfish(node).expect("redfish client");
    wait::until(
        &format!("{node}: Redfish PowerState Off and IPMI power off"),
        DEADLINE,
        EVERY,
        || {
            let rf = redfish.power_state().map_err(|e| format!("{e:#}"))?;
            let ipmi = lab.ipmi_power(node).map_err(|e| format!("{e:#}"))?;
            if rf == "Off" && ipmi == "off" {
                Ok(())
            } else {
                Err(format!("redfish {rf}, ipmi {ipmi}"))
            }
        },
    )
    .expect("both BMCs read the power back as off");
}

/// Until the node runs again with a new boot id and its nova-compute reports.
fn wait_powered_on(lab: &Lab, node: &str, old_boot_id: &str) -> String {
    let (boot_id, _) = wait::until(
        &format!("{node}: new boot id and nova-compute running"),
        DEADLINE,
        EVERY,
        || {
            let st = lab.node_status(node).map_err(|e| format!("{e:#}"))?;
            match (&st.boot_id, st.pid("nova-compute")) {
                (Some(b), Some(_)) if st.power == "on" && b != old_boot_id => Ok(b.clone()),
                _ => Err(format!(
                    "power {}, boot id {:?}, pids {:?}",
                    st.power, st.boot_id, st.pids
                )),
            }
        },
    )
    .expect("power on starts the node with a fresh boot id");
    lab.wait_compute(&[node], Duration::from_secs(180))
        .expect("nova-compute reports after power on");
    boot_id
}

#[test]
fn booted_servers_run_as_qemu_processes_in_the_node_and_answer_ping() {
    if !tier::root(
        "booted_servers_run_as_qemu_processes_in_the_node_and_answer_ping",
        "network namespaces",
    ) {
        return;
    }
    let lab = lab();
    let _only_me = lab.exclusive();
    lab.heal(&["compute1"]).expect("heal compute1");

    let servers = lab.boot(2, "compute1").expect("boot 2 servers on compute1");
    assert_eq!(servers.len(), 2);
    for s in &servers {
        assert_eq!(
            s.host.as_deref(),
            Some("compute1"),
            "server {} placed on the asked node",
            s.id
        );
        let ip = first_ip(s);
        wait::until(
            &format!("a qemu process for {} in compute1's cgroup", s.id),
            DEADLINE,
            EVERY,
            || {
                let uuids = qemu_uuids(lab, "compute1")?;
                if uuids.contains(&s.id) {
                    Ok(())
                } else {
                    Err(format!("qemu uuids there: {uuids:?}"))
                }
            },
        )
        .expect("each server is a qemu-named process of its node");
        wait::until(
            &format!("{ip} answering inside compute1 and from the host"),
            DEADLINE,
            EVERY,
            || {
                let inside = lab
                    .ping_from_node("compute1", &ip)
                    .map_err(|e| format!("{e:#}"))?;
                let from_host = host_pings(&ip);
                if inside && from_host {
                    Ok(())
                } else {
                    Err(format!("inside: {inside}, from host: {from_host}"))
                }
            },
        )
        .expect("each server's address answers ping");
    }
    delete_servers(lab, &servers);
}

#[test]
fn redfish_force_off_is_power_loss_and_on_boots_the_node_again() {
    if !tier::root(
        "redfish_force_off_is_power_loss_and_on_boots_the_node_again",
        "network namespaces",
    ) {
        return;
    }
    let lab = lab();
    let _only_me = lab.exclusive();
    let node = "compute2";
    lab.heal(&[node]).expect("heal compute2");
    let redfish = lab.redfish(node).expect("redfish client");
    assert_eq!(redfish.power_state().expect("PowerState"), "On");
    assert!(
        !lab.node_pids(node).expect("pids").is_empty(),
        "a running node has processes"
    );
    let old = lab.boot_id(node).expect("boot id");

    let t = Instant::now();
    redfish.reset("ForceOff").expect("Redfish ForceOff");
    wait_powered_off(lab, node);
    eprintln!(
        "redfish ForceOff -> node off and read back: {:.2?}",
        t.elapsed()
    );

    redfish.reset("On").expect("Redfish On");
    let new = wait_powered_on(lab, node, &old);
    assert_ne!(new, old);
    assert_eq!(redfish.power_state().expect("PowerState"), "On");
}

#[test]
fn ipmi_power_off_is_power_loss_and_power_on_boots_the_node_again() {
    if !tier::root(
        "ipmi_power_off_is_power_loss_and_power_on_boots_the_node_again",
        "network namespaces",
    ) {
        return;
    }
    let lab = lab();
    let _only_me = lab.exclusive();
    let node = "compute3";
    lab.heal(&[node]).expect("heal compute3");
    assert_eq!(lab.ipmi_power(node).expect("IPMI status"), "on");
    let old = lab.boot_id(node).expect("boot id");

    let t = Instant::now();
    lab.ipmi(node, &["chassis", "power", "off"])
        .expect("ipmitool chassis power off");
    wait_powered_off(lab, node);
    eprintln!(
        "ipmi power off -> node off and read back: {:.2?}",
        t.elapsed()
    );

    lab.ipmi(node, &["chassis", "power", "on"])
        .expect("ipmitool chassis power on");
    let new = wait_powered_on(lab, node, &old);
    assert_ne!(new, old);
    assert_eq!(lab.ipmi_power(node).expect("IPMI status"), "on");
}

/// The operator's recovery by hand: force the service down (mv 2.53, by
/// id), then evacuate each server with mv 2.94 (from 2.95 Nova leaves an
/// evacuated server SHUTOFF; see notes/minicloud.md). Returns each server's
/// new host and the time from the first evacuate call to all ACTIVE.
fn evacuate_by_hand(
    nova: &vigil_tests::lab::Nova,
    dead: &str,
    servers: &[Server],
) -> (BTreeMap<String, String>, Duration) {
    let id = compute_service_id(nova, dead);
    nova.call(
        reqwest::Method::PUT,
        &format!("/os-services/{id}"),
        "2.53",
        Some(&json!({"forced_down": true})),
    )
    .unwrap_or_else(|e| panic!("force {dead} down: {e:#}"));
    for s in servers {
        nova.call(
            reqwest::Method::POST,
            &format!("/servers/{}/action", s.id),
            "2.94",
            Some(&json!({"evacuate": {}})),
        )
        .expect("evacuate");
    }
    wait::until(
        "every server ACTIVE on another node",
        Duration::from_secs(180),
        EVERY,
        || {
            let mut moved = BTreeMap::new();
            let mut late = Vec::new();
            for s in servers {
                let doc = nova
                    .get(&format!("/servers/{}", s.id), "2.94")
                    .map_err(|e| format!("{e:#}"))?;
                let srv = &doc["server"];
                let host = srv["OS-EXT-SRV-ATTR:host"]
                    .as_str()
                    .unwrap_or("")
                    .to_string();
                let status = srv["status"].as_str().unwrap_or("");
                if status == "ACTIVE"
                    && srv["OS-EXT-STS:task_state"].is_null()
                    && !host.is_empty()
                    && host != dead
                {
                    moved.insert(s.id.clone(), host);
                } else {
                    late.push(format!("{} {status} on {host}", s.id));
                }
            }
            if late.is_empty() {
                Ok(moved)
            } else {
                Err(format!("not yet: {late:?}"))
            }
        },
    )
    .expect("Nova evacuates every server")
}

fn compute_service_id(nova: &vigil_tests::lab::Nova, host: &str) -> String {
    let svcs = nova
        .get(
            &format!("/os-services?binary=nova-compute&host={host}"),
            "2.53",
        )
        .expect("os-services");
    svcs["services"][0]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("no nova-compute service id for {host}: {svcs}"))
        .to_string()
}

#[test]
fn hand_evacuation_through_nova_makes_the_instances_answer_on_another_node() {
    if !tier::root(
        "hand_evacuation_through_nova_makes_the_instances_answer_on_another_node",
        "network namespaces",
    ) {
        return;
    }
    let lab = lab();
    let _only_me = lab.exclusive();
    let names = lab.node_names();
    let all: Vec<&str> = names.iter().map(String::as_str).collect();
    lab.heal(&all).expect("heal every node");
    lab.reset_services().expect("reset nova-compute services");
    let dead = "compute1";
    let servers = lab.boot(3, dead).expect("boot 3 servers on compute1");
    let nova = lab.nova().expect("nova client");

    lab.fault(Fault::PowerOff, dead)
        .expect("power off compute1");
    for s in &servers {
        assert!(
            !host_pings(&first_ip(s)),
            "{} must not answer once its node is off",
            s.id
        );
    }
    let t = Instant::now();
    let (moved, took) = evacuate_by_hand(&nova, dead, &servers);
    eprintln!("hand evacuation of {} servers, force-down -> all ACTIVE: {:.1?} (since POST evacuate: {took:.1?})", servers.len(), t.elapsed());

    for s in &servers {
        let host = &moved[&s.id];
        let ip = first_ip(s);
        wait::until(
            &format!("{} ({ip}) running and answering on {host}", s.id),
            DEADLINE,
            EVERY,
            || {
                let uuids = qemu_uuids(lab, host)?;
                let inside = lab
                    .ping_from_node(host, &ip)
                    .map_err(|e| format!("{e:#}"))?;
                if uuids.contains(&s.id) && inside && host_pings(&ip) {
                    Ok(())
                } else {
                    Err(format!(
                        "qemu there: {}, answers inside: {inside}",
                        uuids.contains(&s.id)
                    ))
                }
            },
        )
        .expect("an evacuated server answers from its new node");
    }

    lab.heal(&[dead]).expect("power compute1 on again");
    lab.reset_services().expect("un-force compute1");
    delete_servers(lab, &servers);
}

/// A node whose nova-compute kept running through the evacuation of its
/// servers (as when a fenced node powers back on mid-evacuation, fault-matrix
/// case 9): Nova keeps the evacuation records `done` and refuses to un-force
/// the host until nova-compute restarts. `reset-services` (and so every
/// test's clean slate) must get past that, as CI once saw it not do.
#[test]
fn reset_services_restarts_a_nova_compute_that_kept_running_through_an_evacuation() {
    if !tier::root(
        "reset_services_restarts_a_nova_compute_that_kept_running_through_an_evacuation",
        "network namespaces",
    ) {
        return;
    }
    let lab = lab();
    let _only_me = lab.exclusive();
    lab.clean_slate().expect("clean slate");
    let node = "compute1";
    let servers = lab.boot(1, node).expect("boot a server on compute1");
    let nova = lab.nova().expect("nova client");
    let old_pid = lab
        .node_status(node)
        .expect("node status")
        .pid("nova-compute")
        .expect("nova-compute runs on compute1");

    let (moved, _) = evacuate_by_hand(&nova, node, &servers);
    // Nova saves the server ACTIVE a moment before its migration `done`.
    wait::until(
        "the evacuation's migration record `done`",
        DEADLINE,
        EVERY,
        || {
            let doc = nova
                .get("/os-migrations?migration_type=evacuation", "2.59")
                .map_err(|e| format!("{e:#}"))?;
            let status = doc["migrations"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|m| m["instance_uuid"] == servers[0].id.as_str())
                .map(|m| m["status"].clone());
            match status {
                Some(s) if s == "done" => Ok(()),
                other => Err(format!("status {other:?}")),
            }
        },
    )
    .expect("migration done");
    // Precondition: Nova refuses to un-force the host, for this reason.
    let id = compute_service_id(&nova, node);
    let refused = nova
        .call(
            reqwest::Method::PUT,
            &format!("/os-services/{id}"),
            "2.53",
            Some(&json!({"forced_down": false})),
        )
        .expect_err("Nova refuses to force compute1 up while its evacuations are `done`");
    assert!(
        format!("{refused:#}").contains("`done` evacuation migration records remain"),
        "{refused:#}"
    );

    lab.reset_services()
        .expect("reset-services gets past the `done` evacuations");
    let st = lab.node_status(node).expect("node status");
    let svc = st.nova.clone().expect("compute1's nova-compute service");
    assert_eq!(
        (svc.status.as_deref(), svc.forced_down, svc.state.as_deref()),
        (Some("enabled"), Some(false), Some("up")),
        "{svc:?}"
    );
    let new_pid = st.pid("nova-compute").expect("nova-compute runs again");
    assert_ne!(new_pid, old_pid, "nova-compute was restarted");
    // The restart cleaned up the evacuated guest it still ran.
    wait::until(
        "the evacuated guest gone from compute1",
        DEADLINE,
        EVERY,
        || {
            let here = qemu_uuids(lab, node)?;
            if here.contains(&servers[0].id) {
                Err(format!("still on compute1: {here:?}"))
            } else {
                Ok(())
            }
        },
    )
    .expect("nova-compute's start-up removes the evacuated guest");
    assert!(qemu_uuids(lab, &moved[&servers[0].id])
        .expect("qemu processes")
        .contains(&servers[0].id));
    delete_servers(lab, &servers);
}

#[test]
fn hang_fault_blocks_nova_compute_in_uninterruptible_io() {
    if !tier::root(
        "hang_fault_blocks_nova_compute_in_uninterruptible_io",
        "loop devices and FUSE",
    ) {
        return;
    }
    let lab = lab();
    let _only_me = lab.exclusive();
    let node = "compute2";
    lab.heal(&[node]).expect("heal compute2");
    let pid = lab
        .node_status(node)
        .expect("status")
        .pid("nova-compute")
        .expect("nova-compute pid");

    let report = lab
        .fault(Fault::HangNovaCompute, node)
        .expect("hang nova-compute");
    eprintln!("hang: {:#?}", report.did);
    assert_eq!(
        proc_state(pid),
        Some('D'),
        "nova-compute (pid {pid}) itself is in D state"
    );
    let wchan = std::fs::read_to_string(format!("/proc/{pid}/wchan")).unwrap_or_default();
    eprintln!("nova-compute pid {pid} waits in {wchan}");
    assert!(lab
        .node_status(node)
        .expect("status")
        .faults
        .contains(&"hung".to_string()));
    // It stays blocked and stops reporting: for two and a half report
    // intervals its updated_at in Nova does not move and it stays in D (a
    // negative claim needs a window; nothing here waits for a success).
    let interval = lab.info().controller.report_interval.unwrap_or(10);
    let updated_at = || {
        lab.node_status(node)
            .expect("status")
            .nova
            .and_then(|n| n.updated_at)
    };
    // A report sent just before the hang may still be on its way to the
    // conductor: take the reference a moment later.
    std::thread::sleep(Duration::from_secs(1));
    let frozen = updated_at();
    let end = Instant::now() + Duration::from_millis(interval * 2500);
    while Instant::now() < end {
        assert_eq!(proc_state(pid), Some('D'), "nova-compute stays in D state");
        assert_eq!(
            updated_at(),
            frozen,
            "a hung nova-compute must not report to Nova"
        );
        std::thread::sleep(Duration::from_secs(1));
    }

    lab.fault(Fault::UnhangNovaCompute, node).expect("unhang");
    wait::until(
        "nova-compute to leave D state",
        DEADLINE,
        EVERY,
        || match proc_state(pid) {
            Some('D') | None => Err(format!("state {:?}", proc_state(pid))),
            Some(_) => Ok(()),
        },
    )
    .expect("nova-compute resumes when the disk answers");
    lab.wait_compute(&[node], Duration::from_secs(120))
        .expect("nova-compute reports again");
}

#[test]
fn isolation_cuts_the_node_from_the_controller_but_not_its_instances() {
    if !tier::root(
        "isolation_cuts_the_node_from_the_controller_but_not_its_instances",
        "network namespaces",
    ) {
        return;
    }
    let lab = lab();
    let _only_me = lab.exclusive();
    let node = "compute3";
    lab.heal(&[node]).expect("heal compute3");
    let info = lab.node(node).expect("node").clone();
    let servers = lab.boot(1, node).expect("boot 1 server");
    let ip = first_ip(&servers[0]);
    let answers = |addr: &str, what: &str| {
        wait::until(what, Duration::from_secs(15), EVERY, || {
            if host_pings(addr) {
                Ok(())
            } else {
                Err(format!("{addr} does not answer"))
            }
        })
        .expect(what);
    };
    answers(&ip, "the new instance answers from the host");
    answers(&info.mgmt_ip, "the node's management address answers");

    lab.fault(Fault::Isolate, node).expect("isolate");
    assert!(
        !host_pings(&info.mgmt_ip),
        "the controller cannot reach the node's management address"
    );
    assert!(
        !lab.ping_from_node(node, &lab.info().controller.mgmt_ip)
            .expect("ping"),
        "the node cannot reach the controller"
    );
    answers(&ip, "the instance still answers while the node is isolated");
    answers(
        &info.inst_ip,
        "the node's instance-network address still answers",
    );

    lab.fault(Fault::Unisolate, node).expect("unisolate");
    answers(&info.mgmt_ip, "the node's management address answers again");
    delete_servers(lab, &servers);
}

/// Clean-up so the shared lab does not fill up across runs; a server that
/// will not go is reported here and deleted by the next clean slate.
fn delete_servers(lab: &Lab, servers: &[Server]) {
    let ids: Vec<String> = servers.iter().map(|s| s.id.clone()).collect();
    if let Err(e) = lab.delete_servers(&ids) {
        eprintln!("clean-up: {e:#}");
    }
}

#[test]
fn receivers_record_webhooks_and_mail_exactly() {
    if !tier::root(
        "receivers_record_webhooks_and_mail_exactly",
        "network namespaces",
    ) {
        return;
    }
    let lab = lab();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let marker = format!("lab-test-{}-{nanos}", std::process::id());

    let body = format!(r#"{{"marker":"{marker}","node":"compute1"}}"#);
    let http = reqwest::blocking::Client::new();
    let url = format!("{}hooks/vigil", lab.info().receivers.webhook.url);
    let resp = http
        .post(&url)
        .header("X-Vigil-Signature", "sha256=0123")
        .header("Content-Type", "application/json")
        .body(body.clone())
        .send()
        .expect("POST to the webhook receiver");
    assert!(resp.status().is_success());
    let failing = http
        .post(format!("{}status/503", lab.info().receivers.webhook.url))
        .body("x")
        .send();
    assert_eq!(
        failing.expect("POST /status/503").status().as_u16(),
        503,
        "tests can make a delivery fail"
    );
    let got = lab.webhook_requests().expect("webhook log");
    let req = got
        .iter()
        .find(|r| r.body.contains(&marker))
        .expect("the request is recorded");
    assert_eq!(req.method, "POST");
    assert_eq!(req.path, "/hooks/vigil");
    assert_eq!(req.header("x-vigil-signature"), Some("sha256=0123"));
    assert_eq!(
        req.body_bytes().expect("base64 body"),
        body.as_bytes(),
        "exact bytes, for HMAC checks"
    );

    // A plain SMTP dialogue, as a notifier would speak it.
    let smtp = &lab.info().receivers.smtp;
    let mut conn =
        std::net::TcpStream::connect((smtp.host.as_str(), smtp.port)).expect("connect to SMTP");
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut reader = std::io::BufReader::new(conn.try_clone().expect("clone"));
    let mut expect_code = |code: &str| {
        use std::io::BufRead;
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).expect("SMTP reply");
            assert!(line.starts_with(code), "expected {code}, got {line:?}");
            if line.as_bytes().get(3) != Some(&b'-') {
                break;
            }
        }
    };
    let mut send = |line: &str| {
        use std::io::Write;
        conn.write_all(format!("{line}\r\n").as_bytes())
            .expect("SMTP write");
    };
    expect_code("220");
    send("EHLO lab-test");
    expect_code("250");
    send("MAIL FROM:<vigil@lab.test>");
    expect_code("250");
    send("RCPT TO:<ops@lab.test>");
    expect_code("250");
    send("DATA");
    expect_code("354");
    send(&format!(
        "Subject: {marker}\r\nFrom: vigil@lab.test\r\nTo: ops@lab.test\r\n\r\ncompute1 fenced\r\n."
    ));
    expect_code("250");
    send("QUIT");
    let mails = lab.smtp_messages().expect("smtp log");
    let mail = mails
        .iter()
        .find(|m| m.subject == marker)
        .expect("the mail is recorded");
    assert_eq!(mail.mail_from, "vigil@lab.test");
    assert_eq!(mail.rcpt_tos, vec!["ops@lab.test".to_string()]);
    assert!(mail.data.contains("compute1 fenced"));
}

#[test]
fn sensor_runs_in_the_node_and_obeys_start_stop_and_kill() {
    if !tier::root(
        "sensor_runs_in_the_node_and_obeys_start_stop_and_kill",
        "network namespaces",
    ) {
        return;
    }
    // The lab runs the workspace's own sensor (target/<profile>/vigil-sensor).
    let _sensor = vigil_tests::bins::bin("vigil-sensor");
    let lab = lab();
    let _only_me = lab.exclusive();
    let node = "compute1";
    lab.heal(&[node]).expect("heal compute1");
    let sensor_pid = || lab.node_status(node).expect("status").pid("sensor");

    lab.sensor_start(node).expect("sensor start");
    let pid = sensor_pid().expect("a running sensor has a pid");
    assert!(
        lab.node_pids(node).expect("pids").contains(&pid),
        "the sensor lives in the node's cgroup"
    );

    lab.fault(Fault::KillSensor, node).expect("kill the sensor");
    assert_eq!(sensor_pid(), None, "a killed sensor stays dead");
    lab.fault(Fault::Heal, node).expect("heal");
    let again = sensor_pid().expect("heal starts a configured sensor again");
    assert_ne!(again, pid);

    // `lab pid` names the same process `lab status` does, and only a
    // running one (the pid files hold "PID STARTTIME").
    assert_eq!(
        lab.pid(&format!("{node}/sensor")).expect("lab pid"),
        Some(again)
    );
    let api = lab.pid("nova-api").expect("lab pid nova-api");
    assert!(
        api.is_some_and(|p| vigil_tests::lab::proc_state(p).is_some()),
        "lab pid nova-api: {api:?}"
    );
    assert_eq!(lab.pid("no-such-service").expect("lab pid"), None);

    lab.sensor_stop(node).expect("sensor stop");
    assert_eq!(sensor_pid(), None);
    assert_eq!(lab.pid(&format!("{node}/sensor")).expect("lab pid"), None);
    lab.fault(Fault::Heal, node).expect("heal");
    assert_eq!(
        sensor_pid(),
        None,
        "a stopped sensor is not configured any more"
    );
    // `up --sensors` on a lab that is up converges to what was asked.
    let without: Vec<String> = lab
        .node_names()
        .into_iter()
        .filter(|n| lab.node_status(n).is_ok_and(|s| s.pid("sensor").is_none()))
        .collect();
    let said = lab.up_with_sensors().expect("lab up --sensors");
    let back = sensor_pid().unwrap_or_else(|| panic!("up --sensors started no sensor: {said}"));
    assert!(
        said.contains(node),
        "up --sensors did not say it started one: {said}"
    );
    assert!(lab.node_pids(node).expect("pids").contains(&back));
    // Leave the other tests the lab as it was.
    for n in &without {
        lab.sensor_stop(n).expect("sensor stop");
    }
}

/// `/proc/PID/exe`, `cmdline` and `environ` of a running process.
fn proc_exe(pid: i32) -> std::path::PathBuf {
    std::fs::read_link(format!("/proc/{pid}/exe"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/exe: {e}"))
}

fn proc_list(pid: i32, what: &str) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/{what}"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/{what}: {e}"))
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect()
}

/// What ships is what is tested: with `VIGIL_PACKAGED` (`cargo xtask test`
/// sets it) every lab sensor is the packaged file, started with the
/// packaged unit's ExecStart and settings, and the harness's decider is the
/// packaged file started with its unit's ExecStart; the decider then sees
/// every node healthy through those sensors. Asserted on what the kernel
/// says runs (/proc/PID/exe), so a lab that ran the build tree fails it.
/// Without `VIGIL_PACKAGED` (outside CI and `cargo xtask test` as root) it
/// checks the build tree runs instead, and says so.
#[test]
fn lab_sensors_and_harness_deciders_run_the_packaged_files() {
    if !tier::root(
        "lab_sensors_and_harness_deciders_run_the_packaged_files",
        "the lab",
    ) {
        return;
    }
    let started = Instant::now();
    let packaged = vigil_tests::packaged::dir().is_some();
    assert!(
        packaged || !tier::strict(),
        "CI and `cargo xtask test` run the end-to-end tier on the packages: VIGIL_PACKAGED must be set"
    );
    let lab = lab();
    let _only_me = lab.exclusive();
    let nodes = lab.node_names();
    lab.heal(&nodes.iter().map(String::as_str).collect::<Vec<_>>())
        .expect("heal");
    let without: Vec<String> = nodes
        .iter()
        .filter(|n| lab.node_status(n).is_ok_and(|s| s.pid("sensor").is_none()))
        .cloned()
        .collect();
    let said = lab.up_with_sensors().expect("lab up --sensors");
    let lab_dir = &lab.info().lab_dir;
    let pkg_root = lab_dir.join("pkg/vigil-sensor");
    for node in &nodes {
        let pid = lab
            .node_status(node)
            .expect("status")
            .pid("sensor")
            .unwrap_or_else(|| panic!("{node}: no sensor after `up --sensors`: {said}"));
        let exe = proc_exe(pid);
        let argv = proc_list(pid, "cmdline");
        println!(
            "{node}: sensor pid {pid} exe {} argv {argv:?}",
            exe.display()
        );
        if !packaged {
            assert!(
                exe.starts_with(vigil_tests::bins::workspace_root().join("target")),
                "{node}: VIGIL_PACKAGED unset, the lab must run the build tree: {}",
                exe.display()
            );
            continue;
        }
        let want = pkg_root.join("usr/bin/vigil-sensor");
        assert_eq!(
            exe, want,
            "{node}: the sensor running is not the packaged file"
        );
        // The unit's `ExecStart=/usr/bin/vigil-sensor run`, and nothing else:
        // every setting came the unit's way.
        assert_eq!(argv, [want.display().to_string(), "run".into()], "{node}");
        let env: BTreeMap<String, String> = proc_list(pid, "environ")
            .into_iter()
            .filter_map(|kv| kv.split_once('=').map(|(k, v)| (k.into(), v.into())))
            .collect();
        let state = lab_dir.join("state/nodes").join(node);
        // Environment=VIGIL_NODE=%H (a lab node's host name is its name).
        assert_eq!(env.get("VIGIL_NODE"), Some(node), "{node}: {env:?}");
        // Environment=VIGIL_TOKEN_FILE=%d/sensor.token + LoadCredential=.
        let cred = state.join("credentials/sensor.token");
        assert_eq!(
            env.get("VIGIL_TOKEN_FILE").map(String::as_str),
            Some(cred.to_str().expect("utf-8 path")),
            "{node}"
        );
        assert_eq!(
            std::fs::read(&cred).expect("the credential"),
            std::fs::read(state.join("sensor.token")).expect("the node's token"),
            "{node}: the credential is the node's token"
        );
        // EnvironmentFile=/etc/vigil/sensor.env: the shipped file, then the
        // lab's lines.
        let env_file =
            std::fs::read_to_string(state.join("etc/vigil/sensor.env")).expect("sensor.env");
        let shipped = std::fs::read_to_string(pkg_root.join("etc/vigil/sensor.env"))
            .expect("the packaged sensor.env");
        assert!(env_file.starts_with(shipped.trim_end()), "{env_file}");
        assert!(
            env.get("VIGIL_DECIDERS")
                .is_some_and(|d| d.contains("http://198.51.100.1:50051")),
            "{node}: {env:?}"
        );
    }

    let d = vigil_tests::decider::Decider::start(lab, vigil_tests::decider::Opts::default());
    let pid = i32::try_from(d.pid().expect("decider pid")).expect("pid");
    let exe = proc_exe(pid);
    let argv = proc_list(pid, "cmdline");
    println!("decider pid {pid} exe {} argv {argv:?}", exe.display());
    if packaged {
        let pkg = vigil_tests::packaged::package("vigil-decider").expect("decider package");
        assert_eq!(
            exe,
            pkg.bin("vigil-decider"),
            "the decider is not the packaged file"
        );
        // ExecStart=/usr/bin/vigil-decider serve --config /etc/vigil/decider.toml
        assert_eq!(
            argv,
            [
                pkg.bin("vigil-decider").display().to_string(),
                "serve".into(),
                "--config".into(),
                d.config_path().display().to_string(),
            ]
        );
    } else {
        assert!(
            exe.starts_with(vigil_tests::bins::workspace_root().join("target")),
            "{}",
            exe.display()
        );
    }
    // The packaged parts work together: every node healthy, its sensor connected.
    d.wait_all_healthy(lab);
    drop(d);
    // Leave the other tests the lab as it was.
    for n in &without {
        lab.sensor_stop(n).expect("sensor stop");
    }
    println!(
        "packaged lab check took {:.1}s",
        started.elapsed().as_secs_f64()
    );
}
