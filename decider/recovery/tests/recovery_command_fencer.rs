//! The command fencer against real scripts: the JSON document on stdin, the
//! answer on stdout, exit codes, and a script that hangs is killed at its
//! deadline.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use vigil_recovery::fence::command::{CommandFencer, CommandTarget};
use vigil_recovery::fence::{FenceError, Fencer, PowerState};

fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).expect("write script");
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    p
}

fn fencer(program: PathBuf, args: Vec<String>, timeout: Duration) -> CommandFencer {
    CommandFencer::new(CommandTarget {
        node: "compute7".into(),
        program,
        args,
        timeout,
    })
}

#[tokio::test]
async fn recovery_command_fencer_speaks_the_protocol() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("power");
    std::fs::write(&state, "on").expect("state");
    // A "PDU": remembers the power state in a file, logs what it was sent.
    let pdu = script(
        dir.path(),
        "pdu",
        r#"doc=$(cat)
echo "$doc $*" >> "$(dirname "$0")/requests"
case "$doc" in
  *'"action":"off"'*) echo off > "$1"; echo "switched outlet"; echo '{"power":"off","message":"outlet 7 off"}' ;;
  *'"action":"status"'*) cat "$1" ;;
  *) echo "bad request" >&2; exit 2 ;;
esac"#,
    );
    let f = fencer(
        pdu,
        vec![state.display().to_string()],
        Duration::from_secs(10),
    );
    assert_eq!(f.power_status().await.expect("status"), PowerState::On);
    let ack = f.power_off().await.expect("off");
    assert_eq!(
        (ack.power, ack.message.as_str()),
        (Some(PowerState::Off), "outlet 7 off")
    );
    assert_eq!(f.power_status().await.expect("status"), PowerState::Off);
    let requests = std::fs::read_to_string(dir.path().join("requests")).expect("requests");
    assert!(requests.contains(r#""node":"compute7""#), "{requests}");
}

#[tokio::test]
async fn recovery_command_fencer_failures_are_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let failing = script(
        dir.path(),
        "failing",
        "cat >/dev/null; echo 'PDU unreachable' >&2; exit 3",
    );
    match fencer(failing, vec![], Duration::from_secs(10))
        .power_off()
        .await
    {
        Err(FenceError::Failed { detail, .. }) => {
            assert!(detail.contains("PDU unreachable"), "{detail}")
        }
        other => panic!("expected a failure, got {other:?}"),
    }
    let mumbling = script(dir.path(), "mumbling", "cat >/dev/null; echo 'maybe'");
    assert!(matches!(
        fencer(mumbling, vec![], Duration::from_secs(10))
            .power_status()
            .await,
        Err(FenceError::BadAnswer { .. })
    ));
    let pidfile = dir.path().join("pid");
    let hanging = script(
        dir.path(),
        "hanging",
        &format!("echo $$ > {}; exec sleep 600", pidfile.display()),
    );
    let started = std::time::Instant::now();
    assert!(matches!(
        fencer(hanging, vec![], Duration::from_millis(500))
            .power_off()
            .await,
        Err(FenceError::Timeout { .. })
    ));
    assert!(started.elapsed() < Duration::from_secs(5));
    let pid = std::fs::read_to_string(&pidfile)
        .expect("pid")
        .trim()
        .to_string();
    vigil_tests::wait::until(
        "the hung script is killed",
        Duration::from_secs(5),
        Duration::from_millis(50),
        || {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            // Gone, or a zombie waiting for its reaper.
            if stat.is_empty() || stat.contains(") Z ") {
                Ok(())
            } else {
                Err(stat)
            }
        },
    )
    .expect("killed");
}

#[tokio::test]
async fn recovery_command_storage_fence_reports_itself() {
    let dir = tempfile::tempdir().expect("tempdir");
    let blocklist = script(
        dir.path(),
        "blocklist",
        r#"cat >/dev/null; echo '{"power":"unknown","storage_fenced":true,"message":"ceph osd blocklist add 198.51.100.11"}'"#,
    );
    let ack = fencer(blocklist, vec![], Duration::from_secs(10))
        .power_off()
        .await
        .expect("fence");
    assert!(ack.storage_fenced);
    assert_eq!(ack.power, Some(PowerState::Unknown));
}

/// A script someone still holds open for writing (configuration management
/// replacing it, or a fork in another thread inheriting the descriptor) cannot
/// be run for that moment; the fence waits the moment out instead of failing.
#[tokio::test]
async fn recovery_command_fencer_waits_out_a_busy_script() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pdu = script(dir.path(), "pdu", "cat >/dev/null; echo off");
    let writer = std::fs::OpenOptions::new()
        .append(true)
        .open(&pdu)
        .expect("open for writing");
    // Precondition: while it is open for writing the kernel refuses to run it.
    let refused = std::process::Command::new(&pdu)
        .stdin(std::process::Stdio::null())
        .output()
        .expect_err("exec of a file open for writing");
    assert_eq!(refused.kind(), std::io::ErrorKind::ExecutableFileBusy);

    let f = fencer(pdu.clone(), vec![], Duration::from_secs(10));
    let fence = tokio::spawn(async move { f.power_off().await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(writer);
    let ack = fence
        .await
        .expect("join")
        .expect("fence after the writer let go");
    assert_eq!(ack.power, Some(PowerState::Off));

    // Still busy after the wait: the error names the program and the cause.
    let _writer = std::fs::OpenOptions::new()
        .append(true)
        .open(&pdu)
        .expect("open for writing");
    let started = std::time::Instant::now();
    match fencer(pdu, vec![], Duration::from_secs(10))
        .power_off()
        .await
    {
        Err(FenceError::Spawn { source, .. }) => {
            assert_eq!(source.kind(), std::io::ErrorKind::ExecutableFileBusy)
        }
        other => panic!("expected a spawn error, got {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(5));
}
