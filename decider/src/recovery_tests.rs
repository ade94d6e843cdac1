//! In-process recovery tests: a whole decider (engine, sensor stream, operator
//! API over real gRPC, the recovery driver and `vigil-recovery`'s workflow with
//! a real SQLite journal) whose outside world is the workflow's in-memory
//! Nova, fencers and notifier. The same Nova state feeds the decider's Nova
//! witness, so what the workflow changes (a disabled service, forced down) is
//! what the judgment sees next. The lab tests (tests/tests/recovery_lab.rs)
//! run the same paths against real Nova, BMCs and receivers.

use crate::config::{Config, NodeConfig};
use crate::recovery::nova::LazyNova;
use crate::recovery::RecoveryParts;
use crate::serve::{Server, Witnesses};
use crate::witness::{ComputeService, NovaSource, ServerOnHost, WitnessError};
use futures::future::BoxFuture;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;
use tonic::Code;
use vigil_proto::v1;
use vigil_proto::v1::operator_client::OperatorClient;
use vigil_proto::v1::sensor_stream_client::SensorStreamClient;
use vigil_recovery::config::RecoveryConfig;
use vigil_recovery::fence::FenceLevel;
use vigil_recovery::journal::sqlite::SqliteJournal;
use vigil_recovery::journal::{IncidentStatus, InstanceState, Journal, StepKind, StepOutcome};
use vigil_recovery::notify::Notifier;
use vigil_recovery::workflow::fakes::{
    server, Bmc, CallLog, CrashingJournal, FakeClock, FakeFencer, FakeNotifier, FakeNova,
};
use vigil_recovery::workflow::{Mode, NovaActions, ServerStatus};
use vigil_verdict::WitnessKind;

const OPERATOR: &str = "operator-token-0123456789abcdef";
const NODES: [&str; 2] = ["compute1", "compute2"];
/// A third node, for tests where two of three die (the decider refuses to
/// judge anyone dead when every sensor goes silent at once).
const NODES3: [&str; 3] = ["compute1", "compute2", "compute3"];

/// One at a time: each test runs a whole decider whose loops tick every
/// 10–100 ms, and two at once saturate a two-CPU machine until the engine's
/// thread starves and verdicts miss the tests' deadlines (seen in CI).
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn token(node: &str) -> String {
    format!("{node}-sensor-token-0123456789")
}

/// The decider's Nova witness over the workflow's fake Nova: services as the
/// fake has them, `updated_at` advancing except for frozen hosts.
struct MirrorNova {
    fake: Arc<FakeNova>,
    frozen: Mutex<BTreeSet<String>>,
    counter: AtomicU64,
    /// The `updated_at` each host last reported: a frozen host keeps it, as
    /// a real one does (a new value at the freeze would read as a report
    /// after it, which the kdump rule rightly distrusts).
    last: Mutex<std::collections::BTreeMap<String, String>>,
}

impl NovaSource for MirrorNova {
    fn list_compute_services(&self) -> BoxFuture<'_, Result<Vec<ComputeService>, WitnessError>> {
        Box::pin(async move {
            let list = self
                .fake
                .compute_services()
                .await
                .map_err(|e| WitnessError::Failed {
                    what: "fake services".into(),
                    source: Box::new(e),
                })?;
            let tick = self.counter.fetch_add(1, Ordering::SeqCst);
            let frozen = self.frozen.lock().expect("frozen").clone();
            let mut last = self.last.lock().expect("last");
            Ok(list
                .into_iter()
                .map(|s| ComputeService {
                    updated_at: Some(if frozen.contains(&s.host) {
                        last.get(&s.host)
                            .cloned()
                            .unwrap_or_else(|| "frozen".into())
                    } else {
                        let t = format!("t{tick}");
                        last.insert(s.host.clone(), t.clone());
                        t
                    }),
                    id: s.id,
                    state: if s.up { "up" } else { "down" }.into(),
                    status: if s.enabled { "enabled" } else { "disabled" }.into(),
                    forced_down: s.forced_down,
                    disabled_reason: s.disabled_reason,
                    host: s.host,
                    host_ip: None,
                })
                .collect())
        })
    }

    fn list_servers_on_host<'a>(
        &'a self,
        host: &'a str,
    ) -> BoxFuture<'a, Result<Vec<ServerOnHost>, WitnessError>> {
        Box::pin(async move {
            let list = self
                .fake
                .servers_on_host(host)
                .await
                .map_err(|e| WitnessError::Failed {
                    what: "fake servers".into(),
                    source: Box::new(e),
                })?;
            Ok(list
                .into_iter()
                .map(|s| ServerOnHost {
                    id: s.id,
                    name: s.name,
                    status: s.status.to_string(),
                    addresses: vec![],
                })
                .collect())
        })
    }
}

/// The outside world of one test, kept across decider restarts (as Nova and
/// the BMCs outlive a decider).
struct World {
    nodes: &'static [&'static str],
    dir: tempfile::TempDir,
    clock: Arc<FakeClock>,
    calls: CallLog,
    nova: Arc<FakeNova>,
    mirror: Arc<MirrorNova>,
    fencer: Arc<FakeFencer>,
    notifier: Arc<FakeNotifier>,
    /// `[kdump] listen`, with 127.0.0.1 as compute1's management address.
    kdump: Option<std::net::SocketAddr>,
}

impl World {
    fn new(bmc: Bmc, servers: &[&str]) -> World {
        World::with_nodes(&NODES, bmc, servers)
    }

