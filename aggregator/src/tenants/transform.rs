//! A tenant pipeline's transform: the `[parse]` of one field of each record, then its
//! `[[filter]]`s in order. Pure: a compiled [`Transform`] maps one record's bytes to an
//! [`Applied`], with no IO and no shared state, so output workers call it concurrently.
//!
//! ## Records
//! A record is a msgpack map (the Forward protocol's record). Keys are matched by their bytes,
//! whether they are str or bin; pairs with other keys (integers, say) are carried along and
//! never match. A record that is not a map, or whose map is cut short, is `unreadable_record`.
//!
//! ## Parse
//! The text is the top-level `field`, a str or a bin (bytes that are not UTF-8 become U+FFFD in
//! what is written). Formats:
//!
//! - `json`: a JSON object; its members become fields (integers stay integers, nested objects and
//!   arrays stay nested; see [`logferry_common::json_merge`] for the limits). Any other JSON value
//!   is `not_an_object`; invalid JSON, trailing text or nesting deeper than
//!   [`json_merge::MAX_DEPTH`] is `invalid_json`, with serde_json's message (it gives the column).
//! - `regex`: the pattern is searched for (anchor it with `^…$` to match whole lines); each named
//!   group that took part in the match becomes a string field, unnamed groups are ignored. No
//!   match is `no_match`.
//! - `logfmt`: `key=value key2="quoted \" value" flag`, pairs separated by spaces or tabs. A bare
//!   key is boolean `true`; every value is a string (`key=` is the empty string); quoted values
//!   take the escapes `\"`, `\\`, `\n`, `\r`, `\t` (any other backslash is kept as it is). An
//!   unterminated quote, a quote in a key or an unquoted value, text right after a closing quote,
//!   `=value` without a key, or a text with no pair at all is `invalid_logfmt`.
//! - `none`: no parse (the filters still run).
//!
//! Parsed fields go at the top level. A parsed key that the record already has replaces the
//! record's value, except the source field itself while `keep_original` is on (keeping it is
//! what that asks for); `keep_original = false` removes the source field. Within one parse the
//! first of repeated keys wins. So the transform never writes a duplicate key (a msgpack map with
//! one is rejected by Elasticsearch); a record that already had one keeps it.
//!
//! A record that does not parse becomes, per `on_error`: `keep_raw`, the record as it was plus a
//! `_parse_error` string field ([`ParseError::message`]), which then goes through the filters;
//! `dead_letter` or `drop`, nothing here: the caller dead-letters or drops the original. A record
//! that is `unreadable_record` cannot take a field, so it never comes back as a record.
//!
//! ## Filters
//! Applied in order after the parse (or the failed parse under `keep_raw`): `drop_fields`,
//! `keep` (a string field, or a number or boolean rendered as text, must equal one of the values)
//! and `add_field`. A record is re-encoded only when something changed: it comes back
//! [`Applied::Unchanged`] otherwise, and a changed one is written once, as a new map whose pairs
//! are copied byte for byte.

use std::borrow::Cow;
use std::fmt;

use logferry_common::json_merge;
use logferry_common::msgpack::{self, MsgpackError, Token, DEFAULT_MAX_DEPTH};
use regex::bytes::Regex;
use serde::Deserialize;

/// The field a failed parse adds under `on_error = "keep_raw"`.
pub const PARSE_ERROR_FIELD: &str = "_parse_error";
/// Most bytes of the text kept in [`ParseError::sample`].
pub const SAMPLE_MAX: usize = 256;
/// Docker's json-file driver splits lines at this many bytes.
pub const DOCKER_SPLIT: usize = 16384;
const SPLIT_HINT: &str =
    "; probably a docker line split at 16 KiB: join partial lines at the sender";

/// `[parse]` of a pipeline file.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParseConfig {
    /// Top-level key of the record holding the text (default "log").
    #[serde(default = "default_field")]
    pub field: String,
    /// json | regex | logfmt | none
    pub format: ParseFormat,
    /// The regex (regex format only; required there, an error elsewhere), named groups become
    /// fields.
    #[serde(default)]
    pub pattern: Option<String>,
    /// What a record that does not parse becomes: keep_raw (default: the record as it is plus a
    /// `_parse_error` string field), dead_letter, drop.
    #[serde(default)]
    pub on_error: OnError,
    /// Keep the source field after a successful parse (default true).
    #[serde(default = "default_keep_original")]
    pub keep_original: bool,
}

fn default_field() -> String {
    "log".to_owned()
}

fn default_keep_original() -> bool {
    true
}

/// How the text of `[parse]` is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ParseFormat {
    /// A JSON object.
    Json,
    /// A regex with named groups.
    Regex,
    /// `key=value` pairs.
    Logfmt,
    /// No parse.
    None,
}

/// What a record that does not parse becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnError {
    /// Sent as it is, plus a `_parse_error` field.
    #[default]
    KeepRaw,
    /// Dead-lettered by the caller.
    DeadLetter,
    /// Dropped by the caller.
    Drop,
}

/// `[[filter]]`: one of a closed list, applied in order after the parse.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum FilterConfig {
    /// Removes these top-level keys.
    DropFields {
        /// The keys.
        fields: Vec<String>,
    },
    /// Keeps only records whose top-level `field` (a string, or a number/bool rendered as text)
    /// equals one of `values`; the rest are dropped (counted by the caller as "filtered").
    Keep {
        /// The key.
        field: String,
        /// The values that keep a record.
        values: Vec<String>,
    },
    /// Sets top-level `key` to the string `value` (replacing it if present).
    AddField {
        /// The key.
        key: String,
        /// Its value.
        value: String,
    },
}

/// Why a record did not parse; [`ParseErrorReason::as_str`] is its metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParseErrorReason {
    /// The text is not valid JSON (or is nested too deep).
    InvalidJson,
    /// The text is JSON but not an object.
    NotAnObject,
    /// The regex did not match.
    NoMatch,
    /// The text is not logfmt.
    InvalidLogfmt,
    /// The record has no such field.
    MissingField,
    /// The field is neither a str nor a bin.
    NotText,
    /// The record is not a msgpack map.
    UnreadableRecord,
}

