//! The server side of the shared-key handshake: source ACL, HELO, PING checks, PONG. Pure (bytes
//! in, verdicts out), so it is unit-tested and fuzzed without sockets; the aggregator's
//! connection code only moves bytes and enforces the timeout.
//!
//! ## What a connection goes through
//! ```text
//! accept ──► ServerHandshake::start(policy, peer ip)     ACL: source not allowed ⇒ close, no HELO
//!        ──► helo()  ─────────────────────────────────►  ["HELO", {nonce, auth, keepalive}]
//!        ◄── receive(bytes) ◄──────────────────────────  ["PING", host, salt, digest, user, pwdigest]
//!              Ok(None)            need more bytes (the caller's timeout bounds the wait)
//!              Ok(Some(accepted))  send accepted.pong (PONG true), then events flow
//!              Err(failure)        send failure.pong() if any (PONG false + reason), then close
//! ```
//!
//! ## Rules (Fluentd's `in_forward` `<security>` semantics)
//! - **ACL first.** With `allow_anonymous_source = false`, a peer whose address matches no
//!   [`ClientRule`] is refused before HELO. The first matching rule (in order) supplies the
//!   shared key (its own or the default) and may restrict which users may log in from there.
//! - **The first message must be a PING** of exactly 6 elements; any other request (events,
//!   heartbeat, another handshake message) fails the handshake. A handshake message is at most
//!   [`MAX_HANDSHAKE_BYTES`]; a larger (or declared larger) one fails at once, without waiting
//!   for its bytes.
//! - **Checks in order:** the client's hostname must differ from ours, then the shared-key
//!   digest, then (when users are configured) user and password digest. Digests are compared in
//!   constant time, and an unknown user costs the same digest as a known one.
//! - **What the peer learns:** the PONG reason is Fluentd's generic text ("shared_key mismatch",
//!   "username/password mismatch"), so it cannot probe which users exist. The
//!   [`AuthFailure`] the server logs is precise, and never contains a key, password or digest.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
pub use ipnet::IpNet;

use super::codec::{Decoder, Limits, Request};
use super::error::DecodeError;
pub use super::handshake::MAX_HANDSHAKE_BYTES;
use super::handshake::{self, Helo, Message, Ping, Pong};

/// Who may connect from where.
#[derive(Clone, PartialEq, Eq)]
pub enum Source {
    /// Any address in this network (`10.0.0.0/8`, `2001:db8::/32`, or one address `/32`).
    Network(IpNet),
    /// A host name as configured, with the addresses it resolved to when the policy was built.
    Host {
        /// The name in the config (for log lines).
        name: String,
        /// Its addresses.
        addrs: Vec<IpAddr>,
    },
}

impl Source {
    /// Whether `ip` is covered. IPv4-mapped IPv6 peers (`::ffff:a.b.c.d`, from a dual-stack
    /// listener) are matched as their IPv4 address.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        match self {
            Source::Network(net) => net.contains(&ip),
            Source::Host { addrs, .. } => addrs.iter().any(|a| canonical(*a) == ip),
        }
    }
}

impl fmt::Debug for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Network(net) => write!(f, "network {net}"),
            Source::Host { name, addrs } => write!(f, "host {name} {addrs:?}"),
        }
    }
}

fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// One `[[server.auth.clients]]` entry.
#[derive(Clone, PartialEq, Eq)]
pub struct ClientRule {
    /// Where the client connects from.
    pub source: Source,
    /// Its own shared key; `None`: the default key.
    pub shared_key: Option<String>,
    /// Users allowed from this source; empty: every configured user.
    pub users: Vec<String>,
}

impl fmt::Debug for ClientRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientRule")
            .field("source", &self.source)
            .field("own_shared_key", &self.shared_key.is_some())
            .field("users", &self.users)
            .finish()
    }
}

