//! The processes a benchmark runs, and what it measures of them.
//!
//! CPU time and memory come from `/proc/<pid>/stat` (utime + stime) and `/proc/<pid>/status`
//! (VmRSS, VmHWM = peak RSS), read by the driver while the process runs, so nothing needs to
//! wrap the process (no `/usr/bin/time`) and a process can be sampled many times (the soak).
//! Every process started here is killed when its handle drops, so an aborted benchmark leaves
//! nothing behind.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use serde_json::Value;

/// Clock ticks per second of `/proc/<pid>/stat` times.
fn clk_tck() -> f64 {
    static TCK: OnceLock<f64> = OnceLock::new();
    *TCK.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// CPU seconds (user + system) a process has used so far.
pub fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    // The command name may hold spaces and parentheses: fields start after the last ')'.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("unexpected /proc/pid/stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); utime and stime are fields 14 and 15.
    let ticks = |i: usize| -> anyhow::Result<f64> {
        fields
            .get(i - 3)
            .and_then(|v| v.parse::<f64>().ok())
            .with_context(|| format!("field {i} of /proc/{pid}/stat"))
    };
    Ok((ticks(14)? + ticks(15)?) / clk_tck())
}

/// `(VmRSS, VmHWM)` in MB (10^6 bytes) of a running process.
pub fn memory_mb(pid: u32) -> anyhow::Result<(f64, f64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let kb = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<f64>().ok())
    };
    match (kb("VmRSS:"), kb("VmHWM:")) {
        (Some(rss), Some(hwm)) => Ok((rss * 1024.0 / 1e6, hwm * 1024.0 / 1e6)),
        _ => bail!("no VmRSS/VmHWM in /proc/{pid}/status"),
    }
}

/// A background process; killed (SIGTERM, then SIGKILL) when dropped.
#[derive(Debug)]
pub struct Proc {
    pub name: String,
    child: Option<Child>,
    /// `(listener, addr)` pairs announced on its output.
    addrs: mpsc::Receiver<(String, SocketAddr)>,
    lines: Arc<Mutex<Vec<String>>>,
}

/// `("forward", addr)` from a JSON `listening` log line of our daemons, or from the sink's
/// `listening on ADDR` line.
fn listening(line: &str) -> Option<(String, SocketAddr)> {
    if let Some(addr) = line.strip_prefix("listening on ") {
        return Some(("forward".into(), addr.trim().parse().ok()?));
    }
    let v: Value = serde_json::from_str(line).ok()?;
    let f = v.get("fields")?;
    if f.get("message")?.as_str()? != "listening" {
        return None;
    }
    Some((
        f.get("listener")?.as_str()?.to_string(),
        f.get("addr")?.as_str()?.parse().ok()?,
    ))
}

