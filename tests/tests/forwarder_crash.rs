//! Talks to: a real `logferry-forwarder` killed with SIGKILL at random moments while it tails a
//! file the test writes and rotates (rename + create), and a real `logferry-aggregator` (file
//! output), itself killed with SIGKILL mid-run in the second test and restarted on its port.
//!
//! Shows the delivery contract under crashes: no line is lost (offsets never run ahead of the
//! forwarder's durable buffer; chunks are deleted only after acks; rotated files are found again
//! after a restart), duplicates are allowed and reported.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use logferry_e2e::forwarder::{
    seq_report, wait_for_seqs, Forwarder, ForwarderConfig, LogFormat, LogWriter, Rotation,
};
use logferry_e2e::{metric_value, unique_id, wait_until, Aggregator};

const LINES: u64 = 60_000;

/// A small xorshift generator: random kill moments, reproducible from the printed seed.
struct Rng(u64);

impl Rng {
    fn from_clock() -> Rng {
        let seed = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
            | 1;
        eprintln!("e2e: kill schedule seed {seed}");
        Rng(seed)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// Writes LINES lines over about 6 s, rotating every 1 MB, on its own thread.
fn spawn_writer(path: std::path::PathBuf, run: String) -> std::thread::JoinHandle<u32> {
    std::thread::spawn(move || {
        let mut w = LogWriter::new(&path, LogFormat::Cri, &run).rotate(Rotation::Rename, 1_000_000);
        while w.next_seq < LINES {
            w.write(500);
            std::thread::sleep(Duration::from_millis(50));
        }
        w.rotations
    })
}

#[test]
fn forwarder_killed_at_random_moments_loses_nothing() {
    let agg = Aggregator::start();
    let logs = tempfile::tempdir().unwrap();
    let run = unique_id("fwdkill");
    let mut fwd = Forwarder::start(ForwarderConfig {
        paths: vec![format!("{}/*.log", logs.path().display())],
        servers: vec![agg.target()],
        ..ForwarderConfig::default()
    });
    let writer = spawn_writer(logs.path().join("app.log"), run.clone());
    let mut rng = Rng::from_clock();
    for round in 0..4 {
        let wait = 300 + rng.below(1_200);
        std::thread::sleep(Duration::from_millis(wait));
        eprintln!("e2e: round {round}: SIGKILL the forwarder after {wait} ms");
        fwd.sigkill();
        std::thread::sleep(Duration::from_millis(rng.below(500)));
        fwd.restart();
    }
    let rotations = writer.join().unwrap();
    assert!(rotations >= 3, "only {rotations} rotations");
    wait_for_seqs(&agg.out_dir, &run, LINES, Duration::from_secs(120));
    std::thread::sleep(Duration::from_millis(500));
    let report = seq_report(&agg.out_dir, &run, LINES);
    eprintln!("e2e: forwarder kill -9 x4: {report:?}");
    assert_eq!(report.missing, 0, "{report:?}");
    assert!(
        report.duplicates <= LINES,
        "more duplicates than lines: {report:?}"
    );
}

#[test]
fn aggregator_killed_mid_run_gets_everything_resent() {
    let mut agg = Aggregator::start();
    let logs = tempfile::tempdir().unwrap();
    let run = unique_id("aggkill");
    let fwd = Forwarder::start(ForwarderConfig {
        paths: vec![format!("{}/*.log", logs.path().display())],
        servers: vec![agg.target()],
        ack_timeout: "5s".into(),
        ..ForwarderConfig::default()
    });
    let writer = spawn_writer(logs.path().join("app.log"), run.clone());
    let mut rng = Rng::from_clock();
    for round in 0..2 {
        let wait = 800 + rng.below(1_500);
        std::thread::sleep(Duration::from_millis(wait));
        eprintln!("e2e: round {round}: SIGKILL the aggregator after {wait} ms");
        agg.sigkill();
        std::thread::sleep(Duration::from_millis(300 + rng.below(700)));
        agg.restart_same_port();
    }
    writer.join().unwrap();
    let report = wait_for_seqs(&agg.out_dir, &run, LINES, Duration::from_secs(120));
    eprintln!("e2e: aggregator kill -9 x2: {report:?}");
    assert_eq!(report.missing, 0);
    let m = fwd.metrics();
    let failures = metric_value(&m, "logferry_output_errors_total").unwrap_or(0.0);
    assert!(
        failures >= 1.0,
        "the forwarder never noticed the kills: {m}"
    );
    wait_until("the forwarder reconnected", Duration::from_secs(30), || {
        metric_value(&fwd.metrics(), "logferry_forward_servers_up").filter(|&n| n >= 1.0)
    });
}
