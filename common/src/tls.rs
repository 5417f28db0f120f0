//! TLS for Forward connections: server and client configurations (rustls), loaded from PEM files,
//! and a server-side acceptor whose certificate can be replaced while the process runs.
//!
//! ## Why it looks like this
//! - **One crypto provider, chosen here.** Several crates in the workspace enable both of
//!   rustls' providers, and then rustls refuses to guess a process default; every config built
//!   here names [`provider`] explicitly, so nothing depends on a global.
//! - **TLS 1.2 is the floor** ([`TlsVersion`]); 1.0 and 1.1 are not even compiled into rustls.
//! - **Rotation without restarts.** cert-manager renews certificates by rewriting the files of a
//!   Secret volume. [`load_server_config`] builds a fresh config (a server swaps it in for *new*
//!   connections only: an established connection keeps the session it negotiated), and
//!   [`fingerprint`] tells cheaply whether the files changed. A load that fails (half-written
//!   file, key not matching the certificate) is an error the caller answers by keeping the
//!   config it has, so a listener never goes without a certificate.
//! - **Errors name the file.** Every [`TlsError`] says which file (certificate, key, CA, CRL)
//!   and what is wrong with it, since that is what an operator has to fix.
//!
//! ## Revocation (mutual TLS)
//! [`ServerTlsFiles::client_crl`] lists PEM files of `X509 CRL` blocks (one or more per file),
//! checked by rustls' client verifier with its defaults, which fail closed:
//! - every certificate of a client's chain below the trust anchor is checked, so each CA that
//!   issues client (or intermediate) certificates needs its CRL in the list; a certificate
//!   whose issuer has no CRL there is refused (`UnknownRevocationStatus`), as is a revoked one;
//! - a CRL's `nextUpdate` is not enforced: an old CRL keeps revoking what it lists;
//! - a CRL only counts for certificates of the CA that signed it.
//!
//! The CRL files are part of the [`fingerprint`], so a new CRL written over the old file is
//! picked up like a rotated certificate. Each CRL is parsed on its own when loaded, so an error
//! names the file it is in.
//!
//! ## Client side
//! [`client_config`] builds what the forwarder and `logferry-loadtest` connect with: the server
//! is verified against a CA file (or the system roots), optionally presenting a client
//! certificate for mutual TLS; [`connect`] wraps a TCP stream. Combine with
//! [`crate::forward::client_session::handshake`] for the shared-key handshake, which runs inside
//! the TLS session.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig, SupportedProtocolVersion};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer, ServerName};
use sha2::{Digest, Sha256};
use tokio::net::TcpStream;

pub use rustls;
pub use tokio_rustls;