impl Proc {
    /// Starts `cmd`; its stdout and stderr go to `log` (and are scanned for listening lines).
    pub fn spawn(name: &str, cmd: &mut Command, log: &Path) -> anyhow::Result<Self> {
        let file =
            std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let file = Arc::new(Mutex::new(file));
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {name}: {cmd:?}"))?;
        let (tx, rx) = mpsc::channel();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let out: Vec<Box<dyn std::io::Read + Send>> = vec![
            Box::new(child.stdout.take().context("stdout")?),
            Box::new(child.stderr.take().context("stderr")?),
        ];
        for r in out {
            let tx = tx.clone();
            let file = file.clone();
            let lines = lines.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(r).lines() {
                    let Ok(line) = line else { break };
                    if let Some(l) = listening(&line) {
                        let _ = tx.send(l);
                    }
                    if let Ok(mut f) = file.lock() {
                        let _ = writeln!(f, "{line}");
                    }
                    if let Ok(mut l) = lines.lock() {
                        if l.len() < 10_000 {
                            l.push(line);
                        }
                    }
                }
            });
        }
        Ok(Self {
            name: name.to_string(),
            child: Some(child),
            addrs: rx,
            lines,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// The last lines it printed (for error messages).
    pub fn tail(&self, n: usize) -> String {
        let l = self.lines.lock().map(|l| l.clone()).unwrap_or_default();
        l[l.len().saturating_sub(n)..].join("\n")
    }

    /// Waits for the listening addresses of every listener in `names`.
    pub fn wait_listening(
        &mut self,
        names: &[&str],
        timeout: Duration,
    ) -> anyhow::Result<Vec<SocketAddr>> {
        let deadline = Instant::now() + timeout;
        let mut found: Vec<Option<SocketAddr>> = vec![None; names.len()];
        while found.iter().any(Option::is_none) {
            if let Some(status) = self.try_wait() {
                std::thread::sleep(Duration::from_millis(200));
                bail!(
                    "{} exited ({status}) before listening:\n{}",
                    self.name,
                    self.tail(30)
                );
            }
            if Instant::now() >= deadline {
                bail!(
                    "{} did not announce {names:?} within {timeout:?}:\n{}",
                    self.name,
                    self.tail(30)
                );
            }
            if let Ok((listener, addr)) = self.addrs.recv_timeout(Duration::from_millis(100)) {
                if let Some(i) = names.iter().position(|n| *n == listener) {
                    found[i] = Some(addr);
                }
            }
        }
        Ok(found.into_iter().flatten().collect())
    }

    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// SIGTERM, then SIGKILL after `grace`; returns the exit status.
    pub fn stop(&mut self, grace: Duration) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        if let Ok(Some(s)) = child.try_wait() {
            return Some(s);
        }
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + grace;
        loop {
            if let Ok(Some(s)) = child.try_wait() {
                return Some(s);
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                return child.wait().ok();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(5));
    }
}

/// Runs `cmd` to completion (killing it after `timeout`), capturing its output.
pub fn run_capture(cmd: &mut Command, timeout: Duration) -> anyhow::Result<Output> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {cmd:?}"))?;
    let mut so = child.stdout.take().context("stdout")?;
    let mut se = child.stderr.take().context("stderr")?;
    let t_out = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = so.read_to_end(&mut b);
        b
    });
    let t_err = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = se.read_to_end(&mut b);
        b
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break s;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{cmd:?} did not finish within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Ok(Output {
        status,
        stdout: t_out.join().unwrap_or_default(),
        stderr: t_err.join().unwrap_or_default(),
    })
}

/// `GET /metrics` over HTTP/1.0.
pub fn metrics(admin: SocketAddr) -> anyhow::Result<String> {
    let mut s = TcpStream::connect_timeout(&admin, Duration::from_secs(5))
        .with_context(|| format!("connecting to {admin}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(s, "GET /metrics HTTP/1.0\r\nHost: {admin}\r\n\r\n")?;
    let mut raw = String::new();
    s.read_to_string(&mut raw)?;
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
        bail!(
            "GET /metrics on {admin}: {}",
            head.lines().next().unwrap_or("")
        );
    }
    Ok(body.to_string())
}

/// Sum of the samples of `name` whose labels include every `label="value"` in `labels`.
pub fn metric_sum(text: &str, name: &str, labels: &[&str]) -> f64 {
    let mut sum = 0.0;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let (n, l) = series.split_once('{').unwrap_or((series, ""));
        if n != name || !labels.iter().all(|w| l.contains(w)) {
            continue;
        }
        sum += value.parse::<f64>().unwrap_or(0.0);
    }
    sum
}

/// A running aggregator and what the benchmark knows of it.
#[derive(Debug)]
pub struct Aggregator {
    pub proc: Proc,
    pub forward: SocketAddr,
    pub admin: SocketAddr,
    pub out_dir: PathBuf,
}

/// Output of a benchmark aggregator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputKind {
    File,
    Null,
}

