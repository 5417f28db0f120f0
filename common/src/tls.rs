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
//! - **Errors name the file.** Every [`TlsError`] says which file (certificate, key, CA) and what
//!   is wrong with it, since that is what an operator has to fix.
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
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
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

/// The PEM bytes of the certificate, the key and the client CA (if any).
type ServerPem = (Vec<u8>, Vec<u8>, Option<Vec<u8>>);

fn read_server_files(files: &ServerTlsFiles) -> Result<ServerPem, TlsError> {
    let cert_pem = read("certificate", &files.cert)?;
    let key_pem = read("private key", &files.key)?;
    let ca_pem = match &files.client_ca {
        Some(path) => Some(read("client CA", path)?),
        None => None,
    };
    Ok((cert_pem, key_pem, ca_pem))
}

fn digest(cert: &[u8], key: &[u8], ca: Option<&[u8]>) -> Fingerprint {
    let mut hash = Sha256::new();
    for part in [cert, key, ca.unwrap_or_default()] {
        hash.update((part.len() as u64).to_le_bytes());
        hash.update(part);
    }
    hash.finalize().into()
}

/// Reads the files and digests them, without building a config: a cheap way to notice that
/// cert-manager (or anyone) replaced them.
///
/// # Errors
/// A file cannot be read.
pub fn fingerprint(files: &ServerTlsFiles) -> Result<Fingerprint, TlsError> {
    let (cert, key, ca) = read_server_files(files)?;
    Ok(digest(&cert, &key, ca.as_deref()))
}

/// Builds a server config from PEM files, with the fingerprint of what it read.
///
/// # Errors
/// A file is missing or unreadable, holds no certificate or key, or the key does not match the
/// certificate.
pub fn load_server_config(files: &ServerTlsFiles) -> Result<LoadedServerConfig, TlsError> {
    let (cert_pem, key_pem, ca_pem) = read_server_files(files)?;
    let fingerprint = digest(&cert_pem, &key_pem, ca_pem.as_deref());
    let certs = parse_certs("certificate", &files.cert, &cert_pem)?;
    let key = parse_key(&files.key, &key_pem)?;
    let builder = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(files.min_version.versions())?;
    let builder = match (&files.client_ca, &ca_pem) {
        (Some(path), Some(pem)) => {
            let verifier = WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots(path, pem)?),
                provider(),
            )
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
    Ok(digest(&cert, &key, Some(&ca)))
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
            let key = KeyPair::generate().unwrap();
            let params =
                CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                    .unwrap();
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
    }

    fn files(cert: PathBuf, key: PathBuf, client_ca: Option<PathBuf>) -> ServerTlsFiles {
        ServerTlsFiles {
            cert,
            key,
            client_ca,
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
