//! The command line: `serve` runs the decider; `nodes`, `node` and `watch`
//! ask a running decider over gRPC and print for people (tables) or tools
//! (`--format json|yaml`).

use crate::cli_format::{Format, FormatArgs};
use crate::config::{Config, LogFormat, Overrides};
use crate::serve::{Server, Witnesses};
use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use vigil_proto::v1;
use vigil_proto::v1::operator_client::OperatorClient;

#[derive(Debug, Parser)]
#[command(
    name = "vigil-decider",
    version = env!("VIGIL_BUILD_VERSION"),
    about = "Vigil's decider: judges compute nodes from sensor, Nova and ping evidence",
    after_help = crate::cli_exit::HELP
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the decider (gRPC sensor stream + operator API, /metrics).
    Serve(ServeArgs),
    /// Every node: verdict, since, heartbeat age, Nova state, pings, top reason.
    Nodes {
        /// Only nodes with this verdict (healthy, maintenance, degraded,
        /// suspect, dead, fencing, fenced, evacuating, recovered,
        /// needs-attention).
        #[arg(long, value_parser = parse_verdict)]
        verdict: Option<v1::Verdict>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Everything about one node (with `[cluster]`, also how each decider
    /// sees it).
    Node {
        name: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Decider HA: who leads, since when, the term, and each decider's view
    /// of every node.
    Cluster {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Print verdict changes as they happen.
    Watch {
        /// Only this node.
        node: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Read every configured BMC's power state (status only, never a power
    /// action). Exits 1 unless every fence level answered.
    FenceCheck {
        /// The TOML config file (its [recovery.fencing]).
        #[arg(long, env = "VIGIL_CONFIG")]
        config: PathBuf,
        #[command(flatten)]
        output: FormatArgs,
    },
    /// Tell the decider a node is off (you checked: cords pulled, BMC dead),
    /// so its recovery, stopped in needs-attention, goes on. Needs the
    /// operator token.
    ConfirmPowerOff(crate::cli_confirm::ConfirmArgs),
    /// Write a config skeleton from Nova: one [[node]] per nova-compute
    /// service with its hypervisor's host_ip (stdout, or --output).
    Init(crate::cli_init::InitArgs),
    /// The newest incidents from the recovery journal.
    Incidents {
        #[command(flatten)]
        journal: JournalArgs,
        /// How many, newest first.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        #[command(flatten)]
        output: FormatArgs,
    },
    /// One incident: timeline with timestamps, every action and its outcome,
    /// instance outcomes, the evidence at decision time.
    Incident {
        id: String,
        #[command(flatten)]
        journal: JournalArgs,
        #[command(flatten)]
        output: FormatArgs,
    },
    /// Write man pages and shell completions (for the package build).
    #[command(hide = true)]
    GenerateDocs {
        /// Directory to write `man/` and `completions/` into.
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Debug, Args)]
pub struct JournalArgs {
    /// The decider's config file; its recovery.journal.path is read.
    #[arg(long, env = "VIGIL_CONFIG")]
    pub config: Option<PathBuf>,
    /// The journal file itself (overrides the config's).
    #[arg(long)]
    pub journal: Option<PathBuf>,
}

impl JournalArgs {
    /// The journal to read: etcd when the config has `[cluster]`, else the
    /// file, which must exist (reading never creates one).
    fn path(&self) -> anyhow::Result<crate::recovery::commands::JournalAt> {
        use crate::recovery::commands::JournalAt;
        let path = match &self.journal {
            Some(p) => p.clone(),
            None => {
                let cfg = Config::load(self.config.as_deref())?;
                if let Some(c) = cfg.cluster {
                    return Ok(JournalAt::Cluster(c));
                }
                cfg.recovery.unwrap_or_default().journal.path
            }
        };
        if !path.is_file() {
            anyhow::bail!(
                "no recovery journal at {} (pass --journal PATH, or --config with the decider's [recovery.journal] path)",
                path.display()
            );
        }
        Ok(JournalAt::File(path))
    }
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// The TOML config file.
    #[arg(long, env = "VIGIL_CONFIG")]
    pub config: Option<PathBuf>,
    /// gRPC listen address (overrides server.listen).
    #[arg(long, env = "VIGIL_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Prometheus listen address (overrides metrics.listen).
    #[arg(long, env = "VIGIL_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    #[arg(long, env = "VIGIL_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
    /// tracing filter, e.g. `info,vigil_decider=debug` (overrides log.filter).
    #[arg(long, env = "VIGIL_LOG")]
    pub log: Option<String>,
    /// Check everything `serve` needs without changing anything, then
    /// exit: the config, every token and credential file, a Keystone token
    /// and Nova's os-services, every BMC's power state. Exits 0 when all
    /// pass, 2 for a bad config, 1 when Keystone, Nova or a BMC fails.
    #[arg(long)]
    pub check: bool,
    /// Run every new incident as a dry run: the whole workflow runs and
    /// journals each call it would make (fence, Nova changes, evacuations)
    /// and makes none.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Debug, Args)]
pub struct ClientArgs {
    /// The decider's gRPC address (https:// for TLS).
    #[arg(long, env = "VIGIL_SERVER", default_value = "http://127.0.0.1:50051")]
    pub server: String,
    #[command(flatten)]
    pub output: FormatArgs,
    /// File holding the read (or operator) token, sent as
    /// `authorization: Bearer <token>`; needed when the decider sets
    /// server.read_token_file.
    #[arg(long, env = "VIGIL_CLIENT_TOKEN_FILE", value_name = "PATH")]
    pub token_file: Option<PathBuf>,
    /// CA certificate (PEM) that signed the decider's certificate (https://).
    /// Default: the system's CA store.
    #[arg(long, env = "VIGIL_CA_FILE", value_name = "PATH")]
    pub ca_file: Option<PathBuf>,
    /// Client certificate (PEM), when the decider requires mutual TLS.
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
    /// Send --token-file's token over plain http:// to a non-loopback
    /// address (refused otherwise).
    #[arg(long, env = "VIGIL_ALLOW_PLAINTEXT_TOKEN")]
    pub allow_plaintext_token: bool,
}

/// Exit codes: see `cli_exit` (and `--help`).
pub fn main() -> i32 {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("vigil-decider: cannot start the async runtime: {e}");
            return 1;
        }
    };
    match cli.command {
        Command::Serve(args) => rt.block_on(serve(args)),
        Command::Nodes { verdict, client } => report(rt.block_on(nodes(verdict, &client))),
        Command::Node { name, client } => report(rt.block_on(node(&name, &client))),
        Command::Cluster { client } => report(rt.block_on(cluster(&client))),
        Command::Watch { node, client } => report(rt.block_on(watch(node, &client))),
        Command::FenceCheck { config, output } => rt.block_on(fence_check(&config, output.get())),
        Command::ConfirmPowerOff(a) => rt.block_on(crate::cli_confirm::run(&a)),
        Command::Init(a) => rt.block_on(crate::cli_init::run(&a)),
        Command::Incidents {
            journal,
            limit,
            output,
        } => report(rt.block_on(async {
            crate::recovery::commands::incidents_command(&journal.path()?, limit, output.get())
                .await
        })),
        Command::Incident {
            id,
            journal,
            output,
        } => report(rt.block_on(async {
            crate::recovery::commands::incident_command(&journal.path()?, &id, output.get()).await
        })),
        Command::GenerateDocs { out } => report(crate::docs::write(
            <Cli as clap::CommandFactory>::command(),
            &out,
        )),
    }
}

async fn fence_check(config: &std::path::Path, format: Format) -> i32 {
    init_tracing(LogFormat::Text, "warn");
    let cfg = match Config::load(Some(config)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("vigil-decider: {e}");
            return 2;
        }
    };
    let Some(r) = cfg.recovery else {
        eprintln!(
            "vigil-decider: {} has no [recovery] section, so no fencing is configured",
            config.display()
        );
        return 2;
    };
    let uuids = match crate::recovery::bmc_identity::configured(&cfg.nodes) {
        Ok(u) => u,
        Err(e) => {
            eprintln!("vigil-decider: {}: {e}", config.display());
            return 2;
        }
    };
    match crate::recovery::commands::fence_check_command(&r, &uuids, format).await {
        Ok(true) => 0,
        Ok(false) => 1,
        Err(e) => {
            eprintln!("vigil-decider: {e:#}");
            1
        }
    }
}

fn report(r: anyhow::Result<()>) -> i32 {
    match r {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("vigil-decider: {e:#}");
            crate::cli_exit::code_for(&e)
        }
    }
}

async fn serve(args: ServeArgs) -> i32 {
    let overrides = Overrides {
        listen: args.listen,
        metrics_listen: args.metrics_listen,
        log_format: args.log_format,
        log_filter: args.log.clone(),
    };
    // Validate everything before binding anything; a bad config exits 2 with
    // one line naming the key.
    let loaded = Config::load(args.config.as_deref()).and_then(|mut c| {
        c.apply(&overrides);
        let tokens = c.validate()?;
        Ok((c, tokens))
    });
    let (cfg, tokens) = match loaded {
        Ok(v) => v,
        Err(e) => {
            eprintln!("vigil-decider: {e}");
            return 2;
        }
    };
    if let Err(e) = crate::check::nodes_configured(&cfg) {
        eprintln!("vigil-decider: {e}");
        return 2;
    }
    let vars = std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .collect();
    let nova = match preflight(&cfg, vars, &vigil_recovery::secret::ProcessEnv) {
        Ok(n) => n,
        Err(e) => {
            eprintln!("vigil-decider: {e}");
            return 2;
        }
    };
    if args.check {
        let live = crate::check::live(&cfg, nova.as_ref()).await;
        for line in &live.lines {
            println!("{line}");
        }
        if !live.ok {
            eprintln!("vigil-decider: check failed (see the FAILED lines above)");
            return 1;
        }
        println!(
            "config ok: {} node(s), gRPC {}, metrics {}, Nova {}, pings {}, enrolment {}, recovery {}",
            cfg.nodes.len(),
            cfg.server.listen,
            if cfg.metrics.enabled {
                cfg.metrics.listen.to_string()
            } else {
                "off".into()
            },
            if cfg.nova.enabled { "on" } else { "off" },
            if cfg.ping.enabled { "on" } else { "off" },
            if cfg.enrolment.enabled { "on" } else { "off" },
            match &cfg.recovery {
                None => "off".to_string(),
                Some(r) => format!(
                    "on{} ({} fenced node(s), journal {})",
                    if r.dry_run || args.dry_run { ", dry run" } else { "" },
                    vigil_recovery::fence::configured_nodes(&r.fencing).len(),
                    r.journal.path.display()
                ),
            },
        );
        return 0;
    }
    init_tracing(cfg.log.format, &cfg.log.filter);
    let mut witnesses = Witnesses::default();
    if let Some(c) = nova {
        witnesses.nova = Some(Arc::new(crate::nova_adapter::NovaWitnessClient::new(c)));
    }
    if cfg.ping.enabled {
        match crate::ping_adapter::pinger(&cfg.ping) {
            Ok(p) => witnesses.prober = Some(Arc::new(p)),
            Err(e) => {
                eprintln!("vigil-decider: {e:#}");
                return 2;
            }
        }
    }
    if let Some(c) = &cfg.cluster {
        match crate::cluster::ClusterParts::connect(c).await {
            Ok(p) => witnesses.cluster = Some(p),
            Err(e) => {
                eprintln!("vigil-decider: [cluster]: {e}");
                return 2;
            }
        }
    }
    if let Some(r) = &cfg.recovery {
        let connect = crate::recovery::setup::nova_connect(&cfg.nova);
        match crate::recovery::RecoveryParts::from_config(
            &cfg,
            r,
            args.dry_run,
            &vigil_recovery::secret::ProcessEnv,
            connect,
            witnesses.prober.clone(),
            witnesses.cluster.clone(),
        ) {
            Ok(p) => witnesses.recovery = Some(p),
            Err(e) => {
                eprintln!("vigil-decider: {e}");
                return 2;
            }
        }
    } else if args.dry_run {
        eprintln!("vigil-decider: --dry-run needs a [recovery] section: without one the decider never acts anyway");
        return 2;
    }
    let server = match Server::start(cfg, tokens, witnesses).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("vigil-decider: {e:#}");
            return 1;
        }
    };
    report(server.run_until(crate::shutdown::signal()).await)
}