    fn with_nodes(nodes: &'static [&'static str], bmc: Bmc, servers: &[&str]) -> World {
        World::with_clock(nodes, bmc, servers, FakeClock::new())
    }

    fn with_clock(
        nodes: &'static [&'static str],
        bmc: Bmc,
        servers: &[&str],
        clock: Arc<FakeClock>,
    ) -> World {
        let dir = tempfile::tempdir().expect("tempdir");
        for n in nodes {
            std::fs::write(dir.path().join(format!("{n}.token")), token(n)).expect("token");
        }
        std::fs::write(dir.path().join("operator.token"), OPERATOR).expect("token");
        let calls: CallLog = Arc::new(Mutex::new(Vec::new()));
        let nova = FakeNova::new(nodes, clock.clone(), calls.clone());
        for id in servers {
            nova.add_server(server(id, "compute1", ServerStatus::Active));
        }
        let mirror = Arc::new(MirrorNova {
            fake: nova.clone(),
            frozen: Mutex::new(BTreeSet::new()),
            counter: AtomicU64::new(0),
            last: Mutex::default(),
        });
        World {
            nodes,
            fencer: FakeFencer::new("bmc-compute1", bmc, calls.clone()),
            notifier: FakeNotifier::new(0),
            dir,
            clock,
            calls,
            nova,
            mirror,
            kdump: None,
        }
    }

    fn journal_path(&self) -> std::path::PathBuf {
        self.dir.path().join("journal.sqlite")
    }

    fn config(&self) -> Config {
        let mut cfg = Config::default();
        cfg.server.listen = "127.0.0.1:0".parse().expect("addr");
        cfg.server.operator_token_file = Some(self.dir.path().join("operator.token"));
        cfg.metrics.enabled = false;
        cfg.ping.enabled = false;
        cfg.nova.poll_interval = Duration::from_millis(100);
        cfg.engine.tick = Duration::from_millis(50);
        cfg.policy.required_for_dead = vec![WitnessKind::Sensor, WitnessKind::Nova];
        cfg.policy.sensor.silent_after = Duration::from_millis(500);
        cfg.policy.nova.report_interval = Duration::from_secs(1);
        cfg.policy.nova.stale_margin = Duration::from_millis(200);
        cfg.policy.confirm.dead_for = Duration::from_millis(200);
        cfg.policy.confirm.healthy_for = Duration::from_millis(300);
        for &n in self.nodes {
            cfg.nodes.push(NodeConfig {
                name: n.into(),
                token_file: self.dir.path().join(format!("{n}.token")),
                management_addresses: vec![],
                segment: "default".into(),
                system_uuid: None,
            });
        }
        if let Some(listen) = self.kdump {
            cfg.kdump = Some(crate::config::KdumpConfig { listen });
            if let Some(n) = cfg.nodes.iter_mut().find(|n| n.name == "compute1") {
                n.management_addresses = vec!["127.0.0.1".parse().expect("ip")];
            }
            // fence_kdump_send -i 1 here: two intervals without a message
            // and the dump is written.
            cfg.policy.kdump.fresh_for = Duration::from_secs(2);
            cfg.policy.kdump.power_off_after = Duration::from_secs(60);
            // Nova's wait alone cannot make the node dead within the test:
            // only the kdump fast path can.
            cfg.policy.nova.report_interval = Duration::from_secs(60);
        }
        let mut r = RecoveryConfig::default();
        r.journal.path = self.journal_path();
        r.evacuation.poll_interval = Duration::from_millis(10);
        r.fencing.confirm_poll_interval = Duration::from_millis(10);
        cfg.recovery = Some(r);
        cfg
    }

    async fn start(&self, mode: Mode, journal: Option<Arc<dyn Journal>>) -> Server {
        // VIGIL_TEST_LOG=info shows the decider's logs for a failing test.
        if let Ok(f) = std::env::var("VIGIL_TEST_LOG") {
            crate::cli::init_tracing(crate::config::LogFormat::Text, &f);
        }
        let cfg = self.config();
        let tokens = cfg.validate().expect("valid test config");
        let journal = journal.unwrap_or_else(|| {
            Arc::new(SqliteJournal::open(&self.journal_path()).expect("journal"))
        });
        let mut levels = BTreeMap::new();
        levels.insert(
            "compute1".to_string(),
            vec![FenceLevel {
                fencer: self.fencer.clone(),
                deadline: Duration::from_secs(5),
                storage_fence: false,
            }],
        );
        let recovery = cfg.recovery.clone().expect("recovery config");
        let parts = RecoveryParts {
            config: recovery,
            mode,
            levels,
            notifiers: vec![self.notifier.clone() as Arc<dyn Notifier>],
            journal,
            clock: self.clock.clone(),
            nova: Arc::new(LazyNova::connected(self.nova.clone())),
            prober: None,
            reference_addresses: vec![],
            probe_timeout: Duration::from_secs(1),
            nova_timeout: Duration::from_secs(5),
            cluster: None,
        };
        let witnesses = Witnesses {
            nova: Some(self.mirror.clone()),
            prober: None,
            recovery: Some(parts),
            cluster: None,
        };
        Server::start(cfg, tokens, witnesses)
            .await
            .expect("decider starts")
    }

    /// compute1's management side dies: its updated_at stops.
    fn freeze(&self, node: &str) {
        self.mirror
            .frozen
            .lock()
            .expect("frozen")
            .insert(node.into());
    }

    fn thaw(&self, node: &str) {
        self.mirror.frozen.lock().expect("frozen").remove(node);
    }

    fn calls(&self) -> Vec<String> {
        self.calls.lock().expect("calls").clone()
    }

    /// Calls that change something in Nova or at a BMC.
    fn mutations(&self) -> Vec<String> {
        self.calls()
            .into_iter()
            .filter(|c| {
                [
                    "disable",
                    "enable",
                    "forced_down",
                    "evacuate",
                    "reset_state",
                    "power_off",
                    "aggregate_add",
                ]
                .iter()
                .any(|p| c.starts_with(p))
            })
            .collect()
    }
}

