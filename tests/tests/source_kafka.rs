//! Talks to: real `logferry-aggregator` processes with a `[sources.k] type = "kafka"` (rdkafka
//! with its bundled librdkafka, in a consumer group) against a real Kafka-API broker, **Tansu**
//! (`$LOGFERRY_TANSU`, memory storage, one per test), plus noida-db's Elasticsearch API for the
//! replay test. Messages come from an edge aggregator's `kafka` output (`format = "forward"`,
//! fed by `logferry-loadtest forward --ack`) or from an rdkafka producer in the test, and are
//! counted by `seq` in the consuming aggregators' file outputs.
//!
//! Consumers use `session.timeout.ms = 6000`: Tansu's JoinGroup waits half the session
//! timeout (../shared/research/backing-services.md), so the group forms in about 3 s.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use logferry_e2e::services::{kafka_create_topic, wait_for_es, Service, ServiceKind};
use logferry_e2e::{
    metric_value, read_output, unique_id, wait_until, Aggregator, AggregatorConfig, Load,
};

const GROUP_SETTINGS: &str =
    "librdkafka = { \"session.timeout.ms\" = \"6000\", \"heartbeat.interval.ms\" = \"500\", \"max.poll.interval.ms\" = \"7000\" }";

/// A consuming aggregator: file output `out`, and source `k` on `topic` in `group`.
fn consumer(brokers: &str, topic: &str, group: &str, source_extra: &str) -> AggregatorConfig {
    consumer_with(
        AggregatorConfig::default(),
        brokers,
        topic,
        group,
        source_extra,
    )
}

fn consumer_with(
    base: AggregatorConfig,
    brokers: &str,
    topic: &str,
    group: &str,
    source_extra: &str,
) -> AggregatorConfig {
    AggregatorConfig {
        extra_toml: format!(
            "{}\n[sources.k]\ntype = \"kafka\"\nbrokers = \"{brokers}\"\ntopics = [\"{topic}\"]\ngroup_id = \"{group}\"\n{GROUP_SETTINGS}\n{source_extra}\n",
            base.extra_toml
        ),
        ..base
    }
}

/// Seq -> copies over the file outputs of `dirs`, for records of `run_id`.
fn seqs(dirs: &[&Path], run_id: &str) -> BTreeMap<u64, u64> {
    let mut counts = BTreeMap::new();
    for dir in dirs {
        for v in read_output(dir) {
            let rec = &v["record"];
            if rec["run_id"].as_str() != Some(run_id) {
                continue;
            }
            if let Some(s) = rec["seq"].as_u64() {
                *counts.entry(s).or_default() += 1;
            }
        }
    }
    counts
}

/// Waits until every seq in `0..n` of `run_id` is in the outputs of `dirs`; returns the
/// counts.
fn wait_all(dirs: &[&Path], run_id: &str, n: u64, timeout: Duration) -> BTreeMap<u64, u64> {
    let mut last = BTreeMap::new();
    let found = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        wait_until("every seq delivered", timeout, || {
            last = seqs(dirs, run_id);
            (last.len() as u64 == n).then(|| last.clone())
        })
    }));
    match found {
        Ok(counts) => counts,
        Err(_) => {
            let missing: Vec<u64> = (0..n).filter(|s| !last.contains_key(s)).take(20).collect();
            panic!(
                "{} of {n} seqs delivered; first missing {missing:?}",
                last.len()
            );
        }
    }
}

fn metric(agg: &Aggregator, name: &str) -> f64 {
    metric_value(&agg.metrics(), name).unwrap_or(0.0)
}

/// Waits until the aggregator's source has been assigned partitions.
fn wait_assigned(agg: &Aggregator) {
    wait_until(
        "the source joined its group",
        Duration::from_secs(60),
        || {
            (metric(
                agg,
                "logferry_kafka_rebalances_total{source=\"k\",kind=\"assign\"}",
            ) >= 1.0)
                .then_some(())
        },
    );
}

/// Produces `seqs` to `topic`, seq `s` to partition `s % partitions`, as msgpack records
/// `{run_id, seq}` (the `forward` format's bare-map form), or `poison` bytes for the seqs it
/// names. Waits for every delivery report.
fn produce(
    brokers: &str,
    topic: &str,
    partitions: u64,
    run_id: &str,
    seqs: std::ops::Range<u64>,
    poison: &[u64],
) {
    produce_with(brokers, topic, partitions, run_id, seqs, poison, |_| None);
}