impl ParseErrorReason {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            ParseErrorReason::InvalidJson => "invalid_json",
            ParseErrorReason::NotAnObject => "not_an_object",
            ParseErrorReason::NoMatch => "no_match",
            ParseErrorReason::InvalidLogfmt => "invalid_logfmt",
            ParseErrorReason::MissingField => "missing_field",
            ParseErrorReason::NotText => "not_text",
            ParseErrorReason::UnreadableRecord => "unreadable_record",
        }
    }
}

impl fmt::Display for ParseErrorReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A record that did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}: {detail}{}", if *split_hint { SPLIT_HINT } else { "" })]
pub struct ParseError {
    /// Why.
    pub reason: ParseErrorReason,
    /// A human message (serde_json's error with its column, "the regex did not match", ...).
    pub detail: String,
    /// The text, cut to at most [`SAMPLE_MAX`] bytes at a character boundary (lossy UTF-8);
    /// empty when there is no text (a missing or non-text field, an unreadable record).
    pub sample: String,
    /// The text's length is a non-zero multiple of [`DOCKER_SPLIT`]: most likely a line that
    /// docker split and the sender did not join again.
    pub split_hint: bool,
}

impl ParseError {
    fn new(reason: ParseErrorReason, detail: String, text: &[u8]) -> ParseError {
        ParseError {
            reason,
            detail,
            sample: sample(text),
            split_hint: !text.is_empty() && text.len().is_multiple_of(DOCKER_SPLIT),
        }
    }

    /// `reason: detail`, and the split hint when it applies (also the `Display`).
    pub fn message(&self) -> String {
        self.to_string()
    }
}

/// `text` cut to at most [`SAMPLE_MAX`] bytes, not inside a UTF-8 sequence.
fn sample(text: &[u8]) -> String {
    let mut end = text.len().min(SAMPLE_MAX);
    while end > 0 && end < text.len() && text.get(end).is_some_and(|b| b & 0xc0 == 0x80) {
        end -= 1;
    }
    String::from_utf8_lossy(text.get(..end).unwrap_or_default()).into_owned()
}

/// What became of one record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// Passes as it is.
    Unchanged,
    /// Passes, rewritten: a new msgpack map.
    Changed(Vec<u8>),
    /// A filter dropped it.
    Filtered,
    /// The parse failed; `record` is the record to send with on_error = keep_raw (the original
    /// plus `_parse_error`, after the filters), None otherwise (the caller dead-letters or drops
    /// the original per [`Transform::on_error`]). An `unreadable_record` is None whatever
    /// `on_error` is: nothing can be added to it.
    ParseFailed {
        /// Why.
        error: ParseError,
        /// The record to send, under keep_raw.
        record: Option<Vec<u8>>,
    },
}

/// A compiled parse + filters.
#[derive(Debug)]
pub struct Transform {
    parse: Option<Parse>,
    on_error: OnError,
    filters: Vec<Filter>,
}

#[derive(Debug)]
struct Parse {
    field: String,
    keep_original: bool,
    parser: Parser,
}

#[derive(Debug)]
enum Parser {
    Json,
    /// The regex and its named groups (index, name) that may become fields.
    Regex(Regex, Vec<(usize, String)>),
    Logfmt,
}

#[derive(Debug)]
enum Filter {
    DropFields(Vec<String>),
    Keep {
        field: String,
        values: Vec<String>,
    },
    /// The encoded pair, and where its value starts in it.
    AddField {
        key: String,
        pair: Vec<u8>,
        value_at: usize,
    },
}

impl Transform {
    /// Compiles: the regex compiles (and has at least one named group), pattern present iff
    /// format = regex, field names non-empty, filter lists non-empty. Returns every problem, each
    /// as (key path relative to the pipeline file, message), filters numbered from 0:
    /// `("parse.pattern", ...)`, `("filter[1].fields", ...)`.
    pub fn compile(
        parse: Option<&ParseConfig>,
        filters: &[FilterConfig],
    ) -> Result<Transform, Vec<(String, String)>> {
        let mut problems = Vec::new();
        let compiled = parse.and_then(|p| compile_parse(p, &mut problems));
        let filters: Vec<Filter> = filters
            .iter()
            .enumerate()
            .filter_map(|(i, f)| compile_filter(&format!("filter[{i}]"), f, &mut problems))
            .collect();
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(Transform {
            parse: compiled,
            on_error: parse.map_or(OnError::default(), |p| p.on_error),
            filters,
        })
    }

    /// Nothing to do (no parse or format none, and no filters): the caller skips apply.
    pub fn is_identity(&self) -> bool {
        self.parse.is_none() && self.filters.is_empty()
    }

    /// What a record that does not parse becomes.
    pub fn on_error(&self) -> OnError {
        self.on_error
    }

    /// Applies to one record (a msgpack map).
    pub fn apply(&self, record: &[u8]) -> Applied {
        let mut fields = match read_record(record) {
            Ok(fields) => fields,
            Err(e) => return unreadable(format!("the record is not a msgpack map: {e}")),
        };
        // What the pairs in `fields` borrow, besides the record and `self`.
        let mut parsed = Vec::new();
        let mut error_pair = Vec::new();
        let mut changed = false;
        let mut failure = None;
        if let Some(parse) = &self.parse {
            match parse.run(&fields, &mut parsed) {
                Ok(count) => {
                    if let Err(e) = parse.merge(&mut fields, &parsed, count) {
                        // The parsers write well-formed pairs; this guards against a bug there.
                        return unreadable(format!("the parsed fields do not read back: {e}"));
                    }
                    changed = true;
                }
                Err(error) => {
                    if self.on_error != OnError::KeepRaw {
                        return Applied::ParseFailed {
                            error,
                            record: None,
                        };
                    }
                    msgpack::write_str(&mut error_pair, PARSE_ERROR_FIELD);
                    let value_at = error_pair.len();
                    msgpack::write_str(&mut error_pair, &error.message());
                    set(
                        &mut fields,
                        Pair::split(PARSE_ERROR_FIELD, &error_pair, value_at),
                    );
                    failure = Some(error);
                }
            }
        }
        for filter in &self.filters {
            match filter.apply(&mut fields) {
                Some(c) => changed |= c,
                None => return Applied::Filtered,
            }
        }
        match failure {
            Some(error) => Applied::ParseFailed {
                error,
                record: Some(encode(&fields)),
            },
            None if changed => Applied::Changed(encode(&fields)),
            None => Applied::Unchanged,
        }
    }
}

