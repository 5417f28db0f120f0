//! The durable chunk buffer: where acknowledged records wait until an output delivered them.
//!
//! Durability is the product. A Forward ack leaves the aggregator only after the records it
//! covers are on disk, and a record on disk is deleted only after its output delivered it. This
//! module is the first half of that promise: [`Buffer::append`] returns a [`CommitTicket`] that
//! resolves only once the frame is durable (per [`FsyncPolicy`]), and the chunk files are the
//! only state there is. No ledger, index or database sits beside them, so after a crash
//! [`Buffer::open`] rebuilds everything from a directory listing and the bytes in the files.
//!
//! The design takes its header from Fluent Bit's chunkio (magic, version, key, header CRC), its
//! per-record framing and torn-tail handling from Vector's `disk_v2`, and its state-in-the-file-
//! name from Fluentd's `buf_file` (`b` → `q` by rename).
//!
//! ## Design constraints
//!
//! - **An acknowledged frame survives `kill -9` and power loss.** Under [`FsyncPolicy::Always`] a
//!   ticket resolves `Ok` only after `fdatasync` of the chunk file returned `Ok` after the frame
//!   was written, and after the directory holding the file was fsync'd once since the file was
//!   created (otherwise a crash could lose the *name* of a file whose data is safe).
//! - **fsync is expensive** (0.2–0.3 ms on this machine class, 10× more under contention), so
//!   appends share it: one writer thread per buffer drains every queued append, writes them with
//!   one `writev`, and issues one `fdatasync` for the whole group (group commit).
//! - **Nothing panics on file content.** Every byte read from disk goes through the pure parsers
//!   in [`format`](mod@format), which return errors, never panic, and are property-tested on random input.
//! - **Files are only ever deleted whole.** Reclaiming space is `unlink`; there is no compaction
//!   and no garbage collector between a crash and a consistent restart.
//! - **Everything is bounded.** Total bytes (open + sealed + queued) never exceed
//!   `total_limit_size` by more than one chunk header; what happens at the limit is the
//!   documented [`OverflowAction`].
//!
//! ## Invariants
//!
//! 1. A frame is acknowledged (its ticket resolves `Ok`) only once it is durable per the fsync
//!    policy; with `Always` that means a successful `fdatasync` *after* the write, on the same
//!    file descriptor that wrote it, and a successful directory fsync since the file's creation.
//! 2. After a failed write or `fdatasync`, that file descriptor is never synced again: Linux may
//!    have marked the failed pages clean, so a second `fdatasync` can return `Ok` without the
//!    data being on disk ("fsyncgate"). The chunk is truncated back to its last acknowledged
//!    frame through a fresh descriptor, sealed, and the next append starts a new chunk.
//! 3. Only the writer thread writes to a chunk file, and only while it is named `.open`. A
//!    `.sealed` file is never written again, except that recovery truncates a torn tail.
//! 4. Recovery never removes an acknowledged frame: acknowledged frames are complete and pass
//!    their CRC, and a region is treated as a torn tail only when no valid frame follows it.
//! 5. Sequence numbers are strictly increasing per buffer and never reused while any file of
//!    the buffer holds them, quarantined files included: recovery continues after the highest
//!    number it finds. A buffer that was emptied (every chunk released) starts again at 1 when
//!    reopened, so what must be unique across restarts pairs the number with the chunk's
//!    creation time (the record ids of the outputs do).
//! 6. A chunk's bytes leave the accounting exactly once: when its entry is taken out of the
//!    in-memory ledger, by [`Buffer::release`], [`Buffer::quarantine`] or `drop_oldest_chunk`,
//!    whichever comes first.
//! 7. Every directory created to hold chunks (the buffer's own, each missing ancestor up to the
//!    root, `quarantine/`) is made durable by an fsync of its parent before anything in it is
//!    acknowledged ([`create_dir_all_durable`]).
//!
//! ## On-disk format
//!
//! ```text
//! <dir>/                                      one directory per buffer
//!   chunk-00000000000000000007.sealed         complete; handed to the output
//!   chunk-00000000000000000008.open           being appended to (at most one)
//!   quarantine/                               files recovery or an output could not read;
//!                                             never deleted here
//!
//! file name: "chunk-" seq (u64, 20 decimal digits, zero-padded) "." ("open" | "sealed")
//!
//! chunk file = header frame*
//!
//! header (all integers little-endian):
//!   +0        magic       8 bytes   b"LFCHUNK1"
//!   +8        version     u16       FORMAT_VERSION (1)
//!   +10       flags       u16       0 (any other value: incompatible, quarantined)
//!   +12       created_at  u64       unix time, nanoseconds
//!   +20       seq         u64       same as in the file name
//!   +28       key_len     u16
//!   +30       key         key_len   UTF-8, the buffer's name
//!   +30+k     crc32c      u32       over every preceding header byte
//!
//! frame:
//!   +0        magic       4 bytes   b"LFR1"
//!   +4        len         u32       payload bytes
//!   +8        records     u32       records in the payload (for accounting)
//!   +12       crc32c      u32       over records (4 LE bytes) ‖ payload
//!   +16       payload     len       opaque here (the aggregator stores a PackedForward request)
//! ```
//!
//! Frames never span files. A frame whose payload exceeds `chunk_limit_size` gets a chunk of its
//! own; one larger than `max_frame_bytes` is refused at append. Recovery and the reader accept
//! any `len` that fits in the file and passes the CRC, so lowering `max_frame_bytes` in the
//! config never turns frames already on disk into damage.
//!
//! ## Operation
//!
//! **Append.** [`Buffer::append`] checks the size, computes the frame CRC on the caller's task
//! (spreading that work over the runtime's threads), reserves room under the overflow policy and
//! queues the frame to the writer thread. The writer blocks for the first request, takes every
//! request already queued without blocking, writes them with as few syscalls as possible, and
//! then, per [`FsyncPolicy`]: `Always` issues one `fdatasync` for the group and resolves every
//! ticket; `Interval` resolves tickets after the write and syncs at most every
//! `commit_interval`; `Never` resolves after the write. Chunks are created lazily by the first
//! append after a seal.
//!
//! **Seal.** When the open chunk reaches `chunk_limit_size` bytes or `chunk_limit_records`
//! records, or has held frames for `flush_interval`, the writer syncs it, renames `.open` to
//! `.sealed`, fsyncs the directory, and sends a [`SealedChunk`] to the [`SealedReceiver`]. A
//! frame that would push a non-empty chunk over `chunk_limit_size` goes to the next chunk, so
//! chunks stay within the limit unless a single frame is larger.
//!
//! **Read and release.** The output reads a sealed chunk whole ([`SealedChunk::read`]), which
//! verifies every frame and skips (and counts) damaged ones, delivers it, then calls
//! [`Buffer::release`], which deletes the file and frees its bytes. Deletion is not followed by
//! a directory fsync: if a crash resurrects a released file, its records are delivered again,
//! which at-least-once allows.
//!
//! A sealed chunk that cannot be read (its header damaged after seal, or repeated read errors)
//! is not retried forever: the output moves it to `quarantine/` with [`Buffer::quarantine`],
//! which frees its bytes like a release, and goes on with the next chunk.
//!
//! **Overflow.** See [`OverflowAction`]. `drop_oldest_chunk` may delete a chunk the output has
//! already received; `release` of it is then a no-op and `read` returns [`ChunkError::Gone`].
//!
//! **Recovery** ([`Buffer::open`], module `recovery`): quarantine files with a bad header,
//! truncate torn tails, skip (and count) damaged middle frames, seal `.open` files, continue the
//! sequence after the highest number seen, and hand the recovered chunks to the receiver first,
//! in sequence order.
//!
//! **Failures.** A failed write or sync fails every ticket of its group (never an ack), seals
//! what was acknowledged before (Invariant 2) and leaves the buffer usable: once the disk has
//! room again, the next append succeeds in a new chunk.
//!
//! **Inspection.** [`inspect_dir`] reports on every chunk file of a directory without changing
//! anything, for operators and tests.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

