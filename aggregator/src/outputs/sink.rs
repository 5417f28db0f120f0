//! The contract every output implements ([`Sink`]), and [`Output`], the configured output
//! that dispatches to one sink statically (one enum arm per output type, no boxing).
//!
//! ## Sending
//! [`Sink::send`] gets records in chunk order and makes one attempt at each: it encodes them,
//! batches them to its own limits (bytes, records per request), and says per record, in order:
//!
//! | outcome | meaning | the worker (`worker.rs`) then |
//! |---|---|---|
//! | [`Outcome::Delivered`] | the sink has it durably (file fsync'd, bulk item 2xx, Kafka report OK, entry written) | counts it; never sends it again |
//! | [`Outcome::Retry`] | a passing failure (429, 5xx, timeout, broker or file lock unavailable) | sends it again after a backoff, until `retry.timeout` (then dead letters, `retry_timeout`) |
//! | [`Outcome::Reject`] | this record can never be delivered as it is (mapping error, too large, unencodable) | writes it to dead letters with the failure |
//!
//! An `Err(`[`OutputError`]`)` is a failure of the attempt as a whole (connection refused, a
//! whole request answered 5xx, nothing delivered): every record counts as `Retry` with its
//! kind. A sink returns `Err` only when nothing of the attempt was delivered; once part of it
//! was, it returns the outcomes, and the records it did not get to are `Retry`.
//!
//! ## Invariants
//! - `send` returns exactly one outcome per record, in order (a sink that does not is treated
//!   as failing: every record retries, kind `internal`).
//! - A chunk is released only after each of its records was `Delivered`, or `Reject`ed (or
//!   timed out) and is durable in the dead-letter directory. A sink therefore says `Delivered`
//!   only once the record cannot be lost by deleting the chunk.
//! - The framework owns retries with backoff, dead letters, metrics and health: a sink reports
//!   each failure in its outcome instead of retrying it under a policy of its own (librdkafka's
//!   resends within `delivery_timeout` aside), and never writes dead letters.
//! - Delivery is at-least-once, so a sink must take the same record again: after a `Retry`
//!   whose request did reach the sink, after a crash between delivery and the chunk's release,
//!   and on `dead-letter replay`. A sink makes the repeat harmless where the sink allows it,
//!   with a deterministic id per record (`record::stable_id`: the Elasticsearch `_id`, the
//!   Cloud Logging `insertId`), and otherwise documents that a repeat shows downstream (a file
//!   line, a Kafka message; Kafka's idempotent producer only covers librdkafka's own retries).
//!   Within one delivery, only the records that still need it are sent again.
//! - One sink instance serves every concurrent delivery of its output (`concurrency` chunks at
//!   once) and the admin replays: `send` takes `&self` and its future is `Send`.
//!
//! ## Checking and closing
//! [`Sink::check`] contacts the sink once for `validate --check-outputs` and returns what it
//! found (cluster name, writable directory). Building an output never contacts the sink: an
//! unreachable sink must not stop the aggregator from buffering. [`Sink::close`] runs once
//! the worker (or a stand-alone `dead-letter replay`) is done with the output, after the last
//! `send`.

use std::future::Future;

use super::failure::{Failure, FailureKind, OutputError};
use super::{file, null};
use crate::config::OutputConfig;
use crate::record::Rec;

#[cfg(feature = "elasticsearch")]
use super::elasticsearch;
#[cfg(feature = "kafka")]
use super::kafka;
#[cfg(feature = "stackdriver")]
use super::stackdriver;
#[cfg(any(feature = "elasticsearch", feature = "kafka", feature = "stackdriver"))]
use std::sync::Arc;

/// What happened to one record in one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The sink has it.
    Delivered,
    /// Try again later (429, 5xx, timeouts, broker unavailable, ...).
    Retry(Failure),
    /// The sink refuses this record for good (mapping error, too large, ...): dead letters.
    Reject(Failure),
}

/// The result of one attempt at a list of records.
#[derive(Debug, Clone, Default)]
pub struct Attempt {
    /// One outcome per record sent, in order.
    pub outcomes: Vec<Outcome>,
    /// Bytes the sink accepted, in its format (before compression).
    pub bytes: u64,
}

