//! Harness for logferry's whole-system tests.
//!
//! - [`binary`] finds a workspace binary (`target/<profile>/<name>`), building it with cargo first
//!   (once per test process) so a test never runs a stale build.
//! - [`Aggregator`] runs `logferry-aggregator` in a temporary directory with a generated config
//!   (Forward and admin on port 0), learns the bound ports from its JSON log lines, forwards its
//!   logs to the test's output, and kills it when dropped, so no process outlives a test.
//! - [`wait_for_records`], [`wait_for_lines`] and [`read_output`] poll the file output;
//!   [`metrics`] fetches `/metrics` over a plain TCP HTTP/1.0 request.
//! - [`external_tool`] decides whether a test that needs Python or Node runs, skips or fails.

use std::collections::{BTreeSet, HashSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde_json::Value;

pub mod forwarder;
pub mod services;

/// The workspace root (the parent of this crate).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// `target/<profile>` of the running test binary (`target/<profile>/deps/<test>-<hash>`).
pub fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let mut dir = exe.parent().map(Path::to_path_buf);
    if dir
        .as_ref()
        .and_then(|d| d.file_name())
        .is_some_and(|n| n == "deps")
    {
        dir = dir.and_then(|d| d.parent().map(Path::to_path_buf));
    }
    dir.unwrap_or_else(|| workspace_root().join("target").join("debug"))
}

/// Binaries already built by this process.
fn built() -> &'static Mutex<HashSet<String>> {
    static BUILT: OnceLock<Mutex<HashSet<String>>> = OnceLock::new();
    BUILT.get_or_init(|| Mutex::new(HashSet::new()))
}

