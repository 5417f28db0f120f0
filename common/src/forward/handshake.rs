//! The shared-key handshake: HELO, PING, PONG.
//!
//! Only used when the server is configured with a shared key. It authenticates both ends (and
//! optionally a user) but does not encrypt: use TLS for that. All digests are lowercase hex
//! SHA-512 over the raw bytes of the concatenated fields.
//!
//! ## Wire format
//!
//! ```text
//! server -> client  ["HELO", {"nonce": <16 bytes>, "auth": <16-byte salt or "">, "keepalive": bool}]
//! client -> server  ["PING", client_hostname, shared_key_salt,
//!                    hex(sha512(shared_key_salt ‖ client_hostname ‖ nonce ‖ shared_key)),
//!                    username | "", hex(sha512(auth_salt ‖ username ‖ password)) | ""]
//! server -> client  ["PONG", true, "", server_hostname,
//!                    hex(sha512(shared_key_salt ‖ server_hostname ‖ nonce ‖ shared_key))]
//!                 | ["PONG", false, reason, "", ""]          (then the server closes)
//! ```
//!
//! The [`Decoder`](super::Decoder) recognises these arrays by their first element *and* arity
//! (2 with a map, 6, 5), shapes no event request has, and returns them as
//! [`Request::Handshake`](super::Request::Handshake). Policy (which keys, ACLs, hostname checks)
//! belongs to the server and client, not here.

use bytes::Bytes;
use sha2::{Digest, Sha512};

use super::error::DecodeError;
use crate::msgpack::{self, Token, DEFAULT_MAX_DEPTH};

/// Largest handshake message accepted, in bytes (a real PING is about 250 bytes).
pub const MAX_HANDSHAKE_BYTES: usize = 4096;

/// The server's greeting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Helo {
    /// Per-connection random bytes mixed into both shared-key digests.
    pub nonce: Bytes,
    /// Salt for the user password digest; empty when the server does not require user auth.
    pub auth_salt: Bytes,
    /// `false`: the server closes the connection after each request.
    pub keepalive: bool,
}

/// The client's authentication.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ping {
    /// The client's self-reported hostname (also selects per-client keys on the server).
    pub client_hostname: String,
    /// Client-chosen salt for the shared-key digests.
    pub shared_key_salt: Bytes,
    /// [`ping_digest`] as computed by the client.
    pub shared_key_digest: String,
    /// Empty without user auth.
    pub username: String,
    /// [`password_digest`], empty without user auth.
    pub password_digest: String,
}

/// The server's verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pong {
    /// Whether the client is authenticated.
    pub auth_result: bool,
    /// Why not, when `auth_result` is false; empty otherwise.
    pub reason: String,
    /// The server's hostname (a client must reject one equal to its own).
    pub server_hostname: String,
    /// [`pong_digest`] as computed by the server; empty on failure.
    pub shared_key_digest: String,
}

/// Any handshake message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// `["HELO", {...}]`
    Helo(Helo),
    /// `["PING", ...]` (6 elements)
    Ping(Ping),
    /// `["PONG", ...]` (5 elements)
    Pong(Pong),
}

/// Appends a HELO message. Nonce and salt are written as `bin`, as Fluentd does.
pub fn encode_helo(helo: &Helo, out: &mut Vec<u8>) {
    msgpack::write_array_len(out, 2);
    msgpack::write_str(out, "HELO");
    msgpack::write_map_len(out, 3);
    msgpack::write_str(out, "nonce");
    msgpack::write_bin(out, &helo.nonce);
    msgpack::write_str(out, "auth");
    msgpack::write_bin(out, &helo.auth_salt);
    msgpack::write_str(out, "keepalive");
    msgpack::write_bool(out, helo.keepalive);
}

