//! Redfish fencing: `ComputerSystem.Reset` with `ResetType: ForceOff`, then the
//! system's `PowerState` read back (DMTF Redfish, DSP0268).

use std::sync::Mutex;
use std::time::Duration;

use futures::future::BoxFuture;
use reqwest::{Method, RequestBuilder, StatusCode};
use serde_json::{json, Value};
use tracing::{info, instrument};

use super::{FenceAck, FenceError, Fencer, PowerState};
use crate::config::RedfishAuth;
use crate::secret::Secret;

/// Where and how to reach one Redfish BMC.
#[derive(Clone, Debug)]
pub struct RedfishTarget {
    /// Service root URL, with or without `/redfish/v1`.
    pub url: String,
    /// `ComputerSystem` id; `None` picks the first member of the collection.
    pub system_id: Option<String>,
    pub username: String,
    pub password: Secret,
    pub auth: RedfishAuth,
    pub insecure_tls: bool,
    pub request_timeout: Duration,
}

/// A Redfish fencer for one system.
pub struct RedfishFencer {
    target: RedfishTarget,
    /// `scheme://host:port`, without a trailing slash; `@odata.id` paths are
    /// absolute and joined to it.
    origin: String,
    client: reqwest::Client,
    /// The session token while session auth is in use; cleared on a 401 so the
    /// next request logs in again. A sync mutex: never held across an await.
    session: Mutex<Option<Secret>>,
    /// The system's `@odata.id`, found once.
    system: Mutex<Option<String>>,
}

impl RedfishFencer {
    pub fn new(target: RedfishTarget) -> Result<Self, reqwest::Error> {
        let client = reqwest::Client::builder()
            .timeout(target.request_timeout)
            .danger_accept_invalid_certs(target.insecure_tls)
            .build()?;
        let mut origin = target.url.trim_end_matches('/').to_string();
        if let Some(stripped) = origin.strip_suffix("/redfish/v1") {
            origin = stripped.to_string();
        }
        Ok(RedfishFencer {
            target,
            origin,
            client,
            session: Mutex::new(None),
            system: Mutex::new(None),
        })
    }

    fn name(&self) -> String {
        self.describe()
    }

    fn unreachable(&self, e: reqwest::Error) -> FenceError {
        if e.is_timeout() {
            FenceError::Timeout {
                fencer: self.name(),
                action: e.url().map(|u| u.path().to_string()).unwrap_or_default(),
                after: self.target.request_timeout,
            }
        } else {
            FenceError::Unreachable {
                fencer: self.name(),
                source: Box::new(e),
            }
        }
    }

    fn session_token(&self) -> Option<Secret> {
        self.session.lock().map(|g| g.clone()).unwrap_or(None)
    }

    fn set_session_token(&self, token: Option<Secret>) {
        if let Ok(mut g) = self.session.lock() {
            *g = token;
        }
    }

    async fn login(&self) -> Result<Secret, FenceError> {
        let url = format!("{}/redfish/v1/SessionService/Sessions", self.origin);
        let resp = self
            .client
            .post(&url)
            .json(&json!({"UserName": self.target.username, "Password": self.target.password.expose()}))
            .send()
            .await
            .map_err(|e| self.unreachable(e))?;
        let status = resp.status();
        if !status.is_success() {
            return Err(FenceError::Refused {
                fencer: self.name(),
                action: "session login".into(),
                detail: format!("HTTP {status}"),
            });
        }
        let token = resp
            .headers()
            .get("X-Auth-Token")
            .and_then(|v| v.to_str().ok())
            .map(Secret::new)
            .ok_or_else(|| FenceError::BadAnswer {
                fencer: self.name(),
                action: "session login".into(),
                detail: "no X-Auth-Token header".into(),
            })?;
        self.set_session_token(Some(token.clone()));
        Ok(token)
    }

    async fn authed(&self, rb: RequestBuilder) -> Result<RequestBuilder, FenceError> {
        Ok(match self.target.auth {
            RedfishAuth::Basic => {
                rb.basic_auth(&self.target.username, Some(self.target.password.expose()))
            }
            RedfishAuth::Session => {
                let token = match self.session_token() {
                    Some(t) => t,
                    None => self.login().await?,
                };
                rb.header("X-Auth-Token", token.expose())
            }
        })
    }