/// Why a TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A file could not be read.
    // The cause is part of the message (what `validate` prints), so it is not also exposed as
    // the error's `source` (which error-chain printers would print a second time).
    #[error("cannot read {what} {}: {error}", .path.display())]
    Read {
        /// `certificate`, `private key`, `CA`...
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// What failed.
        error: io::Error,
    },
    /// A file is not valid PEM, or holds nothing of the expected kind.
    #[error("{what} {}: {message}", .path.display())]
    Pem {
        /// `certificate`, `private key`, `CA`...
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The certificate and key were read but rustls rejected them (e.g. the key does not match
    /// the certificate, or an unsupported key type).
    #[error("certificate {} with key {}: {error}", .cert.display(), .key.display())]
    CertKey {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// What rustls said (in the message, not as `source`, as for `Read`).
        error: rustls::Error,
    },
    /// A CA file holds a certificate that cannot be a trust anchor, or none usable.
    #[error("CA {}: {message}", .path.display())]
    Ca {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A CRL file holds something that is not a usable X.509 CRL.
    #[error("CRL {}: {message}", .path.display())]
    Crl {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// CRLs were given without a client CA: they revoke client certificates, which are only
    /// asked for with mutual TLS.
    #[error("a client CRL needs a client CA (mutual TLS): set client_ca too")]
    CrlWithoutClientCa,
    /// A client certificate was given without its key or the other way round.
    #[error("a client certificate and its key go together: set both or neither")]
    ClientCertWithoutKey,
    /// The system's root certificates could not be loaded (and no CA file was given).
    #[error("no CA file given and the system root certificates could not be loaded: {0}")]
    NativeRoots(String),
    /// Not a DNS name or IP address.
    #[error("{0:?} is not a valid TLS server name (a DNS name or an IP address)")]
    ServerName(String),
    /// Any other rustls configuration error.
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The lowest TLS version a listener or client accepts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
pub enum TlsVersion {
    /// TLS 1.2 and 1.3 (the default; what Fluentd and Fluent Bit negotiate by default).
    #[default]
    #[serde(rename = "1.2")]
    V1_2,
    /// TLS 1.3 only.
    #[serde(rename = "1.3")]
    V1_3,
}

impl TlsVersion {
    fn versions(self) -> &'static [&'static SupportedProtocolVersion] {
        static BOTH: [&SupportedProtocolVersion; 2] =
            [&rustls::version::TLS13, &rustls::version::TLS12];
        static ONLY_13: [&SupportedProtocolVersion; 1] = [&rustls::version::TLS13];
        match self {
            TlsVersion::V1_2 => &BOTH,
            TlsVersion::V1_3 => &ONLY_13,
        }
    }
}

impl fmt::Display for TlsVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TlsVersion::V1_2 => "1.2",
            TlsVersion::V1_3 => "1.3",
        })
    }
}

/// The crypto provider every config here uses (aws-lc-rs, rustls' default).
pub fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    Arc::clone(PROVIDER.get_or_init(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider())))
}

/// Where a TLS listener's certificate comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerTlsFiles {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// PEM CA certificates: when set, clients must present a certificate signed by one of them
    /// (mutual TLS).
    pub client_ca: Option<PathBuf>,
    /// PEM CRLs (`X509 CRL` blocks) of the client CAs: a client certificate they list is
    /// refused. Only with `client_ca`; see the module docs for the policy.
    pub client_crl: Vec<PathBuf>,
    /// Lowest version accepted.
    pub min_version: TlsVersion,
}

/// A digest of the files a server config was built from: equal fingerprints, same config.
pub type Fingerprint = [u8; 32];

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|error| TlsError::Read {
        what,
        path: path.to_owned(),
        error,
    })
}

fn parse_certs(
    what: &'static str,
    path: &Path,
    pem: &[u8],
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            what,
            path: path.to_owned(),
            message: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            what,
            path: path.to_owned(),
            message: "no \"BEGIN CERTIFICATE\" block found".into(),
        });
    }
    Ok(certs)
}

fn parse_key(path: &Path, pem: &[u8]) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| TlsError::Pem {
        what: "private key",
        path: path.to_owned(),
        message: match e {
            rustls_pki_types::pem::Error::NoItemsFound => {
                "no private key block found (PKCS#8, PKCS#1 or SEC1 PEM expected)".into()
            }
            other => other.to_string(),
        },
    })
}

/// The CRLs of a PEM file, each checked to be a CRL webpki can use (X.509 v2, as
/// `openssl ca -gencrl` writes with a `crlnumber` file).
fn parse_crls(
    path: &Path,
    pem: &[u8],
) -> Result<Vec<CertificateRevocationListDer<'static>>, TlsError> {
    let crl_error = |message: String| TlsError::Crl {
        path: path.to_owned(),
        message,
    };
    let crls = CertificateRevocationListDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| crl_error(e.to_string()))?;
    if crls.is_empty() {
        return Err(crl_error("no \"BEGIN X509 CRL\" block found".into()));
    }
    for (i, crl) in crls.iter().enumerate() {
        webpki::OwnedCertRevocationList::from_der(crl).map_err(|e| {
            crl_error(format!(
                "block #{} is not a usable CRL (an X.509 v2 CRL with extensions, as \
                 `openssl ca -gencrl` writes with a crlnumber file): {e}",
                i + 1
            ))
        })?;
    }
    Ok(crls)
}

