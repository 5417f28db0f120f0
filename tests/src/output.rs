//! The file output as the tests read it: every `*.jsonl` line under the output directory, one
//! JSON object per record (`{"tag", "time", "record"}`).
//!
//! Test records carry `run_id` (unique per test, [`unique_id`]) and `seq` (`0..n`);
//! [`wait_for_records`] polls until every seq of a run is there and reports duplicates.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Every complete JSON line of every `*.jsonl` under `dir` (recursively), sorted by file.
/// A last line without its newline is still being written and is left out; any other line that
/// is not JSON panics (a torn line in the output is a bug).
pub fn read_output(dir: &Path) -> Vec<Value> {
    let mut files = Vec::new();
    collect_jsonl(dir, &mut files);
    files.sort();
    let mut out = Vec::new();
    for f in files {
        let Ok(text) = std::fs::read(&f) else {
            continue;
        };
        let complete = match text.iter().rposition(|&b| b == b'\n') {
            Some(i) => &text[..=i],
            None => &[][..],
        };
        for (n, line) in complete.split(|&b| b == b'\n').enumerate() {
            if line.is_empty() {
                continue;
            }
            match serde_json::from_slice::<Value>(line) {
                Ok(v) => out.push(v),
                Err(e) => panic!(
                    "{}:{}: not JSON ({e}): {}",
                    f.display(),
                    n + 1,
                    String::from_utf8_lossy(line)
                ),
            }
        }
    }
    out
}

fn collect_jsonl(dir: &Path, files: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            collect_jsonl(&p, files);
        } else if p.extension().is_some_and(|x| x == "jsonl") {
            files.push(p);
        }
    }
}

/// The `*.jsonl` file names under `dir`.
pub fn output_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    collect_jsonl(dir, &mut files);
    files.sort();
    files
}

/// Polls the output until at least `n` lines satisfy `pred`; returns them. Panics after `timeout`.
pub fn wait_for_lines(
    dir: &Path,
    n: usize,
    timeout: Duration,
    pred: impl Fn(&Value) -> bool,
) -> Vec<Value> {
    let deadline = Instant::now() + timeout;
    loop {
        let lines: Vec<Value> = read_output(dir).into_iter().filter(|v| pred(v)).collect();
        if lines.len() >= n {
            return lines;
        }
        if Instant::now() >= deadline {
            panic!(
                "only {} of {n} expected lines appeared under {} within {timeout:?}; files: {:?}",
                lines.len(),
                dir.display(),
                output_files(dir)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// What the output holds of one run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeqCount {
    /// Lines of the run.
    pub received: u64,
    /// Distinct seqs.
    pub unique: u64,
    /// Seqs in `0..n` not seen.
    pub missing: u64,
}

/// Polls the output until records with every seq in `0..n` of `run_id` are there. Panics after
/// `timeout` with what is missing.
pub fn wait_for_records(dir: &Path, run_id: &str, n: u64, timeout: Duration) -> SeqCount {
    let deadline = Instant::now() + timeout;
    loop {
        let mut seen = BTreeSet::new();
        let mut received = 0u64;
        for v in read_output(dir) {
            let rec = &v["record"];
            if rec["run_id"].as_str() != Some(run_id) {
                continue;
            }
            received += 1;
            if let Some(s) = rec["seq"].as_u64() {
                seen.insert(s);
            }
        }
        let missing = (0..n).filter(|s| !seen.contains(s)).count() as u64;
        let count = SeqCount {
            received,
            unique: seen.len() as u64,
            missing,
        };
        if missing == 0 {
            return count;
        }
        if Instant::now() >= deadline {
            let first: Vec<u64> = (0..n).filter(|s| !seen.contains(s)).take(10).collect();
            panic!(
                "run {run_id}: {count:?} after {timeout:?}; first missing seqs {first:?}; files: {:?}",
                output_files(dir)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Unix nanoseconds of an RFC 3339 time (`2021-01-01T00:00:00.123456789Z`).
pub fn unix_nanos(rfc3339: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(rfc3339)
        .unwrap_or_else(|e| panic!("time {rfc3339:?}: {e}"))
        .timestamp_nanos_opt()
        .expect("time in range")
}

/// A unique-enough id for one test's records.
pub fn unique_id(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{prefix}-{}-{:x}", std::process::id(), nanos & 0xffff_ffff)
}

/// Checks that every expected record (`{"tag", "time_ns", "record"}`, as printed by the fixture
/// clients; `time_ns` a number or a string, or null with `after_ns` for "sent at about now")
/// appears exactly once in `lines` (the file output) with that tag, that time to the nanosecond
/// and an identical record. Panics listing every difference.
pub fn assert_expected_records(expected: &[Value], lines: &[Value]) {
    let mut problems = Vec::new();
    for e in expected {
        let matches: Vec<&Value> = lines
            .iter()
            .filter(|l| l["record"] == e["record"] && l["tag"] == e["tag"])
            .collect();
        if matches.len() != 1 {
            let similar: Vec<&Value> = lines
                .iter()
                .filter(|l| {
                    l["record"]["i"] == e["record"]["i"]
                        && l["record"]["mode"] == e["record"]["mode"]
                })
                .collect();
            problems.push(format!(
                "expected once, found {} times: {e}\n  lines with the same i/mode: {similar:?}",
                matches.len()
            ));
            continue;
        }
        let line = matches[0];
        let Some(time) = line["time"].as_str() else {
            problems.push(format!("no time string in {line}"));
            continue;
        };
        let got = unix_nanos(time);
        let want = match &e["time_ns"] {
            Value::Number(n) => n.as_i64(),
            Value::String(s) => s.parse().ok(),
            _ => None,
        };
        match want {
            Some(want) if got != want => problems.push(format!(
                "time of {}: got {time} ({got} ns), sent {want} ns",
                e["record"]
            )),
            Some(_) => {}
            None => {
                let after = e["after_ns"].as_i64().unwrap_or(0);
                let now = unix_nanos(&chrono::Utc::now().to_rfc3339());
                if got < after - 1_000_000_000 || got > now {
                    problems.push(format!(
                        "time of {}: got {time}, expected between {after} ns and now",
                        e["record"]
                    ));
                }
            }
        }
    }
    assert!(
        problems.is_empty(),
        "{} of {} records differ:\n{}",
        problems.len(),
        expected.len(),
        problems.join("\n")
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_output_skipping_the_unfinished_line() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("sub")).unwrap();
        std::fs::write(
            d.path().join("a.2021010100.jsonl"),
            "{\"a\":1}\n{\"a\":2}\n{\"a\"",
        )
        .unwrap();
        std::fs::write(d.path().join("sub/b.2021010100.jsonl"), "{\"b\":1}\n").unwrap();
        std::fs::write(d.path().join("c.txt"), "{\"c\":1}\n").unwrap();
        let lines = read_output(d.path());
        assert_eq!(lines.len(), 3);
    }

    #[test]
    fn rfc3339_nanos() {
        assert_eq!(
            unix_nanos("2021-01-01T00:00:00.123456789Z"),
            1_609_459_200_123_456_789
        );
    }
}
