//! Tailing: discovery, reading, rotation, and the offsets that make a restart lossless.
//!
//! ## Design constraints
//! - **No line is lost to a crash.** A file's offset (its [`checkpoint`]) advances only after
//!   the frame holding its lines is durable in the forwarder's chunk buffer: the tailer hands
//!   each frame's commit ticket, with the offset it covers, to the [`committer`] task, which
//!   awaits the tickets in order and only then moves the offset. A restart re-reads from the
//!   last durable offset: duplicates are possible, loss is not.
//! - **No line is lost to rotation.** Files are known by [`fingerprint`] (device, inode, first
//!   line), not by path. A renamed or deleted file keeps being read through the descriptor
//!   already open until its end, and is released only after it stopped growing for
//!   `rotate_wait` (the runtime may write a little more before it reopens). A copytruncate copy
//!   (same first line, another inode) continues where the truncated original stopped. A restart
//!   finds files rotated out of the globs again through the real path kept in their checkpoint.
//! - **A truncated file moves its checkpoint back.** A file found shorter than its checkpoint,
//!   or truncated while tailed and given the same first line again (so the same fingerprint),
//!   is read from its start and its checkpoint is reset ([`Commit::Reset`]), after every frame
//!   of its earlier content; the position of that content (an orphan waiting for its copy)
//!   then neither forgets nor moves the checkpoint the new content holds.
//! - **Back-pressure, never silent drops.** Appending to a full buffer blocks this thread, so
//!   files are simply not read until the aggregators catch up; bytes that are truncated away
//!   before they were read are counted in `logferry_tail_unread_bytes`.
//! - **Frugal when idle.** One OS thread, woken by inotify (through `notify`) or every
//!   `poll_interval` for a cheap `fstat` of each file; a full glob rescan every
//!   `rescan_interval` or when a directory changes.
//!
//! ## Operation
//! ```text
//! loop:
//!   rescan if due or a directory changed: glob -> open new files (checkpoint | copy | head/tail)
//!                                         -> files no glob leads to are "rotated" (drain, then release)
//!   for each file: fstat; read up to READ_BUDGET -> split lines -> parse -> join partials
//!                  -> encode records into the file's batch -> batch_size reached: frame
//!   end of pass: every non-empty batch becomes a frame: buffer.append (blocks when full)
//!                -> (ticket, fingerprint, offset) to the committer
//!   sleep until inotify, the poll interval, a partial-line timeout or a rotate_wait expiry
//! ```
//! The offset sent with a frame is the start of the oldest partial message still being joined
//! (or the end of the last complete line), so a restart rebuilds joined lines whole.
//!
//! ## Modules
//! - `run`: the tailer's thread and its loop.
//! - `files`: which files are tailed from which offset; rotation, truncation, copies.
//! - `lines`: reading, splitting, parsing and joining lines into a file's batch.
//! - `frames`: batches to the buffer as frames, offsets to the committer.
//! - `watch`: inotify.
//! - [`fingerprint`], [`checkpoint`], [`committer`]: file identity, stored offsets, and the
//!   task that moves them once frames are durable.

use std::time::Duration;

use crate::batch::RecordOptions;
use crate::config::{Format, InputConfig, ReadFrom};

pub mod checkpoint;
pub mod committer;
mod files;
pub mod fingerprint;
mod frames;
mod lines;
mod run;
mod watch;

pub use committer::FLUSH_INTERVAL;
pub use files::make_tag;
pub use frames::{Commit, Mark, MAX_UNDURABLE_BYTES};
pub use run::{Tailer, TailerHandle};

/// What the tailer needs from the config.
#[derive(Debug, Clone)]
pub struct TailOptions {
    /// Line format.
    pub format: Format,
    /// Where new files start at the first scan.
    pub read_from: ReadFrom,
    /// Longest physical line.
    pub max_line_size: usize,
    /// Longest joined message.
    pub max_message_size: usize,
    /// Partial-line timeout.
    pub partial_timeout: Duration,
    /// How long a rotated file is kept after its last growth.
    pub rotate_wait: Duration,
    /// Full rescan period.
    pub rescan_interval: Duration,
    /// Fallback poll period.
    pub poll_interval: Duration,
    /// Tag prefix.
    pub tag_prefix: String,
    /// Frame size target.
    pub batch_size: usize,
    /// Record shape.
    pub record: RecordOptions,
}

impl TailOptions {
    /// From the `[input]` and `[kubernetes]` sections.
    pub fn from_config(input: &InputConfig, record: RecordOptions) -> TailOptions {
        TailOptions {
            format: input.format,
            read_from: input.read_from,
            max_line_size: input.max_line_size.bytes() as usize,
            max_message_size: input.max_message_size.bytes() as usize,
            partial_timeout: input.partial_timeout,
            rotate_wait: input.rotate_wait,
            rescan_interval: input.rescan_interval,
            poll_interval: input.poll_interval,
            tag_prefix: input.tag_prefix.clone(),
            batch_size: input.batch_size.bytes() as usize,
            record,
        }
    }
}