/// Reads and checks a PEM CRL file (as [`load_server_config`] does), returning its CRLs.
///
/// # Errors
/// [`TlsError::Read`] when the file cannot be read; [`TlsError::Crl`] when it holds no CRL or
/// one that cannot be used.
pub fn load_crls(path: &Path) -> Result<Vec<CertificateRevocationListDer<'static>>, TlsError> {
    parse_crls(path, &read("CRL", path)?)
}

fn roots(path: &Path, pem: &[u8]) -> Result<RootCertStore, TlsError> {
    let mut store = RootCertStore::empty();
    for cert in parse_certs("CA", path, pem)? {
        store.add(cert).map_err(|e| TlsError::Ca {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
    }
    Ok(store)
}

/// A server config and the fingerprint of the files it came from.
#[derive(Debug, Clone)]
pub struct LoadedServerConfig {
    /// The config, for a `tokio_rustls::TlsAcceptor`.
    pub config: Arc<ServerConfig>,
    /// See [`fingerprint`].
    pub fingerprint: Fingerprint,
}

/// The PEM bytes of a listener's files.
struct ServerPem {
    cert: Vec<u8>,
    key: Vec<u8>,
    /// The client CA, if any.
    ca: Option<Vec<u8>>,
    /// The CRL files, in the order of [`ServerTlsFiles::client_crl`].
    crls: Vec<Vec<u8>>,
}

impl ServerPem {
    fn read(files: &ServerTlsFiles) -> Result<Self, TlsError> {
        Ok(Self {
            cert: read("certificate", &files.cert)?,
            key: read("private key", &files.key)?,
            ca: match &files.client_ca {
                Some(path) => Some(read("client CA", path)?),
                None => None,
            },
            crls: files
                .client_crl
                .iter()
                .map(|path| read("CRL", path))
                .collect::<Result<_, _>>()?,
        })
    }

    fn digest(&self) -> Fingerprint {
        let mut parts = vec![
            self.cert.as_slice(),
            &self.key,
            self.ca.as_deref().unwrap_or_default(),
        ];
        parts.extend(self.crls.iter().map(Vec::as_slice));
        digest(&parts)
    }
}

/// SHA-256 over the parts, each prefixed with its length (so no two lists of parts collide by
/// moving bytes from one part to the next).
fn digest(parts: &[&[u8]]) -> Fingerprint {
    let mut hash = Sha256::new();
    for part in parts {
        hash.update((part.len() as u64).to_le_bytes());
        hash.update(part);
    }
    hash.finalize().into()
}

/// Reads the files (certificate, key, client CA, CRLs) and digests them, without building a
/// config: a cheap way to notice that cert-manager (or anyone) replaced them.
///
/// # Errors
/// A file cannot be read.
pub fn fingerprint(files: &ServerTlsFiles) -> Result<Fingerprint, TlsError> {
    Ok(ServerPem::read(files)?.digest())
}

/// Builds a server config from PEM files, with the fingerprint of what it read.
///
/// # Errors
/// A file is missing or unreadable, holds no certificate or key, the key does not match the
/// certificate, a CRL file holds no usable CRL, or CRLs are given without a client CA.
pub fn load_server_config(files: &ServerTlsFiles) -> Result<LoadedServerConfig, TlsError> {
    if files.client_ca.is_none() && !files.client_crl.is_empty() {
        return Err(TlsError::CrlWithoutClientCa);
    }
    let pem = ServerPem::read(files)?;
    let fingerprint = pem.digest();
    let certs = parse_certs("certificate", &files.cert, &pem.cert)?;
    let key = parse_key(&files.key, &pem.key)?;
    let mut crls = Vec::new();
    for (path, crl_pem) in files.client_crl.iter().zip(&pem.crls) {
        crls.extend(parse_crls(path, crl_pem)?);
    }
    let builder = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(files.min_version.versions())?;
    let builder = match (&files.client_ca, &pem.ca) {
        (Some(path), Some(ca_pem)) => {
            let verifier = WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots(path, ca_pem)?),
                provider(),
            )
            .with_crls(crls)
            .build()
            .map_err(|e| TlsError::Ca {
                path: path.clone(),
                message: e.to_string(),
            })?;
            builder.with_client_cert_verifier(verifier)
        }
        _ => builder.with_no_client_auth(),
    };
    let config = builder
        .with_single_cert(certs, key)
        .map_err(|error| TlsError::CertKey {
            cert: files.cert.clone(),
            key: files.key.clone(),
            error,
        })?;
    Ok(LoadedServerConfig {
        config: Arc::new(config),
        fingerprint,
    })
}

