//! The forwarder's configuration: TOML, strict, validated as a whole.
//!
//! The same two steps run at startup, for `validate --config` and on reload: [`Config::parse`]
//! rejects unknown keys and wrong types (with the key path and, where it can be found, the line),
//! and [`Config::validate`] is pure and returns *every* semantic problem at once, so an operator
//! fixes a config in one round. `${ENV}` references in string values are substituted after
//! parsing (so a value can never break the TOML syntax); a missing variable is an error naming
//! the key. The parsing glue is shared with the aggregator ([`logferry_common::config`]).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use logferry_common::chunk::FsyncPolicy;
use logferry_common::config::sections::{self, Reader};
use logferry_common::config::{
    duration, parse_listen_addr, parse_toml, read_file, ByteSize, Secret,
};
pub use logferry_common::config::{ConfigError, ConfigErrors};
use logferry_common::tls::{self, ClientTlsFiles, TlsVersion};
use serde::Deserialize;
use toml::Table;

/// The configuration that runs when no `--config` is given.
pub const DEFAULT_CONFIG: &str = include_str!("default.toml");

/// Every top-level key, in the order an unknown key's message lists them.
const TOP_LEVEL: &[&str] = &[
    "shutdown_timeout",
    "input",
    "kubernetes",
    "buffer",
    "output",
    "admin",
];

/// The whole forwarder configuration (each section is read on its own by
/// [`Config::parse_with_env`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// `shutdown_timeout`: how long a graceful shutdown may spend sending what is buffered.
    pub shutdown_timeout: Duration,
    /// `[input]`: what is tailed and how it is parsed.
    pub input: InputConfig,
    /// `[kubernetes]`: Kubernetes metadata.
    pub kubernetes: KubernetesConfig,
    /// `[buffer]`: the on-disk buffer.
    pub buffer: BufferConfig,
    /// `[output]`: where records are sent.
    pub output: OutputConfig,
    /// `[admin]`: the HTTP admin listener.
    pub admin: AdminConfig,
}

/// Log line format of a tailed file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    /// Detected per file from its first line.
    #[default]
    Auto,
    /// CRI (containerd, CRI-O): `<time> <stream> <P|F> <message>`.
    Cri,
    /// Docker json-file: `{"log":"...","stream":"...","time":"..."}`.
    Docker,
}

/// Where a file seen for the first time (no checkpoint) is read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReadFrom {
    /// From its first byte.
    #[default]
    Head,
    /// From its end at discovery (only files present at startup; files that appear later are
    /// always read from their first byte, or rotation would lose lines).
    Tail,
}

/// `[input]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputConfig {
    /// Glob patterns of files to tail; wildcards (`*`, `?`, `[...]`) in the file name only.
    #[serde(default = "defaults::paths")]
    pub paths: Vec<String>,
    /// Glob patterns (matched against the whole path) of files not to tail.
    #[serde(default)]
    pub exclude: Vec<String>,
    /// Line format.
    #[serde(default)]
    pub format: Format,
    /// Where new files are read from.
    #[serde(default)]
    pub read_from: ReadFrom,
    /// Longest physical line read; the rest of a longer line is skipped (the line is truncated
    /// and counted in `logferry_tail_truncated_lines_total`).
    #[serde(default = "defaults::max_line_size")]
    pub max_line_size: ByteSize,
    /// Longest message assembled from partial lines (CRI `P`, docker lines without `\n`); a
    /// longer one is sent in pieces of this size (counted, reason `size`).
    #[serde(default = "defaults::max_message_size")]
    pub max_message_size: ByteSize,
    /// A partial message whose last piece does not arrive within this time is sent as it is
    /// (counted, reason `timeout`).
    #[serde(default = "defaults::partial_timeout", with = "duration")]
    pub partial_timeout: Duration,
    /// How long a rotated (renamed or deleted) file is kept open after its last growth, so
    /// lines written just before the runtime reopened its log are read.
    #[serde(default = "defaults::rotate_wait", with = "duration")]
    pub rotate_wait: Duration,
    /// Period of the full glob rescan (inotify finds most new files sooner).
    #[serde(default = "defaults::rescan_interval", with = "duration")]
    pub rescan_interval: Duration,
    /// Period of the fallback size check of every tailed file, for changes inotify missed.
    #[serde(default = "defaults::poll_interval", with = "duration")]
    pub poll_interval: Duration,
    /// First part of the tag; the rest is the file's path with `/` as `.`
    /// (`kube.var.log.containers.<file name>`, as Fluentd and Fluent Bit do).
    #[serde(default = "defaults::tag_prefix")]
    pub tag_prefix: String,
    /// Largest batch of records of one file put in one buffer frame (one Forward request).
    #[serde(default = "defaults::batch_size")]
    pub batch_size: ByteSize,
}