/// A sensor: heartbeats every 100 ms over a real stream until dropped.
struct Sensor {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Sensor {
    async fn start(s: &Server, node: &str, boot: &str) -> Sensor {
        let channel = Channel::from_shared(format!("http://{}", s.grpc_addr))
            .expect("url")
            .connect()
            .await
            .expect("connect");
        let mut client = SensorStreamClient::new(channel);
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let mut req = tonic::Request::new(ReceiverStream::new(rx));
        let v: MetadataValue<_> = format!("Bearer {}", token(node)).parse().expect("metadata");
        req.metadata_mut().insert("authorization", v);
        let (node, boot) = (node.to_string(), boot.to_string());
        let first = heartbeat(&node, &boot, 1);
        tx.send(first).await.expect("first heartbeat");
        let mut inbound = client.stream(req).await.expect("stream").into_inner();
        let (stop, mut stopped) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let mut seq = 1;
            loop {
                tokio::select! {
                    _ = &mut stopped => return,
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                    m = inbound.message() => if !matches!(m, Ok(Some(_))) { return },
                }
                seq += 1;
                if tx.send(heartbeat(&node, &boot, seq)).await.is_err() {
                    return;
                }
            }
        });
        Sensor { stop: Some(stop) }
    }
}

impl Drop for Sensor {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

fn heartbeat(node: &str, boot: &str, seq: u64) -> v1::SensorMessage {
    v1::SensorMessage {
        kind: Some(v1::sensor_message::Kind::Heartbeat(v1::Heartbeat {
            node: node.into(),
            boot_id: boot.into(),
            seq,
            interval_ms: 100,
            mode: v1::ProbeMode::Ebpf as i32,
            nova_compute: Some(v1::NovaCompute {
                state: v1::nova_compute::State::Running as i32,
                pid: 42,
                blocked_ms: 0,
            }),
            ..Default::default()
        })),
    }
}

async fn operator(s: &Server) -> OperatorClient<Channel> {
    OperatorClient::new(
        Channel::from_shared(format!("http://{}", s.grpc_addr))
            .expect("url")
            .connect()
            .await
            .expect("connect"),
    )
}

async fn verdict(s: &Server, node: &str) -> String {
    let n = operator(s)
        .await
        .get_node(v1::GetNodeRequest { name: node.into() })
        .await
        .expect("GetNode")
        .into_inner();
    crate::table::verdict_name(n.verdict).to_string()
}

/// Polls `check` every 20 ms until it returns `Some` or `deadline` passes.
async fn until<T>(what: &str, deadline: Duration, mut check: impl AsyncFnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            start.elapsed() < deadline,
            "timed out after {deadline:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn wait_verdict(s: &Server, node: &str, want: &str, deadline: Duration) {
    until(&format!("{node} {want}"), deadline, async || {
        (verdict(s, node).await == want).then_some(())
    })
    .await
}

/// Both sensors up and both nodes healthy.
async fn healthy_pair(w: &World, s: &Server) -> (Sensor, Sensor) {
    let s1 = Sensor::start(s, "compute1", "boot-1").await;
    let s2 = Sensor::start(s, "compute2", "boot-2").await;
    let _ = w;
    wait_verdict(s, "compute1", "healthy", Duration::from_secs(10)).await;
    wait_verdict(s, "compute2", "healthy", Duration::from_secs(10)).await;
    (s1, s2)
}

/// Every verdict compute1 goes through, from a WatchVerdicts stream.
fn watch(s: &Server) -> Arc<Mutex<Vec<String>>> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let addr = s.grpc_addr;
    let out = seen.clone();
    tokio::spawn(async move {
        let Ok(ch) = Channel::from_shared(format!("http://{addr}"))
            .expect("url")
            .connect()
            .await
        else {
            return;
        };
        let Ok(stream) = OperatorClient::new(ch)
            .watch_verdicts(v1::WatchVerdictsRequest {
                node: "compute1".into(),
            })
            .await
        else {
            return;
        };
        let mut stream = stream.into_inner();
        while let Ok(Some(c)) = stream.message().await {
            out.lock()
                .expect("seen")
                .push(crate::table::verdict_name(c.to).to_string());
        }
    });
    seen
}

fn with_token<T>(msg: T, token: &str) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    let v: MetadataValue<_> = format!("Bearer {token}").parse().expect("metadata");
    req.metadata_mut().insert("authorization", v);
    req
}

async fn incidents(s: &Server) -> Vec<v1::Incident> {
    operator(s)
        .await
        .list_incidents(v1::ListIncidentsRequest { open_only: false })
        .await
        .expect("ListIncidents")
        .into_inner()
        .incidents
}

async fn incident(s: &Server, id: &str) -> v1::Incident {
    operator(s)
        .await
        .get_incident(v1::GetIncidentRequest { id: id.into() })
        .await
        .expect("GetIncident")
        .into_inner()
}

fn steps(inc: &v1::Incident, phase: &str) -> Vec<String> {
    inc.timeline
        .iter()
        .filter(|t| t.phase == phase)
        .map(|t| format!("{} {}", t.step, t.outcome))
        .collect()
}

