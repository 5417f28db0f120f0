//! Talks to: a real `logferry-forwarder` whose `kube` client talks to a local HTTP server that
//! serves recorded Kubernetes API JSON (a pod list, then a held-open watch that adds a pod),
//! and a real `logferry-aggregator` whose file output is checked. In the second test the API
//! address has nothing listening.
//!
//! Shows: labels, annotations, pod uid and node from the API appear on records (for listed and
//! for watched pods); with the API down, records still flow with file-name metadata.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use logferry_e2e::forwarder::{wait_for_seqs, Forwarder, ForwarderConfig, LogFormat, LogWriter};
use logferry_e2e::{metric_value, read_output, unique_id, wait_until, Aggregator};
use serde_json::{json, Value};

const ID: &str = "4f7e3b2a1c0d9e8f7a6b5c4d3e2f1a0b9c8d7e6f5a4b3c2d1e0f9a8b7c6d5e4f";

fn pod(name: &str, app: &str, rv: &str) -> Value {
    json!({
        "metadata": {
            "name": name, "namespace": "shop", "uid": format!("uid-{name}"),
            "resourceVersion": rv,
            "labels": {"app": app, "tier": "front"},
            "annotations": {"team": "core"}
        },
        "spec": {"nodeName": "node-1", "containers": [{"name": "nginx"}]}
    })
}

/// A recorded-API server: `GET /api/v1/pods` answers the list; with `watch=true`, a chunked
/// stream with one ADDED event, then held open until the test ends.
struct FakeApi {
    port: u16,
    requests: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
}

impl FakeApi {
    fn start() -> FakeApi {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (reqs, st) = (Arc::clone(&requests), Arc::clone(&stop));
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { break };
                let (reqs, st) = (Arc::clone(&reqs), Arc::clone(&st));
                std::thread::spawn(move || serve(stream, &reqs, &st));
            }
        });
        FakeApi {
            port,
            requests,
            stop,
        }
    }

    fn saw_watch(&self) -> bool {
        self.requests
            .lock()
            .unwrap()
            .iter()
            .any(|r| r.contains("watch=true"))
    }
}

impl Drop for FakeApi {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn serve(stream: TcpStream, requests: &Mutex<Vec<String>>, stop: &AtomicBool) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(60)));
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut out = stream;
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        let mut content_length = 0usize;
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            if h == "\r\n" {
                break;
            }
            if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                content_length = v.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0; content_length];
        let _ = reader.read_exact(&mut body);
        eprintln!("fake-api: {}", request_line.trim());
        requests.lock().unwrap().push(request_line.clone());
        let path = request_line.split_whitespace().nth(1).unwrap_or("");
        if !path.starts_with("/api/v1/pods") {
            let _ = out.write_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n");
            continue;
        }
        if path.contains("watch=true") {
            let event =
                json!({"type": "ADDED", "object": pod("api-2", "api", "1003")}).to_string() + "\n";
            let head = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n";
            let chunk = format!("{:x}\r\n{event}\r\n", event.len());
            let _ = out.write_all(head.as_bytes());
            let _ = out.write_all(chunk.as_bytes());
            let _ = out.flush();
            while !stop.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(100));
            }
            return;
        }
        let list = json!({
            "kind": "PodList", "apiVersion": "v1",
            "metadata": {"resourceVersion": "1002"},
            "items": [pod("web-1", "web", "1001")]
        })
        .to_string();
        let resp = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{list}",
            list.len()
        );
        let _ = out.write_all(resp.as_bytes());
    }
}

fn forwarder(logs: &std::path::Path, agg: &Aggregator, api: &str) -> Forwarder {
    Forwarder::start(ForwarderConfig {
        paths: vec![format!("{}/*.log", logs.display())],
        servers: vec![agg.target()],
        kubernetes: format!(
            "enabled = true\napi = \"{api}\"\nnode_name = \"node-1\"\nmerge_log = true\nkeep_log = false\n"
        ),
        ..ForwarderConfig::default()
    })
}

#[test]
fn labels_from_the_api_appear_on_records() {
    let api = FakeApi::start();
    let agg = Aggregator::start();
    let logs = tempfile::tempdir().unwrap();
    let run = unique_id("kube");
    let fwd = forwarder(logs.path(), &agg, &format!("http://127.0.0.1:{}", api.port));
    wait_until("the pod list and watch", Duration::from_secs(30), || {
        api.saw_watch().then_some(())
    });
    // The listed pod and the one the watch added are both in the cache.
    wait_until("two pods cached", Duration::from_secs(30), || {
        metric_value(&fwd.metrics(), "logferry_kubernetes_pods").filter(|&n| n >= 2.0)
    });
    let mut web = LogWriter::new(
        &logs.path().join(format!("web-1_shop_nginx-{ID}.log")),
        LogFormat::Cri,
        &run,
    );
    let mut apip = LogWriter::new(
        &logs.path().join(format!("api-2_shop_nginx-{ID}.log")),
        LogFormat::Cri,
        &run,
    )
    .starting_at(100);
    web.write(100);
    apip.write(100);
    wait_for_seqs(&agg.out_dir, &run, 200, Duration::from_secs(60));
    for v in read_output(&agg.out_dir) {
        let rec = &v["record"];
        if rec["run_id"] != run.as_str() {
            continue;
        }
        let k = &rec["kubernetes"];
        let seq = rec["seq"].as_u64().unwrap();
        let (name, app) = if seq < 100 {
            ("web-1", "web")
        } else {
            ("api-2", "api")
        };
        assert_eq!(k["pod_name"], name, "{rec}");
        assert_eq!(k["labels"]["app"], app, "{rec}");
        assert_eq!(k["labels"]["tier"], "front", "{rec}");
        assert_eq!(k["annotations"]["team"], "core", "{rec}");
        assert_eq!(k["pod_id"], format!("uid-{name}"), "{rec}");
        assert_eq!(k["host"], "node-1", "{rec}");
        assert_eq!(k["namespace_name"], "shop");
    }
    let reqs = api.requests.lock().unwrap().clone();
    assert!(
        reqs.iter()
            .all(|r| r.contains("fieldSelector=spec.nodeName%3Dnode-1")),
        "not a node-scoped watch: {reqs:?}"
    );
}

#[test]
fn records_flow_with_file_name_metadata_while_the_api_is_down() {
    let closed = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let agg = Aggregator::start();
    let logs = tempfile::tempdir().unwrap();
    let run = unique_id("kubedown");
    let fwd = forwarder(logs.path(), &agg, &format!("http://127.0.0.1:{closed}"));
    let mut web = LogWriter::new(
        &logs.path().join(format!("web-1_shop_nginx-{ID}.log")),
        LogFormat::Docker,
        &run,
    );
    web.write(500);
    wait_for_seqs(&agg.out_dir, &run, 500, Duration::from_secs(60));
    for v in read_output(&agg.out_dir) {
        let rec = &v["record"];
        if rec["run_id"] != run.as_str() {
            continue;
        }
        let k = &rec["kubernetes"];
        assert_eq!(k["pod_name"], "web-1", "{rec}");
        assert_eq!(k["container_name"], "nginx", "{rec}");
        assert_eq!(k["docker_id"], ID, "{rec}");
        assert!(k.get("labels").is_none(), "{rec}");
    }
    let (status, _) = logferry_e2e::http_get(fwd.admin_addr, "/readyz").unwrap();
    assert_eq!(status, 200, "the forwarder is not ready without the API");
}
