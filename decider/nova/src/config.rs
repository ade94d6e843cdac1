//! OpenStack credentials the way operators already have them: `clouds.yaml`
//! (with `secure.yaml`) selected by `OS_CLOUD`, or `OS_*` variables.
//!
//! Supported: Keystone v3 `password` (user and project by name + domain or by
//! id) and `v3applicationcredential` (id, or name + user), `region_name`,
//! `interface`, `cacert`, `verify: false` / `insecure`, and
//! `compute_endpoint_override`. Vendor `profile`s and TLS client certificates
//! are refused with an error rather than silently ignored.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_yaml_ng::Value;

use crate::Secret;

/// Which catalog interface to use for the compute endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Interface {
    #[default]
    Public,
    Internal,
    Admin,
}

impl Interface {
    pub fn as_str(&self) -> &'static str {
        match self {
            Interface::Public => "public",
            Interface::Internal => "internal",
            Interface::Admin => "admin",
        }
    }

    /// Accepts `public`, `internal`, `admin` and the v2-era `publicURL`,
    /// `internalURL`, `adminURL` spellings still found in old rc files.
    pub fn parse(s: &str) -> Option<Self> {
        let s = s.trim();
        let s = s.strip_suffix("URL").unwrap_or(s);
        match s.to_ascii_lowercase().as_str() {
            "public" => Some(Interface::Public),
            "internal" => Some(Interface::Internal),
            "admin" => Some(Interface::Admin),
            _ => None,
        }
    }
}

/// A Keystone domain, by id or by name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DomainRef {
    Id(String),
    Name(String),
}

/// A user, by id (globally unique) or by name within a domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserRef {
    Id(String),
    Name { name: String, domain: DomainRef },
}

/// A project, by id or by name within a domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProjectRef {
    Id(String),
    Name { name: String, domain: DomainRef },
}

/// An application credential, by id or by name + its owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppCredRef {
    Id(String),
    Name { name: String, user: UserRef },
}

/// How to get a token. `Debug` never shows the secrets (see [`Secret`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Auth {
    /// `password` / `v3password`, always project-scoped (Nova's admin APIs
    /// need a project-scoped token with the admin role).
    Password {
        user: UserRef,
        password: Secret,
        project: ProjectRef,
    },
    /// `v3applicationcredential`: the scope comes with the credential.
    ApplicationCredential {
        credential: AppCredRef,
        secret: Secret,
    },
}

/// One cloud's connection settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloudConfig {
    /// The `clouds.yaml` entry, or `None` when it came from `OS_*` variables.
    pub cloud: Option<String>,
    /// Keystone's URL; `/v3` is appended when it does not end with it.
    pub auth_url: String,
    pub auth: Auth,
    pub region_name: Option<String>,
    pub interface: Interface,
    /// Extra CA bundle (PEM) trusted on top of the system roots.
    pub cacert: Option<PathBuf>,
    /// Skip TLS verification (logged as a warning at every client start).
    pub insecure: bool,
    /// Use this compute URL instead of the catalog's.
    pub compute_endpoint_override: Option<String>,
    /// Upper bound for the microversions this client sends
    /// (`OS_COMPUTE_API_VERSION` / `compute_api_version`).
    pub compute_api_version: Option<crate::Microversion>,
}

/// What went wrong reading credentials. Messages name the file, cloud and key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("OS_CLOUD={cloud} but no clouds.yaml was found (looked in: {searched})")]
    NoCloudsFile { cloud: String, searched: String },
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not valid YAML: {message}")]
    Yaml { path: PathBuf, message: String },
    #[error("cloud {cloud:?} is not in {path} (clouds there: {known})")]
    UnknownCloud {
        cloud: String,
        path: PathBuf,
        known: String,
    },
    #[error("no OpenStack credentials: set OS_CLOUD (with a clouds.yaml) or OS_AUTH_URL and the other OS_* variables")]
    NothingConfigured,
    #[error("{origin}: {key} is required{hint}")]
    Missing {
        origin: String,
        key: &'static str,
        hint: &'static str,
    },
    #[error("{origin}: {key} = {value:?} is not valid: {expected}")]
    Invalid {
        origin: String,
        key: &'static str,
        value: String,
        expected: &'static str,
    },
    #[error("{origin}: {what} is not supported by vigil-nova")]
    Unsupported { origin: String, what: String },
}

