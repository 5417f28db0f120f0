//! Tenant pipelines: `[pipelines]` in the main config, one pipeline file per team pipeline, and
//! the admin's policy file.
//!
//! ## Files
//! `[pipelines] dir = "/etc/logferry/pipelines"`: each `<dir>/<tenant>/<name>.toml` is the
//! pipeline `<name>` of tenant `<tenant>` (the namespace, in Kubernetes). Both names are DNS
//! labels (`[a-z0-9]([a-z0-9-]*[a-z0-9])?`, at most 63 bytes); other files are ignored. A file:
//!
//! ```toml
//! [match]                          # optional: which of the tenant's records (all by default)
//! containers = ["web"]             # container names (from the forwarder's tag)
//! labels = { app = "shop" }        # pod labels, from the records' `kubernetes.labels`
//! tags = ["kube.**"]               # tag patterns
//! [parse]                          # optional
//! field = "log"
//! format = "json"                  # json | regex | logfmt | none
//! on_error = "keep_raw"            # keep_raw | dead_letter | drop
//! [[filter]]                       # optional, in order
//! type = "drop_fields"
//! fields = ["stream"]
//! [buffer]                         # optional: per output of this pipeline
//! total_limit_size = "256MiB"
//! overflow_action = "drop_oldest_chunk"
//! [outputs.es]                     # one or more, the usual output keys
//! type = "elasticsearch"
//! endpoints = ["http://es.shop:9200"]
//! ```
//!
//! A file is read as strictly as the main config and every error of it is reported at once,
//! with the line and key path: unknown keys, bad values, a regex that does not compile, and
//! what the tenant's policy forbids.
//!
//! ## Policy
//! `[pipelines] policy = "FILE"` is the admin's: `[default]` and `[tenants.NAME]` with the same
//! keys, a tenant's key overriding the default's:
//! - `output_types`: the output types a tenant may use (default every type but `file`);
//! - `hosts`: destination hosts a tenant may send to (`host`, `host:port`, `*.domain`, `*`;
//!   default none: an admin grants destinations);
//! - `file_root`: a tenant's local files (the `file` output's path, CA and template files,
//!   credentials) must lie under `<file_root>/<tenant>/` (default: none may be used);
//! - `env`: the environment variables a tenant's `${NAME}` may read (default none: the
//!   aggregator's environment holds the admin's secrets);
//! - `max_pipelines` (default 10) and `buffer_max`, the bytes of buffer all of a tenant's
//!   pipelines may hold on one aggregator (default 1GiB; each output's `total_limit_size`
//!   counts).

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use logferry_common::chunk::OverflowAction;
use logferry_common::config::sections::{Header, Reader};
use logferry_common::config::{duration, parse_toml, read_file, ByteSize};
use serde::Deserialize;
use toml::{Table, Value};

use super::{ConfigError, ConfigErrors, OutputConfig};
use crate::route::Pattern;
use crate::tenants::transform::{FilterConfig, ParseConfig, Transform};

/// `[pipelines]` of the main config.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelinesConfig {
    /// The directory of pipeline files (`<dir>/<tenant>/<name>.toml`); none: no tenant
    /// pipelines.
    #[serde(default)]
    pub dir: Option<PathBuf>,
    /// The admin's policy file; none: the default policy.
    #[serde(default)]
    pub policy: Option<PathBuf>,
    /// How often the directory is read again for changes.
    #[serde(default = "defaults::rescan_interval", with = "duration")]
    pub rescan_interval: Duration,
    /// How long a deleted pipeline (or a replaced output) may deliver what it buffered; what
    /// is left stays on disk for the next start.
    #[serde(default = "defaults::drain_timeout", with = "duration")]
    pub drain_timeout: Duration,
}

impl Default for PipelinesConfig {
    fn default() -> Self {
        PipelinesConfig {
            dir: None,
            policy: None,
            rescan_interval: defaults::rescan_interval(),
            drain_timeout: defaults::drain_timeout(),
        }
    }
}

mod defaults {
    use super::*;

    pub(super) fn rescan_interval() -> Duration {
        Duration::from_secs(2)
    }
    pub(super) fn drain_timeout() -> Duration {
        Duration::from_secs(600)
    }
    pub(super) fn total_limit_size() -> ByteSize {
        ByteSize::mib(256)
    }
    pub(super) fn overflow_action() -> OverflowAction {
        OverflowAction::DropOldestChunk
    }
    pub(super) fn max_pipelines() -> usize {
        10
    }
    pub(super) fn buffer_max() -> ByteSize {
        ByteSize::mib(1024)
    }
    pub(super) fn output_types() -> Vec<String> {
        ["null", "elasticsearch", "kafka", "stackdriver"]
            .map(String::from)
            .to_vec()
    }
}

