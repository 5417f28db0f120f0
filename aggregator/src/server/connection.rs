//! One Forward connection: TLS and the shared-key handshake when configured, then decode
//! requests, append them to the routed buffers, ack when durable.
//!
//! ## Design constraints
//! - An ack leaves only after every buffer the request was appended to reported the bytes
//!   durable (the commit tickets resolved). A request that could not be stored everywhere is
//!   never acked; the connection is closed so the sender re-sends it soon.
//! - Reading and acking are pipelined: the reader keeps decoding and appending while earlier
//!   requests wait for their group commit, so consecutive requests of one connection share
//!   fsyncs too. The queue between the two halves is bounded ([`MAX_PENDING_ACKS`]), and an
//!   append into a full `block` buffer waits: either way the reader stops reading the socket,
//!   which is how back-pressure reaches the sender.
//! - A malformed request closes this connection only (counted in
//!   `logferry_forward_decode_errors_total`); nothing on the network path panics.
//! - Plain TCP and TLS share every line after the handshake: the code is generic over the
//!   stream ([`Stream`]); plain TCP keeps tokio's lock-free `into_split`.
//! - **Nothing is processed before authentication.** With `[server.auth]`, the connection
//!   starts in the handshake phase ([`ServerHandshake`]): any byte that is not a valid PING, or
//!   a PING that fails, ends it (counted in `logferry_forward_auth_failures_total`).
//! - **Slow and silent peers cost a bounded time.** TLS and Forward handshakes together must
//!   finish within `handshake_timeout`. Between requests a connection may be silent for
//!   `idle_timeout`; once a request has begun, its bytes may pause at most `read_timeout`, and
//!   after that grace they must average `min_read_rate` bytes per second (a slow-loris peer
//!   trickling bytes is dropped). An ack that cannot be written within `write_timeout` (a peer
//!   that stopped reading) ends the connection too.
//! - **Memory per idle connection is small**: the read buffer starts at [`FIRST_READ`] bytes
//!   and grows to [`READ_CHUNK`] only while reads fill it; the decoder never allocates for a
//!   declared length, only for bytes that arrived (and never past `max_request_bytes`).
//!
//! ## Operation
//! ```text
//! accept -> [TLS] -> [HELO, PING?, PONG] -> split
//! socket --read--> BytesMut --Decoder--> Request --route--> Buffer::append (per output)
//!                                                              |  CommitTicket(s)
//!                                         ack writer <--queue--+
//!                 socket <--{"ack": id}-- (after every ticket is durable)
//! ```

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use logferry_common::chunk::{AppendError, CommitTicket};
use logferry_common::forward::session::{AuthFailure, ServerHandshake};
use logferry_common::forward::{encode_ack, Decoder, EventBatch, Request};
use logferry_common::telemetry;
use logferry_common::tls::{self, tokio_rustls::server::TlsStream};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{count_closed, log_budget, ListenerSettings, Pipeline};
use crate::payload;

/// Requests of one connection that may wait for their commit at once.
pub const MAX_PENDING_ACKS: usize = 64;

/// Largest socket read.
pub const READ_CHUNK: usize = 64 * 1024;

/// First socket read of a connection; doubled up to [`READ_CHUNK`] while reads fill it.
pub const FIRST_READ: usize = 4 * 1024;

/// A connection's byte stream: plain TCP or TLS, split into independently owned halves.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    /// The read half.
    type Reader: AsyncRead + Unpin + Send + 'static;
    /// The write half.
    type Writer: AsyncWrite + Unpin + Send + 'static;
    /// Splits the stream.
    fn split(self) -> (Self::Reader, Self::Writer);
}

impl Stream for TcpStream {
    type Reader = tokio::net::tcp::OwnedReadHalf;
    type Writer = tokio::net::tcp::OwnedWriteHalf;

    fn split(self) -> (Self::Reader, Self::Writer) {
        self.into_split()
    }
}

impl Stream for TlsStream<TcpStream> {
    type Reader = tokio::io::ReadHalf<Self>;
    type Writer = tokio::io::WriteHalf<Self>;

