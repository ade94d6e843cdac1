//! In-process tests over real gRPC: a decider on port 0, real tonic clients.

use crate::config::{Config, NodeConfig};
use crate::serve::{Server, Witnesses};
use std::time::Duration;
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;
use tonic::{Code, Status, Streaming};
use vigil_proto::v1;
use vigil_proto::v1::operator_client::OperatorClient;
use vigil_proto::v1::sensor_stream_client::SensorStreamClient;

const TOKEN1: &str = "compute1-token-0123456789abcdef";
const ENROL: &str = "enrolment-token-0123456789abcdef";

async fn start(enrol: bool) -> (Server, tempfile::TempDir) {
    start_with(enrol, 0).await
}

fn fleet_name(i: usize) -> String {
    format!("fleet{i:05}")
}

/// `start`, with `fleet` more configured nodes named by `fleet_name`.
async fn start_with(enrol: bool, fleet: usize) -> (Server, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let token = dir.path().join("compute1.token");
    std::fs::write(&token, TOKEN1).expect("write token");
    let enrol_token = dir.path().join("enrol.token");
    std::fs::write(&enrol_token, ENROL).expect("write enrolment token");
    let mut cfg = Config::default();
    cfg.server.listen = "127.0.0.1:0".parse().expect("addr");
    cfg.server.max_message_bytes = 4096;
    cfg.metrics.listen = "127.0.0.1:0".parse().expect("addr");
    cfg.nova.enabled = false;
    cfg.ping.enabled = false;
    // A big fleet ticks slower: re-judging 1,200 nodes every 50 ms in a
    // debug build keeps a CPU busy, and on a two-CPU machine that starved
    // the timing-bound recovery tests running beside it.
    cfg.engine.tick = if fleet > 0 {
        Duration::from_millis(500)
    } else {
        Duration::from_millis(50)
    };
    cfg.enrolment.enabled = enrol;
    cfg.enrolment.token_file = Some(enrol_token);
    cfg.nodes.push(NodeConfig {
        name: "compute1".into(),
        token_file: token,
        management_addresses: vec!["198.51.100.11".parse().expect("ip")],
        segment: "default".into(),
        system_uuid: None,
    });
    for i in 0..fleet {
        let token_file = dir.path().join(format!("fleet{i}.token"));
        std::fs::write(&token_file, format!("fleet-token-{i:06}-0123456789abcdef"))
            .expect("write token");
        cfg.nodes.push(NodeConfig {
            name: fleet_name(i),
            token_file,
            management_addresses: vec![],
            segment: "default".into(),
            system_uuid: None,
        });
    }
    let tokens = cfg.validate().expect("valid test config");
    let server = Server::start(cfg, tokens, Witnesses::default())
        .await
        .expect("server starts");
    (server, dir)
}

fn url(s: &Server) -> String {
    format!("http://{}", s.grpc_addr)
}

fn hb(node: &str, boot: &str, seq: u64) -> v1::SensorMessage {
    v1::SensorMessage {
        kind: Some(v1::sensor_message::Kind::Heartbeat(v1::Heartbeat {
            node: node.into(),
            boot_id: boot.into(),
            seq,
            interval_ms: 1000,
            mode: v1::ProbeMode::Ebpf as i32,
            instances: vec![v1::Instance {
                uuid: "u-1".into(),
                alive: true,
                cpu_ns_delta: 5_000_000,
                ..Default::default()
            }],
            nova_compute: Some(v1::NovaCompute {
                state: v1::nova_compute::State::Running as i32,
                pid: 42,
                blocked_ms: 0,
            }),
            ..Default::default()
        })),
    }
}

/// A sensor stream's inbound half with its first message already read (a
/// refusal after the headers arrives as that first message).
#[derive(Debug)]
struct Inbound {
    first: Option<v1::DeciderMessage>,
    rest: Streaming<v1::DeciderMessage>,
}

impl Inbound {
    async fn message(&mut self) -> Result<Option<v1::DeciderMessage>, Status> {
        match self.first.take() {
            Some(m) => Ok(Some(m)),
            None => self.rest.message().await,
        }
    }
}

