//! Child processes of a test: [`Background`] collects a process's output while it runs and
//! kills it when dropped, so no process outlives a test; [`run_checked`] runs one to
//! completion under a timeout; [`wait_until`] polls for a condition.

use std::io::Read;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

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

/// Runs `cmd`, printing its output to the test's output; panics unless it succeeds within
/// `timeout` (it is killed then).
pub fn run_checked(cmd: &mut Command, timeout: Duration) -> Output {
    let out = Background::spawn(cmd).wait(timeout);
    assert!(out.status.success(), "{cmd:?} failed: {}", out.status);
    out
}

/// A `kB` field of `/proc/PID/status` (`VmRSS`, `VmHWM`, ...).
pub fn proc_status_kib(pid: u32, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}
