//! Reading a config section by section, reporting every problem of a file in one run.
//!
//! serde stops at the first error, so deserializing a whole file at once reports one misspelled
//! key or bad value per run, and an operator (or a team fixing its pipeline file in CI) needs
//! as many rounds as the file has mistakes. Two steps avoid that:
//!
//! - [`deserialize_all`] deserializes one value and, when serde fails, takes the offending key
//!   out of the value and tries again, collecting each error with its key path: every unknown
//!   key and every bad value of a section is reported, up to [`MAX_ERRORS`]. A required key
//!   whose bad value was taken out then reads as missing; that consequence is not reported.
//! - [`Reader`] deserializes each section of a file on its own (`[buffer]`, each `[[route]]`,
//!   each `[outputs.NAME]`): a section that fails contributes its errors, keyed by the section
//!   and key path (`outputs.es.bulk_max_bytes`) and with the line of the offending key (or of
//!   the section's header) where the text shows it.
//!
//! The caller decides what a failed section means for the rest (left out, or at its defaults)
//! and which semantic checks still make sense; nothing here knows a daemon's sections.

use std::collections::{BTreeMap, BTreeSet};

use serde::de::{DeserializeOwned, Error as _};
use toml::{Table, Value};

use super::ConfigError;

/// Most errors [`deserialize_all`] collects from one value before it gives up.
pub const MAX_ERRORS: usize = 32;

/// One error of [`deserialize_all`]: where, relative to the value, and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// Key path of the offending key inside the value (`tls.ca_file`); empty for the value
    /// itself.
    pub path: Vec<String>,
    /// serde's message, e.g. ``unknown field `pth`, expected one of ...``.
    pub message: String,
}

impl FieldError {
    /// The unknown key's name when this is an unknown-key error.
    pub fn unknown_key(&self) -> Option<&str> {
        self.message
            .strip_prefix("unknown field `")
            .and_then(|rest| rest.split('`').next())
    }

    /// The key the line of this error is found by: the unknown key, else the last one of the
    /// path.
    pub fn line_key(&self) -> Option<&str> {
        self.unknown_key()
            .or_else(|| self.path.last().map(String::as_str))
    }
}

/// Deserializes `value` as `T`, collecting every error rather than the first (see the module
/// doc).
///
/// # Errors
/// Every unknown key and bad value found, in the order serde met them.
pub fn deserialize_all<T: DeserializeOwned>(mut value: Value) -> Result<T, Vec<FieldError>> {
    let mut errors: Vec<FieldError> = Vec::new();
    let mut removed: Vec<Vec<String>> = Vec::new();
    loop {
        let e = match T::deserialize(value.clone()) {
            Ok(v) if errors.is_empty() => return Ok(v),
            Ok(_) => return Err(errors),
            Err(e) => e,
        };
        let error = field_error(&e);
        // A required key taken out for its bad value: already reported.
        if let Some(missing) = error
            .message
            .strip_prefix("missing field `")
            .and_then(|rest| rest.split('`').next())
        {
            let mut path = error.path.clone();
            path.push(missing.to_owned());
            if removed.contains(&path) {
                return Err(errors);
            }
        }
        let culprit = match error.unknown_key() {
            Some(key) => {
                let mut path = error.path.clone();
                path.push(key.to_owned());
                Some(path)
            }
            None => Some(error.path.clone()).filter(|p| !p.is_empty()),
        };
        errors.push(error);
        match culprit {
            Some(path) if errors.len() < MAX_ERRORS && remove(&mut value, &path) => {
                removed.push(path)
            }
            _ => return Err(errors),
        }
    }
}

/// The path and message of an error of deserializing a `toml::Value`, whose display ends with
/// ``in `a.b` `` when the error is inside the value.
fn field_error(e: &toml::de::Error) -> FieldError {
    let message = e.message().to_owned();
    let shown = e.to_string();
    let path = shown
        .rsplit_once("\nin `")
        .and_then(|(_, rest)| rest.trim_end().strip_suffix('`'))
        .map(|p| p.split('.').map(str::to_owned).collect())
        .unwrap_or_default();
    FieldError { path, message }
}

