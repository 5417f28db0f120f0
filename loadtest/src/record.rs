//! Record shapes: Kubernetes-like log records, pre-encoded once and patched in place.
//!
//! Every shape is a msgpack map carrying `seq` (a fixed-width uint64: `0xcf` + 8 bytes) and
//! `run_id`, so a template can be patched in place; the entry time is an EventTime whose 8
//! payload bytes are patched the same way. Building a batch therefore costs two small writes per
//! record, no per-record encoding. The shapes:
//!
//! - `k8s` (default): `{"log": <S bytes of text>, "stream", "seq", "run_id", "kubernetes":
//!   {"pod_name", "namespace_name", "container_name", "host"}}`, the record of the reference
//!   measurements in `targets.md` (about 333 bytes with S = 200);
//! - `k8s-full`: what a Kubernetes metadata filter really attaches (pod id, labels, annotations,
//!   container id, image), about twice the size;
//! - `app-json`: a container that logs JSON: `log` holds a JSON application line (level, logger,
//!   message, trace id, HTTP fields) of about S bytes, as a forwarder sees it before merging.

use logferry_common::forward::{encode_entry, EventTime};
use rand::Rng;

/// How many different `log` lines a batch template cycles through (more than gzip's 32 KiB
/// window holds, so compression ratios stay realistic).
const FILLER_VARIANTS: usize = 1024;

/// Which record a run sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Shape {
    /// Container log line with a 4-key `kubernetes` map (the reference record).
    #[default]
    K8s,
    /// Container log line with full Kubernetes metadata (labels, annotations, ids, image).
    K8sFull,
    /// `log` is a JSON application log line.
    AppJson,
}

/// What every record of a run carries besides its `seq`.
#[derive(Debug, Clone)]
pub struct RecordShape {
    pub run_id: String,
    /// Length of the `log` field in bytes.
    pub log_bytes: usize,
    /// Used in the Kubernetes metadata so connections look like different pods.
    pub connection: usize,
    pub kind: Shape,
}

/// Encodes one record map with the given filler and seq; returns the offset of the 8 seq bytes
/// inside `out` (relative to where the record starts).
pub fn encode_record(shape: &RecordShape, filler: &str, seq: u64, out: &mut Vec<u8>) -> usize {
    let start = out.len();
    let full = shape.kind == Shape::K8sFull;
    put_map(out, if full { 6 } else { 5 });
    put_str(out, "log");
    put_str(out, filler);
    put_str(out, "stream");
    put_str(out, "stdout");
    if full {
        put_str(out, "logtag");
        put_str(out, "F");
    }
    put_str(out, "seq");
    // Fixed width on purpose: 0xcf + u64 big-endian, patched later.
    out.push(0xcf);
    let seq_off = out.len() - start;
    out.extend_from_slice(&seq.to_be_bytes());
    put_str(out, "run_id");
    put_str(out, &shape.run_id);
    put_str(out, "kubernetes");
    let short = short_id(&shape.run_id);
    let pod = format!("loadtest-{:04}-{short}", shape.connection);
    if full {
        let hash = format!("{:010x}", hash64(&shape.run_id) & 0xff_ffff_ffff);
        let pod = format!("checkout-{hash}-{:05}", shape.connection);
        let ids = format!("{:016x}{:016x}", hash64(&pod), hash64(&short));
        put_map(out, 10);
        put_str(out, "pod_name");
        put_str(out, &pod);
        put_str(out, "namespace_name");
        put_str(out, "loadtest");
        put_str(out, "pod_id");
        put_str(
            out,
            &format!(
                "{}-{}-{}-{}-{}",
                &ids[..8],
                &ids[8..12],
                &ids[12..16],
                &ids[16..20],
                &ids[20..32]
            ),
        );
        put_str(out, "labels");
        put_map(out, 3);
        put_str(out, "app");
        put_str(out, "checkout");
        put_str(out, "pod-template-hash");
        put_str(out, &hash);
        put_str(out, "app.kubernetes.io/part-of");
        put_str(out, "shop");
        put_str(out, "annotations");
        put_map(out, 1);
        put_str(out, "kubectl.kubernetes.io/default-container");
        put_str(out, "app");
        put_str(out, "host");
        put_str(out, "loadtest-node-1");
        put_str(out, "container_name");
        put_str(out, "app");
        put_str(out, "docker_id");
        put_str(out, &format!("{ids}{ids}"));
        put_str(out, "container_hash");
        put_str(
            out,
            &format!("registry.example.invalid/shop/checkout@sha256:{ids}{ids}"),
        );
        put_str(out, "container_image");
        put_str(out, "registry.example.invalid/shop/checkout:1.42.0");
    } else {
        put_map(out, 4);
        put_str(out, "pod_name");
        put_str(out, &pod);
        put_str(out, "namespace_name");
        put_str(out, "loadtest");
        put_str(out, "container_name");
        put_str(out, "app");
        put_str(out, "host");
        put_str(out, "loadtest-node");
    }
    seq_off
}

