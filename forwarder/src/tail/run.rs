//! The tailer's loop, on its own OS thread.
//!
//! ```text
//! loop:
//!   rescan if due or a directory changed; open what waits for a first line
//!   pass: read every file (up to its budget) -> frames; truncated files -> orphans;
//!         drained rotated files -> released; orphans past their TTL -> given up
//!   partial messages past their timeout -> sent as they are
//!   nothing read: sleep until woken, the poll interval, a partial-line timeout or a
//!   rotate_wait expiry
//! stop: every batch becomes a frame; partial messages are left
//! ```
//!
//! ## Invariants
//! - **Back-pressure, never silent drops.** Appending to a full buffer blocks this thread, so
//!   files are simply not read until the aggregators catch up.
//! - **Frugal when idle.** It sleeps until inotify wakes it, or for the poll interval (a cheap
//!   `fstat` of each file), or until a partial message or a rotated file is due; the globs are
//!   rescanned every `rescan_interval` or when a directory changed.
//! - **A stop loses nothing.** Asked to stop ([`TailerHandle::stop`]), it appends what it
//!   batched; partial messages are not sent, and as their offset was never committed the next
//!   start reads them again, whole. A failed append stops it the same way.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use logferry_common::chunk::Buffer;
use logferry_common::telemetry;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::checkpoint::Store;
use super::files::Files;
use super::frames::{Commit, Sink, Stopped};
use super::lines::{ReadOutcome, Reader};
use super::watch::Watch;
use super::TailOptions;
use crate::discover::Discovery;
use crate::kubernetes::PodCache;

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

/// The tailer thread's state.
pub struct Tailer {
    pub(super) opts: TailOptions,
    stop: Arc<AtomicBool>,
    wake: std_mpsc::Receiver<()>,
    next_rescan: Instant,
    /// The files and their rotation ([`super::files`]).
    pub(super) files: Files,
    /// Reading lines into batches ([`super::lines`]).
    pub(super) reader: Reader,
    /// Frames to the buffer, commits to the committer ([`super::frames`]).
    pub(super) sink: Sink,
    /// Inotify ([`super::watch`]).
    pub(super) watch: Watch,
}

impl std::fmt::Debug for Tailer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tailer")
            .field("files", &self.files.tailed.len())
            .field("orphans", &self.files.orphans.len())
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
        let sink = Sink::new(buffer, runtime, commits, cancel, opts.batch_size);
        let tailer = Tailer {
            opts,
            stop,
            wake: wake_rx,
            next_rescan: Instant::now(),
            files: Files::new(discovery, store),
            reader: Reader::new(cache),
            sink,
            watch: Watch::new(wake_tx),
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
        self.watch.start(self.files.dirs());
        loop {
            if self.stopping() {
                break;
            }
            let now = Instant::now();
            if self.watch.take_rescan() || now >= self.next_rescan {
                self.rescan();
                self.next_rescan = Instant::now() + self.opts.rescan_interval;
            }
            self.open_waiting();
            let progressed = match self.pass() {
                Ok(p) => p,
                Err(Stopped) => break,
            };
            if self.timeouts().is_err() {
                break;
            }
            self.reader.publish();
            telemetry::TAIL_FILES.set(self.files.tailed.len() as i64);
            if !progressed {
                let wait = self.next_wait();
                match self.wake.recv_timeout(wait) {
                    Ok(()) | Err(std_mpsc::RecvTimeoutError::Timeout) => {}
                    Err(std_mpsc::RecvTimeoutError::Disconnected) => break,
                }
            }
        }
        // Stop: what is batched goes to the buffer; partial messages are not sent (their
        // offset was never committed, so the next start reads them again, whole).
        let keys: Vec<(u64, u64)> = self.files.tailed.keys().copied().collect();
        for key in keys {
            if let Some(mut t) = self.files.tailed.remove(&key) {
                if self.sink.cut_frame(&mut t).is_err() {
                    break;
                }
            }
        }
        self.reader.publish();
        tracing::debug!("tailer stopped");
    }

    fn stopping(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    fn next_wait(&self) -> Duration {
        let now = Instant::now();
        let mut wait = self
            .opts
            .poll_interval
            .min(self.next_rescan.saturating_duration_since(now));
        for t in self.files.tailed.values() {
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

    /// Reads every file once (up to its budget). Returns whether anything was read.
    pub(super) fn pass(&mut self) -> Result<bool, Stopped> {
        let keys: Vec<(u64, u64)> = self.files.tailed.keys().copied().collect();
        let mut progressed = false;
        let mut truncated = Vec::new();
        let mut released = Vec::new();
        for key in keys {
            if self.stopping() {
                return Err(Stopped);
            }
            let Some(mut t) = self.files.tailed.remove(&key) else {
                continue;
            };
            let outcome = self.reader.read_file(&mut t, &self.opts, &self.sink);
            match outcome {
                Ok(ReadOutcome::Read) => progressed = true,
                Ok(ReadOutcome::Idle) => {}
                Ok(ReadOutcome::Truncated) => {
                    truncated.push(t);
                    continue;
                }
                Err(Stopped) => {
                    self.files.tailed.insert(key, t);
                    return Err(Stopped);
                }
            }
            if t.drained(self.opts.rotate_wait) {
                released.push(t);
                continue;
            }
            self.files.tailed.insert(key, t);
        }
        for t in truncated {
            self.on_truncated(t)?;
        }
        for t in released {
            self.release(t)?;
        }
        self.expire_orphans();
        Ok(progressed)
    }

    /// Partial messages past their timeout are sent as they are.
    fn timeouts(&mut self) -> Result<(), Stopped> {
        let now = Instant::now();
        let due: Vec<(u64, u64)> = self
            .files
            .tailed
            .iter()
            .filter(|(_, t)| t.state.joiner.next_deadline().is_some_and(|d| d <= now))
            .map(|(k, _)| *k)
            .collect();
        for key in due {
            let Some(mut t) = self.files.tailed.remove(&key) else {
                continue;
            };
            self.reader.flush_partials(&mut t, &self.opts, now, false);
            let r = self.sink.cut_frame(&mut t);
            self.files.tailed.insert(key, t);
            r?;
        }
        Ok(())
    }
}
