//! The Nova client: Keystone token handling, the HTTP core with bounded
//! retries, and the typed compute calls.

use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::header::{HeaderMap, HeaderValue, ACCEPT};
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde_json::{json, Value};
use tokio::sync::{Mutex, OnceCell};

use crate::error::error_message;
use crate::evacuate::{evacuate_body, evacuation_plan, EvacuateRequest, EvacuationPlan, LandAs};
use crate::keystone::{compute_endpoint, token_request_body, Token};
use crate::types::{RawHypervisor, RawServer};
use crate::{
    Aggregate, CloudConfig, ComputeService, Hypervisor, InstanceAction, Microversion, Migration,
    NovaError, Secret, Server, VersionRange,
};

/// Bounded retries with exponential backoff, for timeouts, connection errors
/// and 5xx answers.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Total tries per request (1 = no retry).
    pub attempts: u32,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            attempts: 3,
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(2),
        }
    }
}

impl RetryPolicy {
    /// The wait after failed attempt `n` (1-based): initial × 2^(n-1), capped.
    pub fn backoff(&self, n: u32) -> Duration {
        let factor = 1u32 << n.saturating_sub(1).min(16);
        self.initial_backoff
            .saturating_mul(factor)
            .min(self.max_backoff)
    }
}

/// Knobs of a [`NovaClient`]. `Default` suits the decider's poll loop.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Whole-request deadline (connect + send + answer).
    pub request_timeout: Duration,
    pub connect_timeout: Duration,
    pub retry: RetryPolicy,
    /// Highest microversion sent for calls that do not pin their own (the
    /// cloud's `compute_api_version` lowers it further).
    pub max_microversion: Microversion,
    /// Renew the token when it has less than this left (capped at half of
    /// its lifetime).
    pub renew_before: Duration,
    /// `limit` for paged listings.
    pub page_size: u32,
    /// Deadline for one `PUT os-services` (disable, enable, force down).
    /// Nova answers those in tens of ms, except when it still counts a dead
    /// compute as up: it then saves the change and calls the compute over
    /// RPC, answering only after `rpc_response_timeout` (60 s). Past this
    /// deadline the client reads the service back instead of waiting. Short
    /// is safe: Nova saves before the RPC, and an update not yet saved is
    /// simply sent again.
    pub service_update_timeout: Duration,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            request_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(3),
            retry: RetryPolicy::default(),
            max_microversion: Microversion::TESTED_MAX,
            renew_before: Duration::from_secs(300),
            page_size: 500,
            service_update_timeout: Duration::from_secs(2),
        }
    }
}

/// What the current token says about us.
#[derive(Debug, Clone)]
pub struct AuthInfo {
    pub user_id: Option<String>,
    pub project_id: Option<String>,
    pub project_name: Option<String>,
    pub roles: Vec<String>,
    /// Keystone's `expires_at`, as sent.
    pub expires_at: String,
    pub lifetime: Duration,
    pub compute_endpoint: String,
}

/// Nova accepted an evacuation.
#[derive(Debug, Clone)]
pub struct EvacuateAccepted {
    pub microversion: Microversion,
    /// Only before 2.14 (and only when Nova generated one).
    pub admin_pass: Option<Secret>,
    /// `x-openstack-request-id`, matching the instance action's `request_id`.
    pub request_id: Option<String>,
}

/// `os-resetState` targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResetState {
    Active,
    Error,
}

/// Filters for [`NovaClient::list_servers`]. `all_tenants` is on by default.
#[derive(Debug, Clone)]
pub struct ServerQuery {
    pub host: Option<String>,
    pub all_tenants: bool,
    pub status: Option<String>,
    /// Any other `GET /servers/detail` filter, sent as given.
    pub extra: Vec<(String, String)>,
}

impl Default for ServerQuery {
    fn default() -> Self {
        Self {
            host: None,
            all_tenants: true,
            status: None,
            extra: Vec::new(),
        }
    }
}

/// Filters for [`NovaClient::list_migrations`].
#[derive(Debug, Clone, Default)]
pub struct MigrationQuery {
    pub instance_uuid: Option<String>,
    /// e.g. `evacuation`.
    pub migration_type: Option<String>,
    pub source_compute: Option<String>,
    pub host: Option<String>,
    pub status: Option<String>,
}

impl MigrationQuery {
    pub fn evacuations_of(instance_uuid: &str) -> Self {
        Self {
            instance_uuid: Some(instance_uuid.to_owned()),
            migration_type: Some("evacuation".into()),
            ..Self::default()
        }
    }
}

struct Session {
    token: Token,
    endpoint: String,
}

struct Inner {
    http: reqwest::Client,
    cfg: CloudConfig,
    opts: ClientOptions,
    /// min(options cap, cloud's compute_api_version).
    cap: Microversion,
    session: Mutex<Option<Arc<Session>>>,
    versions: OnceCell<VersionRange>,
}

/// An authenticated Nova client. Cheap to clone (one shared token, one
/// connection pool); safe to use from many tasks.
#[derive(Clone)]
pub struct NovaClient {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for NovaClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NovaClient")
            .field("cloud", &self.inner.cfg.cloud)
            .field("auth_url", &self.inner.cfg.auth_url)
            .finish_non_exhaustive()
    }
}