/// Path of the workspace binary `name` of `package`, built first if needed.
///
/// Cargo is run once per binary and test process (it is a no-op when up to date, and it rebuilds
/// a stale binary); set `LOGFERRY_E2E_NO_BUILD=1` to use whatever is in `target/` as is. The lock
/// keeps parallel tests of one process from building at once; cargo's own lock handles several
/// processes.
pub fn binary(package: &str, name: &str) -> PathBuf {
    let dir = profile_dir();
    let path = dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    let mut done = built().lock().unwrap_or_else(|e| e.into_inner());
    if done.contains(name) {
        return path;
    }
    let no_build = std::env::var_os("LOGFERRY_E2E_NO_BUILD").is_some_and(|v| v != "0");
    if !(no_build && path.exists()) {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.arg("build")
            .arg("--manifest-path")
            .arg(workspace_root().join("Cargo.toml"))
            .args(["-p", package, "--bin", name]);
        let profile = dir.file_name().and_then(|n| n.to_str()).unwrap_or("debug");
        match profile {
            "debug" => {}
            "release" => {
                cmd.arg("--release");
            }
            other => {
                cmd.args(["--profile", other]);
            }
        }
        if let Some(target_dir) = dir.parent() {
            cmd.arg("--target-dir").arg(target_dir);
        }
        eprintln!("e2e: building {name}: {cmd:?}");
        let out = cmd
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
        assert!(
            out.status.success(),
            "building {name} failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert!(path.exists(), "{} does not exist", path.display());
    done.insert(name.to_string());
    path
}

/// `logferry-aggregator`.
pub fn aggregator_bin() -> PathBuf {
    binary("logferry-aggregator", "logferry-aggregator")
}

/// `logferry-loadtest`.
pub fn loadtest_bin() -> PathBuf {
    binary("logferry-loadtest", "logferry-loadtest")
}

/// Runs `logferry-loadtest` with `args`, printing its output to the test's output.
pub fn run_loadtest<I, S>(args: I) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let mut cmd = Command::new(loadtest_bin());
    cmd.args(args).stdin(Stdio::null());
    eprintln!("e2e: running {cmd:?}");
    let out = cmd.output().expect("running logferry-loadtest");
    eprintln!(
        "e2e: loadtest exited with {}\n--- stdout\n{}--- stderr\n{}---",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A child process whose output is collected in the background; killed when dropped.
#[derive(Debug)]
pub struct Background {
    name: String,
    child: Option<Child>,
    stdout: Option<std::thread::JoinHandle<Vec<u8>>>,
    stderr: Option<std::thread::JoinHandle<Vec<u8>>>,
}

impl Background {
    /// Spawns `cmd` with stdout and stderr piped.
    pub fn spawn(cmd: &mut Command) -> Self {
        eprintln!("e2e: starting {cmd:?}");
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
        let collect = |mut r: Box<dyn Read + Send>| {
            std::thread::spawn(move || {
                let mut b = Vec::new();
                let _ = r.read_to_end(&mut b);
                b
            })
        };
        let stdout = collect(Box::new(child.stdout.take().expect("stdout")));
        let stderr = collect(Box::new(child.stderr.take().expect("stderr")));
        Self {
            name: format!("{:?}", cmd.get_program()),
            child: Some(child),
            stdout: Some(stdout),
            stderr: Some(stderr),
        }
    }

    /// Waits up to `timeout` for the exit (killing the process then, and panicking); prints and
    /// returns its output. The exit status is not checked.
    pub fn wait(mut self, timeout: Duration) -> Output {
        let mut child = self.child.take().expect("not waited yet");
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(s) = child.try_wait().expect("try_wait") {
                break Some(s);
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let stdout = self
            .stdout
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_default();
        let stderr = self
            .stderr
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_default();
        eprintln!(
            "e2e: {} exited with {status:?}\n--- stdout\n{}--- stderr\n{}---",
            self.name,
            String::from_utf8_lossy(&stdout),
            String::from_utf8_lossy(&stderr)
        );
        let Some(status) = status else {
            panic!("{} did not finish within {timeout:?}", self.name);
        };
        Output {
            status,
            stdout,
            stderr,
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Starts `logferry-loadtest` with `args` in the background.
pub fn spawn_loadtest<I, S>(args: I) -> Background
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    Background::spawn(Command::new(loadtest_bin()).args(args))
}

/// Polls `f` every 50 ms until it returns `Some`; panics with `what` after `timeout`.
pub fn wait_until<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Decides whether a test that needs an external tool runs.
///
/// Returns the variable's value when set. When unset: panics if `CI` is set (CI must run every
/// test), otherwise prints why the test is skipped and returns `None`.
pub fn external_tool(var: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(v) if !v.is_empty() => Some(v),
        _ => {
            if std::env::var_os("CI").is_some() {
                panic!("{var} is not set but CI is: run the tests through scripts/test.sh");
            }
            eprintln!("skipping: {var} not set (run scripts/test.sh)");
            None
        }
    }
}

/// Settings of a generated aggregator config. Paths are filled in by [`Aggregator`].
#[derive(Debug, Clone)]
pub struct AggregatorConfig {
    pub flush_interval: String,
    pub chunk_limit_size: String,
    pub fsync: String,
    pub overflow_action: String,
    pub total_limit_size: String,
    pub shutdown_timeout: String,
    /// `[server] listen` (default port 0: a free port, learnt from the log).
    pub forward_listen: String,
    /// `"file"` (under the temp dir) or `"null"`.
    pub output_type: String,
    /// Extra lines of the `[server]` table.
    pub server_extra: String,
    /// When non-empty, replaces the whole `[server]` table (and so `forward_listen` and
    /// `server_extra`): e.g. several `[[server]]` tables.
    pub servers: String,
    /// Extra lines of the `[buffer]` table.
    pub buffer_extra: String,
    /// Appended verbatim to the generated config (it lands in `[outputs.out]`).
    pub extra_toml: String,
    /// The outputs of the catch-all route (default `["out"]`); more outputs are defined in
    /// `extra_toml`.
    pub route_outputs: Vec<String>,
}

impl Default for AggregatorConfig {
    fn default() -> Self {
        Self {
            flush_interval: "200ms".into(),
            chunk_limit_size: "8MiB".into(),
            fsync: "always".into(),
            overflow_action: "block".into(),
            total_limit_size: "1GiB".into(),
            shutdown_timeout: "25s".into(),
            forward_listen: "127.0.0.1:0".into(),
            output_type: "file".into(),
            server_extra: String::new(),
            servers: String::new(),
            buffer_extra: String::new(),
            extra_toml: String::new(),
            route_outputs: vec!["out".into()],
        }
    }
}

impl AggregatorConfig {
    /// The TOML text for an aggregator rooted at `dir`.
    pub fn to_toml(&self, dir: &Path) -> String {
        let toml_str = |p: &Path| Value::String(p.display().to_string()).to_string();
        let mut s = format!(
            r#"shutdown_timeout = "{shutdown}"

[server]
listen = "{listen}"
{server_extra}

[admin]
listen = "127.0.0.1:0"

[buffer]
path = {buffer}
chunk_limit_size = "{chunk}"
flush_interval = "{flush}"
total_limit_size = "{total}"
overflow_action = "{overflow}"
fsync = "{fsync}"
{buffer_extra}

[[route]]
match = "**"
outputs = {route_outputs}

[outputs.out]
type = "{otype}"
"#,
            shutdown = self.shutdown_timeout,
            listen = self.forward_listen,
            server_extra = self.server_extra,
            buffer = toml_str(&dir.join("buffer")),
            chunk = self.chunk_limit_size,
            flush = self.flush_interval,
            total = self.total_limit_size,
            overflow = self.overflow_action,
            fsync = self.fsync,
            buffer_extra = self.buffer_extra,
            otype = self.output_type,
            route_outputs = Value::from(self.route_outputs.clone()),
        );
        if !self.servers.is_empty() {
            let single = format!(
                "[server]\nlisten = \"{}\"\n{}\n",
                self.forward_listen, self.server_extra
            );
            s = s.replacen(&single, &self.servers, 1);
        }
        if self.output_type == "file" {
            s += &format!("path = {}\n", toml_str(&dir.join("out")));
        }
        s += &self.extra_toml;
        s
    }
}

/// A running `logferry-aggregator`, killed when dropped.
#[derive(Debug)]
pub struct Aggregator {
    child: Option<Child>,
    /// Holds the buffer, the output and the config; removed on drop.
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
    /// The file output's directory.
    pub out_dir: PathBuf,
    /// The buffer root.
    pub buffer_dir: PathBuf,
    pub forward_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    config: AggregatorConfig,
    logs: Arc<Mutex<Vec<String>>>,
}

/// How long an aggregator may take to start listening.
const START_TIMEOUT: Duration = Duration::from_secs(60);

impl Aggregator {
    /// Starts an aggregator with the default test config (file output, 200ms flush).
    pub fn start() -> Self {
        Self::start_with(AggregatorConfig::default())
    }

    pub fn start_with(config: AggregatorConfig) -> Self {
        let bin = aggregator_bin();
        let dir = tempfile::Builder::new()
            .prefix("logferry-e2e-")
            .tempdir()
            .expect("temp dir");
        let config_path = dir.path().join("aggregator.toml");
        std::fs::write(&config_path, config.to_toml(dir.path())).expect("writing the config");
        let mut agg = Self {
            config,
            child: None,
            out_dir: dir.path().join("out"),
            buffer_dir: dir.path().join("buffer"),
            config_path,
            dir,
            forward_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            admin_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            logs: Arc::new(Mutex::new(Vec::new())),
        };
        agg.spawn(&bin);
        agg
    }

    /// Starts the process again on the same directory and config (after a kill or a graceful
    /// stop; a running process is killed first). The ports change.
    pub fn restart(&mut self) {
        self.restart_listening_on(&self.config.forward_listen.clone());
    }

    /// Like [`Aggregator::restart`], but Forward listens on the port it had, so clients that
    /// reconnect to the same address find it again.
    pub fn restart_same_port(&mut self) {
        self.restart_listening_on(&self.forward_addr.to_string());
    }

    fn restart_listening_on(&mut self, listen: &str) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let config = AggregatorConfig {
            forward_listen: listen.to_string(),
            ..self.config.clone()
        };
        std::fs::write(&self.config_path, config.to_toml(self.dir.path()))
            .expect("writing the config");
        self.spawn(&aggregator_bin());
    }

    fn spawn(&mut self, bin: &Path) {
        let mut cmd = Command::new(bin);
        cmd.arg("run")
            .arg("--config")
            .arg(&self.config_path)
            .args(["--log-format", "json", "--log-level", "info"])
            .current_dir(self.dir.path())
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
        let pid = child.id();
        eprintln!("e2e: started aggregator pid {pid}: {cmd:?}");
        let (tx, rx) = mpsc::channel::<(String, SocketAddr)>();
        let stderr = child.stderr.take().expect("piped stderr");
        let logs = self.logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                eprintln!("[aggregator {pid}] {line}");
                if let Some(l) = listening(&line) {
                    let _ = tx.send(l);
                }
                logs.lock().unwrap_or_else(|e| e.into_inner()).push(line);
            }
        });
        let stdout = child.stdout.take().expect("piped stdout");
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                eprintln!("[aggregator {pid} stdout] {line}");
            }
        });
        self.child = Some(child);

        let deadline = Instant::now() + START_TIMEOUT;
        let (mut forward, mut admin) = (None, None);
        while forward.is_none() || admin.is_none() {
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok((listener, addr)) if listener == "forward" => forward = Some(addr),
                Ok((listener, addr)) if listener == "admin" => admin = Some(addr),
                Ok(_) => {}
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = self.wait_exit(Duration::from_secs(5));
                    panic!(
                        "aggregator exited before listening ({status:?}); logs:\n{}",
                        self.logs().join("\n")
                    );
                }
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                // Give the reader a moment to forward the last lines.
                std::thread::sleep(Duration::from_millis(200));
                panic!(
                    "aggregator exited before listening ({status}); logs:\n{}",
                    self.logs().join("\n")
                );
            }
            assert!(
                Instant::now() < deadline,
                "aggregator did not log both listening addresses within {START_TIMEOUT:?}; logs:\n{}",
                self.logs().join("\n")
            );
        }
        self.forward_addr = forward.expect("forward address");
        self.admin_addr = admin.expect("admin address");
        eprintln!(
            "e2e: aggregator pid {pid} forward {} admin {}",
            self.forward_addr, self.admin_addr
        );
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Every stderr line so far (JSON log lines).
    pub fn logs(&self) -> Vec<String> {
        self.logs.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Kills the process with SIGKILL and reaps it.
    pub fn sigkill(&mut self) -> Option<ExitStatus> {
        let mut c = self.child.take()?;
        let _ = c.kill();
        let status = c.wait().ok();
        self.child = Some(c);
        status
    }

    /// Alias of [`Aggregator::sigkill`].
    pub fn kill(&mut self) -> Option<ExitStatus> {
        self.sigkill()
    }

    /// Sends SIGTERM (graceful shutdown) without waiting.
    pub fn sigterm(&self) {
        let Some(pid) = self.pid() else { return };
        let status = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .expect("running kill");
        assert!(status.success(), "kill -TERM {pid} failed: {status}");
    }

    /// Waits up to `timeout` for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, then the exit status (SIGKILL after `timeout`, and a panic).
    pub fn stop(&mut self, timeout: Duration) -> ExitStatus {
        self.sigterm();
        match self.wait_exit(timeout) {
            Some(s) => s,
            None => {
                self.sigkill();
                panic!(
                    "aggregator did not exit within {timeout:?} of SIGTERM; logs:\n{}",
                    self.logs().join("\n")
                );
            }
        }
    }

    /// `GET /metrics` of this aggregator.
    pub fn metrics(&self) -> String {
        metrics(self.admin_addr)
    }

    /// The Forward address as `HOST:PORT` text.
    pub fn target(&self) -> String {
        self.forward_addr.to_string()
    }
}

