//! Protocol details against an in-process HTTP server (wiremock): auth and
//! token reuse/renewal, catalog, microversion negotiation, paging, retries
//! and error mapping. Real Keystone/Nova behaviour is covered by
//! tests/tests/nova_*.rs against the lab.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use vigil_nova::{
    Auth, ClientOptions, CloudConfig, DomainRef, EvacuateRequest, Interface, LandAs, Microversion,
    MigrationQuery, NovaClient, NovaError, ProjectRef, RetryPolicy, Secret, ServiceState, UserRef,
};
use wiremock::matchers::{body_json, header, method, path, query_param, query_param_is_missing};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

type R = Result<(), Box<dyn std::error::Error>>;

const TOKEN: &str = "gAAAAAB-test-token";

fn token_doc(base: &str, lifetime_s: u64) -> Value {
    // Far-future absolute times: only their difference matters to the client.
    let issued = "2030-01-01T00:00:00.000000Z";
    let expires = humantime::format_rfc3339_micros(
        humantime::parse_rfc3339(issued).unwrap_or(std::time::UNIX_EPOCH)
            + Duration::from_secs(lifetime_s),
    )
    .to_string();
    json!({"token": {
        "methods": ["password"], "issued_at": issued, "expires_at": expires,
        "user": {"id": "u-admin", "name": "admin"},
        "project": {"id": "p-admin", "name": "admin"},
        "roles": [{"id": "r1", "name": "admin"}],
        "catalog": [
            {"type": "identity", "endpoints": [{"interface": "public", "region_id": "RegionOne", "url": format!("{base}/v3")}]},
            {"type": "compute", "name": "nova", "endpoints": [
                {"interface": "public", "region_id": "RegionOne", "url": format!("{base}/v2.1")},
                {"interface": "internal", "region_id": "RegionOne", "url": format!("{base}/internal/v2.1")},
                {"interface": "public", "region_id": "RegionTwo", "url": format!("{base}/r2/v2.1")}]}]}})
}

fn cfg(base: &str) -> CloudConfig {
    CloudConfig {
        cloud: Some("test".into()),
        auth_url: base.to_owned(),
        auth: Auth::Password {
            user: UserRef::Name {
                name: "admin".into(),
                domain: DomainRef::Name("Default".into()),
            },
            password: Secret::new("pw"),
            project: ProjectRef::Name {
                name: "admin".into(),
                domain: DomainRef::Name("Default".into()),
            },
        },
        region_name: Some("RegionOne".into()),
        interface: Interface::Public,
        cacert: None,
        insecure: false,
        compute_endpoint_override: None,
        compute_api_version: None,
    }
}

fn fast() -> ClientOptions {
    ClientOptions {
        request_timeout: Duration::from_millis(500),
        connect_timeout: Duration::from_millis(300),
        retry: RetryPolicy {
            attempts: 3,
            initial_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(40),
        },
        ..ClientOptions::default()
    }
}

/// Keystone (expecting `auth_calls` token requests, lifetime 1 h) and the
/// compute version document with maximum `max`.
async fn cloud(max: &str, auth_calls: u64) -> MockServer {
    let s = MockServer::start().await;
    let base = s.uri();
    Mock::given(method("POST"))
        .and(path("/v3/auth/tokens"))
        .and(body_json(json!({"auth": {
            "identity": {"methods": ["password"], "password": {"user":
                {"name": "admin", "domain": {"name": "Default"}, "password": "pw"}}},
            "scope": {"project": {"name": "admin", "domain": {"name": "Default"}}}}})))
        .respond_with(
            ResponseTemplate::new(201)
                .insert_header("X-Subject-Token", TOKEN)
                .set_body_json(token_doc(&base, 3600)),
        )
        .expect(auth_calls)
        .mount(&s)
        .await;
    Mock::given(method("GET"))
        .and(path("/v2.1"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"version": {
            "id": "v2.1", "status": "CURRENT", "version": max, "min_version": "2.1"}})))
        .mount(&s)
        .await;
    s
}

fn services_doc() -> Value {
    json!({"services": [
        {"id": "11111111-0000-0000-0000-000000000001", "binary": "nova-compute", "host": "compute1",
         "state": "up", "status": "enabled", "forced_down": false, "zone": "nova",
         "updated_at": "2030-01-01T00:00:05.000000", "disabled_reason": null},
        {"id": "11111111-0000-0000-0000-000000000002", "binary": "nova-compute", "host": "compute2",
         "state": "down", "status": "disabled", "forced_down": true, "zone": "nova",
         "updated_at": "2030-01-01T00:00:01.000000", "disabled_reason": "vigil: incident 7"}]})
}

