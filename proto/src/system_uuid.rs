//! The one form a host's SMBIOS system UUID takes on the wire
//! (`Heartbeat.system_uuid`): lowercase, hyphenated 8-4-4-4-12 hex. The
//! sensor normalizes to it and the decider refuses anything else, so the
//! comparison with the BMC's UUID is a plain string comparison.

/// Length of the canonical form.
pub const LEN: usize = 36;

/// Where the hyphens sit in the canonical form.
const HYPHENS: [usize; 4] = [8, 13, 18, 23];

/// `text` (surrounding whitespace ignored, any hex case) as a canonical
/// system UUID, or `None` when it is not one or is a firmware placeholder
/// (all zeros, all Fs), which says nothing about which machine this is.
pub fn normalize(text: &str) -> Option<String> {
    let text = text.trim();
    if text.len() != LEN {
        return None;
    }
    let mut out = String::with_capacity(LEN);
    for (i, c) in text.chars().enumerate() {
        if HYPHENS.contains(&i) {
            if c != '-' {
                return None;
            }
            out.push('-');
        } else if c.is_ascii_hexdigit() {
            out.push(c.to_ascii_lowercase());
        } else {
            return None;
        }
    }
    if is_placeholder(&out) {
        return None;
    }
    Some(out)
}

/// Whether `text` is a UUID made only of zeros or only of Fs (any case,
/// surrounding whitespace ignored): what firmware reports when nobody set
/// the machine's UUID. It is no error, and says nothing about the machine.
pub fn is_placeholder(text: &str) -> bool {
    let text = text.trim();
    if text.len() != LEN {
        return false;
    }
    let hyphens_in_place = text
        .char_indices()
        .all(|(i, c)| (c == '-') == HYPHENS.contains(&i));
    let digits = || text.chars().filter(|c| *c != '-');
    hyphens_in_place
        && (digits().all(|c| c == '0') || digits().all(|c| c.eq_ignore_ascii_case(&'f')))
}

/// Whether `text` is already exactly the canonical form (no whitespace,
/// lowercase, not a placeholder): what the decider accepts on the wire.
pub fn is_canonical(text: &str) -> bool {
    normalize(text).is_some_and(|n| n == text)
}

/// The 16 bytes of a UUID in the canonical form (or any case), in the
/// order it is written; `None` when `text` is not 8-4-4-4-12 hex.
pub fn bytes(text: &str) -> Option<[u8; 16]> {
    let text = text.trim();
    if text.len() != LEN
        || !text.char_indices().all(|(i, c)| {
            if HYPHENS.contains(&i) {
                c == '-'
            } else {
                c.is_ascii_hexdigit()
            }
        })
    {
        return None;
    }
    let hex: Vec<u8> = text.bytes().filter(|c| *c != b'-').collect();
    let mut out = [0u8; 16];
    for (o, pair) in out.iter_mut().zip(hex.chunks(2)) {
        *o = u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok()?;
    }
    Some(out)
}

/// `bytes` written in the canonical form (placeholders included).
pub fn from_bytes(b: [u8; 16]) -> String {
    let mut out = String::with_capacity(LEN);
    for (i, byte) in b.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            out.push('-');
        }
        out.push_str(&format!("{byte:02x}"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_case_and_whitespace() {
        assert_eq!(
            normalize(" 4C4C4544-0042-3510-8052-B4C04F4B4E32\n").as_deref(),
            Some("4c4c4544-0042-3510-8052-b4c04f4b4e32")
        );
    }

    #[test]
    fn refuses_what_is_not_a_uuid() {
        for bad in [
            "",
            "not a uuid",
            "4c4c4544004235108052b4c04f4b4e32",
            "{4c4c4544-0042-3510-8052-b4c04f4b4e32}",
            "4c4c4544-0042-3510-8052-b4c04f4b4e3",
            "4c4c4544-0042-3510-8052-b4c04f4b4e322",
            "4c4c4544_0042-3510-8052-b4c04f4b4e32",
            "4c4c4544-0042-3510-8052-b4c04f4b4e3g",
            "4c4c4544-0042-3510-8052-b4c04f4b4eé",
        ] {
            assert_eq!(normalize(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn firmware_placeholders_are_unknown() {
        assert_eq!(normalize("00000000-0000-0000-0000-000000000000"), None);
        assert_eq!(normalize("FFFFFFFF-FFFF-FFFF-FFFF-FFFFFFFFFFFF"), None);
        assert_eq!(normalize("ffffffff-ffff-ffff-ffff-ffffffffffff"), None);
        assert!(is_placeholder(" FFFFFFFF-FFFF-FFFF-FFFF-FFFFFFFFFFFF\n"));
        assert!(is_placeholder("00000000-0000-0000-0000-000000000000"));
        assert!(!is_placeholder("00000000000000000000000000000000"));
        assert!(!is_placeholder("4c4c4544-0042-3510-8052-b4c04f4b4e32"));
        assert!(!is_placeholder("0000000-00000-0000-0000-000000000000"));
        assert!(!is_placeholder("not a uuid"));
    }

    #[test]
    fn bytes_round_trip_in_written_order() {
        let u = "4c4c4544-0042-3510-8052-b4c04f4b4e32";
        let b = bytes(u).expect("a uuid");
        assert_eq!(b[0], 0x4c);
        assert_eq!(b[15], 0x32);
        assert_eq!(from_bytes(b), u);
        assert_eq!(bytes(&u.to_uppercase()), Some(b));
        assert_eq!(bytes("4c4c4544004235108052b4c04f4b4e32"), None);
        assert_eq!(bytes("4c4c4544-0042-3510-8052-b4c04f4b4e3g"), None);
        assert_eq!(bytes("4c4c4544-0042-3510-8052-b4c04f4b4eé"), None);
        assert_eq!(bytes("4c4c4544-0042-3510-8052-b4c04f4b4e+3"), None);
    }

    #[test]
    fn canonical_means_exactly_the_normalized_form() {
        assert!(is_canonical("4c4c4544-0042-3510-8052-b4c04f4b4e32"));
        assert!(!is_canonical("4C4C4544-0042-3510-8052-B4C04F4B4E32"));
        assert!(!is_canonical(" 4c4c4544-0042-3510-8052-b4c04f4b4e32"));
        assert!(!is_canonical("00000000-0000-0000-0000-000000000000"));
        assert!(!is_canonical(""));
    }
}
