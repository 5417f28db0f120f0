//! Helpers of the deploy tests (`tests/tests/deploy_*.rs`): rendering the kustomize
//! overlays with the real `kubectl kustomize`, turning YAML/TOML/PromQL into JSON facts with
//! `deploy/tools/k8s_facts.py` (PyYAML, tomllib and promql-parser in the test venv), and
//! reading Kubernetes objects (pod specs, ports, mounts, env, quantities).
//!
//! External tools: `kubectl` on PATH and the Python venv of scripts/test.sh
//! (`LOGFERRY_PYTHON`, with kubernetes-validate, checkov and hadolint next to it). Like every
//! e2e test, a test skips with a message when a tool is missing outside CI and fails in CI.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::aggregator::listening_line;

/// The overlays users apply, in `deploy/overlays/`.
pub const OVERLAYS: [&str; 4] = ["cluster", "aggregator-only", "kafka", "kafka-tier"];

/// Kubernetes releases the rendered objects are validated against: the oldest we support
/// (1.30: `lifecycle.preStop.sleep` is on by default from there) and the newest schema set
/// kubernetes-validate ships.
pub const KUBERNETES_VERSIONS: [&str; 2] = ["1.30.0", "1.37.0"];

/// `deploy/` of the workspace.
pub fn deploy_dir() -> PathBuf {
    crate::build::workspace_root().join("deploy")
}

/// The Python venv's tools.
#[derive(Debug, Clone)]
pub struct Tools {
    /// The venv's python.
    pub python: PathBuf,
    /// The venv's `bin/` (kubernetes-validate, checkov, hadolint).
    pub bin: PathBuf,
    /// `kubectl`.
    pub kubectl: PathBuf,
}

impl Tools {
    /// A console script of the venv.
    pub fn venv_tool(&self, name: &str) -> PathBuf {
        let p = self.bin.join(name);
        assert!(
            p.exists(),
            "{} is missing: scripts/test.sh installs it into the venv",
            p.display()
        );
        p
    }
}

/// The tools, or `None` (test skipped) outside CI when something is missing.
pub fn tools() -> Option<Tools> {
    let python = PathBuf::from(crate::build::external_tool("LOGFERRY_PYTHON")?);
    let bin = python
        .parent()
        .expect("LOGFERRY_PYTHON is a file in the venv's bin/")
        .to_path_buf();
    let kubectl = match find_on_path("kubectl") {
        Some(k) => k,
        None => {
            if std::env::var_os("CI").is_some() {
                panic!("kubectl is not on PATH but CI is set: the deploy tests need it");
            }
            eprintln!("skipping: kubectl not on PATH");
            return None;
        }
    };
    Some(Tools {
        python,
        bin,
        kubectl,
    })
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Runs `cmd` with `stdin` to completion (killed after `timeout`, then a panic); the output
/// is printed to the test's output. The exit status is returned unchecked.
pub fn run(cmd: &mut Command, stdin: Option<&[u8]>, timeout: Duration) -> Output {
    eprintln!("deploy: running {cmd:?}");
    let mut child = cmd
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("piped stdin");
        let input = input.to_vec();
        std::thread::spawn(move || {
            let _ = pipe.write_all(&input);
        });
    }
    let mut out_pipe = child.stdout.take().expect("stdout");
    let mut err_pipe = child.stderr.take().expect("stderr");
    let out_t = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = std::io::Read::read_to_end(&mut out_pipe, &mut b);
        b
    });
    let err_t = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = std::io::Read::read_to_end(&mut err_pipe, &mut b);
        b
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(s) = child.try_wait().expect("try_wait") {
            break s;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?} did not finish within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stdout = out_t.join().unwrap_or_default();
    let stderr = err_t.join().unwrap_or_default();
    let show = |b: &[u8]| {
        let s = String::from_utf8_lossy(b);
        if s.len() > 4000 {
            format!("{}... ({} bytes)", &s[..4000], s.len())
        } else {
            s.into_owned()
        }
    };
    // The callers put what matters into their assertion messages; print the rest only when
    // the command failed.
    if status.success() {
        eprintln!("deploy: {status}");
    } else {
        eprintln!(
            "deploy: {status}\n--- stdout\n{}--- stderr\n{}---",
            show(&stdout),
            show(&stderr)
        );
    }
    Output {
        status,
        stdout,
        stderr,
    }
}

