//! Talks to: a real `logferry-forwarder` tailing a file that the test writes and rotates every
//! 2 MB (rename + create, and copytruncate), sending to a real `logferry-aggregator` whose file
//! output is checked; the offsets are read back with `logferry-forwarder offsets`.
//!
//! Shows: with no crash, every line is delivered exactly once across rotations, and the stored
//! offsets end at the end of every file still tailed.

use std::time::Duration;

use logferry_e2e::forwarder::{
    seq_report, wait_for_seqs, Forwarder, ForwarderConfig, LogFormat, LogWriter, Rotation,
};
use logferry_e2e::{metric_value, unique_id, Aggregator};

const LINES: u64 = 100_000;
const ROTATE_BYTES: u64 = 2_000_000;

fn rotation_run(rotation: Rotation, pattern: &str, format: LogFormat) {
    let agg = Aggregator::start();
    let logs = tempfile::tempdir().unwrap();
    let run = unique_id("rot");
    let path = logs.path().join("app.log");
    let mut fwd = Forwarder::start(ForwarderConfig {
        paths: vec![format!("{}/{pattern}", logs.path().display())],
        servers: vec![agg.target()],
        ..ForwarderConfig::default()
    });
    let mut w = LogWriter::new(&path, format, &run).rotate(rotation, ROTATE_BYTES);
    // Written in bursts, so the forwarder is sometimes behind at a rotation and sometimes not.
    while w.next_seq < LINES {
        w.write(2_000);
        std::thread::sleep(Duration::from_millis(
            if w.next_seq.is_multiple_of(10_000) {
                200
            } else {
                5
            },
        ));
    }
    assert!(w.rotations >= 4, "only {} rotations", w.rotations);
    let report = wait_for_seqs(&agg.out_dir, &run, LINES, Duration::from_secs(120));
    std::thread::sleep(Duration::from_millis(500));
    let report = seq_report(&agg.out_dir, &run, LINES).max_dup(report);
    assert_eq!(report.duplicates, 0, "{rotation:?}: {report:?}");
    let m = fwd.metrics();
    assert_eq!(
        metric_value(&m, "logferry_tail_unread_bytes"),
        Some(0.0),
        "{m}"
    );

    let (status, _) = fwd.stop(Duration::from_secs(30));
    assert!(status.success());
    let offsets = fwd.offsets();
    assert!(!offsets.is_empty());
    let live = offsets
        .iter()
        .find(|o| o["real_path"].as_str() == Some(path.to_str().unwrap()))
        .unwrap_or_else(|| panic!("no offset for the live file: {offsets:?}"));
    assert_eq!(
        live["offset"],
        std::fs::metadata(&path).unwrap().len(),
        "{live}"
    );
    for o in &offsets {
        let real = o["real_path"].as_str().unwrap();
        if let Ok(meta) = std::fs::metadata(real) {
            use std::os::unix::fs::MetadataExt;
            if meta.ino() == o["inode"].as_u64().unwrap() {
                assert_eq!(o["offset"], meta.len(), "not read to the end: {o}");
            }
        }
    }
}

trait MaxDup {
    fn max_dup(self, other: Self) -> Self;
}

impl MaxDup for logferry_e2e::forwarder::SeqReport {
    fn max_dup(self, other: Self) -> Self {
        if self.duplicates >= other.duplicates {
            self
        } else {
            other
        }
    }
}

#[test]
fn rename_and_create_rotation_delivers_every_line_once() {
    rotation_run(Rotation::Rename, "*.log", LogFormat::Cri);
}

#[test]
fn copytruncate_rotation_delivers_every_line_once() {
    // The copies must be visible to the forwarder (it continues in the copy where the
    // truncated original stopped), so the pattern includes them.
    rotation_run(Rotation::CopyTruncate, "app.log*", LogFormat::Docker);
}
