//! [`ChunkError`]: what can go wrong in the chunk buffer, with a metric-label `code()`.

use std::io;
use std::path::{Path, PathBuf};

use super::format::HeaderError;

/// An error of the chunk buffer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ChunkError {
    /// A filesystem operation failed. Recoverable by the caller retrying later (a full disk
    /// frees up as outputs deliver); the buffer itself stays usable. `op` names the operation.
    #[error("{op} {}: {source}", path.display())]
    Io {
        /// The operation, e.g. `"fdatasync"`, `"create"`, `"rename"`.
        op: &'static str,
        /// The file or directory it was applied to.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The chunk file no longer exists: it was released already, or `drop_oldest_chunk`
    /// deleted it to make room. The output skips it; there is nothing left to deliver.
    #[error("chunk {} is gone (released, or dropped to make room)", path.display())]
    Gone {
        /// The chunk file.
        path: PathBuf,
    },
    /// The chunk file's header is damaged or from an incompatible version, so none of its
    /// frames can be trusted. Recovery moves such files to `quarantine/`; at read time this
    /// means the file was damaged after recovery, and the output moves it there with
    /// [`Buffer::quarantine`](super::Buffer::quarantine).
    #[error("chunk {} has a bad header: {reason}", path.display())]
    BadHeader {
        /// The chunk file.
        path: PathBuf,
        /// What is wrong with it.
        #[source]
        reason: HeaderError,
    },
    /// The buffer was closed (or its writer thread stopped) before the operation completed.
    /// Not retriable on this buffer.
    #[error("buffer is closed")]
    Closed,
    /// A [`BufferOptions`](super::BufferOptions) field is out of range.
    #[error("invalid buffer option {param}: {reason}")]
    InvalidOptions {
        /// The field name.
        param: &'static str,
        /// Why it is invalid.
        reason: String,
    },
    /// Every `u64` sequence number was used (the directory holds a chunk numbered `u64::MAX`).
    #[error("chunk sequence numbers exhausted in {}", dir.display())]
    SeqExhausted {
        /// The buffer directory.
        dir: PathBuf,
    },
}

impl ChunkError {
    /// A short stable name for metric labels and logs: `io`, `disk_full`, `gone`, `bad_header`,
    /// `closed`, `invalid_options`, `seq_exhausted`.
    pub fn code(&self) -> &'static str {
        match self {
            ChunkError::Io { .. } if self.is_disk_full() => "disk_full",
            ChunkError::Io { .. } => "io",
            ChunkError::Gone { .. } => "gone",
            ChunkError::BadHeader { .. } => "bad_header",
            ChunkError::Closed => "closed",
            ChunkError::InvalidOptions { .. } => "invalid_options",
            ChunkError::SeqExhausted { .. } => "seq_exhausted",
        }
    }

    /// Whether this is an IO error caused by a full disk or quota (`ENOSPC`, `EDQUOT`).
    pub fn is_disk_full(&self) -> bool {
        match self {
            ChunkError::Io { source, .. } => {
                source.kind() == io::ErrorKind::StorageFull
                    || source.kind() == io::ErrorKind::QuotaExceeded
            }
            _ => false,
        }
    }

    pub(super) fn io<'a>(
        op: &'static str,
        path: &'a Path,
    ) -> impl FnOnce(io::Error) -> ChunkError + 'a {
        move |source| ChunkError::Io {
            op,
            path: path.to_owned(),
            source,
        }
    }

    /// A copy for each ticket of a failed group (`io::Error` is not `Clone`).
    pub(super) fn duplicate(&self) -> ChunkError {
        match self {
            ChunkError::Io { op, path, source } => ChunkError::Io {
                op,
                path: path.clone(),
                source: match source.raw_os_error() {
                    Some(code) => io::Error::from_raw_os_error(code),
                    None => io::Error::new(source.kind(), source.to_string()),
                },
            },
            ChunkError::Gone { path } => ChunkError::Gone { path: path.clone() },
            ChunkError::BadHeader { path, reason } => ChunkError::BadHeader {
                path: path.clone(),
                reason: *reason,
            },
            ChunkError::Closed => ChunkError::Closed,
            ChunkError::InvalidOptions { param, reason } => ChunkError::InvalidOptions {
                param,
                reason: reason.clone(),
            },
            ChunkError::SeqExhausted { dir } => ChunkError::SeqExhausted { dir: dir.clone() },
        }
    }
}
