//! The deployed configs and metric names against the real binaries: every config a ConfigMap
//! of deploy/ carries passes `logferry-aggregator validate` / `logferry-forwarder validate`
//! (with the environment variables the pod gets set to placeholders), and every metric that an
//! alert rule or the Grafana dashboard queries is exported on `/metrics` by a running
//! aggregator or forwarder, with the labels the queries use.
//!
//! Real components: `logferry-aggregator`, `logferry-forwarder` and `logferry-loadtest`
//! (built from the workspace), `kubectl kustomize`, and promql-parser (deploy/tools/k8s_facts.py)
//! to find the metric names in the queries. Everything listens on 127.0.0.1 port 0.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use logferry_e2e::deploy::*;
use logferry_e2e::services::{kafka_create_topic, Service, ServiceKind};
use logferry_e2e::{aggregator_bin, binary, metrics, toml_path, unique_id, wait_until, Load};
use serde_json::Value;

/// Runs `BIN validate --config` on the config `container` of `workload` runs in the rendered
/// `path` (a kustomization under deploy/), with the container's environment variables set to
/// placeholders. Returns the validator's output.
fn validate(bin: &Path, path: &str, kind: &str, workload: &str, container_name: &str) -> String {
    let Some(t) = tools() else {
        return String::new();
    };
    let objects = yaml_objects(&t, &render(&t, path));
    let w = find(&objects, kind, workload);
    let c = container(w, container_name);
    let (_, text) = workload_config(&objects, w, container_name);
    let (_dir, file) = temp_file("config.toml", &text);
    let env: Vec<(String, String)> = env_names(c)
        .into_iter()
        .map(|n| {
            let v = format!("placeholder-{}", n.to_lowercase());
            (n, v)
        })
        .collect();
    let out = run(
        Command::new(bin)
            .args(["validate", "--config"])
            .arg(&file)
            .envs(env.iter().map(|(k, v)| (k, v))),
        None,
        Duration::from_secs(60),
    );
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "deploy/{path}: the config of {kind}/{workload} is invalid ({}):\n{report}\n--- config\n{text}",
        out.status
    );
    report
}

fn forwarder_bin() -> std::path::PathBuf {
    binary("logferry-forwarder", "logferry-forwarder")
}

#[test]
fn base_aggregator_config_passes_validate() {
    validate(
        &aggregator_bin(),
        "base/aggregator",
        "StatefulSet",
        "logferry-aggregator",
        "aggregator",
    );
}

#[test]
fn cluster_aggregator_config_passes_validate() {
    validate(
        &aggregator_bin(),
        "overlays/cluster",
        "StatefulSet",
        "logferry-aggregator",
        "aggregator",
    );
}

#[test]
fn kafka_aggregator_config_passes_validate() {
    validate(
        &aggregator_bin(),
        "overlays/kafka",
        "StatefulSet",
        "logferry-aggregator",
        "aggregator",
    );
}

#[test]
fn kafka_tier_edge_config_passes_validate() {
    validate(
        &aggregator_bin(),
        "overlays/kafka-tier",
        "StatefulSet",
        "logferry-aggregator",
        "aggregator",
    );
}

/// The processors' config: a Kafka source (static membership from ${POD_NAME}) and
/// Elasticsearch.
#[test]
fn kafka_tier_processor_config_passes_validate() {
    validate(
        &aggregator_bin(),
        "overlays/kafka-tier",
        "StatefulSet",
        "logferry-aggregator-processor",
        "aggregator",
    );
}

#[test]
fn aggregator_only_config_passes_validate() {
    validate(
        &aggregator_bin(),
        "overlays/aggregator-only",
        "StatefulSet",
        "logferry-aggregator",
        "aggregator",
    );
}

#[test]
fn forwarder_config_passes_validate() {
    validate(
        &forwarder_bin(),
        "overlays/cluster",
        "DaemonSet",
        "logferry-forwarder",
        "forwarder",
    );
}