/// A record that cannot be read: never sent on, whatever `on_error` is.
fn unreadable(detail: String) -> Applied {
    Applied::ParseFailed {
        error: ParseError::new(ParseErrorReason::UnreadableRecord, detail, b""),
        record: None,
    }
}

fn compile_parse(config: &ParseConfig, problems: &mut Vec<(String, String)>) -> Option<Parse> {
    let before = problems.len();
    let mut problem = |key: &str, message: String| problems.push((key.to_owned(), message));
    if config.field.is_empty() {
        problem("parse.field", "must not be empty".to_owned());
    }
    let parser = match (config.format, &config.pattern) {
        (ParseFormat::Regex, None) => {
            problem(
                "parse.pattern",
                "is required with format = \"regex\"".to_owned(),
            );
            None
        }
        (ParseFormat::Regex, Some(pattern)) => match Regex::new(pattern) {
            Err(e) => {
                problem("parse.pattern", format!("is not a valid regex: {e}"));
                None
            }
            Ok(regex) => {
                let named: Vec<(usize, String)> = regex
                    .capture_names()
                    .enumerate()
                    .filter_map(|(i, name)| Some((i, name?.to_owned())))
                    .collect();
                if named.is_empty() {
                    problem(
                        "parse.pattern",
                        "has no named group such as (?P<name>...): it would add nothing".to_owned(),
                    );
                }
                // With keep_original, a group named like the source field is never written.
                let groups = named
                    .into_iter()
                    .filter(|(_, name)| !(config.keep_original && *name == config.field))
                    .collect();
                Some(Parser::Regex(regex, groups))
            }
        },
        (_, Some(_)) => {
            problem("parse.pattern", "is only for format = \"regex\"".to_owned());
            None
        }
        (ParseFormat::Json, None) => Some(Parser::Json),
        (ParseFormat::Logfmt, None) => Some(Parser::Logfmt),
        (ParseFormat::None, None) => None,
    };
    if problems.len() > before {
        return None;
    }
    Some(Parse {
        field: config.field.clone(),
        keep_original: config.keep_original,
        parser: parser?,
    })
}

fn compile_filter(
    at: &str,
    config: &FilterConfig,
    problems: &mut Vec<(String, String)>,
) -> Option<Filter> {
    let before = problems.len();
    let mut problem = |key: &str, message: &str| {
        problems.push((format!("{at}.{key}"), message.to_owned()));
    };
    let filter = match config {
        FilterConfig::DropFields { fields } => {
            if fields.is_empty() {
                problem("fields", "must not be empty");
            }
            if fields.iter().any(String::is_empty) {
                problem("fields", "holds an empty field name");
            }
            Filter::DropFields(fields.clone())
        }
        FilterConfig::Keep { field, values } => {
            if field.is_empty() {
                problem("field", "must not be empty");
            }
            if values.is_empty() {
                problem("values", "must not be empty (it would drop every record)");
            }
            Filter::Keep {
                field: field.clone(),
                values: values.clone(),
            }
        }
        FilterConfig::AddField { key, value } => {
            if key.is_empty() {
                problem("key", "must not be empty");
            }
            let mut pair = Vec::new();
            msgpack::write_str(&mut pair, key);
            let value_at = pair.len();
            msgpack::write_str(&mut pair, value);
            Filter::AddField {
                key: key.clone(),
                pair,
                value_at,
            }
        }
    };
    (problems.len() == before).then_some(filter)
}

/// One key/value pair of the record being built, borrowed from the record, the parsed fields
/// or the transform.
#[derive(Debug, Clone, Copy)]
struct Pair<'a> {
    /// The key's bytes when it is a str or a bin.
    key: Option<&'a [u8]>,
    /// The key's and the value's encodings, back to back.
    raw: &'a [u8],
    /// The value's encoding.
    value: &'a [u8],
}

impl<'a> Pair<'a> {
    /// The pair `raw` whose string key `key` is followed by the value at `value_at`.
    fn split(key: &'a str, raw: &'a [u8], value_at: usize) -> Pair<'a> {
        Pair {
            key: Some(key.as_bytes()),
            raw,
            value: raw.get(value_at..).unwrap_or_default(),
        }
    }

    fn is(&self, key: &[u8]) -> bool {
        self.key == Some(key)
    }
}

/// The pairs of a msgpack map.
fn read_record(record: &[u8]) -> Result<Vec<Pair<'_>>, MsgpackError> {
    let mut cur = record;
    let n = msgpack::read_map_len(&mut cur)?;
    let mut pairs = Vec::with_capacity((n as usize).min(cur.len() / 2) + 2);
    read_pairs(cur, n, &mut pairs)?;
    Ok(pairs)
}

/// Appends the `n` pairs at the start of `buf` to `pairs`.
fn read_pairs<'a>(buf: &'a [u8], n: u32, pairs: &mut Vec<Pair<'a>>) -> Result<(), MsgpackError> {
    let mut cur = buf;
    for _ in 0..n {
        let start = cur;
        let mut key = msgpack::skip_value(&mut cur, DEFAULT_MAX_DEPTH)?;
        let value = msgpack::skip_value(&mut cur, DEFAULT_MAX_DEPTH)?;
        pairs.push(Pair {
            key: msgpack::read_str_or_bin(&mut key).ok(),
            raw: start.get(..start.len() - cur.len()).unwrap_or_default(),
            value,
        });
    }
    Ok(())
}

/// Sets `pair`: in place of the pair with its key, or added at the end. Whether that changed
/// anything.
fn set<'a>(fields: &mut Vec<Pair<'a>>, pair: Pair<'a>) -> bool {
    match fields.iter_mut().find(|p| p.key == pair.key) {
        Some(old) if old.value == pair.value => false,
        Some(old) => {
            *old = pair;
            true
        }
        None => {
            fields.push(pair);
            true
        }
    }
}

