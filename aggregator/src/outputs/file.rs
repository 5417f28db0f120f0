//! `type = "file"`: records as JSON lines in local files, one file per tag and hour.
//!
//! ```text
//! <path>/<tag>.<YYYYMMDDHH>.jsonl      (tag: [A-Za-z0-9._-] kept, anything else '_'; hour of the
//!                                        record's time, UTC)
//! {"time":"2021-01-01T00:00:00.123456789Z","tag":"app.web","record":{...}}\n
//! ```
//! A sanitised tag longer than [`MAX_NAME_TAG_BYTES`] is cut, and `-` plus 16 hex digits of the
//! SHA-256 of the whole tag are appended, so every file name fits `NAME_MAX` (255) and distinct
//! long tags keep distinct files, under the same name after a restart.
//!
//! ## Invariants
//! - Records count as delivered only after the file they were written to was fsync'd, and, for
//!   a file that was empty (just created), after its directory was fsync'd too (a new
//!   directory's parent is fsync'd when it is created), so deleting the chunk afterwards can
//!   never lose a record.
//! - Failures are per file: a file that cannot be opened, locked, written or synced fails only
//!   the records bound for it (`Retry`, or `Reject` for a name the filesystem refuses); the
//!   records of every other file of the same attempt are delivered.
//! - A file is changed only under an exclusive `flock` on it, taken for one append (check the
//!   last line, write, fsync, roll back on failure) and released right after, so several
//!   processes may write one directory (a second output with the same path, a `dead-letter
//!   replay` run): a file locked by another process is left alone and its records retried.
//! - No partial line stays in a file: a delivery that fails half-way truncates the file back to
//!   where it started, but only if its length is still exactly what this append left (start
//!   plus the bytes it wrote). Under the lock no other writer is half-way through a line, so a
//!   last line without `\n` found there is one torn by a crash; it is cut before the next
//!   append to that file (the crashed delivery's chunk is delivered again).
//! - Records are transcoded from msgpack to JSON directly, without building a tree.
//!
//! [`FileSink`] is the output's [`Sink`]: one [`FileOutput`] behind a mutex, its encoding and
//! IO on the blocking pool.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::fs::{File, OpenOptions, TryLockError};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use std::sync::{Arc, Mutex};

use logferry_common::chunk::create_dir_all_durable;
use logferry_common::msgpack::write_json;
use sha2::{Digest, Sha256};

use super::{Attempt, Failure, FailureKind, Outcome, OutputError, Rec, Sink};

/// Open files kept between deliveries; past this many, all are closed (tags are unbounded).
const MAX_OPEN_FILES: usize = 256;

/// Longest tag part of a file name, in bytes: with `.YYYYMMDDHH.jsonl` (17 bytes) a name stays
/// well below `NAME_MAX` (255).
pub const MAX_NAME_TAG_BYTES: usize = 200;

/// Hex digits of the tag hash appended to a cut tag.
const NAME_HASH_HEX: usize = 16;

/// The file output.
#[derive(Debug)]
pub struct FileOutput {
    dir: PathBuf,
    files: HashMap<FileKey, File>,
    /// Whether [`FileOutput::prepare`] has run.
    ready: bool,
    /// Directory fsyncs done (created ancestors, files first written while empty).
    dir_syncs: u64,
}

/// One output file: a sanitised (and capped) tag and an hour (hours since the Unix epoch).
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

/// The tag part of a file name: [`sanitize_tag`], cut to [`MAX_NAME_TAG_BYTES`] with a hash of
/// the whole tag when longer.
pub fn file_tag(tag: &str) -> String {
    let mut name = sanitize_tag(tag);
    if name.len() > MAX_NAME_TAG_BYTES {
        let digest = Sha256::digest(tag.as_bytes());
        // Sanitised names are ASCII, so any byte index is a char boundary.
        name.truncate(MAX_NAME_TAG_BYTES - NAME_HASH_HEX - 1);
        name.push('-');
        name.push_str(&hex::encode(&digest[..NAME_HASH_HEX / 2]));
    }
    name
}

/// Why one file could not take its lines (the other files of the attempt are unaffected).
#[derive(Debug, thiserror::Error)]
enum AppendError {
    /// The file could not be opened or created.
    #[error("cannot open {}: {source}", path.display())]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Another process holds the file's lock (it is appending to it right now).
    #[error("{} is locked by another writer", path.display())]
    Locked { path: PathBuf },
    /// Locking, reading, writing or syncing failed.
    #[error("cannot {op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
}

