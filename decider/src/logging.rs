//! Where logs go and how they look: text (colours only on a terminal, so
//! files and journald never see ANSI escapes), JSON lines, or journald's
//! native fields.

use crate::config::LogFormat;
use std::io::IsTerminal;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

/// Colours only for a person at a terminal, and never with `NO_COLOR` set
/// (<https://no-color.org>).
pub fn ansi() -> bool {
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// Installs the process's subscriber (a second call does nothing). A bad
/// filter or an absent journald falls back, saying so on stderr.
pub fn init(format: LogFormat, filter: &str) {
    let filter = EnvFilter::try_new(filter).unwrap_or_else(|e| {
        eprintln!("vigil-decider: log filter {filter:?} is not valid ({e}); using \"info\"");
        EnvFilter::new("info")
    });
    let registry = tracing_subscriber::registry().with(filter);
    let text = || {
        tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(ansi())
    };
    let _ = match format {
        LogFormat::Text => registry.with(text()).try_init(),
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_writer(std::io::stderr)
                    .with_ansi(false),
            )
            .try_init(),
        LogFormat::Journald => match tracing_journald::layer() {
            // Fields as themselves (`journalctl NODE=compute1
            // REQUEST_ID=req-…`), not under journald's default `F_` prefix.
            Ok(j) => registry
                .with(
                    j.with_field_prefix(None)
                        .with_syslog_identifier("vigil-decider".to_string()),
                )
                .try_init(),
            Err(e) => {
                eprintln!(
                    "vigil-decider: cannot reach journald ({e}); logging text to stderr instead (use --log-format text outside systemd)"
                );
                registry.with(text()).try_init()
            }
        },
    };
}

/// A list as one field value, `a,b,c` (sorted as given): tracing has no
/// list values, and `?set` would log Rust's `{"a", "b"}`.
pub fn list<T: std::fmt::Display>(items: impl IntoIterator<Item = T>) -> String {
    items
        .into_iter()
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// An optional value as itself, or `unknown`.
pub fn or_unknown<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map_or_else(|| "unknown".to_string(), |v| v.to_string())
}

/// An enum as the journal and the JSON API spell it (its serde name,
/// e.g. `needs-attention`), not its Rust name.
pub fn kebab<T: serde::Serialize>(v: &T) -> String {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::String(s)) => s,
        Ok(other) => other.to_string(),
        Err(_) => "unknown".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_and_enums_are_logged_as_values_not_debug_strings() {
        let set: std::collections::BTreeSet<String> =
            ["compute1".to_string(), "compute2".to_string()].into();
        assert_eq!(list(&set), "compute1,compute2");
        assert_eq!(or_unknown(None::<std::net::IpAddr>), "unknown");
        assert_eq!(
            kebab(&vigil_recovery::journal::IncidentStatus::NeedsAttention),
            "needs-attention"
        );
    }
}
