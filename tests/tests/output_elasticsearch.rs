//! Talks to: a real `logferry-aggregator` process with an `elasticsearch` output, fed by the
//! real `logferry-loadtest forward --ack` (or a small acked Forward sender for hand-made
//! records), delivering to **noida-db** (`$LOGFERRY_NOIDA`, an Elasticsearch 8 API server from
//! PyPI; no real Elasticsearch can be installed here), read back with `_refresh` + `_search`.
//!
//! The partial-failure test puts a fault-injecting HTTP proxy (in this file) between the
//! aggregator and noida-db, because noida-db never answers 429: on the first sight of some
//! documents' `_id`s it removes them from the bulk it forwards and answers 429
//! `es_rejected_execution_exception` for them, merged into noida-db's real answer for the
//! others; the mapping errors are noida-db's own (`document_parsing_exception`).

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use logferry_e2e::services::{es_seqs, http_request, wait_for_es, Service, ServiceKind};
use logferry_e2e::{
    aggregator_bin, http_get, metric_value, run_checked, unique_id, wait_until, Aggregator,
    AggregatorConfig, Load,
};
use serde_json::{json, Value};

fn es_output(endpoint: &str, index: &str, extra: &str) -> AggregatorConfig {
    AggregatorConfig {
        output_type: "elasticsearch".into(),
        flush_interval: "200ms".into(),
        extra_toml: format!(
            "endpoints = [\"{endpoint}\"]\nindex = \"{index}\"\nretry = {{ initial = \"100ms\", max_interval = \"500ms\" }}\n{extra}\n"
        ),
        ..AggregatorConfig::default()
    }
}

#[test]
fn every_acked_record_arrives_once() {
    let Some(es) = Service::start(ServiceKind::NoidaElasticsearch) else {
        return;
    };
    const N: u64 = 5000;
    let run_id = unique_id("es");
    let prefix = run_id.to_lowercase();
    // An index template installed by the output at its first delivery.
    let template_dir = tempfile::tempdir().unwrap();
    let template_file = template_dir.path().join("template.json");
    let template = json!({"index_patterns": [format!("{prefix}-*")],
        "template": {"mappings": {"properties": {"seq": {"type": "long"}, "@timestamp": {"type": "date_nanos"}}}}});
    std::fs::write(&template_file, template.to_string()).unwrap();
    let mut agg = Aggregator::start_with(es_output(
        &es.url(),
        &format!("{prefix}-%Y.%m.%d"),
        &format!(
            "include_tag_key = true\ntemplate = {{ name = \"{prefix}\", file = {} }}",
            Value::String(template_file.display().to_string())
        ),
    ));
    let out = Load::acked(&agg, N, &run_id)
        .batch(250)
        .tag("kube.app")
        .run();
    assert!(out.status.success(), "loadtest failed");
    let summary: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["acked"], N, "{summary}");

    let seqs = wait_for_es(
        &es.url(),
        &format!("{prefix}-*"),
        &run_id,
        N,
        Duration::from_secs(60),
    );
    assert_eq!(seqs.duplicates(), 0, "duplicates in Elasticsearch");
    assert_eq!(seqs.received(), N);

    // One document, field by field: the record, @timestamp with nanoseconds, the tag.
    let q = json!({"size": 1, "query": {"match_all": {}}}).to_string();
    let (status, body) =
        http_request(&es.url(), "POST", &format!("/{prefix}-*/_search"), Some(&q)).unwrap();
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    let hit = &v["hits"]["hits"][0];
    let src = &hit["_source"];
    assert_eq!(src["tag"], "kube.app", "{src}");
    assert_eq!(src["run_id"], run_id.as_str());
    assert_eq!(src["kubernetes"]["namespace_name"], "loadtest", "{src}");
    let ts = src["@timestamp"].as_str().unwrap();
    assert_eq!(ts.len(), "2024-01-01T00:00:00.123456789Z".len(), "{ts}");
    assert_eq!(
        hit["_id"].as_str().unwrap().len(),
        32,
        "deterministic _id: {hit}"
    );

    let (status, body) = http_request(
        &es.url(),
        "GET",
        &format!("/_index_template/{prefix}"),
        None,
    )
    .unwrap();
    assert_eq!(status, 200, "index template not installed: {body}");
    assert!(body.contains("date_nanos"), "{body}");

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
    let metrics = agg.metrics();
    assert!(metric_value(&metrics, "logferry_output_bytes_total{output=\"out\"}").unwrap() > 0.0);
    assert!(
        metric_value(
            &metrics,
            "logferry_output_flush_duration_seconds_count{output=\"out\"}"
        )
        .unwrap()
            >= 1.0
    );
    agg.stop(Duration::from_secs(30));
}

