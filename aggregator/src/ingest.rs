//! The ingest room: what every input shares to store a batch of records.
//!
//! An input (a Forward connection today) decodes requests; this module routes each batch to
//! its outputs' buffers and appends it there, and the input waits on the returned commit
//! tickets before it acknowledges anything. A new input calls the same three steps:
//!
//! ```text
//! MemoryBudget::reserve(bound)          before the request is parsed or inflated
//!   -> Pipeline::prepare(batch, lanes)  route by tag, build the frame payload, count
//!   -> Prepared::store()                append to every routed buffer, in lane order
//!   -> CommitTicket::durable()          then, and only then, ack
//! ```
//!
//! ## Invariants
//! - **Ack only after durable.** [`Prepared::store`] returns one ticket per routed buffer; an
//!   input acks a request only after every one of them resolved `Ok`. A request that could
//!   not be stored everywhere is never acked.
//! - **Memory is bounded process-wide.** Bytes decoded (and inflated) but not yet handed to a
//!   buffer are held against one [`MemoryBudget`] (`[ingest] memory_limit`), reserved
//!   *before* a request is parsed, for the most its parse may allocate, and shrunk to the
//!   payload once it is built. Once appended, a payload is the buffer's to bound (its queue
//!   of at most 64 MiB). An input that finds no budget free
//!   stops reading. One connection holds at most an eighth of the budget at once, beyond its
//!   first request, so one sender's requests parked on a full buffer cannot starve the rest.
//! - **A full buffer holds back only the requests routed to it.** Each request is stored on
//!   its own task; a request waiting for room (`overflow_action = "block"`) does not stop
//!   later requests of the same input that go to other buffers. It waits at most
//!   `block_timeout`, then fails with [`StoreError::BlockTimeout`] (and its input refuses it,
//!   as with `reject`). When its input goes away meanwhile, it gives up at once
//!   ([`StoreError::Abandoned`]; records of a request that asked for no ack are counted as
//!   dropped, `sender_gone`), so a departed peer does not keep its slot; requests of a
//!   departed input that are not waiting for room are still stored.
//! - **Order per input and buffer.** The requests of one input enter each buffer in the
//!   order the input prepared them ([`Lanes`]), even when an earlier one waits for room.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use logferry_common::chunk::{AppendError, Buffer, CommitTicket};
use logferry_common::forward::{Entries, EventBatch};
use logferry_common::payload;
use logferry_common::telemetry;
use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::dedupe::AckedChunks;
use crate::route::Router;
use crate::tenants::{Registry, Request};

/// Everything an input needs to store a batch: shared by every connection of every listener.
#[derive(Debug)]
pub struct Pipeline {
    /// Tag routes; swapped whole on reload.
    router: RwLock<Arc<Router>>,
    /// The tenant pipelines, when `[pipelines]` is on.
    tenants: Option<Arc<Registry>>,
    /// One buffer per output, indexed like the router's output indices.
    buffers: Vec<Buffer>,
    /// Recently acked requests.
    pub acked: AckedChunks,
    /// Bytes decoded but not yet in a buffer.
    pub memory: MemoryBudget,
    /// Longest wait for room in a full `block` buffer.
    block_timeout: Duration,
}

impl Pipeline {
    /// A pipeline over `buffers`, routed by `router`.
    pub fn new(
        router: Router,
        buffers: Vec<Buffer>,
        acked: AckedChunks,
        memory: MemoryBudget,
        block_timeout: Duration,
    ) -> Self {
        Self {
            router: RwLock::new(Arc::new(router)),
            tenants: None,
            buffers,
            acked,
            memory,
            block_timeout,
        }
    }

    /// Also stores each request in the buffers of the tenant pipelines that take it.
    pub fn with_tenants(mut self, registry: Arc<Registry>) -> Self {
        self.tenants = Some(registry);
        self
    }

