//! Telling people: what recovery did, and paging when it could not.
//!
//! [`Notifier`]s ([`webhook`], [`email`]) send one [`Message`]. The
//! [`Dispatcher`] sends each message to every notifier in a background task
//! with retries and backoff, so a receiver that is down never blocks or fails
//! a recovery; deliveries are recorded in the incident's timeline.

pub mod email;
pub mod webhook;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::journal::{Event, IncidentId, Journal};
use crate::time::Clock;

/// One instance in a notification.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InstanceReport {
    pub server_id: String,
    pub name: String,
    pub project_id: String,
    pub from_host: String,
    pub to_host: Option<String>,
    /// Seconds from its evacuate call to ACTIVE elsewhere.
    pub took_secs: Option<f64>,
    /// `evacuated`, `failed`, …
    pub state: String,
    pub reason: Option<String>,
    /// Its status in Nova as last read (what really happened, not the goal).
    #[serde(default)]
    pub status: Option<String>,
    /// Nova's `evacuate` actions for it since the incident opened.
    #[serde(default)]
    pub evacuate_actions: Option<u32>,
}

/// What recovery tells people.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum Message {
    /// A node was judged dead and recovery started.
    IncidentOpened {
        incident: IncidentId,
        node: String,
        dry_run: bool,
        evidence: Value,
    },
    /// The node is confirmed off.
    NodeFenced {
        incident: IncidentId,
        node: String,
        how: String,
    },
    /// The kdump path: a node fenced by its crash kernel's announcement was
    /// powered off once its dump was written (or the wait ran out).
    PoweredOffAfterDump {
        incident: IncidentId,
        node: String,
        how: String,
    },
    /// Every selected instance was handled.
    EvacuationFinished {
        incident: IncidentId,
        node: String,
        instances: Vec<InstanceReport>,
    },
    /// Recovery stopped where it could not go on safely: a page.
    NeedsAttention {
        incident: IncidentId,
        node: String,
        reason: String,
        instances: Vec<InstanceReport>,
    },
    /// The node's management side is sick while its VMs run (the seed's
    /// case): Vigil will not fence it, so a person should look. No incident:
    /// nothing was done.
    NodeDegraded { node: String, reasons: Vec<String> },
    /// Decider HA: this decider has known no leader for a while (etcd
    /// unreachable or without quorum), so no decider acts: a page.
    NoLeader {
        /// The decider that sees no leader (its `cluster.name`).
        decider: String,
        /// How long, and why.
        detail: String,
    },
}