impl Drop for Aggregator {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            if let Ok(None) = c.try_wait() {
                let _ = c.kill();
            }
            let _ = c.wait();
        }
    }
}

/// `(listener, addr)` from a `listening` JSON log line of either daemon.
pub fn listening_line(line: &str) -> Option<(String, SocketAddr)> {
    listening(line)
}

/// `("forward", addr)` from a `listening` JSON log line.
fn listening(line: &str) -> Option<(String, SocketAddr)> {
    let v: Value = serde_json::from_str(line).ok()?;
    let fields = v.get("fields")?;
    if fields.get("message")?.as_str()? != "listening" {
        return None;
    }
    let listener = fields.get("listener")?.as_str()?.to_string();
    let addr = fields.get("addr")?.as_str()?.parse().ok()?;
    Some((listener, addr))
}

/// `GET path` over HTTP/1.0; returns the status code and the body.
pub fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "GET {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("bad reply: {head}"),
            )
        })?;
    Ok((status, body.to_string()))
}

/// `GET /metrics` (Prometheus text); panics unless 200.
pub fn metrics(admin: SocketAddr) -> String {
    let (status, body) =
        http_get(admin, "/metrics").unwrap_or_else(|e| panic!("GET /metrics on {admin}: {e}"));
    assert_eq!(status, 200, "GET /metrics: {body}");
    body
}

