//! `vigil-nova`: Vigil's Nova client from the command line.
//!
//! For operators: check that the credentials Vigil will use work
//! (`vigil-nova auth`), see what the Nova witness sees (`services`,
//! `servers --host`), and run the recovery calls by hand. For the end-to-end
//! tests: every command prints one JSON document on stdout, with `took_ms`.
//!
//! Exit codes: 0 ok, 2 configuration or authentication, 3 Nova/Keystone
//! unreachable, 4 Nova refused the request, 1 anything else.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand, ValueEnum};
use serde_json::{json, Value};
use vigil_nova::{
    ClientOptions, CloudConfig, ComputeService, EvacuateRequest, LandAs, Microversion,
    MigrationQuery, NovaClient, NovaError, ResetState, RetryPolicy, ServerQuery,
};

#[derive(Parser)]
#[command(
    name = "vigil-nova",
    version,
    about = "Vigil's Nova client: check credentials, list, and run the HA calls by hand"
)]
struct Cli {
    /// Cloud in clouds.yaml (sets OS_CLOUD); else OS_CLOUD or OS_* variables.
    #[arg(long, env = "OS_CLOUD")]
    cloud: Option<String>,
    /// Highest compute microversion to send (e.g. 2.94, or latest).
    #[arg(long)]
    max_microversion: Option<Microversion>,
    /// Per-request timeout.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// Tries per request (timeouts, connection errors, 5xx).
    #[arg(long, default_value_t = 3)]
    attempts: u32,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Authenticate; print the token's facts and the compute microversions.
    Auth,
    /// List nova-compute services.
    Services,
    /// List services N times (or GET one server), printing each poll's latency.
    PollServices {
        #[arg(long, default_value_t = 10)]
        count: u32,
        /// Poll this server (GET /servers/ID) instead of os-services.
        #[arg(long)]
        server: Option<String>,
        #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
        interval: Duration,
    },
    /// List hypervisors (management addresses).
    Hypervisors,
    /// List servers (all projects).
    Servers {
        #[arg(long)]
        host: Option<String>,
    },
    /// Show one server.
    Server { id: String },
    /// Disable a host's nova-compute service with a reason.
    Disable {
        #[arg(long)]
        host: String,
        #[arg(long)]
        reason: String,
    },
    /// Enable a host's nova-compute service.
    Enable {
        #[arg(long)]
        host: String,
    },
    /// Set forced_down on a host's service (`--off` to clear it).
    ForceDown {
        #[arg(long)]
        host: String,
        #[arg(long)]
        off: bool,
    },
    /// Evacuate one server.
    Evacuate {
        id: String,
        /// Destination host (default: Nova's scheduler).
        #[arg(long)]
        host: Option<String>,
        /// How it should land; picks the microversion (running ≤ 2.94).
        #[arg(long, value_enum, default_value_t = Land::Running)]
        land: Land,
        /// Use exactly this microversion instead.
        #[arg(long)]
        microversion: Option<Microversion>,
    },
    /// Reset a server's state.
    ResetState {
        id: String,
        #[arg(value_enum)]
        state: State,
    },
    /// Start a stopped server.
    Start { id: String },
    /// List migrations (e.g. `--server ID --type evacuation`).
    Migrations {
        #[arg(long)]
        server: Option<String>,
        #[arg(long = "type")]
        kind: Option<String>,
        #[arg(long)]
        source: Option<String>,
    },
    /// A server's instance actions, with a count per action.
    Actions { id: String },
    /// List host aggregates.
    Aggregates,
    /// Add a host to an aggregate.
    AggregateAdd { aggregate: String, host: String },
}

#[derive(Clone, Copy, ValueEnum)]
enum Land {
    Running,
    Stopped,
}

#[derive(Clone, Copy, ValueEnum)]
enum State {
    Active,
    Error,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(v) => {
            println!(
                "{}",
                serde_json::to_string_pretty(&v).unwrap_or_else(|_| v.to_string())
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("vigil-nova: {e}");
            let code = match &e {
                NovaError::Config(_)
                | NovaError::Setup(_)
                | NovaError::Auth { .. }
                | NovaError::Catalog { .. } => 2,
                NovaError::Unreachable { .. } => 3,
                NovaError::Api { .. }
                | NovaError::Unsupported { .. }
                | NovaError::InvalidRequest { .. } => 4,
                NovaError::Decode { .. } => 1,
            };
            ExitCode::from(code)
        }
    }
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

async fn service(c: &NovaClient, host: &str) -> Result<ComputeService, NovaError> {
    c.list_compute_services()
        .await?
        .into_iter()
        .find(|s| s.host == host)
        .ok_or_else(|| NovaError::Api {
            op: "find compute service",
            target: Some(format!("host {host}")),
            url: String::new(),
            status: 404,
            message: format!("no nova-compute service on host {host}"),
            request_id: None,
        })
}

fn to_json<T: serde::Serialize>(v: &T) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}

