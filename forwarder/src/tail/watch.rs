//! Watching: inotify (through `notify`) wakes the tailer instead of polling.
//!
//! ## Invariants
//! - Watching only wakes the tailer; it never decides what is read. Without inotify (or for a
//!   directory that cannot be watched) every file is still looked at every `poll_interval`
//!   and the globs are rescanned every `rescan_interval`, so a missed event delays lines but
//!   loses none.
//! - Data written to a file only wakes the tailer; anything else in a watched directory (a
//!   file created, renamed or deleted, or an event lost) also asks for a rescan. Metadata
//!   changes are ignored.
//! - Directories are watched non-recursively, each once: the directories of the globs, and
//!   the directory each tailed file really is in.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc as std_mpsc;
use std::sync::Arc;

/// The inotify watches and what they tell the tailer.
#[derive(Debug)]
pub(super) struct Watch {
    /// Wakes the tailer's loop.
    wake: std_mpsc::SyncSender<()>,
    /// Set when a directory changed.
    rescan_needed: Arc<AtomicBool>,
    watcher: Option<notify::RecommendedWatcher>,
    watched: HashSet<PathBuf>,
}

impl Watch {
    /// Not watching yet; a rescan is due.
    pub(super) fn new(wake: std_mpsc::SyncSender<()>) -> Watch {
        Watch {
            wake,
            rescan_needed: Arc::new(AtomicBool::new(true)),
            watcher: None,
            watched: HashSet::new(),
        }
    }

    /// Starts inotify and watches `dirs`.
    pub(super) fn start(&mut self, dirs: Vec<PathBuf>) {
        let wake = self.wake.clone();
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
        for dir in dirs {
            self.watch(&dir);
        }
    }

    /// Whether a directory changed since the last call.
    pub(super) fn take_rescan(&self) -> bool {
        self.rescan_needed.swap(false, Ordering::SeqCst)
    }

    /// Watches the directory a file really is in.
    pub(super) fn watch_parent(&mut self, real: &Path) {
        if let Some(dir) = real.parent() {
            let dir = dir.to_path_buf();
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
}