#[test]
fn outage_and_restart_lose_nothing_and_duplicate_nothing() {
    let Some(mut es) = Service::start(ServiceKind::NoidaElasticsearch) else {
        return;
    };
    const N: u64 = 6000;
    let run_id = unique_id("es-outage");
    let index = run_id.to_lowercase();
    let mut agg = Aggregator::start_with(es_output(
        &es.url(),
        &index,
        "bulk_max_records = 500\nrequest_timeout = \"5s\"\nunready_after = \"1s\"",
    ));
    let sender = Load::acked(&agg, N, &run_id)
        .batch(100)
        .rate(1500)
        .ack_timeout("60s")
        .spawn();
    // Some records arrive, then Elasticsearch goes away for longer than several retry
    // intervals (100ms doubling to 500ms) while records keep coming.
    wait_until(
        "first records in Elasticsearch",
        Duration::from_secs(30),
        || (es_seqs(&es.url(), &index, &run_id).received() > 500).then_some(()),
    );
    es.stop();
    let admin = agg.admin_addr;
    wait_until(
        "the output to count as failing",
        Duration::from_secs(20),
        || {
            let m = agg.metrics();
            let errors = metric_value(&m, "logferry_output_errors_total{output=\"out\"}")?;
            let retries = metric_value(&m, "logferry_output_retries_total{output=\"out\"}")?;
            (errors >= 3.0 && retries >= 3.0).then_some(())
        },
    );
    // Past unready_after, /readyz says why and the metric shows it.
    wait_until(
        "readyz 503 for the failing output",
        Duration::from_secs(20),
        || {
            let (status, body) = http_get(admin, "/readyz").ok()?;
            // The gauge is updated by the worker, readiness computed on request: poll both.
            let ready = metric_value(&agg.metrics(), "logferry_output_ready{output=\"out\"}");
            (status == 503 && body.contains("output out") && ready == Some(0.0)).then_some(())
        },
    );
    std::thread::sleep(Duration::from_secs(2));
    es.restart();

    let out = sender.wait(Duration::from_secs(120));
    assert!(out.status.success(), "loadtest failed");
    let seqs = wait_for_es(&es.url(), &index, &run_id, N, Duration::from_secs(90));
    assert_eq!(seqs.missing(N), Vec::<u64>::new());
    assert_eq!(
        seqs.duplicates(),
        0,
        "retries duplicated documents despite deterministic _ids"
    );
    wait_until("readyz 200 again", Duration::from_secs(20), || {
        let (status, _) = http_get(admin, "/readyz").ok()?;
        (status == 200).then_some(())
    });
    let m = agg.metrics();
    assert_eq!(
        metric_value(&m, "logferry_dead_letter_records_total").unwrap_or(0.0),
        0.0
    );
    assert_eq!(
        metric_value(&m, "logferry_output_failing_seconds{output=\"out\"}"),
        Some(0.0)
    );
    agg.stop(Duration::from_secs(30));
}

/// A fault-injecting proxy in front of noida-db (see the file docs).
struct Proxy {
    addr: String,
    injected: Arc<AtomicU64>,
    bulks: Arc<AtomicU64>,
}

fn start_proxy(upstream: String, reject_every: usize) -> Proxy {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let injected = Arc::new(AtomicU64::new(0));
    let bulks = Arc::new(AtomicU64::new(0));
    let seen: Arc<Mutex<HashSet<String>>> = Arc::default();
    let (inj, bl) = (Arc::clone(&injected), Arc::clone(&bulks));
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { break };
            let (upstream, seen, inj, bl) = (
                upstream.clone(),
                Arc::clone(&seen),
                Arc::clone(&inj),
                Arc::clone(&bl),
            );
            std::thread::spawn(move || {
                let _ = serve_proxy(conn, &upstream, &seen, &inj, &bl, reject_every);
            });
        }
    });
    Proxy {
        addr,
        injected,
        bulks,
    }
}

