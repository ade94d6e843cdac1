//! The Debian packages as an operator gets them: `cargo xtask package --dev`
//! builds both from the debug binaries (the suite's own; a release build of
//! both would cost minutes for the same file list), then this test reads them
//! with dpkg-deb (files, conffiles, dependencies, maintainer scripts) and
//! checks the systemd units *from the packages*, unpacked into a root with
//! this host's units beside them: `systemd-analyze verify` must print
//! nothing and `systemd-analyze security --offline=true` must score each at
//! most its bound. PID 1 is not systemd here, so both run offline. Needs
//! neither root nor the lab; needs cargo-deb (`cargo xtask setup`).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use vigil_tests::{bins, packaged};

/// Exposure bounds (systemd-analyze security: 0 best, 10 worst). The sensor's
/// is higher: it must see the whole host (/proc, eBPF) and reach the network.
const DECIDER_MAX_EXPOSURE: f64 = 2.0;
const SENSOR_MAX_EXPOSURE: f64 = 2.5;

fn run(cmd: &mut Command) -> Output {
    let shown = format!("{cmd:?}");
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {shown}: {e}"));
    assert!(
        out.status.success(),
        "{shown} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn stdout(cmd: &mut Command) -> String {
    String::from_utf8_lossy(&run(cmd).stdout).into_owned()
}

fn deb(dir: &Path, name: &str) -> PathBuf {
    std::fs::read_dir(dir)
        .expect("list the package dir")
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&format!("{name}_")) && n.ends_with(".deb"))
        })
        .unwrap_or_else(|| panic!("no {name}_*.deb in {}", dir.display()))
}

/// Paths in the package, without the leading `.`.
fn files(deb: &Path) -> Vec<String> {
    stdout(Command::new("dpkg-deb").arg("-c").arg(deb))
        .lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .map(|p| p.trim_start_matches('.').to_string())
        .collect()
}

fn control_file(deb: &Path, file: &str) -> String {
    stdout(Command::new("dpkg-deb").arg("-I").arg(deb).arg(file))
}

fn exposure(root: &Path, unit: &str) -> f64 {
    let path = root.join("usr/lib/systemd/system").join(unit);
    let report = stdout(
        Command::new("systemd-analyze")
            .args(["security", "--offline=true", "--no-pager"])
            .arg(&path),
    );
    let line = report
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_else(|| panic!("no overall exposure level for {unit}:\n{report}"));
    line.split(':')
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("cannot read the score in {line:?}"))
}

