//! Reading a config section by section, so that one run reports every problem of a file.
//!
//! After the syntax and `${ENV}` step (`parse_toml`, which yields one TOML table), each section
//! is deserialized on its own by the shared [`Reader`]: each `[[server]]` (or the one
//! `[server]`), `[admin]`, `[buffer]`, `[ingest]`, each `[[route]]`, each `[outputs.NAME]`, and
//! the top-level keys. A section that fails contributes every error it has, keyed by the section
//! (`server[1]`, `outputs.es.timeout`) and with the line of the offending key.
//!
//! If any section failed, the semantic validation ([`Config::validate`]) runs on the rest and
//! its problems follow the parse errors. A failed listener, route or output is left out, a
//! failed `[admin]`, `[buffer]` or `[ingest]` is at its defaults; [`Unparsed`] tells the
//! validation which checks would then misfire, and it skips them.

use std::collections::{BTreeMap, BTreeSet};

use logferry_common::config::sections::{self, Header, Reader};
use toml::{Table, Value};

use super::{
    defaults, duration, Config, ConfigErrors, Listeners, OutputConfig, RouteConfig, ServerConfig,
    SourceConfig,
};

/// Every top-level key, in the order an unknown key's message lists them.
const TOP_LEVEL: &[&str] = &[
    "shutdown_timeout",
    "server",
    "admin",
    "buffer",
    "ingest",
    "route",
    "outputs",
    "pipelines",
    "sources",
];

/// The sections that did not parse, as far as the semantic validation needs to know.
#[derive(Debug, Default)]
pub(super) struct Unparsed {
    /// A listener: the others are renumbered, the limits they share are unknown.
    pub(super) server: bool,
    /// `[buffer]`, at its defaults.
    pub(super) buffer: bool,
    /// `[ingest]`, at its defaults.
    pub(super) ingest: bool,
    /// A route: the others are renumbered, which outputs are used is unknown.
    pub(super) routes: bool,
    /// The outputs by name: they exist, though they are left out.
    pub(super) outputs: BTreeSet<String>,
}

/// Builds the [`Config`] from the table `parse_toml` made of `text`.
///
/// # Errors
/// Every section that does not parse, then the semantic problems of the rest.
pub(super) fn parse(text: &str, mut table: Table) -> Result<Config, ConfigErrors> {
    let mut r = Reader::new(text);
    let mut unparsed = Unparsed::default();
    r.unknown_keys(&table, TOP_LEVEL);
    let shutdown_timeout = match table.remove("shutdown_timeout") {
        Some(v) => r.section_with(
            "shutdown_timeout",
            None,
            v,
            sections::with(duration::deserialize),
        ),
        None => None,
    };
    let server = match table.remove("server") {
        Some(Value::Array(items)) => {
            let (listeners, all) = r.array_sections::<ServerConfig>("server", items);
            unparsed.server = !all;
            Some(Listeners::new(listeners))
        }
        Some(v) => {
            let listeners = r.section::<Listeners>("server", Header::at("[server]", 0), v);
            unparsed.server = listeners.is_none();
            listeners
        }
        None => None,
    };
    let admin = r.table_section(&mut table, "admin");
    let buffer = r.table_section(&mut table, "buffer");
    unparsed.buffer = buffer.is_none();
    let ingest = r.table_section(&mut table, "ingest");
    let pipelines = r.table_section(&mut table, "pipelines");
    unparsed.ingest = ingest.is_none();
    // A `route` or `outputs` of the wrong shape leaves nothing to validate against.
    let mut shapeless = false;
    let mut routes = Vec::new();
    match table.remove("route") {
        Some(Value::Array(items)) => {
            let all;
            (routes, all) = r.array_sections::<RouteConfig>("route", items);
            unparsed.routes = !all;
        }
        Some(v) => {
            shapeless = true;
            r.section::<Vec<RouteConfig>>("route", None, v);
        }
        None => {}
    }
    let mut outputs = BTreeMap::new();
    match table.remove("outputs") {
        Some(Value::Table(items)) => {
            (outputs, unparsed.outputs) =
                r.named_sections("outputs", items, OutputConfig::from_value);
        }
        Some(v) => {
            shapeless = true;
            r.section::<BTreeMap<String, OutputConfig>>("outputs", None, v);
        }
        None => {}
    }

    let mut sources = BTreeMap::new();
    match table.remove("sources") {
        Some(Value::Table(items)) => {
            (sources, _) = r.named_sections("sources", items, SourceConfig::from_value);
        }
        Some(v) => {
            shapeless = true;
            r.section::<BTreeMap<String, SourceConfig>>("sources", None, v);
        }
        None => {}
    }

    let config = Config {
        shutdown_timeout: shutdown_timeout.unwrap_or_else(defaults::shutdown_timeout),
        server: server.unwrap_or_default(),
        admin: admin.unwrap_or_default(),
        buffer: buffer.unwrap_or_default(),
        ingest: ingest.unwrap_or_default(),
        routes,
        outputs,
        pipelines: pipelines.unwrap_or_default(),
        sources,
    };
    let mut errors = r.errors;
    if errors.is_empty() {
        return Ok(config);
    }
    if !shapeless {
        config.validate_into(&unparsed, &mut errors);
    }
    Err(ConfigErrors(errors))
}

