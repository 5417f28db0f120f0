//! Records as the outputs see them, and the few msgpack lookups they need.
//!
//! A chunk's frames hold PackedForward requests; [`Records::from_chunk`] flattens them into one
//! list of [`Rec`]s that borrow nothing (each holds a cheap `Bytes` slice of its frame), so the
//! list can be moved into async sinks and kept across retries. Each record knows its place in
//! the chunk (frame and entry index): the deterministic Elasticsearch `_id` and the grouping of
//! dead letters depend on it. Field lookups and JSON writing go straight from the msgpack bytes,
//! without a tree.

use std::sync::Arc;

use bytes::Bytes;
use logferry_common::chunk::ChunkContents;
use logferry_common::forward::{Entries, EventTime};
use logferry_common::msgpack::{self, Token, DEFAULT_MAX_DEPTH};
use logferry_common::payload;
use logferry_common::telemetry;

/// Which chunk a record came from: its buffer sequence number and creation time. Sequence
/// numbers are never reused by a buffer, and the creation time tells apart two buffers (a
/// wiped volume starts again at 0), so the pair names a chunk for good.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Origin {
    /// The chunk's sequence number.
    pub seq: u64,
    /// The chunk's creation time, Unix nanoseconds.
    pub created_ns: u64,
}

impl Origin {
    /// The origin of a sealed chunk.
    pub fn of(chunk: &logferry_common::chunk::SealedChunk) -> Origin {
        Origin {
            seq: chunk.seq,
            created_ns: chunk
                .created_at
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0),
        }
    }
}

/// One record of a chunk.
#[derive(Debug, Clone)]
pub struct Rec {
    /// Its chunk.
    pub origin: Origin,
    /// Index of its frame in the chunk.
    pub frame: u32,
    /// Index of the entry in its frame.
    pub index: u32,
    /// The records' tag.
    pub tag: Arc<str>,
    /// The event time.
    pub time: EventTime,
    /// The record: a raw msgpack map.
    pub record: Bytes,
}

/// The records of one chunk, in order.
#[derive(Debug, Clone, Default)]
pub struct Records {
    /// The records.
    pub recs: Vec<Rec>,
    /// Records that could not be read (counted in `logferry_dropped_records_total`).
    pub unreadable: u64,
}

impl Records {
    /// Flattens every frame of a chunk. Frames that passed their CRC but are not
    /// PackedForward requests (a foreign or buggy writer, never a torn write) are skipped and
    /// counted: retrying them could never succeed.
    pub fn from_chunk(contents: &ChunkContents, origin: Origin) -> Records {
        let mut out = Records::default();
        for (frame_idx, (bytes, records)) in contents.payloads().enumerate() {
            out.push_frame(origin, frame_idx as u32, 0, &bytes, records);
        }
        out
    }

    /// Adds the records of one PackedForward payload, the first being entry `first_index` of
    /// frame `frame_idx` of chunk `origin`.
    pub fn push_frame(
        &mut self,
        origin: Origin,
        frame_idx: u32,
        first_index: u32,
        bytes: &Bytes,
        records: u32,
    ) {
        let payload = match payload::decode(bytes) {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(error = %e, "skipping an unreadable frame");
                telemetry::DROPPED_RECORDS
                    .with_label_values(&["bad_payload"])
                    .inc_by(u64::from(records));
                self.unreadable += u64::from(records);
                return;
            }
        };
        let tag: Arc<str> = Arc::from(payload.tag);
        for (i, entry) in Entries::new(payload.entries).enumerate() {
            match entry {
                Ok(entry) => self.recs.push(Rec {
                    origin,
                    frame: frame_idx,
                    index: first_index.saturating_add(i as u32),
                    tag: Arc::clone(&tag),
                    time: entry.time,
                    record: bytes.slice_ref(entry.record),
                }),
                Err(e) => {
                    tracing::error!(error = %e, "skipping the rest of an unreadable frame");
                    telemetry::DROPPED_RECORDS
                        .with_label_values(&["bad_payload"])
                        .inc();
                    self.unreadable += 1;
                    break;
                }
            }
        }
    }
}

/// A stable id of a record delivered by output `output`: SHA-256 of the output name, the
/// chunk's identity and the record's place in it, first 16 bytes in hex. The same record gets
/// the same id on every retry, after a restart and on dead-letter replay.
pub fn stable_id(output: &str, rec: &Rec) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(output.as_bytes());
    h.update([0]);
    h.update(rec.origin.created_ns.to_le_bytes());
    h.update(rec.origin.seq.to_le_bytes());
    h.update(rec.frame.to_le_bytes());
    h.update(rec.index.to_le_bytes());
    hex::encode(&h.finalize()[..16])
}

/// A scalar field value, borrowed from the record.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Scalar<'a> {
    /// A string (UTF-8 checked).
    Str(&'a str),
    /// An unsigned integer.
    Uint(u64),
    /// A signed integer.
    Int(i64),
    /// A float.
    Float(f64),
    /// A boolean.
    Bool(bool),
}

impl Scalar<'_> {
    /// The value as text (strings as they are).
    pub fn to_text(&self) -> String {
        match *self {
            Scalar::Str(s) => s.to_owned(),
            Scalar::Uint(v) => v.to_string(),
            Scalar::Int(v) => v.to_string(),
            Scalar::Float(v) => v.to_string(),
            Scalar::Bool(v) => v.to_string(),
        }
    }
}

