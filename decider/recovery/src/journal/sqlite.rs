//! The embedded journal store: one SQLite file, WAL so readers (the CLI, the
//! operator API) never block the workflow, `synchronous=FULL` so a committed
//! step survives a power cut of the decider's host.

use std::path::Path;
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;
use rusqlite::{params, Connection, OptionalExtension, Row};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use super::*;

/// The SQLite journal. Cheap to clone: clones share one connection.
#[derive(Clone)]
pub struct SqliteJournal {
    /// One connection behind a sync mutex: SQLite serializes writers anyway,
    /// and the lock is only held inside `spawn_blocking`, never across an await.
    conn: Arc<Mutex<Connection>>,
}

/// The schema version this build writes (`PRAGMA user_version`).
pub const SCHEMA_VERSION: u32 = 2;

/// `MIGRATIONS[v]` takes a journal from version `v` to `v + 1`. Each runs in
/// one transaction with its version bump, so a crash mid-upgrade leaves the
/// file at the old version, to be migrated again on the next start. Only
/// ever append: a released step is never edited.
const MIGRATIONS: [&str; SCHEMA_VERSION as usize] = [V1, V2];

/// Version 1: the first schema (a new file, or one from before versioning
/// was read: those already had these tables, hence IF NOT EXISTS).
const V1: &str = "
CREATE TABLE IF NOT EXISTS incidents (
    id TEXT PRIMARY KEY,
    node TEXT NOT NULL,
    status TEXT NOT NULL,
    phase TEXT NOT NULL,
    dry_run INTEGER NOT NULL,
    opened_at INTEGER NOT NULL,
    closed_at INTEGER,
    reason TEXT,
    boot_id TEXT,
    recovered_at INTEGER,
    recovered_boot_id TEXT,
    evidence TEXT NOT NULL
);
-- At most one open incident per node, enforced by the store itself.
CREATE UNIQUE INDEX IF NOT EXISTS one_open_incident_per_node ON incidents(node) WHERE closed_at IS NULL;
CREATE TABLE IF NOT EXISTS steps (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    incident TEXT NOT NULL REFERENCES incidents(id),
    kind TEXT NOT NULL,
    target TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    began_at INTEGER NOT NULL,
    detail TEXT NOT NULL,
    ended_at INTEGER,
    outcome TEXT,
    result TEXT
);
CREATE INDEX IF NOT EXISTS steps_by_incident ON steps(incident, id);
CREATE TABLE IF NOT EXISTS instances (
    incident TEXT NOT NULL REFERENCES incidents(id),
    server_id TEXT NOT NULL,
    record TEXT NOT NULL,
    PRIMARY KEY (incident, server_id)
);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    incident TEXT NOT NULL REFERENCES incidents(id),
    at INTEGER NOT NULL,
    kind TEXT NOT NULL,
    message TEXT NOT NULL,
    detail TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_by_incident ON events(incident, id);
";

/// Version 2: `incidents` (newest first) and a node's last incident no
/// longer scan the whole table, which grows by one row per incident forever.
const V2: &str = "
CREATE INDEX IF NOT EXISTS incidents_by_opened_at ON incidents(opened_at);
CREATE INDEX IF NOT EXISTS incidents_by_node ON incidents(node, opened_at);
";

/// Brings the journal to [`SCHEMA_VERSION`], one step at a time; refuses a
/// journal written by a newer release (its rows may mean something this
/// build does not know, and writing them could lose that).
fn migrate(conn: &mut Connection) -> Result<(), JournalError> {
    loop {
        // IMMEDIATE: a second process opening the same file (the CLI) waits
        // for this step instead of running it twice.
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(store_err("begin schema migration"))?;
        let found: i64 = tx
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(store_err("read schema version"))?;
        let found = u32::try_from(found).map_err(|_| JournalError::Corrupt {
            what: "schema version".into(),
            detail: format!("PRAGMA user_version is {found}"),
        })?;
        if found > SCHEMA_VERSION {
            return Err(JournalError::NewerSchema {
                found,
                supported: SCHEMA_VERSION,
            });
        }
        let Some(step) = MIGRATIONS.get(found as usize) else {
            return Ok(());
        };
        tx.execute_batch(step).map_err(store_err(&format!(
            "migrate schema {found} -> {}",
            found + 1
        )))?;
        tx.pragma_update(None, "user_version", found + 1)
            .map_err(store_err("write schema version"))?;
        tx.commit().map_err(store_err("commit schema migration"))?;
    }
}

