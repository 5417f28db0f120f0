//! Runs `logferry-aggregator` for a test.
//!
//! [`Aggregator`] writes a config generated from [`AggregatorConfig`] into a temporary
//! directory (Forward and admin on port 0), starts the process there, learns the bound ports
//! from its JSON `listening` log lines, forwards its logs to the test's output, and kills it
//! when dropped. The directory holds `aggregator.toml`, `buffer/` and (file output) `out/`.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::build::aggregator_bin;
use crate::http::{http_post, metrics};
use crate::process::proc_status_kib;

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
            buffer = toml_path(&dir.join("buffer")),
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
            s += &format!("path = {}\n", toml_path(&dir.join("out")));
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
                if let Some(l) = listening_line(&line) {
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
    let v: Value = serde_json::from_str(line).ok()?;
    let fields = v.get("fields")?;
    if fields.get("message")?.as_str()? != "listening" {
        return None;
    }
    let listener = fields.get("listener")?.as_str()?.to_string();
    let addr = fields.get("addr")?.as_str()?.parse().ok()?;
    Some((listener, addr))
}

/// A TOML string literal of a path.
pub fn toml_path(p: &Path) -> String {
    Value::String(p.display().to_string()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_listening_lines() {
        let l = r#"{"timestamp":"2026-01-01T00:00:00Z","level":"INFO","fields":{"message":"listening","listener":"forward","addr":"127.0.0.1:41234"},"target":"logferry_aggregator::app"}"#;
        assert_eq!(
            listening_line(l),
            Some(("forward".to_string(), "127.0.0.1:41234".parse().unwrap()))
        );
        assert_eq!(listening_line("not json"), None);
        assert_eq!(
            listening_line(r#"{"fields":{"message":"started","addr":"127.0.0.1:1"}}"#),
            None
        );
    }

    #[test]
    fn config_is_toml_with_escaped_paths() {
        let c = AggregatorConfig::default().to_toml(Path::new("/tmp/a \"b\""));
        assert!(c.contains(r#"path = "/tmp/a \"b\"/buffer""#), "{c}");
        assert!(c.contains(r#"path = "/tmp/a \"b\"/out""#), "{c}");
    }
}