/// One HTTP request, rebuilt for every attempt.
struct Req {
    op: &'static str,
    target: Option<String>,
    method: Method,
    /// Relative to the compute endpoint (starting with `/`), or absolute.
    path: String,
    query: Vec<(String, String)>,
    mv: Option<Microversion>,
    body: Option<Value>,
    /// Safe to send again after a timeout or 5xx (GET, PUT of a state).
    idempotent: bool,
    /// Overrides the client's request timeout.
    timeout: Option<Duration>,
    /// `req-<uuid>`, sent as `X-OpenStack-Request-Id`: Nova logs it as the
    /// global request id beside its own, so an operator can grep one Vigil
    /// call in nova-api's log. Every attempt of one call sends the same.
    request_id: String,
}

/// A new `req-<uuid>` in the form oslo.middleware accepts as a global
/// request id (anything else is ignored by Nova).
fn new_request_id() -> String {
    format!("req-{}", uuid::Uuid::new_v4())
}

impl Req {
    fn get(op: &'static str, path: impl Into<String>) -> Self {
        Self {
            op,
            target: None,
            method: Method::GET,
            path: path.into(),
            query: Vec::new(),
            mv: None,
            body: None,
            idempotent: true,
            timeout: None,
            request_id: new_request_id(),
        }
    }

    fn with(mut self, method: Method, body: Value, idempotent: bool) -> Self {
        self.method = method;
        self.body = Some(body);
        self.idempotent = idempotent;
        self
    }

    fn mv(mut self, mv: Microversion) -> Self {
        self.mv = Some(mv);
        self
    }

    fn target(mut self, t: impl Into<String>) -> Self {
        self.target = Some(t.into());
        self
    }
}

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Vec<u8>,
    url: String,
}