    fn split(self) -> (Self::Reader, Self::Writer) {
        tokio::io::split(self)
    }
}

/// A stored request waiting for durability (and then its ack, if it asked for one).
#[derive(Debug)]
struct PendingAck {
    tickets: Vec<CommitTicket>,
    /// Raw msgpack of the `chunk` option, echoed verbatim; `None` for a request without one,
    /// which is queued all the same so a connection's requests in flight stay bounded.
    chunk: Option<Bytes>,
}

/// Why a connection ended (for the log line).
#[derive(Debug)]
enum End {
    Eof,
    Idle,
    ReadTimeout,
    SlowClient,
    Shutdown,
    Decode(logferry_common::forward::DecodeError),
    Read(std::io::Error),
    NotStored(AppendError),
    AckWriterGone,
}

/// Takes an accepted TCP connection through TLS and the handshake (as configured), then
/// serves it until EOF, an error, a timeout or shutdown.
pub async fn accept(
    stream: TcpStream,
    peer: SocketAddr,
    listener: Arc<str>,
    settings: Arc<ListenerSettings>,
    pipeline: Arc<Pipeline>,
    shutdown: CancellationToken,
) {
    let _ = stream.set_nodelay(true);
    // The ACL comes first: a refused source costs no TLS handshake.
    let handshake = match &settings.auth {
        None => None,
        Some(auth) => match ServerHandshake::start(Arc::clone(auth), peer.ip()) {
            Ok(handshake) => Some(handshake),
            Err(failure) => {
                auth_failed(&listener, peer, &failure);
                return;
            }
        },
    };
    let deadline = Instant::now() + settings.handshake_timeout;
    let Some(tls) = &settings.tls else {
        return serve(
            stream, peer, handshake, deadline, &listener, &settings, pipeline, shutdown,
        )
        .await;
    };
    let accepted = tokio::select! {
        accepted = tokio::time::timeout_at(deadline, tls.acceptor.accept(stream)) => accepted,
        () = shutdown.cancelled() => return,
    };
    match accepted {
        Ok(Ok(stream)) => {
            serve(
                stream, peer, handshake, deadline, &listener, &settings, pipeline, shutdown,
            )
            .await;
        }
        Ok(Err(e)) if tls::is_client_certificate_error(&e) => {
            count_closed("client_certificate");
            telemetry::FORWARD_AUTH_FAILURES.inc();
            if log_budget() {
                tracing::warn!(%listener, %peer, error = %e, "TLS: client certificate rejected; connection closed");
            }
        }
        Ok(Err(e)) => {
            count_closed("tls_handshake");
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                tracing::debug!(%listener, %peer, "connection closed during the TLS handshake");
            } else if log_budget() {
                tracing::info!(%listener, %peer, error = %e, "TLS handshake failed; connection closed");
            }
        }
        Err(_) => {
            count_closed("handshake_timeout");
            if log_budget() {
                tracing::info!(%listener, %peer, timeout = ?settings.handshake_timeout,
                    "TLS handshake not finished in time; connection closed");
            }
        }
    }
}

/// Counts and logs a failed Forward handshake (never with a secret in it: see [`AuthFailure`]).
fn auth_failed(listener: &str, peer: SocketAddr, failure: &AuthFailure) {
    telemetry::FORWARD_AUTH_FAILURES.inc();
    count_closed(failure.code());
    if log_budget() {
        tracing::warn!(%listener, %peer, reason = failure.code(), "Forward handshake failed: {failure}; connection closed");
    }
}

/// Why the Forward handshake did not complete.
#[derive(Debug)]
enum HandshakeEnd {
    /// Refused; the PONG (if any) was sent.
    Failed(AuthFailure),
    /// The peer closed; `partial` bytes of a PING had arrived.
    Eof {
        partial: usize,
    },
    Timeout,
    Io(std::io::Error),
    Shutdown,
}

