//! `[outputs.NAME]`: the output types, and the framework keys every type takes.
//!
//! Each type's struct lives in its own module (`file`, `null`, `elasticsearch`, `kafka`,
//! `stackdriver`) with its defaults and its validation; this module holds the
//! [`OutputConfig`] enum over them and what the output framework (`outputs::Worker`) reads
//! from every type: `retry`, `dead_letter`, `concurrency` and `unready_after`.
//!
//! Those four fields are repeated in each type's struct rather than shared through
//! `#[serde(flatten)]`: serde does not support `flatten` together with `deny_unknown_fields`
//! (neither the outer nor the flattened struct may use it), and without
//! `deny_unknown_fields` a misspelled key would pass silently. [`OutputConfig`]'s accessors
//! read them from whichever type an output is, and [`OutputConfig::validate_into`] checks them
//! once for every type.
//!
//! Adding an output type: a module next to this one with its struct (the four framework
//! fields included), defaults and `validate_into`, declared and re-exported in `config`; a
//! sink in `outputs`; and one arm in each match here and in `outputs`.

use std::path::PathBuf;
use std::time::Duration;

use logferry_common::config::sections::{self, FieldError};
use logferry_common::config::{duration, ByteSize};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use toml::Value;

use super::defaults;
use super::{
    ConfigError, ElasticsearchOutputConfig, FileOutputConfig, KafkaOutputConfig, NullOutputConfig,
    StackdriverOutputConfig,
};

/// `[outputs.NAME]`: one output.
///
/// Every type also takes the framework keys: `retry`, `dead_letter`, `concurrency` (chunks
/// delivered at once) and `unready_after` (how long the output may fail before `/readyz`
/// turns 503).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum OutputConfig {
    /// JSON lines in local files.
    File(FileOutputConfig),
    /// Discards everything (for benchmarks).
    Null(NullOutputConfig),
    /// Elasticsearch `_bulk` (cargo feature `elasticsearch`).
    Elasticsearch(ElasticsearchOutputConfig),
    /// Kafka producer (cargo feature `kafka`).
    Kafka(KafkaOutputConfig),
    /// Google Cloud Logging `entries.write` (cargo feature `stackdriver`).
    Stackdriver(StackdriverOutputConfig),
}

/// Applies `$body` to the config struct of whichever output type `$self` is.
macro_rules! each_output {
    ($self:expr, $c:ident => $body:expr) => {
        match $self {
            OutputConfig::File($c) => $body,
            OutputConfig::Null($c) => $body,
            OutputConfig::Elasticsearch($c) => $body,
            OutputConfig::Kafka($c) => $body,
            OutputConfig::Stackdriver($c) => $body,
        }
    };
}

impl OutputConfig {
    /// Deserializes an `[outputs.NAME]` table reporting every error of its type's keys (serde's
    /// tagged enum stops at the first and loses the key path).
    ///
    /// # Errors
    /// A missing or unknown `type`, or every error of the type's own keys.
    pub fn from_value(mut value: Value) -> Result<OutputConfig, Vec<FieldError>> {
        let tag = value.as_table_mut().and_then(|t| t.remove("type"));
        let Some(Value::String(tag)) = tag else {
            // No table, or no `type` string: serde's message says which.
            return sections::deserialize_all(value);
        };
        fn of<T: DeserializeOwned>(
            value: Value,
            variant: fn(T) -> OutputConfig,
        ) -> Result<OutputConfig, Vec<FieldError>> {
            sections::deserialize_all(value).map(variant)
        }
        match tag.as_str() {
            "file" => of(value, OutputConfig::File),
            "null" => of(value, OutputConfig::Null),
            "elasticsearch" => of(value, OutputConfig::Elasticsearch),
            "kafka" => of(value, OutputConfig::Kafka),
            "stackdriver" => of(value, OutputConfig::Stackdriver),
            _ => Err(vec![FieldError {
                path: vec!["type".into()],
                message: <toml::de::Error as serde::de::Error>::unknown_variant(
                    &tag,
                    &["file", "null", "elasticsearch", "kafka", "stackdriver"],
                )
                .message()
                .to_owned(),
            }]),
        }
    }

