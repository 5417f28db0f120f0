//! `type = "kafka"`: a librdkafka producer (see `outputs::kafka`).
//!
//! The topic is a template ([`crate::template`]) parsed here; `librdkafka` passes properties
//! through, except the brokers, which only `brokers` sets.

use std::collections::BTreeMap;
use std::time::Duration;

use logferry_common::config::{duration, ByteSize};
use serde::Deserialize;

use super::output::{output_defaults, DeadLetterConfig, RetryConfig};
use crate::template::{valid_kafka_topic, Template};

/// `type = "kafka"`: a librdkafka producer.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaOutputConfig {
    /// Bootstrap brokers: `"host:9092,host2:9092"`.
    pub brokers: String,
    /// Topic template: `${tag}` and record fields (`logs.${kubernetes.namespace_name}`).
    /// Characters Kafka forbids become `_`.
    pub topic: String,
    /// Topic of a record that lacks a field the template needs. Unset: such a record goes to
    /// dead letters.
    #[serde(default)]
    pub topic_default: Option<String>,
    /// Record field whose value is the message key (`kubernetes.pod_name`). Unset: no key.
    #[serde(default)]
    pub key: Option<String>,
    /// Message value format.
    #[serde(default)]
    pub format: KafkaFormat,
    /// Compression codec.
    #[serde(default)]
    pub compression: KafkaCompression,
    /// Largest message (`message.max.bytes`); a larger record goes to dead letters.
    #[serde(default = "kafka_defaults::kafka_message_max_bytes")]
    pub message_max_bytes: ByteSize,
    /// How long librdkafka may try to deliver a message (`message.timeout.ms`) before the
    /// output's own retry takes over.
    #[serde(default = "kafka_defaults::kafka_delivery_timeout", with = "duration")]
    pub delivery_timeout: Duration,
    /// Add the tag to each JSON/msgpack value under `tag_key`.
    #[serde(default)]
    pub include_tag_key: bool,
    /// Field name for `include_tag_key`.
    #[serde(default = "output_defaults::tag_key")]
    pub tag_key: String,
    /// Field that receives the record time (RFC 3339) unless the record has it. Empty: none
    /// (the time is always the message timestamp).
    #[serde(default)]
    pub time_key: String,
    /// Message headers: name = template (`${tag}`, record fields), e.g.
    /// `"logferry-tenant" = "${kubernetes.namespace_name}"` for a Kafka source's
    /// `tenant_header`. A header whose template lacks a field in a record is left out.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// librdkafka properties, passed through last (they override everything above except
    /// `bootstrap.servers`). Defaults set here: `acks=all`, `enable.idempotence=true`.
    #[serde(default)]
    pub librdkafka: BTreeMap<String, String>,
    /// Retry behaviour.
    #[serde(default)]
    pub retry: RetryConfig,
    /// Dead letters.
    #[serde(default)]
    pub dead_letter: DeadLetterConfig,
    /// Chunks delivered at once.
    #[serde(default = "output_defaults::two")]
    pub concurrency: usize,
    /// Failing this long turns `/readyz` 503 (`"0s"`: never).
    #[serde(default = "output_defaults::unready_after", with = "duration")]
    pub unready_after: Duration,
}

/// Message value format of the Kafka output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KafkaFormat {
    /// The record as a JSON object.
    #[default]
    Json,
    /// The record as a msgpack map, as received.
    Msgpack,
    /// A Forward entry `[time, record]` (msgpack; the time with its nanoseconds) with the tag
    /// in a `logferry-tag` header: what a logferry Kafka source with `format = "forward"`
    /// reads back unchanged (the decoupled deployment).
    Forward,
}

/// Compression codec of the Kafka output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KafkaCompression {
    /// None.
    None,
    /// gzip.
    Gzip,
    /// snappy.
    Snappy,
    /// lz4 (cheap and effective on logs).
    #[default]
    Lz4,
    /// zstd.
    Zstd,
}

impl KafkaCompression {
    /// The `compression.codec` value.
    pub fn as_str(self) -> &'static str {
        match self {
            KafkaCompression::None => "none",
            KafkaCompression::Gzip => "gzip",
            KafkaCompression::Snappy => "snappy",
            KafkaCompression::Lz4 => "lz4",
            KafkaCompression::Zstd => "zstd",
        }
    }
}

impl KafkaOutputConfig {
    /// Checks the type's own keys; `err` takes a key relative to the output.
    pub(super) fn validate_into(&self, err: &mut impl FnMut(&str, String)) {
        if !cfg!(feature = "kafka") {
            err(
                "type",
                "this build has no kafka output (cargo feature `kafka`)".into(),
            );
        }
        if self.brokers.trim().is_empty() {
            err(
                "brokers",
                "must list at least one broker, e.g. \"127.0.0.1:9092\"".into(),
            );
        }
        match Template::parse(&self.topic, false) {
            Err(e) => err("topic", e.to_string()),
            Ok(t) if t.is_empty() => err("topic", "must not be empty".into()),
            Ok(_) => {}
        }
        if let Some(d) = &self.topic_default {
            if !valid_kafka_topic(d) {
                err(
                    "topic_default",
                    format!(
                        "{d:?} is not a valid topic name ([A-Za-z0-9._-], at most 249 characters)"
                    ),
                );
            }
        }
        if self.message_max_bytes.bytes() < 1000 || self.message_max_bytes.bytes() > 1_000_000_000 {
            err(
                "message_max_bytes",
                "must be between 1000 and 1000000000 bytes".into(),
            );
        }
        if self.delivery_timeout.is_zero() {
            err("delivery_timeout", "must be greater than 0".into());
        }
        for (name, template) in &self.headers {
            if name.is_empty() {
                err("headers", "a header name must not be empty".into());
            }
            if let Err(e) = Template::parse(template, false) {
                err(&format!("headers.{name}"), e.to_string());
            }
        }
        for k in self.librdkafka.keys() {
            if k == "bootstrap.servers" || k == "metadata.broker.list" {
                err(&format!("librdkafka.{k}"), "set `brokers` instead".into());
            }
        }
    }
}

mod kafka_defaults {
    use super::*;

    pub(super) fn kafka_message_max_bytes() -> ByteSize {
        ByteSize(1_000_000)
    }
    pub(super) fn kafka_delivery_timeout() -> Duration {
        Duration::from_secs(30)
    }
}