/// Everything `serve` reads before it binds, so that `serve --check`
/// refuses what `serve` would: the Nova credentials (clouds.yaml cloud or
/// `OS_*`) and every credential `[recovery]` names (BMC passwords, webhook
/// and SMTP secrets). Only sockets (ports, the ping socket) are left to
/// `serve`. Returns the Nova client when Nova is on.
fn preflight(
    cfg: &Config,
    vars: std::collections::BTreeMap<String, String>,
    env: &dyn vigil_recovery::secret::SecretEnv,
) -> Result<Option<vigil_nova::NovaClient>, String> {
    let nova = if cfg.nova.enabled {
        Some(crate::nova_adapter::client(&cfg.nova, vars).map_err(|e| format!("{e:#}"))?)
    } else {
        None
    };
    if let Some(r) = &cfg.recovery {
        crate::recovery::setup::check(r, env).map_err(|e| e.to_string())?;
    }
    Ok(nova)
}

pub fn init_tracing(format: LogFormat, filter: &str) {
    crate::logging::init(format, filter);
}

/// The bearer token a client puts on every call, if any.
#[derive(Clone, Default)]
pub struct Auth(Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);

impl Auth {
    /// `message` as a request carrying the token.
    pub fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(message);
        if let Some(v) = &self.0 {
            r.metadata_mut().insert("authorization", v.clone());
        }
        r
    }
}