mod error;
pub mod format;
mod inspect;
mod ledger;
mod reader;
mod recovery;
mod writer;

/// Locks `root` (the directory holding a binary's buffers and stores, created durably if
/// missing) for this process: two processes sharing one buffer would each recover, deliver and
/// delete the other's chunks. The lock is `root/LOCK`, held while the returned file is open; the
/// kernel drops it when the process dies, so a crash never leaves a stale lock.
///
/// `root` itself is not fsync'd for the `LOCK` entry: the file holds no data and is recreated if
/// a crash loses it. What is created in `root` later syncs `root` itself
/// ([`create_dir_all_durable`]).
///
/// # Errors
/// The directory or the lock file cannot be created, or another process holds the lock.
pub fn lock_root(root: &std::path::Path) -> std::io::Result<std::fs::File> {
    create_dir_all_durable(root)?;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(root.join("LOCK"))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => {
            Err(std::io::Error::other("locked by another process"))
        }
        Err(std::fs::TryLockError::Error(e)) => Err(e),
    }
}

#[cfg(test)]
mod tests;

pub use error::ChunkError;
pub use format::{
    chunk_file_name, parse_chunk_file_name, ChunkHeader, ChunkState, FrameHeader, FrameScanner,
    HeaderError, Scanned,
};
pub use inspect::{inspect_dir, ChunkReport, FileState};
pub use reader::{ChunkContents, FrameRef, SealedChunk, SealedReceiver};
pub use recovery::{create_dir_all_durable, Recovered};
pub use writer::{AppendError, Buffer, CommitTicket};