/// `[kubernetes]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KubernetesConfig {
    /// Ask the API server for pod labels, annotations, uid and node (file-name metadata is
    /// always added).
    #[serde(default)]
    pub enabled: bool,
    /// Merge the keys of a message that is a JSON object into the record.
    #[serde(default = "defaults::merge_log")]
    pub merge_log: bool,
    /// With `merge_log`, keep the original string in `log` too.
    #[serde(default = "defaults::keep_log")]
    pub keep_log: bool,
    /// `"in-cluster"` (service account) or an API server URL such as `http://127.0.0.1:8001`.
    #[serde(default = "defaults::api")]
    pub api: String,
    /// This node's name (the pods watched are those with `spec.nodeName` equal to it); default:
    /// the `NODE_NAME` environment variable (set it from the downward API).
    #[serde(default)]
    pub node_name: Option<String>,
}

/// `[buffer]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BufferConfig {
    /// Directory of the chunk files and the offsets database.
    #[serde(default = "defaults::buffer_path")]
    pub path: PathBuf,
    /// Seal a chunk at this size.
    #[serde(default = "defaults::chunk_limit_size")]
    pub chunk_limit_size: ByteSize,
    /// Seal a non-empty chunk this old.
    #[serde(default = "defaults::flush_interval", with = "duration")]
    pub flush_interval: Duration,
    /// Most bytes buffered on disk; when full, files are not read (back-pressure).
    #[serde(default = "defaults::total_limit_size")]
    pub total_limit_size: ByteSize,
    /// When buffered lines are fsync'd (file offsets advance only after).
    #[serde(default)]
    pub fsync: FsyncPolicy,
}

/// Compression of requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Compress {
    /// PackedForward.
    #[default]
    None,
    /// CompressedPackedForward.
    Gzip,
}

/// `[output]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputConfig {
    /// Aggregators, `host:port`; names are re-resolved every `dns_refresh_interval` and every
    /// address found is used.
    #[serde(default = "defaults::servers")]
    pub servers: Vec<String>,
    /// Wait for `{"ack": chunk}` before deleting a chunk. Without it a chunk is deleted once
    /// written to a socket (at-most-once).
    #[serde(default = "defaults::require_ack")]
    pub require_ack: bool,
    /// A request not acked this long is re-sent (on another connection).
    #[serde(default = "defaults::ack_timeout", with = "duration")]
    pub ack_timeout: Duration,
    /// `"none"` or `"gzip"`.
    #[serde(default)]
    pub compress: Compress,
    /// Idle connections send a msgpack `nil` this often; a down server is re-tried with
    /// backoff starting at this interval.
    #[serde(default = "defaults::heartbeat_interval", with = "duration")]
    pub heartbeat_interval: Duration,
    /// Longest wait for a TCP connect.
    #[serde(default = "defaults::connect_timeout", with = "duration")]
    pub connect_timeout: Duration,
    /// Requests in flight (sent, not yet acked) per connection.
    #[serde(default = "defaults::window")]
    pub window: usize,
    /// How often server names are resolved again.
    #[serde(default = "defaults::dns_refresh_interval", with = "duration")]
    pub dns_refresh_interval: Duration,
    /// `[output.tls]`: connect over TLS (the table's presence turns it on).
    #[serde(default)]
    pub tls: Option<OutputTlsConfig>,
    /// Run the Forward shared-key handshake (HELO/PING/PONG) on every connection, after TLS.
    #[serde(default)]
    pub shared_key: Option<Secret>,
    /// Our hostname in the handshake (default: the machine's hostname, the pod name in
    /// Kubernetes). Must differ from the aggregator's.
    #[serde(default)]
    pub self_hostname: Option<String>,
    /// User name, for aggregators with `[server.auth] users`.
    #[serde(default)]
    pub username: Option<String>,
    /// The user's password (use `${ENV}`).
    #[serde(default)]
    pub password: Option<Secret>,
}

