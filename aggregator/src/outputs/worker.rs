//! The output worker: one per output, it reads the buffer's sealed chunks, delivers their
//! records through the output's [`Sink`](super::Sink), and deletes a chunk only once every
//! record in it was delivered or written to dead letters.
//!
//! ## Operation
//! ```text
//! sealed chunk -> read + verify (blocking pool) -> records [(frame, entry, tag, time, map)]
//!   -> attempt: sink.send(pending)  -- the sink batches to its own limits and says, per record:
//!        Delivered | Retry(kind, reason) | Reject(kind, reason)
//!      or fails as a whole (connection refused, HTTP 5xx, ...: every pending record retries)
//!   -> pending = the Retry records; wait (exponential backoff, full jitter, retry.max_interval)
//!   -> after retry.timeout (unless retry.forever): pending -> dead letters ("retry_timeout")
//!   -> Reject records -> dead letters (dead_letter.rs), durable before the chunk is released
//!   -> buffer.release(chunk)
//! ```
//! The worker owns the retry loop, dead letters, metrics and health; a sink only encodes,
//! batches and classifies (see [`Outcome`]). Only the records that still need it are sent
//! again, so a bulk request with one 429 item re-sends one document, not the chunk.
//! `deliver_records` is shared with `dead-letter replay`, which re-sends dead letters the
//! same way.
//!
//! ## Invariants
//! - A chunk is released only after each of its records was delivered or is durable in the
//!   dead-letter directory. A dead-letter write that fails (disk error, or the directory is full
//!   with `when_full = "block"`) keeps the chunk in the buffer; it is retried later.
//! - Records too large for the sink on their own are rejected by the sink (dead letters); they
//!   never block the queue.
//! - Each output has its own buffer, worker and health: a dead or slow output holds back only
//!   its own buffer (and, at its limit, what `overflow_action` says), never another output.
//! - At most `concurrency` chunks of one output are delivered at once.
//! - On shutdown the worker keeps delivering until its buffer is closed and drained, or until
//!   the shutdown deadline cancels it; whatever is not delivered by then stays on disk.
//! - A chunk that cannot be read never holds a delivery slot for good: one whose header is
//!   damaged, or that failed `MAX_READ_FAILURES` (5) reads in a row, is moved to the buffer's
//!   `quarantine/` ([`Buffer::quarantine`]: logged, counted in
//!   `logferry_buffer_corruption_total{action="quarantined"}`, bytes freed), never deleted.

use std::sync::Arc;
use std::time::{Duration, Instant};

use logferry_common::backoff::Backoff;
use logferry_common::chunk::{Buffer, ChunkError, SealedChunk, SealedReceiver};
use logferry_common::telemetry;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::dead_letter::{DeadItem, DeadLetterError, DeadLetters};
use super::failure::{Failure, FailureKind};
use super::health::OutputHealth;
use super::sink::{Outcome, Output};
use crate::config::RetryConfig;
use crate::record::{self, Rec, Records};

/// Everything an output worker needs.
#[derive(Debug)]
pub struct Worker {
    /// The output's name (metric label).
    pub name: String,
    /// The output itself.
    pub output: Output,
    /// Its buffer (for release).
    pub buffer: Buffer,
    /// Its sealed chunks, in order.
    pub sealed: SealedReceiver,
    /// Retry settings.
    pub retry: RetryConfig,
    /// Chunks delivered at once.
    pub concurrency: usize,
    /// Where undeliverable records go.
    pub dead_letters: Arc<DeadLetters>,
    /// Health, shared with the admin endpoint.
    pub health: Arc<OutputHealth>,
    /// Work on each chunk's records before they are sent (a tenant pipeline's parse and
    /// filters); none for the admin's outputs.
    pub prepare: Option<Arc<dyn Prepare>>,
}

/// Work on a chunk's records before they are sent: a tenant pipeline's parse and filters. It
/// runs on the blocking pool, right after the chunk is read.
///
/// Records it drops are gone from this delivery (counted by the implementation); the dead
/// items it returns are written to the output's dead letters, durably, before the chunk is
/// released, like records the sink rejected. It must not panic; should it, the chunk is read
/// again later, like a chunk that could not be read.
pub trait Prepare: Send + Sync + std::fmt::Debug {
    /// The records to send, and those that go to dead letters.
    fn prepare(&self, recs: Vec<Rec>) -> (Vec<Rec>, Vec<DeadItem>);
}

/// Reads of one chunk that may fail in a row before the chunk is quarantined: enough to ride
/// out a passing error, few enough that a bad file does not hold a delivery slot for long.
const MAX_READ_FAILURES: u32 = 5;