/// Takes the key at `path` (`[name]` suffixes index arrays) out of `value`.
fn remove(value: &mut Value, path: &[String]) -> bool {
    let Some((last, parents)) = path.split_last() else {
        return false;
    };
    let mut at = value;
    for step in parents {
        let next = match index_of(step) {
            Some((key, i)) => at
                .get_mut(key)
                .and_then(Value::as_array_mut)
                .and_then(|items| items.get_mut(i)),
            None => at.get_mut(step.as_str()),
        };
        match next {
            Some(v) => at = v,
            None => return false,
        }
    }
    match index_of(last) {
        Some((key, i)) => match at.get_mut(key).and_then(Value::as_array_mut) {
            Some(items) if i < items.len() => {
                items.remove(i);
                true
            }
            _ => false,
        },
        None => at
            .as_table_mut()
            .is_some_and(|t| t.remove(last.as_str()).is_some()),
    }
}

/// `name[3]` as (`name`, 3).
fn index_of(step: &str) -> Option<(&str, usize)> {
    let (key, rest) = step.split_once('[')?;
    Some((key, rest.strip_suffix(']')?.parse().ok()?))
}

/// Where a section starts in the text: the `nth` line that is `header` (`[[route]]`). A
/// section written otherwise (`buffer = { ... }`, a top-level value) has none.
#[derive(Debug, Clone, Copy)]
pub struct Header<'a> {
    header: &'a str,
    nth: usize,
}

impl<'a> Header<'a> {
    /// The section that starts at the `nth` `header` line.
    pub fn at(header: &'a str, nth: usize) -> Option<Self> {
        Some(Header { header, nth })
    }
}

/// Reads sections of `text`, collecting their errors.
#[derive(Debug)]
pub struct Reader<'a> {
    text: &'a str,
    /// Every error found so far, in the order the sections were read.
    pub errors: Vec<ConfigError>,
}

impl<'a> Reader<'a> {
    /// A reader of the sections of `text`.
    pub fn new(text: &'a str) -> Self {
        Reader {
            text,
            errors: Vec::new(),
        }
    }

