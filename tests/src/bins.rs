//! Locating the workspace binaries under test.

use std::path::{Path, PathBuf};

/// The workspace root (parent of this crate's directory).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Path of a workspace binary: the packaged file when `VIGIL_PACKAGED` names
/// the packages (see [`crate::packaged`]), else the one `cargo build` made
/// in the same profile as the tests (`cargo xtask test` builds them first).
/// Panics with the command to run when it is missing, because every caller
/// is a test.
pub fn bin(name: &str) -> PathBuf {
    if let Some(p) = crate::packaged::package(name) {
        return p.bin(name);
    }
    let path = target_bin(name);
    if matches!(name, "vigil-decider" | "vigil-sensor") {
        static SAID: std::sync::Once = std::sync::Once::new();
        SAID.call_once(|| {
            eprintln!(
                "vigil binaries: the build tree ({}; VIGIL_PACKAGED unset)",
                path.parent()
                    .map(Path::display)
                    .map(|d| d.to_string())
                    .unwrap_or_default()
            );
        });
    }
    assert!(
        path.exists(),
        "{} not found; build it first: `cargo build --bin {name}` (cargo xtask test does this)",
        path.display()
    );
    path
}

/// Where `cargo build` puts a workspace binary in the tests' profile,
/// whether or not it is there.
pub fn target_bin(name: &str) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"));
    let profile = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    target.join(profile).join(name)
}
