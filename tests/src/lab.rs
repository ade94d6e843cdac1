//! The lab from tests: a real Nova, compute nodes in network namespaces, BMCs.
//!
//! [`Lab::shared`] brings the lab up once per test binary (or reuses one that
//! is already up: `tests/lab/lab up` is then a quick check) and reads
//! `state/lab.json`. Every other call runs `tests/lab/lab … --json` and parses
//! the answer, so the tests drive the lab exactly as a person at the shell
//! does. The lab needs root; gate tests with [`crate::tier::root`].
//!
//! Tests that change a node (faults, power) hold [`Lab::exclusive`] so tests
//! in one binary do not power off each other's nodes; they start with
//! [`Lab::heal`] on the nodes they use, because an earlier test may have left
//! a fault behind.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde::Deserialize;

use crate::bins::workspace_root;

/// Default node count when the lab is brought up by a test binary
/// (`VIGIL_LAB_NODES` overrides it).
pub const DEFAULT_NODES: u32 = 3;

/// The faults of `tests/lab/lab fault KIND NODE` (tests/lab/CONTRACT.md).
///
/// On a controller (`ctlN`, see [`Lab::controllers_up`]) only `PowerOff`,
/// `PowerOn`, `Partition`, `Unpartition`, `EtcdStop`, `EtcdStart` and `Heal`
/// apply; `Partition`..`EtcdStart` apply to controllers only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Power loss: every process of the node killed at once, links down.
    /// On a controller: everything in its cgroup (etcd, a decider a test
    /// started there) killed at once, its `mgmt0` down.
    PowerOff,
    /// Power on through the node's IPMI BMC (new boot id). On a controller:
    /// `mgmt0` up, its etcd member restarted on its data (and healthy).
    PowerOn,
    /// SIGKILL to nova-compute; it stays dead until `Heal`.
    KillNovaCompute,
    /// nova-compute's main thread blocked in uninterruptible I/O on a stalled disk.
    HangNovaCompute,
    /// The stalled disk answers again.
    UnhangNovaCompute,
    /// The node's management link down (instance network stays up).
    MgmtLinkDown,
    MgmtLinkUp,
    /// SIGKILL to the node's vigil-sensor.
    KillSensor,
    /// Traffic between the node's management interface and the controller dropped.
    Isolate,
    Unisolate,
    /// Undo every fault on the node: powered on, links up, nova-compute running.
    /// On a controller: not partitioned, powered on, etcd running and healthy.
    Heal,
    /// Controller only: traffic between it and the other controllers
    /// (198.51.100.201-205) dropped both ways; Nova, the computes and the
    /// BMCs stay reachable.
    Partition,
    Unpartition,
    /// Controller only: its etcd member stopped (SIGTERM); nothing else.
    EtcdStop,
    /// Controller only: its etcd member started again (and healthy).
    EtcdStart,
    /// Everything in the node stops and nothing answers (tasks frozen, every
    /// packet dropped, links up); its BMCs still read On.
    HardHang,
    /// The node's Redfish BMC reads `PowerState: Off` while the node runs.
    BmcLies,
    /// It reads the truth again.
    BmcTruth,
}

impl Fault {
    pub fn as_str(self) -> &'static str {
        match self {
            Fault::PowerOff => "power-off",
            Fault::PowerOn => "power-on",
            Fault::KillNovaCompute => "kill-nova-compute",
            Fault::HangNovaCompute => "hang-nova-compute",
            Fault::UnhangNovaCompute => "unhang-nova-compute",
            Fault::MgmtLinkDown => "mgmt-link-down",
            Fault::MgmtLinkUp => "mgmt-link-up",
            Fault::KillSensor => "kill-sensor",
            Fault::Isolate => "isolate",
            Fault::Unisolate => "unisolate",
            Fault::Heal => "heal",
            Fault::Partition => "partition",
            Fault::Unpartition => "unpartition",
            Fault::EtcdStop => "etcd-stop",
            Fault::EtcdStart => "etcd-start",
            Fault::HardHang => "hard-hang",
            Fault::BmcLies => "bmc-lies",
            Fault::BmcTruth => "bmc-truth",
        }
    }
}

/// What `lab fault … --json` reports.
#[derive(Debug, Clone, Deserialize)]
pub struct FaultReport {
    pub fault: String,
    pub node: String,
    /// One line per step the lab took.
    pub did: Vec<String>,
    /// When the lab began the fault (for `power-off`, the SIGKILL of the
    /// node's cgroup follows within milliseconds): the moment figures count
    /// from, rather than when the caller started the lab's command.
    pub began_unix_ms: i64,
    pub seconds: f64,
    /// None for a controller.
    pub boot_id: Option<String>,
    pub power: String,
    /// A controller's etcd member after the fault (None for a node).
    #[serde(default)]
    pub etcd: Option<EtcdMember>,
}

/// What `lab fault freeze|thaw SERVICE --json` reports.
#[derive(Debug, Clone, Deserialize)]
pub struct StallReport {
    pub fault: String,
    /// The service.
    pub node: String,
    pub did: Vec<String>,
    pub began_unix_ms: i64,
    /// How long it stays frozen.
    pub seconds: Option<f64>,
}

/// A Nova server as `cloud servers --json` / `cloud boot --json` show it.
#[derive(Debug, Clone, Deserialize)]
pub struct Server {
    pub id: String,
    pub name: String,
    pub status: String,
    pub task_state: Option<String>,
    pub power_state: Option<i64>,
    pub host: Option<String>,
    pub instance_name: Option<String>,
    /// Network name -> addresses, as in Nova's server `addresses`.
    #[serde(default)]
    pub addresses: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    pub ips: Vec<String>,
}

