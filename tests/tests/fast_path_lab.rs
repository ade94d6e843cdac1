//! The fast paths and the fence target's identity against the lab (issue
//! 16), in one decider run so the lab's power cycles are shared:
//!
//! 1. Forgeries fence nothing: compute3's Redfish BMC reads `Off` while the
//!    node runs and fence_kdump messages come from its management address
//!    while its sensor streams → `degraded` (the BMC named), never fenced.
//! 2. Kernel crash with kdump on compute1 → `dead` by the kdump fast path,
//!    fenced by kdump (no power-off), its server evacuated before any
//!    power-off, powered off once the dump ends.
//! 3. Hard hang of compute2, whose fencing points at compute3's BMC (a
//!    copy-paste mistake): `dead` only by the Nova rule (its BMC reads On,
//!    and is not its own anyway), the fence refused for the identity
//!    mismatch and paged; compute3 is never powered off, compute2's server
//!    never evacuated.
//!
//! What must hold whatever the timing is asserted; how fast is printed.

use serde_json::Value;
use std::time::{Duration, Instant};
use vigil_tests::decider::{
    assert_evacuated_once, assert_not_evacuated, prepare, redfish_log_mark, redfish_resets_since,
    steps, Decider, NeverActed, Opts,
};
use vigil_tests::lab::{Fault, Lab};
use vigil_tests::{tier, wait};

const KDUMP: &str = "compute1";
const HANG: &str = "compute2";
const LIAR: &str = "compute3";
/// How long compute1's crash kernel sends (one message a second).
const DUMP_SECS: u32 = 30;

fn any(r: &Value, needle: &str) -> bool {
    r.as_array().is_some_and(|a| {
        a.iter()
            .any(|x| x.as_str().is_some_and(|s| s.contains(needle)))
    })
}