fn store_err(what: &str) -> impl FnOnce(rusqlite::Error) -> JournalError + '_ {
    move |e| JournalError::Store {
        what: what.to_string(),
        source: Box::new(e),
    }
}

/// An enum's serde name (`"needs-attention"`), as stored.
fn enum_text<T: Serialize>(v: &T) -> String {
    match serde_json::to_value(v) {
        Ok(Value::String(s)) => s,
        Ok(other) => other.to_string(),
        Err(_) => String::new(),
    }
}

fn parse_enum<T: DeserializeOwned>(what: &str, s: &str) -> Result<T, JournalError> {
    serde_json::from_value(Value::String(s.to_string())).map_err(|e| JournalError::Corrupt {
        what: what.to_string(),
        detail: format!("{s:?}: {e}"),
    })
}

fn parse_json(what: &str, s: &str) -> Result<Value, JournalError> {
    serde_json::from_str(s).map_err(|e| JournalError::Corrupt {
        what: what.to_string(),
        detail: e.to_string(),
    })
}

const SUMMARY_COLUMNS: &str =
    "id, node, status, phase, dry_run, opened_at, closed_at, reason, boot_id, recovered_at";

/// Raw columns of an incidents row; parsed outside the rusqlite closure so a
/// bad enum text becomes `Corrupt`, not a panic.
type SummaryRow = (
    String,
    String,
    String,
    String,
    bool,
    i64,
    Option<i64>,
    Option<String>,
    Option<String>,
    Option<i64>,
);

fn summary_row(r: &Row<'_>) -> rusqlite::Result<SummaryRow> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
        r.get(6)?,
        r.get(7)?,
        r.get(8)?,
        r.get(9)?,
    ))
}

fn summary(raw: SummaryRow) -> Result<IncidentSummary, JournalError> {
    let (id, node, status, phase, dry_run, opened_at, closed_at, reason, boot_id, recovered_at) =
        raw;
    Ok(IncidentSummary {
        id: IncidentId(id),
        node,
        status: parse_enum("incident status", &status)?,
        phase: parse_enum("incident phase", &phase)?,
        dry_run,
        opened_at: Timestamp(opened_at),
        closed_at: closed_at.map(Timestamp),
        reason,
        boot_id,
        recovered_at: recovered_at.map(Timestamp),
    })
}

impl SqliteJournal {
    /// Opens (creating if needed) the journal at `path`.
    pub fn open(path: &Path) -> Result<Self, JournalError> {
        let conn = Connection::open(path).map_err(|e| JournalError::Store {
            what: format!("open {}", path.display()),
            source: Box::new(e),
        })?;
        Self::setup(conn)
    }

    /// A journal in memory, gone with the process (tests, dry runs).
    pub fn in_memory() -> Result<Self, JournalError> {
        let conn = Connection::open_in_memory().map_err(store_err("open in-memory journal"))?;
        Self::setup(conn)
    }

    fn setup(conn: Connection) -> Result<Self, JournalError> {
        // WAL: the CLI reads while the workflow writes. synchronous=FULL: a
        // step recorded as ended is on disk before the next step starts, which
        // is what resume relies on.
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(store_err("set WAL"))?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(store_err("set synchronous=FULL"))?;
        conn.pragma_update(None, "foreign_keys", "ON")
            .map_err(store_err("enable foreign keys"))?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(store_err("set busy timeout"))?;
        let mut conn = conn;
        migrate(&mut conn)?;
        Ok(SqliteJournal {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    /// Runs `f` on the connection off the async threads.
    fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, JournalError> + Send + 'static,
    ) -> BoxFuture<'static, Result<T, JournalError>> {
        let conn = self.conn.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                let mut guard = conn.lock().map_err(|_| JournalError::Corrupt {
                    what: "journal connection".into(),
                    detail: "a previous journal call panicked".into(),
                })?;
                f(&mut guard)
            })
            .await
            .map_err(|e| JournalError::Store {
                what: "journal task".into(),
                source: Box::new(e),
            })?
        })
    }
}

