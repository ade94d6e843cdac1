//! The command line (every flag also from an environment variable).

use std::{path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "vigil-sensor",
    version = env!("VIGIL_BUILD_VERSION"),
    about = "Vigil's compute-node sensor: tells the decider, every second, whether this host and its VMs are really alive",
    long_about = "Vigil's compute-node sensor. eBPF probes on scheduler and block tracepoints watch for tasks stuck in \
uninterruptible sleep, stalled block devices, qemu processes that stop getting CPU or exit, and a hung or vanished \
nova-compute; a heartbeat with all of it goes to one or more Vigil deciders every interval. If eBPF cannot load it \
says so and runs a /proc fallback that reports itself as such. Needs root, or CAP_BPF+CAP_PERFMON+CAP_IPC_LOCK and CAP_DAC_READ_SEARCH (tracefs) as its systemd unit gives it."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,

    /// Log filter (tracing-subscriber EnvFilter syntax), logs go to stderr only.
    #[arg(long, env = "VIGIL_LOG", default_value = "info", global = true)]
    pub log: String,

    /// How logs are written: `text` (colours only on a terminal), `json`
    /// (one object per line) or `journald` (native fields, under systemd).
    #[arg(
        long,
        env = "VIGIL_LOG_FORMAT",
        value_enum,
        default_value = "text",
        global = true
    )]
    pub log_format: crate::logging::LogFormat,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the sensor: sample every interval and stream heartbeats to the decider(s).
    Run(Box<RunArgs>),
    /// Take one snapshot and print it (no decider needed): the first command on a sick host.
    Probe(ProbeArgs),
    /// Measure the sensor's overhead on context switches (used by `cargo xtask bench sensor`).
    #[command(hide = true)]
    BenchSwitch(crate::bench::BenchArgs),
    /// Write man pages and shell completions (for the package build).
    #[command(hide = true)]
    GenerateDocs {
        /// Directory to write `man/` and `completions/` into.
        #[arg(long)]
        out: PathBuf,
    },
}

/// What to watch and how (shared by `run` and `probe`).
#[derive(Debug, Clone, Args)]
pub struct WatchArgs {
    /// Only watch tasks in this cgroup v2 group and its children, given as a path
    /// below the cgroup2 mount (e.g. /vigil-lab/compute1), and only the block
    /// devices those tasks use (hold open, or hold a file open on). Lets several
    /// lab nodes share one kernel. Default: the whole host and every device.
    #[arg(long, env = "VIGIL_CGROUP", value_name = "PATH")]
    pub cgroup: Option<String>,

    /// Use the /proc fallback even if eBPF would load (coarser; reported as mode procfs).
    #[arg(long, env = "VIGIL_PROCFS")]
    pub procfs: bool,

    /// Regex that finds nova-compute, matched against its program and first argument
    /// ("/usr/bin/python3 /usr/bin/nova-compute"); also finds it in a container.
    #[arg(long, env = "VIGIL_NOVA_COMPUTE_MATCH", value_name = "REGEX", default_value = crate::nova_compute::DEFAULT_MATCH)]
    pub nova_compute_match: String,

    /// Size of the eBPF map of tasks in D state; overflow is counted in map_full.
    #[arg(
        long,
        env = "VIGIL_MAX_BLOCKED_TASKS",
        default_value_t = 32768,
        value_name = "N"
    )]
    pub max_blocked_tasks: u32,

    /// Size of the eBPF map of block requests in flight (LRU).
    #[arg(
        long,
        env = "VIGIL_MAX_INFLIGHT",
        default_value_t = 65536,
        value_name = "N"
    )]
    pub max_inflight: u32,

    /// Most processes (qemu + nova-compute) followed for CPU progress and exit.
    #[arg(
        long,
        env = "VIGIL_MAX_WATCHED",
        default_value_t = 4096,
        value_name = "N"
    )]
    pub max_watched: u32,

    /// eBPF event ring buffer size in bytes (power of two); overflow is counted in events_lost.
    #[arg(long, env = "VIGIL_EVENTS_BYTES", default_value_t = 256 * 1024, value_name = "BYTES")]
    pub events_bytes: u32,
}

