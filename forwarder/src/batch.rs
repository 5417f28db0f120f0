//! Records and batches: from a parsed message to the bytes of one buffer frame.
//!
//! A record is a msgpack map written straight into the batch's entry buffer, no tree:
//!
//! ```text
//! { "stream": "stdout"|"stderr",
//!   <keys of the message, when it is a JSON object and merge_log is on>,
//!   "log": <message, unless merged and keep_log is off>,
//!   "kubernetes": { "pod_name", "namespace_name", "container_name", "docker_id",
//!                   + with the API: "pod_id", "host", "labels", "annotations" } }
//! ```
//! (Fluent Bit's `kubernetes` filter shape, so dashboards and queries written for it keep
//! working.) The time is the runtime's timestamp as an EventTime, nanoseconds kept.
//!
//! A batch holds records of one file (so one tag) and becomes one frame of the forwarder's
//! chunk buffer. **The frame payload is the exact Forward request that will be sent**:
//!
//! ```text
//! [ tag, bin(entries), { "size": n, "chunk": "<32 hex chars: 128 random bits>" } ]
//! ```
//! The chunk id is drawn when the batch is made and stored with it, so it is the same on every
//! re-send, across reconnects, failover and forwarder restarts, and unique across forwarders
//! (the aggregator de-duplicates by it). Without gzip a frame is sent as it is, with no
//! re-encoding. The encoding is [`logferry_common::payload`]'s; this module adds the id.

use logferry_common::forward::EventTime;
use logferry_common::json_merge;
use logferry_common::msgpack;
use logferry_common::payload::{self, Payload, PayloadError};

use crate::parse::Stream;

/// How records are shaped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordOptions {
    /// Merge a JSON object message's keys into the record.
    pub merge_log: bool,
    /// With `merge_log`, keep `log` too (it is always kept when the message is not JSON).
    pub keep_log: bool,
}

/// Appends one entry `[time, record]` to `out`. `kubernetes` is the pre-encoded value of the
/// `kubernetes` key (a msgpack map), shared by every record of a file.
pub fn encode_record(
    time: EventTime,
    stream: Stream,
    message: &[u8],
    kubernetes: Option<&[u8]>,
    options: RecordOptions,
    out: &mut Vec<u8>,
) {
    // The entry is written in place (`[time, record]`), without a per-record buffer: the
    // record's key count is known only after the merge, so the map header is a one-byte
    // placeholder patched at the end (widened, rarely, past 15 keys).
    out.reserve(2 * message.len() + 48 + kubernetes.map_or(0, <[u8]>::len));
    out.push(0x92);
    time.write_to(out);
    let header_at = out.len();
    out.push(0x80);
    msgpack::write_str(out, "stream");
    msgpack::write_str(out, stream.as_str());
    let merged = if options.merge_log {
        // With keep_log the record's own "log" (the original string) wins over the message's.
        let skip = |k: &str| k == "stream" || k == "kubernetes" || (options.keep_log && k == "log");
        json_merge::merge_object(message, skip, out)
    } else {
        None
    };
    let keep_log = merged.is_none() || options.keep_log;
    if keep_log {
        msgpack::write_str(out, "log");
        msgpack::write_str(out, &String::from_utf8_lossy(message));
    }
    if let Some(k) = kubernetes {
        msgpack::write_str(out, "kubernetes");
        out.extend_from_slice(k);
    }
    let keys = 1 + u32::from(keep_log) + u32::from(kubernetes.is_some()) + merged.unwrap_or(0);
    if keys < 16 {
        out[header_at] = 0x80 | keys as u8;
    } else {
        let mut header = Vec::with_capacity(5);
        msgpack::write_map_len(&mut header, keys);
        out.splice(header_at..=header_at, header);
    }
}

/// A new random chunk id: 128 bits as 32 lowercase hex characters (Fluent Bit's shape).
pub fn new_chunk_id() -> String {
    hex::encode(rand::random::<[u8; 16]>())
}

/// Builds the frame payload: a PackedForward request with `size` and a fresh chunk id.
pub fn encode_frame(tag: &str, entries: &[u8], records: u32) -> Vec<u8> {
    payload::encode_with_chunk_id(tag, entries, records, &new_chunk_id())
}

/// A frame payload read back: its request, and the chunk id every forwarder frame carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame<'a> {
    /// The stored request.
    pub payload: Payload<'a>,
    /// The raw msgpack of the `chunk` option (what the ack echoes).
    pub chunk_raw: &'a [u8],
}

/// Why a frame payload could not be read (a frame that passed its CRC but was not written by
/// [`encode_frame`]: a bug or a foreign file, never a torn write).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// Not a PackedForward request.
    #[error(transparent)]
    Payload(#[from] PayloadError),
    /// A request without the chunk id the ack is matched by.
    #[error("buffer frame has no chunk id")]
    NoChunkId,
}

/// Reads a frame payload written by [`encode_frame`].
pub fn decode_frame(buf: &[u8]) -> Result<Frame<'_>, FrameError> {
    let payload = payload::decode(buf)?;
    let chunk_raw = payload.chunk_raw.ok_or(FrameError::NoChunkId)?;
    Ok(Frame { payload, chunk_raw })
}

