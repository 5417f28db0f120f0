//! `pods`: writes container log files the way a node's container runtime and kubelet do, so the
//! forwarder can be tested and measured without a cluster.
//!
//! Layout under `--dir` (as under `/var/log`):
//!
//! ```text
//! pods/<namespace>_<pod>_<uid>/app/0.log          the container's log, appended to
//! pods/<namespace>_<pod>_<uid>/app/0.log.<time>   rotated files (kubelet's naming)
//! containers/<pod>_<namespace>_app-<id>.log       absolute symlink to 0.log
//! ```
//!
//! Lines are CRI (`<time> <stream> <P|F> <content>`, containerd) or docker json-file
//! (`{"log","stream","time"}`). Each line's content is a JSON application log line carrying
//! `run_id`, `pod` and a per-pod `seq`, so `verify` can account for every line of every pod after
//! the forwarder (with or without merging the JSON into the record). `--long-lines` makes a share
//! of the lines longer than the runtime's 16 KiB limit; they are split the way the runtimes split
//! them (CRI `P` parts then an `F` part; docker parts whose `log` has no trailing newline), which is
//! what the forwarder must reassemble.
//!
//! Rotation is kubelet's: when a file reaches `--rotate-size` it is renamed to
//! `0.log.<YYYYMMDD-HHMMSS>` and a new `0.log` is created; only `--rotate-keep` files per container
//! (the live one included) are kept, so a forwarder that falls far enough behind loses lines, as it
//! would on a node. The summary says how many lines were in deleted files.

use std::collections::{BTreeMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{IsTerminal as _, Write as _};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Args;
use logferry_common::config::ByteSize;
use serde::Serialize;

use crate::forward::{parse_duration, random_run_id};
use crate::record::filler;
use crate::stats::human;

/// containerd's and dockerd's line limit: longer lines are split into parts of this size.
pub const PARTIAL_LINE_BYTES: usize = 16 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// CRI (containerd, CRI-O): `<time> <stream> <P|F> <content>`.
    Cri,
    /// Docker json-file: `{"log":"<content>\n","stream":"stdout","time":"..."}`.
    Docker,
}