/// [`produce`], with a `logferry-tenant` header on the seqs `tenant` names one for.
fn produce_with(
    brokers: &str,
    topic: &str,
    partitions: u64,
    run_id: &str,
    seqs: std::ops::Range<u64>,
    poison: &[u64],
    tenant: impl Fn(u64) -> Option<&'static str>,
) {
    use rdkafka::message::{Header, OwnedHeaders};
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    use rdkafka::ClientConfig;
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("acks", "all")
        .set("linger.ms", "5")
        .create()
        .expect("producer");
    for seq in seqs {
        let value = if poison.contains(&seq) {
            b"\xc1 not msgpack".to_vec()
        } else {
            use logferry_common::msgpack::{write_map_len, write_str, write_uint};
            let mut v = Vec::new();
            write_map_len(&mut v, 3);
            write_str(&mut v, "run_id");
            write_str(&mut v, run_id);
            write_str(&mut v, "seq");
            write_uint(&mut v, seq);
            write_str(&mut v, "log");
            write_str(&mut v, "x");
            v
        };
        let partition = (seq % partitions) as i32;
        let mut record = BaseRecord::<(), [u8]>::to(topic)
            .payload(&value)
            .partition(partition);
        if let Some(t) = tenant(seq) {
            record = record.headers(OwnedHeaders::new().insert(Header {
                key: "logferry-tenant",
                value: Some(t),
            }));
        }
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((_, back)) => {
                    record = back;
                    producer.poll(Duration::from_millis(10));
                }
            }
        }
        producer.poll(Duration::ZERO);
    }
    producer.flush(Duration::from_secs(30)).expect("flush");
}

/// A run id `kafka-NAME-…` and its topic `NAME.…`.
fn run_names(name: &str) -> (String, String) {
    let run_id = unique_id(&format!("kafka-{name}"));
    let topic = format!("{name}.{}", run_id.replace('-', "_"));
    (run_id, topic)
}

/// A fresh broker with the topic of a new run ([`run_names`]) of `partitions` partitions; `None`
/// when the broker is not installed (the test skips).
fn broker_with_topic(name: &str, partitions: i32) -> Option<(Service, String, String)> {
    let broker = Service::start(ServiceKind::Tansu)?;
    let (run_id, topic) = run_names(name);
    kafka_create_topic(&broker.addr(), &topic, partitions);
    Some((broker, run_id, topic))
}

#[test]
fn forward_through_kafka_to_a_consumer_group_loses_nothing_across_rebalances() {
    let Some((broker, run_id, topic)) = broker_with_topic("tier", 3) else {
        return;
    };
    const HALF: u64 = 4000;
    // The edge: Forward in, Kafka out, each record as a Forward entry with its tag and tenant
    // in headers, keyed by pod so records spread over the partitions.
    let edge = Aggregator::start_with(AggregatorConfig {
        output_type: "kafka".into(),
        extra_toml: format!(
            "brokers = \"{}\"\ntopic = \"{topic}\"\nformat = \"forward\"\nkey = \"kubernetes.pod_name\"\nheaders = {{ \"logferry-tenant\" = \"${{kubernetes.namespace_name}}\" }}\nretry = {{ initial = \"200ms\", max_interval = \"1s\" }}\n",
            broker.addr()
        ),
        ..AggregatorConfig::default()
    });
    let group = unique_id("group");
    let mut a = Aggregator::start_with(consumer(&broker.addr(), &topic, &group, ""));
    wait_assigned(&a);

    // Two runs (each its own run_id, seqs 0..HALF): before and after the second member.
    let runs = [format!("{run_id}-1"), format!("{run_id}-2")];
    let send = |run: &str| {
        let out = Load::acked(&edge, HALF, run)
            .batch(200)
            .connections(6)
            .tag("kube.app")
            .run();
        assert!(out.status.success(), "loadtest failed");
    };
    send(&runs[0]);
    // A second member joins while the first works through the backlog: a rebalance.
    let b = Aggregator::start_with(consumer(&broker.addr(), &topic, &group, ""));
    wait_assigned(&b);
    send(&runs[1]);
    // The first leaves (graceful): its partitions move to the second.
    a.stop(Duration::from_secs(30));
    for run in &runs {
        let counts = wait_all(
            &[&a.out_dir, &b.out_dir],
            run,
            HALF,
            Duration::from_secs(120),
        );
        let duplicates: u64 = counts.values().map(|c| c - 1).sum();
        eprintln!(
            "{run}: delivered {} seqs, {duplicates} duplicates",
            counts.len()
        );
    }
    // The tag came through the header, the time with its nanoseconds through the entry.
    let line = read_output(&b.out_dir)
        .into_iter()
        .find(|v| v["record"]["run_id"].as_str() == Some(runs[1].as_str()))
        .unwrap();
    assert_eq!(line["tag"], "kube.app", "{line}");
    assert!(
        !line["time"].as_str().unwrap().ends_with(".000000000Z"),
        "nanoseconds kept: {line}"
    );
    assert!(
        metric(
            &b,
            "logferry_kafka_rebalances_total{source=\"k\",kind=\"assign\"}"
        ) >= 2.0,
        "the second member was assigned again when the first left"
    );
    assert_eq!(
        metric(&b, "logferry_kafka_store_retries_total"),
        0.0,
        "nothing refused"
    );
}

