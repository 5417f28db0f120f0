//! One Forward connection: TLS and the shared-key handshake when configured, then decode
//! requests, store each through [`crate::ingest`], ack when durable.
//!
//! ## Design constraints
//! - An ack leaves only after every buffer the request was appended to reported the bytes
//!   durable (the commit tickets resolved). A request that could not be stored everywhere is
//!   never acked; the connection is closed so the sender re-sends it soon.
//! - Each request is stored and committed on its own task, and acked when *it* is durable
//!   (acks are keyed by chunk id, so they need not follow request order). A request waiting
//!   for room in a full `block` buffer therefore holds back only requests for that buffer
//!   (whose order per connection [`Lanes`] keep), for at most `block_timeout`.
//! - Bounded: at most [`MAX_PENDING_ACKS`] requests of a connection are in flight, and memory
//!   for a request is reserved from the process-wide ingest budget *before* it is parsed or
//!   inflated. At either limit the reader stops taking requests (back-pressure on the sender)
//!   but still reads up to one request's worth, so a peer that leaves is noticed and frees its
//!   slot. Read timeouts apply only while requests are being taken: a stall that is ours is
//!   not the peer's fault.
//! - A re-send (the same request bytes from the same sender, [`Source`]) of a request acked
//!   within `dedupe_window` is acked again and not stored.
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
//! socket --read--> BytesMut --next_frame--> reserve memory --parse--> EventBatch
//!   --Pipeline::prepare--> task: Prepared::store (append per output) -> tickets durable
//!                                                   |  Ack (as each task finishes)
//!                     socket <--{"ack": id}-- ack writer
//! ```

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use logferry_common::chunk::ChunkError;
use logferry_common::forward::session::{Accepted, AuthFailure, ServerHandshake};
use logferry_common::forward::{encode_ack, DecodeError, Decoder, EventBatch, Frame, Request};
use logferry_common::telemetry;
use logferry_common::tls::{self, tokio_rustls::server::TlsStream};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{count_closed, log_budget, ListenerSettings};
use crate::dedupe::{Key, Source};
use crate::ingest::{Holder, Lanes, Pipeline, Reserved, StoreError};

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
    NotStored(StoreError),
    Commit(ChunkError),
    Task(String),
    AckWriterGone,
}

/// What a connection takes from its listener.
#[derive(Debug)]
pub struct Listener {
    /// The listener's name, for sources and logs.
    pub name: Arc<str>,
    /// The listener's settings when the connection was accepted (a reload applies to new ones).
    pub settings: Arc<ListenerSettings>,
    /// Where requests are stored.
    pub pipeline: Arc<Pipeline>,
    /// Cancelled at shutdown.
    pub shutdown: CancellationToken,
}

/// Takes an accepted TCP connection through TLS and the handshake (as configured), then
/// serves it until EOF, an error, a timeout or shutdown.
pub async fn accept(stream: TcpStream, peer: SocketAddr, listener: Listener) {
    let _ = stream.set_nodelay(true);
    let settings = &listener.settings;
    // The ACL comes first: a refused source costs no TLS handshake.
    let handshake = match &settings.auth {
        None => None,
        Some(auth) => match ServerHandshake::start(Arc::clone(auth), peer.ip()) {
            Ok(handshake) => Some(handshake),
            Err(failure) => {
                auth_failed(&failure);
                return;
            }
        },
    };
    let deadline = Instant::now() + settings.handshake_timeout;
    let Some(tls) = &settings.tls else {
        serve(stream, peer, handshake, deadline, &listener).await;
        return;
    };
    let accepted = tokio::select! {
        accepted = tokio::time::timeout_at(deadline, tls.acceptor.accept(stream)) => accepted,
        () = listener.shutdown.cancelled() => return,
    };
    match accepted {
        Ok(Ok(stream)) => {
            serve(stream, peer, handshake, deadline, &listener).await;
        }
        Ok(Err(e)) if tls::is_client_certificate_error(&e) => {
            count_closed("client_certificate");
            telemetry::FORWARD_AUTH_FAILURES.inc();
            if log_budget() {
                tracing::warn!(error = %e, "TLS: client certificate rejected; connection closed");
            }
        }
        Ok(Err(e)) => {
            count_closed("tls_handshake");
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                tracing::debug!("connection closed during the TLS handshake");
            } else if log_budget() {
                tracing::info!(error = %e, "TLS handshake failed; connection closed");
            }
        }
        Err(_) => {
            count_closed("handshake_timeout");
            if log_budget() {
                tracing::info!(timeout = ?settings.handshake_timeout,
                    "TLS handshake not finished in time; connection closed");
            }
        }
    }
}

