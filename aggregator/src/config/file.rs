//! `type = "file"`: JSON lines in local files (see `outputs::file`).
//!
//! Invariant checked here: no two file outputs write to one directory (they would append to
//! the same files, each delivering and retrying the other's tags). Paths are compared
//! lexically, without IO.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use logferry_common::config::duration;
use serde::Deserialize;

use super::output::{output_defaults, DeadLetterConfig, OutputConfig, RetryConfig};
use super::ConfigError;

/// `type = "file"`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileOutputConfig {
    /// Directory that receives `<tag>.<YYYYMMDDHH>.jsonl` files.
    pub path: PathBuf,
    /// Retry behaviour.
    #[serde(default)]
    pub retry: RetryConfig,
    /// Dead letters.
    #[serde(default)]
    pub dead_letter: DeadLetterConfig,
    /// Chunks delivered at once. Two by default: one chunk is encoded while the previous one
    /// is written and fsync'd (writes are serialised; with more than one, chunks may reach
    /// the files in the order their encoding finished, lines of one chunk stay in order).
    #[serde(default = "output_defaults::two")]
    pub concurrency: usize,
    /// Failing this long turns `/readyz` 503 (`"0s"`: never).
    #[serde(default = "output_defaults::unready_after", with = "duration")]
    pub unready_after: Duration,
}

impl FileOutputConfig {
    /// Checks the type's own keys; `err` takes a key relative to the output.
    pub(super) fn validate_into(&self, err: &mut impl FnMut(&str, String)) {
        if self.path.as_os_str().is_empty() {
            err("path", "must not be empty".into());
        }
    }
}

/// Reports every file output whose directory another file output already writes to.
pub(super) fn distinct_dirs_into(
    outputs: &BTreeMap<String, OutputConfig>,
    errors: &mut Vec<ConfigError>,
) {
    let mut file_dirs: BTreeMap<PathBuf, &str> = BTreeMap::new();
    for (name, output) in outputs {
        let OutputConfig::File(f) = output else {
            continue;
        };
        if f.path.as_os_str().is_empty() {
            continue;
        }
        let dir = normalize_dir(&f.path);
        match file_dirs.get(&dir) {
            Some(first) => errors.push(ConfigError::new(
                format!("outputs.{name}.path"),
                format!(
                    "file outputs {first:?} and {name:?} both write to {}; give each its own directory",
                    dir.display()
                ),
            )),
            None => {
                file_dirs.insert(dir, name);
            }
        }
    }
}

/// A directory path without `.` components, repeated or trailing separators (lexically only:
/// `..` and symlinks are kept, as resolving them needs IO).
fn normalize_dir(path: &Path) -> PathBuf {
    let dir: PathBuf = path
        .components()
        .filter(|c| !matches!(c, std::path::Component::CurDir))
        .collect();
    if dir.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        dir
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::no_env;
    use super::super::Config;

    #[test]
    fn file_outputs_may_not_share_a_path() {
        let text = r#"
            [[route]]
            match = "**"
            outputs = ["a", "b", "c", "d"]
            [outputs.a]
            type = "file"
            path = "/data/out"
            [outputs.b]
            type = "file"
            path = "/data//./out/"
            [outputs.c]
            type = "file"
            path = "/data/out2"
            [outputs.d]
            type = "file"
            path = "./rel"
        "#;
        let config = Config::parse_with_env(text, no_env).unwrap();
        let errors = config.validate().unwrap_err().0;
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].key, "outputs.b.path");
        let message = &errors[0].message;
        assert!(
            message.contains("\"a\"") && message.contains("\"b\""),
            "{message}"
        );
        let fine = text
            .replace("./rel", "rel")
            .replace("/data//./out/", "/data/out3");
        Config::parse_with_env(&fine, no_env)
            .unwrap()
            .validate()
            .unwrap();
        let clash = text
            .replace("/data//./out/", "/data/out3")
            .replace("/data/out2", "rel");
        let errors = Config::parse_with_env(&clash, no_env)
            .unwrap()
            .validate()
            .unwrap_err()
            .0;
        assert_eq!(errors[0].key, "outputs.d.path", "{errors:?}");
    }
}
