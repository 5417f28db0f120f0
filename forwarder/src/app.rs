//! Wiring and lifecycle: start every part in order, run, reload, shut down with flush.
//!
//! ## Threads
//! One current-thread Tokio runtime (client connections, committer, admin, Kubernetes watch,
//! signals), the tailer's own thread (file reads are blocking and it must be able to block on
//! a full buffer), and the chunk buffer's writer thread (group-commit fsync). That is all the
//! node pays for when idle.
//!
//! ## Start
//! The buffer directory is locked (two forwarders on one hostPath would corrupt it), the chunk
//! buffer recovered (chunks left by the last run are queued for sending first), offsets loaded,
//! then the client, the committer and the tailer start, the admin listener binds, and
//! `/readyz` turns 200.
//!
//! ## Shutdown (SIGTERM, SIGINT)
//! ```text
//! readyz 503 -> tailer stops reading; appends what it batched (partial lines are left for the
//!               next start: their offsets were never committed)
//!            -> buffer seals the open chunk (fsync) and closes
//!            -> client sends what is buffered until shutdown_timeout (from the signal)
//!            -> committer writes the offsets of everything durable; exit 0
//!            -> whatever was not acked stays on disk and is sent at the next start
//! ```
//!
//! ## Reload (SIGHUP, `POST /reload`)
//! The file is parsed and validated first; an invalid config is rejected and the running one
//! stays. `output.servers` is applied live (connections to removed addresses close and their
//! requests go to the others); other changes need a restart and are rejected with a message
//! saying so rather than half-applied.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use logferry_common::chunk::{Buffer, BufferOptions, ChunkError, OverflowAction};
use logferry_common::daemon::{self, Phase, Signals};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::admin::{self, Status};
use crate::batch::RecordOptions;
use crate::client::{Client, ClientOptions, Shared};
use crate::config::{parse_addr, Config, ConfigErrors};
use crate::discover::Discovery;
use crate::kubernetes::PodCache;
use crate::metrics;
use crate::tail::checkpoint::Store;
use crate::tail::{committer, TailOptions, Tailer};

/// The buffer name (metric label, chunk header key).
pub const BUFFER_NAME: &str = "forwarder";

/// Why the forwarder could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigErrors),
    /// The buffer could not be opened or recovered.
    #[error("buffer: {0}")]
    Buffer(ChunkError),
    /// Another process holds the buffer directory.
    #[error("buffer directory {path} is in use by another process: {reason}")]
    Locked {
        /// The buffer directory.
        path: PathBuf,
        /// What failed.
        reason: std::io::Error,
    },
    /// A listener could not bind.
    #[error("cannot listen on {addr} (admin): {reason}")]
    Bind {
        /// The address.
        addr: String,
        /// What failed.
        reason: std::io::Error,
    },
    /// The working directory is unknown (relative paths cannot be resolved).
    #[error("cannot resolve relative paths: {0}")]
    Cwd(std::io::Error),
    /// A thread could not be started.
    #[error("cannot start the tailer thread: {0}")]
    Thread(std::io::Error),
    /// Signal handlers could not be installed.
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
    /// The Kubernetes client could not be set up.
    #[error("kubernetes: {0}")]
    Kubernetes(String),
    /// The output's TLS files do not load.
    #[error("output.tls: {0}")]
    Tls(logferry_common::tls::TlsError),
}

/// Where chunk files live.
pub fn chunks_dir(config: &Config) -> PathBuf {
    config.buffer.path.join("chunks")
}

/// Where the offsets database lives.
pub fn offsets_dir(config: &Config) -> PathBuf {
    config.buffer.path.join("offsets")
}

/// Buffer options from the config.
pub fn buffer_options(config: &Config) -> BufferOptions {
    let b = &config.buffer;
    let mut o = BufferOptions::new(chunks_dir(config), BUFFER_NAME);
    o.chunk_limit_size = b.chunk_limit_size.bytes();
    o.flush_interval = b.flush_interval;
    o.total_limit_size = b.total_limit_size.bytes();
    o.overflow_action = OverflowAction::Block;
    o.fsync = b.fsync;
    o.max_frame_bytes =
        config.input.batch_size.bytes() + config.input.max_message_size.bytes() + 64 * 1024;
    o
}

