//! In-process readiness tests: a real decider on port 0, `/healthz` and
//! `/readyz` over real HTTP, gRPC health over real gRPC, and Nova as a real
//! client aimed at a port nothing listens on.

use crate::config::Config;
use crate::serve::{Server, Witnesses};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

const DEADLINE: Duration = Duration::from_secs(20);

/// (status code, JSON body) of `GET path`.
async fn get(addr: std::net::SocketAddr, path: &str) -> (u16, serde_json::Value) {
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect to the metrics port");
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .expect("send request");
    let mut raw = String::new();
    s.read_to_string(&mut raw).await.expect("read answer");
    let code = raw
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {raw:?}"));
    let body = raw.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    let json = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body:?}"));
    (code, json)
}

async fn grpc_status(server: &Server, service: &str) -> ServingStatus {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", server.grpc_addr))
        .expect("url")
        .connect()
        .await
        .expect("connect gRPC");
    let mut c = HealthClient::new(channel);
    let r = c
        .check(HealthCheckRequest {
            service: service.to_string(),
        })
        .await
        .expect("health check answers")
        .into_inner();
    ServingStatus::try_from(r.status).unwrap_or(ServingStatus::Unknown)
}

/// Polls until `want` holds for readiness over HTTP and gRPC, or panics
/// with the last answers.
async fn wait_ready(server: &Server, want: bool) -> serde_json::Value {
    wait_ready_until(server, want, |_| true).await
}

/// As `wait_ready`, until `body` also satisfies `also` (a check's detail
/// that only a completed poll writes: "not polled yet" comes first).
async fn wait_ready_until(
    server: &Server,
    want: bool,
    also: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let metrics = server.metrics_addr.expect("metrics on");
    let want_grpc = if want {
        ServingStatus::Serving
    } else {
        ServingStatus::NotServing
    };
    let start = Instant::now();
    loop {
        let (code, body) = get(metrics, "/readyz").await;
        let overall = grpc_status(server, "").await;
        let operator = grpc_status(server, "vigil.v1.Operator").await;
        if (code == 200) == want && overall == want_grpc && operator == want_grpc && also(&body) {
            return body;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "readiness never became {want}: /readyz {code} {body}, gRPC {overall:?}/{operator:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn config() -> Config {
    let mut cfg = Config::default();
    cfg.server.listen = "127.0.0.1:0".parse().expect("addr");
    cfg.metrics.listen = "127.0.0.1:0".parse().expect("addr");
    cfg.ping.enabled = false;
    cfg.engine.tick = Duration::from_millis(100);
    cfg
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nova_unreachable_is_not_ready_over_http_and_grpc_but_alive() {
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let mut cfg = config();
    cfg.nova.poll_interval = Duration::from_millis(100);
    cfg.nova.request_timeout = Duration::from_secs(2);
    let vars: BTreeMap<String, String> = [
        ("OS_AUTH_URL", format!("http://127.0.0.1:{closed}/v3")),
        ("OS_USERNAME", "vigil".into()),
        ("OS_PASSWORD", "secret".into()),
        ("OS_PROJECT_NAME", "service".into()),
        ("OS_USER_DOMAIN_NAME", "Default".into()),
        ("OS_PROJECT_DOMAIN_NAME", "Default".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let nova = crate::nova_adapter::client(&cfg.nova, vars).expect("client builds");
    let witnesses = Witnesses {
        nova: Some(Arc::new(crate::nova_adapter::NovaWitnessClient::new(nova))),
        ..Witnesses::default()
    };
    let tokens = cfg.validate().expect("valid");
    let server = Server::start(cfg, tokens, witnesses).await.expect("starts");

    // Not ready at once ("not polled yet"); the reason that matters comes
    // once polls have failed.
    let nova_check = |b: &serde_json::Value| {
        b["checks"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["name"] == "nova"))
            .and_then(|c| c["detail"].as_str())
            .is_some_and(|d| d.contains("none of the last"))
    };
    let body = wait_ready_until(&server, false, nova_check).await;
    let nova = body["checks"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["name"] == "nova"))
        .unwrap_or_else(|| panic!("/readyz names no nova check: {body}"));
    assert_eq!(nova["ok"], false, "{body}");
    assert!(
        nova["detail"]
            .as_str()
            .unwrap_or("")
            .contains("none of the last"),
        "says why: {body}"
    );
    assert_eq!(body["status"], "failing");
    let (code, live) = get(server.metrics_addr.expect("metrics"), "/healthz").await;
    assert_eq!(code, 200, "alive though not ready: {live}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_every_check_passing_it_is_ready_over_http_and_grpc() {
    let mut cfg = config();
    cfg.nova.enabled = false;
    let tokens = cfg.validate().expect("valid");
    let server = Server::start(cfg, tokens, Witnesses::default())
        .await
        .expect("starts");
    let body = wait_ready(&server, true).await;
    assert_eq!(body["status"], "ok");
    assert_eq!(body["checks"][0]["name"], "engine", "{body}");
    let (code, _) = get(server.metrics_addr.expect("metrics"), "/healthz").await;
    assert_eq!(code, 200);
    server.shutdown().await;
}
