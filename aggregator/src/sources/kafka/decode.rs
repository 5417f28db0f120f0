//! One Kafka message to one canonical entry (pure; no IO).
//!
//! ## Formats (`format` of the source)
//! - `forward`: msgpack, either a Forward entry `[time, record]` (what the `kafka` output
//!   writes with `format = "forward"`; any time form the Forward protocol allows) or a bare
//!   record map (its `format = "msgpack"`). The whole value must be that one item.
//! - `json`: one JSON object, transcoded to a msgpack map (`logferry_common::json_merge`).
//! - `raw`: any bytes, as `{"log": value}` (a string when UTF-8, binary otherwise).
//!
//! The time is the entry's own (`forward` entries) or else the message timestamp; a message
//! without one (or at 0) gets the time it was decoded at, Fluentd's rule for a missing time.
//! The tag is the `tag_header` header's value when present and valid UTF-8, else the `tag`
//! template with `${topic}` replaced. The tenant is the `tenant_header` header's value, when
//! configured and present.
//!
//! ## Record id
//! With `id_key`, the record gets one more leading field: the hex of the first 16 bytes of
//! SHA-256 over `topic \0 partition offset index` (little-endian i32, i64, u32; index 0, one
//! record per message). The same message consumed again (after a crash, before its offset was
//! committed) gets the same id, so an output that writes by id overwrites instead of
//! duplicating. A record that already has the key keeps its own value.
//!
//! ## Errors
//! A message that is none of the above is [`Undecodable`]: it goes to dead letters with its
//! coordinates, and its offset counts as done.

use logferry_common::event_time::EventTime;
use logferry_common::forward::Entries;
use logferry_common::json_merge;
use logferry_common::msgpack::{self, DEFAULT_MAX_DEPTH};

use crate::config::{KafkaSourceConfig, KafkaSourceFormat};
use crate::record::pairs_get;

/// The parts of a Kafka message decoding reads.
#[derive(Debug, Clone, Copy)]
pub struct Message<'a> {
    /// Its topic.
    pub topic: &'a str,
    /// Its partition.
    pub partition: i32,
    /// Its offset.
    pub offset: i64,
    /// Its timestamp in milliseconds since the epoch, when it has one.
    pub timestamp_ms: Option<i64>,
    /// Its value (`None`: a tombstone).
    pub payload: Option<&'a [u8]>,
}

/// Why a message could not become a record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Undecodable(pub String);

/// What decoding needs of the source's config.
#[derive(Debug, Clone)]
pub struct Decoder {
    format: KafkaSourceFormat,
    tag: String,
    tag_header: String,
    tenant_header: Option<String>,
    tenant: Option<String>,
    id_key: Option<String>,
}

/// A decoded message's routing: its tag and tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// The tag.
    pub tag: String,
    /// The tenant, when the source names one (its `tenant`, or the header's value).
    pub tenant: Option<String>,
}

impl Decoder {
    /// A decoder for a source's config.
    pub fn new(c: &KafkaSourceConfig) -> Decoder {
        Decoder {
            format: c.format,
            tag: c.tag.clone(),
            tag_header: c.tag_header.clone(),
            tenant_header: c.tenant_header.clone(),
            tenant: c.tenant.clone(),
            id_key: c.id_key.clone(),
        }
    }