impl AppendError {
    fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> AppendError + 'a {
        move |source| AppendError::Io {
            op,
            path: path.to_owned(),
            source,
        }
    }

    /// The outcome of the records bound for the file: a name the filesystem refuses (too long
    /// for it) never works, anything else may once the operator or the other writer is done.
    fn outcome(&self) -> Outcome {
        let (kind, permanent) = match self {
            AppendError::Open { source, .. } if source.kind() == ErrorKind::InvalidFilename => {
                (FailureKind::FileName, true)
            }
            AppendError::Locked { .. } => (FailureKind::Locked, false),
            AppendError::Open { .. } | AppendError::Io { .. } => (FailureKind::Io, false),
        };
        let failure = Failure::new(kind, self.to_string());
        if permanent {
            Outcome::Reject(failure)
        } else {
            Outcome::Retry(failure)
        }
    }
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
            dir_syncs: 0,
        }
    }

    /// Creates the directory (fsyncing the parent of each directory it creates); done once,
    /// before the first write.
    fn prepare(&mut self) -> Result<(), OutputError> {
        if self.ready {
            return Ok(());
        }
        let created = create_dir_all_durable(&self.dir).map_err(|e| {
            OutputError::io(&format!("cannot create {} durably", self.dir.display()), e)
        })?;
        self.dir_syncs += created as u64;
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

    /// Writes lines made by [`encode`], one file at a time: each file's records are delivered
    /// once it was fsync'd, or fail (retry or reject) with nothing of theirs left behind. An
    /// `Err` (the directory cannot be created) means nothing was written.
    pub fn write(&mut self, encoded: Encoded) -> Result<Attempt, OutputError> {
        self.prepare()?;
        let Encoded {
            pending,
            mut outcomes,
        } = encoded;
        let mut bytes = 0u64;
        for (key, batch) in pending {
            if batch.lines.is_empty() {
                continue;
            }
            match self.append(&key, &batch.lines) {
                Ok(()) => bytes += batch.lines.len() as u64,
                Err(e) => {
                    // The handle may be in a bad state; the next attempt opens it again.
                    self.files.remove(&key);
                    let outcome = e.outcome();
                    for i in batch.recs {
                        if let Some(slot) = outcomes.get_mut(i) {
                            *slot = outcome.clone();
                        }
                    }
                }
            }
        }
        if self.files.len() > MAX_OPEN_FILES {
            self.files.clear();
        }
        Ok(Attempt { outcomes, bytes })
    }

    /// Appends `lines` to the file of `key` under its lock, and fsyncs it (and the directory,
    /// when the file was empty): all of them are durable, or none is left in the file.
    fn append(&mut self, key: &FileKey, lines: &[u8]) -> Result<(), AppendError> {
        let path = self.dir.join(key.file_name());
        let file = match self.files.entry(key.clone()) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) => {
                let file = OpenOptions::new()
                    .read(true)
                    .append(true)
                    .create(true)
                    .open(&path)
                    .map_err(|source| AppendError::Open {
                        path: path.clone(),
                        source,
                    })?;
                e.insert(file)
            }
        };
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => return Err(AppendError::Locked { path }),
            Err(TryLockError::Error(e)) => return Err(AppendError::io("lock", &path)(e)),
        }
        let result = append_locked(file, &path, lines, &self.dir);
        if let Ok(true) = result {
            self.dir_syncs += 1;
            tracing::debug!(file = %path.display(), dir_syncs = self.dir_syncs, "first lines of an output file; directory synced");
        }
        if let Err(e) = file.unlock() {
            // Closing the file releases the lock too.
            tracing::warn!(file = %path.display(), error = %e, "cannot unlock an output file; closing it");
            self.files.remove(key);
        }
        result.map(|_| ())
    }
}

/// The file output as a [`Sink`]: one [`FileOutput`] shared by every delivery of the output
/// (and its replays), behind a mutex because deliveries run on the blocking pool.
#[derive(Debug, Clone)]
pub struct FileSink {
    out: Arc<Mutex<FileOutput>>,
}

impl FileSink {
    /// A file sink writing under `dir` (see [`FileOutput::new`]).
    pub fn new(dir: &Path) -> FileSink {
        FileSink {
            out: Arc::new(Mutex::new(FileOutput::new(dir))),
        }
    }