#[derive(Debug, Clone, Args)]
pub struct PodsArgs {
    /// Root directory; `pods/` and `containers/` are created under it.
    #[arg(long)]
    pub dir: PathBuf,
    /// Number of simulated pods (one container each).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub pods: u32,
    /// Total lines per second over all pods (default: as fast as possible).
    #[arg(long)]
    pub rate: Option<f64>,
    /// Write for this long.
    #[arg(long, value_parser = parse_duration, required_unless_present = "lines")]
    pub duration: Option<Duration>,
    /// Lines per pod; with `--duration` too, whichever ends first.
    #[arg(long)]
    pub lines: Option<u64>,
    #[arg(long, value_enum, default_value_t = Format::Cri)]
    pub format: Format,
    /// Approximate length of a line's content (the JSON application line).
    #[arg(long, default_value_t = 200)]
    pub line_bytes: usize,
    /// Rotate a container's log when it reaches this size (kubelet's containerLogMaxSize).
    #[arg(long, default_value = "10MiB")]
    pub rotate_size: ByteSize,
    /// Files kept per container, the live one included (kubelet's containerLogMaxFiles).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(2..))]
    pub rotate_keep: u32,
    /// Share of lines (0 to 1) longer than 16 KiB, written as partial lines.
    #[arg(long, default_value_t = 0.0)]
    pub long_lines: f64,
    /// Content length of those long lines.
    #[arg(long, default_value_t = 40_000)]
    pub long_line_bytes: usize,
    #[arg(long, default_value = "loadtest")]
    pub namespace: String,
    /// The first `seq` of every pod: continues an earlier run with the same run id (whose
    /// summary's `expected` said how many lines each pod had).
    #[arg(long, default_value_t = 0)]
    pub first_seq: u64,
    /// Run id carried by every line (default: random).
    #[arg(long)]
    pub run_id: Option<String>,
    /// Print the summary as one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
    /// No per-second progress lines on stderr.
    #[arg(long)]
    pub quiet: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct PodsSummary {
    pub ok: bool,
    pub run_id: String,
    pub format: Format,
    pub dir: PathBuf,
    /// The directory a forwarder tails (`<dir>/containers/*.log`).
    pub containers_dir: PathBuf,
    pub pods: u32,
    pub lines: u64,
    /// Lines split into partial lines.
    pub long_lines: u64,
    pub bytes: u64,
    pub seconds: f64,
    pub lines_per_sec: f64,
    pub mb_per_sec: f64,
    pub rotations: u64,
    /// Rotated files deleted because more than `--rotate-keep` existed.
    pub deleted_files: u64,
    /// Lines that were in deleted files (lost if the forwarder had not read them yet).
    pub deleted_lines: u64,
    /// What `verify --expect-file` reads: seqs per pod (`--first-seq` + lines written).
    pub expected: BTreeMap<String, u64>,
}

impl PodsSummary {
    pub fn text(&self) -> String {
        format!(
            "run {}: {} {} lines ({} long) for {} pods under {} in {:.2}s: {} lines/s, {:.1} MB/s; \
             {} rotations, {} files deleted holding {} lines\ntail {}/*.log\nOK",
            self.run_id,
            self.lines,
            match self.format {
                Format::Cri => "CRI",
                Format::Docker => "docker json-file",
            },
            self.long_lines,
            self.pods,
            self.dir.display(),
            self.seconds,
            human(self.lines_per_sec),
            self.mb_per_sec,
            self.rotations,
            self.deleted_files,
            self.deleted_lines,
            self.containers_dir.display()
        )
    }
}

/// One simulated container.
#[derive(Debug)]
struct Pod {
    name: String,
    /// `.../app/0.log`.
    log_path: PathBuf,
    file: File,
    size: u64,
    /// Lines (not parts) in the live file.
    lines_in_file: u64,
    /// Rotated files, oldest first, with their line counts.
    rotated: VecDeque<(PathBuf, u64)>,
    next_seq: u64,
    buf: Vec<u8>,
}

/// A pod name valid in Kubernetes (lowercase alphanumerics and '-').
fn dns_label(s: &str) -> String {
    let mut out: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    out.truncate(20);
    out.trim_matches('-').to_string()
}

fn hex_id(seed: &str, len: usize) -> String {
    let mut out = String::new();
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    while out.len() < len {
        for b in seed.bytes().chain(out.len().to_string().bytes()) {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        out.push_str(&format!("{h:016x}"));
    }
    out.truncate(len);
    out
}

/// Creates the directories, the empty `0.log` files and the symlinks of every pod.
fn create_pods(args: &PodsArgs, run_id: &str) -> anyhow::Result<Vec<Pod>> {
    let root = std::path::absolute(&args.dir)
        .with_context(|| format!("resolving {}", args.dir.display()))?;
    let containers = root.join("containers");
    std::fs::create_dir_all(&containers)
        .with_context(|| format!("creating {}", containers.display()))?;
    let prefix = format!("lt-{}", dns_label(run_id));
    let mut pods = Vec::with_capacity(args.pods as usize);
    for i in 0..args.pods {
        let name = format!("{prefix}-{i:05}");
        let uid = hex_id(&name, 32);
        let uid = format!(
            "{}-{}-{}-{}-{}",
            &uid[..8],
            &uid[8..12],
            &uid[12..16],
            &uid[16..20],
            &uid[20..]
        );
        let dir = root
            .join("pods")
            .join(format!("{}_{name}_{uid}", args.namespace))
            .join("app");
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let log_path = dir.join("0.log");
        let file = open_log(&log_path)?;
        let link = containers.join(format!(
            "{name}_{}_app-{}.log",
            args.namespace,
            hex_id(&format!("{name}/app"), 64)
        ));
        // A second run with the same run id (pods created first with `--lines 0`) keeps the
        // link, so a tailer never sees it vanish.
        if std::fs::read_link(&link).ok().as_deref() != Some(log_path.as_path()) {
            match std::fs::remove_file(&link) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e).with_context(|| format!("removing {}", link.display())),
            }
            std::os::unix::fs::symlink(&log_path, &link)
                .with_context(|| format!("linking {} -> {}", link.display(), log_path.display()))?;
        }
        pods.push(Pod {
            name,
            log_path,
            file,
            size: 0,
            lines_in_file: 0,
            rotated: VecDeque::new(),
            next_seq: args.first_seq,
            buf: Vec::with_capacity(64 * 1024),
        });
    }
    Ok(pods)
}

fn open_log(path: &Path) -> anyhow::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))
}

