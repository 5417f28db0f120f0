//! The acked Forward client: sealed chunks out of the buffer, to the aggregators, deleted only
//! after every frame of them was acked.
//!
//! ## Design constraints
//! - **A chunk is deleted only after its last frame was acked** (with `require_ack`; without
//!   it, after its last frame was written). Until then it is on disk, and whatever is not acked
//!   when the process stops is sent at the next start.
//! - **Stable chunk ids.** Each frame is one Forward request whose `chunk` id was drawn when the
//!   frame was made and is stored in it (see [`batch`](crate::batch)), so every re-send (after
//!   a timeout, on another connection, after a restart) carries the same id, and the
//!   aggregator's dedupe window re-acks instead of storing twice.
//! - **Load spread and failover** without a coordinator: one connection per aggregator address
//!   (module [`failover`]), each pulling jobs from one shared queue whenever it has room in its
//!   window. A live, fast aggregator pulls more; a dead one pulls nothing, and what it had in
//!   flight goes back to the front of the queue for the others.
//! - **Bounded memory.** At most [`MAX_LOADED_CHUNKS`] chunks are read into memory at once; the
//!   rest wait on disk. Frames are sent from the chunk's bytes without copying (gzip aside).
//!
//! ```text
//! SealedReceiver -> loader (read chunk, frames -> jobs) -> queue -> connection (window) -> ack
//!                                                            ^ failed jobs back to the front
//! ack of the last job of a chunk -> Buffer::release (the chunk file is deleted)
//! ```

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use logferry_common::chunk::{Buffer, ChunkError, SealedChunk, SealedReceiver};
use logferry_common::telemetry;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use logferry_common::tls::TlsError;
use secure::Security;

use crate::batch::{decode_frame, wire_request};
use crate::config::{Compress, OutputConfig};

pub mod connection;
pub mod endpoints;
pub mod failover;
pub mod secure;

/// Most sealed chunks held in memory at once.
pub const MAX_LOADED_CHUNKS: usize = 4;
/// The `output` label of the client's metrics.
pub const OUTPUT_LABEL: &str = "forward";

/// Client settings.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Server entries.
    pub servers: Vec<String>,
    /// Wait for acks.
    pub require_ack: bool,
    /// Re-send after this long without an ack.
    pub ack_timeout: Duration,
    /// Gzip requests.
    pub gzip: bool,
    /// Idle heartbeat period, and the first reconnect backoff.
    pub heartbeat_interval: Duration,
    /// Connect timeout.
    pub connect_timeout: Duration,
    /// Requests in flight per connection.
    pub window: usize,
    /// DNS refresh period.
    pub dns_refresh_interval: Duration,
    /// TLS and the shared-key handshake.
    pub security: Arc<Security>,
}

impl ClientOptions {
    /// From `[output]`.
    ///
    /// # Errors
    /// The TLS files do not load.
    pub fn from_config(o: &OutputConfig) -> Result<ClientOptions, TlsError> {
        Ok(ClientOptions {
            servers: o.servers.clone(),
            require_ack: o.require_ack,
            ack_timeout: o.ack_timeout,
            gzip: o.compress == Compress::Gzip,
            heartbeat_interval: o.heartbeat_interval,
            connect_timeout: o.connect_timeout,
            window: o.window.max(1),
            dns_refresh_interval: o.dns_refresh_interval,
            security: Arc::new(Security::from_config(o)?),
        })
    }
}

/// One request to deliver: a frame of a loaded chunk.
#[derive(Debug, Clone)]
pub struct Job {
    /// The chunk's sequence number.
    pub seq: u64,
    /// The bytes to write.
    pub request: Bytes,
    /// The raw msgpack of the chunk id (what the ack echoes).
    pub chunk_raw: Bytes,
    /// Records in it.
    pub records: u32,
}

#[derive(Debug)]
struct Loaded {
    chunk: SealedChunk,
    outstanding: usize,
    since: Instant,
}

#[derive(Debug, Default)]
struct State {
    queue: VecDeque<Job>,
    loaded: HashMap<u64, Loaded>,
    /// No more chunks will come (the buffer was closed and its receiver drained).
    input_done: bool,
}

/// What the loader and the connections share.
#[derive(Debug)]
pub struct Shared {
    state: Mutex<State>,
    /// New jobs in the queue.
    work: Notify,
    /// A loaded chunk was released (room to load another), or everything was delivered.
    progress: Notify,
    opts: ClientOptions,
    buffer: Buffer,
    /// Cancelled at the shutdown deadline: connections drop what is in flight (it stays on
    /// disk) and end.
    hard_stop: CancellationToken,
    /// The server entries (replaced by a reload).
    servers: std::sync::RwLock<Vec<String>>,
    /// Resolve the servers now (after a reload).
    resolve_now: Notify,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn take_job(&self) -> Option<Job> {
        self.lock().queue.pop_front()
    }