/// An output's delivery side (see the module docs for the contract).
pub trait Sink {
    /// Sends records once. Per-record outcomes come back in order; an `Err` means nothing was
    /// delivered and every record is retried.
    fn send(&self, recs: &[Rec]) -> impl Future<Output = Result<Attempt, OutputError>> + Send;

    /// Contacts the sink once (for `validate --check-outputs`); returns what was found.
    fn check(&self) -> impl Future<Output = Result<String, OutputError>> + Send;

    /// Flushes and stops background work. Nothing to do for a sink that keeps nothing queued
    /// between attempts (every one but Kafka's).
    fn close(&self) -> impl Future<Output = ()> + Send {
        async {}
    }
}

/// A configured output.
#[derive(Debug, Clone)]
pub enum Output {
    /// JSON lines in local files.
    File(file::FileSink),
    /// Discards records.
    Null(null::NullOutput),
    /// Elasticsearch `_bulk`.
    #[cfg(feature = "elasticsearch")]
    Elasticsearch(Arc<elasticsearch::EsOutput>),
    /// Kafka producer.
    #[cfg(feature = "kafka")]
    Kafka(Arc<kafka::KafkaOutput>),
    /// Cloud Logging.
    #[cfg(feature = "stackdriver")]
    Stackdriver(Arc<stackdriver::GclOutput>),
}

impl Output {
    /// Builds the output from its config. Sinks are not contacted here: an unreachable sink
    /// must not stop the aggregator from buffering (index templates, metadata lookups and
    /// connections happen on the first delivery, and are retried like one).
    pub async fn build(name: &str, config: &OutputConfig) -> Result<Output, OutputError> {
        let _ = name;
        Ok(match config {
            OutputConfig::File(c) => Output::File(file::FileSink::new(&c.path)),
            OutputConfig::Null(_) => Output::Null(null::NullOutput),
            #[cfg(feature = "elasticsearch")]
            OutputConfig::Elasticsearch(c) => {
                Output::Elasticsearch(Arc::new(elasticsearch::EsOutput::new(name, c)?))
            }
            #[cfg(feature = "kafka")]
            OutputConfig::Kafka(c) => Output::Kafka(Arc::new(kafka::KafkaOutput::new(name, c)?)),
            #[cfg(feature = "stackdriver")]
            OutputConfig::Stackdriver(c) => {
                Output::Stackdriver(Arc::new(stackdriver::GclOutput::new(name, c).await?))
            }
            #[allow(unreachable_patterns)]
            other => {
                return Err(OutputError::new(
                    FailureKind::Unsupported,
                    format!(
                        "this build has no {} output (rebuild with cargo feature `{}`)",
                        other.type_name(),
                        other.type_name()
                    ),
                ))
            }
        })
    }

    /// [`Sink::send`] of the output's sink.
    pub async fn send(&self, recs: &[Rec]) -> Result<Attempt, OutputError> {
        match self {
            Output::File(out) => out.send(recs).await,
            Output::Null(out) => out.send(recs).await,
            #[cfg(feature = "elasticsearch")]
            Output::Elasticsearch(out) => out.send(recs).await,
            #[cfg(feature = "kafka")]
            Output::Kafka(out) => out.send(recs).await,
            #[cfg(feature = "stackdriver")]
            Output::Stackdriver(out) => out.send(recs).await,
        }
    }

    /// [`Sink::check`] of the output's sink.
    pub async fn check(&self) -> Result<String, OutputError> {
        match self {
            Output::File(out) => out.check().await,
            Output::Null(out) => out.check().await,
            #[cfg(feature = "elasticsearch")]
            Output::Elasticsearch(out) => out.check().await,
            #[cfg(feature = "kafka")]
            Output::Kafka(out) => out.check().await,
            #[cfg(feature = "stackdriver")]
            Output::Stackdriver(out) => out.check().await,
        }
    }

    /// [`Sink::close`] of the output's sink.
    pub async fn close(&self) {
        match self {
            Output::File(out) => out.close().await,
            Output::Null(out) => out.close().await,
            #[cfg(feature = "elasticsearch")]
            Output::Elasticsearch(out) => out.close().await,
            #[cfg(feature = "kafka")]
            Output::Kafka(out) => out.close().await,
            #[cfg(feature = "stackdriver")]
            Output::Stackdriver(out) => out.close().await,
        }
    }
}
