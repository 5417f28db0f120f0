//! Tenant pipelines: each team's own pipeline files, applied one at a time, isolated from
//! each other and from the admin's routes.
//!
//! ```text
//! request (tag, listener) -> select: its tenant, then the tenant's pipelines whose [match] takes it
//!   -> ingest appends it to each selected pipeline's output buffers (as it arrived), beside
//!      the admin routes' buffers; the ack waits for every one of them
//!   -> each pipeline output's worker: read chunk -> stage (parse, filters) -> sink
//! ```
//!
//! A team's pipelines see only its own records (the tenant is decided by the listener or the
//! request, never by the pipeline), have their own buffers, workers and retries, and are
//! applied, rejected or removed without touching any other pipeline.
//!
//! ## Modules
//! - [`select`]: a request's tenant, and a pipeline's `[match]`.
//! - [`transform`]: the parse and filters (pure).
//! - [`stage`]: running them on the delivery path, and what a pipeline counts.
//! - [`registry`]: the running pipelines, how a file is applied, and their status.
//! - [`watch`]: inotify on the pipeline directory and the policy, waking the rescan.
//! - [`window`]: records in and out over the last five minutes, from samples.

pub mod registry;
pub mod select;
pub mod stage;
pub mod transform;
pub mod watch;
pub mod window;

pub use registry::{Key, PipelineStatus, Pipelines, Registry, Shared};
pub use select::Request;
