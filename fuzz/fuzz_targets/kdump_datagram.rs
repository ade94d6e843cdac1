//! A UDP datagram on the kdump port, read the way the listener reads it:
//! anyone on the management network can send one. Nothing may panic, and
//! only fence_kdump's exact 8-byte message may be accepted.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vigil_decider::kdump::{parse, ByteOrder, DATAGRAM_LEN, MAGIC, VERSION_1};

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = parse(data) {
        // Accepted means: the struct fence_kdump_send writes, byte for byte.
        let (magic, version) = match m.byte_order {
            ByteOrder::Little => (MAGIC.to_le_bytes(), VERSION_1.to_le_bytes()),
            ByteOrder::Big => (MAGIC.to_be_bytes(), VERSION_1.to_be_bytes()),
        };
        assert_eq!(data.len(), DATAGRAM_LEN);
        assert_eq!(&data[..4], &magic);
        assert_eq!(&data[4..], &version);
    }
});