/// Builds a server config from PEM files (see [`ServerTlsFiles`]).
///
/// # Errors
/// A file is missing or unreadable, holds no certificate or key, or the key does not match the
/// certificate.
pub fn server_config(files: &ServerTlsFiles) -> Result<Arc<ServerConfig>, TlsError> {
    load_server_config(files).map(|loaded| loaded.config)
}

/// Client-side TLS settings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientTlsFiles {
    /// PEM CA certificates the server's certificate must chain to; `None`: the system roots.
    pub ca: Option<PathBuf>,
    /// PEM client certificate chain, for servers that require mutual TLS.
    pub cert: Option<PathBuf>,
    /// The client certificate's PEM private key.
    pub key: Option<PathBuf>,
    /// Lowest version offered.
    pub min_version: TlsVersion,
}

/// Builds a client config: verify the server against `ca` (a PEM file; `None` for the system
/// roots), and present `client_cert`/`client_key` when given (mutual TLS). TLS 1.2 minimum.
///
/// # Errors
/// A file is unreadable or holds nothing usable; only one of `client_cert` and `client_key`
/// was given; no CA file and no system roots.
pub fn client_config(
    ca: Option<&Path>,
    client_cert: Option<&Path>,
    client_key: Option<&Path>,
) -> Result<Arc<ClientConfig>, TlsError> {
    client_config_from(&ClientTlsFiles {
        ca: ca.map(Path::to_owned),
        cert: client_cert.map(Path::to_owned),
        key: client_key.map(Path::to_owned),
        min_version: TlsVersion::V1_2,
    })
}

/// [`client_config`] from a [`ClientTlsFiles`].
///
/// # Errors
/// As [`client_config`].
pub fn client_config_from(files: &ClientTlsFiles) -> Result<Arc<ClientConfig>, TlsError> {
    let roots = match &files.ca {
        Some(path) => roots(path, &read("CA", path)?)?,
        None => {
            let loaded = rustls_native_certs::load_native_certs();
            let mut store = RootCertStore::empty();
            let (added, _ignored) = store.add_parsable_certificates(loaded.certs);
            if added == 0 {
                let why = loaded
                    .errors
                    .first()
                    .map(ToString::to_string)
                    .unwrap_or_else(|| "none found".into());
                return Err(TlsError::NativeRoots(why));
            }
            store
        }
    };
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(files.min_version.versions())?
        .with_root_certificates(roots);
    let config = match (&files.cert, &files.key) {
        (None, None) => builder.with_no_client_auth(),
        (Some(cert), Some(key)) => {
            let certs = parse_certs(
                "client certificate",
                cert,
                &read("client certificate", cert)?,
            )?;
            let key_der = parse_key(key, &read("client private key", key)?)?;
            builder
                .with_client_auth_cert(certs, key_der)
                .map_err(|error| TlsError::CertKey {
                    cert: cert.clone(),
                    key: key.clone(),
                    error,
                })?
        }
        _ => return Err(TlsError::ClientCertWithoutKey),
    };
    Ok(Arc::new(config))
}

