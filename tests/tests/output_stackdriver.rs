//! Talks to: a real `logferry-aggregator` process with a `stackdriver` output (the official
//! `google-cloud-logging-v2` client, REST), fed by the real `logferry-loadtest forward --ack`
//! and a small acked Forward sender.
//!
//! No Cloud Logging emulator exists (none on PyPI or npm; Google's emulators cover other
//! services), so the server here is a **local HTTP double written in this file**: it checks
//! every `entries.write` request against the API's documented request schema and limits
//! (https://cloud.google.com/logging/docs/reference/v2/rest/v2/entries/write, .../LogEntry,
//! https://cloud.google.com/logging/quotas) — `logName` shape, `resource.type` and string
//! labels, exactly one payload, RFC 3339 `timestamp`, integer `severity` from the enum, at most
//! 64 labels, entries up to 256 KiB, requests up to 10 MB — answers 400 INVALID_ARGUMENT on a
//! violation, stores what it accepted (keeping the first of repeated `insertId`s, as the
//! service does), and rejects entries timestamped more than a day in the future (a documented
//! service rule) so the dead-letter path can be shown. It also serves the GCE metadata paths
//! the output asks for its project and cluster, and can answer 503 to simulate an outage.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use logferry_e2e::{metric_value, unique_id, wait_until, Aggregator, AggregatorConfig, Load};
use serde_json::{json, Value};

/// What the double saw.
#[derive(Default)]
struct Seen {
    /// Accepted entries by insertId (first write wins).
    entries: BTreeMap<String, Value>,
    /// Entries accepted, repeats included.
    writes: u64,
    /// Requests that broke the documented schema or limits (must stay empty).
    schema_violations: Vec<String>,
}

struct Double {
    addr: String,
    seen: Arc<Mutex<Seen>>,
    /// Answer 503 to this many more write requests.
    fail_next: Arc<AtomicU64>,
    requests: Arc<AtomicU64>,
}

fn start_double() -> Double {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let d = Double {
        addr,
        seen: Arc::default(),
        fail_next: Arc::default(),
        requests: Arc::default(),
    };
    let (seen, fail, reqs) = (
        Arc::clone(&d.seen),
        Arc::clone(&d.fail_next),
        Arc::clone(&d.requests),
    );
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { break };
            let (seen, fail, reqs) = (Arc::clone(&seen), Arc::clone(&fail), Arc::clone(&reqs));
            std::thread::spawn(move || {
                let _ = serve(conn, &seen, &fail, &reqs);
            });
        }
    });
    d
}

fn serve(
    conn: TcpStream,
    seen: &Mutex<Seen>,
    fail: &AtomicU64,
    reqs: &AtomicU64,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut conn = conn;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let mut parts = line.split_whitespace();
        let method = parts.next().unwrap_or("").to_owned();
        let path = parts.next().unwrap_or("").to_owned();
        let mut len = 0usize;
        let mut flavor = false;
        let mut chunked = false;
        let mut close = false;
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
            if lower.starts_with("metadata-flavor:") && lower.contains("google") {
                flavor = true;
            }
            if lower.starts_with("transfer-encoding:") && lower.contains("chunked") {
                chunked = true;
            }
            if lower.starts_with("connection:") && lower.contains("close") {
                close = true;
            }
        }
        let mut body = vec![0u8; len];
        reader.read_exact(&mut body)?;
        assert!(!chunked, "chunked request bodies are not expected");
        let (status, reply) = if method == "GET" && path.starts_with("/computeMetadata/v1/") {
            if !flavor {
                (403, "missing Metadata-Flavor: Google".to_owned())
            } else {
                match &path["/computeMetadata/v1/".len()..] {
                    "project/project-id" => (200, "test-project".to_owned()),
                    "instance/attributes/cluster-name" => (200, "test-cluster".to_owned()),
                    "instance/attributes/cluster-location" => (200, "europe-west3".to_owned()),
                    _ => (404, "not found".to_owned()),
                }
            }
        } else if method == "POST" && path.starts_with("/v2/entries:write") {
            reqs.fetch_add(1, Ordering::Relaxed);
            if fail.load(Ordering::Relaxed) > 0 {
                fail.fetch_sub(1, Ordering::Relaxed);
                (503, json!({"error": {"code": 503, "message": "outage (test double)", "status": "UNAVAILABLE"}}).to_string())
            } else {
                write_entries(&body, seen)
            }
        } else {
            (404, json!({"error": {"code": 404, "message": format!("no {method} {path}"), "status": "NOT_FOUND"}}).to_string())
        };
        write!(
            conn,
            "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{reply}",
            reply.len()
        )?;
        conn.flush()?;
        if close {
            return Ok(());
        }
    }
}

fn invalid(msg: String) -> (u16, String) {
    (
        400,
        json!({"error": {"code": 400, "message": msg, "status": "INVALID_ARGUMENT"}}).to_string(),
    )
}

