//! Three vantage points, one judgment.
//!
//! Every decider publishes, once a second, what it sees of each node from
//! its own controller: whether its own sensor stream is fresh and whether
//! its own pings are answered. The leader reads the others' views before it
//! opens an incident and again at the fence: a node that any other live
//! decider still sees alive is not fenced. A partition between the leader's
//! controller and a rack then cannot fence that rack.
//!
//! A view older than `cluster.view_max_age` (by the reader's wall clock) is
//! a decider that died or lost etcd: it is no vantage point. Clock skew
//! between controllers only shifts that age; a view dated in the future
//! counts as fresh, which vetoes more, never less.

use crate::config::ClusterConfig;
use crate::etcd::{Etcd, EtcdError};
use crate::leader::unix_ms_now;
use etcd_client::GetOptions;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// One node as one decider sees it.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct NodeView {
    /// That decider's verdict (healthy, suspect, dead, …).
    pub verdict: String,
    /// Its sensor stream to that decider is fresh.
    pub sensor_fresh: bool,
    /// That decider's pings of the node (or its instances) are answered.
    pub ping_answers: bool,
}

impl NodeView {
    pub fn alive(&self) -> bool {
        self.sensor_fresh || self.ping_answers
    }
}

/// Everything one decider sees.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct View {
    pub decider: String,
    pub at_unix_ms: i64,
    pub nodes: BTreeMap<String, NodeView>,
}

/// Largest view accepted from etcd (5,000 nodes × ~80 bytes, with room).
const MAX_VIEW_BYTES: usize = 1 << 20;

pub struct Views {
    etcd: Etcd,
    prefix: String,
    me: String,
    max_age_ms: i64,
}

impl Views {
    pub fn new(etcd: Etcd, cfg: &ClusterConfig) -> Views {
        Views {
            etcd,
            prefix: format!("{}/view/", cfg.prefix),
            me: cfg.name.clone(),
            max_age_ms: i64::try_from(cfg.view_max_age.as_millis()).unwrap_or(i64::MAX),
        }
    }

    pub async fn publish(&self, mut view: View) -> Result<(), EtcdError> {
        view.decider = self.me.clone();
        view.at_unix_ms = unix_ms_now();
        let key = format!("{}{}", self.prefix, self.me);
        let value = serde_json::to_vec(&view).unwrap_or_default();
        self.etcd
            .call("publishing this decider's view", |mut c| {
                let (key, value) = (key.clone(), value.clone());
                async move { c.put(key, value, None).await }
            })
            .await
            .map(drop)
    }

    /// Every decider's fresh view, this one's included (the CLI shows all).
    pub async fn all_fresh(&self) -> Result<Vec<View>, EtcdError> {
        let prefix = self.prefix.clone();
        let mut r = self
            .etcd
            .call("reading the deciders' views", |mut c| {
                let prefix = prefix.clone();
                async move { c.get(prefix, Some(GetOptions::new().with_prefix())).await }
            })
            .await?;
        let now = unix_ms_now();
        Ok(r.take_kvs()
            .into_iter()
            .filter(|kv| kv.value().len() <= MAX_VIEW_BYTES)
            .filter_map(|kv| serde_json::from_slice::<View>(kv.value()).ok())
            .filter(|v| now.saturating_sub(v.at_unix_ms) <= self.max_age_ms)
            .collect())
    }

    /// Why another live decider says `node` is alive, if one does.
    pub async fn alive_elsewhere(&self, node: &str) -> Result<Option<String>, EtcdError> {
        Ok(alive_elsewhere(&self.all_fresh().await?, &self.me, node))
    }
}

/// The first other decider (by name) whose view has `node` alive, and why.
pub fn alive_elsewhere(views: &[View], me: &str, node: &str) -> Option<String> {
    views.iter().filter(|v| v.decider != me).find_map(|v| {
        let n = v.nodes.get(node).filter(|n| n.alive())?;
        let what = match (n.sensor_fresh, n.ping_answers) {
            (true, true) => "its sensor stream is fresh and it answers ping",
            (true, false) => "its sensor stream is fresh",
            _ => "it answers ping",
        };
        Some(format!(
            "decider {} still sees {node} alive ({what}; its verdict {})",
            v.decider, n.verdict
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(d: &str, node: &str, sensor: bool, ping: bool) -> View {
        View {
            decider: d.into(),
            at_unix_ms: 0,
            nodes: [(
                node.to_string(),
                NodeView {
                    verdict: "x".into(),
                    sensor_fresh: sensor,
                    ping_answers: ping,
                },
            )]
            .into(),
        }
    }

    #[test]
    fn another_deciders_fresh_sighting_vetoes_and_ones_own_does_not() {
        let views = [
            view("ctl1", "c1", true, true),
            view("ctl2", "c1", false, false),
        ];
        assert_eq!(alive_elsewhere(&views, "ctl1", "c1"), None, "own view");
        let views = [
            view("ctl1", "c1", false, false),
            view("ctl3", "c1", false, true),
        ];
        let why = alive_elsewhere(&views, "ctl1", "c1").expect("vetoed");
        assert!(
            why.contains("ctl3") && why.contains("answers ping"),
            "{why}"
        );
        assert_eq!(alive_elsewhere(&views, "ctl1", "c2"), None, "unknown node");
    }
}
