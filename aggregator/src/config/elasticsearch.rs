//! `type = "elasticsearch"`: `_bulk` requests (see `outputs::elasticsearch`).
//!
//! The index name is a template ([`crate::template`]) parsed here, so a bad one fails
//! validation rather than the first delivery. Secrets (`auth`) come from `${ENV}` and never
//! print.

use std::path::PathBuf;
use std::time::Duration;

use logferry_common::config::{duration, ByteSize, Secret};
use serde::Deserialize;

use super::defaults;
use super::output::{output_defaults, DeadLetterConfig, RetryConfig};
use crate::template::Template;

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
    #[serde(default = "elasticsearch_defaults::es_index")]
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
    /// A record field (dotted path) whose text is the document `_id` when a record has it,
    /// e.g. the `id_key` of a Kafka source, so a message consumed again overwrites its
    /// document. Records without it get the generated id (or none, without `generate_id`).
    #[serde(default)]
    pub id_key: Option<String>,
    /// Add the tag to each document under `tag_key`.
    #[serde(default)]
    pub include_tag_key: bool,
    /// Field name for `include_tag_key`.
    #[serde(default = "output_defaults::tag_key")]
    pub tag_key: String,
    /// Field that receives the record time (RFC 3339, nanoseconds), unless the record already
    /// has it. Empty: none.
    #[serde(default = "elasticsearch_defaults::es_time_key")]
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
    #[serde(default = "elasticsearch_defaults::es_bulk_max_bytes")]
    pub bulk_max_bytes: ByteSize,
    /// Most documents per bulk request.
    #[serde(default = "elasticsearch_defaults::es_bulk_max_records")]
    pub bulk_max_records: usize,
    /// Timeout of one bulk request.
    #[serde(default = "output_defaults::request_timeout", with = "duration")]
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
    #[serde(default = "output_defaults::two")]
    pub concurrency: usize,
    /// Failing this long turns `/readyz` 503 (`"0s"`: never).
    #[serde(default = "output_defaults::unready_after", with = "duration")]
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

impl ElasticsearchOutputConfig {
    /// Checks the type's own keys; `err` takes a key relative to the output.
    pub(super) fn validate_into(&self, err: &mut impl FnMut(&str, String)) {
        if !cfg!(feature = "elasticsearch") {
            err(
                "type",
                "this build has no elasticsearch output (cargo feature `elasticsearch`)".into(),
            );
        }
        if self.endpoints.is_empty() {
            err(
                "endpoints",
                "at least one endpoint is required, e.g. [\"http://127.0.0.1:9200\"]".into(),
            );
        }
        for (i, e) in self.endpoints.iter().enumerate() {
            if !(e.starts_with("http://") || e.starts_with("https://")) || e.len() <= 8 {
                err(
                    &format!("endpoints[{i}]"),
                    format!("{e:?} is not an http:// or https:// URL"),
                );
            }
        }
        if let Err(e) = Template::parse(&self.index, true) {
            err("index", e.to_string());
        }
        if let Some(auth) = &self.auth {
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
        if self.bulk_max_bytes.bytes() < 1024 {
            err("bulk_max_bytes", "must be at least 1KiB".into());
        }
        if self.bulk_max_records == 0 {
            err("bulk_max_records", "must be at least 1".into());
        }
        if self.request_timeout.is_zero() {
            err("request_timeout", "must be greater than 0".into());
        }
        if let Some(t) = &self.template {
            if t.name.is_empty() {
                err("template.name", "must not be empty".into());
            }
        }
    }
}

mod elasticsearch_defaults {
    use super::*;

    pub(super) fn es_index() -> String {
        "logs-%Y.%m.%d".into()
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
}
