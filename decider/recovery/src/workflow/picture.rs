//! What Nova did with one server, from one consistent picture: the server
//! (status, task state, host), its evacuation migrations and its `evacuate`
//! instance actions since the incident opened, read together and re-read
//! until two reads agree. [`classify`] turns a picture into a [`NovaState`];
//! it is pure, so every combination Nova can show mid-flight is unit-tested.
//!
//! Why one picture: Nova writes an evacuation in several steps (API: task
//! state, then the action, then the migration; conductor and destination:
//! host, migration status, task state). Three separate reads can straddle a
//! queued evacuate that lands between them and show "action recorded,
//! nothing moving", which once looked like a failed attempt (issue 17).

use super::nova::{Migration, Server, ServerStatus};
use crate::time::Timestamp;

/// The server's fields that say where an evacuation stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerFacts {
    pub status: ServerStatus,
    pub task_state: Option<String>,
    pub host: Option<String>,
    /// Nova's `updated`: a write between two reads changes it.
    pub updated: Option<String>,
    pub fault: Option<String>,
}

impl From<&Server> for ServerFacts {
    fn from(s: &Server) -> Self {
        ServerFacts {
            status: s.status.clone(),
            task_state: s.task_state.clone(),
            host: s.host.clone(),
            updated: s.updated.clone(),
            fault: s.fault.clone(),
        }
    }
}

/// One read of everything that says what Nova did with a server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Picture {
    /// `None`: the server was deleted (404).
    pub server: Option<ServerFacts>,
    /// Evacuation migrations created since the incident opened, oldest first
    /// (id, status).
    pub migrations: Vec<(String, String)>,
    /// `evacuate` instance actions since the incident opened.
    pub evacuate_actions: u32,
}

impl Picture {
    /// Builds a picture from the three reads; migrations older than the
    /// incident belong to an earlier one and do not count.
    pub fn new(
        server: Option<&Server>,
        migrations: &[Migration],
        evacuate_actions: u32,
        opened_at: Timestamp,
    ) -> Self {
        let mut ms: Vec<&Migration> = migrations
            .iter()
            .filter(|m| m.created_at.is_none_or(|t| t >= opened_at))
            .collect();
        ms.sort_by_key(|m| m.created_at);
        Picture {
            server: server.map(ServerFacts::from),
            migrations: ms
                .into_iter()
                .map(|m| (m.id.clone(), m.status.clone()))
                .collect(),
            evacuate_actions,
        }
    }

    fn newest_migration(&self) -> Option<&str> {
        self.migrations.last().map(|(_, s)| s.as_str())
    }

    fn migration_count(&self) -> u32 {
        u32::try_from(self.migrations.len()).unwrap_or(u32::MAX)
    }
}

/// What the workflow knows besides the picture.
#[derive(Clone, Copy, Debug)]
pub struct Context<'a> {
    /// The failed host the server must leave.
    pub from_host: &'a str,
    /// ACTIVE, or SHUTOFF by policy.
    pub expected: &'a ServerStatus,
    /// Evacuate requests Vigil sent that may have reached Nova (every journaled
    /// attempt except those Nova refused with an answer or that never left).
    pub sent: u32,
}

/// Every state of one evacuation that Vigil tells apart, and so acts on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NovaState {
    /// Deleted: nothing to do.
    Gone,
    /// Nova holds more evacuate actions than Vigil sent: someone else (or a
    /// request Vigil lost count of) evacuated it. Stop and page.
    ExtraActions { nova: u32, sent: u32 },
    /// On the failed host, no evacuation ever started, none of ours pending.
    /// The only state in which a first evacuate may be sent.
    NotStarted,
    /// An evacuation is running (task state set, migration not finished, or
    /// status REBUILD). Wait.
    InFlight,
    /// A request of ours whose outcome is unknown has left no trace yet (Nova
    /// has fewer actions than Vigil sent) and nothing runs: it may still be
    /// queued in a stalled nova-api. Wait; never send another.
    Unaccounted { nova: u32, sent: u32 },
    /// Nova says our last attempt failed: on the failed host, no task running,
    /// newest migration `failed`/`error`, one migration per action, every
    /// request of ours accounted for. A retry may follow once it holds.
    Failed { status: ServerStatus },
    /// On another host as expected, no task, newest migration done: verified
    /// once it holds over the settle period.
    Landed { host: String },
    /// On another host but not as expected (ERROR, stopped, migration failed)
    /// with nothing running: a second evacuation is impossible and wrong.
    LandedWrong {
        host: String,
        status: ServerStatus,
        migration: Option<String>,
    },
    /// A combination Nova shows only between two of its writes (e.g. an
    /// action without its migration, a done migration on the failed host).
    /// Wait for it to settle.
    Unsettled(String),
}

