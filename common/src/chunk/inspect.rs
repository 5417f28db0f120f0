//! Offline inspection of a buffer directory: what is in each chunk file, changing nothing.
//!
//! For operators ("why is this buffer 3 GiB?", "what did recovery quarantine?") and for tests.
//! It opens files read-only and never truncates, renames or deletes, so it is safe to run next
//! to a live buffer (a file that changes while read is reported as it was read).

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use super::format::{self, parse_chunk_file_name, ChunkHeader, ChunkState, FrameScanner, Scanned};
use super::recovery::QUARANTINE_DIR;
use super::ChunkError;

/// A chunk file's state, as its name says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FileState {
    /// `chunk-<seq>.open`.
    Open,
    /// `chunk-<seq>.sealed`.
    Sealed,
    /// A name that is not a chunk name (e.g. a quarantined duplicate `chunk-….sealed.1`).
    Unknown,
}

impl fmt::Display for FileState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FileState::Open => "open",
            FileState::Sealed => "sealed",
            FileState::Unknown => "unknown",
        })
    }
}

/// What [`inspect_dir`] found in one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkReport {
    /// The file.
    pub path: PathBuf,
    /// The sequence number from its name.
    pub seq: Option<u64>,
    /// The state from its name.
    pub state: FileState,
    /// Whether it is in `quarantine/`.
    pub quarantined: bool,
    /// File size.
    pub bytes: u64,
    /// Whether the header parsed and its CRC matched.
    pub header_ok: bool,
    /// Why not (header or read error).
    pub header_error: Option<String>,
    /// The header's key (buffer name).
    pub key: Option<String>,
    /// Valid frames.
    pub frames_ok: u64,
    /// Damaged frames followed by a valid one.
    pub bad_frames: u64,
    /// Bytes at the end holding no valid frame (recovery would truncate them).
    pub torn_tail_bytes: u64,
    /// Records in the valid frames.
    pub records: u64,
    /// Creation time from the header.
    pub created_at: Option<SystemTime>,
}

impl ChunkReport {
    /// Whether the file is entirely sound.
    pub fn is_clean(&self) -> bool {
        self.header_ok && self.bad_frames == 0 && self.torn_tail_bytes == 0
    }
}

impl fmt::Display for ChunkReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} state={} bytes={}",
            self.path.display(),
            self.state,
            self.bytes
        )?;
        if self.quarantined {
            f.write_str(" quarantined")?;
        }
        match &self.header_error {
            Some(e) => write!(f, " header=BAD({e})"),
            None => write!(
                f,
                " frames={} records={} bad_frames={} torn_tail_bytes={}",
                self.frames_ok, self.records, self.bad_frames, self.torn_tail_bytes
            ),
        }
    }
}

/// Reports on every chunk file in `dir` and in `dir/quarantine/`, in name order. Read-only.
///
/// Files in `dir` are included when their name starts with `chunk-`; every file in
/// `quarantine/` is included.
///
/// # Errors
/// [`ChunkError::Io`] if `dir` cannot be listed. Unreadable files are reported, not errors.
pub fn inspect_dir(dir: &Path) -> Result<Vec<ChunkReport>, ChunkError> {
    let mut reports = list(dir, false)?;
    let qdir = dir.join(QUARANTINE_DIR);
    if qdir.is_dir() {
        reports.extend(list(&qdir, true)?);
    }
    Ok(reports)
}

fn list(dir: &Path, quarantined: bool) -> Result<Vec<ChunkReport>, ChunkError> {
    let mut paths = Vec::new();
    for entry in fs::read_dir(dir).map_err(ChunkError::io("read directory", dir))? {
        let entry = entry.map_err(ChunkError::io("read directory", dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if entry.file_type().is_ok_and(|t| t.is_file())
            && (quarantined || name.starts_with("chunk-"))
        {
            paths.push((name, entry.path()));
        }
    }
    paths.sort();
    Ok(paths
        .into_iter()
        .map(|(name, path)| inspect_file(&name, path, quarantined))
        .collect())
}

fn inspect_file(name: &str, path: PathBuf, quarantined: bool) -> ChunkReport {
    let parsed = parse_chunk_file_name(name);
    let mut report = ChunkReport {
        path,
        seq: parsed.map(|(seq, _)| seq),
        state: match parsed {
            Some((_, ChunkState::Open)) => FileState::Open,
            Some((_, ChunkState::Sealed)) => FileState::Sealed,
            None => FileState::Unknown,
        },
        quarantined,
        bytes: 0,
        header_ok: false,
        header_error: None,
        key: None,
        frames_ok: 0,
        bad_frames: 0,
        torn_tail_bytes: 0,
        records: 0,
        created_at: None,
    };
    let data = match fs::read(&report.path) {
        Ok(data) => data,
        Err(e) => {
            report.header_error = Some(format!("cannot read: {e}"));
            return report;
        }
    };
    report.bytes = data.len() as u64;
    let (header, start) = match ChunkHeader::parse(&data) {
        Ok(parsed) => parsed,
        Err(e) => {
            report.header_error = Some(e.to_string());
            return report;
        }
    };
    report.header_ok = true;
    report.created_at = Some(header.created_at());
    report.key = Some(header.key);
    for item in FrameScanner::new(&data, start, format::MAX_FRAME_PAYLOAD) {
        match item {
            Scanned::Frame { header, .. } => {
                report.frames_ok += 1;
                report.records += u64::from(header.records);
            }
            Scanned::Bad { .. } => report.bad_frames += 1,
            Scanned::TornTail { len, .. } => report.torn_tail_bytes = len as u64,
        }
    }
    report
}
