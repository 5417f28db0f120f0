//! One Forward connection: send requests, match acks, detect death.
//!
//! Generic over any `AsyncRead + AsyncWrite` stream: plain TCP or TLS, after the shared-key
//! handshake if any (both set up by [`secure`](super::secure)), share one protocol loop.
//!
//! ## Operation
//! ```text
//! loop:
//!   while fewer than `window` requests are in flight: take a job from the queue, write it
//!   wait for: bytes from the server   -> decode {"ack": id} -> the matching job is done
//!             new jobs in the queue    (only if the window has room)
//!             the oldest job's ack_timeout                        -> fail
//!             heartbeat_interval idle  -> write msgpack nil (detects a dead keepalive socket)
//!             stop
//! ```
//! Any failure (EOF, reset, write error or timeout, an ack timeout, an ack that matches no job
//! in flight) ends the connection, and every job in flight goes back to the front of the queue
//! to be re-sent, possibly on another connection, with the same chunk id; the aggregator's
//! dedupe window turns most re-sends of already-stored requests into a bare ack.

use std::collections::VecDeque;
use std::time::Duration;

use bytes::BytesMut;
use logferry_common::forward::ack::chunk_id_bytes;
use logferry_common::forward::decode_ack;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{Job, Shared};
use crate::metrics;

/// Why a connection ended.
#[derive(Debug, thiserror::Error)]
pub enum ConnectionError {
    /// The server closed the connection.
    #[error("connection closed by the server")]
    Eof,
    /// A read failed.
    #[error("read failed: {0}")]
    Read(std::io::Error),
    /// A write failed.
    #[error("write failed: {0}")]
    Write(std::io::Error),
    /// A write did not complete in time.
    #[error("write timed out")]
    WriteTimeout,
    /// No ack within `ack_timeout`.
    #[error("no ack within {0:?}")]
    AckTimeout(Duration),
    /// The server acked something that is not in flight.
    #[error("ack does not match any request in flight")]
    AckMismatch,
    /// The server sent something that is not an ack.
    #[error("invalid response: {0}")]
    Decode(String),
    /// Stopped by the client.
    #[error("stopped")]
    Stopped,
}

impl ConnectionError {
    /// Metric label.
    pub fn kind(&self) -> &'static str {
        match self {
            ConnectionError::Eof => "eof",
            ConnectionError::Read(_) => "read",
            ConnectionError::Write(_) | ConnectionError::WriteTimeout => "write",
            ConnectionError::AckTimeout(_) => "ack_timeout",
            ConnectionError::AckMismatch => "ack_mismatch",
            ConnectionError::Decode(_) => "decode",
            ConnectionError::Stopped => "stopped",
        }
    }
}

/// Serves one established connection until it fails or `stop` is cancelled. Jobs in flight at
/// the end are handed back to the queue. Returns how many jobs were completed and why it ended.
pub async fn serve<S>(
    stream: S,
    shared: &Shared,
    stop: &CancellationToken,
) -> (u64, ConnectionError)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (mut reader, mut writer) = tokio::io::split(stream);
    let opts = &shared.opts;
    let mut inflight: VecDeque<(Job, Instant)> = VecDeque::with_capacity(opts.window);
    let mut rbuf = BytesMut::with_capacity(4096);
    let mut completed = 0u64;
    let mut last_write = Instant::now();
    let end = 'conn: loop {
        // Register for queue wake-ups before looking at the queue (no lost wake-up).
        let notified = shared.work.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let mut wrote = false;
        while inflight.len() < opts.window {
            let Some(job) = shared.take_job() else { break };
            let write = tokio::time::timeout(opts.ack_timeout, writer.write_all(&job.request));
            match write.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    inflight.push_back((job, Instant::now()));
                    break 'conn ConnectionError::Write(e);
                }
                Err(_) => {
                    inflight.push_back((job, Instant::now()));
                    break 'conn ConnectionError::WriteTimeout;
                }
            }
            last_write = Instant::now();
            wrote = true;
            if opts.require_ack {
                inflight.push_back((job, last_write));
            } else {
                shared.complete(&job);
                completed += 1;
            }
        }
        // A TLS stream may hold written bytes until flushed (a no-op on plain TCP).
        if wrote {
            match tokio::time::timeout(opts.ack_timeout, writer.flush()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => break ConnectionError::Write(e),
                Err(_) => break ConnectionError::WriteTimeout,
            }
        }
        if inflight.is_empty() && stop.is_cancelled() {
            break ConnectionError::Stopped;
        }
        let ack_deadline = inflight.front().map(|(_, sent)| *sent + opts.ack_timeout);
        let heartbeat_at = last_write + opts.heartbeat_interval;
        let room = inflight.len() < opts.window;
        tokio::select! {
            read = reader.read_buf(&mut rbuf) => {
                match read {
                    Ok(0) => break ConnectionError::Eof,
                    Ok(_) => {}
                    Err(e) => break ConnectionError::Read(e),
                }
                loop {
                    match decode_ack(&mut rbuf) {
                        Ok(Some(raw)) => {
                            let Some(id) = chunk_id_bytes(&raw) else {
                                break 'conn ConnectionError::AckMismatch;
                            };
                            let pos = inflight
                                .iter()
                                .position(|(j, _)| chunk_id_bytes(&j.chunk_raw) == Some(id));
                            let Some(pos) = pos else {
                                break 'conn ConnectionError::AckMismatch;
                            };
                            if let Some((job, _)) = inflight.remove(pos) {
                                metrics::ACKS_RECEIVED.inc();
                                shared.complete(&job);
                                completed += 1;
                            }
                        }
                        Ok(None) => break,
                        Err(e) => break 'conn ConnectionError::Decode(e.to_string()),
                    }
                }
            }
            () = &mut notified, if room => {}
            () = sleep_until_opt(ack_deadline) => {
                break ConnectionError::AckTimeout(opts.ack_timeout);
            }
            () = tokio::time::sleep_until(heartbeat_at), if inflight.is_empty() => {
                // msgpack nil: ignored by Forward servers, but a dead peer makes it fail.
                let beat = async {
                    writer.write_all(&[0xc0]).await?;
                    writer.flush().await
                };
                match tokio::time::timeout(opts.ack_timeout, beat).await {
                    Ok(Ok(())) => last_write = Instant::now(),
                    Ok(Err(e)) => break ConnectionError::Write(e),
                    Err(_) => break ConnectionError::WriteTimeout,
                }
            }
            () = stop.cancelled(), if inflight.is_empty() => break ConnectionError::Stopped,
            () = shared.hard_stop.cancelled() => break ConnectionError::Stopped,
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), writer.shutdown()).await;
    shared.requeue(inflight.into_iter().map(|(j, _)| j).collect());
    (completed, end)
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
