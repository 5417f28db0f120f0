//! `type = "kafka"`: one message per record through librdkafka (the `rdkafka` crate, bundled
//! librdkafka, cargo feature `kafka`).
//!
//! ## Message
//! - topic: the `topic` template (`logs.${kubernetes.namespace_name}`), sanitised to
//!   `[A-Za-z0-9._-]`; a record lacking a field goes to `topic_default`, or to dead letters when
//!   there is none;
//! - key: the value of the `key` field (text), none when unset or missing;
//! - value: the record as JSON or msgpack (with `tag_key`/`time_key` added when configured),
//!   or with `format = "forward"` a Forward entry `[EventTime, record]` (the record as
//!   received);
//! - headers: `logferry-tag` (the tag) with `format = "forward"`, then each of `headers`
//!   (templates; one whose record lacks a field is left out);
//! - timestamp: the record time (milliseconds).
//!
//! ## Delivery
//! Producer defaults: `acks=all`, `enable.idempotence=true` (librdkafka's own retries cannot
//! duplicate or reorder), `compression.codec` from the config, `message.max.bytes` and
//! `message.timeout.ms` from `message_max_bytes` and `delivery_timeout`; `librdkafka` options
//! are applied last. Every record of an attempt is produced, then every delivery report is
//! awaited: a record counts as delivered only when its report is OK, and the chunk is released
//! only when all are. A record larger than `message_max_bytes` is rejected before it is
//! produced (dead letters, reason `too_large`); failed reports are retried by the framework,
//! except the permanent ones (message too large, invalid topic), which go to dead letters.

use std::time::Duration;

use logferry_common::msgpack;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};

use super::{Attempt, Failure, FailureKind, Outcome, OutputError, Rec, Sink};
use crate::config::{KafkaFormat, KafkaOutputConfig};
use crate::record::{scalar, write_json_with};
use crate::template::{sanitize_kafka_topic, Template};

/// Bytes librdkafka adds around a message in a record batch (headers, lengths, CRC); a record
/// must fit under `message.max.bytes` with them.
const MESSAGE_OVERHEAD: usize = 128;

/// The Kafka output.
pub struct KafkaOutput {
    name: String,
    producer: FutureProducer,
    topic: Template,
    topic_default: Option<String>,
    key: Option<Vec<String>>,
    format: KafkaFormat,
    include_tag_key: bool,
    tag_key: String,
    time_key: String,
    headers: Vec<(String, Template)>,
    message_max_bytes: usize,
}

/// The header carrying the tag with `format = "forward"` (a Kafka source's `tag_header`).
pub const TAG_HEADER: &str = "logferry-tag";

impl std::fmt::Debug for KafkaOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaOutput")
            .field("name", &self.name)
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

/// The producer properties for a config (the librdkafka options last).
pub fn client_config(c: &KafkaOutputConfig) -> ClientConfig {
    let mut cc = ClientConfig::new();
    cc.set("bootstrap.servers", &c.brokers)
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("compression.codec", c.compression.as_str())
        .set("message.max.bytes", c.message_max_bytes.bytes().to_string())
        .set(
            "message.timeout.ms",
            c.delivery_timeout.as_millis().max(1).to_string(),
        )
        .set("linger.ms", "5");
    for (k, v) in &c.librdkafka {
        cc.set(k, v);
    }
    cc
}

impl KafkaOutput {
    /// Creates the producer (it connects in the background; nothing blocks here).
    pub fn new(name: &str, c: &KafkaOutputConfig) -> Result<KafkaOutput, OutputError> {
        let config_err = |m: String| OutputError::new(FailureKind::Config, m);
        let producer: FutureProducer = client_config(c)
            .create()
            .map_err(|e| config_err(format!("cannot create the Kafka producer: {e}")))?;
        Ok(KafkaOutput {
            name: name.to_owned(),
            producer,
            topic: Template::parse(&c.topic, false).map_err(|e| config_err(e.to_string()))?,
            topic_default: c.topic_default.clone(),
            key: c.key.as_ref().map(|k| {
                k.strip_prefix("record.")
                    .unwrap_or(k)
                    .split('.')
                    .map(str::to_owned)
                    .collect()
            }),
            format: c.format,
            include_tag_key: c.include_tag_key,
            tag_key: c.tag_key.clone(),
            time_key: c.time_key.clone(),
            headers: c
                .headers
                .iter()
                .map(|(name, t)| Ok((name.clone(), Template::parse(t, false)?)))
                .collect::<Result<_, crate::template::TemplateError>>()
                .map_err(|e| config_err(e.to_string()))?,
            message_max_bytes: c.message_max_bytes.bytes() as usize,
        })
    }

