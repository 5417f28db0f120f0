//! The Forward listener: accept, limit, hand each connection to [`connection::serve`].
//!
//! ## Design constraints
//! - At most `max_connections` connections are served at once. One more is accepted and closed
//!   at once (logged), so the client fails fast and tries another aggregator instead of waiting
//!   in the kernel's backlog.
//! - Shutdown stops accepting first, then lets every connection ack what it already stored;
//!   [`Server::run`] returns when the last connection is gone.

pub mod connection;

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use logferry_common::chunk::Buffer;
use logferry_common::forward::Limits;
use logferry_common::telemetry;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::dedupe::AckedChunks;
use crate::route::Router;

/// Everything a connection needs to store a request: shared by all connections.
#[derive(Debug)]
pub struct Pipeline {
    /// Tag routes; swapped whole on reload.
    pub router: RwLock<Arc<Router>>,
    /// One buffer per output, indexed like the router's output indices.
    pub buffers: Vec<Buffer>,
    /// Recently acked chunk ids.
    pub acked: AckedChunks,
    /// Decoder limits.
    pub limits: Limits,
    /// A connection silent this long is closed.
    pub idle_timeout: Duration,
}

impl Pipeline {
    /// The current routing table.
    pub fn router(&self) -> Arc<Router> {
        Arc::clone(&self.router.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// Replaces the routing table (config reload).
    pub fn set_router(&self, router: Router) {
        *self.router.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(router);
    }
}

/// A bound Forward listener.
#[derive(Debug)]
pub struct Server {
    listener: TcpListener,
    pipeline: Arc<Pipeline>,
    max_connections: usize,
}

impl Server {
    /// Binds the listener.
    pub async fn bind(
        addr: SocketAddr,
        pipeline: Arc<Pipeline>,
        max_connections: usize,
    ) -> std::io::Result<Server> {
        let listener = TcpListener::bind(addr).await?;
        Ok(Server {
            listener,
            pipeline,
            max_connections,
        })
    }

    /// The address actually bound (port 0 resolved).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Accepts connections until `shutdown` is cancelled, then waits for every connection to
    /// finish acking what it stored.
    pub async fn run(self, shutdown: CancellationToken) {
        let limit = Arc::new(Semaphore::new(self.max_connections));
        let tracker = TaskTracker::new();
        loop {
            let accepted = tokio::select! {
                accepted = self.listener.accept() => accepted,
                () = shutdown.cancelled() => break,
            };
            let (stream, peer) = match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Per-connection errors (e.g. reset before accept) and fd exhaustion both
                    // land here; a short pause keeps an fd-exhausted loop from spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Ok(permit) = Arc::clone(&limit).try_acquire_owned() else {
                tracing::warn!(%peer, max = self.max_connections, "too many connections; closing the new one");
                drop(stream);
                continue;
            };
            let pipeline = Arc::clone(&self.pipeline);
            let shutdown = shutdown.clone();
            tracker.spawn(async move {
                telemetry::FORWARD_CONNECTIONS.inc();
                connection::serve(stream, peer, pipeline, shutdown).await;
                telemetry::FORWARD_CONNECTIONS.dec();
                drop(permit);
            });
        }
        drop(self.listener);
        tracker.close();
        tracker.wait().await;
    }
}
