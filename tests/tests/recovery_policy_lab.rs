//! Recovery policies end to end against the lab (root), issue 6's "SHUTOFF
//! policy, ERROR instances, reserved host, evacuation failure and retry":
//! a real `vigil-decider serve` (tests/src/decider.rs), real Nova 2025.1, the
//! lab's Redfish and IPMI BMCs. compute1 loses power in each test; the
//! decider fences it and evacuates its servers under the policy in test.
//!
//! - `shutoff = "skip"` (default): ACTIVE and ERROR servers end ACTIVE on
//!   other hosts with one evacuate action each; the SHUTOFF one stays where
//!   it was, untouched, and the incident's selection says why;
//! - `shutoff = "evacuate"`: the SHUTOFF server moves with microversion 2.95
//!   and ends SHUTOFF elsewhere (no guest process runs for it), the ACTIVE
//!   one goes with 2.94 and runs, and in the same power cut a SHUTOFF server
//!   whose evacuation fails once still lands stopped after the retry (Nova
//!   ignores the 2.95 target state for a server reset to ERROR: Vigil resets
//!   it to active);
//! - a reserved spare (compute3's service disabled, `destination =
//!   "reserved"`): Vigil enables it before evacuating and every server lands
//!   on it;
//! - evacuation failure: the lab virt driver fails chosen spawns (`lab
//!   fail-spawn`), so Nova itself records failed evacuations. One server
//!   failing once is reset and evacuated again (two evacuate actions, ACTIVE
//!   elsewhere, the timeline shows failure and retry); one that keeps failing
//!   ends the incident in needs-attention with Nova's fault message, paged;
//! - in the same power cut, a failed destination claim (`lab fail-spawn --as
//!   claim`): Nova rolls the server back still ACTIVE on the dead host, no
//!   ERROR; Vigil retries it once Nova's rollback has settled (two evacuate
//!   actions), rather than waiting out the verify deadline.
//!
//! Each test restores the lab in Drop guards (nodes healed and reporting,
//! services reset, servers deleted, sensors stopped, spawn failures cleared),
//! also when it fails.

use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;
use std::time::Duration;
use vigil_tests::decider::{
    boot_with_statuses, disable_service, evacuate_actions, instance_actions, prepare,
    restart_nova_compute, server, service, steps, Decider, Opts, SpawnFailures, ADMIN_MAIL,
    WEBHOOK_KEY,
};
use vigil_tests::lab::{Fault, Lab, Server};
use vigil_tests::{tier, wait};

const NODE: &str = "compute1";
const SPARE: &str = "compute3";
const WHY: &str = "the lab runs Nova, BMCs and nodes in network namespaces";
/// Power loss → incident finished: ≈40–60 s in the lab; failed attempts and
/// retries add a few claims each.
const INCIDENT_DEADLINE: Duration = Duration::from_secs(300);
/// What the lab virt driver's deliberate spawn failure says (Nova's fault).
const PURPOSE: &str = "failed on purpose";

/// The instance record of `id` in `incident ID --json`.
fn instance<'a>(inc: &'a Value, id: &str) -> &'a Value {
    inc["incident"]["instances"]
        .as_array()
        .and_then(|a| a.iter().find(|i| i["server_id"] == id))
        .unwrap_or_else(|| panic!("no instance record for {id} in the incident: {inc}"))
}

fn timeline(inc: &Value) -> Vec<Value> {
    inc["timeline"].as_array().cloned().unwrap_or_default()
}

/// Index of the first timeline entry of kind `what` whose message starts
/// with `prefix`.
fn find(t: &[Value], what: &str, prefix: &str) -> Option<usize> {
    t.iter()
        .position(|e| e["what"] == what && e["message"].as_str().unwrap_or("").starts_with(prefix))
}

/// The server ended `status` on another host than NODE with `actions`
/// evacuate actions in Nova; returns that host.
fn assert_moved(lab: &Lab, id: &str, status: &str, actions: usize, d: &Decider) -> String {
    let v = server(lab, id);
    let host = v["OS-EXT-SRV-ATTR:host"].as_str().unwrap_or("").to_string();
    assert!(
        v["status"] == status && v["OS-EXT-STS:task_state"].is_null() && host != NODE,
        "server {id}: want {status} on a host other than {NODE}, Nova shows status {} task {} host {host:?} fault {}\n{}",
        v["status"],
        v["OS-EXT-STS:task_state"],
        v["fault"],
        d.log()
    );
    let n = evacuate_actions(lab, id);
    assert_eq!(
        n,
        actions,
        "server {id}: {n} evacuate actions in Nova, want {actions}: {:?}",
        instance_actions(lab, id)
    );
    host
}

