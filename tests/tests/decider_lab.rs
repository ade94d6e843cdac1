//! The decider against the lab's real Nova and network namespaces (root):
//! it authenticates with the lab's clouds.yaml, sees the compute services,
//! notices a killed nova-compute as stale within one report interval + 4 s
//! (without ever judging the node dead: its host still answers ping), lists a
//! node's servers across projects, and sees a management link go down within
//! one probe round.

use serde_json::Value;
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use vigil_tests::lab::{Fault, Lab};
use vigil_tests::{bins, tier, wait};

/// A `vigil-decider serve` child, killed when dropped (even on panic).
struct Decider {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Drop for Decider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

fn start_decider(lab: &Lab) -> Decider {
    let info = lab.info();
    let dir = tempfile::tempdir().expect("temp dir");
    let port = free_port();
    let mut cfg = format!(
        "[server]\nlisten = \"127.0.0.1:{port}\"\n[metrics]\nenabled = false\n\
         [nova]\ncloud = \"{}\"\npoll_interval = \"1s\"\ninstances_interval = \"10m\"\n\
         [ping]\ninterval = \"1s\"\ntimeout = \"500ms\"\nreference_addresses = [\"{}\"]\n\
         [policy.nova]\nreport_interval = \"{}s\"\n",
        info.cloud,
        info.controller.mgmt_ip,
        info.controller.report_interval.unwrap_or(10),
    );
    for (i, n) in info.nodes.iter().enumerate() {
        // The last node gets no address: the decider must learn it from
        // Nova (the hypervisor's host_ip).
        let addresses = if i + 1 == info.nodes.len() && i > 0 {
            String::new()
        } else {
            format!("management_addresses = [\"{}\"]\n", n.mgmt_ip)
        };
        cfg.push_str(&format!(
            "[[node]]\nname = \"{}\"\ntoken_file = \"{}\"\n{addresses}",
            n.name,
            n.sensor_token_path.display(),
        ));
    }
    let path = dir.path().join("decider.toml");
    std::fs::write(&path, cfg).expect("write decider config");
    let log = std::fs::File::create(dir.path().join("decider.log")).expect("decider log");
    let child = Command::new(bins::bin("vigil-decider"))
        .args(["serve", "--config"])
        .arg(&path)
        .env("OS_CLIENT_CONFIG_FILE", &info.clouds_yaml)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start vigil-decider serve");
    Decider {
        child,
        url: format!("http://127.0.0.1:{port}"),
        _dir: dir,
    }
}

/// `vigil-decider node NAME --json` against the running decider.
fn node(d: &Decider, name: &str) -> Result<Value, String> {
    let out = Command::new(bins::bin("vigil-decider"))
        .args(["node", name, "--json", "--server", &d.url])
        .output()
        .map_err(|e| format!("running vigil-decider node: {e}"))?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    serde_json::from_slice(&out.stdout).map_err(|e| format!("parsing node JSON: {e}"))
}

fn log_of(d: &Decider) -> String {
    std::fs::read_to_string(d._dir.path().join("decider.log")).unwrap_or_default()
}

#[test]
fn decider_judges_lab_nodes_with_real_nova_and_pings() {
    if !tier::root(
        "decider_judges_lab_nodes_with_real_nova_and_pings",
        "the lab runs Nova and nodes in network namespaces",
    ) {
        return;
    }
    let lab = Lab::shared().expect("lab up");
    let _exclusive = lab.exclusive();
    let names = lab.node_names();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    lab.heal(&refs).expect("heal every node");
    lab.wait_compute(&refs, Duration::from_secs(120))
        .expect("nova-compute up on every node");
    let d = start_decider(lab);

    // Authenticated and polling: every lab node's service is up and enabled.
    for name in &names {
        wait::until(
            &format!("{name}: Nova witness up"),
            Duration::from_secs(60),
            Duration::from_millis(300),
            || {
                let n = node(&d, name)?;
                match (
                    n["nova"]["reachable"].as_bool(),
                    n["nova"]["state"].as_str(),
                ) {
                    (Some(true), Some("up")) => Ok(n),
                    _ => Err(format!("{n}\n--- decider log ---\n{}", log_of(&d))),
                }
            },
        )
        .expect("the decider sees the lab's compute services");
    }

    // A node configured without a management address is pinged at the
    // hypervisor's host_ip from Nova, and it answers.
    if names.len() > 1 {
        let last = names.last().expect("a node");
        let ip = lab.node(last).expect("node info").mgmt_ip.clone();
        wait::until(
            &format!("{last}: host ping at Nova's host_ip {ip}"),
            Duration::from_secs(30),
            Duration::from_millis(300),
            || {
                let n = node(&d, last)?;
                let ok = n["pings"].as_array().is_some_and(|p| {
                    p.iter()
                        .any(|x| x["address"] == ip.as_str() && x["has_answered"] == true)
                });
                if ok {
                    Ok(())
                } else {
                    Err(n["pings"].to_string())
                }
            },
        )
        .expect("the host_ip learnt from Nova is pinged");
    }

    // Servers across projects: boot one and see it listed for its host.
    // The sweep is 10 min away, so only the changes-since watcher (every
    // 5 s by default) can find it: the deadline is a bound, the figure is
    // printed.
    let target = &names[0];
    let booted = lab.boot(1, target).expect("boot a server");
    let (n, listed_in) = wait::until(
        "the booted server listed for its host",
        Duration::from_secs(60),
        Duration::from_millis(500),
        || {
            let n = node(&d, target)?;
            let pings = n["pings"].as_array().cloned().unwrap_or_default();
            let has = pings.iter().any(|p| {
                p["role"]
                    .as_str()
                    .is_some_and(|r| r.contains(&booted[0].id))
            });
            if n["nova"]["instance_count"].as_u64().unwrap_or(0) >= 1 && has {
                Ok(n)
            } else {
                Err(n.to_string())
            }
        },
    )
    .expect("a server booted after the start listed (changes-since) with its address probed");
    assert!(n["nova"]["instance_count"].as_u64().unwrap_or(0) >= 1);
    eprintln!("FIGURE server ACTIVE → its address in the decider's pings in {listed_in:.1?} (changes_interval 5 s)");

    // nova-compute killed: stale, never dead. The deadline is the rule's 12 s
    // plus what Nova and the poll may add: a report in flight at the kill can
    // still move updated_at a second or so later, and the decider polls each
    // second. How fast is a figure for `cargo xtask bench recovery`.
    let report = Duration::from_secs(lab.info().controller.report_interval.unwrap_or(10));
    lab.fault(Fault::KillNovaCompute, target)
        .expect("kill nova-compute");
    let (n, took) = wait::until(
        "Nova's updated_at seen as stale",
        report + Duration::from_secs(8),
        Duration::from_millis(200),
        || {
            let n = node(&d, target)?;
            let stalled = n["nova"]["updated_at_stalled_ms"].as_u64().unwrap_or(0);
            let says_stale = n["reasons"].as_array().is_some_and(|r| {
                r.iter()
                    .any(|x| x.as_str().is_some_and(|s| s.contains("updated_at stalled")))
            });
            if stalled >= (report + Duration::from_secs(2)).as_millis() as u64 && says_stale {
                Ok(n)
            } else {
                Err(n.to_string())
            }
        },
    )
    .expect("stale noticed");
    eprintln!("nova-compute killed → stale in {took:.1?} (report interval {report:?})");
    assert_ne!(
        n["verdict"], "dead",
        "a node whose host answers ping must never be dead: {n}"
    );

    // Management link down: the host address stops answering within a probe round.
    let other = names.get(1).unwrap_or(target);
    let mgmt = lab.node(other).expect("node info").mgmt_ip.clone();
    lab.fault(Fault::MgmtLinkDown, other).expect("link down");
    // Deadline: one sweep interval (1 s) + one probe timeout (0.5 s) + the
    // three probes in a row that make an address silent, and query slack.
    let (_, took) = wait::until(
        "the management address silent",
        Duration::from_secs(5),
        Duration::from_millis(100),
        || {
            let n = node(&d, other)?;
            let silent = n["pings"].as_array().is_some_and(|p| {
                p.iter().any(|x| {
                    x["address"] == mgmt.as_str()
                        && x["answering"] == false
                        && x["has_answered"] == true
                })
            });
            if silent {
                Ok(())
            } else {
                Err(n.to_string())
            }
        },
    )
    .expect("link down seen");
    eprintln!("management link down → address silent in {took:.1?}");
    lab.heal(&[target.as_str(), other.as_str()]).expect("heal");
}

/// `vigil-decider init --from-nova` against the lab's real Nova: one
/// `[[node]]` per compute service with the hypervisor's host_ip, and an
/// existing output file is never overwritten (usage error, exit 2).
#[test]
fn decider_init_from_nova_writes_every_lab_node() {
    let test = "decider_init_from_nova_writes_every_lab_node";
    if !tier::root(test, "the lab runs Nova") {
        return;
    }
    let lab = Lab::shared().expect("lab up");
    let info = lab.info();
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().join("decider.toml");
    let started = std::time::Instant::now();
    let init = || {
        Command::new(bins::bin("vigil-decider"))
            .args(["init", "--from-nova", "--cloud", &info.cloud, "--output"])
            .arg(&out)
            .args(["--token-dir", "/etc/vigil/tokens"])
            .env("OS_CLIENT_CONFIG_FILE", &info.clouds_yaml)
            .output()
            .expect("run vigil-decider init")
    };
    let first = init();
    assert!(
        first.status.success(),
        "init failed: {}",
        String::from_utf8_lossy(&first.stderr)
    );
    let text = std::fs::read_to_string(&out).expect("skeleton written");
    let blocks: Vec<&str> = text.split("[[node]]").skip(1).collect();
    for n in &info.nodes {
        let block = blocks
            .iter()
            .find(|b| b.contains(&format!("name = \"{}\"\n", n.name)))
            .unwrap_or_else(|| panic!("no [[node]] for {}:\n{text}", n.name));
        assert!(
            block.contains(&format!("management_addresses = [\"{}\"]", n.mgmt_ip)),
            "{} without its host_ip {}:\n{block}",
            n.name,
            n.mgmt_ip
        );
        assert!(block.contains(&format!("/etc/vigil/tokens/{}.token", n.name)));
    }
    assert!(
        text.contains(&format!("cloud = \"{}\"", info.cloud)),
        "{text}"
    );
    let again = init();
    assert_eq!(again.status.code(), Some(2), "an existing file is kept");
    assert_eq!(std::fs::read_to_string(&out).expect("still there"), text);
    eprintln!("{test}: took {:?}", started.elapsed());
}

/// `vigil-decider fence-check` with `fence_agent` levels: Debian's real
/// fence_ipmilan reads every lab node's power through the lab's IPMI BMCs
/// (status only; no node is powered off), from a config the real binary
/// parses, with the password only in the lab's password file.
#[test]
fn decider_fence_check_runs_fence_ipmilan_against_the_lab_bmcs() {
    let test = "decider_fence_check_runs_fence_ipmilan_against_the_lab_bmcs";
    if !tier::root(test, "the lab runs the IPMI BMCs") {
        return;
    }
    if !std::path::Path::new("/usr/sbin/fence_ipmilan").is_file() {
        let msg = format!("{test}: needs fence_ipmilan (apt-get install fence-agents)");
        assert!(!tier::strict(), "{msg}");
        eprintln!("SKIPPED {msg}");
        return;
    }
    let lab = Lab::shared().expect("lab up");
    let _exclusive = lab.exclusive();
    let info = lab.info();
    let names = lab.node_names();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    lab.heal(&refs).expect("every node powered on");
    let started = std::time::Instant::now();
    let dir = tempfile::tempdir().expect("temp dir");
    let mut cfg = String::from("[nova]\nenabled = false\n");
    for n in &info.nodes {
        cfg.push_str(&format!(
            "[[node]]\nname = \"{}\"\ntoken_file = \"{}\"\n",
            n.name,
            n.sensor_token_path.display()
        ));
    }
    for n in &info.nodes {
        cfg.push_str(&format!(
            "[recovery.fencing.nodes.{}]\nlevels = [{{ kind = \"fence_agent\", agent = \"fence_ipmilan\", ip = \"{}\", ipport = {}, username = \"{}\", password = {{ file = \"{}\" }}, options = {{ lanplus = \"1\", cipher = \"{}\" }} }}]\n",
            n.name,
            n.ipmi.host,
            n.ipmi.port,
            info.bmc.username,
            info.bmc.password_file.display(),
            n.ipmi.cipher_suite,
        ));
    }
    let path = dir.path().join("decider.toml");
    std::fs::write(&path, cfg).expect("write config");
    let out = Command::new(bins::bin("vigil-decider"))
        .args(["fence-check", "--format", "json", "--config"])
        .arg(&path)
        .output()
        .expect("run vigil-decider fence-check");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "fence-check failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: Value = serde_json::from_str(&stdout).expect("fence-check JSON");
    let rows = rows.as_array().expect("rows");
    assert_eq!(rows.len(), info.nodes.len(), "{stdout}");
    for r in rows {
        assert_eq!(r["result"], serde_json::json!({"Ok": "on"}), "{r}");
        assert!(
            r["fencer"]
                .as_str()
                .is_some_and(|f| f.contains("fence_ipmilan")),
            "{r}"
        );
    }
    let password = std::fs::read_to_string(&info.bmc.password_file).expect("password");
    assert!(
        !stdout.contains(password.trim()),
        "the password never shows"
    );
    eprintln!("{test}: took {:?}", started.elapsed());
}