/// `[output.tls]`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputTlsConfig {
    /// PEM CA certificates the aggregators' certificates must chain to (default: the system
    /// roots).
    #[serde(default)]
    pub ca: Option<PathBuf>,
    /// PEM client certificate chain, for aggregators that require mutual TLS (`client_ca`).
    #[serde(default)]
    pub cert: Option<PathBuf>,
    /// The client certificate's PEM private key.
    #[serde(default)]
    pub key: Option<PathBuf>,
    /// The name the aggregators' certificates must match (default: the host part of each
    /// `servers` entry; set it when the entries are IP addresses or the certificate names the
    /// Service rather than the pods).
    #[serde(default)]
    pub server_name: Option<String>,
    /// Lowest TLS version offered: `"1.2"` (default) or `"1.3"`.
    #[serde(default)]
    pub min_version: TlsVersion,
}

impl OutputTlsConfig {
    /// The files, as the TLS library takes them.
    pub fn files(&self) -> ClientTlsFiles {
        ClientTlsFiles {
            ca: self.ca.clone(),
            cert: self.cert.clone(),
            key: self.key.clone(),
            min_version: self.min_version,
        }
    }
}

/// `[admin]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Address of `/metrics`, `/healthz`, `/readyz`, `/reload`.
    #[serde(default = "defaults::admin_listen")]
    pub listen: String,
}

mod defaults {
    use super::*;

    pub(super) fn shutdown_timeout() -> Duration {
        Duration::from_secs(25)
    }
    pub(super) fn paths() -> Vec<String> {
        vec!["/var/log/containers/*.log".into()]
    }
    pub(super) fn max_line_size() -> ByteSize {
        ByteSize(64 * 1024)
    }
    pub(super) fn max_message_size() -> ByteSize {
        ByteSize::mib(1)
    }
    pub(super) fn partial_timeout() -> Duration {
        Duration::from_secs(5)
    }
    pub(super) fn rotate_wait() -> Duration {
        Duration::from_secs(5)
    }
    pub(super) fn rescan_interval() -> Duration {
        Duration::from_secs(10)
    }
    pub(super) fn poll_interval() -> Duration {
        // inotify is the primary signal; this is the fallback for changes it misses.
        Duration::from_secs(5)
    }
    pub(super) fn tag_prefix() -> String {
        "kube".into()
    }
    pub(super) fn batch_size() -> ByteSize {
        ByteSize(256 * 1024)
    }
    pub(super) fn merge_log() -> bool {
        true
    }
    pub(super) fn keep_log() -> bool {
        true
    }
    pub(super) fn api() -> String {
        "in-cluster".into()
    }
    pub(super) fn buffer_path() -> PathBuf {
        "./logferry-data/forwarder".into()
    }
    pub(super) fn chunk_limit_size() -> ByteSize {
        ByteSize::mib(2)
    }
    pub(super) fn flush_interval() -> Duration {
        Duration::from_secs(1)
    }
    pub(super) fn total_limit_size() -> ByteSize {
        ByteSize::mib(512)
    }
    pub(super) fn servers() -> Vec<String> {
        vec!["127.0.0.1:24224".into()]
    }
    pub(super) fn require_ack() -> bool {
        true
    }
    pub(super) fn ack_timeout() -> Duration {
        Duration::from_secs(30)
    }
    pub(super) fn heartbeat_interval() -> Duration {
        Duration::from_secs(1)
    }
    pub(super) fn connect_timeout() -> Duration {
        Duration::from_secs(5)
    }
    pub(super) fn window() -> usize {
        4
    }
    pub(super) fn dns_refresh_interval() -> Duration {
        Duration::from_secs(30)
    }
    pub(super) fn admin_listen() -> String {
        "127.0.0.1:24232".into()
    }
}