    /// Runs `f` on the output, on the blocking pool (a panic fails the attempt as a whole).
    async fn with_output<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Mutex<FileOutput>) -> Result<T, OutputError> + Send + 'static,
    ) -> Result<T, OutputError> {
        let out = Arc::clone(&self.out);
        tokio::task::spawn_blocking(move || f(&out))
            .await
            .unwrap_or_else(|e| Err(OutputError::new(FailureKind::Panic, e.to_string())))
    }
}

/// Locks the output, also after a delivery panicked while holding the lock: the next ones
/// still run.
fn locked(out: &Mutex<FileOutput>) -> std::sync::MutexGuard<'_, FileOutput> {
    out.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Sink for FileSink {
    /// File IO and JSON encoding block; they run on the blocking pool so the Forward
    /// connections on the async workers are never stalled by a slow disk. Encoding happens
    /// before taking the lock, so it overlaps another chunk's write and fsync.
    async fn send(&self, recs: &[Rec]) -> Result<Attempt, OutputError> {
        let recs = recs.to_vec();
        self.with_output(move |out| {
            let encoded = encode(&recs);
            locked(out).write(encoded)
        })
        .await
    }

    /// Creates the directory and writes a probe file in it.
    async fn check(&self) -> Result<String, OutputError> {
        self.with_output(|out| locked(out).check()).await
    }
}

/// The body of [`FileOutput::append`], run under the file's lock. Returns whether the
/// directory was fsync'd (the file was empty).
fn append_locked(
    file: &mut File,
    path: &Path,
    lines: &[u8],
    dir: &Path,
) -> Result<bool, AppendError> {
    let len = file
        .metadata()
        .map_err(AppendError::io("stat", path))?
        .len();
    let start = cut_torn_line(file, path, len).map_err(AppendError::io("repair", path))?;
    let mut wrote = 0u64;
    let result = (|| {
        write_counted(file, lines, &mut wrote).map_err(AppendError::io("write", path))?;
        // The chunk is released only after this returns.
        file.sync_data().map_err(AppendError::io("fsync", path))?;
        if start == 0 {
            // A new (or empty) file: its name must be durable before its lines count.
            sync_dir(dir).map_err(AppendError::io("fsync directory of", path))?;
        }
        Ok(start == 0)
    })();
    if result.is_err() {
        roll_back(file, path, start, wrote);
    }
    result
}