/// Checks one request against the documented schema and limits; stores the valid entries.
fn write_entries(body: &[u8], seen: &Mutex<Seen>) -> (u16, String) {
    let mut seen = seen.lock().unwrap();
    if body.len() > 10_000_000 {
        seen.schema_violations
            .push(format!("request of {} bytes", body.len()));
        return invalid("request larger than 10MB".into());
    }
    let Ok(req) = serde_json::from_slice::<Value>(body) else {
        seen.schema_violations.push("body is not JSON".into());
        return invalid("body is not JSON".into());
    };
    for k in req
        .as_object()
        .map(|m| m.keys().cloned().collect::<Vec<_>>())
        .unwrap_or_default()
    {
        if ![
            "logName",
            "resource",
            "labels",
            "entries",
            "partialSuccess",
            "dryRun",
        ]
        .contains(&k.as_str())
        {
            seen.schema_violations
                .push(format!("unknown request field {k}"));
        }
    }
    let Some(entries) = req["entries"].as_array().filter(|e| !e.is_empty()) else {
        seen.schema_violations.push("no entries".into());
        return invalid("entries is required".into());
    };
    let now = chrono::Utc::now();
    let mut bad = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        let problems = check_entry(e);
        if !problems.is_empty() {
            seen.schema_violations
                .push(format!("entry {i}: {problems:?}: {e}"));
            bad.push(i);
            continue;
        }
        let ts = chrono::DateTime::parse_from_rfc3339(e["timestamp"].as_str().unwrap()).unwrap();
        if ts > now + chrono::Duration::days(1) {
            bad.push(i);
            continue;
        }
        seen.writes += 1;
        let id = e["insertId"].as_str().unwrap().to_owned();
        seen.entries.entry(id).or_insert_with(|| e.clone());
    }
    if bad.is_empty() {
        (200, "{}".into())
    } else {
        invalid(format!(
            "Log entries with invalid fields or timestamps more than 1 day in the future: {bad:?}"
        ))
    }
}

fn check_entry(e: &Value) -> Vec<String> {
    let mut p = Vec::new();
    let size = e.to_string().len();
    if size > 256 * 1024 {
        p.push(format!("entry of {size} bytes"));
    }
    let log_name = e["logName"].as_str().unwrap_or("");
    let parts: Vec<&str> = log_name.split('/').collect();
    if parts.len() != 4
        || parts[0] != "projects"
        || parts[2] != "logs"
        || parts[3].is_empty()
        || parts[3].len() > 512
    {
        p.push(format!("logName {log_name:?}"));
    }
    if !e["resource"]["type"].is_string() {
        p.push("resource.type".into());
    }
    if !e["resource"]["labels"]
        .as_object()
        .is_some_and(|m| m.values().all(Value::is_string))
    {
        p.push("resource.labels".into());
    }
    let payloads = ["textPayload", "jsonPayload", "protoPayload"]
        .iter()
        .filter(|k| e.get(**k).is_some())
        .count();
    if payloads != 1 {
        p.push(format!("{payloads} payloads"));
    }
    if e.get("jsonPayload").is_some_and(|j| !j.is_object()) {
        p.push("jsonPayload is not an object".into());
    }
    match e["timestamp"]
        .as_str()
        .map(chrono::DateTime::parse_from_rfc3339)
    {
        Some(Ok(_)) => {}
        _ => p.push("timestamp".into()),
    }
    if !e["severity"]
        .as_u64()
        .is_some_and(|s| s % 100 == 0 && s <= 800)
    {
        p.push(format!("severity {}", e["severity"]));
    }
    if let Some(labels) = e.get("labels") {
        let ok = labels.as_object().is_some_and(|m| {
            m.len() <= 64
                && m.iter().all(|(k, v)| {
                    k.len() <= 512 && v.as_str().is_some_and(|s| s.len() <= 64 * 1024)
                })
        });
        if !ok {
            p.push("labels".into());
        }
    }
    if !e["insertId"].is_string() {
        p.push("insertId".into());
    }
    for k in e
        .as_object()
        .map(|m| m.keys().cloned().collect::<Vec<_>>())
        .unwrap_or_default()
    {
        let known = [
            "logName",
            "resource",
            "timestamp",
            "receiveTimestamp",
            "severity",
            "insertId",
            "httpRequest",
            "labels",
            "operation",
            "trace",
            "spanId",
            "traceSampled",
            "sourceLocation",
            "split",
            "textPayload",
            "jsonPayload",
            "protoPayload",
        ];
        if !known.contains(&k.as_str()) {
            p.push(format!("unknown field {k}"));
        }
    }
    p
}

fn gcl_output(double: &Double, extra: &str) -> AggregatorConfig {
    AggregatorConfig {
        output_type: "stackdriver".into(),
        flush_interval: "200ms".into(),
        extra_toml: format!(
            "endpoint = \"http://{a}\"\nmetadata_endpoint = \"http://{a}\"\ncredentials = \"anonymous\"\nretry = {{ initial = \"100ms\", max_interval = \"500ms\" }}\n{extra}\n",
            a = double.addr
        ),
        ..AggregatorConfig::default()
    }
}