/// The request to send for a frame when it is not the frame itself: its gzip form, if asked.
pub fn wire_request(frame: &Frame<'_>, gzip_it: bool) -> Option<Vec<u8>> {
    if gzip_it {
        frame.payload.to_compressed()
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use logferry_common::forward::{encode_entry, Entries};
    use rmpv::Value as V;

    fn record_of(entries: &[u8]) -> V {
        let e = Entries::new(entries).next().unwrap().unwrap();
        rmpv::decode::read_value(&mut &e.record[..]).unwrap()
    }

    fn get<'a>(v: &'a V, key: &str) -> Option<&'a V> {
        v.as_map()?
            .iter()
            .find(|(k, _)| k.as_str() == Some(key))
            .map(|(_, v)| v)
    }

    #[test]
    fn plain_and_merged_records() {
        let opts = RecordOptions {
            merge_log: true,
            keep_log: false,
        };
        let mut out = Vec::new();
        encode_record(
            EventTime::new(1, 2),
            Stream::Stderr,
            b"plain text",
            None,
            opts,
            &mut out,
        );
        let r = record_of(&out);
        assert_eq!(get(&r, "log").unwrap().as_str(), Some("plain text"));
        assert_eq!(get(&r, "stream").unwrap().as_str(), Some("stderr"));

        let mut kube = Vec::new();
        msgpack::write_map_len(&mut kube, 1);
        msgpack::write_str(&mut kube, "pod_name");
        msgpack::write_str(&mut kube, "web-1");
        let mut out = Vec::new();
        encode_record(
            EventTime::new(1, 2),
            Stream::Stdout,
            br#"{"seq":7,"neg":-3,"f":1.5,"o":{"a":[true,null]},"stream":"x","log":"inner"}"#,
            Some(&kube),
            opts,
            &mut out,
        );
        let r = record_of(&out);
        assert_eq!(get(&r, "seq").unwrap().as_u64(), Some(7));
        assert_eq!(get(&r, "neg").unwrap().as_i64(), Some(-3));
        assert_eq!(get(&r, "f").unwrap().as_f64(), Some(1.5));
        assert_eq!(get(&r, "stream").unwrap().as_str(), Some("stdout"));
        assert_eq!(get(&r, "log").unwrap().as_str(), Some("inner"));
        assert_eq!(
            get(get(&r, "kubernetes").unwrap(), "pod_name")
                .unwrap()
                .as_str(),
            Some("web-1")
        );
        // keep_log: the original string stays, the message's own "log" key does not clash.
        let mut out = Vec::new();
        let keep = RecordOptions {
            merge_log: true,
            keep_log: true,
        };
        encode_record(
            EventTime::new(1, 2),
            Stream::Stdout,
            br#"{"log":"x","a":1}"#,
            None,
            keep,
            &mut out,
        );
        let r = record_of(&out);
        assert_eq!(
            get(&r, "log").unwrap().as_str(),
            Some(r#"{"log":"x","a":1}"#)
        );
        assert_eq!(r.as_map().unwrap().len(), 3);
        // More than 15 keys: the one-byte map header placeholder is widened to map16.
        let many: String = format!(
            "{{{}}}",
            (0..20)
                .map(|i| format!("\"k{i}\":{i}"))
                .collect::<Vec<_>>()
                .join(",")
        );
        let mut out = Vec::new();
        encode_record(
            EventTime::new(1, 2),
            Stream::Stdout,
            many.as_bytes(),
            Some(&kube),
            opts,
            &mut out,
        );
        let r = record_of(&out);
        assert_eq!(r.as_map().unwrap().len(), 22);
        assert_eq!(get(&r, "k19").unwrap().as_u64(), Some(19));
        assert!(get(&r, "kubernetes").is_some());
        // Invalid UTF-8 is replaced, never sent as an invalid str.
        let mut out = Vec::new();
        encode_record(
            EventTime::new(1, 2),
            Stream::Stdout,
            b"a\xffb",
            None,
            opts,
            &mut out,
        );
        assert_eq!(
            get(&record_of(&out), "log").unwrap().as_str(),
            Some("a\u{FFFD}b")
        );
    }

    #[test]
    fn frames_round_trip_with_stable_ids() {
        let mut entries = Vec::new();
        encode_entry(EventTime::new(1, 2), &[0x80], &mut entries);
        let payload = encode_frame("kube.x", &entries, 1);
        let f = decode_frame(&payload).unwrap();
        assert_eq!(f.payload.tag, "kube.x");
        assert_eq!(f.payload.entries, &entries[..]);
        assert_eq!(f.payload.records, 1);
        let id = logferry_common::forward::ack::chunk_id_bytes(f.chunk_raw).unwrap();
        assert_eq!(id.len(), 32);
        let other = encode_frame("kube.x", &entries, 1);
        assert_ne!(decode_frame(&other).unwrap().chunk_raw, f.chunk_raw);
        let gz = wire_request(&f, true).unwrap();
        let v = rmpv::decode::read_value(&mut &gz[..]).unwrap();
        assert_eq!(get(&v[2], "compressed").unwrap().as_str(), Some("gzip"));
        assert_eq!(
            get(&v[2], "chunk").unwrap().as_str().unwrap().as_bytes(),
            id
        );
        assert!(decode_frame(b"\x93\xa1x").is_err());
        assert!(wire_request(&f, false).is_none());
    }
}
