//! The aggregator's configuration: TOML, strict, validated as a whole.
//!
//! Parsing ([`Config::parse`]) rejects unknown keys and wrong types with the key path and line;
//! [`Config::validate`] is pure and returns *every* semantic problem at once, so an operator
//! fixes a config in one round instead of one error per restart. Startup, `validate --config`
//! and reload all go through the same two steps. Secrets come from `${ENV}` references, which
//! are substituted in string values after parsing (so a value can never break the TOML syntax).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use logferry_common::chunk::{FsyncPolicy, OverflowAction};
use logferry_common::config::{
    duration, parse_listen_addr, parse_toml, read_file, ByteSize, Secret,
};
pub use logferry_common::config::{ConfigError, ConfigErrors};
use serde::Deserialize;

use crate::route::Pattern;

mod listener;
pub use listener::{
    AuthClientConfig, AuthConfig, Listeners, ServerConfig, ServerTlsConfig, UserConfig,
};

/// The configuration that runs when no `--config` is given.
pub const DEFAULT_CONFIG: &str = include_str!("default.toml");

/// The whole aggregator configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// How long a graceful shutdown may take before undelivered chunks are left on disk.
    #[serde(default = "defaults::shutdown_timeout", with = "duration")]
    pub shutdown_timeout: Duration,
    /// The Forward listeners: `[server]` (one) or `[[server]]` (several), see [`Listeners`].
    #[serde(default)]
    pub server: Listeners,
    /// The HTTP admin listener.
    #[serde(default)]
    pub admin: AdminConfig,
    /// Buffer settings, applied to each output's buffer.
    #[serde(default)]
    pub buffer: BufferConfig,
    /// What every input shares on its way into the buffers.
    #[serde(default)]
    pub ingest: IngestConfig,
    /// Tag routes, evaluated in order; the first match wins.
    #[serde(default, rename = "route")]
    pub routes: Vec<RouteConfig>,
    /// Outputs by name.
    #[serde(default)]
    pub outputs: BTreeMap<String, OutputConfig>,
}

/// `[admin]`: the HTTP admin listener.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Address of `/metrics`, `/healthz`, `/readyz`, `/reload`.
    #[serde(default = "defaults::admin_listen")]
    pub listen: String,
}

/// `[ingest]`: limits shared by every input (all listeners and connections).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngestConfig {
    /// Most bytes of requests decoded (and inflated) but not yet handed to a buffer, over all
    /// connections. Reserved before a request is parsed or inflated; a connection that finds
    /// none free stops reading until some is.
    #[serde(default = "defaults::ingest_memory_limit")]
    pub memory_limit: ByteSize,
}

impl Default for IngestConfig {
    fn default() -> Self {
        IngestConfig {
            memory_limit: defaults::ingest_memory_limit(),
        }
    }
}

/// `[buffer]`: the durable chunk buffer of each output.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BufferConfig {
    /// Root directory; each output gets `<path>/<output name>/`.
    #[serde(default = "defaults::buffer_path")]
    pub path: PathBuf,
    /// Seal a chunk when it reaches this size.
    #[serde(default = "defaults::chunk_limit_size")]
    pub chunk_limit_size: ByteSize,
    /// Seal a chunk when it holds this many records (unlimited when unset).
    #[serde(default)]
    pub chunk_limit_records: Option<u64>,
    /// Seal a non-empty chunk this old, so records reach the output.
    #[serde(default = "defaults::flush_interval", with = "duration")]
    pub flush_interval: Duration,
    /// Most bytes one output's buffer may hold on disk.
    #[serde(default = "defaults::total_limit_size")]
    pub total_limit_size: ByteSize,
    /// What happens when the buffer is full.
    #[serde(default)]
    pub overflow_action: OverflowAction,
    /// With `overflow_action = "block"`, the longest a request waits for room; then it is
    /// refused (not acked, its connection closed) so the sender re-sends it later or elsewhere.
    #[serde(default = "defaults::block_timeout", with = "duration")]
    pub block_timeout: Duration,
    /// When data is fsync'd, and so what an ack promises.
    #[serde(default)]
    pub fsync: FsyncPolicy,
    /// Period of the background fsync with `fsync = "interval"`.
    #[serde(default = "defaults::commit_interval", with = "duration")]
    pub commit_interval: Duration,
}