#[test]
fn a_full_buffer_pauses_consumption_without_leaving_the_group_and_kill_9_loses_nothing() {
    let Some((broker, run_id, topic)) = broker_with_topic("pause", 3) else {
        return;
    };
    const N: u64 = 20_000;
    produce(&broker.addr(), &topic, 3, &run_id, 0..N, &[]);
    // Output `blocked` cannot deliver: its directory's path is a regular file. Its buffer
    // (block, 64 KiB chunks, 256 KiB in all) fills, the source's batch waits for room there,
    // and the bytes in flight pass max_in_flight_bytes: every partition is paused. Output
    // `out` takes every record too, and counts them.
    let blocked = tempfile::tempdir().unwrap();
    let blocked_path = blocked.path().join("out");
    std::fs::write(&blocked_path, b"not a directory").unwrap();
    let base = AggregatorConfig {
        chunk_limit_size: "64KiB".into(),
        total_limit_size: "256KiB".into(),
        overflow_action: "block".into(),
        server_extra: "max_request_bytes = \"64KiB\"\nmax_decompressed_bytes = \"128KiB\""
            .into(),
        buffer_extra: "block_timeout = \"1h\"".into(),
        route_outputs: vec!["out".into(), "blocked".into()],
        extra_toml: format!(
            "[outputs.blocked]\ntype = \"file\"\npath = {}\nretry = {{ initial = \"100ms\", max_interval = \"200ms\" }}\n",
            logferry_e2e::toml_path(&blocked_path)
        ),
        ..AggregatorConfig::default()
    };
    let group = unique_id("group");
    let config = consumer_with(
        base,
        &broker.addr(),
        &topic,
        &group,
        "max_in_flight_bytes = \"64KiB\"\ncommit_interval = \"200ms\"",
    );
    let mut agg = Aggregator::start_with(config);
    wait_assigned(&agg);
    wait_until("partitions paused", Duration::from_secs(60), || {
        (metric(&agg, "logferry_kafka_paused_partitions{source=\"k\"}") >= 1.0).then_some(())
    });
    // Longer than max.poll.interval.ms (7 s) and session.timeout.ms (6 s): a member that
    // stopped polling would have been removed and its partitions revoked or lost.
    std::thread::sleep(Duration::from_secs(10));
    assert_eq!(
        metric(
            &agg,
            "logferry_kafka_rebalances_total{source=\"k\",kind=\"revoke\"}"
        ) + metric(
            &agg,
            "logferry_kafka_rebalances_total{source=\"k\",kind=\"lost\"}"
        ),
        0.0,
        "the paused member stayed in its group"
    );
    assert!(metric(&agg, "logferry_kafka_paused_partitions{source=\"k\"}") >= 1.0);
    // What was consumed before the pause is bounded by max_in_flight_bytes (64 KiB, about
    // 1,100 of these messages) and librdkafka's prefetch, far below N.
    let consumed_before = metric(&agg, "logferry_kafka_consumed_records_total{source=\"k\"}");
    assert!(
        consumed_before > 0.0 && consumed_before < N as f64 / 2.0,
        "{consumed_before} consumed before the pause held"
    );
    // kill -9 with batches consumed and waiting for room (not durable): their offsets were
    // never stored, so they are consumed again.
    agg.sigkill();
    std::fs::remove_file(&blocked_path).unwrap();
    agg.restart();
    let counts = wait_all(&[&agg.out_dir], &run_id, N, Duration::from_secs(120));
    wait_all(&[&blocked_path], &run_id, N, Duration::from_secs(60));
    let consumed_after = metric(&agg, "logferry_kafka_consumed_records_total{source=\"k\"}");
    assert!(
        consumed_before + consumed_after > N as f64,
        "messages consumed but not durable before the kill were consumed again ({consumed_before} + {consumed_after})"
    );
    eprintln!(
        "consumed {consumed_before} before the kill, {consumed_after} after; {} duplicates",
        counts.values().map(|c| c - 1).sum::<u64>()
    );
    wait_until("partitions resumed", Duration::from_secs(30), || {
        (metric(&agg, "logferry_kafka_paused_partitions{source=\"k\"}") == 0.0).then_some(())
    });
}

