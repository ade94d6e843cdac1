//! Redfish fencing: `ComputerSystem.Reset` with `ResetType: ForceOff`, then the
//! system's `PowerState` read back (DMTF Redfish, DSP0268). The same
//! `ComputerSystem` names the machine (`UUID`), checked against the node's.

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
            let text = self.read_body(resp, &method, path).await?;
            return Ok((status, answer::body(text)));
        }
        Err(FenceError::Refused {
            fencer: self.name(),
            action: format!("{method} {path}"),
            detail: "HTTP 401 after a fresh session login; check the BMC credentials".into(),
        })
    }

    /// The body, at most [`answer::MAX_BODY`] bytes: a BMC (or whatever
    /// answers at its address) must not make the decider buffer without end.
    async fn read_body(
        &self,
        mut resp: reqwest::Response,
        method: &Method,
        path: &str,
    ) -> Result<String, FenceError> {
        let too_large = || {
            FenceError::BadAnswer {
            fencer: self.name(),
            action: format!("{method} {path}"),
            detail: format!(
                "the answer is larger than {} bytes, more than any Redfish resource Vigil reads; check that the URL is the BMC's Redfish service",
                answer::MAX_BODY
            ),
        }
        };
        if resp
            .content_length()
            .is_some_and(|n| n > answer::MAX_BODY as u64)
        {
            return Err(too_large());
        }
        let mut buf = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| self.unreachable(e))? {
            if buf.len().saturating_add(chunk.len()) > answer::MAX_BODY {
                return Err(too_large());
            }
            buf.extend_from_slice(&chunk);
        }
        Ok(String::from_utf8_lossy(&buf).into_owned())
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

    /// `ComputerSystem.UUID`, canonical; `None` when the BMC does not say
    /// or says a firmware placeholder.
    async fn read_uuid(&self) -> Result<Option<String>, FenceError> {
        let path = self.system_path().await?;
        let sys = self.get_ok(&path).await?;
        answer::system_uuid(&sys).map_err(|detail| FenceError::BadAnswer {
            fencer: self.name(),
            action: format!("GET {path}"),
            detail,
        })
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

    fn system_uuid(&self) -> BoxFuture<'_, Result<Option<String>, FenceError>> {
        Box::pin(self.read_uuid())
    }
}

/// What a BMC's answers mean, apart from the HTTP that carried them: pure
/// functions over the JSON, so they are fuzzed (fuzz/fuzz_targets/redfish_json.rs)
/// and unit-tested without a BMC.
pub mod answer {
    use super::PowerState;
    use serde_json::Value;

    /// Most systems listed from one collection; a real BMC has one or a few.
    pub const MAX_MEMBERS: usize = 1024;

    /// The largest body read from a BMC. A `ComputerSystem` is a few KiB; a
    /// collection of [`MAX_MEMBERS`] systems is ~100 KiB.
    pub const MAX_BODY: usize = 1024 * 1024;

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

    /// `ComputerSystem.UUID` in the canonical form
    /// (`vigil_proto::system_uuid`). `Ok(None)`: the system does not say
    /// (no `UUID`, `null`) or says a firmware placeholder (all zeros or Fs).
    /// `Err`: the body is not a JSON object, or its `UUID` is not a UUID.
    pub fn system_uuid(sys: &Value) -> Result<Option<String>, String> {
        let Some(obj) = sys.as_object() else {
            let shown: String = match sys {
                Value::String(s) => s.chars().take(80).collect(),
                other => other.to_string().chars().take(80).collect(),
            };
            return Err(format!("not a JSON object: {shown:?}"));
        };
        match obj.get("UUID") {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(u)) => {
                if let Some(canon) = vigil_proto::system_uuid::normalize(u) {
                    Ok(Some(canon))
                } else if vigil_proto::system_uuid::is_placeholder(u) {
                    Ok(None)
                } else {
                    Err(format!(
                        "UUID {:?} is not a UUID (8-4-4-4-12 hex)",
                        u.chars().take(40).collect::<String>()
                    ))
                }
            }
            Some(other) => Err(format!(
                "UUID is {}, not a string",
                other.to_string().chars().take(40).collect::<String>()
            )),
        }
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