fn get_detail(conn: &Connection, id: &IncidentId) -> Result<IncidentDetail, JournalError> {
    let raw = conn
        .query_row(
            &format!("SELECT {SUMMARY_COLUMNS}, evidence FROM incidents WHERE id = ?1"),
            params![id.0],
            |r| Ok((summary_row(r)?, r.get::<_, String>(10)?)),
        )
        .optional()
        .map_err(store_err("read incident"))?
        .ok_or_else(|| JournalError::NotFound(id.clone()))?;
    let summary = summary(raw.0)?;
    let evidence = parse_json("evidence", &raw.1)?;

    let mut stmt = conn
        .prepare("SELECT id, kind, target, attempt, began_at, detail, ended_at, outcome, result FROM steps WHERE incident = ?1 ORDER BY id")
        .map_err(store_err("read steps"))?;
    type StepRow = (
        i64,
        String,
        String,
        u32,
        i64,
        String,
        Option<i64>,
        Option<String>,
        Option<String>,
    );
    let rows: Vec<StepRow> = stmt
        .query_map(params![id.0], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
                r.get(6)?,
                r.get(7)?,
                r.get(8)?,
            ))
        })
        .map_err(store_err("read steps"))?
        .collect::<Result<_, _>>()
        .map_err(store_err("read steps"))?;
    let mut steps = Vec::with_capacity(rows.len());
    for (sid, kind, target, attempt, began_at, detail, ended_at, outcome, result) in rows {
        steps.push(StepRecord {
            id: sid,
            kind: parse_enum("step kind", &kind)?,
            target,
            attempt,
            began_at: Timestamp(began_at),
            detail: parse_json("step detail", &detail)?,
            ended_at: ended_at.map(Timestamp),
            outcome: outcome
                .as_deref()
                .map(|o| parse_enum("step outcome", o))
                .transpose()?,
            result: result
                .as_deref()
                .map(|r| parse_json("step result", r))
                .transpose()?
                .unwrap_or(Value::Null),
        });
    }

    let mut stmt = conn
        .prepare("SELECT record FROM instances WHERE incident = ?1 ORDER BY rowid")
        .map_err(store_err("read instances"))?;
    let recs: Vec<String> = stmt
        .query_map(params![id.0], |r| r.get(0))
        .map_err(store_err("read instances"))?
        .collect::<Result<_, _>>()
        .map_err(store_err("read instances"))?;
    let instances = recs
        .iter()
        .map(|s| {
            serde_json::from_str(s).map_err(|e| JournalError::Corrupt {
                what: "instance record".into(),
                detail: e.to_string(),
            })
        })
        .collect::<Result<Vec<InstanceRecord>, _>>()?;

    let mut stmt = conn
        .prepare("SELECT at, kind, message, detail FROM events WHERE incident = ?1 ORDER BY id")
        .map_err(store_err("read events"))?;
    let rows: Vec<(i64, String, String, String)> = stmt
        .query_map(params![id.0], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })
        .map_err(store_err("read events"))?
        .collect::<Result<_, _>>()
        .map_err(store_err("read events"))?;
    let events = rows
        .into_iter()
        .map(|(at, kind, message, detail)| {
            Ok(Event {
                at: Timestamp(at),
                kind,
                message,
                detail: parse_json("event detail", &detail)?,
            })
        })
        .collect::<Result<Vec<_>, JournalError>>()?;
    Ok(IncidentDetail {
        summary,
        evidence,
        steps,
        instances,
        events,
    })
}

