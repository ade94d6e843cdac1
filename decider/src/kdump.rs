//! The kdump witness's ears: fence_kdump datagrams (UDP, port 7410), parsed,
//! attributed to a node by their source address and handed on as
//! [`KdumpHeard`]. Judging what a crash kernel's message means is the
//! engine's job, not this module's.
//!
//! The wire format is ClusterLabs fence-agents' `agents/kdump/message.h`:
//! a packed `struct { uint32_t magic; uint32_t version; }`, magic
//! `0x1B302A40`, version 1, filled in and sent in the *sender's* byte order
//! (no `htonl`), one datagram per message. Debian's fence-agents 4.12.1
//! `fence_kdump_send` on x86_64 sends `40 2a 30 1b 01 00 00 00`. A
//! big-endian crash kernel (s390x) sends the same struct byte-swapped, so
//! both orders are read; the magic tells them apart.
//!
//! Anyone who reaches the port can send one (no authentication, source
//! addresses can be forged): what is heard here is a claim for the engine to
//! weigh against the other witnesses, never a verdict. Nothing a sender does
//! makes this module keep more state than the configured node set and a
//! bounded log-rate table.

use crate::engine::{Clock, PingPlan};
use crate::metrics::{KdumpOutcome, Metrics};
use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;
use thiserror::Error;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::{info, warn};
use vigil_verdict::{Moment, PingRole};

/// fence_kdump's port (`fence_kdump_send -p`, `fence_kdump -p`).
pub const DEFAULT_PORT: u16 = 7410;
/// `FENCE_KDUMP_MAGIC` in fence-agents' `message.h`.
pub const MAGIC: u32 = 0x1B30_2A40;
/// `FENCE_KDUMP_MSGV1`: the only version fence-agents defines.
pub const VERSION_1: u32 = 1;
/// The packed struct's size: every fence_kdump message is exactly this long.
pub const DATAGRAM_LEN: usize = 8;

/// The byte order a message was written in (the crash kernel's own).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ByteOrder {
    Little,
    Big,
}

impl std::fmt::Display for ByteOrder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ByteOrder::Little => "little-endian",
            ByteOrder::Big => "big-endian",
        })
    }
}

/// A valid fence_kdump message: "this node runs its crash kernel".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KdumpMessage {
    pub version: u32,
    pub byte_order: ByteOrder,
}

/// Why a datagram is not a fence_kdump message.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum KdumpParseError {
    /// Not the 8 bytes of fence_kdump's struct.
    #[error("a fence_kdump datagram is {DATAGRAM_LEN} bytes, this one is {len}: not fence_kdump_send's message (check what else sends to this port)")]
    Length { len: usize },
    /// The first four bytes are not fence_kdump's magic in either byte order.
    #[error("magic {found:#010x} is not fence_kdump's {MAGIC:#010x} in either byte order: not fence_kdump_send's message (check what else sends to this port)")]
    Magic { found: u32 },
    /// fence_kdump's magic with a version it never defined.
    #[error("fence_kdump message version {version} ({byte_order}) is not the only one defined ({VERSION_1}): a newer fence_kdump_send? Vigil reads version {VERSION_1} only")]
    Version { version: u32, byte_order: ByteOrder },
}

/// Reads one datagram: exactly [`DATAGRAM_LEN`] bytes, the magic in either
/// byte order, then version 1 in the same order. Never panics.
pub fn parse(datagram: &[u8]) -> Result<KdumpMessage, KdumpParseError> {
    let bytes: [u8; DATAGRAM_LEN] = datagram.try_into().map_err(|_| KdumpParseError::Length {
        len: datagram.len(),
    })?;
    let [m0, m1, m2, m3, v0, v1, v2, v3] = bytes;
    let (magic, version) = ([m0, m1, m2, m3], [v0, v1, v2, v3]);
    let (byte_order, version) = if u32::from_le_bytes(magic) == MAGIC {
        (ByteOrder::Little, u32::from_le_bytes(version))
    } else if u32::from_be_bytes(magic) == MAGIC {
        (ByteOrder::Big, u32::from_be_bytes(version))
    } else {
        return Err(KdumpParseError::Magic {
            found: u32::from_le_bytes(magic),
        });
    };
    if version != VERSION_1 {
        return Err(KdumpParseError::Version {
            version,
            byte_order,
        });
    }
    Ok(KdumpMessage {
        version,
        byte_order,
    })
}

