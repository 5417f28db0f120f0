//! A real full disk: a 1 MiB tmpfs (needs root to mount; skipped with a message otherwise).
//!
//! Appends run until the disk is full. Tickets of the failing groups resolve with an error
//! (`disk_full`), nothing panics, and once chunks are released the buffer takes appends again.
//! Every acknowledged frame is accounted for at the end: delivered before release, or on disk
//! after a restart.

// In a module named `chunk` so that `cargo test -p logferry-common chunk` selects these.
mod chunk {
    use std::collections::BTreeSet;
    use std::path::{Path, PathBuf};
    use std::process::Command;
    use std::time::Duration;

    use bytes::Bytes;
    use logferry_common::chunk::{Buffer, BufferOptions, SealedChunk, SealedReceiver};

    /// Unmounts on drop, even when the test fails.
    struct Mount(PathBuf);

    impl Drop for Mount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }

    fn mount_tmpfs(at: &Path, size: &str) -> Option<Mount> {
        std::fs::create_dir_all(at).ok()?;
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .stderr(std::process::Stdio::null())
            .status()
            .ok()?;
        status.success().then(|| Mount(at.to_owned()))
    }

    fn options(dir: &Path) -> BufferOptions {
        let mut o = BufferOptions::new(dir, "disk_full");
        o.chunk_limit_size = 200 * 1024;
        o.total_limit_size = 1 << 30; // far above the disk: the disk fills first
        o.flush_interval = Duration::from_secs(60);
        o
    }

    fn payload(id: u32) -> Bytes {
        let mut p = format!("{id:010}").into_bytes();
        p.resize(30_000, b'd');
        Bytes::from(p)
    }

    fn ids_of(chunk: &SealedChunk) -> Vec<u32> {
        let contents = chunk.read().unwrap();
        assert_eq!(contents.bad_frames(), 0);
        contents
            .frames()
            .map(|f| {
                std::str::from_utf8(&f.payload[..10])
                    .unwrap()
                    .parse()
                    .unwrap()
            })
            .collect()
    }

    fn drain(rx: &mut SealedReceiver) -> Vec<SealedChunk> {
        std::iter::from_fn(|| rx.try_recv()).collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn disk_full_fails_tickets_and_recovers() {
        let tmp = tempfile::tempdir().unwrap();
        let mnt = tmp.path().join("mnt");
        let Some(_mount) = mount_tmpfs(&mnt, "1m") else {
            eprintln!("SKIPPED: cannot mount a tmpfs (not root?)");
            return;
        };
        let dir = mnt.join("buffer");
        let (buffer, mut rx, _) = Buffer::open(options(&dir)).unwrap();

        let mut acked = BTreeSet::new();
        let mut failures = 0;
        let mut next = 0u32;
        // Fill the disk: 30 KB frames into a 1 MiB filesystem; keep going past the first failure.
        while failures < 5 && next < 200 {
            let mut tickets = Vec::new();
            for _ in 0..4 {
                tickets.push((next, buffer.append(payload(next), 1).await.unwrap()));
                next += 1;
            }
            for (id, ticket) in tickets {
                match ticket.durable().await {
                    Ok(()) => {
                        acked.insert(id);
                    }
                    Err(e) => {
                        assert_eq!(e.code(), "disk_full", "{e}");
                        failures += 1;
                    }
                }
            }
        }
        eprintln!(
            "disk full after {} acknowledged appends ({failures} failed)",
            acked.len()
        );
        assert!(failures > 0, "the disk never filled");
        assert!(
            acked.len() > 10,
            "too few appends before the disk filled: {}",
            acked.len()
        );
        assert_eq!(buffer.usage().pending_bytes, 0);

        // Deliver and release what was sealed: space comes back, appends succeed again.
        let mut delivered = BTreeSet::new();
        for chunk in drain(&mut rx) {
            delivered.extend(ids_of(&chunk));
            buffer.release(&chunk).unwrap();
        }
        assert!(!delivered.is_empty());
        for _ in 0..3 {
            let id = next;
            next += 1;
            buffer
                .append(payload(id), 1)
                .await
                .unwrap()
                .durable()
                .await
                .expect("space was freed");
            acked.insert(id);
        }
        buffer.close().await.unwrap();
        for chunk in drain(&mut rx) {
            delivered.extend(ids_of(&chunk));
        }
        drop(buffer);

        // After a restart, everything acknowledged and not released is still there.
        let (_b, mut rx, recovered) = Buffer::open(options(&dir)).unwrap();
        assert!(recovered.quarantined.is_empty());
        let mut on_disk = BTreeSet::new();
        for chunk in drain(&mut rx) {
            on_disk.extend(ids_of(&chunk));
        }
        let all: BTreeSet<u32> = delivered.union(&on_disk).copied().collect();
        let lost: Vec<_> = acked.difference(&all).collect();
        assert!(lost.is_empty(), "acknowledged frames lost: {lost:?}");
    }
}