#[tokio::test]
async fn a_dead_node_is_fenced_forced_down_and_evacuated_and_verdicts_follow() {
    let _serial = SERIAL.lock().await;
    let w = World::new(Bmc::Works, &["a", "b", "c"]);
    let s = w.start(Mode::Live, None).await;
    let (s1, _s2) = healthy_pair(&w, &s).await;
    let seen = watch(&s);
    tokio::time::sleep(Duration::from_millis(100)).await;

    // Power loss: the sensor goes silent, nova-compute stops reporting.
    drop(s1);
    w.freeze("compute1");
    wait_verdict(&s, "compute1", "recovered", Duration::from_secs(15)).await;

    let path: Vec<String> = seen.lock().expect("seen").clone();
    let want = ["dead", "fencing", "fenced", "evacuating", "recovered"];
    let mut it = path.iter();
    for v in want {
        assert!(
            it.any(|p| p == v),
            "verdicts {path:?} do not pass {want:?} in order"
        );
    }
    assert_eq!(w.fencer.offs(), 1, "one power-off");
    for id in ["a", "b", "c"] {
        assert_eq!(w.nova.evacuate_calls(id), 1, "one evacuate of {id}");
        let srv = w.nova.get(id);
        assert_eq!(srv.status, ServerStatus::Active);
        assert_ne!(srv.host.as_deref(), Some("compute1"));
    }
    let svc = w.nova.service_of("compute1");
    assert!(!svc.enabled && svc.forced_down, "{svc:?}");
    let reason = svc.disabled_reason.unwrap_or_default();
    assert!(reason.starts_with("vigil:"), "{reason}");
    // Fence confirmed before the first Nova change that lets evacuation go.
    let calls = w.calls();
    let off = calls
        .iter()
        .position(|c| c.starts_with("power_off"))
        .expect("power_off");
    let down = calls
        .iter()
        .position(|c| c.starts_with("forced_down compute1 true"))
        .expect("forced_down");
    let first_evac = calls
        .iter()
        .position(|c| c.starts_with("evacuate"))
        .expect("evacuate");
    assert!(off < down && down < first_evac, "{calls:?}");

    let list = incidents(&s).await;
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0].state, "completed");
    let inc = incident(&s, &list[0].id).await;
    let ends = steps(&inc, "end");
    for want in [
        "self_check:decider ok",
        "disable_service:compute1 ok",
        "power_off:fake bmc-compute1 ok",
        "confirm_off:fake bmc-compute1 ok",
        "force_down:compute1 ok",
        "select_instances:compute1 ok",
        "evacuate:a ok",
        "verify:a ok",
    ] {
        assert!(
            ends.contains(&want.to_string()),
            "{want} missing from {ends:?}"
        );
    }
    assert!(inc.timeline.iter().all(|t| t.at_unix_ms > 0));
    assert_eq!(inc.instances.len(), 3);
    assert!(inc
        .instances
        .iter()
        .all(|i| i.status == "evacuated" && i.attempts == 1 && !i.to_host.is_empty()));
    let evidence: serde_json::Value =
        serde_json::from_str(&inc.evidence_json).expect("evidence JSON");
    assert_eq!(evidence["verdict"], "dead", "{evidence}");
    assert_eq!(evidence["opinions"]["sensor"], "dead", "{evidence}");

    until("notifications", Duration::from_secs(5), async || {
        let k = w.notifier.kinds();
        (k.contains(&"incident-opened")
            && k.contains(&"node-fenced")
            && k.contains(&"evacuation-finished"))
        .then_some(())
    })
    .await;

    // The node comes back with a new boot id: the incident is marked
    // recovered and the node is judged by its evidence again. Its service
    // stays disabled by Vigil ("vigil:" reason), which is not maintenance.
    w.thaw("compute1");
    let _s1 = Sensor::start(&s, "compute1", "boot-1b").await;
    // 30 s, not 10: under the whole unit tier on two CPUs (in-process
    // deciders ticking every 50 ms in parallel tests) this once took longer
    // than 10 s; alone it takes under 1 s.
    wait_verdict(&s, "compute1", "healthy", Duration::from_secs(30)).await;
    let j = SqliteJournal::open(&w.journal_path()).expect("journal");
    let last = j
        .latest_for_node("compute1")
        .await
        .expect("read")
        .expect("incident");
    assert!(last.recovered_at.is_some(), "{last:?}");
    assert_eq!(w.fencer.offs(), 1);
    s.shutdown().await;
}

