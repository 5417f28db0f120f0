//! Config plumbing shared by both daemons: strict TOML parsing with errors that name the key and
//! line ([`parse_toml`]), byte sizes, durations, `${ENV}` substitution and secrets that do not
//! print.
//!
//! Configs are TOML with unknown keys rejected. Sizes are written like `"8MiB"` (or a bare
//! integer count of bytes), durations like `"5s"` or `"250ms"` (humantime). Secrets come from
//! the environment: `${NAME}` in any string value is replaced by that variable, and a missing
//! variable is an error that names the key path, not an empty string.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{de, Deserialize, Deserializer, Serialize, Serializer};

pub mod sections;

/// A size in bytes, written in configs as `"8MiB"`, `"512KiB"`, `"1GB"` or a bare integer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ByteSize(pub u64);

impl ByteSize {
    /// The size in bytes.
    pub fn bytes(self) -> u64 {
        self.0
    }

    /// `n` mebibytes.
    pub const fn mib(n: u64) -> Self {
        ByteSize(n * 1024 * 1024)
    }
}

/// Why a size did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid size {input:?}: expected a number with an optional unit (B, KB, KiB, MB, MiB, GB, GiB, TB, TiB), e.g. \"8MiB\"")]
pub struct ByteSizeError {
    input: String,
}

impl FromStr for ByteSize {
    type Err = ByteSizeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ByteSizeError {
            input: s.to_owned(),
        };
        let t = s.trim();
        let split = t
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let unit = unit.trim();
        let mult: u64 = match unit.to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "k" | "kb" => 1_000,
            "ki" | "kib" => 1 << 10,
            "m" | "mb" => 1_000_000,
            "mi" | "mib" => 1 << 20,
            "g" | "gb" => 1_000_000_000,
            "gi" | "gib" => 1 << 30,
            "t" | "tb" => 1_000_000_000_000,
            "ti" | "tib" => 1 << 40,
            _ => return Err(err()),
        };
        if num.is_empty() {
            return Err(err());
        }
        if num.contains('.') {
            let v: f64 = num.parse().map_err(|_| err())?;
            let bytes = v * mult as f64;
            if !bytes.is_finite() || bytes < 0.0 || bytes > u64::MAX as f64 {
                return Err(err());
            }
            Ok(ByteSize(bytes.round() as u64))
        } else {
            let v: u64 = num.parse().map_err(|_| err())?;
            v.checked_mul(mult).map(ByteSize).ok_or_else(err)
        }
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [(u64, &str); 4] = [
            (1 << 40, "TiB"),
            (1 << 30, "GiB"),
            (1 << 20, "MiB"),
            (1 << 10, "KiB"),
        ];
        for (size, unit) in UNITS {
            if self.0 >= size && self.0.is_multiple_of(size) {
                return write!(f, "{}{unit}", self.0 / size);
            }
        }
        write!(f, "{}B", self.0)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl de::Visitor<'_> for Visitor {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a size such as \"8MiB\" or a number of bytes")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ByteSize, E> {
                u64::try_from(v)
                    .map(ByteSize)
                    .map_err(|_| E::custom("a size cannot be negative"))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ByteSize, E> {
                v.parse().map_err(E::custom)
            }
        }
        d.deserialize_any(Visitor)
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Serde adapter for durations written as `"5s"`, `"250ms"`, `"1m 30s"`.
pub mod duration {
    use super::*;

    /// Deserializes a humantime duration.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s).map_err(|e| {
            de::Error::custom(format!(
                "invalid duration {s:?}: {e} (e.g. \"5s\", \"250ms\")"
            ))
        })
    }

    /// Serializes as humantime.
    pub fn serialize<S: Serializer>(v: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_duration(*v))
    }
}

/// A `${NAME}` reference to an environment variable that is not set.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("environment variable {var} is not set (referenced as ${{{var}}})")]
pub struct MissingEnv {
    /// The variable's name.
    pub var: String,
}

