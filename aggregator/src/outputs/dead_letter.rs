//! Dead letters: records an output could not deliver, kept on disk with the reason, so nothing
//! is dropped silently and `logferry-aggregator dead-letter replay` can re-send them after a
//! fix (a mapping corrected, a size limit raised).
//!
//! ## Replay
//! Two ways, never both on one buffer:
//! - In the running aggregator ([`Replayer`], admin `POST /dead-letter/replay`): the records
//!   go through the output instance the worker delivers with (the same file output with its
//!   lock, the same Elasticsearch client, ...), which already serialises or handles concurrent
//!   deliveries, and new dead letters go through the worker's own [`DeadLetters`]. Replays of
//!   one output run one at a time; shutdown interrupts a running one (its file stays).
//! - Alone ([`replay`]), only while the caller holds the buffer root's lock (`buffer.path/LOCK`),
//!   i.e. no aggregator runs on this buffer: an output built a second time would treat the live
//!   process's files as its own (the file output cuts "torn" last lines that are in fact
//!   another process's write in progress).
//!
//! ## Format
//! ```text
//! <buffer.path>/outputs/<output>/dead-letter/
//!   chunk-<seq>.sealed         the chunk file format of logferry_common::chunk (header + CRC'd
//!                              frames), so `logferry-aggregator inspect` reads it too; seq is the
//!                              Unix time in nanoseconds at writing (unique per directory)
//! frame payload (msgpack map):
//!   { "v": 1,
//!     "kind": "rejected" | "too_large" | "retry_timeout" | ...   (a FailureKind label, the
//!                                                               metric's reason label)
//!     "reason": "<what the sink said, e.g. ES error type: reason>",
//!     "at": <unix seconds>,
//!     "chunk_seq": <u64>, "chunk_created_ns": <u64>,   the original chunk's identity
//!     "frame": <u32>, "first_index": <u32>,             the records' place in it
//!     "payload": bin   a PackedForward request [tag, entries, {"size": n}] with the original
//!                      records, byte for byte }
//! ```
//! Consecutive records of one original frame with the same kind and reason share a frame. The
//! original place is kept so a replayed record gets the same Elasticsearch `_id` it would have
//! had: replaying a record that did arrive after all overwrites it instead of duplicating it.
//! Files written by older versions (whole chunks moved here unchanged) are read too: their
//! frames are plain PackedForward requests, listed with kind `retry_timeout`.
//!
//! ## Invariants
//! - A file is written under a temporary name, fsync'd, renamed to its chunk name, and the
//!   directory fsync'd before [`DeadLetters::write`] returns `Ok`: only then is the source
//!   chunk released. Any failure returns an error and the chunk stays in the buffer.
//! - The directory never grows past `dead_letter.max_size`: a write that would is refused
//!   ([`DeadLetterError::Full`], the chunk stays: `when_full = "block"`) or its records are
//!   dropped and counted (`when_full = "drop"`).
//! - Replay deletes a file only after each of its records was delivered or written again to a
//!   new dead-letter file (with the new reason); a replay that runs out of time leaves the file.
//! - A directory created for dead letters is made durable (each created directory's parent is
//!   fsync'd, by `logferry_common::chunk::create_dir_all_durable`) before the first file in it
//!   counts as written.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use logferry_common::chunk::{
    chunk_file_name, create_dir_all_durable, format::FrameHeader, parse_chunk_file_name,
    ChunkContents, ChunkHeader, ChunkState,
};
use logferry_common::forward::encode_entry;
use logferry_common::msgpack::{self, Token, DEFAULT_MAX_DEPTH};
use logferry_common::payload;
use logferry_common::telemetry;

use super::failure::{Failure, FailureKind, OutputError};
use super::health::OutputHealth;
use super::sink::Output;
use super::worker::{deliver_records, Ctx};
use crate::config::{DeadLetterConfig, DeadLetterWhenFull};
use crate::record::{Origin, Rec, Records};

/// Envelope version.
const VERSION: u64 = 1;
/// Longest reason kept (a sink's message can be long; the first bytes say what matters).
const MAX_REASON_BYTES: usize = 4096;

/// A record bound for dead letters.
#[derive(Debug, Clone)]
pub struct DeadItem {
    /// The record.
    pub rec: Rec,
    /// Why.
    pub failure: Failure,
}

