//! Talks to: a real `logferry-aggregator` process that is killed with SIGKILL in the middle of an
//! acked stream and restarted on the same port, fed by the real `logferry-loadtest forward`
//! (`--ack --retry-for`, which re-sends every unacknowledged request with its chunk id), and
//! checked with `logferry-loadtest verify` on the file output.
//!
//! The delivery contract: an acked record is fsync'd, so it survives the kill; re-sends may
//! duplicate at most what was unacknowledged (connections x window x batch); no torn lines.

use std::time::Duration;

use logferry_e2e::{
    http_get, metric_value, unique_id, wait_for_records, wait_until, Aggregator, Load,
};
use serde_json::Value;

const RECORDS: u64 = 60_000;
const BATCH: u64 = 250;
const CONNECTIONS: u64 = 2;
const WINDOW: u64 = 4;
const KILLS: u64 = 3;

#[test]
fn acked_records_survive_sigkill_mid_stream() {
    let mut agg = Aggregator::start();
    let run_id = unique_id("kill");
    let lt = Load::acked(&agg, RECORDS, &run_id)
        .batch(BATCH)
        .connections(CONNECTIONS)
        .window(WINDOW)
        .rate(20000)
        .retry_for("90s")
        .ack_timeout("30s")
        .spawn();

    // Kill several times, each after a varying number of acks of the new process, so the kills
    // land at different points of the stream (mid-append, mid-fsync, mid-delivery).
    let kill_points = [12.0, 27.0, 41.0];
    assert_eq!(kill_points.len() as u64, KILLS);
    for (round, threshold) in kill_points.into_iter().enumerate() {
        let admin = agg.admin_addr;
        let acked = wait_until("acks before the kill", Duration::from_secs(60), || {
            let (_, body) = http_get(admin, "/metrics").ok()?;
            metric_value(&body, "logferry_forward_acks_total").filter(|&a| a >= threshold)
        });
        eprintln!("e2e: kill {round}: {acked} acks seen, SIGKILL");
        agg.sigkill();
        std::thread::sleep(Duration::from_millis(300));
        agg.restart_same_port();
    }

    let out = lt.wait(Duration::from_secs(180));
    assert!(
        out.status.success(),
        "loadtest did not get every record acked"
    );
    let summary: Value = serde_json::from_slice(&out.stdout).expect("JSON summary");
    assert_eq!(summary["acked"], RECORDS, "{summary}");
    assert!(
        summary["reconnects"].as_u64() >= Some(KILLS),
        "the kill was not noticed: {summary}"
    );

    wait_for_records(&agg.out_dir, &run_id, RECORDS, Duration::from_secs(120));
    let out = Load::verify(&run_id)
        .output_dir(&agg.out_dir)
        .expect(RECORDS)
        .json()
        .run();
    let report: Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    assert!(out.status.success(), "records lost: {report}");
    assert_eq!(report["missing"], 0, "{report}");
    assert_eq!(
        report["malformed_lines"], 0,
        "torn lines in the output: {report}"
    );
    let max_dup = KILLS * CONNECTIONS * WINDOW * BATCH;
    assert!(
        report["duplicates"].as_u64() <= Some(max_dup),
        "more duplicates than the unacknowledged windows ({max_dup}): {report}"
    );
}
