//! The client side of the shared-key handshake, for our forwarder and `logferry-loadtest`: a
//! pure state machine ([`ClientHandshake`]) and an async helper ([`handshake()`]) that runs it
//! over any stream (plain TCP or a TLS session).
//!
//! ```text
//! client                                            server
//!   ◄──────── ["HELO", {nonce, auth, keepalive}] ───
//!   ── ["PING", hostname, salt, digest, user, pwdigest] ──►
//!   ◄──────── ["PONG", ok, reason, server_hostname, digest] ───
//! ```
//! The PONG is accepted only if `ok` is true, the server's hostname differs from ours (equal
//! names mean both ends were configured alike, a loop), and its digest proves the server knows
//! the shared key. Every failure is a [`HandshakeError`] whose message says what to check.
//!
//! Usage (after `TcpStream::connect`, and after the TLS handshake if any):
//! ```no_run
//! # async fn f(mut stream: tokio::net::TcpStream) -> Result<(), Box<dyn std::error::Error>> {
//! use logferry_common::forward::client_session::{handshake, ClientAuth};
//! let auth = ClientAuth::new("shared-key", "node-1");
//! let server = handshake(&mut stream, &auth).await?;
//! // now write requests to `stream` as usual
//! # let _ = server; Ok(()) }
//! ```

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::codec::{Decoder, Limits, Request};
use super::error::DecodeError;
use super::handshake::{self, Helo, Message, Ping, Pong, MAX_HANDSHAKE_BYTES};

/// What a client authenticates with.
#[derive(Clone, PartialEq, Eq)]
pub struct ClientAuth {
    /// The shared key (the server's default key or the one of our `[[clients]]` entry).
    pub shared_key: String,
    /// Our hostname as sent in PING; must differ from the server's.
    pub hostname: String,
    /// User name, when the server requires user auth (empty otherwise).
    pub username: String,
    /// The user's password.
    pub password: String,
    /// How long [`handshake()`] waits for each server message (HELO, then PONG).
    pub timeout: Duration,
}

impl std::fmt::Debug for ClientAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientAuth")
            .field("hostname", &self.hostname)
            .field("username", &self.username)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl ClientAuth {
    /// Shared-key auth without a user, with a 10 s timeout per server message.
    pub fn new(shared_key: impl Into<String>, hostname: impl Into<String>) -> Self {
        Self {
            shared_key: shared_key.into(),
            hostname: hostname.into(),
            username: String::new(),
            password: String::new(),
            timeout: Duration::from_secs(10),
        }
    }
}

/// What the handshake learnt about the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Established {
    /// The server's hostname from PONG.
    pub server_hostname: String,
    /// HELO's `keepalive`: `false` means the server closes after each request.
    pub keepalive: bool,
}

/// Why a client handshake failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HandshakeError {
    /// Reading or writing the connection failed.
    #[error("Forward handshake: i/o error: {0}")]
    Io(#[from] std::io::Error),
    /// The server closed the connection.
    #[error(
        "Forward handshake: the server closed the connection while we waited for {waiting_for} \
             (is our address allowed by the server's [[server.auth.clients]], and are both ends \
             using TLS or both plain TCP?)"
    )]
    Closed {
        /// `HELO` or `PONG`.
        waiting_for: &'static str,
    },
    /// The server sent nothing in time.
    #[error(
        "Forward handshake: no {waiting_for} from the server within {after:?} (a server \
             without a shared key sends no HELO: is [server.auth] configured on it?)"
    )]
    Timeout {
        /// `HELO` or `PONG`.
        waiting_for: &'static str,
        /// The timeout.
        after: Duration,
    },
    /// The server sent something other than the expected message.
    #[error("Forward handshake: expected {expected} from the server, got {got}")]
    Unexpected {
        /// `HELO` or `PONG`.
        expected: &'static str,
        /// What came instead.
        got: &'static str,
    },
    /// The server's bytes are not a valid handshake message.
    #[error("Forward handshake: malformed message from the server: {0}")]
    Malformed(#[source] DecodeError),
    /// `PONG false`.
    #[error(
        "Forward handshake: the server rejected us: {reason:?} (check the shared key, \
             user name and password)"
    )]
    Rejected {
        /// The reason the server gave.
        reason: String,
    },
    /// The server's hostname equals ours.
    #[error(
        "Forward handshake: the server's hostname {0:?} equals ours; give each end its own \
             hostname (a forwarder sending to itself?)"
    )]
    SameHostname(String),
    /// The PONG digest is wrong: the server does not know our shared key.
    #[error(
        "Forward handshake: the server's PONG digest does not match: it does not know our \
             shared key (wrong server, or someone in between)"
    )]
    DigestMismatch,
    /// Bytes followed the PONG although we had sent no request yet.
    #[error("Forward handshake: unexpected data from the server after PONG")]
    TrailingData,
}

