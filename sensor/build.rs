//! Embeds the eBPF object built by `cargo xtask build-ebpf`, when it exists.
//!
//! The object is built separately (nightly + bpf-linker) so that `cargo build`
//! on the stable toolchain always works. When the object is missing, the
//! sensor still builds, says so loudly at start and runs its /proc fallback;
//! it never pretends to have eBPF.

use std::{env, fs, path::PathBuf};

fn main() {
    build_version();
    println!("cargo::rustc-check-cfg=cfg(vigil_ebpf)");
    println!("cargo:rerun-if-env-changed=VIGIL_EBPF_OBJECT");
    let manifest =
        PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let object = env::var_os("VIGIL_EBPF_OBJECT")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            manifest.join("../sensor-ebpf/target/bpfel-unknown-none/release/vigil-sensor-ebpf")
        });
    println!("cargo:rerun-if-changed={}", object.display());
    let out =
        PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("vigil-sensor-ebpf.o");
    match fs::read(&object) {
        Ok(bytes) => {
            fs::write(&out, bytes).expect("write the eBPF object into OUT_DIR");
            println!("cargo:rustc-cfg=vigil_ebpf");
        }
        Err(_) => {
            println!(
                "cargo:warning=eBPF object {} not found: this vigil-sensor will run in procfs fallback mode. Run `cargo xtask build-ebpf` first.",
                object.display()
            );
        }
    }
}

/// `git describe --always --dirty` of the checkout being built, for
/// `--version` and `vigil_build_info`; the crate version outside a git
/// checkout (a source tarball, `cargo package`). Rebuilt when HEAD moves or
/// the index changes (a commit, an add): an edit not yet added shows as
/// `-dirty` only after the next add or commit.
fn build_version() {
    use std::process::Command;
    let git = |args: &[&str]| -> Option<String> {
        let o = Command::new("git").args(args).output().ok()?;
        let s = String::from_utf8(o.stdout).ok()?.trim().to_string();
        (o.status.success() && !s.is_empty()).then_some(s)
    };
    let pkg = std::env::var("CARGO_PKG_VERSION").unwrap_or_default();
    let version = match git(&["describe", "--always", "--dirty"]) {
        Some(d) => {
            if let Some(dir) = git(&["rev-parse", "--git-dir"]) {
                println!("cargo:rerun-if-changed={dir}/HEAD");
                println!("cargo:rerun-if-changed={dir}/index");
            }
            if let (Some(common), Some(head)) = (
                git(&["rev-parse", "--git-common-dir"]),
                git(&["symbolic-ref", "-q", "HEAD"]),
            ) {
                println!("cargo:rerun-if-changed={common}/{head}");
            }
            format!("{pkg} ({d})")
        }
        None => pkg,
    };
    println!("cargo:rustc-env=VIGIL_BUILD_VERSION={version}");
}
