//! Outputs: where records go after the buffer. An output is a named `[outputs.<name>]` of the
//! config with its own buffer, worker, dead-letter directory and health; what it delivers to is
//! its sink (a directory, an Elasticsearch cluster, Kafka, Cloud Logging, nothing).
//!
//! ```text
//! buffer (sealed chunks) -> worker: read, send, retry with backoff -> Sink::send -> release
//!                                     \-> rejected / timed out -> dead letters
//! ```
//! A chunk is released only after each of its records was delivered or is durable in the
//! dead-letter directory; a dead or slow output holds back only its own buffer.
//!
//! ## Modules
//! - [`sink`]: the [`Sink`] contract (per-record [`Outcome`]s, `check`, `close`) and
//!   [`Output`], the configured output dispatching to its sink.
//! - [`failure`]: [`FailureKind`], the bounded failure labels of metrics and dead letters.
//! - [`worker`]: the delivery loop of one output (read, send, retry, dead letters, quarantine).
//! - [`health`]: whether an output is failing, for `/readyz` and the metrics.
//! - [`dead_letter`]: the dead-letter files and `dead-letter replay`.
//! - [`start`]: starting one output (buffer, sink, health, dead letters, worker), for the
//!   admin's outputs and tenant pipelines' alike.
//! - [`record`](crate::record), [`template`](crate::template) (top-level, as the config uses them
//!   too): records as the sinks see them; index and topic templates.
//! - One module per sink: [`file`](mod@file), [`null`], `elasticsearch`, `kafka`,
//!   `stackdriver` (the last three behind the cargo features of the same names).
//!
//! ## A new output type
//! A config file in `config/` (its keys and their validation, an `OutputConfig` arm), a sink
//! file here (a type implementing [`Sink`], built from that config, documenting its format and
//! its outcome table), and one-line arms in [`Output`] (variant, `build`, `send`, `check`,
//! `close`). Its failure labels are [`FailureKind`] variants, existing ones where they mean the
//! same thing. The worker, retries, dead letters, metrics and health need no change.

pub mod dead_letter;
#[cfg(feature = "elasticsearch")]
pub mod elasticsearch;
pub mod failure;
pub mod file;
pub mod health;
#[cfg(feature = "kafka")]
pub mod kafka;
pub mod null;
pub mod sink;
#[cfg(feature = "stackdriver")]
pub mod stackdriver;
pub mod start;
pub mod worker;

pub use crate::record::{Rec, Records};
pub use dead_letter::{DeadItem, DeadLetters};
pub use failure::{Failure, FailureKind, OutputError};
pub use health::OutputHealth;
pub use sink::{Attempt, Outcome, Output, Sink};
pub use start::{start, OutputSpec, StartOutputError, Started};
pub use worker::{Prepare, Worker};
