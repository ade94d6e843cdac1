//! `vigil-loadgen`: the decider benchmark's load generator (see
//! `vigil_decider::loadgen`).

fn main() {
    std::process::exit(vigil_decider::loadgen::main());
}