/// FNV-1a: stable ids derived from the run id (no randomness needed).
fn hash64(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

// Writes into a Vec cannot fail.
fn put_str(out: &mut Vec<u8>, s: &str) {
    rmp::encode::write_str(out, s).expect("write to Vec");
}

fn put_map(out: &mut Vec<u8>, len: u32) {
    rmp::encode::write_map_len(out, len).expect("write to Vec");
}

fn short_id(run_id: &str) -> String {
    run_id
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .take(8)
        .collect::<String>()
        .to_ascii_lowercase()
}

/// Words log lines are made of, so gzip sees something like real text (neither constant nor
/// random noise).
const WORDS: &[&str] = &[
    "GET",
    "POST",
    "request",
    "response",
    "status",
    "200",
    "404",
    "500",
    "user",
    "session",
    "INFO",
    "WARN",
    "ERROR",
    "DEBUG",
    "connection",
    "timeout",
    "retry",
    "cache",
    "miss",
    "hit",
    "query",
    "took",
    "ms",
    "bytes",
    "from",
    "to",
    "id",
    "order",
    "payment",
    "service",
    "handler",
    "started",
    "finished",
    "failed",
    "ok",
    "upstream",
    "latency",
    "worker",
    "queue",
    "job",
    "/api/v1/items",
    "/healthz",
    "client",
    "server",
    "token",
    "expired",
    "created",
    "deleted",
];

/// `len` printable ASCII bytes: log-like words, numbers and hex ids.
pub fn filler(len: usize, rng: &mut impl Rng) -> String {
    let mut s = String::with_capacity(len + 24);
    while s.len() < len {
        if !s.is_empty() {
            s.push(' ');
        }
        match rng.random_range(0..8u8) {
            0 => s.push_str(&rng.random_range(0..100_000u32).to_string()),
            1 => s.push_str(&format!("{:08x}", rng.random::<u32>())),
            _ => s.push_str(WORDS[rng.random_range(0..WORDS.len())]),
        }
    }
    s.truncate(len);
    s
}

/// A JSON application log line of about `len` bytes (never less than its fixed fields).
pub fn app_json_line(len: usize, rng: &mut impl Rng) -> String {
    const LEVELS: &[&str] = &["info", "info", "info", "debug", "warn", "error"];
    const METHODS: &[&str] = &["GET", "GET", "POST", "PUT", "DELETE"];
    const PATHS: &[&str] = &[
        "/api/v1/items",
        "/api/v1/orders",
        "/api/v1/cart",
        "/healthz",
    ];
    const STATUS: &[u16] = &[200, 200, 200, 201, 204, 404, 500];
    let head = format!(
        r#"{{"ts":"2026-01-01T00:00:00.{:06}Z","level":"{}","trace_id":"{:016x}","http":{{"method":"{}","path":"{}","status":{},"duration_ms":{}.{:03}}},"msg":""#,
        rng.random_range(0..1_000_000u32),
        LEVELS[rng.random_range(0..LEVELS.len())],
        rng.random::<u64>(),
        METHODS[rng.random_range(0..METHODS.len())],
        PATHS[rng.random_range(0..PATHS.len())],
        STATUS[rng.random_range(0..STATUS.len())],
        rng.random_range(0..2000u32),
        rng.random_range(0..1000u32),
    );
    let msg_len = len.saturating_sub(head.len() + 2).max(8);
    let mut line = head;
    line.push_str(&filler(msg_len, rng));
    line.push_str("\"}");
    line
}

/// A time used while building templates; found again to learn where the time bytes sit.
const SENTINEL_TIME: EventTime = EventTime {
    secs: 0xA1B2_C3D4,
    nanos: 0x0E1F_2A3B,
};

/// `capacity` pre-encoded Forward entries (`[time, record]`), patched per batch.
#[derive(Debug)]
pub struct BatchTemplate {
    entries: Vec<u8>,
    /// End offset of entry i in `entries`.
    ends: Vec<usize>,
    /// Absolute offsets of the 8 seq bytes of entry i.
    seq_offs: Vec<usize>,
    /// Absolute offsets of the 8 EventTime payload bytes of entry i.
    time_offs: Vec<usize>,
}

impl BatchTemplate {
    pub fn new(shape: &RecordShape, capacity: usize, rng: &mut impl Rng) -> Self {
        let fillers: Vec<String> = (0..FILLER_VARIANTS.min(capacity.max(1)))
            .map(|_| match shape.kind {
                Shape::AppJson => app_json_line(shape.log_bytes, rng),
                Shape::K8s | Shape::K8sFull => filler(shape.log_bytes, rng),
            })
            .collect();
        let mut entries = Vec::new();
        let mut ends = Vec::with_capacity(capacity);
        let mut seq_offs = Vec::with_capacity(capacity);
        let mut time_offs = Vec::with_capacity(capacity);
        let mut record = Vec::new();
        let sentinel = sentinel_bytes();
        for i in 0..capacity {
            record.clear();
            let seq_in_record = encode_record(shape, &fillers[i % fillers.len()], 0, &mut record);
            let start = entries.len();
            encode_entry(SENTINEL_TIME, &record, &mut entries);
            let entry = &entries[start..];
            // encode_entry writes [time, record]: the record is the suffix.
            assert!(
                entry.ends_with(&record),
                "encode_entry must end with the record"
            );
            let record_start = entries.len() - record.len();
            let time_rel = entry[..entry.len() - record.len()]
                .windows(8)
                .position(|w| w == sentinel)
                .expect("EventTime payload in the entry header");
            time_offs.push(start + time_rel);
            seq_offs.push(record_start + seq_in_record);
            ends.push(entries.len());
        }
        Self {
            entries,
            ends,
            seq_offs,
            time_offs,
        }
    }

    pub fn capacity(&self) -> usize {
        self.ends.len()
    }

    /// Fills the first `n` entries with seqs `first_seq..first_seq+n` and `time`, and returns
    /// their bytes (a stream of msgpack entries, the PackedForward payload).
    pub fn fill(&mut self, first_seq: u64, n: usize, time: EventTime) -> &[u8] {
        assert!(n <= self.capacity() && n > 0);
        let mut t = [0u8; 8];
        t[..4].copy_from_slice(&time.secs.to_be_bytes());
        t[4..].copy_from_slice(&time.nanos.to_be_bytes());
        for i in 0..n {
            let so = self.seq_offs[i];
            self.entries[so..so + 8].copy_from_slice(&(first_seq + i as u64).to_be_bytes());
            let to = self.time_offs[i];
            self.entries[to..to + 8].copy_from_slice(&t);
        }
        &self.entries[..self.ends[n - 1]]
    }
}

fn sentinel_bytes() -> [u8; 8] {
    let mut s = [0u8; 8];
    s[..4].copy_from_slice(&SENTINEL_TIME.secs.to_be_bytes());
    s[4..].copy_from_slice(&SENTINEL_TIME.nanos.to_be_bytes());
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filler_is_printable_and_sized() {
        let mut rng = rand::rng();
        let f = filler(200, &mut rng);
        assert_eq!(f.len(), 200);
        assert!(f.bytes().all(|b| b.is_ascii_graphic() || b == b' '));
    }

    #[test]
    fn seq_is_patched_in_place() {
        let shape = RecordShape {
            run_id: "r1".into(),
            log_bytes: 10,
            connection: 0,
            kind: Shape::K8s,
        };
        let mut rng = rand::rng();
        let mut t = BatchTemplate::new(&shape, 3, &mut rng);
        let time = EventTime {
            secs: 1_609_459_200,
            nanos: 123_456_789,
        };
        let bytes = t.fill(u64::MAX - 5, 2, time).to_vec();
        let first_end = t.ends[0];
        assert_eq!(bytes.len(), t.ends[1]);
        for (i, off) in t.seq_offs[..2].iter().enumerate() {
            assert_eq!(bytes[off - 1], 0xcf);
            let v = u64::from_be_bytes(bytes[*off..off + 8].try_into().unwrap());
            assert_eq!(v, u64::MAX - 5 + i as u64);
        }
        assert!(t.seq_offs[0] < first_end && t.seq_offs[1] > first_end);
        let to = t.time_offs[1];
        assert_eq!(&bytes[to..to + 4], &1_609_459_200u32.to_be_bytes());
        assert_eq!(&bytes[to + 4..to + 8], &123_456_789u32.to_be_bytes());
    }

    #[test]
    fn app_json_lines_are_json_of_about_the_size() {
        let mut rng = rand::rng();
        for len in [0, 50, 200, 1000] {
            let l = app_json_line(len, &mut rng);
            let v: serde_json::Value = serde_json::from_str(&l).expect(&l);
            assert!(
                v["msg"].as_str().is_some() && v["http"]["status"].is_u64(),
                "{l}"
            );
            if len >= 200 {
                assert_eq!(l.len(), len, "{l}");
            }
        }
    }
}