#[test]
fn a_poison_message_goes_to_dead_letters_and_the_rest_of_its_batch_is_delivered() {
    let Some((broker, run_id, topic)) = broker_with_topic("poison", 1) else {
        return;
    };
    const N: u64 = 300;
    produce(&broker.addr(), &topic, 1, &run_id, 0..N, &[150]);
    let agg = Aggregator::start_with(consumer(&broker.addr(), &topic, &unique_id("g"), ""));
    let counts = wait_until(
        "all but the poison delivered",
        Duration::from_secs(60),
        || {
            let counts = seqs(&[&agg.out_dir], &run_id);
            (counts.len() as u64 == N - 1).then_some(counts)
        },
    );
    assert!(!counts.contains_key(&150));
    assert_eq!(
        metric(
            &agg,
            "logferry_dead_letter_records_total{output=\"k\",reason=\"undecodable\"}"
        ),
        1.0
    );
    // The dead letter keeps the message with its coordinates (read with the CLI's reader).
    let dir = agg.buffer_dir.join("sources/k/dead-letter");
    let listing = logferry_e2e::run_checked(
        std::process::Command::new(logferry_e2e::aggregator_bin())
            .arg("inspect")
            .arg(&dir),
        Duration::from_secs(30),
    );
    let listing = String::from_utf8_lossy(&listing.stdout);
    assert!(listing.contains("sealed"), "{listing}");
    let files: Vec<_> = std::fs::read_dir(&dir).unwrap().flatten().collect();
    assert_eq!(files.len(), 1);
    let raw = std::fs::read(files[0].path()).unwrap();
    let text = String::from_utf8_lossy(&raw);
    assert!(
        text.contains(&format!("{topic}[0] offset 150")),
        "reason names the coordinates"
    );
}

#[test]
fn a_replay_after_kill_9_overwrites_elasticsearch_documents_instead_of_duplicating() {
    let Some((broker, run_id, topic)) = broker_with_topic("es", 3) else {
        return;
    };
    let Some(es) = Service::start(ServiceKind::NoidaElasticsearch) else {
        return;
    };
    const N: u64 = 3000;
    let index = format!("kafka-{}", run_id.to_lowercase());
    produce(&broker.addr(), &topic, 3, &run_id, 0..N, &[]);
    // Nothing is committed before the kill (commit_interval 1h): every message is consumed
    // again after the restart, and each replayed record has the id it had the first time.
    let base = AggregatorConfig {
        output_type: "elasticsearch".into(),
        extra_toml: format!(
            "endpoints = [\"{}\"]\nindex = \"{index}\"\nid_key = \"_kafka_id\"\nretry = {{ initial = \"200ms\", max_interval = \"1s\" }}\n",
            es.url()
        ),
        ..AggregatorConfig::default()
    };
    let mut agg = Aggregator::start_with(consumer_with(
        base,
        &broker.addr(),
        &topic,
        &unique_id("g"),
        "id_key = \"_kafka_id\"\ncommit_interval = \"1h\"",
    ));
    wait_for_es(&es.url(), &index, &run_id, N, Duration::from_secs(60));
    let consumed_before = metric(&agg, "logferry_kafka_consumed_records_total{source=\"k\"}");
    agg.sigkill();
    agg.restart();
    wait_until("everything consumed again", Duration::from_secs(60), || {
        (metric(&agg, "logferry_kafka_consumed_records_total{source=\"k\"}") >= N as f64)
            .then_some(())
    });
    wait_until("the replay delivered", Duration::from_secs(60), || {
        (metric(&agg, "logferry_output_records_total{output=\"out\"}") >= N as f64).then_some(())
    });
    let seqs = wait_for_es(&es.url(), &index, &run_id, N, Duration::from_secs(30));
    assert_eq!(consumed_before, N as f64);
    assert_eq!(
        seqs.duplicates(),
        0,
        "replayed records overwrote their documents"
    );
}