/// Where `clouds.yaml` and `secure.yaml` are looked for, in order.
#[derive(Debug, Clone)]
pub struct SearchPath {
    pub dirs: Vec<PathBuf>,
}

impl SearchPath {
    /// The usual order: the current directory, `$XDG_CONFIG_HOME/openstack`
    /// (default `~/.config/openstack`), `/etc/openstack`.
    pub fn standard(vars: &BTreeMap<String, String>) -> Self {
        let mut dirs = vec![PathBuf::from(".")];
        if let Some(xdg) = vars.get("XDG_CONFIG_HOME").filter(|v| !v.is_empty()) {
            dirs.push(Path::new(xdg).join("openstack"));
        } else if let Some(home) = vars.get("HOME").filter(|v| !v.is_empty()) {
            dirs.push(Path::new(home).join(".config").join("openstack"));
        }
        dirs.push(PathBuf::from("/etc/openstack"));
        Self { dirs }
    }
}

impl CloudConfig {
    /// Loads from this process's environment: `OS_CLOUD` (+ clouds.yaml), else
    /// `OS_*` variables.
    pub fn load() -> Result<Self, ConfigError> {
        let vars: BTreeMap<String, String> = std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
            .collect();
        let search = SearchPath::standard(&vars);
        Self::load_from(&vars, &search)
    }

    /// [`CloudConfig::load`] with the variables and search path given (tests).
    pub fn load_from(
        vars: &BTreeMap<String, String>,
        search: &SearchPath,
    ) -> Result<Self, ConfigError> {
        let get = |k: &str| vars.get(k).filter(|v| !v.is_empty()).cloned();
        if let Some(cloud) = get("OS_CLOUD") {
            let file = match get("OS_CLIENT_CONFIG_FILE") {
                Some(f) => PathBuf::from(f),
                None => first_existing(search, "clouds.yaml").ok_or_else(|| {
                    ConfigError::NoCloudsFile {
                        cloud: cloud.clone(),
                        searched: search
                            .dirs
                            .iter()
                            .map(|d| d.display().to_string())
                            .collect::<Vec<_>>()
                            .join(", "),
                    }
                })?,
            };
            let secure = match get("OS_CLIENT_SECURE_FILE") {
                Some(f) => Some(PathBuf::from(f)),
                None => first_existing(search, "secure.yaml"),
            };
            let mut cfg = Self::from_clouds_file(&file, secure.as_deref(), &cloud)?;
            if cfg.compute_api_version.is_none() {
                cfg.compute_api_version =
                    compute_api_version(get("OS_COMPUTE_API_VERSION"), "OS_COMPUTE_API_VERSION")?;
            }
            return Ok(cfg);
        }
        if get("OS_AUTH_URL").is_some() {
            return Self::from_os_vars(vars);
        }
        Err(ConfigError::NothingConfigured)
    }

