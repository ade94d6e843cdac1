//! Parsing `/proc` files, and the reads of them that are safe on a sick host.
//!
//! Which reads are safe matters: the sensor must keep sampling while tasks
//! hang. `/proc/PID/stat` reads counters without taking the target's
//! `mmap_lock`, so it never blocks on a hung process. `/proc/PID/cmdline`
//! and `environ` copy from the target's memory under `mmap_lock` and can
//! block behind a task stuck in a page fault; only the discovery thread reads
//! them, never the sampler.

use std::path::Path;

/// The fields of `/proc/PID/stat` (or `/proc/PID/task/TID/stat`) we use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stat {
    pub pid: u32,
    /// `comm`, as the kernel truncates it (15 bytes).
    pub comm: String,
    /// One letter: R, S, D, Z, T, t, X, I, …
    pub state: char,
    pub ppid: u32,
    /// Kernel `PF_*` flags (field 9).
    pub flags: u64,
    /// User + system CPU time, in clock ticks.
    pub cpu_ticks: u64,
    /// Start time after boot, in clock ticks (field 22): with the pid, it
    /// identifies a process across pid reuse.
    pub starttime: u64,
}

/// `PF_KTHREAD`: the task is a kernel thread.
pub const PF_KTHREAD: u64 = 0x0020_0000;

impl Stat {
    /// Parses the one-line contents. `comm` may contain spaces and
    /// parentheses, so it is everything between the first `(` and the last `)`.
    pub fn parse(line: &str) -> Option<Stat> {
        let open = line.find('(')?;
        let close = line.rfind(')')?;
        let pid = line.get(..open)?.trim().parse().ok()?;
        let comm = line.get(open + 1..close)?.to_string();
        // Fields after comm, numbered from 3 (state) as in proc(5).
        let rest: Vec<&str> = line.get(close + 1..)?.split_whitespace().collect();
        let field = |n: usize| rest.get(n - 3).copied();
        let num = |n: usize| field(n).and_then(|v| v.parse::<u64>().ok());
        Some(Stat {
            pid,
            comm,
            state: field(3)?.chars().next()?,
            ppid: num(4)? as u32,
            flags: num(9)?,
            cpu_ticks: num(14)? + num(15)?,
            starttime: num(22)?,
        })
    }

    pub fn is_kernel_thread(&self) -> bool {
        self.flags & PF_KTHREAD != 0
    }
}

/// Reads `/proc/<pid>/stat` (safe on hung tasks; see the module doc).
pub fn read_stat(pid: u32) -> Option<Stat> {
    read_stat_at(&format!("/proc/{pid}/stat"))
}

/// Reads `/proc/<tgid>/task/<tid>/stat`.
pub fn read_task_stat(tgid: u32, tid: u32) -> Option<Stat> {
    read_stat_at(&format!("/proc/{tgid}/task/{tid}/stat"))
}

fn read_stat_at(path: &str) -> Option<Stat> {
    let text = std::fs::read_to_string(path).ok()?;
    Stat::parse(&text)
}

/// Numeric entries of a `/proc`-like directory (pids or tids).
pub fn numeric_entries(dir: &Path) -> Vec<u32> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    rd.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

/// Splits a NUL-separated `/proc/PID/cmdline` into arguments.
pub fn split_cmdline(raw: &[u8]) -> Vec<String> {
    raw.split(|&b| b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect()
}

/// Reads `/proc/<pid>/cmdline`. May block on a hung process: discovery only.
pub fn read_cmdline(pid: u32) -> Option<Vec<String>> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .ok()
        .map(|raw| split_cmdline(&raw))
}

/// `comm` as a string from a NUL-padded kernel buffer.
pub fn comm_str(raw: &[u8]) -> String {
    let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    String::from_utf8_lossy(&raw[..end]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_awkward_comm() {
        let line = "4242 (qemu (x) y) D 1 4242 4242 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 3 0 987654 1000 200 18446744073709551615 0 0 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0\n";
        let s = Stat::parse(line).expect("parse");
        assert_eq!(s.pid, 4242);
        assert_eq!(s.comm, "qemu (x) y");
        assert_eq!(s.state, 'D');
        assert_eq!(s.ppid, 1);
        assert_eq!(s.cpu_ticks, 300);
        assert_eq!(s.starttime, 987654);
        assert!(!s.is_kernel_thread());
    }

    #[test]
    fn recognises_kernel_threads_and_rejects_junk() {
        let kthread = "2 (kthreadd) S 0 0 0 0 -1 2129984 0 0 0 0 0 0 0 0 20 0 1 0 1 0 0 18446744073709551615 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0";
        assert!(Stat::parse(kthread).expect("parse").is_kernel_thread());
        assert_eq!(Stat::parse("garbage"), None);
        assert_eq!(Stat::parse("12 (x) R 1"), None);
    }

    #[test]
    fn reads_own_stat() {
        let me = std::process::id();
        let s = read_stat(me).expect("own stat");
        assert_eq!(s.pid, me);
        assert!(s.starttime > 0);
    }

    #[test]
    fn splits_cmdline() {
        assert_eq!(
            split_cmdline(b"qemu-system-x86_64\0-uuid\0abc\0\0"),
            ["qemu-system-x86_64", "-uuid", "abc"]
        );
        assert_eq!(comm_str(b"dd\0\0\0"), "dd");
    }
}