/// A listener's authentication policy.
#[derive(Clone, PartialEq, Eq)]
pub struct ServerAuth {
    /// Our hostname, sent in PONG (clients reject one equal to their own).
    pub hostname: String,
    /// The default shared key. `None`: only clients with their own key can authenticate.
    pub shared_key: Option<String>,
    /// User name → password. Non-empty turns on user authentication (HELO carries a salt).
    pub users: HashMap<String, String>,
    /// Per-source rules, first match wins.
    pub clients: Vec<ClientRule>,
    /// Whether a peer matching no rule may try the handshake with the default key.
    pub allow_anonymous_source: bool,
}

impl fmt::Debug for ServerAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut users: Vec<&String> = self.users.keys().collect();
        users.sort();
        f.debug_struct("ServerAuth")
            .field("hostname", &self.hostname)
            .field("default_shared_key", &self.shared_key.is_some())
            .field("users", &users)
            .field("clients", &self.clients)
            .field("allow_anonymous_source", &self.allow_anonymous_source)
            .finish()
    }
}

/// Why a handshake failed. The messages are for the server's log: they name the client's
/// self-reported hostname and user (escaped) but never a key, password or digest.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuthFailure {
    /// The peer's address matches no client rule and anonymous sources are not allowed.
    #[error("source address {0} is not allowed (no [[server.auth.clients]] entry matches it)")]
    SourceNotAllowed(IpAddr),
    /// The peer sent an event request or heartbeat before authenticating.
    #[error("a request arrived before the handshake completed")]
    RequestBeforeHandshake,
    /// A handshake message other than PING.
    #[error("expected PING, got {0}")]
    UnexpectedMessage(&'static str),
    /// Not decodable, or larger than [`MAX_HANDSHAKE_BYTES`].
    #[error("malformed handshake message: {0}")]
    Malformed(#[source] DecodeError),
    /// The client claims our own hostname.
    #[error("client hostname {0:?} is the server's own hostname")]
    SameHostname(String),
    /// The source matched no rule with a key and there is no default key.
    #[error("no shared key applies to client {0:?} (no default key and no matching client rule with one)")]
    NoSharedKey(String),
    /// The shared-key digest is wrong.
    #[error("shared key mismatch (client {0:?})")]
    SharedKeyMismatch(String),
    /// User auth is on and the PING names no user.
    #[error("no user name given (client {0:?})")]
    MissingUser(String),
    /// The user is not configured.
    #[error("unknown user {user:?} (client {client:?})")]
    UnknownUser {
        /// The client's hostname.
        client: String,
        /// The user name sent.
        user: String,
    },
    /// The password digest is wrong.
    #[error("wrong password for user {user:?} (client {client:?})")]
    PasswordMismatch {
        /// The client's hostname.
        client: String,
        /// The user name sent.
        user: String,
    },
    /// The user exists but may not log in from this source.
    #[error("user {user:?} is not allowed from this source (client {client:?})")]
    UserNotAllowed {
        /// The client's hostname.
        client: String,
        /// The user name sent.
        user: String,
    },
}

impl AuthFailure {
    /// A short, stable label for metrics and structured logs.
    pub fn code(&self) -> &'static str {
        match self {
            AuthFailure::SourceNotAllowed(_) => "source_not_allowed",
            AuthFailure::RequestBeforeHandshake => "request_before_handshake",
            AuthFailure::UnexpectedMessage(_) => "unexpected_message",
            AuthFailure::Malformed(DecodeError::RequestTooLarge { .. }) => "ping_too_large",
            AuthFailure::Malformed(_) => "malformed_ping",
            AuthFailure::SameHostname(_) => "same_hostname",
            AuthFailure::NoSharedKey(_) => "no_shared_key",
            AuthFailure::SharedKeyMismatch(_) => "shared_key_mismatch",
            AuthFailure::MissingUser(_) => "missing_user",
            AuthFailure::UnknownUser { .. } => "unknown_user",
            AuthFailure::PasswordMismatch { .. } => "password_mismatch",
            AuthFailure::UserNotAllowed { .. } => "user_not_allowed",
        }
    }

    /// The reason sent in `PONG false`, or `None` when the connection is closed without a PONG
    /// (no PING was understood, or no HELO was sent). Generic on purpose, as in Fluentd.
    pub fn pong_reason(&self) -> Option<&'static str> {
        match self {
            AuthFailure::SourceNotAllowed(_)
            | AuthFailure::RequestBeforeHandshake
            | AuthFailure::UnexpectedMessage(_)
            | AuthFailure::Malformed(_) => None,
            AuthFailure::SameHostname(_) => {
                Some("same hostname between input and output: invalid configuration")
            }
            AuthFailure::NoSharedKey(_) | AuthFailure::SharedKeyMismatch(_) => {
                Some("shared_key mismatch")
            }
            AuthFailure::MissingUser(_)
            | AuthFailure::UnknownUser { .. }
            | AuthFailure::PasswordMismatch { .. }
            | AuthFailure::UserNotAllowed { .. } => Some("username/password mismatch"),
        }
    }

    /// The encoded `["PONG", false, reason, "", ""]` to send before closing, if any.
    pub fn pong(&self) -> Option<Vec<u8>> {
        let reason = self.pong_reason()?;
        let mut out = Vec::with_capacity(64);
        handshake::encode_pong(
            &Pong {
                auth_result: false,
                reason: reason.to_owned(),
                server_hostname: String::new(),
                shared_key_digest: String::new(),
            },
            &mut out,
        );
        Some(out)
    }
}

