//! TLS and the Forward shared-key handshake, between a TCP connect and the protocol loop.
//!
//! Both are optional and independent (`[output.tls]`, `output.shared_key`): TLS first, then
//! HELO/PING/PONG inside it, as Fluentd and Fluent Bit do. The pieces are the library's
//! ([`logferry_common::tls`], [`logferry_common::forward::client_session`]); this module adds
//! what a long-running agent needs around them:
//! - **Rotation without restarts.** cert-manager rewrites the mounted CA and client
//!   certificate in place. Before each connect the files are digested (a few small reads,
//!   only when connecting) and the rustls config is rebuilt when they changed; a file that
//!   does not load keeps the previous config in service and is logged.
//! - **One deadline.** TCP connect aside, the TLS handshake and the Forward handshake share
//!   `connect_timeout`, so a server that accepts and then says nothing cannot hold a slot.
//! - **Typed failures.** A TLS or handshake failure is a configuration problem far more
//!   often than a network one: it is reported with what to check, counted under its own
//!   label, and retried with the slot's backoff like any failed connect.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use logferry_common::config::system_hostname;
use logferry_common::forward::client_session::{handshake, ClientAuth, HandshakeError};
use logferry_common::tls::rustls::ClientConfig;
use logferry_common::tls::{self, ClientTlsFiles, Fingerprint, TlsError};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::config::OutputConfig;

/// Why a connection could not be set up after TCP connected.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// The server name for certificate verification is not a DNS name or IP address.
    #[error("cannot verify {host:?}: {source} (set output.tls.server_name)")]
    ServerName {
        /// The host the name came from.
        host: String,
        /// The parse error.
        source: TlsError,
    },
    /// The TLS handshake failed (untrusted or mismatched certificate, a server requiring a
    /// client certificate, a plain-TCP server...).
    #[error("TLS handshake failed: {0} (check output.tls.ca and server_name; is the aggregator listening with TLS?)")]
    Tls(std::io::Error),
    /// The Forward handshake failed.
    #[error(transparent)]
    Handshake(#[from] HandshakeError),
    /// TLS and the Forward handshake did not finish in time.
    #[error("TLS and Forward handshakes did not finish within {0:?}")]
    Timeout(Duration),
}

impl SetupError {
    /// Metric label.
    pub fn kind(&self) -> &'static str {
        match self {
            SetupError::ServerName { .. } | SetupError::Tls(_) => "tls",
            SetupError::Handshake(_) => "handshake",
            SetupError::Timeout(_) => "handshake_timeout",
        }
    }
}

/// The client's TLS and handshake settings, shared by every connection.
#[derive(Debug)]
pub struct Security {
    tls: Option<TlsClient>,
    auth: Option<ClientAuth>,
    timeout: Duration,
}

impl Security {
    /// From `[output]`. Fails if the TLS files do not load (`validate` reports the same).
    ///
    /// # Errors
    /// [`TlsError`] naming the file that does not load.
    pub fn from_config(o: &OutputConfig) -> Result<Security, TlsError> {
        let tls = match &o.tls {
            Some(t) => Some(TlsClient::load(t.files(), t.server_name.clone())?),
            None => None,
        };
        let auth = o.shared_key.as_ref().map(|key| ClientAuth {
            shared_key: key.expose().to_owned(),
            hostname: o
                .self_hostname
                .clone()
                .unwrap_or_else(|| system_hostname("logferry-forwarder")),
            username: o.username.clone().unwrap_or_default(),
            password: o
                .password
                .as_ref()
                .map(|p| p.expose().to_owned())
                .unwrap_or_default(),
            timeout: o.connect_timeout,
        });
        Ok(Security {
            tls,
            auth,
            timeout: o.connect_timeout,
        })
    }

    /// Whether connections use TLS.
    pub fn uses_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Runs the Forward handshake, if configured, over an established stream.
    async fn authenticate<S>(&self, mut stream: S) -> Result<S, SetupError>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        if let Some(auth) = &self.auth {
            let server = handshake(&mut stream, auth).await?;
            tracing::debug!(server = %server.server_hostname, keepalive = server.keepalive, "Forward handshake done");
        }
        Ok(stream)
    }

    /// Plain TCP: the handshake, if configured, within the deadline.
    pub async fn plain(&self, tcp: TcpStream) -> Result<TcpStream, SetupError> {
        tokio::time::timeout(self.timeout, self.authenticate(tcp))
            .await
            .map_err(|_| SetupError::Timeout(self.timeout))?
    }

    /// TLS to `host` (unless `server_name` overrides it), then the handshake if configured,
    /// within the deadline. Call only when [`Security::uses_tls`].
    pub async fn tls(
        &self,
        tcp: TcpStream,
        host: &str,
    ) -> Result<tls::tokio_rustls::client::TlsStream<TcpStream>, SetupError> {
        let client = self
            .tls
            .as_ref()
            .expect("Security::tls is called only when TLS is configured");
        let name = client.server_name.as_deref().unwrap_or(host);
        let name = tls::server_name(name).map_err(|source| SetupError::ServerName {
            host: name.to_owned(),
            source,
        })?;
        let config = client.current();
        let setup = async {
            let stream = tls::connect(tcp, config, name)
                .await
                .map_err(SetupError::Tls)?;
            self.authenticate(stream).await
        };
        tokio::time::timeout(self.timeout, setup)
            .await
            .map_err(|_| SetupError::Timeout(self.timeout))?
    }
}

/// A rustls client config that follows its files.
#[derive(Debug)]
struct TlsClient {
    files: ClientTlsFiles,
    server_name: Option<String>,
    loaded: Mutex<(Fingerprint, Arc<ClientConfig>)>,
}

impl TlsClient {
    fn load(files: ClientTlsFiles, server_name: Option<String>) -> Result<TlsClient, TlsError> {
        let fingerprint = tls::client_fingerprint(&files)?;
        let config = tls::client_config_from(&files)?;
        Ok(TlsClient {
            files,
            server_name,
            loaded: Mutex::new((fingerprint, config)),
        })
    }

    /// The config for the next connection: rebuilt if the files changed since the last one.
    fn current(&self) -> Arc<ClientConfig> {
        let mut loaded = self.loaded.lock().unwrap_or_else(|e| e.into_inner());
        match tls::client_fingerprint(&self.files) {
            Ok(fingerprint) if fingerprint != loaded.0 => {
                match tls::client_config_from(&self.files) {
                    Ok(config) => {
                        tracing::info!("output TLS files changed; new connections use them");
                        *loaded = (fingerprint, config);
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "output TLS files changed but do not load; keeping the previous ones");
                    }
                }
            }
            Ok(_) => {}
            Err(e) => {
                tracing::error!(error = %e, "cannot read the output TLS files; keeping the previous ones");
            }
        }
        Arc::clone(&loaded.1)
    }
}