#[tokio::test]
async fn auth_catalog_negotiation_and_token_reuse() -> R {
    let s = cloud("2.96", 1).await;
    Mock::given(method("GET"))
        .and(path("/v2.1/os-services"))
        .and(query_param("binary", "nova-compute"))
        .and(header("X-Auth-Token", TOKEN))
        .and(header("X-OpenStack-Nova-API-Version", "2.96"))
        .respond_with(ResponseTemplate::new(200).set_body_json(services_doc()))
        .expect(3)
        .mount(&s)
        .await;
    let c = NovaClient::connect(cfg(&s.uri()), fast()).await?;
    assert_eq!(c.microversion().await?, Microversion::new(2, 96));
    for _ in 0..3 {
        let svcs = c.list_compute_services().await?;
        assert_eq!(svcs.len(), 2);
        assert_eq!(svcs[1].state, ServiceState::Down);
        assert!(svcs[1].forced_down);
    }
    let info = c.auth_info().await?;
    assert_eq!(info.project_id.as_deref(), Some("p-admin"));
    assert_eq!(info.compute_endpoint, format!("{}/v2.1", s.uri()));
    assert_eq!(info.lifetime, Duration::from_secs(3600));
    // The token never shows in Debug output of the client.
    assert!(!format!("{c:?}").contains(TOKEN));
    Ok(())
}

#[tokio::test]
async fn interface_and_region_pick_the_endpoint() -> R {
    let s = cloud("2.96", 2).await;
    let mut internal = cfg(&s.uri());
    internal.interface = Interface::Internal;
    let c = NovaClient::new(internal, fast())?;
    assert_eq!(
        c.compute_endpoint().await?,
        format!("{}/internal/v2.1", s.uri())
    );
    let mut r3 = cfg(&s.uri());
    r3.region_name = Some("RegionThree".into());
    let e = NovaClient::new(r3, fast())?.compute_endpoint().await;
    assert!(matches!(e, Err(NovaError::Catalog { .. })), "{e:?}");
    Ok(())
}

#[tokio::test]
async fn cap_and_older_cloud() -> R {
    // A cloud at 2.60: general calls use 2.60; a pinned evacuate at 2.94 is
    // refused before anything is sent; the running-evacuation plan is 2.60.
    let s = cloud("2.60", 1).await;
    Mock::given(method("GET"))
        .and(path("/v2.1/os-services"))
        .and(header("X-OpenStack-Nova-API-Version", "2.60"))
        .respond_with(ResponseTemplate::new(200).set_body_json(services_doc()))
        .expect(1)
        .mount(&s)
        .await;
    let c = NovaClient::connect(cfg(&s.uri()), fast()).await?;
    c.list_compute_services().await?;
    let e = c
        .evacuate("srv-1", &EvacuateRequest::default(), Microversion::V2_94)
        .await;
    assert!(matches!(e, Err(NovaError::Unsupported { .. })), "{e:?}");
    let plan = c.evacuation_plan(LandAs::Running).await?;
    assert_eq!(plan.microversion, Microversion::new(2, 60));
    assert!(!plan.lands_stopped);
    // An operator cap (OS_COMPUTE_API_VERSION) lowers every call.
    let s2 = cloud("2.96", 1).await;
    let mut capped = cfg(&s2.uri());
    capped.compute_api_version = Some(Microversion::new(2, 40));
    let c2 = NovaClient::connect(capped, fast()).await?;
    assert_eq!(c2.microversion().await?, Microversion::new(2, 40));
    Ok(())
}

#[tokio::test]
async fn version_root_fallback_when_catalog_url_has_a_project() -> R {
    let s = MockServer::start().await;
    let base = s.uri();
    let mut doc = token_doc(&base, 3600);
    doc["token"]["catalog"][1]["endpoints"][0]["url"] = json!(format!("{base}/v2.1/p-admin"));
    Mock::given(method("POST"))
        .and(path("/v3/auth/tokens"))
        .respond_with(
            ResponseTemplate::new(201)
                .insert_header("X-Subject-Token", TOKEN)
                .set_body_json(doc),
        )
        .mount(&s)
        .await;
    Mock::given(method("GET"))
        .and(path("/v2.1/p-admin"))
        .respond_with(
            ResponseTemplate::new(404)
                .set_body_json(json!({"itemNotFound": {"code": 404, "message": "nope"}})),
        )
        .mount(&s)
        .await;
    Mock::given(method("GET"))
        .and(path("/"))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(json!({"versions": [
            {"id": "v2.0", "version": "", "min_version": ""},
            {"id": "v2.1", "version": "2.88", "min_version": "2.1"}]})),
        )
        .mount(&s)
        .await;
    let c = NovaClient::connect(cfg(&base), fast()).await?;
    assert_eq!(c.versions().await?.max, Microversion::new(2, 88));
    Ok(())
}