#[cfg(test)]
mod tests {
    use super::super::tests::no_env;
    use super::*;

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
    fn every_section_reports_its_error_in_one_run() {
        let text = r#"
[server]
listen = "127.0.0.1:24224"
max_conections = 10

[buffer]
chunk_limit_size = "8 parsecs"

[[route]]
match = "**"
outputs = ["out", "missing"]

[outputs.out]
type = "file"
pth = "/data/out"
concurrency = "many"
"#;
        let errors = Config::parse_with_env(text, no_env).unwrap_err().0;
        let found: Vec<(&str, Option<usize>)> =
            errors.iter().map(|e| (e.key.as_str(), e.line)).collect();
        // Every error of a section, each at its key's line. The failed output still counts as
        // named; nothing is reported about the sections left at their defaults.
        assert_eq!(
            found,
            [
                ("server", Some(4)),
                ("buffer.chunk_limit_size", Some(7)),
                ("outputs.out.concurrency", Some(16)),
                ("outputs.out", Some(15)),
                ("outputs.out", Some(13)),
                ("route[0].outputs", None),
            ],
            "{errors:?}"
        );
        assert!(errors[0].message.contains("max_conections"), "{errors:?}");
        assert!(errors[1].message.contains("parsecs"), "{errors:?}");
        assert!(errors[2].message.contains("many"), "{errors:?}");
        assert!(errors[3].message.contains("pth"), "{errors:?}");
        assert!(
            errors[4].message.contains("missing field `path`"),
            "{errors:?}"
        );
        assert!(errors[5].message.contains("\"missing\""), "{errors:?}");
    }

    #[test]
    fn sections_are_numbered_as_in_the_file() {
        let text = r#"
listen = "top"
[[server]]
listen = "127.0.0.1:1"
[[server]]
listen = "127.0.0.1:2"
tls = 3
[[route]]
mach = "**"
outputs = ["out"]
[[route]]
match = "**"
outputs = ["out"]
[outputs.out]
type = "null"
"#;
        let errors = Config::parse_with_env(text, no_env).unwrap_err().0;
        let keys: Vec<&str> = errors.iter().map(|e| e.key.as_str()).collect();
        // A route left out: "out" is not reported as unused.
        assert_eq!(
            keys,
            ["", "server[1].tls", "route[0]", "route[0]"],
            "{errors:?}"
        );
        assert_eq!(errors[0].line, Some(2), "{errors:?}");
        assert!(errors[0].message.contains("`listen`"), "{errors:?}");
        assert_eq!(errors[1].line, Some(7), "{errors:?}");
        assert_eq!(errors[2].line, Some(9), "{errors:?}");
        assert!(
            errors[3].message.contains("missing field `match`"),
            "{errors:?}"
        );
    }

    #[test]
    fn a_section_of_the_wrong_shape_is_reported_alone() {
        let text = "outputs = 3\n[buffer]\nfsync = \"sometimes\"\n[bogus]\nx = 1\n";
        let errors = Config::parse_with_env(text, no_env).unwrap_err().0;
        let found: Vec<(&str, Option<usize>)> =
            errors.iter().map(|e| (e.key.as_str(), e.line)).collect();
        // No "at least one output/route is required": what the outputs are is unknown.
        assert_eq!(
            found,
            [
                ("", Some(4)),
                ("buffer.fsync", Some(3)),
                ("outputs", Some(1))
            ],
            "{errors:?}"
        );
        assert!(errors[0].message.contains("`bogus`"), "{errors:?}");
        assert!(errors[1].message.contains("sometimes"), "{errors:?}");
    }
}
