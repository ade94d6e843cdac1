//! Heartbeats reach a decider (here an in-process stand-in), with the
//! per-node token; killing and restarting the decider loses at most what
//! did not fit in the sensor's buffer, the loss is counted in the
//! heartbeat, and the sequence resumes where it was.

mod sensor_support;

use std::{collections::BTreeSet, time::Duration};

use sensor_support::{boot_id_file, sensor_args, Collector, Sensor};
use vigil_tests::tier;

const BUFFER: u64 = 10;

fn seqs(c: &Collector) -> BTreeSet<u64> {
    c.beats().iter().map(|h| h.seq).collect()
}

#[test]
fn heartbeats_survive_a_decider_restart_with_bounded_loss() {
    if !tier::root(
        "heartbeats_survive_a_decider_restart_with_bounded_loss",
        "loads eBPF",
    ) {
        return;
    }
    let mut collector = Collector::start("s3cret");
    let tmp = tempfile::tempdir().expect("tempdir");
    let token = tmp.path().join("token");
    std::fs::write(&token, "s3cret\n").expect("token");
    let mut args = sensor_args(
        &collector,
        &boot_id_file(tmp.path()),
        None,
        &["--interval", "200ms"],
    );
    args.extend([
        "--token-file".into(),
        token.display().to_string(),
        "--buffer".into(),
        BUFFER.to_string(),
    ]);
    let sensor = Sensor::start(&args);

    let (_, first, _) = collector.wait_for("heartbeats", Duration::from_secs(20), |hb| {
        (hb.seq >= 5).then_some(())
    });
    assert_eq!(first.node, "test-node");
    assert_eq!(first.boot_id, "11111111-2222-3333-4444-555555555555");
    assert!(!first.sensor_version.is_empty());
    let got = seqs(&collector);
    assert_eq!(
        got.iter().copied().collect::<Vec<_>>(),
        (1..=*got.last().expect("some")).collect::<Vec<_>>(),
        "gaps before any outage"
    );

    // A short outage (fewer beats than the buffer): nothing is lost.
    collector.stop();
    let before = *seqs(&collector).last().expect("some");
    std::thread::sleep(Duration::from_millis(1000)); // the outage itself
    collector.restart();
    collector.wait_for(
        "beats after the short outage",
        Duration::from_secs(10),
        |hb| (hb.seq > before + 8).then_some(()),
    );
    let got = seqs(&collector);
    let max = *got.last().expect("some");
    assert_eq!(
        got.len() as u64,
        max,
        "beats lost in a short outage: {got:?}\n{}",
        sensor.log_text()
    );

    // A long outage (more beats than the buffer): the oldest are dropped,
    // the loss is bounded by the outage minus the buffer and is reported.
    collector.stop();
    let before = max;
    std::thread::sleep(Duration::from_millis(4000)); // ≈ 20 beats at 200 ms
    collector.restart();
    let (_, hb, _) = collector.wait_for(
        "beats after the long outage",
        Duration::from_secs(10),
        |hb| (hb.seq > before + 25).then_some(()),
    );
    let got = seqs(&collector);
    let max = *got.last().expect("some");
    let missing: Vec<u64> = (1..=max).filter(|s| !got.contains(s)).collect();
    assert!(
        !missing.is_empty(),
        "expected some loss in a 4 s outage with a buffer of {BUFFER}"
    );
    // Lost beats are the oldest of the outage, in one run, right after `before`.
    assert_eq!(missing.first().copied(), Some(before + 1), "{missing:?}");
    assert!(
        missing.windows(2).all(|w| w[1] == w[0] + 1),
        "loss is not one contiguous run: {missing:?}"
    );
    // The newest BUFFER beats of the outage were kept and delivered.
    let resumed = missing.last().expect("some") + 1;
    assert!(
        (resumed..resumed + BUFFER).all(|s| got.contains(&s)),
        "buffered beats missing after {resumed}"
    );
    assert!(
        missing.len() as u64 <= 4000 / 200 + 2 - BUFFER + 3,
        "lost {} beats",
        missing.len()
    );
    let dropped = hb
        .health
        .as_ref()
        .map(|h| h.dropped_heartbeats)
        .unwrap_or(0);
    assert_eq!(
        dropped,
        missing.len() as u64,
        "reported drops differ from the gap"
    );
}

#[test]
fn a_wrong_token_is_refused_and_sends_nothing() {
    if !tier::root("a_wrong_token_is_refused_and_sends_nothing", "loads eBPF") {
        return;
    }
    let collector = Collector::start("right");
    let tmp = tempfile::tempdir().expect("tempdir");
    let token = tmp.path().join("token");
    std::fs::write(&token, "wrong").expect("token");
    let mut args = sensor_args(
        &collector,
        &boot_id_file(tmp.path()),
        None,
        &["--interval", "200ms", "--procfs"],
    );
    args.extend(["--token-file".into(), token.display().to_string()]);
    let sensor = Sensor::start(&args);
    vigil_tests::wait::until(
        "the decider to refuse twice (the sensor retries)",
        Duration::from_secs(10),
        Duration::from_millis(50),
        || {
            let n = collector
                .rejected
                .load(std::sync::atomic::Ordering::Relaxed);
            if n >= 2 {
                Ok(n)
            } else {
                Err(n)
            }
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", sensor.log_text()));
    assert!(collector.beats().is_empty());
    assert!(
        !sensor.log_text().contains("wrong"),
        "the token appeared in the sensor's log"
    );
}

#[test]
fn every_decider_gets_the_heartbeats_and_one_down_does_not_stop_the_other() {
    if !tier::root(
        "every_decider_gets_the_heartbeats_and_one_down_does_not_stop_the_other",
        "runs the sensor as root",
    ) {
        return;
    }
    let mut a = Collector::start("");
    let b = Collector::start("");
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut args = sensor_args(
        &a,
        &boot_id_file(tmp.path()),
        None,
        &["--interval", "200ms", "--procfs"],
    );
    args.extend(["--decider".into(), b.url()]);
    let _sensor = Sensor::start(&args);
    a.wait_for("beats at decider A", Duration::from_secs(20), |hb| {
        (hb.seq >= 3).then_some(())
    });
    b.wait_for("beats at decider B", Duration::from_secs(5), |hb| {
        (hb.seq >= 3).then_some(())
    });
    a.stop();
    let last_b = b.latest().map(|h| h.seq).unwrap_or(0);
    b.wait_for(
        "B still served while A is down",
        Duration::from_secs(5),
        |hb| (hb.seq >= last_b + 5).then_some(()),
    );
}