#[tokio::test]
async fn renews_on_401_and_retries_once() -> R {
    let s = cloud("2.96", 2).await;
    Mock::given(method("GET"))
        .and(path("/v2.1/os-services"))
        .respond_with(
            ResponseTemplate::new(401)
                .set_body_json(json!({"error": {"code": 401, "message": "token revoked"}})),
        )
        .up_to_n_times(1)
        .with_priority(1)
        .expect(1)
        .mount(&s)
        .await;
    Mock::given(method("GET"))
        .and(path("/v2.1/os-services"))
        .respond_with(ResponseTemplate::new(200).set_body_json(services_doc()))
        .with_priority(2)
        .expect(1)
        .mount(&s)
        .await;
    let c = NovaClient::connect(cfg(&s.uri()), fast()).await?;
    assert_eq!(c.list_compute_services().await?.len(), 2);
    Ok(())
}

#[tokio::test]
async fn persistent_401_is_an_auth_error_not_unreachable() -> R {
    let s = cloud("2.96", 2).await;
    Mock::given(method("GET"))
        .and(path("/v2.1/os-services"))
        .respond_with(ResponseTemplate::new(401))
        .expect(2)
        .mount(&s)
        .await;
    let c = NovaClient::connect(cfg(&s.uri()), fast()).await?;
    let e = c.list_compute_services().await;
    assert!(
        matches!(e, Err(NovaError::Auth { status: 401, .. })),
        "{e:?}"
    );
    Ok(())
}

#[tokio::test]
async fn keystone_rejects_credentials() -> R {
    let s = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v3/auth/tokens"))
        .respond_with(ResponseTemplate::new(401).set_body_json(json!({"error": {
            "code": 401, "title": "Unauthorized",
            "message": "The request you have made requires authentication."}})))
        .expect(1)
        .mount(&s)
        .await;
    let e = NovaClient::connect(cfg(&s.uri()), fast()).await;
    match e {
        Err(NovaError::Auth {
            status,
            message,
            url,
        }) => {
            assert_eq!(status, 401);
            assert!(message.contains("requires authentication"));
            assert!(url.ends_with("/v3/auth/tokens"));
        }
        other => panic!("expected Auth, got {other:?}"),
    }
    Ok(())
}

/// Answers each token request with a token living `lifetime` seconds.
struct ShortTokens(String, u64);
impl Respond for ShortTokens {
    fn respond(&self, _: &Request) -> ResponseTemplate {
        ResponseTemplate::new(201)
            .insert_header("X-Subject-Token", TOKEN)
            .set_body_json(token_doc(&self.0, self.1))
    }
}

#[tokio::test]
async fn renews_before_expiry() -> R {
    let s = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v3/auth/tokens"))
        .respond_with(ShortTokens(s.uri(), 2))
        .expect(2)
        .mount(&s)
        .await;
    Mock::given(method("GET"))
        .and(path("/v2.1"))
        .respond_with(ResponseTemplate::new(200).set_body_json(
            json!({"version": {"id": "v2.1", "version": "2.96", "min_version": "2.1"}}),
        ))
        .mount(&s)
        .await;
    Mock::given(method("GET"))
        .and(path("/v2.1/os-services"))
        .respond_with(ResponseTemplate::new(200).set_body_json(services_doc()))
        .mount(&s)
        .await;
    // 2 s tokens: the 300 s margin is capped at half the lifetime (1 s).
    let c = NovaClient::connect(cfg(&s.uri()), fast()).await?;
    c.list_compute_services().await?;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    c.list_compute_services().await?;
    Ok(())
}

fn server(id: &str, host: &str) -> Value {
    json!({"id": id, "name": id, "status": "ACTIVE", "tenant_id": "p1",
        "OS-EXT-SRV-ATTR:host": host, "OS-EXT-STS:vm_state": "active",
        "OS-EXT-STS:task_state": null,
        "addresses": {"net": [{"addr": "203.0.113.100", "version": 4}]},
        "metadata": {}, "image": {"id": "img"}, "flavor": {"original_name": "m1", "extra_specs": {}}})
}

#[tokio::test]
async fn servers_on_host_follow_pages() -> R {
    let s = cloud("2.96", 1).await;
    let base = s.uri();
    let next = |m: &str| json!([{"rel": "next", "href": format!("{base}/v2.1/servers/detail?limit=2&marker={m}")}]);
    Mock::given(method("GET"))
        .and(path("/v2.1/servers/detail"))
        .and(query_param("all_tenants", "1"))
        .and(query_param("host", "compute1"))
        .and(query_param("limit", "2"))
        .and(query_param_is_missing("marker"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "servers": [server("a", "compute1"), server("b", "compute1")], "servers_links": next("b")})))
        .expect(1)
        .mount(&s)
        .await;
    Mock::given(method("GET"))
        .and(path("/v2.1/servers/detail"))
        .and(query_param("marker", "b"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "servers": [server("c", "compute1"), server("d", "compute1")], "servers_links": next("d")})))
        .expect(1)
        .mount(&s)
        .await;
    // Nova sends a next link whenever a page is full; the last page is empty.
    Mock::given(method("GET"))
        .and(path("/v2.1/servers/detail"))
        .and(query_param("marker", "d"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"servers": []})))
        .expect(1)
        .mount(&s)
        .await;
    let opts = ClientOptions {
        page_size: 2,
        ..fast()
    };
    let c = NovaClient::connect(cfg(&base), opts).await?;
    let servers = c.list_servers_on_host("compute1").await?;
    let ids: Vec<_> = servers.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(ids, ["a", "b", "c", "d"]);
    assert_eq!(servers[0].addresses[0].ip.to_string(), "203.0.113.100");
    Ok(())
}