/// What one chunk's delivery ended with.
#[derive(Debug, PartialEq, Eq)]
enum ChunkEnd {
    /// Every record delivered or dead-lettered: release the chunk.
    Done,
    /// The chunk could not be read and was moved to the buffer's `quarantine/` (or was gone
    /// already): nothing to release.
    Quarantined,
    /// The shutdown deadline cancelled it: the chunk stays on disk.
    Cancelled,
}

impl Worker {
    /// Runs until the buffer is closed and drained, or `hard_stop` is cancelled.
    pub async fn run(self, hard_stop: CancellationToken) {
        let Worker {
            name,
            output,
            buffer,
            mut sealed,
            retry,
            concurrency,
            dead_letters,
            health,
            prepare,
        } = self;
        let ctx = Arc::new(Ctx {
            name: name.clone(),
            output: output.clone(),
            retry,
            dead_letters,
            health: Arc::clone(&health),
            prepare,
        });
        // Keeps the health gauges current while the output is failing.
        let ticker_stop = CancellationToken::new();
        let ticker = {
            let stop = ticker_stop.clone();
            let health = Arc::clone(&health);
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(1));
                loop {
                    tokio::select! {
                        _ = tick.tick() => health.publish(),
                        () = stop.cancelled() => break,
                    }
                }
            })
        };
        let mut running: JoinSet<()> = JoinSet::new();
        loop {
            while running.len() >= concurrency.max(1) {
                tokio::select! {
                    _ = running.join_next() => {}
                    () = hard_stop.cancelled() => break,
                }
            }
            if hard_stop.is_cancelled() {
                break;
            }
            let chunk = tokio::select! {
                chunk = sealed.recv() => chunk,
                () = hard_stop.cancelled() => break,
            };
            let Some(chunk) = chunk else { break };
            let ctx = Arc::clone(&ctx);
            let buffer = buffer.clone();
            let stop = hard_stop.clone();
            running.spawn(async move {
                if deliver_chunk(&ctx, &buffer, &chunk, &stop).await == ChunkEnd::Done {
                    if let Err(e) = buffer.release(&chunk) {
                        tracing::error!(output = %ctx.name, seq = chunk.seq, error = %e, "cannot delete a delivered chunk");
                    }
                }
            });
        }
        while running.join_next().await.is_some() {}
        output.close().await;
        ticker_stop.cancel();
        let _ = ticker.await;
        tracing::info!(output = %name, "output worker stopped");
    }
}

/// What a chunk delivery shares.
#[derive(Debug)]
pub(crate) struct Ctx {
    pub(crate) name: String,
    pub(crate) output: Output,
    pub(crate) retry: RetryConfig,
    pub(crate) dead_letters: Arc<DeadLetters>,
    pub(crate) health: Arc<OutputHealth>,
    pub(crate) prepare: Option<Arc<dyn Prepare>>,
}

/// Delivers one chunk: reads it, sends its records until each is delivered or dead. A chunk
/// whose header is damaged, or that fails to read [`MAX_READ_FAILURES`] times in a row, is
/// moved to quarantine instead of holding a delivery slot forever.
async fn deliver_chunk(
    ctx: &Ctx,
    buffer: &Buffer,
    chunk: &SealedChunk,
    hard_stop: &CancellationToken,
) -> ChunkEnd {
    let mut backoff = Backoff::new(ctx.retry.initial, ctx.retry.max_interval);
    let mut failures = 0u32;
    // Reading loads and verifies the whole chunk file: blocking IO, off the async workers.
    let (recs, prepared_dead) = loop {
        let to_read = chunk.clone();
        let prepare = ctx.prepare.clone();
        let read = tokio::task::spawn_blocking(move || {
            to_read.read().map(|contents| {
                let origin = record::Origin::of(&to_read);
                let recs = Records::from_chunk(&contents, origin).recs;
                match prepare {
                    Some(prepare) => prepare.prepare(recs),
                    None => (recs, Vec::new()),
                }
            })
        })
        .await
        .unwrap_or_else(|e| {
            Err(ChunkError::Io {
                op: "read chunk",
                path: chunk.path.clone(),
                source: std::io::Error::other(e.to_string()),
            })
        });
        match read {
            Ok(prepared) => break prepared,
            // drop_oldest_chunk removed it while queued; nothing left to deliver.
            Err(ChunkError::Gone { .. }) => return ChunkEnd::Done,
            Err(e) => {
                failures += 1;
                ctx.health.set_failing(Some(&e.to_string()));
                telemetry::OUTPUT_ERRORS
                    .with_label_values(&[&ctx.name, FailureKind::ChunkRead.as_str()])
                    .inc();
                // A bad header never gets better; other errors (EIO) get a few more tries.
                let reason = match e {
                    ChunkError::BadHeader { .. } => Some(e.to_string()),
                    _ if failures >= MAX_READ_FAILURES => {
                        Some(format!("{failures} reads failed in a row, the last: {e}"))
                    }
                    _ => None,
                };
                if let Some(reason) = reason {
                    if quarantine(ctx, buffer, chunk, reason).await {
                        // What was failing is dealt with; the next chunk tells the output's health.
                        ctx.health.set_failing(None);
                        return ChunkEnd::Quarantined;
                    }
                }
                let wait = backoff.next_wait();
                tracing::error!(output = %ctx.name, seq = chunk.seq, error = %e, retry_in = ?wait, "cannot read a chunk");
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    () = hard_stop.cancelled() => return ChunkEnd::Cancelled,
                }
            }
        }
    };
    let started = Instant::now();
    let Some(mut dead) = deliver_records(ctx, recs, &ctx.retry, hard_stop).await else {
        return ChunkEnd::Cancelled;
    };
    dead.extend(prepared_dead);
    if !dead.is_empty() && !write_dead_letters(ctx, &dead, hard_stop).await {
        return ChunkEnd::Cancelled;
    }
    telemetry::OUTPUT_FLUSH_DURATION
        .with_label_values(&[&ctx.name])
        .observe(started.elapsed().as_secs_f64());
    ChunkEnd::Done
}