/// Opens a stream with `token` (or none), sending `first` right away; `Err`
/// when the decider refuses it, before or after answering the headers.
async fn open(
    s: &Server,
    token: Option<&str>,
    first: v1::SensorMessage,
) -> Result<(tokio::sync::mpsc::Sender<v1::SensorMessage>, Inbound), Status> {
    let channel = Channel::from_shared(url(s))
        .expect("url")
        .connect()
        .await
        .expect("connect");
    let mut client = SensorStreamClient::new(channel);
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tx.send(first).await.expect("queue first heartbeat");
    let mut req = tonic::Request::new(ReceiverStream::new(rx));
    if let Some(t) = token {
        let v: MetadataValue<_> = format!("Bearer {t}").parse().expect("metadata");
        req.metadata_mut().insert("authorization", v);
    }
    let mut rest = client.stream(req).await?.into_inner();
    let first = tokio::time::timeout(Duration::from_secs(5), rest.message())
        .await
        .expect("a first answer within 5 s")?;
    Ok((tx, Inbound { first, rest }))
}

async fn operator(s: &Server) -> OperatorClient<Channel> {
    OperatorClient::new(
        Channel::from_shared(url(s))
            .expect("url")
            .connect()
            .await
            .expect("connect"),
    )
}

async fn next_ack(inbound: &mut Inbound) -> u64 {
    loop {
        let m = tokio::time::timeout(Duration::from_secs(5), inbound.message())
            .await
            .expect("an ack within 5 s")
            .expect("stream ok")
            .expect("stream open");
        if let Some(v1::decider_message::Kind::Ack(a)) = m.kind {
            return a.seq;
        }
    }
}

#[tokio::test]
async fn heartbeats_with_a_token_show_up_in_get_node() {
    let (s, _dir) = start(false).await;
    let (tx, mut inbound) = open(&s, Some(TOKEN1), hb("compute1", "boot-a", 1))
        .await
        .expect("stream accepted");
    assert_eq!(next_ack(&mut inbound).await, 1);
    tx.send(hb("compute1", "boot-a", 2)).await.expect("send");
    tx.send(hb("compute1", "boot-a", 4)).await.expect("send");
    while next_ack(&mut inbound).await < 4 {}
    let mut op = operator(&s).await;
    let n = op
        .get_node(v1::GetNodeRequest {
            name: "compute1".into(),
        })
        .await
        .expect("GetNode")
        .into_inner();
    let sensor = n.sensor.expect("sensor witness");
    assert!(sensor.connected && sensor.has_heartbeat);
    assert_eq!(
        (sensor.seq, sensor.seq_gaps, sensor.boot_id.as_str()),
        (4, 1, "boot-a")
    );
    assert_eq!(sensor.latest.expect("latest heartbeat").instances.len(), 1);
    // Nova and pings are off here: the live sensor alone says up, nothing says dead.
    assert_eq!(
        n.verdict,
        v1::Verdict::Healthy as i32,
        "reasons: {:?}",
        n.reasons
    );
    assert_eq!(n.pings[0].address, "198.51.100.11");
    let list = op
        .list_nodes(v1::ListNodesRequest::default())
        .await
        .expect("ListNodes")
        .into_inner();
    assert_eq!(list.nodes.len(), 1);
    let missing = op
        .get_node(v1::GetNodeRequest {
            name: "nope".into(),
        })
        .await
        .expect_err("unknown node");
    assert_eq!(missing.code(), Code::NotFound);
    s.shutdown().await;
}

#[tokio::test]
async fn bad_token_missing_token_and_unknown_node_are_rejected() {
    let (s, _dir) = start(false).await;
    let e = open(
        &s,
        Some("wrong-token-0123456789abcdef"),
        hb("compute1", "b", 1),
    )
    .await
    .expect_err("bad token");
    assert_eq!(e.code(), Code::Unauthenticated, "{e}");
    let e = open(&s, None, hb("compute1", "b", 1))
        .await
        .expect_err("no token");
    assert_eq!(e.code(), Code::Unauthenticated, "{e}");
    let e = open(&s, Some(TOKEN1), hb("compute9", "b", 1))
        .await
        .expect_err("unknown node");
    assert_eq!(e.code(), Code::PermissionDenied, "{e}");
    assert!(e.message().contains("enrolment is disabled"), "{e}");
    let e = open(&s, Some(TOKEN1), hb("compute1", "b", 0))
        .await
        .expect_err("seq 0");
    assert_eq!(e.code(), Code::InvalidArgument, "{e}");
    s.shutdown().await;
}