/// The client state machine: HELO in, PING out; PONG in, verdict out.
#[derive(Debug)]
pub struct ClientHandshake {
    auth: ClientAuth,
    salt: String,
    helo: Option<Helo>,
}

impl ClientHandshake {
    /// A handshake with a fresh random salt.
    pub fn new(auth: ClientAuth) -> Self {
        let salt = hex::encode(rand::random::<[u8; 16]>());
        Self {
            auth,
            salt,
            helo: None,
        }
    }

    /// Takes the server's HELO and appends the PING to send.
    pub fn on_helo(&mut self, helo: &Helo, out: &mut Vec<u8>) {
        let a = &self.auth;
        let digest = handshake::ping_digest(
            self.salt.as_bytes(),
            &a.hostname,
            &helo.nonce,
            &a.shared_key,
        );
        let (username, password_digest) = if helo.auth_salt.is_empty() {
            (String::new(), String::new())
        } else {
            (
                a.username.clone(),
                handshake::password_digest(&helo.auth_salt, &a.username, &a.password),
            )
        };
        handshake::encode_ping(
            &Ping {
                client_hostname: a.hostname.clone(),
                shared_key_salt: Bytes::copy_from_slice(self.salt.as_bytes()),
                shared_key_digest: digest,
                username,
                password_digest,
            },
            out,
        );
        self.helo = Some(helo.clone());
    }

    /// Checks the server's PONG.
    ///
    /// # Errors
    /// [`HandshakeError::Rejected`], [`HandshakeError::SameHostname`],
    /// [`HandshakeError::DigestMismatch`]; [`HandshakeError::Unexpected`] before a HELO.
    pub fn on_pong(&self, pong: &Pong) -> Result<Established, HandshakeError> {
        let Some(helo) = &self.helo else {
            return Err(HandshakeError::Unexpected {
                expected: "HELO",
                got: "PONG",
            });
        };
        if !pong.auth_result {
            return Err(HandshakeError::Rejected {
                reason: pong.reason.clone(),
            });
        }
        if pong.server_hostname == self.auth.hostname {
            return Err(HandshakeError::SameHostname(pong.server_hostname.clone()));
        }
        let expected = handshake::pong_digest(
            self.salt.as_bytes(),
            &pong.server_hostname,
            &helo.nonce,
            &self.auth.shared_key,
        );
        if expected != pong.shared_key_digest {
            return Err(HandshakeError::DigestMismatch);
        }
        Ok(Established {
            server_hostname: pong.server_hostname.clone(),
            keepalive: helo.keepalive,
        })
    }
}

fn describe(request: &Request) -> &'static str {
    match request {
        Request::Heartbeat => "a heartbeat",
        Request::Events(_) => "an event request",
        Request::Handshake(Message::Helo(_)) => "HELO",
        Request::Handshake(Message::Ping(_)) => "PING",
        Request::Handshake(Message::Pong(_)) => "PONG",
    }
}

/// Reads one server message, within `auth.timeout`.
async fn read_message<S: AsyncRead + Unpin>(
    stream: &mut S,
    decoder: &mut Decoder,
    buf: &mut BytesMut,
    waiting_for: &'static str,
    timeout: Duration,
) -> Result<Request, HandshakeError> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match decoder.decode(buf) {
            Ok(Some(request)) => return Ok(request),
            Ok(None) => {}
            Err(e) => return Err(HandshakeError::Malformed(e)),
        }
        buf.reserve(1024);
        let n = match tokio::time::timeout_at(deadline, stream.read_buf(buf)).await {
            Ok(read) => read?,
            Err(_) => {
                return Err(HandshakeError::Timeout {
                    waiting_for,
                    after: timeout,
                })
            }
        };
        if n == 0 {
            return Err(HandshakeError::Closed { waiting_for });
        }
    }
}