pub(crate) async fn connect(
    c: &ClientArgs,
) -> anyhow::Result<(OperatorClient<tonic::transport::Channel>, Auth)> {
    let server = &c.server;
    let auth = match &c.token_file {
        None => Auth::default(),
        Some(p) => {
            // A token file that cannot be read or used is the caller's
            // mistake (exit 2), not the decider's.
            let text = std::fs::read_to_string(p).map_err(|e| {
                crate::cli_exit::Usage(format!("cannot read --token-file {}: {e}", p.display()))
            })?;
            let value = format!("Bearer {}", text.trim()).parse().map_err(|_| {
                crate::cli_exit::Usage(format!(
                    "--token-file {}: the token is not a valid header value (one line of ASCII)",
                    p.display()
                ))
            })?;
            Auth(Some(value))
        }
    };
    let tls = vigil_proto::connect::ClientTls {
        ca_file: c.ca_file.clone(),
        cert_file: c.cert_file.clone(),
        key_file: c.key_file.clone(),
    };
    let endpoint =
        vigil_proto::connect::endpoint(server, &tls, auth.0.is_some(), c.allow_plaintext_token)
            .map_err(|e| crate::cli_exit::Usage(format!("--server {server}: {e:#}")))?
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(10));
    let channel = endpoint.connect().await.with_context(|| {
        format!("connecting to the decider at {server} (is `vigil-decider serve` running there? https:// needs the decider's TLS and, for mutual TLS, --cert-file/--key-file)")
    })?;
    // Deciders before ListNodes paging sent the whole fleet in one answer,
    // beyond tonic's 4 MiB default.
    Ok((
        OperatorClient::new(channel).max_decoding_message_size(64 << 20),
        auth,
    ))
}