#[tokio::test]
async fn oversized_messages_are_invalid_argument_and_counted() {
    let (s, _dir) = start(false).await;
    let mut big = hb("compute1", "b", 1);
    if let Some(v1::sensor_message::Kind::Heartbeat(h)) = &mut big.kind {
        h.sensor_version = "x".repeat(8192);
    }
    let e = open(&s, Some(TOKEN1), big.clone())
        .await
        .expect_err("oversized first message");
    assert_eq!(e.code(), Code::InvalidArgument, "{e}");
    // Mid-stream too: the stream ends with InvalidArgument.
    let (tx, mut inbound) = open(&s, Some(TOKEN1), hb("compute1", "b", 1))
        .await
        .expect("accepted");
    assert_eq!(next_ack(&mut inbound).await, 1);
    tx.send(big).await.expect("send");
    let end = loop {
        match inbound.message().await {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("stream ended without an error"),
            Err(e) => break e,
        }
    };
    assert_eq!(end.code(), Code::InvalidArgument, "{end}");
    assert_eq!(
        s.metrics.rejected(crate::metrics::RejectReason::Oversized),
        2
    );
    s.shutdown().await;
}

#[tokio::test]
async fn a_second_stream_replaces_the_first_with_a_goodbye() {
    let (s, _dir) = start(false).await;
    let (_tx1, mut first) = open(&s, Some(TOKEN1), hb("compute1", "b", 1))
        .await
        .expect("first");
    assert_eq!(next_ack(&mut first).await, 1);
    let (_tx2, mut second) = open(&s, Some(TOKEN1), hb("compute1", "b", 2))
        .await
        .expect("second");
    assert_eq!(next_ack(&mut second).await, 2);
    let goodbye = loop {
        match tokio::time::timeout(Duration::from_secs(5), first.message())
            .await
            .expect("goodbye in time")
        {
            Ok(Some(v1::DeciderMessage {
                kind: Some(v1::decider_message::Kind::Goodbye(g)),
            })) => break g,
            Ok(Some(_)) => continue,
            other => panic!("expected a goodbye, got {other:?}"),
        }
    };
    assert!(goodbye.reason.contains("replaced"), "{}", goodbye.reason);
    s.shutdown().await;
}

#[tokio::test]
async fn enrolment_admits_unknown_nodes_with_the_enrolment_token_only() {
    let (s, _dir) = start(true).await;
    let e = open(&s, Some(TOKEN1), hb("compute7", "b", 1))
        .await
        .expect_err("node token for another node");
    assert_eq!(e.code(), Code::Unauthenticated, "{e}");
    let (_tx, mut inbound) = open(&s, Some(ENROL), hb("compute7", "b", 1))
        .await
        .expect("enrolled");
    assert_eq!(next_ack(&mut inbound).await, 1);
    let mut op = operator(&s).await;
    let n = op
        .get_node(v1::GetNodeRequest {
            name: "compute7".into(),
        })
        .await
        .expect("enrolled node")
        .into_inner();
    // The sensor's source address becomes the management address to probe.
    assert_eq!(n.pings[0].address, "127.0.0.1");
    s.shutdown().await;
}

#[tokio::test]
async fn watch_verdicts_and_metrics_show_changes() {
    let (s, _dir) = start(false).await;
    let mut op = operator(&s).await;
    let mut watch = op
        .watch_verdicts(v1::WatchVerdictsRequest {
            node: "compute1".into(),
        })
        .await
        .expect("WatchVerdicts")
        .into_inner();
    let (_tx, mut inbound) = open(&s, Some(TOKEN1), hb("compute1", "b", 1))
        .await
        .expect("accepted");
    next_ack(&mut inbound).await;
    let change = tokio::time::timeout(Duration::from_secs(5), watch.message())
        .await
        .expect("a change in time")
        .expect("stream ok")
        .expect("a change");
    assert_eq!(
        (change.from, change.to),
        (v1::Verdict::Suspect as i32, v1::Verdict::Healthy as i32)
    );

    let addr = s.metrics_addr.expect("metrics on");
    let body = http_get(addr, "/metrics").await;
    assert!(
        body.contains("vigil_node_verdict{node=\"compute1\",verdict=\"healthy\"} 1"),
        "{body}"
    );
    assert!(body.contains("vigil_heartbeats_total"), "{body}");
    s.shutdown().await;
}

async fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut c = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect to /metrics");
    c.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .expect("send request");
    let mut out = String::new();
    c.read_to_string(&mut out).await.expect("read response");
    out
}