/// Appends a PING message. The salt is written as `str` when it is UTF-8 (Fluentd's salts are
/// hex text), `bin` otherwise.
pub fn encode_ping(ping: &Ping, out: &mut Vec<u8>) {
    msgpack::write_array_len(out, 6);
    msgpack::write_str(out, "PING");
    msgpack::write_str(out, &ping.client_hostname);
    match std::str::from_utf8(&ping.shared_key_salt) {
        Ok(salt) => msgpack::write_str(out, salt),
        Err(_) => msgpack::write_bin(out, &ping.shared_key_salt),
    }
    msgpack::write_str(out, &ping.shared_key_digest);
    msgpack::write_str(out, &ping.username);
    msgpack::write_str(out, &ping.password_digest);
}

/// Appends a PONG message.
pub fn encode_pong(pong: &Pong, out: &mut Vec<u8>) {
    msgpack::write_array_len(out, 5);
    msgpack::write_str(out, "PONG");
    msgpack::write_bool(out, pong.auth_result);
    msgpack::write_str(out, &pong.reason);
    msgpack::write_str(out, &pong.server_hostname);
    msgpack::write_str(out, &pong.shared_key_digest);
}

/// The client's shared-key digest: `hex(sha512(salt ‖ client_hostname ‖ nonce ‖ shared_key))`.
pub fn ping_digest(
    shared_key_salt: &[u8],
    client_hostname: &str,
    nonce: &[u8],
    shared_key: &str,
) -> String {
    sha512_hex(&[
        shared_key_salt,
        client_hostname.as_bytes(),
        nonce,
        shared_key.as_bytes(),
    ])
}

/// The server's shared-key digest: `hex(sha512(salt ‖ server_hostname ‖ nonce ‖ shared_key))`.
pub fn pong_digest(
    shared_key_salt: &[u8],
    server_hostname: &str,
    nonce: &[u8],
    shared_key: &str,
) -> String {
    sha512_hex(&[
        shared_key_salt,
        server_hostname.as_bytes(),
        nonce,
        shared_key.as_bytes(),
    ])
}

/// The user password digest: `hex(sha512(auth_salt ‖ username ‖ password))`.
pub fn password_digest(auth_salt: &[u8], username: &str, password: &str) -> String {
    sha512_hex(&[auth_salt, username.as_bytes(), password.as_bytes()])
}

fn sha512_hex(parts: &[&[u8]]) -> String {
    let mut hasher = Sha512::new();
    for part in parts {
        hasher.update(part);
    }
    hex::encode(hasher.finalize())
}

// --- decoding (called by the codec once it has read the array header and the first string) ---

fn utf8(bytes: &[u8], what: &'static str) -> Result<String, DecodeError> {
    std::str::from_utf8(bytes)
        .map(str::to_owned)
        .map_err(|_| DecodeError::Malformed(what))
}

fn string(cur: &mut &[u8], what: &'static str) -> Result<String, DecodeError> {
    let bytes = msgpack::read_str_or_bin(cur).map_err(|_| DecodeError::Malformed(what))?;
    utf8(bytes, what)
}

fn bytes(cur: &mut &[u8], what: &'static str) -> Result<Bytes, DecodeError> {
    let raw = msgpack::read_str_or_bin(cur).map_err(|_| DecodeError::Malformed(what))?;
    Ok(Bytes::copy_from_slice(raw))
}

/// The map of `["HELO", map]`. Unknown keys are ignored; `auth` defaults to empty and
/// `keepalive` to true; `nonce` is required.
pub(crate) fn parse_helo(cur: &mut &[u8]) -> Result<Helo, DecodeError> {
    let pairs = msgpack::read_map_len(cur)?;
    let (mut nonce, mut auth_salt, mut keepalive) = (None, Bytes::new(), true);
    for _ in 0..pairs {
        let key = msgpack::skip_value(cur, DEFAULT_MAX_DEPTH)?;
        let key = match msgpack::read_token(&mut &key[..])? {
            Token::Str(key) => key,
            _ => {
                msgpack::skip_value(cur, DEFAULT_MAX_DEPTH)?;
                continue;
            }
        };
        match key {
            b"nonce" => nonce = Some(bytes(cur, "HELO nonce is not a string")?),
            b"auth" => auth_salt = bytes(cur, "HELO auth is not a string")?,
            b"keepalive" => {
                keepalive = msgpack::read_bool(cur)
                    .map_err(|_| DecodeError::Malformed("HELO keepalive is not a bool"))?;
            }
            _ => {
                msgpack::skip_value(cur, DEFAULT_MAX_DEPTH)?;
            }
        }
    }
    let nonce = nonce.ok_or(DecodeError::Malformed("HELO without nonce"))?;
    Ok(Helo {
        nonce,
        auth_salt,
        keepalive,
    })
}