        #[test]
        fn the_system_uuid_is_read_canonical_or_not_at_all() {
            // As a Dell iDRAC answers (upper case, among other fields).
            let idrac = json!({"@odata.id": "/redfish/v1/Systems/System.Embedded.1",
                "PowerState": "On", "UUID": "4C4C4544-0042-3510-8052-B4C04F4B4E32"});
            assert_eq!(
                system_uuid(&idrac),
                Ok(Some("4c4c4544-0042-3510-8052-b4c04f4b4e32".into()))
            );
            // Absent, null or a placeholder: the BMC cannot tell, no error.
            assert_eq!(system_uuid(&json!({"PowerState": "On"})), Ok(None));
            assert_eq!(system_uuid(&json!({"UUID": null})), Ok(None));
            assert_eq!(
                system_uuid(&json!({"UUID": "00000000-0000-0000-0000-000000000000"})),
                Ok(None)
            );
            assert_eq!(
                system_uuid(&json!({"UUID": "FFFFFFFF-FFFF-FFFF-FFFF-FFFFFFFFFFFF"})),
                Ok(None)
            );
            // Garbage is an error that shows what came.
            let e = system_uuid(&json!({"UUID": "compute1"})).expect_err("not a uuid");
            assert!(e.contains("compute1"), "{e}");
            assert!(system_uuid(&json!({"UUID": 42})).is_err());
            let e = system_uuid(&body("<html>login</html>".into())).expect_err("html");
            assert!(
                e.contains("not a JSON object") && e.contains("login"),
                "{e}"
            );
            assert!(system_uuid(&Value::Null).is_err());
            // A huge non-UUID is refused without being echoed whole.
            let e = system_uuid(&json!({"UUID": "x".repeat(1_000_000)})).expect_err("huge");
            assert!(e.len() < 200, "{}", e.len());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A one-system HTTP service on 127.0.0.1: the collection lists
    /// `/redfish/v1/Systems/s1`, which answers `system` (with or without a
    /// Content-Length, so both ways of sending a huge body are seen).
    async fn serve(system: Vec<u8>, with_length: bool) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                let system = system.clone();
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut b = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match sock.read(&mut b).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&b[..n]),
                        }
                    }
                    let body = if head.starts_with(b"GET /redfish/v1/Systems ") {
                        br#"{"Members":[{"@odata.id":"/redfish/v1/Systems/s1"}]}"#.to_vec()
                    } else {
                        system
                    };
                    let mut resp = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n".to_string();
                    if with_length {
                        resp.push_str(&format!("Content-Length: {}\r\n", body.len()));
                    }
                    resp.push_str("\r\n");
                    let _ = sock.write_all(resp.as_bytes()).await;
                    let _ = sock.write_all(&body).await;
                    let _ = sock.shutdown().await;
                });
            }
        });
        format!("http://{addr}/redfish/v1")
    }

    fn fencer(url: String) -> RedfishFencer {
        RedfishFencer::new(RedfishTarget {
            url,
            system_id: None,
            username: "admin".into(),
            password: Secret::new("unused"),
            auth: RedfishAuth::Basic,
            insecure_tls: false,
            request_timeout: Duration::from_secs(10),
        })
        .expect("client")
    }

    async fn uuid_of(system: &[u8], with_length: bool) -> Result<Option<String>, FenceError> {
        fencer(serve(system.to_vec(), with_length).await)
            .system_uuid()
            .await
    }

    #[tokio::test]
    async fn system_uuid_is_read_from_the_computer_system() {
        let sys = br#"{"Id":"s1","PowerState":"On","UUID":"5F1C0A6E-1111-4000-8000-000000000001"}"#;
        assert_eq!(
            uuid_of(sys, true).await.expect("read"),
            Some("5f1c0a6e-1111-4000-8000-000000000001".into())
        );
        assert_eq!(
            uuid_of(br#"{"Id":"s1","PowerState":"On"}"#, true)
                .await
                .expect("read"),
            None,
            "no UUID: the BMC cannot tell, which is no error"
        );
        let e = uuid_of(b"<html>please log in</html>", true)
            .await
            .expect_err("not JSON");
        assert!(matches!(e, FenceError::BadAnswer { .. }), "{e}");
        assert!(e.to_string().contains("not a JSON object"), "{e}");
    }

    #[tokio::test]
    async fn a_huge_answer_is_refused_not_buffered() {
        // Valid JSON that would hold a UUID, past the bound: refused whether
        // the size is announced or only seen while reading.
        let mut huge = br#"{"UUID":"5f1c0a6e-1111-4000-8000-000000000001","Pad":""#.to_vec();
        huge.extend(std::iter::repeat_n(b'x', answer::MAX_BODY + 1));
        huge.extend_from_slice(b"\"}");
        for with_length in [true, false] {
            let e = uuid_of(&huge, with_length).await.expect_err("too large");
            assert!(
                e.to_string().contains("larger than"),
                "with_length {with_length}: {e}"
            );
            // The power read goes through the same bound.
            let f = fencer(serve(huge.clone(), with_length).await);
            assert!(f.power_status().await.is_err());
        }
    }
}
