//! The kdump witness's ears: fence_kdump datagrams (UDP, port 7410), parsed,
//! attributed to a node by their source address and handed on as
//! [`KdumpHeard`]. Judging what a crash kernel's message means is the
//! engine's job, not this module's.
//!
//! The wire format is ClusterLabs fence-agents' `agents/kdump/message.h`:
//! a packed `struct { uint32_t magic; uint32_t version; }`, magic
//! `0x1B302A40`, version 1, filled in and sent in the *sender's* byte order
//! (no `htonl`), one datagram per message. Debian's fence-agents 4.12.1
//! `fence_kdump_send` on x86_64 sends `40 2a 30 1b 01 00 00 00`. A
//! big-endian crash kernel (s390x) sends the same struct byte-swapped, so
//! both orders are read; the magic tells them apart.

use thiserror::Error;

/// fence_kdump's port (`fence_kdump_send -p`, `fence_kdump -p`).
pub const DEFAULT_PORT: u16 = 7410;
/// `FENCE_KDUMP_MAGIC` in fence-agents' `message.h`.
pub const MAGIC: u32 = 0x1B30_2A40;
/// `FENCE_KDUMP_MSGV1`: the only version fence-agents defines.
pub const VERSION_1: u32 = 1;
/// The packed struct's size: every fence_kdump message is exactly this long.
pub const DATAGRAM_LEN: usize = 8;

/// The byte order a message was written in (the crash kernel's own).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ByteOrder {
    Little,
    Big,
}

impl std::fmt::Display for ByteOrder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ByteOrder::Little => "little-endian",
            ByteOrder::Big => "big-endian",
        })
    }
}

/// A valid fence_kdump message: "this node runs its crash kernel".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KdumpMessage {
    pub version: u32,
    pub byte_order: ByteOrder,
}

/// Why a datagram is not a fence_kdump message.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum KdumpParseError {
    /// Not the 8 bytes of fence_kdump's struct.
    #[error("a fence_kdump datagram is {DATAGRAM_LEN} bytes, this one is {len}: not fence_kdump_send's message (check what else sends to this port)")]
    Length { len: usize },
    /// The first four bytes are not fence_kdump's magic in either byte order.
    #[error("magic {found:#010x} is not fence_kdump's {MAGIC:#010x} in either byte order: not fence_kdump_send's message (check what else sends to this port)")]
    Magic { found: u32 },
    /// fence_kdump's magic with a version it never defined.
    #[error("fence_kdump message version {version} ({byte_order}) is not the only one defined ({VERSION_1}): a newer fence_kdump_send? Vigil reads version {VERSION_1} only")]
    Version { version: u32, byte_order: ByteOrder },
}

/// Reads one datagram: exactly [`DATAGRAM_LEN`] bytes, the magic in either
/// byte order, then version 1 in the same order. Never panics.
pub fn parse(datagram: &[u8]) -> Result<KdumpMessage, KdumpParseError> {
    let bytes: [u8; DATAGRAM_LEN] = datagram.try_into().map_err(|_| KdumpParseError::Length {
        len: datagram.len(),
    })?;
    let [m0, m1, m2, m3, v0, v1, v2, v3] = bytes;
    let (magic, version) = ([m0, m1, m2, m3], [v0, v1, v2, v3]);
    let (byte_order, version) = if u32::from_le_bytes(magic) == MAGIC {
        (ByteOrder::Little, u32::from_le_bytes(version))
    } else if u32::from_be_bytes(magic) == MAGIC {
        (ByteOrder::Big, u32::from_be_bytes(version))
    } else {
        return Err(KdumpParseError::Magic {
            found: u32::from_le_bytes(magic),
        });
    };
    if version != VERSION_1 {
        return Err(KdumpParseError::Version {
            version,
            byte_order,
        });
    }
    Ok(KdumpMessage {
        version,
        byte_order,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What Debian's fence-agents 4.12.1 `fence_kdump_send` (x86_64) sent to
    /// a UDP socket on 127.0.0.1, captured byte for byte.
    const DEBIAN_X86_64: [u8; 8] = [0x40, 0x2a, 0x30, 0x1b, 0x01, 0x00, 0x00, 0x00];

    fn check(datagram: &[u8], expected: Result<KdumpMessage, KdumpParseError>) {
        assert_eq!(parse(datagram), expected, "datagram {datagram:02x?}");
    }

    #[test]
    fn the_real_senders_bytes_are_a_version_1_message() {
        check(
            &DEBIAN_X86_64,
            Ok(KdumpMessage {
                version: 1,
                byte_order: ByteOrder::Little,
            }),
        );
    }

    #[test]
    fn a_big_endian_crash_kernels_message_is_read_too() {
        check(
            &[0x1b, 0x30, 0x2a, 0x40, 0, 0, 0, 1],
            Ok(KdumpMessage {
                version: 1,
                byte_order: ByteOrder::Big,
            }),
        );
    }

    #[test]
    fn wrong_lengths_are_refused_whatever_they_start_with() {
        check(&[], Err(KdumpParseError::Length { len: 0 }));
        check(&DEBIAN_X86_64[..7], Err(KdumpParseError::Length { len: 7 }));
        // fence_kdump itself reads 8 bytes of anything longer; Vigil does not
        // guess at what the rest would have meant.
        let mut long = DEBIAN_X86_64.to_vec();
        long.push(0);
        check(&long, Err(KdumpParseError::Length { len: 9 }));
        check(&[0; 65_535], Err(KdumpParseError::Length { len: 65_535 }));
    }

    #[test]
    fn a_wrong_magic_or_version_is_refused_and_named() {
        check(
            &[0x41, 0x2a, 0x30, 0x1b, 1, 0, 0, 0],
            Err(KdumpParseError::Magic { found: 0x1b30_2a41 }),
        );
        check(&[0; 8], Err(KdumpParseError::Magic { found: 0 }));
        check(
            &[0x40, 0x2a, 0x30, 0x1b, 2, 0, 0, 0],
            Err(KdumpParseError::Version {
                version: 2,
                byte_order: ByteOrder::Little,
            }),
        );
        // Version 1 in the other byte order than the magic: a corrupted or
        // forged message, not fence_kdump_send's.
        check(
            &[0x40, 0x2a, 0x30, 0x1b, 0, 0, 0, 1],
            Err(KdumpParseError::Version {
                version: 0x0100_0000,
                byte_order: ByteOrder::Little,
            }),
        );
        let e = parse(&[0x40, 0x2a, 0x30, 0x1b, 2, 0, 0, 0])
            .expect_err("version 2")
            .to_string();
        assert!(
            e.contains("version 2") && e.contains("little-endian"),
            "{e}"
        );
    }
}
