//! Harness for the forwarder's whole-system tests.
//!
//! - [`Forwarder`] runs `logferry-forwarder` with a generated config in a temporary directory
//!   that holds its buffer (so it survives [`Forwarder::restart`]), learns the admin port from
//!   its JSON log, forwards its logs to the test's output, and kills it when dropped.
//! - [`LogWriter`] writes sequence-numbered container log lines (CRI or docker json-file),
//!   optionally with long lines split the way runtimes split them, and rotates its file by
//!   rename + create or by copytruncate every `rotate_bytes`.
//! - [`seq_report`] counts what the aggregator's file output holds of one run.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::{binary, metrics, read_output};

/// `logferry-forwarder`.
pub fn forwarder_bin() -> PathBuf {
    binary("logferry-forwarder", "logferry-forwarder")
}

/// Settings of a generated forwarder config.
#[derive(Debug, Clone)]
pub struct ForwarderConfig {
    /// `[input] paths`.
    pub paths: Vec<String>,
    /// `[output] servers`.
    pub servers: Vec<String>,
    /// `[buffer] flush_interval`.
    pub flush_interval: String,
    /// `[buffer] chunk_limit_size`.
    pub chunk_limit_size: String,
    /// `[buffer] total_limit_size`.
    pub total_limit_size: String,
    /// `shutdown_timeout`.
    pub shutdown_timeout: String,
    /// `[output] ack_timeout`.
    pub ack_timeout: String,
    /// `[output] heartbeat_interval`.
    pub heartbeat_interval: String,
    /// `[output] window`.
    pub window: usize,
    /// Extra lines of `[input]`.
    pub input_extra: String,
    /// Extra lines of `[output]`.
    pub output_extra: String,
    /// The whole `[kubernetes]` table body.
    pub kubernetes: String,
}

impl Default for ForwarderConfig {
    fn default() -> Self {
        Self {
            paths: Vec::new(),
            servers: Vec::new(),
            flush_interval: "200ms".into(),
            chunk_limit_size: "1MiB".into(),
            total_limit_size: "256MiB".into(),
            shutdown_timeout: "20s".into(),
            ack_timeout: "10s".into(),
            heartbeat_interval: "200ms".into(),
            window: 4,
            input_extra:
                "rescan_interval = \"500ms\"\npoll_interval = \"200ms\"\nrotate_wait = \"1s\"\n"
                    .into(),
            output_extra: String::new(),
            kubernetes: "merge_log = true\nkeep_log = false\n".into(),
        }
    }
}

impl ForwarderConfig {
    /// The TOML text for a forwarder whose buffer is under `dir`.
    pub fn to_toml(&self, dir: &Path) -> String {
        let s = |v: &str| Value::String(v.to_string()).to_string();
        let list = |v: &[String]| Value::from(v.to_vec()).to_string();
        format!(
            r#"shutdown_timeout = {shutdown}

[input]
paths = {paths}
{input_extra}

[kubernetes]
{kubernetes}

[buffer]
path = {buffer}
flush_interval = {flush}
chunk_limit_size = {chunk}
total_limit_size = {total}

[output]
servers = {servers}
ack_timeout = {ack}
heartbeat_interval = {hb}
connect_timeout = "2s"
window = {window}
{output_extra}

[admin]
listen = "127.0.0.1:0"
"#,
            shutdown = s(&self.shutdown_timeout),
            paths = list(&self.paths),
            input_extra = self.input_extra,
            kubernetes = self.kubernetes,
            buffer = s(&dir.join("buffer").display().to_string()),
            flush = s(&self.flush_interval),
            chunk = s(&self.chunk_limit_size),
            total = s(&self.total_limit_size),
            servers = list(&self.servers),
            ack = s(&self.ack_timeout),
            hb = s(&self.heartbeat_interval),
            window = self.window,
            output_extra = self.output_extra,
        )
    }
}

/// A running `logferry-forwarder`, killed when dropped.
#[derive(Debug)]
pub struct Forwarder {
    child: Option<Child>,
    /// Holds the buffer and the config.
    pub dir: tempfile::TempDir,
    /// The config file.
    pub config_path: PathBuf,
    /// The `[buffer] path`.
    pub buffer_dir: PathBuf,
    /// The admin listener (after start).
    pub admin_addr: SocketAddr,
    /// The config it runs with (change it and [`Forwarder::restart`] to apply).
    pub config: ForwarderConfig,
    env: Vec<(String, String)>,
    logs: Arc<Mutex<Vec<String>>>,
}

impl Forwarder {
    /// Starts a forwarder with `config`.
    pub fn start(config: ForwarderConfig) -> Self {
        Self::start_with_env(config, &[])
    }

