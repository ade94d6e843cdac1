//! The kdump port through a whole decider: fence-agents' real
//! `fence_kdump_send` sends from 127.0.0.1, which is compute1's configured
//! management address, and the engine takes the messages into compute1's
//! evidence (what recovery reads at decision time).

use crate::config::{Config, KdumpConfig, NodeConfig};
use crate::serve::{Server, Witnesses};
use std::net::SocketAddr;
use std::sync::PoisonError;
use std::time::{Duration, Instant};
use vigil_proto::v1;
use vigil_proto::v1::operator_client::OperatorClient;

/// Debian's package `fence-agents` installs it here.
const SENDER: &str = "/usr/libexec/fence-agents/fence_kdump_send";
const TOKEN: &str = "compute1-sensor-token-0123456789";

/// A UDP port free a moment ago (`[kdump] listen` refuses port 0: no crash
/// kernel could know it).
fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .expect("a free UDP port on 127.0.0.1")
}

async fn start(kdump: SocketAddr) -> (Server, tempfile::TempDir) {
    let (server, dir) = start_result(kdump).await.expect("decider starts");
    (server, dir)
}

async fn start_result(kdump: SocketAddr) -> anyhow::Result<(Server, tempfile::TempDir)> {
    let dir = tempfile::tempdir().expect("tempdir");
    let token = dir.path().join("compute1.token");
    std::fs::write(&token, TOKEN).expect("write token");
    let mut cfg = Config::default();
    cfg.server.listen = "127.0.0.1:0".parse().expect("addr");
    cfg.metrics.enabled = false;
    cfg.nova.enabled = false;
    cfg.ping.enabled = false;
    cfg.engine.tick = Duration::from_millis(50);
    cfg.kdump = Some(KdumpConfig { listen: kdump });
    cfg.nodes.push(NodeConfig {
        name: "compute1".into(),
        token_file: token,
        management_addresses: vec!["127.0.0.1".parse().expect("ip")],
        segment: "default".into(),
        system_uuid: None,
    });
    let tokens = cfg.validate().expect("valid test config");
    let server = Server::start(cfg, tokens, Witnesses::default()).await?;
    Ok((server, dir))
}

/// compute1's evidence as recovery would store it.
fn evidence(s: &Server) -> serde_json::Value {
    let n = s
        .engine
        .nodes
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .get("compute1")
        .cloned()
        .expect("compute1 is configured");
    let st = n.lock().unwrap_or_else(PoisonError::into_inner);
    crate::node_proto::evidence_snapshot(&st, s.engine.clock.now())
}

#[tokio::test]
async fn the_real_fence_kdump_send_reaches_the_engine() {
    assert!(
        std::path::Path::new(SENDER).exists(),
        "{SENDER} is missing: install fence-agents (apt-get install fence-agents)"
    );
    let listen: SocketAddr = format!("127.0.0.1:{}", free_udp_port())
        .parse()
        .expect("addr");
    let (s, _dir) = start(listen).await;

    // What a crash kernel runs: `fence_kdump_send -p PORT DECIDER`, here
    // three messages a second apart.
    let started = Instant::now();
    let mut sender = tokio::process::Command::new(SENDER)
        .args([
            "-p",
            &listen.port().to_string(),
            "-f",
            "ipv4",
            "-c",
            "3",
            "-i",
            "1",
            "127.0.0.1",
        ])
        .kill_on_drop(true)
        .spawn()
        .expect("fence_kdump_send runs");
    let deadline = started + Duration::from_secs(15);
    let mut first_seen = None;
    let messages = loop {
        let ev = evidence(&s);
        let m = ev
            .pointer("/kdump/messages")
            .and_then(serde_json::Value::as_u64);
        if m.is_some() && first_seen.is_none() {
            first_seen = Some(started.elapsed());
        }
        if m.is_some_and(|m| m >= 3) {
            break ev;
        }
        assert!(
            Instant::now() < deadline,
            "3 fence_kdump messages not in compute1's evidence within 15 s: {ev:#}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let status = sender.wait().await.expect("fence_kdump_send ends");
    assert!(status.success(), "fence_kdump_send: {status}");
    assert_eq!(
        messages
            .pointer("/kdump/from")
            .and_then(serde_json::Value::as_str),
        Some("127.0.0.1"),
        "{messages:#}"
    );
    assert!(
        messages
            .pointer("/kdump/first_age_ms")
            .and_then(serde_json::Value::as_u64)
            .is_some(),
        "recovery needs the first message's age: {messages:#}"
    );
    eprintln!(
        "figure: first fence_kdump message in the evidence {:?} after fence_kdump_send started; 3 messages after {:?}",
        first_seen.unwrap_or_default(),
        started.elapsed()
    );

    // The operator API shows the kdump reading among the reasons.
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", s.grpc_addr))
        .expect("url")
        .connect()
        .await
        .expect("connect");
    let n = OperatorClient::new(channel)
        .get_node(v1::GetNodeRequest {
            name: "compute1".into(),
        })
        .await
        .expect("GetNode")
        .into_inner();
    assert!(
        n.reasons.iter().any(|r| r.contains("kdump")),
        "GetNode's reasons name the kdump messages: {:?}",
        n.reasons
    );
    s.shutdown().await;
}

#[tokio::test]
async fn a_kdump_port_in_use_is_a_start_error_naming_it_and_the_fix() {
    let held = std::net::UdpSocket::bind("127.0.0.1:0").expect("hold a UDP port");
    let listen = held.local_addr().expect("its address");
    let err = match start_result(listen).await {
        Ok(_) => panic!("the decider started without its kdump port {listen}"),
        Err(e) => format!("{e:#}"),
    };
    assert!(
        err.contains(&listen.to_string()) && err.contains("kdump.listen"),
        "{err}"
    );
}
