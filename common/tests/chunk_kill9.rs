//! `kill -9` of a process appending to a buffer: every frame whose ticket resolved before the
//! kill is there after restart.
//!
//! The parent test re-runs this test binary as a child (`kill9_child`, active only when
//! `LOGFERRY_CHUNK_KILL9_DIR` is set), which appends from several tasks and prints `acked <id>`
//! after each ticket resolves. The parent kills it with SIGKILL mid-stream, reopens the buffer
//! and checks every printed id. Three kill/restart cycles run on the same directory, so
//! recovery of a recovered directory is exercised too. (A kill keeps the page cache; power loss
//! is beyond a test, which is why the writer's fsync ordering is argued in its docs.)

// In a module named `chunk` so that `cargo test -p logferry-common chunk` selects these.
mod chunk {
    use std::collections::BTreeSet;
    use std::io::{BufRead, BufReader};
    use std::path::Path;
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};

    use bytes::Bytes;
    use logferry_common::chunk::{Buffer, BufferOptions, SealedReceiver};

    const DIR_VAR: &str = "LOGFERRY_CHUNK_KILL9_DIR";
    const RUN_VAR: &str = "LOGFERRY_CHUNK_KILL9_RUN";

    fn options(dir: &Path) -> BufferOptions {
        let mut o = BufferOptions::new(dir, "kill9");
        o.chunk_limit_size = 256 * 1024;
        o.flush_interval = Duration::from_millis(30);
        o
    }

    /// The child: appends until killed. A no-op in a normal test run.
    #[test]
    fn kill9_child() {
        let Ok(dir) = std::env::var(DIR_VAR) else {
            return;
        };
        let run: u64 = std::env::var(RUN_VAR).unwrap().parse().unwrap();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            // Recovered chunks are left alone: the parent checks the directory, not deliveries.
            let (buffer, _rx, _) = Buffer::open(options(Path::new(&dir))).unwrap();
            let mut tasks = Vec::new();
            for t in 0..8u64 {
                let buffer = buffer.clone();
                tasks.push(tokio::spawn(async move {
                    for i in 0.. {
                        let id = run * 1_000_000_000 + t * 10_000_000 + i;
                        let payload =
                            Bytes::from(format!("{id:020} {}", "k".repeat((i % 3000) as usize)));
                        buffer
                            .append(payload, 1)
                            .await
                            .unwrap()
                            .durable()
                            .await
                            .unwrap();
                        println!("acked {id}");
                    }
                }));
            }
            for t in tasks {
                t.await.unwrap();
            }
        });
    }

    fn ids(rx: &mut SealedReceiver) -> BTreeSet<u64> {
        let mut out = BTreeSet::new();
        while let Some(chunk) = rx.try_recv() {
            let contents = chunk.read().unwrap();
            assert_eq!(contents.bad_frames(), 0);
            for f in contents.frames() {
                out.insert(
                    std::str::from_utf8(&f.payload[..20])
                        .unwrap()
                        .parse()
                        .unwrap(),
                );
            }
        }
        out
    }

    #[test]
    fn kill9_loses_no_acknowledged_frame() {
        if std::env::var(DIR_VAR).is_ok() {
            return; // we are the child's sibling test
        }
        let tmp = tempfile::tempdir().unwrap();
        let mut acked = BTreeSet::new();
        for run in 1..=3u64 {
            let mut child = Command::new(std::env::current_exe().unwrap())
                .args([
                    "--exact",
                    "chunk::kill9_child",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env(DIR_VAR, tmp.path())
                .env(RUN_VAR, run.to_string())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            let stdout = child.stdout.take().unwrap();
            let reader = std::thread::spawn(move || {
                let mut ids = Vec::new();
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    if let Some(id) = line.strip_prefix("acked ") {
                        ids.push(id.parse::<u64>().unwrap());
                    }
                }
                ids
            });
            // Kill at a different moment each run, while appends are in full flow.
            std::thread::sleep(Duration::from_millis(300 + 170 * run));
            child.kill().unwrap(); // SIGKILL
            child.wait().unwrap();
            let printed = reader.join().unwrap();
            assert!(
                printed.len() > 50,
                "run {run}: the child acknowledged only {}",
                printed.len()
            );
            acked.extend(printed);
        }
        let started = Instant::now();
        let (_buffer, mut rx, recovered) = Buffer::open(options(tmp.path())).unwrap();
        let found = ids(&mut rx);
        let missing: Vec<_> = acked.difference(&found).collect();
        assert!(
            missing.is_empty(),
            "{} of {} acknowledged frames lost: first {:?}; recovery: {recovered:?}",
            missing.len(),
            acked.len(),
            missing.iter().take(5).collect::<Vec<_>>()
        );
        eprintln!(
            "acked {} found {} recovered {recovered:?}",
            acked.len(),
            found.len()
        );
        assert!(recovered.quarantined.is_empty());
        assert!(started.elapsed() < Duration::from_secs(30));
    }
}