    /// Starts a forwarder with extra environment variables.
    pub fn start_with_env(config: ForwarderConfig, env: &[(&str, &str)]) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("logferry-e2e-fwd-")
            .tempdir()
            .expect("temp dir");
        let config_path = dir.path().join("forwarder.toml");
        let mut f = Self {
            child: None,
            buffer_dir: dir.path().join("buffer"),
            config_path,
            dir,
            admin_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            config,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            logs: Arc::new(Mutex::new(Vec::new())),
        };
        f.spawn();
        f
    }

    /// Starts the process again with the same buffer (a running one is killed first).
    pub fn restart(&mut self) {
        self.sigkill();
        self.spawn();
    }

    fn spawn(&mut self) {
        std::fs::write(&self.config_path, self.config.to_toml(self.dir.path()))
            .expect("writing the forwarder config");
        let mut cmd = Command::new(forwarder_bin());
        cmd.arg("run")
            .arg("--config")
            .arg(&self.config_path)
            .args(["--log-format", "json", "--log-level", "info"])
            .current_dir(self.dir.path())
            .env_remove("RUST_LOG")
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
        let pid = child.id();
        eprintln!("e2e: started forwarder pid {pid}");
        let (tx, rx) = mpsc::channel::<SocketAddr>();
        let stderr = child.stderr.take().expect("piped stderr");
        let logs = Arc::clone(&self.logs);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                eprintln!("[forwarder {pid}] {line}");
                if let Some((listener, addr)) = crate::listening_line(&line) {
                    if listener == "admin" {
                        let _ = tx.send(addr);
                    }
                }
                logs.lock().unwrap_or_else(|e| e.into_inner()).push(line);
            }
        });
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(addr) => {
                    self.admin_addr = addr;
                    break;
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    panic!(
                        "forwarder exited before listening; logs:\n{}",
                        self.logs().join("\n")
                    )
                }
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                std::thread::sleep(Duration::from_millis(200));
                panic!(
                    "forwarder exited before listening ({status}); logs:\n{}",
                    self.logs().join("\n")
                );
            }
            assert!(
                Instant::now() < deadline,
                "forwarder did not start within 60s"
            );
        }
    }

    /// The process id, while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Every stderr line so far.
    pub fn logs(&self) -> Vec<String> {
        self.logs.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// SIGKILL and reap.
    pub fn sigkill(&mut self) -> Option<ExitStatus> {
        let mut c = self.child.take()?;
        let _ = c.kill();
        c.wait().ok()
    }

    /// Sends SIGTERM without waiting.
    pub fn sigterm(&self) {
        let Some(pid) = self.pid() else { return };
        let status = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .expect("running kill");
        assert!(status.success(), "kill -TERM {pid} failed");
    }

    /// Waits up to `timeout` for the exit; `None` if still running.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            let child = self.child.as_mut()?;
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, then the exit status and how long it took (panics after `timeout`).
    pub fn stop(&mut self, timeout: Duration) -> (ExitStatus, Duration) {
        let started = Instant::now();
        self.sigterm();
        match self.wait_exit(timeout) {
            Some(s) => (s, started.elapsed()),
            None => {
                self.sigkill();
                panic!(
                    "forwarder did not exit within {timeout:?} of SIGTERM; logs:\n{}",
                    self.logs().join("\n")
                );
            }
        }
    }

    /// `GET /metrics`.
    pub fn metrics(&self) -> String {
        metrics(self.admin_addr)
    }

    /// The stored offsets (`logferry-forwarder offsets --json`), by glob path: a list of
    /// `(offset, real_path)`. The forwarder must be stopped.
    pub fn offsets(&self) -> Vec<Value> {
        let out = Command::new(forwarder_bin())
            .args(["offsets", "--json"])
            .arg(&self.buffer_dir)
            .output()
            .expect("running logferry-forwarder offsets");
        assert!(
            out.status.success(),
            "offsets failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).expect("JSON offsets line"))
            .collect()
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Container log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// `<time> stdout F <message>`.
    Cri,
    /// `{"log":"<message>\n","stream":"stdout","time":"..."}`.
    Docker,
}

/// How a [`LogWriter`] rotates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rotation {
    /// Never.
    None,
    /// Rename to `<path>.<n>`, then create `<path>` anew (kubelet, docker).
    Rename,
    /// Copy to `<path>.<n>`, then truncate `<path>` (logrotate copytruncate).
    CopyTruncate,
}

/// Writes sequence-numbered log lines whose message is `{"run_id","seq","pad"}` JSON.
#[derive(Debug)]
pub struct LogWriter {
    /// The live file.
    pub path: PathBuf,
    format: LogFormat,
    rotation: Rotation,
    rotate_bytes: u64,
    run_id: String,
    file: File,
    written: u64,
    /// Next seq to write.
    pub next_seq: u64,
    /// Rotations done.
    pub rotations: u32,
    /// Every 'split_every'-th line is long and split into runtime pieces (0: never).
    split_every: u64,
}

/// The piece size runtimes split long lines at.
pub const RUNTIME_SPLIT: usize = 16 * 1024;

impl LogWriter {
    /// A writer creating (appending to) `path`.
    pub fn new(path: &Path, format: LogFormat, run_id: &str) -> LogWriter {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).expect("log dir");
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .expect("open log file");
        LogWriter {
            path: path.to_path_buf(),
            format,
            rotation: Rotation::None,
            rotate_bytes: u64::MAX,
            run_id: run_id.to_string(),
            file,
            written: 0,
            next_seq: 0,
            rotations: 0,
            split_every: 0,
        }
    }

    /// Rotates every `bytes`.
    pub fn rotate(mut self, rotation: Rotation, bytes: u64) -> Self {
        self.rotation = rotation;
        self.rotate_bytes = bytes;
        self
    }

    /// Makes every `n`-th line longer than 16 KiB, split into partial pieces.
    pub fn split_long_lines(mut self, n: u64) -> Self {
        self.split_every = n;
        self
    }

    /// Starts numbering at `seq`.
    pub fn starting_at(mut self, seq: u64) -> Self {
        self.next_seq = seq;
        self
    }

    fn now() -> String {
        chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
    }

    /// Writes `n` records (rotating as configured).
    pub fn write(&mut self, n: u64) {
        let mut out = Vec::with_capacity(64 * 1024);
        for _ in 0..n {
            let seq = self.next_seq;
            self.next_seq += 1;
            let long = self.split_every > 0 && seq % self.split_every == self.split_every - 1;
            let pad = if long {
                "x".repeat(RUNTIME_SPLIT * 2 + 100)
            } else {
                "p".repeat(40)
            };
            let msg = format!(
                r#"{{"run_id":"{}","seq":{seq},"pad":"{pad}"}}"#,
                self.run_id
            );
            let time = Self::now();
            let pieces: Vec<&[u8]> = msg.as_bytes().chunks(RUNTIME_SPLIT).collect();
            let last = pieces.len() - 1;
            for (i, piece) in pieces.iter().enumerate() {
                let piece = std::str::from_utf8(piece).expect("ASCII message");
                match self.format {
                    LogFormat::Cri => {
                        let tag = if i == last { 'F' } else { 'P' };
                        writeln!(out, "{time} stdout {tag} {piece}").expect("write to Vec");
                    }
                    LogFormat::Docker => {
                        let nl = if i == last { "\\n" } else { "" };
                        let escaped = piece.replace('\\', "\\\\").replace('"', "\\\"");
                        writeln!(
                            out,
                            r#"{{"log":"{escaped}{nl}","stream":"stdout","time":"{time}"}}"#
                        )
                        .expect("write to Vec");
                    }
                }
            }
            if out.len() >= 32 * 1024 {
                self.flush(&mut out);
            }
            if self.written + out.len() as u64 >= self.rotate_bytes {
                self.flush(&mut out);
                self.do_rotate();
            }
        }
        self.flush(&mut out);
    }

    fn flush(&mut self, out: &mut Vec<u8>) {
        if out.is_empty() {
            return;
        }
        self.file.write_all(out).expect("write log");
        self.written += out.len() as u64;
        out.clear();
    }

    fn do_rotate(&mut self) {
        if self.rotation == Rotation::None {
            return;
        }
        self.rotations += 1;
        let rotated = PathBuf::from(format!("{}.{}", self.path.display(), self.rotations));
        match self.rotation {
            Rotation::Rename => {
                std::fs::rename(&self.path, &rotated).expect("rename");
                self.file = OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&self.path)
                    .expect("create");
            }
            Rotation::CopyTruncate => {
                std::fs::copy(&self.path, &rotated).expect("copy");
                self.file.set_len(0).expect("truncate");
            }
            Rotation::None => {}
        }
        self.written = 0;
    }
}

