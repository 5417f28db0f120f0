//! Record -> Cloud Logging `LogEntry`: the "JSON transmogrification" GKE users write by hand
//! with Fluentd `record_modifier` scripts, as one pure function ([`map_record`]).
//!
//! ## Rules
//! | LogEntry field | from |
//! |---|---|
//! | `resource` | `k8s_container` with `project_id`, `location`, `cluster_name` (config or metadata server) and `namespace_name`, `pod_name`, `container_name` from the record's `kubernetes` map (the forwarder's trusted metadata, never from payload keys such as `logging.googleapis.com/local_resource_id`, which a container could forge); `k8s_cluster` (cluster labels only) when any of the three is missing |
//! | `labels` | `kubernetes.labels.<k>` as `k8s-pod/<k>` (values as text); at most 64, keys up to 512 bytes, values up to 64 KiB (truncated) |
//! | `severity` | the record's `severity`, else `level` (names, any case: `WARN` = WARNING, `FATAL` = CRITICAL, `ERR` = ERROR; or numbers 0-800), removed from the payload; else `stream`: `stderr` -> ERROR, `stdout` -> INFO; else DEFAULT |
//! | `logName` | `projects/<project>/logs/<id>`; id = `log_name` from the config, else the record's `stream`, else `logferry` (URL-encoded) |
//! | `timestamp` | the record's `time` when it is an RFC 3339 string (the runtime's nanosecond time, then removed), else the event time |
//! | payload | `textPayload` = `log` (or `message`) when that is the only field left (a plain-text line, trailing newline cut); otherwise `jsonPayload` = the record without `kubernetes`, `stream`, `time` and the severity key |
//! | `insertId` | a hash of the record's place in its chunk: Cloud Logging drops repeats of an insertId with the same timestamp, so retries do not duplicate |
//!
//! ## Size policy
//! An entry larger than `max_entry_bytes` (encoded as JSON) is truncated, never dropped or
//! split: a `textPayload` is cut to fit; in a `jsonPayload` the longest string values are cut
//! (longest first) until it fits, and if it still does not (thousands of small fields), the
//! payload becomes a `textPayload` of its JSON text, cut to fit. A truncated entry carries the
//! label `logferry/truncated` = its original size in bytes. Requests are batched to stay under
//! `max_request_bytes` and `max_entries_per_request`.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

/// Cloud Logging severity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    /// 0
    Default,
    /// 100
    Debug,
    /// 200
    Info,
    /// 300
    Notice,
    /// 400
    Warning,
    /// 500
    Error,
    /// 600
    Critical,
    /// 700
    Alert,
    /// 800
    Emergency,
}

impl Severity {
    /// The API's name.
    pub fn name(self) -> &'static str {
        match self {
            Severity::Default => "DEFAULT",
            Severity::Debug => "DEBUG",
            Severity::Info => "INFO",
            Severity::Notice => "NOTICE",
            Severity::Warning => "WARNING",
            Severity::Error => "ERROR",
            Severity::Critical => "CRITICAL",
            Severity::Alert => "ALERT",
            Severity::Emergency => "EMERGENCY",
        }
    }

    /// Parses a name (any case, common aliases) or a number (0-800, rounded down to a level).
    pub fn parse(v: &Value) -> Option<Severity> {
        if let Some(n) = v.as_u64() {
            return Some(match n {
                0..=99 => Severity::Default,
                100..=199 => Severity::Debug,
                200..=299 => Severity::Info,
                300..=399 => Severity::Notice,
                400..=499 => Severity::Warning,
                500..=599 => Severity::Error,
                600..=699 => Severity::Critical,
                700..=799 => Severity::Alert,
                _ => Severity::Emergency,
            });
        }
        let s = v.as_str()?.trim().to_ascii_uppercase();
        Some(match s.as_str() {
            "DEFAULT" => Severity::Default,
            "DEBUG" | "TRACE" => Severity::Debug,
            "INFO" | "INFORMATION" => Severity::Info,
            "NOTICE" => Severity::Notice,
            "WARNING" | "WARN" => Severity::Warning,
            "ERROR" | "ERR" => Severity::Error,
            "CRITICAL" | "FATAL" | "CRIT" => Severity::Critical,
            "ALERT" => Severity::Alert,
            "EMERGENCY" | "EMERG" => Severity::Emergency,
            _ => return None,
        })
    }
}