/// `[[route]]`: which tags go to which outputs.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Fluentd-style patterns, space-separated: `*` one tag part, `**` zero or more parts,
    /// `{a,b}` alternatives.
    #[serde(rename = "match")]
    pub pattern: String,
    /// Names of the outputs that get every matching record.
    pub outputs: Vec<String>,
}

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

    /// Checks the type-specific keys; problems are reported with their key under `key`.
    fn validate_into(&self, key: &str, errors: &mut Vec<ConfigError>) {
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
            OutputConfig::File(f) => {
                if f.path.as_os_str().is_empty() {
                    err("path", "must not be empty".into());
                }
            }
            OutputConfig::Null(_) => {}
            OutputConfig::Elasticsearch(c) => {
                if !cfg!(feature = "elasticsearch") {
                    err(
                        "type",
                        "this build has no elasticsearch output (cargo feature `elasticsearch`)"
                            .into(),
                    );
                }
                if c.endpoints.is_empty() {
                    err(
                        "endpoints",
                        "at least one endpoint is required, e.g. [\"http://127.0.0.1:9200\"]"
                            .into(),
                    );
                }
                for (i, e) in c.endpoints.iter().enumerate() {
                    if !(e.starts_with("http://") || e.starts_with("https://")) || e.len() <= 8 {
                        err(
                            &format!("endpoints[{i}]"),
                            format!("{e:?} is not an http:// or https:// URL"),
                        );
                    }
                }
                if let Err(e) = crate::template::Template::parse(&c.index, true) {
                    err("index", e.to_string());
                }
                if let Some(auth) = &c.auth {
                    let basic = auth.username.is_some() || auth.password.is_some();
                    if basic && auth.api_key.is_some() {
                        err(
                            "auth",
                            "set either username/password or api_key, not both".into(),
                        );
                    }
                    if auth.username.is_some() != auth.password.is_some() {
                        err("auth", "username and password go together".into());
                    }
                    if !basic && auth.api_key.is_none() {
                        err("auth", "set username and password, or api_key".into());
                    }
                }
                if c.bulk_max_bytes.bytes() < 1024 {
                    err("bulk_max_bytes", "must be at least 1KiB".into());
                }
                if c.bulk_max_records == 0 {
                    err("bulk_max_records", "must be at least 1".into());
                }
                if c.request_timeout.is_zero() {
                    err("request_timeout", "must be greater than 0".into());
                }
                if let Some(t) = &c.template {
                    if t.name.is_empty() {
                        err("template.name", "must not be empty".into());
                    }
                }
            }
            OutputConfig::Kafka(c) => {
                if !cfg!(feature = "kafka") {
                    err(
                        "type",
                        "this build has no kafka output (cargo feature `kafka`)".into(),
                    );
                }
                if c.brokers.trim().is_empty() {
                    err(
                        "brokers",
                        "must list at least one broker, e.g. \"127.0.0.1:9092\"".into(),
                    );
                }
                match crate::template::Template::parse(&c.topic, false) {
                    Err(e) => err("topic", e.to_string()),
                    Ok(t) if t.is_empty() => err("topic", "must not be empty".into()),
                    Ok(_) => {}
                }
                if let Some(d) = &c.topic_default {
                    if !crate::template::valid_kafka_topic(d) {
                        err("topic_default", format!("{d:?} is not a valid topic name ([A-Za-z0-9._-], at most 249 characters)"));
                    }
                }
                if c.message_max_bytes.bytes() < 1000 || c.message_max_bytes.bytes() > 1_000_000_000
                {
                    err(
                        "message_max_bytes",
                        "must be between 1000 and 1000000000 bytes".into(),
                    );
                }
                if c.delivery_timeout.is_zero() {
                    err("delivery_timeout", "must be greater than 0".into());
                }
                for k in c.librdkafka.keys() {
                    if k == "bootstrap.servers" || k == "metadata.broker.list" {
                        err(&format!("librdkafka.{k}"), "set `brokers` instead".into());
                    }
                }
            }
            OutputConfig::Stackdriver(c) => {
                if !cfg!(feature = "stackdriver") {
                    err(
                        "type",
                        "this build has no stackdriver output (cargo feature `stackdriver`)".into(),
                    );
                }
                if let Some(p) = &c.project_id {
                    if p.is_empty() {
                        err(
                            "project_id",
                            "must not be empty (leave it out to ask the metadata server)".into(),
                        );
                    }
                }
                if let Some(e) = &c.endpoint {
                    if !(e.starts_with("http://") || e.starts_with("https://")) {
                        err(
                            "endpoint",
                            format!("{e:?} is not an http:// or https:// URL"),
                        );
                    }
                }
                if c.max_request_bytes.bytes() < 64 * 1024
                    || c.max_request_bytes.bytes() > 10_000_000
                {
                    err(
                        "max_request_bytes",
                        "must be between 64KiB and 10MB (the API's limit)".into(),
                    );
                }
                if c.max_entry_bytes.bytes() < 1024 || c.max_entry_bytes.bytes() > 256 * 1024 {
                    err(
                        "max_entry_bytes",
                        "must be between 1KiB and 256KiB (the API's limit)".into(),
                    );
                }
                if c.max_entry_bytes > c.max_request_bytes {
                    err(
                        "max_entry_bytes",
                        "must not exceed max_request_bytes".into(),
                    );
                }
                if !(1..=10_000).contains(&c.max_entries_per_request) {
                    err(
                        "max_entries_per_request",
                        "must be between 1 and 10000".into(),
                    );
                }
                if c.request_timeout.is_zero() {
                    err("request_timeout", "must be greater than 0".into());
                }
            }
        }
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
    #[serde(default = "defaults::dead_letter_max_size")]
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
            max_size: defaults::dead_letter_max_size(),
            when_full: DeadLetterWhenFull::default(),
        }
    }
}