/// Runs the client side of the handshake on `stream` (after the TLS handshake, if any).
///
/// # Errors
/// Every [`HandshakeError`]; the connection should be closed then.
pub async fn handshake<S>(stream: &mut S, auth: &ClientAuth) -> Result<Established, HandshakeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut decoder = Decoder::new(Limits {
        max_request_bytes: MAX_HANDSHAKE_BYTES,
        max_decompressed_bytes: MAX_HANDSHAKE_BYTES,
        max_tag_bytes: MAX_HANDSHAKE_BYTES,
    });
    let mut buf = BytesMut::with_capacity(1024);
    let mut session = ClientHandshake::new(auth.clone());
    let helo = match read_message(stream, &mut decoder, &mut buf, "HELO", auth.timeout).await? {
        Request::Handshake(Message::Helo(helo)) => helo,
        other => {
            return Err(HandshakeError::Unexpected {
                expected: "HELO",
                got: describe(&other),
            })
        }
    };
    let mut ping = Vec::with_capacity(256);
    session.on_helo(&helo, &mut ping);
    stream.write_all(&ping).await?;
    stream.flush().await?;
    let established = match read_message(stream, &mut decoder, &mut buf, "PONG", auth.timeout).await
    {
        Ok(Request::Handshake(Message::Pong(pong))) => session.on_pong(&pong)?,
        Ok(other) => {
            return Err(HandshakeError::Unexpected {
                expected: "PONG",
                got: describe(&other),
            })
        }
        Err(e) => return Err(e),
    };
    if !buf.is_empty() {
        return Err(HandshakeError::TrailingData);
    }
    Ok(established)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn client_errors_are_specific() {
        // A server that says nothing (no auth configured): timeout naming HELO.
        let (mut c, _s) = tokio::io::duplex(4096);
        let auth = ClientAuth {
            timeout: Duration::from_millis(50),
            ..ClientAuth::new("k", "h")
        };
        let err = handshake(&mut c, &auth).await.unwrap_err();
        assert!(
            matches!(
                err,
                HandshakeError::Timeout {
                    waiting_for: "HELO",
                    ..
                }
            ),
            "{err}"
        );

        // A server that closes at once.
        let (mut c, s) = tokio::io::duplex(4096);
        drop(s);
        let err = handshake(&mut c, &auth).await.unwrap_err();
        assert!(
            matches!(
                err,
                HandshakeError::Closed {
                    waiting_for: "HELO"
                }
            ),
            "{err}"
        );

        // A server that answers with our own hostname, or a digest made with another key.
        let helo = Helo {
            nonce: Bytes::from_static(&[1; 16]),
            auth_salt: Bytes::new(),
            keepalive: true,
        };
        let mut hs = ClientHandshake::new(ClientAuth::new("k", "me"));
        hs.on_helo(&helo, &mut Vec::new());
        let pong = |host: &str, digest: String| Pong {
            auth_result: true,
            reason: String::new(),
            server_hostname: host.into(),
            shared_key_digest: digest,
        };
        let err = hs.on_pong(&pong("me", String::new())).unwrap_err();
        assert!(matches!(err, HandshakeError::SameHostname(_)), "{err}");
        let forged = handshake::pong_digest(hs.salt.as_bytes(), "srv", &helo.nonce, "other-key");
        let err = hs.on_pong(&pong("srv", forged)).unwrap_err();
        assert!(matches!(err, HandshakeError::DigestMismatch), "{err}");
        let good = handshake::pong_digest(hs.salt.as_bytes(), "srv", &helo.nonce, "k");
        hs.on_pong(&pong("srv", good)).unwrap();

        // Something other than HELO first.
        let (mut c, mut s) = tokio::io::duplex(4096);
        s.write_all(&[0x81, 0xa3, b'a', b'c', b'k', 0xa1, b'x'])
            .await
            .unwrap();
        s.write_all(&[0x92, 0xa1, b't', 0xc0]).await.unwrap();
        let err = handshake(&mut c, &auth).await.unwrap_err();
        assert!(
            matches!(
                err,
                HandshakeError::Malformed(_) | HandshakeError::Unexpected { .. }
            ),
            "{err}"
        );

        // Debug output hides the key and password.
        let text = format!(
            "{:?}",
            ClientAuth {
                password: "hunter2".into(),
                ..ClientAuth::new("topsecret", "h")
            }
        );
        assert!(
            !text.contains("hunter2") && !text.contains("topsecret"),
            "{text}"
        );
    }
}
