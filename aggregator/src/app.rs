//! Wiring and lifecycle: start every part in order, serve, reload, shut down with flush.
//!
//! ## Start
//! Buffers are recovered first (chunks left by the last run are queued for their outputs),
//! then the outputs and their workers start, then the Forward listener binds, and only then
//! does `/readyz` turn 200.
//!
//! ## Shutdown (SIGTERM, SIGINT)
//! ```text
//! readyz 503 -> a running dead-letter replay stops (its file stays), new ones are refused
//!            -> stop accepting; sources stop taking data, drain, commit what is durable
//!               (Kafka offsets); connections stop reading, ack what they stored, close
//!            -> buffers seal their open chunks (fsync) and close
//!            -> outputs deliver what is left until shutdown_timeout (from the signal)
//!            -> whatever is undelivered stays on disk for the next start
//! ```
//!
//! ## Reload (SIGHUP, `POST /reload`)
//! The file is parsed and validated first; an invalid config is rejected and the running one
//! stays. Routes are swapped live, and so are each listener's TLS certificate and key (re-read
//! from disk even when the config did not change: that is how a rotated certificate is picked
//! up), authentication and timeouts; new connections get them, established ones keep theirs.
//! A certificate that does not load rejects the whole reload. Changes to listen addresses,
//! connection and size limits, buffers or outputs need a restart and are rejected with a
//! message saying so, rather than half-applied. Certificate files are also watched
//! (`tls.watch_interval`), so a rotation needs no signal at all.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use logferry_common::chunk::{BufferOptions, FsyncPolicy};
use logferry_common::daemon::{self, Phase, Signals};
use logferry_common::telemetry;
use tokio_util::sync::CancellationToken;

use crate::admin::{self, Status};
use crate::config::{parse_addr, Config};
use crate::dedupe::AckedChunks;
use crate::ingest::{MemoryBudget, Pipeline};
use crate::outputs::{self, OutputSpec, StartOutputError};
use crate::route::{Pattern, Router};
use crate::server::ListenerSet;
use crate::sources::Sources;
use crate::tenants::{self, Pipelines};

