//! The aggregator's configuration: TOML, strict, validated as a whole.
//!
//! Parsing ([`Config::parse`]) rejects unknown keys and wrong types with the key path and line;
//! [`Config::validate`] is pure and returns *every* semantic problem at once, so an operator
//! fixes a config in one round instead of one error per restart. Startup, `validate --config`
//! and reload all go through the same two steps. Secrets come from `${ENV}` references, which
//! are substituted in string values after parsing (so a value can never break the TOML syntax).

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use logferry_common::chunk::{FsyncPolicy, OverflowAction};
use logferry_common::config::{duration, substitute_env, ByteSize};
use serde::Deserialize;

use crate::route::Pattern;

/// The configuration that runs when no `--config` is given.
pub const DEFAULT_CONFIG: &str = include_str!("default.toml");

/// The whole aggregator configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// How long a graceful shutdown may take before undelivered chunks are left on disk.
    #[serde(default = "defaults::shutdown_timeout", with = "duration")]
    pub shutdown_timeout: Duration,
    /// The Forward listener.
    #[serde(default)]
    pub server: ServerConfig,
    /// The HTTP admin listener.
    #[serde(default)]
    pub admin: AdminConfig,
    /// Buffer settings, applied to each output's buffer.
    #[serde(default)]
    pub buffer: BufferConfig,
    /// Tag routes, evaluated in order; the first match wins.
    #[serde(default, rename = "route")]
    pub routes: Vec<RouteConfig>,
    /// Outputs by name.
    #[serde(default)]
    pub outputs: BTreeMap<String, OutputConfig>,
}

/// `[server]`: the Forward listener.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Address to listen on (`host:port`; port 0 picks a free one and logs it).
    #[serde(default = "defaults::listen")]
    pub listen: String,
    /// Largest request accepted; a larger one closes the connection.
    #[serde(default = "defaults::max_request_bytes")]
    pub max_request_bytes: ByteSize,
    /// Largest decompressed size of a gzip request (zip-bomb guard).
    #[serde(default = "defaults::max_decompressed_bytes")]
    pub max_decompressed_bytes: ByteSize,
    /// Connections served at once; more are closed on accept.
    #[serde(default = "defaults::max_connections")]
    pub max_connections: usize,
    /// A connection silent this long is closed.
    #[serde(default = "defaults::idle_timeout", with = "duration")]
    pub idle_timeout: Duration,
    /// How long an acked chunk id is remembered, so a re-sent chunk is acked again without
    /// being stored twice. `"0s"` turns deduplication off.
    #[serde(default = "defaults::dedupe_window", with = "duration")]
    pub dedupe_window: Duration,
}

/// `[admin]`: the HTTP admin listener.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Address of `/metrics`, `/healthz`, `/readyz`, `/reload`.
    #[serde(default = "defaults::admin_listen")]
    pub listen: String,
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
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum OutputConfig {
    /// JSON lines in local files.
    File(FileOutputConfig),
    /// Discards everything (for benchmarks).
    Null(NullOutputConfig),
}

impl OutputConfig {
    /// The output's retry settings.
    pub fn retry(&self) -> &RetryConfig {
        match self {
            OutputConfig::File(c) => &c.retry,
            OutputConfig::Null(c) => &c.retry,
        }
    }

    /// The output type as written in the config.
    pub fn type_name(&self) -> &'static str {
        match self {
            OutputConfig::File(_) => "file",
            OutputConfig::Null(_) => "null",
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
}

/// `type = "null"`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NullOutputConfig {
    /// Retry behaviour (the null output never fails; accepted for uniformity).
    #[serde(default)]
    pub retry: RetryConfig,
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
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: defaults::listen(),
            max_request_bytes: defaults::max_request_bytes(),
            max_decompressed_bytes: defaults::max_decompressed_bytes(),
            max_connections: defaults::max_connections(),
            idle_timeout: defaults::idle_timeout(),
            dedupe_window: defaults::dedupe_window(),
        }
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

/// One problem found in a config, with the key it concerns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Dotted key path, e.g. `outputs.es.path` (empty for the file as a whole).
    pub key: String,
    /// Line in the file, when known.
    pub line: Option<usize>,
    /// What is wrong and how to fix it.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.line, self.key.is_empty()) {
            (Some(line), false) => write!(f, "{} (line {line}): {}", self.key, self.message),
            (Some(line), true) => write!(f, "line {line}: {}", self.message),
            (None, false) => write!(f, "{}: {}", self.key, self.message),
            (None, true) => f.write_str(&self.message),
        }
    }
}

impl ConfigError {
    fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            key: key.into(),
            line: None,
            message: message.into(),
        }
    }
}

