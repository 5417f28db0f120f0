//! Watching the pipeline directory: inotify (through `notify`) wakes the rescan as soon as a
//! pipeline file or the policy changes, instead of waiting for `rescan_interval`.
//!
//! ## Invariants
//! - Watching only wakes the rescan; the rescan decides (by content hash) what changed. A
//!   missed event, or a directory that cannot be watched, delays an apply until the next
//!   `rescan_interval`; it never loses one.
//! - A burst of events is one wake: the waker holds at most one pending wake-up, and the
//!   rescan leaves a file written in the last [`SETTLE`](super::registry::SETTLE) for a later
//!   round, so the loop waits that long after a wake before it rescans.

use std::path::Path;
use std::sync::Arc;

use notify::{RecursiveMode, Watcher};
use tokio::sync::Notify;

/// Watches `dir` (recursively: the tenants' directories) and the directory of `policy`,
/// waking `wake` on every change. `None` (logged) when inotify is not available; the periodic
/// rescan still runs.
pub fn watch(
    dir: &Path,
    policy: Option<&Path>,
    wake: Arc<Notify>,
) -> Option<notify::RecommendedWatcher> {
    let handler = move |event: notify::Result<notify::Event>| {
        let relevant = event.map_or(true, |e| !matches!(e.kind, notify::EventKind::Access(_)));
        if relevant {
            wake.notify_one();
        }
    };
    let mut watcher = match notify::recommended_watcher(handler) {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!(error = %e, "inotify unavailable; pipeline files are read every rescan_interval");
            return None;
        }
    };
    let targets = std::iter::once((dir, RecursiveMode::Recursive)).chain(
        policy
            .and_then(Path::parent)
            .map(|p| (p, RecursiveMode::NonRecursive)),
    );
    for (path, mode) in targets {
        if let Err(e) = watcher.watch(path, mode) {
            tracing::warn!(path = %path.display(), error = %e,
                "cannot watch; changes there are read every rescan_interval");
        }
    }
    Some(watcher)
}