#[tokio::test]
async fn a_bmc_that_fails_stops_in_needs_attention_until_an_operator_confirms() {
    let _serial = SERIAL.lock().await;
    let w = World::new(Bmc::Refuses, &["a", "b"]);
    let s = w.start(Mode::Live, None).await;
    let (s1, _s2) = healthy_pair(&w, &s).await;
    drop(s1);
    w.freeze("compute1");
    wait_verdict(&s, "compute1", "needs-attention", Duration::from_secs(15)).await;
    assert_eq!(w.nova.calls_starting("evacuate"), 0, "{:?}", w.calls());
    assert_eq!(w.nova.calls_starting("forced_down"), 0, "{:?}", w.calls());
    let list = incidents(&s).await;
    assert_eq!(list[0].state, "needs-attention");
    until("a page", Duration::from_secs(5), async || {
        w.notifier
            .kinds()
            .contains(&"needs-attention")
            .then_some(())
    })
    .await;

    // Write calls need the operator token.
    let mut op = operator(&s).await;
    let req = v1::ConfirmPowerOffRequest {
        node: "compute1".into(),
        operator: "alice".into(),
        reason: "pulled the power cords".into(),
    };
    let e = op
        .confirm_power_off(req.clone())
        .await
        .expect_err("no token");
    assert_eq!(e.code(), Code::Unauthenticated);
    let e = op
        .confirm_power_off(with_token(req.clone(), "wrong-token-0123456789"))
        .await
        .expect_err("wrong token");
    assert_eq!(e.code(), Code::Unauthenticated);
    let e = op
        .confirm_power_off(with_token(
            v1::ConfirmPowerOffRequest {
                node: "compute2".into(),
                ..req.clone()
            },
            OPERATOR,
        ))
        .await
        .expect_err("no incident on compute2");
    assert_eq!(e.code(), Code::FailedPrecondition);
    // The same through `vigil-decider confirm-power-off`, exit code by case.
    let server = format!("http://{}", s.grpc_addr);
    let good = w.dir.path().join("operator.token");
    let wrong = w.dir.path().join("wrong.token");
    std::fs::write(&wrong, "wrong-token-0123456789").expect("token");
    let cli = |node: &str, token: &std::path::Path, server: &str| {
        let argv = [
            "vigil-decider",
            "confirm-power-off",
            node,
            "--operator",
            "alice",
            "--reason",
            "pulled the power cords",
            "--token-file",
            &token.display().to_string(),
            "--server",
            server,
        ]
        .map(str::to_string);
        match <crate::cli::Cli as clap::Parser>::try_parse_from(argv).expect("parses") {
            crate::cli::Cli {
                command: crate::cli::Command::ConfirmPowerOff(a),
            } => a,
            other => panic!("parsed as {other:?}"),
        }
    };
    use crate::cli_confirm::run;
    use crate::cli_exit as exit;
    assert_eq!(run(&cli("nope", &good, &server)).await, exit::NOT_FOUND);
    assert_eq!(run(&cli("compute1", &wrong, &server)).await, exit::REFUSED);
    assert_eq!(
        run(&cli("compute2", &good, &server)).await,
        exit::NOTHING_TO_DO
    );
    let missing = w.dir.path().join("no-such.token");
    assert_eq!(run(&cli("compute1", &missing, &server)).await, exit::USAGE);
    assert_eq!(
        run(&cli("compute1", &good, "http://127.0.0.1:1")).await,
        exit::UNREACHABLE
    );
    let confirmed = crate::cli_confirm::confirm_power_off(&cli("compute1", &good, &server))
        .await
        .expect("confirmed through the CLI");
    assert_eq!(confirmed, list[0].id);
    let ok = v1::ConfirmPowerOffResponse {
        incident_id: confirmed,
    };

    wait_verdict(&s, "compute1", "recovered", Duration::from_secs(15)).await;
    for id in ["a", "b"] {
        assert_eq!(w.nova.evacuate_calls(id), 1, "one evacuate of {id}");
    }
    let inc = incident(&s, &ok.incident_id).await;
    assert_eq!(inc.state, "completed");
    assert!(
        inc.timeline
            .iter()
            .any(|t| t.step == "operator-confirmed-off" && t.detail.contains("alice")),
        "{:?}",
        inc.timeline
    );
    s.shutdown().await;
}

#[tokio::test]
async fn dry_run_journals_every_call_and_makes_none() {
    let _serial = SERIAL.lock().await;
    let w = World::new(Bmc::Works, &["a", "b"]);
    let s = w.start(Mode::DryRun, None).await;
    let (s1, _s2) = healthy_pair(&w, &s).await;
    drop(s1);
    w.freeze("compute1");
    let id = until("a dry-run incident", Duration::from_secs(15), async || {
        incidents(&s)
            .await
            .into_iter()
            .find(|i| i.state == "dry-run")
            .map(|i| i.id)
    })
    .await;
    assert!(
        w.mutations().is_empty(),
        "dry run changed: {:?}",
        w.mutations()
    );
    assert_eq!(w.fencer.offs(), 0);
    let inc = incident(&s, &id).await;
    assert!(inc.dry_run);
    let ends = steps(&inc, "end");
    for want in [
        "disable_service:compute1 dry-run",
        "power_off:fake bmc-compute1 dry-run",
        "confirm_off:fake bmc-compute1 dry-run",
        "force_down:compute1 dry-run",
        "evacuate:a dry-run",
        "evacuate:b dry-run",
    ] {
        assert!(
            ends.contains(&want.to_string()),
            "{want} missing from {ends:?}"
        );
    }
    // Nothing was fenced: the verdict stays dead, and no second incident
    // follows while it does.
    assert_eq!(verdict(&s, "compute1").await, "dead");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(incidents(&s).await.len(), 1);
    s.shutdown().await;
}

#[tokio::test]
async fn maintenance_is_never_acted_on() {
    let _serial = SERIAL.lock().await;
    let w = World::new(Bmc::Works, &["a"]);
    w.nova.set_service("compute1", |s| {
        s.enabled = false;
        s.disabled_reason = Some("operator: replacing a disk".into());
    });
    let s = w.start(Mode::Live, None).await;
    let s1 = Sensor::start(&s, "compute1", "boot-1").await;
    let _s2 = Sensor::start(&s, "compute2", "boot-2").await;
    wait_verdict(&s, "compute1", "maintenance", Duration::from_secs(10)).await;
    drop(s1);
    w.freeze("compute1");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(verdict(&s, "compute1").await, "maintenance");
    assert!(incidents(&s).await.is_empty());
    assert!(w.mutations().is_empty(), "{:?}", w.mutations());
    s.shutdown().await;
}

