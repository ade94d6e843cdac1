//! A throwaway PKI for TLS tests: a CA, and server or client certificates it
//! signs, written as PEM files into a directory the test owns.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair,
};

/// A CA whose files live in `dir`.
pub struct Pki {
    dir: PathBuf,
    name: String,
    ca: CertifiedIssuer<'static, KeyPair>,
}

/// A certificate and its key, as PEM files.
#[derive(Debug, Clone)]
pub struct Issued {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Pki {
    /// A new CA called `name`; its certificate is `dir/NAME-ca.pem`.
    pub fn new(dir: &Path, name: &str) -> Pki {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, format!("{name} test CA"));
        let key = KeyPair::generate().expect("CA key");
        let ca = CertifiedIssuer::self_signed(params, key).expect("self-signed CA");
        let pki = Pki {
            dir: dir.to_path_buf(),
            name: name.to_string(),
            ca,
        };
        std::fs::write(pki.ca_file(), pki.ca.pem()).expect("write CA certificate");
        pki
    }

    pub fn ca_file(&self) -> PathBuf {
        self.dir.join(format!("{}-ca.pem", self.name))
    }

    /// A server certificate for `names` (DNS names or IP addresses).
    pub fn server(&self, file: &str, names: &[&str]) -> Issued {
        self.issue(file, names, None, ExtendedKeyUsagePurpose::ServerAuth)
    }

    /// A client certificate with DNS names `sans` and, optionally, a CN.
    pub fn client(&self, file: &str, sans: &[&str], cn: Option<&str>) -> Issued {
        self.issue(file, sans, cn, ExtendedKeyUsagePurpose::ClientAuth)
    }

    fn issue(
        &self,
        file: &str,
        names: &[&str],
        cn: Option<&str>,
        usage: ExtendedKeyUsagePurpose,
    ) -> Issued {
        let mut params =
            CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .expect("certificate params");
        params.distinguished_name = rcgen::DistinguishedName::new();
        if let Some(cn) = cn {
            params.distinguished_name.push(DnType::CommonName, cn);
        }
        params.extended_key_usages = vec![usage];
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.ca).expect("sign");
        let issued = Issued {
            cert: self.dir.join(format!("{file}.pem")),
            key: self.dir.join(format!("{file}.key")),
        };
        std::fs::write(&issued.cert, cert.pem()).expect("write certificate");
        std::fs::write(&issued.key, key.serialize_pem()).expect("write key");
        issued
    }
}
