//! Files and rotation: which files are tailed, from which offset, and when they are let go.
//!
//! ## Invariants
//! - **Files are known by [`Fingerprint`]** (device, inode, first line), not by path. A file
//!   without a complete first line yet waits and is looked at again every turn.
//! - **A file starts at its checkpoint**, or, without one: where a truncated file it is the
//!   copy of stopped (copytruncate), else at its start (`read_from = "tail"`: at its end, on
//!   the first scan only). Files with their own checkpoint are opened before the others, so a
//!   copy never takes the position of an original that is still there.
//! - **A copy of a live file is not read** (same first line, another inode, named like a
//!   rotated copy in the same directory: [`could_be_copy`]) unless the original is truncated;
//!   then it continues where the original stopped ([`Commit::Rekey`]).
//! - **A renamed or deleted file is drained**: it keeps being read through the descriptor
//!   already open until its end, and is released ([`Commit::Forget`]) only after it stopped
//!   growing for `rotate_wait`, its partial messages sent as they are.
//! - **A truncated file moves its checkpoint back.** Found shorter than its checkpoint, or
//!   truncated while tailed and given the same first line again, it is read from its start and
//!   its checkpoint reset ([`Commit::Reset`]) after every frame of its earlier content. The
//!   position of that content waits as an orphan for its copy for [`ORPHAN_TTL`]; if none
//!   comes, its unread bytes are counted in `logferry_tail_unread_bytes`, and its checkpoint
//!   is forgotten only if no new content holds it.
//! - **A restart finds what rotated while the forwarder was down**: files with a checkpoint
//!   that no glob leads to any more, through the real path kept in it, and rotated siblings
//!   (`<name>.<suffix>`, not compressed) written after the last checkpoint was.
//! - Every file tracked sends its first mark at once, so the committer writes it to disk and
//!   a restart finds it again even if it rotates away before its first frame.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::checkpoint::{lock, Store};
use super::fingerprint::{self, Fingerprint};
use super::frames::{Commit, Mark, Stopped};
use super::lines::LineState;
use super::Tailer;
use crate::config::ReadFrom;
use crate::discover::Discovery;
use crate::kubernetes::FileMetadata;
use logferry_common::telemetry;

/// How long a truncated file's unread position waits for its copy to appear.
const ORPHAN_TTL: Duration = Duration::from_secs(60);

/// One file being tailed.
#[derive(Debug)]
pub(super) struct Tailed {
    pub(super) fp: Fingerprint,
    pub(super) file: File,
    pub(super) glob_path: Arc<PathBuf>,
    real_path: Arc<PathBuf>,
    pub(super) tag: String,
    pub(super) meta: FileMetadata,
    /// Next byte to read.
    pub(super) read_offset: u64,
    /// Bytes read after the last `\n` (they start at `read_offset - carry.len()`).
    pub(super) carry: Vec<u8>,
    /// Discarding the rest of an over-long line.
    pub(super) skipping: bool,
    pub(super) state: LineState,
    /// Offset the latest mark was sent for.
    pub(super) marked: u64,
    pub(super) last_size: u64,
    pub(super) last_growth: Instant,
    /// When no glob led to this file any more (renamed away or deleted).
    pub(super) rotated_at: Option<Instant>,
}

impl Tailed {
    /// The mark of `offset` in this file.
    pub(super) fn mark(&self, offset: u64) -> Mark {
        Mark {
            fp: self.fp,
            offset,
            real_path: Arc::clone(&self.real_path),
            glob_path: Arc::clone(&self.glob_path),
        }
    }

    /// Rotated away, read to its end, and not grown for `rotate_wait`: time to let it go.
    pub(super) fn drained(&self, rotate_wait: Duration) -> bool {
        self.rotated_at.is_some()
            && self.read_offset >= self.last_size
            && self.last_growth.elapsed() >= rotate_wait
    }
}

/// A truncated file's reading position, waiting for its copy.
#[derive(Debug)]
pub(super) struct Orphan {
    tailed: Tailed,
    since: Instant,
}

/// The files the tailer knows: tailed, waiting, deferred, orphaned.
#[derive(Debug)]
pub(super) struct Files {
    discovery: Discovery,
    store: Arc<Mutex<Store>>,
    /// Files being read, by (device, inode).
    pub(super) tailed: HashMap<(u64, u64), Tailed>,
    /// Copies (same first line as a live file, another inode) not read unless the original
    /// is truncated.
    deferred: HashSet<PathBuf>,
    /// Paths matched but without a complete first line yet.
    pub(super) waiting: HashSet<PathBuf>,
    pub(super) orphans: Vec<Orphan>,
    /// Inodes truncated while tailed, with their first line's hash then, until they are opened
    /// again (one entry per truncated file not opened since: deleted ones stay, 24 bytes each).
    truncated: HashMap<(u64, u64), u64>,
    first_scan: bool,
}

