//! Vigil's gRPC contract, generated at build time from `proto/vigil.proto`.
//!
//! - [`v1::sensor_stream_server`] / [`v1::sensor_stream_client`]: the per-node
//!   heartbeat stream (sensor → decider, acks and settings back).
//! - [`v1::operator_server`] / [`v1::operator_client`]: nodes, verdicts with
//!   their evidence, verdict changes, incidents.
//! - [`FILE_DESCRIPTOR_SET`]: for tonic-reflection, so `grpcurl` works with no
//!   `.proto` at hand.

pub mod v1 {
    #![allow(clippy::all, reason = "generated code")]
    tonic::include_proto!("vigil.v1");
}

/// Encoded `FileDescriptorSet` of `vigil.v1`, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/vigil_descriptor.bin"));

#[cfg(test)]
mod tests {
    use super::v1;
    use prost::Message;

    #[test]
    fn heartbeat_round_trips() {
        let hb = v1::Heartbeat {
            node: "compute1".into(),
            boot_id: "b".into(),
            seq: 7,
            mode: v1::ProbeMode::Ebpf as i32,
            instances: vec![v1::Instance {
                uuid: "u".into(),
                alive: true,
                cpu_ns_delta: 5,
                ..Default::default()
            }],
            ..Default::default()
        };
        let bytes = hb.encode_to_vec();
        let back = v1::Heartbeat::decode(bytes.as_slice()).expect("decode what we encoded");
        assert_eq!(back, hb);
    }

    #[test]
    fn descriptor_set_names_both_services() {
        let fds = prost_types::FileDescriptorSet::decode(super::FILE_DESCRIPTOR_SET)
            .expect("valid descriptor set");
        let services: Vec<_> = fds
            .file
            .iter()
            .filter(|f| f.package() == "vigil.v1")
            .flat_map(|f| f.service.iter().map(|s| s.name().to_string()))
            .collect();
        assert_eq!(services, ["SensorStream", "Operator"]);
    }
}