/// The evacuate steps of `id` in the incident.
fn evacuate_steps<'a>(inc: &'a Value, id: &'a str) -> Vec<&'a Value> {
    steps(inc, "evacuate")
        .filter(|s| s["target"] == id)
        .collect()
}

fn hmac_ok(body: &[u8], header: &str) -> bool {
    let Some(sig) = header
        .strip_prefix("sha256=")
        .and_then(|h| hex::decode(h).ok())
    else {
        return false;
    };
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(WEBHOOK_KEY.as_bytes()) else {
        return false;
    };
    mac.update(body);
    mac.verify_slice(&sig).is_ok()
}

/// Bodies of the webhook requests of kind `kind` about `incident`, each
/// checked for a valid signature.
fn webhooks(lab: &Lab, incident: &str, kind: &str) -> Vec<String> {
    let mut out = Vec::new();
    for r in lab.webhook_requests().unwrap_or_default() {
        if !r.body.contains(incident) || r.header("X-Vigil-Event") != Some(kind) {
            continue;
        }
        let body = r.body_bytes().expect("webhook body");
        let sig = r.header("X-Vigil-Signature").unwrap_or("");
        assert!(
            hmac_ok(&body, sig),
            "webhook signature {sig:?} does not verify for {}",
            r.body
        );
        out.push(r.body.clone());
    }
    out
}

/// Waits until the decider judges each node as given (sensor connected).
fn wait_verdicts(d: &Decider, want: &[(&str, &str)]) {
    for (node, verdict) in want {
        wait::until(
            &format!("{node} {verdict}"),
            Duration::from_secs(90),
            Duration::from_millis(500),
            || {
                let v = d.node(node)?;
                if v["verdict"] == *verdict && v["sensor"]["connected"] == true {
                    Ok(())
                } else {
                    Err(format!(
                        "{} (sensor connected {}): {:?}",
                        v["verdict"], v["sensor"]["connected"], v["reasons"]
                    ))
                }
            },
        )
        .unwrap_or_else(|e| panic!("{e}\n{}", d.log()));
    }
}

fn by_status<'a>(servers: &'a [Server], status: &str) -> &'a Server {
    servers
        .iter()
        .find(|s| s.status == status)
        .unwrap_or_else(|| panic!("no {status} server among those booted: {servers:?}"))
}

/// Power loss of NODE; the incident that follows, finished.
fn lose_power_and_recover(lab: &Lab, d: &Decider) -> (String, Value) {
    lab.fault(Fault::PowerOff, NODE).expect("power off");
    let t = std::time::Instant::now();
    let (id, inc) = d.wait_incident_closed(NODE, INCIDENT_DEADLINE);
    eprintln!(
        "FIGURES power loss → incident {id} {} in {:.1?}",
        inc["incident"]["summary"]["status"],
        t.elapsed()
    );
    (id, inc)
}