impl NovaState {
    /// Whether waiting can change it (as opposed to a final answer or an
    /// action to take).
    pub fn is_waiting(&self) -> bool {
        matches!(
            self,
            NovaState::InFlight | NovaState::Unaccounted { .. } | NovaState::Unsettled(_)
        )
    }
}

fn migration_running(status: &str) -> bool {
    !matches!(
        status,
        "done" | "completed" | "failed" | "error" | "cancelled"
    )
}

/// Classifies one consistent picture. Pure: no I/O, no clock.
pub fn classify(p: &Picture, cx: Context<'_>) -> NovaState {
    let Some(s) = &p.server else {
        return NovaState::Gone;
    };
    let nova = p.evacuate_actions;
    if nova > cx.sent {
        return NovaState::ExtraActions {
            nova,
            sent: cx.sent,
        };
    }
    let newest = p.newest_migration();
    if s.task_state.is_some()
        || newest.is_some_and(migration_running)
        || matches!(&s.status, ServerStatus::Other(x) if x == "REBUILD")
    {
        return NovaState::InFlight;
    }
    // Nothing runs from here on.
    if p.migration_count() != nova {
        return NovaState::Unsettled(format!(
            "{nova} evacuate action(s) but {} evacuation migration(s)",
            p.migration_count()
        ));
    }
    if nova < cx.sent {
        return NovaState::Unaccounted {
            nova,
            sent: cx.sent,
        };
    }
    let elsewhere = s.host.as_deref().is_some_and(|h| h != cx.from_host);
    if elsewhere {
        let host = s.host.clone().unwrap_or_default();
        return match newest {
            Some("done" | "completed") if &s.status == cx.expected => NovaState::Landed { host },
            // Moved with no evacuation of this incident: someone else did it.
            None => {
                NovaState::Unsettled(format!("on {host} with no evacuation since the incident"))
            }
            m => NovaState::LandedWrong {
                host,
                status: s.status.clone(),
                migration: m.map(str::to_string),
            },
        };
    }
    match newest {
        None => NovaState::NotStarted,
        Some("failed" | "error" | "cancelled") => NovaState::Failed {
            status: s.status.clone(),
        },
        Some(m) => NovaState::Unsettled(format!(
            "migration {m} but the server is still on {}",
            cx.from_host
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FROM: &str = "compute2";

    fn facts(status: &str, task: Option<&str>, host: &str) -> Option<ServerFacts> {
        let status = match status {
            "ACTIVE" => ServerStatus::Active,
            "ERROR" => ServerStatus::Error,
            "SHUTOFF" => ServerStatus::Shutoff,
            o => ServerStatus::Other(o.into()),
        };
        Some(ServerFacts {
            status,
            task_state: task.map(str::to_string),
            host: Some(host.into()),
            updated: Some("2026-11-28T10:00:00Z".into()),
            fault: None,
        })
    }

    fn pic(server: Option<ServerFacts>, migrations: &[&str], actions: u32) -> Picture {
        Picture {
            server,
            migrations: migrations
                .iter()
                .enumerate()
                .map(|(i, s)| (format!("m{i}"), s.to_string()))
                .collect(),
            evacuate_actions: actions,
        }
    }

    /// (server, migrations, actions, sent, expected, state)
    type Case<'a> = (
        Option<ServerFacts>,
        Vec<&'a str>,
        u32,
        u32,
        &'a ServerStatus,
        NovaState,
    );

    /// Every combination Nova 2025.1 shows during an evacuation (task states
    /// and migration statuses as the lab's Nova writes them: the API sets
    /// `rebuilding` and records the action before it creates the migration
    /// `accepted`; the conductor and destination move it through
    /// `pre-migrating` to `done`, `failed` or `error`).
    #[test]
    fn every_state_nova_shows() {
        use NovaState::*;
        let active = ServerStatus::Active;
        let shutoff = ServerStatus::Shutoff;
        let landed = |h: &str| Landed { host: h.into() };
        // (server, migrations, actions, sent, expected, state)
        let cases: Vec<Case<'_>> = vec![
            // Deleted, whatever else.
            (None, vec![], 0, 0, &active, Gone),
            (None, vec!["pre-migrating"], 1, 1, &active, Gone),
            // Before anything: the only state for a first evacuate.
            (
                facts("ACTIVE", None, FROM),
                vec![],
                0,
                0,
                &active,
                NotStarted,
            ),
            (
                facts("ERROR", None, FROM),
                vec![],
                0,
                0,
                &active,
                NotStarted,
            ),
            (
                facts("SHUTOFF", None, FROM),
                vec![],
                0,
                0,
                &shutoff,
                NotStarted,
            ),
            // API mid-write: task state set, action not yet recorded.
            (
                facts("ACTIVE", Some("rebuilding"), FROM),
                vec![],
                0,
                1,
                &active,
                InFlight,
            ),
            // Action recorded, migration not yet created.
            (
                facts("ACTIVE", Some("rebuilding"), FROM),
                vec![],
                1,
                1,
                &active,
                InFlight,
            ),
            // Accepted, waiting for the (maybe frozen) conductor.
            (
                facts("ACTIVE", Some("rebuilding"), FROM),
                vec!["accepted"],
                1,
                1,
                &active,
                InFlight,
            ),
            (
                facts("REBUILD", Some("rebuilding"), FROM),
                vec!["pre-migrating"],
                1,
                1,
                &active,
                InFlight,
            ),
            // Destination took it: host moved while still spawning.
            (
                facts("REBUILD", Some("rebuild_spawning"), "compute3"),
                vec!["pre-migrating"],
                1,
                1,
                &active,
                InFlight,
            ),
            (
                facts("REBUILD", None, "compute3"),
                vec!["pre-migrating"],
                1,
                1,
                &active,
                InFlight,
            ),
            // Task cleared a moment before the migration turns done.
            (
                facts("ACTIVE", None, "compute3"),
                vec!["pre-migrating"],
                1,
                1,
                &active,
                InFlight,
            ),
            // Landed as expected.
            (
                facts("ACTIVE", None, "compute3"),
                vec!["done"],
                1,
                1,
                &active,
                landed("compute3"),
            ),
            (
                facts("ACTIVE", None, "compute3"),
                vec!["completed"],
                1,
                1,
                &active,
                landed("compute3"),
            ),
            (
                facts("SHUTOFF", None, "compute3"),
                vec!["done"],
                1,
                1,
                &shutoff,
                landed("compute3"),
            ),
            // Landed after one failed attempt.
            (
                facts("ACTIVE", None, "compute1"),
                vec!["failed", "done"],
                2,
                2,
                &active,
                landed("compute1"),
            ),
            // Landed but not as expected: never evacuate again.
            (
                facts("SHUTOFF", None, "compute3"),
                vec!["done"],
                1,
                1,
                &active,
                LandedWrong {
                    host: "compute3".into(),
                    status: shutoff.clone(),
                    migration: Some("done".into()),
                },
            ),
            (
                facts("ERROR", None, "compute3"),
                vec!["failed"],
                1,
                1,
                &active,
                LandedWrong {
                    host: "compute3".into(),
                    status: ServerStatus::Error,
                    migration: Some("failed".into()),
                },
            ),
            (
                facts("ACTIVE", None, "compute3"),
                vec!["error"],
                1,
                1,
                &active,
                LandedWrong {
                    host: "compute3".into(),
                    status: active.clone(),
                    migration: Some("error".into()),
                },
            ),
            // Failed: a claim failed (rolled back ACTIVE), no valid host (ERROR).
            (
                facts("ACTIVE", None, FROM),
                vec!["failed"],
                1,
                1,
                &active,
                Failed {
                    status: active.clone(),
                },
            ),
            (
                facts("ERROR", None, FROM),
                vec!["error"],
                1,
                1,
                &active,
                Failed {
                    status: ServerStatus::Error,
                },
            ),
            (
                facts("ERROR", None, FROM),
                vec!["failed", "error"],
                2,
                2,
                &active,
                Failed {
                    status: ServerStatus::Error,
                },
            ),
            // A request of ours with unknown outcome left no trace yet: wait.
            (
                facts("ACTIVE", None, FROM),
                vec![],
                0,
                1,
                &active,
                Unaccounted { nova: 0, sent: 1 },
            ),
            (
                facts("ERROR", None, FROM),
                vec!["error"],
                1,
                2,
                &active,
                Unaccounted { nova: 1, sent: 2 },
            ),
            // Even landed: a request of ours may still come (Nova refuses it
            // only while the source is up), so it is not verified yet.
            (
                facts("ACTIVE", None, "compute3"),
                vec!["done"],
                1,
                2,
                &active,
                Unaccounted { nova: 1, sent: 2 },
            ),
            // The race: an action recorded, its migration not yet
            // (read between the API's writes, task state already reset).
            (
                facts("ACTIVE", None, FROM),
                vec![],
                1,
                1,
                &active,
                Unsettled("1 evacuate action(s) but 0 evacuation migration(s)".into()),
            ),
            (
                facts("ERROR", None, FROM),
                vec!["error"],
                2,
                2,
                &active,
                Unsettled("2 evacuate action(s) but 1 evacuation migration(s)".into()),
            ),
            // Migration done but the server still on the failed host.
            (
                facts("ACTIVE", None, FROM),
                vec!["done"],
                1,
                1,
                &active,
                Unsettled(format!("migration done but the server is still on {FROM}")),
            ),
            // Moved without an evacuation of ours (live-migrated before? by hand?).
            (
                facts("ACTIVE", None, "compute3"),
                vec![],
                0,
                0,
                &active,
                Unsettled("on compute3 with no evacuation since the incident".into()),
            ),
            // More actions in Nova than Vigil sent: page, whatever the rest.
            (
                facts("ACTIVE", None, FROM),
                vec![],
                1,
                0,
                &active,
                ExtraActions { nova: 1, sent: 0 },
            ),
            (
                facts("REBUILD", Some("rebuilding"), FROM),
                vec!["done", "pre-migrating"],
                2,
                1,
                &active,
                ExtraActions { nova: 2, sent: 1 },
            ),
            (
                facts("ACTIVE", None, "compute3"),
                vec!["done", "done"],
                2,
                1,
                &active,
                ExtraActions { nova: 2, sent: 1 },
            ),
        ];
        for (i, (server, ms, actions, sent, expected, want)) in cases.into_iter().enumerate() {
            let p = pic(server, &ms, actions);
            let got = classify(
                &p,
                Context {
                    from_host: FROM,
                    expected,
                    sent,
                },
            );
            assert_eq!(got, want, "case {i}: {p:?} sent {sent}");
        }
    }

    #[test]
    fn only_actions_and_settled_failures_allow_an_evacuate() {
        // Whatever waits is never an answer to act on.
        for s in [
            NovaState::InFlight,
            NovaState::Unaccounted { nova: 0, sent: 1 },
            NovaState::Unsettled("x".into()),
        ] {
            assert!(s.is_waiting());
        }
        assert!(!NovaState::NotStarted.is_waiting());
        assert!(!NovaState::Failed {
            status: ServerStatus::Error
        }
        .is_waiting());
    }

    #[test]
    fn older_migrations_do_not_count() {
        let opened = Timestamp(2_000);
        let m = |id: &str, status: &str, at: i64| Migration {
            id: id.into(),
            status: status.into(),
            source_compute: None,
            dest_compute: None,
            created_at: Some(Timestamp(at)),
        };
        let p = Picture::new(
            None,
            &[m("new", "done", 3_000), m("old", "failed", 1_000)],
            1,
            opened,
        );
        assert_eq!(p.migrations, vec![("new".to_string(), "done".to_string())]);
    }
}
