//! Recently acknowledged requests, so a re-sent chunk is acked again without being stored twice.
//!
//! A Forward client that times out waiting for an ack re-sends the same chunk with the same
//! `chunk` id (Fluentd after `ack_response_timeout`, our forwarder after `ack_timeout`). If the
//! first copy was committed and acked but the ack was lost, storing the copy again would be a
//! duplicate. The aggregator therefore remembers every request it acked for `dedupe_window` and
//! answers a repeat with an ack alone.
//!
//! ## What identifies a re-send
//! A re-send is the *same request from the same sender*: its [`Key`] is a 128-bit XXH3 digest of
//! the sender's identity ([`Source`]: listener, authenticated user, address) and of the
//! request's bytes exactly as received (tag, entries, options with the chunk id). Clients
//! choose chunk ids freely — counters, constants, ids a restarted client repeats — so the id
//! alone says nothing: two different requests with one id, or the same request from another
//! sender, are stored, never suppressed. Only requests that carry a chunk id (that ask for an
//! ack) are remembered.
//!
//! ## Invariants
//! - A key is remembered only *after* its ack was written, so a remembered key always names
//!   data that is durable: answering a repeat from memory never acks something not on disk.
//! - The memory is an optimisation: losing it costs duplicates, never data. It lives in memory
//!   (the hot path) and, when acks mean fsync'd data (`fsync = "always"`), in `sled`, so a
//!   restart does not forget. With `interval` or `never`, keys are not persisted: after a power
//!   loss a key could outlive the data it names and the sender's re-send would be acked and
//!   dropped. No ack ever waits for sled.
//! - A key older than the window is never honoured, whether or not it was swept yet.
//! - Memory is bounded: at most [`MAX_ENTRIES`] keys, and one sender holds at most
//!   [`MAX_PER_SOURCE`] of them (its own oldest go first), so a client spraying unique ids
//!   evicts only its own window, not everybody's. Past [`MAX_ENTRIES`] the sender holding
//!   the most keys loses its oldest.
//! - XXH3-128 is not a cryptographic hash, and need not be: a collision would have to be
//!   between two requests of the *same* sender within the window, and costs that sender's own
//!   request.

use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use xxhash_rust::xxh3::{xxh3_128_with_seed, xxh3_64};

/// Most keys remembered at once (about 60 bytes each in memory).
pub const MAX_ENTRIES: usize = 200_000;

/// Most keys one sender holds at once.
pub const MAX_PER_SOURCE: usize = MAX_ENTRIES / 4;

/// Sweeps of every sender's expired keys happen once per this many inserts.
const SWEEP_EVERY: u32 = 4096;

/// What is remembered of an acked request.
pub type Key = [u8; 16];

/// Who sent a request, as far as the connection knows: a digest of the listener, the
/// authenticated user (if any) and the peer address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Source(u64);

impl Source {
    /// The identity of a connection.
    pub fn new(listener: &str, user: Option<&str>, peer: std::net::IpAddr) -> Source {
        let text = format!("{listener}\u{0}{}\u{0}{peer}", user.unwrap_or(""));
        Source(xxh3_64(text.as_bytes()))
    }

    /// The key of `request` (its bytes as received) from this source.
    pub fn key(self, request: &[u8]) -> Key {
        xxh3_128_with_seed(request, self.0).to_be_bytes()
    }
}

/// How the sled copy is opened: the index is small, and sled's default cache (1 GiB) is not.
/// sled's background flusher keeps the copy close to the in-memory set. Keys are [`Key`]s,
/// values the ack time (ms, big-endian) and the source; entries of any other shape (written by
/// older versions, keyed by the chunk id alone) are removed at open.
const SLED_OPTIONS: logferry_common::kv::Options<'static> = logferry_common::kv::Options {
    tree: "acked_requests",
    cache_bytes: 8 * 1024 * 1024,
    flush_every_ms: Some(500),
    what: "acked-request index",
};

/// The set of recently acked requests.
#[derive(Debug)]
pub struct AckedChunks {
    window: Duration,
    state: Mutex<State>,
    db: Option<sled::Tree>,
}

#[derive(Debug, Default)]
struct State {
    /// Every remembered key with its ack time (ms).
    keys: HashMap<Key, u64>,
    /// Each sender's keys in ack order, for expiry and per-sender bounds.
    by_source: HashMap<Source, VecDeque<(u64, Key)>>,
    inserts: u32,
}

impl State {
    /// Forgets the oldest key of `source`; returns it if it was still the live entry.
    fn pop_oldest(&mut self, source: Source) -> Option<Key> {
        let queue = self.by_source.get_mut(&source)?;
        let (at, key) = queue.pop_front()?;
        if queue.is_empty() {
            self.by_source.remove(&source);
        }
        // A key acked again later has a newer time: that entry stays.
        (self.keys.get(&key) == Some(&at)).then(|| {
            self.keys.remove(&key);
            key
        })
    }

