//! The committer: moves file offsets once the lines before them are durable in the buffer.
//!
//! It receives [`Commit`]s in the order the tailer produced them and awaits each frame's
//! ticket before applying the mark that came with it. Tickets of one buffer resolve in append
//! order, so waiting in order costs nothing, and a mark can never overtake the frame of an
//! earlier mark of the same file.
//!
//! A [`Commit::Reset`] (a file truncated and read again from its start) lowers the offset.
//! The tailer sends it after every frame of the file's earlier content, so those frames, applied
//! in order before it even if their tickets resolve late, can no longer raise the offset above
//! the new content's; the frames of the new content then move it on from there.
//!
//! A ticket that fails (the buffer could not write or sync) freezes that file's offset for the
//! rest of this process run: later frames of the file may be durable, but the lines of the
//! failed one are not, and the offset must stay before them. The tailer stops on such an
//! error anyway; the next start re-reads from the frozen offset.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;

use super::checkpoint::{lock, Store};
use super::fingerprint::Fingerprint;
use super::Commit;

/// How often checkpoints are written to sled.
pub const FLUSH_INTERVAL: Duration = Duration::from_secs(1);

/// Runs until the channel closes (the tailer ended), then writes the checkpoints to disk.
pub async fn run(mut rx: mpsc::Receiver<Commit>, store: Arc<Mutex<Store>>) {
    let mut frozen: HashSet<Fingerprint> = HashSet::new();
    let mut tick = tokio::time::interval(FLUSH_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut dirty = false;
    loop {
        let commit = tokio::select! {
            c = rx.recv() => c,
            _ = tick.tick() => {
                if dirty {
                    flush(&store).await;
                    dirty = false;
                }
                continue;
            }
        };
        let Some(commit) = commit else { break };
        dirty = true;
        match commit {
            Commit::Frame {
                ticket,
                mark,
                permit,
            } => match ticket.durable().await.map(|()| drop(permit)) {
                Ok(()) => {
                    if !frozen.contains(&mark.fp) {
                        lock(&store).set(mark.fp, mark.offset, &mark.real_path, &mark.glob_path);
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, path = %mark.glob_path.display(), "buffered lines were not stored; this file's offset stays where it was");
                    frozen.insert(mark.fp);
                }
            },
            Commit::Mark(mark) => {
                let new = !frozen.contains(&mark.fp)
                    && lock(&store).set(mark.fp, mark.offset, &mark.real_path, &mark.glob_path);
                if new {
                    // A file seen for the first time is written at once: if it is rotated
                    // away before the next periodic flush and we crash, a restart must still
                    // know it existed.
                    flush(&store).await;
                    dirty = false;
                }
            }
            Commit::Rekey {
                old,
                new,
                real_path,
            } => {
                if frozen.contains(&old) {
                    frozen.insert(new);
                }
                lock(&store).rekey(old, new, &real_path);
            }
            Commit::Reset(mark) => {
                // Lowering an offset only re-reads lines, so it applies to a frozen file too
                // (which stays frozen).
                lock(&store).reset(mark.fp, mark.offset, &mark.real_path, &mark.glob_path);
                // Written at once: a stale, higher offset left on disk by a crash would skip
                // the new content's lines up to it once the file grew past it.
                flush(&store).await;
                dirty = false;
            }
            Commit::Forget(fp) => {
                if !frozen.contains(&fp) {
                    lock(&store).remove(&fp);
                }
            }
        }
    }
    flush(&store).await;
}

async fn flush(store: &Arc<Mutex<Store>>) {
    let store = Arc::clone(store);
    // sled's flush fsyncs: keep it off the runtime thread.
    let _ = tokio::task::spawn_blocking(move || lock(&store).flush(true)).await;
}
