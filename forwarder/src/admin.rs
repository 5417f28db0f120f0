//! The HTTP admin listener: `GET /metrics`, `GET /healthz`, `GET /readyz`, `POST /reload`.
//!
//! Hand-written on `httparse` rather than on an HTTP framework: the forwarder runs on every
//! node and idles most of the time, and four fixed routes answered with `Connection: close`
//! need no router, no keep-alive and no body parsing. Requests are bounded (8 KiB of head, 5 s
//! per connection), so a slow or hostile client cannot hold memory.
//!
//! `/healthz` is 200 while the process runs (liveness must not flap with load). `/readyz` is
//! 200 only while the forwarder is running and its buffer has room: 503 while starting,
//! draining for shutdown, or while the buffer is at `total_limit_size` (files are not being
//! read then).

use std::sync::Arc;
use std::time::Duration;

use logferry_common::chunk::Buffer;
use logferry_common::daemon::{Lifecycle, ReloadHandle};
use logferry_common::telemetry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// Largest request head accepted.
const MAX_HEAD: usize = 8 * 1024;
/// Time allowed per admin connection.
const CONN_TIMEOUT: Duration = Duration::from_secs(5);

/// What `/readyz` looks at.
#[derive(Debug)]
pub struct Status {
    /// The daemon's phase.
    pub lifecycle: Lifecycle,
    buffer: Buffer,
}

impl Status {
    /// A status in [`Phase::Starting`](logferry_common::daemon::Phase::Starting).
    pub fn new(buffer: Buffer) -> Status {
        Status {
            lifecycle: Lifecycle::new(),
            buffer,
        }
    }

    /// `Ok` when ready, otherwise why not.
    pub fn readiness(&self) -> Result<(), String> {
        self.lifecycle.readiness()?;
        if self.buffer.is_full() {
            return Err(format!(
                "buffer {} is at its total_limit_size (files are not being read)",
                self.buffer.name()
            ));
        }
        Ok(())
    }
}

/// Serves until `shutdown` is cancelled.
pub async fn serve(
    listener: TcpListener,
    status: Arc<Status>,
    reload: ReloadHandle,
    shutdown: CancellationToken,
) {
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            () = shutdown.cancelled() => return,
        };
        match accepted {
            Ok((stream, _)) => {
                let status = Arc::clone(&status);
                let reload = reload.clone();
                tokio::spawn(async move {
                    let _ =
                        tokio::time::timeout(CONN_TIMEOUT, handle(stream, &status, &reload)).await;
                });
            }
            Err(e) => {
                tracing::debug!(error = %e, "admin accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn handle(
    mut stream: TcpStream,
    status: &Status,
    reload: &ReloadHandle,
) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let (method, path) = loop {
        let mut chunk = [0u8; 1024];
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&buf) {
            Ok(httparse::Status::Complete(_)) => {
                break (
                    req.method.unwrap_or("").to_owned(),
                    req.path.unwrap_or("").to_owned(),
                );
            }
            Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => continue,
            _ => {
                return respond(&mut stream, 400, "text/plain", "bad request\n").await;
            }
        }
    };
    let path = path.split('?').next().unwrap_or("");
    match (method.as_str(), path) {
        ("GET", "/metrics") => {
            respond(
                &mut stream,
                200,
                "text/plain; version=0.0.4; charset=utf-8",
                &telemetry::render(),
            )
            .await
        }
        ("GET", "/healthz") => respond(&mut stream, 200, "text/plain", "ok\n").await,
        ("GET", "/readyz") => match status.readiness() {
            Ok(()) => respond(&mut stream, 200, "text/plain", "ready\n").await,
            Err(why) => {
                respond(
                    &mut stream,
                    503,
                    "text/plain",
                    &format!("not ready: {why}\n"),
                )
                .await
            }
        },
        ("POST", "/reload") => match reload.request().await {
            Some(Ok(msg)) => respond(&mut stream, 200, "text/plain", &format!("{msg}\n")).await,
            Some(Err(msg)) => respond(&mut stream, 400, "text/plain", &format!("{msg}\n")).await,
            None => respond(&mut stream, 503, "text/plain", "shutting down\n").await,
        },
        (_, "/metrics" | "/healthz" | "/readyz" | "/reload") => {
            respond(&mut stream, 405, "text/plain", "method not allowed\n").await
        }
        _ => respond(&mut stream, 404, "text/plain", "not found\n").await,
    }
}

async fn respond(
    stream: &mut TcpStream,
    code: u16,
    ctype: &str,
    body: &str,
) -> std::io::Result<()> {
    let reason = match code {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Service Unavailable",
    };
    let head = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}
