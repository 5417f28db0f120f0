//! `verify`: counts received, missing and duplicated `seq` numbers of one run, per source, in
//! what arrived at a sink:
//!
//! - files: the aggregator's file output (`*.jsonl`, one `{"time","tag","record"}` per line);
//! - `--es URL`: documents of an Elasticsearch index pattern, read with the scroll API
//!   ([`es`]);
//! - `--kafka BROKERS`: every message of a topic, JSON or msgpack ([`kafka`]).
//!
//! A record belongs to the run when its `run_id` matches, found at the top of the document, under
//! `record` (the file output's envelope), or inside a `log` string holding JSON (a pod's line that
//! the forwarder did not merge). Its source is its `pod` field (`pods` writes one per pod, each
//! with its own seq), else `-` (the single sequence of a `forward` run). What each source should
//! hold comes from `--expect N` (per source), `--expect-file` (the `expected` map of a `forward` or
//! `pods` JSON summary, so a source that lost every record is still reported), or else the
//! highest seq seen. Exit status: 0 when nothing is missing, 1 otherwise.

#[cfg(feature = "kafka")]
pub mod kafka;

pub mod es;

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::forward::parse_duration;

#[derive(Debug, Clone, Args)]
pub struct VerifyArgs {
    /// The run id whose records are checked (other records are ignored).
    #[arg(long)]
    pub run_id: String,
    /// Files, or directories searched recursively for `*.jsonl` (the file output).
    #[arg(required_unless_present_any = ["es", "kafka"], conflicts_with_all = ["es", "kafka"])]
    pub paths: Vec<PathBuf>,
    /// Read an Elasticsearch (or OpenSearch) cluster at this URL instead.
    #[arg(long, value_name = "URL", conflicts_with = "kafka")]
    pub es: Option<String>,
    /// Index pattern searched with `--es`.
    #[arg(long, default_value = "*", requires = "es")]
    pub index: String,
    /// Read a Kafka topic from these bootstrap brokers (`host:port,...`) instead.
    #[arg(long, value_name = "BROKERS", requires = "topic")]
    pub kafka: Option<String>,
    /// Topic read with `--kafka` (every partition, from the earliest offset).
    #[arg(long, requires = "kafka")]
    pub topic: Option<String>,
    /// Give up reading `--es` or `--kafka` after this long.
    #[arg(long, default_value = "120s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Records each source sent (default: the highest seq seen + 1).
    #[arg(long, conflicts_with = "expect_file")]
    pub expect: Option<u64>,
    /// A `forward --json` or `pods --json` summary: its `expected` map says what each source sent.
    #[arg(long)]
    pub expect_file: Option<PathBuf>,
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

/// The source of records that carry no `pod`.
pub const DEFAULT_SOURCE: &str = "-";
/// How many sources a text report lists.
const MAX_LISTED_SOURCES: usize = 20;

/// Counts of one source.
#[derive(Debug, Default, Clone)]
struct SourceTally {
    seen: BitSet,
    duplicated: BitSet,
    received: u64,
    unique: u64,
    duplicated_seqs: u64,
    untracked: u64,
    max_seq: Option<u64>,
}

impl SourceTally {
    fn seq(&mut self, seq: u64) {
        self.received += 1;
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

    fn report(&self, source: &str, expect: Option<u64>) -> SourceReport {
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
        SourceReport {
            source: source.to_string(),
            expected,
            received: self.received,
            unique: self.unique,
            duplicates: self.received - self.unique - self.untracked,
            duplicated_seqs: self.duplicated_seqs,
            missing,
            missing_ranges: ranges,
            beyond_expected,
        }
    }
}

/// What each source should hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Expect {
    /// The highest seq seen + 1.
    #[default]
    Seen,
    /// The same count for every source.
    PerSource(u64),
    /// A count per source; sources not named expect the highest seq seen + 1.
    Map(BTreeMap<String, u64>),
}

impl Expect {
    fn for_source(&self, source: &str) -> Option<u64> {
        match self {
            Expect::Seen => None,
            Expect::PerSource(n) => Some(*n),
            Expect::Map(m) => m.get(source).copied(),
        }
    }