/// A digest of the files a client config is built from (the CA, the client certificate and
/// key; the system roots are not included): a cheap way for a long-running client to notice
/// rotated files before it reconnects.
///
/// # Errors
/// A file cannot be read.
pub fn client_fingerprint(files: &ClientTlsFiles) -> Result<Fingerprint, TlsError> {
    let optional = |what, path: &Option<PathBuf>| -> Result<Vec<u8>, TlsError> {
        path.as_deref().map_or(Ok(Vec::new()), |p| read(what, p))
    };
    let ca = optional("CA", &files.ca)?;
    let cert = optional("client certificate", &files.cert)?;
    let key = optional("client private key", &files.key)?;
    Ok(digest(&[&cert, &key, &ca]))
}

/// Parses the name the server's certificate must match (DNS name or IP address).
///
/// # Errors
/// [`TlsError::ServerName`] for anything else.
pub fn server_name(name: &str) -> Result<ServerName<'static>, TlsError> {
    ServerName::try_from(name.to_owned()).map_err(|_| TlsError::ServerName(name.to_owned()))
}

/// Runs the client side of a TLS handshake over `stream`, verifying the server as `name`.
///
/// # Errors
/// Whatever the handshake failed with (untrusted or mismatched certificate, protocol version,
/// a server requiring a client certificate...), as an `io::Error` wrapping the rustls error.
pub async fn connect(
    stream: TcpStream,
    config: Arc<ClientConfig>,
    name: ServerName<'static>,
) -> io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    tokio_rustls::TlsConnector::from(config)
        .connect(name, stream)
        .await
}

/// The rustls error inside an `io::Error` from a TLS handshake, if there is one.
pub fn rustls_error(e: &io::Error) -> Option<&rustls::Error> {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
}

