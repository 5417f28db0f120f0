//! `[sources.NAME]`: inputs besides the Forward listeners. One type today: `kafka`, a
//! consumer-group member that stores what it consumes in the same buffers a Forward request
//! goes to, and stores each partition's offset only once those records are durable (see
//! `sources::kafka`).
//!
//! ```toml
//! [sources.core]
//! type = "kafka"
//! brokers = "kafka-0:9092,kafka-1:9092"
//! topics = ["logs", "^logs\\..+"]        # names, or regexes starting with ^
//! group_id = "logferry"
//! group_instance_id = "${POD_NAME}"       # static membership (optional)
//! format = "forward"                      # forward | json | raw
//! tag = "kafka.${topic}"                  # unless the message has a `logferry-tag` header
//! tenant_header = "logferry-tenant"       # tenant pipelines: the tenant of each message
//! ```

use std::collections::BTreeMap;
use std::time::Duration;

use logferry_common::config::sections::{self, FieldError};
use logferry_common::config::{duration, ByteSize};
use serde::Deserialize;
use toml::Value;

use super::output::DeadLetterConfig;
use super::{is_dns_label, ConfigError};

/// `[sources.NAME]`: one source.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum SourceConfig {
    /// A Kafka consumer-group member (cargo feature `kafka`).
    Kafka(KafkaSourceConfig),
}

/// `type = "kafka"`: a consumer-group member.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSourceConfig {
    /// Bootstrap brokers: `"host:9092,host2:9092"`.
    pub brokers: String,
    /// Topics: names, or regular expressions starting with `^` (librdkafka's convention).
    pub topics: Vec<String>,
    /// The consumer group.
    pub group_id: String,
    /// Static membership (`group.instance.id`): a stable name per member (a StatefulSet pod's
    /// name), so a restart within `session.timeout.ms` does not rebalance the group.
    #[serde(default)]
    pub group_instance_id: Option<String>,
    /// `partition.assignment.strategy`.
    #[serde(default)]
    pub assignment: KafkaAssignment,
    /// Where a group with no committed offset starts (`auto.offset.reset`).
    #[serde(default)]
    pub start: KafkaStart,
    /// What a message holds.
    #[serde(default)]
    pub format: KafkaSourceFormat,
    /// The records' tag; `${topic}` is the message's topic. A `format = "forward"` message
    /// with a `tag_header` header takes its tag from there instead.
    #[serde(default = "source_defaults::tag")]
    pub tag: String,
    /// The header carrying a record's tag (what the `kafka` output writes with
    /// `format = "forward"`). Empty: never read.
    #[serde(default = "source_defaults::tag_header")]
    pub tag_header: String,
    /// Tenant pipelines: the header whose value is a message's tenant (the `kafka` output
    /// writes `logferry-tenant`). Unset (and no `tenant`): the tenant is found from the tag or
    /// the record, as for a Forward request.
    #[serde(default)]
    pub tenant_header: Option<String>,
    /// Tenant pipelines: the tenant of every message of this source.
    #[serde(default)]
    pub tenant: Option<String>,
    /// Add a deterministic id (hex; from topic, partition and offset) to each record under
    /// this key, e.g. for the Elasticsearch output's `id_key`: a message consumed again after
    /// a crash then overwrites its document instead of duplicating it. Unset: none.
    #[serde(default)]
    pub id_key: Option<String>,
    /// Above this many bytes consumed but not yet durable, every partition is paused (the
    /// consumer keeps polling, so it stays in the group); resumed below half.
    #[serde(default = "source_defaults::max_in_flight_bytes")]
    pub max_in_flight_bytes: ByteSize,
    /// How long a revoked partition's (or, at shutdown, every partition's) records in flight
    /// may take to become durable before the partition is let go without them (they are
    /// consumed again by its next owner).
    #[serde(default = "source_defaults::drain_timeout", with = "duration")]
    pub drain_timeout: Duration,
    /// How often stored offsets are committed (`auto.commit.interval.ms`).
    #[serde(default = "source_defaults::commit_interval", with = "duration")]
    pub commit_interval: Duration,
    /// librdkafka consumer properties, applied last (except those this source owns:
    /// `bootstrap.servers`, `group.id`, `enable.auto.commit`, `enable.auto.offset.store`).
    #[serde(default)]
    pub librdkafka: BTreeMap<String, String>,
    /// Where undecodable messages go (with their topic, partition and offset).
    #[serde(default)]
    pub dead_letter: DeadLetterConfig,
}

