//! Talks to: a real `logferry-aggregator` process (file output), fed by the real
//! `logferry-loadtest forward` binary over TCP, checked with `logferry-loadtest verify`.

use std::time::Duration;

use logferry_e2e::{metric_value, unique_id, wait_for_records, Aggregator, Load};
use serde_json::Value;

const RECORDS: u64 = 5000;

fn forward_and_verify(gzip: bool) {
    let agg = Aggregator::start();
    let run_id = unique_id(if gzip { "smoke-gz" } else { "smoke" });
    let mut load = Load::forward(&agg)
        .records(RECORDS)
        .batch(300)
        .connections(2)
        .ack()
        .run_id(&run_id)
        .json();
    if gzip {
        load = load.gzip();
    }
    let out = load.run();
    assert!(out.status.success(), "loadtest forward failed");
    let summary: Value = serde_json::from_slice(&out.stdout).expect("JSON summary");
    assert_eq!(summary["ok"], true);
    assert_eq!(summary["acked"], RECORDS);
    assert_eq!(summary["sent"], RECORDS);
    assert_eq!(summary["resends"], 0);
    assert!(summary["ack_latency_ms"]["p99_ms"].is_number(), "{summary}");

    // Acked means fsync'd; the file output follows once chunks seal.
    let count = wait_for_records(&agg.out_dir, &run_id, RECORDS, Duration::from_secs(60));
    assert_eq!(
        count.received, RECORDS,
        "duplicates without any fault: {count:?}"
    );

    let out = Load::verify(&run_id)
        .output_dir(&agg.out_dir)
        .expect(RECORDS)
        .json()
        .run();
    assert!(out.status.success(), "loadtest verify failed");
    let report: Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    assert_eq!(report["missing"], 0, "{report}");
    assert_eq!(report["duplicates"], 0, "{report}");
    assert_eq!(report["malformed_lines"], 0, "{report}");
    assert_eq!(report["received"], RECORDS, "{report}");

    let metrics = agg.metrics();
    let input = metric_value(&metrics, "logferry_input_records_total");
    assert!(
        input.is_some_and(|v| v >= RECORDS as f64),
        "logferry_input_records_total = {input:?}:\n{metrics}"
    );
    let batches = RECORDS.div_ceil(300) as f64;
    let acks = metric_value(&metrics, "logferry_forward_acks_total");
    assert!(
        acks.is_some_and(|v| v >= batches),
        "logferry_forward_acks_total = {acks:?}, expected >= {batches}:\n{metrics}"
    );
}

#[test]
fn acked_packed_forward_arrives_complete() {
    forward_and_verify(false);
}

#[test]
fn acked_gzip_packed_forward_arrives_complete() {
    forward_and_verify(true);
}

#[test]
fn verify_reports_missing_records() {
    let agg = Aggregator::start();
    let run_id = unique_id("short");
    let out = Load::forward(&agg)
        .records(100)
        .batch(10)
        .ack()
        .run_id(&run_id)
        .json()
        .run();
    assert!(out.status.success());
    wait_for_records(&agg.out_dir, &run_id, 100, Duration::from_secs(60));
    let out = Load::verify(&run_id)
        .output_dir(&agg.out_dir)
        .expect(150)
        .json()
        .run();
    assert_eq!(out.status.code(), Some(1), "50 records are missing");
    let report: Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    assert_eq!(report["missing"], 50);
    assert_eq!(report["missing_ranges"][0], serde_json::json!([100, 149]));
}

#[test]
fn graceful_shutdown_after_acked_load_exits_zero() {
    let mut agg = Aggregator::start();
    let run_id = unique_id("term");
    let out = Load::forward(&agg)
        .records(2000)
        .batch(200)
        .ack()
        .run_id(&run_id)
        .quiet()
        .run();
    assert!(out.status.success());
    let status = agg.stop(Duration::from_secs(30));
    assert!(status.success(), "SIGTERM exit status {status}");
    // Everything acked is delivered by the time a graceful stop returns.
    wait_for_records(&agg.out_dir, &run_id, 2000, Duration::from_secs(5));
}
