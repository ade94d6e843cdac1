//! The Redfish fencer against a real sushy-tools emulator (PyPI
//! `sushy-tools`, fake systems driver): ForceOff through
//! `ComputerSystem.Reset`, then `PowerState` read back. The fake driver
//! applies power changes 1–11 s later, like real hardware, so the read-back
//! must poll. The same emulator behind TLS drives Debian's real
//! `fence_redfish` (fence-agents) through the `fence_agent` level kind.

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use vigil_recovery::config::{
    FenceAgentConfig, FencingConfig, LevelConfig, NodeFencing, RedfishAuth, RedfishConfig,
};
use vigil_recovery::fence::{fence_check, levels_for, PowerState};
use vigil_recovery::secret::SecretSource;

fn have_sushy(test: &str) -> bool {
    let found = std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join("sushy-emulator").is_file()));
    if !found {
        let msg = format!("{test}: needs sushy-emulator (pip install sushy-tools)");
        assert!(!vigil_tests::tier::strict(), "{msg}");
        eprintln!("SKIPPED {msg}");
    }
    found
}

struct Sushy {
    /// Fresh per run: the fake driver keeps system state across emulator runs.
    uuid: String,
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Sushy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// fence_redfish only speaks https: `tls` gives the emulator a fresh
/// self-signed certificate.
fn start_sushy(tls: bool) -> Sushy {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let uuid = uuid::Uuid::new_v4().to_string();
    // The fake driver keeps its systems in an SQLite file, by default shared
    // by every emulator on the machine under /tmp: give each run its own.
    let state = dir.path().join("state").display().to_string();
    let conf = dir.path().join("emulator.conf");
    std::fs::write(
        &conf,
        format!(
            "SUSHY_EMULATOR_FAKE_DRIVER = True\nSUSHY_EMULATOR_STATE_DIR = {state:?}\nSUSHY_EMULATOR_FAKE_SYSTEMS = [{{'uuid': '{uuid}', 'name': 'compute1', 'power_state': 'On', 'external_notifier': False, 'nics': []}}]\n"
        ),
    )
    .expect("config");
    let mut tls_args = Vec::new();
    if tls {
        let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        let made = Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            ])
            .args(["-subj", "/CN=127.0.0.1", "-keyout"])
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("run openssl");
        assert!(made.success(), "openssl made no certificate");
        tls_args = vec![
            "--ssl-certificate".to_string(),
            cert.display().to_string(),
            "--ssl-key".to_string(),
            key.display().to_string(),
        ];
    }
    let child = Command::new("sushy-emulator")
        .args(&tls_args)
        .args([
            "--fake",
            "--config",
            &conf.display().to_string(),
            "-i",
            "127.0.0.1",
            "-p",
            &port.to_string(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start sushy-emulator");
    let s = Sushy {
        uuid,
        child,
        port,
        _dir: dir,
    };
    vigil_tests::wait::until(
        "sushy-emulator listens",
        Duration::from_secs(20),
        Duration::from_millis(200),
        || std::net::TcpStream::connect(("127.0.0.1", port)).map(|_| ()),
    )
    .expect("sushy up");
    s
}

fn config(port: u16, system_id: Option<&str>) -> FencingConfig {
    FencingConfig {
        nodes: BTreeMap::from([(
            "compute1".to_string(),
            NodeFencing {
                bmc: Some(format!("127.0.0.1:{port}")),
                levels: vec![LevelConfig::Redfish(RedfishConfig {
                    url: "http://{bmc}/redfish/v1".into(),
                    system_id: system_id.map(str::to_string),
                    username: "admin".into(),
                    password: SecretSource::Env("BMC_PASSWORD".into()),
                    auth: RedfishAuth::Basic,
                    insecure_tls: false,
                    deadline: Duration::from_secs(30),
                    request_timeout: Duration::from_secs(10),
                })],
            },
        )]),
        ..FencingConfig::default()
    }
}

#[tokio::test]
async fn recovery_redfish_force_off_is_read_back_off() {
    if !have_sushy("recovery_redfish_force_off_is_read_back_off") {
        return;
    }
    let sushy = start_sushy(false);
    let env = BTreeMap::from([(
        "BMC_PASSWORD".to_string(),
        "unused-by-the-emulator".to_string(),
    )]);
    for system_id in [None, Some(sushy.uuid.as_str())] {
        let levels = levels_for(&config(sushy.port, system_id), "compute1", &env).expect("levels");
        let rows = fence_check(&config(sushy.port, system_id), &env).await;
        assert!(rows[0].result.is_ok(), "{rows:?}");
        if system_id.is_none() {
            assert_eq!(
                levels[0].fencer.power_status().await.expect("status"),
                PowerState::On
            );
            // The machine's identity: ComputerSystem.UUID, as configured.
            assert_eq!(
                levels[0].fencer.system_uuid().await.expect("UUID"),
                Some(sushy.uuid.clone())
            );
            let ack = levels[0].fencer.power_off().await.expect("ForceOff");
            assert!(ack.message.contains("ForceOff accepted"), "{ack:?}");
        }
        // The emulator applies it after 1–11 s: poll as the workflow does.
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            if levels[0].fencer.power_status().await.expect("status") == PowerState::Off {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "power not read back off within 20 s"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    // A system id that does not exist is an error, never "off".
    let levels = levels_for(
        &config(sushy.port, Some("no-such-system")),
        "compute1",
        &env,
    )
    .expect("levels");
    assert!(levels[0].fencer.power_status().await.is_err());
}

fn agent_config(port: u16, systems_uri: Option<&str>) -> FencingConfig {
    let mut options = BTreeMap::from([("ssl_insecure".to_string(), "1".to_string())]);
    if let Some(u) = systems_uri {
        options.insert("systems_uri".into(), u.into());
    }
    FencingConfig {
        nodes: BTreeMap::from([(
            "compute1".to_string(),
            NodeFencing {
                bmc: Some("127.0.0.1".into()),
                levels: vec![LevelConfig::FenceAgent(FenceAgentConfig {
                    agent: "fence_redfish".into(),
                    ip: Some("{bmc}".into()),
                    ipport: Some(port),
                    username: Some("admin".into()),
                    password: Some(SecretSource::Env("BMC_PASSWORD".into())),
                    options,
                    deadline: Duration::from_secs(60),
                    action_timeout: Duration::from_secs(40),
                })],
            },
        )]),
        ..FencingConfig::default()
    }
}

#[tokio::test]
async fn recovery_fence_agent_redfish_off_is_read_back_off() {
    let test = "recovery_fence_agent_redfish_off_is_read_back_off";
    if !have_sushy(test) {
        return;
    }
    if !std::path::Path::new("/usr/sbin/fence_redfish").is_file() {
        let msg = format!("{test}: needs fence_redfish (apt-get install fence-agents)");
        assert!(!vigil_tests::tier::strict(), "{msg}");
        eprintln!("SKIPPED {msg}");
        return;
    }
    let started = std::time::Instant::now();
    let sushy = start_sushy(true);
    let env = BTreeMap::from([("BMC_PASSWORD".to_string(), "agent-pw-4711".to_string())]);
    let cfg = agent_config(sushy.port, None);
    let levels = levels_for(&cfg, "compute1", &env).expect("levels");
    let fencer = levels[0].fencer.clone();
    assert!(
        fencer.describe().contains("fence_redfish"),
        "{}",
        fencer.describe()
    );
    assert_eq!(fencer.power_status().await.expect("status"), PowerState::On);
    let rows = fence_check(&cfg, &env).await;
    assert_eq!(rows[0].result, Ok(PowerState::On), "{rows:?}");

    // The agent waits for the emulator to report off (it applies ForceOff
    // 1–11 s later), then the read-back through `action=status` says so.
    let ack = fencer.power_off().await.expect("fence_redfish off");
    assert_eq!(ack.power, Some(PowerState::Off), "{ack:?}");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        match fencer.power_status().await {
            Ok(PowerState::Off) => break,
            other => assert!(
                std::time::Instant::now() < deadline,
                "not read back off within 20 s: {other:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // A system that does not exist: the agent fails, and that is never "off";
    // the password is not in the error.
    let bad = agent_config(sushy.port, Some("/redfish/v1/Systems/no-such-system"));
    let rows = fence_check(&bad, &env).await;
    let err = rows[0]
        .result
        .clone()
        .expect_err("unknown system must fail");
    assert!(!err.contains("agent-pw-4711"), "{err}");
    eprintln!("{test}: {err}");
    eprintln!("{test}: took {:?}", started.elapsed());
}