/// Waits until `node`'s reasons say its BMC is verified and reads `power`.
fn bmc_reads(d: &Decider, node: &str, power: &str) {
    wait::until(
        &format!("{node}'s BMC verified and reading {power}"),
        Duration::from_secs(30),
        Duration::from_millis(250),
        || {
            let n = d.node(node)?;
            let r = &n["reasons"];
            if any(r, &format!("BMC: {power}")) && !any(r, "not evidence") {
                Ok(())
            } else {
                Err(format!("{}: {r}", n["verdict"]))
            }
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", d.log()));
}

#[test]
fn forgeries_fence_nothing_kdump_evacuates_before_power_off_and_a_wrong_bmc_is_refused() {
    if !tier::root(
        "forgeries_fence_nothing_kdump_evacuates_before_power_off_and_a_wrong_bmc_is_refused",
        "the lab runs Nova, BMCs and nodes in network namespaces",
    ) {
        return;
    }
    let lab = Lab::shared().expect("lab up");
    let _x = lab.exclusive();
    assert_eq!(lab.node_names().len(), 3, "this test needs a 3-node lab");
    let (_restore, crashed) = prepare(lab, KDUMP, 1);
    let hung = lab.boot(1, HANG).expect("boot a server on compute2");
    let d = Decider::start(
        lab,
        Opts {
            kdump: true,
            system_uuids: true,
            fence_through: vec![(HANG.into(), LIAR.into())],
            // Two of three nodes die in phase 3: the storm guard is not the
            // subject here (fault_matrix case 6 is).
            storm_max_share: Some(1.0),
            ..Opts::default()
        },
    );
    d.wait_all_healthy(lab);
    bmc_reads(&d, KDUMP, "power on");
    bmc_reads(&d, LIAR, "power on");
    let n = d.node(HANG).expect("compute2");
    assert!(any(&n["reasons"], "IDENTITY MISMATCH"), "{n}");
    // fence-check says the same before anything happens.
    let (ok, rows) = d.fence_check();
    assert!(
        !ok,
        "fence-check passed with compute2 fenced through compute3's BMC: {rows}"
    );

    // 1. Forgeries: a BMC reading Off and kdump messages from a live node.
    let mark = redfish_log_mark(lab);
    let t0 = Instant::now();
    lab.fault(Fault::BmcLies, LIAR).expect("bmc-lies");
    lab.kdump_send(LIAR, 12).expect("kdump-send");
    let (n, _) = d.wait_verdict(
        LIAR,
        "degraded",
        &["dead", "fencing"],
        Duration::from_secs(20),
    );
    assert!(
        any(&n["reasons"], "its BMC reads power off but"),
        "the lying BMC is not named: {n}"
    );
    let seen = NeverActed {
        nodes: &[LIAR],
        servers: &[],
        since: t0,
        window: Duration::from_secs(12),
        forbidden: &["dead", "fencing", "fenced", "evacuating", "recovered"],
        powered: false,
        bmc_mark: mark,
    }
    .check(lab, &d);
    assert_eq!(lab.ipmi_power(LIAR).expect("ipmi"), "on");
    let kdump_seen = d.node(LIAR).expect("compute3");
    eprintln!(
        "phase 1: compute3 verdicts {:?}; reasons now {}",
        seen.path(LIAR),
        kdump_seen["reasons"]
    );
    lab.fault(Fault::BmcTruth, LIAR).expect("bmc-truth");
    lab.heal(&[LIAR]).expect("heal compute3");
    d.wait_verdict(
        LIAR,
        "healthy",
        &["dead", "fencing"],
        Duration::from_secs(30),
    );

    // 2 and 3 at once.
    let mark = redfish_log_mark(lab);
    let crash = lab.kdump(KDUMP, DUMP_SECS).expect("kdump").began_unix_ms;
    let hang = lab
        .fault(Fault::HardHang, HANG)
        .expect("hard hang")
        .began_unix_ms;
    let report = lab.info().controller.report_interval.unwrap_or(10);

    // 2. kdump: fenced by kdump, evacuated while the dump runs, powered off after.
    let (id, inc) = d.wait_incident_closed(KDUMP, Duration::from_secs(240));
    assert_eq!(
        inc["incident"]["summary"]["status"], "completed",
        "{id}: {inc}"
    );
    let ev = &inc["incident"]["evidence"];
    assert_eq!(ev["fast_path"], "kdump", "{ev}");
    let dead_at = d.became(KDUMP, "dead").expect("compute1 dead");
    let by_kdump: Vec<&Value> = steps(&inc, "confirm_off")
        .filter(|s| s["outcome"] == "ok" && s["target"].as_str().unwrap_or("").contains("kdump"))
        .collect();
    assert_eq!(by_kdump.len(), 1, "fenced by kdump: {inc}");
    let last_evacuate = steps(&inc, "evacuate")
        .filter_map(|s| s["began_at"].as_i64())
        .max()
        .expect("an evacuate step");
    let power_offs: Vec<i64> = steps(&inc, "power_off")
        .filter_map(|s| s["began_at"].as_i64())
        .collect();
    assert_eq!(power_offs.len(), 1, "one power-off, after the dump: {inc}");
    assert!(
        power_offs[0] > last_evacuate,
        "powered off at {} before the last evacuate call at {last_evacuate}: {inc}",
        power_offs[0]
    );
    // The crash kernel sent its last message this long after the crash.
    let dump_end = crash + i64::from(Lab::KDUMP_BOOT_SECS + DUMP_SECS - 1) * 1000;
    assert!(
        power_offs[0] >= dump_end,
        "powered off at {} while the dump ran (until {dump_end}): {inc}",
        power_offs[0]
    );
    assert_eq!(
        lab.redfish(KDUMP)
            .expect("redfish")
            .power_state()
            .expect("power"),
        "Off"
    );
    assert_evacuated_once(lab, &crashed, KDUMP);
    eprintln!(
        "FIGURES kdump: crash → dead {:.1} s; dead → last evacuate call {:.1} s; dump end → power-off {:.1} s",
        (dead_at - crash) as f64 / 1000.0,
        (last_evacuate - dead_at) as f64 / 1000.0,
        (power_offs[0] - dump_end) as f64 / 1000.0,
    );

    // 3. Hard hang: the Nova rule, then the fence refused (wrong BMC), paged.
    let (id, inc) = d.wait_incident_closed(HANG, Duration::from_secs(120));
    assert_eq!(
        inc["incident"]["summary"]["status"], "needs-attention",
        "{id}: {inc}"
    );
    let ev = &inc["incident"]["evidence"];
    assert!(ev["fast_path"].is_null(), "{ev}");
    assert_eq!(ev["opinions"]["nova"], "dead", "{ev}");
    let stalled = ev["nova"]["updated_at_stalled_ms"].as_u64().unwrap_or(0);
    assert!(
        stalled >= (report + 2) * 1000,
        "dead with updated_at stalled only {stalled} ms: {ev}"
    );
    assert_eq!(steps(&inc, "power_off").count(), 0, "{inc}");
    assert_eq!(steps(&inc, "evacuate").count(), 0, "{inc}");
    assert!(
        redfish_resets_since(lab, LIAR, mark).is_empty(),
        "compute3 was reset through compute2's fencing"
    );
    assert_eq!(
        lab.redfish(LIAR)
            .expect("redfish")
            .power_state()
            .expect("power"),
        "On"
    );
    assert_not_evacuated(lab, &hung, HANG);
    let page = wait::until(
        "a needs-attention page for compute2's refused fence",
        Duration::from_secs(20),
        Duration::from_millis(500),
        || {
            let hooks: Vec<String> = lab
                .webhook_requests()
                .unwrap_or_default()
                .into_iter()
                .filter(|r| {
                    r.header("X-Vigil-Event") == Some("needs-attention")
                        && r.body.contains(id.as_str())
                })
                .map(|r| r.body)
                .collect();
            hooks.first().cloned().ok_or("no webhook yet".to_string())
        },
    )
    .unwrap_or_else(|e| panic!("{e}: {inc}"));
    assert!(
        page.0.contains("not this node's"),
        "the page does not say the BMC is another machine's: {}",
        page.0
    );
    let dead_at = d.became(HANG, "dead").expect("compute2 dead");
    eprintln!(
        "FIGURES hard hang: → dead {:.1} s by the Nova rule (report interval {report} s); page: {}",
        (dead_at - hang) as f64 / 1000.0,
        page.0.chars().take(300).collect::<String>()
    );
}
