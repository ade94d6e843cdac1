//! Vigil's Nova client (`vigil-nova`, the decider's `vigil_nova::NovaClient`
//! behind a CLI) against the lab's real Keystone and Nova: password and
//! application-credential auth, compute services and hypervisors, servers
//! across projects, and one evacuation flow by hand (disable, force down,
//! evacuate, poll, migrations, instance-action count). Root only (the lab).
//!
//! Each `vigil-nova` call is a fresh process, so every call pays one Keystone
//! authentication (≈0.3–0.4 s, bcrypt); the figures printed (`took_ms`,
//! `auth_ms`, `poll median`) separate that from the calls themselves.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use vigil_tests::lab::{Fault, Lab};
use vigil_tests::{bins, tier, wait};

fn lab() -> &'static Lab {
    Lab::shared().expect("bring the lab up (`tests/lab/lab up`)")
}

/// Runs `vigil-nova ARGS` with the lab's clouds.yaml (or `clouds`), returns
/// (exit code, JSON on stdout or Null, stderr).
fn nova_cli_with(clouds: &Path, cloud: &str, args: &[&str]) -> (i32, Value, String) {
    let out = Command::new(bins::bin("vigil-nova"))
        .env("OS_CLIENT_CONFIG_FILE", clouds)
        .env("OS_CLOUD", cloud)
        .env_remove("OS_AUTH_URL")
        .args(args)
        .output()
        .expect("running vigil-nova");
    let doc = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    (
        out.status.code().unwrap_or(-1),
        doc,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `vigil-nova ARGS` as the lab's admin; panics with stderr unless it succeeds.
fn nova_cli(args: &[&str]) -> Value {
    let info = lab().info();
    let (code, doc, stderr) = nova_cli_with(&info.clouds_yaml, &info.cloud, args);
    assert_eq!(code, 0, "vigil-nova {}: {stderr}", args.join(" "));
    doc
}

fn keystone_url() -> String {
    let url = lab()
        .info()
        .controller
        .endpoints
        .get("keystone")
        .cloned()
        .unwrap_or_else(|| format!("http://{}:5000/v3", lab().info().controller.mgmt_ip));
    if url.trim_end_matches('/').ends_with("/v3") {
        url.trim_end_matches('/').to_owned()
    } else {
        format!("{}/v3", url.trim_end_matches('/'))
    }
}

fn http() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .expect("http client")
}

/// A raw Keystone call with the lab admin's token; the JSON answer.
fn keystone(method: reqwest::Method, path: &str, body: Option<Value>, token: &str) -> Value {
    let url = format!("{}{path}", keystone_url());
    let mut req = http()
        .request(method.clone(), &url)
        .header("X-Auth-Token", token);
    if let Some(b) = &body {
        req = req.json(b);
    }
    let resp = req.send().unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    let status = resp.status();
    let text = resp.text().unwrap_or_default();
    assert!(status.is_success(), "{method} {url}: {status} {text}");
    serde_json::from_str(&text).unwrap_or(Value::Null)
}

/// A variable from the lab's openrc (`export A=x B=y` lines).
fn openrc(var: &str) -> String {
    let text = std::fs::read_to_string(&lab().info().openrc).expect("reading the lab's openrc");
    text.split_whitespace()
        .filter_map(|w| w.split_once('='))
        .find(|(k, _)| *k == var)
        .map(|(_, v)| v.trim_matches(|c| c == '"' || c == '\'').to_owned())
        .unwrap_or_else(|| panic!("{var} not in the lab's openrc"))
}

#[test]
fn nova_auth_password_and_application_credential() {
    if !tier::root("nova_auth_password_and_application_credential", "the lab") {
        return;
    }
    // Password, from the lab's clouds.yaml.
    let auth = nova_cli(&["auth"]);
    let roles: Vec<&str> = auth["roles"]
        .as_array()
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    assert!(roles.contains(&"admin"), "{auth:#}");
    assert!(
        auth["compute_endpoint"]
            .as_str()
            .is_some_and(|u| u.contains(":8774/")),
        "{auth:#}"
    );
    let max = auth["versions"]["max"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let mv = auth["microversion"].as_str().unwrap_or_default().to_owned();
    assert!(!max.is_empty() && !mv.is_empty(), "{auth:#}");
    eprintln!(
        "password auth: {} ms, version discovery {} ms, compute {} (max {max}, sending {mv})",
        auth["auth_ms"], auth["versions_ms"], auth["compute_endpoint"]
    );

    // Application credential: created for this test, used by id and by
    // name + user, deleted at the end.
    let user_id = auth["user_id"].as_str().expect("user_id").to_owned();
    let token = lab().token().expect("lab token");
    let name = format!("vigil-nova-test-{}", std::process::id());
    let created = keystone(
        reqwest::Method::POST,
        &format!("/users/{user_id}/application_credentials"),
        Some(json!({"application_credential": {"name": name,
            "description": "vigil-nova lab test; deleted by the test"}})),
        &token,
    );
    let cred_id = created["application_credential"]["id"]
        .as_str()
        .expect("application credential id")
        .to_owned();
    let secret = created["application_credential"]["secret"]
        .as_str()
        .expect("application credential secret")
        .to_owned();
    let dir = tempfile::tempdir().expect("tempdir");
    let clouds = dir.path().join("clouds.yaml");
    let secure = dir.path().join("secure.yaml");
    let region = openrc("OS_REGION_NAME");
    std::fs::write(
        &clouds,
        format!(
            "clouds:\n  by-id:\n    auth_type: v3applicationcredential\n    auth:\n      auth_url: {k}\n      application_credential_id: {cred_id}\n    region_name: {region}\n    interface: public\n  by-name:\n    auth_type: v3applicationcredential\n    auth:\n      auth_url: {k}\n      application_credential_name: {name}\n      username: {u}\n      user_domain_name: {d}\n    region_name: {region}\n",
            k = keystone_url(),
            u = openrc("OS_USERNAME"),
            d = openrc("OS_USER_DOMAIN_NAME"),
        ),
    )
    .expect("writing clouds.yaml");
    // The secret only in secure.yaml, as operators keep it.
    std::fs::write(
        &secure,
        format!("clouds:\n  by-id:\n    auth:\n      application_credential_secret: {secret}\n  by-name:\n    auth:\n      application_credential_secret: {secret}\n"),
    )
    .expect("writing secure.yaml");
    let run = |cloud: &str, args: &[&str]| {
        let out = Command::new(bins::bin("vigil-nova"))
            .env("OS_CLIENT_CONFIG_FILE", &clouds)
            .env("OS_CLIENT_SECURE_FILE", &secure)
            .env("OS_CLOUD", cloud)
            .args(args)
            .output()
            .expect("running vigil-nova");
        let doc: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        (out.status.code().unwrap_or(-1), doc, stderr)
    };
    for cloud in ["by-id", "by-name"] {
        let (code, doc, stderr) = run(cloud, &["auth"]);
        assert_eq!(code, 0, "application credential ({cloud}): {stderr}");
        assert_eq!(doc["user_id"].as_str(), Some(user_id.as_str()), "{doc:#}");
        eprintln!(
            "application credential ({cloud}) auth: {} ms",
            doc["auth_ms"]
        );
        let (code, doc, stderr) = run(cloud, &["services"]);
        assert_eq!(code, 0, "services with an application credential: {stderr}");
        assert!(
            doc["services"].as_array().is_some_and(|s| !s.is_empty()),
            "{doc:#}"
        );
        // The secret never appears in what the CLI prints.
        assert!(!doc.to_string().contains(&secret) && !stderr.contains(&secret));
    }
    keystone(
        reqwest::Method::DELETE,
        &format!("/users/{user_id}/application_credentials/{cred_id}"),
        None,
        &token,
    );

    // Wrong password: an authentication error (exit 2), never "unreachable".
    std::fs::write(
        &clouds,
        format!(
            "clouds:\n  wrong:\n    auth:\n      auth_url: {}\n      username: {}\n      password: not-the-password\n      project_name: {}\n      user_domain_name: Default\n      project_domain_name: Default\n",
            keystone_url(),
            openrc("OS_USERNAME"),
            openrc("OS_PROJECT_NAME"),
        ),
    )
    .expect("writing clouds.yaml");
    let (code, _, stderr) = nova_cli_with(&clouds, "wrong", &["auth"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("401") && !stderr.contains("not-the-password"),
        "{stderr}"
    );
}

#[test]
fn nova_compute_services_and_hypervisors() {
    if !tier::root("nova_compute_services_and_hypervisors", "the lab") {
        return;
    }
    let lab = lab();
    let doc = nova_cli(&["services"]);
    let services = doc["services"].as_array().cloned().unwrap_or_default();
    let hosts: BTreeSet<&str> = services.iter().filter_map(|s| s["host"].as_str()).collect();
    for node in lab.node_names() {
        assert!(
            hosts.contains(node.as_str()),
            "no nova-compute on {node}: {doc:#}"
        );
    }
    for s in &services {
        assert_eq!(s["binary"], "nova-compute", "{s:#}");
        // UUID ids at the negotiated microversion (≥ 2.53).
        assert_eq!(s["id"].as_str().map(str::len), Some(36), "{s:#}");
        assert!(s["updated_at"].as_str().is_some(), "{s:#}");
    }
    // Management addresses: each node's hypervisor host_ip is its mgmt IP.
    let hyps = nova_cli(&["hypervisors"]);
    let host_ips: BTreeMap<&str, &str> = hyps["hypervisors"]
        .as_array()
        .map(|h| {
            h.iter()
                .filter_map(|h| Some((h["service_host"].as_str()?, h["host_ip"].as_str()?)))
                .collect()
        })
        .unwrap_or_default();
    for n in &lab.info().nodes {
        assert_eq!(
            host_ips.get(n.name.as_str()).copied(),
            Some(n.mgmt_ip.as_str()),
            "{hyps:#}"
        );
    }
    // The witness's poll: one client, one token, repeated listings.
    let polls = nova_cli(&["poll-services", "--count", "20", "--interval", "100ms"]);
    let median = polls["median_ms"].as_f64().unwrap_or(f64::MAX);
    let first = polls["polls"][0]["ms"].as_f64().unwrap_or(f64::MAX);
    eprintln!(
        "os-services poll: first {first:.1} ms (token validated by nova), median {median:.1} ms, max {} ms over 20",
        polls["max_ms"]
    );
    assert!(median < 1000.0, "{polls:#}");
}

/// A second project with one server of its own on `node`, booted through
/// Nova as that project (admin role there, so it may name the host).
fn boot_in_other_project(node: &str) -> String {
    let token = lab().token().expect("lab token");
    let project = "vigil-nova-test";
    let found = keystone(
        reqwest::Method::GET,
        &format!("/projects?name={project}"),
        None,
        &token,
    );
    let project_id = match found["projects"].as_array().and_then(|p| p.first()) {
        Some(p) => p["id"].as_str().expect("project id").to_owned(),
        None => keystone(
            reqwest::Method::POST,
            "/projects",
            Some(json!({"project": {"name": project, "domain_id": "default",
                "description": "vigil-nova lab test: servers in a second project"}})),
            &token,
        )["project"]["id"]
            .as_str()
            .expect("project id")
            .to_owned(),
    };
    let me = nova_cli(&["auth"]);
    let user_id = me["user_id"].as_str().expect("user id");
    let roles = keystone(reqwest::Method::GET, "/roles?name=admin", None, &token);
    let role_id = roles["roles"][0]["id"].as_str().expect("admin role id");
    let url = format!(
        "{}/projects/{project_id}/users/{user_id}/roles/{role_id}",
        keystone_url()
    );
    let resp = http()
        .put(&url)
        .header("X-Auth-Token", &token)
        .send()
        .expect("role assignment");
    assert!(resp.status().is_success(), "PUT {url}: {}", resp.status());
    // A token scoped to the second project.
    let resp = http()
        .post(format!("{}/auth/tokens", keystone_url()))
        .json(
            &json!({"auth": {"identity": {"methods": ["password"], "password": {"user": {
            "name": openrc("OS_USERNAME"), "domain": {"name": openrc("OS_USER_DOMAIN_NAME")},
            "password": openrc("OS_PASSWORD")}}},
            "scope": {"project": {"id": project_id}}}}),
        )
        .send()
        .expect("token for the second project");
    assert!(
        resp.status().is_success(),
        "token for {project}: {}",
        resp.status()
    );
    let other_token = resp
        .headers()
        .get("x-subject-token")
        .and_then(|v| v.to_str().ok())
        .expect("X-Subject-Token")
        .to_owned();
    let c = &lab().info().controller;
    let nova = c.endpoints.get("nova").expect("nova endpoint");
    // The lab's instance network (cloud.json, written by the lab's cloud).
    let cloud_json = vigil_tests::lab::lab_dir().join("state/cloud.json");
    let cloud: Value = serde_json::from_str(
        &std::fs::read_to_string(&cloud_json).expect("reading the lab's cloud.json"),
    )
    .expect("parsing the lab's cloud.json");
    let net = cloud["network_id"]
        .as_str()
        .expect("network_id in cloud.json")
        .to_owned();
    let resp = http()
        .post(format!("{nova}/servers"))
        .header("X-Auth-Token", &other_token)
        .header("X-OpenStack-Nova-API-Version", "2.74")
        .json(&json!({"server": {"name": "vigil-nova-other-project",
            "imageRef": c.image_id.clone().expect("image id"),
            "flavorRef": c.flavor_id.clone().expect("flavor id"),
            "networks": [{"uuid": net}], "host": node}}))
        .send()
        .expect("boot in the second project");
    let status = resp.status();
    let doc: Value = resp.json().unwrap_or(Value::Null);
    assert!(status.is_success(), "boot in {project}: {status} {doc}");
    doc["server"]["id"].as_str().expect("server id").to_owned()
}

fn delete_server(id: &str) {
    let _ = lab().nova().and_then(|n| {
        n.call(
            reqwest::Method::DELETE,
            &format!("/servers/{id}"),
            "2.1",
            None,
        )
    });
}

#[test]
fn nova_servers_across_projects() {
    if !tier::root("nova_servers_across_projects", "the lab") {
        return;
    }
    let lab = lab();
    let _x = lab.exclusive();
    let node = lab.node_names().last().cloned().expect("a lab node");
    lab.heal(&[&node]).expect("heal");
    lab.reset_services().expect("reset services");
    let mine = lab.boot(1, &node).expect("boot in the admin project");
    let other = boot_in_other_project(&node);
    let _restore = Restore {
        node: node.clone(),
        servers: vec![mine[0].id.clone(), other.clone()],
    };
    let (_, took) = wait::until(
        "the second project's server ACTIVE",
        Duration::from_secs(120),
        Duration::from_millis(500),
        || {
            let s = nova_cli(&["server", &other]);
            if s["server"]["status"] == "ACTIVE" {
                Ok(())
            } else {
                Err(s["server"]["status"].clone())
            }
        },
    )
    .unwrap_or_else(|e| panic!("{e}"));
    eprintln!("second project's server ACTIVE in {took:?}");
    let doc = nova_cli(&["servers", "--host", &node]);
    let servers = doc["servers"].as_array().cloned().unwrap_or_default();
    let ids: BTreeSet<&str> = servers.iter().filter_map(|s| s["id"].as_str()).collect();
    let tenants: BTreeSet<&str> = servers
        .iter()
        .filter_map(|s| s["tenant_id"].as_str())
        .collect();
    assert!(
        ids.contains(other.as_str()) && ids.contains(mine[0].id.as_str()),
        "{doc:#}"
    );
    assert!(
        tenants.len() >= 2,
        "servers of one project only: {tenants:?}"
    );
    for s in &servers {
        assert_eq!(s["host"].as_str(), Some(node.as_str()), "{s:#}");
        let addrs = s["addresses"].as_array().cloned().unwrap_or_default();
        assert!(
            addrs.iter().all(|a| a["version"] == 4 || a["version"] == 6),
            "{s:#}"
        );
    }
    eprintln!(
        "{} servers on {node} across {} projects, listed in {} ms",
        servers.len(),
        tenants.len(),
        doc["took_ms"]
    );
}

/// Polls one server until it is `want` on a host other than `from`.
fn wait_moved(id: &str, from: &str, want: &str) -> (Value, Duration, Vec<f64>) {
    let mut poll_ms = Vec::new();
    let (doc, took) = wait::until(
        &format!("server {id} {want} off {from}"),
        Duration::from_secs(180),
        Duration::from_millis(250),
        || {
            let t = Instant::now();
            let s = nova_cli(&["server", id]);
            poll_ms.push(t.elapsed().as_secs_f64() * 1e3);
            let srv = &s["server"];
            if srv["status"] == "ERROR" {
                panic!("server {id} went to ERROR: {srv:#}");
            }
            if srv["status"] == want
                && srv["task_state"].is_null()
                && srv["host"].as_str() != Some(from)
            {
                Ok(srv.clone())
            } else {
                Err((
                    srv["status"].clone(),
                    srv["task_state"].clone(),
                    srv["host"].clone(),
                ))
            }
        },
    )
    .unwrap_or_else(|e| panic!("{e}"));
    (doc, took, poll_ms)
}

#[test]
fn nova_evacuation_flow_by_hand() {
    if !tier::root("nova_evacuation_flow_by_hand", "the lab") {
        return;
    }
    let lab = lab();
    let _x = lab.exclusive();
    let node = lab.node_names().first().cloned().expect("a lab node");
    lab.heal(&[&node]).expect("heal");
    lab.reset_services().expect("reset services");
    let servers = lab.boot(2, &node).expect("boot 2 servers");
    let (running, stopped) = (&servers[0].id, &servers[1].id);
    // Whatever happens below, the node comes back and the servers go.
    let _restore = Restore {
        node: node.clone(),
        servers: vec![running.clone(), stopped.clone()],
    };

    // The node dies (power loss): qemu and nova-compute gone at once.
    lab.fault(Fault::PowerOff, &node).expect("power off");
    let t0 = Instant::now();
    // Disable first, as Vigil's workflow does. Nova still counts the dead
    // compute as up (its last report is seconds old), so it saves the change
    // and then waits on an RPC to the dead node; the client reads it back.
    nova_cli(&[
        "disable",
        "--host",
        &node,
        "--reason",
        "vigil-nova lab test: node powered off",
    ]);
    let disable_took = t0.elapsed();
    let t1 = Instant::now();
    nova_cli(&["force-down", "--host", &node]);
    eprintln!(
        "disable right after the power loss: {disable_took:?} (confirmed by reading back); \
         force-down: {:?}",
        t1.elapsed()
    );
    let svc = nova_cli(&["services"]);
    let me = svc["services"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["host"].as_str() == Some(node.as_str())))
        .cloned()
        .expect("the node's service");
    assert_eq!(me["forced_down"], true, "{me:#}");
    assert_eq!(me["status"], "disabled", "{me:#}");
    assert_eq!(me["state"], "down", "{me:#}");
    assert!(
        me["disabled_reason"]
            .as_str()
            .is_some_and(|r| r.contains("vigil-nova")),
        "{me:#}"
    );

    // One to come back running (≤ 2.94), one with 2.95+ (lands SHUTOFF).
    let a = nova_cli(&["evacuate", running, "--land", "running"]);
    let b = nova_cli(&["evacuate", stopped, "--land", "stopped"]);
    eprintln!(
        "evacuate POSTs: running at mv {} ({} ms), stopped at mv {} ({} ms)",
        a["microversion"], a["post_ms"], b["microversion"], b["post_ms"]
    );
    let mva: Vec<u16> = a["microversion"]
        .as_str()
        .unwrap_or("0.0")
        .split('.')
        .filter_map(|x| x.parse().ok())
        .collect();
    assert!(mva.get(1).is_some_and(|m| *m <= 94), "{a:#}");
    assert_eq!(b["lands_stopped"], true, "{b:#}");

    let (ra, ta, polls_a) = wait_moved(running, &node, "ACTIVE");
    let (rb, tb, polls_b) = wait_moved(stopped, &node, "SHUTOFF");
    let total = t0.elapsed();
    let mut polls: Vec<f64> = polls_a.into_iter().chain(polls_b).collect();
    polls.sort_by(f64::total_cmp);
    eprintln!(
        "evacuated: running one ACTIVE on {} after {ta:?}, stopped one SHUTOFF on {} after {tb:?} more; \
         flow {total:?} from disable; {} polls, median {:.0} ms per `vigil-nova server` process (auth included)",
        ra["host"], rb["host"], polls.len(), polls.get(polls.len() / 2).copied().unwrap_or(0.0)
    );

    // The stopped one can be started where it landed.
    nova_cli(&["start", stopped]);
    wait_moved(stopped, &node, "ACTIVE");

    for id in [running, stopped] {
        let m = nova_cli(&["migrations", "--server", id, "--type", "evacuation"]);
        let migs = m["migrations"].as_array().cloned().unwrap_or_default();
        assert_eq!(migs.len(), 1, "{m:#}");
        assert_eq!(
            migs[0]["source_compute"].as_str(),
            Some(node.as_str()),
            "{m:#}"
        );
        let acts = nova_cli(&["actions", id]);
        assert_eq!(
            acts["counts"]["evacuate"], 1,
            "exactly one evacuate action: {acts:#}"
        );
    }
}

/// Heals the node, re-enables every service and deletes the test's servers,
/// also when the test fails half-way (the lab is shared by every test).
struct Restore {
    node: String,
    servers: Vec<String>,
}

impl Drop for Restore {
    fn drop(&mut self) {
        let lab = lab();
        if let Err(e) = lab.heal(&[&self.node]) {
            eprintln!("restoring {}: heal failed: {e:#}", self.node);
        }
        if let Err(e) = lab.reset_services() {
            eprintln!("restoring {}: reset-services failed: {e:#}", self.node);
        }
        for id in &self.servers {
            delete_server(id);
        }
    }
}