/// Moves an unreadable chunk to its buffer's `quarantine/` (blocking IO, on the blocking pool);
/// `true` once the buffer no longer holds it. The move is logged and counted by the buffer.
async fn quarantine(ctx: &Ctx, buffer: &Buffer, chunk: &SealedChunk, reason: String) -> bool {
    let (buffer, to_move) = (buffer.clone(), chunk.clone());
    let moved = tokio::task::spawn_blocking(move || buffer.quarantine(&to_move, &reason))
        .await
        .unwrap_or_else(|e| {
            Err(ChunkError::Io {
                op: "quarantine chunk",
                path: chunk.path.clone(),
                source: std::io::Error::other(e.to_string()),
            })
        });
    match moved {
        Ok(_) => true,
        Err(e) => {
            tracing::error!(output = %ctx.name, seq = chunk.seq, error = %e, "cannot quarantine an unreadable chunk; retrying");
            false
        }
    }
}

/// Sends `recs` until each is delivered or rejected, retrying with backoff; after
/// `retry.timeout` (unless `forever`) the rest is given up ("retry_timeout"). Returns the
/// records for dead letters, or `None` when `hard_stop` cancelled it.
pub(crate) async fn deliver_records(
    ctx: &Ctx,
    recs: Vec<Rec>,
    retry: &RetryConfig,
    hard_stop: &CancellationToken,
) -> Option<Vec<DeadItem>> {
    let name = ctx.name.as_str();
    let mut pending = recs;
    let mut dead = Vec::new();
    let mut backoff = Backoff::new(retry.initial, retry.max_interval);
    let mut first_failure: Option<Instant> = None;
    while !pending.is_empty() {
        let attempt = tokio::select! {
            a = ctx.output.send(&pending) => a,
            () = hard_stop.cancelled() => return None,
        };
        let mut last: Option<Failure> = None;
        match attempt {
            Ok(attempt) if attempt.outcomes.len() == pending.len() => {
                let mut delivered = 0u64;
                let mut kinds: Vec<FailureKind> = Vec::new();
                let mut still = Vec::new();
                for (rec, outcome) in pending.into_iter().zip(attempt.outcomes) {
                    match outcome {
                        Outcome::Delivered => delivered += 1,
                        Outcome::Retry(f) => {
                            if !kinds.contains(&f.kind) {
                                kinds.push(f.kind);
                            }
                            last = Some(f);
                            still.push(rec);
                        }
                        Outcome::Reject(failure) => dead.push(DeadItem { rec, failure }),
                    }
                }
                telemetry::OUTPUT_RECORDS
                    .with_label_values(&[name])
                    .inc_by(delivered);
                telemetry::OUTPUT_BYTES
                    .with_label_values(&[name])
                    .inc_by(attempt.bytes);
                for kind in kinds {
                    telemetry::OUTPUT_ERRORS
                        .with_label_values(&[name, kind.as_str()])
                        .inc();
                }
                pending = still;
            }
            Ok(attempt) => {
                // A sink bug; retrying everything is the safe reading.
                let f = Failure::new(
                    FailureKind::Internal,
                    format!(
                        "sink returned {} outcomes for {} records",
                        attempt.outcomes.len(),
                        pending.len()
                    ),
                );
                telemetry::OUTPUT_ERRORS
                    .with_label_values(&[name, f.kind.as_str()])
                    .inc();
                last = Some(f);
            }
            Err(e) => {
                telemetry::OUTPUT_ERRORS
                    .with_label_values(&[name, e.kind.as_str()])
                    .inc();
                last = Some(Failure::new(e.kind, e.message));
            }
        }
        let Some(last) = last else {
            ctx.health.set_failing(None);
            break;
        };
        ctx.health
            .set_failing(Some(&format!("{}: {}", last.kind, last.reason)));
        let since = *first_failure.get_or_insert_with(Instant::now);
        if !retry.forever && since.elapsed() >= retry.timeout {
            tracing::error!(
                output = %name, records = pending.len(), error = %last.reason,
                "retry timeout reached; records go to dead letters"
            );
            let reason = format!(
                "retry timeout after {:?}; last error: {}: {}",
                retry.timeout, last.kind, last.reason
            );
            dead.extend(pending.drain(..).map(|rec| DeadItem {
                rec,
                failure: Failure::new(FailureKind::RetryTimeout, reason.clone()),
            }));
            break;
        }
        let wait = backoff.next_wait();
        tracing::warn!(output = %name, records = pending.len(), kind = last.kind.as_str(), error = %last.reason, retry_in = ?wait, "delivery failed");
        telemetry::OUTPUT_RETRIES.with_label_values(&[name]).inc();
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = hard_stop.cancelled() => return None,
        }
    }
    Some(dead)
}

