//! Outputs: one worker per output reads its buffer's sealed chunks, delivers them, and deletes a
//! chunk only once every record in it was delivered.
//!
//! ## Operation
//! The worker takes sealed chunks in order from the output's own buffer, reads and verifies the
//! chunk (bad frames are skipped and counted by the buffer), and hands the contents to the
//! output. A failed delivery is retried with exponential backoff and full jitter
//! (`retry.initial` doubling up to `retry.max_interval`); after `retry.timeout` (unless
//! `retry.forever`) the chunk file is moved, unchanged, to the buffer's `dead-letter/`
//! directory and counted, so one poisonous chunk cannot stall the output forever. Each output has
//! its own buffer and worker, so a slow or dead output holds back only its own buffer.
//!
//! On shutdown the worker keeps delivering until its buffer is closed and drained, or until the
//! shutdown deadline cancels it; whatever is not delivered by then stays on disk for the next
//! start.

pub mod file;
pub mod null;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use logferry_common::backoff::Backoff;
use logferry_common::chunk::{Buffer, ChunkContents, ChunkError, SealedChunk, SealedReceiver};
use logferry_common::telemetry;
use tokio_util::sync::CancellationToken;

use crate::config::{OutputConfig, RetryConfig};

/// What one delivery accomplished.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Delivered {
    /// Records delivered.
    pub records: u64,
    /// Bytes written to the sink (in the sink's format).
    pub bytes: u64,
}

/// A failed delivery.
#[derive(Debug, thiserror::Error)]
#[error("{kind}: {message}")]
pub struct OutputError {
    /// A short, bounded label for `logferry_output_errors_total{kind}`.
    pub kind: &'static str,
    /// What happened.
    pub message: String,
}

impl OutputError {
    /// An IO failure of a local sink.
    pub fn io(context: &str, e: std::io::Error) -> OutputError {
        OutputError {
            kind: "io",
            message: format!("{context}: {e}"),
        }
    }
}

/// A configured output.
#[derive(Debug, Clone)]
pub enum Output {
    /// JSON lines in local files. Behind a mutex because deliveries run on the blocking pool;
    /// only the worker ever takes it, so it is never contended.
    File(Arc<Mutex<file::FileOutput>>),
    /// Discards records.
    Null(null::NullOutput),
}

impl Output {
    /// Builds the output from its config. Sinks are not contacted here: an unreachable sink
    /// must not stop the aggregator from buffering.
    pub fn build(config: &OutputConfig) -> Result<Output, OutputError> {
        Ok(match config {
            OutputConfig::File(c) => {
                Output::File(Arc::new(Mutex::new(file::FileOutput::new(&c.path))))
            }
            OutputConfig::Null(_) => Output::Null(null::NullOutput),
        })
    }

    /// Delivers every record of a chunk.
    async fn deliver(&self, contents: Arc<ChunkContents>) -> Result<Delivered, OutputError> {
        match self {
            Output::File(out) => {
                let out = Arc::clone(out);
                // File IO and JSON encoding block; they run on the blocking pool so the Forward
                // connections on the async workers are never stalled by a slow disk.
                tokio::task::spawn_blocking(move || {
                    let mut out = out.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                    out.deliver(&contents)
                })
                .await
                .unwrap_or_else(|e| {
                    // A panic is a bug; it must cost a retry, not the worker or the process.
                    Err(OutputError {
                        kind: "panic",
                        message: e.to_string(),
                    })
                })
            }
            Output::Null(out) => Ok(out.deliver(&contents)),
        }
    }
}

/// Shared state of an output worker, read by `/readyz` and the metrics.
#[derive(Debug, Default)]
pub struct OutputHealth {
    /// Unix millis since when deliveries have been failing, 0 when healthy.
    failing_since_ms: AtomicU64,
}

impl OutputHealth {
    /// How long the output has been failing, if it is.
    pub fn failing_for(&self) -> Option<Duration> {
        let since = self.failing_since_ms.load(Ordering::Relaxed);
        (since != 0).then(|| Duration::from_millis(unix_millis().saturating_sub(since)))
    }