#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// Decider endpoint, e.g. http://198.51.100.1:50051. Repeat (or comma-separate in
    /// the env var) to send to several deciders; each gets its own buffer and reconnects.
    #[arg(
        long = "decider",
        env = "VIGIL_DECIDERS",
        value_delimiter = ',',
        required = true,
        value_name = "URL"
    )]
    pub deciders: Vec<String>,

    /// This node's name as Nova knows the host (os-services `host`). Default: the hostname.
    #[arg(long, env = "VIGIL_NODE", value_name = "NAME")]
    pub node: Option<String>,

    /// File holding this node's token, sent as `authorization: Bearer <token>`
    /// (read once at start; surrounding whitespace is ignored).
    #[arg(long, env = "VIGIL_TOKEN_FILE", value_name = "PATH")]
    pub token_file: Option<PathBuf>,

    #[command(flatten)]
    pub tls: TlsArgs,

    /// Where the boot id is read from (once, at start); a change tells the decider the
    /// node rebooted. Tests point it elsewhere to make one kernel look like many hosts.
    #[arg(
        long,
        env = "VIGIL_BOOT_ID_PATH",
        value_name = "PATH",
        default_value = "/proc/sys/kernel/random/boot_id"
    )]
    pub boot_id_path: PathBuf,

    /// File holding the host's SMBIOS system UUID (read once, at start), sent so the
    /// decider can check the node's BMC is this machine's. Unreadable, not a UUID, or a
    /// placeholder (all zeros/Fs): the sensor runs and says so, but the decider cannot
    /// verify this node's BMC identity, so its BMC power witness stays off.
    #[arg(
        long,
        env = "VIGIL_SYSTEM_UUID_FILE",
        value_name = "PATH",
        default_value = crate::system_uuid::DEFAULT_PATH
    )]
    pub system_uuid_file: PathBuf,

    /// Time between heartbeats (the decider may change it).
    #[arg(long, env = "VIGIL_INTERVAL", value_parser = humantime::parse_duration, default_value = "1s")]
    pub interval: Duration,

    /// A task counts as blocked once it has been (mostly) in D state this long.
    #[arg(long, env = "VIGIL_BLOCKED_THRESHOLD", value_parser = humantime::parse_duration, default_value = "5s")]
    pub blocked_threshold: Duration,

    /// Heartbeats kept per decider while it is unreachable (oldest dropped first, counted).
    #[arg(long, env = "VIGIL_BUFFER", default_value_t = 300, value_name = "N")]
    pub buffer: usize,

    /// First reconnect delay; doubles per failure, with jitter.
    #[arg(long, env = "VIGIL_RECONNECT_MIN", value_parser = humantime::parse_duration, default_value = "250ms")]
    pub reconnect_min: Duration,

    /// Longest reconnect delay.
    #[arg(long, env = "VIGIL_RECONNECT_MAX", value_parser = humantime::parse_duration, default_value = "5s")]
    pub reconnect_max: Duration,

    /// How long one connection attempt may take.
    #[arg(long, env = "VIGIL_CONNECT_TIMEOUT", value_parser = humantime::parse_duration, default_value = "3s")]
    pub connect_timeout: Duration,

    /// How often /proc is scanned for qemu and nova-compute processes.
    #[arg(long, env = "VIGIL_DISCOVERY_INTERVAL", value_parser = humantime::parse_duration, default_value = "2s")]
    pub discovery_interval: Duration,

    /// Most blocked tasks and devices listed per heartbeat (longest first).
    #[arg(
        long,
        env = "VIGIL_MAX_REPORTED",
        default_value_t = 128,
        value_name = "N"
    )]
    pub max_reported: usize,

    /// Do not lock the sensor's memory (mlockall). Locking keeps it from stalling on
    /// page-ins when the host's disks hang; only turn it off for debugging.
    #[arg(long, env = "VIGIL_NO_MLOCK")]
    pub no_mlock: bool,

    #[command(flatten)]
    pub watch: WatchArgs,
}

/// How the sensor reaches an https:// decider, and whether a token may go
/// to an http:// one.
#[derive(Debug, Clone, Args)]
pub struct TlsArgs {
    /// CA certificate (PEM) that signed the decider's certificate, for https://
    /// deciders. Default: the system's CA store.
    #[arg(long, env = "VIGIL_CA_FILE", value_name = "PATH")]
    pub ca_file: Option<PathBuf>,

