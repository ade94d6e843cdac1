//! The Redfish fencer against a real sushy-tools emulator (PyPI
//! `sushy-tools`, fake systems driver): ForceOff through
//! `ComputerSystem.Reset`, then `PowerState` read back. The fake driver
//! applies power changes 1–11 s later, like real hardware, so the read-back
//! must poll.

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use vigil_recovery::config::{FencingConfig, LevelConfig, NodeFencing, RedfishAuth, RedfishConfig};
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

fn start_sushy() -> Sushy {
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
    let child = Command::new("sushy-emulator")
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
    let sushy = start_sushy();
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
