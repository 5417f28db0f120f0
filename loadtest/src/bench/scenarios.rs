//! The scenarios: each starts fresh processes in its own directory, measures, checks for loss and
//! returns one table row. A scenario that fails becomes a FAILED row (and a non-zero exit); the
//! others still run.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use serde_json::Value;

use crate::plot::{self, SoakData};
use crate::procs::{self, cpu_seconds, memory_mb, Aggregator, OutputKind, Proc};
use crate::report::{self, References, Row, Status};
use crate::{RunArgs, ALL_SCENARIOS};

/// Sizes of one run, from the flags and `--quick`.
#[derive(Debug, Clone)]
struct Sizes {
    records: u64,
    pods_lines: u64,
    latency: Duration,
    soak: Duration,
    soak_rate: f64,
    sample_every: Duration,
    warmup: Duration,
    idle_wait: Duration,
}

impl Sizes {
    fn new(a: &RunArgs) -> Self {
        let q = a.quick;
        let soak = a.soak_duration.unwrap_or(if q {
            Duration::from_secs(10)
        } else {
            Duration::from_secs(600)
        });
        Self {
            records: a.records.unwrap_or(if q { 100_000 } else { 2_000_000 }),
            pods_lines: a.pods_lines.unwrap_or(if q { 20_000 } else { 1_000_000 }),
            latency: a
                .latency_duration
                .unwrap_or(Duration::from_secs(if q { 3 } else { 20 })),
            soak,
            soak_rate: a.soak_rate.unwrap_or(if q { 5_000.0 } else { 50_000.0 }),
            sample_every: a
                .sample_every
                .unwrap_or(Duration::from_secs(if q { 1 } else { 10 })),
            warmup: a.soak_warmup.unwrap_or(if q {
                soak.mul_f64(0.3)
            } else {
                Duration::from_secs(60)
            }),
            idle_wait: Duration::from_secs(if q { 2 } else { 5 }),
        }
    }
}

#[derive(Debug)]
struct Ctx {
    args: RunArgs,
    sizes: Sizes,
    bins: PathBuf,
    out: PathBuf,
    /// The best acked rate measured so far (the latency scenario halves it).
    max_rate: Option<f64>,
}

impl Ctx {
    fn bin(&self, name: &str) -> PathBuf {
        self.bins.join(name)
    }

    fn loadtest(&self) -> Command {
        Command::new(self.bin("logferry-loadtest"))
    }

    fn scenario_dir(&self, key: &str) -> anyhow::Result<PathBuf> {
        let d = self.out.join(key);
        if d.exists() {
            std::fs::remove_dir_all(&d).with_context(|| format!("clearing {}", d.display()))?;
        }
        std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
        Ok(d)
    }