fn parse_verdict(s: &str) -> Result<v1::Verdict, String> {
    crate::table::verdict_from_name(s).ok_or_else(|| {
        format!(
            "{s:?} is not a verdict; use one of healthy, maintenance, degraded, suspect, dead, fencing, fenced, evacuating, recovered, needs-attention"
        )
    })
}

/// Every node (with `verdict`, or all for `Unspecified`), fetching ListNodes
/// page after page at the server's default page size.
pub async fn list_all_nodes(
    client: &mut OperatorClient<tonic::transport::Channel>,
    auth: &Auth,
    verdict: v1::Verdict,
) -> Result<Vec<v1::Node>, tonic::Status> {
    let mut nodes = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = client
            .list_nodes(auth.request(v1::ListNodesRequest {
                page_size: 0,
                page_token: std::mem::take(&mut page_token),
                verdict: verdict as i32,
            }))
            .await?
            .into_inner();
        nodes.extend(page.nodes);
        if page.next_page_token.is_empty() {
            return Ok(nodes);
        }
        page_token = page.next_page_token;
    }
}

async fn nodes(verdict: Option<v1::Verdict>, c: &ClientArgs) -> anyhow::Result<()> {
    let (mut client, auth) = connect(c).await?;
    let list = list_all_nodes(
        &mut client,
        &auth,
        verdict.unwrap_or(v1::Verdict::Unspecified),
    )
    .await
    .map_err(crate::cli_exit::rpc("ListNodes"))?;
    let v: Vec<_> = list.iter().map(crate::table::node_json).collect();
    c.output
        .get()
        .print(&v, || crate::table::nodes_table(&list, now_ms()))
}