/// Runs the server side of the Forward handshake on `stream`: HELO, PING into `buf`, PONG.
/// Bytes after the PING stay in `buf` for the transport phase.
async fn forward_handshake<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    mut handshake: ServerHandshake,
    buf: &mut BytesMut,
    deadline: Instant,
    shutdown: &CancellationToken,
) -> Result<(), HandshakeEnd> {
    let mut helo = Vec::with_capacity(64);
    handshake.helo(&mut helo);
    write_by(stream, &helo, deadline).await?;
    loop {
        match handshake.receive(buf) {
            Ok(Some(accepted)) => {
                write_by(stream, &accepted.pong, deadline).await?;
                tracing::debug!(client = %accepted.client_hostname, user = ?accepted.username, "Forward handshake succeeded");
                return Ok(());
            }
            Ok(None) => {}
            Err(failure) => {
                if let Some(pong) = failure.pong() {
                    // Best effort: the connection is closed either way.
                    let _ = write_by(stream, &pong, deadline).await;
                    let _ = tokio::time::timeout_at(deadline, stream.shutdown()).await;
                }
                return Err(HandshakeEnd::Failed(failure));
            }
        }
        buf.reserve(1024);
        let read = tokio::select! {
            read = tokio::time::timeout_at(deadline, stream.read_buf(buf)) => read,
            () = shutdown.cancelled() => return Err(HandshakeEnd::Shutdown),
        };
        match read {
            Ok(Ok(0)) => return Err(HandshakeEnd::Eof { partial: buf.len() }),
            Ok(Ok(n)) => telemetry::INPUT_BYTES.inc_by(n as u64),
            Ok(Err(e)) => return Err(HandshakeEnd::Io(e)),
            Err(_) => return Err(HandshakeEnd::Timeout),
        }
    }
}

async fn write_by<S: AsyncWrite + Unpin>(
    stream: &mut S,
    bytes: &[u8],
    deadline: Instant,
) -> Result<(), HandshakeEnd> {
    match tokio::time::timeout_at(deadline, async {
        stream.write_all(bytes).await?;
        stream.flush().await
    })
    .await
    {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(HandshakeEnd::Io(e)),
        Err(_) => Err(HandshakeEnd::Timeout),
    }
}

