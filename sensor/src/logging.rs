//! Where logs go and how they look: text (colours only on a terminal, so
//! files and journald never see ANSI escapes), JSON lines, or journald's
//! native fields.

/// How logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
    /// Native journald fields (over its socket), for a systemd unit.
    Journald,
}
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
        eprintln!("vigil-sensor: log filter {filter:?} is not valid ({e}); using \"info\"");
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
                        .with_syslog_identifier("vigil-sensor".to_string()),
                )
                .try_init(),
            Err(e) => {
                eprintln!(
                    "vigil-sensor: cannot reach journald ({e}); logging text to stderr instead (use --log-format text outside systemd)"
                );
                registry.with(text()).try_init()
            }
        },
    };
}
