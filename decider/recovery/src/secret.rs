//! Credentials (BMC passwords, SMTP passwords, webhook keys) read from a file
//! or an environment variable into a [`Secret`] that never prints.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// A credential. `Debug` prints `Secret(***)` and there is no `Display`, so a
/// secret cannot reach a log line or a journal record by accident; code that
/// needs the value calls [`Secret::expose`] at the one place it is sent.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// Where a secret comes from. Never the config file itself: config files get
/// copied into tickets and repos, the secret files and env stay on the host.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum SecretSource {
    /// A file holding the secret; one trailing newline is removed.
    File(PathBuf),
    /// An environment variable of the decider's process.
    Env(String),
}

/// Errors reading a secret.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// The secret file could not be read.
    #[error("cannot read secret file {path}; check it exists and is readable by the decider")]
    File {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The environment variable is unset or not UTF-8.
    #[error("environment variable {name} is not set; export it in the decider's environment")]
    Env { name: String },
    /// The file or variable is empty, which is never a usable credential.
    #[error("secret from {from} is empty")]
    Empty { from: String },
}

/// How secrets look up environment variables: the process env in production, a
/// map in tests (so no test calls `set_var`).
pub trait SecretEnv: Send + Sync {
    fn var(&self, name: &str) -> Option<String>;
}

/// The decider process's own environment.
#[derive(Clone, Copy, Debug, Default)]
pub struct ProcessEnv;

impl SecretEnv for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

impl SecretEnv for std::collections::BTreeMap<String, String> {
    fn var(&self, name: &str) -> Option<String> {
        self.get(name).cloned()
    }
}

impl SecretSource {
    /// Reads the secret now (at config load, so a missing one fails before the
    /// decider acts, not in the middle of a fence).
    pub fn load(&self, env: &dyn SecretEnv) -> Result<Secret, SecretError> {
        let (value, from) = match self {
            SecretSource::File(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| SecretError::File {
                    path: path.clone(),
                    source,
                })?;
                let text = text.strip_suffix('\n').unwrap_or(&text);
                let text = text.strip_suffix('\r').unwrap_or(text);
                (text.to_string(), format!("file {}", path.display()))
            }
            SecretSource::Env(name) => {
                let v = env
                    .var(name)
                    .ok_or_else(|| SecretError::Env { name: name.clone() })?;
                (v, format!("env {name}"))
            }
        };
        if value.is_empty() {
            return Err(SecretError::Empty { from });
        }
        Ok(Secret(value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_value() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?}"), "Secret(***)");
        assert!(!format!("{:?}", Some(&s)).contains("hunter2"));
    }

    #[test]
    fn file_and_env_sources() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("pw");
        std::fs::write(&path, "s3cret\n").expect("write");
        let env = std::collections::BTreeMap::from([("BMC_PW".to_string(), "fromenv".to_string())]);
        assert_eq!(
            SecretSource::File(path).load(&env).expect("file").expose(),
            "s3cret"
        );
        assert_eq!(
            SecretSource::Env("BMC_PW".into())
                .load(&env)
                .expect("env")
                .expose(),
            "fromenv"
        );
        assert!(matches!(
            SecretSource::Env("NOPE".into()).load(&env),
            Err(SecretError::Env { .. })
        ));
    }
}