/// `assignment`: the partition assignment strategy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum KafkaAssignment {
    /// Incremental: a rebalance moves only the partitions that change owner.
    #[default]
    CooperativeSticky,
    /// Eager: every rebalance revokes every partition.
    Range,
    /// Eager, round robin.
    Roundrobin,
}

impl KafkaAssignment {
    /// The `partition.assignment.strategy` value.
    pub fn as_str(self) -> &'static str {
        match self {
            KafkaAssignment::CooperativeSticky => "cooperative-sticky",
            KafkaAssignment::Range => "range",
            KafkaAssignment::Roundrobin => "roundrobin",
        }
    }
}

/// `start`: where a new group begins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KafkaStart {
    /// The oldest message kept.
    #[default]
    Earliest,
    /// Only messages produced from now on.
    Latest,
}

impl KafkaStart {
    /// The `auto.offset.reset` value.
    pub fn as_str(self) -> &'static str {
        match self {
            KafkaStart::Earliest => "earliest",
            KafkaStart::Latest => "latest",
        }
    }
}

/// `format`: what a message's value is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KafkaSourceFormat {
    /// msgpack: a Forward entry `[time, record]` (the `kafka` output's `format = "forward"`)
    /// or a record map (its `format = "msgpack"`; the time is the message timestamp).
    #[default]
    Forward,
    /// One JSON object per message; the time is the message timestamp.
    Json,
    /// Anything: the record is `{"log": <the value>}`; the time is the message timestamp.
    Raw,
}

/// Properties the source sets itself; `librdkafka` may not override them.
pub const OWNED_PROPERTIES: &[&str] = &[
    "bootstrap.servers",
    "metadata.broker.list",
    "group.id",
    "enable.auto.commit",
    "enable.auto.offset.store",
];

impl SourceConfig {
    /// Reads one `[sources.NAME]`: its `type`, then every error of that type's keys.
    pub(super) fn from_value(mut value: Value) -> Result<SourceConfig, Vec<FieldError>> {
        let tag = value.as_table_mut().and_then(|t| t.remove("type"));
        match tag {
            Some(Value::String(t)) if t == "kafka" => {
                sections::deserialize_all(value).map(SourceConfig::Kafka)
            }
            Some(Value::String(t)) => Err(vec![FieldError {
                path: vec!["type".into()],
                message: <toml::de::Error as serde::de::Error>::unknown_variant(&t, &["kafka"])
                    .message()
                    .to_owned(),
            }]),
            // No table, or no `type` string: serde's message says which.
            _ => sections::deserialize_all(value),
        }
    }

    /// Checks one source; `key` is `sources.NAME`.
    pub(super) fn validate_into(&self, key: &str, errors: &mut Vec<ConfigError>) {
        let mut err =
            |k: &str, msg: String| errors.push(ConfigError::new(format!("{key}.{k}"), msg));
        match self {
            SourceConfig::Kafka(c) => c.validate_into(&mut err),
        }
    }
}

impl KafkaSourceConfig {
    fn validate_into(&self, err: &mut impl FnMut(&str, String)) {
        if !cfg!(feature = "kafka") {
            err(
                "type",
                "this build has no kafka source (cargo feature `kafka`)".into(),
            );
        }
        if self.brokers.trim().is_empty() {
            err(
                "brokers",
                "must list at least one broker, e.g. \"127.0.0.1:9092\"".into(),
            );
        }
        if self.topics.is_empty() {
            err("topics", "must name at least one topic".into());
        }
        for (i, topic) in self.topics.iter().enumerate() {
            if let Some(pattern) = topic.strip_prefix('^') {
                if let Err(e) = regex::Regex::new(&format!("^{pattern}")) {
                    err(&format!("topics[{i}]"), format!("not a valid regex: {e}"));
                }
            } else if !crate::template::valid_kafka_topic(topic) {
                err(
                    &format!("topics[{i}]"),
                    format!("{topic:?} is not a topic name ([A-Za-z0-9._-], at most 249 characters; a regex starts with ^)"),
                );
            }
        }
        if self.group_id.trim().is_empty() {
            err("group_id", "must not be empty".into());
        }
        if self
            .group_instance_id
            .as_deref()
            .is_some_and(|g| g.trim().is_empty())
        {
            err(
                "group_instance_id",
                "must not be empty (leave it out for dynamic membership)".into(),
            );
        }
        let rest = self.tag.replace("${topic}", "");
        if rest.contains("${") {
            err(
                "tag",
                "the only reference a source tag takes is ${topic}".into(),
            );
        } else if self.tag.is_empty() {
            err("tag", "must not be empty".into());
        }
        if let Some(t) = &self.tenant {
            if !is_dns_label(t) {
                err(
                    "tenant",
                    format!("{t:?} is not a tenant name (a DNS label: [a-z0-9-])"),
                );
            }
            if self.tenant_header.is_some() {
                err("tenant", "set tenant or tenant_header, not both".into());
            }
        }
        if self.tenant_header.as_deref().is_some_and(str::is_empty) {
            err("tenant_header", "must not be empty".into());
        }
        if self.id_key.as_deref().is_some_and(str::is_empty) {
            err("id_key", "must not be empty".into());
        }
        if self.max_in_flight_bytes.bytes() < 64 * 1024 {
            err("max_in_flight_bytes", "must be at least 64KiB".into());
        }
        if self.commit_interval.is_zero() {
            err("commit_interval", "must be greater than 0".into());
        }
        for k in self.librdkafka.keys() {
            if OWNED_PROPERTIES.contains(&k.as_str()) {
                err(
                    &format!("librdkafka.{k}"),
                    "is set by the source (brokers, group_id, and offsets stored only once durable)"
                        .into(),
                );
            }
        }
    }
}