/// A successful handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    /// The encoded `["PONG", true, "", hostname, digest]` to send.
    pub pong: Vec<u8>,
    /// The client's self-reported hostname.
    pub client_hostname: String,
    /// The user that logged in, if user auth is on.
    pub username: Option<String>,
    /// The index in [`ServerAuth::clients`] of the rule the peer matched, if any.
    pub client_rule: Option<usize>,
}

/// The handshake of one connection. See the [module docs](self).
#[derive(Debug)]
pub struct ServerHandshake {
    auth: Arc<ServerAuth>,
    rule: Option<usize>,
    nonce: [u8; 16],
    auth_salt: [u8; 16],
    decoder: Decoder,
    done: bool,
}

impl ServerHandshake {
    /// Applies the source ACL to `peer` and draws a fresh nonce and salt.
    ///
    /// # Errors
    /// [`AuthFailure::SourceNotAllowed`]: close the connection without sending HELO.
    pub fn start(auth: Arc<ServerAuth>, peer: IpAddr) -> Result<Self, AuthFailure> {
        let nonce: [u8; 16] = rand::random();
        let salt: [u8; 16] = rand::random();
        Self::with_nonce(auth, peer, nonce, salt)
    }

    /// [`ServerHandshake::start`] with a given nonce and salt (tests and fuzzing).
    ///
    /// # Errors
    /// As [`ServerHandshake::start`].
    pub fn with_nonce(
        auth: Arc<ServerAuth>,
        peer: IpAddr,
        nonce: [u8; 16],
        auth_salt: [u8; 16],
    ) -> Result<Self, AuthFailure> {
        let rule = auth.clients.iter().position(|c| c.source.contains(peer));
        if rule.is_none() && !auth.allow_anonymous_source {
            return Err(AuthFailure::SourceNotAllowed(peer));
        }
        Ok(Self {
            auth,
            rule,
            nonce,
            auth_salt,
            decoder: Decoder::new(Limits {
                max_request_bytes: MAX_HANDSHAKE_BYTES,
                max_decompressed_bytes: MAX_HANDSHAKE_BYTES,
                max_tag_bytes: MAX_HANDSHAKE_BYTES,
            }),
            done: false,
        })
    }

    /// Appends the HELO to send first.
    pub fn helo(&self, out: &mut Vec<u8>) {
        let users = !self.auth.users.is_empty();
        handshake::encode_helo(
            &Helo {
                nonce: Bytes::copy_from_slice(&self.nonce),
                auth_salt: if users {
                    Bytes::copy_from_slice(&self.auth_salt)
                } else {
                    Bytes::new()
                },
                keepalive: true,
            },
            out,
        );
    }