/// `state/lab.json`: what `lab up` built.
#[derive(Debug, Clone, Deserialize)]
pub struct LabInfo {
    pub lab_dir: PathBuf,
    pub cloud: String,
    pub clouds_yaml: PathBuf,
    pub openrc: PathBuf,
    /// The control plane on 198.51.100.1.
    pub controller: ControlPlane,
    pub decider: DeciderInfo,
    pub bmc: BmcCredentials,
    pub receivers: Receivers,
    pub nodes: Vec<NodeInfo>,
    /// The controllers `lab controllers up` made when lab.json was written
    /// (empty without; [`Lab::controllers_up`] returns the current ones).
    #[serde(default)]
    pub controllers: Vec<Controller>,
    /// Their etcd client URLs (`http://198.51.100.20N:2379`).
    #[serde(default)]
    pub etcd_endpoints: Vec<String>,
    pub logs: PathBuf,
}

/// The control plane (Keystone, Nova, ...) on the host, 198.51.100.1.
#[derive(Debug, Clone, Deserialize)]
pub struct ControlPlane {
    pub mgmt_ip: String,
    pub inst_ip: String,
    /// keystone, nova, placement, glance, neutron_standin, rabbitmq.
    #[serde(default)]
    pub endpoints: BTreeMap<String, String>,
    pub image_id: Option<String>,
    pub flavor_id: Option<String>,
    pub report_interval: Option<u64>,
    pub service_down_time: Option<u64>,
}

/// A lab controller `ctlN` (`lab controllers up`, CONTRACT.md "Controllers"):
/// netns `vlab-ctlN` at 198.51.100.(200+N) on the management bridge, cgroup
/// `/vigil-lab/ctlN`, one etcd member `ctlN` of the controllers' cluster. A
/// test runs its decider there with [`Lab::controller_command`], listening
/// on `decider_url`'s address: every lab sensor streams to it.
#[derive(Debug, Clone, Deserialize)]
pub struct Controller {
    /// `ctlN`
    pub name: String,
    pub index: u32,
    /// `vlab-ctlN`
    pub netns: String,
    /// `198.51.100.(200+N)`
    pub ip: String,
    /// `http://198.51.100.(200+N):2379`
    #[serde(rename = "etcd_client_url")]
    pub etcd_url: String,
    /// `http://198.51.100.(200+N):2380`
    pub etcd_peer_url: String,
    /// `http://198.51.100.(200+N):50051`: where its decider should listen.
    pub decider_url: String,
    /// cgroup v2 path relative to the hierarchy root (`/vigil-lab/ctlN`).
    pub cgroup: String,
    pub cgroup_path: PathBuf,
    pub etcd_data_dir: PathBuf,
    pub etcd_log: PathBuf,
}

/// A controller as `lab status --json` / `lab controllers up --json` show it.
#[derive(Debug, Clone, Deserialize)]
pub struct ControllerStatus {
    #[serde(flatten)]
    pub controller: Controller,
    /// "on" or "off" (`Fault::PowerOff`).
    pub power: String,
    /// Processes in its cgroup.
    pub processes: usize,
    /// "power-off", "partitioned", "etcd-stopped".
    #[serde(default)]
    pub faults: Vec<String>,
    pub etcd: EtcdMember,
}

/// A controller's etcd member.
#[derive(Debug, Clone, Deserialize)]
pub struct EtcdMember {
    pub pid: Option<i32>,
    /// "healthy" (`etcdctl endpoint health` at its client URL from the
    /// host), "unhealthy" (runs, no quorum or unreachable) or "stopped".
    pub state: String,
    #[serde(default)]
    pub detail: String,
}

