//! Judging "blocked" over a window, not by one sleep's age.
//!
//! Block-layer waits wake up periodically (`blk_io_schedule` every
//! `hung_task_timeout_secs / 2`) precisely so that khungtaskd stays quiet,
//! and each wake restarts the sleep's age. So a task is followed across
//! samples: an *episode* starts at the first sample that finds it stuck
//! (in D for at least half an interval, so healthy I/O with millisecond
//! sleeps never starts one) and goes on through brief wakes; it ends after
//! three samples in a row that do not find it in D at all. A task is
//! reported while it is in D now, its episode is at least the threshold
//! long, and it was stuck in at least half of the recent samples.
//!
//! Pure logic: the caller supplies what each sample saw and the clock.

use std::collections::HashMap;

/// A task the probe sees in uninterruptible sleep at this sample.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sleeper {
    pub tid: u32,
    pub tgid: u32,
    pub comm: String,
    /// cgroup v2 id, when the probe knows it (eBPF mode).
    pub cgroup_id: Option<u64>,
    /// When this sleep began (CLOCK_MONOTONIC ns), when known (eBPF mode).
    pub since_ns: Option<u64>,
}

/// A task judged blocked.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Blocked {
    pub tid: u32,
    pub tgid: u32,
    pub comm: String,
    #[serde(skip)]
    pub cgroup_id: Option<u64>,
    /// How long the episode has lasted.
    pub blocked_ms: u64,
    /// Share of the recent samples that found it stuck, 0..1.
    pub d_share: f64,
}

/// Episodes end after this many samples in a row without D state.
const END_AFTER_MISSES: u32 = 3;

#[derive(Debug)]
struct Track {
    tgid: u32,
    comm: String,
    cgroup_id: Option<u64>,
    episode_start_ns: u64,
    /// One bit per sample, newest in bit 0: 1 = stuck.
    history: u64,
    samples: u32,
    misses_in_row: u32,
    in_d_now: bool,
}

/// Follows stuck tasks across samples.
#[derive(Debug)]
pub struct Tracker {
    tracks: HashMap<u32, Track>,
    /// Samples that make up "recent" for `d_share` (≤ 64).
    window: u32,
}

impl Tracker {
    /// `window` is how many recent samples count for the share (clamped to
    /// 4..=64).
    pub fn new(window: u32) -> Tracker {
        Tracker {
            tracks: HashMap::new(),
            window: window.clamp(4, 64),
        }
    }

    /// Records one sample: every task the probe sees in D state now.
    pub fn observe(&mut self, now_ns: u64, interval_ns: u64, sleepers: &[Sleeper]) {
        for t in self.tracks.values_mut() {
            t.in_d_now = false;
        }
        for s in sleepers {
            let stuck = match s.since_ns {
                Some(since) => now_ns.saturating_sub(since) >= interval_ns / 2,
                // procfs mode cannot tell a long sleep from many short ones.
                None => true,
            };
            let start = s.since_ns.unwrap_or(now_ns).min(now_ns);
            match self.tracks.get_mut(&s.tid) {
                // Same thread id, same process: the episode goes on.
                Some(t) if t.tgid == s.tgid => {
                    t.history = (t.history << 1) | stuck as u64;
                    t.samples = t.samples.saturating_add(1);
                    t.misses_in_row = 0;
                    t.in_d_now = true;
                    t.episode_start_ns = t.episode_start_ns.min(start);
                }
                // New episode (or the tid was reused by another process).
                _ if stuck => {
                    self.tracks.insert(
                        s.tid,
                        Track {
                            tgid: s.tgid,
                            comm: s.comm.clone(),
                            cgroup_id: s.cgroup_id,
                            episode_start_ns: start,
                            history: 1,
                            samples: 1,
                            misses_in_row: 0,
                            in_d_now: true,
                        },
                    );
                }
                _ => {
                    self.tracks.remove(&s.tid);
                }
            }
        }
        let mask = self.mask_all();
        self.tracks.retain(|_, t| {
            if !t.in_d_now {
                t.history <<= 1;
                t.samples = t.samples.saturating_add(1);
                t.misses_in_row += 1;
            }
            t.misses_in_row < END_AFTER_MISSES && t.history & mask != 0
        });
    }

    fn mask_all(&self) -> u64 {
        if self.window >= 64 {
            u64::MAX
        } else {
            (1u64 << self.window) - 1
        }
    }