/// The raw msgpack value at `path` (map keys, outermost first) in a map, if every step exists.
pub fn field<'a>(record: &'a [u8], path: &[impl AsRef<str>]) -> Option<&'a [u8]> {
    let mut value = record;
    for key in path {
        value = map_get(value, key.as_ref().as_bytes())?;
    }
    Some(value)
}

/// The raw value of `key` in the msgpack map `map`.
pub fn map_get<'a>(map: &'a [u8], key: &[u8]) -> Option<&'a [u8]> {
    let mut cur = map;
    let n = msgpack::read_map_len(&mut cur).ok()?;
    pairs_get(n, cur, key)
}

/// The raw value of `key` among the `n` key/value pairs `pairs` (a map's bytes after its
/// length).
pub fn pairs_get<'a>(n: u32, pairs: &'a [u8], key: &[u8]) -> Option<&'a [u8]> {
    let mut cur = pairs;
    for _ in 0..n {
        let k = msgpack::skip_value(&mut cur, DEFAULT_MAX_DEPTH).ok()?;
        let v = msgpack::skip_value(&mut cur, DEFAULT_MAX_DEPTH).ok()?;
        let mut kc = k;
        if let Ok(Token::Str(s)) = msgpack::read_token(&mut kc) {
            if s == key {
                return Some(v);
            }
        }
    }
    None
}

/// The scalar at `path`, if there is one there.
pub fn scalar<'a>(record: &'a [u8], path: &[impl AsRef<str>]) -> Option<Scalar<'a>> {
    let mut raw = field(record, path)?;
    match msgpack::read_token(&mut raw).ok()? {
        Token::Str(s) => std::str::from_utf8(s).ok().map(Scalar::Str),
        Token::Uint(v) => Some(Scalar::Uint(v)),
        Token::Int(v) => Some(Scalar::Int(v)),
        Token::F32(v) => Some(Scalar::Float(f64::from(v))),
        Token::F64(v) => Some(Scalar::Float(v)),
        Token::Bool(v) => Some(Scalar::Bool(v)),
        _ => None,
    }
}

/// Whether the top-level map has a string key `key`.
pub fn has_key(record: &[u8], key: &str) -> bool {
    map_get(record, key.as_bytes()).is_some()
}

/// Writes the record as a JSON object with extra leading string fields (each skipped when the
/// record already has that key, so the JSON never holds a duplicate key, which Elasticsearch
/// rejects). On error `out` is restored.
pub fn write_json_with(
    record: &[u8],
    extra: &[(&str, &str)],
    out: &mut Vec<u8>,
) -> Result<(), msgpack::MsgpackError> {
    let start = out.len();
    let extra: Vec<&(&str, &str)> = extra
        .iter()
        .filter(|(k, _)| !k.is_empty() && !has_key(record, k))
        .collect();
    if extra.is_empty() {
        return msgpack::write_json(record, out).map(|_| ());
    }
    out.push(b'{');
    for (i, (k, v)) in extra.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        msgpack::write_json_str(k, out);
        out.push(b':');
        msgpack::write_json_str(v, out);
    }
    let body_start = out.len();
    if let Err(e) = msgpack::write_json(record, out) {
        out.truncate(start);
        return Err(e);
    }
    // The record's JSON is `{...}`: drop its `{`, joining with a comma unless it is empty.
    if out.get(body_start) != Some(&b'{') {
        out.truncate(start);
        return Err(msgpack::MsgpackError::Truncated);
    }
    if out.get(body_start + 1) == Some(&b'}') {
        out.truncate(body_start);
        out.push(b'}');
    } else {
        out[body_start] = b',';
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(v: serde_json::Value) -> Vec<u8> {
        rmp_serde::to_vec_named(&v).unwrap()
    }

    #[test]
    fn lookups() {
        let r = rec(serde_json::json!({"a": {"b": "x", "n": 5, "neg": -3}, "t": true}));
        assert_eq!(scalar(&r, &["a", "b"]), Some(Scalar::Str("x")));
        assert_eq!(scalar(&r, &["a", "n"]), Some(Scalar::Uint(5)));
        assert_eq!(scalar(&r, &["a", "neg"]), Some(Scalar::Int(-3)));
        assert_eq!(scalar(&r, &["t"]), Some(Scalar::Bool(true)));
        assert_eq!(scalar(&r, &["a"]), None);
        assert_eq!(scalar(&r, &["a", "zz"]), None);
        assert!(has_key(&r, "t"));
        assert!(!has_key(&r, "b"));
    }

    #[test]
    fn json_with_extra_fields() {
        let r = rec(serde_json::json!({"a": 1, "@timestamp": "keep"}));
        let mut out = Vec::new();
        write_json_with(&r, &[("@timestamp", "x"), ("tag", "t")], &mut out).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"tag": "t", "a": 1, "@timestamp": "keep"})
        );
        let empty = rec(serde_json::json!({}));
        out.clear();
        write_json_with(&empty, &[("tag", "t")], &mut out).unwrap();
        assert_eq!(out, br#"{"tag":"t"}"#);
        out.clear();
        write_json_with(&empty, &[], &mut out).unwrap();
        assert_eq!(out, b"{}");
    }
}
