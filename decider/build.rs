//! Stamps the build's version (see `build_version`).

fn main() {
    build_version();
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