/// Default [`BufferOptions::chunk_limit_size`]: 8 MiB.
pub const DEFAULT_CHUNK_LIMIT_SIZE: u64 = 8 << 20;
/// Default [`BufferOptions::flush_interval`]: 1 s.
pub const DEFAULT_FLUSH_INTERVAL: Duration = Duration::from_secs(1);
/// Default [`BufferOptions::total_limit_size`]: 1 GiB.
pub const DEFAULT_TOTAL_LIMIT_SIZE: u64 = 1 << 30;
/// Default [`BufferOptions::commit_interval`]: 1 s.
pub const DEFAULT_COMMIT_INTERVAL: Duration = Duration::from_secs(1);
/// Default [`BufferOptions::max_frame_bytes`]: 64 MiB.
pub const DEFAULT_MAX_FRAME_BYTES: u64 = 64 << 20;

/// What [`Buffer::append`] does when the frame does not fit under `total_limit_size`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OverflowAction {
    /// Wait (asynchronously) until released chunks free enough room. Nothing is lost; the
    /// caller stops reading its socket, so backpressure reaches the senders. The right default
    /// for an aggregator whose senders buffer on their own disks.
    #[default]
    Block,
    /// Delete the oldest sealed chunk(s) to make room, counting their records in
    /// `logferry_dropped_records_total{reason="drop_oldest_chunk"}`. Fresh data wins over old
    /// data; records that were acknowledged are lost. If no sealed chunk exists yet, the append
    /// waits as with `Block` until the open chunk seals and can be dropped.
    DropOldestChunk,
    /// Refuse the append with [`AppendError::Full`], counting its records in
    /// `logferry_dropped_records_total{reason="buffer_full"}`. The caller decides (a Forward
    /// server withholds the ack, so the sender retries later).
    Reject,
}

/// When appended frames are fsync'd, and so what a resolved [`CommitTicket`] promises.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FsyncPolicy {
    /// `fdatasync` after every write group, before any ticket of the group resolves. A resolved
    /// ticket survives power loss. Group commit keeps this cheap under concurrency.
    #[default]
    Always,
    /// Tickets resolve after the write (the data is in the page cache: it survives a process
    /// crash, not a power loss); the file is synced at most every `commit_interval`, and when a
    /// chunk is sealed.
    Interval,
    /// Tickets resolve after the write and nothing is synced, except the open chunk and the
    /// directory on [`Buffer::close`]. For benchmarks and throwaway data.
    Never,
}

/// How a [`Buffer`] is set up. Build with [`BufferOptions::new`] and override fields.
#[derive(Debug, Clone)]
pub struct BufferOptions {
    /// The buffer's directory (created if missing). One buffer per directory.
    pub dir: PathBuf,
    /// The buffer's name: the `buffer` metric label, and the key written in chunk headers.
    pub name: String,
    /// Seal the open chunk when it reaches this many bytes (header included).
    pub chunk_limit_size: u64,
    /// Seal the open chunk when it holds this many records (`u64::MAX`: no limit).
    pub chunk_limit_records: u64,
    /// Seal an open, non-empty chunk this long after its first frame.
    pub flush_interval: Duration,
    /// Bytes the buffer may hold: open and sealed chunk files plus frames queued to the writer.
    pub total_limit_size: u64,
    /// What happens at `total_limit_size`.
    pub overflow_action: OverflowAction,
    /// When frames are fsync'd.
    pub fsync: FsyncPolicy,
    /// For [`FsyncPolicy::Interval`]: the longest time between syncs.
    pub commit_interval: Duration,
    /// Largest payload [`Buffer::append`] accepts (at most `u32::MAX`).
    pub max_frame_bytes: u64,
}

