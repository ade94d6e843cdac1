//! Embeds the eBPF object built by `cargo xtask build-ebpf`, when it exists.
//!
//! The object is built separately (nightly + bpf-linker) so that `cargo build`
//! on the stable toolchain always works. When the object is missing, the
//! sensor still builds, says so loudly at start and runs its /proc fallback;
//! it never pretends to have eBPF.

use std::{env, fs, path::PathBuf};

fn main() {
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
