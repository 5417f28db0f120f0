//! `type = "stackdriver"`: Google Cloud Logging `entries.write` (see `outputs::stackdriver`).
//!
//! Size limits are checked against the API's own (10MB per request, about 256KiB per entry).

use std::time::Duration;

use logferry_common::config::{duration, ByteSize};
use serde::Deserialize;

use super::output::{output_defaults, DeadLetterConfig, RetryConfig};

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
    #[serde(default = "stackdriver_defaults::gcl_max_request_bytes")]
    pub max_request_bytes: ByteSize,
    /// Largest LogEntry (the API's limit is about 256KiB); larger entries are truncated (see
    /// `outputs::stackdriver::mapping`).
    #[serde(default = "stackdriver_defaults::gcl_max_entry_bytes")]
    pub max_entry_bytes: ByteSize,
    /// Most entries per request.
    #[serde(default = "stackdriver_defaults::gcl_max_entries")]
    pub max_entries_per_request: usize,
    /// Timeout of one request.
    #[serde(default = "output_defaults::request_timeout", with = "duration")]
    pub request_timeout: Duration,
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

impl StackdriverOutputConfig {
    /// Checks the type's own keys; `err` takes a key relative to the output.
    pub(super) fn validate_into(&self, err: &mut impl FnMut(&str, String)) {
        if !cfg!(feature = "stackdriver") {
            err(
                "type",
                "this build has no stackdriver output (cargo feature `stackdriver`)".into(),
            );
        }
        if let Some(p) = &self.project_id {
            if p.is_empty() {
                err(
                    "project_id",
                    "must not be empty (leave it out to ask the metadata server)".into(),
                );
            }
        }
        if let Some(e) = &self.endpoint {
            if !(e.starts_with("http://") || e.starts_with("https://")) {
                err(
                    "endpoint",
                    format!("{e:?} is not an http:// or https:// URL"),
                );
            }
        }
        if self.max_request_bytes.bytes() < 64 * 1024 || self.max_request_bytes.bytes() > 10_000_000
        {
            err(
                "max_request_bytes",
                "must be between 64KiB and 10MB (the API's limit)".into(),
            );
        }
        if self.max_entry_bytes.bytes() < 1024 || self.max_entry_bytes.bytes() > 256 * 1024 {
            err(
                "max_entry_bytes",
                "must be between 1KiB and 256KiB (the API's limit)".into(),
            );
        }
        if self.max_entry_bytes > self.max_request_bytes {
            err(
                "max_entry_bytes",
                "must not exceed max_request_bytes".into(),
            );
        }
        if !(1..=10_000).contains(&self.max_entries_per_request) {
            err(
                "max_entries_per_request",
                "must be between 1 and 10000".into(),
            );
        }
        if self.request_timeout.is_zero() {
            err("request_timeout", "must be greater than 0".into());
        }
    }
}

mod stackdriver_defaults {
    use super::*;

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