#[tokio::test]
async fn server_errors_are_retried_then_succeed() -> R {
    let s = cloud("2.96", 1).await;
    Mock::given(method("GET"))
        .and(path("/v2.1/os-services"))
        .respond_with(ResponseTemplate::new(503).set_body_string("Service Unavailable"))
        .up_to_n_times(2)
        .with_priority(1)
        .expect(2)
        .mount(&s)
        .await;
    Mock::given(method("GET"))
        .and(path("/v2.1/os-services"))
        .respond_with(ResponseTemplate::new(200).set_body_json(services_doc()))
        .with_priority(2)
        .expect(1)
        .mount(&s)
        .await;
    let c = NovaClient::connect(cfg(&s.uri()), fast()).await?;
    assert_eq!(c.list_compute_services().await?.len(), 2);
    Ok(())
}

#[tokio::test]
async fn persistent_5xx_and_timeouts_are_unreachable() -> R {
    let s = cloud("2.96", 1).await;
    Mock::given(method("GET"))
        .and(path("/v2.1/os-services"))
        .respond_with(
            ResponseTemplate::new(500).set_body_json(
                json!({"computeFault": {"code": 500, "message": "database is locked"}}),
            ),
        )
        .expect(3)
        .mount(&s)
        .await;
    Mock::given(method("GET"))
        .and(path("/v2.1/os-hypervisors/detail"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_delay(Duration::from_secs(2))
                .set_body_json(json!({"hypervisors": []})),
        )
        .expect(3)
        .mount(&s)
        .await;
    let c = NovaClient::connect(cfg(&s.uri()), fast()).await?;
    match c.list_compute_services().await {
        Err(e @ NovaError::Unreachable { .. }) => {
            assert!(e.is_unreachable());
            let t = e.to_string();
            assert!(
                t.contains("after 3 attempt(s)") && t.contains("database is locked"),
                "{t}"
            );
        }
        other => panic!("expected Unreachable, got {other:?}"),
    }
    let started = Instant::now();
    match c.list_hypervisors().await {
        Err(NovaError::Unreachable {
            attempts,
            cause,
            outcome_unknown,
            ..
        }) => {
            assert_eq!(attempts, 3);
            assert!(cause.contains("timed out"), "{cause}");
            assert!(!outcome_unknown);
        }
        other => panic!("expected Unreachable, got {other:?}"),
    }
    // 3 × 0.5 s timeouts + 10 + 20 ms backoff: bounded.
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    Ok(())
}

#[tokio::test]
async fn nothing_listening_is_unreachable() -> R {
    // Bind then drop a listener: that port now refuses connections.
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let e = NovaClient::connect(cfg(&format!("http://127.0.0.1:{port}")), fast()).await;
    match e {
        Err(NovaError::Unreachable { op, attempts, .. }) => {
            assert_eq!(op, "keystone authentication");
            assert_eq!(attempts, 3);
        }
        other => panic!("expected Unreachable, got {other:?}"),
    }
    Ok(())
}

#[tokio::test]
async fn evacuate_is_never_resent_after_it_may_have_arrived() -> R {
    let s = cloud("2.96", 1).await;
    Mock::given(method("POST"))
        .and(path("/v2.1/servers/srv-1/action"))
        .respond_with(ResponseTemplate::new(503))
        .expect(1)
        .mount(&s)
        .await;
    let c = NovaClient::connect(cfg(&s.uri()), fast()).await?;
    match c
        .evacuate("srv-1", &EvacuateRequest::default(), Microversion::V2_94)
        .await
    {
        Err(NovaError::Unreachable {
            outcome_unknown,
            attempts,
            ..
        }) => {
            assert!(outcome_unknown);
            assert_eq!(attempts, 1);
        }
        other => panic!("expected Unreachable, got {other:?}"),
    }
    Ok(())
}

#[tokio::test]
async fn evacuate_bodies_and_4xx_mapping() -> R {
    let s = cloud("2.96", 1).await;
    Mock::given(method("POST"))
        .and(path("/v2.1/servers/srv-1/action"))
        .and(header("X-OpenStack-Nova-API-Version", "2.94"))
        .and(body_json(json!({"evacuate": {}})))
        .respond_with(ResponseTemplate::new(200).insert_header("x-openstack-request-id", "req-abc"))
        .expect(1)
        .mount(&s)
        .await;
    Mock::given(method("POST"))
        .and(path("/v2.1/servers/srv-2/action"))
        .and(header("X-OpenStack-Nova-API-Version", "2.29"))
        .and(body_json(
            json!({"evacuate": {"host": "compute3", "force": false}}),
        ))
        .respond_with(
            ResponseTemplate::new(400).set_body_json(json!({"badRequest": {
            "code": 400, "message": "Compute service of compute2 is still in use."}})),
        )
        .expect(1)
        .mount(&s)
        .await;
    let c = NovaClient::connect(cfg(&s.uri()), fast()).await?;
    let ok = c
        .evacuate("srv-1", &EvacuateRequest::default(), Microversion::V2_94)
        .await?;
    assert_eq!(ok.request_id.as_deref(), Some("req-abc"));
    assert!(ok.admin_pass.is_none());
    let to3 = EvacuateRequest {
        host: Some("compute3".into()),
        ..Default::default()
    };
    match c.evacuate("srv-2", &to3, Microversion::V2_29).await {
        Err(e @ NovaError::Api { .. }) => {
            assert_eq!(e.status(), Some(400));
            let t = e.to_string();
            assert!(
                t.contains("server srv-2") && t.contains("still in use"),
                "{t}"
            );
            assert!(!e.is_unreachable());
        }
        other => panic!("expected Api, got {other:?}"),
    }
    // 2.68+ with force: refused locally, nothing sent.
    let forced = EvacuateRequest {
        host: Some("compute3".into()),
        force: true,
        ..Default::default()
    };
    let e = c.evacuate("srv-3", &forced, Microversion::V2_94).await;
    assert!(matches!(e, Err(NovaError::InvalidRequest { .. })), "{e:?}");
    Ok(())
}

#[tokio::test]
async fn service_updates_by_id_and_legacy_forms() -> R {
    let s = cloud("2.96", 1).await;
    let id = "11111111-0000-0000-0000-000000000002";
    Mock::given(method("PUT"))
        .and(path(format!("/v2.1/os-services/{id}")))
        .and(header("X-OpenStack-Nova-API-Version", "2.96"))
        .and(body_json(json!({"forced_down": true})))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"service": {}})))
        .expect(1)
        .mount(&s)
        .await;
    Mock::given(method("PUT"))
        .and(path(format!("/v2.1/os-services/{id}")))
        .and(body_json(
            json!({"status": "disabled", "disabled_reason": "vigil: incident 7"}),
        ))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"service": {}})))
        .expect(1)
        .mount(&s)
        .await;
    Mock::given(method("GET"))
        .and(path("/v2.1/os-services"))
        .respond_with(ResponseTemplate::new(200).set_body_json(services_doc()))
        .mount(&s)
        .await;
    let c = NovaClient::connect(cfg(&s.uri()), fast()).await?;
    let svcs = c.list_compute_services().await?;
    c.set_forced_down(&svcs[1], true).await?;
    c.disable_service(&svcs[1], "vigil: incident 7").await?;

    // A cloud (or cap) below 2.53: host + binary forms.
    let old = cloud("2.40", 1).await;
    for (p, body) in [
        (
            "/v2.1/os-services/force-down",
            json!({"host": "compute2", "binary": "nova-compute", "forced_down": true}),
        ),
        (
            "/v2.1/os-services/disable-log-reason",
            json!({"host": "compute2", "binary": "nova-compute", "disabled_reason": "why"}),
        ),
        (
            "/v2.1/os-services/enable",
            json!({"host": "compute2", "binary": "nova-compute"}),
        ),
    ] {
        Mock::given(method("PUT"))
            .and(path(p))
            .and(header("X-OpenStack-Nova-API-Version", "2.40"))
            .and(body_json(body))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({"service": {}})))
            .expect(1)
            .mount(&old)
            .await;
    }
    let c = NovaClient::connect(cfg(&old.uri()), fast()).await?;
    let mut svc = svcs[1].clone();
    svc.id = "7".into();
    c.set_forced_down(&svc, true).await?;
    c.disable_service(&svc, "why").await?;
    c.enable_service(&svc).await?;

    // Below 2.11 forced_down does not exist.
    let ancient = cloud("2.10", 1).await;
    let c = NovaClient::connect(cfg(&ancient.uri()), fast()).await?;
    let e = c.set_forced_down(&svc, true).await;
    assert!(matches!(e, Err(NovaError::Unsupported { .. })), "{e:?}");
    Ok(())
}