fn serve_proxy(
    conn: TcpStream,
    upstream: &str,
    seen: &Mutex<HashSet<String>>,
    injected: &AtomicU64,
    bulks: &AtomicU64,
    reject_every: usize,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut conn = conn;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let mut parts = line.split_whitespace();
        let method = parts.next().unwrap_or("GET").to_owned();
        let path = parts.next().unwrap_or("/").to_owned();
        let mut len = 0usize;
        let mut gzip = false;
        loop {
            let mut h = String::new();
            reader.read_line(&mut h)?;
            if h == "\r\n" || h.is_empty() {
                break;
            }
            let lower = h.to_ascii_lowercase();
            if let Some(v) = lower.strip_prefix("content-length:") {
                len = v.trim().parse().unwrap_or(0);
            }
            if lower.starts_with("content-encoding:") && lower.contains("gzip") {
                gzip = true;
            }
        }
        let mut body = vec![0u8; len];
        reader.read_exact(&mut body)?;
        if gzip {
            let mut d = flate2::read::GzDecoder::new(&body[..]);
            let mut plain = Vec::new();
            d.read_to_end(&mut plain)?;
            body = plain;
        }
        let text = String::from_utf8_lossy(&body).into_owned();
        let (status, reply) = if method == "POST" && path.starts_with("/_bulk") {
            bulks.fetch_add(1, Ordering::Relaxed);
            bulk_with_faults(upstream, &text, seen, injected, reject_every)
        } else {
            http_request(
                upstream,
                &method,
                &path,
                (!text.is_empty()).then_some(text.as_str()),
            )?
        };
        write!(
            conn,
            "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nX-Elastic-Product: Elasticsearch\r\nContent-Length: {}\r\n\r\n{reply}",
            reply.len()
        )?;
        conn.flush()?;
    }
}

/// Forwards a bulk without every `reject_every`-th document not seen before, and answers 429
/// for those in their places.
fn bulk_with_faults(
    upstream: &str,
    body: &str,
    seen: &Mutex<HashSet<String>>,
    injected: &AtomicU64,
    reject_every: usize,
) -> (u16, String) {
    let lines: Vec<&str> = body.lines().filter(|l| !l.is_empty()).collect();
    let mut forward = String::new();
    let mut plan: Vec<Option<Value>> = Vec::new(); // Some(fake item) or None (from upstream)
    for (i, pair) in lines.chunks(2).enumerate() {
        let action: Value = serde_json::from_str(pair[0]).unwrap();
        let (op, meta) = action.as_object().unwrap().iter().next().unwrap();
        let id = meta["_id"].as_str().unwrap_or_default().to_owned();
        let first_time = seen.lock().unwrap().insert(id.clone());
        if first_time && i % reject_every == 0 {
            injected.fetch_add(1, Ordering::Relaxed);
            plan.push(Some(json!({op.clone(): {
                "_index": meta["_index"], "_id": id, "status": 429,
                "error": {"type": "es_rejected_execution_exception",
                          "reason": "rejected execution (injected by the test proxy)"}}})));
        } else {
            forward.push_str(pair[0]);
            forward.push('\n');
            forward.push_str(pair.get(1).copied().unwrap_or("{}"));
            forward.push('\n');
            plan.push(None);
        }
    }
    let mut upstream_items = Vec::new();
    if !forward.is_empty() {
        let (status, reply) = http_request(upstream, "POST", "/_bulk", Some(&forward)).unwrap();
        if status != 200 {
            return (status, reply);
        }
        let v: Value = serde_json::from_str(&reply).unwrap();
        upstream_items = v["items"].as_array().unwrap().clone();
    }
    let mut up = upstream_items.into_iter();
    let items: Vec<Value> = plan
        .into_iter()
        .map(|p| p.unwrap_or_else(|| up.next().unwrap()))
        .collect();
    (
        200,
        json!({"took": 1, "errors": true, "items": items}).to_string(),
    )
}