async fn node(name: &str, c: &ClientArgs) -> anyhow::Result<()> {
    let (mut client, auth) = connect(c).await?;
    let n = client
        .get_node(auth.request(v1::GetNodeRequest {
            name: name.to_string(),
        }))
        .await
        .map_err(crate::cli_exit::rpc(format!("GetNode {name}")))?
        .into_inner();
    // Each decider's view: shown when the decider is one of several.
    let cluster = client
        .get_cluster(auth.request(v1::GetClusterRequest {}))
        .await
        .map(|r| r.into_inner())
        .ok()
        .filter(|c| c.enabled);
    let mut json = crate::table::node_json(&n);
    if let (Some(c), Some(obj)) = (&cluster, json.as_object_mut()) {
        obj.insert("views".into(), crate::table::node_views_json(c, name));
    }
    c.output.get().print(&json, || {
        let mut t = crate::table::node_detail(&n, now_ms());
        if let Some(c) = &cluster {
            t.push_str(&crate::table::node_views_text(c, name, now_ms()));
        }
        t
    })
}

async fn cluster(c: &ClientArgs) -> anyhow::Result<()> {
    let (mut client, auth) = connect(c).await?;
    let cl = client
        .get_cluster(auth.request(v1::GetClusterRequest {}))
        .await
        .map_err(crate::cli_exit::rpc("GetCluster".to_string()))?
        .into_inner();
    c.output.get().print(&crate::table::cluster_json(&cl), || {
        crate::table::cluster_text(&cl, now_ms())
    })
}

async fn watch(node: Option<String>, c: &ClientArgs) -> anyhow::Result<()> {
    let (mut client, auth) = connect(c).await?;
    let mut stream = client
        .watch_verdicts(auth.request(v1::WatchVerdictsRequest {
            node: node.unwrap_or_default(),
        }))
        .await
        .context("WatchVerdicts")?
        .into_inner();
    while let Some(ch) = stream.message().await.context("reading verdict changes")? {
        let item = c
            .output
            .get()
            .render_item(&crate::table::change_json(&ch), || {
                crate::table::change_line(&ch)
            })?;
        print!("{item}");
    }
    Ok(())
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// `serve --check` passed an unknown cloud and a missing BMC password
    /// file, which `serve` then refused.
    #[test]
    fn check_refuses_an_unknown_cloud_and_a_missing_bmc_password() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut vars = BTreeMap::new();
        // No clouds.yaml anywhere but where the test says.
        vars.insert(
            "OS_CLIENT_CONFIG_FILE".to_string(),
            dir.path().join("clouds.yaml").display().to_string(),
        );
        std::fs::write(
            dir.path().join("clouds.yaml"),
            "clouds:\n  lab:\n    auth:\n      auth_url: http://127.0.0.1:5000/v3\n      username: u\n      password: p\n      project_name: p\n      user_domain_name: Default\n      project_domain_name: Default\n",
        )
        .expect("clouds.yaml");
        let env = BTreeMap::<String, String>::new();
        let mut cfg = Config::default();
        cfg.nova.cloud = Some("no-such-cloud".into());
        let Err(e) = preflight(&cfg, vars.clone(), &env) else {
            panic!("an unknown cloud passed the check");
        };
        assert!(
            e.contains("no-such-cloud") || e.contains("clouds.yaml"),
            "{e}"
        );

        cfg.nova.enabled = false;
        let missing = dir.path().join("bmc.password");
        let r: vigil_recovery::config::RecoveryConfig = toml::from_str(&format!(
            "[fencing.nodes.compute1]\nlevels = [{{ kind = \"ipmi\", host = \"h\", username = \"u\", password = {{ file = \"{}\" }} }}]\n",
            missing.display()
        ))
        .expect("recovery");
        cfg.recovery = Some(r);
        let Err(e) = preflight(&cfg, vars, &env) else {
            panic!("a missing BMC password file passed the check");
        };
        assert!(
            e.contains("compute1") && e.contains(&missing.display().to_string()),
            "names the node and the file: {e}"
        );
    }
}
