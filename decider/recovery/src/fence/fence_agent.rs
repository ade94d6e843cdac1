//! The fence-agent fencer: any ClusterLabs fence agent (Debian
//! `fence-agents`: fence_redfish, fence_ipmilan, fence_ilo*, fence_idrac, …)
//! behind the [`Fencer`] trait, so a Pacemaker shop's existing fence device
//! configuration carries over.
//!
//! Protocol (fence-agents' `fencing.py`): the agent reads `key=value` lines
//! on stdin until EOF. `action=off` exits 0 once the agent has seen the
//! device report off itself (`Success: Powered OFF` / `Already OFF`).
//! `action=status` exits 0 printing `Status: ON`, or 2 printing `Status: OFF`;
//! every other exit (1 generic, 3 login denied, 4 connection lost, 5 timed
//! out, 8 status unreadable, …) is an error. Exit 2 is also fencing.py's
//! "bad arguments", so "off" needs both the exit code and the `Status: OFF`
//! line: a misconfigured agent is never read as a node that is off.
//!
//! The password is written to stdin only. Output is bounded
//! ([`OUTPUT_LIMIT`] per stream), the password is masked in whatever is kept
//! (fencing.py echoes unknown option lines, value included, in a warning),
//! and a run that outlives its timeout has its whole process group killed
//! (agents run ipmitool, ssh, curl children).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;
use tracing::{info, instrument};

use super::{FenceAck, FenceError, Fencer, PowerState};
use crate::secret::Secret;

/// Bytes kept of each of the agent's stdout and stderr; the rest is read
/// and dropped so the agent never blocks on a full pipe.
pub const OUTPUT_LIMIT: usize = 64 * 1024;

/// Option keys the config may not set in `options`: Vigil sets them, or they
/// would make the agent print its options (password included).
const RESERVED_KEYS: &[&str] = &[
    "action",
    "ip",
    "ipaddr",
    "ipport",
    "username",
    "login",
    "password",
    "passwd",
    "verbose",
    "verbose_level",
    "debug",
    "debug_file",
];

/// Where the agents of Debian's `fence-agents` live; searched before PATH
/// because a systemd service's PATH may not hold sbin directories.
const AGENT_DIRS: &[&str] = &["/usr/sbin", "/sbin"];

/// A fence-agent level that cannot be used as configured.
#[derive(Debug, thiserror::Error)]
pub enum AgentConfigError {
    #[error("fence agent {agent:?} not found in /usr/sbin, /sbin or PATH; install it (Debian: apt-get install fence-agents) or give its full path")]
    NotFound { agent: PathBuf },
    #[error("fence agent {path} is not an executable file")]
    NotExecutable { path: PathBuf },
    #[error("option {key:?} may not be set in options: {why}")]
    Reserved { key: String, why: &'static str },
    #[error("option key {key:?} is not a fence-agent parameter name (letters, digits, '_' and '-' only)")]
    BadKey { key: String },
    #[error(
        "option {key:?}: a value may not contain a line break (it would inject another option)"
    )]
    BadValue { key: String },
}

/// Finds the agent's executable: a path as given, a bare name in
/// [`AGENT_DIRS`] then PATH.
pub fn resolve_agent(agent: &Path, path_var: Option<&str>) -> Result<PathBuf, AgentConfigError> {
    let candidates: Vec<PathBuf> = if agent.components().count() > 1 || agent.is_absolute() {
        vec![agent.to_path_buf()]
    } else {
        AGENT_DIRS
            .iter()
            .map(PathBuf::from)
            .chain(path_var.into_iter().flat_map(std::env::split_paths))
            .map(|d| d.join(agent))
            .collect()
    };
    let found = candidates
        .into_iter()
        .find(|p| p.is_file())
        .ok_or_else(|| AgentConfigError::NotFound {
            agent: agent.to_path_buf(),
        })?;
    use std::os::unix::fs::PermissionsExt;
    let executable = std::fs::metadata(&found)
        .map(|m| m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false);
    if !executable {
        return Err(AgentConfigError::NotExecutable { path: found });
    }
    Ok(found)
}

/// Checks the operator's extra options: well-formed keys, no reserved key,
/// no value that would break the line protocol.
pub fn check_options<'a>(
    options: impl IntoIterator<Item = (&'a String, &'a String)>,
) -> Result<(), AgentConfigError> {
    for (key, value) in options {
        let k = key.replace('-', "_");
        if RESERVED_KEYS.contains(&k.as_str()) {
            let why = match k.as_str() {
                "action" => "Vigil sets the action",
                "verbose" | "verbose_level" | "debug" | "debug_file" => {
                    "it makes the agent log its options, password included"
                }
                _ => "use the level's own field (ip, ipport, username, password)",
            };
            return Err(AgentConfigError::Reserved {
                key: key.clone(),
                why,
            });
        }
        if key.is_empty()
            || !key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Err(AgentConfigError::BadKey { key: key.clone() });
        }
        if value.contains(['\n', '\r']) {
            return Err(AgentConfigError::BadValue { key: key.clone() });
        }
    }
    Ok(())
}

