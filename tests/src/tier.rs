//! Test tiers: what a test needs from the machine, checked up front.

/// True when skipping is not allowed: CI, or `cargo xtask test` running as root.
pub fn strict() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
        || std::env::var("VIGIL_REQUIRE_ROOT").is_ok_and(|v| v == "1")
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Returns true when the calling test may go on as root. Otherwise it prints
/// why the test is skipped and returns false, or panics in strict mode so a
/// missing prerequisite can never pass silently.
#[must_use]
pub fn root(test: &str, why: &str) -> bool {
    if is_root() {
        return true;
    }
    let msg = format!("{test}: needs root ({why}); run `sudo cargo xtask test`");
    if strict() {
        panic!("{msg} (strict mode: CI=true or VIGIL_REQUIRE_ROOT=1 forbids skipping)");
    }
    eprintln!("SKIPPED {msg}");
    false
}