    /// The topic of a record, or why it has none.
    fn topic(&self, rec: &Rec) -> Result<String, Failure> {
        match self
            .topic
            .render(&rec.tag, rec.time, &rec.record, sanitize_kafka_topic)
        {
            Ok(mut t) => {
                if t.len() > 249 {
                    t.truncate(249);
                }
                if t.is_empty() || t == "." || t == ".." {
                    t = self
                        .topic_default
                        .clone()
                        .unwrap_or_else(|| "logferry".into());
                }
                Ok(t)
            }
            Err(missing) => self.topic_default.clone().ok_or_else(|| {
                Failure::new(
                    FailureKind::Template,
                    format!("topic template: {missing} (set topic_default)"),
                )
            }),
        }
    }

    /// The headers of a record's message, if it has any.
    fn headers(&self, rec: &Rec) -> Option<OwnedHeaders> {
        let tag =
            (self.format == KafkaFormat::Forward).then_some((TAG_HEADER, rec.tag.to_string()));
        let rendered = self.headers.iter().filter_map(|(name, t)| {
            let value = t
                .render(&rec.tag, rec.time, &rec.record, str::to_owned)
                .ok()?;
            Some((name.as_str(), value))
        });
        let mut headers: Option<OwnedHeaders> = None;
        for (key, value) in tag.into_iter().chain(rendered) {
            headers = Some(headers.unwrap_or_default().insert(Header {
                key,
                value: Some(&value),
            }));
        }
        headers
    }

    /// The message value of a record.
    fn value(&self, rec: &Rec, out: &mut Vec<u8>) -> Result<(), Failure> {
        let time = if self.time_key.is_empty() {
            String::new()
        } else {
            rec.time.to_rfc3339()
        };
        let mut extra: Vec<(&str, &str)> = Vec::with_capacity(2);
        if !self.time_key.is_empty() {
            extra.push((&self.time_key, &time));
        }
        if self.include_tag_key {
            extra.push((&self.tag_key, &rec.tag));
        }
        let unencodable = |e: msgpack::MsgpackError| {
            Failure::new(
                FailureKind::Unencodable,
                format!("record cannot be encoded: {e}"),
            )
        };
        match self.format {
            KafkaFormat::Forward => {
                logferry_common::forward::encode_entry(rec.time, &rec.record, out);
                Ok(())
            }
            KafkaFormat::Json => write_json_with(&rec.record, &extra, out).map_err(unencodable),
            KafkaFormat::Msgpack => {
                let extra: Vec<&(&str, &str)> = extra
                    .iter()
                    .filter(|(k, _)| !crate::record::has_key(&rec.record, k))
                    .collect();
                if extra.is_empty() {
                    out.extend_from_slice(&rec.record);
                    return Ok(());
                }
                let mut body: &[u8] = &rec.record;
                let n = msgpack::read_map_len(&mut body).map_err(unencodable)?;
                msgpack::write_map_len(out, n + extra.len() as u32);
                for (k, v) in extra {
                    msgpack::write_str(out, k);
                    msgpack::write_str(out, v);
                }
                out.extend_from_slice(body);
                Ok(())
            }
        }
    }
}

