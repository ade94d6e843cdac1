//! The stalled disk (notes/ebpf.md's rig): a loop device over a file on a
//! FUSE mount that stops answering, read with O_DIRECT. The reader must be
//! reported blocked within threshold + 2 s, the loop device must show an
//! in-flight request whose age grows, a nova-compute stuck the same way must
//! be reported `blocked`, the /proc fallback must see the same fault, and
//! everything clears once the disk answers again.

mod sensor_support;

use std::time::{Duration, Instant};

use sensor_support::{
    boot_id_file, can_stall_disks, sensor_args, Collector, Sensor, StallRig, TestCgroup,
};
use vigil_proto::v1;
use vigil_tests::tier;

const THRESHOLD: Duration = Duration::from_secs(3);

fn blocked_pid(hb: &v1::Heartbeat, pid: u32) -> Option<u64> {
    hb.blocked_tasks
        .iter()
        .find(|b| b.tgid == pid)
        .map(|b| b.blocked_ms)
}

fn device<'a>(hb: &'a v1::Heartbeat, dev: &str) -> Option<&'a v1::DeviceStall> {
    hb.device_stalls.iter().find(|d| d.device == dev)
}

#[test]
fn stalled_disk_reader_is_blocked_and_the_device_ages() {
    let name = "stalled_disk_reader_is_blocked_and_the_device_ages";
    if !tier::root(name, "loads eBPF, mounts FUSE, creates loop devices") || !can_stall_disks(name)
    {
        return;
    }
    let cg = TestCgroup::new("stall-ebpf");
    let rig = StallRig::new("ebpf");
    let collector = Collector::start("t0ken");
    let tmp = tempfile::tempdir().expect("tempdir");
    let token = tmp.path().join("token");
    std::fs::write(&token, "t0ken\n").expect("token");
    let mut args = sensor_args(
        &collector,
        &boot_id_file(tmp.path()),
        Some(&cg),
        &["--blocked-threshold", "3s"],
    );
    args.extend(["--token-file".to_string(), token.display().to_string()]);
    let sensor = Sensor::start(&args);
    let (_, first, _) = collector.wait_for("a first heartbeat", Duration::from_secs(20), |hb| {
        Some(hb.mode)
    });
    assert_eq!(
        first.mode,
        v1::ProbeMode::Ebpf as i32,
        "sensor not in eBPF mode:\n{}",
        sensor.log_text()
    );

    rig.stall();
    let started = Instant::now();
    let reader = rig.reader(&cg, None);
    let (ms, hb, _) = collector.wait_for(
        "the reader reported blocked",
        THRESHOLD + Duration::from_secs(10),
        |hb| blocked_pid(hb, reader.pid()),
    );
    let took = started.elapsed();
    assert!(
        took <= THRESHOLD + Duration::from_secs(2) + Duration::from_millis(500),
        "reported after {took:?}, more than threshold + 2 s"
    );
    assert!(
        ms >= THRESHOLD.as_millis() as u64,
        "blocked_ms {ms} below the threshold"
    );
    let b = hb
        .blocked_tasks
        .iter()
        .find(|b| b.tgid == reader.pid())
        .expect("listed");
    assert_eq!(b.comm, "dd");
    assert!(
        b.cgroup.ends_with(&cg.rel),
        "cgroup {} is not the test's {}",
        b.cgroup,
        cg.rel
    );

    // The loop device has a request in flight, and its age grows.
    let (age1, _, _) =
        collector.wait_for("the loop device in flight", Duration::from_secs(5), |hb| {
            device(hb, &rig.dev).map(|d| d.oldest_ms)
        });
    let (age2, hb2, _) = collector.wait_for(
        "the loop device's age to grow",
        Duration::from_secs(5),
        |hb| {
            device(hb, &rig.dev)
                .map(|d| d.oldest_ms)
                .filter(|a| *a > age1 + 500)
        },
    );
    let d = device(&hb2, &rig.dev).expect("device listed");
    assert!(d.in_flight >= 1 && d.name.starts_with("loop"), "{d:?}");
    assert!(age2 > age1);

    // The disk answers again: the reader finishes, both signals clear.
    rig.release();
    collector.wait_for("the stall to clear", Duration::from_secs(10), |hb| {
        (blocked_pid(hb, reader.pid()).is_none() && device(hb, &rig.dev).is_none()).then_some(())
    });
    let health = collector.latest().and_then(|h| h.health).expect("health");
    assert_eq!(health.map_full, 0);
    drop(sensor);
}

