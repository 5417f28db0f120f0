//! In-crate tests of the failure paths, through a fault-injection seam that exists only under
//! `cfg(test)` (production builds compile the seam to `Ok(())`), and of directory durability,
//! through the record of directory fsyncs that `recovery` keeps per thread under `cfg(test)`.
//!
//! Scenario tests that need only the public API live in `common/tests/chunk_*.rs`.

use std::io;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use bytes::Bytes;

use super::*;

/// Counts of upcoming operations to fail, per kind. Each injected failure is one `EIO`.
#[derive(Debug, Default)]
pub(super) struct Faults {
    pub(super) write: AtomicU32,
    pub(super) sync: AtomicU32,
    pub(super) create: AtomicU32,
}

impl Faults {
    pub(super) fn take(&self, counter: &AtomicU32) -> io::Result<()> {
        let armed = counter
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if armed {
            Err(io::Error::from_raw_os_error(5)) // EIO
        } else {
            Ok(())
        }
    }

    fn arm(counter: &AtomicU32, n: u32) {
        counter.store(n, Ordering::SeqCst);
    }
}

fn options(dir: &std::path::Path) -> BufferOptions {
    let mut o = BufferOptions::new(dir, "faults");
    o.flush_interval = Duration::from_secs(60);
    o
}

fn payload(i: u32) -> Bytes {
    Bytes::from(format!("frame-{i:05}-{}", "p".repeat(100)))
}

/// Reads every frame of every chunk the receiver yields until it is empty.
fn drain(rx: &mut SealedReceiver) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    while let Some(chunk) = rx.try_recv() {
        let contents = chunk.read().unwrap();
        assert_eq!(contents.bad_frames(), 0, "{}", chunk.path.display());
        out.extend(contents.frames().map(|f| f.payload.to_vec()));
    }
    out
}

async fn recv(rx: &mut SealedReceiver) -> Option<SealedChunk> {
    tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .ok()
        .flatten()
}

async fn append_all(buffer: &Buffer, range: std::ops::Range<u32>) -> Vec<Result<(), ChunkError>> {
    let mut tickets = Vec::new();
    for i in range {
        tickets.push(buffer.append(payload(i), 1).await.unwrap());
    }
    let mut out = Vec::new();
    for t in tickets {
        out.push(t.durable().await);
    }
    out
}

#[tokio::test]
async fn failed_sync_fails_tickets_and_buffer_recovers() {
    let tmp = tempfile::tempdir().unwrap();
    let (buffer, mut rx, _) = Buffer::open(options(tmp.path())).unwrap();
    assert!(append_all(&buffer, 0..5).await.iter().all(Result::is_ok));
    let synced_before = buffer.stats().data_syncs;

    Faults::arm(&buffer.faults().sync, 1);
    let failed = buffer.append(payload(5), 1).await.unwrap().durable().await;
    let err = failed.expect_err("a frame whose fsync failed must not be acknowledged");
    assert_eq!(err.code(), "io");
    // The failed chunk was sealed with its five acknowledged frames, truncated back to them.
    let chunk = recv(&mut rx).await.expect("the failed chunk is sealed");
    let contents = chunk.read().unwrap();
    assert_eq!(contents.frame_count(), 5);
    assert_eq!(contents.bad_frames(), 0);
    assert_eq!(std::fs::metadata(&chunk.path).unwrap().len(), chunk.bytes);
    // No retry of fsync on the failed descriptor: the only sync attempted was the failed one.
    assert_eq!(buffer.stats().data_syncs, synced_before);

    // The buffer is usable: the next appends go to a new chunk.
    assert!(append_all(&buffer, 6..9).await.iter().all(Result::is_ok));
    buffer.close().await.unwrap();
    let rest = drain(&mut rx);
    assert_eq!(
        rest,
        (6..9).map(|i| payload(i).to_vec()).collect::<Vec<_>>()
    );
    assert_eq!(buffer.stats().frames_failed, 1);
    assert_eq!(buffer.usage().pending_bytes, 0);
    // Usage counts exactly the two chunks on disk.
    let on_disk: u64 = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    assert_eq!(buffer.usage().bytes, on_disk);
}

#[tokio::test]
async fn failed_write_fails_tickets_and_is_truncated() {
    let tmp = tempfile::tempdir().unwrap();
    let (buffer, mut rx, _) = Buffer::open(options(tmp.path())).unwrap();
    assert!(append_all(&buffer, 0..3).await.iter().all(Result::is_ok));
    Faults::arm(&buffer.faults().write, 1);
    let results = append_all(&buffer, 3..4).await;
    assert!(results[0].is_err());
    let chunk = recv(&mut rx).await.expect("sealed after the failure");
    assert_eq!(chunk.read().unwrap().frame_count(), 3);
    assert!(append_all(&buffer, 4..6).await.iter().all(Result::is_ok));
    buffer.close().await.unwrap();
    assert_eq!(drain(&mut rx).len(), 2);

    // Reopen: exactly the acknowledged frames are there.
    let (_b, mut rx, recovered) = Buffer::open(options(tmp.path())).unwrap();
    assert_eq!(recovered.truncated_bytes, 0);
    assert_eq!(recovered.bad_frames, 0);
    let all = drain(&mut rx);
    let expected: Vec<Vec<u8>> = [0, 1, 2, 4, 5]
        .iter()
        .map(|&i| payload(i).to_vec())
        .collect();
    assert_eq!(all, expected);
}

