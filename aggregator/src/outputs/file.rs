//! `type = "file"`: records as JSON lines in local files, one file per tag and hour.
//!
//! ```text
//! <path>/<tag>.<YYYYMMDDHH>.jsonl      (tag: [A-Za-z0-9._-] kept, anything else '_'; hour of the
//!                                        record's time, UTC)
//! {"time":"2021-01-01T00:00:00.123456789Z","tag":"app.web","record":{...}}\n
//! ```
//!
//! ## Invariants
//! - Records count as delivered only after every file they were written to was fsync'd, so
//!   deleting the chunk afterwards can never lose a record.
//! - No partial line stays in a file: a delivery that fails half-way truncates each file it
//!   touched back to where it started, and a crash half-way leaves at most a torn last line,
//!   which is cut off before the next start's first write (the chunk is then delivered again).
//! - Records are transcoded from msgpack to JSON directly, without building a tree.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use std::sync::Arc;

use logferry_common::msgpack::write_json;

use super::{Attempt, Failure, Outcome, OutputError, Rec};

/// Open files kept between deliveries; past this many, all are closed (tags are unbounded).
const MAX_OPEN_FILES: usize = 256;

/// The file output.
#[derive(Debug)]
pub struct FileOutput {
    dir: PathBuf,
    files: HashMap<FileKey, File>,
    /// Whether [`FileOutput::prepare`] has run.
    ready: bool,
}

/// One output file: a sanitised tag and an hour (hours since the Unix epoch).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct FileKey {
    tag: String,
    hour: u64,
}

impl FileKey {
    fn file_name(&self) -> String {
        let stamp = chrono::DateTime::from_timestamp((self.hour * 3600) as i64, 0)
            .map(|t| t.format("%Y%m%d%H").to_string())
            .unwrap_or_else(|| "0000000000".to_owned());
        format!("{}.{stamp}.jsonl", self.tag)
    }
}

/// Makes a tag safe as a file name: `[A-Za-z0-9._-]` kept, everything else `_`, no leading dot.
pub fn sanitize_tag(tag: &str) -> String {
    let mut out: String = tag
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if out.is_empty() || out.starts_with('.') {
        out.insert(0, '_');
    }
    out
}

impl FileOutput {
    /// A file output writing under `dir`. Nothing is touched until the first delivery, so an
    /// output directory that is not there yet (a volume still mounting) does not stop the
    /// aggregator from accepting and buffering records; deliveries retry until it is.
    pub fn new(dir: &Path) -> FileOutput {
        FileOutput {
            dir: dir.to_owned(),
            files: HashMap::new(),
            ready: false,
        }
    }

    /// Creates the directory and cuts torn last lines left by a crash; done once, before the
    /// first write.
    fn prepare(&mut self) -> Result<(), OutputError> {
        if self.ready {
            return Ok(());
        }
        let dir = &self.dir;
        std::fs::create_dir_all(dir)
            .map_err(|e| OutputError::io(&format!("cannot create {}", dir.display()), e))?;
        let entries = std::fs::read_dir(dir)
            .map_err(|e| OutputError::io(&format!("cannot list {}", dir.display()), e))?;
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "jsonl") {
                repair_torn_line(&path).map_err(|e| {
                    OutputError::io(&format!("cannot repair {}", path.display()), e)
                })?;
            }
        }
        self.ready = true;
        Ok(())
    }

    /// Checks that the directory can be written (for `validate --check-outputs`).
    pub fn check(&mut self) -> Result<String, OutputError> {
        self.prepare()?;
        let probe = self.dir.join(".logferry-write-check");
        std::fs::write(&probe, b"ok")
            .map_err(|e| OutputError::io(&format!("cannot write in {}", self.dir.display()), e))?;
        let _ = std::fs::remove_file(&probe);
        Ok(format!("{} is writable", self.dir.display()))
    }

    /// Writes lines made by [`encode`] and fsyncs the files they went to: all delivered, or an
    /// error (and nothing left behind).
    pub fn write(&mut self, encoded: Encoded) -> Result<Attempt, OutputError> {
        self.prepare()?;
        let Encoded { pending, outcomes } = encoded;
        let mut bytes = 0u64;
        let mut written: Vec<(FileKey, u64)> = Vec::with_capacity(pending.len());
        let result = (|| {
            for (key, lines) in &pending {
                let file = self.file(key)?;
                let start = file
                    .seek(SeekFrom::End(0))
                    .map_err(|e| OutputError::io("cannot seek output file", e))?;
                written.push((key.clone(), start));
                file.write_all(lines)
                    .map_err(|e| OutputError::io("cannot write output file", e))?;
                bytes += lines.len() as u64;
            }
            // One fsync per touched file: the chunk is released only after these return.
            for (key, _) in &written {
                let file = self.file(key)?;
                file.sync_data()
                    .map_err(|e| OutputError::io("cannot fsync output file", e))?;
            }
            Ok(())
        })();
        if let Err(e) = result {
            self.roll_back(&written);
            return Err(e);
        }
        if self.files.len() > MAX_OPEN_FILES {
            self.files.clear();
        }
        Ok(Attempt { outcomes, bytes })
    }

    fn file(&mut self, key: &FileKey) -> Result<&mut File, OutputError> {
        if !self.files.contains_key(key) {
            let path = self.dir.join(key.file_name());
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .map_err(|e| OutputError::io(&format!("cannot open {}", path.display()), e))?;
            self.files.insert(key.clone(), file);
        }
        // Inserted just above when missing.
        Ok(self.files.get_mut(key).expect("file was just opened"))
    }

    /// Cuts every file written by a failed delivery back to its length before it, so a retry
    /// never leaves a partial line in the middle of a file.
    fn roll_back(&mut self, written: &[(FileKey, u64)]) {
        for (key, start) in written {
            if let Some(file) = self.files.remove(key) {
                if let Err(e) = file.set_len(*start) {
                    tracing::error!(file = %key.file_name(), error = %e, "cannot roll back a failed write; the file may hold a partial line");
                }
            }
        }
    }
}

