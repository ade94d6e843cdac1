//! The decider's FROM-scratch container image (`cargo xtask container`,
//! packaging/container/), built from the suite's vigil-decider .deb and run
//! with podman as an operator would: `--version`, then `serve --check` on a
//! config bind-mounted at /etc/vigil, which must refuse a config that
//! watches nothing with the documented exit code 2, and must be unable to
//! read a root-only config (the process is not root). Root (podman).
//!
//! This machine's quirks, passed on every `podman run` (README, "Container"):
//! the host has hybrid cgroups with a controller on v2, which crun refuses,
//! so the runtime is runc; and no CAP_SYS_RESOURCE, so the open-files and
//! process limits must stay within the current hard limits.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Instant;

use vigil_tests::{bins, packaged, tier};

const TAG: &str = "localhost/vigil-decider:suite";
const UID: &str = "42480:42480";

fn run(cmd: &mut Command) -> Output {
    let shown = format!("{cmd:?}");
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {shown}: {e}"))
}

fn ok(cmd: &mut Command) -> String {
    let shown = format!("{cmd:?}");
    let o = run(cmd);
    assert!(
        o.status.success(),
        "{shown} failed ({}):\n{}{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn hard_limit(resource: libc::__rlimit_resource_t) -> u64 {
    let mut l = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into the struct we own.
    let r = unsafe { libc::getrlimit(resource, &mut l) };
    assert_eq!(r, 0, "getrlimit");
    l.rlim_max
}

/// `podman run --rm` with this machine's runtime and limits, no network.
fn podman_run(mounts: &[(&Path, &str)], args: &[&str]) -> Output {
    // Measured here: runc's init is refused nproc above 32768 even under a
    // higher hard limit of the caller's.
    let nofile = hard_limit(libc::RLIMIT_NOFILE).min(65536);
    let nproc = hard_limit(libc::RLIMIT_NPROC).min(32768);
    let mut c = Command::new("podman");
    c.args(["--runtime", "runc", "run", "--rm", "--network", "none"])
        .arg(format!("--ulimit=nofile={nofile}:{nofile}"))
        .arg(format!("--ulimit=nproc={nproc}:{nproc}"));
    for (host, inside) in mounts {
        c.arg("--volume")
            .arg(format!("{}:{inside}:ro", host.display()));
    }
    c.arg(TAG).args(args);
    run(&mut c)
}

fn said(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The image is removed after the test (each build would leave another
/// 40 MB behind), even when it fails.
struct RemoveImage;

impl Drop for RemoveImage {
    fn drop(&mut self) {
        let _ = Command::new("podman").args(["rmi", "-f", TAG]).output();
    }
}

#[test]
fn decider_image_from_scratch_runs_as_vigil_and_checks_a_mounted_config() {
    if !tier::root(
        "decider_image_from_scratch_runs_as_vigil_and_checks_a_mounted_config",
        "rootful podman",
    ) {
        return;
    }
    let started = Instant::now();
    let _image = RemoveImage;
    let tmp = tempfile::tempdir().expect("temp dir");
    let debs: PathBuf = match packaged::dir() {
        Some(d) => d,
        None => {
            let out = tmp.path().join("debs");
            ok(Command::new(bins::bin("xtask"))
                .current_dir(bins::workspace_root())
                .args(["package", "--dev", "--no-build", "--out"])
                .arg(&out));
            out
        }
    };
    ok(Command::new(bins::bin("xtask"))
        .current_dir(bins::workspace_root())
        .args(["container", "--tag", TAG, "--debs"])
        .arg(&debs));
    let built = started.elapsed();

    let inspect: serde_json::Value =
        serde_json::from_str(&ok(Command::new("podman").args(["image", "inspect", TAG])))
            .expect("podman image inspect: JSON");
    let img = &inspect[0];
    let config = &img["Config"];
    println!(
        "image {TAG}: {} bytes, user {}, entrypoint {}, cmd {}",
        img["Size"], config["User"], config["Entrypoint"], config["Cmd"]
    );
    assert_eq!(config["User"], UID, "the image runs as the vigil user");
    assert_eq!(
        config["Entrypoint"],
        serde_json::json!(["/usr/bin/vigil-decider"])
    );
    assert_eq!(
        config["Cmd"],
        serde_json::json!(["serve", "--config", "/etc/vigil/decider.toml"])
    );

    // Its files: the binary, the loader, ldd's libraries, the user, the CA
    // bundle; nothing else (no shell, no package manager).
    let name = format!("vigil-files-{}", std::process::id());
    ok(Command::new("podman").args(["create", "--name", &name, TAG]));
    let listing = run(Command::new("sh").arg("-c").arg(format!(
        "podman export {name} | tar -t; podman rm -f {name} >/dev/null"
    )));
    let files: Vec<String> = String::from_utf8_lossy(&listing.stdout)
        .lines()
        .filter(|l| !l.ends_with('/'))
        .map(str::to_string)
        .collect();
    println!("image files:\n  {}", files.join("\n  "));
    for f in [
        "usr/bin/vigil-decider",
        "lib64/ld-linux-x86-64.so.2",
        "etc/passwd",
        "etc/group",
        "etc/ssl/certs/ca-certificates.crt",
    ] {
        assert!(files.iter().any(|l| l == f), "the image lacks {f}");
    }
    let extra: Vec<&String> = files
        .iter()
        .filter(|f| {
            !(f.starts_with("usr/bin/vigil-decider")
                || f.contains(".so")
                || f.starts_with("etc/")
                // podman's own mount points
                || f.starts_with("run/")
                || f.starts_with("dev/")
                || f.starts_with("proc/")
                || f.starts_with("sys/"))
        })
        .collect();
    assert!(extra.is_empty(), "unexpected files in the image: {extra:?}");

    let version = podman_run(&[], &["--version"]);
    assert!(
        version.status.success() && said(&version).starts_with("vigil-decider "),
        "--version in the container: {}\n{}",
        version.status,
        said(&version)
    );

    // A config (bind-mounted read-only at /etc/vigil, as Kolla does) that
    // watches nothing: the documented exit 2, with why.
    let etc = tmp.path().join("etc");
    std::fs::create_dir(&etc).expect("etc dir");
    let cfg = etc.join("decider.toml");
    std::fs::write(&cfg, "[server]\nlisten = \"127.0.0.1:50051\"\n").expect("config");
    std::fs::set_permissions(&etc, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    std::fs::set_permissions(&cfg, std::os::unix::fs::PermissionsExt::from_mode(0o644))
        .expect("chmod");
    let check = podman_run(
        &[(&etc, "/etc/vigil")],
        &["serve", "--check", "--config", "/etc/vigil/decider.toml"],
    );
    println!(
        "serve --check (nothing watched): {}\n{}",
        check.status,
        said(&check)
    );
    assert_eq!(check.status.code(), Some(2), "{}", said(&check));
    assert!(
        said(&check).contains("watches nothing") || said(&check).contains("no [[node]]"),
        "serve --check does not say why: {}",
        said(&check)
    );

    // The same file root-only: the container's process is not root (root
    // there has CAP_DAC_OVERRIDE and would read it).
    std::fs::set_permissions(&cfg, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .expect("chmod");
    let denied = podman_run(
        &[(&etc, "/etc/vigil")],
        &["serve", "--check", "--config", "/etc/vigil/decider.toml"],
    );
    println!(
        "serve --check (root-only config): {}\n{}",
        denied.status,
        said(&denied)
    );
    assert_eq!(denied.status.code(), Some(2), "{}", said(&denied));
    assert!(
        said(&denied).to_lowercase().contains("permission denied"),
        "a root-only config must be unreadable to the image's user: {}",
        said(&denied)
    );
    println!(
        "container test: image built in {:.1}s, all in {:.1}s",
        built.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
}
