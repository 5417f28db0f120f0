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

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use logferry_common::chunk::{Buffer, CommitTicket};
use logferry_common::telemetry;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::batch::{encode_frame, encode_record, RecordOptions};
use crate::config::{Format, InputConfig, ReadFrom};
use crate::discover::Discovery;
use crate::kubernetes::{FileMetadata, PodCache};
use crate::metrics;
use crate::parse::{Joiner, LineFormat};

pub mod checkpoint;
pub mod committer;
pub mod fingerprint;

use checkpoint::Store;
use fingerprint::Fingerprint;

/// How often checkpoints are written to sled.
pub const FLUSH_INTERVAL: Duration = Duration::from_secs(1);
/// Bytes read from one file before the others get a turn.
const READ_BUDGET: u64 = 1024 * 1024;
/// Bytes read per `pread`.
const READ_CHUNK: usize = 256 * 1024;
/// How long a truncated file's unread position waits for its copy to appear.
const ORPHAN_TTL: Duration = Duration::from_secs(60);
/// Most bytes of frames appended but not yet durable. The buffer's writer queue would take far
/// more; bounding it here keeps the forwarder's memory small when files are read faster than
/// the disk syncs.
pub const MAX_UNDURABLE_BYTES: usize = 4 * 1024 * 1024;

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
        permit: tokio::sync::OwnedSemaphorePermit,
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

/// Everything the tailer thread shares with the rest of the process.
#[derive(Debug, Clone)]
pub struct TailerHandle {
    stop: Arc<AtomicBool>,
    wake: std_mpsc::SyncSender<()>,
}

impl TailerHandle {
    /// Asks the tailer to stop reading: it appends what it has batched and ends.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.wake.try_send(());
    }
}

/// One file being tailed.
#[derive(Debug)]
struct Tailed {
    fp: Fingerprint,
    file: File,
    glob_path: Arc<PathBuf>,
    real_path: Arc<PathBuf>,
    tag: String,
    meta: FileMetadata,
    /// Next byte to read.
    read_offset: u64,
    /// Bytes read after the last `\n` (they start at `read_offset - carry.len()`).
    carry: Vec<u8>,
    /// Discarding the rest of an over-long line.
    skipping: bool,
    state: LineState,
    /// Offset the latest mark was sent for.
    marked: u64,
    last_size: u64,
    last_growth: Instant,
    /// When no glob led to this file any more (renamed away or deleted).
    rotated_at: Option<Instant>,
}

/// Parse and batch state of a file.
#[derive(Debug)]
struct LineState {
    format: Option<LineFormat>,
    joiner: Joiner,
    batch: Vec<u8>,
    records: u32,
    /// Everything before this offset is in `batch` or in the buffer.
    safe_offset: u64,
}

/// Per-pass counters, folded into the metrics once per pass.
#[derive(Debug, Default)]
struct Counts {
    records: u64,
    bytes: u64,
    invalid: u64,
    truncated: u64,
    forced_size: u64,
    forced_timeout: u64,
}

impl Counts {
    fn publish(&mut self) {
        if self.records > 0 {
            telemetry::INPUT_RECORDS.inc_by(self.records);
        }
        if self.bytes > 0 {
            telemetry::INPUT_BYTES.inc_by(self.bytes);
        }
        if self.invalid > 0 {
            telemetry::DROPPED_RECORDS
                .with_label_values(&["invalid_line"])
                .inc_by(self.invalid);
        }
        if self.truncated > 0 {
            metrics::TAIL_TRUNCATED_LINES.inc_by(self.truncated);
        }
        if self.forced_size > 0 {
            metrics::PARTIAL_FLUSHES
                .with_label_values(&["size"])
                .inc_by(self.forced_size);
        }
        if self.forced_timeout > 0 {
            metrics::PARTIAL_FLUSHES
                .with_label_values(&["timeout"])
                .inc_by(self.forced_timeout);
        }
        *self = Counts::default();
    }
}

/// A truncated file's reading position, waiting for its copy.
#[derive(Debug)]
struct Orphan {
    tailed: Tailed,
    since: Instant,
}

/// Why a pass stopped early.
#[derive(Debug)]
struct Stopped;

/// The tailer thread's state.
pub struct Tailer {
    opts: TailOptions,
    discovery: Discovery,
    buffer: Buffer,
    runtime: tokio::runtime::Handle,
    commits: mpsc::Sender<Commit>,
    store: Arc<Mutex<Store>>,
    cache: Option<Arc<PodCache>>,
    cancel: CancellationToken,
    stop: Arc<AtomicBool>,
    wake_rx: std_mpsc::Receiver<()>,
    wake_tx: std_mpsc::SyncSender<()>,
    rescan_needed: Arc<AtomicBool>,
    watcher: Option<notify::RecommendedWatcher>,
    watched: HashSet<PathBuf>,
    files: HashMap<(u64, u64), Tailed>,
    /// Copies (same first line as a live file, another inode) not read unless the original
    /// is truncated.
    deferred: HashSet<PathBuf>,
    /// Paths matched but without a complete first line yet.
    waiting: HashSet<PathBuf>,
    orphans: Vec<Orphan>,
    /// Inodes truncated while tailed, with their first line's hash then, until they are opened
    /// again (one entry per truncated file not opened since: deleted ones stay, 24 bytes each).
    truncated: HashMap<(u64, u64), u64>,
    first_scan: bool,
    next_rescan: Instant,
    counts: Counts,
    /// Read and batch buffers lent to the file being read: per-file state keeps only the
    /// bytes of an unfinished line, so memory does not grow with the number of files.
    scratch_read: Vec<u8>,
    scratch_batch: Vec<u8>,
    undurable: Arc<tokio::sync::Semaphore>,
}