/// `type = "file"`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileOutputConfig {
    /// Directory that receives `<tag>.<YYYYMMDDHH>.jsonl` files.
    pub path: PathBuf,
    /// Retry behaviour.
    #[serde(default)]
    pub retry: RetryConfig,
    /// Dead letters.
    #[serde(default)]
    pub dead_letter: DeadLetterConfig,
    /// Chunks delivered at once. Two by default: one chunk is encoded while the previous one
    /// is written and fsync'd (writes are serialised; with more than one, chunks may reach
    /// the files in the order their encoding finished, lines of one chunk stay in order).
    #[serde(default = "defaults::two")]
    pub concurrency: usize,
    /// Failing this long turns `/readyz` 503 (`"0s"`: never).
    #[serde(default = "defaults::unready_after", with = "duration")]
    pub unready_after: Duration,
}

/// `type = "null"`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NullOutputConfig {
    /// Retry behaviour (the null output never fails; accepted for uniformity).
    #[serde(default)]
    pub retry: RetryConfig,
    /// Dead letters (never used by the null output; accepted for uniformity).
    #[serde(default)]
    pub dead_letter: DeadLetterConfig,
    /// Chunks delivered at once.
    #[serde(default = "defaults::one")]
    pub concurrency: usize,
    /// Failing this long turns `/readyz` 503 (`"0s"`: never).
    #[serde(default = "defaults::unready_after", with = "duration")]
    pub unready_after: Duration,
}

/// `type = "elasticsearch"`: `_bulk` requests.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ElasticsearchOutputConfig {
    /// Nodes, used round-robin: `["http://es-0:9200", ...]`.
    pub endpoints: Vec<String>,
    /// Index name template: strftime on the record time (`%Y.%m.%d`), `${tag}`, and record
    /// fields `${record.kubernetes.namespace_name}` (`${a.b}` is short for `${record.a.b}`).
    /// Substituted values are lowercased and characters ES forbids become `_`. A missing field
    /// becomes `index_fallback` when set, otherwise `_`.
    #[serde(default = "defaults::es_index")]
    pub index: String,
    /// What a missing `${record...}` field becomes in the index name.
    #[serde(default)]
    pub index_fallback: Option<String>,
    /// `index` (overwrite by `_id`) or `create` (required for data streams; a duplicate `_id`
    /// counts as already delivered).
    #[serde(default)]
    pub action: EsAction,
    /// Give each record a deterministic `_id` (a hash of the chunk's identity and the record's
    /// place in it), so a retried bulk never duplicates. Off: ES picks ids.
    #[serde(default = "defaults::yes")]
    pub generate_id: bool,
    /// Add the tag to each document under `tag_key`.
    #[serde(default)]
    pub include_tag_key: bool,
    /// Field name for `include_tag_key`.
    #[serde(default = "defaults::tag_key")]
    pub tag_key: String,
    /// Field that receives the record time (RFC 3339, nanoseconds), unless the record already
    /// has it. Empty: none.
    #[serde(default = "defaults::es_time_key")]
    pub time_key: String,
    /// Request body compression.
    #[serde(default)]
    pub compression: HttpCompression,
    /// Basic auth or API key.
    #[serde(default)]
    pub auth: Option<EsAuthConfig>,
    /// TLS for https endpoints.
    #[serde(default)]
    pub tls: OutputTlsConfig,
    /// Largest bulk request body (before compression). ES refuses bodies over
    /// `http.max_content_length` (100MB by default); 5-15MB is the usual sweet spot.
    #[serde(default = "defaults::es_bulk_max_bytes")]
    pub bulk_max_bytes: ByteSize,
    /// Most documents per bulk request.
    #[serde(default = "defaults::es_bulk_max_records")]
    pub bulk_max_records: usize,
    /// Timeout of one bulk request.
    #[serde(default = "defaults::request_timeout", with = "duration")]
    pub request_timeout: Duration,
    /// Install an index template at start (`PUT _index_template/<name>` with the JSON file).
    #[serde(default)]
    pub template: Option<EsTemplateConfig>,
    /// Retry behaviour.
    #[serde(default)]
    pub retry: RetryConfig,
    /// Dead letters.
    #[serde(default)]
    pub dead_letter: DeadLetterConfig,
    /// Chunks delivered at once.
    #[serde(default = "defaults::two")]
    pub concurrency: usize,
    /// Failing this long turns `/readyz` 503 (`"0s"`: never).
    #[serde(default = "defaults::unready_after", with = "duration")]
    pub unready_after: Duration,
}