/// Appends `s` as the inside of a JSON string.
fn json_escape(s: &[u8], out: &mut Vec<u8>) {
    for &b in s {
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            0..=0x1f => out.extend_from_slice(format!("\\u{b:04x}").as_bytes()),
            _ => out.push(b),
        }
    }
}

/// Writes one log line (split into parts past 16 KiB) in `format` into `out`.
pub fn write_line(format: Format, time: &str, stream: &str, content: &[u8], out: &mut Vec<u8>) {
    let parts: Vec<&[u8]> = if content.is_empty() {
        vec![content]
    } else {
        content.chunks(PARTIAL_LINE_BYTES).collect()
    };
    let last = parts.len() - 1;
    for (i, part) in parts.into_iter().enumerate() {
        match format {
            Format::Cri => {
                out.extend_from_slice(time.as_bytes());
                out.push(b' ');
                out.extend_from_slice(stream.as_bytes());
                out.extend_from_slice(if i == last { b" F " } else { b" P " });
                out.extend_from_slice(part);
                out.push(b'\n');
            }
            Format::Docker => {
                out.extend_from_slice(b"{\"log\":\"");
                json_escape(part, out);
                if i == last {
                    out.extend_from_slice(b"\\n");
                }
                out.extend_from_slice(b"\",\"stream\":\"");
                out.extend_from_slice(stream.as_bytes());
                out.extend_from_slice(b"\",\"time\":\"");
                out.extend_from_slice(time.as_bytes());
                out.extend_from_slice(b"\"}\n");
            }
        }
    }
}

/// The JSON application line of `seq` of `pod` with a `msg` of `msg`.
fn content(run_id: &str, pod: &str, seq: u64, level: &str, msg: &str, out: &mut Vec<u8>) {
    out.extend_from_slice(b"{\"level\":\"");
    out.extend_from_slice(level.as_bytes());
    out.extend_from_slice(b"\",\"run_id\":\"");
    json_escape(run_id.as_bytes(), out);
    out.extend_from_slice(b"\",\"pod\":\"");
    out.extend_from_slice(pod.as_bytes());
    out.extend_from_slice(b"\",\"seq\":");
    out.extend_from_slice(itoa::Buffer::new().format(seq).as_bytes());
    out.extend_from_slice(b",\"msg\":\"");
    out.extend_from_slice(msg.as_bytes());
    out.extend_from_slice(b"\"}");
}

/// Kubelet's rotated-file suffix: `20060102-150405` (UTC here).
fn rotation_suffix() -> String {
    chrono::Utc::now().format("%Y%m%d-%H%M%S").to_string()
}

#[derive(Debug, Default)]
struct Totals {
    lines: u64,
    long_lines: u64,
    bytes: u64,
    rotations: u64,
    deleted_files: u64,
    deleted_lines: u64,
}

impl Pod {
    /// Writes the buffered lines (one write) and rotates if the file is full.
    fn flush(&mut self, lines: u64, args: &PodsArgs, totals: &mut Totals) -> anyhow::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        self.file
            .write_all(&self.buf)
            .with_context(|| format!("writing {}", self.log_path.display()))?;
        self.size += self.buf.len() as u64;
        totals.bytes += self.buf.len() as u64;
        self.lines_in_file += lines;
        self.buf.clear();
        if self.size >= args.rotate_size.bytes() {
            self.rotate(args, totals)?;
        }
        Ok(())
    }

    fn rotate(&mut self, args: &PodsArgs, totals: &mut Totals) -> anyhow::Result<()> {
        let base = format!("0.log.{}", rotation_suffix());
        let dir = self.log_path.parent().expect("log path has a parent");
        let mut target = dir.join(&base);
        let mut n = 1;
        while target.exists() {
            target = dir.join(format!("{base}-{n:04}"));
            n += 1;
        }
        std::fs::rename(&self.log_path, &target).with_context(|| {
            format!(
                "rotating {} to {}",
                self.log_path.display(),
                target.display()
            )
        })?;
        self.file = open_log(&self.log_path)?;
        self.rotated.push_back((target, self.lines_in_file));
        self.size = 0;
        self.lines_in_file = 0;
        totals.rotations += 1;
        while self.rotated.len() + 1 > args.rotate_keep as usize {
            let (old, lines) = self.rotated.pop_front().expect("not empty");
            std::fs::remove_file(&old).with_context(|| format!("removing {}", old.display()))?;
            totals.deleted_files += 1;
            totals.deleted_lines += lines;
        }
        Ok(())
    }
}