/// Replaces every `${NAME}` in `input` using `lookup`; `$${` escapes a literal `${`.
pub fn substitute_env(
    input: &str,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<String, MissingEnv> {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos..];
        if let Some(stripped) = after.strip_prefix("$${") {
            out.push_str("${");
            rest = stripped;
        } else if let Some(body) = after.strip_prefix("${") {
            match body.find('}') {
                Some(end) => {
                    let var = &body[..end];
                    let value = lookup(var).ok_or_else(|| MissingEnv {
                        var: var.to_owned(),
                    })?;
                    out.push_str(&value);
                    rest = &body[end + 1..];
                }
                None => {
                    out.push_str(after);
                    rest = "";
                }
            }
        } else {
            out.push('$');
            rest = &after[1..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// One problem found in a config, with the key it concerns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Dotted key path, e.g. `output.servers[0]` (empty for the file as a whole).
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
    /// A problem with `key` (empty: the file as a whole), line unknown.
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
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

impl ConfigErrors {
    /// A single problem.
    pub fn one(key: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigErrors(vec![ConfigError::new(key, message)])
    }
}

/// Reads a config file (the error names the file).
///
/// # Errors
/// The file cannot be read.
pub fn read_file(path: &std::path::Path) -> Result<String, ConfigErrors> {
    std::fs::read_to_string(path)
        .map_err(|e| ConfigErrors::one("", format!("cannot read {}: {e}", path.display())))
}

/// Parses TOML `text` into `T` (whose structs should `deny_unknown_fields`): the syntax first,
/// then `${NAME}` in every string value through `env` (a missing variable is an error naming
/// the key; substituting after parsing means a value can never break the TOML syntax), then
/// the types. Errors carry the key path and, where it can be found, the line.
///
/// # Errors
/// Every missing variable, or the first syntax or type error.
pub fn parse_toml<T: de::DeserializeOwned>(
    text: &str,
    env: impl Fn(&str) -> Option<String>,
) -> Result<T, ConfigErrors> {
    let mut value: toml::Value = toml::from_str(text).map_err(|e| toml_error(text, &e))?;
    let mut errors = Vec::new();
    substitute_in(&mut value, String::new(), &env, &mut errors);
    if !errors.is_empty() {
        return Err(ConfigErrors(errors));
    }
    // Re-serialising the substituted tree loses line numbers but keeps key paths, which
    // serde's error message names.
    let substituted = toml::to_string(&value)
        .map_err(|e| ConfigErrors::one("", format!("cannot re-encode config: {e}")))?;
    toml::from_str::<T>(&substituted).map_err(|e| {
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

/// Parses a listen address `ip:port`; the error shows `example` as the expected shape.
///
/// # Errors
/// Anything but an IP address and a port.
pub fn parse_listen_addr(s: &str, example: &str) -> Result<std::net::SocketAddr, String> {
    s.parse::<std::net::SocketAddr>()
        .map_err(|e| format!("{s:?} is not an address like \"{example}\": {e}"))
}

/// A string that is never printed by `Debug` (shared keys, passwords): configs are logged and
/// dumped in error reports, secrets must not be.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl Secret {
    /// The secret itself.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"***\"")
    }
}

/// The machine's hostname (the pod name in Kubernetes), or `fallback`: the default identity in
/// the Forward handshake (PING and PONG carry it).
pub fn system_hostname(fallback: &str) -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok().filter(|s| !s.is_empty()))
        .unwrap_or_else(|| fallback.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_do_not_print() {
        let s: Secret = serde_json::from_str("\"hunter2\"").unwrap();
        assert_eq!(s.expose(), "hunter2");
        assert_eq!(format!("{s:?}"), "\"***\"");
    }

    #[test]
    fn sizes_parse() {
        assert_eq!("8MiB".parse::<ByteSize>().unwrap(), ByteSize(8 << 20));
        assert_eq!("8 mib".parse::<ByteSize>().unwrap(), ByteSize(8 << 20));
        assert_eq!("1GB".parse::<ByteSize>().unwrap(), ByteSize(1_000_000_000));
        assert_eq!("512".parse::<ByteSize>().unwrap(), ByteSize(512));
        assert_eq!("1.5KiB".parse::<ByteSize>().unwrap(), ByteSize(1536));
        assert!("MiB".parse::<ByteSize>().is_err());
        assert!("8 parsecs".parse::<ByteSize>().is_err());
        assert!("99999999999999TiB".parse::<ByteSize>().is_err());
        assert_eq!(ByteSize(8 << 20).to_string(), "8MiB");
        assert_eq!(ByteSize(1000).to_string(), "1000B");
    }

    #[test]
    fn env_substitution() {
        let lookup = |k: &str| (k == "KEY").then(|| "s3cret".to_owned());
        assert_eq!(substitute_env("a ${KEY} b", lookup).unwrap(), "a s3cret b");
        assert_eq!(substitute_env("$${KEY} $x", lookup).unwrap(), "${KEY} $x");
        assert_eq!(substitute_env("${NOPE}", lookup).unwrap_err().var, "NOPE");
        assert_eq!(
            substitute_env("${unterminated", lookup).unwrap(),
            "${unterminated"
        );
    }
}