#[test]
fn partial_failure_retries_429s_and_dead_letters_mapping_errors_then_replays() {
    let Some(es) = Service::start(ServiceKind::NoidaElasticsearch) else {
        return;
    };
    let run_id = unique_id("es-partial");
    let index = run_id.to_lowercase();
    // `n` is a number; records with a text `n` fail with a mapping (parse) error.
    let mapping = json!({"mappings": {"properties": {"n": {"type": "long"}}}}).to_string();
    let (status, body) =
        http_request(&es.url(), "PUT", &format!("/{index}"), Some(&mapping)).unwrap();
    assert_eq!(status, 200, "{body}");
    let proxy = start_proxy(es.url(), 5);

    let mut agg = Aggregator::start_with(es_output(&format!("http://{}", proxy.addr), &index, ""));
    const N: u64 = 300;
    let records: Vec<Value> = (0..N)
        .map(|i| {
            let n = if i % 10 == 3 {
                json!(format!("bad-{i}"))
            } else {
                json!(i)
            };
            json!({"seq": i, "run_id": run_id, "n": n})
        })
        .collect();
    let bad: Vec<u64> = (0..N).filter(|i| i % 10 == 3).collect();
    logferry_e2e::client::send_json_acked(&agg.target(), "app.partial", &records, 100);

    // Every good record arrives, the 429 ones through retries.
    let good = N - bad.len() as u64;
    wait_until(
        "every good record in Elasticsearch",
        Duration::from_secs(60),
        || {
            let seqs = es_seqs(&es.url(), &index, &run_id);
            (seqs.received() >= good).then_some(seqs)
        },
    );
    let seqs = es_seqs(&es.url(), &index, &run_id);
    let expected_good: Vec<u64> = (0..N).filter(|i| i % 10 != 3).collect();
    assert_eq!(
        seqs.counts.keys().copied().collect::<Vec<_>>(),
        expected_good
    );
    assert_eq!(seqs.duplicates(), 0);
    assert!(
        proxy.injected.load(Ordering::Relaxed) >= 20,
        "the proxy injected too few 429s"
    );
    assert!(proxy.bulks.load(Ordering::Relaxed) >= 2);

    // The mapping errors are dead letters, with ES's reason.
    let m = wait_until("dead letters counted", Duration::from_secs(30), || {
        let m = agg.metrics();
        (metric_value(
            &m,
            "logferry_dead_letter_records_total{output=\"out\",reason=\"rejected\"}",
        ) == Some(bad.len() as f64))
        .then_some(m)
    });
    assert!(
        metric_value(
            &m,
            "logferry_output_errors_total{output=\"out\",kind=\"item_429\"}"
        )
        .unwrap()
            >= 1.0
    );
    let list = run_checked(
        std::process::Command::new(aggregator_bin())
            .args(["dead-letter", "list", "--show", "1", "--config"])
            .arg(&agg.config_path)
            .args(["--output", "out"]),
        Duration::from_secs(30),
    );
    let text = String::from_utf8_lossy(&list.stdout);
    assert!(text.contains("document_parsing_exception"), "{text}");
    assert!(
        text.contains(&format!("{} record(s): rejected={}", bad.len(), bad.len())),
        "{text}"
    );
    assert!(text.contains("bad-3"), "--show prints records: {text}");

    // The fix: a new index where `n` is text, in the config the replay reads. A running
    // aggregator would replay with its running config, so it is stopped first: with no
    // aggregator on the buffer, replay runs alone with the config file as it is now.
    agg.stop(Duration::from_secs(30));
    let fixed = format!("{index}-fixed");
    let config = std::fs::read_to_string(&agg.config_path).unwrap();
    std::fs::write(
        &agg.config_path,
        config.replace(
            &format!("index = \"{index}\""),
            &format!("index = \"{fixed}\""),
        ),
    )
    .unwrap();
    let replay = run_checked(
        std::process::Command::new(aggregator_bin())
            .args(["dead-letter", "replay", "--timeout", "30s", "--config"])
            .arg(&agg.config_path)
            .args(["--output", "out"]),
        Duration::from_secs(60),
    );
    let text = String::from_utf8_lossy(&replay.stdout);
    assert!(
        text.contains(&format!(
            "{} record(s) delivered, 0 dead again, 0 file(s) left",
            bad.len()
        )),
        "{text}"
    );
    let replayed = wait_for_es(&es.url(), &fixed, &run_id, 0, Duration::from_secs(10));
    assert_eq!(replayed.counts.keys().copied().collect::<Vec<_>>(), bad);
    let list = run_checked(
        std::process::Command::new(aggregator_bin())
            .args(["dead-letter", "list", "--config"])
            .arg(&agg.config_path)
            .args(["--output", "out"]),
        Duration::from_secs(30),
    );
    assert!(String::from_utf8_lossy(&list.stdout).contains("0 file(s), 0 record(s)"));
}