#[tokio::test]
async fn migrations_actions_aggregates_reset_start() -> R {
    let s = cloud("2.96", 1).await;
    Mock::given(method("GET"))
        .and(path("/v2.1/os-migrations"))
        .and(query_param("instance_uuid", "srv-1"))
        .and(query_param("migration_type", "evacuation"))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(json!({"migrations": [
            {"id": 3, "uuid": "m-3", "instance_uuid": "srv-1", "migration_type": "evacuation",
             "status": "done", "source_compute": "compute1", "dest_compute": "compute2"}]})),
        )
        .expect(1)
        .mount(&s)
        .await;
    Mock::given(method("GET"))
        .and(path("/v2.1/servers/srv-1/os-instance-actions"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"instanceActions": [
            {"action": "evacuate", "request_id": "req-2", "start_time": "2030-01-01T00:00:02.000000"},
            {"action": "create", "request_id": "req-1", "start_time": "2030-01-01T00:00:01.000000"}]})))
        .expect(1)
        .mount(&s)
        .await;
    Mock::given(method("GET"))
        .and(path("/v2.1/os-aggregates"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"aggregates": [
            {"id": 1, "name": "spares", "availability_zone": null, "hosts": ["compute3"], "metadata": {}}]})))
        .mount(&s)
        .await;
    Mock::given(method("POST"))
        .and(path("/v2.1/os-aggregates/1/action"))
        .and(body_json(json!({"add_host": {"host": "compute4"}})))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"aggregate":
            {"id": 1, "name": "spares", "hosts": ["compute3", "compute4"], "metadata": {}}})))
        .expect(1)
        .mount(&s)
        .await;
    Mock::given(method("POST"))
        .and(path("/v2.1/servers/srv-1/action"))
        .and(body_json(json!({"os-resetState": {"state": "error"}})))
        .respond_with(ResponseTemplate::new(202))
        .expect(1)
        .mount(&s)
        .await;
    Mock::given(method("POST"))
        .and(path("/v2.1/servers/srv-1/action"))
        .and(body_json(json!({"os-start": null})))
        .respond_with(ResponseTemplate::new(202))
        .expect(1)
        .mount(&s)
        .await;
    let c = NovaClient::connect(cfg(&s.uri()), fast()).await?;
    let m = c
        .list_migrations(&MigrationQuery::evacuations_of("srv-1"))
        .await?;
    assert_eq!(m[0].id.as_deref(), Some("3"));
    assert_eq!(m[0].status.as_deref(), Some("done"));
    assert_eq!(c.count_instance_actions("srv-1", "evacuate").await?, 1);
    let aggs = c.list_aggregates().await?;
    assert_eq!(aggs[0].id, "1");
    let a = c.aggregate_add_host("1", "compute4").await?;
    assert_eq!(a.hosts, ["compute3", "compute4"]);
    c.reset_state("srv-1", vigil_nova::ResetState::Error)
        .await?;
    c.start_server("srv-1").await?;
    Ok(())
}