    /// The tag and tenant of a message, from its headers (`header` looks one up by name).
    pub fn route<'h>(&self, m: &Message<'_>, header: impl Fn(&str) -> Option<&'h [u8]>) -> Route {
        Route {
            tag: match self.header_tag(&header) {
                Some(t) => t.to_owned(),
                None => self.tag.replace("${topic}", m.topic),
            },
            tenant: match &self.tenant {
                Some(t) => Some(t.clone()),
                None => self.header_tenant(&header).map(str::to_owned),
            },
        }
    }

    /// Whether a message's route is `route` ([`Decoder::route`] without allocating).
    pub fn has_route<'h>(
        &self,
        m: &Message<'_>,
        header: impl Fn(&str) -> Option<&'h [u8]>,
        route: &Route,
    ) -> bool {
        let tag = match self.header_tag(&header) {
            Some(t) => t == route.tag,
            None => self.template_renders_to(m.topic, &route.tag),
        };
        tag && (self.tenant.is_some() || self.header_tenant(&header) == route.tenant.as_deref())
    }

    /// The tag from the `tag_header` header (`forward` format), when present and text.
    fn header_tag<'h>(&self, header: &impl Fn(&str) -> Option<&'h [u8]>) -> Option<&'h str> {
        if self.format != KafkaSourceFormat::Forward || self.tag_header.is_empty() {
            return None;
        }
        header_text(header(&self.tag_header))
    }

    /// The tenant from the `tenant_header` header, when configured, present and text.
    fn header_tenant<'h>(&self, header: &impl Fn(&str) -> Option<&'h [u8]>) -> Option<&'h str> {
        header_text(header(self.tenant_header.as_deref()?))
    }

    /// Whether the `tag` template with `${topic}` = `topic` is `tag`.
    fn template_renders_to(&self, topic: &str, tag: &str) -> bool {
        let mut rest = tag;
        for (i, piece) in self.tag.split("${topic}").enumerate() {
            if i > 0 {
                let Some(r) = rest.strip_prefix(topic) else {
                    return false;
                };
                rest = r;
            }
            let Some(r) = rest.strip_prefix(piece) else {
                return false;
            };
            rest = r;
        }
        rest.is_empty()
    }

    /// Appends the message's canonical entry (`[EventTime, record]`) to `out`; `out` is
    /// unchanged on error. `scratch` is working space (its content is not kept).
    pub fn decode(
        &self,
        m: &Message<'_>,
        out: &mut Vec<u8>,
        scratch: &mut Vec<u8>,
    ) -> Result<(), Undecodable> {
        let Some(value) = m.payload else {
            return Err(Undecodable("the message has no value (a tombstone)".into()));
        };
        let fallback = || {
            m.timestamp_ms
                .filter(|&ms| ms > 0)
                .map_or_else(EventTime::now, |ms| {
                    EventTime::from_unix_nanos((ms as u64).saturating_mul(1_000_000))
                })
        };
        // The record as (map length, the pairs' bytes): checked before anything is written.
        let (time, pairs, body): (EventTime, u32, &[u8]) = match self.format {
            KafkaSourceFormat::Forward => {
                let (time, map) = forward_value(value)?;
                let mut body = map;
                let n = msgpack::read_map_len(&mut body)
                    .map_err(|e| Undecodable(format!("record: {e}")))?;
                (
                    time.filter(|t| t.secs != 0).unwrap_or_else(fallback),
                    n,
                    body,
                )
            }
            KafkaSourceFormat::Json => {
                scratch.clear();
                let n = json_merge::merge_object(value, |_| false, scratch)
                    .ok_or_else(|| Undecodable("the value is not a JSON object".into()))?;
                (fallback(), n, &scratch[..])
            }
            KafkaSourceFormat::Raw => {
                scratch.clear();
                msgpack::write_str(scratch, "log");
                match std::str::from_utf8(value) {
                    Ok(s) => msgpack::write_str(scratch, s),
                    Err(_) => msgpack::write_bin(scratch, value),
                }
                (fallback(), 1, &scratch[..])
            }
        };
        // The id goes first, unless the record has the key already.
        let id_key = self
            .id_key
            .as_deref()
            .filter(|k| pairs_get(pairs, body, k.as_bytes()).is_none());
        out.reserve(1 + EventTime::ENCODED_LEN + 5 + body.len() + 64);
        out.push(0x92);
        time.write_to(out);
        match id_key {
            Some(key) => {
                msgpack::write_map_len(out, pairs + 1);
                msgpack::write_str(out, key);
                msgpack::write_str(out, &record_id(m.topic, m.partition, m.offset, 0));
            }
            None => msgpack::write_map_len(out, pairs),
        }
        out.extend_from_slice(body);
        Ok(())
    }
}

/// A header's value as text, when it is present, UTF-8 and not empty.
fn header_text(value: Option<&[u8]>) -> Option<&str> {
    value
        .and_then(|v| std::str::from_utf8(v).ok())
        .filter(|t| !t.is_empty())
}

