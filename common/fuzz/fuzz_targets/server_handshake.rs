//! Drives the server-side handshake state machine (`forward::session::ServerHandshake`) with
//! arbitrary bytes, as an unauthenticated peer would.
//!
//! Layout of the input: byte 0 picks the policy (user auth on/off, anonymous sources, which
//! source address) and byte 1 where the stream is split; the rest is what the peer sends, fed in
//! two pieces. Checked:
//! - nothing panics, and the machine reaches at most one verdict;
//! - a verdict of "authenticated" is only ever reached with the right digests: the consumed
//!   PING is re-derived and checked here independently;
//! - a PING built from the fuzzer's bytes (as hostname and salt) with the right key is
//!   accepted, and the same PING with one digest byte changed is refused.
#![no_main]

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use logferry_common::forward::handshake::{self, Message, Ping};
use logferry_common::forward::session::{ClientRule, ServerAuth, ServerHandshake, Source};
use logferry_common::forward::{Decoder, Request};

const NONCE: [u8; 16] = [0x5a; 16];
const SALT: [u8; 16] = [0xa5; 16];

fn policy(flags: u8) -> ServerAuth {
    let mut users = HashMap::new();
    if flags & 1 != 0 {
        users.insert("alice".to_string(), "pw".to_string());
    }
    ServerAuth {
        hostname: "aggregator".into(),
        shared_key: Some("key".into()),
        users,
        clients: vec![ClientRule {
            source: Source::Network("10.0.0.0/8".parse().unwrap()),
            shared_key: Some("own-key".into()),
            users: Vec::new(),
        }],
        allow_anonymous_source: flags & 2 != 0,
    }
}

fn key_for(peer: IpAddr) -> &'static str {
    if matches!(peer, IpAddr::V4(v4) if v4.octets()[0] == 10) {
        "own-key"
    } else {
        "key"
    }
}

fuzz_target!(|data: &[u8]| {
    let [flags, split, rest @ ..] = data else {
        return;
    };
    let auth = Arc::new(policy(*flags));
    let peer: IpAddr = if flags & 4 != 0 {
        "10.1.2.3"
    } else {
        "192.0.2.1"
    }
    .parse()
    .unwrap();
    let Ok(mut server) = ServerHandshake::with_nonce(Arc::clone(&auth), peer, NONCE, SALT) else {
        assert!(
            !auth.allow_anonymous_source,
            "refused an anonymous source although allowed"
        );
        return;
    };
    let mut helo = Vec::new();
    server.helo(&mut helo);

    // 1. Arbitrary bytes.
    let split = usize::from(*split).min(rest.len());
    let mut buf = BytesMut::new();
    for piece in [&rest[..split], &rest[split..]] {
        buf.extend_from_slice(piece);
        let before = buf.clone();
        match server.receive(&mut buf) {
            Ok(None) => {
                assert_eq!(
                    buf, before,
                    "nothing is consumed while the PING is incomplete"
                );
                continue;
            }
            Ok(Some(accepted)) => {
                // Re-derive: the consumed bytes must be a PING with the right digests.
                let consumed = before.len() - buf.len();
                let mut ping_bytes = BytesMut::from(&before[..consumed]);
                let Ok(Some(Request::Handshake(Message::Ping(ping)))) =
                    Decoder::default().decode(&mut ping_bytes)
                else {
                    panic!("accepted something that is not a PING");
                };
                let key = key_for(peer);
                assert_eq!(
                    ping.shared_key_digest,
                    handshake::ping_digest(
                        &ping.shared_key_salt,
                        &ping.client_hostname,
                        &NONCE,
                        key
                    )
                );
                assert_ne!(ping.client_hostname, "aggregator");
                if !auth.users.is_empty() {
                    assert_eq!(ping.username, "alice");
                    assert_eq!(
                        ping.password_digest,
                        handshake::password_digest(&SALT, "alice", "pw")
                    );
                }
                assert!(!accepted.pong.is_empty());
            }
            Err(failure) => {
                let _ = failure.code();
                let _ = failure.pong();
                let _ = failure.to_string();
            }
        }
        // A verdict ends the handshake: further bytes are refused, never accepted.
        buf.extend_from_slice(&helo);
        assert!(server.receive(&mut buf).is_err());
        break;
    }

    // 2. A well-formed PING made of the fuzzer's bytes, right and then wrong.
    let hostname = String::from_utf8_lossy(&rest[..split.min(64)]).into_owned();
    let salt = Bytes::copy_from_slice(&rest[split..rest.len().min(split + 32)]);
    let key = key_for(peer);
    let users = !auth.users.is_empty();
    let mut ping = Ping {
        shared_key_digest: handshake::ping_digest(&salt, &hostname, &NONCE, key),
        client_hostname: hostname.clone(),
        shared_key_salt: salt,
        username: if users { "alice".into() } else { String::new() },
        password_digest: if users {
            handshake::password_digest(&SALT, "alice", "pw")
        } else {
            String::new()
        },
    };
    let verdict = |ping: &Ping| {
        let mut s = ServerHandshake::with_nonce(Arc::clone(&auth), peer, NONCE, SALT).unwrap();
        let mut bytes = Vec::new();
        handshake::encode_ping(ping, &mut bytes);
        s.receive(&mut BytesMut::from(&bytes[..]))
    };
    match verdict(&ping) {
        Ok(Some(_)) => assert_ne!(hostname, "aggregator"),
        Ok(None) => panic!("a whole PING is incomplete"),
        Err(e) => assert!(
            hostname == "aggregator" || e.code() == "ping_too_large",
            "a correct PING was refused: {e}"
        ),
    }
    let mut digest = ping.shared_key_digest.into_bytes();
    digest[0] = if digest[0] == b'0' { b'1' } else { b'0' };
    ping.shared_key_digest = String::from_utf8(digest).unwrap();
    assert!(
        !matches!(verdict(&ping), Ok(Some(_))),
        "a wrong digest was accepted"
    );
});
