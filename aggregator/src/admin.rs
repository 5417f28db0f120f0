//! The HTTP admin listener: `/metrics`, `/healthz`, `/readyz`, `POST /reload`.
//!
//! `/healthz` answers 200 while the process runs (liveness must not flap with load).
//! `/readyz` answers 200 only while the aggregator accepts and stores records: 503 while it
//! starts, while it drains for shutdown, while any output's buffer is over its limit, and while
//! an output has been failing longer than its `unready_after`, so a Kubernetes Service stops
//! sending new connections to a full, stuck or leaving pod.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use logferry_common::chunk::Buffer;
use logferry_common::telemetry;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::outputs::OutputHealth;

/// Lifecycle phase, for `/readyz`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Phase {
    /// Recovering buffers, binding listeners.
    Starting = 0,
    /// Accepting and storing.
    Ready = 1,
    /// Shutting down.
    Draining = 2,
}

/// What `/readyz` looks at.
#[derive(Debug)]
pub struct Status {
    phase: AtomicU8,
    buffers: Vec<Buffer>,
    outputs: Vec<Arc<OutputHealth>>,
}

impl Status {
    /// A status in [`Phase::Starting`].
    pub fn new(buffers: Vec<Buffer>) -> Status {
        Status {
            phase: AtomicU8::new(Phase::Starting as u8),
            buffers,
            outputs: Vec::new(),
        }
    }

    /// Also unready while an output has been failing longer than its `unready_after`.
    pub fn with_outputs(mut self, outputs: Vec<Arc<OutputHealth>>) -> Status {
        self.outputs = outputs;
        self
    }

    /// Moves to another phase.
    pub fn set(&self, phase: Phase) {
        self.phase.store(phase as u8, Ordering::SeqCst);
    }

    /// `Ok` when ready, otherwise why not.
    pub fn readiness(&self) -> Result<(), String> {
        match self.phase.load(Ordering::SeqCst) {
            0 => return Err("starting".into()),
            2 => return Err("draining for shutdown".into()),
            _ => {}
        }
        for buffer in &self.buffers {
            if buffer.is_full() {
                return Err(format!(
                    "buffer {} is over its total_limit_size",
                    buffer.name()
                ));
            }
        }
        for output in &self.outputs {
            output.readiness()?;
        }
        Ok(())
    }
}

/// A reload request: the reply says what happened.
pub type ReloadRequest = oneshot::Sender<Result<String, String>>;

#[derive(Debug, Clone)]
struct AdminState {
    status: Arc<Status>,
    reload: mpsc::Sender<ReloadRequest>,
}

/// Serves the admin endpoints on `listener` until `shutdown` is cancelled.
pub async fn serve(
    listener: TcpListener,
    status: Arc<Status>,
    reload: mpsc::Sender<ReloadRequest>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let app = axum::Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/reload", post(reload_config))
        .with_state(AdminState { status, reload });
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
}

async fn metrics(State(state): State<AdminState>) -> impl IntoResponse {
    // Output health gauges change with time (failing for N seconds), not only with delivery
    // attempts: bring them up to date so a scrape agrees with `/readyz`.
    for output in &state.status.outputs {
        output.publish();
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        telemetry::render(),
    )
}

async fn readyz(State(state): State<AdminState>) -> impl IntoResponse {
    match state.status.readiness() {
        Ok(()) => (StatusCode::OK, "ready\n".to_owned()),
        Err(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        ),
    }
}

async fn reload_config(State(state): State<AdminState>) -> impl IntoResponse {
    let (tx, rx) = oneshot::channel();
    if state.reload.send(tx).await.is_err() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting down\n".to_owned(),
        );
    }
    match rx.await {
        Ok(Ok(message)) => (StatusCode::OK, format!("{message}\n")),
        Ok(Err(message)) => (StatusCode::BAD_REQUEST, format!("{message}\n")),
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting down\n".to_owned(),
        ),
    }
}
