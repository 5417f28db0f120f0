//! The aggregator's configuration: TOML, strict, validated as a whole.
//!
//! Two steps, the same for startup, `validate --config` and reload: [`Config::parse`] (unknown
//! keys and wrong types are errors with the key path and line) and [`Config::validate`] (pure;
//! every semantic problem at once). Parsing goes section by section (`parse`), so a file with
//! problems in several sections reports all of them in one round, together with the semantic
//! problems of the sections that did parse: an operator fixes a config in one round instead of
//! one error per restart. Secrets come from `${ENV}` references, substituted in string values
//! after the TOML syntax is parsed (so a value can never break the syntax).
//!
//! Modules: `listener` (`[server]`), `output` (`[outputs.NAME]` and the keys every output type
//! takes), one per output type (`file`, `null`, `elasticsearch`, `kafka`, `stackdriver`) with
//! its keys, defaults and checks, and `parse` (the section-by-section reading).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use logferry_common::chunk::{FsyncPolicy, OverflowAction};
use logferry_common::config::{duration, parse_listen_addr, parse_toml, read_file, ByteSize};
pub use logferry_common::config::{ConfigError, ConfigErrors};
use serde::Deserialize;

use crate::route::Pattern;

mod elasticsearch;
mod file;
mod kafka;
mod listener;
mod null;
mod output;
mod parse;
mod pipeline;
mod source;
mod stackdriver;

pub use elasticsearch::{
    ElasticsearchOutputConfig, EsAction, EsAuthConfig, EsTemplateConfig, HttpCompression,
    OutputTlsConfig,
};
pub use file::FileOutputConfig;
pub use kafka::{KafkaCompression, KafkaFormat, KafkaOutputConfig};
pub use listener::{
    AuthClientConfig, AuthConfig, Listeners, ServerConfig, ServerTlsConfig, UserConfig,
};
pub use null::NullOutputConfig;
pub use output::{DeadLetterConfig, DeadLetterWhenFull, OutputConfig, RetryConfig};
pub use pipeline::{
    is_dns_label, PipelineBufferConfig, PipelineConfig, PipelinesConfig, PolicyConfig,
    SelectConfig, TenantPolicy, TenantPolicyConfig,
};
pub use source::{
    KafkaAssignment, KafkaSourceConfig, KafkaSourceFormat, KafkaStart, SourceConfig,
    OWNED_PROPERTIES as KAFKA_SOURCE_OWNED_PROPERTIES,
};
pub use stackdriver::{StackdriverOutputConfig, StackdriverResourceConfig};

/// The configuration that runs when no `--config` is given.
pub const DEFAULT_CONFIG: &str = include_str!("../default.toml");