#[tokio::test]
async fn image_properties_come_through_the_image_proxy_at_2_35() -> R {
    let s = cloud("2.96", 1).await;
    Mock::given(method("GET"))
        .and(path("/v2.1/images/img-1"))
        .and(header("X-OpenStack-Nova-API-Version", "2.35"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"image": {
            "id": "img-1", "name": "cirros",
            "metadata": {"vigil:evacuate": "false", "hw_disk_bus": "virtio", "min_ram_extra": 2}
        }})))
        .expect(1)
        .mount(&s)
        .await;
    Mock::given(method("GET"))
        .and(path("/v2.1/images/gone"))
        .respond_with(
            ResponseTemplate::new(404).set_body_json(
                json!({"itemNotFound": {"code": 404, "message": "Image not found."}}),
            ),
        )
        .mount(&s)
        .await;
    let c = NovaClient::connect(cfg(&s.uri()), fast()).await?;
    let p = c.image_properties("img-1").await?;
    assert_eq!(p.get("vigil:evacuate").map(String::as_str), Some("false"));
    assert_eq!(p.get("min_ram_extra").map(String::as_str), Some("2"));
    let e = c.image_properties("gone").await;
    assert!(e.as_ref().is_err_and(NovaError::is_not_found), "{e:?}");
    Ok(())
}

#[tokio::test]
async fn not_found_is_typed() -> R {
    let s = cloud("2.96", 1).await;
    Mock::given(method("GET"))
        .and(path("/v2.1/servers/gone"))
        .respond_with(ResponseTemplate::new(404).set_body_json(
            json!({"itemNotFound": {"code": 404, "message": "Instance gone could not be found."}}),
        ))
        .mount(&s)
        .await;
    let c = NovaClient::connect(cfg(&s.uri()), fast()).await?;
    let e = c.get_server("gone").await;
    assert!(e.as_ref().is_err_and(NovaError::is_not_found), "{e:?}");
    Ok(())
}