    /// One cloud from a clouds.yaml file, merged with a secure.yaml if given.
    pub fn from_clouds_file(
        clouds: &Path,
        secure: Option<&Path>,
        cloud: &str,
    ) -> Result<Self, ConfigError> {
        let read = |p: &Path| {
            std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                path: p.to_path_buf(),
                source,
            })
        };
        let text = read(clouds)?;
        let secure_text = match secure {
            Some(p) => Some((p, read(p)?)),
            None => None,
        };
        Self::from_clouds_yaml(
            clouds,
            &text,
            secure_text.as_ref().map(|(p, t)| (*p, t.as_str())),
            cloud,
        )
    }

    /// Parses clouds.yaml text (`path` is only for messages and for resolving
    /// a relative `cacert`).
    pub fn from_clouds_yaml(
        path: &Path,
        text: &str,
        secure: Option<(&Path, &str)>,
        cloud: &str,
    ) -> Result<Self, ConfigError> {
        let parse = |p: &Path, t: &str| -> Result<Value, ConfigError> {
            serde_yaml_ng::from_str(t).map_err(|e| ConfigError::Yaml {
                path: p.to_path_buf(),
                message: e.to_string(),
            })
        };
        let doc = parse(path, text)?;
        let clouds = doc.get("clouds").and_then(Value::as_mapping);
        let known = || {
            clouds
                .map(|m| {
                    m.keys()
                        .filter_map(|k| k.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                })
                .unwrap_or_default()
        };
        let mut entry = clouds.and_then(|m| m.get(cloud)).cloned().ok_or_else(|| {
            ConfigError::UnknownCloud {
                cloud: cloud.to_owned(),
                path: path.to_path_buf(),
                known: known(),
            }
        })?;
        if let Some((spath, stext)) = secure {
            let sdoc = parse(spath, stext)?;
            if let Some(sentry) = sdoc.get("clouds").and_then(|c| c.get(cloud)) {
                merge(&mut entry, sentry.clone());
            }
        }
        let origin = format!("{} (cloud {cloud})", path.display());
        let mut flat = BTreeMap::new();
        if let Some(auth) = entry.get("auth").and_then(Value::as_mapping) {
            for (k, v) in auth {
                if let (Some(k), Some(v)) = (k.as_str(), scalar(v)) {
                    flat.insert(k.to_owned(), v);
                }
            }
        }
        let top = |k: &str| entry.get(k).and_then(scalar);
        if entry.get("profile").is_some() {
            return Err(ConfigError::Unsupported {
                origin,
                what: "`profile` (vendor profiles); write the settings out in full".into(),
            });
        }
        if top("cert").is_some() || top("key").is_some() {
            return Err(ConfigError::Unsupported {
                origin,
                what: "TLS client certificates (`cert`/`key`)".into(),
            });
        }
        if let Some(v) = top("identity_api_version") {
            if v != "3" && v != "3.0" {
                return Err(ConfigError::Unsupported {
                    origin,
                    what: format!("identity_api_version {v} (only Keystone v3)"),
                });
            }
        }
        let auth_type = top("auth_type");
        let region_name = top("region_name").or_else(|| {
            // `regions:` is a list of names (or of {name: ..}); take the first,
            // as openstacksdk does when no region is named.
            let first = entry.get("regions")?.as_sequence()?.first()?.clone();
            scalar(&first).or_else(|| first.get("name").and_then(scalar))
        });
        let interface = match top("interface").or_else(|| top("endpoint_type")) {
            Some(i) => Interface::parse(&i).ok_or(ConfigError::Invalid {
                origin: origin.clone(),
                key: "interface",
                value: i,
                expected: "public, internal or admin",
            })?,
            None => Interface::Public,
        };
        let verify = match top("verify") {
            Some(v) => parse_bool(&v).ok_or(ConfigError::Invalid {
                origin: origin.clone(),
                key: "verify",
                value: v,
                expected: "true or false",
            })?,
            None => true,
        };
        let insecure = match top("insecure") {
            Some(v) => parse_bool(&v).ok_or(ConfigError::Invalid {
                origin: origin.clone(),
                key: "insecure",
                value: v,
                expected: "true or false",
            })?,
            None => false,
        };
        let base = path.parent().unwrap_or(Path::new("."));
        let cacert = top("cacert").map(|c| {
            let p = PathBuf::from(c);
            if p.is_relative() {
                base.join(p)
            } else {
                p
            }
        });
        let compute_api_version =
            compute_api_version(top("compute_api_version"), "compute_api_version")?;
        let (auth_url, auth) = auth_from_flat(&origin, auth_type.as_deref(), &flat)?;
        Ok(CloudConfig {
            cloud: Some(cloud.to_owned()),
            auth_url,
            auth,
            region_name,
            interface,
            cacert,
            insecure: insecure || !verify,
            compute_endpoint_override: top("compute_endpoint_override"),
            compute_api_version,
        })
    }

    /// From `OS_*` variables (an openrc file's).
    pub fn from_os_vars(vars: &BTreeMap<String, String>) -> Result<Self, ConfigError> {
        let get = |k: &str| vars.get(k).filter(|v| !v.is_empty()).cloned();
        let origin = "OS_* environment".to_owned();
        // Map auth option names to OS_ variables: OS_ + upper-case name.
        let mut flat = BTreeMap::new();
        for key in AUTH_KEYS {
            if let Some(v) = get(&format!("OS_{}", key.to_ascii_uppercase())) {
                flat.insert((*key).to_owned(), v);
            }
        }
        let interface = match get("OS_INTERFACE").or_else(|| get("OS_ENDPOINT_TYPE")) {
            Some(i) => Interface::parse(&i).ok_or(ConfigError::Invalid {
                origin: origin.clone(),
                key: "OS_INTERFACE",
                value: i,
                expected: "public, internal or admin",
            })?,
            None => Interface::Public,
        };
        let insecure = match get("OS_INSECURE") {
            Some(v) => parse_bool(&v).ok_or(ConfigError::Invalid {
                origin: origin.clone(),
                key: "OS_INSECURE",
                value: v,
                expected: "true or false",
            })?,
            None => false,
        };
        if get("OS_CERT").is_some() || get("OS_KEY").is_some() {
            return Err(ConfigError::Unsupported {
                origin,
                what: "TLS client certificates (OS_CERT/OS_KEY)".into(),
            });
        }
        let compute_api_version =
            compute_api_version(get("OS_COMPUTE_API_VERSION"), "OS_COMPUTE_API_VERSION")?;
        let auth_type = get("OS_AUTH_TYPE");
        let (auth_url, auth) = auth_from_flat(&origin, auth_type.as_deref(), &flat)?;
        Ok(CloudConfig {
            cloud: None,
            auth_url,
            auth,
            region_name: get("OS_REGION_NAME"),
            interface,
            cacert: get("OS_CACERT").map(PathBuf::from),
            insecure,
            compute_endpoint_override: get("OS_COMPUTE_ENDPOINT_OVERRIDE"),
            compute_api_version,
        })
    }

    /// Keystone's v3 base URL (no trailing slash).
    pub fn identity_v3_url(&self) -> String {
        let u = self.auth_url.trim_end_matches('/');
        if u.ends_with("/v3") {
            u.to_owned()
        } else {
            format!("{u}/v3")
        }
    }
}