    /// `loadtest forward` against `target` with the run's batch, connections and window, plus
    /// `extra`; returns its JSON summary (failing if the run failed).
    fn forward(
        &self,
        target: &str,
        run_id: &str,
        extra: &[&str],
        timeout: Duration,
    ) -> anyhow::Result<Value> {
        let mut cmd = self.loadtest();
        cmd.args(["forward", "--target", target, "--run-id", run_id])
            .args(["--batch", &self.args.batch.to_string()])
            .args(["--connections", &self.args.connections.to_string()])
            .args(["--window", &self.args.window.to_string()])
            .args(["--ack", "--json", "--quiet", "--no-timeline"])
            .args(extra);
        let out = procs::run_capture(&mut cmd, timeout)?;
        let summary: Value = serde_json::from_slice(&out.stdout).with_context(|| {
            format!(
                "loadtest forward printed no summary ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            )
        })?;
        if summary["ok"] != true {
            bail!("loadtest forward failed: {}", summary["errors"]);
        }
        Ok(summary)
    }

    /// `loadtest verify` of `run_id` in `dir`; returns `(missing, duplicates)`.
    fn verify(&self, run_id: &str, dir: &Path, expect: &[&str]) -> anyhow::Result<(u64, u64)> {
        let mut cmd = self.loadtest();
        cmd.args(["verify", "--run-id", run_id, "--json"])
            .arg(dir)
            .args(expect);
        let out = procs::run_capture(&mut cmd, Duration::from_secs(600))?;
        let r: Value = serde_json::from_slice(&out.stdout).with_context(|| {
            format!(
                "loadtest verify printed no report: {}",
                String::from_utf8_lossy(&out.stderr)
            )
        })?;
        Ok((
            r["missing"].as_u64().unwrap_or(u64::MAX),
            r["duplicates"].as_u64().unwrap_or(0),
        ))
    }
}

fn f64_of(v: &Value, path: &str) -> Option<f64> {
    v.pointer(path).and_then(Value::as_f64)
}

/// Generous time for `n` records to go through.
fn budget(n: u64) -> Duration {
    Duration::from_secs(120 + n / 5_000)
}

fn run_id(key: &str) -> String {
    format!("bench-{key}-{}", chrono::Utc::now().format("%H%M%S"))
}

/// Runs the selected scenarios; prints and writes the table. Returns false if one failed.
pub fn run(args: RunArgs) -> anyhow::Result<bool> {
    let refs = match &args.reference {
        Some(p) => References::parse(
            &std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?,
        )?,
        None => References::parse(report::DEFAULT_REFERENCE)?,
    };
    let bins = match &args.bin_dir {
        Some(d) => d.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("no directory of the executable")?
            .to_path_buf(),
    };
    for b in ["logferry-aggregator", "logferry-loadtest"] {
        if !bins.join(b).exists() {
            bail!(
                "{} not found: build the binaries first (bench/run.sh does)",
                bins.join(b).display()
            );
        }
    }
    let out = match &args.out {
        Some(o) => o.clone(),
        None => bins
            .join("..")
            .join("bench")
            .join(chrono::Local::now().format("%Y%m%d-%H%M%S").to_string()),
    };
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let out = std::path::absolute(&out)?;
    let selected: Vec<&str> = if args.scenarios.is_empty() {
        ALL_SCENARIOS.to_vec()
    } else {
        ALL_SCENARIOS
            .iter()
            .copied()
            .filter(|s| args.scenarios.iter().any(|a| a == s))
            .collect()
    };
    let mut ctx = Ctx {
        sizes: Sizes::new(&args),
        max_rate: args.max_rate,
        args,
        bins,
        out: out.clone(),
    };
    eprintln!(
        "logferry-bench: binaries {}, results {}, sizes {:?}",
        ctx.bins.display(),
        out.display(),
        ctx.sizes
    );
    let loadavg_start = loadavg();
    eprintln!("load average before: {loadavg_start}");
    let mut rows = Vec::new();
    for key in selected {
        eprintln!("== {key}");
        let started = Instant::now();
        let row = match key {
            "ceiling" => ceiling(&mut ctx),
            "ingest" => ingest(&mut ctx),
            "file" => file(&mut ctx, false),
            "file-gzip" => file(&mut ctx, true),
            "pods" => pods(&mut ctx),
            "latency" => latency(&mut ctx),
            "soak" => soak(&mut ctx),
            other => bail!("unknown scenario {other}"),
        };
        let row = row.unwrap_or_else(|e| {
            let mut r = Row::new(key, key);
            r.status = Status::Failed(format!("{e:#}"));
            r
        });
        eprintln!(
            "== {key}: {:?} in {:.1}s",
            row.status,
            started.elapsed().as_secs_f64()
        );
        rows.push(row);
    }
    let loadavg_end = loadavg();
    let table = report::table(&rows, &refs);
    println!("{table}");
    println!("load average (1, 5, 15 min) before: {loadavg_start}; after: {loadavg_end}");
    std::fs::write(out.join("results.md"), &table)?;
    std::fs::write(
        out.join("results.json"),
        serde_json::to_string_pretty(&serde_json::json!({
            "sizes": format!("{:?}", ctx.sizes),
            "quick": ctx.args.quick,
            "loadavg_before": loadavg_start,
            "loadavg_after": loadavg_end,
            "rows": rows,
        }))?,
    )?;
    eprintln!("results in {}", out.display());
    Ok(rows.iter().all(|r| !matches!(r.status, Status::Failed(_))))
}

/// `/proc/loadavg`'s first three fields: other load on the machine moves every figure.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// The generator against the discarding sink.
fn ceiling(ctx: &mut Ctx) -> anyhow::Result<Row> {
    let dir = ctx.scenario_dir("ceiling")?;
    let mut sink = Proc::spawn(
        "logferry-loadtest sink",
        ctx.loadtest().args(["sink", "--listen", "127.0.0.1:0"]),
        &dir.join("sink.log"),
    )?;
    let addr = sink.wait_listening(&["forward"], Duration::from_secs(30))?[0];
    let n = ctx.sizes.records * 2;
    let s = ctx.forward(
        &addr.to_string(),
        &run_id("ceiling"),
        &["--records", &n.to_string()],
        budget(n),
    )?;
    sink.stop(Duration::from_secs(5));
    let mut row = Row::new(
        "ceiling",
        "generator ceiling: forward -> discarding sink, acked",
    );
    row.records = n;
    row.records_per_sec = f64_of(&s, "/records_per_sec");
    row.mb_per_sec = f64_of(&s, "/mb_per_sec");
    row.ack_p50_ms = f64_of(&s, "/ack_latency_ms/p50_ms");
    row.ack_p99_ms = f64_of(&s, "/ack_latency_ms/p99_ms");
    row.notes.push(format!(
        "{n} records; the sink decodes and acks every request; both share the 2 cores"
    ));
    Ok(row)
}

/// Measures an aggregator around `f`: CPU seconds used and peak RSS.
struct Usage {
    cpu_s: f64,
    peak_rss_mb: f64,
}

fn usage_since(pid: u32, cpu0: f64) -> anyhow::Result<Usage> {
    Ok(Usage {
        cpu_s: cpu_seconds(pid)? - cpu0,
        peak_rss_mb: memory_mb(pid)?.1,
    })
}

/// (a0) acked Forward ingest into the null output.
fn ingest(ctx: &mut Ctx) -> anyhow::Result<Row> {
    let dir = ctx.scenario_dir("ingest")?;
    let mut agg = Aggregator::start(&ctx.bin("logferry-aggregator"), &dir, OutputKind::Null, "")?;
    let n = ctx.sizes.records;
    let pid = agg.proc.pid();
    let cpu0 = cpu_seconds(pid)?;
    let s = ctx.forward(
        &agg.forward.to_string(),
        &run_id("ingest"),
        &["--records", &n.to_string()],
        budget(n),
    )?;
    agg.wait_for(Aggregator::delivered, n, budget(n))?;
    let u = usage_since(pid, cpu0)?;
    let received = agg.received()?;
    agg.proc.stop(Duration::from_secs(30));
    let mut row = Row::new(
        "ingest",
        "(a0) Forward -> aggregator, fsync=always, acked -> null output",
    );
    row.records = n;
    row.records_per_sec = f64_of(&s, "/records_per_sec");
    row.mb_per_sec = f64_of(&s, "/mb_per_sec");
    row.cpu_s_per_million = Some(u.cpu_s / n as f64 * 1e6);
    row.peak_rss_mb = Some(u.peak_rss_mb);
    row.ack_p50_ms = f64_of(&s, "/ack_latency_ms/p50_ms");
    row.ack_p99_ms = f64_of(&s, "/ack_latency_ms/p99_ms");
    row.missing = Some(n.saturating_sub(received as u64));
    row.notes.push(format!(
        "ack p50 {:.1} ms, p99 {:.1} ms; {received} records counted in",
        row.ack_p50_ms.unwrap_or(0.0),
        row.ack_p99_ms.unwrap_or(0.0)
    ));
    if received < n as f64 {
        row.status = Status::Failed(format!("only {received} of {n} records counted in"));
    }
    ctx.max_rate = row.records_per_sec.or(ctx.max_rate);
    Ok(row)
}

/// (a) and (b): acked Forward into the file output, until the file holds everything; verified.
fn file(ctx: &mut Ctx, gzip: bool) -> anyhow::Result<Row> {
    let key = if gzip { "file-gzip" } else { "file" };
    let dir = ctx.scenario_dir(key)?;
    let mut agg = Aggregator::start(&ctx.bin("logferry-aggregator"), &dir, OutputKind::File, "")?;
    let n = ctx.sizes.records;
    let pid = agg.proc.pid();
    let id = run_id(key);
    let cpu0 = cpu_seconds(pid)?;
    let t0 = Instant::now();
    let mut extra = vec!["--records".to_string(), n.to_string()];
    if gzip {
        extra.push("--gzip".into());
    }
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    let s = ctx.forward(&agg.forward.to_string(), &id, &extra, budget(n))?;
    let done = agg.wait_for(Aggregator::delivered, n, budget(n))?;
    let secs = (done - t0).as_secs_f64();
    let u = usage_since(pid, cpu0)?;
    agg.proc.stop(Duration::from_secs(30));
    let (missing, dups) = ctx.verify(&id, &agg.out_dir, &["--expect", &n.to_string()])?;
    let mut row = Row::new(
        key,
        if gzip {
            "(b) the same with gzip (CompressedPackedForward)"
        } else {
            "(a) Forward -> aggregator, fsync=always, acked -> file output, until in the file"
        },
    );
    row.records = n;
    row.records_per_sec = Some(n as f64 / secs);
    row.mb_per_sec = f64_of(&s, "/bytes").map(|b| b / secs / 1e6);
    row.cpu_s_per_million = Some(u.cpu_s / n as f64 * 1e6);
    row.peak_rss_mb = Some(u.peak_rss_mb);
    row.ack_p50_ms = f64_of(&s, "/ack_latency_ms/p50_ms");
    row.ack_p99_ms = f64_of(&s, "/ack_latency_ms/p99_ms");
    row.missing = Some(missing);
    row.duplicates = Some(dups);
    row.notes.push(format!(
        "acked at {:.0}k/s; all {n} in the file after {secs:.1}s; verify: {missing} missing, {dups} duplicates",
        f64_of(&s, "/records_per_sec").unwrap_or(0.0) / 1e3,
    ));
    if missing > 0 {
        row.status = Status::Failed(format!("{missing} records missing from the file output"));
    }
    Ok(row)
}

/// Whether the forwarder binary is a real one; `Err(reason)` to skip.
fn forwarder_usable(bin: &Path, config: &Path) -> Result<(), String> {
    if !bin.exists() {
        return Err(format!("{} not built", bin.display()));
    }
    let out = procs::run_capture(
        Command::new(bin)
            .arg("validate")
            .arg("--config")
            .arg(config),
        Duration::from_secs(30),
    )
    .map_err(|e| format!("{e:#}"))?;
    if out.status.success() {
        return Ok(());
    }
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if text.contains("not implemented") || out.status.code() != Some(78) {
        return Err(format!(
            "logferry-forwarder is not usable yet ({}): {}",
            out.status,
            text.trim()
        ));
    }
    Err(format!(
        "the forwarder rejected the bench config: {}",
        text.trim()
    ))
}

/// (c) pods -> forwarder -> aggregator -> file output.
fn pods(ctx: &mut Ctx) -> anyhow::Result<Row> {
    let dir = ctx.scenario_dir("pods")?;
    let mut row = Row::new(
        "pods",
        "(c) pods (docker json-file) -> forwarder (acked) -> aggregator -> file output",
    );
    let agg_dir = dir.join("aggregator");
    // The forwarder config needs the aggregator's port: validate with a placeholder first.
    let fwd_config = |server: &str| {
        let q = |p: &Path| Value::String(p.display().to_string()).to_string();
        format!(
            r#"shutdown_timeout = "20s"

[input]
paths = [{paths}]
format = "docker"
read_from = "head"

[kubernetes]
enabled = false
merge_log = true

[buffer]
path = {buffer}

[output]
servers = ["{server}"]
require_ack = true

[admin]
listen = "127.0.0.1:0"
"#,
            paths = q(&dir.join("logs/containers/*.log")),
            buffer = q(&dir.join("forwarder-buffer")),
        )
    };
    let config_path = dir.join("forwarder.toml");
    std::fs::write(&config_path, fwd_config("127.0.0.1:24224"))?;
    if let Err(why) = forwarder_usable(&ctx.bin("logferry-forwarder"), &config_path) {
        eprintln!("skipping pods: {why}");
        row.status = Status::Skipped(why);
        return Ok(row);
    }
    let lines = ctx.sizes.pods_lines;
    let pods = u64::from(ctx.args.pods.max(1));
    let per_pod = lines.div_ceil(pods);
    let id = run_id("pods");
    let out = procs::run_capture(
        ctx.loadtest()
            .args(["pods", "--dir"])
            .arg(dir.join("logs"))
            .args(["--pods", &pods.to_string(), "--lines", &per_pod.to_string()])
            .args([
                "--format",
                "docker",
                "--rotate-size",
                "64GiB",
                "--run-id",
                &id,
            ])
            .args(["--json", "--quiet"]),
        budget(lines),
    )?;
    if !out.status.success() {
        bail!(
            "loadtest pods failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let summary_path = dir.join("pods.json");
    std::fs::write(&summary_path, &out.stdout)?;
    let written: Value = serde_json::from_slice(&out.stdout)?;
    let total = written["lines"]
        .as_u64()
        .context("pods summary without lines")?;

    let mut agg = Aggregator::start(
        &ctx.bin("logferry-aggregator"),
        &agg_dir,
        OutputKind::File,
        "",
    )?;
    std::fs::write(&config_path, fwd_config(&agg.forward.to_string()))?;
    let t0 = Instant::now();
    let mut fwd = Proc::spawn(
        "logferry-forwarder",
        Command::new(ctx.bin("logferry-forwarder"))
            .arg("run")
            .arg("--config")
            .arg(&config_path)
            .args(["--log-format", "json"])
            .env_remove("RUST_LOG")
            .current_dir(&dir),
        &dir.join("forwarder.log"),
    )?;
    let fpid = fwd.pid();
    let wait = agg.wait_for(Aggregator::received, total, budget(total));
    if let Err(e) = wait {
        bail!("{e:#}; forwarder log:\n{}", fwd.tail(20));
    }
    let secs = t0.elapsed().as_secs_f64();
    let cpu = cpu_seconds(fpid)?;
    let (_, peak) = memory_mb(fpid)?;
    // Idle: everything is read; let it settle, then measure over the same span.
    std::thread::sleep(ctx.sizes.idle_wait);
    let c0 = cpu_seconds(fpid)?;
    std::thread::sleep(ctx.sizes.idle_wait);
    let idle_cpu = (cpu_seconds(fpid)? - c0) / ctx.sizes.idle_wait.as_secs_f64() * 1000.0;
    let (idle_rss, _) = memory_mb(fpid)?;
    fwd.stop(Duration::from_secs(30));
    agg.wait_for(Aggregator::delivered, total, budget(total))?;
    agg.proc.stop(Duration::from_secs(30));
    let expect = format!("{}", summary_path.display());
    let (missing, dups) = ctx.verify(&id, &agg.out_dir, &["--expect-file", &expect])?;
    row.records = total;
    row.records_per_sec = Some(total as f64 / secs);
    row.mb_per_sec = written["bytes"].as_f64().map(|b| b / secs / 1e6);
    row.cpu_s_per_million = Some(cpu / total as f64 * 1e6);
    row.peak_rss_mb = Some(peak);
    row.idle_rss_mb = Some(idle_rss);
    row.idle_cpu_ms_per_s = Some(idle_cpu);
    row.missing = Some(missing);
    row.duplicates = Some(dups);
    row.notes.push(format!(
        "{total} lines in {pods} files; figures are the forwarder's; idle ({pods} files tailed): RSS {idle_rss:.1} MB, CPU {idle_cpu:.2} ms/s; verify: {missing} missing, {dups} duplicates"
    ));
    if missing > 0 {
        row.status = Status::Failed(format!("{missing} lines missing from the file output"));
    }
    Ok(row)
}

/// (d) ack latency at half of the maximum acked rate.
fn latency(ctx: &mut Ctx) -> anyhow::Result<Row> {
    let dir = ctx.scenario_dir("latency")?;
    let agg = Aggregator::start(&ctx.bin("logferry-aggregator"), &dir, OutputKind::Null, "")?;
    let max = match ctx.max_rate {
        Some(m) => m,
        None => {
            // A short unpaced probe.
            let s = ctx.forward(
                &agg.forward.to_string(),
                &run_id("probe"),
                &["--duration", "3s"],
                Duration::from_secs(120),
            )?;
            f64_of(&s, "/records_per_sec").context("probe without a rate")?
        }
    };
    let rate = (max / 2.0).max(1.0);
    let d = ctx.sizes.latency;
    let s = ctx.forward(
        &agg.forward.to_string(),
        &run_id("latency"),
        &[
            "--rate",
            &format!("{rate:.0}"),
            "--duration",
            &format!("{}ms", d.as_millis()),
        ],
        d + Duration::from_secs(120),
    )?;
    let mut row = Row::new(
        "latency",
        "(d) ack latency at 50% of the (a0) rate, fsync=always",
    );
    row.records = s["records"].as_u64().unwrap_or(0);
    row.records_per_sec = f64_of(&s, "/records_per_sec");
    row.mb_per_sec = f64_of(&s, "/mb_per_sec");
    row.ack_p50_ms = f64_of(&s, "/ack_latency_ms/p50_ms");
    row.ack_p99_ms = f64_of(&s, "/ack_latency_ms/p99_ms");
    row.notes.push(format!(
        "target {rate:.0}/s for {}; ack p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        humantime::format_duration(d),
        row.ack_p50_ms.unwrap_or(0.0),
        row.ack_p99_ms.unwrap_or(0.0),
        f64_of(&s, "/ack_latency_ms/max_ms").unwrap_or(0.0)
    ));
    Ok(row)
}

/// (e) soak: a fixed rate for a duration; the aggregator's RSS sampled; a chart.
fn soak(ctx: &mut Ctx) -> anyhow::Result<Row> {
    let dir = ctx.scenario_dir("soak")?;
    let output = if ctx.args.soak_output == "file" {
        OutputKind::File
    } else {
        OutputKind::Null
    };
    // The acked-chunk index grows by design until its window is full (about 56 bytes per
    // request, for `dedupe_window`, 10 minutes by default). A window equal to the warm-up fills
    // it within the warm-up, so what grows after it is a leak, not the index filling.
    let window = format!(
        "dedupe_window = \"{}\"",
        humantime::format_duration(ctx.sizes.warmup)
    );
    let mut agg = Aggregator::start(&ctx.bin("logferry-aggregator"), &dir, output, &window)?;
    let pid = agg.proc.pid();
    let sz = ctx.sizes.clone();
    let cpu0 = cpu_seconds(pid)?;
    let mut gen = Proc::spawn(
        "logferry-loadtest forward",
        ctx.loadtest()
            .args(["forward", "--target", &agg.forward.to_string()])
            .args([
                "--run-id",
                &run_id("soak"),
                "--rate",
                &format!("{:.0}", sz.soak_rate),
            ])
            .args(["--duration", &format!("{}ms", sz.soak.as_millis())])
            .args([
                "--batch",
                &ctx.args.batch.to_string(),
                "--ack",
                "--json",
                "--quiet",
            ]),
        &dir.join("forward.log"),
    )?;
    let t0 = Instant::now();
    let mut rss = vec![(0.0, memory_mb(pid)?.0)];
    let mut next = t0 + sz.sample_every;
    let status = loop {
        if let Some(s) = gen.try_wait() {
            break s;
        }
        if Instant::now() >= next {
            rss.push((t0.elapsed().as_secs_f64(), memory_mb(pid)?.0));
            eprintln!(
                "soak: {:>5.0}s RSS {:.1} MB",
                t0.elapsed().as_secs_f64(),
                rss.last().map_or(0.0, |r| r.1)
            );
            next += sz.sample_every;
        }
        if t0.elapsed() > sz.soak + Duration::from_secs(300) {
            bail!("the soak's generator did not finish");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    rss.push((t0.elapsed().as_secs_f64(), memory_mb(pid)?.0));
    // Everything acked must be delivered too.
    std::thread::sleep(Duration::from_millis(200));
    let log = std::fs::read_to_string(dir.join("forward.log"))?;
    let s: Value = log
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .and_then(|l| serde_json::from_str(l).ok())
        .with_context(|| format!("the soak's generator ({status}) printed no summary"))?;
    if s["ok"] != true {
        bail!("the soak's generator failed: {}", s["errors"]);
    }
    let acked = s["acked"].as_u64().unwrap_or(0);
    agg.wait_for(Aggregator::delivered, acked, budget(acked))?;
    let u = usage_since(pid, cpu0)?;
    agg.proc.stop(Duration::from_secs(30));

    let throughput: Vec<(f64, f64)> = s["timeline"]
        .as_array()
        .map(|t| {
            t.iter()
                .filter_map(|e| Some((e["t"].as_f64()?, e["acked_per_sec"].as_f64()?)))
                .collect()
        })
        .unwrap_or_default();
    let data = SoakData {
        rate: sz.soak_rate,
        duration_s: sz.soak.as_secs_f64(),
        warmup_s: sz.warmup.as_secs_f64(),
        throughput,
        rss: rss.clone(),
    };
    std::fs::write(
        ctx.out.join("soak.json"),
        serde_json::to_string_pretty(&data)?,
    )?;
    let svg = ctx.out.join("soak.svg");
    plot::draw(&data, &svg)?;

    let mut row = Row::new(
        "soak",
        "(e) soak: Forward at a fixed rate -> aggregator, fsync=always, acked",
    );
    row.records = acked;
    row.records_per_sec = f64_of(&s, "/records_per_sec");
    row.mb_per_sec = f64_of(&s, "/mb_per_sec");
    row.cpu_s_per_million = (acked > 0).then(|| u.cpu_s / acked as f64 * 1e6);
    row.peak_rss_mb = Some(u.peak_rss_mb);
    row.ack_p99_ms = f64_of(&s, "/ack_latency_ms/p99_ms");
    let growth = plot::rss_growth(&rss, data.warmup_s);
    let mut note = format!(
        "{:.0}/s for {} into the {} output, dedupe_window = warm-up, RSS sampled every {}",
        sz.soak_rate,
        humantime::format_duration(sz.soak),
        ctx.args.soak_output,
        humantime::format_duration(sz.sample_every)
    );
    if let Some((g, slope)) = growth {
        let warm_peak = rss
            .iter()
            .filter(|p| p.0 <= data.warmup_s)
            .map(|p| p.1)
            .fold(0.0, f64::max);
        let allowed = (0.05 * warm_peak).max(2.0);
        row.rss_growth_mb = Some(g);
        row.rss_flat = Some(g <= allowed);
        note += &format!(
            "; RSS after warm-up ({}): {g:+.1} MB vs the warm-up peak, trend {slope:+.2} MB/min: {}",
            humantime::format_duration(sz.warmup),
            if g <= allowed { "flat" } else { "GROWING" }
        );
    } else {
        note += "; too few samples to judge growth";
    }
    note += &format!("; chart {}", svg.display());
    row.notes.push(note);
    Ok(row)
}
