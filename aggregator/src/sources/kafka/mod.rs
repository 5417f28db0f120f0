//! `[sources.NAME] type = "kafka"`: a consumer-group member that stores what it consumes in
//! the aggregator's buffers, and stores each partition's offset only once those records are
//! durable there: the group-commit fsync a Forward ack waits for is the commit point.
//!
//! ## Threads and data path
//! ```text
//! consumer thread (owns the BaseConsumer; the only caller of poll, so rebalance callbacks
//! run here and may block)
//!   poll -> decode (decode.rs) -> batch per partition run of one tag and tenant
//!        -> Tracker::dispatch (offsets.rs) -> the partition's store task
//! partition store task (tokio; one per assigned partition and assignment)
//!   MemoryBudget::reserve -> Pipeline::prepare -> Prepared::store -> CommitTicket::durable
//!   -> completion back to the consumer thread
//! consumer thread
//!   Tracker::complete -> store_offsets(watermark) ; librdkafka auto-commits stored offsets
//! ```
//!
//! ## Invariants
//! - **An offset is stored only after every message before it is durable** in every buffer it
//!   was routed to (or in dead letters): `enable.auto.offset.store = false`, offsets stored by
//!   this module only, as the contiguous watermark of each partition ([`offsets`]); commits are
//!   librdkafka's auto-commit of stored offsets, plus a synchronous commit at shutdown. A crash
//!   anywhere loses nothing: what was not committed is consumed again (duplicates only from
//!   that window; `id_key` makes them overwrite downstream).
//! - **A batch a buffer refuses is retried, never skipped**: a store task retries its batch
//!   (with backoff) until it is stored, holding back the batches after it on that partition.
//! - **Polling never stops**, so the member stays in its group: above `max_in_flight_bytes`
//!   every assigned partition is paused (and partitions assigned meanwhile too), and resumed
//!   below half of it. A full `block` buffer or a retried batch holds its bytes in flight, so
//!   it pauses consumption instead of growing memory.
//! - **Rebalance**: before a partition is revoked, its batches in flight get up to
//!   `drain_timeout` to become durable, their offsets are stored and committed
//!   (synchronously); then the partition is forgotten, and a completion of its old
//!   assignment (the tracker's epoch) is ignored. A lost assignment stores nothing.
//! - **Poison messages** (undecodable, or larger than a buffer frame) go to the source's dead letters
//!   (`<buffer.path>/sources/<name>/dead-letter/`) with topic, partition and offset, and count
//!   as done; when dead letters cannot be written, the batch is not dispatched and the
//!   partition is paused, its offset before the message, until it is assigned again.
//! - **A batch belongs to one assignment**: messages consumed before a revoke are never
//!   dispatched under the partition's next assignment, even when both happen within one poll.
//! - **Shutdown**: stop polling, give batches in flight up to `drain_timeout`, store their
//!   offsets, commit synchronously, close the consumer (leaving the group).

pub mod decode;
pub mod offsets;
mod store;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use logferry_common::event_time::EventTime;
use logferry_common::telemetry;
use prometheus::IntCounter;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Headers, Message as _};
use rdkafka::statistics::Statistics;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::ClientContext;
use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;

use self::decode::{Decoder, Message, Route};
use self::offsets::{Tp, Tracker};
use self::store::{Batch, Completion};
use crate::config::KafkaSourceConfig;
use crate::ingest::Pipeline;
use crate::outputs::{DeadItem, DeadLetters, Failure, FailureKind};
use crate::record::{Origin, Rec};

/// Longest wait in one poll: how soon a stop, a completion or a resume is seen.
const POLL: Duration = Duration::from_millis(100);
/// Most messages taken from librdkafka between two dispatches (and at most a quarter of
/// `max_in_flight_bytes`).
const MAX_POLL_MESSAGES: usize = 4096;
/// Most entry bytes in one batch (one buffer append), unless the buffers take less.
const MAX_BATCH_BYTES: usize = 4 * 1024 * 1024;