/// The auth plugin options understood (clouds.yaml `auth:` keys; as
/// environment variables they are `OS_` + the key in upper case).
const AUTH_KEYS: &[&str] = &[
    "auth_url",
    "username",
    "user_id",
    "password",
    "user_domain_name",
    "user_domain_id",
    "project_name",
    "project_id",
    "tenant_name",
    "tenant_id",
    "project_domain_name",
    "project_domain_id",
    "domain_name",
    "domain_id",
    "default_domain_name",
    "default_domain_id",
    "default_domain",
    "application_credential_id",
    "application_credential_name",
    "application_credential_secret",
];

fn auth_from_flat(
    origin: &str,
    auth_type: Option<&str>,
    flat: &BTreeMap<String, String>,
) -> Result<(String, Auth), ConfigError> {
    let get = |k: &str| flat.get(k).filter(|v| !v.is_empty()).cloned();
    let missing = |key: &'static str, hint: &'static str| ConfigError::Missing {
        origin: origin.to_owned(),
        key,
        hint,
    };
    let auth_url = get("auth_url").ok_or_else(|| missing("auth_url", ""))?;
    // Domain defaults as openstackclient applies them: default_domain_id /
    // default_domain_name for whichever of user and project names no domain;
    // failing that the domain with id "default".
    let default_domain = || {
        get("default_domain_id")
            .or_else(|| get("default_domain"))
            .map(DomainRef::Id)
            .or_else(|| get("default_domain_name").map(DomainRef::Name))
            .unwrap_or_else(|| DomainRef::Id("default".into()))
    };
    let user_domain = || {
        get("user_domain_id")
            .map(DomainRef::Id)
            .or_else(|| get("user_domain_name").map(DomainRef::Name))
            .unwrap_or_else(default_domain)
    };
    let user = || -> Option<UserRef> {
        if let Some(id) = get("user_id") {
            return Some(UserRef::Id(id));
        }
        get("username").map(|name| UserRef::Name {
            name,
            domain: user_domain(),
        })
    };
    let kind = auth_type
        .unwrap_or(
            if get("application_credential_secret").is_some() && get("password").is_none() {
                "v3applicationcredential"
            } else {
                "password"
            },
        )
        .to_ascii_lowercase()
        .replace('_', "");
    let auth = match kind.as_str() {
        "password" | "v3password" => {
            let user = user().ok_or_else(|| missing("username or user_id", ""))?;
            let password = get("password").ok_or_else(|| {
                missing(
                    "password",
                    " (put it in secure.yaml to keep it out of clouds.yaml)",
                )
            })?;
            let project_domain = || {
                get("project_domain_id")
                    .map(DomainRef::Id)
                    .or_else(|| get("project_domain_name").map(DomainRef::Name))
                    .unwrap_or_else(default_domain)
            };
            let project = if let Some(id) = get("project_id").or_else(|| get("tenant_id")) {
                ProjectRef::Id(id)
            } else if let Some(name) = get("project_name").or_else(|| get("tenant_name")) {
                ProjectRef::Name {
                    name,
                    domain: project_domain(),
                }
            } else {
                return Err(missing(
                    "project_name or project_id",
                    " (Nova's admin calls need a project-scoped token)",
                ));
            };
            Auth::Password {
                user,
                password: Secret::new(password),
                project,
            }
        }
        "v3applicationcredential" | "applicationcredential" => {
            let secret = get("application_credential_secret")
                .ok_or_else(|| missing("application_credential_secret", ""))?;
            let credential = if let Some(id) = get("application_credential_id") {
                AppCredRef::Id(id)
            } else if let Some(cname) = get("application_credential_name") {
                let user = user().ok_or_else(|| {
                    missing(
                        "username or user_id",
                        " (an application credential named by name needs its owner)",
                    )
                })?;
                AppCredRef::Name { name: cname, user }
            } else {
                return Err(missing(
                    "application_credential_id or application_credential_name",
                    "",
                ));
            };
            Auth::ApplicationCredential {
                credential,
                secret: Secret::new(secret),
            }
        }
        _ => {
            return Err(ConfigError::Invalid {
                origin: origin.to_owned(),
                key: "auth_type",
                value: auth_type.unwrap_or_default().to_owned(),
                expected: "password, v3password or v3applicationcredential",
            })
        }
    };
    Ok((auth_url, auth))
}

