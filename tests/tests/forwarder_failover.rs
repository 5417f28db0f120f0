//! Talks to: three real `logferry-aggregator` processes listening on 127.0.0.2, 127.0.0.3 and
//! 127.0.0.4, fed by one real `logferry-forwarder` that tails a file the test writes; one
//! aggregator is stopped mid-run. The file outputs of all three are read back.
//!
//! Shows: requests are spread over every live aggregator, and when one goes away its requests
//! go to the others: every record arrives.

use std::time::Duration;

use logferry_e2e::forwarder::{seq_report, Forwarder, ForwarderConfig, LogFormat, LogWriter};
use logferry_e2e::{metric_value, unique_id, wait_until, Aggregator, AggregatorConfig};

const LINES: u64 = 60_000;

fn start_on(ip: &str) -> Aggregator {
    Aggregator::start_with(AggregatorConfig {
        forward_listen: format!("{ip}:0"),
        ..AggregatorConfig::default()
    })
}

fn count(agg: &Aggregator, run: &str) -> u64 {
    seq_report(&agg.out_dir, run, 0).received
}

#[test]
fn load_is_spread_and_a_stopped_aggregator_loses_nothing() {
    let mut aggs = vec![
        start_on("127.0.0.2"),
        start_on("127.0.0.3"),
        start_on("127.0.0.4"),
    ];
    let logs = tempfile::tempdir().unwrap();
    let run = unique_id("failover");
    let fwd = Forwarder::start(ForwarderConfig {
        paths: vec![format!("{}/*.log", logs.path().display())],
        servers: aggs.iter().map(Aggregator::target).collect(),
        window: 2,
        chunk_limit_size: "256KiB".into(),
        input_extra: format!(
            "{}batch_size = \"16KiB\"\n",
            ForwarderConfig::default().input_extra
        ),
        ..ForwarderConfig::default()
    });
    wait_until("three connections", Duration::from_secs(30), || {
        metric_value(&fwd.metrics(), "logferry_forward_servers_up").filter(|&n| n >= 3.0)
    });
    let path = logs.path().join("app.log");
    let run2 = run.clone();
    let writer = std::thread::spawn(move || {
        let mut w = LogWriter::new(&path, LogFormat::Cri, &run2);
        while w.next_seq < LINES {
            w.write(500);
            std::thread::sleep(Duration::from_millis(40));
        }
    });
    // Let all three take load, then stop the second one (gracefully: what it acked reaches
    // its output before it exits).
    wait_until(
        "the second aggregator took load",
        Duration::from_secs(60),
        || (count(&aggs[1], &run) >= 2_000).then_some(()),
    );
    let before: Vec<u64> = aggs.iter().map(|a| count(a, &run)).collect();
    eprintln!("e2e: before stopping the second aggregator: {before:?}");
    let status = aggs[1].stop(Duration::from_secs(30));
    assert!(status.success());
    writer.join().unwrap();

    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let (mut unique, mut total);
    loop {
        let mut seen = std::collections::HashSet::new();
        total = 0;
        for a in &aggs {
            for v in logferry_e2e::read_output(&a.out_dir) {
                if v["record"]["run_id"] == run.as_str() {
                    total += 1;
                    if let Some(s) = v["record"]["seq"].as_u64() {
                        seen.insert(s);
                    }
                }
            }
        }
        unique = seen.len() as u64;
        if unique == LINES || std::time::Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let after: Vec<u64> = aggs.iter().map(|a| count(a, &run)).collect();
    eprintln!("e2e: records per aggregator: {after:?}, total {total}, unique {unique}");
    assert_eq!(unique, LINES, "records lost in the failover: {after:?}");
    // Every aggregator took a fair share while it was up; the two survivors split the rest.
    for (i, n) in before.iter().enumerate() {
        assert!(
            *n > 0,
            "aggregator {i} got nothing before the stop: {before:?}"
        );
    }
    for i in [0, 2] {
        let gained = after[i] - before[i];
        assert!(
            gained >= (LINES - before.iter().sum::<u64>()) / 5,
            "aggregator {i} took too little after the stop: before {before:?}, after {after:?}"
        );
    }
    let m = fwd.metrics();
    assert_eq!(
        metric_value(&m, "logferry_forward_servers_up"),
        Some(2.0),
        "{m}"
    );
}