/// Serves one connection (after TLS) until EOF, an error, a timeout or shutdown.
#[allow(clippy::too_many_arguments)]
async fn serve<S: Stream>(
    mut stream: S,
    peer: SocketAddr,
    handshake: Option<ServerHandshake>,
    handshake_deadline: Instant,
    listener: &str,
    settings: &ListenerSettings,
    pipeline: Arc<Pipeline>,
    shutdown: CancellationToken,
) {
    let mut buf = BytesMut::new();
    if let Some(handshake) = handshake {
        match forward_handshake(
            &mut stream,
            handshake,
            &mut buf,
            handshake_deadline,
            &shutdown,
        )
        .await
        {
            Ok(()) => {}
            Err(HandshakeEnd::Failed(failure)) => return auth_failed(listener, peer, &failure),
            Err(HandshakeEnd::Eof { partial: 0 }) => {
                // Connected and left without a word: a TCP health check, not an attack.
                tracing::debug!(%listener, %peer, "connection closed before PING");
                return;
            }
            Err(HandshakeEnd::Eof { partial }) => {
                telemetry::FORWARD_AUTH_FAILURES.inc();
                count_closed("truncated_ping");
                if log_budget() {
                    tracing::warn!(%listener, %peer, bytes = partial, reason = "truncated_ping",
                        "Forward handshake failed: the connection ended inside PING");
                }
                return;
            }
            Err(HandshakeEnd::Timeout) => {
                telemetry::FORWARD_AUTH_FAILURES.inc();
                count_closed("handshake_timeout");
                if log_budget() {
                    tracing::warn!(%listener, %peer, timeout = ?settings.handshake_timeout, reason = "handshake_timeout",
                        "Forward handshake failed: no complete PING in time; connection closed");
                }
                return;
            }
            Err(HandshakeEnd::Io(e)) => {
                tracing::info!(%listener, %peer, error = %e, "connection failed during the Forward handshake");
                return;
            }
            Err(HandshakeEnd::Shutdown) => return,
        }
    }

    let (mut reader, writer) = stream.split();
    let (ack_tx, ack_rx) = mpsc::channel(MAX_PENDING_ACKS);
    // Cancelled by shutdown, or by the ack writer when it gives up (a peer not reading acks).
    let conn = shutdown.child_token();
    let ack_writer = tokio::spawn(write_acks(
        writer,
        ack_rx,
        Arc::clone(&pipeline),
        settings.write_timeout,
        conn.clone(),
    ));

    let mut decoder = Decoder::new(settings.limits);
    let mut read_size = FIRST_READ;
    // When the incomplete request at the front of `buf` began to arrive.
    let mut request_started: Option<Instant> = None;
    let end = 'conn: loop {
        // Handle every complete request already buffered before reading more.
        let mut decoded = false;
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(request)) => {
                    decoded = true;
                    if let Err(end) = handle(request, &pipeline, &ack_tx).await {
                        break 'conn end;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    telemetry::FORWARD_DECODE_ERRORS.inc();
                    telemetry::count_decode_error_code(e.code());
                    break 'conn End::Decode(e);
                }
            }
        }
        if conn.is_cancelled() {
            break if shutdown.is_cancelled() {
                End::Shutdown
            } else {
                End::AckWriterGone
            };
        }
        let now = Instant::now();
        if buf.is_empty() {
            request_started = None;
        } else if decoded || request_started.is_none() {
            request_started = Some(now);
        }
        let (deadline, timeout_end) = match request_started {
            None => (now + settings.idle_timeout, End::Idle),
            Some(start) => {
                let pause = now + settings.read_timeout;
                let rate = (settings.min_read_rate > 0).then(|| {
                    let secs = buf.len() as f64 / settings.min_read_rate as f64;
                    start + settings.read_timeout + Duration::from_secs_f64(secs.min(1e9))
                });
                match rate {
                    Some(rate) if rate < pause => (rate, End::SlowClient),
                    _ => (pause, End::ReadTimeout),
                }
            }
        };
        buf.reserve(read_size);
        // `read_buf` is cancel-safe: if shutdown wins the race, no bytes were consumed.
        let read = tokio::select! {
            read = tokio::time::timeout_at(deadline, reader.read_buf(&mut buf)) => read,
            () = conn.cancelled() => break if shutdown.is_cancelled() { End::Shutdown } else { End::AckWriterGone },
        };
        match read {
            Ok(Ok(0)) => break End::Eof,
            Ok(Ok(n)) => {
                telemetry::INPUT_BYTES.inc_by(n as u64);
                if n >= read_size && read_size < READ_CHUNK {
                    read_size *= 2;
                }
            }
            // A TLS peer that closes without close_notify (most do): an ordinary EOF.
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => break End::Eof,
            Ok(Err(e)) => break End::Read(e),
            Err(_) => break timeout_end,
        }
    };
    // Closing the queue lets the writer ack everything already stored, then finish.
    drop(ack_tx);
    let _ = ack_writer.await;
    match end {
        End::Eof | End::Shutdown => tracing::debug!(%listener, %peer, ?end, "connection closed"),
        End::Idle => {
            count_closed("idle_timeout");
            tracing::debug!(%listener, %peer, timeout = ?settings.idle_timeout, "closing idle connection");
        }
        End::ReadTimeout => {
            count_closed("read_timeout");
            if log_budget() {
                tracing::info!(%listener, %peer, timeout = ?settings.read_timeout, pending_bytes = buf.len(),
                    "closing connection: a request stalled mid-way");
            }
        }
        End::SlowClient => {
            count_closed("slow_client");
            if log_budget() {
                tracing::warn!(%listener, %peer, min_bytes_per_sec = settings.min_read_rate, pending_bytes = buf.len(),
                    "closing connection: a request arrives slower than min_read_rate");
            }
        }
        End::Decode(e) => {
            if log_budget() {
                tracing::warn!(%listener, %peer, error = %e, code = e.code(), "closing connection: malformed request");
            }
        }
        End::Read(e) => tracing::info!(%listener, %peer, error = %e, "connection read failed"),
        End::NotStored(e) => {
            tracing::warn!(%listener, %peer, error = %e, "closing connection: a request could not be stored and was not acked")
        }
        End::AckWriterGone => {
            tracing::info!(%listener, %peer, "connection closed while writing acks")
        }
    }
}

