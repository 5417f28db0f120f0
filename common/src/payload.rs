//! The payload of a chunk frame: one Forward PackedForward request, stored as it is sent.
//!
//! Both binaries buffer what they will forward in [`chunk`](crate::chunk) files, one batch of
//! records of one tag per frame, and both store it as a finished request:
//!
//! ```text
//! [ tag: str, entries: bin, { "size": records, "chunk": id? } ]
//!
//! 93 | a3 61 70 70 | c4 0f <15 bytes of entries> | 81 a4 73 69 7a 65 01            (no id)
//! 93 | a3 61 70 70 | c4 0f <15 bytes of entries> | 82 a4 73 69 7a 65 01 a5 63 68 75 6e 6b a2 63 31
//!      "app"         bin8, 15 bytes                {"size": 1}   /   {"size": 1, "chunk": "c1"}
//! ```
//!
//! - `entries` are canonical (`[EventTime fixext8, map]` entries, see
//!   [`forward::entries`](crate::forward::entries)); this module copies them and never looks
//!   inside.
//! - `"size"` is the number of entries; it is always written.
//! - `"chunk"` is present when the sender wants an ack (the forwarder draws one id per frame and
//!   keeps it across re-sends); the aggregator stores frames without one.
//!
//! Because a frame is a valid Forward request, it is sent (or replayed from a dead letter)
//! byte for byte, and the entries pass from the socket to the disk without being decoded record
//! by record. The encoding is what stored chunks hold, so it must never change.
//!
//! Pure: bytes in, values out, no IO.

use crate::forward::{encode_compressed_packed_forward, encode_packed_forward, gzip};
use crate::msgpack;

/// Nesting allowed in an option value: options are scalars, so anything deeper is foreign.
const OPTION_MAX_DEPTH: usize = 4;

/// A decoded frame payload, borrowing from the frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Payload<'a> {
    /// The tag every record of the frame carries.
    pub tag: &'a str,
    /// Concatenated canonical entries, as stored.
    pub entries: &'a [u8],
    /// Entries in [`Payload::entries`] (the `size` option).
    pub records: u32,
    /// The raw msgpack encoding of the `chunk` option (what an ack echoes), `None` when the
    /// frame asks for no ack.
    pub chunk_raw: Option<&'a [u8]>,
}

/// Why a frame payload could not be read: a frame that passed its CRC but was not written by
/// [`encode`] or [`encode_with_chunk_id`] (a bug or a foreign file, never a torn write).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("chunk frame payload is not a PackedForward request: {0}")]
pub struct PayloadError(&'static str);

/// Encodes a frame payload that asks for no ack (no `chunk` option).
pub fn encode(tag: &str, entries: &[u8], records: u32) -> Vec<u8> {
    encode_request(tag, entries, records, None)
}

/// Encodes a frame payload whose `chunk` option is `chunk_id`, so the receiver acks it.
pub fn encode_with_chunk_id(tag: &str, entries: &[u8], records: u32, chunk_id: &str) -> Vec<u8> {
    encode_request(tag, entries, records, Some(chunk_id))
}

fn encode_request(tag: &str, entries: &[u8], records: u32, chunk_id: Option<&str>) -> Vec<u8> {
    let mut out = Vec::with_capacity(entries.len() + tag.len() + 64);
    encode_packed_forward(tag, entries, records, chunk_id, &mut out);
    out
}

/// Decodes a frame payload written by [`encode`] or [`encode_with_chunk_id`]. Entries may also
/// be a str (as Fluentd writes them); option keys other than `size` and `chunk` are ignored.
///
/// # Errors
/// [`PayloadError`] when `buf` is not a 3-element array of a UTF-8 str tag, str or bin entries
/// and an options map with an unsigned 32-bit `size`.
pub fn decode(buf: &[u8]) -> Result<Payload<'_>, PayloadError> {
    let mut cur = buf;
    let n = msgpack::read_array_len(&mut cur).map_err(|_| PayloadError("not an array"))?;
    if n != 3 {
        return Err(PayloadError("not 3 elements"));
    }
    let tag = msgpack::read_str(&mut cur).map_err(|_| PayloadError("tag is not a str"))?;
    let tag = std::str::from_utf8(tag).map_err(|_| PayloadError("tag is not UTF-8"))?;
    let entries =
        msgpack::read_str_or_bin(&mut cur).map_err(|_| PayloadError("entries are not bin"))?;
    let pairs =
        msgpack::read_map_len(&mut cur).map_err(|_| PayloadError("options are not a map"))?;
    let mut records = None;
    let mut chunk_raw = None;
    for _ in 0..pairs {
        let key = msgpack::read_str(&mut cur).map_err(|_| PayloadError("option key"))?;
        let value = msgpack::skip_value(&mut cur, OPTION_MAX_DEPTH)
            .map_err(|_| PayloadError("option value"))?;
        match key {
            b"size" => {
                let mut v = value;
                records = msgpack::read_u64(&mut v)
                    .ok()
                    .and_then(|r| u32::try_from(r).ok());
            }
            b"chunk" => chunk_raw = Some(value),
            _ => {}
        }
    }
    Ok(Payload {
        tag,
        entries,
        records: records.ok_or(PayloadError("no size"))?,
        chunk_raw,
    })
}

