//! Webhook notifier: the message as JSON, signed with HMAC-SHA256 over the
//! exact body bytes in `X-Vigil-Signature: sha256=<hex>`, so a receiver can
//! tell Vigil's messages from anyone else's.
//!
//! The body is the message's fields plus an envelope: `schema_version`
//! ([`SCHEMA_VERSION`]; fields are only ever added within a version),
//! `delivery_id` (one per message, the same on every retry) and `sent_at`
//! (Unix seconds, new on every attempt). Both are inside the signed body, so
//! a receiver can refuse a replay: check the signature over the raw body,
//! refuse `sent_at` more than a few minutes from its own clock, and refuse a
//! `delivery_id` it has already accepted within that window
//! ([`verify_delivery`] does the first two). `X-Vigil-Delivery` and
//! `X-Vigil-Timestamp` repeat them for logs; they are not signed, so never
//! decide on them.

use std::time::Duration;

use futures::future::BoxFuture;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use serde::{Deserialize, Serialize};

use super::{Message, Notifier, NotifyError};
use crate::secret::Secret;

/// The signature header's name.
pub const SIGNATURE_HEADER: &str = "X-Vigil-Signature";

/// The version of the webhook body's shape.
pub const SCHEMA_VERSION: u32 = 1;

/// What is wrapped around a [`Message`] on the wire.
#[derive(Debug, Serialize)]
struct Envelope<'a> {
    schema_version: u32,
    delivery_id: &'a str,
    sent_at: i64,
    #[serde(flatten)]
    message: &'a Message,
}

/// The envelope fields a receiver checks.
#[derive(Debug, Deserialize, PartialEq, Eq)]
pub struct DeliveryHeader {
    pub schema_version: u32,
    pub delivery_id: String,
    pub sent_at: i64,
}

/// Why a receiver refuses a delivery.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VerifyError {
    #[error("signature does not match the body: wrong key, or the body was changed")]
    Signature,
    #[error("body is not a Vigil webhook envelope: {0}")]
    Body(String),
    #[error("sent_at {sent_at} is {skew_secs} s from the receiver's clock (limit {max_skew_secs} s): a replay, or a clock to fix")]
    Stale {
        sent_at: i64,
        skew_secs: u64,
        max_skew_secs: u64,
    },
}

/// What a receiver does with a delivery: the signature over the raw body,
/// then the signed `sent_at` within `max_skew` of `now_unix`. The caller
/// then refuses a `delivery_id` it already accepted within `max_skew`
/// (retries of one message share it).
pub fn verify_delivery(
    key: &Secret,
    body: &[u8],
    signature_header: &str,
    now_unix: i64,
    max_skew: Duration,
) -> Result<DeliveryHeader, VerifyError> {
    if !verify(key, body, signature_header) {
        return Err(VerifyError::Signature);
    }
    let h: DeliveryHeader =
        serde_json::from_slice(body).map_err(|e| VerifyError::Body(e.to_string()))?;
    let skew = now_unix.abs_diff(h.sent_at);
    if skew > max_skew.as_secs() {
        return Err(VerifyError::Stale {
            sent_at: h.sent_at,
            skew_secs: skew,
            max_skew_secs: max_skew.as_secs(),
        });
    }
    Ok(h)
}

