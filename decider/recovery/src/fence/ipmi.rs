//! IPMI fencing through `ipmitool -I lanplus` (`chassis power off`, `chassis
//! power status`). The password goes to ipmitool in `IPMI_PASSWORD` with `-E`,
//! so it is never on a command line that `ps` shows, nor in our logs.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::process::Command;
use tracing::{info, instrument};

use super::{FenceAck, FenceError, Fencer, PowerState};
use crate::secret::Secret;

/// Where and how to reach one IPMI BMC.
#[derive(Clone, Debug)]
pub struct IpmiTarget {
    pub host: String,
    pub port: u16,
    pub username: String,
    pub password: Secret,
    pub cipher_suite: Option<u8>,
    pub ipmitool: PathBuf,
    /// One ipmitool run may take this long (it retries internally).
    pub request_timeout: Duration,
}

/// An IPMI fencer for one BMC.
pub struct IpmiFencer {
    target: IpmiTarget,
}

impl IpmiFencer {
    pub fn new(target: IpmiTarget) -> Self {
        IpmiFencer { target }
    }

    /// Runs `ipmitool … chassis power <verb>` and returns its stdout.
    async fn chassis_power(&self, verb: &str) -> Result<String, FenceError> {
        let t = &self.target;
        let mut cmd = Command::new(&t.ipmitool);
        cmd.args([
            "-I",
            "lanplus",
            "-H",
            &t.host,
            "-p",
            &t.port.to_string(),
            "-U",
            &t.username,
            "-E",
        ]);
        if let Some(c) = t.cipher_suite {
            cmd.args(["-C", &c.to_string()]);
        }
        cmd.args(["chassis", "power", verb])
            .env("IPMI_PASSWORD", t.password.expose())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // A deadline that fires drops the future; the child must die with it.
            .kill_on_drop(true);
        let child = cmd.spawn().map_err(|source| FenceError::Spawn {
            fencer: self.describe(),
            program: t.ipmitool.display().to_string(),
            source,
        })?;
        let out = tokio::time::timeout(t.request_timeout, child.wait_with_output())
            .await
            .map_err(|_| FenceError::Timeout {
                fencer: self.describe(),
                action: format!("chassis power {verb}"),
                after: t.request_timeout,
            })?
            .map_err(|source| FenceError::Spawn {
                fencer: self.describe(),
                program: t.ipmitool.display().to_string(),
                source,
            })?;
        let stdout = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if !out.status.success() {
            // ipmitool prints "Unable to Get Channel Cipher Suites" on stderr
            // even when it works, so stderr only matters on failure.
            let stderr = String::from_utf8_lossy(&out.stderr);
            let detail: Vec<&str> = stderr
                .lines()
                .filter(|l| !l.contains("Cipher Suites"))
                .collect();
            return Err(FenceError::Failed {
                fencer: self.describe(),
                status: out.status.to_string(),
                detail: format!("chassis power {verb}: {}", detail.join("; ")),
            });
        }
        Ok(stdout)
    }

    #[instrument(skip(self), fields(fencer = %self.describe()))]
    async fn off(&self) -> Result<FenceAck, FenceError> {
        info!("ipmi chassis power off");
        let out = self.chassis_power("off").await?;
        // "Chassis Power Control: Down/Off" on success.
        if !out.to_ascii_lowercase().contains("down/off") {
            return Err(FenceError::BadAnswer {
                fencer: self.describe(),
                action: "chassis power off".into(),
                detail: out,
            });
        }
        Ok(FenceAck {
            power: None,
            storage_fenced: false,
            message: out,
        })
    }

    async fn status(&self) -> Result<PowerState, FenceError> {
        let out = self.chassis_power("status").await?;
        // "Chassis Power is on" / "Chassis Power is off".
        parse_status(&out).ok_or_else(|| FenceError::BadAnswer {
            fencer: self.describe(),
            action: "chassis power status".into(),
            detail: out,
        })
    }
}

fn parse_status(out: &str) -> Option<PowerState> {
    let l = out.to_ascii_lowercase();
    if l.contains("power is off") {
        Some(PowerState::Off)
    } else if l.contains("power is on") {
        Some(PowerState::On)
    } else {
        None
    }
}

impl Fencer for IpmiFencer {
    fn describe(&self) -> String {
        format!("ipmi {}:{}", self.target.host, self.target.port)
    }

    fn power_off(&self) -> BoxFuture<'_, Result<FenceAck, FenceError>> {
        Box::pin(self.off())
    }

    fn power_status(&self) -> BoxFuture<'_, Result<PowerState, FenceError>> {
        Box::pin(self.status())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_ipmitool_status_lines() {
        assert_eq!(parse_status("Chassis Power is off"), Some(PowerState::Off));
        assert_eq!(parse_status("Chassis Power is on\n"), Some(PowerState::On));
        assert_eq!(parse_status("garbage"), None);
    }
}
