//! File offsets ("checkpoints"), per fingerprint, persisted in sled under the buffer directory.
//!
//! ## Invariants
//! - A checkpoint never runs ahead of the forwarder's buffer: the committer sets it only after
//!   the commit ticket of the frame holding the lines before that offset resolved (the frame
//!   is durable in the chunk buffer). A crash therefore re-reads lines (duplicates), never
//!   skips them.
//! - sled holds a copy of the in-memory map, written in the background every
//!   [`FLUSH_INTERVAL`](crate::tail::FLUSH_INTERVAL) and on shutdown. Losing it costs
//!   duplicates (files are re-read from older offsets or from their start), never data; a sled
//!   directory that fails to open is moved aside and a fresh one is used, rather than
//!   crash-looping the DaemonSet pod.
//! - An offset never moves backwards ([`Store::set`]) except through [`Store::reset`], which
//!   the committer applies when a file was truncated and is read again from its start.
//! - Entries not updated for [`TTL`] are forgotten at startup (files long gone).
//!
//! Value layout: `offset u64 BE | updated_ms u64 BE | real_path_len u16 BE | real_path |
//! glob_path` (paths as UTF-8; the glob path names the stream for tags and metadata, the real
//! path lets a restart find a rotated file that is no longer matched by the globs).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::fingerprint::Fingerprint;

/// Checkpoints not updated for this long are dropped at startup.
pub const TTL: Duration = Duration::from_secs(7 * 24 * 3600);
/// How the sled copy is opened: a small page cache (the map is small), and no background
/// flusher (the store flushes on its own schedule; sled's would only add wake-ups on an idle
/// node).
const SLED_OPTIONS: logferry_common::kv::Options<'static> = logferry_common::kv::Options {
    tree: "offsets",
    cache_bytes: 1024 * 1024,
    flush_every_ms: None,
    what: "file offsets",
};

/// One file's offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// Bytes of the file safely in the buffer.
    pub offset: u64,
    /// When it was last set (ms since the epoch).
    pub updated_ms: u64,
    /// The file's real path when it was opened (symlinks resolved).
    pub real_path: PathBuf,
    /// The path the globs matched (tag and metadata come from it).
    pub glob_path: PathBuf,
}

impl Checkpoint {
    fn encode(&self) -> Vec<u8> {
        let real = self.real_path.to_string_lossy();
        let glob = self.glob_path.to_string_lossy();
        let real_len = real.len().min(u16::MAX as usize);
        let mut out = Vec::with_capacity(18 + real.len() + glob.len());
        out.extend_from_slice(&self.offset.to_be_bytes());
        out.extend_from_slice(&self.updated_ms.to_be_bytes());
        out.extend_from_slice(&(real_len as u16).to_be_bytes());
        out.extend_from_slice(&real.as_bytes()[..real_len]);
        out.extend_from_slice(glob.as_bytes());
        out
    }

    fn decode(b: &[u8]) -> Option<Checkpoint> {
        let offset = u64::from_be_bytes(b.get(0..8)?.try_into().ok()?);
        let updated_ms = u64::from_be_bytes(b.get(8..16)?.try_into().ok()?);
        let real_len = usize::from(u16::from_be_bytes(b.get(16..18)?.try_into().ok()?));
        let real = std::str::from_utf8(b.get(18..18 + real_len)?).ok()?;
        let glob = std::str::from_utf8(b.get(18 + real_len..)?).ok()?;
        Some(Checkpoint {
            offset,
            updated_ms,
            real_path: real.into(),
            glob_path: glob.into(),
        })
    }
}

/// Milliseconds since the epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The checkpoint map and its sled copy.
#[derive(Debug)]
pub struct Store {
    map: HashMap<Fingerprint, Checkpoint>,
    dirty: HashSet<Fingerprint>,
    removed: HashSet<Fingerprint>,
    db: Option<sled::Tree>,
}

impl Store {
    /// A store without persistence (tests).
    pub fn in_memory() -> Store {
        Store {
            map: HashMap::new(),
            dirty: HashSet::new(),
            removed: HashSet::new(),
            db: None,
        }
    }

    /// Opens the sled database at `dir` and loads every checkpoint younger than [`TTL`].
    /// A database that cannot be opened is moved aside and replaced by an empty one; if even
    /// that fails, the store runs in memory only (see [`logferry_common::kv`]).
    pub fn open(dir: &Path) -> Store {
        let mut store = Store::in_memory();
        let tree = logferry_common::kv::open(dir, SLED_OPTIONS);
        if let Some(tree) = &tree {
            let cutoff = now_ms().saturating_sub(TTL.as_millis() as u64);
            for (k, v) in tree.iter().filter_map(Result::ok) {
                let parsed = Fingerprint::from_bytes(&k).zip(Checkpoint::decode(&v));
                match parsed {
                    Some((fp, cp)) if cp.updated_ms >= cutoff => {
                        store.map.insert(fp, cp);
                    }
                    _ => {
                        let _ = tree.remove(k);
                    }
                }
            }
            tracing::info!(files = store.map.len(), "loaded file offsets");
        }
        store.db = tree;
        store
    }