/// Whether a server-side handshake failure was the client's certificate: missing, untrusted,
/// expired or otherwise invalid (an authentication failure, as opposed to a protocol error).
pub fn is_client_certificate_error(e: &io::Error) -> bool {
    matches!(
        rustls_error(e),
        Some(rustls::Error::NoCertificatesPresented | rustls::Error::InvalidCertificate(_))
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, CertifiedIssuer, KeyPair};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A CA and certificates it signed, written as PEM files.
    struct Pki {
        dir: tempfile::TempDir,
        issuer: CertifiedIssuer<'static, KeyPair>,
    }

    impl Pki {
        fn new(name: &str) -> Self {
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, name);
            let issuer =
                CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
            let dir = tempfile::tempdir().unwrap();
            std::fs::write(dir.path().join("ca.pem"), issuer.pem()).unwrap();
            Self { dir, issuer }
        }

        fn ca(&self) -> PathBuf {
            self.dir.path().join("ca.pem")
        }

        /// Writes `<stem>.crt` and `<stem>.key` for `names`.
        fn issue(&self, stem: &str, names: &[&str]) -> (PathBuf, PathBuf) {
            self.issue_with_serial(stem, names, None)
        }

        /// [`Pki::issue`] with a chosen serial number (to revoke it later).
        fn issue_with_serial(
            &self,
            stem: &str,
            names: &[&str],
            serial: Option<u64>,
        ) -> (PathBuf, PathBuf) {
            let key = KeyPair::generate().unwrap();
            let mut params =
                CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                    .unwrap();
            params.serial_number = serial.map(rcgen::SerialNumber::from);
            let issuer: &rcgen::Issuer<'_, KeyPair> = &self.issuer;
            let cert = params.signed_by(&key, issuer).unwrap();
            let (c, k) = (
                self.dir.path().join(format!("{stem}.crt")),
                self.dir.path().join(format!("{stem}.key")),
            );
            std::fs::write(&c, cert.pem()).unwrap();
            std::fs::write(&k, key.serialize_pem()).unwrap();
            (c, k)
        }

        /// A PEM CRL of this CA revoking the certificates with serial numbers `revoked`
        /// (dates fixed far in the past and future: nothing here depends on the clock).
        fn crl(&self, revoked: &[u64]) -> String {
            let params = rcgen::CertificateRevocationListParams {
                this_update: rcgen::date_time_ymd(2024, 1, 1),
                next_update: rcgen::date_time_ymd(2099, 1, 1),
                crl_number: rcgen::SerialNumber::from(1),
                issuing_distribution_point: None,
                revoked_certs: revoked
                    .iter()
                    .map(|&serial| rcgen::RevokedCertParams {
                        serial_number: rcgen::SerialNumber::from(serial),
                        revocation_time: rcgen::date_time_ymd(2024, 1, 1),
                        reason_code: Some(rcgen::RevocationReason::KeyCompromise),
                        invalidity_date: None,
                    })
                    .collect(),
                key_identifier_method: rcgen::KeyIdMethod::Sha256,
            };
            let issuer: &rcgen::Issuer<'_, KeyPair> = &self.issuer;
            params.signed_by(issuer).unwrap().pem().unwrap()
        }
    }

    fn files(cert: PathBuf, key: PathBuf, client_ca: Option<PathBuf>) -> ServerTlsFiles {
        ServerTlsFiles {
            cert,
            key,
            client_ca,
            client_crl: Vec::new(),
            min_version: TlsVersion::V1_2,
        }
    }

    /// Accepts one connection, echoes 4 bytes; returns what the handshake did.
    async fn serve_once(
        listener: tokio::net::TcpListener,
        acceptor: tokio_rustls::TlsAcceptor,
    ) -> io::Result<()> {
        let (tcp, _) = listener.accept().await?;
        let mut tls = acceptor.accept(tcp).await?;
        let mut b = [0u8; 4];
        tls.read_exact(&mut b).await?;
        tls.write_all(&b).await?;
        tls.shutdown().await
    }

    async fn round_trip(
        acceptor: tokio_rustls::TlsAcceptor,
        client: Arc<ClientConfig>,
    ) -> (io::Result<()>, io::Result<[u8; 4]>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(serve_once(listener, acceptor));
        let client = async {
            let tcp = TcpStream::connect(addr).await?;
            let mut tls = connect(tcp, client, server_name("localhost").unwrap()).await?;
            tls.write_all(b"ping").await?;
            let mut b = [0u8; 4];
            tls.read_exact(&mut b).await?;
            Ok(b)
        }
        .await;
        (server.await.unwrap(), client)
    }

    #[tokio::test]
    async fn tls_round_trip_and_mutual_tls() {
        let pki = Pki::new("test CA");
        let (cert, key) = pki.issue("server", &["localhost"]);
        let (ccert, ckey) = pki.issue("client", &["client-0"]);
        let other = Pki::new("other CA");
        let (ocert, okey) = other.issue("client", &["client-0"]);

        // Server-only TLS.
        let plain = acceptor(&files(cert.clone(), key.clone(), None));
        let client = client_config(Some(&pki.ca()), None, None).unwrap();
        let (s, c) = round_trip(plain.clone(), client).await;
        s.unwrap();
        assert_eq!(&c.unwrap(), b"ping");

        // A client that does not trust the server's CA fails.
        let untrusting = client_config(Some(&other.ca()), None, None).unwrap();
        let (s, c) = round_trip(plain, untrusting).await;
        assert!(s.is_err() && c.is_err());

        // Mutual TLS: a certificate from the right CA works; none, or another CA's, does not.
        let mtls = acceptor(&files(cert, key, Some(pki.ca())));
        let good = client_config(Some(&pki.ca()), Some(&ccert), Some(&ckey)).unwrap();
        let (s, c) = round_trip(mtls.clone(), good).await;
        s.unwrap();
        c.unwrap();
        let anonymous = client_config(Some(&pki.ca()), None, None).unwrap();
        let (s, _) = round_trip(mtls.clone(), anonymous).await;
        let e = s.unwrap_err();
        assert!(is_client_certificate_error(&e), "{e:?}");
        let foreign = client_config(Some(&pki.ca()), Some(&ocert), Some(&okey)).unwrap();
        let (s, _) = round_trip(mtls.clone(), foreign).await;
        let e = s.unwrap_err();
        assert!(is_client_certificate_error(&e), "{e:?}");
    }

    fn acceptor(files: &ServerTlsFiles) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(server_config(files).unwrap())
    }

    #[tokio::test]
    async fn rotation_is_seen_in_the_fingerprint_and_a_bad_key_is_an_error() {
        let first = Pki::new("first CA");
        let second = Pki::new("second CA");
        let (cert, key) = first.issue("server", &["localhost"]);
        let f = files(cert.clone(), key.clone(), None);
        let loaded = load_server_config(&f).unwrap();
        assert_eq!(fingerprint(&f).unwrap(), loaded.fingerprint);

        // Rotate: the second CA's certificate is written over the same paths.
        let (c2, k2) = second.issue("server2", &["localhost"]);
        std::fs::copy(&c2, &cert).unwrap();
        std::fs::copy(&k2, &key).unwrap();
        let rotated = load_server_config(&f).unwrap();
        assert_ne!(rotated.fingerprint, loaded.fingerprint);
        assert_eq!(fingerprint(&f).unwrap(), rotated.fingerprint);
        let (s, c) = round_trip(
            tokio_rustls::TlsAcceptor::from(rotated.config),
            client_config(Some(&second.ca()), None, None).unwrap(),
        )
        .await;
        s.unwrap();
        c.unwrap();

        // A key that does not match the certificate.
        let (_, k3) = first.issue("server3", &["localhost"]);
        std::fs::copy(&k3, &key).unwrap();
        let err = load_server_config(&f).unwrap_err();
        assert!(matches!(err, TlsError::CertKey { .. }), "{err}");
    }

    /// The rustls error a refused client left on the server side of [`round_trip`].
    fn refusal(server: io::Result<()>) -> rustls::CertificateError {
        let e = server.expect_err("the server accepted the client");
        assert!(is_client_certificate_error(&e), "{e:?}");
        match rustls_error(&e) {
            Some(rustls::Error::InvalidCertificate(why)) => why.clone(),
            other => panic!("not a certificate error: {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_crl_revokes_client_certificates_and_a_new_one_is_seen_in_the_fingerprint() {
        let pki = Pki::new("test CA");
        let (cert, key) = pki.issue("server", &["localhost"]);
        let (kept_cert, kept_key) = pki.issue_with_serial("kept", &["kept"], Some(1001));
        let (lost_cert, lost_key) = pki.issue_with_serial("lost", &["lost"], Some(1002));
        let kept = client_config(Some(&pki.ca()), Some(&kept_cert), Some(&kept_key)).unwrap();
        let lost = client_config(Some(&pki.ca()), Some(&lost_cert), Some(&lost_key)).unwrap();
        let crl = pki.dir.path().join("crl.pem");
        std::fs::write(&crl, pki.crl(&[])).unwrap();
        let mut f = files(cert, key, Some(pki.ca()));
        f.client_crl = vec![crl.clone()];

        // A CRL revoking nothing: both clients are served.
        let first = load_server_config(&f).unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(first.config);
        for client in [&kept, &lost] {
            let (s, c) = round_trip(acceptor.clone(), Arc::clone(client)).await;
            s.unwrap();
            assert_eq!(&c.unwrap(), b"ping");
        }

        // The CA revokes serial 1002; the new CRL is written over the same file.
        std::fs::write(&crl, pki.crl(&[1002])).unwrap();
        let changed = fingerprint(&f).unwrap();
        assert_ne!(
            changed, first.fingerprint,
            "a new CRL must change the fingerprint"
        );
        let second = load_server_config(&f).unwrap();
        assert_eq!(second.fingerprint, changed);
        let acceptor = tokio_rustls::TlsAcceptor::from(second.config);
        let (s, c) = round_trip(acceptor.clone(), Arc::clone(&kept)).await;
        s.unwrap();
        c.unwrap();
        let (s, _) = round_trip(acceptor, lost).await;
        assert_eq!(refusal(s), rustls::CertificateError::Revoked);

        // Fail closed: a CRL from another CA says nothing about this CA's clients, so their
        // status is unknown and they are refused.
        let other = Pki::new("other CA");
        let other_crl = other.dir.path().join("crl.pem");
        std::fs::write(&other_crl, other.crl(&[])).unwrap();
        f.client_crl = vec![other_crl];
        let acceptor = tokio_rustls::TlsAcceptor::from(server_config(&f).unwrap());
        let (s, _) = round_trip(acceptor, kept).await;
        assert_eq!(
            refusal(s),
            rustls::CertificateError::UnknownRevocationStatus
        );
    }

    #[test]
    fn crl_errors_name_the_file() {
        let pki = Pki::new("ca");
        let (cert, key) = pki.issue("server", &["localhost"]);
        let crl = pki.dir.path().join("crl.pem");
        std::fs::write(&crl, pki.crl(&[7])).unwrap();
        assert_eq!(load_crls(&crl).unwrap().len(), 1);

        // CRLs without a client CA.
        let mut f = files(cert.clone(), key.clone(), None);
        f.client_crl = vec![crl.clone()];
        let e = load_server_config(&f).unwrap_err();
        assert!(matches!(e, TlsError::CrlWithoutClientCa), "{e}");

        // A certificate where a CRL should be, a CRL block that is not a CRL, a missing file.
        let not_crl = pki.dir.path().join("not-a-crl.pem");
        std::fs::write(
            &not_crl,
            "-----BEGIN X509 CRL-----\nbm90IGEgQ1JM\n-----END X509 CRL-----\n",
        )
        .unwrap();
        let missing = pki.dir.path().join("missing-crl.pem");
        for (path, expected) in [
            (&cert, "BEGIN X509 CRL"),
            (&not_crl, "block #1 is not a usable CRL"),
            (&missing, "cannot read CRL"),
        ] {
            let e = load_crls(path).unwrap_err();
            assert!(e.to_string().contains(expected), "{e}");
            f.client_ca = Some(pki.ca());
            f.client_crl = vec![crl.clone(), path.clone()];
            let e = load_server_config(&f).unwrap_err();
            let text = e.to_string();
            assert!(
                text.contains(expected) && text.contains(&*path.to_string_lossy()),
                "{text}"
            );
        }
    }

    #[test]
    fn client_fingerprint_follows_the_files() {
        let pki = Pki::new("ca");
        let (cert, key) = pki.issue("client", &["client-0"]);
        let f = ClientTlsFiles {
            ca: Some(pki.ca()),
            cert: Some(cert.clone()),
            key: Some(key),
            min_version: TlsVersion::V1_2,
        };
        let before = client_fingerprint(&f).unwrap();
        assert_eq!(client_fingerprint(&f).unwrap(), before);
        let (c2, _) = pki.issue("client2", &["client-0"]);
        std::fs::copy(&c2, &cert).unwrap();
        assert_ne!(client_fingerprint(&f).unwrap(), before);
        std::fs::remove_file(&cert).unwrap();
        let e = client_fingerprint(&f).unwrap_err();
        assert!(e.to_string().contains("client.crt"), "{e}");
    }

    #[test]
    fn errors_name_the_file() {
        let pki = Pki::new("ca");
        let (cert, key) = pki.issue("server", &["localhost"]);
        let missing = pki.dir.path().join("nope.pem");
        let e = server_config(&files(missing.clone(), key.clone(), None)).unwrap_err();
        assert!(e.to_string().contains("nope.pem"), "{e}");
        // A certificate where the key should be.
        let e = server_config(&files(cert.clone(), cert.clone(), None)).unwrap_err();
        assert!(e.to_string().contains("private key"), "{e}");
        let e = server_config(&files(key.clone(), key.clone(), None)).unwrap_err();
        assert!(e.to_string().contains("CERTIFICATE"), "{e}");
        let e = client_config(Some(&pki.ca()), Some(&cert), None).unwrap_err();
        assert!(matches!(e, TlsError::ClientCertWithoutKey), "{e}");
        assert!(server_name("bad name!").is_err());
        assert!(server_name("127.0.0.1").is_ok());
    }
}
