//! Startup recovery: turn whatever a crash left in the buffer directory into sealed chunks.
//!
//! Recovery runs in [`Buffer::open`](super::Buffer::open) before the writer thread starts, so
//! it has the directory to itself. It trusts nothing but the bytes: no state file says what
//! "should" be there.
//!
//! ## Invariants
//! - **Nothing is deleted that could hold an acknowledged frame.** A file with a bad header is
//!   moved to `quarantine/`, never deleted. Only a `.open` file whose header is incomplete
//!   (torn creation: no frame in it can have been acknowledged, as an ack needs a sync after
//!   the header was written) or a file holding no frame at all is deleted.
//! - **A torn tail is only what no valid frame follows.** Acknowledged frames are complete and
//!   pass their CRC, so truncating at the start of a [`Scanned::TornTail`] never removes one.
//! - **Damaged middle frames stay in the file.** A sealed file is not rewritten; the reader
//!   skips the same frames again. Only the tail is truncated.
//! - **Every change is made durable before the writer starts**: a truncated file is fsync'd,
//!   and the directory is fsync'd after renames and deletions, so a second crash right after
//!   recovery finds the same state. A directory recovery creates (the buffer's, any missing
//!   ancestor, `quarantine/`) is made durable in its parent ([`create_dir_all_durable`]).
//! - **Sequence numbers continue after the highest one seen**, including quarantined files, so
//!   no number still on disk is reused and quarantine names never collide with new chunks (an
//!   emptied buffer starts again at 1; see invariant 5).
//! - **Never panics**, whatever the bytes; every parser used is in [`format`](mod@format)(super::format).
//!
//! Frame lengths are bounded by the format's own limit ([`format::MAX_FRAME_PAYLOAD`]) and by the
//! file's size, not by `max_frame_bytes`: that option limits appends, and lowering it in the
//! config must not turn acknowledged frames already on disk into "damage" that a torn-tail
//! truncation would remove. A frame still has to pass its CRC. The reader does the same.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

use super::format::{self, parse_chunk_file_name, ChunkHeader, ChunkState, FrameScanner, Scanned};
use super::{BufferOptions, ChunkError, SealedChunk};
use crate::telemetry;

/// The subdirectory where files recovery cannot trust are moved.
pub(super) const QUARANTINE_DIR: &str = "quarantine";

/// What recovery found and did, returned by [`Buffer::open`](super::Buffer::open).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Recovered {
    /// Sealed chunks handed to the receiver (recovered `.open` files included).
    pub sealed_chunks: u64,
    /// Records in their valid frames.
    pub records: u64,
    /// Their bytes on disk.
    pub bytes: u64,
    /// Bytes cut off torn tails (and of torn-creation files deleted).
    pub truncated_bytes: u64,
    /// Damaged frames found in the middle of files (left in place; the reader skips them).
    pub bad_frames: u64,
    /// Files moved to `quarantine/` (their new paths).
    pub quarantined: Vec<PathBuf>,
}

/// Recovery's result for [`Buffer::open`](super::Buffer::open).
#[derive(Debug)]
pub(super) struct Outcome {
    pub(super) chunks: Vec<SealedChunk>,
    pub(super) next_seq: u64,
    pub(super) report: Recovered,
}

struct Ctx<'a> {
    options: &'a BufferOptions,
    report: Recovered,
    dir_dirty: bool,
}

/// Scans `options.dir` (creating it if missing); see the module docs.
pub(super) fn recover(options: &BufferOptions) -> Result<Outcome, ChunkError> {
    let dir = &options.dir;
    // The new directories' own entries (the buffer's and every missing ancestor's, such as
    // `outputs/` and the root) must survive a crash too, or the first chunks' names would
    // vanish with them.
    create_dir_all_durable(dir).map_err(ChunkError::io("create directory", dir))?;
    let mut files = list_chunk_files(dir)?;
    // By seq; for a (never expected) duplicate seq, `.open` sorts first and the `.sealed`
    // twin is the one quarantined below.
    files.sort();
    let mut max_seq = list_chunk_files(&dir.join(QUARANTINE_DIR))
        .unwrap_or_default()
        .iter()
        .map(|(seq, _, _)| *seq)
        .max();

    let mut ctx = Ctx {
        options,
        report: Recovered::default(),
        dir_dirty: false,
    };
    let mut chunks: Vec<SealedChunk> = Vec::new();
    let mut last_seq = None;
    for (seq, state, path) in files {
        max_seq = max_seq.max(Some(seq));
        if last_seq == Some(seq) {
            ctx.quarantine(&path, "a second file with the same sequence number")?;
            continue;
        }
        last_seq = Some(seq);
        if let Some(chunk) = ctx.recover_file(seq, state, &path)? {
            ctx.report.sealed_chunks += 1;
            ctx.report.records += chunk.records;
            ctx.report.bytes += chunk.bytes;
            chunks.push(chunk);
        }
    }
    if ctx.dir_dirty {
        // Renames (.open → .sealed, → quarantine/) and deletions become durable here, before
        // the writer creates new files; fsyncing once covers them all.
        sync_dir(dir)?;
    }
    let next_seq = match max_seq {
        None => 1,
        Some(max) => max
            .checked_add(1)
            .ok_or_else(|| ChunkError::SeqExhausted { dir: dir.clone() })?,
    };
    let report = ctx.report;
    if report != Recovered::default() {
        // Debug only: each repair was logged at warn/error as it happened, and the caller
        // gets this summary as `Recovered`.
        tracing::debug!(
            buffer = %options.name,
            chunks = report.sealed_chunks,
            records = report.records,
            bytes = report.bytes,
            truncated_bytes = report.truncated_bytes,
            bad_frames = report.bad_frames,
            quarantined = report.quarantined.len(),
            "buffer recovered"
        );
    }
    Ok(Outcome {
        chunks,
        next_seq,
        report,
    })
}

