//! `vigil-sensor probe`: one snapshot, as tables or JSON, no decider needed.

use std::{
    fmt::Write as _,
    time::{Duration, Instant},
};

use crate::{
    cli::ProbeArgs,
    discovery,
    psi::PressureReader,
    run::{prepare_watch, RunError},
    sample::Sample,
    sampler::{Sampler, SamplerConfig, Tunables},
    signals,
};

/// Why the probe command failed after printing what it saw.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error(transparent)]
    Setup(#[from] RunError),
    /// `--wait-exit PID` did not exit within `--timeout`.
    #[error("pid {pid} did not exit within {timeout:?} (or its exit was not seen)")]
    NoExit { pid: u32, timeout: Duration },
}

/// Takes the snapshot and returns it (the caller prints it).
pub fn probe(args: &ProbeArgs) -> Result<Sample, ProbeError> {
    let (open_opts, disc_cfg) = prepare_watch(&args.watch)?;
    let (signals, fallback_reason) = signals::open(&open_opts);
    let scope_dir = disc_cfg.scope.as_ref().map(|s| s.dir.clone());
    let shared = discovery::Shared::default();
    let mut cache = discovery::Cache::default();
    shared.publish(discovery::scan(&disc_cfg, &mut cache));
    let step = if args.wait_exit.is_some() {
        Duration::from_millis(100)
    } else {
        args.duration
    };
    let tunables = Tunables::new(step, args.blocked_threshold);
    let mut sampler = Sampler::new(
        SamplerConfig {
            node: crate::run_hostname(),
            boot_id: std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
                .map(|s| s.trim().to_string())
                .unwrap_or_default(),
            // Quietly empty when unreadable (not root): probe only shows it.
            system_uuid: crate::system_uuid::read(std::path::Path::new(
                crate::system_uuid::DEFAULT_PATH,
            ))
            .unwrap_or_default(),
            instance: crate::sampler::instance_id(),
            max_reported: 1000,
            extra_watch: args.wait_exit.into_iter().collect(),
            scope_path: disc_cfg.scope.as_ref().map(|s| s.path.clone()),
            fallback_reason,
        },
        tunables,
        signals,
        shared,
        PressureReader::open(scope_dir.as_deref()),
    );
    // A first sample sets the CPU baselines; the printed one is a step later.
    let _baseline = sampler.sample();
    if let Some(pid) = args.wait_exit {
        // Tests wait for this line before they make the pid exit.
        eprintln!(
            "vigil-sensor probe: attached ({:?} mode), watching pid {pid} for its exit",
            sampler.mode()
        );
        let deadline = Instant::now() + args.timeout;
        let mut exits = Vec::new();
        loop {
            std::thread::sleep(step);
            let mut sample = sampler.sample();
            exits.append(&mut sample.exits);
            if exits.iter().any(|e| e.pid == pid) {
                sample.exits = exits;
                return Ok(sample);
            }
            if Instant::now() >= deadline {
                return Err(ProbeError::NoExit {
                    pid,
                    timeout: args.timeout,
                });
            }
        }
    }
    std::thread::sleep(step);
    Ok(sampler.sample())
}

/// The snapshot as tables for people.
pub fn render_table(s: &Sample) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "node {}  boot {}  system uuid {}  mode {:?}  sensor {}",
        s.node,
        s.boot_id,
        if s.system_uuid.is_empty() {
            "unknown"
        } else {
            &s.system_uuid
        },
        s.mode,
        s.sensor_version
    );
    let _ = writeln!(
        o,
        "probes attached: {}",
        s.health.attached_probes.join(", ")
    );
    if !s.health.failed_probes.is_empty() {
        let _ = writeln!(o, "probes FAILED:   {}", s.health.failed_probes.join("; "));
    }
    if !s.health.message.is_empty() {
        let _ = writeln!(o, "note: {}", s.health.message);
    }
    let _ = writeln!(
        o,
        "map_full {}  events_lost {}  hung_task_events {}",
        s.health.map_full, s.health.events_lost, s.health.hung_task_events
    );
    let _ = writeln!(o, "\nBLOCKED TASKS ({})", s.blocked_tasks.len());
    if !s.blocked_tasks.is_empty() {
        let _ = writeln!(
            o,
            "{:>8} {:>8} {:<16} {:>10} {:>6}  CGROUP",
            "PID", "TGID", "COMM", "BLOCKED", "D%"
        );
        for b in &s.blocked_tasks {
            let _ = writeln!(
                o,
                "{:>8} {:>8} {:<16} {:>9.1}s {:>5.0}%  {}",
                b.pid,
                b.tgid,
                b.comm,
                b.blocked_ms as f64 / 1000.0,
                b.d_share * 100.0,
                b.cgroup
            );
        }
    }
    let _ = writeln!(
        o,
        "\nDEVICES WITH I/O IN FLIGHT ({})",
        s.device_stalls.len()
    );
    if !s.device_stalls.is_empty() {
        let _ = writeln!(
            o,
            "{:<10} {:<12} {:>9} {:>10}",
            "DEVICE", "NAME", "IN FLIGHT", "OLDEST"
        );
        for d in &s.device_stalls {
            let _ = writeln!(
                o,
                "{:<10} {:<12} {:>9} {:>9.1}s",
                d.device,
                d.name,
                d.in_flight,
                d.oldest_ms as f64 / 1000.0
            );
        }
    }
    let _ = writeln!(o, "\nINSTANCES ({})", s.instances.len());
    if !s.instances.is_empty() {
        let _ = writeln!(
            o,
            "{:<36} {:<20} {:>8} {:<6} {:>8}",
            "UUID", "NAME", "PID", "ALIVE", "CPU"
        );
        for i in &s.instances {
            let cpu = i.cpu_ns_delta as f64 / (s.interval_ms.max(1) as f64 * 1e6) * 100.0;
            let _ = writeln!(
                o,
                "{:<36} {:<20} {:>8} {:<6} {:>7.0}%",
                i.uuid, i.name, i.pid, i.alive, cpu
            );
        }
    }
    let _ = writeln!(
        o,
        "\nNOVA-COMPUTE {:?} pid {} blocked {:.1}s",
        s.nova_compute.state,
        s.nova_compute.pid,
        s.nova_compute.blocked_ms as f64 / 1000.0
    );
    let p = &s.pressure;
    let _ = writeln!(
        o,
        "PSI avg10 some/full: io {:.2}/{:.2}  memory {:.2}/{:.2}  cpu {:.2}/{:.2}",
        p.io.some_avg10,
        p.io.full_avg10,
        p.memory.some_avg10,
        p.memory.full_avg10,
        p.cpu.some_avg10,
        p.cpu.full_avg10
    );
    for e in &s.exits {
        let _ = writeln!(o, "EXIT pid {} comm {}", e.pid, e.comm);
    }
    o
}