    /// The hosts (`name:port`) the output sends to, for a tenant policy's `hosts`. A URL
    /// without a port gets its scheme's.
    pub fn destination_hosts(&self) -> Vec<String> {
        match self {
            OutputConfig::File(_) | OutputConfig::Null(_) => Vec::new(),
            OutputConfig::Elasticsearch(c) => c.endpoints.iter().map(|e| url_host(e)).collect(),
            OutputConfig::Kafka(c) => {
                let mut hosts: Vec<String> = c
                    .brokers
                    .split(',')
                    .map(|b| b.trim().to_owned())
                    .filter(|b| !b.is_empty())
                    .collect();
                // librdkafka's own list would bypass `brokers`.
                if let Some(servers) = c.librdkafka.get("bootstrap.servers") {
                    hosts.extend(servers.split(',').map(|b| b.trim().to_owned()));
                }
                hosts
            }
            OutputConfig::Stackdriver(c) => {
                let api = c
                    .endpoint
                    .as_deref()
                    .map_or_else(|| "logging.googleapis.com:443".to_owned(), url_host);
                let mut hosts = vec![api];
                hosts.extend(c.metadata_endpoint.as_deref().map(url_host));
                hosts
            }
        }
    }

    /// The local files the output reads or writes, by key: a tenant policy keeps them under
    /// the tenant's directory. A Cloud Logging output without its own credentials would
    /// write with the aggregator's identity, so it names `credentials` as a file to check.
    pub fn local_files(&self) -> Vec<(String, PathBuf)> {
        match self {
            OutputConfig::File(c) => vec![("path".into(), c.path.clone())],
            OutputConfig::Null(_) => Vec::new(),
            OutputConfig::Elasticsearch(c) => {
                let mut files = Vec::new();
                files.extend(c.tls.ca.clone().map(|p| ("tls.ca".into(), p)));
                files.extend(
                    c.template
                        .as_ref()
                        .map(|t| ("template.file".into(), t.file.clone())),
                );
                files
            }
            OutputConfig::Kafka(c) => c
                .librdkafka
                .iter()
                .filter(|(k, _)| k.ends_with(".location"))
                .map(|(k, v)| (format!("librdkafka.{k}"), PathBuf::from(v)))
                .collect(),
            OutputConfig::Stackdriver(c) => match c.credentials.as_deref() {
                Some("anonymous") => Vec::new(),
                Some(path) => vec![("credentials".into(), PathBuf::from(path))],
                None => vec![("credentials".into(), PathBuf::new())],
            },
        }
    }

    /// The output's retry settings.
    pub fn retry(&self) -> &RetryConfig {
        each_output!(self, c => &c.retry)
    }

    /// The output's dead-letter settings.
    pub fn dead_letter(&self) -> &DeadLetterConfig {
        each_output!(self, c => &c.dead_letter)
    }

    /// Chunks the output delivers at once.
    pub fn concurrency(&self) -> usize {
        each_output!(self, c => c.concurrency)
    }

    /// How long the output may keep failing before `/readyz` turns 503 (zero: never).
    pub fn unready_after(&self) -> Duration {
        each_output!(self, c => c.unready_after)
    }

