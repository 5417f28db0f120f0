//! The append side: [`Buffer`], its writer thread, and group commit.
//!
//! Each buffer has one dedicated OS thread that owns the open chunk file. Appending tasks
//! never touch the file: they reserve room in the ledger, compute their frame's CRC, and queue
//! the frame on a channel. The thread is a plain `std::thread` because `fdatasync` blocks for
//! hundreds of microseconds: on a Tokio worker it would stall every connection scheduled there,
//! and a `spawn_blocking` per append would give up batching. One thread per buffer also makes
//! the frame order the request order without any lock on the file.
//!
//! ## Group commit
//! ```text
//! loop:
//!   block for one request (timeout: the open chunk's age limit, the interval sync, 1 s)
//!   take every request already queued, without blocking (up to GROUP_MAX_FRAMES/BYTES)
//!   for each run of frames that fits in the open chunk (creating it first if needed):
//!     writev(header₁, payload₁, header₂, payload₂, …)      one syscall for the run
//!     Always:   fdatasync(chunk) [+ fsync(dir) once per new chunk], then resolve the tickets
//!     Interval: resolve the tickets; fdatasync if commit_interval passed since the last one
//!     Never:    resolve the tickets
//!     seal if the chunk reached its size or record limit
//!   seal if the open chunk is older than flush_interval
//! ```
//! While one group's `fdatasync` runs, the next group queues up, so the number of syncs per
//! second stays near the disk's sync rate however many connections append, and every append
//! waits for at most about two syncs.
//!
//! ## Failures
//! A failed write or sync fails the tickets of the whole group (they were not acknowledged), and
//! then the open chunk is abandoned: its descriptor is closed without another sync (see the
//! fsync invariant in the [module docs](super#invariants)), the file is truncated back to the
//! end of its last acknowledged frame through a fresh descriptor, and sealed so that those frames
//! reach the output. The next append creates a new chunk, so the buffer recovers by itself once
//! the disk has room again.

use std::fs::{self, File, OpenOptions};
use std::io::{self, IoSlice, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use tokio::sync::{mpsc as async_mpsc, oneshot, OwnedSemaphorePermit, Semaphore};

use super::format::{self, ChunkHeader, ChunkState, FrameHeader, FRAME_HEADER_LEN};
use super::ledger::{bump, Ledger, Reservation, SealedEntry};
use super::reader::{SealedChunk, SealedReceiver};
use super::recovery::{self, sync_dir, Recovered};
use super::{BufferOptions, ChunkError, FsyncPolicy, OverflowAction, Stats, Usage};
use crate::telemetry;

/// Most frames written in one group: two `iovec`s each, and Linux takes 1024 per `writev`.
const GROUP_MAX_FRAMES: usize = 512;
/// Most payload bytes taken into one group, so one group's latency stays bounded when a
/// large backlog is queued.
const GROUP_MAX_BYTES: u64 = 32 << 20;
/// Longest sleep of the writer thread, so that the oldest-chunk-age gauge keeps moving.
const METRICS_REFRESH: Duration = Duration::from_secs(1);

/// Why [`Buffer::append`] refused a frame.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AppendError {
    /// The buffer is at `total_limit_size` and the overflow action is `reject`. The records
    /// were counted as dropped (`buffer_full`); the caller must not acknowledge them.
    #[error("buffer is full")]
    Full,
    /// The frame can never fit: its payload exceeds `max_frame_bytes`, or the frame exceeds
    /// `total_limit_size`. Nothing was counted; the caller decides.
    #[error("frame of {bytes} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// The payload (or frame) size.
        bytes: u64,
        /// The limit it exceeds.
        limit: u64,
    },
    /// The buffer was closed.
    #[error("buffer is closed")]
    Closed,
    /// An IO error before the frame was queued.
    #[error(transparent)]
    Io(ChunkError),
}

impl AppendError {
    /// A short stable name for metric labels: `full`, `too_large`, `closed`, or the
    /// [`ChunkError::code`] of an IO error.
    pub fn code(&self) -> &'static str {
        match self {
            AppendError::Full => "full",
            AppendError::TooLarge { .. } => "too_large",
            AppendError::Closed => "closed",
            AppendError::Io(e) => e.code(),
        }
    }
}

/// Resolves when an appended frame is durable (per the buffer's [`FsyncPolicy`]).
///
/// Dropping a ticket does not cancel the append; it only gives up the news.
#[derive(Debug)]
#[must_use = "an append is acknowledged only once its ticket resolves"]
pub struct CommitTicket {
    rx: oneshot::Receiver<Result<(), ChunkError>>,
}

