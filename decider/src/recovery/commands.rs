//! Operator commands over recovery: `fence-check`, `incidents`, `incident ID`.
//! Tables for people, `--json` for scripts; output goes to stdout.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use anyhow::Context;
use vigil_recovery::config::RecoveryConfig;
use vigil_recovery::fence::fence_check_identity;
use vigil_recovery::journal::sqlite::SqliteJournal;
use vigil_recovery::journal::{IncidentDetail, IncidentId, IncidentSummary, Journal};
use vigil_recovery::secret::ProcessEnv;

use crate::cli_format::Format;
use crate::recovery::bmc_identity::{self, CheckedRow};

/// `vigil-decider fence-check`: reads every configured BMC's power state
/// and the system UUID it reports (never a power action), compared with
/// `configured` (`[[node]] system_uuid` by node). Returns whether all
/// answered; a BMC that reports another machine is an error naming it.
pub async fn fence_check_command(
    cfg: &RecoveryConfig,
    configured: &BTreeMap<String, String>,
    format: Format,
) -> anyhow::Result<bool> {
    let rows = bmc_identity::checked(
        fence_check_identity(&cfg.fencing, &ProcessEnv).await,
        configured,
    );
    format.print(&rows, || fence_check_table(&rows))?;
    for w in bmc_identity::shared(&rows, configured) {
        eprintln!("vigil-decider: {w}");
    }
    let wrong = bmc_identity::mismatches(&rows, configured);
    if !wrong.is_empty() {
        anyhow::bail!(
            "{} fence level(s) reach another machine than their node's:\n  {}",
            wrong.len(),
            wrong.join("\n  ")
        );
    }
    Ok(!rows.is_empty() && rows.iter().all(|r| r.row.result.is_ok()))
}

pub fn fence_check_table(rows: &[CheckedRow]) -> String {
    let mut s = format!(
        "{:<16} {:>5}  {:<48} {:<8} {}\n",
        "NODE", "LEVEL", "FENCER", "POWER", "UUID"
    );
    if rows.is_empty() {
        s.push_str("(no fencing configured: add [recovery.fencing] nodes or groups)\n");
    }
    for r in rows {
        let (power, uuid) = match &r.row.result {
            Ok(p) => (p.to_string(), r.uuid.to_string()),
            // The power read failed, so the UUID was not asked: say why.
            Err(e) => ("ERROR".to_string(), format!("ERROR: {e}")),
        };
        let _ = writeln!(
            s,
            "{:<16} {:>5}  {:<48} {:<8} {}",
            r.row.node, r.row.level, r.row.fencer, power, uuid
        );
    }
    s
}

/// Where the incidents commands read: the SQLite file, or (`[cluster]`)
/// etcd, which needs no leadership to read.
pub enum JournalAt {
    File(std::path::PathBuf),
    Cluster(vigil_cluster::ClusterConfig),
}

async fn open_journal(at: &JournalAt) -> anyhow::Result<std::sync::Arc<dyn Journal>> {
    Ok(match at {
        JournalAt::File(path) => std::sync::Arc::new(
            SqliteJournal::open(path)
                .with_context(|| format!("opening the journal at {}", path.display()))?,
        ),
        JournalAt::Cluster(c) => {
            let parts = crate::cluster::ClusterParts::connect(c)
                .await
                .context("connecting to etcd ([cluster] endpoints)")?;
            parts.journal()
        }
    })
}

/// `vigil-decider incidents [--json]`: the newest incidents.
pub async fn incidents_command(
    journal: &JournalAt,
    limit: usize,
    format: Format,
) -> anyhow::Result<()> {
    let list = open_journal(journal)
        .await?
        .list(limit)
        .await
        .context("listing incidents")?;
    format.print(&list, || incidents_table(&list))
}

pub fn incidents_table(list: &[IncidentSummary]) -> String {
    let mut s = format!(
        "{:<36}  {:<14} {:<16} {:<11} {:<24} {}\n",
        "ID", "NODE", "STATUS", "PHASE", "OPENED", "REASON"
    );
    for i in list {
        let status = serde_json::to_value(i.status)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        let phase = serde_json::to_value(i.phase)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        let status = if i.dry_run {
            format!("{status} (dry)")
        } else {
            status
        };
        let _ = writeln!(
            s,
            "{:<36}  {:<14} {:<16} {:<11} {:<24} {}",
            i.id,
            i.node,
            status,
            phase,
            i.opened_at.to_string(),
            i.reason.as_deref().unwrap_or("")
        );
    }
    s
}

/// `vigil-decider incident ID [--json]`: one incident with its timeline,
/// instances and the evidence at decision time.
pub async fn incident_command(journal: &JournalAt, id: &str, format: Format) -> anyhow::Result<()> {
    let d = open_journal(journal)
        .await?
        .get(&IncidentId(id.to_string()))
        .await
        .with_context(|| format!("reading incident {id}"))?;
    let v = serde_json::json!({"incident": d, "timeline": d.timeline()});
    format.print(&v, || incident_text(&d))
}

pub fn incident_text(d: &IncidentDetail) -> String {
    let i = &d.summary;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "incident {}  node {}  status {:?}  phase {:?}{}",
        i.id,
        i.node,
        i.status,
        i.phase,
        if i.dry_run { "  (dry run)" } else { "" }
    );
    let _ = writeln!(
        s,
        "opened {}  closed {}",
        i.opened_at,
        i.closed_at
            .map(|t| t.to_string())
            .unwrap_or_else(|| "-".into())
    );
    if let Some(r) = &i.reason {
        let _ = writeln!(s, "reason: {r}");
    }
    if let Some(t) = i.recovered_at {
        let _ = writeln!(s, "node recovered (new boot id) at {t}");
    }
    let _ = writeln!(s, "\ninstances:");
    s.push_str("  SERVER                                NAME                 BEFORE   FROM           TO              TRY  NOVA      EVAC  STATE       TOOK/REASON\n");
    for r in &d.instances {
        let took = match (r.started_at, r.finished_at) {
            (Some(a), Some(b)) => format!("{:.1}s", b.since(a).as_secs_f64()),
            _ => String::new(),
        };
        let state = serde_json::to_value(r.state)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        let _ = writeln!(
            s,
            "  {:<36}  {:<20} {:<8} {:<14} {:<14} {:>4}  {:<9} {:>4}  {:<11} {} {}",
            r.server_id,
            r.name,
            r.status_before,
            r.from_host,
            r.to_host.as_deref().unwrap_or("-"),
            r.attempts,
            r.status_after.as_deref().unwrap_or("-"),
            r.evacuate_actions
                .map_or_else(|| "-".to_string(), |n| n.to_string()),
            state,
            took,
            r.reason.as_deref().unwrap_or("")
        );
    }
    let _ = writeln!(s, "\ntimeline:");
    for e in d.timeline() {
        let _ = writeln!(s, "  {}  {:<20} {}", e.at, e.what, e.message);
    }
    let _ = writeln!(
        s,
        "\nevidence at decision time:\n{}",
        serde_json::to_string_pretty(&d.evidence).unwrap_or_default()
    );
    s
}
