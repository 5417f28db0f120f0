//! Talks to: a real `logferry-aggregator` process whose file output cannot write (its directory
//! path is taken by a regular file, as when a volume is missing), fed by the real
//! `logferry-loadtest forward --ack`.
//!
//! With a tiny `total_limit_size` and `overflow_action = "block"`, the buffer fills, acks stop,
//! the connection stops being read, `/readyz` turns 503, and nothing is dropped; once the
//! output can write again, the flow resumes and every record arrives exactly as sent.

use std::time::Duration;

use logferry_e2e::{
    http_get, metric_value, unique_id, wait_for_records, wait_until, Aggregator, AggregatorConfig,
    Load,
};
use serde_json::Value;

const RECORDS: u64 = 4_000;

#[test]
fn block_stops_acks_and_resumes_without_loss() {
    let mut agg = Aggregator::start_with(AggregatorConfig {
        chunk_limit_size: "16KiB".into(),
        total_limit_size: "64KiB".into(),
        flush_interval: "100ms".into(),
        overflow_action: "block".into(),
        server_extra: "max_request_bytes = \"32KiB\"\nmax_decompressed_bytes = \"32KiB\"".into(),
        extra_toml: "retry = { initial = \"50ms\", max_interval = \"200ms\", forever = true }\n"
            .into(),
        ..AggregatorConfig::default()
    });
    // Nothing was delivered yet (nothing was sent), so the output has not created its
    // directory: a regular file in its place makes every delivery fail until it is removed.
    std::fs::write(&agg.out_dir, b"not a directory").unwrap();

    let run_id = unique_id("bp");
    let sender = Load::acked(&agg, RECORDS, &run_id)
        .batch(40)
        .window(2)
        .ack_timeout("120s")
        .retry_for("120s")
        .spawn();

    // The buffer fills up to its limit and stays there.
    let admin = agg.admin_addr;
    wait_until("the buffer to fill", Duration::from_secs(60), || {
        let (_, body) = http_get(admin, "/metrics").ok()?;
        let bytes = metric_value(&body, "logferry_buffer_bytes{buffer=\"out\"}")?;
        (bytes > 40.0 * 1024.0).then_some(())
    });
    let acks_before = metric_value(&agg.metrics(), "logferry_forward_acks_total").unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let metrics = agg.metrics();
    let acks_after = metric_value(&metrics, "logferry_forward_acks_total").unwrap();
    assert_eq!(
        acks_before, acks_after,
        "acks went on while the buffer was full"
    );
    assert!(
        acks_after < (RECORDS / 40) as f64,
        "everything was acked despite the block"
    );
    assert_eq!(
        metric_value(&metrics, "logferry_dropped_records_total"),
        Some(0.0)
    );
    let errors = metric_value(&metrics, "logferry_output_errors_total{output=\"out\"}");
    assert!(
        errors.unwrap_or(0.0) >= 1.0,
        "the output never failed: {metrics}"
    );
    let (status, body) = http_get(admin, "/readyz").unwrap();
    assert_eq!(status, 503, "readyz while the buffer is full: {body}");

    // The output recovers: the flow resumes and completes.
    std::fs::remove_file(&agg.out_dir).unwrap();
    let out = sender.wait(Duration::from_secs(150));
    assert!(
        out.status.success(),
        "the sender did not get every record acked"
    );
    let summary: Value = serde_json::from_slice(&out.stdout).expect("JSON summary");
    assert_eq!(summary["acked"], RECORDS, "{summary}");

    wait_for_records(&agg.out_dir, &run_id, RECORDS, Duration::from_secs(60));
    let report = Load::verify(&run_id).output_dir(&agg.out_dir).json().run();
    let report: Value = serde_json::from_slice(&report.stdout).expect("JSON report");
    assert_eq!(report["missing"], 0, "{report}");
    let metrics = agg.metrics();
    assert_eq!(
        metric_value(&metrics, "logferry_dropped_records_total"),
        Some(0.0)
    );
    let (status, _) = http_get(admin, "/readyz").unwrap();
    assert_eq!(status, 200, "readyz after the buffer drained");
    agg.stop(Duration::from_secs(30));
}
