//! Why a delivery failed: [`FailureKind`], the one bounded set of failure labels, and the two
//! carriers of a kind with its message, [`Failure`] (one record) and [`OutputError`] (a whole
//! attempt, or building or checking an output).
//!
//! ## Labels
//! [`FailureKind::as_str`] is an external contract: it is the `kind` label of
//! `logferry_output_errors_total{output,kind}`, the `reason` label of
//! `logferry_dead_letter_records_total{output,reason}`, and the `kind` stored in every
//! dead-letter frame (and selected by `dead-letter replay --kind`). A label, once released,
//! keeps its spelling; a new failure gets a new variant. Several sinks share a label when they
//! mean the same thing (`timeout`, `connection`, `too_large`, `rejected`, ...).

use std::fmt;

/// What kind of failure a record or an attempt had. Each variant says who reports it and what
/// the framework does with it: a retried kind counts in `logferry_output_errors_total`, a
/// rejected kind sends the record to dead letters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailureKind {
    /// The output's config cannot be used (bad endpoint URL, unreadable CA, credentials or
    /// template file, bad template, a client that cannot be built): the output is not built.
    Config,
    /// The config names an output type this build was compiled without (cargo feature).
    Unsupported,
    /// A sink's task on the blocking pool panicked: the attempt is retried.
    Panic,
    /// A local file system operation failed (file output: creating the directory, opening,
    /// writing or syncing a file): retried.
    Io,
    /// The file output's file is locked by another writer (another output on the same
    /// directory, a `dead-letter replay` run): its records are retried.
    Locked,
    /// The file system refuses the file output's file name (too long for it): rejected.
    FileName,
    /// The record cannot be written in the sink's format (not valid msgpack, not a map):
    /// rejected.
    Unencodable,
    /// A template could not be applied: a record lacks a field of the `index` / `topic`
    /// template and there is no fallback (rejected), or the Elasticsearch index template
    /// could not be installed (the attempt is retried).
    Template,
    /// The record is larger than the sink takes (`bulk_max_bytes`, a 413 for a single
    /// document, `message_max_bytes`, the broker's limit): rejected.
    TooLarge,
    /// The sink refused the record for good (an Elasticsearch item 4xx such as a mapping
    /// conflict, an invalid Kafka topic or message, Cloud Logging INVALID_ARGUMENT): rejected.
    Rejected,
    /// The record was still failing when `retry.timeout` ran out: given up to dead letters by
    /// the framework (never reported by a sink).
    RetryTimeout,
    /// A tenant pipeline's parse failed with `on_error = "dead_letter"`: the raw record is
    /// kept for a replay after the parser is fixed (never reported by a sink).
    Parse,
    /// A Kafka source's message could not be decoded in the source's `format` (never
    /// reported by a sink): kept with its topic, partition and offset.
    Undecodable,
    /// A sink broke its contract (wrong number of outcomes, a record left without one):
    /// retried.
    Internal,
    /// The sink could not be reached, or the connection broke: retried.
    Connection,
    /// The sink did not answer in time: retried.
    Timeout,
    /// An unexpected HTTP status from an endpoint that is only checked (Elasticsearch `GET /`
    /// for `validate --check-outputs`).
    Http,
    /// A whole request was refused with 413: the Elasticsearch output halves its batch size
    /// limit and retries.
    Http413,
    /// A whole request was answered 429 (throttled): retried.
    Http429,
    /// A whole request was answered 5xx: retried.
    Http5xx,
    /// A whole request was answered with another 4xx (authentication, a proxy): retried, the
    /// operator has to fix it.
    Http4xx,
    /// The sink's answer cannot be understood (not JSON, items missing): retried.
    BadResponse,
    /// An Elasticsearch item was answered 409 with `action = "index"`: retried.
    VersionConflict,
    /// An Elasticsearch item was answered 429: retried.
    Item429,
    /// An Elasticsearch item was answered 5xx: retried.
    Item5xx,
    /// A Kafka delivery report failed (or the producer dropped the message): retried.
    Delivery,
    /// Cloud Logging refused the credentials (401, 403, token errors): retried.
    Auth,
    /// The metadata server could not tell the project, cluster or location: retried.
    Metadata,
    /// A sealed chunk could not be read (by the worker, before any sink is involved): retried,
    /// then quarantined.
    ChunkRead,
    /// Dead letters could not be written (disk error, a full directory with
    /// `when_full = "block"`): the chunk stays in the buffer and the write is retried.
    DeadLetter,
}

impl FailureKind {
    /// The label: stable, short, `[a-z0-9_]` (see the module docs).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Config => "config",
            Self::Unsupported => "unsupported",
            Self::Panic => "panic",
            Self::Io => "io",
            Self::Locked => "locked",
            Self::FileName => "file_name",
            Self::Unencodable => "unencodable",
            Self::Template => "template",
            Self::TooLarge => "too_large",
            Self::Rejected => "rejected",
            Self::RetryTimeout => "retry_timeout",
            Self::Parse => "parse_error",
            Self::Undecodable => "undecodable",
            Self::Internal => "internal",
            Self::Connection => "connection",
            Self::Timeout => "timeout",
            Self::Http => "http",
            Self::Http413 => "http_413",
            Self::Http429 => "http_429",
            Self::Http5xx => "http_5xx",
            Self::Http4xx => "http_4xx",
            Self::BadResponse => "bad_response",
            Self::VersionConflict => "version_conflict",
            Self::Item429 => "item_429",
            Self::Item5xx => "item_5xx",
            Self::Delivery => "delivery",
            Self::Auth => "auth",
            Self::Metadata => "metadata",
            Self::ChunkRead => "chunk_read",
            Self::DeadLetter => "dead_letter",
        }
    }
}

impl fmt::Display for FailureKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a record failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// Bounded label: the `kind` of `logferry_output_errors_total` for retries, the `reason` of
    /// `logferry_dead_letter_records_total` for rejections.
    pub kind: FailureKind,
    /// What the sink said (stored with dead letters; may be long).
    pub reason: String,
}

impl Failure {
    /// A failure.
    pub fn new(kind: FailureKind, reason: impl Into<String>) -> Failure {
        Failure {
            kind,
            reason: reason.into(),
        }
    }
}

/// A failed attempt as a whole: every record in it is retried.
#[derive(Debug, thiserror::Error)]
#[error("{kind}: {message}")]
pub struct OutputError {
    /// The label for `logferry_output_errors_total{kind}`.
    pub kind: FailureKind,
    /// What happened.
    pub message: String,
}

impl OutputError {
    /// An error.
    pub fn new(kind: FailureKind, message: impl Into<String>) -> OutputError {
        OutputError {
            kind,
            message: message.into(),
        }
    }

    /// An IO failure of a local sink.
    pub fn io(context: &str, e: std::io::Error) -> OutputError {
        OutputError {
            kind: FailureKind::Io,
            message: format!("{context}: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_show_their_label() {
        let e = OutputError::new(FailureKind::Http5xx, "bulk answered 503");
        assert_eq!(e.to_string(), "http_5xx: bulk answered 503");
        let e = OutputError::io(
            "cannot create /x",
            std::io::ErrorKind::PermissionDenied.into(),
        );
        assert_eq!(e.to_string(), "io: cannot create /x: permission denied");
    }
}
