//! Connection set-up for `forward`: TCP, then TLS (`--tls`), then the Forward shared-key
//! handshake (`--shared-key`), handing the send loop a ready stream.
//!
//! ## Why a module of its own
//! - **Set-up is not the hot path.** The send loop in `forward.rs` only sees a stream that is
//!   ready for requests; everything that happens once per connection (and again on every
//!   reconnect) lives here, so the loop stays the same for plain TCP and TLS. The loop is generic
//!   over the stream, and [`Connected`] keeps the two kinds apart, so plain TCP runs on a bare
//!   `TcpStream` with no TLS wrapper or dynamic dispatch in between.
//! - **Configuration is checked once, before any load.** [`Connector::new`] builds the rustls
//!   client config (CA, client certificate and key) and the server name once per run: a missing
//!   or malformed file is a setup error naming the file (exit status 2), not one connection error
//!   per connection and reconnect, and no file is parsed again when reconnecting.
//! - **Failures say which step failed.** [`ConnectError`] tells TCP, TLS and handshake apart and
//!   adds what to check (`--ca`, `--server-name`, the shared key); the send loop handles all of
//!   them like any other connection error (reported, or retried with backoff under
//!   `--retry-for`).
//! - **The protocol code is logferry-common's**: `tls::client_config_from`, `tls::connect` and
//!   `forward::client_session::handshake`, the same code the forwarder connects with.

use std::convert::Infallible;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use logferry_common::config::{system_hostname, Secret};
use logferry_common::forward::client_session::{handshake, ClientAuth, HandshakeError};
use logferry_common::tls::{
    self, rustls, rustls::pki_types::ServerName, tokio_rustls::client::TlsStream, ClientTlsFiles,
    TlsError, TlsVersion,
};
use tokio::net::TcpStream;

/// `forward`'s TLS and authentication flags.
#[derive(Debug, Clone, Default, Args)]
#[command(next_help_heading = "TLS and authentication")]
pub struct SecurityArgs {
    /// Connect over TLS (1.2 or 1.3). The server's certificate is verified against `--ca` (default:
    /// the system's root certificates) and must be valid for `--server-name`.
    #[arg(long)]
    pub tls: bool,
    /// PEM file with the CA certificate(s) the server's certificate must be signed by, instead of
    /// the system's root certificates. Needs `--tls`.
    #[arg(long, value_name = "FILE", requires = "tls")]
    pub ca: Option<PathBuf>,
    /// PEM client certificate (chain) for mutual TLS, for servers that require one (the
    /// aggregator's `[server.tls] client_ca`). Needs `--key` and `--tls`.
    #[arg(long, value_name = "FILE", requires_all = ["tls", "key"])]
    pub cert: Option<PathBuf>,
    /// PEM private key of `--cert` (PKCS#8, PKCS#1 or SEC1). Needs `--cert` and `--tls`.
    #[arg(long, value_name = "FILE", requires_all = ["tls", "cert"])]
    pub key: Option<PathBuf>,
    /// DNS name or IP address the server's certificate must be valid for (default: the host part
    /// of `--target`). Needs `--tls`.
    #[arg(long, value_name = "NAME", requires = "tls")]
    pub server_name: Option<String>,
    /// Run the Forward shared-key handshake (HELO, PING, PONG: Fluentd's `<security>`) on every
    /// connection before sending, inside the TLS session with `--tls`. The server must know the
    /// same key (the aggregator's `[server.auth] shared_key`); a server that answers without
    /// proving it knows the key is refused too. Prefer the environment variable to keep the key
    /// out of the process list.
    #[arg(
        long,
        value_name = "KEY",
        env = "LOGFERRY_LOADTEST_SHARED_KEY",
        hide_env_values = true,
        value_parser = secret
    )]
    pub shared_key: Option<Secret>,
    /// User name for servers that also require user authentication (the aggregator's
    /// `[[server.auth.users]]`). Needs `--password` and `--shared-key`.
    #[arg(long, value_name = "USER", requires_all = ["shared_key", "password"])]
    pub username: Option<String>,
    /// Password of `--username`. Needs `--username` and `--shared-key`.
    #[arg(
        long,
        value_name = "PASSWORD",
        env = "LOGFERRY_LOADTEST_PASSWORD",
        hide_env_values = true,
        value_parser = secret,
        requires_all = ["shared_key", "username"]
    )]
    pub password: Option<Secret>,
    /// Our hostname in the handshake's PING (default: this machine's hostname, or
    /// `logferry-loadtest` if it cannot be read). It must differ from the server's own hostname,
    /// so give one when the server runs on this machine with its default hostname. Needs
    /// `--shared-key`.
    #[arg(long, value_name = "NAME", requires = "shared_key")]
    pub hostname: Option<String>,
}

/// Parses `--shared-key` and `--password` into a [`Secret`], which `Debug` does not print.
fn secret(s: &str) -> Result<Secret, Infallible> {
    Ok(Secret(s.to_owned()))
}