/// Runs the forwarder until SIGTERM/SIGINT, then shuts down gracefully. `config` has passed
/// [`Config::validate`] (the command line checks it, and exits 78 if it does not).
pub async fn run(config: Config, config_path: Option<PathBuf>) -> Result<(), StartError> {
    for warning in config.warnings() {
        tracing::warn!("{warning}");
    }
    metrics::register_all();
    let _lock = lock_dir(&config.buffer.path)?;

    let (buffer, sealed, recovered) =
        Buffer::open(buffer_options(&config)).map_err(StartError::Buffer)?;
    tracing::info!(
        chunks = recovered.sealed_chunks,
        records = recovered.records,
        bytes = recovered.bytes,
        truncated_bytes = recovered.truncated_bytes,
        bad_frames = recovered.bad_frames,
        quarantined = recovered.quarantined.len(),
        "buffer recovered"
    );
    let store = Arc::new(Mutex::new(Store::open(&offsets_dir(&config))));

    let cache = if config.kubernetes.enabled {
        Some(start_kubernetes(&config).await?)
    } else {
        None
    };

    let client = Client::start(
        ClientOptions::from_config(&config.output).map_err(StartError::Tls)?,
        buffer.clone(),
        sealed,
    );
    let shared = Arc::clone(client.shared());

    let (commit_tx, commit_rx) = mpsc::channel(1024);
    let committer = tokio::spawn(committer::run(commit_rx, Arc::clone(&store)));

    let cwd = std::env::current_dir().map_err(StartError::Cwd)?;
    let discovery =
        Discovery::new(&config.input.paths, &config.input.exclude, &cwd).map_err(|e| {
            StartError::Config(ConfigErrors(vec![crate::config::ConfigError {
                key: "input.paths".into(),
                line: None,
                message: e.to_string(),
            }]))
        })?;
    let record = RecordOptions {
        merge_log: config.kubernetes.merge_log,
        keep_log: config.kubernetes.keep_log,
    };
    let cancel_append = CancellationToken::new();
    let (tailer, tailer_handle) = Tailer::new(
        TailOptions::from_config(&config.input, record),
        discovery,
        buffer.clone(),
        tokio::runtime::Handle::current(),
        commit_tx,
        Arc::clone(&store),
        cache,
        cancel_append.clone(),
    );
    let tailer_thread = tailer.spawn().map_err(StartError::Thread)?;

    let status = Arc::new(Status::new(buffer.clone()));
    let (reload_handle, reload_requests) = daemon::reload_channel();
    let admin_stop = CancellationToken::new();
    let admin_addr = parse_addr(&config.admin.listen).map_err(|e| StartError::Bind {
        addr: config.admin.listen.clone(),
        reason: std::io::Error::other(e),
    })?;
    let listener = tokio::net::TcpListener::bind(admin_addr)
        .await
        .map_err(|reason| StartError::Bind {
            addr: config.admin.listen.clone(),
            reason,
        })?;
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(listener = "admin", %addr, "listening");
    }
    let admin_task = tokio::spawn(admin::serve(
        listener,
        Arc::clone(&status),
        reload_handle,
        admin_stop.clone(),
    ));

    let signals = Signals::install().map_err(StartError::Signals)?;
    status.lifecycle.set(Phase::Ready);
    tracing::info!(paths = ?config.input.paths, servers = ?config.output.servers, "forwarder running");
    let mut running = config;
    signals
        .serve_until_shutdown(reload_requests, || {
            reload(&mut running, config_path.as_deref(), &shared)
        })
        .await;

    let deadline = tokio::time::Instant::now() + running.shutdown_timeout;
    tracing::info!(timeout = ?running.shutdown_timeout, "shutting down: sending what is buffered");
    status.lifecycle.set(Phase::Draining);
    tailer_handle.stop();
    // The tailer finishes its current file and appends what it batched; if the buffer is full
    // that append waits for room, which only the client can make, so give it a bounded time.
    let join = tokio::task::spawn_blocking(move || tailer_thread.join());
    tokio::pin!(join);
    let grace = deadline.min(tokio::time::Instant::now() + running.shutdown_timeout / 4);
    if tokio::time::timeout_at(grace, &mut join).await.is_err() {
        tracing::warn!("tailer still appending at the grace limit; abandoning its last batch (it is read again at the next start)");
        cancel_append.cancel();
        let _ = join.await;
    }
    if let Err(e) = buffer.close().await {
        tracing::error!(error = %e, "cannot seal the open chunk");
    }
    let delivered = client.drain(deadline).await;
    // Every ticket resolved with the close: the committer drains and writes the offsets.
    let _ = tokio::time::timeout(Duration::from_secs(5), committer).await;
    let usage = buffer.usage();
    if delivered {
        tracing::info!("everything buffered was delivered");
    } else {
        tracing::warn!(
            bytes_left = usage.bytes, chunks_left = usage.sealed_chunks,
            "shutdown_timeout reached; undelivered chunks stay on disk and are sent at the next start"
        );
    }
    admin_stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(1), admin_task).await;
    tracing::info!("stopped");
    Ok(())
}