#[tokio::test]
async fn a_storm_refusal_acts_on_nothing_and_pages_once() {
    let _serial = SERIAL.lock().await;
    let w = World::new(Bmc::Works, &["a"]);
    // storm_max_dead = 0: any dead node is "too many".
    let s = {
        let cfg = {
            let mut c = w.config();
            if let Some(r) = c.recovery.as_mut() {
                r.guards.storm_max_dead = 0;
            }
            c
        };
        let tokens = cfg.validate().expect("valid");
        let mut levels = BTreeMap::new();
        levels.insert(
            "compute1".to_string(),
            vec![FenceLevel {
                fencer: w.fencer.clone(),
                deadline: Duration::from_secs(5),
                storage_fence: false,
            }],
        );
        let parts = RecoveryParts {
            config: cfg.recovery.clone().expect("recovery"),
            mode: Mode::Live,
            levels,
            notifiers: vec![w.notifier.clone() as Arc<dyn Notifier>],
            journal: Arc::new(SqliteJournal::open(&w.journal_path()).expect("journal")),
            clock: w.clock.clone(),
            nova: Arc::new(LazyNova::connected(w.nova.clone())),
            prober: None,
            reference_addresses: vec![],
            probe_timeout: Duration::from_secs(1),
            nova_timeout: Duration::from_secs(5),
            cluster: None,
        };
        Server::start(
            cfg,
            tokens,
            Witnesses {
                nova: Some(w.mirror.clone()),
                prober: None,
                recovery: Some(parts),
                cluster: None,
            },
        )
        .await
        .expect("start")
    };
    let (s1, _s2) = healthy_pair(&w, &s).await;
    drop(s1);
    w.freeze("compute1");
    let inc = until("a refused incident", Duration::from_secs(15), async || {
        incidents(&s)
            .await
            .into_iter()
            .find(|i| i.state == "aborted")
    })
    .await;
    let d = incident(&s, &inc.id).await;
    assert!(
        d.timeline.iter().any(|t| t.detail.contains("storm guard")),
        "{:?}",
        d.timeline
    );
    until("a page", Duration::from_secs(5), async || {
        w.notifier
            .kinds()
            .contains(&"needs-attention")
            .then_some(())
    })
    .await;
    assert!(w.mutations().is_empty(), "{:?}", w.mutations());
    assert_eq!(
        incidents(&s).await.len(),
        1,
        "one refusal recorded, not one per announcement"
    );
    s.shutdown().await;
}