/// Why dead letters could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum DeadLetterError {
    /// File system trouble.
    #[error("cannot {op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// The directory is at `dead_letter.max_size`.
    #[error(
        "dead-letter directory {dir} is full ({used} of {max} bytes used, {needed} more needed)"
    )]
    Full {
        /// The directory.
        dir: PathBuf,
        /// Bytes in it.
        used: u64,
        /// Its limit.
        max: u64,
        /// Bytes the write needed.
        needed: u64,
    },
    /// A file is not a readable chunk file.
    #[error("{path} is not a dead-letter chunk file: {reason}")]
    BadFile {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

/// The dead-letter directory of one output.
#[derive(Debug)]
pub struct DeadLetters {
    dir: PathBuf,
    output: String,
    config: DeadLetterConfig,
    last_seq: Mutex<u64>,
}

impl DeadLetters {
    /// Dead letters of `output` in `dir` (created on the first write).
    pub fn new(dir: impl Into<PathBuf>, output: &str, config: DeadLetterConfig) -> DeadLetters {
        DeadLetters {
            dir: dir.into(),
            output: output.to_owned(),
            config,
            last_seq: Mutex::new(0),
        }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Writes the records durably (blocking IO) and counts them in
    /// `logferry_dead_letter_records_total{output,reason}`.
    pub fn write(&self, items: &[DeadItem]) -> Result<(), DeadLetterError> {
        if items.is_empty() {
            return Ok(());
        }
        if !self.config.enabled {
            tracing::error!(output = %self.output, records = items.len(), reason = %items[0].failure.reason, "dead letters are disabled; records dropped");
            telemetry::DROPPED_RECORDS
                .with_label_values(&["dead_letter_disabled"])
                .inc_by(items.len() as u64);
            return Ok(());
        }
        let frames = encode_frames(items);
        let header_len = 64 + self.output.len() as u64;
        let needed: u64 = header_len + frames.iter().map(|(p, _)| p.len() as u64 + 16).sum::<u64>();
        let used = dir_bytes(&self.dir);
        let max = self.config.max_size.bytes();
        if used + needed > max {
            let err = DeadLetterError::Full {
                dir: self.dir.clone(),
                used,
                max,
                needed,
            };
            return match self.config.when_full {
                DeadLetterWhenFull::Block => Err(err),
                DeadLetterWhenFull::Drop => {
                    tracing::error!(output = %self.output, records = items.len(), error = %err, "dead letters dropped");
                    telemetry::DROPPED_RECORDS
                        .with_label_values(&["dead_letter_full"])
                        .inc_by(items.len() as u64);
                    Ok(())
                }
            };
        }
        self.write_file(&frames)?;
        for item in items {
            telemetry::DEAD_LETTER_RECORDS
                .with_label_values(&[&self.output, item.failure.kind.as_str()])
                .inc();
        }
        tracing::warn!(
            output = %self.output, records = items.len(), kind = items[0].failure.kind.as_str(),
            reason = %items[0].failure.reason, dir = %self.dir.display(),
            "records written to dead letters"
        );
        Ok(())
    }

    fn next_seq(&self) -> u64 {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        let mut last = self.last_seq.lock().unwrap_or_else(|e| e.into_inner());
        *last = now.max(*last + 1);
        *last
    }

    fn write_file(&self, frames: &[(Vec<u8>, u32)]) -> Result<(), DeadLetterError> {
        use std::io::Write;
        let io = |op: &'static str, path: &Path| {
            let path = path.to_owned();
            move |source| DeadLetterError::Io { op, path, source }
        };
        create_dir_all_durable(&self.dir).map_err(io("create", &self.dir))?;
        let seq = self.next_seq();
        let header = ChunkHeader::new(seq, self.output.clone(), SystemTime::now())
            .encode()
            .map_err(|e| DeadLetterError::BadFile {
                path: self.dir.clone(),
                reason: e.to_string(),
            })?;
        let mut data = header;
        for (payload, records) in frames {
            let fh = FrameHeader::new(payload, *records).map_err(|e| DeadLetterError::BadFile {
                path: self.dir.clone(),
                reason: e.to_string(),
            })?;
            data.extend_from_slice(&fh.encode());
            data.extend_from_slice(payload);
        }
        let tmp = self.dir.join(format!(".tmp-{seq}"));
        let result = (|| {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&tmp)
                .map_err(io("create", &tmp))?;
            f.write_all(&data).map_err(io("write", &tmp))?;
            f.sync_all().map_err(io("fsync", &tmp))?;
            // Another writer (a replay in another process) may have taken the name.
            let mut seq = seq;
            let final_path = loop {
                let p = self.dir.join(chunk_file_name(seq, ChunkState::Sealed));
                if !p.exists() {
                    break p;
                }
                seq += 1;
            };
            std::fs::rename(&tmp, &final_path).map_err(io("rename", &tmp))?;
            sync_dir(&self.dir)
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result
    }
}

#[cfg(test)]
thread_local! {
    /// Directories fsync'd by this thread (tests check which directories were made durable).
    static SYNCED_DIRS: std::cell::RefCell<Vec<PathBuf>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// fsyncs a directory, so the entries created or renamed in it are durable.
fn sync_dir(dir: &Path) -> Result<(), DeadLetterError> {
    #[cfg(test)]
    SYNCED_DIRS.with(|s| s.borrow_mut().push(dir.to_owned()));
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| DeadLetterError::Io {
            op: "fsync",
            path: dir.to_owned(),
            source,
        })
}

/// The dead-letter directory of an output whose buffer is in `buffer_dir`.
pub fn dir_of(buffer_dir: &Path) -> PathBuf {
    buffer_dir.join("dead-letter")
}

/// Bytes of the chunk files in `dir` (0 if it does not exist).
fn dir_bytes(dir: &Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return 0;
    };
    rd.flatten()
        .filter_map(|e| e.metadata().ok())
        .filter(|m| m.is_file())
        .map(|m| m.len())
        .sum()
}

/// Groups consecutive records of one frame with one failure, and encodes each group.
fn encode_frames(items: &[DeadItem]) -> Vec<(Vec<u8>, u32)> {
    let at = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut frames = Vec::new();
    let mut i = 0;
    while i < items.len() {
        let first = &items[i];
        let mut j = i + 1;
        while j < items.len() {
            let (prev, cur) = (&items[j - 1], &items[j]);
            let same = cur.rec.origin == first.rec.origin
                && cur.rec.frame == first.rec.frame
                && cur.rec.index == prev.rec.index + 1
                && cur.rec.tag == first.rec.tag
                && cur.failure == first.failure;
            if !same {
                break;
            }
            j += 1;
        }
        let group = &items[i..j];
        let mut entries = Vec::new();
        for item in group {
            encode_entry(item.rec.time, &item.rec.record, &mut entries);
        }
        let packed = payload::encode(&first.rec.tag, &entries, group.len() as u32);
        let mut reason = first.failure.reason.clone();
        if reason.len() > MAX_REASON_BYTES {
            let mut cut = MAX_REASON_BYTES;
            while !reason.is_char_boundary(cut) {
                cut -= 1;
            }
            reason.truncate(cut);
        }
        let mut env = Vec::with_capacity(packed.len() + reason.len() + 128);
        msgpack::write_map_len(&mut env, 9);
        msgpack::write_str(&mut env, "v");
        msgpack::write_uint(&mut env, VERSION);
        msgpack::write_str(&mut env, "kind");
        msgpack::write_str(&mut env, first.failure.kind.as_str());
        msgpack::write_str(&mut env, "reason");
        msgpack::write_str(&mut env, &reason);
        msgpack::write_str(&mut env, "at");
        msgpack::write_uint(&mut env, at);
        msgpack::write_str(&mut env, "chunk_seq");
        msgpack::write_uint(&mut env, first.rec.origin.seq);
        msgpack::write_str(&mut env, "chunk_created_ns");
        msgpack::write_uint(&mut env, first.rec.origin.created_ns);
        msgpack::write_str(&mut env, "frame");
        msgpack::write_uint(&mut env, u64::from(first.rec.frame));
        msgpack::write_str(&mut env, "first_index");
        msgpack::write_uint(&mut env, u64::from(first.rec.index));
        msgpack::write_str(&mut env, "payload");
        msgpack::write_bin(&mut env, &packed);
        frames.push((env, group.len() as u32));
        i = j;
    }
    frames
}

/// One frame of a dead-letter file, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadGroup {
    /// Bounded kind (`rejected`, `too_large`, `retry_timeout`, ...).
    pub kind: String,
    /// The sink's reason.
    pub reason: String,
    /// Unix seconds when it was written (0 when unknown).
    pub at: u64,
    /// The original chunk.
    pub origin: Origin,
    /// The original frame.
    pub frame: u32,
    /// Index of the first record in the original frame.
    pub first_index: u32,
    /// The records' tag.
    pub tag: String,
    /// Records in the group.
    pub records: u32,
    /// The PackedForward payload.
    pub payload: Bytes,
}

