//! Reading a config section by section, so that one run reports every problem of a file.
//!
//! serde stops at the first error, so deserializing the whole file at once reports one
//! misspelled key or bad value per run. Instead, after the syntax and `${ENV}` step
//! (`parse_toml`, which yields one TOML table), each section is deserialized on its own: each
//! `[[server]]` (or the one `[server]`), `[admin]`, `[buffer]`, `[ingest]`, each `[[route]]`,
//! each `[outputs.NAME]`, and the top-level keys. A section that fails contributes its error,
//! keyed by the section (`server[1]`, `outputs.es`) and with the line of the offending key (or
//! of the section's header) where the text shows it. Within one section serde still stops at
//! the first error.
//!
//! If any section failed, the semantic validation ([`Config::validate`]) runs on the rest and
//! its problems follow the parse errors. A failed listener, route or output is left out, a
//! failed `[admin]`, `[buffer]` or `[ingest]` is at its defaults; [`Unparsed`] tells the
//! validation which checks would then misfire, and it skips them.

use std::collections::{BTreeMap, BTreeSet};

use serde::de::{DeserializeOwned, Error as _};
use serde::Deserialize;
use toml::{Table, Value};

use super::{
    defaults, duration, Config, ConfigError, ConfigErrors, Listeners, OutputConfig, RouteConfig,
    ServerConfig,
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
    let mut r = Reader {
        text,
        errors: Vec::new(),
    };
    let mut unparsed = Unparsed::default();
    for key in table.keys().filter(|k| !TOP_LEVEL.contains(&k.as_str())) {
        let message = toml::de::Error::unknown_field(key, TOP_LEVEL)
            .message()
            .to_owned();
        let header = format!("[{key}]");
        r.fail(String::new(), Header::at(&header, 0), Some(key), message);
    }
    let shutdown_timeout = match table.remove("shutdown_timeout") {
        Some(v) => r.section("shutdown_timeout", None, v, duration::deserialize),
        None => None,
    };
    let server = match table.remove("server") {
        Some(Value::Array(items)) => {
            let (listeners, all) = r.array_sections("server", items, ServerConfig::deserialize);
            unparsed.server = !all;
            Some(Listeners::new(listeners))
        }
        Some(v) => {
            let listeners = r.section(
                "server",
                Header::at("[server]", 0),
                v,
                Listeners::deserialize,
            );
            unparsed.server = listeners.is_none();
            listeners
        }
        None => None,
    };
    let admin = r.table_section(&mut table, "admin");
    let buffer = r.table_section(&mut table, "buffer");
    unparsed.buffer = buffer.is_none();
    let ingest = r.table_section(&mut table, "ingest");
    unparsed.ingest = ingest.is_none();
    // A `route` or `outputs` of the wrong shape leaves nothing to validate against.
    let mut shapeless = false;
    let mut routes = Vec::new();
    match table.remove("route") {
        Some(Value::Array(items)) => {
            let all;
            (routes, all) = r.array_sections("route", items, RouteConfig::deserialize);
            unparsed.routes = !all;
        }
        Some(v) => {
            shapeless = true;
            r.section("route", None, v, Vec::<RouteConfig>::deserialize);
        }
        None => {}
    }
    let mut outputs = BTreeMap::new();
    match table.remove("outputs") {
        Some(Value::Table(items)) => {
            for (name, item) in items {
                let header = format!("[outputs.{name}]");
                let key = format!("outputs.{name}");
                match r.section(
                    &key,
                    Header::at(&header, 0),
                    item,
                    OutputConfig::deserialize,
                ) {
                    Some(output) => {
                        outputs.insert(name, output);
                    }
                    None => {
                        unparsed.outputs.insert(name);
                    }
                }
            }
        }
        Some(v) => {
            shapeless = true;
            r.section(
                "outputs",
                None,
                v,
                BTreeMap::<String, OutputConfig>::deserialize,
            );
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

/// Where a section starts in the text: the `nth` line that is `header` (`[[route]]`). A
/// section written otherwise (`buffer = { ... }`, a top-level value) has none.
#[derive(Debug, Clone, Copy)]
struct Header<'a> {
    header: &'a str,
    nth: usize,
}

impl<'a> Header<'a> {
    /// The section that starts at the `nth` `header` line.
    fn at(header: &'a str, nth: usize) -> Option<Self> {
        Some(Header { header, nth })
    }
}

/// Reads sections of `text` (nothing here is particular to the aggregator's sections),
/// collecting their errors.
struct Reader<'a> {
    text: &'a str,
    errors: Vec<ConfigError>,
}

impl Reader<'_> {
    /// Deserializes `value`, the section `key` that starts at `header`; on failure records the
    /// error and returns `None`.
    fn section<T>(
        &mut self,
        key: &str,
        header: Option<Header<'_>>,
        value: Value,
        deserialize: impl FnOnce(Value) -> Result<T, toml::de::Error>,
    ) -> Option<T> {
        match deserialize(value) {
            Ok(v) => Some(v),
            Err(e) => {
                let message = e.message().to_owned();
                // An unknown key's line is the key's; otherwise the section's header's, or
                // for a section without one (a top-level value) its key's.
                let unknown = message
                    .split("unknown field `")
                    .nth(1)
                    .and_then(|rest| rest.split('`').next())
                    .map(str::to_owned);
                let field = unknown.as_deref().or(header.is_none().then_some(key));
                self.fail(key.to_owned(), header, field, message);
                None
            }
        }
    }

    /// Each table of the array `[[name]]` on its own: those that parse, and whether all did.
    fn array_sections<T>(
        &mut self,
        name: &str,
        items: Vec<Value>,
        deserialize: impl Fn(Value) -> Result<T, toml::de::Error>,
    ) -> (Vec<T>, bool) {
        let header = format!("[[{name}]]");
        let mut parsed = Vec::new();
        let mut all = true;
        for (i, item) in items.into_iter().enumerate() {
            let key = format!("{name}[{i}]");
            match self.section(&key, Header::at(&header, i), item, &deserialize) {
                Some(v) => parsed.push(v),
                None => all = false,
            }
        }
        (parsed, all)
    }

    /// A table section such as `[buffer]`, removed from `table`: its defaults when absent,
    /// `None` when it does not parse.
    fn table_section<T: DeserializeOwned + Default>(
        &mut self,
        table: &mut Table,
        name: &str,
    ) -> Option<T> {
        let header = format!("[{name}]");
        match table.remove(name) {
            Some(value) => self.section(name, Header::at(&header, 0), value, T::deserialize),
            None => Some(T::default()),
        }
    }

    /// Records an error of section `key` at the line of `field` after `header` (or of the
    /// header itself).
    fn fail(
        &mut self,
        key: String,
        header: Option<Header<'_>>,
        field: Option<&str>,
        message: String,
    ) {
        let start = header.and_then(|h| {
            self.text
                .lines()
                .enumerate()
                .filter(|(_, l)| {
                    let l = l.trim();
                    l.strip_prefix(h.header).is_some_and(|rest| {
                        rest.trim_start().is_empty() || rest.trim_start().starts_with('#')
                    })
                })
                .nth(h.nth)
                .map(|(i, _)| i)
        });
        let field_line = |from: usize| {
            field.and_then(|f| {
                self.text
                    .lines()
                    .enumerate()
                    .skip(from)
                    .find(|(_, l)| {
                        l.trim_start()
                            .strip_prefix(f)
                            .is_some_and(|rest| rest.trim_start().starts_with('='))
                    })
                    .map(|(i, _)| i)
            })
        };
        let line = field_line(start.unwrap_or(0))
            .or_else(|| field_line(0))
            .or(start)
            .map(|i| i + 1);
        self.errors.push(ConfigError { key, line, message });
    }
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
"#;
        let errors = Config::parse_with_env(text, no_env).unwrap_err().0;
        let found: Vec<(&str, Option<usize>)> =
            errors.iter().map(|e| (e.key.as_str(), e.line)).collect();
        // The failed output still counts as named; nothing is reported about the sections
        // left at their defaults.
        assert_eq!(
            found,
            [
                ("server", Some(4)),
                ("buffer", Some(6)),
                ("outputs.out", Some(15)),
                ("route[0].outputs", None),
            ],
            "{errors:?}"
        );
        assert!(errors[0].message.contains("max_conections"), "{errors:?}");
        assert!(errors[1].message.contains("parsecs"), "{errors:?}");
        assert!(errors[2].message.contains("pth"), "{errors:?}");
        assert!(errors[3].message.contains("\"missing\""), "{errors:?}");
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
        assert_eq!(keys, ["", "server[1]", "route[0]"], "{errors:?}");
        assert_eq!(errors[0].line, Some(2), "{errors:?}");
        assert!(errors[0].message.contains("`listen`"), "{errors:?}");
        assert_eq!(errors[1].line, Some(5), "{errors:?}");
        assert_eq!(errors[2].line, Some(9), "{errors:?}");
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
            [("", Some(4)), ("buffer", Some(2)), ("outputs", Some(1))],
            "{errors:?}"
        );
        assert!(errors[0].message.contains("`bogus`"), "{errors:?}");
        assert!(errors[1].message.contains("sometimes"), "{errors:?}");
    }
}
