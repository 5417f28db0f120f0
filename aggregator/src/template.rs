//! Name templates: Elasticsearch index names and Kafka topics computed per record.
//!
//! ```text
//! logs-%Y.%m.%d                      strftime on the record's time (UTC), Elasticsearch only
//! logs.${kubernetes.namespace_name}  a record field (`${record.a.b}` is the same as `${a.b}`)
//! app-${tag}                         the record's tag
//! ```
//! Substituted values pass through the sink's sanitiser (Elasticsearch index names are
//! lowercase without `\ / * ? " < > | , # :` or spaces; Kafka topics keep `[A-Za-z0-9._-]`),
//! so a record can never produce a name the sink refuses, and a missing field is reported to
//! the caller, which applies its configured fallback. Templates are parsed once, at start;
//! rendering a constant template costs one clone.

use chrono::format::{Item, StrftimeItems};
use logferry_common::forward::EventTime;

use crate::record::scalar;

/// A parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    /// Literal text (may contain strftime specifiers when `Time`).
    Lit(String),
    /// Literal text with strftime specifiers.
    Time(String),
    /// The tag.
    Tag,
    /// A record field path.
    Field(Vec<String>),
}

/// Why a template does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// `${` without `}`.
    #[error("unclosed \"${{\" in {0:?}")]
    Unclosed(String),
    /// `${}` or an empty path step.
    #[error("empty reference in {0:?}: write ${{tag}} or ${{record.field}}")]
    EmptyReference(String),
    /// A strftime specifier chrono does not know.
    #[error("invalid strftime format in {0:?}")]
    BadStrftime(String),
}

/// A field the template needs is not in the record (or not a scalar).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("record has no field {0}")]
pub struct MissingField(pub String);

impl Template {
    /// Parses `text`; `strftime` enables `%` specifiers on the record time.
    pub fn parse(text: &str, strftime: bool) -> Result<Template, TemplateError> {
        let mut parts = Vec::new();
        let mut rest = text;
        let lit = |s: &str, parts: &mut Vec<Part>| -> Result<(), TemplateError> {
            if s.is_empty() {
                return Ok(());
            }
            if strftime && s.contains('%') {
                if StrftimeItems::new(s).any(|i| matches!(i, Item::Error)) {
                    return Err(TemplateError::BadStrftime(text.to_owned()));
                }
                parts.push(Part::Time(s.to_owned()));
            } else {
                parts.push(Part::Lit(s.to_owned()));
            }
            Ok(())
        };
        while let Some(start) = rest.find("${") {
            lit(&rest[..start], &mut parts)?;
            let after = &rest[start + 2..];
            let end = after
                .find('}')
                .ok_or_else(|| TemplateError::Unclosed(text.to_owned()))?;
            let reference = after[..end].trim();
            if reference == "tag" {
                parts.push(Part::Tag);
            } else {
                let path = reference.strip_prefix("record.").unwrap_or(reference);
                let steps: Vec<String> = path.split('.').map(str::to_owned).collect();
                if steps.iter().any(String::is_empty) {
                    return Err(TemplateError::EmptyReference(text.to_owned()));
                }
                parts.push(Part::Field(steps));
            }
            rest = &after[end + 1..];
        }
        lit(rest, &mut parts)?;
        Ok(Template { parts })
    }

    /// Whether the template produces nothing.
    pub fn is_empty(&self) -> bool {
        self.parts.is_empty()
    }

    /// Whether the result is the same for every record.
    pub fn is_constant(&self) -> bool {
        self.parts.iter().all(|p| matches!(p, Part::Lit(_)))
    }