/// A crash kernel's message, attributed: what the engine is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KdumpHeard {
    /// The node whose management address sent it.
    pub node: String,
    /// That address (IPv4-mapped IPv6 sources read as IPv4).
    pub from: IpAddr,
    /// When the listener received it, on the engine's clock.
    pub at: Moment,
}

/// Datagrams heard but not yet taken by the engine. fence_kdump_send sends
/// one every 10 s per node by default, so this holds a burst from every
/// node of a large cloud at once; beyond it, datagrams are dropped and
/// counted rather than let a flood slow the socket loop.
pub const QUEUE: usize = 1024;

/// The listener's own failures.
#[derive(Debug, Error)]
pub enum KdumpError {
    /// The UDP port could not be bound.
    #[error("binding the kdump port {addr} (UDP): {source}; free the port or set kdump.listen")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// The bound socket's address could not be read.
    #[error("reading the kdump port's address: {0}")]
    LocalAddr(#[source] std::io::Error),
}

/// Which node, if any, an address belongs to. Called for each datagram on
/// the socket loop, so it must answer from memory, never block on I/O.
pub trait NodeLookup: Send + Sync {
    fn node_at(&self, address: IpAddr) -> Option<String>;
}

/// The nodes' management addresses: the configured ones, plus those the
/// engine learns later (an enrolled sensor's source address, Nova's
/// `host_ip`) through [`AddressBook::follow`]. An address claimed by two
/// nodes belongs to neither: a message from it cannot say which one crashed.
#[derive(Debug, Default)]
pub struct AddressBook {
    /// `[[node]] management_addresses`; never forgotten.
    configured: Vec<(String, IpAddr)>,
    /// Configured plus learnt, rebuilt whole on each refresh; readers take
    /// the lock only to clone the `Arc`.
    current: RwLock<Arc<HashMap<IpAddr, String>>>,
}

impl AddressBook {
    /// A book of the configured `(node, address)` pairs.
    pub fn new(configured: impl IntoIterator<Item = (String, IpAddr)>) -> Self {
        let configured: Vec<_> = configured
            .into_iter()
            .map(|(n, a)| (n, a.to_canonical()))
            .collect();
        let current = RwLock::new(Arc::new(index(configured.iter().cloned())));
        AddressBook {
            configured,
            current,
        }
    }

    /// Replaces what was learnt with `learnt`; the configured pairs stay.
    pub fn refresh(&self, learnt: impl IntoIterator<Item = (String, IpAddr)>) {
        let all = self
            .configured
            .iter()
            .cloned()
            .chain(learnt.into_iter().map(|(n, a)| (n, a.to_canonical())));
        let fresh = Arc::new(index(all));
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = fresh;
    }

    /// Keeps the book in step with the engine's ping plan, whose `host`
    /// targets are every node's management addresses as the engine knows
    /// them, until `shutdown`.
    pub async fn follow(
        self: Arc<Self>,
        mut plan: watch::Receiver<Arc<PingPlan>>,
        shutdown: impl Future<Output = ()>,
    ) {
        tokio::pin!(shutdown);
        loop {
            let p = plan.borrow_and_update().clone();
            self.refresh(p.targets.iter().filter_map(|t| match (&t.node, &t.role) {
                (Some(n), PingRole::Host) => Some((n.clone(), t.address)),
                _ => None,
            }));
            tokio::select! {
                _ = &mut shutdown => return,
                changed = plan.changed() => {
                    if changed.is_err() {
                        // The engine is gone (shutdown): the book stays as it was.
                        (&mut shutdown).await;
                        return;
                    }
                }
            }
        }
    }
}

/// Address → node, leaving out every address two nodes claim.
fn index(pairs: impl Iterator<Item = (String, IpAddr)>) -> HashMap<IpAddr, String> {
    let mut owners: HashMap<IpAddr, Option<String>> = HashMap::new();
    for (node, address) in pairs {
        owners
            .entry(address)
            .and_modify(|o| {
                if o.as_deref() != Some(node.as_str()) {
                    *o = None;
                }
            })
            .or_insert(Some(node));
    }
    owners
        .into_iter()
        .filter_map(|(a, o)| Some((a, o?)))
        .collect()
}

impl NodeLookup for AddressBook {
    fn node_at(&self, address: IpAddr) -> Option<String> {
        let map = self
            .current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        map.get(&address.to_canonical()).cloned()
    }
}

/// One log line per source per minute at most, for at most [`LOG_SOURCES`]
/// sources at once; beyond them (forged sources are free) all others share
/// one line a minute. The counters see every datagram either way.
#[derive(Debug)]
struct LogLimiter {
    window: Duration,
    last: HashMap<IpAddr, Instant>,
    /// The line shared by sources that find the table full.
    overflow: Option<Instant>,
    /// When stale entries were last swept out (at most once a second, so a
    /// flood of new sources does not sweep the table per datagram).
    swept: Option<Instant>,
}

const LOG_SOURCES: usize = 1024;
const LOG_WINDOW: Duration = Duration::from_secs(60);

impl LogLimiter {
    fn new(window: Duration) -> Self {
        LogLimiter {
            window,
            last: HashMap::new(),
            overflow: None,
            swept: None,
        }
    }