/// `[match]`: which of its tenant's records a pipeline takes (every one by default). All
/// given conditions must hold.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SelectConfig {
    /// Container names (from the forwarder's tag); any, when empty.
    #[serde(default)]
    pub containers: Vec<String>,
    /// Pod labels that must all be present with these values (`kubernetes.labels`).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Tag patterns (Fluentd syntax); any, when empty.
    #[serde(default)]
    pub tags: Vec<String>,
}

/// `[buffer]` of a pipeline: each of its outputs gets a buffer with these limits.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineBufferConfig {
    /// Most bytes one output's buffer holds.
    #[serde(default = "defaults::total_limit_size")]
    pub total_limit_size: ByteSize,
    /// What a full buffer does (see the main `[buffer]`); `drop_oldest_chunk` by default, so a
    /// tenant's dead destination never holds back a sender that also carries other tenants.
    #[serde(default = "defaults::overflow_action")]
    pub overflow_action: OverflowAction,
}

impl Default for PipelineBufferConfig {
    fn default() -> Self {
        PipelineBufferConfig {
            total_limit_size: defaults::total_limit_size(),
            overflow_action: defaults::overflow_action(),
        }
    }
}

/// One pipeline file.
#[derive(Debug, Clone, PartialEq)]
pub struct PipelineConfig {
    /// `[match]`.
    pub select: SelectConfig,
    /// `[parse]`.
    pub parse: Option<ParseConfig>,
    /// `[[filter]]`, in order.
    pub filters: Vec<FilterConfig>,
    /// `[buffer]`.
    pub buffer: PipelineBufferConfig,
    /// `[outputs.NAME]`.
    pub outputs: BTreeMap<String, OutputConfig>,
}

/// The keys of a pipeline file.
const PIPELINE_KEYS: &[&str] = &["match", "parse", "filter", "buffer", "outputs"];

/// What a policy says about one tenant; unset keys fall back to `[default]`, then to the
/// built-in defaults (see the module doc).
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantPolicyConfig {
    /// Allowed output types.
    #[serde(default)]
    pub output_types: Option<Vec<String>>,
    /// Allowed destination hosts.
    #[serde(default)]
    pub hosts: Option<Vec<String>>,
    /// Where the tenant's local files may be (under `<file_root>/<tenant>/`).
    #[serde(default)]
    pub file_root: Option<PathBuf>,
    /// Environment variables `${NAME}` may read.
    #[serde(default)]
    pub env: Option<Vec<String>>,
    /// Most pipelines of the tenant.
    #[serde(default)]
    pub max_pipelines: Option<usize>,
    /// Most buffer bytes over all of the tenant's pipelines, per aggregator.
    #[serde(default)]
    pub buffer_max: Option<ByteSize>,
}

/// The policy file.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// `[default]`.
    #[serde(default)]
    pub default: TenantPolicyConfig,
    /// `[tenants.NAME]`.
    #[serde(default)]
    pub tenants: BTreeMap<String, TenantPolicyConfig>,
}

/// The policy of one tenant, resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct TenantPolicy {
    /// Allowed output types.
    pub output_types: Vec<String>,
    /// Allowed destination hosts.
    pub hosts: Vec<String>,
    /// `<file_root>/<tenant>`, when files are allowed.
    pub file_dir: Option<PathBuf>,
    /// Environment variables `${NAME}` may read.
    pub env: Vec<String>,
    /// Most pipelines.
    pub max_pipelines: usize,
    /// Most buffer bytes over all pipelines.
    pub buffer_max: ByteSize,
}

impl PolicyConfig {
    /// Reads and parses a policy file (every error at once).
    ///
    /// # Errors
    /// The file cannot be read, or has unknown keys or bad values.
    pub fn load(path: &Path) -> Result<PolicyConfig, ConfigErrors> {
        let text = read_file(path)?;
        let table: Table = parse_toml(&text, |_| None)?;
        let mut r = Reader::new(&text);
        let policy = r.section::<PolicyConfig>("", None, Value::Table(table));
        match policy {
            Some(p) if r.errors.is_empty() => Ok(p),
            _ => Err(ConfigErrors(r.errors)),
        }
    }

