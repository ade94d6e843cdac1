//! TLS, mutual TLS, certificates bound to nodes and the read token, over
//! real gRPC in process: a decider on port 0 with certificates the test
//! makes, clients built the way the sensor and the CLI build theirs
//! (`vigil_proto::connect`).

use crate::cli::ClientArgs;
use crate::config::{Config, NodeConfig, TlsConfig};
use crate::metrics::RejectReason;
use crate::serve::{Server, Witnesses};
use std::path::PathBuf;
use std::time::Duration;
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::MetadataValue;
use tonic::Code;
use vigil_proto::connect::{endpoint, ClientTls};
use vigil_proto::v1;
use vigil_proto::v1::operator_client::OperatorClient;
use vigil_proto::v1::sensor_stream_client::SensorStreamClient;
use vigil_tests::certs::{Issued, Pki};

const TOKEN1: &str = "compute1-token-0123456789abcdef";
const TOKEN2: &str = "compute2-token-0123456789abcdef";
const READ: &str = "read-token-0123456789abcdef";

struct Lab {
    server: Server,
    pki: Pki,
    dir: tempfile::TempDir,
}

impl Lab {
    fn url(&self) -> String {
        format!("https://{}", self.server.grpc_addr)
    }

    fn tls(&self, client: Option<&Issued>) -> ClientTls {
        ClientTls {
            ca_file: Some(self.pki.ca_file()),
            cert_file: client.map(|c| c.cert.clone()),
            key_file: client.map(|c| c.key.clone()),
        }
    }

    fn file(&self, name: &str, text: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::write(&p, text).expect("write file");
        p
    }
}

async fn start() -> Lab {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = Pki::new(dir.path(), "vigil");
    let srv = pki.server("decider", &["127.0.0.1", "localhost"]);
    let mut cfg = Config::default();
    cfg.server.listen = "127.0.0.1:0".parse().expect("addr");
    cfg.metrics.listen = "127.0.0.1:0".parse().expect("addr");
    cfg.nova.enabled = false;
    cfg.ping.enabled = false;
    cfg.engine.tick = Duration::from_millis(50);
    cfg.server.tls = Some(TlsConfig {
        cert: srv.cert,
        key: srv.key,
        client_ca: Some(pki.ca_file()),
        cert_names_node: true,
    });
    let lab_dir = dir.path().to_path_buf();
    let write = |name: &str, text: &str| {
        let p = lab_dir.join(name);
        std::fs::write(&p, text).expect("write token");
        p
    };
    cfg.server.read_token_file = Some(write("read.token", READ));
    for (name, token) in [("compute1", TOKEN1), ("compute2", TOKEN2)] {
        cfg.nodes.push(NodeConfig {
            name: name.into(),
            token_file: write(&format!("{name}.token"), token),
            management_addresses: vec![],
            segment: "default".into(),
            system_uuid: None,
        });
    }
    let tokens = cfg.validate().expect("valid test config");
    let server = Server::start(cfg, tokens, Witnesses::default())
        .await
        .expect("server starts");
    Lab { server, pki, dir }
}

fn hb(node: &str) -> v1::SensorMessage {
    v1::SensorMessage {
        kind: Some(v1::sensor_message::Kind::Heartbeat(v1::Heartbeat {
            node: node.into(),
            boot_id: "boot-a".into(),
            seq: 1,
            interval_ms: 1000,
            mode: v1::ProbeMode::Ebpf as i32,
            ..Default::default()
        })),
    }
}

/// Streams one heartbeat for `node` as the sensor would; `Ok` with the
/// acknowledged seq, or what went wrong (a connect error or the status).
async fn stream(url: &str, tls: &ClientTls, token: &str, node: &str) -> Result<u64, String> {
    let channel = endpoint(url, tls, true, false)
        .map_err(|e| format!("endpoint: {e}"))?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .map_err(|e| format!("connect: {e:?}"))?;
    let mut client = SensorStreamClient::new(channel);
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(hb(node)).await.map_err(|e| e.to_string())?;
    let mut req = tonic::Request::new(ReceiverStream::new(rx));
    let v: MetadataValue<_> = format!("Bearer {token}").parse().expect("metadata");
    req.metadata_mut().insert("authorization", v);
    let answer = async {
        let mut inbound = client.stream(req).await?.into_inner();
        loop {
            match inbound.message().await? {
                Some(v1::DeciderMessage {
                    kind: Some(v1::decider_message::Kind::Ack(a)),
                }) => return Ok(a.seq),
                Some(_) => continue,
                None => return Err(tonic::Status::unknown("stream ended without an ack")),
            }
        }
    };
    let r: Result<u64, tonic::Status> = tokio::time::timeout(Duration::from_secs(10), answer)
        .await
        .map_err(|_| "no answer within 10 s".to_string())?;
    drop(tx);
    r.map_err(|s| format!("{:?}: {}", s.code(), s.message()))
}