/// Why the aggregator could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// An output could not start (its buffer or its sink).
    #[error(transparent)]
    Output(#[from] StartOutputError),
    /// A listener could not bind.
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        /// `forward` or `admin`.
        what: &'static str,
        /// The address.
        addr: String,
        /// What failed.
        source: std::io::Error,
    },
    /// Another process holds the buffer directory.
    #[error("buffer directory {path} is in use by another process (lock file {lock}): {source}")]
    Locked {
        /// The buffer root.
        path: PathBuf,
        /// The lock file.
        lock: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// A Forward listener could not be set up (TLS files, bind).
    #[error(transparent)]
    Listener(#[from] crate::server::ListenerError),
    /// A source could not start.
    #[error(transparent)]
    Source(#[from] crate::sources::SourceError),
    /// Signal handlers could not be installed.
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
}

/// The directory of one output's buffer.
pub fn output_buffer_dir(config: &Config, output: &str) -> PathBuf {
    config.buffer.path.join("outputs").join(output)
}

/// The directory under which the tenant pipelines' outputs keep their buffers
/// (`<tenant>/<pipeline>/<output>/`, see [`crate::tenants::Key::output_dir`]).
pub fn pipelines_buffer_root(config: &Config) -> PathBuf {
    config.buffer.path.join("pipelines")
}

/// Runs the aggregator until SIGTERM/SIGINT, then shuts down gracefully. `config` has passed
/// [`Config::validate`] (the command line checks it, and exits 78 if it does not).
pub async fn run(config: Config, config_path: Option<PathBuf>) -> Result<(), StartError> {
    for warning in config.warnings() {
        tracing::warn!("{warning}");
    }
    telemetry::register_all();

    // Two processes appending to one buffer directory would corrupt it (two pods on one PV,
    // or a restart racing its predecessor). The lock is released when the process exits,
    // however it exits.
    let _lock = lock_buffer_root(&config.buffer.path)?;
    let names: Vec<String> = config.outputs.keys().cloned().collect();
    let mut buffers = Vec::with_capacity(names.len());
    let mut worker_tasks = Vec::with_capacity(names.len());
    let mut healths = Vec::with_capacity(names.len());
    // Cancelled when shutdown begins: a dead-letter replay running then stops (its file stays).
    let replay_stop = CancellationToken::new();
    // Cancelled at the shutdown deadline: workers stop, undelivered chunks stay on disk.
    let hard_stop = CancellationToken::new();
    let mut replayers = admin::Replayers::new();
    for name in &names {
        let started = outputs::start(OutputSpec {
            name,
            config: &config.outputs[name],
            buffer: buffer_options(&config, name, &output_buffer_dir(&config, name)),
            prepare: None,
            hard_stop: hard_stop.clone(),
            replay_stop: replay_stop.clone(),
        })
        .await?;
        healths.push(started.health);
        replayers.insert(name.clone(), started.replayer);
        worker_tasks.push(started.task);
        buffers.push(started.buffer);
    }

    let index = config.buffer.path.join("index");
    let window = config.server.dedupe_window();
    let acked = if config.buffer.fsync == FsyncPolicy::Always {
        AckedChunks::open(&index, window)
    } else {
        // Acks do not wait for fsync: a persisted key could outlive its data (dedupe module docs).
        AckedChunks::in_memory(window)
    };
    // Tenant pipelines: every valid file runs before the listeners bind.
    let tenants = match &config.pipelines.dir {
        Some(_) => {
            let tenants = Arc::new(Pipelines::new(tenants::Shared {
                config: config.pipelines.clone(),
                buffer_root: pipelines_buffer_root(&config),
                buffer_template: buffer_options(&config, "", &config.buffer.path),
                hard_stop: hard_stop.clone(),
                replay_stop: replay_stop.clone(),
            }));
            tenants.rescan().await;
            Some(tenants)
        }
        None => None,
    };
    let mut pipeline = Pipeline::new(
        build_router(&config, &names),
        buffers.clone(),
        acked,
        MemoryBudget::new(config.ingest.memory_limit.bytes()),
        config.buffer.block_timeout,
    );
    if let Some(tenants) = &tenants {
        pipeline = pipeline.with_tenants(tenants.registry());
    }
    let pipeline = Arc::new(pipeline);
    let rescan = Arc::new(tokio::sync::Notify::new());
    let rescan_stop = CancellationToken::new();
    if let Some(tenants) = &tenants {
        tokio::spawn(rescan_loop(
            Arc::clone(tenants),
            config.pipelines.clone(),
            Arc::clone(&rescan),
            rescan_stop.clone(),
        ));
    }

    let status = Arc::new(
        Status::new(buffers.clone())
            .with_outputs(healths)
            .with_pipelines(tenants.clone()),
    );
    let (reload_handle, reload_requests) = daemon::reload_channel();
    let admin_stop = CancellationToken::new();
    let admin_addr = parse_addr(&config.admin.listen)
        .map_err(|_| bind_err("admin", &config.admin.listen, None))?;
    let admin_listener = tokio::net::TcpListener::bind(admin_addr)
        .await
        .map_err(|e| bind_err("admin", &config.admin.listen, Some(e)))?;
    tracing::info!(listener = "admin", addr = %local(&admin_listener), "listening");
    let admin_task = tokio::spawn(admin::serve(
        admin_listener,
        Arc::clone(&status),
        reload_handle,
        Arc::new(replayers),
        admin_stop.clone(),
    ));

    // Every Forward listener ([server] or [[server]]); TLS files are loaded before anything
    // binds, so a bad certificate fails the start with its file name.
    let (listeners, servers) = ListenerSet::bind(&config.server, &pipeline).await?;
    for (server, name) in servers.iter().zip(listeners.labels()) {
        if let Ok(addr) = server.local_addr() {
            let settings = server.handle().settings();
            tracing::info!(listener = "forward", %name, %addr, tls = settings.tls.is_some(),
                auth = settings.auth.is_some(), "listening");
        }
    }
    let stop_accepting = CancellationToken::new();
    tokio::spawn(listeners.clone().watch_certificates(stop_accepting.clone()));
    let server_task = {
        let stop = stop_accepting.clone();
        tokio::spawn(async move {
            let tasks: Vec<_> = servers
                .into_iter()
                .map(|server| tokio::spawn(server.run(stop.clone())))
                .collect();
            for task in tasks {
                let _ = task.await;
            }
        })
    };

    // Sources (Kafka consumers) store through the same pipeline as the listeners.
    let sources = Sources::start(&config, &pipeline)?;

    let signals = Signals::install().map_err(StartError::Signals)?;
    status.lifecycle.set(Phase::Ready);
    let running = config;
    signals
        .serve_until_shutdown(reload_requests, || {
            // Tenant pipeline files are read again too, whatever the main file's fate.
            rescan.notify_one();
            reload(
                &running,
                config_path.as_deref(),
                &names,
                &pipeline,
                &listeners,
            )
        })
        .await;

    let deadline = tokio::time::Instant::now() + running.shutdown_timeout;
    tracing::info!(timeout = ?running.shutdown_timeout, "shutting down: draining connections and outputs");
    status.lifecycle.set(Phase::Draining);
    replay_stop.cancel();
    stop_accepting.cancel();
    // Sources stop consuming and drain first, while the memory budget still grants what the
    // batches they have in flight need (at most their drain_timeout).
    if tokio::time::timeout_at(deadline, sources.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("sources did not finish before the shutdown deadline");
    }
    // Inputs waiting for memory to decode a request stop waiting: nothing new is taken.
    pipeline.memory.close();
    if tokio::time::timeout_at(deadline, server_task)
        .await
        .is_err()
    {
        tracing::warn!("connections did not finish before the shutdown deadline");
    }
    rescan_stop.cancel();
    let tenants_drained = async {
        if let Some(tenants) = &tenants {
            tenants.shutdown(deadline).await;
        }
    };
    for buffer in &buffers {
        if let Err(e) = buffer.close().await {
            tracing::error!(buffer = buffer.name(), error = %e, "cannot seal the open chunk");
        }
    }
    let drained = tokio::time::timeout_at(deadline, async {
        tokio::join!(tenants_drained, async {
            for task in worker_tasks {
                let _ = task.await;
            }
        })
    })
    .await;
    if drained.is_err() {
        hard_stop.cancel();
        let left: u64 = buffers.iter().map(|b| b.usage().bytes).sum();
        tracing::warn!(
            bytes_left = left,
            "shutdown deadline reached; undelivered chunks stay on disk for the next start"
        );
    }
    pipeline.acked.flush();
    admin_stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(1), admin_task).await;
    tracing::info!("stopped");
    Ok(())
}

fn lock_buffer_root(root: &Path) -> Result<std::fs::File, StartError> {
    logferry_common::chunk::lock_root(root).map_err(|source| StartError::Locked {
        path: root.to_owned(),
        lock: root.join("LOCK"),
        source,
    })
}

fn buffer_options(config: &Config, name: &str, dir: &Path) -> BufferOptions {
    let b = &config.buffer;
    let mut options = BufferOptions::new(dir, name);
    options.chunk_limit_size = b.chunk_limit_size.bytes();
    options.chunk_limit_records = b.chunk_limit_records.unwrap_or(u64::MAX);
    options.flush_interval = b.flush_interval;
    options.total_limit_size = b.total_limit_size.bytes();
    options.overflow_action = b.overflow_action;
    options.fsync = b.fsync;
    options.commit_interval = b.commit_interval;
    options.max_frame_bytes = config.server.max_decompressed_bytes().bytes() + 64 * 1024;
    options
}

/// Reads the tenant pipeline files every `rescan_interval`, at once when `now` is notified (a
/// reload request), and shortly after inotify saw a change (`tenants::watch`), until `stop`.
async fn rescan_loop(
    tenants: Arc<Pipelines>,
    config: crate::config::PipelinesConfig,
    now: Arc<tokio::sync::Notify>,
    stop: CancellationToken,
) {
    let changed = Arc::new(tokio::sync::Notify::new());
    let _watcher = config
        .dir
        .as_deref()
        .and_then(|dir| tenants::watch::watch(dir, config.policy.as_deref(), Arc::clone(&changed)));
    loop {
        tokio::select! {
            () = tokio::time::sleep(config.rescan_interval) => {}
            () = now.notified() => {}
            () = changed.notified() => {
                // A file just written is read once it has settled; the events of a burst
                // meanwhile leave one wake-up, which the next rescan finds nothing new in.
                tokio::time::sleep(tenants::registry::SETTLE + Duration::from_millis(20)).await;
            }
            () = stop.cancelled() => return,
        }
        tenants.rescan().await;
    }
}

fn build_router(config: &Config, names: &[String]) -> Router {
    let routes = config
        .routes
        .iter()
        .filter_map(|route| {
            // validate() has checked every pattern and output name.
            let pattern = Pattern::parse(&route.pattern).ok()?;
            let outputs = route
                .outputs
                .iter()
                .filter_map(|o| names.iter().position(|n| n == o))
                .collect();
            Some((pattern, outputs))
        })
        .collect();
    Router::new(routes)
}

/// Applies a reloaded config: routes only; anything else needs a restart.
fn reload(
    running: &Config,
    path: Option<&Path>,
    names: &[String],
    pipeline: &Pipeline,
    listeners: &ListenerSet,
) -> Result<String, String> {
    let Some(path) = path else {
        return Err("running the embedded default config; there is no file to reload".into());
    };
    let new = Config::load(path).map_err(|e| e.to_string())?;
    new.validate().map_err(|e| e.to_string())?;
    let mut changed = Vec::new();
    if !new.server.same_bindings(&running.server) {
        changed.push("[server] (listen, max_connections, request size limits, dedupe_window or the number of listeners)");
    }
    if new.admin != running.admin {
        changed.push("[admin]");
    }
    if new.buffer != running.buffer {
        changed.push("[buffer]");
    }
    if new.ingest != running.ingest {
        changed.push("[ingest]");
    }
    if new.outputs != running.outputs {
        changed.push("[outputs]");
    }
    if new.shutdown_timeout != running.shutdown_timeout {
        changed.push("shutdown_timeout");
    }
    if new.pipelines != running.pipelines {
        changed.push("[pipelines]");
    }
    if new.sources != running.sources {
        changed.push("[sources]");
    }
    if !changed.is_empty() {
        return Err(format!(
            "{} changed; these take effect only on restart (nothing was applied)",
            changed.join(", ")
        ));
    }
    // TLS files are re-read and auth and timeouts applied (all listeners or none) before the
    // routes change, so a bad certificate rejects the whole reload.
    let notes = listeners.reload(&new.server).map_err(|e| e.to_string())?;
    pipeline.set_router(build_router(&new, names));
    let mut message = format!(
        "config reloaded from {}: {} routes",
        path.display(),
        new.routes.len()
    );
    for note in notes {
        message.push_str("; ");
        message.push_str(&note);
    }
    Ok(message)
}

fn bind_err(what: &'static str, addr: &str, source: Option<std::io::Error>) -> StartError {
    StartError::Bind {
        what,
        addr: addr.to_owned(),
        source: source.unwrap_or_else(|| std::io::Error::other("invalid address")),
    }
}

fn local(listener: &tokio::net::TcpListener) -> String {
    listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default()
}
