//! Failed authentication, throttled per peer address: a client that keeps
//! presenting wrong tokens is refused without a token check once it spent its
//! budget, and the log gets one line when a peer starts failing and one
//! summary per window instead of a WARN per attempt (a wrong-token loop made
//! ~930 lines a second).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Failures a peer may have per window before it is refused outright.
/// A sensor with a wrong token retries with backoff, far below this.
const BUDGET: u32 = 10;
/// How long a peer's failures are counted together.
pub const WINDOW: Duration = Duration::from_secs(10);
/// Peers tracked at once; beyond it new peers share one entry (`None`),
/// so a flood from many addresses cannot grow memory without bound.
const MAX_PEERS: usize = 10_000;

#[derive(Debug, Clone, Copy)]
struct Peer {
    window_start: Instant,
    failures: u32,
    refused: u64,
}

/// What to do with one failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The first failure of this peer in its window: log it.
    Log,
    /// Counted; the window's summary will say it.
    Quiet,
}

/// A peer's window that ended with failures in it, for the summary line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    pub peer: Option<IpAddr>,
    pub failures: u32,
    pub refused: u64,
}

#[derive(Debug, Default)]
pub struct AuthThrottle {
    peers: Mutex<HashMap<Option<IpAddr>, Peer>>,
}

impl AuthThrottle {
    pub fn new() -> Self {
        AuthThrottle::default()
    }

    fn key(peers: &HashMap<Option<IpAddr>, Peer>, peer: Option<IpAddr>) -> Option<IpAddr> {
        if peers.contains_key(&peer) || peers.len() < MAX_PEERS {
            peer
        } else {
            None
        }
    }

    /// Whether `peer` may try to authenticate now; `Err` gives how long
    /// until it may again. A refusal is counted for the summary.
    pub fn admit(&self, peer: Option<IpAddr>, now: Instant) -> Result<(), Duration> {
        let mut peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        let key = Self::key(&peers, peer);
        match peers.get_mut(&key) {
            Some(p) if now.duration_since(p.window_start) < WINDOW && p.failures >= BUDGET => {
                p.refused = p.refused.saturating_add(1);
                Err(WINDOW.saturating_sub(now.duration_since(p.window_start)))
            }
            _ => Ok(()),
        }
    }

    /// Records a failed attempt of `peer`.
    pub fn failed(&self, peer: Option<IpAddr>, now: Instant) -> Failure {
        let mut peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        let key = Self::key(&peers, peer);
        let p = peers.entry(key).or_insert(Peer {
            window_start: now,
            failures: 0,
            refused: 0,
        });
        if now.duration_since(p.window_start) >= WINDOW {
            *p = Peer {
                window_start: now,
                failures: 0,
                refused: 0,
            };
        }
        p.failures = p.failures.saturating_add(1);
        if p.failures == 1 {
            Failure::Log
        } else {
            Failure::Quiet
        }
    }

    /// Ends every window older than [`WINDOW`]: returns the ones with more
    /// than the one failure already logged, and forgets them all.
    pub fn sweep(&self, now: Instant) -> Vec<Summary> {
        let mut peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = Vec::new();
        peers.retain(|peer, p| {
            if now.duration_since(p.window_start) < WINDOW {
                return true;
            }
            if p.failures > 1 || p.refused > 0 {
                out.push(Summary {
                    peer: *peer,
                    failures: p.failures,
                    refused: p.refused,
                });
            }
            false
        });
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wrong_token_loop_is_refused_after_its_budget_and_summarised_once() {
        let t = AuthThrottle::new();
        let start = Instant::now();
        let attacker = Some(IpAddr::from([198, 51, 100, 66]));
        let sensor = Some(IpAddr::from([198, 51, 100, 11]));
        let mut logged = 0;
        let mut refused = 0;
        // 930 attempts in one second, as in the issue.
        for i in 0..930u64 {
            let now = start + Duration::from_micros(i * 1075);
            match t.admit(attacker, now) {
                Err(_) => refused += 1,
                Ok(()) => {
                    if t.failed(attacker, now) == Failure::Log {
                        logged += 1;
                    }
                }
            }
        }
        assert_eq!(logged, 1, "one line when it starts");
        assert_eq!(refused, 930 - u64::from(BUDGET));
        // Another address is not affected.
        assert!(t.admit(sensor, start + Duration::from_secs(1)).is_ok());
        let later = start + WINDOW + Duration::from_millis(1);
        assert_eq!(
            t.sweep(later),
            vec![Summary {
                peer: attacker,
                failures: BUDGET,
                refused: 920
            }]
        );
        assert!(
            t.admit(attacker, later).is_ok(),
            "a new window, a new budget"
        );
        assert!(t.sweep(later).is_empty(), "each window summarised once");
    }

    #[test]
    fn many_addresses_cannot_grow_the_table_without_bound() {
        let t = AuthThrottle::new();
        let now = Instant::now();
        for i in 0..(MAX_PEERS as u32 + 500) {
            t.failed(Some(IpAddr::from(i.to_be_bytes())), now);
        }
        let len = t.peers.lock().map(|p| p.len()).unwrap_or(0);
        assert!(len <= MAX_PEERS + 1, "{len}");
    }
}
