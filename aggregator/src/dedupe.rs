//! Recently acknowledged chunk ids, so a re-sent chunk is acked again without being stored twice.
//!
//! A Forward client that times out waiting for an ack re-sends the same chunk with the same
//! `chunk` id (Fluentd after `ack_response_timeout`, our forwarder after `ack_timeout`). If the
//! first copy was committed and acked but the ack was lost, storing the copy again would be a
//! duplicate. The aggregator therefore remembers every chunk id it acked for `dedupe_window` and
//! answers a repeat with an ack alone.
//!
//! ## Invariants
//! - An id is remembered only *after* its ack was written, so a remembered id always names data
//!   that is durable: answering a repeat from memory never acks something that is not on disk.
//! - The memory is an optimisation: losing it costs duplicates, never data. It lives in memory
//!   (the hot path) and in `sled` (so a restart does not forget), and the sled copy is rebuilt
//!   empty if it cannot be opened. No ack ever waits for sled.
//! - Memory is bounded: at most [`MAX_ENTRIES`] ids, the oldest forgotten first.
//! - An id is kept as a 128-bit digest ([`Digest`]), not as its bytes: a fixed 16 bytes inline
//!   instead of a heap allocation per id, which halves the set's memory (a busy aggregator
//!   remembers hundreds of thousands of ids). Two different ids share a digest with a
//!   probability near 2^-128 per pair: never, in practice, and a collision costs a lost chunk
//!   only if it happens between a new chunk and one acked within the window.

use std::collections::{HashSet, VecDeque};
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sha2::{Digest as _, Sha256};

/// Most chunk ids remembered at once (about 50 bytes each in memory).
pub const MAX_ENTRIES: usize = 200_000;

/// What is remembered of a chunk id: the first 128 bits of its SHA-256.
pub type Digest = [u8; 16];

/// The digest of a chunk id (the raw bytes of its msgpack value).
pub fn digest(id: &[u8]) -> Digest {
    let full = Sha256::digest(id);
    let mut out = [0u8; 16];
    out.copy_from_slice(&full[..16]);
    out
}

/// How the sled copy is opened: the index is small, and sled's default cache (1 GiB) is not.
/// sled's background flusher keeps the copy close to the in-memory set. Keys are digests;
/// keys of another length (raw ids stored by older versions) are removed at open.
const SLED_OPTIONS: logferry_common::kv::Options<'static> = logferry_common::kv::Options {
    tree: "acked_chunks",
    cache_bytes: 8 * 1024 * 1024,
    flush_every_ms: Some(500),
    what: "acked-chunk index",
};

/// The set of recently acked chunk ids.
#[derive(Debug)]
pub struct AckedChunks {
    window: Duration,
    state: Mutex<State>,
    db: Option<sled::Tree>,
}

#[derive(Debug, Default)]
struct State {
    ids: HashSet<Digest>,
    /// Insertion order with the time of the ack, for expiry.
    order: VecDeque<(u64, Digest)>,
}