/// Why a Kafka source could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KafkaSourceError {
    /// librdkafka refused the configuration or the subscription.
    #[error("source {source_name}: {message}")]
    Client {
        /// The source.
        source_name: String,
        /// What librdkafka said.
        message: String,
    },
    /// The consumer thread could not be started.
    #[error("source {source_name}: cannot start its thread: {error}")]
    Thread {
        /// The source.
        source_name: String,
        /// Why.
        error: std::io::Error,
    },
}

/// A running Kafka source.
#[derive(Debug)]
pub struct KafkaSource {
    name: String,
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

/// The consumer properties for a source (its `librdkafka` options last; validation keeps them
/// off the properties set here).
pub fn client_config(c: &KafkaSourceConfig) -> ClientConfig {
    let mut cc = ClientConfig::new();
    cc.set("bootstrap.servers", &c.brokers)
        .set("group.id", &c.group_id)
        .set("enable.auto.commit", "true")
        .set("enable.auto.offset.store", "false")
        .set(
            "auto.commit.interval.ms",
            c.commit_interval.as_millis().max(1).to_string(),
        )
        .set("auto.offset.reset", c.start.as_str())
        .set("partition.assignment.strategy", c.assignment.as_str())
        .set("enable.partition.eof", "false")
        .set("statistics.interval.ms", "5000")
        // A subscribed topic that does not exist yet (its producer creates it) is found
        // within 30 s rather than librdkafka's default 5 minutes.
        .set("topic.metadata.refresh.interval.ms", "30000");
    if let Some(id) = &c.group_instance_id {
        cc.set("group.instance.id", id);
    }
    for (k, v) in &c.librdkafka {
        cc.set(k, v);
    }
    cc
}

/// Asks the brokers for their metadata (blocking, up to `timeout`) and checks that every
/// topic the source names exists and every regex matches one: what `validate
/// --check-outputs` prints for a source.
pub fn check(c: &KafkaSourceConfig, timeout: Duration) -> Result<String, String> {
    let consumer: BaseConsumer = client_config(c)
        .create()
        .map_err(|e| format!("cannot create the consumer: {e}"))?;
    let metadata = consumer
        .fetch_metadata(None, timeout)
        .map_err(|e| format!("metadata request failed: {e}"))?;
    let names: Vec<&str> = metadata.topics().iter().map(|t| t.name()).collect();
    let mut missing = Vec::new();
    let mut partitions = 0;
    for wanted in &c.topics {
        let matches: Vec<usize> = match wanted.strip_prefix('^') {
            Some(pattern) => {
                let re = regex::Regex::new(&format!("^{pattern}")).map_err(|e| e.to_string())?;
                (0..names.len())
                    .filter(|&i| re.is_match(names[i]))
                    .collect()
            }
            None => (0..names.len()).filter(|&i| names[i] == wanted).collect(),
        };
        if matches.is_empty() {
            missing.push(wanted.as_str());
        }
        partitions += matches
            .iter()
            .map(|&i| metadata.topics()[i].partitions().len())
            .sum::<usize>();
    }
    if !missing.is_empty() {
        return Err(format!(
            "no such topic on the brokers: {}",
            missing.join(", ")
        ));
    }
    Ok(format!(
        "{} broker(s), {partitions} partition(s) to consume",
        metadata.brokers().len()
    ))
}

impl KafkaSource {
    /// Creates the consumer, subscribes, and starts its thread (which joins the group in the
    /// background). `dir` is the source's directory (`<buffer.path>/sources/<name>`);
    /// `max_frame` the largest payload a buffer takes in one append (a batch stays under half
    /// of it; a larger message goes to dead letters).
    pub fn start(
        name: &str,
        config: &KafkaSourceConfig,
        pipeline: Arc<Pipeline>,
        dir: PathBuf,
        max_frame: usize,
    ) -> Result<KafkaSource, KafkaSourceError> {
        let client_err = |e: KafkaError| KafkaSourceError::Client {
            source_name: name.to_owned(),
            message: e.to_string(),
        };
        let (done_tx, done_rx) = mpsc::channel();
        let shared = Arc::new(Shared {
            name: name.to_owned(),
            drain_timeout: config.drain_timeout,
            state: Mutex::new(State {
                tracker: Tracker::new(),
                workers: HashMap::new(),
                done: done_rx,
                paused: false,
            }),
        });
        let context = Context {
            shared: Arc::clone(&shared),
        };
        let consumer: BaseConsumer<Context> = client_config(config)
            .create_with_context(context)
            .map_err(client_err)?;
        let topics: Vec<&str> = config.topics.iter().map(String::as_str).collect();
        consumer.subscribe(&topics).map_err(client_err)?;
        let stop = Arc::new(AtomicBool::new(false));
        let run = Run {
            consumer,
            shared,
            decoder: Decoder::new(config),
            spawn: store::Spawn {
                source: Arc::from(name),
                pipeline,
                done: done_tx,
                runtime: Handle::current(),
                stop: CancellationToken::new(),
            },
            dead_letters: DeadLetters::new(
                crate::outputs::dead_letter::dir_of(&dir),
                name,
                config.dead_letter.clone(),
            ),
            max_in_flight: config.max_in_flight_bytes.bytes(),
            max_batch: MAX_BATCH_BYTES.min(max_frame / 2),
            stop: Arc::clone(&stop),
            consumed: (
                telemetry::KAFKA_CONSUMED_RECORDS.with_label_values(&[name]),
                telemetry::KAFKA_CONSUMED_BYTES.with_label_values(&[name]),
            ),
            scratch: std::cell::RefCell::new(Vec::new()),
        };
        let thread = std::thread::Builder::new()
            .name(format!("kafka-{name}"))
            .spawn(move || run.run())
            .map_err(|error| KafkaSourceError::Thread {
                source_name: name.to_owned(),
                error,
            })?;
        tracing::info!(source = name, topics = ?config.topics, group = %config.group_id, "kafka source started");
        Ok(KafkaSource {
            name: name.to_owned(),
            stop,
            thread,
        })
    }

