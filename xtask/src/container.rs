//! `cargo xtask container`: the decider as a FROM-scratch container image
//! (packaging/container/Containerfile), built from the vigil-decider .deb.
//!
//! The image root is what the package ships plus what the binary needs to
//! run and nothing else: the binary, exactly the shared libraries `ldd`
//! lists for it and the dynamic loader (cheaper than a second, static build
//! of the whole tree), /etc/passwd and /etc/group for the `vigil` user, and
//! the host's CA bundle for https to Keystone and Nova. The build itself
//! runs no container (the Containerfile has only COPY), so it needs no OCI
//! runtime.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use clap::Args;

use crate::{cmd, package};

/// The image's user (Kolla gives each service a fixed uid/gid in the
/// 42400s; this one is Vigil's).
pub const UID: u32 = 42480;
const CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";
/// Bound on what `ldd` may name: a binary with more is not this one.
const MAX_LIBS: usize = 64;

#[derive(Args)]
pub struct ContainerArgs {
    /// Use the vigil-decider_*.deb in DIR (e.g. what `cargo xtask package`
    /// made) instead of packaging now.
    #[arg(long, value_name = "DIR")]
    debs: Option<PathBuf>,
    /// When packaging now: the debug build (`package --dev`; never ship it).
    #[arg(long)]
    dev: bool,
    /// Image name (default vigil-decider:VERSION, VERSION from the package).
    #[arg(long)]
    tag: Option<String>,
}

pub fn run(args: &ContainerArgs) -> Result<()> {
    let deb = match &args.debs {
        Some(dir) => newest(dir, "vigil-decider")?,
        None => package::make(args.dev, false, None)?
            .into_iter()
            .find(|d| is_named(d, "vigil-decider"))
            .context("`cargo xtask package` made no vigil-decider .deb")?,
    };
    let image = build(&deb, args.tag.as_deref())?;
    println!("image: {image}");
    Ok(())
}

fn is_named(path: &Path, name: &str) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with(&format!("{name}_")) && n.ends_with(".deb"))
}

fn newest(dir: &Path, name: &str) -> Result<PathBuf> {
    let mut found: Vec<(std::time::SystemTime, PathBuf)> = Vec::new();
    for e in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let path = e
            .with_context(|| format!("listing {}", dir.display()))?
            .path();
        if is_named(&path, name) {
            let t = std::fs::metadata(&path)
                .and_then(|m| m.modified())
                .with_context(|| format!("reading {}", path.display()))?;
            found.push((t, path));
        }
    }
    found.into_iter().max().map(|(_, p)| p).with_context(|| {
        format!(
            "no {name}_*.deb in {} (`cargo xtask package` makes it)",
            dir.display()
        )
    })
}