    /// The policy of `tenant`.
    pub fn tenant(&self, tenant: &str) -> TenantPolicy {
        let own = self.tenants.get(tenant);
        fn pick<T>(
            own: Option<&TenantPolicyConfig>,
            default: &TenantPolicyConfig,
            f: impl Fn(&TenantPolicyConfig) -> Option<T>,
        ) -> Option<T> {
            own.and_then(&f).or_else(|| f(default))
        }
        let d = &self.default;
        TenantPolicy {
            output_types: pick(own, d, |p| p.output_types.clone())
                .unwrap_or_else(defaults::output_types),
            hosts: pick(own, d, |p| p.hosts.clone()).unwrap_or_default(),
            file_dir: pick(own, d, |p| p.file_root.clone()).map(|root| root.join(tenant)),
            env: pick(own, d, |p| p.env.clone()).unwrap_or_default(),
            max_pipelines: pick(own, d, |p| p.max_pipelines)
                .unwrap_or_else(defaults::max_pipelines),
            buffer_max: pick(own, d, |p| p.buffer_max).unwrap_or_else(defaults::buffer_max),
        }
    }
}

/// A DNS label: what tenant and pipeline names must be.
pub fn is_dns_label(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

impl PipelineConfig {
    /// Parses and checks the pipeline file `text` of `tenant` against its `policy`: every
    /// error of the file at once. `env` is consulted only for the variables the policy lets
    /// the tenant read.
    ///
    /// # Errors
    /// Every unknown key, bad value, compile error and policy violation.
    pub fn parse(
        text: &str,
        tenant: &str,
        policy: &TenantPolicy,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<PipelineConfig, ConfigErrors> {
        let lookup = super::templates_or(|name: &str| {
            if policy.env.iter().any(|allowed| allowed == name) {
                env(name)
            } else {
                None
            }
        });
        let mut table: Table = parse_toml(text, lookup).map_err(|mut errors| {
            for e in &mut errors.0 {
                if e.message.contains("environment variable")
                    && !policy.env.iter().any(|v| e.message.contains(v.as_str()))
                {
                    e.message.push_str(
                        " (a pipeline may read only the variables its tenant's policy lists in `env`)",
                    );
                }
            }
            errors
        })?;
        let mut r = Reader::new(text);
        r.unknown_keys(&table, PIPELINE_KEYS);
        let select = r.table_section::<SelectConfig>(&mut table, "match");
        let parse = match table.remove("parse") {
            Some(v) => r
                .section::<ParseConfig>("parse", Header::at("[parse]", 0), v)
                .map(Some),
            None => Some(None),
        };
        let filters = match table.remove("filter") {
            Some(Value::Array(items)) => {
                let (filters, all) = r.array_sections::<FilterConfig>("filter", items);
                all.then_some(filters)
            }
            Some(v) => r.section::<Vec<FilterConfig>>("filter", None, v),
            None => Some(Vec::new()),
        };
        let buffer = r.table_section::<PipelineBufferConfig>(&mut table, "buffer");
        let mut outputs = BTreeMap::new();
        match table.remove("outputs") {
            Some(Value::Table(items)) => {
                (outputs, _) = r.named_sections("outputs", items, OutputConfig::from_value);
            }
            Some(v) => {
                r.section::<BTreeMap<String, Value>>("outputs", None, v);
            }
            None => r.errors.push(ConfigError::new(
                "outputs",
                "a pipeline needs at least one [outputs.NAME]",
            )),
        }
        let mut errors = r.errors;
        // The checks of what did parse still run; those that would misfire on a section
        // left at its defaults are skipped.
        let unparsed = Unparsed {
            transform: parse.is_none() || filters.is_none(),
            buffer: buffer.is_none(),
        };
        let config = PipelineConfig {
            select: select.unwrap_or_default(),
            parse: parse.flatten(),
            filters: filters.unwrap_or_default(),
            buffer: buffer.unwrap_or_default(),
            outputs,
        };
        config.validate_into(tenant, policy, &unparsed, &mut errors);
        if errors.is_empty() {
            Ok(config)
        } else {
            Err(ConfigErrors(errors))
        }
    }

    /// Reads and parses the pipeline file `path` of `tenant`.
    ///
    /// # Errors
    /// See [`PipelineConfig::parse`]; the file cannot be read.
    pub fn load(
        path: &Path,
        tenant: &str,
        policy: &TenantPolicy,
    ) -> Result<PipelineConfig, ConfigErrors> {
        Self::parse(&read_file(path)?, tenant, policy, |k| std::env::var(k).ok())
    }

    /// The compiled parse and filters.
    ///
    /// # Errors
    /// What does not compile (checked by [`PipelineConfig::parse`] already).
    pub fn transform(&self) -> Result<Transform, Vec<(String, String)>> {
        Transform::compile(self.parse.as_ref(), &self.filters)
    }

    /// The buffer bytes this pipeline may hold: each output's limit.
    pub fn buffer_bytes(&self) -> u64 {
        self.buffer.total_limit_size.bytes() * self.outputs.len() as u64
    }

    fn validate_into(
        &self,
        tenant: &str,
        policy: &TenantPolicy,
        unparsed: &Unparsed,
        errors: &mut Vec<ConfigError>,
    ) {
        let mut err = |key: String, msg: String| errors.push(ConfigError::new(key, msg));
        for (i, tag) in self.select.tags.iter().enumerate() {
            if let Err(e) = Pattern::parse(tag) {
                err(format!("match.tags[{i}]"), e.to_string());
            }
        }
        if !unparsed.transform {
            if let Err(problems) = self.transform() {
                for (key, msg) in problems {
                    err(key, msg);
                }
            }
        }
        if !unparsed.buffer && self.buffer.total_limit_size.bytes() < 64 * 1024 {
            err(
                "buffer.total_limit_size".into(),
                "must be at least 64KiB".into(),
            );
        }
        if !unparsed.buffer && self.buffer_bytes() > policy.buffer_max.bytes() {
            err(
                "buffer.total_limit_size".into(),
                format!(
                    "{} outputs of {} each exceed the {} the policy gives tenant {tenant:?}",
                    self.outputs.len(),
                    self.buffer.total_limit_size,
                    policy.buffer_max
                ),
            );
        }
        for (name, output) in &self.outputs {
            let key = format!("outputs.{name}");
            if !is_dns_label(name) {
                err(
                    key.clone(),
                    "an output name of a pipeline must be a DNS label ([a-z0-9-])".into(),
                );
            }
            let mut own = Vec::new();
            output.validate_into(&key, &mut own);
            for e in own {
                err(e.key, e.message);
            }
            let kind = output.type_name();
            if !policy.output_types.iter().any(|t| t == kind) {
                err(
                    format!("{key}.type"),
                    format!(
                        "output type {kind:?} is not allowed for tenant {tenant:?} (allowed: {})",
                        policy.output_types.join(", ")
                    ),
                );
            }
            for host in output.destination_hosts() {
                if !policy
                    .hosts
                    .iter()
                    .any(|allowed| host_allowed(allowed, &host))
                {
                    err(
                        key.clone(),
                        format!("destination {host:?} is not allowed for tenant {tenant:?} by the policy's hosts"),
                    );
                }
            }
            for (field, path) in output.local_files() {
                match &policy.file_dir {
                    Some(dir) if inside(dir, &path) => {}
                    Some(dir) => err(
                        format!("{key}.{field}"),
                        format!("{} is outside {}, where tenant {tenant:?} may keep files", path.display(), dir.display()),
                    ),
                    None => err(
                        format!("{key}.{field}"),
                        format!("tenant {tenant:?} may not use local files (the policy gives it no file_root)"),
                    ),
                }
            }
        }
    }
}

/// The sections of a pipeline file that did not parse.
struct Unparsed {
    /// `[parse]` or a `[[filter]]`.
    transform: bool,
    /// `[buffer]`.
    buffer: bool,
}

/// Whether `host` (`name` or `name:port`) matches the policy entry `allowed` (`*`, `*.domain`,
/// `name` for any port, or `name:port`).
fn host_allowed(allowed: &str, host: &str) -> bool {
    let name = host.rsplit_once(':').map_or(host, |(n, _)| n);
    allowed == "*"
        || allowed == host
        || allowed == name
        || allowed
            .strip_prefix("*.")
            .is_some_and(|domain| name.ends_with(&format!(".{domain}")))
}

/// Whether `path` lies under `dir`, by its components (no `..`, absolute).
fn inside(dir: &Path, path: &Path) -> bool {
    path.is_absolute()
        && !path.components().any(|c| matches!(c, Component::ParentDir))
        && path.starts_with(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> TenantPolicy {
        PolicyConfig {
            default: TenantPolicyConfig {
                output_types: Some(vec!["file".into(), "elasticsearch".into()]),
                hosts: Some(vec!["es.shop.svc".into(), "*.example.com".into()]),
                file_root: Some("/data/tenants".into()),
                env: Some(vec!["SHOP_PASSWORD".into()]),
                ..TenantPolicyConfig::default()
            },
            tenants: BTreeMap::new(),
        }
        .tenant("shop")
    }

    fn parse(text: &str) -> Result<PipelineConfig, ConfigErrors> {
        let env = |k: &str| Some(format!("value-of-{k}"));
        PipelineConfig::parse(text, "shop", &policy(), env)
    }

    #[test]
    fn a_pipeline_with_only_outputs_takes_everything() {
        let p =
            parse("[outputs.out]\ntype = \"file\"\npath = \"/data/tenants/shop/out\"\n").unwrap();
        assert_eq!(p.select, SelectConfig::default());
        assert_eq!(p.buffer.overflow_action, OverflowAction::DropOldestChunk);
        assert_eq!(p.outputs.len(), 1);
    }

    #[test]
    fn every_problem_of_a_file_is_reported_with_its_line() {
        let text = r#"[match]
containers = ["web"]
lables = { app = "x" }

[buffer]
total_limit_size = "2GiB"

[outputs.es]
type = "elasticsearch"
endpoints = ["http://es.other.svc:9200"]

[outputs.k]
type = "kafka"
brokers = "k.example.com:9092"
topic = "t"

[outputs.f]
type = "file"
path = "/etc/passwd-dir"
"#;
        let errors = parse(text).unwrap_err().0;
        let found: Vec<(&str, Option<usize>)> =
            errors.iter().map(|e| (e.key.as_str(), e.line)).collect();
        assert_eq!(
            found,
            [
                ("match", Some(3)),
                ("buffer.total_limit_size", None),
                ("outputs.es", None),
                ("outputs.f.path", None),
                ("outputs.k.type", None),
            ],
            "{errors:?}"
        );
    }

    #[test]
    fn output_name_templates_are_not_environment_variables() {
        let text = "[outputs.es]\ntype = \"elasticsearch\"\nendpoints = [\"http://es.shop.svc:9200\"]\nindex = \"shop-${kubernetes.container_name}-${tag}\"\n";
        let p = parse(text).unwrap();
        let OutputConfig::Elasticsearch(es) = &p.outputs["es"] else {
            panic!("elasticsearch")
        };
        assert_eq!(es.index, "shop-${kubernetes.container_name}-${tag}");
    }

    #[test]
    fn env_is_read_only_where_the_policy_allows() {
        let base = "[outputs.es]\ntype = \"elasticsearch\"\nendpoints = [\"http://es.shop.svc:9200\"]\n[outputs.es.auth]\nusername = \"u\"\n";
        let ok = parse(&format!("{base}password = \"${{SHOP_PASSWORD}}\"\n")).unwrap();
        let OutputConfig::Elasticsearch(es) = &ok.outputs["es"] else {
            panic!("elasticsearch")
        };
        let password = es.auth.as_ref().unwrap().password.as_ref().unwrap();
        assert_eq!(password.expose(), "value-of-SHOP_PASSWORD");
        let err = parse(&format!("{base}password = \"${{ADMIN_PASSWORD}}\"\n")).unwrap_err();
        assert!(err.to_string().contains("ADMIN_PASSWORD"), "{err}");
        assert!(err.to_string().contains("policy"), "{err}");
    }

    #[test]
    fn hosts_and_names() {
        assert!(host_allowed("*.example.com", "k.example.com:9092"));
        assert!(!host_allowed("*.example.com", "example.com.evil:1"));
        assert!(host_allowed("es.shop.svc", "es.shop.svc:9200"));
        assert!(!host_allowed("es.shop.svc:9201", "es.shop.svc:9200"));
        assert!(inside(
            Path::new("/data/t/shop"),
            Path::new("/data/t/shop/x/y")
        ));
        assert!(!inside(
            Path::new("/data/t/shop"),
            Path::new("/data/t/shop/../other")
        ));
        assert!(!inside(
            Path::new("/data/t/shop"),
            Path::new("/data/t/shopping")
        ));
        assert!(is_dns_label("shop-1") && !is_dns_label("-x") && !is_dns_label("Shop"));
    }

    #[test]
    fn policies_fall_back_to_the_default_then_to_built_ins() {
        let text = "[default]\nmax_pipelines = 3\n[tenants.shop]\nbuffer_max = \"1MiB\"\nhosts = [\"*\"]\n";
        let policy: PolicyConfig = toml::from_str(text).unwrap();
        let shop = policy.tenant("shop");
        assert_eq!(
            (shop.max_pipelines, shop.buffer_max, shop.hosts.len()),
            (3, ByteSize::mib(1), 1)
        );
        let other = policy.tenant("other");
        assert_eq!(other.buffer_max, defaults::buffer_max());
        assert!(other.hosts.is_empty() && other.file_dir.is_none());
        assert!(!other.output_types.contains(&"file".to_owned()));
    }
}
