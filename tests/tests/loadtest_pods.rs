//! Talks to: the real `logferry-loadtest pods` writing container logs, a real
//! `logferry-forwarder` process tailing them, a real `logferry-aggregator` (file output), and
//! `logferry-loadtest verify --expect-file` counting every pod's lines. Skips (with the reason)
//! while the forwarder binary is still the stub that exits 1.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use logferry_e2e::{binary, unique_id, wait_until, Aggregator, Load};
use serde_json::Value;

fn forwarder_bin() -> std::path::PathBuf {
    binary("logferry-forwarder", "logferry-forwarder")
}

fn forwarder_config(dir: &Path, format: &str, server: &str) -> String {
    let q = |p: &Path| Value::String(p.display().to_string()).to_string();
    format!(
        r#"shutdown_timeout = "10s"

[input]
paths = [{paths}]
format = "{format}"
read_from = "head"

[kubernetes]
enabled = false
merge_log = true

[buffer]
path = {buffer}
flush_interval = "200ms"

[output]
servers = ["{server}"]
require_ack = true

[admin]
listen = "127.0.0.1:0"
"#,
        paths = q(&dir.join("logs/containers/*.log")),
        buffer = q(&dir.join("forwarder-buffer")),
    )
}

/// `Some(reason)` while the forwarder cannot run this config (the stub).
fn forwarder_unavailable(config: &Path) -> Option<String> {
    let out = Command::new(forwarder_bin())
        .arg("validate")
        .arg("--config")
        .arg(config)
        .stdin(Stdio::null())
        .output()
        .expect("running logferry-forwarder validate");
    if out.status.success() {
        return None;
    }
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("not implemented"),
        "the forwarder rejected the test config ({}): {text}",
        out.status
    );
    Some(text)
}

/// The forwarder process; killed when dropped.
struct Forwarder(Child);

impl Drop for Forwarder {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_forwarder(dir: &Path, config: &Path) -> Forwarder {
    let log = std::fs::File::create(dir.join("forwarder.log")).unwrap();
    let err = log.try_clone().unwrap();
    Forwarder(
        Command::new(forwarder_bin())
            .arg("run")
            .arg("--config")
            .arg(config)
            .args(["--log-format", "json"])
            .env_remove("RUST_LOG")
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .expect("starting logferry-forwarder"),
    )
}

/// Polls `verify` until nothing is missing; returns the last report (which may still miss lines
/// after `timeout`).
fn verify_until_complete(
    agg: &Aggregator,
    run_id: &str,
    summary: &Path,
    timeout: Duration,
) -> Value {
    let out_dir = agg.out_dir.to_string_lossy().into_owned();
    let summary = summary.to_string_lossy().into_owned();
    let mut last = Value::Null;
    let _ = wait_until_or_timeout(timeout, || {
        let out = Command::new(logferry_e2e::loadtest_bin())
            .args([
                "verify",
                "--run-id",
                run_id,
                &out_dir,
                "--expect-file",
                &summary,
                "--json",
            ])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        last = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        out.status.success().then_some(())
    });
    last
}

fn wait_until_or_timeout(timeout: Duration, mut f: impl FnMut() -> Option<()>) -> Option<()> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if f().is_some() {
            return Some(());
        }
        if std::time::Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn check_complete(report: &Value, dir: &Path) {
    let log = std::fs::read_to_string(dir.join("forwarder.log")).unwrap_or_default();
    let tail: Vec<&str> = log.lines().rev().take(30).collect();
    assert_eq!(
        report["missing"],
        0,
        "lines missing: {report}\nforwarder log (last lines, newest first):\n{}",
        tail.join("\n")
    );
    assert_eq!(report["malformed_lines"], 0, "{report}");
    assert_eq!(report["without_seq"], 0, "{report}");
}

/// Files written before the forwarder starts (docker json-file), read from the head.
#[test]
fn prewritten_docker_logs_arrive_complete() {
    let agg = Aggregator::start();
    let dir = agg.dir.path().join("pods");
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("forwarder.toml");
    std::fs::write(&config, forwarder_config(&dir, "docker", &agg.target())).unwrap();
    if let Some(why) = forwarder_unavailable(&config) {
        eprintln!("skipping: {why}");
        return;
    }
    let run_id = unique_id("pods-docker");
    let out = Load::pods(&dir.join("logs"))
        .pod_count(4)
        .lines(1500)
        .format("docker")
        .long_lines(0.01)
        .run_id(&run_id)
        .json()
        .quiet()
        .run();
    assert!(out.status.success());
    let summary = dir.join("pods.json");
    std::fs::write(&summary, &out.stdout).unwrap();
    let written: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(written["lines"], 6000);
    assert_eq!(written["long_lines"], 60);

    let _fwd = start_forwarder(&dir, &config);
    let report = verify_until_complete(&agg, &run_id, &summary, Duration::from_secs(90));
    check_complete(&report, &dir);
    assert_eq!(report["sources"].as_array().unwrap().len(), 4, "{report}");
}

/// Lines written while the forwarder tails them (CRI), with kubelet-like rotation and partial
/// lines; every rotated file is kept, so nothing may be missing.
#[test]
fn live_cri_logs_with_rotation_and_partial_lines_arrive_complete() {
    let agg = Aggregator::start();
    let dir = agg.dir.path().join("pods");
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("forwarder.toml");
    std::fs::write(&config, forwarder_config(&dir, "cri", &agg.target())).unwrap();
    if let Some(why) = forwarder_unavailable(&config) {
        eprintln!("skipping: {why}");
        return;
    }
    let run_id = unique_id("pods-cri");
    // Create the pods with one line each (seq 0) and let the forwarder find them: lines in
    // files rotated away before a tailer ever saw them are lost on a real node too.
    let logs = dir.join("logs");
    let out = Load::pods(&logs)
        .pod_count(3)
        .lines(1)
        .format("cri")
        .run_id(&run_id)
        .quiet()
        .run();
    assert!(out.status.success());
    let _fwd = start_forwarder(&dir, &config);
    let admin = wait_until(
        "the forwarder's admin address",
        Duration::from_secs(30),
        || {
            let log = std::fs::read_to_string(dir.join("forwarder.log")).ok()?;
            log.lines().find_map(|l| {
                let v: Value = serde_json::from_str(l).ok()?;
                let f = &v["fields"];
                (f["message"] == "listening" && f["listener"] == "admin")
                    .then(|| f["addr"].as_str()?.parse::<std::net::SocketAddr>().ok())
                    .flatten()
            })
        },
    );
    wait_until(
        "the forwarder to tail the 3 files",
        Duration::from_secs(60),
        || {
            let m = logferry_e2e::metrics(admin);
            (logferry_e2e::metric_value(&m, "logferry_tail_files")? >= 3.0).then_some(())
        },
    );
    let out = Load::pods(&logs)
        .pod_count(3)
        .rate(3000)
        .duration("3s")
        .format("cri")
        .rotate_size("128KiB")
        .rotate_keep(1000)
        .long_lines(0.005)
        .first_seq(1)
        .run_id(&run_id)
        .json()
        .quiet()
        .run();
    assert!(out.status.success());
    let summary = dir.join("pods.json");
    std::fs::write(&summary, &out.stdout).unwrap();
    let written: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(written["rotations"].as_u64().unwrap() >= 3, "{written}");
    assert_eq!(written["deleted_files"], 0);
    let report = verify_until_complete(&agg, &run_id, &summary, Duration::from_secs(90));
    check_complete(&report, &dir);
    let lines = written["lines"].as_u64().unwrap();
    assert!(report["received"].as_u64().unwrap() >= lines, "{report}");
}
