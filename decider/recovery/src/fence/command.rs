//! The command fencer: an operator's script (a PDU, a storage blocklist, a
//! cloud API) behind the same [`Fencer`] trait.
//!
//! Protocol: the program runs with the configured arguments and gets a JSON
//! document on stdin, `{"action": "off" | "status", "node": "<name>"}`. Exit
//! status 0 means the action was done. Its last non-empty stdout line is either
//! a word (`off`, `on`, `unknown`, `done`) or a JSON object
//! `{"power": "off"|"on"|"unknown", "storage_fenced": bool, "message": "…"}`.
//! A program that is open for writing when the fence runs (being replaced)
//! is waited for up to 2 s, then the fence fails naming it.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use futures::future::BoxFuture;
use serde::Deserialize;
use tokio::io::AsyncWriteExt;
use tokio::process::Command;
use tracing::{info, instrument, warn};

use super::{FenceAck, FenceError, Fencer, PowerState};

/// What to run for one node.
#[derive(Clone, Debug)]
pub struct CommandTarget {
    pub node: String,
    pub program: PathBuf,
    pub args: Vec<String>,
    /// One run may take this long; the child is killed after it.
    pub timeout: Duration,
}

/// A fencer that runs an operator's program.
pub struct CommandFencer {
    target: CommandTarget,
}

#[derive(Debug, Default, Deserialize)]
struct Reply {
    #[serde(default)]
    power: Option<PowerState>,
    #[serde(default)]
    storage_fenced: bool,
    #[serde(default)]
    message: String,
}

/// Reads the last non-empty stdout line.
fn parse_reply(stdout: &str) -> Option<Reply> {
    let line = stdout
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| !l.is_empty())?;
    if line.starts_with('{') {
        return serde_json::from_str(line).ok();
    }
    let power = match line.to_ascii_lowercase().as_str() {
        "off" => Some(PowerState::Off),
        "on" => Some(PowerState::On),
        "unknown" => Some(PowerState::Unknown),
        "done" | "ok" => None,
        _ => return None,
    };
    Some(Reply {
        power,
        storage_fenced: false,
        message: line.to_string(),
    })
}

/// How long a program that is "busy" (open for writing) is waited for.
const BUSY_WAIT: Duration = Duration::from_secs(2);

/// Spawns, waiting out `ETXTBSY` for up to [`BUSY_WAIT`].
///
/// The kernel refuses to exec a file that any process holds open for writing.
/// That happens for a moment when configuration management replaces the
/// script, and whenever another thread of a process forks while a file is
/// still open for writing (the child holds the descriptor until its exec).
/// A fence must not fail for a window that short; any other error, or a file
/// still busy after the wait, is returned as it is.
pub(super) async fn spawn_when_not_busy<T>(
    mut spawn: impl FnMut() -> std::io::Result<T>,
) -> std::io::Result<T> {
    let deadline = tokio::time::Instant::now() + BUSY_WAIT;
    let mut warned = false;
    loop {
        match spawn() {
            Err(e)
                if e.kind() == std::io::ErrorKind::ExecutableFileBusy
                    && tokio::time::Instant::now() < deadline =>
            {
                if !warned {
                    warn!("fence program is open for writing elsewhere (text file busy); retrying for up to {BUSY_WAIT:?}");
                    warned = true;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            other => return other,
        }
    }
}

impl CommandFencer {
    pub fn new(target: CommandTarget) -> Self {
        CommandFencer { target }
    }

    async fn run(&self, action: &str) -> Result<Reply, FenceError> {
        let t = &self.target;
        let spawn_err = |source| FenceError::Spawn {
            fencer: self.describe(),
            program: t.program.display().to_string(),
            source,
        };
        let mut child = spawn_when_not_busy(|| {
            Command::new(&t.program)
                .args(&t.args)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .kill_on_drop(true)
                .spawn()
        })
        .await
        .map_err(spawn_err)?;
        let doc = serde_json::json!({"action": action, "node": t.node}).to_string();
        let run = async {
            if let Some(mut stdin) = child.stdin.take() {
                // A script that ignores stdin may close it early; that is its
                // business, not a fence failure.
                let _ = stdin.write_all(doc.as_bytes()).await;
                let _ = stdin.write_all(b"\n").await;
            }
            child.wait_with_output().await
        };
        let out = tokio::time::timeout(t.timeout, run)
            .await
            .map_err(|_| FenceError::Timeout {
                fencer: self.describe(),
                action: action.into(),
                after: t.timeout,
            })?
            .map_err(spawn_err)?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let last = stderr
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("");
            return Err(FenceError::Failed {
                fencer: self.describe(),
                status: out.status.to_string(),
                detail: format!("{action}: {last}"),
            });
        }
        parse_reply(&stdout).ok_or_else(|| FenceError::BadAnswer {
            fencer: self.describe(),
            action: action.into(),
            detail: format!(
                "cannot read its last stdout line: {:?}",
                stdout.lines().last().unwrap_or("")
            ),
        })
    }

    #[instrument(skip(self), fields(fencer = %self.describe()))]
    async fn off(&self) -> Result<FenceAck, FenceError> {
        info!("fence command off");
        let r = self.run("off").await?;
        Ok(FenceAck {
            power: r.power,
            storage_fenced: r.storage_fenced,
            message: r.message,
        })
    }
}

// `system_uuid` keeps the trait's `None`: the command protocol (above) has
// no identity answer, and an operator's script may switch a PDU outlet that
// knows no machine.
impl Fencer for CommandFencer {
    fn describe(&self) -> String {
        format!("command {}", self.target.program.display())
    }

    fn power_off(&self) -> BoxFuture<'_, Result<FenceAck, FenceError>> {
        Box::pin(self.off())
    }

    fn power_status(&self) -> BoxFuture<'_, Result<PowerState, FenceError>> {
        Box::pin(async move {
            Ok(self
                .run("status")
                .await?
                .power
                .unwrap_or(PowerState::Unknown))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_words_and_json() {
        assert_eq!(
            parse_reply("noise\noff\n").and_then(|r| r.power),
            Some(PowerState::Off)
        );
        let r = parse_reply(r#"{"power":"unknown","storage_fenced":true,"message":"blocklisted"}"#)
            .expect("json");
        assert!(r.storage_fenced);
        assert_eq!(r.power, Some(PowerState::Unknown));
        assert!(parse_reply("maybe").is_none());
        assert!(parse_reply("").is_none());
    }
}