/// `action` of the Elasticsearch output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EsAction {
    /// `index`: create or overwrite.
    #[default]
    Index,
    /// `create`: fail if the `_id` exists (data streams need it).
    Create,
}

/// Request body compression of HTTP outputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HttpCompression {
    /// `Content-Encoding: gzip`.
    #[default]
    Gzip,
    /// Uncompressed.
    None,
}

/// `auth` of the Elasticsearch output.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EsAuthConfig {
    /// Basic auth user.
    #[serde(default)]
    pub username: Option<String>,
    /// Basic auth password (use `${ENV}`).
    #[serde(default)]
    pub password: Option<Secret>,
    /// API key: the base64 `id:key` as ES returns it in `encoded` (use `${ENV}`).
    #[serde(default)]
    pub api_key: Option<Secret>,
}

/// `tls` of an HTTP output.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputTlsConfig {
    /// PEM file of the CA(s) that sign the server certificate (in addition to the system roots).
    #[serde(default)]
    pub ca: Option<PathBuf>,
    /// Accept any server certificate. For tests only.
    #[serde(default)]
    pub insecure_skip_verify: bool,
}

/// `template` of the Elasticsearch output.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EsTemplateConfig {
    /// Template name.
    pub name: String,
    /// JSON body of `PUT _index_template/<name>`.
    pub file: PathBuf,
    /// Replace an existing template of that name.
    #[serde(default)]
    pub overwrite: bool,
}

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
    #[serde(default = "defaults::kafka_message_max_bytes")]
    pub message_max_bytes: ByteSize,
    /// How long librdkafka may try to deliver a message (`message.timeout.ms`) before the
    /// output's own retry takes over.
    #[serde(default = "defaults::kafka_delivery_timeout", with = "duration")]
    pub delivery_timeout: Duration,
    /// Add the tag to each JSON/msgpack value under `tag_key`.
    #[serde(default)]
    pub include_tag_key: bool,
    /// Field name for `include_tag_key`.
    #[serde(default = "defaults::tag_key")]
    pub tag_key: String,
    /// Field that receives the record time (RFC 3339) unless the record has it. Empty: none
    /// (the time is always the message timestamp).
    #[serde(default)]
    pub time_key: String,
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
    #[serde(default = "defaults::two")]
    pub concurrency: usize,
    /// Failing this long turns `/readyz` 503 (`"0s"`: never).
    #[serde(default = "defaults::unready_after", with = "duration")]
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