/// Builds the image from `deb`; returns its name.
pub fn build(deb: &Path, tag: Option<&str>) -> Result<String> {
    let version = deb_field(deb, "Version")?;
    let tag = tag
        .map(str::to_string)
        .unwrap_or_else(|| format!("vigil-decider:{version}"));
    let work = crate::root().join("target/container");
    let _ = std::fs::remove_dir_all(&work);
    let pkg = work.join("pkg");
    let ctx = work.join("context");
    let rootfs = ctx.join("rootfs");
    for d in [&pkg, &rootfs, &ctx.join("state")] {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    cmd::run(Command::new("dpkg-deb").arg("-x").arg(deb).arg(&pkg))?;
    let exe = pkg.join("usr/bin/vigil-decider");
    if !exe.exists() {
        bail!("{} holds no usr/bin/vigil-decider", deb.display());
    }
    copy(&exe, &rootfs.join("usr/bin/vigil-decider"))?;
    let libs = ldd(&exe)?;
    for lib in &libs {
        // At the path the loader looks for it (ldd's), the file's content
        // (ldd may name a symlink).
        let inside = rootfs.join(lib.strip_prefix("/").unwrap_or(lib));
        copy(
            &std::fs::canonicalize(lib).with_context(|| format!("resolving {}", lib.display()))?,
            &inside,
        )?;
    }
    let etc = rootfs.join("etc");
    std::fs::create_dir_all(etc.join("vigil")).context("creating etc/vigil")?;
    write(
        &etc.join("passwd"),
        &format!("vigil:x:{UID}:{UID}:Vigil decider:/var/lib/vigil:/nonexistent\n"),
    )?;
    write(&etc.join("group"), &format!("vigil:x:{UID}:\n"))?;
    copy(
        Path::new(CA_BUNDLE),
        &rootfs.join(CA_BUNDLE.trim_start_matches('/')),
    )
    .context("the CA bundle (Debian's ca-certificates) for https to Keystone and Nova")?;
    // Temporary files of fence commands and the like.
    let tmp = rootfs.join("tmp");
    std::fs::create_dir_all(&tmp).context("creating tmp")?;
    set_mode(&tmp, 0o1777)?;
    let file = crate::root().join("packaging/container/Containerfile");
    std::fs::copy(&file, ctx.join("Containerfile"))
        .with_context(|| format!("copying {}", file.display()))?;
    println!(
        "    image root: vigil-decider, the loader and {} libraries from ldd: {}",
        libs.len().saturating_sub(1),
        libs.iter()
            .map(|l| l.display().to_string())
            .collect::<Vec<_>>()
            .join(" ")
    );
    cmd::step(
        &format!("podman build -t {tag} (FROM scratch)"),
        Command::new("podman")
            .args(["build", "--quiet", "--tag", &tag])
            .arg(format!(
                "--label=org.opencontainers.image.version={version}"
            ))
            .arg("--label=org.opencontainers.image.title=vigil-decider")
            .arg("--file")
            .arg(ctx.join("Containerfile"))
            .arg(&ctx),
    )
    .context("podman build failed (`cargo xtask setup` installs podman)")?;
    Ok(tag)
}

fn deb_field(deb: &Path, field: &str) -> Result<String> {
    let out = Command::new("dpkg-deb")
        .args(["-f"])
        .arg(deb)
        .arg(field)
        .output()
        .with_context(|| format!("running dpkg-deb -f {}", deb.display()))?;
    let v = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if !out.status.success() || v.is_empty() {
        bail!("{} has no {field} field", deb.display());
    }
    Ok(v)
}

/// Every file `ldd` says `exe` loads, the loader included (absolute paths).
fn ldd(exe: &Path) -> Result<Vec<PathBuf>> {
    let out = Command::new("ldd")
        .arg(exe)
        .output()
        .with_context(|| format!("running ldd {}", exe.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "ldd {} failed: {text}{}",
            exe.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let libs = parse_ldd(&text)?;
    if libs.len() > MAX_LIBS {
        bail!(
            "ldd {} lists {} files (over {MAX_LIBS})",
            exe.display(),
            libs.len()
        );
    }
    Ok(libs)
}

/// `ldd` lines: `libX.so.N => /path (0x...)`, `/lib64/ld-linux-x86-64.so.2
/// (0x...)` and the kernel's `linux-vdso.so.1 (0x...)` (no file).
fn parse_ldd(text: &str) -> Result<Vec<PathBuf>> {
    let mut libs = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if line.contains("not found") {
            bail!("ldd: a library is missing: {line}");
        }
        let path = match line.split_once("=>") {
            Some((_, rest)) => rest.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        match path {
            Some(p) if p.starts_with('/') => libs.push(PathBuf::from(p)),
            _ if line.starts_with("linux-vdso") => {}
            _ => bail!("ldd: cannot read {line:?}"),
        }
    }
    Ok(libs)
}

fn copy(from: &Path, to: &Path) -> Result<()> {
    if let Some(dir) = to.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::copy(from, to)
        .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    Ok(())
}

fn write(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {mode:o} {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_output_names_every_file_and_the_loader() {
        let text = "\tlinux-vdso.so.1 (0x00007ffd)\n\
            \tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f1)\n\
            \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f2)\n\
            \t/lib64/ld-linux-x86-64.so.2 (0x00007f3)\n";
        assert_eq!(
            parse_ldd(text).expect("parses"),
            [
                PathBuf::from("/lib/x86_64-linux-gnu/libgcc_s.so.1"),
                PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2"),
            ]
        );
    }

    #[test]
    fn a_missing_library_is_an_error_not_a_smaller_image() {
        let e = parse_ldd("\tlibfoo.so.1 => not found\n").expect_err("refused");
        assert!(e.to_string().contains("libfoo"), "{e}");
    }
}