async fn run(cli: Cli) -> Result<Value, NovaError> {
    let mut cfg = match &cli.cloud {
        Some(cloud) => {
            let mut vars: std::collections::BTreeMap<String, String> = std::env::vars_os()
                .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
                .collect();
            vars.insert("OS_CLOUD".into(), cloud.clone());
            let search = vigil_nova::SearchPath::standard(&vars);
            CloudConfig::load_from(&vars, &search)?
        }
        None => CloudConfig::load()?,
    };
    if let Some(mv) = cli.max_microversion {
        cfg.compute_api_version = Some(mv);
    }
    let opts = ClientOptions {
        request_timeout: cli.timeout,
        retry: RetryPolicy {
            attempts: cli.attempts,
            ..RetryPolicy::default()
        },
        ..ClientOptions::default()
    };
    let c = NovaClient::new(cfg, opts)?;
    let t = Instant::now();
    let v = match cli.cmd {
        Cmd::Auth => {
            let info = c.auth_info().await?;
            let auth_ms = ms(t.elapsed());
            let t2 = Instant::now();
            let r = c.versions().await?;
            let versions_ms = ms(t2.elapsed());
            json!({
                "user_id": info.user_id, "project_id": info.project_id,
                "project_name": info.project_name, "roles": info.roles,
                "expires_at": info.expires_at, "lifetime_s": info.lifetime.as_secs(),
                "compute_endpoint": info.compute_endpoint,
                "versions": {"min": r.min.to_string(), "max": r.max.to_string()},
                "microversion": c.microversion().await?.to_string(),
                "auth_ms": auth_ms, "versions_ms": versions_ms,
            })
        }
        Cmd::Services => json!({"services": to_json(&c.list_compute_services().await?)}),
        Cmd::PollServices {
            count,
            interval,
            server,
        } => {
            c.versions().await?;
            let mut polls = Vec::new();
            for i in 0..count {
                if i > 0 {
                    tokio::time::sleep(interval).await;
                }
                let t = Instant::now();
                let n = match &server {
                    Some(id) => c.get_server(id).await.map(|_| 1)?,
                    None => c.list_compute_services().await?.len(),
                };
                polls.push(json!({"ms": ms(t.elapsed()), "items": n}));
            }
            let mut lat: Vec<f64> = polls.iter().filter_map(|p| p["ms"].as_f64()).collect();
            lat.sort_by(f64::total_cmp);
            let median = lat.get(lat.len() / 2).copied().unwrap_or(0.0);
            json!({"polls": polls, "median_ms": median,
                   "max_ms": lat.last().copied().unwrap_or(0.0)})
        }
        Cmd::Hypervisors => json!({"hypervisors": to_json(&c.list_hypervisors().await?)}),
        Cmd::Servers { host } => {
            let q = ServerQuery {
                host,
                ..ServerQuery::default()
            };
            json!({"servers": to_json(&c.list_servers(&q).await?)})
        }
        Cmd::Server { id } => json!({"server": to_json(&c.get_server(&id).await?)}),
        Cmd::Disable { host, reason } => {
            let s = service(&c, &host).await?;
            c.disable_service(&s, &reason).await?;
            json!({"host": host, "service_id": s.id, "status": "disabled"})
        }
        Cmd::Enable { host } => {
            let s = service(&c, &host).await?;
            c.enable_service(&s).await?;
            json!({"host": host, "service_id": s.id, "status": "enabled"})
        }
        Cmd::ForceDown { host, off } => {
            let s = service(&c, &host).await?;
            c.set_forced_down(&s, !off).await?;
            json!({"host": host, "service_id": s.id, "forced_down": !off})
        }
        Cmd::Evacuate {
            id,
            host,
            land,
            microversion,
        } => {
            let (mv, lands_stopped) = match microversion {
                Some(mv) => (mv, mv >= Microversion::V2_95),
                None => {
                    let p = c
                        .evacuation_plan(match land {
                            Land::Running => LandAs::Running,
                            Land::Stopped => LandAs::Stopped,
                        })
                        .await?;
                    (p.microversion, p.lands_stopped)
                }
            };
            let req = EvacuateRequest {
                host,
                ..EvacuateRequest::default()
            };
            let t = Instant::now();
            let a = c.evacuate(&id, &req, mv).await?;
            json!({"server": id, "microversion": a.microversion.to_string(),
                   "lands_stopped": lands_stopped, "request_id": a.request_id,
                   "post_ms": ms(t.elapsed())})
        }
        Cmd::ResetState { id, state } => {
            let s = match state {
                State::Active => ResetState::Active,
                State::Error => ResetState::Error,
            };
            c.reset_state(&id, s).await?;
            json!({"server": id, "reset": true})
        }
        Cmd::Start { id } => {
            c.start_server(&id).await?;
            json!({"server": id, "start": "accepted"})
        }
        Cmd::Migrations {
            server,
            kind,
            source,
        } => {
            let q = MigrationQuery {
                instance_uuid: server,
                migration_type: kind,
                source_compute: source,
                ..MigrationQuery::default()
            };
            json!({"migrations": to_json(&c.list_migrations(&q).await?)})
        }
        Cmd::Actions { id } => {
            let actions = c.list_instance_actions(&id).await?;
            let mut counts = std::collections::BTreeMap::<String, usize>::new();
            for a in &actions {
                *counts.entry(a.action.clone()).or_default() += 1;
            }
            json!({"actions": to_json(&actions), "counts": counts})
        }
        Cmd::Aggregates => json!({"aggregates": to_json(&c.list_aggregates().await?)}),
        Cmd::AggregateAdd { aggregate, host } => {
            json!({"aggregate": to_json(&c.aggregate_add_host(&aggregate, &host).await?)})
        }
    };
    let mut v = v;
    if let Some(o) = v.as_object_mut() {
        o.insert("took_ms".into(), json!(ms(t.elapsed())));
    }
    Ok(v)
}
