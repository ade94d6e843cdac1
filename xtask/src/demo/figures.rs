//! The recovery figures of one incident, read from the decider's journal
//! (`vigil-decider incident ID --json`), measured from the moment the lab
//! cut the node's power.

use serde_json::Value;

/// Unix-ms instants of one recovery; `None` where the workflow did not get
/// there.
#[derive(Clone, Debug, Default)]
pub struct Figures {
    /// When the lab was asked to cut the power.
    pub cut_ms: i64,
    /// The verdict became `dead` (the evidence's `since` at decision time).
    pub dead_ms: Option<i64>,
    /// The BMC read the power back off (the confirm_off step ended ok).
    pub fenced_ms: Option<i64>,
    /// Nova accepted `forced_down` (the force_down step ended ok): where a
    /// hand evacuation starts its clock.
    pub forced_down_ms: Option<i64>,
    /// The first evacuate call was made.
    pub first_evacuate_ms: Option<i64>,
    /// The last selected server was seen at its expected status elsewhere;
    /// `None` unless every selected server got there.
    pub all_moved_ms: Option<i64>,
    /// When the decider first saw the node's last `updated_at` (decision
    /// time minus how long it had stood still then). `dead` follows it by
    /// report interval + margin + `dead_for`, whatever the cut's phase; it
    /// can be after the cut when a report was in flight.
    pub last_report_seen_ms: Option<i64>,
    pub selected: usize,
    pub moved: usize,
    /// Incident status: completed, needs-attention, …
    pub status: String,
}

fn steps<'a>(inc: &'a Value, kind: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
    inc["incident"]["steps"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(move |s| s["kind"] == kind)
}

impl Figures {
    pub fn from_incident(inc: &Value, cut_ms: i64) -> Figures {
        let i = &inc["incident"];
        let dead_ms = i["evidence"]["since_unix_ms"]
            .as_i64()
            .filter(|t| *t >= cut_ms)
            .or_else(|| i["summary"]["opened_at"].as_i64());
        let fenced_ms = steps(inc, "confirm_off")
            .filter(|s| s["outcome"] == "ok")
            .filter_map(|s| s["ended_at"].as_i64())
            .min();
        let forced_down_ms = steps(inc, "force_down")
            .filter(|s| s["outcome"] == "ok")
            .filter_map(|s| s["ended_at"].as_i64())
            .min();
        let first_evacuate_ms = steps(inc, "evacuate")
            .filter_map(|s| s["began_at"].as_i64())
            .min();
        let instances: Vec<&Value> = i["instances"].as_array().into_iter().flatten().collect();
        let moved: Vec<&Value> = instances
            .iter()
            .copied()
            .filter(|r| r["state"] == "evacuated")
            .collect();
        let all_moved_ms = if !instances.is_empty() && moved.len() == instances.len() {
            moved.iter().filter_map(|r| r["finished_at"].as_i64()).max()
        } else {
            None
        };
        let ev = &i["evidence"];
        let last_report_seen_ms = ev["decided_at_unix_ms"]
            .as_i64()
            .zip(ev["nova"]["updated_at_stalled_ms"].as_i64())
            .map(|(decided, stalled)| decided - stalled);
        Figures {
            cut_ms,
            dead_ms,
            fenced_ms,
            forced_down_ms,
            first_evacuate_ms,
            all_moved_ms,
            last_report_seen_ms,
            selected: instances.len(),
            moved: moved.len(),
            status: i["summary"]["status"].as_str().unwrap_or("?").to_string(),
        }
    }

    /// Seconds from the power cut to `t`.
    pub fn after_cut(&self, t: Option<i64>) -> Option<f64> {
        t.map(|t| (t - self.cut_ms) as f64 / 1000.0)
    }

    /// Seconds from `dead` to `t`.
    pub fn after_dead(&self, t: Option<i64>) -> Option<f64> {
        match (self.dead_ms, t) {
            (Some(d), Some(t)) => Some((t - d) as f64 / 1000.0),
            _ => None,
        }
    }
}

/// `12.3 s`, or `—` when it did not happen.
pub fn secs(v: Option<f64>) -> String {
    v.map_or_else(|| "—".to_string(), |s| format!("{s:.1} s"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_come_from_the_steps_and_instances() {
        let inc = serde_json::json!({"incident": {
            "summary": {"status": "completed", "opened_at": 10_500},
            "evidence": {"since_unix_ms": 10_400, "decided_at_unix_ms": 10_410,
                         "nova": {"updated_at_stalled_ms": 12_010}},
            "steps": [
                {"kind": "power_off", "began_at": 10_600, "ended_at": 10_800, "outcome": "ok"},
                {"kind": "confirm_off", "began_at": 10_800, "ended_at": 11_000, "outcome": "ok"},
                {"kind": "evacuate", "began_at": 11_500, "ended_at": 11_900, "outcome": "ok"},
                {"kind": "evacuate", "began_at": 11_400, "ended_at": 11_700, "outcome": "ok"},
            ],
            "instances": [
                {"state": "evacuated", "finished_at": 30_000},
                {"state": "evacuated", "finished_at": 31_000},
            ],
        }});
        let f = Figures::from_incident(&inc, 1_000);
        assert_eq!(f.dead_ms, Some(10_400));
        assert_eq!(f.fenced_ms, Some(11_000));
        assert_eq!(f.first_evacuate_ms, Some(11_400));
        assert_eq!(f.all_moved_ms, Some(31_000));
        assert_eq!(f.after_cut(f.dead_ms), Some(9.4));
        assert_eq!(f.last_report_seen_ms, Some(-1_600), "2.6 s before the cut");
        assert_eq!(f.moved, 2);
    }

    #[test]
    fn all_moved_is_unset_while_one_is_not_there() {
        let inc = serde_json::json!({"incident": {
            "summary": {"status": "needs-attention", "opened_at": 10_500},
            "evidence": {},
            "steps": [],
            "instances": [
                {"state": "evacuated", "finished_at": 30_000},
                {"state": "failed", "finished_at": 31_000},
            ],
        }});
        let f = Figures::from_incident(&inc, 1_000);
        assert_eq!(f.dead_ms, Some(10_500), "falls back to opened_at");
        assert_eq!(f.all_moved_ms, None);
        assert_eq!(f.last_report_seen_ms, None, "no Nova evidence, no phase");
        assert_eq!(secs(f.after_cut(f.all_moved_ms)), "—");
    }
}
