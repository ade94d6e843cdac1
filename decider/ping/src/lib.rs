//! `vigil-ping`: the ICMP echo witness (IPv4 and IPv6) for Vigil's decider.
//!
//! One [`Pinger`] holds one ICMPv4 and one ICMPv6 socket (surge-ping clients)
//! and a semaphore that bounds how many probes are in flight across all its
//! callers (the on-suspicion probes and the background [`sweep`] share it).
//! Each probe has its own deadline; a probe's result says answered (with the
//! RTT), timed out, an ICMP error came back (e.g. host unreachable), or the
//! send failed — only the first counts as "alive".
//!
//! Sockets: a raw socket needs root or `CAP_NET_RAW`. Without it the pinger
//! falls back to the kernel's unprivileged ICMP datagram sockets when
//! `net.ipv4.ping_group_range` covers the process's group, and otherwise
//! refuses to start with an error that names the capability.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use surge_ping::{Client, Config, IcmpPacket, PingIdentifier, PingSequence, SurgeError, ICMP};
use tokio::sync::Semaphore;

/// Probe settings.
#[derive(Debug, Clone)]
pub struct PingConfig {
    /// How long one probe waits for its echo reply.
    pub timeout: Duration,
    /// Probes in flight at once, per pinger.
    pub concurrency: usize,
    /// Echo payload size in bytes.
    pub payload_len: usize,
}

impl Default for PingConfig {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(1),
            concurrency: 64,
            payload_len: 16,
        }
    }
}

/// Which kind of ICMP socket a family uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SocketKind {
    /// `SOCK_RAW` (root or CAP_NET_RAW).
    Raw,
    /// `SOCK_DGRAM` ICMP ("ping sockets", allowed by `ping_group_range`).
    Datagram,
}

/// The pinger could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum PingError {
    #[error("opening an {family} ICMP socket is not permitted ({detail}): Vigil's pinger needs root or the CAP_NET_RAW capability (e.g. `setcap cap_net_raw+ep BINARY`, or AmbientCapabilities=CAP_NET_RAW in its systemd unit), or a net.ipv4.ping_group_range that includes its group")]
    NotPermitted {
        family: &'static str,
        detail: String,
    },
    #[error("cannot open an {family} ICMP socket: {source}")]
    Socket {
        family: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("the pinger must be created inside a tokio runtime")]
    NoRuntime,
}

/// What one probe found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// An echo reply came back after `rtt`.
    Answered { rtt: Duration },
    /// Nothing came back within the timeout.
    Timeout,
    /// An ICMP error about our request came back instead (from a router, or
    /// from our own kernel when neighbour discovery failed).
    IcmpError { from: IpAddr, kind: String },
    /// The probe could not be sent (no route, no socket for the family, ...).
    Failed { error: String },
}

/// One address's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    pub addr: IpAddr,
    pub outcome: Outcome,
    /// From send to result (≈ the timeout when nothing answered).
    pub elapsed: Duration,
}

impl Probe {
    /// True only for an echo reply.
    pub fn answered(&self) -> bool {
        matches!(self.outcome, Outcome::Answered { .. })
    }

    pub fn rtt(&self) -> Option<Duration> {
        match self.outcome {
            Outcome::Answered { rtt } => Some(rtt),
            _ => None,
        }
    }

    /// A short text for logs and evidence: `answered in 0.2 ms`, `timeout`, ...
    pub fn describe(&self) -> String {
        match &self.outcome {
            Outcome::Answered { rtt } => format!("answered in {:.1} ms", rtt.as_secs_f64() * 1e3),
            Outcome::Timeout => format!(
                "no answer within {:.0} ms",
                self.elapsed.as_secs_f64() * 1e3
            ),
            Outcome::IcmpError { from, kind } => format!("{kind} (from {from})"),
            Outcome::Failed { error } => format!("not sent: {error}"),
        }
    }
}

struct Family {
    client: Client,
    kind: SocketKind,
}

/// A reusable ICMP prober. Create once (inside a tokio runtime), share via
/// `Arc`, probe from many tasks.
pub struct Pinger {
    v4: Family,
    v6: Result<Family, String>,
    ident: u16,
    seq: AtomicU16,
    cfg: PingConfig,
    limit: Semaphore,
    payload: Vec<u8>,
}