    /// Reads the `expected` map of a `forward --json` or `pods --json` summary.
    pub fn from_summary(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let v: Value = serde_json::from_slice(&text)
            .with_context(|| format!("{} is not JSON", path.display()))?;
        let map = v
            .get("expected")
            .and_then(Value::as_object)
            .with_context(|| format!("{} has no \"expected\" object", path.display()))?;
        let mut out = BTreeMap::new();
        for (k, n) in map {
            let n = n
                .as_u64()
                .with_context(|| format!("{}: expected.{k} is not a count: {n}", path.display()))?;
            out.insert(k.clone(), n);
        }
        Ok(Expect::Map(out))
    }
}

/// Running counts over everything read so far.
#[derive(Debug, Default, Clone)]
pub struct Tally {
    sources: BTreeMap<String, SourceTally>,
    /// Records of this run without a usable `seq`.
    pub without_seq: u64,
    /// Lines or messages that are not JSON (torn or partial writes).
    pub malformed: u64,
    /// Documents that are not of this run.
    pub other: u64,
    pub files: u64,
    /// Lines, documents or messages read.
    pub documents: u64,
}

/// The fields `verify` looks at, wherever they are.
#[derive(Deserialize, Default)]
struct Fields<'a> {
    #[serde(borrow, default)]
    run_id: Option<Cow<'a, str>>,
    #[serde(default)]
    seq: Option<u64>,
    #[serde(borrow, default)]
    pod: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    log: Option<Cow<'a, str>>,
}

/// A document: the fields at the top, or under `record` (the file output).
#[derive(Deserialize)]
struct Doc<'a> {
    #[serde(borrow, default)]
    record: Option<Fields<'a>>,
    #[serde(borrow, default)]
    run_id: Option<Cow<'a, str>>,
    #[serde(default)]
    seq: Option<u64>,
    #[serde(borrow, default)]
    pod: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    log: Option<Cow<'a, str>>,
}

impl<'a> Doc<'a> {
    fn top(self) -> (Option<Fields<'a>>, Fields<'a>) {
        (
            self.record,
            Fields {
                run_id: self.run_id,
                seq: self.seq,
                pod: self.pod,
                log: self.log,
            },
        )
    }
}

/// What one document says about the run.
enum Found {
    Ours { seq: Option<u64>, source: String },
    Other,
}