    /// The output type as written in the config.
    pub fn type_name(&self) -> &'static str {
        match self {
            OutputConfig::File(_) => "file",
            OutputConfig::Null(_) => "null",
            OutputConfig::Elasticsearch(_) => "elasticsearch",
            OutputConfig::Kafka(_) => "kafka",
            OutputConfig::Stackdriver(_) => "stackdriver",
        }
    }

    /// Checks the framework keys and the type's own; problems are reported with their key
    /// under `key`.
    pub(super) fn validate_into(&self, key: &str, errors: &mut Vec<ConfigError>) {
        let mut err =
            |k: &str, msg: String| errors.push(ConfigError::new(format!("{key}.{k}"), msg));
        let retry = self.retry();
        if retry.initial.is_zero() {
            err("retry.initial", "must be greater than 0".into());
        }
        if retry.max_interval < retry.initial {
            err(
                "retry.max_interval",
                "must be at least retry.initial".into(),
            );
        }
        if !(1..=64).contains(&self.concurrency()) {
            err("concurrency", "must be between 1 and 64".into());
        }
        let dl = self.dead_letter();
        if dl.enabled && dl.max_size.bytes() < 64 * 1024 {
            err("dead_letter.max_size", "must be at least 64KiB".into());
        }
        match self {
            OutputConfig::File(c) => c.validate_into(&mut err),
            OutputConfig::Null(_) => {}
            OutputConfig::Elasticsearch(c) => c.validate_into(&mut err),
            OutputConfig::Kafka(c) => c.validate_into(&mut err),
            OutputConfig::Stackdriver(c) => c.validate_into(&mut err),
        }
    }
}

/// `host:port` of a URL such as `https://es:9200/prefix` (the port from the scheme when not
/// given); the text itself when it is no URL.
fn url_host(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let authority = rest.split(['/', '?', '#']).next().unwrap_or(rest);
    let authority = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if authority
        .rsplit_once(':')
        .is_some_and(|(_, port)| port.parse::<u16>().is_ok())
    {
        return authority.to_owned();
    }
    match scheme {
        "https" => format!("{authority}:443"),
        "http" => format!("{authority}:80"),
        _ => authority.to_owned(),
    }
}

/// `dead_letter`: where records go that the sink rejected or that ran out of retries.
///
/// Dead letters are chunk files under `<buffer>/outputs/<name>/dead-letter/`; see
/// `outputs::dead_letter` for the format and `logferry-aggregator dead-letter list|replay`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DeadLetterConfig {
    /// Keep dead letters. When off, such records are dropped and counted in
    /// `logferry_dropped_records_total{reason="dead_letter_disabled"}`.
    #[serde(default = "defaults::yes")]
    pub enabled: bool,
    /// Most bytes the dead-letter directory may hold.
    #[serde(default = "output_defaults::dead_letter_max_size")]
    pub max_size: ByteSize,
    /// What happens when it is full: `block` (the chunk stays in the buffer and is retried,
    /// nothing is lost; the output counts as failing) or `drop` (the records are dropped and
    /// counted in `logferry_dropped_records_total{reason="dead_letter_full"}`).
    #[serde(default)]
    pub when_full: DeadLetterWhenFull,
}

/// `dead_letter.when_full`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeadLetterWhenFull {
    /// Keep the chunk and retry later.
    #[default]
    Block,
    /// Drop the records (counted).
    Drop,
}

impl Default for DeadLetterConfig {
    fn default() -> Self {
        DeadLetterConfig {
            enabled: true,
            max_size: output_defaults::dead_letter_max_size(),
            when_full: DeadLetterWhenFull::default(),
        }
    }
}

/// `retry`: exponential backoff with full jitter between delivery attempts of one chunk.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RetryConfig {
    /// First backoff.
    #[serde(default = "output_defaults::retry_initial", with = "duration")]
    pub initial: Duration,
    /// Largest backoff.
    #[serde(default = "output_defaults::retry_max_interval", with = "duration")]
    pub max_interval: Duration,
    /// Give up on a chunk after this long (moved to dead letters) unless `forever`.
    #[serde(default = "output_defaults::retry_timeout", with = "duration")]
    pub timeout: Duration,
    /// Never give up.
    #[serde(default = "output_defaults::retry_forever")]
    pub forever: bool,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            initial: output_defaults::retry_initial(),
            max_interval: output_defaults::retry_max_interval(),
            timeout: output_defaults::retry_timeout(),
            forever: output_defaults::retry_forever(),
        }
    }
}

/// Defaults of the framework keys, and of keys several output types share.
pub(super) mod output_defaults {
    use super::*;