/// Records encoded as JSON lines, grouped by file; no IO has happened yet.
#[derive(Debug, Default)]
pub struct Encoded {
    /// The lines of each file, in record order.
    pending: HashMap<FileKey, Vec<u8>>,
    /// One outcome per record: delivered once written (a record that cannot be encoded is
    /// rejected here).
    outcomes: Vec<Outcome>,
}

/// Encodes records as JSON lines, grouped by file. Pure CPU work: it runs outside the lock that
/// serialises writes, so with `concurrency` above 1 one chunk is encoded while the previous one
/// is written and fsync'd.
pub fn encode(recs: &[Rec]) -> Encoded {
    // Lines are gathered per file first, so each file gets one write and one fsync.
    let mut pending: HashMap<FileKey, Vec<u8>> = HashMap::new();
    let mut outcomes = Vec::with_capacity(recs.len());
    let mut tag_json = Vec::new();
    let mut run = Vec::new();
    // Lines of consecutive records of the same tag and hour gather in `run`; they nearly
    // always share both, so the map is touched once per run.
    let mut run_key: Option<(Arc<str>, u64)> = None;
    let mut file_tag = String::new();
    for rec in recs {
        let hour = u64::from(rec.time.secs) / 3600;
        let same = run_key
            .as_ref()
            .is_some_and(|(t, h)| Arc::ptr_eq(t, &rec.tag) && *h == hour);
        if !same {
            if let Some((_, h)) = run_key.take() {
                flush_run(&mut pending, &file_tag, h, &mut run);
            }
            file_tag = sanitize_tag(&rec.tag);
            tag_json.clear();
            json_string(&rec.tag, &mut tag_json);
            run_key = Some((Arc::clone(&rec.tag), hour));
        }
        let line_start = run.len();
        run.extend_from_slice(b"{\"time\":\"");
        rec.time.write_rfc3339(&mut run);
        run.extend_from_slice(b"\",\"tag\":");
        run.extend_from_slice(&tag_json);
        run.extend_from_slice(b",\"record\":");
        if let Err(e) = write_json(&rec.record, &mut run) {
            run.truncate(line_start);
            outcomes.push(Outcome::Reject(Failure::new(
                "unencodable",
                format!("record cannot be written as JSON: {e}"),
            )));
        } else {
            run.extend_from_slice(b"}\n");
            outcomes.push(Outcome::Delivered);
        }
    }
    if let Some((_, h)) = run_key {
        flush_run(&mut pending, &file_tag, h, &mut run);
    }
    Encoded { pending, outcomes }
}

/// Moves the lines gathered in `run` to the pending bytes of their file.
fn flush_run(pending: &mut HashMap<FileKey, Vec<u8>>, tag: &str, hour: u64, run: &mut Vec<u8>) {
    let key = FileKey {
        tag: tag.to_owned(),
        hour,
    };
    match pending.get_mut(&key) {
        Some(buf) => {
            buf.extend_from_slice(run);
            run.clear();
        }
        None => {
            pending.insert(key, std::mem::take(run));
        }
    }
}