/// Writes dead letters durably, retrying until it works (or the directory is full and
/// `when_full = "drop"`). Returns `false` when `hard_stop` cancelled it.
async fn write_dead_letters(ctx: &Ctx, dead: &[DeadItem], hard_stop: &CancellationToken) -> bool {
    let mut backoff = Backoff::new(ctx.retry.initial, ctx.retry.max_interval);
    loop {
        let dl = Arc::clone(&ctx.dead_letters);
        let items = dead.to_vec();
        let written = tokio::task::spawn_blocking(move || dl.write(&items))
            .await
            .unwrap_or_else(|e| {
                Err(DeadLetterError::Io {
                    op: "write",
                    path: ctx.dead_letters.dir().to_owned(),
                    source: std::io::Error::other(e.to_string()),
                })
            });
        match written {
            Ok(()) => return true,
            Err(e) => {
                ctx.health.set_failing(Some(&e.to_string()));
                telemetry::OUTPUT_ERRORS
                    .with_label_values(&[&ctx.name, FailureKind::DeadLetter.as_str()])
                    .inc();
                let wait = backoff.next_wait();
                tracing::error!(output = %ctx.name, records = dead.len(), error = %e, retry_in = ?wait, "cannot write dead letters; the chunk stays in the buffer");
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    () = hard_stop.cancelled() => return false,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outputs::null::NullOutput;
    use bytes::Bytes;
    use logferry_common::chunk::{chunk_file_name, format, BufferOptions, ChunkState};
    use logferry_common::forward::{encode_entry, EventTime};
    use std::path::{Path, PathBuf};

    /// Longest a test waits for the worker to reach a state.
    const PATIENCE: Duration = Duration::from_secs(20);

    /// A frame payload of `n` records.
    fn frame(n: u32) -> Bytes {
        let mut entries = Vec::new();
        for i in 0..n {
            encode_entry(
                EventTime::new(1_700_000_000, i),
                &[0x81, 0xa1, b'i', 0x01],
                &mut entries,
            );
        }
        Bytes::from(logferry_common::payload::encode("app", &entries, n))
    }

    fn start_worker(
        name: &str,
        buffer: &Buffer,
        sealed: SealedReceiver,
        tmp: &Path,
    ) -> tokio::task::JoinHandle<()> {
        let worker = Worker {
            name: name.to_owned(),
            output: Output::Null(NullOutput),
            buffer: buffer.clone(),
            sealed,
            retry: RetryConfig {
                initial: Duration::from_millis(1),
                max_interval: Duration::from_millis(5),
                ..RetryConfig::default()
            },
            concurrency: 1,
            dead_letters: Arc::new(DeadLetters::new(
                tmp.join("dead-letter"),
                name,
                crate::config::DeadLetterConfig::default(),
            )),
            health: Arc::new(OutputHealth::new(name, Duration::ZERO)),
            prepare: None,
        };
        tokio::spawn(worker.run(CancellationToken::new()))
    }

    /// Waits until `done` holds, failing the test after [`PATIENCE`].
    async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
        let waiting = async {
            while !done() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        if tokio::time::timeout(PATIENCE, waiting).await.is_err() {
            panic!("timed out waiting until {what}");
        }
    }

    fn file_names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }

    /// A buffer named `name` in `tmp/buffer` holding one sealed chunk of one 3-record frame,
    /// whose path is returned. Its limit leaves no room for a second such chunk, so the next
    /// append blocks until the first chunk's bytes are freed.
    async fn one_sealed_chunk(name: &str, tmp: &Path) -> (Buffer, SealedReceiver, PathBuf) {
        let dir = tmp.join("buffer");
        let header = (format::HEADER_FIXED_LEN + name.len() + format::HEADER_CRC_LEN) as u64;
        let frame_bytes = (format::FRAME_HEADER_LEN + frame(3).len()) as u64;
        let mut options = BufferOptions::new(&dir, name);
        options.flush_interval = Duration::from_secs(3600);
        options.total_limit_size = header + 2 * frame_bytes - 1;
        let (buffer, sealed, _) = Buffer::open(options).unwrap();
        buffer
            .append(frame(3), 3)
            .await
            .unwrap()
            .durable()
            .await
            .unwrap();
        buffer.seal_now().await.unwrap();
        assert_eq!(buffer.usage().bytes, header + frame_bytes);
        (
            buffer,
            sealed,
            dir.join(chunk_file_name(1, ChunkState::Sealed)),
        )
    }

    /// Damages a chunk after seal, starts the worker, and checks that the chunk is quarantined
    /// after `reads` failed reads, its bytes freed (the blocked append goes through), and the
    /// next chunk delivered.
    async fn quarantined_and_the_next_chunk_delivered(
        name: &str,
        damage: impl FnOnce(&Path),
        reads: u64,
    ) {
        let tmp = tempfile::tempdir().unwrap();
        let (buffer, sealed, damaged) = one_sealed_chunk(name, tmp.path()).await;
        damage(&damaged);
        let worker = start_worker(name, &buffer, sealed, tmp.path());

        // Blocked at the limit until the damaged chunk's bytes are freed.
        let ticket = tokio::time::timeout(PATIENCE, buffer.append(frame(3), 3))
            .await
            .expect("the damaged chunk's bytes are freed")
            .unwrap();
        ticket.durable().await.unwrap();
        buffer.seal_now().await.unwrap();
        let delivered = telemetry::OUTPUT_RECORDS.with_label_values(&[name]);
        wait_until("the next chunk is delivered and released", || {
            delivered.get() == 3 && buffer.usage().sealed_chunks == 0
        })
        .await;

        let quarantine = tmp.path().join("buffer/quarantine");
        assert_eq!(
            file_names(&quarantine),
            vec![chunk_file_name(1, ChunkState::Sealed)]
        );
        assert_eq!(file_names(&tmp.path().join("buffer")), vec!["quarantine"]);
        assert_eq!(buffer.usage().bytes, 0);
        let quarantined = telemetry::BUFFER_CORRUPTION.with_label_values(&[name, "quarantined"]);
        assert_eq!(quarantined.get(), 1);
        let read_errors = telemetry::OUTPUT_ERRORS.with_label_values(&[name, "chunk_read"]);
        assert_eq!(read_errors.get(), reads);

        buffer.close().await.unwrap();
        tokio::time::timeout(PATIENCE, worker)
            .await
            .expect("the worker stops once the buffer is closed")
            .unwrap();
    }

    #[tokio::test]
    async fn a_chunk_whose_header_is_damaged_after_seal_is_quarantined_at_once() {
        quarantined_and_the_next_chunk_delivered(
            "quarantine-bad-header",
            |path| {
                let mut bytes = std::fs::read(path).unwrap();
                bytes[0] ^= 0xff; // the magic
                std::fs::write(path, bytes).unwrap();
            },
            1,
        )
        .await;
    }

    #[tokio::test]
    async fn a_chunk_that_cannot_be_read_is_quarantined_after_repeated_failures() {
        quarantined_and_the_next_chunk_delivered(
            "quarantine-unreadable",
            |path| {
                // Reading a directory fails with EISDIR (an IO error, not `Gone`), as a bad
                // sector would with EIO.
                std::fs::remove_file(path).unwrap();
                std::fs::create_dir(path).unwrap();
            },
            u64::from(MAX_READ_FAILURES),
        )
        .await;
    }
}