impl BufferOptions {
    /// Options with the defaults named by the `DEFAULT_*` constants of this module.
    pub fn new(dir: impl Into<PathBuf>, name: impl Into<String>) -> Self {
        BufferOptions {
            dir: dir.into(),
            name: name.into(),
            chunk_limit_size: DEFAULT_CHUNK_LIMIT_SIZE,
            chunk_limit_records: u64::MAX,
            flush_interval: DEFAULT_FLUSH_INTERVAL,
            total_limit_size: DEFAULT_TOTAL_LIMIT_SIZE,
            overflow_action: OverflowAction::default(),
            fsync: FsyncPolicy::default(),
            commit_interval: DEFAULT_COMMIT_INTERVAL,
            max_frame_bytes: DEFAULT_MAX_FRAME_BYTES,
        }
    }

    /// Checks the options; [`Buffer::open`] calls this first.
    ///
    /// # Errors
    /// [`ChunkError::InvalidOptions`] naming the first bad field.
    pub fn validate(&self) -> Result<(), ChunkError> {
        let bad = |param: &'static str, reason: &str| {
            Err(ChunkError::InvalidOptions {
                param,
                reason: reason.to_owned(),
            })
        };
        if self.name.is_empty() {
            return bad("name", "must not be empty");
        }
        if self.name.len() > format::MAX_KEY_LEN {
            return bad("name", "longer than 65535 bytes");
        }
        if self.chunk_limit_size == 0 {
            return bad("chunk_limit_size", "must be positive");
        }
        if self.chunk_limit_records == 0 {
            return bad("chunk_limit_records", "must be positive");
        }
        if self.total_limit_size == 0 {
            return bad("total_limit_size", "must be positive");
        }
        if self.flush_interval.is_zero() {
            return bad("flush_interval", "must be positive");
        }
        if self.fsync == FsyncPolicy::Interval && self.commit_interval.is_zero() {
            return bad("commit_interval", "must be positive");
        }
        if self.max_frame_bytes == 0 || self.max_frame_bytes > format::MAX_FRAME_PAYLOAD {
            return bad("max_frame_bytes", "must be between 1 and 4294967295");
        }
        Ok(())
    }
}

/// How full a buffer is ([`Buffer::usage`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Usage {
    /// Bytes of chunk files on disk (open + sealed).
    pub bytes: u64,
    /// The configured `total_limit_size`.
    pub limit: u64,
    /// Open chunks (0 or 1).
    pub open_chunks: u64,
    /// Sealed chunks not yet released or dropped.
    pub sealed_chunks: u64,
    /// Creation time of the oldest chunk held.
    pub oldest_created_at: Option<SystemTime>,
    /// Bytes of frames accepted but not yet written by the writer thread. They count against
    /// the limit (so `bytes + pending_bytes <= limit`, give or take one chunk header).
    pub pending_bytes: u64,
}

/// Counters of what a buffer did since it was opened ([`Buffer::stats`]); for tests, benches
/// and the admin endpoint. Prometheus metrics carry the same facts across buffers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Frames written and acknowledged.
    pub frames_committed: u64,
    /// Write groups (one `writev` batch each; with `Always`, one `fdatasync` each).
    pub groups: u64,
    /// `fdatasync` calls on chunk files (group commits and seals).
    pub data_syncs: u64,
    /// fsync calls on the buffer directory (chunk creation and seal).
    pub dir_syncs: u64,
    /// Chunks sealed by the writer (recovered chunks not included).
    pub chunks_sealed: u64,
    /// Frames whose ticket failed because a write or sync failed.
    pub frames_failed: u64,
    /// Records refused with [`AppendError::Full`].
    pub records_rejected: u64,
    /// Chunks deleted by `drop_oldest_chunk`.
    pub chunks_dropped: u64,
    /// Records in those chunks.
    pub records_dropped: u64,
}
