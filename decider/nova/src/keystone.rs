//! Keystone v3: token request bodies, token answers, the service catalog.

use std::time::{Duration, Instant, SystemTime};

use serde::Deserialize;
use serde_json::{json, Value};

use crate::config::{AppCredRef, Auth, DomainRef, Interface, ProjectRef, UserRef};
use crate::{NovaError, Secret};

fn domain(d: &DomainRef) -> Value {
    match d {
        DomainRef::Id(id) => json!({ "id": id }),
        DomainRef::Name(name) => json!({ "name": name }),
    }
}

fn user(u: &UserRef) -> serde_json::Map<String, Value> {
    let mut m = serde_json::Map::new();
    match u {
        UserRef::Id(id) => {
            m.insert("id".into(), json!(id));
        }
        UserRef::Name { name, domain: d } => {
            m.insert("name".into(), json!(name));
            m.insert("domain".into(), domain(d));
        }
    }
    m
}

/// The `POST /v3/auth/tokens` body. It holds the secret: never log it.
pub(crate) fn token_request_body(auth: &Auth) -> Value {
    match auth {
        Auth::Password {
            user: u,
            password,
            project,
        } => {
            let mut pu = user(u);
            pu.insert("password".into(), json!(password.expose()));
            let scope = match project {
                ProjectRef::Id(id) => json!({ "project": { "id": id } }),
                ProjectRef::Name { name, domain: d } => {
                    json!({ "project": { "name": name, "domain": domain(d) } })
                }
            };
            json!({ "auth": {
                "identity": { "methods": ["password"], "password": { "user": pu } },
                "scope": scope,
            }})
        }
        Auth::ApplicationCredential { credential, secret } => {
            let mut ac = serde_json::Map::new();
            match credential {
                AppCredRef::Id(id) => {
                    ac.insert("id".into(), json!(id));
                }
                AppCredRef::Name { name, user: u } => {
                    ac.insert("name".into(), json!(name));
                    ac.insert("user".into(), Value::Object(user(u)));
                }
            }
            ac.insert("secret".into(), json!(secret.expose()));
            // No scope: an application credential carries its own.
            json!({ "auth": { "identity": {
                "methods": ["application_credential"],
                "application_credential": ac,
            }}})
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct CatalogEndpoint {
    pub interface: String,
    #[serde(default)]
    pub region: Option<String>,
    #[serde(default)]
    pub region_id: Option<String>,
    pub url: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct CatalogService {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub endpoints: Vec<CatalogEndpoint>,
}

#[derive(Deserialize)]
struct TokenDoc {
    token: TokenBody,
}

#[derive(Deserialize)]
struct TokenBody {
    expires_at: String,
    #[serde(default)]
    issued_at: Option<String>,
    #[serde(default)]
    catalog: Vec<CatalogService>,
    #[serde(default)]
    project: Option<Named>,
    #[serde(default)]
    user: Option<Named>,
    #[serde(default)]
    roles: Vec<Named>,
}

#[derive(Deserialize, Clone, Debug, Default)]
struct Named {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    name: Option<String>,
}

/// The longest Vigil trusts one token, whatever Keystone says (its own
/// default is 1 h; 24 h is generous for any deployment).
pub const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// A token and what came with it.
#[derive(Clone)]
pub(crate) struct Token {
    pub value: Secret,
    /// When to consider it expired, on our monotonic clock: received-at plus
    /// Keystone's (expires_at - issued_at), so clock skew between us and
    /// Keystone does not matter.
    pub valid_until: Instant,
    pub lifetime: Duration,
    pub expires_at: String,
    pub catalog: Vec<CatalogService>,
    pub project_id: Option<String>,
    pub project_name: Option<String>,
    pub user_id: Option<String>,
    pub roles: Vec<String>,
}

impl Token {
    /// Parses a token answer received at `requested_at` (the moment the
    /// request was sent, so the request's own duration eats into the margin
    /// rather than extending the token).
    pub fn parse(value: Secret, body: &[u8], requested_at: Instant) -> Result<Token, String> {
        let doc: TokenDoc = serde_json::from_slice(body).map_err(|e| e.to_string())?;
        let t = doc.token;
        let expires = crate::types::parse_nova_time(&t.expires_at)
            .ok_or_else(|| format!("unparsable expires_at {:?}", t.expires_at))?;
        let issued = t
            .issued_at
            .as_deref()
            .and_then(crate::types::parse_nova_time)
            // Without issued_at, fall back to our wall clock.
            .unwrap_or_else(SystemTime::now);
        // Keystone says how long the token lives; Vigil decides how long it
        // trusts it: never past MAX_TOKEN_LIFETIME (a token "valid for a
        // century" is renewed like any other), and no arithmetic on the
        // outside value can overflow the clock.
        let lifetime = expires
            .duration_since(issued)
            .unwrap_or(Duration::ZERO)
            .min(MAX_TOKEN_LIFETIME);
        Ok(Token {
            value,
            valid_until: requested_at + lifetime,
            lifetime,
            expires_at: t.expires_at,
            catalog: t.catalog,
            project_id: t.project.as_ref().and_then(|p| p.id.clone()),
            project_name: t.project.and_then(|p| p.name),
            user_id: t.user.and_then(|u| u.id),
            roles: t.roles.into_iter().filter_map(|r| r.name).collect(),
        })
    }

    /// Still good for at least `margin` (capped at half its lifetime, so a
    /// short-lived token is not renewed on every call).
    pub fn fresh(&self, now: Instant, margin: Duration) -> bool {
        let margin = margin.min(self.lifetime / 2);
        now + margin < self.valid_until
    }
}

/// Picks the compute endpoint: service type `compute`, the interface asked
/// for, and the region if one is set (matching `region_id` or `region`).
pub(crate) fn compute_endpoint(
    catalog: &[CatalogService],
    interface: Interface,
    region: Option<&str>,
) -> Result<String, NovaError> {
    let found = catalog
        .iter()
        .filter(|s| s.kind == "compute")
        .flat_map(|s| s.endpoints.iter())
        .find(|e| {
            Interface::parse(&e.interface) == Some(interface)
                && region.is_none_or(|r| {
                    e.region_id.as_deref() == Some(r) || e.region.as_deref() == Some(r)
                })
        });
    match found {
        Some(e) => Ok(e.url.trim_end_matches('/').to_owned()),
        None => Err(NovaError::Catalog {
            interface: interface.as_str().to_owned(),
            region: region.map(str::to_owned),
            available: catalog
                .iter()
                .flat_map(|s| {
                    s.endpoints.iter().map(move |e| {
                        format!(
                            "{}/{}/{}",
                            s.kind,
                            e.interface,
                            e.region_id
                                .as_deref()
                                .or(e.region.as_deref())
                                .unwrap_or("-")
                        )
                    })
                })
                .collect::<Vec<_>>()
                .join(", "),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies() {
        let pw = token_request_body(&Auth::Password {
            user: UserRef::Name {
                name: "admin".into(),
                domain: DomainRef::Name("Default".into()),
            },
            password: Secret::new("pw"),
            project: ProjectRef::Name {
                name: "admin".into(),
                domain: DomainRef::Id("default".into()),
            },
        });
        assert_eq!(
            pw,
            json!({"auth": {"identity": {"methods": ["password"], "password": {"user":
                {"name": "admin", "domain": {"name": "Default"}, "password": "pw"}}},
                "scope": {"project": {"name": "admin", "domain": {"id": "default"}}}}})
        );
        let ac = token_request_body(&Auth::ApplicationCredential {
            credential: AppCredRef::Name {
                name: "vigil".into(),
                user: UserRef::Id("u1".into()),
            },
            secret: Secret::new("s"),
        });
        assert_eq!(
            ac,
            json!({"auth": {"identity": {"methods": ["application_credential"],
                "application_credential": {"name": "vigil", "user": {"id": "u1"}, "secret": "s"}}}})
        );
    }

    fn catalog() -> Vec<CatalogService> {
        serde_json::from_value(json!([
            {"type": "identity", "endpoints": [{"interface": "public", "region_id": "R1", "url": "http://k/v3"}]},
            {"type": "compute", "name": "nova", "endpoints": [
                {"interface": "public", "region_id": "R1", "region": "R1", "url": "http://pub1:8774/v2.1/"},
                {"interface": "internal", "region_id": "R1", "url": "http://int1:8774/v2.1"},
                {"interface": "public", "region_id": "R2", "url": "http://pub2:8774/v2.1"}]}
        ]))
        .unwrap_or_default()
    }

    #[test]
    fn endpoint_selection() {
        let c = catalog();
        assert_eq!(
            compute_endpoint(&c, Interface::Public, Some("R2"))
                .ok()
                .as_deref(),
            Some("http://pub2:8774/v2.1")
        );
        assert_eq!(
            compute_endpoint(&c, Interface::Internal, None)
                .ok()
                .as_deref(),
            Some("http://int1:8774/v2.1")
        );
        assert_eq!(
            compute_endpoint(&c, Interface::Public, Some("R1"))
                .ok()
                .as_deref(),
            Some("http://pub1:8774/v2.1")
        );
        let e = compute_endpoint(&c, Interface::Admin, Some("R1"))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            e.contains("interface admin in region R1") && e.contains("compute/internal/R1"),
            "{e}"
        );
    }

    #[test]
    fn token_lifetime_from_keystone_clock() -> Result<(), String> {
        let body = json!({"token": {"expires_at": "2030-01-01T01:00:00.000000Z",
            "issued_at": "2030-01-01T00:00:00.000000Z", "catalog": [],
            "project": {"id": "p", "name": "admin"}, "user": {"id": "u"},
            "roles": [{"id": "r", "name": "admin"}]}});
        let now = Instant::now();
        let t = Token::parse(Secret::new("tok"), body.to_string().as_bytes(), now)?;
        assert_eq!(t.lifetime, Duration::from_secs(3600));
        assert!(t.fresh(now, Duration::from_secs(300)));
        assert!(!t.fresh(now + Duration::from_secs(3400), Duration::from_secs(300)));
        assert_eq!(t.roles, vec!["admin".to_owned()]);
        Ok(())
    }
}

#[cfg(test)]
mod lifetime_tests {
    use super::*;

    #[test]
    fn a_token_keystone_says_lives_for_ever_is_trusted_for_a_day_at_most() {
        let body = br#"{"token":{"expires_at":"9999-12-31T23:59:59.000000Z","issued_at":"1970-01-01T00:00:00.000000Z"}}"#;
        let now = Instant::now();
        let t = Token::parse(Secret::new("t"), body, now).expect("parses");
        assert_eq!(t.lifetime, MAX_TOKEN_LIFETIME);
        assert!(t.valid_until <= now + MAX_TOKEN_LIFETIME);
        let body = br#"{"token":{"expires_at":"2026-01-01T01:00:00Z","issued_at":"2026-01-01T00:00:00Z"}}"#;
        let t = Token::parse(Secret::new("t"), body, now).expect("parses");
        assert_eq!(t.lifetime, Duration::from_secs(3600));
    }
}
