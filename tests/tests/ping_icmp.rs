//! Vigil's ICMP witness (`vigil-ping`, the decider's `vigil_ping::Pinger`
//! behind a CLI) against real addresses on this machine only: loopback, and
//! a test host in a network namespace of this test's own whose link is then
//! cut (198.19.254.0/30 and 2001:db8:7669:1::/64, clear of the lab's
//! ranges). Nothing is sent anywhere else: every probed address is checked
//! to route via this test's veth before the probe is sent.

use std::net::IpAddr;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::Value;
use vigil_tests::{bins, tier};

fn run(cmd: &mut Command) -> Output {
    match cmd.output() {
        Ok(o) => o,
        Err(e) => panic!("cannot run {cmd:?}: {e}"),
    }
}

fn ip(args: &[&str]) {
    let o = run(Command::new("ip").args(args));
    assert!(
        o.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&o.stderr)
    );
}

/// `vigil-ping` on `addrs`; (exit code, JSON document, wall time).
fn vigil_ping(timeout: &str, addrs: &[&str]) -> (i32, Value, Duration) {
    let t = Instant::now();
    let o = run(Command::new(bins::bin("vigil-ping"))
        .args(["--timeout", timeout])
        .args(addrs));
    let took = t.elapsed();
    let doc = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "vigil-ping printed no JSON ({e}); stderr: {}",
            String::from_utf8_lossy(&o.stderr)
        )
    });
    (o.status.code().unwrap_or(-1), doc, took)
}

fn probes(doc: &Value) -> Vec<Value> {
    doc["rounds"][0].as_array().cloned().unwrap_or_default()
}

/// Refuses to go on unless `addr` routes via `dev` (so a missing route can
/// never send a probe out of the machine's real interface).
fn assert_routes_via(addr: &str, dev: &str) {
    let fam = if addr.parse::<IpAddr>().is_ok_and(|a| a.is_ipv6()) {
        "-6"
    } else {
        "-4"
    };
    let o = run(Command::new("ip").args([fam, "route", "get", addr]));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains(&format!("dev {dev} ")),
        "{addr} does not route via {dev} ({text}); not probing it"
    );
}

#[test]
fn ping_loopback_ipv4_and_ipv6() {
    if !tier::root(
        "ping_loopback_ipv4_and_ipv6",
        "raw ICMP sockets need CAP_NET_RAW",
    ) {
        return;
    }
    let (code, doc, _) = vigil_ping("1s", &["127.0.0.1", "::1"]);
    assert_eq!(code, 0, "{doc:#}");
    assert_eq!(doc["socket"]["v4"], "raw");
    assert_eq!(doc["socket"]["v6"], "raw");
    for p in probes(&doc) {
        assert_eq!(p["answered"], true, "{p:#}");
        assert!(p["rtt_ms"].as_f64().is_some_and(|r| r < 100.0), "{p:#}");
    }
}

/// A test host in its own network namespace, joined by a veth pair.
struct TestHost {
    ns: String,
    host_if: String,
    peer_if: String,
}

impl TestHost {
    const HOST4: &'static str = "198.19.254.1";
    const PEER4: &'static str = "198.19.254.2";
    const HOST6: &'static str = "2001:db8:7669:1::1";
    const PEER6: &'static str = "2001:db8:7669:1::2";

    fn up() -> Self {
        let id = std::process::id() % 100_000;
        let h = TestHost {
            ns: format!("vping-{id}"),
            host_if: format!("vpa{id}"),
            peer_if: format!("vpb{id}"),
        };
        ip(&["netns", "add", &h.ns]);
        ip(&[
            "link", "add", &h.host_if, "type", "veth", "peer", "name", &h.peer_if,
        ]);
        ip(&["link", "set", &h.peer_if, "netns", &h.ns]);
        ip(&[
            "addr",
            "add",
            &format!("{}/30", Self::HOST4),
            "dev",
            &h.host_if,
        ]);
        ip(&[
            "-6",
            "addr",
            "add",
            &format!("{}/64", Self::HOST6),
            "dev",
            &h.host_if,
            "nodad",
        ]);
        ip(&["link", "set", &h.host_if, "up"]);
        ip(&["-n", &h.ns, "link", "set", "lo", "up"]);
        ip(&[
            "-n",
            &h.ns,
            "addr",
            "add",
            &format!("{}/30", Self::PEER4),
            "dev",
            &h.peer_if,
        ]);
        ip(&[
            "-n",
            &h.ns,
            "-6",
            "addr",
            "add",
            &format!("{}/64", Self::PEER6),
            "dev",
            &h.peer_if,
            "nodad",
        ]);
        ip(&["-n", &h.ns, "link", "set", &h.peer_if, "up"]);
        h
    }
}