/// The body for one attempt.
pub fn envelope(message: &Message, delivery_id: &str, sent_at: i64) -> serde_json::Result<Vec<u8>> {
    serde_json::to_vec(&Envelope {
        schema_version: SCHEMA_VERSION,
        delivery_id,
        sent_at,
        message,
    })
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// `sha256=<hex>` of HMAC-SHA256(key, body).
pub fn sign(key: &Secret, body: &[u8]) -> String {
    // HMAC accepts keys of any length, so this cannot fail; the fallback keeps
    // the function total without an unwrap.
    match Hmac::<Sha256>::new_from_slice(key.expose().as_bytes()) {
        Ok(mut mac) => {
            mac.update(body);
            format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
        }
        Err(_) => String::from("sha256="),
    }
}

/// Checks a signature header in constant time (for receivers and tests).
pub fn verify(key: &Secret, body: &[u8], header: &str) -> bool {
    let Some(hexsig) = header.strip_prefix("sha256=") else {
        return false;
    };
    let Ok(sig) = hex::decode(hexsig) else {
        return false;
    };
    match Hmac::<Sha256>::new_from_slice(key.expose().as_bytes()) {
        Ok(mut mac) => {
            mac.update(body);
            mac.verify_slice(&sig).is_ok()
        }
        Err(_) => false,
    }
}

/// Posts messages to one URL.
pub struct WebhookNotifier {
    url: String,
    key: Secret,
    client: reqwest::Client,
}

impl WebhookNotifier {
    pub fn new(url: String, key: Secret, timeout: Duration) -> Result<Self, reqwest::Error> {
        Ok(WebhookNotifier {
            url,
            key,
            client: reqwest::Client::builder().timeout(timeout).build()?,
        })
    }
}

impl Notifier for WebhookNotifier {
    fn name(&self) -> String {
        format!("webhook {}", self.url)
    }

    fn send<'a>(&'a self, message: &'a Message) -> BoxFuture<'a, Result<(), NotifyError>> {
        // Called without a delivery id (tests, tools): this attempt is its own.
        Box::pin(async move {
            let id = uuid::Uuid::new_v4().to_string();
            self.send_delivery(message, &id).await
        })
    }

    fn send_delivery<'a>(
        &'a self,
        message: &'a Message,
        delivery_id: &'a str,
    ) -> BoxFuture<'a, Result<(), NotifyError>> {
        Box::pin(async move {
            let sent_at = unix_now();
            let body = envelope(message, delivery_id, sent_at).map_err(|e| NotifyError::Build {
                notifier: self.name(),
                detail: e.to_string(),
            })?;
            let resp = self
                .client
                .post(&self.url)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .header("X-Vigil-Event", message.kind())
                .header("X-Vigil-Delivery", delivery_id)
                .header("X-Vigil-Timestamp", sent_at.to_string())
                .header(SIGNATURE_HEADER, sign(&self.key, &body))
                .body(body)
                .send()
                .await
                .map_err(|e| NotifyError::Unreachable {
                    notifier: self.name(),
                    source: Box::new(e),
                })?;
            if !resp.status().is_success() {
                return Err(NotifyError::Refused {
                    notifier: self.name(),
                    detail: format!("HTTP {}", resp.status()),
                });
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_matches_a_known_vector_and_verifies() {
        // RFC 4231 test case 2: key "Jefe", data "what do ya want for nothing?".
        let key = Secret::new("Jefe");
        let sig = sign(&key, b"what do ya want for nothing?");
        assert_eq!(
            sig,
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        assert!(verify(&key, b"what do ya want for nothing?", &sig));
        assert!(!verify(&key, b"tampered", &sig));
        assert!(!verify(
            &Secret::new("other"),
            b"what do ya want for nothing?",
            &sig
        ));
    }

    #[test]
    fn a_captured_delivery_cannot_be_replayed_later() {
        let key = Secret::new("k");
        let m = Message::NodeDegraded {
            node: "compute1".into(),
            reasons: vec!["nova-compute stuck".into()],
        };
        let body = envelope(&m, "d-1", 1_000_000).expect("body");
        let sig = sign(&key, &body);
        let five_min = Duration::from_secs(300);
        let h = verify_delivery(&key, &body, &sig, 1_000_030, five_min).expect("fresh");
        assert_eq!(
            h,
            DeliveryHeader {
                schema_version: SCHEMA_VERSION,
                delivery_id: "d-1".into(),
                sent_at: 1_000_000
            }
        );
        // The message's own fields stay at the top level, as before.
        let v: serde_json::Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(v["type"], "node-degraded");
        assert_eq!(v["node"], "compute1");
        // The same bytes an hour later: refused.
        assert!(matches!(
            verify_delivery(&key, &body, &sig, 1_003_600, five_min),
            Err(VerifyError::Stale { .. })
        ));
        // A fresher sent_at pasted in breaks the signature.
        let forged = String::from_utf8(body.clone())
            .expect("utf8")
            .replace("1000000", "1003600");
        assert_eq!(
            verify_delivery(&key, forged.as_bytes(), &sig, 1_003_600, five_min),
            Err(VerifyError::Signature)
        );
    }
}