/// `seq` as a number or a numeric string.
fn seq_of(v: &Value) -> Option<u64> {
    match v {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

/// The slow path for any JSON value: `run_id` at the top, under `record`, or in a JSON `log`.
fn find_in_value(v: &Value, run_id: &str, depth: u8) -> Found {
    let candidates = [Some(v), v.get("record").filter(|r| r.is_object())];
    for obj in candidates.into_iter().flatten() {
        if let Some(r) = obj.get("run_id").and_then(Value::as_str) {
            if r != run_id {
                return Found::Other;
            }
            return Found::Ours {
                seq: obj.get("seq").and_then(seq_of),
                source: obj
                    .get("pod")
                    .and_then(Value::as_str)
                    .unwrap_or(DEFAULT_SOURCE)
                    .to_string(),
            };
        }
        if depth == 0 {
            if let Some(inner) = obj
                .get("log")
                .and_then(Value::as_str)
                .and_then(|l| serde_json::from_str::<Value>(l.trim()).ok())
            {
                if let Found::Ours { seq, source } = find_in_value(&inner, run_id, 1) {
                    return Found::Ours { seq, source };
                }
            }
        }
    }
    Found::Other
}

/// The fast path: borrowed fields, no tree.
fn find_fast(doc: Doc<'_>, run_id: &str) -> Option<Found> {
    let (record, top) = doc.top();
    for f in [record.as_ref(), Some(&top)].into_iter().flatten() {
        if let Some(r) = &f.run_id {
            if r != run_id {
                return Some(Found::Other);
            }
            return Some(Found::Ours {
                seq: f.seq,
                source: f.pod.as_deref().unwrap_or(DEFAULT_SOURCE).to_string(),
            });
        }
    }
    let log = record
        .as_ref()
        .and_then(|r| r.log.as_deref())
        .or(top.log.as_deref())?;
    if !log.trim_start().starts_with('{') {
        return Some(Found::Other);
    }
    let inner: Fields<'_> = serde_json::from_str(log.trim()).ok()?;
    match inner.run_id.as_deref() {
        Some(r) if r == run_id => Some(Found::Ours {
            seq: inner.seq,
            source: inner.pod.as_deref().unwrap_or(DEFAULT_SOURCE).to_string(),
        }),
        Some(_) => Some(Found::Other),
        None => None,
    }
}

impl Tally {
    /// Counts one JSON document (a file output line, an Elasticsearch `_source`, a message).
    pub fn json(&mut self, run_id: &str, doc: &[u8]) {
        let doc = doc.trim_ascii();
        if doc.is_empty() {
            return;
        }
        self.documents += 1;
        let found = match serde_json::from_slice::<Doc<'_>>(doc) {
            Ok(d) => find_fast(d, run_id),
            Err(_) => None,
        };
        let found = match found {
            Some(f) => f,
            // Unusual field types (a string seq, a non-object record): look at the tree.
            None => match serde_json::from_slice::<Value>(doc) {
                Ok(v) => find_in_value(&v, run_id, 0),
                Err(_) => {
                    self.malformed += 1;
                    return;
                }
            },
        };
        self.found(found);
    }

    /// Counts a document already parsed.
    pub fn value(&mut self, run_id: &str, v: &Value) {
        self.documents += 1;
        let found = find_in_value(v, run_id, 0);
        self.found(found);
    }

    fn found(&mut self, found: Found) {
        match found {
            Found::Other => self.other += 1,
            Found::Ours { seq: None, source } => {
                self.without_seq += 1;
                // The source exists even if none of its records has a seq.
                self.sources.entry(source).or_default();
            }
            Found::Ours {
                seq: Some(seq),
                source,
            } => {
                if let Some(t) = self.sources.get_mut(&source) {
                    t.seq(seq);
                } else {
                    self.sources.entry(source).or_default().seq(seq);
                }
            }
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
            self.json(run_id, &buf);
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

    /// The verdict.
    pub fn report(&self, run_id: &str, input: &str, expect: &Expect) -> Report {
        let mut sources: Vec<SourceReport> = self
            .sources
            .iter()
            .map(|(name, t)| t.report(name, expect.for_source(name)))
            .collect();
        // Sources that should have sent something but of which nothing arrived.
        if let Expect::Map(m) = expect {
            for (name, n) in m {
                if !self.sources.contains_key(name) {
                    sources.push(SourceTally::default().report(name, Some(*n)));
                }
            }
            sources.sort_by(|a, b| a.source.cmp(&b.source));
        }
        if sources.is_empty() {
            if let Expect::PerSource(n) = expect {
                sources.push(SourceTally::default().report(DEFAULT_SOURCE, Some(*n)));
            }
        }
        let sum = |f: fn(&SourceReport) -> u64| sources.iter().map(f).sum::<u64>();
        let received = sum(|s| s.received) + self.without_seq;
        let missing = sum(|s| s.missing);
        let missing_ranges: Vec<[u64; 2]> = sources
            .iter()
            .flat_map(|s| s.missing_ranges.iter().copied())
            .take(MAX_RANGES)
            .collect();
        Report {
            ok: missing == 0 && received > 0,
            run_id: run_id.to_string(),
            input: input.to_string(),
            expected: sum(|s| s.expected),
            received,
            unique: sum(|s| s.unique),
            duplicates: sum(|s| s.duplicates),
            duplicated_seqs: sum(|s| s.duplicated_seqs),
            missing,
            missing_ranges,
            beyond_expected: sum(|s| s.beyond_expected),
            without_seq: self.without_seq,
            malformed_lines: self.malformed,
            other_lines: self.other,
            files: self.files,
            documents: self.documents,
            sources,
        }
    }
}

/// One source of a run (a pod, or `-`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SourceReport {
    pub source: String,
    pub expected: u64,
    pub received: u64,
    pub unique: u64,
    pub duplicates: u64,
    pub duplicated_seqs: u64,
    pub missing: u64,
    /// The first missing ranges, inclusive `[first, last]`.
    pub missing_ranges: Vec<[u64; 2]>,
    /// Distinct seqs >= `expected` (only with an expectation).
    pub beyond_expected: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    /// Nothing missing (and at least one record of the run found).
    pub ok: bool,
    pub run_id: String,
    /// What was read (files, an Elasticsearch index pattern, a Kafka topic).
    pub input: String,
    /// Totals over the sources.
    pub expected: u64,
    pub received: u64,
    pub unique: u64,
    /// Received records beyond the first for each seq.
    pub duplicates: u64,
    pub duplicated_seqs: u64,
    pub missing: u64,
    /// The first missing ranges over all sources, inclusive `[first, last]` (per source in
    /// `sources`).
    pub missing_ranges: Vec<[u64; 2]>,
    pub beyond_expected: u64,
    pub without_seq: u64,
    /// Lines or messages that are not JSON (torn writes).
    pub malformed_lines: u64,
    /// Documents of other runs.
    pub other_lines: u64,
    pub files: u64,
    pub documents: u64,
    pub sources: Vec<SourceReport>,
}

fn ranges_text(ranges: &[[u64; 2]]) -> String {
    ranges
        .iter()
        .map(|[a, b]| {
            if a == b {
                a.to_string()
            } else {
                format!("{a}-{b}")
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

impl Report {
    pub fn text(&self) -> String {
        let mut s = format!(
            "run {} in {}: expected {}, received {} ({} unique), duplicates {} ({} seqs), missing {}, sources {}, documents {}",
            self.run_id,
            self.input,
            self.expected,
            self.received,
            self.unique,
            self.duplicates,
            self.duplicated_seqs,
            self.missing,
            self.sources.len(),
            self.documents
        );
        if self.files > 0 {
            s += &format!(", files {}", self.files);
        }
        if self.sources.len() > 1 {
            // Sources with problems first, then the rest, up to a limit.
            let mut listed: Vec<&SourceReport> = self.sources.iter().collect();
            listed.sort_by_key(|r| (r.missing == 0, r.duplicates == 0));
            for r in listed.iter().take(MAX_LISTED_SOURCES) {
                s += &format!(
                    "\n  {}: expected {}, received {}, duplicates {}, missing {}",
                    r.source, r.expected, r.received, r.duplicates, r.missing
                );
                if !r.missing_ranges.is_empty() {
                    s += &format!(" ({})", ranges_text(&r.missing_ranges));
                }
            }
            if listed.len() > MAX_LISTED_SOURCES {
                s += &format!("\n  ... {} more sources", listed.len() - MAX_LISTED_SOURCES);
            }
        } else if !self.missing_ranges.is_empty() {
            s += &format!(
                "\nfirst missing ranges: {}",
                ranges_text(&self.missing_ranges)
            );
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
    let expect = match (&args.expect_file, args.expect) {
        (Some(f), _) => Expect::from_summary(f)?,
        (None, Some(n)) => Expect::PerSource(n),
        (None, None) => Expect::Seen,
    };
    let mut t = Tally::default();
    let input = if let Some(url) = &args.es {
        es::read(&mut t, &args.run_id, url, &args.index, args.timeout)?;
        format!("elasticsearch {url} index {}", args.index)
    } else if let Some(brokers) = &args.kafka {
        let topic = args.topic.as_deref().context("--kafka needs --topic")?;
        read_kafka(&mut t, &args.run_id, brokers, topic, args.timeout)?;
        format!("kafka {brokers} topic {topic}")
    } else {
        for p in &args.paths {
            t.path(&args.run_id, p)?;
        }
        let names: Vec<String> = args.paths.iter().map(|p| p.display().to_string()).collect();
        format!("files {}", names.join(" "))
    };
    Ok(t.report(&args.run_id, &input, &expect))
}

#[cfg(feature = "kafka")]
fn read_kafka(
    t: &mut Tally,
    run_id: &str,
    brokers: &str,
    topic: &str,
    timeout: Duration,
) -> anyhow::Result<()> {
    kafka::read(t, run_id, brokers, topic, timeout)
}

#[cfg(not(feature = "kafka"))]
fn read_kafka(
    _t: &mut Tally,
    _run_id: &str,
    _brokers: &str,
    _topic: &str,
    _timeout: Duration,
) -> anyhow::Result<()> {
    anyhow::bail!("this logferry-loadtest was built without the `kafka` feature")
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

    fn report(t: &Tally, expect: Option<u64>) -> Report {
        t.report(
            "r1",
            "test",
            &expect.map_or(Expect::Seen, Expect::PerSource),
        )
    }

    #[test]
    fn complete_run() {
        let lines: Vec<_> = (0..100).map(|s| line("r1", s)).collect();
        let r = report(&tally(&lines), Some(100));
        assert!(r.ok);
        assert_eq!(
            (r.received, r.unique, r.missing, r.duplicates),
            (100, 100, 0, 0)
        );
        assert!(r.missing_ranges.is_empty());
        assert_eq!(r.sources.len(), 1);
        assert_eq!(r.sources[0].source, DEFAULT_SOURCE);
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
        let r = report(&t, Some(205));
        assert!(!r.ok);
        assert_eq!(r.received, 189 + 3);
        assert_eq!(r.unique, 189);
        assert_eq!(r.duplicates, 3);
        assert_eq!(r.duplicated_seqs, 2);
        assert_eq!(r.missing, 10 + 1 + 5);
        assert_eq!(r.missing_ranges, vec![[10, 19], [150, 150], [200, 204]]);
        assert_eq!(r.other_lines, 1);
        assert_eq!(r.malformed_lines, 1);
        // Without an expectation the highest seq decides.
        let r = report(&t, None);
        assert_eq!(r.expected, 200);
        assert_eq!(r.missing, 11);
        assert!(r.text().contains("10-19, 150"));
    }

    #[test]
    fn beyond_expected_and_empty() {
        let lines: Vec<_> = (0..12).map(|s| line("r1", s)).collect();
        let r = report(&tally(&lines), Some(10));
        assert!(r.ok);
        assert_eq!(r.beyond_expected, 2);
        let r = report(&tally(&[]), None);
        assert!(!r.ok, "no record at all is a failure");
        assert_eq!(r.expected, 0);
        // Nothing arrived of a run that sent 10.
        let r = report(&tally(&[]), Some(10));
        assert!(!r.ok);
        assert_eq!(r.missing, 10);
    }

    #[test]
    fn many_missing_ranges_are_capped() {
        let lines: Vec<_> = (0..1000).step_by(2).map(|s| line("r1", s)).collect();
        let r = report(&tally(&lines), Some(1000));
        assert_eq!(r.missing, 500);
        assert_eq!(r.missing_ranges.len(), MAX_RANGES);
        assert_eq!(r.missing_ranges[0], [1, 1]);
    }

    /// Pod lines in every shape they can arrive in: merged by the forwarder (fields at the top of
    /// the record), unmerged (JSON in `log`), as an Elasticsearch document (no envelope), with a
    /// string seq; per-pod sequences are counted separately.
    #[test]
    fn per_source_counts_in_every_shape() {
        let merged = |pod: &str, seq: u64| {
            format!(
                r#"{{"tag":"kube.x","record":{{"run_id":"r1","pod":"{pod}","seq":{seq},"msg":"m"}}}}"#
            )
        };
        let unmerged = |pod: &str, seq: u64| {
            let inner = format!(r#"{{"run_id":"r1","pod":"{pod}","seq":{seq},"msg":"m"}}"#);
            serde_json::json!({"tag": "kube.x", "record": {"log": inner, "stream": "stdout"}})
                .to_string()
        };
        let doc = |pod: &str, seq: u64| {
            format!(r#"{{"@timestamp":"t","run_id":"r1","pod":"{pod}","seq":"{seq}"}}"#)
        };
        let mut lines = Vec::new();
        for seq in 0..30 {
            lines.push(merged("a", seq));
            if seq != 17 {
                lines.push(unmerged("b", seq));
            }
            lines.push(doc("c", seq));
        }
        lines.push(unmerged("b", 3));
        lines.push(serde_json::json!({"record": {"log": "plain text r1 seq 5"}}).to_string());
        lines.push(
            serde_json::json!({"record": {"log": "{\"run_id\":\"r2\",\"seq\":1}"}}).to_string(),
        );
        lines.push(r#"{"record":{"run_id":"r1","pod":"a"}}"#.to_string());
        let t = tally(&lines);
        let r = t.report("r1", "test", &Expect::Seen);
        assert_eq!(r.sources.len(), 3, "{r:#?}");
        let by: BTreeMap<&str, &SourceReport> =
            r.sources.iter().map(|s| (s.source.as_str(), s)).collect();
        assert_eq!((by["a"].received, by["a"].missing), (30, 0));
        assert_eq!(
            (by["b"].received, by["b"].duplicates, by["b"].missing),
            (30, 1, 1)
        );
        assert_eq!(by["b"].missing_ranges, vec![[17, 17]]);
        assert_eq!((by["c"].received, by["c"].missing), (30, 0));
        assert_eq!(r.missing_ranges, vec![[17, 17]]);
        assert_eq!(r.without_seq, 1);
        assert_eq!(r.other_lines, 2);
        assert_eq!(r.received, 91);
        assert!(!r.ok);
        let text = r.text();
        assert!(
            text.lines().nth(1).unwrap().contains("b: expected 30"),
            "{text}"
        );
    }

    #[test]
    fn expect_file_reports_sources_that_sent_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let summary = dir.path().join("pods.json");
        std::fs::write(
            &summary,
            r#"{"ok":true,"run_id":"r1","expected":{"a":5,"b":3,"silent":4}}"#,
        )
        .unwrap();
        let expect = Expect::from_summary(&summary).unwrap();
        let mut lines = Vec::new();
        for seq in 0..5 {
            lines.push(format!(
                r#"{{"record":{{"run_id":"r1","pod":"a","seq":{seq}}}}}"#
            ));
        }
        for seq in 0..2 {
            lines.push(format!(
                r#"{{"record":{{"run_id":"r1","pod":"b","seq":{seq}}}}}"#
            ));
        }
        let r = tally(&lines).report("r1", "test", &expect);
        assert_eq!(r.expected, 12);
        assert_eq!(r.missing, 1 + 4);
        let silent = r.sources.iter().find(|s| s.source == "silent").unwrap();
        assert_eq!((silent.received, silent.missing), (0, 4));
        assert!(!r.ok);

        std::fs::write(&summary, r#"{"expected":{"a":"five"}}"#).unwrap();
        assert!(Expect::from_summary(&summary).is_err());
        std::fs::write(&summary, r#"{"ok":true}"#).unwrap();
        assert!(Expect::from_summary(&summary).is_err());
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
        let mut t = Tally::default();
        t.path("r1", dir.path()).unwrap();
        let r = report(&t, None);
        assert!(r.ok, "{}", r.text());
        assert_eq!((r.files, r.received, r.expected), (2, 100, 100));
    }
}