impl Ctx<'_> {
    fn name(&self) -> &str {
        &self.options.name
    }

    /// The length of the header this buffer writes.
    fn own_header_len(&self) -> usize {
        format::HEADER_FIXED_LEN + self.options.name.len() + format::HEADER_CRC_LEN
    }

    fn corruption(&self, action: &str, n: u64) {
        telemetry::BUFFER_CORRUPTION
            .with_label_values(&[self.name(), action])
            .inc_by(n);
    }

    fn recover_file(
        &mut self,
        seq: u64,
        state: ChunkState,
        path: &Path,
    ) -> Result<Option<SealedChunk>, ChunkError> {
        let data = match fs::read(path) {
            Ok(data) => data,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                // Unreadable (EIO, permissions): not ours to judge, and not safe to deliver.
                tracing::error!(buffer = %self.name(), path = %path.display(), error = %e, "cannot read chunk file");
                self.quarantine(path, "unreadable")?;
                return Ok(None);
            }
        };
        let (header, start) = match ChunkHeader::parse(&data) {
            Ok(parsed) => parsed,
            Err(format::HeaderError::Short { .. })
                if state == ChunkState::Open && data.len() < self.own_header_len() =>
            {
                // Torn creation: shorter than the header this buffer writes, so the crash came
                // before the header was synced and no frame of this file was ever acknowledged.
                // (A longer file with a short-looking header has a damaged `key_len`: that one
                // is quarantined below, since it may hold acknowledged frames.)
                tracing::info!(buffer = %self.name(), path = %path.display(), bytes = data.len(), "removing a chunk file torn at creation");
                self.remove(path)?;
                self.report.truncated_bytes += data.len() as u64;
                return Ok(None);
            }
            Err(e) => {
                self.quarantine(path, &e.to_string())?;
                return Ok(None);
            }
        };
        if header.seq != seq {
            self.quarantine(
                path,
                &format!("header says seq {} but the name says {seq}", header.seq),
            )?;
            return Ok(None);
        }
        if header.key != self.options.name {
            tracing::warn!(buffer = %self.name(), key = %header.key, path = %path.display(), "chunk written by a buffer of another name; keeping it");
        }

        let mut frames = 0u64;
        let mut records = 0u64;
        let mut bad = 0u64;
        let mut keep = data.len();
        for item in FrameScanner::new(&data, start, format::MAX_FRAME_PAYLOAD) {
            match item {
                Scanned::Frame { header, .. } => {
                    frames += 1;
                    records += u64::from(header.records);
                }
                Scanned::Bad { offset, len, .. } => {
                    bad += 1;
                    tracing::warn!(buffer = %self.name(), path = %path.display(), offset, len, "damaged frame skipped");
                }
                Scanned::TornTail { offset, .. } => keep = offset,
            }
        }
        if bad > 0 {
            self.report.bad_frames += bad;
            self.corruption("bad_frame", bad);
        }
        if frames == 0 && bad == 0 {
            // Only a header (and maybe a torn first frame): nothing to deliver.
            self.report.truncated_bytes += (data.len() - start) as u64;
            self.remove(path)?;
            return Ok(None);
        }
        if keep < data.len() {
            let cut = (data.len() - keep) as u64;
            tracing::warn!(buffer = %self.name(), path = %path.display(), bytes = cut, "truncating a torn tail");
            truncate(path, keep as u64)?;
            self.report.truncated_bytes += cut;
            self.corruption("truncated", 1);
        }
        let path = match state {
            ChunkState::Sealed => path.to_owned(),
            ChunkState::Open => {
                let sealed = path.with_file_name(format::chunk_file_name(seq, ChunkState::Sealed));
                fs::rename(path, &sealed).map_err(ChunkError::io("rename", path))?;
                self.dir_dirty = true;
                sealed
            }
        };
        Ok(Some(SealedChunk {
            seq,
            path,
            bytes: keep as u64,
            records,
            created_at: header.created_at(),
        }))
    }

    fn remove(&mut self, path: &Path) -> Result<(), ChunkError> {
        match fs::remove_file(path) {
            Ok(()) => {
                self.dir_dirty = true;
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(ChunkError::Io {
                op: "remove",
                path: path.to_owned(),
                source,
            }),
        }
    }

    /// Moves `path` into `quarantine/` (see [`quarantine`]) and notes it in the report.
    fn quarantine(&mut self, path: &Path, reason: &str) -> Result<(), ChunkError> {
        let target = quarantine(self.options, path, reason)?;
        // The buffer directory lost an entry; synced once at the end of recovery.
        self.dir_dirty = true;
        self.report.quarantined.push(target);
        Ok(())
    }
}