/// The 5 elements after `"PING"`.
pub(crate) fn parse_ping(cur: &mut &[u8]) -> Result<Ping, DecodeError> {
    Ok(Ping {
        client_hostname: string(cur, "PING hostname is not a string")?,
        shared_key_salt: bytes(cur, "PING salt is not a string")?,
        shared_key_digest: string(cur, "PING digest is not a string")?,
        username: string(cur, "PING username is not a string")?,
        password_digest: string(cur, "PING password digest is not a string")?,
    })
}

/// The 4 elements after `"PONG"`.
pub(crate) fn parse_pong(cur: &mut &[u8]) -> Result<Pong, DecodeError> {
    let auth_result = msgpack::read_bool(cur)
        .map_err(|_| DecodeError::Malformed("PONG auth result is not a bool"))?;
    Ok(Pong {
        auth_result,
        reason: string(cur, "PONG reason is not a string")?,
        server_hostname: string(cur, "PONG hostname is not a string")?,
        shared_key_digest: string(cur, "PONG digest is not a string")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn research_digest_vector() {
        let nonce: Vec<u8> = (0x00..=0x0f).collect();
        let auth_salt: Vec<u8> = (0x10..=0x1f).collect();
        let salt = b"0123456789abcdef0123456789abcdef";
        assert_eq!(
            ping_digest(salt, "forwarder-0", &nonce, "secret"),
            "e150503b0270cc82a3c14558f8a3a1b3dc4f2c9a70d47577869b05205bc0b126\
             3380b1fe03a96f8316f22ae0963b90bf73a69b063114f46bc8c1f34397d7f1cc"
        );
        assert_eq!(
            pong_digest(salt, "aggregator-0", &nonce, "secret"),
            "3da266eb908ec9f17583d53794262e5cb09f3a374b7ea47fb3a31ed6e0259717\
             3238d98bfb19ceb7bf4b190d1bfc16885e61608d208baa2a0ea0b2af76bd4680"
        );
        assert_eq!(
            password_digest(&auth_salt, "user1", "pass1"),
            "82051d3e921402f60e40a9b9f1aaeb46adcbf3c5ab5d307c50235f4d669643fd\
             027fc1f6dee8fd212aab09bacd0e9751c56a0a28434d6e952e2ffa9091efb9c9"
        );
    }

    #[test]
    fn encoders_match_independent_encoder() {
        use rmpv::Value as V;
        let helo = Helo {
            nonce: Bytes::from_static(&[1; 16]),
            auth_salt: Bytes::new(),
            keepalive: false,
        };
        let mut out = Vec::new();
        encode_helo(&helo, &mut out);
        assert_eq!(
            rmpv::decode::read_value(&mut &out[..]).unwrap(),
            V::Array(vec![
                V::from("HELO"),
                V::Map(vec![
                    (V::from("nonce"), V::Binary(vec![1; 16])),
                    (V::from("auth"), V::Binary(vec![])),
                    (V::from("keepalive"), V::Boolean(false)),
                ])
            ])
        );
        let ping = Ping {
            client_hostname: "h".into(),
            shared_key_salt: Bytes::from_static(b"salt"),
            shared_key_digest: "d".into(),
            username: String::new(),
            password_digest: String::new(),
        };
        let mut out = Vec::new();
        encode_ping(&ping, &mut out);
        assert_eq!(
            rmpv::decode::read_value(&mut &out[..]).unwrap(),
            V::Array(vec![
                V::from("PING"),
                V::from("h"),
                V::from("salt"),
                V::from("d"),
                V::from(""),
                V::from("")
            ])
        );
    }
}
