//! `vigil-decider`: see `vigil_decider::cli`.

fn main() {
    std::process::exit(vigil_decider::cli::main());
}
