//! `logferry-loadtest` driven from tests: [`Load`] builds one of its command lines (`forward`,
//! `verify` or `pods`) from typed options, then runs it to completion ([`Load::run`]) or starts
//! it in the background ([`Load::spawn`]). Both print the command and its output to the test's
//! output; neither checks the exit status (tests assert on it, and on the `--json` report).

use std::ffi::OsString;
use std::fmt::Display;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use crate::aggregator::Aggregator;
use crate::build::loadtest_bin;
use crate::process::Background;

/// Something `forward --target` can point at.
pub trait Target {
    /// `HOST:PORT` of a Forward listener.
    fn forward_target(&self) -> String;
}

impl Target for Aggregator {
    fn forward_target(&self) -> String {
        self.target()
    }
}

impl Target for str {
    fn forward_target(&self) -> String {
        self.to_string()
    }
}

impl Target for String {
    fn forward_target(&self) -> String {
        self.clone()
    }
}

impl Target for SocketAddr {
    fn forward_target(&self) -> String {
        self.to_string()
    }
}

/// A `logferry-loadtest` command line.
#[derive(Debug, Clone)]
#[must_use = "a Load does nothing until run or spawned"]
pub struct Load {
    args: Vec<OsString>,
}

impl Load {
    /// `forward --target TARGET`: sends generated records over Forward.
    pub fn forward(target: &(impl Target + ?Sized)) -> Self {
        Self::command("forward").option("--target", target.forward_target())
    }

    /// The run most tests send: `n` records of `run_id`, each request acked, the report as JSON
    /// and no progress lines (`forward --records N --ack --run-id RUN_ID --json --quiet`).
    pub fn acked(target: &(impl Target + ?Sized), n: u64, run_id: &str) -> Self {
        Self::forward(target)
            .records(n)
            .ack()
            .run_id(run_id)
            .json()
            .quiet()
    }

    /// `verify --run-id RUN_ID`: checks what an output holds of a run (the file output with
    /// [`Load::output_dir`], Elasticsearch with [`Load::es`]).
    pub fn verify(run_id: &str) -> Self {
        Self::command("verify").run_id(run_id)
    }

    /// `pods --dir DIR`: writes container log files as a kubelet would.
    pub fn pods(dir: &Path) -> Self {
        Self::command("pods").option("--dir", dir.display())
    }

    fn command(name: &str) -> Self {
        Load {
            args: vec![name.into()],
        }
    }

    fn flag(mut self, name: &str) -> Self {
        self.args.push(name.into());
        self
    }

    fn option(mut self, name: &str, value: impl Display) -> Self {
        self.args.push(name.into());
        self.args.push(value.to_string().into());
        self
    }

    /// `--run-id`: the `run_id` field of every record.
    pub fn run_id(self, run_id: &str) -> Self {
        self.option("--run-id", run_id)
    }

    /// `--json`: print the report as JSON on stdout.
    pub fn json(self) -> Self {
        self.flag("--json")
    }

    /// `--quiet`: no progress lines.
    pub fn quiet(self) -> Self {
        self.flag("--quiet")
    }

    /// `--no-timeline`: leave the per-second timeline out of the report.
    pub fn no_timeline(self) -> Self {
        self.flag("--no-timeline")
    }

    /// `--records`: how many records to send (or write).
    pub fn records(self, n: u64) -> Self {
        self.option("--records", n)
    }

    /// `--duration`: how long to send (instead of `--records`).
    pub fn duration(self, d: &str) -> Self {
        self.option("--duration", d)
    }

    /// `--rate`: records per second.
    pub fn rate(self, per_second: u64) -> Self {
        self.option("--rate", per_second)
    }

    /// `--ramp FROM:TO:OVER`: a rate that grows linearly.
    pub fn ramp(self, ramp: &str) -> Self {
        self.option("--ramp", ramp)
    }

    /// `--shape`: how the rate varies within each second.
    pub fn shape(self, shape: &str) -> Self {
        self.option("--shape", shape)
    }