fn now_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl AckedChunks {
    /// An in-memory set only (tests, or `dedupe_window = "0s"` which disables it entirely).
    pub fn in_memory(window: Duration) -> AckedChunks {
        AckedChunks {
            window,
            state: Mutex::new(State::default()),
            db: None,
        }
    }

    /// Opens the set persisted under `dir` (a sled database), loading ids still inside the
    /// window. A database that cannot be opened is moved aside and a fresh one is created; if
    /// even that fails, the set runs in memory only (see [`logferry_common::kv`]).
    pub fn open(dir: &Path, window: Duration) -> AckedChunks {
        let mut set = AckedChunks::in_memory(window);
        if window.is_zero() {
            return set;
        }
        let tree = logferry_common::kv::open(dir, SLED_OPTIONS);
        if let Some(tree) = &tree {
            let cutoff = now_millis().saturating_sub(window.as_millis() as u64);
            let mut loaded: Vec<(u64, sled::IVec, Option<Digest>)> = tree
                .iter()
                .filter_map(Result::ok)
                .filter_map(|(k, v)| {
                    let at = u64::from_be_bytes(v.as_ref().try_into().ok()?);
                    let d = Digest::try_from(k.as_ref()).ok();
                    Some((at, k, d))
                })
                .collect();
            loaded.sort_unstable_by_key(|(at, _, _)| *at);
            let state = set.state.get_mut().unwrap_or_else(|e| e.into_inner());
            for (at, key, d) in loaded {
                match d {
                    Some(d) if at >= cutoff => {
                        if state.ids.insert(d) {
                            state.order.push_back((at, d));
                        }
                    }
                    _ => {
                        let _ = tree.remove(key);
                    }
                }
            }
            tracing::info!(ids = state.ids.len(), "loaded recently acked chunk ids");
        }
        set.db = tree;
        set
    }

    /// Whether `id` was acked within the window.
    pub fn contains(&self, id: &[u8]) -> bool {
        if self.window.is_zero() {
            return false;
        }
        let d = digest(id);
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.ids.contains(&d)
    }

    /// Remembers that `id` was acked now. Call only after the ack was written.
    pub fn insert(&self, id: &[u8]) {
        if self.window.is_zero() {
            return;
        }
        let id = digest(id);
        let now = now_millis();
        let cutoff = now.saturating_sub(self.window.as_millis() as u64);
        let mut expired = Vec::new();
        {
            let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            if !state.ids.insert(id) {
                return;
            }
            state.order.push_back((now, id));
            while let Some((at, _)) = state.order.front() {
                if *at >= cutoff && state.order.len() <= MAX_ENTRIES {
                    break;
                }
                if let Some((_, old)) = state.order.pop_front() {
                    state.ids.remove(&old);
                    expired.push(old);
                }
            }
        }
        if let Some(db) = &self.db {
            // sled buffers these in memory and flushes in the background; no ack waits on it.
            let _ = db.insert(id, &now.to_be_bytes());
            for old in expired {
                let _ = db.remove(old);
            }
        }
    }

    /// Flushes the persistent copy (on shutdown).
    pub fn flush(&self) {
        if let Some(db) = &self.db {
            let _ = db.flush();
        }
    }

    /// Ids currently remembered.
    pub fn len(&self) -> usize {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .ids
            .len()
    }

    /// Whether no id is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_within_window_and_forgets_after() {
        let set = AckedChunks::in_memory(Duration::from_secs(60));
        assert!(!set.contains(b"a"));
        set.insert(b"a");
        assert!(set.contains(b"a"));
        let zero = AckedChunks::in_memory(Duration::ZERO);
        zero.insert(b"a");
        assert!(!zero.contains(b"a"));
    }

    #[test]
    fn survives_a_restart_through_sled() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("index");
        {
            let set = AckedChunks::open(&path, Duration::from_secs(60));
            set.insert(b"chunk-1\n");
            set.flush();
        }
        let set = AckedChunks::open(&path, Duration::from_secs(60));
        assert!(set.contains(b"chunk-1\n"));
        assert!(!set.contains(b"chunk-2"));
    }

    #[test]
    fn raw_ids_stored_by_older_versions_are_dropped_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("index");
        {
            let tree = logferry_common::kv::open(&path, SLED_OPTIONS).unwrap();
            let raw = b"\xb8c29tZS1jaHVuay1pZC0xMjM0NTY=";
            tree.insert(raw, &now_millis().to_be_bytes()).unwrap();
            tree.insert(digest(b"kept"), &now_millis().to_be_bytes())
                .unwrap();
            tree.flush().unwrap();
        }
        let set = AckedChunks::open(&path, Duration::from_secs(60));
        assert_eq!(set.len(), 1);
        assert!(set.contains(b"kept"));
        assert_eq!(set.db.as_ref().map(sled::Tree::len), Some(1));
    }
}
