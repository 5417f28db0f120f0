//! `verify`: counts received, missing and duplicated `seq` numbers of one run in the aggregator's
//! file output (`*.jsonl`, one `{"time","tag","record"}` object per line).

use std::borrow::Cow;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::Args;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Args)]
pub struct VerifyArgs {
    /// The run id whose records are checked (other records are ignored).
    #[arg(long)]
    pub run_id: String,
    /// Files, or directories searched recursively for `*.jsonl`.
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
    /// Records the run sent (default: the highest seq seen + 1).
    #[arg(long)]
    pub expect: Option<u64>,
    /// Print the report as one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
}

/// Seqs above this are counted but not tracked (a bitmap that large would not fit in memory).
const MAX_TRACKED_SEQ: u64 = 1 << 33;
/// How many missing ranges a report lists.
const MAX_RANGES: usize = 10;

/// Growable bitmap of seen seqs.
#[derive(Debug, Default, Clone)]
struct BitSet {
    words: Vec<u64>,
}

impl BitSet {
    /// Sets bit `i`; returns whether it was already set.
    fn insert(&mut self, i: u64) -> bool {
        let w = (i / 64) as usize;
        if w >= self.words.len() {
            self.words.resize((w + 1).max(self.words.len() * 2), 0);
        }
        let mask = 1u64 << (i % 64);
        let was = self.words[w] & mask != 0;
        self.words[w] |= mask;
        was
    }

    /// Set bits in `first..=last`.
    fn count_range(&self, first: u64, last: u64) -> u64 {
        let mut c = 0u64;
        let mut i = first;
        while i <= last {
            let w = (i / 64) as usize;
            let Some(word) = self.words.get(w) else {
                break;
            };
            let lo = i % 64;
            let hi = if last / 64 == i / 64 { last % 64 } else { 63 };
            let width = hi - lo + 1;
            let mask = if width == 64 {
                u64::MAX
            } else {
                ((1u64 << width) - 1) << lo
            };
            c += u64::from((word & mask).count_ones());
            i = (i / 64 + 1) * 64;
        }
        c
    }

    fn contains(&self, i: u64) -> bool {
        self.words
            .get((i / 64) as usize)
            .is_some_and(|w| w & (1u64 << (i % 64)) != 0)
    }
}

/// Running counts over all lines read so far.
#[derive(Debug, Default, Clone)]
pub struct Tally {
    seen: BitSet,
    duplicated: BitSet,
    /// Lines of this run (duplicates included).
    pub received: u64,
    /// Distinct seqs of this run.
    pub unique: u64,
    /// Distinct seqs received more than once.
    pub duplicated_seqs: u64,
    /// Lines of this run without a usable `seq`.
    pub without_seq: u64,
    /// Seqs too large to track.
    pub untracked: u64,
    pub max_seq: Option<u64>,
    /// Lines that are not JSON (torn or partial writes).
    pub malformed: u64,
    /// Lines that are JSON but not of this run.
    pub other: u64,
    pub files: u64,
}

#[derive(Deserialize)]
struct Line<'a> {
    #[serde(borrow)]
    record: Record<'a>,
}

#[derive(Deserialize)]
struct Record<'a> {
    #[serde(borrow, default)]
    run_id: Option<Cow<'a, str>>,
    #[serde(default)]
    seq: Option<u64>,
}

