//! Metrics and logs.
//!
//! One process-wide Prometheus [`Registry`] holds every metric of the interface contract, so that
//! any module can count what happens where it happens, and `/metrics` renders them all. Metric
//! names are part of the contract (tools outside the repository scrape them): extend, never
//! rename. Label values come from bounded sets only (output names, reasons, states), never from
//! tags or peer addresses.

use std::sync::LazyLock;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// The registry behind `GET /metrics`.
pub static REGISTRY: LazyLock<Registry> = LazyLock::new(|| {
    let registry = Registry::new();
    #[cfg(target_os = "linux")]
    {
        let collector = prometheus::process_collector::ProcessCollector::for_self();
        // Registration fails only on a duplicate name; this is the one place it is registered.
        let _ = registry.register(Box::new(collector));
    }
    registry
});

fn register<C: prometheus::core::Collector + Clone + 'static>(collector: C) -> C {
    // A duplicate registration means two statics share a name: a programming error caught by
    // the `all_metrics_register` test, never at run time with user input.
    REGISTRY
        .register(Box::new(collector.clone()))
        .expect("metric names are unique");
    collector
}

fn counter(name: &str, help: &str) -> IntCounter {
    register(IntCounter::new(name, help).expect("valid metric name"))
}

fn counter_vec(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    register(IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric name"))
}

fn gauge(name: &str, help: &str) -> IntGauge {
    register(IntGauge::new(name, help).expect("valid metric name"))
}

fn gauge_vec(name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    register(IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric name"))
}

macro_rules! metric {
    ($(#[$doc:meta])* $name:ident: $ty:ty = $init:expr) => {
        $(#[$doc])*
        pub static $name: LazyLock<$ty> = LazyLock::new(|| $init);
    };
}

metric!(
    /// Records accepted from senders (after validation).
    INPUT_RECORDS: IntCounter = counter("logferry_input_records_total", "Records accepted from senders")
);
metric!(
    /// Bytes of Forward requests read from senders.
    INPUT_BYTES: IntCounter = counter("logferry_input_bytes_total", "Bytes of requests read from senders")
);
metric!(
    /// Records an output delivered.
    OUTPUT_RECORDS: IntCounterVec = counter_vec(
        "logferry_output_records_total", "Records delivered by an output", &["output"])
);
metric!(
    /// Bytes an output delivered.
    OUTPUT_BYTES: IntCounterVec = counter_vec(
        "logferry_output_bytes_total", "Bytes delivered by an output", &["output"])
);
metric!(
    /// Failed delivery attempts, by kind.
    OUTPUT_ERRORS: IntCounterVec = counter_vec(
        "logferry_output_errors_total", "Failed delivery attempts by kind", &["output", "kind"])
);
metric!(
    /// Delivery retries.
    OUTPUT_RETRIES: IntCounterVec = counter_vec(
        "logferry_output_retries_total", "Delivery retries", &["output"])
);
metric!(
    /// Time to deliver one chunk.
    OUTPUT_FLUSH_DURATION: HistogramVec = register(
        HistogramVec::new(
            HistogramOpts::new("logferry_output_flush_duration_seconds", "Time to deliver one chunk"),
            &["output"],
        )
        .expect("valid metric name"),
    )
);
metric!(
    /// Bytes held on disk by a buffer.
    BUFFER_BYTES: IntGaugeVec = gauge_vec("logferry_buffer_bytes", "Bytes held on disk by a buffer", &["buffer"])
);
metric!(
    /// Chunks in a buffer, by state (`open`, `sealed`).
    BUFFER_CHUNKS: IntGaugeVec = gauge_vec(
        "logferry_buffer_chunks", "Chunks in a buffer by state", &["buffer", "state"])
);
metric!(
    /// The configured `total_limit_size` of a buffer.
    BUFFER_LIMIT_BYTES: IntGaugeVec = gauge_vec(
        "logferry_buffer_limit_bytes", "Configured total_limit_size of a buffer", &["buffer"])
);
metric!(
    /// Age of the oldest chunk still held by a buffer.
    BUFFER_OLDEST_AGE: IntGaugeVec = gauge_vec(
        "logferry_buffer_oldest_record_age_seconds",
        "Age of the oldest chunk held by a buffer",
        &["buffer"])
);
metric!(
    /// Records dropped, by reason (`buffer_full`, `drop_oldest_chunk`, `corrupt_frame`,
    /// `invalid_event`, `no_route`, ...).
    DROPPED_RECORDS: IntCounterVec = counter_vec(
        "logferry_dropped_records_total", "Records dropped by reason", &["reason"])
);
metric!(
    /// Records sent to an output's dead-letter directory.
    DEAD_LETTER_RECORDS: IntCounterVec = counter_vec(
        "logferry_dead_letter_records_total", "Records sent to dead letters", &["output", "reason"])
);
metric!(
    /// Open Forward connections.
    FORWARD_CONNECTIONS: IntGauge = gauge("logferry_forward_connections", "Open Forward connections")
);
metric!(
    /// Failed Forward handshakes.
    FORWARD_AUTH_FAILURES: IntCounter = counter(
        "logferry_forward_auth_failures_total", "Failed Forward handshakes")
);
metric!(
    /// Requests that could not be decoded (the connection is closed).
    FORWARD_DECODE_ERRORS: IntCounter = counter(
        "logferry_forward_decode_errors_total", "Forward requests that could not be decoded")
);
metric!(
    /// [`FORWARD_DECODE_ERRORS`] by what was wrong: `code` is
    /// [`DecodeError::code`](crate::forward::DecodeError::code) (`request_too_large`,
    /// `decompressed_too_large`, `malformed`, `tag_too_long`, ...), a fixed set. Counted at
    /// the same places, so the codes add up to the total; the total keeps its own name
    /// because dashboards and alerts already use it.
    FORWARD_DECODE_ERRORS_BY_CODE: IntCounterVec = counter_vec(
        "logferry_forward_decode_errors_by_code_total",
        "Forward requests that could not be decoded, by error code", &["code"])
);
metric!(
    /// Acks sent to senders.
    FORWARD_ACKS: IntCounter = counter("logferry_forward_acks_total", "Acks sent to senders")
);
metric!(
    /// Forward connections the server refused or closed to protect itself, by reason: limits
    /// (`max_connections`, `max_connections_per_source`), TLS (`tls_handshake`,
    /// `client_certificate`), the handshake (`source_not_allowed`, `handshake_timeout`, and the
    /// `AuthFailure` codes such as `shared_key_mismatch`), and slow or silent peers
    /// (`read_timeout`, `slow_client`, `write_timeout`, `idle_timeout`).
    FORWARD_CLOSED_CONNECTIONS: IntCounterVec = counter_vec(
        "logferry_forward_closed_connections_total",
        "Forward connections refused or closed by the server, by reason", &["reason"])
);
metric!(
    /// Bytes of requests decoded but not yet handed to a buffer (aggregator ingest budget).
    INGEST_MEMORY_BYTES: IntGauge = gauge("logferry_ingest_memory_bytes",
        "Bytes of requests decoded (and inflated) but not yet handed to a buffer")
);
metric!(
    /// `[ingest] memory_limit`.
    INGEST_MEMORY_LIMIT_BYTES: IntGauge = gauge("logferry_ingest_memory_limit_bytes",
        "Most bytes of requests decoded but not yet handed to a buffer ([ingest] memory_limit)")
);
metric!(
    /// Times a request waited for ingest memory (the connection stopped reading meanwhile).
    INGEST_MEMORY_WAITS: IntCounter = counter("logferry_ingest_memory_waits_total",
        "Requests that waited for ingest memory before being decoded")
);
metric!(
    /// Files being tailed (forwarder).
    TAIL_FILES: IntGauge = gauge("logferry_tail_files", "Files being tailed")
);
metric!(
    /// Bytes of rotated files released before they were read (forwarder).
    TAIL_UNREAD_BYTES: IntCounter = counter(
        "logferry_tail_unread_bytes", "Bytes of rotated files released unread")
);
metric!(
    /// Time from append to durable (group commit), per buffer.
    BUFFER_COMMIT_DURATION: Histogram = register(
        Histogram::with_opts(
            HistogramOpts::new("logferry_buffer_commit_duration_seconds", "Time of one group-commit fsync")
                .buckets(vec![0.0001, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5, 1.0]),
        )
        .expect("valid metric name"),
    )
);
metric!(
    /// Chunks found damaged at recovery or read time, by what was done (`quarantined`,
    /// `truncated`, `bad_frame`).
    BUFFER_CORRUPTION: IntCounterVec = counter_vec(
        "logferry_buffer_corruption_total", "Damage found in chunk files", &["buffer", "action"])
);

metric!(
    /// Seconds an output has been failing (0 while it delivers).
    OUTPUT_FAILING_SECONDS: IntGaugeVec = gauge_vec(
        "logferry_output_failing_seconds", "Seconds an output has been failing, 0 when healthy", &["output"])
);
metric!(
    /// 0 while an output has been failing longer than its `unready_after` (and `/readyz`
    /// answers 503), 1 otherwise.
    OUTPUT_READY: IntGaugeVec = gauge_vec(
        "logferry_output_ready", "0 while an output has failed longer than unready_after", &["output"])
);

/// Counts a decode error in [`FORWARD_DECODE_ERRORS_BY_CODE`], next to every
/// `FORWARD_DECODE_ERRORS.inc()`; `code` is the error's
/// [`DecodeError::code`](crate::forward::DecodeError::code).
pub fn count_decode_error_code(code: &'static str) {
    FORWARD_DECODE_ERRORS_BY_CODE
        .with_label_values(&[code])
        .inc();
}

metric!(
    /// Records selected for a tenant pipeline, counted as the request is routed (like
    /// `logferry_input_records_total`: a request that is refused and sent again counts again).
    PIPELINE_RECORDS_IN: IntCounterVec = counter_vec(
        "logferry_pipeline_records_in_total", "Records routed to a tenant pipeline", &["tenant", "pipeline"])
);
metric!(
    /// Records a tenant pipeline's parse failed on, by reason.
    PIPELINE_PARSE_ERRORS: IntCounterVec = counter_vec(
        "logferry_pipeline_parse_errors_total", "Records a tenant pipeline could not parse, by reason",
        &["tenant", "pipeline", "reason"])
);
metric!(
    /// Records a tenant pipeline dropped, by reason (`filtered`, `parse_error`).
    PIPELINE_DROPPED_RECORDS: IntCounterVec = counter_vec(
        "logferry_pipeline_dropped_records_total", "Records a tenant pipeline dropped, by reason",
        &["tenant", "pipeline", "reason"])
);
metric!(
    /// Applies of tenant pipeline files, by result (`applied`, `rejected`, `deleted`).
    PIPELINE_APPLIES: IntCounterVec = counter_vec(
        "logferry_pipeline_applies_total", "Applies of tenant pipeline files by result",
        &["tenant", "pipeline", "result"])
);
metric!(
    /// 1 for a tenant pipeline's current state (`active`, `rejected`, `stale`, `draining`).
    PIPELINE_STATE: IntGaugeVec = gauge_vec(
        "logferry_pipeline_state", "1 for the current state of a tenant pipeline",
        &["tenant", "pipeline", "state"])
);

metric!(
    /// Messages a Kafka source consumed (each counted once it is decoded, before it is stored).
    KAFKA_CONSUMED_RECORDS: IntCounterVec = counter_vec(
        "logferry_kafka_consumed_records_total", "Messages consumed by a Kafka source", &["source"])
);
metric!(
    /// Value bytes of the messages a Kafka source consumed.
    KAFKA_CONSUMED_BYTES: IntCounterVec = counter_vec(
        "logferry_kafka_consumed_bytes_total", "Message value bytes consumed by a Kafka source", &["source"])
);
metric!(
    /// Consumer lag per assigned partition: the high watermark minus the committed offset
    /// (librdkafka statistics, every `statistics.interval.ms`).
    KAFKA_CONSUMER_LAG: IntGaugeVec = gauge_vec(
        "logferry_kafka_consumer_lag", "Messages between the committed offset and the end of a partition",
        &["source", "topic", "partition"])
);
metric!(
    /// Age in seconds of the oldest message a Kafka source consumed that is not yet durable (0
    /// when none is in flight): how far behind the source is in time, and whether it is stuck.
    KAFKA_LAG_SECONDS: IntGaugeVec = gauge_vec(
        "logferry_kafka_lag_seconds", "Age of the oldest consumed message not yet durable", &["source"])
);
metric!(
    /// Rebalance events of a Kafka source by kind (`assign`, `revoke`, `lost`, `error`).
    KAFKA_REBALANCES: IntCounterVec = counter_vec(
        "logferry_kafka_rebalances_total", "Consumer group rebalance events by kind", &["source", "kind"])
);
metric!(
    /// Revoked partitions (or, at shutdown, the source) whose records in flight did not become
    /// durable within `drain_timeout` (they are consumed again).
    KAFKA_DRAIN_TIMEOUTS: IntCounterVec = counter_vec(
        "logferry_kafka_drain_timeouts_total", "Partition drains that ran out of drain_timeout", &["source"])
);
metric!(
    /// Partitions of a Kafka source paused for back-pressure (in-flight bytes over the limit).
    KAFKA_PAUSED_PARTITIONS: IntGaugeVec = gauge_vec(
        "logferry_kafka_paused_partitions", "Partitions paused for back-pressure", &["source"])
);
metric!(
    /// Offset store and commit errors by operation (`store`, `commit`) and librdkafka code.
    KAFKA_OFFSET_ERRORS: IntCounterVec = counter_vec(
        "logferry_kafka_offset_errors_total", "Offset store and commit errors", &["source", "op", "code"])
);
metric!(
    /// Consumed batches a buffer refused (full with `reject`, `block_timeout`, IO), retried
    /// until stored; by the store error's code.
    KAFKA_STORE_RETRIES: IntCounterVec = counter_vec(
        "logferry_kafka_store_retries_total", "Consumed batches retried after a buffer refused them",
        &["source", "reason"])
);

/// Forces every metric into the registry, so `/metrics` lists them all from the start (a
/// dashboard should see a zero, not a missing series).
pub fn register_all() {
    LazyLock::force(&INPUT_RECORDS);
    LazyLock::force(&INPUT_BYTES);
    LazyLock::force(&OUTPUT_RECORDS);
    LazyLock::force(&OUTPUT_BYTES);
    LazyLock::force(&OUTPUT_ERRORS);
    LazyLock::force(&OUTPUT_RETRIES);
    LazyLock::force(&OUTPUT_FLUSH_DURATION);
    LazyLock::force(&BUFFER_BYTES);
    LazyLock::force(&BUFFER_CHUNKS);
    LazyLock::force(&BUFFER_LIMIT_BYTES);
    LazyLock::force(&BUFFER_OLDEST_AGE);
    LazyLock::force(&DROPPED_RECORDS);
    LazyLock::force(&DEAD_LETTER_RECORDS);
    LazyLock::force(&FORWARD_CONNECTIONS);
    LazyLock::force(&FORWARD_AUTH_FAILURES);
    LazyLock::force(&FORWARD_DECODE_ERRORS);
    LazyLock::force(&FORWARD_DECODE_ERRORS_BY_CODE);
    LazyLock::force(&FORWARD_ACKS);
    LazyLock::force(&FORWARD_CLOSED_CONNECTIONS);
    LazyLock::force(&INGEST_MEMORY_BYTES);
    LazyLock::force(&INGEST_MEMORY_LIMIT_BYTES);
    LazyLock::force(&INGEST_MEMORY_WAITS);
    LazyLock::force(&TAIL_FILES);
    LazyLock::force(&TAIL_UNREAD_BYTES);
    LazyLock::force(&BUFFER_COMMIT_DURATION);
    LazyLock::force(&BUFFER_CORRUPTION);
    LazyLock::force(&OUTPUT_FAILING_SECONDS);
    LazyLock::force(&OUTPUT_READY);
    LazyLock::force(&PIPELINE_RECORDS_IN);
    LazyLock::force(&PIPELINE_PARSE_ERRORS);
    LazyLock::force(&PIPELINE_DROPPED_RECORDS);
    LazyLock::force(&PIPELINE_APPLIES);
    LazyLock::force(&PIPELINE_STATE);
    LazyLock::force(&KAFKA_CONSUMED_RECORDS);
    LazyLock::force(&KAFKA_CONSUMED_BYTES);
    LazyLock::force(&KAFKA_CONSUMER_LAG);
    LazyLock::force(&KAFKA_LAG_SECONDS);
    LazyLock::force(&KAFKA_REBALANCES);
    LazyLock::force(&KAFKA_DRAIN_TIMEOUTS);
    LazyLock::force(&KAFKA_PAUSED_PARTITIONS);
    LazyLock::force(&KAFKA_OFFSET_ERRORS);
    LazyLock::force(&KAFKA_STORE_RETRIES);
}

/// Renders every registered metric in the Prometheus text format.
pub fn render() -> String {
    let mut out = Vec::new();
    // Encoding to a Vec cannot fail for the text encoder except on invalid metric families,
    // which the registry rejects at registration.
    let _ = TextEncoder::new().encode(&REGISTRY.gather(), &mut out);
    String::from_utf8(out).unwrap_or_default()
}

/// Log output format of the daemons (`--log-format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Installs the global `tracing` subscriber writing to stderr. The level comes from `RUST_LOG`
/// when set, otherwise from `default_level` (`--log-level`).
pub fn init_logging(format: LogFormat, default_level: &str) {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    // try_init fails only when a subscriber is already installed (tests); that one stays.
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_metrics_register() {
        register_all();
        DROPPED_RECORDS.with_label_values(&["test"]).inc();
        count_decode_error_code("request_too_large");
        let text = render();
        for name in [
            "logferry_input_records_total",
            "logferry_dropped_records_total",
            "logferry_forward_acks_total",
            "logferry_buffer_commit_duration_seconds",
            "logferry_forward_decode_errors_total",
            "logferry_forward_decode_errors_by_code_total{code=\"request_too_large\"} 1",
        ] {
            assert!(text.contains(name), "{name} missing from /metrics");
        }
    }
}