impl CommitTicket {
    /// Waits until the frame is durable.
    ///
    /// # Errors
    /// The error of the write or sync that failed the frame's group (the frame may or may not
    /// be on disk: it must be treated as not stored), or [`ChunkError::Closed`] if the writer
    /// stopped before committing it.
    ///
    /// # Example
    /// Acknowledge only after the ticket resolves (with the default [`FsyncPolicy::Always`]
    /// the frame then survives a power loss):
    /// ```
    /// use bytes::Bytes;
    /// use logferry_common::chunk::{Buffer, BufferOptions};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let dir = tempfile::tempdir()?;
    /// let (buffer, _sealed, _) = Buffer::open(BufferOptions::new(dir.path(), "example"))?;
    /// let ticket = buffer.append(Bytes::from_static(b"payload"), 1).await?;
    /// ticket.durable().await?;
    /// assert_eq!(buffer.stats().frames_committed, 1);
    /// // now send the ack
    /// # Ok(()) }
    /// ```
    pub async fn durable(self) -> Result<(), ChunkError> {
        // A dropped sender means the writer thread ended without answering: never an ack.
        self.rx.await.unwrap_or(Err(ChunkError::Closed))
    }
}

type Done = oneshot::Sender<Result<(), ChunkError>>;

struct Append {
    header: [u8; FRAME_HEADER_LEN],
    payload: Bytes,
    records: u32,
    /// Header plus payload: what was reserved in the ledger.
    frame_bytes: u64,
    done: Done,
    /// Room in the in-memory queue; returned when the writer drops the written request.
    _queued: OwnedSemaphorePermit,
}

enum Request {
    Append(Append),
    Seal(Done),
    Close(Done),
}

#[derive(Debug)]
struct Inner {
    options: BufferOptions,
    ledger: Arc<Ledger>,
    requests: mpsc::Sender<Request>,
    /// Bytes of appends queued in memory for the writer, in KiB permits. The ledger bounds
    /// bytes on disk; this bounds memory, so senders that outrun the disk wait on the socket
    /// instead of piling payloads up in RAM.
    queue_room: Arc<Semaphore>,
    /// Whether the latest reservation found no room (an appender is blocked or was rejected);
    /// cleared by the next one that fits. Part of [`Buffer::is_full`], because a blocked buffer
    /// sits just under its limit: the waiting frame is what does not fit.
    out_of_room: AtomicBool,
}

/// Most bytes of appends waiting in memory for one buffer's writer thread.
pub(super) const MAX_QUEUED_BYTES: u64 = 64 * 1024 * 1024;
const QUEUE_PERMIT_BYTES: u64 = 1024;
const QUEUE_PERMITS: u64 = MAX_QUEUED_BYTES / QUEUE_PERMIT_BYTES;

/// A durable chunk buffer; see the [module docs](super). A cheap-to-clone handle: all clones
/// feed the same writer thread.
#[derive(Debug, Clone)]
pub struct Buffer {
    inner: Arc<Inner>,
}

impl Buffer {
    /// Recovers `options.dir` (creating it if missing), starts the writer thread, and returns
    /// the handle, the receiver of sealed chunks (recovered chunks first, in sequence order,
    /// then each newly sealed one), and what recovery found.
    ///
    /// `.open` files found are repaired (torn tail truncated) and sealed. Blocking: call it
    /// before serving (or on the blocking pool).
    ///
    /// # Errors
    /// [`ChunkError::InvalidOptions`], or an IO error that leaves the directory unusable.
    ///
    /// # Example
    /// A restart finds what the previous run committed, as sealed chunks:
    /// ```
    /// use bytes::Bytes;
    /// use logferry_common::chunk::{Buffer, BufferOptions};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let dir = tempfile::tempdir()?;
    /// let options = BufferOptions::new(dir.path(), "example");
    ///
    /// let (buffer, _sealed, recovered) = Buffer::open(options.clone())?;
    /// assert_eq!(recovered.records, 0);
    /// buffer.append(Bytes::from_static(b"a frame"), 3).await?.durable().await?;
    /// buffer.close().await?;
    ///
    /// let (_buffer, mut sealed, recovered) = Buffer::open(options)?;
    /// assert_eq!(recovered.records, 3);
    /// let chunk = sealed.try_recv().expect("the recovered chunk is delivered first");
    /// assert_eq!(chunk.records, 3);
    /// # Ok(()) }
    /// ```
    pub fn open(options: BufferOptions) -> Result<(Buffer, SealedReceiver, Recovered), ChunkError> {
        options.validate()?;
        let outcome = recovery::recover(&options)?;
        let ledger = Arc::new(Ledger::new(&options.name, options.total_limit_size));
        let (sealed_tx, sealed_rx) = async_mpsc::unbounded_channel();
        for chunk in outcome.chunks {
            ledger.recovered(&chunk);
            // The receiver is alive (it is returned below), so this cannot fail.
            let _ = sealed_tx.send(chunk);
        }
        let (tx, rx) = mpsc::channel();
        let writer = Writer {
            options: options.clone(),
            ledger: Arc::clone(&ledger),
            requests: rx,
            sealed: sealed_tx,
            next_seq: outcome.next_seq,
            open: None,
            last_sync: Instant::now(),
        };
        std::thread::Builder::new()
            .name(format!("chunk-{}", options.name))
            .spawn(move || writer.run())
            .map_err(ChunkError::io("spawn writer thread", &options.dir))?;
        let inner = Arc::new(Inner {
            options,
            ledger,
            requests: tx,
            queue_room: Arc::new(Semaphore::new(QUEUE_PERMITS as usize)),
            out_of_room: AtomicBool::new(false),
        });
        Ok((
            Buffer { inner },
            SealedReceiver { rx: sealed_rx },
            outcome.report,
        ))
    }