impl Tally {
    /// Counts one line of output.
    pub fn line(&mut self, run_id: &str, line: &[u8]) {
        let line = line.trim_ascii();
        if line.is_empty() {
            return;
        }
        let rec = match serde_json::from_slice::<Line<'_>>(line) {
            Ok(l) => l.record,
            Err(_) => {
                // Valid JSON of another shape is someone else's record; anything else is torn.
                match serde_json::from_slice::<serde_json::Value>(line) {
                    Ok(v) => {
                        let ours = v
                            .pointer("/record/run_id")
                            .and_then(|r| r.as_str())
                            .is_some_and(|r| r == run_id);
                        if ours {
                            self.received += 1;
                            self.without_seq += 1;
                        } else {
                            self.other += 1;
                        }
                    }
                    Err(_) => self.malformed += 1,
                }
                return;
            }
        };
        if rec.run_id.as_deref() != Some(run_id) {
            self.other += 1;
            return;
        }
        self.received += 1;
        let Some(seq) = rec.seq else {
            self.without_seq += 1;
            return;
        };
        self.max_seq = Some(self.max_seq.map_or(seq, |m| m.max(seq)));
        if seq >= MAX_TRACKED_SEQ {
            self.untracked += 1;
            return;
        }
        if self.seen.insert(seq) {
            if !self.duplicated.insert(seq) {
                self.duplicated_seqs += 1;
            }
        } else {
            self.unique += 1;
        }
    }

    /// Counts every line of a reader.
    pub fn read(&mut self, run_id: &str, mut r: impl BufRead) -> std::io::Result<()> {
        let mut buf = Vec::with_capacity(1024);
        loop {
            buf.clear();
            if r.read_until(b'\n', &mut buf)? == 0 {
                return Ok(());
            }
            self.line(run_id, &buf);
        }
    }

    /// Counts a file, or every `*.jsonl` under a directory.
    pub fn path(&mut self, run_id: &str, path: &Path) -> anyhow::Result<()> {
        let meta = std::fs::metadata(path).with_context(|| format!("{}", path.display()))?;
        if meta.is_dir() {
            let mut entries: Vec<_> = std::fs::read_dir(path)
                .with_context(|| format!("listing {}", path.display()))?
                .collect::<Result<_, _>>()
                .with_context(|| format!("listing {}", path.display()))?;
            entries.sort_by_key(|e| e.path());
            for e in entries {
                let p = e.path();
                if e.file_type()?.is_dir() {
                    self.path(run_id, &p)?;
                } else if p.extension().is_some_and(|x| x == "jsonl") {
                    self.file(run_id, &p)?;
                }
            }
            Ok(())
        } else {
            self.file(run_id, path)
        }
    }

    fn file(&mut self, run_id: &str, path: &Path) -> anyhow::Result<()> {
        let f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
        self.files += 1;
        self.read(run_id, BufReader::with_capacity(1 << 20, f))
            .with_context(|| format!("reading {}", path.display()))
    }

    /// The verdict, with `expect` records sent (default: highest seq + 1).
    pub fn report(&self, run_id: &str, expect: Option<u64>) -> Report {
        let expected = expect.unwrap_or_else(|| self.max_seq.map_or(0, |m| m + 1));
        let tracked_end = expected.min(MAX_TRACKED_SEQ);
        let mut missing = 0u64;
        let mut ranges = Vec::new();
        let mut i = 0u64;
        while i < tracked_end {
            // Skip whole words that are complete.
            let w = (i / 64) as usize;
            if i.is_multiple_of(64)
                && i + 64 <= tracked_end
                && self.seen.words.get(w) == Some(&u64::MAX)
            {
                i += 64;
                continue;
            }
            if self.seen.contains(i) {
                i += 1;
                continue;
            }
            let start = i;
            while i < tracked_end && !self.seen.contains(i) {
                i += 1;
            }
            missing += i - start;
            if ranges.len() < MAX_RANGES {
                ranges.push([start, i - 1]);
            }
        }
        missing += expected - tracked_end;
        let beyond_expected = match (expect, self.max_seq) {
            (Some(n), Some(m)) if m >= n && n < MAX_TRACKED_SEQ => {
                self.seen.count_range(n, m.min(MAX_TRACKED_SEQ - 1))
            }
            _ => 0,
        };
        Report {
            ok: missing == 0 && self.received > 0,
            run_id: run_id.to_string(),
            expected,
            received: self.received,
            unique: self.unique,
            duplicates: self.received - self.unique - self.without_seq - self.untracked,
            duplicated_seqs: self.duplicated_seqs,
            missing,
            missing_ranges: ranges,
            beyond_expected,
            without_seq: self.without_seq,
            malformed_lines: self.malformed,
            other_lines: self.other,
            files: self.files,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    /// Nothing missing (and at least one record of the run found).
    pub ok: bool,
    pub run_id: String,
    pub expected: u64,
    pub received: u64,
    pub unique: u64,
    /// Received lines beyond the first for each seq.
    pub duplicates: u64,
    pub duplicated_seqs: u64,
    pub missing: u64,
    /// The first missing ranges, inclusive `[first, last]`.
    pub missing_ranges: Vec<[u64; 2]>,
    /// Distinct seqs >= `expected` (only with `--expect`).
    pub beyond_expected: u64,
    pub without_seq: u64,
    /// Lines that are not JSON (torn writes).
    pub malformed_lines: u64,
    pub other_lines: u64,
    pub files: u64,
}

impl Report {
    pub fn text(&self) -> String {
        let mut s = format!(
            "run {}: expected {}, received {} ({} unique), duplicates {} ({} seqs), missing {}, files {}",
            self.run_id,
            self.expected,
            self.received,
            self.unique,
            self.duplicates,
            self.duplicated_seqs,
            self.missing,
            self.files
        );
        if !self.missing_ranges.is_empty() {
            let ranges: Vec<String> = self
                .missing_ranges
                .iter()
                .map(|[a, b]| {
                    if a == b {
                        a.to_string()
                    } else {
                        format!("{a}-{b}")
                    }
                })
                .collect();
            s += &format!("\nfirst missing ranges: {}", ranges.join(", "));
        }
        if self.beyond_expected > 0 {
            s += &format!("\nseqs beyond expected: {}", self.beyond_expected);
        }
        if self.without_seq > 0 {
            s += &format!("\nrecords without a seq: {}", self.without_seq);
        }
        if self.malformed_lines > 0 {
            s += &format!("\nWARNING: {} lines are not JSON", self.malformed_lines);
        }
        if self.received == 0 {
            s += "\nno record of this run was found";
        }
        s += if self.ok { "\nOK" } else { "\nFAILED" };
        s
    }
}

pub fn run(args: &VerifyArgs) -> anyhow::Result<Report> {
    let mut t = Tally::default();
    for p in &args.paths {
        t.path(&args.run_id, p)?;
    }
    Ok(t.report(&args.run_id, args.expect))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(run: &str, seq: u64) -> String {
        format!(
            r#"{{"time":"2021-01-01T00:00:00.123456789Z","tag":"loadtest.{run}","record":{{"log":"x","stream":"stdout","seq":{seq},"run_id":"{run}","kubernetes":{{"pod_name":"p"}}}}}}"#
        )
    }

    fn tally(lines: &[String]) -> Tally {
        let mut t = Tally::default();
        t.read("r1", lines.join("\n").as_bytes()).unwrap();
        t
    }

    #[test]
    fn complete_run() {
        let lines: Vec<_> = (0..100).map(|s| line("r1", s)).collect();
        let r = tally(&lines).report("r1", Some(100));
        assert!(r.ok);
        assert_eq!(
            (r.received, r.unique, r.missing, r.duplicates),
            (100, 100, 0, 0)
        );
        assert!(r.missing_ranges.is_empty());
    }

    #[test]
    fn gaps_and_duplicates() {
        let mut lines: Vec<_> = (0..200)
            .filter(|s| !(10..20).contains(s) && *s != 150)
            .map(|s| line("r1", s))
            .collect();
        lines.push(line("r1", 5));
        lines.push(line("r1", 5));
        lines.push(line("r1", 6));
        lines.push(line("other", 10));
        lines.push("{\"time\":\"2021-01-01T00:00".to_string()); // torn
        lines.push(String::new());
        let t = tally(&lines);
        let r = t.report("r1", Some(205));
        assert!(!r.ok);
        assert_eq!(r.received, 189 + 3);
        assert_eq!(r.unique, 189);
        assert_eq!(r.duplicates, 3);
        assert_eq!(r.duplicated_seqs, 2);
        assert_eq!(r.missing, 10 + 1 + 5);
        assert_eq!(r.missing_ranges, vec![[10, 19], [150, 150], [200, 204]]);
        assert_eq!(r.other_lines, 1);
        assert_eq!(r.malformed_lines, 1);
        // Without --expect the highest seq decides.
        let r = t.report("r1", None);
        assert_eq!(r.expected, 200);
        assert_eq!(r.missing, 11);
        assert!(r.text().contains("10-19, 150"));
    }

    #[test]
    fn beyond_expected_and_empty() {
        let lines: Vec<_> = (0..12).map(|s| line("r1", s)).collect();
        let r = tally(&lines).report("r1", Some(10));
        assert!(r.ok);
        assert_eq!(r.beyond_expected, 2);
        let r = tally(&[]).report("r1", None);
        assert!(!r.ok, "no record at all is a failure");
        assert_eq!(r.expected, 0);
    }

    #[test]
    fn many_missing_ranges_are_capped() {
        let lines: Vec<_> = (0..1000).step_by(2).map(|s| line("r1", s)).collect();
        let r = tally(&lines).report("r1", Some(1000));
        assert_eq!(r.missing, 500);
        assert_eq!(r.missing_ranges.len(), MAX_RANGES);
        assert_eq!(r.missing_ranges[0], [1, 1]);
    }

    #[test]
    fn walks_directories() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("a/b");
        std::fs::create_dir_all(&sub).unwrap();
        let first: Vec<_> = (0..50).map(|s| line("r1", s)).collect();
        let second: Vec<_> = (50..100).map(|s| line("r1", s)).collect();
        std::fs::write(
            dir.path().join("x.2021010100.jsonl"),
            first.join("\n") + "\n",
        )
        .unwrap();
        std::fs::write(sub.join("y.2021010101.jsonl"), second.join("\n")).unwrap();
        std::fs::write(sub.join("ignored.txt"), line("r1", 100)).unwrap();
        let args = VerifyArgs {
            run_id: "r1".into(),
            paths: vec![dir.path().to_path_buf()],
            expect: None,
            json: false,
        };
        let r = run(&args).unwrap();
        assert!(r.ok, "{}", r.text());
        assert_eq!((r.files, r.received, r.expected), (2, 100, 100));
    }
}
