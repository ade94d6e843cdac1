//! A small reader for the kernel's BTF (`/sys/kernel/btf/vmlinux`), enough
//! to find the byte offset of a struct member.
//!
//! Why our own: Rust eBPF has no CO-RE relocations, so the sensor injects
//! offsets at load time, and aya-obj keeps its BTF member offsets private.
//! The format is the kernel's `Documentation/bpf/btf.rst` (stable ABI): a
//! header, a type section of variable-length records, a string section.

use std::collections::HashMap;

/// Why a BTF blob could not be used.
#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    /// The blob is shorter than its header or its sections say.
    #[error("BTF data truncated at byte {at}")]
    Truncated { at: usize },
    /// The magic number is not 0xeB9F (or the blob is big-endian).
    #[error("not little-endian BTF (magic {magic:#06x})")]
    BadMagic { magic: u16 },
    /// A type record has a kind this reader does not know how to skip.
    #[error("unknown BTF kind {kind} at type id {id}")]
    UnknownKind { kind: u32, id: u32 },
    /// No struct of that name with members.
    #[error("struct {name} not found in BTF")]
    NoStruct { name: String },
    /// The struct has no such member (also not inside anonymous members).
    #[error("member {member} not found in struct {name}")]
    NoMember { name: String, member: String },
    /// The member is a bitfield or not byte-aligned: no byte offset exists.
    #[error("member {member} of struct {name} is not byte-aligned")]
    Unaligned { name: String, member: String },
    /// Reading the BTF file failed.
    #[error("cannot read {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_TYPE_TAG: u32 = 18;

#[derive(Debug, Clone)]
struct Member {
    name_off: u32,
    type_id: u32,
    /// Bit offset from the start of the enclosing struct.
    bit_offset: u32,
    /// Bitfield size (0 when not a bitfield).
    bitfield_size: u32,
}

#[derive(Debug, Clone)]
struct Type {
    kind: u32,
    name_off: u32,
    /// `type` for modifiers/typedefs, `size` for structs (unused here).
    type_ref: u32,
    members: Vec<Member>,
}

/// Parsed BTF: types by id (1-based) and the string section.
pub struct Btf {
    types: Vec<Type>,
    strings: Vec<u8>,
    structs_by_name: HashMap<String, u32>,
}

fn u32_at(b: &[u8], at: usize) -> Result<u32, BtfError> {
    b.get(at..at + 4)
        .and_then(|s| s.try_into().ok())
        .map(u32::from_le_bytes)
        .ok_or(BtfError::Truncated { at })
}

impl Btf {
    /// Reads and parses the running kernel's BTF.
    pub fn from_sys_fs() -> Result<Self, BtfError> {
        let path = "/sys/kernel/btf/vmlinux";
        let data = std::fs::read(path).map_err(|source| BtfError::Read {
            path: path.into(),
            source,
        })?;
        Self::parse(&data)
    }