    /// Sends one request, logging in again once if a session expired.
    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(StatusCode, Value), FenceError> {
        let url = format!("{}{}", self.origin, path);
        for attempt in 0..2 {
            let mut rb = self.client.request(method.clone(), &url);
            if let Some(b) = body {
                rb = rb.json(b);
            }
            let resp = self
                .authed(rb)
                .await?
                .send()
                .await
                .map_err(|e| self.unreachable(e))?;
            let status = resp.status();
            if status == StatusCode::UNAUTHORIZED
                && self.target.auth == RedfishAuth::Session
                && attempt == 0
            {
                self.set_session_token(None);
                continue;
            }
            let text = resp.text().await.map_err(|e| self.unreachable(e))?;
            return Ok((status, answer::body(text)));
        }
        Err(FenceError::Refused {
            fencer: self.name(),
            action: format!("{method} {path}"),
            detail: "HTTP 401 after a fresh session login; check the BMC credentials".into(),
        })
    }

    async fn get_ok(&self, path: &str) -> Result<Value, FenceError> {
        let (status, v) = self.send(Method::GET, path, None).await?;
        if !status.is_success() {
            return Err(FenceError::Refused {
                fencer: self.name(),
                action: format!("GET {path}"),
                detail: format!("HTTP {status}"),
            });
        }
        Ok(v)
    }

    /// The system's `@odata.id`: the configured id, or the first member.
    async fn system_path(&self) -> Result<String, FenceError> {
        if let Some(p) = self.system.lock().ok().and_then(|g| g.clone()) {
            return Ok(p);
        }
        let coll = self.get_ok("/redfish/v1/Systems").await?;
        let members = answer::system_members(&coll);
        let found = answer::pick_system(&members, self.target.system_id.as_deref());
        let path = found.ok_or_else(|| FenceError::BadAnswer {
            fencer: self.name(),
            action: "GET /redfish/v1/Systems".into(),
            detail: format!(
                "no system {:?} among {members:?}",
                self.target.system_id.as_deref().unwrap_or("(first)")
            ),
        })?;
        if let Ok(mut g) = self.system.lock() {
            *g = Some(path.clone());
        }
        Ok(path)
    }

    async fn read_power(&self) -> Result<(PowerState, Value), FenceError> {
        let path = self.system_path().await?;
        let sys = self.get_ok(&path).await?;
        // Redfish `PowerState`: On, Off, PoweringOn, PoweringOff, Paused.
        let state = answer::power_state(&sys).ok_or_else(|| FenceError::BadAnswer {
            fencer: self.name(),
            action: format!("GET {path}"),
            detail: "no PowerState".into(),
        })?;
        Ok((state, sys))
    }

    #[instrument(skip(self), fields(fencer = %self.describe()))]
    async fn force_off(&self) -> Result<FenceAck, FenceError> {
        let (before, sys) = self.read_power().await?;
        let path = self.system_path().await?;
        let target = answer::reset_target(&sys, &path);
        info!(%target, power_before = %before, "redfish ForceOff");
        let (status, body) = self
            .send(
                Method::POST,
                &target,
                Some(&json!({"ResetType": "ForceOff"})),
            )
            .await?;
        if status.is_success() {
            return Ok(FenceAck {
                power: None,
                storage_fenced: false,
                message: format!("ForceOff accepted (HTTP {status}), power was {before}"),
            });
        }
        // Some BMCs refuse ForceOff on a system that is already off; what
        // counts is the state, so read it before calling this a failure.
        if let Ok((PowerState::Off, _)) = self.read_power().await {
            return Ok(FenceAck {
                power: Some(PowerState::Off),
                storage_fenced: false,
                message: format!("ForceOff answered HTTP {status}; system already off"),
            });
        }
        Err(FenceError::Refused {
            fencer: self.name(),
            action: "ComputerSystem.Reset ForceOff".into(),
            detail: format!("HTTP {status}: {body}"),
        })
    }
}

impl Fencer for RedfishFencer {
    fn describe(&self) -> String {
        format!(
            "redfish {} system {}",
            self.origin,
            self.target.system_id.as_deref().unwrap_or("(first)")
        )
    }