/// The validation above can fail: the same deploy config with its buffer limit below its
/// chunk size is rejected with exit code 78.
#[test]
fn validate_rejects_a_broken_deploy_config() {
    let Some(t) = tools() else { return };
    let objects = yaml_objects(&t, &render(&t, "base/aggregator"));
    let w = find(&objects, "StatefulSet", "logferry-aggregator");
    let (_, text) = workload_config(&objects, w, "aggregator");
    let broken = text.replace(
        "total_limit_size = \"15GiB\"",
        "total_limit_size = \"1KiB\"",
    );
    assert_ne!(broken, text);
    let (_dir, file) = temp_file("config.toml", &broken);
    let out = run(
        Command::new(aggregator_bin())
            .args(["validate", "--config"])
            .arg(&file),
        None,
        Duration::from_secs(60),
    );
    assert_eq!(out.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&out.stderr).contains("buffer.total_limit_size"));
}

/// Metric names (and the label names used with them) queried by the alert rules and the
/// dashboard; `groupings` holds the labels of `by (...)`/`on (...)` with the metrics below them.
struct Queried {
    selectors: BTreeMap<String, BTreeSet<String>>,
    groupings: Vec<Grouping>,
}

/// One `by (...)` or `on (...)` of a query.
struct Grouping {
    /// The alert or panel.
    what: String,
    /// The labels it names.
    labels: BTreeSet<String>,
    /// The metrics below it.
    metrics: Vec<String>,
    /// Labels that label_replace creates below it.
    created: BTreeSet<String>,
}

fn queried(t: &Tools) -> Queried {
    let exprs: Vec<(String, String)> = alert_exprs(t)
        .into_iter()
        .chain(dashboard_exprs())
        .collect();
    let texts: Vec<String> = exprs.iter().map(|(_, e)| e.clone()).collect();
    let parsed = promql(t, &texts);
    let mut selectors: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut groupings = Vec::new();
    for ((what, _), p) in exprs.iter().zip(&parsed) {
        assert!(p["error"].is_null(), "{what}: {}", p["error"]);
        for s in p["selectors"].as_array().expect("selectors") {
            let name = s["name"].as_str().expect("a selector names its metric");
            let entry = selectors.entry(name.to_owned()).or_default();
            for l in s["labels"].as_array().expect("labels") {
                entry.insert(l.as_str().expect("label").to_owned());
            }
        }
        for g in p["groupings"].as_array().expect("groupings") {
            let strings = |v: &Value| -> Vec<String> {
                v.as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|x| x.as_str().map(str::to_owned))
                    .collect()
            };
            groupings.push(Grouping {
                what: what.clone(),
                labels: strings(&g["labels"]).into_iter().collect(),
                metrics: strings(&g["metrics"]),
                created: strings(&g["created"]).into_iter().collect(),
            });
        }
    }
    Queried {
        selectors,
        groupings,
    }
}

/// Series synthesised by Prometheus itself, not exported by our binaries.
const PROMETHEUS_SERIES: [&str; 1] = ["up"];

/// Metrics only the forwarder exports (forwarder/src/metrics.rs) or that only mean something
/// there (tailing).
const FORWARDER_ONLY: [&str; 6] = [
    "logferry_forward_servers_up",
    "logferry_forward_acks_received_total",
    "logferry_tail_files",
    "logferry_tail_unread_bytes",
    "logferry_tail_truncated_lines_total",
    "logferry_tail_partial_flushes_total",
];

/// Metrics of Kafka sources (labels appear once a source runs): checked against a consuming
/// aggregator, see [`alert_and_dashboard_metrics_are_exported_by_a_kafka_source`].
const KAFKA_SOURCE_PREFIX: &str = "logferry_kafka_";

/// A Kafka source exports this only once an offset store or commit failed, which no scenario
/// against Tansu provokes deterministically (librdkafka defers a commit while the coordinator
/// is away rather than failing it): the queries' labels are checked against its definition in
/// common/src/telemetry.rs instead.
const KAFKA_OFFSET_ERRORS: (&str, [&str; 3]) = (
    "logferry_kafka_offset_errors_total",
    ["source", "op", "code"],
);

