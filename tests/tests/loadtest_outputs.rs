//! Talks to: a real `logferry-aggregator` with an `elasticsearch` output delivering to noida-db
//! (`$LOGFERRY_NOIDA`) or a `kafka` output delivering to Tansu (`$LOGFERRY_TANSU`), fed by the real
//! `logferry-loadtest forward --ack`; checked with `logferry-loadtest verify --es` / `--kafka`
//! (the tool under test), after the harness's own readers saw every record.

use std::time::Duration;

use logferry_e2e::services::{kafka_create_topic, kafka_seqs, wait_for_es, Service, ServiceKind};
use logferry_e2e::{unique_id, Aggregator, AggregatorConfig, Load};
use serde_json::Value;

const N: u64 = 3000;

fn forward(agg: &Aggregator, run_id: &str) {
    let out = Load::acked(agg, N, run_id).batch(250).no_timeline().run();
    assert!(out.status.success(), "loadtest forward failed");
}

/// Runs `verify`; returns the exit code and the JSON report.
fn verify(load: Load) -> (Option<i32>, Value) {
    let out = load.run();
    let report = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "verify printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    });
    (out.status.code(), report)
}

#[test]
fn verify_reads_elasticsearch() {
    let Some(es) = Service::start(ServiceKind::NoidaElasticsearch) else {
        return;
    };
    let run_id = unique_id("verify-es");
    let prefix = run_id.to_lowercase();
    let agg = Aggregator::start_with(AggregatorConfig {
        output_type: "elasticsearch".into(),
        extra_toml: format!(
            "endpoints = [\"{}\"]\nindex = \"{prefix}-%Y.%m.%d\"\n",
            es.url()
        ),
        ..AggregatorConfig::default()
    });
    forward(&agg, &run_id);
    let pattern = format!("{prefix}-*");
    wait_for_es(&es.url(), &pattern, &run_id, N, Duration::from_secs(60));

    let url = es.url();
    let (code, r) = verify(
        Load::verify(&run_id)
            .es(&url)
            .index(&pattern)
            .expect(N)
            .json(),
    );
    assert_eq!(code, Some(0), "{r}");
    assert_eq!(
        (r["received"].as_u64(), r["missing"].as_u64()),
        (Some(N), Some(0)),
        "{r}"
    );
    assert_eq!(r["duplicates"], 0, "{r}");
    assert!(
        r["input"].as_str().unwrap().contains("elasticsearch"),
        "{r}"
    );

    // 100 more were "sent" than arrived: reported missing, exit 1.
    let (code, r) = verify(
        Load::verify(&run_id)
            .es(&url)
            .index(&pattern)
            .expect(N + 100)
            .json(),
    );
    assert_eq!(code, Some(1), "{r}");
    assert_eq!(r["missing"], 100, "{r}");
    assert_eq!(
        r["missing_ranges"][0],
        serde_json::json!([N, N + 99]),
        "{r}"
    );

    // An index pattern that matches nothing is an error, not an empty success.
    let out = Load::verify(&run_id)
        .es(&url)
        .index("no-such-index")
        .json()
        .run();
    assert_eq!(out.status.code(), Some(2));
}

fn kafka_round_trip(format: &str) {
    let Some(broker) = Service::start(ServiceKind::Tansu) else {
        return;
    };
    let run_id = unique_id(&format!("verify-kafka-{format}"));
    let topic = format!("verify.{}", run_id.replace('-', "_"));
    kafka_create_topic(&broker.addr(), &topic, 3);
    let agg = Aggregator::start_with(AggregatorConfig {
        output_type: "kafka".into(),
        extra_toml: format!(
            "brokers = \"{}\"\ntopic = \"{topic}\"\nformat = \"{format}\"\n",
            broker.addr()
        ),
        ..AggregatorConfig::default()
    });
    forward(&agg, &run_id);
    if format == "json" {
        let seqs = kafka_seqs(
            &broker.addr(),
            &topic,
            &run_id,
            N,
            Duration::from_secs(60),
            Duration::ZERO,
        );
        assert!(seqs.missing(N).is_empty());
    } else {
        // The harness reader only knows JSON: wait for the aggregator to deliver everything.
        logferry_e2e::wait_until("delivery to Kafka", Duration::from_secs(60), || {
            let m = agg.metrics();
            (logferry_e2e::metric_value(&m, "logferry_output_records_total")? >= N as f64)
                .then_some(())
        });
    }
    let (code, r) = verify(
        Load::verify(&run_id)
            .kafka(&broker.addr())
            .topic(&topic)
            .expect(N)
            .json(),
    );
    assert_eq!(code, Some(0), "{r}");
    assert_eq!(
        (r["received"].as_u64(), r["missing"].as_u64()),
        (Some(N), Some(0)),
        "{r}"
    );
    assert_eq!(r["malformed_lines"], 0, "{r}");
    assert!(r["input"].as_str().unwrap().contains(&topic), "{r}");
}

#[test]
fn verify_reads_kafka_json_messages() {
    kafka_round_trip("json");
}

#[test]
fn verify_reads_kafka_msgpack_messages() {
    kafka_round_trip("msgpack");
}