/// Writes `s` as a JSON string.
fn json_string(s: &str, out: &mut Vec<u8>) {
    // serde_json's escaping is the reference; writing to a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

/// Truncates a file after its last newline, removing a line torn by a crash.
fn repair_torn_line(path: &Path) -> std::io::Result<()> {
    let mut file = OpenOptions::new().read(true).write(true).open(path)?;
    let len = file.metadata()?.len();
    if len == 0 {
        return Ok(());
    }
    let mut last = [0u8; 1];
    file.seek(SeekFrom::Start(len - 1))?;
    file.read_exact(&mut last)?;
    if last[0] == b'\n' {
        return Ok(());
    }
    // Scan backwards in blocks for the last newline.
    let mut end = len;
    let mut block = vec![0u8; 64 * 1024];
    let keep = loop {
        if end == 0 {
            break 0;
        }
        let start = end.saturating_sub(block.len() as u64);
        let n = (end - start) as usize;
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(&mut block[..n])?;
        if let Some(i) = block[..n].iter().rposition(|&b| b == b'\n') {
            break start + i as u64 + 1;
        }
        end = start;
    };
    tracing::warn!(file = %path.display(), cut_bytes = len - keep, "cutting a torn last line left by a crash");
    file.set_len(keep)?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outputs::record::Origin;
    use bytes::Bytes;
    use logferry_common::forward::EventTime;

    #[test]
    fn tags_are_sanitized() {
        assert_eq!(sanitize_tag("app.web"), "app.web");
        assert_eq!(sanitize_tag("a/b c"), "a_b_c");
        assert_eq!(sanitize_tag(".hidden"), "_.hidden");
        assert_eq!(sanitize_tag(""), "_");
        assert_eq!(sanitize_tag("../../etc"), "_.._.._etc");
    }

    #[test]
    fn file_names_carry_the_hour() {
        let key = FileKey {
            tag: "t".into(),
            hour: 1_609_459_200 / 3600,
        };
        assert_eq!(key.file_name(), "t.2021010100.jsonl");
    }

    fn rec(tag: &Arc<str>, secs: u32, record: Bytes) -> Rec {
        Rec {
            origin: Origin {
                seq: 1,
                created_ns: 1,
            },
            frame: 0,
            index: 0,
            tag: Arc::clone(tag),
            time: EventTime::new(secs, 5),
            record,
        }
    }

    #[test]
    fn encodes_per_file_then_writes_and_rejects_what_is_not_json() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b): (Arc<str>, Arc<str>) = (Arc::from("app.a"), Arc::from("app/b"));
        let map =
            |i: u64| Bytes::from(rmp_serde::to_vec_named(&serde_json::json!({"i": i})).unwrap());
        let recs = vec![
            rec(&a, 1_609_459_200, map(1)),
            rec(&b, 1_609_459_200, map(2)),
            rec(&a, 1_609_459_200, Bytes::from_static(&[0xc1])), // never valid msgpack
            rec(&a, 1_609_462_800, map(3)),                      // the next hour
            rec(&a, 1_609_459_201, map(4)),
        ];
        let encoded = encode(&recs);
        assert!(
            !dir.path().join("app.a.2021010100.jsonl").exists(),
            "encode does no IO"
        );
        let attempt = FileOutput::new(dir.path()).write(encoded).unwrap();
        let kinds: Vec<&str> = attempt
            .outcomes
            .iter()
            .map(|o| match o {
                Outcome::Delivered => "ok",
                Outcome::Reject(f) => f.kind,
                Outcome::Retry(_) => "retry",
            })
            .collect();
        assert_eq!(kinds, ["ok", "ok", "unencodable", "ok", "ok"]);
        let read = |name: &str| std::fs::read_to_string(dir.path().join(name)).unwrap();
        assert_eq!(
            read("app.a.2021010100.jsonl"),
            "{\"time\":\"2021-01-01T00:00:00.000000005Z\",\"tag\":\"app.a\",\"record\":{\"i\":1}}\n\
             {\"time\":\"2021-01-01T00:00:01.000000005Z\",\"tag\":\"app.a\",\"record\":{\"i\":4}}\n"
        );
        assert!(read("app_b.2021010100.jsonl").contains("\"tag\":\"app/b\",\"record\":{\"i\":2}"));
        assert!(read("app.a.2021010101.jsonl").contains("{\"i\":3}"));
        assert_eq!(
            attempt.bytes,
            std::fs::read_dir(dir.path())
                .unwrap()
                .map(|e| e.unwrap().metadata().unwrap().len())
                .sum::<u64>()
        );
    }

    #[test]
    fn torn_lines_are_cut() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.jsonl");
        std::fs::write(&path, b"{\"a\":1}\n{\"a\":2}\n{\"a\":").unwrap();
        FileOutput::new(dir.path()).prepare().unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"{\"a\":1}\n{\"a\":2}\n");
        std::fs::write(&path, b"no newline at all").unwrap();
        FileOutput::new(dir.path()).prepare().unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"");
    }
}
