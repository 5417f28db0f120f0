//! Recovery and inspection: what `Buffer::open` makes of what a crash (or a bad disk) left.
//!
//! Damaged files are crafted with the public `format` functions, so each test controls exactly
//! which byte is wrong; the crash test copies a live buffer directory mid-stream instead.

// In a module named `chunk` so that `cargo test -p logferry-common chunk` selects these.
mod chunk {
    use std::collections::{BTreeMap, BTreeSet};
    use std::path::{Path, PathBuf};
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, SystemTime};

    use bytes::Bytes;
    use logferry_common::chunk::format::FRAME_HEADER_LEN;
    use logferry_common::chunk::{
        chunk_file_name, inspect_dir, parse_chunk_file_name, Buffer, BufferOptions, ChunkHeader,
        ChunkState, FileState, FrameHeader, SealedChunk, SealedReceiver,
    };
    use logferry_common::telemetry;
    use proptest::prelude::*;

    fn options(dir: &Path, name: &str) -> BufferOptions {
        let mut o = BufferOptions::new(dir, name);
        o.flush_interval = Duration::from_secs(60);
        o
    }

    fn frame_payload(i: usize) -> Vec<u8> {
        format!("frame {i:04} {}", "y".repeat(40 + i % 7)).into_bytes()
    }

    /// Writes a chunk file by hand; returns its path and each frame's offset (plus the end).
    fn write_chunk(
        dir: &Path,
        name: &str,
        seq: u64,
        state: ChunkState,
        n: usize,
    ) -> (PathBuf, Vec<usize>) {
        let mut buf = ChunkHeader::new(seq, name, SystemTime::now())
            .encode()
            .unwrap();
        let mut offsets = Vec::new();
        for i in 0..n {
            offsets.push(buf.len());
            let payload = frame_payload(i);
            buf.extend_from_slice(&FrameHeader::new(&payload, i as u32 + 1).unwrap().encode());
            buf.extend_from_slice(&payload);
        }
        offsets.push(buf.len());
        std::fs::create_dir_all(dir).unwrap();
        let path = dir.join(chunk_file_name(seq, state));
        std::fs::write(&path, &buf).unwrap();
        (path, offsets)
    }

    fn drain(rx: &mut SealedReceiver) -> Vec<SealedChunk> {
        let mut out = Vec::new();
        while let Some(chunk) = rx.try_recv() {
            out.push(chunk);
        }
        out
    }

    fn payloads(chunk: &SealedChunk) -> Vec<Vec<u8>> {
        chunk
            .read()
            .unwrap()
            .frames()
            .map(|f| f.payload.to_vec())
            .collect()
    }

    fn names(dir: &Path) -> BTreeSet<String> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn clean_files_are_recovered_in_order_and_seq_continues() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        write_chunk(dir, "clean", 12, ChunkState::Sealed, 3);
        write_chunk(dir, "clean", 3, ChunkState::Sealed, 2);
        write_chunk(dir, "clean", 40, ChunkState::Open, 4);
        // Unrelated entries are ignored and left alone.
        std::fs::write(dir.join("README"), b"hello").unwrap();
        std::fs::write(dir.join("chunk-12.sealed"), b"not a chunk name").unwrap();
        std::fs::create_dir(dir.join("chunk-00000000000000000099.sealed.d")).unwrap();

        let (buffer, mut rx, recovered) = Buffer::open(options(dir, "clean")).unwrap();
        assert_eq!(recovered.sealed_chunks, 3);
        assert_eq!(recovered.records, (1 + 2) + (1 + 2 + 3) + (1 + 2 + 3 + 4));
        assert_eq!((recovered.truncated_bytes, recovered.bad_frames), (0, 0));
        assert!(recovered.quarantined.is_empty());
        let chunks = drain(&mut rx);
        assert_eq!(
            chunks.iter().map(|c| c.seq).collect::<Vec<_>>(),
            vec![3, 12, 40]
        );
        // The .open file was sealed by a rename.
        assert!(chunks[2]
            .path
            .ends_with(chunk_file_name(40, ChunkState::Sealed)));
        assert!(!dir.join(chunk_file_name(40, ChunkState::Open)).exists());
        assert_eq!(
            payloads(&chunks[2]),
            (0..4).map(frame_payload).collect::<Vec<_>>()
        );
        assert_eq!(recovered.bytes, chunks.iter().map(|c| c.bytes).sum::<u64>());
        assert_eq!(buffer.usage().bytes, recovered.bytes);
        assert_eq!(buffer.usage().sealed_chunks, 3);
        assert!(dir.join("README").exists() && dir.join("chunk-12.sealed").exists());

        // New chunks continue after the highest sequence number, and come after the recovered ones.
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            buffer
                .append(Bytes::from_static(b"new"), 1)
                .await
                .unwrap()
                .durable()
                .await
                .unwrap();
            buffer.close().await.unwrap();
        });
        let new = drain(&mut rx);
        assert_eq!(new.len(), 1);
        assert_eq!(new[0].seq, 41);
        // Recovered chunks are released like any other.
        for chunk in chunks.iter().chain(&new) {
            buffer.release(chunk).unwrap();
        }
        assert_eq!(buffer.usage().bytes, 0);
    }

    #[test]
    fn torn_tail_is_truncated_and_earlier_frames_kept() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let (open, offsets) = write_chunk(dir, "torn", 1, ChunkState::Open, 5);
        // Cut the last frame in the middle of its payload.
        let cut = offsets[4] + FRAME_HEADER_LEN + 3;
        std::fs::OpenOptions::new()
            .write(true)
            .open(&open)
            .unwrap()
            .set_len(cut as u64)
            .unwrap();
        // A sealed file with garbage after its last frame.
        let (sealed, soffsets) = write_chunk(dir, "torn", 2, ChunkState::Sealed, 3);
        let mut bytes = std::fs::read(&sealed).unwrap();
        bytes.extend_from_slice(&[0u8; 37]);
        std::fs::write(&sealed, &bytes).unwrap();

        let before = telemetry::BUFFER_CORRUPTION
            .with_label_values(&["torn", "truncated"])
            .get();
        let (_buffer, mut rx, recovered) = Buffer::open(options(dir, "torn")).unwrap();
        assert_eq!(recovered.truncated_bytes, (cut - offsets[4] + 37) as u64);
        assert_eq!(recovered.sealed_chunks, 2);
        assert_eq!(recovered.records, (1 + 2 + 3 + 4) + (1 + 2 + 3));
        assert_eq!(
            telemetry::BUFFER_CORRUPTION
                .with_label_values(&["torn", "truncated"])
                .get(),
            before + 2
        );
        let chunks = drain(&mut rx);
        assert_eq!(
            payloads(&chunks[0]),
            (0..4).map(frame_payload).collect::<Vec<_>>()
        );
        assert_eq!(
            std::fs::metadata(&chunks[0].path).unwrap().len(),
            offsets[4] as u64
        );
        assert_eq!(chunks[0].bytes, offsets[4] as u64);
        assert_eq!(
            std::fs::metadata(&chunks[1].path).unwrap().len(),
            soffsets[3] as u64
        );
        assert_eq!(chunks[1].read().unwrap().bad_frames(), 0);
    }

    #[test]
    fn flipped_bit_in_middle_frame_is_skipped_and_counted() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let (path, offsets) = write_chunk(dir, "bitflip", 1, ChunkState::Sealed, 6);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[offsets[2] + FRAME_HEADER_LEN + 5] ^= 0x20;
        std::fs::write(&path, &bytes).unwrap();
        let size = bytes.len() as u64;

        let corruption = || {
            telemetry::BUFFER_CORRUPTION
                .with_label_values(&["bitflip", "bad_frame"])
                .get()
        };
        let dropped = || {
            telemetry::DROPPED_RECORDS
                .with_label_values(&["corrupt_frame"])
                .get()
        };
        let (c0, d0) = (corruption(), dropped());
        let (_buffer, mut rx, recovered) = Buffer::open(options(dir, "bitflip")).unwrap();
        assert_eq!(recovered.bad_frames, 1);
        assert_eq!(recovered.truncated_bytes, 0);
        assert_eq!(
            recovered.records,
            1 + 2 + 4 + 5 + 6,
            "the damaged frame's 3 records are not counted"
        );
        assert_eq!(corruption(), c0 + 1);
        let chunk = drain(&mut rx).pop().unwrap();
        // A sealed file is not rewritten: the reader skips the frame again.
        assert_eq!(std::fs::metadata(&chunk.path).unwrap().len(), size);
        let contents = chunk.read().unwrap();
        assert_eq!(contents.bad_frames(), 1);
        assert_eq!(contents.records(), 18);
        let expected: Vec<Vec<u8>> = [0, 1, 3, 4, 5].into_iter().map(frame_payload).collect();
        assert_eq!(
            contents
                .frames()
                .map(|f| f.payload.to_vec())
                .collect::<Vec<_>>(),
            expected
        );
        assert_eq!(
            contents.frames().map(|f| f.records).collect::<Vec<_>>(),
            vec![1, 2, 4, 5, 6]
        );
        assert_eq!(
            corruption(),
            c0 + 2,
            "counted at recovery and again at read"
        );
        assert!(
            dropped() >= d0 + 3,
            "the damaged frame's records are counted as dropped"
        );

        // Damaged magic in the middle: resynchronised at the next frame.
        let (path, offsets) = write_chunk(dir, "bitflip", 2, ChunkState::Sealed, 4);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[offsets[1]] = b'#';
        bytes[offsets[1] + 4] = 0xff; // and a garbage length
        std::fs::write(&path, &bytes).unwrap();
        let chunk = SealedChunk {
            seq: 2,
            path,
            bytes: bytes.len() as u64,
            records: 0,
            created_at: SystemTime::now(),
        };
        let contents = chunk.read().unwrap();
        assert_eq!(contents.bad_frames(), 1);
        assert_eq!(contents.frame_count(), 3);
    }

    #[test]
    fn bad_headers_are_quarantined_never_deleted() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let (crc, _) = write_chunk(dir, "quarantine", 5, ChunkState::Sealed, 2);
        let mut bytes = std::fs::read(&crc).unwrap();
        bytes[14] ^= 1; // created_at: caught by the header CRC
        std::fs::write(&crc, &bytes).unwrap();
        let (magic, _) = write_chunk(dir, "quarantine", 6, ChunkState::Sealed, 2);
        let mut bytes = std::fs::read(&magic).unwrap();
        bytes[..8].copy_from_slice(b"NOTCHUNK");
        std::fs::write(&magic, &bytes).unwrap();
        // Header says seq 7, the name says 70.
        let (wrong, _) = write_chunk(dir, "quarantine", 7, ChunkState::Sealed, 1);
        std::fs::rename(&wrong, dir.join(chunk_file_name(70, ChunkState::Sealed))).unwrap();
        // A sealed file cut inside its header is damage too (only .open files can be torn there).
        std::fs::write(
            dir.join(chunk_file_name(8, ChunkState::Sealed)),
            b"LFCHUNK1\x01",
        )
        .unwrap();
        let (good, _) = write_chunk(dir, "quarantine", 9, ChunkState::Sealed, 1);

        let before = telemetry::BUFFER_CORRUPTION
            .with_label_values(&["quarantine", "quarantined"])
            .get();
        let (buffer, mut rx, recovered) = Buffer::open(options(dir, "quarantine")).unwrap();
        assert_eq!(
            recovered.quarantined.len(),
            4,
            "{:?}",
            recovered.quarantined
        );
        assert_eq!(
            telemetry::BUFFER_CORRUPTION
                .with_label_values(&["quarantine", "quarantined"])
                .get(),
            before + 4
        );
        let qnames = names(&dir.join("quarantine"));
        for seq in [5, 6, 8] {
            assert!(
                qnames.contains(&chunk_file_name(seq, ChunkState::Sealed)),
                "{qnames:?}"
            );
        }
        assert!(qnames.contains(&chunk_file_name(70, ChunkState::Sealed)));
        assert_eq!(
            names(dir),
            BTreeSet::from([chunk_file_name(9, ChunkState::Sealed), "quarantine".into()])
        );
        let chunks = drain(&mut rx);
        assert_eq!(chunks.len(), 1);
        assert_eq!(chunks[0].path, good);
        // Numbers of quarantined files are never reused.
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            buffer
                .append(Bytes::from_static(b"x"), 1)
                .await
                .unwrap()
                .durable()
                .await
                .unwrap();
            buffer.close().await.unwrap();
        });
        assert_eq!(drain(&mut rx)[0].seq, 71);

        // A second start leaves the quarantine alone and finds nothing new.
        let (_b, _rx, again) = Buffer::open(options(dir, "quarantine")).unwrap();
        assert!(again.quarantined.is_empty());
        assert_eq!(names(&dir.join("quarantine")).len(), 4);
    }

    #[test]
    fn torn_creations_and_empty_chunks_are_removed() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        std::fs::write(dir.join(chunk_file_name(1, ChunkState::Open)), b"").unwrap();
        std::fs::write(
            dir.join(chunk_file_name(2, ChunkState::Open)),
            b"LFCHUNK1\x01\x00",
        )
        .unwrap();
        write_chunk(dir, "empty", 3, ChunkState::Open, 0);
        let (torn_first, offsets) = write_chunk(dir, "empty", 4, ChunkState::Open, 1);
        std::fs::OpenOptions::new()
            .write(true)
            .open(&torn_first)
            .unwrap()
            .set_len(offsets[0] as u64 + 7)
            .unwrap();
        let (_buffer, mut rx, recovered) = Buffer::open(options(dir, "empty")).unwrap();
        assert!(drain(&mut rx).is_empty());
        assert!(recovered.quarantined.is_empty());
        assert_eq!(recovered.truncated_bytes, 10 + 7);
        assert!(names(dir).is_empty(), "{:?}", names(dir));
    }

    #[test]
    fn open_file_with_damaged_key_len_is_quarantined_not_deleted() {
        // Its header looks cut short (key_len points far past the end), but the file is longer
        // than any header this buffer writes: it may hold acknowledged frames.
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let (path, _) = write_chunk(dir, "keylen", 1, ChunkState::Open, 3);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[28] = 0xff;
        bytes[29] = 0xff;
        std::fs::write(&path, &bytes).unwrap();
        let (_buffer, mut rx, recovered) = Buffer::open(options(dir, "keylen")).unwrap();
        assert!(drain(&mut rx).is_empty());
        assert_eq!(recovered.quarantined.len(), 1);
        assert_eq!(std::fs::read(&recovered.quarantined[0]).unwrap(), bytes);
    }

    #[test]
    fn lowering_max_frame_bytes_loses_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        write_chunk(tmp.path(), "lowered", 1, ChunkState::Open, 5);
        let mut o = options(tmp.path(), "lowered");
        o.max_frame_bytes = 10; // every frame on disk is larger
        let (_b, mut rx, recovered) = Buffer::open(o).unwrap();
        assert_eq!((recovered.truncated_bytes, recovered.bad_frames), (0, 0));
        assert_eq!(payloads(&drain(&mut rx)[0]).len(), 5);
    }

    /// Copies every chunk file of a live buffer directory, like the disk would look after a crash
    /// (the copy reads the page cache, so this models kill -9, not power loss). A file renamed
    /// from `.open` to `.sealed` during the copy is picked up under its new name.
    fn snapshot(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let name = entry.unwrap().file_name().to_string_lossy().into_owned();
            let Some((seq, _)) = parse_chunk_file_name(&name) else {
                continue;
            };
            for state in [ChunkState::Open, ChunkState::Sealed] {
                let candidate = chunk_file_name(seq, state);
                if let Ok(bytes) = std::fs::read(from.join(&candidate)) {
                    std::fs::write(to.join(&candidate), bytes).unwrap();
                    break;
                }
            }
        }
    }

    #[test]
    fn crash_snapshot_keeps_every_acknowledged_frame() {
        let tmp = tempfile::tempdir().unwrap();
        let live = tmp.path().join("live");
        let mut o = options(&live, "snapshot");
        o.chunk_limit_size = 32 * 1024;
        o.flush_interval = Duration::from_millis(20);
        let (buffer, _rx, _) = Buffer::open(o).unwrap();
        let acked: Arc<Mutex<Vec<u32>>> = Arc::default();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut tasks = Vec::new();
        for t in 0..8u32 {
            let (buffer, acked, stop) = (buffer.clone(), acked.clone(), stop.clone());
            tasks.push(rt.spawn(async move {
                let mut i = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let id = t * 1_000_000 + i;
                    let payload =
                        Bytes::from(format!("id={id:010} {}", "z".repeat((id % 900) as usize)));
                    buffer
                        .append(payload, 1)
                        .await
                        .unwrap()
                        .durable()
                        .await
                        .unwrap();
                    acked.lock().unwrap().push(id);
                    i += 1;
                }
            }));
        }
        let mut checked = 0;
        for round in 0..6 {
            std::thread::sleep(Duration::from_millis(40));
            let before: Vec<u32> = acked.lock().unwrap().clone();
            let copy = tmp.path().join(format!("copy{round}"));
            snapshot(&live, &copy);
            let (_b, mut rx, recovered) = Buffer::open(options(&copy, "snapshot")).unwrap();
            let mut found = BTreeSet::new();
            for chunk in drain(&mut rx) {
                let contents = chunk.read().unwrap();
                assert_eq!(contents.bad_frames(), 0);
                for f in contents.frames() {
                    let text = std::str::from_utf8(f.payload).unwrap();
                    found.insert(text[3..13].parse::<u32>().unwrap());
                }
            }
            let missing: Vec<_> = before.iter().filter(|id| !found.contains(id)).collect();
            assert!(
                missing.is_empty(),
                "round {round}: {} acked frames missing ({recovered:?})",
                missing.len()
            );
            checked += before.len();
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        rt.block_on(async {
            for t in tasks {
                t.await.unwrap();
            }
            buffer.close().await.unwrap();
        });
        assert!(
            checked > 100,
            "the test appended too little to mean anything ({checked})"
        );
    }

    #[test]
    fn inspect_reports_without_changing_anything() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        write_chunk(dir, "inspect", 1, ChunkState::Sealed, 3);
        let (torn, offsets) = write_chunk(dir, "inspect", 2, ChunkState::Open, 3);
        std::fs::OpenOptions::new()
            .write(true)
            .open(&torn)
            .unwrap()
            .set_len(offsets[2] as u64 + 5)
            .unwrap();
        let (bad, offsets) = write_chunk(dir, "inspect", 3, ChunkState::Sealed, 4);
        let mut bytes = std::fs::read(&bad).unwrap();
        bytes[offsets[1] + FRAME_HEADER_LEN] ^= 1;
        std::fs::write(&bad, &bytes).unwrap();
        std::fs::write(
            dir.join(chunk_file_name(4, ChunkState::Sealed)),
            b"garbage garbage garbage garbage garbage",
        )
        .unwrap();
        std::fs::create_dir(dir.join("quarantine")).unwrap();
        std::fs::write(
            dir.join("quarantine")
                .join("chunk-00000000000000000000.sealed.1"),
            b"x",
        )
        .unwrap();
        std::fs::write(dir.join("notes.txt"), b"not reported").unwrap();

        let listing = |dir: &Path| -> BTreeMap<PathBuf, (u64, SystemTime)> {
            let mut out = BTreeMap::new();
            for d in [dir.to_path_buf(), dir.join("quarantine")] {
                for e in std::fs::read_dir(&d).unwrap() {
                    let e = e.unwrap();
                    let m = e.metadata().unwrap();
                    out.insert(e.path(), (m.len(), m.modified().unwrap()));
                }
            }
            out
        };
        let before = listing(dir);
        let reports = inspect_dir(dir).unwrap();
        assert_eq!(listing(dir), before, "inspect_dir must not modify anything");

        assert_eq!(reports.len(), 5, "{reports:#?}");
        let by_seq = |seq: u64| {
            reports
                .iter()
                .find(|r| r.seq == Some(seq) && !r.quarantined)
                .unwrap()
        };
        let r1 = by_seq(1);
        assert!(r1.is_clean());
        assert_eq!(
            (r1.state, r1.frames_ok, r1.records),
            (FileState::Sealed, 3, 6)
        );
        assert_eq!(r1.key.as_deref(), Some("inspect"));
        assert!(r1.created_at.is_some());
        let r2 = by_seq(2);
        assert_eq!(
            (r2.state, r2.frames_ok, r2.bad_frames, r2.torn_tail_bytes),
            (FileState::Open, 2, 0, 5)
        );
        let r3 = by_seq(3);
        assert_eq!(
            (r3.frames_ok, r3.bad_frames, r3.torn_tail_bytes, r3.records),
            (3, 1, 0, 1 + 3 + 4)
        );
        let r4 = by_seq(4);
        assert!(!r4.header_ok);
        assert!(r4.header_error.as_deref().unwrap().contains("magic"));
        let q = reports.iter().find(|r| r.quarantined).unwrap();
        assert_eq!(q.state, FileState::Unknown);
        assert!(!q.header_ok);
        // The Display form is one line per file.
        assert!(r3.to_string().contains("bad_frames=1"));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Random truncation and bit flips in real files: open never panics or fails, and every
        /// frame read back is one that was written, with frames before the damage all present.
        #[test]
        fn random_damage_never_panics_or_returns_bad_frames(
            n in 1usize..8,
            open in any::<bool>(),
            flips in proptest::collection::vec((any::<prop::sample::Index>(), 0u8..8), 0..3),
            cut in proptest::option::of(any::<prop::sample::Index>()),
        ) {
            let tmp = tempfile::tempdir().unwrap();
            let dir = tmp.path();
            let state = if open { ChunkState::Open } else { ChunkState::Sealed };
            let (path, offsets) = write_chunk(dir, "prop", 1, state, n);
            let mut bytes = std::fs::read(&path).unwrap();
            let mut first_damage = usize::MAX;
            if let Some(cut) = cut {
                let at = cut.index(bytes.len() + 1);
                bytes.truncate(at);
                first_damage = at;
            }
            for (idx, bit) in flips {
                if !bytes.is_empty() {
                    let at = idx.index(bytes.len());
                    bytes[at] ^= 1 << bit;
                    first_damage = first_damage.min(at);
                }
            }
            std::fs::write(&path, &bytes).unwrap();
            let (_b, mut rx, recovered) = Buffer::open(options(dir, "prop")).unwrap();
            let originals: Vec<Vec<u8>> = (0..n).map(frame_payload).collect();
            let mut got = Vec::new();
            for chunk in drain(&mut rx) {
                let contents = chunk.read().unwrap();
                for f in contents.frames() {
                    prop_assert!(originals.iter().any(|o| o == f.payload));
                    got.push(f.payload.to_vec());
                }
            }
            if recovered.quarantined.is_empty() && !(open && first_damage < offsets[0]) {
                let intact = offsets.windows(2).filter(|w| w[1] <= first_damage).count();
                prop_assert!(got.len() >= intact, "{} < {}", got.len(), intact);
                prop_assert_eq!(&got[..intact], &originals[..intact]);
            }
            // A second start finds a consistent directory: nothing more to repair.
            drop(rx);
            let (_b2, _rx2, again) = Buffer::open(options(dir, "prop")).unwrap();
            prop_assert_eq!(again.truncated_bytes, 0);
            prop_assert!(again.quarantined.is_empty());
        }
    }
}
