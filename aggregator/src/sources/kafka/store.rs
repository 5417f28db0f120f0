//! The store task of one assigned partition: its batches, in offset order, into the buffers
//! their route takes them to, each until it is durable there (see the parent module).
//!
//! A batch goes through the same ingest steps as a Forward request (`MemoryBudget::reserve`,
//! `Pipeline::prepare`, `Prepared::store`, `CommitTicket::durable`) with the partition's own
//! [`Lanes`], so batches of one partition enter each buffer in offset order. A batch that
//! could not be stored everywhere (a buffer full with `reject`, `block_timeout`, an IO error,
//! an fsync that failed) is stored again after a backoff, never skipped: the batches after it
//! wait, and their bytes stay in flight (which pauses the consumer). Buffers that took it
//! before the failure get it twice (at-least-once). A batch with no route and no pipeline is
//! done at once (its records counted as dropped, `no_route`, as a Forward request's).

use std::sync::{mpsc, Arc};
use std::time::Duration;

use bytes::Bytes;
use logferry_common::backoff::Backoff;
use logferry_common::forward::EventBatch;
use logferry_common::telemetry;
use tokio::runtime::Handle;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};
use tokio_util::sync::CancellationToken;

use super::offsets::Tp;
use crate::ingest::{Holder, Lanes, Pipeline};

/// Consumed messages of one partition and one route, as canonical entries.
#[derive(Debug)]
pub(super) struct Batch {
    pub(super) tp: Tp,
    /// The assignment it was consumed in.
    pub(super) epoch: u64,
    /// Its first offset (its key in the tracker).
    pub(super) first: i64,
    pub(super) tag: String,
    pub(super) tenant: Option<String>,
    pub(super) entries: Bytes,
    pub(super) records: u32,
    /// Value bytes of its messages.
    pub(super) bytes: u64,
}

/// A batch is durable everywhere it was routed to.
#[derive(Debug)]
pub(super) struct Completion {
    pub(super) tp: Tp,
    pub(super) epoch: u64,
    pub(super) first: i64,
}

/// What starting a store task needs.
pub(super) struct Spawn {
    pub(super) source: Arc<str>,
    pub(super) pipeline: Arc<Pipeline>,
    pub(super) done: mpsc::Sender<Completion>,
    pub(super) runtime: Handle,
    /// Cancelled once the source stopped: a batch being retried gives up (it is consumed
    /// again after the restart).
    pub(super) stop: CancellationToken,
}

impl Spawn {
    /// Starts a store task; it ends when the returned sender is dropped.
    pub(super) fn worker(&self) -> UnboundedSender<Batch> {
        let (tx, rx) = unbounded_channel();
        self.runtime.spawn(run(
            rx,
            Arc::clone(&self.source),
            Arc::clone(&self.pipeline),
            self.done.clone(),
            self.stop.clone(),
        ));
        tx
    }
}

/// First wait before a refused batch is stored again; doubles up to [`RETRY_MAX`].
const RETRY_INITIAL: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(5);

async fn run(
    mut batches: UnboundedReceiver<Batch>,
    source: Arc<str>,
    pipeline: Arc<Pipeline>,
    done: mpsc::Sender<Completion>,
    stop: CancellationToken,
) {
    let mut lanes = Lanes::new();
    let holder = Holder::default();
    while let Some(batch) = batches.recv().await {
        let mut backoff = Backoff::new(RETRY_INITIAL, RETRY_MAX);
        loop {
            match store(&pipeline, &batch, &mut lanes, &holder).await {
                Ok(()) => break,
                Err(reason) => {
                    telemetry::KAFKA_STORE_RETRIES
                        .with_label_values(&[&*source, reason.as_str()])
                        .inc();
                    tracing::warn!(source = %source, topic = %batch.tp.0, partition = batch.tp.1,
                        offset = batch.first, %reason, "batch not stored; retrying");
                    tokio::select! {
                        () = tokio::time::sleep(backoff.next_wait()) => {}
                        () = stop.cancelled() => return,
                    }
                }
            }
        }
        let completion = Completion {
            tp: batch.tp,
            epoch: batch.epoch,
            first: batch.first,
        };
        if done.send(completion).is_err() {
            return;
        }
    }
}

/// Stores one batch until durable; the store error's code when it was not.
async fn store(
    pipeline: &Pipeline,
    batch: &Batch,
    lanes: &mut Lanes,
    holder: &Holder,
) -> Result<(), String> {
    let bound = batch.entries.len() + batch.tag.len() + 64;
    let memory = pipeline
        .memory
        .reserve(bound, holder)
        .await
        .ok_or_else(|| "shutting_down".to_owned())?;
    let event = EventBatch {
        tag: batch.tag.clone(),
        entries: batch.entries.clone(),
        records: batch.records,
        skipped: 0,
        // Not a Forward chunk id: marks the batch as one that is acknowledged (by the offset
        // store), so giving it up never counts its records as dropped.
        chunk: Some(Bytes::new()),
        wire_bytes: batch.bytes as usize,
    };
    let Some(prepared) = pipeline.prepare(event, batch.tenant.as_deref(), lanes, memory) else {
        return Ok(());
    };
    // Never abandoned: the batch waits for room like a connected sender's request.
    let tickets = prepared
        .store(pipeline, &CancellationToken::new())
        .await
        .map_err(|e| e.code().to_owned())?;
    for ticket in tickets {
        ticket
            .durable()
            .await
            .map_err(|_| "not_durable".to_owned())?;
    }
    Ok(())
}
