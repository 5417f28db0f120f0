//! Throwaway certificate authorities for the TLS tests.

use std::path::PathBuf;

/// A throwaway certificate authority for TLS tests: a CA certificate and the certificates it
/// signs, as PEM files in a temporary directory (removed on drop).
pub struct TestPki {
    dir: tempfile::TempDir,
    issuer: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
}

impl std::fmt::Debug for TestPki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestPki")
            .field("dir", &self.dir.path())
            .finish()
    }
}

impl TestPki {
    /// A new CA named `name` (its certificate is [`TestPki::ca`]).
    pub fn new(name: &str) -> Self {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let key = rcgen::KeyPair::generate().expect("CA key");
        let issuer = rcgen::CertifiedIssuer::self_signed(params, key).expect("CA certificate");
        let dir = tempfile::Builder::new()
            .prefix("logferry-pki-")
            .tempdir()
            .expect("temp dir");
        std::fs::write(dir.path().join("ca.crt"), issuer.pem()).expect("writing ca.crt");
        Self { dir, issuer }
    }

    /// The CA certificate (PEM).
    pub fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.crt")
    }

    /// Issues a certificate for `names` (DNS names or IP addresses), written as
    /// `<stem>.crt` and `<stem>.key`; returns their paths.
    pub fn issue(&self, stem: &str, names: &[&str]) -> (PathBuf, PathBuf) {
        let key = rcgen::KeyPair::generate().expect("key");
        let params =
            rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .expect("certificate params");
        let issuer: &rcgen::Issuer<'_, rcgen::KeyPair> = &self.issuer;
        let cert = params.signed_by(&key, issuer).expect("signing");
        let cert_path = self.dir.path().join(format!("{stem}.crt"));
        let key_path = self.dir.path().join(format!("{stem}.key"));
        std::fs::write(&cert_path, cert.pem()).expect("writing certificate");
        std::fs::write(&key_path, key.serialize_pem()).expect("writing key");
        (cert_path, key_path)
    }
}
