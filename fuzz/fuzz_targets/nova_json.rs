//! JSON the Nova and Keystone APIs send back, through the client's own
//! decoders (`vigil_nova::decode`: servers, hypervisors, Keystone tokens)
//! and the public types, and the times inside read the way the decider
//! reads them.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vigil_nova::types::parse_nova_time;
use vigil_nova::{Aggregate, ComputeService, InstanceAction, Migration, ServerFault};

fuzz_target!(|data: &[u8]| {
    if let Ok(services) = serde_json::from_slice::<Vec<ComputeService>>(data) {
        for s in &services {
            let _ = s.updated_at_time();
        }
    }
    let _ = serde_json::from_slice::<Vec<Migration>>(data);
    let _ = serde_json::from_slice::<Vec<InstanceAction>>(data);
    let _ = serde_json::from_slice::<Vec<Aggregate>>(data);
    let _ = serde_json::from_slice::<ServerFault>(data);
    let _ = vigil_nova::decode::server(data);
    let _ = vigil_nova::decode::hypervisor(data);
    let _ = vigil_nova::decode::keystone_token(data);
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = parse_nova_time(text);
    }
});
