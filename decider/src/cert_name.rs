//! Whether a client certificate names a node: one of its DNS names (subject
//! alternative names) or its subject CN equals the node name. Used when
//! `server.tls.cert_names_node` binds sensor certificates to their nodes.
//! The chain itself was already verified against `client_ca` by rustls.

use rustls_pki_types::{CertificateDer, ServerName};

/// True when `cert` (DER) names `node` in its SAN DNS names or its CN.
pub fn names_node(cert: &[u8], node: &str) -> bool {
    let der = CertificateDer::from(cert);
    let Ok(ee) = webpki::EndEntityCert::try_from(&der) else {
        return false;
    };
    if let Ok(name) = ServerName::try_from(node) {
        if matches!(name, ServerName::DnsName(_))
            && ee.verify_is_valid_for_subject_name(&name).is_ok()
        {
            return true;
        }
    }
    common_names(ee.subject()).contains(&node.as_bytes())
}

/// What a certificate names, for error messages: its SAN DNS names and CNs.
pub fn names(cert: &[u8]) -> Vec<String> {
    let der = CertificateDer::from(cert);
    let Ok(ee) = webpki::EndEntityCert::try_from(&der) else {
        return vec!["(unparseable certificate)".to_string()];
    };
    let mut out: Vec<String> = ee.valid_dns_names().map(str::to_string).collect();
    out.extend(
        common_names(ee.subject())
            .into_iter()
            .map(|cn| format!("CN={}", String::from_utf8_lossy(cn))),
    );
    out.truncate(8);
    out
}

/// OID 2.5.4.3 (commonName), DER-encoded with its tag and length.
const CN_OID: &[u8] = &[0x06, 0x03, 0x55, 0x04, 0x03];

/// The CN values of an X.501 Name's contents (RDNSequence without its outer
/// tag): each RDN is a SET of SEQUENCE { OID, value }.
fn common_names(subject: &[u8]) -> Vec<&[u8]> {
    let mut rdns = Vec::new();
    let mut rest = subject;
    while let Some((0x31, set, after)) = tlv(rest) {
        rest = after;
        let mut inner = set;
        while let Some((0x30, atv, after)) = tlv(inner) {
            inner = after;
            if let Some(value) = atv.strip_prefix(CN_OID) {
                // UTF8String, PrintableString or IA5String.
                if let Some((0x0c | 0x13 | 0x16, text, _)) = tlv(value) {
                    rdns.push(text);
                }
            }
        }
    }
    rdns
}

/// One DER tag-length-value: (tag, contents, the rest). Lengths up to 2
/// bytes (64 KiB), more than any name holds; anything else is `None`.
fn tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = match first {
        0..=0x7f => (usize::from(first), rest),
        0x81 => {
            let (&b, rest) = rest.split_first()?;
            (usize::from(b), rest)
        }
        0x82 => {
            let (b, rest) = rest.split_at_checked(2)?;
            (usize::from(u16::from_be_bytes([b[0], b[1]])), rest)
        }
        _ => return None,
    };
    let (contents, rest) = rest.split_at_checked(len)?;
    Some((tag, contents, rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(sans: &[&str], cn: Option<&str>) -> Vec<u8> {
        let mut params =
            rcgen::CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .expect("params");
        params.distinguished_name = rcgen::DistinguishedName::new();
        if let Some(cn) = cn {
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, cn);
        }
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "vigil");
        let key = rcgen::KeyPair::generate().expect("key");
        params.self_signed(&key).expect("sign").der().to_vec()
    }

    #[test]
    fn san_or_cn_names_the_node() {
        assert!(names_node(&cert(&["compute1"], None), "compute1"));
        assert!(names_node(&cert(&["other", "compute1"], None), "compute1"));
        assert!(names_node(&cert(&[], Some("compute1")), "compute1"));
        assert!(!names_node(
            &cert(&["compute2"], Some("compute2")),
            "compute1"
        ));
        assert!(!names_node(
            &cert(&["compute1x"], Some("xcompute1")),
            "compute1"
        ));
        assert!(!names_node(&cert(&["compute1"], None), "compute"));
        assert!(!names_node(b"not a certificate", "compute1"));
        let n = names(&cert(&["compute2"], Some("c2")));
        assert_eq!(n, ["compute2", "CN=c2"]);
    }

    #[test]
    fn truncated_der_is_refused_not_read_past() {
        assert_eq!(tlv(&[0x30, 0x05, 1, 2]), None);
        assert_eq!(tlv(&[0x30, 0x82, 0x00]), None);
        assert_eq!(tlv(&[0x30, 0x84, 0, 0, 0, 1, 0]), None);
        assert_eq!(
            tlv(&[0x30, 0x01, 7, 9]),
            Some((0x30, &[7u8][..], &[9u8][..]))
        );
        assert_eq!(common_names(&[0x31, 0x10, 0x30]).len(), 0);
    }
}
