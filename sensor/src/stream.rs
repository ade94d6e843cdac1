//! The heartbeat stream to one decider endpoint: a bounded outbox, acks,
//! reconnects with backoff and jitter, the per-node token.
//!
//! The outbox holds every heartbeat the decider has not acknowledged, up to
//! `buffer` of them. While the decider is unreachable sampling goes on and
//! the oldest heartbeats are dropped when the outbox is full (counted in
//! `dropped_heartbeats`, so the decider sees the loss, and the sequence
//! gap shows which). After a reconnect the unacknowledged ones are sent
//! again, oldest first, then live ones. One task per endpoint, so a slow or
//! dead decider never holds up another.

use std::{
    collections::VecDeque,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{metadata::MetadataValue, Request};
use vigil_proto::v1::{self, sensor_stream_client::SensorStreamClient};

use crate::{backoff::Backoff, sampler::Tunables};

/// How to reach one decider.
#[derive(Debug, Clone)]
pub struct LinkConfig {
    pub url: String,
    /// Sent as `authorization: Bearer <token>`; never logged.
    pub token: Option<String>,
    /// CA and client certificate for https:// deciders.
    pub tls: vigil_proto::connect::ClientTls,
    /// Send the token over http:// to a non-loopback address.
    pub allow_plaintext_token: bool,
    /// Unacknowledged heartbeats kept while the decider is away.
    pub buffer: usize,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    pub connect_timeout: Duration,
}

/// What the link reports about itself (read by the sampler thread).
#[derive(Debug, Default)]
pub struct LinkStats {
    /// Heartbeats dropped before this decider acknowledged them.
    pub dropped: AtomicU64,
    /// Highest sequence the decider acknowledged.
    pub acked: AtomicU64,
    pub connected: AtomicBool,
}

/// Why a connection attempt or session ended.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// The URL is not a valid endpoint, or its TLS setup failed.
    #[error("decider {url}")]
    Url {
        url: String,
        #[source]
        source: vigil_proto::connect::ConnectError,
    },
    /// The token contains characters not allowed in a header.
    #[error(
        "the token from --token-file is not a valid header value (stray newline or non-ASCII?)"
    )]
    Token,
    /// TCP/HTTP2 connection failed.
    #[error("cannot connect to {url}")]
    Connect {
        url: String,
        #[source]
        source: tonic::transport::Error,
    },
    /// The decider refused the stream (e.g. `Unauthenticated`).
    #[error("decider {url} refused the stream: {status}")]
    Refused { url: String, status: tonic::Status },
}

/// The outbox: unacknowledged heartbeats, oldest first.
#[derive(Debug)]
pub struct Outbox {
    queue: VecDeque<v1::Heartbeat>,
    cap: usize,
    /// Highest sequence written on the current stream (0 after reconnect).
    sent_upto: u64,
}

impl Outbox {
    pub fn new(cap: usize) -> Outbox {
        Outbox {
            queue: VecDeque::with_capacity(cap.min(4096)),
            cap: cap.max(1),
            sent_upto: 0,
        }
    }

    /// Adds a heartbeat, dropping the oldest when full. Returns true when a
    /// heartbeat that was never sent on this stream was dropped.
    pub fn push(&mut self, hb: v1::Heartbeat) -> bool {
        let mut lost = false;
        if self.queue.len() >= self.cap {
            if let Some(old) = self.queue.pop_front() {
                lost = old.seq > self.sent_upto;
            }
        }
        self.queue.push_back(hb);
        lost
    }

    /// Forgets everything the decider has processed.
    pub fn ack(&mut self, seq: u64) {
        while self.queue.front().is_some_and(|h| h.seq <= seq) {
            self.queue.pop_front();
        }
    }

    /// The next heartbeat to write on the current stream.
    pub fn next_unsent(&self) -> Option<&v1::Heartbeat> {
        self.queue.iter().find(|h| h.seq > self.sent_upto)
    }

