//! IPMI fencing through `ipmitool -I lanplus` (`chassis power off`, `chassis
//! power status`; `mc guid` names the machine). The password goes to ipmitool
//! in `IPMI_PASSWORD` with `-E`, so it is never on a command line that `ps`
//! shows, nor in our logs. Its output is read up to
//! [`super::fence_agent::OUTPUT_LIMIT`] per stream.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::process::Command;
use tracing::{info, instrument};

use super::fence_agent::read_bounded;
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
        self.ipmitool(&["chassis", "power", verb]).await
    }

    /// Runs `ipmitool … <command>` within the request timeout and returns
    /// its stdout, bounded.
    async fn ipmitool(&self, command: &[&str]) -> Result<String, FenceError> {
        let action = command.join(" ");
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
        cmd.args(command)
            .env("IPMI_PASSWORD", t.password.expose())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // A deadline that fires drops the future; the child must die with it.
            .kill_on_drop(true);
        let spawn_err = |source| FenceError::Spawn {
            fencer: self.describe(),
            program: t.ipmitool.display().to_string(),
            source,
        };
        let mut child = cmd.spawn().map_err(spawn_err)?;
        let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
        let run = async {
            let out = read_bounded(stdout);
            let err = read_bounded(stderr);
            tokio::join!(out, err, child.wait())
        };
        let (out, err, status) =
            tokio::time::timeout(t.request_timeout, run)
                .await
                .map_err(|_| FenceError::Timeout {
                    fencer: self.describe(),
                    action: action.clone(),
                    after: t.request_timeout,
                })?;
        let status = status.map_err(spawn_err)?;
        let stdout = String::from_utf8_lossy(&out).trim().to_string();
        if !status.success() {
            // ipmitool prints "Unable to Get Channel Cipher Suites" on stderr
            // even when it works, so stderr only matters on failure.
            let stderr = String::from_utf8_lossy(&err);
            let detail: Vec<&str> = stderr
                .lines()
                .filter(|l| !l.contains("Cipher Suites"))
                .collect();
            return Err(FenceError::Failed {
                fencer: self.describe(),
                status: status.to_string(),
                detail: format!("{action}: {}", detail.join("; ")),
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

impl IpmiFencer {
    /// `mc guid ipmi`: the System GUID decoded as the IPMI specification
    /// sends it (every byte least significant first), then
    /// [`likely_encoding`]. Not ipmitool's default `auto`, which takes the
    /// last byte order whose version field looks valid, so that for a
    /// name-based or random UUID it can pick SMBIOS order for a BMC that
    /// follows the specification (and ipmitool versions differ in it).
    async fn guid(&self) -> Result<Option<String>, FenceError> {
        let out = self.ipmitool(&["mc", "guid", "ipmi"]).await?;
        let read = parse_guid(&out).map_err(|detail| FenceError::BadAnswer {
            fencer: self.describe(),
            action: "mc guid".into(),
            detail,
        })?;
        Ok(read.map(|u| likely_encoding(&u)))
    }
}

/// The machine's UUID from the IPMI reading of its GUID. Many BMCs send the
/// GUID in SMBIOS byte order (first three fields little endian, the rest as
/// written) or as written (RFC 4122), against the IPMI specification
/// (ipmitool's `auto` mode exists for them). Read wrongly, the node's own
/// BMC would look like another machine and Vigil would refuse to fence
/// through it. So: the IPMI reading when it has the shape every RFC 4122
/// UUID has (version 1–5, variant `10`), else the first other reading that
/// does, else the IPMI reading. SMBIOS order goes before RFC 4122 order, as
/// in ipmitool: the two readings share the variant byte, so the shape tells
/// them apart only by the version nibble, and SMBIOS order is the common
/// deviation (AMI MegaRAC, says ipmitool). A wrong pick can only produce a mismatch
/// (refused, explained by `fence-check`), never make another machine's GUID
/// equal this node's UUID.
fn likely_encoding(ipmi_reading: &str) -> String {
    let Some(ipmi) = vigil_proto::system_uuid::bytes(ipmi_reading) else {
        return ipmi_reading.to_string();
    };
    // The bytes as the BMC sent them (IPMI reverses all 16).
    let mut wire = ipmi;
    wire.reverse();
    let mut smbios = wire;
    smbios[0..4].reverse();
    smbios[4..6].reverse();
    smbios[6..8].reverse();
    let rfc_shaped = |u: &[u8; 16]| (1..=5).contains(&(u[6] >> 4)) && u[8] & 0xc0 == 0x80;
    [ipmi, smbios, wire]
        .into_iter()
        .find(rfc_shaped)
        .map(vigil_proto::system_uuid::from_bytes)
        .unwrap_or_else(|| ipmi_reading.to_string())
}

/// The UUID on ipmitool's `System GUID   : …` line, canonical; `None` for
/// a firmware placeholder (all zeros or Fs).
fn parse_guid(out: &str) -> Result<Option<String>, String> {
    let value = out
        .lines()
        .find_map(|l| l.trim_start().strip_prefix("System GUID"))
        .and_then(|rest| rest.split_once(':'))
        .map(|(_, v)| v.trim())
        .ok_or_else(|| {
            format!(
                "no \"System GUID\" line in ipmitool's output: {:?}",
                out.chars().take(200).collect::<String>()
            )
        })?;
    if let Some(canon) = vigil_proto::system_uuid::normalize(value) {
        Ok(Some(canon))
    } else if vigil_proto::system_uuid::is_placeholder(value) {
        Ok(None)
    } else {
        Err(format!(
            "System GUID {:?} is not a UUID",
            value.chars().take(40).collect::<String>()
        ))
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

    fn system_uuid(&self) -> BoxFuture<'_, Result<Option<String>, FenceError>> {
        Box::pin(self.guid())
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

    #[test]
    fn reads_the_system_guid_as_ipmitool_prints_it() {
        // ipmitool 1.8.19 (Debian bookworm), `mc guid ipmi` against a BMC.
        let out = "System GUID   : 4c4c4544-0042-3510-8052-b4c04f4b4e32\n\
                   GUID Version  : Random or pseudo-random\n";
        assert_eq!(
            parse_guid(out),
            Ok(Some("4c4c4544-0042-3510-8052-b4c04f4b4e32".into()))
        );
        // `auto` adds an encoding line; older ipmitool a timestamp and one
        // space less; upper case from other tools.
        let out = "System GUID   : 5F1C0A6E-1111-4000-8000-000000000001\n\
                   GUID Encoding : IPMI\nGUID Version  : Time-based\n\
                   Timestamp     : 01/01/2020 00:00:00\n";
        assert_eq!(
            parse_guid(out),
            Ok(Some("5f1c0a6e-1111-4000-8000-000000000001".into()))
        );
        let old = "System GUID  : 5f1c0a6e-1111-4000-8000-000000000001\nTimestamp    : 01/01/1970 00:00:00";
        assert_eq!(
            parse_guid(old),
            Ok(Some("5f1c0a6e-1111-4000-8000-000000000001".into()))
        );
    }

    #[test]
    fn a_guid_sent_in_another_byte_order_is_read_as_the_machine_uuid() {
        // The lab's and a specification-abiding BMC's: IPMI order, taken as is.
        let lab = "c3e793f2-b209-524e-8e5d-65bcbe8c5b93";
        assert_eq!(likely_encoding(lab), lab);
        // A Dell product UUID (version 3, variant 10) from a BMC that sends
        // it in SMBIOS order: `mc guid ipmi` prints it scrambled (variant
        // 00), its SMBIOS reading is the machine's.
        let dell = "4c4c4544-0042-3510-8052-b4c04f4b4e32";
        assert_eq!(
            likely_encoding("324e4b4f-c0b4-5280-3510-00424c4c4544"),
            dell
        );
        // Sent as written (RFC 4122 order): with a version nibble that also
        // fits the SMBIOS reading, that reading wins (see above), and the
        // node's own BMC shows as a mismatch fence-check explains.
        let pick = likely_encoding("324e4b4f-c0b4-5280-1035-420044454c4c");
        assert_eq!(pick, "44454c4c-4200-1035-8052-b4c04f4b4e32");
        // Sent as written, with no valid version in its SMBIOS reading: read right.
        let v4 = "9f1c0a6e-2222-4000-8000-0000000000c1";
        let mut sent = vigil_proto::system_uuid::bytes(v4).expect("uuid");
        sent.reverse();
        assert_eq!(
            likely_encoding(&vigil_proto::system_uuid::from_bytes(sent)),
            v4
        );
        // No reading has the RFC 4122 shape: the IPMI one, as printed.
        let odd = "00000000-0000-0000-0000-000000000001";
        assert_eq!(likely_encoding(odd), odd);
    }

    #[test]
    fn a_placeholder_guid_is_unknown_and_garbage_an_error() {
        assert_eq!(
            parse_guid("System GUID   : 00000000-0000-0000-0000-000000000000\n"),
            Ok(None)
        );
        assert_eq!(
            parse_guid("System GUID   : ffffffff-ffff-ffff-ffff-ffffffffffff\n"),
            Ok(None)
        );
        // `dump` form (raw bytes) or anything else is not taken as a UUID.
        let e = parse_guid("System GUID   : a123456789abcdefa123456789abcdef\n").expect_err("raw");
        assert!(e.contains("a123456789abcdef"), "{e}");
        assert!(parse_guid("").is_err());
        assert!(parse_guid("Get GUID command failed").is_err());
        let huge = "x".repeat(1_000_000);
        let e = parse_guid(&huge).expect_err("huge");
        assert!(
            e.len() < 400,
            "the error quotes a bounded excerpt: {}",
            e.len()
        );
        let e = parse_guid(&format!("System GUID   : {huge}")).expect_err("huge value");
        assert!(e.len() < 400, "{}", e.len());
    }
}