#[tokio::test]
async fn failed_first_sync_of_a_chunk_deletes_it() {
    let tmp = tempfile::tempdir().unwrap();
    let (buffer, mut rx, _) = Buffer::open(options(tmp.path())).unwrap();
    Faults::arm(&buffer.faults().sync, 1);
    assert!(append_all(&buffer, 0..1).await[0].is_err());
    assert!(
        rx.try_recv().is_none(),
        "a chunk without acknowledged frames is not sealed"
    );
    assert_eq!(buffer.usage().bytes, 0);
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0);
    assert!(append_all(&buffer, 1..2).await[0].is_ok());
    buffer.close().await.unwrap();
    assert_eq!(drain(&mut rx), vec![payload(1).to_vec()]);
}

#[tokio::test]
async fn failed_create_fails_tickets_and_buffer_recovers() {
    let tmp = tempfile::tempdir().unwrap();
    let (buffer, mut rx, _) = Buffer::open(options(tmp.path())).unwrap();
    Faults::arm(&buffer.faults().create, 2);
    assert!(append_all(&buffer, 0..1).await[0].is_err());
    assert!(append_all(&buffer, 1..2).await[0].is_err());
    assert!(append_all(&buffer, 2..3).await[0].is_ok());
    buffer.close().await.unwrap();
    assert_eq!(drain(&mut rx), vec![payload(2).to_vec()]);
    assert_eq!(buffer.usage().pending_bytes, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_failure_fails_whole_group_never_acks() {
    let tmp = tempfile::tempdir().unwrap();
    let (buffer, mut rx, _) = Buffer::open(options(tmp.path())).unwrap();
    // While 32 tasks append, a sync or a write fails now and then (mostly in chunks that hold
    // acknowledged frames already, which must be truncated back to them); every Ok ticket
    // must be readable after, and nothing else.
    Faults::arm(&buffer.faults().sync, 1); // at least one failure, however fast the disk
    let injector = {
        let buffer = buffer.clone();
        tokio::spawn(async move {
            for i in 0..6 {
                tokio::time::sleep(Duration::from_millis(3)).await;
                let faults = buffer.faults();
                Faults::arm(
                    if i % 2 == 0 {
                        &faults.write
                    } else {
                        &faults.sync
                    },
                    1,
                );
            }
        })
    };
    let mut tasks = Vec::new();
    for t in 0..32u32 {
        let buffer = buffer.clone();
        tasks.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            for i in 0..50u32 {
                let id = t * 1000 + i;
                let ticket = buffer.append(payload(id), 1).await.unwrap();
                if ticket.durable().await.is_ok() {
                    acked.push(payload(id).to_vec());
                }
            }
            acked
        }));
    }
    let mut acked = Vec::new();
    for t in tasks {
        acked.extend(t.await.unwrap());
    }
    injector.await.unwrap();
    Faults::arm(&buffer.faults().sync, 0);
    Faults::arm(&buffer.faults().write, 0);
    buffer.close().await.unwrap();
    assert!(buffer.stats().frames_failed > 0);
    assert_eq!(acked.len() as u64 + buffer.stats().frames_failed, 1600);
    let mut stored = drain(&mut rx);
    stored.sort();
    acked.sort();
    // Exactly the acknowledged frames: failed groups were truncated away.
    assert_eq!(stored, acked);
}

/// The directories this thread fsync'd since the last call.
fn take_synced_dirs() -> Vec<std::path::PathBuf> {
    recovery::SYNCED_DIRS.with(|s| std::mem::take(&mut *s.borrow_mut()))
}

#[test]
fn lock_root_makes_a_new_root_durable() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("a/b/c");
    take_synced_dirs();
    let lock = lock_root(&root).unwrap();
    // a, a/b and a/b/c were created: each one's parent was synced, outermost first.
    assert_eq!(
        take_synced_dirs(),
        vec![
            tmp.path().to_owned(),
            tmp.path().join("a"),
            tmp.path().join("a/b")
        ]
    );
    drop(lock);
    let _lock = lock_root(&root).unwrap();
    assert_eq!(
        take_synced_dirs(),
        Vec::<std::path::PathBuf>::new(),
        "an existing root needs no sync"
    );
}

#[test]
fn open_makes_every_created_ancestor_of_the_buffer_durable() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("root/outputs/es");
    take_synced_dirs();
    let (_buffer, _rx, _) = Buffer::open(options(&dir)).unwrap();
    // Recovery runs on this thread (the writer thread's syncs are not recorded here).
    assert_eq!(
        take_synced_dirs(),
        vec![
            tmp.path().to_owned(),
            tmp.path().join("root"),
            tmp.path().join("root/outputs")
        ]
    );
}

#[test]
fn create_dir_all_durable_syncs_the_parent_of_each_created_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("a/b/c");
    take_synced_dirs();
    assert_eq!(create_dir_all_durable(&dir).unwrap(), 3);
    assert!(dir.is_dir());
    assert_eq!(
        take_synced_dirs(),
        vec![
            tmp.path().to_owned(),
            tmp.path().join("a"),
            tmp.path().join("a/b")
        ]
    );
    // Only what is missing is created (and its parent synced).
    assert_eq!(create_dir_all_durable(&dir.join("d")).unwrap(), 1);
    assert_eq!(take_synced_dirs(), vec![dir.clone()]);
    assert_eq!(create_dir_all_durable(&dir).unwrap(), 0);
    assert_eq!(take_synced_dirs(), Vec::<std::path::PathBuf>::new());
    // A file in the way is an error, not a success.
    let file = tmp.path().join("file");
    std::fs::write(&file, b"x").unwrap();
    assert!(create_dir_all_durable(&file.join("sub")).is_err());
    assert!(create_dir_all_durable(&file).is_err());
}