#[test]
fn nova_compute_stuck_on_the_stalled_disk_is_blocked() {
    let name = "nova_compute_stuck_on_the_stalled_disk_is_blocked";
    if !tier::root(name, "loads eBPF, mounts FUSE, creates loop devices") || !can_stall_disks(name)
    {
        return;
    }
    let cg = TestCgroup::new("stall-nova");
    let rig = StallRig::new("nova");
    let collector = Collector::start("");
    let tmp = tempfile::tempdir().expect("tempdir");
    let _sensor = Sensor::start(&sensor_args(
        &collector,
        &boot_id_file(tmp.path()),
        Some(&cg),
        &["--blocked-threshold", "3s"],
    ));
    collector.wait_for("a first heartbeat", Duration::from_secs(20), |hb| {
        Some(hb.seq)
    });
    rig.stall();
    // argv[0] "nova-compute" is what the default --nova-compute-match finds,
    // as the lab's hang-nova-compute fault does.
    let nova = rig.reader(&cg, Some("nova-compute"));
    let (ms, hb, _) = collector.wait_for(
        "nova-compute reported blocked",
        Duration::from_secs(15),
        |hb| {
            let n = hb.nova_compute.as_ref()?;
            (n.state == v1::nova_compute::State::Blocked as i32).then_some(n.blocked_ms)
        },
    );
    assert_eq!(hb.nova_compute.as_ref().map(|n| n.pid), Some(nova.pid()));
    assert!(ms >= THRESHOLD.as_millis() as u64);
    rig.release();
    // The dd finishes, so nova-compute is then gone, never "running blocked".
    collector.wait_for(
        "nova-compute no longer blocked",
        Duration::from_secs(10),
        |hb| {
            let n = hb.nova_compute.as_ref()?;
            (n.state != v1::nova_compute::State::Blocked as i32).then_some(())
        },
    );
}

#[test]
fn procfs_fallback_reports_the_same_stall() {
    let name = "procfs_fallback_reports_the_same_stall";
    if !tier::root(name, "mounts FUSE, creates loop devices") || !can_stall_disks(name) {
        return;
    }
    let cg = TestCgroup::new("stall-procfs");
    let rig = StallRig::new("procfs");
    let collector = Collector::start("");
    let tmp = tempfile::tempdir().expect("tempdir");
    let sensor = Sensor::start(&sensor_args(
        &collector,
        &boot_id_file(tmp.path()),
        Some(&cg),
        &["--blocked-threshold", "3s", "--procfs"],
    ));
    collector.wait_for("a first heartbeat", Duration::from_secs(20), |hb| {
        Some(hb.seq)
    });
    rig.stall();
    let started = Instant::now();
    let reader = rig.reader(&cg, None);
    let (_, hb, _) = collector.wait_for(
        "the reader reported blocked in procfs mode",
        Duration::from_secs(15),
        |hb| blocked_pid(hb, reader.pid()),
    );
    assert!(
        started.elapsed() <= THRESHOLD + Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(
        hb.mode,
        v1::ProbeMode::Procfs as i32,
        "{}",
        sensor.log_text()
    );
    let msg = hb
        .health
        .as_ref()
        .map(|h| h.message.clone())
        .unwrap_or_default();
    assert!(
        msg.contains("procfs fallback"),
        "health message does not say fallback: {msg}"
    );
    collector.wait_for(
        "the loop device in flight (diskstats)",
        Duration::from_secs(5),
        |hb| {
            device(hb, &rig.dev)
                .filter(|d| d.in_flight >= 1)
                .map(|d| d.oldest_ms)
        },
    );
    rig.release();
    collector.wait_for("the stall to clear", Duration::from_secs(10), |hb| {
        (blocked_pid(hb, reader.pid()).is_none()).then_some(())
    });
}
