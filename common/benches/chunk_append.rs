//! Append throughput of the chunk buffer with `fsync = "always"` under group commit.
//!
//! Each configuration appends from 1, 8 or 64 concurrent tasks, each awaiting every ticket
//! before its next append (as a Forward connection waits for its ack), with payloads of 333 KB
//! (a PackedForward request of 1000 Kubernetes-shaped records) or 4 KB (~12 records). A
//! consumer task releases chunks as they are sealed, so the disk holds a steady state.
//! Throughput is reported in records (elements) per second; after each configuration the
//! number of `fdatasync`s per append is printed, which is what group commit is for.
//!
//! Run: `cargo bench -p logferry-common --bench chunk_append`
//! (the buffer lives in `$TMPDIR`; point it at the disk you mean to measure).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use logferry_common::chunk::{Buffer, BufferOptions, FsyncPolicy};

/// Frames appended per measured iteration (divisible by every appender count).
const FRAMES_PER_ITER: u64 = 64;

struct Case {
    label: &'static str,
    payload_bytes: usize,
    records_per_frame: u32,
}

const CASES: [Case; 2] = [
    Case {
        label: "333KB",
        payload_bytes: 333_000,
        records_per_frame: 1000,
    },
    Case {
        label: "4KB",
        payload_bytes: 4_096,
        records_per_frame: 12,
    },
];

async fn run(
    buffer: &Buffer,
    payload: &Bytes,
    records: u32,
    appenders: u64,
    frames: u64,
) -> Duration {
    let per_task = frames.div_ceil(appenders);
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(appenders as usize);
    for _ in 0..appenders {
        let (buffer, payload) = (buffer.clone(), payload.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..per_task {
                let ticket = buffer
                    .append(payload.clone(), records)
                    .await
                    .expect("append");
                ticket.durable().await.expect("durable");
            }
        }));
    }
    for task in tasks {
        task.await.expect("appender task");
    }
    started.elapsed()
}

fn chunk_append(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut group = c.benchmark_group("chunk_append");
    group.sample_size(10);
    group.warm_up_time(Duration::from_millis(500));
    group.measurement_time(Duration::from_secs(3));
    for case in &CASES {
        let payload = Bytes::from(vec![b'r'; case.payload_bytes]);
        for appenders in [1u64, 8, 64] {
            let tmp = tempfile::tempdir().expect("tempdir");
            let mut options = BufferOptions::new(tmp.path(), "bench");
            options.fsync = FsyncPolicy::Always;
            let (buffer, mut sealed, _) = {
                let _guard = rt.enter();
                Buffer::open(options).expect("open")
            };
            // The output side: release each chunk as soon as it is sealed.
            let releaser = {
                let buffer = buffer.clone();
                rt.spawn(async move {
                    while let Some(chunk) = sealed.recv().await {
                        buffer.release(&chunk).expect("release");
                    }
                })
            };
            group.throughput(Throughput::Elements(
                FRAMES_PER_ITER * u64::from(case.records_per_frame),
            ));
            let buffer = Arc::new(buffer);
            group.bench_with_input(
                BenchmarkId::new(case.label, appenders),
                &appenders,
                |b, &n| {
                    b.iter_custom(|iters| {
                        rt.block_on(run(
                            &buffer,
                            &payload,
                            case.records_per_frame,
                            n,
                            iters * FRAMES_PER_ITER,
                        ))
                    });
                },
            );
            let stats = buffer.stats();
            eprintln!(
                "chunk_append/{}/{appenders}: {} appends, {} fdatasyncs ({:.3} per append, {:.1} frames per group), {} chunks sealed",
                case.label,
                stats.frames_committed,
                stats.data_syncs,
                stats.data_syncs as f64 / stats.frames_committed.max(1) as f64,
                stats.frames_committed as f64 / stats.groups.max(1) as f64,
                stats.chunks_sealed,
            );
            rt.block_on(async {
                buffer.close().await.expect("close");
                releaser.await.expect("releaser");
            });
        }
    }
    group.finish();
}

criterion_group!(benches, chunk_append);
criterion_main!(benches);
