//! Starting one output: its buffer (recovered from disk), its sink, its health, its dead
//! letters and its worker task. The admin's outputs start here at startup and tenant
//! pipelines' outputs whenever a pipeline is applied; both run the same worker.

use std::path::PathBuf;
use std::sync::Arc;

use logferry_common::chunk::{Buffer, BufferOptions, ChunkError};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::dead_letter::{self, DeadLetters, Replayer};
use super::worker::Prepare;
use super::{Output, OutputError, OutputHealth, Worker};
use crate::config::OutputConfig;

/// Why an output could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartOutputError {
    /// Its buffer could not be opened or recovered.
    #[error("buffer of output {name}: {source}")]
    Buffer {
        /// The output.
        name: String,
        /// What failed.
        source: ChunkError,
    },
    /// Its sink could not be built.
    #[error("output {name}: {source}")]
    Output {
        /// The output.
        name: String,
        /// What failed.
        source: OutputError,
    },
}

/// What an output needs to start.
#[derive(Debug)]
pub struct OutputSpec<'a> {
    /// Its name: the metric label and the name of its buffer.
    pub name: &'a str,
    /// Its config.
    pub config: &'a OutputConfig,
    /// Its buffer's options (directory included).
    pub buffer: BufferOptions,
    /// Work on the records before they are sent (a tenant pipeline's parse and filters).
    pub prepare: Option<Arc<dyn Prepare>>,
    /// Cancelled at the shutdown deadline (or a pipeline's drain deadline): undelivered
    /// chunks stay on disk.
    pub hard_stop: CancellationToken,
    /// Cancelled when shutdown begins: a dead-letter replay running then stops.
    pub replay_stop: CancellationToken,
}

/// A running output.
#[derive(Debug)]
pub struct Started {
    /// Its buffer, to append to (and to close, which lets the worker drain and stop).
    pub buffer: Buffer,
    /// Its health.
    pub health: Arc<OutputHealth>,
    /// Its dead-letter replays.
    pub replayer: Arc<Replayer>,
    /// Its worker; ends once the buffer is closed and drained, or at `hard_stop`.
    pub task: JoinHandle<()>,
}

/// Opens the buffer (queueing the chunks the last run left), builds the sink and starts the
/// worker under a span named after the output.
///
/// # Errors
/// The buffer cannot be opened, or the sink cannot be built.
pub async fn start(spec: OutputSpec<'_>) -> Result<Started, StartOutputError> {
    let OutputSpec {
        name,
        config,
        buffer,
        prepare,
        hard_stop,
        replay_stop,
    } = spec;
    let dir: PathBuf = buffer.dir.clone();
    let (buffer, sealed, recovered) =
        Buffer::open(buffer).map_err(|source| StartOutputError::Buffer {
            name: name.to_owned(),
            source,
        })?;
    tracing::info!(
        output = %name, chunks = recovered.sealed_chunks, records = recovered.records,
        bytes = recovered.bytes, truncated_bytes = recovered.truncated_bytes,
        bad_frames = recovered.bad_frames, quarantined = recovered.quarantined.len(),
        "buffer recovered"
    );
    let output = match Output::build(name, config).await {
        Ok(output) => output,
        Err(source) => {
            // Nothing was appended; the recovered chunks stay on disk.
            let _ = buffer.close().await;
            return Err(StartOutputError::Output {
                name: name.to_owned(),
                source,
            });
        }
    };
    let health = Arc::new(OutputHealth::new(name, config.unready_after()));
    let dead_letters = Arc::new(DeadLetters::new(
        dead_letter::dir_of(&dir),
        name,
        config.dead_letter().clone(),
    ));
    // Admin replays go through this worker's output and dead letters, never a second
    // instance writing the same files.
    let replayer = Arc::new(Replayer::new(
        name,
        output.clone(),
        config.retry().clone(),
        Arc::clone(&dead_letters),
        Arc::clone(&health),
        replay_stop,
    ));
    let worker = Worker {
        name: name.to_owned(),
        output,
        buffer: buffer.clone(),
        sealed,
        retry: config.retry().clone(),
        concurrency: config.concurrency(),
        dead_letters,
        health: Arc::clone(&health),
        prepare,
    };
    let span = tracing::info_span!("output", output = %name);
    let task = tokio::spawn(worker.run(hard_stop).instrument(span));
    Ok(Started {
        buffer,
        health,
        replayer,
        task,
    })
}