/// `kubectl kustomize deploy/<path>` (cached per test process).
pub fn render(tools: &Tools, path: &str) -> String {
    static CACHE: OnceLock<Mutex<HashMap<String, String>>> = OnceLock::new();
    let cache = CACHE.get_or_init(|| Mutex::new(HashMap::new()));
    if let Some(s) = cache.lock().unwrap_or_else(|e| e.into_inner()).get(path) {
        return s.clone();
    }
    let out = run(
        Command::new(&tools.kubectl)
            .arg("kustomize")
            .arg(deploy_dir().join(path)),
        None,
        Duration::from_secs(60),
    );
    assert!(
        out.status.success(),
        "kubectl kustomize deploy/{path} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let yaml = String::from_utf8(out.stdout).expect("kustomize prints UTF-8");
    assert!(
        yaml.contains("kind:"),
        "kubectl kustomize deploy/{path} printed no objects"
    );
    cache
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(path.to_owned(), yaml.clone());
    yaml
}

/// Runs `deploy/tools/k8s_facts.py ARGS` and parses its JSON output.
fn facts(tools: &Tools, args: &[&std::ffi::OsStr], stdin: Option<&[u8]>) -> Value {
    let out = run(
        Command::new(&tools.python)
            .arg(deploy_dir().join("tools").join("k8s_facts.py"))
            .args(args),
        stdin,
        Duration::from_secs(60),
    );
    assert!(out.status.success(), "k8s_facts.py {args:?} failed");
    serde_json::from_slice(&out.stdout).expect("k8s_facts.py prints JSON")
}

/// Every object of a YAML stream.
pub fn yaml_objects(tools: &Tools, yaml: &str) -> Vec<Value> {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("objects.yaml");
    std::fs::write(&file, yaml).expect("writing YAML");
    yaml_files(tools, &[&file])
        .into_iter()
        .map(|v| v["doc"].clone())
        .collect()
}

/// Every document of YAML files, as `{"file", "index", "doc"}`.
pub fn yaml_files(tools: &Tools, files: &[&Path]) -> Vec<Value> {
    let mut args: Vec<&std::ffi::OsStr> = vec!["yaml".as_ref()];
    args.extend(files.iter().map(|f| f.as_os_str()));
    match facts(tools, &args, None) {
        Value::Array(items) => items,
        other => panic!("k8s_facts.py yaml printed {other}"),
    }
}

/// TOML text as JSON.
pub fn toml_to_json(tools: &Tools, text: &str) -> Value {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("config.toml");
    std::fs::write(&file, text).expect("writing TOML");
    facts(tools, &["toml".as_ref(), file.as_os_str()], None)
}

/// PromQL expressions analysed by promql-parser (see k8s_facts.py).
pub fn promql(tools: &Tools, exprs: &[String]) -> Vec<Value> {
    let input = serde_json::to_vec(exprs).expect("JSON");
    match facts(tools, &["promql".as_ref()], Some(&input)) {
        Value::Array(items) => items,
        other => panic!("k8s_facts.py promql printed {other}"),
    }
}

/// The rendered objects of an overlay, parsed.
pub fn overlay_objects(tools: &Tools, overlay: &str) -> Vec<Value> {
    yaml_objects(tools, &render(tools, &format!("overlays/{overlay}")))
}

/// `kind/name` of an object.
pub fn id(obj: &Value) -> String {
    format!(
        "{}/{}",
        obj["kind"].as_str().unwrap_or("?"),
        obj["metadata"]["name"].as_str().unwrap_or("?")
    )
}

/// Objects of one kind.
pub fn of_kind<'a>(objects: &'a [Value], kind: &str) -> Vec<&'a Value> {
    objects.iter().filter(|o| o["kind"] == kind).collect()
}