impl std::fmt::Debug for Tailer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tailer")
            .field("files", &self.files.len())
            .field("orphans", &self.orphans.len())
            .finish_non_exhaustive()
    }
}

impl Tailer {
    /// A tailer; `runtime` is the handle used to append to the buffer from this thread, and
    /// `cancel` aborts an append waiting for room (shutdown).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        opts: TailOptions,
        discovery: Discovery,
        buffer: Buffer,
        runtime: tokio::runtime::Handle,
        commits: mpsc::Sender<Commit>,
        store: Arc<Mutex<Store>>,
        cache: Option<Arc<PodCache>>,
        cancel: CancellationToken,
    ) -> (Tailer, TailerHandle) {
        let (wake_tx, wake_rx) = std_mpsc::sync_channel(1);
        let stop = Arc::new(AtomicBool::new(false));
        let handle = TailerHandle {
            stop: Arc::clone(&stop),
            wake: wake_tx.clone(),
        };
        let tailer = Tailer {
            opts,
            discovery,
            buffer,
            runtime,
            commits,
            store,
            cache,
            cancel,
            stop,
            wake_rx,
            wake_tx,
            rescan_needed: Arc::new(AtomicBool::new(true)),
            watcher: None,
            watched: HashSet::new(),
            files: HashMap::new(),
            deferred: HashSet::new(),
            waiting: HashSet::new(),
            orphans: Vec::new(),
            truncated: HashMap::new(),
            first_scan: true,
            next_rescan: Instant::now(),
            counts: Counts::default(),
            scratch_read: Vec::new(),
            scratch_batch: Vec::new(),
            undurable: Arc::new(tokio::sync::Semaphore::new(MAX_UNDURABLE_BYTES / 1024)),
        };
        (tailer, handle)
    }

    /// Runs on a dedicated thread until stopped.
    pub fn spawn(self) -> std::io::Result<std::thread::JoinHandle<()>> {
        std::thread::Builder::new()
            .name("tailer".into())
            .spawn(move || self.run())
    }

    fn run(mut self) {
        self.start_watcher();
        loop {
            if self.stopping() {
                break;
            }
            let now = Instant::now();
            if self.rescan_needed.swap(false, Ordering::SeqCst) || now >= self.next_rescan {
                self.rescan();
                self.next_rescan = Instant::now() + self.opts.rescan_interval;
            }
            if !self.waiting.is_empty() {
                let waiting: Vec<PathBuf> = self.waiting.drain().collect();
                for path in waiting {
                    self.open_new(&path, false);
                }
            }
            let progressed = match self.pass() {
                Ok(p) => p,
                Err(Stopped) => break,
            };
            if self.timeouts().is_err() {
                break;
            }
            self.counts.publish();
            telemetry::TAIL_FILES.set(self.files.len() as i64);
            if !progressed {
                let wait = self.next_wait();
                match self.wake_rx.recv_timeout(wait) {
                    Ok(()) | Err(std_mpsc::RecvTimeoutError::Timeout) => {}
                    Err(std_mpsc::RecvTimeoutError::Disconnected) => break,
                }
            }
        }
        // Stop: what is batched goes to the buffer; partial messages are not sent (their
        // offset was never committed, so the next start reads them again, whole).
        let keys: Vec<(u64, u64)> = self.files.keys().copied().collect();
        for key in keys {
            if let Some(mut t) = self.files.remove(&key) {
                if self.cut_frame(&mut t).is_err() {
                    break;
                }
            }
        }
        self.counts.publish();
        tracing::debug!("tailer stopped");
    }

    fn stopping(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    fn start_watcher(&mut self) {
        let wake = self.wake_tx.clone();
        let rescan = Arc::clone(&self.rescan_needed);
        let watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            use notify::event::{EventKind, ModifyKind};
            if let Ok(event) = res {
                match event.kind {
                    EventKind::Modify(ModifyKind::Data(_)) | EventKind::Access(_) => {}
                    EventKind::Modify(ModifyKind::Metadata(_)) => return,
                    _ => rescan.store(true, Ordering::SeqCst),
                }
            } else {
                rescan.store(true, Ordering::SeqCst);
            }
            let _ = wake.try_send(());
        });
        match watcher {
            Ok(w) => self.watcher = Some(w),
            Err(e) => {
                tracing::warn!(error = %e, "inotify unavailable; polling files every poll_interval")
            }
        }
        for dir in self.discovery.dirs() {
            self.watch(&dir);
        }
    }

    fn watch(&mut self, dir: &Path) {
        use notify::Watcher;
        if self.watched.contains(dir) {
            return;
        }
        if let Some(w) = &mut self.watcher {
            match w.watch(dir, notify::RecursiveMode::NonRecursive) {
                Ok(()) => {
                    self.watched.insert(dir.to_path_buf());
                }
                Err(e) => {
                    tracing::debug!(dir = %dir.display(), error = %e, "cannot watch directory (polling it)")
                }
            }
        }
    }

    fn next_wait(&self) -> Duration {
        let now = Instant::now();
        let mut wait = self
            .opts
            .poll_interval
            .min(self.next_rescan.saturating_duration_since(now));
        for t in self.files.values() {
            if let Some(d) = t.state.joiner.next_deadline() {
                wait = wait.min(d.saturating_duration_since(now));
            }
            if t.rotated_at.is_some() {
                let release = t.last_growth + self.opts.rotate_wait;
                wait = wait.min(release.saturating_duration_since(now));
            }
        }
        wait.max(Duration::from_millis(5))
    }

    /// Globs, opens new files, marks files no glob leads to as rotated.
    fn rescan(&mut self) {
        let paths = self.discovery.scan();
        let mut seen: HashSet<(u64, u64)> = HashSet::new();
        let mut fresh = Vec::new();
        for path in paths {
            let Ok(meta) = std::fs::metadata(&path) else {
                continue;
            };
            let key = (meta.dev(), meta.ino());
            seen.insert(key);
            if self.files.contains_key(&key) {
                continue;
            }
            fresh.push(path);
        }
        for t in self.files.values_mut() {
            let key = (t.fp.dev, t.fp.ino);
            if seen.contains(&key) {
                t.rotated_at = None;
            } else if t.rotated_at.is_none() {
                tracing::info!(path = %t.glob_path.display(), offset = t.read_offset, "file rotated or deleted; draining it");
                t.rotated_at = Some(Instant::now());
                t.last_growth = Instant::now();
            }
        }
        // Files with an exact checkpoint first, so that a copy never takes the position of an
        // original that is still there.
        let first_scan = self.first_scan;
        let mut later = Vec::new();
        for path in fresh {
            if !self.open_new(&path, true) {
                later.push(path);
            }
        }
        for path in later {
            self.open_new(&path, false);
        }
        let deferred: Vec<PathBuf> = self.deferred.drain().collect();
        for path in deferred {
            self.open_new(&path, false);
        }
        if first_scan {
            self.first_scan = false;
            self.find_rotated_at_startup();
        }
    }

    /// Opens a newly matched file. With `exact_only`, only a file with its own checkpoint is
    /// opened (returns whether it was handled).
    fn open_new(&mut self, path: &Path, exact_only: bool) -> bool {
        let file = match File::open(path) {
            Ok(f) => f,
            Err(e) => {
                tracing::debug!(path = %path.display(), error = %e, "cannot open");
                return true;
            }
        };
        let Ok(meta) = file.metadata() else {
            return true;
        };
        let key = (meta.dev(), meta.ino());
        if self.files.contains_key(&key) {
            return true;
        }
        let fp = match fingerprint::fingerprint(&file) {
            Ok(Some(fp)) => fp,
            Ok(None) => {
                self.waiting.insert(path.to_path_buf());
                return true;
            }
            Err(e) => {
                tracing::debug!(path = %path.display(), error = %e, "cannot read");
                return true;
            }
        };
        let size = meta.len();
        // Truncated while we were reading it and rewritten with the same first line: the same
        // identity, new content. Decided here, not by the store, which may not have applied
        // the old content's frames (or its copy's rekey) yet. (With another first line it is
        // another file, with no checkpoint of its own.)
        if self.truncated.remove(&key) == Some(fp.head) {
            tracing::info!(path = %path.display(), size, "truncated file starts with the same line again; reading it from the start");
            self.track_truncated(file, fp, path, size);
            return true;
        }
        let stored = lock(&self.store).get(&fp).map(|c| c.offset);
        if let Some(offset) = stored {
            if offset > size {
                tracing::warn!(path = %path.display(), offset, size, "file is shorter than its checkpoint; reading it from the start");
                self.track_truncated(file, fp, path, size);
            } else {
                self.track(file, fp, path, path, offset, size);
            }
            return true;
        }
        if exact_only {
            return false;
        }
        // A copy of a live file (copytruncate in progress, or a plain `cp`): not read unless
        // the original gets truncated.
        if self.files.values().any(|t| {
            t.fp.head == fp.head
                && !t.fp.same_inode(fp.dev, fp.ino)
                && could_be_copy(&t.real_path, path)
        }) {
            self.deferred.insert(path.to_path_buf());
            return true;
        }
        // The copy of a file truncated while we were reading it: continue where it stopped.
        if let Some(i) = self.orphans.iter().position(|o| {
            o.tailed.fp.head == fp.head
                && o.tailed.read_offset <= size
                && could_be_copy(&o.tailed.real_path, path)
        }) {
            let orphan = self.orphans.swap_remove(i);
            let mut t = orphan.tailed;
            let old = t.fp;
            t.fp = fp;
            t.file = file;
            t.real_path = Arc::new(real_path(path));
            t.last_size = size;
            t.last_growth = Instant::now();
            t.rotated_at = None;
            tracing::info!(copy = %path.display(), offset = t.read_offset, "copytruncate: continuing in the copy");
            self.send(Commit::Rekey {
                old,
                new: fp,
                real_path: Arc::clone(&t.real_path),
            });
            self.watch_parent(&t.real_path);
            self.files.insert(key, t);
            return true;
        }
        // After a restart: a checkpoint of the same content under an inode that no longer has
        // it (the original was truncated while we were down).
        let adopted = {
            let store = lock(&self.store);
            store
                .by_head(fp.head)
                .into_iter()
                .filter(|(old, cp)| {
                    *old != fp && cp.offset <= size && !self.files.values().any(|t| t.fp == *old)
                })
                .max_by_key(|(_, cp)| cp.offset)
        };
        if let Some((old, cp)) = adopted {
            tracing::info!(copy = %path.display(), offset = cp.offset, "continuing a truncated file in its copy");
            let glob = cp.glob_path.clone();
            self.track(file, fp, path, &glob, cp.offset, size);
            if let Some(t) = self.files.get(&key) {
                let real = Arc::clone(&t.real_path);
                self.send(Commit::Rekey {
                    old,
                    new: fp,
                    real_path: real,
                });
            }
            return true;
        }
        let offset = if self.first_scan && self.opts.read_from == ReadFrom::Tail {
            size
        } else {
            0
        };
        self.track(file, fp, path, path, offset, size);
        true
    }

    fn track(
        &mut self,
        file: File,
        fp: Fingerprint,
        path: &Path,
        glob: &Path,
        offset: u64,
        size: u64,
    ) {
        let first = self.start_tailing(file, fp, path, glob, offset, size);
        self.send(Commit::Mark(first));
    }

    /// Tracks a file truncated since its checkpoint (or since it was last read) from its start,
    /// and moves its checkpoint back. Every frame of its earlier content was sent before (the
    /// truncation was seen by `on_truncated`, which cut them, or this process never read it),
    /// so the committer lowers the offset after them.
    fn track_truncated(&mut self, file: File, fp: Fingerprint, path: &Path, size: u64) {
        let first = self.start_tailing(file, fp, path, path, 0, size);
        self.send(Commit::Reset(first));
    }

    /// Starts tailing a file from `offset`; returns the first mark to record, which the caller
    /// sends at once (the committer writes new files to disk immediately), so that a restart
    /// can find this file again even if it is rotated away before its first frame.
    fn start_tailing(
        &mut self,
        file: File,
        fp: Fingerprint,
        path: &Path,
        glob: &Path,
        offset: u64,
        size: u64,
    ) -> Mark {
        let glob_path = Arc::new(glob.to_path_buf());
        let real = Arc::new(real_path(path));
        let name = glob.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let t = Tailed {
            fp,
            file,
            tag: make_tag(&self.opts.tag_prefix, glob),
            meta: FileMetadata::new(name),
            glob_path,
            real_path: Arc::clone(&real),
            read_offset: offset,
            carry: Vec::new(),
            skipping: false,
            state: LineState {
                format: match self.opts.format {
                    Format::Auto => None,
                    Format::Cri => Some(LineFormat::Cri),
                    Format::Docker => Some(LineFormat::Docker),
                },
                joiner: Joiner::new(self.opts.max_message_size, self.opts.partial_timeout),
                batch: Vec::new(),
                records: 0,
                safe_offset: offset,
            },
            marked: offset,
            last_size: size,
            last_growth: Instant::now(),
            rotated_at: None,
        };
        tracing::debug!(path = %path.display(), offset, size, "tailing");
        self.watch_parent(&real);
        let first = mark(&t, offset);
        self.files.insert((fp.dev, fp.ino), t);
        first
    }

    fn watch_parent(&mut self, real: &Path) {
        if let Some(dir) = real.parent() {
            let dir = dir.to_path_buf();
            self.watch(&dir);
        }
    }

    /// After the first scan, finds files rotated out of the globs while the forwarder was down:
    ///
    /// 1. files with a checkpoint that no glob matched, found again by inode next to where
    ///    they were (kubelet renamed `0.log` to `0.log.<time>`), read from their checkpoint;
    /// 2. rotated siblings of known files (`<name>.<suffix>`, not compressed) that have no
    ///    checkpoint and were modified after the last checkpoint was written: they were
    ///    created and rotated away while nobody was reading, and are read from the start.
    fn find_rotated_at_startup(&mut self) {
        let all = lock(&self.store).all();
        let Some(last_written) = all.iter().map(|(_, cp)| cp.updated_ms).max() else {
            return; // first start on this node: nothing was being read before
        };
        let mut listings: HashMap<PathBuf, Vec<PathBuf>> = HashMap::new();
        let mut list = |dir: &Path| -> Vec<PathBuf> {
            listings
                .entry(dir.to_path_buf())
                .or_insert_with(|| {
                    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
                        .map(|rd| rd.flatten().map(|e| e.path()).collect())
                        .unwrap_or_default();
                    v.sort();
                    v
                })
                .clone()
        };
        let known_inodes: HashSet<(u64, u64)> =
            all.iter().map(|(fp, _)| (fp.dev, fp.ino)).collect();
        // (directory, base name) -> glob path, for the sibling search.
        let mut bases: HashMap<(PathBuf, String), PathBuf> = HashMap::new();
        for t in self.files.values() {
            if let (Some(dir), Some(name)) = (t.real_path.parent(), t.real_path.file_name()) {
                bases.insert(
                    (dir.to_path_buf(), name.to_string_lossy().into_owned()),
                    t.glob_path.to_path_buf(),
                );
            }
        }
        for (fp, cp) in all {
            let Some(dir) = cp.real_path.parent().map(Path::to_path_buf) else {
                continue;
            };
            if let Some(name) = cp.real_path.file_name() {
                bases
                    .entry((dir.clone(), name.to_string_lossy().into_owned()))
                    .or_insert_with(|| cp.glob_path.clone());
            }
            if self.files.contains_key(&(fp.dev, fp.ino)) {
                continue;
            }
            let found = list(&dir).into_iter().find(|p| {
                std::fs::symlink_metadata(p)
                    .is_ok_and(|m| m.is_file() && m.dev() == fp.dev && m.ino() == fp.ino)
            });
            let Some(path) = found else { continue };
            let Ok(file) = File::open(&path) else {
                continue;
            };
            if !matches!(fingerprint::fingerprint(&file), Ok(Some(f)) if f == fp) {
                continue;
            }
            let size = file.metadata().map(|m| m.len()).unwrap_or(0);
            if size <= cp.offset {
                continue;
            }
            tracing::info!(path = %path.display(), offset = cp.offset, size, "draining a file rotated while the forwarder was down");
            self.track(file, fp, &path, &cp.glob_path, cp.offset, size);
            if let Some(t) = self.files.get_mut(&(fp.dev, fp.ino)) {
                t.rotated_at = Some(Instant::now());
            }
        }
        // Sibling files written after the last checkpoint was written.
        let since = std::time::UNIX_EPOCH + Duration::from_millis(last_written);
        for ((dir, base), glob) in bases {
            let prefix = format!("{base}.");
            for path in list(&dir) {
                let Some(name) = path.file_name().map(|n| n.to_string_lossy().into_owned()) else {
                    continue;
                };
                if !name.starts_with(&prefix) || is_compressed(&name) {
                    continue;
                }
                let Ok(meta) = std::fs::symlink_metadata(&path) else {
                    continue;
                };
                let key = (meta.dev(), meta.ino());
                if !meta.is_file()
                    || known_inodes.contains(&key)
                    || self.files.contains_key(&key)
                    || meta.modified().map_or(true, |m| m < since)
                {
                    continue;
                }
                let Ok(file) = File::open(&path) else {
                    continue;
                };
                let Ok(Some(fp)) = fingerprint::fingerprint(&file) else {
                    continue;
                };
                tracing::info!(path = %path.display(), size = meta.len(), "reading a file that was created and rotated while the forwarder was down");
                self.track(file, fp, &path, &glob, 0, meta.len());
                if let Some(t) = self.files.get_mut(&key) {
                    t.rotated_at = Some(Instant::now());
                }
            }
        }
    }

    /// Reads every file once (up to its budget). Returns whether anything was read.
    fn pass(&mut self) -> Result<bool, Stopped> {
        let keys: Vec<(u64, u64)> = self.files.keys().copied().collect();
        let mut progressed = false;
        let mut truncated = Vec::new();
        let mut released = Vec::new();
        for key in keys {
            if self.stopping() {
                return Err(Stopped);
            }
            let Some(mut t) = self.files.remove(&key) else {
                continue;
            };
            let outcome = self.read_file(&mut t);
            match outcome {
                Ok(ReadOutcome::Read) => progressed = true,
                Ok(ReadOutcome::Idle) => {}
                Ok(ReadOutcome::Truncated) => {
                    truncated.push(t);
                    continue;
                }
                Err(Stopped) => {
                    self.files.insert(key, t);
                    return Err(Stopped);
                }
            }
            if t.rotated_at.is_some()
                && t.read_offset >= t.last_size
                && t.last_growth.elapsed() >= self.opts.rotate_wait
            {
                released.push(t);
                continue;
            }
            self.files.insert(key, t);
        }
        for t in truncated {
            self.on_truncated(t)?;
        }
        for mut t in released {
            let mut counts = std::mem::take(&mut self.counts);
            flush_partials(
                &mut t,
                &self.opts,
                self.cache.as_deref(),
                Instant::now(),
                true,
                &mut counts,
            );
            self.counts = counts;
            self.cut_frame(&mut t)?;
            tracing::debug!(path = %t.glob_path.display(), offset = t.read_offset, "rotated file drained and released");
            self.send(Commit::Forget(t.fp));
        }
        // Orphans whose copy never came.
        let now = Instant::now();
        let mut i = 0;
        while i < self.orphans.len() {
            if now.duration_since(self.orphans[i].since) >= ORPHAN_TTL {
                let o = self.orphans.swap_remove(i);
                let unread = o.tailed.last_size.saturating_sub(o.tailed.read_offset);
                if unread > 0 {
                    telemetry::TAIL_UNREAD_BYTES.inc_by(unread);
                }
                tracing::warn!(path = %o.tailed.glob_path.display(), unread_bytes = unread, "file was truncated before it was read to its end, and no copy was found");
                // Its checkpoint is the new content's if the file is tracked again under the
                // same fingerprint (same first line).
                if !self.files.values().any(|t| t.fp == o.tailed.fp) {
                    self.send(Commit::Forget(o.tailed.fp));
                }
            } else {
                i += 1;
            }
        }
        Ok(progressed)
    }

    fn on_truncated(&mut self, mut t: Tailed) -> Result<(), Stopped> {
        self.cut_frame(&mut t)?;
        tracing::info!(path = %t.glob_path.display(), offset = t.read_offset, "file truncated (copytruncate?)");
        // The truncated file is a new file once it has a first line again (with the same
        // first line, a new content under the same fingerprint).
        self.waiting.insert(t.glob_path.to_path_buf());
        self.truncated.insert((t.fp.dev, t.fp.ino), t.fp.head);
        self.orphans.push(Orphan {
            tailed: t,
            since: Instant::now(),
        });
        // A copy may already have been seen (and deferred).
        let deferred: Vec<PathBuf> = self.deferred.drain().collect();
        for path in deferred {
            self.open_new(&path, false);
        }
        Ok(())
    }

    fn read_file(&mut self, t: &mut Tailed) -> Result<ReadOutcome, Stopped> {
        let size = match t.file.metadata() {
            Ok(m) => m.len(),
            Err(_) => return Ok(ReadOutcome::Idle),
        };
        // Log files only grow; a smaller size means truncation (copytruncate), even if the
        // writer already wrote past our offset again.
        if size < t.read_offset || size < t.last_size {
            return Ok(ReadOutcome::Truncated);
        }
        if size == t.read_offset {
            t.last_size = size;
            return Ok(ReadOutcome::Idle);
        }
        // Before reading on, check the file still starts as it did: truncated and rewritten
        // past its old size between two looks, it is another file under the same inode.
        if t.read_offset > 0
            && !matches!(fingerprint::read_head(&t.file), Ok(Some(h)) if h == t.fp.head)
        {
            return Ok(ReadOutcome::Truncated);
        }
        if size > t.last_size {
            t.last_growth = Instant::now();
        }
        t.last_size = size;
        let kube = self.cache.clone();
        // Borrow the big buffers for this file.
        let mut big = std::mem::take(&mut self.scratch_read);
        big.clear();
        big.extend_from_slice(&t.carry);
        let small = std::mem::replace(&mut t.carry, big);
        let lent_batch = t.state.batch.is_empty();
        if lent_batch {
            t.state.batch = std::mem::take(&mut self.scratch_batch);
        }
        let result = self.read_into(t, size, kube.as_deref());
        // Give them back: the file keeps only its unfinished line.
        let mut small = small;
        small.clear();
        small.extend_from_slice(&t.carry);
        if small.capacity() > 64 * 1024 && small.len() < 16 * 1024 {
            small.shrink_to(16 * 1024);
        }
        self.scratch_read = std::mem::replace(&mut t.carry, small);
        // A batch left non-empty (only after a failed append, when stopping) stays with its
        // file.
        if lent_batch && t.state.batch.is_empty() {
            self.scratch_batch = std::mem::take(&mut t.state.batch);
        }
        result?;
        Ok(ReadOutcome::Read)
    }

    fn read_into(
        &mut self,
        t: &mut Tailed,
        size: u64,
        kube: Option<&PodCache>,
    ) -> Result<(), Stopped> {
        let mut budget = READ_BUDGET;
        while t.read_offset < size && budget > 0 {
            let want = (size - t.read_offset).min(READ_CHUNK as u64).min(budget) as usize;
            let start = t.carry.len();
            t.carry.resize(start + want, 0);
            let n = match t.file.read_at(&mut t.carry[start..], t.read_offset) {
                Ok(n) => n,
                Err(e) => {
                    t.carry.truncate(start);
                    tracing::warn!(path = %t.glob_path.display(), error = %e, "read failed");
                    break;
                }
            };
            t.carry.truncate(start + n);
            if n == 0 {
                break;
            }
            t.read_offset += n as u64;
            budget = budget.saturating_sub(n as u64);
            self.counts.bytes += n as u64;
            let mut counts = std::mem::take(&mut self.counts);
            let full = process_lines(t, &self.opts, kube, &mut counts);
            self.counts = counts;
            if full {
                self.cut_frame(t)?;
            }
        }
        self.cut_frame(t)
    }

    /// Partial messages past their timeout are sent as they are.
    fn timeouts(&mut self) -> Result<(), Stopped> {
        let now = Instant::now();
        let due: Vec<(u64, u64)> = self
            .files
            .iter()
            .filter(|(_, t)| t.state.joiner.next_deadline().is_some_and(|d| d <= now))
            .map(|(k, _)| *k)
            .collect();
        for key in due {
            let Some(mut t) = self.files.remove(&key) else {
                continue;
            };
            let mut counts = std::mem::take(&mut self.counts);
            flush_partials(
                &mut t,
                &self.opts,
                self.cache.as_deref(),
                now,
                false,
                &mut counts,
            );
            self.counts = counts;
            let r = self.cut_frame(&mut t);
            self.files.insert(key, t);
            r?;
        }
        Ok(())
    }

    /// Appends the file's batch as one frame (blocking while the buffer is full), or just
    /// marks the offset if lines were consumed without records.
    fn cut_frame(&mut self, t: &mut Tailed) -> Result<(), Stopped> {
        let offset = t.state.safe_offset;
        if t.state.records == 0 {
            if offset > t.marked {
                t.marked = offset;
                let m = mark(t, offset);
                self.send(Commit::Mark(m));
            }
            return Ok(());
        }
        let payload = Bytes::from(encode_frame(&t.tag, &t.state.batch, t.state.records));
        let records = t.state.records;
        t.state.batch.clear();
        t.state.records = 0;
        if t.state.batch.capacity() > 2 * self.opts.batch_size {
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
                let m = mark(t, offset);
                self.send(Commit::Frame {
                    ticket,
                    mark: m,
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

    fn send(&self, commit: Commit) {
        // The committer lives as long as the process; a closed channel means shutdown, and
        // then a missing mark only costs duplicates at the next start.
        let _ = self.commits.blocking_send(commit);
    }
}

#[derive(Debug)]
enum ReadOutcome {
    Read,
    Idle,
    Truncated,
}

/// Whether `candidate` is named like a rotated copy of `original`: in the same directory, and
/// its name extends the original's (`app.log.1`, `app.log-20240101`) or its stem
/// (`app-20240101.log`). Files elsewhere that merely start with the same line are not copies.
fn could_be_copy(original: &Path, candidate: &Path) -> bool {
    let (Some(od), Some(cd)) = (original.parent(), candidate.parent()) else {
        return false;
    };
    let same_dir = od == cd || real_path(od) == real_path(cd);
    let (Some(on), Some(cn)) = (
        original.file_name().and_then(|n| n.to_str()),
        candidate.file_name().and_then(|n| n.to_str()),
    ) else {
        return false;
    };
    let stem = on.split('.').next().unwrap_or(on);
    same_dir && cn != on && (cn.starts_with(on) || (!stem.is_empty() && cn.starts_with(stem)))
}

fn is_compressed(name: &str) -> bool {
    [".gz", ".zst", ".bz2", ".xz", ".zip", ".lz4"]
        .iter()
        .any(|ext| name.ends_with(ext))
}

fn lock(store: &Mutex<Store>) -> std::sync::MutexGuard<'_, Store> {
    store.lock().unwrap_or_else(|e| e.into_inner())
}

fn mark(t: &Tailed, offset: u64) -> Mark {
    Mark {
        fp: t.fp,
        offset,
        real_path: Arc::clone(&t.real_path),
        glob_path: Arc::clone(&t.glob_path),
    }
}

fn real_path(path: &Path) -> PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf())
}