/// Where entries go: the trusted half of the resource labels and the log name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Project id.
    pub project_id: String,
    /// Cluster location.
    pub location: String,
    /// Cluster name.
    pub cluster_name: String,
    /// Configured log id (else the stream).
    pub log_name: Option<String>,
    /// Largest entry, in bytes of JSON.
    pub max_entry_bytes: usize,
}

/// An entry's payload.
#[derive(Debug, Clone, PartialEq)]
pub enum Payload {
    /// `textPayload`.
    Text(String),
    /// `jsonPayload`.
    Json(Map<String, Value>),
}

/// A mapped LogEntry.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// `logName`.
    pub log_name: String,
    /// `resource.type`.
    pub resource_type: &'static str,
    /// `resource.labels`.
    pub resource_labels: BTreeMap<String, String>,
    /// `labels`.
    pub labels: BTreeMap<String, String>,
    /// `severity`.
    pub severity: Severity,
    /// `timestamp`: seconds and nanoseconds since the Unix epoch.
    pub timestamp: (i64, u32),
    /// `insertId`.
    pub insert_id: String,
    /// The payload.
    pub payload: Payload,
}

/// Per-entry label limits of the API.
const MAX_LABELS: usize = 64;
const MAX_LABEL_KEY: usize = 512;
const MAX_LABEL_VALUE: usize = 64 * 1024;

impl Entry {
    /// The entry as the API's JSON (severity by name), for size checks and tests.
    pub fn to_json(&self) -> Value {
        let mut v = serde_json::json!({
            "logName": self.log_name,
            "resource": {"type": self.resource_type, "labels": self.resource_labels},
            "severity": self.severity.name(),
            "timestamp": rfc3339(self.timestamp),
            "insertId": self.insert_id,
        });
        if !self.labels.is_empty() {
            v["labels"] = serde_json::to_value(&self.labels).unwrap_or_default();
        }
        match &self.payload {
            Payload::Text(t) => v["textPayload"] = Value::String(t.clone()),
            Payload::Json(m) => v["jsonPayload"] = Value::Object(m.clone()),
        }
        v
    }

    /// Encoded size in bytes (JSON).
    pub fn size(&self) -> usize {
        serde_json::to_vec(&self.to_json()).map_or(0, |v| v.len())
    }
}

fn rfc3339((secs, nanos): (i64, u32)) -> String {
    chrono::DateTime::from_timestamp(secs, nanos)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
}

