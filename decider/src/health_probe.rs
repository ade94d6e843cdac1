//! The slow probes behind readiness (the journal's directory is writable,
//! the BMCs answer a power read) and the task that mirrors readiness into
//! the gRPC health service.

use crate::health::Health;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use vigil_recovery::config::FencingConfig;

/// The journal's directory is checked this often: cheap (one small file).
pub const JOURNAL_EVERY: Duration = Duration::from_secs(10);
/// BMCs are asked this often: a BMC is a small computer that some sites
/// rate-limit, and a power read over IPMI can take seconds.
pub const BMC_EVERY: Duration = Duration::from_secs(60);
/// How often readiness is mirrored into gRPC health.
const GRPC_EVERY: Duration = Duration::from_secs(1);

/// Whether the journal can take a write: SQLite needs the database file
/// and its directory (for `-wal` and `-shm`) writable, and a full disk
/// fails a write of even one byte.
pub fn journal_writable(path: &Path) -> Result<String, String> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let probe = dir.join(".vigil-health-probe");
    let written = std::fs::write(&probe, b"1");
    let _ = std::fs::remove_file(&probe);
    written.map_err(|e| {
        format!(
            "cannot write in the journal's directory {} ({e}): free space or fix permissions there",
            dir.display()
        )
    })?;
    if path.exists() {
        std::fs::OpenOptions::new()
            .append(true)
            .open(path)
            .map_err(|e| {
                format!(
                    "the journal {} is not writable ({e}): fix its permissions",
                    path.display()
                )
            })?;
    }
    Ok(format!("{} writable", dir.display()))
}

/// Reads every configured BMC's power state (never a power action).
pub async fn bmcs_answer(fencing: &FencingConfig) -> Result<String, String> {
    let rows =
        vigil_recovery::fence::fence_check(fencing, &vigil_recovery::secret::ProcessEnv).await;
    let failed: Vec<String> = rows
        .iter()
        .filter_map(|r| {
            let e = r.result.as_ref().err()?;
            Some(format!("{} level {} ({}): {e}", r.node, r.level, r.fencer))
        })
        .collect();
    if failed.is_empty() {
        Ok(format!(
            "{} fence level(s) answered a power read",
            rows.len()
        ))
    } else {
        Err(format!(
            "{} of {} fence level(s) did not answer a power read (`vigil-decider fence-check` shows them): {}",
            failed.len(),
            rows.len(),
            failed.join("; ")
        ))
    }
}

/// Probes the journal and the BMCs until `shutdown`.
pub async fn run(
    health: Arc<Health>,
    journal: PathBuf,
    fencing: Option<FencingConfig>,
    shutdown: impl Future<Output = ()>,
) {
    let mut journal_tick = tokio::time::interval(JOURNAL_EVERY);
    let mut bmc_tick = tokio::time::interval(BMC_EVERY);
    for t in [&mut journal_tick, &mut bmc_tick] {
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    }
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            _ = journal_tick.tick() => {
                let path = journal.clone();
                let r = tokio::task::spawn_blocking(move || journal_writable(&path))
                    .await
                    .unwrap_or_else(|e| Err(format!("the journal probe panicked: {e}")));
                health.journal_probed(r);
            }
            _ = bmc_tick.tick(), if fencing.is_some() => {
                if let Some(f) = &fencing {
                    health.bmcs_probed(bmcs_answer(f).await);
                }
            }
        }
    }
}

/// Mirrors readiness into gRPC health: the overall service ("") and
/// `services` read NOT_SERVING while `/readyz` fails.
pub async fn mirror_grpc(
    health: Arc<Health>,
    reporter: tonic_health::server::HealthReporter,
    services: Vec<String>,
    shutdown: impl Future<Output = ()>,
) {
    use tonic_health::ServingStatus;
    let mut every = tokio::time::interval(GRPC_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last = None;
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            _ = every.tick() => {
                let report = health.readiness();
                let ready = report.ok();
                if last == Some(ready) {
                    continue;
                }
                if ready {
                    tracing::info!("ready: every readiness check passes");
                } else {
                    let failing: Vec<String> = report
                        .checks
                        .iter()
                        .filter(|c| !c.ok)
                        .map(|c| format!("{}: {}", c.name, c.detail))
                        .collect();
                    tracing::warn!(failing = %failing.join("; "), "not ready");
                }
                let status = if ready { ServingStatus::Serving } else { ServingStatus::NotServing };
                reporter.set_service_status("", status).await;
                for s in &services {
                    reporter.set_service_status(s, status).await;
                }
                last = Some(ready);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_journal_in_a_missing_directory_is_not_writable_and_says_where() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(journal_writable(&dir.path().join("journal.db")).is_ok());
        let gone = dir.path().join("gone").join("journal.db");
        let e = journal_writable(&gone).expect_err("no such directory");
        assert!(
            e.contains(&dir.path().join("gone").display().to_string()),
            "{e}"
        );
    }
}
