//! Opening the small sled stores both binaries keep beside their buffers (the forwarder's file
//! offsets, the aggregator's recently acked chunk ids).
//!
//! Both stores are caches of something recoverable: losing one costs duplicates, never data.
//! So a store that cannot be opened must not crash-loop the pod: it is moved aside and a fresh
//! one is created, and if even that fails the caller runs without persistence. Two sled
//! behaviours need care, and are handled here once:
//! - sled 0.34 has been seen to panic on a damaged directory instead of returning an error;
//!   the panic is caught.
//! - sled releases its directory lock only when its background threads let go of the
//!   database, a moment after the last handle is dropped. A reopen in the same process (a
//!   restart of a component, a test) must wait for the lock, and a database that is merely
//!   locked is never taken for a damaged one: moving it aside would throw away every entry.
//!   Another process cannot hold the lock, because each binary locks its buffer root first.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How long [`open`] waits for sled's directory lock.
pub const LOCK_WAIT: Duration = Duration::from_secs(10);

/// How a store is opened.
#[derive(Debug, Clone, Copy)]
pub struct Options<'a> {
    /// The tree inside the database.
    pub tree: &'a str,
    /// sled's page cache (its default, 1 GiB, is far too much for these stores).
    pub cache_bytes: u64,
    /// sled's background flush period; `None` when the owner flushes on its own schedule.
    pub flush_every_ms: Option<u64>,
    /// What the store is, for log lines ("file offsets").
    pub what: &'a str,
}

/// Opens the store at `dir`. A damaged database is moved aside (`<dir>.damaged-<ms>`) and
/// replaced by an empty one; `None` means the caller must run without persistence (logged).
pub fn open(dir: &Path, options: Options<'_>) -> Option<sled::Tree> {
    let what = options.what;
    match open_waiting(dir, options) {
        Ok(tree) => Some(tree),
        Err(e) if is_locked(&e) => {
            tracing::error!(error = %e, dir = %dir.display(), "{what}: the database stays locked; running without persistence");
            None
        }
        Err(first) => {
            let aside = damaged_path(dir);
            tracing::error!(
                error = %first, dir = %dir.display(), moved_to = %aside.display(),
                "{what}: cannot open the database; moving it aside and starting a new one (costs duplicates, not data)"
            );
            let _ = std::fs::rename(dir, &aside);
            match open_waiting(dir, options) {
                Ok(tree) => Some(tree),
                Err(second) => {
                    tracing::error!(error = %second, "{what}: running without persistence");
                    None
                }
            }
        }
    }
}

/// Opens the store at `dir` without any repair (for read-only inspection commands).
pub fn open_existing(dir: &Path, options: Options<'_>) -> Result<sled::Tree, String> {
    if !dir.exists() {
        return Err(format!("{} does not exist", dir.display()));
    }
    open_waiting(dir, options)
}

fn open_waiting(dir: &Path, options: Options<'_>) -> Result<sled::Tree, String> {
    let deadline = Instant::now() + LOCK_WAIT;
    loop {
        match open_once(dir, options) {
            Err(e) if is_locked(&e) && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            other => return other,
        }
    }
}

fn open_once(dir: &Path, options: Options<'_>) -> Result<sled::Tree, String> {
    let config = sled::Config::new()
        .path(dir)
        .cache_capacity(options.cache_bytes)
        .mode(sled::Mode::LowSpace)
        .flush_every_ms(options.flush_every_ms);
    // The config is consumed by the closure, so no state observed after a panic can be
    // half-updated (AssertUnwindSafe is sound).
    let opened = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || config.open()));
    match opened {
        Ok(Ok(db)) => db.open_tree(options.tree).map_err(|e| e.to_string()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("sled panicked while opening".to_owned()),
    }
}

/// sled 0.34 reports a held lock only through this message (an `io::ErrorKind::Other`).
fn is_locked(error: &str) -> bool {
    error.contains("could not acquire lock")
}

fn damaged_path(dir: &Path) -> PathBuf {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    dir.with_extension(format!("damaged-{ms}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPTIONS: Options<'static> = Options {
        tree: "t",
        cache_bytes: 1024 * 1024,
        flush_every_ms: None,
        what: "test store",
    };

    #[test]
    fn reopens_at_once_after_a_drop_with_every_entry() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        // Many quick cycles: sled's lock outlives the handle now and then, and a reopen that
        // took the held lock for damage would come back empty.
        for round in 0u64..20 {
            let tree = open(&path, OPTIONS).unwrap();
            assert_eq!(tree.len() as u64, round, "round {round}");
            tree.insert(round.to_be_bytes(), b"v").unwrap();
            tree.flush().unwrap();
        }
        let parent: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(parent.len(), 1, "nothing was moved aside");
    }

    #[test]
    fn waits_for_a_lock_held_a_moment_longer_instead_of_discarding_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let held = open(&path, OPTIONS).unwrap();
        held.insert(b"k", b"v").unwrap();
        held.flush().unwrap();
        // Stands for sled's background threads keeping the database after its owner let go.
        let release = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            drop(held);
        });
        let reopened = open(&path, OPTIONS).expect("opened once the lock was released");
        assert_eq!(reopened.get(b"k").unwrap().as_deref(), Some(&b"v"[..]));
        release.join().unwrap();
    }

    #[test]
    fn a_damaged_database_is_moved_aside_and_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        std::fs::create_dir_all(&path).unwrap();
        std::fs::write(path.join("conf"), b"\xff\xfe garbage").unwrap();
        std::fs::write(path.join("db"), vec![0xA5; 4096]).unwrap();
        let tree = open(&path, OPTIONS).expect("a fresh store");
        assert!(tree.is_empty());
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(
            names.iter().any(|n| n.starts_with("db.damaged-")),
            "{names:?}"
        );
    }

    #[test]
    fn inspection_does_not_create_a_store() {
        let dir = tempfile::tempdir().unwrap();
        let err = open_existing(&dir.path().join("none"), OPTIONS).unwrap_err();
        assert!(err.contains("does not exist"), "{err}");
    }
}