/// Counts and logs a failed Forward handshake (never with a secret in it: see [`AuthFailure`]).
fn auth_failed(failure: &AuthFailure) {
    telemetry::FORWARD_AUTH_FAILURES.inc();
    count_closed(failure.code());
    if log_budget() {
        tracing::warn!(
            reason = failure.code(),
            "Forward handshake failed: {failure}; connection closed"
        );
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
/// Bytes after the PING stay in `buf` for the transport phase. Returns who was accepted.
async fn forward_handshake<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    mut handshake: ServerHandshake,
    buf: &mut BytesMut,
    deadline: Instant,
    shutdown: &CancellationToken,
) -> Result<Accepted, HandshakeEnd> {
    let mut helo = Vec::with_capacity(64);
    handshake.helo(&mut helo);
    write_by(stream, &helo, deadline).await?;
    loop {
        match handshake.receive(buf) {
            Ok(Some(accepted)) => {
                write_by(stream, &accepted.pong, deadline).await?;
                tracing::debug!(client = %accepted.client_hostname, user = ?accepted.username, "Forward handshake succeeded");
                return Ok(accepted);
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

/// Serves one connection (after TLS) until EOF, an error, a timeout or shutdown; returns how
/// it ended (`None`: in the Forward handshake).
async fn serve<S: Stream>(
    mut stream: S,
    peer: SocketAddr,
    handshake: Option<ServerHandshake>,
    handshake_deadline: Instant,
    listener: &Listener,
) -> Option<End> {
    let (settings, shutdown) = (&*listener.settings, &listener.shutdown);
    let mut buf = BytesMut::new();
    let accepted = match handshake {
        None => None,
        Some(handshake) => {
            match forward_handshake(
                &mut stream,
                handshake,
                &mut buf,
                handshake_deadline,
                shutdown,
            )
            .await
            {
                Ok(accepted) => Some(accepted),
                Err(end) => {
                    handshake_failed(settings, end);
                    return None;
                }
            }
        }
    };

    let (reader, writer) = stream.split();
    let (ack_tx, ack_rx) = mpsc::channel(MAX_PENDING_ACKS);
    // Cancelled by shutdown, or by the ack writer when it gives up (a peer not reading acks).
    let conn = shutdown.child_token();
    let ack_writer = tokio::spawn(write_acks(
        writer,
        ack_rx,
        Arc::clone(&listener.pipeline),
        settings.write_timeout,
        conn.clone(),
    ));
    let pipeline = Arc::clone(&listener.pipeline);
    let mut c = Conn {
        source: Source::new(
            &listener.name,
            accepted.as_ref().and_then(|a| a.username.as_deref()),
            peer.ip(),
        ),
        tenant: settings.tenant_of(accepted.as_ref()),
        lanes: Lanes::new(),
        pipeline,
        settings,
        decoder: Decoder::new(settings.limits),
        buf,
        tasks: JoinSet::new(),
        memory: Holder::default(),
        parked: CancellationToken::new(),
        acks: ack_tx,
        conn,
        shutdown: shutdown.clone(),
    };
    let end = c.run(reader).await;
    let pending_bytes = c.buf.len();
    c.finish().await;
    let _ = ack_writer.await;
    report(settings, &end, pending_bytes);
    Some(end)
}

/// Counts and logs a Forward handshake that did not complete.
fn handshake_failed(settings: &ListenerSettings, end: HandshakeEnd) {
    match end {
        HandshakeEnd::Failed(failure) => auth_failed(&failure),
        HandshakeEnd::Eof { partial: 0 } => {
            // Connected and left without a word: a TCP health check, not an attack.
            tracing::debug!("connection closed before PING");
        }
        HandshakeEnd::Eof { partial } => {
            telemetry::FORWARD_AUTH_FAILURES.inc();
            count_closed("truncated_ping");
            if log_budget() {
                tracing::warn!(
                    bytes = partial,
                    reason = "truncated_ping",
                    "Forward handshake failed: the connection ended inside PING"
                );
            }
        }
        HandshakeEnd::Timeout => {
            telemetry::FORWARD_AUTH_FAILURES.inc();
            count_closed("handshake_timeout");
            if log_budget() {
                tracing::warn!(timeout = ?settings.handshake_timeout, reason = "handshake_timeout",
                    "Forward handshake failed: no complete PING in time; connection closed");
            }
        }
        HandshakeEnd::Io(e) => {
            tracing::info!(error = %e, "connection failed during the Forward handshake");
        }
        HandshakeEnd::Shutdown => {}
    }
}

/// What a stored request leaves for the ack writer.
#[derive(Debug)]
struct Ack {
    /// Raw msgpack of the `chunk` option, echoed verbatim.
    chunk: Bytes,
    /// Remembered once the ack is written, so a re-send is acked without being stored again.
    key: Key,
    source: Source,
}

/// The reading half of a connection and the requests it has in flight.
struct Conn<'a> {
    pipeline: Arc<Pipeline>,
    settings: &'a ListenerSettings,
    source: Source,
    /// The tenant of this connection's records (its user's, its client rule's or its
    /// listener's), if it has one.
    tenant: Option<Arc<str>>,
    decoder: Decoder,
    buf: BytesMut,
    /// One task per request being stored and committed: each yields its ack (if any) once
    /// durable, in whatever order they finish.
    tasks: JoinSet<Result<Option<Ack>, End>>,
    lanes: Lanes,
    /// This connection's share of the ingest memory budget.
    memory: Holder,
    /// Cancelled when the connection ends: requests still waiting for room in a full buffer
    /// give up (unacked); the others are stored.
    parked: CancellationToken,
    acks: mpsc::Sender<Ack>,
    conn: CancellationToken,
    shutdown: CancellationToken,
}

impl Conn<'_> {
    /// Reads, decodes and dispatches until the connection ends; returns why.
    async fn run<R: AsyncRead + Unpin>(&mut self, mut reader: R) -> End {
        let mut read_size = FIRST_READ;
        // When the incomplete request at the front of `buf` began to arrive.
        let mut request_started: Option<Instant> = None;
        loop {
            let decoded = match self.dispatch_buffered().await {
                Ok(decoded) => decoded,
                Err(end) => return end,
            };
            if self.conn.is_cancelled() {
                return self.cancelled();
            }
            let admitting = self.admitting();
            let now = Instant::now();
            if self.buf.is_empty() {
                request_started = None;
            } else if decoded || request_started.is_none() {
                request_started = Some(now);
            }
            // Timeouts hold a peer to its pace only while we are taking its requests; when we
            // stopped (requests in flight at their limit) the stall is ours, not the peer's.
            let deadline = admitting.then(|| self.read_deadline(now, request_started));
            // Not taking requests, the socket is still read up to one request's worth, so a
            // peer that went away is noticed.
            let can_read = admitting || self.buf.len() < self.settings.limits.max_request_bytes;
            self.buf.reserve(read_size);
            tokio::select! {
                // `read_buf` is cancel-safe: if another branch wins, no bytes were consumed.
                read = reader.read_buf(&mut self.buf), if can_read => match read {
                    Ok(0) => return self.drain_buffered().await,
                    Ok(n) => {
                        telemetry::INPUT_BYTES.inc_by(n as u64);
                        if n >= read_size && read_size < READ_CHUNK {
                            read_size *= 2;
                        }
                    }
                    // A TLS peer that closes without close_notify (most do): an ordinary EOF.
                    Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                        return self.drain_buffered().await
                    }
                    Err(e) => return End::Read(e),
                },
                Some(done) = self.tasks.join_next(), if !self.tasks.is_empty() => {
                    if let Err(end) = self.completed(done).await {
                        return end;
                    }
                }
                () = sleep_until_opt(deadline.as_ref().map(|(at, _)| *at)) => {
                    if let Some((_, end)) = deadline {
                        return end;
                    }
                }
                () = self.conn.cancelled() => return self.cancelled(),
            }
        }
    }

    /// At EOF: takes the requests still buffered (a sender that wrote and closed without
    /// waiting for acks expects them stored), while requests waiting for room in a full buffer
    /// give up. Returns how the connection ends.
    async fn drain_buffered(&mut self) -> End {
        self.parked.cancel();
        loop {
            if let Err(end) = self.dispatch_buffered().await {
                return end;
            }
            if self.admitting() {
                // Every complete request was taken.
                return End::Eof;
            }
            tokio::select! {
                Some(done) = self.tasks.join_next() => {
                    if let Err(end) = self.completed(done).await {
                        return end;
                    }
                }
                () = self.conn.cancelled() => return self.cancelled(),
            }
        }
    }

    fn cancelled(&self) -> End {
        if self.shutdown.is_cancelled() {
            End::Shutdown
        } else {
            End::AckWriterGone
        }
    }

    /// Whether another request may be taken: in-flight requests and memory below their limits.
    fn admitting(&self) -> bool {
        self.tasks.len() < MAX_PENDING_ACKS && self.pipeline.memory.admits(&self.memory)
    }

    /// When the next read must have happened, and what ends the connection if not.
    fn read_deadline(&self, now: Instant, request_started: Option<Instant>) -> (Instant, End) {
        let settings = self.settings;
        match request_started {
            None => (now + settings.idle_timeout, End::Idle),
            Some(start) => {
                let pause = now + settings.read_timeout;
                let rate = (settings.min_read_rate > 0).then(|| {
                    let secs = self.buf.len() as f64 / settings.min_read_rate as f64;
                    start + settings.read_timeout + Duration::from_secs_f64(secs.min(1e9))
                });
                match rate {
                    Some(rate) if rate < pause => (rate, End::SlowClient),
                    _ => (pause, End::ReadTimeout),
                }
            }
        }
    }

    /// Takes every complete request already buffered, while admission allows. Returns whether
    /// any was taken.
    async fn dispatch_buffered(&mut self) -> Result<bool, End> {
        let mut decoded = false;
        while self.admitting() {
            let frame = match self.decoder.next_frame(&mut self.buf) {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(e) => return Err(decode_error(e)),
            };
            decoded = true;
            let limits = self.settings.limits;
            // Reserved before parsing (which may inflate): what the parse allocates, plus the
            // frame payload built from its entries.
            let parse = frame.parse_bound(&limits);
            let bound = parse + parse.min(limits.max_decompressed_bytes);
            let memory = {
                let (pipeline, holder) = (Arc::clone(&self.pipeline), self.memory.clone());
                let reserve = pipeline.memory.reserve(bound, &holder);
                let mut reserve = std::pin::pin!(reserve);
                // Requests in flight keep finishing meanwhile (they may be what frees memory).
                loop {
                    tokio::select! {
                        reserved = &mut reserve => break reserved,
                        Some(done) = self.tasks.join_next(), if !self.tasks.is_empty() => {
                            self.completed(done).await?;
                        }
                        () = self.conn.cancelled() => return Err(self.cancelled()),
                    }
                }
            };
            let Some(memory) = memory else {
                return Err(self.cancelled());
            };
            let request = frame.parse(&limits).map_err(decode_error)?;
            match request {
                None | Some(Request::Heartbeat) => {}
                Some(Request::Handshake(_)) => {
                    // Handshake messages are valid only in the handshake phase, before any
                    // event (and only on a listener with [server.auth]).
                    return Err(decode_error(DecodeError::Malformed(
                        "handshake message outside the handshake phase",
                    )));
                }
                Some(Request::Events(batch)) => self.store(frame, batch, memory).await?,
            }
        }
        Ok(decoded)
    }

    /// Stores one event request on its own task (or answers a re-send from memory).
    async fn store(
        &mut self,
        frame: Frame,
        batch: EventBatch,
        memory: Reserved,
    ) -> Result<(), End> {
        let mut ack = batch.chunk.clone().map(|chunk| Ack {
            chunk,
            key: self.source.key(frame.bytes()),
            source: self.source,
        });
        drop(frame);
        if let Some(resend) = ack.take_if(|a| self.pipeline.acked.contains(&a.key)) {
            // A re-send of a request we already stored and acked: ack again, store nothing.
            return self.acks.send(resend).await.map_err(|_| End::AckWriterGone);
        }
        let Some(prepared) =
            self.pipeline
                .prepare(batch, self.tenant.as_deref(), &mut self.lanes, memory)
        else {
            // Nothing to store (no route, no valid record): acked as it is.
            return match ack {
                Some(ack) => self.acks.send(ack).await.map_err(|_| End::AckWriterGone),
                None => Ok(()),
            };
        };
        let pipeline = Arc::clone(&self.pipeline);
        let parked = self.parked.clone();
        // Without a chunk id the sender asked for at-most-once: no ack, but the request still
        // counts against MAX_PENDING_ACKS until it is durable.
        self.tasks.spawn(async move {
            let tickets = match prepared.store(&pipeline, &parked).await {
                Ok(tickets) => tickets,
                // The connection ended while this request waited for room: never acked.
                Err(StoreError::Abandoned { .. }) => return Ok(None),
                Err(e) => return Err(End::NotStored(e)),
            };
            for ticket in tickets {
                // Not durable means no ack, ever: closing the connection makes the sender
                // re-send.
                ticket.durable().await.map_err(End::Commit)?;
            }
            Ok(ack)
        });
        Ok(())
    }

    /// Hands a finished request's ack to the writer; an `Err` ends the connection.
    async fn completed(
        &mut self,
        done: Result<Result<Option<Ack>, End>, tokio::task::JoinError>,
    ) -> Result<(), End> {
        match done {
            Ok(Ok(Some(ack))) => self.acks.send(ack).await.map_err(|_| End::AckWriterGone),
            Ok(Ok(None)) => Ok(()),
            Ok(Err(end)) => Err(end),
            Err(e) => Err(End::Task(e.to_string())),
        }
    }

    /// Ends the connection: requests waiting for room in a full buffer give up; the others
    /// are stored, committed and acked (the writer flushes the acks before closing).
    async fn finish(mut self) {
        self.parked.cancel();
        while let Some(done) = self.tasks.join_next().await {
            if let Ok(Ok(Some(ack))) = done {
                let _ = self.acks.send(ack).await;
            }
        }
    }
}

/// Counts a malformed request (in total and by code); it ends the connection.
fn decode_error(e: DecodeError) -> End {
    telemetry::FORWARD_DECODE_ERRORS.inc();
    telemetry::count_decode_error_code(e.code());
    End::Decode(e)
}

/// Sleeps until `at`, or forever.
async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Counts and logs why a connection ended.
fn report(settings: &ListenerSettings, end: &End, pending_bytes: usize) {
    match end {
        End::Eof | End::Shutdown => tracing::debug!(?end, "connection closed"),
        End::Idle => {
            count_closed("idle_timeout");
            tracing::debug!(timeout = ?settings.idle_timeout, "closing idle connection");
        }
        End::ReadTimeout => {
            count_closed("read_timeout");
            if log_budget() {
                tracing::info!(timeout = ?settings.read_timeout, pending_bytes,
                    "closing connection: a request stalled mid-way");
            }
        }
        End::SlowClient => {
            count_closed("slow_client");
            if log_budget() {
                tracing::warn!(
                    min_bytes_per_sec = settings.min_read_rate,
                    pending_bytes,
                    "closing connection: a request arrives slower than min_read_rate"
                );
            }
        }
        End::Decode(e) => {
            if log_budget() {
                tracing::warn!(error = %e, code = e.code(), "closing connection: malformed request");
            }
        }
        End::Read(e) => tracing::info!(error = %e, "connection read failed"),
        End::NotStored(e) => {
            count_closed(match e {
                StoreError::BlockTimeout { .. } => "block_timeout",
                _ => "not_stored",
            });
            if log_budget() {
                tracing::warn!(error = %e, code = e.code(),
                    "closing connection: a request could not be stored and was not acked");
            }
        }
        End::Commit(e) => {
            count_closed("commit_failed");
            tracing::error!(error = %e, "commit failed; closing connection without ack");
        }
        End::Task(e) => {
            count_closed("internal_error");
            tracing::error!(error = %e, "a request's task failed; closing connection without its ack");
        }
        End::AckWriterGone => {
            tracing::info!("connection closed while writing acks")
        }
    }
}

/// Writes acks as their requests become durable. Gives up (cancelling `conn`, which ends the
/// reader) when a write does not finish within `write_timeout`.
async fn write_acks<W: AsyncWrite + Unpin>(
    mut writer: W,
    mut queue: mpsc::Receiver<Ack>,
    pipeline: Arc<Pipeline>,
    write_timeout: Duration,
    conn: CancellationToken,
) {
    let mut out = Vec::with_capacity(128);
    while let Some(ack) = queue.recv().await {
        out.clear();
        encode_ack(&ack.chunk, &mut out);
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
        pipeline.acked.insert(ack.source, ack.key);
    }
    let _ = tokio::time::timeout(write_timeout, writer.shutdown()).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dedupe::AckedChunks;
    use crate::ingest::MemoryBudget;
    use crate::route::Router;
    use logferry_common::forward::Limits;

    fn pipeline(dir: &std::path::Path) -> Arc<Pipeline> {
        Arc::new(Pipeline::new(
            Router::new(Vec::new()),
            Vec::new(),
            AckedChunks::open(dir, Duration::from_secs(60)),
            MemoryBudget::new(1 << 20),
            Duration::from_secs(1),
        ))
    }

    fn ack(i: u32) -> Ack {
        let source = Source::new("test", None, std::net::Ipv4Addr::LOCALHOST.into());
        Ack {
            chunk: chunk(i),
            key: source.key(&chunk(i)),
            source,
        }
    }

    fn chunk(i: u32) -> Bytes {
        let mut raw = Vec::new();
        logferry_common::msgpack::write_str(&mut raw, &format!("chunk-{i:04}-{}", "x".repeat(40)));
        Bytes::from(raw)
    }

    impl Stream for tokio::io::DuplexStream {
        type Reader = tokio::io::ReadHalf<Self>;
        type Writer = tokio::io::WriteHalf<Self>;

        fn split(self) -> (Self::Reader, Self::Writer) {
            tokio::io::split(self)
        }
    }

    const IDLE: Duration = Duration::from_secs(300);
    const READ: Duration = Duration::from_secs(5);

    fn listener(dir: &std::path::Path, min_read_rate: u64) -> Listener {
        Listener {
            name: Arc::from("test"),
            settings: Arc::new(ListenerSettings {
                limits: Limits::default(),
                idle_timeout: IDLE,
                read_timeout: READ,
                min_read_rate,
                write_timeout: Duration::from_secs(10),
                handshake_timeout: Duration::from_secs(10),
                max_connections_per_source: 0,
                tls: None,
                auth: None,
                tenant: None,
                user_tenants: Default::default(),
                client_tenants: Vec::new(),
            }),
            pipeline: pipeline(dir),
            shutdown: CancellationToken::new(),
        }
    }

    /// Serves the server end of an in-memory pipe; returns how it ended and after how long.
    async fn serve_pipe(
        listener: &Listener,
        server: tokio::io::DuplexStream,
    ) -> (Option<End>, Duration) {
        let start = Instant::now();
        let peer = SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, 1));
        let end = serve(server, peer, None, start, listener).await;
        (end, start.elapsed())
    }

    // The timeout tests run on paused time: the clock jumps to the next timer whenever every
    // task waits, so they take no wall-clock time and the elapsed times are exact.

    #[tokio::test(start_paused = true)]
    async fn a_silent_connection_is_closed_after_idle_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let listener = listener(dir.path(), 0);
        let (_client, server) = tokio::io::duplex(4096);
        let (end, elapsed) = serve_pipe(&listener, server).await;
        assert!(matches!(end, Some(End::Idle)), "{end:?}");
        assert_eq!(elapsed, IDLE);
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_stalled_midway_is_closed_after_read_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let listener = listener(dir.path(), 0);
        let (mut client, server) = tokio::io::duplex(4096);
        // The first bytes of a Message-mode request ([tag, time, record]); the rest never comes.
        client.write_all(&[0x93, 0xa3, b'a', b'p']).await.unwrap();
        let (end, elapsed) = serve_pipe(&listener, server).await;
        assert!(matches!(end, Some(End::ReadTimeout)), "{end:?}");
        assert_eq!(elapsed, READ);
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_trickling_below_min_read_rate_is_closed_as_a_slow_client() {
        let dir = tempfile::tempdir().unwrap();
        // 100 bytes/s required; the client sends one byte a second, so no single pause reaches
        // read_timeout, but the request falls behind the rate once the grace has passed.
        let listener = listener(dir.path(), 100);
        let (mut client, server) = tokio::io::duplex(4096);
        let trickle = tokio::spawn(async move {
            let mut request = vec![0x93, 0xd9, 200];
            request.extend([b'x'; 200]);
            for byte in request {
                if client.write_all(&[byte]).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
        let (end, elapsed) = serve_pipe(&listener, server).await;
        trickle.abort();
        assert!(matches!(end, Some(End::SlowClient)), "{end:?}");
        assert!(elapsed > READ && elapsed < 2 * READ, "{elapsed:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_ends_a_connection_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let listener = listener(dir.path(), 0);
        let (_client, server) = tokio::io::duplex(4096);
        let shutdown = listener.shutdown.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            shutdown.cancel();
        });
        let (end, elapsed) = serve_pipe(&listener, server).await;
        assert!(matches!(end, Some(End::Shutdown)), "{end:?}");
        assert_eq!(elapsed, Duration::from_secs(1));
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
            if tx.send(ack(i)).await.is_err() {
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
            tx.send(ack(i)).await.unwrap();
        }
        drop(tx);
        task.await.unwrap();
        assert_eq!(reader.await.unwrap(), expected);
        assert!(!conn.is_cancelled());
    }
}