    /// `--batch`: records per Forward request.
    pub fn batch(self, n: u64) -> Self {
        self.option("--batch", n)
    }

    /// `--connections`: parallel connections.
    pub fn connections(self, n: u64) -> Self {
        self.option("--connections", n)
    }

    /// `--window`: requests in flight per connection.
    pub fn window(self, n: u64) -> Self {
        self.option("--window", n)
    }

    /// `--ack`: ask for an ack of every request (and re-send what is not acked).
    pub fn ack(self) -> Self {
        self.flag("--ack")
    }

    /// `--ack-timeout`: how long to wait for an ack before re-sending.
    pub fn ack_timeout(self, d: &str) -> Self {
        self.option("--ack-timeout", d)
    }

    /// `--retry-for`: how long to keep reconnecting and re-sending.
    pub fn retry_for(self, d: &str) -> Self {
        self.option("--retry-for", d)
    }

    /// `--gzip`: compressed PackedForward requests.
    pub fn gzip(self) -> Self {
        self.flag("--gzip")
    }

    /// `--tag`: the Forward tag.
    pub fn tag(self, tag: &str) -> Self {
        self.option("--tag", tag)
    }

    /// `--record-bytes`: the size of each record.
    pub fn record_bytes(self, n: u64) -> Self {
        self.option("--record-bytes", n)
    }

    /// `pods --pods`: how many pods (log files) to write.
    pub fn pod_count(self, n: u64) -> Self {
        self.option("--pods", n)
    }

    /// `pods --lines`: lines per pod.
    pub fn lines(self, n: u64) -> Self {
        self.option("--lines", n)
    }

    /// `pods --format`: `docker` or `cri`.
    pub fn format(self, format: &str) -> Self {
        self.option("--format", format)
    }

    /// `pods --long-lines`: the fraction of lines longer than the runtime's line limit.
    pub fn long_lines(self, fraction: f64) -> Self {
        self.option("--long-lines", fraction)
    }

    /// `pods --rotate-size`: rotate a pod's file at this size.
    pub fn rotate_size(self, size: &str) -> Self {
        self.option("--rotate-size", size)
    }

    /// `pods --rotate-keep`: rotated files kept per pod.
    pub fn rotate_keep(self, n: u64) -> Self {
        self.option("--rotate-keep", n)
    }

    /// `pods --first-seq`: the seq of the first line written.
    pub fn first_seq(self, seq: u64) -> Self {
        self.option("--first-seq", seq)
    }

    /// `verify DIR`: the file output directory to read.
    pub fn output_dir(mut self, dir: &Path) -> Self {
        self.args.push(dir.into());
        self
    }

    /// `verify --expect`: how many records the run sent.
    pub fn expect(self, n: u64) -> Self {
        self.option("--expect", n)
    }

    /// `verify --expect-file`: the records a `pods` run wrote.
    pub fn expect_file(self, path: &Path) -> Self {
        self.option("--expect-file", path.display())
    }

    /// `verify --es`: read the run from Elasticsearch at this URL.
    pub fn es(self, url: &str) -> Self {
        self.option("--es", url)
    }

    /// `verify --index`: the Elasticsearch index (pattern) to search.
    pub fn index(self, index: &str) -> Self {
        self.option("--index", index)
    }

    /// `verify --kafka`: read the run from the Kafka broker at this address.
    pub fn kafka(self, addr: &str) -> Self {
        self.option("--kafka", addr)
    }

    /// `verify --topic`: the Kafka topic to read.
    pub fn topic(self, topic: &str) -> Self {
        self.option("--topic", topic)
    }

    /// Runs it to completion, printing its output to the test's output.
    pub fn run(self) -> Output {
        let mut cmd = Command::new(loadtest_bin());
        cmd.args(&self.args).stdin(Stdio::null());
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

    /// Starts it in the background.
    pub fn spawn(self) -> Background {
        Background::spawn(Command::new(loadtest_bin()).args(&self.args))
    }
}