#[test]
fn shutoff_skip_evacuates_active_and_error_servers_and_leaves_the_shutoff_one() {
    if !tier::root(
        "shutoff_skip_evacuates_active_and_error_servers_and_leaves_the_shutoff_one",
        WHY,
    ) {
        return;
    }
    let lab = Lab::shared().expect("lab up");
    let _x = lab.exclusive();
    let (_restore, _) = prepare(lab, NODE, 0);
    let servers = boot_with_statuses(3, NODE, &[("error", 1), ("shutoff", 1)])
        .expect("boot ERROR, SHUTOFF and ACTIVE servers on compute1");
    let (active, error, shutoff) = (
        by_status(&servers, "ACTIVE"),
        by_status(&servers, "ERROR"),
        by_status(&servers, "SHUTOFF"),
    );
    // Opts::default(): `shutoff = "skip"`, as the product's default.
    let d = Decider::start(lab, Opts::default());
    d.wait_all_healthy(lab);
    let (id, inc) = lose_power_and_recover(lab, &d);
    assert_eq!(
        inc["incident"]["summary"]["status"],
        "completed",
        "incident {id}: {inc}\n{}",
        d.log()
    );

    for s in [active, error] {
        assert_moved(lab, &s.id, "ACTIVE", 1, &d);
        let rec = instance(&inc, &s.id);
        assert!(
            rec["state"] == "evacuated"
                && rec["status_before"] == s.status.as_str()
                && rec["expected"] == "ACTIVE"
                && rec["attempts"] == 1,
            "instance record of the {} server {}: {rec}",
            s.status,
            s.id
        );
    }

    // The SHUTOFF server: where it was, stopped, never evacuated, and the
    // incident's selection names it with the policy as the reason.
    let v = server(lab, &shutoff.id);
    assert!(
        v["status"] == "SHUTOFF" && v["OS-EXT-SRV-ATTR:host"] == NODE,
        "the SHUTOFF server {} is now {} on {}",
        shutoff.id,
        v["status"],
        v["OS-EXT-SRV-ATTR:host"]
    );
    assert_eq!(
        evacuate_actions(lab, &shutoff.id),
        0,
        "the SHUTOFF server was evacuated: {:?}",
        instance_actions(lab, &shutoff.id)
    );
    let recs = inc["incident"]["instances"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        recs.len() == 2 && !recs.iter().any(|r| r["server_id"] == shutoff.id),
        "instances in the incident (want the ACTIVE and ERROR ones only): {recs:?}"
    );
    let select: Vec<&Value> = steps(&inc, "select_instances").collect();
    let skipped = select
        .iter()
        .flat_map(|s| s["result"]["skipped"].as_array().into_iter().flatten())
        .find(|k| k["server_id"] == shutoff.id)
        .unwrap_or_else(|| {
            panic!(
                "the selection does not list {} as skipped: {select:?}",
                shutoff.id
            )
        });
    let why = skipped["reason"].as_str().unwrap_or("");
    assert!(
        why.contains("SHUTOFF") && why.contains("skip"),
        "skip reason of the SHUTOFF server: {why:?}"
    );
}

#[test]
fn a_reserved_spare_is_enabled_and_takes_every_server() {
    if !tier::root("a_reserved_spare_is_enabled_and_takes_every_server", WHY) {
        return;
    }
    let lab = Lab::shared().expect("lab up");
    let _x = lab.exclusive();
    let (_restore, servers) = prepare(lab, NODE, 3);
    // The spare waits disabled, as operators keep one (Restore re-enables it).
    disable_service(lab, SPARE, "reserved spare for vigil");
    let d = Decider::start(
        lab,
        Opts {
            destination: Some("reserved".into()),
            reserved: vec![SPARE.into()],
            ..Opts::default()
        },
    );
    wait_verdicts(
        &d,
        &[
            (NODE, "healthy"),
            ("compute2", "healthy"),
            (SPARE, "maintenance"),
        ],
    );
    let (id, inc) = lose_power_and_recover(lab, &d);
    assert_eq!(
        inc["incident"]["summary"]["status"],
        "completed",
        "incident {id}: {inc}\n{}",
        d.log()
    );

    // Vigil enabled the spare, before the first evacuate call.
    let svc = service(lab, SPARE);
    assert!(
        svc["status"] == "enabled" && svc["forced_down"] == false,
        "the spare's service after recovery: {svc}"
    );
    let enable: Vec<&Value> = steps(&inc, "enable_spare").collect();
    assert!(
        enable.len() == 1 && enable[0]["target"] == SPARE && enable[0]["outcome"] == "ok",
        "enable_spare steps: {enable:?}"
    );
    let first_evac = steps(&inc, "evacuate")
        .filter_map(|s| s["began_at"].as_i64())
        .min()
        .unwrap_or_else(|| panic!("no evacuate step: {inc}"));
    let enabled_at = enable[0]["ended_at"].as_i64().unwrap_or(i64::MAX);
    assert!(
        enabled_at <= first_evac,
        "the spare was enabled at {enabled_at}, after the first evacuate call at {first_evac}"
    );

    // Every server went to the spare, named in the request, once.
    for s in &servers {
        let host = assert_moved(lab, &s.id, "ACTIVE", 1, &d);
        assert_eq!(
            host, SPARE,
            "server {} landed on {host}, not the spare",
            s.id
        );
        let ev = evacuate_steps(&inc, &s.id);
        assert!(
            ev.len() == 1 && ev[0]["detail"]["request"]["host"] == SPARE,
            "evacuate steps of {} (want one naming {SPARE}): {ev:?}",
            s.id
        );
        let rec = instance(&inc, &s.id);
        assert!(
            rec["destination"] == SPARE && rec["to_host"] == SPARE,
            "instance record of {}: {rec}",
            s.id
        );
    }
}

