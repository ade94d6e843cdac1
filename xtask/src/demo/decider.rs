//! A real `vigil-decider serve` against the lab, as the demo and the recovery
//! benchmark run it: a config written for the lab (its Nova, BMCs and
//! receivers, every node's sensor token), the process with its log in a
//! directory of its own, and the CLI (`node`, `incidents`, `incident`,
//! `watch`) to read what it decided. The config follows
//! tests/tests/recovery_lab.rs, which proves the same setup end to end.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;
use vigil_tests::lab::Lab;
use vigil_tests::local_net;

/// Written to the demo's directory; the lab's operator calls
/// (ConfirmPowerOff) need it, and it is shown to nobody else.
const OPERATOR_TOKEN: &str = "vigil-demo-operator-token-0123456789";
const WEBHOOK_KEY: &str = "vigil-demo-webhook-key-0123456789";

/// How the decider is configured for a run.
#[derive(Clone, Debug)]
pub struct Opts {
    /// `[recovery.evacuation] destination`: `scheduler` (Nova picks) or
    /// `spread` (Vigil names a different healthy host for each server).
    pub destination: String,
    /// Outlive this process (`demo --keep`): own process group, so the
    /// terminal's Ctrl-C and our exit leave it running.
    pub detach: bool,
}

/// One decider of a cluster (`demo --ha`): it runs in lab controller
/// `controller` (`lab controller exec`), listens on its address, and keeps
/// its journal in the controllers' etcd.
#[derive(Clone, Debug)]
pub struct Ha {
    /// `ctlN`: `[cluster] name` and the controller it runs in.
    pub controller: String,
    /// The controller's address: `server.listen` is `IP:50051`.
    pub ip: String,
    /// `cluster.endpoints`: every controller's etcd client URL.
    pub etcd_endpoints: Vec<String>,
    /// `cluster.lease_ttl`, in seconds.
    pub lease_ttl_secs: u64,
}

/// A running `vigil-decider serve`; stopped when dropped unless detached.
pub struct Decider {
    child: Option<Child>,
    bin: PathBuf,
    /// Set when it is one of several (`demo --ha`).
    pub ha: Option<Ha>,
    pub dir: PathBuf,
    pub config: PathBuf,
    pub log: PathBuf,
    pub journal: PathBuf,
    /// `198.51.100.1:50051`
    pub listen: String,
    /// `http://198.51.100.1:50051`
    pub url: String,
}

/// The lab's decider config (see the module doc). Every node is fenced
/// through its Redfish BMC first, its IPMI BMC second.
pub fn config(lab: &Lab, dir: &Path, destination: &str) -> String {
    let info = lab.info();
    let pw = info.bmc.password_file.display();
    let user = &info.bmc.username;
    let mut c = format!(
        r#"# Written by `cargo xtask demo` / `bench recovery` for the lab.
[server]
listen = "{listen}"
operator_token_file = "{dir}/operator.token"
[metrics]
enabled = false
[nova]
cloud = "{cloud}"
poll_interval = "1s"
[ping]
reference_addresses = ["{ctl}"]
[policy.nova]
report_interval = "{report}s"
# The lab's crash kernels (`lab fault kdump`) send fence_kdump messages to
# the host's management address once a second: 5 s of quiet ends a dump.
[policy.kdump]
fresh_for = "5s"
[kdump]
listen = "{kdump_host}:7410"
"#,
        kdump_host = info
            .decider
            .listen
            .rsplit_once(':')
            .map_or(info.decider.listen.as_str(), |(h, _)| h),
        listen = info.decider.listen,
        dir = dir.display(),
        cloud = info.cloud,
        ctl = info.controller.mgmt_ip,
        report = info.controller.report_interval.unwrap_or(10),
    );
    for n in &info.nodes {
        c.push_str(&format!(
            "[[node]]\nname = \"{}\"\ntoken_file = \"{}\"\nmanagement_addresses = [\"{}\"]\n",
            n.name,
            n.sensor_token_path.display(),
            n.mgmt_ip
        ));
    }
    // Poll moving servers every 500 ms: the hand floor polls every 250 ms, so
    // a 2 s default would add up to 2 s of our own to "all ACTIVE".
    c.push_str(&format!(
        r#"[recovery]
[recovery.journal]
path = "{dir}/journal.sqlite"
[recovery.evacuation]
destination = "{destination}"
poll_interval = "500ms"
verify_deadline = "10m"
[recovery.notify]
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
admins = ["oncall@lab.invalid"]
"#,
        dir = dir.display(),
        hook = info.receivers.webhook.url,
        smtp_host = info.receivers.smtp.host,
        smtp_port = info.receivers.smtp.port,
    ));
    for n in &info.nodes {
        c.push_str(&format!(
            r#"[recovery.fencing.nodes.{name}]
levels = [
  {{ kind = "redfish", url = "{redfish}", system_id = "{sys}", username = "{user}", password = {{ file = "{pw}" }}, deadline = "30s", request_timeout = "3s" }},
  {{ kind = "ipmi", host = "{ih}", port = {ip}, username = "{user}", password = {{ file = "{pw}" }}, cipher_suite = {cs}, deadline = "30s", request_timeout = "3s" }},
]
"#,
            name = n.name,
            redfish = n.redfish.url,
            sys = n.redfish.system_id,
            ih = n.ipmi.host,
            ip = n.ipmi.port,
            cs = n.ipmi.cipher_suite,
        ));
    }
    c
}

