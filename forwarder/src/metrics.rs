//! Forwarder-only metrics, registered in the process-wide registry beside the contract's
//! metrics (`logferry_common::telemetry`), so `/metrics` shows them all. Names extend the
//! contract; label values come from fixed sets.

use std::sync::LazyLock;

use logferry_common::telemetry::REGISTRY;
use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts};

fn register<C: prometheus::core::Collector + Clone + 'static>(c: C) -> C {
    // A duplicate name is a programming error caught by the `registers` test.
    let _ = REGISTRY.register(Box::new(c.clone()));
    c
}

/// Physical lines longer than `max_line_size` (truncated).
pub static TAIL_TRUNCATED_LINES: LazyLock<IntCounter> = LazyLock::new(|| {
    register(
        IntCounter::new(
            "logferry_tail_truncated_lines_total",
            "Lines longer than input.max_line_size, truncated",
        )
        .expect("valid metric"),
    )
});

/// Partial messages sent before their last piece, by reason (`size`, `timeout`).
pub static PARTIAL_FLUSHES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register(
        IntCounterVec::new(
            Opts::new(
                "logferry_tail_partial_flushes_total",
                "Joined partial lines sent before their last piece, by reason",
            ),
            &["reason"],
        )
        .expect("valid metric"),
    )
});

/// Aggregator addresses currently connected.
pub static SERVERS_UP: LazyLock<IntGauge> = LazyLock::new(|| {
    register(
        IntGauge::new(
            "logferry_forward_servers_up",
            "Aggregator addresses with a live connection",
        )
        .expect("valid metric"),
    )
});

/// Acks received from aggregators.
pub static ACKS_RECEIVED: LazyLock<IntCounter> = LazyLock::new(|| {
    register(
        IntCounter::new(
            "logferry_forward_acks_received_total",
            "Acks received from aggregators",
        )
        .expect("valid metric"),
    )
});

/// Pods of this node known from the Kubernetes API.
pub static KUBERNETES_PODS: LazyLock<IntGauge> = LazyLock::new(|| {
    register(
        IntGauge::new(
            "logferry_kubernetes_pods",
            "Pods of this node in the metadata cache (from the Kubernetes API)",
        )
        .expect("valid metric"),
    )
});

/// Forces every metric into the registry.
pub fn register_all() {
    logferry_common::telemetry::register_all();
    LazyLock::force(&TAIL_TRUNCATED_LINES);
    LazyLock::force(&PARTIAL_FLUSHES);
    LazyLock::force(&SERVERS_UP);
    LazyLock::force(&ACKS_RECEIVED);
    LazyLock::force(&KUBERNETES_PODS);
}

#[cfg(test)]
mod tests {
    #[test]
    fn registers() {
        super::register_all();
        super::PARTIAL_FLUSHES.with_label_values(&["size"]).inc();
        let text = logferry_common::telemetry::render();
        assert!(text.contains("logferry_tail_partial_flushes_total"));
        assert!(text.contains("logferry_tail_files"));
    }
}