/// The pairs as one msgpack map.
fn encode(fields: &[Pair<'_>]) -> Vec<u8> {
    let mut out = Vec::with_capacity(5 + fields.iter().map(|p| p.raw.len()).sum::<usize>());
    // A record's pairs fit in a request, far below 2^32.
    msgpack::write_map_len(&mut out, fields.len() as u32);
    for pair in fields {
        out.extend_from_slice(pair.raw);
    }
    out
}

impl Parse {
    /// Parses the source field of `fields` into pairs appended to `out`; how many.
    fn run(&self, fields: &[Pair<'_>], out: &mut Vec<u8>) -> Result<u32, ParseError> {
        let Some(source) = fields.iter().find(|p| p.is(self.field.as_bytes())) else {
            let detail = format!("the record has no field {:?}", self.field);
            return Err(ParseError::new(ParseErrorReason::MissingField, detail, b""));
        };
        let mut value = source.value;
        let text = match msgpack::read_str_or_bin(&mut value) {
            Ok(text) => text,
            Err(_) => {
                let kind = msgpack::peek_kind(source.value).map_or_else(
                    |_| "unreadable".to_owned(),
                    |k| format!("{k:?}").to_lowercase(),
                );
                let detail = format!("the field {:?} is a {kind}, not text", self.field);
                return Err(ParseError::new(ParseErrorReason::NotText, detail, b""));
            }
        };
        // Parsed pairs take about the text's size: one allocation, not a growing buffer.
        out.reserve(text.len() + 64);
        let skip = |k: &[u8]| self.keep_original && k == self.field.as_bytes();
        match &self.parser {
            Parser::Json => {
                json_merge::merge_object(text, |k| skip(k.as_bytes()), out).ok_or_else(|| {
                    let (reason, detail) = json_failure(text);
                    ParseError::new(reason, detail, text)
                })
            }
            Parser::Regex(regex, groups) => {
                let caps = regex.captures(text).ok_or_else(|| {
                    let detail = "the regex did not match".to_owned();
                    ParseError::new(ParseErrorReason::NoMatch, detail, text)
                })?;
                let mut n = 0;
                for (i, name) in groups {
                    if let Some(m) = caps.get(*i) {
                        msgpack::write_str(out, name);
                        write_text(out, m.as_bytes());
                        n += 1;
                    }
                }
                Ok(n)
            }
            Parser::Logfmt => logfmt(text, skip, out)
                .map_err(|detail| ParseError::new(ParseErrorReason::InvalidLogfmt, detail, text)),
        }
    }

    /// Puts the `count` parsed pairs of `parsed` into `fields`: each replaces the record's pair
    /// with its key, and the source field goes unless `keep_original`.
    fn merge<'a>(
        &self,
        fields: &mut Vec<Pair<'a>>,
        parsed: &'a [u8],
        count: u32,
    ) -> Result<(), MsgpackError> {
        let original = fields.len();
        read_pairs(parsed, count, fields)?;
        let (record, added) = fields.split_at(original);
        let mut keep = Vec::with_capacity(fields.len());
        for pair in record {
            let replaced = pair.key.is_some_and(|k| added.iter().any(|a| a.is(k)));
            let source = !self.keep_original && pair.is(self.field.as_bytes());
            if !replaced && !source {
                keep.push(*pair);
            }
        }
        keep.extend_from_slice(added);
        *fields = keep;
        Ok(())
    }
}

/// Why `text`, which json_merge declined, is not a JSON object. Only on the error path: it
/// reads the text again.
fn json_failure(text: &[u8]) -> (ParseErrorReason, String) {
    if let Err(e) = serde_json::from_slice::<serde::de::IgnoredAny>(text) {
        return (ParseErrorReason::InvalidJson, e.to_string());
    }
    let what = match text.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'{') => {
            let detail = format!("nested deeper than {} levels", json_merge::MAX_DEPTH);
            return (ParseErrorReason::InvalidJson, detail);
        }
        Some(b'[') => "an array",
        Some(b'"') => "a string",
        Some(b't' | b'f') => "a boolean",
        Some(b'n') => "null",
        _ => "a number",
    };
    let detail = format!("the text is {what}, not a JSON object");
    (ParseErrorReason::NotAnObject, detail)
}

/// Writes bytes as a msgpack str, invalid UTF-8 replaced.
fn write_text(out: &mut Vec<u8>, text: &[u8]) {
    msgpack::write_str(out, &String::from_utf8_lossy(text));
}

fn is_space(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

/// Writes the logfmt pairs of `text` to `out` (keys `skip` names and repeated keys left out);
/// how many, or why the text is not logfmt.
fn logfmt(text: &[u8], skip: impl Fn(&[u8]) -> bool, out: &mut Vec<u8>) -> Result<u32, String> {
    if text.iter().all(|&b| is_space(b)) {
        return Err("no key=value pairs".to_owned());
    }
    let mut keys: Vec<&[u8]> = Vec::new();
    let mut unquoted = Vec::new();
    let mut i = 0;
    loop {
        while text.get(i).copied().is_some_and(is_space) {
            i += 1;
        }
        if i == text.len() {
            break;
        }
        let start = i;
        while text
            .get(i)
            .is_some_and(|&b| !is_space(b) && b != b'=' && b != b'"')
        {
            i += 1;
        }
        let key = text.get(start..i).unwrap_or_default();
        match text.get(i) {
            Some(b'=') if key.is_empty() => {
                return Err(format!("a value without a key at byte {i}"))
            }
            Some(b'"') => return Err(format!("a quote outside a value at byte {i}")),
            _ => {}
        }
        let value = if text.get(i) == Some(&b'=') {
            i += 1;
            if text.get(i) == Some(&b'"') {
                i = unquote(text, i, &mut unquoted)?;
                Some(unquoted.as_slice())
            } else {
                let at = i;
                while text.get(i).is_some_and(|&b| !is_space(b)) {
                    if text.get(i) == Some(&b'"') {
                        return Err(format!("a quote inside an unquoted value at byte {i}"));
                    }
                    i += 1;
                }
                Some(text.get(at..i).unwrap_or_default())
            }
        } else {
            None
        };
        if skip(key) || keys.contains(&key) {
            continue;
        }
        keys.push(key);
        write_text(out, key);
        match value {
            Some(v) => write_text(out, v),
            None => msgpack::write_bool(out, true),
        }
    }
    Ok(keys.len() as u32)
}

/// Reads the quoted value whose opening quote is at `open` into `value`; the index after the
/// closing quote.
fn unquote(text: &[u8], open: usize, value: &mut Vec<u8>) -> Result<usize, String> {
    value.clear();
    let mut i = open + 1;
    loop {
        match text.get(i) {
            None => return Err(format!("unterminated quoted value starting at byte {open}")),
            Some(b'"') => break,
            Some(b'\\') => {
                match text.get(i + 1) {
                    None => {
                        return Err(format!("unterminated quoted value starting at byte {open}"))
                    }
                    Some(b'"') => value.push(b'"'),
                    Some(b'\\') => value.push(b'\\'),
                    Some(b'n') => value.push(b'\n'),
                    Some(b'r') => value.push(b'\r'),
                    Some(b't') => value.push(b'\t'),
                    Some(&other) => value.extend_from_slice(&[b'\\', other]),
                }
                i += 2;
            }
            Some(&b) => {
                value.push(b);
                i += 1;
            }
        }
    }
    i += 1;
    match text.get(i) {
        Some(&b) if !is_space(b) => Err(format!("text right after a quoted value at byte {i}")),
        _ => Ok(i),
    }
}

impl Filter {
    /// Applies to `fields`: whether it changed them, None when the record is dropped.
    fn apply<'a>(&'a self, fields: &mut Vec<Pair<'a>>) -> Option<bool> {
        match self {
            Filter::DropFields(names) => {
                let before = fields.len();
                fields.retain(|p| {
                    !p.key
                        .is_some_and(|k| names.iter().any(|n| n.as_bytes() == k))
                });
                Some(fields.len() != before)
            }
            Filter::Keep { field, values } => {
                let pair = fields.iter().find(|p| p.is(field.as_bytes()))?;
                matches_any(pair.value, values).then_some(false)
            }
            Filter::AddField {
                key,
                pair,
                value_at,
            } => Some(set(fields, Pair::split(key, pair, *value_at))),
        }
    }
}