    /// Whether a line about `source` may be logged at `now`.
    fn allow(&mut self, source: IpAddr, now: Instant) -> bool {
        let window = self.window;
        let due = |t: Instant| now.saturating_duration_since(t) >= window;
        if let Some(t) = self.last.get_mut(&source) {
            if due(*t) {
                *t = now;
                return true;
            }
            return false;
        }
        if self.last.len() >= LOG_SOURCES
            && self
                .swept
                .is_none_or(|s| now.saturating_duration_since(s) >= Duration::from_secs(1))
        {
            self.swept = Some(now);
            self.last.retain(|_, t| !due(*t));
        }
        if self.last.len() < LOG_SOURCES {
            self.last.insert(source, now);
            return true;
        }
        if self.overflow.is_none_or(due) {
            self.overflow = Some(now);
            return true;
        }
        false
    }
}

/// The kdump port: receives, checks, attributes and hands on.
pub struct KdumpListener {
    socket: UdpSocket,
    lookup: Arc<dyn NodeLookup>,
    clock: Clock,
    heard: mpsc::Sender<KdumpHeard>,
    metrics: Arc<Metrics>,
    log: LogLimiter,
    /// When a receive error was last logged (they repeat per datagram).
    recv_error_logged: Option<Instant>,
}

impl KdumpListener {
    /// Binds `listen` (port 0 picks a free one, for tests).
    pub async fn bind(
        listen: SocketAddr,
        lookup: Arc<dyn NodeLookup>,
        clock: Clock,
        heard: mpsc::Sender<KdumpHeard>,
        metrics: Arc<Metrics>,
    ) -> Result<KdumpListener, KdumpError> {
        let socket = UdpSocket::bind(listen)
            .await
            .map_err(|source| KdumpError::Bind {
                addr: listen,
                source,
            })?;
        metrics.expect_kdump();
        Ok(KdumpListener {
            socket,
            lookup,
            clock,
            heard,
            metrics,
            log: LogLimiter::new(LOG_WINDOW),
            recv_error_logged: None,
        })
    }

    pub fn local_addr(&self) -> Result<SocketAddr, KdumpError> {
        self.socket.local_addr().map_err(KdumpError::LocalAddr)
    }

    /// Receives until `shutdown`; never returns before it (a receive error
    /// is logged and the loop goes on).
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        // One byte more than a message: Linux truncates a longer datagram to
        // the buffer and returns the buffer's length, so a full buffer is an
        // oversize datagram and nothing larger is ever copied in.
        let mut buf = [0u8; DATAGRAM_LEN + 1];
        loop {
            let received = tokio::select! {
                _ = &mut shutdown => return,
                r = self.socket.recv_from(&mut buf) => r,
            };
            match received {
                Ok((len, peer)) => {
                    let at = self.clock.now();
                    let datagram = buf.get(..len).unwrap_or(&buf);
                    self.take(datagram, peer.ip(), at);
                }
                Err(e) => {
                    let now = Instant::now();
                    if self
                        .recv_error_logged
                        .is_none_or(|t| now.saturating_duration_since(t) >= LOG_WINDOW)
                    {
                        self.recv_error_logged = Some(now);
                        warn!(error = %e, "receiving on the kdump port failed; retrying (logged once a minute)");
                    }
                    // Errors that repeat at once must not spin a core.
                    tokio::select! {
                        _ = &mut shutdown => return,
                        _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                    }
                }
            }
        }
    }

    /// One datagram, as received from `from` at `at`: counted by outcome,
    /// handed on when it is a node's fence_kdump message.
    fn take(&mut self, datagram: &[u8], from: IpAddr, at: Moment) -> KdumpOutcome {
        let from = from.to_canonical();
        let outcome = self.judge(datagram, from, at);
        self.metrics.record_kdump(outcome);
        outcome
    }