#[test]
fn a_failed_evacuation_is_retried_and_one_that_keeps_failing_needs_attention() {
    if !tier::root(
        "a_failed_evacuation_is_retried_and_one_that_keeps_failing_needs_attention",
        WHY,
    ) {
        return;
    }
    let lab = Lab::shared().expect("lab up");
    let _x = lab.exclusive();
    let (_restore, servers) = prepare(lab, NODE, 4);
    let (once, always, fine, claimed) = (&servers[0], &servers[1], &servers[2], &servers[3]);
    // Declared after the restore guard: cleared before the lab is restored.
    let mut failures = SpawnFailures::default();
    failures
        .set(&once.id, 1)
        .expect("fail the next spawn of one server");
    // As a destination's claim (or late server-group check) fails: Nova
    // marks the migration failed and rolls the server back, still ACTIVE on
    // the dead host, no ERROR.
    failures
        .set_as(&claimed.id, 1, "claim")
        .expect("fail the next claim of another");
    // More than max_attempts (3): what is left shows how many were tried.
    let stale = failures
        .set(&always.id, 10)
        .expect("fail every spawn of another");
    // The destinations must run the lab virt driver with the hook.
    let stale: Vec<String> = stale.into_iter().filter(|n| n != NODE).collect();
    if !stale.is_empty() {
        eprintln!(
            "restarting nova-compute on {stale:?}: started before the lab virt driver changed"
        );
        restart_nova_compute(lab, &stale).expect("restart stale nova-computes");
    }
    // A short verify deadline: waiting it out for the rolled-back claim is
    // the failure this catches.
    let d = Decider::start(
        lab,
        Opts {
            verify_deadline: Some("90s".into()),
            ..Opts::default()
        },
    );
    d.wait_all_healthy(lab);
    let (id, inc) = lose_power_and_recover(lab, &d);
    // The rolled-back claim: retried once Nova's rollback settled.
    assert_eq!(
        SpawnFailures::left(lab, &claimed.id),
        0,
        "the lab did not fail {}'s claim: the destination's nova-compute lacks the hook?",
        claimed.id
    );
    assert_moved(lab, &claimed.id, "ACTIVE", 2, &d);
    let rec = instance(&inc, &claimed.id);
    assert!(
        rec["state"] == "evacuated" && rec["attempts"] == 2,
        "instance record of the server whose claim failed: {rec}"
    );
    let failed_verify: Vec<&Value> = steps(&inc, "verify")
        .filter(|v| v["target"] == claimed.id.as_str() && v["outcome"] == "failed")
        .collect();
    assert!(
        failed_verify.len() == 1 && failed_verify[0]["result"]["retry"] == true,
        "want one failed verify that retries for the claim: {failed_verify:?}"
    );
    let summary = &inc["incident"]["summary"];
    assert_eq!(
        summary["status"],
        "needs-attention",
        "incident {id}: {inc}\n{}",
        d.log()
    );

    // The untouched one: as ever.
    assert_moved(lab, &fine.id, "ACTIVE", 1, &d);
    assert_eq!(
        instance(&inc, &fine.id)["attempts"],
        1,
        "{}",
        instance(&inc, &fine.id)
    );

    // Failed once on its destination (the driver used its one failure), was
    // reset and evacuated again, and runs elsewhere.
    assert_eq!(
        SpawnFailures::left(lab, &once.id),
        0,
        "the lab did not fail {}'s spawn: the destination's nova-compute lacks the hook?",
        once.id
    );
    assert_moved(lab, &once.id, "ACTIVE", 2, &d);
    let rec = instance(&inc, &once.id);
    assert!(
        rec["state"] == "evacuated" && rec["attempts"] == 2,
        "instance record of the server that failed once: {rec}"
    );
    let attempts: Vec<i64> = evacuate_steps(&inc, &once.id)
        .iter()
        .filter_map(|s| s["attempt"].as_i64())
        .collect();
    assert_eq!(attempts, [1, 2], "evacuate attempts of {}", once.id);
    let failed_verify: Vec<&Value> = steps(&inc, "verify")
        .filter(|s| s["target"] == once.id.as_str() && s["outcome"] == "failed")
        .collect();
    assert!(
        failed_verify.len() == 1
            && failed_verify[0]["result"]["retry"] == true
            && failed_verify[0]["result"]["fault"]
                .as_str()
                .unwrap_or("")
                .contains(PURPOSE),
        "want one failed verify (retry, Nova's fault) for {}: {failed_verify:?}",
        once.id
    );
    let resets: Vec<&Value> = steps(&inc, "reset_state")
        .filter(|s| s["target"] == once.id.as_str())
        .collect();
    assert!(
        resets.len() == 1 && resets[0]["outcome"] == "ok",
        "want one reset_state of {}: {resets:?}",
        once.id
    );
    let t = timeline(&inc);
    let order = [
        ("step-end", format!("Verify {}: Failed", once.id)),
        ("step-end", format!("ResetState {}: Ok", once.id)),
        ("step-begin", format!("Evacuate {} (attempt 2)", once.id)),
        ("step-end", format!("Verify {}: Ok", once.id)),
    ];
    let at: Vec<Option<usize>> = order.iter().map(|(w, p)| find(&t, w, p)).collect();
    assert!(
        at.iter().all(Option::is_some) && at.windows(2).all(|w| w[0] < w[1]),
        "timeline must show, in order, {order:?}; found at {at:?}: {t:#?}"
    );

    // Kept failing: three evacuations (max_attempts), still ERROR on the dead
    // host, and the incident carries Nova's own reason.
    assert_eq!(
        SpawnFailures::left(lab, &always.id),
        7,
        "spawns of {} tried (10 - left) should be exactly 3",
        always.id
    );
    let v = server(lab, &always.id);
    assert!(
        v["status"] == "ERROR" && v["OS-EXT-SRV-ATTR:host"] == NODE,
        "the always-failing server is {} on {}",
        v["status"],
        v["OS-EXT-SRV-ATTR:host"]
    );
    let n = evacuate_actions(lab, &always.id);
    assert_eq!(
        n,
        3,
        "evacuate actions of the always-failing server: {:?}",
        instance_actions(lab, &always.id)
    );
    let fault = v["fault"]["message"].as_str().unwrap_or("").to_string();
    assert!(
        fault.contains(PURPOSE),
        "Nova's fault for {}: {}",
        always.id,
        v["fault"]
    );
    let rec = instance(&inc, &always.id);
    let reason = rec["reason"].as_str().unwrap_or("");
    assert!(
        rec["state"] == "failed"
            && rec["attempts"] == 3
            && reason.contains("after 3 attempt(s)")
            && reason.contains(&fault),
        "instance record of the always-failing server (Nova's fault {fault:?}): {rec}"
    );
    let why = summary["reason"].as_str().unwrap_or("");
    assert!(
        why.contains(&always.name) && why.contains(&fault),
        "needs-attention reason {why:?} must name {} and Nova's fault {fault:?}",
        always.name
    );
    d.wait_verdict(NODE, "needs-attention", &[], Duration::from_secs(30));

    // Paged: a signed webhook and an e-mail to the admins.
    wait::until(
        "the needs-attention page at the webhook and SMTP receivers",
        Duration::from_secs(30),
        Duration::from_millis(500),
        || {
            let hooks = webhooks(lab, &id, "needs-attention");
            let mails: Vec<String> = lab
                .smtp_messages()
                .unwrap_or_default()
                .into_iter()
                .filter(|m| m.data.contains(&id) && m.rcpt_tos.iter().any(|r| r == ADMIN_MAIL))
                .map(|m| m.subject)
                .collect();
            let hook_ok = hooks.iter().any(|b| b.contains(&always.id));
            let mail_ok = mails
                .iter()
                .any(|s| s.to_lowercase().contains("attention"));
            if hook_ok && mail_ok {
                Ok(())
            } else {
                Err(format!(
                    "needs-attention webhooks naming {}: {hook_ok} ({} about the incident); admin mail subjects {mails:?}",
                    always.id,
                    hooks.len()
                ))
            }
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", d.log()));
}

/// `shutoff = "evacuate"`, one power cut: the ACTIVE server lands running,
/// a SHUTOFF one lands stopped (no guest process), and a SHUTOFF one whose
/// first evacuation fails on its destination is retried and still lands
/// stopped, not running.
#[test]
fn shutoff_evacuate_lands_stopped_servers_stopped_even_after_a_failed_attempt() {
    if !tier::root(
        "shutoff_evacuate_lands_stopped_servers_stopped_even_after_a_failed_attempt",
        WHY,
    ) {
        return;
    }
    let lab = Lab::shared().expect("lab up");
    let _x = lab.exclusive();
    let (_restore, _) = prepare(lab, NODE, 0);
    let servers = boot_with_statuses(3, NODE, &[("shutoff", 2)])
        .expect("boot two SHUTOFF servers and an ACTIVE one on compute1");
    let active = by_status(&servers, "ACTIVE");
    let mut stopped_ones = servers.iter().filter(|s| s.status == "SHUTOFF");
    let (shutoff, retried) = match (stopped_ones.next(), stopped_ones.next()) {
        (Some(a), Some(b)) => (a, b),
        _ => panic!("two SHUTOFF servers booted: {servers:?}"),
    };
    let mut failures = SpawnFailures::default();
    let stale = failures
        .set(&retried.id, 1)
        .expect("fail the server's next spawn");
    let stale: Vec<String> = stale.into_iter().filter(|n| n != NODE).collect();
    if !stale.is_empty() {
        eprintln!(
            "restarting nova-compute on {stale:?}: started before the lab virt driver changed"
        );
        restart_nova_compute(lab, &stale).expect("restart stale nova-computes");
    }
    let d = Decider::start(
        lab,
        Opts {
            shutoff: Some("evacuate".into()),
            ..Opts::default()
        },
    );
    d.wait_all_healthy(lab);
    let (id, inc) = lose_power_and_recover(lab, &d);
    assert_eq!(
        SpawnFailures::left(lab, &retried.id),
        0,
        "the lab did not fail {}'s spawn: the destination's nova-compute lacks the hook?",
        retried.id
    );
    assert_eq!(
        inc["incident"]["summary"]["status"],
        "completed",
        "incident {id}: {inc}\n{}",
        d.log()
    );

    let run_host = assert_moved(lab, &active.id, "ACTIVE", 1, &d);
    let stop_host = assert_moved(lab, &shutoff.id, "SHUTOFF", 1, &d);
    for (s, expected, mv) in [(active, "ACTIVE", "2.94"), (shutoff, "SHUTOFF", "2.95")] {
        let rec = instance(&inc, &s.id);
        assert!(
            rec["state"] == "evacuated" && rec["expected"] == expected,
            "instance record of the {} server {}: {rec}",
            s.status,
            s.id
        );
        let ev = evacuate_steps(&inc, &s.id);
        assert!(
            ev.len() == 1 && ev[0]["detail"]["request"]["microversion"] == mv,
            "the {} server must be evacuated once with microversion {mv}; evacuate steps: {ev:?}",
            s.status
        );
    }
    // The failed attempt leaves it ERROR; the retry must still land it
    // stopped, not running.
    let retry_host = assert_moved(lab, &retried.id, "SHUTOFF", 2, &d);
    let rec = instance(&inc, &retried.id);
    assert!(
        rec["state"] == "evacuated" && rec["attempts"] == 2 && rec["expected"] == "SHUTOFF",
        "instance record: {rec}"
    );
    // Stopped for real: no guest process for them on their new hosts, while
    // the running one has its qemu there.
    let qemu = |host: &str| -> Vec<String> {
        lab.qemu_processes(host)
            .unwrap_or_else(|e| panic!("qemu processes on {host}: {e:#}"))
            .into_values()
            .collect()
    };
    for (s, host) in [(shutoff, &stop_host), (retried, &retry_host)] {
        let on = qemu(host);
        assert!(
            !on.contains(&s.id),
            "the evacuated SHUTOFF server {} has a qemu running on {host}: {on:?}",
            s.id
        );
    }
    let on_run_host = qemu(&run_host);
    assert!(
        on_run_host.contains(&active.id),
        "the evacuated ACTIVE server {} has no qemu on {run_host}: {on_run_host:?}",
        active.id
    );
}
