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
        let opts = ConnectOptions::new()
            .with_connect_timeout(cfg.request_timeout)
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

    /// Runs one request on a clone of the client, bounded.
    pub async fn call<T, F, Fut>(&self, what: impl Into<String>, f: F) -> Result<T, EtcdError>
    where
        F: FnOnce(Client) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let what = what.into();
        match tokio::time::timeout(self.timeout, f(self.client.clone())).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(source)) => Err(EtcdError::Failed { what, source }),
            Err(_) => Err(EtcdError::Timeout {
                what,
                timeout: self.timeout,
            }),
        }
    }

    pub fn client(&self) -> Client {
        self.client.clone()
    }
}