    pub(in crate::config) fn retry_initial() -> Duration {
        Duration::from_secs(1)
    }
    pub(in crate::config) fn retry_max_interval() -> Duration {
        Duration::from_secs(30)
    }
    pub(in crate::config) fn retry_timeout() -> Duration {
        Duration::from_secs(72 * 3600)
    }
    pub(in crate::config) fn retry_forever() -> bool {
        false
    }
    pub(in crate::config) fn one() -> usize {
        1
    }
    pub(in crate::config) fn two() -> usize {
        2
    }
    pub(in crate::config) fn unready_after() -> Duration {
        Duration::from_secs(300)
    }
    pub(in crate::config) fn dead_letter_max_size() -> ByteSize {
        ByteSize::mib(1024)
    }
    pub(in crate::config) fn tag_key() -> String {
        "tag".into()
    }
    pub(in crate::config) fn request_timeout() -> Duration {
        Duration::from_secs(60)
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::no_env;
    use super::super::{Config, EsAction};
    use super::*;

    #[test]
    fn output_types_parse_and_validate() {
        let bad = r#"
            [[route]]
            match = "**"
            outputs = ["es", "k", "gcl"]
            [outputs.es]
            type = "elasticsearch"
            endpoints = ["localhost:9200"]
            index = "logs-%Q"
            auth = { username = "u" }
            bulk_max_records = 0
            [outputs.k]
            type = "kafka"
            brokers = ""
            topic = "logs.${kubernetes.namespace_name"
            topic_default = "bad topic"
            librdkafka = { "bootstrap.servers" = "x" }
            concurrency = 0
            [outputs.gcl]
            type = "stackdriver"
            max_request_bytes = "20MB"
            max_entry_bytes = "1MiB"
            dead_letter = { max_size = "1KiB" }
        "#;
        let config = Config::parse_with_env(bad, no_env).unwrap();
        let errors = config.validate().unwrap_err().0;
        let keys: Vec<&str> = errors.iter().map(|e| e.key.as_str()).collect();
        for expected in [
            "outputs.es.endpoints[0]",
            "outputs.es.index",
            "outputs.es.auth",
            "outputs.es.bulk_max_records",
            "outputs.k.brokers",
            "outputs.k.topic",
            "outputs.k.topic_default",
            "outputs.k.librdkafka.bootstrap.servers",
            "outputs.k.concurrency",
            "outputs.gcl.max_request_bytes",
            "outputs.gcl.max_entry_bytes",
            "outputs.gcl.dead_letter.max_size",
        ] {
            assert!(keys.contains(&expected), "{expected} not in {keys:?}");
        }

        let good = r#"
            [[route]]
            match = "**"
            outputs = ["es", "k"]
            [outputs.es]
            type = "elasticsearch"
            endpoints = ["https://es:9200"]
            index = "logs-${kubernetes.namespace_name}-%Y.%m.%d"
            auth = { api_key = "${ES_KEY}" }
            [outputs.k]
            type = "kafka"
            brokers = "k:9092"
            topic = "logs"
            dead_letter = { when_full = "drop" }
        "#;
        let config =
            Config::parse_with_env(good, |k| (k == "ES_KEY").then(|| "c2VjcmV0".into())).unwrap();
        config.validate().unwrap();
        let OutputConfig::Elasticsearch(es) = &config.outputs["es"] else {
            panic!("elasticsearch output")
        };
        // The template reference survives ${ENV} substitution; the secret is substituted.
        assert_eq!(es.index, "logs-${kubernetes.namespace_name}-%Y.%m.%d");
        let key = es.auth.as_ref().unwrap().api_key.as_ref().unwrap();
        assert_eq!(key.expose(), "c2VjcmV0");
        assert!(
            !format!("{:?}", es.auth).contains("c2VjcmV0"),
            "secrets do not print"
        );
        assert_eq!(es.action, EsAction::Index);
        assert!(es.generate_id);
        assert_eq!(config.outputs["k"].concurrency(), 2);
        assert_eq!(
            config.outputs["k"].dead_letter().when_full,
            DeadLetterWhenFull::Drop
        );
        assert_eq!(
            config.outputs["es"].unready_after(),
            Duration::from_secs(300)
        );
    }
}
