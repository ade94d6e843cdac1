//! `vigil-sensor run`: validate everything, open the probe, start discovery,
//! the sampler thread and one stream task per decider, lock memory, and
//! run until told to stop.
//!
//! Threads: the sampler and discovery are plain threads, so a blocked
//! `/proc` read in discovery can never delay a heartbeat, and the sampler
//! never waits on the network; the gRPC links run on the caller's (single
//! threaded) tokio runtime.

use std::{
    future::Future,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use regex::Regex;
use tokio::sync::{mpsc, watch};
use tracing::Instrument;
use vigil_proto::v1;

use crate::{
    cgroup::{CgroupError, Scope},
    cli::{RunArgs, WatchArgs},
    discovery, loader, memlock,
    psi::PressureReader,
    sampler::{Sampler, SamplerConfig, Tunables},
    signals,
    stream::{self, LinkConfig, LinkStats},
};

/// Why the sensor could not start. Each message says what to fix.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// `--nova-compute-match` is not a valid regex.
    #[error("--nova-compute-match is not a valid regex")]
    Regex(#[source] regex::Error),
    /// A `--decider` value is not a URL tonic can connect to, or its TLS
    /// options do not fit it (or a token would go out in clear text).
    #[error("--decider {url}")]
    DeciderUrl {
        url: String,
        #[source]
        source: vigil_proto::connect::ConnectError,
    },
    /// The token file could not be read.
    #[error("cannot read --token-file {path}")]
    Token {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// The boot id file could not be read.
    #[error("cannot read --boot-id-path {path}")]
    BootId {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// The node name is empty and the hostname unknown.
    #[error("no node name: pass --node NAME (the host name Nova uses)")]
    NoNode,
    /// `--cgroup` could not be resolved.
    #[error("--cgroup")]
    Scope(#[from] CgroupError),
    /// A thread could not be started.
    #[error("cannot start the {what} thread")]
    Thread {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// Map sizes out of range.
    #[error("--events-bytes must be a power of two of at least 4096, got {0}")]
    EventsBytes(u32),
}

/// The machine's hostname (the usual Nova host name).
fn hostname() -> Option<String> {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most buf.len() bytes into our buffer.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    (rc == 0)
        .then(|| crate::procfs::comm_str(&buf))
        .filter(|h| !h.is_empty())
}

/// Resolves the watch options shared with `probe` into what opens the probe
/// and what discovery needs.
pub fn prepare_watch(
    w: &WatchArgs,
) -> Result<(signals::OpenOptions, discovery::DiscoveryConfig), RunError> {
    let nova_match = Regex::new(&w.nova_compute_match).map_err(RunError::Regex)?;
    if w.events_bytes < 4096 || !w.events_bytes.is_power_of_two() {
        return Err(RunError::EventsBytes(w.events_bytes));
    }
    let scope = w.cgroup.as_deref().map(Scope::resolve).transpose()?;
    let open = signals::OpenOptions {
        force_procfs: w.procfs,
        load: loader::LoadOptions {
            max_blocked_tasks: w.max_blocked_tasks.max(1),
            max_inflight: w.max_inflight.max(1),
            max_watched: w.max_watched.max(1),
            events_bytes: w.events_bytes,
            scope: scope.clone(),
        },
    };
    let disc = discovery::DiscoveryConfig {
        scope,
        nova_match,
        self_pid: std::process::id(),
    };
    Ok((open, disc))
}

/// Runs the sensor until `shutdown` completes.
pub async fn run(args: RunArgs, shutdown: impl Future<Output = ()>) -> Result<(), RunError> {
    // Validate everything before touching the kernel.
    let (open_opts, disc_cfg) = prepare_watch(&args.watch)?;
    let node = args
        .node
        .clone()
        .or_else(hostname)
        .ok_or(RunError::NoNode)?;
    let token = match &args.token_file {
        Some(p) => Some(
            std::fs::read_to_string(p)
                .map_err(|source| RunError::Token {
                    path: p.display().to_string(),
                    source,
                })?
                .trim()
                .to_string(),
        ),
        None => None,
    };
    let tls = args.tls.client_tls();
    // Checked once here, so a bad URL, an unreadable certificate or a token
    // headed for clear text stops the sensor at start, not in a retry loop.
    for url in &args.deciders {
        vigil_proto::connect::endpoint(url, &tls, token.is_some(), args.tls.allow_plaintext_token)
            .map_err(|source| RunError::DeciderUrl {
                url: url.clone(),
                source,
            })?;
    }
    let boot_id = std::fs::read_to_string(&args.boot_id_path)
        .map_err(|source| RunError::BootId {
            path: args.boot_id_path.display().to_string(),
            source,
        })?
        .trim()
        .to_string();
    let system_uuid = crate::system_uuid::read_or_warn(&args.system_uuid_file);

    let (probe, fallback_reason) = signals::open(&open_opts);
    let mode = probe.mode();
    let scope_dir = disc_cfg.scope.as_ref().map(|s| s.dir.clone());
    let scope_path = disc_cfg.scope.as_ref().map(|s| s.path.clone());

    // First discovery inline, so the first heartbeat already lists instances.
    let shared = discovery::Shared::default();
    let mut cache = discovery::Cache::default();
    shared.publish(discovery::scan(&disc_cfg, &mut cache));
    let stop = Arc::new(AtomicBool::new(false));
    let disc_thread = discovery::spawn(
        disc_cfg,
        args.discovery_interval,
        shared.clone(),
        stop.clone(),
    )
    .map_err(|source| RunError::Thread {
        what: "discovery",
        source,
    })?;

    let tunables = Tunables::new(args.interval, args.blocked_threshold);
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let mut links = Vec::new();
    let mut senders = Vec::new();
    for url in &args.deciders {
        let (tx, rx) = mpsc::channel::<v1::Heartbeat>(64);
        let stats = Arc::new(LinkStats::default());
        let cfg = LinkConfig {
            url: url.clone(),
            token: token.clone(),
            tls: tls.clone(),
            allow_plaintext_token: args.tls.allow_plaintext_token,
            buffer: args.buffer.max(1),
            backoff_min: args.reconnect_min,
            backoff_max: args.reconnect_max,
            connect_timeout: args.connect_timeout,
        };
        let span = tracing::info_span!("decider", url = %url);
        links.push(tokio::spawn(
            stream::run_link(
                cfg,
                rx,
                tunables.clone(),
                stats.clone(),
                shutdown_rx.clone(),
            )
            .instrument(span),
        ));
        senders.push((tx, stats));
    }

    let sampler = Sampler::new(
        SamplerConfig {
            node: node.clone(),
            boot_id,
            system_uuid,
            instance: crate::sampler::instance_id(),
            max_reported: args.max_reported.max(1),
            extra_watch: Vec::new(),
            scope_path,
            fallback_reason,
        },
        tunables.clone(),
        probe,
        shared,
        PressureReader::open(scope_dir.as_deref()),
    );
    let sampler_thread = {
        let stop = stop.clone();
        std::thread::Builder::new()
            .name("sampler".into())
            .stack_size(512 * 1024)
            .spawn(move || sampling_loop(sampler, tunables, senders, stop))
            .map_err(|source| RunError::Thread {
                what: "sampler",
                source,
            })?
    };

    if args.no_mlock {
        tracing::warn!("--no-mlock: the sensor's memory may be paged out");
    } else if let Err(e) = memlock::lock_all() {
        tracing::warn!(error = %e, "mlockall failed; the sensor may stall on page-ins if disks hang (needs CAP_IPC_LOCK)");
    }
    tracing::info!(%node, mode = mode.as_str(), deciders = args.deciders.len(), "sensor running");

    shutdown.await;
    tracing::info!("shutting down");
    stop.store(true, Ordering::Relaxed);
    let _ = shutdown_tx.send(true);
    // Links end at once on the shutdown signal; give them a grace period.
    let _ = tokio::time::timeout(Duration::from_secs(2), futures_join(links)).await;
    // The sampler checks `stop` every 100 ms; joining drops the probe,
    // which detaches the eBPF programs.
    let deadline = Instant::now() + Duration::from_secs(3);
    while !sampler_thread.is_finished() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if sampler_thread.is_finished() {
        let _ = sampler_thread.join();
    } else {
        tracing::warn!("sampler did not stop within 3 s");
    }
    // Discovery may be stuck in a /proc read; do not wait for it.
    drop(disc_thread);
    Ok(())
}

async fn futures_join(handles: Vec<tokio::task::JoinHandle<()>>) {
    for h in handles {
        let _ = h.await;
    }
}

/// Samples every interval and hands each heartbeat to every link without
/// ever blocking (a full link queue counts as a drop for that link).
fn sampling_loop(
    mut sampler: Sampler,
    tunables: Arc<Tunables>,
    senders: Vec<(mpsc::Sender<v1::Heartbeat>, Arc<LinkStats>)>,
    stop: Arc<AtomicBool>,
) {
    let mut next = Instant::now();
    let mut was_blocked = 0usize;
    while !stop.load(Ordering::Relaxed) {
        let sample = sampler.sample();
        if sample.blocked_tasks.len() != was_blocked {
            tracing::warn!(
                blocked = sample.blocked_tasks.len(),
                longest_ms = sample
                    .blocked_tasks
                    .first()
                    .map(|b| b.blocked_ms)
                    .unwrap_or(0),
                "blocked tasks changed"
            );
            was_blocked = sample.blocked_tasks.len();
        }
        tracing::debug!(
            seq = sample.seq,
            blocked = sample.blocked_tasks.len(),
            devices = sample.device_stalls.len(),
            instances = sample.instances.len(),
            "sample"
        );
        let hb = sample.to_heartbeat();
        for (tx, stats) in &senders {
            if tx.try_send(hb.clone()).is_err() {
                stats.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
        next += tunables.interval();
        let now = Instant::now();
        if next < now {
            // Fell behind (a slow sample): start again from now, no burst.
            next = now;
        }
        while !stop.load(Ordering::Relaxed) {
            let left = next.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            std::thread::sleep(left.min(Duration::from_millis(100)));
        }
    }
}