/// The one object of `kind` named `name`; panics if it is not there.
pub fn find<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind}/{name} among {:?}", ids(objects)))
}

/// Every `kind/name`.
pub fn ids(objects: &[Value]) -> Vec<String> {
    objects.iter().map(id).collect()
}

/// The aggregator StatefulSets of an overlay: the edge's `logferry-aggregator` (every overlay
/// has it; panics otherwise) and any other instance, such as kafka-tier's processors.
pub fn aggregator_statefulsets(objects: &[Value]) -> Vec<&Value> {
    find(objects, "StatefulSet", "logferry-aggregator");
    of_kind(objects, "StatefulSet")
}

/// Workloads (objects with a pod template).
pub fn workloads(objects: &[Value]) -> Vec<&Value> {
    objects
        .iter()
        .filter(|o| {
            matches!(
                o["kind"].as_str(),
                Some("StatefulSet" | "DaemonSet" | "Deployment" | "Job")
            )
        })
        .collect()
}

/// The pod template's labels.
pub fn pod_labels(workload: &Value) -> BTreeMap<String, String> {
    string_map(&workload["spec"]["template"]["metadata"]["labels"])
}

/// The pod spec.
pub fn pod_spec(workload: &Value) -> &Value {
    &workload["spec"]["template"]["spec"]
}

/// The containers of a workload.
pub fn containers(workload: &Value) -> Vec<&Value> {
    pod_spec(workload)["containers"]
        .as_array()
        .map(|a| a.iter().collect())
        .unwrap_or_default()
}

/// The one container named `name`.
pub fn container<'a>(workload: &'a Value, name: &str) -> &'a Value {
    containers(workload)
        .into_iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("{} has no container {name}", id(workload)))
}