    fn judge(&mut self, datagram: &[u8], from: IpAddr, at: Moment) -> KdumpOutcome {
        const HINT: &str = "at most one line per source a minute; every datagram is counted in vigil_kdump_datagrams_total";
        if datagram.len() > DATAGRAM_LEN {
            if self.log.allow(from, Instant::now()) {
                warn!(source = %from, "refused an oversize datagram on the kdump port: fence_kdump messages are {DATAGRAM_LEN} bytes; {HINT}");
            }
            return KdumpOutcome::Oversize;
        }
        if let Err(e) = parse(datagram) {
            if self.log.allow(from, Instant::now()) {
                warn!(source = %from, error = %e, "refused a datagram on the kdump port; {HINT}");
            }
            return KdumpOutcome::Malformed;
        }
        let Some(node) = self.lookup.node_at(from) else {
            if self.log.allow(from, Instant::now()) {
                warn!(source = %from, "a fence_kdump message from an address that is no node's management address (or is claimed by two): ignored; if a node's crash kernel sends from it, add it to that [[node]] management_addresses; {HINT}");
            }
            return KdumpOutcome::UnknownSource;
        };
        match self.heard.try_send(KdumpHeard { node, from, at }) {
            Ok(()) => KdumpOutcome::Accepted,
            Err(e) => {
                if self.log.allow(from, Instant::now()) {
                    let why = match e {
                        mpsc::error::TrySendError::Full(_) => "the engine's kdump queue is full",
                        mpsc::error::TrySendError::Closed(_) => {
                            "nothing takes kdump messages (shutting down?)"
                        }
                    };
                    warn!(source = %from, "dropped a fence_kdump message: {why}; {HINT}");
                }
                KdumpOutcome::Dropped
            }
        }
    }
}

/// Logs an accepted message: the first per node a minute at info (what an
/// operator reads), the rest at debug.
pub fn log_heard(h: &KdumpHeard, limiter: &mut HeardLog) {
    if limiter.0.allow(h.from, Instant::now()) {
        info!(node = %h.node, source = %h.from, "fence_kdump message: the node says it runs its crash kernel (repeats logged at debug for a minute)");
    } else {
        tracing::debug!(node = %h.node, source = %h.from, "fence_kdump message");
    }
}

/// [`log_heard`]'s rate limit.
#[derive(Debug)]
pub struct HeardLog(LogLimiter);

impl Default for HeardLog {
    fn default() -> Self {
        HeardLog(LogLimiter::new(LOG_WINDOW))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What Debian's fence-agents 4.12.1 `fence_kdump_send` (x86_64) sent to
    /// a UDP socket on 127.0.0.1, captured byte for byte.
    const DEBIAN_X86_64: [u8; 8] = [0x40, 0x2a, 0x30, 0x1b, 0x01, 0x00, 0x00, 0x00];

    fn check(datagram: &[u8], expected: Result<KdumpMessage, KdumpParseError>) {
        assert_eq!(parse(datagram), expected, "datagram {datagram:02x?}");
    }

    #[test]
    fn the_real_senders_bytes_are_a_version_1_message() {
        check(
            &DEBIAN_X86_64,
            Ok(KdumpMessage {
                version: 1,
                byte_order: ByteOrder::Little,
            }),
        );
    }

    #[test]
    fn a_big_endian_crash_kernels_message_is_read_too() {
        check(
            &[0x1b, 0x30, 0x2a, 0x40, 0, 0, 0, 1],
            Ok(KdumpMessage {
                version: 1,
                byte_order: ByteOrder::Big,
            }),
        );
    }

    #[test]
    fn wrong_lengths_are_refused_whatever_they_start_with() {
        check(&[], Err(KdumpParseError::Length { len: 0 }));
        check(&DEBIAN_X86_64[..7], Err(KdumpParseError::Length { len: 7 }));
        // fence_kdump itself reads 8 bytes of anything longer; Vigil does not
        // guess at what the rest would have meant.
        let mut long = DEBIAN_X86_64.to_vec();
        long.push(0);
        check(&long, Err(KdumpParseError::Length { len: 9 }));
        check(&[0; 65_535], Err(KdumpParseError::Length { len: 65_535 }));
    }

    #[test]
    fn a_wrong_magic_or_version_is_refused_and_named() {
        check(
            &[0x41, 0x2a, 0x30, 0x1b, 1, 0, 0, 0],
            Err(KdumpParseError::Magic { found: 0x1b30_2a41 }),
        );
        check(&[0; 8], Err(KdumpParseError::Magic { found: 0 }));
        check(
            &[0x40, 0x2a, 0x30, 0x1b, 2, 0, 0, 0],
            Err(KdumpParseError::Version {
                version: 2,
                byte_order: ByteOrder::Little,
            }),
        );
        // Version 1 in the other byte order than the magic: a corrupted or
        // forged message, not fence_kdump_send's.
        check(
            &[0x40, 0x2a, 0x30, 0x1b, 0, 0, 0, 1],
            Err(KdumpParseError::Version {
                version: 0x0100_0000,
                byte_order: ByteOrder::Little,
            }),
        );
        let e = parse(&[0x40, 0x2a, 0x30, 0x1b, 2, 0, 0, 0])
            .expect_err("version 2")
            .to_string();
        assert!(
            e.contains("version 2") && e.contains("little-endian"),
            "{e}"
        );
    }
}

/// The listener on a real socket, fed by the real fence_kdump_send.
#[cfg(test)]
mod listener_tests {
    use super::*;
    use std::net::Ipv4Addr;