impl Sink for KafkaOutput {
    /// One attempt: produce every record, then await every delivery report.
    async fn send(&self, recs: &[Rec]) -> Result<Attempt, OutputError> {
        let mut outcomes: Vec<Option<Outcome>> = vec![None; recs.len()];
        let mut waiting: Vec<(usize, usize, DeliveryFuture)> = Vec::with_capacity(recs.len());
        let mut value = Vec::new();
        for (i, rec) in recs.iter().enumerate() {
            let topic = match self.topic(rec) {
                Ok(t) => t,
                Err(f) => {
                    outcomes[i] = Some(Outcome::Reject(f));
                    continue;
                }
            };
            value.clear();
            if let Err(f) = self.value(rec, &mut value) {
                outcomes[i] = Some(Outcome::Reject(f));
                continue;
            }
            let key = self
                .key
                .as_ref()
                .and_then(|path| scalar(&rec.record, path))
                .map(|s| s.to_text());
            let size = value.len() + key.as_ref().map_or(0, String::len) + topic.len();
            if size + MESSAGE_OVERHEAD > self.message_max_bytes {
                outcomes[i] = Some(Outcome::Reject(Failure::new(
                    FailureKind::TooLarge,
                    format!(
                        "message of {size} bytes does not fit message_max_bytes ({})",
                        self.message_max_bytes
                    ),
                )));
                continue;
            }
            let millis = i64::from(rec.time.secs) * 1000 + i64::from(rec.time.nanos / 1_000_000);
            let mut record = FutureRecord::to(&topic).payload(&value).timestamp(millis);
            if let Some(k) = &key {
                record = record.key(k);
            }
            if let Some(headers) = self.headers(rec) {
                record = record.headers(headers);
            }
            loop {
                match self.producer.send_result(record) {
                    Ok(future) => {
                        waiting.push((i, value.len(), future));
                        break;
                    }
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                        // The local queue is full: wait for deliveries to make room.
                        record = back;
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    Err((e, _)) => {
                        outcomes[i] = Some(classify(&e));
                        break;
                    }
                }
            }
        }
        let mut bytes = 0u64;
        for (i, len, future) in waiting {
            outcomes[i] = Some(match future.await {
                Ok(Ok(_)) => {
                    bytes += len as u64;
                    Outcome::Delivered
                }
                Ok(Err((e, _))) => classify(&e),
                Err(_) => Outcome::Retry(Failure::new(
                    FailureKind::Delivery,
                    "producer dropped the message",
                )),
            });
        }
        if !recs.is_empty()
            && outcomes
                .iter()
                .all(|o| matches!(o, Some(Outcome::Retry(_))))
        {
            if let Some(Some(Outcome::Retry(f))) = outcomes.first() {
                return Err(OutputError::new(f.kind, f.reason.clone()));
            }
        }
        Ok(Attempt {
            outcomes: outcomes
                .into_iter()
                .map(|o| {
                    o.unwrap_or_else(|| {
                        Outcome::Retry(Failure::new(FailureKind::Internal, "not produced"))
                    })
                })
                .collect(),
            bytes,
        })
    }

    /// Fetches the cluster metadata (for `validate --check-outputs`).
    async fn check(&self) -> Result<String, OutputError> {
        let producer = self.producer.clone();
        tokio::task::spawn_blocking(move || {
            producer
                .client()
                .fetch_metadata(None, Duration::from_secs(10))
                .map(|m| {
                    format!(
                        "{} broker(s), {} topic(s)",
                        m.brokers().len(),
                        m.topics().len()
                    )
                })
                .map_err(|e| {
                    OutputError::new(
                        FailureKind::Connection,
                        format!("metadata request failed: {e}"),
                    )
                })
        })
        .await
        .unwrap_or_else(|e| Err(OutputError::new(FailureKind::Panic, e.to_string())))
    }

    /// Waits (bounded) for queued messages on shutdown.
    async fn close(&self) {
        let producer = self.producer.clone();
        let _ = tokio::task::spawn_blocking(move || producer.flush(Duration::from_secs(5))).await;
    }
}

