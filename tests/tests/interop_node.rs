//! Talks to: a real `logferry-aggregator` process, fed by the real npm package
//! `@fluent-org/logger` (`FluentClient`) in Message, Forward, PackedForward and
//! CompressedPackedForward modes, with acks (tests/fixtures/fluent_node.js). Node modules come
//! from `LOGFERRY_NODE_PATH`, set by scripts/test.sh.
//!
//! With `ack`, the package sends a base64 chunk id per request and resolves `emit()` only when
//! the matching `{"ack": id}` arrives, so the script exiting 0 means every request was acked.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use logferry_e2e::{
    assert_expected_records, external_tool, fixture, run_checked, unique_id, wait_for_lines,
    Aggregator,
};
use serde_json::Value;

const TIMEOUT: Duration = Duration::from_secs(90);

#[test]
fn fluent_org_logger_all_event_modes_with_acks() {
    let Some(node_path) = external_tool("LOGFERRY_NODE_PATH") else {
        return;
    };
    let node = std::env::var("LOGFERRY_NODE").unwrap_or_else(|_| "node".into());
    let agg = Aggregator::start();
    let id = unique_id("node");
    let out = run_checked(
        Command::new(node)
            .arg(fixture("fluent_node.js"))
            .arg(agg.forward_addr.ip().to_string())
            .arg(agg.forward_addr.port().to_string())
            .arg(&id)
            .env("NODE_PATH", Path::new(&node_path).join("node_modules")),
        TIMEOUT,
    );
    let sent: Value = serde_json::from_slice(&out.stdout).expect("the fixture prints JSON");
    let expected = sent["expected"].as_array().expect("expected records");
    assert_eq!(expected.len(), 6 * 21);
    let lines = wait_for_lines(&agg.out_dir, expected.len(), TIMEOUT, |v| {
        v["record"]["test_id"] == id.as_str()
    });
    assert_expected_records(expected, &lines);
    assert_eq!(lines.len(), expected.len(), "duplicates in the output");

    let metrics = agg.metrics();
    let acks = logferry_e2e::metric_value(&metrics, "logferry_forward_acks_total");
    assert!(
        acks.is_some_and(|a| a >= 5.0),
        "logferry_forward_acks_total {acks:?} after 5 acked clients:\n{metrics}"
    );
}