/// Sum of every sample of metric `name` (all label sets); `None` if it has no sample.
/// `name` may carry labels (`logferry_dropped_records_total{reason="overflow"}`) to pick
/// samples whose label set contains them.
pub fn metric_value(text: &str, name: &str) -> Option<f64> {
    let (base, want) = match name.split_once('{') {
        Some((b, rest)) => (b, rest.trim_end_matches('}')),
        None => (name, ""),
    };
    let want: Vec<&str> = want.split(',').filter(|s| !s.is_empty()).collect();
    let mut sum = None;
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let (sname, labels) = match series.split_once('{') {
            Some((n, l)) => (n, l.trim_end_matches('}')),
            None => (series, ""),
        };
        if sname != base {
            continue;
        }
        let have: Vec<&str> = labels.split(',').collect();
        if !want.iter().all(|w| have.contains(w)) {
            continue;
        }
        if let Ok(v) = value.parse::<f64>() {
            *sum.get_or_insert(0.0) += v;
        }
    }
    sum
}

/// Every complete JSON line of every `*.jsonl` under `dir` (recursively), sorted by file.
/// A last line without its newline is still being written and is left out; any other line that
/// is not JSON panics (a torn line in the output is a bug).
pub fn read_output(dir: &Path) -> Vec<Value> {
    let mut files = Vec::new();
    collect_jsonl(dir, &mut files);
    files.sort();
    let mut out = Vec::new();
    for f in files {
        let Ok(text) = std::fs::read(&f) else {
            continue;
        };
        let complete = match text.iter().rposition(|&b| b == b'\n') {
            Some(i) => &text[..=i],
            None => &[][..],
        };
        for (n, line) in complete.split(|&b| b == b'\n').enumerate() {
            if line.is_empty() {
                continue;
            }
            match serde_json::from_slice::<Value>(line) {
                Ok(v) => out.push(v),
                Err(e) => panic!(
                    "{}:{}: not JSON ({e}): {}",
                    f.display(),
                    n + 1,
                    String::from_utf8_lossy(line)
                ),
            }
        }
    }
    out
}