    /// Stops consuming, drains (up to `drain_timeout`), commits and leaves the group.
    pub async fn shutdown(self) {
        self.stop.store(true, Ordering::Relaxed);
        let name = self.name;
        let thread = self.thread;
        if !matches!(
            tokio::task::spawn_blocking(move || thread.join()).await,
            Ok(Ok(()))
        ) {
            tracing::error!(source = %name, "kafka source thread panicked");
        }
    }
}

/// What the consumer thread and the rebalance callbacks share.
struct Shared {
    name: String,
    drain_timeout: Duration,
    state: Mutex<State>,
}

struct State {
    tracker: Tracker,
    /// The store task of each assigned partition (dropped on revoke: the task ends).
    workers: HashMap<Tp, tokio::sync::mpsc::UnboundedSender<Batch>>,
    /// Completions of the store tasks.
    done: mpsc::Receiver<Completion>,
    /// Every partition is paused for back-pressure.
    paused: bool,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Applies the completions that arrived (waiting up to `wait` for the first one) and
    /// stores the offsets that moved.
    fn settle(&self, consumer: &BaseConsumer<Context>, wait: Duration) {
        let mut state = self.lock();
        let mut offsets: HashMap<Tp, i64> = HashMap::new();
        let mut next = state.done.recv_timeout(wait).ok();
        while let Some(c) = next {
            if let Some(offset) = state.tracker.complete(&c.tp, c.epoch, c.first) {
                offsets.insert(c.tp, offset);
            }
            next = state.done.try_recv().ok();
        }
        let age = state.tracker.oldest_timestamp_ms().map_or(0, |ms| {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i64);
            (now - ms).max(0) / 1000
        });
        drop(state);
        telemetry::KAFKA_LAG_SECONDS
            .with_label_values(&[self.name.as_str()])
            .set(age);
        self.store(consumer, offsets);
    }