#[test]
fn validate_check_outputs_checks_that_a_source_s_topics_exist() {
    let Some(broker) = Service::start(ServiceKind::Tansu) else {
        return;
    };
    let topic = format!("check.{}", unique_id("t").replace('-', "_"));
    kafka_create_topic(&broker.addr(), &topic, 2);
    let dir = tempfile::tempdir().unwrap();
    let validate = |topics: &str| {
        let config = consumer(&broker.addr(), topics, "g", "");
        let path = dir.path().join("aggregator.toml");
        std::fs::write(&path, config.to_toml(dir.path())).unwrap();
        std::process::Command::new(logferry_e2e::aggregator_bin())
            .args(["validate", "--check-outputs", "--config"])
            .arg(&path)
            .output()
            .unwrap()
    };
    let out = validate(&topic);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains("source k: ok (1 broker(s), 2 partition(s) to consume)"),
        "{stdout}"
    );
    let out = validate("^check\\\\..+\", \"missing.topic");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(78), "{stdout}");
    assert!(
        stdout.contains("source k: UNREACHABLE: no such topic on the brokers: missing.topic"),
        "{stdout}"
    );
}

/// A topic its producer creates (by producing to it; Tansu auto-creates topics) after the
/// source subscribed is found and consumed.
#[test]
fn a_topic_its_producer_creates_after_the_source_subscribed_is_consumed_within_a_minute() {
    let Some(broker) = Service::start(ServiceKind::Tansu) else {
        return;
    };
    let (run_id, topic) = run_names("late");
    let agg = Aggregator::start_with(consumer(&broker.addr(), &topic, &unique_id("g"), ""));
    wait_until(
        "the source found no such topic",
        Duration::from_secs(30),
        || {
            agg.logs()
                .iter()
                .any(|l| l.contains("Unknown topic or partition"))
                .then_some(())
        },
    );
    let t0 = std::time::Instant::now();
    produce(&broker.addr(), &topic, 1, &run_id, 0..100, &[]);
    wait_all(&[&agg.out_dir], &run_id, 100, Duration::from_secs(60));
    eprintln!("consumed {:?} after the topic was created", t0.elapsed());
}

#[test]
fn a_messages_tenant_header_takes_it_to_that_tenants_pipelines_only() {
    let Some((broker, run_id, topic)) = broker_with_topic("tenants", 2) else {
        return;
    };
    const N: u64 = 600;
    // Seqs cycle over shop, ops and no tenant header.
    let tenant_of = |seq: u64| [Some("shop"), Some("ops"), None][(seq % 3) as usize];
    produce_with(&broker.addr(), &topic, 2, &run_id, 0..N, &[], tenant_of);
    let dir = tempfile::tempdir().unwrap();
    let (pipelines, files) = (dir.path().join("pipelines"), dir.path().join("files"));
    let policy = dir.path().join("policy.toml");
    std::fs::write(
        &policy,
        format!(
            "[default]\noutput_types = [\"file\"]\nfile_root = {}\n",
            logferry_e2e::toml_path(&files)
        ),
    )
    .unwrap();
    for tenant in ["shop", "ops"] {
        std::fs::create_dir_all(pipelines.join(tenant)).unwrap();
        std::fs::write(
            pipelines.join(tenant).join("p.toml"),
            format!(
                "[outputs.out]\ntype = \"file\"\npath = {}\n",
                logferry_e2e::toml_path(&files.join(tenant))
            ),
        )
        .unwrap();
    }
    let base = AggregatorConfig {
        extra_toml: format!(
            "\n[pipelines]\ndir = {}\npolicy = {}\n",
            logferry_e2e::toml_path(&pipelines),
            logferry_e2e::toml_path(&policy)
        ),
        ..AggregatorConfig::default()
    };
    let agg = Aggregator::start_with(consumer_with(
        base,
        &broker.addr(),
        &topic,
        &unique_id("g"),
        "tenant_header = \"logferry-tenant\"",
    ));
    // The admin route takes every record; each tenant's pipeline exactly its own.
    wait_all(&[&agg.out_dir], &run_id, N, Duration::from_secs(60));
    for (tenant, rest) in [("shop", 0), ("ops", 1)] {
        let want = N / 3;
        let counts = wait_until("the tenant's records", Duration::from_secs(60), || {
            let counts = seqs(&[&files.join(tenant)], &run_id);
            (counts.len() as u64 >= want).then_some(counts)
        });
        assert_eq!(counts.len() as u64, want, "{tenant}");
        assert!(
            counts.keys().all(|s| s % 3 == rest),
            "{tenant} got another tenant's records"
        );
    }
}