/// `type = "stackdriver"`: Google Cloud Logging `entries.write`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StackdriverOutputConfig {
    /// The project; unset: asked from the GCE/GKE metadata server at start.
    #[serde(default)]
    pub project_id: Option<String>,
    /// Log id (`projects/<p>/logs/<log_name>`). Unset: the record's `stream` (`stdout`,
    /// `stderr`), or `logferry` when it has none.
    #[serde(default)]
    pub log_name: Option<String>,
    /// The `k8s_container` resource's cluster labels.
    #[serde(default)]
    pub resource: StackdriverResourceConfig,
    /// Service account key file; unset: application-default credentials (metadata server in
    /// GKE, `GOOGLE_APPLICATION_CREDENTIALS` otherwise). `"anonymous"`: no credentials (local
    /// test servers only).
    #[serde(default)]
    pub credentials: Option<String>,
    /// API endpoint override (tests, private endpoints).
    #[serde(default)]
    pub endpoint: Option<String>,
    /// Metadata server override (`http://host:port`), for the project id, cluster name and
    /// location when the config leaves them out.
    #[serde(default)]
    pub metadata_endpoint: Option<String>,
    /// Largest `entries.write` request body (the API's limit is 10MB).
    #[serde(default = "defaults::gcl_max_request_bytes")]
    pub max_request_bytes: ByteSize,
    /// Largest LogEntry (the API's limit is about 256KiB); larger entries are truncated (see
    /// `outputs::stackdriver::mapping`).
    #[serde(default = "defaults::gcl_max_entry_bytes")]
    pub max_entry_bytes: ByteSize,
    /// Most entries per request.
    #[serde(default = "defaults::gcl_max_entries")]
    pub max_entries_per_request: usize,
    /// Timeout of one request.
    #[serde(default = "defaults::request_timeout", with = "duration")]
    pub request_timeout: Duration,
    /// Retry behaviour.
    #[serde(default)]
    pub retry: RetryConfig,
    /// Dead letters.
    #[serde(default)]
    pub dead_letter: DeadLetterConfig,
    /// Chunks delivered at once.
    #[serde(default = "defaults::two")]
    pub concurrency: usize,
    /// Failing this long turns `/readyz` 503 (`"0s"`: never).
    #[serde(default = "defaults::unready_after", with = "duration")]
    pub unready_after: Duration,
}

/// `resource` of the Stackdriver output: the cluster half of the `k8s_container` labels
/// (namespace, pod and container come from each record's Kubernetes metadata).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StackdriverResourceConfig {
    /// `cluster_name`; unset: the metadata server's `cluster-name` attribute.
    #[serde(default)]
    pub cluster_name: Option<String>,
    /// `location`; unset: the metadata server's `cluster-location` attribute.
    #[serde(default)]
    pub location: Option<String>,
}

/// `retry`: exponential backoff with full jitter between delivery attempts of one chunk.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RetryConfig {
    /// First backoff.
    #[serde(default = "defaults::retry_initial", with = "duration")]
    pub initial: Duration,
    /// Largest backoff.
    #[serde(default = "defaults::retry_max_interval", with = "duration")]
    pub max_interval: Duration,
    /// Give up on a chunk after this long (moved to dead letters) unless `forever`.
    #[serde(default = "defaults::retry_timeout", with = "duration")]
    pub timeout: Duration,
    /// Never give up.
    #[serde(default = "defaults::retry_forever")]
    pub forever: bool,
}

mod defaults {
    use super::*;

    pub(super) fn shutdown_timeout() -> Duration {
        Duration::from_secs(25)
    }
    pub(super) fn listen() -> String {
        "127.0.0.1:24224".into()
    }
    pub(super) fn admin_listen() -> String {
        "127.0.0.1:24231".into()
    }
    pub(super) fn max_request_bytes() -> ByteSize {
        ByteSize::mib(16)
    }
    pub(super) fn max_decompressed_bytes() -> ByteSize {
        ByteSize::mib(64)
    }
    pub(super) fn max_connections() -> usize {
        1024
    }
    pub(super) fn idle_timeout() -> Duration {
        Duration::from_secs(300)
    }
    pub(super) fn dedupe_window() -> Duration {
        Duration::from_secs(600)
    }
    pub(super) fn buffer_path() -> PathBuf {
        "./logferry-data/aggregator".into()
    }
    pub(super) fn chunk_limit_size() -> ByteSize {
        ByteSize::mib(8)
    }
    pub(super) fn flush_interval() -> Duration {
        Duration::from_secs(1)
    }
    pub(super) fn total_limit_size() -> ByteSize {
        ByteSize::mib(1024)
    }
    pub(super) fn block_timeout() -> Duration {
        Duration::from_secs(30)
    }
    pub(super) fn ingest_memory_limit() -> ByteSize {
        ByteSize::mib(256)
    }
    pub(super) fn commit_interval() -> Duration {
        Duration::from_secs(1)
    }
    pub(super) fn retry_initial() -> Duration {
        Duration::from_secs(1)
    }
    pub(super) fn retry_max_interval() -> Duration {
        Duration::from_secs(30)
    }
    pub(super) fn retry_timeout() -> Duration {
        Duration::from_secs(72 * 3600)
    }
    pub(super) fn retry_forever() -> bool {
        false
    }
    pub(super) fn yes() -> bool {
        true
    }
    pub(super) fn one() -> usize {
        1
    }
    pub(super) fn two() -> usize {
        2
    }
    pub(super) fn unready_after() -> Duration {
        Duration::from_secs(300)
    }
    pub(super) fn dead_letter_max_size() -> ByteSize {
        ByteSize::mib(1024)
    }
    pub(super) fn es_index() -> String {
        "logs-%Y.%m.%d".into()
    }
    pub(super) fn tag_key() -> String {
        "tag".into()
    }
    pub(super) fn es_time_key() -> String {
        "@timestamp".into()
    }
    pub(super) fn es_bulk_max_bytes() -> ByteSize {
        ByteSize::mib(5)
    }
    pub(super) fn es_bulk_max_records() -> usize {
        5000
    }
    pub(super) fn request_timeout() -> Duration {
        Duration::from_secs(60)
    }
    pub(super) fn kafka_message_max_bytes() -> ByteSize {
        ByteSize(1_000_000)
    }
    pub(super) fn kafka_delivery_timeout() -> Duration {
        Duration::from_secs(30)
    }
    pub(super) fn gcl_max_request_bytes() -> ByteSize {
        ByteSize(9_500_000)
    }
    pub(super) fn gcl_max_entry_bytes() -> ByteSize {
        ByteSize(250_000)
    }
    pub(super) fn gcl_max_entries() -> usize {
        1000
    }
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: defaults::admin_listen(),
        }
    }
}

