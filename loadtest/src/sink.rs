//! `sink`: a Forward server that decodes every request with the project's codec, acks it at once
//! and throws it away.
//!
//! It exists to measure the load generator itself: `forward` against `sink` gives the ceiling of
//! the tool on this machine (both share its cores), so a benchmark can show that the generator is
//! not what limits the aggregator's figures. It stores nothing, so it must never stand in for a
//! receiver in a delivery test.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::BytesMut;
use clap::Args;
use logferry_common::forward::{encode_ack, Decoder, Request};
use serde::Serialize;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

use crate::forward::parse_duration;

#[derive(Debug, Clone, Args)]
pub struct SinkArgs {
    /// Address to listen on (port 0: any free port; the first stdout line says which).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: String,
    /// Exit after this long (default: on SIGTERM or SIGINT).
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Print the summary as one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Default)]
struct Counters {
    connections: AtomicU64,
    requests: AtomicU64,
    records: AtomicU64,
    bytes: AtomicU64,
    acks: AtomicU64,
    errors: AtomicU64,
}

#[derive(Debug, Clone, Serialize)]
pub struct SinkSummary {
    pub ok: bool,
    pub listen: String,
    pub seconds: f64,
    pub connections: u64,
    pub requests: u64,
    pub records: u64,
    pub bytes: u64,
    pub acks: u64,
    /// Connections closed because a request could not be decoded.
    pub decode_errors: u64,
}

impl SinkSummary {
    pub fn text(&self) -> String {
        format!(
            "sink {}: {} connections, {} requests, {} records, {} bytes, {} acks, {} decode errors in {:.1}s",
            self.listen,
            self.connections,
            self.requests,
            self.records,
            self.bytes,
            self.acks,
            self.decode_errors,
            self.seconds
        )
    }
}

pub fn run(args: &SinkArgs) -> anyhow::Result<SinkSummary> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    rt.block_on(serve(args))
}

async fn serve(args: &SinkArgs) -> anyhow::Result<SinkSummary> {
    let listener = TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    let addr = listener.local_addr().context("local address")?;
    // Scripts wait for this line.
    println!("listening on {addr}");
    let start = Instant::now();
    let counters = Arc::new(Counters::default());
    let stop = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("installing the SIGTERM handler")?;
        match args.duration {
            Some(d) => tokio::select! {
                _ = tokio::time::sleep(d) => {}
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            },
            None => tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            },
        }
        anyhow::Ok(())
    };
    tokio::pin!(stop);
    loop {
        tokio::select! {
            r = &mut stop => { r?; break; }
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                counters.connections.fetch_add(1, Relaxed);
                let c = counters.clone();
                tokio::spawn(async move {
                    if connection(stream, &c).await.is_err() {
                        c.errors.fetch_add(1, Relaxed);
                    }
                });
            }
        }
    }
    Ok(SinkSummary {
        ok: true,
        listen: addr.to_string(),
        seconds: start.elapsed().as_secs_f64(),
        connections: counters.connections.load(Relaxed),
        requests: counters.requests.load(Relaxed),
        records: counters.records.load(Relaxed),
        bytes: counters.bytes.load(Relaxed),
        acks: counters.acks.load(Relaxed),
        decode_errors: counters.errors.load(Relaxed),
    })
}

/// Reads, decodes and acks until the peer closes; an undecodable request ends the connection.
async fn connection(mut stream: TcpStream, c: &Counters) -> anyhow::Result<()> {
    let _ = stream.set_nodelay(true);
    let mut decoder = Decoder::default();
    let mut buf = BytesMut::with_capacity(1 << 20);
    let mut acks = Vec::new();
    loop {
        let n = stream.read_buf(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        c.bytes.fetch_add(n as u64, Relaxed);
        while let Some(req) = decoder.decode(&mut buf)? {
            if let Request::Events(batch) = req {
                c.requests.fetch_add(1, Relaxed);
                c.records.fetch_add(u64::from(batch.records), Relaxed);
                if let Some(chunk) = &batch.chunk {
                    encode_ack(chunk, &mut acks);
                    c.acks.fetch_add(1, Relaxed);
                }
            }
        }
        if !acks.is_empty() {
            stream.write_all(&acks).await?;
            acks.clear();
        }
        if buf.capacity() - buf.len() < 64 * 1024 {
            buf.reserve(1 << 20);
        }
    }
}