/// The host part of `HOST:PORT` (`[::1]:24224` gives `::1`; no port: all of it).
fn target_host(target: &str) -> &str {
    let host = match target.rsplit_once(':') {
        Some((host, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => target,
    };
    host.strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host)
}

/// TLS settings built once per run.
#[derive(Debug)]
struct TlsSetup {
    config: Arc<rustls::ClientConfig>,
    name: ServerName<'static>,
}

/// Opens connections ready for requests; built once per run and shared by every connection.
#[derive(Debug)]
pub struct Connector {
    target: String,
    timeout: Duration,
    tls: Option<TlsSetup>,
    auth: Option<ClientAuth>,
}

/// A connection ready for requests.
#[derive(Debug)]
pub enum Connected {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS over TCP (boxed: a TLS session is large next to a `TcpStream`).
    Tls(Box<TlsStream<TcpStream>>),
}

/// Why a connection could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// TCP connect failed.
    #[error("connect to {target}: {error}")]
    Tcp {
        /// `--target`.
        target: String,
        /// What failed.
        error: io::Error,
    },
    /// The TCP connect or the TLS handshake took longer than `--connect-timeout` (the Forward
    /// handshake reports its own [`HandshakeError::Timeout`], inside [`ConnectError::Handshake`]).
    #[error("{step} {target} timed out after {after:?}")]
    Timeout {
        /// `connect to` or `TLS handshake with`.
        step: &'static str,
        /// `--target`.
        target: String,
        /// `--connect-timeout`.
        after: Duration,
    },
    /// The TLS handshake failed (untrusted or mismatched certificate, no common version...).
    #[error("TLS handshake with {target} (server name {name}): {error}{hint}")]
    Tls {
        /// `--target`.
        target: String,
        /// The name the certificate was checked against.
        name: String,
        /// What rustls (or the socket) said.
        error: io::Error,
        /// What to check, or empty.
        hint: &'static str,
    },
    /// The Forward shared-key handshake failed (its message says what to check).
    #[error("{target}: {error}{hint}")]
    Handshake {
        /// `--target`.
        target: String,
        /// What failed.
        error: HandshakeError,
        /// What to check, or empty.
        hint: &'static str,
    },
}

/// The server refused our TLS session with an alert.
const ALERT_HINT: &str = " (the server refused the TLS session: does it require a client \
     certificate (--cert/--key) signed by its client_ca, or a TLS version we do not offer?)";

/// What to check after a failed TLS handshake.
fn tls_hint(e: &io::Error) -> &'static str {
    match tls::rustls_error(e) {
        Some(rustls::Error::InvalidCertificate(_)) => {
            " (the server's certificate must be signed by the CA of --ca, or by a system root \
             without --ca, and be valid for --server-name)"
        }
        Some(rustls::Error::AlertReceived(_)) => ALERT_HINT,
        Some(_) => "",
        None => " (is the server listening with TLS on this port?)",
    }
}

/// What to check after a failed Forward handshake, beyond what its message says: with TLS 1.3
/// a refused client certificate only shows once the server's first message is read.
fn handshake_hint(e: &HandshakeError) -> &'static str {
    match e {
        HandshakeError::Io(io) => match tls::rustls_error(io) {
            Some(rustls::Error::AlertReceived(_)) => ALERT_HINT,
            _ => "",
        },
        _ => "",
    }
}

impl Connector {
    /// Checks the flags and builds the TLS client config (if `--tls`) and the handshake
    /// credentials (if `--shared-key`). `timeout` bounds the TCP connect, the TLS handshake and
    /// each server message of the Forward handshake.
    ///
    /// # Errors
    /// A CA, certificate or key file is unreadable or holds nothing usable (the error names the
    /// file), no CA file and no system roots, or the server name is neither a DNS name nor an
    /// IP address.
    pub fn new(target: &str, timeout: Duration, args: &SecurityArgs) -> Result<Self, TlsError> {
        let tls = if args.tls {
            let config = tls::client_config_from(&ClientTlsFiles {
                ca: args.ca.clone(),
                cert: args.cert.clone(),
                key: args.key.clone(),
                min_version: TlsVersion::V1_2,
            })?;
            let name = tls::server_name(
                args.server_name
                    .as_deref()
                    .unwrap_or_else(|| target_host(target)),
            )?;
            Some(TlsSetup { config, name })
        } else {
            None
        };
        let auth = args.shared_key.as_ref().map(|key| ClientAuth {
            username: args.username.clone().unwrap_or_default(),
            password: args
                .password
                .as_ref()
                .map(|p| p.expose().to_owned())
                .unwrap_or_default(),
            timeout,
            ..ClientAuth::new(
                key.expose(),
                args.hostname
                    .clone()
                    .unwrap_or_else(|| system_hostname("logferry-loadtest")),
            )
        });
        Ok(Self {
            target: target.to_owned(),
            timeout,
            tls,
            auth,
        })
    }

