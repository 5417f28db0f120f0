//! One Forward connection: decode requests, append them to the routed buffers, ack when durable.
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
//!
//! ## Operation
//! ```text
//! socket --read--> BytesMut --Decoder--> Request --route--> Buffer::append (per output)
//!                                                              |  CommitTicket(s)
//!                                         ack writer <--queue--+
//!                 socket <--{"ack": id}-- (after every ticket is durable)
//! ```

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use logferry_common::chunk::{AppendError, CommitTicket};
use logferry_common::forward::{encode_ack, Decoder, EventBatch, Request};
use logferry_common::telemetry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::Pipeline;
use crate::payload;

/// Requests of one connection that may wait for their commit at once.
pub const MAX_PENDING_ACKS: usize = 64;

/// Bytes reserved for each socket read.
const READ_CHUNK: usize = 64 * 1024;

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
    Shutdown,
    Decode(logferry_common::forward::DecodeError),
    Read(std::io::Error),
    NotStored(AppendError),
    AckWriterGone,
}

/// Serves one connection until EOF, an error, the idle timeout or shutdown.
pub async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    pipeline: Arc<Pipeline>,
    shutdown: CancellationToken,
) {
    let _ = stream.set_nodelay(true);
    let (mut reader, writer) = stream.into_split();
    let (ack_tx, ack_rx) = mpsc::channel(MAX_PENDING_ACKS);
    let ack_writer = tokio::spawn(write_acks(writer, ack_rx, Arc::clone(&pipeline)));

    let mut decoder = Decoder::new(pipeline.limits);
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    let end = 'conn: loop {
        // Handle every complete request already buffered before reading more.
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(request)) => {
                    if let Err(end) = handle(request, &pipeline, &ack_tx).await {
                        break 'conn end;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    telemetry::FORWARD_DECODE_ERRORS.inc();
                    break 'conn End::Decode(e);
                }
            }
        }
        if shutdown.is_cancelled() {
            break End::Shutdown;
        }
        buf.reserve(READ_CHUNK);
        // `read_buf` is cancel-safe: if shutdown wins the race, no bytes were consumed.
        let read = tokio::select! {
            read = tokio::time::timeout(pipeline.idle_timeout, reader.read_buf(&mut buf)) => read,
            () = shutdown.cancelled() => break End::Shutdown,
        };
        match read {
            Ok(Ok(0)) => break End::Eof,
            Ok(Ok(n)) => telemetry::INPUT_BYTES.inc_by(n as u64),
            Ok(Err(e)) => break End::Read(e),
            Err(_) => break End::Idle,
        }
    };
    // Closing the queue lets the writer ack everything already stored, then finish.
    drop(ack_tx);
    let _ = ack_writer.await;
    match end {
        End::Eof | End::Shutdown => tracing::debug!(%peer, ?end, "connection closed"),
        End::Idle => {
            tracing::info!(%peer, timeout = ?pipeline.idle_timeout, "closing idle connection")
        }
        End::Decode(e) => {
            tracing::warn!(%peer, error = %e, code = e.code(), "closing connection: malformed request")
        }
        End::Read(e) => tracing::info!(%peer, error = %e, "connection read failed"),
        End::NotStored(e) => {
            tracing::warn!(%peer, error = %e, "closing connection: a request could not be stored and was not acked")
        }
        End::AckWriterGone => tracing::info!(%peer, "connection closed while writing acks"),
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
            // Handshake messages are only valid while a shared key is configured, before any
            // event; this listener has no authentication, so one arriving here is a protocol
            // error.
            telemetry::FORWARD_DECODE_ERRORS.inc();
            Err(End::Decode(
                logferry_common::forward::DecodeError::Malformed(
                    "handshake message on a listener without authentication",
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

/// Writes acks in request order, each after its tickets resolved.
async fn write_acks(
    mut writer: OwnedWriteHalf,
    mut queue: mpsc::Receiver<PendingAck>,
    pipeline: Arc<Pipeline>,
) {
    let mut out = Vec::with_capacity(128);
    while let Some(pending) = queue.recv().await {
        for ticket in pending.tickets {
            if let Err(e) = ticket.durable().await {
                // Not durable means no ack, ever. Closing the connection makes the sender
                // re-send; later requests on it are not acked either.
                tracing::error!(error = %e, "commit failed; closing connection without ack");
                return;
            }
        }
        let Some(chunk) = pending.chunk else { continue };
        out.clear();
        encode_ack(&chunk, &mut out);
        if writer.write_all(&out).await.is_err() {
            return;
        }
        telemetry::FORWARD_ACKS.inc();
        // The id is a zero-copy slice of the request's read buffer; remembering the slice would
        // keep that whole buffer alive for the dedupe window. Keep a copy of the id alone.
        pipeline.acked.insert(Bytes::copy_from_slice(&chunk));
    }
    let _ = writer.shutdown().await;
}