/// Safety rule 6 at the engine: two of three nodes die together (67 % >
/// the policy's 50 %). Recovery's own guard would admit the first dead node
/// it hears of (1 of 3 is not more than half), so only the engine's hold,
/// set at the moment each turns `dead`, keeps both untouched.
#[tokio::test]
async fn two_of_three_nodes_dying_together_are_both_held_and_never_touched() {
    let _serial = SERIAL.lock().await;
    let w = World::with_nodes(&NODES3, Bmc::Works, &["a"]);
    let s = w.start(Mode::Live, None).await;
    let (s1, s2) = healthy_pair(&w, &s).await;
    let _s3 = Sensor::start(&s, "compute3", "boot-3").await;
    wait_verdict(&s, "compute3", "healthy", Duration::from_secs(10)).await;
    drop((s1, s2));
    w.freeze("compute1");
    w.freeze("compute2");
    for node in NODES {
        until(
            &format!("{node} dead and held by the storm guard"),
            Duration::from_secs(15),
            async || {
                let n = operator(&s)
                    .await
                    .get_node(v1::GetNodeRequest { name: node.into() })
                    .await
                    .expect("GetNode")
                    .into_inner();
                (crate::table::verdict_name(n.verdict) == "dead"
                    && n.reasons
                        .first()
                        .is_some_and(|r| r.starts_with("storm guard")))
                .then_some(())
            },
        )
        .await;
    }
    // A leak would show within milliseconds (the fakes answer at once);
    // watch for two seconds to be sure nothing trickles in.
    let watch_until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < watch_until {
        assert!(w.mutations().is_empty(), "{:?}", w.mutations());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(verdict(&s, "compute1").await, "dead");
    // Said and paged: one refused incident per held node, each paged once.
    let refused = until("both holds journaled", Duration::from_secs(5), async || {
        let list = incidents(&s).await;
        (list.iter().filter(|i| i.state == "aborted").count() == 2).then_some(list)
    })
    .await;
    assert_eq!(refused.len(), 2, "{refused:?}");
    let pages = w
        .notifier
        .kinds()
        .iter()
        .filter(|k| **k == "needs-attention")
        .count();
    assert_eq!(pages, 2, "{:?}", w.notifier.kinds());
    s.shutdown().await;
}

/// The decider "dies" after each n-th journal write in turn (its journal
/// fails from then on, so nothing after that point happens), then a new
/// decider starts on the same journal, Nova and BMC: the incident completes
/// with exactly one power-off and one evacuate per instance.
#[tokio::test]
async fn a_decider_restarted_after_any_step_completes_with_one_fence_and_one_evacuate_each() {
    let _serial = SERIAL.lock().await;
    // Count the writes of an uninterrupted run first.
    let total = {
        let w = World::new(Bmc::Works, &["a", "b"]);
        let counting = Arc::new(CrashingJournal {
            inner: Arc::new(SqliteJournal::open(&w.journal_path()).expect("journal")),
            budget: i64::MAX.into(),
        });
        let s = w.start(Mode::Live, Some(counting.clone())).await;
        let (s1, _s2) = healthy_pair(&w, &s).await;
        drop(s1);
        w.freeze("compute1");
        wait_verdict(&s, "compute1", "recovered", Duration::from_secs(15)).await;
        s.shutdown().await;
        i64::MAX - counting.budget.load(Ordering::SeqCst)
    };
    assert!(
        total > 10,
        "a run journals more than 10 writes, saw {total}"
    );
    // The last write ends the run: a crash after it is no crash.
    let budgets: Vec<i64> = (1..total).collect();
    for budget in budgets {
        eprintln!("decider dies after journal write {budget} of {total}");
        let w = World::new(Bmc::Works, &["a", "b"]);
        let crashing = Arc::new(CrashingJournal {
            inner: Arc::new(SqliteJournal::open(&w.journal_path()).expect("journal")),
            budget: budget.into(),
        });
        let s = w.start(Mode::Live, Some(crashing.clone())).await;
        let (s1, s2) = healthy_pair(&w, &s).await;
        drop(s1);
        w.freeze("compute1");
        until(
            &format!("the journal to stop after {budget} writes"),
            Duration::from_secs(15),
            async || (crashing.budget.load(Ordering::SeqCst) < 0).then_some(()),
        )
        .await;
        drop(s2);
        s.shutdown().await;

        let s = w.start(Mode::Live, None).await;
        let _s2 = Sensor::start(&s, "compute2", "boot-2").await;
        let end = until(
            "compute1 recovered or needs-attention",
            // A bound, not a pace: seen to take over 20 s on a machine
            // loaded by a parallel build and lab start.
            Duration::from_secs(60),
            async || {
                let v = verdict(&s, "compute1").await;
                (v == "recovered" || v == "needs-attention").then_some(v)
            },
        )
        .await;
        assert_eq!(w.fencer.offs(), 1, "budget {budget}: {:?}", w.calls());
        let j = SqliteJournal::open(&w.journal_path()).expect("journal");
        let list = j.list(10).await.expect("list");
        assert_eq!(list.len(), 1, "budget {budget}: one incident: {list:?}");
        let d = j.get(&list[0].id).await.expect("incident");
        // A crash between journaling an evacuate call and its answer leaves
        // the call's outcome unknown: that server is never evacuated again
        // and the incident pages (issue 17); every other one moves once.
        for r in &d.instances {
            let calls = w.nova.evacuate_calls(&r.server_id);
            if r.state == InstanceState::Failed {
                assert_eq!(calls, 0, "budget {budget}: {r:?} {:?}", w.calls());
                assert!(
                    r.reason
                        .as_deref()
                        .is_some_and(|x| x.contains("Unaccounted")),
                    "budget {budget}: {r:?}"
                );
            } else {
                assert_eq!(calls, 1, "budget {budget}: {r:?} {:?}", w.calls());
            }
        }
        let failed = d.instances.iter().any(|r| r.state == InstanceState::Failed);
        assert_eq!(
            list[0].status,
            if failed {
                IncidentStatus::NeedsAttention
            } else {
                IncidentStatus::Completed
            },
            "budget {budget}: verdict {end}"
        );
        assert!(d
            .steps
            .iter()
            .any(|st| st.kind == StepKind::ConfirmOff && st.outcome == Some(StepOutcome::Ok)));
        s.shutdown().await;
    }
}

/// A decider restarted after a completed recovery, with the node still off,
/// shows it `recovered` again (no second incident for a node already fenced
/// and emptied), and releases it when it boots.
#[tokio::test]
async fn a_restart_after_a_completed_recovery_keeps_the_node_recovered() {
    let _serial = SERIAL.lock().await;
    let w = World::new(Bmc::Works, &["a"]);
    let s = w.start(Mode::Live, None).await;
    let (s1, s2) = healthy_pair(&w, &s).await;
    drop(s1);
    w.freeze("compute1");
    wait_verdict(&s, "compute1", "recovered", Duration::from_secs(15)).await;
    drop(s2);
    s.shutdown().await;

    let s = w.start(Mode::Live, None).await;
    let _s2 = Sensor::start(&s, "compute2", "boot-2").await;
    wait_verdict(&s, "compute1", "recovered", Duration::from_secs(5)).await;
    // Long enough for the node to be judged dead from its evidence.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(verdict(&s, "compute1").await, "recovered");
    assert_eq!(incidents(&s).await.len(), 1);
    assert_eq!(w.fencer.offs(), 1);

    // The operator repairs compute1 and powers it on: its BMC reads On
    // again (one still reading Off under a live sensor is `degraded`).
    *w.fencer.power.lock().expect("power") = vigil_recovery::fence::PowerState::On;
    w.thaw("compute1");
    let _s1 = Sensor::start(&s, "compute1", "boot-1b").await;
    wait_verdict(&s, "compute1", "healthy", Duration::from_secs(10)).await;
    s.shutdown().await;
}

const SENDER: &str = "/usr/libexec/fence-agents/fence_kdump_send";

/// A world on real time (the workflow waits on messages sent in real time)
/// whose decider listens for kdump on a free loopback port; the port.
fn kdump_world() -> (World, u16) {
    let mut w = World::with_clock(&NODES, Bmc::Works, &["a", "b"], FakeClock::real());
    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("a free UDP port")
        .port();
    w.kdump = Some(std::net::SocketAddr::from(([127, 0, 0, 1], port)));
    (w, port)
}

/// The real fence_kdump_send from 127.0.0.1 (compute1's address): `count`
/// messages a second apart to `port`.
fn kdump_sender(port: u16, count: u32) -> tokio::process::Child {
    tokio::process::Command::new(SENDER)
        .args([
            "-p",
            &port.to_string(),
            "-f",
            "ipv4",
            "-c",
            &count.to_string(),
            "-i",
            "1",
            "127.0.0.1",
        ])
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("{SENDER} (install fence-agents): {e}"))
}