    /// Puts jobs back at the front of the queue, in their order.
    fn requeue(&self, jobs: Vec<Job>) {
        if jobs.is_empty() {
            return;
        }
        telemetry::OUTPUT_RETRIES
            .with_label_values(&[OUTPUT_LABEL])
            .inc_by(jobs.len() as u64);
        {
            let mut st = self.lock();
            for job in jobs.into_iter().rev() {
                st.queue.push_front(job);
            }
        }
        self.work.notify_waiters();
    }

    /// A job was acked (or written, without acks): release its chunk when it was the last.
    fn complete(&self, job: &Job) {
        telemetry::OUTPUT_RECORDS
            .with_label_values(&[OUTPUT_LABEL])
            .inc_by(u64::from(job.records));
        telemetry::OUTPUT_BYTES
            .with_label_values(&[OUTPUT_LABEL])
            .inc_by(job.request.len() as u64);
        let done = {
            let mut st = self.lock();
            let finished = match st.loaded.get_mut(&job.seq) {
                Some(l) => {
                    l.outstanding = l.outstanding.saturating_sub(1);
                    l.outstanding == 0
                }
                None => false,
            };
            if finished {
                st.loaded.remove(&job.seq)
            } else {
                None
            }
        };
        if let Some(l) = done {
            self.release(&l);
        }
    }

    fn release(&self, l: &Loaded) {
        telemetry::OUTPUT_FLUSH_DURATION
            .with_label_values(&[OUTPUT_LABEL])
            .observe(l.since.elapsed().as_secs_f64());
        if let Err(e) = self.buffer.release(&l.chunk) {
            tracing::error!(error = %e, path = %l.chunk.path.display(), "cannot delete a delivered chunk (it will be sent again at the next start)");
        }
        self.progress.notify_waiters();
    }

    /// Whether everything loaded was delivered and no more will come.
    fn drained(&self) -> bool {
        let st = self.lock();
        st.input_done && st.loaded.is_empty() && st.queue.is_empty()
    }

    /// Chunks loaded but not yet delivered.
    pub fn undelivered_chunks(&self) -> usize {
        self.lock().loaded.len()
    }

    /// Replaces the server entries (a reload); connections to addresses no longer listed are
    /// closed and their requests re-sent to the others.
    pub fn set_servers(&self, servers: Vec<String>) {
        *self.servers.write().unwrap_or_else(|e| e.into_inner()) = servers;
        self.resolve_now.notify_one();
    }

    fn servers(&self) -> Vec<String> {
        self.servers
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// The running client.
#[derive(Debug)]
pub struct Client {
    shared: Arc<Shared>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    soft_stop: CancellationToken,
}

impl Client {
    /// Starts the loader and the endpoint manager (which starts the connections).
    pub fn start(opts: ClientOptions, buffer: Buffer, sealed: SealedReceiver) -> Client {
        let shared = Arc::new(Shared {
            servers: std::sync::RwLock::new(opts.servers.clone()),
            resolve_now: Notify::new(),
            state: Mutex::new(State::default()),
            work: Notify::new(),
            progress: Notify::new(),
            opts,
            buffer,
            hard_stop: CancellationToken::new(),
        });
        let soft_stop = CancellationToken::new();
        let loader = tokio::spawn(load(Arc::clone(&shared), sealed));
        let manager = tokio::spawn(manage_endpoints(Arc::clone(&shared), soft_stop.clone()));
        Client {
            shared,
            tasks: vec![loader, manager],
            soft_stop,
        }
    }

    /// The shared state (for readiness and tests).
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Waits until every chunk the buffer will ever hand out (it must have been closed) was
    /// delivered, or `deadline`. Returns whether everything was delivered. Connections are
    /// stopped either way; what was not acked stays on disk.
    pub async fn drain(self, deadline: tokio::time::Instant) -> bool {
        let delivered = tokio::time::timeout_at(deadline, async {
            loop {
                let progressed = self.shared.progress.notified();
                tokio::pin!(progressed);
                progressed.as_mut().enable();
                if self.shared.drained() {
                    break;
                }
                progressed.await;
            }
        })
        .await
        .is_ok();
        self.soft_stop.cancel();
        self.shared.hard_stop.cancel();
        self.shared.work.notify_waiters();
        for task in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(2), task).await;
        }
        delivered
    }
}