#[tokio::test]
async fn sensors_and_operators_over_mutual_tls() {
    let lab = start().await;
    let url = lab.url();
    let c1 = lab.pki.client("compute1", &["compute1"], None);
    let c1_cn = lab.pki.client("compute1-cn", &[], Some("compute1"));
    let c2 = lab.pki.client("compute2", &["compute2"], None);
    let other = Pki::new(lab.dir.path(), "other").client("rogue", &["compute1"], None);

    // The right certificate (by SAN, or by CN alone) and the node's token.
    assert_eq!(
        stream(&url, &lab.tls(Some(&c1)), TOKEN1, "compute1").await,
        Ok(1)
    );
    assert_eq!(
        stream(&url, &lab.tls(Some(&c1_cn)), TOKEN1, "compute1").await,
        Ok(1)
    );

    // No client certificate: the TLS handshake fails, no stream.
    let e = stream(&url, &lab.tls(None), TOKEN1, "compute1")
        .await
        .expect_err("a sensor without a certificate");
    println!("no client certificate: {e}");
    // A certificate from another CA.
    let e = stream(&url, &lab.tls(Some(&other)), TOKEN1, "compute1")
        .await
        .expect_err("a certificate from another CA");
    println!("certificate from another CA: {e}");
    // compute2's certificate with compute1's (stolen) token.
    let e = stream(&url, &lab.tls(Some(&c2)), TOKEN1, "compute1")
        .await
        .expect_err("another node's certificate");
    println!("compute2's certificate streaming as compute1: {e}");
    assert!(
        e.starts_with("PermissionDenied") && e.contains("compute2"),
        "{e}"
    );
    assert_eq!(lab.server.metrics.rejected(RejectReason::Certificate), 1);
    // The right certificate, the wrong token: the token is still needed.
    let e = stream(&url, &lab.tls(Some(&c1)), TOKEN2, "compute1")
        .await
        .expect_err("certificate without its token");
    assert!(e.starts_with("Unauthenticated"), "{e}");
    // Plain HTTP/2 to the TLS port.
    let plain = format!("http://{}", lab.server.grpc_addr);
    // (127.0.0.1 is loopback, so the client lets the token go and the
    // decider's port is what refuses.)
    let e = stream(&plain, &ClientTls::default(), TOKEN1, "compute1")
        .await
        .expect_err("plain text to the TLS port");
    println!("plain text to the TLS port: {e}");

    // Reads: the CLI's connection, with and without the read token.
    let args = |token: Option<PathBuf>, client: Option<&Issued>| ClientArgs {
        server: url.clone(),
        output: crate::cli_format::FormatArgs {
            format: crate::cli_format::Format::Json,
            json: false,
        },
        token_file: token,
        ca_file: Some(lab.pki.ca_file()),
        cert_file: client.map(|c| c.cert.clone()),
        key_file: client.map(|c| c.key.clone()),
        allow_plaintext_token: false,
    };
    let op_cert = lab.pki.client("operator", &["operator"], None);
    let read = lab.file("cli-read.token", READ);
    let wrong = lab.file("cli-wrong.token", "not-the-read-token-0123456789");
    let (mut op, auth) = crate::cli::connect(&args(Some(read), Some(&op_cert)))
        .await
        .expect("CLI connects over TLS");
    let nodes = crate::cli::list_all_nodes(&mut op, &auth, v1::Verdict::Unspecified)
        .await
        .expect("reads with the read token");
    assert_eq!(nodes.len(), 2);
    for (token, what) in [(None, "no token"), (Some(wrong), "a wrong token")] {
        let (mut op, auth) = crate::cli::connect(&args(token, Some(&op_cert)))
            .await
            .expect("CLI connects");
        let s = crate::cli::list_all_nodes(&mut op, &auth, v1::Verdict::Unspecified)
            .await
            .expect_err(what);
        println!("ListNodes with {what}: {:?} {}", s.code(), s.message());
        assert_eq!(s.code(), Code::Unauthenticated, "{what}: {s:?}");
        let s = op
            .get_node(auth.request(v1::GetNodeRequest {
                name: "compute1".into(),
            }))
            .await
            .expect_err(what);
        assert_eq!(s.code(), Code::Unauthenticated, "{what}: {s:?}");
    }
    // Without a client certificate the operator gets no answer at all.
    let (mut op, auth) = match crate::cli::connect(&args(None, None)).await {
        Ok(c) => c,
        Err(e) => {
            println!("CLI without a certificate: {e:#}");
            return;
        }
    };
    let r = OperatorClient::get_node(
        &mut op,
        auth.request(v1::GetNodeRequest {
            name: "compute1".into(),
        }),
    )
    .await;
    let s = r.expect_err("reads without a client certificate");
    println!("CLI without a certificate: {:?} {}", s.code(), s.message());
}
