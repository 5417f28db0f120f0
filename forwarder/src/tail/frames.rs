//! Cutting frames: a file's batch goes to the chunk buffer, and its offset to the committer.
//!
//! ## Invariants
//! - **An offset is committed only after the frame holding its line is durable.** A frame is
//!   appended from the tailer's thread; its [`CommitTicket`] travels with the [`Mark`] of the
//!   offset it covers to the [`committer`](super::committer), which awaits the ticket before it
//!   moves the offset.
//! - **The offset sent is the batch's safe offset**: the start of the oldest partial message
//!   still being joined, or else the end of the last complete line, so a restart rebuilds
//!   joined lines whole.
//! - **Commits keep their order.** Every [`Commit`] goes down one channel and the committer
//!   applies them in order, so a [`Commit::Reset`] or [`Commit::Forget`] sent after a file's
//!   last frame is applied after it, whenever that frame's ticket resolves.
//! - **Memory is bounded.** An append waits while the buffer is full, and while
//!   [`MAX_UNDURABLE_BYTES`] of frames wait for their fsync (each frame holds its share of
//!   a semaphore until the committer saw it durable). Shutdown's cancel token aborts that wait.
//! - **A frame that cannot be stored stops the tailer** ([`Stopped`]): its offset does not
//!   move, so its lines are read again at the next start rather than skipped.

use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use logferry_common::chunk::{Buffer, CommitTicket};
use logferry_common::telemetry;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use super::files::Tailed;
use super::fingerprint::Fingerprint;
use crate::batch::encode_frame;

/// Most bytes of frames appended but not yet durable. The buffer's writer queue would take far
/// more; bounding it here keeps the forwarder's memory small when files are read faster than
/// the disk syncs.
pub const MAX_UNDURABLE_BYTES: usize = 4 * 1024 * 1024;

/// An offset to record for a file.
#[derive(Debug, Clone)]
pub struct Mark {
    /// The file.
    pub fp: Fingerprint,
    /// Bytes of it that are in the buffer.
    pub offset: u64,
    /// Its real path.
    pub real_path: Arc<PathBuf>,
    /// The path the globs matched.
    pub glob_path: Arc<PathBuf>,
}

/// What the tailer tells the committer, in order.
#[derive(Debug)]
pub enum Commit {
    /// A frame was appended; once durable, the mark holds.
    Frame {
        /// The frame's ticket.
        ticket: CommitTicket,
        /// The offset it covers.
        mark: Mark,
        /// Its share of [`MAX_UNDURABLE_BYTES`], given back once durable.
        permit: OwnedSemaphorePermit,
    },
    /// An offset advanced without a frame (skipped lines, `read_from = "tail"`).
    Mark(Mark),
    /// A copy took over a truncated file's position.
    Rekey {
        /// The truncated file's fingerprint.
        old: Fingerprint,
        /// The copy's.
        new: Fingerprint,
        /// The copy's real path.
        real_path: Arc<PathBuf>,
    },
    /// A file was truncated and is read again from its start: its offset moves back to
    /// `mark.offset`. Sent after every frame of the file's earlier content, so that no
    /// late commit of that content (applied in order before it) can raise the offset above
    /// the new content's again.
    Reset(Mark),
    /// A file was read to its end and released (or its position given up).
    Forget(Fingerprint),
}

/// Why the tailer stops: asked to, or a frame could not be appended.
#[derive(Debug)]
pub(super) struct Stopped;

/// Where frames and commits go: the chunk buffer and the committer.
#[derive(Debug)]
pub(super) struct Sink {
    buffer: Buffer,
    /// Used to append to the buffer from the tailer's thread.
    runtime: tokio::runtime::Handle,
    commits: mpsc::Sender<Commit>,
    /// Aborts an append waiting for room (shutdown).
    cancel: CancellationToken,
    undurable: Arc<Semaphore>,
    /// A batch buffer grown past twice this is given back.
    batch_size: usize,
}

impl Sink {
    pub(super) fn new(
        buffer: Buffer,
        runtime: tokio::runtime::Handle,
        commits: mpsc::Sender<Commit>,
        cancel: CancellationToken,
        batch_size: usize,
    ) -> Sink {
        Sink {
            buffer,
            runtime,
            commits,
            cancel,
            undurable: Arc::new(Semaphore::new(MAX_UNDURABLE_BYTES / 1024)),
            batch_size,
        }
    }

    /// Appends the file's batch as one frame (blocking while the buffer is full), or just
    /// marks the offset if lines were consumed without records.
    pub(super) fn cut_frame(&self, t: &mut Tailed) -> Result<(), Stopped> {
        let offset = t.state.safe_offset;
        if t.state.records == 0 {
            if offset > t.marked {
                t.marked = offset;
                self.send(Commit::Mark(t.mark(offset)));
            }
            return Ok(());
        }
        let payload = Bytes::from(encode_frame(&t.tag, &t.state.batch, t.state.records));
        let records = t.state.records;
        t.state.batch.clear();
        t.state.records = 0;
        if t.state.batch.capacity() > 2 * self.batch_size {
            t.state.batch = Vec::new();
        }
        let buffer = self.buffer.clone();
        let cancel = self.cancel.clone();
        let undurable = Arc::clone(&self.undurable);
        let kib = (payload.len().div_ceil(1024)).clamp(1, MAX_UNDURABLE_BYTES / 1024) as u32;
        let appended = self.runtime.block_on(async move {
            tokio::select! {
                r = async {
                    let permit = undurable.acquire_many_owned(kib).await;
                    (permit, buffer.append(payload, records).await)
                } => Some(r),
                () = cancel.cancelled() => None,
            }
        });
        match appended {
            Some((Ok(permit), Ok(ticket))) => {
                t.marked = offset;
                self.send(Commit::Frame {
                    ticket,
                    mark: t.mark(offset),
                    permit,
                });
                Ok(())
            }
            Some((Err(_), _)) => Err(Stopped),
            Some((Ok(_), Err(e))) => {
                // Not stored: the offset does not move, so these lines are read again at the
                // next start. Stop tailing this process run rather than skip them.
                tracing::error!(error = %e, path = %t.glob_path.display(), "cannot append to the buffer; stopping the tailer");
                telemetry::DROPPED_RECORDS
                    .with_label_values(&["buffer_append_failed"])
                    .inc_by(u64::from(records));
                Err(Stopped)
            }
            None => Err(Stopped),
        }
    }

    pub(super) fn send(&self, commit: Commit) {
        // The committer lives as long as the process; a closed channel means shutdown, and
        // then a missing mark only costs duplicates at the next start.
        let _ = self.commits.blocking_send(commit);
    }
}