/// One dead-letter file.
#[derive(Debug, Clone)]
pub struct DeadFile {
    /// The file.
    pub path: PathBuf,
    /// Its groups.
    pub groups: Vec<DeadGroup>,
    /// Frames that failed their CRC (skipped).
    pub bad_frames: u32,
}

impl DeadFile {
    /// Records in the file.
    pub fn records(&self) -> u64 {
        self.groups.iter().map(|g| u64::from(g.records)).sum()
    }

    /// The records, ready to send again, each with its original place.
    pub fn to_records(&self) -> Records {
        let mut out = Records::default();
        for g in &self.groups {
            out.push_frame(g.origin, g.frame, g.first_index, &g.payload, g.records);
        }
        out
    }
}

/// The dead-letter files of a directory, oldest first (an empty list if it does not exist).
pub fn list_files(dir: &Path) -> Result<Vec<PathBuf>, DeadLetterError> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(DeadLetterError::Io {
                op: "list",
                path: dir.to_owned(),
                source,
            })
        }
    };
    let mut files: Vec<(u64, PathBuf)> = rd
        .flatten()
        .filter_map(|e| {
            let name = e.file_name();
            let (seq, state) = parse_chunk_file_name(name.to_str()?)?;
            (state == ChunkState::Sealed).then(|| (seq, e.path()))
        })
        .collect();
    files.sort();
    Ok(files.into_iter().map(|(_, p)| p).collect())
}