/// Moves the chunk file `path` of the buffer of `options` into its `quarantine/` directory
/// (created durably if missing) under a free name, and fsyncs that directory, so the file
/// cannot get lost between the two directories in a crash. Logs the move with `reason` and
/// counts it in `logferry_buffer_corruption_total{action="quarantined"}`. Returns the new path.
///
/// The buffer directory itself is not synced: if a crash undoes the move, the file is found
/// there again and judged again. Used by recovery and by
/// [`Buffer::quarantine`](super::Buffer::quarantine).
pub(super) fn quarantine(
    options: &BufferOptions,
    path: &Path,
    reason: &str,
) -> Result<PathBuf, ChunkError> {
    let qdir = options.dir.join(QUARANTINE_DIR);
    create_dir_all_durable(&qdir).map_err(ChunkError::io("create directory", &qdir))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut target = qdir.join(&name);
    let mut n = 1u32;
    while target.exists() {
        target = qdir.join(format!("{name}.{n}"));
        n += 1;
    }
    fs::rename(path, &target).map_err(ChunkError::io("rename", path))?;
    // The quarantine directory now holds a new entry.
    sync_dir(&qdir)?;
    tracing::error!(
        buffer = %options.name,
        path = %path.display(),
        moved_to = %target.display(),
        reason,
        "chunk file quarantined"
    );
    telemetry::BUFFER_CORRUPTION
        .with_label_values(&[options.name.as_str(), "quarantined"])
        .inc();
    Ok(target)
}

/// `(seq, state, path)` of each file in `dir` named like a chunk; other entries are ignored.
fn list_chunk_files(dir: &Path) -> Result<Vec<(u64, ChunkState, PathBuf)>, ChunkError> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(ChunkError::io("read directory", dir))? {
        let entry = entry.map_err(ChunkError::io("read directory", dir))?;
        let Some((seq, state)) = entry.file_name().to_str().and_then(parse_chunk_file_name) else {
            continue;
        };
        if entry.file_type().is_ok_and(|t| t.is_file()) {
            out.push((seq, state, entry.path()));
        }
    }
    Ok(out)
}

fn truncate(path: &Path, len: u64) -> Result<(), ChunkError> {
    let file = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(ChunkError::io("open", path))?;
    file.set_len(len)
        .map_err(ChunkError::io("truncate", path))?;
    // The new length is metadata needed to read the file back: fsync, not fdatasync.
    file.sync_all().map_err(ChunkError::io("fsync", path))
}

/// Creates `dir` and every missing ancestor, and fsyncs the parent of each directory it
/// created, outermost first, so that the new entries survive a crash: a durable file in a
/// directory whose own name was lost is lost with it. An existing directory costs no sync.
///
/// Use it for every directory that will hold durable data (buffer roots, buffer directories,
/// `quarantine/`, dead letters, the file output's directory). Returns how many directories it
/// created, which is how many parents it fsync'd.
///
/// # Errors
/// A directory cannot be created (or something else than a directory is in the way), or a
/// parent cannot be fsync'd.
pub fn create_dir_all_durable(dir: &Path) -> io::Result<usize> {
    let mut missing = Vec::new();
    let mut probe = dir;
    while !probe.as_os_str().is_empty() && !probe.is_dir() {
        missing.push(probe);
        match probe.parent() {
            Some(parent) => probe = parent,
            None => break,
        }
    }
    let created_count = missing.len();
    for created in missing.into_iter().rev() {
        match fs::create_dir(created) {
            Ok(()) => {}
            // Created meanwhile by someone else, who may not have synced it yet: sync anyway.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && created.is_dir() => {}
            Err(e) => return Err(e),
        }
        let parent = created
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        fsync_dir(parent)?;
    }
    Ok(created_count)
}

/// fsyncs a directory, making the creations, renames and deletions in it durable.
pub(super) fn sync_dir(dir: &Path) -> Result<(), ChunkError> {
    fsync_dir(dir).map_err(ChunkError::io("fsync directory", dir))
}

#[cfg(test)]
thread_local! {
    /// Directories fsync'd by this thread (tests check which directories were made durable).
    pub(super) static SYNCED_DIRS: std::cell::RefCell<Vec<PathBuf>> = const { std::cell::RefCell::new(Vec::new()) };
}

fn fsync_dir(dir: &Path) -> io::Result<()> {
    #[cfg(test)]
    SYNCED_DIRS.with(|s| s.borrow_mut().push(dir.to_owned()));
    File::open(dir).and_then(|d| d.sync_all())
}