/// What to run for one node, checked ([`resolve_agent`], [`check_options`]).
#[derive(Clone, Debug)]
pub struct AgentTarget {
    pub agent: PathBuf,
    /// `key=value` lines after `action=`, in order (ip, ipport, username,
    /// then the operator's options).
    pub options: Vec<(String, String)>,
    pub password: Option<Secret>,
    /// One agent run; its process group is killed after it.
    pub timeout: Duration,
    /// For the description: the device address, if known.
    pub address: Option<String>,
}

/// A fencer that runs a fence agent.
pub struct FenceAgentFencer {
    target: AgentTarget,
}

/// One finished agent run, output bounded and password-masked.
#[derive(Debug)]
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Reads up to [`OUTPUT_LIMIT`] bytes of a child's pipe, then drains the
/// rest; a pipe that was not captured reads as empty.
pub(super) async fn read_bounded(r: Option<impl AsyncRead + Unpin>) -> Vec<u8> {
    let Some(mut r) = r else {
        return Vec::new();
    };
    let mut kept = Vec::new();
    let _ = (&mut r)
        .take(OUTPUT_LIMIT as u64)
        .read_to_end(&mut kept)
        .await;
    let _ = tokio::io::copy(&mut r, &mut tokio::io::sink()).await;
    kept
}