/// Reads and decodes one dead-letter file.
pub fn read_file(path: &Path) -> Result<DeadFile, DeadLetterError> {
    let data = std::fs::read(path).map_err(|source| DeadLetterError::Io {
        op: "read",
        path: path.to_owned(),
        source,
    })?;
    let contents =
        ChunkContents::parse(Bytes::from(data)).map_err(|e| DeadLetterError::BadFile {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
    let mut groups = Vec::new();
    for (i, (payload, records)) in contents.payloads().enumerate() {
        match decode_envelope(&payload) {
            Some(g) => groups.push(g),
            None => {
                // An older version moved whole chunks here: plain PackedForward frames.
                let tag = payload::decode(&payload)
                    .map(|p| p.tag.to_owned())
                    .map_err(|e| DeadLetterError::BadFile {
                        path: path.to_owned(),
                        reason: format!("frame {i}: {e}"),
                    })?;
                groups.push(DeadGroup {
                    kind: FailureKind::RetryTimeout.as_str().into(),
                    reason: "whole chunk moved to dead letters by an older version".into(),
                    at: 0,
                    origin: Origin {
                        seq: contents.header().seq,
                        created_ns: contents
                            .header()
                            .created_at()
                            .duration_since(UNIX_EPOCH)
                            .map(|d| d.as_nanos() as u64)
                            .unwrap_or(0),
                    },
                    frame: i as u32,
                    first_index: 0,
                    tag,
                    records,
                    payload,
                });
            }
        }
    }
    Ok(DeadFile {
        path: path.to_owned(),
        groups,
        bad_frames: contents.bad_frames(),
    })
}

fn decode_envelope(buf: &Bytes) -> Option<DeadGroup> {
    let mut cur: &[u8] = buf;
    let n = msgpack::read_map_len(&mut cur).ok()?;
    let mut g = DeadGroup {
        kind: String::new(),
        reason: String::new(),
        at: 0,
        origin: Origin::default(),
        frame: 0,
        first_index: 0,
        tag: String::new(),
        records: 0,
        payload: Bytes::new(),
    };
    let mut version = None;
    for _ in 0..n {
        let key = msgpack::read_str(&mut cur).ok()?;
        let text = |cur: &mut &[u8]| -> Option<String> {
            Some(String::from_utf8_lossy(msgpack::read_str(cur).ok()?).into_owned())
        };
        match key {
            b"v" => version = Some(msgpack::read_u64(&mut cur).ok()?),
            b"kind" => g.kind = text(&mut cur)?,
            b"reason" => g.reason = text(&mut cur)?,
            b"at" => g.at = msgpack::read_u64(&mut cur).ok()?,
            b"chunk_seq" => g.origin.seq = msgpack::read_u64(&mut cur).ok()?,
            b"chunk_created_ns" => g.origin.created_ns = msgpack::read_u64(&mut cur).ok()?,
            b"frame" => g.frame = u32::try_from(msgpack::read_u64(&mut cur).ok()?).ok()?,
            b"first_index" => {
                g.first_index = u32::try_from(msgpack::read_u64(&mut cur).ok()?).ok()?
            }
            b"payload" => match msgpack::read_token(&mut cur).ok()? {
                Token::Bin(b) => g.payload = buf.slice_ref(b),
                _ => return None,
            },
            _ => {
                msgpack::skip_value(&mut cur, DEFAULT_MAX_DEPTH).ok()?;
            }
        }
    }
    if version != Some(VERSION) || g.payload.is_empty() {
        return None;
    }
    let p = payload::decode(&g.payload).ok()?;
    g.tag = p.tag.to_owned();
    g.records = logferry_common::forward::Entries::new(p.entries).count() as u32;
    Some(g)
}

/// What `dead-letter replay` did (also the JSON body of admin `POST /dead-letter/replay`).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ReplayReport {
    /// Files whose records were all delivered or written back as new dead letters (deleted).
    pub files_done: u64,
    /// Files left in place because some records still failed after the timeout.
    pub files_left: u64,
    /// Records delivered.
    pub delivered: u64,
    /// Records refused again (written to new dead-letter files with the new reason).
    pub dead_again: u64,
    /// Records of the files left in place (they still fail).
    pub still_failing: u64,
    /// Dead-letter files in the directory afterwards (left ones, new ones, and files that
    /// `kind` did not select).
    pub remaining_files: u64,
    /// Records in those files.
    pub remaining_records: u64,
    /// The replay stopped early (shutdown): the files not done yet stay.
    pub interrupted: bool,
}

/// Why a replay could not run.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// The output could not be built.
    #[error("output {name}: {source}")]
    Output {
        /// The output.
        name: String,
        /// What failed.
        source: OutputError,
    },
    /// Dead-letter files could not be listed, read or written.
    #[error(transparent)]
    DeadLetters(#[from] DeadLetterError),
    /// A replay of this output is already running in this process.
    #[error("a replay of output {0} is already running; try again when it has finished")]
    Busy(String),
    /// The aggregator is shutting down.
    #[error("the aggregator is shutting down")]
    ShuttingDown,
}

/// Re-sends the dead letters in `dir` through output `name` as configured now, with an output
/// built here. Only for a process holding the buffer root's lock (no aggregator running on
/// it): see the module docs. Files are done one at a time, oldest first.
pub async fn replay(
    name: &str,
    config: &crate::config::OutputConfig,
    dir: &Path,
    timeout: std::time::Duration,
    kind: Option<&str>,
) -> Result<ReplayReport, ReplayError> {
    let output = Output::build(name, config)
        .await
        .map_err(|source| ReplayError::Output {
            name: name.to_owned(),
            source,
        })?;
    let ctx = Ctx {
        name: name.to_owned(),
        output: output.clone(),
        retry: config.retry().clone(),
        dead_letters: std::sync::Arc::new(DeadLetters::new(
            dir,
            name,
            config.dead_letter().clone(),
        )),
        health: std::sync::Arc::new(OutputHealth::new(name, std::time::Duration::ZERO)),
        prepare: None,
    };
    let never = tokio_util::sync::CancellationToken::new();
    let report = replay_with(&ctx, timeout, kind, &never).await;
    output.close().await;
    report
}

/// Replays one output's dead letters inside the running aggregator, through the worker's own
/// output, dead letters and health (see the module docs).
#[derive(Debug)]
pub struct Replayer {
    ctx: Ctx,
    /// One replay at a time.
    gate: tokio::sync::Mutex<()>,
    /// Cancelled when the aggregator starts shutting down.
    stop: tokio_util::sync::CancellationToken,
}

impl Replayer {
    /// A replayer sharing `output`, `dead_letters` and `health` with the output's worker.
    pub fn new(
        name: &str,
        output: Output,
        retry: crate::config::RetryConfig,
        dead_letters: std::sync::Arc<DeadLetters>,
        health: std::sync::Arc<OutputHealth>,
        stop: tokio_util::sync::CancellationToken,
    ) -> Replayer {
        Replayer {
            ctx: Ctx {
                name: name.to_owned(),
                output,
                retry,
                dead_letters,
                health,
                // Dead letters are sent as they were kept.
                prepare: None,
            },
            gate: tokio::sync::Mutex::new(()),
            stop,
        }
    }

    /// Replays the dead letters now; [`ReplayError::Busy`] while another replay of this output
    /// runs, [`ReplayError::ShuttingDown`] once shutdown began.
    pub async fn replay(
        &self,
        timeout: std::time::Duration,
        kind: Option<&str>,
    ) -> Result<ReplayReport, ReplayError> {
        if self.stop.is_cancelled() {
            return Err(ReplayError::ShuttingDown);
        }
        let Ok(_one) = self.gate.try_lock() else {
            return Err(ReplayError::Busy(self.ctx.name.clone()));
        };
        replay_with(&self.ctx, timeout, kind, &self.stop).await
    }
}

/// Replays the files in `ctx.dead_letters`' directory through `ctx.output`, oldest first.
async fn replay_with(
    ctx: &Ctx,
    timeout: std::time::Duration,
    kind: Option<&str>,
    stop: &tokio_util::sync::CancellationToken,
) -> Result<ReplayReport, ReplayError> {
    let dir = ctx.dead_letters.dir().to_owned();
    let retry = crate::config::RetryConfig {
        initial: ctx.retry.initial.min(std::time::Duration::from_secs(1)),
        max_interval: ctx
            .retry
            .max_interval
            .min(std::time::Duration::from_secs(10)),
        timeout,
        forever: false,
    };
    let mut report = ReplayReport::default();
    for path in list_files(&dir)? {
        let file = read_file(&path)?;
        if let Some(k) = kind {
            if !file.groups.iter().any(|g| g.kind == k) {
                continue;
            }
        }
        let recs = file.to_records().recs;
        let total = recs.len() as u64;
        let Some(dead) = deliver_records(ctx, recs, &retry, stop).await else {
            report.interrupted = true;
            break;
        };
        if dead
            .iter()
            .any(|d| d.failure.kind == FailureKind::RetryTimeout)
        {
            tracing::error!(file = %path.display(), "records still fail; the file stays");
            report.files_left += 1;
            report.still_failing += total;
            continue;
        }
        let dl = std::sync::Arc::clone(&ctx.dead_letters);
        let again = dead.clone();
        tokio::task::spawn_blocking(move || dl.write(&again))
            .await
            .map_err(|e| DeadLetterError::Io {
                op: "write",
                path: dir.clone(),
                source: std::io::Error::other(e.to_string()),
            })??;
        std::fs::remove_file(&path).map_err(|source| DeadLetterError::Io {
            op: "delete",
            path: path.clone(),
            source,
        })?;
        report.files_done += 1;
        report.dead_again += dead.len() as u64;
        report.delivered += total - dead.len() as u64;
    }
    for path in list_files(&dir)? {
        report.remaining_files += 1;
        // An unreadable file still counts as remaining; `dead-letter list` says what is wrong.
        if let Ok(file) = read_file(&path) {
            report.remaining_records += file.records();
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use logferry_common::forward::EventTime;
    use std::sync::Arc;

    fn rec(frame: u32, index: u32, v: serde_json::Value) -> Rec {
        Rec {
            origin: Origin {
                seq: 7,
                created_ns: 99,
            },
            frame,
            index,
            tag: Arc::from("app.web"),
            time: EventTime::new(1_700_000_000, 5),
            record: Bytes::from(rmp_serde::to_vec_named(&v).unwrap()),
        }
    }

    fn item(frame: u32, index: u32, kind: FailureKind, reason: &str) -> DeadItem {
        DeadItem {
            rec: rec(frame, index, serde_json::json!({"i": index})),
            failure: Failure::new(kind, reason),
        }
    }

    #[test]
    fn write_then_read_back_grouped() {
        let dir = tempfile::tempdir().unwrap();
        let dl = DeadLetters::new(dir.path().join("dl"), "es", DeadLetterConfig::default());
        let items = vec![
            item(0, 3, FailureKind::Rejected, "mapping: x"),
            item(0, 4, FailureKind::Rejected, "mapping: x"),
            item(0, 6, FailureKind::Rejected, "mapping: x"),
            item(1, 0, FailureKind::TooLarge, "big"),
        ];
        dl.write(&items).unwrap();
        let files = list_files(dl.dir()).unwrap();
        assert_eq!(files.len(), 1);
        let f = read_file(&files[0]).unwrap();
        assert_eq!(f.records(), 4);
        let shape: Vec<(u32, u32, u32, &str)> = f
            .groups
            .iter()
            .map(|g| (g.frame, g.first_index, g.records, g.kind.as_str()))
            .collect();
        assert_eq!(
            shape,
            vec![
                (0, 3, 2, "rejected"),
                (0, 6, 1, "rejected"),
                (1, 0, 1, "too_large")
            ]
        );
        let recs = f.to_records().recs;
        let places: Vec<(u32, u32)> = recs.iter().map(|r| (r.frame, r.index)).collect();
        assert_eq!(places, vec![(0, 3), (0, 4), (0, 6), (1, 0)]);
        assert_eq!(recs[1].record, items[1].rec.record);
        assert_eq!(recs[1].origin, items[1].rec.origin);
        assert_eq!(recs[1].time, items[1].rec.time);
        // Readable by the generic chunk inspector too.
        let reports = logferry_common::chunk::inspect_dir(dl.dir()).unwrap();
        assert!(reports.iter().all(|r| r.is_clean()), "{reports:?}");
    }

    #[test]
    fn full_directory_blocks_or_drops() {
        let dir = tempfile::tempdir().unwrap();
        let config = DeadLetterConfig {
            max_size: logferry_common::config::ByteSize(2000),
            ..DeadLetterConfig::default()
        };
        let dl = DeadLetters::new(dir.path().join("dl"), "es", config.clone());
        let big = |i| DeadItem {
            rec: rec(0, i, serde_json::json!({"x": "y".repeat(900)})),
            failure: Failure::new(FailureKind::TooLarge, "big"),
        };
        dl.write(&[big(0)]).unwrap();
        assert!(matches!(
            dl.write(&[big(1)]),
            Err(DeadLetterError::Full { .. })
        ));
        assert_eq!(list_files(dl.dir()).unwrap().len(), 1);
        let dropping = DeadLetters::new(
            dir.path().join("dl"),
            "es",
            DeadLetterConfig {
                when_full: DeadLetterWhenFull::Drop,
                ..config
            },
        );
        dropping.write(&[big(1)]).unwrap();
        assert_eq!(list_files(dl.dir()).unwrap().len(), 1);
    }

    #[test]
    fn a_new_file_is_made_durable_in_its_new_directory() {
        let dir = tempfile::tempdir().unwrap();
        let dl_dir = dir.path().join("outputs/es/dead-letter");
        std::fs::create_dir_all(dir.path().join("outputs")).unwrap();
        let dl = DeadLetters::new(&dl_dir, "es", DeadLetterConfig::default());
        SYNCED_DIRS.with(|s| s.borrow_mut().clear());
        dl.write(&[item(0, 0, FailureKind::Rejected, "r")]).unwrap();
        assert!(dl_dir.is_dir());
        // `outputs/es` and `dead-letter` were created by `create_dir_all_durable`, which syncs
        // their parents (tested in logferry-common); here, the directory holding the new file.
        let synced = SYNCED_DIRS.with(|s| s.borrow().clone());
        assert_eq!(synced, vec![dl_dir]);
    }

    #[test]
    fn a_write_that_cannot_happen_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        // A regular file where the directory should be.
        let blocked = dir.path().join("dl");
        std::fs::write(&blocked, b"x").unwrap();
        let dl = DeadLetters::new(&blocked, "es", DeadLetterConfig::default());
        assert!(matches!(
            dl.write(&[item(0, 0, FailureKind::Rejected, "r")]),
            Err(DeadLetterError::Io { .. })
        ));
    }
}