/// `<prefix>.<path with '/' as '.'>`: `kube.var.log.containers.<file name>`.
pub fn make_tag(prefix: &str, path: &Path) -> String {
    let p = path.to_string_lossy();
    let body: String = p
        .trim_start_matches('/')
        .chars()
        .map(|c| {
            if c == '/' || c.is_whitespace() {
                '.'
            } else {
                c
            }
        })
        .collect();
    format!("{prefix}.{body}")
}

/// Splits the carried bytes into lines and feeds them through parse and join into the batch.
/// Returns whether the batch reached `batch_size`.
fn process_lines(
    t: &mut Tailed,
    opts: &TailOptions,
    cache: Option<&PodCache>,
    counts: &mut Counts,
) -> bool {
    let base = t.read_offset - t.carry.len() as u64;
    let mut pos = 0usize;
    let kube = t.meta.current(cache).map(<[u8]>::to_vec);
    let st = &mut t.state;
    while let Some(nl) = memchr::memchr(b'\n', &t.carry[pos..]) {
        let line_start = base + pos as u64;
        let line = &t.carry[pos..pos + nl];
        pos += nl + 1;
        if t.skipping {
            t.skipping = false;
        } else {
            let line = if line.len() > opts.max_line_size {
                counts.truncated += 1;
                &line[..opts.max_line_size]
            } else {
                line
            };
            handle_line(st, line, line_start, kube.as_deref(), opts, counts);
        }
        st.safe_offset = st.joiner.pending_offset().unwrap_or(base + pos as u64);
    }
    let rest = t.carry.len() - pos;
    if rest > opts.max_line_size {
        if !t.skipping {
            counts.truncated += 1;
            let line = &t.carry[pos..pos + opts.max_line_size];
            handle_line(st, line, base + pos as u64, kube.as_deref(), opts, counts);
            t.skipping = true;
        }
        pos = t.carry.len();
    }
    t.carry.drain(..pos);
    st.batch.len() >= opts.batch_size
}