/// Writes all of `buf`, counting in `wrote` the bytes that reached the file even when it fails.
fn write_counted(file: &mut File, buf: &[u8], wrote: &mut u64) -> std::io::Result<()> {
    let mut rest = buf;
    while !rest.is_empty() {
        match file.write(rest) {
            Ok(0) => return Err(ErrorKind::WriteZero.into()),
            Ok(n) => {
                *wrote += n as u64;
                rest = &rest[n..];
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Cuts a failed append back to `start`, but only if the file is exactly as the append left it
/// (`start + wrote` bytes): bytes past that are not ours, and are never cut.
fn roll_back(file: &File, path: &Path, start: u64, wrote: u64) {
    match file.metadata().map(|m| m.len()) {
        Ok(len) if len == start + wrote => {
            if let Err(e) = file.set_len(start) {
                tracing::error!(file = %path.display(), error = %e, "cannot roll back a failed write; the file may hold a partial line");
            }
        }
        Ok(len) => {
            tracing::error!(file = %path.display(), expected = start + wrote, found = len, "not rolling back a failed write: the file was changed by a writer that does not lock it; it may hold a partial line");
        }
        Err(e) => {
            tracing::error!(file = %path.display(), error = %e, "cannot roll back a failed write; the file may hold a partial line");
        }
    }
}

/// fsyncs a directory, making the names in it durable.
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Records encoded as JSON lines, grouped by file; no IO has happened yet.
#[derive(Debug, Default)]
pub struct Encoded {
    /// The lines of each file, in record order.
    pending: HashMap<FileKey, Batch>,
    /// One outcome per record: delivered once written (a record that cannot be encoded is
    /// rejected here).
    outcomes: Vec<Outcome>,
}

/// The lines bound for one file.
#[derive(Debug, Default)]
struct Batch {
    lines: Vec<u8>,
    /// Indexes (into the records given to [`encode`]) of the records in `lines`.
    recs: Vec<usize>,
}

/// Encodes records as JSON lines, grouped by file. Pure CPU work: it runs outside the lock that
/// serialises writes, so with `concurrency` above 1 one chunk is encoded while the previous one
/// is written and fsync'd.
pub fn encode(recs: &[Rec]) -> Encoded {
    // Lines are gathered per file first, so each file gets one write and one fsync.
    let mut pending: HashMap<FileKey, Batch> = HashMap::new();
    let mut outcomes = Vec::with_capacity(recs.len());
    let mut tag_json = Vec::new();
    let mut run = Batch::default();
    // Lines of consecutive records of the same tag and hour gather in `run`; they nearly
    // always share both, so the map is touched once per run.
    let mut run_key: Option<(Arc<str>, u64)> = None;
    let mut name_tag = String::new();
    for (i, rec) in recs.iter().enumerate() {
        let hour = u64::from(rec.time.secs) / 3600;
        let same = run_key
            .as_ref()
            .is_some_and(|(t, h)| Arc::ptr_eq(t, &rec.tag) && *h == hour);
        if !same {
            if let Some((_, h)) = run_key.take() {
                flush_run(&mut pending, &name_tag, h, &mut run);
            }
            name_tag = file_tag(&rec.tag);
            tag_json.clear();
            json_string(&rec.tag, &mut tag_json);
            run_key = Some((Arc::clone(&rec.tag), hour));
        }
        let line = &mut run.lines;
        let line_start = line.len();
        line.extend_from_slice(b"{\"time\":\"");
        rec.time.write_rfc3339(line);
        line.extend_from_slice(b"\",\"tag\":");
        line.extend_from_slice(&tag_json);
        line.extend_from_slice(b",\"record\":");
        if let Err(e) = write_json(&rec.record, line) {
            line.truncate(line_start);
            outcomes.push(Outcome::Reject(Failure::new(
                FailureKind::Unencodable,
                format!("record cannot be written as JSON: {e}"),
            )));
        } else {
            line.extend_from_slice(b"}\n");
            run.recs.push(i);
            outcomes.push(Outcome::Delivered);
        }
    }
    if let Some((_, h)) = run_key {
        flush_run(&mut pending, &name_tag, h, &mut run);
    }
    Encoded { pending, outcomes }
}

/// Moves the lines gathered in `run` to the pending batch of their file.
fn flush_run(pending: &mut HashMap<FileKey, Batch>, tag: &str, hour: u64, run: &mut Batch) {
    let key = FileKey {
        tag: tag.to_owned(),
        hour,
    };
    match pending.get_mut(&key) {
        Some(batch) => {
            batch.lines.extend_from_slice(&run.lines);
            batch.recs.append(&mut run.recs);
            run.lines.clear();
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

/// Cuts a last line without `\n` (torn by a crash; the caller holds the lock, so no writer is
/// half-way through one) off a file of `len` bytes; returns the length kept.
fn cut_torn_line(file: &File, path: &Path, len: u64) -> std::io::Result<u64> {
    if len == 0 {
        return Ok(0);
    }
    let mut last = [0u8; 1];
    file.read_exact_at(&mut last, len - 1)?;
    if last[0] == b'\n' {
        return Ok(len);
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
        file.read_exact_at(&mut block[..n], start)?;
        if let Some(i) = block[..n].iter().rposition(|&b| b == b'\n') {
            break start + i as u64 + 1;
        }
        end = start;
    };
    tracing::warn!(file = %path.display(), cut_bytes = len - keep, "cutting a torn last line left by a crash");
    file.set_len(keep)?;
    file.sync_data()?;
    Ok(keep)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Origin;
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
                Outcome::Reject(f) => f.kind.as_str(),
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

    const HOUR0: u32 = 1_609_459_200; // 2021-01-01T00:00:00Z

    fn map(i: u64) -> Bytes {
        Bytes::from(rmp_serde::to_vec_named(&serde_json::json!({"i": i})).unwrap())
    }

    fn kinds(attempt: &Attempt) -> Vec<&'static str> {
        attempt
            .outcomes
            .iter()
            .map(|o| match o {
                Outcome::Delivered => "ok",
                Outcome::Reject(f) | Outcome::Retry(f) => f.kind.as_str(),
            })
            .collect()
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn torn_lines_are_cut_before_the_next_append() {
        let dir = tempfile::tempdir().unwrap();
        let tag: Arc<str> = Arc::from("x");
        let path = dir.path().join("x.2021010100.jsonl");
        std::fs::write(&path, b"{\"a\":1}\n{\"a\":2}\n{\"a\":").unwrap();
        let mut out = FileOutput::new(dir.path());
        let attempt = out.write(encode(&[rec(&tag, HOUR0, map(7))])).unwrap();
        assert_eq!(kinds(&attempt), ["ok"]);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.starts_with("{\"a\":1}\n{\"a\":2}\n{\"time\""),
            "{text}"
        );
        assert_eq!(text.lines().count(), 3);
        std::fs::write(&path, b"no newline at all").unwrap();
        let attempt = FileOutput::new(dir.path())
            .write(encode(&[rec(&tag, HOUR0, map(8))]))
            .unwrap();
        assert_eq!(kinds(&attempt), ["ok"]);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.starts_with("{\"time\"") && text.ends_with("{\"i\":8}}\n"),
            "{text}"
        );
    }

    #[test]
    fn long_tags_get_a_capped_hashed_name_and_do_not_fail_their_neighbours() {
        let dir = tempfile::tempdir().unwrap();
        let good: Arc<str> = Arc::from("good");
        let long: Arc<str> = Arc::from(format!("evil.{}", "x".repeat(295)).as_str());
        assert_eq!(long.len(), 300);
        let recs = vec![
            rec(&good, HOUR0, map(1)),
            rec(&long, HOUR0, map(2)),
            rec(&good, HOUR0, map(3)),
        ];
        let attempt = FileOutput::new(dir.path()).write(encode(&recs)).unwrap();
        assert_eq!(kinds(&attempt), ["ok", "ok", "ok"]);
        let good_lines = std::fs::read_to_string(dir.path().join("good.2021010100.jsonl")).unwrap();
        assert_eq!(good_lines.lines().count(), 2, "{good_lines}");
        let names = names(dir.path());
        assert_eq!(names.len(), 2, "{names:?}");
        let long_name = names.iter().find(|n| n.starts_with("evil.")).unwrap();
        assert!(long_name.len() <= 255, "{long_name}");
        let long_lines = std::fs::read_to_string(dir.path().join(long_name)).unwrap();
        assert!(
            long_lines.contains(&format!("\"tag\":\"{long}\"")),
            "{long_lines}"
        );
    }

    #[test]
    fn capped_names_are_deterministic_and_distinct() {
        let a = format!("kube.{}.a", "p".repeat(300));
        let b = format!("kube.{}.b", "p".repeat(300));
        assert_eq!(file_tag(&a), file_tag(&a.clone()));
        assert_ne!(file_tag(&a), file_tag(&b));
        assert_eq!(file_tag(&a).len(), MAX_NAME_TAG_BYTES);
        assert!(file_tag(&a).starts_with("kube.ppp"));
        // Exactly at the cap: kept as it is.
        let fits = "t".repeat(MAX_NAME_TAG_BYTES);
        assert_eq!(file_tag(&fits), fits);
        assert_eq!(file_tag("app/b"), "app_b");
        // Multi-byte characters become one '_' each, so the cut is on a char boundary.
        let wide = "é".repeat(300);
        assert_eq!(file_tag(&wide).len(), MAX_NAME_TAG_BYTES);
    }

    #[test]
    fn a_file_that_cannot_be_opened_fails_only_its_own_records() {
        let dir = tempfile::tempdir().unwrap();
        // A directory where the file of tag "bad" would be: open fails with EISDIR.
        std::fs::create_dir(dir.path().join("bad.2021010100.jsonl")).unwrap();
        let (good, bad): (Arc<str>, Arc<str>) = (Arc::from("good"), Arc::from("bad"));
        let recs = vec![
            rec(&good, HOUR0, map(1)),
            rec(&bad, HOUR0, map(2)),
            rec(&good, HOUR0, map(3)),
            rec(&bad, HOUR0, map(4)),
        ];
        let mut out = FileOutput::new(dir.path());
        let attempt = out.write(encode(&recs)).unwrap();
        assert_eq!(kinds(&attempt), ["ok", "io", "ok", "io"]);
        assert!(matches!(attempt.outcomes[1], Outcome::Retry(_)));
        let good_lines = std::fs::read_to_string(dir.path().join("good.2021010100.jsonl")).unwrap();
        assert_eq!(good_lines.lines().count(), 2);
        assert_eq!(attempt.bytes, good_lines.len() as u64);
        // Once the obstacle is gone, the retried records go through.
        std::fs::remove_dir(dir.path().join("bad.2021010100.jsonl")).unwrap();
        let attempt = out
            .write(encode(&[
                rec(&bad, HOUR0, map(2)),
                rec(&bad, HOUR0, map(4)),
            ]))
            .unwrap();
        assert_eq!(kinds(&attempt), ["ok", "ok"]);
    }

    #[test]
    fn names_the_filesystem_refuses_are_rejected() {
        let e = AppendError::Open {
            path: PathBuf::from("x"),
            source: std::io::Error::from(ErrorKind::InvalidFilename),
        };
        assert!(matches!(e.outcome(), Outcome::Reject(f) if f.kind.as_str() == "file_name"));
        let e = AppendError::Open {
            path: PathBuf::from("x"),
            source: std::io::Error::from(ErrorKind::PermissionDenied),
        };
        assert!(matches!(e.outcome(), Outcome::Retry(f) if f.kind.as_str() == "io"));
    }

    #[test]
    fn a_file_another_writer_is_appending_to_is_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let tag: Arc<str> = Arc::from("shared");
        let path = dir.path().join("shared.2021010100.jsonl");
        // Another process (a second output on this directory, a replay run) half-way through
        // an append: it holds the file's lock and has written part of a line.
        let mut other = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .unwrap();
        other.lock().unwrap();
        other.write_all(b"{\"other\":1}\n{\"other\":").unwrap();
        let mut out = FileOutput::new(dir.path());
        let attempt = out.write(encode(&[rec(&tag, HOUR0, map(1))])).unwrap();
        assert_eq!(kinds(&attempt), ["locked"]);
        assert!(matches!(attempt.outcomes[0], Outcome::Retry(_)));
        assert_eq!(
            std::fs::read(&path).unwrap(),
            b"{\"other\":1}\n{\"other\":",
            "the other writer's bytes are untouched"
        );
        // The other writer finishes its line and lets go; the retry appends after it.
        other.write_all(b"2}\n").unwrap();
        other.unlock().unwrap();
        let attempt = out.write(encode(&[rec(&tag, HOUR0, map(1))])).unwrap();
        assert_eq!(kinds(&attempt), ["ok"]);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.starts_with("{\"other\":1}\n{\"other\":2}\n{\"time\""),
            "{text}"
        );
    }

    #[test]
    fn roll_back_cuts_only_what_this_append_wrote() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.jsonl");
        std::fs::write(&path, b"a\n").unwrap();
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .open(&path)
            .unwrap();
        // Our failed append wrote "b\n"; someone who does not lock appended "c\n" after it.
        file.write_all(b"b\nc\n").unwrap();
        roll_back(&file, &path, 2, 2);
        assert_eq!(
            std::fs::read(&path).unwrap(),
            b"a\nb\nc\n",
            "not ours: kept"
        );
        file.set_len(4).unwrap();
        roll_back(&file, &path, 2, 2);
        assert_eq!(std::fs::read(&path).unwrap(), b"a\n", "exactly ours: cut");
    }

    #[test]
    fn new_files_and_created_directories_are_synced_once() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("a").join("b");
        let (x, y): (Arc<str>, Arc<str>) = (Arc::from("x"), Arc::from("y"));
        let mut out = FileOutput::new(&dir);
        let attempt = out
            .write(encode(&[rec(&x, HOUR0, map(1)), rec(&y, HOUR0, map(2))]))
            .unwrap();
        assert_eq!(kinds(&attempt), ["ok", "ok"]);
        // Two created ancestors (a, a/b) plus two new files.
        assert_eq!(out.dir_syncs, 4);
        out.write(encode(&[rec(&x, HOUR0, map(3)), rec(&y, HOUR0, map(4))]))
            .unwrap();
        assert_eq!(
            out.dir_syncs, 4,
            "appending to existing files syncs no directory"
        );
        out.write(encode(&[rec(&x, HOUR0 + 3600, map(5))])).unwrap();
        assert_eq!(out.dir_syncs, 5, "one more for the next hour's new file");
        // A restarted process appending to the files it finds syncs nothing either.
        let mut again = FileOutput::new(&dir);
        again.write(encode(&[rec(&x, HOUR0, map(6))])).unwrap();
        assert_eq!(again.dir_syncs, 0);
    }
}