    /// Stores `offsets` (each the next offset to consume) with `store_offsets`, which stores
    /// as is.
    fn store(&self, consumer: &BaseConsumer<Context>, offsets: HashMap<Tp, i64>) {
        if offsets.is_empty() {
            return;
        }
        let mut tpl = TopicPartitionList::new();
        for ((topic, partition), offset) in &offsets {
            if let Err(e) = tpl.add_partition_offset(topic, *partition, Offset::Offset(*offset)) {
                tracing::error!(source = %self.name, %topic, partition, error = %e, "cannot list an offset to store");
            }
        }
        if let Err(e) = consumer.store_offsets(&tpl) {
            // Not assigned any more (revoked meanwhile): its next owner consumes from the last
            // commit. Anything else is worth a warning.
            let code = offset_error_code(&e);
            telemetry::KAFKA_OFFSET_ERRORS
                .with_label_values(&[self.name.as_str(), "store", &code])
                .inc();
            if matches!(e, KafkaError::StoreOffset(RDKafkaErrorCode::State)) {
                tracing::debug!(source = %self.name, error = %e, "offsets of a revoked partition not stored");
            } else {
                tracing::warn!(source = %self.name, error = %e, "cannot store offsets");
            }
        }
    }

    /// Waits (up to `drain_timeout`) until no batch of `parts` is in flight, storing offsets
    /// as they complete; whether they all completed.
    fn drain(&self, consumer: &BaseConsumer<Context>, parts: &[Tp]) -> bool {
        let deadline = Instant::now() + self.drain_timeout;
        loop {
            let pending: usize = {
                let state = self.lock();
                parts.iter().map(|tp| state.tracker.pending(tp)).sum()
            };
            if pending == 0 {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                telemetry::KAFKA_DRAIN_TIMEOUTS
                    .with_label_values(&[self.name.as_str()])
                    .inc();
                tracing::warn!(source = %self.name, batches = pending, timeout = ?self.drain_timeout,
                    "batches in flight did not become durable within drain_timeout; they will be consumed again");
                return false;
            }
            self.settle(consumer, left.min(POLL));
        }
    }

    /// Commits the stored offsets synchronously (on revoke and at shutdown).
    fn commit(&self, consumer: &BaseConsumer<Context>) {
        match consumer.commit_consumer_state(CommitMode::Sync) {
            // Nothing stored since the last commit.
            Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
            Err(e) => {
                telemetry::KAFKA_OFFSET_ERRORS
                    .with_label_values(&[self.name.as_str(), "commit", &offset_error_code(&e)])
                    .inc();
                tracing::warn!(source = %self.name, error = %e, "offset commit failed");
            }
        }
    }

    /// Pauses every assigned partition above `max` bytes in flight, resumes below half.
    fn back_pressure(&self, consumer: &BaseConsumer<Context>, max: u64) {
        let mut state = self.lock();
        let bytes = state.tracker.in_flight_bytes();
        let pause = if !state.paused && bytes > max {
            true
        } else if state.paused && bytes <= max / 2 {
            false
        } else {
            return;
        };
        let tpl = tpl_of(state.tracker.assigned());
        let result = if pause {
            consumer.pause(&tpl)
        } else {
            consumer.resume(&tpl)
        };
        match result {
            Ok(()) => {
                state.paused = pause;
                telemetry::KAFKA_PAUSED_PARTITIONS
                    .with_label_values(&[self.name.as_str()])
                    .set(if pause { tpl.count() as i64 } else { 0 });
                tracing::info!(source = %self.name, in_flight_bytes = bytes, partitions = tpl.count(),
                    "{}", if pause { "paused: too many bytes in flight" } else { "resumed" });
            }
            Err(e) => tracing::warn!(source = %self.name, error = %e, "cannot pause or resume"),
        }
    }
}

fn tpl_of<'a>(parts: impl Iterator<Item = &'a Tp>) -> TopicPartitionList {
    let mut tpl = TopicPartitionList::new();
    for (topic, partition) in parts {
        tpl.add_partition(topic, *partition);
    }
    tpl
}

fn offset_error_code(e: &KafkaError) -> String {
    e.rdkafka_error_code()
        .map_or_else(|| "other".to_owned(), |c| format!("{c:?}"))
}

/// The rebalance and statistics callbacks; they run on the consumer thread, inside `poll`.
struct Context {
    shared: Arc<Shared>,
}