    pub fn mark_sent(&mut self, seq: u64) {
        self.sent_upto = self.sent_upto.max(seq);
    }

    /// A new stream: everything unacknowledged goes out again.
    pub fn rewind(&mut self) {
        self.sent_upto = 0;
    }

    pub fn len(&self) -> usize {
        self.queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }
}

/// Runs the link until `shutdown` turns true or the sampler goes away.
pub async fn run_link(
    cfg: LinkConfig,
    mut beats: mpsc::Receiver<v1::Heartbeat>,
    tunables: Arc<Tunables>,
    stats: Arc<LinkStats>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut outbox = Outbox::new(cfg.buffer);
    let mut backoff = Backoff::new(cfg.backoff_min, cfg.backoff_max, Backoff::seed());
    // Failed attempts in a row: the first is a warning, repeats only every
    // 20th, so an absent decider does not flood the log.
    let mut failures: u32 = 0;
    loop {
        if *shutdown.borrow() {
            return;
        }
        match session(
            &cfg,
            &mut beats,
            &mut outbox,
            &tunables,
            &stats,
            &mut shutdown,
            &mut backoff,
        )
        .await
        {
            Ok(SessionEnd::Shutdown) => return,
            Ok(SessionEnd::Closed(why)) => {
                failures = 0;
                tracing::warn!(%why, "stream to decider ended; reconnecting");
            }
            Err(e) => {
                let source = std::error::Error::source(&e)
                    .map(|s| s.to_string())
                    .unwrap_or_default();
                if failures.is_multiple_of(20) {
                    tracing::warn!(error = %e, %source, failures, "decider unreachable; sampling goes on, heartbeats are buffered");
                } else {
                    tracing::debug!(error = %e, %source, "decider still unreachable");
                }
                failures = failures.saturating_add(1);
            }
        }
        stats.connected.store(false, Ordering::Relaxed);
        // Wait out the backoff while still taking heartbeats into the outbox.
        let delay = tokio::time::sleep(backoff.next_delay());
        tokio::pin!(delay);
        loop {
            tokio::select! {
                _ = &mut delay => break,
                hb = beats.recv() => match hb {
                    Some(hb) => {
                        if outbox.push(hb) {
                            stats.dropped.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    None => return,
                },
                _ = shutdown.changed() => return,
            }
        }
    }
}

enum SessionEnd {
    Shutdown,
    Closed(String),
}

async fn session(
    cfg: &LinkConfig,
    beats: &mut mpsc::Receiver<v1::Heartbeat>,
    outbox: &mut Outbox,
    tunables: &Tunables,
    stats: &LinkStats,
    shutdown: &mut watch::Receiver<bool>,
    backoff: &mut Backoff,
) -> Result<SessionEnd, LinkError> {
    let endpoint = vigil_proto::connect::endpoint(
        &cfg.url,
        &cfg.tls,
        cfg.token.is_some(),
        cfg.allow_plaintext_token,
    )
    .map_err(|source| LinkError::Url {
        url: cfg.url.clone(),
        source,
    })?
    .connect_timeout(cfg.connect_timeout)
    .tcp_nodelay(true)
    // Detects a decider that vanished without closing the connection
    // (power loss, partition) within about ten seconds.
    .http2_keep_alive_interval(Duration::from_secs(5))
    .keep_alive_timeout(Duration::from_secs(5))
    .keep_alive_while_idle(true);
    let channel = tokio::select! {
        c = endpoint.connect() => c.map_err(|source| LinkError::Connect { url: cfg.url.clone(), source })?,
        _ = shutdown.changed() => return Ok(SessionEnd::Shutdown),
    };
    let (tx, rx) = mpsc::channel::<v1::SensorMessage>(16);
    let mut request = Request::new(ReceiverStream::new(rx));
    if let Some(token) = &cfg.token {
        let value =
            MetadataValue::try_from(format!("Bearer {token}")).map_err(|_| LinkError::Token)?;
        request.metadata_mut().insert("authorization", value);
    }
    let mut client = SensorStreamClient::new(channel);
    let response = tokio::select! {
        r = client.stream(request) => r.map_err(|status| LinkError::Refused { url: cfg.url.clone(), status })?,
        _ = shutdown.changed() => return Ok(SessionEnd::Shutdown),
    };
    let mut inbound = response.into_inner();
    tracing::info!(unacked = outbox.len(), "connected to decider");
    stats.connected.store(true, Ordering::Relaxed);
    backoff.reset();
    outbox.rewind();
    loop {
        let next = outbox.next_unsent().cloned();
        tokio::select! {
            biased;
            _ = shutdown.changed() => return Ok(SessionEnd::Shutdown),
            msg = inbound.message() => match msg {
                Ok(Some(m)) => match m.kind {
                    Some(v1::decider_message::Kind::Ack(a)) => {
                        outbox.ack(a.seq);
                        stats.acked.store(a.seq, Ordering::Relaxed);
                    }
                    Some(v1::decider_message::Kind::Settings(s)) => {
                        if s.interval_ms != 0 {
                            tunables.interval_ms.store(s.interval_ms.max(10), Ordering::Relaxed);
                        }
                        if s.blocked_threshold_ms != 0 {
                            tunables.blocked_threshold_ms.store(s.blocked_threshold_ms, Ordering::Relaxed);
                        }
                        tracing::info!(interval_ms = s.interval_ms, blocked_threshold_ms = s.blocked_threshold_ms, "settings from decider applied");
                    }
                    Some(v1::decider_message::Kind::Goodbye(g)) => {
                        return Ok(SessionEnd::Closed(format!("decider said goodbye: {}", g.reason)));
                    }
                    None => {}
                },
                Ok(None) => return Ok(SessionEnd::Closed("decider closed the stream".into())),
                Err(status) => return Ok(SessionEnd::Closed(format!("stream error: {status}"))),
            },
            hb = beats.recv() => match hb {
                Some(hb) => {
                    if outbox.push(hb) {
                        stats.dropped.fetch_add(1, Ordering::Relaxed);
                    }
                }
                None => return Ok(SessionEnd::Shutdown),
            },
            permit = tx.reserve(), if next.is_some() => {
                let Ok(permit) = permit else {
                    return Ok(SessionEnd::Closed("request stream closed".into()));
                };
                if let Some(mut hb) = next {
                    let seq = hb.seq;
                    if let Some(h) = hb.health.as_mut() {
                        h.dropped_heartbeats = stats.dropped.load(Ordering::Relaxed);
                    }
                    permit.send(v1::SensorMessage { kind: Some(v1::sensor_message::Kind::Heartbeat(hb)) });
                    outbox.mark_sent(seq);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hb(seq: u64) -> v1::Heartbeat {
        v1::Heartbeat {
            seq,
            ..Default::default()
        }
    }

    #[test]
    fn outbox_drops_oldest_and_counts_only_unsent() {
        let mut o = Outbox::new(3);
        for s in 1..=3 {
            assert!(!o.push(hb(s)));
        }
        o.mark_sent(1);
        // Dropping seq 1 (sent, unacked) is not a loss the decider can't see…
        assert!(!o.push(hb(4)));
        // …dropping seq 2 (never sent) is.
        assert!(o.push(hb(5)));
        assert_eq!(o.next_unsent().map(|h| h.seq), Some(3));
    }

    #[test]
    fn acks_release_and_rewind_resends() {
        let mut o = Outbox::new(10);
        for s in 1..=5 {
            o.push(hb(s));
        }
        o.mark_sent(5);
        assert!(o.next_unsent().is_none());
        o.ack(3);
        assert_eq!(o.len(), 2);
        o.rewind();
        assert_eq!(o.next_unsent().map(|h| h.seq), Some(4));
    }
}