impl Payload<'_> {
    /// The same request as a CompressedPackedForward: entries gzipped, `"compressed": "gzip"`
    /// added, tag, size and chunk id kept. `None` when the chunk id is not a str (only a str id
    /// is re-encoded; such a frame was not written by this module).
    pub fn to_compressed(&self) -> Option<Vec<u8>> {
        let id = match self.chunk_raw {
            Some(raw) => {
                let mut cur = raw;
                let id = msgpack::read_str(&mut cur).ok()?;
                Some(std::str::from_utf8(id).ok()?)
            }
            None => None,
        };
        let mut out = Vec::with_capacity(self.entries.len() / 4 + 64);
        encode_compressed_packed_forward(self.tag, &gzip(self.entries), self.records, id, &mut out);
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event_time::EventTime;
    use crate::forward::ack::chunk_id_bytes;
    use crate::forward::{encode_entry, Decoder, Request};
    use bytes::BytesMut;
    use proptest::prelude::*;

    /// One entry `[EventTime(1, 2), {"a": 1}]`: 15 bytes.
    fn one_entry() -> Vec<u8> {
        let mut entries = Vec::new();
        encode_entry(
            EventTime::new(1, 2),
            &[0x81, 0xa1, b'a', 0x01],
            &mut entries,
        );
        entries
    }

    #[test]
    fn encoding_is_pinned() {
        let entries = one_entry();
        let mut head = vec![0x93, 0xa3, b'a', b'p', b'p', 0xc4, 0x0f];
        head.extend_from_slice(&entries);
        let mut plain = head.clone();
        plain.extend_from_slice(&[0x81, 0xa4, b's', b'i', b'z', b'e', 0x01]);
        assert_eq!(encode("app", &entries, 1), plain);
        let mut acked = head;
        acked.extend_from_slice(&[0x82, 0xa4, b's', b'i', b'z', b'e', 0x01]);
        acked.extend_from_slice(&[0xa5, b'c', b'h', b'u', b'n', b'k', 0xa2, b'c', b'1']);
        assert_eq!(encode_with_chunk_id("app", &entries, 1, "c1"), acked);
    }

    #[test]
    fn round_trip() {
        let entries = one_entry();
        let payload = encode("app.web", &entries, 1);
        assert_eq!(
            decode(&payload).unwrap(),
            Payload {
                tag: "app.web",
                entries: &entries,
                records: 1,
                chunk_raw: None,
            }
        );
        let acked = encode_with_chunk_id("app.web", &entries, 1, "c1");
        let p = decode(&acked).unwrap();
        assert_eq!(p.chunk_raw, Some(&[0xa2, b'c', b'1'][..]));
        assert_eq!((p.tag, p.entries, p.records), ("app.web", &entries[..], 1));
    }

    #[test]
    fn rejects_what_it_did_not_write() {
        let payload = encode("app.web", &one_entry(), 1);
        assert!(decode(&payload[..payload.len() - 10]).is_err());
        assert!(decode(b"\xc0").is_err());
        assert!(decode(b"\x93\xa1x").is_err());
        // No size.
        assert!(decode(&[0x93, 0xa1, b'x', 0xc4, 0x00, 0x80]).is_err());
        // Two elements (Forward mode without options).
        assert!(decode(&[0x92, 0xa1, b'x', 0xc4, 0x00]).is_err());
    }

    #[test]
    fn compressed_form_keeps_tag_size_and_id() {
        let entries = one_entry();
        for id in [Some("0123456789abcdef0123456789abcdef"), None] {
            let payload = match id {
                Some(id) => encode_with_chunk_id("kube.x", &entries, 1, id),
                None => encode("kube.x", &entries, 1),
            };
            let gz = decode(&payload).unwrap().to_compressed().unwrap();
            let mut buf = BytesMut::from(&gz[..]);
            let Some(Request::Events(batch)) = Decoder::default().decode(&mut buf).unwrap() else {
                panic!("not an event request");
            };
            assert_eq!(batch.tag, "kube.x");
            assert_eq!(&batch.entries[..], &entries[..]);
            assert_eq!(batch.records, 1);
            let got = batch.chunk.as_deref().and_then(chunk_id_bytes);
            assert_eq!(got, id.map(str::as_bytes));
        }
        let bin_id = Payload {
            tag: "t",
            entries: &entries,
            records: 1,
            chunk_raw: Some(&[0xc4, 0x01, 0x00]),
        };
        assert_eq!(bin_id.to_compressed(), None);
    }

    proptest! {
        #[test]
        fn any_payload_round_trips(
            tag in ".{0,40}",
            entries in proptest::collection::vec(any::<u8>(), 0..300),
            records in any::<u32>(),
            id in proptest::option::of("[0-9a-f]{1,40}"),
        ) {
            let bytes = match &id {
                Some(id) => encode_with_chunk_id(&tag, &entries, records, id),
                None => encode(&tag, &entries, records),
            };
            let p = decode(&bytes).unwrap();
            prop_assert_eq!(p.tag, tag.as_str());
            prop_assert_eq!(p.entries, &entries[..]);
            prop_assert_eq!(p.records, records);
            prop_assert_eq!(p.chunk_raw.and_then(chunk_id_bytes), id.as_deref().map(str::as_bytes));
        }
    }
}
