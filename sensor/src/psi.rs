//! Pressure stall information (PSI): how much of the last 10 s tasks waited
//! for io, memory or cpu. With a cgroup scope, the group's own
//! `*.pressure` files; otherwise `/proc/pressure/*`.
//!
//! The files stay open and are re-read from offset 0 each sample, so a
//! sample costs one `pread` per resource and no path lookups.

use std::{fs::File, os::unix::fs::FileExt, path::Path};

/// `some`/`full` avg10 of one resource, in percent (0..100).
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct Psi {
    pub some_avg10: f64,
    pub full_avg10: f64,
}

/// The three resources the heartbeat carries.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct Pressure {
    pub io: Psi,
    pub memory: Psi,
    pub cpu: Psi,
}

/// Parses a pressure file:
/// `some avg10=1.00 avg60=0.50 avg300=0.10 total=123` and a `full` line.
pub fn parse(text: &str) -> Psi {
    let mut psi = Psi::default();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        let kind = words.next();
        let avg10 = words
            .find_map(|w| w.strip_prefix("avg10="))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0);
        match kind {
            Some("some") => psi.some_avg10 = avg10,
            Some("full") => psi.full_avg10 = avg10,
            _ => {}
        }
    }
    psi
}

/// Open pressure files, read each sample.
pub struct PressureReader {
    io: Option<File>,
    memory: Option<File>,
    cpu: Option<File>,
}

impl PressureReader {
    /// Opens the scope group's files when `cgroup_dir` has them, else the
    /// system-wide ones. A missing file (PSI disabled) reads as zeros.
    pub fn open(cgroup_dir: Option<&Path>) -> PressureReader {
        let open = |res: &str| {
            if let Some(dir) = cgroup_dir {
                if let Ok(f) = File::open(dir.join(format!("{res}.pressure"))) {
                    return Some(f);
                }
            }
            File::open(format!("/proc/pressure/{res}")).ok()
        };
        PressureReader {
            io: open("io"),
            memory: open("memory"),
            cpu: open("cpu"),
        }
    }

    pub fn read(&self) -> Pressure {
        let read = |f: &Option<File>| {
            let Some(f) = f else {
                return Psi::default();
            };
            let mut buf = [0u8; 256];
            match f.read_at(&mut buf, 0) {
                Ok(n) => parse(&String::from_utf8_lossy(&buf[..n])),
                Err(_) => Psi::default(),
            }
        };
        Pressure {
            io: read(&self.io),
            memory: read(&self.memory),
            cpu: read(&self.cpu),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_some_and_full() {
        let text = "some avg10=12.34 avg60=1.00 avg300=0.00 total=100\nfull avg10=5.50 avg60=0.00 avg300=0.00 total=50\n";
        assert_eq!(
            parse(text),
            Psi {
                some_avg10: 12.34,
                full_avg10: 5.5
            }
        );
    }

    #[test]
    fn tolerates_missing_full_line_and_junk() {
        assert_eq!(
            parse("some avg10=0.10 avg60=0 avg300=0 total=1\n").full_avg10,
            0.0
        );
        assert_eq!(parse("nonsense"), Psi::default());
    }

    #[test]
    fn reads_this_host() {
        // Zeros when PSI is off; the point is that it does not fail.
        let p = PressureReader::open(None).read();
        assert!(p.io.some_avg10 >= 0.0);
    }
}