/// [`config`] for one decider of a cluster: it listens on its controller's
/// address and has a `[cluster]` section (its journal is then in etcd;
/// `recovery.journal.path` stays, unused).
pub fn ha_config(lab: &Lab, dir: &Path, destination: &str, ha: &Ha) -> String {
    let endpoints: Vec<String> = ha
        .etcd_endpoints
        .iter()
        .map(|e| format!("\"{e}\""))
        .collect();
    let mut c = config(lab, dir, destination).replacen(
        &format!("listen = \"{}\"", lab.info().decider.listen),
        &format!("listen = \"{}:50051\"", ha.ip),
        1,
    );
    // A top-level table may follow the others anywhere.
    c.push_str(&format!(
        // A prefix of its own: a demo never resumes what an earlier,
        // interrupted one left in the controllers' etcd.
        "[cluster]\nname = \"{}\"\nprefix = \"/vigil-demo-{}\"\nendpoints = [{}]\nlease_ttl = \"{}s\"\n",
        ha.controller,
        std::process::id(),
        endpoints.join(", "),
        ha.lease_ttl_secs
    ));
    c
}

/// Fails, naming it, when something already listens where the decider must:
/// another engineer's decider (or a kept demo) owns the lab's port. Asked
/// of this machine's socket table, not of a connect (a transparent proxy
/// answers a connect to any address).
pub fn port_free(listen: &str) -> Result<()> {
    let addr: SocketAddr = listen
        .parse()
        .with_context(|| format!("lab.json's decider address {listen:?}"))?;
    let listening = local_net::listeners(addr)
        .with_context(|| format!("reading this machine's TCP listeners for {addr}"))?;
    if listening.is_empty() {
        return Ok(());
    }
    let who: Vec<String> = local_net::listening_pids(addr)
        .into_iter()
        .map(|p| format!("pid {p}: {}", local_net::cmdline(p)))
        .collect();
    bail!(
        "something already listens on {listen}, where the lab's decider must run:\n{}\n\
         stop it first (a kept demo: `cargo xtask demo --teardown`)",
        if who.is_empty() {
            "(a process this user cannot see)".to_string()
        } else {
            who.join("\n")
        }
    );
}

impl Decider {
    /// Writes the config into `dir` (made empty first) and starts `serve`;
    /// returns once its gRPC port answers.
    pub fn start(bin: &Path, lab: &Lab, dir: &Path, opts: &Opts) -> Result<Decider> {
        Self::start_in(bin, lab, dir, opts, None)
    }

    /// [`Decider::start`] for one decider of a cluster: inside lab
    /// controller `ha.controller` (`lab controller exec ctlN -- …`, which
    /// execs, so our child's pid is the decider's), with [`ha_config`].
    pub fn start_ha(bin: &Path, lab: &Lab, dir: &Path, opts: &Opts, ha: &Ha) -> Result<Decider> {
        Self::start_in(bin, lab, dir, opts, Some(ha))
    }

