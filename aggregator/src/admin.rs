//! The HTTP admin listener: `/metrics`, `/healthz`, `/readyz`, `POST /reload`,
//! `POST /dead-letter/replay`.
//!
//! `/healthz` answers 200 while the process runs (liveness must not flap with load).
//! `/readyz` answers 200 only while the aggregator accepts and stores records: 503 while it
//! starts, while it drains for shutdown, while any output's buffer is over its limit, and while
//! an output has been failing longer than its `unready_after`, so a Kubernetes Service stops
//! sending new connections to a full, stuck or leaving pod.
//!
//! `POST /dead-letter/replay?output=NAME[&pipeline=TENANT/PIPELINE][&timeout=60s][&kind=KIND]`
//! replays that output's dead letters inside this process, through the output's own worker
//! objects ([`crate::outputs::dead_letter::Replayer`]), and answers the
//! [`crate::outputs::dead_letter::ReplayReport`] as JSON (200, also when files are left: the
//! report says so). Without `pipeline`, `output` is one of `[outputs]`; with it, an output of
//! that tenant pipeline while it runs (active, stale, or still draining). Errors are
//! `{"error": "..."}`: 400 for a bad parameter, 404 for an unknown output or pipeline, 409
//! while another replay of that output runs, 503 while shutting down, 500 for a dead-letter
//! directory that cannot be read or written. This is what
//! `logferry-aggregator dead-letter replay` calls when an aggregator holds the buffer.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{RawQuery, State};
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use logferry_common::chunk::Buffer;
use logferry_common::daemon::{Lifecycle, ReloadHandle};
use logferry_common::telemetry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::outputs::dead_letter::{ReplayError, Replayer};
use crate::outputs::OutputHealth;
use crate::tenants::{Key, Pipelines};

/// The dead-letter replayers of the running outputs, by output name.
pub type Replayers = BTreeMap<String, Arc<Replayer>>;

/// Default `timeout` of `POST /dead-letter/replay` (the CLI's default too).
pub const DEFAULT_REPLAY_TIMEOUT: Duration = Duration::from_secs(60);

/// What `/readyz` looks at.
#[derive(Debug)]
pub struct Status {
    /// The daemon's phase.
    pub lifecycle: Lifecycle,
    buffers: Vec<Buffer>,
    outputs: Vec<Arc<OutputHealth>>,
    pipelines: Option<Arc<Pipelines>>,
}

impl Status {
    /// A status in [`Phase::Starting`](logferry_common::daemon::Phase::Starting).
    pub fn new(buffers: Vec<Buffer>) -> Status {
        Status {
            lifecycle: Lifecycle::new(),
            buffers,
            outputs: Vec::new(),
            pipelines: None,
        }
    }

    /// Serves `/pipelines` from these tenant pipelines (their outputs never make the
    /// aggregator unready: one team's dead destination is that team's status).
    pub fn with_pipelines(mut self, pipelines: Option<Arc<Pipelines>>) -> Status {
        self.pipelines = pipelines;
        self
    }

    /// Also unready while an output has been failing longer than its `unready_after`.
    pub fn with_outputs(mut self, outputs: Vec<Arc<OutputHealth>>) -> Status {
        self.outputs = outputs;
        self
    }