    fn power_off(&self) -> BoxFuture<'_, Result<FenceAck, FenceError>> {
        Box::pin(self.force_off())
    }

    fn power_status(&self) -> BoxFuture<'_, Result<PowerState, FenceError>> {
        Box::pin(async move { self.read_power().await.map(|(s, _)| s) })
    }
}

/// What a BMC's answers mean, apart from the HTTP that carried them: pure
/// functions over the JSON, so they are fuzzed (fuzz/fuzz_targets/redfish.rs)
/// and unit-tested without a BMC.
pub mod answer {
    use super::PowerState;
    use serde_json::Value;

    /// Most systems listed from one collection; a real BMC has one or a few.
    pub const MAX_MEMBERS: usize = 1024;

    /// A body as JSON; an empty one (many BMCs answer actions with 204) is
    /// `Null`, anything that is not JSON is kept as a string for messages.
    pub fn body(text: String) -> Value {
        if text.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        }
    }

    /// The `@odata.id` of each member of `/redfish/v1/Systems`.
    pub fn system_members(coll: &Value) -> Vec<String> {
        coll.get("Members")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|m| m.get("@odata.id")?.as_str().map(str::to_string))
                    .take(MAX_MEMBERS)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The member whose last path segment is `id`, or the first one.
    pub fn pick_system(members: &[String], id: Option<&str>) -> Option<String> {
        match id {
            Some(id) => members
                .iter()
                .find(|m| m.trim_end_matches('/').rsplit('/').next() == Some(id))
                .cloned(),
            None => members.first().cloned(),
        }
    }

    /// Redfish `PowerState` (On, Off, PoweringOn, PoweringOff, Paused);
    /// `None` when the system does not say.
    pub fn power_state(sys: &Value) -> Option<PowerState> {
        Some(match sys.get("PowerState")?.as_str()? {
            "Off" => PowerState::Off,
            "On" => PowerState::On,
            _ => PowerState::Unknown,
        })
    }

    /// Where ComputerSystem.Reset is posted: what the system says, or the
    /// standard path below it.
    pub fn reset_target(sys: &Value, path: &str) -> String {
        sys.pointer("/Actions/#ComputerSystem.Reset/target")
            .and_then(Value::as_str)
            .map(str::to_string)
            .unwrap_or_else(|| {
                format!(
                    "{}/Actions/ComputerSystem.Reset",
                    path.trim_end_matches('/')
                )
            })
    }

    #[cfg(test)]
    mod tests {
        use super::*;
        use serde_json::json;

        #[test]
        fn answers_are_read_as_redfish_defines_them() {
            assert_eq!(body("  ".into()), Value::Null);
            assert_eq!(body("<html>".into()), Value::String("<html>".into()));
            let coll = json!({"Members": [{"@odata.id": "/redfish/v1/Systems/a/"}, {"@odata.id": "/redfish/v1/Systems/b"}, {"x": 1}]});
            let m = system_members(&coll);
            assert_eq!(m.len(), 2);
            assert_eq!(
                pick_system(&m, Some("b")).as_deref(),
                Some("/redfish/v1/Systems/b")
            );
            assert_eq!(
                pick_system(&m, Some("a")).as_deref(),
                Some("/redfish/v1/Systems/a/")
            );
            assert_eq!(
                pick_system(&m, None).as_deref(),
                Some("/redfish/v1/Systems/a/")
            );
            assert_eq!(pick_system(&m, Some("c")), None);
            assert_eq!(
                power_state(&json!({"PowerState": "Off"})),
                Some(PowerState::Off)
            );
            assert_eq!(
                power_state(&json!({"PowerState": "PoweringOff"})),
                Some(PowerState::Unknown)
            );
            assert_eq!(power_state(&json!({"PowerState": 1})), None);
            assert_eq!(power_state(&json!([])), None);
            assert_eq!(
                reset_target(&json!({}), "/redfish/v1/Systems/a/"),
                "/redfish/v1/Systems/a/Actions/ComputerSystem.Reset"
            );
            let many = json!({"Members": vec![json!({"@odata.id": "/x"}); MAX_MEMBERS + 5]});
            assert_eq!(system_members(&many).len(), MAX_MEMBERS);
        }
    }
}