fn compute_api_version(
    v: Option<String>,
    key: &'static str,
) -> Result<Option<crate::Microversion>, ConfigError> {
    match v {
        None => Ok(None),
        // "2" / "2.1" without a minor mean "no particular microversion" to
        // novaclient; treat "2" as no cap.
        Some(v) if v.trim() == "2" => Ok(None),
        Some(v) => v.parse().map(Some).map_err(|_| ConfigError::Invalid {
            origin: "compute API version".into(),
            key,
            value: v,
            expected: "MAJOR.MINOR such as 2.94, or latest",
        }),
    }
}

fn first_existing(search: &SearchPath, file: &str) -> Option<PathBuf> {
    search
        .dirs
        .iter()
        .map(|d| d.join(file))
        .find(|p| p.is_file())
}

fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn parse_bool(s: &str) -> Option<bool> {
    match s.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Some(true),
        "0" | "false" | "no" | "off" => Some(false),
        _ => None,
    }
}

/// secure.yaml values win over clouds.yaml ones, mappings merged key by key.
fn merge(base: &mut Value, over: Value) {
    match (base, over) {
        (Value::Mapping(b), Value::Mapping(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(existing) => merge(existing, v),
                    None => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (b, o) => *b = o,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLOUDS: &str = r#"
clouds:
  minicloud:
    auth:
      auth_url: http://127.0.0.1:5000/v3
      username: admin
      password: admin
      project_name: admin
      user_domain_name: Default
      project_domain_name: Default
    region_name: RegionOne
    interface: public
    identity_api_version: 3
  appcred:
    auth_type: v3applicationcredential
    auth:
      auth_url: https://keystone.example:5000
      application_credential_id: 0123abcd
    regions: [RegionTwo, RegionThree]
    interface: internalURL
    cacert: ca.pem
    verify: false
  appcred-by-name:
    auth_type: v3applicationcredential
    auth:
      auth_url: http://k/v3
      application_credential_name: vigil
      application_credential_secret: s3cret
      username: vigil
      user_domain_id: abc
  ids:
    auth:
      auth_url: http://k/v3
      user_id: u1
      password: p
      project_id: 1234
  bad-interface:
    auth: {auth_url: http://k, username: a, password: b, project_name: c}
    interface: sideways
"#;
    const SECURE: &str = r#"
clouds:
  appcred:
    auth:
      application_credential_secret: from-secure-yaml
"#;

    fn load(cloud: &str) -> Result<CloudConfig, ConfigError> {
        CloudConfig::from_clouds_yaml(
            Path::new("/etc/openstack/clouds.yaml"),
            CLOUDS,
            Some((Path::new("/etc/openstack/secure.yaml"), SECURE)),
            cloud,
        )
    }

    #[test]
    fn password_by_names() -> Result<(), ConfigError> {
        let c = load("minicloud")?;
        assert_eq!(c.identity_v3_url(), "http://127.0.0.1:5000/v3");
        assert_eq!(c.region_name.as_deref(), Some("RegionOne"));
        assert_eq!(c.interface, Interface::Public);
        assert!(!c.insecure);
        assert_eq!(
            c.auth,
            Auth::Password {
                user: UserRef::Name {
                    name: "admin".into(),
                    domain: DomainRef::Name("Default".into())
                },
                password: Secret::new("admin"),
                project: ProjectRef::Name {
                    name: "admin".into(),
                    domain: DomainRef::Name("Default".into())
                },
            }
        );
        // The password is in there, but never in Debug output.
        assert!(!format!("{c:?}").contains("password: \"admin\""));
        assert!(format!("{c:?}").contains("***"));
        Ok(())
    }

    #[test]
    fn application_credential_with_secure_yaml() -> Result<(), ConfigError> {
        let c = load("appcred")?;
        assert_eq!(c.identity_v3_url(), "https://keystone.example:5000/v3");
        assert_eq!(c.region_name.as_deref(), Some("RegionTwo"));
        assert_eq!(c.interface, Interface::Internal);
        assert!(c.insecure, "verify: false means insecure");
        assert_eq!(c.cacert, Some(PathBuf::from("/etc/openstack/ca.pem")));
        assert_eq!(
            c.auth,
            Auth::ApplicationCredential {
                credential: AppCredRef::Id("0123abcd".into()),
                secret: Secret::new("from-secure-yaml"),
            }
        );
        let by_name = load("appcred-by-name")?;
        assert_eq!(
            by_name.auth,
            Auth::ApplicationCredential {
                credential: AppCredRef::Name {
                    name: "vigil".into(),
                    user: UserRef::Name {
                        name: "vigil".into(),
                        domain: DomainRef::Id("abc".into())
                    }
                },
                secret: Secret::new("s3cret"),
            }
        );
        Ok(())
    }

    #[test]
    fn ids_and_numbers() -> Result<(), ConfigError> {
        let c = load("ids")?;
        assert_eq!(
            c.auth,
            Auth::Password {
                user: UserRef::Id("u1".into()),
                password: Secret::new("p"),
                project: ProjectRef::Id("1234".into()),
            }
        );
        Ok(())
    }

    #[test]
    fn errors_name_what_is_wrong() {
        let e = load("nope").map(|_| ()).err().map(|e| e.to_string());
        let e = e.unwrap_or_default();
        assert!(e.contains("\"nope\"") && e.contains("minicloud"), "{e}");
        let e = load("bad-interface")
            .map(|_| ())
            .err()
            .map(|e| e.to_string());
        assert!(e.unwrap_or_default().contains("interface = \"sideways\""));
    }

    fn vars(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn os_variables() -> Result<(), ConfigError> {
        let v = vars(&[
            ("OS_AUTH_URL", "http://k:5000/v3/"),
            ("OS_USERNAME", "admin"),
            ("OS_PASSWORD", "pw"),
            ("OS_PROJECT_NAME", "admin"),
            ("OS_USER_DOMAIN_NAME", "Default"),
            ("OS_PROJECT_DOMAIN_ID", "default"),
            ("OS_REGION_NAME", "RegionOne"),
            ("OS_INTERFACE", "admin"),
            ("OS_INSECURE", "true"),
            ("OS_CACERT", "/tmp/ca.pem"),
            ("OS_COMPUTE_API_VERSION", "2.94"),
        ]);
        let c = CloudConfig::load_from(&v, &SearchPath { dirs: vec![] })?;
        assert_eq!(c.cloud, None);
        assert_eq!(c.identity_v3_url(), "http://k:5000/v3");
        assert_eq!(c.interface, Interface::Admin);
        assert!(c.insecure);
        assert_eq!(c.compute_api_version, Some(crate::Microversion::V2_94));
        assert_eq!(
            c.auth,
            Auth::Password {
                user: UserRef::Name {
                    name: "admin".into(),
                    domain: DomainRef::Name("Default".into())
                },
                password: Secret::new("pw"),
                project: ProjectRef::Name {
                    name: "admin".into(),
                    domain: DomainRef::Id("default".into())
                },
            }
        );
        let v = vars(&[
            ("OS_AUTH_URL", "http://k:5000"),
            ("OS_AUTH_TYPE", "v3applicationcredential"),
            ("OS_APPLICATION_CREDENTIAL_ID", "id1"),
            ("OS_APPLICATION_CREDENTIAL_SECRET", "sec"),
        ]);
        let c = CloudConfig::from_os_vars(&v)?;
        assert!(matches!(c.auth, Auth::ApplicationCredential { .. }));
        // No domain anywhere: the "default" domain id, as openstackclient does.
        let v = vars(&[
            ("OS_AUTH_URL", "http://k"),
            ("OS_USERNAME", "u"),
            ("OS_PASSWORD", "p"),
            ("OS_PROJECT_NAME", "x"),
        ]);
        let c = CloudConfig::from_os_vars(&v)?;
        assert!(matches!(
            c.auth,
            Auth::Password { user: UserRef::Name { domain: DomainRef::Id(ref d), .. }, .. } if d == "default"
        ));
        Ok(())
    }

    #[test]
    fn missing_pieces() {
        let v = vars(&[
            ("OS_AUTH_URL", "http://k"),
            ("OS_USERNAME", "u"),
            ("OS_PASSWORD", "p"),
        ]);
        let e = CloudConfig::from_os_vars(&v)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("project_name or project_id"), "{e}");
        let e = CloudConfig::load_from(&BTreeMap::new(), &SearchPath { dirs: vec![] })
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("OS_CLOUD"), "{e}");
    }

    #[test]
    fn os_cloud_search_path() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let etc = dir.path().join("etc");
        std::fs::create_dir_all(&etc)?;
        std::fs::write(etc.join("clouds.yaml"), CLOUDS)?;
        std::fs::write(etc.join("secure.yaml"), SECURE)?;
        let search = SearchPath {
            dirs: vec![dir.path().join("cwd"), etc.clone()],
        };
        let c = CloudConfig::load_from(&vars(&[("OS_CLOUD", "appcred")]), &search)?;
        assert_eq!(c.cloud.as_deref(), Some("appcred"));
        assert!(
            matches!(&c.auth, Auth::ApplicationCredential { secret, .. } if secret.expose() == "from-secure-yaml")
        );
        assert_eq!(c.cacert, Some(etc.join("ca.pem")));
        // OS_CLIENT_CONFIG_FILE names the file outright.
        let other = dir.path().join("mine.yaml");
        std::fs::write(&other, CLOUDS)?;
        let c = CloudConfig::load_from(
            &vars(&[
                ("OS_CLOUD", "ids"),
                ("OS_CLIENT_CONFIG_FILE", other.to_str().unwrap_or_default()),
            ]),
            &SearchPath { dirs: vec![] },
        )?;
        assert_eq!(c.cloud.as_deref(), Some("ids"));
        let e = CloudConfig::load_from(
            &vars(&[("OS_CLOUD", "x")]),
            &SearchPath {
                dirs: vec![dir.path().join("none")],
            },
        )
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
        assert!(e.contains("no clouds.yaml"), "{e}");
        Ok(())
    }
}
