//! Scenario tests of the chunk buffer through its public API: appends, group commit, sealing,
//! release, overflow, close. Real files in a temporary directory, real fsyncs, real threads.

// In a module named `chunk` so that `cargo test -p logferry-common chunk` selects these.
mod chunk {
    use std::collections::BTreeSet;
    use std::path::Path;
    use std::time::{Duration, Instant};

    use bytes::Bytes;
    use logferry_common::chunk::{
        AppendError, Buffer, BufferOptions, ChunkError, FsyncPolicy, OverflowAction, SealedChunk,
        SealedReceiver,
    };
    use logferry_common::telemetry;

    fn options(dir: &Path, name: &str) -> BufferOptions {
        let mut o = BufferOptions::new(dir, name);
        // Long enough that only the tests that want an age seal get one.
        o.flush_interval = Duration::from_secs(60);
        o
    }

    fn payload(task: u32, i: u32, pad: usize) -> Bytes {
        Bytes::from(format!("t{task:03}-i{i:05}-{}", "x".repeat(pad)))
    }

    async fn recv(rx: &mut SealedReceiver) -> Option<SealedChunk> {
        tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("receiver stalled")
    }

    /// Every chunk until the receiver ends (the buffer must be closed), checked for order.
    async fn all_chunks(rx: &mut SealedReceiver) -> Vec<SealedChunk> {
        let mut chunks = Vec::new();
        while let Some(chunk) = recv(rx).await {
            if let Some(last) = chunks.last() {
                let last: &SealedChunk = last;
                assert!(
                    chunk.seq > last.seq,
                    "chunks out of order: {} after {}",
                    chunk.seq,
                    last.seq
                );
            }
            chunks.push(chunk);
        }
        chunks
    }