    /// Reports every key of `table` that is not one of `known` (`[bogus]` at the top level).
    pub fn unknown_keys(&mut self, table: &Table, known: &'static [&'static str]) {
        for key in table.keys().filter(|k| !known.contains(&k.as_str())) {
            let message = toml::de::Error::unknown_field(key, known)
                .message()
                .to_owned();
            let header = format!("[{key}]");
            self.fail(String::new(), Header::at(&header, 0), Some(key), message);
        }
    }

    /// Deserializes `value`, the section `key` that starts at `header`; on failure records
    /// every error found and returns `None`.
    pub fn section<T: DeserializeOwned>(
        &mut self,
        key: &str,
        header: Option<Header<'_>>,
        value: Value,
    ) -> Option<T> {
        self.section_with(key, header, value, deserialize_all::<T>)
    }

    /// [`Reader::section`] with its own deserializer (a serde `with` adapter), which reports
    /// its first error only.
    pub fn section_with<T>(
        &mut self,
        key: &str,
        header: Option<Header<'_>>,
        value: Value,
        deserialize: impl FnOnce(Value) -> Result<T, Vec<FieldError>>,
    ) -> Option<T> {
        match deserialize(value) {
            Ok(v) => Some(v),
            Err(errors) => {
                for e in errors {
                    // An unknown key is named in the message: the error is the section's.
                    let at = if e.unknown_key().is_some() || e.path.is_empty() {
                        key.to_owned()
                    } else {
                        join(key, &e.path.join("."))
                    };
                    // The line is the key's; otherwise the section's header's, or for a
                    // section without one (a top-level value) its key's.
                    let field = e.line_key().or(header.is_none().then_some(key));
                    let field = field.map(str::to_owned);
                    self.fail(at, header, field.as_deref(), e.message);
                }
                None
            }
        }
    }

    /// Each `[name.KEY]` table of `items` on its own, read by `deserialize`: those that parse
    /// by key, and the keys of those that did not.
    pub fn named_sections<T>(
        &mut self,
        name: &str,
        items: Table,
        deserialize: impl Fn(Value) -> Result<T, Vec<FieldError>>,
    ) -> (BTreeMap<String, T>, BTreeSet<String>) {
        let (mut parsed, mut failed) = (BTreeMap::new(), BTreeSet::new());
        for (item_key, item) in items {
            let header = format!("[{name}.{item_key}]");
            let key = format!("{name}.{item_key}");
            match self.section_with(&key, Header::at(&header, 0), item, &deserialize) {
                Some(v) => {
                    parsed.insert(item_key, v);
                }
                None => {
                    failed.insert(item_key);
                }
            }
        }
        (parsed, failed)
    }

    /// Each table of the array `[[name]]` on its own: those that parse, and whether all did.
    pub fn array_sections<T: DeserializeOwned>(
        &mut self,
        name: &str,
        items: Vec<Value>,
    ) -> (Vec<T>, bool) {
        let header = format!("[[{name}]]");
        let mut parsed = Vec::new();
        let mut all = true;
        for (i, item) in items.into_iter().enumerate() {
            let key = format!("{name}[{i}]");
            match self.section(&key, Header::at(&header, i), item) {
                Some(v) => parsed.push(v),
                None => all = false,
            }
        }
        (parsed, all)
    }

    /// A table section such as `[buffer]`, removed from `table`: its defaults when absent,
    /// `None` when it does not parse.
    pub fn table_section<T: DeserializeOwned + Default>(
        &mut self,
        table: &mut Table,
        name: &str,
    ) -> Option<T> {
        let header = format!("[{name}]");
        match table.remove(name) {
            Some(value) => self.section(name, Header::at(&header, 0), value),
            None => Some(T::default()),
        }
    }

    /// Records an error of section `key` at the line of `field` after `header` (or of the
    /// header itself).
    pub fn fail(
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

/// `section.key`, or `key` for a top-level section (`""`).
fn join(section: &str, key: &str) -> String {
    if section.is_empty() {
        key.to_owned()
    } else {
        format!("{section}.{key}")
    }
}

/// Wraps a serde `deserialize_with` function for [`Reader::section_with`].
pub fn with<T>(
    deserialize: impl FnOnce(Value) -> Result<T, toml::de::Error>,
) -> impl FnOnce(Value) -> Result<T, Vec<FieldError>> {
    move |value| deserialize(value).map_err(|e| vec![field_error(&e)])
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Tls {
        ca_file: String,
        #[serde(default)]
        verify: bool,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Section {
        path: String,
        #[serde(default)]
        size: u32,
        #[serde(default)]
        tls: Option<Tls>,
        #[serde(default)]
        hosts: Vec<String>,
    }

    fn errors(text: &str) -> Vec<(String, String)> {
        let value: Value = toml::from_str(text).unwrap();
        deserialize_all::<Section>(value)
            .unwrap_err()
            .into_iter()
            .map(|e| (e.path.join("."), e.message))
            .collect()
    }

    #[test]
    fn every_unknown_key_and_bad_value_is_reported() {
        let found = errors(
            "path = 3\npth = 1\nsize = \"big\"\nhosts = [\"a\", 2]\n[tls]\nca_fle = \"x\"\nverify = \"yes\"\n",
        );
        let paths: Vec<&str> = found.iter().map(|(p, _)| p.as_str()).collect();
        // `path` was bad, so its absence after removal is not reported again; `tls` is missing
        // `ca_file` for real.
        assert_eq!(
            paths,
            ["hosts", "path", "", "size", "tls", "tls.verify", "tls"],
            "{found:?}"
        );
        assert!(found[2].1.contains("`pth`"), "{found:?}");
        assert!(found[4].1.contains("`ca_fle`"), "{found:?}");
        assert!(found[6].1.contains("missing field `ca_file`"), "{found:?}");
    }

    #[test]
    fn a_valid_section_deserializes() {
        let text = "path = \"/x\"\nhosts = [\"h\"]\n[tls]\nca_file = \"c\"\n";
        let s: Section = deserialize_all(toml::from_str(text).unwrap()).unwrap();
        assert_eq!((s.path.as_str(), s.size, s.hosts.len()), ("/x", 0, 1));
        let tls = s.tls.unwrap();
        assert_eq!((tls.ca_file.as_str(), tls.verify), ("c", false));
    }

    #[test]
    fn the_lines_are_the_keys() {
        let text = "[a]\npath = \"/x\"\nsize = \"big\"\nbogus = 1\n";
        let mut table: Table = toml::from_str(text).unwrap();
        let mut r = Reader::new(text);
        let a = table.remove("a").unwrap();
        assert!(r.section::<Section>("a", Header::at("[a]", 0), a).is_none());
        let found: Vec<(&str, Option<usize>)> =
            r.errors.iter().map(|e| (e.key.as_str(), e.line)).collect();
        assert_eq!(
            found,
            [("a", Some(4)), ("a.size", Some(3))],
            "{:?}",
            r.errors
        );
    }
}
