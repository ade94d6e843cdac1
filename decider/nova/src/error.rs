//! Errors: each says what failed, on what, and what Nova or Keystone said.

use crate::{ConfigError, Microversion};

/// Everything a [`crate::NovaClient`] call can fail with.
///
/// The decider must treat [`NovaError::Unreachable`] as "Nova unreachable"
/// evidence about *Nova* (or the decider's own network), never as evidence
/// that a compute node is dead. [`NovaError::is_unreachable`] says which.
#[derive(Debug, thiserror::Error)]
pub enum NovaError {
    #[error(transparent)]
    Config(#[from] ConfigError),

    /// The HTTP client could not be built (bad CA bundle and the like).
    #[error("cannot set up the HTTP client: {0}")]
    Setup(String),

    /// Keystone or Nova did not answer usefully: connection refused or reset,
    /// timeout, or 5xx, after the bounded retries. `outcome_unknown` is true
    /// when a non-idempotent request (evacuate, add host, start...) may have
    /// reached Nova: check Nova's state (migrations, instance actions) before
    /// sending it again.
    #[error("{op}: {url} unreachable after {attempts} attempt(s){}: {cause}",
        if *.outcome_unknown { " (the request may have been applied)" } else { "" })]
    Unreachable {
        op: &'static str,
        url: String,
        attempts: u32,
        outcome_unknown: bool,
        cause: String,
    },

    /// Keystone refused the credentials (401) or the token could not be
    /// renewed: a configuration problem, not a Nova outage.
    #[error("keystone authentication at {url} failed ({status}): {message}")]
    Auth {
        url: String,
        status: u16,
        message: String,
    },

    /// No compute endpoint in the catalog for this interface/region.
    #[error("no compute endpoint in the service catalog for interface {interface}{}; the catalog has: {available}",
        .region.as_ref().map(|r| format!(" in region {r}")).unwrap_or_default())]
    Catalog {
        interface: String,
        region: Option<String>,
        available: String,
    },

    /// Nova answered with a 4xx: the request was understood and refused.
    #[error("{op}{}: {url} answered {status}: {message}{}",
        .target.as_ref().map(|t| format!(" ({t})")).unwrap_or_default(),
        .request_id.as_ref().map(|r| format!(" [{r}]")).unwrap_or_default())]
    Api {
        op: &'static str,
        /// The object acted on (a server id, a host name), when there is one.
        target: Option<String>,
        url: String,
        status: u16,
        message: String,
        request_id: Option<String>,
    },

    /// A 2xx answer that did not parse as the documented JSON.
    #[error("{op}: unexpected answer from {url}: {message}")]
    Decode {
        op: &'static str,
        url: String,
        message: String,
    },

    /// The call needs a microversion the cloud does not offer.
    #[error("{op} needs compute microversion {need}, the cloud supports {min} to {max}")]
    Unsupported {
        op: &'static str,
        need: Microversion,
        min: Microversion,
        max: Microversion,
    },

    /// The request cannot be expressed at this microversion (for example
    /// `force` with 2.68 or later); nothing was sent.
    #[error("{op}: invalid request for microversion {microversion}: {message}")]
    InvalidRequest {
        op: &'static str,
        microversion: Microversion,
        message: String,
    },
}

impl NovaError {
    /// True for "Nova (or Keystone) did not answer" — evidence about the
    /// control plane or our own network, never about a compute node.
    pub fn is_unreachable(&self) -> bool {
        matches!(self, NovaError::Unreachable { .. })
    }

    /// The HTTP status Nova answered with, for [`NovaError::Api`].
    pub fn status(&self) -> Option<u16> {
        match self {
            NovaError::Api { status, .. } | NovaError::Auth { status, .. } => Some(*status),
            _ => None,
        }
    }

    pub fn is_not_found(&self) -> bool {
        self.status() == Some(404)
    }

    /// 409: e.g. a server in a task state that forbids the action.
    pub fn is_conflict(&self) -> bool {
        self.status() == Some(409)
    }
}

/// The human message out of an OpenStack error body:
/// Nova `{"badRequest": {"code": 400, "message": ".."}}`,
/// Keystone `{"error": {"code": 401, "message": "..", "title": ".."}}`,
/// or the first line of whatever else came back.
pub(crate) fn error_message(body: &[u8]) -> String {
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) {
        if let Some(obj) = v.as_object() {
            for inner in obj.values() {
                if let Some(m) = inner.get("message").and_then(|m| m.as_str()) {
                    return m.to_owned();
                }
            }
            if let Some(m) = obj.get("message").and_then(|m| m.as_str()) {
                return m.to_owned();
            }
        }
    }
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        return "(empty body)".to_owned();
    }
    let mut s: String = text.chars().take(300).collect();
    if text.chars().count() > 300 {
        s.push('…');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages() {
        assert_eq!(
            error_message(br#"{"badRequest": {"code": 400, "message": "'force' was unexpected"}}"#),
            "'force' was unexpected"
        );
        assert_eq!(
            error_message(br#"{"error": {"code": 401, "message": "The request you have made requires authentication.", "title": "Unauthorized"}}"#),
            "The request you have made requires authentication."
        );
        assert_eq!(
            error_message(b"<html>502 Bad Gateway</html>"),
            "<html>502 Bad Gateway</html>"
        );
        assert_eq!(error_message(b""), "(empty body)");
    }

    #[test]
    fn display() {
        let e = NovaError::Api {
            op: "evacuate",
            target: Some("server 1234".into()),
            url: "http://nova/v2.1/servers/1234/action".into(),
            status: 400,
            message: "Compute service of compute2 is still in use.".into(),
            request_id: Some("req-1".into()),
        };
        assert_eq!(
            e.to_string(),
            "evacuate (server 1234): http://nova/v2.1/servers/1234/action answered 400: Compute service of compute2 is still in use. [req-1]"
        );
        let u = NovaError::Unreachable {
            op: "list compute services",
            url: "http://nova/v2.1/os-services".into(),
            attempts: 3,
            outcome_unknown: false,
            cause: "connection refused".into(),
        };
        assert!(u.is_unreachable());
        assert_eq!(
            u.to_string(),
            "list compute services: http://nova/v2.1/os-services unreachable after 3 attempt(s): connection refused"
        );
    }
}
