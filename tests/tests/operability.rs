//! What an operator reads from the two binaries, run as real processes:
//! `--version` says the build, logs to a pipe carry no ANSI escapes, and
//! `--log-format json` lines parse with real fields. Needs neither root nor
//! the lab.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;
use vigil_tests::bins;

const DEADLINE: Duration = Duration::from_secs(30);

/// A child killed on drop, with its stderr lines arriving on a channel.
struct Running {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Running {
    fn spawn(cmd: &mut Command) -> Running {
        let mut child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .env_remove("NO_COLOR")
            .spawn()
            .expect("spawn the binary");
        let stderr = child.stderr.take().expect("piped stderr");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            // Raw bytes: a lossy UTF-8 read would still keep ESC (0x1b).
            for line in BufReader::new(stderr).split(b'\n').map_while(Result::ok) {
                if tx
                    .send(String::from_utf8_lossy(&line).into_owned())
                    .is_err()
                {
                    return;
                }
            }
        });
        Running {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Reads stderr until a line contains `needle`; returns that line.
    fn until(&mut self, needle: &str) -> String {
        let deadline = std::time::Instant::now() + DEADLINE;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    self.seen.push(l.clone());
                    if l.contains(needle) {
                        return l;
                    }
                }
                Err(_) => panic!(
                    "no stderr line with {needle:?} within {DEADLINE:?}; seen:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

fn decider(dir: &std::path::Path, log_format: &str) -> Running {
    let token = dir.join("compute1.token");
    std::fs::write(&token, "operability-test-token-0123456789").expect("token file");
    let cfg = format!(
        "[server]\nlisten = \"127.0.0.1:{}\"\n[metrics]\nlisten = \"127.0.0.1:{}\"\n[nova]\nenabled = false\n\
         [ping]\nenabled = false\n[[node]]\nname = \"compute1\"\ntoken_file = \"{}\"\n",
        free_port(),
        free_port(),
        token.display()
    );
    let path = dir.join(format!("decider-{log_format}.toml"));
    std::fs::write(&path, cfg).expect("config file");
    Running::spawn(
        Command::new(bins::bin("vigil-decider"))
            .args(["serve", "--log-format", log_format, "--config"])
            .arg(&path),
    )
}

fn sensor(dir: &std::path::Path, log_format: &str) -> Running {
    let token = dir.join("sensor.token");
    std::fs::write(&token, "operability-test-token-0123456789").expect("token file");
    Running::spawn(
        Command::new(bins::bin("vigil-sensor"))
            .args([
                "--log-format",
                log_format,
                "run",
                "--node",
                "opnode",
                "--no-mlock",
            ])
            .args(["--decider", &format!("http://127.0.0.1:{}", free_port())])
            .arg("--token-file")
            .arg(&token),
    )
}

#[test]
fn version_says_the_git_build() {
    let describe = Command::new("git")
        .args(["describe", "--always"])
        .current_dir(bins::workspace_root())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    for bin in ["vigil-decider", "vigil-sensor"] {
        let o = Command::new(bins::bin(bin))
            .arg("--version")
            .output()
            .expect("run --version");
        let out = String::from_utf8_lossy(&o.stdout);
        println!("{bin} --version: {}", out.trim());
        assert!(o.status.success(), "{bin} --version failed: {out}");
        assert!(
            out.starts_with(&format!("{bin} {}", env!("CARGO_PKG_VERSION"))),
            "{out}"
        );
        match &describe {
            Some(d) => assert!(out.contains(&format!("({d}")), "{bin}: {out} lacks ({d}…)"),
            None => println!("not a git checkout: only the crate version is checked"),
        }
    }
}

#[test]
fn logs_to_a_pipe_have_no_ansi_escapes() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut d = decider(dir.path(), "text");
    d.until("decider serving");
    let mut s = sensor(dir.path(), "text");
    s.until("sensor running");
    for (who, r) in [("decider", &d), ("sensor", &s)] {
        for l in &r.seen {
            assert!(
                !l.contains('\u{1b}'),
                "{who} wrote an ANSI escape to a pipe: {l:?}"
            );
        }
    }
}

/// A JSON log line's `fields`, asserting the line is JSON with a level.
fn fields(line: &str) -> serde_json::Value {
    let v: serde_json::Value =
        serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
    assert!(
        v["level"].is_string() && v["timestamp"].is_string(),
        "{line}"
    );
    v["fields"].clone()
}

#[test]
fn json_logs_are_one_object_per_line_with_real_fields() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut d = decider(dir.path(), "json");
    let serving = fields(&d.until("decider serving"));
    assert_eq!(serving["nodes"], 1, "a count is a number: {serving}");
    assert!(
        serving["grpc"]
            .as_str()
            .is_some_and(|a| a.starts_with("127.0.0.1:")),
        "an address is its text, not Debug: {serving}"
    );
    assert!(
        serving["metrics"]
            .as_str()
            .is_some_and(|a| a.starts_with("127.0.0.1:")),
        "an optional address is itself, not Some(..): {serving}"
    );
    let mut s = sensor(dir.path(), "json");
    let running = fields(&s.until("sensor running"));
    assert_eq!(running["node"], "opnode", "{running}");
    assert!(
        matches!(running["mode"].as_str(), Some("ebpf" | "procfs")),
        "the mode as heartbeats spell it, not Debug: {running}"
    );
    assert_eq!(running["deciders"], 1, "{running}");
    for l in d.seen.iter().chain(&s.seen) {
        fields(l);
    }
}

/// `--log-format journald`: with a journal, the sensor's start line is in
/// it with its fields as themselves; without one (this lab machine runs no
/// journald), the sensor says so and logs text instead of nothing.
#[test]
fn journald_format_writes_fields_or_says_why_not() {
    let dir = tempfile::tempdir().expect("temp dir");
    let journal = std::path::Path::new("/run/systemd/journal/socket").exists();
    let mut s = sensor(dir.path(), "journald");
    if !journal {
        s.until("cannot reach journald");
        s.until("sensor running");
        return;
    }
    let found = vigil_tests::wait::until(
        "the sensor's start in the journal",
        DEADLINE,
        Duration::from_millis(200),
        || {
            let o = Command::new("journalctl")
                .args([
                    "-o",
                    "json",
                    "--no-pager",
                    "SYSLOG_IDENTIFIER=vigil-sensor",
                    "NODE=opnode",
                ])
                .output()
                .map_err(|e| e.to_string())?;
            let text = String::from_utf8_lossy(&o.stdout).into_owned();
            text.lines()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .find(|v| v["MESSAGE"] == "sensor running")
                .ok_or(text)
        },
    );
    let (entry, _) = found.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(entry["DECIDERS"], "1", "{entry}");
}