impl Message {
    pub fn kind(&self) -> &'static str {
        match self {
            Message::IncidentOpened { .. } => "incident-opened",
            Message::NodeFenced { .. } => "node-fenced",
            Message::PoweredOffAfterDump { .. } => "powered-off-after-dump",
            Message::EvacuationFinished { .. } => "evacuation-finished",
            Message::NeedsAttention { .. } => "needs-attention",
            Message::NodeDegraded { .. } => "node-degraded",
            Message::NoLeader { .. } => "no-leader",
        }
    }

    /// The incident the message is about; none for an alert about a node
    /// Vigil leaves alone.
    pub fn incident(&self) -> Option<&IncidentId> {
        match self {
            Message::IncidentOpened { incident, .. }
            | Message::NodeFenced { incident, .. }
            | Message::PoweredOffAfterDump { incident, .. }
            | Message::EvacuationFinished { incident, .. }
            | Message::NeedsAttention { incident, .. } => Some(incident),
            Message::NodeDegraded { .. } | Message::NoLeader { .. } => None,
        }
    }

    pub fn node(&self) -> &str {
        match self {
            Message::IncidentOpened { node, .. }
            | Message::NodeFenced { node, .. }
            | Message::PoweredOffAfterDump { node, .. }
            | Message::EvacuationFinished { node, .. }
            | Message::NeedsAttention { node, .. }
            | Message::NodeDegraded { node, .. } => node,
            // About no node: the decider that pages.
            Message::NoLeader { decider, .. } => decider,
        }
    }

    /// A page wakes a person.
    pub fn is_page(&self) -> bool {
        matches!(
            self,
            Message::NeedsAttention { .. } | Message::NoLeader { .. }
        )
    }

    pub fn instances(&self) -> &[InstanceReport] {
        match self {
            Message::EvacuationFinished { instances, .. }
            | Message::NeedsAttention { instances, .. } => instances,
            _ => &[],
        }
    }

    /// Projects with instances in this message.
    pub fn projects(&self) -> BTreeSet<&str> {
        self.instances()
            .iter()
            .map(|i| i.project_id.as_str())
            .collect()
    }

    /// The same message with only `project`'s instances (for its contacts).
    pub fn for_project(&self, project: &str) -> Message {
        let keep = |v: &[InstanceReport]| {
            v.iter()
                .filter(|i| i.project_id == project)
                .cloned()
                .collect::<Vec<_>>()
        };
        match self {
            Message::EvacuationFinished {
                incident,
                node,
                instances,
            } => Message::EvacuationFinished {
                incident: incident.clone(),
                node: node.clone(),
                instances: keep(instances),
            },
            Message::NeedsAttention {
                incident,
                node,
                reason,
                instances,
            } => Message::NeedsAttention {
                incident: incident.clone(),
                node: node.clone(),
                reason: reason.clone(),
                instances: keep(instances),
            },
            other => other.clone(),
        }
    }

    pub fn subject(&self) -> String {
        match self {
            Message::IncidentOpened {
                node,
                dry_run: true,
                ..
            } => format!("[vigil] dry run: {node} judged dead"),
            Message::IncidentOpened { node, .. } => {
                format!("[vigil] {node} is dead; recovery started")
            }
            Message::NodeFenced { node, .. } => format!("[vigil] {node} fenced (confirmed off)"),
            Message::PoweredOffAfterDump { node, .. } => {
                format!("[vigil] {node} powered off after its crash dump")
            }
            Message::EvacuationFinished {
                node, instances, ..
            } => {
                let ok = instances.iter().filter(|i| i.state == "evacuated").count();
                format!(
                    "[vigil] {node}: {ok}/{} instances recovered",
                    instances.len()
                )
            }
            Message::NeedsAttention { node, .. } => format!("[vigil] PAGE: {node} needs attention"),
            Message::NodeDegraded { node, reasons } => format!(
                "[vigil] {node} degraded (not fenced): {}",
                reasons.first().map_or("see the node", String::as_str)
            ),
            Message::NoLeader { decider, .. } => {
                format!("[vigil] PAGE: no decider leads (seen by {decider}): nothing is recovered")
            }
        }
    }

    /// Plain text for e-mail.
    pub fn text(&self) -> String {
        let mut s = format!("{}\n", self.subject());
        if let Some(id) = self.incident() {
            s.push_str(&format!("incident: {id}\n"));
        }
        s.push_str(&format!("node: {}\n", self.node()));
        match self {
            Message::IncidentOpened { evidence, .. } => {
                s.push_str("\nevidence at decision time:\n");
                s.push_str(&serde_json::to_string_pretty(evidence).unwrap_or_default());
                s.push('\n');
            }
            Message::NodeFenced { how, .. } => s.push_str(&format!("fenced by: {how}\n")),
            Message::PoweredOffAfterDump { how, .. } => s.push_str(&format!("{how}\n")),
            Message::NeedsAttention { reason, .. } => s.push_str(&format!(
                "\nreason: {reason}\nVigil stopped; a person must finish this recovery.\n"
            )),
            Message::EvacuationFinished { .. } => {}
            Message::NoLeader { detail, .. } => s.push_str(&format!(
                "\n{detail}\nWhile no decider leads, the deciders judge and serve but none fences or \
                 evacuates: a node that dies now stays dead. Check etcd \
                 (`etcdctl endpoint health --cluster`) and `vigil-decider cluster`.\n"
            )),
            Message::NodeDegraded { reasons, .. } => {
                s.push_str("\nwhy:\n");
                for r in reasons {
                    s.push_str(&format!("  - {r}\n"));
                }
                s.push_str(
                    "\nIts instances still run, so Vigil will not fence or evacuate it: \
                     doing so could corrupt their disks. Look at the node's management side \
                     (nova-compute, storage paths); `vigil-decider node NAME` shows every witness.\n",
                );
            }
        }
        if !self.instances().is_empty() {
            s.push_str("\ninstance                              name                 from -> to            took    nova      evacuations  state\n");
            for i in self.instances() {
                s.push_str(&format!(
                    "{:<37} {:<20} {} -> {:<12} {:>6}  {:<9} {:>11}  {}{}\n",
                    i.server_id,
                    i.name,
                    i.from_host,
                    i.to_host.as_deref().unwrap_or("-"),
                    i.took_secs
                        .map(|t| format!("{t:.1}s"))
                        .unwrap_or_else(|| "-".into()),
                    i.status.as_deref().unwrap_or("-"),
                    i.evacuate_actions
                        .map_or_else(|| "-".to_string(), |n| n.to_string()),
                    i.state,
                    i.reason
                        .as_deref()
                        .map(|r| format!(" ({r})"))
                        .unwrap_or_default(),
                ));
            }
        }
        s
    }
}