#[cfg(feature = "kubernetes")]
async fn start_kubernetes(config: &Config) -> Result<Arc<PodCache>, StartError> {
    let cache = PodCache::new();
    let node = config
        .kubernetes
        .node_name
        .clone()
        .or_else(|| std::env::var("NODE_NAME").ok())
        .filter(|n| !n.is_empty())
        .ok_or_else(|| {
            StartError::Kubernetes(
                "kubernetes.node_name is not set and neither is NODE_NAME (set it from the downward API: spec.nodeName)".into(),
            )
        })?;
    let client = crate::kubernetes::watch::client(&config.kubernetes.api)
        .await
        .map_err(|e| StartError::Kubernetes(e.to_string()))?;
    tokio::spawn(crate::kubernetes::watch::run(
        client,
        node,
        Arc::clone(&cache),
    ));
    Ok(cache)
}

#[cfg(not(feature = "kubernetes"))]
async fn start_kubernetes(_config: &Config) -> Result<Arc<PodCache>, StartError> {
    Err(StartError::Kubernetes(
        "this build has no Kubernetes API client".into(),
    ))
}

fn lock_dir(root: &Path) -> Result<std::fs::File, StartError> {
    logferry_common::chunk::lock_root(root).map_err(|reason| StartError::Locked {
        path: root.to_owned(),
        reason,
    })
}

/// Applies a reloaded config: `output.servers` live; anything else needs a restart.
fn reload(running: &mut Config, path: Option<&Path>, shared: &Shared) -> Result<String, String> {
    let Some(path) = path else {
        return Err("running the embedded default config; there is no file to reload".into());
    };
    let new = Config::load(path).map_err(|e| e.to_string())?;
    new.validate().map_err(|e| e.to_string())?;
    let mut changed = Vec::new();
    if new.input != running.input {
        changed.push("[input]");
    }
    if new.kubernetes != running.kubernetes {
        changed.push("[kubernetes]");
    }
    if new.buffer != running.buffer {
        changed.push("[buffer]");
    }
    if new.admin != running.admin {
        changed.push("[admin]");
    }
    let mut output_rest = new.output.clone();
    output_rest.servers = running.output.servers.clone();
    if output_rest != running.output {
        changed.push("[output] (other than servers)");
    }
    if new.shutdown_timeout != running.shutdown_timeout {
        changed.push("shutdown_timeout");
    }
    if !changed.is_empty() {
        return Err(format!(
            "{} changed; these take effect only on restart (nothing was applied)",
            changed.join(", ")
        ));
    }
    if new.output.servers == running.output.servers {
        return Ok(format!(
            "config reloaded from {}: nothing changed",
            path.display()
        ));
    }
    shared.set_servers(new.output.servers.clone());
    running.output.servers = new.output.servers.clone();
    Ok(format!(
        "config reloaded from {}: servers {:?}",
        path.display(),
        new.output.servers
    ))
}