#[tokio::test]
async fn concurrent_callers_share_one_token() -> R {
    let s = cloud("2.96", 1).await;
    Mock::given(method("GET"))
        .and(path("/v2.1/os-services"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_delay(Duration::from_millis(20))
                .set_body_json(services_doc()),
        )
        .expect(10)
        .mount(&s)
        .await;
    // Not connected yet: all ten race for the first token; one Keystone call.
    let c = NovaClient::new(cfg(&s.uri()), fast())?;
    let calls = (0..10).map(|_| {
        let c = c.clone();
        tokio::spawn(async move { c.list_compute_services().await })
    });
    for r in futures_join(calls).await {
        assert_eq!(r??.len(), 2);
    }
    Ok(())
}

async fn futures_join<T>(
    handles: impl Iterator<Item = tokio::task::JoinHandle<T>>,
) -> Vec<Result<T, tokio::task::JoinError>> {
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await);
    }
    out
}

#[tokio::test]
async fn keystone_down_is_unreachable_not_auth() -> R {
    let s = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v3/auth/tokens"))
        .respond_with(ResponseTemplate::new(503).set_body_string("keystone is restarting"))
        .expect(3)
        .mount(&s)
        .await;
    match NovaClient::connect(cfg(&s.uri()), fast()).await {
        Err(e @ NovaError::Unreachable { .. }) => {
            assert!(e.to_string().contains("keystone is restarting"), "{e}");
        }
        other => panic!("expected Unreachable, got {other:?}"),
    }
    Ok(())
}

#[tokio::test]
async fn service_update_that_nova_is_slow_to_answer_is_confirmed_by_reading_back() -> R {
    // Nova saved the disable but waits on an RPC to the dead compute.
    let s = cloud("2.96", 1).await;
    let id = "11111111-0000-0000-0000-000000000001";
    Mock::given(method("PUT"))
        .and(path(format!("/v2.1/os-services/{id}")))
        .respond_with(ResponseTemplate::new(200).set_delay(Duration::from_secs(3)))
        .expect(1)
        .mount(&s)
        .await;
    let mut after = services_doc();
    after["services"][0]["status"] = json!("disabled");
    after["services"][0]["disabled_reason"] = json!("vigil: incident 9");
    Mock::given(method("GET"))
        .and(path("/v2.1/os-services"))
        .respond_with(ResponseTemplate::new(200).set_body_json(services_doc()))
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&s)
        .await;
    Mock::given(method("GET"))
        .and(path("/v2.1/os-services"))
        .respond_with(ResponseTemplate::new(200).set_body_json(after))
        .with_priority(2)
        .mount(&s)
        .await;
    let opts = ClientOptions {
        service_update_timeout: Duration::from_millis(200),
        ..fast()
    };
    let c = NovaClient::connect(cfg(&s.uri()), opts).await?;
    let svc = c.list_compute_services().await?.remove(0);
    let t = Instant::now();
    c.disable_service(&svc, "vigil: incident 9").await?;
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    Ok(())
}

#[tokio::test]
async fn service_update_not_confirmed_is_unreachable() -> R {
    let s = cloud("2.96", 1).await;
    let id = "11111111-0000-0000-0000-000000000001";
    Mock::given(method("PUT"))
        .and(path(format!("/v2.1/os-services/{id}")))
        .respond_with(ResponseTemplate::new(503))
        .expect(3)
        .mount(&s)
        .await;
    Mock::given(method("GET"))
        .and(path("/v2.1/os-services"))
        .respond_with(ResponseTemplate::new(200).set_body_json(services_doc()))
        .mount(&s)
        .await;
    let c = NovaClient::connect(cfg(&s.uri()), fast()).await?;
    let svc = c.list_compute_services().await?.remove(0);
    match c.set_forced_down(&svc, true).await {
        Err(NovaError::Unreachable {
            attempts, cause, ..
        }) => {
            assert_eq!(attempts, 3);
            assert!(cause.contains("did not confirm"), "{cause}");
        }
        other => panic!("expected Unreachable, got {other:?}"),
    }
    Ok(())
}

/// How the raw compute endpoint below treats the evacuate POST.
#[derive(Clone, Copy)]
enum Lost {
    /// Reads the request, never answers (nova-api SIGSTOPped after accept).
    Silent,
    /// Reads the request, then resets the connection.
    Reset,
    /// Reads the request, answers 500 (applied or not: nobody knows).
    Http500,
}