    /// Feeds received bytes. `Ok(None)`: a PING is not complete yet (nothing consumed);
    /// `Ok(Some(_))`: authenticated, the PING was consumed and whatever follows it in `buf` is
    /// the first transport data. After a verdict, the handshake is over: call it no more.
    ///
    /// # Errors
    /// Any [`AuthFailure`]: send [`AuthFailure::pong`] if it has one, then close.
    pub fn receive(&mut self, buf: &mut BytesMut) -> Result<Option<Accepted>, AuthFailure> {
        if self.done {
            return Err(AuthFailure::UnexpectedMessage("data after the verdict"));
        }
        // Only an array can be a PING. The decoder would skip other top-level values (as the
        // transport phase must); here any of them, a heartbeat included, is data sent before
        // authenticating. Checking the first byte also means nothing is ever consumed without
        // a verdict.
        if let Some(&first) = buf.first() {
            if !matches!(first, 0x90..=0x9f | 0xdc | 0xdd) {
                self.done = true;
                return Err(AuthFailure::RequestBeforeHandshake);
            }
        }
        let request = match self.decoder.decode(buf) {
            Ok(None) => return Ok(None),
            Ok(Some(request)) => request,
            Err(e) => {
                self.done = true;
                return Err(AuthFailure::Malformed(e));
            }
        };
        self.done = true;
        match request {
            Request::Handshake(Message::Ping(ping)) => self.check(ping).map(Some),
            Request::Handshake(Message::Helo(_)) => Err(AuthFailure::UnexpectedMessage("HELO")),
            Request::Handshake(Message::Pong(_)) => Err(AuthFailure::UnexpectedMessage("PONG")),
            Request::Events(_) | Request::Heartbeat => Err(AuthFailure::RequestBeforeHandshake),
        }
    }

    fn check(&self, ping: Ping) -> Result<Accepted, AuthFailure> {
        let auth = &*self.auth;
        let client = ping.client_hostname;
        let rule = self.rule.and_then(|i| auth.clients.get(i));
        let key = rule
            .and_then(|r| r.shared_key.as_deref())
            .or(auth.shared_key.as_deref())
            .ok_or_else(|| AuthFailure::NoSharedKey(client.clone()))?;
        let expected = handshake::ping_digest(&ping.shared_key_salt, &client, &self.nonce, key);
        if !ct_eq(expected.as_bytes(), ping.shared_key_digest.as_bytes()) {
            return Err(AuthFailure::SharedKeyMismatch(client));
        }
        // Only after the key: a peer without it cannot confirm a guess of our hostname from
        // the PONG's reason.
        if client == auth.hostname {
            return Err(AuthFailure::SameHostname(client));
        }
        let username = if auth.users.is_empty() {
            None
        } else {
            let user = ping.username;
            if user.is_empty() {
                return Err(AuthFailure::MissingUser(client));
            }
            // An unknown user costs the same digest as a known one (no timing oracle).
            let password = auth.users.get(&user);
            let expected = handshake::password_digest(
                &self.auth_salt,
                &user,
                password.map_or("", String::as_str),
            );
            let matches = ct_eq(expected.as_bytes(), ping.password_digest.as_bytes());
            if password.is_none() {
                return Err(AuthFailure::UnknownUser { client, user });
            }
            if !matches {
                return Err(AuthFailure::PasswordMismatch { client, user });
            }
            if let Some(rule) = rule {
                if !rule.users.is_empty() && !rule.users.contains(&user) {
                    return Err(AuthFailure::UserNotAllowed { client, user });
                }
            }
            Some(user)
        };
        let mut pong = Vec::with_capacity(192);
        handshake::encode_pong(
            &Pong {
                auth_result: true,
                reason: String::new(),
                server_hostname: auth.hostname.clone(),
                shared_key_digest: handshake::pong_digest(
                    &ping.shared_key_salt,
                    &auth.hostname,
                    &self.nonce,
                    key,
                ),
            },
            &mut pong,
        );
        Ok(Accepted {
            pong,
            client_hostname: client,
            username,
            client_rule: self.rule,
        })
    }
}