    const SENDER: &str = "/usr/libexec/fence-agents/fence_kdump_send";

    struct Rig {
        addr: SocketAddr,
        heard: mpsc::Receiver<KdumpHeard>,
        metrics: Arc<Metrics>,
        _stop: tokio::sync::oneshot::Sender<()>,
    }

    /// A listener on 127.0.0.1 where 127.0.0.1 is compute1's address.
    async fn rig(queue: usize) -> Rig {
        let book = Arc::new(AddressBook::new([(
            "compute1".to_string(),
            IpAddr::V4(Ipv4Addr::LOCALHOST),
        )]));
        let metrics = Arc::new(Metrics::new());
        let (tx, heard) = mpsc::channel(queue);
        let l = KdumpListener::bind(
            SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            book,
            Clock::start(),
            tx,
            metrics.clone(),
        )
        .await
        .expect("bind 127.0.0.1:0");
        let addr = l.local_addr().expect("local addr");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(l.run(async move {
            let _ = stopped.await;
        }));
        Rig {
            addr,
            heard,
            metrics,
            _stop: stop,
        }
    }

    async fn send_from(source: Ipv4Addr, to: SocketAddr, bytes: &[u8]) {
        let s = UdpSocket::bind((source, 0))
            .await
            .expect("bind a loopback sender");
        s.send_to(bytes, to).await.expect("send");
    }