#[test]
fn packages_hold_binary_unit_config_docs_and_units_pass_systemd_analyze() {
    let dir = tempfile::tempdir().expect("temp dir");
    // The packages the suite runs (`cargo xtask test` made them), else a
    // fresh pair from the debug build.
    let out = match packaged::dir() {
        Some(d) => d,
        None => {
            let out = dir.path().join("debs");
            run(Command::new(bins::bin("xtask"))
                .current_dir(bins::workspace_root())
                .args(["package", "--dev", "--no-build", "--out"])
                .arg(&out));
            out
        }
    };
    let decider = deb(&out, "vigil-decider");
    let sensor = deb(&out, "vigil-sensor");

    for (deb, name, expected) in [
        (
            &decider,
            "vigil-decider",
            &[
                "/usr/bin/vigil-decider",
                "/usr/lib/systemd/system/vigil-decider.service",
                "/etc/vigil/decider.toml",
                "/etc/vigil/decider.env",
                "/usr/share/doc/vigil-decider/examples/decider.toml",
                "/usr/share/vigil/prometheus/vigil-rules.yml",
                "/usr/share/vigil/prometheus/vigil-rules.test.yml",
                "/usr/share/man/man1/vigil-decider.1",
                "/usr/share/man/man1/vigil-decider-serve.1",
                "/usr/share/bash-completion/completions/vigil-decider",
                "/usr/share/zsh/vendor-completions/_vigil-decider",
                "/usr/share/fish/vendor_completions.d/vigil-decider.fish",
            ][..],
        ),
        (
            &sensor,
            "vigil-sensor",
            &[
                "/usr/bin/vigil-sensor",
                "/usr/lib/systemd/system/vigil-sensor.service",
                "/etc/vigil/sensor.env",
                "/usr/share/man/man1/vigil-sensor.1",
                "/usr/share/man/man1/vigil-sensor-run.1",
                "/usr/share/man/man1/vigil-sensor-probe.1",
                "/usr/share/bash-completion/completions/vigil-sensor",
                "/usr/share/zsh/vendor-completions/_vigil-sensor",
                "/usr/share/fish/vendor_completions.d/vigil-sensor.fish",
            ][..],
        ),
    ] {
        let listed = files(deb);
        println!("{name} contents:\n  {}", listed.join("\n  "));
        for f in expected {
            assert!(
                listed.iter().any(|l| l == f),
                "{name} lacks {f}: {listed:#?}"
            );
        }
        // Hidden commands are for the build, not for people.
        assert!(
            !listed
                .iter()
                .any(|l| l.contains("generate-docs") || l.contains("bench-switch")),
            "{name} documents a hidden command: {listed:#?}"
        );
        let control = control_file(deb, "control");
        println!("{name} control:\n{control}");
        let depends = control
            .lines()
            .find(|l| l.starts_with("Depends:"))
            .unwrap_or_else(|| panic!("{name} has no Depends:\n{control}"));
        assert!(depends.contains("libc6"), "{name}: {depends}");
        let conffiles = control_file(deb, "conffiles");
        println!("{name} conffiles:\n{conffiles}");
        for f in expected.iter().filter(|f| f.starts_with("/etc/")) {
            assert!(
                conffiles.lines().any(|l| l.trim() == *f),
                "{name}: {f} is not a conffile:\n{conffiles}"
            );
        }
        let postinst = control_file(deb, "postinst");
        assert!(
            postinst.contains(&format!("{name}.service")),
            "{name}'s postinst does not register its unit:\n{postinst}"
        );
    }
    let control = control_file(&decider, "control");
    assert!(
        control.contains("adduser"),
        "decider must depend on adduser:\n{control}"
    );
    let postinst = control_file(&decider, "postinst");
    assert!(
        postinst.contains("adduser --system"),
        "decider's postinst does not create its user:\n{postinst}"
    );

    // The packaged units, in a root that has this host's units (targets
    // they refer to) and the packaged binaries they start.
    let root = dir.path().join("root");
    let units = root.join("usr/lib/systemd/system");
    std::fs::create_dir_all(&units).expect("root's unit dir");
    run(Command::new("cp")
        .args(["-a", "/lib/systemd/system/."])
        .arg(&units));
    for deb in [&decider, &sensor] {
        run(Command::new("dpkg-deb").arg("-x").arg(deb).arg(&root));
    }
    for (unit, bound) in [
        ("vigil-decider.service", DECIDER_MAX_EXPOSURE),
        ("vigil-sensor.service", SENSOR_MAX_EXPOSURE),
    ] {
        let o = run(Command::new("systemd-analyze")
            .args(["verify", "--man=no", "--root"])
            .arg(&root)
            .arg(units.join(unit)));
        // verify exits 0 on many findings (unknown keys, bad values): it
        // must print nothing at all.
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(
            said.trim().is_empty(),
            "systemd-analyze verify {unit}:\n{said}"
        );
        let score = exposure(&root, unit);
        println!("{unit}: systemd-analyze security exposure {score} (bound {bound})");
        assert!(score <= bound, "{unit} exposure {score} > {bound}");
    }

    // The decider unit's ExecStart, read the way the lab and the harness
    // read it (tests/lab/nodes/sdunit.py), starts the packaged binary with
    // the packaged config.
    let cmd = packaged::unit_command(
        &units.join("vigil-decider.service"),
        &[
            (
                "/usr/".into(),
                PathBuf::from(format!("{}/usr/", root.display())),
            ),
            (
                "/etc/vigil/".into(),
                PathBuf::from(format!("{}/etc/vigil/", root.display())),
            ),
        ],
    )
    .unwrap_or_else(|e| panic!("{e}"));
    println!(
        "vigil-decider.service ExecStart={} -> {:?}",
        cmd.exec_start, cmd.argv
    );
    let exe = root.join("usr/bin/vigil-decider");
    let config = root.join("etc/vigil/decider.toml");
    assert_eq!(
        cmd.argv,
        [
            exe.display().to_string(),
            "serve".into(),
            "--config".into(),
            config.display().to_string()
        ],
        "the decider unit's ExecStart"
    );
    let version = stdout(Command::new(&exe).arg("--version"));
    assert!(
        version.starts_with("vigil-decider "),
        "{} --version: {version}",
        exe.display()
    );
}

/// sdunit.py's own unit tests (systemd's precedence of EnvironmentFile=
/// over Environment=, specifiers, credentials, refusals).
#[test]
fn sdunit_reads_units_as_systemd_does() {
    let o = run(Command::new("python3")
        .args(["-m", "unittest", "-v", "test_sdunit"])
        .current_dir(bins::workspace_root().join("tests/lab/nodes"))
        .env("PYTHONDONTWRITEBYTECODE", "1"));
    println!("{}", String::from_utf8_lossy(&o.stderr));
}