/// Whether the encoded `value`, a string or a number or boolean as text, is one of `values`.
fn matches_any(value: &[u8], values: &[String]) -> bool {
    let mut cur = value;
    let text: Cow<'_, [u8]> = match msgpack::read_token(&mut cur) {
        Ok(Token::Str(s) | Token::Bin(s)) => Cow::Borrowed(s),
        Ok(Token::Uint(v)) => Cow::Owned(v.to_string().into_bytes()),
        Ok(Token::Int(v)) => Cow::Owned(v.to_string().into_bytes()),
        Ok(Token::F32(v)) => Cow::Owned(v.to_string().into_bytes()),
        Ok(Token::F64(v)) => Cow::Owned(v.to_string().into_bytes()),
        Ok(Token::Bool(v)) => Cow::Borrowed(if v { b"true" } else { b"false" }),
        _ => return false,
    };
    values.iter().any(|v| v.as_bytes() == &*text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    /// A pipeline file's `[parse]` and `[[filter]]`s.
    #[derive(Deserialize)]
    struct File {
        parse: Option<ParseConfig>,
        #[serde(default)]
        filter: Vec<FilterConfig>,
    }

    fn file(text: &str) -> Result<File, toml::de::Error> {
        toml::from_str(text)
    }

    fn compile(text: &str) -> Result<Transform, Vec<(String, String)>> {
        let f = file(text).expect("valid TOML");
        Transform::compile(f.parse.as_ref(), &f.filter)
    }

    fn transform(text: &str) -> Transform {
        compile(text).expect("compiles")
    }

    fn rec(v: Value) -> Vec<u8> {
        rmp_serde::to_vec_named(&v).expect("encodes")
    }

    /// The map as JSON, after checking it has no duplicate key.
    fn decode(bytes: &[u8]) -> Value {
        let v: Value = rmp_serde::from_slice(bytes).expect("a msgpack map");
        let mut cur = bytes;
        let pairs = msgpack::read_map_len(&mut cur).expect("a map");
        assert_eq!(
            pairs as usize,
            v.as_object().expect("an object").len(),
            "a duplicate key"
        );
        v
    }

    fn changed(t: &Transform, record: &[u8]) -> Value {
        match t.apply(record) {
            Applied::Changed(bytes) => decode(&bytes),
            other => panic!("not changed: {other:?}"),
        }
    }

    fn failed(t: &Transform, record: &[u8]) -> (ParseError, Option<Vec<u8>>) {
        match t.apply(record) {
            Applied::ParseFailed { error, record } => (error, record),
            other => panic!("did not fail: {other:?}"),
        }
    }

    const JSON: &str = "[parse]\nformat = \"json\"\n";
    const LOGFMT: &str = "[parse]\nformat = \"logfmt\"\n";
    const NGINX: &str = r#"
        [parse]
        format = "regex"
        pattern = '^(?P<remote>\S+) (\S+) (?P<user>\S+) \[(?P<time>[^\]]+)\] "(?P<method>\S+) (?P<path>\S+) (?P<protocol>[^"]+)" (?P<status>\d{3}) (?P<bytes>\d+) "(?P<referer>[^"]*)" "(?P<agent>[^"]*)"(?: rt=(?P<request_time>\S+))?$'
    "#;
    const NGINX_LINE: &str = r#"203.0.113.7 - alice [07/Dec/2026:21:43:21 +0000] "GET /api/v1/items?page=2 HTTP/1.1" 200 5123 "https://shop.example/cart" "Mozilla/5.0 (X11; Linux x86_64) Firefox/133.0""#;

    #[test]
    fn json_app_log_line_fields_go_to_the_top_level() {
        let line = r#"{"ts":"2026-12-07T21:43:21.123Z","level":"info","msg":"user logged in","user_id":42,"latency_ms":12.5,"ok":true,"tags":["auth","web"],"ctx":{"ip":"10.0.0.1","trace":null}}"#;
        let r = rec(json!({"log": line, "stream": "stdout"}));
        let v = changed(&transform(JSON), &r);
        assert_eq!(
            v,
            json!({"log": line, "stream": "stdout", "ts": "2026-12-07T21:43:21.123Z",
                "level": "info", "msg": "user logged in", "user_id": 42, "latency_ms": 12.5,
                "ok": true, "tags": ["auth", "web"], "ctx": {"ip": "10.0.0.1", "trace": null}})
        );
    }

    #[test]
    fn nginx_access_line_with_a_regex() {
        let t = transform(NGINX);
        let v = changed(&t, &rec(json!({"log": NGINX_LINE})));
        // The unnamed group (ident) is not a field; request_time did not take part.
        assert_eq!(
            v,
            json!({"log": NGINX_LINE, "remote": "203.0.113.7", "user": "alice",
                "time": "07/Dec/2026:21:43:21 +0000", "method": "GET",
                "path": "/api/v1/items?page=2", "protocol": "HTTP/1.1", "status": "200",
                "bytes": "5123", "referer": "https://shop.example/cart",
                "agent": "Mozilla/5.0 (X11; Linux x86_64) Firefox/133.0"})
        );
        let timed = format!("{NGINX_LINE} rt=0.012");
        let v = changed(&t, &rec(json!({"log": timed})));
        assert_eq!(v["request_time"], "0.012");
    }

    #[test]
    fn go_logfmt_line() {
        let line = r#"level=info msg="request done" path=/api status=200 dur=1.2ms cached err="bad \"x\" \\ here" empty= level=debug"#;
        let v = changed(&transform(LOGFMT), &rec(json!({"log": line})));
        assert_eq!(
            v,
            json!({"log": line, "level": "info", "msg": "request done", "path": "/api",
                "status": "200", "dur": "1.2ms", "cached": true, "err": "bad \"x\" \\ here",
                "empty": ""})
        );
        let tabs = transform(LOGFMT).apply(&rec(json!({"log": "\ta=1\tb=\"2\"  "})));
        let Applied::Changed(bytes) = tabs else {
            panic!("{tabs:?}")
        };
        assert_eq!(
            decode(&bytes),
            json!({"log": "\ta=1\tb=\"2\"  ", "a": "1", "b": "2"})
        );
    }

    #[test]
    fn each_error_reason_with_its_detail() {
        let cases: &[(&str, Value, ParseErrorReason, &str)] = &[
            (
                JSON,
                json!({"log": "{\"a\":tru}"}),
                ParseErrorReason::InvalidJson,
                "column 9",
            ),
            (
                JSON,
                json!({"log": "{\"a\":1} x"}),
                ParseErrorReason::InvalidJson,
                "trailing",
            ),
            (
                JSON,
                json!({"log": "[1,2]"}),
                ParseErrorReason::NotAnObject,
                "an array",
            ),
            (
                JSON,
                json!({"log": " 3"}),
                ParseErrorReason::NotAnObject,
                "a number",
            ),
            (
                JSON,
                json!({"log": "\"s\""}),
                ParseErrorReason::NotAnObject,
                "a string",
            ),
            (
                NGINX,
                json!({"log": "hello"}),
                ParseErrorReason::NoMatch,
                "did not match",
            ),
            (
                LOGFMT,
                json!({"log": "a=\"open"}),
                ParseErrorReason::InvalidLogfmt,
                "unterminated",
            ),
            (
                LOGFMT,
                json!({"log": "a=\"x\\"}),
                ParseErrorReason::InvalidLogfmt,
                "unterminated",
            ),
            (
                LOGFMT,
                json!({"log": "a=1 =2"}),
                ParseErrorReason::InvalidLogfmt,
                "without a key at byte 4",
            ),
            (
                LOGFMT,
                json!({"log": "a\"b=1"}),
                ParseErrorReason::InvalidLogfmt,
                "quote outside",
            ),
            (
                LOGFMT,
                json!({"log": "a=b\"c"}),
                ParseErrorReason::InvalidLogfmt,
                "quote inside",
            ),
            (
                LOGFMT,
                json!({"log": "a=\"b\"c"}),
                ParseErrorReason::InvalidLogfmt,
                "right after",
            ),
            (
                LOGFMT,
                json!({"log": "  "}),
                ParseErrorReason::InvalidLogfmt,
                "no key=value",
            ),
            (
                JSON,
                json!({"msg": "{}"}),
                ParseErrorReason::MissingField,
                "no field \"log\"",
            ),
            (
                JSON,
                json!({"log": 5}),
                ParseErrorReason::NotText,
                "is a int, not text",
            ),
            (
                LOGFMT,
                json!({"log": {"a": 1}}),
                ParseErrorReason::NotText,
                "is a map",
            ),
        ];
        for (config, record, reason, detail) in cases {
            let (error, _) = failed(&transform(config), &rec(record.clone()));
            assert_eq!(error.reason, *reason, "{record}");
            assert!(error.detail.contains(detail), "{record}: {}", error.detail);
            assert!(!error.split_hint);
        }
        let deep = format!("{{\"a\":{}1{}}}", "[".repeat(40), "]".repeat(40));
        let (error, _) = failed(&transform(JSON), &rec(json!({"log": deep})));
        assert_eq!(error.reason, ParseErrorReason::InvalidJson);
        assert!(
            error.detail.contains("nested deeper than 32"),
            "{}",
            error.detail
        );
        assert_eq!(error.reason.as_str(), "invalid_json");
        assert_eq!(ParseErrorReason::NoMatch.as_str(), "no_match");
    }

    #[test]
    fn a_record_that_is_not_a_map_is_unreadable_whatever_on_error_is() {
        let t = transform(JSON);
        let mut cut = rec(json!({"log": "{}", "other": "value"}));
        cut.truncate(cut.len() - 2);
        let filters_only =
            transform("[[filter]]\ntype = \"add_field\"\nkey = \"k\"\nvalue = \"v\"\n");
        for record in [rec(json!(["log", "x"])), cut, Vec::new()] {
            for t in [&t, &filters_only] {
                let (error, back) = failed(t, &record);
                assert_eq!(error.reason, ParseErrorReason::UnreadableRecord);
                assert!(error.detail.starts_with("the record is not a msgpack map"));
                assert_eq!((error.sample.as_str(), back), ("", None));
            }
        }
    }

    #[test]
    fn split_hint_on_a_16384_byte_truncated_json_line_and_a_short_sample() {
        let mut line = String::from("{\"level\":\"info\",\"msg\":\"");
        line.extend(std::iter::repeat_n('x', DOCKER_SPLIT - line.len()));
        let (error, _) = failed(&transform(JSON), &rec(json!({"log": line})));
        assert_eq!(error.reason, ParseErrorReason::InvalidJson);
        assert!(error.detail.contains("EOF"), "{}", error.detail);
        assert!(error.split_hint);
        assert!(error.message().starts_with("invalid_json: EOF"));
        assert!(error
            .message()
            .ends_with("docker line split at 16 KiB: join partial lines at the sender"));
        assert_eq!(error.sample, line[..SAMPLE_MAX]);
        // The sample is cut before a character that would straddle the limit.
        let text = format!(
            "{}\u{e9}{}",
            "a".repeat(SAMPLE_MAX - 1),
            "b".repeat(DOCKER_SPLIT)
        );
        let (error, _) = failed(&transform(JSON), &rec(json!({"log": text})));
        assert_eq!(error.sample, "a".repeat(SAMPLE_MAX - 1));
        assert!(!error.split_hint);
        assert!(!error.message().contains("docker"));
    }

    #[test]
    fn keep_raw_adds_parse_error_and_runs_the_filters_the_others_leave_it_to_the_caller() {
        let t = transform(
            "[parse]\nformat = \"json\"\n[[filter]]\ntype = \"add_field\"\nkey = \"team\"\nvalue = \"a\"\n",
        );
        assert_eq!(t.on_error(), OnError::KeepRaw);
        let r = rec(json!({"log": "not json", "_parse_error": "old", "n": 1}));
        let (error, back) = failed(&t, &r);
        assert_eq!(error.reason, ParseErrorReason::InvalidJson);
        assert_eq!(error.sample, "not json");
        assert_eq!(
            decode(&back.expect("keep_raw sends the record")),
            json!({"log": "not json", "_parse_error": error.message(), "n": 1, "team": "a"})
        );
        let keep = transform(
            "[parse]\nformat = \"json\"\n[[filter]]\ntype = \"keep\"\nfield = \"n\"\nvalues = [\"2\"]\n",
        );
        assert_eq!(keep.apply(&r), Applied::Filtered);
        for (name, on_error) in [
            ("dead_letter", OnError::DeadLetter),
            ("drop", OnError::Drop),
        ] {
            let t = transform(&format!("{JSON}on_error = \"{name}\"\n"));
            assert_eq!(t.on_error(), on_error);
            let (error, back) = failed(&t, &r);
            assert_eq!((error.reason, back), (ParseErrorReason::InvalidJson, None));
        }
    }

    #[test]
    fn keep_original_false_removes_the_source_field() {
        let t = transform(&format!("{LOGFMT}keep_original = false\n"));
        let v = changed(&t, &rec(json!({"log": "a=1 b", "stream": "stderr"})));
        assert_eq!(v, json!({"stream": "stderr", "a": "1", "b": true}));
        let t =
            transform("[parse]\nformat = \"json\"\nfield = \"message\"\nkeep_original = false\n");
        let v = changed(&t, &rec(json!({"message": "{\"a\":1}", "log": "x"})));
        assert_eq!(v, json!({"log": "x", "a": 1}));
    }

    #[test]
    fn a_parsed_key_replaces_the_records_own_but_not_a_kept_source() {
        let r = rec(json!({"level": "x", "log": "{\"level\":\"info\",\"log\":\"inner\",\"n\":1}"}));
        let v = changed(&transform(JSON), &r);
        assert_eq!(
            v,
            json!({"log": "{\"level\":\"info\",\"log\":\"inner\",\"n\":1}", "level": "info", "n": 1})
        );
        let v = changed(&transform(&format!("{JSON}keep_original = false\n")), &r);
        assert_eq!(v, json!({"level": "info", "log": "inner", "n": 1}));
        let v = changed(
            &transform(LOGFMT),
            &rec(json!({"a": "old", "log": "a=new log=x"})),
        );
        assert_eq!(v, json!({"a": "new", "log": "a=new log=x"}));
        let t = transform(
            "[parse]\nformat = \"regex\"\npattern = '(?P<log>\\w+) (?P<b>\\w+)'\nkeep_original = true\n",
        );
        let v = changed(&t, &rec(json!({"log": "one two", "b": 0})));
        assert_eq!(v, json!({"log": "one two", "b": "two"}));
    }

    #[test]
    fn filters_alone() {
        let r = rec(
            json!({"level": "info", "status": 200, "ok": true, "neg": -3, "f": 1.5,
            "kubernetes": {"pod": "p"}, "log": "x"}),
        );
        let drop = transform(
            "[[filter]]\ntype = \"drop_fields\"\nfields = [\"kubernetes\", \"absent\", \"ok\"]\n",
        );
        assert!(!drop.is_identity());
        assert_eq!(
            changed(&drop, &r),
            json!({"level": "info", "status": 200, "neg": -3, "f": 1.5, "log": "x"})
        );
        let absent = transform("[[filter]]\ntype = \"drop_fields\"\nfields = [\"absent\"]\n");
        assert_eq!(absent.apply(&r), Applied::Unchanged);
        let keep = |field: &str, values: &str| {
            transform(&format!(
                "[[filter]]\ntype = \"keep\"\nfield = \"{field}\"\nvalues = {values}\n"
            ))
            .apply(&r)
        };
        assert_eq!(keep("level", r#"["warn", "info"]"#), Applied::Unchanged);
        assert_eq!(keep("level", r#"["warn"]"#), Applied::Filtered);
        assert_eq!(keep("status", r#"["200"]"#), Applied::Unchanged);
        assert_eq!(keep("ok", r#"["true"]"#), Applied::Unchanged);
        assert_eq!(keep("neg", r#"["-3"]"#), Applied::Unchanged);
        assert_eq!(keep("f", r#"["1.5"]"#), Applied::Unchanged);
        assert_eq!(keep("kubernetes", r#"["{}"]"#), Applied::Filtered);
        assert_eq!(keep("absent", r#"[""]"#), Applied::Filtered);
        let add = |key: &str, value: &str| {
            transform(&format!(
                "[[filter]]\ntype = \"add_field\"\nkey = \"{key}\"\nvalue = \"{value}\"\n"
            ))
            .apply(&r)
        };
        assert_eq!(add("level", "info"), Applied::Unchanged);
        let Applied::Changed(bytes) = add("level", "warn") else {
            panic!("changed")
        };
        assert_eq!(decode(&bytes)["level"], "warn");
        let Applied::Changed(bytes) = add("team", "shop") else {
            panic!("changed")
        };
        let v = decode(&bytes);
        assert_eq!(
            (v["team"].as_str(), v["status"].as_u64()),
            (Some("shop"), Some(200))
        );
    }

    #[test]
    fn filters_after_a_parse_see_the_parsed_fields_in_order() {
        let t = transform(&format!(
            "{LOGFMT}keep_original = false\n{}{}{}",
            "[[filter]]\ntype = \"keep\"\nfield = \"level\"\nvalues = [\"warn\", \"error\"]\n",
            "[[filter]]\ntype = \"drop_fields\"\nfields = [\"dur\"]\n",
            "[[filter]]\ntype = \"add_field\"\nkey = \"dur\"\nvalue = \"gone\"\n",
        ));
        assert_eq!(
            t.apply(&rec(json!({"log": "level=info dur=1ms"}))),
            Applied::Filtered
        );
        let v = changed(&t, &rec(json!({"log": "level=warn dur=1ms msg=hi"})));
        assert_eq!(v, json!({"level": "warn", "msg": "hi", "dur": "gone"}));
    }

    #[test]
    fn str_and_bin_source_fields() {
        let t = transform(&format!("{LOGFMT}keep_original = false\n"));
        for bin in [false, true] {
            let mut r = Vec::new();
            msgpack::write_map_len(&mut r, 2);
            msgpack::write_str(&mut r, "n");
            msgpack::write_uint(&mut r, 7);
            if bin {
                msgpack::write_bin(&mut r, b"log");
                msgpack::write_bin(&mut r, b"a=1 b=\xff");
            } else {
                msgpack::write_str(&mut r, "log");
                msgpack::write_str(&mut r, "a=1 b=\u{e9}");
            }
            let b = if bin { "\u{fffd}" } else { "\u{e9}" };
            assert_eq!(
                changed(&t, &r),
                json!({"n": 7, "a": "1", "b": b}),
                "bin: {bin}"
            );
        }
    }

    #[test]
    fn identity_and_unchanged_records_pass_as_they_are() {
        let none = transform("[parse]\nformat = \"none\"\n");
        assert!(none.is_identity());
        assert!(Transform::compile(None, &[])
            .expect("compiles")
            .is_identity());
        assert!(!transform(JSON).is_identity());
        let t = transform("[parse]\nformat = \"none\"\n[[filter]]\ntype = \"keep\"\nfield = \"a\"\nvalues = [\"1\"]\n");
        assert!(!t.is_identity());
        assert_eq!(t.apply(&rec(json!({"a": "1"}))), Applied::Unchanged);
        // A parse that adds nothing and keeps the source still passes the record on, rewritten.
        let t = transform("[parse]\nformat = \"regex\"\npattern = '(?P<x>a)?'\n");
        assert_eq!(changed(&t, &rec(json!({"log": "b"}))), json!({"log": "b"}));
    }

    #[test]
    fn compile_reports_every_problem_with_its_key_path() {
        let problems = compile(
            "[parse]\nformat = \"json\"\npattern = \"x\"\n\
             [[filter]]\ntype = \"keep\"\nfield = \"a\"\nvalues = [\"1\"]\n\
             [[filter]]\ntype = \"drop_fields\"\nfields = []\n\
             [[filter]]\ntype = \"add_field\"\nkey = \"\"\nvalue = \"v\"\n",
        )
        .expect_err("three problems");
        let keys: Vec<&str> = problems.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["parse.pattern", "filter[1].fields", "filter[2].key"]);
        assert_eq!(problems[0].1, "is only for format = \"regex\"");
        let cases = [
            (
                "[parse]\nformat = \"regex\"\n",
                "parse.pattern",
                "is required",
            ),
            (
                "[parse]\nformat = \"regex\"\npattern = \"(\"\n",
                "parse.pattern",
                "not a valid regex",
            ),
            (
                "[parse]\nformat = \"regex\"\npattern = \"(a)\"\n",
                "parse.pattern",
                "no named group",
            ),
            (
                "[parse]\nformat = \"json\"\nfield = \"\"\n",
                "parse.field",
                "must not be empty",
            ),
            (
                "[[filter]]\ntype = \"keep\"\nfield = \"\"\nvalues = [\"a\"]\n",
                "filter[0].field",
                "empty",
            ),
            (
                "[[filter]]\ntype = \"keep\"\nfield = \"a\"\nvalues = []\n",
                "filter[0].values",
                "every record",
            ),
            (
                "[[filter]]\ntype = \"drop_fields\"\nfields = [\"\"]\n",
                "filter[0].fields",
                "empty field name",
            ),
        ];
        for (config, key, message) in cases {
            let problems = compile(config).expect_err(config);
            assert_eq!(problems.len(), 1, "{config}");
            assert_eq!(problems[0].0, key);
            assert!(problems[0].1.contains(message), "{}", problems[0].1);
        }
    }

    #[test]
    fn unknown_keys_and_types_are_errors() {
        for text in [
            "[[filter]]\ntype = \"keep\"\nfield = \"a\"\nvalues = [\"1\"]\nvalue = \"typo\"\n",
            "[[filter]]\ntype = \"add_field\"\nkey = \"a\"\nvalue = \"b\"\nfields = []\n",
            "[[filter]]\ntype = \"rename\"\nfrom = \"a\"\n",
            "[[filter]]\nfields = [\"a\"]\n",
            "[parse]\nformat = \"json\"\nfeild = \"x\"\n",
            "[parse]\nformat = \"xml\"\n",
            "[parse]\nformat = \"json\"\non_error = \"retry\"\n",
        ] {
            assert!(file(text).is_err(), "{text}");
        }
        let f = file("[parse]\nformat = \"logfmt\"\n").expect("defaults");
        assert_eq!(
            f.parse,
            Some(ParseConfig {
                field: "log".to_owned(),
                format: ParseFormat::Logfmt,
                pattern: None,
                on_error: OnError::KeepRaw,
                keep_original: true,
            })
        );
    }
}