impl NovaClient {
    /// Builds the client; authenticates lazily on the first call.
    pub fn new(cfg: CloudConfig, opts: ClientOptions) -> Result<Self, NovaError> {
        let mut b = reqwest::Client::builder()
            .timeout(opts.request_timeout)
            .connect_timeout(opts.connect_timeout)
            .user_agent(concat!("vigil-nova/", env!("CARGO_PKG_VERSION")))
            .tcp_keepalive(Duration::from_secs(30));
        if let Some(path) = &cfg.cacert {
            let pem = std::fs::read(path).map_err(|e| {
                NovaError::Setup(format!("cannot read cacert {}: {e}", path.display()))
            })?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
                NovaError::Setup(format!("cacert {} is not PEM: {e}", path.display()))
            })?;
            if certs.is_empty() {
                return Err(NovaError::Setup(format!(
                    "cacert {} holds no certificate",
                    path.display()
                )));
            }
            for c in certs {
                b = b.add_root_certificate(c);
            }
        }
        if cfg.insecure {
            tracing::warn!(auth_url = %cfg.auth_url, "TLS certificate verification is OFF (insecure / verify: false)");
            b = b.danger_accept_invalid_certs(true);
        }
        let http = b
            .build()
            .map_err(|e| NovaError::Setup(format!("HTTP client: {e}")))?;
        let cap = match cfg.compute_api_version {
            Some(v) => v.min(opts.max_microversion),
            None => opts.max_microversion,
        };
        Ok(Self {
            inner: Arc::new(Inner {
                http,
                cfg,
                opts,
                cap,
                session: Mutex::new(None),
                versions: OnceCell::new(),
            }),
        })
    }

    /// [`NovaClient::new`], then authenticate and negotiate right away, so
    /// configuration errors surface at start.
    pub async fn connect(cfg: CloudConfig, opts: ClientOptions) -> Result<Self, NovaError> {
        let c = Self::new(cfg, opts)?;
        c.versions().await?;
        Ok(c)
    }

    /// From `OS_CLOUD`/clouds.yaml or `OS_*` variables, with default options.
    pub async fn from_env() -> Result<Self, NovaError> {
        Self::connect(CloudConfig::load()?, ClientOptions::default()).await
    }

    pub fn config(&self) -> &CloudConfig {
        &self.inner.cfg
    }

    pub fn options(&self) -> &ClientOptions {
        &self.inner.opts
    }

    // ------------------------------------------------------------ auth

    /// The current token's facts (authenticating if there is none).
    pub async fn auth_info(&self) -> Result<AuthInfo, NovaError> {
        let s = self.session().await?;
        Ok(AuthInfo {
            user_id: s.token.user_id.clone(),
            project_id: s.token.project_id.clone(),
            project_name: s.token.project_name.clone(),
            roles: s.token.roles.clone(),
            expires_at: s.token.expires_at.clone(),
            lifetime: s.token.lifetime,
            compute_endpoint: s.endpoint.clone(),
        })
    }

    /// Drops the token and gets a new one now.
    pub async fn reauthenticate(&self) -> Result<AuthInfo, NovaError> {
        *self.inner.session.lock().await = None;
        self.auth_info().await
    }

    /// A valid session, renewing the token when it is close to expiry. The
    /// lock is held during the renewal so concurrent callers wait for one
    /// Keystone request instead of each sending their own.
    async fn session(&self) -> Result<Arc<Session>, NovaError> {
        let mut guard = self.inner.session.lock().await;
        if let Some(s) = guard.as_ref() {
            if s.token.fresh(Instant::now(), self.inner.opts.renew_before) {
                return Ok(s.clone());
            }
            tracing::debug!("token close to expiry; renewing");
        }
        let s = Arc::new(self.login().await?);
        *guard = Some(s.clone());
        Ok(s)
    }

    /// Forgets `used` if it is still the current session (after a 401).
    async fn invalidate(&self, used: &Arc<Session>) {
        let mut guard = self.inner.session.lock().await;
        if guard.as_ref().is_some_and(|s| Arc::ptr_eq(s, used)) {
            *guard = None;
        }
    }

    async fn login(&self) -> Result<Session, NovaError> {
        let cfg = &self.inner.cfg;
        let url = format!("{}/auth/tokens", cfg.identity_v3_url());
        let started = Instant::now();
        let req = Req {
            op: "keystone authentication",
            target: None,
            method: Method::POST,
            path: url.clone(),
            query: Vec::new(),
            mv: None,
            body: Some(token_request_body(&cfg.auth)),
            // Issuing a token has no side effect worth guarding.
            idempotent: true,
            timeout: None,
            request_id: new_request_id(),
        };
        let reply = self.exchange(&req, None).await?;
        if reply.status != StatusCode::CREATED && !reply.status.is_success() {
            return Err(NovaError::Auth {
                url,
                status: reply.status.as_u16(),
                message: error_message(&reply.body),
            });
        }
        let value = reply
            .headers
            .get("x-subject-token")
            .and_then(|v| v.to_str().ok())
            .map(Secret::new)
            .ok_or_else(|| NovaError::Decode {
                op: "keystone authentication",
                url: url.clone(),
                message: "no X-Subject-Token header in the answer".into(),
            })?;
        let token =
            Token::parse(value, &reply.body, started).map_err(|message| NovaError::Decode {
                op: "keystone authentication",
                url: url.clone(),
                message,
            })?;
        let endpoint = match &cfg.compute_endpoint_override {
            Some(e) => e.trim_end_matches('/').to_owned(),
            None => compute_endpoint(&token.catalog, cfg.interface, cfg.region_name.as_deref())?,
        };
        tracing::info!(
            user = token.user_id.as_deref().unwrap_or(""), project = token.project_id.as_deref().unwrap_or(""), expires_at = %token.expires_at,
            compute = %endpoint, took_ms = started.elapsed().as_millis() as u64,
            "authenticated to keystone"
        );
        Ok(Session { token, endpoint })
    }

    // ------------------------------------------------------------ HTTP core

    /// Sends `req` with the bounded retry policy. Returns any answer that is
    /// not a 5xx; transport failures and 5xx after the retries (or at once
    /// for a non-idempotent request that may have arrived) are
    /// [`NovaError::Unreachable`].
    async fn exchange(&self, req: &Req, session: Option<&Session>) -> Result<Reply, NovaError> {
        let policy = &self.inner.opts.retry;
        let attempts = policy.attempts.max(1);
        let url = match session {
            Some(s) if req.path.starts_with('/') || req.path.is_empty() => {
                format!("{}{}", s.endpoint, req.path)
            }
            _ => req.path.clone(),
        };
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut rb = self
                .inner
                .http
                .request(req.method.clone(), &url)
                .header(ACCEPT, "application/json")
                .header("X-OpenStack-Request-Id", &req.request_id);
            if let Some(s) = session {
                let mut token = HeaderValue::from_str(s.token.value.expose()).map_err(|_| {
                    NovaError::Decode {
                        op: req.op,
                        url: url.clone(),
                        message: "keystone returned a token that is not a valid header value"
                            .into(),
                    }
                })?;
                token.set_sensitive(true);
                rb = rb.header("X-Auth-Token", token);
            }
            if let Some(mv) = req.mv {
                rb = rb
                    .header("X-OpenStack-Nova-API-Version", mv.header_value())
                    .header("OpenStack-API-Version", format!("compute {mv}"));
            }
            if !req.query.is_empty() {
                rb = rb.query(&req.query);
            }
            if let Some(body) = &req.body {
                rb = rb.json(body);
            }
            if let Some(t) = req.timeout {
                rb = rb.timeout(t);
            }
            let started = Instant::now();
            let outcome = match rb.send().await {
                Ok(resp) => {
                    let status = resp.status();
                    let headers = resp.headers().clone();
                    match resp.bytes().await {
                        Ok(b) => Ok((status, headers, b.to_vec())),
                        Err(e) => Err(e),
                    }
                }
                Err(e) => Err(e),
            };
            let took = started.elapsed().as_millis() as u64;
            match outcome {
                Err(e) => {
                    // A connect error means the request never left: always
                    // safe to retry. Anything later may have reached Nova.
                    let never_sent = e.is_connect();
                    let cause = describe(&e);
                    tracing::debug!(op = req.op, %url, attempt, took_ms = took, %cause, request_id = %req.request_id, "request failed");
                    if (never_sent || req.idempotent) && attempt < attempts {
                        tokio::time::sleep(policy.backoff(attempt)).await;
                        continue;
                    }
                    return Err(NovaError::Unreachable {
                        op: req.op,
                        url,
                        attempts: attempt,
                        outcome_unknown: !never_sent && !req.idempotent,
                        cause,
                    });
                }
                Ok((status, headers, body)) => {
                    let mv = req.mv.map(|m| m.to_string()).unwrap_or_default();
                    if req.method == Method::GET || session.is_none() {
                        tracing::debug!(op = req.op, method = %req.method, %url, status = status.as_u16(), took_ms = took, %mv, request_id = %req.request_id, "request");
                    } else {
                        // Every call that changes something, with the id
                        // nova-api logs it under.
                        tracing::info!(op = req.op, target = req.target.as_deref().unwrap_or(""), method = %req.method, %url, status = status.as_u16(), took_ms = took, %mv, request_id = %req.request_id, "nova call");
                    }
                    if status.is_server_error() {
                        let cause = format!("HTTP {}: {}", status.as_u16(), error_message(&body));
                        if req.idempotent && attempt < attempts {
                            tokio::time::sleep(policy.backoff(attempt)).await;
                            continue;
                        }
                        return Err(NovaError::Unreachable {
                            op: req.op,
                            url,
                            attempts: attempt,
                            outcome_unknown: !req.idempotent,
                            cause,
                        });
                    }
                    return Ok(Reply {
                        status,
                        headers,
                        body,
                        url,
                    });
                }
            }
        }
    }

    /// A compute API request: token attached, one re-authentication and
    /// retry on 401, 4xx turned into [`NovaError::Api`].
    async fn call(&self, req: Req) -> Result<Reply, NovaError> {
        let mut reauthed = false;
        loop {
            let session = self.session().await?;
            let reply = self.exchange(&req, Some(&session)).await?;
            if reply.status == StatusCode::UNAUTHORIZED {
                if !reauthed {
                    // Revoked or expired early (Keystone restarted with new
                    // fernet keys, clock jump): get a new token and retry once.
                    tracing::info!(
                        op = req.op,
                        "401 from nova; renewing the token and retrying once"
                    );
                    reauthed = true;
                    self.invalidate(&session).await;
                    continue;
                }
                return Err(NovaError::Auth {
                    url: reply.url,
                    status: 401,
                    message: error_message(&reply.body),
                });
            }
            if !reply.status.is_success() {
                return Err(NovaError::Api {
                    op: req.op,
                    target: req.target.clone(),
                    url: reply.url,
                    status: reply.status.as_u16(),
                    message: error_message(&reply.body),
                    request_id: request_id(&reply.headers),
                });
            }
            return Ok(reply);
        }
    }

    async fn call_json(&self, req: Req) -> Result<(Value, Reply), NovaError> {
        let op = req.op;
        let reply = self.call(req).await?;
        let v = if reply.body.iter().all(u8::is_ascii_whitespace) {
            Value::Null
        } else {
            serde_json::from_slice(&reply.body).map_err(|e| NovaError::Decode {
                op,
                url: reply.url.clone(),
                message: format!("not JSON: {e}"),
            })?
        };
        Ok((v, reply))
    }

    // ------------------------------------------------------------ versions

    /// The microversions the compute endpoint supports (asked once, then
    /// cached; a failed discovery is not cached).
    pub async fn versions(&self) -> Result<VersionRange, NovaError> {
        self.inner
            .versions
            .get_or_try_init(|| self.discover_versions())
            .await
            .copied()
    }

    async fn discover_versions(&self) -> Result<VersionRange, NovaError> {
        let op = "compute version discovery";
        let session = self.session().await?;
        let first = self.call_json(Req::get(op, "")).await;
        match first {
            Ok((doc, _)) => {
                if let Some(r) = VersionRange::from_version_document(&doc) {
                    tracing::info!(min = %r.min, max = %r.max, "compute microversions");
                    return Ok(r);
                }
            }
            Err(e) if e.is_unreachable() => return Err(e),
            Err(e) => {
                tracing::debug!(error = %e, "versioned endpoint gave no version document; trying the root")
            }
        }
        // The catalog URL may carry a project id (`/v2.1/<project>`); the
        // root lists every version.
        let root = version_root(&session.endpoint);
        let (doc, reply) = self.call_json(Req::get(op, root)).await?;
        VersionRange::from_version_document(&doc).ok_or_else(|| NovaError::Decode {
            op,
            url: reply.url,
            message: "no v2.1 version with microversions in the version document".into(),
        })
    }

    /// The microversion sent by calls that do not need a particular one:
    /// min(cloud maximum, our cap).
    pub async fn microversion(&self) -> Result<Microversion, NovaError> {
        let r = self.versions().await?;
        r.negotiate(self.inner.cap)
            .map_err(|_| NovaError::Unsupported {
                op: "any compute call",
                need: self.inner.cap,
                min: r.min,
                max: r.max,
            })
    }

    async fn need(&self, op: &'static str, need: Microversion) -> Result<Microversion, NovaError> {
        let r = self.versions().await?;
        let mv = self.microversion().await?;
        if mv < need {
            return Err(NovaError::Unsupported {
                op,
                need,
                min: r.min,
                max: r.max.min(self.inner.cap),
            });
        }
        Ok(mv)
    }

    /// The cloud's endpoint for compute (after authenticating).
    pub async fn compute_endpoint(&self) -> Result<String, NovaError> {
        Ok(self.session().await?.endpoint.clone())
    }

    // ------------------------------------------------------------ paging

    /// GETs every page of a collection: `limit`/`marker` while Nova sends a
    /// `next` link, bounded so a misbehaving server cannot loop us forever.
    async fn paged<T: DeserializeOwned>(
        &self,
        mut req: Req,
        key: &'static str,
        links_key: &'static str,
        paging: bool,
        marker_of: impl Fn(&T) -> Option<String>,
    ) -> Result<Vec<T>, NovaError> {
        const MAX_PAGES: usize = 10_000;
        let op = req.op;
        let base_query = req.query.clone();
        let mut out: Vec<T> = Vec::new();
        let mut marker: Option<String> = None;
        for _ in 0..MAX_PAGES {
            req.query = base_query.clone();
            if paging {
                req.query
                    .push(("limit".into(), self.inner.opts.page_size.to_string()));
                if let Some(m) = &marker {
                    req.query.push(("marker".into(), m.clone()));
                }
            }
            let (doc, reply) = self.call_json(clone_req(&req)).await?;
            let items =
                doc.get(key)
                    .and_then(Value::as_array)
                    .ok_or_else(|| NovaError::Decode {
                        op,
                        url: reply.url.clone(),
                        message: format!("no {key:?} list in the answer"),
                    })?;
            let n = items.len();
            for item in items {
                let t: T = serde_json::from_value(item.clone()).map_err(|e| NovaError::Decode {
                    op,
                    url: reply.url.clone(),
                    message: format!("bad {key} entry: {e}"),
                })?;
                out.push(t);
            }
            let has_next = doc
                .get(links_key)
                .and_then(Value::as_array)
                .is_some_and(|l| {
                    l.iter()
                        .any(|x| x.get("rel").and_then(Value::as_str) == Some("next"))
                });
            if !paging || n == 0 || !has_next {
                return Ok(out);
            }
            let next = out.last().and_then(&marker_of);
            if next.is_none() || next == marker {
                // No usable marker: stop rather than fetch the same page again.
                tracing::warn!(op, "paging stopped: no new marker");
                return Ok(out);
            }
            marker = next;
        }
        Err(NovaError::Decode {
            op,
            url: req.path,
            message: format!("more than {MAX_PAGES} pages"),
        })
    }

    // ------------------------------------------------------------ reads

    /// Every `nova-compute` service (`GET /os-services?binary=nova-compute`).
    pub async fn list_compute_services(&self) -> Result<Vec<ComputeService>, NovaError> {
        let mv = self.microversion().await?;
        let mut req = Req::get("list compute services", "/os-services").mv(mv);
        req.query.push(("binary".into(), "nova-compute".into()));
        let (doc, reply) = self.call_json(req).await?;
        let services: Vec<ComputeService> = doc
            .get("services")
            .cloned()
            .map(serde_json::from_value)
            .transpose()
            .map_err(|e| NovaError::Decode {
                op: "list compute services",
                url: reply.url.clone(),
                message: e.to_string(),
            })?
            .ok_or_else(|| NovaError::Decode {
                op: "list compute services",
                url: reply.url.clone(),
                message: "no \"services\" list in the answer".into(),
            })?;
        Ok(services
            .into_iter()
            .filter(|s| s.binary == "nova-compute")
            .collect())
    }

    /// Every hypervisor with its `host_ip` (management address).
    pub async fn list_hypervisors(&self) -> Result<Vec<Hypervisor>, NovaError> {
        let mv = self.microversion().await?;
        let req = Req::get("list hypervisors", "/os-hypervisors/detail").mv(mv);
        let raw: Vec<RawHypervisor> = self
            .paged(
                req,
                "hypervisors",
                "hypervisors_links",
                mv >= Microversion::V2_33,
                |h: &RawHypervisor| Some(hypervisor_id(h)),
            )
            .await?;
        Ok(raw.into_iter().map(Hypervisor::from).collect())
    }

    /// Servers matching `q` (all pages).
    pub async fn list_servers(&self, q: &ServerQuery) -> Result<Vec<Server>, NovaError> {
        let mv = self.microversion().await?;
        let mut req = Req::get("list servers", "/servers/detail").mv(mv);
        if q.all_tenants {
            req.query.push(("all_tenants".into(), "1".into()));
        }
        if let Some(h) = &q.host {
            req.query.push(("host".into(), h.clone()));
            req.target = Some(format!("host {h}"));
        }
        if let Some(s) = &q.status {
            req.query.push(("status".into(), s.clone()));
        }
        req.query.extend(q.extra.iter().cloned());
        let raw: Vec<RawServer> = self
            .paged(req, "servers", "servers_links", true, |s: &RawServer| {
                Some(raw_server_id(s))
            })
            .await?;
        Ok(raw.into_iter().map(Server::from).collect())
    }

    /// Every server on compute host `host`, across all projects.
    pub async fn list_servers_on_host(&self, host: &str) -> Result<Vec<Server>, NovaError> {
        self.list_servers(&ServerQuery {
            host: Some(host.to_owned()),
            ..ServerQuery::default()
        })
        .await
    }

    /// One server (`NovaError::Api` with status 404 if it does not exist).
    pub async fn get_server(&self, server_id: &str) -> Result<Server, NovaError> {
        let mv = self.microversion().await?;
        let req = Req::get("get server", format!("/servers/{}", seg(server_id)))
            .mv(mv)
            .target(format!("server {server_id}"));
        let (doc, reply) = self.call_json(req).await?;
        let raw: RawServer = doc
            .get("server")
            .cloned()
            .map(serde_json::from_value)
            .transpose()
            .map_err(|e| NovaError::Decode {
                op: "get server",
                url: reply.url.clone(),
                message: e.to_string(),
            })?
            .ok_or_else(|| NovaError::Decode {
                op: "get server",
                url: reply.url.clone(),
                message: "no \"server\" in the answer".into(),
            })?;
        Ok(Server::from(raw))
    }

    /// An image's properties, read through Nova's image proxy (`GET
    /// /images/{id}`, its `metadata`), so opting in or out by image
    /// property needs no Glance client. The proxy answers up to microversion
    /// 2.35, which this call pins. Values that are not strings come as JSON.
    pub async fn image_properties(
        &self,
        image_id: &str,
    ) -> Result<std::collections::BTreeMap<String, String>, NovaError> {
        let req = Req::get("get image", format!("/images/{}", seg(image_id)))
            .mv(Microversion::new(2, 35))
            .target(format!("image {image_id}"));
        let (doc, reply) = self.call_json(req).await?;
        let meta = doc
            .get("image")
            .and_then(|i| i.get("metadata"))
            .and_then(Value::as_object)
            .ok_or_else(|| NovaError::Decode {
                op: "get image",
                url: reply.url.clone(),
                message: "no \"image\".\"metadata\" object in the answer".into(),
            })?;
        Ok(meta
            .iter()
            .map(|(k, v)| {
                let v = match v {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                (k.clone(), v)
            })
            .collect())
    }

    /// Migration records (e.g. [`MigrationQuery::evacuations_of`]).
    pub async fn list_migrations(&self, q: &MigrationQuery) -> Result<Vec<Migration>, NovaError> {
        let mv = self.microversion().await?;
        let mut req = Req::get("list migrations", "/os-migrations").mv(mv);
        for (k, v) in [
            ("instance_uuid", &q.instance_uuid),
            ("migration_type", &q.migration_type),
            ("source_compute", &q.source_compute),
            ("host", &q.host),
            ("status", &q.status),
        ] {
            if let Some(v) = v {
                req.query.push((k.into(), v.clone()));
            }
        }
        if let Some(i) = &q.instance_uuid {
            req.target = Some(format!("server {i}"));
        }
        self.paged(
            req,
            "migrations",
            "migrations_links",
            mv >= Microversion::V2_59,
            |m: &Migration| m.uuid.clone(),
        )
        .await
    }

    /// A server's instance actions, newest first, as Nova returns them.
    pub async fn list_instance_actions(
        &self,
        server_id: &str,
    ) -> Result<Vec<InstanceAction>, NovaError> {
        let mv = self.microversion().await?;
        let req = Req::get(
            "list instance actions",
            format!("/servers/{}/os-instance-actions", seg(server_id)),
        )
        .mv(mv)
        .target(format!("server {server_id}"));
        self.paged(
            req,
            "instanceActions",
            "links",
            mv >= Microversion::V2_58,
            |a: &InstanceAction| a.request_id.clone(),
        )
        .await
    }

    /// How many `action` entries (e.g. `evacuate`) a server has.
    pub async fn count_instance_actions(
        &self,
        server_id: &str,
        action: &str,
    ) -> Result<usize, NovaError> {
        Ok(self
            .list_instance_actions(server_id)
            .await?
            .iter()
            .filter(|a| a.action == action)
            .count())
    }

    pub async fn list_aggregates(&self) -> Result<Vec<Aggregate>, NovaError> {
        let mv = self.microversion().await?;
        let req = Req::get("list aggregates", "/os-aggregates").mv(mv);
        self.paged(
            req,
            "aggregates",
            "aggregates_links",
            false,
            |a: &Aggregate| Some(a.id.clone()),
        )
        .await
    }

    // ------------------------------------------------------------ services

    /// Disables the service with a reason (`PUT /os-services/{id}` from
    /// 2.53, `PUT /os-services/disable-log-reason` before).
    ///
    /// Measured on Nova 2025.1: while Nova still counts the compute as up
    /// (its last report younger than `service_down_time`, e.g. seconds after
    /// a power loss), Nova saves the change and then waits on an RPC to the
    /// dead compute for `rpc_response_timeout` (60 s) before answering. The
    /// client gives up waiting after `service_update_timeout` and reads the
    /// service back: `Ok` once it shows disabled with this reason. (Setting
    /// `forced_down` first avoids the RPC altogether.)
    pub async fn disable_service(
        &self,
        svc: &ComputeService,
        reason: &str,
    ) -> Result<(), NovaError> {
        let mv = self.microversion().await?;
        let body = json!({"status": "disabled", "disabled_reason": reason});
        self.update_service("disable service", svc, mv, body, "disable-log-reason")
            .await
    }

    /// Enables the service again (`status: enabled`).
    pub async fn enable_service(&self, svc: &ComputeService) -> Result<(), NovaError> {
        let mv = self.microversion().await?;
        self.update_service(
            "enable service",
            svc,
            mv,
            json!({"status": "enabled"}),
            "enable",
        )
        .await
    }

    /// Sets `forced_down` (needs 2.11; by service id from 2.53, the
    /// `force-down` form before). With `true`, Nova treats the service as
    /// down at once, so evacuation need not wait for `service_down_time`.
    pub async fn set_forced_down(
        &self,
        svc: &ComputeService,
        forced_down: bool,
    ) -> Result<(), NovaError> {
        let op = if forced_down {
            "force down service"
        } else {
            "unforce service"
        };
        let mv = self.need(op, Microversion::V2_11).await?;
        self.update_service(
            op,
            svc,
            mv,
            json!({"forced_down": forced_down}),
            "force-down",
        )
        .await
    }

    async fn update_service(
        &self,
        op: &'static str,
        svc: &ComputeService,
        mv: Microversion,
        body: Value,
        legacy_action: &str,
    ) -> Result<(), NovaError> {
        let mut req = if mv >= Microversion::V2_53 {
            Req::get(op, format!("/os-services/{}", seg(&svc.id))).with(
                Method::PUT,
                body.clone(),
                true,
            )
        } else {
            // Before 2.53 services are addressed by host + binary.
            let mut b = body.clone();
            if let Some(o) = b.as_object_mut() {
                o.remove("status");
                o.insert("host".into(), json!(svc.host));
                o.insert("binary".into(), json!(svc.binary));
            }
            Req::get(op, format!("/os-services/{legacy_action}")).with(Method::PUT, b, true)
        };
        req = req.mv(mv).target(format!("host {}", svc.host));
        req.timeout = Some(self.inner.opts.service_update_timeout);
        // One try per round: on a timeout or 5xx, Nova has usually saved the
        // change already (it saves before the RPC to the compute), so read it
        // back rather than resend blindly.
        req.idempotent = false;
        let policy = self.inner.opts.retry.clone();
        let rounds = policy.attempts.max(1);
        let mut round = 0;
        loop {
            round += 1;
            let err = match self.call(clone_req(&req)).await {
                Ok(_) => return Ok(()),
                Err(e @ NovaError::Unreachable { .. }) => e,
                Err(e) => return Err(e),
            };
            match self.service_matches(svc, &body).await {
                Ok(true) => {
                    tracing::info!(op, host = %svc.host, error = %err,
                        "nova did not answer in time, but the service reads back as updated");
                    return Ok(());
                }
                Ok(false) | Err(_) if round < rounds => {
                    tokio::time::sleep(policy.backoff(round)).await;
                }
                _ => {
                    return Err(match err {
                        NovaError::Unreachable { op, url, cause, .. } => NovaError::Unreachable {
                            op,
                            url,
                            attempts: round,
                            outcome_unknown: false,
                            cause: format!(
                                "{cause}; reading the service back did not confirm the update"
                            ),
                        },
                        other => other,
                    })
                }
            }
        }
    }

    /// True when the service (by id, else by host) shows every field of
    /// `want` (`status`, `disabled_reason`, `forced_down`).
    async fn service_matches(&self, svc: &ComputeService, want: &Value) -> Result<bool, NovaError> {
        let now = self.list_compute_services().await?;
        let Some(cur) = now
            .iter()
            .find(|s| s.id == svc.id)
            .or_else(|| now.iter().find(|s| s.host == svc.host))
        else {
            return Ok(false);
        };
        let ok = want.as_object().is_some_and(|o| {
            o.iter().all(|(k, v)| match k.as_str() {
                "status" => v.as_str() == Some(cur.status.as_str()),
                "disabled_reason" => v.as_str() == cur.disabled_reason.as_deref(),
                "forced_down" => v.as_bool() == Some(cur.forced_down),
                _ => false,
            })
        });
        Ok(ok)
    }

    // ------------------------------------------------------------ servers

    /// The microversion and outcome for evacuating a server that should
    /// land running or stopped (see [`crate::evacuate`]).
    pub async fn evacuation_plan(&self, land: LandAs) -> Result<EvacuationPlan, NovaError> {
        evacuation_plan(self.versions().await?, self.inner.cap, land)
    }

    /// `POST /servers/{id}/action {"evacuate": ...}` at microversion `mv`
    /// (which the caller chooses: ≤2.94 keeps a running server running).
    /// Never retried once it may have reached Nova: an `Unreachable` with
    /// `outcome_unknown` means "check migrations before trying again".
    pub async fn evacuate(
        &self,
        server_id: &str,
        req: &EvacuateRequest,
        mv: Microversion,
    ) -> Result<EvacuateAccepted, NovaError> {
        let r = self.versions().await?;
        if !r.contains(mv) {
            return Err(NovaError::Unsupported {
                op: "evacuate",
                need: mv,
                min: r.min,
                max: r.max,
            });
        }
        let body = evacuate_body(mv, req)?;
        let (doc, reply) = self
            .call_json(
                Req::get("evacuate", format!("/servers/{}/action", seg(server_id)))
                    .with(Method::POST, body, false)
                    .mv(mv)
                    .target(format!("server {server_id}")),
            )
            .await?;
        Ok(EvacuateAccepted {
            microversion: mv,
            admin_pass: doc
                .get("adminPass")
                .and_then(Value::as_str)
                .map(Secret::new),
            request_id: request_id(&reply.headers),
        })
    }

    /// `os-resetState` to `active` or `error` (before re-evacuating a server
    /// whose evacuation failed).
    pub async fn reset_state(&self, server_id: &str, state: ResetState) -> Result<(), NovaError> {
        let mv = self.microversion().await?;
        let s = match state {
            ResetState::Active => "active",
            ResetState::Error => "error",
        };
        self.call(
            Req::get(
                "reset server state",
                format!("/servers/{}/action", seg(server_id)),
            )
            .with(Method::POST, json!({"os-resetState": {"state": s}}), true)
            .mv(mv)
            .target(format!("server {server_id}")),
        )
        .await
        .map(|_| ())
    }

    /// `os-start` (for a server that must run but landed SHUTOFF).
    pub async fn start_server(&self, server_id: &str) -> Result<(), NovaError> {
        let mv = self.microversion().await?;
        self.call(
            Req::get(
                "start server",
                format!("/servers/{}/action", seg(server_id)),
            )
            .with(Method::POST, json!({"os-start": null}), false)
            .mv(mv)
            .target(format!("server {server_id}")),
        )
        .await
        .map(|_| ())
    }

    /// Adds `host` to aggregate `aggregate_id` (reserved spare feature).
    pub async fn aggregate_add_host(
        &self,
        aggregate_id: &str,
        host: &str,
    ) -> Result<Aggregate, NovaError> {
        self.aggregate_action("add host to aggregate", aggregate_id, "add_host", host)
            .await
    }

    pub async fn aggregate_remove_host(
        &self,
        aggregate_id: &str,
        host: &str,
    ) -> Result<Aggregate, NovaError> {
        self.aggregate_action(
            "remove host from aggregate",
            aggregate_id,
            "remove_host",
            host,
        )
        .await
    }

    async fn aggregate_action(
        &self,
        op: &'static str,
        aggregate_id: &str,
        action: &str,
        host: &str,
    ) -> Result<Aggregate, NovaError> {
        let mv = self.microversion().await?;
        let (doc, reply) = self
            .call_json(
                Req::get(op, format!("/os-aggregates/{}/action", seg(aggregate_id)))
                    .with(Method::POST, json!({ action: {"host": host} }), false)
                    .mv(mv)
                    .target(format!("aggregate {aggregate_id}, host {host}")),
            )
            .await?;
        doc.get("aggregate")
            .cloned()
            .map(serde_json::from_value)
            .transpose()
            .map_err(|e| e.to_string())
            .and_then(|a| a.ok_or_else(|| "no \"aggregate\" in the answer".to_owned()))
            .map_err(|message| NovaError::Decode {
                op,
                url: reply.url,
                message,
            })
    }
}