/// How many `msg` variants lines cycle through.
const MSG_VARIANTS: usize = 256;

pub fn run(args: &PodsArgs) -> anyhow::Result<PodsSummary> {
    anyhow::ensure!(
        (0.0..=1.0).contains(&args.long_lines),
        "--long-lines must be between 0 and 1"
    );
    if let Some(r) = args.rate {
        anyhow::ensure!(r > 0.0 && r.is_finite(), "--rate must be positive");
    }
    let run_id = args.run_id.clone().unwrap_or_else(random_run_id);
    let mut pods = create_pods(args, &run_id)?;
    let mut rng = rand::rng();
    // The fixed part of a line is about 80 bytes plus the ids.
    let overhead = 60 + run_id.len() + pods[0].name.len();
    let msgs: Vec<String> = (0..MSG_VARIANTS)
        .map(|_| filler(args.line_bytes.saturating_sub(overhead).max(8), &mut rng))
        .collect();
    let long_msg = filler(
        args.long_line_bytes
            .saturating_sub(overhead)
            .max(PARTIAL_LINE_BYTES + 1),
        &mut rng,
    );
    // Every `long_every`-th line of a pod is long (deterministic, so tests can count them).
    let long_every = if args.long_lines > 0.0 {
        (1.0 / args.long_lines).round().max(1.0) as u64
    } else {
        0
    };

    let n_pods = pods.len() as u64;
    let limit = args.lines.map(|l| l.saturating_mul(n_pods));
    let start = Instant::now();
    let deadline = args.duration.map(|d| start + d);
    let tick = Duration::from_millis(10);
    let mut totals = Totals::default();
    let mut content_buf = Vec::with_capacity(args.long_line_bytes + 256);
    let mut pod_lines = vec![0u64; pods.len()];
    let mut last_report = start;
    let mut reported_lines = 0u64;
    let plain_progress = !args.quiet;
    let tty = std::io::stderr().is_terminal();
    loop {
        let now = Instant::now();
        let elapsed = now - start;
        let timed_out = deadline.is_some_and(|d| now >= d);
        let mut due = match args.rate {
            Some(r) => (r * elapsed.as_secs_f64()) as u64,
            None => totals.lines + n_pods * 64,
        };
        if let Some(l) = limit {
            due = due.min(l);
        }
        if timed_out {
            due = totals.lines;
        }
        if due > totals.lines {
            let time = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true);
            pod_lines.iter_mut().for_each(|c| *c = 0);
            for k in totals.lines..due {
                let p = (k % n_pods) as usize;
                let pod = &mut pods[p];
                let seq = pod.next_seq;
                pod.next_seq += 1;
                let long = long_every > 0 && seq % long_every == long_every - 1;
                let msg = if long {
                    totals.long_lines += 1;
                    long_msg.as_str()
                } else {
                    msgs[(seq as usize) % msgs.len()].as_str()
                };
                let (stream, level) = if seq % 10 == 9 {
                    ("stderr", "warn")
                } else {
                    ("stdout", "info")
                };
                content_buf.clear();
                content(&run_id, &pod.name, seq, level, msg, &mut content_buf);
                write_line(args.format, &time, stream, &content_buf, &mut pod.buf);
                pod_lines[p] += 1;
            }
            totals.lines = due;
            for (pod, lines) in pods.iter_mut().zip(&pod_lines) {
                pod.flush(*lines, args, &mut totals)?;
            }
        }
        let done = timed_out || limit.is_some_and(|l| totals.lines >= l);
        if plain_progress && (now - last_report >= Duration::from_secs(1) || done) {
            let dt = (now - last_report).as_secs_f64().max(1e-9);
            let line = format!(
                "[{:>6.1}s] {} lines ({}/s), {:.1} MB, {} rotations, {} files deleted",
                elapsed.as_secs_f64(),
                totals.lines,
                human((totals.lines - reported_lines) as f64 / dt),
                totals.bytes as f64 / 1e6,
                totals.rotations,
                totals.deleted_files
            );
            if tty {
                eprint!("\r{line}\x1b[K");
                if done {
                    eprintln!();
                }
            } else {
                eprintln!("{line}");
            }
            last_report = now;
            reported_lines = totals.lines;
        }
        if done {
            break;
        }
        if args.rate.is_some() {
            let next = now + tick;
            let until = deadline.map_or(next, |d| d.min(next));
            std::thread::sleep(until.saturating_duration_since(Instant::now()));
        }
    }
    for pod in &mut pods {
        pod.file
            .sync_data()
            .with_context(|| format!("syncing {}", pod.log_path.display()))?;
    }
    let secs = start.elapsed().as_secs_f64().max(1e-9);
    let root = std::path::absolute(&args.dir).unwrap_or_else(|_| args.dir.clone());
    Ok(PodsSummary {
        ok: true,
        run_id,
        format: args.format,
        containers_dir: root.join("containers"),
        dir: root,
        pods: args.pods,
        lines: totals.lines,
        long_lines: totals.long_lines,
        bytes: totals.bytes,
        seconds: secs,
        lines_per_sec: totals.lines as f64 / secs,
        mb_per_sec: totals.bytes as f64 / secs / 1e6,
        rotations: totals.rotations,
        deleted_files: totals.deleted_files,
        deleted_lines: totals.deleted_lines,
        expected: pods.iter().map(|p| (p.name.clone(), p.next_seq)).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;

    #[derive(Debug, clap::Parser)]
    struct Cli {
        #[command(flatten)]
        args: PodsArgs,
    }

    fn args(extra: &[&str]) -> PodsArgs {
        Cli::parse_from(std::iter::once("pods").chain(extra.iter().copied())).args
    }

    /// A reader of what was written, independent of the writer: reassembles partial lines and
    /// returns each pod's JSON contents in file order (rotated files first, oldest first).
    fn read_back(dir: &Path, format: Format) -> BTreeMap<String, Vec<serde_json::Value>> {
        let mut out = BTreeMap::new();
        for link in std::fs::read_dir(dir.join("containers")).unwrap() {
            let link = link.unwrap().path();
            let target = std::fs::read_link(&link).unwrap();
            assert!(target.is_absolute(), "{}", target.display());
            assert!(target.ends_with("app/0.log"), "{}", target.display());
            let pod_dir = target.parent().unwrap();
            let mut files: Vec<PathBuf> = std::fs::read_dir(pod_dir)
                .unwrap()
                .map(|e| e.unwrap().path())
                .filter(|p| p != &target)
                .collect();
            files.sort();
            files.push(target.clone());
            let mut contents: Vec<serde_json::Value> = Vec::new();
            let mut pending = Vec::<u8>::new();
            for f in files {
                let text = std::fs::read(&f).unwrap();
                if text.is_empty() {
                    // A file just created by a rotation.
                    continue;
                }
                assert_eq!(
                    text.last(),
                    Some(&b'\n'),
                    "{} ends with a newline",
                    f.display()
                );
                for line in text.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
                    let (body, complete) = match format {
                        Format::Cri => {
                            let mut it = line.splitn(4, |&b| b == b' ');
                            let time = it.next().unwrap();
                            assert!(chrono::DateTime::parse_from_rfc3339(
                                std::str::from_utf8(time).unwrap()
                            )
                            .is_ok());
                            let stream = it.next().unwrap();
                            assert!(stream == b"stdout" || stream == b"stderr");
                            let tag = it.next().unwrap();
                            (it.next().unwrap().to_vec(), tag == b"F")
                        }
                        Format::Docker => {
                            let v: serde_json::Value = serde_json::from_slice(line).unwrap();
                            assert!(v["time"].is_string() && v["stream"].is_string());
                            let log = v["log"].as_str().unwrap();
                            match log.strip_suffix('\n') {
                                Some(l) => (l.as_bytes().to_vec(), true),
                                None => (log.as_bytes().to_vec(), false),
                            }
                        }
                    };
                    assert!(body.len() <= PARTIAL_LINE_BYTES);
                    pending.extend_from_slice(&body);
                    if complete {
                        contents.push(serde_json::from_slice(&pending).unwrap());
                        pending.clear();
                    }
                }
            }
            assert!(pending.is_empty(), "a partial line was left unfinished");
            let name = contents[0]["pod"].as_str().unwrap().to_string();
            out.insert(name, contents);
        }
        out
    }

    #[test]
    fn writes_every_pod_in_order_with_rotation_and_partial_lines() {
        for format in [Format::Cri, Format::Docker] {
            let dir = tempfile::tempdir().unwrap();
            let fmt = match format {
                Format::Cri => "cri",
                Format::Docker => "docker",
            };
            let a = args(&[
                "--dir",
                dir.path().to_str().unwrap(),
                "--pods",
                "3",
                "--lines",
                "400",
                "--format",
                fmt,
                "--rotate-size",
                "40KiB",
                "--rotate-keep",
                "1000",
                "--long-lines",
                "0.05",
                "--run-id",
                "Run_1",
                "--quiet",
            ]);
            let s = run(&a).unwrap();
            assert_eq!(s.lines, 1200);
            assert_eq!(s.long_lines, 60, "every 20th line of each pod");
            assert!(s.rotations > 10, "{s:?}");
            assert_eq!(s.deleted_files, 0);
            assert_eq!(s.expected.len(), 3);
            let pods = read_back(dir.path(), format);
            assert_eq!(pods.len(), 3);
            for (name, lines) in &pods {
                assert_eq!(s.expected[name], 400);
                let seqs: Vec<u64> = lines.iter().map(|l| l["seq"].as_u64().unwrap()).collect();
                assert_eq!(seqs, (0..400).collect::<Vec<_>>(), "{fmt} {name}");
                assert!(lines.iter().all(|l| l["run_id"] == "Run_1"));
                let long = lines
                    .iter()
                    .filter(|l| l["msg"].as_str().unwrap().len() > PARTIAL_LINE_BYTES)
                    .count();
                assert_eq!(long, 20);
            }
        }
    }

    #[test]
    fn keeps_only_rotate_keep_files_and_counts_deleted_lines() {
        let dir = tempfile::tempdir().unwrap();
        let a = args(&[
            "--dir",
            dir.path().to_str().unwrap(),
            "--pods",
            "2",
            "--lines",
            "2000",
            "--rotate-size",
            "16KiB",
            "--rotate-keep",
            "3",
            "--quiet",
        ]);
        let s = run(&a).unwrap();
        assert!(s.deleted_files > 0, "{s:?}");
        let mut remaining = 0u64;
        for e in std::fs::read_dir(dir.path().join("pods")).unwrap() {
            let app = e.unwrap().path().join("app");
            let files: Vec<_> = std::fs::read_dir(&app).unwrap().collect();
            assert!(
                files.len() <= 3,
                "{} holds {} files",
                app.display(),
                files.len()
            );
            for f in files {
                let text = std::fs::read_to_string(f.unwrap().path()).unwrap();
                remaining += text.lines().count() as u64;
            }
        }
        assert_eq!(remaining + s.deleted_lines, s.lines);
    }

    #[test]
    fn paced_by_rate_and_duration() {
        let dir = tempfile::tempdir().unwrap();
        let a = args(&[
            "--dir",
            dir.path().to_str().unwrap(),
            "--pods",
            "4",
            "--rate",
            "2000",
            "--duration",
            "500ms",
            "--quiet",
        ]);
        let t = Instant::now();
        let s = run(&a).unwrap();
        assert!(t.elapsed() >= Duration::from_millis(480));
        assert!(
            (700..=1100).contains(&s.lines),
            "about 1000 lines expected, got {}",
            s.lines
        );
        let per_pod: Vec<u64> = s.expected.values().copied().collect();
        assert!(per_pod.iter().max().unwrap() - per_pod.iter().min().unwrap() <= 1);
        assert_eq!(per_pod.iter().sum::<u64>(), s.lines);
    }

    #[test]
    fn escapes_json_and_splits_exactly() {
        let mut out = Vec::new();
        write_line(
            Format::Docker,
            "T",
            "stdout",
            b"{\"a\":\"b\\\\c\"}",
            &mut out,
        );
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["log"], "{\"a\":\"b\\\\c\"}\n");
        let content = vec![b'x'; 2 * PARTIAL_LINE_BYTES];
        out.clear();
        write_line(Format::Cri, "T", "stderr", &content, &mut out);
        let lines: Vec<&[u8]> = out
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .collect();
        assert_eq!(lines.len(), 2);
        assert!(lines[0].starts_with(b"T stderr P "));
        assert!(lines[1].starts_with(b"T stderr F "));
        assert_eq!(dns_label("Run_ID.x"), "run-id-x");
    }
}