    /// Parses a raw BTF blob (the format of `/sys/kernel/btf/vmlinux`).
    pub fn parse(data: &[u8]) -> Result<Self, BtfError> {
        let magic = data
            .get(0..2)
            .map(|m| u16::from_le_bytes([m[0], m[1]]))
            .ok_or(BtfError::Truncated { at: 0 })?;
        if magic != 0xeb9f {
            return Err(BtfError::BadMagic { magic });
        }
        let hdr_len = u32_at(data, 4)? as usize;
        let type_off = u32_at(data, 8)? as usize;
        let type_len = u32_at(data, 12)? as usize;
        let str_off = u32_at(data, 16)? as usize;
        let str_len = u32_at(data, 20)? as usize;
        let t_start = hdr_len + type_off;
        let t_end = t_start + type_len;
        let s_start = hdr_len + str_off;
        let strings = data
            .get(s_start..s_start + str_len)
            .ok_or(BtfError::Truncated { at: s_start })?
            .to_vec();
        if data.len() < t_end {
            return Err(BtfError::Truncated { at: t_end });
        }
        // Type id 0 is `void`; keep a placeholder so ids index directly.
        let mut types = vec![Type {
            kind: 0,
            name_off: 0,
            type_ref: 0,
            members: Vec::new(),
        }];
        let mut at = t_start;
        while at < t_end {
            let name_off = u32_at(data, at)?;
            let info = u32_at(data, at + 4)?;
            let type_ref = u32_at(data, at + 8)?;
            at += 12;
            let vlen = (info & 0xffff) as usize;
            let kind = (info >> 24) & 0x1f;
            let kind_flag = info >> 31 == 1;
            let mut members = Vec::new();
            let extra = match kind {
                1 => 4,                            // INT
                2 | 7 | 8 | 9 | 10 | 11 | 12 => 0, // PTR FWD TYPEDEF VOLATILE CONST RESTRICT FUNC
                3 => 12,                           // ARRAY
                KIND_STRUCT | KIND_UNION => {
                    for i in 0..vlen {
                        let m = at + i * 12;
                        let off = u32_at(data, m + 8)?;
                        let (bit_offset, bitfield_size) = if kind_flag {
                            (off & 0xff_ffff, off >> 24)
                        } else {
                            (off, 0)
                        };
                        members.push(Member {
                            name_off: u32_at(data, m)?,
                            type_id: u32_at(data, m + 4)?,
                            bit_offset,
                            bitfield_size,
                        });
                    }
                    vlen * 12
                }
                6 => vlen * 8,   // ENUM
                13 => vlen * 8,  // FUNC_PROTO
                14 => 4,         // VAR
                15 => vlen * 12, // DATASEC
                16 => 0,         // FLOAT
                17 => 4,         // DECL_TAG
                KIND_TYPE_TAG => 0,
                19 => vlen * 12, // ENUM64
                _ => {
                    return Err(BtfError::UnknownKind {
                        kind,
                        id: types.len() as u32,
                    })
                }
            };
            at += extra;
            types.push(Type {
                kind,
                name_off,
                type_ref,
                members,
            });
        }
        let mut btf = Btf {
            types,
            strings,
            structs_by_name: HashMap::new(),
        };
        let mut by_name = HashMap::new();
        for (id, t) in btf.types.iter().enumerate() {
            // Forward declarations and empty definitions do not count; the
            // first full definition wins (vmlinux has one per name).
            if t.kind == KIND_STRUCT && !t.members.is_empty() {
                let name = btf.name(t.name_off);
                if !name.is_empty() {
                    by_name.entry(name.to_string()).or_insert(id as u32);
                }
            }
        }
        btf.structs_by_name = by_name;
        Ok(btf)
    }

    fn name(&self, off: u32) -> &str {
        let start = off as usize;
        let Some(rest) = self.strings.get(start..) else {
            return "";
        };
        let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        std::str::from_utf8(&rest[..end]).unwrap_or("")
    }

    /// Follows typedefs and qualifiers to the underlying type id.
    fn resolve(&self, mut id: u32) -> u32 {
        for _ in 0..32 {
            match self.types.get(id as usize) {
                Some(t)
                    if matches!(
                        t.kind,
                        KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG
                    ) =>
                {
                    id = t.type_ref
                }
                _ => break,
            }
        }
        id
    }

    /// Bit offset of `member` in type `id`, searching anonymous struct and
    /// union members too (the kernel nests many fields that way).
    fn find_bits(&self, id: u32, member: &str, depth: u32) -> Option<(u32, u32)> {
        let t = self.types.get(id as usize)?;
        for m in &t.members {
            if self.name(m.name_off) == member {
                return Some((m.bit_offset, m.bitfield_size));
            }
        }
        if depth > 8 {
            return None;
        }
        for m in &t.members {
            if m.name_off != 0 {
                continue;
            }
            let inner = self.resolve(m.type_id);
            if let Some(it) = self.types.get(inner as usize) {
                if it.kind == KIND_STRUCT || it.kind == KIND_UNION {
                    if let Some((bits, size)) = self.find_bits(inner, member, depth + 1) {
                        return Some((m.bit_offset + bits, size));
                    }
                }
            }
        }
        None
    }