    /// The current routing table.
    pub fn router(&self) -> Arc<Router> {
        Arc::clone(&self.router.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// Replaces the routing table (config reload).
    pub fn set_router(&self, router: Router) {
        *self.router.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(router);
    }

    /// The buffers, one per output.
    pub fn buffers(&self) -> &[Buffer] {
        &self.buffers
    }

    /// Routes `batch` (by tag to the admin's outputs; by tenant to the tenant pipelines that
    /// take it, `tenant` being its sender's: its user's, client entry's or listener's, or a
    /// source's) and builds the frame its buffers get, taking each buffer's next turn in
    /// `lanes`. `None` when there is nothing to store: no route and no pipeline (counted as
    /// dropped, `no_route`) or no valid record. `memory` is shrunk to the payload; the batch
    /// (inflated entries) is dropped here, before any wait for room.
    pub fn prepare(
        &self,
        batch: EventBatch,
        tenant: Option<&str>,
        lanes: &mut Lanes,
        mut memory: Reserved,
    ) -> Option<Prepared> {
        if batch.skipped > 0 {
            telemetry::DROPPED_RECORDS
                .with_label_values(&["invalid_event"])
                .inc_by(u64::from(batch.skipped));
        }
        telemetry::INPUT_RECORDS.inc_by(u64::from(batch.records));
        let router = self.router();
        let routed = router.route(&batch.tag);
        let pipelines = match (&self.tenants, batch.records) {
            (Some(registry), 1..) => {
                let first = Entries::new(&batch.entries)
                    .next()
                    .and_then(Result::ok)
                    .map(|e| e.record);
                Request::new(&batch.tag, tenant, first)
                    .map(|request| registry.select(&request))
                    .unwrap_or_default()
            }
            _ => Vec::new(),
        };
        if routed.is_none() && pipelines.is_empty() {
            telemetry::DROPPED_RECORDS
                .with_label_values(&["no_route"])
                .inc_by(u64::from(batch.records));
            return None;
        }
        if batch.records == 0 {
            return None;
        }
        let records = batch.records;
        let unacked = batch.chunk.is_none();
        let payload = Bytes::from(payload::encode(&batch.tag, &batch.entries, records));
        drop(batch);
        memory.shrink_to(payload.len());
        let mut targets: Vec<Turn> = routed
            .into_iter()
            .flatten()
            .map(|&output| lanes.next_turn(&self.buffers[output]))
            .collect();
        for pipeline in &pipelines {
            pipeline.stats.records_in(u64::from(records));
            targets.extend(pipeline.buffers.iter().map(|b| lanes.next_turn(b)));
        }
        Some(Prepared {
            payload,
            records,
            unacked,
            targets,
            _memory: memory,
        })
    }
}

/// A request ready to be appended: its payload, the buffers it goes to with their turns, and
/// its share of the memory budget (released once every buffer has it).
#[derive(Debug)]
pub struct Prepared {
    payload: Bytes,
    records: u32,
    /// The sender asked for no ack: if the request is given up, its records are lost.
    unacked: bool,
    targets: Vec<Turn>,
    _memory: Reserved,
}

/// Why a request was not stored.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// A buffer refused the append (full with `reject`, too large, closed, IO).
    #[error("buffer {buffer}: {source}")]
    Append {
        /// The buffer's name.
        buffer: String,
        /// Why.
        source: AppendError,
    },
    /// Its input went away while the request waited for room in a full buffer.
    #[error("buffer {buffer} had no room and the sender is gone")]
    Abandoned {
        /// The buffer's name.
        buffer: String,
    },
    /// A `block` buffer had no room within `block_timeout`.
    #[error("buffer {buffer} had no room within block_timeout ({timeout:?})")]
    BlockTimeout {
        /// The buffer's name.
        buffer: String,
        /// The configured wait.
        timeout: Duration,
    },
}

impl StoreError {
    /// A short stable name for metric labels.
    pub fn code(&self) -> &'static str {
        match self {
            StoreError::Append { source, .. } => source.code(),
            StoreError::BlockTimeout { .. } => "block_timeout",
            StoreError::Abandoned { .. } => "sender_gone",
        }
    }
}