/// Handles one decoded request; an `Err` ends the connection.
async fn handle(
    request: Request,
    pipeline: &Pipeline,
    acks: &mpsc::Sender<PendingAck>,
) -> Result<(), End> {
    match request {
        Request::Heartbeat => Ok(()),
        Request::Handshake(_) => {
            // Handshake messages are valid only in the handshake phase, before any event (and
            // only on a listener with [server.auth]); one arriving here is a protocol error.
            telemetry::FORWARD_DECODE_ERRORS.inc();
            telemetry::count_decode_error_code("malformed");
            Err(End::Decode(
                logferry_common::forward::DecodeError::Malformed(
                    "handshake message outside the handshake phase",
                ),
            ))
        }
        Request::Events(batch) => store(batch, pipeline, acks).await,
    }
}

async fn store(
    batch: EventBatch,
    pipeline: &Pipeline,
    acks: &mpsc::Sender<PendingAck>,
) -> Result<(), End> {
    if batch.skipped > 0 {
        telemetry::DROPPED_RECORDS
            .with_label_values(&["invalid_event"])
            .inc_by(u64::from(batch.skipped));
    }
    if let Some(chunk) = &batch.chunk {
        if pipeline.acked.contains(chunk) {
            // A re-send of a chunk we already stored and acked: ack again, store nothing.
            return enqueue(
                acks,
                PendingAck {
                    tickets: Vec::new(),
                    chunk: Some(chunk.clone()),
                },
            )
            .await;
        }
    }
    telemetry::INPUT_RECORDS.inc_by(u64::from(batch.records));

    let router = pipeline.router();
    let mut tickets = Vec::new();
    match router.route(&batch.tag) {
        None => {
            telemetry::DROPPED_RECORDS
                .with_label_values(&["no_route"])
                .inc_by(u64::from(batch.records));
        }
        Some(_) if batch.records == 0 => {}
        Some(outputs) => {
            let payload = Bytes::from(payload::encode(&batch.tag, &batch.entries, batch.records));
            for &output in outputs {
                let ticket = pipeline.buffers[output]
                    .append(payload.clone(), batch.records)
                    .await
                    .map_err(End::NotStored)?;
                tickets.push(ticket);
            }
        }
    }
    // Without a chunk id the sender asked for at-most-once: no ack, but the request still
    // counts against MAX_PENDING_ACKS until it is durable.
    enqueue(
        acks,
        PendingAck {
            tickets,
            chunk: batch.chunk,
        },
    )
    .await
}

async fn enqueue(acks: &mpsc::Sender<PendingAck>, pending: PendingAck) -> Result<(), End> {
    // Waits when MAX_PENDING_ACKS requests are in flight: back-pressure on the reader.
    acks.send(pending).await.map_err(|_| End::AckWriterGone)
}

