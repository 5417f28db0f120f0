//! What the aggregator stores in a chunk frame: one Forward PackedForward request.
//!
//! ```text
//! [ tag: str, entries: bin (canonical [EventTime, map] entries), { "size": records } ]
//! ```
//! Storing a valid Forward request means a chunk frame can be replayed to any Forward receiver
//! as it is (dead-letter replay), and that the entries pass from the socket to the disk without
//! being decoded record by record.

use logferry_common::forward::encode_packed_forward;

/// Encodes one frame payload.
pub fn encode(tag: &str, entries: &[u8], records: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(entries.len() + tag.len() + 32);
    encode_packed_forward(tag, entries, records, None, &mut out);
    out
}

/// A decoded frame payload, borrowing from the chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Payload<'a> {
    /// The records' tag.
    pub tag: &'a str,
    /// Canonical packed entries.
    pub entries: &'a [u8],
}

/// Why a frame payload could not be read (a frame that passed its CRC but was not written by
/// [`encode`]: a bug or a foreign file, never a torn write).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("chunk frame payload is not a PackedForward request: {0}")]
pub struct PayloadError(&'static str);

/// Decodes a frame payload written by [`encode`].
pub fn decode(mut buf: &[u8]) -> Result<Payload<'_>, PayloadError> {
    let rd = &mut buf;
    let len = rmp::decode::read_array_len(rd).map_err(|_| PayloadError("not an array"))?;
    if !(2..=3).contains(&len) {
        return Err(PayloadError("wrong array length"));
    }
    let tag_len = rmp::decode::read_str_len(rd).map_err(|_| PayloadError("tag is not a str"))?;
    let tag_len = tag_len as usize;
    if rd.len() < tag_len {
        return Err(PayloadError("tag truncated"));
    }
    let (tag, rest) = rd.split_at(tag_len);
    let tag = std::str::from_utf8(tag).map_err(|_| PayloadError("tag is not UTF-8"))?;
    *rd = rest;
    let bin_len = rmp::decode::read_bin_len(rd).map_err(|_| PayloadError("entries are not bin"))?;
    let bin_len = bin_len as usize;
    if rd.len() < bin_len {
        return Err(PayloadError("entries truncated"));
    }
    Ok(Payload {
        tag,
        entries: &rd[..bin_len],
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use logferry_common::forward::{encode_entry, EventTime};

    #[test]
    fn round_trip() {
        let mut entries = Vec::new();
        encode_entry(
            EventTime::new(1, 2),
            &[0x81, 0xa1, b'a', 0x01],
            &mut entries,
        );
        let payload = encode("app.web", &entries, 1);
        let decoded = decode(&payload).unwrap();
        assert_eq!(
            decoded,
            Payload {
                tag: "app.web",
                entries: &entries
            }
        );
        assert!(decode(&payload[..payload.len() - 10]).is_err());
        assert!(decode(b"\xc0").is_err());
    }
}