    /// Waits until `outcome` has been counted `n` times, or fails saying so.
    async fn counted(m: &Metrics, outcome: KdumpOutcome, n: u64) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while m.kdump_datagrams(outcome) < n {
            assert!(
                Instant::now() < deadline,
                "{outcome:?} counted {} times within 10 s, expected {n}",
                m.kdump_datagrams(outcome)
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(m.kdump_datagrams(outcome), n, "{outcome:?}");
    }

    #[tokio::test]
    async fn the_real_fence_kdump_send_is_heard_as_its_node_and_the_rest_is_counted() {
        if !std::path::Path::new(SENDER).is_file() {
            let msg = format!("needs {SENDER} (apt-get install fence-agents)");
            assert!(!vigil_tests::tier::strict(), "{msg}");
            eprintln!("SKIPPED {msg}");
            return;
        }
        let mut r = rig(16).await;
        let started = std::time::Instant::now();
        let out = tokio::process::Command::new(SENDER)
            .args(["-p", &r.addr.port().to_string(), "-c", "2", "-i", "1"])
            .arg("127.0.0.1")
            .output()
            .await
            .expect("run fence_kdump_send");
        assert!(out.status.success(), "fence_kdump_send: {out:?}");
        for i in 1..=2 {
            let h = tokio::time::timeout(Duration::from_secs(10), r.heard.recv())
                .await
                .unwrap_or_else(|_| panic!("message {i} not heard within 10 s"))
                .expect("listener alive");
            assert_eq!(h.node, "compute1");
            assert_eq!(h.from, IpAddr::V4(Ipv4Addr::LOCALHOST));
        }
        println!(
            "fence_kdump_send -c 2 -i 1: both heard {:.2} s after it started",
            started.elapsed().as_secs_f64()
        );
        counted(&r.metrics, KdumpOutcome::Accepted, 2).await;

        // A well-formed message from an address that is no node's, garbage
        // and an oversize datagram from the node's own address.
        let message = [0x40, 0x2a, 0x30, 0x1b, 0x01, 0x00, 0x00, 0x00];
        send_from(Ipv4Addr::new(127, 0, 0, 2), r.addr, &message).await;
        send_from(Ipv4Addr::LOCALHOST, r.addr, b"kdump!!!").await;
        send_from(Ipv4Addr::LOCALHOST, r.addr, &[0u8; 1500]).await;
        counted(&r.metrics, KdumpOutcome::UnknownSource, 1).await;
        counted(&r.metrics, KdumpOutcome::Malformed, 1).await;
        counted(&r.metrics, KdumpOutcome::Oversize, 1).await;
        // The loop handles datagrams in order, so anything they produced is
        // queued by now.
        assert_eq!(
            r.heard.try_recv(),
            Err(mpsc::error::TryRecvError::Empty),
            "none of them is heard"
        );
        assert_eq!(r.metrics.kdump_datagrams(KdumpOutcome::Accepted), 2);
        assert_eq!(r.metrics.kdump_datagrams(KdumpOutcome::Dropped), 0);
        let text = r.metrics.render_text();
        assert!(
            text.contains("vigil_kdump_datagrams_total{outcome=\"unknown_source\"} 1"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn a_full_queue_drops_and_counts_without_stopping_the_socket_loop() {
        let mut r = rig(1).await;
        let message = [0x40, 0x2a, 0x30, 0x1b, 0x01, 0x00, 0x00, 0x00];
        for _ in 0..3 {
            send_from(Ipv4Addr::LOCALHOST, r.addr, &message).await;
        }
        counted(&r.metrics, KdumpOutcome::Dropped, 2).await;
        assert_eq!(r.metrics.kdump_datagrams(KdumpOutcome::Accepted), 1);
        r.heard.recv().await.expect("the first one");
        // Room again: the loop still runs.
        send_from(Ipv4Addr::LOCALHOST, r.addr, &message).await;
        counted(&r.metrics, KdumpOutcome::Accepted, 2).await;
    }

    #[test]
    fn the_book_keeps_configured_addresses_learns_others_and_refuses_shared_ones() {
        let a = |s: &str| s.parse::<IpAddr>().expect("address");
        let book = AddressBook::new([
            ("compute1".to_string(), a("198.51.100.11")),
            ("compute2".to_string(), a("198.51.100.12")),
        ]);
        assert_eq!(
            book.node_at(a("198.51.100.11")).as_deref(),
            Some("compute1")
        );
        // A dual-stack socket reports IPv4 senders as IPv4-mapped IPv6.
        assert_eq!(
            book.node_at(a("::ffff:198.51.100.12")).as_deref(),
            Some("compute2")
        );
        assert_eq!(book.node_at(a("198.51.100.13")), None);
        // Nova's host_ip for compute3, and compute2's address claimed by
        // compute3 as well: that one now belongs to neither.
        book.refresh([
            ("compute3".to_string(), a("198.51.100.13")),
            ("compute3".to_string(), a("198.51.100.12")),
        ]);
        assert_eq!(
            book.node_at(a("198.51.100.13")).as_deref(),
            Some("compute3")
        );
        assert_eq!(book.node_at(a("198.51.100.12")), None);
        // A refresh replaces what was learnt, never what was configured.
        book.refresh([]);
        assert_eq!(book.node_at(a("198.51.100.13")), None);
        assert_eq!(
            book.node_at(a("198.51.100.12")).as_deref(),
            Some("compute2")
        );
    }

    #[test]
    fn log_lines_are_one_per_source_a_minute_and_bounded_in_sources() {
        let mut l = LogLimiter::new(LOG_WINDOW);
        let t0 = Instant::now();
        let a = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 1));
        assert!(l.allow(a, t0));
        assert!(!l.allow(a, t0 + Duration::from_secs(59)));
        assert!(l.allow(a, t0 + Duration::from_secs(60)));
        // A flood of forged sources: the table stops growing, and all the
        // others share one line a minute.
        let mut lines = 0;
        for i in 0..100_000u32 {
            let src = IpAddr::V6(std::net::Ipv6Addr::from(u128::from(i) + 1));
            lines += usize::from(l.allow(src, t0 + Duration::from_secs(61)));
        }
        assert_eq!(l.last.len(), LOG_SOURCES);
        // `a` held one place: the rest of the table, then one shared line.
        assert_eq!(lines, (LOG_SOURCES - 1) + 1);
        // A minute later the stale entries are swept out for new sources.
        let later = t0 + Duration::from_secs(200);
        assert!(l.allow(IpAddr::V4(Ipv4Addr::new(203, 0, 113, 2)), later));
        assert!(l.last.len() <= LOG_SOURCES);
    }
}
