//! Talks to: a real `logferry-aggregator` process, fed by the real Python `fluent-logger` package
//! (PyPI, `fluent.sender.FluentSender`) and by Forward requests hand-built with the Python
//! `msgpack` package (tests/fixtures/fluent_python.py). Python comes from `LOGFERRY_PYTHON`, set
//! by scripts/test.sh.
//!
//! fluent-logger 0.11 sends Message mode (`[tag, time, record]`) and has no ack mode, so its
//! records are checked in the file output only; acks are checked with the raw msgpack client.

use std::process::Command;
use std::time::Duration;

use logferry_e2e::{
    assert_expected_records, external_tool, fixture, output_files, run_checked, unique_id,
    wait_for_lines, Aggregator,
};
use serde_json::Value;

const TIMEOUT: Duration = Duration::from_secs(60);

fn python_client(py: &str, agg: &Aggregator, cmd: &str, test_id: &str) -> Value {
    let out = run_checked(
        Command::new(py)
            .arg(fixture("fluent_python.py"))
            .arg(cmd)
            .arg(agg.forward_addr.ip().to_string())
            .arg(agg.forward_addr.port().to_string())
            .arg(test_id),
        TIMEOUT,
    );
    serde_json::from_slice(&out.stdout).expect("the fixture prints JSON")
}

#[test]
fn fluent_logger_records_arrive_with_tag_time_and_record_intact() {
    let Some(py) = external_tool("LOGFERRY_PYTHON") else {
        return;
    };
    let agg = Aggregator::start();
    let id = unique_id("py");
    let sent = python_client(&py, &agg, "logger", &id);
    let expected = sent["expected"].as_array().expect("expected records");
    let lines = wait_for_lines(&agg.out_dir, expected.len(), TIMEOUT, |v| {
        v["record"]["test_id"] == id.as_str()
    });
    assert_expected_records(expected, &lines);
    // Nothing arrives twice (no acks, so nothing may be re-sent either).
    std::thread::sleep(Duration::from_millis(500));
    let lines = wait_for_lines(&agg.out_dir, expected.len(), TIMEOUT, |v| {
        v["record"]["test_id"] == id.as_str()
    });
    assert_eq!(lines.len(), expected.len(), "duplicates in the output");
    // File naming: <tag>.<YYYYMMDDHH>.jsonl, the hour of the record time in UTC.
    let names: Vec<String> = output_files(&agg.out_dir)
        .iter()
        .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .collect();
    for want in [
        "interop.py.2021010100.jsonl",
        "interop.py.float.2021010100.jsonl",
        "interop.py.bulk.2021010101.jsonl",
        "interop.py.int.2021010100.jsonl",
    ] {
        assert!(names.iter().any(|n| n == want), "no {want} in {names:?}");
    }
}

#[test]
fn raw_msgpack_requests_are_acked_with_the_chunk_id_byte_for_byte() {
    let Some(py) = external_tool("LOGFERRY_PYTHON") else {
        return;
    };
    let agg = Aggregator::start();
    let id = unique_id("raw");
    let report = python_client(&py, &agg, "raw", &id);
    assert_eq!(report["ok"], true, "{report:#}");
    let sent = report["sent"].as_array().expect("sent requests");
    for s in sent {
        let chunk = s["chunk"].as_str().expect("chunk id");
        assert!(chunk.ends_with('\n'), "Fluentd-style chunk id: {chunk:?}");
    }
    // Every record of every acked request is in the output, with its tag.
    let mut expected = Vec::new();
    for s in sent {
        for r in s["records"].as_array().expect("records") {
            expected.push((s["tag"].clone(), r.clone()));
        }
    }
    let lines = wait_for_lines(&agg.out_dir, expected.len(), TIMEOUT, |v| {
        v["record"]["test_id"] == id.as_str()
    });
    assert_eq!(lines.len(), expected.len(), "{lines:#?}");
    for (tag, rec) in &expected {
        assert!(
            lines
                .iter()
                .any(|l| &l["tag"] == tag && &l["record"] == rec),
            "{tag} {rec} missing from {lines:#?}"
        );
    }
    // The entries' times: 2021-01-01T00:00:00 plus the entry's nanoseconds.
    let forward_0 = lines
        .iter()
        .find(|l| l["record"]["mode"] == "forward" && l["record"]["i"] == 2)
        .expect("forward entry 2");
    assert_eq!(forward_0["time"], "2021-01-01T00:00:00.123456791Z");
}
