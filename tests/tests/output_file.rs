//! The file output end to end, through a real aggregator: failures are per file, so one record
//! whose tag is too long for a file name neither stalls the output nor drags the other records
//! of its chunk into dead letters (audit #4, experiment e2).

use std::time::Duration;

use logferry_e2e::client::{request, tcp};
use logferry_e2e::{metric_value, read_output, wait_for_records, Aggregator, AggregatorConfig};
use tokio::io::AsyncWriteExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tag_too_long_for_a_file_name_does_not_hold_back_its_chunk() {
    let mut agg = Aggregator::start_with(AggregatorConfig {
        // One chunk for all three requests; a failing attempt would retry for the whole wait.
        flush_interval: "1s".into(),
        extra_toml:
            "retry = { initial = \"100ms\", max_interval = \"500ms\", timeout = \"60s\" }\n".into(),
        ..AggregatorConfig::default()
    });
    let long_tag = format!("evil.{}", "x".repeat(250));
    let mut conn = tcp(agg.forward_addr).await;
    for (tag, run, n) in [
        ("good.before", "before", 5),
        (long_tag.as_str(), "long", 1),
        ("good.after", "after", 5),
    ] {
        conn.write_all(&request(tag, run, 0, n, run)).await.unwrap();
    }
    conn.flush().await.unwrap();

    let wait = Duration::from_secs(30);
    for (run, n) in [("before", 5), ("after", 5), ("long", 1)] {
        let count = wait_for_records(&agg.out_dir, run, n, wait);
        assert_eq!(count.unique, n, "{run}: {count:?}");
    }
    let long_lines: Vec<_> = read_output(&agg.out_dir)
        .into_iter()
        .filter(|v| v["tag"].as_str() == Some(long_tag.as_str()))
        .collect();
    assert_eq!(
        long_lines.len(),
        1,
        "the long tag is kept whole in the line"
    );
    let metrics = agg.metrics();
    assert_eq!(
        metric_value(&metrics, "logferry_dead_letter_records_total"),
        None,
        "no dead letters"
    );
    assert_eq!(metric_value(&metrics, "logferry_output_errors_total"), None);
    agg.stop(Duration::from_secs(30));
}
