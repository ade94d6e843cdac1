//! qemu liveness: a process named `qemu-system-x86_64` with `-uuid U` is
//! found with U; its CPU progress rises while it spins, stops while it is
//! SIGSTOPped and comes back; killing it is reported as an exit with U.

mod sensor_support;

use std::{process::Stdio, time::Duration};

use sensor_support::{boot_id_file, sensor_args, ChildGuard, Collector, Sensor, TestCgroup};
use vigil_proto::v1;
use vigil_tests::tier;

const UUID: &str = "3f1c7e2a-9d7b-4c3e-8a51-2b9e0c6d7f10";

fn instance(hb: &v1::Heartbeat) -> Option<&v1::Instance> {
    hb.instances.iter().find(|i| i.uuid == UUID)
}

#[test]
fn qemu_progress_stop_and_exit_are_reported_with_the_uuid() {
    if !tier::root(
        "qemu_progress_stop_and_exit_are_reported_with_the_uuid",
        "loads eBPF",
    ) {
        return;
    }
    let cg = TestCgroup::new("qemu");
    let collector = Collector::start("");
    let tmp = tempfile::tempdir().expect("tempdir");
    // A shell renamed so its comm is qemu-system-x86_64 (truncated by the
    // kernel to qemu-system-x86), spinning on one CPU.
    let fake = tmp.path().join("qemu-system-x86_64");
    std::fs::copy("/bin/sh", &fake).expect("copy /bin/sh");
    let sensor = Sensor::start(&sensor_args(
        &collector,
        &boot_id_file(tmp.path()),
        Some(&cg),
        &["--interval", "500ms"],
    ));
    let qemu = ChildGuard(
        cg.command(&fake)
            .args([
                "-c",
                "while :; do :; done",
                "-name",
                "guest=instance-0000002a,debug-threads=on",
                "-uuid",
                UUID,
            ])
            .stdin(Stdio::null())
            .spawn()
            .expect("start the fake qemu"),
    );

    let (_, hb, _) = collector.wait_for(
        "the instance making progress",
        Duration::from_secs(15),
        |hb| {
            // More than 20 % of the 500 ms interval.
            instance(hb)
                .filter(|i| i.alive && i.cpu_ns_delta > 100_000_000)
                .map(|i| i.cpu_ns_delta)
        },
    );
    assert_eq!(hb.mode, v1::ProbeMode::Ebpf as i32, "{}", sensor.log_text());
    let i = instance(&hb).expect("listed");
    assert_eq!(i.pid, qemu.pid());
    assert_eq!(i.name, "instance-0000002a");

    qemu.signal(libc::SIGSTOP);
    // Two beats in a row without CPU: the first after SIGSTOP may still
    // include time from before it.
    let mut zero_in_row = 0;
    collector.wait_for("no progress while stopped", Duration::from_secs(10), |hb| {
        let i = instance(hb)?;
        zero_in_row = if i.alive && i.cpu_ns_delta == 0 {
            zero_in_row + 1
        } else {
            0
        };
        (zero_in_row >= 2).then_some(())
    });

    qemu.signal(libc::SIGCONT);
    collector.wait_for(
        "progress again after SIGCONT",
        Duration::from_secs(10),
        |hb| {
            instance(hb)
                .filter(|i| i.cpu_ns_delta > 100_000_000)
                .map(|i| i.cpu_ns_delta)
        },
    );

    let total_before = collector
        .latest()
        .as_ref()
        .and_then(instance)
        .map(|i| i.cpu_ns_total)
        .unwrap_or(0);
    qemu.signal(libc::SIGKILL);
    let (_, hb, took) = collector.wait_for(
        "the exit reported with the uuid",
        Duration::from_secs(10),
        |hb| instance(hb).filter(|i| i.exited && !i.alive).map(|i| i.pid),
    );
    assert!(
        took <= Duration::from_secs(3),
        "exit reported only after {took:?}"
    );
    assert!(instance(&hb).map(|i| i.cpu_ns_total).unwrap_or(0) >= total_before);
    // Reported once, then forgotten.
    collector.wait_for(
        "the instance gone from later heartbeats",
        Duration::from_secs(5),
        |hb| instance(hb).is_none().then_some(()),
    );
}