    /// Forgets `source`'s keys acked before `cutoff`.
    fn expire(&mut self, source: Source, cutoff: u64, forgotten: &mut Vec<Key>) {
        while self
            .by_source
            .get(&source)
            .and_then(VecDeque::front)
            .is_some_and(|(at, _)| *at < cutoff)
        {
            forgotten.extend(self.pop_oldest(source));
        }
    }
}

fn now_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl AckedChunks {
    /// An in-memory set only (tests, `fsync` other than `always`, or `dedupe_window = "0s"`,
    /// which disables it entirely).
    pub fn in_memory(window: Duration) -> AckedChunks {
        AckedChunks {
            window,
            state: Mutex::new(State::default()),
            db: None,
        }
    }

    /// Opens the set persisted under `dir` (a sled database), loading keys still inside the
    /// window. A database that cannot be opened is moved aside and a fresh one is created; if
    /// even that fails, the set runs in memory only (see [`logferry_common::kv`]).
    pub fn open(dir: &Path, window: Duration) -> AckedChunks {
        let mut set = AckedChunks::in_memory(window);
        if window.is_zero() {
            return set;
        }
        let tree = logferry_common::kv::open(dir, SLED_OPTIONS);
        if let Some(tree) = &tree {
            let cutoff = set.cutoff(now_millis());
            let mut loaded = Vec::new();
            for (k, v) in tree.iter().filter_map(Result::ok) {
                let entry = (|| {
                    let key = Key::try_from(k.as_ref()).ok()?;
                    let at = u64::from_be_bytes(v.get(..8)?.try_into().ok()?);
                    let source = u64::from_be_bytes(v.get(8..16)?.try_into().ok()?);
                    (at >= cutoff && v.len() == 16).then_some((at, key, Source(source)))
                })();
                match entry {
                    Some(entry) => loaded.push(entry),
                    None => {
                        let _ = tree.remove(k);
                    }
                }
            }
            loaded.sort_unstable_by_key(|(at, _, _)| *at);
            let state = set.state.get_mut().unwrap_or_else(|e| e.into_inner());
            for (at, key, source) in loaded {
                state.keys.insert(key, at);
                state
                    .by_source
                    .entry(source)
                    .or_default()
                    .push_back((at, key));
            }
            tracing::info!(keys = state.keys.len(), "loaded recently acked requests");
        }
        set.db = tree;
        set
    }

    fn cutoff(&self, now: u64) -> u64 {
        now.saturating_sub(self.window.as_millis() as u64)
    }

    /// Whether `key` was acked within the window.
    pub fn contains(&self, key: &Key) -> bool {
        if self.window.is_zero() {
            return false;
        }
        let cutoff = self.cutoff(now_millis());
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.keys.get(key).is_some_and(|at| *at >= cutoff)
    }

    /// Remembers that `key` from `source` was acked now. Call only after the ack was written.
    pub fn insert(&self, source: Source, key: Key) {
        if self.window.is_zero() {
            return;
        }
        let now = now_millis();
        let cutoff = self.cutoff(now);
        let mut forgotten = Vec::new();
        {
            let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            let state = &mut *state;
            // A key acked again (a re-send answered from memory) gets the new time, which keeps
            // it for another window; its older queue entry no longer matches and is skipped.
            state.keys.insert(key, now);
            let queue = state.by_source.entry(source).or_default();
            queue.push_back((now, key));
            let over_source = queue.len() > MAX_PER_SOURCE;
            state.expire(source, cutoff, &mut forgotten);
            if over_source {
                forgotten.extend(state.pop_oldest(source));
            }
            if state.keys.len() > MAX_ENTRIES {
                let largest = state
                    .by_source
                    .iter()
                    .max_by_key(|(_, q)| q.len())
                    .map(|(s, _)| *s);
                if let Some(largest) = largest {
                    forgotten.extend(state.pop_oldest(largest));
                }
            }
            state.inserts = state.inserts.wrapping_add(1);
            if state.inserts.is_multiple_of(SWEEP_EVERY) {
                let sources: Vec<Source> = state.by_source.keys().copied().collect();
                for s in sources {
                    state.expire(s, cutoff, &mut forgotten);
                }
            }
        }
        if let Some(db) = &self.db {
            // sled buffers these in memory and flushes in the background; no ack waits on it.
            let mut value = [0u8; 16];
            value[..8].copy_from_slice(&now.to_be_bytes());
            value[8..].copy_from_slice(&source.0.to_be_bytes());
            let _ = db.insert(key, &value);
            for old in forgotten {
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

    /// Keys currently remembered.
    pub fn len(&self) -> usize {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .keys
            .len()
    }

    /// Whether no key is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{IpAddr, Ipv4Addr};

    fn source(n: u8) -> Source {
        Source::new("forward", None, IpAddr::V4(Ipv4Addr::new(10, 0, 0, n)))
    }

    #[test]
    fn a_key_names_one_request_from_one_sender() {
        let a = source(1);
        assert_eq!(a.key(b"request"), a.key(b"request"));
        assert_ne!(a.key(b"request"), a.key(b"other request"));
        assert_ne!(a.key(b"request"), source(2).key(b"request"));
        let user = Source::new("forward", Some("team-a"), IpAddr::V4(Ipv4Addr::LOCALHOST));
        let other = Source::new("forward", Some("team-b"), IpAddr::V4(Ipv4Addr::LOCALHOST));
        assert_ne!(user.key(b"r"), other.key(b"r"));
    }

    #[test]
    fn remembers_within_window_and_forgets_after() {
        let set = AckedChunks::in_memory(Duration::from_secs(60));
        let key = source(1).key(b"a");
        assert!(!set.contains(&key));
        set.insert(source(1), key);
        assert!(set.contains(&key));
        let zero = AckedChunks::in_memory(Duration::ZERO);
        zero.insert(source(1), key);
        assert!(!zero.contains(&key));
    }

    #[test]
    fn a_key_past_the_window_is_not_honoured_before_any_sweep() {
        let set = AckedChunks::in_memory(Duration::from_millis(50));
        let key = source(1).key(b"a");
        set.insert(source(1), key);
        assert!(set.contains(&key));
        std::thread::sleep(Duration::from_millis(120));
        // No insert happened since, so nothing swept it: the lookup itself checks the age.
        assert!(!set.contains(&key));
    }

    #[test]
    fn one_sender_spraying_ids_evicts_only_its_own() {
        let set = AckedChunks::in_memory(Duration::from_secs(600));
        let quiet = source(1).key(b"quiet");
        set.insert(source(1), quiet);
        let noisy = source(2);
        for i in 0..(MAX_PER_SOURCE + 10) as u64 {
            set.insert(noisy, noisy.key(&i.to_be_bytes()));
        }
        assert!(set.contains(&quiet));
        assert_eq!(set.len(), MAX_PER_SOURCE + 1);
        assert!(!set.contains(&noisy.key(&0u64.to_be_bytes())));
        assert!(set.contains(&noisy.key(&(MAX_PER_SOURCE as u64 + 9).to_be_bytes())));
    }

    #[test]
    fn the_total_is_bounded_by_trimming_the_largest_sender() {
        let set = AckedChunks::in_memory(Duration::from_secs(600));
        let senders: Vec<Source> = (1..=5).map(source).collect();
        let first = senders[0].key(&0u64.to_be_bytes());
        for i in 0..(MAX_ENTRIES / 5 + 100) as u64 {
            for s in &senders {
                set.insert(*s, s.key(&i.to_be_bytes()));
            }
        }
        assert!(set.len() <= MAX_ENTRIES);
        assert!(!set.contains(&first));
    }

    #[test]
    fn survives_a_restart_through_sled() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("index");
        let key = source(1).key(b"chunk-1\n");
        {
            let set = AckedChunks::open(&path, Duration::from_secs(60));
            set.insert(source(1), key);
            set.flush();
        }
        let set = AckedChunks::open(&path, Duration::from_secs(60));
        assert!(set.contains(&key));
        assert!(!set.contains(&source(1).key(b"chunk-2")));
    }

    #[test]
    fn entries_of_another_shape_are_dropped_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("index");
        let kept = source(1).key(b"kept");
        {
            let tree = logferry_common::kv::open(&path, SLED_OPTIONS).unwrap();
            // A raw id (older versions), and a digest with only a time as its value.
            tree.insert(
                b"\xb8c29tZS1jaHVuay1pZC0xMjM0NTY=",
                &now_millis().to_be_bytes(),
            )
            .unwrap();
            tree.insert(source(1).key(b"old"), &now_millis().to_be_bytes())
                .unwrap();
            let mut value = now_millis().to_be_bytes().to_vec();
            value.extend_from_slice(&7u64.to_be_bytes());
            tree.insert(kept, value).unwrap();
            tree.flush().unwrap();
        }
        let set = AckedChunks::open(&path, Duration::from_secs(60));
        assert_eq!(set.len(), 1);
        assert!(set.contains(&kept));
        assert_eq!(set.db.as_ref().map(sled::Tree::len), Some(1));
    }
}