impl Default for InputConfig {
    fn default() -> Self {
        InputConfig {
            paths: defaults::paths(),
            exclude: Vec::new(),
            format: Format::Auto,
            read_from: ReadFrom::Head,
            max_line_size: defaults::max_line_size(),
            max_message_size: defaults::max_message_size(),
            partial_timeout: defaults::partial_timeout(),
            rotate_wait: defaults::rotate_wait(),
            rescan_interval: defaults::rescan_interval(),
            poll_interval: defaults::poll_interval(),
            tag_prefix: defaults::tag_prefix(),
            batch_size: defaults::batch_size(),
        }
    }
}

impl Default for KubernetesConfig {
    fn default() -> Self {
        KubernetesConfig {
            enabled: false,
            merge_log: defaults::merge_log(),
            keep_log: defaults::keep_log(),
            api: defaults::api(),
            node_name: None,
        }
    }
}

impl Default for BufferConfig {
    fn default() -> Self {
        BufferConfig {
            path: defaults::buffer_path(),
            chunk_limit_size: defaults::chunk_limit_size(),
            flush_interval: defaults::flush_interval(),
            total_limit_size: defaults::total_limit_size(),
            fsync: FsyncPolicy::Always,
        }
    }
}

impl Default for OutputConfig {
    fn default() -> Self {
        OutputConfig {
            servers: defaults::servers(),
            require_ack: defaults::require_ack(),
            ack_timeout: defaults::ack_timeout(),
            compress: Compress::None,
            heartbeat_interval: defaults::heartbeat_interval(),
            connect_timeout: defaults::connect_timeout(),
            window: defaults::window(),
            dns_refresh_interval: defaults::dns_refresh_interval(),
            tls: None,
            shared_key: None,
            self_hostname: None,
            username: None,
            password: None,
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

impl Config {
    /// Parses TOML text, substituting `${ENV}` references from the process environment.
    pub fn parse(text: &str) -> Result<Config, ConfigErrors> {
        Self::parse_with_env(text, |k| std::env::var(k).ok())
    }

    /// Parses TOML text with an explicit environment (for tests).
    ///
    /// # Errors
    /// A TOML syntax error, or every missing `${ENV}` variable, alone; otherwise every error of
    /// every section that does not parse (each section is read on its own), followed by the
    /// semantic problems ([`Config::validate`]) of the sections that did.
    pub fn parse_with_env(
        text: &str,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigErrors> {
        let mut table: Table = parse_toml(text, env)?;
        let mut r = Reader::new(text);
        r.unknown_keys(&table, TOP_LEVEL);
        let shutdown_timeout = match table.remove("shutdown_timeout") {
            Some(v) => r.section_with(
                "shutdown_timeout",
                None,
                v,
                sections::with(duration::deserialize),
            ),
            None => Some(defaults::shutdown_timeout()),
        };
        let input = r.table_section(&mut table, "input");
        let kubernetes = r.table_section(&mut table, "kubernetes");
        let buffer = r.table_section(&mut table, "buffer");
        let output = r.table_section(&mut table, "output");
        let admin = r.table_section(&mut table, "admin");
        let failed: Vec<&str> = [
            ("shutdown_timeout", shutdown_timeout.is_none()),
            ("input", input.is_none()),
            ("kubernetes", kubernetes.is_none()),
            ("buffer", buffer.is_none()),
            ("output", output.is_none()),
            ("admin", admin.is_none()),
        ]
        .into_iter()
        .filter_map(|(name, failed)| failed.then_some(name))
        .collect();
        let config = Config {
            shutdown_timeout: shutdown_timeout.unwrap_or_else(defaults::shutdown_timeout),
            input: input.unwrap_or_default(),
            kubernetes: kubernetes.unwrap_or_default(),
            buffer: buffer.unwrap_or_default(),
            output: output.unwrap_or_default(),
            admin: admin.unwrap_or_default(),
        };
        let mut errors = r.errors;
        if errors.is_empty() {
            return Ok(config);
        }
        // The sections that failed are at their defaults: their semantic checks would speak
        // of values that are not in the file.
        if let Err(semantic) = config.validate() {
            errors.extend(semantic.0.into_iter().filter(|e| {
                let section = e.key.split(['.', '[']).next().unwrap_or("");
                !failed.contains(&section)
            }));
        }
        Err(ConfigErrors(errors))
    }

    /// Reads and parses a config file.
    pub fn load(path: &std::path::Path) -> Result<Config, ConfigErrors> {
        Config::parse(&read_file(path)?)
    }

    /// The embedded default configuration.
    pub fn embedded_default() -> Config {
        // Checked by the `embedded_default_is_valid` test.
        Config::parse(DEFAULT_CONFIG).expect("embedded default config parses")
    }

    /// Checks everything that can be checked without IO, returning every problem found.
    pub fn validate(&self) -> Result<(), ConfigErrors> {
        let mut errors = Vec::new();
        let mut err = |key: &str, msg: String| errors.push(ConfigError::new(key, msg));

        let i = &self.input;
        if i.paths.is_empty() {
            err(
                "input.paths",
                "at least one path pattern is required".into(),
            );
        }
        for (n, p) in i.paths.iter().enumerate() {
            if let Err(e) = crate::discover::PathPattern::parse(p) {
                err(&format!("input.paths[{n}]"), e.to_string());
            }
        }
        for (n, p) in i.exclude.iter().enumerate() {
            if let Err(e) = crate::discover::Glob::parse(p) {
                err(&format!("input.exclude[{n}]"), e.to_string());
            }
        }
        if i.max_line_size.bytes() < 256 {
            err("input.max_line_size", "must be at least 256B".into());
        }
        if i.max_message_size < i.max_line_size {
            err(
                "input.max_message_size",
                format!("must be at least input.max_line_size ({})", i.max_line_size),
            );
        }
        if i.partial_timeout.is_zero() {
            err("input.partial_timeout", "must be greater than 0".into());
        }
        if i.rescan_interval.is_zero() {
            err("input.rescan_interval", "must be greater than 0".into());
        }
        if i.poll_interval.is_zero() {
            err("input.poll_interval", "must be greater than 0".into());
        }
        if i.tag_prefix.is_empty() || i.tag_prefix.chars().any(|c| c.is_whitespace()) {
            err(
                "input.tag_prefix",
                "must be non-empty and without spaces".into(),
            );
        }
        if i.batch_size.bytes() < 1024 {
            err("input.batch_size", "must be at least 1KiB".into());
        }

        let k = &self.kubernetes;
        if k.enabled {
            if !cfg!(feature = "kubernetes") {
                err(
                    "kubernetes.enabled",
                    "this build has no Kubernetes API client (built without the `kubernetes` feature)"
                        .into(),
                );
            }
            if k.api != "in-cluster"
                && !(k.api.starts_with("http://") || k.api.starts_with("https://"))
            {
                err(
                    "kubernetes.api",
                    format!(
                        "{:?} is neither \"in-cluster\" nor an http(s):// URL",
                        k.api
                    ),
                );
            }
            if k.node_name.as_deref().is_some_and(str::is_empty) {
                err("kubernetes.node_name", "must not be empty".into());
            }
        }

        let b = &self.buffer;
        if b.path.as_os_str().is_empty() {
            err("buffer.path", "must not be empty".into());
        }
        if b.chunk_limit_size.bytes() < 4096 {
            err("buffer.chunk_limit_size", "must be at least 4KiB".into());
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
        // A frame holds at most one batch plus one message; it must fit under the total limit.
        let largest_frame = i.batch_size.bytes() + i.max_message_size.bytes() + 64 * 1024;
        if b.total_limit_size.bytes() < 2 * largest_frame {
            err(
                "buffer.total_limit_size",
                format!(
                    "must be at least twice input.batch_size + input.max_message_size + 64KiB ({} bytes)",
                    2 * largest_frame
                ),
            );
        }
        if b.flush_interval.is_zero() {
            err("buffer.flush_interval", "must be greater than 0".into());
        }

        let o = &self.output;
        if o.servers.is_empty() {
            err("output.servers", "at least one server is required".into());
        }
        for (n, s) in o.servers.iter().enumerate() {
            if let Err(e) = crate::net::split_host_port(s) {
                err(&format!("output.servers[{n}]"), e);
            }
        }
        if o.ack_timeout.is_zero() {
            err("output.ack_timeout", "must be greater than 0".into());
        }
        if o.heartbeat_interval.is_zero() {
            err("output.heartbeat_interval", "must be greater than 0".into());
        }
        if o.connect_timeout.is_zero() {
            err("output.connect_timeout", "must be greater than 0".into());
        }
        if o.window == 0 || o.window > 1024 {
            err("output.window", "must be between 1 and 1024".into());
        }
        if o.dns_refresh_interval.is_zero() {
            err(
                "output.dns_refresh_interval",
                "must be greater than 0".into(),
            );
        }
        if let Some(tls) = &o.tls {
            // Loading the files here reports a missing or bad one at `validate` and at start,
            // not at the first connect.
            if let Err(e) = tls::client_config_from(&tls.files()) {
                err("output.tls", e.to_string());
            }
            if let Some(name) = &tls.server_name {
                if let Err(e) = tls::server_name(name) {
                    err("output.tls.server_name", e.to_string());
                }
            }
        }
        if o.shared_key.as_ref().is_some_and(|k| k.expose().is_empty()) {
            err("output.shared_key", "must not be empty".into());
        }
        if o.self_hostname
            .as_ref()
            .is_some_and(|h| h.trim().is_empty())
        {
            err("output.self_hostname", "must not be empty".into());
        }
        match (&o.username, &o.password) {
            (Some(_), None) => err("output.password", "is required with output.username".into()),
            (None, Some(_)) => err("output.username", "is required with output.password".into()),
            (Some(_), Some(_)) if o.shared_key.is_none() => err(
                "output.username",
                "user auth is part of the shared-key handshake: set output.shared_key too".into(),
            ),
            _ => {}
        }
        if let Err(e) = parse_addr(&self.admin.listen) {
            err("admin.listen", e);
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
        if !self.output.require_ack {
            warnings.push(
                "output.require_ack = false: a chunk is deleted once written to a socket; records are lost if the aggregator dies"
                    .into(),
            );
        }
        if self.output.shared_key.is_some() && self.output.tls.is_none() {
            warnings.push(
                "output.shared_key without output.tls: the handshake authenticates, but records still travel in clear text"
                    .into(),
            );
        }
        if self.buffer.fsync != FsyncPolicy::Always {
            warnings.push(
                "buffer.fsync is not \"always\": file offsets can run ahead of what is on disk if the machine crashes"
                    .into(),
            );
        }
        warnings
    }
}

/// Parses a `host:port` listen address.
pub fn parse_addr(s: &str) -> Result<SocketAddr, String> {
    parse_listen_addr(s, "127.0.0.1:24232")
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
        assert_eq!(config.input.paths, vec!["./logferry-data/logs/*.log"]);
        assert_eq!(config.output.servers, vec!["127.0.0.1:24224"]);
        assert_eq!(config.admin.listen, "127.0.0.1:24232");
        assert_eq!(
            config.buffer.path,
            PathBuf::from("./logferry-data/forwarder")
        );
    }

    #[test]
    fn defaults_follow_the_contract() {
        let config = Config::parse_with_env("", no_env).unwrap();
        config.validate().unwrap();
        assert_eq!(config.input.paths, vec!["/var/log/containers/*.log"]);
        assert_eq!(config.shutdown_timeout, Duration::from_secs(25));
        assert!(config.output.require_ack);
    }

    #[test]
    fn unknown_keys_are_errors_with_a_line() {
        let text = "[input]\npaths = [\"/x/*.log\"]\npath_typo = 3\n";
        let err = Config::parse_with_env(text, no_env).unwrap_err();
        let first = &err.0[0];
        assert!(first.message.contains("path_typo"), "{first}");
        assert_eq!(first.line, Some(3), "{first}");
    }

    #[test]
    fn every_error_of_every_section_is_reported_in_one_run() {
        let text = "[input]\npath_typo = 3\nformat = \"syslog\"\n[output]\nwindow = \"big\"\n[admin]\nlisten = \"nowhere\"\n[bogus]\n";
        let errors = Config::parse_with_env(text, no_env).unwrap_err().0;
        let found: Vec<(&str, Option<usize>)> =
            errors.iter().map(|e| (e.key.as_str(), e.line)).collect();
        // The failed sections' defaults are not checked; `[admin]` parsed, so its bad address
        // is reported with the rest.
        assert_eq!(
            found,
            [
                ("", Some(8)),
                ("input.format", Some(3)),
                ("input", Some(2)),
                ("output.window", Some(5)),
                ("admin.listen", None),
            ],
            "{errors:?}"
        );
    }

    #[test]
    fn output_tls_files_and_names_are_checked_at_validate() {
        let text = "[output]\nshared_key = \"k\"\n[output.tls]\nca = \"/nonexistent/ca.crt\"\nserver_name = \"not a name\"\n";
        let config = Config::parse_with_env(text, no_env).unwrap();
        let errors = config.validate().unwrap_err().0;
        let tls = errors
            .iter()
            .find(|e| e.key == "output.tls")
            .expect("output.tls");
        assert!(tls.message.contains("/nonexistent/ca.crt"), "{tls:?}");
        assert!(errors.iter().any(|e| e.key == "output.tls.server_name"));
        let config = Config::parse_with_env("[output]\nshared_key = \"k\"\n", no_env).unwrap();
        config.validate().unwrap();
        assert!(config.warnings().iter().any(|w| w.contains("clear text")));
        assert_eq!(format!("{:?}", config.output.shared_key), "Some(\"***\")");
        let err = Config::parse_with_env("[output.tls]\ncafile = \"x\"\n", no_env).unwrap_err();
        assert!(err.to_string().contains("cafile"), "{err}");
    }

    #[test]
    fn validate_reports_every_error() {
        let text = r#"
            [input]
            paths = ["/var/log/*/x.log"]
            exclude = ["[unclosed"]
            max_line_size = "10B"
            [buffer]
            chunk_limit_size = "8MiB"
            total_limit_size = "1MiB"
            [output]
            servers = ["no-port"]
            window = 0
            shared_key = ""
            username = "u"
            [admin]
            listen = "nowhere"
        "#;
        let config = Config::parse_with_env(text, no_env).unwrap();
        let errors = config.validate().unwrap_err().0;
        let keys: Vec<&str> = errors.iter().map(|e| e.key.as_str()).collect();
        for expected in [
            "input.paths[0]",
            "input.exclude[0]",
            "input.max_line_size",
            "buffer.total_limit_size",
            "output.servers[0]",
            "output.window",
            "output.shared_key",
            "output.password",
            "admin.listen",
        ] {
            assert!(keys.contains(&expected), "{expected} not in {keys:?}");
        }
    }

    #[test]
    fn env_references_are_substituted_or_reported() {
        let text = "[output]\nservers = [\"${AGG}:24224\"]\n";
        let config =
            Config::parse_with_env(text, |k| (k == "AGG").then(|| "10.0.0.1".into())).unwrap();
        assert_eq!(config.output.servers, vec!["10.0.0.1:24224"]);
        let err = Config::parse_with_env(text, no_env).unwrap_err();
        assert_eq!(err.0[0].key, "output.servers[0]");
        assert!(err.0[0].message.contains("AGG"));
    }

    #[test]
    fn enums_sizes_and_durations_parse() {
        let text = "[input]\nformat = \"cri\"\nread_from = \"tail\"\nmax_line_size = \"32KiB\"\n[output]\ncompress = \"gzip\"\nack_timeout = \"250ms\"\n";
        let config = Config::parse_with_env(text, no_env).unwrap();
        assert_eq!(config.input.format, Format::Cri);
        assert_eq!(config.input.read_from, ReadFrom::Tail);
        assert_eq!(config.input.max_line_size, ByteSize(32 * 1024));
        assert_eq!(config.output.compress, Compress::Gzip);
        assert_eq!(config.output.ack_timeout, Duration::from_millis(250));
        let err = Config::parse_with_env("[input]\nformat = \"syslog\"\n", no_env).unwrap_err();
        assert!(err.to_string().contains("syslog"), "{err}");
    }
}