    /// Appends one frame holding `records` records and returns its [`CommitTicket`].
    ///
    /// Applies the overflow action first: `Block` waits (without polling) until releases free
    /// room; `DropOldestChunk` deletes the oldest sealed chunks (counting their records as
    /// `drop_oldest_chunk`); `Reject` fails with [`AppendError::Full`] (counting `records` as
    /// `buffer_full`). A frame larger than `chunk_limit_size` goes alone into a chunk.
    ///
    /// # Errors
    /// [`AppendError::TooLarge`] if the payload exceeds `max_frame_bytes` or the frame exceeds
    /// `total_limit_size`; [`AppendError::Full`]; [`AppendError::Closed`].
    ///
    /// # Example
    /// Appends return at once; the ticket says when the frame is on disk. A sealed chunk
    /// yields the frames back, in order:
    /// ```
    /// use bytes::Bytes;
    /// use logferry_common::chunk::{Buffer, BufferOptions};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let dir = tempfile::tempdir()?;
    /// let (buffer, mut sealed, _) = Buffer::open(BufferOptions::new(dir.path(), "example"))?;
    /// let first = buffer.append(Bytes::from_static(b"one"), 1).await?;
    /// let second = buffer.append(Bytes::from_static(b"two, three"), 2).await?;
    /// first.durable().await?;
    /// second.durable().await?;
    ///
    /// buffer.seal_now().await?;
    /// let chunk = sealed.recv().await.expect("the sealed chunk");
    /// let frames: Vec<(Bytes, u32)> = chunk.read()?.payloads().collect();
    /// assert_eq!(frames, [(Bytes::from("one"), 1), (Bytes::from("two, three"), 2)]);
    /// buffer.release(&chunk)?; // delivered: the file is deleted
    /// # Ok(()) }
    /// ```
    pub async fn append(&self, payload: Bytes, records: u32) -> Result<CommitTicket, AppendError> {
        let options = &self.inner.options;
        let len = payload.len() as u64;
        if len > options.max_frame_bytes {
            return Err(AppendError::TooLarge {
                bytes: len,
                limit: options.max_frame_bytes,
            });
        }
        let frame_bytes = FRAME_HEADER_LEN as u64 + len;
        if frame_bytes > options.total_limit_size {
            return Err(AppendError::TooLarge {
                bytes: frame_bytes,
                limit: options.total_limit_size,
            });
        }
        // The CRC is computed here, on the caller's task, so that with many connections the
        // checksum work spreads over the runtime's threads instead of queuing on the writer.
        let header = FrameHeader::new(&payload, records)
            .map_err(|_| AppendError::TooLarge {
                bytes: len,
                limit: format::MAX_FRAME_PAYLOAD,
            })?
            .encode();
        // A frame larger than the whole queue takes all of it (it waits for the queue to empty).
        let permits = frame_bytes.div_ceil(QUEUE_PERMIT_BYTES).min(QUEUE_PERMITS) as u32;
        let queued = Arc::clone(&self.inner.queue_room)
            .acquire_many_owned(permits)
            .await
            .map_err(|_| AppendError::Closed)?;
        self.reserve(frame_bytes, records).await?;
        let (done, rx) = oneshot::channel();
        let request = Request::Append(Append {
            header,
            payload,
            records,
            frame_bytes,
            done,
            _queued: queued,
        });
        if self.inner.requests.send(request).is_err() {
            self.inner.ledger.unreserve(frame_bytes);
            return Err(AppendError::Closed);
        }
        Ok(CommitTicket { rx })
    }