/// What `lab controllers up|down --json` answers.
#[derive(Debug, Clone, Deserialize)]
pub struct ControllersReport {
    pub controllers: Vec<ControllerStatus>,
    pub etcd_endpoints: Vec<String>,
    /// Every lab sensor's `--decider` list now (198.51.100.1's first).
    pub sensor_deciders: Vec<String>,
    pub did: Vec<String>,
    pub seconds: f64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct DeciderInfo {
    /// Where a decider run by the lab's users listens (198.51.100.1:50051).
    pub listen: String,
    pub url: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct BmcCredentials {
    pub username: String,
    /// The password stays in this file (0600); see [`LabInfo::bmc_password`].
    pub password_file: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Receivers {
    pub smtp: SmtpReceiver,
    pub webhook: WebhookReceiver,
}

#[derive(Debug, Clone, Deserialize)]
pub struct SmtpReceiver {
    pub host: String,
    pub port: u16,
    /// JSON lines, one per message.
    pub log: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
pub struct WebhookReceiver {
    pub url: String,
    /// JSON lines, one per request (headers and exact body, base64).
    pub log: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
pub struct NodeInfo {
    pub name: String,
    pub index: u32,
    pub netns: String,
    pub mgmt_ip: String,
    pub inst_ip: String,
    /// cgroup v2 path relative to the hierarchy root (`/vigil-lab/computeN`).
    pub cgroup: String,
    /// The same group in the filesystem.
    pub cgroup_path: PathBuf,
    pub boot_id_path: PathBuf,
    /// `state/nodes/computeN/product_uuid`: the node's SMBIOS system UUID,
    /// which its BMCs serve too (absent from a lab.json written before it).
    #[serde(default)]
    pub product_uuid_path: Option<PathBuf>,
    pub sensor_token_path: PathBuf,
    pub redfish: RedfishEndpoint,
    pub ipmi: IpmiEndpoint,
}

impl NodeInfo {
    /// The node's system UUID as its `product_uuid` file holds it (lower
    /// case, hyphenated, as /sys/class/dmi/id/product_uuid prints it); the
    /// lab guarantees its Redfish `UUID` and IPMI `mc guid` are the same.
    pub fn system_uuid(&self) -> Result<String> {
        let path = self
            .product_uuid_path
            .clone()
            .unwrap_or_else(|| self.boot_id_path.with_file_name("product_uuid"));
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "reading {} (a lab brought up before issue 16 has none: `lab up` writes it)",
                path.display()
            )
        })?;
        Ok(text.trim().to_string())
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct RedfishEndpoint {
    /// `http://198.51.100.1:800N`
    pub url: String,
    pub system_id: String,
    /// `/redfish/v1/Systems/computeN`
    pub system_path: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct IpmiEndpoint {
    pub host: String,
    pub port: u16,
    pub interface: String,
    /// ipmitool `-C`: without it every call waits 10 s on a cipher-suite query.
    pub cipher_suite: u8,
}

/// `lab status --json` (the parts tests use).
#[derive(Debug, Clone, Deserialize)]
pub struct Status {
    pub up: bool,
    pub nodes: Vec<NodeStatus>,
    #[serde(default)]
    pub servers: Vec<Server>,
    #[serde(default)]
    pub errors: Vec<String>,
    /// `cloud status --json` as is.
    pub control_plane: Option<serde_json::Value>,
    /// The controllers, if `lab controllers up` made some.
    #[serde(default)]
    pub controllers: Vec<ControllerStatus>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct NodeStatus {
    pub name: String,
    /// "on" or "off": the node's supervisor runs.
    pub power: String,
    /// What each BMC reads back: ipmi "on"/"off", redfish "On"/"Off".
    pub bmc: BmcReadings,
    pub boot_id: Option<String>,
    /// supervisor, nova-compute, sensor -> pid (or an error string).
    #[serde(default)]
    pub pids: BTreeMap<String, serde_json::Value>,
    /// Processes in the node's cgroup.
    pub processes: usize,
    pub qemu: usize,
    #[serde(default)]
    pub faults: Vec<String>,
    pub nova: Option<NovaService>,
}

impl NodeStatus {
    pub fn pid(&self, what: &str) -> Option<i32> {
        self.pids
            .get(what)
            .and_then(|v| v.as_i64())
            .and_then(|p| i32::try_from(p).ok())
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct BmcReadings {
    pub ipmi: String,
    pub redfish: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct NovaService {
    pub status: Option<String>,
    pub state: Option<String>,
    pub forced_down: Option<bool>,
    pub updated_at: Option<String>,
}

/// A running lab.
pub struct Lab {
    script: PathBuf,
    info: LabInfo,
    /// Serializes tests that change nodes (see the module doc).
    exclusive: Mutex<()>,
}

static SHARED: OnceLock<std::result::Result<Lab, String>> = OnceLock::new();

impl Lab {
    /// The lab for this test binary: `lab up` once (a quick check when it is
    /// already up), then `state/lab.json`. The error says what failed and
    /// where the logs are; it is the same for every caller in the binary.
    pub fn shared() -> Result<&'static Lab> {
        SHARED
            .get_or_init(|| Lab::up().map_err(|e| format!("{e:#}")))
            .as_ref()
            .map_err(|e| anyhow!("the lab is not up: {e}"))
    }

    fn up() -> Result<Lab> {
        let script = workspace_root().join("tests/lab/lab");
        let nodes = std::env::var("VIGIL_LAB_NODES")
            .ok()
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(DEFAULT_NODES);
        let started = Instant::now();
        // `up` prints progress on stderr; keep it for the error message only.
        // The lab runs this checkout's sensor (several checkouts may share
        // one lab; `up` swaps a running sensor for the one named here).
        let sensor = crate::bins::target_bin("vigil-sensor");
        let mut up = Command::new(&script);
        up.args(["up", "--nodes", &nodes.to_string()]);
        // With VIGIL_PACKAGED (inherited) the lab runs the sensor package.
        if sensor.exists()
            && std::env::var_os("VIGIL_SENSOR_BIN").is_none()
            && crate::packaged::dir().is_none()
        {
            up.env("VIGIL_SENSOR_BIN", &sensor);
        }
        run_cmd(&mut up, &format!("up --nodes {nodes}"))?;
        eprintln!("lab: up (or checked) in {:.1?}", started.elapsed());
        let info = read_info(&lab_dir())?;
        let lab = Lab {
            script,
            info,
            exclusive: Mutex::new(()),
        };
        lab.clean_slate()?;
        Ok(lab)
    }

    /// Puts back what an earlier run may have left: the lab's database lives
    /// on disk, so a run killed mid-test (or a cold start after one) finds
    /// nodes forced down, services disabled by an incident and servers still
    /// listed (seen in CI: a decider test failed on a compute1 left
    /// "disabled: vigil: incident …, forced down" by an interrupted run).
    /// Tests call it again before and after each case (`decider::prepare`),
    /// so every case starts from what a verified clean slate is, not from
    /// what the previous case hoped to leave.
    pub fn clean_slate(&self) -> Result<()> {
        let started = Instant::now();
        let names = self.node_names();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        self.heal(&refs)
            .context("clean slate: healing every node")?;
        // Nova lets go of forced_down only once the host's nova-compute has
        // reported again, so the first tries may be refused.
        crate::wait::until(
            "clean slate: every nova-compute service enabled and not forced down",
            Duration::from_secs(120),
            Duration::from_secs(3),
            || {
                self.reset_services().map_err(|e| format!("{e:#}"))?;
                let status = self.status().map_err(|e| format!("{e:#}"))?;
                let not_yet: Vec<String> = status
                    .nodes
                    .iter()
                    .filter(|n| {
                        n.nova.as_ref().is_none_or(|s| {
                            s.status.as_deref() != Some("enabled")
                                || s.forced_down != Some(false)
                                || s.state.as_deref() != Some("up")
                        })
                    })
                    .map(|n| format!("{}: {:?}", n.name, n.nova))
                    .collect();
                if not_yet.is_empty() {
                    Ok(())
                } else {
                    Err(not_yet.join("; "))
                }
            },
        )
        .map_err(|e| anyhow!(e))?;
        let leftovers: Vec<String> = self
            .servers()
            .context("clean slate: listing the cloud's servers")?
            .into_iter()
            .map(|s| s.id)
            .collect();
        self.delete_servers(&leftovers)
            .context("clean slate: deleting servers left by an earlier run")?;
        eprintln!(
            "lab: clean slate in {:.1?} ({} leftover server(s) deleted)",
            started.elapsed(),
            leftovers.len()
        );
        Ok(())
    }

    /// Deletes `ids` and waits until Nova lists none of them: Nova deletes
    /// asynchronously, and a server still there would be counted on its
    /// node by the next test (seen in CI: "3/3 instances" where 2 were
    /// booted). Already-deleted ids are fine.
    pub fn delete_servers(&self, ids: &[String]) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        // Nova deletes a few per second here: more time for many.
        let timeout = 120.max(60 + 3 * ids.len() as u64).to_string();
        let mut args = vec!["delete-servers", "--timeout", &timeout];
        args.extend(ids.iter().map(String::as_str));
        run(&self.script, &args).map(|_| ())
    }

    /// `lab pid NAME`: the pid of a lab process (a control-plane service,
    /// a daemon, or `NODE/nova-compute|sensor|supervisor`) if it runs.
    pub fn pid(&self, name: &str) -> Result<Option<i32>> {
        let out = Command::new(&self.script)
            .args(["pid", name])
            .output()
            .with_context(|| format!("running lab pid {name}"))?;
        match out.status.code() {
            Some(0) => String::from_utf8_lossy(&out.stdout)
                .trim()
                .parse()
                .map(Some)
                .with_context(|| format!("lab pid {name} printed no pid")),
            Some(1) => Ok(None),
            _ => bail!(
                "lab pid {name} failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ),
        }
    }

    /// `lab up --sensors` on the running lab: converge to sensors on every
    /// node.
    pub fn up_with_sensors(&self) -> Result<String> {
        let out = run(&self.script, &["up", "--sensors"])?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    pub fn info(&self) -> &LabInfo {
        &self.info
    }

    pub fn node(&self, name: &str) -> Result<&NodeInfo> {
        self.info
            .nodes
            .iter()
            .find(|n| n.name == name)
            .ok_or_else(|| {
                anyhow!(
                    "no node {name} in the lab (lab.json has {:?})",
                    self.node_names()
                )
            })
    }

    pub fn node_names(&self) -> Vec<String> {
        self.info.nodes.iter().map(|n| n.name.clone()).collect()
    }

    /// Hold this while changing nodes; a test that panicked while holding it
    /// does not stop the others (they heal their nodes first anyway).
    pub fn exclusive(&self) -> MutexGuard<'_, ()> {
        self.exclusive
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// `lab fault KIND NODE`.
    pub fn fault(&self, kind: Fault, node: &str) -> Result<FaultReport> {
        let out = run(&self.script, &["fault", kind.as_str(), node, "--json"])?;
        serde_json::from_slice(&out.stdout)
            .with_context(|| format!("parsing `lab fault {} {node} --json`", kind.as_str()))
    }

    /// How long after `lab fault kdump` the lab's crash kernel sends its
    /// first message (faults.py `KDUMP_BOOT_SECS`).
    pub const KDUMP_BOOT_SECS: u32 = 5;

    /// `lab fault kdump NODE --dump-secs N`: kernel panic with kdump (the
    /// node frozen, its guests' addresses gone, links up) and Debian's
    /// fence_kdump_send in its netns to the host's management address,
    /// port 7410, one message a second for `dump_secs` from
    /// [`Lab::KDUMP_BOOT_SECS`] on.
    pub fn kdump(&self, node: &str, dump_secs: u32) -> Result<FaultReport> {
        self.kdump_cmd("kdump", node, dump_secs)
    }

    /// `lab fault kdump-send NODE --dump-secs N`: the same messages from a
    /// node that keeps running (forged).
    pub fn kdump_send(&self, node: &str, dump_secs: u32) -> Result<FaultReport> {
        self.kdump_cmd("kdump-send", node, dump_secs)
    }

    fn kdump_cmd(&self, kind: &str, node: &str, dump_secs: u32) -> Result<FaultReport> {
        let secs = dump_secs.to_string();
        let out = run(
            &self.script,
            &["fault", kind, node, "--dump-secs", &secs, "--json"],
        )?;
        serde_json::from_slice(&out.stdout)
            .with_context(|| format!("parsing `lab fault {kind} {node} --json`"))
    }

    /// `lab fault freeze SERVICE --seconds N`: SIGSTOP a control-plane
    /// service's whole process tree (e.g. `nova-api`, `nova-conductor`); a
    /// detached helper SIGCONTs it after `for_` even if this process dies.
    pub fn freeze(&self, service: &str, for_: Duration) -> Result<StallReport> {
        let secs = format!("{:.3}", for_.as_secs_f64());
        let out = run(
            &self.script,
            &["fault", "freeze", service, "--seconds", &secs, "--json"],
        )?;
        serde_json::from_slice(&out.stdout)
            .with_context(|| format!("parsing `lab fault freeze {service} --json`"))
    }

    /// `lab fault api-500 nova-api --seconds N`: nova-api answers 500 for
    /// `for_` (reads refused, writes applied then answered 500); the first
    /// use restarts nova-api with the filter that does it.
    pub fn api_500(&self, for_: Duration) -> Result<StallReport> {
        let secs = format!("{:.3}", for_.as_secs_f64());
        let out = run(
            &self.script,
            &["fault", "api-500", "nova-api", "--seconds", &secs, "--json"],
        )?;
        serde_json::from_slice(&out.stdout).context("parsing `lab fault api-500 --json`")
    }

    /// `lab fault api-ok nova-api`: nova-api answers normally again.
    pub fn api_ok(&self) -> Result<()> {
        run(&self.script, &["fault", "api-ok", "nova-api"]).map(|_| ())
    }

    /// `lab fault thaw SERVICE`: SIGCONT it now.
    pub fn thaw(&self, service: &str) -> Result<()> {
        run(&self.script, &["fault", "thaw", service]).map(|_| ())
    }

    /// Undo every fault on these nodes and wait until their nova-compute
    /// reports to Nova again.
    pub fn heal(&self, nodes: &[&str]) -> Result<()> {
        for node in nodes {
            self.fault(Fault::Heal, node)?;
        }
        self.wait_compute(nodes, Duration::from_secs(180))
    }

    /// Until each node's nova-compute reports (heartbeat newer than now) and
    /// is a hypervisor in Nova (`cloud wait-compute`).
    pub fn wait_compute(&self, nodes: &[&str], timeout: Duration) -> Result<()> {
        let secs = timeout.as_secs().to_string();
        let mut args = vec!["wait-compute"];
        args.extend_from_slice(nodes);
        args.extend_from_slice(&["--timeout", &secs]);
        run(&self.script, &args).map(|_| ())
    }

    /// `lab boot N NODE`: N servers on NODE, all ACTIVE there with an address.
    pub fn boot(&self, n: usize, node: &str) -> Result<Vec<Server>> {
        let out = run(&self.script, &["boot", &n.to_string(), node, "--json"])?;
        serde_json::from_slice(&out.stdout)
            .with_context(|| format!("parsing `lab boot {n} {node} --json`"))
    }

    /// Every server of the cloud (all projects).
    pub fn servers(&self) -> Result<Vec<Server>> {
        let out = run(&self.script, &["servers", "--json"])?;
        serde_json::from_slice(&out.stdout).context("parsing `lab servers --json`")
    }

    pub fn status(&self) -> Result<Status> {
        let out = run(&self.script, &["status", "--json"])?;
        serde_json::from_slice(&out.stdout).context("parsing `lab status --json`")
    }

    pub fn node_status(&self, node: &str) -> Result<NodeStatus> {
        self.status()?
            .nodes
            .into_iter()
            .find(|n| n.name == node)
            .ok_or_else(|| anyhow!("`lab status` does not list node {node}"))
    }

    pub fn sensor_start(&self, node: &str) -> Result<()> {
        run(&self.script, &["sensor", "start", node]).map(|_| ())
    }

    pub fn sensor_stop(&self, node: &str) -> Result<()> {
        run(&self.script, &["sensor", "stop", node]).map(|_| ())
    }

    /// `lab controllers up --count N`: controllers ctl1..ctlN, each with
    /// its etcd member, all healthy (a lab with another count is refused:
    /// [`Lab::controllers_down`] first); faults left on them are healed.
    /// Every running lab sensor is restarted (its node keeps its power) with
    /// one more `--decider` per controller. Idempotent.
    pub fn controllers_up(&self, count: u32) -> std::result::Result<Vec<Controller>, String> {
        Ok(self
            .controllers_report(&["up", "--count", &count.to_string()])?
            .controllers
            .into_iter()
            .map(|c| c.controller)
            .collect())
    }

    /// `lab controllers down`: every controller's processes (a decider a
    /// test started there too), etcd data, netns and veth gone; the sensors
    /// back to the one decider URL. `lab down` does it as well.
    pub fn controllers_down(&self) -> std::result::Result<(), String> {
        self.controllers_report(&["down"]).map(|_| ())
    }

    /// `lab controllers ACTION ... --json`.
    pub fn controllers_report(
        &self,
        args: &[&str],
    ) -> std::result::Result<ControllersReport, String> {
        let mut all = vec!["controllers"];
        all.extend_from_slice(args);
        all.push("--json");
        let out = run(&self.script, &all).map_err(|e| format!("{e:#}"))?;
        serde_json::from_slice(&out.stdout)
            .map_err(|e| format!("parsing `lab {}`: {e}", all.join(" ")))
    }

    /// The controllers and their etcd members as `lab status` sees them now.
    pub fn controllers_status(&self) -> Result<Vec<ControllerStatus>> {
        Ok(self.status()?.controllers)
    }

    /// `tests/lab/lab controller exec NAME --`: append the program and its
    /// arguments, then spawn: it runs in the controller's netns and cgroup
    /// with this command's pid (the lab execs it), so
    /// [`std::process::Child::id`] is the program's pid, and it dies with
    /// the controller ([`Fault::PowerOff`]). stdin/stdout/stderr pass
    /// through; no other descriptor does.
    pub fn controller_command(&self, name: &str) -> Command {
        let mut cmd = Command::new(&self.script);
        cmd.args(["controller", "exec", name, "--"]);
        cmd
    }

    /// Re-enable and un-force-down every nova-compute service (after an
    /// evacuation test).
    pub fn reset_services(&self) -> Result<()> {
        run(&self.script, &["reset-services"]).map(|_| ())
    }

    /// A Keystone token for the lab's admin (project admin), for raw Nova calls.
    pub fn token(&self) -> Result<String> {
        let out = run(&self.script, &["token"])?;
        let token = String::from_utf8(out.stdout)
            .context("token is not UTF-8")?
            .trim()
            .to_string();
        if token.is_empty() {
            bail!("`lab token` printed nothing");
        }
        Ok(token)
    }

    /// Runs `argv` inside the node's network namespace (e.g. ping from the node).
    pub fn in_node(&self, node: &str, argv: &[&str]) -> Result<Output> {
        let netns = &self.node(node)?.netns;
        Command::new("ip")
            .args(["netns", "exec", netns])
            .args(argv)
            .output()
            .with_context(|| format!("running {argv:?} in netns {netns}"))
    }

    /// True if `addr` answers one ping sent from inside the node.
    pub fn ping_from_node(&self, node: &str, addr: &str) -> Result<bool> {
        Ok(self
            .in_node(node, &["ping", "-c1", "-W1", "-q", addr])?
            .status
            .success())
    }

    /// Pids in the node's cgroup v2 group (every process of the node).
    pub fn node_pids(&self, node: &str) -> Result<Vec<i32>> {
        let path = self.node(node)?.cgroup_path.join("cgroup.procs");
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        Ok(text
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect())
    }

    /// The node's qemu-named processes: pid -> `-uuid` argument.
    pub fn qemu_processes(&self, node: &str) -> Result<BTreeMap<i32, String>> {
        let mut out = BTreeMap::new();
        for pid in self.node_pids(node)? {
            let Ok(raw) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
                continue;
            };
            let argv: Vec<String> = raw
                .split(|b| *b == 0)
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            let is_qemu = argv
                .first()
                .is_some_and(|a| a.ends_with("qemu-system-x86_64"));
            if let (true, Some(i)) = (is_qemu, argv.iter().position(|a| a == "-uuid")) {
                if let Some(uuid) = argv.get(i + 1) {
                    out.insert(pid, uuid.clone());
                }
            }
        }
        Ok(out)
    }

    /// The node's system UUID (`product_uuid`, see [`NodeInfo::system_uuid`]).
    pub fn system_uuid(&self, node: &str) -> Result<String> {
        self.node(node)?.system_uuid()
    }

    pub fn boot_id(&self, node: &str) -> Result<String> {
        let path = &self.node(node)?.boot_id_path;
        Ok(std::fs::read_to_string(path)
            .with_context(|| format!("reading {}", path.display()))?
            .trim()
            .to_string())
    }
}

impl Lab {
    /// Raw Nova API calls as the lab's admin (the test's own view of Nova,
    /// independent of Vigil's Nova client).
    pub fn nova(&self) -> Result<Nova> {
        let url = self
            .info
            .controller
            .endpoints
            .get("nova")
            .cloned()
            .ok_or_else(|| anyhow!("lab.json has no nova endpoint"))?;
        Ok(Nova {
            http: http_client()?,
            url,
            token: self.token()?,
        })
    }

    /// The node's Redfish BMC, authenticated with the lab's BMC password.
    pub fn redfish(&self, node: &str) -> Result<Redfish> {
        let n = self.node(node)?;
        Ok(Redfish {
            http: http_client()?,
            system_url: format!("{}{}", n.redfish.url, n.redfish.system_path),
            user: self.info.bmc.username.clone(),
            password: self.info.bmc_password()?,
        })
    }

    /// `ipmitool -I lanplus … ARGS` against the node's IPMI BMC; its stdout.
    pub fn ipmi(&self, node: &str, args: &[&str]) -> Result<String> {
        let n = self.node(node)?;
        let out = Command::new("ipmitool")
            .args([
                "-I",
                &n.ipmi.interface,
                "-H",
                &n.ipmi.host,
                "-p",
                &n.ipmi.port.to_string(),
            ])
            .args([
                "-U",
                &self.info.bmc.username,
                "-C",
                &n.ipmi.cipher_suite.to_string(),
            ])
            .arg("-f")
            .arg(&self.info.bmc.password_file)
            .args(args)
            .output()
            .context("running ipmitool (Debian package ipmitool)")?;
        if !out.status.success() {
            bail!(
                "ipmitool {} against {}:{} failed ({}): {}",
                args.join(" "),
                n.ipmi.host,
                n.ipmi.port,
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The system GUID as `ipmitool mc guid` prints it, lower case: the
    /// node's system UUID (the lab sends it in IPMI's byte order).
    pub fn ipmi_guid(&self, node: &str) -> Result<String> {
        let out = self.ipmi(node, &["mc", "guid"])?;
        out.lines()
            .find_map(|l| l.strip_prefix("System GUID"))
            .and_then(|rest| rest.split_once(':'))
            .map(|(_, guid)| guid.trim().to_ascii_lowercase())
            .ok_or_else(|| {
                anyhow!("no \"System GUID\" line in `ipmitool mc guid` of {node}: {out:?}")
            })
    }

    /// "on" / "off" as the node's IPMI BMC reads it back.
    pub fn ipmi_power(&self, node: &str) -> Result<String> {
        let out = self.ipmi(node, &["chassis", "power", "status"])?;
        if out.contains("is on") {
            Ok("on".into())
        } else if out.contains("is off") {
            Ok("off".into())
        } else {
            bail!("unexpected IPMI power status of {node}: {out:?}")
        }
    }
}

fn http_client() -> Result<reqwest::blocking::Client> {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .context("building an HTTP client")
}

/// A Nova endpoint with an admin token.
pub struct Nova {
    http: reqwest::blocking::Client,
    url: String,
    token: String,
}

impl Nova {
    /// One call; `microversion` as in `X-OpenStack-Nova-API-Version`. Fails
    /// with the method, path, status and body when Nova answers >= 300.
    pub fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        microversion: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<serde_json::Value> {
        let mut req = self
            .http
            .request(method.clone(), format!("{}{path}", self.url))
            .header("X-Auth-Token", &self.token)
            .header("X-OpenStack-Nova-API-Version", microversion);
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req
            .send()
            .with_context(|| format!("nova {method} {path}"))?;
        let status = resp.status();
        let text = resp.text().unwrap_or_default();
        if !status.is_success() {
            bail!("nova {method} {path} (mv {microversion}) answered {status}: {text}");
        }
        if text.trim().is_empty() {
            return Ok(serde_json::Value::Null);
        }
        serde_json::from_str(&text)
            .with_context(|| format!("nova {method} {path}: body is not JSON: {text}"))
    }

    pub fn get(&self, path: &str, microversion: &str) -> Result<serde_json::Value> {
        self.call(reqwest::Method::GET, path, microversion, None)
    }
}

/// A node's Redfish BMC (`/redfish/v1/Systems/computeN`).
pub struct Redfish {
    http: reqwest::blocking::Client,
    system_url: String,
    user: String,
    password: String,
}

impl Redfish {
    /// The system's `UUID` (the node's SMBIOS system UUID on a real BMC).
    pub fn system_uuid(&self) -> Result<String> {
        self.get_field("UUID")
    }

    /// `PowerState` of the system: "On" or "Off".
    pub fn power_state(&self) -> Result<String> {
        self.get_field("PowerState")
    }

    fn get_field(&self, field: &str) -> Result<String> {
        let resp = self
            .http
            .get(&self.system_url)
            .basic_auth(&self.user, Some(&self.password))
            .send()
            .with_context(|| format!("GET {}", self.system_url))?;
        let status = resp.status();
        let doc: serde_json::Value = resp
            .json()
            .with_context(|| format!("GET {}: not JSON", self.system_url))?;
        if !status.is_success() {
            bail!("GET {} answered {status}: {doc}", self.system_url);
        }
        doc.get(field)
            .and_then(|p| p.as_str())
            .map(str::to_string)
            .ok_or_else(|| anyhow!("GET {}: no {field} in {doc}", self.system_url))
    }

    /// `ComputerSystem.Reset` with this `ResetType` (On, ForceOff, GracefulShutdown, …).
    pub fn reset(&self, reset_type: &str) -> Result<()> {
        let url = format!("{}/Actions/ComputerSystem.Reset", self.system_url);
        let resp = self
            .http
            .post(&url)
            .basic_auth(&self.user, Some(&self.password))
            .json(&serde_json::json!({ "ResetType": reset_type }))
            .send()
            .with_context(|| format!("POST {url}"))?;
        let status = resp.status();
        if !status.is_success() {
            bail!(
                "POST {url} ResetType {reset_type} answered {status}: {}",
                resp.text().unwrap_or_default()
            );
        }
        Ok(())
    }
}

/// One request the lab's webhook receiver got (`state/receivers/webhook.jsonl`).
#[derive(Debug, Clone, Deserialize)]
pub struct WebhookRequest {
    /// Unix time it arrived.
    pub ts: f64,
    pub method: String,
    pub path: String,
    pub query: String,
    /// In the order they were sent.
    pub headers: Vec<(String, String)>,
    /// The body as text (lossy if it was not UTF-8).
    pub body: String,
    /// The exact body bytes, base64: what an HMAC signature is computed over.
    pub body_b64: String,
}

impl WebhookRequest {
    /// First header with this name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The exact body bytes.
    pub fn body_bytes(&self) -> Result<Vec<u8>> {
        decode_base64(&self.body_b64)
    }
}

/// One message the lab's SMTP receiver got (`state/receivers/smtp.jsonl`).
#[derive(Debug, Clone, Deserialize)]
pub struct SmtpMessage {
    pub ts: f64,
    pub mail_from: String,
    pub rcpt_tos: Vec<String>,
    pub subject: String,
    pub from: String,
    pub to: String,
    /// The whole message (headers and body) as received.
    pub data: String,
}

impl Lab {
    /// Every request the webhook receiver has recorded, oldest first.
    pub fn webhook_requests(&self) -> Result<Vec<WebhookRequest>> {
        read_jsonl(&self.info.receivers.webhook.log)
    }

    /// Every message the SMTP receiver has recorded, oldest first.
    pub fn smtp_messages(&self) -> Result<Vec<SmtpMessage>> {
        read_jsonl(&self.info.receivers.smtp.log)
    }
}

fn read_jsonl<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Vec<T>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(i, l)| {
            serde_json::from_str(l).with_context(|| format!("{} line {}", path.display(), i + 1))
        })
        .collect()
}

/// Standard base64 (with padding), as Python's base64.b64encode writes it.
fn decode_base64(text: &str) -> Result<Vec<u8>> {
    fn value(c: u8) -> Option<u32> {
        match c {
            b'A'..=b'Z' => Some(u32::from(c - b'A')),
            b'a'..=b'z' => Some(u32::from(c - b'a') + 26),
            b'0'..=b'9' => Some(u32::from(c - b'0') + 52),
            b'+' => Some(62),
            b'/' => Some(63),
            _ => None,
        }
    }
    let bytes: Vec<u8> = text.bytes().filter(|c| !c.is_ascii_whitespace()).collect();
    if !bytes.len().is_multiple_of(4) {
        bail!(
            "base64 text of length {} is not a multiple of 4",
            bytes.len()
        );
    }
    let mut out = Vec::with_capacity(bytes.len() / 4 * 3);
    for chunk in bytes.chunks(4) {
        let pad = chunk.iter().rev().take_while(|c| **c == b'=').count();
        let mut acc = 0u32;
        for &c in &chunk[..4 - pad] {
            acc = (acc << 6)
                | value(c).ok_or_else(|| anyhow!("invalid base64 character {:?}", c as char))?;
        }
        acc <<= 6 * pad as u32;
        let [_, a, b, c] = acc.to_be_bytes();
        out.extend_from_slice(&[a, b, c][..3 - pad]);
    }
    Ok(out)
}

impl LabInfo {
    /// The BMC password (IPMI and Redfish), read from its 0600 file.
    pub fn bmc_password(&self) -> Result<String> {
        let pw = std::fs::read_to_string(&self.bmc.password_file)
            .with_context(|| format!("reading {}", self.bmc.password_file.display()))?;
        Ok(pw.trim().to_string())
    }
}

/// Where the lab keeps its state (`VIGIL_LAB_DIR`, default /var/lib/vigil-lab).
pub fn lab_dir() -> PathBuf {
    std::env::var_os("VIGIL_LAB_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/lib/vigil-lab"))
}

fn read_info(dir: &Path) -> Result<LabInfo> {
    let path = dir.join("state/lab.json");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

/// One scheduler state letter of /proc/PID/stat (R, S, D, T, Z …), None if gone.
pub fn proc_state(pid: i32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The comm field may contain spaces and parentheses: the state follows the last ')'.
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

/// Runs the lab script; a failure says which command failed, its exit status
/// and the end of what it printed on stderr.
fn run(script: &Path, args: &[&str]) -> Result<Output> {
    run_cmd(Command::new(script).args(args), &args.join(" "))
}

fn run_cmd(cmd: &mut Command, what: &str) -> Result<Output> {
    let out = cmd
        .output()
        .with_context(|| format!("running tests/lab/lab {what}"))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(25).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        bail!(
            "`tests/lab/lab {what}` failed ({}):\n{}",
            out.status,
            tail.join("\n")
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::{decode_base64, ControllersReport, FaultReport};

    #[test]
    fn controllers_report_parses_the_labs_answer() {
        // `lab controllers up --count 1 --json`, as the lab printed it.
        let text = r#"{"controllers": [{"cgroup": "/vigil-lab/ctl1",
            "cgroup_path": "/sys/fs/cgroup/unified/vigil-lab/ctl1",
            "decider_url": "http://198.51.100.201:50051",
            "etcd": {"detail": "healthy", "pid": 25223, "state": "healthy"},
            "etcd_client_url": "http://198.51.100.201:2379",
            "etcd_data_dir": "/var/lib/vigil-lab/state/controllers/ctl1/etcd",
            "etcd_log": "/var/lib/vigil-lab/logs/etcd-ctl1.log",
            "etcd_peer_url": "http://198.51.100.201:2380", "faults": [],
            "host_if": "vlab-c1", "index": 1, "ip": "198.51.100.201", "name": "ctl1",
            "netns": "vlab-ctl1", "power": "on", "processes": 1}],
            "did": ["etcd: 1 member(s) healthy (0.9s)"],
            "etcd_endpoints": ["http://198.51.100.201:2379"], "seconds": 1.19,
            "sensor_deciders": ["http://198.51.100.1:50051", "http://198.51.100.201:50051"]}"#;
        let report: ControllersReport = serde_json::from_str(text).expect("parses");
        let c = &report.controllers[0];
        assert_eq!(c.controller.etcd_url, "http://198.51.100.201:2379");
        assert_eq!(c.controller.decider_url, "http://198.51.100.201:50051");
        assert_eq!(c.etcd.state, "healthy");
        assert_eq!(c.etcd.pid, Some(25223));
        // `lab fault power-off ctl1 --json`
        let text = r#"{"fault": "power-off", "node": "ctl1", "did": ["ctl1: power lost"],
            "began_unix_ms": 1796614207346, "seconds": 0.055, "boot_id": null,
            "power": "off", "etcd": {"pid": null, "state": "stopped", "detail": "not running"},
            "faults": ["power-off"]}"#;
        let fault: FaultReport = serde_json::from_str(text).expect("parses");
        assert_eq!(fault.power, "off");
        assert_eq!(fault.etcd.expect("etcd").state, "stopped");
    }

    #[test]
    fn base64_round_trips_python_output() {
        // base64.b64encode(b'{"node":"compute1"}'), b"a", b"ab"
        assert_eq!(
            decode_base64("eyJub2RlIjoiY29tcHV0ZTEifQ==").expect("valid"),
            br#"{"node":"compute1"}"#
        );
        assert_eq!(decode_base64("YQ==").expect("valid"), b"a");
        assert_eq!(decode_base64("YWI=").expect("valid"), b"ab");
        assert_eq!(decode_base64("").expect("valid"), b"");
        assert!(decode_base64("YQ=").is_err());
    }
}