/// The real sensor waits for the response headers before it sends its first
/// heartbeat; the decider must answer the headers without waiting for it
/// (found in the lab: both sides waited until the first-message timeout).
#[tokio::test]
async fn a_sensor_that_waits_for_the_headers_before_its_first_heartbeat_is_served() {
    let (s, _dir) = start(false).await;
    let channel = Channel::from_shared(url(&s))
        .expect("url")
        .connect()
        .await
        .expect("connect");
    let mut client = SensorStreamClient::new(channel);
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let mut req = tonic::Request::new(ReceiverStream::new(rx));
    let v: MetadataValue<_> = format!("Bearer {TOKEN1}").parse().expect("metadata");
    req.metadata_mut().insert("authorization", v);
    let mut inbound = tokio::time::timeout(Duration::from_secs(3), client.stream(req))
        .await
        .expect("headers answered before any heartbeat")
        .expect("stream accepted")
        .into_inner();
    tx.send(hb("compute1", "boot-a", 1)).await.expect("send");
    let m = tokio::time::timeout(Duration::from_secs(5), inbound.message())
        .await
        .expect("an ack within 5 s")
        .expect("stream ok")
        .expect("stream open");
    assert!(
        matches!(
            m.kind,
            Some(v1::decider_message::Kind::Ack(v1::Ack { seq: 1 }))
        ),
        "{m:?}"
    );
    s.shutdown().await;
}

fn names(nodes: &[v1::Node]) -> Vec<String> {
    nodes.iter().map(|n| n.name.clone()).collect()
}

async fn list(
    op: &mut OperatorClient<Channel>,
    page_size: i32,
    page_token: &str,
    verdict: v1::Verdict,
) -> Result<v1::ListNodesResponse, Status> {
    op.list_nodes(v1::ListNodesRequest {
        page_size,
        page_token: page_token.into(),
        verdict: verdict as i32,
    })
    .await
    .map(tonic::Response::into_inner)
}