    fn set_failing(&self, failing: bool) {
        if failing {
            let _ = self.failing_since_ms.compare_exchange(
                0,
                unix_millis(),
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        } else {
            self.failing_since_ms.store(0, Ordering::Relaxed);
        }
    }
}

fn unix_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(1)
}

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
    /// Where chunks go after `retry.timeout`.
    pub dead_letter_dir: PathBuf,
    /// Health, shared with the admin endpoint.
    pub health: Arc<OutputHealth>,
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
            dead_letter_dir,
            health,
        } = self;
        loop {
            let chunk = tokio::select! {
                chunk = sealed.recv() => chunk,
                () = hard_stop.cancelled() => break,
            };
            let Some(chunk) = chunk else { break };
            let delivered = deliver_chunk(
                &name,
                &output,
                &chunk,
                &retry,
                &dead_letter_dir,
                &health,
                &hard_stop,
            )
            .await;
            if !delivered {
                // Cancelled mid-delivery: the chunk stays on disk for the next start.
                return;
            }
            if let Err(e) = buffer.release(&chunk) {
                tracing::error!(output = %name, seq = chunk.seq, error = %e, "cannot delete a delivered chunk");
            }
        }
        tracing::info!(output = %name, "output worker stopped");
    }
}

/// Delivers one chunk with retries (or moves it to dead letters). Returns `false` when the
/// shutdown deadline cancelled the delivery and the chunk must stay in the buffer.
async fn deliver_chunk(
    name: &str,
    output: &Output,
    chunk: &SealedChunk,
    retry: &RetryConfig,
    dead_letter_dir: &std::path::Path,
    health: &OutputHealth,
    hard_stop: &CancellationToken,
) -> bool {
    let first_attempt = Instant::now();
    let mut backoff = Backoff::new(retry.initial, retry.max_interval);
    loop {
        let started = Instant::now();
        // Reading loads and verifies the whole chunk file: blocking IO, off the async workers.
        let to_read = chunk.clone();
        let read = tokio::task::spawn_blocking(move || to_read.read())
            .await
            .unwrap_or_else(|e| {
                Err(ChunkError::Io {
                    op: "read chunk",
                    path: chunk.path.clone(),
                    source: std::io::Error::other(e.to_string()),
                })
            });
        let result = match read {
            Ok(contents) => output.deliver(Arc::new(contents)).await,
            Err(ChunkError::Gone { .. }) => {
                // drop_oldest_chunk removed it while queued; nothing left to deliver.
                return true;
            }
            Err(e) => Err(OutputError {
                kind: "chunk_read",
                message: e.to_string(),
            }),
        };
        match result {
            Ok(delivered) => {
                telemetry::OUTPUT_RECORDS
                    .with_label_values(&[name])
                    .inc_by(delivered.records);
                telemetry::OUTPUT_BYTES
                    .with_label_values(&[name])
                    .inc_by(delivered.bytes);
                telemetry::OUTPUT_FLUSH_DURATION
                    .with_label_values(&[name])
                    .observe(started.elapsed().as_secs_f64());
                health.set_failing(false);
                return true;
            }
            Err(e) => {
                health.set_failing(true);
                telemetry::OUTPUT_ERRORS
                    .with_label_values(&[name, e.kind])
                    .inc();
                if !retry.forever
                    && first_attempt.elapsed() >= retry.timeout
                    && dead_letter(name, chunk, dead_letter_dir, &e)
                {
                    return true;
                }
                let wait = backoff.next_wait();
                tracing::warn!(output = %name, seq = chunk.seq, error = %e, retry_in = ?wait, "delivery failed");
                telemetry::OUTPUT_RETRIES.with_label_values(&[name]).inc();
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    () = hard_stop.cancelled() => return false,
                }
            }
        }
    }
}

/// Moves an undeliverable chunk file, unchanged, to the dead-letter directory. Returns whether
/// it moved; if not, the chunk must stay in the buffer (the caller keeps retrying it).
fn dead_letter(
    name: &str,
    chunk: &SealedChunk,
    dir: &std::path::Path,
    error: &OutputError,
) -> bool {
    let moved = std::fs::create_dir_all(dir).and_then(|()| {
        let file_name = chunk.path.file_name().unwrap_or_default();
        std::fs::rename(&chunk.path, dir.join(file_name))
    });
    match moved {
        Ok(()) => {
            telemetry::DEAD_LETTER_RECORDS
                .with_label_values(&[name, "retry_timeout"])
                .inc_by(chunk.records);
            tracing::error!(
                output = %name, seq = chunk.seq, records = chunk.records, error = %error,
                dir = %dir.display(), "retry timeout reached; chunk moved to dead letters"
            );
            true
        }
        Err(e) => {
            tracing::error!(output = %name, seq = chunk.seq, error = %e, "cannot move chunk to dead letters; it stays in the buffer");
            false
        }
    }
}