    /// Renders for one record; `sanitize` cleans substituted values (not the literal text).
    pub fn render(
        &self,
        tag: &str,
        time: EventTime,
        record: &[u8],
        sanitize: fn(&str) -> String,
    ) -> Result<String, MissingField> {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Lit(s) => out.push_str(s),
                Part::Time(fmt) => {
                    let t = chrono::DateTime::from_timestamp(
                        i64::from(time.secs),
                        time.nanos.min(999_999_999),
                    )
                    .unwrap_or_default();
                    use std::fmt::Write as _;
                    // Checked at parse time, so formatting cannot fail.
                    let _ = write!(out, "{}", t.format(fmt));
                }
                Part::Tag => out.push_str(&sanitize(tag)),
                Part::Field(path) => {
                    let v = scalar(record, path).ok_or_else(|| MissingField(path.join(".")))?;
                    out.push_str(&sanitize(&v.to_text()));
                }
            }
        }
        Ok(out)
    }
}

/// Makes text safe inside an Elasticsearch index name: lowercase, and `\ / * ? " < > | , # :`
/// and whitespace become `_`.
pub fn sanitize_es_index(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_whitespace()
                || matches!(
                    c,
                    '\\' | '/' | '*' | '?' | '"' | '<' | '>' | '|' | ',' | '#' | ':'
                )
            {
                '_'
            } else {
                c.to_ascii_lowercase()
            }
        })
        .collect()
}

/// Makes a whole index name valid: sanitised, without a leading `-`, `_` or `+`, not `.`/`..`,
/// at most 255 bytes.
pub fn finish_es_index(mut s: String) -> String {
    s = sanitize_es_index(&s);
    while s.starts_with(['-', '_', '+']) {
        s.remove(0);
    }
    if s.is_empty() || s == "." || s == ".." {
        s = "logferry".into();
    }
    truncate_bytes(&mut s, 255);
    s
}

/// Makes text safe in a Kafka topic: `[A-Za-z0-9._-]` kept, anything else `_`.
pub fn sanitize_kafka_topic(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Whether `s` is a valid Kafka topic name.
pub fn valid_kafka_topic(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 249
        && s != "."
        && s != ".."
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

fn truncate_bytes(s: &mut String, max: usize) {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(v: serde_json::Value) -> Vec<u8> {
        rmp_serde::to_vec_named(&v).unwrap()
    }

    #[test]
    fn renders_time_tag_and_fields() {
        let t = Template::parse("logs-${kubernetes.namespace_name}-%Y.%m.%d", true).unwrap();
        let r = rec(serde_json::json!({"kubernetes": {"namespace_name": "Kube System"}}));
        let time = EventTime::new(1_609_459_200, 5); // 2021-01-01
        assert_eq!(
            t.render("a.b", time, &r, sanitize_es_index).unwrap(),
            "logs-kube_system-2021.01.01"
        );
        let t = Template::parse("app-${tag}.${record.n}", false).unwrap();
        let r = rec(serde_json::json!({"n": 7}));
        assert_eq!(
            t.render("a/b", time, &r, sanitize_kafka_topic).unwrap(),
            "app-a_b.7"
        );
        assert_eq!(
            t.render("x", time, &rec(serde_json::json!({})), sanitize_kafka_topic),
            Err(MissingField("n".into()))
        );
        // Without strftime, % is literal.
        let t = Template::parse("a%Y", false).unwrap();
        assert!(t.is_constant());
        assert_eq!(
            t.render("x", time, &r, sanitize_kafka_topic).unwrap(),
            "a%Y"
        );
    }

    #[test]
    fn rejects_bad_templates() {
        assert!(Template::parse("logs-${oops", true).is_err());
        assert!(Template::parse("logs-${}", true).is_err());
        assert!(Template::parse("logs-${a..b}", true).is_err());
        assert!(Template::parse("logs-%Q", true).is_err());
    }

    #[test]
    fn index_names_are_valid() {
        assert_eq!(finish_es_index("_Logs-A".into()), "logs-a");
        assert_eq!(finish_es_index("".into()), "logferry");
        assert!(valid_kafka_topic("logs.a-b_c"));
        assert!(!valid_kafka_topic("logs a"));
        assert!(!valid_kafka_topic(""));
    }
}
