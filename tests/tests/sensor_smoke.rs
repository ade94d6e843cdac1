//! Foundation smoke test (issue 2): the sensor loads its embedded eBPF
//! object, attaches `sched:sched_process_exit`, and sees the exit of a
//! process this test started.

mod sensor_support;

use std::{
    io::{BufRead as _, BufReader, Read as _},
    process::{Command, Stdio},
    time::Duration,
};

use sensor_support::ChildGuard;
use vigil_tests::{bins, tier};

#[test]
fn sensor_sees_the_exit_of_a_process_we_started() {
    if !tier::root("sensor_sees_the_exit_of_a_process_we_started", "loads eBPF") {
        return;
    }
    let target = ChildGuard(
        Command::new("sleep")
            .arg("300")
            .spawn()
            .expect("start sleep"),
    );
    let pid = target.pid();
    let mut probe = Command::new(bins::bin("vigil-sensor"))
        .args([
            "probe",
            "--json",
            "--timeout",
            "20s",
            "--wait-exit",
            &pid.to_string(),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start vigil-sensor probe");
    let stderr = probe.stderr.take().expect("stderr");
    let mut lines = BufReader::new(stderr).lines();
    // The probe says when it is attached; only then do we end the process.
    let mut seen = Vec::new();
    let attached = loop {
        match lines.next() {
            Some(Ok(line)) => {
                let hit = line.contains("attached");
                seen.push(line.clone());
                if hit {
                    break line;
                }
            }
            _ => panic!("probe ended before attaching; stderr:\n{}", seen.join("\n")),
        }
    };
    assert!(
        attached.contains("Ebpf"),
        "probe did not load eBPF: {attached}\n{}",
        seen.join("\n")
    );
    target.signal(libc::SIGKILL);
    let status = probe.wait().expect("probe exits");
    let mut out = String::new();
    probe
        .stdout
        .take()
        .expect("stdout")
        .read_to_string(&mut out)
        .expect("read probe output");
    assert!(
        status.success(),
        "probe failed ({status}); stderr:\n{}",
        seen.join("\n")
    );
    let json: serde_json::Value = serde_json::from_str(&out).expect("probe --json prints JSON");
    assert_eq!(json["mode"], "ebpf", "{out}");
    let attached = json["health"]["attached_probes"].to_string();
    assert!(attached.contains("sched_process_exit"), "{attached}");
    let exits = json["exits"].as_array().expect("exits array");
    assert!(
        exits.iter().any(|e| e["pid"] == pid),
        "no exit event for pid {pid} in {out}"
    );
    // The wait is bounded by the probe's own --timeout; keep the import used.
    let _ = Duration::ZERO;
}
