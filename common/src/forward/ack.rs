//! Acknowledgements: `{"ack": <chunk>}`.
//!
//! A request whose options carry `chunk` must be answered with a one-entry map holding the same
//! value; the sender re-sends the batch until it sees it. "The same value" is meant literally:
//! Fluentd's ids end in `\n`, Fluent Bit's are hex, others may send bin. So the server keeps
//! the *raw msgpack encoding* of the option value ([`EventBatch::chunk`]) and echoes those bytes,
//! never a re-encoding of a parsed string.
//!
//! ```text
//! 81 a3 61 63 6b <chunk value, verbatim>
//! {  "ack"       "p8n9gmxTQVC8/nh2wlKKeQ==\n" (b9 ...)
//! ```
//!
//! [`EventBatch::chunk`]: super::EventBatch::chunk

use bytes::{Bytes, BytesMut};

use super::error::DecodeError;
use crate::msgpack::{self, Scan, Token, DEFAULT_MAX_DEPTH};

/// The largest ack frame a client accepts. Chunk ids are a few dozen bytes; anything this big is
/// not an ack.
pub const MAX_ACK_BYTES: usize = 64 * 1024;

/// Appends `{"ack": <chunk_raw>}`. `chunk_raw` is the raw msgpack value of the request's `chunk`
/// option ([`EventBatch::chunk`](super::EventBatch::chunk)), copied verbatim.
pub fn encode_ack(chunk_raw: &[u8], out: &mut Vec<u8>) {
    out.reserve(5 + chunk_raw.len());
    out.extend_from_slice(&[0x81, 0xa3, b'a', b'c', b'k']);
    out.extend_from_slice(chunk_raw);
}

/// Client side: consumes one ack map from the start of `buf` and returns the raw msgpack
/// encoding of its `ack` value (compare it with the `chunk` value that was sent). `Ok(None)`
/// means more bytes are needed; nothing is consumed then.
///
/// # Errors
/// [`DecodeError::RequestTooLarge`] for a frame over [`MAX_ACK_BYTES`] (known as soon as it is
/// declared), [`DecodeError::Malformed`] for anything but a map with an `ack` key, and
/// [`DecodeError::Msgpack`] for invalid msgpack. The connection should be closed.
pub fn decode_ack(buf: &mut BytesMut) -> Result<Option<Bytes>, DecodeError> {
    let too_large = DecodeError::RequestTooLarge {
        limit: MAX_ACK_BYTES,
    };
    let len = match msgpack::scan_value(buf, DEFAULT_MAX_DEPTH)? {
        Scan::Complete(len) if len > MAX_ACK_BYTES => return Err(too_large),
        Scan::Complete(len) => len,
        Scan::Incomplete { min_len } if min_len > MAX_ACK_BYTES => return Err(too_large),
        Scan::Incomplete { .. } => return Ok(None),
    };
    let frame = buf.split_to(len).freeze();
    let mut cur: &[u8] = &frame;
    let pairs = match msgpack::read_token(&mut cur)? {
        Token::Map(n) => n,
        _ => return Err(DecodeError::Malformed("ack response is not a map")),
    };
    let mut ack = None;
    for _ in 0..pairs {
        let key = msgpack::skip_value(&mut cur, DEFAULT_MAX_DEPTH)?;
        let value = msgpack::skip_value(&mut cur, DEFAULT_MAX_DEPTH)?;
        if key == b"\xa3ack" {
            ack = Some(value);
        }
    }
    match ack {
        Some(value) => Ok(Some(frame.slice_ref(value))),
        None => Err(DecodeError::Malformed("ack response has no \"ack\" key")),
    }
}

/// The content of a raw msgpack str or bin value (e.g. [`EventBatch::chunk`]), `None` if `raw`
/// is anything else or has trailing bytes.
///
/// [`EventBatch::chunk`]: super::EventBatch::chunk
pub fn chunk_id_bytes(raw: &[u8]) -> Option<&[u8]> {
    let mut cur = raw;
    let id = msgpack::read_str_or_bin(&mut cur).ok()?;
    cur.is_empty().then_some(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn research_ack_frame() {
        // `81 a3 61 63 6b b8 <24 bytes>` from the research file (a 24-byte id, no newline).
        let id = b"p8n9gmxTQVC8/nh2wlKKeQ==";
        let mut raw = vec![0xb8];
        raw.extend_from_slice(id);
        let mut out = Vec::new();
        encode_ack(&raw, &mut out);
        let mut expected = vec![0x81, 0xa3, 0x61, 0x63, 0x6b, 0xb8];
        expected.extend_from_slice(id);
        assert_eq!(out, expected);
        assert_eq!(chunk_id_bytes(&raw), Some(&id[..]));
    }

    #[test]
    fn decode_ack_round_trip_and_partial() {
        let raw = rmp_serde::to_vec("p8n9gmxTQVC8/nh2wlKKeQ==\n").unwrap();
        let mut wire = Vec::new();
        encode_ack(&raw, &mut wire);
        encode_ack(&[0xc4, 2, 1, 2], &mut wire);
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for &b in &wire {
            buf.extend_from_slice(&[b]);
            while let Some(ack) = decode_ack(&mut buf).unwrap() {
                got.push(ack);
            }
        }
        assert_eq!(
            got,
            vec![Bytes::from(raw), Bytes::from_static(&[0xc4, 2, 1, 2])]
        );
        assert!(buf.is_empty());
        assert_eq!(chunk_id_bytes(&got[1]), Some(&[1u8, 2][..]));
    }

    #[test]
    fn decode_ack_rejects() {
        let mut buf = BytesMut::from(&[0x91, 0x01][..]);
        assert!(matches!(
            decode_ack(&mut buf),
            Err(DecodeError::Malformed(_))
        ));
        let mut buf = BytesMut::from(&[0x81, 0xa1, b'x', 0x01][..]);
        assert!(matches!(
            decode_ack(&mut buf),
            Err(DecodeError::Malformed(_))
        ));
        let mut buf = BytesMut::from(&[0x81, 0xa3, b'a', b'c', b'k', 0xc6, 0, 1, 0, 0][..]);
        assert!(matches!(
            decode_ack(&mut buf),
            Err(DecodeError::RequestTooLarge { .. })
        ));
        assert_eq!(chunk_id_bytes(&[0x01]), None);
        assert_eq!(chunk_id_bytes(&[0xa1, b'a', 0x00]), None);
    }
}