fn query_summaries(
    conn: &Connection,
    sql: &str,
    p: impl rusqlite::Params,
) -> Result<Vec<IncidentSummary>, JournalError> {
    let mut stmt = conn.prepare(sql).map_err(store_err("list incidents"))?;
    let rows: Vec<SummaryRow> = stmt
        .query_map(p, summary_row)
        .map_err(store_err("list incidents"))?
        .collect::<Result<_, _>>()
        .map_err(store_err("list incidents"))?;
    rows.into_iter().map(summary).collect()
}

impl Journal for SqliteJournal {
    fn open_incident(&self, new: NewIncident) -> BoxFuture<'_, Result<IncidentId, JournalError>> {
        self.with(move |conn| {
            let tx = conn.transaction().map_err(store_err("begin"))?;
            let existing: Option<String> = tx
                .query_row("SELECT id FROM incidents WHERE node = ?1 AND closed_at IS NULL", params![new.node], |r| r.get(0))
                .optional()
                .map_err(store_err("look for an open incident"))?;
            if let Some(id) = existing {
                return Err(JournalError::AlreadyOpen { node: new.node, incident: IncidentId(id) });
            }
            let id = IncidentId::generate();
            tx.execute(
                "INSERT INTO incidents (id, node, status, phase, dry_run, opened_at, boot_id, evidence) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![
                    id.0,
                    new.node,
                    enum_text(&IncidentStatus::Open),
                    enum_text(&Phase::Opened),
                    new.dry_run,
                    new.opened_at.0,
                    new.boot_id,
                    new.evidence.to_string()
                ],
            )
            .map_err(store_err("insert incident"))?;
            tx.commit().map_err(store_err("commit incident"))?;
            Ok(id)
        })
    }

    fn begin_step<'a>(
        &'a self,
        incident: &'a IncidentId,
        step: StepBegin,
    ) -> BoxFuture<'a, Result<StepId, JournalError>> {
        let incident = incident.clone();
        self.with(move |conn| {
            conn.execute(
                "INSERT INTO steps (incident, kind, target, attempt, began_at, detail) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![incident.0, enum_text(&step.kind), step.target, step.attempt, step.at.0, step.detail.to_string()],
            )
            .map_err(store_err("begin step"))?;
            Ok(conn.last_insert_rowid())
        })
    }

    fn end_step(
        &self,
        step: StepId,
        at: Timestamp,
        outcome: StepOutcome,
        result: Value,
    ) -> BoxFuture<'_, Result<(), JournalError>> {
        self.with(move |conn| {
            conn.execute(
                "UPDATE steps SET ended_at = ?2, outcome = ?3, result = ?4 WHERE id = ?1",
                params![step, at.0, enum_text(&outcome), result.to_string()],
            )
            .map_err(store_err("end step"))?;
            Ok(())
        })
    }

    fn record_event<'a>(
        &'a self,
        incident: &'a IncidentId,
        event: Event,
    ) -> BoxFuture<'a, Result<(), JournalError>> {
        let incident = incident.clone();
        self.with(move |conn| {
            conn.execute(
                "INSERT INTO events (incident, at, kind, message, detail) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![incident.0, event.at.0, event.kind, event.message, event.detail.to_string()],
            )
            .map_err(store_err("record event"))?;
            Ok(())
        })
    }

    fn put_instance<'a>(
        &'a self,
        incident: &'a IncidentId,
        instance: InstanceRecord,
    ) -> BoxFuture<'a, Result<(), JournalError>> {
        let incident = incident.clone();
        self.with(move |conn| {
            let record = serde_json::to_string(&instance).map_err(|e| JournalError::Corrupt {
                what: "instance record".into(),
                detail: e.to_string(),
            })?;
            // Upsert keeps the rowid, so instances list in selection order.
            conn.execute(
                "INSERT INTO instances (incident, server_id, record) VALUES (?1, ?2, ?3)
                 ON CONFLICT (incident, server_id) DO UPDATE SET record = excluded.record",
                params![incident.0, instance.server_id, record],
            )
            .map_err(store_err("record instance"))?;
            Ok(())
        })
    }

    fn set_phase<'a>(
        &'a self,
        incident: &'a IncidentId,
        phase: Phase,
    ) -> BoxFuture<'a, Result<(), JournalError>> {
        let incident = incident.clone();
        self.with(move |conn| {
            conn.execute(
                "UPDATE incidents SET phase = ?2 WHERE id = ?1",
                params![incident.0, enum_text(&phase)],
            )
            .map_err(store_err("set phase"))?;
            Ok(())
        })
    }

    fn set_status<'a>(
        &'a self,
        incident: &'a IncidentId,
        status: IncidentStatus,
        reason: Option<String>,
        at: Timestamp,
    ) -> BoxFuture<'a, Result<(), JournalError>> {
        let incident = incident.clone();
        self.with(move |conn| {
            let closed_at = if status.is_open() { None } else { Some(at.0) };
            let n = conn
                .execute(
                    "UPDATE incidents SET status = ?2, reason = COALESCE(?3, reason), closed_at = ?4 WHERE id = ?1",
                    params![incident.0, enum_text(&status), reason, closed_at],
                )
                .map_err(store_err("set status"))?;
            if n == 0 {
                return Err(JournalError::NotFound(incident));
            }
            Ok(())
        })
    }

    fn mark_recovered<'a>(
        &'a self,
        incident: &'a IncidentId,
        boot_id: String,
        at: Timestamp,
    ) -> BoxFuture<'a, Result<(), JournalError>> {
        let incident = incident.clone();
        self.with(move |conn| {
            conn.execute(
                "UPDATE incidents SET recovered_at = COALESCE(recovered_at, ?2), recovered_boot_id = ?3 WHERE id = ?1",
                params![incident.0, at.0, boot_id],
            )
            .map_err(store_err("mark recovered"))?;
            Ok(())
        })
    }

    fn open_incidents(&self) -> BoxFuture<'_, Result<Vec<IncidentSummary>, JournalError>> {
        self.with(|conn| {
            query_summaries(conn, &format!("SELECT {SUMMARY_COLUMNS} FROM incidents WHERE closed_at IS NULL ORDER BY opened_at, id"), [])
        })
    }

    fn list(&self, limit: usize) -> BoxFuture<'_, Result<Vec<IncidentSummary>, JournalError>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.with(move |conn| {
            query_summaries(
                conn,
                &format!(
                    "SELECT {SUMMARY_COLUMNS} FROM incidents ORDER BY opened_at DESC, id LIMIT ?1"
                ),
                params![limit],
            )
        })
    }

    fn latest_for_node<'a>(
        &'a self,
        node: &'a str,
    ) -> BoxFuture<'a, Result<Option<IncidentSummary>, JournalError>> {
        let node = node.to_string();
        self.with(move |conn| {
            Ok(query_summaries(
                conn,
                &format!("SELECT {SUMMARY_COLUMNS} FROM incidents WHERE node = ?1 ORDER BY opened_at DESC, rowid DESC LIMIT 1"),
                params![node],
            )?
            .into_iter()
            .next())
        })
    }

    fn get<'a>(
        &'a self,
        incident: &'a IncidentId,
    ) -> BoxFuture<'a, Result<IncidentDetail, JournalError>> {
        let incident = incident.clone();
        self.with(move |conn| get_detail(conn, &incident))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn new(node: &str, at: i64) -> NewIncident {
        NewIncident {
            node: node.into(),
            opened_at: Timestamp(at),
            dry_run: false,
            evidence: json!({"why": "test"}),
            boot_id: Some("b1".into()),
        }
    }

    fn user_version(path: &Path) -> i64 {
        Connection::open(path)
            .expect("open")
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .expect("user_version")
    }

    #[tokio::test]
    async fn a_version_1_journal_is_migrated_and_keeps_its_incidents() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("j.sqlite");
        // What releases before versioning was read left on disk.
        {
            let c = Connection::open(&path).expect("open");
            c.execute_batch(V1).expect("v1 schema");
            c.execute_batch(
                "PRAGMA user_version = 1;
                 INSERT INTO incidents (id, node, status, phase, dry_run, opened_at, evidence)
                 VALUES ('i-old', 'compute1', 'open', 'fencing', 0, 1000, '{}');",
            )
            .expect("v1 row");
        }
        let j = SqliteJournal::open(&path).expect("migrates");
        assert_eq!(user_version(&path), i64::from(SCHEMA_VERSION));
        let open = j.open_incidents().await.expect("read");
        assert_eq!(open.len(), 1, "{open:?}");
        assert_eq!(open[0].node, "compute1");
        let indexes: i64 = j
            .conn
            .lock()
            .expect("lock")
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE type = 'index' AND name IN ('incidents_by_opened_at', 'incidents_by_node')",
                [],
                |r| r.get(0),
            )
            .expect("indexes");
        assert_eq!(indexes, 2);
        drop(j);
        // Opening again is a no-op.
        SqliteJournal::open(&path).expect("reopens");
        assert_eq!(user_version(&path), i64::from(SCHEMA_VERSION));
    }

    #[test]
    fn a_new_journal_gets_the_current_version() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("j.sqlite");
        SqliteJournal::open(&path).expect("open");
        assert_eq!(user_version(&path), i64::from(SCHEMA_VERSION));
    }

    #[test]
    fn a_journal_from_a_newer_release_is_refused_and_left_alone() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("j.sqlite");
        SqliteJournal::open(&path).expect("open");
        Connection::open(&path)
            .expect("open")
            .pragma_update(None, "user_version", 99)
            .expect("set");
        let e = SqliteJournal::open(&path)
            .err()
            .expect("a newer schema is refused");
        assert!(
            matches!(e, JournalError::NewerSchema { found: 99, .. }),
            "{e}"
        );
        let text = e.to_string();
        assert!(
            text.contains("99") && text.contains(&SCHEMA_VERSION.to_string()),
            "{text}"
        );
        assert_eq!(user_version(&path), 99);
    }

    #[tokio::test]
    async fn incident_round_trip_survives_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("j.sqlite");
        let j = SqliteJournal::open(&path).expect("open");
        let id = j
            .open_incident(new("compute1", 1000))
            .await
            .expect("open incident");
        assert!(matches!(
            j.open_incident(new("compute1", 1001)).await,
            Err(JournalError::AlreadyOpen { .. })
        ));
        let s = j
            .begin_step(
                &id,
                StepBegin {
                    kind: StepKind::PowerOff,
                    target: "compute1".into(),
                    attempt: 1,
                    at: Timestamp(1100),
                    detail: json!({"level": 0}),
                },
            )
            .await
            .expect("begin");
        j.end_step(s, Timestamp(1200), StepOutcome::Ok, json!({"power": "off"}))
            .await
            .expect("end");
        j.record_event(
            &id,
            Event {
                at: Timestamp(1150),
                kind: "note".into(),
                message: "hello".into(),
                detail: json!(null),
            },
        )
        .await
        .expect("event");
        j.set_status(&id, IncidentStatus::Completed, None, Timestamp(2000))
            .await
            .expect("close");
        drop(j);

        let j = SqliteJournal::open(&path).expect("reopen");
        let d = j.get(&id).await.expect("get");
        assert_eq!(d.summary.status, IncidentStatus::Completed);
        assert_eq!(d.summary.closed_at, Some(Timestamp(2000)));
        assert_eq!(d.evidence, json!({"why": "test"}));
        assert_eq!(d.steps[0].outcome, Some(StepOutcome::Ok));
        let what: Vec<String> = d.timeline().into_iter().map(|e| e.what).collect();
        assert_eq!(what, ["step-begin", "note", "step-end"]);
        assert!(j.open_incidents().await.expect("open list").is_empty());
        // Closed, so a new one for the node is allowed.
        j.open_incident(new("compute1", 3000))
            .await
            .expect("second incident");
        assert_eq!(j.list(10).await.expect("list").len(), 2);
        let mode: String = j
            .conn
            .lock()
            .expect("lock")
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .expect("pragma");
        assert_eq!(mode, "wal");
    }
}