/// Maps one record (a JSON object) with its event time and insert id.
pub fn map_record(
    record: Map<String, Value>,
    event_time: (i64, u32),
    insert_id: String,
    target: &Target,
) -> Entry {
    let mut payload = record;
    let kubernetes = payload.remove("kubernetes");
    let k8s = kubernetes.as_ref().and_then(Value::as_object);
    let text = |k: &str| {
        k8s.and_then(|m| m.get(k))
            .and_then(Value::as_str)
            .map(str::to_owned)
    };

    let mut resource_labels = BTreeMap::from([
        ("project_id".to_owned(), target.project_id.clone()),
        ("location".to_owned(), target.location.clone()),
        ("cluster_name".to_owned(), target.cluster_name.clone()),
    ]);
    let resource_type = match (
        text("namespace_name"),
        text("pod_name"),
        text("container_name"),
    ) {
        (Some(ns), Some(pod), Some(ctr)) => {
            resource_labels.insert("namespace_name".into(), ns);
            resource_labels.insert("pod_name".into(), pod);
            resource_labels.insert("container_name".into(), ctr);
            "k8s_container"
        }
        _ => "k8s_cluster",
    };

    let mut labels = BTreeMap::new();
    if let Some(pod_labels) = k8s.and_then(|m| m.get("labels")).and_then(Value::as_object) {
        for (k, v) in pod_labels.iter().take(MAX_LABELS) {
            let value = match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            labels.insert(
                truncated(format!("k8s-pod/{k}"), MAX_LABEL_KEY),
                truncated(value, MAX_LABEL_VALUE),
            );
        }
    }

    let stream = match payload.remove("stream") {
        Some(Value::String(s)) => Some(s),
        Some(other) => {
            payload.insert("stream".into(), other);
            None
        }
        None => None,
    };
    let severity = ["severity", "level"]
        .iter()
        .find_map(|k| {
            let sev = payload.get(*k).and_then(Severity::parse)?;
            payload.remove(*k);
            Some(sev)
        })
        .unwrap_or(match stream.as_deref() {
            Some("stderr") => Severity::Error,
            Some("stdout") => Severity::Info,
            _ => Severity::Default,
        });
    let timestamp = match payload
        .get("time")
        .and_then(Value::as_str)
        .and_then(parse_time)
    {
        Some(t) => {
            payload.remove("time");
            t
        }
        None => event_time,
    };
    let log_id = target
        .log_name
        .clone()
        .or(stream)
        .unwrap_or_else(|| "logferry".into());
    let log_name = format!(
        "projects/{}/logs/{}",
        target.project_id,
        url_encode_log_id(&log_id)
    );

    let only_text = payload.len() == 1
        && ["log", "message"]
            .iter()
            .any(|k| payload.get(*k).is_some_and(Value::is_string));
    let payload = if only_text {
        let text = payload
            .into_iter()
            .next()
            .and_then(|(_, v)| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        Payload::Text(text.strip_suffix('\n').unwrap_or(&text).to_owned())
    } else {
        Payload::Json(payload)
    };
    let mut entry = Entry {
        log_name,
        resource_type,
        resource_labels,
        labels,
        severity,
        timestamp,
        insert_id,
        payload,
    };
    fit(&mut entry, target.max_entry_bytes);
    entry
}

/// Applies the size policy (module docs).
fn fit(entry: &mut Entry, max: usize) {
    let original = entry.size();
    if original <= max {
        return;
    }
    entry
        .labels
        .insert("logferry/truncated".into(), original.to_string());
    let overhead = entry.size()
        - match &entry.payload {
            Payload::Text(t) => serde_json::to_string(t).map_or(0, |s| s.len()),
            Payload::Json(m) => serde_json::to_string(m).map_or(0, |s| s.len()),
        };
    let budget = max.saturating_sub(overhead + 16);
    if let Payload::Json(map) = &mut entry.payload {
        // Cut the longest strings first, each to what the budget leaves.
        for _ in 0..64 {
            let size = serde_json::to_string(&*map).map_or(0, |s| s.len());
            if size <= budget {
                return;
            }
            let Some(longest) = longest_string(map) else {
                break;
            };
            let excess = size - budget;
            let keep = longest.len().saturating_sub(excess + 8);
            let cut = truncated(longest.clone(), keep);
            *longest = cut;
        }
        let json = serde_json::to_string(&*map).unwrap_or_default();
        entry.payload = Payload::Text(json);
    }
    if let Payload::Text(t) = &mut entry.payload {
        // JSON escaping can make the text longer than its bytes: cut until it fits.
        let mut keep = budget.min(t.len());
        loop {
            let cut = truncated(t.clone(), keep);
            if serde_json::to_string(&cut).map_or(0, |s| s.len()) <= budget || keep == 0 {
                *t = cut;
                break;
            }
            keep = keep * 3 / 4;
        }
    }
}

/// The longest string value anywhere in the map.
fn longest_string(map: &mut Map<String, Value>) -> Option<&mut String> {
    fn walk<'a>(v: &'a mut Value, best: &mut Option<&'a mut String>) {
        match v {
            Value::String(s) if best.as_ref().is_none_or(|b| s.len() > b.len()) => {
                *best = Some(s);
            }
            Value::Array(a) => a.iter_mut().for_each(|x| walk(x, best)),
            Value::Object(m) => m.values_mut().for_each(|x| walk(x, best)),
            _ => {}
        }
    }
    let mut best = None;
    for v in map.values_mut() {
        walk(v, &mut best);
    }
    best.filter(|s| !s.is_empty())
}

fn truncated(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
    s
}

fn parse_time(s: &str) -> Option<(i64, u32)> {
    let t = chrono::DateTime::parse_from_rfc3339(s).ok()?;
    Some((t.timestamp(), t.timestamp_subsec_nanos()))
}