    /// `Ok` when ready, otherwise why not.
    pub fn readiness(&self) -> Result<(), String> {
        self.lifecycle.readiness()?;
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

#[derive(Debug, Clone)]
struct AdminState {
    status: Arc<Status>,
    reload: ReloadHandle,
    replayers: Arc<Replayers>,
}

/// Serves the admin endpoints on `listener` until `shutdown` is cancelled.
pub async fn serve(
    listener: TcpListener,
    status: Arc<Status>,
    reload: ReloadHandle,
    replayers: Arc<Replayers>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let app = axum::Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/reload", post(reload_config))
        .route("/dead-letter/replay", post(replay_dead_letters))
        .route("/pipelines", get(pipelines))
        .route("/pipelines/{tenant}/{name}", get(pipeline))
        .route("/pipelines/{tenant}/{name}/tap", get(tap))
        .with_state(AdminState {
            status,
            reload,
            replayers,
        });
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
}

/// `GET /pipelines`: every tenant pipeline's status (JSON array); 404 without `[pipelines]`.
async fn pipelines(State(state): State<AdminState>) -> axum::response::Response {
    match &state.status.pipelines {
        Some(p) => json(&p.statuses().await),
        None => (
            StatusCode::NOT_FOUND,
            "tenant pipelines are off ([pipelines] dir)\n",
        )
            .into_response(),
    }
}

/// `GET /pipelines/<tenant>/<name>`: one pipeline's status (JSON).
async fn pipeline(
    State(state): State<AdminState>,
    axum::extract::Path((tenant, name)): axum::extract::Path<(String, String)>,
) -> axum::response::Response {
    let found = match &state.status.pipelines {
        Some(p) => p.status(&tenant, &name).await,
        None => None,
    };
    match found {
        Some(status) => json(&status),
        None => (
            StatusCode::NOT_FOUND,
            format!("no pipeline {tenant}/{name}\n"),
        )
            .into_response(),
    }
}

/// Most records one tap request returns.
const TAP_MAX_LIMIT: usize = 1000;
/// Longest a tap request waits for records.
const TAP_MAX_WAIT: Duration = Duration::from_secs(60);

/// `GET /pipelines/<tenant>/<name>/tap?limit=N&wait=10s`: up to `limit` (default 10, at most
/// 1000) of the pipeline's records as they leave its parse and filters, as JSON lines; it
/// answers once it has them, or after `wait` (default 10s, at most 60s) with what came.
async fn tap(
    State(state): State<AdminState>,
    axum::extract::Path((tenant, name)): axum::extract::Path<(String, String)>,
    RawQuery(query): RawQuery,
) -> axum::response::Response {
    let mut limit = 10usize;
    let mut wait = Duration::from_secs(10);
    for (key, value) in query
        .as_deref()
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| kv.split_once('='))
    {
        let parsed = match key {
            "limit" => value
                .parse()
                .map(|n: usize| limit = n.clamp(1, TAP_MAX_LIMIT))
                .is_ok(),
            "wait" => humantime::parse_duration(value)
                .map(|d| wait = d.min(TAP_MAX_WAIT))
                .is_ok(),
            _ => false,
        };
        if !parsed {
            return (
                StatusCode::BAD_REQUEST,
                format!("bad query parameter {key}={value} (limit=N, wait=10s)\n"),
            )
                .into_response();
        }
    }
    let receiver = match &state.status.pipelines {
        Some(p) => p.tap(&tenant, &name).await,
        None => None,
    };
    let Some(mut receiver) = receiver else {
        return (
            StatusCode::NOT_FOUND,
            format!("no pipeline {tenant}/{name}\n"),
        )
            .into_response();
    };
    let mut body = String::new();
    let mut taken = 0;
    let _ = tokio::time::timeout(wait, async {
        while taken < limit {
            match receiver.recv().await {
                Ok(line) => {
                    body.push_str(&line);
                    body.push('\n');
                    taken += 1;
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
            }
        }
    })
    .await;
    ([(header::CONTENT_TYPE, "application/x-ndjson")], body).into_response()
}

fn json(value: &impl serde::Serialize) -> axum::response::Response {
    match serde_json::to_string_pretty(value) {
        Ok(body) => ([(header::CONTENT_TYPE, "application/json")], body + "\n").into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    }
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
    match state.reload.request().await {
        Some(Ok(message)) => (StatusCode::OK, format!("{message}\n")),
        Some(Err(message)) => (StatusCode::BAD_REQUEST, format!("{message}\n")),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting down\n".to_owned(),
        ),
    }
}

/// `{"error": why}` with `code`.
fn json_error(code: StatusCode, why: impl std::fmt::Display) -> axum::response::Response {
    let body = serde_json::json!({ "error": why.to_string() }).to_string();
    (code, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// The parameters of `POST /dead-letter/replay`.
#[derive(Debug, PartialEq, Eq)]
struct ReplayParams {
    output: String,
    pipeline: Option<Key>,
    timeout: Duration,
    kind: Option<String>,
}

impl ReplayParams {
    fn parse(query: Option<&str>) -> Result<ReplayParams, String> {
        let mut output = None;
        let mut pipeline = None;
        let mut timeout = DEFAULT_REPLAY_TIMEOUT;
        let mut kind = None;
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let value = percent_decode(value)?;
            match key {
                "output" => output = Some(value),
                "pipeline" => pipeline = Some(value.parse()?),
                "timeout" => {
                    timeout = humantime::parse_duration(&value)
                        .map_err(|e| format!("timeout {value:?}: {e}"))?
                }
                "kind" => kind = Some(value),
                other => return Err(format!("unknown parameter {other:?}")),
            }
        }
        let output = output
            .filter(|o| !o.is_empty())
            .ok_or("missing parameter output=NAME")?;
        Ok(ReplayParams {
            output,
            pipeline,
            timeout,
            kind,
        })
    }
}

/// Decodes `%XX` escapes and `+` (a space) of a query value.
fn percent_decode(value: &str) -> Result<String, String> {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| format!("bad escape in {value:?}"))?;
                out.push(hex);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| format!("{value:?} is not UTF-8"))
}