impl Prepared {
    /// Appends the request to every routed buffer, each in its turn, waiting for room at
    /// most `block_timeout` in all; returns the commit tickets. Once `abandon` is cancelled
    /// (its input is gone), a request still waiting for room in a full buffer gives up; one
    /// that is merely queued behind its input's earlier requests, or being appended, is still
    /// stored. Cancel-safe: dropping the future gives up the turns (later requests go ahead)
    /// and never acks anything.
    ///
    /// # Errors
    /// The first buffer that refused, timed out or was given up on. Buffers appended to
    /// before it keep the records (the sender's re-send makes a duplicate there, never a loss).
    pub async fn store(
        self,
        pipeline: &Pipeline,
        abandon: &CancellationToken,
    ) -> Result<Vec<CommitTicket>, StoreError> {
        let deadline = Instant::now() + pipeline.block_timeout;
        let mut tickets = Vec::with_capacity(self.targets.len());
        for turn in self.targets {
            let buffer = &turn.buffer;
            let append = async {
                // The previous request of this input for this buffer is done with it (stored,
                // failed or dropped) when its sender is gone.
                if let Some(previous) = turn.after {
                    let _ = previous.await;
                }
                buffer.append(self.payload.clone(), self.records).await
            };
            let give_up = async {
                abandon.cancelled().await;
                while !buffer.is_full() {
                    tokio::time::sleep(ABANDON_POLL).await;
                }
            };
            let appended = tokio::select! {
                appended = tokio::time::timeout_at(deadline, append) => appended,
                () = give_up => {
                    if self.unacked {
                        telemetry::DROPPED_RECORDS
                            .with_label_values(&["sender_gone"])
                            .inc_by(u64::from(self.records));
                    }
                    return Err(StoreError::Abandoned {
                        buffer: buffer.name().to_owned(),
                    });
                }
            };
            let ticket = match appended {
                Ok(Ok(ticket)) => ticket,
                Ok(Err(source)) => {
                    return Err(StoreError::Append {
                        buffer: buffer.name().to_owned(),
                        source,
                    })
                }
                Err(_) => {
                    return Err(StoreError::BlockTimeout {
                        buffer: buffer.name().to_owned(),
                        timeout: pipeline.block_timeout,
                    })
                }
            };
            tickets.push(ticket);
            drop(turn.done);
        }
        Ok(tickets)
    }
}

/// How often a request whose input is gone checks whether its buffer is still full.
const ABANDON_POLL: Duration = Duration::from_millis(100);

/// One input's place in line at each buffer (by name): the next request for a buffer appends
/// only after the previous one for it is done with it.
#[derive(Debug, Default)]
pub struct Lanes(HashMap<String, oneshot::Receiver<()>>);

/// A request's turn at one buffer.
#[derive(Debug)]
struct Turn {
    buffer: Buffer,
    /// Resolves (with an error: the sender is dropped, never used) when the previous request
    /// of the input is done with this buffer.
    after: Option<oneshot::Receiver<()>>,
    /// Dropped when this request is done with the buffer.
    done: oneshot::Sender<()>,
}

impl Lanes {
    /// No request in line yet.
    pub fn new() -> Self {
        Self::default()
    }

    fn next_turn(&mut self, buffer: &Buffer) -> Turn {
        let (done, next) = oneshot::channel();
        let after = match self.0.get_mut(buffer.name()) {
            Some(lane) => Some(std::mem::replace(lane, next)),
            None => {
                self.0.insert(buffer.name().to_owned(), next);
                None
            }
        };
        Turn {
            buffer: buffer.clone(),
            after,
            done,
        }
    }
}

/// The process-wide budget of bytes decoded but not yet handed to a buffer.
#[derive(Debug)]
pub struct MemoryBudget {
    /// In KiB.
    kib: Arc<Semaphore>,
    limit_kib: u32,
}

const KIB: usize = 1024;

impl MemoryBudget {
    /// A budget of `limit` bytes.
    pub fn new(limit: u64) -> Self {
        let limit_kib = u32::try_from(limit.div_ceil(KIB as u64))
            .unwrap_or(u32::MAX)
            .max(1);
        telemetry::INGEST_MEMORY_LIMIT_BYTES.set(i64::from(limit_kib) * KIB as i64);
        Self {
            kib: Arc::new(Semaphore::new(limit_kib as usize)),
            limit_kib,
        }
    }

    /// Waits until `bytes` (at most the whole budget) are free, and holds them for `holder`.
    /// `None` once the budget is closed ([`MemoryBudget::close`], at shutdown).
    pub async fn reserve(&self, bytes: usize, holder: &Holder) -> Option<Reserved> {
        let kib = u32::try_from(bytes.div_ceil(KIB))
            .unwrap_or(u32::MAX)
            .clamp(1, self.limit_kib);
        let permit = match Arc::clone(&self.kib).try_acquire_many_owned(kib) {
            Ok(permit) => permit,
            Err(_) => {
                telemetry::INGEST_MEMORY_WAITS.inc();
                Arc::clone(&self.kib).acquire_many_owned(kib).await.ok()?
            }
        };
        holder.0.fetch_add(kib as usize, Ordering::Relaxed);
        telemetry::INGEST_MEMORY_BYTES.add(i64::from(kib) * KIB as i64);
        Some(Reserved {
            permit,
            holder: Arc::clone(&holder.0),
        })
    }

