//! Talks to: a real `logferry-aggregator` process (file output) and the real
//! `logferry-loadtest` binary (`forward` with a ramp, a timed run and every record shape; `sink`;
//! `verify --expect-file`). Each scenario runs at a small size and must lose nothing.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use logferry_e2e::{loadtest_bin, unique_id, wait_for_records, Aggregator, Load};
use serde_json::Value;

fn json_of(out: &std::process::Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "no JSON on stdout ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// Waits until the file output holds the run (acked means durable in the buffer; the file
/// output follows), then verifies it with the `expected` map of `summary`.
fn verify_with_summary(agg: &Aggregator, run_id: &str, summary: &Value) -> Value {
    let n = summary["expected"]["-"].as_u64().expect("expected count");
    wait_for_records(&agg.out_dir, run_id, n, Duration::from_secs(60));
    let file = agg.dir.path().join(format!("{run_id}.summary.json"));
    std::fs::write(&file, summary.to_string()).unwrap();
    let out = Load::verify(run_id)
        .output_dir(&agg.out_dir)
        .expect_file(&file)
        .json()
        .run();
    let report = json_of(&out);
    assert!(out.status.success(), "verify failed: {report}");
    assert_eq!(report["missing"], 0, "{report}");
    assert_eq!(report["malformed_lines"], 0, "{report}");
    report
}

#[test]
fn ramp_up_arrives_complete_and_follows_the_schedule() {
    let agg = Aggregator::start();
    let run_id = unique_id("ramp");
    let target = agg.target();
    let out = Load::forward(&target)
        .ramp("1000:6000:2s")
        .batch(100)
        .ack()
        .run_id(&run_id)
        .json()
        .run();
    assert!(out.status.success());
    let s = json_of(&out);
    // The area under the ramp: 2 s averaging 3500/s, to within a batch or two.
    let records = s["records"].as_u64().unwrap();
    assert!((6800..=7200).contains(&records), "{s}");
    assert_eq!(s["acked"], records);
    assert_eq!(s["expected"]["-"], records);
    assert!(s["schedule"].as_str().unwrap().starts_with("ramp"), "{s}");
    let timeline = s["timeline"].as_array().unwrap();
    assert!(!timeline.is_empty(), "{s}");
    // The first second's target is the ramp's average over it (1000 -> 3500: 2250/s).
    let first = timeline[0]["target_rate"].as_f64().unwrap();
    assert!((2000.0..=2500.0).contains(&first), "{first}");
    assert!(
        s["saturation"].is_null(),
        "an idle aggregator keeps up: {s}"
    );
    let report = verify_with_summary(&agg, &run_id, &s);
    assert_eq!(report["received"], records);
}

#[test]
fn timed_runs_of_every_shape_arrive_complete() {
    let agg = Aggregator::start();
    for shape in ["k8s", "k8s-full", "app-json"] {
        let run_id = unique_id(shape);
        let out = Load::forward(&agg)
            .duration("1s")
            .rate(3000)
            .batch(100)
            .connections(2)
            .shape(shape)
            .ack()
            .gzip()
            .run_id(&run_id)
            .json()
            .run();
        assert!(out.status.success(), "{shape}");
        let s = json_of(&out);
        let records = s["records"].as_u64().unwrap();
        assert!(
            (2500..=3800).contains(&records),
            "{shape}: about 3000 records expected: {s}"
        );
        assert!(s["records_requested"].is_null());
        verify_with_summary(&agg, &run_id, &s);
        let lines = wait_for_records(&agg.out_dir, &run_id, records, Duration::from_secs(30));
        assert_eq!(
            lines.received, records,
            "{shape}: duplicates without a fault"
        );
    }
    // The shapes really differ in the output.
    let lines = logferry_e2e::read_output(&agg.out_dir);
    let full = lines
        .iter()
        .find(|l| l["record"]["kubernetes"]["labels"]["app"] == "checkout")
        .expect("a k8s-full record");
    assert_eq!(full["record"]["logtag"], "F");
    let app = lines
        .iter()
        .find(|l| {
            l["record"]["log"]
                .as_str()
                .is_some_and(|s| s.starts_with("{\"ts\""))
        })
        .expect("an app-json record");
    let inner: Value = serde_json::from_str(app["record"]["log"].as_str().unwrap()).unwrap();
    assert!(inner["http"]["status"].is_u64(), "{inner}");
}

/// Kills the sink if the test fails half-way.
struct Sink(Child);

impl Drop for Sink {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn generator_ceiling_against_the_discarding_sink() {
    let mut sink = Sink(
        Command::new(loadtest_bin())
            .args(["sink", "--listen", "127.0.0.1:0", "--json"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting the sink"),
    );
    let mut stdout = BufReader::new(sink.0.stdout.take().unwrap());
    let mut first = String::new();
    stdout.read_line(&mut first).unwrap();
    let addr = first
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {first:?}"))
        .to_string();
    let out = Load::forward(&addr)
        .records(50000)
        .batch(500)
        .ack()
        .window(8)
        .json()
        .no_timeline()
        .run();
    assert!(out.status.success());
    let s = json_of(&out);
    assert_eq!(s["acked"], 50_000);
    assert!(s["records_per_sec"].as_f64().unwrap() > 0.0);
    assert!(s.get("timeline").is_none(), "--no-timeline: {s}");

    let status = Command::new("kill")
        .args(["-TERM", &sink.0.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let mut rest = String::new();
    stdout.read_to_string(&mut rest).unwrap();
    assert!(sink.0.wait().unwrap().success());
    let summary: Value = serde_json::from_str(rest.trim()).expect(&rest);
    assert_eq!(summary["records"], 50_000, "{summary}");
    assert_eq!(summary["acks"], 100, "{summary}");
    assert_eq!(summary["decode_errors"], 0, "{summary}");
}