    async fn reserve(&self, frame_bytes: u64, records: u32) -> Result<(), AppendError> {
        let ledger = &self.inner.ledger;
        let action = self.inner.options.overflow_action;
        loop {
            // Register for wake-ups *before* checking, so a release between the check and the
            // await cannot be missed (Notify::notify_waiters only wakes registered waiters).
            let notified = ledger.space.notified();
            let mut notified = std::pin::pin!(notified);
            notified.as_mut().enable();
            let dropped = match ledger.try_reserve(frame_bytes, action) {
                Reservation::Closed => return Err(AppendError::Closed),
                Reservation::Reserved { dropped } => {
                    self.inner.out_of_room.store(false, Ordering::Relaxed);
                    self.delete_dropped(dropped);
                    return Ok(());
                }
                Reservation::Full { dropped } => {
                    self.inner.out_of_room.store(true, Ordering::Relaxed);
                    dropped
                }
            };
            self.delete_dropped(dropped);
            if action == OverflowAction::Reject {
                ledger.rejected(records);
                return Err(AppendError::Full);
            }
            notified.await;
        }
    }

    fn delete_dropped(&self, dropped: Vec<SealedEntry>) {
        for entry in dropped {
            tracing::warn!(
                buffer = %self.inner.options.name,
                path = %entry.path.display(),
                records = entry.records,
                "buffer full: oldest chunk dropped"
            );
            match fs::remove_file(&entry.path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                // The bytes were already counted as freed; the file will be found (and
                // delivered, not lost) at the next start.
                Err(e) => {
                    tracing::error!(path = %entry.path.display(), error = %e, "cannot delete a dropped chunk")
                }
            }
        }
    }

    /// Deletes a delivered chunk whole and frees its bytes (waking blocked appenders).
    /// Releasing a chunk that is already gone (released before, dropped to make room, or
    /// moved away by the caller) is `Ok`.
    ///
    /// # Errors
    /// [`ChunkError::Io`] if the file exists and cannot be deleted; it stays accounted.
    pub fn release(&self, chunk: &SealedChunk) -> Result<(), ChunkError> {
        let ledger = &self.inner.ledger;
        let Some(entry) = ledger.take_sealed(chunk.seq, &chunk.path) else {
            return Ok(());
        };
        // No directory fsync: if a crash undoes this unlink, the chunk is delivered again,
        // which at-least-once allows; a sync here would cost one per delivered chunk.
        match fs::remove_file(&entry.path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => {
                let path = entry.path.clone();
                ledger.restore(chunk.seq, entry);
                return Err(ChunkError::Io {
                    op: "remove",
                    path,
                    source,
                });
            }
        }
        ledger.freed();
        Ok(())
    }

    /// Moves a sealed chunk that cannot be read (a header damaged after seal, read errors) to
    /// `quarantine/`, as recovery would at the next start, and frees its bytes (waking blocked
    /// appenders). Logged with the path and `reason`, and counted in
    /// `logferry_buffer_corruption_total{action="quarantined"}`. Blocking IO.
    ///
    /// Returns the file's new path, or `None` if the buffer no longer holds the chunk (it was
    /// released, or dropped to make room): then there is nothing to move.
    ///
    /// # Errors
    /// [`ChunkError::Io`] if the file cannot be moved; it stays in the buffer, accounted.
    pub fn quarantine(
        &self,
        chunk: &SealedChunk,
        reason: &str,
    ) -> Result<Option<PathBuf>, ChunkError> {
        let ledger = &self.inner.ledger;
        let Some(entry) = ledger.take_sealed(chunk.seq, &chunk.path) else {
            return Ok(None);
        };
        match recovery::quarantine(&self.inner.options, &entry.path, reason) {
            Ok(target) => {
                ledger.freed();
                Ok(Some(target))
            }
            Err(e) => {
                ledger.restore(chunk.seq, entry);
                Err(e)
            }
        }
    }

    /// Seals the open chunk now (if it holds frames), after every append queued before this
    /// call, so that its frames reach the receiver.
    ///
    /// # Errors
    /// A sync error (the chunk is then sealed with its acknowledged frames), or
    /// [`ChunkError::Closed`].
    pub async fn seal_now(&self) -> Result<(), ChunkError> {
        let (done, rx) = oneshot::channel();
        self.inner
            .requests
            .send(Request::Seal(done))
            .map_err(|_| ChunkError::Closed)?;
        rx.await.unwrap_or(Err(ChunkError::Closed))
    }

    /// Stops the buffer: later appends fail with [`AppendError::Closed`], appends already
    /// queued are committed, the open chunk is synced and sealed, and the writer thread ends.
    /// The receiver then returns `None` once every sealed chunk was received. Idempotent.
    ///
    /// # Errors
    /// The error of the final sync or seal.
    pub async fn close(&self) -> Result<(), ChunkError> {
        self.inner.ledger.close();
        let (done, rx) = oneshot::channel();
        if self.inner.requests.send(Request::Close(done)).is_err() {
            return Ok(()); // already stopped
        }
        rx.await.unwrap_or(Ok(()))
    }

    /// How full the buffer is.
    pub fn usage(&self) -> Usage {
        self.inner.ledger.usage()
    }