    /// This node's client certificate (PEM) for mutual TLS; its DNS name (SAN)
    /// or CN is the node name when the decider binds certificates to nodes.
    #[arg(
        long,
        env = "VIGIL_CERT_FILE",
        value_name = "PATH",
        requires = "key_file"
    )]
    pub cert_file: Option<PathBuf>,

    /// Private key (PEM) of --cert-file.
    #[arg(
        long,
        env = "VIGIL_KEY_FILE",
        value_name = "PATH",
        requires = "cert_file"
    )]
    pub key_file: Option<PathBuf>,

    /// Send the token over plain http:// to a non-loopback decider (refused
    /// otherwise: anyone on the path could stream as this node). For trusted
    /// networks and labs only.
    #[arg(long, env = "VIGIL_ALLOW_PLAINTEXT_TOKEN")]
    pub allow_plaintext_token: bool,
}

impl TlsArgs {
    pub fn client_tls(&self) -> vigil_proto::connect::ClientTls {
        vigil_proto::connect::ClientTls {
            ca_file: self.ca_file.clone(),
            cert_file: self.cert_file.clone(),
            key_file: self.key_file.clone(),
        }
    }
}

#[derive(Debug, Clone, Args)]
pub struct ProbeArgs {
    /// Print JSON instead of tables.
    #[arg(long)]
    pub json: bool,

    /// How long to observe before printing (CPU progress is measured over it).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "1s")]
    pub duration: Duration,

    /// List tasks in D state at least this long (default: all of them).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "0s")]
    pub blocked_threshold: Duration,

    /// Also watch this pid and wait until it exits (as seen by the exit probe), then
    /// print; proves the probe chain end to end. Exit status 1 if it does not exit in time.
    #[arg(long, value_name = "PID")]
    pub wait_exit: Option<u32>,

    /// With --wait-exit: how long to wait.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "30s")]
    pub timeout: Duration,

    #[command(flatten)]
    pub watch: WatchArgs,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent_and_every_flag_is_explained() {
        Cli::command().debug_assert();
        for sub in Cli::command().get_subcommands() {
            for arg in sub.get_arguments() {
                if arg.is_hide_set() || arg.get_id() == "help" || arg.get_id() == "version" {
                    continue;
                }
                assert!(
                    arg.get_help().is_some(),
                    "{} --{} has no help",
                    sub.get_name(),
                    arg.get_id()
                );
            }
        }
    }

    #[test]
    fn lab_contract_command_line_parses() {
        let cli = Cli::try_parse_from([
            "vigil-sensor",
            "run",
            "--node",
            "compute1",
            "--decider",
            "http://198.51.100.1:50051",
            "--token-file",
            "state/nodes/compute1/sensor.token",
            "--cgroup",
            "/vigil-lab/compute1",
            "--boot-id-path",
            "state/nodes/compute1/boot_id",
            "--system-uuid-file",
            "state/nodes/compute1/product_uuid",
            "--allow-plaintext-token",
        ])
        .expect("parse");
        let Command::Run(run) = cli.command else {
            panic!("expected run");
        };
        assert_eq!(run.deciders, ["http://198.51.100.1:50051"]);
        assert_eq!(run.interval, Duration::from_secs(1));
        assert_eq!(run.blocked_threshold, Duration::from_secs(5));
        assert_eq!(run.watch.cgroup.as_deref(), Some("/vigil-lab/compute1"));
        assert!(run.tls.allow_plaintext_token);
        assert_eq!(
            run.system_uuid_file,
            std::path::Path::new("state/nodes/compute1/product_uuid")
        );
    }

    #[test]
    fn tls_flags_parse_and_cert_needs_key() {
        let cli = Cli::try_parse_from([
            "vigil-sensor",
            "run",
            "--decider",
            "https://decider:50051",
            "--ca-file",
            "ca.pem",
            "--cert-file",
            "node.pem",
            "--key-file",
            "node.key",
        ])
        .expect("parse");
        let Command::Run(run) = cli.command else {
            panic!("expected run");
        };
        let tls = run.tls.client_tls();
        assert_eq!(tls.ca_file.as_deref(), Some(std::path::Path::new("ca.pem")));
        assert_eq!(
            tls.key_file.as_deref(),
            Some(std::path::Path::new("node.key"))
        );
        assert!(!run.tls.allow_plaintext_token);
        assert_eq!(
            run.system_uuid_file,
            std::path::Path::new("/sys/class/dmi/id/product_uuid")
        );
        let half = Cli::try_parse_from([
            "vigil-sensor",
            "run",
            "--decider",
            "https://decider:50051",
            "--cert-file",
            "node.pem",
        ]);
        assert!(
            half.is_err(),
            "--cert-file without --key-file must be refused"
        );
    }
}