/// Writes acks in request order, each after its tickets resolved. Gives up (cancelling `conn`,
/// which ends the reader) when a write does not finish within `write_timeout`.
async fn write_acks<W: AsyncWrite + Unpin>(
    mut writer: W,
    mut queue: mpsc::Receiver<PendingAck>,
    pipeline: Arc<Pipeline>,
    write_timeout: Duration,
    conn: CancellationToken,
) {
    let mut out = Vec::with_capacity(128);
    while let Some(pending) = queue.recv().await {
        for ticket in pending.tickets {
            if let Err(e) = ticket.durable().await {
                // Not durable means no ack, ever. Closing the connection makes the sender
                // re-send; later requests on it are not acked either.
                tracing::error!(error = %e, "commit failed; closing connection without ack");
                conn.cancel();
                return;
            }
        }
        let Some(chunk) = pending.chunk else { continue };
        out.clear();
        encode_ack(&chunk, &mut out);
        // The flush is a no-op on TCP; on TLS it pushes the record out of rustls' buffer.
        let write = async {
            writer.write_all(&out).await?;
            writer.flush().await
        };
        match tokio::time::timeout(write_timeout, write).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => {
                conn.cancel();
                return;
            }
            Err(_) => {
                count_closed("write_timeout");
                if log_budget() {
                    tracing::warn!(timeout = ?write_timeout, "closing connection: the peer does not read its acks");
                }
                conn.cancel();
                return;
            }
        }
        telemetry::FORWARD_ACKS.inc();
        pipeline.acked.insert(&chunk);
    }
    let _ = tokio::time::timeout(write_timeout, writer.shutdown()).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dedupe::AckedChunks;
    use crate::route::Router;
    use std::sync::RwLock;

    fn pipeline(dir: &std::path::Path) -> Arc<Pipeline> {
        Arc::new(Pipeline {
            router: RwLock::new(Arc::new(Router::new(Vec::new()))),
            buffers: Vec::new(),
            acked: AckedChunks::open(dir, Duration::from_secs(60)),
        })
    }

    fn chunk(i: u32) -> Bytes {
        let mut raw = Vec::new();
        logferry_common::msgpack::write_str(&mut raw, &format!("chunk-{i:04}-{}", "x".repeat(40)));
        Bytes::from(raw)
    }

    #[tokio::test]
    async fn a_peer_that_stops_reading_acks_is_dropped_after_write_timeout() {
        let dir = tempfile::tempdir().unwrap();
        // The peer's end of a 256-byte pipe is never read: a few acks fill it.
        let (writer, _peer) = tokio::io::duplex(256);
        let (tx, rx) = mpsc::channel(MAX_PENDING_ACKS);
        let conn = CancellationToken::new();
        let before = telemetry::FORWARD_CLOSED_CONNECTIONS
            .with_label_values(&["write_timeout"])
            .get();
        let task = tokio::spawn(write_acks(
            writer,
            rx,
            pipeline(dir.path()),
            Duration::from_millis(100),
            conn.clone(),
        ));
        for i in 0..32 {
            let pending = PendingAck {
                tickets: Vec::new(),
                chunk: Some(chunk(i)),
            };
            if tx.send(pending).await.is_err() {
                break;
            }
        }
        tokio::time::timeout(Duration::from_secs(5), conn.cancelled())
            .await
            .expect("the connection is cancelled");
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("the writer ends")
            .unwrap();
        let after = telemetry::FORWARD_CLOSED_CONNECTIONS
            .with_label_values(&["write_timeout"])
            .get();
        assert_eq!(after, before + 1);
    }

    #[tokio::test]
    async fn a_reading_peer_gets_every_ack_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let (writer, mut peer) = tokio::io::duplex(256);
        let (tx, rx) = mpsc::channel(MAX_PENDING_ACKS);
        let conn = CancellationToken::new();
        let task = tokio::spawn(write_acks(
            writer,
            rx,
            pipeline(dir.path()),
            Duration::from_millis(100),
            conn.clone(),
        ));
        let reader = tokio::spawn(async move {
            let mut all = Vec::new();
            peer.read_to_end(&mut all).await.unwrap();
            all
        });
        let mut expected = Vec::new();
        for i in 0..32 {
            encode_ack(&chunk(i), &mut expected);
            tx.send(PendingAck {
                tickets: Vec::new(),
                chunk: Some(chunk(i)),
            })
            .await
            .unwrap();
        }
        drop(tx);
        task.await.unwrap();
        assert_eq!(reader.await.unwrap(), expected);
        assert!(!conn.is_cancelled());
    }
}