/// Constant-time equality (for equal lengths; the lengths of hex digests are public).
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::forward::client_session::{ClientAuth, ClientHandshake, HandshakeError};
    use crate::forward::encode_packed_forward;
    use crate::msgpack;

    const NONCE: [u8; 16] = [7; 16];
    const SALT: [u8; 16] = [9; 16];

    fn policy() -> ServerAuth {
        ServerAuth {
            hostname: "aggregator-0".into(),
            shared_key: Some("secret".into()),
            users: HashMap::new(),
            clients: Vec::new(),
            allow_anonymous_source: true,
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// The server's HELO, decoded as a client decodes it.
    fn helo_of(server: &ServerHandshake) -> Helo {
        let mut out = Vec::new();
        server.helo(&mut out);
        let mut buf = BytesMut::from(&out[..]);
        match Decoder::default().decode(&mut buf).unwrap() {
            Some(Request::Handshake(Message::Helo(h))) => h,
            other => panic!("{other:?}"),
        }
    }

    fn pong_of(bytes: &[u8]) -> Pong {
        let mut buf = BytesMut::from(bytes);
        match Decoder::default().decode(&mut buf).unwrap() {
            Some(Request::Handshake(Message::Pong(p))) => p,
            other => panic!("{other:?}"),
        }
    }

    /// Runs a whole handshake between our client state machine and the server's.
    fn run(policy: ServerAuth, peer: &str, client: ClientAuth) -> Result<Accepted, AuthFailure> {
        let mut server = ServerHandshake::with_nonce(Arc::new(policy), ip(peer), NONCE, SALT)?;
        let mut c = ClientHandshake::new(client);
        let mut ping = Vec::new();
        c.on_helo(&helo_of(&server), &mut ping);
        let mut buf = BytesMut::from(&ping[..]);
        let verdict = server
            .receive(&mut buf)
            .map(|a| a.unwrap_or_else(|| panic!("PING incomplete")));
        assert!(buf.is_empty());
        match &verdict {
            Ok(accepted) => {
                let established = c
                    .on_pong(&pong_of(&accepted.pong))
                    .expect("client accepts PONG");
                assert_eq!(established.server_hostname, "aggregator-0");
            }
            Err(failure) => {
                if let Some(pong) = failure.pong() {
                    let err = c.on_pong(&pong_of(&pong)).unwrap_err();
                    assert!(matches!(err, HandshakeError::Rejected { .. }), "{err}");
                }
            }
        }
        verdict
    }

    fn client(key: &str) -> ClientAuth {
        ClientAuth::new(key, "forwarder-0")
    }

    fn user(key: &str, user: &str, password: &str) -> ClientAuth {
        ClientAuth {
            username: user.into(),
            password: password.into(),
            ..client(key)
        }
    }

    #[test]
    fn research_vector_ping_is_accepted_with_the_research_pong() {
        // The worked example of research/protocol.md §1.6, fed as wire bytes.
        let nonce: [u8; 16] = core::array::from_fn(|i| i as u8);
        let salt: [u8; 16] = core::array::from_fn(|i| 0x10 + i as u8);
        let mut policy = policy();
        policy.users.insert("user1".into(), "pass1".into());
        let mut server =
            ServerHandshake::with_nonce(Arc::new(policy), ip("10.0.0.1"), nonce, salt).unwrap();
        let mut ping = Vec::new();
        handshake::encode_ping(
            &Ping {
                client_hostname: "forwarder-0".into(),
                shared_key_salt: Bytes::from_static(b"0123456789abcdef0123456789abcdef"),
                shared_key_digest:
                    "e150503b0270cc82a3c14558f8a3a1b3dc4f2c9a70d47577869b05205bc0b126\
                    3380b1fe03a96f8316f22ae0963b90bf73a69b063114f46bc8c1f34397d7f1cc"
                        .into(),
                username: "user1".into(),
                password_digest: "82051d3e921402f60e40a9b9f1aaeb46adcbf3c5ab5d307c50235f4d669643fd\
                    027fc1f6dee8fd212aab09bacd0e9751c56a0a28434d6e952e2ffa9091efb9c9"
                    .into(),
            },
            &mut ping,
        );
        // One byte at a time: incomplete until the last.
        let mut buf = BytesMut::new();
        let mut verdict = None;
        for (i, b) in ping.iter().enumerate() {
            buf.extend_from_slice(&[*b]);
            match server.receive(&mut buf).unwrap() {
                None => assert!(i + 1 < ping.len()),
                Some(a) => verdict = Some(a),
            }
        }
        let accepted = verdict.expect("accepted");
        assert_eq!(accepted.username.as_deref(), Some("user1"));
        let pong = pong_of(&accepted.pong);
        assert!(pong.auth_result);
        assert_eq!(pong.server_hostname, "aggregator-0");
        assert_eq!(
            pong.shared_key_digest,
            "3da266eb908ec9f17583d53794262e5cb09f3a374b7ea47fb3a31ed6e0259717\
             3238d98bfb19ceb7bf4b190d1bfc16885e61608d208baa2a0ea0b2af76bd4680"
        );
    }

    #[test]
    fn shared_key_and_users() {
        run(policy(), "10.0.0.1", client("secret")).unwrap();
        let e = run(policy(), "10.0.0.1", client("wrong")).unwrap_err();
        assert_eq!(e.code(), "shared_key_mismatch");
        assert_eq!(e.pong_reason(), Some("shared_key mismatch"));

        let mut p = policy();
        p.users.insert("alice".into(), "pw".into());
        let a = run(p.clone(), "10.0.0.1", user("secret", "alice", "pw")).unwrap();
        assert_eq!(a.username.as_deref(), Some("alice"));
        for (c, code) in [
            (user("secret", "alice", "nope"), "password_mismatch"),
            (user("secret", "mallory", "pw"), "unknown_user"),
            (client("secret"), "missing_user"),
            (user("wrong", "alice", "pw"), "shared_key_mismatch"),
        ] {
            let e = run(p.clone(), "10.0.0.1", c).unwrap_err();
            assert_eq!(e.code(), code, "{e}");
            assert!(e.pong().is_some());
            let text = e.to_string();
            assert!(!text.contains("secret") && !text.contains("pw\""), "{text}");
        }
        // Unknown user and wrong password look the same to the client.
        let a = run(p.clone(), "10.0.0.1", user("secret", "mallory", "pw")).unwrap_err();
        let b = run(p, "10.0.0.1", user("secret", "alice", "nope")).unwrap_err();
        assert_eq!(a.pong(), b.pong());
    }

    #[test]
    fn same_hostname_is_refused() {
        let c = ClientAuth::new("secret", "aggregator-0");
        let e = run(policy(), "10.0.0.1", c).unwrap_err();
        assert_eq!(e.code(), "same_hostname");
        // Without the key, a guess of the server's hostname is not confirmed.
        let c = ClientAuth::new("guess", "aggregator-0");
        let e = run(policy(), "10.0.0.1", c).unwrap_err();
        assert_eq!(e.code(), "shared_key_mismatch");
    }

    #[test]
    fn client_rules_acl_and_per_client_keys() {
        let mut p = policy();
        p.allow_anonymous_source = false;
        p.users.insert("alice".into(), "pw".into());
        p.users.insert("bob".into(), "pw2".into());
        p.clients = vec![
            ClientRule {
                source: Source::Network("10.1.0.0/16".parse().unwrap()),
                shared_key: Some("key-for-10.1".into()),
                users: vec!["bob".into()],
            },
            ClientRule {
                source: Source::Host {
                    name: "vm-1".into(),
                    addrs: vec![ip("192.168.5.5")],
                },
                shared_key: None,
                users: Vec::new(),
            },
        ];
        // Outside every rule: refused before HELO.
        let e = ServerHandshake::start(Arc::new(p.clone()), ip("172.16.0.1")).unwrap_err();
        assert_eq!(e.code(), "source_not_allowed");
        assert!(e.pong().is_none());
        // The network's own key, and only bob.
        run(p.clone(), "10.1.2.3", user("key-for-10.1", "bob", "pw2")).unwrap();
        let e = run(p.clone(), "10.1.2.3", user("secret", "bob", "pw2")).unwrap_err();
        assert_eq!(e.code(), "shared_key_mismatch");
        let e = run(p.clone(), "10.1.2.3", user("key-for-10.1", "alice", "pw")).unwrap_err();
        assert_eq!(e.code(), "user_not_allowed");
        // The host rule uses the default key; an IPv4-mapped peer matches it.
        run(
            p.clone(),
            "::ffff:192.168.5.5",
            user("secret", "alice", "pw"),
        )
        .unwrap();
        // Anonymous sources allowed: the default key applies to everyone else.
        p.allow_anonymous_source = true;
        run(p.clone(), "172.16.0.1", user("secret", "alice", "pw")).unwrap();
        // No default key: anonymous sources cannot authenticate at all.
        p.shared_key = None;
        let e = run(p.clone(), "172.16.0.1", user("secret", "alice", "pw")).unwrap_err();
        assert_eq!(e.code(), "no_shared_key");
        run(p, "10.1.2.3", user("key-for-10.1", "bob", "pw2")).unwrap();
    }

    fn server() -> ServerHandshake {
        ServerHandshake::with_nonce(Arc::new(policy()), ip("127.0.0.1"), NONCE, SALT).unwrap()
    }

    #[test]
    fn anything_but_a_ping_fails() {
        // Events before the handshake.
        let mut req = Vec::new();
        let mut entries = Vec::new();
        crate::forward::encode_entry(crate::forward::EventTime::new(1, 0), b"\x80", &mut entries);
        encode_packed_forward("t", &entries, 1, None, &mut req);
        let e = server().receive(&mut BytesMut::from(&req[..])).unwrap_err();
        assert_eq!(e.code(), "request_before_handshake");
        // A heartbeat.
        let e = server()
            .receive(&mut BytesMut::from(&[0xc0u8][..]))
            .unwrap_err();
        assert_eq!(e.code(), "request_before_handshake");
        // A HELO back.
        let mut helo = Vec::new();
        server().helo(&mut helo);
        let e = server()
            .receive(&mut BytesMut::from(&helo[..]))
            .unwrap_err();
        assert_eq!(e.code(), "unexpected_message");
        // A PING with 5 elements is not a PING (it would be an event request of tag "PING").
        let mut short = Vec::new();
        msgpack::write_array_len(&mut short, 5);
        for s in ["PING", "h", "salt", "digest", ""] {
            msgpack::write_str(&mut short, s);
        }
        assert!(server().receive(&mut BytesMut::from(&short[..])).is_err());
        // Invalid msgpack, or a value the transport phase would skip: refused at once.
        let e = server()
            .receive(&mut BytesMut::from(&[0xc1u8][..]))
            .unwrap_err();
        assert_eq!(e.code(), "request_before_handshake");
        let e = server()
            .receive(&mut BytesMut::from(&[0x03u8][..]))
            .unwrap_err();
        assert_eq!(e.code(), "request_before_handshake");
        let e = server()
            .receive(&mut BytesMut::from(&[0x91u8, 0xc1][..]))
            .unwrap_err();
        assert_eq!(e.code(), "malformed_ping");
    }

    #[test]
    fn truncated_and_oversized_pings() {
        let mut full = Vec::new();
        let mut c = ClientHandshake::new(client("secret"));
        let s = server();
        c.on_helo(&helo_of(&s), &mut full);
        // Truncated: waits for more, consuming nothing.
        let mut s = server();
        let mut buf = BytesMut::from(&full[..full.len() - 3]);
        assert!(s.receive(&mut buf).unwrap().is_none());
        assert_eq!(buf.len(), full.len() - 3);
        // Oversized by declaration: a hostname of 1 GiB is refused before its bytes arrive.
        let mut big = Vec::new();
        msgpack::write_array_len(&mut big, 6);
        msgpack::write_str(&mut big, "PING");
        msgpack::write_str_header(&mut big, 1 << 30);
        let e = server().receive(&mut BytesMut::from(&big[..])).unwrap_err();
        assert_eq!(e.code(), "ping_too_large");
        // Oversized in fact.
        let mut big = Vec::new();
        msgpack::write_array_len(&mut big, 6);
        msgpack::write_str(&mut big, "PING");
        msgpack::write_str(&mut big, &"h".repeat(MAX_HANDSHAKE_BYTES));
        let e = server().receive(&mut BytesMut::from(&big[..])).unwrap_err();
        assert_eq!(e.code(), "ping_too_large");
    }

    #[test]
    fn pipelined_data_after_the_ping_is_left_for_the_transport_phase() {
        let mut bytes = Vec::new();
        let mut c = ClientHandshake::new(client("secret"));
        let mut s = server();
        c.on_helo(&helo_of(&s), &mut bytes);
        bytes.push(0xc0);
        let mut buf = BytesMut::from(&bytes[..]);
        assert!(s.receive(&mut buf).unwrap().is_some());
        assert_eq!(&buf[..], &[0xc0]);
    }

    #[test]
    fn debug_output_has_no_secrets() {
        let mut p = policy();
        p.users.insert("alice".into(), "hunter2".into());
        p.clients.push(ClientRule {
            source: Source::Network("10.0.0.0/8".parse().unwrap()),
            shared_key: Some("per-client-key".into()),
            users: Vec::new(),
        });
        let text = format!("{p:?}");
        for secret in ["secret", "hunter2", "per-client-key"] {
            assert!(!text.contains(secret), "{text}");
        }
        assert!(text.contains("alice"), "{text}");
    }

    /// The async client helper against this server, over an in-memory stream.
    mod over_a_stream {
        use std::sync::Arc;

        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        use super::*;
        use crate::forward::client_session::handshake;

        fn policy(users: &[(&str, &str)]) -> Arc<ServerAuth> {
            Arc::new(ServerAuth {
                hostname: "aggregator-0".into(),
                shared_key: Some("secret".into()),
                users: users
                    .iter()
                    .map(|(u, p)| (u.to_string(), p.to_string()))
                    .collect::<HashMap<_, _>>(),
                clients: Vec::new(),
                allow_anonymous_source: true,
            })
        }

        /// A server end over an in-memory duplex: HELO, PING, verdict; returns the server's view.
        async fn serve(
            mut io: tokio::io::DuplexStream,
            policy: Arc<ServerAuth>,
        ) -> Result<String, String> {
            let mut hs = ServerHandshake::start(policy, "127.0.0.1".parse().unwrap())
                .map_err(|e| e.to_string())?;
            let mut out = Vec::new();
            hs.helo(&mut out);
            io.write_all(&out).await.unwrap();
            let mut buf = BytesMut::new();
            loop {
                match hs.receive(&mut buf) {
                    Ok(Some(a)) => {
                        io.write_all(&a.pong).await.unwrap();
                        return Ok(a.client_hostname);
                    }
                    Ok(None) => {}
                    Err(f) => {
                        if let Some(p) = f.pong() {
                            io.write_all(&p).await.unwrap();
                        }
                        return Err(f.code().into());
                    }
                }
                if io.read_buf(&mut buf).await.unwrap() == 0 {
                    return Err("eof".into());
                }
            }
        }

        #[tokio::test]
        async fn handshake_over_a_stream() {
            let (mut c, s) = tokio::io::duplex(4096);
            let server = tokio::spawn(serve(s, policy(&[("u", "p")])));
            let auth = ClientAuth {
                username: "u".into(),
                password: "p".into(),
                ..ClientAuth::new("secret", "forwarder-0")
            };
            let est = handshake(&mut c, &auth).await.unwrap();
            assert_eq!(est.server_hostname, "aggregator-0");
            assert!(est.keepalive);
            assert_eq!(server.await.unwrap(), Ok("forwarder-0".into()));

            let (mut c, s) = tokio::io::duplex(4096);
            let server = tokio::spawn(serve(s, policy(&[])));
            let err = handshake(&mut c, &ClientAuth::new("wrong", "f"))
                .await
                .unwrap_err();
            assert!(
                matches!(&err, HandshakeError::Rejected { reason } if reason == "shared_key mismatch"),
                "{err}"
            );
            assert_eq!(server.await.unwrap(), Err("shared_key_mismatch".into()));
        }
    }
}
