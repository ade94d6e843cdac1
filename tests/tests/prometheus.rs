//! What an operator's Prometheus reads: the shipped alert and recording
//! rules pass `promtool check rules` and their unit tests (each alert fires
//! where it should and stays quiet where it should not), and a real scrape
//! of a running decider passes `promtool check metrics`, with no series per
//! pinged address. Needs neither root nor the lab; promtool comes from
//! Debian's `prometheus` package (`cargo xtask setup` installs it).

use std::io::Write;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use vigil_tests::{bins, tier, wait};

fn rules_dir() -> std::path::PathBuf {
    bins::workspace_root().join("decider/prometheus")
}

/// promtool, or None when it is missing outside strict mode (the test is
/// then skipped, saying so).
fn promtool() -> Option<&'static str> {
    if Command::new("promtool").arg("--version").output().is_ok() {
        return Some("promtool");
    }
    let msg = "promtool not found (Debian package prometheus; `cargo xtask setup` installs it)";
    if tier::strict() {
        panic!("{msg}");
    }
    eprintln!("SKIPPED: {msg}");
    None
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn shipped_rules_pass_promtool_and_their_unit_tests() {
    let Some(promtool) = promtool() else {
        return;
    };
    let o = Command::new(promtool)
        .args(["check", "rules", "vigil-rules.yml"])
        .current_dir(rules_dir())
        .output()
        .expect("run promtool");
    assert!(o.status.success(), "promtool check rules:\n{}", text(&o));
    let o = Command::new(promtool)
        .args(["test", "rules", "vigil-rules.test.yml"])
        .current_dir(rules_dir())
        .output()
        .expect("run promtool");
    assert!(o.status.success(), "promtool test rules:\n{}", text(&o));
    eprintln!("{}", text(&o));
}

struct Decider {
    child: Child,
    dir: tempfile::TempDir,
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

#[test]
fn a_real_scrape_passes_promtool_check_metrics() {
    let Some(promtool) = promtool() else {
        return;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let (grpc, metrics) = (free_port(), free_port());
    let token = dir.path().join("compute1.token");
    std::fs::write(&token, "prometheus-test-token-0123456789").expect("token file");
    // Ping on, at loopback addresses standing for a host and its instances:
    // their series must be per node and role, never per address.
    let cfg = format!(
        "[server]\nlisten = \"127.0.0.1:{grpc}\"\n[metrics]\nlisten = \"127.0.0.1:{metrics}\"\n\
         [nova]\nenabled = false\n\
         [[node]]\nname = \"compute1\"\ntoken_file = \"{}\"\n\
         management_addresses = [\"127.0.0.1\"]\n",
        token.display()
    );
    let path = dir.path().join("decider.toml");
    std::fs::write(&path, cfg).expect("config file");
    let log = std::fs::File::create(dir.path().join("decider.log")).expect("log file");
    let d = Decider {
        child: Command::new(bins::bin("vigil-decider"))
            .args(["serve", "--config"])
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start vigil-decider serve"),
        dir,
    };
    let url = format!("http://127.0.0.1:{metrics}/metrics");
    let client = reqwest::blocking::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("HTTP client");
    // Until a probe has been counted: the scrape then holds every family.
    let (body, _) = wait::until(
        "a /metrics scrape with ping series",
        Duration::from_secs(30),
        Duration::from_millis(200),
        || {
            let body = client
                .get(&url)
                .send()
                .and_then(|r| r.text())
                .map_err(|e| e.to_string())?;
            if body.contains("vigil_ping_probes_total{") {
                Ok(body)
            } else {
                Err(format!("no ping series yet:\n{body}"))
            }
        },
    )
    .unwrap_or_else(|e| {
        let log = std::fs::read_to_string(d.dir.path().join("decider.log")).unwrap_or_default();
        panic!("{e}\n--- decider log ---\n{log}")
    });

    for want in [
        "vigil_build_info{",
        "vigil_nova_reachable",
        "vigil_node_verdict{",
        "vigil_recovery_active",
    ] {
        assert!(
            body.contains(want),
            "{want} missing from the scrape:\n{body}"
        );
    }
    assert!(
        !body.contains("address=\""),
        "a series per pinged address (unbounded cardinality):\n{body}"
    );

    // Prometheus itself asks for OpenMetrics, and gets it.
    let om = client
        .get(&url)
        .header(
            "Accept",
            "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5",
        )
        .send()
        .and_then(|r| r.text())
        .expect("an OpenMetrics scrape");
    assert!(
        om.ends_with("# EOF\n") && om.contains("# TYPE vigil_heartbeats counter"),
        "OpenMetrics asked for, not served:\n{om}"
    );

    let mut check = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool check metrics");
    check
        .stdin
        .take()
        .expect("stdin")
        .write_all(body.as_bytes())
        .expect("feed the scrape to promtool");
    let o = check.wait_with_output().expect("promtool check metrics");
    assert!(
        o.status.success() && text(&o).trim().is_empty(),
        "promtool check metrics on a real scrape:\n{}\n--- scrape ---\n{body}",
        text(&o)
    );
}