/// The whole aggregator configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// `shutdown_timeout`: how long a graceful shutdown may take before undelivered chunks
    /// are left on disk.
    pub shutdown_timeout: Duration,
    /// The Forward listeners: `[server]` (one) or `[[server]]` (several), see [`Listeners`].
    pub server: Listeners,
    /// The HTTP admin listener.
    pub admin: AdminConfig,
    /// Buffer settings, applied to each output's buffer.
    pub buffer: BufferConfig,
    /// What every input shares on its way into the buffers.
    pub ingest: IngestConfig,
    /// `[[route]]`: tag routes, evaluated in order; the first match wins.
    pub routes: Vec<RouteConfig>,
    /// `[outputs.NAME]`: outputs by name.
    pub outputs: BTreeMap<String, OutputConfig>,
    /// `[pipelines]`: the tenant pipelines' directory and policy.
    pub pipelines: PipelinesConfig,
    /// `[sources.NAME]`: inputs besides the Forward listeners (Kafka consumers), by name.
    pub sources: BTreeMap<String, SourceConfig>,
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
    pub(super) fn yes() -> bool {
        true
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

/// The `${NAME}` lookup of a config: `${tag}` and dotted names (`${record.a}`,
/// `${kubernetes.namespace_name}`) are output name templates, resolved per record, so they
/// stay as they are; any other name is an environment variable (whose names have no dots),
/// looked up by `env`.
fn templates_or(env: impl Fn(&str) -> Option<String>) -> impl Fn(&str) -> Option<String> {
    move |k: &str| {
        if k == "tag" || k.contains('.') {
            Some(format!("${{{k}}}"))
        } else {
            env(k)
        }
    }
}

impl Config {
    /// Parses TOML text, substituting `${ENV}` references from the process environment.
    pub fn parse(text: &str) -> Result<Config, ConfigErrors> {
        Self::parse_with_env(text, |k| std::env::var(k).ok())
    }

    /// Parses TOML text with an explicit environment (for tests).
    ///
    /// # Errors
    /// A TOML syntax error, or every missing `${ENV}` variable, alone; otherwise every section
    /// that does not parse, followed by the semantic problems ([`Config::validate`]) of the
    /// sections that did.
    pub fn parse_with_env(
        text: &str,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigErrors> {
        parse::parse(text, parse_toml(text, templates_or(env))?)
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
        self.validate_into(&parse::Unparsed::default(), &mut errors);
        if errors.is_empty() {
            Ok(())
        } else {
            Err(ConfigErrors(errors))
        }
    }

    /// [`Config::validate`] of a config whose `unparsed` sections were left out or at their
    /// defaults: the checks that relate them to other sections are skipped, so their failure
    /// to parse is not reported twice, as something else.
    fn validate_into(&self, unparsed: &parse::Unparsed, errors: &mut Vec<ConfigError>) {
        if !unparsed.server {
            self.server.validate_into(errors);
        }
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
        if !unparsed.server
            && !unparsed.buffer
            && b.total_limit_size < self.server.max_request_bytes()
        {
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
        if !unparsed.server
            && !unparsed.ingest
            && self.ingest.memory_limit < self.server.max_decompressed_bytes()
        {
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

        // An aggregator of tenant pipelines alone needs no output of its own.
        let tenants_only = self.pipelines.dir.is_some();
        if self.outputs.is_empty() && unparsed.outputs.is_empty() && !tenants_only {
            err("outputs", "at least one output is required".into());
        }
        if self.pipelines.rescan_interval.is_zero() {
            err("pipelines.rescan_interval", "must be greater than 0".into());
        }
        let mut output_errors = Vec::new();
        for (name, output) in &self.outputs {
            let key = format!("outputs.{name}");
            if !valid_name(name) {
                err(
                    &key,
                    "output names may only contain letters, digits, '_' and '-'".into(),
                );
            }
            output.validate_into(&key, &mut output_errors);
        }
        file::distinct_dirs_into(&self.outputs, &mut output_errors);
        for (name, source) in &self.sources {
            let key = format!("sources.{name}");
            if !valid_name(name) {
                err(
                    &key,
                    "source names may only contain letters, digits, '_' and '-'".into(),
                );
            }
            source.validate_into(&key, &mut output_errors);
        }

        if self.routes.is_empty() && !unparsed.routes && !tenants_only {
            err(
                "route",
                "at least one [[route]] is required (e.g. match = \"**\")".into(),
            );
        }
        // With a route left out, the others' indexes would not be those of the file.
        let checked_routes = if unparsed.routes {
            &[][..]
        } else {
            &self.routes[..]
        };
        for (i, route) in checked_routes.iter().enumerate() {
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
                if !self.outputs.contains_key(name) && !unparsed.outputs.contains(name) {
                    err(
                        &format!("{key}.outputs"),
                        format!("no output named {name:?} in [outputs]"),
                    );
                }
            }
        }
        for name in self.outputs.keys() {
            if unparsed.routes {
                break;
            }
            if !self.routes.iter().any(|r| r.outputs.contains(name)) {
                err(
                    &format!("outputs.{name}"),
                    "not used by any [[route]]".into(),
                );
            }
        }

        errors.extend(output_errors);
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

/// Whether `name` may name an output or a source (it becomes a directory and a label).
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// Parses a `host:port` listen address.
pub fn parse_addr(s: &str) -> Result<SocketAddr, String> {
    parse_listen_addr(s, "127.0.0.1:24224")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An empty environment.
    pub(super) fn no_env(_: &str) -> Option<String> {
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