/// A compute endpoint on a bare TCP listener: the version document for
/// GETs, the `lost` behaviour for POSTs, counting the POSTs it received.
async fn raw_compute(
    lost: Lost,
) -> std::io::Result<(String, std::sync::Arc<std::sync::atomic::AtomicUsize>)> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/v2.1", listener.local_addr()?);
    let posts = std::sync::Arc::new(AtomicUsize::new(0));
    let counted = posts.clone();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let posts = counted.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                // Head and (small) body of one request; bounded.
                while buf.len() < 65536 {
                    match sock.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                    let text = String::from_utf8_lossy(&buf);
                    if let Some(end) = text.find("\r\n\r\n") {
                        let len = text[..end]
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                            })
                            .unwrap_or(0);
                        if buf.len() >= end + 4 + len {
                            break;
                        }
                    }
                }
                if buf.starts_with(b"GET") {
                    let body = json!({"version": {"id": "v2.1", "status": "CURRENT",
                        "version": "2.96", "min_version": "2.1"}})
                    .to_string();
                    let reply = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\
                         content-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = sock.write_all(reply.as_bytes()).await;
                    return;
                }
                posts.fetch_add(1, Ordering::SeqCst);
                match lost {
                    Lost::Silent => {
                        tokio::time::sleep(Duration::from_secs(30)).await;
                    }
                    Lost::Reset => {
                        // SO_LINGER 0: close sends RST, not FIN.
                        #[allow(
                            deprecated,
                            reason = "a non-zero linger blocks on drop; zero does not"
                        )]
                        let _ = sock.set_linger(Some(Duration::ZERO));
                        drop(sock);
                    }
                    Lost::Http500 => {
                        let body = r#"{"computeFault": {"code": 500, "message": "lost"}}"#;
                        let reply = format!(
                            "HTTP/1.1 500 Internal Server Error\r\ncontent-type: application/json\r\n\
                             content-length: {}\r\nconnection: close\r\n\r\n{body}",
                            body.len()
                        );
                        let _ = sock.write_all(reply.as_bytes()).await;
                    }
                }
            });
        }
    });
    Ok((url, posts))
}

#[tokio::test]
async fn a_lost_evacuate_answer_may_have_been_applied_and_is_sent_once() -> R {
    for (lost, name, cause_has) in [
        (Lost::Silent, "no answer", "timed out"),
        (Lost::Reset, "connection reset", ""),
        (Lost::Http500, "HTTP 500", "HTTP 500"),
    ] {
        let keystone = cloud("2.96", 1).await;
        let (compute, posts) = raw_compute(lost).await?;
        let mut c = cfg(&keystone.uri());
        c.compute_endpoint_override = Some(compute.clone());
        let client = NovaClient::connect(c, fast()).await?;
        let e = client
            .evacuate("srv-1", &EvacuateRequest::default(), Microversion::V2_94)
            .await;
        match e {
            Err(
                ref err @ NovaError::Unreachable {
                    outcome_unknown,
                    attempts,
                    ref cause,
                    ..
                },
            ) => {
                assert!(outcome_unknown, "{name}: {err}");
                assert_eq!(attempts, 1, "{name}: {err}");
                assert!(cause.contains(cause_has), "{name}: {cause}");
                assert!(
                    err.to_string().contains("may have been applied"),
                    "{name}: {err}"
                );
            }
            other => panic!("{name}: expected Unreachable, got {other:?}"),
        }
        assert_eq!(
            posts.load(std::sync::atomic::Ordering::SeqCst),
            1,
            "{name}: the evacuate POST must reach {compute} exactly once"
        );
    }
    Ok(())
}

/// Every call carries one `X-OpenStack-Request-Id` (`req-<uuid>`, what
/// Nova accepts as a global request id and logs), the same on each retry
/// of that call and a new one for the next call.
#[tokio::test]
async fn each_call_sends_its_own_request_id_on_every_attempt() -> R {
    let s = cloud("2.96", 1).await;
    Mock::given(method("GET"))
        .and(path("/v2.1/os-services"))
        .respond_with(ResponseTemplate::new(503))
        .mount(&s)
        .await;
    let c = NovaClient::connect(cfg(&s.uri()), fast()).await?;
    for _ in 0..2 {
        assert!(c.list_compute_services().await.is_err());
    }
    let ids: Vec<String> = s
        .received_requests()
        .await
        .unwrap_or_default()
        .iter()
        .filter(|r| r.url.path() == "/v2.1/os-services")
        .map(|r| {
            r.headers
                .get("x-openstack-request-id")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("(none)")
                .to_string()
        })
        .collect();
    assert_eq!(ids.len(), 6, "3 attempts per call: {ids:?}");
    for id in &ids {
        let uuid = id.strip_prefix("req-").unwrap_or("");
        assert!(
            uuid.len() == 36 && uuid.chars().all(|c| c.is_ascii_hexdigit() || c == '-'),
            "not req-<uuid>: {id}"
        );
    }
    assert!(ids[..3].iter().all(|i| *i == ids[0]), "{ids:?}");
    assert!(ids[3..].iter().all(|i| *i == ids[3]), "{ids:?}");
    assert_ne!(ids[0], ids[3], "a new call, a new id");
    Ok(())
}