/// Reads sealed chunks into jobs, at most [`MAX_LOADED_CHUNKS`] at a time.
async fn load(shared: Arc<Shared>, mut sealed: SealedReceiver) {
    loop {
        loop {
            let room = shared.progress.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            if shared.lock().loaded.len() < MAX_LOADED_CHUNKS {
                break;
            }
            tokio::select! {
                () = room => {}
                () = shared.hard_stop.cancelled() => return,
            }
        }
        let chunk = tokio::select! {
            c = sealed.recv() => c,
            () = shared.hard_stop.cancelled() => return,
        };
        let Some(chunk) = chunk else {
            shared.lock().input_done = true;
            shared.progress.notify_waiters();
            shared.work.notify_waiters();
            return;
        };
        let read = {
            let c = chunk.clone();
            tokio::task::spawn_blocking(move || c.read()).await
        };
        let contents = match read {
            Ok(Ok(contents)) => contents,
            Ok(Err(ChunkError::Gone { .. })) => continue,
            Ok(Err(e)) => {
                // A damaged header: nothing in it can be trusted; it stays on disk for
                // `inspect` and is not sent.
                tracing::error!(error = %e, path = %chunk.path.display(), "cannot read a sealed chunk; leaving it on disk");
                continue;
            }
            Err(_) => continue,
        };
        let mut jobs = Vec::with_capacity(contents.frame_count());
        for (payload, records) in contents.payloads() {
            let frame = match decode_frame(&payload) {
                Ok(f) => f,
                Err(e) => {
                    tracing::error!(error = %e, path = %chunk.path.display(), "skipping a frame that is not a Forward request");
                    telemetry::DROPPED_RECORDS
                        .with_label_values(&["invalid_frame"])
                        .inc_by(u64::from(records));
                    continue;
                }
            };
            let chunk_raw = payload.slice_ref(frame.chunk_raw);
            let request = match wire_request(&frame, shared.opts.gzip) {
                Some(gz) => Bytes::from(gz),
                None => payload.clone(),
            };
            jobs.push(Job {
                seq: chunk.seq,
                request,
                chunk_raw,
                records,
            });
        }
        let loaded = Loaded {
            chunk,
            outstanding: jobs.len(),
            since: Instant::now(),
        };
        if jobs.is_empty() {
            shared.release(&loaded);
            continue;
        }
        {
            let mut st = shared.lock();
            st.loaded.insert(loaded.chunk.seq, loaded);
            st.queue.extend(jobs);
        }
        shared.work.notify_waiters();
    }
}

/// Keeps one connection task per resolved aggregator address.
async fn manage_endpoints(shared: Arc<Shared>, soft_stop: CancellationToken) {
    let mut slots: BTreeMap<SocketAddr, (CancellationToken, tokio::task::JoinHandle<()>)> =
        BTreeMap::new();
    let mut refresh = tokio::time::interval(shared.opts.dns_refresh_interval);
    refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut first = true;
    loop {
        tokio::select! {
            _ = refresh.tick() => {}
            () = shared.resolve_now.notified() => {}
            () = soft_stop.cancelled() => break,
        }
        let (addrs, errors) = endpoints::resolve_all(&shared.servers()).await;
        for e in &errors {
            tracing::warn!(error = %e, "cannot resolve an aggregator address");
        }
        if addrs.is_empty() && !slots.is_empty() {
            // Keep what we have rather than dropping every connection on a DNS hiccup.
            continue;
        }
        let gone: Vec<SocketAddr> = slots
            .keys()
            .filter(|a| !addrs.contains_key(a))
            .copied()
            .collect();
        for addr in gone {
            if let Some((stop, _)) = slots.remove(&addr) {
                tracing::info!(%addr, "aggregator address no longer resolved; closing its connection");
                stop.cancel();
            }
        }
        for (addr, host) in addrs {
            if slots.contains_key(&addr) {
                continue;
            }
            if !first {
                tracing::info!(%addr, "new aggregator address");
            }
            let stop = CancellationToken::new();
            // Every line a slot logs carries the aggregator's address and host name.
            let span = tracing::info_span!("aggregator", %addr, %host);
            let task = tokio::spawn(
                failover::run_slot(Arc::clone(&shared), addr, host, stop.clone()).instrument(span),
            );
            slots.insert(addr, (stop, task));
        }
        first = false;
    }
    for (_, (stop, task)) in slots {
        stop.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(2), task).await;
    }
}