    fn start_in(
        bin: &Path,
        lab: &Lab,
        dir: &Path,
        opts: &Opts,
        ha: Option<&Ha>,
    ) -> Result<Decider> {
        if dir.exists() {
            std::fs::remove_dir_all(dir).with_context(|| format!("emptying {}", dir.display()))?;
        }
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        write_secret(&dir.join("operator.token"), OPERATOR_TOKEN)?;
        write_secret(&dir.join("webhook.key"), WEBHOOK_KEY)?;
        let config = dir.join("decider.toml");
        let text = match ha {
            Some(h) => ha_config(lab, dir, &opts.destination, h),
            None => self::config(lab, dir, &opts.destination),
        };
        std::fs::write(&config, text).with_context(|| format!("writing {}", config.display()))?;
        let log = dir.join("decider.log");
        let listen = match ha {
            // A fresh network namespace: nothing else can hold the port.
            Some(h) => format!("{}:50051", h.ip),
            None => {
                let l = lab.info().decider.listen.clone();
                port_free(&l)?;
                l
            }
        };
        let out = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let mut cmd = match ha {
            Some(h) => {
                let mut c = lab.controller_command(&h.controller);
                c.arg(bin);
                c
            }
            None => Command::new(bin),
        };
        cmd.args(["serve", "--config"])
            .arg(&config)
            .env("OS_CLIENT_CONFIG_FILE", &lab.info().clouds_yaml)
            .env("VIGIL_LOG", "info,h2=warn,tower=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(out);
        if opts.detach {
            cmd.process_group(0);
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {} serve", bin.display()))?;
        let mut d = Decider {
            child: Some(child),
            bin: bin.to_path_buf(),
            ha: ha.cloned(),
            dir: dir.to_path_buf(),
            journal: dir.join("journal.sqlite"),
            config,
            log,
            url: format!("http://{listen}"),
            listen,
        };
        if let Some(c) = &d.child {
            std::fs::write(dir.join("decider.pid"), c.id().to_string())
                .context("writing decider.pid")?;
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(c) = d.child.as_mut() {
                if let Some(status) = c.try_wait().context("waiting on the decider")? {
                    d.child = None;
                    bail!(
                        "vigil-decider serve exited at start ({status}); its log {}:\n{}",
                        d.log.display(),
                        d.log_tail(30)
                    );
                }
            }
            // Our child's own socket, not a connect: a proxy would answer
            // that before the decider listens. (In a controller it is read
            // from the child's own namespace: `/proc/PID/net/tcp`.)
            if let (Some(c), Ok(addr)) = (d.child.as_ref(), d.listen.parse::<SocketAddr>()) {
                if local_net::pid_listens(c.id(), addr) {
                    return Ok(d);
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "vigil-decider serve did not listen on {} within 30 s; its log {}:\n{}",
                    d.listen,
                    d.log.display(),
                    d.log_tail(30)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The last `n` lines of the decider's log.
    pub fn log_tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Wraps an error with where the decider's log is and its tail.
    pub fn explain(&self, e: anyhow::Error) -> anyhow::Error {
        anyhow!(
            "{e:#}\n--- decider log {} (last 25 lines) ---\n{}",
            self.log.display(),
            self.log_tail(25)
        )
    }

    fn cli_json(&self, args: &[&str]) -> Result<Value> {
        let out = Command::new(&self.bin)
            .args(args)
            .output()
            .with_context(|| format!("running vigil-decider {}", args.join(" ")))?;
        if !out.status.success() {
            bail!(
                "vigil-decider {} failed ({}): {}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        serde_json::from_slice(&out.stdout)
            .with_context(|| format!("the JSON of vigil-decider {}", args.join(" ")))
    }

    /// `vigil-decider node NAME --json`.
    pub fn node(&self, name: &str) -> Result<Value> {
        self.cli_json(&["node", name, "--json", "--server", &self.url])
    }

    /// `vigil-decider incidents --json` from this run's journal, newest first.
    pub fn incidents(&self) -> Result<Vec<Value>> {
        let (flag, j) = self.journal_args();
        let v = self.cli_json(&["incidents", "--json", flag, &j])?;
        Ok(v.as_array().cloned().unwrap_or_default())
    }

    /// `vigil-decider incident ID --json`: `{"incident": …, "timeline": …}`.
    pub fn incident(&self, id: &str) -> Result<Value> {
        let (flag, j) = self.journal_args();
        self.cli_json(&["incident", id, "--json", flag, &j])
    }

    /// Where the CLI reads the journal: this run's SQLite file, or, in a
    /// cluster, etcd as the config names it.
    fn journal_args(&self) -> (&'static str, String) {
        if self.ha.is_some() {
            ("--config", self.config.to_string_lossy().into_owned())
        } else {
            ("--journal", self.journal.to_string_lossy().into_owned())
        }
    }

    /// `vigil-decider cluster --format json`: leader, term, every view.
    pub fn cluster(&self) -> Result<Value> {
        self.cli_json(&["cluster", "--format", "json", "--server", &self.url])
    }

    /// `vigil-decider cluster` (the text), printed as is.
    pub fn print_cluster(&self) -> Result<()> {
        crate::cmd::run(Command::new(&self.bin).args(["cluster", "--server", &self.url]))
    }

    /// The process id (inside a controller too: `lab controller exec` execs).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILL, no shutdown (a crashed decider); reaped at once.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
            let _ = std::fs::remove_file(self.dir.join("decider.pid"));
        }
    }

    /// `vigil-decider nodes` (the table), printed as is.
    pub fn print_nodes(&self) -> Result<()> {
        crate::cmd::run(Command::new(&self.bin).args(["nodes", "--server", &self.url]))
    }

    /// Until every node is `healthy` with its sensor connected.
    pub fn wait_healthy(&self, nodes: &[String], deadline: Duration) -> Result<()> {
        let end = Instant::now() + deadline;
        for n in nodes {
            loop {
                self.check_alive()?;
                let last = match self.node(n) {
                    Ok(v) if v["verdict"] == "healthy" && v["sensor"]["connected"] == true => break,
                    Ok(v) => format!("verdict {}: {}", v["verdict"], v["reasons"]),
                    Err(e) => format!("{e:#}"),
                };
                if Instant::now() > end {
                    return Err(self.explain(anyhow!(
                        "{n} not healthy with its sensor connected within {deadline:?}; last: {last}"
                    )));
                }
                std::thread::sleep(Duration::from_millis(500));
            }
        }
        Ok(())
    }

    /// Fails with the log if `serve` has exited.
    pub fn check_alive(&self) -> Result<()> {
        if let Some(pid) = self.child.as_ref().map(Child::id) {
            // try_wait needs &mut; a zero signal asks the kernel instead.
            // SAFETY: kill with signal 0 only checks that the pid exists.
            let alive = unsafe { libc::kill(pid as libc::pid_t, 0) } == 0
                && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    .is_ok_and(|s| s.rsplit_once(") ").is_some_and(|(_, r)| r.starts_with('Z')));
            if !alive {
                bail!(
                    "vigil-decider serve exited; its log {}:\n{}",
                    self.log.display(),
                    self.log_tail(30)
                );
            }
        }
        Ok(())
    }

    /// `vigil-decider watch --json` (every node) in the background; each
    /// verdict change arrives on the receiver as its JSON object.
    pub fn watch(&self) -> Result<Watch> {
        let mut child = Command::new(&self.bin)
            .args(["watch", "--json", "--server", &self.url])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("starting vigil-decider watch")?;
        let out = child
            .stdout
            .take()
            .ok_or_else(|| anyhow!("vigil-decider watch has no stdout"))?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    if tx.send(v).is_err() {
                        break;
                    }
                }
            }
        });
        Ok(Watch { child, rx })
    }

    /// SIGTERM, then SIGKILL after 10 s. A detached decider is left running.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            terminate(&mut c, Duration::from_secs(10));
            let _ = std::fs::remove_file(self.dir.join("decider.pid"));
        }
    }

    /// Keeps the process running after we exit (demo --keep).
    pub fn leave_running(mut self) -> u32 {
        let pid = self.child.as_ref().map_or(0, Child::id);
        self.child = None;
        pid
    }
}

impl Drop for Decider {
    fn drop(&mut self) {
        // Only `leave_running` keeps it: any other way out (an error) stops it,
        // because nobody would know it still runs.
        self.stop();
    }
}

/// `vigil-decider watch --json` in the background.
pub struct Watch {
    child: Child,
    pub rx: mpsc::Receiver<Value>,
}

impl Drop for Watch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn write_secret(path: &Path, text: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(text.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}

/// SIGTERM (a clean shutdown), SIGKILL if it is still there after `grace`.
pub fn terminate(c: &mut Child, grace: Duration) {
    // SAFETY: kill on our own child's pid, which we have not reaped yet.
    unsafe {
        libc::kill(c.id() as libc::pid_t, libc::SIGTERM);
    }
    let end = Instant::now() + grace;
    while Instant::now() < end {
        if let Ok(Some(_)) = c.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = c.kill();
    let _ = c.wait();
}
