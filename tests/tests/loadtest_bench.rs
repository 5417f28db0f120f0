//! Talks to: the real benchmark driver `logferry-bench run --quick`, which starts real
//! `logferry-aggregator`, `logferry-forwarder` and `logferry-loadtest` processes (this test's
//! debug builds) for every scenario at a tiny size. Checks the suite end to end: every scenario
//! ran (the pods one may skip while the forwarder is a stub), nothing went missing, the table and
//! the soak chart were written.

use std::process::Command;
use std::time::Duration;

use logferry_e2e::{aggregator_bin, binary, loadtest_bin, run_checked};
use serde_json::Value;

#[test]
fn quick_suite_runs_every_scenario_without_loss() {
    let aggregator = aggregator_bin();
    let bin_dir = aggregator.parent().unwrap().to_path_buf();
    loadtest_bin();
    binary("logferry-forwarder", "logferry-forwarder");
    let bench = binary("logferry-loadtest", "logferry-bench");
    let out = tempfile::tempdir().unwrap();
    let output = run_checked(
        Command::new(&bench)
            .arg("run")
            .arg("--bin-dir")
            .arg(&bin_dir)
            .arg("--out")
            .arg(out.path())
            .args([
                "--quick",
                "--records",
                "20000",
                "--pods-lines",
                "4000",
                "--pods",
                "4",
            ])
            .args(["--latency-duration", "2s", "--soak-duration", "4s"]),
        Duration::from_secs(600),
    );
    let table = String::from_utf8_lossy(&output.stdout);
    assert!(table.starts_with("| scenario |"), "{table}");
    assert_eq!(
        table.lines().filter(|l| l.starts_with("| ")).count(),
        8,
        "{table}"
    );

    let results: Value =
        serde_json::from_slice(&std::fs::read(out.path().join("results.json")).unwrap()).unwrap();
    let rows = results["rows"].as_array().unwrap();
    let keys: Vec<&str> = rows.iter().map(|r| r["key"].as_str().unwrap()).collect();
    assert_eq!(
        keys,
        [
            "ceiling",
            "ingest",
            "file",
            "file-gzip",
            "pods",
            "latency",
            "soak"
        ]
    );
    for r in rows {
        let status = r["status"].as_str().unwrap();
        if r["key"] == "pods" && status == "skipped" {
            assert!(r["reason"].as_str().unwrap().contains("not usable"), "{r}");
            continue;
        }
        assert_eq!(status, "ok", "{r}");
        assert!(r["records_per_sec"].as_f64().unwrap() > 0.0, "{r}");
        if let Some(m) = r["missing"].as_u64() {
            assert_eq!(m, 0, "{r}");
        }
    }
    for key in ["file", "file-gzip"] {
        let r = rows.iter().find(|r| r["key"] == key).unwrap();
        assert_eq!(r["missing"], 0, "{r}");
        assert!(r["cpu_s_per_million"].as_f64().unwrap() > 0.0, "{r}");
        assert!(r["peak_rss_mb"].as_f64().unwrap() > 1.0, "{r}");
    }
    let latency = rows.iter().find(|r| r["key"] == "latency").unwrap();
    assert!(latency["ack_p99_ms"].as_f64().unwrap() > 0.0, "{latency}");
    let svg = std::fs::read_to_string(out.path().join("soak.svg")).unwrap();
    assert!(svg.starts_with("<svg"), "soak.svg is not an SVG");
    let soak: Value =
        serde_json::from_slice(&std::fs::read(out.path().join("soak.json")).unwrap()).unwrap();
    assert!(soak["rss"].as_array().unwrap().len() >= 3, "{soak}");
    assert!(!soak["throughput"].as_array().unwrap().is_empty(), "{soak}");
    assert!(std::fs::read_to_string(out.path().join("results.md"))
        .unwrap()
        .contains("(e) soak"));
}