    /// Whether the buffer is at its limit (for readiness): bytes on disk plus bytes queued to
    /// the writer `>= total_limit_size`, or the latest append found no room.
    pub fn is_full(&self) -> bool {
        self.inner.ledger.is_full() || self.inner.out_of_room.load(Ordering::Relaxed)
    }

    /// Whether [`Self::close`] was called.
    pub fn is_closed(&self) -> bool {
        self.inner.ledger.is_closed()
    }

    /// What the buffer did since it was opened.
    pub fn stats(&self) -> Stats {
        self.inner.ledger.stats()
    }

    /// The buffer's name.
    pub fn name(&self) -> &str {
        &self.inner.options.name
    }

    /// The buffer's options.
    pub fn options(&self) -> &BufferOptions {
        &self.inner.options
    }

    #[cfg(test)]
    pub(super) fn faults(&self) -> &super::tests::Faults {
        &self.inner.ledger.faults
    }
}

/// The chunk being appended to.
#[derive(Debug)]
struct OpenChunk {
    seq: u64,
    path: PathBuf,
    file: File,
    created_at: SystemTime,
    opened: Instant,
    /// End of the last acknowledged frame (the header's end when there is none). The file is
    /// this long unless a write just failed.
    len: u64,
    /// Bytes made durable by a successful `fdatasync` of `file`.
    synced_len: u64,
    /// Whether the directory was fsync'd since this file was created.
    dir_synced: bool,
    frames: u64,
    records: u64,
}

impl OpenChunk {
    /// What this chunk becomes once sealed (under its current path).
    fn sealing(&self) -> SealedChunk {
        SealedChunk {
            seq: self.seq,
            path: self.path.clone(),
            bytes: self.len,
            records: self.records,
            created_at: self.created_at,
        }
    }
}

struct Writer {
    options: BufferOptions,
    ledger: Arc<Ledger>,
    requests: mpsc::Receiver<Request>,
    sealed: async_mpsc::UnboundedSender<SealedChunk>,
    next_seq: u64,
    open: Option<OpenChunk>,
    /// When chunk data was last synced (for `FsyncPolicy::Interval`).
    last_sync: Instant,
}

/// Whether a seal syncs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SealSync {
    /// Per the fsync policy.
    Policy,
    /// Always (close, even under `Never`).
    Force,
}

