//! The decider's check of itself before the first action of an incident: a
//! decider that cannot see Nova, or is cut off from the network (no reference
//! address answers), must not trust its own `dead` verdicts. It also checks,
//! once more, that the node is still judged dead right now: evidence that
//! arrived between the verdict and the first action still vetoes it.

use crate::recovery::reporter::EngineLink;
use crate::witness::Prober;
use futures::future::BoxFuture;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;
use vigil_recovery::workflow::{NovaActions, SelfCheck};
use vigil_verdict::Verdict;

pub struct DeciderSelfCheck {
    pub node: String,
    pub engine: EngineLink,
    pub nova: Arc<dyn NovaActions>,
    pub nova_timeout: Duration,
    pub prober: Option<Arc<dyn Prober>>,
    pub reference_addresses: Vec<IpAddr>,
    pub probe_timeout: Duration,
}

impl DeciderSelfCheck {
    async fn run(&self) -> Result<(), String> {
        match self.engine.verdict(&self.node) {
            // An operator's confirmation resumes a needs-attention incident.
            Some((_, true)) | Some((Verdict::NeedsAttention, _)) => {}
            Some((v, _)) => {
                return Err(format!(
                    "{} is no longer judged dead (verdict {v})",
                    self.node
                ))
            }
            None => return Err(format!("{} is not a node this decider watches", self.node)),
        }
        match tokio::time::timeout(self.nova_timeout, self.nova.compute_services()).await {
            Ok(Ok(list)) if !list.is_empty() => {}
            Ok(Ok(_)) => return Err("Nova lists no nova-compute service at all".into()),
            Ok(Err(e)) => {
                return Err(format!(
                    "Nova does not answer: {}",
                    vigil_recovery::fence::error_chain(&e)
                ))
            }
            Err(_) => {
                return Err(format!(
                    "Nova does not answer within {}",
                    humantime::format_duration(self.nova_timeout)
                ))
            }
        }
        if self.reference_addresses.is_empty() {
            return Ok(());
        }
        let Some(prober) = &self.prober else {
            return Err(
                "reference addresses are configured but pings are off; cannot check the decider's own network"
                    .into(),
            );
        };
        let probes = self
            .reference_addresses
            .iter()
            .map(|a| prober.probe(*a, self.probe_timeout));
        let results = futures::future::join_all(probes).await;
        if results.iter().any(|r| matches!(r, Ok(Some(_)))) {
            return Ok(());
        }
        let seen: Vec<String> = self
            .reference_addresses
            .iter()
            .zip(&results)
            .map(|(a, r)| match r {
                Ok(Some(_)) => format!("{a} answered"),
                Ok(None) => format!("{a} silent"),
                Err(e) => format!("{a}: {e}"),
            })
            .collect();
        Err(format!(
            "no reference address answers ({}): the decider may be cut off itself",
            seen.join(", ")
        ))
    }
}

impl SelfCheck for DeciderSelfCheck {
    fn check(&self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(self.run())
    }
}