/// URL-encodes a log id as the API wants it in `logName` (`/` as `%2F`).
fn url_encode_log_id(id: &str) -> String {
    let mut out = String::with_capacity(id.len());
    for b in id.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn target() -> Target {
        Target {
            project_id: "example-project".into(),
            location: "europe-west3".into(),
            cluster_name: "feo-eu-w3-c03".into(),
            log_name: None,
            max_entry_bytes: 256 * 1024,
        }
    }

    fn map(record: Value, t: &Target) -> Value {
        let Value::Object(m) = record else { panic!() };
        let mut v = map_record(m, (1_700_000_000, 5), "id-1".into(), t).to_json();
        v.as_object_mut().unwrap().remove("insertId");
        v
    }

    /// The worked example of ../shared/research/stackdriver-mapping.md, verbatim.
    #[test]
    fn worked_example() {
        let record = json!({
          "stream": "stderr",
          "time": "2020-01-02T17:10:01.673407221Z",
          "severity": "DEBUG",
          "message": "Model stats update skipped",
          "timestamp": "2020-01-02T17:10:01Z",
          "context": {"data": {"action": "statsupdskip", "inactive": 0, "model": "100f20ms:HU:default"}},
          "kubernetes": {
            "namespace_name": "demo",
            "pod_name": "demo-amdws-7787c9577b-bz7t9",
            "container_name": "demo-amdws",
            "container_image": "eu.gcr.io/example-project/feo/amdws:latest",
            "pod_id": "51646286-29cd-11ea-8143-4201ac100104",
            "labels": {"app": "demo-amdws", "pod-template-hash": "7787c9577b"}
          }
        });
        let expected = json!({
          "logName": "projects/example-project/logs/stderr",
          "resource": {
            "type": "k8s_container",
            "labels": {
              "project_id": "example-project",
              "location": "europe-west3",
              "cluster_name": "feo-eu-w3-c03",
              "namespace_name": "demo",
              "pod_name": "demo-amdws-7787c9577b-bz7t9",
              "container_name": "demo-amdws"
            }
          },
          "labels": {"k8s-pod/app": "demo-amdws", "k8s-pod/pod-template-hash": "7787c9577b"},
          "severity": "DEBUG",
          "timestamp": "2020-01-02T17:10:01.673407221Z",
          "jsonPayload": {
            "message": "Model stats update skipped",
            "timestamp": "2020-01-02T17:10:01Z",
            "context": {"data": {"action": "statsupdskip", "inactive": 0, "model": "100f20ms:HU:default"}}
          }
        });
        assert_eq!(map(record, &target()), expected);
    }

    /// (name, record, expected entry minus insertId) for the other rules.
    #[test]
    fn table() {
        let k8s = json!({"namespace_name": "ns", "pod_name": "p", "container_name": "c"});
        let container = json!({"type": "k8s_container", "labels": {
            "project_id": "example-project", "location": "europe-west3", "cluster_name": "feo-eu-w3-c03",
            "namespace_name": "ns", "pod_name": "p", "container_name": "c"}});
        let cluster = json!({"type": "k8s_cluster", "labels": {
            "project_id": "example-project", "location": "europe-west3", "cluster_name": "feo-eu-w3-c03"}});
        let cases = [
            (
                "plain text line on stdout",
                json!({"log": "hello world\n", "stream": "stdout", "time": "2024-05-01T10:00:00.000000001Z", "kubernetes": k8s}),
                json!({"logName": "projects/example-project/logs/stdout", "resource": container,
                       "severity": "INFO", "timestamp": "2024-05-01T10:00:00.000000001Z",
                       "textPayload": "hello world"}),
            ),
            (
                "stderr without a severity field is ERROR; level is promoted; event time used",
                json!({"log": "x", "extra": 1, "stream": "stderr", "kubernetes": k8s}),
                json!({"logName": "projects/example-project/logs/stderr", "resource": container,
                       "severity": "ERROR", "timestamp": "2023-11-14T22:13:20.000000005Z",
                       "jsonPayload": {"log": "x", "extra": 1}}),
            ),
            (
                "level alias and numeric severity",
                json!({"message": "m", "level": "warn", "n": 2, "kubernetes": k8s}),
                json!({"logName": "projects/example-project/logs/logferry", "resource": container,
                       "severity": "WARNING", "timestamp": "2023-11-14T22:13:20.000000005Z",
                       "jsonPayload": {"message": "m", "n": 2}}),
            ),
            (
                "missing Kubernetes metadata: cluster resource, no labels",
                json!({"message": "orphan", "severity": 500}),
                json!({"logName": "projects/example-project/logs/logferry", "resource": cluster,
                       "severity": "ERROR", "timestamp": "2023-11-14T22:13:20.000000005Z",
                       "textPayload": "orphan"}),
            ),
            (
                "partial metadata (no container) is not trusted as a container",
                json!({"message": "m", "x": true, "kubernetes": {"namespace_name": "ns", "pod_name": "p"}}),
                json!({"logName": "projects/example-project/logs/logferry", "resource": cluster,
                       "severity": "DEFAULT", "timestamp": "2023-11-14T22:13:20.000000005Z",
                       "jsonPayload": {"message": "m", "x": true}}),
            ),
            (
                "a forged local_resource_id stays payload; unknown severity stays too",
                json!({"logging.googleapis.com/local_resource_id": "k8s_container.kube-system.x.y",
                       "severity": "LOUD", "stream": "stdout", "kubernetes": k8s}),
                json!({"logName": "projects/example-project/logs/stdout", "resource": container,
                       "severity": "INFO", "timestamp": "2023-11-14T22:13:20.000000005Z",
                       "jsonPayload": {"logging.googleapis.com/local_resource_id": "k8s_container.kube-system.x.y",
                                       "severity": "LOUD"}}),
            ),
        ];
        for (name, record, expected) in cases {
            assert_eq!(map(record, &target()), expected, "{name}");
        }
    }

    #[test]
    fn configured_log_name_is_encoded() {
        let t = Target {
            log_name: Some("apps/web".into()),
            ..target()
        };
        let v = map(json!({"log": "x", "stream": "stdout"}), &t);
        assert_eq!(v["logName"], "projects/example-project/logs/apps%2Fweb");
    }

    #[test]
    fn label_limits() {
        let labels: Map<String, Value> = (0..100).map(|i| (format!("l{i:03}"), json!(i))).collect();
        let v = map(
            json!({"log": "x", "kubernetes": {"namespace_name": "a", "pod_name": "b", "container_name": "c", "labels": labels}}),
            &target(),
        );
        let got = v["labels"].as_object().unwrap();
        assert_eq!(got.len(), 64);
        assert_eq!(got["k8s-pod/l000"], "0");
    }

    #[test]
    fn oversize_entries_are_truncated_to_the_limit() {
        let t = Target {
            max_entry_bytes: 4096,
            ..target()
        };
        let big = "é".repeat(10_000);
        let text = Value::Object(
            json!({"log": big.clone(), "stream": "stdout"})
                .as_object()
                .unwrap()
                .clone(),
        );
        let Value::Object(m) = text else {
            unreachable!()
        };
        let e = map_record(m, (1, 0), "i".into(), &t);
        assert!(e.size() <= 4096, "{}", e.size());
        assert!(e.labels["logferry/truncated"].parse::<usize>().unwrap() > 20_000);
        let Payload::Text(s) = &e.payload else {
            panic!("{:?}", e.payload)
        };
        assert!(s.starts_with("éé") && s.len() < big.len());

        let json_rec = json!({"msg": "a".repeat(9000), "other": "b".repeat(3000), "n": 1});
        let Value::Object(m) = json_rec else {
            unreachable!()
        };
        let e = map_record(m, (1, 0), "i".into(), &t);
        assert!(e.size() <= 4096, "{}", e.size());
        let Payload::Json(p) = &e.payload else {
            panic!()
        };
        assert_eq!(p["n"], 1);

        let many: Map<String, Value> = (0..2000).map(|i| (format!("k{i}"), json!(i))).collect();
        let e = map_record(many, (1, 0), "i".into(), &t);
        assert!(e.size() <= 4096, "{}", e.size());
        assert!(matches!(e.payload, Payload::Text(_)));
    }
}