async fn replay_dead_letters(
    State(state): State<AdminState>,
    RawQuery(query): RawQuery,
) -> axum::response::Response {
    let params = match ReplayParams::parse(query.as_deref()) {
        Ok(p) => p,
        Err(why) => return json_error(StatusCode::BAD_REQUEST, why),
    };
    let replayer = match (&params.pipeline, &state.status.pipelines) {
        (None, _) => state.replayers.get(&params.output).cloned(),
        (Some(key), Some(pipelines)) => {
            pipelines
                .replayer(&key.tenant, &key.name, &params.output)
                .await
        }
        (Some(_), None) => None,
    };
    let Some(replayer) = replayer else {
        let what = match &params.pipeline {
            Some(key) => format!(" running in pipeline {key}"),
            None => String::new(),
        };
        return json_error(
            StatusCode::NOT_FOUND,
            format!(
                "no output named {:?}{what} in the running aggregator",
                params.output
            ),
        );
    };
    tracing::info!(output = %params.output, pipeline = ?params.pipeline.as_ref().map(Key::to_string), timeout = ?params.timeout, kind = ?params.kind, "dead-letter replay requested");
    match replayer
        .replay(params.timeout, params.kind.as_deref())
        .await
    {
        Ok(report) => {
            tracing::info!(output = %params.output, ?report, "dead-letter replay finished");
            (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "application/json")],
                serde_json::to_string(&report).unwrap_or_default(),
            )
                .into_response()
        }
        Err(e @ ReplayError::Busy(_)) => json_error(StatusCode::CONFLICT, e),
        Err(e @ ReplayError::ShuttingDown) => json_error(StatusCode::SERVICE_UNAVAILABLE, e),
        Err(e) => {
            tracing::error!(output = %params.output, error = %e, "dead-letter replay failed");
            json_error(StatusCode::INTERNAL_SERVER_ERROR, e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replay_parameters() {
        assert_eq!(
            ReplayParams::parse(Some("output=es&timeout=5s&kind=too%5Flarge")),
            Ok(ReplayParams {
                output: "es".into(),
                pipeline: None,
                timeout: Duration::from_secs(5),
                kind: Some("too_large".into()),
            })
        );
        assert_eq!(
            ReplayParams::parse(Some("output=a+b")).map(|p| (p.output, p.timeout)),
            Ok(("a b".into(), DEFAULT_REPLAY_TIMEOUT))
        );
        assert!(ReplayParams::parse(None).is_err());
        assert!(ReplayParams::parse(Some("output=")).is_err());
        assert!(ReplayParams::parse(Some("output=es&timeout=soon")).is_err());
        assert!(ReplayParams::parse(Some("output=es&force=1")).is_err());
        assert!(ReplayParams::parse(Some("output=%zz")).is_err());
        assert_eq!(
            ReplayParams::parse(Some("output=out&pipeline=shop%2Fweb")).map(|p| p.pipeline),
            Ok(Some(Key {
                tenant: "shop".into(),
                name: "web".into(),
            }))
        );
        assert!(ReplayParams::parse(Some("output=out&pipeline=shop")).is_err());
        assert!(ReplayParams::parse(Some("output=out&pipeline=Shop/web")).is_err());
        assert!(ReplayParams::parse(Some("output=out&pipeline=shop/web/x")).is_err());
    }
}