/// A `forward` value: an entry's time (when it is an entry) and its record map.
fn forward_value(value: &[u8]) -> Result<(Option<EventTime>, &[u8]), Undecodable> {
    let first = *value
        .first()
        .ok_or_else(|| Undecodable("the value is empty".into()))?;
    if msgpack::is_map_marker(first) {
        let mut rest = value;
        msgpack::skip_value(&mut rest, DEFAULT_MAX_DEPTH)
            .map_err(|e| Undecodable(format!("not a msgpack record: {e}")))?;
        if !rest.is_empty() {
            return Err(Undecodable(format!(
                "{} bytes after the msgpack record",
                rest.len()
            )));
        }
        return Ok((None, value));
    }
    let mut entries = Entries::new(value);
    match entries.next() {
        Some(Ok(entry)) if entries.remaining().is_empty() => Ok((Some(entry.time), entry.record)),
        Some(Ok(_)) => Err(Undecodable(
            "more than one Forward entry in one message".into(),
        )),
        Some(Err(e)) => Err(Undecodable(format!(
            "neither a msgpack record nor a Forward entry [time, record]: {e}"
        ))),
        None => Err(Undecodable("the value is empty".into())),
    }
}

/// The deterministic id of record `index` of a message (see the module docs).
pub fn record_id(topic: &str, partition: i32, offset: i64, index: u32) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(topic.as_bytes());
    h.update([0]);
    h.update(partition.to_le_bytes());
    h.update(offset.to_le_bytes());
    h.update(index.to_le_bytes());
    hex::encode(&h.finalize()[..16])
}

#[cfg(test)]
mod tests {
    use super::*;
    use logferry_common::forward::{encode_entry, Entry};

    fn config(format: &str, extra: &str) -> KafkaSourceConfig {
        let text = format!(
            "brokers = \"b:1\"\ntopics = [\"t\"]\ngroup_id = \"g\"\nformat = \"{format}\"\n{extra}"
        );
        toml::from_str(&text).unwrap()
    }