impl Drop for TestHost {
    fn drop(&mut self) {
        // Deleting the namespace destroys the peer end, and with it the pair.
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).status();
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .output();
    }
}

#[test]
fn ping_test_host_then_link_down_fails_within_the_timeout() {
    if !tier::root(
        "ping_test_host_then_link_down_fails_within_the_timeout",
        "network namespaces and raw ICMP sockets",
    ) {
        return;
    }
    let h = TestHost::up();
    let addrs = [TestHost::PEER4, TestHost::PEER6];
    for a in addrs {
        assert_routes_via(a, &h.host_if);
    }
    // Neighbour discovery and IPv6 may take a moment on a fresh link: allow
    // a few rounds for the first answers.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (code, doc, _) = vigil_ping("1s", &addrs);
        if code == 0 {
            for p in probes(&doc) {
                assert_eq!(p["answered"], true, "{p:#}");
            }
            break;
        }
        assert!(
            Instant::now() < deadline,
            "test host never answered: {doc:#}"
        );
    }

    // Cut the test host's link: its addresses stop answering, and each
    // probe must say so within its own timeout.
    ip(&["-n", &h.ns, "link", "set", &h.peer_if, "down"]);
    for a in addrs {
        assert_routes_via(a, &h.host_if);
    }
    let (code, doc, took) = vigil_ping("500ms", &addrs);
    assert_eq!(code, 1, "{doc:#}");
    for p in probes(&doc) {
        assert_eq!(p["answered"], false, "{p:#}");
        let elapsed = p["elapsed_ms"].as_f64().unwrap_or(f64::MAX);
        assert!(
            elapsed <= 600.0,
            "probe took {elapsed} ms with a 500 ms timeout: {p:#}"
        );
    }
    // Both probes run concurrently: the whole run is one timeout, not two.
    assert!(took < Duration::from_millis(900), "vigil-ping ran {took:?}");
    eprintln!("link down seen in {took:?} (timeout 500 ms): {doc}");
}

#[test]
fn ping_without_cap_net_raw_says_so() {
    if !tier::root(
        "ping_without_cap_net_raw_says_so",
        "dropping to an unprivileged user",
    ) {
        return;
    }
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ping_group_range").unwrap_or_default();
    // With the kernel default "1 0" no group may open unprivileged ICMP
    // sockets, so nobody has neither raw nor datagram sockets.
    let unprivileged_icmp_allowed = {
        let mut it = range
            .split_whitespace()
            .map(|x| x.parse::<i64>().unwrap_or(0));
        let (lo, hi) = (it.next().unwrap_or(1), it.next().unwrap_or(0));
        lo <= 65534 && 65534 <= hi
    };
    // A copy nobody can execute (the build tree may not be readable).
    let dir = match tempfile::tempdir() {
        Ok(d) => d,
        Err(e) => panic!("tempdir: {e}"),
    };
    let exe = dir.path().join("vigil-ping");
    // Copied by `cp`, not in this process: a test thread forking while this
    // process held the copy open for writing would make it unrunnable
    // (ETXTBSY) until that child's exec.
    let cp = run(Command::new("cp").arg(bins::bin("vigil-ping")).arg(&exe));
    assert!(cp.status.success(), "cp vigil-ping: {cp:?}");
    use std::os::unix::fs::PermissionsExt;
    for p in [dir.path(), exe.as_path()] {
        if let Err(e) = std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)) {
            panic!("chmod {}: {e}", p.display());
        }
    }
    let o = run(Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            "--bounding-set=-all",
        ])
        .arg(&exe)
        .args(["--timeout", "300ms", "127.0.0.1"]));
    let stderr = String::from_utf8_lossy(&o.stderr);
    if unprivileged_icmp_allowed {
        // Datagram ICMP sockets: still works, and says which socket it used.
        let doc: Value = serde_json::from_slice(&o.stdout).unwrap_or(Value::Null);
        assert_eq!(doc["socket"]["v4"], "datagram", "{doc:#} {stderr}");
    } else {
        assert_eq!(o.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains("CAP_NET_RAW"), "{stderr}");
    }
}
