//! The eBPF object compiled into this binary, so the deployed sensor is one file.

/// The embedded eBPF object, or `None` when this binary was built without it
/// (`cargo xtask build-ebpf` had not run). Callers must then say so and fall
/// back to procfs mode.
#[cfg(vigil_ebpf)]
pub fn ebpf_object() -> Option<&'static [u8]> {
    Some(aya::include_bytes_aligned!(concat!(
        env!("OUT_DIR"),
        "/vigil-sensor-ebpf.o"
    )))
}

#[cfg(not(vigil_ebpf))]
pub fn ebpf_object() -> Option<&'static [u8]> {
    None
}
