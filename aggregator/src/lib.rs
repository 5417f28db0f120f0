//! The logferry aggregator: a Fluentd Forward protocol server with a durable chunk buffer per
//! output, fanning records out to Elasticsearch, Kafka, Cloud Logging or files.
//!
//! ```text
//! server (accept; limits) -> connection (decode; dedupe re-sends)
//!   -> ingest (memory budget; route by tag; append per output, in order) -> buffer per output
//!   (group-commit fsync) -> ack {"ack": chunk}
//!   -> output worker (sealed chunks; retry with backoff) -> sink -> chunk deleted
//! ```
//!
//! The delivery contract is at-least-once: an ack leaves only after the records are fsync'd in
//! every buffer they were routed to, and a chunk file is deleted only after its output
//! delivered every record in it. Modules:
//!
//! - [`config`]: the TOML schema and its validation.
//! - [`server`]: the Forward listener and per-connection handling.
//! - [`ingest`]: what every input shares to store a batch: routing, the memory budget,
//!   ordered appends with a bounded wait for room.
//! - [`route`]: Fluentd tag patterns.
//! - [`dedupe`]: recently acked requests (re-sends are acked, not stored twice).
//! - [`outputs`]: the output workers and the outputs themselves.
//! - [`record`]: records as the outputs see them (flattened from a chunk) and msgpack lookups.
//! - [`template`]: index and topic name templates (`${tag}`, record fields, strftime).
//! - [`tenants`]: tenant pipelines: a team's own parse, filters and outputs, applied one at a
//!   time.
//! - [`admin`]: `/metrics`, `/healthz`, `/readyz`, `/reload`.
//! - [`app`]: start, reload and graceful shutdown.

pub mod admin;
pub mod app;
pub mod config;
pub mod dedupe;
pub mod ingest;
pub mod outputs;
pub mod record;
pub mod route;
pub mod server;
pub mod sources;
pub mod template;
pub mod tenants;