fn handle_line(
    st: &mut LineState,
    line: &[u8],
    line_start: u64,
    kube: Option<&[u8]>,
    opts: &TailOptions,
    counts: &mut Counts,
) {
    let format = *st.format.get_or_insert_with(|| LineFormat::detect(line));
    match format.parse(line) {
        Ok(parsed) => {
            let batch = &mut st.batch;
            let records = &mut st.records;
            st.joiner.push(parsed, line_start, |m| {
                encode_record(m.time, m.stream, m.text, kube, opts.record, batch);
                *records += 1;
                counts.records += 1;
                match m.forced {
                    Some(crate::parse::ForcedFlush::Size) => counts.forced_size += 1,
                    Some(crate::parse::ForcedFlush::Timeout) => counts.forced_timeout += 1,
                    None => {}
                }
            });
        }
        Err(e) => {
            counts.invalid += 1;
            tracing::trace!(error = %e, "invalid line skipped");
        }
    }
}

fn flush_partials(
    t: &mut Tailed,
    opts: &TailOptions,
    cache: Option<&PodCache>,
    now: Instant,
    force: bool,
    counts: &mut Counts,
) {
    let kube = t.meta.current(cache).map(<[u8]>::to_vec);
    let st = &mut t.state;
    let batch = &mut st.batch;
    let records = &mut st.records;
    st.joiner.flush_expired(now, force, |m| {
        encode_record(
            m.time,
            m.stream,
            m.text,
            kube.as_deref(),
            opts.record,
            batch,
        );
        *records += 1;
        counts.records += 1;
        counts.forced_timeout += 1;
    });
    let consumed = t.read_offset - t.carry.len() as u64;
    st.safe_offset = st.joiner.pending_offset().unwrap_or(consumed);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// A tailer of `<dir>/logs/*.log` (docker format) with an in-memory store, its committer
    /// running on `rt`.
    struct Rig {
        rt: tokio::runtime::Runtime,
        tailer: Tailer,
        store: Arc<Mutex<Store>>,
        committer: tokio::task::JoinHandle<()>,
        log: PathBuf,
        _dir: tempfile::TempDir,
    }

    impl Rig {
        fn new(store: Store) -> Rig {
            let dir = tempfile::tempdir().unwrap();
            let logs = dir.path().join("logs");
            std::fs::create_dir_all(&logs).unwrap();
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap();
            let (buffer, _sealed, _) = Buffer::open(logferry_common::chunk::BufferOptions::new(
                dir.path().join("buffer"),
                "test",
            ))
            .unwrap();
            let store = Arc::new(Mutex::new(store));
            let (tx, rx) = mpsc::channel(1024);
            let committer = rt.spawn(committer::run(rx, Arc::clone(&store)));
            let glob = format!("{}/*.log", logs.display());
            let discovery = Discovery::new(&[glob], &[], dir.path()).unwrap();
            let opts = TailOptions {
                format: Format::Docker,
                read_from: ReadFrom::Head,
                max_line_size: 64 * 1024,
                max_message_size: 64 * 1024,
                partial_timeout: Duration::from_secs(5),
                rotate_wait: Duration::from_secs(5),
                rescan_interval: Duration::from_secs(60),
                poll_interval: Duration::from_secs(1),
                tag_prefix: "test".into(),
                batch_size: 1024 * 1024,
                record: RecordOptions {
                    merge_log: false,
                    keep_log: false,
                },
            };
            let (tailer, _) = Tailer::new(
                opts,
                discovery,
                buffer,
                rt.handle().clone(),
                tx,
                Arc::clone(&store),
                None,
                CancellationToken::new(),
            );
            Rig {
                rt,
                tailer,
                store,
                committer,
                log: logs.join("app.log"),
                _dir: dir,
            }
        }

        /// One run-loop turn: rescan, open what waits for a first line, read every file.
        fn turn(&mut self) {
            self.tailer.rescan();
            let waiting: Vec<PathBuf> = self.tailer.waiting.drain().collect();
            for path in waiting {
                self.tailer.open_new(&path, false);
            }
            self.tailer.pass().unwrap();
        }

        /// Ends the tailer, lets the committer apply everything, returns the store.
        fn finish(self) -> Store {
            drop(self.tailer);
            self.rt.block_on(self.committer).unwrap();
            let store = std::mem::replace(&mut *lock(&self.store), Store::in_memory());
            store
        }
    }

    /// A docker json-file line.
    fn line(msg: &str) -> String {
        format!("{{\"log\":\"{msg}\\n\",\"stream\":\"stdout\",\"time\":\"2026-12-02T16:00:00.000000000Z\"}}\n")
    }
    /// The first line of every content (100 bytes as a line).
    const BANNER: &str = "app started, version 1.2.3-rc";

    fn rewrite(path: &Path, banner: &str, lines: std::ops::Range<u32>) -> u64 {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(false)
            .open(path)
            .unwrap();
        f.set_len(0).unwrap();
        let mut text = line(banner);
        for i in lines {
            text.push_str(&line(&format!("line-{i:05}")));
        }
        f.write_all(text.as_bytes()).unwrap();
        text.len() as u64
    }

    fn fp_of(path: &Path) -> Fingerprint {
        fingerprint::fingerprint(&File::open(path).unwrap())
            .unwrap()
            .unwrap()
    }

    #[test]
    fn a_file_shorter_than_its_checkpoint_moves_it_back() {
        // A checkpoint of 1000 for a file now 100 bytes long with the same head (and inode).
        let mut rig = Rig::new(Store::in_memory());
        let size = rewrite(&rig.log, BANNER, 0..0);
        assert_eq!(size, 100);
        let fp = fp_of(&rig.log);
        lock(&rig.store).set(fp, 1000, &rig.log, &rig.log);
        rig.turn();
        let store = rig.finish();
        let cp = store.get(&fp).expect("checkpoint kept");
        assert!(cp.offset <= size, "stale checkpoint {} > {size}", cp.offset);
        assert_eq!(cp.offset, size, "read to its end");
    }

    /// Truncated while tailed (its frames possibly not yet durable) and rewritten shorter with
    /// the same first line; with `copy`, a copytruncate copy of the old content was there first.
    fn truncated_while_tailed(copy: bool) {
        let mut rig = Rig::new(Store::in_memory());
        let old_size = rewrite(&rig.log, BANNER, 0..50);
        let fp = fp_of(&rig.log);
        rig.turn();
        let copy_path = rig.log.with_file_name("app-1.log");
        let copy_fp = copy.then(|| {
            std::fs::copy(&rig.log, &copy_path).unwrap();
            fp_of(&copy_path)
        });
        let size = rewrite(&rig.log, BANNER, 0..2);
        assert!(size < old_size);
        assert_eq!(fp_of(&rig.log), fp, "same inode, same first line");
        rig.turn(); // sees the truncation (and continues in the copy)
        rig.turn(); // opens the file again
        if !copy {
            // The old content's copy never comes.
            assert_eq!(rig.tailer.orphans.len(), 1);
            rig.tailer.orphans[0].since = Instant::now()
                .checked_sub(ORPHAN_TTL)
                .expect("uptime over ORPHAN_TTL");
            rig.turn();
            assert!(rig.tailer.orphans.is_empty());
        }
        let store = rig.finish();
        let cp = store.get(&fp).expect("the new content's checkpoint");
        assert_eq!(cp.offset, size);
        if let Some(copy_fp) = copy_fp {
            let cp = store.get(&copy_fp).expect("the copy's checkpoint");
            assert_eq!(cp.offset, old_size);
        }
    }

    #[test]
    fn truncated_while_tailed_with_the_same_first_line_resets_the_checkpoint() {
        truncated_while_tailed(false);
    }

    #[test]
    fn copytruncated_with_the_same_first_line_keeps_both_checkpoints() {
        truncated_while_tailed(true);
    }

    #[test]
    fn copies() {
        let o = Path::new("/l/app.log");
        assert!(could_be_copy(o, Path::new("/l/app.log.1")));
        assert!(could_be_copy(o, Path::new("/l/app.log-20240101")));
        assert!(could_be_copy(o, Path::new("/l/app-20240101.log")));
        assert!(!could_be_copy(o, Path::new("/l/app.log")));
        assert!(!could_be_copy(o, Path::new("/other/app.log.1")));
        assert!(!could_be_copy(o, Path::new("/l/web.log")));
    }

    #[test]
    fn tags() {
        assert_eq!(
            make_tag("kube", Path::new("/var/log/containers/a_b_c-1.log")),
            "kube.var.log.containers.a_b_c-1.log"
        );
    }
}