    /// Stops granting memory: inputs waiting for some give up (shutdown stops reading).
    pub fn close(&self) {
        self.kib.close();
    }

    /// Whether `holder` may take more now: it holds nothing, or less than an eighth of the
    /// budget.
    pub fn admits(&self, holder: &Holder) -> bool {
        let held = holder.0.load(Ordering::Relaxed);
        held == 0 || held < (self.limit_kib as usize / 8).max(1)
    }
}

/// What one input (a connection) holds of the [`MemoryBudget`].
#[derive(Debug, Default, Clone)]
pub struct Holder(Arc<AtomicUsize>);

/// Bytes held against the [`MemoryBudget`]; returned on drop.
#[derive(Debug)]
pub struct Reserved {
    permit: OwnedSemaphorePermit,
    holder: Arc<AtomicUsize>,
}

impl Reserved {
    /// Gives back all but `bytes` (never less than 1 KiB held).
    pub fn shrink_to(&mut self, bytes: usize) {
        let keep = bytes.div_ceil(KIB).max(1);
        let held = self.permit.num_permits();
        if keep < held {
            if let Some(excess) = self.permit.split(held - keep) {
                self.release(excess.num_permits());
            }
        }
    }

    fn release(&self, kib: usize) {
        self.holder.fetch_sub(kib, Ordering::Relaxed);
        telemetry::INGEST_MEMORY_BYTES.sub(kib as i64 * KIB as i64);
    }
}

impl Drop for Reserved {
    fn drop(&mut self) {
        self.release(self.permit.num_permits());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_reservation_waits_for_room_and_shrinks_to_what_it_keeps() {
        let budget = MemoryBudget::new(64 * 1024);
        let (a, b) = (Holder::default(), Holder::default());
        let mut first = budget.reserve(48 * 1024, &a).await.unwrap();
        assert_eq!(a.0.load(Ordering::Relaxed), 48);
        let second = budget.reserve(32 * 1024, &b);
        let mut second = std::pin::pin!(second);
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        assert!(std::future::Future::poll(second.as_mut(), &mut cx).is_pending());
        first.shrink_to(10_000);
        assert_eq!(a.0.load(Ordering::Relaxed), 10);
        let second = second.await.unwrap();
        assert_eq!(b.0.load(Ordering::Relaxed), 32);
        drop((first, second));
        assert_eq!(
            (a.0.load(Ordering::Relaxed), b.0.load(Ordering::Relaxed)),
            (0, 0)
        );
        // More than the whole budget takes the whole budget.
        let all = budget.reserve(1 << 30, &a).await.unwrap();
        assert_eq!(all.permit.num_permits(), 64);
        drop(all);
        budget.close();
        assert!(budget.reserve(1, &a).await.is_none());
    }

    #[tokio::test]
    async fn one_holder_is_admitted_past_an_eighth_only_when_it_holds_nothing() {
        let budget = MemoryBudget::new(8 * 1024 * 1024);
        let holder = Holder::default();
        assert!(budget.admits(&holder));
        let big = budget.reserve(4 * 1024 * 1024, &holder).await.unwrap();
        assert!(!budget.admits(&holder));
        drop(big);
        let small = budget.reserve(512 * 1024, &holder).await.unwrap();
        assert!(budget.admits(&holder));
        drop(small);
    }

    #[tokio::test]
    async fn lanes_hand_each_buffer_to_requests_in_order() {
        let tmp = tempfile::tempdir().unwrap();
        let open = |name: &str| {
            let options = logferry_common::chunk::BufferOptions::new(tmp.path().join(name), name);
            Buffer::open(options).unwrap().0
        };
        let (a, b) = (open("a"), open("b"));
        let mut lanes = Lanes::new();
        let first = lanes.next_turn(&a);
        let mut second = lanes.next_turn(&a);
        let other = lanes.next_turn(&b);
        assert!(first.after.is_none() && other.after.is_none());
        let after = second.after.as_mut().unwrap();
        assert!(after
            .try_recv()
            .is_err_and(|e| e == oneshot::error::TryRecvError::Empty));
        drop(first.done);
        assert!(after
            .try_recv()
            .is_err_and(|e| e == oneshot::error::TryRecvError::Closed));
    }
}
