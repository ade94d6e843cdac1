//! `vigil-sensor`: Vigil's compute-node sensor.
//!
//! It loads the eBPF programs (`vigil-sensor-ebpf`, embedded at build time),
//! watches qemu and nova-compute, and streams one heartbeat per interval to
//! the decider(s). The parts, each with one job:
//!
//! - [`cli`]: the command line; [`run`]: the `run` command's wiring;
//!   [`probe`]: the `probe` command; [`bench`]: the overhead benchmark.
//! - [`signals`]: the trait both probe modes implement, and choosing one;
//!   [`loader`]: the eBPF mode (load, attach, read maps);
//!   [`fallback`]: the `/proc` mode.
//! - [`btf`], [`tracefs`], [`offsets`]: the kernel facts injected into the
//!   eBPF object at load time.
//! - [`dstate`]: judging "blocked" over a window; [`block`]: devices and
//!   their in-flight requests; [`instances`]: qemu and its instance UUID;
//!   [`nova_compute`]: finding nova-compute; [`psi`]: pressure;
//!   [`cgroup`]: the scope; [`procfs`]: safe `/proc` reads.
//! - [`discovery`]: the thread that finds processes (the only one that
//!   reads command lines); [`sampler`]: one [`sample::Sample`] per interval.
//! - [`stream`]: the gRPC stream per decider with buffer, acks, reconnects;
//!   [`backoff`]: the reconnect delays; [`memlock`]: staying resident.
//! - [`system_uuid`]: the host's SMBIOS UUID, for the decider's BMC
//!   identity check.
//! - [`embedded`]: the eBPF object compiled into the binary.

pub mod backoff;
pub mod bench;
pub mod block;
pub mod btf;
pub mod cgroup;
pub mod cli;
pub mod clock;
pub mod device_scope;
pub mod discovery;
pub mod docs;
pub mod dstate;
pub mod embedded;
pub mod fallback;
pub mod instances;
pub mod loader;
pub mod logging;
pub mod memlock;
pub mod nova_compute;
pub mod offsets;
pub mod probe;
pub mod procfs;
pub mod psi;
pub mod run;
pub mod sample;
pub mod sampler;
pub mod signals;
pub mod stream;
pub mod system_uuid;
pub mod tracefs;

/// The hostname, or "unknown" (for `probe`, which needs no node name).
pub fn run_hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most buf.len() bytes into our buffer.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc == 0 {
        procfs::comm_str(&buf)
    } else {
        "unknown".into()
    }
}