impl ClientContext for Context {
    fn stats(&self, statistics: Statistics) {
        for topic in statistics.topics.values() {
            for (partition, p) in &topic.partitions {
                // -1 is librdkafka's internal "unassigned" partition.
                if *partition < 0 || !p.desired {
                    continue;
                }
                telemetry::KAFKA_CONSUMER_LAG
                    .with_label_values(&[
                        self.shared.name.as_str(),
                        &topic.topic,
                        &partition.to_string(),
                    ])
                    .set(p.consumer_lag.max(0));
            }
        }
    }
}

impl ConsumerContext for Context {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let shared = &self.shared;
        match rebalance {
            Rebalance::Revoke(tpl) => {
                let parts: Vec<Tp> = tpl
                    .elements()
                    .iter()
                    .map(|e| (e.topic().to_owned(), e.partition()))
                    .collect();
                let lost = consumer.assignment_lost();
                telemetry::KAFKA_REBALANCES
                    .with_label_values(&[
                        shared.name.as_str(),
                        if lost { "lost" } else { "revoke" },
                    ])
                    .inc();
                if !lost {
                    // Drain first, forget second: what became durable is stored, and committed
                    // before the partitions go to their next owner.
                    shared.drain(consumer, &parts);
                    shared.commit(consumer);
                }
                let mut state = shared.lock();
                for tp in &parts {
                    state.tracker.revoke(tp);
                    state.workers.remove(tp);
                    telemetry::KAFKA_CONSUMER_LAG
                        .remove_label_values(&[shared.name.as_str(), &tp.0, &tp.1.to_string()])
                        .ok();
                }
                tracing::info!(source = %shared.name, partitions = parts.len(), lost, "partitions revoked");
            }
            Rebalance::Assign(_) => {}
            Rebalance::Error(e) => {
                telemetry::KAFKA_REBALANCES
                    .with_label_values(&[shared.name.as_str(), "error"])
                    .inc();
                tracing::warn!(source = %shared.name, error = %e, "rebalance error");
            }
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Assign(tpl) = rebalance else {
            return;
        };
        let shared = &self.shared;
        telemetry::KAFKA_REBALANCES
            .with_label_values(&[shared.name.as_str(), "assign"])
            .inc();
        let mut state = shared.lock();
        for e in tpl.elements() {
            state.tracker.assign((e.topic().to_owned(), e.partition()));
        }
        if state.paused {
            // Paused for back-pressure: so are partitions that arrive meanwhile.
            if let Err(e) = consumer.pause(tpl) {
                tracing::warn!(source = %shared.name, error = %e, "cannot pause assigned partitions");
            }
            let n = state.tracker.assigned().count() as i64;
            telemetry::KAFKA_PAUSED_PARTITIONS
                .with_label_values(&[shared.name.as_str()])
                .set(n);
        }
        tracing::info!(source = %shared.name, partitions = tpl.count(), "partitions assigned");
    }

    fn commit_callback(&self, result: rdkafka::error::KafkaResult<()>, _: &TopicPartitionList) {
        match result {
            // Nothing was stored since the last commit.
            Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
            Err(e) => {
                telemetry::KAFKA_OFFSET_ERRORS
                    .with_label_values(&[
                        self.shared.name.as_str(),
                        "commit",
                        &offset_error_code(&e),
                    ])
                    .inc();
                tracing::warn!(source = %self.shared.name, error = %e, "offset commit failed");
            }
        }
    }
}

/// The consumer thread.
struct Run {
    consumer: BaseConsumer<Context>,
    shared: Arc<Shared>,
    decoder: Decoder,
    spawn: store::Spawn,
    dead_letters: DeadLetters,
    max_in_flight: u64,
    /// Most entry bytes in one batch.
    max_batch: usize,
    stop: Arc<AtomicBool>,
    /// This source's series of the consumed records and bytes counters.
    consumed: (IntCounter, IntCounter),
    /// Working space of the decoder.
    scratch: std::cell::RefCell<Vec<u8>>,
}

/// A batch being built: consecutive messages of one partition with one route.
struct Building {
    tp: Tp,
    /// The assignment its messages were consumed in.
    epoch: Option<u64>,
    route: Route,
    first: i64,
    last: i64,
    timestamp_ms: Option<i64>,
    entries: Vec<u8>,
    records: u32,
    bytes: u64,
}

