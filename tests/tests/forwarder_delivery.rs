//! Talks to: a real `logferry-forwarder` process tailing CRI and docker json-file logs that the
//! test writes (with long lines split into 16 KiB runtime pieces), sending to a real
//! `logferry-aggregator` whose file output is checked record by record; and the forwarder's
//! own `offsets` command for the stored file offsets.
//!
//! Shows: exactly-once delivery without crashes, file-name Kubernetes metadata, joined partial
//! lines, nanosecond times, offsets equal to the file sizes after a graceful stop (so a restart
//! re-sends nothing), and SIGTERM flushing with a reachable and with an unreachable aggregator.

use std::net::TcpListener;
use std::time::{Duration, Instant};

use logferry_e2e::forwarder::{
    seq_report, wait_for_seqs, Forwarder, ForwarderConfig, LogFormat, LogWriter, RUNTIME_SPLIT,
};
use logferry_e2e::{
    metric_value, read_output, unique_id, wait_until, Aggregator, AggregatorConfig,
};

const ID: &str = "4f7e3b2a1c0d9e8f7a6b5c4d3e2f1a0b9c8d7e6f5a4b3c2d1e0f9a8b7c6d5e4f";

fn config(logs: &std::path::Path, agg: &Aggregator) -> ForwarderConfig {
    ForwarderConfig {
        paths: vec![format!("{}/*.log", logs.display())],
        servers: vec![agg.target()],
        ..ForwarderConfig::default()
    }
}

#[test]
fn cri_and_docker_lines_arrive_exactly_once_with_metadata() {
    let agg = Aggregator::start();
    let logs = tempfile::tempdir().unwrap();
    let run = unique_id("deliver");
    let cri_path = logs.path().join(format!("web-1_shop_nginx-{ID}.log"));
    let docker_path = logs.path().join(format!("api-2_shop_app-{ID}.log"));
    let mut cri = LogWriter::new(&cri_path, LogFormat::Cri, &run).split_long_lines(97);
    let mut docker = LogWriter::new(&docker_path, LogFormat::Docker, &run)
        .starting_at(10_000)
        .split_long_lines(89);
    // Some lines before the forwarder starts, some while it runs.
    cri.write(2_000);
    docker.write(2_000);
    let mut fwd = Forwarder::start(config(logs.path(), &agg));
    cri.write(3_000);
    docker.write(3_000);
    // An invalid line is counted, not fatal.
    std::fs::OpenOptions::new()
        .append(true)
        .open(&cri_path)
        .and_then(|mut f| std::io::Write::write_all(&mut f, b"this is not a CRI line\n"))
        .unwrap();
    cri.write(1);

    let cri_seqs = 5_001u64;
    let report = wait_for_seqs(&agg.out_dir, &run, cri_seqs, Duration::from_secs(60));
    assert_eq!(report.duplicates, 0, "{report:?}");
    let all = wait_until("docker records", Duration::from_secs(60), || {
        let lines: Vec<_> = read_output(&agg.out_dir)
            .into_iter()
            .filter(|v| v["record"]["run_id"] == run.as_str())
            .collect();
        (lines.len() as u64 >= cri_seqs + 5_000).then_some(lines)
    });
    assert_eq!(all.len() as u64, cri_seqs + 5_000, "duplicates or strays");

    let one = all
        .iter()
        .find(|v| v["record"]["seq"] == 96)
        .expect("seq 96 (a long, split line)");
    let rec = &one["record"];
    assert_eq!(
        rec["pad"].as_str().map(str::len),
        Some(RUNTIME_SPLIT * 2 + 100),
        "the partial pieces were not joined: {rec}"
    );
    assert_eq!(rec["stream"], "stdout");
    assert!(rec.get("log").is_none(), "keep_log = false: {rec}");
    let k = &rec["kubernetes"];
    assert_eq!(k["pod_name"], "web-1");
    assert_eq!(k["namespace_name"], "shop");
    assert_eq!(k["container_name"], "nginx");
    assert_eq!(k["docker_id"], ID);
    let tag = one["tag"].as_str().unwrap();
    assert!(
        tag.starts_with("kube.") && tag.ends_with(&format!("web-1_shop_nginx-{ID}.log")),
        "{tag}"
    );
    // The runtime's timestamp, nanoseconds kept (the writer uses 9 digits).
    let time = one["time"].as_str().unwrap();
    assert_eq!(time.len(), "2021-01-01T00:00:00.123456789Z".len(), "{time}");
    let long_seq = (10_000u64..).find(|s| s % 89 == 88).unwrap();
    let docker_long = all
        .iter()
        .find(|v| v["record"]["seq"] == long_seq)
        .expect("docker long line");
    assert_eq!(
        docker_long["record"]["pad"].as_str().map(str::len),
        Some(RUNTIME_SPLIT * 2 + 100)
    );
    assert_eq!(docker_long["record"]["kubernetes"]["pod_name"], "api-2");

    let m = fwd.metrics();
    assert_eq!(
        metric_value(
            &m,
            "logferry_dropped_records_total{reason=\"invalid_line\"}"
        ),
        Some(1.0),
        "{m}"
    );
    assert_eq!(metric_value(&m, "logferry_tail_files"), Some(2.0));

    // A graceful stop leaves offsets at the ends of the files...
    let (status, _) = fwd.stop(Duration::from_secs(30));
    assert!(status.success(), "{status}");
    let offsets = fwd.offsets();
    for path in [&cri_path, &docker_path] {
        let size = std::fs::metadata(path).unwrap().len();
        let entry = offsets
            .iter()
            .find(|o| o["path"].as_str() == Some(path.to_str().unwrap()))
            .unwrap_or_else(|| panic!("no offset for {}: {offsets:?}", path.display()));
        assert_eq!(entry["offset"], size, "{entry}");
    }
    // ...so a restart sends only what is new.
    fwd.restart();
    cri.write(100);
    let report = wait_for_seqs(&agg.out_dir, &run, cri_seqs + 100, Duration::from_secs(60));
    std::thread::sleep(Duration::from_millis(500));
    let report2 = seq_report(&agg.out_dir, &run, cri_seqs + 100);
    assert_eq!(
        report2.duplicates, 0,
        "restart re-sent lines: {report:?} {report2:?}"
    );
}