#[test]
fn a_dead_output_does_not_hold_back_a_healthy_one() {
    let Some(es) = Service::start(ServiceKind::NoidaElasticsearch) else {
        return;
    };
    let run_id = unique_id("es-iso");
    let index = run_id.to_lowercase();
    let dead_port = logferry_e2e::services::free_port();
    const N: u64 = 9_000;
    let mut config = es_output(&es.url(), &index, "");
    config.chunk_limit_size = "64KiB".into();
    // The limit applies to both outputs' buffers: the dead one's overflows (9000 records of
    // ~370 B), the healthy one's keeps room for a slow moment of its sink on a loaded machine.
    config.total_limit_size = "1MiB".into();
    config.overflow_action = "drop_oldest_chunk".into();
    config.server_extra =
        "max_request_bytes = \"128KiB\"\nmax_decompressed_bytes = \"128KiB\"".into();
    config.route_outputs = vec!["out".into(), "dead".into()];
    config.extra_toml += &format!(
        "\n[outputs.dead]\ntype = \"elasticsearch\"\nendpoints = [\"http://127.0.0.1:{dead_port}\"]\nunready_after = \"1s\"\nretry = {{ initial = \"100ms\", max_interval = \"1s\" }}\n"
    );
    let mut agg = Aggregator::start_with(config);
    let started = Instant::now();
    let out = Load::acked(&agg, N, &run_id).batch(200).rate(2000).run();
    assert!(
        out.status.success(),
        "loadtest failed: the dead output blocked the sender"
    );
    let summary: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["acked"], N, "{summary}");
    // The healthy output got everything, at the offered rate (2000 records/s, more than the
    // dead output's 1MiB buffer holds), although the dead one's buffer overflowed
    // (drop_oldest_chunk: its oldest chunks were dropped, counted).
    assert!(
        summary["records_per_sec"].as_f64().unwrap_or(0.0) > 1500.0,
        "the sender was slowed down: {summary}"
    );
    wait_for_es(&es.url(), &index, &run_id, N, Duration::from_secs(60));
    let elapsed = started.elapsed();
    let m = agg.metrics();
    assert!(
        metric_value(
            &m,
            "logferry_dropped_records_total{reason=\"drop_oldest_chunk\"}"
        )
        .unwrap_or(0.0)
            > 0.0,
        "the dead output's buffer never overflowed"
    );
    let dead_bytes = metric_value(&m, "logferry_buffer_bytes{buffer=\"dead\"}").unwrap();
    assert!(
        dead_bytes <= 1024.0 * 1024.0 + 4096.0,
        "dead buffer over its limit: {dead_bytes}"
    );
    assert!(metric_value(&m, "logferry_output_errors_total{output=\"dead\"}").unwrap() >= 1.0);
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
        metric_value(&m, "logferry_output_ready{output=\"dead\"}"),
        Some(0.0)
    );
    assert_eq!(
        metric_value(&m, "logferry_output_ready{output=\"out\"}"),
        Some(1.0)
    );
    let (status, body) = http_get(agg.admin_addr, "/readyz").unwrap();
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("output dead"), "{body}");
    eprintln!("isolation: {N} records through the healthy output in {elapsed:?}");
    agg.sigkill();
}