impl std::fmt::Debug for Pinger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pinger")
            .field("v4", &self.v4.kind)
            .field("v6", &self.v6.as_ref().map(|f| f.kind))
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

/// Maps a socket-open error; permission problems name the capability.
pub fn open_error(family: &'static str, e: std::io::Error) -> PingError {
    // EPERM (raw socket without CAP_NET_RAW) and EACCES (datagram ICMP
    // socket outside ping_group_range) both map to PermissionDenied.
    if e.kind() == std::io::ErrorKind::PermissionDenied {
        // surge-ping's own message is multi-line advice; keep the OS's words.
        let detail = e
            .raw_os_error()
            .map(|c| std::io::Error::from_raw_os_error(c).to_string())
            .unwrap_or_else(|| "permission denied".to_owned());
        PingError::NotPermitted { family, detail }
    } else {
        PingError::Socket { family, source: e }
    }
}

fn open(kind: ICMP) -> std::io::Result<Family> {
    // Raw first: it sees every reply and works for any group; surge-ping
    // falls back to a datagram ICMP socket when raw is refused.
    let cfg = Config::builder()
        .kind(kind)
        .sock_type_hint(socket2::Type::RAW)
        .build();
    let client = Client::new(&cfg)?;
    let kind = if client.get_socket().get_type() == socket2::Type::RAW {
        SocketKind::Raw
    } else {
        SocketKind::Datagram
    };
    Ok(Family { client, kind })
}

impl Pinger {
    /// Opens the sockets. IPv4 is required; when IPv6 cannot be opened for a
    /// reason other than permissions (no IPv6 on the host), IPv6 probes
    /// report `Failed` with that reason.
    pub fn new(cfg: PingConfig) -> Result<Self, PingError> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(PingError::NoRuntime);
        }
        let v4 = open(ICMP::V4).map_err(|e| open_error("IPv4", e))?;
        let v6 = match open(ICMP::V6) {
            Ok(f) => Ok(f),
            Err(e) => match open_error("IPv6", e) {
                e @ PingError::NotPermitted { .. } => return Err(e),
                other => {
                    tracing::warn!(error = %other, "IPv6 pings unavailable");
                    Err(other.to_string())
                }
            },
        };
        let payload = b"vigil-ping"
            .iter()
            .copied()
            .cycle()
            .take(cfg.payload_len.max(8))
            .collect();
        Ok(Self {
            v4,
            v6,
            ident: random_u16(),
            seq: AtomicU16::new(random_u16()),
            limit: Semaphore::new(cfg.concurrency.max(1)),
            cfg,
            payload,
        })
    }

    pub fn config(&self) -> &PingConfig {
        &self.cfg
    }

    /// The socket kind per family (`None` for IPv6 when unavailable).
    pub fn socket_kinds(&self) -> (SocketKind, Option<SocketKind>) {
        (self.v4.kind, self.v6.as_ref().ok().map(|f| f.kind))
    }

    /// One echo request to `addr`, waiting at most the configured timeout
    /// (plus the wait for a concurrency slot).
    pub async fn probe(&self, addr: IpAddr) -> Probe {
        let Ok(_permit) = self.limit.acquire().await else {
            return Probe {
                addr,
                outcome: Outcome::Failed {
                    error: "pinger closed".into(),
                },
                elapsed: Duration::ZERO,
            };
        };
        let family = match addr {
            IpAddr::V4(_) => Ok(&self.v4),
            IpAddr::V6(_) => self.v6.as_ref().map_err(|e| e.clone()),
        };
        let started = Instant::now();
        let outcome = match family {
            Err(e) => Outcome::Failed { error: e },
            Ok(f) => self.echo(f, addr).await,
        };
        Probe {
            addr,
            outcome,
            elapsed: started.elapsed(),
        }
    }

    async fn echo(&self, f: &Family, addr: IpAddr) -> Outcome {
        // A distinct sequence number per probe keeps concurrent probes of
        // one address apart (datagram sockets match on address + sequence).
        let seq = PingSequence(self.seq.fetch_add(1, Ordering::Relaxed));
        let mut p = f.client.pinger(addr, PingIdentifier(self.ident)).await;
        p.timeout(self.cfg.timeout);
        // surge-ping applies the timeout to the wait for the reply; the
        // outer one also bounds a send stuck on a full socket buffer.
        let guard = self.cfg.timeout + Duration::from_millis(50);
        match tokio::time::timeout(guard, p.ping(seq, &self.payload)).await {
            Err(_) | Ok(Err(SurgeError::Timeout { .. })) => Outcome::Timeout,
            Ok(Ok((packet, rtt))) => classify(&packet, rtt),
            Ok(Err(e)) => Outcome::Failed {
                error: e.to_string(),
            },
        }
    }

    /// Probes every address at once (bounded by the concurrency limit);
    /// results in the order given.
    pub async fn probe_all(&self, addrs: impl IntoIterator<Item = IpAddr>) -> Vec<Probe> {
        futures::future::join_all(addrs.into_iter().map(|a| self.probe(a))).await
    }
}