/// Every problem found in a config.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid configuration:\n{}", .0.iter().map(|e| format!("  - {e}")).collect::<Vec<_>>().join("\n"))]
pub struct ConfigErrors(pub Vec<ConfigError>);

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
        let mut value: toml::Value = toml::from_str(text).map_err(|e| toml_error(text, &e))?;
        let mut errors = Vec::new();
        substitute_in(&mut value, String::new(), &env, &mut errors);
        if !errors.is_empty() {
            return Err(ConfigErrors(errors));
        }
        // Re-serialising the substituted tree loses line numbers but keeps key paths, which
        // serde's error message names.
        let substituted = toml::to_string(&value).map_err(|e| {
            ConfigErrors(vec![ConfigError::new(
                "",
                format!("cannot re-encode config: {e}"),
            )])
        })?;
        toml::from_str::<Config>(&substituted).map_err(|e| {
            // Point at the line of the original text where we can: find the offending key.
            let mut err = toml_error(&substituted, &e);
            if let Some(first) = err.0.first_mut() {
                let unknown = first
                    .message
                    .split("unknown field `")
                    .nth(1)
                    .and_then(|rest| rest.split('`').next());
                let key = unknown.or_else(|| first.key.rsplit('.').next());
                first.line = key.and_then(|k| find_key_line(text, k));
            }
            err
        })
    }

    /// Reads and parses a config file.
    pub fn load(path: &std::path::Path) -> Result<Config, ConfigErrors> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigErrors(vec![ConfigError::new(
                "",
                format!("cannot read {}: {e}", path.display()),
            )])
        })?;
        Config::parse(&text)
    }

    /// The embedded default configuration.
    pub fn embedded_default() -> Config {
        // The embedded default is checked by the `embedded_default_is_valid` test.
        Config::parse(DEFAULT_CONFIG).expect("embedded default config parses")
    }

    /// Checks everything that can be checked without IO, returning every problem found.
    pub fn validate(&self) -> Result<(), ConfigErrors> {
        let mut errors = Vec::new();
        let mut err = |key: &str, msg: String| errors.push(ConfigError::new(key, msg));

        if let Err(e) = parse_addr(&self.server.listen) {
            err("server.listen", e);
        }
        if let Err(e) = parse_addr(&self.admin.listen) {
            err("admin.listen", e);
        }
        if self.server.max_connections == 0 {
            err("server.max_connections", "must be at least 1".into());
        }
        if self.server.max_request_bytes.bytes() < 1024 {
            err("server.max_request_bytes", "must be at least 1KiB".into());
        }
        if self.server.max_decompressed_bytes < self.server.max_request_bytes {
            err(
                "server.max_decompressed_bytes",
                format!(
                    "must be at least server.max_request_bytes ({})",
                    self.server.max_request_bytes
                ),
            );
        }
        if self.server.idle_timeout.is_zero() {
            err("server.idle_timeout", "must be greater than 0".into());
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
        if b.total_limit_size < self.server.max_request_bytes {
            err(
                "buffer.total_limit_size",
                format!(
                    "must be at least server.max_request_bytes ({}), or a large request could never fit",
                    self.server.max_request_bytes
                ),
            );
        }
        if b.flush_interval.is_zero() {
            err("buffer.flush_interval", "must be greater than 0".into());
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
            let retry = output.retry();
            if retry.initial.is_zero() {
                err(
                    &format!("{key}.retry.initial"),
                    "must be greater than 0".into(),
                );
            }
            if retry.max_interval < retry.initial {
                err(
                    &format!("{key}.retry.max_interval"),
                    "must be at least retry.initial".into(),
                );
            }
            if let OutputConfig::File(f) = output {
                if f.path.as_os_str().is_empty() {
                    err(&format!("{key}.path"), "must not be empty".into());
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

        if errors.is_empty() {
            Ok(())
        } else {
            Err(ConfigErrors(errors))
        }
    }

    /// Warnings: valid but probably not what the operator wants.
    pub fn warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        if let Ok(addr) = parse_addr(&self.server.listen) {
            if !addr.ip().is_loopback() {
                warnings.push(format!(
                    "server.listen = {:?} accepts connections from other hosts without TLS or authentication",
                    self.server.listen
                ));
            }
        }
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
    s.parse::<SocketAddr>()
        .map_err(|e| format!("{s:?} is not an address like \"127.0.0.1:24224\": {e}"))
}

fn toml_error(text: &str, e: &toml::de::Error) -> ConfigErrors {
    let line = e
        .span()
        .map(|span| text[..span.start.min(text.len())].lines().count().max(1));
    let message = e.message().to_owned();
    // toml names the key path in its message for type errors ("... for key `server.listen`").
    let key = message
        .split("for key `")
        .nth(1)
        .and_then(|rest| rest.split('`').next())
        .unwrap_or("")
        .to_owned();
    ConfigErrors(vec![ConfigError { key, line, message }])
}

fn find_key_line(text: &str, key: &str) -> Option<usize> {
    text.lines()
        .position(|l| {
            let l = l.trim_start();
            l.strip_prefix(key)
                .is_some_and(|rest| rest.trim_start().starts_with('='))
        })
        .map(|i| i + 1)
}

fn substitute_in(
    value: &mut toml::Value,
    path: String,
    env: &impl Fn(&str) -> Option<String>,
    errors: &mut Vec<ConfigError>,
) {
    match value {
        toml::Value::String(s) => match substitute_env(s, env) {
            Ok(new) => *s = new,
            Err(e) => errors.push(ConfigError::new(path, e.to_string())),
        },
        toml::Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                substitute_in(item, format!("{path}[{i}]"), env, errors);
            }
        }
        toml::Value::Table(table) => {
            for (k, v) in table.iter_mut() {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                substitute_in(v, p, env, errors);
            }
        }
        _ => {}
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
        assert_eq!(config.server.listen, "127.0.0.1:24224");
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