    /// Plain TCP, no handshake.
    #[cfg(test)]
    pub fn plain(target: &str, timeout: Duration) -> Self {
        Self {
            target: target.to_owned(),
            timeout,
            tls: None,
            auth: None,
        }
    }

    /// Whether connections use TLS.
    pub fn tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Whether connections run the shared-key handshake.
    pub fn authenticates(&self) -> bool {
        self.auth.is_some()
    }

    /// Connects, then runs the TLS and Forward handshakes as configured.
    ///
    /// # Errors
    /// See [`ConnectError`].
    pub async fn connect(&self) -> Result<Connected, ConnectError> {
        let timeout = |step| ConnectError::Timeout {
            step,
            target: self.target.clone(),
            after: self.timeout,
        };
        let tcp = tokio::time::timeout(self.timeout, TcpStream::connect(&self.target))
            .await
            .map_err(|_| timeout("connect to"))?
            .map_err(|error| ConnectError::Tcp {
                target: self.target.clone(),
                error,
            })?;
        let _ = tcp.set_nodelay(true);
        let mut stream = match &self.tls {
            None => Connected::Plain(tcp),
            Some(t) => {
                let handshake = tls::connect(tcp, t.config.clone(), t.name.clone());
                let s = tokio::time::timeout(self.timeout, handshake)
                    .await
                    .map_err(|_| timeout("TLS handshake with"))?
                    .map_err(|error| ConnectError::Tls {
                        target: self.target.clone(),
                        name: t.name.to_str().into_owned(),
                        hint: tls_hint(&error),
                        error,
                    })?;
                Connected::Tls(Box::new(s))
            }
        };
        if let Some(auth) = &self.auth {
            let r = match &mut stream {
                Connected::Plain(s) => handshake(s, auth).await,
                Connected::Tls(s) => handshake(s.as_mut(), auth).await,
            };
            r.map_err(|error| ConnectError::Handshake {
                target: self.target.clone(),
                hint: handshake_hint(&error),
                error,
            })?;
        }
        Ok(stream)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_name_defaults_to_the_target_host() {
        assert_eq!(target_host("127.0.0.1:24224"), "127.0.0.1");
        assert_eq!(target_host("logs.example.com:24224"), "logs.example.com");
        assert_eq!(target_host("[::1]:24224"), "::1");
        assert_eq!(target_host("localhost"), "localhost");
    }

    #[test]
    fn secrets_do_not_print() {
        let s = secret("hunter2").unwrap();
        assert_eq!(s.expose(), "hunter2");
        assert!(!format!("{s:?}").contains("hunter2"));
        let args = SecurityArgs {
            shared_key: Some(secret("k3y").unwrap()),
            password: Some(s),
            ..SecurityArgs::default()
        };
        let text = format!(
            "{args:?} {:?}",
            Connector::new("h:1", Duration::from_secs(1), &args).unwrap()
        );
        assert!(!text.contains("hunter2") && !text.contains("k3y"), "{text}");
    }

    #[test]
    fn bad_files_are_setup_errors_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing-ca.pem");
        let garbage = dir.path().join("garbage.pem");
        std::fs::write(&garbage, "not a certificate\n").unwrap();
        let tls = |ca: &PathBuf| SecurityArgs {
            tls: true,
            ca: Some(ca.clone()),
            ..SecurityArgs::default()
        };
        for path in [&missing, &garbage] {
            let e = Connector::new("127.0.0.1:1", Duration::from_secs(1), &tls(path)).unwrap_err();
            let text = e.to_string();
            assert!(text.contains(&path.display().to_string()), "{text}");
        }
        // A client key that is not a key.
        let args = SecurityArgs {
            cert: Some(garbage.clone()),
            key: Some(garbage.clone()),
            ..tls(&garbage)
        };
        assert!(Connector::new("127.0.0.1:1", Duration::from_secs(1), &args).is_err());
    }

    #[tokio::test]
    async fn connect_errors_name_the_step() {
        // A closed port: the TCP step fails.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        drop(l);
        let c = Connector::plain(&addr, Duration::from_secs(5));
        let e = c.connect().await.unwrap_err();
        assert!(matches!(e, ConnectError::Tcp { .. }), "{e}");
        assert!(
            e.to_string().starts_with(&format!("connect to {addr}")),
            "{e}"
        );

        // A server that closes at once, under --shared-key: the handshake step fails.
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                drop(s);
            }
        });
        let args = SecurityArgs {
            shared_key: Some(secret("k").unwrap()),
            hostname: Some("me".into()),
            ..SecurityArgs::default()
        };
        let c = Connector::new(&addr, Duration::from_secs(5), &args).unwrap();
        let e = c.connect().await.unwrap_err();
        assert!(matches!(e, ConnectError::Handshake { .. }), "{e}");
        assert!(e.to_string().contains("handshake"), "{e}");
    }
}