impl Writer {
    fn run(mut self) {
        let mut group: Vec<Append> = Vec::new();
        loop {
            let first = self.requests.recv_timeout(self.timeout());
            let mut control = None;
            match first {
                Ok(Request::Append(a)) => group.push(a),
                Ok(other) => control = Some(other),
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    self.tick();
                    continue;
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    // Every handle was dropped without close(): finish like close() would,
                    // so the frames already acknowledged reach the receiver.
                    self.ledger.close();
                    let _ = self.shutdown();
                    return;
                }
            }
            if control.is_none() {
                let mut bytes = group.iter().map(|a| a.frame_bytes).sum::<u64>();
                while group.len() < GROUP_MAX_FRAMES && bytes < GROUP_MAX_BYTES {
                    match self.requests.try_recv() {
                        Ok(Request::Append(a)) => {
                            bytes += a.frame_bytes;
                            group.push(a);
                        }
                        Ok(other) => {
                            // Keep request order: the appends before it are written first.
                            control = Some(other);
                            break;
                        }
                        Err(_) => break,
                    }
                }
            }
            if !group.is_empty() {
                self.append_group(&mut group);
            }
            self.tick();
            match control {
                Some(Request::Seal(done)) => {
                    let _ = done.send(self.seal(SealSync::Policy));
                }
                Some(Request::Close(done)) => {
                    let result = self.shutdown();
                    let _ = done.send(result);
                    return;
                }
                Some(Request::Append(_)) | None => {}
            }
        }
    }

    /// How long the next wait for a request may last.
    fn timeout(&self) -> Duration {
        let mut timeout = METRICS_REFRESH;
        if let Some(open) = &self.open {
            if open.frames > 0 {
                timeout = timeout.min(
                    self.options
                        .flush_interval
                        .saturating_sub(open.opened.elapsed()),
                );
            }
            if self.options.fsync == FsyncPolicy::Interval && open.synced_len < open.len {
                timeout = timeout.min(
                    self.options
                        .commit_interval
                        .saturating_sub(self.last_sync.elapsed()),
                );
            }
        }
        timeout
    }

    /// Time-driven work: age seal, interval sync, gauges.
    fn tick(&mut self) {
        if self.options.fsync == FsyncPolicy::Interval
            && self.last_sync.elapsed() >= self.options.commit_interval
        {
            if let Some(mut open) = self.open.take() {
                if open.synced_len < open.len {
                    match self.sync(&mut open) {
                        Ok(()) => self.open = Some(open),
                        Err(e) => {
                            // Under Interval these frames were acknowledged already: say so.
                            tracing::error!(buffer = %self.options.name, error = %e, "interval sync failed; acknowledged records may be lost on power failure");
                            self.abandon(open);
                        }
                    }
                } else {
                    self.open = Some(open);
                }
            }
        }
        let aged = self
            .open
            .as_ref()
            .is_some_and(|o| o.frames > 0 && o.opened.elapsed() >= self.options.flush_interval);
        if aged {
            let _ = self.seal(SealSync::Policy);
        }
        self.ledger.refresh_metrics();
    }

    fn append_group(&mut self, group: &mut Vec<Append>) {
        bump(&self.ledger.stats.groups, 1);
        let mut items = std::mem::take(group);
        while !items.is_empty() {
            if self.open.is_none() {
                match self.create_chunk() {
                    Ok(open) => self.open = Some(open),
                    Err(e) => {
                        tracing::error!(buffer = %self.options.name, error = %e, "cannot create a chunk file");
                        self.fail(items, &e);
                        return;
                    }
                }
            }
            let n = self.fitting(&items);
            if n == 0 {
                // The next frame would push a non-empty chunk over its limits.
                let _ = self.seal(SealSync::Policy);
                continue;
            }
            let rest = items.split_off(n);
            let batch = std::mem::replace(&mut items, rest);
            let Some(mut open) = self.open.take() else {
                continue;
            };
            match self.commit(&mut open, &batch) {
                Ok(()) => {
                    for append in batch {
                        // The caller may have dropped its ticket; the frame is stored anyway.
                        let _ = append.done.send(Ok(()));
                    }
                    let full = open.len >= self.options.chunk_limit_size
                        || open.records >= self.options.chunk_limit_records;
                    self.open = Some(open);
                    if full {
                        let _ = self.seal(SealSync::Policy);
                    }
                }
                Err(e) => {
                    tracing::error!(buffer = %self.options.name, path = %open.path.display(), error = %e, "chunk write failed; the group is not acknowledged");
                    // Retire the chunk first, so that when a caller learns of the failure the
                    // acknowledged frames before it are already sealed and accounted.
                    self.abandon(open);
                    self.fail(batch, &e);
                    // The rest of the group fails with it: on a full or failing disk a retry
                    // right now would fail again, and the senders retry anyway.
                    self.fail(std::mem::take(&mut items), &e);
                    return;
                }
            }
        }
    }

    /// How many of `items` go into the open chunk: at least one if it is empty (a frame
    /// larger than the chunk limit gets a chunk of its own), otherwise as many as fit.
    fn fitting(&self, items: &[Append]) -> usize {
        let Some(open) = &self.open else { return 0 };
        let (mut bytes, mut records, mut frames) = (open.len, open.records, open.frames);
        let mut n = 0;
        for item in items {
            let (b, r) = (
                bytes + item.frame_bytes,
                records.saturating_add(u64::from(item.records)),
            );
            if frames > 0
                && (b > self.options.chunk_limit_size || r > self.options.chunk_limit_records)
            {
                break;
            }
            (bytes, records, frames) = (b, r, frames + 1);
            n += 1;
            if bytes >= self.options.chunk_limit_size || records >= self.options.chunk_limit_records
            {
                break;
            }
        }
        n
    }

    /// Writes `batch` to the open chunk and makes it durable per the policy. On `Ok` the
    /// frames may be acknowledged.
    fn commit(&mut self, open: &mut OpenChunk, batch: &[Append]) -> Result<(), ChunkError> {
        let bytes: u64 = batch.iter().map(|a| a.frame_bytes).sum();
        let records: u64 = batch.iter().map(|a| u64::from(a.records)).sum();
        self.fault_write()
            .and_then(|()| write_frames(&mut open.file, batch))
            .map_err(ChunkError::io("write", &open.path))?;
        let written_to = open.len + bytes;
        match self.options.fsync {
            FsyncPolicy::Always => {
                // The one fsync of the group: every ticket in `batch` waits for it.
                let previous = open.len;
                open.len = written_to;
                if let Err(e) = self.sync(open) {
                    open.len = previous;
                    return Err(e);
                }
            }
            FsyncPolicy::Interval => {
                let previous = open.len;
                open.len = written_to;
                if self.last_sync.elapsed() >= self.options.commit_interval {
                    if let Err(e) = self.sync(open) {
                        // Frames acknowledged by earlier groups were only in the page cache.
                        tracing::error!(buffer = %self.options.name, error = %e, "interval sync failed; acknowledged records may be lost on power failure");
                        open.len = previous;
                        return Err(e);
                    }
                }
            }
            FsyncPolicy::Never => open.len = written_to,
        }
        open.frames += batch.len() as u64;
        open.records += records;
        self.ledger.written(bytes);
        bump(&self.ledger.stats.frames_committed, batch.len() as u64);
        Ok(())
    }

    /// `fdatasync`s the open chunk up to `open.len` (and the directory, once per chunk).
    ///
    /// Must not be called again on `open.file` after it failed (fsync invariant): callers
    /// abandon the chunk on error.
    fn sync(&mut self, open: &mut OpenChunk) -> Result<(), ChunkError> {
        let started = Instant::now();
        self.fault_sync()
            .and_then(|()| open.file.sync_data())
            .map_err(ChunkError::io("fdatasync", &open.path))?;
        telemetry::BUFFER_COMMIT_DURATION.observe(started.elapsed().as_secs_f64());
        bump(&self.ledger.stats.data_syncs, 1);
        self.last_sync = Instant::now();
        if !open.dir_synced {
            // The file's data is durable, but its name is not until the directory is synced:
            // without this, a crash could lose the whole file, acknowledged frames included.
            self.sync_dir()?;
            open.dir_synced = true;
        }
        open.synced_len = open.len;
        Ok(())
    }

    fn sync_dir(&self) -> Result<(), ChunkError> {
        sync_dir(&self.options.dir)?;
        bump(&self.ledger.stats.dir_syncs, 1);
        Ok(())
    }

    /// Creates the next chunk file and writes its header. The header is synced together with
    /// the first group of frames (one `fdatasync` for both), before any of them is acknowledged.
    fn create_chunk(&mut self) -> Result<OpenChunk, ChunkError> {
        let seq = self.next_seq;
        // Consumed even if creation fails, so a half-created file never shares its number.
        self.next_seq = seq.checked_add(1).ok_or_else(|| ChunkError::SeqExhausted {
            dir: self.options.dir.clone(),
        })?;
        let created_at = SystemTime::now();
        let header = ChunkHeader::new(seq, self.options.name.as_str(), created_at)
            .encode()
            .map_err(|_| ChunkError::InvalidOptions {
                param: "name",
                reason: "too long".into(),
            })?;
        let path = self
            .options
            .dir
            .join(format::chunk_file_name(seq, ChunkState::Open));
        let mut file = self
            .fault_create()
            .and_then(|()| OpenOptions::new().write(true).create_new(true).open(&path))
            .map_err(ChunkError::io("create", &path))?;
        if let Err(e) = self.fault_write().and_then(|()| file.write_all(&header)) {
            drop(file);
            // Nothing in it was acknowledged; a leftover would be removed by recovery anyway.
            let _ = fs::remove_file(&path);
            return Err(ChunkError::Io {
                op: "write",
                path,
                source: e,
            });
        }
        let len = header.len() as u64;
        self.ledger.opened(len, created_at);
        Ok(OpenChunk {
            seq,
            path,
            file,
            created_at,
            opened: Instant::now(),
            len,
            synced_len: 0,
            dir_synced: false,
            frames: 0,
            records: 0,
        })
    }

    /// Seals the open chunk if it holds frames (an empty one is deleted): sync per `mode`,
    /// rename to `.sealed`, fsync the directory, hand it to the receiver.
    fn seal(&mut self, mode: SealSync) -> Result<(), ChunkError> {
        let Some(mut open) = self.open.take() else {
            return Ok(());
        };
        if open.frames == 0 {
            self.discard(open);
            return Ok(());
        }
        let sync = mode == SealSync::Force || self.options.fsync != FsyncPolicy::Never;
        // Data before name: the file is synced before it is renamed, so that (except under
        // `Never`) a `.sealed` name on disk always means complete, durable content. Under
        // `Always` every group was synced already and this is a no-op.
        if sync && open.synced_len < open.len {
            if let Err(e) = self.sync(&mut open) {
                tracing::error!(buffer = %self.options.name, error = %e, "sync before seal failed");
                self.abandon(open);
                return Err(e);
            }
        }
        let chunk = open.sealing();
        // Closed before the rename; nothing writes to a sealed file.
        drop(open.file);
        self.finish_seal(chunk, sync);
        Ok(())
    }

    /// Renames the (synced and closed) chunk `chunk.path` to `.sealed` and hands it to the
    /// receiver. Never fails: a chunk whose rename fails is handed out under its `.open` name
    /// (recovery seals it later), because its frames were acknowledged and must be delivered.
    fn finish_seal(&mut self, chunk: SealedChunk, sync_dir: bool) {
        let SealedChunk {
            seq,
            path,
            bytes: len,
            records,
            created_at,
        } = chunk;
        let sealed = path.with_file_name(format::chunk_file_name(seq, ChunkState::Sealed));
        let path = match fs::rename(&path, &sealed) {
            Ok(()) => sealed,
            Err(e) => {
                tracing::error!(path = %path.display(), error = %e, "cannot rename a sealed chunk; delivering it under its .open name");
                path
            }
        };
        if sync_dir {
            // Makes the new name durable; if this fails the file may come back as `.open`
            // after a crash, and recovery seals it again: nothing is lost.
            if let Err(e) = self.sync_dir() {
                tracing::warn!(error = %e, "directory sync after seal failed");
            }
        }
        bump(&self.ledger.stats.chunks_sealed, 1);
        self.ledger.sealed(
            seq,
            SealedEntry {
                path: path.clone(),
                bytes: len,
                records,
                created_at,
            },
        );
        // A dropped receiver means nobody delivers; the chunk stays on disk for the next start.
        let _ = self.sealed.send(SealedChunk {
            seq,
            path,
            bytes: len,
            records,
            created_at,
        });
    }

    /// Deletes the open chunk, which holds no frame.
    fn discard(&mut self, open: OpenChunk) {
        drop(open.file);
        if let Err(e) = fs::remove_file(&open.path) {
            // Recovery removes a header-only file; it only costs its bytes until then.
            tracing::warn!(path = %open.path.display(), error = %e, "cannot remove an empty chunk");
        }
        self.ledger.open_discarded();
    }

    /// Retires the open chunk after a failed write or sync: truncate it back to its last
    /// acknowledged frame through a fresh descriptor, and seal it (or delete it if it holds no
    /// acknowledged frame). The failed descriptor is closed without another sync.
    fn abandon(&mut self, open: OpenChunk) {
        drop(open.file);
        if open.frames == 0 {
            let _ = fs::remove_file(&open.path);
            self.ledger.open_discarded();
            return;
        }
        // A fresh descriptor reports only errors that happen after it was opened, which is what
        // is wanted: the acknowledged bytes were synced before the failure (under Always).
        let truncated = OpenOptions::new()
            .write(true)
            .open(&open.path)
            .and_then(|f| f.set_len(open.len).and_then(|()| f.sync_all()));
        if let Err(e) = truncated {
            // Left as is, the unacknowledged bytes after `len` are a torn tail (or, if they
            // form complete frames, frames delivered without an ack: duplicates, not loss).
            tracing::warn!(path = %open.path.display(), error = %e, "cannot truncate a failed chunk");
        }
        // The directory is synced whatever the policy: this chunk leaves the writer for good.
        let chunk = SealedChunk {
            seq: open.seq,
            path: open.path,
            bytes: open.len,
            records: open.records,
            created_at: open.created_at,
        };
        self.finish_seal(chunk, true);
    }

    /// Fails the tickets of `items` with `error` and returns their reservations.
    fn fail(&self, items: Vec<Append>, error: &ChunkError) {
        let bytes: u64 = items.iter().map(|a| a.frame_bytes).sum();
        bump(&self.ledger.stats.frames_failed, items.len() as u64);
        for item in items {
            let _ = item.done.send(Err(error.duplicate()));
        }
        self.ledger.unreserve(bytes);
    }

    /// Commits what is queued, then seals the open chunk with a forced sync.
    fn shutdown(&mut self) -> Result<(), ChunkError> {
        let mut rest = Vec::new();
        while let Ok(request) = self.requests.try_recv() {
            match request {
                Request::Append(a) => rest.push(a),
                Request::Seal(done) | Request::Close(done) => {
                    let _ = done.send(Ok(()));
                }
            }
        }
        if !rest.is_empty() {
            self.append_group(&mut rest);
        }
        let result = self.seal(SealSync::Force);
        self.ledger.refresh_metrics();
        result
    }

    #[cfg(not(test))]
    fn fault_write(&self) -> io::Result<()> {
        Ok(())
    }

    #[cfg(not(test))]
    fn fault_sync(&self) -> io::Result<()> {
        Ok(())
    }

    #[cfg(not(test))]
    fn fault_create(&self) -> io::Result<()> {
        Ok(())
    }

    #[cfg(test)]
    fn fault_write(&self) -> io::Result<()> {
        self.ledger.faults.take(&self.ledger.faults.write)
    }

    #[cfg(test)]
    fn fault_sync(&self) -> io::Result<()> {
        self.ledger.faults.take(&self.ledger.faults.sync)
    }

    #[cfg(test)]
    fn fault_create(&self) -> io::Result<()> {
        self.ledger.faults.take(&self.ledger.faults.create)
    }
}

/// Writes every frame of `batch` with as few `writev` calls as the kernel allows.
fn write_frames(file: &mut File, batch: &[Append]) -> io::Result<()> {
    let mut slices: Vec<IoSlice<'_>> = Vec::with_capacity(batch.len() * 2);
    for append in batch {
        slices.push(IoSlice::new(&append.header));
        slices.push(IoSlice::new(&append.payload));
    }
    let mut bufs = slices.as_mut_slice();
    while !bufs.is_empty() {
        match file.write_vectored(bufs) {
            Ok(0) => return Err(io::Error::new(io::ErrorKind::WriteZero, "short write")),
            Ok(n) => IoSlice::advance_slices(&mut bufs, n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