/// Named container ports: name -> port.
pub fn container_ports(container: &Value) -> BTreeMap<String, u64> {
    container["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| Some((p["name"].as_str()?.to_owned(), p["containerPort"].as_u64()?)))
        .collect()
}

/// A string-to-string JSON map.
pub fn string_map(v: &Value) -> BTreeMap<String, String> {
    v.as_object()
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
        .collect()
}

/// Whether `selector` (a `matchLabels`-style map) selects `labels`.
pub fn selects(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// A Kubernetes quantity (`20Gi`, `512Mi`, `1G`, `1000`) in bytes.
pub fn quantity_bytes(q: &str) -> u64 {
    let units: [(&str, u64); 10] = [
        ("Ki", 1 << 10),
        ("Mi", 1 << 20),
        ("Gi", 1 << 30),
        ("Ti", 1 << 40),
        ("Pi", 1 << 50),
        ("k", 1_000),
        ("M", 1_000_000),
        ("G", 1_000_000_000),
        ("T", 1_000_000_000_000),
        ("P", 1_000_000_000_000_000),
    ];
    for (suffix, mult) in units {
        if let Some(n) = q.strip_suffix(suffix) {
            return n
                .parse::<u64>()
                .unwrap_or_else(|e| panic!("quantity {q:?}: {e}"))
                * mult;
        }
    }
    q.parse().unwrap_or_else(|e| panic!("quantity {q:?}: {e}"))
}

/// A config size (`"15GiB"`, `"8MiB"`, `"512KiB"`, `"1000"`) in bytes, as logferry reads it.
pub fn config_bytes(s: &str) -> u64 {
    let units: [(&str, u64); 8] = [
        ("KiB", 1 << 10),
        ("MiB", 1 << 20),
        ("GiB", 1 << 30),
        ("TiB", 1 << 40),
        ("KB", 1_000),
        ("MB", 1_000_000),
        ("GB", 1_000_000_000),
        ("B", 1),
    ];
    for (suffix, mult) in units {
        if let Some(n) = s.strip_suffix(suffix) {
            return n
                .trim()
                .parse::<u64>()
                .unwrap_or_else(|e| panic!("size {s:?}: {e}"))
                * mult;
        }
    }
    s.parse().unwrap_or_else(|e| panic!("size {s:?}: {e}"))
}

/// A config duration (`"60s"`, `"250ms"`, `"5m"`, `"72h"`) in seconds.
pub fn config_seconds(s: &str) -> f64 {
    let units: [(&str, f64); 4] = [("ms", 0.001), ("s", 1.0), ("m", 60.0), ("h", 3600.0)];
    for (suffix, mult) in units {
        if let Some(n) = s.strip_suffix(suffix) {
            if let Ok(n) = n.trim().parse::<f64>() {
                return n * mult;
            }
        }
    }
    panic!("duration {s:?} is not like \"60s\"")
}

/// The port of a `host:port` listen address.
pub fn listen_port(addr: &str) -> u64 {
    addr.rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .unwrap_or_else(|| panic!("{addr:?} is not host:port"))
}

/// Every string value in a JSON tree, with its dotted key path.
pub fn strings(v: &Value) -> Vec<(String, String)> {
    fn walk(v: &Value, path: String, out: &mut Vec<(String, String)>) {
        match v {
            Value::String(s) => out.push((path, s.clone())),
            Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    walk(item, format!("{path}[{i}]"), out);
                }
            }
            Value::Object(map) => {
                for (k, item) in map {
                    let p = if path.is_empty() {
                        k.clone()
                    } else {
                        format!("{path}.{k}")
                    };
                    walk(item, p, out);
                }
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(v, String::new(), &mut out);
    out
}

/// The `${NAME}` environment references in a string (not the `$${` escape).
pub fn env_refs(s: &str) -> Vec<String> {
    let mut refs = Vec::new();
    let mut rest = s;
    while let Some(pos) = rest.find('$') {
        let after = &rest[pos..];
        if let Some(stripped) = after.strip_prefix("$${") {
            rest = stripped;
        } else if let Some(body) = after.strip_prefix("${") {
            match body.find('}') {
                Some(end) => {
                    refs.push(body[..end].to_owned());
                    rest = &body[end + 1..];
                }
                None => break,
            }
        } else {
            rest = &after[1..];
        }
    }
    refs
}

/// The config file a workload's container runs: follows `--config PATH` to the volume mounted
/// at PATH's directory and the ConfigMap behind it. Returns (PATH, the file's text).
pub fn workload_config(objects: &[Value], workload: &Value, container: &str) -> (String, String) {
    let c = self::container(workload, container);
    let args: Vec<&str> = c["args"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    let path = args
        .windows(2)
        .find(|w| w[0] == "--config")
        .map(|w| w[1])
        .unwrap_or_else(|| panic!("{} does not pass --config: {args:?}", id(workload)));
    let (dir, key) = path.rsplit_once('/').expect("an absolute --config path");
    let mount = c["volumeMounts"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|m| m["mountPath"] == dir)
        .unwrap_or_else(|| panic!("{}: nothing is mounted at {dir}", id(workload)));
    let volume = pod_spec(workload)["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|v| v["name"] == mount["name"])
        .unwrap_or_else(|| panic!("{}: no volume {}", id(workload), mount["name"]));
    let cm_name = volume["configMap"]["name"]
        .as_str()
        .unwrap_or_else(|| panic!("{}: volume {} is not a ConfigMap", id(workload), volume));
    let cm = find(objects, "ConfigMap", cm_name);
    let text = cm["data"][key]
        .as_str()
        .unwrap_or_else(|| panic!("ConfigMap {cm_name} has no key {key}"))
        .to_owned();
    (path.to_owned(), text)
}

/// Environment variable names a container gets.
pub fn env_names(container: &Value) -> Vec<String> {
    container["env"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["name"].as_str().map(str::to_owned))
        .collect()
}

/// Volume mounts of a container: (mount path, read-only, volume JSON).
pub fn mounts<'a>(workload: &'a Value, container: &'a Value) -> Vec<(String, bool, &'a Value)> {
    let volumes = pod_spec(workload)["volumes"].as_array();
    let claims = workload["spec"]["volumeClaimTemplates"].as_array();
    container["volumeMounts"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| {
            let name = &m["name"];
            let volume = volumes
                .into_iter()
                .flatten()
                .chain(claims.into_iter().flatten().map(|c| &c["metadata"]))
                .find(|v| &v["name"] == name)
                .unwrap_or_else(|| panic!("{}: mount of unknown volume {name}", id(workload)));
            (
                m["mountPath"].as_str().unwrap_or_default().to_owned(),
                m["readOnly"].as_bool().unwrap_or(false),
                volume,
            )
        })
        .collect()
}

/// Whether `path` is `dir` or below it.
pub fn is_under(path: &str, dir: &str) -> bool {
    let dir = dir.trim_end_matches('/');
    path == dir || path.starts_with(&format!("{dir}/"))
}

/// Writes `text` to a file in a new temp dir; returns both (the dir deletes itself).
pub fn temp_file(name: &str, text: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join(name);
    std::fs::write(&path, text).expect("writing a temp file");
    (dir, path)
}

/// Expressions of the alert rules (deploy/monitoring/alerts.yaml).
pub fn alert_exprs(tools: &Tools) -> Vec<(String, String)> {
    let file = deploy_dir().join("monitoring").join("alerts.yaml");
    let docs = yaml_files(tools, &[&file]);
    let mut out = Vec::new();
    for group in docs[0]["doc"]["groups"].as_array().expect("groups") {
        for rule in group["rules"].as_array().expect("rules") {
            let name = rule["alert"]
                .as_str()
                .or(rule["record"].as_str())
                .expect("alert or record name");
            let expr = rule["expr"].as_str().expect("expr");
            out.push((name.to_owned(), expr.to_owned()));
        }
    }
    out
}

/// The dashboard (deploy/monitoring/grafana-dashboard.json).
pub fn dashboard() -> Value {
    let path = deploy_dir()
        .join("monitoring")
        .join("grafana-dashboard.json");
    serde_json::from_slice(&std::fs::read(&path).expect("reading the dashboard"))
        .expect("the dashboard is JSON")
}

/// Every query of the dashboard (panel targets and variable queries), with Grafana's variables
/// replaced by values that make plain PromQL: `$__rate_interval` -> `5m`, `$var` -> `.*`
/// (inside regex matchers), and `label_values(selector, label)` reduced to its selector.
pub fn dashboard_exprs() -> Vec<(String, String)> {
    let dash = dashboard();
    let mut out = Vec::new();
    for panel in dash["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().expect("target expr");
            out.push((
                format!("panel {:?}", panel["title"].as_str().unwrap_or("")),
                grafana_to_promql(expr),
            ));
        }
    }
    for var in dash["templating"]["list"].as_array().expect("templating") {
        if var["type"] != "query" {
            continue;
        }
        let query = var["definition"].as_str().expect("variable definition");
        let inner = query
            .strip_prefix("label_values(")
            .and_then(|q| q.strip_suffix(')'))
            .and_then(|q| q.rsplit_once(','))
            .map(|(sel, _)| sel.trim())
            .unwrap_or_else(|| panic!("variable query {query:?} is not label_values(sel, label)"));
        out.push((
            format!("variable {:?}", var["name"].as_str().unwrap_or("")),
            grafana_to_promql(inner),
        ));
    }
    out
}

fn grafana_to_promql(expr: &str) -> String {
    let mut s = expr.replace("$__rate_interval", "5m");
    for var in ["$namespace", "$job", "$pod", "$tenant"] {
        s = s.replace(var, ".*");
    }
    assert!(
        !s.contains('$') || s.contains("\"$1\""),
        "unknown Grafana variable left in {expr:?}"
    );
    s
}

/// Labels every scraped series gets from service discovery, not from the binaries.
pub const TARGET_LABELS: [&str; 8] = [
    "job",
    "instance",
    "namespace",
    "pod",
    "node",
    "container",
    "endpoint",
    "service",
];

/// Series names and their label names from a Prometheus text scrape.
pub fn scraped_series(text: &str) -> BTreeMap<String, std::collections::BTreeSet<String>> {
    let mut out: BTreeMap<String, std::collections::BTreeSet<String>> = BTreeMap::new();
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let series = line.rsplit_once(' ').map(|(s, _)| s).unwrap_or(line);
        let (name, labels) = match series.split_once('{') {
            Some((n, l)) => (n, l.trim_end_matches('}')),
            None => (series, ""),
        };
        let entry = out.entry(name.to_owned()).or_default();
        for pair in labels.split(',').filter(|p| !p.is_empty()) {
            if let Some((k, _)) = pair.split_once('=') {
                entry.insert(k.trim().to_owned());
            }
        }
    }
    out
}

/// A daemon (`logferry-aggregator` or `logferry-forwarder`) started with a config file; its
/// JSON log lines are collected and its listening addresses learnt from them. Killed on drop.
#[derive(Debug)]
pub struct Daemon {
    child: Option<std::process::Child>,
    logs: std::sync::Arc<Mutex<Vec<String>>>,
    /// `listener` field of each `listening` log line -> address.
    pub listeners: BTreeMap<String, std::net::SocketAddr>,
}

impl Daemon {
    /// Runs `bin run --config CONFIG --log-format json` in `cwd` and waits until every listener
    /// in `wait_for` has logged its address.
    pub fn start(
        bin: &Path,
        config: &Path,
        cwd: &Path,
        env: &[(String, String)],
        wait_for: &[&str],
    ) -> Daemon {
        use std::io::BufRead;
        let mut cmd = Command::new(bin);
        cmd.arg("run")
            .arg("--config")
            .arg(config)
            .args(["--log-format", "json", "--log-level", "info"])
            .current_dir(cwd)
            .env_remove("RUST_LOG")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
        let pid = child.id();
        eprintln!("deploy: started pid {pid}: {cmd:?}");
        let logs = std::sync::Arc::new(Mutex::new(Vec::<String>::new()));
        let stderr = child.stderr.take().expect("piped stderr");
        let sink = logs.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                eprintln!("[pid {pid}] {line}");
                sink.lock().unwrap_or_else(|e| e.into_inner()).push(line);
            }
        });
        let mut daemon = Daemon {
            child: Some(child),
            logs,
            listeners: BTreeMap::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            for line in daemon.logs() {
                if let Some((name, addr)) = listening_line(&line) {
                    daemon.listeners.insert(name, addr);
                }
            }
            if wait_for.iter().all(|w| daemon.listeners.contains_key(*w)) {
                return daemon;
            }
            if let Some(status) = daemon
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                std::thread::sleep(Duration::from_millis(200));
                panic!(
                    "{} exited ({status}) before listening; logs:\n{}",
                    bin.display(),
                    daemon.logs().join("\n")
                );
            }
            assert!(
                Instant::now() < deadline,
                "{} did not log {wait_for:?} within 60s; logs:\n{}",
                bin.display(),
                daemon.logs().join("\n")
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Every log line so far.
    pub fn logs(&self) -> Vec<String> {
        self.logs.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The admin listener's address.
    pub fn admin(&self) -> std::net::SocketAddr {
        self.listeners["admin"]
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