impl Default for BufferConfig {
    fn default() -> Self {
        BufferConfig {
            path: defaults::buffer_path(),
            chunk_limit_size: defaults::chunk_limit_size(),
            chunk_limit_records: None,
            flush_interval: defaults::flush_interval(),
            total_limit_size: defaults::total_limit_size(),
            overflow_action: OverflowAction::default(),
            block_timeout: defaults::block_timeout(),
            fsync: FsyncPolicy::default(),
            commit_interval: defaults::commit_interval(),
        }
    }
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            initial: defaults::retry_initial(),
            max_interval: defaults::retry_max_interval(),
            timeout: defaults::retry_timeout(),
            forever: defaults::retry_forever(),
        }
    }
}

impl Config {
    /// Parses TOML text, substituting `${ENV}` references from the process environment.
    pub fn parse(text: &str) -> Result<Config, ConfigErrors> {
        Self::parse_with_env(text, |k| std::env::var(k).ok())
    }

    /// Parses TOML text with an explicit environment (for tests).
    pub fn parse_with_env(
        text: &str,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigErrors> {
        // `${tag}` and dotted names (`${record.a}`, `${kubernetes.namespace_name}`) are output
        // name templates, resolved per record: they stay as they are. Environment variable
        // names have no dots.
        let env = |k: &str| {
            if k == "tag" || k.contains('.') {
                Some(format!("${{{k}}}"))
            } else {
                env(k)
            }
        };
        parse_toml(text, env)
    }

    /// Reads and parses a config file.
    pub fn load(path: &std::path::Path) -> Result<Config, ConfigErrors> {
        Config::parse(&read_file(path)?)
    }

    /// The embedded default configuration.
    pub fn embedded_default() -> Config {
        // The embedded default is checked by the `embedded_default_is_valid` test.
        Config::parse(DEFAULT_CONFIG).expect("embedded default config parses")
    }

    /// Checks everything that can be checked without IO, returning every problem found.
    pub fn validate(&self) -> Result<(), ConfigErrors> {
        let mut errors = Vec::new();
        self.server.validate_into(&mut errors);
        let mut err = |key: &str, msg: String| errors.push(ConfigError::new(key, msg));

        if let Err(e) = parse_addr(&self.admin.listen) {
            err("admin.listen", e);
        }

        let b = &self.buffer;
        if b.path.as_os_str().is_empty() {
            err("buffer.path", "must not be empty".into());
        }
        if b.chunk_limit_size.bytes() < 1024 {
            err("buffer.chunk_limit_size", "must be at least 1KiB".into());
        }
        if b.chunk_limit_records == Some(0) {
            err("buffer.chunk_limit_records", "must be at least 1".into());
        }
        if b.total_limit_size < b.chunk_limit_size {
            err(
                "buffer.total_limit_size",
                format!(
                    "must be at least buffer.chunk_limit_size ({})",
                    b.chunk_limit_size
                ),
            );
        }
        if b.total_limit_size < self.server.max_request_bytes() {
            err(
                "buffer.total_limit_size",
                format!(
                    "must be at least server.max_request_bytes ({}), or a large request could never fit",
                    self.server.max_request_bytes()
                ),
            );
        }
        if b.flush_interval.is_zero() {
            err("buffer.flush_interval", "must be greater than 0".into());
        }
        if b.block_timeout.is_zero() {
            err("buffer.block_timeout", "must be greater than 0".into());
        }
        if self.ingest.memory_limit < self.server.max_decompressed_bytes() {
            err(
                "ingest.memory_limit",
                format!(
                    "must be at least server.max_decompressed_bytes ({}), or the largest request could never be decoded",
                    self.server.max_decompressed_bytes()
                ),
            );
        }
        if b.fsync == FsyncPolicy::Interval && b.commit_interval.is_zero() {
            err(
                "buffer.commit_interval",
                "must be greater than 0 with fsync = \"interval\"".into(),
            );
        }

        if self.outputs.is_empty() {
            err("outputs", "at least one output is required".into());
        }
        let mut output_errors = Vec::new();
        for (name, output) in &self.outputs {
            let key = format!("outputs.{name}");
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            {
                err(
                    &key,
                    "output names may only contain letters, digits, '_' and '-'".into(),
                );
            }
            output.validate_into(&key, &mut output_errors);
        }
        // Two file outputs on one directory would append to the same files, each delivering
        // and retrying the other's tags.
        let mut file_dirs: BTreeMap<PathBuf, &str> = BTreeMap::new();
        for (name, output) in &self.outputs {
            let OutputConfig::File(f) = output else {
                continue;
            };
            if f.path.as_os_str().is_empty() {
                continue;
            }
            let dir = normalize_dir(&f.path);
            match file_dirs.get(&dir) {
                Some(first) => err(
                    &format!("outputs.{name}.path"),
                    format!(
                        "file outputs {first:?} and {name:?} both write to {}; give each its own directory",
                        dir.display()
                    ),
                ),
                None => {
                    file_dirs.insert(dir, name);
                }
            }
        }

        if self.routes.is_empty() {
            err(
                "route",
                "at least one [[route]] is required (e.g. match = \"**\")".into(),
            );
        }
        for (i, route) in self.routes.iter().enumerate() {
            let key = format!("route[{i}]");
            if let Err(e) = Pattern::parse(&route.pattern) {
                err(&format!("{key}.match"), e.to_string());
            }
            if route.outputs.is_empty() {
                err(
                    &format!("{key}.outputs"),
                    "must name at least one output".into(),
                );
            }
            for name in &route.outputs {
                if !self.outputs.contains_key(name) {
                    err(
                        &format!("{key}.outputs"),
                        format!("no output named {name:?} in [outputs]"),
                    );
                }
            }
        }
        for name in self.outputs.keys() {
            if !self.routes.iter().any(|r| r.outputs.contains(name)) {
                err(
                    &format!("outputs.{name}"),
                    "not used by any [[route]]".into(),
                );
            }
        }

        errors.extend(output_errors);
        if errors.is_empty() {
            Ok(())
        } else {
            Err(ConfigErrors(errors))
        }
    }

    /// Warnings: valid but probably not what the operator wants.
    pub fn warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        self.server.warnings_into(&mut warnings);
        if self.buffer.fsync != FsyncPolicy::Always {
            warnings.push(
                "buffer.fsync is not \"always\": acked records can be lost if the machine crashes"
                    .into(),
            );
        }
        warnings
    }
}

