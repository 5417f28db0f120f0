//! Talks to: a real `logferry-forwarder` (`format = "docker"`) tailing a file that the test
//! truncates in place while the forwarder is stopped, sending to a real `logferry-aggregator`
//! whose file output is checked by sequence number.
//!
//! Shows (audit finding #3, experiment e7): a file truncated in place (same inode) and rewritten
//! with the same first line keeps its fingerprint; the forwarder reads it from the start, and
//! its stored offset moves back with it, so after a restart with the file grown past the old
//! offset no line of the new content is skipped.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;
use std::time::Duration;

use logferry_e2e::forwarder::{wait_for_seqs, Forwarder, ForwarderConfig, LogFormat, LogWriter};
use logferry_e2e::{unique_id, Aggregator};

/// A first line whose first 512 bytes (the fingerprint's head) never differ: docker json-file
/// puts the time last.
fn write_banner(path: &Path, time: &str) {
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .expect("open log");
    let line = format!(
        "{{\"log\":\"{}\\n\",\"stream\":\"stdout\",\"time\":\"{time}\"}}\n",
        "B".repeat(600)
    );
    f.write_all(line.as_bytes()).expect("write banner");
}

fn stop(fwd: &mut Forwarder) {
    let (status, _) = fwd.stop(Duration::from_secs(30));
    assert!(status.success(), "forwarder exit: {status}");
}

#[test]
fn truncated_in_place_with_the_same_first_line_loses_no_line_after_restarts() {
    let agg = Aggregator::start();
    let logs = tempfile::tempdir().unwrap();
    let path = logs.path().join("app.log");
    let old_run = unique_id("trunc-old");
    let new_run = unique_id("trunc-new");
    let mut config = ForwarderConfig {
        paths: vec![format!("{}/*.log", logs.path().display())],
        servers: vec![agg.target()],
        ..ForwarderConfig::default()
    };
    config.input_extra.push_str("format = \"docker\"\n");

    // 1: 5000 lines, shipped, then SIGTERM (offsets written on shutdown).
    write_banner(&path, "2026-12-02T15:00:00.000000000Z");
    LogWriter::new(&path, LogFormat::Docker, &old_run).write(5_000);
    let old_size = std::fs::metadata(&path).unwrap().len();
    let mut fwd = Forwarder::start(config);
    wait_for_seqs(&agg.out_dir, &old_run, 5_000, Duration::from_secs(60));
    stop(&mut fwd);

    // 2: truncated in place (same inode), the same first line, 1000 new lines: shorter than
    // the stored offset, so read from the start.
    {
        use std::os::unix::fs::MetadataExt;
        let ino = std::fs::metadata(&path).unwrap().ino();
        OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(0)
            .unwrap();
        write_banner(&path, "2026-12-02T15:30:00.000000000Z");
        assert_eq!(std::fs::metadata(&path).unwrap().ino(), ino);
    }
    let mut w = LogWriter::new(&path, LogFormat::Docker, &new_run);
    w.write(1_000);
    assert!(std::fs::metadata(&path).unwrap().len() < old_size);
    fwd.restart();
    wait_for_seqs(&agg.out_dir, &new_run, 1_000, Duration::from_secs(60));
    stop(&mut fwd);

    // 3: grows past the old offset while the forwarder is down; every new line must arrive.
    w.write(8_000);
    assert!(std::fs::metadata(&path).unwrap().len() > old_size);
    fwd.restart();
    let report = wait_for_seqs(&agg.out_dir, &new_run, 9_000, Duration::from_secs(60));
    assert_eq!(report.missing, 0, "{report:?}");
    stop(&mut fwd);
    let offsets = fwd.offsets();
    let live = offsets
        .iter()
        .find(|o| o["real_path"].as_str() == path.to_str())
        .unwrap_or_else(|| panic!("no offset for the file: {offsets:?}"));
    assert_eq!(
        live["offset"],
        std::fs::metadata(&path).unwrap().len(),
        "{live}"
    );
}