    fn frames_of(chunks: &[SealedChunk]) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        for chunk in chunks {
            let contents = chunk.read().unwrap();
            assert_eq!(contents.bad_frames(), 0);
            assert_eq!(contents.records(), chunk.records);
            out.extend(contents.frames().map(|f| f.payload.to_vec()));
        }
        out
    }

    fn dir_bytes(dir: &Path) -> u64 {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().metadata().unwrap())
            .filter(|m| m.is_file())
            .map(|m| m.len())
            .sum()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_appends_all_durable_and_delivered_in_order() {
        let tmp = tempfile::tempdir().unwrap();
        let mut o = options(tmp.path(), "concurrent");
        o.chunk_limit_size = 64 * 1024;
        let (buffer, mut rx, recovered) = Buffer::open(o).unwrap();
        assert_eq!(recovered.sealed_chunks, 0);

        let mut tasks = Vec::new();
        for t in 0..16u32 {
            let buffer = buffer.clone();
            tasks.push(tokio::spawn(async move {
                for i in 0..100u32 {
                    let ticket = buffer.append(payload(t, i, 500), 2).await.unwrap();
                    ticket.durable().await.unwrap();
                }
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
        buffer.close().await.unwrap();
        let chunks = all_chunks(&mut rx).await;
        assert!(
            chunks.len() > 10,
            "64 KiB chunks: expected many, got {}",
            chunks.len()
        );
        for chunk in &chunks {
            assert!(chunk.bytes <= 64 * 1024);
            assert_eq!(std::fs::metadata(&chunk.path).unwrap().len(), chunk.bytes);
            assert!(chunk.path.to_string_lossy().ends_with(".sealed"));
        }
        let frames = frames_of(&chunks);
        assert_eq!(frames.len(), 1600);
        // Each task's frames appear in the order it appended them.
        for t in 0..16u32 {
            let prefix = format!("t{t:03}-");
            let mine: Vec<_> = frames
                .iter()
                .filter(|f| f.starts_with(prefix.as_bytes()))
                .collect();
            let expected: Vec<Vec<u8>> = (0..100).map(|i| payload(t, i, 500).to_vec()).collect();
            assert_eq!(mine.len(), 100);
            assert!(mine.iter().zip(&expected).all(|(a, b)| *a == b));
        }
        assert_eq!(chunks.iter().map(|c| c.records).sum::<u64>(), 3200);
        assert_eq!(buffer.usage().bytes, dir_bytes(tmp.path()));

        // Release everything: files gone, usage back to zero.
        for chunk in &chunks {
            buffer.release(chunk).unwrap();
            assert!(!chunk.path.exists());
        }
        let usage = buffer.usage();
        assert_eq!(
            (usage.bytes, usage.sealed_chunks, usage.open_chunks),
            (0, 0, 0)
        );
        assert_eq!(usage.oldest_created_at, None);
        assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0);
        // Releasing twice is a no-op, and does not free bytes twice.
        buffer.release(&chunks[0]).unwrap();
        assert_eq!(buffer.usage().bytes, 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn group_commit_shares_fsyncs() {
        // Under target/ rather than $TMPDIR: on a tmpfs fsync costs nothing, so nothing would
        // queue behind it and groups would stay small; this test is about a real disk.
        let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
        let (buffer, mut rx, _) = Buffer::open(options(tmp.path(), "group")).unwrap();
        let start = tokio::sync::Barrier::new(50);
        let start = std::sync::Arc::new(start);
        let mut tasks = Vec::new();
        for t in 0..50u32 {
            let buffer = buffer.clone();
            let start = start.clone();
            tasks.push(tokio::spawn(async move {
                start.wait().await;
                for i in 0..20u32 {
                    buffer
                        .append(payload(t, i, 300), 1)
                        .await
                        .unwrap()
                        .durable()
                        .await
                        .unwrap();
                }
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
        let stats = buffer.stats();
        assert_eq!(stats.frames_committed, 1000);
        // One fsync per group; with 50 appenders each waiting on its ticket, groups are large.
        assert!(
            stats.data_syncs * 5 <= stats.frames_committed,
            "group commit is not sharing fsyncs: {stats:?}"
        );
        assert_eq!(
            stats.data_syncs, stats.groups,
            "fsync=always syncs once per group"
        );
        buffer.close().await.unwrap();
        assert_eq!(frames_of(&all_chunks(&mut rx).await).len(), 1000);
    }

    #[tokio::test]
    async fn seals_by_size_and_oversize_frames_go_alone() {
        let tmp = tempfile::tempdir().unwrap();
        let mut o = options(tmp.path(), "by_size");
        o.chunk_limit_size = 4096;
        let (buffer, mut rx, _) = Buffer::open(o).unwrap();
        for i in 0..9 {
            buffer
                .append(payload(0, i, 1000), 1)
                .await
                .unwrap()
                .durable()
                .await
                .unwrap();
        }
        // Three ~1 KiB frames fit under 4096 bytes with the header; the fourth starts a new chunk.
        for _ in 0..2 {
            let chunk = recv(&mut rx).await.unwrap();
            assert_eq!(chunk.read().unwrap().frame_count(), 3);
            assert!(chunk.bytes <= 4096);
        }
        buffer
            .append(payload(0, 100, 10_000), 1)
            .await
            .unwrap()
            .durable()
            .await
            .unwrap();
        let third = recv(&mut rx).await.unwrap();
        assert_eq!(
            third.read().unwrap().frame_count(),
            3,
            "sealed before the big frame"
        );
        let big = recv(&mut rx).await.unwrap();
        let contents = big.read().unwrap();
        assert_eq!(contents.frame_count(), 1);
        assert!(big.bytes > 10_000);
        assert_eq!(
            contents.frames().next().unwrap().payload,
            &payload(0, 100, 10_000)[..]
        );
        buffer.close().await.unwrap();
        assert!(recv(&mut rx).await.is_none());
    }

    #[tokio::test]
    async fn seals_by_records() {
        let tmp = tempfile::tempdir().unwrap();
        let mut o = options(tmp.path(), "by_records");
        o.chunk_limit_records = 10;
        let (buffer, mut rx, _) = Buffer::open(o).unwrap();
        for i in 0..4 {
            buffer
                .append(payload(0, i, 10), 5)
                .await
                .unwrap()
                .durable()
                .await
                .unwrap();
        }
        for _ in 0..2 {
            let chunk = recv(&mut rx).await.unwrap();
            assert_eq!(chunk.records, 10);
            assert_eq!(chunk.read().unwrap().frame_count(), 2);
        }
        // 3 + 3 + 3 fit in 10; the fourth would make 12, so it starts the next chunk.
        for i in 0..4 {
            buffer
                .append(payload(1, i, 10), 3)
                .await
                .unwrap()
                .durable()
                .await
                .unwrap();
        }
        buffer.seal_now().await.unwrap();
        assert_eq!(recv(&mut rx).await.unwrap().records, 9);
        assert_eq!(recv(&mut rx).await.unwrap().records, 3);
        buffer.close().await.unwrap();
    }

    #[tokio::test]
    async fn seals_by_age() {
        let tmp = tempfile::tempdir().unwrap();
        let mut o = options(tmp.path(), "by_age");
        o.flush_interval = Duration::from_millis(50);
        let (buffer, mut rx, _) = Buffer::open(o).unwrap();
        let started = Instant::now();
        buffer
            .append(payload(0, 0, 10), 1)
            .await
            .unwrap()
            .durable()
            .await
            .unwrap();
        buffer
            .append(payload(0, 1, 10), 1)
            .await
            .unwrap()
            .durable()
            .await
            .unwrap();
        let chunk = recv(&mut rx).await.unwrap();
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(45),
            "sealed too early: {waited:?}"
        );
        assert!(
            waited < Duration::from_secs(2),
            "sealed too late: {waited:?}"
        );
        assert_eq!(chunk.read().unwrap().frame_count(), 2);
        // An idle buffer seals nothing more (no empty chunks).
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert!(rx.try_recv().is_none());
        assert_eq!(buffer.usage().open_chunks, 0);
        buffer.close().await.unwrap();
    }

    #[tokio::test]
    async fn seal_now_and_close() {
        let tmp = tempfile::tempdir().unwrap();
        let (buffer, mut rx, _) = Buffer::open(options(tmp.path(), "close")).unwrap();
        buffer.seal_now().await.unwrap(); // nothing open: a no-op
        assert!(rx.try_recv().is_none());
        let ticket = buffer.append(payload(0, 0, 10), 1).await.unwrap();
        ticket.durable().await.unwrap();
        assert_eq!(buffer.usage().open_chunks, 1);
        buffer.seal_now().await.unwrap();
        assert_eq!(recv(&mut rx).await.unwrap().records, 1);

        // Appends queued before close are committed by it, even if nobody awaited them yet.
        let pending = buffer.append(payload(0, 1, 10), 1).await.unwrap();
        buffer.close().await.unwrap();
        pending.durable().await.unwrap();
        assert_eq!(
            frames_of(&[recv(&mut rx).await.unwrap()]),
            vec![payload(0, 1, 10).to_vec()]
        );
        assert!(recv(&mut rx).await.is_none(), "closed and drained: None");
        assert!(buffer.is_closed());
        assert!(matches!(
            buffer.append(payload(0, 2, 1), 1).await,
            Err(AppendError::Closed)
        ));
        assert!(matches!(buffer.seal_now().await, Err(ChunkError::Closed)));
        buffer.close().await.unwrap(); // idempotent
                                       // Nothing is left open on disk.
        let names: BTreeSet<String> = std::fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(names.iter().all(|n| n.ends_with(".sealed")), "{names:?}");
    }

    #[tokio::test]
    async fn dropping_every_handle_seals_what_was_acknowledged() {
        let tmp = tempfile::tempdir().unwrap();
        let (buffer, mut rx, _) = Buffer::open(options(tmp.path(), "dropped")).unwrap();
        buffer
            .append(payload(0, 0, 10), 1)
            .await
            .unwrap()
            .durable()
            .await
            .unwrap();
        drop(buffer);
        let chunk = recv(&mut rx)
            .await
            .expect("sealed when the writer saw every handle gone");
        assert_eq!(chunk.records, 1);
        assert!(recv(&mut rx).await.is_none());
    }

    #[tokio::test]
    async fn too_large_frames_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let mut o = options(tmp.path(), "too_large");
        o.max_frame_bytes = 1000;
        o.total_limit_size = 5000;
        let (buffer, _rx, _) = Buffer::open(o.clone()).unwrap();
        let err = buffer
            .append(Bytes::from(vec![0u8; 1001]), 1)
            .await
            .unwrap_err();
        assert!(matches!(
            err,
            AppendError::TooLarge {
                bytes: 1001,
                limit: 1000
            }
        ));
        assert_eq!(err.code(), "too_large");
        buffer
            .append(Bytes::from(vec![0u8; 1000]), 1)
            .await
            .unwrap()
            .durable()
            .await
            .unwrap();
        buffer.close().await.unwrap();

        let tmp2 = tempfile::tempdir().unwrap();
        let mut o = options(tmp2.path(), "too_large_total");
        o.total_limit_size = 1000;
        let (buffer, _rx, _) = Buffer::open(o).unwrap();
        let err = buffer
            .append(Bytes::from(vec![0u8; 990]), 1)
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                AppendError::TooLarge {
                    bytes: 1006,
                    limit: 1000
                }
            ),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn invalid_options_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        for (field, change) in [
            (
                "name",
                Box::new(|o: &mut BufferOptions| o.name.clear()) as Box<dyn Fn(&mut BufferOptions)>,
            ),
            (
                "chunk_limit_size",
                Box::new(|o: &mut BufferOptions| o.chunk_limit_size = 0),
            ),
            (
                "max_frame_bytes",
                Box::new(|o: &mut BufferOptions| o.max_frame_bytes = 1 << 33),
            ),
            (
                "flush_interval",
                Box::new(|o: &mut BufferOptions| o.flush_interval = Duration::ZERO),
            ),
        ] {
            let mut o = options(tmp.path(), "invalid");
            change(&mut o);
            match Buffer::open(o) {
                Err(ChunkError::InvalidOptions { param, .. }) => assert_eq!(param, field),
                other => panic!("{field}: expected InvalidOptions, got {other:?}"),
            }
        }
    }

    /// Options where every ~1 KiB frame seals its own chunk (~1060 bytes) and the limit holds nine.
    fn small_buffer(dir: &Path, name: &str, action: OverflowAction) -> BufferOptions {
        let mut o = options(dir, name);
        o.chunk_limit_size = 1000;
        o.total_limit_size = 10_000;
        o.overflow_action = action;
        o
    }

    async fn fill(buffer: &Buffer, rx: &mut SealedReceiver) -> Vec<SealedChunk> {
        let mut chunks = Vec::new();
        for i in 0..9 {
            buffer
                .append(payload(0, i, 1000), 7)
                .await
                .unwrap()
                .durable()
                .await
                .unwrap();
            chunks.push(recv(rx).await.unwrap());
        }
        assert!(buffer.usage().bytes > 9000);
        chunks
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn overflow_block_waits_for_release() {
        let tmp = tempfile::tempdir().unwrap();
        let (buffer, mut rx, _) =
            Buffer::open(small_buffer(tmp.path(), "block", OverflowAction::Block)).unwrap();
        let chunks = fill(&buffer, &mut rx).await;
        assert!(!buffer.is_full());
        let blocked = {
            let buffer = buffer.clone();
            tokio::spawn(async move { buffer.append(payload(1, 0, 1000), 1).await })
        };
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(
            !blocked.is_finished(),
            "append must wait while the buffer is full"
        );
        buffer.release(&chunks[0]).unwrap();
        let ticket = tokio::time::timeout(Duration::from_secs(5), blocked)
            .await
            .expect("a release wakes the blocked append")
            .unwrap()
            .unwrap();
        ticket.durable().await.unwrap();
        assert_eq!(buffer.stats().chunks_dropped, 0);

        // close() wakes a blocked appender with Closed.
        let blocked = {
            let buffer = buffer.clone();
            tokio::spawn(async move { buffer.append(payload(1, 1, 5000), 1).await })
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        buffer.close().await.unwrap();
        let result = tokio::time::timeout(Duration::from_secs(5), blocked)
            .await
            .unwrap()
            .unwrap();
        assert!(matches!(result, Err(AppendError::Closed)));
    }

    #[tokio::test]
    async fn overflow_reject_refuses_and_counts() {
        let tmp = tempfile::tempdir().unwrap();
        let (buffer, mut rx, _) =
            Buffer::open(small_buffer(tmp.path(), "reject", OverflowAction::Reject)).unwrap();
        let chunks = fill(&buffer, &mut rx).await;
        let before = telemetry::DROPPED_RECORDS
            .with_label_values(&["buffer_full"])
            .get();
        let err = buffer.append(payload(1, 0, 1000), 33).await.unwrap_err();
        assert!(matches!(err, AppendError::Full));
        assert_eq!(err.code(), "full");
        assert_eq!(buffer.stats().records_rejected, 33);
        assert!(
            telemetry::DROPPED_RECORDS
                .with_label_values(&["buffer_full"])
                .get()
                >= before + 33
        );
        buffer.release(&chunks[0]).unwrap();
        buffer
            .append(payload(1, 0, 1000), 33)
            .await
            .unwrap()
            .durable()
            .await
            .unwrap();
        buffer.close().await.unwrap();
    }

    #[tokio::test]
    async fn overflow_drop_oldest_deletes_oldest_sealed_chunk() {
        let tmp = tempfile::tempdir().unwrap();
        let (buffer, mut rx, _) = Buffer::open(small_buffer(
            tmp.path(),
            "drop_oldest",
            OverflowAction::DropOldestChunk,
        ))
        .unwrap();
        let chunks = fill(&buffer, &mut rx).await;
        let before = telemetry::DROPPED_RECORDS
            .with_label_values(&["drop_oldest_chunk"])
            .get();
        buffer
            .append(payload(1, 0, 1000), 1)
            .await
            .unwrap()
            .durable()
            .await
            .unwrap();
        let stats = buffer.stats();
        assert_eq!((stats.chunks_dropped, stats.records_dropped), (1, 7));
        assert!(
            telemetry::DROPPED_RECORDS
                .with_label_values(&["drop_oldest_chunk"])
                .get()
                >= before + 7
        );
        // The oldest chunk is gone, though the output already received it.
        assert!(!chunks[0].path.exists());
        assert!(matches!(chunks[0].read(), Err(ChunkError::Gone { .. })));
        assert!(chunks[1].path.exists());
        // Releasing it is a no-op: its bytes were freed exactly once.
        buffer.release(&chunks[0]).unwrap();
        assert_eq!(buffer.usage().bytes, dir_bytes(tmp.path()));
        buffer.release(&chunks[1]).unwrap();
        assert_eq!(buffer.usage().bytes, dir_bytes(tmp.path()));
        buffer.close().await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn drop_oldest_with_nothing_sealed_waits_for_a_seal() {
        let tmp = tempfile::tempdir().unwrap();
        let mut o = options(tmp.path(), "drop_oldest_open");
        o.total_limit_size = 3000;
        o.flush_interval = Duration::from_millis(100);
        o.overflow_action = OverflowAction::DropOldestChunk;
        let (buffer, _rx, _) = Buffer::open(o).unwrap();
        // Two frames fill the open chunk to the limit; nothing is sealed yet.
        for i in 0..2 {
            buffer
                .append(payload(0, i, 1400), 2)
                .await
                .unwrap()
                .durable()
                .await
                .unwrap();
        }
        let third = tokio::time::timeout(
            Duration::from_secs(5),
            buffer.append(payload(0, 2, 1400), 2),
        )
        .await
        .expect("the age seal makes the open chunk droppable")
        .unwrap();
        third.durable().await.unwrap();
        assert_eq!(buffer.stats().chunks_dropped, 1);
        assert_eq!(buffer.stats().records_dropped, 4);
        buffer.close().await.unwrap();
    }

    #[tokio::test]
    async fn interval_and_never_policies() {
        let tmp = tempfile::tempdir().unwrap();
        let mut o = options(tmp.path(), "never");
        o.fsync = FsyncPolicy::Never;
        let (buffer, mut rx, _) = Buffer::open(o).unwrap();
        for i in 0..50 {
            buffer
                .append(payload(0, i, 100), 1)
                .await
                .unwrap()
                .durable()
                .await
                .unwrap();
        }
        assert_eq!(buffer.stats().data_syncs, 0);
        assert_eq!(buffer.stats().dir_syncs, 0);
        buffer.close().await.unwrap();
        assert_eq!(buffer.stats().data_syncs, 1, "close syncs even under never");
        assert_eq!(frames_of(&all_chunks(&mut rx).await).len(), 50);

        let tmp = tempfile::tempdir().unwrap();
        let mut o = options(tmp.path(), "interval");
        o.fsync = FsyncPolicy::Interval;
        o.commit_interval = Duration::from_millis(100);
        let (buffer, mut rx, _) = Buffer::open(o).unwrap();
        let started = Instant::now();
        for i in 0..200 {
            buffer
                .append(payload(0, i, 100), 1)
                .await
                .unwrap()
                .durable()
                .await
                .unwrap();
        }
        let elapsed = started.elapsed();
        tokio::time::sleep(Duration::from_millis(250)).await;
        let syncs = buffer.stats().data_syncs;
        // At most one sync per interval (plus the first one), and the timer syncs a dirty chunk.
        let bound = elapsed.as_millis() as u64 / 100 + 2;
        assert!(
            syncs >= 1 && syncs <= bound + 2,
            "{syncs} syncs in {elapsed:?}"
        );
        buffer.close().await.unwrap();
        assert_eq!(frames_of(&all_chunks(&mut rx).await).len(), 200);
    }

    #[tokio::test]
    async fn usage_and_metrics_track_chunks() {
        let tmp = tempfile::tempdir().unwrap();
        let (buffer, mut rx, _) = Buffer::open(options(tmp.path(), "usage_metrics")).unwrap();
        let gauge = |state: &str| {
            telemetry::BUFFER_CHUNKS
                .with_label_values(&["usage_metrics", state])
                .get()
        };
        assert_eq!(buffer.usage().limit, 1 << 30);
        assert_eq!(
            telemetry::BUFFER_LIMIT_BYTES
                .with_label_values(&["usage_metrics"])
                .get(),
            1 << 30
        );
        buffer
            .append(payload(0, 0, 100), 1)
            .await
            .unwrap()
            .durable()
            .await
            .unwrap();
        let usage = buffer.usage();
        assert_eq!((usage.open_chunks, usage.sealed_chunks), (1, 0));
        assert!(usage.oldest_created_at.is_some());
        assert_eq!(usage.bytes, dir_bytes(tmp.path()));
        assert_eq!(gauge("open"), 1);
        buffer.seal_now().await.unwrap();
        assert_eq!((gauge("open"), gauge("sealed")), (0, 1));
        assert_eq!(
            telemetry::BUFFER_BYTES
                .with_label_values(&["usage_metrics"])
                .get() as u64,
            dir_bytes(tmp.path())
        );
        let chunk = recv(&mut rx).await.unwrap();
        buffer.release(&chunk).unwrap();
        assert_eq!((gauge("open"), gauge("sealed")), (0, 0));
        assert_eq!(
            telemetry::BUFFER_BYTES
                .with_label_values(&["usage_metrics"])
                .get(),
            0
        );
        assert_eq!(buffer.name(), "usage_metrics");
        buffer.close().await.unwrap();
    }
}

#[test]
fn the_buffer_root_lock_admits_one_holder_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("state");
    let held = logferry_common::chunk::lock_root(&root).expect("first lock");
    let err = logferry_common::chunk::lock_root(&root).expect_err("a second holder is refused");
    assert!(err.to_string().contains("another process"), "{err}");
    drop(held);
    logferry_common::chunk::lock_root(&root).expect("free again once the holder is gone");
}