    /// Reads every checkpoint of the database at `dir` without changing anything (for the
    /// `offsets` command; the forwarder must not be running).
    pub fn inspect(dir: &Path) -> Result<Vec<(Fingerprint, Checkpoint)>, String> {
        let tree = logferry_common::kv::open_existing(dir, SLED_OPTIONS)?;
        let mut out: Vec<(Fingerprint, Checkpoint)> = tree
            .iter()
            .filter_map(Result::ok)
            .filter_map(|(k, v)| Fingerprint::from_bytes(&k).zip(Checkpoint::decode(&v)))
            .collect();
        out.sort_by(|a, b| a.1.glob_path.cmp(&b.1.glob_path).then(a.0.cmp(&b.0)));
        Ok(out)
    }

    /// The checkpoint of a file.
    pub fn get(&self, fp: &Fingerprint) -> Option<&Checkpoint> {
        self.map.get(fp)
    }

    /// Checkpoints whose head matches (copies and truncated originals of one content).
    pub fn by_head(&self, head: u64) -> Vec<(Fingerprint, Checkpoint)> {
        self.map
            .iter()
            .filter(|(fp, _)| fp.head == head)
            .map(|(fp, cp)| (*fp, cp.clone()))
            .collect()
    }

    /// Every checkpoint.
    pub fn all(&self) -> Vec<(Fingerprint, Checkpoint)> {
        self.map.iter().map(|(fp, cp)| (*fp, cp.clone())).collect()
    }

    /// Sets a file's offset (never moves it backwards, except through [`Store::reset`]).
    /// Returns whether the file was not known before.
    pub fn set(
        &mut self,
        fp: Fingerprint,
        offset: u64,
        real_path: &Path,
        glob_path: &Path,
    ) -> bool {
        let now = now_ms();
        let mut new = false;
        match self.map.get_mut(&fp) {
            Some(cp) if cp.offset > offset => return false,
            Some(cp) => {
                cp.offset = offset;
                cp.updated_ms = now;
                if cp.real_path != real_path {
                    cp.real_path = real_path.to_path_buf();
                }
            }
            None => {
                new = true;
                self.map.insert(
                    fp,
                    Checkpoint {
                        offset,
                        updated_ms: now,
                        real_path: real_path.to_path_buf(),
                        glob_path: glob_path.to_path_buf(),
                    },
                );
            }
        }
        self.removed.remove(&fp);
        self.dirty.insert(fp);
        new
    }

    /// Sets a file's offset even if lower (the file was truncated).
    pub fn reset(&mut self, fp: Fingerprint, offset: u64, real_path: &Path, glob_path: &Path) {
        self.map.remove(&fp);
        self.set(fp, offset, real_path, glob_path);
    }

    /// Moves a checkpoint to another fingerprint (a copy continuing a truncated file).
    pub fn rekey(&mut self, old: Fingerprint, new: Fingerprint, real_path: &Path) {
        if let Some(mut cp) = self.map.remove(&old) {
            self.dirty.remove(&old);
            self.removed.insert(old);
            cp.real_path = real_path.to_path_buf();
            cp.updated_ms = now_ms();
            let keep = self.map.get(&new).is_some_and(|c| c.offset >= cp.offset);
            if !keep {
                self.map.insert(new, cp);
                self.dirty.insert(new);
                self.removed.remove(&new);
            }
        }
    }

    /// Forgets a file.
    pub fn remove(&mut self, fp: &Fingerprint) {
        if self.map.remove(fp).is_some() {
            self.dirty.remove(fp);
            self.removed.insert(*fp);
        }
    }

    /// Files known.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether no file is known.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Writes changed entries to sled, and with `sync` waits until sled has them on disk.
    pub fn flush(&mut self, sync: bool) {
        let Some(db) = &self.db else {
            self.dirty.clear();
            self.removed.clear();
            return;
        };
        for fp in self.removed.drain() {
            let _ = db.remove(fp.to_bytes());
        }
        for fp in self.dirty.drain() {
            if let Some(cp) = self.map.get(&fp) {
                let _ = db.insert(fp.to_bytes(), cp.encode());
            }
        }
        if sync {
            if let Err(e) = db.flush() {
                tracing::warn!(error = %e, "cannot flush file offsets");
            }
        }
    }
}

/// Locks the store shared by the tailer and the committer; a lock poisoned by a panic
/// elsewhere is taken over rather than passed on.
pub fn lock(store: &Mutex<Store>) -> MutexGuard<'_, Store> {
    store.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fp(n: u64) -> Fingerprint {
        Fingerprint {
            head: n,
            dev: 1,
            ino: n + 100,
        }
    }

    #[test]
    fn survives_a_restart_and_never_goes_backwards() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("offsets");
        {
            let mut s = Store::open(&path);
            s.set(fp(1), 100, Path::new("/r/1"), Path::new("/g/1"));
            s.set(fp(1), 50, Path::new("/r/1"), Path::new("/g/1"));
            s.set(fp(2), 7, Path::new("/r/2"), Path::new("/g/2"));
            s.set(fp(3), 9, Path::new("/r/3"), Path::new("/g/3"));
            s.remove(&fp(3));
            s.rekey(fp(2), fp(4), Path::new("/r/4"));
            s.flush(true);
        }
        let s = Store::open(&path);
        assert_eq!(s.len(), 2);
        let c = s.get(&fp(1)).unwrap();
        assert_eq!(c.offset, 100);
        assert_eq!(c.glob_path, PathBuf::from("/g/1"));
        let c = s.get(&fp(4)).unwrap();
        assert_eq!((c.offset, c.real_path.as_path()), (7, Path::new("/r/4")));
        assert_eq!(c.glob_path, PathBuf::from("/g/2"));
        assert_eq!(s.by_head(4).len(), 1);
    }
}