impl Run {
    fn run(self) {
        let span = tracing::info_span!("source", source = %self.shared.name);
        let _enter = span.enter();
        while !self.stop.load(Ordering::Relaxed) {
            self.shared.settle(&self.consumer, Duration::ZERO);
            self.shared
                .back_pressure(&self.consumer, self.max_in_flight);
            self.poll_and_dispatch();
        }
        tracing::info!("stopping: draining batches in flight");
        let all: Vec<Tp> = self.shared.lock().tracker.assigned().cloned().collect();
        self.shared.drain(&self.consumer, &all);
        self.shared.commit(&self.consumer);
        self.spawn.stop.cancel();
        self.shared.lock().workers.clear();
        // Dropping the consumer closes it: it leaves the group (revoking what it has, with
        // nothing in flight now).
        drop(self.consumer);
        tracing::info!("stopped");
    }

    /// Polls up to [`MAX_POLL_MESSAGES`] messages (waiting at most [`POLL`] for the first) and
    /// dispatches them as batches.
    fn poll_and_dispatch(&self) {
        // One batch per partition (a consumer has few): found by a scan, not a hash of an
        // owned key, so a message costs no allocation unless it starts a batch.
        let mut building: Vec<Building> = Vec::new();
        let mut timeout = POLL;
        // A cycle takes at most a quarter of max_in_flight_bytes, so the pause between cycles
        // bounds what is in flight.
        let mut taken = 0u64;
        for _ in 0..MAX_POLL_MESSAGES {
            if taken >= self.max_in_flight / 4 {
                break;
            }
            match self.consumer.poll(timeout) {
                None => break,
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "consumer error");
                    break;
                }
                Some(Ok(m)) => {
                    taken += m.payload_len() as u64;
                    if let Some(full) = self.add(&mut building, &m) {
                        self.dispatch(full);
                    }
                }
            }
            timeout = Duration::ZERO;
        }
        for b in building {
            self.dispatch(b);
        }
    }

    /// Adds a message to its partition's batch; returns a batch to dispatch first when the
    /// message does not fit in it (another route, or full).
    fn add(&self, building: &mut Vec<Building>, m: &BorrowedMessage<'_>) -> Option<Building> {
        let message = Message {
            topic: m.topic(),
            partition: m.partition(),
            offset: m.offset(),
            timestamp_ms: m.timestamp().to_millis(),
            payload: m.payload(),
        };
        let len = message.payload.map_or(0, <[u8]>::len) as u64;
        self.consumed.0.inc();
        self.consumed.1.inc_by(len);
        let headers = m.headers();
        let header = |name: &str| {
            headers.and_then(|h| h.iter().find(|x| x.key == name).and_then(|x| x.value))
        };
        let mut flushed = None;
        let mut at = building
            .iter()
            .position(|b| b.tp.1 == message.partition && b.tp.0 == message.topic);
        if let Some(i) = at {
            let b = &building[i];
            if !self.decoder.has_route(&message, header, &b.route)
                || b.entries.len() + len as usize + 64 > self.max_batch
            {
                flushed = Some(building.swap_remove(i));
                at = None;
            }
        }
        let i = match at {
            Some(i) => i,
            None => {
                let tp: Tp = (message.topic.to_owned(), message.partition);
                let epoch = self.shared.lock().tracker.epoch(&tp);
                building.push(Building {
                    tp,
                    epoch,
                    route: self.decoder.route(&message, header),
                    first: message.offset,
                    last: message.offset,
                    timestamp_ms: message.timestamp_ms,
                    entries: Vec::new(),
                    records: 0,
                    bytes: 0,
                });
                building.len() - 1
            }
        };
        let b = &mut building[i];
        b.last = message.offset;
        b.bytes += len;
        let decoded = if len as usize + 64 > self.max_batch {
            Err((FailureKind::TooLarge, format!(
                "a message of {len} bytes does not fit a buffer frame (server.max_decompressed_bytes)"
            )))
        } else {
            self.decoder
                .decode(&message, &mut b.entries, &mut self.scratch.borrow_mut())
                .map_err(|e| (FailureKind::Undecodable, e.0))
        };
        match decoded {
            Ok(()) => b.records += 1,
            Err((kind, reason)) => {
                // The poison message leaves the batch's run of offsets as it is: once it is in
                // dead letters it is done like the others. If dead letters cannot take it, the
                // batch is not dispatched (nothing past it on this partition is stored).
                if !self.dead_letter(&message, &b.route, kind, &reason) {
                    // Stop the partition here: its offset stays before this message, which its
                    // next owner (or this process after a restart) consumes again.
                    let tp = building.swap_remove(i).tp;
                    self.shared.lock().tracker.revoke(&tp);
                    if let Err(e) = self.consumer.pause(&tpl_of(std::iter::once(&tp))) {
                        tracing::warn!(error = %e, "cannot pause the partition");
                    }
                    tracing::error!(topic = %message.topic, partition = message.partition, offset = message.offset,
                        "dead letters cannot take a message that cannot be stored; its partition is paused until it is assigned again");
                }
            }
        }
        flushed
    }

    /// Writes a message that cannot be stored (undecodable, too large) to dead letters;
    /// whether it is there (or dropped by `when_full = "drop"`, counted).
    fn dead_letter(&self, m: &Message<'_>, route: &Route, kind: FailureKind, reason: &str) -> bool {
        use logferry_common::msgpack::{write_bin, write_map_len, write_str, write_uint};
        let mut record = Vec::new();
        write_map_len(&mut record, 4);
        write_str(&mut record, "topic");
        write_str(&mut record, m.topic);
        write_str(&mut record, "partition");
        write_uint(&mut record, m.partition.max(0) as u64);
        write_str(&mut record, "offset");
        write_uint(&mut record, m.offset.max(0) as u64);
        write_str(&mut record, "message");
        write_bin(&mut record, m.payload.unwrap_or_default());
        let item = DeadItem {
            rec: Rec {
                origin: Origin {
                    seq: m.offset.max(0) as u64,
                    created_ns: 0,
                },
                frame: 0,
                index: 0,
                tag: Arc::from(route.tag.as_str()),
                time: EventTime::now(),
                record: Bytes::from(record),
            },
            failure: Failure::new(
                kind,
                format!("{}[{}] offset {}: {reason}", m.topic, m.partition, m.offset),
            ),
        };
        match self.dead_letters.write(&[item]) {
            Ok(()) => true,
            Err(e) => {
                tracing::error!(error = %e, "cannot write dead letters");
                false
            }
        }
    }

    /// Hands a batch to its partition's store task (a batch of poison messages only is done
    /// at once).
    fn dispatch(&self, b: Building) {
        let mut state = self.shared.lock();
        // Consumed in an assignment that has ended (revoked, and maybe assigned again since,
        // within the same poll): its next owner consumes it again.
        if state.tracker.epoch(&b.tp) != b.epoch {
            return;
        }
        let Some(epoch) = state
            .tracker
            .dispatch(&b.tp, (b.first, b.last), b.bytes, b.timestamp_ms)
        else {
            return; // revoked meanwhile: its next owner consumes it again
        };
        let batch = Batch {
            tp: b.tp.clone(),
            epoch,
            first: b.first,
            tag: b.route.tag,
            tenant: b.route.tenant,
            entries: Bytes::from(b.entries),
            records: b.records,
            bytes: b.bytes,
        };
        if batch.records == 0 {
            let offset = state.tracker.complete(&batch.tp, epoch, batch.first);
            drop(state);
            if let Some(offset) = offset {
                self.shared
                    .store(&self.consumer, HashMap::from([(batch.tp, offset)]));
            }
            return;
        }
        let tx = state
            .workers
            .entry(b.tp)
            .or_insert_with(|| self.spawn.worker());
        if let Err(e) = tx.send(batch) {
            // The task ended (only at shutdown): the batch stays in flight and is consumed
            // again.
            tracing::debug!(partition = e.0.tp.1, "store task gone");
        }
    }
}