    /// Byte offset of `member` in `struct name`.
    pub fn member_offset(&self, name: &str, member: &str) -> Result<u32, BtfError> {
        let id = *self
            .structs_by_name
            .get(name)
            .ok_or_else(|| BtfError::NoStruct { name: name.into() })?;
        let (bits, bitfield) = self
            .find_bits(id, member, 0)
            .ok_or_else(|| BtfError::NoMember {
                name: name.into(),
                member: member.into(),
            })?;
        if bitfield != 0 || bits % 8 != 0 {
            return Err(BtfError::Unaligned {
                name: name.into(),
                member: member.into(),
            });
        }
        Ok(bits / 8)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a BTF blob: `struct outer { int a; union { long pad; int
    /// pid; }; int flag:3; }` with an int type, plus a forward declaration
    /// of `outer` first (as vmlinux often has).
    fn sample_blob() -> Vec<u8> {
        let strings = b"\0int\0outer\0a\0pad\0pid\0flag\0long\0".to_vec();
        let s = |name: &str| -> u32 {
            let needle = [name.as_bytes(), b"\0"].concat();
            strings
                .windows(needle.len())
                .position(|w| w == needle.as_slice())
                .map(|p| p as u32)
                .expect("name in string table")
        };
        let mut t = Vec::new();
        let mut push = |words: &[u32]| {
            for w in words {
                t.extend_from_slice(&w.to_le_bytes());
            }
        };
        // id 1: int (INT, size 4, encoding word)
        push(&[s("int"), 1 << 24, 4, 32]);
        // id 2: long
        push(&[s("long"), 1 << 24, 8, 64]);
        // id 3: fwd struct outer
        push(&[s("outer"), 7 << 24, 0]);
        // id 4: anonymous union { long pad; int pid; } (size 8)
        push(&[0, (KIND_UNION << 24) | 2, 8]);
        push(&[s("pad"), 2, 0]);
        push(&[s("pid"), 1, 0]);
        // id 5: struct outer, kind_flag set (bitfield encoding), 3 members
        push(&[s("outer"), (1 << 31) | (KIND_STRUCT << 24) | 3, 24]);
        push(&[s("a"), 1, 0]);
        push(&[0, 4, 64]); // anonymous union at byte 8
        push(&[s("flag"), 1, (3 << 24) | 128]); // bitfield of 3 bits at byte 16
        let mut blob = Vec::new();
        blob.extend_from_slice(&0xeb9fu16.to_le_bytes());
        blob.push(1); // version
        blob.push(0); // flags
        for w in [
            24u32,
            0,
            t.len() as u32,
            t.len() as u32,
            strings.len() as u32,
        ] {
            blob.extend_from_slice(&w.to_le_bytes());
        }
        blob.extend_from_slice(&t);
        blob.extend_from_slice(&strings);
        blob
    }

    #[test]
    fn finds_direct_and_nested_members() {
        let btf = Btf::parse(&sample_blob()).expect("parse");
        assert_eq!(btf.member_offset("outer", "a").expect("a"), 0);
        assert_eq!(btf.member_offset("outer", "pid").expect("pid in union"), 8);
    }

    #[test]
    fn refuses_bitfields_and_missing_names() {
        let btf = Btf::parse(&sample_blob()).expect("parse");
        assert!(matches!(
            btf.member_offset("outer", "flag"),
            Err(BtfError::Unaligned { .. })
        ));
        assert!(matches!(
            btf.member_offset("outer", "nope"),
            Err(BtfError::NoMember { .. })
        ));
        assert!(matches!(
            btf.member_offset("inner", "a"),
            Err(BtfError::NoStruct { .. })
        ));
    }

    #[test]
    fn rejects_garbage() {
        assert!(matches!(
            Btf::parse(b"\x00\x00abc"),
            Err(BtfError::BadMagic { .. })
        ));
        assert!(matches!(
            Btf::parse(b"\x9f"),
            Err(BtfError::Truncated { .. })
        ));
    }

    /// Against the running kernel when it has BTF (the offsets notes/ebpf.md
    /// measured on 6.18 are only checked for plausibility, not equality).
    #[test]
    fn reads_this_kernels_task_struct() {
        let Ok(btf) = Btf::from_sys_fs() else {
            eprintln!("no /sys/kernel/btf/vmlinux here; skipping the live check");
            return;
        };
        let pid = btf
            .member_offset("task_struct", "pid")
            .expect("task_struct.pid");
        assert!(
            pid > 0 && pid < 16384,
            "implausible task_struct.pid offset {pid}"
        );
        btf.member_offset("request", "part").expect("request.part");
        btf.member_offset("block_device", "bd_dev")
            .expect("block_device.bd_dev");
    }
}