#[test]
fn sigterm_sends_everything_buffered_before_exiting() {
    let agg = Aggregator::start();
    let logs = tempfile::tempdir().unwrap();
    let run = unique_id("term");
    let mut w = LogWriter::new(&logs.path().join("app.log"), LogFormat::Cri, &run);
    let mut cfg = config(logs.path(), &agg);
    // Chunks are sealed only by size or at shutdown: nothing leaves before SIGTERM.
    cfg.flush_interval = "1h".into();
    cfg.chunk_limit_size = "64MiB".into();
    let mut fwd = Forwarder::start(cfg);
    w.write(20_000);
    wait_until("lines buffered", Duration::from_secs(30), || {
        metric_value(&fwd.metrics(), "logferry_input_records_total").filter(|&n| n >= 20_000.0)
    });
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        seq_report(&agg.out_dir, &run, 20_000).received,
        0,
        "records left before the chunk was sealed"
    );
    let (status, took) = fwd.stop(Duration::from_secs(30));
    assert!(status.success(), "exit status {status}");
    // Acked before exit: the aggregator has them durably; its file output follows.
    let r = wait_for_seqs(&agg.out_dir, &run, 20_000, Duration::from_secs(30));
    assert_eq!(r.duplicates, 0, "{r:?}");
    assert!(took < Duration::from_secs(20), "shutdown took {took:?}");
    assert!(
        fwd.logs()
            .iter()
            .any(|l| l.contains("everything buffered was delivered")),
        "the forwarder did not report a complete flush"
    );
}

#[test]
fn sigterm_with_an_unreachable_aggregator_exits_in_time_and_delivers_at_next_start() {
    // A port with nothing listening (yet).
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let target = format!("127.0.0.1:{port}");
    let logs = tempfile::tempdir().unwrap();
    let run = unique_id("unreach");
    let mut w = LogWriter::new(&logs.path().join("app.log"), LogFormat::Docker, &run);
    let cfg = ForwarderConfig {
        paths: vec![format!("{}/*.log", logs.path().display())],
        servers: vec![target.clone()],
        shutdown_timeout: "3s".into(),
        ..ForwarderConfig::default()
    };
    let mut fwd = Forwarder::start(cfg);
    w.write(5_000);
    wait_until("lines buffered", Duration::from_secs(30), || {
        metric_value(&fwd.metrics(), "logferry_input_records_total").filter(|&n| n >= 5_000.0)
    });
    let started = Instant::now();
    let (status, _) = fwd.stop(Duration::from_secs(15));
    let took = started.elapsed();
    assert!(status.success(), "exit status {status}");
    assert!(
        took >= Duration::from_millis(2_500) && took < Duration::from_secs(10),
        "shutdown took {took:?} with shutdown_timeout = 3s"
    );
    // The aggregator appears; the next start sends what was buffered, once.
    let agg = Aggregator::start_with(AggregatorConfig {
        forward_listen: target,
        ..AggregatorConfig::default()
    });
    fwd.restart();
    let r = wait_for_seqs(&agg.out_dir, &run, 5_000, Duration::from_secs(60));
    std::thread::sleep(Duration::from_millis(500));
    let r2 = seq_report(&agg.out_dir, &run, 5_000);
    assert_eq!(r2.duplicates, 0, "{r:?} {r2:?}");
}