impl Files {
    pub(super) fn new(discovery: Discovery, store: Arc<Mutex<Store>>) -> Files {
        Files {
            discovery,
            store,
            tailed: HashMap::new(),
            deferred: HashSet::new(),
            waiting: HashSet::new(),
            orphans: Vec::new(),
            truncated: HashMap::new(),
            first_scan: true,
        }
    }

    /// The directories the globs look in.
    pub(super) fn dirs(&self) -> Vec<PathBuf> {
        self.discovery.dirs()
    }
}

impl Tailer {
    /// Globs, opens new files, marks files no glob leads to as rotated.
    pub(super) fn rescan(&mut self) {
        let paths = self.files.discovery.scan();
        let mut seen: HashSet<(u64, u64)> = HashSet::new();
        let mut fresh = Vec::new();
        for path in paths {
            let Ok(meta) = std::fs::metadata(&path) else {
                continue;
            };
            let key = (meta.dev(), meta.ino());
            seen.insert(key);
            if self.files.tailed.contains_key(&key) {
                continue;
            }
            fresh.push(path);
        }
        for t in self.files.tailed.values_mut() {
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
        let first_scan = self.files.first_scan;
        let mut later = Vec::new();
        for path in fresh {
            if !self.open_new(&path, true) {
                later.push(path);
            }
        }
        for path in later {
            self.open_new(&path, false);
        }
        let deferred: Vec<PathBuf> = self.files.deferred.drain().collect();
        for path in deferred {
            self.open_new(&path, false);
        }
        if first_scan {
            self.files.first_scan = false;
            self.find_rotated_at_startup();
        }
    }

    /// Opens the paths still waiting for a complete first line.
    pub(super) fn open_waiting(&mut self) {
        if !self.files.waiting.is_empty() {
            let waiting: Vec<PathBuf> = self.files.waiting.drain().collect();
            for path in waiting {
                self.open_new(&path, false);
            }
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
        if self.files.tailed.contains_key(&key) {
            return true;
        }
        let fp = match fingerprint::fingerprint(&file) {
            Ok(Some(fp)) => fp,
            Ok(None) => {
                self.files.waiting.insert(path.to_path_buf());
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
        if self.files.truncated.remove(&key) == Some(fp.head) {
            tracing::info!(path = %path.display(), size, "truncated file starts with the same line again; reading it from the start");
            self.track_truncated(file, fp, path, size);
            return true;
        }
        let stored = lock(&self.files.store).get(&fp).map(|c| c.offset);
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
        if self.files.tailed.values().any(|t| {
            t.fp.head == fp.head
                && !t.fp.same_inode(fp.dev, fp.ino)
                && could_be_copy(&t.real_path, path)
        }) {
            self.files.deferred.insert(path.to_path_buf());
            return true;
        }
        // The copy of a file truncated while we were reading it: continue where it stopped.
        if let Some(i) = self.files.orphans.iter().position(|o| {
            o.tailed.fp.head == fp.head
                && o.tailed.read_offset <= size
                && could_be_copy(&o.tailed.real_path, path)
        }) {
            let orphan = self.files.orphans.swap_remove(i);
            let mut t = orphan.tailed;
            let old = t.fp;
            t.fp = fp;
            t.file = file;
            t.real_path = Arc::new(real_path(path));
            t.last_size = size;
            t.last_growth = Instant::now();
            t.rotated_at = None;
            tracing::info!(copy = %path.display(), offset = t.read_offset, "copytruncate: continuing in the copy");
            self.sink.send(Commit::Rekey {
                old,
                new: fp,
                real_path: Arc::clone(&t.real_path),
            });
            self.watch.watch_parent(&t.real_path);
            self.files.tailed.insert(key, t);
            return true;
        }
        // After a restart: a checkpoint of the same content under an inode that no longer has
        // it (the original was truncated while we were down).
        let adopted = {
            let store = lock(&self.files.store);
            store
                .by_head(fp.head)
                .into_iter()
                .filter(|(old, cp)| {
                    *old != fp
                        && cp.offset <= size
                        && !self.files.tailed.values().any(|t| t.fp == *old)
                })
                .max_by_key(|(_, cp)| cp.offset)
        };
        if let Some((old, cp)) = adopted {
            tracing::info!(copy = %path.display(), offset = cp.offset, "continuing a truncated file in its copy");
            let glob = cp.glob_path.clone();
            self.track(file, fp, path, &glob, cp.offset, size);
            if let Some(t) = self.files.tailed.get(&key) {
                let real = Arc::clone(&t.real_path);
                self.sink.send(Commit::Rekey {
                    old,
                    new: fp,
                    real_path: real,
                });
            }
            return true;
        }
        let offset = if self.files.first_scan && self.opts.read_from == ReadFrom::Tail {
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
        self.sink.send(Commit::Mark(first));
    }

    /// Tracks a file truncated since its checkpoint (or since it was last read) from its start,
    /// and moves its checkpoint back. Every frame of its earlier content was sent before (the
    /// truncation was seen by `on_truncated`, which cut them, or this process never read it),
    /// so the committer lowers the offset after them.
    fn track_truncated(&mut self, file: File, fp: Fingerprint, path: &Path, size: u64) {
        let first = self.start_tailing(file, fp, path, path, 0, size);
        self.sink.send(Commit::Reset(first));
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
            state: LineState::new(&self.opts, offset),
            marked: offset,
            last_size: size,
            last_growth: Instant::now(),
            rotated_at: None,
        };
        tracing::debug!(path = %path.display(), offset, size, "tailing");
        self.watch.watch_parent(&real);
        let first = t.mark(offset);
        self.files.tailed.insert((fp.dev, fp.ino), t);
        first
    }

    /// After the first scan, finds files rotated out of the globs while the forwarder was down:
    ///
    /// 1. files with a checkpoint that no glob matched, found again by inode next to where
    ///    they were (kubelet renamed `0.log` to `0.log.<time>`), read from their checkpoint;
    /// 2. rotated siblings of known files (`<name>.<suffix>`, not compressed) that have no
    ///    checkpoint and were modified after the last checkpoint was written: they were
    ///    created and rotated away while nobody was reading, and are read from the start.
    fn find_rotated_at_startup(&mut self) {
        let all = lock(&self.files.store).all();
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
        for t in self.files.tailed.values() {
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
            if self.files.tailed.contains_key(&(fp.dev, fp.ino)) {
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
            if let Some(t) = self.files.tailed.get_mut(&(fp.dev, fp.ino)) {
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
                    || self.files.tailed.contains_key(&key)
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
                if let Some(t) = self.files.tailed.get_mut(&key) {
                    t.rotated_at = Some(Instant::now());
                }
            }
        }
    }

    /// A file found truncated: what it held goes out, its position waits for its copy, and
    /// the file itself is opened again once it has a first line.
    pub(super) fn on_truncated(&mut self, mut t: Tailed) -> Result<(), Stopped> {
        self.sink.cut_frame(&mut t)?;
        tracing::info!(path = %t.glob_path.display(), offset = t.read_offset, "file truncated (copytruncate?)");
        // The truncated file is a new file once it has a first line again (with the same
        // first line, a new content under the same fingerprint).
        self.files.waiting.insert(t.glob_path.to_path_buf());
        self.files.truncated.insert((t.fp.dev, t.fp.ino), t.fp.head);
        self.files.orphans.push(Orphan {
            tailed: t,
            since: Instant::now(),
        });
        // A copy may already have been seen (and deferred).
        let deferred: Vec<PathBuf> = self.files.deferred.drain().collect();
        for path in deferred {
            self.open_new(&path, false);
        }
        Ok(())
    }

    /// Lets a drained rotated file go: its partial messages are sent as they are, its last
    /// frame cut, and its checkpoint forgotten.
    pub(super) fn release(&mut self, mut t: Tailed) -> Result<(), Stopped> {
        self.reader
            .flush_partials(&mut t, &self.opts, Instant::now(), true);
        self.sink.cut_frame(&mut t)?;
        tracing::debug!(path = %t.glob_path.display(), offset = t.read_offset, "rotated file drained and released");
        self.sink.send(Commit::Forget(t.fp));
        Ok(())
    }

    /// Gives up the positions of truncated files whose copy never came.
    pub(super) fn expire_orphans(&mut self) {
        let now = Instant::now();
        let mut i = 0;
        while i < self.files.orphans.len() {
            if now.duration_since(self.files.orphans[i].since) >= ORPHAN_TTL {
                let o = self.files.orphans.swap_remove(i);
                let unread = o.tailed.last_size.saturating_sub(o.tailed.read_offset);
                if unread > 0 {
                    telemetry::TAIL_UNREAD_BYTES.inc_by(unread);
                }
                tracing::warn!(path = %o.tailed.glob_path.display(), unread_bytes = unread, "file was truncated before it was read to its end, and no copy was found");
                // Its checkpoint is the new content's if the file is tracked again under the
                // same fingerprint (same first line).
                if !self.files.tailed.values().any(|t| t.fp == o.tailed.fp) {
                    self.sink.send(Commit::Forget(o.tailed.fp));
                }
            } else {
                i += 1;
            }
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    use logferry_common::chunk::Buffer;
    use tokio::sync::mpsc;
    use tokio_util::sync::CancellationToken;

    use crate::batch::RecordOptions;
    use crate::config::Format;
    use crate::tail::{committer, TailOptions};

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
            self.tailer.open_waiting();
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
            assert_eq!(rig.tailer.files.orphans.len(), 1);
            rig.tailer.files.orphans[0].since = Instant::now()
                .checked_sub(ORPHAN_TTL)
                .expect("uptime over ORPHAN_TTL");
            rig.turn();
            assert!(rig.tailer.files.orphans.is_empty());
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