fn clone_req(r: &Req) -> Req {
    Req {
        op: r.op,
        target: r.target.clone(),
        method: r.method.clone(),
        path: r.path.clone(),
        query: r.query.clone(),
        mv: r.mv,
        body: r.body.clone(),
        idempotent: r.idempotent,
        timeout: r.timeout,
        request_id: r.request_id.clone(),
    }
}

fn hypervisor_id(h: &RawHypervisor) -> String {
    // RawHypervisor's fields are private to types.rs; round-trip through
    // the public conversion would consume it, so ask types.rs.
    crate::types::raw_hypervisor_id(h)
}

fn raw_server_id(s: &RawServer) -> String {
    crate::types::raw_server_id(s)
}

/// Percent-encodes one path segment (ids are UUIDs or integers, but a host
/// or aggregate name from config must not be able to change the path).
fn seg(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `scheme://host:port/prefix/` for `scheme://host:port/prefix/v2.1[/...]`.
fn version_root(endpoint: &str) -> String {
    match endpoint.find("/v2") {
        Some(i) if endpoint[..i].contains("://") => format!("{}/", &endpoint[..i]),
        _ => format!("{}/", endpoint.trim_end_matches('/')),
    }
}

fn request_id(h: &HeaderMap) -> Option<String> {
    h.get("x-openstack-request-id")
        .or_else(|| h.get("x-compute-request-id"))
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// The error and its causes on one line ("error sending request: connection
/// refused"), without the URL twice.
fn describe(e: &reqwest::Error) -> String {
    let mut parts = Vec::new();
    if e.is_timeout() {
        parts.push("timed out".to_owned());
    } else if e.is_connect() {
        parts.push("connection failed".to_owned());
    }
    let mut src: Option<&dyn std::error::Error> = std::error::Error::source(e);
    while let Some(s) = src {
        let t = s.to_string();
        if !parts.iter().any(|p| p.contains(&t)) {
            parts.push(t);
        }
        src = s.source();
    }
    if parts.is_empty() {
        parts.push(e.to_string());
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn helpers() {
        assert_eq!(seg("compute-1.lab"), "compute-1.lab");
        assert_eq!(seg("a/b c"), "a%2Fb%20c");
        assert_eq!(version_root("http://h:8774/v2.1"), "http://h:8774/");
        assert_eq!(
            version_root("https://h/compute/v2.1/abc"),
            "https://h/compute/"
        );
        assert_eq!(version_root("http://h:8774/"), "http://h:8774/");
        let p = RetryPolicy::default();
        assert_eq!(p.backoff(1), Duration::from_millis(200));
        assert_eq!(p.backoff(2), Duration::from_millis(400));
        assert_eq!(p.backoff(10), Duration::from_secs(2));
    }
}