/// A notification that could not be delivered.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    /// The receiver could not be reached.
    #[error("{notifier}: cannot reach the receiver")]
    Unreachable {
        notifier: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The receiver refused the message.
    #[error("{notifier}: refused: {detail}")]
    Refused { notifier: String, detail: String },
    /// The message could not be built (a bad address in config).
    #[error("{notifier}: cannot build the message: {detail}")]
    Build { notifier: String, detail: String },
}

/// One channel to people.
pub trait Notifier: Send + Sync {
    fn name(&self) -> String;
    fn send<'a>(&'a self, message: &'a Message) -> BoxFuture<'a, Result<(), NotifyError>>;
    /// One attempt of a delivery: `delivery_id` is the same on every retry
    /// of one message, so a receiver can drop duplicates (the webhook sends
    /// it; other channels have no use for it).
    fn send_delivery<'a>(
        &'a self,
        message: &'a Message,
        _delivery_id: &'a str,
    ) -> BoxFuture<'a, Result<(), NotifyError>> {
        self.send(message)
    }
}

/// How hard to try.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    pub attempts: u32,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
}

/// Sends messages to every notifier in the background.
#[derive(Clone)]
pub struct Dispatcher {
    notifiers: Vec<Arc<dyn Notifier>>,
    retry: RetryPolicy,
    clock: Arc<dyn Clock>,
    /// Where deliveries are recorded, if anywhere.
    journal: Option<Arc<dyn Journal>>,
}

/// The result of one message to one notifier.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivery {
    pub notifier: String,
    pub attempts: u32,
    pub delivered: bool,
    pub last_error: Option<String>,
}

impl Dispatcher {
    pub fn new(
        notifiers: Vec<Arc<dyn Notifier>>,
        retry: RetryPolicy,
        clock: Arc<dyn Clock>,
        journal: Option<Arc<dyn Journal>>,
    ) -> Self {
        Dispatcher {
            notifiers,
            retry,
            clock,
            journal,
        }
    }

    /// Queues `message` for every notifier and returns at once; the handles
    /// let tests (and shutdown) wait for the deliveries.
    pub fn dispatch(&self, message: Message) -> Vec<JoinHandle<Delivery>> {
        let message = Arc::new(message);
        let delivery_id: Arc<str> = uuid::Uuid::new_v4().to_string().into();
        self.notifiers
            .iter()
            .map(|n| {
                let n = n.clone();
                let message = message.clone();
                let retry = self.retry;
                let clock = self.clock.clone();
                let journal = self.journal.clone();
                let delivery_id = delivery_id.clone();
                tokio::spawn(async move {
                    let d =
                        deliver(n.as_ref(), &message, &delivery_id, retry, clock.as_ref()).await;
                    if let (Some(j), Some(incident)) = (journal, message.incident()) {
                        let event = Event {
                            at: clock.now(),
                            kind: if d.delivered {
                                "notify-delivered".into()
                            } else {
                                "notify-failed".into()
                            },
                            message: format!(
                                "{} via {} after {} attempt(s)",
                                message.kind(),
                                d.notifier,
                                d.attempts
                            ),
                            detail: json!({"error": d.last_error}),
                        };
                        // The delivery record is best effort: the recovery
                        // itself is already journaled.
                        if let Err(e) = j.record_event(incident, event).await {
                            warn!(error = %e, "cannot record a notification delivery");
                        }
                    }
                    d
                })
            })
            .collect()
    }
}