    fn message(payload: &[u8]) -> Message<'_> {
        Message {
            topic: "logs",
            partition: 2,
            offset: 41,
            timestamp_ms: Some(1_700_000_000_123),
            payload: Some(payload),
        }
    }

    fn map(pairs: &[(&str, &str)]) -> Vec<u8> {
        let mut out = Vec::new();
        msgpack::write_map_len(&mut out, pairs.len() as u32);
        for (k, v) in pairs {
            msgpack::write_str(&mut out, k);
            msgpack::write_str(&mut out, v);
        }
        out
    }

    fn one(entries: &[u8]) -> Entry<'_> {
        let mut it = Entries::new(entries);
        let e = it.next().unwrap().unwrap();
        assert!(it.next().is_none());
        e
    }

    fn json(record: &[u8]) -> String {
        let mut out = Vec::new();
        msgpack::write_json(record, &mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn a_forward_entry_keeps_its_time_and_a_bare_map_takes_the_message_time() {
        let d = Decoder::new(&config("forward", ""));
        let record = map(&[("log", "hi")]);
        let time = EventTime::from_unix_nanos(1_600_000_000_000_000_123);
        let mut entry = Vec::new();
        encode_entry(time, &record, &mut entry);
        let mut out = Vec::new();
        d.decode(&message(&entry), &mut out, &mut Vec::new())
            .unwrap();
        let e = one(&out);
        assert_eq!((e.time, e.record), (time, &record[..]));

        let mut out = Vec::new();
        d.decode(&message(&record), &mut out, &mut Vec::new())
            .unwrap();
        let e = one(&out);
        assert_eq!(e.time.unix_nanos(), 1_700_000_000_123_000_000);
        assert_eq!(e.record, &record[..]);
    }

    #[test]
    fn json_and_raw_values_become_records() {
        let d = Decoder::new(&config("json", ""));
        let mut out = Vec::new();
        d.decode(&message(br#"{"a":1,"b":"x"}"#), &mut out, &mut Vec::new())
            .unwrap();
        assert_eq!(json(one(&out).record), r#"{"a":1,"b":"x"}"#);
        assert!(d
            .decode(&message(b"[1,2]"), &mut out, &mut Vec::new())
            .is_err());

        let d = Decoder::new(&config("raw", ""));
        let mut out = Vec::new();
        d.decode(&message(b"plain line"), &mut out, &mut Vec::new())
            .unwrap();
        assert_eq!(json(one(&out).record), r#"{"log":"plain line"}"#);
    }

    #[test]
    fn undecodable_values_are_errors_and_leave_out_unchanged() {
        let d = Decoder::new(&config("forward", ""));
        let mut out = b"kept".to_vec();
        let record = map(&[("a", "b")]);
        let mut trailing = record.clone();
        trailing.push(0xc0);
        let mut two = Vec::new();
        encode_entry(EventTime::now(), &record, &mut two);
        encode_entry(EventTime::now(), &record, &mut two);
        for bad in [
            &b""[..],
            b"\xc1",
            b"not msgpack",
            &record[..3],
            &trailing,
            &two,
        ] {
            assert!(
                d.decode(&message(bad), &mut out, &mut Vec::new()).is_err(),
                "{bad:?}"
            );
        }
        let tombstone = Message {
            payload: None,
            ..message(b"")
        };
        assert!(d.decode(&tombstone, &mut out, &mut Vec::new()).is_err());
        assert_eq!(out, b"kept");
    }

    #[test]
    fn the_record_id_is_deterministic_and_an_existing_one_is_kept() {
        let d = Decoder::new(&config("forward", "id_key = \"_id\""));
        let record = map(&[("log", "hi")]);
        let (mut a, mut b) = (Vec::new(), Vec::new());
        d.decode(&message(&record), &mut a, &mut Vec::new())
            .unwrap();
        d.decode(&message(&record), &mut b, &mut Vec::new())
            .unwrap();
        assert_eq!(a, b);
        let id = record_id("logs", 2, 41, 0);
        assert_eq!(id.len(), 32);
        assert_ne!(id, record_id("logs", 2, 42, 0));
        assert_eq!(
            json(one(&a).record),
            format!(r#"{{"_id":"{id}","log":"hi"}}"#)
        );
        let own = map(&[("_id", "mine")]);
        let mut out = Vec::new();
        d.decode(&message(&own), &mut out, &mut Vec::new()).unwrap();
        assert_eq!(json(one(&out).record), r#"{"_id":"mine"}"#);
    }

    #[test]
    fn tag_and_tenant_come_from_headers_or_the_config() {
        let d = Decoder::new(&config("forward", "tenant_header = \"logferry-tenant\""));
        let headers = |name: &str| match name {
            "logferry-tag" => Some(&b"kube.var.log.containers.x"[..]),
            "logferry-tenant" => Some(&b"shop"[..]),
            _ => None,
        };
        let route = d.route(&message(b""), headers);
        assert_eq!(route.tag, "kube.var.log.containers.x");
        assert_eq!(route.tenant.as_deref(), Some("shop"));
        let route = d.route(&message(b""), |_| None);
        assert_eq!(
            route,
            Route {
                tag: "kafka.logs".into(),
                tenant: None
            }
        );
        let d = Decoder::new(&config("json", "tenant = \"ops\"\ntag = \"k.${topic}.x\""));
        let route = d.route(&message(b""), headers);
        assert_eq!(route.tag, "k.logs.x", "json messages take no tag header");
        assert_eq!(route.tenant.as_deref(), Some("ops"));
    }

    #[test]
    fn has_route_says_whether_a_message_has_a_route_without_building_it() {
        let with = |tag: &'static [u8], tenant: &'static [u8]| {
            move |name: &str| match name {
                "logferry-tag" => Some(tag),
                "logferry-tenant" => Some(tenant),
                _ => None,
            }
        };
        let none = |_: &str| -> Option<&'static [u8]> { None };
        let d = Decoder::new(&config(
            "forward",
            "tenant_header = \"logferry-tenant\"\ntag = \"${topic}.k.${topic}\"",
        ));
        let m = message(b"");
        let a = d.route(&m, with(b"kube.a", b"shop"));
        assert!(d.has_route(&m, with(b"kube.a", b"shop"), &a));
        assert!(!d.has_route(&m, with(b"kube.b", b"shop"), &a));
        assert!(!d.has_route(&m, with(b"kube.a", b"ops"), &a));
        assert!(!d.has_route(&m, none, &a));
        let b = d.route(&m, none);
        assert_eq!(b.tag, "logs.k.logs");
        assert!(d.has_route(&m, none, &b));
        let other = Message { topic: "log", ..m };
        assert!(!d.has_route(&other, none, &b));
        assert!(d.has_route(&other, none, &d.route(&other, none)));
    }
}