#[tokio::test]
async fn list_nodes_pages_through_every_node_once_in_name_order() {
    let (s, _dir) = start_with(false, 1200).await;
    let mut op = operator(&s).await;
    let mut expected: Vec<String> = (0..1200).map(fleet_name).collect();
    expected.insert(0, "compute1".into());

    let mut seen = Vec::new();
    let mut sizes = Vec::new();
    let mut token = String::new();
    loop {
        let page = list(&mut op, 500, &token, v1::Verdict::Unspecified)
            .await
            .expect("ListNodes page");
        sizes.push(page.nodes.len());
        seen.extend(names(&page.nodes));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(sizes, [500, 500, 201]);
    assert_eq!(seen, expected);

    let default = list(&mut op, 0, "", v1::Verdict::Unspecified)
        .await
        .expect("default page size");
    assert_eq!(default.nodes.len(), crate::operator_api::DEFAULT_PAGE_SIZE);
    let clamped = list(&mut op, i32::MAX, "", v1::Verdict::Unspecified)
        .await
        .expect("page size above the maximum");
    assert_eq!(clamped.nodes.len(), crate::operator_api::MAX_PAGE_SIZE);
    assert!(!clamped.next_page_token.is_empty());

    // What `vigil-decider nodes` does: every page, same as one walk above.
    let all = crate::cli::list_all_nodes(&mut op, &Default::default(), v1::Verdict::Unspecified)
        .await
        .expect("every page");
    assert_eq!(names(&all), expected);

    // Only compute1 has a sensor: the only healthy node, found past more
    // than a thousand that do not match, and then no further page.
    let (tx, mut inbound) = open(&s, Some(TOKEN1), hb("compute1", "boot-a", 1))
        .await
        .expect("stream accepted");
    assert_eq!(next_ack(&mut inbound).await, 1);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let healthy = loop {
        let page = list(&mut op, 1, "", v1::Verdict::Healthy)
            .await
            .expect("filtered page");
        if !page.nodes.is_empty() || tokio::time::Instant::now() > deadline {
            break page;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(names(&healthy.nodes), ["compute1"]);
    assert_eq!(healthy.next_page_token, "", "no other node is healthy");
    drop(tx);
    s.shutdown().await;
}

#[tokio::test]
async fn list_nodes_refuses_bad_page_size_token_and_verdict() {
    let (s, _dir) = start_with(false, 3).await;
    let mut op = operator(&s).await;
    let e = list(&mut op, -1, "", v1::Verdict::Unspecified)
        .await
        .expect_err("negative page size");
    assert_eq!(e.code(), Code::InvalidArgument, "{e}");
    assert!(e.message().contains("page_size -1 is negative"), "{e}");
    for token in [
        "garbage", "n1.0.", "n1.0.6", "n1.0.zz", "n1.x.61", "n1.0.ff",
    ] {
        let e = list(&mut op, 1, token, v1::Verdict::Unspecified)
            .await
            .expect_err("bad token");
        assert_eq!(e.code(), Code::InvalidArgument, "{token}: {e}");
        assert!(e.message().contains("empty page_token"), "{token}: {e}");
    }
    // A token from an unfiltered listing does not continue a filtered one.
    let first = list(&mut op, 1, "", v1::Verdict::Unspecified)
        .await
        .expect("first page");
    let e = list(&mut op, 1, &first.next_page_token, v1::Verdict::Dead)
        .await
        .expect_err("token of another filter");
    assert_eq!(e.code(), Code::InvalidArgument, "{e}");
    assert!(e.message().contains("another verdict filter"), "{e}");
    let e = op
        .list_nodes(v1::ListNodesRequest {
            verdict: 99,
            ..Default::default()
        })
        .await
        .expect_err("unknown verdict");
    assert_eq!(e.code(), Code::InvalidArgument, "{e}");
    s.shutdown().await;
}

#[tokio::test]
async fn a_node_enrolled_between_pages_does_not_break_paging() {
    let (s, _dir) = start_with(true, 20).await;
    let mut op = operator(&s).await;
    let first = list(&mut op, 10, "", v1::Verdict::Unspecified)
        .await
        .expect("first page");
    // One node sorts before the pages already read, one after.
    let mut streams = Vec::new();
    for name in ["aaa-new", "zzz-new"] {
        let (tx, mut inbound) = open(&s, Some(ENROL), hb(name, "b", 1))
            .await
            .expect("enrolled");
        assert_eq!(next_ack(&mut inbound).await, 1);
        streams.push(tx);
    }
    let mut seen = names(&first.nodes);
    let mut token = first.next_page_token;
    while !token.is_empty() {
        let page = list(&mut op, 10, &token, v1::Verdict::Unspecified)
            .await
            .expect("next page");
        seen.extend(names(&page.nodes));
        token = page.next_page_token;
    }
    let mut expected: Vec<String> = (0..20).map(fleet_name).collect();
    expected.insert(0, "compute1".into());
    expected.push("zzz-new".into());
    assert_eq!(
        seen, expected,
        "every node once, in order; the one added behind the cursor shows on the next listing"
    );
    s.shutdown().await;
}

/// Issue 13, defect 3: a sensor restarted on the same boot starts again at
/// seq 1. The decider used to keep the old, higher seq and ignore the new
/// run's signals (forever after a seq of 2^64-1); with an instance id it
/// takes the new run's signals at once.
#[tokio::test]
async fn a_sensor_restarted_on_the_same_boot_is_heard_at_once() {
    let (s, _dir) = start(false).await;
    let with = |seq: u64, instance: &str, nova: v1::nova_compute::State, blocked_ms: u64| {
        let mut m = hb("compute1", "boot-a", seq);
        if let Some(v1::sensor_message::Kind::Heartbeat(h)) = m.kind.as_mut() {
            h.sensor_instance = instance.into();
            h.nova_compute = Some(v1::NovaCompute {
                state: nova as i32,
                pid: 42,
                blocked_ms,
            });
        }
        m
    };
    let running = v1::nova_compute::State::Running;
    let blocked = v1::nova_compute::State::Blocked;
    let (tx, mut inbound) = open(&s, Some(TOKEN1), with(1, "run-1", running, 0))
        .await
        .expect("first run accepted");
    tx.send(with(5000, "run-1", running, 0))
        .await
        .expect("send");
    while next_ack(&mut inbound).await < 5000 {}
    drop(tx);
    drop(inbound);

    // The restarted sensor: seq 1 again, and nova-compute hung since.
    let (tx, mut inbound) = open(&s, Some(TOKEN1), with(1, "run-2", blocked, 6000))
        .await
        .expect("second run accepted");
    assert_eq!(next_ack(&mut inbound).await, 1);
    let mut op = operator(&s).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    loop {
        let n = op
            .get_node(v1::GetNodeRequest {
                name: "compute1".into(),
            })
            .await
            .expect("GetNode")
            .into_inner();
        let seq = n.sensor.as_ref().map(|x| x.seq);
        if n.verdict == v1::Verdict::Degraded as i32 && seq == Some(1) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the restarted sensor's hung nova-compute not taken: seq {seq:?}, verdict {}, reasons {:?}",
            n.verdict,
            n.reasons
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(tx);
    s.shutdown().await;
}

/// A message as a sensor one release newer encodes it: the fields this
/// decider knows, plus ones it does not (proto3 keeps them on the wire).
#[derive(Clone, PartialEq, prost::Message)]
struct NewerSensorMessage {
    /// Wire-identical to `SensorMessage.heartbeat` (an embedded message).
    #[prost(bytes = "vec", optional, tag = "1")]
    heartbeat: Option<Vec<u8>>,
    /// A message kind added after this release.
    #[prost(bytes = "vec", optional, tag = "9")]
    newer_kind: Option<Vec<u8>>,
}

/// The compatibility rule (README "Upgrades"): a sensor one release older or
/// newer than the decider keeps working. Older: it lacks the newest field
/// (`sensor_instance`, added in 0.2). Newer: it sends fields and a message
/// kind this decider does not know. Both are acked and judged healthy.
#[tokio::test]
async fn sensors_one_release_older_or_newer_keep_working() {
    use prost::Message as _;
    let (s, _dir) = start(false).await;

    // Older: a 0.1 heartbeat, no sensor_instance.
    let mut old = hb("compute1", "boot-a", 1);
    if let Some(v1::sensor_message::Kind::Heartbeat(h)) = old.kind.as_mut() {
        h.sensor_version = "0.1.0".into();
        assert!(h.sensor_instance.is_empty());
    }
    let (tx, mut inbound) = open(&s, Some(TOKEN1), old)
        .await
        .expect("old sensor accepted");
    assert_eq!(next_ack(&mut inbound).await, 1);
    drop(tx);
    drop(inbound);

    // Newer: unknown fields 98 (text) and 99 (varint) in the heartbeat, and
    // a message of an unknown kind between two heartbeats. Numbers far past
    // the newest field: 15, used here before, became `system_uuid`.
    let newer_hb = |seq: u64| {
        let Some(v1::sensor_message::Kind::Heartbeat(mut h)) = hb("compute1", "boot-a", seq).kind
        else {
            unreachable!("hb builds a heartbeat")
        };
        h.sensor_version = "9.9.0".into();
        h.sensor_instance = "run-newer".into();
        let mut bytes = h.encode_to_vec();
        // Tags as varints: (98 << 3) | 2 = 786, (99 << 3) | 0 = 792.
        bytes.extend_from_slice(&[0x92, 0x06, 3, b'n', b'e', b'w', 0x98, 0x06, 42]);
        NewerSensorMessage {
            heartbeat: Some(bytes),
            newer_kind: None,
        }
    };
    let unknown_kind = NewerSensorMessage {
        heartbeat: None,
        newer_kind: Some(vec![(1 << 3) | 2, 2, b'h', b'i']),
    };
    let channel = Channel::from_shared(url(&s))
        .expect("url")
        .connect()
        .await
        .expect("connect");
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.expect("ready");
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    for m in [newer_hb(1), unknown_kind, newer_hb(2)] {
        tx.send(m).await.expect("queue");
    }
    let mut req = tonic::Request::new(ReceiverStream::new(rx));
    let v: MetadataValue<_> = format!("Bearer {TOKEN1}").parse().expect("metadata");
    req.metadata_mut().insert("authorization", v);
    let codec = tonic_prost::ProstCodec::<NewerSensorMessage, v1::DeciderMessage>::default();
    let mut answers = grpc
        .streaming(
            req,
            tonic::codegen::http::uri::PathAndQuery::from_static("/vigil.v1.SensorStream/Stream"),
            codec,
        )
        .await
        .expect("newer sensor accepted")
        .into_inner();
    loop {
        let m = tokio::time::timeout(Duration::from_secs(5), answers.message())
            .await
            .expect("an answer within 5 s")
            .expect("the stream stays open past the unknown kind")
            .expect("stream open");
        if let Some(v1::decider_message::Kind::Ack(a)) = m.kind {
            if a.seq == 2 {
                break;
            }
        }
    }
    let n = operator(&s)
        .await
        .get_node(v1::GetNodeRequest {
            name: "compute1".into(),
        })
        .await
        .expect("GetNode")
        .into_inner();
    assert_eq!(n.verdict, v1::Verdict::Healthy as i32, "{:?}", n.reasons);
    let sensor = n.sensor.expect("sensor witness");
    assert_eq!(sensor.seq, 2);
    assert_eq!(sensor.latest.expect("latest").sensor_version, "9.9.0");
    drop(tx);
    s.shutdown().await;
}