/// [`KAFKA_OFFSET_ERRORS`] is defined with its labels, and the queries use only those.
fn check_offset_errors_queries(q: &Queried) {
    let (name, labels) = KAFKA_OFFSET_ERRORS;
    let telemetry =
        std::fs::read_to_string(logferry_e2e::workspace_root().join("common/src/telemetry.rs"))
            .expect("common/src/telemetry.rs");
    let at = telemetry
        .find(&format!("\"{name}\""))
        .unwrap_or_else(|| panic!("{name} is not defined in common/src/telemetry.rs"));
    let definition: String = telemetry[at..].chars().take(200).collect();
    let label_list = format!("&{labels:?}")
        .replace(',', ", ")
        .replace(",  ", ", ");
    assert!(
        definition.contains(&label_list),
        "{name} is not defined with labels {label_list}: {definition}"
    );
    let known = |l: &String| labels.contains(&l.as_str()) || TARGET_LABELS.contains(&l.as_str());
    for label in q.selectors.get(name).into_iter().flatten() {
        assert!(known(label), "a query uses {name}{{{label}=...}}");
    }
    for g in q.groupings.iter().filter(|g| g.metrics == [name]) {
        for label in &g.labels {
            assert!(
                known(label) || g.created.contains(label),
                "{}: groups {name} by `{label}`",
                g.what
            );
        }
    }
}

/// What the forwarder's scrape must have: its own metrics and those of the contract the
/// alerts apply to every job (availability, throughput, buffer).
const FORWARDER_METRICS: [&str; 11] = [
    "process_start_time_seconds",
    "process_cpu_seconds_total",
    "process_resident_memory_bytes",
    "logferry_input_records_total",
    "logferry_output_records_total",
    "logferry_buffer_bytes",
    "logferry_buffer_limit_bytes",
    "logferry_buffer_oldest_record_age_seconds",
    "logferry_forward_servers_up",
    "logferry_forward_acks_received_total",
    "logferry_tail_files",
];