#[test]
fn entries_arrive_mapped_and_valid_through_an_outage() {
    let double = start_double();
    const N: u64 = 3000;
    let run_id = unique_id("gcl");
    // The first requests fail with 503 (UNAVAILABLE): the output retries them.
    double.fail_next.store(4, Ordering::Relaxed);
    let mut agg = Aggregator::start_with(gcl_output(&double, "max_entries_per_request = 500"));
    let out = Load::acked(&agg, N, &run_id)
        .batch(250)
        .tag("kube.app")
        .run();
    assert!(out.status.success(), "loadtest failed");
    let seen = Arc::clone(&double.seen);
    wait_until("every entry at the double", Duration::from_secs(60), || {
        let s = seen.lock().unwrap();
        (s.entries.len() as u64 >= N).then_some(())
    });
    let s = seen.lock().unwrap();
    assert_eq!(
        s.schema_violations,
        Vec::<String>::new(),
        "requests broke the documented schema"
    );
    let mut seqs: Vec<u64> = s
        .entries
        .values()
        .filter(|e| e["jsonPayload"]["run_id"] == run_id.as_str())
        .map(|e| e["jsonPayload"]["seq"].as_u64().unwrap())
        .collect();
    seqs.sort_unstable();
    assert_eq!(
        seqs,
        (0..N).collect::<Vec<_>>(),
        "missing or duplicated entries"
    );
    let e = s.entries.values().next().unwrap();
    assert_eq!(e["logName"], "projects/test-project/logs/stdout", "{e}");
    assert_eq!(e["resource"]["type"], "k8s_container");
    let labels = &e["resource"]["labels"];
    assert_eq!(
        labels["project_id"], "test-project",
        "from the metadata server: {e}"
    );
    assert_eq!(labels["cluster_name"], "test-cluster");
    assert_eq!(labels["location"], "europe-west3");
    assert_eq!(labels["namespace_name"], "loadtest");
    assert_eq!(labels["container_name"], "app");
    assert!(labels["pod_name"]
        .as_str()
        .unwrap()
        .starts_with("loadtest-"));
    assert_eq!(e["severity"], 200, "stdout is INFO: {e}");
    assert!(
        e["jsonPayload"].get("kubernetes").is_none() && e["jsonPayload"].get("stream").is_none(),
        "{e}"
    );
    assert!(
        double.requests.load(Ordering::Relaxed) >= 10,
        "batched by max_entries_per_request"
    );
    drop(s);
    let m = agg.metrics();
    assert!(metric_value(&m, "logferry_output_retries_total{output=\"out\"}").unwrap() >= 1.0);
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
    agg.stop(Duration::from_secs(30));
}

#[test]
fn entries_the_api_refuses_go_to_dead_letters() {
    let double = start_double();
    let run_id = unique_id("gcl-bad");
    let mut agg = Aggregator::start_with(gcl_output(
        &double,
        "project_id = \"p\"\nresource = { cluster_name = \"c\", location = \"l\" }\nlog_name = \"app/events\"",
    ));
    const N: u64 = 60;
    let records: Vec<Value> = (0..N)
        .map(|i| {
            let mut r = json!({"seq": i, "run_id": run_id, "message": format!("event {i}"), "level": "warn",
                "kubernetes": {"namespace_name": "ns", "pod_name": "pod", "container_name": "c",
                               "labels": {"app": "web"}}});
            if i % 20 == 5 {
                // More than a day in the future: the API refuses the entry.
                r["time"] = json!("2099-01-01T00:00:00.000000001Z");
            }
            r
        })
        .collect();
    logferry_e2e::client::send_json_acked(&agg.target(), "app.events", &records, 30);
    let bad = (0..N).filter(|i| i % 20 == 5).count() as f64;
    wait_until("dead letters", Duration::from_secs(30), || {
        (metric_value(
            &agg.metrics(),
            "logferry_dead_letter_records_total{output=\"out\",reason=\"rejected\"}",
        ) == Some(bad))
        .then_some(())
    });
    let s = double.seen.lock().unwrap();
    assert_eq!(s.schema_violations, Vec::<String>::new());
    let good: Vec<&Value> = s
        .entries
        .values()
        .filter(|e| e["jsonPayload"]["run_id"] == run_id.as_str())
        .collect();
    assert_eq!(good.len() as u64, N - bad as u64);
    let e = good[0];
    assert_eq!(e["logName"], "projects/p/logs/app%2Fevents");
    assert_eq!(e["severity"], 400, "level warn is WARNING: {e}");
    assert_eq!(e["labels"]["k8s-pod/app"], "web");
    drop(s);
    agg.stop(Duration::from_secs(30));
}