#[tokio::test]
async fn a_node_in_its_crash_kernel_is_evacuated_at_once_and_powered_off_after_the_dump() {
    let _serial = SERIAL.lock().await;
    // Real time: the workflow waits on messages sent in real time.
    let (w, port) = kdump_world();
    let s = w.start(Mode::Live, None).await;
    let (s1, _s2) = healthy_pair(&w, &s).await;
    let seen = watch(&s);
    tokio::time::sleep(Duration::from_millis(100)).await;

    // The kernel panics: the sensor and nova-compute stop, and the crash
    // kernel sends fence_kdump messages while it writes its dump (6, a
    // second apart).
    drop(s1);
    w.freeze("compute1");
    let started = Instant::now();
    let mut sender = kdump_sender(port, 6);
    until(
        "compute1's instances evacuated",
        Duration::from_secs(20),
        async || {
            ["a", "b"]
                .iter()
                .all(|id| {
                    let srv = w.nova.get(id);
                    srv.status == ServerStatus::Active && srv.host.as_deref() != Some("compute1")
                })
                .then_some(())
        },
    )
    .await;
    let evacuated = started.elapsed();
    let status = sender.wait().await.expect("fence_kdump_send ends");
    let sender_done = started.elapsed();
    assert!(status.success(), "fence_kdump_send: {status}");
    assert_eq!(
        w.fencer.offs(),
        0,
        "no power-off while the crash kernel still sends"
    );

    // Then, once the messages stopped for fresh_for, one power-off.
    let id = until(
        "the incident completed",
        Duration::from_secs(30),
        async || {
            incidents(&s)
                .await
                .into_iter()
                .find(|i| i.state == "completed")
                .map(|i| i.id)
        },
    )
    .await;
    let done = started.elapsed();
    assert_eq!(w.fencer.offs(), 1, "one power-off, after the dump");
    let calls = w.calls();
    let off = calls
        .iter()
        .position(|c| c.starts_with("power_off"))
        .expect("power_off");
    assert!(
        calls
            .iter()
            .enumerate()
            .filter(|(_, c)| c.starts_with("evacuate"))
            .all(|(i, _)| i < off),
        "evacuations before the power-off: {calls:?}"
    );
    for id in ["a", "b"] {
        assert_eq!(w.nova.evacuate_calls(id), 1, "one evacuate of {id}");
    }
    let inc = incident(&s, &id).await;
    let ends = steps(&inc, "end");
    for want in [
        "confirm_off:kdump ok",
        "await_dump:compute1 ok",
        "power_off:fake bmc-compute1 ok",
        "confirm_off:fake bmc-compute1 ok",
    ] {
        assert!(
            ends.contains(&want.to_string()),
            "{want} missing from {ends:?}"
        );
    }
    let evidence: serde_json::Value =
        serde_json::from_str(&inc.evidence_json).expect("evidence JSON");
    assert_eq!(evidence["fast_path"], "kdump", "{evidence}");
    assert_eq!(evidence["kdump"]["from"], "127.0.0.1", "{evidence}");
    let path: Vec<String> = seen.lock().expect("seen").clone();
    let want = ["dead", "fencing", "fenced", "evacuating", "recovered"];
    let mut it = path.iter();
    for v in want {
        assert!(
            it.any(|p| p == v),
            "verdicts {path:?} do not pass {want:?} in order"
        );
    }
    let n = operator(&s)
        .await
        .get_node(v1::GetNodeRequest {
            name: "compute1".into(),
        })
        .await
        .expect("GetNode")
        .into_inner();
    assert_eq!(crate::table::verdict_name(n.verdict), "recovered");
    until(
        "the power-off notification",
        Duration::from_secs(5),
        async || {
            w.notifier
                .kinds()
                .contains(&"powered-off-after-dump")
                .then_some(())
        },
    )
    .await;
    eprintln!(
        "figure: from the first fence_kdump message: instances evacuated by {evacuated:?}, \
         last message sent by {sender_done:?}, powered off and incident completed by {done:?}"
    );
}

#[tokio::test]
async fn a_decider_restarted_while_a_dump_is_written_powers_off_once_after_it_without_evacuating_again(
) {
    let _serial = SERIAL.lock().await;
    let (w, port) = kdump_world();
    let s = w.start(Mode::Live, None).await;
    let (s1, s2) = healthy_pair(&w, &s).await;
    drop(s1);
    w.freeze("compute1");
    let started = Instant::now();
    // 10 messages a second apart: the dump outlasts the first decider.
    let mut sender = kdump_sender(port, 10);
    let j = SqliteJournal::open(&w.journal_path()).expect("journal");
    until(
        "the wait for the dump to begin",
        Duration::from_secs(20),
        async || {
            let l = j.list(1).await.ok()?;
            let d = j.get(&l.first()?.id).await.ok()?;
            let began = d.steps_of(StepKind::AwaitDump, "compute1").next().is_some();
            began.then_some(())
        },
    )
    .await;
    assert_eq!(
        w.fencer.offs(),
        0,
        "not powered off while the dump is written"
    );
    drop(s2);
    s.shutdown().await;

    // The decider comes back while the crash kernel may still be sending.
    let restarted = started.elapsed();
    let s = w.start(Mode::Live, None).await;
    let _s2 = Sensor::start(&s, "compute2", "boot-2").await;
    let status = sender.wait().await.expect("fence_kdump_send ends");
    assert!(status.success(), "fence_kdump_send: {status}");
    let sender_done = started.elapsed();
    assert_eq!(
        w.fencer.offs(),
        0,
        "no power-off while the crash kernel still sends"
    );
    until(
        "the incident completed",
        Duration::from_secs(60),
        async || {
            let l = j.list(1).await.ok()?;
            (l.first()?.status == IncidentStatus::Completed).then_some(())
        },
    )
    .await;
    let done = started.elapsed();
    assert_eq!(w.fencer.offs(), 1, "one power-off: {:?}", w.calls());
    for id in ["a", "b"] {
        assert_eq!(w.nova.evacuate_calls(id), 1, "one evacuate of {id}");
    }
    let l = j.list(10).await.expect("list");
    assert_eq!(l.len(), 1, "one incident: {l:?}");
    let d = j.get(&l[0].id).await.expect("incident");
    let waits: Vec<_> = d.steps_of(StepKind::AwaitDump, "compute1").collect();
    assert_eq!(
        waits.len(),
        2,
        "the restarted decider waited itself: {waits:?}"
    );
    assert!(
        waits[1].outcome == Some(StepOutcome::Ok) && waits[0].outcome.is_none(),
        "{waits:?}"
    );
    let events: Vec<_> = d.events_of("powered-off-after-dump").collect();
    assert!(
        events.len() == 1
            && events[0]
                .message
                .starts_with("fenced by kdump; powered off after the dump at "),
        "{events:?}"
    );
    eprintln!(
        "figure: restart began {restarted:?} after the first fence_kdump message; last message by \
         {sender_done:?}; powered off and completed by {done:?}"
    );
    s.shutdown().await;
}
