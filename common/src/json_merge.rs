//! A JSON object's members, transcoded straight to msgpack pairs (the forwarder's `merge_log`).
//!
//! Most container logs of services are JSON lines, and merging their keys into the record is
//! what makes them queryable. Parsing each line into a `serde_json::Value` tree and encoding
//! the tree again cost an allocation per key and per string and a third of the forwarder's CPU
//! on such logs; here serde_json's streaming parser drives a visitor that writes msgpack as it
//! goes. Only nested arrays and objects use a scratch buffer (msgpack puts the element count
//! before the elements, and JSON says it only at the end).
//!
//! Semantics, kept from the tree version: only a JSON object is merged (anything else, invalid
//! JSON, trailing garbage or nesting deeper than [`MAX_DEPTH`] leaves the message a string and
//! `out` untouched); integers stay integers (`u64`/`i64`), other numbers are `f64`; at most
//! [`MAX_KEYS`] members are merged. A key repeated in one object keeps its first value (JSON
//! leaves duplicates undefined; a msgpack map with a duplicate key would be rejected by
//! Elasticsearch downstream).

use std::fmt;
use std::ops::Range;

use crate::msgpack;
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

/// Most members merged from one message (a bound on work per line).
pub const MAX_KEYS: usize = 256;
/// Deepest nesting merged; deeper messages stay a string.
pub const MAX_DEPTH: usize = 32;

/// Appends the members of the JSON object `message` to `out` as msgpack key/value pairs,
/// leaving out the keys `skip` names, and returns how many pairs it wrote. `None` when the
/// message is not a JSON object that can be merged; `out` is then unchanged.
pub fn merge_object(message: &[u8], skip: impl Fn(&str) -> bool, out: &mut Vec<u8>) -> Option<u32> {
    let first = message.iter().find(|b| !b.is_ascii_whitespace())?;
    if *first != b'{' {
        return None;
    }
    let start = out.len();
    let mut de = serde_json::Deserializer::from_slice(message);
    let top = Top { out, skip: &skip };
    let written = de.deserialize_map(top).and_then(|n| de.end().map(|()| n));
    match written {
        Ok(n) => Some(n),
        Err(_) => {
            out.truncate(start);
            None
        }
    }
}

/// The top-level object: members filtered, counted and written without a map header.
struct Top<'a, F> {
    out: &'a mut Vec<u8>,
    skip: &'a F,
}

impl<'de, F: Fn(&str) -> bool> Visitor<'de> for Top<'_, F> {
    type Value = u32;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<u32, A::Error> {
        let mut members = Members::new();
        while let Some(written) = map.next_key_seed(Key {
            out: &mut *self.out,
            members: &members,
            skip: Some(self.skip),
            full: members.count as usize >= MAX_KEYS,
        })? {
            match written {
                Some(key) => {
                    map.next_value_seed(Value {
                        out: &mut *self.out,
                        depth: 1,
                    })?;
                    members.add(key);
                }
                None => {
                    // Read like any value (so a message merges only if all of it is valid
                    // JSON within the limits), into scratch space that is dropped.
                    map.next_value_seed(Value {
                        out: &mut Vec::new(),
                        depth: 1,
                    })?;
                }
            }
        }
        Ok(members.count)
    }
}

/// Where the bytes of the keys of one object are in its buffer, to keep the first of repeated
/// keys.
struct Members {
    keys: Vec<Range<usize>>,
    count: u32,
}

impl Members {
    fn new() -> Members {
        Members {
            keys: Vec::new(),
            count: 0,
        }
    }

    fn add(&mut self, key: Range<usize>) {
        self.keys.push(key);
        self.count += 1;
    }

    /// Whether `key` was already written (at one of the recorded ranges of `buf`). Objects have
    /// few keys: a scan of byte comparisons costs less than a set.
    fn has(&self, buf: &[u8], key: &str) -> bool {
        self.keys
            .iter()
            .any(|range| buf.get(range.clone()) == Some(key.as_bytes()))
    }
}

/// Writes a key unless it is skipped, already present, or the object is full; yields where its
/// bytes (after the str header) were written.
struct Key<'a, F> {
    out: &'a mut Vec<u8>,
    members: &'a Members,
    skip: Option<&'a F>,
    full: bool,
}

impl<'de, F: Fn(&str) -> bool> DeserializeSeed<'de> for Key<'_, F> {
    type Value = Option<Range<usize>>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Option<Range<usize>>, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de, F: Fn(&str) -> bool> Visitor<'de> for Key<'_, F> {
    type Value = Option<Range<usize>>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object key")
    }

    fn visit_str<E: de::Error>(self, key: &str) -> Result<Option<Range<usize>>, E> {
        if self.full || self.skip.is_some_and(|skip| skip(key)) || self.members.has(self.out, key) {
            return Ok(None);
        }
        msgpack::write_str(self.out, key);
        let end = self.out.len();
        Ok(Some(end.saturating_sub(key.len())..end))
    }
}

/// Any JSON value, written as msgpack.
struct Value<'a> {
    out: &'a mut Vec<u8>,
    depth: usize,
}

impl<'de> DeserializeSeed<'de> for Value<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

/// Never used as a filter: nested objects keep every key (repeats aside).
type NoSkip = fn(&str) -> bool;

