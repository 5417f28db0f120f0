//! Encoders for what our senders put on the wire: canonical entries and (Compressed)
//! PackedForward requests.
//!
//! We always send PackedForward with a `bin` payload (the spec's SHOULD; Fluentd's `str32` is a
//! historical accident) and the classic v1 entry shape `[EventTime, record]`, which every
//! receiver accepts (the v1.5 `[[EventTime, metadata], record]` shape breaks older Fluentd).
//!
//! ```text
//! PackedForward           [ tag, bin(entries), {"size": n, "chunk": id} ]
//! CompressedPackedForward [ tag, bin(gzip(entries)), {"size": n, "chunk": id, "compressed": "gzip"} ]
//! ```
//!
//! `"chunk"` is present only when the sender wants an ack.

use std::io::Write;

use crate::event_time::EventTime;
use crate::msgpack;

/// Appends one canonical entry `[time (fixext8), record]`. `record` must be one raw msgpack map
/// (it is copied as-is).
pub fn encode_entry(time: EventTime, record: &[u8], out: &mut Vec<u8>) {
    out.reserve(1 + EventTime::ENCODED_LEN + record.len());
    out.push(0x92);
    time.write_to(out);
    out.extend_from_slice(record);
}

/// Appends a PackedForward request `[tag, bin(entries), {"size": records, "chunk": id}]`.
/// `entries` is a concatenation of canonical entries (see [`encode_entry`]).
pub fn encode_packed_forward(
    tag: &str,
    entries: &[u8],
    records: u32,
    chunk: Option<&str>,
    out: &mut Vec<u8>,
) {
    write_request(tag, entries, records, chunk, false, out);
}

/// Appends a CompressedPackedForward request: like [`encode_packed_forward`] with `gzipped` (see
/// [`gzip`]) as the payload and `"compressed": "gzip"` in the options.
pub fn encode_compressed_packed_forward(
    tag: &str,
    gzipped: &[u8],
    records: u32,
    chunk: Option<&str>,
    out: &mut Vec<u8>,
) {
    write_request(tag, gzipped, records, chunk, true, out);
}

fn write_request(
    tag: &str,
    payload: &[u8],
    records: u32,
    chunk: Option<&str>,
    compressed: bool,
    out: &mut Vec<u8>,
) {
    out.reserve(tag.len() + payload.len() + 64);
    msgpack::write_array_len(out, 3);
    msgpack::write_str(out, tag);
    msgpack::write_bin(out, payload);
    msgpack::write_map_len(out, 1 + u32::from(chunk.is_some()) + u32::from(compressed));
    msgpack::write_str(out, "size");
    msgpack::write_uint(out, u64::from(records));
    if let Some(chunk) = chunk {
        msgpack::write_str(out, "chunk");
        msgpack::write_str(out, chunk);
    }
    if compressed {
        msgpack::write_str(out, "compressed");
        msgpack::write_str(out, "gzip");
    }
}

/// Gzip-compresses `data` (one member, fast compression level).
pub fn gzip(data: &[u8]) -> Vec<u8> {
    let out = Vec::with_capacity(data.len() / 4 + 64);
    let mut encoder = flate2::write::GzEncoder::new(out, flate2::Compression::fast());
    // Writing into a Vec cannot fail, so neither can the encoder: these never panic.
    encoder
        .write_all(data)
        .expect("gzip into a Vec is infallible");
    encoder.finish().expect("gzip into a Vec is infallible")
}

#[cfg(test)]
mod tests {
    use super::*;
    use rmpv::Value as V;

    #[test]
    fn packed_forward_shape() {
        let mut entries = Vec::new();
        encode_entry(EventTime::new(1, 2), &[0x80], &mut entries);
        let mut out = Vec::new();
        encode_packed_forward("app.web", &entries, 1, Some("abc"), &mut out);
        let v = rmpv::decode::read_value(&mut &out[..]).unwrap();
        assert_eq!(
            v,
            V::Array(vec![
                V::from("app.web"),
                V::Binary(entries.clone()),
                V::Map(vec![
                    (V::from("size"), V::from(1)),
                    (V::from("chunk"), V::from("abc"))
                ]),
            ])
        );
        let mut out = Vec::new();
        encode_compressed_packed_forward("t", &gzip(&entries), 1, None, &mut out);
        let v = rmpv::decode::read_value(&mut &out[..]).unwrap();
        assert_eq!(
            v[2],
            V::Map(vec![
                (V::from("size"), V::from(1)),
                (V::from("compressed"), V::from("gzip")),
            ])
        );
    }

    #[test]
    fn research_frame_prefix() {
        // `92 d7 00 5f ee 66 01 00 00 00 00 81 a1 62 02`: the second entry of the research
        // file's PackedForward example.
        let mut out = Vec::new();
        encode_entry(
            EventTime::new(0x5fee_6601, 0),
            &[0x81, 0xa1, b'b', 0x02],
            &mut out,
        );
        assert_eq!(
            out,
            [0x92, 0xd7, 0x00, 0x5f, 0xee, 0x66, 0x01, 0, 0, 0, 0, 0x81, 0xa1, 0x62, 0x02]
        );
    }

    #[test]
    fn gzip_round_trip() {
        use std::io::Read;
        let data = b"hello hello hello".repeat(100);
        let mut back = Vec::new();
        flate2::read::GzDecoder::new(&gzip(&data)[..])
            .read_to_end(&mut back)
            .unwrap();
        assert_eq!(back, data);
    }
}
