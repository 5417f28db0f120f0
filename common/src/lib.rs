//! Shared pieces of logferry: what the forwarder and the aggregator both need.
//!
//! - [`event_time`]: Fluentd's nanosecond `EventTime` (msgpack ext 0).
//! - [`msgpack`]: value boundaries, scalar readers, header writers, JSON transcoding.
//! - [`json_merge`]: a JSON object's members transcoded straight to msgpack pairs.
//! - [`forward`]: the Fluentd Forward protocol v1 codec. Pure: bytes in, values out, no IO, so it
//!   can be fuzzed and property-tested on its own.
//! - [`payload`]: what a chunk frame holds, one PackedForward request (both binaries store it).
//! - [`chunk`]: the durable chunk buffer. Chunk files are the source of truth; appends share
//!   fsyncs (group commit) and every append hands back a ticket that resolves only when its bytes
//!   are on disk, so acks can follow durability.
//! - [`config`]: sizes (`"8MiB"`), durations (`"5s"`) and `${ENV}` substitution for TOML configs.
//! - [`telemetry`]: the process-wide Prometheus registry, the metrics named in the interface
//!   contract, and `tracing` set-up.
//! - [`kv`]: opening the small sled stores kept beside the buffers, with repair.
//! - [`tls`]: rustls server and client configs from PEM files, with certificate reload.
//! - [`daemon`]: what both binaries do around their pipeline: lifecycle phase, signals, reloads.
//!
//! ## Delivery contract
//! At-least-once, end to end: a record acknowledged to a sender is fsync'd on the receiver
//! before the ack leaves; a chunk file is deleted only after its output delivered it.

#![warn(missing_docs, unreachable_pub)]

pub mod backoff;
pub mod chunk;
pub mod config;
pub mod daemon;
pub mod event_time;
pub mod forward;
pub mod json_merge;
pub mod kv;
pub mod msgpack;
pub mod payload;
pub mod telemetry;
pub mod tls;