fn classify(packet: &IcmpPacket, rtt: Duration) -> Outcome {
    match packet {
        IcmpPacket::V4(p) => {
            let (t, c) = (p.get_icmp_type().0, p.get_icmp_code().0);
            if t == 0 {
                return Outcome::Answered { rtt };
            }
            Outcome::IcmpError {
                from: IpAddr::V4(p.get_source()),
                kind: icmp4_kind(t, c),
            }
        }
        IcmpPacket::V6(p) => {
            let (t, c) = (p.get_icmpv6_type().0, p.get_icmpv6_code().0);
            if t == 129 {
                return Outcome::Answered { rtt };
            }
            Outcome::IcmpError {
                from: IpAddr::V6(p.get_source()),
                kind: icmp6_kind(t, c),
            }
        }
    }
}

fn icmp4_kind(t: u8, c: u8) -> String {
    match (t, c) {
        (3, 0) => "network unreachable".into(),
        (3, 1) => "host unreachable".into(),
        (3, 3) => "port unreachable".into(),
        (3, 9 | 10 | 13) => "administratively prohibited".into(),
        (3, c) => format!("destination unreachable (code {c})"),
        (11, _) => "time exceeded".into(),
        (t, c) => format!("ICMP type {t} code {c}"),
    }
}

fn icmp6_kind(t: u8, c: u8) -> String {
    match (t, c) {
        (1, 0) => "no route to destination".into(),
        (1, 1) => "administratively prohibited".into(),
        (1, 3) => "address unreachable".into(),
        (1, c) => format!("destination unreachable (code {c})"),
        (3, _) => "time exceeded".into(),
        (t, c) => format!("ICMPv6 type {t} code {c}"),
    }
}

/// A per-process random 16-bit identifier, without a RNG dependency: std's
/// hasher keys are random per process.
fn random_u16() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    h.write_u32(std::process::id());
    (h.finish() & 0xffff) as u16
}

/// One round of a background sweep.
#[derive(Debug, Clone)]
pub struct SweepReport {
    pub round: u64,
    pub started_at: SystemTime,
    pub took: Duration,
    pub probes: Vec<Probe>,
}

/// A running background sweep; dropping it (or [`Sweep::stop`]) ends it.
#[derive(Debug)]
pub struct Sweep {
    task: tokio::task::JoinHandle<()>,
    rounds: Arc<AtomicU64>,
}

impl Sweep {
    /// Rounds completed so far.
    pub fn rounds(&self) -> u64 {
        self.rounds.load(Ordering::Relaxed)
    }

    pub fn stop(self) {
        // Drop aborts.
    }
}