    /// Tasks blocked for at least `threshold_ns`, longest first.
    pub fn blocked(&self, now_ns: u64, threshold_ns: u64) -> Vec<Blocked> {
        let mut out: Vec<Blocked> = self
            .tracks
            .iter()
            .filter_map(|(&tid, t)| {
                let n = t.samples.min(self.window);
                let recent = if n >= 64 { u64::MAX } else { (1u64 << n) - 1 };
                let d_share = (t.history & recent).count_ones() as f64 / n.max(1) as f64;
                let dur = now_ns.saturating_sub(t.episode_start_ns);
                (t.in_d_now && dur >= threshold_ns && d_share >= 0.5).then(|| Blocked {
                    tid,
                    tgid: t.tgid,
                    comm: t.comm.clone(),
                    cgroup_id: t.cgroup_id,
                    blocked_ms: dur / 1_000_000,
                    d_share,
                })
            })
            .collect();
        out.sort_by(|a, b| b.blocked_ms.cmp(&a.blocked_ms).then(a.tid.cmp(&b.tid)));
        out
    }

    /// Forgets a task (e.g. its D-state entry turned out to be stale).
    pub fn forget(&mut self, tid: u32) {
        self.tracks.remove(&tid);
    }

    pub fn len(&self) -> usize {
        self.tracks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tracks.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    fn sleeper(tid: u32, since: Option<u64>) -> Sleeper {
        Sleeper {
            tid,
            tgid: tid,
            comm: "dd".into(),
            cgroup_id: None,
            since_ns: since,
        }
    }

    /// Runs samples at 1 s intervals from t=1 s; each step lists the
    /// sleepers seen, and the result is what `blocked` says after the last.
    fn check(steps: &[Vec<Sleeper>], threshold_s: u64, expected: &[(u32, u64)]) {
        let mut t = Tracker::new(10);
        let mut now = 0;
        for step in steps {
            now += S;
            t.observe(now, S, step);
        }
        let got: Vec<(u32, u64)> = t
            .blocked(now, threshold_s * S)
            .iter()
            .map(|b| (b.tid, b.blocked_ms))
            .collect();
        assert_eq!(got, expected);
    }

    #[test]
    fn a_long_sleep_is_blocked_after_the_threshold() {
        let steps: Vec<_> = (0..6).map(|_| vec![sleeper(7, Some(S / 2))]).collect();
        check(&steps, 5, &[(7, 5500)]);
        check(&steps[..4], 5, &[]);
    }

    #[test]
    fn short_healthy_io_sleeps_never_count() {
        // Always in D at the sample instant, but each sleep only 1 ms old.
        let steps: Vec<_> = (1..=10)
            .map(|i| vec![sleeper(7, Some(i * S - 1_000_000))])
            .collect();
        check(&steps, 5, &[]);
    }

    #[test]
    fn periodic_wakes_do_not_reset_the_episode() {
        // Stuck from t=0.5; at t=4 the task woke and slept again (a fresh,
        // young sleep), as blk_io_schedule does.
        let mut steps: Vec<_> = (0..3).map(|_| vec![sleeper(7, Some(S / 2))]).collect();
        steps.push(vec![sleeper(7, Some(4 * S - 1000))]);
        steps.extend((0..4).map(|_| vec![sleeper(7, Some(4 * S - 1000))]));
        check(&steps, 5, &[(7, 7500)]);
    }

    #[test]
    fn cleared_when_the_task_runs_again() {
        let mut steps: Vec<_> = (0..6).map(|_| vec![sleeper(7, Some(S / 2))]).collect();
        steps.push(vec![]);
        check(&steps, 5, &[]);
    }

    #[test]
    fn procfs_mode_counts_samples() {
        let steps: Vec<_> = (0..7).map(|_| vec![sleeper(9, None)]).collect();
        check(&steps, 5, &[(9, 6000)]);
    }

    #[test]
    fn a_reused_tid_starts_over() {
        let mut t = Tracker::new(10);
        for i in 1..=6 {
            t.observe(i * S, S, &[sleeper(7, Some(S / 2))]);
        }
        let other = Sleeper {
            tgid: 99,
            ..sleeper(7, Some(6 * S))
        };
        t.observe(7 * S, S, &[other]);
        assert!(t.blocked(7 * S, 5 * S).is_empty());
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn episodes_end_after_three_misses() {
        let mut t = Tracker::new(10);
        t.observe(S, S, &[sleeper(7, Some(0))]);
        for i in 2..=4 {
            t.observe(i * S, S, &[]);
        }
        assert!(t.is_empty());
    }
}