/// Kills a process group (the agent and the tools it started).
fn kill_group(pgid: u32) {
    let Some(pgid) = i32::try_from(pgid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    else {
        return;
    };
    // ESRCH (the group is gone) is the common case after a clean exit.
    let _ = rustix::process::kill_process_group(pgid, rustix::process::Signal::KILL);
}

/// The status line's verdict: only the pair fencing.py produces counts.
fn read_status(code: Option<i32>, stdout: &str) -> Option<PowerState> {
    let status = stdout
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Status:"))
        .map(|s| s.trim().to_ascii_uppercase())
        .next_back();
    match (code, status.as_deref()) {
        (Some(0), Some("ON")) => Some(PowerState::On),
        (Some(2), Some("OFF")) => Some(PowerState::Off),
        _ => None,
    }
}

/// The last non-empty line of `s`, for an error message.
fn last_line(s: &str) -> &str {
    s.lines()
        .rev()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("")
}

/// Characters of an agent's error line kept in a fence error.
const DETAIL_LIMIT: usize = 400;

/// The agent's last real error, without fencing.py's timestamp and its
/// closing "Please use '-h' for usage" (which says nothing about the cause).
fn agent_error(stderr: &str) -> Option<&str> {
    let line = stderr
        .lines()
        .rev()
        .filter_map(|l| l.split_once("ERROR: ").map(|(_, m)| m.trim()))
        .find(|m| !m.is_empty() && !m.starts_with("Please use '-h'"))?;
    Some(match line.char_indices().nth(DETAIL_LIMIT) {
        Some((i, _)) => &line[..i],
        None => line,
    })
}

impl FenceAgentFencer {
    pub fn new(target: AgentTarget) -> Self {
        FenceAgentFencer { target }
    }

    /// The stdin document for `action`.
    fn stdin_doc(&self, action: &str) -> String {
        let mut doc = format!("action={action}\n");
        for (k, v) in &self.target.options {
            doc.push_str(&format!("{k}={v}\n"));
        }
        if let Some(p) = &self.target.password {
            doc.push_str(&format!("password={}\n", p.expose()));
        }
        doc
    }

    fn mask(&self, text: &[u8]) -> String {
        let text = String::from_utf8_lossy(text);
        match &self.target.password {
            Some(p) if !p.expose().is_empty() => text.replace(p.expose(), "***"),
            _ => text.into_owned(),
        }
    }

    async fn run(&self, action: &str) -> Result<Run, FenceError> {
        let t = &self.target;
        let mut child = super::command::spawn_when_not_busy(|| {
            Command::new(&t.agent)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .process_group(0)
                .kill_on_drop(true)
                .spawn()
        })
        .await
        .map_err(|source| FenceError::Spawn {
            fencer: self.describe(),
            program: t.agent.display().to_string(),
            source,
        })?;
        let pgid = child.id();
        let doc = self.stdin_doc(action);
        let stdin = child.stdin.take();
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        let run = async {
            if let Some(mut stdin) = stdin {
                // The agent reads to EOF: dropping stdin after the write ends it.
                // An agent that exits before reading is judged by its exit.
                let _ = stdin.write_all(doc.as_bytes()).await;
            }
            let out = read_bounded(stdout);
            let err = read_bounded(stderr);
            let (out, err, status) = tokio::join!(out, err, child.wait());
            (out, err, status)
        };
        let (out, err, status) = match tokio::time::timeout(t.timeout, run).await {
            Ok(r) => r,
            Err(_) => {
                if let Some(pgid) = pgid {
                    kill_group(pgid);
                }
                return Err(FenceError::Timeout {
                    fencer: self.describe(),
                    action: action.into(),
                    after: t.timeout,
                });
            }
        };
        let status = status.map_err(|source| FenceError::Spawn {
            fencer: self.describe(),
            program: t.agent.display().to_string(),
            source,
        })?;
        // The agent's own children may outlive it (a stuck ipmitool). While
        // any of them lives, the kernel keeps the group id from being reused;
        // with none left it is ESRCH, unless a new process took that pid and
        // made itself a group leader in these microseconds.
        if let Some(pgid) = pgid {
            kill_group(pgid);
        }
        Ok(Run {
            code: status.code(),
            stdout: self.mask(&out),
            stderr: self.mask(&err),
        })
    }

    fn failed(&self, action: &str, run: &Run) -> FenceError {
        let detail = agent_error(&run.stderr).unwrap_or_else(|| match last_line(&run.stderr) {
            "" => last_line(&run.stdout),
            l => l,
        });
        FenceError::Failed {
            fencer: self.describe(),
            status: run
                .code
                .map_or_else(|| "a signal".to_string(), |c| format!("exit code {c}")),
            detail: format!("{action}: {detail}"),
        }
    }

    #[instrument(skip(self), fields(fencer = %self.describe()))]
    async fn off(&self) -> Result<FenceAck, FenceError> {
        info!("fence agent off");
        let run = self.run("off").await?;
        if run.code != Some(0) {
            return Err(self.failed("off", &run));
        }
        let message = last_line(&run.stdout).to_string();
        // "Success: Powered OFF" / "Success: Already OFF": the agent read the
        // device's state itself; the workflow still reads it back.
        let power = message
            .to_ascii_uppercase()
            .ends_with(" OFF")
            .then_some(PowerState::Off);
        Ok(FenceAck {
            power,
            storage_fenced: false,
            message,
        })
    }

    async fn status(&self) -> Result<PowerState, FenceError> {
        let run = self.run("status").await?;
        if let Some(p) = read_status(run.code, &run.stdout) {
            return Ok(p);
        }
        if matches!(run.code, Some(0) | Some(2)) {
            return Err(FenceError::BadAnswer {
                fencer: self.describe(),
                action: "status".into(),
                detail: format!(
                    "exit code {:?} without a matching \"Status: ON|OFF\" line: {:?} {:?}",
                    run.code,
                    last_line(&run.stdout),
                    last_line(&run.stderr)
                ),
            });
        }
        Err(self.failed("status", &run))
    }
}

impl Fencer for FenceAgentFencer {
    fn describe(&self) -> String {
        let name = self.target.agent.file_name().map_or_else(
            || self.target.agent.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        );
        match &self.target.address {
            Some(a) => format!("fence-agent {name} {a}"),
            None => format!("fence-agent {name}"),
        }
    }

    fn power_off(&self) -> BoxFuture<'_, Result<FenceAck, FenceError>> {
        Box::pin(self.off())
    }

    fn power_status(&self) -> BoxFuture<'_, Result<PowerState, FenceError>> {
        Box::pin(self.status())
    }

    // `system_uuid` keeps the trait's `None`: the fence-agent API
    // (ClusterLabs FenceAgentAPI) has actions for power and for listing
    // ports (`list`, `status`, `monitor`), none for the machine's identity,
    // and an agent may front a PDU outlet or a hypervisor that knows none.
    // Guessing one from an agent's `list` output would compare a name with
    // a UUID. A node fenced only through agents is `unverified`, never a
    // mismatch; a Redfish or IPMI level gives the check.
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn off_needs_exit_2_and_the_status_line() {
        assert_eq!(read_status(Some(0), "Status: ON\n"), Some(PowerState::On));
        assert_eq!(read_status(Some(2), "Status: OFF\n"), Some(PowerState::Off));
        // fencing.py's EC_BAD_ARGS is 2 too: without the line it is no answer.
        assert_eq!(read_status(Some(2), ""), None);
        assert_eq!(read_status(Some(0), "Status: OFF\n"), None);
        assert_eq!(read_status(Some(1), "Status: OFF\n"), None);
        assert_eq!(read_status(None, "Status: OFF\n"), None);
    }

    #[test]
    fn error_lines_name_the_cause() {
        let stderr = "2026-12-07 00:21:55,306 ERROR: Failed: send_get_request: refused\n\n2026-12-07 00:21:55,315 ERROR: Please use '-h' for usage\n";
        assert_eq!(
            agent_error(stderr),
            Some("Failed: send_get_request: refused")
        );
        assert_eq!(agent_error("no error here"), None);
        let long = format!("ERROR: {}", "x".repeat(5000));
        assert_eq!(agent_error(&long).map(str::len), Some(DETAIL_LIMIT));
    }

    #[test]
    fn options_are_checked() {
        let ok = BTreeMap::from([
            ("lanplus".to_string(), "1".to_string()),
            (
                "systems-uri".to_string(),
                "/redfish/v1/Systems/x".to_string(),
            ),
        ]);
        check_options(&ok).expect("valid");
        for (k, v) in [
            ("passwd", "x"),
            ("action", "reboot"),
            ("debug-file", "/tmp/x"),
            ("bad key", "x"),
            ("lanplus", "1\npassword=x"),
        ] {
            let m = BTreeMap::from([(k.to_string(), v.to_string())]);
            assert!(check_options(&m).is_err(), "{k}={v:?} accepted");
        }
    }

    #[test]
    fn password_goes_to_stdin_and_is_masked_in_output() {
        let f = FenceAgentFencer::new(AgentTarget {
            agent: PathBuf::from("/usr/sbin/fence_x"),
            options: vec![("ip".into(), "192.0.2.1".into())],
            password: Some(Secret::new("hunter2")),
            timeout: Duration::from_secs(1),
            address: Some("192.0.2.1".into()),
        });
        assert_eq!(
            f.stdin_doc("status"),
            "action=status\nip=192.0.2.1\npassword=hunter2\n"
        );
        assert_eq!(
            f.mask(b"Parse error: Ignoring unknown option 'password=hunter2'"),
            "Parse error: Ignoring unknown option 'password=***'"
        );
        assert!(!f.describe().contains("hunter2"));
    }

    #[test]
    fn resolves_names_and_refuses_missing_agents() {
        let dir = tempfile::tempdir().expect("tempdir");
        let agent = dir.path().join("fence_vigil_test");
        std::fs::write(&agent, "#!/bin/sh\n").expect("write");
        let path = dir.path().display().to_string();
        assert!(matches!(
            resolve_agent(Path::new("fence_vigil_test"), Some(&path)),
            Err(AgentConfigError::NotExecutable { .. })
        ));
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&agent, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        assert_eq!(
            resolve_agent(Path::new("fence_vigil_test"), Some(&path)).expect("found"),
            agent
        );
        assert!(matches!(
            resolve_agent(Path::new("fence_no_such_agent"), Some(&path)),
            Err(AgentConfigError::NotFound { .. })
        ));
    }

    fn script_agent(dir: &Path, body: &str, timeout: Duration) -> FenceAgentFencer {
        use std::os::unix::fs::PermissionsExt;
        let agent = dir.join("fence_script");
        std::fs::write(&agent, format!("#!/bin/sh\ncat >/dev/null\n{body}\n")).expect("write");
        std::fs::set_permissions(&agent, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        FenceAgentFencer::new(AgentTarget {
            agent,
            options: Vec::new(),
            password: None,
            timeout,
            address: None,
        })
    }

    #[tokio::test]
    async fn output_is_bounded_and_a_truncated_answer_is_never_off() {
        let dir = tempfile::tempdir().expect("tempdir");
        // 1 MiB of noise, then what would be "off": past the limit, so unread.
        let f = script_agent(
            dir.path(),
            "head -c 1048576 /dev/zero | tr '\\0' x; echo; echo 'Status: OFF'; exit 2",
            Duration::from_secs(20),
        );
        let run = f.run("status").await.expect("runs");
        assert!(run.stdout.len() <= OUTPUT_LIMIT, "{}", run.stdout.len());
        assert!(f.power_status().await.is_err());
    }

    #[tokio::test]
    async fn a_run_past_its_timeout_is_killed_with_its_children() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pid_file = dir.path().join("child.pid");
        let f = script_agent(
            dir.path(),
            &format!("sleep 300 & echo $! > {}; wait", pid_file.display()),
            Duration::from_millis(1500),
        );
        let started = std::time::Instant::now();
        let err = f.power_status().await.expect_err("must time out");
        assert!(matches!(err, FenceError::Timeout { .. }), "{err}");
        assert!(started.elapsed() < Duration::from_secs(10));
        let pid = std::fs::read_to_string(&pid_file).expect("pid file");
        let proc_dir = PathBuf::from(format!("/proc/{}", pid.trim()));
        // The orphaned sleep is reaped by init once killed: wait for that.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while proc_dir.exists()
            && !std::fs::read_to_string(proc_dir.join("stat")).is_ok_and(|s| s.contains(") Z "))
        {
            assert!(
                std::time::Instant::now() < deadline,
                "the agent's child {} outlived the timeout",
                pid.trim()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