impl<'de> Visitor<'de> for Value<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<(), E> {
        msgpack::write_bool(self.out, v);
        Ok(())
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<(), E> {
        msgpack::write_uint(self.out, v);
        Ok(())
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<(), E> {
        // Writing into a Vec cannot fail.
        let _ = rmp::encode::write_sint(self.out, v);
        Ok(())
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<(), E> {
        let _ = rmp::encode::write_f64(self.out, v);
        Ok(())
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        msgpack::write_str(self.out, v);
        Ok(())
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        msgpack::write_nil(self.out);
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        if self.depth >= MAX_DEPTH {
            return Err(de::Error::custom("nested too deep"));
        }
        let mut inner = Vec::new();
        let mut n = 0u32;
        while seq
            .next_element_seed(Value {
                out: &mut inner,
                depth: self.depth + 1,
            })?
            .is_some()
        {
            n += 1;
        }
        msgpack::write_array_len(self.out, n);
        self.out.extend_from_slice(&inner);
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        if self.depth >= MAX_DEPTH {
            return Err(de::Error::custom("nested too deep"));
        }
        let mut inner = Vec::new();
        let mut members = Members::new();
        while let Some(written) = map.next_key_seed(Key::<NoSkip> {
            out: &mut inner,
            members: &members,
            skip: None,
            full: false,
        })? {
            match written {
                Some(key) => {
                    map.next_value_seed(Value {
                        out: &mut inner,
                        depth: self.depth + 1,
                    })?;
                    members.add(key);
                }
                None => {
                    map.next_value_seed(Value {
                        out: &mut Vec::new(),
                        depth: self.depth + 1,
                    })?;
                }
            }
        }
        msgpack::write_map_len(self.out, members.count);
        self.out.extend_from_slice(&inner);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The merged pairs as a JSON object (through a msgpack map), for comparisons.
    fn merged(message: &str, skip: &[&str]) -> Option<serde_json::Value> {
        let mut pairs = Vec::new();
        let n = merge_object(message.as_bytes(), |k| skip.contains(&k), &mut pairs)?;
        let mut map = Vec::new();
        msgpack::write_map_len(&mut map, n);
        map.extend_from_slice(&pairs);
        let mut json = Vec::new();
        msgpack::write_json(&map, &mut json).expect("valid msgpack");
        Some(serde_json::from_slice(&json).expect("valid JSON"))
    }

    #[test]
    fn transcodes_every_json_type_and_keeps_key_order() {
        let m = r#" {"z":1,"neg":-3,"f":1.5,"big":18446744073709551615,"s":"a\"b\u00e9","n":null,
                     "t":true,"o":{"a":[true,null,{"x":[]}],"e":{}},"l":[]} "#;
        let mut pairs = Vec::new();
        assert_eq!(merge_object(m.as_bytes(), |_| false, &mut pairs), Some(9));
        let v = merged(m, &[]).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"z":1,"neg":-3,"f":1.5,"big":18446744073709551615u64,
                "s":"a\"b\u{e9}","n":null,"t":true,"o":{"a":[true,null,{"x":[]}],"e":{}},"l":[]})
        );
        // First pair written is "z": the message's order, not sorted.
        assert_eq!(&pairs[..2], &[0xa1, b'z']);
        // The numbers keep their msgpack kinds: -3 is a negative fixint, 1.5 a float 64.
        assert!(pairs.windows(2).any(|w| w == [0xa3, b'n']) && pairs.contains(&0xfd));
        assert!(pairs.contains(&0xcb));
    }

    #[test]
    fn skipped_and_repeated_keys_and_limits() {
        assert_eq!(
            merged(
                r#"{"stream":"x","a":1,"a":2,"kubernetes":{},"o":{"k":1,"k":2}}"#,
                &["stream", "kubernetes"]
            ),
            Some(serde_json::json!({"a":1,"o":{"k":1}}))
        );
        let many: String = format!(
            "{{{}}}",
            (0..MAX_KEYS + 10)
                .map(|i| format!("\"k{i}\":{i}"))
                .collect::<Vec<_>>()
                .join(",")
        );
        let v = merged(&many, &[]).unwrap();
        assert_eq!(v.as_object().unwrap().len(), MAX_KEYS);
        let deep_ok = format!(
            "{{\"a\":{}1{}}}",
            "[".repeat(MAX_DEPTH - 1),
            "]".repeat(MAX_DEPTH - 1)
        );
        assert!(merged(&deep_ok, &[]).is_some());
        let too_deep = format!(
            "{{\"a\":{}1{}}}",
            "[".repeat(MAX_DEPTH),
            "]".repeat(MAX_DEPTH)
        );
        assert!(merged(&too_deep, &[]).is_none());
    }

    #[test]
    fn anything_but_a_whole_object_is_not_merged_and_leaves_out_alone() {
        // The last: an out-of-range number in a key that would be skipped (found by fuzzing).
        for m in [
            "plain",
            "[1,2]",
            "\"s\"",
            "{\"a\":1",
            "{\"a\":1} trailing",
            "{\"a\":tru}",
            "",
            "{1:2}",
            "{\"stream\":1370E0000000000307}",
        ] {
            let mut out = vec![7u8];
            let skip = |k: &str| k == "stream";
            assert_eq!(merge_object(m.as_bytes(), skip, &mut out), None, "{m}");
            assert_eq!(out, [7], "{m}");
        }
    }
}