/// Checks that each metric in `names` is in `scrape` with the labels the queries use.
fn assert_exported(who: &str, q: &Queried, names: &BTreeSet<String>, scrape: &str) {
    let series = scraped_series(scrape);
    let mut problems = Vec::new();
    for name in names {
        let Some(have) = series.get(name) else {
            problems.push(format!("{name} is not exported by the {who}"));
            continue;
        };
        for label in &q.selectors[name] {
            if !have.contains(label) && !TARGET_LABELS.contains(&label.as_str()) {
                problems.push(format!(
                    "{name}{{{label}=...}}: the {who} exports {name} with labels {have:?}"
                ));
            }
        }
    }
    for Grouping {
        what,
        labels,
        metrics,
        created,
    } in &q.groupings
    {
        let ours: Vec<&String> = metrics.iter().filter(|m| names.contains(*m)).collect();
        if ours.is_empty() {
            continue;
        }
        for label in labels {
            let known = TARGET_LABELS.contains(&label.as_str())
                || created.contains(label)
                || ours
                    .iter()
                    .any(|m| series.get(*m).is_some_and(|h| h.contains(label)));
            if !known {
                problems.push(format!(
                    "{what}: groups by `{label}`, a label none of {ours:?} has at the {who}"
                ));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "queries of alerts.yaml / grafana-dashboard.json vs the {who}'s /metrics:\n{}",
        problems.join("\n")
    );
}

/// An aggregator on loopback ports with its buffer at `buffer` and one output, `name`, whose
/// `[outputs.NAME]` table is `output`, taking every record.
fn plain_aggregator_config(buffer: &Path, name: &str, output: &str) -> String {
    format!(
        r#"[server]
listen = "127.0.0.1:0"
[admin]
listen = "127.0.0.1:0"
[buffer]
path = {buffer}
flush_interval = "100ms"
[[route]]
match = "**"
outputs = ["{name}"]
[outputs.{name}]
{output}"#,
        buffer = toml_path(buffer),
    )
}

/// Polls `/metrics` until every `needle` appears (60s; the panic names the missing ones and
/// shows the last scrape).
fn scrape_until(admin: std::net::SocketAddr, needles: &[&str]) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let text = metrics(admin);
        let missing: Vec<&&str> = needles.iter().filter(|n| !text.contains(**n)).collect();
        if missing.is_empty() {
            return text;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{missing:?} not on /metrics after 60s; the last scrape:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// An aggregator whose every metric family has samples: a healthy file output, a failing one
/// (a regular file where its directory should be: errors, retries, then dead letters after a
/// 1s retry timeout), a damaged chunk file left in a buffer (corruption), records sent with
/// acks, a request that is not Forward (decode error), and two tenant pipelines of the
/// records' namespace: one parsing their text lines as JSON (parse errors), one keeping none
/// (drops).
#[test]
fn alert_and_dashboard_metrics_are_exported_by_the_aggregator() {
    let Some(t) = tools() else { return };
    let q = queried(&t);
    let names: BTreeSet<String> = q
        .selectors
        .keys()
        .filter(|n| !PROMETHEUS_SERIES.contains(&n.as_str()))
        .filter(|n| !FORWARDER_ONLY.contains(&n.as_str()))
        .filter(|n| !n.starts_with(KAFKA_SOURCE_PREFIX))
        .cloned()
        .collect();
    assert!(names.len() >= 15, "{names:?}");

    let dir = tempfile::tempdir().expect("temp dir");
    let blocker = dir.path().join("not-a-directory");
    std::fs::write(&blocker, b"a regular file").expect("writing");
    let damaged = dir.path().join("buffer/outputs/good");
    std::fs::create_dir_all(&damaged).expect("mkdir");
    std::fs::write(
        damaged.join(logferry_common::chunk::chunk_file_name(
            1,
            logferry_common::chunk::ChunkState::Sealed,
        )),
        b"this is not a chunk header, it is garbage that recovery must quarantine",
    )
    .expect("writing a damaged chunk");
    let pipelines = dir.path().join("pipelines/loadtest");
    std::fs::create_dir_all(&pipelines).expect("mkdir");
    let sink = "[outputs.sink]\ntype = \"null\"\n";
    std::fs::write(
        pipelines.join("parse.toml"),
        format!("[parse]\nformat = \"json\"\n{sink}"),
    )
    .expect("writing a pipeline");
    std::fs::write(
        pipelines.join("none.toml"),
        format!("[[filter]]\ntype = \"keep\"\nfield = \"level\"\nvalues = [\"never\"]\n{sink}"),
    )
    .expect("writing a pipeline");
    let config = format!(
        r#"shutdown_timeout = "5s"

[server]
listen = "127.0.0.1:0"

[admin]
listen = "127.0.0.1:0"

[buffer]
path = {buffer}
chunk_limit_size = "1MiB"
flush_interval = "100ms"
total_limit_size = "64MiB"

[[route]]
match = "**"
outputs = ["good", "bad"]

[outputs.good]
type = "file"
path = {good}

[outputs.bad]
type = "file"
path = {bad}
retry.initial = "50ms"
retry.max_interval = "100ms"
retry.timeout = "1s"

[pipelines]
dir = {pipelines}
rescan_interval = "200ms"
"#,
        pipelines = toml_path(&dir.path().join("pipelines")),
        buffer = toml_path(&dir.path().join("buffer")),
        good = toml_path(&dir.path().join("out")),
        bad = toml_path(&blocker.join("out")),
    );
    let (_cdir, config_path) = temp_file("aggregator.toml", &config);
    let agg = Daemon::start(
        &aggregator_bin(),
        &config_path,
        dir.path(),
        &[],
        &["forward", "admin"],
    );
    // The pipelines are applied after the listeners open: records sent before would pass them by.
    wait_until("both pipelines applied", Duration::from_secs(30), || {
        let applied = agg
            .logs()
            .iter()
            .filter(|l| l.contains("\"pipeline applied\""))
            .count();
        (applied >= 2).then_some(())
    });
    let target = agg.listeners["forward"].to_string();
    let out = Load::forward(&target).records(300).batch(50).ack().run();
    assert!(out.status.success(), "loadtest failed");
    // A request that is not msgpack Forward: 0xc1 is a byte msgpack never uses.
    let mut s = TcpStream::connect(agg.listeners["forward"]).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    s.write_all(&[0xc1; 64]).expect("write");
    let mut sink = Vec::new();
    let _ = s.read_to_end(&mut sink);

    let scrape = scrape_until(
        agg.admin(),
        &[
            "logferry_output_records_total{output=\"good\"}",
            "logferry_output_errors_total{",
            "logferry_output_retries_total{output=\"bad\"}",
            "logferry_dead_letter_records_total{",
            "logferry_buffer_corruption_total{",
            "logferry_output_flush_duration_seconds_bucket{",
            "logferry_pipeline_parse_errors_total{",
            "logferry_pipeline_dropped_records_total{",
        ],
    );
    assert!(
        logferry_e2e::metric_value(&scrape, "logferry_forward_decode_errors_total") >= Some(1.0),
        "the garbage request was not counted"
    );
    assert_exported("aggregator", &q, &names, &scrape);
}

/// A processor of the kafka-tier overlay in small: an edge aggregator writes Forward entries to
/// a Tansu topic of 2 partitions (its `kafka` output, `format = "forward"`), and processor A
/// consumes them into a buffer that cannot deliver (its file output's directory is a regular
/// file; `block`, 256 KiB): store retries after `block_timeout`, partitions paused above
/// `max_in_flight_bytes`, lag. Processor B joins the group: A's revoked partition cannot drain
/// within `drain_timeout`. A then exports every `logferry_kafka_*` metric the alerts and the
/// dashboard query, except [`KAFKA_OFFSET_ERRORS`], checked against its definition.
#[test]
fn alert_and_dashboard_metrics_are_exported_by_a_kafka_source() {
    let Some(t) = tools() else { return };
    let q = queried(&t);
    let names: BTreeSet<String> = q
        .selectors
        .keys()
        .filter(|n| n.starts_with(KAFKA_SOURCE_PREFIX))
        .filter(|n| n.as_str() != KAFKA_OFFSET_ERRORS.0)
        .cloned()
        .collect();
    assert!(names.len() >= 8, "{names:?}");
    check_offset_errors_queries(&q);
    let Some(broker) = Service::start(ServiceKind::Tansu) else {
        return;
    };
    let run_id = unique_id("deploy-kafka");
    let topic = format!("deploy.{}", run_id.replace('-', "_"));
    kafka_create_topic(&broker.addr(), &topic, 2);
    let dir = tempfile::tempdir().expect("temp dir");

    let edge_config = plain_aggregator_config(
        &dir.path().join("edge"),
        "kafka",
        &format!(
            "type = \"kafka\"\nbrokers = \"{}\"\ntopic = \"{topic}\"\nformat = \"forward\"\n\
             # Both partitions get records (and so batches in flight at processor A).\n\
             key = \"seq\"\n",
            broker.addr()
        ),
    );
    let (_e, edge_path) = temp_file("edge.toml", &edge_config);
    let edge = Daemon::start(
        &aggregator_bin(),
        &edge_path,
        dir.path(),
        &[],
        &["forward", "admin"],
    );
    let out = Load::forward(&edge.listeners["forward"].to_string())
        .run_id(&run_id)
        .records(6000)
        .batch(100)
        .ack()
        .run();
    assert!(out.status.success(), "loadtest failed");

    let blocker = dir.path().join("not-a-directory");
    std::fs::write(&blocker, b"a regular file").expect("writing");
    let processor = |name: &str, instance: &str| {
        let config = format!(
            r#"shutdown_timeout = "5s"
[server]
listen = "127.0.0.1:0"
max_request_bytes = "64KiB"
max_decompressed_bytes = "128KiB"
[admin]
listen = "127.0.0.1:0"
[buffer]
path = {buffer}
chunk_limit_size = "64KiB"
total_limit_size = "256KiB"
overflow_action = "block"
block_timeout = "1s"
flush_interval = "100ms"
[[route]]
match = "**"
outputs = ["blocked"]
[outputs.blocked]
type = "file"
path = {blocked}
retry = {{ initial = "100ms", max_interval = "200ms" }}
[sources.k]
type = "kafka"
brokers = "{brokers}"
topics = ["{topic}"]
group_id = "{run_id}"
group_instance_id = "{instance}"
max_in_flight_bytes = "64KiB"
drain_timeout = "500ms"
commit_interval = "200ms"
librdkafka = {{ "session.timeout.ms" = "6000", "heartbeat.interval.ms" = "500", "max.poll.interval.ms" = "7000" }}
"#,
            buffer = toml_path(&dir.path().join(name)),
            blocked = toml_path(&blocker.join("out")),
            brokers = broker.addr(),
        );
        let (cdir, path) = temp_file(&format!("{name}.toml"), &config);
        let daemon = Daemon::start(&aggregator_bin(), &path, dir.path(), &[], &["admin"]);
        (cdir, daemon)
    };
    let (_a, a) = processor("a", "processor-0");
    scrape_until(
        a.admin(),
        &[
            "logferry_kafka_rebalances_total{kind=\"assign\",source=\"k\"}",
            "logferry_kafka_paused_partitions{source=\"k\"} 2",
            "logferry_kafka_store_retries_total{",
            "logferry_kafka_consumer_lag{",
            "logferry_kafka_lag_seconds{",
            "logferry_kafka_consumed_bytes_total{",
        ],
    );
    let (_b, _b_daemon) = processor("b", "processor-1");
    let scrape = scrape_until(
        a.admin(),
        &[
            "logferry_kafka_rebalances_total{kind=\"revoke\",source=\"k\"}",
            "logferry_kafka_drain_timeouts_total{source=\"k\"}",
        ],
    );
    assert!(
        logferry_e2e::metric_value(
            &scrape,
            "logferry_kafka_consumed_records_total{source=\"k\"}"
        ) >= Some(1.0),
        "processor A consumed nothing"
    );
    assert_exported("Kafka source", &q, &names, &scrape);
}

/// A forwarder tailing a docker json-file log and shipping it to an aggregator exports the
/// metrics the forwarder's alerts and dashboard row query.
#[test]
fn alert_and_dashboard_metrics_are_exported_by_the_forwarder() {
    let Some(t) = tools() else { return };
    let q = queried(&t);
    for name in FORWARDER_ONLY.iter().chain(&FORWARDER_METRICS) {
        assert!(
            q.selectors.contains_key(*name),
            "{name} is listed here but no alert or panel queries it"
        );
    }
    let names: BTreeSet<String> = FORWARDER_METRICS
        .iter()
        .chain(
            FORWARDER_ONLY
                .iter()
                .filter(|n| q.selectors.contains_key(**n)),
        )
        .map(|s| s.to_string())
        .collect();

    let dir = tempfile::tempdir().expect("temp dir");
    let agg_config =
        plain_aggregator_config(&dir.path().join("agg-buffer"), "out", "type = \"null\"\n");
    let (_a, agg_path) = temp_file("aggregator.toml", &agg_config);
    let agg = Daemon::start(
        &aggregator_bin(),
        &agg_path,
        dir.path(),
        &[],
        &["forward", "admin"],
    );

    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs).expect("mkdir");
    let mut lines = String::new();
    for i in 0..200 {
        lines += &format!(
            "{{\"log\":\"line {i}\\n\",\"stream\":\"stdout\",\"time\":\"2026-01-01T00:00:00.{i:09}Z\"}}\n"
        );
    }
    // A last piece without its newline: a partial line that the join timeout sends on its own
    // (`logferry_tail_partial_flushes_total{reason="timeout"}`).
    lines +=
        "{\"log\":\"a partial line\",\"stream\":\"stdout\",\"time\":\"2026-01-01T00:00:01Z\"}\n";
    std::fs::write(
        logs.join("app-0_default_app-0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef.log"),
        lines,
    )
    .expect("writing a log");
    let fwd_config = format!(
        r#"shutdown_timeout = "5s"
[admin]
listen = "127.0.0.1:0"
[input]
paths = [{glob}]
format = "docker"
read_from = "head"
partial_timeout = "200ms"
[kubernetes]
enabled = false
[buffer]
path = {buffer}
flush_interval = "100ms"
[output]
servers = ["{server}"]
require_ack = true
"#,
        glob = toml_path(&logs.join("*.log")),
        buffer = toml_path(&dir.path().join("fwd-buffer")),
        server = agg.listeners["forward"],
    );
    let (_f, fwd_path) = temp_file("forwarder.toml", &fwd_config);
    let fwd = Daemon::start(&forwarder_bin(), &fwd_path, dir.path(), &[], &["admin"]);
    let scrape = scrape_until(
        fwd.admin(),
        &[
            "logferry_output_records_total{",
            "logferry_buffer_bytes{",
            "logferry_tail_partial_flushes_total{",
        ],
    );
    assert!(
        logferry_e2e::metric_value(&scrape, "logferry_input_records_total") >= Some(200.0),
        "the forwarder did not read the 200 lines"
    );
    assert_exported("forwarder", &q, &names, &scrape);
}
