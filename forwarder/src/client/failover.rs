//! One aggregator address: connect, serve, and after a failure retry with backoff.
//!
//! A dead aggregator is noticed by its connection failing (EOF, reset, write error, ack
//! timeout, or the idle heartbeat failing); its jobs in flight go back to the shared queue at
//! once, so the live aggregators take them over while this slot waits. Reconnects are the
//! "TCP connect" heartbeat: exponential backoff with full jitter starting at
//! `heartbeat_interval`, so a restarted aggregator is used again within seconds, and a
//! hundred forwarders do not reconnect in lock-step. A connection whose TLS or Forward
//! handshake fails (module [`secure`](super::secure)) backs off the same way.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use logferry_common::backoff::Backoff;
use logferry_common::telemetry;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use super::{connection, Shared, OUTPUT_LABEL};
use crate::metrics;

/// Longest wait between reconnect attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A connection that lived this long resets the backoff.
const HEALTHY_AFTER: Duration = Duration::from_secs(10);

/// Runs until `stop` (this address went away) or the client's hard stop.
/// `host` is the name `addr` was resolved from (what TLS verifies).
pub async fn run_slot(
    shared: Arc<Shared>,
    addr: SocketAddr,
    host: String,
    stop: CancellationToken,
) {
    let initial = shared.opts.heartbeat_interval;
    let mut backoff = Backoff::new(initial, MAX_BACKOFF.max(initial));
    loop {
        if stop.is_cancelled() || shared.hard_stop.is_cancelled() {
            return;
        }
        let connect = tokio::time::timeout(shared.opts.connect_timeout, TcpStream::connect(addr));
        let Some(connected) = until_stopped(&shared, &stop, connect).await else {
            return;
        };
        match connected {
            Ok(Ok(stream)) => {
                let _ = stream.set_nodelay(true);
                let security = &shared.opts.security;
                // TLS and the handshake end early on a stop, like the connect.
                let served = if security.uses_tls() {
                    let Some(set_up) =
                        until_stopped(&shared, &stop, security.tls(stream, &host)).await
                    else {
                        return;
                    };
                    match set_up {
                        Ok(stream) => Ok(serve(stream, &shared, &stop).await),
                        Err(e) => Err(e),
                    }
                } else {
                    let Some(set_up) = until_stopped(&shared, &stop, security.plain(stream)).await
                    else {
                        return;
                    };
                    match set_up {
                        Ok(stream) => Ok(serve(stream, &shared, &stop).await),
                        Err(e) => Err(e),
                    }
                };
                match served {
                    Ok(Served::Stopped) => return,
                    Ok(Served::Failed { healthy: true }) => {
                        backoff = Backoff::new(initial, MAX_BACKOFF.max(initial));
                    }
                    Ok(Served::Failed { healthy: false }) => {}
                    Err(e) => {
                        telemetry::OUTPUT_ERRORS
                            .with_label_values(&[OUTPUT_LABEL, e.kind()])
                            .inc();
                        tracing::warn!(error = %e, "cannot set up the aggregator connection");
                    }
                }
            }
            Ok(Err(e)) => {
                telemetry::OUTPUT_ERRORS
                    .with_label_values(&[OUTPUT_LABEL, "connect"])
                    .inc();
                tracing::debug!(error = %e, "cannot connect to aggregator");
            }
            Err(_) => {
                telemetry::OUTPUT_ERRORS
                    .with_label_values(&[OUTPUT_LABEL, "connect_timeout"])
                    .inc();
                tracing::debug!("connect timed out");
            }
        }
        let wait = backoff.next_wait().max(Duration::from_millis(50));
        if until_stopped(&shared, &stop, tokio::time::sleep(wait))
            .await
            .is_none()
        {
            return;
        }
    }
}

/// `fut`'s output, or `None` once the slot or the client is stopped.
async fn until_stopped<T>(
    shared: &Shared,
    stop: &CancellationToken,
    fut: impl std::future::Future<Output = T>,
) -> Option<T> {
    tokio::select! {
        out = fut => Some(out),
        () = stop.cancelled() => None,
        () = shared.hard_stop.cancelled() => None,
    }
}

/// How an established connection ended.
enum Served {
    /// The slot or the client was stopped.
    Stopped,
    /// It failed; `healthy` if it had lived long enough or delivered something (the backoff
    /// starts over).
    Failed { healthy: bool },
}

/// Serves one set-up connection, counting it while it lives.
async fn serve<S>(stream: S, shared: &Shared, stop: &CancellationToken) -> Served
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    tracing::info!("connected to aggregator");
    metrics::SERVERS_UP.inc();
    telemetry::FORWARD_CONNECTIONS.inc();
    let started = std::time::Instant::now();
    let (completed, end) = connection::serve(stream, shared, stop).await;
    metrics::SERVERS_UP.dec();
    telemetry::FORWARD_CONNECTIONS.dec();
    if matches!(end, connection::ConnectionError::Stopped) {
        tracing::debug!(completed, "connection closed");
        return Served::Stopped;
    }
    telemetry::OUTPUT_ERRORS
        .with_label_values(&[OUTPUT_LABEL, end.kind()])
        .inc();
    tracing::warn!(error = %end, completed, "aggregator connection failed; its requests go to the other aggregators");
    Served::Failed {
        healthy: started.elapsed() >= HEALTHY_AFTER || completed > 0,
    }
}