fn collect_jsonl(dir: &Path, files: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            collect_jsonl(&p, files);
        } else if p.extension().is_some_and(|x| x == "jsonl") {
            files.push(p);
        }
    }
}

/// The `*.jsonl` file names under `dir`.
pub fn output_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    collect_jsonl(dir, &mut files);
    files.sort();
    files
}

/// Polls the output until at least `n` lines satisfy `pred`; returns them. Panics after `timeout`.
pub fn wait_for_lines(
    dir: &Path,
    n: usize,
    timeout: Duration,
    pred: impl Fn(&Value) -> bool,
) -> Vec<Value> {
    let deadline = Instant::now() + timeout;
    loop {
        let lines: Vec<Value> = read_output(dir).into_iter().filter(|v| pred(v)).collect();
        if lines.len() >= n {
            return lines;
        }
        if Instant::now() >= deadline {
            panic!(
                "only {} of {n} expected lines appeared under {} within {timeout:?}; files: {:?}",
                lines.len(),
                dir.display(),
                output_files(dir)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// What the output holds of one run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeqCount {
    /// Lines of the run.
    pub received: u64,
    /// Distinct seqs.
    pub unique: u64,
    /// Seqs in `0..n` not seen.
    pub missing: u64,
}

/// Polls the output until records with every seq in `0..n` of `run_id` are there. Panics after
/// `timeout` with what is missing.
pub fn wait_for_records(dir: &Path, run_id: &str, n: u64, timeout: Duration) -> SeqCount {
    let deadline = Instant::now() + timeout;
    loop {
        let mut seen = BTreeSet::new();
        let mut received = 0u64;
        for v in read_output(dir) {
            let rec = &v["record"];
            if rec["run_id"].as_str() != Some(run_id) {
                continue;
            }
            received += 1;
            if let Some(s) = rec["seq"].as_u64() {
                seen.insert(s);
            }
        }
        let missing = (0..n).filter(|s| !seen.contains(s)).count() as u64;
        let count = SeqCount {
            received,
            unique: seen.len() as u64,
            missing,
        };
        if missing == 0 {
            return count;
        }
        if Instant::now() >= deadline {
            let first: Vec<u64> = (0..n).filter(|s| !seen.contains(s)).take(10).collect();
            panic!(
                "run {run_id}: {count:?} after {timeout:?}; first missing seqs {first:?}; files: {:?}",
                output_files(dir)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Unix nanoseconds of an RFC 3339 time (`2021-01-01T00:00:00.123456789Z`).
pub fn unix_nanos(rfc3339: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(rfc3339)
        .unwrap_or_else(|e| panic!("time {rfc3339:?}: {e}"))
        .timestamp_nanos_opt()
        .expect("time in range")
}

/// A unique-enough id for one test's records.
pub fn unique_id(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{prefix}-{}-{:x}", std::process::id(), nanos & 0xffff_ffff)
}

/// Runs `cmd`, printing its output to the test's output; panics unless it succeeds within
/// `timeout` (it is killed then).
pub fn run_checked(cmd: &mut Command, timeout: Duration) -> Output {
    eprintln!("e2e: running {cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
    let mut stdout = child.stdout.take().expect("stdout");
    let mut stderr = child.stderr.take().expect("stderr");
    let out_t = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = stdout.read_to_end(&mut b);
        b
    });
    let err_t = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = stderr.read_to_end(&mut b);
        b
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(s) = child.try_wait().expect("try_wait") {
            break Some(s);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stdout = out_t.join().unwrap_or_default();
    let stderr = err_t.join().unwrap_or_default();
    eprintln!(
        "--- stdout\n{}--- stderr\n{}---",
        String::from_utf8_lossy(&stdout),
        String::from_utf8_lossy(&stderr)
    );
    let Some(status) = status else {
        panic!("{cmd:?} did not finish within {timeout:?}");
    };
    assert!(status.success(), "{cmd:?} failed: {status}");
    Output {
        status,
        stdout,
        stderr,
    }
}

/// Fixture scripts (`tests/fixtures/NAME`).
pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name)
}

/// Checks that every expected record (`{"tag", "time_ns", "record"}`, as printed by the fixture
/// clients; `time_ns` a number or a string, or null with `after_ns` for "sent at about now")
/// appears exactly once in `lines` (the file output) with that tag, that time to the nanosecond
/// and an identical record. Panics listing every difference.
pub fn assert_expected_records(expected: &[Value], lines: &[Value]) {
    let mut problems = Vec::new();
    for e in expected {
        let matches: Vec<&Value> = lines
            .iter()
            .filter(|l| l["record"] == e["record"] && l["tag"] == e["tag"])
            .collect();
        if matches.len() != 1 {
            let similar: Vec<&Value> = lines
                .iter()
                .filter(|l| {
                    l["record"]["i"] == e["record"]["i"]
                        && l["record"]["mode"] == e["record"]["mode"]
                })
                .collect();
            problems.push(format!(
                "expected once, found {} times: {e}\n  lines with the same i/mode: {similar:?}",
                matches.len()
            ));
            continue;
        }
        let line = matches[0];
        let Some(time) = line["time"].as_str() else {
            problems.push(format!("no time string in {line}"));
            continue;
        };
        let got = unix_nanos(time);
        let want = match &e["time_ns"] {
            Value::Number(n) => n.as_i64(),
            Value::String(s) => s.parse().ok(),
            _ => None,
        };
        match want {
            Some(want) if got != want => problems.push(format!(
                "time of {}: got {time} ({got} ns), sent {want} ns",
                e["record"]
            )),
            Some(_) => {}
            None => {
                let after = e["after_ns"].as_i64().unwrap_or(0);
                let now = unix_nanos(&chrono::Utc::now().to_rfc3339());
                if got < after - 1_000_000_000 || got > now {
                    problems.push(format!(
                        "time of {}: got {time}, expected between {after} ns and now",
                        e["record"]
                    ));
                }
            }
        }
    }
    assert!(
        problems.is_empty(),
        "{} of {} records differ:\n{}",
        problems.len(),
        expected.len(),
        problems.join("\n")
    );
}

// --- Security tests: certificates, several listeners, reload, memory ---------------------------

/// A throwaway certificate authority for TLS tests: a CA certificate and the certificates it
/// signs, as PEM files in a temporary directory (removed on drop).
pub struct TestPki {
    dir: tempfile::TempDir,
    issuer: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
}

impl std::fmt::Debug for TestPki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestPki")
            .field("dir", &self.dir.path())
            .finish()
    }
}

impl TestPki {
    /// A new CA named `name` (its certificate is [`TestPki::ca`]).
    pub fn new(name: &str) -> Self {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let key = rcgen::KeyPair::generate().expect("CA key");
        let issuer = rcgen::CertifiedIssuer::self_signed(params, key).expect("CA certificate");
        let dir = tempfile::Builder::new()
            .prefix("logferry-pki-")
            .tempdir()
            .expect("temp dir");
        std::fs::write(dir.path().join("ca.crt"), issuer.pem()).expect("writing ca.crt");
        Self { dir, issuer }
    }

    /// The CA certificate (PEM).
    pub fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.crt")
    }

    /// Issues a certificate for `names` (DNS names or IP addresses), written as
    /// `<stem>.crt` and `<stem>.key`; returns their paths.
    pub fn issue(&self, stem: &str, names: &[&str]) -> (PathBuf, PathBuf) {
        let key = rcgen::KeyPair::generate().expect("key");
        let params =
            rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .expect("certificate params");
        let issuer: &rcgen::Issuer<'_, rcgen::KeyPair> = &self.issuer;
        let cert = params.signed_by(&key, issuer).expect("signing");
        let cert_path = self.dir.path().join(format!("{stem}.crt"));
        let key_path = self.dir.path().join(format!("{stem}.key"));
        std::fs::write(&cert_path, cert.pem()).expect("writing certificate");
        std::fs::write(&key_path, key.serialize_pem()).expect("writing key");
        (cert_path, key_path)
    }
}

/// A TOML string literal of a path.
pub fn toml_path(p: &Path) -> String {
    Value::String(p.display().to_string()).to_string()
}

impl Aggregator {
    /// Every Forward listener as `(name, address)`, in the order they logged `listening`.
    pub fn forward_listeners(&self) -> Vec<(String, SocketAddr)> {
        self.logs()
            .iter()
            .filter_map(|line| {
                let v: Value = serde_json::from_str(line).ok()?;
                let f = v.get("fields")?;
                if f.get("message")?.as_str()? != "listening"
                    || f.get("listener")?.as_str()? != "forward"
                {
                    return None;
                }
                let name = f.get("name").and_then(Value::as_str).unwrap_or("forward");
                Some((name.to_string(), f.get("addr")?.as_str()?.parse().ok()?))
            })
            .collect()
    }

    /// `POST /reload`: the status code and the body.
    pub fn reload_config(&self) -> (u16, String) {
        http_post(self.admin_addr, "/reload").unwrap_or_else(|e| panic!("POST /reload: {e}"))
    }

    /// Sends SIGHUP (reload) without waiting.
    pub fn sighup(&self) {
        let Some(pid) = self.pid() else { return };
        let status = Command::new("kill")
            .args(["-HUP", &pid.to_string()])
            .status()
            .expect("running kill");
        assert!(status.success(), "kill -HUP {pid} failed: {status}");
    }

    /// The process's peak resident memory so far (`VmHWM`), in KiB.
    pub fn peak_rss_kib(&self) -> Option<u64> {
        proc_status_kib(self.pid()?, "VmHWM")
    }
}

/// A `kB` field of `/proc/PID/status` (`VmRSS`, `VmHWM`, ...).
pub fn proc_status_kib(pid: u32, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// `POST path` with an empty body over HTTP/1.0; returns the status code and the body.
pub fn http_post(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(
        s,
        "POST {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("bad reply: {head}"),
            )
        })?;
    Ok((status, body.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_listening_lines() {
        let l = r#"{"timestamp":"2026-01-01T00:00:00Z","level":"INFO","fields":{"message":"listening","listener":"forward","addr":"127.0.0.1:41234"},"target":"logferry_aggregator::app"}"#;
        assert_eq!(
            listening(l),
            Some(("forward".to_string(), "127.0.0.1:41234".parse().unwrap()))
        );
        assert_eq!(listening("not json"), None);
        assert_eq!(
            listening(r#"{"fields":{"message":"started","addr":"127.0.0.1:1"}}"#),
            None
        );
    }

    #[test]
    fn metric_values() {
        let text = "# HELP x\n# TYPE x counter\nlogferry_input_records_total 42\n\
            logferry_dropped_records_total{reason=\"overflow\"} 3\n\
            logferry_dropped_records_total{reason=\"invalid\"} 4\n\
            logferry_input_records_total_x 1\n";
        assert_eq!(
            metric_value(text, "logferry_input_records_total"),
            Some(42.0)
        );
        assert_eq!(
            metric_value(text, "logferry_dropped_records_total"),
            Some(7.0)
        );
        assert_eq!(
            metric_value(text, "logferry_dropped_records_total{reason=\"invalid\"}"),
            Some(4.0)
        );
        assert_eq!(metric_value(text, "logferry_forward_acks_total"), None);
    }

    #[test]
    fn config_is_toml_with_escaped_paths() {
        let c = AggregatorConfig::default().to_toml(Path::new("/tmp/a \"b\""));
        assert!(c.contains(r#"path = "/tmp/a \"b\"/buffer""#), "{c}");
        assert!(c.contains(r#"path = "/tmp/a \"b\"/out""#), "{c}");
    }

    #[test]
    fn reads_output_skipping_the_unfinished_line() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("sub")).unwrap();
        std::fs::write(
            d.path().join("a.2021010100.jsonl"),
            "{\"a\":1}\n{\"a\":2}\n{\"a\"",
        )
        .unwrap();
        std::fs::write(d.path().join("sub/b.2021010100.jsonl"), "{\"b\":1}\n").unwrap();
        std::fs::write(d.path().join("c.txt"), "{\"c\":1}\n").unwrap();
        let lines = read_output(d.path());
        assert_eq!(lines.len(), 3);
    }

    #[test]
    fn rfc3339_nanos() {
        assert_eq!(
            unix_nanos("2021-01-01T00:00:00.123456789Z"),
            1_609_459_200_123_456_789
        );
    }
}