/// Outcome of a failed produce or delivery report.
fn classify(e: &KafkaError) -> Outcome {
    let code = e.rdkafka_error_code();
    match code {
        Some(RDKafkaErrorCode::MessageSizeTooLarge | RDKafkaErrorCode::InvalidMessageSize) => {
            Outcome::Reject(Failure::new(FailureKind::TooLarge, e.to_string()))
        }
        Some(RDKafkaErrorCode::InvalidTopic | RDKafkaErrorCode::InvalidMessage) => {
            Outcome::Reject(Failure::new(FailureKind::Rejected, e.to_string()))
        }
        Some(RDKafkaErrorCode::MessageTimedOut) => {
            Outcome::Retry(Failure::new(FailureKind::Timeout, e.to_string()))
        }
        _ => Outcome::Retry(Failure::new(FailureKind::Delivery, e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Origin;
    use bytes::Bytes;
    use logferry_common::forward::EventTime;
    use std::sync::Arc;

    fn output(extra: &str) -> KafkaOutput {
        let text = format!(
            "[outputs.k]\ntype = \"kafka\"\nbrokers = \"127.0.0.1:1\"\n{extra}\n[[route]]\nmatch = \"**\"\noutputs = [\"k\"]\n"
        );
        let c = crate::config::Config::parse_with_env(&text, |_| None).unwrap();
        c.validate().unwrap();
        match &c.outputs["k"] {
            crate::config::OutputConfig::Kafka(c) => KafkaOutput::new("k", c).unwrap(),
            _ => unreachable!(),
        }
    }

    fn rec(v: serde_json::Value) -> Rec {
        Rec {
            origin: Origin::default(),
            frame: 0,
            index: 0,
            tag: Arc::from("kube.a"),
            time: EventTime::new(1_700_000_000, 0),
            record: Bytes::from(rmp_serde::to_vec_named(&v).unwrap()),
        }
    }

    #[test]
    fn topics_and_values() {
        let out = output("topic = \"logs.${kubernetes.namespace_name}\"\ntopic_default = \"logs.other\"\ninclude_tag_key = true\ntime_key = \"time\"\nformat = \"msgpack\"");
        let r = rec(serde_json::json!({"kubernetes": {"namespace_name": "a b"}, "m": 1}));
        assert_eq!(out.topic(&r).unwrap(), "logs.a_b");
        assert_eq!(
            out.topic(&rec(serde_json::json!({}))).unwrap(),
            "logs.other"
        );
        let mut v = Vec::new();
        out.value(&r, &mut v).unwrap();
        let decoded: serde_json::Value = rmp_serde::from_slice(&v).unwrap();
        assert_eq!(decoded["tag"], "kube.a");
        assert_eq!(decoded["time"], "2023-11-14T22:13:20.000000000Z");
        assert_eq!(decoded["m"], 1);
        let strict = output("topic = \"logs.${record.ns}\"");
        assert_eq!(
            strict
                .topic(&rec(serde_json::json!({})))
                .unwrap_err()
                .kind
                .as_str(),
            "template"
        );
    }

    #[test]
    fn forward_values_keep_the_time_and_carry_the_tag_and_templated_headers() {
        use rdkafka::message::Headers;
        let out = output("topic = \"t\"\nformat = \"forward\"\nheaders = { \"logferry-tenant\" = \"${kubernetes.namespace_name}\" }");
        let time = EventTime::new(1_700_000_000, 123_456_789);
        let r = Rec {
            time,
            ..rec(serde_json::json!({"kubernetes": {"namespace_name": "shop"}}))
        };
        let mut v = Vec::new();
        out.value(&r, &mut v).unwrap();
        let mut entries = logferry_common::forward::Entries::new(&v);
        let entry = entries.next().unwrap().unwrap();
        assert_eq!((entry.time, entry.record), (time, &r.record[..]));
        let headers = out.headers(&r).unwrap();
        let found: Vec<(String, Vec<u8>)> = headers
            .iter()
            .map(|h| (h.key.to_owned(), h.value.unwrap_or_default().to_vec()))
            .collect();
        assert_eq!(
            found,
            [
                (TAG_HEADER.to_owned(), b"kube.a".to_vec()),
                ("logferry-tenant".to_owned(), b"shop".to_vec())
            ]
        );
        // A record lacking the field gets no such header.
        let bare = out.headers(&rec(serde_json::json!({}))).unwrap();
        assert_eq!(bare.count(), 1);
    }
}