mod source_defaults {
    use super::*;

    pub(super) fn tag() -> String {
        "kafka.${topic}".into()
    }
    pub(super) fn tag_header() -> String {
        "logferry-tag".into()
    }
    pub(super) fn max_in_flight_bytes() -> ByteSize {
        ByteSize::mib(64)
    }
    pub(super) fn drain_timeout() -> Duration {
        Duration::from_secs(10)
    }
    pub(super) fn commit_interval() -> Duration {
        Duration::from_secs(2)
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::no_env;
    use super::super::Config;
    use super::*;

    const OUT: &str =
        "[outputs.out]\ntype = \"null\"\n[[route]]\nmatch = \"**\"\noutputs = [\"out\"]\n";

    #[test]
    fn a_kafka_source_parses_with_its_defaults() {
        let text = format!(
            "{OUT}[sources.k]\ntype = \"kafka\"\nbrokers = \"127.0.0.1:9092\"\ntopics = [\"logs\", \"^logs\\\\..+\"]\ngroup_id = \"g\"\n"
        );
        let config = Config::parse_with_env(&text, no_env).unwrap();
        config.validate().unwrap();
        let SourceConfig::Kafka(k) = &config.sources["k"];
        assert_eq!(k.topics, ["logs", "^logs\\..+"]);
        assert_eq!(k.format, KafkaSourceFormat::Forward);
        assert_eq!(k.assignment, KafkaAssignment::CooperativeSticky);
        assert_eq!(k.start, KafkaStart::Earliest);
        assert_eq!(k.tag, "kafka.${topic}");
        assert_eq!(k.max_in_flight_bytes, ByteSize::mib(64));
    }

    #[test]
    fn every_problem_of_a_source_is_reported() {
        let text = format!(
            r#"{OUT}
[sources.k]
type = "kafka"
brokers = ""
topics = ["bad topic", "^(unclosed"]
group_id = "g"
tag = "k.${{record.x}}"
tenant = "Not_A_Label"
tenant_header = "logferry-tenant"
librdkafka = {{ "enable.auto.commit" = "true" }}
[sources.other]
type = "pigeon"
"#
        );
        let errors = Config::parse_with_env(&text, no_env).unwrap_err().0;
        let keys: Vec<&str> = errors.iter().map(|e| e.key.as_str()).collect();
        for expected in [
            "sources.other.type",
            "sources.k.brokers",
            "sources.k.topics[0]",
            "sources.k.topics[1]",
            "sources.k.tag",
            "sources.k.tenant",
            "sources.k.librdkafka.enable.auto.commit",
        ] {
            assert!(keys.contains(&expected), "{expected} not in {keys:?}");
        }
        let bogus = format!(
            "{OUT}[sources.k]\ntype = \"kafka\"\nbrokers = \"b:1\"\ntopics = [\"t\"]\ngroup_id = \"g\"\nbogus = 1\n"
        );
        let err = Config::parse_with_env(&bogus, no_env).unwrap_err();
        assert!(err.to_string().contains("bogus"), "{err}");
    }

    #[test]
    fn sources_alone_need_a_route_and_an_output() {
        let text = "[sources.k]\ntype = \"kafka\"\nbrokers = \"b:1\"\ntopics = [\"t\"]\ngroup_id = \"g\"\n";
        let errors = Config::parse_with_env(text, no_env)
            .unwrap()
            .validate()
            .unwrap_err()
            .0;
        assert!(errors.iter().any(|e| e.key == "outputs"), "{errors:?}");
    }
}