async fn deliver(
    n: &dyn Notifier,
    message: &Message,
    delivery_id: &str,
    retry: RetryPolicy,
    clock: &dyn Clock,
) -> Delivery {
    let mut backoff = retry.initial_backoff;
    let mut last_error = None;
    for attempt in 1..=retry.attempts {
        match n.send_delivery(message, delivery_id).await {
            Ok(()) => {
                info!(notifier = %n.name(), kind = message.kind(), attempt, "notification delivered");
                return Delivery {
                    notifier: n.name(),
                    attempts: attempt,
                    delivered: true,
                    last_error: None,
                };
            }
            Err(e) => {
                let text = crate::fence::error_chain(&e);
                warn!(notifier = %n.name(), kind = message.kind(), attempt, error = %text, "notification failed");
                last_error = Some(text);
                if attempt < retry.attempts {
                    clock.sleep(backoff).await;
                    backoff = (backoff * 2).min(retry.max_backoff);
                }
            }
        }
    }
    Delivery {
        notifier: n.name(),
        attempts: retry.attempts,
        delivered: false,
        last_error,
    }
}

/// Notification settings that cannot be turned into notifiers.
#[derive(Debug, thiserror::Error)]
pub enum NotifyConfigError {
    /// A credential could not be read.
    #[error("notify.{which}: credential")]
    Secret {
        which: &'static str,
        #[source]
        source: crate::secret::SecretError,
    },
    /// The webhook's HTTP client could not be built.
    #[error("notify.webhook: cannot build the HTTP client")]
    Http(#[source] reqwest::Error),
    /// The SMTP transport could not be built.
    #[error("notify.email")]
    Email(#[source] NotifyError),
}

impl RetryPolicy {
    pub fn from_config(cfg: &crate::config::NotifyConfig) -> Self {
        RetryPolicy {
            attempts: cfg.attempts,
            initial_backoff: cfg.initial_backoff,
            max_backoff: cfg.max_backoff,
        }
    }
}

/// Builds the configured notifiers, reading their secrets now (at start-up,
/// so a missing one fails before the decider acts).
pub fn notifiers_from_config(
    cfg: &crate::config::NotifyConfig,
    env: &dyn crate::secret::SecretEnv,
) -> Result<Vec<Arc<dyn Notifier>>, NotifyConfigError> {
    let mut out: Vec<Arc<dyn Notifier>> = Vec::new();
    for w in cfg.webhook.iter().chain(&cfg.webhooks) {
        let key = w
            .secret
            .load(env)
            .map_err(|source| NotifyConfigError::Secret {
                which: "webhook.secret",
                source,
            })?;
        out.push(Arc::new(
            webhook::WebhookNotifier::new(w.url.clone(), key, w.timeout)
                .map_err(NotifyConfigError::Http)?,
        ));
    }
    if let Some(e) = &cfg.email {
        let credentials = match (&e.username, &e.password) {
            (Some(u), Some(p)) => Some((
                u.clone(),
                p.load(env).map_err(|source| NotifyConfigError::Secret {
                    which: "email.password",
                    source,
                })?,
            )),
            _ => None,
        };
        out.push(Arc::new(
            email::EmailNotifier::new(email::EmailTarget {
                smtp_host: e.smtp_host.clone(),
                smtp_port: e.smtp_port,
                security: e.security,
                credentials,
                from: e.from.clone(),
                admins: e.admins.clone(),
                project_contacts: e.project_contacts.clone(),
                timeout: e.timeout,
            })
            .map_err(NotifyConfigError::Email)?,
        ));
    }
    Ok(out)
}
