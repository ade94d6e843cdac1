//! `[cluster]`: several deciders, one leader, the journal in etcd.

use serde::Deserialize;
use std::time::Duration;
use thiserror::Error;
use vigil_verdict::time::serde_duration;

/// `[cluster]` in the decider's config. Absent: one decider, SQLite journal.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// This decider's name among its peers (unique; e.g. the controller's
    /// host name). Shown as the leader's name and on each decider's view.
    pub name: String,
    /// etcd client URLs (every member, so losing one is not losing etcd).
    pub endpoints: Vec<String>,
    /// Key prefix of everything Vigil keeps in etcd; one prefix per cloud.
    #[serde(default = "default_prefix")]
    pub prefix: String,
    /// Leader lease TTL: a dead leader is replaced after at most this long.
    #[serde(default = "default_lease_ttl", with = "serde_duration")]
    pub lease_ttl: Duration,
    /// The leader stops acting this long before its lease could have
    /// expired in etcd (see `leader.rs` for why a margin is needed).
    #[serde(default = "default_margin", with = "serde_duration")]
    pub step_down_margin: Duration,
    /// Every etcd request is abandoned after this: etcd never decides how
    /// long Vigil waits.
    #[serde(default = "default_request_timeout", with = "serde_duration")]
    pub request_timeout: Duration,
    /// A peer's view older than this is not a vantage point any more.
    #[serde(default = "default_view_max_age", with = "serde_duration")]
    pub view_max_age: Duration,
}

fn default_prefix() -> String {
    "/vigil".into()
}
fn default_lease_ttl() -> Duration {
    Duration::from_secs(5)
}
fn default_margin() -> Duration {
    Duration::from_secs(1)
}
fn default_request_timeout() -> Duration {
    Duration::from_secs(2)
}
fn default_view_max_age() -> Duration {
    Duration::from_secs(5)
}

#[derive(Debug, Error, PartialEq)]
#[error("cluster.{key}: {problem}")]
pub struct ClusterConfigError {
    pub key: &'static str,
    pub problem: String,
}

impl ClusterConfig {
    pub fn validate(&self) -> Result<(), ClusterConfigError> {
        let bad = |key, problem: String| Err(ClusterConfigError { key, problem });
        let name_ok = !self.name.is_empty()
            && self.name.len() <= 64
            && self
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
        if !name_ok {
            return bad(
                "name",
                format!(
                    "{:?} must be 1..64 characters of letters, digits, '-', '_' or '.' (the controller's host name)",
                    self.name
                ),
            );
        }
        if self.endpoints.is_empty() || self.endpoints.len() > 16 {
            return bad(
                "endpoints",
                "list 1..16 etcd client URLs, e.g. [\"http://10.0.0.11:2379\", \"http://10.0.0.12:2379\", \"http://10.0.0.13:2379\"]".into(),
            );
        }
        for e in &self.endpoints {
            if !(e.starts_with("http://") || e.starts_with("https://")) {
                return bad(
                    "endpoints",
                    format!("{e:?} is not an http:// or https:// URL"),
                );
            }
        }
        if !self.prefix.starts_with('/') || self.prefix.len() > 128 || self.prefix.ends_with('/') {
            return bad(
                "prefix",
                format!(
                    "{:?} must start with '/', not end with one, and be at most 128 characters",
                    self.prefix
                ),
            );
        }
        let ttl = self.lease_ttl;
        if ttl < Duration::from_secs(2) || ttl > Duration::from_secs(60) {
            return bad(
                "lease_ttl",
                "must be between 2s and 60s (etcd leases are whole seconds)".into(),
            );
        }
        if ttl.subsec_nanos() != 0 {
            return bad(
                "lease_ttl",
                "must be whole seconds: etcd leases count seconds".into(),
            );
        }
        if self.step_down_margin < Duration::from_millis(200) || self.step_down_margin * 2 > ttl {
            return bad(
                "step_down_margin",
                "must be at least 200ms and at most half of lease_ttl".into(),
            );
        }
        if self.request_timeout.is_zero() || self.request_timeout > ttl {
            return bad(
                "request_timeout",
                "must be greater than zero and at most lease_ttl".into(),
            );
        }
        if self.view_max_age < Duration::from_secs(1) || self.view_max_age > Duration::from_secs(60)
        {
            return bad("view_max_age", "must be between 1s and 60s".into());
        }
        Ok(())
    }

    /// The leader's key: its create revision is the term.
    pub fn leader_key(&self) -> String {
        format!("{}/leader", self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> ClusterConfig {
        toml_like("name = \"ctl1\"\nendpoints = [\"http://10.0.0.1:2379\"]\n")
    }

    fn toml_like(s: &str) -> ClusterConfig {
        // The decider parses TOML; serde_json stands in for the types here.
        let mut v = serde_json::Map::new();
        for line in s.lines() {
            let (k, val) = line.split_once(" = ").expect("k = v");
            let val: serde_json::Value = serde_json::from_str(val).expect("json value");
            v.insert(k.into(), val);
        }
        serde_json::from_value(serde_json::Value::Object(v)).expect("config")
    }

    #[test]
    fn defaults_are_valid_and_bounds_are_named() {
        let c = cfg();
        assert_eq!(c.validate(), Ok(()));
        assert_eq!(c.leader_key(), "/vigil/leader");
        for (mutate, key) in [
            (
                Box::new(|c: &mut ClusterConfig| c.name = "a b".into()) as Box<dyn Fn(&mut _)>,
                "name",
            ),
            (
                Box::new(|c: &mut ClusterConfig| c.endpoints.clear()),
                "endpoints",
            ),
            (
                Box::new(|c: &mut ClusterConfig| c.endpoints = vec!["10.0.0.1:2379".into()]),
                "endpoints",
            ),
            (
                Box::new(|c: &mut ClusterConfig| c.prefix = "vigil".into()),
                "prefix",
            ),
            (
                Box::new(|c: &mut ClusterConfig| c.lease_ttl = Duration::from_secs(1)),
                "lease_ttl",
            ),
            (
                Box::new(|c: &mut ClusterConfig| c.lease_ttl = Duration::from_millis(5500)),
                "lease_ttl",
            ),
            (
                Box::new(|c: &mut ClusterConfig| c.step_down_margin = Duration::from_secs(3)),
                "step_down_margin",
            ),
            (
                Box::new(|c: &mut ClusterConfig| c.request_timeout = Duration::ZERO),
                "request_timeout",
            ),
        ] {
            let mut c = cfg();
            mutate(&mut c);
            let e = c.validate().expect_err("refused");
            assert_eq!(e.key, key, "{e}");
        }
    }
}
