//! A sensor message as it arrives on the wire: decoded, validated as the
//! decider validates it, turned into the decider's terms, absorbed into a
//! node's reading next to readings at the extremes of seq, boot and
//! instance, then judged. Nothing may panic or overflow (fuzz builds check
//! overflow), whatever an authenticated sensor sends.
#![no_main]

use std::sync::OnceLock;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use prost::Message;
use vigil_decider::heartbeat_server::{check_heartbeat, to_update};
use vigil_decider::metrics::Metrics;
use vigil_proto::v1;
use vigil_verdict::{
    evaluate, DeciderView, Evidence, Heard, Moment, NovaWitness, Policy, SensorReading,
    SensorWitness, Signals,
};

fn metrics() -> &'static Metrics {
    static M: OnceLock<Metrics> = OnceLock::new();
    M.get_or_init(Metrics::new)
}

fn reading(boot: &str, instance: &str, seq: u64, at: Moment) -> SensorReading {
    SensorReading {
        connected: true,
        last_heartbeat_at: at,
        interval: Duration::from_secs(1),
        boot_id: boot.to_string(),
        instance: instance.to_string(),
        system_uuid: String::new(),
        seq,
        seq_gaps: u64::MAX - 1,
        boot_changes: u32::MAX,
        boot_changed_at: None,
        signals: Signals::default(),
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(m) = v1::SensorMessage::decode(data) else {
        return;
    };
    let Ok(hb) = check_heartbeat(metrics(), m) else {
        return;
    };
    // What passed is empty or exactly the canonical form the BMC's UUID is
    // compared with.
    assert!(hb.system_uuid.is_empty() || hb.system_uuid.len() == 36);
    let u = to_update(&hb);
    let policy = Policy::default();
    let start = Moment::from_secs(1_000);
    let olds = [
        reading(&u.boot_id, &u.instance, 0, start),
        reading(&u.boot_id, &u.instance, u64::MAX, start),
        reading(&u.boot_id, "another-run", u64::MAX, start),
        reading("another-boot", "", 1, start),
    ];
    for mut r in olds {
        let heard = Heard {
            boot_id: u.boot_id.clone(),
            instance: u.instance.clone(),
            system_uuid: hb.system_uuid.clone(),
            seq: u.seq,
            interval: u.interval,
            signals: u.signals.clone(),
        };
        r.absorb(heard, start.plus(Duration::from_millis(500)));
        let ev = Evidence {
            sensor: SensorWitness::Seen(Box::new(r)),
            nova: NovaWitness::NotPolled { since: start },
            pings: vec![],
            decider: DeciderView::default(),
            bmc: Default::default(),
            kdump: Default::default(),
        };
        for later in [1, 10, 100_000] {
            let a = evaluate(&ev, &policy, start.plus(Duration::from_secs(later)));
            // Reasons are what people read: formatting them must not panic.
            let _ = a.reasons.join("; ");
        }
    }
});
