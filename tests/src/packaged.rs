//! The packaged files, so the suite tests what ships.
//!
//! Rule: when `VIGIL_PACKAGED=DIR` is set (`cargo xtask test` sets it to the
//! directory its `cargo xtask package --dev` step wrote), the tests run the
//! binaries from the `.deb` files in DIR, unpacked with `dpkg-deb -x`, and
//! the harness starts `vigil-decider serve` with the packaged unit's
//! `ExecStart=` and `EnvironmentFile=`; unset, they run the build tree
//! (`target/debug`). Each test binary says once, on stderr, which one it runs;
//! a `VIGIL_PACKAGED` without the packages fails the test, never falls back.
//! The lab reads the same variable for its sensors (tests/lab/CONTRACT.md).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use serde::Deserialize;

use crate::bins::workspace_root;

/// One package, unpacked.
#[derive(Debug)]
pub struct Package {
    pub deb: PathBuf,
    /// Where `dpkg-deb -x` laid its files (`ROOT/usr/bin/NAME`, ...).
    pub root: PathBuf,
}

impl Package {
    pub fn bin(&self, name: &str) -> PathBuf {
        self.root.join("usr/bin").join(name)
    }

    pub fn unit(&self, name: &str) -> PathBuf {
        self.root.join("usr/lib/systemd/system").join(name)
    }
}

/// `VIGIL_PACKAGED`, when set and not empty.
pub fn dir() -> Option<PathBuf> {
    std::env::var_os("VIGIL_PACKAGED")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

/// The newest `NAME_*.deb` in `dir`.
pub fn find_deb(dir: &Path, name: &str) -> Result<PathBuf, String> {
    let prefix = format!("{name}_");
    let entries = std::fs::read_dir(dir).map_err(|e| format!("listing {}: {e}", dir.display()))?;
    entries
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".deb"))
        })
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .max()
        .map(|(_, p)| p)
        .ok_or_else(|| {
            format!(
                "no {name}_*.deb in {} (`cargo xtask package --dev` makes it)",
                dir.display()
            )
        })
}

/// Unpacks `deb` under `target/packaged/` (once per package file: the
/// directory is named by its size and mtime) and returns the root.
pub fn unpack(deb: &Path) -> Result<PathBuf, String> {
    let meta = std::fs::metadata(deb).map_err(|e| format!("{}: {e}", deb.display()))?;
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let stem = deb
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("package");
    let base = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
        .join("packaged");
    let root = base.join(format!("{stem}-{}-{mtime}", meta.len()));
    if root.is_dir() {
        return Ok(root);
    }
    // Into a private directory first, then renamed: another test binary
    // never sees a half-unpacked root.
    let tmp = base.join(format!(".{stem}.{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| format!("creating {}: {e}", tmp.display()))?;
    let out = Command::new("dpkg-deb")
        .arg("-x")
        .arg(deb)
        .arg(&tmp)
        .output()
        .map_err(|e| format!("running dpkg-deb -x {}: {e}", deb.display()))?;
    if !out.status.success() {
        return Err(format!(
            "dpkg-deb -x {} failed ({}): {}",
            deb.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    match std::fs::rename(&tmp, &root) {
        Ok(()) => {
            remove_older(&base, stem, &root);
            Ok(root)
        }
        // Another test binary got there first with the same package.
        Err(_) if root.is_dir() => {
            let _ = std::fs::remove_dir_all(&tmp);
            Ok(root)
        }
        Err(e) => Err(format!(
            "renaming {} to {}: {e}",
            tmp.display(),
            root.display()
        )),
    }
}

/// Roots of earlier builds of the same package (40 MB and more each).
fn remove_older(base: &Path, stem: &str, keep: &Path) {
    let prefix = format!("{stem}-");
    for e in std::fs::read_dir(base).into_iter().flatten().flatten() {
        let p = e.path();
        let older = p != keep
            && e.file_name()
                .to_str()
                .is_some_and(|n| n.starts_with(&prefix));
        if older {
            let _ = std::fs::remove_dir_all(&p);
        }
    }
}

static DECIDER: OnceLock<Option<Package>> = OnceLock::new();
static SENSOR: OnceLock<Option<Package>> = OnceLock::new();

/// The package `name` (vigil-decider or vigil-sensor) when `VIGIL_PACKAGED`
/// is set, else None. Panics when it is set but the package cannot be had:
/// every caller is a test, and a silent fallback to the build tree would
/// test something else than what ships.
pub fn package(name: &str) -> Option<&'static Package> {
    let cell = match name {
        "vigil-decider" => &DECIDER,
        "vigil-sensor" => &SENSOR,
        _ => return None,
    };
    cell.get_or_init(|| {
        let dir = dir()?;
        let got = find_deb(&dir, name).and_then(|deb| {
            let root = unpack(&deb)?;
            Ok(Package { deb, root })
        });
        match got {
            Ok(p) => {
                eprintln!(
                    "{name}: the packaged file {} (from {}, VIGIL_PACKAGED={})",
                    p.bin(name).display(),
                    p.deb.display(),
                    dir.display()
                );
                Some(p)
            }
            Err(e) => panic!("VIGIL_PACKAGED={} is set, but {e}", dir.display()),
        }
    })
    .as_ref()
}

/// What a unit runs, as `tests/lab/nodes/sdunit.py command` computes it
/// (one reading of systemd's rules for the lab and the harness).
#[derive(Debug, Deserialize)]
pub struct UnitCommand {
    pub exec_start: String,
    pub argv: Vec<String>,
    pub env: BTreeMap<String, String>,
}

/// The command `unit` starts, its absolute paths rewritten by `maps`
/// (`(FROM, TO)`, FROM ending in `/` maps a prefix).
pub fn unit_command(unit: &Path, maps: &[(String, PathBuf)]) -> Result<UnitCommand, String> {
    let script = workspace_root().join("tests/lab/nodes/sdunit.py");
    let mut cmd = Command::new("python3");
    cmd.arg(&script).arg("command").arg("--unit").arg(unit);
    for (from, to) in maps {
        cmd.arg("--map").arg(format!("{from}={}", to.display()));
    }
    let out = cmd
        .output()
        .map_err(|e| format!("running {}: {e}", script.display()))?;
    if !out.status.success() {
        return Err(format!(
            "{} command --unit {} failed ({}): {}",
            script.display(),
            unit.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    serde_json::from_slice(&out.stdout).map_err(|e| {
        format!(
            "sdunit's answer for {}: {e}: {}",
            unit.display(),
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// `vigil-decider serve` as the packaged unit starts it, with the unit's
/// `/etc/vigil/decider.toml` replaced by `config` and its
/// `/etc/vigil/decider.env` by `env_file`; None without `VIGIL_PACKAGED`.
pub fn decider_serve(config: &Path, env_file: &Path) -> Option<UnitCommand> {
    let pkg = package("vigil-decider")?;
    let maps = [
        ("/usr/".to_string(), pkg.root.join("usr")),
        ("/etc/vigil/decider.toml".to_string(), config.to_path_buf()),
        ("/etc/vigil/decider.env".to_string(), env_file.to_path_buf()),
    ];
    // A prefix map's target must end in `/` like its source.
    let maps: Vec<(String, PathBuf)> = maps
        .into_iter()
        .map(|(f, t)| {
            if f.ends_with('/') {
                (f, PathBuf::from(format!("{}/", t.display())))
            } else {
                (f, t)
            }
        })
        .collect();
    let unit = pkg.unit("vigil-decider.service");
    match unit_command(&unit, &maps) {
        Ok(c) => Some(c),
        Err(e) => panic!("the packaged decider unit: {e}"),
    }
}
