//! `type = "null"`: discards everything (for benchmarks); only the framework keys.

use std::time::Duration;

use logferry_common::config::duration;
use serde::Deserialize;

use super::output::{output_defaults, DeadLetterConfig, RetryConfig};

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
    #[serde(default = "output_defaults::one")]
    pub concurrency: usize,
    /// Failing this long turns `/readyz` 503 (`"0s"`: never).
    #[serde(default = "output_defaults::unready_after", with = "duration")]
    pub unready_after: Duration,
}
