//! The client's decoders of Nova's and Keystone's answers, by themselves:
//! what the fuzz targets (fuzz/fuzz_targets/nova_json.rs) feed hostile bytes
//! to. Each returns whether the bytes decoded; none may panic.

use std::time::Instant;

use crate::keystone::Token;
use crate::types::{RawHypervisor, RawServer};
use crate::{Hypervisor, Secret, Server};

/// A Keystone `POST /v3/auth/tokens` answer body.
pub fn keystone_token(body: &[u8]) -> bool {
    Token::parse(Secret::new("fuzz"), body, Instant::now()).is_ok()
}

/// One `server` object of `GET /servers/{id}` or `/servers/detail`.
pub fn server(body: &[u8]) -> bool {
    serde_json::from_slice::<RawServer>(body)
        .map(Server::from)
        .is_ok()
}

/// One `hypervisor` object of `GET /os-hypervisors/detail`.
pub fn hypervisor(body: &[u8]) -> bool {
    serde_json::from_slice::<RawHypervisor>(body)
        .map(Hypervisor::from)
        .is_ok()
}

#[cfg(test)]
mod tests {
    /// The fuzz target's seeds decode: fuzzing starts from real shapes.
    #[test]
    fn the_fuzz_seeds_decode() {
        let seeds =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/seeds/nova_json");
        let read = |f: &str| std::fs::read(seeds.join(f)).expect("seed file");
        assert!(super::server(&read("server.json")));
        assert!(super::hypervisor(&read("hypervisor.json")));
        assert!(super::keystone_token(&read("token.json")));
        assert!(!super::keystone_token(b"{\"token\":{}}"));
    }
}
