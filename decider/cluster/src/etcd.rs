//! The one way Vigil talks to etcd: every request bounded by
//! `cluster.request_timeout`, every failure named with what was asked.

use crate::config::ClusterConfig;
use etcd_client::{Client, ConnectOptions};
use std::future::Future;
use std::time::Duration;
use thiserror::Error;

/// An etcd request that failed or took too long.
#[derive(Debug, Error)]
pub enum EtcdError {
    #[error("etcd: {what}: no answer within {timeout:?} (is a quorum of cluster.endpoints up and reachable?)")]
    Timeout { what: String, timeout: Duration },
    #[error("etcd: {what}: {source}")]
    Failed {
        what: String,
        #[source]
        source: etcd_client::Error,
    },
}

/// A client plus the bound on every request.
#[derive(Clone)]
pub struct Etcd {
    client: Client,
    pub timeout: Duration,
}

impl Etcd {
    /// Connects lazily: a down etcd is an error of the first request, not of
    /// the decider's start (it keeps judging without etcd).
    pub async fn connect(cfg: &ClusterConfig) -> Result<Etcd, EtcdError> {
        // A member that is down (powered off: no ARP answer) would hold a
        // request for seconds while the client tries to connect to it; a
        // live member on a LAN connects in milliseconds. Failing the
        // connect fast lets `call` try another member within its timeout.
        let connect = (cfg.request_timeout / 4).min(Duration::from_millis(500));
        let opts = ConnectOptions::new()
            .with_connect_timeout(connect)
            .with_timeout(cfg.request_timeout)
            .with_keep_alive(Duration::from_secs(1), cfg.request_timeout)
            // A member cut off from the others answers nothing: a partitioned
            // member must not serve a stale read as the truth.
            .with_require_leader(true);
        let what = format!("connecting to {}", cfg.endpoints.join(", "));
        let client = tokio::time::timeout(
            cfg.request_timeout,
            Client::connect(cfg.endpoints.clone(), Some(opts)),
        )
        .await
        .map_err(|_| EtcdError::Timeout {
            what: what.clone(),
            timeout: cfg.request_timeout,
        })?
        .map_err(|source| EtcdError::Failed { what, source })?;
        Ok(Etcd {
            client,
            timeout: cfg.request_timeout,
        })
    }

    /// Runs one request on a clone of the client, bounded by the timeout.
    /// A request that never reached a member (connection refused, a member
    /// down: the client spreads requests over every endpoint) or that a
    /// member refused as unavailable (no leader yet) is tried again until the
    /// timeout: losing one member of three must not look like losing etcd.
    /// Every Vigil write is conditioned on revisions, so a retried write that
    /// did land the first time fails its compare instead of landing twice.
    pub async fn call<T, F, Fut>(&self, what: impl Into<String>, mut f: F) -> Result<T, EtcdError>
    where
        F: FnMut(Client) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let what = what.into();
        let deadline = tokio::time::Instant::now() + self.timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match tokio::time::timeout(left, f(self.client.clone())).await {
                Ok(Ok(v)) => return Ok(v),
                Ok(Err(source)) if transient(&source) && left > RETRY_PAUSE => {
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
                Ok(Err(source)) => return Err(EtcdError::Failed { what, source }),
                Err(_) => {
                    return Err(EtcdError::Timeout {
                        what,
                        timeout: self.timeout,
                    })
                }
            }
        }
    }

    pub fn client(&self) -> Client {
        self.client.clone()
    }
}

/// Pause between two tries of a request that did not reach a member.
const RETRY_PAUSE: Duration = Duration::from_millis(50);

/// Errors after which the same request may simply be sent again.
fn transient(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => true,
        etcd_client::Error::GRpcStatus(s) => {
            matches!(s.code(), tonic::Code::Unavailable | tonic::Code::Unknown)
                && !s.message().contains("lease not found")
        }
        _ => false,
    }
}