impl Drop for Sweep {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts a background sweep: every `every`, probe whatever `targets`
/// returns then (so the list can follow Nova), and hand the round's results
/// to `on_report`. A round that takes longer than `every` delays the next
/// rather than overlapping it.
pub fn sweep<T, S>(pinger: Arc<Pinger>, every: Duration, mut targets: T, mut on_report: S) -> Sweep
where
    T: FnMut() -> Vec<IpAddr> + Send + 'static,
    S: FnMut(SweepReport) + Send + 'static,
{
    let rounds = Arc::new(AtomicU64::new(0));
    let counter = rounds.clone();
    let task = tokio::spawn(async move {
        let mut tick = tokio::time::interval(every.max(Duration::from_millis(1)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let addrs = targets();
            let started_at = SystemTime::now();
            let t = Instant::now();
            let probes = pinger.probe_all(addrs).await;
            let round = counter.fetch_add(1, Ordering::Relaxed) + 1;
            on_report(SweepReport {
                round,
                started_at,
                took: t.elapsed(),
                probes,
            });
        }
    });
    Sweep { task, rounds }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permission_errors_name_the_capability() {
        let e = open_error("IPv4", std::io::Error::from_raw_os_error(1));
        let t = e.to_string();
        assert!(matches!(e, PingError::NotPermitted { .. }));
        assert!(
            t.contains("CAP_NET_RAW") && t.contains("ping_group_range"),
            "{t}"
        );
        let e = open_error("IPv6", std::io::Error::from_raw_os_error(97));
        assert!(matches!(e, PingError::Socket { family: "IPv6", .. }), "{e}");
    }

    #[test]
    fn outcomes() {
        let a = Probe {
            addr: "127.0.0.1"
                .parse()
                .unwrap_or(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)),
            outcome: Outcome::Answered {
                rtt: Duration::from_micros(250),
            },
            elapsed: Duration::from_micros(260),
        };
        assert!(a.answered());
        assert_eq!(a.rtt(), Some(Duration::from_micros(250)));
        assert_eq!(a.describe(), "answered in 0.2 ms");
        let t = Probe {
            outcome: Outcome::Timeout,
            elapsed: Duration::from_millis(1000),
            ..a.clone()
        };
        assert!(!t.answered());
        assert_eq!(t.describe(), "no answer within 1000 ms");
        assert_eq!(icmp4_kind(3, 1), "host unreachable");
        assert_eq!(icmp6_kind(1, 3), "address unreachable");
    }

    #[test]
    fn needs_a_runtime() {
        assert!(matches!(
            Pinger::new(PingConfig::default()),
            Err(PingError::NoRuntime)
        ));
    }

    /// Runs as anyone: with a raw socket (root/CAP_NET_RAW) or a datagram
    /// ICMP socket (ping_group_range) loopback answers; with neither, the
    /// error names CAP_NET_RAW. Never sends beyond loopback.
    #[tokio::test]
    async fn loopback_or_a_clear_refusal() {
        match Pinger::new(PingConfig {
            timeout: Duration::from_millis(500),
            ..PingConfig::default()
        }) {
            Ok(p) => {
                let r = p
                    .probe(
                        "127.0.0.1"
                            .parse()
                            .unwrap_or(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)),
                    )
                    .await;
                assert!(r.answered(), "{r:?}");
            }
            Err(e) => assert!(e.to_string().contains("CAP_NET_RAW"), "{e}"),
        }
    }
}

#[cfg(test)]
mod sweep_tests {
    use super::*;

    /// Background sweep over loopback: rounds arrive on schedule, and the
    /// targets closure is asked again each round. Skips (with the reason)
    /// where no ICMP socket can be opened.
    #[tokio::test]
    async fn sweep_reports_each_round() {
        let pinger = match Pinger::new(PingConfig {
            timeout: Duration::from_millis(300),
            ..PingConfig::default()
        }) {
            Ok(p) => Arc::new(p),
            Err(e) => {
                eprintln!("SKIPPED sweep_reports_each_round: {e}");
                return;
            }
        };
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let lo = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);
        let s = sweep(
            pinger,
            Duration::from_millis(50),
            move || vec![lo, lo],
            move |r| {
                let _ = tx.send(r);
            },
        );
        for want in 1..=3u64 {
            let r = tokio::time::timeout(Duration::from_secs(2), rx.recv()).await;
            let Ok(Some(r)) = r else {
                panic!("no sweep round {want}");
            };
            assert_eq!(r.round, want);
            assert_eq!(r.probes.len(), 2);
            assert!(r.probes.iter().all(Probe::answered), "{r:?}");
        }
        assert!(s.rounds() >= 3);
        s.stop();
    }
}