/// Parses a `host:port` listen address.
pub fn parse_addr(s: &str) -> Result<SocketAddr, String> {
    parse_listen_addr(s, "127.0.0.1:24224")
}

/// A directory path without `.` components, repeated or trailing separators (lexically only:
/// `..` and symlinks are kept, as resolving them needs IO).
fn normalize_dir(path: &std::path::Path) -> PathBuf {
    let dir: PathBuf = path
        .components()
        .filter(|c| !matches!(c, std::path::Component::CurDir))
        .collect();
    if dir.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        dir
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn embedded_default_is_valid() {
        let config = Config::embedded_default();
        config.validate().unwrap();
        assert_eq!(config.server[0].listen, "127.0.0.1:24224");
        assert_eq!(config.buffer.fsync, FsyncPolicy::Always);
        assert!(matches!(config.outputs["file"], OutputConfig::File(_)));
    }

    #[test]
    fn unknown_keys_are_errors_with_a_line() {
        let text = "[server]\nlisten = \"127.0.0.1:1\"\nlisten_typo = 3\n";
        let err = Config::parse_with_env(text, no_env).unwrap_err();
        let first = &err.0[0];
        assert!(first.message.contains("listen_typo"), "{first}");
        assert_eq!(first.line, Some(3), "{first}");
    }

    #[test]
    fn unknown_output_keys_are_errors() {
        let text = "[outputs.a]\ntype = \"file\"\npath = \"/x\"\nbogus = 1\n";
        let err = Config::parse_with_env(text, no_env).unwrap_err();
        assert!(err.to_string().contains("bogus"), "{err}");
        let text = "[outputs.a]\ntype = \"carrier-pigeon\"\n";
        let err = Config::parse_with_env(text, no_env).unwrap_err();
        assert!(err.to_string().contains("carrier-pigeon"), "{err}");
    }

    #[test]
    fn validate_reports_every_error() {
        let text = r#"
            [server]
            listen = "nowhere"
            max_connections = 0
            [buffer]
            chunk_limit_size = "8MiB"
            total_limit_size = "1MiB"
            [[route]]
            match = "a.**"
            outputs = ["missing"]
            [outputs.out]
            type = "null"
        "#;
        let config = Config::parse_with_env(text, no_env).unwrap();
        let errors = config.validate().unwrap_err().0;
        let keys: Vec<&str> = errors.iter().map(|e| e.key.as_str()).collect();
        for expected in [
            "server.listen",
            "server.max_connections",
            "buffer.total_limit_size",
            "route[0].outputs",
            "outputs.out",
        ] {
            assert!(keys.contains(&expected), "{expected} not in {keys:?}");
        }
    }

    #[test]
    fn env_references_are_substituted_or_reported() {
        let text = "[outputs.f]\ntype = \"file\"\npath = \"${OUT_DIR}/logs\"\n[[route]]\nmatch = \"**\"\noutputs = [\"f\"]\n";
        let config =
            Config::parse_with_env(text, |k| (k == "OUT_DIR").then(|| "/data".into())).unwrap();
        let OutputConfig::File(f) = &config.outputs["f"] else {
            panic!("file output")
        };
        assert_eq!(f.path, PathBuf::from("/data/logs"));
        let err = Config::parse_with_env(text, no_env).unwrap_err();
        assert_eq!(err.0[0].key, "outputs.f.path");
        assert!(err.0[0].message.contains("OUT_DIR"));
    }

    #[test]
    fn file_outputs_may_not_share_a_path() {
        let text = r#"
            [[route]]
            match = "**"
            outputs = ["a", "b", "c", "d"]
            [outputs.a]
            type = "file"
            path = "/data/out"
            [outputs.b]
            type = "file"
            path = "/data//./out/"
            [outputs.c]
            type = "file"
            path = "/data/out2"
            [outputs.d]
            type = "file"
            path = "./rel"
        "#;
        let config = Config::parse_with_env(text, no_env).unwrap();
        let errors = config.validate().unwrap_err().0;
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].key, "outputs.b.path");
        let message = &errors[0].message;
        assert!(
            message.contains("\"a\"") && message.contains("\"b\""),
            "{message}"
        );
        let fine = text
            .replace("./rel", "rel")
            .replace("/data//./out/", "/data/out3");
        Config::parse_with_env(&fine, no_env)
            .unwrap()
            .validate()
            .unwrap();
        let clash = text
            .replace("/data//./out/", "/data/out3")
            .replace("/data/out2", "rel");
        let errors = Config::parse_with_env(&clash, no_env)
            .unwrap()
            .validate()
            .unwrap_err()
            .0;
        assert_eq!(errors[0].key, "outputs.d.path", "{errors:?}");
    }

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

    #[test]
    fn sizes_and_durations_parse() {
        let text = "[buffer]\nchunk_limit_size = \"2MiB\"\nflush_interval = \"250ms\"\noverflow_action = \"drop_oldest_chunk\"\nfsync = \"interval\"\n";
        let config = Config::parse_with_env(text, no_env).unwrap();
        assert_eq!(config.buffer.chunk_limit_size, ByteSize::mib(2));
        assert_eq!(config.buffer.flush_interval, Duration::from_millis(250));
        assert_eq!(
            config.buffer.overflow_action,
            OverflowAction::DropOldestChunk
        );
        assert_eq!(config.buffer.fsync, FsyncPolicy::Interval);
        let err =
            Config::parse_with_env("[buffer]\nflush_interval = \"soon\"\n", no_env).unwrap_err();
        assert!(err.to_string().contains("soon"), "{err}");
    }
}
