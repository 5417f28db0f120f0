//! The logferry forwarder: the per-node agent that tails container logs and ships them to the
//! aggregators over Forward, with acks.
//!
//! ```text
//! discover -> tail (fingerprint; offsets) -> parse (cri | docker; partial lines joined)
//!   -> enrich (kubernetes metadata; JSON log merged) -> batch (one frame per file and pass)
//!   -> buffer (chunk files, group-commit fsync) -> client (PackedForward + chunk id; window of
//!      unacked requests per aggregator; failover) -> aggregator
//! ```
//!
//! The delivery contract is at-least-once: a file's offset advances only after the frame
//! holding its lines is durable in the forwarder's buffer, and a buffered chunk is deleted only
//! after the aggregator acked every frame of it. Modules:
//!
//! - [`config`]: the TOML schema and its validation.
//! - [`discover`]: which files are tailed.
//! - [`tail`]: reading, rotation, fingerprints, checkpoints and the committer.
//! - [`parse`]: CRI and docker json-file lines, and joining split lines.
//! - [`kubernetes`]: metadata from file names and the API server.
//! - [`batch`]: records and frames.
//! - [`net`]: `host:port` server entries.
//! - [`client`]: the Forward client (connections, endpoints, failover).
//! - [`admin`]: `/metrics`, `/healthz`, `/readyz`, `/reload`.
//! - [`app`]: start, reload and graceful shutdown.

pub mod admin;
pub mod app;
pub mod batch;
pub mod client;
pub mod config;
pub mod discover;
pub mod kubernetes;
pub mod metrics;
pub mod net;
pub mod parse;
pub mod tail;
