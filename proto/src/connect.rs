//! How a client (the sensor, the decider's CLI) reaches a decider: plain
//! HTTP/2 or TLS, with an optional client certificate, and the rule that a
//! bearer token never crosses a network in clear text unless the operator
//! says so.

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
};

use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity, Uri};

/// TLS files of a client; all optional.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientTls {
    /// CA (PEM) that signed the decider's certificate; unset, the system's
    /// CA store is used.
    pub ca_file: Option<PathBuf>,
    /// Client certificate chain (PEM) for mutual TLS; needs `key_file`.
    pub cert_file: Option<PathBuf>,
    /// Private key (PEM) of `cert_file`.
    pub key_file: Option<PathBuf>,
}

impl ClientTls {
    fn any(&self) -> bool {
        self.ca_file.is_some() || self.cert_file.is_some() || self.key_file.is_some()
    }
}

/// Why no endpoint could be built; each says what to change.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("{url:?} is not a decider URL; pass e.g. https://decider.example:50051")]
    Url {
        url: String,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("{url:?}: the scheme must be https:// (TLS) or http:// (plain text)")]
    Scheme { url: String },
    #[error(
        "{url}: refusing to send the token in clear text to a non-loopback address; \
         use https:// (with --ca-file), or pass --allow-plaintext-token if this network is trusted"
    )]
    PlaintextToken { url: String },
    #[error("{url}: --ca-file/--cert-file/--key-file need an https:// URL")]
    TlsOnPlain { url: String },
    #[error("--cert-file and --key-file go together (mutual TLS needs both)")]
    HalfIdentity,
    #[error("cannot read the {what} {path}")]
    Read {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{url}: setting up TLS")]
    Tls {
        url: String,
        #[source]
        source: tonic::transport::Error,
    },
}

/// Whether `host` (from a URL) is this machine: a token sent there in clear
/// text does not cross a network.
pub fn is_loopback_host(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    match bare.parse::<IpAddr>() {
        Ok(ip) => ip.is_loopback(),
        Err(_) => bare.eq_ignore_ascii_case("localhost"),
    }
}

/// The endpoint for `url` with TLS set up from `tls`. `sends_token`: the
/// client will put a bearer token on its calls; over http:// that is refused
/// unless the host is loopback or `allow_plaintext_token`.
pub fn endpoint(
    url: &str,
    tls: &ClientTls,
    sends_token: bool,
    allow_plaintext_token: bool,
) -> Result<Endpoint, ConnectError> {
    let uri: Uri = url.parse().map_err(|_| ConnectError::Scheme {
        url: url.to_string(),
    })?;
    let host = uri.host().unwrap_or_default().to_string();
    let endpoint = Endpoint::from_shared(url.to_string()).map_err(|source| ConnectError::Url {
        url: url.to_string(),
        source,
    })?;
    match uri.scheme_str() {
        Some("http") => {
            if tls.any() {
                return Err(ConnectError::TlsOnPlain {
                    url: url.to_string(),
                });
            }
            if sends_token && !allow_plaintext_token && !is_loopback_host(&host) {
                return Err(ConnectError::PlaintextToken {
                    url: url.to_string(),
                });
            }
            Ok(endpoint)
        }
        Some("https") => {
            let mut config = ClientTlsConfig::new().domain_name(host);
            config = match &tls.ca_file {
                Some(ca) => config.ca_certificate(Certificate::from_pem(read(ca, "CA file")?)),
                None => config.with_native_roots(),
            };
            match (&tls.cert_file, &tls.key_file) {
                (Some(c), Some(k)) => {
                    config = config.identity(Identity::from_pem(
                        read(c, "client certificate")?,
                        read(k, "client key")?,
                    ));
                }
                (None, None) => {}
                _ => return Err(ConnectError::HalfIdentity),
            }
            endpoint
                .tls_config(config)
                .map_err(|source| ConnectError::Tls {
                    url: url.to_string(),
                    source,
                })
        }
        _ => Err(ConnectError::Scheme {
            url: url.to_string(),
        }),
    }
}

fn read(path: &Path, what: &'static str) -> Result<Vec<u8>, ConnectError> {
    // A PEM file is a few KiB; refuse to read a multi-megabyte mistake.
    const MAX: u64 = 1 << 20;
    let meta = std::fs::metadata(path).map_err(|source| ConnectError::Read {
        what,
        path: path.to_path_buf(),
        source,
    })?;
    if meta.len() > MAX {
        return Err(ConnectError::Read {
            what,
            path: path.to_path_buf(),
            source: std::io::Error::other(format!(
                "{} bytes, more than a PEM file holds",
                meta.len()
            )),
        });
    }
    std::fs::read(path).map_err(|source| ConnectError::Read {
        what,
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts() {
        for h in ["127.0.0.1", "127.3.4.5", "[::1]", "localhost", "LOCALHOST"] {
            assert!(is_loopback_host(h), "{h}");
        }
        for h in ["198.51.100.1", "decider", "[2001:db8::1]", "0.0.0.0", ""] {
            assert!(!is_loopback_host(h), "{h}");
        }
    }

    #[test]
    fn a_token_in_clear_text_to_another_host_needs_the_flag() {
        let none = ClientTls::default();
        let e = endpoint("http://198.51.100.1:50051", &none, true, false)
            .expect_err("plain token to a remote host");
        assert!(matches!(e, ConnectError::PlaintextToken { .. }), "{e}");
        assert!(e.to_string().contains("--allow-plaintext-token"), "{e}");
        endpoint("http://198.51.100.1:50051", &none, true, true).expect("explicitly allowed");
        endpoint("http://198.51.100.1:50051", &none, false, false).expect("no token sent");
        endpoint("http://127.0.0.1:50051", &none, true, false).expect("loopback");
        endpoint("http://[::1]:50051", &none, true, false).expect("loopback v6");
    }

    #[test]
    fn tls_options_are_checked() {
        let ca = ClientTls {
            ca_file: Some("/nonexistent/ca.pem".into()),
            ..Default::default()
        };
        let e = endpoint("http://127.0.0.1:1", &ca, false, false).expect_err("tls on http");
        assert!(matches!(e, ConnectError::TlsOnPlain { .. }), "{e}");
        let e = endpoint("https://127.0.0.1:1", &ca, false, false).expect_err("missing CA");
        assert!(e.to_string().contains("/nonexistent/ca.pem"), "{e}");
        let half = ClientTls {
            cert_file: Some("/x".into()),
            ..Default::default()
        };
        let e = endpoint("https://127.0.0.1:1", &half, false, false).expect_err("half identity");
        assert!(matches!(e, ConnectError::HalfIdentity), "{e}");
        let e = endpoint("ftp://x:1", &ClientTls::default(), false, false).expect_err("scheme");
        assert!(matches!(e, ConnectError::Scheme { .. }), "{e}");
    }
}