impl Aggregator {
    /// Starts `bin` with a config under `dir`: Forward and admin on free ports, one buffer with
    /// `fsync = "always"`, every tag routed to one output; `server_extra` goes into `[server]`.
    pub fn start(
        bin: &Path,
        dir: &Path,
        output: OutputKind,
        server_extra: &str,
    ) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let q = |p: &Path| Value::String(p.display().to_string()).to_string();
        let out_dir = dir.join("out");
        let mut config = format!(
            r#"shutdown_timeout = "20s"

[server]
listen = "127.0.0.1:0"
{server_extra}

[admin]
listen = "127.0.0.1:0"

[buffer]
path = {buffer}
chunk_limit_size = "8MiB"
flush_interval = "1s"
total_limit_size = "4GiB"
overflow_action = "block"
fsync = "always"

[[route]]
match = "**"
outputs = ["out"]

[outputs.out]
"#,
            buffer = q(&dir.join("buffer")),
        );
        match output {
            OutputKind::File => config += &format!("type = \"file\"\npath = {}\n", q(&out_dir)),
            OutputKind::Null => config += "type = \"null\"\n",
        }
        let config_path = dir.join("aggregator.toml");
        std::fs::write(&config_path, config)?;
        let mut cmd = Command::new(bin);
        cmd.arg("run")
            .arg("--config")
            .arg(&config_path)
            .args(["--log-format", "json", "--log-level", "info"])
            .env_remove("RUST_LOG")
            .current_dir(dir);
        let mut proc = Proc::spawn("logferry-aggregator", &mut cmd, &dir.join("aggregator.log"))?;
        let addrs = proc.wait_listening(&["forward", "admin"], Duration::from_secs(60))?;
        Ok(Self {
            proc,
            forward: addrs[0],
            admin: addrs[1],
            out_dir,
        })
    }

    pub fn metrics(&self) -> anyhow::Result<String> {
        metrics(self.admin)
    }

    /// Records the output has delivered.
    pub fn delivered(&self) -> anyhow::Result<f64> {
        Ok(metric_sum(
            &self.metrics()?,
            "logferry_output_records_total",
            &["output=\"out\""],
        ))
    }

    /// Records received.
    pub fn received(&self) -> anyhow::Result<f64> {
        Ok(metric_sum(
            &self.metrics()?,
            "logferry_input_records_total",
            &[],
        ))
    }

    /// Polls `what` (every 50 ms) until it reaches `n`; returns when, or fails after `timeout`.
    pub fn wait_for(
        &mut self,
        what: fn(&Self) -> anyhow::Result<f64>,
        n: u64,
        timeout: Duration,
    ) -> anyhow::Result<Instant> {
        let deadline = Instant::now() + timeout;
        let mut last = 0.0;
        loop {
            if let Ok(v) = what(self) {
                last = v;
                if v >= n as f64 {
                    return Ok(Instant::now());
                }
            }
            if let Some(s) = self.proc.try_wait() {
                bail!("the aggregator exited ({s}):\n{}", self.proc.tail(30));
            }
            if Instant::now() >= deadline {
                bail!("only {last} of {n} records after {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_proc_figures() {
        let pid = std::process::id();
        let busy = Instant::now();
        while busy.elapsed() < Duration::from_millis(100) {
            std::hint::black_box(busy.elapsed());
        }
        let cpu = cpu_seconds(pid).unwrap();
        assert!(cpu > 0.0, "{cpu}");
        let (rss, hwm) = memory_mb(pid).unwrap();
        assert!(rss > 0.1 && hwm >= rss, "{rss} {hwm}");
    }

    #[test]
    fn parses_listening_lines_and_metrics() {
        assert_eq!(
            listening("listening on 127.0.0.1:5"),
            Some(("forward".into(), "127.0.0.1:5".parse().unwrap()))
        );
        let l = r#"{"fields":{"message":"listening","listener":"admin","addr":"127.0.0.1:7"}}"#;
        assert_eq!(
            listening(l),
            Some(("admin".into(), "127.0.0.1:7".parse().unwrap()))
        );
        assert_eq!(listening("hello"), None);
        let text = "# x\nlogferry_output_records_total{output=\"out\"} 5\n\
                    logferry_output_records_total{output=\"b\"} 7\nlogferry_input_records_total 3\n";
        assert_eq!(
            metric_sum(text, "logferry_output_records_total", &["output=\"out\""]),
            5.0
        );
        assert_eq!(metric_sum(text, "logferry_output_records_total", &[]), 12.0);
        assert_eq!(metric_sum(text, "logferry_input_records_total", &[]), 3.0);
    }
}