/// What the output holds of one run: lines, distinct seqs, seqs in `0..n` missing, and
/// how many records were seen more than once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeqReport {
    /// Records of the run.
    pub received: u64,
    /// Distinct seqs.
    pub unique: u64,
    /// Seqs of `0..n` not seen.
    pub missing: u64,
    /// `received - unique`.
    pub duplicates: u64,
    /// The first missing seqs.
    pub first_missing: Vec<u64>,
}

/// Counts the records of `run_id` (a top-level `run_id`/`seq` in `record`, as merged from the
/// JSON message) in the file output under `out`.
pub fn seq_report(out: &Path, run_id: &str, n: u64) -> SeqReport {
    let mut counts: HashMap<u64, u64> = HashMap::new();
    let mut received = 0;
    for v in read_output(out) {
        let rec = &v["record"];
        if rec["run_id"].as_str() != Some(run_id) {
            continue;
        }
        received += 1;
        if let Some(s) = rec["seq"].as_u64() {
            *counts.entry(s).or_default() += 1;
        }
    }
    let first_missing: Vec<u64> = (0..n)
        .filter(|s| !counts.contains_key(s))
        .take(10)
        .collect();
    let missing = (0..n).filter(|s| !counts.contains_key(s)).count() as u64;
    SeqReport {
        received,
        unique: counts.len() as u64,
        missing,
        duplicates: received - counts.len() as u64,
        first_missing,
    }
}

/// Polls until the output holds every seq of `0..n` of `run_id`; panics with the report after
/// `timeout`.
pub fn wait_for_seqs(out: &Path, run_id: &str, n: u64, timeout: Duration) -> SeqReport {
    let deadline = Instant::now() + timeout;
    loop {
        let r = seq_report(out, run_id, n);
        if r.missing == 0 {
            return r;
        }
        assert!(
            Instant::now() < deadline,
            "run {run_id}: records missing after {timeout:?}: {r:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
